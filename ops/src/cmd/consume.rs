//! `keel consume`: print records from a topic, one per line.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use keel_client::{Consumer, ConsumerConfig, ConsumerRecord, GroupConfig, Offset};

use crate::args::ConnArgs;
use crate::connect;

#[derive(Debug, Clone, Args)]
pub struct ConsumeArgs {
    /// Topic to read.
    pub topic: String,
    /// Start at the oldest record still stored (with --group: where the group has no
    /// committed offset).
    #[arg(long, conflicts_with = "offset")]
    pub from_beginning: bool,
    /// Start at this offset (in each partition read; usually with --partition).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(0..))]
    pub offset: Option<i64>,
    /// Read only this partition [default: all partitions].
    #[arg(long, value_name = "P")]
    pub partition: Option<i32>,
    /// Read as a member of this consumer group: the group shares the partitions among its
    /// members, each starts at the group's committed offset, and what is printed is
    /// committed (every second and at exit).
    #[arg(long, value_name = "G", conflicts_with_all = ["offset", "partition"])]
    pub group: Option<String>,
    /// Exit after this many records.
    #[arg(short = 'n', long = "max-messages", value_name = "N")]
    pub max_messages: Option<u64>,
    /// Print the key before the value, separated by a tab.
    #[arg(long)]
    pub print_key: bool,
    /// Print partition:offset before each record, separated by a tab.
    #[arg(long)]
    pub print_offset: bool,
    /// Exit when no record arrives for this many milliseconds.
    #[arg(long, value_name = "T")]
    pub timeout_ms: Option<u64>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

impl ConsumeArgs {
    fn start(&self) -> Offset {
        match (self.from_beginning, self.offset) {
            (_, Some(n)) => Offset::At(n),
            (true, None) => Offset::Earliest,
            (false, None) => Offset::Latest,
        }
    }
}

pub async fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    let admin = connect::admin(&args.conn.bootstrap_server).await?;
    let desc = connect::require_topic(&admin, &args.topic).await?;
    let config = connect::client_config(&args.conn.bootstrap_server);
    let mut consumer = Consumer::new(config, ConsumerConfig::default())
        .await
        .context("cannot create a consumer")?;
    match (&args.group, args.partition) {
        (Some(group), _) => {
            let mut g = GroupConfig::new(group.clone());
            g.auto_commit = false;
            g.auto_offset_reset = if args.from_beginning {
                Offset::Earliest
            } else {
                Offset::Latest
            };
            consumer.subscribe(&[&args.topic], g).await
        }
        (None, Some(p)) => {
            connect::check_partition(&desc, p)?;
            consumer.assign(&args.topic, &[p], args.start()).await
        }
        (None, None) => consumer
            .assign_all(&args.topic, args.start())
            .await
            .map(drop),
    }
    .with_context(|| format!("cannot read topic '{}'", args.topic))?;
    // With a group: the next offset after each printed record, committed now and then.
    let mut printed_upto: BTreeMap<i32, i64> = BTreeMap::new();
    let mut last_commit = Instant::now();

    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let idle_limit = args.timeout_ms.map(Duration::from_millis);
    let mut last_record = Instant::now();
    let mut printed = 0u64;
    let mut line = Vec::new();
    let stdout = io::stdout();

    while args.max_messages.is_none_or(|max| printed < max) {
        let wait = match idle_limit {
            Some(limit) => match limit.checked_sub(last_record.elapsed()) {
                Some(left) if !left.is_zero() => left,
                _ => break,
            },
            None => Duration::MAX,
        };
        let records = tokio::select! {
            _ = &mut ctrl_c => break,
            polled = tokio::time::timeout(wait, consumer.poll()) => match polled {
                Ok(result) => result.with_context(|| format!("cannot read topic '{}'", args.topic))?,
                Err(_idle) => break,
            },
        };
        if records.is_empty() {
            continue;
        }
        last_record = Instant::now();
        let mut out = stdout.lock();
        for record in &records {
            if args.max_messages.is_some_and(|max| printed >= max) {
                break;
            }
            line.clear();
            format_record(&mut line, record, args.print_key, args.print_offset);
            printed += 1;
            if let Err(err) = out.write_all(&line) {
                return stdout_closed(err);
            }
            printed_upto.insert(record.partition, record.offset + 1);
        }
        if let Err(err) = out.flush() {
            return stdout_closed(err);
        }
        drop(out);
        if args.group.is_some() && last_commit.elapsed() >= Duration::from_secs(1) {
            commit_printed(&mut consumer, &args.topic, &printed_upto).await;
            last_commit = Instant::now();
        }
    }
    if args.group.is_some() {
        commit_printed(&mut consumer, &args.topic, &printed_upto).await;
        consumer.close().await.context("cannot leave the group")?;
    }
    Ok(())
}

