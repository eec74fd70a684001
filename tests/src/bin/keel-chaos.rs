//! `keel-chaos`: a seeded fault-injection run against a local cluster (see
//! `keel_tests::chaos`). Prints the seed, the fault schedule and the checker's verdict;
//! exits 1 when any check fails. Replay a failure with the same `--seed` and `--cycles`.
//! `KEEL_CHAOS_LOG=keel_client=warn` shows what the workload's clients saw.
//!
//! ```text
//! cargo run -p keel-tests --bin keel-chaos -- --seed 7 --cycles 20 --nemesis kill,pause
//! ```

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use keel_tests::chaos::nemesis::{parse_nemeses, Nemesis, Timing};
use keel_tests::chaos::{self, ChaosOpts};

#[derive(Debug, Parser)]
#[command(
    name = "keel-chaos",
    about = "Fault-injection run against a local Keel cluster"
)]
struct Args {
    /// Seed of the fault schedule; the same seed and cycles replay the same faults.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Fault cycles (inject, hold, heal, settle).
    #[arg(long, default_value_t = 20)]
    cycles: usize,
    /// Runs seeds seed, seed+1, … this many times, one cluster each.
    #[arg(long, default_value_t = 1)]
    runs: u64,
    /// Faults to draw from, comma-separated: kill,pause,partition,corrupt,powerloss,majority.
    #[arg(long, default_value = "kill,pause,partition,corrupt,powerloss,majority", value_parser = parse_nemeses)]
    nemesis: std::vec::Vec<Nemesis>,
    /// Partitions of the chaos topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Producers (acks=all), each writing unique values.
    #[arg(long, default_value_t = 2)]
    producers: usize,
    /// Records per second per producer.
    #[arg(long, default_value_t = 400)]
    rate: u32,
    /// Longest hold of a fault, in ms (the shortest is a fifth of it).
    #[arg(long, default_value_t = 2500)]
    max_hold_ms: u64,
    /// Stop injecting after this many seconds per run (the checks still run).
    #[arg(long, default_value_t = 3600)]
    max_seconds: u64,
    /// Print only the summary line and, on failure, the full report.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The workload's clients log to stderr under KEEL_CHAOS_LOG (e.g. `keel_client=warn`);
    // RUST_LOG is left to the brokers the run starts.
    if let Ok(filter) = std::env::var("KEEL_CHAOS_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let mut failed = Vec::new();
    for seed in args.seed..args.seed + args.runs.max(1) {
        let mut opts = ChaosOpts {
            seed,
            cycles: args.cycles,
            nemeses: args.nemesis.clone(),
            timing: Timing {
                hold_ms: (args.max_hold_ms / 5, args.max_hold_ms),
                ..Timing::default()
            },
            max_duration: Duration::from_secs(args.max_seconds),
            verbose: !args.quiet,
            ..ChaosOpts::default()
        };
        opts.workload.partitions = args.partitions;
        opts.workload.producers = args.producers;
        opts.workload.rate = args.rate;
        let names: Vec<_> = opts.nemeses.iter().map(|n| n.name()).collect();
        eprintln!(
            "keel-chaos: seed {seed}, {} cycles, nemeses {}",
            opts.cycles,
            names.join(",")
        );
        let report = chaos::run(&opts);
        if !args.quiet || !report.ok() {
            println!("{report}");
        }
        println!("{}", chaos::summary(&report));
        if !report.ok() {
            failed.push(seed);
        }
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("keel-chaos: FAILED seeds {failed:?}");
        ExitCode::FAILURE
    }
}
