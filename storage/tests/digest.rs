//! `Log::digest`: equal histories give equal digests; corruption at rest is reported.

mod common;

use std::path::Path;

use common::{batch, flip_value_byte, segment_files, small_config};
use keel_protocol::batch::batches;
use keel_storage::{Log, LogConfig, RangeDigest, StorageError};

fn open(dir: &Path, config: LogConfig) -> Log {
    Log::open(dir, config).expect("open")
}

/// Appends `n` batches of 2 records (offsets 2i, 2i + 1) as leader in epoch 1.
fn fill(log: &Log, n: u64) {
    for i in 0..n {
        log.append_as_leader(&batch(2, 150, i, 1000 + i as i64), 1)
            .unwrap();
    }
    log.flush().unwrap();
}

/// The digest computed independently from the bytes `read` returns (CRCs not checked).
fn oracle(log: &Log, from: i64, to: i64) -> RangeDigest {
    let mut all = Vec::new();
    let mut next = log.log_start_offset();
    while next < log.log_end_offset() {
        let r = log.read(next, 1 << 20, i64::MAX).unwrap();
        let last = batches(&r.records)
            .map(|b| b.unwrap().header.last_offset())
            .last()
            .unwrap();
        all.extend_from_slice(&r.records);
        next = last + 1;
    }
    let mut d = RangeDigest::empty(from, to);
    for b in batches(&all).map(|b| b.unwrap()) {
        let (base, last) = (b.header.base_offset(), b.header.last_offset());
        if base >= from && last < to {
            d.batches += 1;
            d.bytes += b.bytes.len() as u64;
            d.first_offset.get_or_insert(base);
            d.end_offset = Some(last + 1);
            d.crc32c = crc32c::crc32c_append(d.crc32c, b.bytes);
        }
    }
    d
}

#[test]
fn replicas_with_the_same_batches_give_the_same_digests() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = open(a_dir.path(), small_config());
    // Other segment boundaries on the follower: digests do not depend on them.
    let b = open(
        b_dir.path(),
        LogConfig {
            segment_bytes: 2500,
            ..small_config()
        },
    );
    fill(&a, 60);
    let mut next = 0;
    while next < a.log_end_offset() {
        let r = a.read(next, 3000, i64::MAX).unwrap();
        b.append_as_follower(&r.records).unwrap();
        next = b.log_end_offset();
    }
    assert!(a.segment_count() >= 5, "{}", a.segment_count());
    assert_ne!(a.segment_count(), b.segment_count());
    let leo = a.log_end_offset();
    assert_eq!(leo, 120);
    let ranges = [
        (0, leo),
        (0, 1),
        (0, 2),
        (3, 50),
        (14, 97),
        (40, 41),
        (44, 120),
        (1, 119),
    ];
    for (from, to) in ranges {
        let da = a.digest(from, to).unwrap();
        assert_eq!(da, b.digest(from, to).unwrap(), "[{from}, {to})");
        assert_eq!(da, oracle(&a, from, to), "[{from}, {to})");
        assert_eq!(da.corrupt_batch, None);
    }
    let whole = a.digest(0, leo).unwrap();
    assert_eq!(
        (whole.batches, whole.first_offset, whole.end_offset),
        (60, Some(0), Some(120))
    );
    assert_eq!(whole.bytes, a.size_bytes());
    // Batches straddling either edge are left out.
    let d = a.digest(3, 50).unwrap();
    assert_eq!(
        (d.batches, d.first_offset, d.end_offset),
        (23, Some(4), Some(50))
    );
    assert_eq!(a.digest(1, 2).unwrap().batches, 0);

    // A different history differs.
    b.truncate_to(100).unwrap();
    b.append_as_leader(&batch(2, 150, 999, 1), 2).unwrap();
    assert_eq!(a.digest(0, 100).unwrap(), b.digest(0, 100).unwrap());
    assert_ne!(
        a.digest(0, leo).unwrap().crc32c,
        b.digest(0, leo).unwrap().crc32c
    );
}

