//! The consumer: manual assignment (no consumer groups), positions kept in memory, and one
//! round of long-polling Fetch requests per `poll`, one request per leader broker.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::Stream;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use tracing::debug;

use crate::cluster::Cluster;
use crate::config::{ClientConfig, ConsumerConfig};
use crate::error::ClientError;
use crate::offsets::resolve_offsets;
pub use crate::offsets::Offset;
use crate::record::{decode_fetched, ConsumerRecord};

/// OFFSET_OUT_OF_RANGE.
const OFFSET_OUT_OF_RANGE: i16 = 1;
/// Pause after a poll that could fetch nothing because leaders were unknown.
const NO_LEADER_BACKOFF: Duration = Duration::from_millis(100);

type TopicPartition = (String, i32);

/// An async consumer of explicitly assigned partitions.
pub struct Consumer {
    cluster: Arc<Cluster>,
    config: ConsumerConfig,
    positions: BTreeMap<TopicPartition, i64>,
    /// The high watermark in the last successful fetch answer for each partition.
    high_watermarks: BTreeMap<TopicPartition, i64>,
}

impl Consumer {
    /// Connects to the cluster. Nothing is assigned yet.
    pub async fn new(
        client: ClientConfig,
        config: ConsumerConfig,
    ) -> Result<Consumer, ClientError> {
        config.validate()?;
        Ok(Consumer {
            cluster: Cluster::connect(client).await?,
            config,
            positions: BTreeMap::new(),
            high_watermarks: BTreeMap::new(),
        })
    }

    /// Adds `partitions` of `topic` to the assignment, positioned at `start`.
    /// Fails if the topic or a partition does not exist.
    pub async fn assign(
        &mut self,
        topic: &str,
        partitions: &[i32],
        start: Offset,
    ) -> Result<(), ClientError> {
        let meta = self.cluster.topic_metadata(topic).await?;
        if let Some(p) = partitions
            .iter()
            .find(|&&p| !meta.partitions.iter().any(|i| i.partition == p))
        {
            return Err(ClientError::kafka(
                3,
                format!("topic {topic} has no partition {p}"),
            ));
        }
        let offsets = resolve_offsets(
            &self.cluster,
            topic,
            partitions,
            start,
            self.config.isolation_level,
        )
        .await?;
        for (p, offset) in offsets {
            self.positions.insert((topic.to_owned(), p), offset);
        }
        Ok(())
    }

    /// Assigns every partition of `topic`; returns them.
    pub async fn assign_all(
        &mut self,
        topic: &str,
        start: Offset,
    ) -> Result<Vec<i32>, ClientError> {
        let meta = self.cluster.topic_metadata(topic).await?;
        let partitions: Vec<i32> = meta.partitions.iter().map(|p| p.partition).collect();
        self.assign(topic, &partitions, start).await?;
        Ok(partitions)
    }

    /// Moves an assigned partition's position.
    pub async fn seek(
        &mut self,
        topic: &str,
        partition: i32,
        offset: Offset,
    ) -> Result<(), ClientError> {
        let key = (topic.to_owned(), partition);
        if !self.positions.contains_key(&key) {
            return Err(ClientError::Config(format!(
                "seek on {topic}-{partition}, which is not assigned"
            )));
        }
        let offsets = resolve_offsets(
            &self.cluster,
            topic,
            &[partition],
            offset,
            self.config.isolation_level,
        )
        .await?;
        if let Some(&o) = offsets.get(&partition) {
            self.positions.insert(key, o);
        }
        Ok(())
    }

    /// The next offset to be read from a partition, if it is assigned.
    pub fn position(&self, topic: &str, partition: i32) -> Option<i64> {
        self.positions.get(&(topic.to_owned(), partition)).copied()
    }

