//! A data directory written by a single broker of an earlier Keel (its topics in
//! `topics.toml`, no metadata log) is imported on the first start of `keel broker`, and
//! refused, with what to do, by a node that cannot import it.

use std::path::Path;
use std::time::Duration;

use kafka_protocol::records::Compression;
use keel_client::{
    Acks, Admin, ClientConfig, Consumer, ConsumerConfig, Offset, Producer, ProducerConfig,
    ProducerRecord,
};
use keel_storage::{Log, LogConfig};
use keel_tests::command::{keel_bin, run};
use keel_tests::data::TestRecord;
use keel_tests::raw::encode_batch;
use keel_tests::{runtime, BrokerOpts, TestBroker};

const TOPIC_ID: &str = "6f1c4e52-4f5b-4f62-9a55-1f0d5f3f7a11";

/// What a single broker of an earlier Keel left: `orders` with 2 partitions of 3 records
/// each, written by its only leader at epoch 0, closed cleanly, and its registry.
fn old_data_dir(data: &Path) {
    for p in 0..2 {
        let log = Log::open(&data.join(format!("orders-{p}")), LogConfig::default()).unwrap();
        for i in 0..3 {
            let r = TestRecord {
                key: format!("k{i}").into_bytes(),
                value: format!("p{p}-v{i}").into_bytes(),
                headers: vec![],
            };
            let batch = encode_batch(&[r], Compression::None).unwrap();
            log.append_as_leader(&batch, 0).unwrap();
        }
        log.flush().unwrap();
        log.close().unwrap();
    }
    std::fs::write(
        data.join("topics.toml"),
        format!(
            "version = 1\n\n[[topic]]\nname = \"orders\"\nid = \"{TOPIC_ID}\"\npartitions = 2\n\
             replication_factor = 1\n\n[topic.configs]\n\"retention.ms\" = \"86400000\"\n"
        ),
    )
    .unwrap();
}

async fn values(client: &ClientConfig, partition: i32, want: usize) -> Vec<String> {
    let mut c = Consumer::new(client.clone(), ConsumerConfig::default())
        .await
        .unwrap();
    c.assign("orders", &[partition], Offset::Earliest)
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..50 {
        got.extend(
            c.poll()
                .await
                .unwrap()
                .into_iter()
                .map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap()),
        );
        if got.len() >= want {
            break;
        }
    }
    got
}

#[test]
fn a_single_broker_data_dir_is_imported_on_first_start() {
    let rt = runtime();
    let mut b = TestBroker::start_over(BrokerOpts::default(), old_data_dir);
    let data = b.data_dir();
    assert!(!data.join("topics.toml").exists());
    assert!(data.join("topics.toml.imported").exists());
    let client = ClientConfig::new(&b.bootstrap());
    rt.block_on(async {
        let admin = Admin::new(client.clone()).await.unwrap();
        let topics = admin
            .describe_topics(&["orders".to_string()])
            .await
            .unwrap();
        assert_eq!(topics[0].partitions.len(), 2);
        assert_eq!(values(&client, 0, 3).await, ["p0-v0", "p0-v1", "p0-v2"]);
        assert_eq!(values(&client, 1, 3).await, ["p1-v0", "p1-v1", "p1-v2"]);
        let producer = Producer::new(
            client.clone(),
            ProducerConfig {
                acks: Acks::All,
                request_timeout: Duration::from_secs(10),
                ..ProducerConfig::default()
            },
        )
        .await
        .unwrap();
        let sent = producer
            .send(ProducerRecord::new("orders", "p0-new").partition(0))
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(sent.offset, 3, "appended after the imported records");
    });
    let marker = std::fs::read_to_string(data.join("orders-0/partition.metadata")).unwrap();
    assert!(marker.contains(TOPIC_ID), "{marker}");

    // Imported once: a restart finds everything in the metadata log.
    b.restart();
    rt.block_on(async {
        assert_eq!(
            values(&client_of(&b), 0, 4).await,
            ["p0-v0", "p0-v1", "p0-v2", "p0-new"]
        );
    });
    let log = std::fs::read_to_string(b.log_path()).unwrap();
    assert_eq!(
        log.matches("imported the topics of a single broker")
            .count(),
        1,
        "{log}"
    );
}

fn client_of(b: &TestBroker) -> ClientConfig {
    ClientConfig::new(&b.bootstrap())
}

#[test]
fn a_broker_only_node_refuses_a_single_broker_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    old_data_dir(dir.path());
    let out = run(
        std::process::Command::new(keel_bin())
            .arg("broker")
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--listeners", "127.0.0.1:0", "--metrics-listener", "none"])
            .args(["--set", "process.roles=broker"])
            .args(["--set", "controller.quorum.voters=0@127.0.0.1:1"]),
        None,
        Duration::from_secs(30),
    );
    out.assert_failure();
    let err = out.stderr_str();
    assert!(err.contains("topics.toml"), "{err}");
    assert!(err.contains("process.roles=broker,controller"), "{err}");
    assert!(
        dir.path().join("topics.toml").exists(),
        "the directory is left as it was"
    );
}
