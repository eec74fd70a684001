//! Regressions seen in other brokers' replica lifecycles, against a real controller and three
//! brokers on 127.0.0.1 ([`TestCluster`]):
//!
//! 1. a create/delete/re-create storm of one topic name, with a broker killed (kill -9) in
//!    the middle and restarted later, leaves no zombie replica: no orphan directory, no
//!    deleted file held, no error repeating in a node log, storage gauges equal to the files,
//!    and an empty, healthy topic when it is created for the last time;
//! 2. a broker repeatedly forced to hold a divergent tail (isolated as leader while it takes
//!    acks=1 writes) converges in at most two truncations per round, and leaks no disk space
//!    from round to round;
//! 3. a CreateTopics forwarded by a broker and overtaken by a delete answers as soon as the
//!    broker sees the delete, instead of waiting out its bound.
//!
//! The tests share two cores with other suites: they run one at a time (a process-wide lock,
//! and across processes the caller's `flock`), every wait is a condition with a deadline, and
//! on failure (or with `KEEL_TEST_KEEP_LOGS=1`) each node's log and a listing of its data dir
//! are copied to `$TMPDIR/keel-regressions-lifecycle/<test>/`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::{CreateTopicsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use keel_client::connection::Connection;
use keel_client::{
    Acks, Admin, ClientConfig, ClientError, Consumer, ConsumerConfig, Offset, PartitionInfo,
    Producer, ProducerConfig, ProducerRecord, RecordMetadata, TopicSpec,
};
use keel_tests::chaos::replicas::{
    accounting_problems, compare_committed, deleted_files_held, replica_dirs, stored_batches,
};
use keel_tests::disk::segment_files;
use keel_tests::inspect::{list_tree, metric_sum, open_fds_matching};
use keel_tests::load::steady_producer;
use keel_tests::proxy::LinkFault;
use keel_tests::{poll_until, runtime, serial, wait_for, wait_until};
use keel_tests::{ClusterOpts, KeepLogs, TestCluster};

/// Where [`KeepLogs`] copies the nodes' logs to, under `$TMPDIR`.
const LOG_DIR: &str = "keel-regressions-lifecycle";
use tokio::runtime::Runtime;

const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const TOPIC_ALREADY_EXISTS: i16 = 36;
const INVALID_REPLICATION_FACTOR: i16 = 38;
const TRUNCATIONS_TOTAL: &str = "keel_replica_truncations_total";
const DIVERGENCE_RESYNCS_TOTAL: &str = "keel_replica_divergence_resyncs_total";
const REPLICAS_HOSTED: &str = "keel_replica_hosted";
const LOG_DIR_USED_BYTES: &str = "keel_log_dir_used_bytes";
const MAPPED_BYTES: &str = "keel_log_mapped_bytes";
/// Leader elections need the old leader fenced (`broker.session.timeout.ms`) and a
/// controller tick; restarts need registration and catch-up.
const SETTLE: Duration = Duration::from_secs(30);
/// Background deletions and gauge refreshes.
const CLEANUP: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------

/// Fast fencing, ISR shrink and metrics; min ISR 2.
fn fast_opts() -> ClusterOpts {
    ClusterOpts::default()
        .fast_failover()
        .set("min.insync.replicas", "2")
}

/// The partition as the brokers behind `bootstrap` (and only those, as far as the client
/// goes) describe it; `None` when they do not answer within a few seconds.
fn partition_via(
    rt: &Runtime,
    bootstrap: &str,
    topic: &str,
    partition: i32,
) -> Option<PartitionInfo> {
    let mut config = ClientConfig::new(bootstrap);
    config.request_timeout = Duration::from_secs(4);
    config.connect_timeout = Duration::from_secs(2);
    let names = vec![topic.to_string()];
    rt.block_on(async {
        let ask = async { Admin::new(config).await?.describe_topics(&names).await };
        let mut described = tokio::time::timeout(Duration::from_secs(8), ask)
            .await
            .ok()?
            .ok()?;
        described
            .pop()
            .filter(|d| d.error.is_none())?
            .partitions
            .into_iter()
            .find(|p| p.partition == partition)
    })
}

/// A counter or gauge of node `id`, summed over labels; panics if the node does not answer.
fn metric_of(cluster: &TestCluster, id: i32, name: &str) -> i64 {
    metric_sum(&cluster.scrape_metrics(id), name) as i64
}

/// Produces `values` to `topic`/`partition`, `chunk` records at a time (each chunk awaited
/// before the next is sent, so a chunk is at most one batch), and requires every record to
/// be acknowledged; returns offset → value.
fn produce_acked(
    rt: &Runtime,
    bootstrap: &str,
    acks: Acks,
    topic: &str,
    partition: i32,
    values: &[String],
    chunk: usize,
) -> BTreeMap<i64, String> {
    let timeout = Duration::from_secs(15);
    let mut client = ClientConfig::new(bootstrap);
    client.request_timeout = timeout;
    let config = ProducerConfig {
        acks,
        request_timeout: timeout,
        ..ProducerConfig::default()
    };
    let results: Vec<Result<RecordMetadata, ClientError>> = rt.block_on(async {
        let producer = Producer::new(client, config)
            .await
            .unwrap_or_else(|e| panic!("producer for {topic}: {e}"));
        let mut out = Vec::new();
        for values in values.chunks(chunk.max(1)) {
            let mut pending = Vec::new();
            for v in values {
                let record = ProducerRecord::new(topic, v.clone()).partition(partition);
                pending.push(producer.send(record).await);
            }
            for d in pending {
                out.push(match d {
                    Ok(d) => d.await,
                    Err(e) => Err(e),
                });
            }
        }
        let _ = producer.close().await;
        out
    });
    let mut acked = BTreeMap::new();
    for (v, r) in values.iter().zip(results) {
        let meta = r.unwrap_or_else(|e| {
            let short = &v[..v.len().min(40)];
            panic!("{topic}-{partition}: {short}.. not acknowledged (acks {acks:?}): {e}")
        });
        assert_eq!(meta.partition, partition);
        assert!(
            acked.insert(meta.offset, v.clone()).is_none(),
            "{topic}-{partition}: two records acknowledged at offset {}",
            meta.offset
        );
    }
    acked
}

/// Reads `topic`-`partition` from offset 0 until the position reaches `end` (or 30 s).
async fn consume_until(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    end: i64,
) -> BTreeMap<i64, String> {
    let mut consumer = Consumer::new(ClientConfig::new(bootstrap), ConsumerConfig::default())
        .await
        .expect("consumer");
    consumer
        .assign(topic, &[partition], Offset::At(0))
        .await
        .expect("assign");
    let mut out = BTreeMap::new();
    let start = Instant::now();
    for _ in 0..10_000 {
        let position = consumer.position(topic, partition).unwrap_or(0);
        if position >= end || start.elapsed() > Duration::from_secs(30) {
            break;
        }
        match consumer.poll().await {
            Ok(records) => {
                for r in records {
                    let v = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default());
                    out.insert(r.offset, v.into_owned());
                }
            }
            Err(e) => eprintln!("consume {topic}-{partition}: {e}"),
        }
    }
    out
}

