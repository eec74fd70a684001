//! Observability: the Grafana dashboard (`ops/dashboards/keel.json`) and the Prometheus
//! alert rules (`ops/alerts.yml`) against what a real cluster exports, and the follower-lag
//! gauges through a follower paused with SIGSTOP.
//!
//! - `promtool` checks the rules, runs their unit tests (`ops/alerts.test.yml`) and parses
//!   every dashboard query; a missing `promtool` fails the test (`.ci/run` installs it).
//! - Every `keel_*` metric a dashboard query or an alert expression names must be exported
//!   by some node of a running cluster (controller included): a renamed or never-registered
//!   metric leaves a panel or an alert silently empty.
//! - The leader's `keel_follower_lag_records` for a paused follower rises, the partition
//!   turns under-replicated once the follower leaves the ISR, and both return to 0 after
//!   SIGCONT.
//!
//! Cluster tests run one at a time (a process-wide lock) and every wait is a condition with
//! a deadline. On failure (or with `KEEL_TEST_KEEP_LOGS=1`) each node's stderr is copied to
//! `$TMPDIR/keel-observability/<test>/`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use kafka_protocol::messages::ApiVersionsRequest;
use kafka_protocol::protocol::{Encodable, StrBytes};
use keel::cmd::cluster::{parse_exposition, Sample};
use keel_client::{Acks, ClientConfig, Producer, ProducerConfig, ProducerRecord};
use keel_tests::raw::{raw_header, RawConn};
use keel_tests::{
    poll_until, require_tool, run, runtime, serial, wait_until, ClusterOpts, KeepLogs, TestCluster,
};

/// Bound of a single wait on the cluster.
const WAIT: Duration = Duration::from_secs(30);
/// Where [`KeepLogs`] copies the nodes' logs to, under `$TMPDIR`.
const LOG_DIR: &str = "keel-observability";
/// Bound of one promtool run.
const PROMTOOL_TIMEOUT: Duration = Duration::from_secs(60);

const FOLLOWER_LAG_RECORDS: &str = "keel_follower_lag_records";
const FOLLOWER_LAG_BYTES: &str = "keel_follower_lag_bytes";
const FOLLOWER_CAUGHT_UP_AGE: &str = "keel_follower_caught_up_age_seconds";
const UNDER_REPLICATED: &str = "keel_partition_under_replicated";
const UNDER_MIN_ISR: &str = "keel_partition_under_min_isr";
const IS_LEADER: &str = "keel_partition_is_leader";
const ISR_SHRINKS: &str = "keel_isr_shrinks_total";
const ISR_EXPANDS: &str = "keel_isr_expands_total";

// ---------------------------------------------------------------------------------------
// Files under ops/
// ---------------------------------------------------------------------------------------

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

fn dashboard_path() -> PathBuf {
    repo_root().join("ops").join("dashboards").join("keel.json")
}

fn alerts_path() -> PathBuf {
    repo_root().join("ops").join("alerts.yml")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn dashboard() -> serde_json::Value {
    let path = dashboard_path();
    serde_json::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

/// Every PromQL query of the dashboard: the `expr` of each target (at any depth, so
/// nested rows count) and the query of each templating variable, with where it is.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    fn walk(v: &serde_json::Value, at: &str, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(map) => {
                let here = match map.get("title").and_then(|t| t.as_str()) {
                    Some(title) => format!("{at} / {title}"),
                    None => at.to_string(),
                };
                for (k, child) in map {
                    match (k.as_str(), child) {
                        ("expr", serde_json::Value::String(expr)) => {
                            out.push((here.clone(), expr.clone()));
                        }
                        _ => walk(child, &here, out),
                    }
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    walk(item, at, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], "dashboard panel", &mut out);
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] != "query" {
            continue;
        }
        let query = match &var["query"] {
            serde_json::Value::String(q) => Some(q.clone()),
            serde_json::Value::Object(q) => {
                q.get("query").and_then(|q| q.as_str()).map(String::from)
            }
            _ => None,
        };
        let name = var["name"].as_str().unwrap_or("?");
        let query = query.unwrap_or_else(|| panic!("dashboard variable `{name}` has no query"));
        out.push((format!("dashboard variable ${name}"), query));
    }
    out
}

