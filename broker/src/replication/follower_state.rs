//! The leader's view of one follower: how far its log reaches and when it was last caught up.
//!
//! Mirrors Kafka's `Replica.scala` (`updateFetchStateOrThrow`, `resetReplicaState`,
//! `ReplicaState.isCaughtUp`). The follower's LEO is its fetch offset: a follower fetches from
//! its durable log end, so the LEO the leader sees is data the follower has on disk.

/// An offset the leader does not know yet (Kafka `UnifiedLog.UnknownOffset`).
pub(crate) const UNKNOWN_OFFSET: i64 = -1;

/// A broker epoch the follower has not told us yet.
const UNKNOWN_BROKER_EPOCH: i64 = -1;

/// The leader-side state of one follower of one partition.
///
/// Invariant: `last_caught_up_ms` never moves backwards except through [`FollowerState::reset`]
/// (a new leadership starts a new clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FollowerState {
    broker_id: i32,
    leo: i64,
    last_fetch_ms: u64,
    last_caught_up_ms: u64,
    last_fetch_leader_leo: i64,
}

impl FollowerState {
    /// The state of a follower when this broker becomes leader: LEO unknown, no fetch seen.
    /// See [`FollowerState::reset`] for `in_isr`.
    pub(crate) fn new(broker_id: i32, now_ms: u64, in_isr: bool) -> Self {
        let mut s = Self {
            broker_id,
            leo: UNKNOWN_OFFSET,
            last_fetch_ms: 0,
            last_caught_up_ms: 0,
            last_fetch_leader_leo: UNKNOWN_OFFSET,
        };
        s.reset(now_ms, in_isr);
        s
    }

    /// This broker became leader of the partition (it was not leader before): forget what
    /// the previous leadership knew.
    ///
    /// As Kafka (`resetReplicaState` with `isNewLeader = true`): LEO, last fetch and the
    /// leader LEO of the last fetch become unknown; `last_caught_up_ms` becomes `now_ms` if
    /// the follower is in the ISR (so it is not shrunk at once: it gets a full
    /// `replica.lag.time.max.ms` to fetch), else 0 (so a non-ISR follower neither holds the
    /// HW back as "caught up" nor counts as in sync before it has fetched).
    ///
    /// An ISR follower with an unknown LEO (-1) holds the HW where it is until its first
    /// fetch ([`leader_high_watermark`](super::leader_high_watermark) never goes backwards).
    pub(crate) fn reset(&mut self, now_ms: u64, in_isr: bool) {
        self.leo = UNKNOWN_OFFSET;
        self.last_fetch_ms = 0;
        self.last_fetch_leader_leo = UNKNOWN_OFFSET;
        self.last_caught_up_ms = if in_isr { now_ms } else { 0 };
    }

    /// A fetch from this follower at `fetch_offset`, answered when the leader's LEO was
    /// `leader_leo` (read it before serving the fetch, so appends racing the fetch cannot keep
    /// a follower out of sync).
    ///
    /// Kafka's two-step catch-up rule (`Replica.updateFetchStateOrThrow`):
    /// - `fetch_offset >= leader_leo`: caught up now;
    /// - else `fetch_offset >=` the leader LEO at the *previous* fetch: it was caught up at the
    ///   time of the previous fetch (a steady stream of small produces never makes a keeping-up
    ///   follower look behind);
    /// - else unchanged.
    ///
    /// `last_caught_up_ms` only moves forward, and the remembered leader LEO is the maximum
    /// seen (both as Kafka).
    pub(crate) fn on_fetch(&mut self, fetch_offset: i64, leader_leo: i64, now_ms: u64) {
        let caught_up_at = if fetch_offset >= leader_leo {
            Some(now_ms)
        } else if fetch_offset >= self.last_fetch_leader_leo {
            Some(self.last_fetch_ms)
        } else {
            None
        };
        if let Some(t) = caught_up_at {
            self.last_caught_up_ms = self.last_caught_up_ms.max(t);
        }
        self.leo = fetch_offset;
        self.last_fetch_leader_leo = self.last_fetch_leader_leo.max(leader_leo);
        self.last_fetch_ms = now_ms;
    }

    /// In sync: at the leader's LEO, or caught up within the last `lag_time_max_ms`
    /// (`replica.lag.time.max.ms`). Kafka `ReplicaState.isCaughtUp`.
    pub(crate) fn is_caught_up(&self, leader_leo: i64, now_ms: u64, lag_time_max_ms: u64) -> bool {
        self.leo == leader_leo || now_ms.saturating_sub(self.last_caught_up_ms) <= lag_time_max_ms
    }

    pub(crate) fn broker_id(&self) -> i32 {
        self.broker_id
    }

    /// The follower's log end offset (its last fetch offset), [`UNKNOWN_OFFSET`] before any.
    pub(crate) fn leo(&self) -> i64 {
        self.leo
    }

    pub(crate) fn last_fetch_ms(&self) -> u64 {
        self.last_fetch_ms
    }

    /// For the "seconds since caught up" metric and the ISR shrink rule.
    pub(crate) fn last_caught_up_ms(&self) -> u64 {
        self.last_caught_up_ms
    }

    #[cfg(test)]
    fn last_fetch_leader_leo(&self) -> i64 {
        self.last_fetch_leader_leo
    }
}

