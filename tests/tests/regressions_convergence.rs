//! Regression tests for replica-convergence failures reported against other brokers, run
//! against a real controller and three brokers on 127.0.0.1 ([`TestCluster`]):
//!
//! - a follower restarted after downtime gets the new keys but misses updates to keys it
//!   already had (here: the follower dies by kill -9 plus a simulated power cut, while keys
//!   are updated and added across several segment rolls);
//! - followers whose HW and LEO stay far behind the leader after a pause and never
//!   converge (here: 16 partitions under acks=all load, one broker paused and resumed
//!   again and again);
//! - a leader resumed after a stall of its own shrinking the ISR of followers that kept
//!   fetching (found by the test above).
//!
//! The tests share two cores with other suites: they run one at a time (a process-wide
//! lock, and `flock /tmp/keel-cluster.lock` around the cargo run), every wait is a condition
//! with a deadline, and on failure (or with `KEEL_TEST_KEEP_LOGS=1`) each node's stderr is
//! copied to `$TMPDIR/keel-regressions-convergence/<test>/`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel::cmd::cluster::{parse_exposition, Sample};
use keel_client::{
    Acks, ClientConfig, DeliveryFuture, Producer, ProducerConfig, ProducerRecord, RecordMetadata,
};
use keel_tests::chaos::replicas::{compare_committed, stored_batches, StoredBatch};
use keel_tests::disk::{replica_dir, segment_files, simulate_power_loss, SYNC_JOURNAL_ENV};
use keel_tests::{poll_until, runtime, serial, wait_until, ClusterOpts, CmdOutput, KeepLogs};
use keel_tests::{wait_for, TestCluster};

/// Where [`KeepLogs`] copies the nodes' logs to, under `$TMPDIR`.
const LOG_DIR: &str = "keel-regressions-convergence";
/// Bound of a wait for the cluster to settle (registration, elections, catch-up).
const SETTLE: Duration = Duration::from_secs(30);

const LOG_END_OFFSET: &str = "keel_partition_log_end_offset";
const HIGH_WATERMARK: &str = "keel_partition_high_watermark";
const IS_LEADER: &str = "keel_partition_is_leader";
const FOLLOWER_LAG_RECORDS: &str = "keel_follower_lag_records";

// ---------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Fast fencing, ISR shrink and partition gauges; RF 3 and min ISR 2 by default.
fn fast_opts() -> ClusterOpts {
    ClusterOpts::default()
        .fast_failover()
        .set("min.insync.replicas", "2")
        .set("default.replication.factor", "3")
}

/// For SIGSTOP tests: the session timeout is well above the pauses, so a paused broker
/// leaves ISRs by the leaders' lag rule (1 s) but is never fenced and leadership stays
/// where it is.
fn pause_opts() -> ClusterOpts {
    fast_opts()
        .set("broker.session.timeout.ms", "6000")
        .set("replica.lag.time.max.ms", "1000")
}

/// `keel check` of one topic; exit 0 means every partition is SYNCED.
fn check(cluster: &TestCluster, topic: &str) -> CmdOutput {
    cluster.keel_check(topic, &["--timeout-ms", "3000"])
}

/// Runs `keel check` until it exits 0 or `timeout` passes; whether it did, and its last run.
fn poll_check(cluster: &TestCluster, topic: &str, timeout: Duration) -> (bool, CmdOutput) {
    let mut last = None;
    let synced = poll_until(timeout, || {
        let out = check(cluster, topic);
        let ok = out.success();
        last = Some(out);
        ok
    });
    (synced, last.expect("poll_until polls at least once"))
}

/// A producer with acks=all, small batches, retries through ISR changes and pauses.
async fn producer(bootstrap: &str, batch_size: usize) -> Producer {
    let mut client = ClientConfig::new(bootstrap);
    client.request_timeout = Duration::from_secs(5);
    let config = ProducerConfig {
        acks: Acks::All,
        batch_size,
        retries: 50,
        retry_backoff: Duration::from_millis(100),
        request_timeout: Duration::from_secs(15),
        ..ProducerConfig::default()
    };
    Producer::new(client, config)
        .await
        .unwrap_or_else(|e| panic!("producer for {bootstrap}: {e}"))
}

// ---------------------------------------------------------------------------------------
// 1. A follower back from a power cut has every update to existing keys
// ---------------------------------------------------------------------------------------

/// One acknowledged keyed record.
#[derive(Debug, Clone)]
struct Acked {
    key: String,
    value: String,
    offset: i64,
}

