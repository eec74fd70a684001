//! Fetch limits and waits as Kafka defines them (KIP-74 and min_bytes).

use std::time::{Duration, Instant};

use kafka_protocol::messages::fetch_request::{FetchRequest, FetchTopic};
use kafka_protocol::messages::BrokerId;
use kafka_protocol::records::Compression;
use keel_tests::data::generate;
use keel_tests::raw::{consumer_fetch_partition, topic_name, RawConn};
use keel_tests::{BrokerOpts, TestBroker};

fn request(
    topic: &str,
    partitions: &[i32],
    max_bytes: i32,
    min_bytes: i32,
    max_wait_ms: i32,
) -> FetchRequest {
    let mut t = FetchTopic::default();
    t.topic = topic_name(topic);
    t.partitions = partitions
        .iter()
        .map(|&p| consumer_fetch_partition(p, 0, 1 << 20))
        .collect();
    let mut req = FetchRequest::default();
    req.replica_id = BrokerId(-1);
    req.max_wait_ms = max_wait_ms;
    req.min_bytes = min_bytes;
    req.max_bytes = max_bytes;
    req.session_epoch = -1;
    req.topics = vec![t];
    req
}

/// Record bytes per partition in a v12 fetch response.
fn sizes(c: &mut RawConn, req: &FetchRequest) -> Vec<usize> {
    let resp = c.request(12, req).unwrap();
    resp.responses[0]
        .partitions
        .iter()
        .map(|p| p.records.as_ref().map_or(0, |r| r.len()))
        .collect()
}

#[test]
fn only_the_first_batch_may_exceed_max_bytes() {
    let b = TestBroker::start(BrokerOpts::default());
    let mut c = RawConn::connect(b.kafka_addr()).unwrap();
    c.create_topic_ok("caps", 2).unwrap();
    for p in 0..2 {
        c.produce_ok(
            "caps",
            p,
            &generate("k", 20, 2000, 0, p as u64),
            Compression::None,
        )
        .unwrap();
    }
    let whole = sizes(&mut c, &request("caps", &[0, 1], 50 << 20, 1, 0));
    assert!(whole.iter().all(|&n| n > 10_000), "{whole:?}");
    // Room for the first partition's batch and a little more: the second batch does not fit.
    let capped = sizes(
        &mut c,
        &request("caps", &[0, 1], whole[0] as i32 + 100, 1, 0),
    );
    assert_eq!(capped, vec![whole[0], 0]);
    // A cap below the first batch still returns it whole, and nothing after it.
    let tiny = sizes(&mut c, &request("caps", &[0, 1], 10, 1, 0));
    assert_eq!(tiny, vec![whole[0], 0]);
}

#[test]
fn an_answer_is_full_once_a_batch_does_not_fit() {
    let b = TestBroker::start(BrokerOpts::default());
    let mut c = RawConn::connect(b.kafka_addr()).unwrap();
    c.create_topic_ok("full", 3).unwrap();
    for (p, n) in [(0, 20), (1, 20), (2, 1)] {
        c.produce_ok(
            "full",
            p,
            &generate("k", n, 2000, 0, p as u64),
            Compression::None,
        )
        .unwrap();
    }
    let whole = sizes(&mut c, &request("full", &[0, 1, 2], 50 << 20, 1, 0));
    assert!(whole[2] > 0 && whole[2] < whole[1], "{whole:?}");
    // Room after partition 0 for partition 2's small batch but not for partition 1's: the
    // answer stops at partition 1, as a full answer does; partition 2 comes in the next one.
    let cap = whole[0] + whole[2] + 100;
    let capped = sizes(&mut c, &request("full", &[0, 1, 2], cap as i32, 1, 0));
    assert_eq!(capped, vec![whole[0], 0, 0]);
    // A partition cap that refuses partition 1's batch leaves the answer open for the next.
    let mut req = request("full", &[0, 1, 2], 50 << 20, 1, 0);
    req.topics[0].partitions[1].partition_max_bytes = 10;
    let own_cap = sizes(&mut c, &req);
    assert_eq!(own_cap, vec![whole[0], 0, whole[2]]);
}

#[test]
fn min_bytes_zero_answers_without_waiting() {
    let b = TestBroker::start(BrokerOpts::default());
    let mut c = RawConn::connect(b.kafka_addr()).unwrap();
    c.create_topic_ok("idle", 1).unwrap();
    let started = Instant::now();
    assert_eq!(
        sizes(&mut c, &request("idle", &[0], 1 << 20, 0, 10_000)),
        vec![0]
    );
    // The long-poll would hold it for 10 s; min_bytes 0 means "answer now".
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
