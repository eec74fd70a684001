//! Opening a log directory: find segments, load checkpoints, scan what may be torn.
//!
//! Without the clean-shutdown marker, only the segments from the one holding the recovery
//! point onwards are scanned (every batch's length and CRC checked); the first bad batch and
//! everything after it (including later segments) is removed, and so is every segment after
//! one that ends short of the next one's base offset (a power cut can drop the unsynced tail
//! of a rolled segment and keep the newer, empty files). The recovery point only moves
//! past a rolled segment once a flush has sealed (fsynced) it, so a torn write can only be in
//! a scanned segment: the active one, or one rolled shortly before the crash. Indexes of
//! unscanned segments are sanity-checked and rebuilt if missing or bad. With the marker,
//! nothing is scanned, the marker is deleted.
//!
//! A rescan mark ([`crate::Log::mark_for_rescan`]) moves the first scanned segment back to the
//! one holding the marked offset, with or without the clean-shutdown marker; once the scan's
//! repairs and the checkpoints are on disk the mark is removed. An unreadable mark rescans
//! everything.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::checkpoint::{self, Checkpoints};
use crate::config::LogConfig;
use crate::epoch_cache::EpochCache;
use crate::error::{Result, StorageError};
use crate::segment::{Segment, INDEX_EXT, LOG_EXT, TIME_INDEX_EXT};
use crate::sync_journal::SIDECAR_EXT;

/// What [`crate::Log::open`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryInfo {
    /// The previous run ended with [`crate::Log::close`].
    pub clean_shutdown: bool,
    /// Segments whose batches were read and CRC-checked.
    pub scanned_segments: usize,
    /// Bytes removed: a torn or corrupt tail plus any segments after it (or after a segment
    /// ending short of the next one's base offset).
    pub truncated_bytes: u64,
    /// Unscanned segments whose index files were missing or failed the sanity check and were
    /// rebuilt from the log (scanned segments always get fresh indexes and are not counted).
    pub rebuilt_indexes: usize,
    /// The checkpointed high watermark is above the recovered log end: committed data was lost
    /// here, so this replica must not lead until it has caught up. The HW is clamped to the LEO.
    pub hw_above_leo: bool,
    /// The high watermark found in the checkpoint, if it was readable.
    pub checkpointed_hw: Option<i64>,
    /// One message per checkpoint file that was corrupt or unreadable. A corrupt recovery
    /// point or leader-epoch file forces a full scan; a corrupt HW falls back to the log start;
    /// a corrupt log start falls back to the first segment's base offset; a corrupt rescan mark
    /// rescans every segment.
    pub corrupt_checkpoints: Vec<String>,
    /// A [`crate::Log::mark_for_rescan`] mark was found: the marked offset (the first
    /// segment's base offset if the mark was unreadable). Segments were CRC-scanned from the
    /// one holding it, whatever the shutdown, and the mark was removed.
    pub rescanned_from: Option<i64>,
}

/// The state recovered from disk.
pub(crate) struct Recovered {
    pub(crate) segments: BTreeMap<i64, Arc<Segment>>,
    pub(crate) log_start: i64,
    pub(crate) log_end: i64,
    pub(crate) high_watermark: i64,
    pub(crate) epochs: EpochCache,
    pub(crate) info: RecoveryInfo,
    /// What the checkpoint files now hold (for an empty log without them, the state they
    /// would hold), for [`checkpoint::store_changed`].
    pub(crate) checkpointed: Option<Checkpoints>,
}

fn parse_name(name: &str) -> Option<(i64, &str)> {
    let (stem, ext) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stem.parse().ok()?, ext))
}

fn remove(path: &Path) -> Result<()> {
    std::fs::remove_file(path)
        .map_err(|e| StorageError::io(format!("remove {}", path.display()), e))
}

/// Index in `bases` (sorted, non-empty) of the segment holding `offset`; the first segment for
/// an offset below it.
fn segment_holding(bases: &[i64], offset: i64) -> usize {
    bases.iter().rposition(|&b| b <= offset).unwrap_or(0)
}

