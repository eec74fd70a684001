//! ISR membership on the leader: who is out of sync, who may join, and the one-change-in-flight
//! rule for AlterPartition.
//!
//! Kafka references: `Partition.getOutOfSyncReplicas`, `Partition.isFollowerInSync`,
//! `Partition.canAddReplicaToIsr`, `Partition.maybeIncrementLeaderHW` and the
//! `PendingExpandIsr` / `PendingShrinkIsr` partition states (KIP-497).
//!
//! The leader never changes the ISR itself: it proposes a new ISR to the controller with
//! AlterPartition, a compare-and-set on (leader epoch, partition epoch), and adopts the ISR the
//! controller answers with. While a change is in flight:
//! - no other change is proposed ([`IsrChangeGate`]);
//! - the HW and acks=all count the *maximal* ISR ([`maximal_isr`]): a joining replica already
//!   counts, a leaving one still counts, so the HW is never computed over an ISR that the
//!   controller might not accept;
//! - the min-ISR checks (append refusal, HW freeze) use the committed ISR size.

use super::follower_state::{FollowerState, UNKNOWN_OFFSET};

/// ISR members that are out of sync and should be removed: every member except the leader
/// whose follower state says it has not been caught up within `lag_time_max_ms`
/// ([`FollowerState::is_caught_up`]). A member without a follower state is out of sync (as
/// Kafka). In `isr` order; never contains `leader_id`.
///
/// Call it only when no ISR change is in flight (Kafka returns nothing while one is), e.g.
/// every `replica.lag.time.max.ms / 2`.
pub(crate) fn shrink_candidates(
    isr: &[i32],
    leader_id: i32,
    followers: &[FollowerState],
    leader_leo: i64,
    now_ms: u64,
    lag_time_max_ms: u64,
) -> Vec<i32> {
    isr.iter()
        .copied()
        .filter(|&id| id != leader_id)
        .filter(|&id| {
            find(followers, id).is_none_or(|f| !f.is_caught_up(leader_leo, now_ms, lag_time_max_ms))
        })
        .collect()
}

/// Assigned replicas, not in the ISR, that may join it: a follower state exists and its LEO
/// is at or past both the leader's HW and `leader_epoch_start_offset` (the leader's LEO when
/// it started its current epoch, so the follower has fetched from *this* leadership and has
/// truncated against it), and `is_eligible(id)` says the broker may join (registered, not
/// fenced, not shutting down, broker epoch current: the controller's metadata). In `replicas`
/// order. Kafka `isFollowerInSync` + `canAddReplicaToIsr`.
///
/// Time plays no part: reaching the HW is what makes a follower in sync again. Call it only
/// when no ISR change is in flight.
pub(crate) fn expand_candidates(
    isr: &[i32],
    replicas: &[i32],
    followers: &[FollowerState],
    hw: i64,
    leader_epoch_start_offset: i64,
    is_eligible: impl Fn(i32) -> bool,
) -> Vec<i32> {
    replicas
        .iter()
        .copied()
        .filter(|id| !isr.contains(id))
        .filter(|&id| {
            find(followers, id).is_some_and(|f| {
                f.leo() != UNKNOWN_OFFSET && f.leo() >= hw && f.leo() >= leader_epoch_start_offset
            })
        })
        .filter(|&id| is_eligible(id))
        .collect()
}

/// The followers whose LEOs bound the leader's HW (Kafka `maybeIncrementLeaderHW`): every
/// member of `maximal_isr` other than the leader, plus any other follower that is caught up and
/// eligible (it is about to join; waiting for it avoids a HW that the joining replica does not
/// have). A maximal-ISR member with no follower state contributes [`UNKNOWN_OFFSET`], which
/// holds the HW where it is. Feed the result to
/// [`leader_high_watermark`](super::leader_high_watermark).
pub(crate) fn hw_follower_leos(
    maximal_isr: &[i32],
    leader_id: i32,
    followers: &[FollowerState],
    leader_leo: i64,
    now_ms: u64,
    lag_time_max_ms: u64,
    is_eligible: impl Fn(i32) -> bool,
) -> Vec<i64> {
    let mut leos: Vec<i64> = maximal_isr
        .iter()
        .filter(|&&id| id != leader_id)
        .map(|&id| find(followers, id).map_or(UNKNOWN_OFFSET, FollowerState::leo))
        .collect();
    leos.extend(
        followers
            .iter()
            .filter(|f| f.broker_id() != leader_id && !maximal_isr.contains(&f.broker_id()))
            .filter(|f| {
                f.is_caught_up(leader_leo, now_ms, lag_time_max_ms) && is_eligible(f.broker_id())
            })
            .map(FollowerState::leo),
    );
    leos
}

