//! Partition assignors of the classic group protocol, run by the group's leader member:
//! `range` (Kafka's default: each topic's partitions split into consecutive ranges) and
//! `cooperative-sticky` (balanced, keeps partitions where they are, and never hands a
//! partition straight from one member to another: it is revoked in one rebalance and
//! assigned in the next, KIP-429). Pure functions, with their wire encoding.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::{
    ConsumerProtocolAssignment, TopicPartition as AssignedPartitions,
};
use kafka_protocol::messages::consumer_protocol_subscription::{
    ConsumerProtocolSubscription, TopicPartition as OwnedPartitions,
};
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use std::collections::{BTreeMap, BTreeSet};

/// A topic and partition.
pub type TopicPartition = (String, i32);

/// How the group's leader divides partitions among members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignor {
    /// `range`: per topic, consecutive partitions to members in member-id order.
    Range,
    /// `cooperative-sticky`: balanced and sticky, moves partitions in two rebalances.
    CooperativeSticky,
}

impl Assignor {
    /// The protocol name members announce.
    pub fn name(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::CooperativeSticky => "cooperative-sticky",
        }
    }

    /// The assignor of a protocol name.
    pub fn from_name(name: &str) -> Option<Assignor> {
        match name {
            "range" => Some(Assignor::Range),
            "cooperative-sticky" => Some(Assignor::CooperativeSticky),
            _ => None,
        }
    }

    /// Whether members keep fetching what they own during a rebalance.
    pub fn is_cooperative(self) -> bool {
        self == Assignor::CooperativeSticky
    }
}

/// One member's subscription, as the leader sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    pub topics: Vec<String>,
    /// What it owns now (cooperative protocol; empty otherwise).
    pub owned: Vec<TopicPartition>,
}

/// Encodes a subscription (ConsumerProtocolSubscription v1: with owned partitions).
pub fn encode_subscription(s: &Subscription) -> Bytes {
    let mut owned: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in &s.owned {
        owned.entry(t).or_default().push(*p);
    }
    let msg = ConsumerProtocolSubscription::default()
        .with_topics(
            s.topics
                .iter()
                .map(|t| StrBytes::from_string(t.clone()))
                .collect(),
        )
        .with_owned_partitions(
            owned
                .into_iter()
                .map(|(t, ps)| {
                    OwnedPartitions::default()
                        .with_topic(TopicName(StrBytes::from_string(t.to_string())))
                        .with_partitions(ps)
                })
                .collect(),
        );
    versioned(1, |b| msg.encode(b, 1))
}

/// Decodes a subscription of any version (other clients' members may use older ones).
pub fn decode_subscription(mut bytes: Bytes) -> Option<Subscription> {
    let version = take_version(&mut bytes)?;
    let msg = ConsumerProtocolSubscription::decode(&mut bytes, version.clamp(0, 3)).ok()?;
    Some(Subscription {
        topics: msg.topics.iter().map(|t| t.to_string()).collect(),
        owned: msg
            .owned_partitions
            .iter()
            .flat_map(|tp| tp.partitions.iter().map(|p| (tp.topic.0.to_string(), *p)))
            .collect(),
    })
}

/// Encodes an assignment (ConsumerProtocolAssignment v1).
pub fn encode_assignment(parts: &[TopicPartition]) -> Bytes {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in parts {
        by_topic.entry(t).or_default().push(*p);
    }
    let msg = ConsumerProtocolAssignment::default().with_assigned_partitions(
        by_topic
            .into_iter()
            .map(|(t, ps)| {
                AssignedPartitions::default()
                    .with_topic(TopicName(StrBytes::from_string(t.to_string())))
                    .with_partitions(ps)
            })
            .collect(),
    );
    versioned(1, |b| msg.encode(b, 1))
}

/// Decodes an assignment; an empty one (a member left out) is no partitions.
pub fn decode_assignment(mut bytes: Bytes) -> Option<Vec<TopicPartition>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let version = take_version(&mut bytes)?;
    let msg = ConsumerProtocolAssignment::decode(&mut bytes, version.clamp(0, 3)).ok()?;
    let mut out: Vec<TopicPartition> = msg
        .assigned_partitions
        .iter()
        .flat_map(|tp| tp.partitions.iter().map(|p| (tp.topic.0.to_string(), *p)))
        .collect();
    out.sort();
    Some(out)
}

/// A consumer protocol message behind its version, as the group protocol carries it.
fn versioned<E: std::fmt::Debug>(
    version: i16,
    encode: impl FnOnce(&mut BytesMut) -> Result<(), E>,
) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(version);
    encode(&mut b).expect("a consumer protocol message always encodes");
    b.freeze()
}

