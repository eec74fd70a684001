//! `keel produce`: each line on stdin becomes one record.

use std::io::IsTerminal as _;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::Args;
use keel_client::{ClientError, DeliveryFuture, Producer, ProducerConfig, ProducerRecord};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::sync::mpsc;

use crate::args::{parse_acks, AcksArg, CompressionArg, ConnArgs};
use crate::connect;

#[derive(Debug, Clone, Args)]
pub struct ProduceArgs {
    /// Topic to write to (must exist; see `keel topic create`).
    pub topic: String,
    /// Send every record to this partition.
    #[arg(long, value_name = "P")]
    pub partition: Option<i32>,
    /// Acknowledgement required per batch: 0 (none), 1 (leader) or all (in-sync replicas).
    #[arg(long, default_value = "all", value_name = "0|1|all", value_parser = parse_acks)]
    pub acks: AcksArg,
    /// Compression codec for record batches.
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    pub compression: CompressionArg,
    /// Send without a producer id: a retried batch may be written twice (idempotence is on
    /// by default with --acks all).
    #[arg(long)]
    pub no_idempotence: bool,
    /// Separator between key and value in a line; `\t` is read as a tab [default: TAB].
    #[arg(
        long,
        value_name = "SEP",
        default_value = "\t",
        hide_default_value = true,
        value_parser = parse_separator
    )]
    pub key_separator: String,
    #[command(flatten)]
    pub conn: ConnArgs,
}

fn parse_separator(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("the key separator must not be empty".to_string());
    }
    Ok(s.replace("\\t", "\t"))
}

/// Splits a line into key and value at the first `sep`.
pub fn split_key_value<'a>(line: &'a [u8], sep: &[u8]) -> (Option<&'a [u8]>, &'a [u8]) {
    if sep.is_empty() || sep.len() > line.len() {
        return (None, line);
    }
    match line.windows(sep.len()).position(|w| w == sep) {
        Some(at) => (Some(&line[..at]), &line[at + sep.len()..]),
        None => (None, line),
    }
}

/// Drops a trailing `\n` or `\r\n`.
pub fn strip_line_ending(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Record errors past this many are counted but not printed.
const MAX_PRINTED_ERRORS: u64 = 20;
/// Records handed to the producer but not yet confirmed, before reading pauses.
const MAX_PENDING: usize = 16 * 1024;

type Pending = (u64, Result<DeliveryFuture, ClientError>);

pub async fn run(args: ProduceArgs) -> anyhow::Result<()> {
    let admin = connect::admin(&args.conn.bootstrap_server).await?;
    let desc = connect::require_topic(&admin, &args.topic).await?;
    if let Some(p) = args.partition {
        connect::check_partition(&desc, p)?;
    }
    let producer_config = ProducerConfig {
        acks: args.acks.to_client(),
        compression: args.compression.to_client(),
        enable_idempotence: !args.no_idempotence,
        ..ProducerConfig::default()
    };
    let config = connect::client_config(&args.conn.bootstrap_server);
    let producer = Producer::new(config, producer_config)
        .await
        .context("cannot create a producer")?;

    let stdin = tokio::io::stdin();
    if std::io::stdin().is_terminal() {
        eprintln!("type one record per line (key<TAB>value or just value); Ctrl-D sends and exits");
    }
    let (tx, rx) = mpsc::channel::<Pending>(MAX_PENDING);
    let confirmations = tokio::spawn(confirm(rx));

    let sep = args.key_separator.as_bytes();
    let mut reader = BufReader::with_capacity(64 * 1024, stdin);
    let mut line = Vec::new();
    let mut line_no = 0u64;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .await
            .context("cannot read stdin")?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let (key, value) = split_key_value(strip_line_ending(&line), sep);
        let record = ProducerRecord {
            topic: args.topic.clone(),
            partition: args.partition,
            key: key.map(Bytes::copy_from_slice),
            value: Some(Bytes::copy_from_slice(value)),
            ..ProducerRecord::default()
        };
        let sent = producer.send(record).await;
        if tx.send((line_no, sent)).await.is_err() {
            break; // the confirmation task ended early; its result says why
        }
    }
    drop(tx);
    let closed = producer.close().await;
    let tally = confirmations
        .await
        .context("the delivery confirmation task failed")?;

    eprintln!("produced {} records to {}", tally.delivered, args.topic);
    if tally.failed > 0 {
        bail!(
            "{} of {} records were not produced (see the messages above)",
            tally.failed,
            tally.failed + tally.delivered
        );
    }
    // Delivery failures are counted above; this catches anything else.
    closed.context("cannot flush the producer")?;
    Ok(())
}

