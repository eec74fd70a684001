//! Recovery after unclean stops: torn tails, corruption, missing indexes, bad checkpoints.

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use common::{batch, describe, read_all, segment_files, small_config};
use keel_storage::Log;

fn open(dir: &Path) -> Log {
    Log::open(dir, small_config()).expect("open")
}

fn fill(log: &Log, n: u64) -> Vec<u8> {
    for i in 0..n {
        log.append_as_leader(&batch(2, 150, i, 1000 + i as i64), 1)
            .unwrap();
    }
    log.flush().unwrap();
    read_all(log, log.log_start_offset())
}

#[test]
fn torn_tail_is_truncated_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let log = open(dir.path());
        fill(&log, 10)
    };
    let active = segment_files(dir.path(), "log").pop().unwrap();
    let half = batch(2, 150, 99, 1);
    let mut f = OpenOptions::new().append(true).open(&active).unwrap();
    f.write_all(&half[..half.len() / 2]).unwrap();
    drop(f);

    let log = open(dir.path());
    let info = log.recovery_info().clone();
    assert!(!info.clean_shutdown);
    assert_eq!(info.truncated_bytes, (half.len() / 2) as u64);
    assert_eq!(log.log_end_offset(), 20);
    assert_eq!(read_all(&log, 0), before);
    assert_eq!(
        log.append_as_leader(&batch(1, 10, 5, 1), 1)
            .unwrap()
            .base_offset,
        20
    );
}

#[test]
fn scans_only_segments_past_the_recovery_point() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        fill(&log, 60);
        assert!(log.segment_count() > 4);
        log.checkpoint().unwrap();
    }
    let log = open(dir.path());
    assert_eq!(
        log.recovery_info().scanned_segments,
        1,
        "{:?}",
        log.recovery_info()
    );
    // Rolls on the append path do not checkpoint: a crash before the next checkpoint scans
    // every segment started since the last one (and loses nothing).
    let segments = log.segment_count();
    let before = fill(&log, 60);
    let rolled = log.segment_count() - segments;
    assert!(rolled > 3);
    drop(log);
    let log = open(dir.path());
    assert!(!log.recovery_info().clean_shutdown);
    assert_eq!(log.recovery_info().scanned_segments, rolled);
    assert_eq!(log.recovery_info().truncated_bytes, 0);
    assert_eq!(read_all(&log, log.log_start_offset()), before);
    // The broker's periodic checkpoint_if_rolled, after the flush that sealed them, moves the
    // recovery point to the active segment: a crash scans the active segment only.
    fill(&log, 60);
    assert!(log.checkpoint_if_rolled().unwrap());
    assert!(!log.checkpoint_if_rolled().unwrap(), "nothing rolled since");
    assert!(segment_files(dir.path(), "log").len() > 8);
    drop(log);
    let log = open(dir.path());
    assert!(!log.recovery_info().clean_shutdown);
    assert_eq!(
        log.recovery_info().scanned_segments,
        1,
        "{:?}",
        log.recovery_info()
    );
    log.close().unwrap();
    let log = open(dir.path());
    assert!(log.recovery_info().clean_shutdown);
    assert_eq!(log.recovery_info().scanned_segments, 0);
    drop(log);
    let log = open(dir.path());
    assert!(
        !log.recovery_info().clean_shutdown,
        "marker is consumed by open"
    );
}

#[test]
fn corrupt_byte_in_active_segment_truncates_from_that_batch() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let log = open(dir.path());
        fill(&log, 5)
    };
    let active = segment_files(dir.path(), "log").pop().unwrap();
    let mut data = std::fs::read(&active).unwrap();
    let batches = describe(&data);
    assert_eq!(batches.len(), 5);
    let third = (data.len() / 5) * 2 + 100; // inside the third batch (all batches equal size)
    data[third] ^= 0x55;
    std::fs::write(&active, &data).unwrap();
    let log = open(dir.path());
    assert_eq!(log.log_end_offset(), 4);
    assert_eq!(read_all(&log, 0), before[..before.len() / 5 * 2].to_vec());
    assert_eq!(
        log.recovery_info().truncated_bytes,
        (data.len() / 5 * 3) as u64
    );
}

