//! Cluster administration: topics (create, delete, list, describe), brokers and offsets.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_producers_request::TopicRequest;
use kafka_protocol::messages::{
    CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest, DescribeProducersRequest,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use tracing::debug;

use crate::cluster::{BrokerInfo, Cluster, PartitionInfo};
use crate::config::ClientConfig;
use crate::error::{kafka_error_name, ClientError};
use crate::offsets::{resolve_offsets, Offset};

/// NOT_CONTROLLER: an admin request reached a broker that is no longer the controller.
const NOT_CONTROLLER: i16 = 41;
/// DescribeConfigs resource type of a topic.
const RESOURCE_TOPIC: i8 = 2;
/// How long `create_topics` waits for new topics to get leaders.
const CREATE_SETTLE_MAX: Duration = Duration::from_secs(10);
const ADMIN_ATTEMPTS: u32 = 3;
const ADMIN_BACKOFF: Duration = Duration::from_millis(100);

/// A topic to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Partition count (-1 = broker default).
    pub partitions: i32,
    /// Replication factor (-1 = broker default).
    pub replication_factor: i16,
    /// Topic configs, e.g. `("retention.ms", "60000")`.
    pub configs: Vec<(String, String)>,
}

/// The idempotent producers of one partition, as its leader describes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionProducers {
    pub partition: i32,
    /// The leader's error for this partition (e.g. `NOT_LEADER_OR_FOLLOWER`), if any.
    pub error: Option<String>,
    pub producers: Vec<ProducerInfo>,
}

/// One idempotent producer's state on a partition's leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerInfo {
    pub producer_id: i64,
    pub epoch: i32,
    /// The last sequence number of its last batch.
    pub last_sequence: i32,
    /// The max timestamp of its last batch.
    pub last_timestamp: i64,
}

/// A topic as described by Metadata and DescribeConfigs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    /// Topic name.
    pub name: String,
    /// Partitions, sorted by index.
    pub partitions: Vec<PartitionInfo>,
    /// Configs from DescribeConfigs, sorted by name; empty if that request failed.
    pub configs: Vec<(String, String)>,
    /// The topic-level error name (e.g. `UNKNOWN_TOPIC_OR_PARTITION`), if any.
    pub error: Option<String>,
}

/// Administrative client.
pub struct Admin {
    cluster: Arc<Cluster>,
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

fn timeout_ms(d: Duration) -> i32 {
    d.as_millis().min(i32::MAX as u128) as i32
}

impl Admin {
    pub(crate) fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Connects to the cluster.
    pub async fn new(client: ClientConfig) -> Result<Admin, ClientError> {
        Ok(Admin {
            cluster: Cluster::connect(client).await?,
        })
    }

    /// Creates topics; fails with the first per-topic error (e.g. TOPIC_ALREADY_EXISTS), named
    /// with its topic. On success, waits (up to 10 s) until every new partition has a leader.
    pub async fn create_topics(&self, topics: &[TopicSpec]) -> Result<(), ClientError> {
        let mut req = CreateTopicsRequest::default();
        req.timeout_ms = timeout_ms(self.cluster.config().request_timeout);
        req.topics = topics
            .iter()
            .map(|spec| {
                let mut t = CreatableTopic::default();
                t.name = TopicName(str_bytes(&spec.name));
                t.num_partitions = spec.partitions;
                t.replication_factor = spec.replication_factor;
                t.configs = spec
                    .configs
                    .iter()
                    .map(|(k, v)| {
                        let mut c = CreatableTopicConfig::default();
                        c.name = str_bytes(k);
                        c.value = Some(str_bytes(v));
                        c
                    })
                    .collect();
                t
            })
            .collect();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let resp = self.cluster.controller_connection().await?.send(&req).await;
            let err = match resp {
                Ok(resp) => {
                    let failed = resp.topics.iter().find(|t| t.error_code != 0);
                    match failed {
                        None => break,
                        Some(t) => ClientError::kafka_with_message(
                            t.error_code,
                            format!("create topic {}", t.name.0),
                            t.error_message.as_deref(),
                        ),
                    }
                }
                Err(e) => e,
            };
            let retry = err.kafka_code() == Some(NOT_CONTROLLER)
                || (err.kafka_code().is_none() && err.is_retriable());
            if !retry || attempt >= ADMIN_ATTEMPTS {
                return Err(err);
            }
            tokio::time::sleep(ADMIN_BACKOFF).await;
            self.cluster.refresh(Some(&[])).await?;
        }
        let names: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
        self.wait_for_leaders(&names).await;
        Ok(())
    }

