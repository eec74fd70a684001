//! Where each node of `keel cluster start` listens and keeps its data, and the
//! `keel broker` arguments that say so. Pure: tested without processes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{anyhow, bail};
use serde::{Deserialize, Serialize};

use super::StartArgs;

const HOST: [u8; 4] = [127, 0, 0, 1];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A controller voter only.
    Controller,
    Broker,
    /// A broker that is also a controller voter.
    Combined,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Controller => "controller",
            Role::Broker => "broker",
            Role::Combined => "broker,controller",
        }
    }

    pub fn is_broker(self) -> bool {
        self != Role::Controller
    }

    pub fn is_controller(self) -> bool {
        self != Role::Broker
    }
}

/// One node as `start` plans it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    pub id: i32,
    pub role: Role,
    /// The Kafka listener; brokers only.
    pub kafka: Option<SocketAddr>,
    /// The controller listener; voters only.
    pub controller: Option<SocketAddr>,
    pub metrics: SocketAddr,
    pub data_dir: PathBuf,
    pub log_file: PathBuf,
}

/// Node id of dedicated controller `j` (1-based).
pub const DEDICATED_CONTROLLER_IDS: i32 = 1000;

/// How many voters a cluster of `brokers` gets unless `--controllers` says: 3 once there
/// are 3 nodes, else 1.
pub fn default_controllers(brokers: u16) -> u16 {
    if brokers >= 3 {
        3
    } else {
        1
    }
}

/// Brokers 1..=N; the first C of them are also controller voters (or, with
/// `--dedicated-controllers`, C controller-only nodes 1001..=1000+C). Voter `j` listens on
/// `--controller-port` − (j − 1); ports must all differ.
pub fn layout(args: &StartArgs) -> anyhow::Result<Vec<NodePlan>> {
    let controllers = args
        .controllers
        .unwrap_or_else(|| default_controllers(args.brokers));
    if controllers.is_multiple_of(2) {
        bail!(
            "--controllers {controllers}: a quorum of an even number of voters survives no more \
             failures than one voter fewer; choose 1, 3 or 5"
        );
    }
    if !args.dedicated_controllers && controllers > args.brokers {
        bail!(
            "--controllers {controllers} needs as many brokers (they are combined nodes), or \
             --dedicated-controllers"
        );
    }
    let port = |base: u16, offset: u16, what: &str| {
        base.checked_add(offset)
            .ok_or_else(|| anyhow!("{what} port {base} + {offset} is above 65535"))
    };
    let controller_port = |j: u16| {
        args.controller_port
            .checked_sub(j - 1)
            .filter(|p| *p > 0)
            .map(|p| SocketAddr::from((HOST, p)))
            .ok_or_else(|| {
                anyhow!(
                    "--controller-port {} - {} is below 1",
                    args.controller_port,
                    j - 1
                )
            })
    };
    let node = |id: i32, role, kafka, controller, metrics| NodePlan {
        id,
        role,
        kafka,
        controller,
        metrics: SocketAddr::from((HOST, metrics)),
        data_dir: args.data_dir.join(format!("node-{id}")),
        log_file: args.data_dir.join(format!("node-{id}.log")),
    };
    let mut plan = Vec::new();
    if args.dedicated_controllers {
        for j in 1..=controllers {
            let metrics = args
                .metrics_base_port
                .checked_sub(j - 1)
                .filter(|p| *p > 0)
                .ok_or_else(|| {
                    anyhow!("--metrics-base-port is too low for {controllers} controllers")
                })?;
            plan.push(node(
                DEDICATED_CONTROLLER_IDS + i32::from(j),
                Role::Controller,
                None,
                Some(controller_port(j)?),
                metrics,
            ));
        }
    }
    for i in 1..=args.brokers {
        let kafka = port(args.base_port, i - 1, "--base-port")?;
        let metrics = port(args.metrics_base_port, i, "--metrics-base-port")?;
        let voter = !args.dedicated_controllers && i <= controllers;
        plan.push(node(
            i32::from(i),
            if voter { Role::Combined } else { Role::Broker },
            Some(SocketAddr::from((HOST, kafka))),
            if voter {
                Some(controller_port(i)?)
            } else {
                None
            },
            metrics,
        ));
    }
    let mut owners: HashMap<u16, String> = HashMap::new();
    for n in &plan {
        let ports = [
            (n.kafka, "kafka listener"),
            (n.controller, "controller listener"),
            (Some(n.metrics), "metrics listener"),
        ];
        for (addr, what) in ports {
            let Some(addr) = addr else { continue };
            let owner = format!("node {}'s {what}", n.id);
            if let Some(first) = owners.insert(addr.port(), owner.clone()) {
                bail!(
                    "port {} would serve both {first} and {owner}; \
                     choose other --controller-port, --base-port or --metrics-base-port",
                    addr.port()
                );
            }
        }
    }
    Ok(plan)
}

