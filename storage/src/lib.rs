//! Partition logs on disk. No sockets.
//!
//! One [`Log`] per partition replica, in its own directory, holding Kafka v2 record batches
//! exactly as produced (the leader stamps only base offset and leader epoch).
//!
//! Module map:
//!
//! - [`config`]: [`LogConfig`] and [`FlushPolicy`] (Kafka topic property names).
//! - [`error`]: [`StorageError`], the crate's one error type.
//! - `log`: [`Log`] — append (leader / follower), read, flush (group commit), roll,
//!   truncate, retention, checkpoints, close; [`delete_log_dir`].
//! - `segment`: one `.log` file plus its indexes; pwrite appends, zero-copy mmap reads.
//! - `index`: the sparse offset index (`.index`), memory-mapped.
//! - `time_index`: the time index (`.timeindex`), memory-mapped.
//! - `recovery`: opening a directory — checkpoints, scan past the recovery point, torn-tail
//!   truncation, index rebuild; [`RecoveryInfo`].
//! - `checkpoint`: atomic, checksummed checkpoint files and the clean-shutdown marker.
//! - `epoch_cache`: the leader-epoch → start-offset cache (pure).
//! - `retention`: which segments retention deletes (pure); [`RetentionOutcome`].
//! - [`failpoint`]: named failure-injection points for tests (`segment.write`, `segment.fsync`).
//!
//! Directory layout: `<20-digit base offset>.log|.index|.timeindex` per segment, plus
//! `recovery-point-offset-checkpoint`, `replication-offset-checkpoint` (HW),
//! `log-start-offset-checkpoint`, `leader-epoch-checkpoint` and, between a clean close and the
//! next open, `.keel-clean-shutdown`.

mod checkpoint;
pub mod config;
mod epoch_cache;
pub mod error;
pub mod failpoint;
mod index;
mod log;
mod recovery;
mod retention;
mod segment;
#[doc(hidden)]
pub mod test_support;
mod time_index;

pub use config::{FlushPolicy, LogConfig};
pub use error::StorageError;
pub use log::{delete_log_dir, AppendInfo, Log, ReadInfo};
pub use recovery::RecoveryInfo;
pub use retention::RetentionOutcome;