/// Acknowledged records (offset → value) that `read` does not hold at their offset.
fn missing<'a>(
    acked: &'a BTreeMap<i64, String>,
    read: &BTreeMap<i64, String>,
) -> Vec<(&'a i64, &'a String)> {
    acked
        .iter()
        .filter(|(o, v)| read.get(*o) != Some(*v))
        .collect()
}

/// offset → value of every data record stored in the replica dir `dir`.
fn disk_values(dir: &Path) -> BTreeMap<i64, String> {
    let batches = stored_batches(dir).unwrap_or_else(|e| panic!("{e}"));
    let mut out = BTreeMap::new();
    for b in batches {
        let mut buf = Bytes::from(b.bytes);
        let sets = kafka_protocol::records::RecordBatchDecoder::decode_all(&mut buf)
            .unwrap_or_else(|e| panic!("{}: decode a batch: {e}", dir.display()));
        for r in sets.into_iter().flat_map(|s| s.records) {
            if !r.control {
                let v = r.value.as_deref().unwrap_or_default();
                out.insert(r.offset, String::from_utf8_lossy(v).into_owned());
            }
        }
    }
    out
}

/// Bytes of every file under `dir`: (apparent size, allocated blocks).
fn dir_usage(dir: &Path) -> (u64, u64) {
    let (mut apparent, mut allocated) = (0, 0);
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(meta) = e.metadata() else { continue };
        if meta.is_dir() {
            let (a, b) = dir_usage(&e.path());
            apparent += a;
            allocated += b;
        } else {
            apparent += meta.len();
            allocated += meta.blocks() * 512;
        }
    }
    (apparent, allocated)
}

/// Bytes of the `.log` files of every partition replica dir of a data dir.
fn segment_bytes(data_dir: &Path) -> u64 {
    replica_dirs(data_dir)
        .0
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum()
}

/// Waits (bounded) until no broker holds a deleted file, each one's storage gauges match
/// its files and `keel_log_dir_used_bytes` equals its segment bytes; panics with what is
/// left otherwise.
fn assert_resources_released(cluster: &TestCluster, when: &str) {
    let mut problems = Vec::new();
    let ok = poll_until(CLEANUP, || {
        problems.clear();
        for id in cluster.broker_ids() {
            let node = cluster.broker(id);
            for held in deleted_files_held(node.pid()) {
                problems.push(format!("broker {id} holds a deleted file: {held}"));
            }
            let Some(metrics) = cluster.try_scrape_metrics(id) else {
                problems.push(format!("broker {id}: /metrics does not answer"));
                continue;
            };
            problems.extend(accounting_problems(id, &metrics, &node.data_dir()));
            let used = metric_sum(&metrics, LOG_DIR_USED_BYTES) as u64;
            let on_disk = segment_bytes(&node.data_dir());
            if used != on_disk {
                problems.push(format!(
                    "broker {id}: {LOG_DIR_USED_BYTES} is {used}, segment files hold {on_disk}"
                ));
            }
        }
        problems.is_empty()
    });
    assert!(
        ok,
        "{when}: resources not released within {CLEANUP:?}: {problems:#?}"
    );
}

/// Data-dir entries of `topic`'s partitions: (live dirs, `*-delete` dirs), sorted.
fn topic_dirs(data_dir: &Path, topic: &str) -> (Vec<String>, Vec<String>) {
    let prefix = format!("{topic}-");
    let mut live = Vec::new();
    let mut deleting = Vec::new();
    for e in std::fs::read_dir(data_dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&prefix) {
            continue;
        }
        if name.ends_with("-delete") {
            deleting.push(name);
        } else {
            live.push(name);
        }
    }
    live.sort();
    deleting.sort();
    (live, deleting)
}

/// The length of a node log now: where "lines written after this point" start.
fn log_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// `WARN`/`ERROR` lines of a node log written after byte `from`, counted by their text with
/// the timestamp removed and every run of digits replaced by `#` (so a line repeating with
/// a changing counter, offset or port is one line).
fn warn_error_lines(path: &Path, from: u64) -> BTreeMap<String, usize> {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        if f.seek(SeekFrom::Start(from)).is_ok() {
            let mut bytes = Vec::new();
            let _ = f.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        // `2025-01-01T00:00:00.000000Z  WARN target: message fields`
        let rest = match line.split_once(' ') {
            Some((ts, rest)) if ts.contains('T') && ts.ends_with('Z') => rest.trim_start(),
            _ => line.trim_start(),
        };
        if !(rest.starts_with("WARN") || rest.starts_with("ERROR")) {
            continue;
        }
        let mut shape = String::with_capacity(rest.len());
        let mut in_digits = false;
        for c in rest.chars() {
            if c.is_ascii_digit() {
                if !in_digits {
                    shape.push('#');
                }
                in_digits = true;
            } else {
                shape.push(c);
                in_digits = false;
            }
        }
        *counts.entry(shape).or_default() += 1;
    }
    counts
}

/// The lines of `counts` seen more than `bound` times, most frequent first.
fn over(counts: &BTreeMap<String, usize>, bound: usize) -> Vec<(usize, String)> {
    let mut v: Vec<(usize, String)> = counts
        .iter()
        .filter(|(_, &n)| n > bound)
        .map(|(l, &n)| (n, l.clone()))
        .collect();
    v.sort_by(|a, b| b.cmp(a));
    v
}

// ---------------------------------------------------------------------------------------
// 1. Create/delete storm with a broker killed
// ---------------------------------------------------------------------------------------

/// What the storm did, for the report and the assertions.
#[derive(Debug, Default)]
struct Storm {
    cycles: usize,
    created: usize,
    deleted: usize,
    already_exists: usize,
    /// Creations refused because a broker was fenced (RF 3 needs all three).
    too_few_brokers: usize,
    concurrent_deletes: usize,
    /// Cycles with create, delete and produce all at once.
    racing_cycles: usize,
    /// Racing cycles whose delete came before the topic existed.
    delete_first: usize,
    churn_acked: usize,
    churn_failed: usize,
    admin_errors: Vec<String>,
    killed_at: Option<usize>,
    restarted_at: Option<usize>,
    /// The cycle that checked the restarted victim's new replicas start empty.
    reuse_checked_at: Option<usize>,
}

