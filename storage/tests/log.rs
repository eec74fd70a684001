//! Behaviour of `Log` through its public API.

mod common;

use std::sync::Arc;

use common::{batch, describe, read_all, small_config};
use keel_protocol::batch::{set_base_offset, set_partition_leader_epoch, BatchHeader};
use keel_storage::{delete_log_dir, Log, LogConfig, StorageError};

fn open(dir: &std::path::Path) -> Log {
    Log::open(dir, small_config()).expect("open")
}

#[test]
fn log_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Log>();
}

#[test]
fn leader_append_assigns_offsets_and_stamps_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (0, 0));
    let a = log.append_as_leader(&batch(3, 10, 1, 100), 5).unwrap();
    assert_eq!((a.base_offset, a.last_offset, a.log_end_offset), (0, 2, 3));
    let mut two = batch(2, 10, 2, 300);
    two.extend_from_slice(&batch(1, 10, 3, 200));
    let b = log.append_as_leader(&two, 5).unwrap();
    assert_eq!((b.base_offset, b.last_offset, b.batches), (3, 5, 2));
    assert_eq!(b.max_timestamp, 300);
    assert_eq!(b.bytes, two.len());

    let r = log.read(0, 1 << 20, i64::MAX).unwrap();
    assert_eq!(describe(&r.records), vec![(0, 2, 5), (3, 4, 5), (5, 5, 5)]);
    assert_eq!(
        (r.first_offset, r.log_start_offset, r.log_end_offset),
        (0, 0, 6)
    );
    // Mid-batch offset returns the containing batch.
    let r = log.read(4, 1 << 20, i64::MAX).unwrap();
    assert_eq!(r.first_offset, 3);
    // Bytes are the client's bytes except the stamped prefix.
    let mut expected = two.clone();
    set_base_offset(&mut expected, 3);
    set_partition_leader_epoch(&mut expected, 5);
    let first_len = two.len() - batch(1, 10, 3, 200).len();
    assert_eq!(&r.records[..first_len], &expected[..first_len]);
    assert_eq!(log.latest_epoch(), Some(5));
    assert_eq!(log.epoch_entries(), vec![(5, 0)]);
}

#[test]
fn read_limits_and_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    for i in 0..5 {
        log.append_as_leader(&batch(2, 50, i, 10), 1).unwrap();
    }
    // max_offset: only batches whose last offset is below it.
    let r = log.read(0, 1 << 20, 5).unwrap();
    assert_eq!(describe(&r.records).last().unwrap().1, 3);
    let r = log.read(4, 1 << 20, 5).unwrap();
    assert!(r.records.is_empty(), "batch 4..5 straddles max_offset");
    assert_eq!(r.first_offset, 4);
    // max_bytes: at least one whole batch, then only whole batches that fit.
    let one = log.read(0, 1, i64::MAX).unwrap();
    assert_eq!(describe(&one.records).len(), 1);
    let two = log.read(0, one.records.len() * 2 + 1, i64::MAX).unwrap();
    assert_eq!(describe(&two.records).len(), 2);
    // Ends and out of range.
    assert!(log.read(10, 100, i64::MAX).unwrap().records.is_empty());
    assert!(log.read(2, 100, 2).unwrap().records.is_empty());
    assert!(matches!(
        log.read(11, 100, i64::MAX),
        Err(StorageError::OffsetOutOfRange {
            offset: 11,
            log_start: 0,
            log_end: 10
        })
    ));
    assert!(matches!(
        log.read(-1, 100, i64::MAX),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
}

#[test]
fn rejects_bad_batches_without_writing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.append_as_leader(&batch(1, 10, 0, 1), 0).unwrap();
    let size = log.size_bytes();
    let mut corrupt = batch(2, 10, 1, 1);
    let mut bad = batch(1, 10, 2, 1);
    let n = bad.len();
    bad[n - 1] ^= 0xff;
    corrupt.extend_from_slice(&bad);
    let e = log.append_as_leader(&corrupt, 0).unwrap_err();
    assert!(matches!(e, StorageError::CorruptBatch { .. }), "{e}");
    assert!(e.to_string().contains("crc mismatch"), "{e}");
    let mut torn = batch(1, 10, 3, 1);
    torn.pop();
    assert!(matches!(
        log.append_as_leader(&torn, 0),
        Err(StorageError::CorruptBatch { .. })
    ));
    assert!(matches!(
        log.append_as_leader(&[], 0),
        Err(StorageError::CorruptBatch { .. })
    ));
    let huge = batch(1, small_config().max_batch_bytes as usize, 4, 1);
    assert!(matches!(
        log.append_as_leader(&huge, 0),
        Err(StorageError::RecordTooLarge { .. })
    ));
    assert_eq!(log.log_end_offset(), 1);
    assert_eq!(log.size_bytes(), size);
    assert_eq!(describe(&read_all(&log, 0)).len(), 1);
}