    /// Polls metadata until every partition of `names` has a leader, for at most 10 s.
    /// New topics that are slow to settle are not an error: producers retry.
    async fn wait_for_leaders(&self, names: &[String]) {
        let deadline =
            Instant::now() + CREATE_SETTLE_MAX.min(self.cluster.config().request_timeout);
        while Instant::now() < deadline {
            if self.cluster.refresh(Some(names)).await.is_ok() {
                let settled = names.iter().all(|n| {
                    self.cluster.topic(n).is_some_and(|t| {
                        t.error == 0
                            && !t.partitions.is_empty()
                            && t.partitions.iter().all(|p| p.leader >= 0)
                    })
                });
                if settled {
                    return;
                }
            }
            tokio::time::sleep(ADMIN_BACKOFF).await;
        }
        debug!(?names, "created topics have no leader yet");
    }

    /// Deletes topics; fails with the first per-topic error, named with its topic.
    pub async fn delete_topics(&self, names: &[String]) -> Result<(), ClientError> {
        let conn = self.cluster.controller_connection().await?;
        let version = conn.version::<DeleteTopicsRequest>()?;
        let mut req = DeleteTopicsRequest::default();
        req.timeout_ms = timeout_ms(self.cluster.config().request_timeout);
        if version >= 6 {
            req.topics = names
                .iter()
                .map(|n| {
                    let mut t = DeleteTopicState::default();
                    t.name = Some(TopicName(str_bytes(n)));
                    t
                })
                .collect();
        } else {
            req.topic_names = names.iter().map(|n| TopicName(str_bytes(n))).collect();
        }
        let resp = conn.send(&req).await?;
        if let Some(t) = resp.responses.iter().find(|t| t.error_code != 0) {
            let name = t
                .name
                .as_ref()
                .map_or_else(String::new, |n| n.0.to_string());
            return Err(ClientError::kafka_with_message(
                t.error_code,
                format!("delete topic {name}"),
                t.error_message.as_deref(),
            ));
        }
        Ok(())
    }

    /// Names of all topics, sorted.
    pub async fn list_topics(&self) -> Result<Vec<String>, ClientError> {
        self.cluster.refresh(None).await?;
        let names = self.cluster.topic_names();
        Ok(names
            .into_iter()
            .filter(|n| self.cluster.topic(n).is_some_and(|t| t.error == 0))
            .collect())
    }

    /// Partitions and configs of each topic. A missing topic is a description with `error`
    /// set, not an `Err`.
    pub async fn describe_topics(
        &self,
        names: &[String],
    ) -> Result<Vec<TopicDescription>, ClientError> {
        self.cluster.refresh(Some(names)).await?;
        let mut out: Vec<TopicDescription> = names
            .iter()
            .map(|name| match self.cluster.topic(name) {
                Some(t) if t.error == 0 => TopicDescription {
                    name: name.clone(),
                    partitions: t.partitions.clone(),
                    configs: Vec::new(),
                    error: None,
                },
                other => TopicDescription {
                    name: name.clone(),
                    partitions: Vec::new(),
                    configs: Vec::new(),
                    error: Some(kafka_error_name(other.map_or(3, |t| t.error)).to_owned()),
                },
            })
            .collect();
        let found: Vec<String> = out
            .iter()
            .filter(|d| d.error.is_none())
            .map(|d| d.name.clone())
            .collect();
        match self.topic_configs(&found).await {
            Ok(mut configs) => {
                for d in &mut out {
                    d.configs = configs.remove(&d.name).unwrap_or_default();
                }
            }
            Err(e) => debug!(error = %e, "describe configs failed"),
        }
        Ok(out)
    }

