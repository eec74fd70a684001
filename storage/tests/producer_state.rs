//! Idempotent producers' state kept by the log: deduplication on the leader, the same state
//! on a follower, rebuilt by truncation, by recovery after a crash (snapshot plus replay) and
//! after a clean close (snapshot only), pruned by retention; and 100,000 producers reloaded
//! from a snapshot.

mod common;

use common::small_config;
use keel_protocol::encode::{encode_batch, Compression, NewRecord, ProducerIds};
use keel_storage::producer_state::ProducerError;
use keel_storage::{Log, LogConfig, StorageError};

fn open(dir: &std::path::Path) -> Log {
    Log::open(dir, small_config()).expect("open")
}

/// A batch of `count` records from producer `pid` at `epoch`, sequences from `seq`.
fn batch(pid: i64, epoch: i16, seq: i32, count: usize) -> Vec<u8> {
    let records = (0..count).map(|i| NewRecord::value(format!("{pid}-{seq}-{i}"), 1_000));
    let producer = ProducerIds {
        producer_id: pid,
        producer_epoch: epoch,
        base_sequence: seq,
    };
    encode_batch(records, Compression::None, producer)
        .unwrap()
        .to_vec()
}

/// The last sequence of `pid`'s last batch, as the log keeps it.
fn last_seq(log: &Log, pid: i64) -> Option<i32> {
    log.producers()
        .into_iter()
        .find(|(id, _)| *id == pid)
        .and_then(|(_, e)| e.last().map(|b| b.last_seq))
}

#[test]
fn a_leader_writes_a_retried_batch_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let a = log.append_as_leader(&batch(7, 0, 0, 3), 1).unwrap();
    let b = log.append_as_leader(&batch(7, 0, 3, 2), 1).unwrap();
    assert_eq!((a.base_offset, b.base_offset), (0, 3));
    let again = log.append_as_leader(&batch(7, 0, 0, 3), 1).unwrap();
    assert!(again.duplicate);
    assert_eq!((again.base_offset, again.last_offset), (0, 2));
    assert_eq!(log.log_end_offset(), 5, "nothing appended");
    let gap = log.append_as_leader(&batch(7, 0, 9, 1), 1).unwrap_err();
    assert!(matches!(
        gap,
        StorageError::Producer(ProducerError::OutOfOrder {
            expected: 5,
            got: 9,
            ..
        })
    ));
    // Batches without a producer id are not the state's business.
    log.append_as_leader(&common::batch(2, 10, 1, 100), 1)
        .unwrap();
    assert_eq!(log.producer_count(), 1);
}

#[test]
fn a_follower_builds_the_same_state_and_truncation_rebuilds_it() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (leader, follower) = (open(ld.path()), open(fd.path()));
    // Enough batches to roll segments (snapshots at each roll).
    for i in 0..120 {
        leader.append_as_leader(&batch(1, 0, i * 4, 4), 3).unwrap();
    }
    let data = common::read_all(&leader, 0);
    for b in keel_protocol::batch::batches(&data) {
        follower.append_as_follower(b.unwrap().bytes).unwrap();
    }
    assert_eq!(follower.producers(), leader.producers());
    assert!(
        follower.segment_count() > 2,
        "rolled: snapshots were written ({} segments)",
        follower.segment_count()
    );
    // Cut the follower in the middle: the state is the one at the cut.
    follower.truncate_to(250).unwrap();
    let end = follower.log_end_offset();
    assert_eq!(end % 4, 0, "cut at a batch boundary");
    assert_eq!(last_seq(&follower, 1), Some(end as i32 - 1));
    // A retry of the last batch below the cut is a duplicate; the first above it is new.
    let last_kept = follower
        .append_as_leader(&batch(1, 0, end as i32 - 4, 4), 4)
        .unwrap();
    assert!(last_kept.duplicate);
    assert_eq!(last_kept.base_offset, end - 4);
    let next = follower
        .append_as_leader(&batch(1, 0, end as i32, 4), 4)
        .unwrap();
    assert!(!next.duplicate);
    assert_eq!(next.base_offset, end);
    // Fully truncated: no state at all.
    follower.truncate_fully_and_start_at(1_000).unwrap();
    assert_eq!(follower.producer_count(), 0);
}

#[test]
fn recovery_after_a_crash_and_after_a_clean_close_keeps_the_state() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        for i in 0..30 {
            log.append_as_leader(&batch(5, 2, i * 3, 3), 1).unwrap();
        }
        log.flush().unwrap();
        // Dropped without close: a crash (no snapshot at the end, replay from the last roll).
    }
    let log = open(dir.path());
    assert_eq!(last_seq(&log, 5), Some(89));
    assert!(
        log.append_as_leader(&batch(5, 2, 87, 3), 1)
            .unwrap()
            .duplicate
    );
    assert!(matches!(
        log.append_as_leader(&batch(5, 1, 90, 1), 1),
        Err(StorageError::Producer(ProducerError::InvalidEpoch {
            current: 2,
            got: 1,
            ..
        }))
    ));
    log.close().unwrap();
    let log = open(dir.path());
    assert_eq!(
        last_seq(&log, 5),
        Some(89),
        "from the clean close's snapshot"
    );
    assert!(
        log.append_as_leader(&batch(5, 2, 87, 3), 1)
            .unwrap()
            .duplicate
    );
}

