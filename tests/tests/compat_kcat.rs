//! kcat (librdkafka) as the oracle: what it produces comes back byte-identical through kcat
//! and through an independent decoder, for every codec; its metadata listing works.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use keel_client::{ClientConfig, Consumer, ConsumerRecord, Offset};
use keel_tests::data::{first_difference, generate, kcat_expected_output, kcat_input, TestRecord};
use keel_tests::raw::{codec_of, to_test_record, used_codec, RawConn};
use keel_tests::{require_tool, run, BrokerOpts, CmdOutput, TestBroker};

const N: usize = 10_000;
const KCAT_TIMEOUT: Duration = Duration::from_secs(120);
/// Static headers kcat puts on every message (`-H`).
const HEADERS: &[(&str, &str)] = &[("k", "v"), ("trace", "abc-123")];

fn kcat(kcat: &Path, args: &[&str], stdin: Option<&[u8]>) -> CmdOutput {
    let out = run(Command::new(kcat).args(args), stdin, KCAT_TIMEOUT);
    out.assert_success();
    out
}

/// `kcat -P` of `records` (`key<TAB>value` lines) with the static headers and `codec`.
fn kcat_produce(tool: &Path, b: &TestBroker, topic: &str, codec: &str, records: &[TestRecord]) {
    let bootstrap = b.bootstrap();
    let mut args = vec!["-P", "-b", &bootstrap, "-t", topic, "-K", "\t", "-z", codec];
    let headers: Vec<String> = HEADERS.iter().map(|(k, v)| format!("{k}={v}")).collect();
    for h in &headers {
        args.extend(["-H", h.as_str()]);
    }
    // Delivery reports must all succeed: acks=all, and fail rather than retry forever.
    args.extend([
        "-X",
        "acks=all",
        "-X",
        "message.timeout.ms=60000",
        "-X",
        "linger.ms=5",
    ]);
    let out = kcat(tool, &args, Some(&kcat_input(records)));
    let err = out.stderr_str();
    assert!(
        !err.contains("Delivery failed") && !err.contains("ERROR"),
        "kcat reported errors: {out}"
    );
}

/// `kcat -C` from the beginning to the end of every partition, in `format`.
fn kcat_consume(tool: &Path, b: &TestBroker, topic: &str, format: &str) -> Vec<u8> {
    let bootstrap = b.bootstrap();
    let out = kcat(
        tool,
        &[
            "-C",
            "-b",
            &bootstrap,
            "-t",
            topic,
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            format,
        ],
        None,
    );
    out.stdout
}

fn expected_headers() -> Vec<(String, Vec<u8>)> {
    HEADERS
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
}

#[test]
fn kcat_round_trip_every_codec() {
    let tool = require_tool("kcat");
    let b = TestBroker::start(BrokerOpts::default());
    let mut conn = RawConn::connect(b.kafka_addr()).unwrap();
    let mut downgraded = Vec::new();
    for (i, codec) in ["none", "gzip", "lz4", "zstd", "snappy"].iter().enumerate() {
        let topic = format!("kcat-{codec}");
        conn.create_topic_ok(&topic, 1).unwrap();
        let records = generate(&topic, N, 200, 0, 100 + i as u64);
        kcat_produce(&tool, &b, &topic, codec, &records);

        // Back through kcat, byte for byte, in produce order.
        let got = kcat_consume(&tool, &b, &topic, "%k\t%s\t%h\n");
        let want = kcat_expected_output(&records, HEADERS);
        if let Some(diff) = first_difference(&got, &want) {
            panic!("{codec}: kcat consumed something else than it produced: {diff}");
        }

        // Back through an independent decoder: same records, stored with kcat's codec.
        let mut offset = 0;
        let fetched = conn
            .fetch_n_batches(&topic, 0, &mut offset, N, Duration::from_secs(60))
            .unwrap();
        assert_eq!(fetched.records.len(), N, "{codec}");
        assert_eq!(offset, N as i64, "{codec}: offsets are not 0..{N}");
        if !used_codec(&fetched.codecs, codec_of(codec)) {
            // Checked after every codec ran, so one run shows the whole picture.
            downgraded.push(format!("{codec}: stored batches use {:?}", fetched.codecs));
        }
        for (j, (r, want)) in fetched.records.iter().zip(&records).enumerate() {
            let mut want = want.clone();
            want.headers = expected_headers();
            assert_eq!(r.offset, j as i64);
            assert_eq!(to_test_record(r), want, "{codec}: record {j}");
        }
        assert_eq!(conn.list_offset(&topic, 0, -1).unwrap(), N as i64);
        assert_eq!(conn.list_offset(&topic, 0, -2).unwrap(), 0);

        // And through keel-client's consumer.
        let got = consume_with_keel_client(&b, &topic, N);
        for (j, (r, want)) in got.iter().zip(&records).enumerate() {
            assert_eq!(r.offset, j as i64, "{codec}: keel-client offset");
            assert_eq!(r.key.as_deref(), Some(&want.key[..]), "{codec}: key {j}");
            assert_eq!(
                r.value.as_deref(),
                Some(&want.value[..]),
                "{codec}: value {j}"
            );
            let headers: Vec<(String, Vec<u8>)> = r
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.as_deref().unwrap_or_default().to_vec()))
                .collect();
            assert_eq!(headers, expected_headers(), "{codec}: headers {j}");
        }
    }
    // librdkafka decides from ApiVersions whether a broker "supports" a codec, and silently
    // sends uncompressed batches when it thinks not: up to 2.11 gzip, snappy and lz4 need
    // Produce advertised from v0 (its check asks for Produce support in [0, 0]); lz4 also
    // needs FindCoordinator advertised (librdkafka's LZ4 feature probe); zstd needs Produce
    // v7 and Fetch v10.
    assert!(
        downgraded.is_empty(),
        "kcat did not compress as asked (librdkafka judges codec support from ApiVersions: \
         Produce from v0, FindCoordinator for lz4):\n{}",
        downgraded.join("\n")
    );
}

