//! The metadata image: cluster state rebuilt by replaying metadata records.
//!
//! The controller and every broker hold one. It changes only through
//! [`MetadataImage::apply`], so two images that applied the same records at the same
//! offsets are equal.

use super::records::{MetadataRecord, PartitionRecord};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// A registered broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BrokerInfo {
    pub(crate) id: i32,
    /// Strictly greater than every earlier epoch of this id.
    pub(crate) epoch: i64,
    pub(crate) host: String,
    pub(crate) port: i32,
    /// A fenced broker leads nothing and joins no ISR.
    pub(crate) fenced: bool,
    /// Offset of the `RegisterBroker` record; the broker is caught up once its metadata
    /// offset reaches it.
    pub(crate) registered_at: i64,
}

/// A topic and its partitions (indexed by partition id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TopicImage {
    pub(crate) name: String,
    pub(crate) id: Uuid,
    pub(crate) configs: BTreeMap<String, String>,
    pub(crate) partitions: Vec<PartitionRecord>,
}

/// Cluster metadata as of `offset`: what a controller snapshot holds (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MetadataImage {
    brokers: BTreeMap<i32, BrokerInfo>,
    topics: BTreeMap<String, TopicImage>,
    topic_names: BTreeMap<Uuid, String>,
    assignment_cursor: u32,
    /// Every producer id below it has been handed out.
    next_producer_id: i64,
    offset: i64,
}

/// Counts for the controller's gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ImageStats {
    pub(crate) registered: usize,
    pub(crate) fenced: usize,
    pub(crate) partitions: usize,
    /// Partitions without a leader.
    pub(crate) offline_partitions: usize,
    pub(crate) offset: i64,
}

/// Whether writing `new` over `old` elects a leader: an existing partition gets a
/// different leader that is not [`NO_LEADER`](super::records::NO_LEADER). A new topic's
/// first leaders and a partition going leaderless are not elections.
pub(crate) fn is_leader_election(old: Option<&PartitionRecord>, new: &PartitionRecord) -> bool {
    old.is_some_and(|o| o.leader != new.leader) && new.has_leader()
}

impl Default for MetadataImage {
    fn default() -> Self {
        Self::new()
    }
}

impl MetadataImage {
    /// The empty image, before the first record (offset -1).
    pub(crate) fn new() -> Self {
        Self {
            brokers: BTreeMap::new(),
            topics: BTreeMap::new(),
            topic_names: BTreeMap::new(),
            assignment_cursor: 0,
            next_producer_id: 0,
            offset: -1,
        }
    }

    /// Applies one entry of the metadata log: the records of one controller command, all
    /// at `offset` (an entry without records, such as a new leader's first, only moves the
    /// offset). Returns false, changing nothing, for an entry at or below [`Self::offset`]:
    /// it was applied already, so replaying a log from its start over an image is safe.
    ///
    /// Records that refer to something that is not there (a fence of a stale broker
    /// epoch, a partition of an unknown topic, a `RemoveTopic` whose id does not match)
    /// only move the offset: the log is the truth and stays replayable.
    pub(crate) fn apply_entry(&mut self, offset: i64, records: &[MetadataRecord]) -> bool {
        if offset <= self.offset {
            return false;
        }
        self.offset = offset;
        for r in records {
            self.apply_record(offset, r);
        }
        true
    }

    /// [`Self::apply_entry`] of an entry holding one record.
    #[cfg(test)]
    pub(crate) fn apply(&mut self, offset: i64, record: &MetadataRecord) -> bool {
        self.apply_entry(offset, std::slice::from_ref(record))
    }

