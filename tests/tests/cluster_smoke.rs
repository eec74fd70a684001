//! A controller and three brokers: a topic with replication factor 3 gets three replicas
//! and a leader per partition, 100 records produced with acks=all come back from a
//! consumer, and every broker's replicas reach the same log end offsets.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use keel_client::{
    Acks, Admin, ClientConfig, Consumer, ConsumerConfig, Offset, Producer, ProducerConfig,
    ProducerRecord, TopicSpec,
};
use keel_tests::{runtime, wait_until, ClusterOpts, TestCluster};

const TOPIC: &str = "smoke";
const PARTITIONS: i32 = 3;
const RECORDS: usize = 100;
const TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn replicated_topic_round_trip() {
    let cluster = TestCluster::start(ClusterOpts::default().brokers(3));
    assert_eq!(cluster.broker_ids(), [1, 2, 3]);
    let client = ClientConfig::new(&cluster.bootstrap());
    let rt = runtime();

    rt.block_on(async {
        let admin = Admin::new(client.clone()).await.unwrap();
        admin
            .create_topics(&[TopicSpec {
                name: TOPIC.to_string(),
                partitions: PARTITIONS,
                replication_factor: 3,
                configs: vec![],
            }])
            .await
            .unwrap_or_else(|e| panic!("create topic {TOPIC}: {e}"));
    });

    // The brokers learn the assignment from the controller: wait for it, then check it.
    wait_until(
        "every partition has a leader among 3 replicas",
        TIMEOUT,
        || {
            cluster.describe_topic(TOPIC).is_some_and(|d| {
                d.partitions.len() == PARTITIONS as usize
                    && d.partitions
                        .iter()
                        .all(|p| p.replicas.len() == 3 && p.replicas.contains(&p.leader))
            })
        },
    );
    let desc = cluster.describe_topic(TOPIC).expect("described just now");
    for p in &desc.partitions {
        let mut replicas = p.replicas.clone();
        replicas.sort_unstable();
        assert_eq!(replicas, [1, 2, 3], "partition {}: {p:?}", p.partition);
        assert!(
            p.isr.contains(&p.leader),
            "partition {}: {p:?}",
            p.partition
        );
        assert_eq!(cluster.leader_of(TOPIC, p.partition), Some(p.leader));
    }

    // Produce with acks=all; remember where each record was acknowledged.
    let acked: BTreeMap<(i32, i64), String> = rt.block_on(async {
        let config = ProducerConfig {
            acks: Acks::All,
            ..ProducerConfig::default()
        };
        let producer = Producer::new(client.clone(), config).await.unwrap();
        let mut deliveries = Vec::new();
        for i in 0..RECORDS {
            let value = format!("value-{i}");
            let record = ProducerRecord::new(TOPIC, value.clone()).key(format!("key-{i}"));
            deliveries.push((value, producer.send(record).await.unwrap()));
        }
        let mut acked = BTreeMap::new();
        for (value, delivery) in deliveries {
            let meta = delivery
                .await
                .unwrap_or_else(|e| panic!("{value}: not acknowledged: {e}"));
            assert!(acked.insert((meta.partition, meta.offset), value).is_none());
        }
        producer.close().await.unwrap();
        acked
    });
    assert_eq!(acked.len(), RECORDS);

    // Consume from the start of every partition; every acknowledged record comes back
    // at its acknowledged offset, and nothing else.
    let consumed: BTreeMap<(i32, i64), String> = rt.block_on(async {
        let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default())
            .await
            .unwrap();
        let partitions: Vec<i32> = (0..PARTITIONS).collect();
        consumer
            .assign(TOPIC, &partitions, Offset::Earliest)
            .await
            .unwrap();
        let mut consumed = BTreeMap::new();
        let start = Instant::now();
        for _ in 0..1_000 {
            if consumed.len() >= RECORDS || start.elapsed() > TIMEOUT {
                break;
            }
            for r in consumer.poll().await.unwrap() {
                let value = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default());
                consumed.insert((r.partition, r.offset), value.into_owned());
            }
        }
        consumed
    });
    assert_eq!(consumed, acked);

    // Followers replicate: every broker holds every partition up to the same end.
    let mut want = BTreeMap::new();
    for (partition, offset) in acked.keys() {
        let end = want.entry(*partition).or_insert(0);
        *end = (*end).max(offset + 1);
    }
    for id in cluster.broker_ids() {
        wait_until(
            &format!("broker {id}'s replicas reach log end offsets {want:?}"),
            TIMEOUT,
            || {
                want.iter()
                    .all(|(p, end)| cluster.replica_offsets(id, TOPIC, *p).leo == Some(*end))
            },
        );
    }
}