/// One rule of a Prometheus rules file: its name (`alert:` or `record:`) and `expr`.
#[derive(Debug, Clone, PartialEq)]
struct Rule {
    name: String,
    expr: String,
}

/// The rules of a Prometheus rules file, read line by line (the test crate has no YAML
/// parser): `- alert: X` / `- record: X` then `expr:` with a plain, quoted or block
/// (`|`, `>`) value. Panics when a rule has no `expr` or an `expr` no rule, so a layout
/// this reader does not know fails loudly instead of checking nothing.
fn rules_in(yaml: &str) -> Vec<Rule> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut rules = Vec::new();
    let mut current: Option<String> = None;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let item = trimmed.strip_prefix("- ").unwrap_or(trimmed);
        if let Some(name) = item
            .strip_prefix("alert:")
            .or_else(|| item.strip_prefix("record:"))
        {
            if let Some(prev) = current.take() {
                panic!("rule `{prev}` has no expr");
            }
            current = Some(unquote(name.trim()));
        } else if let Some(value) = item.strip_prefix("expr:") {
            let name = current
                .take()
                .unwrap_or_else(|| panic!("line {}: expr outside a rule", i + 1));
            let value = value.trim();
            let expr = if value.starts_with('|') || value.starts_with('>') {
                let mut block = Vec::new();
                while let Some(next) = lines.get(i + 1) {
                    let t = next.trim_start();
                    if !t.is_empty() && next.len() - t.len() <= indent {
                        break;
                    }
                    block.push(t);
                    i += 1;
                }
                block.join("\n")
            } else {
                unquote(value)
            };
            rules.push(Rule { name, expr });
        }
        i += 1;
    }
    if let Some(prev) = current {
        panic!("rule `{prev}` has no expr");
    }
    rules
}

/// A YAML scalar without its quotes (`''` and `\"` undone).
fn unquote(s: &str) -> String {
    if let Some(inner) = s.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
        inner.replace("''", "'")
    } else if let Some(inner) = s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        inner.replace("\\\"", "\"").replace("\\\\", "\\")
    } else {
        s.to_string()
    }
}

/// Metric names a PromQL expression refers to: identifiers starting with `keel_`, and `up`.
/// String literals (label values, `label_values` arguments) and Grafana variables (`$x`,
/// `${x}`) are skipped; functions, keywords and label names never start with `keel_`.
fn metric_names_in(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' && c != '`' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if c == '$' {
            // A Grafana variable: `$name` or `${name}` / `${name:format}`.
            i += 1;
            if chars.get(i) == Some(&'{') {
                while i < chars.len() && chars[i] != '}' {
                    i += 1;
                }
                i += 1;
            } else {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let ident: String = chars[start..i].iter().collect();
            if ident.starts_with("keel_") || ident == "up" {
                names.insert(ident);
            }
        } else if c.is_ascii_digit() {
            // A number or a duration (`5m`, `1e3`): not an identifier.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    names
}

/// `keel_*` metric name → where the dashboard and the alert rules use it.
fn referenced_keel_metrics() -> BTreeMap<String, Vec<String>> {
    let mut uses: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut add = |at: String, expr: &str| {
        for name in metric_names_in(expr) {
            if name.starts_with("keel_") {
                uses.entry(name).or_default().push(at.clone());
            }
        }
    };
    let queries = dashboard_queries(&dashboard());
    assert!(
        queries.len() >= 10,
        "only {} queries found in {}: is the dashboard layout readable?",
        queries.len(),
        dashboard_path().display()
    );
    for (at, expr) in queries {
        add(at, &expr);
    }
    let rules = rules_in(&read(&alerts_path()));
    assert!(
        rules.len() >= 6,
        "only {} rules in ops/alerts.yml",
        rules.len()
    );
    for rule in rules {
        add(format!("alert {}", rule.name), &rule.expr);
    }
    uses
}

// ---------------------------------------------------------------------------------------
// Prometheus text format
// ---------------------------------------------------------------------------------------

/// One `/metrics` page: its samples, and the type of each family from `# TYPE` lines.
#[derive(Debug)]
struct Exposition {
    samples: Vec<Sample>,
    types: BTreeMap<String, String>,
}

impl Exposition {
    /// Parses Prometheus text (format 0.0.4) with [`parse_exposition`]: any line that is
    /// neither a comment nor a well-formed sample is an error, since the exporter's output
    /// must be readable by Prometheus.
    fn parse(text: &str) -> Result<Exposition, String> {
        let samples = parse_exposition(text)?;
        // `parse_exposition` has checked that each TYPE line names a family and a type.
        let types = text
            .lines()
            .filter_map(|line| {
                let mut words = line.trim().strip_prefix('#')?.split_whitespace();
                match (words.next(), words.next(), words.next()) {
                    (Some("TYPE"), Some(name), Some(kind)) => {
                        Some((name.to_string(), kind.to_string()))
                    }
                    _ => None,
                }
            })
            .collect();
        Ok(Exposition { samples, types })
    }

    /// Metric families with at least one sample; histogram and summary series
    /// (`_bucket`, `_sum`, `_count`) count under their family's name.
    fn families(&self) -> BTreeSet<String> {
        self.samples
            .iter()
            .map(|s| {
                for suffix in ["_bucket", "_sum", "_count"] {
                    if let Some(base) = s.name.strip_suffix(suffix) {
                        if matches!(
                            self.types.get(base).map(String::as_str),
                            Some("histogram" | "summary")
                        ) {
                            return base.to_string();
                        }
                    }
                }
                s.name.clone()
            })
            .collect()
    }

    /// The value of the one series of `name` whose labels include `labels`; `None` when
    /// there is none (it panics if there are several: the caller's labels are too loose).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
            .collect();
        assert!(
            matching.len() <= 1,
            "{name}{labels:?} matches several series: {matching:?}"
        );
        matching.first().map(|s| s.value)
    }

    /// The sum of every series of `name`; 0 when there is none.
    fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum()
    }
}