#[derive(Debug, Default)]
struct Tally {
    delivered: u64,
    failed: u64,
}

/// Awaits each record's delivery in send order and reports failures by line.
async fn confirm(mut rx: mpsc::Receiver<Pending>) -> Tally {
    let mut tally = Tally::default();
    while let Some((line_no, sent)) = rx.recv().await {
        let result = match sent {
            Ok(delivery) => delivery.await,
            Err(err) => Err(err),
        };
        match result {
            Ok(_metadata) => tally.delivered += 1,
            Err(err) => {
                tally.failed += 1;
                if tally.failed <= MAX_PRINTED_ERRORS {
                    let text = connect::error_chain(connect::causes(&err));
                    eprintln!("line {line_no}: not produced: {text}");
                }
                if tally.failed == MAX_PRINTED_ERRORS + 1 {
                    eprintln!("(further record errors are counted but not shown)");
                }
            }
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn key_value_splitting() {
        type Case = (
            &'static [u8],
            &'static [u8],
            Option<&'static [u8]>,
            &'static [u8],
        );
        let cases: &[Case] = &[
            (b"k\tv", b"\t", Some(b"k"), b"v"),
            (b"value only", b"\t", None, b"value only"),
            (b"k\tv\tw", b"\t", Some(b"k"), b"v\tw"),
            (b"\tv", b"\t", Some(b""), b"v"),
            (b"k\t", b"\t", Some(b"k"), b""),
            (b"", b"\t", None, b""),
            (b"a::b", b"::", Some(b"a"), b"b"),
            (b"a:b", b"::", None, b"a:b"),
            (b":", b"::", None, b":"),
            (b"k=v", b"", None, b"k=v"),
            (b"\xff\xfe\tbin", b"\t", Some(b"\xff\xfe"), b"bin"),
        ];
        for (line, sep, key, value) in cases {
            assert_eq!(
                split_key_value(line, sep),
                (*key, *value),
                "{line:?} / {sep:?}"
            );
        }
    }

    #[test]
    fn line_endings() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"a\n", b"a"),
            (b"a\r\n", b"a"),
            (b"a", b"a"),
            (b"\n", b""),
            (b"a\r", b"a"),
            (b"a\n\n", b"a\n"),
        ];
        for (line, want) in cases {
            assert_eq!(strip_line_ending(line), *want, "{line:?}");
        }
    }

    fn parse(argv: &[&str]) -> ProduceArgs {
        match crate::Cli::try_parse_from(argv).unwrap().command {
            crate::Command::Produce(a) => a,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn argument_defaults_and_flags() {
        let a = parse(&["keel", "produce", "t"]);
        assert_eq!(a.topic, "t");
        assert_eq!(a.partition, None);
        assert_eq!(a.acks, AcksArg::All);
        assert_eq!(a.compression, CompressionArg::None);
        assert_eq!(a.key_separator, "\t");

        let a = parse(&[
            "keel",
            "produce",
            "t",
            "--partition",
            "2",
            "--acks",
            "1",
            "--compression",
            "zstd",
            "--key-separator",
            ":",
        ]);
        assert_eq!(a.partition, Some(2));
        assert_eq!(a.acks, AcksArg::Leader);
        assert_eq!(a.compression, CompressionArg::Zstd);
        assert_eq!(a.key_separator, ":");

        let a = parse(&["keel", "produce", "t", "--key-separator", "\\t"]);
        assert_eq!(a.key_separator, "\t");
    }

    #[test]
    fn rejects_bad_arguments() {
        for argv in [
            &["keel", "produce"][..],
            &["keel", "produce", "t", "--acks", "2"],
            &["keel", "produce", "t", "--compression", "brotli"],
            &["keel", "produce", "t", "--key-separator", ""],
            &["keel", "produce", "t", "--partition", "x"],
        ] {
            assert!(crate::Cli::try_parse_from(argv).is_err(), "{argv:?}");
        }
    }
}
