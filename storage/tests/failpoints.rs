//! Injected write and fsync failures (see `keel_storage::failpoint`).

mod common;

use common::{batch, describe, read_all, small_config};
use keel_protocol::batch::{set_base_offset, set_partition_leader_epoch};
use keel_storage::failpoint::{self, FailAction};
use keel_storage::{Log, StorageError};

/// Segment fsyncs under `dir` fail with EIO (`times` of them, or all until cleared).
fn fail_fsyncs(dir: &std::path::Path, times: Option<u32>) {
    failpoint::set(
        failpoint::SEGMENT_FSYNC,
        dir,
        FailAction::Error { errno: libc::EIO },
        times,
    );
}

#[test]
fn failed_write_leaves_log_unchanged_and_next_append_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    log.append_as_leader(&batch(2, 100, 0, 1), 1).unwrap();
    let before = (read_all(&log, 0), log.size_bytes(), log.log_end_offset());

    failpoint::set(
        failpoint::SEGMENT_WRITE,
        dir.path(),
        FailAction::Error {
            errno: libc::ENOSPC,
        },
        Some(1),
    );
    let e = log.append_as_leader(&batch(2, 100, 1, 1), 1).unwrap_err();
    assert!(matches!(e, StorageError::DiskFull { .. }), "{e}");
    assert!(e.to_string().contains("disk full"));
    assert_eq!(
        (read_all(&log, 0), log.size_bytes(), log.log_end_offset()),
        before
    );

    // A partial write (half a batch reached the file) is discarded too.
    failpoint::set(
        failpoint::SEGMENT_WRITE,
        dir.path(),
        FailAction::PartialWrite {
            bytes: 150,
            errno: libc::EDQUOT,
        },
        Some(1),
    );
    let held = log.read(0, 1 << 20, i64::MAX).unwrap().records; // mapping shared: hole punched
    let e = log.append_as_leader(&batch(2, 100, 2, 1), 1).unwrap_err();
    assert!(matches!(e, StorageError::DiskFull { .. }), "{e}");
    assert_eq!(log.log_end_offset(), before.2);
    assert_eq!(read_all(&log, 0), before.0);
    assert_eq!(held[..], before.0[..]);
    drop(held);

    let a = log.append_as_leader(&batch(1, 100, 3, 1), 1).unwrap();
    assert_eq!(a.base_offset, 2);
    log.flush().unwrap();
    let after = read_all(&log, 0);
    drop(log);
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(read_all(&log, 0), after);
    failpoint::clear(dir.path());
}

#[test]
fn partial_write_garbage_is_not_recovered_after_crash() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    log.append_as_leader(&batch(1, 100, 0, 1), 1).unwrap();
    let mut two = batch(1, 100, 1, 1);
    two.extend_from_slice(&batch(1, 100, 2, 1));
    failpoint::set(
        failpoint::SEGMENT_WRITE,
        dir.path(),
        FailAction::PartialWrite {
            bytes: two.len() - 10,
            errno: libc::ENOSPC,
        },
        Some(1),
    );
    assert!(log.append_as_leader(&two, 1).is_err());
    let kept = read_all(&log, 0);
    drop(log); // no close: unclean
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(
        log.log_end_offset(),
        1,
        "the rejected append's first batch must not come back"
    );
    assert_eq!(read_all(&log, 0), kept);
    failpoint::clear(dir.path());
}

#[test]
fn failed_fsync_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    log.append_as_leader(&batch(1, 10, 0, 1), 1).unwrap();
    assert_eq!(log.flush().unwrap(), 1);
    log.append_as_leader(&batch(1, 10, 1, 1), 1).unwrap();
    fail_fsyncs(dir.path(), Some(1));
    let e = log.flush().unwrap_err();
    assert!(matches!(e, StorageError::FsyncFailed { .. }), "{e}");
    assert!(e.to_string().contains("fsync failed"));
    assert_eq!(log.durable_end_offset(), 1);
    failpoint::clear(dir.path());
}

/// A roll on the append path does not fsync (the append that fills a segment must not wait
/// for the disk); the next flush seals the rolled segment, and until it succeeds nothing past
/// the last flush counts as durable.
#[test]
fn roll_on_append_defers_its_fsync_to_the_next_flush() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    log.append_as_leader(&batch(1, 10, 0, 1), 1).unwrap();
    assert_eq!(log.flush().unwrap(), 1);
    fail_fsyncs(dir.path(), None);
    let segments = log.segment_count();
    while log.segment_count() < segments + 2 {
        log.append_as_leader(&batch(4, 200, 1, 1), 1)
            .expect("appends roll without fsyncing");
    }
    let e = log.flush().unwrap_err();
    assert!(matches!(e, StorageError::FsyncFailed { .. }), "{e}");
    assert_eq!(log.durable_end_offset(), 1);
    failpoint::clear(dir.path());
    assert_eq!(log.flush().unwrap(), log.log_end_offset());
    assert!(log.checkpoint_if_rolled().unwrap());
}

/// Point `point` under `dir` passes `skip` times, then fails once with EIO: where a crash
/// would stop the operation.
fn stop_once_after(point: &'static str, dir: &std::path::Path, skip: u32) {
    failpoint::set_after(
        point,
        dir,
        skip,
        FailAction::Error { errno: libc::EIO },
        Some(1),
    );
}

