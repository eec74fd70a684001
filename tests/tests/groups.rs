//! Consumer groups with real clients as oracles: confluent-kafka consumers sharing a topic
//! through the group coordinator, their commits read back through the admin API, the group
//! listed, described, emptied and deleted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use keel_tests::{require_python_modules, run, serial, ClusterOpts, TestCluster};

const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}

#[test]
fn three_confluent_consumers_share_a_topic_and_their_commits_read_back() {
    let _serial = serial();
    let python = require_python_modules(&["confluent_kafka"]);
    let cluster = TestCluster::start(ClusterOpts::default().brokers(3));
    cluster.create_replicated_topic("orders", 6, Duration::from_secs(60));
    let out = run(
        Command::new(&python)
            .arg(script("confluent_groups.py"))
            .args(["--bootstrap", &cluster.bootstrap(), "--topic", "orders"])
            .args(["--group", "g1", "--partitions", "6", "--count", "600"])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1"),
        None,
        SCRIPT_TIMEOUT,
    );
    eprintln!("{}", out.stdout_str().trim_end());
    assert!(out.success(), "{out}");
    let seen: serde_json::Value = serde_json::from_str(out.stdout_str().trim()).unwrap();
    assert_eq!(seen["consumed"], 600);
    assert_eq!(seen["distinct"], 600);
    // The offsets topic was created on first use, replicated like data.
    let offsets = cluster
        .describe_topic("__consumer_offsets")
        .expect("__consumer_offsets exists");
    assert_eq!(offsets.partitions.len(), 50);
    assert!(offsets.partitions.iter().all(|p| p.replicas.len() == 3));
}
