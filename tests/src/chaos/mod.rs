//! A Jepsen-style chaos run: a workload on a real cluster, a seeded schedule of faults
//! (the nemesis), then heal, drain and check.
//!
//! [`run`] drives it and returns a [`Report`]; the `keel-chaos` binary and the CI test are
//! thin wrappers. Everything random comes from the seed, and the report starts with it and
//! the fault schedule, so a failed run can be replayed with the same `--seed`.
//!
//! After the last fault is healed the run checks, in order:
//! 1. the history ([`checker::check`]): no acknowledged write lost or moved, no value twice,
//!    nothing read and later changed, no high watermark gone down;
//! 2. `keel check` reports every partition SYNCED within [`ChaosOpts::sync_timeout`] of the
//!    heal;
//! 3. every replica's segment files hold the same bytes below the HW;
//! 4. no broker holds a deleted file open or mapped, its storage gauges match its files, and
//!    its tasks and non-data file descriptors are back near their baseline (taken before the
//!    first fault, with no client connected);
//! 5. the controller voters' metadata logs are identical over their common committed range
//!    (`keel check --voters`) and all caught up;
//! 6. per partition: in the committed metadata log, leader epochs never go back and one
//!    epoch has one leader; in the brokers' metadata sampled around every fault, no epoch
//!    ever shows two leaders.
//!
//! Brokers 1..=3 are also the controller voters, so every fault on a node is a fault on a
//! voter too; faults aimed at node 0 hit whichever voter is the active controller then, and
//! the `majority` nemesis takes out the active controller and one more voter at once.

pub mod checker;
pub mod nemesis;
pub mod replicas;
pub mod workload;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use keel_client::{Admin, ClientConfig, Consumer, ConsumerConfig, Offset};

use crate::cluster::{ClusterOpts, TestCluster};
use crate::proxy::LinkFault;
use crate::wait::poll_until;
use checker::{Final, Verdict};
use nemesis::{Fault, LinkMode, Nemesis, Timing, ACTIVE_CONTROLLER};
use workload::{Workload, WorkloadOpts};

/// How a chaos run goes.
#[derive(Debug, Clone)]
pub struct ChaosOpts {
    pub seed: u64,
    pub cycles: usize,
    pub nemeses: Vec<Nemesis>,
    pub brokers: usize,
    pub workload: WorkloadOpts,
    pub timing: Timing,
    /// From the heal of the last fault until `keel check` must say SYNCED.
    pub sync_timeout: Duration,
    /// The whole run stops injecting faults after this long (the checks still run).
    pub max_duration: Duration,
    /// Print a line per cycle as the run goes.
    pub verbose: bool,
}

impl Default for ChaosOpts {
    fn default() -> Self {
        ChaosOpts {
            seed: 1,
            cycles: 20,
            nemeses: Nemesis::ALL.to_vec(),
            brokers: 3,
            workload: WorkloadOpts::default(),
            timing: Timing::default(),
            sync_timeout: Duration::from_secs(30),
            max_duration: Duration::from_secs(30 * 60),
            verbose: false,
        }
    }
}

/// The outcome of a run.
#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    /// What was injected, one line per cycle, with the time it started.
    pub schedule: Vec<String>,
    pub verdict: Verdict,
    /// Problems found by the cluster checks (steps 2–4).
    pub cluster_problems: Vec<String>,
    /// Seconds from the last heal until `keel check` said SYNCED.
    pub synced_after: Option<f64>,
    pub elapsed: Duration,
    /// Faults injected per nemesis.
    pub injected: BTreeMap<&'static str, usize>,
    /// Where a failed run left its evidence: node logs, `keel check --json`, checkpoints.
    pub kept: Option<std::path::PathBuf>,
    /// Per broker: tasks and non-data descriptors at the baseline → at the end.
    pub resources: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.verdict.ok() && self.cluster_problems.is_empty()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "seed {}", self.seed)?;
        writeln!(f, "schedule:")?;
        for line in &self.schedule {
            writeln!(f, "  {line}")?;
        }
        let injected: Vec<String> = self
            .injected
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        writeln!(f, "faults injected: {}", injected.join(", "))?;
        writeln!(f, "history:")?;
        write!(f, "{}", self.verdict)?;
        match self.synced_after {
            Some(s) => writeln!(f, "keel check: every partition SYNCED {s:.1} s after heal")?,
            None => writeln!(f, "keel check: not SYNCED in time")?,
        }
        writeln!(f, "resources: {}", self.resources.join("; "))?;
        writeln!(f, "cluster problems: {}", self.cluster_problems.len())?;
        for p in &self.cluster_problems {
            writeln!(f, "  {p}")?;
        }
        if let Some(dir) = &self.kept {
            writeln!(f, "evidence kept in {}", dir.display())?;
        }
        writeln!(
            f,
            "verdict: {} ({:.0} s)",
            if self.ok() { "PASS" } else { "FAIL" },
            self.elapsed.as_secs_f64()
        )
    }
}

