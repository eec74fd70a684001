//! `keel broker`: build a `BrokerConfig` from a file and flags, run the node (with no
//! configuration: a one-node cluster, broker and controller in one process), announce
//! readiness on stdout once it serves, and shut down cleanly on SIGTERM or SIGINT.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::Args;
use keel_broker::{Broker, BrokerConfig};
use tokio::signal::unix::{signal, SignalKind};

use crate::args::parse_key_value;

const DEFAULT_LISTENERS: &str = "127.0.0.1:9092";
const DEFAULT_DATA_DIR: &str = "./keel-data";
const DEFAULT_METRICS_LISTENER: &str = "127.0.0.1:9644";

#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// TOML file with broker settings (Kafka property names as keys).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// This broker's id in the cluster (node.id).
    #[arg(long, value_name = "N")]
    pub node_id: Option<i32>,

    /// Address for Kafka clients (listeners) [default: 127.0.0.1:9092, unless set by --config].
    #[arg(long, value_name = "HOST:PORT")]
    pub listeners: Option<String>,

    /// Address given to clients in metadata (advertised.listeners) [default: the listener].
    #[arg(long, value_name = "HOST:PORT")]
    pub advertised_listener: Option<String>,

    /// Directory for partition logs (log.dirs) [default: ./keel-data, unless set by --config].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Address of the Prometheus /metrics endpoint (metrics.listener), or `none`
    /// [default: 127.0.0.1:9644, unless set by --config].
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_listener: Option<String>,

    /// Any broker setting, e.g. --set log.segment.bytes=1048576 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub set: Vec<(String, String)>,
}

/// One `BrokerConfig::set` call and the flag it came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub flag: &'static str,
    pub key: String,
    pub value: String,
}

impl Override {
    fn new(flag: &'static str, key: &str, value: impl Into<String>) -> Self {
        Self {
            flag,
            key: key.to_string(),
            value: value.into(),
        }
    }
}

/// The `set` calls the flags ask for, in the order they apply. Without a config
/// file the CLI defaults are applied too; with one, the file's values stand
/// unless a flag overrides them.
pub fn overrides(args: &BrokerArgs) -> Vec<Override> {
    let defaults = args.config.is_none();
    let mut out = Vec::new();
    if let Some(id) = args.node_id {
        out.push(Override::new("--node-id", "node.id", id.to_string()));
    }
    match (&args.listeners, defaults) {
        (Some(l), _) => out.push(Override::new("--listeners", "listeners", l)),
        (None, true) => out.push(Override::new("default", "listeners", DEFAULT_LISTENERS)),
        (None, false) => {}
    }
    if let Some(a) = &args.advertised_listener {
        out.push(Override::new(
            "--advertised-listener",
            "advertised.listeners",
            a,
        ));
    }
    match (&args.data_dir, defaults) {
        (Some(d), _) => out.push(Override::new("--data-dir", "log.dirs", d.to_string_lossy())),
        (None, true) => out.push(Override::new("default", "log.dirs", DEFAULT_DATA_DIR)),
        (None, false) => {}
    }
    match (&args.metrics_listener, defaults) {
        (Some(m), _) => out.push(Override::new("--metrics-listener", "metrics.listener", m)),
        (None, true) => out.push(Override::new(
            "default",
            "metrics.listener",
            DEFAULT_METRICS_LISTENER,
        )),
        (None, false) => {}
    }
    for (key, value) in &args.set {
        out.push(Override::new("--set", key, value.as_str()));
    }
    out
}

/// The validated configuration the flags describe.
pub fn build_config(args: &BrokerArgs) -> anyhow::Result<BrokerConfig> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            BrokerConfig::from_toml_str(&text)
                .with_context(|| format!("invalid config file {}", path.display()))?
        }
        None => BrokerConfig::default(),
    };
    for o in overrides(args) {
        // ConfigError names the property and value; add which flag it came from.
        config.set(&o.key, &o.value).with_context(|| match o.flag {
            "default" => "built-in default".to_string(),
            flag => flag.to_string(),
        })?;
    }
    config.validate().context("invalid broker configuration")?;
    Ok(config)
}

pub async fn run(args: BrokerArgs) -> anyhow::Result<()> {
    let config = build_config(&args)?;
    // Install handlers before starting, so a signal during startup is not lost.
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;

    let handle = Broker::start(config)
        .await
        .context("broker failed to start")?;
    // A broker is ready once registered and unfenced: only then can topics be placed on it.
    tokio::select! {
        () = handle.serving() => {}
        result = handle.wait() => {
            result.context("broker stopped while starting")?;
            bail!("broker stopped while starting");
        }
        _ = sigterm.recv() => return handle.shutdown().await.context("broker did not shut down cleanly"),
        _ = sigint.recv() => return handle.shutdown().await.context("broker did not shut down cleanly"),
    }
    announce_ready(
        handle.node_id(),
        handle.kafka_addr(),
        handle.metrics_addr(),
        handle.controller_addr(),
    )?;
    let metrics_hint = match handle.metrics_addr() {
        Some(addr) => format!(", metrics on http://{addr}/metrics"),
        None => String::new(),
    };
    let serves = match (handle.kafka_addr(), handle.controller_addr()) {
        (Some(k), Some(c)) => {
            format!("kafka clients connect to {k}, brokers to the controller at {c}")
        }
        (Some(k), None) => format!("kafka clients connect to {k}"),
        (None, Some(c)) => format!("brokers connect to the controller at {c}"),
        (None, None) => "nothing".to_string(),
    };
    eprintln!(
        "keel node {} is ready: {serves}{metrics_hint}; Ctrl-C stops it",
        handle.node_id()
    );

    let stopped_by_itself = tokio::select! {
        _ = sigterm.recv() => None,
        _ = sigint.recv() => None,
        result = handle.wait() => Some(result),
    };
    if let Some(result) = stopped_by_itself {
        result.context("broker stopped unexpectedly")?;
        bail!("broker stopped unexpectedly");
    }

    eprintln!("shutting down (send the signal again to exit at once)");
    tokio::select! {
        result = handle.shutdown() => result.context("broker did not shut down cleanly"),
        _ = sigterm.recv() => bail!("interrupted again; exited without a clean shutdown"),
        _ = sigint.recv() => bail!("interrupted again; exited without a clean shutdown"),
    }
}

