//! The idempotent producer against real brokers: a retry across a leader failover is written
//! once; a restarted broker (kill -9 or clean) still recognises a retry; bad producer
//! batches are refused with the right code and nothing appended; DescribeProducers and
//! `keel topic describe --producers` show the state.

use std::collections::BTreeMap;
use std::time::Duration;

use keel_client::{
    Acks, ClientConfig, Consumer, ConsumerConfig, Offset, Producer, ProducerConfig, ProducerRecord,
};
use keel_protocol::encode::ProducerIds;
use keel_tests::raw::{codes, RawConn};
use keel_tests::{keel, runtime, wait_until, BrokerOpts, ClusterOpts, TestBroker, TestCluster};

const TIMEOUT: Duration = Duration::from_secs(60);

/// Every value of partition 0 of `topic`, by offset.
fn read_partition(bootstrap: &str, topic: &str, end: i64) -> BTreeMap<i64, String> {
    runtime().block_on(async {
        let mut c = Consumer::new(ClientConfig::new(bootstrap), ConsumerConfig::default())
            .await
            .unwrap();
        c.assign(topic, &[0], Offset::Earliest).await.unwrap();
        let mut got = BTreeMap::new();
        for _ in 0..200 {
            if c.position(topic, 0).unwrap_or(0) >= end {
                break;
            }
            if let Ok(Ok(records)) = tokio::time::timeout(Duration::from_secs(5), c.poll()).await {
                for r in records {
                    got.insert(
                        r.offset,
                        String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
                    );
                }
            }
        }
        got
    })
}

/// Produces `a`, then `b` with its response dropped (the leader appends and replicates
/// it, then closes the connection); kills the leader while the client retries, lets the
/// responses through, and returns the partition's contents once `b` is acknowledged.
fn retry_across_failover(
    cluster: &mut TestCluster,
    switch: &std::path::Path,
    topic: &str,
    idempotent: bool,
) -> (i64, BTreeMap<i64, String>) {
    cluster.create_replicated_topic(topic, 1, TIMEOUT);
    let rt = runtime();
    let producer = rt
        .block_on(Producer::new(
            ClientConfig::new(&cluster.bootstrap()),
            ProducerConfig {
                acks: Acks::All,
                enable_idempotence: idempotent,
                retries: 10_000,
                retry_backoff: Duration::from_millis(100),
                request_timeout: Duration::from_secs(5),
                linger: Duration::ZERO,
                ..ProducerConfig::default()
            },
        ))
        .unwrap();
    let first = rt
        .block_on(async {
            producer
                .send(ProducerRecord::new(topic, "a").partition(0))
                .await?
                .await
        })
        .unwrap();
    assert_eq!(first.offset, 0);
    std::fs::write(switch, b"drop").unwrap();
    let delivery = rt
        .block_on(producer.send(ProducerRecord::new(topic, "b").partition(0)))
        .unwrap();
    let leader = cluster.leader_of(topic, 0).unwrap();
    // The batch is in every replica's log: the leader acknowledged it, only the answer is lost.
    // (At least 2: without idempotence each retry the client sends meanwhile is another copy.)
    wait_until("b is replicated everywhere", TIMEOUT, || {
        cluster
            .broker_ids()
            .iter()
            .all(|&b| cluster.try_replica_offsets(b, topic, 0).0 >= Some(2))
    });
    cluster.kill9(leader);
    std::fs::remove_file(switch).unwrap();
    let b = rt
        .block_on(async { tokio::time::timeout(TIMEOUT, delivery).await })
        .expect("b is acknowledged after the failover")
        .expect("b is delivered");
    let bootstrap = cluster.kafka_addrs(
        &cluster
            .broker_ids()
            .into_iter()
            .filter(|&id| id != leader)
            .collect::<Vec<_>>(),
    );
    let end = rt
        .block_on(async {
            keel_client::Admin::new(ClientConfig::new(&bootstrap))
                .await?
                .list_offsets(topic, 0, Offset::Latest)
                .await
        })
        .unwrap();
    let contents = read_partition(&bootstrap, topic, end);
    cluster.restart(leader);
    (b.offset, contents)
}

#[test]
fn a_retry_across_a_failover_is_written_once() {
    let switch = tempfile::tempdir().unwrap();
    let switch = switch.path().join("drop-produce-responses");
    let mut cluster = TestCluster::start(ClusterOpts::default().fast_failover().env(
        keel_broker::failpoint::DROP_PRODUCE_RESPONSES,
        switch.to_str().unwrap(),
    ));
    let (offset, contents) = retry_across_failover(&mut cluster, &switch, "once", true);
    assert_eq!(offset, 1, "the retry is answered with the original offset");
    assert_eq!(
        contents.values().collect::<Vec<_>>(),
        ["a", "b"],
        "one copy of b: {contents:?}"
    );
    // The same without idempotence writes b more than once (each retry sent while the answers
    // were dropped is another copy): what this test guards against.
    let (_, contents) = retry_across_failover(&mut cluster, &switch, "twice", false);
    let copies = contents.values().filter(|v| *v == "b").count();
    assert!(
        copies >= 2,
        "without idempotence the retry is a second copy: {contents:?}"
    );
}

fn ids(pid: i64, epoch: i16, seq: i32) -> ProducerIds {
    ProducerIds {
        producer_id: pid,
        producer_epoch: epoch,
        base_sequence: seq,
    }
}

