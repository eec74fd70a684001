//! Typed configuration: connection settings shared by every client, and the producer's and
//! consumer's own settings. Each has `Default` and `validate()`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::ClientError;

/// Connection settings shared by [`crate::Admin`], [`crate::Producer`] and [`crate::Consumer`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` of brokers to bootstrap from (`bootstrap.servers`).
    pub bootstrap_servers: Vec<String>,
    /// Sent in every request header (`client.id`).
    pub client_id: String,
    /// How long to wait for a response (`request.timeout.ms`).
    pub request_timeout: Duration,
    /// How long to wait for a TCP connect (`socket.connection.setup.timeout.ms`).
    pub connect_timeout: Duration,
    /// Cached metadata older than this is refreshed (`metadata.max.age.ms`).
    pub metadata_max_age: Duration,
}

impl ClientConfig {
    /// A config for a comma-separated list of `host:port` bootstrap servers.
    pub fn new(bootstrap: &str) -> Self {
        ClientConfig {
            bootstrap_servers: bootstrap
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            ..ClientConfig::default()
        }
    }

    /// Checks the settings before any connection is made.
    pub fn validate(&self) -> Result<(), ClientError> {
        if self.bootstrap_servers.is_empty() {
            return Err(ClientError::Config("bootstrap_servers is empty".into()));
        }
        for s in &self.bootstrap_servers {
            let port_ok = s
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(ClientError::Config(format!(
                    "bootstrap server {s:?} is not host:port"
                )));
            }
        }
        if self.request_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(ClientError::Config("timeouts must be positive".into()));
        }
        Ok(())
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            bootstrap_servers: vec!["127.0.0.1:9092".to_owned()],
            client_id: "keel-client".to_owned(),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            metadata_max_age: Duration::from_secs(300),
        }
    }
}

/// How many replicas must acknowledge a produce request (`acks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// `acks=0`: no response; deliveries resolve once written, with offset -1.
    None,
    /// `acks=1`: the leader has appended.
    Leader,
    /// `acks=all` (-1): every in-sync replica has appended.
    All,
}

impl Acks {
    /// The wire value.
    pub fn as_i16(self) -> i16 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }
}

impl FromStr for Acks {
    type Err = ClientError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "0" | "none" => Ok(Acks::None),
            "1" | "leader" => Ok(Acks::Leader),
            "-1" | "all" => Ok(Acks::All),
            _ => Err(ClientError::Config(format!(
                "acks {s:?} is not one of 0, 1, all"
            ))),
        }
    }
}

/// Record batch compression (`compression.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Uncompressed.
    #[default]
    None,
    /// gzip.
    Gzip,
    /// Snappy (Kafka's xerial framing).
    Snappy,
    /// LZ4 frame.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    pub(crate) fn to_protocol(self) -> kafka_protocol::records::Compression {
        use kafka_protocol::records::Compression as C;
        match self {
            Compression::None => C::None,
            Compression::Gzip => C::Gzip,
            Compression::Snappy => C::Snappy,
            Compression::Lz4 => C::Lz4,
            Compression::Zstd => C::Zstd,
        }
    }

    /// Every variant, for tests and CLI help.
    pub const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];
}

impl FromStr for Compression {
    type Err = ClientError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "none" | "uncompressed" => Ok(Compression::None),
            "gzip" => Ok(Compression::Gzip),
            "snappy" => Ok(Compression::Snappy),
            "lz4" => Ok(Compression::Lz4),
            "zstd" => Ok(Compression::Zstd),
            _ => Err(ClientError::Config(format!(
                "compression {s:?} is not one of none, gzip, snappy, lz4, zstd"
            ))),
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        })
    }
}

/// Producer settings; names follow the Java producer's properties.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// `acks`.
    pub acks: Acks,
    /// `linger.ms`: how long a non-full batch waits for more records.
    pub linger: Duration,
    /// `batch.size`: bytes per partition batch.
    pub batch_size: usize,
    /// `max.request.size`: bytes per produce request (and per record).
    pub max_request_size: usize,
    /// `compression.type`.
    pub compression: Compression,
    /// `retries`: re-sends of a batch after retriable errors.
    pub retries: u32,
    /// `retry.backoff.ms`.
    pub retry_backoff: Duration,
    /// `max.in.flight.requests.per.connection`.
    pub max_in_flight_per_broker: usize,
    /// `request.timeout.ms` for produce requests.
    pub request_timeout: Duration,
    /// `buffer.memory`: `send()` waits while this many bytes are queued or unacknowledged.
    pub buffer_memory: usize,
    /// `enable.idempotence`: the broker writes each batch once however often it is retried,
    /// and in order. On by default, as in the Java client; it applies with `acks = All`
    /// (with fewer acks it is off, as Java turns it off when it is not set explicitly).
    pub enable_idempotence: bool,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: Acks::All,
            linger: Duration::from_millis(5),
            batch_size: 1024 * 1024,
            max_request_size: 1024 * 1024,
            compression: Compression::None,
            retries: 5,
            retry_backoff: Duration::from_millis(100),
            max_in_flight_per_broker: 5,
            request_timeout: Duration::from_secs(30),
            buffer_memory: 64 * 1024 * 1024,
            enable_idempotence: true,
        }
    }
}

impl ProducerConfig {
    /// Whether batches carry a producer id and sequence numbers.
    pub fn idempotent(&self) -> bool {
        self.enable_idempotence && self.acks == Acks::All
    }

