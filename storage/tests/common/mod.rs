//! Helpers shared by the storage integration tests.
#![allow(dead_code)]

use keel_protocol::batch::{batches, BatchHeader};
use keel_storage::test_support::sized_batch;
use keel_storage::{FlushPolicy, Log, LogConfig};

/// Small segments and indexes so that tests roll often.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 256,
        max_index_bytes: 1024,
        flush_policy: FlushPolicy::Always,
        ..Default::default()
    }
}

/// A batch of `count` records of `value_len` bytes with max timestamp `ts`.
pub fn batch(count: usize, value_len: usize, seed: u64, ts: i64) -> Vec<u8> {
    sized_batch(count, value_len, seed, ts)
}

/// `(base offset, last offset, epoch)` of every batch in `bytes`; asserts each batch is valid.
pub fn describe(bytes: &[u8]) -> Vec<(i64, i64, i32)> {
    batches(bytes)
        .map(|b| {
            let b = b.expect("whole batches");
            b.header.validate(b.bytes).expect("valid crc");
            (
                b.header.base_offset(),
                b.header.last_offset(),
                b.header.partition_leader_epoch(),
            )
        })
        .collect()
}

/// Reads everything in `[from, log end)` by repeated reads; returns the raw bytes.
pub fn read_all(log: &Log, from: i64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut next = from;
    for _ in 0..100_000 {
        let r = log.read(next, 1 << 20, i64::MAX).expect("read");
        if r.records.is_empty() {
            break;
        }
        let last = describe(&r.records).last().map(|d| d.1).expect("a batch");
        out.extend_from_slice(&r.records);
        next = last + 1;
    }
    out
}

/// Files of `dir` with extension `ext` (segments: "log", "index", "timeindex"), sorted.
pub fn segment_files(dir: &std::path::Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

/// The base offset field of a batch.
pub fn base_of(b: &[u8]) -> i64 {
    BatchHeader::parse(b).expect("header").base_offset()
}

/// Flips one byte of the first record's value in the `nth` batch of segment file `file` (a
/// byte the batch CRC covers; length and offsets stay intact); returns that batch's base offset.
pub fn flip_value_byte(file: &std::path::Path, nth: usize) -> i64 {
    let mut data = std::fs::read(file).unwrap();
    let b = batches(&data).nth(nth).unwrap().unwrap();
    let (pos, base) = (b.pos, b.header.base_offset());
    // Past the 61-byte header and the record's length, attributes, deltas and key: the value.
    data[pos + 61 + 20] ^= 0x40;
    std::fs::write(file, &data).unwrap();
    base
}
