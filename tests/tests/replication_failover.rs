//! Replication under failures, with real broker processes on 127.0.0.1 (issue 3, tests 1–3):
//!
//! - `kill -9` of a partition leader in the middle of an acks=all stream loses no
//!   acknowledged record, and no consumer ever sees an offset that later disappears;
//! - the killed broker, restarted, truncates what it must, catches up, rejoins the ISR, and
//!   every replica's segment files hold the same batches (offsets, lengths, CRCs, bytes);
//! - a follower paused with SIGSTOP leaves the ISR while acks=all continues with 2 of 3,
//!   and rejoins after SIGCONT.
//!
//! Every wait is a condition with a deadline. When a test fails (or always, with
//! `KEEL_TEST_KEEP_LOGS` set), each node's stderr is copied to
//! `$TMPDIR/keel-replication-failover/<test>/` before the temp dirs go away.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use keel_client::{ClientConfig, Consumer, ConsumerConfig, Offset};
use keel_tests::stream::{high_watermarks, read_all, BackgroundProducer};
use keel_tests::{runtime, wait_for, wait_until, ClusterOpts, KeepLogs, TestCluster};

/// Records produced by the failover tests.
const RECORDS: usize = 20_000;
/// Acknowledgements before the leader is killed.
const KILL_AFTER_ACKS: usize = 5_000;
/// Bound of any single wait in these tests.
const WAIT: Duration = Duration::from_secs(30);
/// Where [`KeepLogs`] copies the nodes' logs to, under `$TMPDIR`.
const LOG_DIR: &str = "keel-replication-failover";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The settings of the brief: fast fencing, RF 3, min ISR 2, fresh partition metrics.
fn cluster_opts(session_timeout_ms: &str, lag_ms: Option<&str>) -> ClusterOpts {
    let opts = ClusterOpts::default()
        .brokers(3)
        .set("broker.session.timeout.ms", session_timeout_ms)
        .set("broker.heartbeat.interval.ms", "200")
        .set("min.insync.replicas", "2")
        .set("default.replication.factor", "3");
    match lag_ms {
        Some(ms) => opts.set("replica.lag.time.max.ms", ms),
        None => opts,
    }
}

/// What the live consumer saw.
#[derive(Default)]
struct SeenLog {
    /// (partition, offset) → value, as first seen.
    seen: BTreeMap<(i32, i64), String>,
    /// A (partition, offset) seen again with another value.
    changed: Vec<String>,
    /// Poll errors, in order (capped).
    errors: Vec<String>,
}

/// A consumer reading every partition from the start during the whole test.
struct LiveConsumer {
    log: Arc<Mutex<SeenLog>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl LiveConsumer {
    fn start(
        rt: &tokio::runtime::Runtime,
        bootstrap: &str,
        topic: &str,
        partitions: i32,
    ) -> LiveConsumer {
        let log = Arc::new(Mutex::new(SeenLog::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let client = ClientConfig::new(bootstrap);
        let topic = topic.to_string();
        let (log2, stop2) = (log.clone(), stop.clone());
        let task = rt.spawn(async move {
            let config = ConsumerConfig {
                max_wait: Duration::from_millis(200),
                ..ConsumerConfig::default()
            };
            let mut consumer = Consumer::new(client, config).await.expect("live consumer");
            let all: Vec<i32> = (0..partitions).collect();
            consumer
                .assign(&topic, &all, Offset::Earliest)
                .await
                .expect("assign live consumer");
            while !stop2.load(Ordering::Acquire) {
                let polled = tokio::time::timeout(Duration::from_secs(10), consumer.poll()).await;
                match polled {
                    Ok(Ok(records)) => {
                        let mut log = lock(&log2);
                        for r in records {
                            let value =
                                String::from_utf8_lossy(r.value.as_deref().unwrap_or_default())
                                    .into_owned();
                            let key = (r.partition, r.offset);
                            match log.seen.get(&key) {
                                Some(old) if *old != value => {
                                    let msg = format!(
                                        "{}-{} offset {}: first {old}, later {value}",
                                        topic, r.partition, r.offset
                                    );
                                    log.changed.push(msg);
                                }
                                Some(_) => {}
                                None => {
                                    log.seen.insert(key, value);
                                }
                            }
                        }
                    }
                    Ok(Err(e)) => {
                        let positions: Vec<_> =
                            all.iter().map(|&p| consumer.position(&topic, p)).collect();
                        {
                            let mut log = lock(&log2);
                            if log.errors.len() < 50 {
                                log.errors.push(format!("{e} (positions {positions:?})"));
                            }
                        }
                        // Backoff before polling again.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(_) => {
                        let mut log = lock(&log2);
                        if log.errors.len() < 50 {
                            log.errors.push("poll took longer than 10 s".into());
                        }
                    }
                }
            }
        });
        LiveConsumer { log, stop, task }
    }

    fn finish(self, rt: &tokio::runtime::Runtime) -> SeenLog {
        self.stop.store(true, Ordering::Release);
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(20), self.task).await })
            .expect("the live consumer did not stop within 20 s")
            .expect("the live consumer panicked");
        std::mem::take(&mut *lock(&self.log))
    }
}

