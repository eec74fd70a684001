//! Incremental fetch sessions (KIP-227) on the wire: a consumer's session answers only what
//! changed and refuses stale epochs and unknown ids; a long poll in a session wakes for any
//! partition it holds; and followers whose sessions keep being evicted still replicate every
//! acknowledged record.

use std::time::{Duration, Instant};

use kafka_protocol::messages::fetch_request::{FetchRequest, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::fetch_response::FetchResponse;
use kafka_protocol::messages::BrokerId;
use kafka_protocol::records::Compression;
use kafka_protocol::ResponseError;
use keel_client::{Acks, ClientConfig, Producer, ProducerConfig, ProducerRecord};
use keel_tests::data::generate;
use keel_tests::inspect::metric_sum;
use keel_tests::raw::{consumer_fetch_partition, topic_name, RawConn};
use keel_tests::{poll_until, runtime, BrokerOpts, ClusterOpts, TestBroker, TestCluster};

const TOPIC: &str = "sessions";

/// A consumer fetch (v12, topics by name) of `(partition, offset)` in session `id`/`epoch`.
fn fetch(
    id: i32,
    epoch: i32,
    parts: &[(i32, i64)],
    forget: &[i32],
    min_bytes: i32,
) -> FetchRequest {
    let mut req = FetchRequest::default();
    req.replica_id = BrokerId(-1);
    req.max_wait_ms = 10_000;
    req.min_bytes = min_bytes;
    req.max_bytes = 50 << 20;
    req.session_id = id;
    req.session_epoch = epoch;
    if !parts.is_empty() {
        let mut t = FetchTopic::default();
        t.topic = topic_name(TOPIC);
        t.partitions = parts
            .iter()
            .map(|&(p, offset)| consumer_fetch_partition(p, offset, 1 << 20))
            .collect();
        req.topics = vec![t];
    }
    if !forget.is_empty() {
        let mut f = ForgottenTopic::default();
        f.topic = topic_name(TOPIC);
        f.partitions = forget.to_vec();
        req.forgotten_topics_data = vec![f];
    }
    req
}

/// (partition, record bytes, high watermark) of every partition in an answer.
fn answered(resp: &FetchResponse) -> Vec<(i32, usize, i64)> {
    resp.responses
        .iter()
        .flat_map(|t| &t.partitions)
        .map(|p| {
            let bytes = p.records.as_ref().map_or(0, |r| r.len());
            (p.partition_index, bytes, p.high_watermark)
        })
        .collect()
}

/// Fetch requests long-polling on the broker whose metrics listen at `addr`.
fn fetches_waiting(addr: std::net::SocketAddr) -> f64 {
    let text = runtime()
        .block_on(keel::cmd::cluster::scrape_metrics(
            addr,
            Duration::from_secs(5),
        ))
        .unwrap_or_default();
    metric_sum(&text, "keel_fetch_purgatory_requests")
}

fn produce_one(c: &mut RawConn, partition: i32, seed: u64) {
    c.produce_ok(
        TOPIC,
        partition,
        &generate("k", 1, 100, 0, seed),
        Compression::None,
    )
    .unwrap();
}

#[test]
fn a_consumer_session_answers_only_what_changed() {
    let b = TestBroker::start(BrokerOpts::default());
    let mut c = RawConn::connect(b.kafka_addr()).unwrap();
    let mut producer = RawConn::connect(b.kafka_addr()).unwrap();
    c.create_topic_ok(TOPIC, 3).unwrap();
    for p in 0..3 {
        produce_one(&mut producer, p, p as u64);
    }

    // A full fetch with epoch 0 opens a session and answers every partition.
    let full = c
        .request(12, &fetch(0, 0, &[(0, 0), (1, 0), (2, 0)], &[], 1))
        .unwrap();
    assert_eq!(full.error_code, 0);
    let id = full.session_id;
    assert!(id > 0, "a session id: {full:?}");
    let parts = answered(&full);
    assert_eq!(parts.len(), 3);
    assert!(
        parts.iter().all(|&(_, bytes, hw)| bytes > 0 && hw == 1),
        "{parts:?}"
    );

    // Moving every position to the end: nothing new, so nothing in the answer.
    let moved = c
        .request(12, &fetch(id, 1, &[(0, 1), (1, 1), (2, 1)], &[], 0))
        .unwrap();
    assert_eq!((moved.error_code, moved.session_id), (0, id));
    assert_eq!(answered(&moved), vec![]);

    // Records on partition 1: an empty incremental request answers partition 1 alone.
    produce_one(&mut producer, 1, 10);
    let news = c.request(12, &fetch(id, 2, &[], &[], 1)).unwrap();
    let parts = answered(&news);
    assert_eq!(parts.len(), 1, "{parts:?}");
    assert_eq!((parts[0].0, parts[0].2), (1, 2));
    assert!(parts[0].1 > 0);

    // The same epoch again: refused, no partitions, and the session is unharmed.
    let stale = c.request(12, &fetch(id, 2, &[], &[], 0)).unwrap();
    assert_eq!(
        stale.error_code,
        ResponseError::InvalidFetchSessionEpoch.code()
    );
    assert!(stale.responses.is_empty());

    // Forget partition 0; records there no longer reach this session.
    let forgot = c.request(12, &fetch(id, 3, &[(1, 2)], &[0], 0)).unwrap();
    assert_eq!(forgot.error_code, 0);
    assert_eq!(answered(&forgot), vec![]);
    produce_one(&mut producer, 0, 20);
    produce_one(&mut producer, 2, 21);
    let after = c.request(12, &fetch(id, 4, &[], &[], 1)).unwrap();
    let parts: Vec<i32> = answered(&after).iter().map(|p| p.0).collect();
    assert_eq!(parts, vec![2]);

    // Unknown ids are refused; epoch -1 closes the session.
    let unknown = c.request(12, &fetch(id ^ 0x5555, 1, &[], &[], 0)).unwrap();
    assert_eq!(
        unknown.error_code,
        ResponseError::FetchSessionIdNotFound.code()
    );
    let closing = c.request(12, &fetch(id, -1, &[(1, 0)], &[], 0)).unwrap();
    assert_eq!((closing.error_code, closing.session_id), (0, 0));
    assert_eq!(
        answered(&closing).len(),
        1,
        "a sessionless fetch answers what it names"
    );
    let closed = c.request(12, &fetch(id, 5, &[], &[], 0)).unwrap();
    assert_eq!(
        closed.error_code,
        ResponseError::FetchSessionIdNotFound.code()
    );

    // Before v7 there are no sessions: every fetch is full.
    let old = c.request(6, &fetch(0, -1, &[(0, 0)], &[], 0)).unwrap();
    assert_eq!(old.session_id, 0);
    assert_eq!(answered(&old).len(), 1);

    let metrics = runtime()
        .block_on(keel::cmd::cluster::scrape_metrics(
            b.metrics_addr(),
            Duration::from_secs(5),
        ))
        .unwrap();
    assert!(metric_sum(&metrics, "keel_fetch_requests_total{kind=\"incremental\"}") >= 4.0);
    assert!(metric_sum(&metrics, "keel_fetch_requests_total{kind=\"refused\"}") >= 3.0);
}

/// A session of 100 partitions (more than the broker's wake-up shards, so the fetch
/// watches shards, not partitions).
#[test]
fn a_long_poll_in_a_session_wakes_for_any_partition_it_holds() {
    let b = TestBroker::start(BrokerOpts::default());
    let mut c = RawConn::connect(b.kafka_addr()).unwrap();
    c.create_topic_ok(TOPIC, 100).unwrap();
    let all: Vec<(i32, i64)> = (0..100).map(|p| (p, 0)).collect();
    let full = c.request(12, &fetch(0, 0, &all, &[], 0)).unwrap();
    let id = full.session_id;
    assert!(id > 0);
    // Partitions already read, at their new position (1): the next request says so.
    let mut read: Vec<(i32, i64)> = Vec::new();
    for (epoch, partition) in [(1, 2), (2, 77), (3, 99)] {
        let addr = b.kafka_addr();
        let metrics = b.metrics_addr();
        let producer = std::thread::spawn(move || {
            // Produce once the fetch below is long-polling.
            let waiting = poll_until(Duration::from_secs(10), || fetches_waiting(metrics) >= 1.0);
            assert!(waiting, "the fetch never waited");
            let mut p = RawConn::connect(addr).unwrap();
            produce_one(&mut p, partition, 7);
        });
        // The session's partition gets a record while the fetch waits.
        let started = Instant::now();
        let woke = c.request(12, &fetch(id, epoch, &read, &[], 1)).unwrap();
        producer.join().unwrap();
        read = vec![(partition, 1)];
        let parts = answered(&woke);
        assert_eq!(parts.len(), 1, "{parts:?}");
        assert_eq!(parts[0].0, partition);
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "answered when the record came, not at the 10 s deadline: {:?}",
            started.elapsed()
        );
    }
}

