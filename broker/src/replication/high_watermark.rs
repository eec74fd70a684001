//! High watermark rules on the leader and on followers, and the acks=all checks.
//!
//! Kafka references: `Partition.maybeIncrementLeaderHW` (with KIP-966's strict min ISR),
//! `Partition.appendRecordsToLeader`, `Partition.checkEnoughReplicasReachOffset`,
//! `UnifiedLog.maybeUpdateHighWatermark` and KAFKA-14704.

/// The leader's new high watermark.
///
/// - `current_hw`: the HW now; the result is never below it.
/// - `leader_leo_acked`: the leader's own end offset as far as it counts: its durable
///   (fsynced) end offset under `log.flush.policy=always`, its LEO under `interval` (see
///   `replica::leader_ack_offset`).
/// - `isr_follower_leos`: the LEOs of the followers that bound the HW — the maximal ISR minus
///   the leader, plus caught-up eligible non-members ([`hw_follower_leos`]). Followers report
///   durable offsets (they fsync before fetching further), so the result only counts data on
///   disk everywhere. An unknown LEO (-1) holds the HW where it is.
/// - `isr_size`: the size of the *committed* ISR, leader included.
/// - `min_isr`: `min.insync.replicas`.
///
/// Result: `max(current_hw, min(leader_leo_acked, isr_follower_leos...))`, except that it is
/// frozen at `current_hw` while `isr_size < min_isr` (KIP-966 strict min ISR: a record is
/// never committed by fewer than `min.insync.replicas` copies).
///
/// [`hw_follower_leos`]: super::hw_follower_leos
pub(crate) fn leader_high_watermark(
    current_hw: i64,
    leader_leo_acked: i64,
    isr_follower_leos: &[i64],
    isr_size: usize,
    min_isr: usize,
) -> i64 {
    if isr_size < min_isr {
        return current_hw;
    }
    let min = isr_follower_leos
        .iter()
        .copied()
        .fold(leader_leo_acked, i64::min);
    current_hw.max(min)
}

/// A follower's high watermark after a fetch response: the leader's HW clamped to
/// `[local_log_start, local_leo]` (Kafka `UnifiedLog.maybeUpdateHighWatermark` from the
/// replica fetcher). It trails the leader by one fetch. Unlike the leader's HW it may move
/// back (a new leader's HW can trail the old one's); consumers never read from followers.
///
/// Ordering rule (KAFKA-14704): apply it only **after** the response's `DivergingEpoch` was
/// handled and any truncation done, and after the response's records were appended. Applied
/// before truncation, the leader's HW would be clamped against the follower's *divergent*
/// LEO and briefly mark uncommitted, soon-truncated records as committed — a crash at that
/// moment checkpoints a HW over records that the leader never had.
pub(crate) fn follower_high_watermark(leader_hw: i64, local_log_start: i64, local_leo: i64) -> i64 {
    // `clamp` panics if min > max; a log always has start <= LEO, but keep this total.
    leader_hw
        .max(local_log_start)
        .min(local_leo.max(local_log_start))
}

/// Where an acks=all produce stands (Kafka `checkEnoughReplicasReachOffset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckCheck {
    /// The HW covers the batch and the ISR is large enough: answer success.
    Done,
    /// The HW does not cover the batch yet: keep waiting (until `timeout_ms`, then
    /// `REQUEST_TIMED_OUT`).
    Wait,
    /// The HW covers the batch but the ISR shrank below `min.insync.replicas` while the
    /// request waited: `NOT_ENOUGH_REPLICAS_AFTER_APPEND` (the records stay in the log).
    NotEnoughReplicasAfterAppend,
}

/// Checks an acks=all produce waiting for `required_offset` (the LEO just after its last
/// batch) against the current HW. `isr_size` is the size of the ISR the acks count — Kafka
/// uses the maximal ISR here — and `min_isr` is `min.insync.replicas`.
///
/// With the HW frozen under min ISR ([`leader_high_watermark`]), a request whose batch the HW
/// did not reach before the shrink keeps waiting and times out unless the ISR grows back;
/// `NOT_ENOUGH_REPLICAS_AFTER_APPEND` answers the ones the HW reached.
pub(crate) fn check_acks_all(
    required_offset: i64,
    hw: i64,
    isr_size: usize,
    min_isr: usize,
) -> AckCheck {
    if hw < required_offset {
        AckCheck::Wait
    } else if isr_size < min_isr {
        AckCheck::NotEnoughReplicasAfterAppend
    } else {
        AckCheck::Done
    }
}

