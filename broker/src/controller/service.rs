//! The controller listener: brokers register, heartbeat, change ISRs and read the
//! metadata log here; admin requests (create/delete topics, metadata) are answered from
//! the controller's image; voters exchange Raft messages and answer `QuorumState`.
//!
//! Every voter serves the metadata log (committed entries only) and its snapshot, so a
//! broker can follow whichever voter it reaches. Commands are run by the active
//! controller only; elsewhere they get NOT_CONTROLLER and the broker tries another voter.

use crate::controller::quorum::driver::Quorum;
use crate::controller::quorum::voter::{Answer, CommandError};
use crate::controller::{
    AlterPartitionRequest, ControllerError, Heartbeat, NewTopic, METADATA_TOPIC,
};
use crate::server::api_versions;
use crate::server::reply::{decode, Reply, Responder};
use crate::server::{RequestError, Service};
use bytes::Bytes;
use kafka_protocol::messages::allocate_producer_ids_request::AllocateProducerIdsRequest;
use kafka_protocol::messages::allocate_producer_ids_response::AllocateProducerIdsResponse;
use kafka_protocol::messages::alter_partition_request::AlterPartitionRequest as AlterPartitionWire;
use kafka_protocol::messages::alter_partition_response::{
    AlterPartitionResponse, PartitionData as AlterPartitionData, TopicData as AlterTopicData,
};
use kafka_protocol::messages::broker_heartbeat_request::BrokerHeartbeatRequest;
use kafka_protocol::messages::broker_heartbeat_response::BrokerHeartbeatResponse;
use kafka_protocol::messages::broker_registration_request::BrokerRegistrationRequest;
use kafka_protocol::messages::broker_registration_response::BrokerRegistrationResponse;
use kafka_protocol::messages::create_topics_request::CreateTopicsRequest;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicResult, CreateTopicsResponse,
};
use kafka_protocol::messages::delete_topics_request::DeleteTopicsRequest;
use kafka_protocol::messages::delete_topics_response::{
    DeletableTopicResult, DeleteTopicsResponse,
};
use kafka_protocol::messages::fetch_request::FetchRequest;
use kafka_protocol::messages::fetch_response::{
    FetchResponse, FetchableTopicResponse, LeaderIdAndEpoch, PartitionData, SnapshotId,
};
use kafka_protocol::messages::fetch_snapshot_request::FetchSnapshotRequest;
use kafka_protocol::messages::fetch_snapshot_response::{
    FetchSnapshotResponse, LeaderIdAndEpoch as SnapshotLeader, PartitionSnapshot,
    SnapshotId as SnapshotIdOut, TopicSnapshot,
};
use kafka_protocol::messages::metadata_request::MetadataRequest;
use kafka_protocol::messages::metadata_response::MetadataResponse;
use kafka_protocol::messages::RequestHeader;
use kafka_protocol::messages::{ApiKey, BrokerId, ProducerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::protocol::{Decodable, Encodable};
use kafka_protocol::ResponseError;
use keel_protocol::api::{ApiSupport, ParsedRequest, CONTROLLER_APIS};
use keel_protocol::quorum::{
    QuorumQuery, QuorumState, QuorumStateRequest, QuorumStateResponse, RaftMessagesRequest,
    RaftMessagesResponse, VoterProgress, QUORUM_STATE_KEY, RAFT_MESSAGES_KEY,
};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub(crate) struct ControllerService {
    pub(crate) quorum: Arc<Quorum>,
    pub(crate) cluster_id: String,
    pub(crate) max_frame: usize,
    pub(crate) stop: CancellationToken,
    /// The broker (id, epoch) whose heartbeats came over each open connection.
    pub(crate) heartbeat_links: std::sync::Mutex<HashMap<SocketAddr, (i32, i64)>>,
}

pub(crate) fn now_ms() -> u64 {
    crate::clock::now_ms().max(0) as u64
}

impl Service for ControllerService {
    fn apis(&self) -> &'static [ApiSupport] {
        CONTROLLER_APIS
    }

    fn max_frame(&self) -> usize {
        self.max_frame
    }

    fn max_inflight(&self) -> usize {
        64
    }

    fn stop(&self) -> &CancellationToken {
        &self.stop
    }

    fn dispatch(
        self: &Arc<Self>,
        mut req: ParsedRequest,
        peer: SocketAddr,
    ) -> Result<Option<Reply>, RequestError> {
        let r = Responder::new(&req);
        let reply = match req.api_key {
            ApiKey::ApiVersions => api_versions::handle(&r, CONTROLLER_APIS),
            ApiKey::BrokerRegistration => {
                let req = decode(&mut req)?;
                self.later(r, |s| async move { s.register(req).await })
            }
            ApiKey::BrokerHeartbeat => {
                let req: BrokerHeartbeatRequest = decode(&mut req)?;
                self.links()
                    .insert(peer, (req.broker_id.0, req.broker_epoch));
                self.later(r, |s| async move { s.heartbeat(req).await })
            }
            ApiKey::AlterPartition => {
                let req = decode(&mut req)?;
                self.later(r, |s| async move { s.alter_partition(req).await })
            }
            ApiKey::AllocateProducerIds => {
                let req = decode(&mut req)?;
                self.later(r, |s| async move { s.allocate_producer_ids(req).await })
            }
            ApiKey::CreateTopics => {
                let req = decode(&mut req)?;
                self.later(r, |s| async move { s.create_topics(req).await })
            }
            ApiKey::DeleteTopics => {
                let req = decode(&mut req)?;
                self.later(r, |s| async move { s.delete_topics(req).await })
            }
            ApiKey::Metadata => r.now(self.metadata(&r, decode(&mut req)?)),
            ApiKey::Fetch => self.fetch(r, decode(&mut req)?),
            ApiKey::FetchSnapshot => r.now(self.fetch_snapshot(decode(&mut req)?)),
            other => {
                return Err(RequestError::Body {
                    api: other,
                    version: r.version,
                    reason: "not served by the controller listener".into(),
                })
            }
        };
        Ok(Some(reply))
    }

    /// A connection a broker heartbeated over closed: unless another open connection
    /// carries that incarnation's heartbeats, its session ends after the grace.
    fn closed(self: &Arc<Self>, peer: SocketAddr) {
        let mut links = self.links();
        let Some((id, epoch)) = links.remove(&peer) else {
            return;
        };
        if self.stop.is_cancelled() || links.values().any(|l| *l == (id, epoch)) {
            return;
        }
        drop(links);
        let quorum = self.quorum.clone();
        let now = now_ms();
        tokio::spawn(async move {
            // Only the active controller keeps sessions; elsewhere this is NOT_CONTROLLER.
            let _ = quorum
                .run(Box::new(move |c| {
                    c.connection_lost(id, epoch, now);
                    Ok((Answer::None, Vec::new()))
                }))
                .await;
        });
    }

    fn keel_api(self: &Arc<Self>, api_key: i16, frame: &Bytes) -> Option<Reply> {
        match api_key {
            RAFT_MESSAGES_KEY => Some(self.raft_messages(frame.clone())),
            QUORUM_STATE_KEY => Some(self.quorum_state(frame.clone())),
            _ => None,
        }
    }
}

