//! The sparse offset index (`.index`): fixed-size entries in a memory-mapped file.
//!
//! Each entry is `(relative offset u32, position u32)`, big-endian: the base offset of a batch
//! relative to the segment's base offset, and the batch's byte position in the `.log` file.
//! One entry is added per ~`index.interval.bytes` of log; the first batch (position 0) is never
//! indexed, so an all-zero entry marks the unused, preallocated tail of an active index.
//!
//! [`IndexFile`] is the shared memory-mapped file (also used by the time index): preallocated to
//! `max_index_bytes` while its segment is active and trimmed to its entries when sealed.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use memmap2::{MmapMut, MmapOptions};

use crate::error::{Result, StorageError};
use crate::metrics::{timed_sync, Mapped};

/// The page size hole punching works in (the smallest Linux uses; larger pages only make
/// the kernel zero the partial pages itself).
const PAGE: usize = 4096;

/// Deallocates `[offset, offset + len)` of `file`, keeping its length: the range reads as
/// zeros, through any mapping too. An error (say, a file system that cannot) changes
/// nothing. Segments use it to cut a tail that a reader still maps.
pub(crate) fn punch_hole(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on an owned, open descriptor; no memory is passed.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// An index file, opened again for an operation its mapping cannot do.
fn reopen(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

/// A memory-mapped file of fixed-size entries. It holds no file descriptor: the mapping
/// stays valid without one, and the rare operations that need one (a resize, punching a
/// hole) open the file again. With thousands of partitions the open-files limit would
/// otherwise be spent on indexes (two per segment).
#[derive(Debug)]
pub(crate) struct IndexFile {
    path: PathBuf,
    map: Option<Mapped<MmapMut>>,
    entry_size: usize,
    entries: usize,
    /// The file length found at open was a whole number of entries.
    aligned: bool,
}

impl IndexFile {
    /// Opens (creating if absent) `path`. All whole entries in the file count as present; the
    /// owner trims trailing unused entries with [`IndexFile::set_entries`].
    pub(crate) fn open(path: &Path, entry_size: usize) -> Result<Self> {
        let ctx = || format!("index {}", path.display());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| StorageError::io(ctx(), e))?;
        let len = file
            .metadata()
            .map_err(|e| StorageError::io(ctx(), e))?
            .len() as usize;
        let mut idx = IndexFile {
            path: path.to_path_buf(),
            map: None,
            entry_size,
            entries: len / entry_size,
            aligned: len % entry_size == 0,
        };
        idx.remap(&file, len)?;
        Ok(idx)
    }

    fn ctx(&self) -> String {
        format!("index {}", self.path.display())
    }

    fn remap(&mut self, file: &File, len: usize) -> Result<()> {
        self.map = None;
        if len > 0 {
            // SAFETY: the index file is private to this struct (one owner behind the segment's
            // mutex); it is only resized here, after the previous mapping was dropped, so no
            // reference into a mapping ever outlives a shrink.
            let map = unsafe { MmapOptions::new().len(len).map_mut(file) }
                .map_err(|e| StorageError::io(self.ctx(), e))?;
            self.map = Some(Mapped::new(map));
        }
        Ok(())
    }

    /// Sets the file size to `capacity_bytes` (rounded down to whole entries, never below the
    /// present entries) and remaps. Used to preallocate an active index and to trim a sealed one.
    pub(crate) fn resize(&mut self, capacity_bytes: usize) -> Result<()> {
        let cap = (capacity_bytes / self.entry_size).max(self.entries) * self.entry_size;
        if self.map.as_ref().map_or(0, |m| m.len()) == cap {
            return Ok(());
        }
        let file = reopen(&self.path).map_err(|e| StorageError::io(self.ctx(), e))?;
        self.map = None;
        file.set_len(cap as u64)
            .map_err(|e| StorageError::io(self.ctx(), e))?;
        self.remap(&file, cap)
    }

    pub(crate) fn capacity(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.len()) / self.entry_size
    }

    pub(crate) fn len(&self) -> usize {
        self.entries
    }

    pub(crate) fn free(&self) -> usize {
        self.capacity() - self.entries
    }

    pub(crate) fn entry(&self, i: usize) -> &[u8] {
        match &self.map {
            Some(m) if i < self.entries => &m[i * self.entry_size..(i + 1) * self.entry_size],
            _ => &[],
        }
    }

    /// Entry `i` of the whole mapped capacity (including not-yet-counted entries).
    pub(crate) fn raw_entry(&self, i: usize) -> &[u8] {
        match &self.map {
            Some(m) if i < self.capacity() => &m[i * self.entry_size..(i + 1) * self.entry_size],
            _ => &[],
        }
    }

    /// Appends one entry; false if the file is full.
    pub(crate) fn push(&mut self, entry: &[u8]) -> bool {
        debug_assert_eq!(entry.len(), self.entry_size);
        let (i, size) = (self.entries, self.entry_size);
        match &mut self.map {
            Some(m) if (i + 1) * size <= m.len() => {
                m[i * size..(i + 1) * size].copy_from_slice(entry);
                self.entries += 1;
                true
            }
            _ => false,
        }
    }

    /// Keeps the first `n` entries and zeroes the rest of the mapped capacity, so that a crash
    /// cannot make dropped entries reappear.
    pub(crate) fn set_entries(&mut self, n: usize) {
        let n = n.min(self.capacity());
        let size = self.entry_size;
        if let Some(m) = &mut self.map {
            let end = (self.entries.max(n) * size).min(m.len());
            let start = n * size;
            if start < end {
                // Whole pages become a hole (a metadata change) rather than written zeros: a
                // preallocated index counts its whole capacity until recovery rebuilds it,
                // and writing megabytes of zeros per replica made a restart with thousands
                // of replicas take minutes. The edges, and any file system without hole
                // punching, get written zeros.
                let (a, b) = (start.next_multiple_of(PAGE), end / PAGE * PAGE);
                let punched = a + PAGE <= b
                    && reopen(&self.path)
                        .is_ok_and(|f| punch_hole(&f, a as u64, (b - a) as u64).is_ok());
                if punched {
                    m[start..a].fill(0);
                    m[b..end].fill(0);
                } else {
                    m[start..end].fill(0);
                }
            }
        }
        self.entries = n;
    }

    /// msync the mapping.
    pub(crate) fn flush(&self) -> Result<()> {
        match &self.map {
            Some(m) => timed_sync(|| m.flush()).map_err(|e| StorageError::fsync(self.ctx(), e)),
            None => Ok(()),
        }
    }

    pub(crate) fn aligned(&self) -> bool {
        self.aligned
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

const ENTRY: usize = 8;

/// Sparse map from offset to byte position of the batch starting at that offset.
#[derive(Debug)]
pub(crate) struct OffsetIndex {
    file: IndexFile,
    base_offset: i64,
}

impl OffsetIndex {
    pub(crate) fn open(path: &Path, base_offset: i64) -> Result<Self> {
        Ok(OffsetIndex {
            file: IndexFile::open(path, ENTRY)?,
            base_offset,
        })
    }

    pub(crate) fn file(&mut self) -> &mut IndexFile {
        &mut self.file
    }

    fn decode(e: &[u8]) -> (u32, u32) {
        (
            u32::from_be_bytes([e[0], e[1], e[2], e[3]]),
            u32::from_be_bytes([e[4], e[5], e[6], e[7]]),
        )
    }

    fn at(&self, i: usize) -> (i64, u32) {
        let (rel, pos) = Self::decode(self.file.entry(i));
        (self.base_offset + i64::from(rel), pos)
    }

    pub(crate) fn len(&self) -> usize {
        self.file.len()
    }

    pub(crate) fn free(&self) -> usize {
        self.file.free()
    }

    pub(crate) fn last(&self) -> Option<(i64, u32)> {
        self.len().checked_sub(1).map(|i| self.at(i))
    }

    /// Adds `(offset, position)`; false if full. Callers add strictly increasing offsets and
    /// positions, never position 0.
    pub(crate) fn append(&mut self, offset: i64, position: u32) -> bool {
        debug_assert!(position > 0);
        debug_assert!(self.last().is_none_or(|(o, p)| o < offset && p < position));
        let rel = (offset - self.base_offset) as u32;
        let mut e = [0u8; ENTRY];
        e[..4].copy_from_slice(&rel.to_be_bytes());
        e[4..].copy_from_slice(&position.to_be_bytes());
        self.file.push(&e)
    }

    /// Position of the last indexed batch starting at or before `offset` (0 if none): a scan
    /// from there finds the batch containing `offset`. Binary search over the mapping.
    pub(crate) fn lookup(&self, offset: i64) -> u32 {
        self.lookup_entry(offset).map_or(0, |(_, pos)| pos)
    }

    /// `(offset, position)` of the last indexed batch starting at or before `offset`.
    pub(crate) fn lookup_entry(&self, offset: i64) -> Option<(i64, u32)> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.at(mid).0 <= offset {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo.checked_sub(1).map(|i| self.at(i))
    }

    /// Drops every entry for offsets >= `offset`.
    pub(crate) fn truncate_from(&mut self, offset: i64) {
        let keep = (0..self.len())
            .rev()
            .find(|&i| self.at(i).0 < offset)
            .map_or(0, |i| i + 1);
        self.file.set_entries(keep);
    }

    /// Accepts the entries of a file left by a previous run: counts the used prefix (entries
    /// before the first all-zero one, found by binary search) and checks that the last one is
    /// increasing and points inside a log of `log_len` bytes. False means "rebuild me".
    pub(crate) fn sanity_check(&mut self, log_len: u64) -> bool {
        let cap = self.file.capacity();
        let (mut lo, mut hi) = (0, cap);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if Self::decode(self.file.raw_entry(mid)).1 != 0 {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        self.file.entries = lo;
        if !self.file.aligned() {
            return false;
        }
        match self.len() {
            0 => true,
            n => {
                let (off, pos) = self.at(n - 1);
                let increasing = n < 2 || {
                    let (prev_off, prev_pos) = self.at(n - 2);
                    prev_off < off && prev_pos < pos
                };
                increasing && u64::from(pos) < log_len && off >= self.base_offset
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.file.set_entries(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clearing_zeroes_every_dropped_entry_across_pages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.index");
        let mut idx = OffsetIndex::open(&path, 0).unwrap();
        // Three and a half pages of entries, then keep 3 of them: the edges are written,
        // the whole pages between punched.
        let n = (3 * PAGE + PAGE / 2) / ENTRY;
        idx.file().resize(8 * PAGE).unwrap();
        for i in 1..=n as u32 {
            assert!(idx.append(i64::from(i), i * 10));
        }
        idx.truncate_from(4);
        assert_eq!(idx.len(), 3);
        idx.file().flush().unwrap();
        drop(idx);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 8 * PAGE);
        assert!(bytes[3 * ENTRY..].iter().all(|&b| b == 0));
        let mut idx = OffsetIndex::open(&path, 0).unwrap();
        assert!(idx.sanity_check(1 << 20));
        assert_eq!(idx.last(), Some((3, 30)));
        // A preallocated index counts its whole capacity until checked; clearing it keeps it
        // all zeros.
        let mut idx = OffsetIndex::open(&path, 0).unwrap();
        assert_eq!(idx.len(), 8 * PAGE / ENTRY);
        idx.clear();
        assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == 0));
    }

    #[test]
    fn append_lookup_truncate() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = OffsetIndex::open(&dir.path().join("100.index"), 100).unwrap();
        idx.file().resize(80).unwrap();
        assert_eq!(idx.free(), 10);
        assert_eq!(idx.lookup(150), 0);
        for i in 1..=5u32 {
            assert!(idx.append(100 + i64::from(i) * 10, i * 1000));
        }
        assert_eq!(idx.lookup(99), 0);
        assert_eq!(idx.lookup(109), 0);
        assert_eq!(idx.lookup(110), 1000);
        assert_eq!(idx.lookup(125), 2000);
        assert_eq!(idx.lookup(1_000_000), 5000);
        idx.truncate_from(130);
        assert_eq!(idx.last(), Some((120, 2000)));
        assert_eq!(idx.lookup(1_000), 2000);
    }

    #[test]
    fn reopen_finds_used_prefix_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.index");
        {
            let mut idx = OffsetIndex::open(&path, 0).unwrap();
            idx.file().resize(8 * 100).unwrap();
            for i in 1..=7u32 {
                assert!(idx.append(i64::from(i) * 3, i * 100));
            }
            idx.file().flush().unwrap();
        }
        let mut idx = OffsetIndex::open(&path, 0).unwrap();
        assert_eq!(idx.len(), 100);
        assert!(idx.sanity_check(10_000));
        assert_eq!(idx.len(), 7);
        assert!(!idx.sanity_check(650), "last position beyond the log");

        // Fill until full.
        let mut idx = OffsetIndex::open(&path, 0).unwrap();
        assert!(idx.sanity_check(10_000));
        let mut n = 0;
        while idx.append(1000 + n, 10_000 + n as u32) {
            n += 1;
        }
        assert_eq!(n, 93);
        assert_eq!(idx.free(), 0);
    }

    #[test]
    fn trim_and_regrow() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.index");
        let mut idx = OffsetIndex::open(&path, 0).unwrap();
        idx.file().resize(8 * 16).unwrap();
        assert!(idx.append(5, 50));
        assert!(idx.append(9, 90));
        idx.file().resize(0).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 16);
        assert_eq!(idx.lookup(10), 90);
        idx.file().resize(8 * 16).unwrap();
        assert!(idx.append(12, 120));
        assert_eq!(idx.lookup(100), 120);
        idx.clear();
        assert_eq!(idx.lookup(100), 0);
    }
}
