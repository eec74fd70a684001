//! A replica's repair state: data it acknowledged and lacks (lost in an unclean stop, or
//! about to be cut at a batch that fails its CRC check), which it must fetch again from its
//! leader before it may lead or count in an ISR. Lock-free: two atomics.

use std::sync::atomic::{AtomicI64, Ordering};

/// See the module doc.
pub(crate) struct Repair {
    /// The offset this replica must reach again, from its leader, before it may lead or
    /// count in an ISR: its checkpointed HW when recovery ended below it, or the HW when a
    /// repair was requested. `i64::MIN`: none.
    must_reach: AtomicI64,
    /// A batch failed its CRC check at this offset: truncate there (as a follower of a
    /// fenced broker) and fetch the rest again. `i64::MAX`: none.
    cut_at: AtomicI64,
}

impl Repair {
    /// A replica that must reach `must_reach` again (`None`: lacks nothing).
    pub(crate) fn new(must_reach: Option<i64>) -> Self {
        Self {
            must_reach: AtomicI64::new(must_reach.unwrap_or(i64::MIN)),
            cut_at: AtomicI64::new(i64::MAX),
        }
    }

    /// Whether a log ending at `leo` still lacks acknowledged data, or waits for a cut.
    pub(crate) fn is_pending(&self, leo: i64) -> bool {
        self.cut_at.load(Ordering::Acquire) != i64::MAX
            || leo < self.must_reach.load(Ordering::Acquire)
    }

    /// A cut at `bad`, after which the log must reach `hw` again.
    pub(crate) fn request(&self, bad: i64, hw: i64) {
        self.must_reach.fetch_max(hw, Ordering::AcqRel);
        self.cut_at.fetch_min(bad, Ordering::AcqRel);
    }

    /// The pending cut, consumed.
    pub(crate) fn take_cut(&self) -> Option<i64> {
        let at = self.cut_at.swap(i64::MAX, Ordering::AcqRel);
        (at != i64::MAX).then_some(at)
    }

    /// Gives the repair up; returns the offset it was waiting to reach.
    pub(crate) fn forgo(&self) -> i64 {
        self.cut_at.store(i64::MAX, Ordering::Release);
        self.must_reach.swap(i64::MIN, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repair_lasts_until_the_log_is_back_and_the_cut_is_taken() {
        let r = Repair::new(None);
        assert!(!r.is_pending(0));
        r.request(40, 100);
        assert!(r.is_pending(1_000), "a cut is pending");
        // The lowest bad offset wins; the highest HW to reach wins.
        r.request(30, 90);
        assert_eq!(r.take_cut(), Some(30));
        assert_eq!(r.take_cut(), None);
        assert!(r.is_pending(99));
        assert!(!r.is_pending(100));

        let lost = Repair::new(Some(50));
        assert!(lost.is_pending(49));
        assert_eq!(lost.forgo(), 50);
        assert!(!lost.is_pending(0));
    }
}
