//! [`Log`]: one partition replica's log — append, read, flush, roll, truncate, retention.
//!
//! Locking (always taken in this order, each optional):
//! `writer` (serialises mutations; held across append I/O, which readers never wait on) →
//! `flush_lock` (one fsync at a time; group commit) → `ckpt_lock` (checkpoint files) →
//! `state` (an `RwLock` held only for short in-memory sections: readers snapshot a segment
//! `Arc` and its published size, the writer publishes new sizes and offsets) → `rolled`
//! (rolled segments still to seal or to finish; held for a push, a copy or a removal).
//!
//! `producers` (the [`ProducerState`]) is taken inside `writer`, so a leader's check of an
//! idempotent producer's batch and its append are one step, and every append, truncation and
//! roll sees the state that matches the log.
//!
//! A roll on the append path creates the new segment's files and a producer-state snapshot
//! at its base offset, and nothing more. The next
//! flush seals the old segment (fsync of its data, then of the directory) before anything
//! after it counts as durable. The next checkpoint (a periodic
//! [`Log::checkpoint_if_rolled`] does one within a second) trims and fsyncs its indexes
//! and only then moves the recovery point past it; until then a crash scans it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use keel_protocol::batch::{batches, set_base_offset, set_partition_leader_epoch, BatchHeader};

use crate::checkpoint::{self, Checkpoints};
use crate::config::{FlushPolicy, LogConfig};
use crate::digest::{DigestWalk, RangeDigest};
use crate::epoch_cache::EpochCache;
use crate::error::{Result, StorageError};
use crate::producer_snapshot;
use crate::producer_state::{ProducerBatch, ProducerEntry, ProducerState, Verdict};
use crate::recovery::{self, RecoveryInfo};
use crate::retention::{self, RetentionOutcome, SegmentStat};
use crate::segment::Segment;

/// Result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    pub log_end_offset: i64,
    pub max_timestamp: i64,
    pub bytes: usize,
    pub batches: usize,
    /// An idempotent producer's retry of batches already in the log: nothing was appended,
    /// and the offsets are the ones they got the first time.
    pub duplicate: bool,
}

/// Result of a read: whole batches, zero-copy over the segment mapping.
#[derive(Debug, Clone)]
pub struct ReadInfo {
    pub records: Bytes,
    /// Base offset of the first returned batch, or the requested offset if none.
    pub first_offset: i64,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
}

#[derive(Debug)]
struct State {
    segments: BTreeMap<i64, Arc<Segment>>,
    log_start: i64,
    log_end: i64,
    high_watermark: i64,
    epochs: EpochCache,
}

impl State {
    fn active(&self) -> &Arc<Segment> {
        // Invariant: there is always at least one segment (recovery and truncation create one).
        match self.segments.values().next_back() {
            Some(s) => s,
            None => unreachable!("a log always has an active segment"),
        }
    }
}

/// Segments rolled on the append path and not yet sealed by a flush.
#[derive(Debug, Default)]
struct Rolled {
    /// Oldest first.
    segments: Vec<Arc<Segment>>,
    /// Sealed by a flush, indexes not yet trimmed and synced: the next checkpoint does that
    /// first.
    index_unsynced: Vec<Arc<Segment>>,
    /// Segment files created by rolls, and how many of them the last directory fsync covered.
    created: u64,
    dir_synced: u64,
}

impl Rolled {
    fn pending(&self) -> bool {
        !self.segments.is_empty() || self.created > self.dir_synced
    }
}

/// A partition replica's log. `Send + Sync`; every method takes `&self`.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    config: LogConfig,
    recovery: RecoveryInfo,
    state: RwLock<State>,
    writer: Mutex<Vec<u8>>,
    flush_lock: Mutex<()>,
    /// Held while checkpoint files are written; holds what they say (`None`: unknown, after
    /// a failed write), so that a checkpoint of unchanged state writes nothing.
    ckpt_lock: Mutex<Option<Checkpoints>>,
    /// Rolled segments on their way to sealed (see the module doc).
    rolled: Mutex<Rolled>,
    /// The idempotent producers' state as of the log end (taken inside `writer`).
    producers: Mutex<ProducerState>,
    /// A flush sealed rolled segments: [`Log::checkpoint_if_rolled`] moves the recovery point.
    rolled_since_checkpoint: AtomicBool,
    /// The latest append came from the leader's fetch (a follower replica's log has no
    /// readers: its written pages are not kept in the page cache).
    written_as_follower: AtomicBool,
    durable: AtomicI64,
    closed: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What validation learned about an append's batches.
struct Plan {
    batches: usize,
    /// Offsets the leader assigns: sum of (lastOffsetDelta + 1).
    offsets: i64,
    max_timestamp: i64,
}

