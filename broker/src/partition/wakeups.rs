//! Node-wide wake-ups for fetches over many partitions.
//!
//! A fetch that long-polls watches every partition it reads for a new high watermark
//! (consumers) or log end (followers). One watch per partition is right for a handful of
//! partitions; for a session of thousands, registering and dropping thousands of waiters on
//! every fetch was most of an idle broker's work. Such a fetch instead watches the shards its
//! partitions fall in: a replica bumps its shard's counter whenever it bumps its own watch
//! as a leader (appends, HW moves) or changes role or is deleted, so a waiter may wake for
//! another partition of the shard (it reads again and waits again) but never misses one of
//! its own. A follower replica's appends and HW do not bump it: fetches read leaders only,
//! and a fetch of a follower replica is answered with an error at once.

use std::hash::{Hash, Hasher};
use tokio::sync::watch;

/// Shards per kind: a fetch watches at most this many channels.
pub(crate) const SHARDS: usize = 64;

/// What a waiter waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Moved {
    /// A high watermark moved (or anything consumers must re-check: leadership, deletion).
    HighWatermark,
    /// A log end moved (what followers wait for).
    LogEnd,
}

#[derive(Debug)]
pub(crate) struct Wakeups {
    hw: Vec<watch::Sender<u64>>,
    leo: Vec<watch::Sender<u64>>,
}

impl Default for Wakeups {
    fn default() -> Self {
        let shards = || (0..SHARDS).map(|_| watch::Sender::new(0)).collect();
        Self {
            hw: shards(),
            leo: shards(),
        }
    }
}

impl Wakeups {
    /// The shard of a partition.
    pub(crate) fn shard_of(topic: &str, partition: i32) -> usize {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (topic, partition).hash(&mut h);
        (h.finish() % SHARDS as u64) as usize
    }

    fn senders(&self, what: Moved) -> &[watch::Sender<u64>] {
        match what {
            Moved::HighWatermark => &self.hw,
            Moved::LogEnd => &self.leo,
        }
    }

    /// Wakes the waiters of `shard`.
    pub(crate) fn moved(&self, what: Moved, shard: usize) {
        self.senders(what)[shard].send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver for `shard`, which sees every later [`Wakeups::moved`] of it.
    pub(crate) fn subscribe(&self, what: Moved, shard: usize) -> watch::Receiver<u64> {
        self.senders(what)[shard].subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiter_wakes_for_its_shard_only() {
        let w = Wakeups::default();
        let mut hw = w.subscribe(Moved::HighWatermark, 3);
        let mut leo = w.subscribe(Moved::LogEnd, 3);
        hw.borrow_and_update();
        leo.borrow_and_update();
        w.moved(Moved::HighWatermark, 4);
        w.moved(Moved::LogEnd, 3);
        assert!(!hw.has_changed().unwrap(), "another shard");
        assert!(leo.has_changed().unwrap());
        w.moved(Moved::HighWatermark, 3);
        assert!(hw.has_changed().unwrap());
        assert!(Wakeups::shard_of("t", 7) < SHARDS);
    }
}
