//! Broker configuration: one typed struct, Kafka property names.
//!
//! A TOML file and `--set key=value` flags go through the same [`BrokerConfig::set`], so a
//! property means the same thing wherever it is given. In TOML, properties may be written
//! with dotted keys (`log.segment.bytes = 1048576`) or quoted (`"log.segment.bytes" = …`).

use keel_storage::{FlushPolicy, LogConfig, PageCache};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown broker property `{0}`")]
    Unknown(String),
    #[error("property `{key}`: invalid value `{value}`: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
    #[error("config file is not valid TOML: {0}")]
    Toml(String),
}

fn invalid(key: &str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Everything a broker process is told. `Default` runs a single local broker.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// `node.id`
    pub node_id: i32,
    /// `listeners`: address the Kafka listener binds (port 0 picks a free port).
    pub listener: String,
    /// `advertised.listeners`: address given to clients in Metadata; defaults to the bound one.
    pub advertised_listener: Option<String>,
    /// `log.dirs`: the data directory.
    pub data_dir: PathBuf,
    /// `metrics.listener`: where `/metrics` is served; `none` disables it.
    pub metrics_listener: Option<String>,
    /// `cluster.id`
    pub cluster_id: String,
    /// `auto.create.topics.enable` (off: an unknown topic is an error, not a new topic).
    pub auto_create_topics: bool,
    /// `num.partitions`: partitions of a topic created without a count.
    pub num_partitions: i32,
    /// `default.replication.factor`
    pub default_replication_factor: i16,
    /// `socket.request.max.bytes`: largest request frame accepted.
    pub socket_request_max_bytes: usize,
    /// `queued.max.requests`: requests read ahead on one connection before reading pauses.
    pub max_inflight_per_connection: usize,
    /// `log.flush.offset.checkpoint.interval.ms`: how often recovery points are saved.
    pub checkpoint_interval_ms: u64,
    /// `log.retention.check.interval.ms`
    pub retention_check_interval_ms: u64,
    /// Defaults for every topic's log, from the `log.*` and `message.max.bytes` properties.
    pub log: LogConfig,
    /// `min.insync.replicas`
    pub min_insync_replicas: i32,
    /// `log.flush.interval.ms`: the period of `log.flush.policy=interval` (either order).
    pub flush_interval_ms: u64,
    /// `process.roles`: `broker`, `controller` or `broker,controller` (the default: a
    /// one-node cluster that is its own controller, through the same code as any other).
    pub roles: Roles,
    /// `controller.listener`: where a controller node serves brokers. The default,
    /// `127.0.0.1:0`, picks a free port: enough for a node that is the only voter and
    /// reaches its controller itself.
    pub controller_listener: String,
    /// `controller.quorum.voters`: `id@host:port` of every controller voter (1, 3 or 5).
    /// Empty on a node with the controller role: this node alone, at its controller listener.
    pub controller_voters: Vec<(i32, String)>,
    /// `controller.quorum.election.timeout.ms`: a voter that hears no leader this long
    /// (randomised up to twice as long) stands for election; a leader that hears from no
    /// majority this long steps down.
    pub election_timeout_ms: u64,
    /// `controller.quorum.heartbeat.interval.ms`: how often the Raft leader reaches the
    /// other voters when it has nothing to send.
    pub quorum_heartbeat_interval_ms: u64,
    /// `controller.snapshot.entries`: committed metadata entries between snapshots.
    pub snapshot_entries: u64,
    /// `broker.heartbeat.interval.ms`
    pub heartbeat_interval_ms: u64,
    /// `broker.session.timeout.ms`: a broker silent this long is fenced.
    pub session_timeout_ms: u64,
    /// `broker.session.connection.grace.ms` (Keel): once the connection a broker heartbeats
    /// over closes (its process died, or the link broke), it is fenced this long after
    /// unless it heartbeats again first. 0 turns this off (the session timeout alone).
    pub session_connection_grace_ms: u64,
    /// `replica.lag.time.max.ms`: a follower not caught up for this long leaves the ISR.
    pub replica_lag_time_max_ms: u64,
    /// `replica.fetch.max.bytes`: per-partition cap of a follower fetch (one batch always goes).
    /// 4 MiB (Kafka: 1 MiB): a follower fsyncs once per fetch, so a restarted one catches up
    /// about a fifth faster with fewer, larger rounds; steady-state fetches stay far smaller.
    pub replica_fetch_max_bytes: i32,
    /// `replica.fetch.response.max.bytes`: cap of a whole follower fetch response over all its
    /// partitions (the first batch always goes). Kafka's default, 10 MiB.
    pub replica_fetch_response_max_bytes: i32,
    /// `replica.fetch.wait.max.ms`: how long a follower fetch long-polls.
    pub replica_fetch_wait_max_ms: i32,
    /// `max.incremental.fetch.session.cache.slots`: fetch sessions (KIP-227) this broker
    /// keeps; 0 turns them off (every fetch is a full one).
    pub fetch_session_cache_slots: usize,
    /// `min.incremental.fetch.session.eviction.ms`: a session unused this long may be evicted
    /// for a new one when the cache is full.
    pub fetch_session_eviction_ms: i64,
    /// `producer.id.expiration.ms`: an idempotent producer whose last batch in a partition
    /// is older than this is forgotten there (its next batch is accepted at any sequence).
    pub producer_id_expiration_ms: u64,
    /// `producer.id.expiration.check.interval.ms`: how often that is checked.
    pub producer_id_expiration_check_interval_ms: u64,
    /// The group coordinator's properties (`group.*`, `offsets.*`).
    pub groups: GroupsConfig,
}