/// The ISR that the HW and acks=all count (KIP-497): the committed ISR plus the members a
/// pending change adds. While an expansion is in flight the joining replica already counts;
/// while a shrink is in flight the leaving replica still counts (the union is the committed,
/// larger ISR). Committed order first, then additions in proposal order.
pub(crate) fn maximal_isr(committed_isr: &[i32], pending: Option<&PendingIsrChange>) -> Vec<i32> {
    let mut out = committed_isr.to_vec();
    if let Some(p) = pending {
        for &id in &p.new_isr {
            if !out.contains(&id) {
                out.push(id);
            }
        }
    }
    out
}

/// An AlterPartition sent to the controller and not answered yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PendingIsrChange {
    /// The proposed ISR, sorted.
    pub(crate) new_isr: Vec<i32>,
    /// When it was sent, for a "stuck AlterPartition" metric or log.
    pub(crate) sent_at_ms: u64,
}

/// The controller's answer to an AlterPartition, as the I/O layer reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IsrChangeResult {
    /// Accepted: the ISR the controller now holds (adopt it, with the new partition epoch).
    Committed { isr: Vec<i32> },
    /// Rejected (`FENCED_LEADER_EPOCH`, `INVALID_UPDATE_VERSION`, `INELIGIBLE_REPLICA`, ...),
    /// timed out or failed: the committed ISR stays; the next check may propose again once
    /// fresh metadata arrived.
    Failed,
}

/// One AlterPartition in flight per partition (Kafka's `PartitionState.isInflight`).
///
/// Create a new gate (or call [`IsrChangeGate::abandon`]) whenever this broker becomes leader
/// or its leader epoch changes; answers to requests of an older leadership must be dropped by
/// the caller (compare the leader epoch it sent). The I/O layer must call
/// [`IsrChangeGate::complete`] exactly once per request it sent, including on timeout, or the
/// partition never changes its ISR again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct IsrChangeGate {
    pending: Option<PendingIsrChange>,
}

impl IsrChangeGate {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn pending(&self) -> Option<&PendingIsrChange> {
        self.pending.as_ref()
    }

    pub(crate) fn is_in_flight(&self) -> bool {
        self.pending.is_some()
    }

    /// Proposes `proposed_isr`. Returns the ISR to send (sorted, deduplicated) and records it
    /// as pending — or `None`, sending nothing, when a change is already in flight, when the
    /// proposal is empty, or when it equals `committed_isr` as a set.
    pub(crate) fn try_begin(
        &mut self,
        committed_isr: &[i32],
        proposed_isr: &[i32],
        now_ms: u64,
    ) -> Option<Vec<i32>> {
        if self.pending.is_some() || proposed_isr.is_empty() {
            return None;
        }
        let new_isr = sorted_set(proposed_isr);
        if new_isr == sorted_set(committed_isr) {
            return None;
        }
        self.pending = Some(PendingIsrChange {
            new_isr: new_isr.clone(),
            sent_at_ms: now_ms,
        });
        Some(new_isr)
    }

    /// The in-flight change finished. Returns the ISR to adopt as committed (`Committed`), or
    /// `None` (`Failed`: keep the current committed ISR). Either way nothing is in flight
    /// afterwards. A completion with nothing in flight is ignored and returns `None`.
    pub(crate) fn complete(&mut self, result: IsrChangeResult) -> Option<Vec<i32>> {
        self.pending.take()?;
        match result {
            IsrChangeResult::Committed { isr } => Some(isr),
            IsrChangeResult::Failed => None,
        }
    }
}

fn find(followers: &[FollowerState], id: i32) -> Option<&FollowerState> {
    followers.iter().find(|f| f.broker_id() == id)
}

