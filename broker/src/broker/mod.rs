//! A broker in cluster mode: registers with the controller and heartbeats, follows the
//! metadata log into its own [`MetadataImage`], turns image changes into replica roles,
//! runs one fetcher per leader it follows, and sends ISR changes as AlterPartition.
//!
//! Every loop here backs off on failure (bounded, counted) and stops with the broker.

pub mod fetcher;

use crate::controller::{
    decode_batches, diff, MetadataImage, MetadataRecord, ReplicaChange, METADATA_TOPIC,
};
use crate::metrics as m;
use crate::partition::registry::Topics;
use crate::partition::role::Transition;
use crate::partition::Replica;
use crate::replication::IsrChangeResult;
use crate::BrokerConfig;
use kafka_protocol::messages::alter_partition_request::{
    AlterPartitionRequest, BrokerState, PartitionData, TopicData,
};
use kafka_protocol::messages::broker_heartbeat_request::BrokerHeartbeatRequest;
use kafka_protocol::messages::broker_registration_request::{BrokerRegistrationRequest, Listener};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::{BrokerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use keel_client::connection::Connection;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const STALE_BROKER_EPOCH: i16 = 77;
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ClusterBroker {
    pub node_id: i32,
    pub config: BrokerConfig,
    /// Host and port this broker registers (and clients are given).
    advertised: (String, i32),
    controller_addr: String,
    controller: Mutex<Option<Arc<Connection>>>,
    broker_epoch: AtomicI64,
    /// Set once controlled shutdown starts: every heartbeat then asks to shut down.
    shutting_down: AtomicBool,
    /// Whether this broker may be unfenced: it has applied the metadata up to its own
    /// registration and no replica is repairing data lost in an unclean stop. Until then
    /// heartbeats ask to stay fenced, so it neither leads nor counts in an ISR.
    ready: AtomicBool,
    /// Some replica here is repairing data lost in an unclean stop (so `ready` is false).
    repairing: AtomicBool,
    /// Wakes the replica manager to look at readiness again (a repair was requested).
    recheck: tokio::sync::Notify,
    /// Wakes the heartbeat loop to send one now (readiness changed: the controller should
    /// hear at once, not a heartbeat interval later).
    heartbeat_now: tokio::sync::Notify,
    image: watch::Sender<Arc<MetadataImage>>,
    /// The metadata offset whose replica changes this broker has applied (-1: none yet).
    applied: watch::Sender<i64>,
    /// Ids of the topics most recently removed by the metadata (at most
    /// [`REMOVED_TOPICS_KEPT`], oldest first): a forwarded CreateTopics whose topic was
    /// deleted again before this broker saw it learns so here instead of waiting in vain.
    removed_topics: std::sync::Mutex<VecDeque<uuid::Uuid>>,
    pub topics: Arc<Topics>,
    pub stop: CancellationToken,
}

/// How many removed topic ids a broker remembers (16 bytes each).
const REMOVED_TOPICS_KEPT: usize = 1024;

/// Exponential backoff from 50 ms to 2 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((50u64 << attempt.min(6)).min(2_000))
}

