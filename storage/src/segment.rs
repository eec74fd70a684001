//! One segment: a `.log` file of record batches plus its offset and time indexes.
//!
//! The log file is appended with `pwrite` at the logical end and read through one shared
//! read-only mapping. The active segment is mapped with a fixed virtual length
//! (`segment_bytes + max_batch_bytes`), larger than the file, so appends need no remap;
//! `MAP_SHARED` pages see `pwrite` data on Linux. Readers only touch bytes below the logical
//! size they observed, and hold an `Arc` of the mapping inside the returned `Bytes`.
//!
//! Never shrink a file under a mapping someone else holds (SIGBUS): [`Segment::discard_tail`]
//! shrinks with `ftruncate` only when the segment holds the sole reference, and otherwise
//! punches a hole (the file keeps its length; the bytes read as zeros and the space is freed).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use keel_protocol::batch::{batches, BatchError, BatchHeader, BATCH_HEADER_LEN};
use memmap2::{Mmap, MmapOptions};

use crate::config::LogConfig;
use crate::error::{Result, StorageError};
use crate::failpoint::{self, FailAction};
use crate::index::{punch_hole, OffsetIndex};
use crate::metrics::{timed_sync, Mapped, OpenSegment};
use crate::page_cache::CachedFile;
use crate::sync_journal;
use crate::time_index::TimeIndex;

pub(crate) const LOG_EXT: &str = "log";
pub(crate) const INDEX_EXT: &str = "index";
pub(crate) const TIME_INDEX_EXT: &str = "timeindex";

/// `<20-digit base offset>.<ext>`.
pub(crate) fn file_name(base_offset: i64, ext: &str) -> String {
    format!("{base_offset:020}.{ext}")
}

/// Why a batch met by a scan fails the checks recovery applies ([`check_batch`]).
#[derive(Debug)]
pub(crate) enum BatchFault {
    /// The header is sane but the stored CRC does not match the bytes: the batch's length and
    /// offsets can still be used to walk on.
    Crc(BatchError),
    /// The header is invalid or the base offset goes backwards: nothing from here on can be
    /// trusted.
    Invalid(String),
}

impl std::fmt::Display for BatchFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchFault::Crc(e) => e.fmt(f),
            BatchFault::Invalid(reason) => f.write_str(reason),
        }
    }
}

/// The checks recovery applies to one batch of a scan: a sane header (magic, length, counts), a
/// base offset not below `next` (the offset after the previous batch) and, when `crc`, a stored
/// CRC matching the bytes from the attributes field to the end. `bytes` is the whole batch.
pub(crate) fn check_batch(
    h: &BatchHeader<'_>,
    bytes: &[u8],
    next: i64,
    crc: bool,
) -> Result<(), BatchFault> {
    h.validate_header()
        .map_err(|e| BatchFault::Invalid(e.to_string()))?;
    if h.base_offset() < next {
        return Err(BatchFault::Invalid(format!(
            "base offset {} below expected {next}",
            h.base_offset()
        )));
    }
    if !crc {
        return Ok(());
    }
    match h.validate(bytes) {
        Ok(()) => Ok(()),
        Err(e @ BatchError::CrcMismatch { .. }) => Err(BatchFault::Crc(e)),
        Err(e) => Err(BatchFault::Invalid(e.to_string())),
    }
}

/// Index state and the segment's timestamps, behind one short-lived mutex.
#[derive(Debug)]
pub(crate) struct Indexes {
    pub(crate) offset: OffsetIndex,
    pub(crate) time: TimeIndex,
    bytes_since_entry: u64,
    pub(crate) max_timestamp: i64,
    offset_of_max_timestamp: i64,
}

impl Indexes {
    fn reset(&mut self) {
        self.offset.clear();
        self.time.clear();
        self.bytes_since_entry = 0;
        self.max_timestamp = -1;
        self.offset_of_max_timestamp = -1;
    }