#[test]
fn range_edges() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_config());
    fill(&log, 20);
    let leo = log.log_end_offset();
    assert_eq!(log.digest(6, 6).unwrap(), RangeDigest::empty(6, 6));
    assert_eq!(log.digest(8, 2).unwrap(), RangeDigest::empty(8, 2));
    assert_eq!(
        log.digest(leo, leo + 10).unwrap(),
        RangeDigest::empty(leo, leo + 10)
    );
    assert_eq!(
        log.digest(leo + 5, leo + 10).unwrap(),
        RangeDigest::empty(leo + 5, leo + 10)
    );
    let past = log.digest(10, i64::MAX).unwrap();
    assert_eq!(
        past,
        RangeDigest {
            to: i64::MAX,
            ..log.digest(10, leo).unwrap()
        }
    );
    assert_eq!(past.end_offset, Some(leo));

    log.truncate_fully_and_start_at(500).unwrap();
    fill(&log, 3);
    assert!(matches!(
        log.digest(499, 600),
        Err(StorageError::OffsetOutOfRange {
            offset: 499,
            log_start: 500,
            log_end: 506
        })
    ));
    assert_eq!(log.digest(500, 600).unwrap().batches, 3);
    log.close().unwrap();
    assert!(matches!(
        log.digest(500, 600),
        Err(StorageError::Closed { .. })
    ));
}

#[test]
fn a_flipped_byte_in_a_sealed_segment_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let log = open(dir.path(), small_config());
        fill(&log, 40);
        let d = log.digest(0, i64::MAX).unwrap();
        log.close().unwrap();
        d
    };
    let files = segment_files(dir.path(), "log");
    assert!(files.len() >= 3);
    let bad = flip_value_byte(&files[1], 2);

    let log = open(dir.path(), small_config());
    assert!(log.recovery_info().clean_shutdown);
    assert_eq!(
        log.recovery_info().scanned_segments,
        0,
        "not detected on open"
    );
    let after = log.digest(0, i64::MAX).unwrap();
    assert_eq!(after.corrupt_batch, Some(bad));
    assert_ne!(after.crc32c, before.crc32c);
    assert_eq!(
        (after.batches, after.bytes, after.end_offset),
        (before.batches, before.bytes, before.end_offset),
        "the walk goes on past a CRC mismatch"
    );
    assert_eq!(after, oracle(&log, 0, i64::MAX).with_corrupt(bad));
    // Ranges leaving the batch out do not see it.
    assert_eq!(log.digest(0, bad).unwrap(), oracle(&log, 0, bad));
    assert_eq!(log.digest(bad + 1, i64::MAX).unwrap().corrupt_batch, None);
    assert_eq!(log.digest(bad, bad + 2).unwrap().corrupt_batch, Some(bad));
}

trait WithCorrupt {
    fn with_corrupt(self, offset: i64) -> Self;
}

impl WithCorrupt for RangeDigest {
    fn with_corrupt(self, offset: i64) -> Self {
        RangeDigest {
            corrupt_batch: Some(offset),
            ..self
        }
    }
}

/// `bytes_from` (the follower-lag-in-bytes gauge) agrees with what `digest` covers from an
/// offset to the end, across segment rolls.
#[test]
fn bytes_from_counts_batches_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_config());
    fill(&log, 40);
    assert!(
        segment_files(dir.path(), "log").len() > 2,
        "the test needs several segments"
    );
    let leo = log.log_end_offset();
    for from in [0, 1, 2, 17, 40, leo - 2, leo - 1] {
        // The batch holding `from` counts whole: start at its base offset.
        let base = from - from % 2;
        let want = log.digest(base, i64::MAX).unwrap().bytes;
        assert_eq!(log.bytes_from(from), want, "from {from}");
    }
    assert_eq!(log.bytes_from(leo), 0);
    assert_eq!(log.bytes_from(leo + 5), 0);
    assert_eq!(log.bytes_from(-1), log.digest(0, i64::MAX).unwrap().bytes);
}