/// Whether an acks=all produce may be appended: the committed ISR (leader included) has at
/// least `min.insync.replicas` members. If not, refuse before appending with
/// `NOT_ENOUGH_REPLICAS` (Kafka `appendRecordsToLeader`). acks=0/1 do not ask.
pub(crate) fn may_append_acks_all(isr_size: usize, min_isr: usize) -> bool {
    isr_size >= min_isr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_hw_table() {
        // (current, leader, followers, isr size, min isr, expected)
        type Row = (i64, i64, &'static [i64], usize, usize, i64);
        let table: &[Row] = &[
            (0, 10, &[], 1, 1, 10),       // single replica
            (0, 10, &[7, 12], 3, 2, 7),   // min over ISR
            (8, 10, &[7], 2, 2, 8),       // never backwards
            (0, 4, &[9, 9], 3, 2, 4),     // the leader's durable offset bounds it
            (5, 20, &[15], 1, 2, 5),      // frozen under min ISR
            (5, 20, &[15, 18], 2, 3, 5),  // frozen: committed ISR 2 < 3
            (5, 20, &[15, 18], 3, 3, 15), // unfrozen
            (5, 20, &[-1, 18], 3, 2, 5),  // unknown follower LEO holds it
            (3, 3, &[3, 3], 3, 3, 3),     // nothing new
            (0, 0, &[], 0, 0, 0),         // degenerate
            (100, 50, &[40], 2, 1, 100),  // leader truncated? still never backwards
            (0, i64::MAX, &[i64::MAX], 2, 2, i64::MAX),
        ];
        for &(current, leader, followers, isr, min_isr, want) in table {
            assert_eq!(
                leader_high_watermark(current, leader, followers, isr, min_isr),
                want,
                "{current} {leader} {followers:?} isr {isr} min {min_isr}"
            );
        }
    }

    #[test]
    fn follower_hw_table() {
        // (leader hw, log start, leo, expected)
        let table = [
            (50, 0, 100, 50),
            (150, 0, 100, 100), // follower behind the leader's HW
            (5, 10, 100, 10),   // below log start
            (0, 0, 0, 0),
            (100, 0, 100, 100),
            (-1, 0, 10, 0),   // leader HW unknown
            (7, 20, 20, 20),  // empty log started at 20
            (30, 20, 10, 20), // inconsistent input: still total, never below start
        ];
        for (hw, start, leo, want) in table {
            assert_eq!(
                follower_high_watermark(hw, start, leo),
                want,
                "{hw} {start} {leo}"
            );
        }
    }

    #[test]
    fn acks_all_table() {
        use AckCheck::*;
        // (required, hw, isr, min isr, expected)
        let table = [
            (10, 9, 3, 2, Wait),
            (10, 10, 3, 2, Done),
            (10, 11, 2, 2, Done),
            (10, 10, 1, 2, NotEnoughReplicasAfterAppend),
            (10, 9, 1, 2, Wait), // frozen HW: waits (times out) rather than fails
            (0, 0, 1, 1, Done),
            (10, 50, 0, 1, NotEnoughReplicasAfterAppend),
        ];
        for (required, hw, isr, min_isr, want) in table {
            assert_eq!(
                check_acks_all(required, hw, isr, min_isr),
                want,
                "{required} {hw} {isr} {min_isr}"
            );
        }
    }

    #[test]
    fn may_append_table() {
        let table = [
            (3, 2, true),
            (2, 2, true),
            (1, 2, false),
            (1, 1, true),
            (0, 1, false),
            (5, 0, true),
        ];
        for (isr, min_isr, want) in table {
            assert_eq!(may_append_acks_all(isr, min_isr), want, "{isr} {min_isr}");
        }
    }

    /// Property (seeded random cases; `proptest` is not a dev-dependency of this crate): the
    /// leader's HW never decreases, never exceeds the leader's acked offset unless it already
    /// was above it, never moves while ISR < min ISR, and when it moves it equals the
    /// minimum over the ISR.
    #[test]
    fn leader_hw_is_monotonic_random() {
        let mut rng = crate::replication::sim::Rng::new(0x6b65_656c);
        for case in 0..2_000 {
            let mut hw = rng.below(50) as i64;
            let mut leos: Vec<i64> = (0..rng.below(4))
                .map(|_| rng.below(60) as i64 - 1)
                .collect();
            let mut leader = rng.below(60) as i64;
            for step in 0..30 {
                // Offsets mostly grow, sometimes drop (a follower truncated and re-fetches).
                leader += rng.below(5) as i64;
                for l in leos.iter_mut() {
                    *l = if rng.below(10) == 0 {
                        rng.below(60) as i64 - 1
                    } else {
                        (*l + rng.below(6) as i64).min(leader)
                    };
                }
                let isr_size = leos.len() + 1 - rng.below(2) as usize;
                let min_isr = 1 + rng.below(3) as usize;
                let new = leader_high_watermark(hw, leader, &leos, isr_size, min_isr);
                let min = leos.iter().copied().fold(leader, i64::min);
                let ctx = format!("case {case} step {step}: hw {hw} leader {leader} {leos:?} isr {isr_size} min {min_isr}");
                assert!(new >= hw, "{ctx}");
                if isr_size < min_isr {
                    assert_eq!(new, hw, "{ctx}");
                } else if new != hw {
                    assert_eq!(new, min, "{ctx}");
                }
                assert!(new == hw || new <= leader, "{ctx}");
                hw = new;
            }
        }
    }
}