#[test]
fn follower_append_is_verbatim_and_monotonic() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let mut b = batch(3, 10, 0, 1);
    set_partition_leader_epoch(&mut b, 2);
    let mut gap = batch(1, 10, 1, 1);
    set_base_offset(&mut gap, 10); // compacted gap: allowed after the first batch
    set_partition_leader_epoch(&mut gap, 4);
    let mut both = b.clone();
    both.extend_from_slice(&gap);
    let a = log.append_as_follower(&both).unwrap();
    assert_eq!(
        (a.base_offset, a.last_offset, a.log_end_offset),
        (0, 10, 11)
    );
    assert_eq!(read_all(&log, 0), both);
    assert_eq!(log.epoch_entries(), vec![(2, 0), (4, 10)]);
    assert_eq!(log.end_offset_for_epoch(3), Some((2, 10)));
    assert_eq!(log.end_offset_for_epoch(4), Some((4, 11)));
    assert_eq!(log.end_offset_for_epoch(1), Some((1, 0)));
    assert_eq!(log.end_offset_for_epoch(5), None);

    let mut wrong = batch(1, 10, 2, 1);
    set_base_offset(&mut wrong, 12);
    assert!(matches!(
        log.append_as_follower(&wrong),
        Err(StorageError::NonMonotonicOffset {
            expected: 11,
            got: 12
        })
    ));
    let mut first = batch(2, 10, 2, 1);
    set_base_offset(&mut first, 11);
    let mut back = batch(1, 10, 2, 1);
    set_base_offset(&mut back, 12);
    first.extend_from_slice(&back);
    assert!(matches!(
        log.append_as_follower(&first),
        Err(StorageError::NonMonotonicOffset { .. })
    ));
    assert_eq!(log.log_end_offset(), 11);
}

#[test]
fn rolls_by_size_and_reads_span_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let mut expected = Vec::new();
    for i in 0..60 {
        let a = log
            .append_as_leader(&batch(2, 100, i, 1000 + i as i64), 1)
            .unwrap();
        expected.push((a.base_offset, a.last_offset, 1));
    }
    assert!(
        log.segment_count() >= 5,
        "segments: {}",
        log.segment_count()
    );
    // A read returns data from one segment only.
    let first = log.read(0, 1 << 20, i64::MAX).unwrap();
    assert!(first.records.len() <= 4096);
    assert_eq!(describe(&read_all(&log, 0)), expected);
    for (base, last, _) in &expected {
        let r = log.read(*last, 1, i64::MAX).unwrap();
        assert_eq!(r.first_offset, *base);
    }
    let files = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(
        files >= 3 * log.segment_count(),
        "log, index and timeindex per segment"
    );
    assert_eq!(log.offset_for_timestamp(1030).unwrap(), Some((60, 1030)));
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some((0, 1000)));
    assert_eq!(log.offset_for_timestamp(5000).unwrap(), None);
}

#[test]
fn rolls_when_the_index_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        segment_bytes: 1 << 20,
        index_interval_bytes: 1,
        max_index_bytes: 1024,
        ..small_config()
    };
    let log = Log::open(dir.path(), cfg).unwrap();
    for i in 0..200 {
        log.append_as_leader(&batch(1, 1, i, 1), 0).unwrap();
    }
    assert!(
        log.segment_count() >= 2,
        "1024-byte time index holds < 100 entries"
    );
    assert_eq!(describe(&read_all(&log, 0)).len(), 200);
}

#[test]
fn group_commit_flush_from_many_threads() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(open(dir.path()));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let a = log
                        .append_as_leader(&batch(1, 20, t * 100 + i, 1), 0)
                        .unwrap();
                    let durable = log.flush().unwrap();
                    assert!(
                        durable > a.last_offset,
                        "durable {durable} <= {}",
                        a.last_offset
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(log.log_end_offset(), 100);
    assert_eq!(log.durable_end_offset(), 100);
    assert_eq!(log.flush().unwrap(), 100);
}

