//! The broker's link to the controller quorum: a connection per voter (made again after a
//! failure), registration and heartbeats, controlled shutdown, and the AlterPartition
//! requests of the partitions this broker leads.
//!
//! Commands go to the active controller. The link keeps a guess of which voter that is
//! (the leader the metadata log's answers name, see [`ControllerLink::leader_hint`]); a
//! voter that answers NOT_CONTROLLER or cannot be reached sends the call on to the hinted
//! leader or the next voter, after a short back-off, until the call's time is up. Each such
//! move is counted.
//!
//! A broker is fenced from its registration on; its heartbeats ask to be unfenced once it is
//! ready (see [`HeartbeatStatus`]) and keep it unfenced, and a heartbeat that finds a newer
//! incarnation of this broker registered makes it register again.

use crate::controller::MetadataImage;
use crate::metrics as m;
use crate::partition::Replica;
use crate::replication::IsrChangeResult;
use kafka_protocol::messages::alter_partition_request::{
    AlterPartitionRequest, BrokerState, PartitionData, TopicData,
};
use kafka_protocol::messages::broker_heartbeat_request::BrokerHeartbeatRequest;
use kafka_protocol::messages::broker_registration_request::{BrokerRegistrationRequest, Listener};
use kafka_protocol::messages::BrokerId;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use keel_client::connection::Connection;
use keel_client::ClientError;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

/// How long one call to the controller may take.
pub(crate) const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// Exponential backoff from 50 ms to 2 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((50u64 << attempt.min(6)).min(2_000))
}

/// Why a call to the controller did not get a usable answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    #[error("cannot reach the controller at {addr}: {source}")]
    Unreachable {
        addr: String,
        #[source]
        source: ClientError,
    },
    #[error("{call} to the controller failed: {source}")]
    Call {
        call: &'static str,
        #[source]
        source: ClientError,
    },
    #[error("the controller refused {call}: {}", error_name(*code))]
    Refused { call: &'static str, code: i16 },
    #[error("the controller's answer to {call} names no partition")]
    EmptyAnswer { call: &'static str },
    #[error("no active controller answered {call} within {waited:?} (voters {voters}): the controller quorum has no leader, or none is reachable")]
    NoController {
        call: &'static str,
        waited: Duration,
        voters: String,
    },
}

/// An answer that may say "not the active controller" for the whole request.
pub(crate) trait ControllerAnswer {
    fn not_controller(&self) -> bool;
}

const NOT_CONTROLLER: i16 = 41;

macro_rules! top_level_error {
    ($($t:ty),*) => {$(
        impl ControllerAnswer for $t {
            fn not_controller(&self) -> bool {
                self.error_code == NOT_CONTROLLER
            }
        }
    )*};
}

top_level_error!(
    kafka_protocol::messages::BrokerRegistrationResponse,
    kafka_protocol::messages::BrokerHeartbeatResponse,
    kafka_protocol::messages::AlterPartitionResponse,
    kafka_protocol::messages::AllocateProducerIdsResponse
);

impl ControllerAnswer for kafka_protocol::messages::CreateTopicsResponse {
    fn not_controller(&self) -> bool {
        !self.topics.is_empty() && self.topics.iter().all(|t| t.error_code == NOT_CONTROLLER)
    }
}

impl ControllerAnswer for kafka_protocol::messages::DeleteTopicsResponse {
    fn not_controller(&self) -> bool {
        !self.responses.is_empty()
            && self
                .responses
                .iter()
                .all(|t| t.error_code == NOT_CONTROLLER)
    }
}

/// `NAME (code)` for a Kafka error code.
pub(crate) fn error_name(code: i16) -> String {
    let name = ResponseError::try_from_code(code).map_or_else(|| "?".into(), |e| e.to_string());
    format!("{name} ({code})")
}

/// What a heartbeat reports about the broker.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeartbeatStatus {
    /// The offset of the last metadata record this broker applied.
    pub(crate) metadata_offset: i64,
    /// Not ready to serve (metadata not caught up, or a replica repairing lost data).
    pub(crate) want_fence: bool,
}

