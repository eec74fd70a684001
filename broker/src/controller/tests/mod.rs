//! Table and scenario tests of the controller state machine; the harness plays the driver.

mod brokers;
mod random;
mod topics;

use super::*;
use std::collections::BTreeMap;

const HOST: &str = "127.0.0.1";

/// A controller plus the driver's job: commit records at the next offsets, and keep the
/// log for replay.
struct Harness {
    c: Controller,
    log: Vec<(i64, MetadataRecord)>,
    now: u64,
}

impl Harness {
    fn new() -> Self {
        Self {
            c: Controller::new(ControllerConfig::default()),
            log: Vec::new(),
            now: 1_000,
        }
    }

    /// A cluster of brokers 1..=n, all unfenced and settled (one tick seen).
    fn cluster(n: i32) -> Self {
        let mut h = Self::new();
        for id in 1..=n {
            h.up(id);
        }
        h.tick();
        h
    }

    fn image(&self) -> &MetadataImage {
        self.c.image()
    }

    fn commit(&mut self, records: Vec<MetadataRecord>) -> Vec<MetadataRecord> {
        let before = self.image().clone();
        for r in &records {
            let offset = self.image().offset() + 1;
            assert!(self.c.apply(offset, r));
            self.log.push((offset, r.clone()));
        }
        check_invariants(&before, self.image());
        records
    }

    fn epoch(&self, id: i32) -> i64 {
        self.image().broker(id).unwrap().epoch
    }

    fn register(&mut self, id: i32) -> (i64, Vec<MetadataRecord>) {
        let (epoch, records) = self.c.register(id, HOST, 9000 + id, self.now).unwrap();
        (epoch, self.commit(records))
    }

    /// A caught-up heartbeat.
    fn heartbeat(&mut self, id: i32) -> (HeartbeatReply, Vec<MetadataRecord>) {
        let (epoch, offset) = (self.epoch(id), self.image().offset());
        let (reply, records) = self
            .c
            .heartbeat(id, epoch, offset, false, self.now)
            .unwrap();
        (reply, self.commit(records))
    }

    /// Registers and unfences.
    fn up(&mut self, id: i32) {
        self.register(id);
        let (reply, _) = self.heartbeat(id);
        assert!(!reply.fenced);
    }

    fn tick(&mut self) -> Vec<MetadataRecord> {
        let records = self.c.tick(self.now);
        self.commit(records)
    }

    /// Advances time by `ms`, with heartbeats from `alive` only, then ticks.
    fn pass(&mut self, ms: u64, alive: &[i32]) -> Vec<MetadataRecord> {
        self.now += ms;
        for &id in alive {
            self.heartbeat(id);
        }
        self.tick()
    }

    fn create(&mut self, name: &str, partitions: i32, rf: i16) -> Vec<MetadataRecord> {
        let records = self
            .c
            .create_topic(name, Some(partitions), Some(rf), BTreeMap::new())
            .unwrap();
        self.commit(records)
    }

    fn p(&self, topic: &str, partition: i32) -> PartitionRecord {
        self.image().partition(topic, partition).unwrap().clone()
    }

    fn alter(&self, topic: &str, broker: i32, isr: &[i32]) -> AlterPartitionRequest {
        let p = self.p(topic, 0);
        AlterPartitionRequest {
            broker_id: broker,
            broker_epoch: self.epoch(broker),
            topic: topic.into(),
            partition: 0,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            new_isr: isr.iter().map(|&r| (r, self.epoch(r))).collect(),
        }
    }
}

/// The invariants that hold after every command, and between two committed images.
fn check_invariants(before: &MetadataImage, after: &MetadataImage) {
    for p in after.partitions() {
        let what = format!("{}-{}: {p:?}", p.topic, p.partition);
        assert!(!p.isr.is_empty(), "empty isr {what}");
        assert!(
            p.isr.iter().all(|r| p.replicas.contains(r)),
            "isr ⊄ replicas {what}"
        );
        if p.leader != NO_LEADER {
            assert!(p.isr.contains(&p.leader), "leader ∉ isr {what}");
            assert!(after.is_unfenced(p.leader), "fenced leader {what}");
        }
        let same_topic = before
            .topic(&p.topic)
            .zip(after.topic(&p.topic))
            .is_some_and(|(b, a)| b.id == a.id);
        if let (true, Some(old)) = (same_topic, before.partition(&p.topic, p.partition)) {
            assert!(
                p.leader_epoch >= old.leader_epoch,
                "leader epoch went back {what}"
            );
            assert!(
                p.partition_epoch >= old.partition_epoch,
                "partition epoch went back {what}"
            );
            if p != old {
                assert!(
                    p.partition_epoch > old.partition_epoch,
                    "change without bump {what}"
                );
            }
            if p.leader != old.leader {
                assert!(
                    p.leader_epoch > old.leader_epoch,
                    "new leader, same epoch {what}"
                );
            }
        }
    }
    for b in after.brokers() {
        if let Some(old) = before.broker(b.id) {
            assert!(b.epoch >= old.epoch, "broker epoch went back: {b:?}");
        }
    }
}

fn part(replicas: &[i32], isr: &[i32], leader: i32, le: i32, pe: i32) -> PartitionRecord {
    PartitionRecord {
        topic: "t".into(),
        partition: 0,
        replicas: replicas.to_vec(),
        isr: isr.to_vec(),
        leader,
        leader_epoch: le,
        partition_epoch: pe,
    }
}

fn partitions_of(records: &[MetadataRecord]) -> Vec<PartitionRecord> {
    records
        .iter()
        .filter_map(|r| match r {
            MetadataRecord::Partition(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}
