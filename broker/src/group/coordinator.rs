//! The group coordinator's I/O edge: which `__consumer_offsets` partitions this broker
//! coordinates (those it leads), loading their groups from the log, writing group metadata
//! and commits as acks=all appends, holding JoinGroup/SyncGroup responses, and the timers.
//!
//! Every change to a partition's groups happens under one lock, and the records it writes
//! are appended under that lock too, so the log's order is the order the state changed in.
//! Acknowledgements are awaited outside it.

use super::machine::{Effect, GroupConfig, GroupState, JoinResult, SyncResult, Waiter};
use super::placement::partition_for;
use super::records::{self, CommittedOffset, OFFSETS_TOPIC};
use super::state::{expired, Entry, Loader};
use crate::broker::BrokerRuntime;
use crate::clock::now_ms;
use crate::config::GroupsConfig;
use crate::metrics as m;
use crate::partition::acks::{AckError, Acks};
use crate::partition::registry::Topics;
use crate::partition::{AckTarget, Replica};
use bytes::Bytes;
use kafka_protocol::ResponseError;
use keel_protocol::encode::{encode_batch, Compression, NewRecord, ProducerIds};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// How often the timers run: session expiry, rebalance deadlines, leadership changes.
const TICK: Duration = Duration::from_millis(100);

/// A held response.
enum Pending {
    Join(oneshot::Sender<JoinResult>),
    Sync(oneshot::Sender<SyncResult>),
}

/// The groups of one offsets partition this broker leads.
struct Shard {
    replica: Arc<Replica>,
    epoch: i32,
    state: ShardState,
}

enum ShardState {
    Loading,
    Active(HashMap<String, Entry>),
}

impl Shard {
    fn is_current(&self, replica: &Arc<Replica>) -> bool {
        Arc::ptr_eq(&self.replica, replica)
            && replica.is_leader()
            && !replica.is_deleted()
            && replica.leader_epoch() == self.epoch
    }
}

/// What to do once the lock is released: answers to send and stores to wait for.
#[derive(Default)]
struct After {
    answers: Vec<Effect>,
    stores: Vec<StoreJob>,
}

struct StoreJob {
    partition: i32,
    epoch: i32,
    group: String,
    generation: i32,
    replica: Arc<Replica>,
    ack: AckTarget,
}

/// One group listed by ListGroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listing {
    pub(crate) group_id: String,
    pub(crate) protocol_type: String,
    pub(crate) state: GroupState,
}

/// One group as DescribeGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Description {
    pub(crate) state: GroupState,
    pub(crate) protocol_type: String,
    pub(crate) protocol: String,
    pub(crate) members: Vec<DescribedMember>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DescribedMember {
    pub(crate) member_id: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) metadata: Bytes,
    pub(crate) assignment: Bytes,
}

/// A partition's answer to a commit: its topic, partition and error code.
pub(crate) type PartitionResult = (String, i32, i16);

/// The group coordinator of this broker.
pub(crate) struct GroupCoordinator {
    cfg: GroupsConfig,
    machine: GroupConfig,
    topics: Arc<Topics>,
    broker: Arc<BrokerRuntime>,
    shards: Mutex<HashMap<i32, Shard>>,
    waiters: Mutex<HashMap<Waiter, Pending>>,
    next_waiter: AtomicU64,
    /// A CreateTopics for the offsets topic is on its way.
    creating: AtomicBool,
    started: Instant,
    stop: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl GroupCoordinator {
    pub(crate) fn new(
        cfg: GroupsConfig,
        topics: Arc<Topics>,
        broker: Arc<BrokerRuntime>,
        stop: CancellationToken,
    ) -> Arc<Self> {
        let machine = GroupConfig {
            min_session_timeout_ms: cfg.min_session_timeout_ms,
            max_session_timeout_ms: cfg.max_session_timeout_ms,
            initial_rebalance_delay_ms: cfg.initial_rebalance_delay_ms,
            max_size: cfg.max_size.max(1) as usize,
        };
        Arc::new(GroupCoordinator {
            cfg,
            machine,
            topics,
            broker,
            shards: Mutex::new(HashMap::new()),
            waiters: Mutex::new(HashMap::new()),
            next_waiter: AtomicU64::new(1),
            creating: AtomicBool::new(false),
            started: Instant::now(),
            stop,
        })
    }

    /// Milliseconds on the coordinator's monotonic clock (the machine's time).
    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// A group id is valid if non-empty and not longer than `group.max.id.bytes`.
    pub(crate) fn valid_group_id(&self, id: &str) -> bool {
        !id.is_empty() && id.len() <= self.cfg.max_id_bytes
    }

    // ---- finding coordinators -------------------------------------------------------

    /// The coordinator of `group`: (node id, host, port). Asks the controller to create the
    /// offsets topic on first use (meanwhile COORDINATOR_NOT_AVAILABLE, which clients retry).
    pub(crate) fn find(self: &Arc<Self>, group: &str) -> Result<(i32, String, i32), ResponseError> {
        let image = self.broker.image();
        let Some(topic) = image.topic(OFFSETS_TOPIC) else {
            self.create_offsets_topic();
            return Err(ResponseError::CoordinatorNotAvailable);
        };
        if topic.partitions.is_empty() {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        let p = partition_for(group, topic.partitions.len() as i32);
        let leader = topic.partitions[p as usize].leader;
        match image.broker(leader) {
            Some(b) if !b.fenced => Ok((b.id, b.host.clone(), b.port)),
            _ => Err(ResponseError::CoordinatorNotAvailable),
        }
    }

    fn create_offsets_topic(self: &Arc<Self>) {
        if self.creating.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let brokers = me.broker.image().unfenced_brokers().count().max(1);
            let rf = (me.cfg.offsets_replication_factor as usize).min(brokers) as i16;
            let min_isr = rf.min(2);
            let req = super::offsets_topic_request(me.cfg.offsets_partitions, rf, min_isr);
            match crate::broker::create_topics::create_and_settle(&me.broker, &req).await {
                Ok(resp) => {
                    let code = resp.topics.first().map_or(0, |t| t.error_code);
                    tracing::info!(
                        partitions = me.cfg.offsets_partitions,
                        replication_factor = rf,
                        error_code = code,
                        "created the offsets topic"
                    );
                }
                Err(e) => tracing::warn!(error = %e, "creating the offsets topic failed"),
            }
            me.creating.store(false, Ordering::Release);
        });
    }

