//! Latency percentiles for `keel bench`.
//!
//! Samples are kept in a Vec and sorted once at the end; percentiles use the
//! nearest-rank rule. Past [`LatencyHistogram::DEFAULT_CAPACITY`] samples the Vec
//! becomes a uniform reservoir (Algorithm R), so memory stays bounded on long
//! runs; the maximum is always exact.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    samples_us: Vec<u64>,
    capacity: usize,
    seen: u64,
    max_us: u64,
    rng: XorShift,
}

/// The numbers `keel bench` reports, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LatencySummary {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::with_capacity(Self::DEFAULT_CAPACITY)
    }
}

impl LatencyHistogram {
    /// Exact percentiles for the default one million records.
    pub const DEFAULT_CAPACITY: usize = 1_000_000;

    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            samples_us: Vec::with_capacity(capacity.min(1 << 16)),
            capacity,
            seen: 0,
            max_us: 0,
            rng: XorShift(0x9E37_79B9_7F4A_7C15),
        }
    }

    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.seen += 1;
        self.max_us = self.max_us.max(us);
        if self.samples_us.len() < self.capacity {
            self.samples_us.push(us);
        } else {
            // Keep each of the `seen` samples with probability capacity/seen.
            let slot = self.rng.next() % self.seen;
            if let Ok(slot) = usize::try_from(slot) {
                if slot < self.capacity {
                    self.samples_us[slot] = us;
                }
            }
        }
    }

    /// How many latencies were recorded (not how many are kept).
    pub fn count(&self) -> u64 {
        self.seen
    }

    /// The latency at `per_mille` (500 = p50, 999 = p99.9, 1000 = max), or
    /// `None` when nothing was recorded.
    pub fn percentile(&mut self, per_mille: u32) -> Option<Duration> {
        if self.samples_us.is_empty() {
            return None;
        }
        if per_mille >= 1000 {
            return Some(Duration::from_micros(self.max_us));
        }
        self.samples_us.sort_unstable();
        nearest_rank(&self.samples_us, per_mille).map(Duration::from_micros)
    }

    /// p50, p99, p99.9 and max in milliseconds; all zero when nothing was recorded.
    pub fn summary(&mut self) -> LatencySummary {
        let mut ms = |per_mille| {
            // Whole microseconds / 1000: prints as 7.591, not 7.590999999999999.
            self.percentile(per_mille)
                .map_or(0.0, |d| d.as_micros() as f64 / 1000.0)
        };
        LatencySummary {
            p50_ms: ms(500),
            p99_ms: ms(990),
            p999_ms: ms(999),
            max_ms: ms(1000),
        }
    }
}

/// Nearest rank: the smallest value with at least `per_mille`/1000 of the samples
/// at or below it. Integer arithmetic, so p99.9 of 1000 samples is the 999th.
fn nearest_rank(sorted: &[u64], per_mille: u32) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len() as u64;
    let rank = (n * u64::from(per_mille)).div_ceil(1000).clamp(1, n);
    sorted.get(usize::try_from(rank - 1).ok()?).copied()
}

/// A tiny PRNG for reservoir slots; statistical quality is plenty for sampling.
#[derive(Debug, Clone)]
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn nearest_rank_table() {
        let hundred: Vec<u64> = (1..=100).collect();
        let thousand: Vec<u64> = (1..=1000).collect();
        let cases: &[(&[u64], u32, Option<u64>)] = &[
            (&[], 500, None),
            (&[7], 0, Some(7)),
            (&[7], 500, Some(7)),
            (&[7], 999, Some(7)),
            (&[1, 2], 500, Some(1)),
            (&[1, 2], 501, Some(2)),
            (&[1, 2, 3, 4], 500, Some(2)),
            (&[1, 2, 3, 4], 990, Some(4)),
            (&hundred, 500, Some(50)),
            (&hundred, 990, Some(99)),
            (&hundred, 999, Some(100)),
            (&thousand, 500, Some(500)),
            (&thousand, 990, Some(990)),
            (&thousand, 999, Some(999)),
            (&thousand, 1000, Some(1000)),
        ];
        for (sorted, per_mille, want) in cases {
            assert_eq!(
                nearest_rank(sorted, *per_mille),
                *want,
                "n={} p={per_mille}",
                sorted.len()
            );
        }
    }

    #[test]
    fn records_in_any_order() {
        let mut h = LatencyHistogram::default();
        for n in (1..=1000).rev() {
            h.record(ms(n));
        }
        assert_eq!(h.count(), 1000);
        let s = h.summary();
        assert_eq!(s.p50_ms, 500.0);
        assert_eq!(s.p99_ms, 990.0);
        assert_eq!(s.p999_ms, 999.0);
        assert_eq!(s.max_ms, 1000.0);
    }

    #[test]
    fn sub_millisecond_latencies_keep_microseconds() {
        let mut h = LatencyHistogram::default();
        h.record(Duration::from_micros(250));
        assert_eq!(h.summary().p50_ms, 0.25);
    }

    #[test]
    fn empty_summary_is_zero() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.percentile(500), None);
        assert_eq!(
            h.summary(),
            LatencySummary {
                p50_ms: 0.0,
                p99_ms: 0.0,
                p999_ms: 0.0,
                max_ms: 0.0
            }
        );
    }

    #[test]
    fn reservoir_bounds_memory_and_keeps_exact_max() {
        let mut h = LatencyHistogram::with_capacity(1000);
        for n in 1..=100_000 {
            h.record(Duration::from_micros(n));
        }
        assert_eq!(h.count(), 100_000);
        assert_eq!(h.samples_us.len(), 1000);
        assert_eq!(h.percentile(1000), Some(Duration::from_micros(100_000)));
        // A uniform sample of 1..=100000 has its median near 50000.
        let p50 = h.percentile(500).unwrap().as_micros();
        assert!((40_000..60_000).contains(&p50), "p50 {p50}");
    }
}