/// Broker settings of a chaos cluster: failures are noticed within seconds, segments are
/// small so rolls, truncations across segments and many files happen.
fn cluster_opts(opts: &ChaosOpts) -> ClusterOpts {
    ClusterOpts::default()
        .brokers(opts.brokers)
        .voters(opts.brokers.min(3))
        .fast_elections()
        .fault_proxies()
        .env("KEEL_TEST_SYNC_JOURNAL", "1")
        .set("broker.heartbeat.interval.ms", "300")
        .set("broker.session.timeout.ms", "2500")
        .set("replica.lag.time.max.ms", "2000")
        .set("log.segment.bytes", "65536")
}

/// Runs a chaos test and returns its report; panics only when the harness itself cannot
/// go on (a node that does not start, a client that cannot be built).
pub fn run(opts: &ChaosOpts) -> Report {
    let started = Instant::now();
    let steps = nemesis::schedule(
        opts.seed,
        opts.cycles,
        &opts.nemeses,
        opts.brokers as i32,
        opts.timing,
    );
    let rt = crate::runtime();
    let mut cluster = TestCluster::start(cluster_opts(opts));
    let topic = opts.workload.topic.clone();
    cluster.create_replicated_topic(&topic, opts.workload.partitions, Duration::from_secs(30));
    // The group consumer's offsets topic (50 partitions) exists before the baseline is
    // taken: its replicas are resources every broker then holds for good.
    rt.block_on(async {
        let admin = Admin::new(ClientConfig::new(&cluster.bootstrap()))
            .await
            .expect("an admin client");
        admin
            .group_coordinator(workload::GROUP)
            .await
            .expect("the group's coordinator");
    });
    let offsets_ready = crate::wait::poll_until(Duration::from_secs(60), || {
        cluster
            .describe_topic("__consumer_offsets")
            .is_some_and(|d| {
                !d.partitions.is_empty()
                    && d.partitions
                        .iter()
                        .all(|p| p.leader >= 0 && p.isr.len() == p.replicas.len())
            })
    });
    assert!(
        offsets_ready,
        "the offsets topic did not settle within 60 s"
    );
    let baseline = resource_baseline(&cluster);
    let mut workload = Workload::start(&rt, &cluster.bootstrap(), &opts.workload);

    let mut schedule = Vec::new();
    let mut scrub_problems = Vec::new();
    let mut epochs = EpochWatch::default();
    let mut injected: BTreeMap<&'static str, usize> = BTreeMap::new();
    for (i, step) in steps.iter().enumerate() {
        if started.elapsed() > opts.max_duration {
            schedule.push(format!("stopped after {i} cycles: --max-duration reached"));
            break;
        }
        let at = started.elapsed().as_secs_f64();
        epochs.sample(&cluster, &topic);
        let targets = resolve(&cluster, step.fault);
        let detail = inject(&mut cluster, step.fault, &targets, opts);
        *injected.entry(step.fault.nemesis().name()).or_default() += 1;
        std::thread::sleep(step.hold);
        epochs.sample(&cluster, &topic);
        heal(&mut cluster, step.fault, &targets);
        let writable = settle(&cluster, &topic, opts.workload.partitions);
        epochs.sample(&cluster, &topic);
        let scrubbed = match step.fault {
            Fault::Corrupt { .. } => {
                scrub(&cluster, &topic, opts.sync_timeout, &mut scrub_problems)
            }
            _ => String::new(),
        };
        std::thread::sleep(step.settle);
        let p = workload.progress();
        let line = format!(
            "{:>3} t={at:>6.1}s {step}{detail}{}{scrubbed}; acked {} failed {} read {}",
            i + 1,
            if writable {
                ""
            } else {
                " (ISR not back to 2 within 20 s)"
            },
            p.acked,
            p.failed,
            p.consumed
        );
        if opts.verbose {
            eprintln!("{line}");
        }
        schedule.push(line);
    }
    let healed = Instant::now();

    // Drain: producers resolve every delivery, then the consumers catch up.
    let writes = workload.stop_producers(&rt, Duration::from_secs(60));
    let mut cluster_problems = scrub_problems;
    let synced_after = wait_synced(
        &cluster,
        &topic,
        healed,
        opts.sync_timeout,
        &mut cluster_problems,
    );
    let fin = read_final(
        &rt,
        &cluster,
        &topic,
        opts.workload.partitions,
        &mut cluster_problems,
    );
    let reads = workload.stop_consumers(&rt, Duration::from_secs(30));
    let commits = workload.stop_committer(&rt, Duration::from_secs(30));
    let mut verdict = checker::check(&writes, &reads, &fin);
    // The group's final committed offsets, read back through the healed cluster.
    let final_offsets = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(o) = workload::group_offsets(&cluster.bootstrap(), &topic).await {
                break o;
            }
            if Instant::now() > deadline {
                break BTreeMap::new();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    checker::check_commits(&mut verdict, &commits, &final_offsets);

    cluster_problems.extend(compare_replicas(&cluster, &topic, &fin));
    epochs.sample(&cluster, &topic);
    cluster_problems.extend(epochs.problems);
    cluster_problems.extend(metadata_log_problems(&cluster));
    cluster_problems.extend(compare_voters(&cluster, opts.sync_timeout));
    let (problems, resources) = resource_problems(&cluster, &baseline);
    cluster_problems.extend(problems);
    // KEEL_CHAOS_KEEP=1 keeps the evidence of passing runs too (to study a warning).
    let keep_all = std::env::var_os("KEEL_CHAOS_KEEP").is_some();
    let kept = (keep_all || !verdict.ok() || !cluster_problems.is_empty())
        .then(|| keep_evidence(&cluster, &topic, opts.seed));
    Report {
        kept,
        seed: opts.seed,
        schedule,
        verdict,
        cluster_problems,
        synced_after,
        elapsed: started.elapsed(),
        injected,
        resources,
    }
}

/// The nodes a fault hits: node 0 means the active controller (the first voter if none is
/// active), and a majority fault hits it and the voter after it.
fn resolve(cluster: &TestCluster, fault: Fault) -> Vec<i32> {
    let voters = cluster.voter_ids();
    let active = || {
        cluster
            .active_controller()
            .or_else(|| voters.first().copied())
            .unwrap_or(1)
    };
    match fault {
        Fault::Majority { .. } => {
            let a = active();
            let i = voters.iter().position(|&v| v == a).unwrap_or(0);
            (0..voters.len() / 2 + 1)
                .map(|k| voters[(i + k) % voters.len()])
                .collect()
        }
        f if f.node() == ACTIVE_CONTROLLER => vec![active()],
        f => vec![f.node()],
    }
}

/// Applies a fault to `targets` (see [`resolve`]); returns a note for the schedule line
/// (which node was the active controller, what a corruption or power loss did).
fn inject(cluster: &mut TestCluster, fault: Fault, targets: &[i32], opts: &ChaosOpts) -> String {
    let others =
        |node: i32| -> Vec<i32> { (1..=opts.brokers as i32).filter(|&n| n != node).collect() };
    let node = targets[0];
    let named = if fault.node() == ACTIVE_CONTROLLER {
        format!(
            " [node{} {targets:?}]",
            if targets.len() > 1 { "s" } else { "" }
        )
    } else {
        String::new()
    };
    let detail = match fault {
        Fault::Majority { kill } => {
            for &n in targets {
                if kill {
                    cluster.kill9(n);
                } else {
                    cluster.sigstop(n);
                }
            }
            String::new()
        }
        Fault::Kill { .. } => {
            cluster.kill9(node);
            String::new()
        }
        Fault::Pause { .. } => {
            cluster.sigstop(node);
            String::new()
        }
        Fault::Partition { mode, .. } => {
            let link = match mode {
                LinkMode::Drop => LinkFault::Drop,
                LinkMode::Blackhole => LinkFault::Blackhole,
                LinkMode::Delay(ms) => LinkFault::Delay(Duration::from_millis(ms)),
            };
            cluster.net().isolate(node, &others(node), link);
            String::new()
        }
        Fault::Corrupt { pick, .. } => corrupt(cluster, node, pick, opts),
        Fault::PowerLoss { .. } => {
            cluster.kill9(node);
            let lost = crate::disk::simulate_power_loss(&cluster.broker(node).data_dir());
            format!(" [{lost}]")
        }
    };
    format!("{named}{detail}")
}

/// Kills `node` and flips a byte of one of its segments (see [`Fault::Corrupt`]).
fn corrupt(cluster: &mut TestCluster, node: i32, pick: u64, opts: &ChaosOpts) -> String {
    let topic = &opts.workload.topic;
    let partition = (pick % opts.workload.partitions as u64) as i32;
    // Bit rot on the last in-sync copy of a partition is a second fault on top of the
    // lost ISR (the case KIP-966's eligible leaders address): acknowledged data can go
    // with it. One fault at a time: rot a replica only while the others are in sync.
    let full = crate::wait::poll_until(Duration::from_secs(20), || {
        cluster
            .isr_of(topic, partition)
            .is_some_and(|isr| isr.len() >= opts.brokers)
    });
    cluster.kill9(node);
    if !full {
        return format!(" [{topic}-{partition}: ISR not full within 20 s, nothing corrupted]");
    }
    let data = cluster.broker(node).data_dir();
    let dir = crate::disk::replica_dir(&data, topic, partition);
    let bytes: u64 = crate::disk::segment_files(&dir)
        .iter()
        .filter_map(|(_, f)| f.metadata().ok())
        .map(|m| m.len())
        .sum();
    if bytes == 0 {
        format!(" [{topic}-{partition} holds no batch yet: nothing corrupted]")
    } else {
        let done = crate::disk::corrupt_byte(&data, topic, partition, pick >> 8);
        format!(" [{done}]")
    }
}

/// Undoes a fault on `targets`: restarts killed nodes, continues paused ones, restores
/// links.
fn heal(cluster: &mut TestCluster, fault: Fault, targets: &[i32]) {
    match fault {
        Fault::Kill { .. }
        | Fault::Corrupt { .. }
        | Fault::PowerLoss { .. }
        | Fault::Majority { kill: true } => {
            for &n in targets {
                cluster.restart(n);
            }
        }
        Fault::Pause { .. } | Fault::Majority { kill: false } => {
            for &n in targets {
                cluster.sigcont(n);
            }
        }
        Fault::Partition { .. } => cluster.net().heal_all(),
    }
}

/// Per partition of the workload's topic, from samples of any broker's metadata taken
/// around every fault: the leader seen in each leader epoch (one epoch, one leader, whichever
/// broker answers). That epochs never go back is checked on the metadata log itself
/// ([`metadata_log_problems`]): brokers' views lag one another, the log does not.
#[derive(Default)]
struct EpochWatch {
    leaders: BTreeMap<(i32, i32), i32>,
    problems: Vec<String>,
}

impl EpochWatch {
    fn sample(&mut self, cluster: &TestCluster, topic: &str) {
        let Some(d) = cluster.describe_topic(topic) else {
            return;
        };
        for p in d.partitions.iter().filter(|p| p.leader >= 0) {
            let before = self.leaders.insert((p.partition, p.leader_epoch), p.leader);
            if let Some(other) = before.filter(|&l| l != p.leader) {
                self.problems.push(format!(
                    "{topic}-{}: leader epoch {} had two leaders, {other} and {}",
                    p.partition, p.leader_epoch, p.leader
                ));
            }
        }
    }
}

/// Reads the committed metadata log from a voter and checks, per partition, that every
/// record's leader epoch is at least the one before and that one epoch has one leader.
fn metadata_log_problems(cluster: &TestCluster) -> Vec<String> {
    let Some(addr) = cluster
        .voter_ids()
        .into_iter()
        .find_map(|id| cluster.node(id).controller_addr())
    else {
        return Vec::new();
    };
    let entries = match crate::cluster::block_on(read_metadata_log(addr)) {
        Ok(e) => e,
        Err(e) => return vec![format!("cannot read the metadata log from {addr}: {e}")],
    };
    let mut problems = Vec::new();
    let mut last: BTreeMap<(String, i32), (i32, i32)> = BTreeMap::new();
    for (offset, records) in entries {
        for r in records {
            match r {
                keel_broker::MetadataRecord::Partition(p) => {
                    let key = (p.topic.clone(), p.partition);
                    if let Some(&(epoch, leader)) = last.get(&key) {
                        if p.leader_epoch < epoch {
                            problems.push(format!(
                                "metadata offset {offset}: {}-{} leader epoch went back from {epoch} to {}",
                                p.topic, p.partition, p.leader_epoch
                            ));
                        } else if p.leader_epoch == epoch && p.leader != leader {
                            problems.push(format!(
                                "metadata offset {offset}: {}-{} leader epoch {epoch} has leaders {leader} and {}",
                                p.topic, p.partition, p.leader
                            ));
                        }
                    }
                    last.insert(key, (p.leader_epoch, p.leader));
                }
                keel_broker::MetadataRecord::RemoveTopic { name, .. } => {
                    last.retain(|(t, _), _| *t != name);
                }
                _ => {}
            }
        }
    }
    problems
}

/// Every committed entry of the metadata log a voter serves, read with Fetch as a broker
/// does (from its start; entries already in a snapshot are not there to check).
async fn read_metadata_log(
    addr: std::net::SocketAddr,
) -> Result<Vec<(i64, Vec<keel_broker::MetadataRecord>)>, String> {
    let t = Duration::from_secs(5);
    let c = keel_client::connection::Connection::connect(&addr.to_string(), "keel-chaos", t, t)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut offset = 0i64;
    loop {
        // Version 12 names the topic; the metadata log has no topic id.
        let req =
            crate::raw::fetch_request(keel_broker::METADATA_TOPIC, uuid::Uuid::nil(), 0, offset);
        let resp = c
            .send_version(&req, 12, t)
            .await
            .map_err(|e| e.to_string())?;
        let part = resp
            .responses
            .into_iter()
            .flat_map(|t| t.partitions)
            .next()
            .ok_or("an empty fetch answer")?;
        if part.error_code != 0 {
            // Below the log start (compacted into a snapshot): start there.
            if offset < part.log_start_offset {
                offset = part.log_start_offset;
                continue;
            }
            return Err(format!("fetch error {}", part.error_code));
        }
        let entries = keel_broker::decode_batches(part.records.unwrap_or_default())
            .map_err(|e| e.to_string())?;
        let Some(&(last, _)) = entries.last() else {
            return Ok(out);
        };
        offset = last + 1;
        out.extend(entries);
        if offset >= part.high_watermark {
            return Ok(out);
        }
    }
}

/// `keel check --voters`, until every voter is SYNCED or `timeout`: the voters' metadata
/// logs must be the same over their common committed range.
fn compare_voters(cluster: &TestCluster, timeout: Duration) -> Vec<String> {
    let voters: Vec<(i32, std::net::SocketAddr)> = cluster
        .voter_ids()
        .into_iter()
        .filter_map(|id| Some((id, cluster.node(id).controller_addr()?)))
        .collect();
    if voters.is_empty() {
        return Vec::new();
    }
    let mut last = Vec::new();
    let ok = poll_until(timeout, || {
        last = crate::cluster::block_on(keel::cmd::check::quorum::check(
            &voters,
            Duration::from_secs(5),
            0,
        ));
        keel::cmd::check::quorum::verdict(&last).0 == 0
    });
    if ok {
        Vec::new()
    } else {
        vec![format!(
            "the controller voters are not in sync within {timeout:?}:\n{}",
            keel::cmd::check::quorum::render(&last)
        )]
    }
}

/// Waits (up to 20 s) until every partition's ISR holds at least two brokers again, so the
/// next fault does not start from a cluster that cannot take writes. `false` if it did not.
/// After a corruption is healed: runs `keel check`, as an operator's scrub would, until it
/// reports every partition SYNCED (its first run starts the repair of what it finds), at
/// most `timeout`. This keeps the damage within the fault model of RF 3 and min ISR 2: one
/// damaged replica of a partition at a time. Without it, damage piles up undetected until
/// every replica of a partition has a bad batch (at different offsets), and no replica can
/// be repaired from another (see TESTING.md). Returns a note for the schedule line.
fn scrub(
    cluster: &TestCluster,
    topic: &str,
    timeout: Duration,
    problems: &mut Vec<String>,
) -> String {
    let started = Instant::now();
    let mut last = String::new();
    let ok = poll_until(timeout, || {
        let out = cluster.keel_check(topic, &["--unsynced", "--timeout-ms", "5000"]);
        last = format!("{}{}", out.stdout_str(), out.stderr_str());
        out.success()
    });
    if ok {
        format!(
            ", scrubbed: SYNCED after {:.1} s",
            started.elapsed().as_secs_f64()
        )
    } else {
        problems.push(format!(
            "keel check did not report every partition SYNCED within {timeout:?} of a corruption; last answer:\n{last}"
        ));
        format!(", scrub: not SYNCED within {timeout:?}")
    }
}

fn settle(cluster: &TestCluster, topic: &str, partitions: i32) -> bool {
    poll_until(Duration::from_secs(20), || {
        cluster.describe_topic(topic).is_some_and(|d| {
            d.partitions.len() == partitions as usize
                && d.partitions
                    .iter()
                    .all(|p| p.leader >= 0 && p.isr.len() >= 2)
        })
    })
}

/// Runs `keel check` until it exits 0 or `timeout` after `healed` passes; returns the
/// seconds from `healed` to success.
fn wait_synced(
    cluster: &TestCluster,
    topic: &str,
    healed: Instant,
    timeout: Duration,
    problems: &mut Vec<String>,
) -> Option<f64> {
    let mut last = String::new();
    let left = timeout.saturating_sub(healed.elapsed());
    let ok = poll_until(left, || {
        let out = cluster.keel_check(topic, &["--unsynced", "--timeout-ms", "5000"]);
        last = format!("{}{}", out.stdout_str(), out.stderr_str());
        out.success()
    });
    if ok {
        Some(healed.elapsed().as_secs_f64())
    } else {
        problems.push(format!(
            "keel check did not report every partition SYNCED within {timeout:?} of the heal; last answer:\n{last}"
        ));
        None
    }
}

/// Reads every partition from offset 0 up to its HW, from the leaders.
fn read_final(
    rt: &tokio::runtime::Runtime,
    cluster: &TestCluster,
    topic: &str,
    partitions: i32,
    problems: &mut Vec<String>,
) -> Final {
    let bootstrap = cluster.bootstrap();
    let topic = topic.to_string();
    let read = async move {
        let client = ClientConfig::new(&bootstrap);
        let admin = Admin::new(client.clone()).await?;
        let mut fin = Final::default();
        // A leader election may still be under way (a broker fenced by a late heartbeat):
        // retriable errors are retried for a while, not taken for an empty partition.
        let deadline = Instant::now() + Duration::from_secs(30);
        for p in 0..partitions {
            let hw = loop {
                match admin.list_offsets(&topic, p, Offset::Latest).await {
                    Err(e) if e.is_retriable() && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    other => break other?,
                }
            };
            fin.hw.insert(p, hw);
        }
        let mut consumer = Consumer::new(client, ConsumerConfig::default()).await?;
        let all: Vec<i32> = (0..partitions).collect();
        consumer.assign(&topic, &all, Offset::At(0)).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while all
            .iter()
            .any(|&p| consumer.position(&topic, p).unwrap_or(0) < fin.hw[&p])
        {
            if Instant::now() > deadline {
                return Err(keel_client::ClientError::Config(format!(
                    "reading up to {:?} took over 60 s",
                    fin.hw
                )));
            }
            for r in consumer.poll().await? {
                if r.offset < fin.hw[&r.partition] {
                    let v = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default());
                    fin.records.insert((r.partition, r.offset), v.into_owned());
                }
            }
        }
        Ok::<_, keel_client::ClientError>(fin)
    };
    match rt.block_on(read) {
        Ok(fin) => fin,
        Err(e) => {
            problems.push(format!("final read failed: {e}"));
            Final::default()
        }
    }
}

