//! Benchmarks of the control plane: `keel bench metadata` (create and delete topics as fast
//! as the active controller commits them) and `keel bench failover` (kill the active
//! controller, or a broker, of a `keel cluster start` cluster over and over, and time the
//! new active controller and the new partition leaders).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::Args;
use keel_client::{Admin, TopicSpec};

use super::cluster::control::{self, Action, Request};
use super::cluster::file::{ClusterFile, NodeState, FILE_NAME};
use super::cluster::quorum::quorum_states;
use crate::args::ConnArgs;
use crate::connect;
use crate::histogram::LatencyHistogram;

#[derive(Debug, Clone, Args)]
pub struct BenchMetadataArgs {
    /// Topics to create and delete again (each is two metadata operations).
    #[arg(long, default_value_t = 200)]
    pub topics: u64,
    /// Replication factor of each topic (one partition).
    #[arg(long, default_value_t = 3)]
    pub replication_factor: i16,
    /// Topic name prefix.
    #[arg(long, default_value = "keel-bench-meta")]
    pub prefix: String,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// Creates and deletes `--topics` topics one after another; reports operations per second
/// and the latency of each kind.
pub async fn metadata(args: BenchMetadataArgs) -> anyhow::Result<()> {
    let admin = connect::admin(&args.conn.bootstrap_server).await?;
    let mut create = LatencyHistogram::with_capacity(args.topics as usize);
    let mut delete = LatencyHistogram::with_capacity(args.topics as usize);
    let started = Instant::now();
    for i in 0..args.topics {
        let name = format!("{}-{i}", args.prefix);
        let t = Instant::now();
        admin
            .create_topics(&[TopicSpec {
                name: name.clone(),
                partitions: 1,
                replication_factor: args.replication_factor,
                configs: Vec::new(),
            }])
            .await
            .with_context(|| format!("create {name}"))?;
        create.record(t.elapsed());
        let t = Instant::now();
        admin
            .delete_topics(std::slice::from_ref(&name))
            .await
            .with_context(|| format!("delete {name}"))?;
        delete.record(t.elapsed());
    }
    let secs = started.elapsed().as_secs_f64();
    let ops = 2 * args.topics;
    let (c, d) = (create.summary(), delete.summary());
    println!(
        "{ops} metadata operations in {secs:.2} s: {:.0} ops/s (create p50 {:.1} ms p99 {:.1} ms; delete p50 {:.1} ms p99 {:.1} ms)",
        ops as f64 / secs,
        c.p50_ms,
        c.p99_ms,
        d.p50_ms,
        d.p99_ms
    );
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct BenchFailoverArgs {
    /// The `keel cluster start` directory.
    #[arg(long, value_name = "DIR", default_value = "keel-cluster")]
    pub data_dir: PathBuf,
    /// Kills to time (each node is started again before the next).
    #[arg(long, default_value_t = 10)]
    pub kills: u32,
    /// Kill a broker that is not the active controller (times only partition leaders)
    /// instead of the active controller.
    #[arg(long)]
    pub broker: bool,
    /// Also time until every partition of this topic led by the killed node has a new
    /// leader.
    #[arg(long, value_name = "TOPIC")]
    pub topic: Option<String>,
}

fn cluster_file(dir: &std::path::Path) -> anyhow::Result<ClusterFile> {
    ClusterFile::read(&dir.join(FILE_NAME))?
        .ok_or_else(|| anyhow!("no cluster at {} (keel cluster start)", dir.display()))
}

/// The active controller as the voters say; `None` while there is none.
async fn active(file: &ClusterFile, skip: i32) -> Option<i32> {
    let voters: Vec<_> = file
        .nodes
        .iter()
        .filter(|n| n.id != skip && n.state == NodeState::Up)
        .filter_map(|n| Some((n.id, n.controller?)))
        .collect();
    quorum_states(&voters, None, Duration::from_millis(500))
        .await
        .into_iter()
        .filter_map(|(_, s)| s.ok())
        .filter(|s| s.leader == s.node_id)
        .max_by_key(|s| s.term)
        .map(|s| s.node_id)
}

/// The partitions of `topic` that `node` leads, as the brokers' metadata says.
async fn led_by(admin: &Admin, topic: &str, node: i32) -> Option<Vec<i32>> {
    let d = admin.describe_topics(&[topic.to_string()]).await.ok()?;
    Some(
        d.first()?
            .partitions
            .iter()
            .filter(|p| p.leader == node)
            .map(|p| p.partition)
            .collect(),
    )
}

fn node_command(dir: &std::path::Path, action: Action, node: i32) -> anyhow::Result<String> {
    control::send(dir, Request { action, node }, Duration::from_secs(60))
}

/// Kills the active controller (or a broker) `--kills` times; prints each time and the
/// distribution.
pub async fn failover(args: BenchFailoverArgs) -> anyhow::Result<()> {
    let mut elect_ms = Vec::new();
    let mut lead_ms = Vec::new();
    for round in 1..=args.kills {
        let file = cluster_file(&args.data_dir)?;
        // Killing a broker needs no quorum answer: a cluster whose controller does not
        // answer QuorumState (one built before the quorum) is measured too, the controller
        // being the nodes without a Kafka listener.
        let deadline = Instant::now()
            + if args.broker {
                Duration::from_secs(3)
            } else {
                Duration::from_secs(60)
            };
        let ctrl = loop {
            if let Some(a) = active(&file, -1).await {
                break Some(a);
            }
            if Instant::now() > deadline {
                if args.broker {
                    break None;
                }
                bail!("no active controller within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let victim = if args.broker {
            let brokers: Vec<i32> = file
                .nodes
                .iter()
                .filter(|n| n.role.is_broker() && Some(n.id) != ctrl)
                .map(|n| n.id)
                .collect();
            *brokers
                .get(round as usize % brokers.len().max(1))
                .ok_or_else(|| anyhow!("no broker but the controller"))?
        } else {
            ctrl.expect("waited for an active controller")
        };
        let admin = Admin::new(keel_client::ClientConfig::new(&file.bootstrap().join(","))).await?;
        let led = match &args.topic {
            Some(t) => led_by(&admin, t, victim).await.unwrap_or_default(),
            None => Vec::new(),
        };
        let killed_at = Instant::now();
        let tokio_dir = args.data_dir.clone();
        tokio::task::spawn_blocking(move || node_command(&tokio_dir, Action::Kill, victim))
            .await??;
        let mut elected = (Some(victim) != ctrl).then(Duration::default);
        let mut leaders = led.is_empty().then(Duration::default);
        while (elected.is_none() || leaders.is_none())
            && killed_at.elapsed() < Duration::from_secs(60)
        {
            if elected.is_none() && active(&file, victim).await.is_some() {
                elected = Some(killed_at.elapsed());
            }
            if leaders.is_none() {
                if let Some(t) = &args.topic {
                    if led_by(&admin, t, victim)
                        .await
                        .is_some_and(|l| l.is_empty())
                    {
                        leaders = Some(killed_at.elapsed());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let e =
            elected.ok_or_else(|| anyhow!("round {round}: no new active controller in 60 s"))?;
        let l = leaders
            .ok_or_else(|| anyhow!("round {round}: partitions still led by {victim} after 60 s"))?;
        let controller = if Some(victim) == ctrl {
            format!(
                " (the active controller); a new active controller after {} ms",
                e.as_millis()
            )
        } else {
            String::new()
        };
        println!(
            "round {round}: killed node {victim}{controller}; {} partitions it led were led elsewhere after {} ms",
            led.len(),
            l.as_millis()
        );
        if Some(victim) == ctrl {
            elect_ms.push(e.as_millis() as u64);
        }
        if !led.is_empty() {
            lead_ms.push(l.as_millis() as u64);
        }
        let dir = args.data_dir.clone();
        tokio::task::spawn_blocking(move || node_command(&dir, Action::Start, victim)).await??;
        // Settle: the node follows the quorum again before the next kill.
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    for (what, v) in [
        ("new active controller", &mut elect_ms),
        ("new partition leaders", &mut lead_ms),
    ] {
        if v.is_empty() {
            continue;
        }
        v.sort_unstable();
        let pick = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        println!(
            "{what}: n={} min {} ms, median {} ms, p90 {} ms, max {} ms",
            v.len(),
            v[0],
            pick(0.5),
            pick(0.9),
            v[v.len() - 1]
        );
    }
    Ok(())
}
