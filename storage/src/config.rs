//! Per-log configuration (Kafka topic-level property names in the field docs).

use crate::error::{Result, StorageError};
use crate::page_cache::PageCache;
use keel_protocol::batch::BATCH_HEADER_LEN;

/// When appended data is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// `log.flush.policy=always`: the broker calls [`crate::Log::flush`] before an append
    /// counts toward acks (group commit: concurrent callers share one fsync).
    Always,
    /// The broker calls [`crate::Log::flush`] on a timer every `ms` milliseconds.
    Interval { ms: u64 },
}

/// Settings of one partition log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `segment.bytes`: roll when the next append would make the active segment larger.
    pub segment_bytes: u64,
    /// `segment.ms`: roll a non-empty active segment older than this ([`crate::Log::maybe_roll`]).
    pub segment_ms: Option<u64>,
    /// `retention.bytes`: delete old sealed segments while the log is larger. `None` = unlimited.
    pub retention_bytes: Option<u64>,
    /// `retention.ms`: delete sealed segments whose newest timestamp is older. `None` = forever.
    pub retention_ms: Option<u64>,
    /// `index.interval.bytes`: bytes between two offset-index entries.
    pub index_interval_bytes: u32,
    /// `segment.index.bytes`: preallocated size of each index file; a full index rolls.
    pub max_index_bytes: u32,
    /// `log.flush.policy` (Keel) / `flush.ms`.
    pub flush_policy: FlushPolicy,
    /// `message.max.bytes`: largest accepted batch; larger ones fail with `RecordTooLarge`.
    pub max_batch_bytes: u32,
    /// `cleanup.policy=compact`: accepted and stored; compaction itself is not implemented yet
    /// (a `compact`-only topic is given no time or size retention, so it keeps everything).
    pub compact: bool,
    /// `log.cache.bytes` (Keel): the node's window of recently written data kept in the
    /// page cache, shared by every log that holds a clone of it ([`PageCache`]).
    pub page_cache: PageCache,
}

impl Default for LogConfig {
    fn default() -> Self {
        const DAY_MS: u64 = 24 * 60 * 60 * 1000;
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: Some(7 * DAY_MS),
            retention_bytes: None,
            retention_ms: Some(7 * DAY_MS),
            index_interval_bytes: 4096,
            max_index_bytes: 10 << 20,
            flush_policy: FlushPolicy::Always,
            // Kafka's message.max.bytes default: 1 MiB of batch plus its 12-byte overhead.
            max_batch_bytes: (1 << 20) + 12,
            compact: false,
            page_cache: PageCache::default(),
        }
    }
}

impl LogConfig {
    /// Rejects settings the storage layer cannot honour.
    pub fn validate(&self) -> Result<()> {
        fn bad(key: &'static str, reason: String) -> Result<()> {
            Err(StorageError::InvalidConfig { key, reason })
        }
        // Positions in the offset index are u32 and a segment may overshoot segment_bytes by
        // one append, so keep segments well inside the u32 range (Kafka caps at i32::MAX).
        if self.segment_bytes < 1024 || self.segment_bytes > i32::MAX as u64 {
            return bad(
                "segment.bytes",
                format!("{} not in [1024, {}]", self.segment_bytes, i32::MAX),
            );
        }
        if self.segment_ms == Some(0) {
            return bad("segment.ms", "must be positive".into());
        }
        if self.index_interval_bytes == 0 {
            return bad("index.interval.bytes", "must be positive".into());
        }
        if self.max_index_bytes < 1024 {
            return bad(
                "segment.index.bytes",
                format!("{} is below 1024", self.max_index_bytes),
            );
        }
        if (self.max_batch_bytes as usize) < BATCH_HEADER_LEN
            || self.max_batch_bytes > i32::MAX as u32
        {
            return bad(
                "message.max.bytes",
                format!(
                    "{} not in [{BATCH_HEADER_LEN}, {}]",
                    self.max_batch_bytes,
                    i32::MAX
                ),
            );
        }
        if let FlushPolicy::Interval { ms: 0 } = self.flush_policy {
            return bad("flush.ms", "must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        LogConfig::default().validate().unwrap();
    }

    #[test]
    fn rejects_bad_values() {
        let cases: Vec<(LogConfig, &str)> = vec![
            (
                LogConfig {
                    segment_bytes: 10,
                    ..Default::default()
                },
                "segment.bytes",
            ),
            (
                LogConfig {
                    segment_bytes: 1 << 40,
                    ..Default::default()
                },
                "segment.bytes",
            ),
            (
                LogConfig {
                    segment_ms: Some(0),
                    ..Default::default()
                },
                "segment.ms",
            ),
            (
                LogConfig {
                    index_interval_bytes: 0,
                    ..Default::default()
                },
                "index.interval.bytes",
            ),
            (
                LogConfig {
                    max_index_bytes: 8,
                    ..Default::default()
                },
                "segment.index.bytes",
            ),
            (
                LogConfig {
                    max_batch_bytes: 3,
                    ..Default::default()
                },
                "message.max.bytes",
            ),
            (
                LogConfig {
                    flush_policy: FlushPolicy::Interval { ms: 0 },
                    ..Default::default()
                },
                "flush.ms",
            ),
        ];
        for (cfg, key) in cases {
            match cfg.validate() {
                Err(StorageError::InvalidConfig { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key}: expected invalid config, got {other:?}"),
            }
        }
    }
}