#[test]
fn a_restarted_broker_keeps_deduplicating() {
    let mut b = TestBroker::start(BrokerOpts::default());
    let mut c = RawConn::connect(b.kafka_addr()).unwrap();
    c.create_topic_ok("d", 1).unwrap();
    let (pid, epoch) = c.init_producer_id().unwrap();
    // Right after a restart the broker may not lead the partition yet: NOT_LEADER_OR_FOLLOWER
    // is retriable, so ask again (as a client would), for a bounded time.
    let sent = |c: &mut RawConn, seq: i32, values: &[&str]| {
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            let r = c
                .produce_idempotent("d", 0, ids(pid, epoch, seq), values)
                .unwrap();
            if r.error_code == codes::NOT_LEADER_OR_FOLLOWER && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            assert_eq!(r.error_code, codes::NONE, "{r:?}");
            return r.base_offset;
        }
    };
    assert_eq!(sent(&mut c, 0, &["a", "b"]), 0);
    assert_eq!(sent(&mut c, 2, &["c"]), 2);
    assert_eq!(
        sent(&mut c, 2, &["c"]),
        2,
        "a retry, answered from the state"
    );
    b.kill9();
    b.restart();
    let mut c = RawConn::connect(b.kafka_addr()).unwrap();
    assert_eq!(
        sent(&mut c, 2, &["c"]),
        2,
        "after kill -9 the state is rebuilt"
    );
    assert_eq!(sent(&mut c, 0, &["a", "b"]), 0, "an older kept batch too");
    b.restart(); // SIGTERM: a clean close writes a snapshot at the log end
    let mut c = RawConn::connect(b.kafka_addr()).unwrap();
    assert_eq!(sent(&mut c, 2, &["c"]), 2, "after a clean restart too");
    assert_eq!(sent(&mut c, 3, &["d"]), 3);
    assert_eq!(
        c.list_offset("d", 0, -1).unwrap(),
        4,
        "nothing written twice"
    );
    let log = std::fs::read_to_string(b.log_path()).unwrap();
    assert!(log.contains("producer state loaded"), "{log}");

    // What operators see.
    let out = keel(
        &[
            "topic",
            "describe",
            "d",
            "--producers",
            "--bootstrap-server",
            &b.bootstrap(),
        ],
        None,
    );
    out.assert_success();
    let stdout = out.stdout_str();
    let producers = stdout
        .split_once("producers:\n")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("no producers section:\n{out}"));
    let line = producers
        .lines()
        .nth(1)
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("producer {pid} not listed:\n{out}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[..4], ["0", &pid.to_string(), "0", "3"], "{line}");
}

#[test]
fn bad_producer_batches_are_refused_and_nothing_is_appended() {
    let b = TestBroker::start(BrokerOpts::default());
    let mut c = RawConn::connect(b.kafka_addr()).unwrap();
    c.create_topic_ok("bad", 1).unwrap();
    let (pid, epoch) = c.init_producer_id().unwrap();
    let ok = c
        .produce_idempotent("bad", 0, ids(pid, epoch, 0), &["a", "b"])
        .unwrap();
    assert_eq!((ok.error_code, ok.base_offset), (codes::NONE, 0));
    // (what, producer fields, expected code)
    let cases = [
        (
            "a sequence gap",
            ids(pid, epoch, 5),
            codes::OUT_OF_ORDER_SEQUENCE_NUMBER,
        ),
        (
            "an overlapping sequence",
            ids(pid, epoch, 1),
            codes::OUT_OF_ORDER_SEQUENCE_NUMBER,
        ),
        (
            "a negative sequence",
            ids(pid, epoch, -5),
            codes::INVALID_RECORD,
        ),
        (
            "an id never handed out",
            ids(1 << 40, 0, 0),
            codes::UNKNOWN_PRODUCER_ID,
        ),
        (
            "an id without an epoch",
            ids(pid, -1, 2),
            codes::INVALID_RECORD,
        ),
        (
            "an epoch without an id",
            ids(-1, 0, -1),
            codes::INVALID_RECORD,
        ),
        (
            "a sequence without an id",
            ids(-1, -1, 3),
            codes::INVALID_RECORD,
        ),
    ];
    for (what, producer, want) in cases {
        let r = c.produce_idempotent("bad", 0, producer, &["x"]).unwrap();
        assert_eq!(r.error_code, want, "{what}: {r:?}");
        assert_eq!(
            c.list_offset("bad", 0, -1).unwrap(),
            2,
            "{what}: nothing appended"
        );
    }
    // An older epoch after a bump is fenced.
    let (same, bumped) = c.bump_epoch(pid, epoch).unwrap();
    assert_eq!((same, bumped), (pid, epoch + 1));
    let r = c
        .produce_idempotent("bad", 0, ids(pid, bumped, 0), &["new epoch"])
        .unwrap();
    assert_eq!((r.error_code, r.base_offset), (codes::NONE, 2));
    let r = c
        .produce_idempotent("bad", 0, ids(pid, epoch, 2), &["old epoch"])
        .unwrap();
    assert_eq!(r.error_code, codes::INVALID_PRODUCER_EPOCH, "{r:?}");
    // The connection and the broker still serve.
    let r = c
        .produce_idempotent("bad", 0, ids(pid, bumped, 1), &["still serving"])
        .unwrap();
    assert_eq!((r.error_code, r.base_offset), (codes::NONE, 3));
}
