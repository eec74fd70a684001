//! The node's window of recently written data kept in the page cache.
//!
//! Readers are served from memory when they read what was written recently: a consumer
//! right behind the producer, a follower catching up after a pause. Writes, though, are
//! cheaper into pages the kernel just got back than into fresh ones (on a VM whose host
//! reclaims guest memory, 3-4x in system time per byte; BENCHMARKS.md, "Page cache reuse").
//! So each node keeps the newest `log.cache.bytes` of everything its logs wrote, across
//! every partition, and hands older written pages back to the kernel once they are durable:
//! steady writing reuses pages, and a reader within that window of the newest writes reads
//! from memory. Pages that reads bring in are the kernel's to keep or evict.
//!
//! Only what leaders write joins the window: consumers read from leaders, so a follower
//! replica's written pages go back to the kernel as soon as they are durable (a follower
//! that becomes leader reads its older data from disk).
//!
//! One window per node, not one per partition: a per-partition tail either keeps far too
//! little for one busy partition or, multiplied by thousands of partitions, everything.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};

/// A file whose written pages the window keeps or hands back: a segment's `.log`.
pub(crate) trait CachedFile: Send + Sync {
    /// Records that the file is durable up to `upto`; where the newly durable bytes start,
    /// or `None` when none are new.
    fn note_durable(&self, upto: u64) -> Option<u64>;
    /// Hands the pages below `upto` back to the kernel (`u64::MAX`: the whole file).
    fn drop_cache_below(&self, upto: u64);
}

/// Default `log.cache.bytes`: about four seconds of writes at the single-partition maximum
/// on the development machine, a small share of any broker host's memory.
pub const DEFAULT_CACHE_BYTES: u64 = 1 << 30;

/// Shared by every log of a node (cloning shares it). Compares equal only to itself.
#[derive(Clone)]
pub struct PageCache(Arc<Window>);

struct Window {
    /// `None`: every page is left to the kernel.
    limit: Option<u64>,
    written: Mutex<Written>,
}

/// Bytes `[end - bytes, end)` of a segment; `sealed` when `end` is the end of the segment.
struct Range {
    seg: Weak<dyn CachedFile>,
    end: u64,
    bytes: u64,
    sealed: bool,
}

#[derive(Default)]
struct Written {
    /// Durable written ranges, oldest first.
    ranges: VecDeque<Range>,
    bytes: u64,
}

impl PageCache {
    /// A window of the newest `limit` written bytes; `None` leaves everything to the kernel.
    pub fn new(limit: Option<u64>) -> Self {
        PageCache(Arc::new(Window {
            limit,
            written: Mutex::new(Written::default()),
        }))
    }

    pub fn limit(&self) -> Option<u64> {
        self.0.limit
    }

    /// Bytes of written data the window holds now.
    pub fn held_bytes(&self) -> u64 {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Written> {
        self.0.written.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `seg` is durable up to `upto` (a byte position in it; its end once `sealed`): the
    /// newly durable bytes join the window, and whatever falls out of it is handed back to
    /// the kernel. Without `readers` (a follower replica's writes) they do not join it and
    /// go back at once.
    pub(crate) fn durable<F: CachedFile + 'static>(
        &self,
        seg: &Arc<F>,
        upto: u64,
        sealed: bool,
        readers: bool,
    ) {
        let Some(limit) = self.0.limit else {
            return;
        };
        if !readers {
            seg.note_durable(upto);
            seg.drop_cache_below(if sealed { u64::MAX } else { upto });
            return;
        }
        let from = seg.note_durable(upto);
        if from.is_none() && !sealed {
            return;
        }
        let len = from.map_or(0, |from| upto - from);
        let evicted = {
            let mut w = self.lock();
            w.bytes += len;
            match w.ranges.back_mut() {
                Some(r) if std::ptr::addr_eq(r.seg.as_ptr(), Arc::as_ptr(seg)) => {
                    r.end = upto;
                    r.bytes += len;
                    r.sealed = sealed;
                }
                _ => w.ranges.push_back(Range {
                    seg: Arc::downgrade(seg) as Weak<dyn CachedFile>,
                    end: upto,
                    bytes: len,
                    sealed,
                }),
            }
            let mut evicted = Vec::new();
            while w.bytes > limit || w.ranges.front().is_some_and(|r| r.bytes == 0) {
                let over = w.bytes.saturating_sub(limit);
                let Some(front) = w.ranges.front_mut() else {
                    break;
                };
                if front.bytes > over {
                    // Only the range's oldest bytes fall out.
                    front.bytes -= over;
                    evicted.push((front.seg.clone(), front.end - front.bytes));
                    w.bytes = limit;
                    break;
                }
                let r = w.ranges.pop_front().expect("front exists");
                w.bytes -= r.bytes;
                // A sealed segment goes whole: the step rounding in `drop_cache_below`
                // would otherwise leave its last pages behind.
                evicted.push((r.seg, if r.sealed { u64::MAX } else { r.end }));
            }
            evicted
        };
        // The syscalls run outside the lock; a segment already deleted has no pages left.
        for (seg, upto) in evicted {
            if let Some(seg) = seg.upgrade() {
                seg.drop_cache_below(upto);
            }
        }
    }
}

impl Default for PageCache {
    fn default() -> Self {
        PageCache::new(Some(DEFAULT_CACHE_BYTES))
    }
}

impl PartialEq for PageCache {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for PageCache {}

impl std::fmt::Debug for PageCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageCache")
            .field("limit", &self.0.limit)
            .finish_non_exhaustive()
    }
}
