//! What the client knows about the cluster: bootstrap, the Metadata cache (brokers, controller,
//! topic → partitions → leader) and a pool of connections keyed by broker address.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{MetadataRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use tracing::debug;

use crate::config::ClientConfig;
use crate::connection::Connection;
use crate::error::ClientError;

/// UNKNOWN_TOPIC_OR_PARTITION.
pub(crate) const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
/// LEADER_NOT_AVAILABLE.
pub(crate) const LEADER_NOT_AVAILABLE: i16 = 5;

/// A broker as listed in Metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    /// `node.id`.
    pub node_id: i32,
    /// Advertised host.
    pub host: String,
    /// Advertised port.
    pub port: i32,
}

/// One partition as listed in Metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Partition index.
    pub partition: i32,
    /// Leader broker id, -1 when there is none.
    pub leader: i32,
    /// Leader epoch, -1 when unknown.
    pub leader_epoch: i32,
    /// Assigned replicas.
    pub replicas: Vec<i32>,
    /// In-sync replicas.
    pub isr: Vec<i32>,
    /// Replicas that are offline.
    pub offline: Vec<i32>,
}

/// A topic as listed in Metadata; `error` is the topic-level error code (0 = none).
#[derive(Debug, Clone)]
pub(crate) struct TopicMeta {
    pub(crate) error: i16,
    /// Sorted by partition index.
    pub(crate) partitions: Vec<PartitionInfo>,
}

impl TopicMeta {
    /// Partitions that currently have a leader.
    pub(crate) fn available(&self) -> Vec<i32> {
        self.partitions
            .iter()
            .filter(|p| p.leader >= 0)
            .map(|p| p.partition)
            .collect()
    }

    pub(crate) fn leader(&self, partition: i32) -> Option<i32> {
        self.partitions
            .iter()
            .find(|p| p.partition == partition)
            .map(|p| p.leader)
            .filter(|&l| l >= 0)
    }
}

#[derive(Default)]
struct MetadataCache {
    brokers: BTreeMap<i32, BrokerInfo>,
    controller: Option<i32>,
    topics: HashMap<String, Arc<TopicMeta>>,
    updated: Option<Instant>,
}

/// The shared cluster view used by admin, producer and consumer.
pub(crate) struct Cluster {
    config: ClientConfig,
    cache: Mutex<MetadataCache>,
    /// Live connections by `host:port`.
    pool: Mutex<HashMap<String, Arc<Connection>>>,
    /// Serializes Metadata refreshes.
    refreshing: tokio::sync::Mutex<()>,
}

impl Cluster {
    /// Validates `config`, connects to the first reachable bootstrap server and loads the
    /// broker list.
    pub(crate) async fn connect(config: ClientConfig) -> Result<Arc<Cluster>, ClientError> {
        config.validate()?;
        let cluster = Arc::new(Cluster {
            config,
            cache: Mutex::new(MetadataCache::default()),
            pool: Mutex::new(HashMap::new()),
            refreshing: tokio::sync::Mutex::new(()),
        });
        cluster.refresh(Some(&[])).await?;
        Ok(cluster)
    }

