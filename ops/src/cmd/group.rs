//! `keel group list|describe|delete|reset-offsets`, like `kafka-consumer-groups`.

use std::collections::BTreeMap;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use keel_client::{Admin, GroupDescription, Offset};

use crate::args::{Bootstrap, ConnArgs};
use crate::connect;
use crate::table::{strings, table};

#[derive(Debug, Clone, Subcommand)]
pub enum GroupCommand {
    /// List the consumer groups of the cluster, with their state.
    List(ListArgs),
    /// Show a group: state, assignor, members and their partitions, and per partition the
    /// committed offset, the log end and the lag.
    Describe(GroupArgs),
    /// Delete a group that has no members, and its committed offsets.
    Delete(GroupArgs),
    /// Move a group's committed offsets on a topic (the group must have no members).
    ///
    /// Prints the plan; nothing changes without --execute.
    ResetOffsets(ResetArgs),
}

impl GroupCommand {
    fn bootstrap(&self) -> &Bootstrap {
        match self {
            GroupCommand::List(a) => &a.conn.bootstrap_server,
            GroupCommand::Describe(a) | GroupCommand::Delete(a) => &a.conn.bootstrap_server,
            GroupCommand::ResetOffsets(a) => &a.conn.bootstrap_server,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Clone, Args)]
pub struct GroupArgs {
    /// Group id.
    pub group: String,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Clone, Args)]
#[group(id = "target", required = true, multiple = false, args = ["to_earliest", "to_latest", "to_offset", "shift_by"])]
pub struct ResetArgs {
    /// Group id.
    pub group: String,
    /// The topic whose offsets move (every partition of it).
    #[arg(long)]
    pub topic: String,
    /// To each partition's first offset.
    #[arg(long)]
    pub to_earliest: bool,
    /// To each partition's end.
    #[arg(long)]
    pub to_latest: bool,
    /// To this offset (kept within each partition's start and end).
    #[arg(long, value_name = "N")]
    pub to_offset: Option<i64>,
    /// By this many records from the committed offset (negative: back), kept within the
    /// partition's start and end.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub shift_by: Option<i64>,
    /// Apply the plan (without it, only print it).
    #[arg(long)]
    pub execute: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

pub async fn run(command: GroupCommand) -> anyhow::Result<()> {
    let admin = connect::admin(command.bootstrap()).await?;
    match command {
        GroupCommand::List(_) => {
            let groups = admin.list_groups().await.context("cannot list groups")?;
            let mut rows = vec![strings(&["GROUP", "STATE", "PROTOCOL TYPE"])];
            rows.extend(
                groups
                    .into_iter()
                    .map(|g| vec![g.group_id, g.state, g.protocol_type]),
            );
            print!("{}", table(&rows));
        }
        GroupCommand::Describe(args) => {
            let desc = admin
                .describe_group(&args.group)
                .await
                .with_context(|| format!("cannot describe group {}", args.group))?;
            let offsets = admin.group_offsets(&args.group).await?;
            print!("{}", render(&desc, &lag_rows(&admin, &offsets).await?));
        }
        GroupCommand::Delete(args) => {
            admin.delete_group(&args.group).await?;
            println!("deleted group {}", args.group);
        }
        GroupCommand::ResetOffsets(args) => reset(&admin, &args).await?,
    }
    Ok(())
}

/// Per committed partition: topic, partition, committed, log end, lag.
async fn lag_rows(
    admin: &Admin,
    offsets: &BTreeMap<(String, i32), i64>,
) -> anyhow::Result<Vec<(String, i32, i64, i64)>> {
    let mut rows = Vec::new();
    for ((t, p), committed) in offsets {
        let end = admin.list_offsets(t, *p, Offset::Latest).await?;
        rows.push((t.clone(), *p, *committed, end));
    }
    Ok(rows)
}

/// The text of `keel group describe`.
pub fn render(desc: &GroupDescription, offsets: &[(String, i32, i64, i64)]) -> String {
    let mut out = format!(
        "group {}: {}{}, coordinator {}\n",
        desc.group_id,
        desc.state,
        if desc.protocol.is_empty() {
            String::new()
        } else {
            format!(" ({})", desc.protocol)
        },
        desc.coordinator
    );
    if !desc.members.is_empty() {
        let mut rows = vec![strings(&[
            "MEMBER",
            "INSTANCE",
            "CLIENT",
            "HOST",
            "PARTITIONS",
        ])];
        for m in &desc.members {
            let parts: Vec<String> = m
                .assignment
                .iter()
                .map(|(t, p)| format!("{t}-{p}"))
                .collect();
            rows.push(vec![
                m.member_id.clone(),
                m.instance_id.clone().unwrap_or_else(|| "-".into()),
                m.client_id.clone(),
                m.client_host.clone(),
                parts.join(","),
            ]);
        }
        out.push_str(&table(&rows));
    }
    if !offsets.is_empty() {
        let mut rows = vec![strings(&[
            "TOPIC",
            "PARTITION",
            "COMMITTED",
            "LOG END",
            "LAG",
        ])];
        for (t, p, c, end) in offsets {
            rows.push(vec![
                t.clone(),
                p.to_string(),
                c.to_string(),
                end.to_string(),
                (end - c).max(0).to_string(),
            ]);
        }
        out.push_str(&table(&rows));
    }
    out
}

async fn reset(admin: &Admin, args: &ResetArgs) -> anyhow::Result<()> {
    let desc = admin
        .describe_topics(std::slice::from_ref(&args.topic))
        .await?;
    let Some(topic) = desc.into_iter().next().filter(|d| d.error.is_none()) else {
        bail!("topic '{}' does not exist", args.topic);
    };
    let current = admin.group_offsets(&args.group).await?;
    let mut plan = BTreeMap::new();
    let mut rows = vec![strings(&["TOPIC", "PARTITION", "CURRENT", "NEW"])];
    for p in topic.partitions.iter().map(|p| p.partition) {
        let start = admin.list_offsets(&args.topic, p, Offset::Earliest).await?;
        let end = admin.list_offsets(&args.topic, p, Offset::Latest).await?;
        let now = current.get(&(args.topic.clone(), p)).copied();
        let target = if args.to_earliest {
            start
        } else if args.to_latest {
            end
        } else if let Some(n) = args.to_offset {
            n
        } else {
            now.unwrap_or(start) + args.shift_by.unwrap_or(0)
        };
        let target = target.clamp(start, end);
        rows.push(vec![
            args.topic.clone(),
            p.to_string(),
            now.map_or_else(|| "-".to_string(), |o| o.to_string()),
            target.to_string(),
        ]);
        plan.insert((args.topic.clone(), p), target);
    }
    print!("{}", table(&rows));
    if !args.execute {
        println!("dry run: nothing changed (add --execute to apply)");
        return Ok(());
    }
    let state = admin.describe_group(&args.group).await?.state;
    if !matches!(state.as_str(), "Empty" | "Dead") {
        bail!(
            "group {} is {state}: stop its consumers first (offsets of a live group are theirs)",
            args.group
        );
    }
    admin.set_group_offsets(&args.group, &plan).await?;
    println!(
        "reset the offsets of group {} on {}",
        args.group, args.topic
    );
    Ok(())
}