/// Every partition's replicas hold identical bytes below the final HW.
fn compare_replicas(cluster: &TestCluster, topic: &str, fin: &Final) -> Vec<String> {
    let mut problems = Vec::new();
    for (&p, &hw) in &fin.hw {
        let name = format!("{topic}-{p}");
        let replicas: BTreeMap<i32, std::path::PathBuf> = cluster
            .broker_ids()
            .into_iter()
            .map(|id| (id, cluster.broker(id).data_dir().join(&name)))
            .filter(|(_, dir)| dir.is_dir())
            .collect();
        if replicas.len() != 3 {
            problems.push(format!(
                "{name}: {} replica dirs, 3 expected",
                replicas.len()
            ));
        }
        problems.extend(replicas::compare_committed(p, hw, &replicas));
    }
    problems
}

/// How far above its baseline a broker's task count and non-data descriptors may end: a
/// few connections of the checks themselves (metrics scrapes, `keel check`) and fetchers
/// to leaders that moved. A leak of one per fault exceeds it within a short run.
const TASK_SLACK: f64 = 12.0;
const FD_SLACK: usize = 12;

/// Each broker's [`replicas::Resources`] before the first fault: once two readings half a
/// second apart (more than two gauge refreshes) agree, so the new topic's fetchers,
/// flushers and replica connections are all counted. At most 10 s.
fn resource_baseline(cluster: &TestCluster) -> BTreeMap<i32, replicas::Resources> {
    let read = || -> BTreeMap<i32, replicas::Resources> {
        cluster
            .broker_ids()
            .into_iter()
            .filter_map(|id| {
                let node = cluster.broker(id);
                let m = cluster.try_scrape_metrics(id)?;
                Some((id, replicas::resources(node.pid(), &node.data_dir(), &m)?))
            })
            .collect()
    };
    let mut base = read();
    poll_until(Duration::from_secs(10), || {
        // Pacing between the two readings, not a wait for a condition.
        std::thread::sleep(Duration::from_millis(500));
        let now = read();
        let stable = now == base && now.len() == cluster.broker_ids().len();
        base = now;
        stable
    });
    base
}

