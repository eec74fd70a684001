//! `Log::mark_for_rescan`: the next open CRC-scans from the marked segment, whatever the
//! shutdown, and truncates at the first bad batch.

mod common;

use std::path::Path;

use common::{batch, flip_value_byte, segment_files, small_config};
use keel_protocol::batch::batches;
use keel_storage::{Log, StorageError};

const MARK: &str = "rescan-offset-checkpoint";

fn open(dir: &Path) -> Log {
    Log::open(dir, small_config()).expect("open")
}

fn fill(log: &Log, n: u64) {
    for i in 0..n {
        log.append_as_leader(&batch(2, 150, i, 1000 + i as i64), 1)
            .unwrap();
    }
    log.flush().unwrap();
}

/// Every byte of the log, from reads (no CRC check).
fn contents(log: &Log) -> Vec<u8> {
    let mut out = Vec::new();
    let mut next = log.log_start_offset();
    while next < log.log_end_offset() {
        let r = log.read(next, 1 << 20, i64::MAX).unwrap();
        next = batches(&r.records)
            .map(|b| b.unwrap().header.last_offset() + 1)
            .last()
            .unwrap();
        out.extend_from_slice(&r.records);
    }
    out
}

#[test]
fn a_corrupt_sealed_segment_is_cut_on_the_open_after_a_mark() {
    let dir = tempfile::tempdir().unwrap();
    let leo = {
        let log = open(dir.path());
        fill(&log, 40);
        assert_eq!(log.set_high_watermark(80), 80);
        log.checkpoint().unwrap();
        log.close().unwrap();
        80
    };
    let files = segment_files(dir.path(), "log");
    assert!(files.len() >= 4, "{}", files.len());
    let bad = flip_value_byte(&files[1], 2);

    // A clean shutdown: nothing is scanned, the corruption goes unnoticed until a digest.
    let log = open(dir.path());
    let info = log.recovery_info().clone();
    assert!(info.clean_shutdown);
    assert_eq!((info.scanned_segments, info.rescanned_from), (0, None));
    assert_eq!(log.log_end_offset(), leo);
    let corrupt = log.digest(0, i64::MAX).unwrap().corrupt_batch;
    assert_eq!(corrupt, Some(bad));
    let all = contents(&log);
    let cut = batches(&all)
        .map(|b| b.unwrap())
        .find(|b| b.header.base_offset() == bad)
        .unwrap()
        .pos;
    log.mark_for_rescan(bad).unwrap();
    assert!(dir.path().join(MARK).exists());
    let segments_before = log.segment_count();
    log.close().unwrap();

    // The mark overrides the clean-shutdown marker: cut at the bad batch, later segments gone.
    let log = open(dir.path());
    let info = log.recovery_info().clone();
    assert!(info.clean_shutdown);
    assert_eq!(info.rescanned_from, Some(bad));
    assert_eq!(info.scanned_segments, 1, "{info:?}");
    assert!(info.truncated_bytes > 0);
    assert_eq!(log.log_end_offset(), bad);
    assert_eq!(log.segment_count(), 2);
    assert!(log.segment_count() < segments_before);
    assert!(info.hw_above_leo, "{info:?}");
    assert_eq!(info.checkpointed_hw, Some(leo));
    assert_eq!(log.high_watermark(), bad);
    assert!(!dir.path().join(MARK).exists());
    assert_eq!(contents(&log), all[..cut]);
    let d = log.digest(0, i64::MAX).unwrap();
    assert_eq!((d.corrupt_batch, d.end_offset), (None, Some(bad)));
    // Appends continue at the cut.
    assert_eq!(
        log.append_as_leader(&batch(1, 10, 7, 1), 2)
            .unwrap()
            .base_offset,
        bad
    );
    log.close().unwrap();

    let log = open(dir.path());
    let info = log.recovery_info();
    assert!(info.clean_shutdown);
    assert_eq!((info.scanned_segments, info.rescanned_from), (0, None));
    assert!(!info.hw_above_leo);
    assert_eq!(log.log_end_offset(), bad + 1);
}

#[test]
fn a_mark_on_a_healthy_log_rescans_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (all, marked) = {
        let log = open(dir.path());
        fill(&log, 40);
        log.checkpoint().unwrap();
        let segments = segment_files(dir.path(), "log");
        let second: i64 = segments[1]
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .parse()
            .unwrap();
        // A later, higher mark does not hide a lower one.
        log.mark_for_rescan(second + 3).unwrap();
        log.mark_for_rescan(second + 40).unwrap();
        (contents(&log), second + 3)
        // Dropped without close: an unclean stop on top of the mark.
    };
    let log = open(dir.path());
    let info = log.recovery_info().clone();
    assert!(!info.clean_shutdown);
    assert_eq!(info.rescanned_from, Some(marked));
    assert_eq!(info.scanned_segments, log.segment_count() - 1, "{info:?}");
    assert_eq!(info.truncated_bytes, 0);
    assert_eq!(contents(&log), all);
    assert_eq!(log.log_end_offset(), 80);
}

#[test]
fn mark_offsets_outside_the_log_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.truncate_fully_and_start_at(100).unwrap();
    fill(&log, 5);
    for offset in [99, 111] {
        assert!(matches!(
            log.mark_for_rescan(offset),
            Err(StorageError::OffsetOutOfRange {
                log_start: 100,
                log_end: 110,
                ..
            })
        ));
    }
    assert!(!dir.path().join(MARK).exists());
    log.mark_for_rescan(110).unwrap();
    log.close().unwrap();
    assert!(matches!(
        log.mark_for_rescan(100),
        Err(StorageError::Closed { .. })
    ));
}

#[test]
fn an_unreadable_mark_rescans_every_segment() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        fill(&log, 40);
        log.close().unwrap();
    }
    std::fs::write(dir.path().join(MARK), b"garbage").unwrap();
    let log = open(dir.path());
    let info = log.recovery_info();
    assert!(info.clean_shutdown);
    assert_eq!(info.rescanned_from, Some(0));
    assert_eq!(info.scanned_segments, log.segment_count());
    assert_eq!(info.corrupt_checkpoints.len(), 1, "{info:?}");
    assert!(info.corrupt_checkpoints[0].starts_with(MARK));
    assert_eq!(log.log_end_offset(), 80);
    assert!(!dir.path().join(MARK).exists());
}
