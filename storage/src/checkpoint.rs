//! Checkpoint files: recovery point, high watermark, log start offset, leader epochs, and the
//! rescan marker.
//!
//! Each is a small text file:
//!
//! ```text
//! keel-checkpoint 1 <kind>
//! <one value per line>
//! crc32 <8 hex digits: crc32fast of every byte before this line>
//! ```
//!
//! The first four are written together: temp files, fsync each, rename each (the recovery
//! point last, see [`store`]), fsync the directory once. The rescan marker ([`RESCAN`]) is
//! written the same way, on its own.
//! Each file is individually valid at any crash point; a file that fails its checksum or does
//! not parse is reported (never silently trusted) and the caller falls back to a safe value.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::Path;

use crate::error::{Result, StorageError};
use crate::metrics::timed_sync;

const VERSION: u32 = 1;
pub(crate) const RECOVERY_POINT: &str = "recovery-point-offset-checkpoint";
pub(crate) const HIGH_WATERMARK: &str = "replication-offset-checkpoint";
pub(crate) const LOG_START: &str = "log-start-offset-checkpoint";
pub(crate) const LEADER_EPOCH: &str = "leader-epoch-checkpoint";
/// Present only between a clean `close` and the next `open`.
pub(crate) const CLEAN_SHUTDOWN: &str = ".keel-clean-shutdown";
/// Present from [`crate::Log::mark_for_rescan`] until the next `open` has rescanned: the offset
/// from which data failed a check.
pub(crate) const RESCAN: &str = "rescan-offset-checkpoint";

/// Everything checkpointed for one log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Checkpoints {
    pub(crate) recovery_point: i64,
    pub(crate) high_watermark: i64,
    pub(crate) log_start: i64,
    pub(crate) epochs: Vec<(i32, i64)>,
}

impl Checkpoints {
    /// An empty log's: what a log without checkpoint files recovers to when it holds nothing.
    pub(crate) fn empty() -> Self {
        Self {
            recovery_point: 0,
            high_watermark: 0,
            log_start: 0,
            epochs: Vec::new(),
        }
    }
}

/// What was found on disk; `None` where a file was missing or corrupt (see `corrupt`).
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub(crate) recovery_point: Option<i64>,
    pub(crate) high_watermark: Option<i64>,
    pub(crate) log_start: Option<i64>,
    pub(crate) epochs: Option<Vec<(i32, i64)>>,
    /// One message per corrupt file.
    pub(crate) corrupt: Vec<String>,
}

impl Loaded {
    /// No checkpoint file at all, and none corrupt: a log that never wrote one.
    pub(crate) fn none(&self) -> bool {
        self.corrupt.is_empty()
            && self.recovery_point.is_none()
            && self.high_watermark.is_none()
            && self.log_start.is_none()
            && self.epochs.is_none()
    }

    /// What the files say, where that is known: all four sound, or none at all (the state an
    /// empty log without them recovers to, [`Checkpoints::empty`]).
    pub(crate) fn stored(&self) -> Option<Checkpoints> {
        if self.none() {
            return Some(Checkpoints::empty());
        }
        match (
            self.recovery_point,
            self.high_watermark,
            self.log_start,
            &self.epochs,
        ) {
            (Some(recovery_point), Some(high_watermark), Some(log_start), Some(epochs))
                if self.corrupt.is_empty() =>
            {
                Some(Checkpoints {
                    recovery_point,
                    high_watermark,
                    log_start,
                    epochs: epochs.clone(),
                })
            }
            _ => None,
        }
    }
}

fn encode(kind: &str, lines: &[String]) -> Vec<u8> {
    let mut body = format!("keel-checkpoint {VERSION} {kind}\n");
    for l in lines {
        body.push_str(l);
        body.push('\n');
    }
    let crc = crc32fast::hash(body.as_bytes());
    body.push_str(&format!("crc32 {crc:08x}\n"));
    body.into_bytes()
}

fn decode(name: &str, data: &[u8]) -> Result<Vec<String>> {
    let bad = |reason: &str| StorageError::CorruptCheckpoint {
        file: name.to_string(),
        reason: reason.to_string(),
    };
    let text = std::str::from_utf8(data).map_err(|_| bad("not utf-8"))?;
    let body_end = text
        .trim_end_matches('\n')
        .rfind('\n')
        .map(|i| i + 1)
        .ok_or_else(|| bad("too short"))?;
    let (body, trailer) = text.split_at(body_end);
    let stored = trailer
        .trim_end()
        .strip_prefix("crc32 ")
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or_else(|| bad("missing checksum"))?;
    let computed = crc32fast::hash(body.as_bytes());
    if stored != computed {
        return Err(bad(&format!(
            "checksum mismatch: stored {stored:08x}, computed {computed:08x}"
        )));
    }
    let mut lines = body.lines();
    let header = lines.next().ok_or_else(|| bad("missing header"))?;
    if header != format!("keel-checkpoint {VERSION} {name}") {
        return Err(bad(&format!("unexpected header {header:?}")));
    }
    Ok(lines.map(str::to_string).collect())
}