/// An admin client on the first broker of `candidates` that answers.
async fn admin_on(candidates: &[String]) -> Option<Admin> {
    for addr in candidates {
        let mut config = ClientConfig::new(addr);
        config.connect_timeout = Duration::from_secs(2);
        config.request_timeout = Duration::from_secs(10);
        if let Ok(Ok(admin)) =
            tokio::time::timeout(Duration::from_secs(5), Admin::new(config)).await
        {
            return Some(admin);
        }
    }
    None
}

/// Creates the churned topic: retries (bounded) while the previous deletion propagates,
/// gives up the cycle while a broker is fenced. Whether it was created.
async fn storm_create(admin: &Admin, spec: &TopicSpec, cycle: usize, storm: &mut Storm) -> bool {
    let mut backoff = Duration::from_millis(20);
    for _ in 0..30 {
        match admin.create_topics(std::slice::from_ref(spec)).await {
            Ok(()) => {
                storm.created += 1;
                return true;
            }
            Err(e) if e.kafka_code() == Some(TOPIC_ALREADY_EXISTS) => {
                storm.already_exists += 1;
            }
            Err(e) if e.kafka_code() == Some(INVALID_REPLICATION_FACTOR) => {
                // A broker is down or fenced: pace the storm while it is, so the cycles of
                // the dead window do not rush by in a few milliseconds.
                storm.too_few_brokers += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
                return false;
            }
            Err(e) => {
                storm
                    .admin_errors
                    .push(format!("cycle {cycle}: create: {e}"));
                return false;
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(400));
    }
    storm.admin_errors.push(format!(
        "cycle {cycle}: still TOPIC_ALREADY_EXISTS after 30 tries"
    ));
    false
}

async fn storm_delete(admin: &Admin, topic: &str, cycle: usize, storm: &mut Storm) {
    match admin.delete_topics(&[topic.to_string()]).await {
        Ok(()) => storm.deleted += 1,
        Err(e) if e.kafka_code() == Some(UNKNOWN_TOPIC_OR_PARTITION) => {}
        Err(e) => storm
            .admin_errors
            .push(format!("cycle {cycle}: delete: {e}")),
    }
}

/// Three acks=all records to each partition of the churned topic with one producer, bounded
/// to 3 s in all: the topic may be deleted under them. Returns (acknowledged, failed).
async fn storm_produce(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    cycle: usize,
) -> (usize, usize) {
    let total = partitions as usize * 3;
    let acked = std::sync::atomic::AtomicUsize::new(0);
    let attempt = async {
        let mut client = ClientConfig::new(bootstrap);
        client.request_timeout = Duration::from_secs(2);
        let config = ProducerConfig {
            acks: Acks::All,
            request_timeout: Duration::from_secs(2),
            retries: 3,
            ..ProducerConfig::default()
        };
        let Ok(producer) = Producer::new(client, config).await else {
            return;
        };
        let mut pending = Vec::new();
        for p in 0..partitions {
            for i in 0..3 {
                let record = ProducerRecord::new(topic, format!("c{cycle}-p{p}-{i}")).partition(p);
                if let Ok(d) = producer.send(record).await {
                    pending.push(d);
                }
            }
        }
        for d in pending {
            if d.await.is_ok() {
                acked.fetch_add(1, Ordering::Relaxed);
            }
        }
        let _ = producer.close().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), attempt).await;
    let acked = acked.load(Ordering::Relaxed);
    (acked, total - acked)
}

/// One CreateTopics on its own connection to `addr`, without the client's retries: the
/// controller answers once the topic is committed, a broker forwards it and answers once its
/// own metadata shows the topic led (or deleted again). Returns the topic's error code.
async fn create_raw(addr: &str, spec: &TopicSpec) -> Result<i16, ClientError> {
    let conn = Connection::connect(
        addr,
        "keel-tests-storm",
        Duration::from_secs(2),
        Duration::from_secs(10),
    )
    .await?;
    let mut topic = CreatableTopic::default();
    topic.name = TopicName(StrBytes::from_string(spec.name.clone()));
    topic.num_partitions = spec.partitions;
    topic.replication_factor = spec.replication_factor;
    topic.configs = spec
        .configs
        .iter()
        .map(|(k, v)| {
            let mut c = CreatableTopicConfig::default();
            c.name = StrBytes::from_string(k.clone());
            c.value = Some(StrBytes::from_string(v.clone()));
            c
        })
        .collect();
    let mut req = CreateTopicsRequest::default();
    req.timeout_ms = 10_000;
    req.topics = vec![topic];
    let resp = conn.send(&req).await?;
    Ok(resp.topics.first().map_or(-1, |t| t.error_code))
}

/// One racing cycle: the creation (committed by the controller), a deletion through a
/// broker sent a few milliseconds later and a produce all run at once, so the brokers apply
/// the deletion while they create the replicas (or get both in one metadata batch). When the
/// deletion came first and the creation then succeeded, the topic is deleted again, so every
/// cycle ends without it. Returns the produce's (acknowledged, failed) counts.
async fn race_create_delete(
    controller: &str,
    admin: &Admin,
    spec: &TopicSpec,
    bootstrap: &str,
    partitions: i32,
    cycle: usize,
    storm: &mut Storm,
) -> (usize, usize) {
    storm.racing_cycles += 1;
    let jitter = Duration::from_millis((cycle as u64 * 13) % 25);
    let create = create_raw(controller, spec);
    let delete = async {
        tokio::time::sleep(jitter).await;
        admin.delete_topics(std::slice::from_ref(&spec.name)).await
    };
    let produce = async {
        tokio::time::sleep(jitter / 2).await;
        storm_produce(bootstrap, &spec.name, partitions, cycle).await
    };
    let (created, deleted, counts) = tokio::join!(create, delete, produce);
    let created = match created {
        Ok(0) => {
            storm.created += 1;
            true
        }
        Ok(TOPIC_ALREADY_EXISTS) => {
            storm.already_exists += 1;
            true
        }
        Ok(INVALID_REPLICATION_FACTOR) => {
            storm.too_few_brokers += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
            false
        }
        Ok(code) => {
            storm
                .admin_errors
                .push(format!("cycle {cycle}: racing create: error code {code}"));
            false
        }
        Err(e) => {
            storm
                .admin_errors
                .push(format!("cycle {cycle}: racing create: {e}"));
            false
        }
    };
    match deleted {
        Ok(()) => storm.deleted += 1,
        Err(e) if e.kafka_code() == Some(UNKNOWN_TOPIC_OR_PARTITION) => {
            storm.delete_first += 1;
            if created {
                storm_delete(admin, &spec.name, cycle, storm).await;
            }
        }
        Err(e) => storm
            .admin_errors
            .push(format!("cycle {cycle}: racing delete: {e}")),
    }
    counts
}