/// A follower fetch carrying `fetch_broker_epoch` is stale — answer `NOT_LEADER_OR_FOLLOWER`
/// and do not update the follower's state — when the controller has registered a newer epoch
/// for that broker (it restarted: the fetch comes from a zombie). `-1` means "not sent" (Fetch
/// before v15) and is accepted, as Kafka (`Replica.updateFetchStateOrThrow`, KIP-903).
pub(crate) fn is_stale_broker_epoch(
    fetch_broker_epoch: i64,
    registered_broker_epoch: Option<i64>,
) -> bool {
    fetch_broker_epoch != UNKNOWN_BROKER_EPOCH
        && registered_broker_epoch.is_some_and(|r| r > fetch_broker_epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fetch: (fetch offset, leader LEO, now).
    type Fetch = (i64, i64, u64);

    #[test]
    fn two_step_catch_up_rule() {
        // (initial in_isr, reset at, fetches, expected last_caught_up_ms, expected leo)
        let table: &[(bool, u64, &[Fetch], u64, i64)] = &[
            // At the leader's LEO: caught up now.
            (false, 0, &[(10, 10, 100)], 100, 10),
            // Past the leader LEO (cannot happen, but counts as caught up).
            (false, 0, &[(11, 10, 100)], 100, 11),
            // Behind on the first fetch after becoming leader: the previous-fetch step sees
            // "unknown" (-1) and time 0, so the clock keeps its reset value.
            (true, 50, &[(5, 10, 100)], 50, 5),
            (false, 50, &[(5, 10, 100)], 0, 5),
            // Behind now, but reached the LEO of the previous fetch: caught up at that
            // previous fetch's time.
            (false, 0, &[(5, 10, 100), (10, 12, 200)], 100, 10),
            // Behind both: unchanged.
            (false, 0, &[(5, 10, 100), (8, 12, 200)], 0, 8),
            // Steady small produces: always one fetch behind, still caught up each time.
            (
                false,
                0,
                &[
                    (0, 0, 10),
                    (0, 5, 20),
                    (5, 9, 30),
                    (9, 14, 40),
                    (14, 20, 50),
                ],
                40,
                14,
            ),
            // Never backwards: a later fetch that only reaches the older LEO keeps "now".
            (false, 0, &[(10, 10, 300), (10, 20, 310)], 300, 10),
            // Follower LEO moved back (it truncated): recorded as sent.
            (false, 0, &[(10, 10, 100), (7, 10, 150)], 100, 7),
        ];
        for (i, &(in_isr, reset_at, fetches, want_caught_up, want_leo)) in table.iter().enumerate()
        {
            let mut f = FollowerState::new(2, reset_at, in_isr);
            for &(off, leader_leo, now) in fetches {
                f.on_fetch(off, leader_leo, now);
            }
            assert_eq!(f.last_caught_up_ms(), want_caught_up, "row {i}");
            assert_eq!(f.leo(), want_leo, "row {i}");
            assert_eq!(f.last_fetch_ms(), fetches.last().unwrap().2, "row {i}");
        }
    }

    #[test]
    fn remembered_leader_leo_is_the_maximum() {
        let mut f = FollowerState::new(2, 0, true);
        f.on_fetch(0, 20, 10);
        f.on_fetch(0, 15, 20); // leader truncated? never lower the bar
        assert_eq!(f.last_fetch_leader_leo(), 20);
        f.on_fetch(15, 30, 30);
        assert_eq!(f.last_caught_up_ms(), 0, "15 < 20: not caught up at 20");
    }

    #[test]
    fn is_caught_up_table() {
        // (leo, last caught up, leader LEO, now, lag max, expected)
        let table: &[(i64, u64, i64, u64, u64, bool)] = &[
            (10, 0, 10, 1_000_000, 30_000, true), // at the LEO: always
            (9, 0, 10, 30_000, 30_000, true),     // exactly at the limit
            (9, 0, 10, 30_001, 30_000, false),    // one ms past
            (9, 1_000, 10, 31_000, 30_000, true),
            (UNKNOWN_OFFSET, 500, 0, 600, 100, true), // reset in ISR: grace period
            (UNKNOWN_OFFSET, 500, 0, 601, 100, false),
            (UNKNOWN_OFFSET, 0, UNKNOWN_OFFSET, 999, 1, true), // both unknown: equal
            (5, 900, 10, 100, 30, true), // clock behind last caught up: saturates to 0
        ];
        for (i, &(leo, caught_up, leader_leo, now, max, want)) in table.iter().enumerate() {
            let f = FollowerState {
                broker_id: 1,
                leo,
                last_fetch_ms: 0,
                last_caught_up_ms: caught_up,
                last_fetch_leader_leo: UNKNOWN_OFFSET,
            };
            assert_eq!(f.is_caught_up(leader_leo, now, max), want, "row {i}");
        }
    }

    #[test]
    fn reset_rules() {
        let mut f = FollowerState::new(3, 0, true);
        f.on_fetch(40, 40, 1_000);
        f.reset(5_000, true);
        assert_eq!(
            (f.leo(), f.last_caught_up_ms(), f.last_fetch_ms()),
            (UNKNOWN_OFFSET, 5_000, 0)
        );
        assert!(
            f.is_caught_up(100, 5_000 + 30_000, 30_000),
            "grace period for ISR members"
        );
        f.reset(5_000, false);
        assert_eq!(f.last_caught_up_ms(), 0);
        assert!(!f.is_caught_up(100, 40_000, 30_000));
    }

    #[test]
    fn stale_broker_epoch_table() {
        // (fetch epoch, registered, stale?)
        let table = [
            (5, Some(5), false),
            (6, Some(5), false),
            (4, Some(5), true),
            (-1, Some(5), false), // not sent (old Fetch version)
            (4, None, false),     // unknown to us: the controller decides eligibility
            (0, Some(1), true),
        ];
        for (fetch, registered, want) in table {
            assert_eq!(
                is_stale_broker_epoch(fetch, registered),
                want,
                "{fetch} {registered:?}"
            );
        }
    }
}
