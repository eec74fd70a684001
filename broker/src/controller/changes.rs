//! The records one controller command produces, and the state they lead to.
//!
//! A command may change the same partition twice (fencing two brokers in one tick), so
//! each decision must see the effect of the records before it. [`Changes`] is a small
//! overlay over the committed image: the partitions and fencing states changed so far
//! in this command, plus the records in order. The image itself is never touched.

use super::image::MetadataImage;
use super::records::{MetadataRecord, PartitionRecord, NO_LEADER};
use std::collections::{BTreeMap, BTreeSet};

pub(super) struct Changes<'a> {
    image: &'a MetadataImage,
    records: Vec<MetadataRecord>,
    partitions: BTreeMap<(String, i32), PartitionRecord>,
    fenced: BTreeMap<i32, bool>,
}

impl<'a> Changes<'a> {
    pub(super) fn new(image: &'a MetadataImage) -> Self {
        Self {
            image,
            records: Vec::new(),
            partitions: BTreeMap::new(),
            fenced: BTreeMap::new(),
        }
    }

    pub(super) fn into_records(self) -> Vec<MetadataRecord> {
        self.records
    }

    /// Fencing state after the records so far; unknown brokers count as fenced.
    pub(super) fn is_unfenced(&self, id: i32) -> bool {
        match self.fenced.get(&id) {
            Some(fenced) => !fenced,
            None => self.image.is_unfenced(id),
        }
    }

    /// The partition's state after the records so far.
    fn current<'b>(&'b self, p: &'b PartitionRecord) -> &'b PartitionRecord {
        self.partitions
            .get(&(p.topic.clone(), p.partition))
            .unwrap_or(p)
    }

    pub(super) fn push(&mut self, record: MetadataRecord) {
        match &record {
            MetadataRecord::RegisterBroker { id, .. } | MetadataRecord::FenceBroker { id, .. } => {
                self.fenced.insert(*id, true);
            }
            MetadataRecord::UnfenceBroker { id, .. } => {
                self.fenced.insert(*id, false);
            }
            MetadataRecord::Partition(p) => {
                self.partitions
                    .insert((p.topic.clone(), p.partition), p.clone());
            }
            _ => {}
        }
        self.records.push(record);
    }

    /// Writes `cur` with a new ISR and leader if either differs: partition epoch + 1,
    /// and leader epoch + 1 if the leader changed.
    fn change(&mut self, cur: &PartitionRecord, isr: Vec<i32>, leader: i32) {
        if isr == cur.isr && leader == cur.leader {
            return;
        }
        let leader_epoch = cur.leader_epoch + i32::from(leader != cur.leader);
        tracing::info!(
            topic = cur.topic,
            partition = cur.partition,
            leader,
            leader_epoch,
            ?isr,
            "partition change"
        );
        self.push(MetadataRecord::Partition(PartitionRecord {
            isr,
            leader,
            leader_epoch,
            partition_epoch: cur.partition_epoch + 1,
            ..cur.clone()
        }));
    }

    /// The first replica (in `replicas` order, so the preferred one wins) that is in
    /// `isr` and unfenced; [`NO_LEADER`] if none. Never a replica outside the ISR:
    /// unclean election is off.
    fn elect(&self, replicas: &[i32], isr: &[i32]) -> i32 {
        replicas
            .iter()
            .copied()
            .find(|r| isr.contains(r) && self.is_unfenced(*r))
            .unwrap_or(NO_LEADER)
    }

    /// `FenceBroker`, then `id` leaves every ISR. Where it led, the next unfenced ISR
    /// member takes over. Where it is the last ISR member it stays, as the only replica
    /// known to hold everything committed, and the partition waits leaderless for it.
    pub(super) fn fence(&mut self, id: i32, epoch: i64) {
        self.fence_all(&[(id, epoch)]);
    }

    /// [`Self::fence`] for several brokers at once: all `FenceBroker` records first, so
    /// no leadership moves to a broker that is fenced in the same command.
    pub(super) fn fence_all(&mut self, brokers: &[(i32, i64)]) {
        for &(id, epoch) in brokers {
            tracing::info!(broker = id, epoch, "fencing broker");
            self.push(MetadataRecord::FenceBroker { id, epoch });
        }
        for &(id, _) in brokers {
            self.leave_isrs(id);
        }
    }

    fn leave_isrs(&mut self, id: i32) {
        let image = self.image;
        for p in image.partitions() {
            let cur = self.current(p).clone();
            if !cur.isr.contains(&id) {
                continue;
            }
            let rest: Vec<i32> = cur.isr.iter().copied().filter(|r| *r != id).collect();
            let (isr, leader) = if rest.is_empty() {
                (vec![id], NO_LEADER)
            } else if cur.leader == id || cur.leader == NO_LEADER {
                let leader = self.elect(&cur.replicas, &rest);
                (rest, leader)
            } else {
                (rest, cur.leader)
            };
            self.change(&cur, isr, leader);
        }
    }

    /// `UnfenceBroker`, then `id` leads every leaderless partition whose ISR holds it.
    pub(super) fn unfence(&mut self, id: i32, epoch: i64) {
        tracing::info!(broker = id, epoch, "unfencing broker");
        self.push(MetadataRecord::UnfenceBroker { id, epoch });
        self.elect_leaderless();
    }

    /// Elects a leader, from the ISR only, for every partition without one.
    pub(super) fn elect_leaderless(&mut self) {
        let image = self.image;
        for p in image.partitions() {
            let cur = self.current(p).clone();
            if cur.leader == NO_LEADER {
                let leader = self.elect(&cur.replicas, &cur.isr);
                self.change(&cur, cur.isr.clone(), leader);
            }
        }
    }

    /// Moves leadership to `replicas[0]` wherever it is in the ISR, unfenced, in
    /// `settled` and not already the leader.
    pub(super) fn rebalance(&mut self, settled: &BTreeSet<i32>) {
        let image = self.image;
        for p in image.partitions() {
            let cur = self.current(p).clone();
            let Some(&preferred) = cur.replicas.first() else {
                continue;
            };
            if preferred != cur.leader
                && cur.isr.contains(&preferred)
                && self.is_unfenced(preferred)
                && settled.contains(&preferred)
            {
                self.change(&cur, cur.isr.clone(), preferred);
            }
        }
    }
}
