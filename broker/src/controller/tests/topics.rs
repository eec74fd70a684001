//! create_topic, delete_topic and alter_partition.

use super::*;
use crate::controller::*;

use std::collections::BTreeMap;

// ---- topics ---------------------------------------------------------------------------

fn assignment(h: &Harness, topic: &str) -> Vec<Vec<i32>> {
    h.image()
        .topic(topic)
        .unwrap()
        .partitions
        .iter()
        .map(|p| p.replicas.clone())
        .collect()
}

#[test]
fn create_topic_spreads_replicas_round_robin_with_a_rotating_start() {
    let mut h = Harness::cluster(3);
    let records = h.create("a", 4, 2);
    assert!(matches!(&records[0], MetadataRecord::Topic { name, .. } if name == "a"));
    assert_eq!(
        records.last(),
        Some(&MetadataRecord::AssignmentCursor { next: 4 })
    );
    h.create("b", 3, 3);
    h.create("c", 2, 1);
    println!("topic partition replicas    leader isr");
    for t in ["a", "b", "c"] {
        for p in &h.image().topic(t).unwrap().partitions {
            println!(
                "{t:<5} {:<9} {:<11} {:<6} {:?}",
                p.partition,
                format!("{:?}", p.replicas),
                p.leader,
                p.isr
            );
        }
    }
    assert_eq!(
        assignment(&h, "a"),
        vec![vec![1, 2], vec![2, 3], vec![3, 1], vec![1, 2]]
    );
    assert_eq!(
        assignment(&h, "b"),
        vec![vec![2, 3, 1], vec![3, 1, 2], vec![1, 2, 3]]
    );
    assert_eq!(assignment(&h, "c"), vec![vec![2], vec![3]]);
    assert_eq!(h.image().assignment_cursor(), 9);
    for p in h.image().partitions() {
        assert_eq!(
            (p.leader, &p.isr, p.leader_epoch, p.partition_epoch),
            (p.replicas[0], &p.replicas, 0, 0)
        );
    }
    // Leaders are spread evenly over the brokers.
    for id in 1..=3 {
        assert_eq!(h.image().partitions_led_by(id).count(), 3, "broker {id}");
    }
}

#[test]
fn create_topic_uses_only_unfenced_brokers_and_defaults() {
    let mut h = Harness::cluster(3);
    h.pass(10_000, &[1, 3]); // 2 expires
    let records = h.c.create_topic("d", None, None, BTreeMap::new()).unwrap();
    h.commit(records);
    let t = h.image().topic("d").unwrap();
    assert_eq!(t.partitions.len(), 1);
    assert_eq!(
        t.configs.get("min.insync.replicas").map(String::as_str),
        Some("1")
    );
    h.create("e", 4, 2);
    assert_eq!(
        assignment(&h, "e"),
        vec![vec![3, 1], vec![1, 3], vec![3, 1], vec![1, 3]]
    );
    let explicit = BTreeMap::from([("min.insync.replicas".to_string(), "2".to_string())]);
    let records =
        h.c.create_topic("f", Some(1), Some(2), explicit.clone())
            .unwrap();
    assert!(matches!(&records[0], MetadataRecord::Topic { configs, .. } if *configs == explicit));
}

#[test]
fn create_topic_errors() {
    let mut h = Harness::cluster(3);
    h.create("taken", 1, 1);
    h.pass(10_000, &[1, 2]); // 3 expires: two unfenced brokers
    let bad_config = BTreeMap::from([("retention.ms".to_string(), "soon".to_string())]);
    let unknown_config = BTreeMap::from([("no.such".to_string(), "1".to_string())]);
    let none = BTreeMap::new;
    type Row = (
        &'static str,
        Option<i32>,
        Option<i16>,
        BTreeMap<String, String>,
        i16,
    );
    let table: Vec<Row> = vec![
        ("", Some(1), Some(1), none(), 17),
        ("a b", Some(1), Some(1), none(), 17),
        ("__cluster_metadata", Some(1), Some(1), none(), 17),
        ("taken", Some(1), Some(1), none(), 36),
        ("x", Some(0), Some(1), none(), 37),
        ("x", Some(-2), Some(1), none(), 37),
        ("x", Some(MAX_PARTITIONS + 1), Some(1), none(), 37),
        ("x", Some(1), Some(0), none(), 38),
        ("x", Some(1), Some(-3), none(), 38),
        ("x", Some(1), Some(3), none(), 38),
        ("x", Some(1), Some(1), bad_config, 40),
        ("x", Some(1), Some(1), unknown_config, 40),
    ];
    for (name, partitions, rf, configs, code) in table {
        let e = h.c.create_topic(name, partitions, rf, configs).unwrap_err();
        assert_eq!(e.code(), code, "{name:?} {partitions:?} {rf:?}: {e}");
    }
    assert_eq!(
        h.c.create_topic("x", Some(1), Some(3), none()).unwrap_err(),
        ControllerError::InvalidReplicationFactor {
            factor: 3,
            brokers: 2
        }
    );
    assert!(h.c.create_topic("x", Some(1), Some(2), none()).is_ok());
}

