//! Replication scenarios 4–7 of the replication issue, against a real controller and three
//! brokers on 127.0.0.1 ([`TestCluster`]):
//!
//! 4. back-to-back leader failovers with divergent uncommitted tails converge, without a
//!    truncation (reset) loop;
//! 5. a follower that was down while keys were updated gets every update;
//! 6. create/delete churn of a replicated topic leaves no orphan directory, file handle,
//!    replica or repeating error, and leaves another topic unaffected;
//! 7. a batch larger than `replica.fetch.max.bytes` replicates.
//!
//! Logs are compared on disk after a clean stop of every broker: batch by batch (base
//! offset, length, CRC, leader epoch), and record by record where values matter.
//!
//! The tests share two cores with other suites: they run one at a time (a process-wide
//! lock), every wait is a condition with a deadline, and on failure (or with
//! `KEEL_TEST_KEEP_LOGS=1`) each node's log and small data files are copied to
//! `$TMPDIR/keel-replication-scenarios/<test>/` before the cluster's temp directories go
//! away.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_client::{
    Acks, Admin, ClientConfig, ClientError, Consumer, ConsumerConfig, Offset, Producer,
    ProducerConfig, ProducerRecord, RecordMetadata, TopicSpec,
};
use keel_tests::inspect::{list_tree, metric_sum, open_fds_matching};
use keel_tests::load::steady_producer;
use keel_tests::{poll_until, runtime, serial, wait_until, ClusterOpts, TestCluster};

const TOPIC_ALREADY_EXISTS: i16 = 36;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const TRUNCATIONS_TOTAL: &str = "keel_replica_truncations_total";
const PARTITIONS_GAUGE: &str = "keel_replica_hosted";
/// Leader elections need the old leader fenced (`broker.session.timeout.ms`) and a
/// controller tick; restarts need registration and catch-up.
const SETTLE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------

/// The settings of every scenario: fast fencing, ISR shrink and metrics.
fn fast_opts() -> ClusterOpts {
    ClusterOpts::default().brokers(3).fast_failover()
}

/// On a panic, copies every node's stderr log (and a listing of its data dir) out of the
/// cluster's temp dirs, which are removed when the cluster drops. Declare it after the
/// cluster so it drops first.
struct KeepLogsOnFailure {
    test: &'static str,
    nodes: Vec<(i32, PathBuf, PathBuf)>,
}

impl KeepLogsOnFailure {
    fn new(test: &'static str, cluster: &TestCluster) -> Self {
        let nodes = cluster
            .node_ids()
            .into_iter()
            .map(|id| {
                let n = cluster.node(id);
                (id, n.log_path(), n.data_dir())
            })
            .collect();
        KeepLogsOnFailure { test, nodes }
    }
}

impl Drop for KeepLogsOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() && std::env::var_os("KEEL_TEST_KEEP_LOGS").is_none() {
            return;
        }
        let out = std::env::temp_dir()
            .join("keel-replication-scenarios")
            .join(self.test);
        let _ = std::fs::remove_dir_all(&out);
        let _ = std::fs::create_dir_all(&out);
        for (id, log, data) in &self.nodes {
            let _ = std::fs::copy(log, out.join(format!("node{id}.stderr.log")));
            let listing = list_tree(data);
            let _ = std::fs::write(out.join(format!("node{id}.data-dir.txt")), listing);
            copy_small_files(data, &out.join(format!("node{id}.data")));
        }
        eprintln!("node logs kept in {}", out.display());
    }
}

/// Copies `from` to `to` recursively, files of up to 4 MiB only (checkpoints, small
/// segments): enough to look at epochs and offsets after a failure.
fn copy_small_files(from: &Path, to: &Path) {
    let _ = std::fs::create_dir_all(to);
    for e in std::fs::read_dir(from).into_iter().flatten().flatten() {
        let path = e.path();
        let target = to.join(e.file_name());
        if path.is_dir() {
            copy_small_files(&path, &target);
        } else if e.metadata().is_ok_and(|m| m.len() <= 4 << 20) {
            let _ = std::fs::copy(&path, &target);
        }
    }
}