/// Sends `records` (key, value) to `topic`-0, pipelined, then awaits every delivery; each
/// must be acknowledged. `acks` counts acknowledgements as they arrive, in send order.
async fn produce_round(
    producer: &Producer,
    topic: &str,
    records: &[(String, String)],
    acks: &AtomicUsize,
) -> Vec<Acked> {
    let mut pending: Vec<(&(String, String), DeliveryFuture)> = Vec::new();
    for kv in records {
        let record = ProducerRecord::new(topic, kv.1.clone())
            .key(kv.0.clone())
            .partition(0);
        let delivery = producer
            .send(record)
            .await
            .unwrap_or_else(|e| panic!("{topic}: send {}={}: {e}", kv.0, kv.1));
        pending.push((kv, delivery));
    }
    let mut out = Vec::with_capacity(pending.len());
    for ((key, value), delivery) in pending {
        let meta: RecordMetadata = delivery
            .await
            .unwrap_or_else(|e| panic!("{topic}: {key}={value} not acknowledged (acks=all): {e}"));
        acks.fetch_add(1, Ordering::AcqRel);
        out.push(Acked {
            key: key.clone(),
            value: value.clone(),
            offset: meta.offset,
        });
    }
    out
}

/// Version `version` of every key in `keys`, ~100 bytes a record.
fn version_of(keys: &[String], version: usize) -> Vec<(String, String)> {
    keys.iter()
        .map(|k| (k.clone(), format!("v{version}-{k}-{}", "x".repeat(72))))
        .collect()
}

/// One record as read back from a replica's segment files.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DiskRecord {
    key: Option<String>,
    value: Option<String>,
}

/// The batches of the replica in `dir`, each with a valid CRC, and offset → record (control
/// records left out).
fn read_replica(
    broker: i32,
    dir: &std::path::Path,
) -> (Vec<StoredBatch>, BTreeMap<i64, DiskRecord>) {
    let batches = stored_batches(dir).unwrap_or_else(|e| panic!("broker {broker}: {e}"));
    let text = |b: &Option<Bytes>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
    let mut records = BTreeMap::new();
    for b in &batches {
        let header = keel_protocol::batch::BatchHeader::parse(&b.bytes)
            .unwrap_or_else(|e| panic!("broker {broker}: batch at {}: {e:?}", b.base_offset));
        header.validate(&b.bytes).unwrap_or_else(|e| {
            panic!(
                "broker {broker}: batch {}..={} in {} fails validation: {e:?}",
                b.base_offset,
                b.last_offset,
                dir.display()
            )
        });
        let mut buf = Bytes::copy_from_slice(&b.bytes);
        let sets = kafka_protocol::records::RecordBatchDecoder::decode_all(&mut buf)
            .unwrap_or_else(|e| panic!("broker {broker}: decode batch {}: {e}", b.base_offset));
        for r in sets.into_iter().flat_map(|s| s.records) {
            if !r.control {
                records.insert(
                    r.offset,
                    DiskRecord {
                        key: text(&r.key),
                        value: text(&r.value),
                    },
                );
            }
        }
    }
    (batches, records)
}

/// Guards against: a follower restarted after downtime gets the new keys but misses the
/// updates to existing keys (its log, or the log it serves after a failover, then holds
/// stale values for keys the leader has since overwritten).
///
/// Keys k0..k149 are written with acks=all; a follower is killed with SIGKILL while a round
/// of updates is in flight and its data dir then loses every byte not yet fsynced (a
/// simulated power cut, from the brokers' sync journal). While it is down every existing
/// key gets three more versions and new keys are added, over several segment rolls
/// (`log.segment.bytes` 8 KiB). Once it is back in the ISR and `keel check` exits 0, every
/// broker is stopped cleanly and every replica's log is read from disk: for every key the
/// last value is the last acknowledged one, on every replica; every acknowledged offset
/// holds its record; and all replicas hold the same batches, byte for byte, up to the HW.
///
/// Run twice: with `log.flush.policy=interval` (1 s), where the cut always takes data the
/// follower had already reported to the leader (its log then ends below its checkpointed
/// HW), and with the default `always`, where a follower fsyncs before it reports an offset
/// and the cut takes at most an unreported tail (often nothing).
#[test]
fn follower_back_from_power_loss_has_every_update_to_existing_keys() {
    let _serial = serial();
    power_loss_run(
        "follower_back_from_power_loss_has_every_update_to_existing_keys-interval",
        FlushPolicy::Interval,
    );
    power_loss_run(
        "follower_back_from_power_loss_has_every_update_to_existing_keys-always",
        FlushPolicy::Always,
    );
}

/// What the sync journal says about the segments of a replica dir.
struct SyncState {
    /// Some segment has been fsynced at least once.
    journaled: bool,
    /// Bytes past the synced length, over all segments.
    unsynced_bytes: u64,
}

fn sync_state(dir: &std::path::Path) -> SyncState {
    let mut state = SyncState {
        journaled: false,
        unsynced_bytes: 0,
    };
    for (_, file) in segment_files(dir) {
        let synced = keel_storage::sync_journal::synced_len(&file)
            .unwrap_or_else(|e| panic!("sync journal of {}: {e}", file.display()));
        let len = std::fs::metadata(&file).map_or(0, |m| m.len());
        state.journaled |= synced.is_some();
        state.unsynced_bytes += len.saturating_sub(synced.unwrap_or(0));
    }
    state
}

