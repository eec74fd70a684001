//! Choosing a partition: Kafka's murmur2 hash for keyed records (identical to the Java client,
//! so keys land where Java producers put them) and a sticky choice for unkeyed records that
//! moves on when a batch completes (KIP-480).

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of a keyed record: `(murmur2(key) & 0x7fffffff) % partitions`.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    debug_assert!(partitions > 0);
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

/// Sticky partition per topic for unkeyed records.
#[derive(Debug)]
pub(crate) struct StickyPartitioner {
    sticky: HashMap<String, i32>,
    rng: StdRng,
}

impl StickyPartitioner {
    pub(crate) fn new() -> Self {
        StickyPartitioner {
            sticky: HashMap::new(),
            rng: StdRng::from_entropy(),
        }
    }

    #[cfg(test)]
    pub(crate) fn with_seed(seed: u64) -> Self {
        StickyPartitioner {
            sticky: HashMap::new(),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The current sticky partition of `topic`, choosing one if there is none.
    ///
    /// `available` are partitions with a leader; when none has one, any of `0..partitions`.
    pub(crate) fn partition(&mut self, topic: &str, available: &[i32], partitions: i32) -> i32 {
        if let Some(&p) = self.sticky.get(topic) {
            if p < partitions {
                return p;
            }
        }
        let p = self.choose(available, partitions, None);
        self.sticky.insert(topic.to_owned(), p);
        p
    }

    /// A batch of `partition` completed: if it is the sticky one, move to another.
    pub(crate) fn batch_completed(
        &mut self,
        topic: &str,
        partition: i32,
        available: &[i32],
        partitions: i32,
    ) {
        if self.sticky.get(topic) == Some(&partition) {
            let p = self.choose(available, partitions, Some(partition));
            self.sticky.insert(topic.to_owned(), p);
        }
    }

    fn choose(&mut self, available: &[i32], partitions: i32, avoid: Option<i32>) -> i32 {
        let all: Vec<i32>;
        let pool = if available.is_empty() {
            all = (0..partitions.max(1)).collect();
            &all[..]
        } else {
            available
        };
        if pool.len() == 1 {
            return pool[0];
        }
        loop {
            let p = pool[self.rng.gen_range(0..pool.len())];
            if Some(p) != avoid {
                return p;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors of the Java client's `UtilsTest.testMurmur2`.
    #[test]
    fn murmur2_matches_java_reference() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
        ];
        for (key, hash) in cases {
            assert_eq!(murmur2(key), hash, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn keyed_partition_is_positive_modulo() {
        // murmur2("21") = -973932308; & 0x7fffffff = 1173551340
        assert_eq!(partition_for_key(b"21", 4), 1173551340 % 4);
        assert_eq!(partition_for_key(b"foobar", 1), 0);
        for n in 1..50 {
            let p = partition_for_key(b"a-little-bit-long-string", n);
            assert!((0..n).contains(&p));
        }
    }

    #[test]
    fn sticky_stays_until_its_batch_completes() {
        let mut s = StickyPartitioner::with_seed(7);
        let avail = [0, 1, 2, 3];
        let first = s.partition("t", &avail, 4);
        for _ in 0..100 {
            assert_eq!(s.partition("t", &avail, 4), first);
        }
        // Completing another partition's batch does not move it.
        s.batch_completed("t", (first + 1) % 4, &avail, 4);
        assert_eq!(s.partition("t", &avail, 4), first);
        s.batch_completed("t", first, &avail, 4);
        let second = s.partition("t", &avail, 4);
        assert_ne!(second, first);
        assert!(avail.contains(&second));
    }

    #[test]
    fn sticky_prefers_partitions_with_a_leader() {
        let mut s = StickyPartitioner::with_seed(1);
        for _ in 0..50 {
            let p = s.partition("t", &[2], 4);
            assert_eq!(p, 2);
            s.batch_completed("t", p, &[2], 4);
        }
        // With no leader anywhere, any partition is chosen.
        let p = s.partition("u", &[], 3);
        assert!((0..3).contains(&p));
    }

    #[test]
    fn sticky_spreads_over_partitions() {
        let mut s = StickyPartitioner::with_seed(3);
        let avail = [0, 1, 2];
        let mut seen = [0; 3];
        for _ in 0..300 {
            let p = s.partition("t", &avail, 3);
            seen[p as usize] += 1;
            s.batch_completed("t", p, &avail, 3);
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
    }
}
