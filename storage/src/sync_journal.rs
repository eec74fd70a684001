//! The sync journal: test-only bookkeeping of how much of each segment an fsync made durable.
//!
//! A process killed with SIGKILL loses nothing it wrote: the page cache survives. A power cut
//! loses whatever was not fsynced. To let a fault-injection harness simulate the latter on the
//! data directory of a killed broker, each successful [`crate::Log`] segment sync records, in a
//! sidecar file `<20-digit base offset>.log.synced` next to the segment, the length the log
//! file had *before* the sync started, capped at the segment's logical size (decimal text).
//! Every byte ever reported durable was written before that length was taken, so the journal
//! never understates what is durable; a harness may cut each segment to its recorded length
//! (no sidecar: nothing was synced) and reopen the log.
//!
//! Cutting a segment below its recorded length (a truncation, a torn tail dropped by
//! recovery, a failed write's tail) lowers the record to the cut, so appends that later
//! overwrite that range never count as durable before their own sync. Sidecars are written atomically (temp file, rename) but not fsynced: the simulation
//! only ever follows a SIGKILL, after which the page cache holds them. They go with their
//! segment (deletion, re-creation); recovery removes a sidecar whose segment is gone.
//!
//! Only builds with the `test-util` feature (the test suites' broker binary) can turn it on:
//! there it is off unless the environment variable [`ENV_VAR`] is `1` when the journal is first
//! consulted (read once), or a test enabled it for a directory with `enable_for_dir` (scoped
//! like [`crate::failpoint`], so tests running in parallel do not see each other's settings).
//! Off, a sync pays one relaxed atomic load for it. Without the feature it is never on and
//! the variable is ignored: each sync would otherwise write and rename a file.

use std::io;
use std::path::{Path, PathBuf};
#[cfg(any(test, feature = "test-util"))]
pub use switch::{disable_for_dir, enable_for_dir};

/// The environment variable that turns the journal on for the whole process when set to `1`.
pub const ENV_VAR: &str = "KEEL_TEST_SYNC_JOURNAL";

/// Extension of a sidecar, after the 20-digit base offset: `<base>.log.synced`.
pub const SIDECAR_EXT: &str = "log.synced";

/// Whether syncs of the segment at `log_path` are journaled.
#[cfg(any(test, feature = "test-util"))]
pub(crate) fn enabled(log_path: &Path) -> bool {
    switch::enabled(log_path)
}

/// Without `test-util` the journal is never on.
#[cfg(not(any(test, feature = "test-util")))]
#[inline(always)]
pub(crate) fn enabled(_log_path: &Path) -> bool {
    false
}

#[cfg(any(test, feature = "test-util"))]
mod switch {
    use super::ENV_VAR;
    use std::ffi::OsStr;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::sync::{Mutex, MutexGuard, OnceLock};

    /// [`STATE`] bits. `INIT`: [`ENV_VAR`] was read. `ENV`: it said `1`. `SCOPED`: at least one
    /// directory was enabled with [`enable_for_dir`].
    const INIT: u8 = 1;
    pub(super) const ENV: u8 = 2;
    const SCOPED: u8 = 4;

    static STATE: AtomicU8 = AtomicU8::new(0);

    fn scopes() -> MutexGuard<'static, Vec<PathBuf>> {
        static SCOPES: OnceLock<Mutex<Vec<PathBuf>>> = OnceLock::new();
        SCOPES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a value of [`ENV_VAR`] turns the journal on.
    pub(super) fn env_enables(value: Option<&OsStr>) -> bool {
        value.is_some_and(|v| v == "1")
    }

    /// [`STATE`], reading [`ENV_VAR`] on first use.
    pub(super) fn state() -> u8 {
        let s = STATE.load(Ordering::Relaxed);
        if s & INIT != 0 {
            return s;
        }
        let env = if env_enables(std::env::var_os(ENV_VAR).as_deref()) {
            ENV
        } else {
            0
        };
        STATE.fetch_or(INIT | env, Ordering::Relaxed) | INIT | env
    }

    pub(crate) fn enabled(log_path: &Path) -> bool {
        let s = state();
        if s == INIT {
            return false;
        }
        s & ENV != 0 || (s & SCOPED != 0 && scopes().iter().any(|d| log_path.starts_with(d)))
    }

