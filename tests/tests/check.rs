//! `keel check` against a real cluster: SYNCED when clean, OFFLINE while a follower is down,
//! LAGGING while it catches up after a restart, then SYNCED; a follower whose segment bytes
//! were altered on disk is DIVERGED, and the next restart repairs it from the leader.

use std::time::Duration;

use keel_client::{Acks, ClientConfig, Producer, ProducerConfig, ProducerRecord};
use keel_tests::{keel, poll_until, runtime, wait_until, ClusterOpts, CmdOutput, TestCluster};

const TIMEOUT: Duration = Duration::from_secs(90);

fn cluster(extra: &[(&str, &str)]) -> TestCluster {
    let mut opts = ClusterOpts::default()
        .brokers(3)
        .set("log.flush.offset.checkpoint.interval.ms", "100")
        .set("broker.session.timeout.ms", "1500")
        .set("broker.heartbeat.interval.ms", "200")
        .set("replica.lag.time.max.ms", "1000");
    for (k, v) in extra {
        opts = opts.set(k, v);
    }
    TestCluster::start(opts)
}

/// Produces `n` acks=all records of ~100 bytes, one batch each (`batch.size` 1).
fn produce(cluster: &TestCluster, rt: &tokio::runtime::Runtime, topic: &str, tag: &str, n: usize) {
    let client = ClientConfig::new(&cluster.bootstrap());
    rt.block_on(async {
        let config = ProducerConfig {
            acks: Acks::All,
            batch_size: 1,
            linger: Duration::ZERO,
            ..ProducerConfig::default()
        };
        let p = Producer::new(client, config).await.unwrap();
        let mut last = None;
        for i in 0..n {
            let value = format!("{tag}-{i:06}-{}", "v".repeat(80));
            last = Some(
                p.send(ProducerRecord::new(topic, value).partition(0))
                    .await
                    .unwrap(),
            );
        }
        if let Some(d) = last {
            d.await.unwrap();
        }
        p.flush().await.unwrap();
    });
}

fn check(cluster: &TestCluster, topic: &str) -> CmdOutput {
    cluster.keel_check(topic, &["--timeout-ms", "3000"])
}

/// The STATUS cell of broker `id`'s row in the check table.
fn status_of(out: &CmdOutput, id: i32) -> Option<String> {
    let text = out.stdout_str();
    let header = text.lines().next()?;
    let col = header.find("STATUS")?;
    let replica_col = header.find("REPLICA")?;
    text.lines().skip(1).find_map(|l| {
        let replica = l.get(replica_col..)?.split_whitespace().next()?;
        (replica.trim_end_matches('*') == id.to_string())
            .then(|| {
                l.get(col..)
                    .and_then(|s| s.split_whitespace().next())
                    .map(String::from)
            })
            .flatten()
    })
}

fn wait_for_status(cluster: &TestCluster, topic: &str, id: i32, want: &str) -> CmdOutput {
    let mut last = None;
    let seen = poll_until(TIMEOUT, || {
        let out = check(cluster, topic);
        let hit = status_of(&out, id).as_deref() == Some(want);
        last = Some(out);
        hit
    });
    let last = last.expect("check ran");
    assert!(
        seen,
        "broker {id} never reported {want}; last check:\n{last}"
    );
    last
}

