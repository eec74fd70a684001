//! `keel topic create|list|describe|delete`.

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use keel_client::{PartitionInfo, PartitionProducers, TopicDescription, TopicSpec};

use crate::args::{parse_key_value, Bootstrap, ConnArgs};
use crate::connect;
use crate::table::{ids, table};

/// Kafka's TOPIC_ALREADY_EXISTS error code.
const TOPIC_ALREADY_EXISTS: i16 = 36;

#[derive(Debug, Clone, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create(CreateArgs),
    /// List topic names, one per line.
    List(ListArgs),
    /// Show a topic's partitions (leader, replicas, in-sync replicas) and configs.
    Describe(DescribeArgs),
    /// Delete a topic and all its data.
    Delete(NameArgs),
}

impl TopicCommand {
    pub fn bootstrap(&self) -> &Bootstrap {
        match self {
            TopicCommand::Create(a) => &a.conn.bootstrap_server,
            TopicCommand::List(a) => &a.conn.bootstrap_server,
            TopicCommand::Describe(a) => &a.conn.bootstrap_server,
            TopicCommand::Delete(a) => &a.conn.bootstrap_server,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// Topic name.
    pub name: String,
    /// Number of partitions.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: i32,
    /// Copies of each partition, on distinct brokers [default: the brokers'
    /// default.replication.factor].
    #[arg(long, value_parser = clap::value_parser!(i16).range(1..))]
    pub replication_factor: Option<i16>,
    /// A topic config, e.g. --config retention.ms=86400000 (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub configs: Vec<(String, String)>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Clone, Args)]
pub struct DescribeArgs {
    /// Topic name.
    pub name: String,
    /// Also list the idempotent producers each partition's leader keeps state for.
    #[arg(long)]
    pub producers: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Clone, Args)]
pub struct NameArgs {
    /// Topic name.
    pub name: String,
    #[command(flatten)]
    pub conn: ConnArgs,
}

pub async fn run(command: TopicCommand) -> anyhow::Result<()> {
    let admin = connect::admin(command.bootstrap()).await?;
    match command {
        TopicCommand::Create(args) => {
            let spec = TopicSpec {
                name: args.name.clone(),
                partitions: args.partitions,
                replication_factor: args.replication_factor.unwrap_or(-1),
                configs: args.configs,
            };
            match admin.create_topics(&[spec]).await {
                Ok(()) => {}
                Err(err) if err.kafka_code() == Some(TOPIC_ALREADY_EXISTS) => {
                    bail!("topic '{}' already exists", args.name)
                }
                // The client's message already says "create topic <name>: ...".
                Err(err) => return Err(err.into()),
            }
            let rf = args
                .replication_factor
                .map_or_else(|| "broker default".to_string(), |rf| rf.to_string());
            println!(
                "created topic {} (partitions={}, replication-factor={rf})",
                args.name, args.partitions
            );
        }
        TopicCommand::List(_) => {
            let mut topics = admin.list_topics().await.context("cannot list topics")?;
            topics.sort();
            for topic in topics {
                println!("{topic}");
            }
        }
        TopicCommand::Describe(args) => {
            let desc = connect::require_topic(&admin, &args.name).await?;
            print!("{}", render_description(&desc));
            if args.producers {
                let producers = admin
                    .describe_producers(&args.name)
                    .await
                    .context("cannot describe producers")?;
                print!("{}", render_producers(&producers));
            }
        }
        TopicCommand::Delete(args) => {
            connect::require_topic(&admin, &args.name).await?;
            admin
                .delete_topics(std::slice::from_ref(&args.name))
                .await?; // the client's message says "delete topic <name>: ..."
            println!("deleted topic {}", args.name);
        }
    }
    Ok(())
}

/// `describe --producers`: one line per partition and producer.
pub fn render_producers(partitions: &[PartitionProducers]) -> String {
    let mut rows = vec![[
        "PARTITION".to_string(),
        "PRODUCER".to_string(),
        "EPOCH".to_string(),
        "LAST SEQUENCE".to_string(),
        "LAST TIMESTAMP".to_string(),
    ]];
    for p in partitions {
        if let Some(e) = &p.error {
            rows.push([
                p.partition.to_string(),
                e.clone(),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
        for s in &p.producers {
            rows.push([
                p.partition.to_string(),
                s.producer_id.to_string(),
                s.epoch.to_string(),
                s.last_sequence.to_string(),
                s.last_timestamp.to_string(),
            ]);
        }
    }
    let mut out = String::from("producers:\n");
    if rows.len() == 1 {
        out.push_str("  none\n");
        return out;
    }
    for line in table(&rows).lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The `describe` output: a header, a partition table, then the configs.
pub fn render_description(desc: &TopicDescription) -> String {
    let mut partitions: Vec<&PartitionInfo> = desc.partitions.iter().collect();
    partitions.sort_by_key(|p| p.partition);
    let replication = partitions.first().map_or(0, |p| p.replicas.len());

    let mut rows = vec![[
        "PARTITION".to_string(),
        "LEADER".to_string(),
        "REPLICAS".to_string(),
        "ISR".to_string(),
    ]];
    for p in partitions.iter().copied() {
        let leader = if p.leader < 0 {
            "none".to_string()
        } else {
            p.leader.to_string()
        };
        rows.push([
            p.partition.to_string(),
            leader,
            ids(&p.replicas),
            ids(&p.isr),
        ]);
    }

    let mut out = format!(
        "topic {}: {} partitions, replication factor {replication}\n",
        desc.name,
        partitions.len()
    );
    out.push_str(&table(&rows));
    if desc.configs.is_empty() {
        out.push_str("configs: (defaults)\n");
    } else {
        out.push_str("configs:\n");
        let mut configs: Vec<_> = desc.configs.iter().collect();
        configs.sort();
        for (key, value) in configs {
            out.push_str(&format!("  {key}={value}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn partition(partition: i32, leader: i32, isr: Vec<i32>) -> PartitionInfo {
        PartitionInfo {
            partition,
            leader,
            leader_epoch: 0,
            replicas: vec![1, 2, 3],
            isr,
            offline: Vec::new(),
        }
    }

    fn parse(argv: &[&str]) -> TopicCommand {
        match crate::Cli::try_parse_from(argv).unwrap().command {
            crate::Command::Topic(c) => c,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn create_defaults_and_flags() {
        let TopicCommand::Create(a) = parse(&["keel", "topic", "create", "orders"]) else {
            panic!()
        };
        assert_eq!(
            (a.name.as_str(), a.partitions, a.replication_factor),
            ("orders", 1, None)
        );
        assert!(a.configs.is_empty());
        assert_eq!(a.conn.bootstrap_server.to_string(), "127.0.0.1:9092");

        let TopicCommand::Create(a) = parse(&[
            "keel",
            "topic",
            "create",
            "orders",
            "--partitions",
            "6",
            "--replication-factor",
            "3",
            "--config",
            "retention.ms=1000",
            "--config",
            "cleanup.policy=delete",
            "--bootstrap-server",
            "h1:9092,h2:9092",
        ]) else {
            panic!()
        };
        assert_eq!((a.partitions, a.replication_factor), (6, Some(3)));
        assert_eq!(
            a.configs,
            vec![
                ("retention.ms".to_string(), "1000".to_string()),
                ("cleanup.policy".to_string(), "delete".to_string())
            ]
        );
        assert_eq!(a.conn.bootstrap_server.servers().len(), 2);
    }

    #[test]
    fn rejects_bad_arguments() {
        for argv in [
            &["keel", "topic", "create"][..],
            &["keel", "topic", "create", "t", "--partitions", "0"],
            &["keel", "topic", "create", "t", "--replication-factor", "0"],
            &["keel", "topic", "create", "t", "--config", "x"],
            &["keel", "topic", "describe"],
            &["keel", "topic", "list", "--bootstrap-server", "nohost"],
            &["keel", "topic", "rename", "t"],
        ] {
            assert!(crate::Cli::try_parse_from(argv).is_err(), "{argv:?}");
        }
    }

    #[test]
    fn description_table() {
        let desc = TopicDescription {
            name: "orders".to_string(),
            partitions: vec![partition(10, -1, vec![]), partition(0, 1, vec![1, 2, 3])],
            configs: vec![("retention.ms".to_string(), "1000".to_string())],
            error: None,
        };
        let want = "\
topic orders: 2 partitions, replication factor 3
PARTITION  LEADER  REPLICAS  ISR
0          1       1,2,3     1,2,3
10         none    1,2,3
configs:
  retention.ms=1000
";
        assert_eq!(render_description(&desc), want);
    }
}