/// Opens (creating if needed) and repairs the log in `dir`.
pub(crate) fn recover(dir: &Path, config: &LogConfig) -> Result<Recovered> {
    let existed = dir.exists();
    std::fs::create_dir_all(dir)
        .map_err(|e| StorageError::io(format!("create {}", dir.display()), e))?;
    let clean_marker = dir.join(checkpoint::CLEAN_SHUTDOWN).exists();
    let loaded = checkpoint::load(dir);
    let mut info = RecoveryInfo {
        clean_shutdown: clean_marker,
        corrupt_checkpoints: loaded.corrupt.clone(),
        checkpointed_hw: loaded.high_watermark,
        ..Default::default()
    };
    // `Some(None)`: a mark that could not be read.
    let rescan = match checkpoint::load_rescan(dir) {
        Ok(mark) => mark.map(Some),
        Err(e) => {
            info.corrupt_checkpoints.push(e.to_string());
            Some(None)
        }
    };

    // Inventory: segment bases, orphan index files and sync-journal sidecars, leftover temp
    // files.
    let mut bases = Vec::new();
    let mut companions = Vec::new();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| StorageError::io(format!("list {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io(format!("list {}", dir.display()), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") {
            remove(&entry.path())?;
            continue;
        }
        match parse_name(&name) {
            Some((base, LOG_EXT)) => bases.push(base),
            Some((base, INDEX_EXT | TIME_INDEX_EXT | SIDECAR_EXT)) => {
                companions.push((base, entry.path()))
            }
            _ => {}
        }
    }
    bases.sort_unstable();
    for (base, path) in companions {
        if bases.binary_search(&base).is_err() {
            remove(&path)?;
        }
    }

    // Segments entirely below the checkpointed log start were deleted by retention before a
    // crash made the unlink undone; drop them again.
    let mut log_start = loaded.log_start.unwrap_or(i64::MIN);
    while bases.len() > 1 && bases[1] <= log_start {
        for ext in [LOG_EXT, INDEX_EXT, TIME_INDEX_EXT, SIDECAR_EXT] {
            let p = dir.join(crate::segment::file_name(bases[0], ext));
            if p.exists() {
                remove(&p)?;
            }
        }
        bases.remove(0);
    }
    let no_checkpoints = loaded.none() && rescan.is_none();
    if bases.is_empty() && no_checkpoints && !clean_marker {
        return create_fresh(dir, config, !existed);
    }
    if bases.is_empty() {
        let base = log_start.max(0);
        Segment::create(dir, base, config)?;
        checkpoint::sync_dir(dir)?;
        bases.push(base);
    }
    log_start = log_start.max(bases[0]);

    let full_scan = loaded.recovery_point.is_none() || loaded.epochs.is_none();
    let clean = clean_marker && loaded.corrupt.is_empty() && !full_scan;
    let mut first_scan = if clean {
        bases.len()
    } else if full_scan {
        0
    } else {
        segment_holding(&bases, loaded.recovery_point.unwrap_or(i64::MIN))
    };
    if let Some(mark) = rescan {
        let from = mark.unwrap_or(bases[0]);
        tracing::warn!(dir = %dir.display(), offset = from, "rescanning from a rescan mark");
        info.rescanned_from = Some(from);
        first_scan = first_scan.min(segment_holding(&bases, from));
    }
    let mut epochs = EpochCache::from_entries(loaded.epochs.clone().unwrap_or_default());
    if first_scan < bases.len() {
        epochs.truncate_from_end(bases[first_scan]);
    }

    let mut segments = BTreeMap::new();
    let mut log_end = bases[0];
    // A scanned segment was cut or later ones removed: the directory needs a sync.
    let mut repaired = false;
    let mut i = 0;
    while i < bases.len() {
        let base = bases[i];
        let last = i + 1 == bases.len();
        let index_missing = !dir
            .join(crate::segment::file_name(base, INDEX_EXT))
            .exists()
            || !dir
                .join(crate::segment::file_name(base, TIME_INDEX_EXT))
                .exists();
        let seg = Segment::open(dir, base, config, last)?;
        if i < first_scan {
            let end_offset = bases.get(i + 1).copied().unwrap_or(i64::MAX);
            if index_missing || !seg.check_indexes(end_offset)? {
                tracing::info!(segment = seg.name(), "rebuilding index");
                seg.rebuild(config, false, |_| {})?;
                info.rebuilt_indexes += 1;
                if !last {
                    seg.seal()?;
                    seg.finish_indexes()?;
                }
            }
            if last {
                let (end, next) = seg.find_end()?;
                seg.set_size(end);
                seg.discard_tail(end)?;
                seg.unseal(config)?;
                log_end = next;
            }
        } else {
            info.scanned_segments += 1;
            let file_len = seg.file_len()?;
            let (end, next, err) = seg.rebuild(config, true, |h| {
                epochs.assign(h.partition_leader_epoch(), h.base_offset())
            })?;
            seg.set_size(end);
            // A segment ending short of the next one's base offset lost its tail while newer
            // segment files survived: a power cut dropped the unsynced end of a segment rolled
            // without a flush (the files of later rolls exist, their data may be anything).
            // Nothing after it can be durable (a flush seals rolled segments oldest first), so
            // it is the end of the log, as with a torn tail.
            let short = bases.get(i + 1).filter(|&&b| next < b);
            if let Some(&expected) = short {
                tracing::warn!(
                    segment = seg.name(),
                    next_offset = next,
                    next_segment = expected,
                    "segment ends short of the next one: dropping the later segments"
                );
            }
            if end < file_len || short.is_some() {
                if end < file_len {
                    tracing::warn!(
                        segment = seg.name(),
                        position = end,
                        bytes = file_len - end,
                        error = err.as_ref().map(|e| e.to_string()),
                        "truncating torn or corrupt tail"
                    );
                    info.truncated_bytes += file_len - end;
                    seg.discard_tail(end)?;
                }
                repaired = true;
                if !last {
                    // Everything after a bad batch goes, newest segment first so that a crash
                    // in between leaves a shorter but consistent log.
                    for &later in bases[i + 1..].iter().rev() {
                        let s = Segment::open(dir, later, config, false)?;
                        info.truncated_bytes += s.file_len()?;
                        s.delete_files(dir)?;
                    }
                    bases.truncate(i + 1);
                    seg.unseal(config)?;
                }
            }
            let last = i + 1 == bases.len();
            if last {
                // What lies past the recovery point may be only in the page cache (a process
                // crash, not a power cut): make it durable before it is served. A segment
                // holding nothing past the recovery point, or nothing at all, needs no fsync
                // (on a restart with thousands of idle replicas, each costs a journal commit).
                let durable = end == file_len
                    && (end == 0 || loaded.recovery_point.is_some_and(|rp| next <= rp));
                if !durable {
                    seg.sync()?;
                }
                log_end = next;
            } else {
                seg.seal()?;
                seg.finish_indexes()?;
            }
        }
        segments.insert(base, Arc::new(seg));
        i += 1;
    }
    if repaired {
        checkpoint::sync_dir(dir)?;
    }

    log_start = log_start.min(log_end);
    epochs.truncate_from_end(log_end);
    epochs.truncate_from_start(log_start);
    if log_start == log_end {
        // No data, so no epoch to tell. An entry left here came from a checkpoint older than
        // the segments: a crash in `truncate_fully_and_start_at` after the old segments were
        // deleted and before the checkpoint. Kept, it would hold back the epochs of the
        // batches fetched next (an epoch is only assigned above the latest one).
        epochs.clear();
    }
    let mut high_watermark = loaded.high_watermark.unwrap_or(log_start);
    if high_watermark > log_end {
        tracing::warn!(
            dir = %dir.display(),
            checkpointed_hw = high_watermark,
            log_end,
            "checkpointed high watermark above recovered log end"
        );
        info.hw_above_leo = true;
        high_watermark = log_end;
    }
    high_watermark = high_watermark.max(log_start);

    // A rescan mark means the files may not match the data: write them whatever they say.
    let mut checkpointed = loaded.stored().filter(|_| rescan.is_none());
    checkpoint::store_changed(
        dir,
        &mut checkpointed,
        Checkpoints {
            recovery_point: log_end,
            high_watermark,
            log_start,
            epochs: epochs.entries().to_vec(),
        },
    )?;
    if rescan.is_some() {
        checkpoint::remove_rescan(dir)?;
    }
    checkpoint::take_clean_marker(dir)?;
    Ok(Recovered {
        segments,
        log_start,
        log_end,
        high_watermark,
        epochs,
        info,
        checkpointed,
    })
}