async fn create_topic(
    bootstrap: &str,
    name: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> Result<(), ClientError> {
    let admin = Admin::new(ClientConfig::new(bootstrap)).await?;
    admin
        .create_topics(&[TopicSpec {
            name: name.to_string(),
            partitions,
            replication_factor: 3,
            configs: configs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }])
        .await
}

/// Every replica in `ids` still starts its log at offset 0 (nothing here deletes data:
/// no retention), per `keel_partition_log_start_offset`.
fn assert_log_start_zero(
    cluster: &TestCluster,
    ids: &[i32],
    topic: &str,
    partition: i32,
    when: &str,
) {
    for &id in ids {
        let text = cluster.scrape_metrics(id);
        let labels_topic = format!("topic=\"{topic}\"");
        let labels_partition = format!("partition=\"{partition}\"");
        let start = text
            .lines()
            .filter(|l| l.starts_with("keel_partition_log_start_offset{"))
            .find(|l| l.contains(&labels_topic) && l.contains(&labels_partition))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
        assert_eq!(
            start,
            Some(0.0),
            "{when}: broker {id}'s replica of {topic}-{partition} no longer starts at offset 0 \
             (its log was discarded up to there)"
        );
    }
}

/// Produces `records` (key, value) to `topic`/`partition` one after the other (each awaited,
/// so each is its own batch when `one_by_one`), or all at once; returns each delivery.
async fn produce(
    bootstrap: &str,
    acks: Acks,
    topic: &str,
    partition: i32,
    records: &[(String, String)],
    one_by_one: bool,
) -> Vec<Result<RecordMetadata, ClientError>> {
    let mut client = ClientConfig::new(bootstrap);
    client.request_timeout = Duration::from_secs(15);
    let config = ProducerConfig {
        acks,
        request_timeout: Duration::from_secs(15),
        ..ProducerConfig::default()
    };
    let producer = match Producer::new(client, config).await {
        Ok(p) => p,
        Err(e) => return records.iter().map(|_| Err(e.clone())).collect(),
    };
    let mut out = Vec::new();
    let mut pending = Vec::new();
    for (k, v) in records {
        let record = ProducerRecord::new(topic, v.clone())
            .key(k.clone())
            .partition(partition);
        match producer.send(record).await {
            Ok(d) if one_by_one => out.push(d.await),
            Ok(d) => pending.push(d),
            Err(e) => out.push(Err(e)),
        }
    }
    for d in pending {
        out.push(d.await);
    }
    let _ = producer.close().await;
    out
}

/// Produces and requires every record to be acknowledged; returns offset → value.
async fn produce_acked(
    bootstrap: &str,
    acks: Acks,
    topic: &str,
    partition: i32,
    records: &[(String, String)],
) -> BTreeMap<i64, String> {
    let results = produce(bootstrap, acks, topic, partition, records, false).await;
    let mut acked = BTreeMap::new();
    for ((k, v), r) in records.iter().zip(results) {
        let meta = r.unwrap_or_else(|e| panic!("{topic}: record {k}={v} not acknowledged: {e}"));
        assert_eq!(meta.partition, partition);
        assert!(acked.insert(meta.offset, v.clone()).is_none());
    }
    acked
}

fn kv(prefix: &str, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("{prefix}-k{i}"), format!("{prefix}-v{i}")))
        .collect()
}

/// One batch of a replica's log on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DiskBatch {
    base_offset: i64,
    len: usize,
    crc: u32,
    leader_epoch: i32,
    records: i32,
}

/// A replica's log read from its segment files: batches in order, their bytes, and bytes
/// that do not form whole batches (discarded tails) per segment.
struct DiskLog {
    batches: Vec<DiskBatch>,
    bytes: Vec<Bytes>,
    unparsed_tail: Vec<(String, usize)>,
}

fn read_disk_log(dir: &Path) -> DiskLog {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segments.sort();
    let mut log = DiskLog {
        batches: Vec::new(),
        bytes: Vec::new(),
        unparsed_tail: Vec::new(),
    };
    for seg in segments {
        let data = std::fs::read(&seg).unwrap_or_else(|e| panic!("read {}: {e}", seg.display()));
        let mut iter = keel_protocol::batch::batches(&data);
        for b in iter.by_ref().map_while(Result::ok) {
            let h = b.header;
            h.validate(b.bytes)
                .unwrap_or_else(|e| panic!("{}: batch at {}: {e:?}", seg.display(), b.pos));
            log.batches.push(DiskBatch {
                base_offset: h.base_offset(),
                len: b.bytes.len(),
                crc: h.crc(),
                leader_epoch: h.partition_leader_epoch(),
                records: h.records_count(),
            });
            log.bytes.push(Bytes::copy_from_slice(b.bytes));
        }
        let rest = &data[iter.position()..];
        if rest.iter().any(|&b| b != 0) {
            log.unparsed_tail
                .push((seg.display().to_string(), rest.len()));
        }
    }
    log
}

/// offset → (key, value) of every record in `log`.
fn disk_records(log: &DiskLog) -> BTreeMap<i64, (Option<String>, Option<String>)> {
    let text = |b: &Option<Bytes>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
    let mut out = BTreeMap::new();
    for bytes in &log.bytes {
        let mut buf = bytes.clone();
        let sets = kafka_protocol::records::RecordBatchDecoder::decode_all(&mut buf)
            .unwrap_or_else(|e| panic!("decode a batch from disk: {e}"));
        for r in sets.into_iter().flat_map(|s| s.records) {
            if !r.control {
                out.insert(r.offset, (text(&r.key), text(&r.value)));
            }
        }
    }
    out
}

/// Stops every broker cleanly (SIGTERM) and reads each one's log of `topic-partition`.
fn stop_all_and_read(
    cluster: &mut TestCluster,
    topic: &str,
    partition: i32,
) -> BTreeMap<i32, DiskLog> {
    let mut logs = BTreeMap::new();
    // Followers first, the leader last: as few leadership moves as possible.
    let leader = cluster.leader_of(topic, partition);
    let mut order = cluster.broker_ids();
    order.sort_by_key(|&id| Some(id) == leader);
    for id in order {
        let status = cluster.stop(id);
        assert!(
            status.success(),
            "broker {id} exited with {status} on SIGTERM"
        );
    }
    for id in cluster.broker_ids() {
        let dir = cluster
            .broker(id)
            .data_dir()
            .join(format!("{topic}-{partition}"));
        logs.insert(id, read_disk_log(&dir));
    }
    logs
}