impl Log {
    /// Opens the log in `dir` (created if absent) and runs recovery.
    pub fn open(dir: &Path, config: LogConfig) -> Result<Log> {
        config.validate()?;
        let r = recovery::recover(dir, &config)?;
        tracing::info!(
            dir = %dir.display(),
            log_start = r.log_start,
            log_end = r.log_end,
            clean = r.info.clean_shutdown,
            scanned = r.info.scanned_segments,
            truncated_bytes = r.info.truncated_bytes,
            rescanned_from = r.info.rescanned_from,
            "log opened"
        );
        let log = Log {
            dir: dir.to_path_buf(),
            producers: Mutex::new(ProducerState::empty_at(r.log_start)),
            config,
            recovery: r.info,
            durable: AtomicI64::new(r.log_end),
            state: RwLock::new(State {
                segments: r.segments,
                log_start: r.log_start,
                log_end: r.log_end,
                high_watermark: r.high_watermark,
                epochs: r.epochs,
            }),
            writer: Mutex::new(Vec::new()),
            flush_lock: Mutex::new(()),
            ckpt_lock: Mutex::new(r.checkpointed),
            rolled: Mutex::new(Rolled::default()),
            rolled_since_checkpoint: AtomicBool::new(false),
            written_as_follower: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        };
        let started = std::time::Instant::now();
        let state = log.producer_state_at(log.log_end_offset())?;
        let took = started.elapsed();
        metrics::histogram!(crate::metrics::PRODUCER_STATE_LOAD_SECONDS).record(took.as_secs_f64());
        if !state.is_empty() {
            tracing::info!(dir = %dir.display(), producers = state.len(), load_ms = took.as_millis() as u64, "producer state loaded");
        }
        *lock(&log.producers) = state;
        Ok(log)
    }

