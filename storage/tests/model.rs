//! Property test: random operations against a simple in-memory model of the log.

mod common;

use common::{batch, read_all};
use keel_protocol::batch::{batches, set_base_offset, set_partition_leader_epoch};
use keel_storage::{Log, LogConfig};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append {
        count: usize,
        len: usize,
        new_epoch: bool,
    },
    Flush,
    Read {
        at: f64,
        max_bytes: usize,
    },
    Truncate {
        at: f64,
    },
    Roll,
    SetHw {
        at: f64,
    },
    Retention,
    Reopen {
        clean: bool,
    },
    Checkpoint,
    /// The broker's periodic `checkpoint_if_rolled` (a roll on the append path does not
    /// checkpoint; the flush after it seals the old segment).
    CheckpointIfRolled,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..4, 1usize..400, proptest::bool::weighted(0.1))
            .prop_map(|(count, len, new_epoch)| Op::Append { count, len, new_epoch }),
        1 => Just(Op::Flush),
        2 => (0.0..1.0f64, 1usize..3000).prop_map(|(at, max_bytes)| Op::Read { at, max_bytes }),
        1 => (0.0..1.0f64).prop_map(|at| Op::Truncate { at }),
        1 => Just(Op::Roll),
        1 => (0.0..1.0f64).prop_map(|at| Op::SetHw { at }),
        1 => Just(Op::Retention),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::CheckpointIfRolled),
    ]
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 300,
        max_index_bytes: 1024,
        retention_bytes: Some(6000),
        retention_ms: None,
        ..Default::default()
    }
}

#[derive(Debug, Default)]
struct Model {
    /// (base offset, last offset, stored bytes), in order.
    batches: Vec<(i64, i64, Vec<u8>)>,
    log_start: i64,
    log_end: i64,
    epoch: i32,
    /// HW as of the last checkpoint write.
    ckpt_hw: i64,
}

impl Model {
    fn bytes_from(&self, offset: i64) -> Vec<u8> {
        self.batches
            .iter()
            .filter(|(_, last, _)| *last >= offset)
            .flat_map(|(_, _, b)| b.clone())
            .collect()
    }

    fn pick(&self, at: f64) -> i64 {
        self.log_start + ((self.log_end - self.log_start) as f64 * at) as i64
    }
}

fn check(log: &Log, m: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(log.log_end_offset(), m.log_end);
    prop_assert_eq!(log.log_start_offset(), m.log_start);
    prop_assert_eq!(read_all(log, m.log_start), m.bytes_from(m.log_start));
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config()).unwrap();
    let mut m = Model::default();
    for (i, op) in ops.into_iter().enumerate() {
        match op {
            Op::Append {
                count,
                len,
                new_epoch,
            } => {
                if new_epoch {
                    m.epoch += 1;
                }
                let mut b = batch(count, len, i as u64, i as i64);
                let a = log.append_as_leader(&b, m.epoch).unwrap();
                prop_assert_eq!(a.base_offset, m.log_end);
                set_base_offset(&mut b, a.base_offset);
                set_partition_leader_epoch(&mut b, m.epoch);
                m.batches.push((a.base_offset, a.last_offset, b));
                m.log_end = a.log_end_offset;
            }
            Op::Flush => {
                prop_assert_eq!(log.flush().unwrap(), m.log_end);
            }
            Op::Read { at, max_bytes } => {
                let offset = m.pick(at);
                let r = log.read(offset, max_bytes, i64::MAX).unwrap();
                let expected = m.bytes_from(offset);
                prop_assert!(expected.starts_with(&r.records));
                if offset < m.log_end {
                    prop_assert!(!r.records.is_empty(), "at least one batch");
                }
                let first_len = batches(&r.records)
                    .next()
                    .and_then(Result::ok)
                    .map_or(0, |b| b.bytes.len());
                prop_assert!(r.records.len() <= max_bytes.max(first_len));
            }
            Op::Truncate { at } => {
                let offset = m.pick(at);
                log.truncate_to(offset).unwrap();
                // Truncation to the start of the batch containing `offset`.
                if let Some(i) = m.batches.iter().position(|(_, last, _)| *last >= offset) {
                    m.log_end = m.batches[i].0;
                    m.batches.truncate(i);
                    m.ckpt_hw = log.high_watermark();
                }
                prop_assert_eq!(log.log_end_offset(), m.log_end);
                prop_assert!(log.high_watermark() <= m.log_end);
                if let Some(&(e, start)) = log.epoch_entries().last() {
                    prop_assert!(start < m.log_end || (start == m.log_end && e >= 0));
                }
            }
            Op::Roll => {
                // A roll always ends with a checkpoint, even of an empty active segment.
                log.roll().unwrap();
                m.ckpt_hw = log.high_watermark();
            }
            Op::SetHw { at } => {
                let hw = m.pick(at);
                prop_assert_eq!(log.set_high_watermark(hw), hw);
            }
            Op::Retention => {
                let hw = log.high_watermark();
                if log.enforce_retention(0).unwrap().segments_deleted > 0 {
                    m.ckpt_hw = log.high_watermark();
                }
                let start = log.log_start_offset();
                prop_assert!(start <= hw.max(m.log_start));
                prop_assert!(log.size_bytes() >= 6000 || start == m.log_start);
                m.batches.retain(|(base, _, _)| *base >= start);
                if start != m.log_start {
                    prop_assert_eq!(m.batches.first().map(|b| b.0), Some(start));
                }
                m.log_start = start;
            }
            Op::Reopen { clean } => {
                let hw = log.high_watermark();
                if clean {
                    log.close().unwrap();
                }
                drop(log);
                log = Log::open(dir.path(), config()).unwrap();
                prop_assert_eq!(log.recovery_info().clean_shutdown, clean);
                prop_assert_eq!(log.recovery_info().truncated_bytes, 0);
                // The HW persists at checkpoints: a clean close keeps it, an unclean stop falls
                // back to the last checkpointed one.
                if clean {
                    prop_assert_eq!(log.high_watermark(), hw);
                } else {
                    prop_assert_eq!(
                        log.high_watermark(),
                        m.ckpt_hw.clamp(m.log_start, m.log_end)
                    );
                }
                m.ckpt_hw = log.high_watermark();
            }
            Op::Checkpoint => {
                log.checkpoint().unwrap();
                m.ckpt_hw = log.high_watermark();
            }
            Op::CheckpointIfRolled => {
                if log.checkpoint_if_rolled().unwrap() {
                    m.ckpt_hw = log.high_watermark();
                }
            }
        }
        check(&log, &m)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn log_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}