    /// Accounts one batch at `pos`; adds index entries every `interval` bytes.
    pub(crate) fn add_batch(&mut self, pos: u64, h: &BatchHeader<'_>, interval: u32) {
        if h.max_timestamp() > self.max_timestamp {
            self.max_timestamp = h.max_timestamp();
            self.offset_of_max_timestamp = h.base_offset();
        }
        if pos > 0 && self.bytes_since_entry >= u64::from(interval) {
            if let Ok(p) = u32::try_from(pos) {
                if self.offset.append(h.base_offset(), p) {
                    self.time
                        .maybe_append(self.max_timestamp, self.offset_of_max_timestamp);
                }
            }
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += h.total_len() as u64;
    }

    /// Free entries in the fullest index (one time-index slot is kept for sealing).
    pub(crate) fn free_entries(&self) -> usize {
        self.offset.free().min(self.time.free().saturating_sub(1))
    }
}

/// A segment of the log. Shared as `Arc<Segment>` between the log and readers.
#[derive(Debug)]
pub(crate) struct Segment {
    base_offset: i64,
    log_path: PathBuf,
    name: String,
    file: File,
    map: Mutex<Arc<Mapped<Mmap>>>,
    /// Logical size: bytes of complete, published batches. Written only by the log's writer
    /// under the log's state lock.
    size: AtomicU64,
    /// Pages of the log file below this position were handed back to the kernel
    /// ([`CachedFile::drop_cache_below`]). Page-aligned.
    cache_dropped: AtomicU64,
    /// Bytes below this position were reported durable to the node's page-cache window
    /// ([`CachedFile::note_durable`]).
    cache_noted: AtomicU64,
    created_ms: i64,
    indexes: Mutex<Indexes>,
    /// Counts this segment in [`crate::metrics::StorageStats::open_segments`] until dropped.
    _open: OpenSegment,
}

/// Page size for `madvise` ranges (4 KiB on every target Keel builds for; a larger real page
/// size only makes the advice cover less).
const PAGE: u64 = 4096;
/// Page-cache drops go in aligned steps of this size, the largest folio the kernel uses for
/// file data (a PMD, on x86-64 and arm64 with 4 KiB pages).
const DROP_STEP: u64 = 2 << 20;

/// The pages a write of `[pos, end)` completed, as (start, length): from the page holding
/// `pos` (its head was written before, its tail now) to the last page the write fills. A
/// page the write leaves partly empty is left to the write that fills it, so a stream of
/// appends hands each page over once, when it is whole, and never rewrites a page that is
/// being written back.
fn writeback_range(pos: u64, end: u64) -> Option<(u64, u64)> {
    let (from, to) = (pos / PAGE * PAGE, end / PAGE * PAGE);
    (to > from).then(|| (from, to - from))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Owner of a zero-copy slice of a segment mapping (keeps the mapping alive).
struct MapSlice {
    map: Arc<Mapped<Mmap>>,
    start: usize,
    end: usize,
}

impl AsRef<[u8]> for MapSlice {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.start..self.end]
    }
}

impl Segment {
    fn map_file(file: &File, len: usize, path: &Path) -> Result<Arc<Mapped<Mmap>>> {
        // SAFETY: the mapping is read-only and shared. The file is only ever written by this
        // segment via pwrite (visible through MAP_SHARED, never modifying bytes below the
        // logical size readers were given, except truncation, where readers' bytes may turn to
        // zeros but stay mapped), and is never shrunk while another Arc of this mapping exists
        // (see `discard_tail`). Pages past EOF are never touched: readers stay below `size`.
        let map = unsafe { MmapOptions::new().len(len).map(file) }
            .map_err(|e| StorageError::io(format!("mmap {}", path.display()), e))?;
        Ok(Arc::new(Mapped::new(map)))
    }

    fn active_map_len(config: &LogConfig) -> usize {
        (config.segment_bytes + u64::from(config.max_batch_bytes)) as usize
    }