/// The group coordinator's properties, with Kafka's names and defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupsConfig {
    /// `group.min.session.timeout.ms`
    pub min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`
    pub max_session_timeout_ms: i32,
    /// `group.initial.rebalance.delay.ms`: an empty group's first rebalance waits this long
    /// for more members.
    pub initial_rebalance_delay_ms: i32,
    /// `group.max.size`: members per group.
    pub max_size: i32,
    /// `group.max.id.bytes` (Keel): longest group id accepted.
    pub max_id_bytes: usize,
    /// `offsets.topic.num.partitions`: partitions of `__consumer_offsets` when it is created.
    pub offsets_partitions: i32,
    /// `offsets.topic.replication.factor`: its replication factor, capped by the brokers
    /// registered when it is created.
    pub offsets_replication_factor: i16,
    /// `offsets.retention.minutes` (or, finer, Keel's `offsets.retention.ms`), in ms:
    /// committed offsets of a group are deleted this long after it became empty (of a group
    /// that never had members: after the commit).
    pub offsets_retention_ms: u64,
    /// `offsets.retention.check.interval.ms`
    pub offsets_retention_check_interval_ms: u64,
    /// `offset.metadata.max.bytes`: longest metadata string of a commit.
    pub offset_metadata_max_bytes: usize,
    /// `offsets.commit.timeout.ms`: how long a commit waits for its replication.
    pub offsets_commit_timeout_ms: u64,
    /// `group.lag.metrics.max.series` (Keel): most (group, topic, partition) series of the
    /// committed-offset and lag gauges a coordinator exports; 0 turns them off.
    pub lag_metrics_max_series: usize,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        GroupsConfig {
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            initial_rebalance_delay_ms: 3_000,
            max_size: i32::MAX,
            max_id_bytes: 255,
            offsets_partitions: 50,
            offsets_replication_factor: 3,
            offsets_retention_ms: 7 * 24 * 60 * 60_000,
            offsets_retention_check_interval_ms: 600_000,
            offset_metadata_max_bytes: 4096,
            offsets_commit_timeout_ms: 5_000,
            lag_metrics_max_series: 10_000,
        }
    }
}

/// What a node runs in cluster mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub broker: bool,
    pub controller: bool,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            listener: "127.0.0.1:9092".into(),
            advertised_listener: None,
            data_dir: PathBuf::from("./keel-data"),
            metrics_listener: Some("127.0.0.1:9644".into()),
            cluster_id: "keel-local".into(),
            auto_create_topics: false,
            num_partitions: 1,
            default_replication_factor: 1,
            socket_request_max_bytes: 100 * 1024 * 1024,
            max_inflight_per_connection: 500,
            checkpoint_interval_ms: 60_000,
            retention_check_interval_ms: 300_000,
            log: LogConfig::default(),
            min_insync_replicas: 1,
            flush_interval_ms: 1000,
            roles: Roles {
                broker: true,
                controller: true,
            },
            controller_listener: "127.0.0.1:0".into(),
            controller_voters: Vec::new(),
            election_timeout_ms: 1000,
            quorum_heartbeat_interval_ms: 200,
            snapshot_entries: 1000,
            heartbeat_interval_ms: 2000,
            session_timeout_ms: 9000,
            session_connection_grace_ms: 3000,
            replica_lag_time_max_ms: 30_000,
            replica_fetch_max_bytes: 4 << 20,
            replica_fetch_response_max_bytes: 10 << 20,
            replica_fetch_wait_max_ms: 500,
            fetch_session_cache_slots: 1000,
            fetch_session_eviction_ms: 120_000,
            producer_id_expiration_ms: 86_400_000,
            producer_id_expiration_check_interval_ms: 600_000,
            groups: GroupsConfig::default(),
        }
    }
}

fn parse<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    value
        .trim()
        .parse()
        .map_err(|e: T::Err| invalid(key, value, e.to_string()))
}

fn parse_bool(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(key, value, "expected true or false")),
    }
}

/// A count of `unit`s, in milliseconds; refused if it overflows.
fn scaled(key: &str, value: &str, unit: u64) -> Result<u64, ConfigError> {
    parse::<u64>(key, value)?
        .checked_mul(unit)
        .ok_or_else(|| invalid(key, value, "too large"))
}

/// Like [`scaled`], with `-1` meaning "no limit".
fn scaled_limit(key: &str, value: &str, unit: u64) -> Result<Option<u64>, ConfigError> {
    parse_limit(key, value)?
        .map(|v| {
            v.checked_mul(unit)
                .ok_or_else(|| invalid(key, value, "too large"))
        })
        .transpose()
}

/// `-1` means "no limit", as in Kafka.
fn parse_limit(key: &str, value: &str) -> Result<Option<u64>, ConfigError> {
    let v: i64 = parse(key, value)?;
    match v {
        -1 => Ok(None),
        v if v >= 0 => Ok(Some(v as u64)),
        _ => Err(invalid(key, value, "expected -1 or a non-negative number")),
    }
}

impl BrokerConfig {
    /// Sets one property by its Kafka name.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        match key {
            "node.id" | "broker.id" => self.node_id = parse(key, value)?,
            "listeners" => self.listener = strip_scheme(value).to_string(),
            "advertised.listeners" => {
                self.advertised_listener = Some(strip_scheme(value).to_string())
            }
            "log.dirs" | "log.dir" | "data.dir" => self.data_dir = PathBuf::from(value),
            "metrics.listener" => {
                self.metrics_listener = match value {
                    "" | "none" => None,
                    v => Some(v.to_string()),
                }
            }
            "cluster.id" => self.cluster_id = value.to_string(),
            "auto.create.topics.enable" => self.auto_create_topics = parse_bool(key, value)?,
            "num.partitions" => self.num_partitions = parse(key, value)?,
            "default.replication.factor" => self.default_replication_factor = parse(key, value)?,
            "socket.request.max.bytes" => self.socket_request_max_bytes = parse(key, value)?,
            "queued.max.requests" => self.max_inflight_per_connection = parse(key, value)?,
            "log.flush.offset.checkpoint.interval.ms" => {
                self.checkpoint_interval_ms = parse(key, value)?
            }
            "log.retention.check.interval.ms" => {
                self.retention_check_interval_ms = parse(key, value)?
            }
            // Obsolete: gauges are now set at each scrape. Still accepted (and checked), so
            // configurations written for earlier versions start.
            "metrics.partition.interval.ms" => {
                parse::<u64>(key, value)?;
            }
            "min.insync.replicas" => self.min_insync_replicas = parse(key, value)?,
            "message.max.bytes" => self.log.max_batch_bytes = parse(key, value)?,
            "log.segment.bytes" => self.log.segment_bytes = parse(key, value)?,
            "log.roll.ms" => self.log.segment_ms = parse_limit(key, value)?,
            "log.roll.hours" => self.log.segment_ms = Some(scaled(key, value, 3_600_000)?),
            "log.retention.ms" => self.log.retention_ms = parse_limit(key, value)?,
            "log.retention.minutes" => self.log.retention_ms = scaled_limit(key, value, 60_000)?,
            "log.retention.hours" => self.log.retention_ms = scaled_limit(key, value, 3_600_000)?,
            "log.retention.bytes" => self.log.retention_bytes = parse_limit(key, value)?,
            "log.index.interval.bytes" => self.log.index_interval_bytes = parse(key, value)?,
            "log.index.size.max.bytes" => self.log.max_index_bytes = parse(key, value)?,
            "log.flush.policy" => {
                self.log.flush_policy = match value.trim() {
                    "always" => FlushPolicy::Always,
                    "interval" => FlushPolicy::Interval {
                        ms: self.flush_interval_ms,
                    },
                    _ => return Err(invalid(key, value, "expected `always` or `interval`")),
                }
            }
            "log.flush.interval.ms" => {
                self.flush_interval_ms = parse(key, value)?;
                if let FlushPolicy::Interval { ms } = &mut self.log.flush_policy {
                    *ms = self.flush_interval_ms;
                }
            }
            "log.cleanup.policy" => self.log.compact = parse_cleanup_policy(key, value)?,
            // `log.cache.tail.bytes` is the earlier, per-partition name: it now sets the
            // node-wide window too.
            "log.cache.bytes" | "log.cache.tail.bytes" => {
                self.log.page_cache = PageCache::new(parse_limit(key, value)?)
            }
            "process.roles" => self.roles = parse_roles(key, value)?,
            "controller.listener" | "controller.listeners" => {
                self.controller_listener = strip_scheme(value).to_string()
            }
            "controller.quorum.voters" => self.controller_voters = parse_voters(key, value)?,
            "controller.quorum.election.timeout.ms" => {
                self.election_timeout_ms = parse(key, value)?
            }
            "controller.quorum.heartbeat.interval.ms" => {
                self.quorum_heartbeat_interval_ms = parse(key, value)?
            }
            "controller.snapshot.entries" => self.snapshot_entries = parse(key, value)?,
            "broker.heartbeat.interval.ms" => self.heartbeat_interval_ms = parse(key, value)?,
            "broker.session.timeout.ms" => self.session_timeout_ms = parse(key, value)?,
            "broker.session.connection.grace.ms" => {
                self.session_connection_grace_ms = parse(key, value)?
            }
            "replica.lag.time.max.ms" => self.replica_lag_time_max_ms = parse(key, value)?,
            "replica.fetch.max.bytes" => self.replica_fetch_max_bytes = parse(key, value)?,
            "replica.fetch.response.max.bytes" => {
                self.replica_fetch_response_max_bytes = parse(key, value)?
            }
            "replica.fetch.wait.max.ms" => self.replica_fetch_wait_max_ms = parse(key, value)?,
            "max.incremental.fetch.session.cache.slots" => {
                self.fetch_session_cache_slots = parse(key, value)?
            }
            "min.incremental.fetch.session.eviction.ms" => {
                self.fetch_session_eviction_ms = parse(key, value)?
            }
            "producer.id.expiration.ms" => self.producer_id_expiration_ms = parse(key, value)?,
            "producer.id.expiration.check.interval.ms" => {
                self.producer_id_expiration_check_interval_ms = parse(key, value)?
            }
            "group.min.session.timeout.ms" => {
                self.groups.min_session_timeout_ms = parse(key, value)?
            }
            "group.max.session.timeout.ms" => {
                self.groups.max_session_timeout_ms = parse(key, value)?
            }
            "group.initial.rebalance.delay.ms" => {
                self.groups.initial_rebalance_delay_ms = parse(key, value)?
            }
            "group.max.size" => self.groups.max_size = parse(key, value)?,
            "group.max.id.bytes" => self.groups.max_id_bytes = parse(key, value)?,
            "offsets.topic.num.partitions" => self.groups.offsets_partitions = parse(key, value)?,
            "offsets.topic.replication.factor" => {
                self.groups.offsets_replication_factor = parse(key, value)?
            }
            "offsets.retention.minutes" => {
                let minutes: u64 = parse(key, value)?;
                self.groups.offsets_retention_ms = minutes.saturating_mul(60_000)
            }
            "offsets.retention.ms" => self.groups.offsets_retention_ms = parse(key, value)?,
            "offsets.retention.check.interval.ms" => {
                self.groups.offsets_retention_check_interval_ms = parse(key, value)?
            }
            "offset.metadata.max.bytes" => {
                self.groups.offset_metadata_max_bytes = parse(key, value)?
            }
            "offsets.commit.timeout.ms" => {
                self.groups.offsets_commit_timeout_ms = parse(key, value)?
            }
            "group.lag.metrics.max.series" => {
                self.groups.lag_metrics_max_series = parse(key, value)?
            }
            _ => return Err(ConfigError::Unknown(key.to_string())),
        }
        Ok(())
    }

    /// Reads a TOML file's text: every (possibly nested) key becomes a dotted property.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Toml(e.to_string()))?;
        let mut props = Vec::new();
        flatten("", &toml::Value::Table(table), &mut props)?;
        let mut config = Self::default();
        for (key, value) in props {
            config.set(&key, &value)?;
        }
        Ok(config)
    }

    /// Checks the whole config; call after every `set`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id < 0 {
            return Err(invalid(
                "node.id",
                &self.node_id.to_string(),
                "must be >= 0",
            ));
        }
        parse_addr("listeners", &self.listener)?;
        if let Some(a) = &self.advertised_listener {
            parse_host_port("advertised.listeners", a)?;
        }
        if let Some(m) = &self.metrics_listener {
            parse_addr("metrics.listener", m)?;
        }
        if self.num_partitions < 1 {
            return Err(invalid(
                "num.partitions",
                &self.num_partitions.to_string(),
                "must be >= 1",
            ));
        }
        if self.socket_request_max_bytes < 1024 {
            return Err(invalid(
                "socket.request.max.bytes",
                &self.socket_request_max_bytes.to_string(),
                "must be at least 1024",
            ));
        }
        let g = &self.groups;
        for (key, value, ok) in [
            (
                "group.min.session.timeout.ms",
                g.min_session_timeout_ms as i64,
                g.min_session_timeout_ms >= 1,
            ),
            (
                "group.max.session.timeout.ms",
                g.max_session_timeout_ms as i64,
                g.max_session_timeout_ms >= g.min_session_timeout_ms,
            ),
            (
                "group.initial.rebalance.delay.ms",
                g.initial_rebalance_delay_ms as i64,
                g.initial_rebalance_delay_ms >= 0,
            ),
            ("group.max.size", g.max_size as i64, g.max_size >= 1),
            (
                "group.max.id.bytes",
                g.max_id_bytes as i64,
                (1..=32_767).contains(&g.max_id_bytes),
            ),
            (
                "offsets.topic.num.partitions",
                g.offsets_partitions as i64,
                g.offsets_partitions >= 1,
            ),
            (
                "offsets.topic.replication.factor",
                g.offsets_replication_factor as i64,
                g.offsets_replication_factor >= 1,
            ),
            (
                "offsets.retention.ms",
                g.offsets_retention_ms as i64,
                g.offsets_retention_ms >= 1,
            ),
            (
                "offsets.retention.check.interval.ms",
                g.offsets_retention_check_interval_ms as i64,
                g.offsets_retention_check_interval_ms >= 1,
            ),
            (
                "offsets.commit.timeout.ms",
                g.offsets_commit_timeout_ms as i64,
                g.offsets_commit_timeout_ms >= 1,
            ),
        ] {
            if !ok {
                return Err(invalid(key, &value.to_string(), "out of range"));
            }
        }
        if self.min_insync_replicas < 1 {
            return Err(invalid(
                "min.insync.replicas",
                &self.min_insync_replicas.to_string(),
                "must be >= 1",
            ));
        }
        for (key, value) in [
            ("replica.fetch.max.bytes", self.replica_fetch_max_bytes),
            (
                "replica.fetch.response.max.bytes",
                self.replica_fetch_response_max_bytes,
            ),
        ] {
            if value < 1 {
                return Err(invalid(key, &value.to_string(), "must be >= 1"));
            }
        }
        if !self.roles.broker && !self.roles.controller {
            return Err(invalid("process.roles", "", "a node needs a role"));
        }
        if self.roles.controller {
            parse_addr("controller.listener", &self.controller_listener)?;
        }
        if self.controller_voters.is_empty() && !self.roles.controller {
            return Err(invalid(
                "controller.quorum.voters",
                "",
                "a node without the controller role needs the voters' id@host:port",
            ));
        }
        if self.roles.controller
            && !self.controller_voters.is_empty()
            && self.voter_addr(self.node_id).is_none()
        {
            return Err(invalid(
                "controller.quorum.voters",
                &self.voters_text(),
                format!(
                    "node {} has the controller role but is not one of the voters",
                    self.node_id
                ),
            ));
        }
        if self.quorum_heartbeat_interval_ms == 0
            || self.election_timeout_ms < 2 * self.quorum_heartbeat_interval_ms
        {
            return Err(invalid(
                "controller.quorum.election.timeout.ms",
                &self.election_timeout_ms.to_string(),
                "must be at least twice controller.quorum.heartbeat.interval.ms (> 0)",
            ));
        }
        if self.snapshot_entries == 0 {
            return Err(invalid("controller.snapshot.entries", "0", "must be >= 1"));
        }
        self.log
            .validate()
            .map_err(|e| invalid("log.*", "", e.to_string()))
    }

    /// Whether this node is a controller voter.
    pub fn is_voter(&self) -> bool {
        self.roles.controller
    }

    /// The configured address of voter `id`.
    pub fn voter_addr(&self, id: i32) -> Option<&str> {
        self.controller_voters
            .iter()
            .find(|(v, _)| *v == id)
            .map(|(_, a)| a.as_str())
    }

    fn voters_text(&self) -> String {
        self.controller_voters
            .iter()
            .map(|(id, a)| format!("{id}@{a}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The listener address to bind.
    pub fn listener_addr(&self) -> Result<SocketAddr, ConfigError> {
        parse_addr("listeners", &self.listener)
    }
}

fn parse_roles(key: &str, value: &str) -> Result<Roles, ConfigError> {
    let mut roles = Roles {
        broker: false,
        controller: false,
    };
    for role in value.split(',').map(str::trim) {
        match role {
            "broker" => roles.broker = true,
            "controller" => roles.controller = true,
            _ => return Err(invalid(key, value, "expected broker, controller or both")),
        }
    }
    Ok(roles)
}

/// `id@host:port[,id@host:port...]`: the controller voters, ids distinct.
fn parse_voters(key: &str, value: &str) -> Result<Vec<(i32, String)>, ConfigError> {
    let mut voters: Vec<(i32, String)> = Vec::new();
    for one in value.split(',').map(str::trim).filter(|v| !v.is_empty()) {
        let (id, addr) = one
            .split_once('@')
            .ok_or_else(|| invalid(key, value, "expected id@host:port"))?;
        let id: i32 = id
            .trim()
            .parse()
            .map_err(|_| invalid(key, value, "bad voter id"))?;
        if id < 0 {
            return Err(invalid(key, value, "voter ids are >= 0"));
        }
        parse_host_port(key, addr.trim())?;
        if voters.iter().any(|(v, _)| *v == id) {
            return Err(invalid(key, value, format!("voter {id} is named twice")));
        }
        voters.push((id, addr.trim().to_string()));
    }
    if voters.is_empty() {
        return Err(invalid(key, value, "expected id@host:port"));
    }
    if voters.len() > 9 {
        return Err(invalid(key, value, "at most 9 voters"));
    }
    Ok(voters)
}

fn parse_cleanup_policy(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim() {
        "delete" => Ok(false),
        "compact" | "compact,delete" | "delete,compact" => Ok(true),
        _ => Err(invalid(key, value, "expected delete or compact")),
    }
}

fn strip_scheme(v: &str) -> &str {
    let v = v.trim();
    v.split_once("://").map_or(v, |(_, rest)| rest)
}

fn parse_addr(key: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    use std::net::ToSocketAddrs;
    v.to_socket_addrs()
        .map_err(|e| invalid(key, v, e.to_string()))?
        .next()
        .ok_or_else(|| invalid(key, v, "resolves to no address"))
}

/// `host:port` for advertising: host may be any name.
pub fn parse_host_port(key: &str, v: &str) -> Result<(String, i32), ConfigError> {
    let (host, port) = v
        .rsplit_once(':')
        .ok_or_else(|| invalid(key, v, "expected host:port"))?;
    let port: u16 = port.parse().map_err(|_| invalid(key, v, "bad port"))?;
    Ok((host.trim_matches(['[', ']']).to_string(), i32::from(port)))
}

fn flatten(
    prefix: &str,
    value: &toml::Value,
    out: &mut Vec<(String, String)>,
) -> Result<(), ConfigError> {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out)?;
            }
        }
        toml::Value::String(s) => out.push((prefix.to_string(), s.clone())),
        toml::Value::Integer(i) => out.push((prefix.to_string(), i.to_string())),
        toml::Value::Boolean(b) => out.push((prefix.to_string(), b.to_string())),
        toml::Value::Float(f) => out.push((prefix.to_string(), f.to_string())),
        other => {
            return Err(ConfigError::Toml(format!(
                "`{prefix}`: unsupported value {other}"
            )))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        BrokerConfig::default().validate().unwrap();
    }

    #[test]
    fn toml_dotted_and_quoted_keys_set_kafka_properties() {
        let c = BrokerConfig::from_toml_str(
            r#"
            "node.id" = 7
            listeners = "PLAINTEXT://127.0.0.1:0"
            log.dirs = "/tmp/x"
            log.segment.bytes = 4096
            "log.retention.bytes" = -1
            log.flush.interval.ms = 50
            log.flush.policy = "interval"
            log.cache.bytes = 1048576
            auto.create.topics.enable = true
            "#,
        )
        .unwrap();
        assert_eq!(c.node_id, 7);
        assert_eq!(c.listener, "127.0.0.1:0");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.log.segment_bytes, 4096);
        assert_eq!(c.log.retention_bytes, None);
        assert_eq!(c.log.flush_policy, FlushPolicy::Interval { ms: 50 });
        assert_eq!(c.log.page_cache.limit(), Some(1 << 20));
        assert!(c.auto_create_topics);
        c.validate().unwrap();
        let mut c = BrokerConfig::default();
        assert_eq!(
            c.log.page_cache.limit(),
            Some(keel_storage::page_cache::DEFAULT_CACHE_BYTES)
        );
        c.set("log.cache.bytes", "-1").unwrap();
        assert_eq!(c.log.page_cache.limit(), None);
        c.set("log.cache.tail.bytes", "4096").unwrap();
        assert_eq!(c.log.page_cache.limit(), Some(4096), "the earlier name");
        assert!(c.set("log.cache.bytes", "-2").is_err());
    }

    #[test]
    fn cluster_properties() {
        let mut c = BrokerConfig::default();
        assert!(
            c.is_voter(),
            "the default node is a one-node combined cluster"
        );
        c.set("process.roles", "broker").unwrap();
        assert!(c.validate().is_err(), "a broker alone needs a voter");
        c.set("controller.quorum.voters", "0@127.0.0.1:9093")
            .unwrap();
        c.set("replica.lag.time.max.ms", "500").unwrap();
        c.set("replica.fetch.response.max.bytes", "65536").unwrap();
        assert!(!c.is_voter());
        assert_eq!(c.replica_fetch_response_max_bytes, 65536);
        assert_eq!(c.controller_voters, vec![(0, "127.0.0.1:9093".into())]);
        assert_eq!(c.replica_lag_time_max_ms, 500);
        c.validate().unwrap();
        c.set("process.roles", "controller,broker").unwrap();
        assert_eq!(
            c.roles,
            Roles {
                broker: true,
                controller: true
            }
        );
        assert!(
            c.validate().is_err(),
            "node 1 is a controller, but the voter is node 0"
        );
        c.set("node.id", "0").unwrap();
        c.validate().unwrap();
        c.set("controller.quorum.voters", "0@a:1, 1@b:2,2@c:3")
            .unwrap();
        assert_eq!(c.controller_voters.len(), 3);
        assert_eq!(c.voter_addr(1), Some("b:2"));
        c.validate().unwrap();
        c.set("controller.quorum.election.timeout.ms", "300")
            .unwrap();
        assert!(
            c.validate().is_err(),
            "election timeout below twice the heartbeat"
        );
        for (k, v) in [
            ("process.roles", "router"),
            ("controller.quorum.voters", "127.0.0.1:9093"),
            ("controller.quorum.voters", "0@a:1,0@b:2"),
            ("controller.quorum.voters", "-1@a:1"),
            ("controller.quorum.voters", ""),
            ("replica.fetch.response.max.bytes", "many"),
        ] {
            assert!(BrokerConfig::default().set(k, v).is_err(), "{k}={v}");
        }
        for k in [
            "replica.fetch.max.bytes",
            "replica.fetch.response.max.bytes",
        ] {
            let mut c = BrokerConfig::default();
            c.set(k, "0").unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(k), "{err}");
        }
    }

    #[test]
    fn bad_values_are_named_errors() {
        let cases = [
            ("node.id", "x"),
            ("log.flush.policy", "sometimes"),
            ("auto.create.topics.enable", "yes"),
            ("log.retention.ms", "-5"),
            ("log.retention.hours", "9999999999999999"),
            ("log.roll.hours", "99999999999999999"),
        ];
        for (k, v) in cases {
            let err = BrokerConfig::default().set(k, v).unwrap_err().to_string();
            assert!(err.contains(k), "{err}");
        }
        assert!(matches!(
            BrokerConfig::default().set("no.such.thing", "1"),
            Err(ConfigError::Unknown(_))
        ));
        assert!(BrokerConfig::from_toml_str("= nope").is_err());
    }
}
