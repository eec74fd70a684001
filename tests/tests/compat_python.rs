//! confluent-kafka (librdkafka) and kafka-python as oracles: each script produces keyed
//! records with headers and reads them back by assign + seek (no consumer groups), per codec.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use keel_tests::raw::{codec_of, used_codec, RawConn};
use keel_tests::{require_python_modules, run, BrokerOpts, TestBroker};

const SCRIPT_TIMEOUT: Duration = Duration::from_secs(200);

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}

/// Runs `script` for each codec against a fresh topic with 3 partitions.
fn round_trips(python: &Path, script_name: &str, codecs: &[&str], count: usize) {
    let b = TestBroker::start(BrokerOpts::default());
    let mut conn = RawConn::connect(b.kafka_addr()).unwrap();
    let path = script(script_name);
    let mut failures = Vec::new();
    for (i, codec) in codecs.iter().enumerate() {
        let topic = format!("py-{}-{codec}", script_name.trim_end_matches(".py"));
        conn.create_topic_ok(&topic, 3).unwrap();
        let out = run(
            Command::new(python)
                .arg(&path)
                .args(["--bootstrap", &b.bootstrap(), "--topic", &topic])
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
        let total: i64 = (0..3)
            .map(|p| conn.list_offset(&topic, p, -1).unwrap())
            .sum();
        assert_eq!(total, count as i64, "{codec}: log end offsets");
        // And the client really compressed: the stored batches carry the codec asked for.
        // (librdkafka silently falls back to no compression when ApiVersions makes it think
        // the broker lacks the codec, e.g. lz4 without FindCoordinator advertised.)
        let stored = conn.fetch_once(&topic, 0, 0).unwrap().codecs;
        if !used_codec(&stored, codec_of(codec)) {
            failures.push(format!("{codec}: stored batches use {stored:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn confluent_kafka_round_trip() {
    let python = require_python_modules(&["confluent_kafka"]);
    round_trips(
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
        &python,
        "kafka_python_roundtrip.py",
        &["none", "gzip", "lz4", "zstd", "snappy"],
        3_000,
    );
}
