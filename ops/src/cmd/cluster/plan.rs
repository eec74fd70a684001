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
    Controller,
    Broker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Controller => "controller",
            Role::Broker => "broker",
        }
    }
}

/// One node as `start` plans it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    pub id: i32,
    pub role: Role,
    /// The Kafka listener; brokers only.
    pub kafka: Option<SocketAddr>,
    /// The controller listener; the controller only.
    pub controller: Option<SocketAddr>,
    pub metrics: SocketAddr,
    pub data_dir: PathBuf,
    pub log_file: PathBuf,
}

/// The controller (node 0) and brokers 1..=N, with ports that must all differ.
pub fn layout(args: &StartArgs) -> anyhow::Result<Vec<NodePlan>> {
    let port = |base: u16, offset: u16, what: &str| {
        base.checked_add(offset)
            .ok_or_else(|| anyhow!("{what} port {base} + {offset} is above 65535"))
    };
    let node = |id: u16, role, kafka, controller, metrics| NodePlan {
        id: i32::from(id),
        role,
        kafka,
        controller,
        metrics: SocketAddr::from((HOST, metrics)),
        data_dir: args.data_dir.join(format!("node-{id}")),
        log_file: args.data_dir.join(format!("node-{id}.log")),
    };
    let controller = SocketAddr::from((HOST, args.controller_port));
    let mut plan = vec![node(
        0,
        Role::Controller,
        None,
        Some(controller),
        args.metrics_base_port,
    )];
    for i in 1..=args.brokers {
        let kafka = port(args.base_port, i - 1, "--base-port")?;
        let metrics = port(args.metrics_base_port, i, "--metrics-base-port")?;
        plan.push(node(
            i,
            Role::Broker,
            Some(SocketAddr::from((HOST, kafka))),
            None,
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

/// `controller.quorum.voters` for the planned controller.
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
    match node.controller {
        Some(listener) => props.push(("controller.listener".into(), listener.to_string())),
        None => props.push(("controller.quorum.voters".into(), voters.to_string())),
    }
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
                    0,
                    Role::Controller,
                    None,
                    a("127.0.0.1:9091"),
                    addr("127.0.0.1:9644")
                ),
                (
                    1,
                    Role::Broker,
                    a("127.0.0.1:9092"),
                    None,
                    addr("127.0.0.1:9645")
                ),
                (
                    2,
                    Role::Broker,
                    a("127.0.0.1:9093"),
                    None,
                    addr("127.0.0.1:9646")
                ),
                (
                    3,
                    Role::Broker,
                    a("127.0.0.1:9094"),
                    None,
                    addr("127.0.0.1:9647")
                ),
            ]
        );
        assert_eq!(plan[2].data_dir, PathBuf::from("c/node-2"));
        assert_eq!(plan[2].log_file, PathBuf::from("c/node-2.log"));
        assert_eq!(voters(&plan), "0@127.0.0.1:9091");
    }

    #[test]
    fn moved_ports() {
        let flags =
            "--brokers 2 --controller-port 20000 --base-port 19000 --metrics-base-port 9000";
        let plan = layout(&start_args(flags)).unwrap();
        let ports: Vec<_> = plan
            .iter()
            .map(|n| {
                let listener = n.kafka.or(n.controller).unwrap();
                (listener.port(), n.metrics.port())
            })
            .collect();
        assert_eq!(ports, [(20000, 9000), (19000, 9001), (19001, 9002)]);
    }

    #[test]
    fn clashing_or_overflowing_ports_are_refused() {
        let cases = [
            (
                "--controller-port 9093",
                "port 9093 would serve both node 0's controller listener and node 2's kafka \
                 listener; choose other --controller-port, --base-port or --metrics-base-port",
            ),
            (
                "--metrics-base-port 9090",
                "port 9091 would serve both node 0's controller listener and node 1's metrics",
            ),
            (
                "--brokers 1 --base-port 9644",
                "port 9644 would serve both node 0's metrics listener and node 1's kafka",
            ),
            (
                "--brokers 2 --base-port 65535",
                "--base-port port 65535 + 1 is above 65535",
            ),
            (
                "--metrics-base-port 65535",
                "--metrics-base-port port 65535 + 1 is above 65535",
            ),
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
        let args = start_args("--brokers 1 --data-dir c --set min.insync.replicas=2");
        let plan = layout(&args).unwrap();
        let voters = voters(&plan);
        assert_eq!(
            node_args(&plan[0], &voters, &args.set).join(" "),
            "broker --node-id 0 --data-dir c/node-0 --metrics-listener 127.0.0.1:9644 \
             --listeners 127.0.0.1:0 --set min.insync.replicas=2 \
             --set process.roles=controller --set controller.listener=127.0.0.1:9091"
        );
        assert_eq!(
            node_args(&plan[1], &voters, &args.set).join(" "),
            "broker --node-id 1 --data-dir c/node-1 --metrics-listener 127.0.0.1:9645 \
             --listeners 127.0.0.1:9092 --set min.insync.replicas=2 \
             --set process.roles=broker --set controller.quorum.voters=0@127.0.0.1:9091"
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
