//! The consumer: manual assignment or a group subscription, positions kept in memory, and
//! one round of long-polling Fetch requests per `poll`, one request per leader broker.
//!
//! With [`Consumer::subscribe`] the group decides the assignment: `poll` (re)joins when the
//! group rebalances, starts newly assigned partitions at their committed offsets (else at
//! `auto_offset_reset`), tells the rebalance listener, and auto-commits positions. With the
//! `range` assignor every partition is revoked before a rejoin (after a commit); with
//! `cooperative-sticky` only those that move are, and fetching goes on meanwhile.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use futures_util::Stream;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use tracing::debug;

use crate::cluster::Cluster;
use crate::config::{ClientConfig, ConsumerConfig, GroupConfig};
use crate::error::ClientError;
use crate::fetch_session::{is_session_error, Plan, SessionBuilder, Want};
use crate::group::member::Membership;
use crate::group::Rebalance;
use crate::offsets::resolve_offsets;
pub use crate::offsets::Offset;
use crate::record::{decode_fetched, ConsumerRecord};

/// OFFSET_OUT_OF_RANGE.
const OFFSET_OUT_OF_RANGE: i16 = 1;
/// Pause after a poll that could fetch nothing because leaders were unknown.
const NO_LEADER_BACKOFF: Duration = Duration::from_millis(100);

type TopicPartition = (String, i32);

/// A consumer's fetch state of one partition: its position (no epochs: a consumer takes
/// what the leader has below its high watermark).
fn consumer_want(offset: i64, max_bytes: i32) -> Want {
    Want {
        fetch_offset: offset,
        max_bytes,
        current_leader_epoch: -1,
        last_fetched_epoch: -1,
        log_start_offset: -1,
    }
}

/// A listener of assignment changes (see [`Consumer::on_rebalance`]); behind a mutex so
/// the consumer stays `Sync`.
type Listener = std::sync::Mutex<Box<dyn FnMut(Rebalance) + Send>>;

/// An async consumer of assigned partitions, or of a group's share of subscribed topics.
pub struct Consumer {
    cluster: Arc<Cluster>,
    config: ConsumerConfig,
    positions: BTreeMap<TopicPartition, i64>,
    /// The high watermark in the last successful fetch answer for each partition.
    high_watermarks: BTreeMap<TopicPartition, i64>,
    /// Set by [`Consumer::subscribe`].
    group: Option<Subscribed>,
    /// One fetch session (KIP-227) per leader broker: after a full first fetch, a request
    /// names only partitions whose position moved, and the answer only partitions with
    /// something new.
    sessions: BTreeMap<i32, SessionBuilder<TopicPartition>>,
}