    // ---- the shard of a group ---------------------------------------------------------

    /// Runs `f` on the groups of `group`'s partition, if this broker coordinates it and
    /// has loaded it. Starts a load where it leads a partition not loaded yet.
    fn with_groups<R>(
        self: &Arc<Self>,
        group: &str,
        f: impl FnOnce(&mut HashMap<String, Entry>, &ShardRef) -> R,
    ) -> Result<R, ResponseError> {
        let image = self.broker.image();
        let Some(topic) = image.topic(OFFSETS_TOPIC) else {
            return Err(ResponseError::NotCoordinator);
        };
        let partition = partition_for(group, topic.partitions.len().max(1) as i32);
        let replica = match self.topics.replica(OFFSETS_TOPIC, partition) {
            Some(r) if r.is_leader() && !r.is_deleted() => r,
            _ => return Err(ResponseError::NotCoordinator),
        };
        let mut shards = lock(&self.shards);
        let current = shards
            .get(&partition)
            .is_some_and(|s| s.is_current(&replica));
        if !current {
            let mut after = After::default();
            if let Some(old) = shards.remove(&partition) {
                self.unload(old, &mut after);
            }
            self.start_load(&mut shards, partition, replica);
            drop(shards);
            self.finish(after);
            return Err(ResponseError::CoordinatorLoadInProgress);
        }
        let shard = shards.get_mut(&partition).expect("checked above");
        let sref = ShardRef {
            partition,
            epoch: shard.epoch,
            replica: shard.replica.clone(),
        };
        match &mut shard.state {
            ShardState::Loading => Err(ResponseError::CoordinatorLoadInProgress),
            ShardState::Active(groups) => Ok(f(groups, &sref)),
        }
    }

    fn start_load(
        self: &Arc<Self>,
        shards: &mut HashMap<i32, Shard>,
        partition: i32,
        replica: Arc<Replica>,
    ) {
        let epoch = replica.leader_epoch();
        shards.insert(
            partition,
            Shard {
                replica: replica.clone(),
                epoch,
                state: ShardState::Loading,
            },
        );
        let me = self.clone();
        tokio::spawn(async move { me.load(partition, epoch, replica).await });
    }