/// Commits what was printed; a failure (e.g. a rebalance took the partition) only warns:
/// the next member re-reads from the last commit.
async fn commit_printed(consumer: &mut Consumer, topic: &str, upto: &BTreeMap<i32, i64>) {
    let offsets: Vec<(String, i32, i64)> = upto
        .iter()
        .map(|(p, o)| (topic.to_string(), *p, *o))
        .collect();
    if let Err(e) = consumer.commit_offsets(&offsets).await {
        tracing::warn!(error = %e, "commit failed");
    }
}

/// A closed pipe (`keel consume t | head`) is a normal way to stop reading.
fn stdout_closed(err: io::Error) -> anyhow::Result<()> {
    if err.kind() == io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(err).context("cannot write to stdout")
    }
}

/// Appends one output line for `record`, newline included.
pub fn format_record(out: &mut Vec<u8>, record: &ConsumerRecord, key: bool, offset: bool) {
    if offset {
        out.extend_from_slice(format!("{}:{}\t", record.partition, record.offset).as_bytes());
    }
    if key {
        out.extend_from_slice(record.key.as_deref().unwrap_or(b"null"));
        out.push(b'\t');
    }
    out.extend_from_slice(record.value.as_deref().unwrap_or(b"null"));
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use clap::Parser;

    fn parse(argv: &[&str]) -> ConsumeArgs {
        match crate::Cli::try_parse_from(argv).unwrap().command {
            crate::Command::Consume(a) => a,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn start_position() {
        let cases: &[(&[&str], &str)] = &[
            (&["keel", "consume", "t"], "Latest"),
            (&["keel", "consume", "t", "--from-beginning"], "Earliest"),
            (&["keel", "consume", "t", "--offset", "42"], "At(42)"),
            (
                &["keel", "consume", "t", "--offset", "0", "--partition", "3"],
                "At(0)",
            ),
        ];
        for (argv, want) in cases {
            assert_eq!(format!("{:?}", parse(argv).start()), *want, "{argv:?}");
        }
    }

    #[test]
    fn flags() {
        let a = parse(&[
            "keel",
            "consume",
            "t",
            "-n",
            "10",
            "--print-key",
            "--print-offset",
            "--timeout-ms",
            "500",
            "--partition",
            "1",
        ]);
        assert_eq!(a.max_messages, Some(10));
        assert!(a.print_key && a.print_offset);
        assert_eq!(a.timeout_ms, Some(500));
        assert_eq!(a.partition, Some(1));
        let a = parse(&["keel", "consume", "t", "--max-messages", "3"]);
        assert_eq!(a.max_messages, Some(3));
    }

    #[test]
    fn rejects_bad_arguments() {
        for argv in [
            &["keel", "consume"][..],
            &["keel", "consume", "t", "--from-beginning", "--offset", "1"],
            &["keel", "consume", "t", "--offset", "-1"],
            &["keel", "consume", "t", "-n", "x"],
        ] {
            assert!(crate::Cli::try_parse_from(argv).is_err(), "{argv:?}");
        }
    }

    #[test]
    fn record_lines() {
        let record = |key: Option<&'static str>, value: Option<&'static str>| ConsumerRecord {
            topic: "t".to_string(),
            partition: 2,
            offset: 17,
            timestamp: 0,
            key: key.map(|k| Bytes::from_static(k.as_bytes())),
            value: value.map(|v| Bytes::from_static(v.as_bytes())),
            headers: Vec::new(),
        };
        let cases = [
            (record(None, Some("v")), false, false, "v\n"),
            (record(Some("k"), Some("v")), false, false, "v\n"),
            (record(Some("k"), Some("v")), true, false, "k\tv\n"),
            (record(None, Some("v")), true, false, "null\tv\n"),
            (record(Some("k"), None), true, false, "k\tnull\n"),
            (record(Some("k"), Some("v")), true, true, "2:17\tk\tv\n"),
            (record(None, Some("")), false, true, "2:17\t\n"),
        ];
        for (rec, key, offset, want) in cases {
            let mut out = Vec::new();
            format_record(&mut out, &rec, key, offset);
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }
}
