//! The clock that ISR decisions are measured on: time the leader was able to run.
//!
//! A follower leaves the ISR when it has not been caught up for `replica.lag.time.max.ms`.
//! Measured on the wall clock, a leader that was itself stopped (SIGSTOP, a long GC-like
//! stall, a starved VM) blames its followers for its own absence: when it resumes, its ISR
//! check can run before it has read the fetches the followers queued meanwhile, every
//! follower looks late by the length of the stall, and the leader shrinks the ISR to itself,
//! below `min.insync.replicas`, refusing acks=all until the followers are re-admitted.
//!
//! [`LagClock`] advances with the source clock, but by at most `max_step_ms` per reading. The
//! broker reads it at least every half `replica.lag.time.max.ms` (the ISR check period) and on
//! every follower fetch, so a running leader's clock keeps pace with real time; a stall
//! longer than one step counts as a single step. With `max_step_ms` at half the lag limit, a
//! follower that was caught up when the leader stopped still has half the limit to show it
//! is in sync after the leader resumes, and a follower that is really gone is removed as
//! usual once the leader runs again.

/// A monotonic clock that skips the time its owner was not running (see the module doc).
#[derive(Debug, Clone, Default)]
pub(crate) struct LagClock {
    last_source_ms: Option<u64>,
    now_ms: u64,
}

impl LagClock {
    /// A clock not read yet.
    pub(crate) const fn new() -> Self {
        Self {
            last_source_ms: None,
            now_ms: 0,
        }
    }

    /// Reads the clock at source time `source_ms`: the time since the previous reading,
    /// capped at `max_step_ms`, is added. The first reading starts the clock at `source_ms`.
    /// A source that moves backwards adds nothing. Never decreases.
    pub(crate) fn observe(&mut self, source_ms: u64, max_step_ms: u64) -> u64 {
        match self.last_source_ms {
            None => self.now_ms = source_ms,
            Some(last) => self.now_ms += source_ms.saturating_sub(last).min(max_step_ms),
        }
        self.last_source_ms = Some(self.last_source_ms.map_or(source_ms, |l| l.max(source_ms)));
        self.now_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_clock_table() {
        // (readings of the source clock, max step, expected lag-clock values)
        let table: &[(&[u64], u64, &[u64])] = &[
            // Regular readings: the same as the source.
            (&[1_000, 1_200, 1_500], 500, &[1_000, 1_200, 1_500]),
            // A stall of 10 s counts as one step.
            (&[1_000, 11_000, 11_100], 500, &[1_000, 1_500, 1_600]),
            // A gap exactly one step long is kept whole.
            (&[0, 500, 1_000], 500, &[0, 500, 1_000]),
            // The source going back adds nothing, and its recovery is not double-counted.
            (&[1_000, 900, 1_100], 500, &[1_000, 1_000, 1_100]),
            // Several readings in the same millisecond.
            (&[7, 7, 7], 500, &[7, 7, 7]),
        ];
        for (i, &(readings, step, want)) in table.iter().enumerate() {
            let mut c = LagClock::new();
            let got: Vec<u64> = readings.iter().map(|&s| c.observe(s, step)).collect();
            assert_eq!(got, want, "row {i}");
        }
    }

    /// The failure this clock exists for, end to end over the ISR rule: a leader stopped for
    /// longer than the lag limit resumes and checks its ISR before it reads the queued
    /// fetches. On the wall clock it would shrink both followers; on the lag clock it keeps
    /// them, and a follower that stays silent afterwards is still removed in time.
    #[test]
    fn a_stalled_leader_does_not_shrink_followers_that_fetched_before_the_stall() {
        use crate::replication::{shrink_candidates, FollowerState};
        let lag = 2_000;
        let step = lag / 2;
        let mut clock = LagClock::new();
        let t0 = clock.observe(10_000, step);
        let mut f2 = FollowerState::new(2, t0, true);
        let mut f3 = FollowerState::new(3, t0, true);
        f2.on_fetch(100, 100, t0);
        f3.on_fetch(100, 100, t0);
        // The leader appends (LEO 150) and is stopped for 8 s of wall time.
        let wall_after = 18_000;
        let followers = [f2.clone(), f3.clone()];
        assert_eq!(
            shrink_candidates(&[1, 2, 3], 1, &followers, 150, wall_after, lag),
            vec![2, 3],
            "the wall clock blames both followers"
        );
        let now = clock.observe(wall_after, step);
        assert!(shrink_candidates(&[1, 2, 3], 1, &followers, 150, now, lag).is_empty());
        // Follower 2's queued fetch arrives; follower 3 stays silent and is removed once the
        // leader has run for the rest of the lag limit.
        f2.on_fetch(150, 150, clock.observe(wall_after + 10, step));
        let later = clock.observe(wall_after + 1_100, step);
        let followers = [f2, f3];
        assert_eq!(
            shrink_candidates(&[1, 2, 3], 1, &followers, 150, later, lag),
            vec![3]
        );
    }
}