#[test]
fn corrupt_recovery_point_forces_full_scan_and_cuts_later_segments() {
    let dir = tempfile::tempdir().unwrap();
    let all = {
        let log = open(dir.path());
        let all = fill(&log, 60);
        log.checkpoint().unwrap();
        all
    };
    let logs = segment_files(dir.path(), "log");
    assert!(logs.len() > 4);
    std::fs::write(
        dir.path().join("recovery-point-offset-checkpoint"),
        b"junk\n",
    )
    .unwrap();
    // Corrupt the third segment.
    let mut data = std::fs::read(&logs[2]).unwrap();
    data[70] ^= 1;
    std::fs::write(&logs[2], &data).unwrap();
    let cut = logs[2]
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .parse::<i64>()
        .unwrap();

    let log = open(dir.path());
    let info = log.recovery_info().clone();
    assert_eq!(info.corrupt_checkpoints.len(), 1, "{info:?}");
    assert!(info.corrupt_checkpoints[0].starts_with("recovery-point-offset-checkpoint"));
    assert_eq!(info.scanned_segments, 3);
    assert_eq!(log.log_end_offset(), cut);
    assert_eq!(log.segment_count(), 3);
    let kept = read_all(&log, 0);
    assert_eq!(kept[..], all[..kept.len()]);
    assert_eq!(segment_files(dir.path(), "log").len(), 3);
}

#[test]
fn segment_ending_short_of_the_next_one_ends_the_log() {
    // A power cut after rolls without a flush: the unsynced tail of the segment holding the
    // last flush is lost, the newer segment files survive empty (or with whatever they hold).
    let dir = tempfile::tempdir().unwrap();
    let (flushed, kept, cut_at, flushed_len) = {
        let log = open(dir.path());
        let kept = fill(&log, 12);
        let flushed = log.log_end_offset();
        let active = segment_files(dir.path(), "log").pop().unwrap();
        let len = std::fs::metadata(&active).unwrap().len();
        for i in 0..30 {
            log.append_as_leader(&batch(2, 150, 100 + i, 1), 1).unwrap();
        }
        (flushed, kept, active, len)
    };
    assert_eq!(flushed, 24);
    let logs = segment_files(dir.path(), "log");
    let at = logs.iter().position(|p| *p == cut_at).unwrap();
    assert!(
        logs.len() >= at + 3,
        "rolled at least twice after the flush"
    );
    let set_len = |p: &Path, len: u64| {
        OpenOptions::new()
            .write(true)
            .open(p)
            .unwrap()
            .set_len(len)
            .unwrap()
    };
    set_len(&cut_at, flushed_len);
    for p in &logs[at + 1..] {
        set_len(p, 0);
    }

    let log = open(dir.path());
    assert_eq!(log.log_end_offset(), flushed, "{:?}", log.recovery_info());
    assert_eq!(log.segment_count(), at + 1);
    assert_eq!(segment_files(dir.path(), "log").len(), at + 1);
    assert_eq!(read_all(&log, 0), kept);
    assert_eq!(
        log.append_as_leader(&batch(1, 10, 5, 1), 1)
            .unwrap()
            .base_offset,
        flushed
    );
}

#[test]
fn missing_index_of_sealed_segment_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let all = {
        let log = open(dir.path());
        let all = fill(&log, 40);
        log.close().unwrap();
        all
    };
    let indexes = segment_files(dir.path(), "index");
    std::fs::remove_file(&indexes[1]).unwrap();
    std::fs::write(&segment_files(dir.path(), "timeindex")[2], [7u8; 5]).unwrap();
    let log = open(dir.path());
    assert!(log.recovery_info().clean_shutdown);
    assert_eq!(
        log.recovery_info().rebuilt_indexes,
        2,
        "{:?}",
        log.recovery_info()
    );
    assert!(indexes[1].exists());
    assert_eq!(read_all(&log, 0), all);
    assert_eq!(log.offset_for_timestamp(1020).unwrap(), Some((40, 1020)));
}