/// Every replica's batches are identical to the first one's.
fn assert_identical_logs(logs: &BTreeMap<i32, DiskLog>) {
    let (first_id, first) = logs.iter().next().expect("at least one replica");
    for (id, log) in logs {
        assert!(
            log.unparsed_tail.is_empty(),
            "broker {id}: bytes after the last whole batch: {:?}",
            log.unparsed_tail
        );
        if log.batches != first.batches {
            let first_diff = log
                .batches
                .iter()
                .zip(&first.batches)
                .position(|(a, b)| a != b)
                .unwrap_or(log.batches.len().min(first.batches.len()));
            panic!(
                "broker {id}'s log differs from broker {first_id}'s at batch #{first_diff}: \
                 {} vs {} batches; there {:?} vs {:?}\nbroker {id}: {:?}\nbroker {first_id}: {:?}",
                log.batches.len(),
                first.batches.len(),
                log.batches.get(first_diff),
                first.batches.get(first_diff),
                log.batches,
                first.batches
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// 4. Back-to-back failovers
// ---------------------------------------------------------------------------------------

/// Two leader failovers, each leaving an uncommitted acks=1 tail on the killed leader that
/// no follower fetched: after restarting them all replicas converge on the surviving
/// history, every acks=all record survives, and the truncation counter stays small and
/// stops moving (no reset loop).
#[test]
fn back_to_back_failovers_converge_without_reset_loops() {
    let _serial = serial();
    const TOPIC: &str = "failover";
    let started = Instant::now();
    let mut cluster = TestCluster::start(fast_opts().set("min.insync.replicas", "1"));
    let _keep = KeepLogsOnFailure::new("back_to_back_failovers", &cluster);
    let all = cluster.broker_ids();
    let rt = runtime();
    rt.block_on(create_topic(&cluster.bootstrap(), TOPIC, 1, &[]))
        .unwrap_or_else(|e| panic!("create {TOPIC}: {e}"));
    cluster.wait_in_sync(TOPIC, 0, &all, 0, SETTLE);

    // Committed history while all are healthy.
    let mut committed: BTreeMap<i64, String> = rt.block_on(produce_acked(
        &cluster.bootstrap(),
        Acks::All,
        TOPIC,
        0,
        &kv("all0", 50),
    ));
    assert_eq!(
        committed.keys().copied().collect::<Vec<_>>(),
        (0..50).collect::<Vec<_>>()
    );
    let (l1, _) = cluster.wait_in_sync(TOPIC, 0, &all, 50, SETTLE);
    let followers: Vec<i32> = all.iter().copied().filter(|&b| b != l1).collect();
    eprintln!("failover 1: leader {l1}, followers {followers:?}");

    // Failover 1: followers frozen (briefly: well under the session timeout, so they are
    // not fenced, and under the lag time, so they stay in the ISR), acks=1 records one by
    // one to the leader (a parked follower fetch can carry at most the first), kill -9.
    let tail1 = kv("tail1", 10);
    for &f in &followers {
        cluster.sigstop(f);
    }
    let tail1_acks = rt.block_on(produce(
        &cluster.kafka_addrs(&[l1]),
        Acks::Leader,
        TOPIC,
        0,
        &tail1,
        true,
    ));
    cluster.kill9(l1);
    for &f in &followers {
        cluster.sigcont(f);
    }
    let tail1_acked = tail1_acks.iter().filter(|r| r.is_ok()).count();
    eprintln!("failover 1: {tail1_acked}/10 acks=1 records acknowledged by {l1} before kill -9");
    let l2 = cluster.wait_for_leader(TOPIC, 0, Some(l1), SETTLE);
    let fb = *followers.iter().find(|&&f| f != l2).expect("two followers");
    eprintln!("failover 1 done: leader {l2}, follower {fb}");
    let live2 = [l2, fb];
    cluster.wait_in_sync(TOPIC, 0, &live2, 50, SETTLE);
    committed.extend(rt.block_on(produce_acked(
        &cluster.kafka_addrs(&live2),
        Acks::All,
        TOPIC,
        0,
        &kv("all1", 10),
    )));
    let leo_before_tail2 = committed.keys().max().copied().unwrap_or(-1) + 1;
    cluster.wait_in_sync(TOPIC, 0, &live2, leo_before_tail2, SETTLE);

    // Failover 2, the same way on the second leader.
    let tail2 = kv("tail2", 10);
    cluster.sigstop(fb);
    let tail2_acks = rt.block_on(produce(
        &cluster.kafka_addrs(&[l2]),
        Acks::Leader,
        TOPIC,
        0,
        &tail2,
        true,
    ));
    cluster.kill9(l2);
    cluster.sigcont(fb);
    let tail2_acked = tail2_acks.iter().filter(|r| r.is_ok()).count();
    eprintln!("failover 2: {tail2_acked}/10 acks=1 records acknowledged by {l2} before kill -9");
    let l3 = cluster.wait_for_leader(TOPIC, 0, Some(l2), SETTLE);
    assert_eq!(l3, fb, "the only live in-sync replica leads");
    // The lone leader commits acks=all records (ISR {fb}, min ISR 1).
    committed.extend(rt.block_on(produce_acked(
        &cluster.kafka_addrs(&[l3]),
        Acks::All,
        TOPIC,
        0,
        &kv("all2", 10),
    )));

    // Restart the two killed leaders: each holds a tail the new history does not.
    cluster.restart(l1);
    cluster.restart(l2);
    cluster.wait_for_brokers(&all, SETTLE);
    let end = committed.keys().max().copied().unwrap_or(-1) + 1;
    cluster.wait_in_sync(TOPIC, 0, &all, end, Duration::from_secs(45));
    let truncations = |cluster: &TestCluster| -> BTreeMap<i32, i64> {
        all.iter()
            .map(|&id| {
                let text = cluster.scrape_metrics(id);
                (id, metric_sum(&text, TRUNCATIONS_TOTAL) as i64)
            })
            .collect()
    };
    assert_log_start_zero(&cluster, &all, TOPIC, 0, "after the failovers");
    let t1 = truncations(&cluster);
    eprintln!("truncations after convergence: {t1:?}");

    // More committed writes; converge again; the counters must not have moved.
    committed.extend(rt.block_on(produce_acked(
        &cluster.kafka_addrs(&all),
        Acks::All,
        TOPIC,
        0,
        &kv("all3", 10),
    )));
    let end = committed.keys().max().copied().unwrap_or(-1) + 1;
    cluster.wait_in_sync(TOPIC, 0, &all, end, SETTLE);
    let t2 = truncations(&cluster);
    eprintln!("truncations after more writes: {t2:?}");
    for (id, n) in &t2 {
        assert!(
            *n <= 10,
            "broker {id}: {n} truncations: a reset loop? all: {t2:?}"
        );
    }
    assert_eq!(
        t1, t2,
        "truncations kept happening on a converged, healthy partition"
    );
    assert!(
        t2.values().sum::<i64>() >= 1,
        "no truncation was counted, yet the killed leaders held tails nobody else had \
         ({tail1_acked} and {tail2_acked} acks=1 records): {t2:?}"
    );

    // Back-to-back failovers (kill -9, then a clean stop) with nothing written in between:
    // the middle leader's epoch
    // holds no batch, so the last leader never sees it. When the middle leader comes back
    // as a follower, its last epoch is unknown to the leader; the leader's diverging-epoch
    // answer then ends exactly at the follower's log end: nothing to truncate.
    let (la, _) = cluster.wait_in_sync(TOPIC, 0, &all, end, SETTLE);
    cluster.kill9(la);
    let lb = cluster.wait_for_leader(TOPIC, 0, Some(la), SETTLE);
    // A clean stop of the middle leader: its epoch cache (with the empty epoch) is
    // checkpointed, as it would be on any planned restart.
    let status = cluster.stop(lb);
    assert!(
        status.success(),
        "broker {lb} exited with {status} on SIGTERM"
    );
    let lc = cluster.wait_for_leader(TOPIC, 0, Some(lb), SETTLE);
    eprintln!("failovers without writes: {la} -> {lb} -> {lc}");
    assert!(
        lc != la,
        "{la} was fenced (killed), so it cannot lead again yet"
    );
    cluster.restart(la);
    cluster.restart(lb);
    cluster.wait_for_brokers(&all, SETTLE);
    cluster.wait_in_sync(TOPIC, 0, &all, end, SETTLE);
    assert_log_start_zero(
        &cluster,
        &all,
        TOPIC,
        0,
        "after failovers without writes in between",
    );

    // Restart everything (controller included) from clean stops: the replicas come back
    // in agreement, so converging again needs at most a bounded number of truncations
    // (the counters start from zero in the new processes).
    // Brokers first (the controller sees their controlled shutdowns), then the controller.
    let leader = cluster.leader_of(TOPIC, 0);
    let mut order = all.clone();
    order.sort_by_key(|&id| Some(id) == leader);
    order.push(0);
    for id in order {
        let status = cluster.stop(id);
        assert!(
            status.success(),
            "node {id} exited with {status} on SIGTERM"
        );
    }
    for id in cluster.node_ids() {
        cluster.restart(id);
    }
    cluster.wait_for_brokers(&all, SETTLE);
    cluster.wait_in_sync(TOPIC, 0, &all, end, SETTLE);
    committed.extend(rt.block_on(produce_acked(
        &cluster.kafka_addrs(&all),
        Acks::All,
        TOPIC,
        0,
        &kv("all4", 10),
    )));
    let end = committed.keys().max().copied().unwrap_or(-1) + 1;
    cluster.wait_in_sync(TOPIC, 0, &all, end, SETTLE);
    assert_log_start_zero(&cluster, &all, TOPIC, 0, "after restarting every node");
    let t3 = truncations(&cluster);
    eprintln!("truncations after restarting every node: {t3:?}");
    for (id, n) in &t3 {
        assert!(
            *n <= 10,
            "broker {id}: {n} truncations after a clean restart: a reset loop? all: {t3:?}"
        );
    }

    // Identical logs on disk, with every acks=all record at its acknowledged offset.
    let logs = stop_all_and_read(&mut cluster, TOPIC, 0);
    assert_identical_logs(&logs);
    for (id, log) in &logs {
        let records = disk_records(log);
        for (offset, value) in &committed {
            let got = records.get(offset).and_then(|(_, v)| v.as_deref());
            assert_eq!(
                got,
                Some(value.as_str()),
                "broker {id}: acks=all record at offset {offset}"
            );
        }
        let survivors = records
            .values()
            .filter(|(_, v)| v.as_deref().is_some_and(|v| v.starts_with("tail")))
            .count();
        eprintln!(
            "broker {id}: {} records, {survivors} acks=1 tail records survived",
            records.len()
        );
    }
    eprintln!("took {:.1}s", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------
// 5. Restarted follower gets the updates
// ---------------------------------------------------------------------------------------

#[test]
fn restarted_follower_gets_updates_to_existing_keys() {
    let _serial = serial();
    const TOPIC: &str = "kv";
    let started = Instant::now();
    let mut cluster = TestCluster::start(fast_opts().set("min.insync.replicas", "2"));
    let _keep = KeepLogsOnFailure::new("restarted_follower_updates", &cluster);
    let all = cluster.broker_ids();
    let rt = runtime();
    rt.block_on(create_topic(
        &cluster.bootstrap(),
        TOPIC,
        1,
        &[("min.insync.replicas", "2")],
    ))
    .unwrap_or_else(|e| panic!("create {TOPIC}: {e}"));
    cluster.wait_in_sync(TOPIC, 0, &all, 0, SETTLE);

    let v1: Vec<(String, String)> = (0..100)
        .map(|i| (format!("k{i}"), format!("v1-k{i}")))
        .collect();
    rt.block_on(produce_acked(
        &cluster.bootstrap(),
        Acks::All,
        TOPIC,
        0,
        &v1,
    ));
    let (leader, _) = cluster.wait_in_sync(TOPIC, 0, &all, 100, SETTLE);
    let follower = *all.iter().find(|&&b| b != leader).expect("a follower");
    eprintln!("leader {leader}; stopping follower {follower}");
    let status = cluster.stop(follower);
    assert!(status.success(), "follower {follower} exited with {status}");

    let live: Vec<i32> = all.iter().copied().filter(|&b| b != follower).collect();
    let updates: Vec<(String, String)> = (0..50)
        .map(|i| (format!("k{i}"), format!("v2-k{i}")))
        .chain((100..150).map(|i| (format!("k{i}"), format!("v2-k{i}"))))
        .collect();
    let acked = rt.block_on(produce_acked(
        &cluster.kafka_addrs(&live),
        Acks::All,
        TOPIC,
        0,
        &updates,
    ));
    let end = acked.keys().max().copied().unwrap_or(-1) + 1;
    assert_eq!(end, 200);

    cluster.restart(follower);
    cluster.wait_for_brokers(&all, SETTLE);
    cluster.wait_in_sync(TOPIC, 0, &all, end, Duration::from_secs(45));

    let mut want: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in v1.iter().chain(&updates) {
        want.insert(k.clone(), v.clone());
    }
    let logs = stop_all_and_read(&mut cluster, TOPIC, 0);
    let mut last_values: BTreeMap<i32, BTreeMap<String, String>> = BTreeMap::new();
    for (id, log) in &logs {
        let mut last = BTreeMap::new();
        for (key, value) in disk_records(log).into_values() {
            let key = key.unwrap_or_else(|| panic!("broker {id}: a record without a key"));
            last.insert(key, value.unwrap_or_default());
        }
        last_values.insert(*id, last);
    }
    for (id, last) in &last_values {
        let missing: Vec<_> = want.keys().filter(|k| !last.contains_key(*k)).collect();
        let wrong: Vec<_> = want
            .iter()
            .filter(|(k, v)| last.get(*k).is_some_and(|got| got != *v))
            .map(|(k, v)| (k, v, &last[k]))
            .collect();
        assert!(
            missing.is_empty() && wrong.is_empty() && last.len() == want.len(),
            "broker {id} (the restarted follower is {follower}): missing keys {missing:?}, \
             wrong last values (key, want, got) {wrong:?}, {} keys",
            last.len()
        );
    }
    assert_identical_logs(&logs);
    eprintln!("took {:.1}s", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------
// 5b. Topics deleted and re-created while a broker is away
// ---------------------------------------------------------------------------------------

/// A broker that misses a topic's deletion and re-creation under the same name must not
/// take its old directory for the new topic's replica: the old log has the same offsets
/// and leader epoch 0, so epoch validation alone would keep its head and the replicas would
/// silently disagree. It also removes the directory of a topic deleted while it was away.
#[test]
fn topic_recreated_while_broker_away_does_not_reuse_old_data() {
    let _serial = serial();
    const REBORN: &str = "reborn";
    const GONE: &str = "gone";
    let started = Instant::now();
    // A session long enough that the paused broker is still unfenced (and so assigned a
    // replica of the re-created topic) when the topic comes back.
    let mut cluster = TestCluster::start(
        ClusterOpts::default()
            .brokers(3)
            .set("broker.session.timeout.ms", "6000")
            .set("broker.heartbeat.interval.ms", "200")
            .set("replica.lag.time.max.ms", "2000")
            .set("min.insync.replicas", "2"),
    );
    let _keep = KeepLogsOnFailure::new("topic_recreated_while_away", &cluster);
    let all = cluster.broker_ids();
    let away = *all.last().expect("three brokers");
    let rt = runtime();
    for topic in [REBORN, GONE] {
        rt.block_on(create_topic(&cluster.bootstrap(), topic, 1, &[]))
            .unwrap_or_else(|e| panic!("create {topic}: {e}"));
    }
    let old: Vec<(String, String)> = (0..40)
        .map(|i| (format!("k{i}"), format!("old-{i}")))
        .collect();
    for topic in [REBORN, GONE] {
        let acked = rt.block_on(produce_acked(
            &cluster.bootstrap(),
            Acks::All,
            topic,
            0,
            &old,
        ));
        assert_eq!(
            acked.len(),
            old.len(),
            "{topic}: every old record acknowledged"
        );
        cluster.wait_in_sync(topic, 0, &all, 40, SETTLE);
    }

    // The broker goes silent; while it is still unfenced both topics are deleted and one
    // is created again, with a replica on the silent broker.
    cluster.sigstop(away);
    let live: Vec<i32> = all.iter().copied().filter(|&b| b != away).collect();
    let live_addrs = cluster.kafka_addrs(&live);
    rt.block_on(async {
        let admin = Admin::new(ClientConfig::new(&live_addrs))
            .await
            .expect("admin");
        admin
            .delete_topics(&[REBORN.to_string(), GONE.to_string()])
            .await
            .expect("delete both topics");
    });
    // The deletion may still be propagating: retry while the name is taken.
    wait_until(
        &format!("{REBORN} is created again"),
        Duration::from_secs(5),
        || match rt.block_on(create_topic(&live_addrs, REBORN, 1, &[])) {
            Ok(()) => true,
            Err(e) if e.kafka_code() == Some(TOPIC_ALREADY_EXISTS) => false,
            Err(e) => panic!("re-create {REBORN}: {e}"),
        },
    );
    let replicas = cluster
        .partition_info(REBORN, 0)
        .map(|p| p.replicas)
        .unwrap_or_default();
    assert!(
        replicas.contains(&away),
        "the re-created {REBORN} has a replica on broker {away} (replicas {replicas:?}); \
         otherwise this test shows nothing"
    );
    // It dies without ever seeing the deletion, and the new topic gets data meanwhile: the
    // same offsets, leader epoch 0 again, different records.
    cluster.kill9(away);
    cluster.wait_for_leader(REBORN, 0, Some(away), SETTLE);
    let new: Vec<(String, String)> = (0..10)
        .map(|i| (format!("k{i}"), format!("new-{i}")))
        .collect();
    let acked = rt.block_on(produce_acked(&live_addrs, Acks::All, REBORN, 0, &new));
    assert_eq!(acked.len(), new.len(), "every new record acknowledged");

    cluster.restart(away);
    cluster.wait_for_brokers(&all, SETTLE);
    cluster.wait_in_sync(REBORN, 0, &all, 10, Duration::from_secs(45));
    let gone_left = || topic_dirs(&cluster.broker(away).data_dir(), GONE);
    wait_until(
        "the deleted topic's directory is gone from the broker that was away",
        Duration::from_secs(15),
        || {
            let (live, deleting) = gone_left();
            live.is_empty() && deleting.is_empty()
        },
    );

    let logs = stop_all_and_read(&mut cluster, REBORN, 0);
    for (id, log) in &logs {
        let values: Vec<String> = disk_records(log)
            .into_values()
            .map(|(_, v)| v.unwrap_or_default())
            .collect();
        let want: Vec<String> = new.iter().map(|(_, v)| v.clone()).collect();
        assert_eq!(
            values, want,
            "broker {id}'s replica of the re-created {REBORN} (broker {away} was away)"
        );
    }
    assert_identical_logs(&logs);
    eprintln!("took {:.1}s", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------
// 6. Create/delete churn
// ---------------------------------------------------------------------------------------

/// Data-dir entries of `topic`'s partitions: (live dirs, `*-delete` dirs).
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
    (live, deleting)
}

/// `ERROR`/`WARN` lines of a node log, timestamps stripped, counted by identical text.
fn repeated_lines(log: &Path, level: &str) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for line in text.lines() {
        // `2025-01-01T00:00:00.000000Z ERROR target: message fields`
        let rest = match line.split_once(' ') {
            Some((ts, rest)) if ts.contains('T') && ts.ends_with('Z') => rest.trim_start(),
            _ => line,
        };
        if rest.starts_with(level) {
            *counts.entry(rest.to_string()).or_default() += 1;
        }
    }
    let mut v: Vec<(usize, String)> = counts.into_iter().map(|(l, n)| (n, l)).collect();
    v.sort_by(|a, b| b.cmp(a));
    v
}

#[test]
fn concurrent_create_delete_leaves_no_orphans() {
    let _serial = serial();
    const CHURN: &str = "churn";
    const STEADY: &str = "steady";
    const CYCLES: usize = 200;
    const CHURN_DEADLINE: Duration = Duration::from_secs(60);
    const CLEANUP: Duration = Duration::from_secs(15);
    let started = Instant::now();
    let cluster = TestCluster::start(fast_opts().set("min.insync.replicas", "2"));
    let _keep = KeepLogsOnFailure::new("create_delete_churn", &cluster);
    let all = cluster.broker_ids();
    let bootstrap = cluster.bootstrap();
    let rt = runtime();
    rt.block_on(create_topic(&bootstrap, STEADY, 1, &[]))
        .unwrap_or_else(|e| panic!("create {STEADY}: {e}"));
    cluster.wait_in_sync(STEADY, 0, &all, 0, SETTLE);

    struct ChurnStats {
        cycles: usize,
        already_exists: usize,
        produce_failures: Vec<String>,
        admin_errors: Vec<String>,
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (stats, steady_acked, steady_failures) = rt.block_on(async {
        // The steady producer: acks=all, in the background, until the churn ends.
        let steady = tokio::spawn(steady_producer(bootstrap.clone(), STEADY, stop.clone()));

        let admin = Admin::new(ClientConfig::new(&bootstrap))
            .await
            .expect("admin");
        let spec = TopicSpec {
            name: CHURN.to_string(),
            partitions: 1,
            replication_factor: 3,
            configs: vec![],
        };
        let mut stats = ChurnStats {
            cycles: 0,
            already_exists: 0,
            produce_failures: Vec::new(),
            admin_errors: Vec::new(),
        };
        let deadline = Instant::now() + CHURN_DEADLINE;
        while stats.cycles < CYCLES && Instant::now() < deadline {
            let cycle = stats.cycles;
            stats.cycles += 1;
            // Create, retrying (bounded) while the previous deletion propagates.
            let mut backoff = Duration::from_millis(20);
            let mut created = false;
            for _ in 0..40 {
                match admin.create_topics(std::slice::from_ref(&spec)).await {
                    Ok(()) => {
                        created = true;
                        break;
                    }
                    Err(e) if e.kafka_code() == Some(TOPIC_ALREADY_EXISTS) => {
                        stats.already_exists += 1;
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_millis(500));
                    }
                    Err(e) => {
                        stats
                            .admin_errors
                            .push(format!("cycle {cycle}: create: {e}"));
                        break;
                    }
                }
            }
            if !created {
                continue;
            }
            let records: Vec<(String, String)> = (0..3)
                .map(|i| (format!("c{cycle}-k{i}"), format!("c{cycle}-v{i}")))
                .collect();
            for r in produce(&bootstrap, Acks::All, CHURN, 0, &records, false).await {
                if let Err(e) = r {
                    stats.produce_failures.push(format!("cycle {cycle}: {e}"));
                }
            }
            if let Err(e) = admin.delete_topics(&[CHURN.to_string()]).await {
                if e.kafka_code() != Some(UNKNOWN_TOPIC_OR_PARTITION) {
                    stats
                        .admin_errors
                        .push(format!("cycle {cycle}: delete: {e}"));
                }
            }
        }
        stop.store(true, Ordering::Release);
        let (acked, failures) = tokio::time::timeout(Duration::from_secs(20), steady)
            .await
            .expect("the steady producer stops within 20 s")
            .expect("the steady producer task");
        (stats, acked, failures)
    });
    eprintln!(
        "churn: {} cycles in {:.1}s, {} TOPIC_ALREADY_EXISTS retries, {} produce failures, \
         {} admin errors; steady: {} acked, {} failed",
        stats.cycles,
        started.elapsed().as_secs_f64(),
        stats.already_exists,
        stats.produce_failures.len(),
        stats.admin_errors.len(),
        steady_acked.len(),
        steady_failures.len()
    );
    for f in stats.produce_failures.iter().take(10) {
        eprintln!("  produce failure: {f}");
    }

    // No replica directory of the churned topic survives, renamed ones are removed too.
    wait_until("no live churn-* directory on any broker", CLEANUP, || {
        all.iter().all(|&id| {
            topic_dirs(&cluster.broker(id).data_dir(), CHURN)
                .0
                .is_empty()
        })
    });
    wait_until(
        "no churn-*-delete directory left on any broker",
        CLEANUP,
        || {
            all.iter().all(|&id| {
                topic_dirs(&cluster.broker(id).data_dir(), CHURN)
                    .1
                    .is_empty()
            })
        },
    );
    // No file handle into a deleted replica, and no replica left in memory.
    for &id in &all {
        let pid = cluster.broker(id).pid();
        let desc = format!("broker {id} (pid {pid}) has no open file under a churn- directory");
        let mut last = Vec::new();
        let ok = poll_until(CLEANUP, || {
            last = open_fds_matching(pid, "/churn-");
            last.is_empty()
        });
        assert!(ok, "{desc}; open: {last:?}");
        let mut seen = None;
        let ok = poll_until(CLEANUP, || {
            seen = cluster
                .try_scrape_metrics(id)
                .map(|t| metric_sum(&t, PARTITIONS_GAUGE));
            seen == Some(1.0)
        });
        assert!(
            ok,
            "broker {id}: {PARTITIONS_GAUGE} is {seen:?}, want 1 (steady-0 only)"
        );
    }
    // No error repeating in any node's log.
    for id in cluster.node_ids() {
        let log = cluster.node(id).log_path();
        let warns = repeated_lines(&log, "WARN");
        for (n, line) in warns.iter().take(3) {
            eprintln!("node {id}: WARN x{n}: {line}");
        }
        let errors = repeated_lines(&log, "ERROR");
        for (n, line) in errors.iter().take(3) {
            eprintln!("node {id}: ERROR x{n}: {line}");
        }
        if let Some((n, line)) = errors.first() {
            assert!(
                *n <= 20,
                "node {id}: an error line repeats {n} times: {line}"
            );
        }
    }
    assert!(
        stats.admin_errors.is_empty(),
        "unexpected create/delete errors: {:?}",
        stats.admin_errors
    );
    assert!(
        stats.cycles >= 20,
        "only {} create/delete cycles in {CHURN_DEADLINE:?}",
        stats.cycles
    );

    // The steady topic: every acknowledged record readable at its offset.
    assert!(
        steady_failures.is_empty(),
        "steady produce failures: {} e.g. {:?}",
        steady_failures.len(),
        steady_failures.iter().take(5).collect::<Vec<_>>()
    );
    assert!(!steady_acked.is_empty(), "nothing acknowledged on {STEADY}");
    let consumed = rt.block_on(consume_all(&bootstrap, STEADY, steady_acked.len()));
    let missing: Vec<_> = steady_acked
        .iter()
        .filter(|(o, v)| consumed.get(*o) != Some(*v))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "steady: {} of {} acknowledged records not read back at their offsets, e.g. {missing:?}",
        steady_acked
            .iter()
            .filter(|(o, v)| consumed.get(*o) != Some(*v))
            .count(),
        steady_acked.len()
    );
    eprintln!("took {:.1}s", started.elapsed().as_secs_f64());
}

/// Reads partition 0 of `topic` from the start until `want` records or 30 s.
async fn consume_all(bootstrap: &str, topic: &str, want: usize) -> BTreeMap<i64, String> {
    let mut consumer = Consumer::new(ClientConfig::new(bootstrap), ConsumerConfig::default())
        .await
        .expect("consumer");
    consumer
        .assign(topic, &[0], Offset::Earliest)
        .await
        .expect("assign");
    let mut out = BTreeMap::new();
    let start = Instant::now();
    for _ in 0..10_000 {
        if out.len() >= want || start.elapsed() > Duration::from_secs(30) {
            break;
        }
        match consumer.poll().await {
            Ok(records) => {
                for r in records {
                    let v = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default());
                    out.insert(r.offset, v.into_owned());
                }
            }
            Err(e) => eprintln!("consume {topic}: {e}"),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// 7. A batch larger than replica.fetch.max.bytes
// ---------------------------------------------------------------------------------------

#[test]
fn batch_larger_than_replica_fetch_max_bytes_replicates() {
    let _serial = serial();
    const TOPIC: &str = "big";
    const RECORDS: usize = 10;
    const VALUE_BYTES: usize = 50_000;
    let started = Instant::now();
    let mut cluster = TestCluster::start(
        fast_opts()
            .set("replica.fetch.max.bytes", "65536")
            .set("min.insync.replicas", "2"),
    );
    let _keep = KeepLogsOnFailure::new("big_batch", &cluster);
    let all = cluster.broker_ids();
    let rt = runtime();
    rt.block_on(create_topic(
        &cluster.bootstrap(),
        TOPIC,
        1,
        &[("max.message.bytes", "1048576")],
    ))
    .unwrap_or_else(|e| panic!("create {TOPIC}: {e}"));
    cluster.wait_in_sync(TOPIC, 0, &all, 0, SETTLE);

    // Incompressible-looking values (no compression anyway), one batch: a long linger and
    // a batch size above the total.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let values: Vec<Vec<u8>> = (0..RECORDS)
        .map(|_| {
            (0..VALUE_BYTES)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    b'a' + (seed % 26) as u8
                })
                .collect()
        })
        .collect();
    let metas: Vec<RecordMetadata> =
        rt.block_on(async {
            let producer = Producer::new(
                ClientConfig::new(&cluster.bootstrap()),
                ProducerConfig {
                    acks: Acks::All,
                    linger: Duration::from_millis(500),
                    batch_size: 1024 * 1024,
                    max_request_size: 1024 * 1024,
                    request_timeout: Duration::from_secs(20),
                    retries: 0,
                    ..ProducerConfig::default()
                },
            )
            .await
            .expect("producer");
            let mut pending = Vec::new();
            for (i, v) in values.iter().enumerate() {
                let r = ProducerRecord::new(TOPIC, v.clone())
                    .key(format!("big-{i}"))
                    .partition(0);
                pending.push(producer.send(r).await.expect("send"));
            }
            let _ = producer.flush().await;
            let mut metas = Vec::new();
            for (i, d) in pending.into_iter().enumerate() {
                metas.push(d.await.unwrap_or_else(|e| {
                    panic!("record {i} of the big batch not acknowledged: {e}")
                }));
            }
            let _ = producer.close().await;
            metas
        });
    let offsets: Vec<i64> = metas.iter().map(|m| m.offset).collect();
    assert_eq!(offsets, (0..RECORDS as i64).collect::<Vec<_>>());
    cluster.wait_in_sync(TOPIC, 0, &all, RECORDS as i64, SETTLE);

    let logs = stop_all_and_read(&mut cluster, TOPIC, 0);
    assert_identical_logs(&logs);
    for (id, log) in &logs {
        let big = log
            .batches
            .iter()
            .find(|b| b.len > 65_536)
            .unwrap_or_else(|| {
                panic!(
                    "broker {id}: no batch larger than replica.fetch.max.bytes (the producer \
                     split the records?): {:?}",
                    log.batches
                )
            });
        assert_eq!(big.records, RECORDS as i32, "broker {id}: {big:?}");
        let records = disk_records(log);
        for (i, v) in values.iter().enumerate() {
            let got = records.get(&(i as i64)).and_then(|(_, v)| v.as_ref());
            assert!(
                got.is_some_and(|g| g.as_bytes() == v.as_slice()),
                "broker {id}: record {i} differs"
            );
        }
    }
    let sizes: BTreeSet<usize> = logs
        .values()
        .flat_map(|l| l.batches.iter().map(|b| b.len))
        .collect();
    eprintln!(
        "batch sizes on disk: {sizes:?}; took {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