fn sorted_set(ids: &[i32]) -> Vec<i32> {
    let mut v = ids.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAG: u64 = 30_000;

    /// A follower of `id` whose LEO is `leo` and who was last caught up at `caught_up_ms`
    /// (`None`: never fetched since the leadership began, outside the ISR).
    fn follower(id: i32, leo: Option<i64>, caught_up_ms: u64) -> FollowerState {
        let mut f = FollowerState::new(id, caught_up_ms, true);
        if let Some(leo) = leo {
            // Behind the leader and behind the previous fetch: keeps the reset time.
            f.on_fetch(leo, i64::MAX, caught_up_ms);
        }
        f
    }

    #[test]
    fn shrink_table() {
        // Leader 1, leader LEO 100, now 100_000.
        let now = 100_000;
        let fs = [
            follower(2, Some(100), 0),            // at the LEO: in sync however old
            follower(3, Some(90), now - LAG),     // exactly at the limit
            follower(4, Some(90), now - LAG - 1), // one ms past
            follower(5, None, now - 10),          // reset grace period
            follower(6, Some(0), 0),
        ];
        // (isr, expected)
        let table: &[(&[i32], &[i32])] = &[
            (&[1], &[]),
            (&[1, 2, 3], &[]),
            (&[1, 2, 3, 4], &[4]),
            (&[4, 1, 6], &[4, 6]),
            (&[1, 5], &[]),
            (&[1, 7], &[7]), // no follower state: out of sync
            (&[], &[]),
        ];
        for &(isr, want) in table {
            assert_eq!(
                shrink_candidates(isr, 1, &fs, 100, now, LAG),
                want,
                "isr {isr:?}"
            );
        }
        // The leader is never a candidate, even with a stale "follower" entry for itself.
        let me = [follower(1, Some(0), 0)];
        assert!(shrink_candidates(&[1], 1, &me, 100, now, LAG).is_empty());
    }

    #[test]
    fn expand_table() {
        // HW 50, leader epoch started at 40.
        let fs = [
            follower(2, Some(50), 0),
            follower(3, Some(49), 0), // below HW
            follower(4, Some(60), 0),
            follower(5, None, 0), // has not fetched from this leader yet
            follower(6, Some(45), 0),
        ];
        let all = |_: i32| true;
        // (isr, replicas, hw, epoch start, fenced, expected)
        type Ids = &'static [i32];
        let table: &[(Ids, Ids, i64, i64, Ids, Ids)] = &[
            (&[1], &[1, 2, 3, 4, 5], 50, 40, &[], &[2, 4]),
            (&[1, 2], &[1, 2, 3, 4], 50, 40, &[], &[4]), // already in ISR
            (&[1], &[1, 2, 4], 50, 55, &[], &[4]),       // 2 not past the epoch start
            (&[1], &[1, 2, 4], 50, 40, &[4], &[2]),      // 4 fenced
            (&[1], &[1, 6], 45, 40, &[], &[6]),          // equality counts
            (&[1], &[1, 7], 0, 0, &[], &[]),             // no follower state
            (&[1], &[1, 5], -1, -1, &[], &[]),           // unknown LEO never joins
            (&[1], &[4, 1, 2], 50, 40, &[], &[4, 2]),    // replicas order
        ];
        for &(isr, replicas, hw, start, fenced, want) in table {
            let eligible = |id: i32| !fenced.contains(&id);
            assert_eq!(
                expand_candidates(isr, replicas, &fs, hw, start, eligible),
                want,
                "isr {isr:?} replicas {replicas:?} hw {hw} start {start}"
            );
        }
        assert!(expand_candidates(&[1, 2], &[1, 2], &fs, 0, 0, all).is_empty());
    }

    #[test]
    fn hw_participants_table() {
        let now = 100_000;
        let fs = [
            follower(2, Some(80), now),           // ISR, caught up
            follower(3, Some(70), 0),             // ISR, lagging: still counts until removed
            follower(4, Some(90), now),           // not in ISR, caught up: waited for
            follower(5, Some(10), 0),             // not in ISR, lagging: ignored
            follower(6, Some(95), now - LAG - 1), // not in ISR, just past the limit
        ];
        let all = |_: i32| true;
        // (maximal isr, fenced, expected LEOs)
        let table: &[(&[i32], &[i32], &[i64])] = &[
            (&[1], &[], &[80, 90]),                       // 2 and 4 caught up: waited for
            (&[1, 2, 3], &[], &[80, 70, 90]),             // 3 lags but is still a member
            (&[1, 2], &[4], &[80]),                       // 4 ineligible (fenced)
            (&[1, 2, 9], &[], &[80, UNKNOWN_OFFSET, 90]), // member without state holds it
            (&[1, 5], &[2, 3, 4], &[10]),
            (&[1, 2, 3, 4, 5, 6], &[], &[80, 70, 90, 10, 95]),
        ];
        for &(isr, fenced, want) in table {
            let eligible = |id: i32| !fenced.contains(&id);
            let mut got = hw_follower_leos(isr, 1, &fs, 100, now, LAG, eligible);
            let mut want = want.to_vec();
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want, "isr {isr:?} fenced {fenced:?}");
        }
        // A lagging follower outside the ISR is caught up only by reaching the LEO.
        let at_leo = [follower(5, Some(100), 0)];
        assert_eq!(
            hw_follower_leos(&[1], 1, &at_leo, 100, now, LAG, all),
            vec![100]
        );
    }

    #[test]
    fn maximal_isr_table() {
        let p = |new_isr: &[i32]| PendingIsrChange {
            new_isr: new_isr.to_vec(),
            sent_at_ms: 0,
        };
        // (committed, pending, expected)
        let table: &[(&[i32], Option<PendingIsrChange>, &[i32])] = &[
            (&[1, 2], None, &[1, 2]),
            (&[1, 2], Some(p(&[1, 2, 3])), &[1, 2, 3]), // expand: union
            (&[1, 2, 3], Some(p(&[1, 2])), &[1, 2, 3]), // shrink: still the committed
            (&[1, 2, 3], Some(p(&[1])), &[1, 2, 3]),
            (&[1, 2], Some(p(&[1, 3])), &[1, 2, 3]), // mixed (never sent): union
            (&[1], Some(p(&[1])), &[1]),
            (&[], None, &[]),
        ];
        for (committed, pending, want) in table {
            assert_eq!(
                maximal_isr(committed, pending.as_ref()),
                *want,
                "{committed:?} {pending:?}"
            );
        }
    }

    #[test]
    fn gate_allows_one_change_in_flight() {
        let mut g = IsrChangeGate::new();
        assert!(!g.is_in_flight());
        // No-op proposals send nothing.
        assert_eq!(g.try_begin(&[1, 2], &[2, 1], 10), None);
        assert_eq!(g.try_begin(&[1, 2], &[2, 1, 2], 10), None);
        assert_eq!(g.try_begin(&[1, 2], &[], 10), None);
        // A shrink goes out; nothing else while it is in flight.
        assert_eq!(g.try_begin(&[1, 2, 3], &[3, 1], 10), Some(vec![1, 3]));
        assert_eq!(
            g.pending(),
            Some(&PendingIsrChange {
                new_isr: vec![1, 3],
                sent_at_ms: 10
            })
        );
        assert_eq!(g.try_begin(&[1, 2, 3], &[1], 20), None);
        assert_eq!(g.try_begin(&[1, 2, 3], &[1, 2, 3, 4], 20), None);
        // The controller's ISR is adopted, whatever it is.
        assert_eq!(
            g.complete(IsrChangeResult::Committed { isr: vec![1, 3] }),
            Some(vec![1, 3])
        );
        assert!(!g.is_in_flight());
        // A stray second completion is ignored.
        assert_eq!(
            g.complete(IsrChangeResult::Committed { isr: vec![9] }),
            None
        );
        // Failure: nothing adopted, gate open again.
        assert_eq!(g.try_begin(&[1, 3], &[1, 2, 3], 30), Some(vec![1, 2, 3]));
        assert_eq!(g.complete(IsrChangeResult::Failed), None);
    }

    #[test]
    fn shrink_then_expand_cycle() {
        // A follower paused past the lag limit leaves; after it catches up it rejoins.
        let (leader, lag) = (1, 1_000);
        let mut committed = vec![1, 2, 3];
        let mut gate = IsrChangeGate::new();
        let mut f2 = FollowerState::new(2, 0, true);
        let mut f3 = FollowerState::new(3, 0, true);
        f2.on_fetch(100, 100, 500);
        f3.on_fetch(100, 100, 500);
        // t = 2_000: follower 3 paused since 500, leader LEO 150, follower 2 keeps up.
        f2.on_fetch(150, 150, 2_000);
        let fs = [f2.clone(), f3.clone()];
        let out = shrink_candidates(&committed, leader, &fs, 150, 2_000, lag);
        assert_eq!(out, vec![3]);
        let proposed: Vec<i32> = committed
            .iter()
            .copied()
            .filter(|id| !out.contains(id))
            .collect();
        let sent = gate.try_begin(&committed, &proposed, 2_000).unwrap();
        assert_eq!(
            maximal_isr(&committed, gate.pending()),
            vec![1, 2, 3],
            "HW still counts 3 while the shrink is in flight"
        );
        committed = gate
            .complete(IsrChangeResult::Committed { isr: sent })
            .unwrap();
        assert_eq!(committed, vec![1, 2]);
        // Follower 3 resumes and reaches the HW (150) and the epoch start (0).
        f3.on_fetch(150, 160, 3_000);
        let fs = [f2, f3];
        let join = expand_candidates(&committed, &[1, 2, 3], &fs, 150, 0, |_| true);
        assert_eq!(join, vec![3]);
        let mut proposed = committed.clone();
        proposed.extend(join);
        gate.try_begin(&committed, &proposed, 3_000).unwrap();
        assert_eq!(maximal_isr(&committed, gate.pending()), vec![1, 2, 3]);
    }
}