/// The state a failover run leaves behind, for test 2 to continue from.
struct Failover {
    rt: tokio::runtime::Runtime,
    cluster: TestCluster,
    topic: &'static str,
    partitions: i32,
    killed: i32,
    /// Batches of the killed broker's replica of partition 0 at its death.
    killed_batches: Vec<BatchSummary>,
}

/// Test 1's scenario; asserts everything test 1 asserts and returns the cluster with
/// `killed` still down.
fn failover_run(test: &'static str, topic: &'static str, partitions: i32) -> Failover {
    let rt = runtime();
    let mut cluster = TestCluster::start(cluster_opts("1500", None));
    let keep = KeepLogs::new(LOG_DIR, test, &cluster);
    cluster.create_replicated_topic(topic, partitions, WAIT);
    let leader = cluster
        .leader_of(topic, 0)
        .expect("partition 0 has a leader");
    let bootstrap = cluster.bootstrap();

    let (signal_tx, signal_rx) = mpsc::channel();
    let consumer = LiveConsumer::start(&rt, &bootstrap, topic, partitions);
    let producer = BackgroundProducer::start(
        &rt,
        &bootstrap,
        topic,
        partitions,
        Some(RECORDS),
        Some((KILL_AFTER_ACKS, signal_tx)),
    );
    signal_rx
        .recv_timeout(Duration::from_secs(40))
        .unwrap_or_else(|_| {
            panic!(
                "fewer than {KILL_AFTER_ACKS} acknowledgements within 40 s (got {})",
                producer.acks()
            )
        });
    cluster.kill9(leader);
    let killed_at = Instant::now();
    let acks_at_kill = producer.acks();
    let killed_batches = partition_batches(&cluster.broker(leader).data_dir(), topic, 0)
        .unwrap_or_else(|e| panic!("read the killed broker's segments: {e}"));
    eprintln!(
        "killed leader {leader} of {topic}-0 after {acks_at_kill} acks; its log ends at {:?}",
        killed_batches.last().map(|b| b.last_offset + 1)
    );

    let new_leader = cluster.wait_for_leader(topic, 0, Some(leader), WAIT);
    eprintln!(
        "new leader of {topic}-0: {new_leader}, {:.1}s after the kill",
        killed_at.elapsed().as_secs_f64()
    );
    wait_until(
        &format!("the ISR of {topic}-0 no longer lists the killed broker {leader}"),
        WAIT,
        || {
            cluster
                .isr_of(topic, 0)
                .is_some_and(|isr| !isr.contains(&leader))
        },
    );

    // Once the dead broker is out of every ISR, acks=all goes on with 2 of 3: the HW
    // must not wait for the dead broker (e.g. for `replica.lag.time.max.ms`, 30 s here).
    let acks_at_shrink = producer.acks();
    let isr_shrunk_at = Instant::now();
    wait_until(
        &format!(
            "acknowledgements resume within 10 s after the ISR dropped the killed broker \
             (stuck at {acks_at_shrink} of {RECORDS})"
        ),
        Duration::from_secs(10),
        || {
            let acks = producer.acks();
            acks >= RECORDS || acks >= acks_at_shrink + 1_000
        },
    );
    eprintln!(
        "acks resumed {:.1}s after the ISR shrink",
        isr_shrunk_at.elapsed().as_secs_f64()
    );
    let (sent, produced) = producer.finish(&rt, Duration::from_secs(60));
    eprintln!(
        "sent {sent}, acknowledged {}, failed {}; producer done {:.1}s after the kill",
        produced.acked.len(),
        produced.failed.len(),
        killed_at.elapsed().as_secs_f64()
    );
    if let Some((v, e)) = produced.failed.iter().next() {
        eprintln!("first failure: {v}: {e}");
    }
    assert_eq!(sent, RECORDS);
    assert_eq!(produced.acked.len() + produced.failed.len(), RECORDS);
    assert!(
        produced.acked.len() > KILL_AFTER_ACKS,
        "nothing was acknowledged after the failover: {} acks, failures e.g. {:?}",
        produced.acked.len(),
        produced.failed.iter().next()
    );

    // No two acknowledged records share an offset.
    let mut by_offset: BTreeMap<(i32, i64), &str> = BTreeMap::new();
    for (value, at) in &produced.acked {
        if let Some(other) = by_offset.insert(*at, value) {
            panic!(
                "{other} and {value} were both acknowledged at {topic}-{}@{}",
                at.0, at.1
            );
        }
    }

    // The HW reaches past every acknowledged offset (the new leader's HW may start lower).
    let mut want = vec![0i64; partitions as usize];
    for (p, o) in produced.acked.values() {
        want[*p as usize] = want[*p as usize].max(o + 1);
    }
    let ends = wait_for(
        &format!("every HW of {topic} reaches the acknowledged ends {want:?}"),
        WAIT,
        || {
            high_watermarks(&rt, &cluster.bootstrap(), topic, partitions)
                .filter(|hw| hw.iter().zip(&want).all(|(h, w)| h >= w))
        },
    );
    let log = read_all(&rt, &bootstrap, topic, &ends);
    let mut copies: BTreeMap<&str, usize> = BTreeMap::new();
    for v in log.values() {
        *copies.entry(v.as_str()).or_default() += 1;
    }
    let duplicated = copies.values().filter(|&&n| n > 1).count();
    eprintln!(
        "final HWs {ends:?}: {} records, {duplicated} values more than once (producer retries), \
         {:.1}s after the kill",
        log.len(),
        killed_at.elapsed().as_secs_f64()
    );

    // Every acknowledged record is at its acknowledged offset.
    let mut missing = Vec::new();
    for (value, (p, o)) in &produced.acked {
        match log.get(&(*p, *o)) {
            Some(v) if v == value => {}
            other => missing.push(format!("{value} acked at {p}@{o}, log has {other:?}")),
        }
    }
    assert!(
        missing.is_empty(),
        "{} acknowledged records are not at their offsets, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );

    // Nothing the live consumer saw disappeared or changed.
    let seen = consumer.finish(&rt);
    eprintln!(
        "live consumer saw {} offsets; {} poll errors, e.g. {:?}",
        seen.seen.len(),
        seen.errors.len(),
        seen.errors.first()
    );
    assert!(
        seen.changed.is_empty(),
        "the live consumer saw offsets change value: {:?}",
        &seen.changed[..seen.changed.len().min(10)]
    );
    let mut vanished = Vec::new();
    for ((p, o), value) in &seen.seen {
        match log.get(&(*p, *o)) {
            Some(v) if v == value => {}
            other if *o >= ends[*p as usize] => vanished.push(format!(
                "{p}@{o} ({value}) is beyond the final HW {} (log has {other:?})",
                ends[*p as usize]
            )),
            other => vanished.push(format!("{p}@{o}: seen {value}, now {other:?}")),
        }
    }
    assert!(
        vanished.is_empty(),
        "{} offsets the live consumer saw are gone or changed, e.g. {:?}",
        vanished.len(),
        &vanished[..vanished.len().min(10)]
    );
    assert!(
        !seen.seen.is_empty(),
        "the live consumer saw nothing; errors {:?}",
        seen.errors
    );
    drop(keep);
    Failover {
        rt,
        cluster,
        topic,
        partitions,
        killed: leader,
        killed_batches,
    }
}

#[test]
fn kill9_leader_mid_stream_loses_no_acknowledged_record() {
    failover_run(
        "kill9_leader_mid_stream_loses_no_acknowledged_record",
        "failover",
        1,
    );
}

#[test]
fn kill9_leader_mid_stream_loses_no_acknowledged_record_three_partitions() {
    failover_run(
        "kill9_leader_mid_stream_loses_no_acknowledged_record_three_partitions",
        "failover3",
        3,
    );
}

/// One batch of a segment file, as compared across replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BatchSummary {
    base_offset: i64,
    last_offset: i64,
    len: usize,
    crc: u32,
    leader_epoch: i32,
    /// The whole batch.
    bytes: Vec<u8>,
}