/// One session slot per broker, and any session not used this millisecond may be evicted:
/// the two followers of each leader keep evicting each other's session, so most of their
/// fetches are refused and start over with a full fetch. Every acknowledged record still
/// reaches every replica.
#[test]
fn followers_whose_sessions_are_evicted_resync_with_full_fetches() {
    let _serial = keel_tests::serial();
    let cluster = TestCluster::start(
        ClusterOpts::default()
            .brokers(3)
            .set("max.incremental.fetch.session.cache.slots", "1")
            .set("min.incremental.fetch.session.eviction.ms", "0")
            .set("min.insync.replicas", "2"),
    );
    cluster.create_replicated_topic(TOPIC, 3, Duration::from_secs(30));
    let bootstrap = cluster.bootstrap();
    let acked = runtime().block_on(async {
        let mut client = ClientConfig::new(&bootstrap);
        client.request_timeout = Duration::from_secs(15);
        let config = ProducerConfig {
            acks: Acks::All,
            request_timeout: Duration::from_secs(15),
            ..ProducerConfig::default()
        };
        let producer = Producer::new(client, config).await.unwrap();
        let mut acked = 0usize;
        for round in 0..20 {
            let mut pending = Vec::new();
            for i in 0..50 {
                let record = ProducerRecord::new(TOPIC, format!("v{round}-{i}"))
                    .key(format!("k{i}"))
                    .partition(i % 3);
                pending.push(producer.send(record).await.unwrap());
            }
            for d in pending {
                d.await.unwrap();
                acked += 1;
            }
        }
        producer.close().await.unwrap();
        acked
    });
    assert_eq!(acked, 1_000);
    let mut last = None;
    let synced = poll_until(Duration::from_secs(30), || {
        let out = cluster.keel_check(TOPIC, &["--timeout-ms", "3000"]);
        let ok = out.success();
        last = Some(out);
        ok
    });
    assert!(synced, "replicas not in sync: {:?}", last);
    // A follower learns the final high watermark in its next answer (within a long poll).
    let mut seen = String::new();
    let converged = poll_until(Duration::from_secs(15), || {
        seen.clear();
        let mut ok = true;
        for id in cluster.broker_ids() {
            let offsets: Vec<_> = (0..3)
                .map(|p| cluster.replica_offsets(id, TOPIC, p))
                .collect();
            let hw: i64 = offsets.iter().map(|o| o.hw.unwrap_or(0)).sum();
            ok &= hw == 1_000 && offsets.iter().all(|o| o.leo == o.hw);
            seen.push_str(&format!("broker {id}: {offsets:?}\n"));
        }
        ok
    });
    assert!(
        converged,
        "every replica at LEO == HW, 1,000 records in all:\n{seen}"
    );
    let mut evictions = 0.0;
    let mut refused = 0.0;
    for id in cluster.broker_ids() {
        let m = cluster.scrape_metrics(id);
        evictions += metric_sum(&m, "keel_fetch_session_evictions_total");
        refused += metric_sum(&m, "keel_fetch_requests_total{kind=\"refused\"}");
    }
    assert!(evictions > 0.0, "the test meant sessions to be evicted");
    assert!(
        refused > 0.0,
        "evicted followers were refused and started over"
    );
}