#[test]
fn delete_topic_and_recreate_under_a_new_id() {
    let mut h = Harness::cluster(2);
    assert_eq!(
        h.c.delete_topic("t").unwrap_err(),
        ControllerError::UnknownTopic("t".into())
    );
    assert_eq!(h.c.delete_topic("t").unwrap_err().code(), 3);
    h.create("t", 2, 2);
    let id = h.image().topic("t").unwrap().id;
    let records = h.c.delete_topic("t").unwrap();
    assert_eq!(
        records,
        vec![MetadataRecord::RemoveTopic {
            name: "t".into(),
            id
        }]
    );
    h.commit(records);
    assert!(h.image().topic("t").is_none());
    assert!(h.image().topic_by_id(id).is_none());
    assert_eq!(h.image().partitions_with_replica(1).count(), 0);
    h.create("t", 1, 1);
    let again = h.image().topic("t").unwrap().id;
    assert_ne!(again, id);
    assert_eq!(h.image().topic_by_id(again).unwrap().name, "t");
}

// ---- alter_partition ------------------------------------------------------------------

#[test]
fn alter_partition_is_a_compare_and_set() {
    let mut h = Harness::cluster(4);
    h.create("t", 1, 3); // replicas [1, 2, 3], leader 1
    let (_, records) = h.c.alter_partition(&h.alter("t", 1, &[1, 2])).unwrap();
    h.commit(records); // isr [1, 2], partition epoch 1
    h.pass(10_000, &[1, 2, 4]); // 3 expires (not in the isr: nothing else changes)
    let cur = h.p("t", 0);
    assert_eq!(cur, part(&[1, 2, 3], &[1, 2], 1, 0, 1));
    let ok = h.alter("t", 1, &[1, 2]);
    let with = |f: &dyn Fn(&mut AlterPartitionRequest)| {
        let mut r = ok.clone();
        f(&mut r);
        r
    };
    let e3 = h.epoch(3);
    let table: Vec<(&str, AlterPartitionRequest, i16)> = vec![
        ("stale broker epoch", with(&|r| r.broker_epoch -= 1), 77),
        ("unregistered broker", with(&|r| r.broker_id = 9), 77),
        ("unknown topic", with(&|r| r.topic = "nope".into()), 3),
        ("unknown partition", with(&|r| r.partition = 1), 3),
        ("negative partition", with(&|r| r.partition = -1), 3),
        ("older leader epoch", with(&|r| r.leader_epoch -= 1), 74),
        ("newer leader epoch", with(&|r| r.leader_epoch += 1), 75),
        (
            "not the leader",
            with(&|r| {
                r.broker_id = 2;
                r.broker_epoch = h.epoch(2)
            }),
            74,
        ),
        (
            "older partition epoch",
            with(&|r| r.partition_epoch -= 1),
            95,
        ),
        (
            "newer partition epoch",
            with(&|r| r.partition_epoch += 1),
            95,
        ),
        (
            "isr without the leader",
            with(&|r| r.new_isr = vec![(2, h.epoch(2))]),
            42,
        ),
        (
            "member not a replica",
            with(&|r| r.new_isr.push((4, h.epoch(4)))),
            42,
        ),
        (
            "duplicate member",
            with(&|r| r.new_isr.push((2, h.epoch(2)))),
            42,
        ),
        ("new member fenced", with(&|r| r.new_isr.push((3, e3))), 107),
    ];
    for (name, req, code) in table {
        let e = h.c.alter_partition(&req).unwrap_err();
        assert_eq!(e.code(), code, "{name}: {e}");
    }

    // 3 comes back under a new epoch: its old epoch is ineligible, the new one is fine.
    h.register(3);
    h.heartbeat(3);
    let stale = with(&|r| r.new_isr.push((3, e3)));
    assert_eq!(h.c.alter_partition(&stale).unwrap_err().code(), 107);

    // Unchanged isr (in any order): the current record and nothing to write.
    let same = with(&|r| r.new_isr.reverse());
    assert_eq!(h.c.alter_partition(&same).unwrap(), (cur.clone(), vec![]));

    // Expand: stored in replica order, partition epoch + 1, leader epoch unchanged.
    let expand = h.alter("t", 1, &[3, 1, 2]);
    let (next, records) = h.c.alter_partition(&expand).unwrap();
    assert_eq!(next, part(&[1, 2, 3], &[1, 2, 3], 1, 0, 2));
    assert_eq!(records, vec![MetadataRecord::Partition(next.clone())]);
    h.commit(records);
    // The same request again is now a stale partition epoch.
    assert_eq!(h.c.alter_partition(&expand).unwrap_err().code(), 95);
    // Shrink to the leader alone; existing members need no epoch check.
    let mut shrink = h.alter("t", 1, &[1]);
    shrink.new_isr[0].1 = h.epoch(1);
    let (next, records) = h.c.alter_partition(&shrink).unwrap();
    assert_eq!(next, part(&[1, 2, 3], &[1], 1, 0, 3));
    h.commit(records);
}
