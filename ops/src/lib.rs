//! The `keel` command: one binary to run a broker and to talk to one.
//!
//! Module map:
//! - [`cmd::broker`]: `keel broker`, runs a broker until SIGTERM or SIGINT.
//! - [`cmd::cluster`]: `keel cluster start|status|node`, a local cluster to watch and break.
//! - [`cmd::topic`]: `keel topic create|list|describe|delete`.
//! - [`cmd::produce`]: `keel produce`, lines on stdin become records.
//! - [`cmd::consume`]: `keel consume`, records become lines on stdout.
//! - [`cmd::bench`]: `keel bench produce|consume`, a load generator.
//! - [`cmd::check`]: `keel check`, compares every replica of every partition.
//! - [`args`]: argument types shared by the client-side commands.
//! - [`connect`]: reaching the bootstrap servers and explaining failures to a person.
//! - [`histogram`]: latency percentiles for `keel bench`.
//! - `table`: plain-text tables for command output.
//!
//! [`main_entry`] is the whole program; `src/main.rs` and the tests crate's
//! `keel-testbin` both just call it.

pub mod args;
pub mod cmd;
pub mod connect;
pub mod histogram;
mod table;

pub use keel_broker::alloc_guard::HugeAllocGuard;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Keel: a Kafka-compatible replicated log broker.
///
/// Start a broker with `keel broker`, then use `keel topic`, `keel produce` and
/// `keel consume` against it (they default to --bootstrap-server 127.0.0.1:9092).
/// Any Kafka client works too.
#[derive(Debug, Parser)]
#[command(name = "keel", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a broker in the foreground until SIGTERM or Ctrl-C.
    ///
    /// Settings apply in this order, later ones winning: built-in defaults, the
    /// --config file, the flags below, then each --set in the order given. Once the
    /// broker accepts connections it prints one line to stdout:
    ///
    ///   KEEL_READY node=<id> kafka=<host:port> metrics=<host:port|none>
    ///
    /// Use port 0 (e.g. --listeners 127.0.0.1:0) for an ephemeral port; the line
    /// shows the port actually bound. Logs go to stderr; set RUST_LOG (e.g.
    /// RUST_LOG=debug or RUST_LOG=keel_broker=debug) for more detail.
    Broker(cmd::broker::BrokerArgs),
    /// Run a local cluster (N brokers and a controller quorum) or show its state.
    #[command(subcommand)]
    Cluster(cmd::cluster::ClusterCommand),
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(cmd::topic::TopicCommand),
    /// List, describe, delete consumer groups and reset their offsets.
    #[command(subcommand)]
    Group(cmd::group::GroupCommand),
    /// Send lines from stdin to a topic, one record per line.
    ///
    /// A line `key<SEP>value` (SEP is a tab unless --key-separator says otherwise)
    /// becomes a record with that key; a line without SEP becomes a record with
    /// only a value. Keyed records go to the partition their key hashes to, others
    /// are spread over partitions, unless --partition picks one.
    ///
    /// Example: printf 'user1\tclicked\nhello\n' | keel produce events
    Produce(cmd::produce::ProduceArgs),
    /// Print records from a topic to stdout, one per line.
    ///
    /// Starts at the end of each partition (only new records), like
    /// kafka-console-consumer; use --from-beginning or --offset to read history.
    /// Runs until Ctrl-C, -n records, or --timeout-ms of silence.
    ///
    /// Output per record: [<partition>:<offset>TAB][<key>TAB]<value>, where the
    /// bracketed parts appear with --print-offset and --print-key; a missing key or
    /// value prints as `null`.
    Consume(cmd::consume::ConsumeArgs),
    /// Measure produce or consume throughput and latency.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// Check that every replica of every partition holds the same data.
    ///
    /// Asks every broker (not only leaders) for each replica it holds, compares the
    /// replicas' batches over what each has committed in common with the leader, and
    /// prints a line per replica with a status: SYNCED, LAGGING (behind, same history),
    /// DIVERGED (different content or epoch history), OFFLINE (its broker did not
    /// answer), LEADERLESS, MULTILEADER.
    /// Exits 0 when every partition is SYNCED or LAGGING within --max-lag, else 1.
    Check(cmd::check::CheckArgs),
}

impl Command {
    /// The log level when `RUST_LOG` is not set: a broker reports its lifecycle,
    /// the client tools stay quiet unless something is wrong.
    fn default_log_level(&self) -> &'static str {
        match self {
            Command::Broker(_) => "info",
            _ => "warn",
        }
    }
}

/// Runs the CLI from `std::env::args` and returns the process exit code.
///
/// Errors are printed as one line, `error: <what failed>: <cause>: <cause>`.
pub fn main_entry() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // Prints usage errors to stderr, and --help/--version to stdout.
            let _ = err.print();
            return ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(2));
        }
    };
    init_tracing(cli.command.default_log_level());

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("keel")
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli.command));
    // Do not wait for a blocking stdin read that will never finish.
    runtime.shutdown_timeout(Duration::from_millis(200));

    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let err = connect::explain(err);
            eprintln!("error: {}", connect::error_chain(err.chain()));
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Broker(args) => cmd::broker::run(args).await,
        Command::Cluster(command) => cmd::cluster::run(command).await,
        Command::Check(args) => cmd::check::run(args).await,
        Command::Topic(command) => cmd::topic::run(command).await,
        Command::Group(command) => cmd::group::run(command).await,
        Command::Produce(args) => cmd::produce::run(args).await,
        Command::Consume(args) => cmd::consume::run(args).await,
        Command::Bench(command) => cmd::bench::run(command).await,
    }
}

/// Logs go to stderr so stdout stays clean for data and the `KEEL_READY` line.
fn init_tracing(default_level: &str) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // try_init: a test harness calling main_entry twice must not panic.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_parses() {
        let cases: &[&[&str]] = &[
            &["keel", "broker"],
            &["keel", "topic", "list"],
            &["keel", "topic", "create", "t"],
            &["keel", "topic", "describe", "t"],
            &["keel", "topic", "delete", "t"],
            &["keel", "produce", "t"],
            &["keel", "consume", "t"],
            &["keel", "bench", "produce"],
            &["keel", "bench", "consume"],
        ];
        for argv in cases {
            assert!(Cli::try_parse_from(*argv).is_ok(), "{argv:?}");
        }
    }

    #[test]
    fn log_level_depends_on_command() {
        let broker = Cli::try_parse_from(["keel", "broker"]).unwrap();
        assert_eq!(broker.command.default_log_level(), "info");
        let list = Cli::try_parse_from(["keel", "topic", "list"]).unwrap();
        assert_eq!(list.command.default_log_level(), "warn");
    }
}