/// `log.flush.policy` of a [`power_loss_run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlushPolicy {
    /// fsync every second: the power cut always takes something.
    Interval,
    /// The default: fsync before an append counts.
    Always,
}

fn power_loss_run(test: &str, policy: FlushPolicy) {
    const TOPIC: &str = "powerloss";
    const KEYS: usize = 150;
    const NEW_KEYS_PER_ROUND: usize = 40;
    const ROUNDS_WHILE_DOWN: usize = 3;
    let started = Instant::now();
    let opts = fast_opts()
        .env(SYNC_JOURNAL_ENV, "1")
        .set("log.segment.bytes", "8192")
        .set("log.flush.offset.checkpoint.interval.ms", "100");
    let opts = match policy {
        FlushPolicy::Interval => opts
            .set("log.flush.interval.ms", "1000")
            .set("log.flush.policy", "interval"),
        FlushPolicy::Always => opts.set("log.flush.policy", "always"),
    };
    let mut cluster = TestCluster::start(opts);
    let keep = KeepLogs::new(LOG_DIR, test, &cluster);
    let all = cluster.broker_ids();
    cluster.create_replicated_topic(TOPIC, 1, SETTLE);
    let leader = cluster.leader_of(TOPIC, 0).expect("a leader");
    let follower = *all.iter().find(|&&b| b != leader).expect("a follower");
    let leader_dir = replica_dir(&cluster.broker(leader).data_dir(), TOPIC, 0);
    eprintln!("[{policy:?}] {TOPIC}-0: leader {leader}; follower {follower} will lose power");

    let rt = runtime();
    let producer = rt.block_on(producer(&cluster.bootstrap(), 1024));
    let acks = Arc::new(AtomicUsize::new(0));
    let mut acked: Vec<Acked> = Vec::new();
    let mut keys: Vec<String> = (0..KEYS).map(|i| format!("k{i}")).collect();

    // Version 0 of every key, replicated to all three.
    acked.extend(rt.block_on(produce_round(
        &producer,
        TOPIC,
        &version_of(&keys, 0),
        &acks,
    )));

    // The follower has fsynced some of it: a power cut leaves it a log to start from.
    let follower_dir = replica_dir(&cluster.broker(follower).data_dir(), TOPIC, 0);
    wait_until(
        &format!("broker {follower} has fsynced part of its log"),
        SETTLE,
        || sync_state(&follower_dir).journaled,
    );

    // Version 1 in flight, paced over about 1.5 s, when the follower dies.
    let in_flight = {
        let (producer, acks, round) = (producer.clone(), acks.clone(), version_of(&keys, 1));
        rt.spawn(async move {
            let mut acked = Vec::new();
            for chunk in round.chunks(5) {
                acked.extend(produce_round(&producer, TOPIC, chunk, &acks).await);
                // Pacing, not a wait: spread the round over time.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            acked
        })
    };
    let before = KEYS;
    let mut synced = sync_state(&follower_dir);
    wait_until(
        "a third of version 1 is acknowledged (and, with interval flushes, the follower \
         holds data it has not fsynced)",
        SETTLE,
        || {
            synced = sync_state(&follower_dir);
            acks.load(Ordering::Acquire) >= before + KEYS / 3
                && (policy == FlushPolicy::Always || synced.unsynced_bytes > 0)
        },
    );
    let status = cluster.kill9(follower);
    let acks_at_kill = acks.load(Ordering::Acquire);
    let loss = simulate_power_loss(&cluster.broker(follower).data_dir());
    eprintln!(
        "kill -9 of {follower} ({status}) after {acks_at_kill} acks, {} bytes not fsynced at \
         the last look; {loss}",
        synced.unsynced_bytes
    );
    assert!(
        loss.journaled > 0,
        "no sync journal on broker {follower}: was it started with {SYNC_JOURNAL_ENV}=1? {loss}"
    );
    if policy == FlushPolicy::Interval {
        assert!(
            loss.bytes_discarded() > 0,
            "the power cut took nothing from broker {follower} although it fsyncs only every \
             second: {loss}"
        );
    }
    let follower_end_after_loss = stored_batches(&follower_dir)
        .unwrap_or_else(|e| panic!("{e}"))
        .last()
        .map_or(0, |b| b.last_offset + 1);
    let segments_at_kill = segment_files(&leader_dir).len();
    acked.extend(
        rt.block_on(in_flight)
            .expect("the version 1 round panicked"),
    );

    // While it is down: more versions of every existing key, and new keys.
    for round in 0..ROUNDS_WHILE_DOWN {
        let first_new = keys.len();
        keys.extend((first_new..first_new + NEW_KEYS_PER_ROUND).map(|i| format!("k{i}")));
        let records = version_of(&keys, 2 + round);
        acked.extend(rt.block_on(produce_round(&producer, TOPIC, &records, &acks)));
    }
    let segments_at_restart = segment_files(&leader_dir).len();
    let end = acked.iter().map(|a| a.offset + 1).max().unwrap_or(0);
    eprintln!(
        "while {follower} was down: {} records acknowledged, the leader's log went from {} to \
         {} segments (follower's log ends at {follower_end_after_loss} after the power cut, \
         the leader's at {end})",
        acks.load(Ordering::Acquire) - acks_at_kill,
        segments_at_kill,
        segments_at_restart
    );
    assert!(
        segments_at_restart >= segments_at_kill + 2,
        "the leader rolled {} segment(s) while the follower was down; the test wants at \
         least 2 (log.segment.bytes too large for the records written?)",
        segments_at_restart - segments_at_kill
    );
    rt.block_on(producer.close())
        .unwrap_or_else(|e| panic!("close the producer: {e}"));

    // Back up: in the ISR again, and `keel check` says SYNCED.
    cluster.restart(follower);
    let restarted_at = Instant::now();
    cluster.wait_for_brokers(&all, SETTLE);
    wait_until(
        &format!("follower {follower} is back in the ISR of {TOPIC}-0"),
        SETTLE,
        || cluster.isr_of(TOPIC, 0).is_some_and(|isr| isr == all),
    );
    let (synced, out) = poll_check(&cluster, TOPIC, SETTLE);
    assert!(
        synced,
        "`keel check` did not exit 0 within {SETTLE:?} of the follower's return: {out}"
    );
    eprintln!(
        "follower {follower} back in the ISR and SYNCED {:.1}s after its restart",
        restarted_at.elapsed().as_secs_f64()
    );
    let hw = wait_for(
        &format!("every replica of {TOPIC}-0 reports LEO == HW == {end}"),
        SETTLE,
        || {
            all.iter()
                .all(|&id| {
                    let o = cluster.replica_offsets(id, TOPIC, 0);
                    o.leo == Some(end) && o.hw == Some(end)
                })
                .then_some(end)
        },
    );

    // Clean stop (followers first), then every replica's log from disk.
    let leader_now = cluster.leader_of(TOPIC, 0);
    let mut order = all.clone();
    order.sort_by_key(|&id| Some(id) == leader_now);
    for &id in &order {
        let status = cluster.stop(id);
        assert!(
            status.success(),
            "broker {id} exited with {status} on SIGTERM"
        );
    }
    let dirs: BTreeMap<i32, PathBuf> = all
        .iter()
        .map(|&id| (id, replica_dir(&cluster.broker(id).data_dir(), TOPIC, 0)))
        .collect();

    // What the producer was told: the last acknowledged value of each key (highest offset),
    // which is its last version.
    let mut want: BTreeMap<&str, &Acked> = BTreeMap::new();
    for a in &acked {
        let slot = want.entry(a.key.as_str()).or_insert(a);
        if a.offset > slot.offset {
            *slot = a;
        }
    }
    assert_eq!(
        want.len(),
        keys.len(),
        "every key was acknowledged at least once"
    );
    let last_version = 1 + ROUNDS_WHILE_DOWN;
    for (key, a) in &want {
        assert!(
            a.value.starts_with(&format!("v{last_version}-{key}-")),
            "test bug: the last acknowledged value of {key} is {} at offset {}",
            a.value,
            a.offset
        );
    }

    for (&id, dir) in &dirs {
        let role = if id == follower {
            " (the follower that lost power)"
        } else {
            ""
        };
        let (batches, records) = read_replica(id, dir);
        let stored_end = batches.last().map_or(0, |b| b.last_offset + 1);
        assert_eq!(
            stored_end, hw,
            "broker {id}{role}: its log ends at {stored_end}, the HW of all replicas was {hw}"
        );
        // Every acknowledged record at its offset.
        let wrong_offsets: Vec<String> = acked
            .iter()
            .filter(|a| {
                records.get(&a.offset)
                    != Some(&DiskRecord {
                        key: Some(a.key.clone()),
                        value: Some(a.value.clone()),
                    })
            })
            .map(|a| format!("{}@{}: {:?}", a.key, a.offset, records.get(&a.offset)))
            .collect();
        assert!(
            wrong_offsets.is_empty(),
            "broker {id}{role}: {} of {} acknowledged records are not at their offset, e.g. {:?}",
            wrong_offsets.len(),
            acked.len(),
            &wrong_offsets[..wrong_offsets.len().min(5)]
        );
        // The last value of every key.
        let mut last: BTreeMap<String, String> = BTreeMap::new();
        for (offset, r) in &records {
            let key = r
                .key
                .clone()
                .unwrap_or_else(|| panic!("broker {id}: a record without a key at {offset}"));
            last.insert(key, r.value.clone().unwrap_or_default());
        }
        let missing: Vec<&&str> = want.keys().filter(|k| !last.contains_key(**k)).collect();
        let stale: Vec<String> = want
            .iter()
            .filter_map(|(k, a)| {
                let got = last.get(*k)?;
                (*got != a.value).then(|| format!("{k}: want {}, got {got}", short(&a.value)))
            })
            .collect();
        let unknown: Vec<&String> = last
            .keys()
            .filter(|k| !want.contains_key(k.as_str()))
            .collect();
        assert!(
            missing.is_empty() && stale.is_empty() && unknown.is_empty(),
            "broker {id}{role}: {} keys missing (e.g. {:?}), {} keys with a stale last value \
             (e.g. {:?}), {} unknown keys (e.g. {:?})",
            missing.len(),
            &missing[..missing.len().min(5)],
            stale.len(),
            &stale[..stale.len().min(5)],
            unknown.len(),
            &unknown[..unknown.len().min(5)]
        );
    }
    let problems = compare_committed(0, hw, &dirs);
    assert!(
        problems.is_empty(),
        "the replicas of {TOPIC}-0 differ below the HW {hw} (broker {follower} lost power): \
         {problems:?}"
    );
    eprintln!(
        "{} keys, {} acknowledged records, identical on {} replicas; took {:.1}s",
        want.len(),
        acked.len(),
        dirs.len(),
        started.elapsed().as_secs_f64()
    );
    drop(keep);
}

/// The version prefix of a value, for short messages.
fn short(value: &str) -> &str {
    value.split('-').next().unwrap_or(value)
}

// ---------------------------------------------------------------------------------------
// 2. A paused follower converges on 16 partitions
// ---------------------------------------------------------------------------------------

/// What a node's `/metrics` says about the replicas of one topic it hosts.
#[derive(Debug, Default)]
struct NodeView {
    /// partition → (LEO, HW, leads it).
    replicas: BTreeMap<i32, (Option<i64>, Option<i64>, bool)>,
    /// (partition, follower) → lag in records, as this node reports it while leading.
    lags: BTreeMap<(i32, i32), f64>,
}

/// Node `id`'s view of `topic`; `None` when it does not answer.
fn node_view(cluster: &TestCluster, id: i32, topic: &str) -> Option<NodeView> {
    let text = cluster.try_scrape_metrics(id)?;
    let samples = parse_exposition(&text)
        .unwrap_or_else(|e| panic!("node {id}'s /metrics does not parse: {e}"));
    let mut view = NodeView::default();
    let partition_of = |s: &Sample| -> Option<i32> {
        (s.label("topic")? == topic).then_some(())?;
        s.label("partition")?.parse().ok()
    };
    for s in &samples {
        let Some(p) = partition_of(s) else { continue };
        match s.name.as_str() {
            LOG_END_OFFSET => view.replicas.entry(p).or_default().0 = Some(s.value as i64),
            HIGH_WATERMARK => view.replicas.entry(p).or_default().1 = Some(s.value as i64),
            IS_LEADER => view.replicas.entry(p).or_default().2 = s.value == 1.0,
            FOLLOWER_LAG_RECORDS => {
                if let Some(r) = s.label("replica").and_then(|r| r.parse().ok()) {
                    view.lags.insert((p, r), s.value);
                }
            }
            _ => {}
        }
    }
    Some(view)
}

/// Why `topic` has not converged yet, one line per partition that has not (empty once it
/// has): every partition has one leader, whose HW == LEO >= `acked_end`; every follower
/// reports the leader's LEO and HW; the leader reports lag 0 for every follower.
fn convergence_problems(
    cluster: &TestCluster,
    topic: &str,
    partitions: i32,
    acked_end: &BTreeMap<i32, i64>,
) -> Vec<String> {
    let ids = cluster.broker_ids();
    let views: BTreeMap<i32, NodeView> = ids
        .iter()
        .filter_map(|&id| Some((id, node_view(cluster, id, topic)?)))
        .collect();
    let mut problems: Vec<String> = ids
        .iter()
        .filter(|id| !views.contains_key(id))
        .map(|id| format!("broker {id} does not answer /metrics"))
        .collect();
    for p in 0..partitions {
        let mut why = Vec::new();
        let leaders: Vec<i32> = views
            .iter()
            .filter(|(_, v)| v.replicas.get(&p).is_some_and(|r| r.2))
            .map(|(&id, _)| id)
            .collect();
        let &[leader] = leaders.as_slice() else {
            problems.push(format!("{topic}-{p}: leaders {leaders:?}"));
            continue;
        };
        let (leo, hw, _) = views[&leader].replicas[&p];
        let want_end = acked_end.get(&p).copied().unwrap_or(0);
        if hw != leo || leo.is_none_or(|l| l < want_end) {
            why.push(format!(
                "leader {leader} LEO {leo:?} HW {hw:?} (acknowledged up to {want_end})"
            ));
        }
        for (&id, view) in &views {
            if id == leader {
                continue;
            }
            match view.replicas.get(&p) {
                Some(&(f_leo, f_hw, _)) if (f_leo, f_hw) == (leo, hw) => {}
                Some(&(f_leo, f_hw, _)) => {
                    why.push(format!("follower {id} LEO {f_leo:?} HW {f_hw:?}"))
                }
                None => why.push(format!("follower {id} reports no replica")),
            }
            let lag = views[&leader].lags.get(&(p, id));
            if lag != Some(&0.0) {
                why.push(format!("leader's lag for {id}: {lag:?}"));
            }
        }
        if !why.is_empty() {
            problems.push(format!("{topic}-{p}: {}", why.join(", ")));
        }
    }
    problems
}

/// Records the leaders (the other brokers, which answer) report follower `id` behind, over
/// every partition of `topic` they lead.
fn lag_of(cluster: &TestCluster, topic: &str, id: i32) -> f64 {
    cluster
        .broker_ids()
        .into_iter()
        .filter(|&b| b != id)
        .filter_map(|b| node_view(cluster, b, topic))
        .flat_map(|v| v.lags.into_iter())
        .filter(|((_, r), _)| *r == id)
        .map(|(_, lag)| lag)
        .sum()
}

/// ISR shrinks committed for partitions the brokers lead, summed over the brokers.
fn isr_shrinks(cluster: &TestCluster) -> f64 {
    cluster
        .broker_ids()
        .into_iter()
        .map(|b| isr_shrinks_of(cluster, b))
        .sum()
}

/// ISR shrinks committed by broker `id` (for partitions it leads).
fn isr_shrinks_of(cluster: &TestCluster, id: i32) -> f64 {
    let text = cluster.scrape_metrics(id);
    parse_exposition(&text)
        .unwrap_or_else(|e| panic!("node {id}'s /metrics does not parse: {e}"))
        .iter()
        .filter(|s| s.name == "keel_isr_shrinks_total")
        .map(|s| s.value)
        .sum()
}

/// A background acks=all producer over every partition of a topic, round-robin, until
/// stopped; it records each partition's acknowledged end and every failure.
struct Load {
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicUsize>,
    /// partition → last acknowledged offset + 1.
    acked_end: Arc<Mutex<BTreeMap<i32, i64>>>,
    failed: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<usize>,
}

impl Load {
    fn start(rt: &tokio::runtime::Runtime, bootstrap: &str, topic: &str, partitions: i32) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicUsize::new(0));
        let acked_end = Arc::new(Mutex::new(BTreeMap::new()));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
        let (stop2, acks2, end2, failed2) = (
            stop.clone(),
            acks.clone(),
            acked_end.clone(),
            failed.clone(),
        );
        let task = rt.spawn(async move {
            let producer = producer(&bootstrap, 16 * 1024).await;
            // Each delivery is awaited on its own, so acknowledgements from the partitions
            // the paused broker does not lead are counted while it is paused.
            let mut deliveries = tokio::task::JoinSet::new();
            let mut sent = 0usize;
            // Bounded: at most a million records, far above what a run sends.
            while !stop2.load(Ordering::Acquire) && sent < 1_000_000 {
                let partition = (sent % partitions as usize) as i32;
                let value = format!("r{sent:07}-{}", "y".repeat(60));
                let record = ProducerRecord::new(topic.clone(), value)
                    .key(format!("key-{}", sent % 1000))
                    .partition(partition);
                match producer.send(record).await {
                    Ok(delivery) => {
                        let (acks, end, failed) = (acks2.clone(), end2.clone(), failed2.clone());
                        deliveries.spawn(async move {
                            match delivery.await {
                                Ok(meta) => {
                                    let mut end = lock(&end);
                                    let e = end.entry(meta.partition).or_insert(0);
                                    *e = (*e).max(meta.offset + 1);
                                    acks.fetch_add(1, Ordering::AcqRel);
                                }
                                Err(e) => lock(&failed).push(format!("record {sent}: {e}")),
                            }
                        });
                    }
                    Err(e) => lock(&failed2).push(format!("send {sent}: {e}")),
                }
                sent += 1;
                if sent.is_multiple_of(16) {
                    // Pacing, not correctness: a steady load the two cores can carry.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    while deliveries.try_join_next().is_some() {}
                }
            }
            // Failures are recorded per record; close's error is the first of them.
            let _ = producer.close().await;
            while deliveries.join_next().await.is_some() {}
            sent
        });
        Load {
            stop,
            acks,
            acked_end,
            failed,
            task,
        }
    }

    fn acks(&self) -> usize {
        self.acks.load(Ordering::Acquire)
    }

    /// Stops sending and waits until every delivery is resolved, at most `timeout`; returns
    /// (sent, acknowledged end per partition, failures).
    fn finish(
        self,
        rt: &tokio::runtime::Runtime,
        timeout: Duration,
    ) -> (usize, BTreeMap<i32, i64>, Vec<String>) {
        self.stop.store(true, Ordering::Release);
        let sent = rt
            .block_on(async { tokio::time::timeout(timeout, self.task).await })
            .unwrap_or_else(|_| {
                panic!("the producer did not resolve its deliveries within {timeout:?}")
            })
            .expect("the producer task panicked");
        let end = std::mem::take(&mut *lock(&self.acked_end));
        let failed = std::mem::take(&mut *lock(&self.failed));
        (sent, end, failed)
    }
}

