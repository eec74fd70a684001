//! What a coordinator holds for the groups of one `__consumer_offsets` partition, built by
//! replaying that partition's records, and the pure rules over it (which offsets expire).

use super::machine::{Group, GroupConfig, GroupState};
use super::records::{self, CommittedOffset, Key, Record, RecordError};
use bytes::Bytes;
use kafka_protocol::messages::ConsumerProtocolSubscription;
use kafka_protocol::protocol::Decodable;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A committed offset and where its record is in the log (a later record wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Committed {
    pub(crate) value: CommittedOffset,
    pub(crate) log_offset: i64,
}

/// One group: its membership and its committed offsets.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) group: Group,
    pub(crate) offsets: BTreeMap<(String, i32), Committed>,
}

impl Entry {
    pub(crate) fn new(config: GroupConfig, now_wall: i64) -> Self {
        Entry {
            group: Group::new(config, now_wall),
            offsets: BTreeMap::new(),
        }
    }

    /// Applies a commit acknowledged at `log_offset`, unless a later one is already here.
    pub(crate) fn apply_commit(
        &mut self,
        topic: String,
        partition: i32,
        value: CommittedOffset,
        log_offset: i64,
    ) {
        let slot = self.offsets.entry((topic, partition));
        match slot {
            std::collections::btree_map::Entry::Occupied(mut o) => {
                if o.get().log_offset < log_offset {
                    o.insert(Committed { value, log_offset });
                }
            }
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(Committed { value, log_offset });
            }
        }
    }

    /// Topics the group's consumer members subscribe to (protocol type `consumer`); `None`
    /// if the group is not a consumer group or a subscription cannot be read.
    pub(crate) fn subscribed_topics(&self) -> Option<BTreeSet<String>> {
        if self.group.protocol_type() != Some("consumer") {
            return None;
        }
        let protocol = self.group.protocol()?;
        let mut topics = BTreeSet::new();
        for m in self.group.members() {
            let mut meta: Bytes = m.metadata(protocol);
            if meta.len() < 2 {
                return None;
            }
            let version = i16::from_be_bytes([meta[0], meta[1]]);
            let _ = bytes::Buf::get_i16(&mut meta);
            let sub = ConsumerProtocolSubscription::decode(&mut meta, version.clamp(0, 3)).ok()?;
            topics.extend(sub.topics.into_iter().map(|t| t.to_string()));
        }
        Some(topics)
    }
}

/// A group as replayed so far: its last metadata record and its committed offsets.
type Replayed = (
    Option<super::machine::GroupSnapshot>,
    BTreeMap<(String, i32), Committed>,
);

/// Replays records of an offsets partition into groups. Records must come in log order.
#[derive(Debug, Default)]
pub(crate) struct Loader {
    groups: HashMap<String, Replayed>,
    pub(crate) records: u64,
    pub(crate) skipped: u64,
}