/// Appends one 2-record batch as a follower at `*next`, stamped with `epoch`.
fn append_in_epoch(log: &Log, next: &mut i64, epoch: i32) {
    let mut b = batch(2, 300, *next as u64, *next);
    set_base_offset(&mut b, *next);
    set_partition_leader_epoch(&mut b, epoch);
    log.append_as_follower(&b).unwrap();
    *next += 2;
}

/// A log in `dir` holding one follower batch per entry of `epochs`, stamped with it, and
/// flushed; with the offset after it.
fn log_in_epochs(dir: &std::path::Path, epochs: &[i32]) -> (Log, i64) {
    let log = Log::open(dir, small_config()).unwrap();
    let mut next = 0;
    for &epoch in epochs {
        append_in_epoch(&log, &mut next, epoch);
    }
    log.flush().unwrap();
    (log, next)
}

/// A crash part-way through a checkpoint write, between two of its renames, must not cost
/// leader epochs. Recovery trusts the epoch file for every segment below the recovery point
/// and scans only from there: a new recovery point beside an old epoch file dropped the
/// epochs that began in the skipped segments (a chaos run found a replica whose history
/// lacked two epochs its leader had).
#[test]
fn checkpoint_torn_between_renames_keeps_the_epoch_history() {
    // A checkpoint renames four files: stop it after 0, 1, 2 or 3 of them.
    for renamed in 0..4 {
        let dir = tempfile::tempdir().unwrap();
        let (log, mut next) = log_in_epochs(dir.path(), &[0]);
        log.checkpoint().unwrap();
        // Epochs 1 and 2 begin in segments that the next recovery point passes.
        for epoch in [1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2] {
            append_in_epoch(&log, &mut next, epoch);
        }
        log.flush().unwrap();
        assert!(log.segment_count() >= 3, "the test needs rolled segments");
        let epochs = log.epoch_entries();
        assert_eq!(epochs, vec![(0, 0), (1, 2), (2, 8)]);

        stop_once_after(failpoint::CHECKPOINT_RENAME, dir.path(), renamed);
        assert!(log.checkpoint().is_err(), "renamed {renamed}: not stopped");
        failpoint::clear(dir.path());
        drop(log); // a crash: no clean-shutdown marker

        let log = Log::open(dir.path(), small_config()).unwrap();
        assert_eq!(log.log_end_offset(), next, "renamed {renamed}");
        assert_eq!(log.epoch_entries(), epochs, "renamed {renamed}");
    }
}

/// A crash in the middle of a truncation that crosses segments must leave a log without a
/// hole: either the log as it was, or the log cut at the truncation point. Before the
/// checkpoint moved ahead of the cut, a crash after the cut kept the old recovery point in
/// a later segment, recovery trusted the cut segment unscanned, and the later segments
/// stayed behind a gap.
#[test]
fn crash_during_truncation_leaves_a_log_without_holes() {
    // Stopped after 0-3 of the checkpoint's renames, or (4) at the fsync of the cut segment,
    // after the cut and before the later segments are deleted.
    for renamed in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = log_in_epochs(dir.path(), &[1; 20]);
        // The recovery point moves into the newest segment, as after a roll.
        log.checkpoint().unwrap();
        assert!(log.segment_count() >= 4, "the test needs several segments");
        let before = (log.log_end_offset(), log.epoch_entries());
        let cut = 12;

        let (point, skip) = match renamed {
            4 => (failpoint::SEGMENT_FSYNC, 0),
            n => (failpoint::CHECKPOINT_RENAME, n),
        };
        stop_once_after(point, dir.path(), skip);
        assert!(
            log.truncate_to(cut).is_err(),
            "renamed {renamed}: not stopped"
        );
        failpoint::clear(dir.path());
        drop(log); // a crash

        let log = Log::open(dir.path(), small_config()).unwrap();
        // Stopped before the cut: the log as it was; after it: the log cut.
        let end = log.log_end_offset();
        let want = if renamed == 4 { cut } else { before.0 };
        assert_eq!(end, want, "renamed {renamed}: recovered end");
        let batches = describe(&read_all(&log, 0));
        let mut expect = 0;
        for (base, last, epoch) in batches {
            assert_eq!(base, expect, "renamed {renamed}: hole before offset {base}");
            assert_eq!(epoch, 1);
            expect = last + 1;
        }
        assert_eq!(expect, end, "renamed {renamed}");
        assert_eq!(log.epoch_entries(), vec![(1, 0)], "renamed {renamed}");
    }
}

/// A crash inside `truncate_fully_and_start_at`, after the old segments are gone and before
/// the checkpoint, must not leave the old epochs behind: the recovered log is empty at the
/// new start, and the epochs of the batches fetched next are recorded. (A leftover epoch 3
/// used to swallow the epoch-2 batches fetched after it.)
#[test]
fn crash_during_full_truncation_leaves_no_stale_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = log_in_epochs(dir.path(), &[1, 1, 1, 3, 3, 3, 3, 3, 3, 3]);
    log.checkpoint().unwrap();
    assert_eq!(log.epoch_entries(), vec![(1, 0), (3, 6)]);

    stop_once_after(failpoint::CHECKPOINT_RENAME, dir.path(), 0);
    assert!(log.truncate_fully_and_start_at(50).is_err(), "not stopped");
    failpoint::clear(dir.path());
    drop(log); // a crash

    let log = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (50, 50));
    assert_eq!(log.epoch_entries(), vec![]);
    let mut next = 50;
    append_in_epoch(&log, &mut next, 2);
    assert_eq!(log.epoch_entries(), vec![(2, 50)]);
}
