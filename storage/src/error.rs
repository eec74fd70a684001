//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in `keel-storage`. Messages are lowercase and carry their
/// context (segment or file name, position, offsets).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A read or truncate asked for an offset outside `[log_start, log_end]`.
    #[error("offset {offset} out of range [{log_start}, {log_end}]")]
    OffsetOutOfRange {
        offset: i64,
        log_start: i64,
        log_end: i64,
    },
    /// A batch failed its length, magic or CRC check (on append or during recovery).
    #[error("{context}: {reason} at position {position}")]
    CorruptBatch {
        context: String,
        position: u64,
        reason: String,
    },
    /// One batch is larger than `max_batch_bytes` (`message.max.bytes`).
    #[error("batch of {size} bytes at position {position} exceeds the limit of {max} bytes")]
    RecordTooLarge {
        size: usize,
        position: usize,
        max: u32,
    },
    /// ENOSPC or EDQUOT. Nothing of the failed write is visible; the log stays usable.
    #[error("{context}: disk full: {source}")]
    DiskFull {
        context: String,
        #[source]
        source: io::Error,
    },
    /// Any other I/O failure.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// fsync/fdatasync failed. The caller must not trust what is on disk and should stop the
    /// process: after a failed fsync the kernel may have dropped the dirty pages, so a retry
    /// can "succeed" without the data ever reaching the disk.
    #[error("{context}: fsync failed: {source}")]
    FsyncFailed {
        context: String,
        #[source]
        source: io::Error,
    },
    /// A follower append whose first batch does not start at the log end offset, or whose
    /// batches go backwards.
    #[error("non-monotonic offset: expected base offset {expected}, got {got}")]
    NonMonotonicOffset { expected: i64, got: i64 },
    /// A checkpoint file failed its checksum or could not be parsed.
    #[error("{file}: corrupt checkpoint: {reason}")]
    CorruptCheckpoint { file: String, reason: String },
    /// `LogConfig::validate` rejected a setting.
    #[error("invalid config {key}: {reason}")]
    InvalidConfig { key: &'static str, reason: String },
    /// The log was closed; no further operations are possible.
    #[error("log {} is closed", dir.display())]
    Closed { dir: PathBuf },
    /// An idempotent producer's batch breaks the sequence or epoch rules; nothing appended.
    #[error(transparent)]
    Producer(#[from] crate::producer_state::ProducerError),
}

impl StorageError {
    /// Wraps an I/O error, mapping ENOSPC and EDQUOT to [`StorageError::DiskFull`].
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        let context = context.into();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StorageError::DiskFull { context, source },
            _ => StorageError::Io { context, source },
        }
    }

    /// Wraps an fsync error.
    pub fn fsync(context: impl Into<String>, source: io::Error) -> Self {
        StorageError::FsyncFailed {
            context: context.into(),
            source,
        }
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_and_edquot_map_to_disk_full() {
        for errno in [libc::ENOSPC, libc::EDQUOT] {
            let e = StorageError::io("segment 0.log", io::Error::from_raw_os_error(errno));
            assert!(matches!(e, StorageError::DiskFull { .. }), "{e:?}");
        }
        let e = StorageError::io("x", io::Error::from_raw_os_error(libc::EIO));
        assert!(matches!(e, StorageError::Io { .. }));
    }

    #[test]
    fn messages_carry_context() {
        let e = StorageError::CorruptBatch {
            context: "segment 00000000000000001024.log".into(),
            position: 8812,
            reason: "crc mismatch".into(),
        };
        assert_eq!(
            e.to_string(),
            "segment 00000000000000001024.log: crc mismatch at position 8812"
        );
    }
}