/// Every batch of `<data>/<topic>-<partition>/*.log`, in segment order, each checked
/// against its CRC.
fn partition_batches(
    data_dir: &Path,
    topic: &str,
    partition: i32,
) -> Result<Vec<BatchSummary>, String> {
    let dir = data_dir.join(format!("{topic}-{partition}"));
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segments.sort();
    let mut out = Vec::new();
    for seg in segments {
        let bytes = std::fs::read(&seg).map_err(|e| format!("{}: {e}", seg.display()))?;
        for b in keel_protocol::batch::batches(&bytes) {
            let b = b.map_err(|e| format!("{}: {e:?}", seg.display()))?;
            b.header
                .validate(b.bytes)
                .map_err(|e| format!("{} @{}: {e:?}", seg.display(), b.pos))?;
            out.push(BatchSummary {
                base_offset: b.header.base_offset(),
                last_offset: b.header.last_offset(),
                len: b.bytes.len(),
                crc: b.header.crc(),
                leader_epoch: b.header.partition_leader_epoch(),
                bytes: b.bytes.to_vec(),
            });
        }
    }
    Ok(out)
}

fn describe(b: &BatchSummary) -> String {
    format!(
        "[{}..={} len {} crc {:08x} epoch {}]",
        b.base_offset, b.last_offset, b.len, b.crc, b.leader_epoch
    )
}

