//! One module per `keel` subcommand; each has its clap arguments and a `run`.

pub mod bench;
pub mod bench_group;
pub mod bench_quorum;
pub mod broker;
pub mod check;
pub mod cluster;
pub mod consume;
pub mod group;
pub mod produce;
pub mod topic;