fn parse_one(name: &str, lines: &[String]) -> Result<i64> {
    match lines {
        [v] => v.parse().map_err(|_| StorageError::CorruptCheckpoint {
            file: name.to_string(),
            reason: format!("bad value {v:?}"),
        }),
        _ => Err(StorageError::CorruptCheckpoint {
            file: name.to_string(),
            reason: format!("expected 1 value, found {}", lines.len()),
        }),
    }
}

fn parse_epochs(lines: &[String]) -> Result<Vec<(i32, i64)>> {
    lines
        .iter()
        .map(|l| {
            let mut it = l.split(' ');
            match (
                it.next().map(str::parse),
                it.next().map(str::parse),
                it.next(),
            ) {
                (Some(Ok(e)), Some(Ok(o)), None) => Ok((e, o)),
                _ => Err(StorageError::CorruptCheckpoint {
                    file: LEADER_EPOCH.to_string(),
                    reason: format!("bad entry {l:?}"),
                }),
            }
        })
        .collect()
}

/// Reads one file: `Ok(None)` if absent.
fn read_lines(dir: &Path, name: &str) -> Result<Option<Vec<String>>> {
    match fs::read(dir.join(name)) {
        Ok(data) => decode(name, &data).map(Some),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::CorruptCheckpoint {
            file: name.to_string(),
            reason: format!("unreadable: {e}"),
        }),
    }
}

/// Loads every checkpoint of `dir`, collecting corrupt ones instead of failing.
pub(crate) fn load(dir: &Path) -> Loaded {
    let mut out = Loaded::default();
    let one = |name: &str, corrupt: &mut Vec<String>| -> Option<i64> {
        match read_lines(dir, name).and_then(|l| l.map(|l| parse_one(name, &l)).transpose()) {
            Ok(v) => v,
            Err(e) => {
                corrupt.push(e.to_string());
                None
            }
        }
    };
    out.recovery_point = one(RECOVERY_POINT, &mut out.corrupt);
    out.high_watermark = one(HIGH_WATERMARK, &mut out.corrupt);
    out.log_start = one(LOG_START, &mut out.corrupt);
    match read_lines(dir, LEADER_EPOCH).and_then(|l| l.map(|l| parse_epochs(&l)).transpose()) {
        Ok(v) => out.epochs = v,
        Err(e) => out.corrupt.push(e.to_string()),
    }
    out
}

/// fsync a directory so renames and unlinks in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| timed_sync(|| d.sync_all()))
        .map_err(|e| StorageError::fsync(format!("directory {}", dir.display()), e))
}

/// Writes the checkpoint files, each atomically (see the module doc).
///
/// The recovery point goes into place last. Recovery takes everything below it as it finds
/// it, leader epochs included, and scans only from there. So a crash between two renames
/// must not leave a new recovery point beside an old epoch file: the epochs that started
/// in the segments it skips would be lost, and the replica's epoch history would differ
/// from its leader's (seen in a chaos run). Newer epochs, HW or log start beside an older
/// recovery point are harmless: the scan from there re-derives the epochs.
/// Writes `c` ([`store`]) unless `stored`, what the files hold (`None`: unknown), already
/// says it, and keeps `stored` up to date. A checkpoint of unchanged state costs five fsyncs
/// for nothing: an idle replica's periodic one, or a recovery that found what the files say,
/// thousands of times over on a broker with thousands of replicas.
pub(crate) fn store_changed(
    dir: &Path,
    stored: &mut Option<Checkpoints>,
    c: Checkpoints,
) -> Result<()> {
    if stored.as_ref() == Some(&c) {
        return Ok(());
    }
    *stored = None;
    store(dir, &c)?;
    *stored = Some(c);
    Ok(())
}

pub(crate) fn store(dir: &Path, c: &Checkpoints) -> Result<()> {
    write_files(
        dir,
        &[
            (
                LEADER_EPOCH,
                c.epochs.iter().map(|(e, o)| format!("{e} {o}")).collect(),
            ),
            (LOG_START, vec![c.log_start.to_string()]),
            (HIGH_WATERMARK, vec![c.high_watermark.to_string()]),
            (RECOVERY_POINT, vec![c.recovery_point.to_string()]),
        ],
    )
}

/// Writes `files` (name, lines) atomically: temp files, fsync each, rename each in the
/// order given, fsync the directory once. Each file is atomic, the set is not: a crash can
/// fall between two renames.
fn write_files(dir: &Path, files: &[(&str, Vec<String>)]) -> Result<()> {
    for (name, lines) in files {
        let tmp = dir.join(format!("{name}.tmp"));
        let ctx = || format!("checkpoint {}", tmp.display());
        let mut f = File::create(&tmp).map_err(|e| StorageError::io(ctx(), e))?;
        f.write_all(&encode(name, lines))
            .map_err(|e| StorageError::io(ctx(), e))?;
        timed_sync(|| f.sync_all()).map_err(|e| StorageError::fsync(ctx(), e))?;
    }
    for (name, _) in files {
        let tmp = dir.join(format!("{name}.tmp"));
        crate::failpoint::check_io(crate::failpoint::CHECKPOINT_RENAME, &tmp)
            .and_then(|()| fs::rename(&tmp, dir.join(name)))
            .map_err(|e| StorageError::io(format!("checkpoint rename {}", tmp.display()), e))?;
    }
    sync_dir(dir)
}

