//! `keel check`: asks every broker for the replicas it holds and compares them.
//!
//! Two rounds of Keel's `ReplicaState` request (see `keel_protocol::replica_state`), sent to
//! each broker directly, not only to leaders:
//! 1. each broker's view of each replica: log start, LEO, HW, leader epoch, epoch cache;
//! 2. digests of the batches: each replica over the range it has committed in common with
//!    the leader, `[higher log start, lower HW)`, and the leader over each of those ranges.
//!
//! Then [`assess`] gives each replica and partition a [`Status`]. Data that is still
//! replicating (above a HW) or gone by retention (below a log start) is never compared, so
//! a busy cluster is not flagged for being busy, and a replica far behind is still compared
//! over what it has.
//!
//! Exit code 0 when every partition is SYNCED, or LAGGING no more than `--max-lag` records;
//! otherwise an error line and exit code 1.

pub mod assess;
pub mod quorum;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use keel_client::connection::Connection;
use keel_protocol::replica_state::{
    BrokerState, DigestRange, ReplicaStateRequest, StateQuery, REPLICA_STATE_KEY,
};

use crate::args::ConnArgs;
use crate::connect;
use assess::{assess, digest_requests, Answer, PartitionMeta, PartitionReport, Status};

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Only this topic (repeatable); every topic by default.
    #[arg(long = "topic", value_name = "TOPIC")]
    pub topics: Vec<String>,
    /// Show only partitions that are not SYNCED.
    #[arg(long)]
    pub unsynced: bool,
    /// Print one JSON document per round instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Check again every --interval-ms until Ctrl-C (or --count rounds).
    #[arg(long)]
    pub watch: bool,
    /// Time between rounds with --watch.
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    pub interval_ms: u64,
    /// Stop --watch after this many rounds.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// LAGGING replicas at most this many records behind still exit 0.
    #[arg(long, default_value_t = 0, value_name = "RECORDS")]
    pub max_lag: i64,
    /// Also compare the controller voters' metadata logs: `id@host:port` of each voter,
    /// comma-separated (what `controller.quorum.voters` says).
    #[arg(long, value_name = "ID@HOST:PORT[,...]", value_parser = parse_voters)]
    pub voters: Option<Vec<(i32, std::net::SocketAddr)>>,
    /// Time allowed for each broker's answer.
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    pub timeout_ms: u64,
    #[command(flatten)]
    pub conn: ConnArgs,
}

pub async fn run(args: CheckArgs) -> anyhow::Result<()> {
    let mut round = 0u64;
    loop {
        round += 1;
        let reports = check_once(&args).await?;
        let verdict = verdict(&reports, args.max_lag);
        let timeout = Duration::from_millis(args.timeout_ms.max(1));
        let quorum = match &args.voters {
            Some(v) => Some(quorum::check(v, timeout, args.max_lag).await),
            None => None,
        };
        let quorum_failing = quorum.as_deref().map_or(0, |q| quorum::verdict(q).0);
        if args.json {
            println!(
                "{}",
                serde_json::to_string(&JsonRound::new(&reports, &verdict))?
            );
        } else {
            if args.watch {
                print!("\x1b[2J\x1b[H"); // clear the screen between rounds
            }
            if let Some(q) = &quorum {
                print!("{}", quorum::render(q));
                println!("{}\n", quorum::verdict(q).1);
            }
            print!("{}", render(&reports, args.unsynced));
            println!("{}", verdict.summary);
        }
        let more = args.watch && args.count.is_none_or(|n| round < n);
        if !more {
            if quorum_failing > 0 {
                bail!("the controller quorum is not in sync (see the voters' table)");
            }
            return match verdict.failing {
                0 => Ok(()),
                n => bail!(
                    "{n} of {} partitions are not in sync (see the table)",
                    reports.len()
                ),
            };
        }
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }
}

/// `id@host:port[,...]`, as `controller.quorum.voters`.
fn parse_voters(v: &str) -> Result<Vec<(i32, std::net::SocketAddr)>, String> {
    v.split(',')
        .map(|one| {
            let (id, addr) = one
                .trim()
                .split_once('@')
                .ok_or_else(|| format!("{one}: expected id@host:port"))?;
            let id = id.parse().map_err(|_| format!("{one}: bad voter id"))?;
            let addr = std::net::ToSocketAddrs::to_socket_addrs(addr)
                .map_err(|e| format!("{one}: {e}"))?
                .next()
                .ok_or_else(|| format!("{one}: no address"))?;
            Ok((id, addr))
        })
        .collect()
}