#[test]
fn a_snapshot_past_the_recovered_end_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        for i in 0..30 {
            log.append_as_leader(&batch(5, 0, i * 3, 3), 1).unwrap();
        }
        log.close().unwrap();
    }
    // The log loses its tail (a power cut before the data reached the disk, say): the
    // snapshot at the old end describes batches that are gone.
    let newest = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .max()
        .unwrap();
    let len = std::fs::metadata(&newest).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&newest)
        .unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    std::fs::remove_file(dir.path().join(".keel-clean-shutdown")).unwrap();
    let log = open(dir.path());
    let end = log.log_end_offset();
    assert!(end < 90, "the tail is gone: {end}");
    assert_eq!(
        last_seq(&log, 5),
        Some(end as i32 - 1),
        "rebuilt to the recovered end"
    );
    let next = log
        .append_as_leader(&batch(5, 0, end as i32, 1), 1)
        .unwrap();
    assert_eq!((next.duplicate, next.base_offset), (false, end));
}

#[test]
fn retention_keeps_the_snapshots_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_bytes: Some(2048),
        ..small_config()
    };
    let log = Log::open(dir.path(), config.clone()).unwrap();
    for i in 0..200 {
        log.append_as_leader(&batch(9, 0, i * 2, 2), 1).unwrap();
    }
    log.set_high_watermark(log.log_end_offset());
    let out = log.enforce_retention(0).unwrap();
    assert!(out.segments_deleted > 0);
    let start = log.log_start_offset();
    let snapshots: Vec<i64> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".snapshot")?
                .parse()
                .ok()
        })
        .collect();
    assert!(
        snapshots.iter().filter(|&&o| o < start).count() <= 1,
        "snapshots below the log start {start}: {snapshots:?}"
    );
    drop(log);
    let log = Log::open(dir.path(), config).unwrap();
    assert_eq!(last_seq(&log, 9), Some(399));
}

/// 100,000 producers, one batch each: the state comes back from the clean close's snapshot
/// (no replay). Prints the load time; `BENCHMARKS.md` reports it.
#[test]
fn a_hundred_thousand_producers_reload_from_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 1 << 30,
        ..LogConfig::default()
    };
    let n = 100_000;
    {
        let log = Log::open(dir.path(), config.clone()).unwrap();
        let mut chunk = Vec::new();
        for pid in 0..n {
            chunk.extend_from_slice(&batch(pid, 0, 0, 1));
            if chunk.len() > 256 * 1024 {
                log.append_as_follower(&restamp(&chunk, log.log_end_offset()))
                    .unwrap();
                chunk.clear();
            }
        }
        if !chunk.is_empty() {
            log.append_as_follower(&restamp(&chunk, log.log_end_offset()))
                .unwrap();
        }
        assert_eq!(log.producer_count(), n as usize);
        log.close().unwrap();
    }
    let started = std::time::Instant::now();
    let log = Log::open(dir.path(), config).unwrap();
    let took = started.elapsed();
    assert_eq!(log.producer_count(), n as usize);
    assert_eq!(log.recovery_info().scanned_segments, 0);
    eprintln!(
        "100000 producer ids: log open with their state took {:.1} ms",
        took.as_secs_f64() * 1e3
    );
}

/// `chunk`'s batches numbered from `base` (as a leader would have).
fn restamp(chunk: &[u8], base: i64) -> Vec<u8> {
    let mut out = chunk.to_vec();
    let mut pos = 0;
    let mut next = base;
    while pos < out.len() {
        let h = keel_protocol::batch::BatchHeader::parse(&out[pos..]).unwrap();
        let (len, delta) = (h.total_len(), i64::from(h.last_offset_delta()));
        keel_protocol::batch::set_base_offset(&mut out[pos..], next);
        next += delta + 1;
        pos += len;
    }
    out
}

/// Recovery replays the batches after the newest snapshot, each once: the state keeps
/// exactly the producer's last five batches, and each is still answered as a duplicate.
#[test]
fn replay_after_a_snapshot_keeps_the_last_five_batches_exactly() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        for i in 0..60 {
            log.append_as_leader(&batch(5, 0, i, 1), 1).unwrap();
        }
        log.flush().unwrap();
        assert!(log.segment_count() > 1, "rolled, so a snapshot exists");
    }
    let log = open(dir.path());
    let (_, entry) = log.producers().into_iter().next().unwrap();
    let seqs: Vec<i32> = entry.batches.iter().map(|b| b.first_seq).collect();
    assert_eq!(seqs, [55, 56, 57, 58, 59]);
    for seq in 55..60 {
        assert!(
            log.append_as_leader(&batch(5, 0, seq, 1), 1)
                .unwrap()
                .duplicate
        );
    }
}