    fn apply_record(&mut self, offset: i64, record: &MetadataRecord) {
        match record {
            MetadataRecord::RegisterBroker {
                id,
                epoch,
                host,
                port,
            } => {
                self.brokers.insert(
                    *id,
                    BrokerInfo {
                        id: *id,
                        epoch: *epoch,
                        host: host.clone(),
                        port: *port,
                        fenced: true,
                        registered_at: offset,
                    },
                );
            }
            MetadataRecord::FenceBroker { id, epoch } => self.set_fenced(*id, *epoch, true),
            MetadataRecord::UnfenceBroker { id, epoch } => self.set_fenced(*id, *epoch, false),
            MetadataRecord::Topic { name, id, configs } => match self.topics.get_mut(name) {
                Some(t) if t.id == *id => t.configs = configs.clone(),
                _ => {
                    if let Some(old) = self.topics.remove(name) {
                        self.topic_names.remove(&old.id);
                    }
                    self.topic_names.insert(*id, name.clone());
                    self.topics.insert(
                        name.clone(),
                        TopicImage {
                            name: name.clone(),
                            id: *id,
                            configs: configs.clone(),
                            partitions: Vec::new(),
                        },
                    );
                }
            },
            MetadataRecord::Partition(p) => {
                let Some(t) = self.topics.get_mut(&p.topic) else {
                    tracing::warn!(
                        offset,
                        topic = p.topic,
                        "partition record for unknown topic"
                    );
                    return;
                };
                match usize::try_from(p.partition) {
                    Ok(i) if i < t.partitions.len() => t.partitions[i] = p.clone(),
                    Ok(i) if i == t.partitions.len() => t.partitions.push(p.clone()),
                    _ => {
                        tracing::warn!(
                            offset,
                            topic = p.topic,
                            partition = p.partition,
                            "partition record out of order"
                        );
                    }
                }
            }
            MetadataRecord::RemoveTopic { name, id } => {
                if self.topics.get(name).is_some_and(|t| t.id == *id) {
                    self.topics.remove(name);
                    self.topic_names.remove(id);
                }
            }
            MetadataRecord::AssignmentCursor { next } => self.assignment_cursor = *next,
            MetadataRecord::ProducerIds { next, .. } => {
                self.next_producer_id = self.next_producer_id.max(*next)
            }
        }
    }

    fn set_fenced(&mut self, id: i32, epoch: i64, fenced: bool) {
        match self.brokers.get_mut(&id) {
            Some(b) if b.epoch == epoch => b.fenced = fenced,
            _ => tracing::warn!(
                broker = id,
                epoch,
                fenced,
                "fencing change for a stale broker epoch"
            ),
        }
    }

    /// Offset of the last applied entry, -1 before the first.
    pub(crate) fn offset(&self) -> i64 {
        self.offset
    }

    /// Where the next topic's replica assignment starts.
    /// Broker and partition counts for the controller's gauges.
    pub(crate) fn stats(&self) -> ImageStats {
        let partitions: Vec<_> = self.partitions().collect();
        ImageStats {
            registered: self.brokers.len(),
            fenced: self.brokers.values().filter(|b| b.fenced).count(),
            partitions: partitions.len(),
            offline_partitions: partitions.iter().filter(|p| !p.has_leader()).count(),
            offset: self.offset,
        }
    }

    /// The first producer id not handed out yet: every id below it was, in some block.
    pub(crate) fn next_producer_id(&self) -> i64 {
        self.next_producer_id
    }

    pub(crate) fn assignment_cursor(&self) -> u32 {
        self.assignment_cursor
    }

    pub(crate) fn broker(&self, id: i32) -> Option<&BrokerInfo> {
        self.brokers.get(&id)
    }