    /// Checks the settings before the producer starts.
    pub fn validate(&self) -> Result<(), ClientError> {
        if self.batch_size == 0 || self.max_request_size == 0 {
            return Err(ClientError::Config(
                "batch_size and max_request_size must be positive".into(),
            ));
        }
        if self.max_in_flight_per_broker == 0 {
            return Err(ClientError::Config(
                "max_in_flight_per_broker must be at least 1".into(),
            ));
        }
        if self.buffer_memory < self.max_request_size {
            return Err(ClientError::Config(format!(
                "buffer_memory {} must be at least max_request_size {}",
                self.buffer_memory, self.max_request_size
            )));
        }
        if self.buffer_memory > u32::MAX as usize {
            return Err(ClientError::Config(
                "buffer_memory must fit in 4 GiB".into(),
            ));
        }
        if self.request_timeout.is_zero() {
            return Err(ClientError::Config(
                "request_timeout must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// Consumer (fetch) settings; names follow the Java consumer's properties.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// `fetch.max.wait.ms`: how long the broker may hold a fetch waiting for `min_bytes`.
    pub max_wait: Duration,
    /// `fetch.min.bytes`.
    pub min_bytes: i32,
    /// `fetch.max.bytes`.
    pub max_bytes: i32,
    /// `max.partition.fetch.bytes`.
    pub max_partition_bytes: i32,
    /// `isolation.level`: 0 read_uncommitted, 1 read_committed.
    pub isolation_level: i8,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            max_wait: Duration::from_millis(500),
            min_bytes: 1,
            max_bytes: 50 * 1024 * 1024,
            max_partition_bytes: 1024 * 1024,
            isolation_level: 0,
        }
    }
}

impl ConsumerConfig {
    /// Checks the settings before the consumer starts.
    pub fn validate(&self) -> Result<(), ClientError> {
        if self.min_bytes < 0 || self.max_bytes <= 0 || self.max_partition_bytes <= 0 {
            return Err(ClientError::Config(
                "min_bytes must be >= 0, max_bytes and max_partition_bytes > 0".into(),
            ));
        }
        if !(0..=1).contains(&self.isolation_level) {
            return Err(ClientError::Config(format!(
                "isolation_level {} is not 0 or 1",
                self.isolation_level
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_list_is_split_and_trimmed() {
        let c = ClientConfig::new("a:1, b:2,,");
        assert_eq!(c.bootstrap_servers, vec!["a:1", "b:2"]);
        assert!(c.validate().is_ok());
        assert!(ClientConfig::new("nohost").validate().is_err());
        assert!(ClientConfig::new("").validate().is_err());
    }

    #[test]
    fn compression_parses_and_displays() {
        for c in Compression::ALL {
            assert_eq!(c.to_string().parse::<Compression>().unwrap(), c);
        }
        assert!("brotli".parse::<Compression>().is_err());
        assert_eq!("all".parse::<Acks>().unwrap().as_i16(), -1);
    }

    #[test]
    fn defaults_validate() {
        assert!(ProducerConfig::default().validate().is_ok());
        assert!(ConsumerConfig::default().validate().is_ok());
        let bad = ProducerConfig {
            max_in_flight_per_broker: 0,
            ..ProducerConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}

/// A group consumer's settings ([`crate::Consumer::subscribe`]), with the Java client's
/// names and defaults.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// `group.id`
    pub group_id: String,
    /// `group.instance.id`: a static member (KIP-345) keeps its place across restarts
    /// within its session and does not leave the group when it closes.
    pub instance_id: Option<String>,
    /// `session.timeout.ms`: the coordinator drops a member silent this long.
    pub session_timeout: Duration,
    /// `max.poll.interval.ms`, sent as the rebalance timeout: how long a rebalance waits for
    /// members to rejoin.
    pub rebalance_timeout: Duration,
    /// `heartbeat.interval.ms`
    pub heartbeat_interval: Duration,
    /// `partition.assignment.strategy`, in order of preference (the group uses one every
    /// member supports).
    pub assignors: Vec<crate::group::Assignor>,
    /// `enable.auto.commit`: positions are committed every `auto_commit_interval`, before
    /// partitions are revoked and when the consumer closes.
    pub auto_commit: bool,
    /// `auto.commit.interval.ms`
    pub auto_commit_interval: Duration,
    /// `auto.offset.reset`: where a partition without a committed offset starts
    /// ([`crate::Offset::Earliest`] or [`crate::Offset::Latest`]).
    pub auto_offset_reset: crate::Offset,
}

impl GroupConfig {
    /// A group consumer of `group_id` with the defaults.
    pub fn new(group_id: impl Into<String>) -> GroupConfig {
        GroupConfig {
            group_id: group_id.into(),
            instance_id: None,
            session_timeout: Duration::from_secs(45),
            rebalance_timeout: Duration::from_secs(300),
            heartbeat_interval: Duration::from_secs(3),
            assignors: vec![
                crate::group::Assignor::Range,
                crate::group::Assignor::CooperativeSticky,
            ],
            auto_commit: true,
            auto_commit_interval: Duration::from_secs(5),
            auto_offset_reset: crate::Offset::Latest,
        }
    }

    /// Checks the settings before the consumer subscribes.
    pub fn validate(&self) -> Result<(), ClientError> {
        if self.group_id.is_empty() {
            return Err(ClientError::Config("group_id must not be empty".into()));
        }
        if self.assignors.is_empty() {
            return Err(ClientError::Config(
                "at least one assignor is needed".into(),
            ));
        }
        if self.heartbeat_interval >= self.session_timeout {
            return Err(ClientError::Config(
                "heartbeat_interval must be shorter than session_timeout".into(),
            ));
        }
        if !matches!(
            self.auto_offset_reset,
            crate::Offset::Earliest | crate::Offset::Latest
        ) {
            return Err(ClientError::Config(
                "auto_offset_reset must be Earliest or Latest".into(),
            ));
        }
        Ok(())
    }
}