/// Guards against: a replica created and deleted concurrently under load (other brokers
/// have shipped this) leaves a zombie task that keeps writing into the deleted directory
/// and logs errors forever; and against a broker that was down during deletions keeping
/// or reusing the deleted replicas.
///
/// A storm of create / produce / delete of the same topic name (RF 3, two partitions; at
/// most 40 cycles or 60 s), the cycles rotating through create, produce, delete; create,
/// then produce and delete at once; and create (on the controller), delete and produce all
/// at once. Admin requests rotate over the brokers while a steady topic takes acks=all
/// writes. The steady topic's leader is killed (-9) right after a cycle's records reached
/// every replica, misses that deletion, and is restarted 8 cycles later; the first topic
/// created after that must start empty on it. Afterwards, on every
/// broker: only the directories of the topic's current assignment, none being deleted, no
/// descriptor into a deleted replica, no deleted file held, storage gauges equal to the
/// files, no WARN/ERROR line that keeps repeating in a quiet window; the topic created one
/// last time is empty (LEO = HW = 0, no batch on disk) and healthy (leaders, ISR of 3, a
/// produce/consume round trip); the steady topic lost no acknowledged record.
#[test]
fn create_delete_storm_with_a_broker_killed_leaves_no_zombie() {
    let _serial = serial();
    const CHURN: &str = "storm";
    const STEADY: &str = "steady";
    const PARTITIONS: i32 = 2;
    const MAX_CYCLES: usize = 40;
    const STORM_DEADLINE: Duration = Duration::from_secs(60);
    /// From this cycle on, the first sequential cycle whose records all got acknowledged
    /// kills the victim.
    const KILL_AT: usize = 10;
    /// Cycles after the kill before the victim is restarted.
    const DOWN_FOR: usize = 8;
    /// The quiet window at the end: a line still repeating there repeats forever.
    const QUIET: Duration = Duration::from_secs(5);
    let started = Instant::now();
    let mut cluster = TestCluster::start(fast_opts());
    let _keep = KeepLogs::new(LOG_DIR, "create_delete_storm", &cluster);
    let all = cluster.broker_ids();
    let rt = runtime();
    cluster.create_replicated_topic(STEADY, 1, SETTLE);
    let (victim, _) = cluster.wait_in_sync(STEADY, 0, &all, 0, SETTLE);
    eprintln!("steady leader {victim} is the broker killed during the storm");

    let stop = Arc::new(AtomicBool::new(false));
    let steady = rt.spawn(steady_producer(cluster.bootstrap(), STEADY, stop.clone()));
    let spec = TopicSpec {
        name: CHURN.to_string(),
        partitions: PARTITIONS,
        replication_factor: 3,
        configs: vec![("min.insync.replicas".into(), "2".into())],
    };
    let controller = cluster
        .controller()
        .controller_addr()
        .expect("node 0 is the controller")
        .to_string();
    let mut storm = Storm::default();
    let deadline = Instant::now() + STORM_DEADLINE;
    for cycle in 0..MAX_CYCLES {
        if Instant::now() >= deadline {
            break;
        }
        storm.cycles += 1;
        if storm
            .killed_at
            .is_some_and(|k| storm.restarted_at.is_none() && cycle >= k + DOWN_FOR)
        {
            cluster.restart(victim);
            storm.restarted_at = Some(cycle);
            eprintln!("cycle {cycle}: broker {victim} restarted");
        }
        let down = storm.killed_at.is_some() && storm.restarted_at.is_none();
        let live: Vec<i32> = all
            .iter()
            .copied()
            .filter(|&b| !(down && b == victim))
            .collect();
        // Admin requests go through a different broker each cycle.
        let mut candidates: Vec<String> = live
            .iter()
            .map(|&b| cluster.broker(b).kafka_addr().to_string())
            .collect();
        candidates.rotate_left(cycle % live.len());
        let bootstrap = candidates.join(",");
        let Some(mut admin) = rt.block_on(admin_on(&candidates)) else {
            storm.admin_errors.push(format!(
                "cycle {cycle}: no broker of {candidates:?} answers"
            ));
            continue;
        };
        let mode = cycle % 3;
        if mode == 2 {
            // Create, delete and produce all at once: the delete reaches the brokers while
            // they are creating the replicas (or even before the topic exists).
            let (acked, failed) = rt.block_on(race_create_delete(
                &controller,
                &admin,
                &spec,
                &bootstrap,
                PARTITIONS,
                cycle,
                &mut storm,
            ));
            storm.churn_acked += acked;
            storm.churn_failed += failed;
            continue;
        }
        if !rt.block_on(storm_create(&admin, &spec, cycle, &mut storm)) {
            continue;
        }
        if storm.restarted_at.is_some() && storm.reuse_checked_at.is_none() {
            // The first creation with the restarted victim among the replicas: its replicas
            // start empty, although it holds (or held) data of a deleted incarnation.
            for p in 0..PARTITIONS {
                let mut seen = (None, None);
                let empty = poll_until(Duration::from_secs(10), || {
                    seen = cluster.try_replica_offsets(victim, CHURN, p);
                    seen == (Some(0), Some(0))
                });
                assert!(
                    empty,
                    "cycle {cycle}: broker {victim}, back after missing a deletion, opened the \
                     new {CHURN}-{p} with (LEO, HW) {seen:?} before any produce: old data?"
                );
            }
            storm.reuse_checked_at = Some(cycle);
        }
        let (acked, failed) = if mode == 1 {
            // The delete races the produce.
            storm.concurrent_deletes += 1;
            let delay = Duration::from_millis((cycle as u64 * 7) % 40);
            rt.block_on(async {
                let delete = async {
                    tokio::time::sleep(delay).await;
                    let mut local = Storm::default();
                    storm_delete(&admin, CHURN, cycle, &mut local).await;
                    local
                };
                let (counts, local) =
                    tokio::join!(storm_produce(&bootstrap, CHURN, PARTITIONS, cycle), delete);
                storm.deleted += local.deleted;
                storm.admin_errors.extend(local.admin_errors);
                counts
            })
        } else {
            let counts = rt.block_on(storm_produce(&bootstrap, CHURN, PARTITIONS, cycle));
            if cycle >= KILL_AT && storm.killed_at.is_none() && counts.1 == 0 {
                // Every replica holds this cycle's records; the victim (which also leads
                // the steady topic) dies before the deletion, which it misses.
                cluster.kill9(victim);
                storm.killed_at = Some(cycle);
                eprintln!("cycle {cycle}: broker {victim} killed (-9)");
                // This cycle's admin client may talk to the victim: the delete goes
                // through a live broker.
                let alive: Vec<String> = all
                    .iter()
                    .filter(|&&b| b != victim)
                    .map(|&b| cluster.broker(b).kafka_addr().to_string())
                    .collect();
                match rt.block_on(admin_on(&alive)) {
                    Some(a) => admin = a,
                    None => storm
                        .admin_errors
                        .push(format!("cycle {cycle}: no broker of {alive:?} answers")),
                }
            }
            rt.block_on(storm_delete(&admin, CHURN, cycle, &mut storm));
            counts
        };
        storm.churn_acked += acked;
        storm.churn_failed += failed;
    }
    if storm.killed_at.is_some() && storm.restarted_at.is_none() {
        cluster.restart(victim);
        storm.restarted_at = Some(storm.cycles);
    }
    stop.store(true, Ordering::Release);
    let (steady_acked, steady_failures) = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(30), steady).await })
        .expect("the steady producer stops within 30 s")
        .expect("the steady producer task");
    eprintln!(
        "storm: {storm:?}\nin {:.1}s; steady: {} acked, {} failed",
        started.elapsed().as_secs_f64(),
        steady_acked.len(),
        steady_failures.len()
    );
    for f in steady_failures.iter().take(5) {
        eprintln!("  steady failure: {f}");
    }
    assert!(
        storm.killed_at.is_some(),
        "no cycle from {KILL_AT} on had all its records acknowledged, so no broker was \
         killed: {storm:?}"
    );
    assert!(
        storm.reuse_checked_at.is_some(),
        "the topic was never created again after broker {victim} came back: {storm:?}"
    );
    assert!(
        storm.created >= 15 && storm.deleted >= 10,
        "too little churn to show anything: {storm:?}"
    );
    assert!(
        storm.admin_errors.is_empty(),
        "unexpected create/delete errors: {:#?}",
        storm.admin_errors
    );

    // The victim is back and in sync; from here on, the nodes' logs are watched.
    cluster.wait_for_brokers(&all, SETTLE);
    let steady_end = steady_acked.keys().max().map_or(0, |o| o + 1);
    cluster.wait_in_sync(STEADY, 0, &all, steady_end, Duration::from_secs(45));
    let storm_over: BTreeMap<i32, u64> = cluster
        .node_ids()
        .into_iter()
        .map(|id| (id, log_len(&cluster.node(id).log_path())))
        .collect();
    let storm_over_at = Instant::now();

    // The name one last time: a new, empty topic on every broker.
    let live_bootstrap = cluster.bootstrap();
    wait_until(&format!("{CHURN} is created one last time"), SETTLE, || {
        let created = rt.block_on(async {
            let admin = admin_on(std::slice::from_ref(&live_bootstrap)).await?;
            match admin.create_topics(std::slice::from_ref(&spec)).await {
                Ok(()) => Some(true),
                Err(e)
                    if e.kafka_code() == Some(TOPIC_ALREADY_EXISTS)
                        || e.kafka_code() == Some(INVALID_REPLICATION_FACTOR) =>
                {
                    None
                }
                Err(e) => panic!("create {CHURN} one last time: {e}"),
            }
        });
        created.is_some()
    });
    let assignment: BTreeMap<i32, Vec<i32>> = wait_for(
        &format!("{CHURN}: every partition has a leader and an ISR of 3"),
        SETTLE,
        || {
            let d = cluster.describe_topic(CHURN)?;
            let ok = d.partitions.len() == PARTITIONS as usize
                && d.partitions.iter().all(|p| {
                    p.replicas.len() == 3 && p.isr.len() == 3 && p.isr.contains(&p.leader)
                });
            ok.then(|| {
                d.partitions
                    .iter()
                    .map(|p| (p.partition, p.replicas.clone()))
                    .collect()
            })
        },
    );
    for p in 0..PARTITIONS {
        let ids = &assignment[&p];
        let mut seen = Vec::new();
        let empty = poll_until(CLEANUP, || {
            seen = ids
                .iter()
                .map(|&id| (id, cluster.try_replica_offsets(id, CHURN, p)))
                .collect();
            seen.iter().all(|(_, o)| *o == (Some(0), Some(0)))
        });
        assert!(
            empty,
            "the re-created {CHURN}-{p} is not empty before any produce: (broker, (LEO, HW)) \
             {seen:?} — old data came back"
        );
        for &id in ids {
            let dir = cluster.broker(id).data_dir().join(format!("{CHURN}-{p}"));
            let batches = stored_batches(&dir).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                batches.is_empty(),
                "broker {id}: the re-created {CHURN}-{p} holds {} batches on disk (offsets {:?}..)",
                batches.len(),
                batches.first().map(|b| b.base_offset)
            );
        }
    }

    // Only the current assignment's directories, nothing being deleted, no descriptor into
    // a deleted replica, every replica object gone but the current ones.
    for &id in &all {
        let data = cluster.broker(id).data_dir();
        let want: Vec<String> = assignment
            .iter()
            .filter(|(_, replicas)| replicas.contains(&id))
            .map(|(p, _)| format!("{CHURN}-{p}"))
            .collect();
        let mut seen = (Vec::new(), Vec::new());
        let ok = poll_until(CLEANUP, || {
            seen = topic_dirs(&data, CHURN);
            seen.0 == want && seen.1.is_empty() && replica_dirs(&data).1.is_empty()
        });
        assert!(
            ok,
            "broker {id}: {CHURN} directories {:?} and being deleted {:?}; want only {want:?} \
             (all dirs being deleted: {:?})",
            seen.0,
            seen.1,
            replica_dirs(&data).1
        );
        let pid = cluster.broker(id).pid();
        let mut open = Vec::new();
        let ok = poll_until(CLEANUP, || {
            open = open_fds_matching(pid, "-delete");
            open.is_empty()
        });
        assert!(
            ok,
            "broker {id} keeps descriptors into deleted replicas: {open:?}"
        );
        let hosted_want = 1 + want.len() as i64;
        let mut hosted = None;
        let ok = poll_until(CLEANUP, || {
            hosted = cluster
                .try_scrape_metrics(id)
                .map(|t| metric_sum(&t, REPLICAS_HOSTED) as i64);
            hosted == Some(hosted_want)
        });
        assert!(
            ok,
            "broker {id}: {REPLICAS_HOSTED} is {hosted:?}, want {hosted_want} ({STEADY}-0 and {want:?})"
        );
    }
    assert_resources_released(&cluster, "after the storm");

    // The new topic works: a round trip on every partition, from offset 0.
    for p in 0..PARTITIONS {
        let values: Vec<String> = (0..20).map(|i| format!("final-p{p}-{i}")).collect();
        let acked = produce_acked(&rt, &live_bootstrap, Acks::All, CHURN, p, &values, 10);
        assert_eq!(
            acked.keys().copied().collect::<Vec<_>>(),
            (0..20).collect::<Vec<_>>(),
            "{CHURN}-{p}: the re-created topic's records are not at offsets 0..20"
        );
        let read = rt.block_on(consume_until(&live_bootstrap, CHURN, p, 20));
        assert_eq!(
            read, acked,
            "{CHURN}-{p}: read back differs from what was acknowledged"
        );
    }

    // The steady topic: still writable, every acknowledged record at its offset.
    assert!(
        steady_acked.len() >= 50,
        "the steady producer got only {} records acknowledged during the storm",
        steady_acked.len()
    );
    let more: Vec<String> = (0..10).map(|i| format!("steady-after-{i}")).collect();
    let mut steady_all = steady_acked.clone();
    steady_all.extend(produce_acked(
        &rt,
        &live_bootstrap,
        Acks::All,
        STEADY,
        0,
        &more,
        10,
    ));
    let steady_end = steady_all.keys().max().map_or(0, |o| o + 1);
    let read = rt.block_on(consume_until(&live_bootstrap, STEADY, 0, steady_end));
    let lost = missing(&steady_all, &read);
    assert!(
        lost.is_empty(),
        "{STEADY}: {} of {} acknowledged records not read back at their offsets, e.g. {:?}",
        lost.len(),
        steady_all.len(),
        lost.iter().take(10).collect::<Vec<_>>()
    );

    // No WARN/ERROR line keeps repeating: in a quiet window, a line from a zombie task (or
    // any retry loop that never ends) shows up again and again.
    let quiet_from: BTreeMap<i32, u64> = cluster
        .node_ids()
        .into_iter()
        .map(|id| (id, log_len(&cluster.node(id).log_path())))
        .collect();
    let mut repeating = Vec::new();
    let repeated = poll_until(QUIET, || {
        repeating = quiet_from
            .iter()
            .flat_map(|(&id, &from)| {
                let counts = warn_error_lines(&cluster.node(id).log_path(), from);
                over(&counts, 1).into_iter().map(move |(n, l)| (id, n, l))
            })
            .collect();
        !repeating.is_empty()
    });
    let mut since_storm = BTreeMap::new();
    for (&id, &from) in &storm_over {
        let counts = warn_error_lines(&cluster.node(id).log_path(), from);
        for (n, line) in over(&counts, 0).iter().take(5) {
            eprintln!("node {id} after the storm: x{n} {line}");
        }
        since_storm.insert(id, over(&counts, 20));
    }
    assert!(
        !repeated,
        "WARN/ERROR lines repeating in a quiet {QUIET:?} window, (node, count, line): \
         {repeating:#?}"
    );
    assert!(
        since_storm.values().all(Vec::is_empty),
        "WARN/ERROR lines logged more than 20 times in the {:.0}s after the storm: {since_storm:#?}",
        storm_over_at.elapsed().as_secs_f64()
    );
    eprintln!("took {:.1}s", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------
// 2. Forced divergence, round after round
// ---------------------------------------------------------------------------------------

/// Disk figures of one broker after a round.
#[derive(Debug, Clone, Copy)]
struct DiskFigures {
    /// Apparent bytes of every file under the data dir.
    apparent: u64,
    /// Allocated bytes (st_blocks) of every file under the data dir.
    allocated: u64,
    /// `keel_log_mapped_bytes`.
    mapped: u64,
}

fn disk_figures(cluster: &TestCluster, id: i32) -> DiskFigures {
    let (apparent, allocated) = dir_usage(&cluster.broker(id).data_dir());
    let mapped = metric_of(cluster, id, MAPPED_BYTES) as u64;
    DiskFigures {
        apparent,
        allocated,
        mapped,
    }
}

/// Guards against: a follower that finds its log diverged ("last sequence mismatch" in
/// other brokers) resets, loops through reset after reset, and leaks reserved disk space
/// each round until the disk is "full".
///
/// Each round forces one broker F (the partition's preferred replica, so leadership comes
/// back to it) to a divergent tail: F leads, is cut off from every other node (the
/// controller included) through the fault proxies, and takes acks=1 writes from a client
/// that still reaches it (spanning a segment roll); meanwhile the controller fences F and
/// the new leader takes acks=all writes at the same offsets. After the heal F must follow
/// and catch up, and per round: F's truncation counter grew by 1 or 2 (divergence
/// resyncs by at most 2), the replicas hold the same bytes below the HW, no acks=1 record
/// of F's survives anywhere while every acks=all record is at its offset, storage gauges
/// equal the files and no deleted file is held. Across rounds F's data dir does not grow
/// beyond the in-sync replicas' (which hold only committed data).
#[test]
fn forced_divergence_converges_within_two_rounds_and_disk_accounting_holds() {
    let _serial = serial();
    const TOPIC: &str = "diverge";
    const ROUNDS: usize = 4;
    const SEGMENT_BYTES: u64 = 65_536;
    /// acks=1 records per round on the isolated F: about 1.5 segments.
    const DIVERGENT: usize = 48;
    /// acks=all records per round on the new leader.
    const COMMITTED: usize = 30;
    const VALUE_BYTES: usize = 2_000;
    /// F's data dir (and mapped bytes) may exceed the in-sync replicas' by at most this
    /// much, and its excess may grow by at most a quarter of it from round 1 on: a leaked
    /// segment is 64 KiB of log and 20 MiB of preallocated indexes.
    const SLACK: u64 = 64 * 1024;
    let started = Instant::now();
    let cluster = TestCluster::start(
        fast_opts()
            .fault_proxies()
            .set("log.segment.bytes", &SEGMENT_BYTES.to_string()),
    );
    let _keep = KeepLogs::new(LOG_DIR, "forced_divergence", &cluster);
    let all = cluster.broker_ids();
    let nodes = cluster.node_ids();
    let rt = runtime();
    cluster.create_replicated_topic(TOPIC, 1, SETTLE);
    let f = cluster
        .partition_info(TOPIC, 0)
        .and_then(|p| p.replicas.first().copied())
        .expect("the partition has replicas");
    let others: Vec<i32> = all.iter().copied().filter(|&b| b != f).collect();
    let others_bootstrap = cluster.kafka_addrs(&others);
    let f_bootstrap = cluster.kafka_addrs(&[f]);
    let pad = |tag: &str| format!("{tag}-{}", "x".repeat(VALUE_BYTES));
    eprintln!("F is broker {f} (the preferred replica); the others are {others:?}");

    let mut committed: BTreeMap<i64, String> = BTreeMap::new();
    let mut end = 0i64;
    let mut excess_by_round: Vec<(i64, i64, i64)> = Vec::new();
    for round in 1..=ROUNDS {
        let round_started = Instant::now();
        // F leads (the preferred replica gets leadership back once it is in sync).
        let ok = poll_until(SETTLE, || {
            cluster
                .partition_info(TOPIC, 0)
                .is_some_and(|p| p.leader == f && p.isr.len() == 3)
        });
        assert!(
            ok,
            "round {round}: broker {f} does not lead {TOPIC}-0 with an ISR of 3 again: {:?}",
            cluster.partition_info(TOPIC, 0)
        );
        cluster.wait_in_sync(TOPIC, 0, &all, end, SETTLE);
        let epoch_before = cluster
            .partition_info(TOPIC, 0)
            .map_or(-1, |p| p.leader_epoch);
        let truncations_before = metric_of(&cluster, f, TRUNCATIONS_TOTAL);
        let resyncs_before = metric_of(&cluster, f, DIVERGENCE_RESYNCS_TOTAL);

        // Committed history written through F while all are healthy.
        let values: Vec<String> = (0..10)
            .map(|i| pad(&format!("all-r{round}-pre-{i}")))
            .collect();
        committed.extend(produce_acked(
            &rt,
            &f_bootstrap,
            Acks::All,
            TOPIC,
            0,
            &values,
            10,
        ));
        end = committed.keys().max().map_or(0, |o| o + 1);
        cluster.wait_in_sync(TOPIC, 0, &all, end, SETTLE);

        // Cut F off from every node; the others elect a new leader once F is fenced.
        cluster.net().isolate(f, &nodes, LinkFault::Drop);
        let new_leader = wait_for(
            &format!("round {round}: the others elect a leader other than {f}"),
            SETTLE,
            || {
                partition_via(&rt, &others_bootstrap, TOPIC, 0)
                    .filter(|p| p.leader >= 0 && p.leader != f && p.leader_epoch > epoch_before)
                    .map(|p| p.leader)
            },
        );

        // F, still leader in its own eyes, takes acks=1 writes nobody else gets.
        let divergent: Vec<String> = (0..DIVERGENT)
            .map(|i| pad(&format!("div-r{round}-{i}")))
            .collect();
        let div_acked = produce_acked(&rt, &f_bootstrap, Acks::Leader, TOPIC, 0, &divergent, 4);
        assert_eq!(
            div_acked.keys().next().copied(),
            Some(end),
            "round {round}: the isolated F did not append its acks=1 records at its log end"
        );
        // The new leader takes acks=all writes at the same offsets.
        let values: Vec<String> = (0..COMMITTED)
            .map(|i| pad(&format!("all-r{round}-new-{i}")))
            .collect();
        let new_acked = produce_acked(&rt, &others_bootstrap, Acks::All, TOPIC, 0, &values, 4);
        assert_eq!(
            new_acked.keys().next().copied(),
            Some(end),
            "round {round}: the new leader {new_leader} did not continue at offset {end} \
             (did an acks=1 record of the isolated F reach it?)"
        );
        committed.extend(new_acked);
        end = committed.keys().max().map_or(0, |o| o + 1);
        let mut f_leo = None;
        let in_place = poll_until(Duration::from_secs(5), || {
            f_leo = cluster.try_replica_offsets(f, TOPIC, 0).0;
            f_leo.is_some_and(|l| l >= end + (DIVERGENT - COMMITTED) as i64)
        });
        assert!(
            in_place,
            "round {round}: F's LEO is {f_leo:?}: its divergent tail is not in place"
        );
        // The tail spans a segment roll, so converging means deleting a whole segment too.
        let div_start = div_acked.keys().next().copied().unwrap_or(end);
        let f_dir = cluster.broker(f).data_dir().join(format!("{TOPIC}-0"));
        let f_segments: Vec<i64> = segment_files(&f_dir).iter().map(|(b, _)| *b).collect();
        assert!(
            f_segments
                .iter()
                .any(|&b| b > div_start && b < div_start + DIVERGENT as i64),
            "round {round}: F's divergent tail (offsets {div_start}..{}) rolled no segment; \
             F's segments start at {f_segments:?}",
            div_start + DIVERGENT as i64
        );

        // Heal: F follows, truncates its tail and catches up.
        cluster.net().heal_all();
        let (leader, hw) = cluster.wait_in_sync(TOPIC, 0, &all, end, Duration::from_secs(45));
        assert_eq!(
            hw, end,
            "round {round}: records beyond the acknowledged ones"
        );
        let truncations = metric_of(&cluster, f, TRUNCATIONS_TOTAL) - truncations_before;
        let resyncs = metric_of(&cluster, f, DIVERGENCE_RESYNCS_TOTAL) - resyncs_before;
        assert!(
            (1..=2).contains(&truncations),
            "round {round}: broker {f} counted {truncations} truncations to converge (want 1 or \
             2: at least one, since it held {DIVERGENT} records nobody else had; more is a \
             reset loop)"
        );
        assert!(
            resyncs <= 2,
            "round {round}: broker {f} resynchronised {resyncs} times after one divergence"
        );

        // Same bytes below the HW; no divergent record anywhere; every acks=all record at
        // its offset on every replica.
        let replicas: BTreeMap<i32, PathBuf> = all
            .iter()
            .map(|&id| (id, cluster.broker(id).data_dir().join(format!("{TOPIC}-0"))))
            .collect();
        let problems = compare_committed(0, hw, &replicas);
        assert!(problems.is_empty(), "round {round}: {problems:#?}");
        for (&id, dir) in &replicas {
            let stored = disk_values(dir);
            let survivors: Vec<i64> = stored
                .iter()
                .filter(|(_, v)| v.starts_with("div-"))
                .map(|(o, _)| *o)
                .collect();
            assert!(
                survivors.is_empty(),
                "round {round}: broker {id} still holds acks=1 records of the isolated F at \
                 offsets {survivors:?}"
            );
            let lost = missing(&committed, &stored);
            assert!(
                lost.is_empty(),
                "round {round}: broker {id} lacks {} acks=all records at their offsets, e.g. \
                 offsets {:?}",
                lost.len(),
                lost.iter().take(5).map(|(o, _)| **o).collect::<Vec<_>>()
            );
            assert_eq!(
                stored.keys().next_back().map_or(0, |o| o + 1),
                end,
                "round {round}: broker {id} holds records past the HW"
            );
        }
        assert_resources_released(&cluster, &format!("round {round}"));

        // F's disk against the replicas that never diverged (they hold committed data only).
        // A segment sealed by a roll keeps its preallocated indexes (and their mappings)
        // until the next checkpoint, within about a second: wait for that, bounded.
        let mut figures: BTreeMap<i32, DiskFigures> = BTreeMap::new();
        let mut excess = (0, 0, 0);
        let settled = poll_until(CLEANUP, || {
            figures = all
                .iter()
                .map(|&id| (id, disk_figures(&cluster, id)))
                .collect();
            let min_other = |pick: fn(&DiskFigures) -> u64| {
                others
                    .iter()
                    .map(|id| pick(&figures[id]))
                    .min()
                    .unwrap_or(0) as i64
            };
            let fig = figures[&f];
            excess = (
                fig.apparent as i64 - min_other(|d| d.apparent),
                fig.allocated as i64 - min_other(|d| d.allocated),
                fig.mapped as i64 - min_other(|d| d.mapped),
            );
            [excess.0, excess.1, excess.2]
                .iter()
                .all(|&e| e <= SLACK as i64)
        });
        eprintln!(
            "round {round}: leader {new_leader} then {leader}, HW {hw}, F truncations \
             +{truncations}, resyncs +{resyncs}; disk {figures:?}; F's excess (apparent, \
             allocated, mapped) {excess:?}; {:.1}s",
            round_started.elapsed().as_secs_f64()
        );
        assert!(
            settled,
            "round {round}: broker {f}'s data dir still exceeds the in-sync replicas' by \
             {excess:?} (apparent, allocated, mapped) bytes after {CLEANUP:?}: {figures:?}\n\
             broker {f}:\n{}\nbroker {}:\n{}",
            list_tree(&cluster.broker(f).data_dir()),
            others[0],
            list_tree(&cluster.broker(others[0]).data_dir())
        );
        excess_by_round.push(excess);
    }

    // No leak from round to round: F's excess stays where the first round left it.
    let first = excess_by_round[0];
    for (i, e) in excess_by_round.iter().enumerate().skip(1) {
        let grown = (e.0 - first.0, e.1 - first.1, e.2 - first.2);
        assert!(
            [grown.0, grown.1, grown.2]
                .iter()
                .all(|&g| g <= (SLACK / 4) as i64),
            "round {}: broker {f}'s excess over the in-sync replicas grew by {grown:?} \
             (apparent, allocated, mapped) since round 1: a per-round leak? all rounds: \
             {excess_by_round:?}",
            i + 1
        );
    }
    let distinct: BTreeSet<i64> = committed.keys().copied().collect();
    assert_eq!(distinct.len() as i64, end, "committed offsets have gaps");
    eprintln!("took {:.1}s", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------
// 3. A create forwarded by a broker, racing a delete
// ---------------------------------------------------------------------------------------

/// Guards against (found by the storm above): a broker forwarding CreateTopics waits until
/// its own metadata shows the new topic led; when a delete overtook it, it waited out its
/// whole 5 s bound, and a client with a shorter timeout retried the create and brought the
/// deleted topic back. Now the broker waits for the topic *id* the controller created and
/// stops as soon as it sees that id removed.
///
/// 30 cycles: a CreateTopics sent to one broker and, a few milliseconds later, a delete of
/// the same name through another. Afterwards no broker has counted a forwarded create that
/// ran out of its wait (`keel_create_topics_unsettled_total`), no create failed other than
/// with TOPIC_ALREADY_EXISTS while a previous incarnation was still being deleted, and the
/// topic is gone.
#[test]
fn forwarded_create_racing_a_delete_does_not_wait_out_its_bound() {
    let _serial = serial();
    const TOPIC: &str = "racing";
    const CYCLES: u64 = 30;
    let cluster = TestCluster::start(fast_opts());
    let keep = KeepLogs::new(LOG_DIR, "forwarded_create_racing_a_delete", &cluster);
    let brokers = cluster.broker_ids();
    let via = cluster.broker(brokers[0]).kafka_addr().to_string();
    let other = cluster.kafka_addrs(&brokers[1..]);
    let spec = TopicSpec {
        name: TOPIC.to_string(),
        partitions: 2,
        replication_factor: 3,
        configs: Vec::new(),
    };
    let rt = runtime();
    let (mut both, mut delete_first, mut refused) = (0, 0, Vec::new());
    rt.block_on(async {
        let admin = admin_on(&[other]).await.expect("an admin client");
        for cycle in 0..CYCLES {
            // 0–9 ms: sometimes before the controller commits the create, mostly after it
            // and before the forwarding broker has applied it.
            let jitter = Duration::from_millis((cycle * 7) % 10);
            let delete = async {
                tokio::time::sleep(jitter).await;
                admin.delete_topics(&[TOPIC.to_string()]).await
            };
            let (created, deleted) = tokio::join!(create_raw(&via, &spec), delete);
            match (created, deleted) {
                (Ok(0), Ok(())) => both += 1,
                (Ok(0), Err(e)) if e.kafka_code() == Some(UNKNOWN_TOPIC_OR_PARTITION) => {
                    delete_first += 1;
                    let _ = admin.delete_topics(&[TOPIC.to_string()]).await;
                }
                (Ok(TOPIC_ALREADY_EXISTS), _) => {}
                (created, deleted) => {
                    refused.push(format!("cycle {cycle}: {created:?} {deleted:?}"))
                }
            }
            // The next create must not find this cycle's topic still being removed.
            wait_until("the racing topic is gone", SETTLE, || {
                cluster.describe_topic(TOPIC).is_none()
            });
        }
    });
    let unsettled: i64 = brokers
        .iter()
        .map(|&b| metric_of(&cluster, b, "keel_create_topics_unsettled_total"))
        .sum();
    eprintln!(
        "{CYCLES} cycles: delete after the create in {both}, before it in {delete_first}; \
         forwarded creates that ran out of their wait: {unsettled}"
    );
    assert!(refused.is_empty(), "unexpected outcomes: {refused:?}");
    assert!(
        both > 0,
        "no cycle deleted the topic after it was created: the race never ran"
    );
    assert_eq!(
        unsettled, 0,
        "a forwarded create waited out its bound although its topic had been deleted"
    );
    drop(keep);
}

#[test]
fn warn_error_lines_are_counted_by_shape_after_an_offset() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("node.log");
    let head = "2026-01-01T00:00:00.000001Z ERROR x: before the offset\n";
    let body = "2026-01-01T00:00:01.000001Z  WARN keel_broker::a: fetch failed node=2 tries=7\n\
                2026-01-01T00:00:02.000001Z  INFO keel_broker::a: fine\n\
                2026-01-01T00:00:03.000001Z  WARN keel_broker::a: fetch failed node=2 tries=8\n\
                2026-01-01T00:00:04.000001Z ERROR keel_broker::b: write failed at 10\n";
    std::fs::write(&log, format!("{head}{body}")).expect("write");
    let counts = warn_error_lines(&log, head.len() as u64);
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        [
            ("ERROR keel_broker::b: write failed at #".to_string(), 1),
            (
                "WARN keel_broker::a: fetch failed node=# tries=#".to_string(),
                2
            ),
        ]
    );
    assert_eq!(over(&warn_error_lines(&log, 0), 1).len(), 1);
}