#[test]
fn truncate_to_mid_batch_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let kept;
    {
        let log = open(dir.path());
        for i in 0..40 {
            let epoch = if i < 20 { 1 } else { 3 };
            log.append_as_leader(&batch(3, 80, i, 1), epoch).unwrap();
        }
        log.flush().unwrap();
        log.set_high_watermark(100);
        log.checkpoint().unwrap();
        let segments = log.segment_count();
        let size = log.size_bytes();
        let held = log.read(90, 1 << 20, i64::MAX).unwrap().records;
        log.truncate_to(52).unwrap(); // inside batch 51..53
        assert_eq!(log.log_end_offset(), 51);
        assert_eq!(log.high_watermark(), 51);
        assert_eq!(log.durable_end_offset(), 51);
        assert_eq!(log.epoch_entries(), vec![(1, 0)]);
        assert!(log.segment_count() < segments);
        assert!(log.size_bytes() < size);
        // Bytes handed out before the truncation stay mapped (no SIGBUS).
        let touched: u64 = held.iter().map(|&b| u64::from(b)).sum();
        assert!(!held.is_empty() && touched < u64::MAX);
        assert!(matches!(
            log.read(52, 10, i64::MAX),
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        let a = log.append_as_leader(&batch(1, 10, 99, 1), 7).unwrap();
        assert_eq!(a.base_offset, 51);
        assert_eq!(log.epoch_entries(), vec![(1, 0), (7, 51)]);
        log.flush().unwrap();
        kept = read_all(&log, 0);
        log.truncate_to(1000).unwrap(); // past the end: no-op
        assert_eq!(log.log_end_offset(), 52);
    }
    // Unclean reopen: nothing truncated may come back.
    let log = open(dir.path());
    assert!(!log.recovery_info().clean_shutdown);
    assert_eq!(log.log_end_offset(), 52);
    assert_eq!(read_all(&log, 0), kept);
    assert_eq!(log.epoch_entries(), vec![(1, 0), (7, 51)]);
    log.close().unwrap();
    let log = open(dir.path());
    assert!(log.recovery_info().clean_shutdown);
    assert_eq!(log.recovery_info().scanned_segments, 0);
    assert_eq!(read_all(&log, 0), kept);
    assert_eq!(log.high_watermark(), 51);
}

#[test]
fn truncate_to_segment_boundary_and_below_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    for i in 0..30 {
        log.append_as_leader(&batch(1, 300, i, 1), 1).unwrap();
    }
    let second_base = {
        // Find the base of the second segment from the file names.
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".log"))
            .collect();
        names.sort();
        names[1].trim_end_matches(".log").parse::<i64>().unwrap()
    };
    log.truncate_to(second_base).unwrap();
    assert_eq!(log.log_end_offset(), second_base);
    let a = log.append_as_leader(&batch(1, 300, 77, 1), 2).unwrap();
    assert_eq!(a.base_offset, second_base);
    log.truncate_fully_and_start_at(500).unwrap();
    assert_eq!(
        (
            log.log_start_offset(),
            log.log_end_offset(),
            log.high_watermark(),
            log.segment_count()
        ),
        (500, 500, 500, 1)
    );
    assert!(log.epoch_entries().is_empty());
    assert!(log.read(500, 100, i64::MAX).unwrap().records.is_empty());
    assert!(matches!(
        log.read(10, 100, i64::MAX),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    assert_eq!(
        log.append_as_leader(&batch(1, 10, 1, 1), 3)
            .unwrap()
            .base_offset,
        500
    );
    log.truncate_to(100).unwrap(); // below log start: restart at 100
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (100, 100));
    drop(log);
    let log = open(dir.path());
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (100, 100));
}