    pub(crate) fn config(&self) -> &ClientConfig {
        &self.config
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, MetadataCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pooled(&self, addr: &str) -> Option<Arc<Connection>> {
        let pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.get(addr).filter(|c| !c.is_closed()).cloned()
    }

    /// A live connection to `addr`, opened if needed.
    ///
    /// The pool is not locked while connecting, so a slow broker delays only its own callers;
    /// if two callers race to connect, the first connection pooled wins.
    pub(crate) async fn connection_to_addr(
        &self,
        addr: &str,
    ) -> Result<Arc<Connection>, ClientError> {
        if let Some(conn) = self.pooled(addr) {
            return Ok(conn);
        }
        let c = &self.config;
        let conn = Connection::connect(addr, &c.client_id, c.connect_timeout, c.request_timeout);
        let conn = Arc::new(conn.await?);
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        match pool.get(addr).filter(|c| !c.is_closed()) {
            Some(existing) => Ok(Arc::clone(existing)),
            None => {
                pool.insert(addr.to_owned(), Arc::clone(&conn));
                Ok(conn)
            }
        }
    }

    /// A live connection to broker `node_id` (as listed in the last Metadata).
    pub(crate) async fn connection(&self, node_id: i32) -> Result<Arc<Connection>, ClientError> {
        let addr = self
            .cache()
            .brokers
            .get(&node_id)
            .map(|b| format!("{}:{}", b.host, b.port));
        match addr {
            Some(addr) => self.connection_to_addr(&addr).await,
            None => Err(ClientError::kafka(
                LEADER_NOT_AVAILABLE,
                format!("broker {node_id} is not in metadata"),
            )),
        }
    }

    /// A connection to any broker: a pooled one, else a known broker, else a bootstrap server.
    ///
    /// Fails with [`ClientError::NoBroker`] when every candidate refused the connection.
    pub(crate) async fn any_connection(&self) -> Result<Arc<Connection>, ClientError> {
        {
            let pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(conn) = pool.values().find(|c| !c.is_closed()) {
                return Ok(Arc::clone(conn));
            }
        }
        let mut candidates: Vec<String> = {
            let cache = self.cache();
            cache
                .brokers
                .values()
                .map(|b| format!("{}:{}", b.host, b.port))
                .collect()
        };
        for s in &self.config.bootstrap_servers {
            if !candidates.contains(s) {
                candidates.push(s.clone());
            }
        }
        let mut first_other_error = None;
        for addr in &candidates {
            match self.connection_to_addr(addr).await {
                Ok(conn) => return Ok(conn),
                Err(e) => {
                    debug!(addr, error = %e, "connect failed");
                    if !is_refused(&e) && first_other_error.is_none() {
                        first_other_error = Some(e);
                    }
                }
            }
        }
        Err(first_other_error.unwrap_or_else(|| ClientError::NoBroker {
            addrs: self.config.bootstrap_servers.join(", "),
        }))
    }

    /// Connection to the controller if known (admin requests), else to any broker.
    pub(crate) async fn controller_connection(&self) -> Result<Arc<Connection>, ClientError> {
        let controller = self.cache().controller;
        if let Some(id) = controller {
            if let Ok(conn) = self.connection(id).await {
                return Ok(conn);
            }
        }
        self.any_connection().await
    }

    /// Refreshes metadata for `topics` (`None` = all topics, `Some(&[])` = brokers only).
    ///
    /// Tries a second connection once if the first fails with a network error.
    pub(crate) async fn refresh(&self, topics: Option<&[String]>) -> Result<(), ClientError> {
        let _serial = self.refreshing.lock().await;
        let mut last_err = None;
        for _ in 0..2 {
            let conn = self.any_connection().await?;
            match self.refresh_on(&conn, topics).await {
                Ok(()) => return Ok(()),
                Err(e) if e.kafka_code().is_none() && e.is_retriable() => {
                    debug!(addr = conn.addr(), error = %e, "metadata refresh failed");
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or(ClientError::Closed))
    }

    async fn refresh_on(
        &self,
        conn: &Connection,
        topics: Option<&[String]>,
    ) -> Result<(), ClientError> {
        let version = conn.version::<MetadataRequest>()?;
        let mut req = MetadataRequest::default();
        req.topics = topics.map(|names| {
            names
                .iter()
                .map(|n| {
                    let mut t = MetadataRequestTopic::default();
                    t.name = Some(TopicName(StrBytes::from_string(n.clone())));
                    t
                })
                .collect()
        });
        // Only v4+ can ask the broker not to auto-create; older versions must leave it true.
        req.allow_auto_topic_creation = version < 4;
        let resp = conn.send(&req).await?;
        if resp.error_code != 0 {
            return Err(ClientError::kafka(resp.error_code, "metadata"));
        }
        let mut cache = self.cache();
        cache.brokers = resp
            .brokers
            .iter()
            .map(|b| {
                let info = BrokerInfo {
                    node_id: b.node_id.0,
                    host: b.host.to_string(),
                    port: b.port,
                };
                (b.node_id.0, info)
            })
            .collect();
        cache.controller = Some(resp.controller_id.0).filter(|&id| id >= 0);
        if topics.is_none() {
            cache.topics.clear();
        }
        for t in &resp.topics {
            let Some(name) = t.name.as_ref() else {
                continue;
            };
            let mut partitions: Vec<PartitionInfo> = t
                .partitions
                .iter()
                .map(|p| PartitionInfo {
                    partition: p.partition_index,
                    leader: p.leader_id.0,
                    leader_epoch: p.leader_epoch,
                    replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                    isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                    offline: p.offline_replicas.iter().map(|b| b.0).collect(),
                })
                .collect();
            partitions.sort_by_key(|p| p.partition);
            let meta = TopicMeta {
                error: t.error_code,
                partitions,
            };
            cache.topics.insert(name.to_string(), Arc::new(meta));
        }
        cache.updated = Some(Instant::now());
        debug!(
            brokers = cache.brokers.len(),
            topics = resp.topics.len(),
            "metadata refreshed"
        );
        Ok(())
    }

    /// The cached metadata of `topic`, if any.
    pub(crate) fn topic(&self, topic: &str) -> Option<Arc<TopicMeta>> {
        self.cache().topics.get(topic).cloned()
    }

    /// Metadata of `topic`, refreshed when missing, failed or older than `metadata_max_age`.
    /// A topic-level error (e.g. UNKNOWN_TOPIC_OR_PARTITION) is returned as `Err`.
    pub(crate) async fn topic_metadata(&self, topic: &str) -> Result<Arc<TopicMeta>, ClientError> {
        let cached = self.topic(topic).filter(|t| t.error == 0);
        if let (Some(meta), false) = (cached, self.is_stale()) {
            return Ok(meta);
        }
        self.refresh(Some(&[topic.to_owned()])).await?;
        match self.topic(topic) {
            Some(meta) if meta.error == 0 => Ok(meta),
            Some(meta) => Err(ClientError::kafka(meta.error, format!("topic {topic}"))),
            None => Err(ClientError::kafka(
                UNKNOWN_TOPIC_OR_PARTITION,
                format!("topic {topic}"),
            )),
        }
    }

    /// The leader of a partition per the cache, if it has one.
    pub(crate) fn leader(&self, topic: &str, partition: i32) -> Option<i32> {
        self.cache().topics.get(topic)?.leader(partition)
    }

    /// Whether the cache is older than `metadata_max_age`.
    pub(crate) fn is_stale(&self) -> bool {
        self.cache()
            .updated
            .is_none_or(|t| t.elapsed() >= self.config.metadata_max_age)
    }

    /// Brokers by node id, from the last refresh.
    pub(crate) fn brokers(&self) -> Vec<BrokerInfo> {
        self.cache().brokers.values().cloned().collect()
    }

    /// Names of every cached topic, sorted.
    pub(crate) fn topic_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.cache().topics.keys().cloned().collect();
        names.sort();
        names
    }
}

fn is_refused(e: &ClientError) -> bool {
    matches!(e, ClientError::Io { source, .. } if source.kind() == std::io::ErrorKind::ConnectionRefused)
}