    pub fn recovery_info(&self) -> &RecoveryInfo {
        &self.recovery
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StorageError::Closed {
                dir: self.dir.clone(),
            });
        }
        Ok(())
    }

    /// Checks every batch (complete, magic 2, sane length, CRC, size limit) before any write.
    fn validate(&self, records: &[u8]) -> Result<Plan> {
        let mut plan = Plan {
            batches: 0,
            offsets: 0,
            max_timestamp: -1,
        };
        let corrupt = |position: usize, reason: String| StorageError::CorruptBatch {
            context: format!("append to {}", self.dir.display()),
            position: position as u64,
            reason,
        };
        if records.is_empty() {
            return Err(corrupt(0, "no record batches".into()));
        }
        let mut pos = 0;
        for b in batches(records) {
            let b = b.map_err(|e| corrupt(pos, e.to_string()))?;
            if b.bytes.len() > self.config.max_batch_bytes as usize {
                return Err(StorageError::RecordTooLarge {
                    size: b.bytes.len(),
                    position: b.pos,
                    max: self.config.max_batch_bytes,
                });
            }
            b.header
                .validate(b.bytes)
                .map_err(|e| corrupt(b.pos, e.to_string()))?;
            plan.batches += 1;
            plan.offsets += i64::from(b.header.last_offset_delta()) + 1;
            plan.max_timestamp = plan.max_timestamp.max(b.header.max_timestamp());
            pos = b.pos + b.bytes.len();
        }
        Ok(plan)
    }

    /// Appends batches produced by a client: every batch is validated (length, magic, CRC,
    /// `max_batch_bytes`) before anything is written; offsets are assigned from the LEO and
    /// `partitionLeaderEpoch` stamped (both outside the CRC). All or nothing. A new, higher
    /// `leader_epoch` is recorded in the epoch cache; a lower one is stamped but not recorded
    /// (fencing stale leaders is the broker's job).
    pub fn append_as_leader(&self, records: &[u8], leader_epoch: i32) -> Result<AppendInfo> {
        self.check_open()?;
        self.written_as_follower.store(false, Ordering::Relaxed);
        let plan = self.validate(records)?;
        let mut buf = lock(&self.writer);
        self.check_open()?;
        let base = self.read_state().log_end;
        buf.clear();
        buf.extend_from_slice(records);
        let mut next = base;
        let mut pos = 0;
        let mut produced = Vec::new();
        while pos < buf.len() {
            let (len, delta, batch) = match BatchHeader::parse(&buf[pos..]) {
                Ok(h) => (
                    h.total_len(),
                    i64::from(h.last_offset_delta()),
                    producer_batch(&h, next),
                ),
                Err(_) => unreachable!("validated above"),
            };
            set_base_offset(&mut buf[pos..], next);
            set_partition_leader_epoch(&mut buf[pos..], leader_epoch);
            produced.extend(batch);
            next += delta + 1;
            pos += len;
        }
        let last = base + plan.offsets - 1;
        let mut producers = lock(&self.producers);
        if let Verdict::Duplicate {
            first_offset,
            last_offset,
        } = producers.check_append(&produced)?
        {
            return Ok(AppendInfo {
                base_offset: first_offset,
                last_offset,
                log_end_offset: base,
                max_timestamp: plan.max_timestamp,
                bytes: 0,
                batches: 0,
                duplicate: true,
            });
        }
        self.write_locked(&buf, &plan, last, Some(leader_epoch), &mut producers)?;
        for b in &produced {
            producers.apply(b);
        }
        producers.advance_to(last + 1);
        Ok(AppendInfo {
            base_offset: base,
            last_offset: last,
            log_end_offset: last + 1,
            max_timestamp: plan.max_timestamp,
            bytes: records.len(),
            batches: plan.batches,
            duplicate: false,
        })
    }

    /// Appends batches fetched from the leader verbatim. The first batch must start at the LEO
    /// and base offsets must increase (else `NonMonotonicOffset`); CRCs are checked; batch
    /// leader epochs newer than the cache's latest are recorded.
    pub fn append_as_follower(&self, records: &[u8]) -> Result<AppendInfo> {
        self.check_open()?;
        self.written_as_follower.store(true, Ordering::Relaxed);
        let plan = self.validate(records)?;
        let _w = lock(&self.writer);
        self.check_open()?;
        let leo = self.read_state().log_end;
        let mut expected = leo;
        let mut last = leo - 1;
        for b in batches(records).map_while(|b| b.ok()) {
            let base = b.header.base_offset();
            let ok = if expected == leo {
                base == leo
            } else {
                base >= expected
            };
            if !ok {
                return Err(StorageError::NonMonotonicOffset {
                    expected,
                    got: base,
                });
            }
            last = b.header.last_offset();
            expected = last + 1;
        }
        let mut producers = lock(&self.producers);
        self.write_locked(records, &plan, last, None, &mut producers)?;
        for b in batches(records).map_while(|b| b.ok()) {
            if let Some(p) = producer_batch(&b.header, b.header.base_offset()) {
                producers.apply(&p);
            }
        }
        producers.advance_to(last + 1);
        Ok(AppendInfo {
            base_offset: leo,
            last_offset: last,
            log_end_offset: last + 1,
            max_timestamp: plan.max_timestamp,
            bytes: records.len(),
            batches: plan.batches,
            duplicate: false,
        })
    }

    /// Writes validated, stamped batches at the end of the active segment (rolling first if
    /// needed) and publishes them. Caller holds the writer lock, and `producers` (the state as
    /// of the log end, for a roll's snapshot).
    fn write_locked(
        &self,
        data: &[u8],
        plan: &Plan,
        last: i64,
        leader_epoch: Option<i32>,
        producers: &mut ProducerState,
    ) -> Result<()> {
        let needs_roll = |seg: &Segment| {
            let size = seg.size();
            size > 0
                && (size + data.len() as u64 > self.config.segment_bytes
                    || seg.indexes().free_entries() < plan.batches
                    || last - seg.base_offset() > i64::from(u32::MAX))
        };
        let mut active = self.read_state().active().clone();
        if needs_roll(&active) {
            self.roll_locked(producers)?;
            active = self.read_state().active().clone();
        }
        if last - active.base_offset() > i64::from(u32::MAX) {
            return Err(StorageError::CorruptBatch {
                context: format!("append to segment {}", active.name()),
                position: 0,
                reason: format!("offsets up to {last} overflow the segment's relative offsets"),
            });
        }
        let pos = active.size();
        active.write_at(pos, data)?;
        if matches!(self.config.flush_policy, FlushPolicy::Interval { .. }) {
            active.start_writeback(pos, pos + data.len() as u64);
        }
        {
            let mut idx = active.indexes();
            for b in batches(data).map_while(|b| b.ok()) {
                idx.add_batch(
                    pos + b.pos as u64,
                    &b.header,
                    self.config.index_interval_bytes,
                );
            }
        }
        let mut st = self.write_state();
        active.set_size(pos + data.len() as u64);
        match leader_epoch {
            Some(e) => {
                let start = st.log_end;
                st.epochs.assign(e, start)
            }
            None => {
                for b in batches(data).map_while(|b| b.ok()) {
                    st.epochs
                        .assign(b.header.partition_leader_epoch(), b.header.base_offset());
                }
            }
        }
        st.log_end = last + 1;
        Ok(())
    }

    /// Reads whole batches starting with the batch containing `offset`, only batches whose
    /// last offset is below `max_offset` (the HW for consumers, the LEO for followers), up to
    /// `max_bytes` but always at least one whole batch if one qualifies. Zero-copy; reads from
    /// at most one segment. `offset == LEO` or `offset >= max_offset` gives an empty result;
    /// `offset < log start` or `> LEO` is `OffsetOutOfRange`.
    pub fn read(&self, offset: i64, max_bytes: usize, max_offset: i64) -> Result<ReadInfo> {
        self.check_open()?;
        let (mut seg, mut end, log_start, log_end) = {
            let st = self.read_state();
            if offset < st.log_start || offset > st.log_end {
                return Err(StorageError::OffsetOutOfRange {
                    offset,
                    log_start: st.log_start,
                    log_end: st.log_end,
                });
            }
            let seg = st
                .segments
                .range(..=offset)
                .next_back()
                .or_else(|| st.segments.iter().next())
                .map(|(_, s)| s.clone());
            match seg {
                Some(s) => {
                    let end = s.size();
                    (s, end, st.log_start, st.log_end)
                }
                None => unreachable!("a log always has an active segment"),
            }
        };
        let empty = ReadInfo {
            records: Bytes::new(),
            first_offset: offset,
            log_start_offset: log_start,
            log_end_offset: log_end,
        };
        if offset == log_end || offset >= max_offset {
            return Ok(empty);
        }
        loop {
            if let Some(start) = seg.find(offset, end) {
                let map = seg.view();
                let mut stop = start;
                let mut first_offset = None;
                for b in batches(&map[start as usize..end as usize]).map_while(|b| b.ok()) {
                    let len = b.bytes.len() as u64;
                    if b.header.last_offset() >= max_offset
                        || (first_offset.is_some() && stop - start + len > max_bytes as u64)
                    {
                        break;
                    }
                    first_offset.get_or_insert(b.header.base_offset());
                    stop += len;
                }
                return Ok(match first_offset {
                    Some(first) => ReadInfo {
                        records: seg.slice(start, stop),
                        first_offset: first,
                        ..empty
                    },
                    None => empty,
                });
            }
            // `offset` lies past this segment's batches: continue in the next one.
            let st = self.read_state();
            match st.segments.range(seg.base_offset() + 1..).next() {
                Some((_, s)) => {
                    seg = s.clone();
                    end = seg.size();
                }
                None => return Ok(empty),
            }
        }
    }

    /// Digest of the batches whose base offset is >= `from` and whose last offset is < `to`,
    /// walked in offset order across segments (see [`RangeDigest`]): replicas with the same
    /// history give equal digests for the same range. Every covered batch's CRC is checked as
    /// recovery checks it; a mismatch or an unreadable batch is reported in
    /// [`RangeDigest::corrupt_batch`], not as an error. `from` below the log start is
    /// `OffsetOutOfRange`; a range reaching past the LEO covers what exists, and `from >= to`
    /// or `from >= LEO` covers nothing.
    ///
    /// Reads the whole range through the segment mappings (faulting in what is not cached)
    /// without holding any lock: call it off latency-sensitive threads. A concurrent
    /// truncation of the range may make its bytes read as zeros, reported as corruption.
    pub fn digest(&self, from: i64, to: i64) -> Result<RangeDigest> {
        self.check_open()?;
        let segs: Vec<(Arc<Segment>, u64)> = {
            let st = self.read_state();
            if from < st.log_start {
                return Err(StorageError::OffsetOutOfRange {
                    offset: from,
                    log_start: st.log_start,
                    log_end: st.log_end,
                });
            }
            if from >= to.min(st.log_end) {
                return Ok(RangeDigest::empty(from, to));
            }
            let first = st
                .segments
                .range(..=from)
                .next_back()
                .map_or(i64::MIN, |(&b, _)| b);
            st.segments
                .range(first..to)
                .map(|(_, s)| (s.clone(), s.size()))
                .collect()
        };
        let mut walk = DigestWalk::new(from, to);
        for (i, (seg, end)) in segs.iter().enumerate() {
            let (next, start) = if i == 0 {
                seg.index_hint(from, *end)
            } else {
                (seg.base_offset(), 0)
            };
            let map = seg.view();
            let end = (*end as usize).min(map.len());
            if !walk.add(&map[(start as usize).min(end)..end], next) {
                break;
            }
        }
        Ok(walk.finish())
    }

    /// Makes everything appended so far durable (fdatasync) and returns the durable end offset.
    ///
    /// Group commit: safe to call from many threads and concurrently with appends. A caller
    /// whose data is already durable returns at once; otherwise callers queue on one mutex and
    /// the first one syncs for everyone appended before its sync started; the others find
    /// their data durable when they get the lock. An error is `FsyncFailed`: the broker must
    /// stop (the kernel may have dropped the dirty pages, a retry proves nothing).
    pub fn flush(&self) -> Result<i64> {
        self.check_open()?;
        self.flush_inner()
    }

    fn flush_inner(&self) -> Result<i64> {
        let target = self.read_state().log_end;
        let durable = self.durable.load(Ordering::Acquire);
        if durable >= target && !lock(&self.rolled).pending() {
            return Ok(durable);
        }
        let _f = lock(&self.flush_lock);
        // `active` is read before the rolled list: a roll queues the old segment before it
        // publishes the new one, so every segment below `active` is sealed or in the list.
        let (end, active) = {
            let st = self.read_state();
            (st.log_end, st.active().clone())
        };
        let (rolled, created, dir_synced) = {
            let r = lock(&self.rolled);
            (r.segments.clone(), r.created, r.dir_synced)
        };
        // Each leaves the list once sealed: after a failure the rest are still queued.
        for seg in &rolled {
            seg.seal()?;
            let mut r = lock(&self.rolled);
            r.segments.retain(|u| !Arc::ptr_eq(u, seg));
            r.index_unsynced.push(seg.clone());
            drop(r);
            self.config
                .page_cache
                .durable(seg, seg.size(), true, self.readers_expected());
        }
        if created > dir_synced {
            // The new segments' directory entries, before anything in them counts as durable.
            checkpoint::sync_dir(&self.dir)?;
            let mut r = lock(&self.rolled);
            r.dir_synced = r.dir_synced.max(created);
        }
        if !rolled.is_empty() {
            self.rolled_since_checkpoint.store(true, Ordering::Release);
        }
        if self.durable.load(Ordering::Acquire) < end {
            // Sealed segments are on disk; only the active one can hold dirty data. Bytes
            // below `written` were written before this sync: they are durable after it.
            let written = active.size();
            active.sync()?;
            self.config
                .page_cache
                .durable(&active, written, false, self.readers_expected());
        }
        // The recovery point moves past the sealed segments with the next checkpoint
        // (`checkpoint_if_rolled`), not here: this is the ack path.
        Ok(self.durable.fetch_max(end, Ordering::AcqRel).max(end))
    }

    /// Whether readers may come for what was just written: not on a follower replica
    /// (consumers read from leaders), so its written pages leave the page cache at once.
    fn readers_expected(&self) -> bool {
        !self.written_as_follower.load(Ordering::Relaxed)
    }

    pub fn durable_end_offset(&self) -> i64 {
        self.durable.load(Ordering::Acquire)
    }

    /// Removes every offset >= `offset`. If `offset` falls inside a batch, the whole batch goes:
    /// the new LEO is that batch's base offset (<= `offset`). Offsets at or past the LEO are a
    /// no-op; an offset below the log start empties the log and restarts it at `offset` (as
    /// [`Log::truncate_fully_and_start_at`]). Truncates the epoch cache, lowers the HW and the
    /// durable offset, deletes later segments and writes the checkpoints. A reader still
    /// holding bytes of the removed range may see them turn to zeros.
    pub fn truncate_to(&self, offset: i64) -> Result<()> {
        self.check_open()?;
        let _w = lock(&self.writer);
        let _f = lock(&self.flush_lock);
        let (seg, log_start, log_end) = {
            let st = self.read_state();
            let seg = st
                .segments
                .range(..=offset)
                .next_back()
                .map(|(_, s)| s.clone());
            (seg, st.log_start, st.log_end)
        };
        if offset >= log_end {
            if offset == log_end {
                // No data to remove, but an epoch that starts at the log end (assigned at
                // election, nothing written in it) goes, as a truncation there requires.
                self.write_state().epochs.truncate_from_end(log_end);
            }
            return Ok(());
        }
        let seg = match seg {
            Some(s) if offset >= log_start => s,
            _ => return self.truncate_fully_locked(offset),
        };
        let size = seg.size();
        let (pos, new_end) = match seg.find(offset, size) {
            Some(pos) => {
                let map = seg.view();
                let base = BatchHeader::parse(&map[pos as usize..])
                    .map(|h| h.base_offset())
                    .unwrap_or(offset);
                (pos, base.min(offset))
            }
            None => (size, offset),
        };
        tracing::info!(dir = %self.dir.display(), offset, new_end, "truncating log");
        let removed: Vec<Arc<Segment>> = {
            let mut st = self.write_state();
            let later: Vec<i64> = st
                .segments
                .range(seg.base_offset() + 1..)
                .map(|(&b, _)| b)
                .collect();
            let removed = later.iter().filter_map(|b| st.segments.remove(b)).collect();
            // The cut segment is active again and later ones go: none of them is sealed.
            {
                let mut r = lock(&self.rolled);
                r.segments.retain(|s| s.base_offset() < seg.base_offset());
                r.index_unsynced
                    .retain(|s| s.base_offset() < seg.base_offset());
            }
            seg.set_size(pos);
            st.log_end = new_end;
            st.log_start = st.log_start.min(new_end);
            st.high_watermark = st.high_watermark.min(new_end);
            st.epochs.truncate_from_end(new_end);
            self.durable.fetch_min(new_end, Ordering::AcqRel);
            removed
        };
        // The recovery point comes down to the cut before the cut is made. A crash between the
        // two then recovers the log as it was (scanned from the cut onwards, epochs included);
        // the other way round, an old recovery point in a later segment had recovery trust the
        // cut segment unscanned and keep the later ones behind a gap.
        self.write_checkpoints()?;
        seg.truncate_at(pos, new_end, &self.config)?;
        for s in removed.iter().rev() {
            s.delete_files(&self.dir)?;
        }
        checkpoint::sync_dir(&self.dir)?;
        // The producers' state goes back to the cut too (snapshots above it are removed).
        *lock(&self.producers) = self.producer_state_at(new_end)?;
        Ok(())
    }

    /// Deletes every segment and starts an empty log at `offset` (log start = LEO = HW =
    /// `offset`, empty epoch cache).
    pub fn truncate_fully_and_start_at(&self, offset: i64) -> Result<()> {
        self.check_open()?;
        let _w = lock(&self.writer);
        let _f = lock(&self.flush_lock);
        self.truncate_fully_locked(offset)
    }

    fn truncate_fully_locked(&self, offset: i64) -> Result<()> {
        tracing::info!(dir = %self.dir.display(), offset, "truncating log fully");
        let old: Vec<Arc<Segment>> = self.read_state().segments.values().cloned().collect();
        // Newest first: a crash in between leaves an older, shorter, consistent log. The new
        // segment gets a new inode, so mappings readers hold on the old files stay valid.
        {
            let mut r = lock(&self.rolled);
            r.segments.clear();
            r.index_unsynced.clear();
        }
        for s in old.iter().rev() {
            s.delete_files(&self.dir)?;
        }
        let seg = Arc::new(Segment::create(&self.dir, offset, &self.config)?);
        checkpoint::sync_dir(&self.dir)?;
        {
            let mut st = self.write_state();
            st.segments.clear();
            st.segments.insert(offset, seg);
            st.log_start = offset;
            st.log_end = offset;
            st.high_watermark = offset;
            st.epochs.clear();
            self.durable.store(offset, Ordering::Release);
        }
        for o in producer_snapshot::list(&self.dir)? {
            producer_snapshot::remove(&self.dir, o)?;
        }
        *lock(&self.producers) = ProducerState::empty_at(offset);
        self.write_checkpoints()
    }

    /// Seals the active segment and starts a new one at the LEO (unless it is empty), then
    /// flushes (which finishes the seal of this and any earlier roll) and writes the
    /// checkpoints, moving the recovery point past every sealed segment. The checkpoints are
    /// written even when nothing rolled.
    pub fn roll(&self) -> Result<()> {
        self.check_open()?;
        let _w = lock(&self.writer);
        self.roll_locked(&mut lock(&self.producers))?;
        self.seal_rolled()
    }

    /// Starts a new active segment at the LEO and queues the old one for sealing by the next
    /// flush, and writes the producer-state snapshot at the LEO. The segment's files are not
    /// fsynced here: on the append path a roll costs three file creations and the snapshot.
    fn roll_locked(&self, producers: &mut ProducerState) -> Result<()> {
        let (active, log_end) = {
            let st = self.read_state();
            (st.active().clone(), st.log_end)
        };
        if active.size() == 0 {
            return Ok(());
        }
        let seg = Arc::new(Segment::create(&self.dir, log_end, &self.config)?);
        {
            let mut r = lock(&self.rolled);
            r.segments.push(active);
            r.created += 1;
        }
        self.write_state().segments.insert(log_end, seg);
        producers.advance_to(log_end);
        producer_snapshot::write(&self.dir, producers)?;
        tracing::info!(dir = %self.dir.display(), base_offset = log_end, "rolled segment");
        Ok(())
    }

    /// Off the append path (roll by age, explicit roll): seal what rolled now and checkpoint,
    /// so a crash later scans the active segment only.
    fn seal_rolled(&self) -> Result<()> {
        self.flush_inner()?;
        self.write_checkpoints()
    }

    /// Rolls a non-empty active segment older than `segment_ms` (age counted from when the
    /// segment was created or, after a restart, opened). True if it rolled.
    pub fn maybe_roll(&self, now_ms: i64) -> Result<bool> {
        self.check_open()?;
        let Some(segment_ms) = self.config.segment_ms else {
            return Ok(false);
        };
        let _w = lock(&self.writer);
        let active = self.read_state().active().clone();
        if active.size() == 0 || now_ms.saturating_sub(active.created_ms()) < segment_ms as i64 {
            return Ok(false);
        }
        self.roll_locked(&mut lock(&self.producers))?;
        self.seal_rolled()?;
        Ok(true)
    }

    /// Deletes whole sealed segments by `retention_bytes` and `retention_ms` (see
    /// [`crate::retention`]), never the active one, never at or above the HW, and advances the
    /// log start offset.
    pub fn enforce_retention(&self, now_ms: i64) -> Result<RetentionOutcome> {
        self.check_open()?;
        let _w = lock(&self.writer);
        let (segs, hw) = {
            let st = self.read_state();
            (
                st.segments.values().cloned().collect::<Vec<_>>(),
                st.high_watermark,
            )
        };
        let log_end = self.log_end_offset();
        let stats: Vec<SegmentStat> = segs
            .iter()
            .enumerate()
            .map(|(i, s)| SegmentStat {
                end_offset: segs.get(i + 1).map_or(log_end, |n| n.base_offset()),
                size: s.size(),
                max_timestamp: s.max_timestamp(),
            })
            .collect();
        let n = retention::segments_to_delete(&stats, hw, now_ms, &self.config);
        let outcome = self.delete_first_segments(&segs, n)?;
        if n > 0 {
            tracing::info!(
                dir = %self.dir.display(),
                segments = outcome.segments_deleted,
                bytes = outcome.bytes_deleted,
                log_start = self.log_start_offset(),
                "retention deleted segments"
            );
        }
        Ok(outcome)
    }

    /// Deletes every sealed segment that lies wholly below `offset` (never the active one)
    /// and advances the log start offset: how a log whose prefix a snapshot now holds (the
    /// controller quorum's) gives the space back.
    pub fn delete_segments_below(&self, offset: i64) -> Result<RetentionOutcome> {
        self.check_open()?;
        let _w = lock(&self.writer);
        let segs: Vec<Arc<Segment>> = self.read_state().segments.values().cloned().collect();
        let n = segs
            .windows(2)
            .take_while(|w| w[1].base_offset() <= offset)
            .count();
        self.delete_first_segments(&segs, n)
    }

    /// Deletes the first `n` of `segs` (the log's segments in order, active last, `n` less
    /// than their count). The writer lock must be held.
    fn delete_first_segments(&self, segs: &[Arc<Segment>], n: usize) -> Result<RetentionOutcome> {
        if n == 0 {
            return Ok(RetentionOutcome::default());
        }
        {
            let mut st = self.write_state();
            for s in &segs[..n] {
                st.segments.remove(&s.base_offset());
            }
            let mut r = lock(&self.rolled);
            let deleted = |u: &Arc<Segment>| segs[..n].iter().any(|d| Arc::ptr_eq(d, u));
            r.segments.retain(|u| !deleted(u));
            r.index_unsynced.retain(|u| !deleted(u));
            let start = st.active_start();
            st.log_start = st.log_start.max(start);
            let ls = st.log_start;
            st.epochs.truncate_from_start(ls);
        }
        self.write_checkpoints()?;
        producer_snapshot::remove_below(&self.dir, self.log_start_offset())?;
        let mut outcome = RetentionOutcome::default();
        for s in &segs[..n] {
            outcome.bytes_deleted += s.file_len().unwrap_or(s.size());
            s.delete_files(&self.dir)?;
            outcome.segments_deleted += 1;
        }
        Ok(outcome)
    }

    pub fn log_start_offset(&self) -> i64 {
        self.read_state().log_start
    }

    pub fn log_end_offset(&self) -> i64 {
        self.read_state().log_end
    }

    pub fn high_watermark(&self) -> i64 {
        self.read_state().high_watermark
    }

    /// Stores `hw` clamped to `[log start, LEO]` and returns the stored value. (Keeping the HW
    /// monotonic is the replication layer's rule.)
    pub fn set_high_watermark(&self, hw: i64) -> i64 {
        let mut st = self.write_state();
        st.high_watermark = hw.clamp(st.log_start, st.log_end);
        st.high_watermark
    }

    /// A new leader's epoch starts at the current log end, before anything is appended in
    /// it (Kafka assigns it at election), so OffsetForLeaderEpoch and diverging-epoch
    /// checks can answer for it. Ignored unless newer than the latest epoch.
    pub fn assign_epoch(&self, epoch: i32) -> Result<()> {
        self.check_open()?;
        let _w = lock(&self.writer);
        let mut st = self.write_state();
        let end = st.log_end;
        st.epochs.assign(epoch, end);
        Ok(())
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.read_state().epochs.latest()
    }

    /// OffsetForLeaderEpoch with Kafka's semantics (see `EpochCache::end_offset_for`): the end
    /// offset of the largest epoch <= `epoch`; `None` for an undefined or future epoch.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, i64)> {
        let st = self.read_state();
        st.epochs.end_offset_for(epoch, st.log_end)
    }

    /// `(epoch, start offset)` pairs, oldest first.
    pub fn epoch_entries(&self) -> Vec<(i32, i64)> {
        self.read_state().epochs.entries().to_vec()
    }

    /// The first batch whose max timestamp is >= `ts`: `(base offset, max timestamp)` of that
    /// batch (records are not decoded, so this is batch granularity).
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>> {
        self.check_open()?;
        let segs: Vec<(Arc<Segment>, u64)> = {
            let st = self.read_state();
            st.segments
                .values()
                .map(|s| (s.clone(), s.size()))
                .collect()
        };
        Ok(segs
            .iter()
            .filter(|(s, _)| s.max_timestamp() >= ts)
            .find_map(|(s, end)| s.find_timestamp(ts, *end)))
    }

    /// Bytes of the live segments' `.log` files, from file metadata.
    pub fn size_bytes(&self) -> u64 {
        let segs: Vec<Arc<Segment>> = self.read_state().segments.values().cloned().collect();
        segs.iter().map(|s| s.file_len().unwrap_or(s.size())).sum()
    }

    /// Bytes of batches from the one holding `offset` to the log end (what a reader at `offset`
    /// has yet to read); 0 at or past the end. Finds `offset` through the offset index and a
    /// short scan of the segment (which may fault pages in): call it off async threads.
    pub fn bytes_from(&self, offset: i64) -> u64 {
        let (offset, holding, later): (i64, Option<Arc<Segment>>, u64) = {
            let st = self.read_state();
            if offset >= st.log_end {
                return 0;
            }
            let offset = offset.max(st.log_start);
            let holding = st
                .segments
                .range(..=offset)
                .next_back()
                .map(|(_, s)| s.clone());
            let after = holding.as_ref().map_or(i64::MIN, |s| s.base_offset() + 1);
            let later = st.segments.range(after..).map(|(_, s)| s.size()).sum();
            (offset, holding, later)
        };
        let first = holding.map_or(0, |seg| {
            let end = seg.size();
            end - seg.find(offset, end).unwrap_or(end)
        });
        first + later
    }

    pub fn segment_count(&self) -> usize {
        self.read_state().segments.len()
    }

    /// Writes the checkpoints: recovery point (= durable end offset), HW, log start, leader
    /// epochs — each atomically (temp file, fsync, rename, directory fsync).
    pub fn checkpoint(&self) -> Result<()> {
        self.check_open()?;
        self.write_checkpoints()
    }

    /// Checkpoints if a flush sealed segments since the last call, so that a crash scans only
    /// the active segment. For a periodic task: it costs the flush path nothing. True if it
    /// wrote.
    pub fn checkpoint_if_rolled(&self) -> Result<bool> {
        self.check_open()?;
        if !self.rolled_since_checkpoint.swap(false, Ordering::AcqRel) {
            return Ok(false);
        }
        self.write_checkpoints()?;
        Ok(true)
    }

    /// Records durably that data from `offset` on failed a check (say [`Log::digest`] reported
    /// a corrupt batch): the next [`Log::open`] CRC-scans from the segment holding `offset`,
    /// even after a clean shutdown, truncates the log at the first bad batch as it does a torn
    /// tail, and then drops the mark (see [`RecoveryInfo::rescanned_from`]). This log keeps
    /// serving what it has until then. The mark is a checkpoint file, written atomically; a
    /// lower mark not yet acted on is kept. `offset` outside `[log start, LEO]` is
    /// `OffsetOutOfRange`.
    pub fn mark_for_rescan(&self, offset: i64) -> Result<()> {
        self.check_open()?;
        let (log_start, log_end) = {
            let st = self.read_state();
            (st.log_start, st.log_end)
        };
        if offset < log_start || offset > log_end {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start,
                log_end,
            });
        }
        let _c = lock(&self.ckpt_lock);
        let mark = match checkpoint::load_rescan(&self.dir) {
            Ok(previous) => previous.map_or(offset, |p| p.min(offset)),
            Err(e) => {
                // An unreadable earlier mark may have been lower: rescan everything.
                tracing::warn!(dir = %self.dir.display(), error = %e, "replacing rescan mark");
                log_start
            }
        };
        checkpoint::store_rescan(&self.dir, mark)?;
        tracing::warn!(dir = %self.dir.display(), offset = mark, "log marked for rescan");
        Ok(())
    }

    /// The producer state as of `end`: the newest snapshot at or below it (snapshots above
    /// it are removed), then the batches from there to `end`; from the log start when there
    /// is no snapshot.
    fn producer_state_at(&self, end: i64) -> Result<ProducerState> {
        let log_start = self.log_start_offset();
        let mut state = producer_snapshot::newest_at_or_below(&self.dir, end)?
            .unwrap_or_else(|| ProducerState::empty_at(log_start));
        let from = state.end().max(log_start);
        self.replay_producers(&mut state, from, end);
        state.advance_to(end);
        Ok(state)
    }

    /// Applies the producer batches of `[from, to)` to `state`, reading batch headers only.
    fn replay_producers(&self, state: &mut ProducerState, from: i64, to: i64) {
        let segs: Vec<(Arc<Segment>, u64)> = {
            let st = self.read_state();
            let first = st
                .segments
                .range(..=from)
                .next_back()
                .map_or(i64::MIN, |(&b, _)| b);
            st.segments
                .range(first..)
                .map(|(_, s)| (s.clone(), s.size()))
                .collect()
        };
        for (seg, end) in segs {
            if seg.base_offset() >= to {
                break;
            }
            let start = seg.find(from, end).unwrap_or(end);
            let map = seg.view();
            for b in batches(&map[start as usize..end as usize]).map_while(|b| b.ok()) {
                if b.header.base_offset() >= to {
                    return;
                }
                // A scan that starts before `from` (the index is sparse) must not apply
                // batches the state already holds a second time.
                if b.header.last_offset() < from {
                    continue;
                }
                if let Some(p) = producer_batch(&b.header, b.header.base_offset()) {
                    state.apply(&p);
                }
            }
        }
    }

    /// Every idempotent producer with state here, by id.
    pub fn producers(&self) -> Vec<(i64, ProducerEntry)> {
        lock(&self.producers)
            .producers()
            .map(|(id, e)| (id, e.clone()))
            .collect()
    }

    /// Whether `producer_id` has state here (a batch of it is in the log, unexpired).
    pub fn has_producer(&self, producer_id: i64) -> bool {
        lock(&self.producers).get(producer_id).is_some()
    }

    /// How many producers have state here.
    pub fn producer_count(&self) -> usize {
        lock(&self.producers).len()
    }

    /// Forgets producers whose last batch is older than `max_age_ms` at `now_ms`
    /// (`producer.id.expiration.ms`); returns how many.
    pub fn expire_producers(&self, now_ms: i64, max_age_ms: i64) -> usize {
        lock(&self.producers).expire(now_ms, max_age_ms)
    }

    fn write_checkpoints(&self) -> Result<()> {
        let mut stored = lock(&self.ckpt_lock);
        // A flush seals a segment before it publishes a durable offset past it: every segment
        // below `durable` is in the list taken next, and gets its indexes trimmed and synced
        // before the recovery point moves past it (recovery trusts the indexes of unscanned
        // segments).
        let durable = self.durable.load(Ordering::Acquire);
        let unsynced = lock(&self.rolled).index_unsynced.clone();
        for seg in &unsynced {
            seg.finish_indexes()?;
            lock(&self.rolled)
                .index_unsynced
                .retain(|u| !Arc::ptr_eq(u, seg));
        }
        let c = {
            let st = self.read_state();
            Checkpoints {
                recovery_point: durable.min(st.log_end),
                high_watermark: st.high_watermark,
                log_start: st.log_start,
                epochs: st.epochs.entries().to_vec(),
            }
        };
        checkpoint::store_changed(&self.dir, &mut stored, c)
    }

    /// Clean shutdown: flush, trim indexes, checkpoint, write the clean-shutdown marker. Every
    /// later call on this log fails with `Closed` (bytes already returned by `read` stay valid).
    pub fn close(&self) -> Result<()> {
        let _w = lock(&self.writer);
        if self.closed.swap(true, Ordering::AcqRel) {
            return Err(StorageError::Closed {
                dir: self.dir.clone(),
            });
        }
        self.flush_inner()?;
        let active = self.read_state().active().clone();
        active.trim_for_close()?;
        self.write_checkpoints()?;
        // The next open starts from here, replaying nothing.
        {
            let mut producers = lock(&self.producers);
            producers.advance_to(self.log_end_offset());
            producer_snapshot::write(&self.dir, &producers)?;
        }
        checkpoint::write_clean_marker(&self.dir)?;
        tracing::info!(dir = %self.dir.display(), "log closed");
        Ok(())
    }
}

