//! `keel cluster start|status|node`: a local cluster on 127.0.0.1 — N brokers and a quorum of
//! controller voters (on brokers 1..=V, or as controller-only nodes), each a `keel broker`
//! child process of this executable — a view of it, and the means to break it.
//!
//! - [`plan`]: ports, data dirs and `keel broker` arguments of every node (pure).
//! - [`ready`]: the `KEEL_READY` line a node prints once it serves.
//! - [`start`]: `keel cluster start` — spawn the nodes, wait until every broker is
//!   registered, supervise them (a node that exits is reported and left down) until
//!   Ctrl-C or SIGTERM, stop the children by pid.
//! - [`control`]: how `keel cluster node stop|kill|pause|resume|start N` reaches `start`.
//! - [`file`]: `<dir>/cluster.json`, what `start` tells `status` about the nodes.
//! - [`status`]: `keel cluster status` — brokers, partitions, leaders, ISRs, LEO/HW.
//! - [`metrics`]: `GET /metrics`, a Prometheus text reader and the partition gauges in it.

pub mod control;
pub mod file;
pub mod metrics;
pub mod plan;
pub mod quorum;
pub mod ready;
pub mod start;
pub mod status;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::args::{parse_bootstrap, parse_key_value, Bootstrap};

pub use file::{ClusterFile, NodeEntry, NodeState};
pub use metrics::{
    parse_exposition, partition_offsets, scrape_metrics, PartitionOffsets, ReplicaOffsets, Sample,
};
pub use plan::{layout, node_args, voters, NodePlan, Role};
pub use ready::ReadyLine;

const DEFAULT_DATA_DIR: &str = "./keel-cluster";
/// Below the broker ports, so no `--brokers N` makes them collide.
const DEFAULT_CONTROLLER_PORT: u16 = 9091;
const DEFAULT_BASE_PORT: u16 = 9092;
const DEFAULT_METRICS_BASE_PORT: u16 = 9644;
/// One metadata poll or one `/metrics` scrape.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Subcommand)]
pub enum ClusterCommand {
    /// Start N brokers and a controller quorum on 127.0.0.1; run them until Ctrl-C or SIGTERM.
    ///
    /// Broker i (1..=N) listens on --base-port + i - 1 with metrics on
    /// --metrics-base-port + i. Voter j (1..=V, V from --controllers) is broker j, or with
    /// --dedicated-controllers the controller-only node 1000 + j; its controller listener
    /// is --controller-port - (j - 1). Each node keeps its data in DIR/node-<id> and its
    /// log (stderr) in DIR/node-<id>.log.
    Start(StartArgs),
    /// Show brokers, partitions (leader, replicas, ISR) and, for a cluster started
    /// with `keel cluster start`, each replica's log end offset and high watermark.
    Status(StatusArgs),
    /// Print a Prometheus configuration that scrapes every node of a cluster started
    /// with `keel cluster start` (save it as prometheus.yml, next to ops/alerts.yml).
    PrometheusConfig(DirArgs),
    /// Stop, kill, pause, resume or start again one node of a running `keel cluster
    /// start`, from another terminal: watch a leader fail over, a follower fall out of the
    /// ISR and rejoin. The other nodes keep running.
    #[command(subcommand)]
    Node(NodeCommand),
}

#[derive(Debug, Clone, Subcommand)]
pub enum NodeCommand {
    /// SIGTERM: a clean shutdown (its leaderships move first); waits until it exited.
    Stop(NodeTarget),
    /// SIGKILL: the process dies at once, as in a crash.
    Kill(NodeTarget),
    /// SIGSTOP: the process freezes (its sessions and fetches time out).
    Pause(NodeTarget),
    /// SIGCONT: a paused node runs again.
    Resume(NodeTarget),
    /// Start a stopped or killed node again, with the same ports and data dir.
    Start(NodeTarget),
}

#[derive(Debug, Clone, Args)]
pub struct NodeTarget {
    /// The node id (`keel cluster status` lists them).
    pub node: i32,
    /// The `keel cluster start` directory.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

/// How long `keel cluster node` waits for the supervisor's answer (a start waits for the
/// node's ready line, a stop for its clean shutdown).
const NODE_COMMAND_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, Args)]
pub struct DirArgs {
    /// The `keel cluster start` directory.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct StartArgs {
    /// Number of brokers (node ids 1..=N).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub brokers: u16,
    /// Directory for every node's data and log.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Controller voters: 1, 3 or 5 [default: 3 with 3 or more brokers, else 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=9))]
    pub controllers: Option<u16>,
    /// Run the voters as controller-only nodes 1001..=1000+N instead of on brokers 1..=N.
    #[arg(long)]
    pub dedicated_controllers: bool,
    /// Port of the first voter's controller listener; voter j gets PORT - (j - 1).
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_CONTROLLER_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub controller_port: u16,
    /// Kafka port of broker 1; broker i gets PORT + i - 1.
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_BASE_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub base_port: u16,
    /// Metrics port of dedicated controller 1 (controller j gets PORT - (j - 1)); broker i
    /// gets PORT + i.
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_METRICS_BASE_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub metrics_base_port: u16,
    /// A setting for every node, e.g. --set log.segment.bytes=268435456 (repeatable).
    /// The cluster starts with default.replication.factor = min(3, N) and
    /// min.insync.replicas = min(2, N); --set overrides them.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub set: Vec<(String, String)>,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Brokers to ask [default: the brokers in DIR/cluster.json, else 127.0.0.1:9092].
    #[arg(long = "bootstrap-server", value_name = "HOST:PORT[,HOST:PORT...]",
          value_parser = parse_bootstrap)]
    pub bootstrap_server: Option<Bootstrap>,
    /// The `keel cluster start` directory whose cluster.json lists the nodes' metrics.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