    /// Every registered broker, by id.
    pub(crate) fn brokers(&self) -> impl Iterator<Item = &BrokerInfo> + '_ {
        self.brokers.values()
    }

    /// Unfenced brokers, by id.
    pub(crate) fn unfenced_brokers(&self) -> impl Iterator<Item = &BrokerInfo> + '_ {
        self.brokers.values().filter(|b| !b.fenced)
    }

    pub(crate) fn is_unfenced(&self, id: i32) -> bool {
        self.brokers.get(&id).is_some_and(|b| !b.fenced)
    }

    pub(crate) fn topic(&self, name: &str) -> Option<&TopicImage> {
        self.topics.get(name)
    }

    pub(crate) fn topic_by_id(&self, id: Uuid) -> Option<&TopicImage> {
        self.topic_names.get(&id).and_then(|n| self.topics.get(n))
    }

    /// Every topic, by name.
    pub(crate) fn topics(&self) -> impl Iterator<Item = &TopicImage> + '_ {
        self.topics.values()
    }

    pub(crate) fn partition(&self, topic: &str, partition: i32) -> Option<&PartitionRecord> {
        let i = usize::try_from(partition).ok()?;
        self.topics.get(topic)?.partitions.get(i)
    }

    /// Every partition of every topic, by topic name then partition.
    pub(crate) fn partitions(&self) -> impl Iterator<Item = &PartitionRecord> + '_ {
        self.topics.values().flat_map(|t| t.partitions.iter())
    }

    pub(crate) fn partitions_led_by(&self, id: i32) -> impl Iterator<Item = &PartitionRecord> + '_ {
        self.partitions().filter(move |p| p.leader == id)
    }

    /// Whether fencing broker `id` leaves every partition whose ISR holds it another unfenced
    /// ISR member, so that none becomes leaderless.
    pub(crate) fn can_fence_without_leaderless(&self, id: i32) -> bool {
        self.partitions()
            .filter(|p| p.isr.contains(&id))
            .all(|p| p.isr.iter().any(|&b| b != id && self.is_unfenced(b)))
    }

    #[cfg(test)]
    pub(crate) fn partitions_with_replica(
        &self,
        id: i32,
    ) -> impl Iterator<Item = &PartitionRecord> + '_ {
        self.partitions().filter(move |p| p.replicas.contains(&id))
    }
}

/// What a broker must do with its local replicas after its image moved from `old` to `new`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReplicaChange {
    BecomeLeader {
        topic: String,
        topic_id: Uuid,
        partition: i32,
        record: PartitionRecord,
    },
    /// `record.leader` may be [`NO_LEADER`](super::records::NO_LEADER): stay a replica
    /// and fetch from nobody until a leader appears.
    BecomeFollower {
        topic: String,
        topic_id: Uuid,
        partition: i32,
        record: PartitionRecord,
    },
    /// Delete the local replica of this (topic, id).
    Remove {
        topic: String,
        topic_id: Uuid,
        partition: i32,
    },
}

