//! The fault-injection suite's CI entry points: a short seeded chaos run (`keel-chaos` runs
//! longer ones, see TESTING.md), and the regression test for replicas that silently fall out
//! of sync. The other named regressions are in `regressions_lifecycle.rs` and
//! `regressions_convergence.rs`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_client::{
    Acks, Admin, ClientConfig, Consumer, ConsumerConfig, Offset, Producer, ProducerConfig,
    ProducerRecord,
};
use keel_tests::chaos::nemesis::Nemesis;
use keel_tests::chaos::replicas::compare_committed;
use keel_tests::chaos::{self, ChaosOpts};
use keel_tests::{poll_until, runtime, serial, wait_until, ClusterOpts, KeepLogs, TestCluster};

/// The seed of the CI run: `KEEL_CHAOS_SEED` to replay or vary it, 1 by default.
fn ci_seed() -> u64 {
    std::env::var("KEEL_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

/// 20 fault cycles of every nemesis against a 3-broker cluster under load; the checker must
/// find nothing. Prints the report (seed, schedule, verdict) either way.
#[test]
fn short_chaos_run_loses_nothing_and_converges() {
    let _serial = serial();
    let opts = ChaosOpts {
        seed: ci_seed(),
        cycles: 20,
        nemeses: Nemesis::ALL.to_vec(),
        max_duration: Duration::from_secs(180),
        ..ChaosOpts::default()
    };
    let report = chaos::run(&opts);
    println!("{report}");
    assert!(
        report.ok(),
        "chaos run failed; replay with KEEL_CHAOS_SEED={} or `keel-chaos --seed {} --cycles 20`:\n{report}",
        report.seed,
        report.seed
    );
    assert_eq!(report.injected.values().sum::<usize>(), 20, "{report}");
    assert!(report.verdict.acked > 1000, "the workload ran: {report}");
}

const TOPIC: &str = "kv";
const KEYS: usize = 20;

fn client(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new(bootstrap);
    c.connect_timeout = Duration::from_secs(3);
    c.request_timeout = Duration::from_secs(10);
    c
}

/// Writes version `version` of every key, one record (and one batch) at a time.
async fn write_versions(bootstrap: &str, version: usize) -> Result<(), keel_client::ClientError> {
    let config = ProducerConfig {
        acks: Acks::All,
        retries: 20,
        retry_backoff: Duration::from_millis(100),
        linger: Duration::ZERO,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client(bootstrap), config).await?;
    for k in 0..KEYS {
        let record = ProducerRecord::new(TOPIC, format!("{version}"))
            .key(format!("k{k}"))
            .partition(0);
        producer.send(record).await?.await?;
    }
    producer.close().await
}

/// The latest version of every key, reading the partition from the leader up to its HW.
async fn latest_versions(bootstrap: &str) -> Result<BTreeMap<String, usize>, String> {
    let admin = Admin::new(client(bootstrap))
        .await
        .map_err(|e| e.to_string())?;
    let hw = admin
        .list_offsets(TOPIC, 0, Offset::Latest)
        .await
        .map_err(|e| e.to_string())?;
    let mut consumer = Consumer::new(client(bootstrap), ConsumerConfig::default())
        .await
        .map_err(|e| e.to_string())?;
    consumer
        .assign(TOPIC, &[0], Offset::At(0))
        .await
        .map_err(|e| e.to_string())?;
    let mut latest = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while consumer.position(TOPIC, 0).unwrap_or(0) < hw {
        if Instant::now() > deadline {
            return Err(format!("reading up to {hw} took over 20 s"));
        }
        for r in consumer.poll().await.map_err(|e| e.to_string())? {
            if r.offset >= hw {
                continue;
            }
            let key = String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned();
            let version: usize = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default())
                .parse()
                .map_err(|e| format!("offset {}: {e}", r.offset))?;
            latest.insert(key, version);
        }
    }
    Ok(latest)
}

/// Guards against replicas of a stream silently UNSYNCED, so that the same key is found on
/// one read and "not found" on the next, until an operator repairs them by hand.
///
/// A follower's committed data is damaged at rest (a flipped byte, found by no restart: the
/// broker was stopped cleanly, so recovery does not rescan). `keel check` must flag exactly
/// that replica DIVERGED; the broker must then repair it by itself — fenced, cut at the bad
/// batch, fetched again — without a restart, until `keel check` says SYNCED and the replicas
/// are byte-identical. Meanwhile a reader asking the leader for each key's latest value never
/// sees a key vanish or go back to an older value.
#[test]
fn diverged_follower_is_detected_and_repaired_without_a_restart() {
    let _serial = serial();
    let rt = runtime();
    let mut cluster = TestCluster::start(
        ClusterOpts::default()
            .fast_failover()
            .set("log.segment.bytes", "4096"),
    );
    let _keep = KeepLogs::new("chaos", "diverged_follower", &cluster);
    cluster.create_replicated_topic(TOPIC, 1, Duration::from_secs(30));
    let bootstrap = cluster.bootstrap();
    for version in 0..5 {
        rt.block_on(write_versions(&bootstrap, version))
            .unwrap_or_else(|e| panic!("write version {version}: {e}"));
    }
    wait_until("keel check says SYNCED", Duration::from_secs(30), || {
        cluster.keel_check(TOPIC, &[]).success()
    });

    // Damage a follower at rest: clean stop, flip a byte in its oldest data, start again.
    let leader = cluster.wait_for_leader(TOPIC, 0, None, Duration::from_secs(10));
    let follower = *cluster
        .broker_ids()
        .iter()
        .find(|&&b| b != leader)
        .expect("a follower");
    assert!(cluster.stop(follower).success());
    let data = cluster.broker(follower).data_dir();
    let flipped = keel_tests::disk::corrupt_byte(&data, TOPIC, 0, 0x5eed);
    println!("damaged broker {follower}: {flipped}");
    cluster.restart(follower);
    let pid = cluster.broker(follower).pid();
    cluster.wait_for_brokers(&[follower], Duration::from_secs(30));

    // A reader of the latest values, from the leader, for the rest of the test.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, bootstrap) = (stop.clone(), bootstrap.clone());
        rt.spawn(async move {
            let mut seen: BTreeMap<String, usize> = BTreeMap::new();
            let (mut reads, mut problems) = (0usize, Vec::new());
            while !stop.load(Ordering::Acquire) && reads < 2000 {
                let Ok(latest) = latest_versions(&bootstrap).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                reads += 1;
                for (key, &before) in &seen {
                    match latest.get(key) {
                        None => problems.push(format!("read {reads}: {key} not found")),
                        Some(&now) if now < before => problems.push(format!(
                            "read {reads}: {key} went from {before} back to {now}"
                        )),
                        Some(_) => {}
                    }
                }
                seen = latest;
            }
            (reads, problems)
        })
    };

    // Detected: the damaged follower, and only it, is DIVERGED for a failing CRC.
    let detected = cluster.keel_check(TOPIC, &["--json"]);
    let json = detected.stdout_str();
    assert!(
        !detected.success(),
        "keel check missed the damage: {detected}"
    );
    assert!(json.contains("DIVERGED") && json.contains("CRC"), "{json}");
    // Repaired by the broker itself, while updates go on.
    let started = Instant::now();
    let mut version = 5;
    let repaired = poll_until(Duration::from_secs(30), || {
        if version < 10 {
            rt.block_on(write_versions(&bootstrap, version))
                .unwrap_or_else(|e| panic!("write version {version}: {e}"));
            version += 1;
        }
        cluster.keel_check(TOPIC, &[]).success()
    });
    let last = cluster.keel_check(TOPIC, &[]);
    assert!(repaired, "not repaired within 30 s: {last}");
    println!(
        "repaired {:.1} s after detection, without a restart",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        cluster.broker(follower).pid(),
        pid,
        "the broker was not restarted"
    );
    assert!(
        cluster
            .broker(follower)
            .stderr_tail(200_000)
            .contains("fails its CRC check"),
        "the broker logged the damage"
    );

    stop.store(true, Ordering::Release);
    let (reads, problems) = rt.block_on(reader).expect("reader task");
    assert!(reads >= 2, "the reader read {reads} times");
    assert!(problems.is_empty(), "reads alternated: {problems:#?}");
    let latest = rt
        .block_on(latest_versions(&bootstrap))
        .expect("final read");
    assert_eq!(latest.len(), KEYS);
    assert!(latest.values().all(|&v| v == version - 1), "{latest:?}");

    let hw = rt
        .block_on(async {
            Admin::new(client(&bootstrap))
                .await?
                .list_offsets(TOPIC, 0, Offset::Latest)
                .await
        })
        .expect("HW");
    let replicas = cluster
        .broker_ids()
        .into_iter()
        .map(|id| {
            (
                id,
                keel_tests::disk::replica_dir(&cluster.broker(id).data_dir(), TOPIC, 0),
            )
        })
        .collect();
    let problems = compare_committed(0, hw, &replicas);
    assert!(
        problems.is_empty(),
        "replicas differ after the repair: {problems:#?}"
    );
}