/// A group subscription's state.
struct Subscribed {
    membership: Membership,
    topics: Vec<String>,
    config: GroupConfig,
    listener: Option<Listener>,
    last_commit: Instant,
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
            group: None,
            sessions: BTreeMap::new(),
        })
    }

    /// Joins `config.group_id` for `topics`: the group assigns the partitions from the next
    /// [`Consumer::poll`] on. Not with a manual assignment.
    pub async fn subscribe(
        &mut self,
        topics: &[&str],
        config: GroupConfig,
    ) -> Result<(), ClientError> {
        config.validate()?;
        if !self.positions.is_empty() && self.group.is_none() {
            return Err(ClientError::Config(
                "subscribe after assign: a consumer uses one or the other".into(),
            ));
        }
        if topics.is_empty() {
            return Err(ClientError::Config(
                "subscribe to at least one topic".into(),
            ));
        }
        self.group = Some(Subscribed {
            membership: Membership::new(self.cluster.clone(), config.clone()),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            config,
            listener: None,
            last_commit: Instant::now(),
        });
        Ok(())
    }

    /// Calls `listener` on every assignment change of a group subscription.
    pub fn on_rebalance(&mut self, listener: impl FnMut(Rebalance) + Send + 'static) {
        if let Some(g) = self.group.as_mut() {
            g.listener = Some(std::sync::Mutex::new(Box::new(listener)));
        }
    }

    /// Commits the positions of every assigned partition for the group (they are the next
    /// offsets to read). Fails if the group rebalanced since they were assigned.
    pub async fn commit(&mut self) -> Result<(), ClientError> {
        let positions: Vec<(TopicPartition, i64)> = self
            .positions
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let g = self
            .group
            .as_mut()
            .ok_or_else(|| ClientError::Config("commit needs a group: call subscribe".into()))?;
        g.membership.commit(&positions).await?;
        g.last_commit = Instant::now();
        Ok(())
    }

    /// Commits `offsets` (topic, partition, next offset to read) for the group.
    pub async fn commit_offsets(
        &mut self,
        offsets: &[(String, i32, i64)],
    ) -> Result<(), ClientError> {
        let g = self
            .group
            .as_ref()
            .ok_or_else(|| ClientError::Config("commit needs a group: call subscribe".into()))?;
        let offsets: Vec<(TopicPartition, i64)> = offsets
            .iter()
            .map(|(t, p, o)| ((t.clone(), *p), *o))
            .collect();
        g.membership.commit(&offsets).await
    }

    /// Leaves the group, after committing the positions with auto-commit. Without a group
    /// there is nothing to do.
    pub async fn close(mut self) -> Result<(), ClientError> {
        let mut result = Ok(());
        if self.group.as_ref().is_some_and(|g| g.config.auto_commit) {
            result = self.commit().await;
        }
        if let Some(g) = self.group.as_mut() {
            g.membership.leave().await;
        }
        result
    }

    /// Keeps the group subscription current: rejoins when due, auto-commits when due.
    async fn maintain_group(&mut self) -> Result<(), ClientError> {
        let Some(g) = self.group.as_ref() else {
            return Ok(());
        };
        if g.membership.needs_join() {
            return self.rebalance().await;
        }
        if g.config.auto_commit && g.last_commit.elapsed() >= g.config.auto_commit_interval {
            if let Err(e) = self.commit().await {
                debug!(error = %e, "auto-commit failed");
            }
            if let Some(g) = self.group.as_mut() {
                g.last_commit = Instant::now();
            }
        }
        Ok(())
    }

    /// One rebalance: revoke (all, or with the cooperative protocol only what moves), join,
    /// position what is new at its committed offsets, tell the listener.
    async fn rebalance(&mut self) -> Result<(), ClientError> {
        let owned: Vec<TopicPartition> = self.positions.keys().cloned().collect();
        let g = self.group.as_ref().expect("called with a group");
        let cooperative = g.membership.protocol().is_some_and(|a| a.is_cooperative());
        let auto_commit = g.config.auto_commit;
        if !cooperative && !owned.is_empty() {
            self.revoke(&owned, auto_commit).await;
        }
        let g = self.group.as_mut().expect("called with a group");
        let announce = if cooperative {
            owned.clone()
        } else {
            Vec::new()
        };
        let assignment = g.membership.join(&g.topics, &announce).await?;
        let now: BTreeSet<TopicPartition> = assignment.into_iter().collect();
        let still_cooperative = g.membership.protocol().is_some_and(|a| a.is_cooperative());
        if still_cooperative {
            let gone: Vec<TopicPartition> = self
                .positions
                .keys()
                .filter(|k| !now.contains(*k))
                .cloned()
                .collect();
            if !gone.is_empty() {
                self.revoke(&gone, auto_commit).await;
                // What was given up is assigned to its new owner in the next rebalance.
                if let Some(g) = self.group.as_ref() {
                    g.membership.request_rejoin();
                }
            }
        }
        let added: Vec<TopicPartition> = now
            .iter()
            .filter(|k| !self.positions.contains_key(*k))
            .cloned()
            .collect();
        self.start_at_committed(&added).await?;
        if let Some(l) = self.group.as_mut().and_then(|g| g.listener.as_mut()) {
            if !added.is_empty() {
                (l.get_mut().unwrap_or_else(|p| p.into_inner()))(Rebalance::Assigned(added));
            }
        }
        Ok(())
    }

    /// Gives up partitions: committed first with auto-commit, then the listener is told.
    async fn revoke(&mut self, parts: &[TopicPartition], auto_commit: bool) {
        let offsets: Vec<(TopicPartition, i64)> = parts
            .iter()
            .filter_map(|k| self.positions.get(k).map(|o| (k.clone(), *o)))
            .collect();
        if let Some(g) = self.group.as_mut() {
            if auto_commit {
                if let Err(e) = g.membership.commit(&offsets).await {
                    debug!(error = %e, "commit before revoking failed");
                }
            }
            if let Some(l) = g.listener.as_mut() {
                (l.get_mut().unwrap_or_else(|p| p.into_inner()))(Rebalance::Revoked(
                    parts.to_vec(),
                ));
            }
        }
        for k in parts {
            self.positions.remove(k);
            self.high_watermarks.remove(k);
        }
    }

    /// Positions `parts` at the group's committed offsets, or at `auto_offset_reset`.
    async fn start_at_committed(&mut self, parts: &[TopicPartition]) -> Result<(), ClientError> {
        if parts.is_empty() {
            return Ok(());
        }
        let g = self.group.as_ref().expect("called with a group");
        let reset = g.config.auto_offset_reset;
        let committed = g.membership.committed(parts).await?;
        let mut to_reset: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for k in parts {
            match committed.get(k).copied().flatten() {
                Some(o) => {
                    self.positions.insert(k.clone(), o);
                }
                None => to_reset.entry(k.0.clone()).or_default().push(k.1),
            }
        }
        for (topic, ps) in to_reset {
            let offsets = resolve_offsets(
                &self.cluster,
                &topic,
                &ps,
                reset,
                self.config.isolation_level,
            )
            .await?;
            for (p, o) in offsets {
                self.positions.insert((topic.clone(), p), o);
            }
        }
        Ok(())
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
        if self.group.is_some() {
            self.maintain_group().await?;
            if self.positions.is_empty() {
                // The group gave this member nothing (yet): wait, then ask again.
                tokio::time::sleep(self.config.max_wait).await;
                return Ok(Vec::new());
            }
        }
        if self.positions.is_empty() {
            return Err(ClientError::Config(
                "no partitions assigned: call assign or subscribe first".into(),
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
        let max_bytes = self.config.max_partition_bytes;
        let plans: Vec<(i32, Plan<TopicPartition>)> = by_leader
            .iter()
            .map(|(&leader, parts)| {
                let wanted: Vec<(TopicPartition, Want)> = parts
                    .iter()
                    .map(|(tp, offset)| (tp.clone(), consumer_want(*offset, max_bytes)))
                    .collect();
                (
                    leader,
                    self.sessions.entry(leader).or_default().plan(&wanted),
                )
            })
            .collect();
        let fetches = plans.iter().map(|(leader, plan)| self.fetch(*leader, plan));
        let results = join_all(fetches).await;
        let mut out = Vec::new();
        let mut refresh = false;
        for ((leader, plan), result) in plans.into_iter().zip(results) {
            let session = self.sessions.entry(leader).or_default();
            match result {
                Ok(resp) => {
                    let (error, id) = (resp.error_code, resp.session_id);
                    if !session.answered(plan, error, id) && is_session_error(error) {
                        // The broker lost or refused the session: the next fetch is full.
                        debug!(leader, error, "fetch session lost; starting over");
                        continue;
                    }
                    refresh |= self.absorb(resp, &mut out)?;
                }
                Err(e) if e.is_retriable() => {
                    session.lost();
                    debug!(error = %e, "fetch failed");
                    refresh = true;
                }
                Err(e) => {
                    session.lost();
                    return Err(e);
                }
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
        plan: &Plan<TopicPartition>,
    ) -> Result<FetchResponse, ClientError> {
        let conn = self.cluster.connection(leader).await?;
        let c = &self.config;
        let mut req = FetchRequest::default();
        req.max_wait_ms = c.max_wait.as_millis().min(i32::MAX as u128) as i32;
        req.min_bytes = c.min_bytes;
        req.max_bytes = c.max_bytes;
        req.isolation_level = c.isolation_level;
        req.session_id = plan.session_id;
        req.session_epoch = plan.epoch;
        for ((topic, partition), want) in &plan.send {
            let mut p = FetchPartition::default();
            p.partition = *partition;
            p.fetch_offset = want.fetch_offset;
            p.partition_max_bytes = want.max_bytes;
            match req.topics.last_mut() {
                Some(t) if *t.topic.0 == **topic => t.partitions.push(p),
                _ => {
                    let mut t = FetchTopic::default();
                    t.topic = TopicName(StrBytes::from_string(topic.clone()));
                    t.partitions.push(p);
                    req.topics.push(t);
                }
            }
        }
        for (topic, partition) in &plan.forget {
            match req.forgotten_topics_data.last_mut() {
                Some(t) if *t.topic.0 == **topic => t.partitions.push(*partition),
                _ => {
                    let mut t = ForgottenTopic::default();
                    t.topic = TopicName(StrBytes::from_string(topic.clone()));
                    t.partitions.push(*partition);
                    req.forgotten_topics_data.push(t);
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