/// The Kafka error code of a command that did not run.
fn code(e: &CommandError) -> i16 {
    match e {
        CommandError::Refused(e) => e.code(),
        CommandError::NotController { .. } => ResponseError::NotController.code(),
    }
}

fn refuse(reason: String) -> Reply {
    tracing::warn!(%reason, "closing a controller connection");
    Box::pin(std::future::ready(crate::server::reply::CLOSE))
}

/// A Keel API frame's header and body, or why it does not decode.
fn keel_request<R: Decodable>(mut frame: Bytes, api: &str) -> Result<(i32, R), String> {
    let header =
        RequestHeader::decode(&mut frame, 1).map_err(|e| format!("bad {api} header: {e}"))?;
    let req = R::decode(&mut frame, header.request_api_version)
        .map_err(|e| format!("bad {api} request: {e:#}"))?;
    Ok((header.correlation_id, req))
}

fn keel_response<R: Encodable>(correlation_id: i32, resp: &R) -> Option<Vec<Bytes>> {
    let mut buf = bytes::BytesMut::new();
    bytes::BufMut::put_i32(&mut buf, correlation_id);
    match resp.encode(&mut buf, 0) {
        Ok(()) => Some(vec![buf.freeze()]),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a controller response");
            crate::server::reply::CLOSE
        }
    }
}