fn take_version(bytes: &mut Bytes) -> Option<i16> {
    (bytes.remaining() >= 2).then(|| bytes.get_i16())
}

/// Runs `assignor` for `members` (member id → subscription) over `partitions` (topic →
/// partition count). Every member gets an entry, possibly empty.
pub fn assign(
    assignor: Assignor,
    members: &BTreeMap<String, Subscription>,
    partitions: &BTreeMap<String, i32>,
) -> BTreeMap<String, Vec<TopicPartition>> {
    let mut out = match assignor {
        Assignor::Range => range(members, partitions),
        Assignor::CooperativeSticky => cooperative_sticky(members, partitions),
    };
    for v in out.values_mut() {
        v.sort();
    }
    out
}

fn range(
    members: &BTreeMap<String, Subscription>,
    partitions: &BTreeMap<String, i32>,
) -> BTreeMap<String, Vec<TopicPartition>> {
    let mut out: BTreeMap<String, Vec<TopicPartition>> =
        members.keys().map(|m| (m.clone(), Vec::new())).collect();
    for (topic, &count) in partitions {
        let subscribers: Vec<&String> = members
            .iter()
            .filter(|(_, s)| s.topics.contains(topic))
            .map(|(m, _)| m)
            .collect();
        if subscribers.is_empty() {
            continue;
        }
        let n = subscribers.len() as i32;
        let (each, extra) = (count / n, count % n);
        let mut next = 0;
        for (i, m) in subscribers.into_iter().enumerate() {
            let take = each + i32::from((i as i32) < extra);
            let slot = out.get_mut(m).expect("every member has an entry");
            slot.extend((next..next + take).map(|p| (topic.clone(), p)));
            next += take;
        }
    }
    out
}