/// The replica changes for `broker_id` between two images: all `Remove`s first (so a
/// topic re-created under the same name is deleted before it is created again), then
/// `BecomeLeader` / `BecomeFollower` for every partition where this broker is a replica
/// and the partition record is new or changed. Ordered by topic name, then partition.
pub(crate) fn diff(old: &MetadataImage, new: &MetadataImage, broker_id: i32) -> Vec<ReplicaChange> {
    let mut removes = Vec::new();
    let mut becomes = Vec::new();
    let hosts = |p: &PartitionRecord| p.replicas.contains(&broker_id);

    for (name, ot) in &old.topics {
        let same = new.topics.get(name).filter(|nt| nt.id == ot.id);
        for op in ot.partitions.iter().filter(|p| hosts(p)) {
            let kept = same
                .and_then(|nt| nt.partitions.get(op.partition as usize))
                .is_some_and(hosts);
            if !kept {
                removes.push(ReplicaChange::Remove {
                    topic: name.clone(),
                    topic_id: ot.id,
                    partition: op.partition,
                });
            }
        }
    }
    for (name, nt) in &new.topics {
        let same = old.topics.get(name).filter(|ot| ot.id == nt.id);
        for np in nt.partitions.iter().filter(|p| hosts(p)) {
            let before = same.and_then(|ot| ot.partitions.get(np.partition as usize));
            if before.is_some_and(|op| hosts(op) && op == np) {
                continue;
            }
            let (topic, topic_id, partition, record) =
                (name.clone(), nt.id, np.partition, np.clone());
            becomes.push(if np.leader == broker_id {
                ReplicaChange::BecomeLeader {
                    topic,
                    topic_id,
                    partition,
                    record,
                }
            } else {
                ReplicaChange::BecomeFollower {
                    topic,
                    topic_id,
                    partition,
                    record,
                }
            });
        }
    }
    removes.extend(becomes);
    removes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::records::NO_LEADER;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn register(id: i32, epoch: i64) -> MetadataRecord {
        MetadataRecord::RegisterBroker {
            id,
            epoch,
            host: format!("h{id}"),
            port: 9000 + id,
        }
    }

    fn topic(name: &str, n: u128) -> MetadataRecord {
        MetadataRecord::Topic {
            name: name.into(),
            id: id(n),
            configs: BTreeMap::new(),
        }
    }

    fn part(
        topic: &str,
        p: i32,
        replicas: &[i32],
        isr: &[i32],
        leader: i32,
        le: i32,
    ) -> PartitionRecord {
        PartitionRecord {
            topic: topic.into(),
            partition: p,
            replicas: replicas.to_vec(),
            isr: isr.to_vec(),
            leader,
            leader_epoch: le,
            partition_epoch: le,
        }
    }

    fn image(records: &[MetadataRecord]) -> MetadataImage {
        let mut img = MetadataImage::new();
        for (i, r) in records.iter().enumerate() {
            assert!(img.apply(i as i64, r));
        }
        img
    }

    #[test]
    fn leader_elections_table() {
        let p = |leader| PartitionRecord::test_record(leader, 0, &[1, 2, 3]);
        // (old leader, new leader) -> election?
        let cases = [
            (None, 1, false),            // a new topic's first leader
            (Some(1), 1, false),         // ISR-only change
            (Some(1), 2, true),          // failover
            (Some(1), NO_LEADER, false), // offline
            (Some(NO_LEADER), 3, true),  // back from offline
            (Some(2), 1, true),          // preferred leader
        ];
        for (old, new, want) in cases {
            let old = old.map(p);
            assert_eq!(
                is_leader_election(old.as_ref(), &p(new)),
                want,
                "{old:?} -> {new}"
            );
        }
    }

    #[test]
    fn stats_count_brokers_and_offline_partitions() {
        let mut image = MetadataImage::new();
        let mut offset = 0;
        let mut apply = |image: &mut MetadataImage, r: MetadataRecord| {
            image.apply(offset, &r);
            offset += 1;
        };
        for b in 1..=3 {
            apply(&mut image, register(b, 10));
        }
        apply(
            &mut image,
            MetadataRecord::UnfenceBroker { id: 1, epoch: 10 },
        );
        apply(
            &mut image,
            MetadataRecord::Topic {
                name: "t".into(),
                id: id(1),
                configs: BTreeMap::new(),
            },
        );
        for (partition, leader) in [(0, 1), (1, NO_LEADER)] {
            apply(
                &mut image,
                MetadataRecord::Partition(PartitionRecord {
                    topic: "t".into(),
                    partition,
                    replicas: vec![1],
                    isr: vec![1],
                    leader,
                    leader_epoch: 0,
                    partition_epoch: 0,
                }),
            );
        }
        let s = image.stats();
        assert_eq!(
            (s.registered, s.partitions, s.offline_partitions),
            (3, 2, 1)
        );
        assert_eq!(
            s.fenced,
            s.registered - 1,
            "registered brokers start fenced"
        );
        assert_eq!(s.offset, image.offset());
    }

    #[test]
    fn apply_brokers() {
        let img = image(&[
            register(1, 0),
            MetadataRecord::UnfenceBroker { id: 1, epoch: 0 },
            register(2, 2),
            MetadataRecord::UnfenceBroker { id: 2, epoch: 1 }, // stale epoch: ignored
            MetadataRecord::FenceBroker { id: 7, epoch: 0 },   // unknown broker: ignored
        ]);
        assert_eq!(img.offset(), 4);
        assert_eq!(
            img.broker(1),
            Some(&BrokerInfo {
                id: 1,
                epoch: 0,
                host: "h1".into(),
                port: 9001,
                fenced: false,
                registered_at: 0
            })
        );
        assert!(img.broker(2).unwrap().fenced);
        assert_eq!(
            img.unfenced_brokers().map(|b| b.id).collect::<Vec<_>>(),
            vec![1]
        );

        // Re-registration replaces the broker and starts it fenced.
        let mut again = img.clone();
        again.apply(5, &register(1, 5));
        let b = again.broker(1).unwrap();
        assert_eq!((b.epoch, b.fenced, b.registered_at), (5, true, 5));
        again.apply(6, &MetadataRecord::UnfenceBroker { id: 1, epoch: 0 });
        assert!(again.broker(1).unwrap().fenced, "old epoch cannot unfence");
    }

    #[test]
    fn apply_topics_and_partitions() {
        let p0 = part("a", 0, &[1, 2], &[1, 2], 1, 0);
        let p1 = part("a", 1, &[2, 1], &[2, 1], 2, 0);
        let mut img = image(&[
            topic("a", 1),
            MetadataRecord::Partition(p0.clone()),
            MetadataRecord::Partition(p1.clone()),
            MetadataRecord::Partition(part("a", 5, &[1], &[1], 1, 0)), // gap: ignored
            MetadataRecord::Partition(part("zz", 0, &[1], &[1], 1, 0)), // unknown topic
            MetadataRecord::AssignmentCursor { next: 2 },
        ]);
        assert_eq!(
            img.topic("a").unwrap().partitions,
            vec![p0.clone(), p1.clone()]
        );
        assert_eq!(img.topic_by_id(id(1)).unwrap().name, "a");
        assert_eq!(img.partition("a", 1), Some(&p1));
        assert_eq!(img.partition("a", 2), None);
        assert_eq!(img.partition("a", -1), None);
        assert_eq!(img.assignment_cursor(), 2);
        assert_eq!(
            img.partitions_led_by(2).cloned().collect::<Vec<_>>(),
            vec![p1.clone()]
        );
        assert_eq!(img.partitions_with_replica(1).count(), 2);
        assert_eq!(img.partitions_with_replica(3).count(), 0);

        // A later partition record replaces the earlier one.
        let moved = part("a", 0, &[1, 2], &[2], 2, 1);
        img.apply(10, &MetadataRecord::Partition(moved.clone()));
        assert_eq!(img.partition("a", 0), Some(&moved));

        // Records at or below the offset are skipped.
        assert!(!img.apply(10, &MetadataRecord::Partition(p0.clone())));
        assert!(!img.apply(3, &MetadataRecord::AssignmentCursor { next: 0 }));
        assert_eq!(img.partition("a", 0), Some(&moved));

        // RemoveTopic with another id is ignored; with the right id it removes.
        img.apply(
            11,
            &MetadataRecord::RemoveTopic {
                name: "a".into(),
                id: id(2),
            },
        );
        assert!(img.topic("a").is_some());
        img.apply(
            12,
            &MetadataRecord::RemoveTopic {
                name: "a".into(),
                id: id(1),
            },
        );
        assert!(img.topic("a").is_none() && img.topic_by_id(id(1)).is_none());
        assert_eq!(img.offset(), 12);
    }

    #[test]
    fn a_topic_record_with_a_new_id_replaces_the_topic() {
        let mut img = image(&[
            topic("a", 1),
            MetadataRecord::Partition(part("a", 0, &[1], &[1], 1, 0)),
        ]);
        img.apply(2, &topic("a", 1)); // same id: keeps its partitions
        assert_eq!(img.topic("a").unwrap().partitions.len(), 1);
        img.apply(3, &topic("a", 2));
        assert_eq!(img.topic("a").unwrap().partitions.len(), 0);
        assert!(img.topic_by_id(id(1)).is_none());
        assert_eq!(img.topic_by_id(id(2)).unwrap().id, id(2));
    }

    fn with(records: &[MetadataRecord]) -> MetadataImage {
        let mut all = vec![topic("a", 1)];
        all.extend_from_slice(records);
        image(&all)
    }

    fn leader(p: PartitionRecord) -> ReplicaChange {
        ReplicaChange::BecomeLeader {
            topic: p.topic.clone(),
            topic_id: id(1),
            partition: p.partition,
            record: p,
        }
    }

    fn follower(p: PartitionRecord) -> ReplicaChange {
        ReplicaChange::BecomeFollower {
            topic: p.topic.clone(),
            topic_id: id(1),
            partition: p.partition,
            record: p,
        }
    }

    fn remove(topic_id: u128, partition: i32) -> ReplicaChange {
        ReplicaChange::Remove {
            topic: "a".into(),
            topic_id: id(topic_id),
            partition,
        }
    }

    #[test]
    fn diff_table() {
        use MetadataRecord::Partition as P;
        let base = part("a", 0, &[1, 2, 3], &[1, 2, 3], 1, 0);
        let other = part("a", 1, &[2, 3], &[2, 3], 2, 0);
        let old = with(&[P(base.clone()), P(other.clone())]);
        let shrunk = PartitionRecord {
            isr: vec![1, 2],
            partition_epoch: 1,
            ..base.clone()
        };
        let moved = part("a", 0, &[1, 2, 3], &[2, 3], 2, 1);
        let leaderless = part("a", 0, &[1, 2, 3], &[3], NO_LEADER, 2);
        let mut recreated = image(&[topic("a", 2), P(base.clone())]);
        recreated.apply(9, &MetadataRecord::AssignmentCursor { next: 1 });
        let recreated_change = ReplicaChange::BecomeFollower {
            topic: "a".into(),
            topic_id: id(2),
            partition: 0,
            record: base.clone(),
        };

        // (name, old image, new image, broker, expected changes)
        let table: Vec<(&str, MetadataImage, MetadataImage, i32, Vec<ReplicaChange>)> = vec![
            (
                "new topic, leader",
                MetadataImage::new(),
                old.clone(),
                1,
                vec![leader(base.clone())],
            ),
            (
                "new topic, follower of both",
                MetadataImage::new(),
                old.clone(),
                3,
                vec![follower(base.clone()), follower(other.clone())],
            ),
            ("nothing changed", old.clone(), old.clone(), 2, vec![]),
            (
                "isr change reaches the leader",
                old.clone(),
                with(&[P(shrunk.clone()), P(other.clone())]),
                1,
                vec![leader(shrunk.clone())],
            ),
            (
                "isr change reaches the removed follower",
                old.clone(),
                with(&[P(shrunk.clone()), P(other.clone())]),
                3,
                vec![follower(shrunk)],
            ),
            (
                "leader moved: old leader follows",
                old.clone(),
                with(&[P(moved.clone()), P(other.clone())]),
                1,
                vec![follower(moved.clone())],
            ),
            (
                "leader moved: new leader leads",
                old.clone(),
                with(&[P(moved.clone()), P(other.clone())]),
                2,
                vec![leader(moved)],
            ),
            (
                "leaderless: follow nobody",
                old.clone(),
                with(&[P(leaderless.clone()), P(other.clone())]),
                3,
                vec![follower(leaderless)],
            ),
            (
                "not a replica",
                MetadataImage::new(),
                old.clone(),
                9,
                vec![],
            ),
            (
                "topic deleted",
                old.clone(),
                MetadataImage::new(),
                2,
                vec![remove(1, 0), remove(1, 1)],
            ),
            (
                "topic re-created",
                old.clone(),
                recreated,
                3,
                vec![remove(1, 0), remove(1, 1), recreated_change],
            ),
        ];
        for (name, old, new, broker, want) in table {
            assert_eq!(diff(&old, &new, broker), want, "{name}");
        }
    }
}