pub(crate) struct ControllerLink {
    node_id: i32,
    cluster_id: String,
    /// Host and port this broker registers (and clients are given).
    advertised: (String, i32),
    /// The controller voters: node id and `host:port`.
    voters: Vec<(i32, String)>,
    /// Index in `voters` of the one believed to be the active controller.
    active: AtomicUsize,
    /// Index in `voters` of the one the metadata follower reads from.
    polled: AtomicUsize,
    /// For registration, AlterPartition and the other calls answered once committed.
    conns: Mutex<HashMap<i32, Arc<Connection>>>,
    /// For heartbeats only: a voter answers one connection's requests in order, so a
    /// heartbeat on `conns` waited for every AlterPartition sent before it to commit (a
    /// burst of ISR changes then fenced the live broker that sent them). The controller
    /// also watches this connection: its close shortens the broker's session.
    heartbeat_conns: Mutex<HashMap<i32, Arc<Connection>>>,
    /// For the metadata follower's long polls only: a voter answers one connection's
    /// requests in order, so a heartbeat must never queue behind a poll that waits.
    poll_conns: Mutex<HashMap<i32, Arc<Connection>>>,
    broker_epoch: AtomicI64,
    /// Set once controlled shutdown starts: every heartbeat then asks to shut down.
    shutting_down: AtomicBool,
    /// Wakes the heartbeat loop to send one now (readiness changed: the controller should
    /// hear at once, not a heartbeat interval later).
    heartbeat_now: Notify,
}

impl ControllerLink {
    pub(crate) fn new(
        node_id: i32,
        cluster_id: String,
        advertised: (String, i32),
        voters: Vec<(i32, String)>,
    ) -> Self {
        assert!(!voters.is_empty(), "a broker needs a controller voter");
        // Start where this node is a voter itself, else with the first.
        let me = voters
            .iter()
            .position(|(id, _)| *id == node_id)
            .unwrap_or(0);
        Self {
            node_id,
            cluster_id,
            advertised,
            voters,
            active: AtomicUsize::new(me),
            polled: AtomicUsize::new(me),
            conns: Mutex::new(HashMap::new()),
            heartbeat_conns: Mutex::new(HashMap::new()),
            poll_conns: Mutex::new(HashMap::new()),
            broker_epoch: AtomicI64::new(-1),
            shutting_down: AtomicBool::new(false),
            heartbeat_now: Notify::new(),
        }
    }

    /// This broker's epoch: the one its registration got, -1 while unregistered.
    pub(crate) fn broker_epoch(&self) -> i64 {
        self.broker_epoch.load(Ordering::Acquire)
    }

    /// The node id of the voter this broker takes for the active controller.
    pub(crate) fn controller_id(&self) -> i32 {
        self.voters[self.active.load(Ordering::Relaxed) % self.voters.len()].0
    }

    pub(crate) fn controller_addr(&self) -> String {
        self.voters[self.active.load(Ordering::Relaxed) % self.voters.len()]
            .1
            .clone()
    }

