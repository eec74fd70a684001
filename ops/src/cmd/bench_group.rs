//! `keel bench commit` and `keel bench group`: the group coordinator under load, with
//! standard Kafka requests only, so they run against any Kafka-protocol broker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequest, OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::{GroupId, TopicName};
use kafka_protocol::protocol::StrBytes;
use keel_client::connection::Connection;
use keel_client::{Admin, Consumer, ConsumerConfig, GroupConfig, Offset, TopicSpec};
use serde::Serialize;

use crate::args::ConnArgs;
use crate::connect;
use crate::histogram::LatencyHistogram;

#[derive(Debug, Clone, Args)]
pub struct BenchCommitArgs {
    /// Group whose offsets are committed (no members: simple commits, generation -1).
    #[arg(long, default_value = "keel-bench-commits")]
    pub group: String,
    /// Topic the offsets are for (created if absent).
    #[arg(long, default_value = "keel-bench-commits")]
    pub topic: String,
    /// Partitions of the topic: each OffsetCommit carries one offset per partition.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: i32,
    /// OffsetCommit requests to send.
    #[arg(long, default_value_t = 20_000)]
    pub commits: u64,
    /// Spread the commits round-robin over this many groups (`<group>-0`, `<group>-1`, …),
    /// e.g. to fill offsets partitions with many groups before timing their load.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub groups: u64,
    /// Requests in flight on the coordinator connection.
    #[arg(long, default_value_t = 8)]
    pub in_flight: usize,
    /// Stop after this many seconds even if --commits is not reached.
    #[arg(long = "duration-s", value_name = "SECONDS", default_value_t = 60)]
    pub duration_s: u64,
    /// Print one JSON object with the results on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Clone, Args)]
pub struct BenchGroupArgs {
    /// Group the members join.
    #[arg(long, default_value = "keel-bench-group")]
    pub group: String,
    /// Topic they subscribe to (created if absent).
    #[arg(long, default_value = "keel-bench-group")]
    pub topic: String,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: i32,
    /// Members of the group.
    #[arg(long, default_value_t = 10)]
    pub members: usize,
    /// Members' heartbeat interval: how soon a member hears that a rebalance started.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    pub heartbeat_ms: u64,
    /// Print one JSON object with the results on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Serialize)]
pub struct CommitReport {
    pub mode: &'static str,
    pub partitions: i32,
    pub commits: u64,
    pub failed: u64,
    pub seconds: f64,
    pub commits_per_sec: f64,
    pub partition_offsets_per_sec: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct GroupReport {
    pub mode: &'static str,
    pub members: usize,
    pub partitions: i32,
    /// From starting every member to all of them holding partitions that cover the topic.
    pub form_ms: f64,
    /// One member leaves (LeaveGroup): until the others cover the topic again.
    pub leave_rebalance_ms: f64,
    /// One member joins a stable group: until all cover the topic, each with a share.
    pub join_rebalance_ms: f64,
}

fn ms(d: Option<Duration>) -> f64 {
    d.map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

async fn ensure_topic(admin: &Admin, topic: &str, partitions: i32) -> anyhow::Result<()> {
    if admin.list_topics().await?.iter().any(|t| t == topic) {
        return Ok(());
    }
    let spec = TopicSpec {
        name: topic.to_string(),
        partitions,
        replication_factor: -1,
        configs: Vec::new(),
    };
    admin
        .create_topics(&[spec])
        .await
        .with_context(|| format!("cannot create topic '{topic}'"))
}

pub async fn commit(args: BenchCommitArgs) -> anyhow::Result<()> {
    let admin = connect::admin(&args.conn.bootstrap_server).await?;
    ensure_topic(&admin, &args.topic, args.partitions).await?;
    let group_of = |i: u64| {
        if args.groups == 1 {
            args.group.clone()
        } else {
            format!("{}-{}", args.group, i % args.groups)
        }
    };
    // Each group's coordinator, one connection per coordinator.
    let mut by_addr: std::collections::HashMap<String, Arc<Connection>> = Default::default();
    let mut conns: Vec<Arc<Connection>> = Vec::new();
    for g in 0..args.groups {
        let addr = admin.group_coordinator(&group_of(g)).await?;
        if !by_addr.contains_key(&addr) {
            let c = Connection::connect(
                &addr,
                "keel-bench",
                Duration::from_secs(10),
                Duration::from_secs(30),
            )
            .await
            .with_context(|| format!("cannot connect to the coordinator at {addr}"))?;
            by_addr.insert(addr.clone(), Arc::new(c));
        }
        conns.push(by_addr[&addr].clone());
    }
    let conn_of = |i: u64| conns[(i % args.groups) as usize].clone();
    let request = |i: u64| {
        let parts = (0..args.partitions)
            .map(|p| {
                OffsetCommitRequestPartition::default()
                    .with_partition_index(p)
                    .with_committed_offset(i as i64)
                    .with_committed_leader_epoch(-1)
            })
            .collect();
        OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group_of(i))))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(StrBytes::from_string(args.topic.clone())))
                .with_partitions(parts)])
    };
    // One request first: the coordinator may still be loading the group's partition.
    let warm = Instant::now() + Duration::from_secs(30);
    loop {
        let resp = conn_of(0).send(&request(0)).await?;
        match resp.topics[0].partitions[0].error_code {
            0 => break,
            code if Instant::now() < warm => {
                tracing::debug!(code, "warming up the coordinator");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            code => bail!("the coordinator refuses commits: error code {code}"),
        }
    }
    let mut hist = LatencyHistogram::with_capacity(args.commits.min(1 << 20) as usize);
    let (mut sent, mut done, mut failed) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration_s);
    let mut inflight = FuturesUnordered::new();
    while done < args.commits && Instant::now() < deadline {
        while inflight.len() < args.in_flight.max(1) && sent < args.commits {
            sent += 1;
            let req = request(sent);
            let conn = conn_of(sent);
            inflight.push(async move {
                let t = Instant::now();
                let ok = conn
                    .send(&req)
                    .await
                    .map(|r| {
                        r.topics
                            .iter()
                            .flat_map(|t| &t.partitions)
                            .all(|p| p.error_code == 0)
                    })
                    .unwrap_or(false);
                (ok, t.elapsed())
            });
        }
        let Some((ok, took)) = inflight.next().await else {
            break;
        };
        done += 1;
        if ok {
            hist.record(took);
        } else {
            failed += 1;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let report = CommitReport {
        mode: "commit",
        partitions: args.partitions,
        commits: done,
        failed,
        seconds,
        commits_per_sec: done as f64 / seconds,
        partition_offsets_per_sec: done as f64 * f64::from(args.partitions) / seconds,
        latency_p50_ms: ms(hist.percentile(500)),
        latency_p99_ms: ms(hist.percentile(990)),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} OffsetCommit ({} partitions each) in {:.2} s: {:.0} commits/s, {:.0} partition offsets/s, p50 {:.2} ms, p99 {:.2} ms, {} failed",
            report.commits, report.partitions, report.seconds, report.commits_per_sec,
            report.partition_offsets_per_sec, report.latency_p50_ms, report.latency_p99_ms, report.failed
        );
    }
    Ok(())
}

