//! One member of a consumer group, speaking the classic protocol to the group's
//! coordinator: find it, join (with the KIP-394 member id round), sync (computing the
//! assignment when this member leads), heartbeat in the background, commit and fetch
//! offsets, leave.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::heartbeat_request::HeartbeatRequest;
use kafka_protocol::messages::join_group_request::{JoinGroupRequest, JoinGroupRequestProtocol};
use kafka_protocol::messages::leave_group_request::{LeaveGroupRequest, MemberIdentity};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequest, OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{OffsetFetchRequest, OffsetFetchRequestTopic};
use kafka_protocol::messages::sync_group_request::{SyncGroupRequest, SyncGroupRequestAssignment};
use kafka_protocol::messages::{GroupId, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tracing::{debug, info, warn};

use super::assignor::{self, Assignor, Subscription, TopicPartition};
use crate::cluster::Cluster;
use crate::config::GroupConfig;
use crate::connection::Connection;
use crate::error::ClientError;

/// Pause between attempts while the coordinator is being found or loads.
const RETRY_BACKOFF: Duration = Duration::from_millis(200);
/// How long to keep looking for a coordinator before giving up on one call.
const FIND_DEADLINE: Duration = Duration::from_secs(60);

/// What the heartbeat task and the consumer share.
#[derive(Debug, Default)]
struct Shared {
    member_id: String,
    generation: i32,
    /// The coordinator's `host:port`, once found.
    coordinator: Option<String>,
    /// The coordinator asked for a rejoin (or the membership was lost).
    rejoin: bool,
}

/// This consumer's membership in its group.
pub(crate) struct Membership {
    cluster: Arc<Cluster>,
    config: GroupConfig,
    shared: Arc<Mutex<Shared>>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    /// The protocol the group chose at the last join.
    protocol: Option<Assignor>,
    joined: bool,
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// Errors that send a member back to looking for its coordinator.
fn coordinator_moved(code: i16) -> bool {
    code == ResponseError::NotCoordinator.code()
        || code == ResponseError::CoordinatorNotAvailable.code()
}

/// The topics of an OffsetCommit of `offsets` (next offset to read per partition).
pub(crate) fn commit_topics(offsets: &[(TopicPartition, i64)]) -> Vec<OffsetCommitRequestTopic> {
    let mut by_topic: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
    for ((t, p), o) in offsets {
        by_topic.entry(t).or_default().push(
            OffsetCommitRequestPartition::default()
                .with_partition_index(*p)
                .with_committed_offset(*o)
                .with_committed_leader_epoch(-1),
        );
    }
    by_topic
        .into_iter()
        .map(|(t, ps)| {
            OffsetCommitRequestTopic::default()
                .with_name(TopicName(s(t)))
                .with_partitions(ps)
        })
        .collect()
}

/// The `host:port` of `group`'s coordinator (FindCoordinator), retrying while the
/// cluster creates the offsets topic or elects its leaders.
pub(crate) async fn find_coordinator(
    cluster: &Cluster,
    group: &str,
) -> Result<String, ClientError> {
    let deadline = tokio::time::Instant::now() + FIND_DEADLINE;
    loop {
        let found = async {
            let conn = cluster.any_connection().await?;
            let req = FindCoordinatorRequest::default().with_key(s(group));
            let resp = conn.send(&req).await?;
            if resp.error_code != 0 {
                return Err(ClientError::kafka(resp.error_code, "find coordinator"));
            }
            Ok(format!("{}:{}", resp.host, resp.port))
        }
        .await;
        match found {
            Ok(addr) => {
                debug!(group, coordinator = addr, "found the coordinator");
                return Ok(addr);
            }
            Err(e) if e.is_retriable() && tokio::time::Instant::now() < deadline => {
                debug!(error = %e, "no coordinator yet");
                tokio::time::sleep(RETRY_BACKOFF).await;
            }
            Err(e) => return Err(e),
        }
    }
}

impl Membership {
    pub(crate) fn new(cluster: Arc<Cluster>, config: GroupConfig) -> Membership {
        Membership {
            cluster,
            config,
            shared: Arc::new(Mutex::new(Shared {
                generation: -1,
                ..Shared::default()
            })),
            heartbeat: None,
            protocol: None,
            joined: false,
        }
    }

    /// Whether a (re)join is due: never joined, or the coordinator asked for one.
    pub(crate) fn needs_join(&self) -> bool {
        !self.joined || lock(&self.shared).rejoin
    }

    /// Asks for a rejoin at the next poll (e.g. after a cooperative revocation).
    pub(crate) fn request_rejoin(&self) {
        lock(&self.shared).rejoin = true;
    }

    /// The protocol chosen at the last join (the assignor everyone runs).
    pub(crate) fn protocol(&self) -> Option<Assignor> {
        self.protocol
    }

    /// A connection to the group's coordinator, found with FindCoordinator when needed.
    async fn coordinator(&self) -> Result<Arc<Connection>, ClientError> {
        let known = lock(&self.shared).coordinator.clone();
        if let Some(addr) = known {
            match self.cluster.connection_to_addr(&addr).await {
                Ok(c) => return Ok(c),
                Err(_) => lock(&self.shared).coordinator = None,
            }
        }
        let addr = find_coordinator(&self.cluster, &self.config.group_id).await?;
        let conn = self.cluster.connection_to_addr(&addr).await?;
        lock(&self.shared).coordinator = Some(addr);
        Ok(conn)
    }

    fn forget_coordinator(&self) {
        lock(&self.shared).coordinator = None;
    }

    /// Joins (or rejoins) the group and returns this member's assignment. `owned` is what
    /// it holds now (announced with the cooperative protocol).
    pub(crate) async fn join(
        &mut self,
        topics: &[String],
        owned: &[TopicPartition],
    ) -> Result<Vec<TopicPartition>, ClientError> {
        self.stop_heartbeat();
        let deadline = tokio::time::Instant::now() + FIND_DEADLINE + self.config.rebalance_timeout;
        loop {
            match self.join_once(topics, owned).await {
                Ok(assignment) => {
                    self.joined = true;
                    lock(&self.shared).rejoin = false;
                    self.start_heartbeat();
                    return Ok(assignment);
                }
                Err(e) if self.may_retry_join(&e) && tokio::time::Instant::now() < deadline => {
                    if e.kafka_code().is_some_and(coordinator_moved) {
                        self.forget_coordinator();
                    }
                    debug!(error = %e, "join attempt failed; retrying");
                    tokio::time::sleep(RETRY_BACKOFF).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Join errors worth another attempt: retriable ones, and those that only say this
    /// member's view of the group is out of date (it joins again, afresh if need be).
    fn may_retry_join(&self, e: &ClientError) -> bool {
        let stale = [
            ResponseError::UnknownMemberId,
            ResponseError::IllegalGeneration,
            ResponseError::RebalanceInProgress,
        ];
        e.is_retriable()
            || e.kafka_code()
                .is_some_and(|c| stale.iter().any(|s| s.code() == c))
    }

    async fn join_once(
        &mut self,
        topics: &[String],
        owned: &[TopicPartition],
    ) -> Result<Vec<TopicPartition>, ClientError> {
        let conn = self.coordinator().await?;
        let sub = assignor::encode_subscription(&Subscription {
            topics: topics.to_vec(),
            owned: owned.to_vec(),
        });
        let protocols = self
            .config
            .assignors
            .iter()
            .map(|a| {
                JoinGroupRequestProtocol::default()
                    .with_name(s(a.name()))
                    .with_metadata(sub.clone())
            })
            .collect::<Vec<_>>();
        let timeout = self.config.rebalance_timeout + Duration::from_secs(5);
        let mut member_id = lock(&self.shared).member_id.clone();
        let joined = loop {
            let req = JoinGroupRequest::default()
                .with_group_id(GroupId(s(&self.config.group_id)))
                .with_session_timeout_ms(self.config.session_timeout.as_millis() as i32)
                .with_rebalance_timeout_ms(self.config.rebalance_timeout.as_millis() as i32)
                .with_member_id(s(&member_id))
                .with_group_instance_id(self.config.instance_id.as_deref().map(s))
                .with_protocol_type(s("consumer"))
                .with_protocols(protocols.clone());
            let resp = conn.send_with_timeout(&req, timeout).await?;
            let code = resp.error_code;
            if code == ResponseError::MemberIdRequired.code() {
                member_id = resp.member_id.to_string();
                lock(&self.shared).member_id = member_id.clone();
                continue;
            }
            if code == ResponseError::UnknownMemberId.code() {
                member_id.clear();
                lock(&self.shared).member_id.clear();
                return Err(ClientError::kafka(
                    code,
                    "join group: unknown member, joining afresh",
                ));
            }
            if code != 0 {
                return Err(ClientError::kafka(code, "join group"));
            }
            break resp;
        };
        let member_id = joined.member_id.to_string();
        let generation = joined.generation_id;
        let protocol = joined
            .protocol_name
            .as_deref()
            .and_then(Assignor::from_name)
            .ok_or_else(|| {
                ClientError::protocol("join group", "the group chose an unknown assignor")
            })?;
        {
            let mut sh = lock(&self.shared);
            sh.member_id = member_id.clone();
            sh.generation = generation;
        }
        self.protocol = Some(protocol);
        let assignments = if joined.leader == joined.member_id && !joined.skip_assignment {
            self.lead(protocol, &joined.members).await?
        } else {
            Vec::new()
        };
        info!(
            group = self.config.group_id,
            member = member_id,
            generation,
            protocol = protocol.name(),
            leader = joined.leader == joined.member_id,
            "joined the group"
        );
        let req = SyncGroupRequest::default()
            .with_group_id(GroupId(s(&self.config.group_id)))
            .with_generation_id(generation)
            .with_member_id(s(&member_id))
            .with_group_instance_id(self.config.instance_id.as_deref().map(s))
            .with_protocol_type(Some(s("consumer")))
            .with_protocol_name(Some(s(protocol.name())))
            .with_assignments(assignments);
        let resp = conn.send_with_timeout(&req, timeout).await?;
        if resp.error_code != 0 {
            return Err(ClientError::kafka(resp.error_code, "sync group"));
        }
        assignor::decode_assignment(resp.assignment)
            .ok_or_else(|| ClientError::protocol("sync group", "cannot decode the assignment"))
    }

    /// The leader's job: every member's assignment, by the chosen assignor.
    async fn lead(
        &self,
        protocol: Assignor,
        members: &[kafka_protocol::messages::join_group_response::JoinGroupResponseMember],
    ) -> Result<Vec<SyncGroupRequestAssignment>, ClientError> {
        let mut subs: BTreeMap<String, Subscription> = BTreeMap::new();
        for m in members {
            let sub = assignor::decode_subscription(m.metadata.clone()).unwrap_or_default();
            subs.insert(m.member_id.to_string(), sub);
        }
        let mut partitions: BTreeMap<String, i32> = BTreeMap::new();
        for topic in subs.values().flat_map(|s| s.topics.iter()) {
            if partitions.contains_key(topic) {
                continue;
            }
            match self.cluster.topic_metadata(topic).await {
                Ok(meta) => {
                    partitions.insert(topic.clone(), meta.partitions.len() as i32);
                }
                Err(e) => warn!(topic, error = %e, "leader: no metadata for a subscribed topic"),
            }
        }
        let plan = assignor::assign(protocol, &subs, &partitions);
        Ok(plan
            .into_iter()
            .map(|(member, parts)| {
                SyncGroupRequestAssignment::default()
                    .with_member_id(s(&member))
                    .with_assignment(assignor::encode_assignment(&parts))
            })
            .collect())
    }

    fn start_heartbeat(&mut self) {
        let shared = self.shared.clone();
        let cluster = self.cluster.clone();
        let config = self.config.clone();
        self.heartbeat = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(config.heartbeat_interval).await;
                let (member, generation, addr) = {
                    let sh = lock(&shared);
                    (sh.member_id.clone(), sh.generation, sh.coordinator.clone())
                };
                let Some(addr) = addr else {
                    lock(&shared).rejoin = true;
                    return;
                };
                let req = HeartbeatRequest::default()
                    .with_group_id(GroupId(s(&config.group_id)))
                    .with_generation_id(generation)
                    .with_member_id(s(&member))
                    .with_group_instance_id(config.instance_id.as_deref().map(s));
                let sent = async {
                    let conn = cluster.connection_to_addr(&addr).await?;
                    conn.send(&req).await
                }
                .await;
                let code = match sent {
                    Ok(r) => r.error_code,
                    Err(e) => {
                        debug!(error = %e, "heartbeat failed");
                        continue;
                    }
                };
                if code == 0 {
                    continue;
                }
                debug!(code, "heartbeat asks for a rejoin");
                let mut sh = lock(&shared);
                if coordinator_moved(code) {
                    sh.coordinator = None;
                }
                if code == ResponseError::UnknownMemberId.code() {
                    sh.member_id.clear();
                }
                sh.rejoin = true;
                return;
            }
        }));
    }

    fn stop_heartbeat(&mut self) {
        if let Some(task) = self.heartbeat.take() {
            task.abort();
        }
    }

    /// Commits `offsets` (the next offset to read of each partition) for this generation.
    pub(crate) async fn commit(
        &self,
        offsets: &[(TopicPartition, i64)],
    ) -> Result<(), ClientError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let topics = commit_topics(offsets);
        let deadline = tokio::time::Instant::now() + FIND_DEADLINE;
        loop {
            let (member, generation) = {
                let sh = lock(&self.shared);
                (sh.member_id.clone(), sh.generation)
            };
            let req = OffsetCommitRequest::default()
                .with_group_id(GroupId(s(&self.config.group_id)))
                .with_generation_id_or_member_epoch(generation)
                .with_member_id(s(&member))
                .with_group_instance_id(self.config.instance_id.as_deref().map(s))
                .with_topics(topics.clone());
            let result = async {
                let conn = self.coordinator().await?;
                let resp = conn.send(&req).await?;
                let failed = resp
                    .topics
                    .iter()
                    .flat_map(|t| t.partitions.iter())
                    .map(|p| p.error_code)
                    .find(|&c| c != 0);
                match failed {
                    Some(code) => Err(ClientError::kafka(code, "offset commit")),
                    None => Ok(()),
                }
            }
            .await;
            match result {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let code = e.kafka_code();
                    if code.is_some_and(coordinator_moved) {
                        self.forget_coordinator();
                    }
                    let rebalancing = code.is_some_and(|c| {
                        c == ResponseError::RebalanceInProgress.code()
                            || c == ResponseError::IllegalGeneration.code()
                            || c == ResponseError::UnknownMemberId.code()
                    });
                    if rebalancing {
                        // The generation moved on: this commit cannot be made; rejoin.
                        self.request_rejoin();
                        return Err(e);
                    }
                    if !e.is_retriable() || tokio::time::Instant::now() >= deadline {
                        return Err(e);
                    }
                    tokio::time::sleep(RETRY_BACKOFF).await;
                }
            }
        }
    }

    /// The committed offsets of `parts` (`None`: nothing committed).
    pub(crate) async fn committed(
        &self,
        parts: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, Option<i64>>, ClientError> {
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (t, p) in parts {
            by_topic.entry(t).or_default().push(*p);
        }
        let req = OffsetFetchRequest::default()
            .with_group_id(GroupId(s(&self.config.group_id)))
            .with_topics(Some(
                by_topic
                    .into_iter()
                    .map(|(t, ps)| {
                        OffsetFetchRequestTopic::default()
                            .with_name(TopicName(s(t)))
                            .with_partition_indexes(ps)
                    })
                    .collect(),
            ))
            .with_require_stable(true);
        let deadline = tokio::time::Instant::now() + FIND_DEADLINE;
        loop {
            let result = async {
                let conn = self.coordinator().await?;
                let resp = conn.send(&req).await?;
                if resp.error_code != 0 {
                    return Err(ClientError::kafka(resp.error_code, "offset fetch"));
                }
                let mut out = BTreeMap::new();
                for t in resp.topics {
                    for p in t.partitions {
                        if p.error_code != 0 {
                            return Err(ClientError::kafka(p.error_code, "offset fetch"));
                        }
                        let o = (p.committed_offset >= 0).then_some(p.committed_offset);
                        out.insert((t.name.0.to_string(), p.partition_index), o);
                    }
                }
                Ok(out)
            }
            .await;
            match result {
                Ok(out) => return Ok(out),
                Err(e) if e.is_retriable() && tokio::time::Instant::now() < deadline => {
                    if e.kafka_code().is_some_and(coordinator_moved) {
                        self.forget_coordinator();
                    }
                    tokio::time::sleep(RETRY_BACKOFF).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Leaves the group (a static member stays: its session keeps its place).
    pub(crate) async fn leave(&mut self) {
        self.stop_heartbeat();
        if !self.joined || self.config.instance_id.is_some() {
            return;
        }
        let member = lock(&self.shared).member_id.clone();
        let req = LeaveGroupRequest::default()
            .with_group_id(GroupId(s(&self.config.group_id)))
            .with_members(vec![MemberIdentity::default().with_member_id(s(&member))]);
        if let Ok(conn) = self.coordinator().await {
            if let Err(e) = conn.send(&req).await {
                debug!(error = %e, "leave group failed");
            }
        }
        self.joined = false;
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.stop_heartbeat();
    }
}
