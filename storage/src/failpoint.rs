//! Failpoints: named places in the I/O path where tests inject failures.
//!
//! Armed only in builds with the `test-util` feature (the test suites'); without it every
//! check is a constant `None` the compiler removes. With it, a global `AtomicBool` keeps the
//! disabled path to one relaxed load. A point fires only for files under the directory it
//! was configured for, so tests running in parallel (each with its own temp dir) do not see
//! each other's failures.
//!
//! Points: [`SEGMENT_WRITE`] (append write: error or partial write), [`SEGMENT_FSYNC`] (flush),
//! [`CHECKPOINT_RENAME`] (a checkpoint file moved into place).

#[cfg(any(test, feature = "test-util"))]
pub use armed::{clear, set, set_after};
use std::io;
use std::path::Path;

/// The append write of a segment (`pwrite`).
pub const SEGMENT_WRITE: &str = "segment.write";
/// The fsync/fdatasync of a segment in `flush` and `roll`.
pub const SEGMENT_FSYNC: &str = "segment.fsync";
/// The rename that moves one checkpoint file into place. With [`set_after`], a test stops a
/// checkpoint write part-way, as a crash between two renames would.
pub const CHECKPOINT_RENAME: &str = "checkpoint.rename";

/// What a failpoint does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailAction {
    /// Fail with this errno before doing anything.
    Error { errno: i32 },
    /// Write only the first `bytes` bytes, then fail with `errno` (write points only).
    PartialWrite { bytes: usize, errno: i32 },
}

/// Returns the action if `name` is armed for `path`, consuming one firing.
#[cfg(any(test, feature = "test-util"))]
pub(crate) fn check(name: &'static str, path: &Path) -> Option<FailAction> {
    armed::check(name, path)
}

/// Without `test-util` nothing is ever armed.
#[cfg(not(any(test, feature = "test-util")))]
#[inline(always)]
pub(crate) fn check(_name: &'static str, _path: &Path) -> Option<FailAction> {
    None
}

#[cfg(any(test, feature = "test-util"))]
mod armed {
    use super::FailAction;
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Mutex, OnceLock};

    #[derive(Debug)]
    struct Armed {
        scope: PathBuf,
        action: FailAction,
        /// Passes left before the point starts firing.
        skip: u32,
        remaining: Option<u32>,
    }

    static ENABLED: AtomicBool = AtomicBool::new(false);

    fn registry() -> &'static Mutex<HashMap<&'static str, Vec<Armed>>> {
        static REG: OnceLock<Mutex<HashMap<&'static str, Vec<Armed>>>> = OnceLock::new();
        REG.get_or_init(Default::default)
    }

    /// Arms `name` for files under `scope`, firing `times` times (`None` = until [`clear`]).
    pub fn set(name: &'static str, scope: &Path, action: FailAction, times: Option<u32>) {
        set_after(name, scope, 0, action, times);
    }

    /// [`set`], but the first `skip` checks under `scope` pass.
    pub fn set_after(
        name: &'static str,
        scope: &Path,
        skip: u32,
        action: FailAction,
        times: Option<u32>,
    ) {
        let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
        reg.entry(name).or_default().push(Armed {
            scope: scope.to_path_buf(),
            action,
            skip,
            remaining: times,
        });
        ENABLED.store(true, Ordering::Release);
    }

    /// Disarms every point configured for `scope`.
    pub fn clear(scope: &Path) {
        let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
        for v in reg.values_mut() {
            v.retain(|a| a.scope != scope);
        }
        reg.retain(|_, v| !v.is_empty());
        ENABLED.store(!reg.is_empty(), Ordering::Release);
    }

    pub(crate) fn check(name: &'static str, path: &Path) -> Option<FailAction> {
        if !ENABLED.load(Ordering::Acquire) {
            return None;
        }
        let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
        let armed = reg.get_mut(name)?;
        let i = armed.iter().position(|a| path.starts_with(&a.scope))?;
        if armed[i].skip > 0 {
            armed[i].skip -= 1;
            return None;
        }
        let action = armed[i].action;
        if let Some(n) = armed[i].remaining.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                armed.remove(i);
            }
        }
        Some(action)
    }
}

/// `Err` if `name` is armed with [`FailAction::Error`] for `path`.
pub(crate) fn check_io(name: &'static str, path: &Path) -> io::Result<()> {
    match check(name, path) {
        Some(FailAction::Error { errno }) | Some(FailAction::PartialWrite { errno, .. }) => {
            Err(io::Error::from_raw_os_error(errno))
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_only_in_scope_and_counts_down() {
        let scope = Path::new("/tmp/keel-failpoint-test-a");
        set(
            SEGMENT_FSYNC,
            scope,
            FailAction::Error { errno: libc::EIO },
            Some(2),
        );
        let inside = scope.join("00000000000000000000.log");
        let outside = Path::new("/tmp/keel-failpoint-test-b/x.log");
        assert!(check_io(SEGMENT_FSYNC, outside).is_ok());
        assert!(check_io(SEGMENT_WRITE, &inside).is_ok());
        assert!(check_io(SEGMENT_FSYNC, &inside).is_err());
        assert!(check_io(SEGMENT_FSYNC, &inside).is_err());
        assert!(check_io(SEGMENT_FSYNC, &inside).is_ok());
        set(
            SEGMENT_WRITE,
            scope,
            FailAction::Error {
                errno: libc::ENOSPC,
            },
            None,
        );
        assert!(check_io(SEGMENT_WRITE, &inside).is_err());
        clear(scope);
        assert!(check_io(SEGMENT_WRITE, &inside).is_ok());
    }
}