    /// The idempotent producers each partition's leader keeps state for (DescribeProducers).
    /// A partition whose leader answered an error has it in `error` and no producers.
    pub async fn describe_producers(
        &self,
        topic: &str,
    ) -> Result<Vec<PartitionProducers>, ClientError> {
        let meta = self.cluster.topic_metadata(topic).await?;
        let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        let mut out = Vec::new();
        for p in &meta.partitions {
            match meta.leader(p.partition) {
                Some(l) => by_leader.entry(l).or_default().push(p.partition),
                None => out.push(PartitionProducers {
                    partition: p.partition,
                    error: Some(kafka_error_name(5).to_owned()),
                    producers: Vec::new(),
                }),
            }
        }
        for (leader, partitions) in by_leader {
            let conn = self.cluster.connection(leader).await?;
            let req = DescribeProducersRequest::default()
                .with_topics(vec![TopicRequest::default()
                    .with_name(TopicName(str_bytes(topic)))
                    .with_partition_indexes(partitions)]);
            let resp = conn.send(&req).await?;
            for p in resp.topics.into_iter().flat_map(|t| t.partitions) {
                out.push(PartitionProducers {
                    partition: p.partition_index,
                    error: (p.error_code != 0).then(|| kafka_error_name(p.error_code).to_owned()),
                    producers: p
                        .active_producers
                        .iter()
                        .map(|s| ProducerInfo {
                            producer_id: s.producer_id.0,
                            epoch: s.producer_epoch,
                            last_sequence: s.last_sequence,
                            last_timestamp: s.last_timestamp,
                        })
                        .collect(),
                });
            }
        }
        out.sort_by_key(|p| p.partition);
        Ok(out)
    }

    async fn topic_configs(
        &self,
        names: &[String],
    ) -> Result<HashMap<String, Vec<(String, String)>>, ClientError> {
        if names.is_empty() {
            return Ok(HashMap::new());
        }
        let mut req = DescribeConfigsRequest::default();
        req.resources = names
            .iter()
            .map(|n| {
                let mut r = DescribeConfigsResource::default();
                r.resource_type = RESOURCE_TOPIC;
                r.resource_name = str_bytes(n);
                r.configuration_keys = None;
                r
            })
            .collect();
        let resp = self.cluster.any_connection().await?.send(&req).await?;
        let mut out = HashMap::new();
        for r in resp.results.into_iter().filter(|r| r.error_code == 0) {
            let configs: BTreeMap<String, String> = r
                .configs
                .into_iter()
                .filter_map(|c| Some((c.name.to_string(), c.value?.to_string())))
                .collect();
            out.insert(r.resource_name.to_string(), configs.into_iter().collect());
        }
        Ok(out)
    }

    /// Brokers in the cluster, sorted by node id.
    pub async fn brokers(&self) -> Result<Vec<BrokerInfo>, ClientError> {
        self.cluster.refresh(Some(&[])).await?;
        Ok(self.cluster.brokers())
    }

    /// The offset `spec` resolves to on one partition (ListOffsets; `At(n)` is `n`).
    pub async fn list_offsets(
        &self,
        topic: &str,
        partition: i32,
        spec: Offset,
    ) -> Result<i64, ClientError> {
        let offsets = resolve_offsets(&self.cluster, topic, &[partition], spec, 0).await?;
        offsets
            .get(&partition)
            .copied()
            .ok_or_else(|| ClientError::kafka(3, format!("list offsets of {topic}-{partition}")))
    }
}