    /// The high watermark the partition's leader reported in the last fetch that returned
    /// without an error for it; `None` before the first such fetch.
    pub fn high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        self.high_watermarks
            .get(&(topic.to_owned(), partition))
            .copied()
    }

    /// The assigned partitions, sorted.
    pub fn assignment(&self) -> Vec<(String, i32)> {
        self.positions.keys().cloned().collect()
    }

    /// One round of Fetch requests, one per leader, sent concurrently; each waits up to
    /// `max_wait` for `min_bytes`. Returns the records at or after each position (possibly
    /// none) and advances the positions past them (and past control batches).
    ///
    /// Retriable partition errors (e.g. NOT_LEADER_OR_FOLLOWER) refresh metadata and yield no
    /// records for that partition this round; OFFSET_OUT_OF_RANGE and other errors are `Err`.
    pub async fn poll(&mut self) -> Result<Vec<ConsumerRecord>, ClientError> {
        if self.positions.is_empty() {
            return Err(ClientError::Config(
                "no partitions assigned: call assign first".into(),
            ));
        }
        let mut by_leader = self.group_by_leader();
        let led: usize = by_leader.values().map(Vec::len).sum();
        if led < self.positions.len() || self.cluster.is_stale() {
            self.refresh_assigned().await;
            by_leader = self.group_by_leader();
        }
        if by_leader.is_empty() {
            tokio::time::sleep(NO_LEADER_BACKOFF).await;
            return Ok(Vec::new());
        }
        let fetches = by_leader
            .iter()
            .map(|(&leader, parts)| self.fetch(leader, parts));
        let results = join_all(fetches).await;
        let mut out = Vec::new();
        let mut refresh = false;
        for result in results {
            match result {
                Ok(resp) => refresh |= self.absorb(resp, &mut out)?,
                Err(e) if e.is_retriable() => {
                    debug!(error = %e, "fetch failed");
                    refresh = true;
                }
                Err(e) => return Err(e),
            }
        }
        if refresh {
            self.refresh_assigned().await;
            if out.is_empty() {
                tokio::time::sleep(NO_LEADER_BACKOFF).await;
            }
        }
        Ok(out)
    }

    /// Assigned partitions grouped by leader; partitions without a known leader are left out.
    fn group_by_leader(&self) -> BTreeMap<i32, Vec<(TopicPartition, i64)>> {
        let mut by_leader: BTreeMap<i32, Vec<(TopicPartition, i64)>> = BTreeMap::new();
        for ((topic, partition), &offset) in &self.positions {
            if let Some(leader) = self.cluster.leader(topic, *partition) {
                by_leader
                    .entry(leader)
                    .or_default()
                    .push(((topic.clone(), *partition), offset));
            }
        }
        by_leader
    }

    async fn refresh_assigned(&self) {
        let mut topics: Vec<String> = self.positions.keys().map(|(t, _)| t.clone()).collect();
        topics.dedup();
        if let Err(e) = self.cluster.refresh(Some(&topics)).await {
            debug!(error = %e, "consumer metadata refresh failed");
        }
    }

    async fn fetch(
        &self,
        leader: i32,
        parts: &[(TopicPartition, i64)],
    ) -> Result<FetchResponse, ClientError> {
        let conn = self.cluster.connection(leader).await?;
        let c = &self.config;
        let mut req = FetchRequest::default();
        req.max_wait_ms = c.max_wait.as_millis().min(i32::MAX as u128) as i32;
        req.min_bytes = c.min_bytes;
        req.max_bytes = c.max_bytes;
        req.isolation_level = c.isolation_level;
        for ((topic, partition), offset) in parts {
            let mut p = FetchPartition::default();
            p.partition = *partition;
            p.fetch_offset = *offset;
            p.partition_max_bytes = c.max_partition_bytes;
            match req.topics.iter_mut().find(|t| *t.topic.0 == **topic) {
                Some(t) => t.partitions.push(p),
                None => {
                    let mut t = FetchTopic::default();
                    t.topic = TopicName(StrBytes::from_string(topic.clone()));
                    t.partitions.push(p);
                    req.topics.push(t);
                }
            }
        }
        let timeout = self.cluster.config().request_timeout + c.max_wait;
        conn.send_with_timeout(&req, timeout).await
    }

    /// Decodes one fetch response into `out`, advancing positions. Returns whether metadata
    /// should be refreshed.
    fn absorb(
        &mut self,
        resp: FetchResponse,
        out: &mut Vec<ConsumerRecord>,
    ) -> Result<bool, ClientError> {
        if resp.error_code != 0 {
            let err = ClientError::kafka(resp.error_code, "fetch");
            return if err.is_retriable() {
                Ok(true)
            } else {
                Err(err)
            };
        }
        let mut refresh = false;
        for topic in resp.responses {
            let name = topic.topic.0.to_string();
            for p in topic.partitions {
                let key = (name.clone(), p.partition_index);
                let Some(&position) = self.positions.get(&key) else {
                    continue;
                };
                if p.error_code != 0 {
                    let context =
                        format!("fetch {name}-{} at offset {position}", p.partition_index);
                    let err = ClientError::kafka(p.error_code, context);
                    if p.error_code == OFFSET_OUT_OF_RANGE || !err.is_retriable() {
                        return Err(err);
                    }
                    debug!(topic = name, partition = p.partition_index, error = %err, "fetch partition error");
                    refresh = true;
                    continue;
                }
                self.high_watermarks.insert(key.clone(), p.high_watermark);
                let Some(data) = p.records else {
                    continue;
                };
                let decoded = decode_fetched(&name, p.partition_index, data, position)?;
                if let Some(next) = decoded.next_offset.filter(|&n| n > position) {
                    self.positions.insert(key, next);
                }
                out.extend(decoded.records);
            }
        }
        Ok(refresh)
    }

    /// The consumer as an endless stream of records. An error is yielded as an item and
    /// polling continues afterwards; stop on errors you cannot handle (e.g. OFFSET_OUT_OF_RANGE
    /// repeats until you seek).
    pub fn into_stream(self) -> impl Stream<Item = Result<ConsumerRecord, ClientError>> {
        futures_util::stream::unfold(
            (self, VecDeque::new()),
            |(mut consumer, mut buffered)| async move {
                loop {
                    if let Some(record) = buffered.pop_front() {
                        return Some((Ok(record), (consumer, buffered)));
                    }
                    match consumer.poll().await {
                        Ok(records) => buffered.extend(records),
                        Err(e) => return Some((Err(e), (consumer, buffered))),
                    }
                }
            },
        )
    }
}