/// Writes the rescan marker (see [`RESCAN`]) atomically.
pub(crate) fn store_rescan(dir: &Path, offset: i64) -> Result<()> {
    write_files(dir, &[(RESCAN, vec![offset.to_string()])])
}

/// The offset in the rescan marker; `Ok(None)` if there is none, an error if it is corrupt.
pub(crate) fn load_rescan(dir: &Path) -> Result<Option<i64>> {
    read_lines(dir, RESCAN)?
        .map(|lines| parse_one(RESCAN, &lines))
        .transpose()
}

/// Removes the rescan marker durably (no-op if absent).
pub(crate) fn remove_rescan(dir: &Path) -> Result<()> {
    let p = dir.join(RESCAN);
    match fs::remove_file(&p) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io(format!("remove {}", p.display()), e)),
    }
}

/// Creates the clean-shutdown marker durably.
pub(crate) fn write_clean_marker(dir: &Path) -> Result<()> {
    let p = dir.join(CLEAN_SHUTDOWN);
    File::create(&p)
        .and_then(|f| timed_sync(|| f.sync_all()))
        .map_err(|e| StorageError::io(format!("marker {}", p.display()), e))?;
    sync_dir(dir)
}

/// Removes the clean-shutdown marker durably; true if it existed.
pub(crate) fn take_clean_marker(dir: &Path) -> Result<bool> {
    let p = dir.join(CLEAN_SHUTDOWN);
    match fs::remove_file(&p) {
        Ok(()) => sync_dir(dir).map(|()| true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StorageError::io(format!("marker {}", p.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoints {
        Checkpoints {
            recovery_point: 1234,
            high_watermark: 1200,
            log_start: 7,
            epochs: vec![(1, 7), (4, 900)],
        }
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let l = load(dir.path());
        assert_eq!((l.recovery_point, l.epochs.clone()), (None, None));
        assert!(l.corrupt.is_empty());
        store(dir.path(), &sample()).unwrap();
        let l = load(dir.path());
        assert!(l.corrupt.is_empty(), "{:?}", l.corrupt);
        assert_eq!(l.recovery_point, Some(1234));
        assert_eq!(l.high_watermark, Some(1200));
        assert_eq!(l.log_start, Some(7));
        assert_eq!(l.epochs, Some(vec![(1, 7), (4, 900)]));
        assert!(!dir.path().join(format!("{RECOVERY_POINT}.tmp")).exists());
    }

    #[test]
    fn detects_corruption_per_file() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), &sample()).unwrap();
        let hw = dir.path().join(HIGH_WATERMARK);
        let mut data = fs::read(&hw).unwrap();
        let i = data.iter().position(|&b| b == b'1').unwrap();
        data[i] = b'9';
        fs::write(&hw, &data).unwrap();
        fs::write(dir.path().join(LEADER_EPOCH), b"garbage").unwrap();
        let l = load(dir.path());
        assert_eq!(l.high_watermark, None);
        assert_eq!(l.epochs, None);
        assert_eq!(l.recovery_point, Some(1234), "other files still trusted");
        assert_eq!(l.corrupt.len(), 2, "{:?}", l.corrupt);
        assert!(l.corrupt[0].starts_with(HIGH_WATERMARK), "{}", l.corrupt[0]);
        assert!(l.corrupt[0].contains("checksum mismatch"));
    }

    #[test]
    fn valid_checksum_but_wrong_kind_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(LOG_START),
            encode(HIGH_WATERMARK, &["5".into()]),
        )
        .unwrap();
        let l = load(dir.path());
        assert_eq!(l.log_start, None);
        assert_eq!(l.corrupt.len(), 1);
    }

    #[test]
    fn rescan_marker_round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_rescan(dir.path()).unwrap(), None);
        remove_rescan(dir.path()).unwrap();
        store_rescan(dir.path(), 4242).unwrap();
        assert_eq!(load_rescan(dir.path()).unwrap(), Some(4242));
        assert!(!dir.path().join(format!("{RESCAN}.tmp")).exists());
        assert!(load(dir.path()).corrupt.is_empty(), "not one of the four");
        fs::write(dir.path().join(RESCAN), b"junk").unwrap();
        let e = load_rescan(dir.path()).unwrap_err();
        assert!(e.to_string().starts_with(RESCAN), "{e}");
        remove_rescan(dir.path()).unwrap();
        assert_eq!(load_rescan(dir.path()).unwrap(), None);
    }

    #[test]
    fn clean_marker() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!take_clean_marker(dir.path()).unwrap());
        write_clean_marker(dir.path()).unwrap();
        assert!(take_clean_marker(dir.path()).unwrap());
        assert!(!take_clean_marker(dir.path()).unwrap());
    }
}
