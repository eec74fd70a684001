//! `keel_storage::stats()`: open segments and mapped bytes follow the logs of the process.
//!
//! A test binary of its own with a single test: the statistics are process-wide, so no other
//! log may be open while it runs.

mod common;

use common::{batch, small_config};
use keel_storage::{stats, Log, StorageStats};

#[test]
fn open_segments_and_mapped_bytes_follow_segments() {
    let dir = tempfile::tempdir().unwrap();
    let before = stats();
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(stats().open_segments, before.open_segments + 1);
    assert!(stats().mapped_bytes > before.mapped_bytes);
    for i in 0..60 {
        log.append_as_leader(&batch(2, 150, i, 1000 + i as i64), 1)
            .unwrap();
    }
    log.roll().unwrap();
    log.append_as_leader(&batch(1, 10, 0, 1), 1).unwrap();
    log.roll().unwrap();
    let segments = log.segment_count() as u64;
    assert!(segments >= 6, "{segments}");
    assert_eq!(stats().open_segments, before.open_segments + segments);
    let open = stats();

    // A reader holding bytes keeps that mapping counted after the segment is gone.
    let held = log.read(log.log_end_offset() - 1, 1, i64::MAX).unwrap();
    assert_eq!(held.records.len(), batch(1, 10, 0, 1).len());
    log.truncate_to(10).unwrap();
    let after_truncate = stats();
    assert_eq!(after_truncate.open_segments, before.open_segments + 1);
    assert!(after_truncate.mapped_bytes < open.mapped_bytes);
    drop(held);
    assert!(stats().mapped_bytes < after_truncate.mapped_bytes);

    log.close().unwrap();
    drop(log);
    assert_eq!(stats(), before);

    // Reopening (recovery opens and drops segments on the way) ends at the same count.
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(stats().open_segments, before.open_segments + 1);
    drop(log);
    assert_eq!(
        stats(),
        StorageStats {
            open_segments: before.open_segments,
            mapped_bytes: before.mapped_bytes,
        }
    );
}
