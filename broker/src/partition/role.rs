//! A replica's role: leader (with its view of each follower) or follower, and the
//! leader-side decisions built on `replication`'s rules: the high watermark, ISR shrink
//! and expansion proposals. Plain data under the replica's mutex; no I/O.

use crate::controller::PartitionRecord;
use crate::replication::{
    expand_candidates, hw_follower_leos, leader_high_watermark, maximal_isr, shrink_candidates,
    FollowerState, IsrChangeGate, IsrChangeResult,
};

/// The clock and the lag limit that decide whether a follower is in sync.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) now_ms: u64,
    /// `replica.lag.time.max.ms`
    pub(crate) lag_time_max_ms: u64,
}

#[derive(Debug)]
pub(crate) struct Role {
    /// This broker.
    pub(crate) me: i32,
    pub(crate) leader: i32,
    pub(crate) leader_epoch: i32,
    pub(crate) partition_epoch: i32,
    pub(crate) replicas: Vec<i32>,
    pub(crate) isr: Vec<i32>,
    followers: Vec<FollowerState>,
    gate: IsrChangeGate,
    /// The log end offset when this leader's epoch began.
    epoch_start_offset: i64,
    /// When this broker became leader (wall clock ms), 0 if it is not.
    pub(crate) leader_since_ms: u64,
    /// Replicas whose brokers the controller has fenced: they neither hold the HW back
    /// (outside the ISR) nor join the ISR.
    pub(crate) fenced: Vec<i32>,
}

/// What a role change asks of the replica's owner.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    /// Same leader and epoch: only the ISR or partition epoch moved.
    IsrOnly,
    BecameLeader,
    BecameFollower,
}

impl Role {
    /// A replica not yet told its role by the metadata: follower of nobody.
    pub(crate) fn unassigned(me: i32) -> Self {
        Self {
            me,
            leader: -1,
            leader_epoch: -1,
            partition_epoch: 0,
            replicas: Vec::new(),
            isr: Vec::new(),
            followers: Vec::new(),
            gate: IsrChangeGate::new(),
            epoch_start_offset: 0,
            leader_since_ms: 0,
            fenced: Vec::new(),
        }
    }

    /// Whether `id` may count toward the HW from outside the ISR, or join the ISR.
    pub(crate) fn is_eligible(&self, id: i32) -> bool {
        !self.fenced.contains(&id)
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.leader == self.me
    }

    /// Applies a partition record from the metadata image.
    pub(crate) fn apply(&mut self, record: &PartitionRecord, leo: i64, now_ms: u64) -> Transition {
        let same_term = record.leader == self.leader && record.leader_epoch == self.leader_epoch;
        self.partition_epoch = record.partition_epoch;
        self.replicas = record.replicas.clone();
        self.isr = record.isr.clone();
        // Any committed ISR ends the change in flight (ours or a competing one).
        self.gate = IsrChangeGate::new();
        if same_term {
            return Transition::IsrOnly;
        }
        self.leader = record.leader;
        self.leader_epoch = record.leader_epoch;
        if self.is_leader() {
            self.epoch_start_offset = leo;
            self.leader_since_ms = now_ms;
            self.followers = self
                .replicas
                .iter()
                .filter(|&&id| id != self.me)
                .map(|&id| FollowerState::new(id, now_ms, self.isr.contains(&id)))
                .collect();
            Transition::BecameLeader
        } else {
            self.followers.clear();
            self.leader_since_ms = 0;
            Transition::BecameFollower
        }
    }

    /// The log end offset when this leader's epoch began (0 for a follower).
    pub(crate) fn epoch_start_offset(&self) -> i64 {
        if self.is_leader() {
            self.epoch_start_offset
        } else {
            0
        }
    }

    pub(crate) fn follower_mut(&mut self, id: i32) -> Option<&mut FollowerState> {
        self.followers.iter_mut().find(|f| f.broker_id() == id)
    }

    pub(crate) fn followers(&self) -> &[FollowerState] {
        &self.followers
    }

    /// The leader's high watermark: min over its acknowledged end and the (maximal) ISR's
    /// follower LEOs; frozen below `min_isr`; never backwards.
    pub(crate) fn high_watermark(
        &self,
        current: i64,
        leader_acked: i64,
        leader_leo: i64,
        min_isr: usize,
        t: Timing,
        is_eligible: impl Fn(i32) -> bool,
    ) -> i64 {
        if !self.is_leader() {
            return current;
        }
        let isr = maximal_isr(&self.isr, self.gate.pending());
        let leos = hw_follower_leos(
            &isr,
            self.me,
            &self.followers,
            leader_leo,
            t.now_ms,
            t.lag_time_max_ms,
            is_eligible,
        );
        leader_high_watermark(current, leader_acked, &leos, self.isr.len(), min_isr)
    }