/// Waits (up to 20 s: deletions run in the background, gauges refresh on an interval) until
/// no broker holds a deleted file, each one's gauges match its files, and its tasks and
/// non-data descriptors are back within the slack of `baseline`.
/// Also returns, per broker, its resources at the baseline and at the end.
fn resource_problems(
    cluster: &TestCluster,
    baseline: &BTreeMap<i32, replicas::Resources>,
) -> (Vec<String>, Vec<String>) {
    let mut problems = Vec::new();
    let mut summary = Vec::new();
    poll_until(Duration::from_secs(20), || {
        problems.clear();
        summary.clear();
        for id in cluster.broker_ids() {
            let node = cluster.broker(id);
            for held in replicas::deleted_files_held(node.pid()) {
                problems.push(format!("broker {id} holds a deleted file: {held}"));
            }
            let Some(m) = cluster.try_scrape_metrics(id) else {
                problems.push(format!("broker {id}: /metrics does not answer"));
                continue;
            };
            problems.extend(replicas::accounting_problems(id, &m, &node.data_dir()));
            let (Some(base), Some(now)) = (
                baseline.get(&id),
                replicas::resources(node.pid(), &node.data_dir(), &m),
            ) else {
                problems.push(format!("broker {id}: no task gauge or baseline"));
                continue;
            };
            summary.push(format!(
                "broker {id} tasks {}→{} fds {}→{}",
                base.tasks, now.tasks, base.other_fds, now.other_fds
            ));
            if now.tasks > base.tasks + TASK_SLACK || now.other_fds > base.other_fds + FD_SLACK {
                problems.push(format!(
                    "broker {id}: {} tasks and {} non-data descriptors, baseline {} and {}",
                    now.tasks, now.other_fds, base.tasks, base.other_fds
                ));
            }
        }
        problems.is_empty()
    });
    (problems, summary)
}