    /// Creates a new, empty segment, replacing any stale files of the same name (including a
    /// [`sync_journal`] sidecar).
    pub(crate) fn create(dir: &Path, base_offset: i64, config: &LogConfig) -> Result<Segment> {
        for ext in [INDEX_EXT, TIME_INDEX_EXT] {
            let p = dir.join(file_name(base_offset, ext));
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io(format!("remove {}", p.display()), e)),
            }
        }
        let log_path = dir.join(file_name(base_offset, LOG_EXT));
        if sync_journal::enabled(&log_path) {
            sync_journal::remove(&log_path).map_err(|e| {
                StorageError::io(
                    format!("remove {}", sync_journal::sidecar_path(&log_path).display()),
                    e,
                )
            })?;
        }
        let seg = Self::open_inner(dir, base_offset, config, true, true)?;
        Ok(seg)
    }

    /// Opens an existing segment. `active` maps it with room to grow. Indexes are opened as
    /// found; call [`Segment::check_indexes`] or [`Segment::recover`] next.
    pub(crate) fn open(
        dir: &Path,
        base_offset: i64,
        config: &LogConfig,
        active: bool,
    ) -> Result<Segment> {
        Self::open_inner(dir, base_offset, config, active, false)
    }

    fn open_inner(
        dir: &Path,
        base_offset: i64,
        config: &LogConfig,
        active: bool,
        create: bool,
    ) -> Result<Segment> {
        let name = file_name(base_offset, LOG_EXT);
        let log_path = dir.join(&name);
        let ctx = || format!("segment {name}");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(create)
            .open(&log_path)
            .map_err(|e| StorageError::io(ctx(), e))?;
        let len = file
            .metadata()
            .map_err(|e| StorageError::io(ctx(), e))?
            .len();
        let map_len = if active {
            Self::active_map_len(config).max(len as usize)
        } else {
            len as usize
        };
        let map = Self::map_file(&file, map_len, &log_path)?;
        let mut offset =
            OffsetIndex::open(&dir.join(file_name(base_offset, INDEX_EXT)), base_offset)?;
        let mut time = TimeIndex::open(
            &dir.join(file_name(base_offset, TIME_INDEX_EXT)),
            base_offset,
        )?;
        if create {
            offset.file().resize(config.max_index_bytes as usize)?;
            time.file().resize(config.max_index_bytes as usize)?;
        }
        Ok(Segment {
            base_offset,
            log_path,
            name,
            file,
            map: Mutex::new(map),
            size: AtomicU64::new(len),
            cache_dropped: AtomicU64::new(0),
            // What was there before this process opened it is not in its window.
            cache_noted: AtomicU64::new(len),
            created_ms: now_ms(),
            indexes: Mutex::new(Indexes {
                offset,
                time,
                bytes_since_entry: 0,
                max_timestamp: -1,
                offset_of_max_timestamp: -1,
            }),
            _open: OpenSegment::new(),
        })
    }

    pub(crate) fn base_offset(&self) -> i64 {
        self.base_offset
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Publishes a new logical size (called by the log under its state write lock).
    pub(crate) fn set_size(&self, size: u64) {
        self.size.store(size, Ordering::Release)
    }

    pub(crate) fn created_ms(&self) -> i64 {
        self.created_ms
    }

    pub(crate) fn indexes(&self) -> MutexGuard<'_, Indexes> {
        lock(&self.indexes)
    }

    pub(crate) fn max_timestamp(&self) -> i64 {
        self.indexes().max_timestamp
    }

    /// Current length of the file on disk.
    pub(crate) fn file_len(&self) -> Result<u64> {
        Ok(self
            .file
            .metadata()
            .map_err(|e| StorageError::io(format!("segment {}", self.name), e))?
            .len())
    }

    /// The current mapping (valid below the logical size observed before calling).
    pub(crate) fn view(&self) -> Arc<Mapped<Mmap>> {
        lock(&self.map).clone()
    }

    /// Zero-copy `Bytes` of `[start, end)`, which must lie below the logical size.
    pub(crate) fn slice(&self, start: u64, end: u64) -> Bytes {
        Bytes::from_owner(MapSlice {
            map: self.view(),
            start: start as usize,
            end: end as usize,
        })
    }

    /// Writes `data` at `pos` (the logical end). On failure nothing becomes visible and the
    /// partially written tail is discarded (best effort; recovery ignores it anyway).
    pub(crate) fn write_at(&self, pos: u64, data: &[u8]) -> Result<()> {
        let ctx = || format!("segment {}: write at position {pos}", self.name);
        let mut limit = data.len();
        let mut injected = None;
        match failpoint::check(failpoint::SEGMENT_WRITE, &self.log_path) {
            Some(FailAction::Error { errno }) => {
                limit = 0;
                injected = Some(errno);
            }
            Some(FailAction::PartialWrite { bytes, errno }) => {
                limit = bytes.min(data.len());
                injected = Some(errno);
            }
            None => {}
        }
        let mut done = 0;
        let result = loop {
            if done == limit {
                break match injected {
                    Some(errno) => Err(std::io::Error::from_raw_os_error(errno)),
                    None => Ok(()),
                };
            }
            match self.file.write_at(&data[done..limit], pos + done as u64) {
                Ok(0) => break Err(std::io::Error::from(std::io::ErrorKind::WriteZero)),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        if let Err(e) = result {
            if done > 0 {
                if let Err(d) = self.discard_tail(pos) {
                    tracing::warn!(segment = %self.name, error = %d, "discarding failed write");
                }
            }
            return Err(StorageError::io(ctx(), e));
        }
        let needed = pos as usize + data.len();
        let mut map = lock(&self.map);
        if map.len() < needed {
            *map = Self::map_file(&self.file, needed.max(map.len() * 2), &self.log_path)?;
        }
        Ok(())
    }

    /// Hands the whole pages that the write of `[pos, end)` completed to the kernel's
    /// writeback, without waiting for it (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). Under
    /// `log.flush.policy=interval` this keeps the timer's fsync short: without it each fsync
    /// wrote a whole interval's data while appends waited behind it (p99 ack latency above
    /// 100 ms at 120 MB/s, BENCHMARKS.md). Advisory: a failure changes nothing.
    pub(crate) fn start_writeback(&self, pos: u64, end: u64) {
        let Some((from, len)) = writeback_range(pos, end) else {
            return;
        };
        // SAFETY: plain syscall on an open descriptor; it only starts writeback.
        let r = unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                from as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if r != 0 {
            tracing::debug!(segment = %self.name, error = %std::io::Error::last_os_error(), "sync_file_range failed");
        }
    }

    /// fdatasync the log file. An error means the data may be lost: see
    /// [`StorageError::FsyncFailed`].
    ///
    /// With the [`sync_journal`] on, the file's length (capped at the logical size: bytes past
    /// it are not part of the log, and a hole punched there must not count as durable data) is
    /// taken before the sync and recorded once it succeeded: every byte written before the
    /// sync started is durable after it, and every byte a flush reports durable was written
    /// before it read the logical size.
    pub(crate) fn sync(&self) -> Result<()> {
        let journaled = sync_journal::enabled(&self.log_path)
            .then(|| self.file_len().map(|len| len.min(self.size())))
            .transpose()?;
        failpoint::check_io(failpoint::SEGMENT_FSYNC, &self.log_path)
            .and_then(|()| timed_sync(|| self.file.sync_data()))
            .map_err(|e| StorageError::fsync(format!("segment {}", self.name), e))?;
        if let Some(len) = journaled {
            sync_journal::record(&self.log_path, len)
                .map_err(|e| StorageError::io(format!("segment {}: sync journal", self.name), e))?;
        }
        Ok(())
    }

    /// Makes the bytes from `from` to the end of the file unreadable for recovery: shrinks the
    /// file if nobody else holds the mapping, else punches a hole (falling back to zeroing the
    /// first header). Does not sync. With the [`sync_journal`] on, lowers the recorded durable
    /// length to `from`: what is written there next is not durable before its own sync.
    pub(crate) fn discard_tail(&self, from: u64) -> Result<()> {
        self.cut_tail(from)?;
        if sync_journal::enabled(&self.log_path) {
            sync_journal::clamp(&self.log_path, from)
                .map_err(|e| StorageError::io(format!("segment {}: sync journal", self.name), e))?;
        }
        Ok(())
    }

    /// [`Segment::discard_tail`] without the journal.
    fn cut_tail(&self, from: u64) -> Result<()> {
        let ctx = || format!("segment {}: discard from position {from}", self.name);
        let len = self.file_len()?;
        if len <= from {
            return Ok(());
        }
        let map = lock(&self.map);
        if Arc::strong_count(&map) == 1 {
            // No reader holds a slice: shrinking cannot SIGBUS anyone; the map lock keeps new
            // readers out until the file has its new length.
            return self
                .file
                .set_len(from)
                .map_err(|e| StorageError::io(ctx(), e));
        }
        drop(map);
        if punch_hole(&self.file, from, len - from).is_ok() {
            return Ok(());
        }
        let zeros = [0u8; BATCH_HEADER_LEN];
        let n = ((len - from) as usize).min(zeros.len());
        self.file
            .write_all_at(&zeros[..n], from)
            .map_err(|e| StorageError::io(ctx(), e))
    }

    /// Where a walk towards `offset` can start below `end`: `(base offset, position)` of the last
    /// indexed batch starting at or before `offset`, else of the segment's first batch.
    pub(crate) fn index_hint(&self, offset: i64, end: u64) -> (i64, u64) {
        match self.indexes().offset.lookup_entry(offset) {
            // A hint past `end` can only come from a racing truncation: start at the beginning.
            Some((o, pos)) if u64::from(pos) <= end => (o, u64::from(pos)),
            _ => (self.base_offset, 0),
        }
    }

    /// Position of the first batch whose last offset is >= `offset`, scanning from the index
    /// hint, below `end`. `None` if no such batch.
    pub(crate) fn find(&self, offset: i64, end: u64) -> Option<u64> {
        let hint = u64::from(self.indexes().offset.lookup(offset));
        // A hint past `end` can only come from a racing truncation: scan from the start.
        let start = if hint > end { 0 } else { hint };
        let map = self.view();
        for b in batches(&map[start as usize..end as usize]) {
            match b {
                Ok(b) if b.header.last_offset() >= offset => return Some(start + b.pos as u64),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// First batch at or after position `from` (below `end`) whose max timestamp is >= `ts`:
    /// `(base offset, max timestamp)`.
    pub(crate) fn find_timestamp(&self, ts: i64, end: u64) -> Option<(i64, i64)> {
        let from = {
            let idx = self.indexes();
            idx.time.lookup(ts).map_or(0, |o| idx.offset.lookup(o))
        };
        let map = self.view();
        batches(&map[(from as usize).min(end as usize)..end as usize])
            .map_while(|b| b.ok())
            .find(|b| b.header.max_timestamp() >= ts)
            .map(|b| (b.header.base_offset(), b.header.max_timestamp()))
    }

    /// Scans the file from position 0 (header walk, plus CRC checks when `validate`), rebuilds
    /// both indexes and calls `on_batch` for each good batch. Stops at the first bad batch.
    /// Returns `(valid_end, next_offset, error)`.
    pub(crate) fn rebuild(
        &self,
        config: &LogConfig,
        validate: bool,
        mut on_batch: impl FnMut(&BatchHeader<'_>),
    ) -> Result<(u64, i64, Option<StorageError>)> {
        let file_len = self.file_len()?;
        let mut idx = self.indexes();
        idx.offset.file().resize(config.max_index_bytes as usize)?;
        idx.time.file().resize(config.max_index_bytes as usize)?;
        idx.reset();
        let map = self.view();
        let buf = &map[..(file_len as usize).min(map.len())];
        let mut next = self.base_offset;
        let mut end = 0u64;
        let mut error = None;
        for b in batches(buf) {
            let fail = |reason: String, pos: usize| StorageError::CorruptBatch {
                context: format!("segment {}", self.name),
                position: pos as u64,
                reason,
            };
            let b = match b {
                Ok(b) => b,
                Err(e) => {
                    error = Some(fail(e.to_string(), end as usize));
                    break;
                }
            };
            if let Err(e) = check_batch(&b.header, b.bytes, next, validate) {
                error = Some(fail(e.to_string(), b.pos));
                break;
            }
            idx.add_batch(b.pos as u64, &b.header, config.index_interval_bytes);
            on_batch(&b.header);
            next = b.header.last_offset() + 1;
            end = (b.pos + b.bytes.len()) as u64;
        }
        Ok((end, next, error))
    }

    /// Walks the batch headers from the last index entry to the first invalid header or the
    /// end of file; returns `(end position, next offset)`. Used when no scan is needed.
    pub(crate) fn find_end(&self) -> Result<(u64, i64)> {
        let file_len = self.file_len()?;
        let start = self.indexes().offset.lookup(i64::MAX);
        let map = self.view();
        let buf = &map[..(file_len as usize).min(map.len())];
        let mut end = u64::from(start).min(buf.len() as u64);
        let mut next = self.base_offset;
        for b in batches(&buf[end as usize..]).map_while(|b| b.ok()) {
            if b.header.validate_header().is_err() {
                break;
            }
            next = b.header.last_offset() + 1;
            end += b.bytes.len() as u64;
        }
        if next == self.base_offset && end > 0 {
            // The walk started at an indexed batch but found nothing: index out of date.
            return Ok((0, self.base_offset));
        }
        Ok((end, next))
    }

    /// Loads indexes left by a previous run; false if one must be rebuilt.
    pub(crate) fn check_indexes(&self, end_offset: i64) -> Result<bool> {
        let log_len = self.file_len()?;
        let mut idx = self.indexes();
        let ok = idx.offset.sanity_check(log_len) & idx.time.sanity_check(end_offset);
        if let Some((ts, off)) = idx.time.last() {
            idx.max_timestamp = ts;
            idx.offset_of_max_timestamp = off;
        }
        let last_pos = idx.offset.last().map_or(0, |(_, p)| u64::from(p));
        idx.bytes_since_entry = log_len.saturating_sub(last_pos);
        Ok(ok)
    }

    /// Prepares a segment that stops being active: records the max timestamp in the time
    /// index, discards any bytes past the logical end and syncs the log data.
    /// [`Segment::finish_indexes`] trims and syncs the index files later, before a checkpoint
    /// puts the recovery point past this segment (recovery rebuilds the indexes of every
    /// segment it scans, so until then they need not be on disk; trimming a mapped file costs
    /// milliseconds, too long for the ack path).
    pub(crate) fn seal(&self) -> Result<()> {
        let size = self.size();
        self.discard_tail(size)?;
        self.sync()?;
        let mut idx = self.indexes();
        let (ts, off) = (idx.max_timestamp, idx.offset_of_max_timestamp);
        if off >= 0 {
            idx.time.maybe_append(ts, off);
        }
        Ok(())
    }

    /// Trims both index files of a sealed segment to their entries and writes them to disk
    /// (data and size), waiting for it.
    pub(crate) fn finish_indexes(&self) -> Result<()> {
        let mut idx = self.indexes();
        let idx = &mut *idx;
        for f in [idx.offset.file(), idx.time.file()] {
            f.flush()?;
            f.resize(0)?;
            File::open(f.path())
                .and_then(|f| timed_sync(|| f.sync_all()))
                .map_err(|e| StorageError::fsync(format!("index {}", f.path().display()), e))?;
        }
        Ok(())
    }

    /// Makes a sealed segment appendable again (after a truncation into it).
    pub(crate) fn unseal(&self, config: &LogConfig) -> Result<()> {
        let mut idx = self.indexes();
        idx.offset.file().resize(config.max_index_bytes as usize)?;
        idx.time.file().resize(config.max_index_bytes as usize)?;
        Ok(())
    }

    /// Cuts the segment at byte `pos` (a batch boundary) where `offset` starts: discards the
    /// bytes after it so recovery cannot resurrect them, syncs, and fixes the indexes and max
    /// timestamp. The caller publishes the new size.
    pub(crate) fn truncate_at(&self, pos: u64, offset: i64, config: &LogConfig) -> Result<()> {
        self.discard_tail(pos)?;
        self.sync()?;
        // Appends rewrite the range from `pos`: their pages are to be dropped in turn.
        self.cache_dropped
            .fetch_min(pos / DROP_STEP * DROP_STEP, Ordering::AcqRel);
        self.cache_noted.fetch_min(pos, Ordering::AcqRel);
        let mut idx = self.indexes();
        idx.offset.truncate_from(offset);
        idx.time.truncate_from(offset);
        idx.offset.file().resize(config.max_index_bytes as usize)?;
        idx.time.file().resize(config.max_index_bytes as usize)?;
        let map = self.view();
        let (mut max_ts, mut max_off) = (-1, -1);
        for b in batches(&map[..pos as usize]).map_while(|b| b.ok()) {
            if b.header.max_timestamp() > max_ts {
                max_ts = b.header.max_timestamp();
                max_off = b.header.base_offset();
            }
        }
        idx.max_timestamp = max_ts;
        idx.offset_of_max_timestamp = max_off;
        let last_pos = idx.offset.last().map_or(0, |(_, p)| u64::from(p));
        idx.bytes_since_entry = pos.saturating_sub(last_pos);
        Ok(())
    }

    /// Trims index files and a discarded tail at clean shutdown (no sync of the log needed:
    /// the caller flushed).
    pub(crate) fn trim_for_close(&self) -> Result<()> {
        self.discard_tail(self.size())?;
        let mut idx = self.indexes();
        let (ts, off) = (idx.max_timestamp, idx.offset_of_max_timestamp);
        if off >= 0 {
            idx.time.maybe_append(ts, off);
        }
        let idx = &mut *idx;
        for f in [idx.offset.file(), idx.time.file()] {
            f.flush()?;
            f.resize(0)?;
        }
        Ok(())
    }

    /// Unlinks the segment's files (log first; a [`sync_journal`] sidecar last: a segment
    /// without its sidecar would count as never synced, and recovery removes a sidecar left
    /// behind). Mappings held by readers stay valid.
    pub(crate) fn delete_files(&self, dir: &Path) -> Result<()> {
        let journaled = sync_journal::enabled(&self.log_path);
        for ext in [LOG_EXT, INDEX_EXT, TIME_INDEX_EXT]
            .into_iter()
            .chain(journaled.then_some(sync_journal::SIDECAR_EXT))
        {
            let p = dir.join(file_name(self.base_offset, ext));
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io(format!("delete {}", p.display()), e)),
            }
        }
        Ok(())
    }
}

impl CachedFile for Segment {
    /// Records that the segment is durable up to `upto`; returns where the newly durable
    /// bytes start, or `None` when none are new.
    fn note_durable(&self, upto: u64) -> Option<u64> {
        let from = self.cache_noted.fetch_max(upto, Ordering::AcqRel);
        (from < upto).then_some(from)
    }

    /// Hands the page cache of `[cache_dropped, upto)` back to the kernel; `u64::MAX` means the
    /// whole file (for a sealed segment). The range must be durable (clean pages; dirty ones
    /// are simply kept). Unmaps it from this process first: the kernel keeps pages that any
    /// mapping still uses. Readers are unaffected but for speed: their next touch of the range
    /// faults the bytes back in from disk. Advisory: a failed call changes nothing and is not
    /// an error.
    ///
    /// Ranges go in steps of [`DROP_STEP`]: the kernel keeps a multi-page folio that sticks
    /// out of the advised range, so small steps would leave a folio behind at every boundary.
    fn drop_cache_below(&self, upto: u64) {
        let whole = upto == u64::MAX;
        let upto = if whole {
            u64::MAX
        } else {
            upto / DROP_STEP * DROP_STEP
        };
        let from = self.cache_dropped.load(Ordering::Acquire);
        if upto <= from {
            return;
        }
        let map = self.view();
        let mapped_end = upto.min(map.len() as u64 / PAGE * PAGE);
        if mapped_end > from {
            // SAFETY: the mapping is a read-only MAP_SHARED file mapping, so MADV_DONTNEED only
            // drops page-table entries; no data is discarded and later reads fault the same
            // bytes back in from the page cache or the file.
            let r = unsafe {
                map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    from as usize,
                    (mapped_end - from) as usize,
                )
            };
            if let Err(e) = r {
                tracing::debug!(segment = %self.name, error = %e, "madvise(DONTNEED) failed");
            }
        }
        // Length 0: up to the end of the file, partial last page included.
        let len = if whole { 0 } else { upto - from };
        // SAFETY: plain syscall on an open descriptor; it only advises the kernel.
        let r = unsafe {
            libc::posix_fadvise(
                self.file.as_raw_fd(),
                from as libc::off_t,
                len as libc::off_t,
                libc::POSIX_FADV_DONTNEED,
            )
        };
        if r != 0 {
            tracing::debug!(segment = %self.name, errno = r, "posix_fadvise(DONTNEED) failed");
        }
        self.cache_dropped.store(upto, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::batch;

    fn cfg() -> LogConfig {
        LogConfig {
            segment_bytes: 64 * 1024,
            index_interval_bytes: 100,
            max_index_bytes: 4096,
            ..Default::default()
        }
    }

    #[test]
    fn writeback_hands_over_each_whole_page_once() {
        // (pos, end) -> pages handed to writeback, as (start, length)
        type Pages = Option<(u64, u64)>;
        let table: &[(u64, u64, Pages)] = &[
            (0, 100, None),               // first page still partly empty
            (100, 4096, Some((0, 4096))), // ...filled now
            (100, 5000, Some((0, 4096))), // second page not yet whole
            (5000, 5000, None),           // empty write
            (4096, 3 * 4096, Some((4096, 8192))),
            (5000, 20_000, Some((4096, 12_288))),
        ];
        for &(pos, end, want) in table {
            assert_eq!(writeback_range(pos, end), want, "{pos}..{end}");
        }
        // A stream of appends of uneven sizes: the pages handed over tile [0, last whole
        // page) without gaps or overlaps.
        let (mut pos, mut next) = (0u64, 0u64);
        for len in [1u64, 4095, 7000, 3, 12_000, 4096, 1, 50_000] {
            if let Some((from, n)) = writeback_range(pos, pos + len) {
                assert_eq!(from, next, "gap or overlap at {pos}+{len}");
                next = from + n;
            }
            pos += len;
        }
        assert_eq!(next, pos / PAGE * PAGE);
    }

    fn append(seg: &Segment, offset: i64, ts: i64) -> u64 {
        let mut b = batch(&[b"value-value-value-value"], ts);
        keel_protocol::batch::set_base_offset(&mut b, offset);
        let pos = seg.size();
        seg.write_at(pos, &b).unwrap();
        let h = BatchHeader::parse(&b).unwrap();
        seg.indexes().add_batch(pos, &h, cfg().index_interval_bytes);
        seg.set_size(pos + b.len() as u64);
        pos
    }

    #[test]
    fn write_find_slice_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let seg = Segment::create(dir.path(), 100, &cfg()).unwrap();
        let positions: Vec<u64> = (0..20).map(|i| append(&seg, 100 + i, 1000 + i)).collect();
        let end = seg.size();
        assert!(seg.indexes().offset.len() > 3, "sparse index has entries");
        for (i, &p) in positions.iter().enumerate() {
            assert_eq!(seg.find(100 + i as i64, end), Some(p));
        }
        assert_eq!(seg.find(120, end), None);
        assert_eq!(seg.find_timestamp(1005, end), Some((105, 1005)));
        assert_eq!(seg.find_timestamp(5000, end), None);
        let bytes = seg.slice(positions[3], positions[5]);
        assert_eq!(BatchHeader::parse(&bytes).unwrap().base_offset(), 103);
        seg.seal().unwrap();
        assert_eq!(seg.max_timestamp(), 1019);
        drop(seg);

        let seg = Segment::open(dir.path(), 100, &cfg(), false).unwrap();
        assert!(seg.check_indexes(120).unwrap());
        assert_eq!(seg.max_timestamp(), 1019);
        assert_eq!(seg.find_end().unwrap(), (end, 120));
        assert_eq!(seg.find(110, end), Some(positions[10]));
    }

    #[test]
    fn truncate_discards_bytes_and_entries() {
        let dir = tempfile::tempdir().unwrap();
        let seg = Segment::create(dir.path(), 0, &cfg()).unwrap();
        let positions: Vec<u64> = (0..10).map(|i| append(&seg, i, 10 * i)).collect();
        let held = seg.slice(0, positions[8]);
        seg.truncate_at(positions[4], 4, &cfg()).unwrap();
        seg.set_size(positions[4]);
        assert_eq!(seg.max_timestamp(), 30);
        assert!(seg.indexes().offset.last().is_none_or(|(o, _)| o < 4));
        // A reader still holds the mapping: the file keeps its length, the tail reads as zeros.
        assert!(seg.file_len().unwrap() > positions[4]);
        assert!(held[positions[5] as usize..].iter().all(|&b| b == 0));
        assert_eq!(held[..16], seg.slice(0, 16)[..]);
        drop(held);
        let (end, next, err) = seg.rebuild(&cfg(), true, |_| {}).unwrap();
        assert_eq!((end, next), (positions[4], 4));
        assert!(err.is_some(), "the zeroed tail stops the scan");
        seg.discard_tail(end).unwrap();
        assert_eq!(seg.file_len().unwrap(), positions[4]);
    }
}