/// Partition 0 of `topic` from the beginning through keel-client, until `count` records.
fn consume_with_keel_client(b: &TestBroker, topic: &str, count: usize) -> Vec<ConsumerRecord> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut consumer = Consumer::new(ClientConfig::new(&b.bootstrap()), Default::default())
            .await
            .unwrap();
        consumer
            .assign(topic, &[0], Offset::Earliest)
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut out = Vec::with_capacity(count);
        for _ in 0..100_000 {
            if out.len() >= count || Instant::now() > deadline {
                break;
            }
            out.extend(consumer.poll().await.unwrap());
        }
        assert_eq!(
            out.len(),
            count,
            "{topic}: keel-client consumed {} records",
            out.len()
        );
        out
    })
}

#[test]
fn kcat_keyed_messages_over_three_partitions() {
    let tool = require_tool("kcat");
    let b = TestBroker::start(BrokerOpts::default());
    RawConn::connect(b.kafka_addr())
        .unwrap()
        .create_topic_ok("kcat-parts", 3)
        .unwrap();
    let records = generate("parts", N, 100, 0, 7);
    kcat_produce(&tool, &b, "kcat-parts", "lz4", &records);

    let got = kcat_consume(&tool, &b, "kcat-parts", "%p\t%o\t%k\t%s\n");
    let mut by_partition: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    let mut consumed = BTreeMap::new();
    for line in String::from_utf8(got).unwrap().lines() {
        let f: Vec<&str> = line.splitn(4, '\t').collect();
        assert_eq!(f.len(), 4, "bad kcat line {line:?}");
        by_partition
            .entry(f[0].to_string())
            .or_default()
            .push((f[1].parse().unwrap(), f[2].to_string()));
        assert!(
            consumed
                .insert(f[2].to_string(), f[3].to_string())
                .is_none(),
            "key {} consumed twice",
            f[2]
        );
    }
    assert_eq!(consumed.len(), N);
    for r in &records {
        let key = String::from_utf8(r.key.clone()).unwrap();
        assert_eq!(
            consumed.get(&key).map(String::as_bytes),
            Some(&r.value[..]),
            "value of {key}"
        );
    }
    assert!(
        by_partition.len() > 1,
        "keys were not spread over partitions"
    );
    for (p, rows) in &by_partition {
        let offsets: Vec<i64> = rows.iter().map(|(o, _)| *o).collect();
        let want: Vec<i64> = (0..rows.len() as i64).collect();
        assert_eq!(
            offsets, want,
            "partition {p}: offsets not contiguous from 0"
        );
    }
}

#[test]
fn kcat_metadata_listing() {
    let tool = require_tool("kcat");
    let b = TestBroker::start(BrokerOpts::default());
    RawConn::connect(b.kafka_addr())
        .unwrap()
        .create_topic_ok("listed", 3)
        .unwrap();
    let bootstrap = b.bootstrap();
    let out = kcat(&tool, &["-L", "-J", "-b", &bootstrap], None);
    let md: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("kcat -L -J is not JSON ({e}): {out}"));
    let brokers = md["brokers"].as_array().expect("brokers");
    assert_eq!(brokers.len(), 1, "{md}");
    assert_eq!(brokers[0]["id"], 1, "{md}");
    assert_eq!(brokers[0]["name"], bootstrap.as_str(), "{md}");
    let topic = md["topics"]
        .as_array()
        .expect("topics")
        .iter()
        .find(|t| t["topic"] == "listed")
        .unwrap_or_else(|| panic!("topic missing: {md}"));
    let mut parts = topic["partitions"].as_array().expect("partitions").clone();
    parts.sort_by_key(|p| p["partition"].as_i64());
    assert_eq!(parts.len(), 3, "{md}");
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p["partition"], i as i64, "{md}");
        assert_eq!(p["leader"], 1, "{md}");
        assert_eq!(p["isrs"].as_array().map(Vec::len), Some(1), "{md}");
    }

    // The plain-text listing, as a person runs it.
    let out = kcat(&tool, &["-L", "-b", &bootstrap, "-t", "listed"], None);
    let text = out.stdout_str();
    assert!(text.contains("1 brokers:"), "{out}");
    assert!(
        text.contains("topic \"listed\" with 3 partitions:"),
        "{out}"
    );
    assert!(!text.contains("err:"), "kcat reports an error: {out}");
}