#[test]
fn restarted_broker_truncates_catches_up_and_matches_the_leader() {
    let test = "restarted_broker_truncates_catches_up_and_matches_the_leader";
    let Failover {
        rt: _rt,
        mut cluster,
        topic,
        partitions,
        killed,
        killed_batches,
    } = failover_run(test, "rejoin", 1);
    let keep = KeepLogs::new(LOG_DIR, test, &cluster);

    cluster.restart(killed);
    wait_until(
        &format!("the restarted broker {killed} is back in every ISR of {topic}"),
        Duration::from_secs(45),
        || {
            (0..partitions).all(|p| {
                cluster
                    .isr_of(topic, p)
                    .is_some_and(|isr| isr.len() == 3 && isr.contains(&killed))
            })
        },
    );

    // Every replica reaches the same LEO and HW (metrics lag by ~100 ms).
    let ids = cluster.broker_ids();
    let mut converged = BTreeMap::new();
    for p in 0..partitions {
        let offsets = wait_for(
            &format!("every replica of {topic}-{p} reports the same LEO and HW = LEO"),
            WAIT,
            || {
                let o: Vec<_> = ids
                    .iter()
                    .map(|&id| cluster.replica_offsets(id, topic, p))
                    .collect();
                let first = o[0];
                (first.leo.is_some() && first.hw == first.leo && o.iter().all(|x| *x == first))
                    .then_some(first)
            },
        );
        converged.insert(p, offsets);
    }
    let truncations = cluster
        .scrape_metrics(killed)
        .lines()
        .filter(|l| l.starts_with("keel_replica_truncations_total"))
        .map(str::to_string)
        .collect::<Vec<_>>();
    eprintln!("converged offsets {converged:?}; restarted broker's truncations: {truncations:?}");

    // Stop every broker cleanly and compare the segment files batch by batch.
    for &id in &ids {
        let status = cluster.stop(id);
        assert!(
            status.success(),
            "broker {id} exited with {status} on SIGTERM"
        );
    }
    for p in 0..partitions {
        let end = converged[&p].hw.expect("checked above");
        let logs: Vec<(i32, Vec<BatchSummary>)> = ids
            .iter()
            .map(|&id| {
                let batches = partition_batches(&cluster.broker(id).data_dir(), topic, p)
                    .unwrap_or_else(|e| panic!("broker {id}: {e}"));
                (id, batches)
            })
            .collect();
        for (id, batches) in &logs {
            let log_end = batches.last().map_or(0, |b| b.last_offset + 1);
            assert_eq!(
                log_end, end,
                "broker {id}'s {topic}-{p} segment files end at {log_end}, the metrics said {end}"
            );
            for w in batches.windows(2) {
                assert_eq!(
                    w[1].base_offset,
                    w[0].last_offset + 1,
                    "broker {id}'s {topic}-{p} has a gap or overlap: {} then {}",
                    describe(&w[0]),
                    describe(&w[1])
                );
            }
        }
        let (ref_id, reference) = &logs[0];
        for (id, batches) in &logs[1..] {
            let first_difference = reference
                .iter()
                .zip(batches.iter())
                .position(|(a, b)| a != b);
            if let Some(i) = first_difference {
                panic!(
                    "{topic}-{p}: batch {i} differs: broker {ref_id} has {}, broker {id} has {}",
                    describe(&reference[i]),
                    describe(&batches[i])
                );
            }
            assert_eq!(
                reference.len(),
                batches.len(),
                "{topic}-{p}: broker {ref_id} has {} batches, broker {id} has {}",
                reference.len(),
                batches.len()
            );
        }
        if p == 0 {
            // How the killed broker's log at its death relates to the final one.
            let diverged = killed_batches
                .iter()
                .zip(reference.iter())
                .position(|(a, b)| a != b);
            eprintln!(
                "{topic}-0: the killed broker had {} batches at death, the final log has {}; \
                 first divergence at batch {diverged:?}",
                killed_batches.len(),
                reference.len()
            );
        }
    }
    drop(keep);
}