    fn voters_text(&self) -> String {
        self.voters
            .iter()
            .map(|(id, a)| format!("{id}@{a}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// What the quorum says of its leader (from metadata fetch answers): commands go there.
    pub(crate) fn leader_hint(&self, leader: i32) {
        if let Some(i) = self.voters.iter().position(|(id, _)| *id == leader) {
            self.active.store(i, Ordering::Relaxed);
        }
    }

    /// Sends a heartbeat now rather than at the next interval.
    pub(crate) fn wake_heartbeat(&self) {
        self.heartbeat_now.notify_one();
    }

    async fn connect(
        &self,
        slot: &Mutex<HashMap<i32, Arc<Connection>>>,
        voter: usize,
    ) -> Result<Arc<Connection>, LinkError> {
        let (id, addr) = &self.voters[voter % self.voters.len()];
        let mut guard = slot.lock().await;
        if let Some(c) = guard.get(id).filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let c = Connection::connect(
            addr,
            &format!("keel-broker-{}", self.node_id),
            Duration::from_secs(2),
            RPC_TIMEOUT,
        )
        .await
        .map_err(|source| LinkError::Unreachable {
            addr: addr.clone(),
            source,
        })?;
        let c = Arc::new(c);
        guard.insert(*id, c.clone());
        Ok(c)
    }

    /// Sends `req` at `version` to the active controller and waits for its answer; follows
    /// the active controller when it moves (see the module doc), until `timeout`.
    pub(crate) async fn call<R>(
        &self,
        call: &'static str,
        req: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response, LinkError>
    where
        R: kafka_protocol::protocol::Request,
        R::Response: ControllerAnswer,
    {
        self.call_via(&self.conns, call, req, version, timeout)
            .await
    }

    /// A heartbeat, on its own connections.
    async fn heartbeat_call(
        &self,
        req: &BrokerHeartbeatRequest,
        timeout: Duration,
    ) -> Result<kafka_protocol::messages::BrokerHeartbeatResponse, LinkError> {
        self.call_via(&self.heartbeat_conns, "heartbeat", req, 0, timeout)
            .await
    }

    /// [`Self::call`] over the connections in `conns`.
    async fn call_via<R>(
        &self,
        conns: &Mutex<HashMap<i32, Arc<Connection>>>,
        call: &'static str,
        req: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response, LinkError>
    where
        R: kafka_protocol::protocol::Request,
        R::Response: ControllerAnswer,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut attempt = 0u32;
        loop {
            let voter = self.active.load(Ordering::Relaxed);
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let sent = match self.connect(conns, voter).await {
                Ok(c) => c
                    .send_version(req, version, left.min(RPC_TIMEOUT))
                    .await
                    .map_err(|source| LinkError::Call { call, source }),
                Err(e) => Err(e),
            };
            match sent {
                Ok(resp) if !resp.not_controller() => return Ok(resp),
                Ok(_) => {
                    metrics::counter!(m::NOT_CONTROLLER_TOTAL, "call" => call).increment(1);
                }
                Err(e) => {
                    tracing::debug!(call, error = %e, "controller voter did not answer");
                    metrics::counter!(m::CONTROLLER_RETRIES_TOTAL, "call" => call).increment(1);
                    conns
                        .lock()
                        .await
                        .remove(&self.voters[voter % self.voters.len()].0);
                    if self.voters.len() == 1 {
                        return Err(e);
                    }
                }
            }
            // The hint may already name another voter; if not, try the next one.
            let _ = self.active.compare_exchange(
                voter,
                (voter + 1) % self.voters.len(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            attempt += 1;
            let pause = Duration::from_millis((25u64 << attempt.min(4)).min(400));
            if tokio::time::Instant::now() + pause >= deadline {
                return Err(LinkError::NoController {
                    call,
                    waited: timeout,
                    voters: self.voters_text(),
                });
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Sends a long poll (a metadata fetch) to the voter the follower reads from, on a
    /// connection of its own; a voter that fails it is left for the next one.
    pub(crate) async fn long_poll<R>(
        &self,
        call: &'static str,
        req: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response, LinkError>
    where
        R: kafka_protocol::protocol::Request,
    {
        let voter = self.polled.load(Ordering::Relaxed);
        let sent = match self.connect(&self.poll_conns, voter).await {
            Ok(c) => c
                .send_version(req, version, timeout)
                .await
                .map_err(|source| LinkError::Call { call, source }),
            Err(e) => Err(e),
        };
        if sent.is_err() {
            self.poll_conns
                .lock()
                .await
                .remove(&self.voters[voter % self.voters.len()].0);
            self.polled
                .store((voter + 1) % self.voters.len(), Ordering::Relaxed);
        }
        sent
    }

    async fn register(&self) -> Result<i64, LinkError> {
        let req = BrokerRegistrationRequest::default()
            .with_broker_id(BrokerId(self.node_id))
            .with_cluster_id(StrBytes::from_string(self.cluster_id.clone()))
            .with_incarnation_id(uuid::Uuid::new_v4())
            .with_listeners(vec![Listener::default()
                .with_name(StrBytes::from_static_str("PLAINTEXT"))
                .with_host(StrBytes::from_string(self.advertised.0.clone()))
                .with_port(u16::try_from(self.advertised.1).unwrap_or(0))]);
        let resp = self.call("registration", &req, 0, RPC_TIMEOUT).await?;
        if resp.error_code != 0 {
            return Err(LinkError::Refused {
                call: "registration",
                code: resp.error_code,
            });
        }
        Ok(resp.broker_epoch)
    }

    /// Registers, then heartbeats every `interval` (or when woken) with what `status` says;
    /// registers again when the controller no longer knows this incarnation. Until `stop`.
    pub(crate) async fn heartbeat_loop(
        self: Arc<Self>,
        status: impl Fn() -> HeartbeatStatus + Send,
        interval: Duration,
        stop: CancellationToken,
    ) {
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
                        if sleep_or_stop(&stop, backoff(attempt)).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            let now = status();
            let req = BrokerHeartbeatRequest::default()
                .with_broker_id(BrokerId(self.node_id))
                .with_broker_epoch(self.broker_epoch())
                .with_current_metadata_offset(now.metadata_offset)
                .with_want_shut_down(self.shutting_down.load(Ordering::Acquire))
                .with_want_fence(now.want_fence);
            match self.heartbeat_call(&req, RPC_TIMEOUT).await {
                Ok(resp) if resp.error_code == ResponseError::StaleBrokerEpoch.code() => {
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
                        error = %error_name(resp.error_code),
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
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Controlled shutdown: asks the controller to move this broker's leaderships away
    /// and fence it, and waits (bounded by `limit`) until it has, so clients and
    /// followers switch to the new leaders before this broker stops serving.
    pub(crate) async fn controlled_shutdown(&self, metadata_offset: i64, limit: Duration) {
        self.shutting_down.store(true, Ordering::Release);
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline && self.broker_epoch() >= 0 {
            let req = BrokerHeartbeatRequest::default()
                .with_broker_id(BrokerId(self.node_id))
                .with_broker_epoch(self.broker_epoch())
                .with_current_metadata_offset(metadata_offset)
                .with_want_shut_down(true);
            let done = self
                .heartbeat_call(&req, Duration::from_secs(2))
                .await
                .is_ok_and(|r| r.error_code != 0 || r.should_shut_down);
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

    /// Sends a proposed ISR to the controller in the background and reports the outcome
    /// to the replica (one change is in flight per partition: the replica's gate).
    pub(crate) fn propose_isr(
        self: &Arc<Self>,
        replica: Arc<Replica>,
        topic_id: uuid::Uuid,
        isr: Vec<i32>,
        image: Arc<MetadataImage>,
    ) {
        let link = self.clone();
        tokio::spawn(async move {
            let before = replica.role_view().3;
            let result = link.alter_partition(&replica, topic_id, &isr, &image).await;
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
        image: &MetadataImage,
    ) -> Result<IsrChangeResult, LinkError> {
        let view = replica.role_view();
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
        let call = "alter partition";
        let resp = self.call(call, &req, 3, RPC_TIMEOUT).await?;
        let p = resp
            .topics
            .into_iter()
            .flat_map(|t| t.partitions)
            .next()
            .ok_or(LinkError::EmptyAnswer { call })?;
        if resp.error_code != 0 || p.error_code != 0 {
            tracing::debug!(
                error = %error_name(resp.error_code.max(p.error_code)),
                "isr change refused"
            );
            return Ok(IsrChangeResult::Failed);
        }
        Ok(IsrChangeResult::Committed {
            isr: p.isr.iter().map(|b| b.0).collect(),
        })
    }
}

/// Sleeps unless `stop` comes first; true if it did.
pub(crate) async fn sleep_or_stop(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.cancelled() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_50_ms_to_2_s() {
        let table = [
            (0, 50),
            (1, 100),
            (2, 200),
            (5, 1_600),
            (6, 2_000),
            (40, 2_000),
        ];
        for (attempt, ms) in table {
            assert_eq!(
                backoff(attempt),
                Duration::from_millis(ms),
                "attempt {attempt}"
            );
        }
    }

    #[test]
    fn refusals_name_the_kafka_error() {
        let e = LinkError::Refused {
            call: "registration",
            code: ResponseError::InconsistentClusterId.code(),
        };
        let text = e.to_string();
        assert!(
            text.starts_with("the controller refused registration: "),
            "{text}"
        );
        assert!(text.ends_with("(104)"), "{text}");
    }
}