/// The line tests and scripts wait for; flushed so a pipe reader sees it now.
fn announce_ready(
    node_id: i32,
    kafka: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    controller: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", ready_line(node_id, kafka, metrics, controller))
        .and_then(|()| out.flush())
        .context("cannot write the ready line to stdout")
}

fn ready_line(
    node_id: i32,
    kafka: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    controller: Option<SocketAddr>,
) -> String {
    let show = |a: Option<SocketAddr>| a.map_or_else(|| "none".to_string(), |a| a.to_string());
    format!(
        "KEEL_READY node={node_id} kafka={} metrics={} controller={}",
        show(kafka),
        show(metrics),
        show(controller)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(argv: &[&str]) -> BrokerArgs {
        match crate::Cli::try_parse_from(argv).unwrap().command {
            crate::Command::Broker(args) => args,
            other => panic!("parsed as {other:?}"),
        }
    }

    fn pairs(args: &BrokerArgs) -> Vec<(String, String)> {
        overrides(args)
            .into_iter()
            .map(|o| (o.key, o.value))
            .collect()
    }

    fn owned(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn flags_map_to_config_keys() {
        type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);
        let cases: &[Case<'_>] = &[
            (
                &["keel", "broker"],
                &[
                    ("listeners", "127.0.0.1:9092"),
                    ("log.dirs", "./keel-data"),
                    ("metrics.listener", "127.0.0.1:9644"),
                ],
            ),
            (
                &[
                    "keel",
                    "broker",
                    "--node-id",
                    "3",
                    "--listeners",
                    "0.0.0.0:19092",
                    "--advertised-listener",
                    "kafka-3:19092",
                    "--data-dir",
                    "/tmp/k3",
                    "--metrics-listener",
                    "127.0.0.1:0",
                    "--set",
                    "log.segment.bytes=1048576",
                    "--set",
                    "min.insync.replicas=2",
                ],
                &[
                    ("node.id", "3"),
                    ("listeners", "0.0.0.0:19092"),
                    ("advertised.listeners", "kafka-3:19092"),
                    ("log.dirs", "/tmp/k3"),
                    ("metrics.listener", "127.0.0.1:0"),
                    ("log.segment.bytes", "1048576"),
                    ("min.insync.replicas", "2"),
                ],
            ),
            // A config file supplies its own values; only explicit flags override.
            (
                &["keel", "broker", "--config", "k.toml", "--node-id", "2"],
                &[("node.id", "2")],
            ),
            (
                &["keel", "broker", "--config", "k.toml", "--set", "a=b=c"],
                &[("a", "b=c")],
            ),
        ];
        for (argv, want) in cases {
            assert_eq!(pairs(&parse(argv)), owned(want), "{argv:?}");
        }
    }

    #[test]
    fn set_comes_after_named_flags() {
        let args = parse(&[
            "keel",
            "broker",
            "--set",
            "listeners=127.0.0.1:1",
            "--listeners",
            "127.0.0.1:2",
        ]);
        let o = overrides(&args);
        let last = o.iter().rfind(|o| o.key == "listeners").unwrap();
        assert_eq!((last.flag, last.value.as_str()), ("--set", "127.0.0.1:1"));
    }

    #[test]
    fn bad_flags_are_rejected_by_clap() {
        for argv in [
            &["keel", "broker", "--node-id", "x"][..],
            &["keel", "broker", "--set", "novalue"],
            &["keel", "broker", "--set", "=v"],
            &["keel", "broker", "--bogus"],
        ] {
            assert!(crate::Cli::try_parse_from(argv).is_err(), "{argv:?}");
        }
    }

    #[test]
    fn ready_line_format() {
        let a: SocketAddr = "127.0.0.1:40123".parse().unwrap();
        let m: SocketAddr = "127.0.0.1:9644".parse().unwrap();
        assert_eq!(
            ready_line(1, Some(a), Some(m), None),
            "KEEL_READY node=1 kafka=127.0.0.1:40123 metrics=127.0.0.1:9644 controller=none"
        );
        assert_eq!(
            ready_line(0, None, None, Some(a)),
            "KEEL_READY node=0 kafka=none metrics=none controller=127.0.0.1:40123"
        );
    }

    #[test]
    fn missing_config_file_is_a_clear_error() {
        let args = parse(&["keel", "broker", "--config", "/nonexistent/keel.toml"]);
        let err = build_config(&args).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("cannot read config file /nonexistent/keel.toml: "),
            "{err:#}"
        );
    }
}
