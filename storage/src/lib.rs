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
//!   truncate, retention, checkpoints, digests, rescan marks, close; [`delete_log_dir`].
//! - `digest`: [`RangeDigest`], a checksum over the batches of an offset range.
//! - `segment`: one `.log` file plus its indexes; pwrite appends, zero-copy mmap reads.
//! - `index`: the sparse offset index (`.index`), memory-mapped.
//! - `time_index`: the time index (`.timeindex`), memory-mapped.
//! - `recovery`: opening a directory — checkpoints, scan past the recovery point (or from a
//!   rescan mark), torn-tail truncation, index rebuild; [`RecoveryInfo`].
//! - `checkpoint`: atomic, checksummed checkpoint files, the rescan marker and the
//!   clean-shutdown marker.
//! - `epoch_cache`: the leader-epoch → start-offset cache (pure).
//! - `retention`: which segments retention deletes (pure); [`RetentionOutcome`].
//! - [`producer_state`]: idempotent producers' epochs and last five batches, and the rules
//!   a leader checks a producer's batch by (pure); kept by [`Log`] through every append,
//!   truncation and recovery.
//! - `producer_snapshot`: `<offset>.snapshot` files of that state, written at each roll and
//!   clean close, so recovery replays only what follows the newest one.
//! - [`failpoint`]: named failure-injection points for tests (`segment.write`, `segment.fsync`).
//! - [`sync_journal`]: test-only record of what each segment's last fsync made durable
//!   (`KEEL_TEST_SYNC_JOURNAL=1`), for simulating a power cut on a killed broker's data.
//! - `test_support`: batch builders for tests.
//!
//! The test-only parts (arming failpoints, turning the sync journal on, `test_support`) exist
//! only with the `test-util` feature, which the test suites enable; without it the hooks in
//! the I/O path are constants the compiler removes.
//! - [`metrics`]: metric names, the fsync counter and timer, and [`stats`] ([`StorageStats`]).
//!
//! Directory layout: `<20-digit base offset>.log|.index|.timeindex` per segment, plus
//! `recovery-point-offset-checkpoint`, `replication-offset-checkpoint` (HW),
//! `log-start-offset-checkpoint`, `leader-epoch-checkpoint`, between a clean close and the
//! next open `.keel-clean-shutdown`, and from a [`Log::mark_for_rescan`] until the next open
//! `rescan-offset-checkpoint`. With the [`sync_journal`] on, also `<base>.log.synced` per synced
//! segment.

mod checkpoint;
pub mod config;
mod digest;
mod epoch_cache;
pub mod error;
pub mod failpoint;
mod index;
mod log;
pub mod metrics;
pub mod page_cache;
mod producer_snapshot;
pub mod producer_state;
mod recovery;
mod retention;
mod segment;
pub mod sync_journal;
#[cfg(any(test, feature = "test-util"))]
pub mod test_support;
mod time_index;

pub use config::{FlushPolicy, LogConfig};
pub use digest::RangeDigest;
pub use error::StorageError;
pub use log::{delete_log_dir, AppendInfo, Log, ReadInfo};
pub use metrics::{stats, StorageStats};
pub use page_cache::PageCache;
pub use recovery::RecoveryInfo;
pub use retention::RetentionOutcome;