/// A member polling in its own task, publishing its assignment.
struct Member {
    assigned: Arc<Mutex<Vec<i32>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<anyhow::Result<Consumer>>,
}

async fn start_member(args: &BenchGroupArgs) -> anyhow::Result<Member> {
    let config = ConsumerConfig {
        max_wait: Duration::from_millis(50),
        ..ConsumerConfig::default()
    };
    let mut c = Consumer::new(connect::client_config(&args.conn.bootstrap_server), config).await?;
    let g = GroupConfig {
        heartbeat_interval: Duration::from_millis(args.heartbeat_ms),
        session_timeout: Duration::from_secs(10),
        rebalance_timeout: Duration::from_secs(30),
        auto_offset_reset: Offset::Latest,
        ..GroupConfig::new(args.group.clone())
    };
    c.subscribe(&[&args.topic], g).await?;
    let assigned = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (a, s) = (assigned.clone(), stop.clone());
    let task = tokio::spawn(async move {
        while !s.load(Ordering::Acquire) {
            c.poll().await?;
            *a.lock().unwrap_or_else(|p| p.into_inner()) =
                c.assignment().into_iter().map(|(_, p)| p).collect();
        }
        Ok(c)
    });
    Ok(Member {
        assigned,
        stop,
        task,
    })
}

/// Whether `members` hold disjoint shares covering `partitions`, each at least one when
/// there are enough partitions.
fn settled(members: &[Member], partitions: i32) -> bool {
    let shares: Vec<Vec<i32>> = members
        .iter()
        .map(|m| m.assigned.lock().unwrap_or_else(|p| p.into_inner()).clone())
        .collect();
    let mut all: Vec<i32> = shares.iter().flatten().copied().collect();
    all.sort_unstable();
    let each = partitions as usize >= members.len();
    all == (0..partitions).collect::<Vec<_>>() && (!each || shares.iter().all(|s| !s.is_empty()))
}

async fn until_settled(members: &[Member], partitions: i32, what: &str) -> anyhow::Result<f64> {
    let start = Instant::now();
    while !settled(members, partitions) {
        if start.elapsed() > Duration::from_secs(120) {
            bail!("{what}: the group did not settle within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(start.elapsed().as_secs_f64() * 1000.0)
}

pub async fn group(args: BenchGroupArgs) -> anyhow::Result<()> {
    let admin = connect::admin(&args.conn.bootstrap_server).await?;
    ensure_topic(&admin, &args.topic, args.partitions).await?;
    let start = Instant::now();
    let mut members = Vec::new();
    for _ in 0..args.members {
        members.push(start_member(&args).await?);
    }
    until_settled(&members, args.partitions, "forming").await?;
    let form_ms = start.elapsed().as_secs_f64() * 1000.0;
    // One leaves cleanly.
    let gone = members.pop().expect("at least one member");
    gone.stop.store(true, Ordering::Release);
    let consumer = gone.task.await??;
    let left_at = Instant::now();
    consumer.close().await?;
    until_settled(&members, args.partitions, "after a leave").await?;
    let leave_rebalance_ms = left_at.elapsed().as_secs_f64() * 1000.0;
    // One joins again.
    let joined_at = Instant::now();
    members.push(start_member(&args).await?);
    until_settled(&members, args.partitions, "after a join").await?;
    let join_rebalance_ms = joined_at.elapsed().as_secs_f64() * 1000.0;
    for m in members {
        m.stop.store(true, Ordering::Release);
        if let Ok(Ok(c)) = m.task.await {
            let _ = c.close().await;
        }
    }
    let report = GroupReport {
        mode: "group",
        members: args.members,
        partitions: args.partitions,
        form_ms,
        leave_rebalance_ms,
        join_rebalance_ms,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} members, {} partitions: formed in {:.0} ms; rebalance after a leave {:.0} ms, after a join {:.0} ms",
            report.members, report.partitions, report.form_ms, report.leave_rebalance_ms, report.join_rebalance_ms
        );
    }
    Ok(())
}
