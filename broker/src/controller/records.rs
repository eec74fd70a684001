//! Metadata records: the only way controller state changes.
//!
//! Each record is the value of one entry in the `__cluster_metadata` log, encoded as JSON
//! with a `type` tag (`{"type":"FenceBroker","id":2,"epoch":17}`). A [`MetadataImage`]
//! is a pure function of the records and their offsets.
//!
//! [`MetadataImage`]: super::MetadataImage

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Leader id of a partition that has no leader.
pub(crate) const NO_LEADER: i32 = -1;

/// One change to the cluster metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum MetadataRecord {
    /// A broker (re)registered; it replaces any earlier registration of the same id.
    RegisterBroker {
        id: i32,
        epoch: i64,
        host: String,
        port: i32,
    },
    /// The broker may not lead or join an ISR. Ignored unless `epoch` is its current epoch.
    FenceBroker { id: i32, epoch: i64 },
    /// The broker may lead and join ISRs again. Ignored unless `epoch` is its current epoch.
    UnfenceBroker { id: i32, epoch: i64 },
    /// A topic was created; its partitions follow as [`MetadataRecord::Partition`] records.
    Topic {
        name: String,
        id: Uuid,
        configs: BTreeMap<String, String>,
    },
    /// The full new state of one partition (every change writes all of it).
    Partition(PartitionRecord),
    /// A topic was deleted. Ignored unless `id` is the id of the topic named `name`.
    RemoveTopic { name: String, id: Uuid },
    /// Where the next topic's round-robin replica assignment starts.
    AssignmentCursor { next: u32 },
    /// A block of producer ids went to `broker` (its registration `broker_epoch`): every id
    /// below `next` has been handed out, and no id is ever handed out twice.
    ProducerIds {
        broker: i32,
        broker_epoch: i64,
        next: i64,
    },
}

/// The full state of one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    pub topic: String,
    pub partition: i32,
    /// Assigned replicas; `replicas[0]` is the preferred leader.
    pub replicas: Vec<i32>,
    /// In-sync replicas, a non-empty subset of `replicas`, in `replicas` order.
    pub isr: Vec<i32>,
    /// [`NO_LEADER`] when no ISR member can lead.
    pub leader: i32,
    /// Bumped on every leader change (including to and from [`NO_LEADER`]).
    pub leader_epoch: i32,
    /// Bumped on every change of this record; the compare-and-set version of AlterPartition.
    pub partition_epoch: i32,
}

impl PartitionRecord {
    pub fn has_leader(&self) -> bool {
        self.leader != NO_LEADER
    }

    /// Partition 0 of topic "t" on replicas [1, 2, 3], for tables: partition epoch = leader
    /// epoch.
    #[cfg(test)]
    pub(crate) fn test_record(leader: i32, leader_epoch: i32, isr: &[i32]) -> Self {
        Self {
            topic: "t".into(),
            partition: 0,
            replicas: vec![1, 2, 3],
            isr: isr.to_vec(),
            leader,
            leader_epoch,
            partition_epoch: leader_epoch,
        }
    }
}

impl MetadataRecord {
    /// The JSON value stored in the metadata log.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain data (strings, integers, maps with string keys) cannot fail.
        serde_json::to_vec(self).expect("metadata records always serialise")
    }

    /// Parses a value read from the metadata log.
    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<MetadataRecord> {
        let id = Uuid::from_u128(0x1234_5678_9abc_def0_1122_3344_5566_7788);
        vec![
            MetadataRecord::RegisterBroker {
                id: 1,
                epoch: 7,
                host: "127.0.0.1".into(),
                port: 9092,
            },
            MetadataRecord::FenceBroker { id: 1, epoch: 7 },
            MetadataRecord::UnfenceBroker { id: 1, epoch: 7 },
            MetadataRecord::Topic {
                name: "orders".into(),
                id,
                configs: BTreeMap::from([("min.insync.replicas".into(), "2".into())]),
            },
            MetadataRecord::Partition(PartitionRecord {
                topic: "orders".into(),
                partition: 3,
                replicas: vec![1, 2, 3],
                isr: vec![1, 3],
                leader: NO_LEADER,
                leader_epoch: 4,
                partition_epoch: 9,
            }),
            MetadataRecord::RemoveTopic {
                name: "orders".into(),
                id,
            },
            MetadataRecord::AssignmentCursor { next: u32::MAX },
            MetadataRecord::ProducerIds {
                broker: 2,
                broker_epoch: 9,
                next: 2000,
            },
        ]
    }

    #[test]
    fn every_record_kind_round_trips_through_json() {
        for r in every_kind() {
            let bytes = r.encode();
            assert_eq!(MetadataRecord::decode(&bytes).unwrap(), r, "{r:?}");
        }
    }

    #[test]
    fn json_is_tagged_by_type() {
        let enc = |r: &MetadataRecord| String::from_utf8(r.encode()).unwrap();
        let all = every_kind();
        assert_eq!(enc(&all[1]), r#"{"type":"FenceBroker","id":1,"epoch":7}"#);
        assert_eq!(
            enc(&all[4]),
            r#"{"type":"Partition","topic":"orders","partition":3,"replicas":[1,2,3],"isr":[1,3],"leader":-1,"leader_epoch":4,"partition_epoch":9}"#
        );
        assert_eq!(
            enc(&all[6]),
            r#"{"type":"AssignmentCursor","next":4294967295}"#
        );
        assert_eq!(
            enc(&all[7]),
            r#"{"type":"ProducerIds","broker":2,"broker_epoch":9,"next":2000}"#
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"{}",
            br#"{"type":"Nope"}"#,
            br#"{"type":"FenceBroker","id":"x"}"#,
        ] {
            assert!(MetadataRecord::decode(bad).is_err());
        }
    }
}
