//! keel-client against a real broker: produce with every acks mode over 3 partitions,
//! consume back keys, values and headers; ListOffsets; data survives a clean restart, and
//! every record acknowledged with acks=all survives kill -9.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_client::{
    Acks, Admin, ClientConfig, Consumer, ConsumerConfig, ConsumerRecord, Offset, Producer,
    ProducerConfig, ProducerRecord, RecordMetadata, TopicSpec,
};
use keel_tests::data::{generate, TestRecord};
use keel_tests::{runtime, wait_until, BrokerOpts, TestBroker};

const N: usize = 10_000;
const PARTITIONS: i32 = 3;
const CONSUME_TIMEOUT: Duration = Duration::from_secs(90);

fn client(b: &TestBroker) -> ClientConfig {
    ClientConfig::new(&b.bootstrap())
}

async fn create_topic(b: &TestBroker, name: &str) {
    let admin = Admin::new(client(b)).await.unwrap();
    admin
        .create_topics(&[TopicSpec {
            name: name.to_string(),
            partitions: PARTITIONS,
            replication_factor: 1,
            configs: vec![],
        }])
        .await
        .unwrap_or_else(|e| panic!("create topic {name}: {e}"));
}

fn producer_record(topic: &str, r: &TestRecord) -> ProducerRecord {
    let mut p = ProducerRecord::new(topic, Bytes::from(r.value.clone())).key(r.key.clone());
    for (k, v) in &r.headers {
        p = p.header(k.clone(), v.clone());
    }
    p
}

fn as_test_record(r: &ConsumerRecord) -> TestRecord {
    TestRecord {
        key: r.key.as_ref().map(|k| k.to_vec()).unwrap_or_default(),
        value: r.value.as_ref().map(|v| v.to_vec()).unwrap_or_default(),
        headers: r
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_ref().map(|v| v.to_vec()).unwrap_or_default(),
                )
            })
            .collect(),
    }
}

/// Sends `records` with `acks`, flushes, and returns each record's delivery metadata.
async fn produce_all(
    b: &TestBroker,
    topic: &str,
    acks: Acks,
    records: &[TestRecord],
) -> Vec<RecordMetadata> {
    let config = ProducerConfig {
        acks,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client(b), config).await.unwrap();
    let mut futures = Vec::with_capacity(records.len());
    for r in records {
        futures.push(producer.send(producer_record(topic, r)).await.unwrap());
    }
    tokio::time::timeout(Duration::from_secs(60), producer.flush())
        .await
        .expect("flush within 60 s")
        .unwrap_or_else(|e| panic!("{topic} acks={acks:?}: flush reported {e}"));
    let mut delivered = Vec::with_capacity(futures.len());
    for (i, f) in futures.into_iter().enumerate() {
        let m = f
            .await
            .unwrap_or_else(|e| panic!("{topic} acks={acks:?}: record {i} failed: {e}"));
        delivered.push(m);
    }
    producer.close().await.unwrap();
    delivered
}

/// Reads every partition of `topic` from the beginning until at least `count` records
/// arrived.
async fn consume_all(b: &TestBroker, topic: &str, count: usize) -> Vec<ConsumerRecord> {
    let mut consumer = Consumer::new(client(b), ConsumerConfig::default())
        .await
        .unwrap();
    let parts = consumer.assign_all(topic, Offset::Earliest).await.unwrap();
    assert_eq!(parts.len(), PARTITIONS as usize, "{topic}: partitions");
    let start = Instant::now();
    let mut out = Vec::with_capacity(count);
    for _ in 0..100_000 {
        if out.len() >= count || start.elapsed() > CONSUME_TIMEOUT {
            break;
        }
        out.extend(consumer.poll().await.unwrap());
    }
    assert!(
        out.len() >= count,
        "{topic}: consumed {} of {count} records within {CONSUME_TIMEOUT:?}",
        out.len()
    );
    out
}

/// Each key once, values and headers as produced, offsets 0.. contiguous per partition in
/// produce order, and (when known) at the offsets the producer was told.
fn check(topic: &str, sent: &[TestRecord], delivered: &[RecordMetadata], got: &[ConsumerRecord]) {
    let mut by_key = BTreeMap::new();
    for r in got {
        let k = r.key.clone().expect("every record has a key");
        assert!(
            by_key.insert(k.clone(), r).is_none(),
            "{topic}: key {k:?} consumed twice"
        );
    }
    let mut next_offset = BTreeMap::new();
    for (i, want) in sent.iter().enumerate() {
        let r = by_key
            .get(&Bytes::from(want.key.clone()))
            .unwrap_or_else(|| panic!("{topic}: record {i} ({:?}) missing", want.key));
        assert_eq!(&as_test_record(r), want, "{topic}: record {i}");
        let expected = next_offset.entry(r.partition).or_insert(0i64);
        assert_eq!(
            r.offset, *expected,
            "{topic}: record {i} in partition {} out of produce order",
            r.partition
        );
        *expected += 1;
        if let Some(m) = delivered.get(i).filter(|m| m.offset >= 0) {
            assert_eq!(
                (m.partition, m.offset),
                (r.partition, r.offset),
                "{topic}: record {i} was acknowledged at another place"
            );
        }
    }
}