/// Copies what a failed run leaves for a post-mortem out of the cluster's temp dirs (which go
/// when it drops): every node's stderr log, `keel check --json`, and each node's data dir
/// without segment and index files (checkpoints, epoch caches, journals).
fn keep_evidence(cluster: &TestCluster, topic: &str, seed: u64) -> std::path::PathBuf {
    // A replay of the same seed keeps the earlier evidence: seed-N, seed-N.2, ...
    let root = std::env::temp_dir().join("keel-chaos");
    let out = (1..)
        .map(|n| match n {
            1 => root.join(format!("seed-{seed}")),
            n => root.join(format!("seed-{seed}.{n}")),
        })
        .find(|dir| !dir.exists())
        .expect("an unused evidence directory");
    let _ = std::fs::create_dir_all(&out);
    let check = cluster.keel_check(topic, &["--json", "--timeout-ms", "5000"]);
    let _ = std::fs::write(out.join("check.json"), check.stdout_str());
    for id in cluster.node_ids() {
        let node = cluster.node(id);
        let _ = std::fs::copy(node.log_path(), out.join(format!("node-{id}.stderr.log")));
        copy_small(&node.data_dir(), &out.join(format!("node-{id}.data")));
    }
    out
}

fn copy_small(from: &std::path::Path, to: &std::path::Path) {
    let _ = std::fs::create_dir_all(to);
    for e in std::fs::read_dir(from).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_small(&p, &to.join(e.file_name()));
        } else if !p
            .extension()
            .is_some_and(|x| x == "log" || x == "index" || x == "timeindex")
        {
            let _ = std::fs::copy(&p, to.join(e.file_name()));
        }
    }
}