    /// Test hook: journals syncs of every segment under `dir`, whatever [`ENV_VAR`] says, until
    /// [`disable_for_dir`]. For tests that cannot set the environment of their own process.
    pub fn enable_for_dir(dir: &Path) {
        let mut scopes = scopes();
        scopes.push(dir.to_path_buf());
        STATE.fetch_or(SCOPED, Ordering::Release);
    }

    /// Undoes [`enable_for_dir`] for `dir` (sidecars already written stay).
    pub fn disable_for_dir(dir: &Path) {
        let mut scopes = scopes();
        scopes.retain(|d| d != dir);
        if scopes.is_empty() {
            STATE.fetch_and(!SCOPED, Ordering::Release);
        }
    }
}

/// The sidecar of the segment log file at `log_path`: the same path with `.synced` appended.
pub fn sidecar_path(log_path: &Path) -> PathBuf {
    let mut p = log_path.as_os_str().to_owned();
    p.push(".synced");
    PathBuf::from(p)
}

/// The durable length recorded for the segment log file at `log_path`; `None` if it has no
/// sidecar (never synced while the journal was on). An unparsable sidecar is `InvalidData`.
pub fn synced_len(log_path: &Path) -> io::Result<Option<u64>> {
    let path = sidecar_path(log_path);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    text.trim().parse().map(Some).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {text:?} is not a length: {e}", path.display()),
        )
    })
}

/// Records `len` as the durable length of `log_path`: temp file in the same directory, then
/// rename over the sidecar. Syncs of one segment are serialised by the log (flush lock, or
/// recovery before the log is shared), so one fixed temp name suffices; a temp file left by a
/// kill ends in `.tmp` and recovery removes it.
pub(crate) fn record(log_path: &Path, len: u64) -> io::Result<()> {
    let path = sidecar_path(log_path);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, len.to_string())?;
    std::fs::rename(&tmp, &path)
}

/// Lowers the recorded length of `log_path` to `len` if it is above (the file was cut there).
pub(crate) fn clamp(log_path: &Path, len: u64) -> io::Result<()> {
    match synced_len(log_path) {
        Ok(Some(synced)) if synced > len => record(log_path, len),
        Ok(_) => Ok(()),
        // Unreadable: whatever it said, `len` bounds what of the file can still be durable.
        Err(e) if e.kind() == io::ErrorKind::InvalidData => record(log_path, len),
        Err(e) => Err(e),
    }
}