/// One round: metadata, replica states, digests, assessment.
pub async fn check_once(args: &CheckArgs) -> anyhow::Result<Vec<PartitionReport>> {
    let admin = connect::admin(&args.conn.bootstrap_server).await?;
    let topics = if args.topics.is_empty() {
        admin.list_topics().await.context("cannot list topics")?
    } else {
        args.topics.clone()
    };
    let mut metas = Vec::new();
    for t in &topics {
        let desc = connect::require_topic(&admin, t).await?;
        metas.extend(desc.partitions.iter().map(|p| PartitionMeta {
            topic: t.clone(),
            partition: p.partition,
            leader: p.leader,
            leader_epoch: p.leader_epoch,
            replicas: p.replicas.clone(),
            isr: p.isr.clone(),
        }));
    }
    let brokers = admin.brokers().await.context("cannot list brokers")?;
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let progress = progress_bar(brokers.len() as u64 * 2, args.json);

    // Round 1: every broker's view of its replicas.
    let mut conns: BTreeMap<i32, Result<Connection, String>> = BTreeMap::new();
    let mut states: BTreeMap<i32, Result<BrokerState, String>> = BTreeMap::new();
    let query = StateQuery {
        topics: topics.clone(),
        digests: Vec::new(),
    };
    for b in &brokers {
        let addr = format!("{}:{}", b.host, b.port);
        let conn = Connection::connect(&addr, "keel-check", timeout, timeout)
            .await
            .map_err(|e| format!("cannot reach broker {} at {addr}: {e}", b.node_id));
        let state = match &conn {
            Ok(c) => ask(c, &query, timeout).await,
            Err(e) => Err(e.clone()),
        };
        conns.insert(b.node_id, conn);
        states.insert(b.node_id, state);
        progress.inc(1);
    }
    let answers_of = |states: &BTreeMap<i32, Result<BrokerState, String>>, m: &PartitionMeta| {
        m.replicas
            .iter()
            .map(|&b| (b, answer(states.get(&b), m)))
            .collect::<BTreeMap<i32, Answer>>()
    };

    // Round 2: digests over the ranges each replica shares with its leader.
    let mut digests: BTreeMap<i32, Vec<DigestRange>> = BTreeMap::new();
    for m in &metas {
        for (b, (from, to)) in digest_requests(&answers_of(&states, m)) {
            digests.entry(b).or_default().push(DigestRange {
                topic: m.topic.clone(),
                partition: m.partition,
                from,
                to,
            });
        }
    }
    for b in &brokers {
        let ranges = digests.remove(&b.node_id).unwrap_or_default();
        if let (Some(Ok(conn)), false) = (conns.get(&b.node_id), ranges.is_empty()) {
            let query = StateQuery {
                topics: topics.clone(),
                digests: ranges,
            };
            match ask(conn, &query, timeout).await {
                Ok(state) => {
                    states.insert(b.node_id, Ok(state));
                }
                // Keep what round 1 said; only the comparison is missing.
                Err(e) => {
                    if let Some(Ok(state)) = states.get_mut(&b.node_id) {
                        for r in &mut state.replicas {
                            r.error = Some(format!("no digest: {e}"));
                        }
                    }
                }
            }
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    Ok(metas
        .iter()
        .map(|m| assess(m, &answers_of(&states, m)))
        .collect())
}

async fn ask(
    conn: &Connection,
    query: &StateQuery,
    timeout: Duration,
) -> Result<BrokerState, String> {
    let req = ReplicaStateRequest::new(query);
    let resp = conn.send_unlisted(&req, 0, timeout).await.map_err(|e| {
        format!(
            "broker at {} did not answer ReplicaState (api key {REPLICA_STATE_KEY}): {e}",
            conn.addr()
        )
    })?;
    resp.state().map_err(|e| format!("{e:#}"))
}

/// The answer about `m` from the broker whose round came back as `state`.
fn answer(state: Option<&Result<BrokerState, String>>, m: &PartitionMeta) -> Answer {
    match state {
        None => Answer::Unreachable("broker not in the cluster metadata (down or fenced)".into()),
        Some(Err(e)) => Answer::Unreachable(e.clone()),
        Some(Ok(s)) => s
            .replicas
            .iter()
            .find(|r| r.topic == m.topic && r.partition == m.partition)
            .map_or(Answer::Missing, |r| Answer::Replica(Box::new(r.clone()))),
    }
}

fn progress_bar(len: u64, json: bool) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("checking {bar:30} {pos}/{len} broker rounds") {
        bar.set_style(style);
    }
    bar
}

/// How many partitions fail, and the line that says so.
pub struct Verdict {
    pub failing: usize,
    pub summary: String,
}

pub fn verdict(reports: &[PartitionReport], max_lag: i64) -> Verdict {
    let mut counts: BTreeMap<Status, usize> = BTreeMap::new();
    let mut failing = 0;
    for r in reports {
        *counts.entry(r.status).or_default() += 1;
        let ok =
            r.status == Status::Synced || (r.status == Status::Lagging && r.max_lag() <= max_lag);
        failing += usize::from(!ok);
    }
    let parts: Vec<String> = counts
        .iter()
        .map(|(s, n)| format!("{n} {}", s.as_str()))
        .collect();
    let summary = if reports.is_empty() {
        "no partitions".to_string()
    } else {
        format!("{} partitions: {}", reports.len(), parts.join(", "))
    };
    Verdict { failing, summary }
}

/// The table: a line per replica, grouped by partition.
pub fn render(reports: &[PartitionReport], unsynced_only: bool) -> String {
    let mut out = String::new();
    let mut lines = vec![[
        "TOPIC",
        "PARTITION",
        "LEADER",
        "EPOCH",
        "REPLICA",
        "LEO",
        "HW",
        "LAG",
        "ISR",
        "STATUS",
        "NOTE",
    ]
    .map(String::from)];
    let opt = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
    for r in reports {
        if unsynced_only && r.status == Status::Synced {
            continue;
        }
        for (i, row) in r.replicas.iter().enumerate() {
            let first = i == 0;
            let status = if first && r.status > row.status {
                format!("{} ({})", row.status.as_str(), r.status.as_str())
            } else {
                row.status.as_str().to_string()
            };
            lines.push([
                if first {
                    r.topic.clone()
                } else {
                    String::new()
                },
                if first {
                    r.partition.to_string()
                } else {
                    String::new()
                },
                if first {
                    r.leader.to_string()
                } else {
                    String::new()
                },
                if first {
                    r.leader_epoch.to_string()
                } else {
                    String::new()
                },
                format!("{}{}", row.broker, if row.is_leader { "*" } else { "" }),
                opt(row.leo),
                opt(row.hw),
                opt(row.lag),
                if row.in_isr { "yes" } else { "no" }.to_string(),
                status,
                row.note.clone(),
            ]);
        }
    }
    let widths: Vec<usize> = (0..11)
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for l in &lines {
        let mut line = String::new();
        for (c, cell) in l.iter().enumerate() {
            if c == 10 {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `--json`: one document per round.
#[derive(serde::Serialize)]
struct JsonRound<'a> {
    ok: bool,
    summary: &'a str,
    partitions: &'a [PartitionReport],
}

impl<'a> JsonRound<'a> {
    fn new(reports: &'a [PartitionReport], v: &'a Verdict) -> Self {
        Self {
            ok: v.failing == 0,
            summary: &v.summary,
            partitions: reports,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::assess::ReplicaRow;
    use super::*;

    fn report(status: Status, lag: i64) -> PartitionReport {
        PartitionReport {
            topic: "t".into(),
            partition: 0,
            leader: 1,
            leader_epoch: 2,
            status,
            replicas: vec![
                ReplicaRow {
                    broker: 1,
                    leo: Some(10),
                    hw: Some(10),
                    lag: Some(0),
                    in_isr: true,
                    is_leader: true,
                    compared: None,
                    status: Status::Synced,
                    note: String::new(),
                },
                ReplicaRow {
                    broker: 2,
                    leo: Some(10 - lag),
                    hw: Some(10 - lag),
                    lag: Some(lag),
                    in_isr: status == Status::Synced,
                    is_leader: false,
                    compared: Some((0, 10)),
                    status,
                    note: String::new(),
                },
            ],
        }
    }

    #[test]
    fn verdict_counts_what_fails() {
        let reports = [report(Status::Synced, 0), report(Status::Lagging, 5)];
        assert_eq!(verdict(&reports, 0).failing, 1);
        assert_eq!(verdict(&reports, 5).failing, 0, "within --max-lag");
        assert_eq!(verdict(&[report(Status::Diverged, 0)], 1000).failing, 1);
        assert_eq!(
            verdict(&reports, 0).summary,
            "2 partitions: 1 SYNCED, 1 LAGGING"
        );
    }

    #[test]
    fn table_marks_the_leader_and_filters_synced() {
        let reports = [report(Status::Synced, 0), report(Status::Lagging, 5)];
        let all = render(&reports, false);
        assert_eq!(all.lines().count(), 5, "{all}");
        assert!(all.lines().nth(1).unwrap().contains("1*"), "{all}");
        let unsynced = render(&reports, true);
        assert_eq!(unsynced.lines().count(), 3, "{unsynced}");
        assert!(unsynced.contains("LAGGING"));
    }
}
