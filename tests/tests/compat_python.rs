//! confluent-kafka (librdkafka) and kafka-python as oracles: each script produces keyed
//! records with headers with the client's idempotent producer (kafka-python's default,
//! librdkafka's `enable.idempotence=true`) and reads them back by assign + seek (no consumer
//! groups), per codec, on one node and on a 3-broker cluster.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use keel_tests::inspect::metric_sum;
use keel_tests::raw::{codec_of, used_codec, RawConn};
use keel_tests::{
    require_python_modules, run, serial, BrokerOpts, ClusterOpts, TestBroker, TestCluster,
};

const SCRIPT_TIMEOUT: Duration = Duration::from_secs(200);

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}

/// Where a script runs: one node, or a 3-broker cluster (topics replicated three times).
enum Target {
    Single(TestBroker),
    Cluster(TestCluster),
}

impl Target {
    fn bootstrap(&self) -> String {
        match self {
            Target::Single(b) => b.bootstrap(),
            Target::Cluster(c) => c.bootstrap(),
        }
    }

    fn create_topic(&self, conn: &mut RawConn, topic: &str, partitions: i32) {
        match self {
            Target::Single(_) => conn.create_topic_ok(topic, partitions).unwrap(),
            Target::Cluster(c) => {
                c.create_replicated_topic(topic, partitions, Duration::from_secs(60))
            }
        }
    }

    /// A connection to the leader of `partition` of `topic`.
    fn leader_conn(&self, topic: &str, partition: i32) -> RawConn {
        let addr = match self {
            Target::Single(b) => b.kafka_addr(),
            Target::Cluster(c) => {
                let leader = c
                    .leader_of(topic, partition)
                    .expect("the partition has a leader");
                c.broker(leader).kafka_addr()
            }
        };
        RawConn::connect(addr).unwrap()
    }
}

/// Runs `script` for each codec against a fresh topic with 3 partitions, with the client's
/// idempotent producer.
fn round_trips(target: Target, python: &Path, script_name: &str, codecs: &[&str], count: usize) {
    round_trips_over(&target, python, script_name, codecs, count, 3);
}