fn cooperative_sticky(
    members: &BTreeMap<String, Subscription>,
    partitions: &BTreeMap<String, i32>,
) -> BTreeMap<String, Vec<TopicPartition>> {
    let eligible = |m: &Subscription, t: &str| m.topics.iter().any(|x| x == t);
    let all: Vec<TopicPartition> = partitions
        .iter()
        .flat_map(|(t, &n)| (0..n).map(move |p| (t.clone(), p)))
        .filter(|(t, _)| members.values().any(|s| eligible(s, t)))
        .collect();
    // Current owners, each partition at most once (a partition two members claim goes to
    // the first of them), and only where the member still subscribes.
    let mut owner: BTreeMap<TopicPartition, String> = BTreeMap::new();
    for (m, s) in members {
        for tp in &s.owned {
            if partitions.get(&tp.0).is_some_and(|&n| tp.1 < n) && eligible(s, &tp.0) {
                owner.entry(tp.clone()).or_insert_with(|| m.clone());
            }
        }
    }
    // Quotas: as even as possible; members that own more get the larger quotas first.
    let ids: Vec<&String> = members.keys().collect();
    let total = all.len();
    let (each, extra) = (total / ids.len().max(1), total % ids.len().max(1));
    let mut by_owned: Vec<&String> = ids.clone();
    by_owned.sort_by_key(|m| std::cmp::Reverse(owner.values().filter(|o| o == m).count()));
    let quota: BTreeMap<&String, usize> = by_owned
        .iter()
        .enumerate()
        .map(|(i, m)| (*m, each + usize::from(i < extra)))
        .collect();
    // Keep owned partitions up to the quota.
    let mut target: BTreeMap<String, BTreeSet<TopicPartition>> = ids
        .iter()
        .map(|m| ((*m).clone(), BTreeSet::new()))
        .collect();
    for (tp, m) in &owner {
        let set = target.get_mut(m).expect("owners are members");
        if set.len() < quota[m] {
            set.insert(tp.clone());
        }
    }
    // The rest to the members furthest below their quota, among those subscribed.
    let taken: BTreeSet<TopicPartition> = target.values().flatten().cloned().collect();
    for tp in all.into_iter().filter(|tp| !taken.contains(tp)) {
        let best = ids
            .iter()
            .filter(|m| eligible(&members[**m], &tp.0))
            .min_by_key(|m| {
                let have = target[**m].len();
                (have >= quota[*m], have, m.as_str())
            });
        if let Some(m) = best {
            target.get_mut(*m).expect("a member").insert(tp);
        }
    }
    // Cooperative: a partition still owned by another member is revoked there first and
    // assigned only in the next rebalance.
    target
        .into_iter()
        .map(|(m, set)| {
            let kept = set
                .into_iter()
                .filter(|tp| owner.get(tp).is_none_or(|o| *o == m))
                .collect();
            (m, kept)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (member, subscribed topics, owned partitions).
    type MemberSpec<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, i32)]);

    fn subs(specs: &[MemberSpec<'_>]) -> BTreeMap<String, Subscription> {
        specs
            .iter()
            .map(|(m, topics, owned)| {
                (
                    m.to_string(),
                    Subscription {
                        topics: topics.iter().map(|t| t.to_string()).collect(),
                        owned: owned.iter().map(|(t, p)| (t.to_string(), *p)).collect(),
                    },
                )
            })
            .collect()
    }

    fn parts(specs: &[(&str, i32)]) -> BTreeMap<String, i32> {
        specs.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    fn tps(specs: &[(&str, i32)]) -> Vec<TopicPartition> {
        specs.iter().map(|(t, p)| (t.to_string(), *p)).collect()
    }

    #[test]
    fn range_table() {
        let two = subs(&[("a", &["t", "u"], &[]), ("b", &["t", "u"], &[])]);
        let out = assign(Assignor::Range, &two, &parts(&[("t", 3), ("u", 2)]));
        assert_eq!(out["a"], tps(&[("t", 0), ("t", 1), ("u", 0)]));
        assert_eq!(out["b"], tps(&[("t", 2), ("u", 1)]));
        // A topic only one member subscribes to goes wholly to it.
        let mixed = subs(&[("a", &["t"], &[]), ("b", &["t", "u"], &[])]);
        let out = assign(Assignor::Range, &mixed, &parts(&[("t", 2), ("u", 2)]));
        assert_eq!(out["a"], tps(&[("t", 0)]));
        assert_eq!(out["b"], tps(&[("t", 1), ("u", 0), ("u", 1)]));
        // More members than partitions: some get nothing.
        let three = subs(&[("a", &["t"], &[]), ("b", &["t"], &[]), ("c", &["t"], &[])]);
        let out = assign(Assignor::Range, &three, &parts(&[("t", 2)]));
        assert_eq!((out["a"].len(), out["b"].len(), out["c"].len()), (1, 1, 0));
    }

    #[test]
    fn cooperative_sticky_balances_keeps_and_moves_in_two_steps() {
        let p = parts(&[("t", 6)]);
        // Fresh group: balanced.
        let fresh = subs(&[("a", &["t"], &[]), ("b", &["t"], &[])]);
        let first = assign(Assignor::CooperativeSticky, &fresh, &p);
        assert_eq!((first["a"].len(), first["b"].len()), (3, 3));
        // A third member joins: a and b keep two each, give one up, c gets nothing yet.
        let owned_a: Vec<(&str, i32)> = first["a"].iter().map(|(t, p)| (t.as_str(), *p)).collect();
        let owned_b: Vec<(&str, i32)> = first["b"].iter().map(|(t, p)| (t.as_str(), *p)).collect();
        let joined = subs(&[
            ("a", &["t"], &owned_a),
            ("b", &["t"], &owned_b),
            ("c", &["t"], &[]),
        ]);
        let second = assign(Assignor::CooperativeSticky, &joined, &p);
        assert_eq!((second["a"].len(), second["b"].len()), (2, 2));
        assert!(second["c"].is_empty(), "revoked first, assigned next round");
        assert!(
            second["a"].iter().all(|tp| first["a"].contains(tp)),
            "sticky"
        );
        // Next round (a and b own their two each): c gets the two freed partitions.
        let owned_a: Vec<(&str, i32)> = second["a"].iter().map(|(t, p)| (t.as_str(), *p)).collect();
        let owned_b: Vec<(&str, i32)> = second["b"].iter().map(|(t, p)| (t.as_str(), *p)).collect();
        let settled = subs(&[
            ("a", &["t"], &owned_a),
            ("b", &["t"], &owned_b),
            ("c", &["t"], &[]),
        ]);
        let third = assign(Assignor::CooperativeSticky, &settled, &p);
        assert_eq!(
            (third["a"].len(), third["b"].len(), third["c"].len()),
            (2, 2, 2)
        );
        let mut all: Vec<TopicPartition> = third.values().flatten().cloned().collect();
        all.sort();
        assert_eq!(
            all,
            tps(&[("t", 0), ("t", 1), ("t", 2), ("t", 3), ("t", 4), ("t", 5)])
        );
    }

    #[test]
    fn subscriptions_and_assignments_round_trip() {
        let s = Subscription {
            topics: vec!["t".into(), "u".into()],
            owned: tps(&[("t", 1), ("u", 0)]),
        };
        assert_eq!(decode_subscription(encode_subscription(&s)), Some(s));
        let a = tps(&[("t", 0), ("t", 2)]);
        assert_eq!(decode_assignment(encode_assignment(&a)), Some(a));
        assert_eq!(decode_assignment(Bytes::new()), Some(Vec::new()));
        assert_eq!(decode_subscription(Bytes::from_static(&[0])), None);
    }
}