/// Guards against: followers whose HW and LEO stay far behind the leader after a pause
/// (or a slow period) and never converge, although the load has stopped.
///
/// 16 partitions (RF 3, min ISR 2) under continuous acks=all load; one broker, which leads
/// some partitions and follows the others, is SIGSTOPped five times for 1–2 s each (long
/// enough to leave the ISRs, not long enough to be fenced). The load stops shortly after
/// the last SIGCONT. Within 10 s of that SIGCONT (the producer finishing included): every
/// partition's followers report the leader's LEO and HW, which cover every acknowledged
/// record, the leaders report a lag of 0 records for every follower, and `keel check` exits
/// 0. Prints how long convergence took.
#[test]
fn paused_follower_converges_on_16_partitions() {
    let _serial = serial();
    const TEST: &str = "paused_follower_converges_on_16_partitions";
    const TOPIC: &str = "converge16";
    const PARTITIONS: i32 = 16;
    /// How long each pause lasts.
    const PAUSES_MS: [u64; 5] = [1000, 1500, 2000, 1200, 1800];
    /// The limit, from the last SIGCONT.
    const CONVERGE: Duration = Duration::from_secs(10);
    let started = Instant::now();
    let mut cluster = TestCluster::start(pause_opts());
    let keep = KeepLogs::new(LOG_DIR, TEST, &cluster);
    cluster.create_replicated_topic(TOPIC, PARTITIONS, SETTLE);
    let paused = *cluster.broker_ids().last().expect("three brokers");
    let led: Vec<i32> = (0..PARTITIONS)
        .filter(|&p| cluster.leader_of(TOPIC, p) == Some(paused))
        .collect();
    eprintln!("pausing broker {paused}, which leads partitions {led:?} of {TOPIC}");

    let rt = runtime();
    let load = Load::start(&rt, &cluster.bootstrap(), TOPIC, PARTITIONS);
    wait_until("the load is acknowledged (1000 records)", SETTLE, || {
        load.acks() >= 1000
    });

    let shrinks_before = isr_shrinks(&cluster);
    let mut max_lag = 0.0f64;
    let mut resumed_at = Instant::now();
    for (i, pause_ms) in PAUSES_MS.iter().enumerate() {
        let acks_before = load.acks();
        cluster.sigstop(paused);
        let paused_at = Instant::now();
        // The fault's length, not a wait for a condition: the broker stays stopped this long.
        std::thread::sleep(Duration::from_millis(*pause_ms));
        // Just before it resumes: how far behind the other leaders see it.
        let lag = lag_of(&cluster, TOPIC, paused);
        max_lag = max_lag.max(lag);
        cluster.sigcont(paused);
        resumed_at = Instant::now();
        let during = load.acks() - acks_before;
        eprintln!(
            "pause {}: {:.1}s, {during} acks meanwhile, broker {paused} {lag} records behind \
             on the partitions it follows",
            i + 1,
            (resumed_at - paused_at).as_secs_f64()
        );
        if i + 1 < PAUSES_MS.len() {
            // The load flows again (deliveries stuck on the paused leader resolved) before
            // the next pause.
            let acks_after = load.acks();
            wait_until(
                &format!("300 more acks after resume {}", i + 1),
                SETTLE,
                || load.acks() >= acks_after + 300,
            );
        }
    }
    // Shortly after the last resume, the load stops; its deliveries resolve in the window.
    let acks_after = load.acks();
    poll_until(Duration::from_secs(1), || load.acks() >= acks_after + 200);
    let (sent, acked_end, failed) = load.finish(&rt, CONVERGE.saturating_sub(resumed_at.elapsed()));
    let load_done = resumed_at.elapsed();
    // Offsets up to the last acknowledged one; more than the records sent when the producer
    // (not idempotent) re-sent batches that had been appended.
    let acked: i64 = acked_end.values().sum();
    eprintln!(
        "load: {sent} records sent, {} failed, logs hold {acked} offsets up to the last \
         acknowledged ones over {} partitions ({} appended twice after retries); finished \
         {:.1}s after the last SIGCONT",
        failed.len(),
        acked_end.len(),
        (acked - sent as i64).max(0),
        load_done.as_secs_f64()
    );
    assert!(
        failed.is_empty(),
        "{} acks=all records failed with 2 of 3 replicas always up, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert_eq!(
        acked_end.len(),
        PARTITIONS as usize,
        "every partition got acknowledged records: {acked_end:?}"
    );
    // The pauses did what they are for: the broker fell behind as a follower.
    assert!(
        max_lag > 0.0,
        "the leaders never reported broker {paused} lagging at the end of a pause"
    );

    // Within the window: offsets, lags, then `keel check`.
    let deadline = resumed_at + CONVERGE;
    let mut last = Vec::new();
    let converged = poll_until(deadline.saturating_duration_since(Instant::now()), || {
        last = convergence_problems(&cluster, TOPIC, PARTITIONS, &acked_end);
        last.is_empty()
    });
    if !converged {
        // How far off: does it converge at all, given 30 s more?
        let late = poll_until(SETTLE, || {
            convergence_problems(&cluster, TOPIC, PARTITIONS, &acked_end).is_empty()
        });
        panic!(
            "{TOPIC} has not converged {:.1}s after the last SIGCONT of broker {paused} \
             (limit {CONVERGE:?}; {}); not converged then:\n  {}",
            CONVERGE.as_secs_f64(),
            if late {
                format!(
                    "it did converge {:.1}s after the SIGCONT",
                    resumed_at.elapsed().as_secs_f64()
                )
            } else {
                "nor 30 s later".to_string()
            },
            last.join("\n  ")
        );
    }
    let offsets_converged = resumed_at.elapsed();
    let left = deadline.saturating_duration_since(Instant::now());
    let (synced, out) = poll_check(&cluster, TOPIC, left);
    assert!(
        synced,
        "offsets and lags converged {:.1}s after the last SIGCONT, but `keel check` did not \
         exit 0 within {CONVERGE:?} of it: {out}",
        offsets_converged.as_secs_f64()
    );
    let checked = resumed_at.elapsed();
    // Still converged after the check: nothing moved back.
    let after = convergence_problems(&cluster, TOPIC, PARTITIONS, &acked_end);
    assert!(after.is_empty(), "converged, then not: {after:?}");
    let shrinks = isr_shrinks(&cluster) - shrinks_before;
    eprintln!(
        "ISR shrinks during the run: {shrinks}; most records behind at the end of a pause: \
         {max_lag}"
    );
    eprintln!(
        "converged {:.1}s after the last SIGCONT (producer done at {:.1}s, offsets and lags at \
         {:.1}s, keel check exit 0 at {:.1}s); took {:.1}s",
        checked.as_secs_f64(),
        load_done.as_secs_f64(),
        offsets_converged.as_secs_f64(),
        checked.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    drop(keep);
}

/// Guards against: a leader that was itself stopped blaming its followers for the stall.
/// Found by the test above: a leader resumed after SIGSTOP ran its ISR check before it read
/// the fetches its followers had queued meanwhile, so both looked late by the length of the
/// pause, and it shrank the ISR to itself (below min ISR) for up to 1.4 s, refusing acks=all
/// and making producer retries append batches twice.
///
/// Under acks=all load on 3 partitions, the broker leading partition 0 is SIGSTOPped three
/// times for 2.5 s (longer than `replica.lag.time.max.ms`, shorter than the session
/// timeout). The leader must commit no ISR shrink for the whole run, every ISR stays full,
/// and no record fails.
#[test]
fn paused_leader_keeps_its_followers_in_the_isr() {
    let _serial = serial();
    const TEST: &str = "paused_leader_keeps_its_followers_in_the_isr";
    const TOPIC: &str = "pausedleader";
    const PARTITIONS: i32 = 3;
    const PAUSE: Duration = Duration::from_millis(2500);
    let mut cluster = TestCluster::start(pause_opts());
    let keep = KeepLogs::new(LOG_DIR, TEST, &cluster);
    cluster.create_replicated_topic(TOPIC, PARTITIONS, SETTLE);
    let leader = cluster
        .leader_of(TOPIC, 0)
        .expect("partition 0 has a leader");
    let rt = runtime();
    let load = Load::start(&rt, &cluster.bootstrap(), TOPIC, PARTITIONS);
    wait_until("the load is acknowledged (500 records)", SETTLE, || {
        load.acks() >= 500
    });
    let shrinks_before = isr_shrinks_of(&cluster, leader);
    for i in 0..3 {
        cluster.sigstop(leader);
        // The fault's length: the leader stays stopped this long.
        std::thread::sleep(PAUSE);
        cluster.sigcont(leader);
        let acks_after = load.acks();
        wait_until(
            &format!("300 more acks after resume {}", i + 1),
            SETTLE,
            || load.acks() >= acks_after + 300,
        );
        // An observation window longer than the lag limit: a wrong shrink would be
        // committed within it.
        std::thread::sleep(Duration::from_millis(1500));
        let shrinks = isr_shrinks_of(&cluster, leader) - shrinks_before;
        assert_eq!(
            shrinks,
            0.0,
            "broker {leader} shrank an ISR after resume {} although its followers kept fetching",
            i + 1
        );
        for p in 0..PARTITIONS {
            let isr = cluster.isr_of(TOPIC, p).unwrap_or_default();
            assert_eq!(
                isr.len(),
                3,
                "partition {p} ISR after resume {}: {isr:?}",
                i + 1
            );
        }
    }
    let (sent, _, failed) = load.finish(&rt, SETTLE);
    assert!(
        failed.is_empty(),
        "{} of {sent} acks=all records failed, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    eprintln!("{sent} records, 3 pauses of the leader, no ISR shrink");
    drop(keep);
}