// ---------------------------------------------------------------------------------------
// Cluster helpers
// ---------------------------------------------------------------------------------------

/// Three brokers, RF 3 and min ISR 2 by default, partition gauges refreshed every 100 ms.
/// The session timeout is far longer than any pause here, so a paused follower leaves the
/// ISR by the leader's lag rule (`replica.lag.time.max.ms`), not by fencing.
fn cluster_opts() -> ClusterOpts {
    ClusterOpts::default()
        .brokers(3)
        .set("broker.session.timeout.ms", "15000")
        .set("broker.heartbeat.interval.ms", "200")
        .set("min.insync.replicas", "2")
        .set("default.replication.factor", "3")
        .set("replica.lag.time.max.ms", "2000")
}

/// Sends SIGCONT to a paused node when dropped, so a failing test never leaves a stopped
/// process behind. Declare it after the cluster: it drops first, while the cluster still
/// owns (and has not reaped) the child, so the pid is still that node's.
struct ContinueOnDrop {
    pid: libc::pid_t,
}

impl ContinueOnDrop {
    fn new(cluster: &TestCluster, id: i32) -> ContinueOnDrop {
        let pid = libc::pid_t::try_from(cluster.node(id).pid()).expect("pid fits pid_t");
        ContinueOnDrop { pid }
    }
}

impl Drop for ContinueOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) on a child of this process that is not reaped yet (see above).
        // A second SIGCONT to a running process does nothing.
        unsafe {
            libc::kill(self.pid, libc::SIGCONT);
        }
    }
}

/// Produces `count` records with acks=all to `topic-partition` through `bootstrap` and
/// requires every one to be acknowledged.
fn produce_acked(
    rt: &tokio::runtime::Runtime,
    bootstrap: &str,
    topic: &str,
    partition: i32,
    prefix: &str,
    count: usize,
) {
    rt.block_on(async {
        let mut client = ClientConfig::new(bootstrap);
        client.request_timeout = Duration::from_secs(15);
        let config = ProducerConfig {
            acks: Acks::All,
            request_timeout: Duration::from_secs(15),
            ..ProducerConfig::default()
        };
        let producer = Producer::new(client, config)
            .await
            .unwrap_or_else(|e| panic!("producer for {bootstrap}: {e}"));
        let mut pending = Vec::with_capacity(count);
        for i in 0..count {
            let record = ProducerRecord::new(topic, format!("{prefix}-value-{i:05}"))
                .key(format!("{prefix}-{i}"))
                .partition(partition);
            let delivery = producer
                .send(record)
                .await
                .unwrap_or_else(|e| panic!("{topic}-{partition}: send {prefix}-{i}: {e}"));
            pending.push(delivery);
        }
        for (i, delivery) in pending.into_iter().enumerate() {
            delivery.await.unwrap_or_else(|e| {
                panic!("{topic}-{partition}: {prefix}-{i} not acknowledged with acks=all: {e}")
            });
        }
        let _ = producer.close().await;
    });
}