/// Removes the sidecar of `log_path`; a missing one is fine.
pub(crate) fn remove(log_path: &Path) -> io::Result<()> {
    match std::fs::remove_file(sidecar_path(log_path)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::switch::{env_enables, state, ENV};
    use super::*;
    use crate::config::{FlushPolicy, LogConfig};
    use crate::segment::{file_name, LOG_EXT};
    use crate::test_support::sized_batch;
    use crate::Log;
    use std::ffi::OsStr;

    fn config() -> LogConfig {
        LogConfig {
            segment_bytes: 4096,
            index_interval_bytes: 256,
            max_index_bytes: 1024,
            flush_policy: FlushPolicy::Always,
            retention_ms: None,
            ..Default::default()
        }
    }

    /// A temp dir with the journal enabled for it (disabled again on drop).
    struct Journaled(tempfile::TempDir);

    impl Journaled {
        fn new() -> Journaled {
            let dir = tempfile::tempdir().unwrap();
            enable_for_dir(dir.path());
            Journaled(dir)
        }

        fn path(&self) -> &Path {
            self.0.path()
        }

        fn log_file(&self, base: i64) -> PathBuf {
            self.path().join(file_name(base, LOG_EXT))
        }

        /// Base offsets of the `.log` files and of the sidecars in the directory, sorted.
        fn inventory(&self) -> (Vec<i64>, Vec<i64>) {
            let (mut logs, mut sidecars) = (Vec::new(), Vec::new());
            for e in std::fs::read_dir(self.path()).unwrap() {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                let Some((stem, ext)) = name.split_once('.') else {
                    continue;
                };
                match ext {
                    LOG_EXT => logs.push(stem.parse().unwrap()),
                    SIDECAR_EXT => sidecars.push(stem.parse().unwrap()),
                    _ => {}
                }
            }
            logs.sort_unstable();
            sidecars.sort_unstable();
            (logs, sidecars)
        }
    }

    impl Drop for Journaled {
        fn drop(&mut self) {
            disable_for_dir(self.0.path());
        }
    }

    fn append(log: &Log, n: u64) {
        for i in 0..n {
            log.append_as_leader(&sized_batch(2, 150, i, 1000 + i as i64), 1)
                .unwrap();
        }
    }

    fn file_len(p: &Path) -> u64 {
        std::fs::metadata(p).unwrap().len()
    }

    #[test]
    fn env_var_value() {
        assert!(env_enables(Some(OsStr::new("1"))));
        assert!(!env_enables(Some(OsStr::new("0"))));
        assert!(!env_enables(Some(OsStr::new(""))));
        assert!(!env_enables(Some(OsStr::new("true"))));
        assert!(!env_enables(None));
    }

    #[test]
    fn scoped_to_the_enabled_dir() {
        let j = Journaled::new();
        assert!(enabled(&j.log_file(0)));
        let other = tempfile::tempdir().unwrap();
        let outside = other.path().join(file_name(0, LOG_EXT));
        if state() & ENV == 0 {
            assert!(!enabled(&outside));
        }
        disable_for_dir(j.path());
        if state() & ENV == 0 {
            assert!(!enabled(&j.log_file(0)));
        }
        enable_for_dir(j.path());
        assert!(enabled(&j.log_file(0)));
    }

    #[test]
    fn sidecar_follows_flushes_only() {
        let j = Journaled::new();
        let log = Log::open(j.path(), config()).unwrap();
        let seg = j.log_file(0);
        append(&log, 3);
        assert_eq!(synced_len(&seg).unwrap(), None, "nothing synced yet");
        log.flush().unwrap();
        let flushed = file_len(&seg);
        assert!(flushed > 0);
        assert_eq!(synced_len(&seg).unwrap(), Some(flushed));
        assert_eq!(
            std::fs::read_to_string(sidecar_path(&seg)).unwrap(),
            flushed.to_string()
        );

        append(&log, 2);
        assert!(file_len(&seg) > flushed);
        assert_eq!(
            synced_len(&seg).unwrap(),
            Some(flushed),
            "unflushed appends"
        );
        log.flush().unwrap();
        assert_eq!(synced_len(&seg).unwrap(), Some(file_len(&seg)));
        assert!(!j
            .path()
            .join(format!("{}.tmp", file_name(0, SIDECAR_EXT)))
            .exists());
    }

    #[test]
    fn rolled_segments_get_their_sidecar_when_sealed() {
        let j = Journaled::new();
        let log = Log::open(j.path(), config()).unwrap();
        append(&log, 40);
        let (logs, sidecars) = j.inventory();
        assert!(logs.len() > 3, "{logs:?}");
        // Rolls on the append path sync nothing.
        assert!(sidecars.is_empty(), "{sidecars:?}");
        log.flush().unwrap();
        let (logs, sidecars) = j.inventory();
        assert_eq!(sidecars, logs);
        for base in logs {
            let f = j.log_file(base);
            assert_eq!(synced_len(&f).unwrap(), Some(file_len(&f)), "{base}");
        }
    }

    #[test]
    fn truncation_lowers_and_deletes_sidecars() {
        let j = Journaled::new();
        let log = Log::open(j.path(), config()).unwrap();
        append(&log, 40);
        log.flush().unwrap();
        let (logs, _) = j.inventory();
        let cut_base = logs[1];
        // Into the second segment: it is cut and synced, later ones go with their sidecars.
        log.truncate_to(cut_base + 3).unwrap();
        let (logs_after, sidecars) = j.inventory();
        assert_eq!(logs_after, &logs[..2]);
        assert_eq!(sidecars, logs_after);
        let cut = j.log_file(cut_base);
        assert_eq!(synced_len(&cut).unwrap(), Some(file_len(&cut)));

        // Unflushed appends after a truncation do not count as synced.
        let len = file_len(&cut);
        append(&log, 1);
        assert!(file_len(&cut) > len);
        assert_eq!(synced_len(&cut).unwrap(), Some(len));

        // A reader holds the mapping: the truncation punches a hole and the file keeps its
        // length, but only the bytes below the cut count as synced, so the appends that
        // rewrite the range do not before their own flush.
        let held = log.read(cut_base, 1 << 20, i64::MAX).unwrap();
        log.truncate_to(cut_base + 2).unwrap();
        let synced = synced_len(&cut).unwrap().unwrap();
        assert!(synced < file_len(&cut), "the hole keeps the file length");
        let data = std::fs::read(&cut).unwrap();
        let mut iter = keel_protocol::batch::batches(&data[..synced as usize]);
        let last = iter.by_ref().map(|b| b.unwrap()).last().unwrap();
        assert_eq!(iter.position() as u64, synced);
        assert_eq!(last.header.last_offset() + 1, log.log_end_offset());
        append(&log, 1);
        assert_eq!(synced_len(&cut).unwrap(), Some(synced));
        drop(held);

        // A full truncation that restarts at an existing base: no stale sidecar survives.
        log.truncate_fully_and_start_at(0).unwrap();
        let (logs, sidecars) = j.inventory();
        assert_eq!(logs, [0]);
        assert!(sidecars.is_empty(), "{sidecars:?}");
        append(&log, 1);
        log.flush().unwrap();
        assert_eq!(
            synced_len(&j.log_file(0)).unwrap(),
            Some(file_len(&j.log_file(0)))
        );
    }

    #[test]
    fn retention_deletes_sidecars_with_their_segments() {
        let j = Journaled::new();
        let log = Log::open(
            j.path(),
            LogConfig {
                retention_bytes: Some(8192),
                ..config()
            },
        )
        .unwrap();
        append(&log, 60);
        log.flush().unwrap();
        log.set_high_watermark(log.log_end_offset());
        let before = j.inventory().0;
        let first = j.log_file(before[0]);
        let saved = (
            std::fs::read(&first).unwrap(),
            std::fs::read(sidecar_path(&first)).unwrap(),
        );
        let outcome = log.enforce_retention(0).unwrap();
        assert!(outcome.segments_deleted > 0);
        let (logs, sidecars) = j.inventory();
        assert_eq!(logs.len(), before.len() - outcome.segments_deleted);
        assert_eq!(sidecars, logs);

        // A crash that undid the unlinks: recovery drops the segment below the log start
        // again, sidecar included.
        drop(log);
        std::fs::write(&first, &saved.0).unwrap();
        std::fs::write(sidecar_path(&first), &saved.1).unwrap();
        let log = Log::open(j.path(), config()).unwrap();
        assert_eq!(log.log_start_offset(), logs[0]);
        assert_eq!(j.inventory(), (logs.clone(), logs));
    }

    #[test]
    fn recovery_removes_orphan_sidecars_and_ignores_the_rest() {
        let j = Journaled::new();
        {
            let log = Log::open(j.path(), config()).unwrap();
            append(&log, 5);
            log.flush().unwrap();
        }
        let orphan = j.log_file(12345);
        record(&orphan, 77).unwrap();
        std::fs::write(
            format!("{}.tmp", sidecar_path(&j.log_file(0)).display()),
            "1",
        )
        .unwrap();
        let log = Log::open(j.path(), config()).unwrap();
        assert_eq!(log.log_end_offset(), 10);
        assert_eq!(log.segment_count(), 1);
        assert!(!sidecar_path(&orphan).exists());
        assert_eq!(j.inventory().1, [0]);
        assert!(!j
            .path()
            .join(format!("{}.tmp", file_name(0, SIDECAR_EXT)))
            .exists());
    }

    #[test]
    fn unreadable_sidecar_is_an_error_and_clamp_replaces_it() {
        let j = Journaled::new();
        let f = j.log_file(0);
        std::fs::write(sidecar_path(&f), "garbage").unwrap();
        let e = synced_len(&f).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        clamp(&f, 10).unwrap();
        assert_eq!(synced_len(&f).unwrap(), Some(10));
        clamp(&f, 20).unwrap();
        assert_eq!(synced_len(&f).unwrap(), Some(10), "clamp never raises");
        remove(&f).unwrap();
        remove(&f).unwrap();
        assert_eq!(synced_len(&f).unwrap(), None);
    }
}