pub async fn run(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Start(args) => start::run(args).await,
        ClusterCommand::Status(args) => status::run(args).await,
        ClusterCommand::Node(command) => {
            use control::{Action, Request};
            let (action, target) = match command {
                NodeCommand::Stop(t) => (Action::Stop, t),
                NodeCommand::Kill(t) => (Action::Kill, t),
                NodeCommand::Pause(t) => (Action::Pause, t),
                NodeCommand::Resume(t) => (Action::Resume, t),
                NodeCommand::Start(t) => (Action::Start, t),
            };
            let request = Request {
                action,
                node: target.node,
            };
            let answer = tokio::task::spawn_blocking(move || {
                control::send(&target.data_dir, request, NODE_COMMAND_TIMEOUT)
            })
            .await??;
            println!("{answer}");
            Ok(())
        }
        ClusterCommand::PrometheusConfig(args) => {
            let path = args.data_dir.join(file::FILE_NAME);
            let Some(f) = file::ClusterFile::read(&path)? else {
                anyhow::bail!(
                    "no cluster at {} — start one with `keel cluster start --data-dir {}`",
                    path.display(),
                    args.data_dir.display()
                );
            };
            print!("{}", f.prometheus_config());
            Ok(())
        }
    }
}

/// `keel cluster <words>` parsed, for the tests of every submodule.
#[cfg(test)]
fn parse_words(words: &str) -> Result<ClusterCommand, clap::Error> {
    use clap::Parser as _;
    let argv = ["keel", "cluster"]
        .into_iter()
        .chain(words.split_whitespace());
    match crate::Cli::try_parse_from(argv)?.command {
        crate::Command::Cluster(c) => Ok(c),
        other => panic!("parsed as {other:?}"),
    }
}

/// `keel cluster start <flags>` parsed.
#[cfg(test)]
fn start_args(flags: &str) -> StartArgs {
    match parse_words(&format!("start {flags}")).unwrap() {
        ClusterCommand::Start(a) => a,
        other => panic!("parsed as {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_flags_and_defaults() {
        let a = start_args("");
        let ports = |a: &StartArgs| (a.controller_port, a.base_port, a.metrics_base_port);
        assert_eq!((a.brokers, ports(&a)), (3, (9091, 9092, 9644)));
        assert_eq!(a.data_dir, PathBuf::from("./keel-cluster"));
        assert!(a.set.is_empty());

        let a = start_args(
            "--brokers 5 --data-dir /tmp/c --controller-port 19093 --base-port 19092 \
             --metrics-base-port 19644 --set min.insync.replicas=2 --set a=b=c",
        );
        assert_eq!((a.brokers, ports(&a)), (5, (19093, 19092, 19644)));
        assert_eq!(a.data_dir, PathBuf::from("/tmp/c"));
        let set: Vec<(&str, &str)> = a.set.iter().map(|(k, v)| (&**k, &**v)).collect();
        assert_eq!(set, [("min.insync.replicas", "2"), ("a", "b=c")]);
    }

    #[test]
    fn status_flags() {
        let Ok(ClusterCommand::Status(s)) = parse_words("status") else {
            panic!("not status")
        };
        assert!(s.bootstrap_server.is_none());
        assert_eq!(s.data_dir, PathBuf::from("./keel-cluster"));
        let words = "status --bootstrap-server 127.0.0.1:1,127.0.0.1:2 --data-dir d";
        let Ok(ClusterCommand::Status(s)) = parse_words(words) else {
            panic!("not status")
        };
        let servers = s.bootstrap_server.unwrap();
        assert_eq!(servers.servers(), ["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(s.data_dir, PathBuf::from("d"));
    }

    #[test]
    fn node_commands() {
        let Ok(ClusterCommand::Node(NodeCommand::Kill(t))) = parse_words("node kill 2") else {
            panic!("not node kill")
        };
        assert_eq!((t.node, t.data_dir), (2, PathBuf::from("./keel-cluster")));
        let Ok(ClusterCommand::Node(NodeCommand::Start(t))) =
            parse_words("node start 0 --data-dir d")
        else {
            panic!("not node start")
        };
        assert_eq!((t.node, t.data_dir), (0, PathBuf::from("d")));
        for words in ["node stop 1", "node pause 1", "node resume 1"] {
            assert!(parse_words(words).is_ok(), "{words}");
        }
    }

    #[test]
    fn bad_flags_are_rejected() {
        for words in [
            "",
            "stop",
            "start --brokers 0",
            "start --brokers 101",
            "start --brokers x",
            "start --base-port 0",
            "start --controller-port 70000",
            "start --metrics-base-port -1",
            "start --set novalue",
            "start --bootstrap-server 127.0.0.1:1",
            "status --bootstrap-server a",
            "status --brokers 3",
            "node",
            "node kill",
            "node kill x",
            "node explode 1",
            "node kill 1 2",
        ] {
            assert!(parse_words(words).is_err(), "{words:?}");
        }
    }
}