/// The labels of the leader's series for follower `replica` of `topic-0`.
fn follower_labels<'a>(topic: &'a str, replica: &'a str) -> [(&'a str, &'a str); 3] {
    [("topic", topic), ("partition", "0"), ("replica", replica)]
}

/// Node `id`'s metrics, parsed; `None` when it does not answer. Panics on text that is
/// not valid Prometheus exposition.
fn scrape(cluster: &TestCluster, id: i32) -> Option<Exposition> {
    let text = cluster.try_scrape_metrics(id)?;
    Some(
        Exposition::parse(&text)
            .unwrap_or_else(|e| panic!("node {id}'s /metrics is not valid Prometheus text: {e}")),
    )
}

/// An ApiVersions request at a version no broker knows: answered in v0 and counted in
/// `keel_server_request_errors_total{reason="unsupported_version"}`.
fn send_unsupported_api_versions(addr: SocketAddr) {
    let mut conn = RawConn::connect(addr).expect("connect to the broker");
    let mut req = ApiVersionsRequest::default();
    req.client_software_name = StrBytes::from_static_str("keel-tests");
    req.client_software_version = StrBytes::from_static_str("0.1.0");
    let mut frame: BytesMut = raw_header(18, 99, 4242, true);
    req.encode(&mut frame, 3).expect("encode ApiVersions");
    conn.write_frame(&frame).expect("send ApiVersions v99");
    conn.read_frame()
        .expect("a (v0) response to ApiVersions v99");
}

// ---------------------------------------------------------------------------------------
// Tests without a cluster
// ---------------------------------------------------------------------------------------

#[test]
fn alert_rules_pass_promtool() {
    let promtool = require_tool("promtool");
    let rules = alerts_path();
    let out = run(
        Command::new(&promtool).args(["check", "rules"]).arg(&rules),
        None,
        PROMTOOL_TIMEOUT,
    );
    assert!(
        out.success(),
        "`promtool check rules` rejects {}:\n{out}",
        rules.display()
    );
    let names: Vec<String> = rules_in(&read(&rules))
        .into_iter()
        .map(|r| r.name)
        .collect();
    for want in [
        "KeelUnderReplicatedPartitions",
        "KeelUnderMinIsr",
        "KeelOfflinePartitions",
        "KeelFollowerLagGrowing",
        "KeelFencedBroker",
        "KeelDiskAlmostFull",
        "KeelBrokerDown",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "no alert {want} in {names:?}"
        );
    }
    let found = format!("SUCCESS: {} rules found", names.len());
    assert!(
        out.stdout_str().contains(&found),
        "promtool did not find the {} rules this test reads ({names:?}):\n{out}",
        names.len()
    );
}

/// The unit tests of the rules: each alert fires, with its labels and annotations, after
/// its `for`, and not before (`ops/alerts.test.yml`).
#[test]
fn alert_rules_unit_tests_pass_promtool() {
    let promtool = require_tool("promtool");
    let ops = repo_root().join("ops");
    let out = run(
        Command::new(&promtool)
            .args(["test", "rules", "alerts.test.yml"])
            .current_dir(&ops),
        None,
        PROMTOOL_TIMEOUT,
    );
    assert!(out.success(), "`promtool test rules` fails:\n{out}");
}