/// The one-line summary a CI log shows.
pub fn summary(report: &Report) -> String {
    let mut s = String::new();
    let v = &report.verdict;
    let _ = write!(
        s,
        "seed {} cycles {}: acked {}, lost {}, inconsistent offsets {}, duplicates {}, phantoms {}, \
         read-then-changed {}, HW regressions {}, anomalies {}, commits {} (lost {}, went back {}), \
         cluster problems {} → {}",
        report.seed,
        report.schedule.len(),
        v.acked,
        v.lost.len(),
        v.misplaced.len(),
        v.duplicated.len(),
        v.phantom.len(),
        v.read_then_changed.len(),
        v.hw_below_seen.len(),
        v.anomalies.len(),
        v.commits_acked,
        v.commits_lost.len(),
        v.commits_went_back.len(),
        report.cluster_problems.len(),
        if report.ok() { "PASS" } else { "FAIL" }
    );
    s
}

#[cfg(test)]
mod tests {
    use super::nemesis::Step;
    use super::*;

    #[test]
    fn a_step_line_names_the_fault() {
        let step = Step {
            fault: Fault::Partition {
                node: 2,
                mode: LinkMode::Delay(120),
            },
            hold: Duration::from_millis(800),
            settle: Duration::from_millis(300),
        };
        assert_eq!(
            step.to_string(),
            "partition node 2 (delay 120 ms) for 800 ms, then 300 ms healed"
        );
    }
}