impl ClusterBroker {
    /// A broker that reports to the controller at `voter` (`host:port`).
    pub fn new(
        config: BrokerConfig,
        advertised: (String, i32),
        voter: String,
        topics: Arc<Topics>,
        stop: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            node_id: config.node_id,
            advertised,
            controller_addr: voter,
            controller: Mutex::new(None),
            broker_epoch: AtomicI64::new(-1),
            shutting_down: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            repairing: AtomicBool::new(false),
            recheck: tokio::sync::Notify::new(),
            heartbeat_now: tokio::sync::Notify::new(),
            image: watch::Sender::new(Arc::new(MetadataImage::new())),
            applied: watch::Sender::new(-1),
            removed_topics: std::sync::Mutex::new(VecDeque::new()),
            topics,
            stop,
            config,
        })
    }

    pub fn image(&self) -> Arc<MetadataImage> {
        self.image.borrow().clone()
    }

    /// Whether the metadata removed the topic with this id lately (see `removed_topics`).
    pub fn was_removed(&self, id: uuid::Uuid) -> bool {
        self.removed_topics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&id)
    }

    /// Watches the metadata offset up to which replica changes are applied here.
    pub fn applied(&self) -> watch::Receiver<i64> {
        self.applied.subscribe()
    }

    pub fn broker_epoch(&self) -> i64 {
        self.broker_epoch.load(Ordering::Acquire)
    }

    /// A replica asked for a repair: look at readiness now (a ready broker otherwise waits
    /// for a metadata change), so the broker asks to be fenced without delay.
    pub fn recheck_readiness(&self) {
        self.recheck.notify_one();
    }

    /// The node id of the controller this broker reports to.
    pub fn controller_id(&self) -> i32 {
        self.config
            .controller_voter
            .as_ref()
            .map_or(self.node_id, |(id, _)| *id)
    }

    /// Whether this broker serves: registered, caught up with the metadata up to its
    /// registration, and unfenced, or fenced only because it asks to be (a replica is
    /// repairing data lost here and fetches it from its leader meanwhile).
    fn is_serving(&self) -> bool {
        let image = self.image();
        image.broker(self.node_id).is_some_and(|b| {
            b.epoch == self.broker_epoch()
                && image.offset() >= b.registered_at
                && (!b.fenced || self.repairing.load(Ordering::Acquire))
        })
    }

    /// Resolves once [`Self::is_serving`].
    pub async fn serving(&self) {
        let mut image = self.image.subscribe();
        let mut waited = 0u32;
        while !self.is_serving() {
            // Also polled: the broker epoch and readiness change outside the image.
            let _ = tokio::time::timeout(Duration::from_millis(50), image.changed()).await;
            waited += 1;
            if waited.is_multiple_of(200) {
                tracing::info!(node = self.node_id, controller = %self.controller_addr, "still waiting to be registered and unfenced");
            }
        }
    }

    /// The connection to the controller, (re)connecting if needed.
    pub async fn controller(&self) -> Result<Arc<Connection>, keel_client::ClientError> {
        let mut guard = self.controller.lock().await;
        if let Some(c) = guard.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let c = Arc::new(
            Connection::connect(
                &self.controller_addr,
                &format!("keel-broker-{}", self.node_id),
                Duration::from_secs(5),
                RPC_TIMEOUT,
            )
            .await?,
        );
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Starts the broker's cluster loops.
    pub fn spawn(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        vec![
            tokio::spawn(self.clone().heartbeat_loop()),
            tokio::spawn(self.clone().metadata_loop()),
            tokio::spawn(self.clone().replica_manager()),
            tokio::spawn(self.clone().isr_loop()),
        ]
    }

    async fn register(&self) -> Result<i64, String> {
        let c = self.controller().await.map_err(|e| e.to_string())?;
        let req = BrokerRegistrationRequest::default()
            .with_broker_id(BrokerId(self.node_id))
            .with_cluster_id(StrBytes::from_string(self.config.cluster_id.clone()))
            .with_incarnation_id(uuid::Uuid::new_v4())
            .with_listeners(vec![Listener::default()
                .with_name(StrBytes::from_static_str("PLAINTEXT"))
                .with_host(StrBytes::from_string(self.advertised.0.clone()))
                .with_port(u16::try_from(self.advertised.1).unwrap_or(0))]);
        let resp = c
            .send_version(&req, 0, RPC_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        if resp.error_code != 0 {
            return Err(format!(
                "registration refused with error {}",
                resp.error_code
            ));
        }
        Ok(resp.broker_epoch)
    }

    /// Registers, then heartbeats every `broker.heartbeat.interval.ms`; re-registers when
    /// the controller no longer knows this incarnation.
    async fn heartbeat_loop(self: Arc<Self>) {
        let interval = Duration::from_millis(self.config.heartbeat_interval_ms.max(10));
        let mut attempt = 0;
        loop {
            if self.broker_epoch() < 0 && self.shutting_down.load(Ordering::Acquire) {
                return; // a stopping broker does not come back as a new incarnation
            }
            if self.broker_epoch() < 0 {
                match self.register().await {
                    Ok(epoch) => {
                        self.broker_epoch.store(epoch, Ordering::Release);
                        tracing::info!(
                            node = self.node_id,
                            epoch,
                            "registered with the controller"
                        );
                        attempt = 0;
                    }
                    Err(e) => {
                        tracing::warn!(node = self.node_id, error = %e, "registration failed; retrying");
                        metrics::counter!(m::CONTROLLER_RETRIES_TOTAL, "call" => "register")
                            .increment(1);
                        attempt += 1;
                        if self.sleep(backoff(attempt)).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            let req = BrokerHeartbeatRequest::default()
                .with_broker_id(BrokerId(self.node_id))
                .with_broker_epoch(self.broker_epoch())
                .with_current_metadata_offset(self.image().offset())
                .with_want_shut_down(self.shutting_down.load(Ordering::Acquire))
                .with_want_fence(!self.ready.load(Ordering::Acquire));
            let sent = match self.controller().await {
                Ok(c) => c
                    .send_version(&req, 0, RPC_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match sent {
                Ok(resp) if resp.error_code == STALE_BROKER_EPOCH => {
                    tracing::warn!(
                        node = self.node_id,
                        "controller has a newer incarnation of us; registering again"
                    );
                    self.broker_epoch.store(-1, Ordering::Release);
                    continue;
                }
                Ok(resp) if resp.error_code != 0 => {
                    tracing::warn!(
                        node = self.node_id,
                        error = resp.error_code,
                        "heartbeat refused"
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(node = self.node_id, error = %e, "heartbeat failed");
                    metrics::counter!(m::CONTROLLER_RETRIES_TOTAL, "call" => "heartbeat")
                        .increment(1);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.heartbeat_now.notified() => {}
                _ = self.stop.cancelled() => return,
            }
        }
    }

    /// Controlled shutdown: asks the controller to move this broker's leaderships away
    /// and fence it, and waits (bounded by `limit`) until it has, so clients and
    /// followers switch to the new leaders before this broker stops serving.
    pub async fn controlled_shutdown(&self, limit: Duration) {
        self.shutting_down.store(true, Ordering::Release);
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline && self.broker_epoch() >= 0 {
            let req = BrokerHeartbeatRequest::default()
                .with_broker_id(BrokerId(self.node_id))
                .with_broker_epoch(self.broker_epoch())
                .with_current_metadata_offset(self.image().offset())
                .with_want_shut_down(true);
            let done = match self.controller().await {
                Ok(c) => c
                    .send_version(&req, 0, Duration::from_secs(2))
                    .await
                    .is_ok_and(|r| r.error_code != 0 || r.should_shut_down),
                Err(_) => false,
            };
            if done {
                tracing::info!(
                    node = self.node_id,
                    "controlled shutdown: leaderships moved"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::warn!(
            node = self.node_id,
            "controlled shutdown did not complete; stopping anyway"
        );
    }

    /// Follows the controller's metadata log and publishes each new image.
    async fn metadata_loop(self: Arc<Self>) {
        let mut image = (*self.image()).clone();
        let mut attempt = 0;
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            let mut p = FetchPartition::default();
            p.partition = 0;
            p.fetch_offset = image.offset() + 1;
            p.current_leader_epoch = -1;
            p.last_fetched_epoch = -1;
            p.log_start_offset = -1;
            p.partition_max_bytes = 4 << 20;
            let mut t = FetchTopic::default();
            t.topic = TopicName(StrBytes::from_static_str(METADATA_TOPIC));
            t.partitions = vec![p];
            let mut req = FetchRequest::default();
            req.replica_id = BrokerId(self.node_id);
            req.max_wait_ms = 500;
            req.min_bytes = 1;
            req.max_bytes = 4 << 20;
            req.session_epoch = -1;
            req.topics = vec![t];
            let fetched = match self.controller().await {
                Ok(c) => c
                    .send_version(&req, 12, RPC_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let records = fetched.and_then(|resp| {
                let p = resp
                    .responses
                    .into_iter()
                    .flat_map(|t| t.partitions)
                    .next()
                    .ok_or("empty metadata fetch response")?;
                if p.error_code != 0 {
                    return Err(format!("metadata fetch error {}", p.error_code));
                }
                decode_batches(p.records.unwrap_or_default()).map_err(|e| e.to_string())
            });
            match records {
                Ok(records) => {
                    attempt = 0;
                    if records.is_empty() {
                        continue;
                    }
                    for (offset, record) in &records {
                        image.apply(*offset, record);
                        if let MetadataRecord::RemoveTopic { id, .. } = record {
                            let mut removed = self
                                .removed_topics
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner);
                            if removed.len() == REMOVED_TOPICS_KEPT {
                                removed.pop_front();
                            }
                            removed.push_back(*id);
                        }
                    }
                    self.image.send_replace(Arc::new(image.clone()));
                }
                Err(e) => {
                    tracing::warn!(node = self.node_id, error = %e, "metadata fetch failed");
                    metrics::counter!(m::CONTROLLER_RETRIES_TOTAL, "call" => "metadata")
                        .increment(1);
                    attempt += 1;
                    if self.sleep(backoff(attempt)).await {
                        return;
                    }
                }
            }
        }
    }

    /// Applies image changes to this broker's replicas, and keeps one fetcher per leader.
    async fn replica_manager(self: Arc<Self>) {
        let mut rx = self.image.subscribe();
        let mut applied = Arc::new(MetadataImage::new());
        let mut fetchers: BTreeMap<i32, (JoinHandle<()>, CancellationToken)> = BTreeMap::new();
        let mut last_ready: Option<(bool, Vec<String>)> = None;
        let mut swept = false;
        loop {
            let new = rx.borrow_and_update().clone();
            // Removes first (a re-created topic needs its directories back), then the
            // rest. Within each group every change is for a different partition, so they
            // run side by side: a new topic's partitions open (and fsync) concurrently.
            let (removes, becomes): (Vec<_>, Vec<_>) = diff(&applied, &new, self.node_id)
                .into_iter()
                .partition(|c| matches!(c, ReplicaChange::Remove { .. }));
            for group in [removes, becomes] {
                let work = group.into_iter().map(|change| {
                    let topics = self.topics.clone();
                    let me = self.node_id;
                    let image = new.clone();
                    tokio::task::spawn_blocking(move || apply_change(&topics, &image, me, change))
                });
                for outcome in futures::future::join_all(work).await {
                    match outcome {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::error!(node = self.node_id, error = %e, "applying a replica change failed")
                        }
                        Err(e) => {
                            tracing::error!(node = self.node_id, error = %e, "replica change task panicked")
                        }
                    }
                }
            }
            self.applied.send_replace(new.offset());
            // Fenced brokers no longer count toward any HW or ISR of ours.
            for topic in self.topics.all() {
                for r in &topic.replicas {
                    let (_, _, replicas, _) = r.role_view();
                    let fenced = replicas
                        .into_iter()
                        .filter(|&b| b != self.node_id && !new.is_unfenced(b))
                        .collect();
                    r.set_fenced(fenced);
                }
            }
            // Repairs of corrupt batches cut the log once the controller has fenced us (no
            // ISR holds us any more) and the replica follows.
            if !new.is_unfenced(self.node_id) {
                for topic in self.topics.all() {
                    for r in &topic.replicas {
                        if let Some(at) = r.take_repair() {
                            let r = r.clone();
                            let cut = tokio::task::spawn_blocking(move || fetcher::repair(&r, at));
                            if let Ok(Err(e)) = cut.await {
                                tracing::error!(node = self.node_id, topic = %topic.meta.name, error = %e, "cutting the log at a corrupt batch failed");
                            }
                        }
                    }
                }
            }
            // A replica that is the partition's only one has nobody to fetch lost data
            // from: it serves what it has (said once, loudly) instead of keeping the
            // broker fenced and the partition offline forever.
            for topic in self.topics.all() {
                for r in &topic.replicas {
                    r.forgo_repair_if_alone(self.node_id);
                }
            }
            let caught_up = new
                .broker(self.node_id)
                .is_some_and(|b| b.epoch == self.broker_epoch() && new.offset() >= b.registered_at);
            let repairing: Vec<String> = self
                .topics
                .all()
                .iter()
                .flat_map(|t| t.replicas.iter())
                .filter(|r| r.is_repairing())
                .map(|r| format!("{}-{}", r.topic, r.partition))
                .collect();
            if caught_up && !swept {
                // The image now covers everything up to our registration: any partition
                // directory it does not assign here is a leftover (deleted topic, moved
                // replica) from while this broker was down.
                swept = true;
                let topics = self.topics.clone();
                let image = new.clone();
                let me = self.node_id;
                let removed = tokio::task::spawn_blocking(move || {
                    topics.remove_unassigned_dirs(|topic, partition| {
                        image.topic(topic).is_some_and(|t| {
                            t.partitions
                                .get(partition as usize)
                                .is_some_and(|p| p.replicas.contains(&me))
                        })
                    })
                })
                .await
                .unwrap_or(0);
                if removed > 0 {
                    tracing::info!(
                        node = self.node_id,
                        removed,
                        "removed unassigned replica directories"
                    );
                }
            }
            let ready = caught_up && repairing.is_empty();
            self.repairing
                .store(!repairing.is_empty(), Ordering::Release);
            if self.ready.swap(ready, Ordering::AcqRel) != ready {
                self.heartbeat_now.notify_one();
            }
            if last_ready.as_ref() != Some(&(ready, repairing.clone())) {
                tracing::info!(node = self.node_id, ready, ?repairing, "ready to serve");
                last_ready = Some((ready, repairing));
            }
            applied = new;
            // One fetcher per broker that leads something we follow.
            let mut leaders: Vec<i32> = self
                .topics
                .all()
                .iter()
                .flat_map(|t| t.replicas.iter())
                .filter(|r| !r.is_deleted() && !r.is_leader())
                .map(|r| r.role_view().0)
                .filter(|&l| l >= 0)
                .collect();
            leaders.sort_unstable();
            leaders.dedup();
            fetchers.retain(|leader, (task, stop)| {
                let keep = leaders.contains(leader) && !task.is_finished();
                if !keep {
                    stop.cancel();
                }
                keep
            });
            for leader in leaders {
                fetchers.entry(leader).or_insert_with(|| {
                    let stop = self.stop.child_token();
                    let task = tokio::spawn(fetcher::run(self.clone(), leader, stop.clone()));
                    (task, stop)
                });
            }
            // Not ready yet: a repairing replica catches up without any metadata change,
            // so look again shortly even if the image stays the same.
            let recheck = if self.ready.load(Ordering::Acquire) {
                Duration::from_secs(3600)
            } else {
                Duration::from_millis(200)
            };
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep(recheck) => {}
                _ = self.recheck.notified() => {}
                _ = self.stop.cancelled() => break,
            }
        }
        for (_, (task, stop)) in fetchers {
            stop.cancel();
            let _ = task.await;
        }
    }

    /// Leaders check their followers every half `replica.lag.time.max.ms`.
    async fn isr_loop(self: Arc<Self>) {
        let period =
            Duration::from_millis((self.config.replica_lag_time_max_ms / 2).clamp(50, 5_000));
        loop {
            if self.sleep(period).await {
                return;
            }
            for topic in self.topics.all() {
                for r in &topic.replicas {
                    if let Some(isr) = r.isr_check() {
                        self.send_isr(r.clone(), topic.meta.id, isr);
                    }
                }
            }
        }
    }

    /// Sends a proposed ISR to the controller in the background and reports the outcome
    /// to the replica (one change is in flight per partition: the replica's gate).
    pub fn send_isr(self: &Arc<Self>, replica: Arc<Replica>, topic_id: uuid::Uuid, isr: Vec<i32>) {
        let this = self.clone();
        tokio::spawn(async move {
            let before = replica.role_view().3;
            let result = this.alter_partition(&replica, topic_id, &isr).await;
            match &result {
                Ok(IsrChangeResult::Committed { isr }) => {
                    tracing::info!(topic = %replica.topic, partition = replica.partition, ?isr, "isr changed");
                    if isr.iter().any(|id| !before.contains(id)) {
                        metrics::counter!(m::ISR_EXPANDS_TOTAL).increment(1);
                    }
                    if before.iter().any(|id| !isr.contains(id)) {
                        metrics::counter!(m::ISR_SHRINKS_TOTAL).increment(1);
                    }
                }
                Ok(IsrChangeResult::Failed) => {}
                Err(e) => {
                    tracing::warn!(topic = %replica.topic, partition = replica.partition, error = %e, "alter partition failed")
                }
            }
            replica.isr_change_done(result.unwrap_or(IsrChangeResult::Failed));
        });
    }

    async fn alter_partition(
        &self,
        replica: &Replica,
        topic_id: uuid::Uuid,
        isr: &[i32],
    ) -> Result<IsrChangeResult, String> {
        let view = replica.role_view();
        let image = self.image();
        let members = isr
            .iter()
            .map(|&b| {
                BrokerState::default()
                    .with_broker_id(BrokerId(b))
                    .with_broker_epoch(image.broker(b).map_or(-1, |i| i.epoch))
            })
            .collect();
        let req = AlterPartitionRequest::default()
            .with_broker_id(BrokerId(self.node_id))
            .with_broker_epoch(self.broker_epoch())
            .with_topics(vec![TopicData::default()
                .with_topic_id(topic_id)
                .with_partitions(vec![PartitionData::default()
                    .with_partition_index(replica.partition)
                    .with_leader_epoch(view.1)
                    .with_partition_epoch(replica.partition_epoch())
                    .with_new_isr_with_epochs(members)])]);
        let c = self.controller().await.map_err(|e| e.to_string())?;
        let resp = c
            .send_version(&req, 3, RPC_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let p = resp
            .topics
            .into_iter()
            .flat_map(|t| t.partitions)
            .next()
            .ok_or("empty alter partition response")?;
        if resp.error_code != 0 || p.error_code != 0 {
            tracing::debug!(
                error = resp.error_code.max(p.error_code),
                "isr change refused"
            );
            return Ok(IsrChangeResult::Failed);
        }
        Ok(IsrChangeResult::Committed {
            isr: p.isr.iter().map(|b| b.0).collect(),
        })
    }

    /// Sleeps unless the broker stops first; true if it is stopping.
    pub async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = self.stop.cancelled() => true,
        }
    }
}

fn apply_change(
    topics: &Topics,
    image: &MetadataImage,
    me: i32,
    change: ReplicaChange,
) -> Result<(), crate::BrokerError> {
    match change {
        ReplicaChange::Remove {
            topic,
            topic_id,
            partition,
        } => {
            topics.remove_replica(&topic, topic_id, partition);
        }
        ReplicaChange::BecomeLeader {
            topic,
            topic_id,
            partition,
            record,
        }
        | ReplicaChange::BecomeFollower {
            topic,
            topic_id,
            partition,
            record,
        } => {
            let configs = image
                .topic(&topic)
                .map(|t| t.configs.clone())
                .unwrap_or_default();
            let replica = topics.ensure_replica(&topic, topic_id, partition, &configs)?;
            let transition = replica.apply_record(&record);
            if transition != Transition::IsrOnly {
                tracing::info!(
                    node = me,
                    topic,
                    partition,
                    leader = record.leader,
                    epoch = record.leader_epoch,
                    isr = ?record.isr,
                    "{}",
                    if transition == Transition::BecameLeader { "became leader" } else { "became follower" }
                );
            }
        }
    }
    Ok(())
}
