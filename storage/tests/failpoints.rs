//! Injected write and fsync failures (see `keel_storage::failpoint`).

mod common;

use common::{batch, read_all, small_config};
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