#[test]
fn a_stopped_follower_is_offline_then_lagging_then_synced() {
    // One batch per follower fetch, so catching up 4,000 batches takes seconds.
    let mut cluster = cluster(&[("replica.fetch.max.bytes", "1")]);
    let rt = runtime();
    let topic = "check-lag";
    cluster.create_replicated_topic(topic, 1, TIMEOUT);
    produce(&cluster, &rt, topic, "a", 200);

    let clean = wait_for_status(&cluster, topic, cluster.broker_ids()[0], "SYNCED");
    let clean = {
        // Every replica, not only the first.
        let mut out = clean;
        poll_until(TIMEOUT, || {
            out = check(&cluster, topic);
            out.success()
        });
        out
    };
    clean.assert_success();
    for id in cluster.broker_ids() {
        assert_eq!(status_of(&clean, id).as_deref(), Some("SYNCED"), "{clean}");
    }
    assert!(
        clean.stdout_str().contains("1 partitions: 1 SYNCED"),
        "{clean}"
    );

    let leader = cluster.leader_of(topic, 0).unwrap();
    let follower = *cluster.broker_ids().iter().find(|&&b| b != leader).unwrap();
    cluster.kill9(follower);
    let down = check(&cluster, topic);
    down.assert_failure();
    assert_eq!(
        status_of(&down, follower).as_deref(),
        Some("OFFLINE"),
        "{down}"
    );

    produce(&cluster, &rt, topic, "b", 4_000);
    cluster.restart(follower);
    let lagging = wait_for_status(&cluster, topic, follower, "LAGGING");
    lagging.assert_failure();
    assert!(lagging.stderr_str().contains("not in sync"), "{lagging}");
    // Within --max-lag it is not a failure.
    let tolerant = keel(
        &[
            "check",
            "--bootstrap-server",
            &cluster.bootstrap(),
            "--topic",
            topic,
            "--max-lag",
            "1000000",
            "--json",
        ],
        None,
    );
    let json: serde_json::Value = serde_json::from_str(tolerant.stdout_str().trim())
        .unwrap_or_else(|e| panic!("--json output does not parse: {e}\n{tolerant}"));
    let status = json["partitions"][0]["status"]
        .as_str()
        .unwrap()
        .to_string();
    if status == "LAGGING" {
        tolerant.assert_success();
        assert_eq!(json["ok"], true);
    }

    wait_for_status(&cluster, topic, follower, "SYNCED");
    wait_until("keel check exits 0 again", TIMEOUT, || {
        check(&cluster, topic).success()
    });
    // --watch repeats (bounded by --count); --unsynced leaves out the SYNCED partition.
    let watched = keel(
        &[
            "check",
            "--bootstrap-server",
            &cluster.bootstrap(),
            "--watch",
            "--count",
            "2",
            "--interval-ms",
            "100",
            "--unsynced",
        ],
        None,
    );
    watched.assert_success();
    let text = watched.stdout_str();
    assert_eq!(
        text.matches("1 partitions: 1 SYNCED").count(),
        2,
        "{watched}"
    );
    assert!(
        !text.contains(topic),
        "--unsynced printed a SYNCED partition: {watched}"
    );
}

#[test]
fn altered_segment_bytes_are_diverged_and_repaired_by_a_restart() {
    let mut cluster = cluster(&[("log.segment.bytes", "65536")]);
    let rt = runtime();
    let topic = "check-diverged";
    cluster.create_replicated_topic(topic, 1, TIMEOUT);
    let records = 2_000;
    produce(&cluster, &rt, topic, "a", records);
    wait_until("every replica is SYNCED", TIMEOUT, || {
        check(&cluster, topic).success()
    });

    let leader = cluster.leader_of(topic, 0).unwrap();
    let victim = *cluster.broker_ids().iter().find(|&&b| b != leader).unwrap();
    // A clean stop: the next start trusts its segments and scans nothing.
    cluster.stop(victim);
    let dir = cluster.broker(victim).data_dir().join(format!("{topic}-0"));
    let first = dir.join(format!("{:020}.log", 0));
    let mut bytes = std::fs::read(&first).unwrap();
    // The last byte of the first batch: inside its records, covered by its CRC.
    let batch_len = i32::from_be_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let at = 12 + batch_len - 1;
    bytes[at] ^= 0x5a;
    std::fs::write(&first, &bytes).unwrap();

    cluster.restart(victim);
    cluster.wait_for_brokers(&cluster.broker_ids(), TIMEOUT);
    let diverged = wait_for_status(&cluster, topic, victim, "DIVERGED");
    diverged.assert_failure();
    assert!(
        diverged.stdout_str().contains("fails its CRC check"),
        "{diverged}"
    );
    let log = std::fs::read_to_string(cluster.broker(victim).log_path()).unwrap();
    assert!(
        log.contains("fails its CRC check"),
        "broker did not log it:\n{log}"
    );

    // The next start rescans from the bad batch, truncates there and refetches.
    cluster.restart(victim);
    wait_for_status(&cluster, topic, victim, "SYNCED");
    wait_until("keel check exits 0 again", TIMEOUT, || {
        check(&cluster, topic).success()
    });
    // The partition gauges refresh on a timer: one taken after the repair must show it.
    wait_until(
        "the repaired replica's gauges show every record",
        TIMEOUT,
        || cluster.replica_offsets(victim, topic, 0).leo == Some(records as i64),
    );
}