/// A new, empty log (no segment, no checkpoint yet): one empty segment and no checkpoints
/// (a log without them is fully scanned on open, which for an empty log costs nothing).
/// Directory fsyncs make the files and, if it was just created, the directory itself
/// durable; there is no data to sync. A new partition thus costs two journal commits
/// instead of about eight, which is what a topic with many partitions waits for.
fn create_fresh(dir: &Path, config: &LogConfig, created_dir: bool) -> Result<Recovered> {
    let segment = Segment::create(dir, 0, config)?;
    checkpoint::sync_dir(dir)?;
    if created_dir {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            checkpoint::sync_dir(parent)?;
        }
    }
    Ok(Recovered {
        segments: BTreeMap::from([(0, Arc::new(segment))]),
        log_start: 0,
        log_end: 0,
        high_watermark: 0,
        epochs: EpochCache::from_entries(Vec::new()),
        info: RecoveryInfo::default(),
        checkpointed: Some(Checkpoints::empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::{parse_name, segment_holding};

    #[test]
    fn holding_segment() {
        let bases = [0, 100, 200];
        assert_eq!(segment_holding(&bases, -5), 0);
        assert_eq!(segment_holding(&bases, 99), 0);
        assert_eq!(segment_holding(&bases, 100), 1);
        assert_eq!(segment_holding(&bases, i64::MAX), 2);
    }

    #[test]
    fn names() {
        assert_eq!(parse_name("00000000000000001024.log"), Some((1024, "log")));
        assert_eq!(
            parse_name("00000000000000001024.timeindex"),
            Some((1024, "timeindex"))
        );
        assert_eq!(
            parse_name("00000000000000001024.log.synced"),
            Some((1024, "log.synced"))
        );
        assert_eq!(parse_name("1024.log"), None);
        assert_eq!(parse_name("leader-epoch-checkpoint"), None);
    }
}
