//! `<dir>/cluster.json`: the nodes `keel cluster start` runs, for `keel cluster status`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::plan::Role;
use crate::table::{strings, table};

pub const FILE_NAME: &str = "cluster.json";

/// What `start` wrote about the running nodes, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterFile {
    pub nodes: Vec<NodeEntry>,
}

/// Whether a node's process runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    #[default]
    Up,
    /// Stopped with SIGSTOP (`keel cluster node pause`).
    Paused,
    /// Not running: exited, stopped, killed, or not started yet.
    Down,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Paused => "paused",
            NodeState::Down => "down",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub id: i32,
    pub role: Role,
    pub kafka: Option<SocketAddr>,
    pub controller: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub pid: u32,
    pub data_dir: PathBuf,
    pub log_file: PathBuf,
    #[serde(default)]
    pub state: NodeState,
    /// How the node last exited, while it is down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<String>,
}

impl ClusterFile {
    /// The brokers' Kafka addresses.
    pub fn bootstrap(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.role.is_broker())
            .filter_map(|n| Some(n.kafka?.to_string()))
            .collect()
    }

    /// A Prometheus configuration that scrapes every node's `/metrics`, labelled with its
    /// node id and role, and loads Keel's alert rules.
    pub fn prometheus_config(&self) -> String {
        let mut out = String::from(
            "# Prometheus configuration for this Keel cluster (keel cluster prometheus-config).\n\
             global:\n  scrape_interval: 5s\n  evaluation_interval: 15s\n\
             # Keel's alert rules; copy ops/alerts.yml from the Keel sources next to this file.\n\
             rule_files:\n  - alerts.yml\n\
             scrape_configs:\n  - job_name: keel\n    static_configs:\n",
        );
        for n in &self.nodes {
            if let Some(addr) = n.metrics {
                out.push_str(&format!(
                    "      - targets: ['{addr}']\n        labels: {{node: '{}', role: '{}'}}\n",
                    n.id,
                    n.role.as_str()
                ));
            }
        }
        out
    }

    /// Written to a temp file and renamed, so `status` never reads half a file.
    pub(super) fn write(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).expect("plain data serializes");
        std::fs::write(&tmp, text + "\n")
            .and_then(|()| std::fs::rename(&tmp, path))
            .with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn read(path: &Path) -> anyhow::Result<Option<ClusterFile>> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .with_context(|| format!("invalid {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
}

pub(super) fn render_nodes(file: &ClusterFile) -> String {
    let mut rows = vec![strings(&[
        "NODE",
        "ROLE",
        "STATE",
        "KAFKA",
        "CONTROLLER",
        "METRICS",
        "PID",
        "LOG",
    ])];
    for n in &file.nodes {
        let state = match (&n.exit, n.state) {
            (Some(how), NodeState::Down) => format!("down ({how})"),
            (_, state) => state.as_str().to_string(),
        };
        rows.push(vec![
            n.id.to_string(),
            n.role.as_str().to_string(),
            state,
            n.kafka.map_or_else(|| "-".into(), |a| a.to_string()),
            n.controller.map_or_else(|| "-".into(), |a| a.to_string()),
            n.metrics
                .map_or_else(|| "-".into(), |a| format!("http://{a}/metrics")),
            n.pid.to_string(),
            n.log_file.display().to_string(),
        ]);
    }
    table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_bootstrap_and_table() {
        let addr = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
        let file = ClusterFile {
            nodes: vec![
                NodeEntry {
                    id: 0,
                    role: Role::Controller,
                    kafka: None,
                    controller: addr("127.0.0.1:9091"),
                    metrics: addr("127.0.0.1:9644"),
                    pid: 10,
                    data_dir: "c/node-0".into(),
                    log_file: "c/node-0.log".into(),
                    state: NodeState::Up,
                    exit: None,
                },
                NodeEntry {
                    id: 1,
                    role: Role::Broker,
                    kafka: addr("127.0.0.1:9092"),
                    controller: None,
                    metrics: None,
                    pid: 11,
                    data_dir: "c/node-1".into(),
                    log_file: "c/node-1.log".into(),
                    state: NodeState::Down,
                    exit: Some("killed by signal 9 (SIGKILL)".into()),
                },
            ],
        };
        let dir = std::env::temp_dir().join(format!("keel-cluster-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(FILE_NAME);
        assert_eq!(ClusterFile::read(&path).unwrap(), None);
        file.write(&path).unwrap();
        let read = ClusterFile::read(&path);
        std::fs::write(&path, "{").unwrap();
        let broken = ClusterFile::read(&path);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(read.unwrap(), Some(file.clone()));
        assert!(broken.unwrap_err().to_string().starts_with("invalid "));

        assert_eq!(file.bootstrap(), ["127.0.0.1:9092"]);
        // Only brokers bootstrap clients, even if the controller announced a listener.
        let mut with_listener = file.clone();
        with_listener.nodes[0].kafka = addr("127.0.0.1:1");
        assert_eq!(with_listener.bootstrap(), ["127.0.0.1:9092"]);
        assert_eq!(
            render_nodes(&file),
            "NODE  ROLE        STATE                                KAFKA           CONTROLLER      METRICS                        PID  LOG\n\
             0     controller  up                                   -               127.0.0.1:9091  http://127.0.0.1:9644/metrics  10   c/node-0.log\n\
             1     broker      down (killed by signal 9 (SIGKILL))  127.0.0.1:9092  -               -                              11   c/node-1.log\n"
        );
        // Only nodes with a metrics listener are scraped.
        let prom = file.prometheus_config();
        assert!(prom.contains("rule_files:\n  - alerts.yml\n"), "{prom}");
        assert!(
            prom.ends_with(
                "static_configs:\n      - targets: ['127.0.0.1:9644']\n        labels: {node: '0', role: 'controller'}\n"
            ),
            "{prom}"
        );
    }
}