    /// Reads the partition's log into groups, waits until everything read is below the high
    /// watermark (a new leader's tail may not be committed yet), then serves them.
    async fn load(self: Arc<Self>, partition: i32, epoch: i32, replica: Arc<Replica>) {
        let started = Instant::now();
        let log = replica.log().clone();
        let read = tokio::task::spawn_blocking(move || -> Result<(Loader, i64), String> {
            let mut loader = Loader::default();
            let end = log.log_end_offset();
            let mut pos = log.log_start_offset();
            while pos < end {
                let info = log.read(pos, 4 << 20, end).map_err(|e| e.to_string())?;
                if info.records.is_empty() {
                    break;
                }
                let mut last = pos;
                for b in keel_protocol::batch::batches(&info.records).map_while(Result::ok) {
                    last = last.max(b.header.last_offset());
                }
                let mut bytes = info.records.clone();
                let sets = kafka_protocol::records::RecordBatchDecoder::decode_all(&mut bytes)
                    .map_err(|e| e.to_string())?;
                for r in sets.into_iter().flat_map(|s| s.records) {
                    if r.offset < pos || r.control {
                        continue;
                    }
                    if let Err(e) = loader.apply(r.offset, r.key.as_deref(), r.value.as_deref()) {
                        tracing::warn!(partition, offset = r.offset, error = %e, "skipping an unreadable offsets record");
                    }
                }
                pos = last + 1;
            }
            Ok((loader, end))
        })
        .await;
        let (loader, end) = match read {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                tracing::error!(partition, error = %e, "loading groups failed");
                lock(&self.shards).remove(&partition);
                return;
            }
            Err(e) => {
                tracing::error!(partition, error = %e, "loading groups panicked");
                lock(&self.shards).remove(&partition);
                return;
            }
        };
        // Serve nothing the log could still lose.
        let mut hw = replica.subscribe_hw();
        let committed = tokio::select! {
            r = hw.wait_for(|&h| h >= end) => r.is_ok(),
            _ = self.stop.cancelled() => false,
        };
        let records = loader.records;
        let groups = loader.finish(self.machine, self.now(), now_ms());
        let count = groups.len();
        let mut shards = lock(&self.shards);
        match shards.get_mut(&partition) {
            Some(s) if s.epoch == epoch && Arc::ptr_eq(&s.replica, &replica) && committed => {
                s.state = ShardState::Active(groups);
                let secs = started.elapsed().as_secs_f64();
                metrics::histogram!(m::GROUP_LOAD_SECONDS).record(secs);
                tracing::info!(
                    partition,
                    epoch,
                    groups = count,
                    records,
                    seconds = secs,
                    "loaded groups"
                );
            }
            _ => {
                tracing::debug!(partition, epoch, "group load outdated before it finished");
            }
        }
    }

    /// Drops a shard this broker no longer leads: held requests are told NOT_COORDINATOR.
    fn unload(&self, shard: Shard, after: &mut After) {
        if let ShardState::Active(groups) = shard.state {
            let n = groups.len();
            for (_, mut e) in groups {
                e.group.kill(&mut after.answers, now_ms());
            }
            tracing::info!(epoch = shard.epoch, groups = n, "unloaded groups");
        }
    }

    // ---- effects ---------------------------------------------------------------------------

    /// Runs a group's effects under the lock: stores are appended now (their order in the
    /// log is the order of the changes) and waited for later.
    fn run_effects(
        &self,
        sref: &ShardRef,
        group_id: &str,
        entry: &mut Entry,
        mut effects: Vec<Effect>,
        after: &mut After,
    ) {
        // A failed store feeds new effects back; each round consumes a store, so this ends.
        for _ in 0..8 {
            let mut failed = Vec::new();
            for e in effects.drain(..) {
                match e {
                    Effect::Store { generation } => {
                        let snap = entry.group.snapshot();
                        let record = NewRecord {
                            key: Some(records::group_key(group_id)),
                            value: Some(records::group_value(&snap)),
                            headers: Vec::new(),
                            timestamp: now_ms(),
                        };
                        match append(&sref.replica, vec![record]) {
                            Ok(ack) => after.stores.push(StoreJob {
                                partition: sref.partition,
                                epoch: sref.epoch,
                                group: group_id.to_string(),
                                generation,
                                replica: sref.replica.clone(),
                                ack,
                            }),
                            Err(err) => failed.push((generation, err)),
                        }
                    }
                    answer => after.answers.push(answer),
                }
            }
            if failed.is_empty() {
                return;
            }
            for (generation, err) in failed {
                entry
                    .group
                    .stored(generation, Err(err), self.now(), now_ms(), &mut effects);
            }
        }
        after.answers.append(&mut effects);
    }

    /// Sends answers and starts waiting for stores, outside the lock.
    fn finish(self: &Arc<Self>, after: After) {
        if !after.answers.is_empty() {
            let mut waiters = lock(&self.waiters);
            for e in after.answers {
                match e {
                    Effect::Join(w, r) => {
                        if let Some(Pending::Join(tx)) = waiters.remove(&w) {
                            let _ = tx.send(r);
                        }
                    }
                    Effect::Sync(w, r) => {
                        if let Some(Pending::Sync(tx)) = waiters.remove(&w) {
                            let _ = tx.send(r);
                        }
                    }
                    Effect::Store { .. } => {}
                }
            }
        }
        for job in after.stores {
            let me = self.clone();
            tokio::spawn(async move {
                let timeout = Duration::from_millis(me.cfg.offsets_commit_timeout_ms);
                let result = job
                    .replica
                    .acknowledged(Acks::All, job.ack, timeout)
                    .await
                    .map_err(AckError::coordinator_code);
                me.stored(job, result);
            });
        }
    }

    fn stored(self: &Arc<Self>, job: StoreJob, result: Result<(), ResponseError>) {
        let mut after = After::default();
        {
            let mut shards = lock(&self.shards);
            let Some(shard) = shards.get_mut(&job.partition) else {
                return;
            };
            if shard.epoch != job.epoch {
                return;
            }
            let sref = ShardRef {
                partition: job.partition,
                epoch: shard.epoch,
                replica: shard.replica.clone(),
            };
            if let ShardState::Active(groups) = &mut shard.state {
                if let Some(entry) = groups.get_mut(&job.group) {
                    let mut effects = Vec::new();
                    entry
                        .group
                        .stored(job.generation, result, self.now(), now_ms(), &mut effects);
                    self.run_effects(&sref, &job.group, entry, effects, &mut after);
                }
            }
        }
        self.finish(after);
    }

    /// After a held request ran: sends what it produced, or, if it failed, forgets its
    /// waiter and returns the error to answer with.
    fn release(
        self: &Arc<Self>,
        w: Waiter,
        done: Result<Result<After, ResponseError>, ResponseError>,
    ) -> Result<(), ResponseError> {
        match done.and_then(|r| r) {
            Ok(after) => {
                self.finish(after);
                Ok(())
            }
            Err(e) => {
                lock(&self.waiters).remove(&w);
                Err(e)
            }
        }
    }

    fn waiter(&self, pending: Pending) -> Waiter {
        let w = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        lock(&self.waiters).insert(w, pending);
        w
    }

    // ---- the group APIs ---------------------------------------------------------------

    /// JoinGroup: the answer may wait for the rest of the group.
    pub(crate) async fn join(
        self: &Arc<Self>,
        group_id: &str,
        join: super::machine::Join,
    ) -> JoinResult {
        let (tx, rx) = oneshot::channel();
        let w = self.waiter(Pending::Join(tx));
        let member_id = join.member_id.clone();
        let done = self.with_groups(group_id, |groups, sref| {
            let mut after = After::default();
            if !groups.contains_key(group_id) {
                if !join.member_id.is_empty() {
                    return Err(ResponseError::UnknownMemberId);
                }
                groups.insert(group_id.to_string(), Entry::new(self.machine, now_ms()));
            }
            let entry = groups.get_mut(group_id).expect("inserted above");
            let mut effects = Vec::new();
            entry
                .group
                .join(w, join, self.now(), now_ms(), &mut effects);
            self.run_effects(sref, group_id, entry, effects, &mut after);
            Ok(after)
        });
        if let Err(e) = self.release(w, done) {
            return JoinResult::error(e, &member_id);
        }
        rx.await
            .unwrap_or_else(|_| JoinResult::error(ResponseError::NotCoordinator, &member_id))
    }

    /// SyncGroup: followers wait for the leader's assignment to be stored.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn sync(
        self: &Arc<Self>,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        protocol_type: Option<&str>,
        protocol: Option<&str>,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncResult {
        let (tx, rx) = oneshot::channel();
        let w = self.waiter(Pending::Sync(tx));
        let done = self.with_groups(group_id, |groups, sref| {
            let mut after = After::default();
            let Some(entry) = groups.get_mut(group_id) else {
                return Err(ResponseError::UnknownMemberId);
            };
            let mut effects = Vec::new();
            entry.group.sync(
                w,
                member_id,
                instance_id,
                generation,
                protocol_type,
                protocol,
                assignments,
                self.now(),
                &mut effects,
            );
            self.run_effects(sref, group_id, entry, effects, &mut after);
            Ok(after)
        });
        if let Err(e) = self.release(w, done) {
            return SyncResult::error(e);
        }
        rx.await
            .unwrap_or_else(|_| SyncResult::error(ResponseError::NotCoordinator))
    }

    pub(crate) fn heartbeat(
        self: &Arc<Self>,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), ResponseError> {
        self.with_groups(group_id, |groups, _| match groups.get_mut(group_id) {
            Some(e) => e
                .group
                .heartbeat(member_id, instance_id, generation, self.now()),
            None => Err(ResponseError::UnknownMemberId),
        })?
    }

    /// LeaveGroup: one result per (member id, instance id).
    pub(crate) fn leave(
        self: &Arc<Self>,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> Result<Vec<Result<(), ResponseError>>, ResponseError> {
        let (results, after) = self.with_groups(group_id, |groups, sref| {
            let mut after = After::default();
            let Some(entry) = groups.get_mut(group_id) else {
                let all = members
                    .iter()
                    .map(|_| Err(ResponseError::UnknownMemberId))
                    .collect();
                return (all, after);
            };
            let mut results = Vec::with_capacity(members.len());
            for (member, instance) in members {
                let mut effects = Vec::new();
                let r = entry.group.leave(
                    member,
                    instance.as_deref(),
                    self.now(),
                    now_ms(),
                    &mut effects,
                );
                self.run_effects(sref, group_id, entry, effects, &mut after);
                results.push(r);
            }
            (results, after)
        })?;
        self.finish(after);
        Ok(results)
    }

    /// OffsetCommit: validated against the group and written as one acks=all batch at once
    /// (so the commits pipelined on a connection are appended back to back and share their
    /// fsyncs); the returned future waits for the acknowledgement, then applies them.
    /// Partitions of unknown topics and over-long metadata are refused alone.
    pub(crate) fn commit(
        self: &Arc<Self>,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        offsets: Vec<(String, i32, CommittedOffset)>,
    ) -> impl std::future::Future<Output = Result<Vec<PartitionResult>, ResponseError>> + Send + 'static
    {
        let written = self.append_commit(group_id, member_id, instance_id, generation, offsets);
        let me = self.clone();
        let group_id = group_id.to_string();
        async move {
            let (mut results, accepted, written) = written?;
            let Some(written) = written else {
                return Ok(results);
            };
            let fail_all = |results: &mut Vec<PartitionResult>, e: ResponseError| {
                for r in results.iter_mut().filter(|r| r.2 == 0) {
                    r.2 = e.code();
                }
            };
            let (sref, end) = match written {
                Ok(x) => x,
                Err(e) => {
                    fail_all(&mut results, e);
                    return Ok(results);
                }
            };
            let timeout = Duration::from_millis(me.cfg.offsets_commit_timeout_ms);
            if let Err(e) = sref.replica.acknowledged(Acks::All, end, timeout).await {
                fail_all(&mut results, AckError::coordinator_code(e));
                return Ok(results);
            }
            metrics::counter!(m::GROUP_COMMITS_TOTAL).increment(accepted.len() as u64);
            // The records are offsets end-n..end, in the order of `accepted`.
            let first = end.end_offset - accepted.len() as i64;
            let mut shards = lock(&me.shards);
            if let Some(ShardState::Active(groups)) = shards
                .get_mut(&sref.partition)
                .filter(|s| s.epoch == sref.epoch)
                .map(|s| &mut s.state)
            {
                let entry = groups
                    .entry(group_id)
                    .or_insert_with(|| Entry::new(me.machine, now_ms()));
                for (i, (t, p, v)) in accepted.into_iter().enumerate() {
                    entry.apply_commit(t, p, v, first + i as i64);
                }
            }
            Ok(results)
        }
    }

    /// The synchronous half of [`Self::commit`]: the per-partition answers so far, the
    /// accepted offsets, and the append (or why it failed; `None` if nothing was accepted).
    #[allow(clippy::type_complexity)]
    fn append_commit(
        self: &Arc<Self>,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        offsets: Vec<(String, i32, CommittedOffset)>,
    ) -> Result<
        (
            Vec<PartitionResult>,
            Vec<(String, i32, CommittedOffset)>,
            Option<Result<(ShardRef, AckTarget), ResponseError>>,
        ),
        ResponseError,
    > {
        let image = self.broker.image();
        let mut results: Vec<PartitionResult> = Vec::with_capacity(offsets.len());
        let mut accepted = Vec::new();
        for (topic, partition, value) in offsets {
            let known = image
                .topic(&topic)
                .is_some_and(|t| partition >= 0 && (partition as usize) < t.partitions.len());
            let code = if !known {
                ResponseError::UnknownTopicOrPartition.code()
            } else if value.metadata.len() > self.cfg.offset_metadata_max_bytes {
                ResponseError::OffsetMetadataTooLarge.code()
            } else {
                accepted.push((topic.clone(), partition, value));
                0
            };
            results.push((topic, partition, code));
        }
        if accepted.is_empty() {
            return Ok((results, accepted, None));
        }
        let written = self.with_groups(group_id, |groups, sref| {
            if !groups.contains_key(group_id) {
                if generation >= 0 || !member_id.is_empty() {
                    return Err(ResponseError::IllegalGeneration);
                }
                groups.insert(group_id.to_string(), Entry::new(self.machine, now_ms()));
            }
            let entry = groups.get_mut(group_id).expect("inserted above");
            entry
                .group
                .validate_commit(member_id, instance_id, generation)?;
            entry.group.touch(member_id, self.now());
            let records: Vec<NewRecord> = accepted
                .iter()
                .map(|(t, p, v)| NewRecord {
                    key: Some(records::offset_key(group_id, t, *p)),
                    value: Some(records::offset_value(v)),
                    headers: Vec::new(),
                    timestamp: v.commit_timestamp,
                })
                .collect();
            let end = append(&sref.replica, records)?;
            Ok((sref.clone(), end))
        })?;
        Ok((results, accepted, Some(written)))
    }

    /// OffsetFetch: the committed offsets of `topics` (all of the group's if `None`).
    pub(crate) fn fetch_offsets(
        self: &Arc<Self>,
        group_id: &str,
        topics: Option<Vec<(String, Vec<i32>)>>,
    ) -> Result<Vec<(String, i32, Option<CommittedOffset>)>, ResponseError> {
        self.with_groups(group_id, |groups, _| {
            let entry = groups.get(group_id);
            match topics {
                None => entry
                    .map(|e| {
                        e.offsets
                            .iter()
                            .map(|((t, p), c)| (t.clone(), *p, Some(c.value.clone())))
                            .collect()
                    })
                    .unwrap_or_default(),
                Some(topics) => topics
                    .into_iter()
                    .flat_map(|(t, parts)| parts.into_iter().map(move |p| (t.clone(), p)))
                    .map(|(t, p)| {
                        let c = entry
                            .and_then(|e| e.offsets.get(&(t.clone(), p)))
                            .map(|c| c.value.clone());
                        (t, p, c)
                    })
                    .collect(),
            }
        })
    }

    /// ListGroups on this broker: every group of the partitions it coordinates.
    pub(crate) fn list(self: &Arc<Self>) -> Result<Vec<Listing>, ResponseError> {
        self.adopt_led_partitions();
        let shards = lock(&self.shards);
        let mut out = Vec::new();
        for shard in shards.values() {
            match &shard.state {
                ShardState::Loading => return Err(ResponseError::CoordinatorLoadInProgress),
                ShardState::Active(groups) => {
                    for (id, e) in groups {
                        out.push(Listing {
                            group_id: id.clone(),
                            protocol_type: e.group.protocol_type().unwrap_or_default().to_string(),
                            state: e.group.state(),
                        });
                    }
                }
            }
        }
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        Ok(out)
    }

    /// DescribeGroups of one group (`None`: no such group).
    pub(crate) fn describe(
        self: &Arc<Self>,
        group_id: &str,
    ) -> Result<Option<Description>, ResponseError> {
        self.with_groups(group_id, |groups, _| {
            let e = groups.get(group_id)?;
            let g = &e.group;
            let protocol = g.protocol().unwrap_or_default().to_string();
            let stable = g.state() == GroupState::Stable;
            Some(Description {
                state: g.state(),
                protocol_type: g.protocol_type().unwrap_or_default().to_string(),
                protocol: protocol.clone(),
                members: g
                    .members()
                    .map(|m| DescribedMember {
                        member_id: m.id.clone(),
                        instance_id: m.instance_id.clone(),
                        client_id: m.client_id.clone(),
                        client_host: m.client_host.clone(),
                        metadata: if stable {
                            m.metadata(&protocol)
                        } else {
                            Bytes::new()
                        },
                        assignment: if stable {
                            m.assignment.clone()
                        } else {
                            Bytes::new()
                        },
                    })
                    .collect(),
            })
        })
    }

    /// DeleteGroups of one group: only an empty one; its offsets and metadata get
    /// tombstones.
    pub(crate) async fn delete_group(
        self: &Arc<Self>,
        group_id: &str,
    ) -> Result<(), ResponseError> {
        let written = self.with_groups(group_id, |groups, sref| {
            let Some(entry) = groups.get(group_id) else {
                return Err(ResponseError::GroupIdNotFound);
            };
            if !matches!(entry.group.state(), GroupState::Empty | GroupState::Dead) {
                return Err(ResponseError::NonEmptyGroup);
            }
            let mut tombstones: Vec<NewRecord> = entry
                .offsets
                .keys()
                .map(|(t, p)| tombstone(records::offset_key(group_id, t, *p)))
                .collect();
            tombstones.push(tombstone(records::group_key(group_id)));
            let end = append(&sref.replica, tombstones)?;
            let mut e = groups.remove(group_id).expect("present above");
            e.group.kill(&mut Vec::new(), now_ms());
            Ok((sref.clone(), end))
        });
        let (sref, end) = written.and_then(|r| r)?;
        let timeout = Duration::from_millis(self.cfg.offsets_commit_timeout_ms);
        sref.replica
            .acknowledged(Acks::All, end, timeout)
            .await
            .map_err(AckError::coordinator_code)
    }

    /// OffsetDelete: offsets of topics the group does not consume from (or of an empty
    /// group) are deleted; the others are answered GROUP_SUBSCRIBED_TO_TOPIC.
    pub(crate) async fn delete_offsets(
        self: &Arc<Self>,
        group_id: &str,
        partitions: Vec<(String, i32)>,
    ) -> Result<Vec<PartitionResult>, ResponseError> {
        let written = self.with_groups(group_id, |groups, sref| {
            let Some(entry) = groups.get_mut(group_id) else {
                return Err(ResponseError::GroupIdNotFound);
            };
            let subscribed = if entry.group.state() == GroupState::Empty {
                Some(Default::default())
            } else {
                entry.subscribed_topics()
            };
            let mut results = Vec::new();
            let mut gone = Vec::new();
            for (t, p) in partitions {
                let blocked = subscribed.as_ref().is_none_or(|s| s.contains(&t));
                if blocked {
                    results.push((t, p, ResponseError::GroupSubscribedToTopic.code()));
                } else {
                    if entry.offsets.remove(&(t.clone(), p)).is_some() {
                        gone.push(tombstone(records::offset_key(group_id, &t, p)));
                    }
                    results.push((t, p, 0));
                }
            }
            let end = if gone.is_empty() {
                None
            } else {
                Some(append(&sref.replica, gone)?)
            };
            Ok((results, end.map(|e| (sref.clone(), e))))
        })?;
        let (mut results, wait) = written?;
        if let Some((sref, end)) = wait {
            let timeout = Duration::from_millis(self.cfg.offsets_commit_timeout_ms);
            if let Err(e) = sref.replica.acknowledged(Acks::All, end, timeout).await {
                let code = AckError::coordinator_code(e).code();
                for r in results.iter_mut().filter(|r| r.2 == 0) {
                    r.2 = code;
                }
            }
        }
        Ok(results)
    }

    // ---- timers -------------------------------------------------------------------------

    /// Loads partitions this broker has come to lead and unloads those it no longer leads.
    fn adopt_led_partitions(self: &Arc<Self>) {
        let Some(topic) = self.topics.get(OFFSETS_TOPIC) else {
            let mut shards = lock(&self.shards);
            if shards.is_empty() {
                return;
            }
            let mut after = After::default();
            for (_, s) in shards.drain() {
                self.unload(s, &mut after);
            }
            drop(shards);
            self.finish(after);
            return;
        };
        let mut after = After::default();
        {
            let mut shards = lock(&self.shards);
            let stale: Vec<i32> = shards
                .iter()
                .filter(|(p, s)| topic.replica(**p).is_none_or(|r| !s.is_current(&r)))
                .map(|(p, _)| *p)
                .collect();
            for p in stale {
                let s = shards.remove(&p).expect("listed above");
                self.unload(s, &mut after);
            }
            for r in &topic.replicas {
                if r.is_leader() && !r.is_deleted() && !shards.contains_key(&r.partition) {
                    self.start_load(&mut shards, r.partition, r.clone());
                }
            }
        }
        self.finish(after);
    }

    /// Expires members and ends rebalance phases whose time has come.
    fn tick_groups(self: &Arc<Self>) {
        let now = self.now();
        let mut after = After::default();
        {
            let mut shards = lock(&self.shards);
            for (partition, shard) in shards.iter_mut() {
                let sref = ShardRef {
                    partition: *partition,
                    epoch: shard.epoch,
                    replica: shard.replica.clone(),
                };
                let ShardState::Active(groups) = &mut shard.state else {
                    continue;
                };
                for (id, entry) in groups.iter_mut() {
                    if entry.group.next_deadline().is_some_and(|d| d <= now) {
                        let mut effects = Vec::new();
                        entry.group.tick(now, now_ms(), &mut effects);
                        self.run_effects(&sref, id, entry, effects, &mut after);
                    }
                }
            }
        }
        self.finish(after);
    }

    /// Deletes expired offsets and empty groups without offsets (tombstones first).
    fn expire_offsets(self: &Arc<Self>) {
        let retention_ms = self.cfg.offsets_retention_ms as i64;
        let now_wall = now_ms();
        let mut waits = Vec::new();
        {
            let mut shards = lock(&self.shards);
            for (partition, shard) in shards.iter_mut() {
                let replica = shard.replica.clone();
                let ShardState::Active(groups) = &mut shard.state else {
                    continue;
                };
                let mut tombstones = Vec::new();
                let mut dead = Vec::new();
                for (id, entry) in groups.iter_mut() {
                    let (gone, group_gone) = expired(entry, now_wall, retention_ms);
                    for (t, p) in gone {
                        entry.offsets.remove(&(t.clone(), p));
                        tombstones.push(tombstone(records::offset_key(id, &t, p)));
                    }
                    if group_gone {
                        tombstones.push(tombstone(records::group_key(id)));
                        dead.push(id.clone());
                    }
                }
                for id in &dead {
                    groups.remove(id);
                }
                if tombstones.is_empty() {
                    continue;
                }
                let n = tombstones.len();
                match append(&replica, tombstones) {
                    Ok(end) => {
                        tracing::info!(
                            partition,
                            tombstones = n,
                            groups = dead.len(),
                            "expired offsets and groups"
                        );
                        waits.push((replica, end));
                    }
                    Err(e) => {
                        tracing::warn!(partition, error = ?e, "writing expiry tombstones failed")
                    }
                }
            }
        }
        for (replica, end) in waits {
            let timeout = Duration::from_millis(self.cfg.offsets_commit_timeout_ms);
            tokio::spawn(async move {
                let _ = replica.acknowledged(Acks::All, end, timeout).await;
            });
        }
    }

    /// The coordinator's timer task, until the broker stops.
    pub(crate) async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let retention_every = Duration::from_millis(self.cfg.offsets_retention_check_interval_ms);
        let mut last_retention = Instant::now();
        let me = Arc::downgrade(&self);
        let _gauges = crate::metrics::on_scrape(move || {
            if let Some(c) = me.upgrade() {
                c.export_gauges();
            }
        });
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.stop.cancelled() => break,
            }
            self.adopt_led_partitions();
            self.tick_groups();
            if last_retention.elapsed() >= retention_every {
                last_retention = Instant::now();
                self.expire_offsets();
            }
        }
        // Stopping: answer every held request so connections can close.
        let mut after = After::default();
        for (_, s) in lock(&self.shards).drain() {
            self.unload(s, &mut after);
        }
        self.finish(after);
    }

    /// Groups and loaded partitions; committed offset and lag per group, topic and
    /// partition, up to `group.lag.metrics.max.series` of them. The lag is the high
    /// watermark of this broker's replica of the partition minus the committed offset
    /// (partitions without a replica here get the committed offset only).
    fn export_gauges(&self) {
        let shards = lock(&self.shards);
        let mut groups = 0usize;
        let mut loaded = 0usize;
        let mut series = 0usize;
        let limit = self.cfg.lag_metrics_max_series;
        for s in shards.values() {
            let ShardState::Active(g) = &s.state else {
                continue;
            };
            groups += g.len();
            loaded += 1;
            for (id, e) in g {
                for ((topic, partition), c) in &e.offsets {
                    if series >= limit {
                        break;
                    }
                    series += 1;
                    let labels = [
                        ("group", id.clone()),
                        ("topic", topic.clone()),
                        ("partition", partition.to_string()),
                    ];
                    metrics::gauge!(m::GROUP_COMMITTED_OFFSET, &labels).set(c.value.offset as f64);
                    if let Some(r) = self.topics.replica(topic, *partition) {
                        let lag = (r.high_watermark() - c.value.offset).max(0);
                        metrics::gauge!(m::GROUP_LAG_RECORDS, &labels).set(lag as f64);
                    }
                }
            }
        }
        metrics::gauge!(m::GROUPS).set(groups as f64);
        metrics::gauge!(m::GROUP_PARTITIONS_LOADED).set(loaded as f64);
    }
}

/// Where a shard's writes go.
#[derive(Clone)]
pub(crate) struct ShardRef {
    partition: i32,
    epoch: i32,
    replica: Arc<Replica>,
}

fn tombstone(key: Bytes) -> NewRecord {
    NewRecord {
        key: Some(key),
        value: None,
        headers: Vec::new(),
        timestamp: now_ms(),
    }
}

/// Appends records to the offsets partition as its leader, for acks=all. Returns what to
/// wait for.
fn append(replica: &Arc<Replica>, records: Vec<NewRecord>) -> Result<AckTarget, ResponseError> {
    replica
        .may_append(Acks::All)
        .map_err(AckError::coordinator_code)?;
    let batch = encode_batch(records, Compression::None, ProducerIds::NONE)
        .map_err(|_| ResponseError::UnknownServerError)?;
    match replica.append(&batch) {
        Ok(appended) => Ok(appended.ack),
        Err(crate::partition::AppendError::NotLeader) => Err(ResponseError::NotCoordinator),
        Err(crate::partition::AppendError::Storage(e)) => {
            tracing::error!(error = %e, "appending to the offsets topic failed");
            Err(ResponseError::NotCoordinator)
        }
    }
}
