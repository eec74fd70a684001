//! The time index (`.timeindex`): `(timestamp i64, relative offset u32)` entries, big-endian.
//!
//! Entry `(t, o)` means "the largest batch max-timestamp among batches up to the one at offset
//! `o` is `t`". Timestamps are strictly increasing. An entry is added together with an
//! offset-index entry when the max timestamp grew, and once more when the segment is sealed,
//! so that the last entry of a sealed segment is its max timestamp.

use std::path::Path;

use crate::error::Result;
use crate::index::IndexFile;

const ENTRY: usize = 12;

#[derive(Debug)]
pub(crate) struct TimeIndex {
    file: IndexFile,
    base_offset: i64,
}

impl TimeIndex {
    pub(crate) fn open(path: &Path, base_offset: i64) -> Result<Self> {
        Ok(TimeIndex {
            file: IndexFile::open(path, ENTRY)?,
            base_offset,
        })
    }

    pub(crate) fn file(&mut self) -> &mut IndexFile {
        &mut self.file
    }

    fn decode(e: &[u8]) -> (i64, u32) {
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&e[..8]);
        (
            i64::from_be_bytes(ts),
            u32::from_be_bytes([e[8], e[9], e[10], e[11]]),
        )
    }

    fn at(&self, i: usize) -> (i64, i64) {
        let (ts, rel) = Self::decode(self.file.entry(i));
        (ts, self.base_offset + i64::from(rel))
    }

    pub(crate) fn len(&self) -> usize {
        self.file.len()
    }

    pub(crate) fn free(&self) -> usize {
        self.file.free()
    }

    /// `(timestamp, offset)` of the last entry.
    pub(crate) fn last(&self) -> Option<(i64, i64)> {
        self.len().checked_sub(1).map(|i| self.at(i))
    }

    /// Adds `(ts, offset)` if `ts` is larger than the last entry's; false if skipped or full.
    pub(crate) fn maybe_append(&mut self, ts: i64, offset: i64) -> bool {
        if self.last().is_some_and(|(t, o)| ts <= t || offset < o) {
            return false;
        }
        let mut e = [0u8; ENTRY];
        e[..8].copy_from_slice(&ts.to_be_bytes());
        e[8..].copy_from_slice(&((offset - self.base_offset) as u32).to_be_bytes());
        self.file.push(&e)
    }

    /// Offset from which a forward scan finds the first batch with max timestamp >= `ts`: the
    /// offset of the last entry whose timestamp is below `ts` (every batch before it has a
    /// smaller max timestamp), or `None` to scan from the segment start.
    pub(crate) fn lookup(&self, ts: i64) -> Option<i64> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.at(mid).0 < ts {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo.checked_sub(1).map(|i| self.at(i).1)
    }

    /// Drops every entry for offsets >= `offset`.
    pub(crate) fn truncate_from(&mut self, offset: i64) {
        let keep = (0..self.len())
            .rev()
            .find(|&i| self.at(i).1 < offset)
            .map_or(0, |i| i + 1);
        self.file.set_entries(keep);
    }

    /// Counts the used prefix of a file left by a previous run (strictly increasing
    /// timestamps, non-decreasing offsets below `end_offset`). False means "rebuild me".
    pub(crate) fn sanity_check(&mut self, end_offset: i64) -> bool {
        let cap = self.file.capacity();
        let mut n = 0;
        let mut prev: Option<(i64, u32)> = None;
        // The used prefix is short for sealed (trimmed) files; for an untrimmed file stop at
        // the first entry that does not continue the sequence (the zeroed tail).
        while n < cap {
            let (ts, rel) = Self::decode(self.file.raw_entry(n));
            let cont = match prev {
                None => !(ts == 0 && rel == 0),
                Some((pt, pr)) => ts > pt && rel >= pr,
            };
            if !cont {
                break;
            }
            prev = Some((ts, rel));
            n += 1;
        }
        let trailing_garbage = (n..cap).any(|i| self.file.raw_entry(i).iter().any(|&b| b != 0));
        self.file.set_entries(n);
        self.file.aligned()
            && !trailing_garbage
            && self
                .last()
                .is_none_or(|(_, o)| o < end_offset.max(self.base_offset + 1))
    }

    pub(crate) fn clear(&mut self) {
        self.file.set_entries(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_only_growing_timestamps_and_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let mut ti = TimeIndex::open(&dir.path().join("10.timeindex"), 10).unwrap();
        ti.file().resize(12 * 8).unwrap();
        assert!(ti.maybe_append(100, 12));
        assert!(!ti.maybe_append(100, 14), "same timestamp is skipped");
        assert!(!ti.maybe_append(90, 15), "older timestamp is skipped");
        assert!(ti.maybe_append(200, 20));
        assert!(ti.maybe_append(300, 30));
        assert_eq!(ti.last(), Some((300, 30)));
        assert_eq!(ti.lookup(50), None);
        assert_eq!(ti.lookup(100), None);
        assert_eq!(ti.lookup(101), Some(12));
        assert_eq!(ti.lookup(250), Some(20));
        assert_eq!(ti.lookup(1000), Some(30));
        ti.truncate_from(20);
        assert_eq!(ti.last(), Some((100, 12)));
    }

    #[test]
    fn reopen_counts_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.timeindex");
        {
            let mut ti = TimeIndex::open(&path, 0).unwrap();
            ti.file().resize(12 * 50).unwrap();
            for i in 1..=4 {
                assert!(ti.maybe_append(i * 1000, i * 10));
            }
        }
        let mut ti = TimeIndex::open(&path, 0).unwrap();
        assert!(ti.sanity_check(100));
        assert_eq!(ti.len(), 4);
        assert_eq!(ti.last(), Some((4000, 40)));
        let mut ti = TimeIndex::open(&path, 0).unwrap();
        assert!(!ti.sanity_check(35), "entry beyond the segment end");
    }
}