#[test]
fn retention_by_bytes_and_time_respects_hw() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        retention_bytes: Some(8192),
        retention_ms: None,
        ..small_config()
    };
    let log = Log::open(dir.path(), cfg).unwrap();
    for i in 0..100 {
        log.append_as_leader(&batch(1, 200, i, 1000 + i as i64), 1)
            .unwrap();
    }
    let before = (log.segment_count(), log.size_bytes());
    let none = log.enforce_retention(0).unwrap();
    assert_eq!(
        none.segments_deleted, 0,
        "HW is 0: nothing committed, nothing deleted"
    );
    log.set_high_watermark(100);
    let out = log.enforce_retention(0).unwrap();
    assert!(out.segments_deleted > 0);
    assert_eq!(log.segment_count(), before.0 - out.segments_deleted);
    assert_eq!(log.size_bytes(), before.1 - out.bytes_deleted);
    assert!(
        log.size_bytes() >= 8192 && log.size_bytes() < 8192 + 4096,
        "{}",
        log.size_bytes()
    );
    let start = log.log_start_offset();
    assert!(start > 0);
    assert!(matches!(
        log.read(0, 10, i64::MAX),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    assert_eq!(describe(&read_all(&log, start)).first().unwrap().0, start);
    drop(log);

    let cfg = LogConfig {
        retention_bytes: None,
        retention_ms: Some(50),
        ..small_config()
    };
    let log = Log::open(dir.path(), cfg).unwrap();
    assert_eq!(log.log_start_offset(), start, "log start survives reopen");
    log.set_high_watermark(100);
    let out = log.enforce_retention(1000 + start + 30 + 50).unwrap();
    // Segments whose newest record is older than ts(start + 30) are gone; the active one never.
    assert!(out.segments_deleted > 0);
    assert!(log.log_start_offset() > start);
    let out = log.enforce_retention(i64::MAX / 2).unwrap();
    assert!(out.segments_deleted > 0 || log.segment_count() == 1);
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.log_end_offset(), 100);
}

#[test]
fn time_roll() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        segment_ms: Some(1000),
        ..small_config()
    };
    let log = Log::open(dir.path(), cfg).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        !log.maybe_roll(now + 5000).unwrap(),
        "empty segment does not roll"
    );
    log.append_as_leader(&batch(1, 10, 0, 1), 0).unwrap();
    assert!(!log.maybe_roll(now).unwrap());
    assert!(log.maybe_roll(now + 5000).unwrap());
    assert_eq!(log.segment_count(), 2);
    log.roll().unwrap(); // empty active: no-op
    assert_eq!(log.segment_count(), 2);
}

#[test]
fn high_watermark_is_clamped() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.append_as_leader(&batch(5, 10, 0, 1), 0).unwrap();
    assert_eq!(log.set_high_watermark(3), 3);
    assert_eq!(log.set_high_watermark(50), 5);
    assert_eq!(log.set_high_watermark(-4), 0);
}

#[test]
fn close_makes_later_calls_fail() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.append_as_leader(&batch(1, 10, 0, 1), 0).unwrap();
    let r = log.read(0, 100, i64::MAX).unwrap();
    log.close().unwrap();
    assert!(matches!(log.close(), Err(StorageError::Closed { .. })));
    assert!(matches!(
        log.append_as_leader(&batch(1, 10, 0, 1), 0),
        Err(StorageError::Closed { .. })
    ));
    assert!(matches!(
        log.read(0, 10, 10),
        Err(StorageError::Closed { .. })
    ));
    assert!(matches!(log.flush(), Err(StorageError::Closed { .. })));
    BatchHeader::parse(&r.records)
        .unwrap()
        .validate(&r.records)
        .unwrap();
}

#[test]
fn delete_log_dir_renames() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("topic-0");
    let log = Log::open(&dir, small_config()).unwrap();
    log.append_as_leader(&batch(1, 10, 0, 1), 0).unwrap();
    drop(log);
    let moved = delete_log_dir(&dir).unwrap();
    assert!(!dir.exists());
    let name = moved.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("topic-0.") && name.ends_with("-delete"),
        "{name}"
    );
    std::fs::remove_dir_all(&moved).unwrap();
}

#[test]
fn a_leader_epoch_assigned_at_election_ends_at_the_log_end() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.append_as_leader(&batch(3, 10, 0, 1), 1).unwrap();
    log.assign_epoch(4).unwrap();
    log.assign_epoch(2).unwrap(); // older than the latest: ignored
    assert_eq!(log.epoch_entries(), vec![(1, 0), (4, 3)]);
    assert_eq!(log.end_offset_for_epoch(1), Some((1, 3)));
    assert_eq!(log.end_offset_for_epoch(3), Some((1, 3)));
    assert_eq!(log.end_offset_for_epoch(4), Some((4, 3)));
    log.append_as_leader(&batch(2, 10, 1, 1), 4).unwrap();
    assert_eq!(log.epoch_entries(), vec![(1, 0), (4, 3)]);
    assert_eq!(log.end_offset_for_epoch(4), Some((4, 5)));
    // A truncation at the log end removes no data but an epoch starting there.
    log.assign_epoch(6).unwrap();
    log.truncate_to(5).unwrap();
    assert_eq!(log.epoch_entries(), vec![(1, 0), (4, 3)]);
    assert_eq!(log.log_end_offset(), 5);
}