/// [`round_trips`] over topics of `partitions` partitions.
fn round_trips_over(
    target: &Target,
    python: &Path,
    script_name: &str,
    codecs: &[&str],
    count: usize,
    partitions: i32,
) {
    let mut conn = RawConn::connect(
        target
            .bootstrap()
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap(),
    )
    .unwrap();
    let path = script(script_name);
    let mut failures = Vec::new();
    for (i, codec) in codecs.iter().enumerate() {
        let topic = format!(
            "py-{}-{codec}-{partitions}",
            script_name.trim_end_matches(".py")
        );
        target.create_topic(&mut conn, &topic, partitions);
        let out = run(
            Command::new(python)
                .arg(&path)
                .args(["--bootstrap", &target.bootstrap(), "--topic", &topic])
                .args(["--count", &count.to_string(), "--compression", codec])
                .args(["--timeout", "90", "--seed", &i.to_string()])
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .env("PYTHONUNBUFFERED", "1"),
            None,
            SCRIPT_TIMEOUT,
        );
        eprintln!("{}", out.stdout_str().trim_end());
        if !out.success() {
            failures.push(format!("{codec}: {out}"));
            continue;
        }
        // The script's own check passed; the broker agrees on how many records it holds.
        let total: i64 = (0..partitions)
            .map(|p| {
                target
                    .leader_conn(&topic, p)
                    .list_offset(&topic, p, -1)
                    .unwrap()
            })
            .sum();
        let mut leader = target.leader_conn(&topic, 0);
        assert_eq!(total, count as i64, "{codec}: log end offsets");
        // And the client really compressed: the stored batches carry the codec asked for.
        // (librdkafka silently falls back to no compression when ApiVersions makes it think
        // the broker lacks the codec, e.g. lz4 without FindCoordinator advertised.)
        let stored = leader.fetch_once(&topic, 0, 0).unwrap();
        if !used_codec(&stored.codecs, codec_of(codec)) {
            failures.push(format!("{codec}: stored batches use {:?}", stored.codecs));
        }
        // And it really was idempotent: every stored record carries its producer id.
        if let Some(r) = stored.records.iter().find(|r| r.producer_id < 0) {
            failures.push(format!("{codec}: a record without a producer id: {r:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn single() -> Target {
    Target::Single(TestBroker::start(BrokerOpts::default()))
}

fn three_brokers() -> Target {
    Target::Cluster(TestCluster::start(ClusterOpts::default().brokers(3)))
}

#[test]
fn confluent_kafka_round_trip() {
    let python = require_python_modules(&["confluent_kafka"]);
    round_trips(
        single(),
        &python,
        "confluent_roundtrip.py",
        &["none", "gzip", "lz4", "zstd", "snappy"],
        10_000,
    );
}

#[test]
fn kafka_python_round_trip() {
    // The codec modules kafka-python needs: lz4, python-snappy (`snappy`), zstandard.
    let python = require_python_modules(&["kafka", "lz4", "snappy", "zstandard"]);
    round_trips(
        single(),
        &python,
        "kafka_python_roundtrip.py",
        &["none", "gzip", "lz4", "zstd", "snappy"],
        3_000,
    );
}

#[test]
fn idempotent_clients_on_a_three_broker_cluster() {
    let _serial = serial();
    let python = require_python_modules(&["confluent_kafka", "kafka", "lz4"]);
    let cluster = three_brokers();
    round_trips(cluster, &python, "confluent_roundtrip.py", &["lz4"], 5_000);
    let cluster = three_brokers();
    round_trips(
        cluster,
        &python,
        "kafka_python_roundtrip.py",
        &["none"],
        2_000,
    );
}

/// Fetch requests of each session kind a node has answered (`keel_fetch_requests_total`).
fn fetch_kinds(b: &TestBroker) -> (f64, f64, f64) {
    let text = keel_tests::runtime()
        .block_on(keel::cmd::cluster::scrape_metrics(
            b.metrics_addr(),
            Duration::from_secs(5),
        ))
        .unwrap();
    let kind = |k: &str| metric_sum(&text, &format!("keel_fetch_requests_total{{kind=\"{k}\"}}"));
    (kind("full"), kind("incremental"), kind("refused"))
}

/// Consumers over 60 partitions: kafka-python fetches in incremental sessions (KIP-227),
/// librdkafka (which has no fetch sessions) with full fetches; both read back every record.
#[test]
fn consumers_across_many_partitions_with_and_without_fetch_sessions() {
    let python = require_python_modules(&["confluent_kafka", "kafka", "lz4"]);
    let target = single();
    let Target::Single(broker) = &target else {
        unreachable!()
    };
    let before = fetch_kinds(broker);
    round_trips_over(
        &target,
        &python,
        "kafka_python_roundtrip.py",
        &["lz4"],
        3_000,
        60,
    );
    let python_done = fetch_kinds(broker);
    round_trips_over(
        &target,
        &python,
        "confluent_roundtrip.py",
        &["lz4"],
        3_000,
        60,
    );
    let librdkafka_done = fetch_kinds(broker);
    eprintln!(
        "fetches (full, incremental, refused): before {before:?}, after kafka-python \
         {python_done:?}, after librdkafka {librdkafka_done:?}"
    );
    assert!(
        python_done.1 > before.1,
        "kafka-python's consumer fetched in a session: {before:?} -> {python_done:?}"
    );
    assert_eq!(python_done.2, before.2, "no session refused");
    assert!(
        librdkafka_done.0 > python_done.0,
        "librdkafka fetched (full fetches): {python_done:?} -> {librdkafka_done:?}"
    );
    assert_eq!(librdkafka_done.2, python_done.2, "no session refused");
}
