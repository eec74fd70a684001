//! Producer-state snapshots: `<20-digit offset>.snapshot` in the log's directory holds the
//! [`ProducerState`] of every batch below that offset, so recovery and truncation replay
//! only the batches after a snapshot instead of the whole log.
//!
//! A file is `KEELPS` + a version byte + a reserved byte, the state's encoding, and a
//! CRC-32 of everything before it (4 bytes, big endian). It is written to a temp file,
//! fsynced, renamed into place and the directory fsynced. One that fails its checksum or
//! does not parse is reported and removed, never trusted; the next older one is used.
//!
//! Snapshots are written when a segment rolls (at the new segment's base offset) and at a
//! clean close (at the log end). A snapshot above the log end (the log lost its tail in a
//! crash, or was truncated) no longer matches the log and is removed.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use crate::checkpoint::sync_dir;
use crate::error::{Result, StorageError};
use crate::metrics::timed_sync;
use crate::producer_state::ProducerState;

pub(crate) const SNAPSHOT_EXT: &str = "snapshot";
const MAGIC: &[u8; 6] = b"KEELPS";
const VERSION: u8 = 1;

fn path(dir: &Path, offset: i64) -> PathBuf {
    dir.join(crate::segment::file_name(offset, SNAPSHOT_EXT))
}

/// Offsets of the snapshots in `dir`, ascending.
pub(crate) fn list(dir: &Path) -> Result<Vec<i64>> {
    let entries =
        fs::read_dir(dir).map_err(|e| StorageError::io(format!("list {}", dir.display()), e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io(format!("list {}", dir.display()), e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(offset) = name
            .strip_suffix(".snapshot")
            .filter(|d| d.len() == 20)
            .and_then(|d| d.parse::<i64>().ok())
        {
            out.push(offset);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Writes `state` as the snapshot at `state.end()`, durably.
pub(crate) fn write(dir: &Path, state: &ProducerState) -> Result<()> {
    let mut data = Vec::with_capacity(64);
    data.extend_from_slice(MAGIC);
    data.push(VERSION);
    data.push(0);
    data.extend_from_slice(&state.encode());
    let crc = crc32fast::hash(&data);
    data.extend_from_slice(&crc.to_be_bytes());
    let target = path(dir, state.end());
    let tmp = target.with_extension("snapshot.tmp");
    let ctx = || format!("producer snapshot {}", tmp.display());
    let mut f = File::create(&tmp).map_err(|e| StorageError::io(ctx(), e))?;
    f.write_all(&data).map_err(|e| StorageError::io(ctx(), e))?;
    timed_sync(|| f.sync_all()).map_err(|e| StorageError::fsync(ctx(), e))?;
    fs::rename(&tmp, &target).map_err(|e| StorageError::io(ctx(), e))?;
    sync_dir(dir)?;
    metrics::counter!(crate::metrics::PRODUCER_SNAPSHOTS_WRITTEN_TOTAL).increment(1);
    Ok(())
}

/// Reads the snapshot at `offset`.
pub(crate) fn read(dir: &Path, offset: i64) -> Result<ProducerState> {
    let p = path(dir, offset);
    let bad = |reason: &str| StorageError::CorruptCheckpoint {
        file: p.display().to_string(),
        reason: reason.to_string(),
    };
    let data = fs::read(&p).map_err(|e| StorageError::io(format!("read {}", p.display()), e))?;
    if data.len() < MAGIC.len() + 2 + 4 {
        return Err(bad("too short"));
    }
    let (body, crc) = data.split_at(data.len() - 4);
    let stored = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(body) != stored {
        return Err(bad("checksum mismatch"));
    }
    if &body[..MAGIC.len()] != MAGIC || body[MAGIC.len()] != VERSION {
        return Err(bad("unknown format or version"));
    }
    let state = ProducerState::decode(&body[MAGIC.len() + 2..]).ok_or_else(|| bad("malformed"))?;
    if state.end() != offset {
        return Err(bad("names another offset than its file"));
    }
    Ok(state)
}

/// Removes the snapshot at `offset` (no-op if absent).
pub(crate) fn remove(dir: &Path, offset: i64) -> Result<()> {
    let p = path(dir, offset);
    match fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io(format!("remove {}", p.display()), e)),
    }
}

/// The newest readable snapshot at or below `at_most`; removes every snapshot above it and
/// every unreadable one on the way (each reported). `None` if there is none.
pub(crate) fn newest_at_or_below(dir: &Path, at_most: i64) -> Result<Option<ProducerState>> {
    let offsets = list(dir)?;
    for &o in offsets.iter().filter(|&&o| o > at_most) {
        remove(dir, o)?;
    }
    for &o in offsets.iter().rev().filter(|&&o| o <= at_most) {
        match read(dir, o) {
            Ok(state) => return Ok(Some(state)),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), offset = o, error = %e, "removing an unreadable producer snapshot");
                remove(dir, o)?;
            }
        }
    }
    Ok(None)
}

/// Removes the snapshots below `offset` except the newest of them (the state up to there).
pub(crate) fn remove_below(dir: &Path, offset: i64) -> Result<()> {
    let offsets = list(dir)?;
    let below: Vec<i64> = offsets.into_iter().filter(|&o| o < offset).collect();
    for &o in below.iter().rev().skip(1) {
        remove(dir, o)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::producer_state::ProducerBatch;

    fn state_at(end: i64) -> ProducerState {
        let mut s = ProducerState::empty_at(0);
        s.apply(&ProducerBatch {
            producer_id: 3,
            epoch: 1,
            first_seq: 0,
            last_seq: 4,
            first_offset: end - 5,
            last_offset: end - 1,
            timestamp: 9,
        });
        s
    }

    #[test]
    fn write_list_read_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        for end in [10, 20, 30] {
            write(dir.path(), &state_at(end)).unwrap();
        }
        assert_eq!(list(dir.path()).unwrap(), vec![10, 20, 30]);
        assert_eq!(read(dir.path(), 20).unwrap(), state_at(20));
        // At most 25: 30 goes, 20 is the answer.
        let s = newest_at_or_below(dir.path(), 25).unwrap().unwrap();
        assert_eq!(s.end(), 20);
        assert_eq!(list(dir.path()).unwrap(), vec![10, 20]);
        remove_below(dir.path(), 25).unwrap();
        assert_eq!(list(dir.path()).unwrap(), vec![20]);
    }

    #[test]
    fn a_corrupt_snapshot_is_removed_and_an_older_one_used() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &state_at(10)).unwrap();
        write(dir.path(), &state_at(20)).unwrap();
        let p = path(dir.path(), 20);
        let mut bytes = fs::read(&p).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        fs::write(&p, bytes).unwrap();
        assert!(read(dir.path(), 20).is_err());
        let s = newest_at_or_below(dir.path(), 100).unwrap().unwrap();
        assert_eq!(s.end(), 10);
        assert_eq!(list(dir.path()).unwrap(), vec![10]);
        // A file renamed to another offset is not trusted either.
        fs::rename(path(dir.path(), 10), path(dir.path(), 11)).unwrap();
        assert!(read(dir.path(), 11).is_err());
    }
}