impl ControllerService {
    fn links(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, (i32, i64)>> {
        self.heartbeat_links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A reply computed by `f` (a command that waits for its commit).
    fn later<F, Fut, R>(self: &Arc<Self>, r: Responder, f: F) -> Reply
    where
        F: FnOnce(Arc<Self>) -> Fut + Send + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: kafka_protocol::protocol::Encodable,
    {
        let s = self.clone();
        Box::pin(async move {
            let resp = f(s).await;
            r.encode(&resp, &[])
        })
    }

    fn raft_messages(&self, frame: Bytes) -> Reply {
        let (correlation_id, req) = match keel_request::<RaftMessagesRequest>(frame, "RaftMessages")
        {
            Ok(x) => x,
            Err(reason) => return refuse(reason),
        };
        match crate::controller::quorum::transport::decode(req.body) {
            Ok(messages) => self.quorum.deliver(messages),
            Err(reason) => return refuse(format!("bad RaftMessages body: {reason}")),
        }
        let resp = keel_response(correlation_id, &RaftMessagesResponse::default());
        Box::pin(std::future::ready(resp))
    }

    fn quorum_state(&self, frame: Bytes) -> Reply {
        let (correlation_id, query) = match keel_request::<QuorumStateRequest>(frame, "QuorumState")
            .and_then(|(c, r)| r.query().map(|q| (c, q)).map_err(|e| format!("{e:#}")))
        {
            Ok(x) => x,
            Err(reason) => return refuse(reason),
        };
        let quorum = self.quorum.clone();
        Box::pin(async move {
            let state = tokio::task::spawn_blocking(move || quorum_state(&quorum, &query)).await;
            match state {
                Ok(state) => keel_response(correlation_id, &QuorumStateResponse::new(&state)),
                Err(e) => {
                    tracing::error!(error = %e, "QuorumState task failed");
                    crate::server::reply::CLOSE
                }
            }
        })
    }

    async fn register(&self, req: BrokerRegistrationRequest) -> BrokerRegistrationResponse {
        let resp = BrokerRegistrationResponse::default().with_broker_epoch(-1);
        if req.cluster_id.as_str() != self.cluster_id {
            return resp.with_error_code(ResponseError::InconsistentClusterId.code());
        }
        let Some(listener) = req.listeners.first() else {
            return resp.with_error_code(ResponseError::InvalidRequest.code());
        };
        let id = req.broker_id.0;
        let host = listener.host.to_string();
        let port = i32::from(listener.port);
        let now = now_ms();
        let answer = self
            .quorum
            .run(Box::new(move |c| {
                let (epoch, records) = c.register(id, &host, port, now)?;
                Ok((Answer::Epoch(epoch), records))
            }))
            .await;
        match answer {
            Ok(Answer::Epoch(epoch)) => {
                tracing::info!(broker = id, epoch, "registered broker");
                resp.with_broker_epoch(epoch)
            }
            Ok(other) => unreachable!("registration answers an epoch, not {other:?}"),
            Err(e) => resp.with_error_code(code(&e)),
        }
    }

    async fn heartbeat(&self, req: BrokerHeartbeatRequest) -> BrokerHeartbeatResponse {
        let resp = BrokerHeartbeatResponse::default().with_is_fenced(true);
        let (id, epoch, offset) = (
            req.broker_id.0,
            req.broker_epoch,
            req.current_metadata_offset,
        );
        let hb = Heartbeat {
            want_shutdown: req.want_shut_down,
            want_fence: req.want_fence,
            ..Heartbeat::routine(id, epoch, offset)
        };
        let now = now_ms();
        let answer = self
            .quorum
            .run_fast(
                Box::new(move |c| c.quiet_heartbeat(hb, now).map(Answer::Heartbeat)),
                Box::new(move |c| {
                    let (reply, records) = c.heartbeat_with(hb, now)?;
                    Ok((Answer::Heartbeat(reply), records))
                }),
            )
            .await;
        match answer {
            Ok(Answer::Heartbeat(reply)) => resp
                .with_is_fenced(reply.fenced)
                .with_should_shut_down(reply.should_shutdown)
                .with_is_caught_up(offset >= self.quorum.image().offset()),
            Ok(other) => unreachable!("a heartbeat answers a heartbeat reply, not {other:?}"),
            Err(e) => resp.with_error_code(code(&e)),
        }
    }

    async fn alter_partition(&self, req: AlterPartitionWire) -> AlterPartitionResponse {
        let view = self.quorum.view();
        if !view.active {
            return AlterPartitionResponse::default()
                .with_error_code(ResponseError::NotController.code());
        }
        let image = self.quorum.image();
        let mut topics = Vec::new();
        for t in &req.topics {
            let name = image.topic_by_id(t.topic_id).map(|t| t.name.clone());
            let mut partitions = Vec::new();
            for p in &t.partitions {
                let out = AlterPartitionData::default().with_partition_index(p.partition_index);
                let Some(topic) = &name else {
                    partitions.push(out.with_error_code(ResponseError::UnknownTopicId.code()));
                    continue;
                };
                let new_isr = if p.new_isr_with_epochs.is_empty() {
                    p.new_isr.iter().map(|b| (b.0, -1)).collect()
                } else {
                    p.new_isr_with_epochs
                        .iter()
                        .map(|b| (b.broker_id.0, b.broker_epoch))
                        .collect()
                };
                let change = AlterPartitionRequest {
                    broker_id: req.broker_id.0,
                    broker_epoch: req.broker_epoch,
                    topic: topic.clone(),
                    partition: p.partition_index,
                    leader_epoch: p.leader_epoch,
                    partition_epoch: p.partition_epoch,
                    new_isr,
                };
                let answer = self
                    .quorum
                    .run(Box::new(move |c| {
                        let (record, records) = c.alter_partition(&change)?;
                        Ok((Answer::Partition(record), records))
                    }))
                    .await;
                partitions.push(match answer {
                    Ok(Answer::Partition(record)) => out
                        .with_leader_id(BrokerId(record.leader))
                        .with_leader_epoch(record.leader_epoch)
                        .with_isr(record.isr.iter().map(|&b| BrokerId(b)).collect())
                        .with_partition_epoch(record.partition_epoch),
                    Ok(other) => unreachable!("AlterPartition answers a partition, not {other:?}"),
                    Err(e @ CommandError::NotController { .. }) => {
                        return AlterPartitionResponse::default().with_error_code(code(&e))
                    }
                    Err(e) => out.with_error_code(code(&e)),
                });
            }
            topics.push(
                AlterTopicData::default()
                    .with_topic_id(t.topic_id)
                    .with_partitions(partitions),
            );
        }
        AlterPartitionResponse::default().with_topics(topics)
    }

    async fn allocate_producer_ids(
        &self,
        req: AllocateProducerIdsRequest,
    ) -> AllocateProducerIdsResponse {
        let resp = AllocateProducerIdsResponse::default().with_producer_id_start(ProducerId(-1));
        let (broker, epoch) = (req.broker_id.0, req.broker_epoch);
        let answer = self
            .quorum
            .run(Box::new(move |c| {
                let ((start, len), records) = c.allocate_producer_ids(broker, epoch)?;
                Ok((Answer::ProducerIds(start, len), records))
            }))
            .await;
        match answer {
            Ok(Answer::ProducerIds(start, len)) => resp
                .with_producer_id_start(ProducerId(start))
                .with_producer_id_len(len),
            Ok(other) => unreachable!("AllocateProducerIds answers a block, not {other:?}"),
            Err(e) => resp.with_error_code(code(&e)),
        }
    }

    async fn create_topics(&self, req: CreateTopicsRequest) -> CreateTopicsResponse {
        let mut seen = std::collections::HashSet::new();
        let twice: std::collections::HashSet<String> = req
            .topics
            .iter()
            .filter(|t| !seen.insert(t.name.to_string()))
            .map(|t| t.name.to_string())
            .collect();
        let mut results = Vec::new();
        for t in req.topics {
            let result = CreatableTopicResult::default()
                .with_name(t.name.clone())
                .with_num_partitions(-1)
                .with_replication_factor(-1);
            let fail = |code: i16, message: String| {
                result
                    .clone()
                    .with_error_code(code)
                    .with_error_message(Some(StrBytes::from_string(message)))
            };
            if twice.contains(t.name.as_str()) {
                results.push(fail(
                    ResponseError::InvalidRequest.code(),
                    format!("topic `{}` is named twice in one request", t.name.0),
                ));
                continue;
            }
            if let Some(c) = t.configs.iter().find(|c| c.value.is_none()) {
                results.push(fail(
                    ResponseError::InvalidConfig.code(),
                    format!("config {} has no value", c.name),
                ));
                continue;
            }
            let mut assignments: Vec<_> = t.assignments.iter().collect();
            assignments.sort_by_key(|a| a.partition_index);
            if assignments
                .iter()
                .enumerate()
                .any(|(i, a)| a.partition_index != i as i32)
            {
                results.push(fail(
                    ResponseError::InvalidReplicaAssignment.code(),
                    "assignments must cover partitions 0..n once each".into(),
                ));
                continue;
            }
            let spec = NewTopic {
                name: t.name.to_string(),
                partitions: (t.num_partitions != -1).then_some(t.num_partitions),
                replication_factor: (t.replication_factor != -1).then_some(t.replication_factor),
                assignments: assignments
                    .iter()
                    .map(|a| a.broker_ids.iter().map(|b| b.0).collect())
                    .collect(),
                configs: t
                    .configs
                    .iter()
                    .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())))
                    .collect(),
            };
            let validate_only = req.validate_only;
            let command = spec.clone();
            let answer = self
                .quorum
                .run(Box::new(move |c| {
                    let records = c.new_topic(&command)?;
                    if validate_only {
                        return Ok((Answer::TopicId(uuid::Uuid::nil()), Vec::new()));
                    }
                    let id = records
                        .iter()
                        .find_map(|r| match r {
                            crate::controller::MetadataRecord::Topic { id, .. } => Some(*id),
                            _ => None,
                        })
                        .expect("a created topic has a topic record");
                    Ok((Answer::TopicId(id), records))
                }))
                .await;
            let image = self.quorum.image();
            results.push(match answer {
                Ok(Answer::TopicId(id)) if validate_only => {
                    let brokers = image.unfenced_brokers().count() as i16;
                    let partitions = spec.assignments.len() as i32;
                    result
                        .with_topic_id(id)
                        .with_num_partitions(spec.partitions.unwrap_or(partitions))
                        .with_replication_factor(
                            spec.replication_factor
                                .or_else(|| Some(spec.assignments.first()?.len() as i16))
                                .unwrap_or(brokers),
                        )
                }
                // By id: a delete racing this answer must not lend it another topic's id
                // (the forwarding broker waits for exactly this id).
                Ok(Answer::TopicId(id)) => match image.topic_by_id(id) {
                    Some(topic) => result
                        .with_topic_id(topic.id)
                        .with_num_partitions(topic.partitions.len() as i32)
                        .with_replication_factor(
                            topic
                                .partitions
                                .first()
                                .map_or(-1, |p| p.replicas.len() as i16),
                        ),
                    None => result.with_topic_id(id),
                },
                Ok(other) => unreachable!("CreateTopics answers a topic id, not {other:?}"),
                Err(e) => {
                    let message = e.to_string();
                    fail(code(&e), message)
                }
            });
        }
        CreateTopicsResponse::default().with_topics(results)
    }

    async fn delete_topics(&self, req: DeleteTopicsRequest) -> DeleteTopicsResponse {
        let image = self.quorum.image();
        let mut names: Vec<Option<String>> = req
            .topic_names
            .iter()
            .map(|n| Some(n.to_string()))
            .collect();
        names.extend(req.topics.iter().map(|t| match &t.name {
            Some(n) => Some(n.to_string()),
            None => image.topic_by_id(t.topic_id).map(|t| t.name.clone()),
        }));
        let mut responses = Vec::new();
        for name in names {
            let result = DeletableTopicResult::default()
                .with_name(name.clone().map(|n| TopicName(StrBytes::from_string(n))));
            let Some(name) = name else {
                responses.push(result.with_error_code(ResponseError::UnknownTopicId.code()));
                continue;
            };
            let answer = self
                .quorum
                .run(Box::new(move |c| {
                    Ok((Answer::None, c.delete_topic(&name)?))
                }))
                .await;
            responses.push(match answer {
                Ok(_) => result,
                Err(CommandError::Refused(ControllerError::UnknownTopic(_))) => {
                    result.with_error_code(ResponseError::UnknownTopicOrPartition.code())
                }
                Err(e) => result.with_error_code(code(&e)),
            });
        }
        DeleteTopicsResponse::default().with_responses(responses)
    }

    fn metadata(&self, r: &Responder, req: MetadataRequest) -> MetadataResponse {
        let image = self.quorum.image();
        let wanted: Option<Vec<String>> = req.topics.map(|ts| {
            ts.into_iter()
                .filter_map(|t| t.name.map(|n| n.to_string()))
                .collect()
        });
        let active = self.quorum.view().leader.unwrap_or(-1);
        super::metadata_response(
            &image,
            &self.cluster_id,
            active,
            wanted.as_deref(),
            r.version,
        )
    }

    /// Serves the committed metadata log (and only it) to brokers, long-polling for new
    /// entries. An offset below the log's start is answered with OFFSET_OUT_OF_RANGE and
    /// the snapshot to fetch instead.
    fn fetch(&self, r: Responder, req: FetchRequest) -> Reply {
        let quorum = self.quorum.clone();
        let stop = self.stop.clone();
        let wanted = req.topics.iter().find_map(|t| {
            (t.topic.as_str() == METADATA_TOPIC)
                .then(|| t.partitions.iter().find(|p| p.partition == 0))
                .flatten()
                .map(|p| (t.topic.clone(), p.fetch_offset, p.partition_max_bytes))
        });
        let max_wait = Duration::from_millis(u64::try_from(req.max_wait_ms).unwrap_or(0));
        Box::pin(async move {
            let Some((topic, offset, max_bytes)) = wanted else {
                let resp = FetchResponse::default()
                    .with_error_code(ResponseError::UnknownTopicOrPartition.code());
                return r.encode(&resp, &[]);
            };
            // The first entry is offset 1.
            let offset = offset.max(1);
            let mut view = quorum.subscribe_view();
            // A stopping controller answers at once with what it has.
            tokio::select! {
                _ = tokio::time::timeout(max_wait, view.wait_for(|v| v.served as i64 >= offset)) => {}
                _ = stop.cancelled() => {}
            }
            let v = quorum.view();
            let log = quorum.log();
            let end = v.served as i64 + 1;

            let data = PartitionData::default()
                .with_partition_index(0)
                .with_high_watermark(end)
                .with_last_stable_offset(end)
                .with_log_start_offset(log.log_start_offset())
                .with_current_leader(
                    LeaderIdAndEpoch::default()
                        .with_leader_id(BrokerId(v.leader.unwrap_or(-1)))
                        .with_leader_epoch(v.term as i32),
                );
            let (data, slices) = if offset < log.log_start_offset() {
                let (index, term, _) = &v.snapshot;
                let data = data
                    .with_error_code(ResponseError::OffsetOutOfRange.code())
                    .with_snapshot_id(
                        SnapshotId::default()
                            .with_end_offset(*index as i64 + 1)
                            .with_epoch(*term as i32),
                    );
                (data, Vec::new())
            } else if offset >= end {
                (data.with_records(Some(Bytes::new())), Vec::new())
            } else {
                let max = usize::try_from(max_bytes).unwrap_or(1 << 20).max(1);
                match log.read(offset, max, end) {
                    Ok(read) => {
                        let slices: Vec<Bytes> = vec![read.records.clone()];
                        (data.with_records(Some(read.records)), slices)
                    }
                    Err(e) => (
                        data.with_error_code(crate::error::storage_error_code(&e).code()),
                        Vec::new(),
                    ),
                }
            };
            let resp =
                FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
                    .with_topic(topic)
                    .with_partitions(vec![data])]);
            r.encode(&resp, &slices)
        })
    }

    /// Serves this voter's newest snapshot in chunks, if it is the one asked for.
    fn fetch_snapshot(&self, req: FetchSnapshotRequest) -> FetchSnapshotResponse {
        let v = self.quorum.view();
        let (index, term, data) = &v.snapshot;
        let max = usize::try_from(req.max_bytes).unwrap_or(1 << 20).max(1);
        let leader = SnapshotLeader::default()
            .with_leader_id(BrokerId(v.leader.unwrap_or(-1)))
            .with_leader_epoch(v.term as i32);
        let topics = req
            .topics
            .iter()
            .map(|t| {
                let partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let out = PartitionSnapshot::default()
                            .with_index(p.partition)
                            .with_current_leader(leader.clone())
                            .with_snapshot_id(
                                SnapshotIdOut::default()
                                    .with_end_offset(*index as i64 + 1)
                                    .with_epoch(*term as i32),
                            );
                        let matches = t.name.as_str() == METADATA_TOPIC
                            && p.partition == 0
                            && *index > 0
                            && p.snapshot_id.end_offset == *index as i64 + 1
                            && p.snapshot_id.epoch == *term as i32;
                        let position = usize::try_from(p.position).unwrap_or(usize::MAX);
                        if !matches || position > data.len() {
                            return out.with_error_code(ResponseError::SnapshotNotFound.code());
                        }
                        let chunk = data.slice(position..data.len().min(position + max));
                        out.with_size(data.len() as i64)
                            .with_position(p.position)
                            .with_unaligned_records(chunk)
                    })
                    .collect();
                TopicSnapshot::default()
                    .with_name(t.name.clone())
                    .with_partitions(partitions)
            })
            .collect();
        FetchSnapshotResponse::default().with_topics(topics)
    }
}

/// What `QuorumState` answers (blocking: a digest reads the log).
pub(crate) fn quorum_state(quorum: &Quorum, query: &QuorumQuery) -> QuorumState {
    let v = quorum.view();
    let log = quorum.log();
    let digest = query.digest.map(|(from, to)| {
        let to = to.min(v.served as i64 + 1);
        match log.digest(from.max(log.log_start_offset()), to) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "metadata log digest failed");
                keel_protocol::replica_state::RangeDigest::empty(from, to)
            }
        }
    });
    QuorumState {
        node_id: v.node_id,
        voters: v.voters.clone(),
        leader: v.leader.unwrap_or(-1),
        term: v.term,
        committed: v.committed as i64,
        applied: v.applied as i64,
        log_start: log.log_start_offset(),
        last: v.last as i64,
        snapshot: if v.snapshot.0 == 0 {
            -1
        } else {
            v.snapshot.0 as i64
        },
        progress: v
            .progress
            .iter()
            .map(|&(id, matched, recent)| VoterProgress {
                id,
                matched: matched as i64,
                recent,
            })
            .collect(),
        digest,
    }
}