#[test]
fn paused_follower_leaves_isr_and_rejoins() {
    let test = "paused_follower_leaves_isr_and_rejoins";
    let topic = "paused";
    let rt = runtime();
    // The session timeout is longer than the lag time here, so the leader's lag rule
    // (AlterPartition), not fencing by the controller, takes the follower out of the ISR.
    let mut cluster = TestCluster::start(cluster_opts("8000", Some("2000")));
    let keep = KeepLogs::new(LOG_DIR, test, &cluster);
    cluster.create_replicated_topic(topic, 1, WAIT);
    let leader = cluster.leader_of(topic, 0).expect("a leader");
    let follower = *cluster
        .broker_ids()
        .iter()
        .find(|&&id| id != leader)
        .expect("a follower");
    let bootstrap = cluster.bootstrap();

    let producer = BackgroundProducer::start(&rt, &bootstrap, topic, 1, None, None);
    wait_until("500 records acknowledged", WAIT, || producer.acks() >= 500);

    cluster.sigstop(follower);
    let paused_at = Instant::now();
    wait_until(
        &format!("the ISR of {topic}-0 shrinks to 2 without the paused follower {follower}"),
        Duration::from_secs(20),
        || {
            cluster
                .isr_of(topic, 0)
                .is_some_and(|isr| isr.len() == 2 && !isr.contains(&follower))
        },
    );
    let shrunk_after = paused_at.elapsed();
    let acks_at_shrink = producer.acks();
    eprintln!(
        "ISR shrank {:.1}s after SIGSTOP of {follower}; {acks_at_shrink} acks so far",
        shrunk_after.as_secs_f64()
    );
    wait_until(
        "acks=all keeps acknowledging with 2 of 3 in the ISR",
        Duration::from_secs(20),
        || producer.acks() >= acks_at_shrink + 500,
    );

    cluster.sigcont(follower);
    let resumed_at = Instant::now();
    wait_until(
        &format!("the follower {follower} rejoins the ISR of {topic}-0"),
        WAIT,
        || cluster.isr_of(topic, 0).is_some_and(|isr| isr.len() == 3),
    );
    eprintln!(
        "ISR back to 3, {:.1}s after SIGCONT",
        resumed_at.elapsed().as_secs_f64()
    );

    let (sent, produced) = producer.finish(&rt, Duration::from_secs(45));
    eprintln!(
        "sent {sent}, acknowledged {}, failed {}",
        produced.acked.len(),
        produced.failed.len()
    );
    assert!(
        produced.failed.is_empty(),
        "{} records failed with 2 of 3 replicas in sync, e.g. {:?}",
        produced.failed.len(),
        produced.failed.iter().next()
    );
    let acked_end = produced
        .acked
        .values()
        .map(|(_, o)| o + 1)
        .max()
        .unwrap_or(0);
    let ids = cluster.broker_ids();
    let leo = wait_for(
        &format!("every replica of {topic}-0 reaches the same LEO (at least {acked_end})"),
        WAIT,
        || {
            let leos: Vec<Option<i64>> = ids
                .iter()
                .map(|&id| cluster.replica_offsets(id, topic, 0).leo)
                .collect();
            let first = leos[0]?;
            (first >= acked_end && leos.iter().all(|l| *l == Some(first))).then_some(first)
        },
    );
    eprintln!("all replicas at LEO {leo}");
    drop(keep);
}