/// Latest offsets per partition, and checks that earliest is 0 everywhere.
async fn end_offsets(b: &TestBroker, topic: &str) -> Vec<i64> {
    let admin = Admin::new(client(b)).await.unwrap();
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        let earliest = admin
            .list_offsets(topic, p, Offset::Earliest)
            .await
            .unwrap();
        assert_eq!(earliest, 0, "{topic}/{p}: earliest offset");
        out.push(admin.list_offsets(topic, p, Offset::Latest).await.unwrap());
    }
    out
}

#[test]
fn round_trip_every_acks_mode_then_clean_restart() {
    let rt = runtime();
    let mut b = TestBroker::start(BrokerOpts::default());
    let modes = [
        ("acks-all", Acks::All),
        ("acks-1", Acks::Leader),
        ("acks-0", Acks::None),
    ];
    let mut expected = Vec::new();
    for (i, (topic, acks)) in modes.iter().enumerate() {
        let records: Vec<TestRecord> = generate(topic, N, 300, 2, i as u64);
        let (delivered, got, ends) = rt.block_on(async {
            create_topic(&b, topic).await;
            let delivered = produce_all(&b, topic, *acks, &records).await;
            let got = consume_all(&b, topic, N).await;
            (delivered, got, end_offsets(&b, topic).await)
        });
        check(topic, &records, &delivered, &got);
        assert_eq!(
            ends.iter().sum::<i64>(),
            N as i64,
            "{topic}: latest offsets {ends:?}"
        );
        assert!(
            ends.iter().filter(|&&e| e > 0).count() > 1,
            "{topic}: keys all went to one partition: {ends:?}"
        );
        expected.push((topic, records, delivered, ends));
    }

    let status = b.sigterm_and_wait();
    assert!(
        status.success(),
        "broker exited with {status} after SIGTERM"
    );
    b.restart();

    for (topic, records, delivered, ends) in &expected {
        let (got, after) = rt.block_on(async {
            (
                consume_all(&b, topic, N).await,
                end_offsets(&b, topic).await,
            )
        });
        check(topic, records, delivered, &got);
        assert_eq!(
            &after, ends,
            "{topic}: latest offsets changed over a restart"
        );
    }
}

#[test]
fn acknowledged_records_survive_kill_9() {
    let rt = runtime();
    let mut b = TestBroker::start(BrokerOpts::default());
    let topic = "durable";
    rt.block_on(create_topic(&b, topic));
    let records = Arc::new(generate(topic, 50_000, 200, 1, 42));
    let acked: Arc<Mutex<Vec<(usize, RecordMetadata)>>> = Arc::default();

    // Produce continuously; record every acknowledgement as it arrives.
    let producer = rt
        .block_on(Producer::new(client(&b), ProducerConfig::default()))
        .unwrap();
    // Delivery tasks, so that after the kill we wait for exactly those still in flight.
    let deliveries: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
    let sending = {
        let (producer, records, acked) = (producer.clone(), records.clone(), acked.clone());
        let deliveries = deliveries.clone();
        rt.spawn(async move {
            for (i, r) in records.iter().enumerate() {
                let Ok(f) = producer.send(producer_record(topic, r)).await else {
                    break;
                };
                let acked = acked.clone();
                deliveries.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(m) = f.await {
                        acked.lock().unwrap().push((i, m));
                    }
                }));
            }
        })
    };
    wait_until(
        "3,000 records are acknowledged",
        Duration::from_secs(60),
        || acked.lock().unwrap().len() >= 3_000,
    );
    b.kill9();
    let acked_at_kill = acked.lock().unwrap().len();
    // Stop producing: what was in flight may or may not have been written.
    sending.abort();
    drop(producer);
    // Every delivery still in flight ends now (acknowledged or failed with the connection).
    rt.block_on(async {
        let _ = sending.await;
        let pending = std::mem::take(&mut *deliveries.lock().unwrap());
        let all = async {
            for d in pending {
                let _ = d.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), all)
            .await
            .expect("in-flight deliveries end within 30 s of the kill");
    });
    let acked: Vec<(usize, RecordMetadata)> = acked.lock().unwrap().clone();
    assert!(acked.len() >= acked_at_kill);

    b.restart();
    // Records written but not yet acknowledged at the kill may survive too (the page cache
    // outlives the process) and become visible once the restarted broker has flushed them:
    // read at least up to the log end seen now.
    let ends = rt.block_on(end_offsets(&b, topic));
    let total: i64 = ends.iter().sum();
    let got = rt.block_on(consume_all(&b, topic, total as usize));
    let at: BTreeMap<(i32, i64), &ConsumerRecord> =
        got.iter().map(|r| ((r.partition, r.offset), r)).collect();
    let mut lost = Vec::new();
    for (i, m) in &acked {
        match at.get(&(m.partition, m.offset)) {
            Some(r) => assert_eq!(
                as_test_record(r),
                records[*i],
                "record {i} acknowledged at {}/{} reads back differently",
                m.partition,
                m.offset
            ),
            None => lost.push((*i, m.partition, m.offset)),
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged (acks=all) records lost after kill -9 (log ends {ends:?}), \
         e.g. (record, partition, offset) {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
}
