//! Storage metrics: names for the `metrics` facade, the fsync counter and timer, and
//! process-wide statistics kept in atomics.
//!
//! Every fsync, fdatasync and msync this crate issues (segment data, index files, checkpoint
//! files, the clean-shutdown marker, directories) goes through `timed_sync`, which counts it
//! in [`FSYNCS_TOTAL`] and records its duration in [`FSYNC_DURATION_SECONDS`]. Without a
//! recorder installed the facade does nothing.
//!
//! Open segments and mapped bytes are not published here: [`stats`] reads them and the broker
//! publishes them periodically as the gauges [`OPEN_SEGMENTS`] and [`MAPPED_BYTES`].

use std::io;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Counter: fsync/fdatasync/msync calls on segment data, index files, checkpoint files and
/// directories.
pub const FSYNCS_TOTAL: &str = "keel_log_fsyncs_total";
/// Histogram (seconds): duration of each call counted in [`FSYNCS_TOTAL`].
pub const FSYNC_DURATION_SECONDS: &str = "keel_log_fsync_duration_seconds";
/// Gauge, published by the broker from [`StorageStats::open_segments`].
pub const OPEN_SEGMENTS: &str = "keel_log_open_segments";
/// Counter: producer-state snapshots written (at segment rolls and clean closes).
pub const PRODUCER_SNAPSHOTS_WRITTEN_TOTAL: &str = "keel_log_producer_snapshots_written_total";
/// Histogram (seconds): time to load a log's producer state at open (snapshot and replay).
pub const PRODUCER_STATE_LOAD_SECONDS: &str = "keel_log_producer_state_load_seconds";
/// Gauge, published by the broker from [`StorageStats::mapped_bytes`].
pub const MAPPED_BYTES: &str = "keel_log_mapped_bytes";

static OPEN_SEGMENT_COUNT: AtomicU64 = AtomicU64::new(0);
static MAPPED_BYTE_COUNT: AtomicU64 = AtomicU64::new(0);

/// Process-wide storage statistics (every log of the process together).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Segments open (a `.log` file and its indexes each).
    pub open_segments: u64,
    /// Bytes of address space mapped for segments: the mapped length of every `.log`, `.index`
    /// and `.timeindex` mapping that exists, including an active segment's room to grow and
    /// mappings a reader still holds after the segment replaced or dropped them.
    pub mapped_bytes: u64,
}

/// The current [`StorageStats`].
pub fn stats() -> StorageStats {
    StorageStats {
        open_segments: OPEN_SEGMENT_COUNT.load(Ordering::Relaxed),
        mapped_bytes: MAPPED_BYTE_COUNT.load(Ordering::Relaxed),
    }
}

/// Runs one fsync-like call (`sync`), counting it and recording its duration (also when it
/// fails).
pub(crate) fn timed_sync<T>(sync: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let start = Instant::now();
    let result = sync();
    ::metrics::counter!(FSYNCS_TOTAL).increment(1);
    ::metrics::histogram!(FSYNC_DURATION_SECONDS).record(start.elapsed().as_secs_f64());
    result
}

/// Held by each open segment: counted in [`StorageStats::open_segments`] while it exists.
#[derive(Debug)]
pub(crate) struct OpenSegment(());

impl OpenSegment {
    pub(crate) fn new() -> Self {
        OPEN_SEGMENT_COUNT.fetch_add(1, Ordering::Relaxed);
        OpenSegment(())
    }
}

impl Drop for OpenSegment {
    fn drop(&mut self) {
        OPEN_SEGMENT_COUNT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A memory mapping counted in [`StorageStats::mapped_bytes`] until it is dropped (unmapped).
/// Dereferences to the mapping.
#[derive(Debug)]
pub(crate) struct Mapped<M: Deref<Target = [u8]>> {
    map: M,
}

impl<M: Deref<Target = [u8]>> Mapped<M> {
    pub(crate) fn new(map: M) -> Self {
        MAPPED_BYTE_COUNT.fetch_add(map.len() as u64, Ordering::Relaxed);
        Mapped { map }
    }
}

impl<M: Deref<Target = [u8]>> Drop for Mapped<M> {
    fn drop(&mut self) {
        MAPPED_BYTE_COUNT.fetch_sub(self.map.len() as u64, Ordering::Relaxed);
    }
}

impl<M: Deref<Target = [u8]>> Deref for Mapped<M> {
    type Target = M;

    fn deref(&self) -> &M {
        &self.map
    }
}

impl<M: Deref<Target = [u8]>> DerefMut for Mapped<M> {
    fn deref_mut(&mut self) -> &mut M {
        &mut self.map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The statistics themselves are checked in `tests/stats.rs`, a test binary of its own:
    // other unit tests here open segments concurrently.

    #[test]
    fn timed_sync_passes_results_through() {
        assert_eq!(timed_sync(|| Ok(7)).unwrap(), 7);
        let e = timed_sync::<()>(|| Err(io::Error::from_raw_os_error(libc::EIO))).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
    }

    #[test]
    fn mapped_derefs_to_the_mapping() {
        let mut m = Mapped::new(vec![1u8, 2, 3].into_boxed_slice());
        m[1] = 9;
        assert_eq!(&m[..], &[1, 9, 3]);
        assert_eq!(m.len(), 3);
    }
}