#[test]
fn hw_above_recovered_leo_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        fill(&log, 10);
        log.set_high_watermark(20);
        log.checkpoint().unwrap();
    }
    // Lose the tail of the (only) segment behind the log's back.
    let active = segment_files(dir.path(), "log").pop().unwrap();
    let len = std::fs::metadata(&active).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&active)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let log = open(dir.path());
    let info = log.recovery_info();
    assert!(info.hw_above_leo);
    assert_eq!(info.checkpointed_hw, Some(20));
    assert_eq!(log.high_watermark(), log.log_end_offset());
    assert!(log.log_end_offset() < 20);
}

#[test]
fn corrupt_hw_and_epoch_checkpoints_fall_back_safely() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        fill(&log, 30);
        log.set_high_watermark(50);
        log.append_as_leader(&batch(1, 10, 0, 1), 4).unwrap();
        log.flush().unwrap();
        log.close().unwrap();
    }
    std::fs::write(dir.path().join("replication-offset-checkpoint"), b"x").unwrap();
    let epoch_file = dir.path().join("leader-epoch-checkpoint");
    let mut data = std::fs::read(&epoch_file).unwrap();
    data[0] ^= 0x20;
    std::fs::write(&epoch_file, data).unwrap();
    let log = open(dir.path());
    let info = log.recovery_info();
    assert_eq!(info.corrupt_checkpoints.len(), 2, "{info:?}");
    assert!(!info.clean_shutdown || info.scanned_segments > 0);
    assert_eq!(
        info.scanned_segments,
        log.segment_count(),
        "epochs rebuilt by a full scan"
    );
    assert_eq!(log.high_watermark(), log.log_start_offset());
    assert_eq!(log.epoch_entries(), vec![(1, 0), (4, 60)]);
    drop(log);
    let log = open(dir.path());
    assert!(
        log.recovery_info().corrupt_checkpoints.is_empty(),
        "rewritten on open"
    );
}

/// The inode of a checkpoint file: a rewrite (temp file, rename) gives it a new one.
fn checkpoint_inode(dir: &Path, name: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir.join(name)).ok().map(|m| m.ino())
}

#[test]
fn reopening_an_unchanged_log_rewrites_no_checkpoint() {
    const RP: &str = "recovery-point-offset-checkpoint";
    // An empty log that never checkpointed stays without checkpoints across unclean opens.
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    drop(open(dir.path()));
    assert_eq!(checkpoint_inode(dir.path(), RP), None);
    let log = open(dir.path());
    assert_eq!(log.log_end_offset(), 0);

    // Data whose checkpoints say all there is: an unclean reopen keeps the files as they are
    // and loses nothing.
    let before = fill(&log, 20);
    log.checkpoint().unwrap();
    let ino = checkpoint_inode(dir.path(), RP).expect("checkpointed");
    drop(log);
    let log = open(dir.path());
    assert!(!log.recovery_info().clean_shutdown);
    assert_eq!(checkpoint_inode(dir.path(), RP), Some(ino));
    assert_eq!(read_all(&log, log.log_start_offset()), before);

    // Appends past the recovery point: the reopen checkpoints what it recovered.
    let after = fill(&log, 5);
    drop(log);
    let log = open(dir.path());
    assert_ne!(checkpoint_inode(dir.path(), RP), Some(ino));
    assert_eq!(read_all(&log, log.log_start_offset()), after);
    drop(log);
    let ino = checkpoint_inode(dir.path(), RP);
    let log = open(dir.path());
    assert_eq!(checkpoint_inode(dir.path(), RP), ino);
    assert_eq!(read_all(&log, log.log_start_offset()), after);
}