    /// An ISR to propose to the controller, if a change is due and none is in flight:
    /// out-of-sync members removed, caught-up replicas added.
    pub(crate) fn propose_isr(
        &mut self,
        hw: i64,
        leader_leo: i64,
        t: Timing,
        is_eligible: impl Fn(i32) -> bool,
    ) -> Option<Vec<i32>> {
        if !self.is_leader() || self.gate.is_in_flight() {
            return None;
        }
        let out = shrink_candidates(
            &self.isr,
            self.me,
            &self.followers,
            leader_leo,
            t.now_ms,
            t.lag_time_max_ms,
        );
        let add = expand_candidates(
            &self.isr,
            &self.replicas,
            &self.followers,
            hw,
            self.epoch_start_offset,
            is_eligible,
        );
        if out.is_empty() && add.is_empty() {
            return None;
        }
        let proposed: Vec<i32> = self
            .replicas
            .iter()
            .copied()
            .filter(|id| (self.isr.contains(id) && !out.contains(id)) || add.contains(id))
            .collect();
        self.gate.try_begin(&self.isr, &proposed, t.now_ms)
    }

    /// The controller's answer to a proposal (or its failure).
    pub(crate) fn isr_change_done(&mut self, result: IsrChangeResult) {
        if let Some(isr) = self.gate.complete(result) {
            self.isr = isr;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(leader: i32, epoch: i32, isr: &[i32]) -> PartitionRecord {
        PartitionRecord::test_record(leader, epoch, isr)
    }

    #[test]
    fn transitions_follow_the_partition_records() {
        let mut r = Role::unassigned(1);
        let table: &[(PartitionRecord, Transition, bool)] = &[
            (record(1, 0, &[1, 2, 3]), Transition::BecameLeader, true),
            (record(1, 0, &[1, 2]), Transition::IsrOnly, true),
            (record(2, 1, &[2, 3]), Transition::BecameFollower, false),
            (record(2, 1, &[2, 3, 1]), Transition::IsrOnly, false),
            (record(1, 2, &[1, 2, 3]), Transition::BecameLeader, true),
        ];
        for (rec, want, leader) in table {
            assert_eq!(&r.apply(rec, 10, 0), want, "{rec:?}");
            assert_eq!(r.is_leader(), *leader);
            assert_eq!(r.isr, rec.isr);
        }
        assert_eq!(r.followers().len(), 2);
    }

    #[test]
    fn hw_waits_for_the_isr_and_freezes_below_min_isr() {
        let mut r = Role::unassigned(1);
        r.apply(&record(1, 0, &[1, 2, 3]), 0, 0);
        let t = Timing {
            now_ms: 1,
            lag_time_max_ms: 30_000,
        };
        let hw = |r: &Role, min_isr| r.high_watermark(0, 10, 10, min_isr, t, |_| true);
        assert_eq!(hw(&r, 1), 0, "followers have not fetched yet");
        r.follower_mut(2).unwrap().on_fetch(10, 10, 1);
        r.follower_mut(3).unwrap().on_fetch(7, 10, 1);
        assert_eq!(hw(&r, 1), 7);
        r.isr = vec![1];
        assert_eq!(hw(&r, 2), 0, "ISR below min ISR: frozen");
    }

    #[test]
    fn a_fenced_broker_outside_the_isr_does_not_hold_the_hw_back() {
        let mut r = Role::unassigned(1);
        r.apply(&record(1, 0, &[1, 2]), 0, 0);
        r.follower_mut(2).unwrap().on_fetch(10, 10, 1);
        // Broker 3 is out of the ISR but fetched recently: Kafka counts it while eligible.
        r.follower_mut(3).unwrap().on_fetch(5, 5, 1);
        let t = Timing {
            now_ms: 2,
            lag_time_max_ms: 30_000,
        };
        let hw = |r: &Role| r.high_watermark(0, 10, 10, 1, t, |id| r.is_eligible(id));
        assert_eq!(hw(&r), 5);
        r.fenced = vec![3];
        assert_eq!(hw(&r), 10);
    }

    #[test]
    fn lagging_followers_are_proposed_out_and_caught_up_ones_in() {
        let at = |now_ms| Timing {
            now_ms,
            lag_time_max_ms: 1_000,
        };
        let mut r = Role::unassigned(1);
        r.apply(&record(1, 0, &[1, 2, 3]), 0, 0);
        r.follower_mut(2).unwrap().on_fetch(10, 10, 100);
        // Follower 3 never fetched: out after the lag time.
        assert_eq!(r.propose_isr(10, 10, at(5_000), |_| true), Some(vec![1, 2]));
        // One change in flight at a time.
        assert_eq!(r.propose_isr(10, 10, at(6_000), |_| true), None);
        r.isr_change_done(IsrChangeResult::Committed { isr: vec![1, 2] });
        r.follower_mut(3).unwrap().on_fetch(10, 10, 7_000);
        assert_eq!(
            r.propose_isr(10, 10, at(7_000), |_| true),
            Some(vec![1, 2, 3])
        );
    }
}