/// The producer fields of an idempotent producer's batch at `base_offset`; `None` for a batch
/// without a producer id, or a control batch.
fn producer_batch(h: &BatchHeader<'_>, base_offset: i64) -> Option<ProducerBatch> {
    if h.producer_id() < 0 || h.is_control() {
        return None;
    }
    let delta = h.last_offset_delta();
    Some(ProducerBatch {
        producer_id: h.producer_id(),
        epoch: h.producer_epoch(),
        first_seq: h.base_sequence(),
        last_seq: h.base_sequence().wrapping_add(delta),
        first_offset: base_offset,
        last_offset: base_offset + i64::from(delta),
        timestamp: h.max_timestamp(),
    })
}

impl State {
    fn active_start(&self) -> i64 {
        self.segments.keys().next().copied().unwrap_or(self.log_end)
    }
}

/// Renames `dir` to `<dir>.<unique>-delete` and fsyncs the parent so the replica is gone for
/// good; the caller removes the returned path in the background (`std::fs::remove_dir_all`).
pub fn delete_log_dir(dir: &Path) -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parent = dir.parent().unwrap_or(Path::new("."));
    let unique = format!(
        "{:x}{:x}{}",
        crate::segment::now_ms(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let target = parent.join(format!("{name}.{unique}-delete"));
    std::fs::rename(dir, &target).map_err(|e| {
        StorageError::io(
            format!("rename {} to {}", dir.display(), target.display()),
            e,
        )
    })?;
    checkpoint::sync_dir(parent)?;
    Ok(target)
}