/// The dashboard is Grafana JSON with a data source and a topic variable, its panels have
/// unique ids and queries, and every query parses as PromQL (checked by promtool as a
/// recording rule, with the Grafana variables substituted).
#[test]
fn dashboard_is_well_formed_and_its_queries_pass_promtool() {
    let promtool = require_tool("promtool");
    let d = dashboard();
    let schema = d["schemaVersion"].as_i64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    let vars: Vec<&serde_json::Value> = d["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .collect();
    assert!(
        vars.iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "no Prometheus data source variable: {vars:?}"
    );
    assert!(
        vars.iter().any(|v| v["name"] == "topic"),
        "no `topic` variable"
    );

    let mut ids = BTreeSet::new();
    let mut panels = 0;
    for p in d["panels"].as_array().expect("panels") {
        let title = p["title"].as_str().unwrap_or("?");
        let id = p["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("panel {title} has no id"));
        assert!(ids.insert(id), "panel id {id} ({title}) is not unique");
        let grid = &p["gridPos"];
        let (x, w) = (
            grid["x"].as_i64().unwrap_or(-1),
            grid["w"].as_i64().unwrap_or(-1),
        );
        assert!(
            x >= 0 && w > 0 && x + w <= 24,
            "panel {title}: gridPos {grid}"
        );
        if p["type"] == "row" {
            continue;
        }
        panels += 1;
        let targets = p["targets"].as_array().map(Vec::len).unwrap_or(0);
        assert!(targets > 0, "panel {title} has no query");
        let ds = p["datasource"]["uid"].as_str().unwrap_or_default();
        assert_eq!(
            ds, "${datasource}",
            "panel {title} does not use the data source variable"
        );
    }
    assert!(panels >= 20, "only {panels} panels");

    // Every query as a recording rule: promtool parses each expression.
    let queries = dashboard_queries(&d);
    let mut rules = String::from("groups:\n  - name: keel-dashboard-queries\n    rules:\n");
    for (i, (_, expr)) in queries.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$__interval", "1m")
            .replace("${topic}", ".*")
            .replace("$topic", ".*");
        assert!(
            !expr.contains('$'),
            "query {i} has an unknown variable: {expr}"
        );
        // `label_values(metric, label)` is Grafana's, not PromQL: check the selector.
        let expr = match expr.strip_prefix("label_values(") {
            Some(args) => args
                .split(',')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string(),
            None => expr,
        };
        let quoted = serde_json::to_string(&expr).expect("a JSON string is a YAML string");
        rules.push_str(&format!(
            "      - record: keel_dashboard:query_{i}\n        expr: {quoted}\n"
        ));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("dashboard-queries.yml");
    std::fs::write(&file, &rules).expect("write the rules file");
    let out = run(
        Command::new(&promtool).args(["check", "rules"]).arg(&file),
        None,
        PROMTOOL_TIMEOUT,
    );
    assert!(
        out.success(),
        "a dashboard query is not valid PromQL:\n{out}\n--- queries as rules ---\n{rules}"
    );
}

#[test]
fn prometheus_text_parser_reads_samples() {
    let text = "# HELP keel_x_seconds A histogram.\n\
                # TYPE keel_x_seconds histogram\n\
                keel_x_seconds_bucket{api=\"produce\",le=\"0.5\"} 3\n\
                keel_x_seconds_bucket{api=\"produce\",le=\"+Inf\"} 4\n\
                keel_x_seconds_sum{api=\"produce\"} 1.25\n\
                keel_x_seconds_count{api=\"produce\"} 4\n\
                # TYPE keel_jobs_count gauge\n\
                keel_jobs_count 7\n\
                keel_y_total{ topic=\"a\\\"b,c}\\\\\", partition=\"0\" } 2e3 1700000000\n\
                up 1\n";
    let e = Exposition::parse(text).unwrap();
    assert_eq!(e.samples.len(), 7);
    assert_eq!(
        e.families(),
        ["keel_jobs_count", "keel_x_seconds", "keel_y_total", "up"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    assert_eq!(
        e.value("keel_x_seconds_bucket", &[("le", "+Inf")]),
        Some(4.0)
    );
    assert_eq!(
        e.value(
            "keel_y_total",
            &[("topic", "a\"b,c}\\"), ("partition", "0")]
        ),
        Some(2000.0)
    );
    assert_eq!(e.value("keel_y_total", &[("topic", "other")]), None);
    assert_eq!(e.sum("keel_x_seconds_bucket"), 7.0);
    // Malformed lines: see `keel::cmd::cluster::metrics`'s tests of `parse_exposition`.
    assert!(Exposition::parse("keel_a 1 2 3").is_err());

    let names = |e: &str| metric_names_in(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            "histogram_quantile(0.99, sum by (api, le) \
             (rate(keel_server_request_duration_seconds_bucket{api=~\"keel_x\"}[$__rate_interval])))"
        ),
        ["keel_server_request_duration_seconds_bucket"]
    );
    assert_eq!(
        names("up{job=~\"keel.*\"} == 0 or ${keel_var} keel_a_total / on(instance) keel_b"),
        ["keel_a_total", "keel_b", "up"]
    );
    let yaml = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: keel_a > 0\n\
                \x20     - alert: 'B'\n        expr: |\n          sum(keel_b)\n            > 0\n        for: 1m\n\
                \x20     - record: c:d\n        expr: \"keel_c{x=\\\"y\\\"}\"\n";
    assert_eq!(
        rules_in(yaml),
        [
            Rule {
                name: "A".into(),
                expr: "keel_a > 0".into()
            },
            Rule {
                name: "B".into(),
                expr: "sum(keel_b)\n> 0".into()
            },
            Rule {
                name: "c:d".into(),
                expr: "keel_c{x=\"y\"}".into()
            },
        ]
    );
}

// ---------------------------------------------------------------------------------------
// Cluster tests
// ---------------------------------------------------------------------------------------

/// Every `keel_*` metric the dashboard or the alert rules name is exported by some node of
/// a cluster that has done ordinary work: a replicated topic, acks=all produce, follower
/// fetches, one refused request.
#[test]
fn dashboard_and_alerts_use_only_scraped_metrics() {
    let referenced = referenced_keel_metrics();
    for sanity in [
        FOLLOWER_LAG_RECORDS,
        UNDER_REPLICATED,
        "keel_server_request_duration_seconds_bucket",
        "keel_controller_offline_partitions",
    ] {
        assert!(
            referenced.contains_key(sanity),
            "the dashboard and alerts do not use {sanity}: {:?}",
            referenced.keys()
        );
    }

    let _serial = serial();
    let rt = runtime();
    let topic = "observed";
    let cluster = TestCluster::start(cluster_opts());
    let keep = KeepLogs::new(
        LOG_DIR,
        "dashboard_and_alerts_use_only_scraped_metrics",
        &cluster,
    );
    cluster.create_replicated_topic(topic, 2, WAIT);
    for partition in 0..2 {
        produce_acked(&rt, &cluster.bootstrap(), topic, partition, "seen", 100);
    }
    // A group with a committed offset, for the group gauges (lag 100 - 40 on partition 0).
    rt.block_on(async {
        let admin = keel_client::Admin::new(ClientConfig::new(&cluster.bootstrap()))
            .await
            .unwrap();
        let offsets = BTreeMap::from([((topic.to_string(), 0), 40)]);
        admin.set_group_offsets("observer", &offsets).await.unwrap();
    });
    send_unsupported_api_versions(cluster.broker(1).kafka_addr());

    let nodes = cluster.node_ids();
    let mut missing: Vec<String> = Vec::new();
    let mut seen: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    let start = Instant::now();
    let all_there = poll_until(WAIT, || {
        seen.clear();
        for &id in &nodes {
            let Some(exposition) = scrape(&cluster, id) else {
                continue;
            };
            for family in exposition.families() {
                seen.entry(family).or_default().insert(id);
            }
        }
        missing = referenced
            .keys()
            .filter(|name| !is_exported(name, &seen))
            .cloned()
            .collect();
        missing.is_empty()
    });
    if !all_there {
        let detail: Vec<String> = missing
            .iter()
            .map(|name| format!("  {name} (used by: {})", referenced[name].join("; ")))
            .collect();
        let exported: Vec<String> = seen
            .iter()
            .filter(|(name, _)| name.starts_with("keel_"))
            .map(|(name, ids)| format!("  {name} on nodes {ids:?}"))
            .collect();
        panic!(
            "after {:.1}s, {} metric(s) the dashboard or the alerts use are exported by no \
             node (controller and brokers scraped):\n{}\nexported keel_* families:\n{}",
            start.elapsed().as_secs_f64(),
            missing.len(),
            detail.join("\n"),
            exported.join("\n")
        );
    }
    // The group's coordinator reports its committed offset and lag.
    let labels = [("group", "observer"), ("topic", topic), ("partition", "0")];
    let lag_ok = poll_until(WAIT, || {
        nodes.iter().any(|&id| {
            scrape(&cluster, id).is_some_and(|e| {
                e.value("keel_group_lag_records", &labels) == Some(60.0)
                    && e.value("keel_group_committed_offset", &labels) == Some(40.0)
            })
        })
    });
    assert!(
        lag_ok,
        "no coordinator reports lag 60 at committed offset 40"
    );
    // The controller's own gauges come from node 0 only.
    let controller_nodes = &seen["keel_controller_brokers_active"];
    assert_eq!(
        controller_nodes.iter().copied().collect::<Vec<_>>(),
        [0],
        "keel_controller_* should come from the controller node only"
    );
    eprintln!(
        "all {} keel_* metrics of the dashboard and alerts are exported",
        referenced.len()
    );
    drop(keep);
}

/// Whether `name` (as a query writes it) is among the exported `families`: a histogram's
/// `_bucket`, `_sum` and `_count` series belong to its family.
fn is_exported<V>(name: &str, families: &BTreeMap<String, V>) -> bool {
    if families.contains_key(name) {
        return true;
    }
    ["_bucket", "_sum", "_count"].iter().any(|suffix| {
        name.strip_suffix(suffix)
            .is_some_and(|base| families.contains_key(base))
    })
}

/// A follower paused with SIGSTOP: the leader's lag gauges for it rise, the partition is
/// under-replicated (not under min ISR: 2 of 3 remain) once the follower leaves the ISR,
/// the leader counts the shrink; after SIGCONT the lag and under-replication return to 0
/// and the leader counts the expansion.
#[test]
fn follower_lag_rises_while_paused_and_returns_to_zero() {
    let _serial = serial();
    let rt = runtime();
    let topic = "lagging";
    let mut cluster = TestCluster::start(cluster_opts());
    let keep = KeepLogs::new(
        LOG_DIR,
        "follower_lag_rises_while_paused_and_returns_to_zero",
        &cluster,
    );
    cluster.create_replicated_topic(topic, 1, WAIT);
    let leader = cluster.leader_of(topic, 0).expect("a leader");
    let followers: Vec<i32> = cluster
        .broker_ids()
        .into_iter()
        .filter(|&id| id != leader)
        .collect();
    let paused = followers[0];
    let paused_label = paused.to_string();
    let leader_bootstrap = cluster.broker(leader).kafka_addr().to_string();
    let tp: [(&str, &str); 2] = [("topic", topic), ("partition", "0")];
    eprintln!("{topic}-0: leader {leader}, followers {followers:?}; pausing {paused}");

    // Baseline: records committed, both followers caught up in the leader's view.
    produce_acked(&rt, &leader_bootstrap, topic, 0, "before", 100);
    let mut last = String::new();
    let baseline = poll_until(WAIT, || {
        let Some(m) = scrape(&cluster, leader) else {
            return false;
        };
        let lags: Vec<Option<f64>> = followers
            .iter()
            .map(|f| {
                m.value(
                    FOLLOWER_LAG_RECORDS,
                    &follower_labels(topic, &f.to_string()),
                )
            })
            .collect();
        let is_leader = m.value(IS_LEADER, &tp);
        let under = m.value(UNDER_REPLICATED, &tp);
        last = format!("is_leader {is_leader:?}, under_replicated {under:?}, lags {lags:?}");
        is_leader == Some(1.0) && under == Some(0.0) && lags.iter().all(|l| *l == Some(0.0))
    });
    assert!(
        baseline,
        "the leader {leader} never reported both followers at lag 0 and the partition fully \
         replicated; last seen: {last}"
    );
    let before = scrape(&cluster, leader).expect("the leader answers");
    let (shrinks_before, expands_before) = (before.sum(ISR_SHRINKS), before.sum(ISR_EXPANDS));

    // Pause the follower and keep producing (bounded) until the leader reports it lagging
    // and the partition under-replicated.
    cluster.sigstop(paused);
    let _continue = ContinueOnDrop::new(&cluster, paused);
    let paused_at = Instant::now();
    let mut produced = 0;
    let mut lagging = None;
    let mut last = String::new();
    for round in 0..60 {
        if paused_at.elapsed() > Duration::from_secs(45) {
            break;
        }
        produce_acked(
            &rt,
            &leader_bootstrap,
            topic,
            0,
            &format!("paused{round}"),
            20,
        );
        produced += 20;
        let Some(m) = scrape(&cluster, leader) else {
            continue;
        };
        let lag = m.value(FOLLOWER_LAG_RECORDS, &follower_labels(topic, &paused_label));
        let lag_bytes = m.value(FOLLOWER_LAG_BYTES, &follower_labels(topic, &paused_label));
        let caught_up_age = m.value(
            FOLLOWER_CAUGHT_UP_AGE,
            &follower_labels(topic, &paused_label),
        );
        let under = m.value(UNDER_REPLICATED, &tp);
        let under_min = m.value(UNDER_MIN_ISR, &tp);
        last = format!(
            "after {produced} records: lag {lag:?} records / {lag_bytes:?} bytes, caught up \
             {caught_up_age:?}s ago, under_replicated {under:?}, under_min_isr {under_min:?}"
        );
        if lag.is_some_and(|l| l > 0.0) && under == Some(1.0) {
            lagging = Some((lag, lag_bytes, caught_up_age, under_min));
            break;
        }
    }
    let Some((lag, lag_bytes, caught_up_age, under_min)) = lagging else {
        panic!(
            "within {:.1}s of pausing follower {paused}, the leader {leader} never reported it \
             lagging with the partition under-replicated; last seen: {last}",
            paused_at.elapsed().as_secs_f64()
        );
    };
    eprintln!(
        "{:.1}s after SIGSTOP: {last}",
        paused_at.elapsed().as_secs_f64()
    );
    assert!(
        lag_bytes.is_some_and(|b| b > 0.0),
        "lag {lag:?} records but {lag_bytes:?} bytes"
    );
    assert!(
        caught_up_age.is_some_and(|a| a >= 2.0),
        "follower {paused} left the ISR (replica.lag.time.max.ms = 2000) but the leader says \
         it was caught up {caught_up_age:?}s ago"
    );
    assert_eq!(
        under_min,
        Some(0.0),
        "2 of 3 replicas are in sync with min ISR 2: not under min ISR"
    );
    let isr = cluster.isr_of(topic, 0);
    assert!(
        isr.as_ref()
            .is_some_and(|isr| !isr.contains(&paused) && isr.len() == 2),
        "metadata ISR {isr:?} while the leader reports {topic}-0 under-replicated"
    );
    wait_until(
        &format!("the leader {leader} counts the ISR shrink in {ISR_SHRINKS}"),
        WAIT,
        || scrape(&cluster, leader).is_some_and(|m| m.sum(ISR_SHRINKS) > shrinks_before),
    );

    // Resume: the follower catches up, rejoins, and the leader's gauges return to 0.
    cluster.sigcont(paused);
    let resumed_at = Instant::now();
    let mut last = String::new();
    let recovered = poll_until(WAIT, || {
        let Some(m) = scrape(&cluster, leader) else {
            return false;
        };
        let lag = m.value(FOLLOWER_LAG_RECORDS, &follower_labels(topic, &paused_label));
        let lag_bytes = m.value(FOLLOWER_LAG_BYTES, &follower_labels(topic, &paused_label));
        let under = m.value(UNDER_REPLICATED, &tp);
        last = format!("lag {lag:?} records / {lag_bytes:?} bytes, under_replicated {under:?}");
        lag == Some(0.0) && lag_bytes == Some(0.0) && under == Some(0.0)
    });
    assert!(
        recovered,
        "{:.1}s after SIGCONT of follower {paused}, the leader {leader} still reports it \
         lagging or the partition under-replicated; last seen: {last}",
        resumed_at.elapsed().as_secs_f64()
    );
    eprintln!(
        "lag and under-replication back to 0, {:.1}s after SIGCONT",
        resumed_at.elapsed().as_secs_f64()
    );
    wait_until(
        &format!("the leader {leader} counts the ISR expansion in {ISR_EXPANDS}"),
        WAIT,
        || scrape(&cluster, leader).is_some_and(|m| m.sum(ISR_EXPANDS) > expands_before),
    );
    wait_until(
        &format!("metadata shows follower {paused} back in the ISR of {topic}-0"),
        WAIT,
        || cluster.isr_of(topic, 0).is_some_and(|isr| isr.len() == 3),
    );
    drop(keep);
}
