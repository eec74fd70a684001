//! Retention: which old segments to delete. A pure rule; `Log::enforce_retention` does the I/O.

use crate::config::LogConfig;

/// Result of one [`crate::Log::enforce_retention`] pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
}

/// What the rule needs to know about a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentStat {
    /// First offset after the segment (next segment's base, or the LEO for the active one).
    pub(crate) end_offset: i64,
    pub(crate) size: u64,
    pub(crate) max_timestamp: i64,
}

/// How many segments from the front of `segments` (oldest first; the last one is the active
/// segment) to delete: whole sealed segments only, never the active one, never a segment
/// holding offsets at or above the high watermark; a segment goes if it is older than
/// `retention_ms` (by its max timestamp) or if the log stays at least `retention_bytes` large
/// without it. Deletion is a prefix: it stops at the first segment that must stay.
pub(crate) fn segments_to_delete(
    segments: &[SegmentStat],
    high_watermark: i64,
    now_ms: i64,
    config: &LogConfig,
) -> usize {
    let mut total: u64 = segments.iter().map(|s| s.size).sum();
    let sealed = segments.len().saturating_sub(1);
    let mut n = 0;
    for s in &segments[..sealed] {
        if s.end_offset > high_watermark {
            break;
        }
        let expired = config
            .retention_ms
            .is_some_and(|ms| now_ms.saturating_sub(s.max_timestamp) > ms as i64);
        let oversized = config
            .retention_bytes
            .is_some_and(|limit| total - s.size >= limit);
        if !(expired || oversized) {
            break;
        }
        total -= s.size;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(end_offset: i64, size: u64, max_timestamp: i64) -> SegmentStat {
        SegmentStat {
            end_offset,
            size,
            max_timestamp,
        }
    }

    fn cfg(bytes: Option<u64>, ms: Option<u64>) -> LogConfig {
        LogConfig {
            retention_bytes: bytes,
            retention_ms: ms,
            ..Default::default()
        }
    }

    #[test]
    fn table() {
        let segs = [
            seg(10, 100, 1_000),
            seg(20, 100, 2_000),
            seg(30, 100, 3_000),
            seg(35, 50, 4_000), // active
        ];
        let cases = [
            // (retention.bytes, retention.ms, hw, now, expected)
            (None, None, 35, 10_000, 0),
            (None, Some(500), 35, 10_000, 3),
            (None, Some(500), 35, 2_400, 1),
            (None, Some(500), 20, 10_000, 2),
            (None, Some(500), 9, 10_000, 0),
            (Some(250), None, 35, 0, 1),
            (Some(150), None, 35, 0, 2),
            (Some(0), None, 35, 0, 3),
            (Some(1_000), None, 35, 0, 0),
            (Some(1_000), Some(1_500), 35, 3_000, 1),
        ];
        for (bytes, ms, hw, now, want) in cases {
            assert_eq!(
                segments_to_delete(&segs, hw, now, &cfg(bytes, ms)),
                want,
                "bytes={bytes:?} ms={ms:?} hw={hw} now={now}"
            );
        }
    }

    #[test]
    fn never_the_active_segment() {
        let segs = [seg(5, 1 << 30, 0)];
        assert_eq!(
            segments_to_delete(&segs, 5, i64::MAX, &cfg(Some(0), Some(0))),
            0
        );
        assert_eq!(segments_to_delete(&[], 5, 0, &cfg(Some(0), None)), 0);
    }
}