impl Loader {
    /// Applies one record at `offset`. A record that cannot be read is skipped and counted
    /// (it was not written by a coordinator of this format; Kafka skips them too).
    pub(crate) fn apply(
        &mut self,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<(), RecordError> {
        self.records += 1;
        let Some(key) = key else {
            self.skipped += 1;
            return Ok(());
        };
        let record = match records::decode(key, value) {
            Ok(r) => r,
            Err(e) => {
                self.skipped += 1;
                return Err(e);
            }
        };
        match record {
            Record::Offset(
                Key::Offset {
                    group,
                    topic,
                    partition,
                },
                value,
            ) => {
                let entry = self.groups.entry(group).or_default();
                match value {
                    Some(value) => {
                        entry.1.insert(
                            (topic, partition),
                            Committed {
                                value,
                                log_offset: offset,
                            },
                        );
                    }
                    None => {
                        entry.1.remove(&(topic, partition));
                    }
                }
            }
            Record::Group(Key::Group { group }, value) => match value {
                Some(snap) => self.groups.entry(group).or_default().0 = Some(snap),
                // A group tombstone deletes the group and every offset written before it.
                None => {
                    self.groups.remove(&group);
                }
            },
            Record::Offset(Key::Group { .. }, _) | Record::Group(Key::Offset { .. }, _) => {
                unreachable!("decode pairs each key kind with its own record kind")
            }
        }
        Ok(())
    }

    /// The loaded groups, each restored as of `now` (members get a full session).
    pub(crate) fn finish(
        self,
        config: GroupConfig,
        now: u64,
        now_wall: i64,
    ) -> HashMap<String, Entry> {
        self.groups
            .into_iter()
            .filter(|(_, (snap, offsets))| snap.is_some() || !offsets.is_empty())
            .map(|(id, (snap, offsets))| {
                let group = match snap {
                    Some(s) => Group::restore(config, s, now),
                    None => Group::new(config, now_wall),
                };
                (id, Entry { group, offsets })
            })
            .collect()
    }
}

/// What the retention check deletes from one group: offsets older than `retention_ms`
/// (counted from when the group became empty, or from the commit for a group that never had
/// members), and the group itself once it is empty and has no offsets left.
pub(crate) fn expired(
    entry: &Entry,
    now_wall: i64,
    retention_ms: i64,
) -> (Vec<(String, i32)>, bool) {
    let state = entry.group.state();
    if state != GroupState::Empty {
        return (Vec::new(), false);
    }
    let empty_since = entry.group.state_timestamp();
    let standalone = entry.group.protocol_type().is_none() && entry.group.generation() == 0;
    let gone: Vec<(String, i32)> = entry
        .offsets
        .iter()
        .filter(|(_, c)| {
            let base = if standalone || empty_since < 0 {
                c.value.commit_timestamp
            } else {
                empty_since.max(c.value.commit_timestamp)
            };
            now_wall.saturating_sub(base) >= retention_ms
        })
        .map(|(k, _)| k.clone())
        .collect();
    let group_gone = gone.len() == entry.offsets.len();
    (gone, group_gone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::machine::GroupSnapshot;
    use crate::group::records::{group_key, group_value, offset_key, offset_value};

    fn commit(offset: i64, ts: i64) -> CommittedOffset {
        CommittedOffset {
            offset,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp: ts,
        }
    }

    #[test]
    fn replay_keeps_the_latest_record_per_key_and_honours_tombstones() {
        let mut l = Loader::default();
        let k = offset_key("g", "t", 0);
        l.apply(0, Some(&k), Some(&offset_value(&commit(5, 1))))
            .unwrap();
        l.apply(1, Some(&k), Some(&offset_value(&commit(9, 2))))
            .unwrap();
        let k1 = offset_key("g", "t", 1);
        l.apply(2, Some(&k1), Some(&offset_value(&commit(3, 2))))
            .unwrap();
        l.apply(3, Some(&k1), None).unwrap();
        let snap = GroupSnapshot {
            protocol_type: "consumer".into(),
            generation: 4,
            ..GroupSnapshot::default()
        };
        l.apply(4, Some(&group_key("g")), Some(&group_value(&snap)))
            .unwrap();
        // A deleted group: its offsets go with it.
        l.apply(
            5,
            Some(&offset_key("gone", "t", 0)),
            Some(&offset_value(&commit(1, 1))),
        )
        .unwrap();
        l.apply(6, Some(&group_key("gone")), None).unwrap();
        // Damage is skipped, not fatal.
        assert!(l.apply(7, Some(&[0, 7]), None).is_err());
        assert!(l.apply(8, None, None).is_ok());
        assert_eq!((l.records, l.skipped), (9, 2));

        let groups = l.finish(GroupConfig::default(), 0, 0);
        assert_eq!(groups.len(), 1);
        let g = &groups["g"];
        assert_eq!(g.group.generation(), 4);
        assert_eq!(g.group.state(), GroupState::Empty);
        assert_eq!(g.offsets.len(), 1);
        let c = &g.offsets[&("t".to_string(), 0)];
        assert_eq!((c.value.offset, c.log_offset), (9, 1));
    }

    #[test]
    fn a_later_commit_wins_whatever_order_acknowledgements_arrive_in() {
        let mut e = Entry::new(GroupConfig::default(), 0);
        e.apply_commit("t".into(), 0, commit(20, 0), 11);
        e.apply_commit("t".into(), 0, commit(10, 0), 10);
        assert_eq!(e.offsets[&("t".to_string(), 0)].value.offset, 20);
    }

    #[test]
    fn retention_table() {
        const H: i64 = 3_600_000;
        let mut standalone = Entry::new(GroupConfig::default(), 0);
        standalone.apply_commit("t".into(), 0, commit(1, 0), 1);
        standalone.apply_commit("t".into(), 1, commit(1, 5 * H), 2);
        let (gone, group_gone) = expired(&standalone, 7 * H, 4 * H);
        assert_eq!(gone, vec![("t".to_string(), 0)]);
        assert!(!group_gone);
        let (gone, group_gone) = expired(&standalone, 10 * H, 4 * H);
        assert_eq!(gone.len(), 2);
        assert!(group_gone);

        // A consumer group emptied at 6 h: its old commits count from then.
        let snap = GroupSnapshot {
            protocol_type: "consumer".into(),
            generation: 3,
            state_timestamp: 6 * H,
            ..GroupSnapshot::default()
        };
        let mut emptied = Entry {
            group: Group::restore(GroupConfig::default(), snap, 0),
            offsets: BTreeMap::new(),
        };
        emptied.apply_commit("t".into(), 0, commit(1, 0), 1);
        assert!(expired(&emptied, 9 * H, 4 * H).0.is_empty());
        assert_eq!(expired(&emptied, 10 * H, 4 * H).0.len(), 1);

        // An empty group without offsets goes at the first check.
        let bare = Entry::new(GroupConfig::default(), 0);
        assert_eq!(expired(&bare, 0, 4 * H), (vec![], true));
    }
}