/// `controller.quorum.voters` of the planned cluster.
pub fn voters(plan: &[NodePlan]) -> String {
    plan.iter()
        .filter_map(|n| Some(format!("{}@{}", n.id, n.controller?)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Settings a local cluster starts with unless `--set` says otherwise: topics replicated
/// to three brokers (or all, if fewer) and acks=all needing two of them, so the cluster
/// shows replication out of the box. Kafka's own defaults (1 and 1) suit a single broker.
pub fn cluster_defaults(brokers: usize) -> Vec<(String, String)> {
    vec![
        (
            "default.replication.factor".into(),
            brokers.clamp(1, 3).to_string(),
        ),
        (
            "min.insync.replicas".into(),
            brokers.clamp(1, 2).to_string(),
        ),
    ]
}

/// The `keel broker ...` arguments of one node: [`cluster_defaults`], then the user's
/// `--set`s, then the layout's own properties (later ones win).
pub fn node_args(node: &NodePlan, voters: &str, settings: &[(String, String)]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "broker".into(),
        "--node-id".into(),
        node.id.to_string(),
        "--data-dir".into(),
        node.data_dir.to_string_lossy().into_owned(),
        "--metrics-listener".into(),
        node.metrics.to_string(),
        // A controller-only node has no Kafka listener; an ephemeral port keeps the
        // CLI's default (127.0.0.1:9092) from clashing with broker 1 if it opens one.
        "--listeners".into(),
        node.kafka
            .map_or_else(|| "127.0.0.1:0".to_string(), |a| a.to_string()),
    ];
    let mut props: Vec<(String, String)> = settings.to_vec();
    props.push(("process.roles".into(), node.role.as_str().into()));
    if let Some(listener) = node.controller {
        props.push(("controller.listener".into(), listener.to_string()));
    }
    props.push(("controller.quorum.voters".into(), voters.to_string()));
    for (k, v) in props {
        args.push("--set".into());
        args.push(format!("{k}={v}"));
    }
    args
}

#[cfg(test)]
mod tests {
    use super::super::start_args;
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_layout() {
        let plan = layout(&start_args("--data-dir c")).unwrap();
        let got: Vec<_> = plan
            .iter()
            .map(|n| (n.id, n.role, n.kafka, n.controller, n.metrics))
            .collect();
        let a = |s| Some(addr(s));
        assert_eq!(
            got,
            [
                (
                    1,
                    Role::Combined,
                    a("127.0.0.1:9092"),
                    a("127.0.0.1:9091"),
                    addr("127.0.0.1:9645")
                ),
                (
                    2,
                    Role::Combined,
                    a("127.0.0.1:9093"),
                    a("127.0.0.1:9090"),
                    addr("127.0.0.1:9646")
                ),
                (
                    3,
                    Role::Combined,
                    a("127.0.0.1:9094"),
                    a("127.0.0.1:9089"),
                    addr("127.0.0.1:9647")
                ),
            ]
        );
        assert_eq!(plan[1].data_dir, PathBuf::from("c/node-2"));
        assert_eq!(plan[1].log_file, PathBuf::from("c/node-2.log"));
        assert_eq!(
            voters(&plan),
            "1@127.0.0.1:9091,2@127.0.0.1:9090,3@127.0.0.1:9089"
        );
        // Fewer than 3 nodes: one voter.
        let two = layout(&start_args("--brokers 2")).unwrap();
        let roles: Vec<_> = two.iter().map(|n| n.role).collect();
        assert_eq!(roles, [Role::Combined, Role::Broker]);
        // Five brokers, five voters.
        let five = layout(&start_args("--brokers 5 --controllers 5")).unwrap();
        assert!(five.iter().all(|n| n.role == Role::Combined));
    }

    #[test]
    fn dedicated_controllers() {
        let plan = layout(&start_args(
            "--brokers 2 --controllers 3 --dedicated-controllers",
        ))
        .unwrap();
        let got: Vec<_> = plan
            .iter()
            .map(|n| {
                (
                    n.id,
                    n.role,
                    n.controller.map(|a| a.port()),
                    n.metrics.port(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (1001, Role::Controller, Some(9091), 9644),
                (1002, Role::Controller, Some(9090), 9643),
                (1003, Role::Controller, Some(9089), 9642),
                (1, Role::Broker, None, 9645),
                (2, Role::Broker, None, 9646),
            ]
        );
    }

    #[test]
    fn moved_ports() {
        let flags =
            "--brokers 2 --controller-port 20000 --base-port 19000 --metrics-base-port 9000";
        let plan = layout(&start_args(flags)).unwrap();
        let ports: Vec<_> = plan
            .iter()
            .map(|n| {
                (
                    n.kafka.unwrap().port(),
                    n.controller.map(|a| a.port()),
                    n.metrics.port(),
                )
            })
            .collect();
        assert_eq!(ports, [(19000, Some(20000), 9001), (19001, None, 9002)]);
    }

    #[test]
    fn bad_layouts_are_refused() {
        let cases = [
            (
                "--controller-port 9093",
                "port 9093 would serve both node 1's controller listener and node 2's kafka \
                 listener; choose other --controller-port, --base-port or --metrics-base-port",
            ),
            (
                "--metrics-base-port 9088",
                "port 9090 would serve both node 2's controller listener and node 2's metrics",
            ),
            (
                "--brokers 2 --base-port 65535",
                "--base-port port 65535 + 1 is above 65535",
            ),
            (
                "--metrics-base-port 65535",
                "--metrics-base-port port 65535 + 1 is above 65535",
            ),
            (
                "--controllers 2",
                "--controllers 2: a quorum of an even number",
            ),
            (
                "--brokers 3 --controllers 5",
                "--controllers 5 needs as many brokers",
            ),
            ("--controller-port 2", "--controller-port 2 - 2 is below 1"),
        ];
        for (flags, want) in cases {
            let err = layout(&start_args(flags)).unwrap_err().to_string();
            assert!(err.starts_with(want), "{flags}: {err}");
        }
        assert!(layout(&start_args("--brokers 2 --base-port 65534")).is_ok());
    }

    #[test]
    fn replicated_defaults_fit_the_broker_count() {
        let get = |n| {
            cluster_defaults(n)
                .into_iter()
                .map(|(_, v)| v)
                .collect::<Vec<_>>()
        };
        assert_eq!(get(1), ["1", "1"]);
        assert_eq!(get(2), ["2", "2"]);
        assert_eq!(get(3), ["3", "2"]);
        assert_eq!(get(5), ["3", "2"]);
    }

    #[test]
    fn node_arguments() {
        let args = start_args("--brokers 2 --data-dir c --set min.insync.replicas=2");
        let plan = layout(&args).unwrap();
        let voters = voters(&plan);
        assert_eq!(
            node_args(&plan[0], &voters, &args.set).join(" "),
            "broker --node-id 1 --data-dir c/node-1 --metrics-listener 127.0.0.1:9645 \
             --listeners 127.0.0.1:9092 --set min.insync.replicas=2 \
             --set process.roles=broker,controller --set controller.listener=127.0.0.1:9091 \
             --set controller.quorum.voters=1@127.0.0.1:9091"
        );
        assert_eq!(
            node_args(&plan[1], &voters, &args.set).join(" "),
            "broker --node-id 2 --data-dir c/node-2 --metrics-listener 127.0.0.1:9646 \
             --listeners 127.0.0.1:9093 --set min.insync.replicas=2 \
             --set process.roles=broker --set controller.quorum.voters=1@127.0.0.1:9091"
        );
        // `keel broker` accepts what we pass.
        for node in &plan {
            let argv = ["keel".to_string()]
                .into_iter()
                .chain(node_args(node, &voters, &args.set));
            use clap::Parser as _;
            assert!(crate::Cli::try_parse_from(argv).is_ok(), "node {}", node.id);
        }
    }
}
