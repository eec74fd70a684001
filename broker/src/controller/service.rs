//! The controller listener: brokers register, heartbeat, change ISRs and read the
//! metadata log here; admin requests (create/delete topics, metadata) are answered from
//! the controller's image.

use crate::controller::{
    AlterPartitionRequest, ControllerDriver, ControllerError, DriverError, NewTopic, METADATA_TOPIC,
};
use crate::error::FatalSignal;
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
    FetchResponse, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::metadata_request::MetadataRequest;
use kafka_protocol::messages::metadata_response::MetadataResponse;
use kafka_protocol::messages::{ApiKey, BrokerId, ProducerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use keel_protocol::api::{ApiSupport, ParsedRequest, CONTROLLER_APIS};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub(crate) struct ControllerService {
    pub(crate) driver: Arc<ControllerDriver>,
    pub(crate) cluster_id: String,
    pub(crate) max_frame: usize,
    pub(crate) stop: CancellationToken,
    pub(crate) fatal: FatalSignal,
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
        _peer: std::net::SocketAddr,
    ) -> Result<Option<Reply>, RequestError> {
        let r = Responder::new(&req);
        let reply = match req.api_key {
            ApiKey::ApiVersions => api_versions::handle(&r, CONTROLLER_APIS),
            ApiKey::BrokerRegistration => r.now(self.register(decode(&mut req)?)),
            ApiKey::BrokerHeartbeat => r.now(self.heartbeat(decode(&mut req)?)),
            ApiKey::AlterPartition => r.now(self.alter_partition(decode(&mut req)?)),
            ApiKey::AllocateProducerIds => r.now(self.allocate_producer_ids(decode(&mut req)?)),
            ApiKey::CreateTopics => r.now(self.create_topics(decode(&mut req)?)),
            ApiKey::DeleteTopics => r.now(self.delete_topics(decode(&mut req)?)),
            ApiKey::Metadata => r.now(self.metadata(&r, decode(&mut req)?)),
            ApiKey::Fetch => self.fetch(r, decode(&mut req)?),
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
}

impl ControllerService {
    /// The Kafka error code of a refused command; a storage failure stops the controller.
    fn code(&self, e: DriverError) -> i16 {
        match e {
            DriverError::Refused(e) => e.code(),
            DriverError::Storage(e) => {
                self.fatal.raise(format!("controller metadata log: {e}"));
                ResponseError::KafkaStorageError.code()
            }
        }
    }

    fn register(&self, req: BrokerRegistrationRequest) -> BrokerRegistrationResponse {
        let resp = BrokerRegistrationResponse::default().with_broker_epoch(-1);
        if req.cluster_id.as_str() != self.cluster_id {
            return resp.with_error_code(ResponseError::InconsistentClusterId.code());
        }
        let Some(listener) = req.listeners.first() else {
            return resp.with_error_code(ResponseError::InvalidRequest.code());
        };
        let id = req.broker_id.0;
        match self
            .driver
            .register(id, &listener.host, i32::from(listener.port), now_ms())
        {
            Ok(epoch) => resp.with_broker_epoch(epoch),
            Err(e) => resp.with_error_code(self.code(e)),
        }
    }

    fn heartbeat(&self, req: BrokerHeartbeatRequest) -> BrokerHeartbeatResponse {
        let resp = BrokerHeartbeatResponse::default().with_is_fenced(true);
        match self.driver.heartbeat(
            req.broker_id.0,
            req.broker_epoch,
            req.current_metadata_offset,
            req.want_shut_down,
            req.want_fence,
            now_ms(),
        ) {
            Ok(reply) => resp
                .with_is_fenced(reply.fenced)
                .with_should_shut_down(reply.should_shutdown)
                .with_is_caught_up(req.current_metadata_offset >= self.driver.image().offset()),
            Err(e) => resp.with_error_code(self.code(e)),
        }
    }

    fn alter_partition(&self, req: AlterPartitionWire) -> AlterPartitionResponse {
        let image = self.driver.image();
        let topics = req
            .topics
            .iter()
            .map(|t| {
                let name = image.topic_by_id(t.topic_id).map(|t| t.name.clone());
                let partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let out =
                            AlterPartitionData::default().with_partition_index(p.partition_index);
                        let Some(topic) = &name else {
                            return out.with_error_code(ResponseError::UnknownTopicId.code());
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
                        match self.driver.alter_partition(&change, now_ms()) {
                            Ok(record) => out
                                .with_leader_id(BrokerId(record.leader))
                                .with_leader_epoch(record.leader_epoch)
                                .with_isr(record.isr.iter().map(|&b| BrokerId(b)).collect())
                                .with_partition_epoch(record.partition_epoch),
                            Err(e) => out.with_error_code(self.code(e)),
                        }
                    })
                    .collect();
                AlterTopicData::default()
                    .with_topic_id(t.topic_id)
                    .with_partitions(partitions)
            })
            .collect();
        AlterPartitionResponse::default().with_topics(topics)
    }

    fn allocate_producer_ids(
        &self,
        req: AllocateProducerIdsRequest,
    ) -> AllocateProducerIdsResponse {
        let resp = AllocateProducerIdsResponse::default().with_producer_id_start(ProducerId(-1));
        match self
            .driver
            .allocate_producer_ids(req.broker_id.0, req.broker_epoch, now_ms())
        {
            Ok((start, len)) => resp
                .with_producer_id_start(ProducerId(start))
                .with_producer_id_len(len),
            Err(e) => resp.with_error_code(self.code(e)),
        }
    }

    fn create_topics(&self, req: CreateTopicsRequest) -> CreateTopicsResponse {
        let mut seen = std::collections::HashSet::new();
        let twice: std::collections::HashSet<String> = req
            .topics
            .iter()
            .filter(|t| !seen.insert(t.name.to_string()))
            .map(|t| t.name.to_string())
            .collect();
        let results = req
            .topics
            .into_iter()
            .map(|t| {
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
                    return fail(
                        ResponseError::InvalidRequest.code(),
                        format!("topic `{}` is named twice in one request", t.name.0),
                    );
                }
                if let Some(c) = t.configs.iter().find(|c| c.value.is_none()) {
                    return fail(
                        ResponseError::InvalidConfig.code(),
                        format!("config {} has no value", c.name),
                    );
                }
                let mut assignments: Vec<_> = t.assignments.iter().collect();
                assignments.sort_by_key(|a| a.partition_index);
                if assignments
                    .iter()
                    .enumerate()
                    .any(|(i, a)| a.partition_index != i as i32)
                {
                    return fail(
                        ResponseError::InvalidReplicaAssignment.code(),
                        "assignments must cover partitions 0..n once each".into(),
                    );
                }
                let spec = NewTopic {
                    name: t.name.to_string(),
                    partitions: (t.num_partitions != -1).then_some(t.num_partitions),
                    replication_factor: (t.replication_factor != -1)
                        .then_some(t.replication_factor),
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
                match self.driver.create_topic(&spec, req.validate_only, now_ms()) {
                    Ok(id) if req.validate_only => {
                        let image = self.driver.image();
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
                    Ok(id) => {
                        // By id: a delete racing this answer must not lend it another
                        // topic's id (the forwarding broker waits for exactly this id).
                        let image = self.driver.image();
                        match image.topic_by_id(id) {
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
                        }
                    }
                    Err(e) => {
                        let message = e.to_string();
                        fail(self.code(e), message)
                    }
                }
            })
            .collect();
        CreateTopicsResponse::default().with_topics(results)
    }

    fn delete_topics(&self, req: DeleteTopicsRequest) -> DeleteTopicsResponse {
        let image = self.driver.image();
        let mut names: Vec<Option<String>> = req
            .topic_names
            .iter()
            .map(|n| Some(n.to_string()))
            .collect();
        names.extend(req.topics.iter().map(|t| match &t.name {
            Some(n) => Some(n.to_string()),
            None => image.topic_by_id(t.topic_id).map(|t| t.name.clone()),
        }));
        let responses = names
            .into_iter()
            .map(|name| {
                let result = DeletableTopicResult::default()
                    .with_name(name.clone().map(|n| TopicName(StrBytes::from_string(n))));
                let Some(name) = name else {
                    return result.with_error_code(ResponseError::UnknownTopicId.code());
                };
                match self.driver.delete_topic(&name, now_ms()) {
                    Ok(()) => result,
                    Err(DriverError::Refused(ControllerError::UnknownTopic(_))) => {
                        result.with_error_code(ResponseError::UnknownTopicOrPartition.code())
                    }
                    Err(e) => result.with_error_code(self.code(e)),
                }
            })
            .collect();
        DeleteTopicsResponse::default().with_responses(responses)
    }

    fn metadata(&self, r: &Responder, req: MetadataRequest) -> MetadataResponse {
        let image = self.driver.image();
        let wanted: Option<Vec<String>> = req.topics.map(|ts| {
            ts.into_iter()
                .filter_map(|t| t.name.map(|n| n.to_string()))
                .collect()
        });
        super::metadata_response(&image, &self.cluster_id, -1, wanted.as_deref(), r.version)
    }

    /// Serves the metadata log (and only it) to brokers, long-polling for new records.
    fn fetch(&self, r: Responder, req: FetchRequest) -> Reply {
        let driver = self.driver.clone();
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
            let mut end = driver.subscribe_end();
            // A stopping controller answers at once with what it has.
            tokio::select! {
                _ = tokio::time::timeout(max_wait, end.wait_for(|&e| e > offset)) => {}
                _ = stop.cancelled() => {}
            }
            let (data, slices) = driver.with_log(|log| {
                let log = log.log();
                let hw = log.log_end_offset();
                let data = PartitionData::default()
                    .with_partition_index(0)
                    .with_high_watermark(hw)
                    .with_last_stable_offset(hw)
                    .with_log_start_offset(log.log_start_offset());
                match log.read(
                    offset,
                    usize::try_from(max_bytes).unwrap_or(1 << 20).max(1),
                    hw,
                ) {
                    Ok(read) => {
                        let slices: Vec<Bytes> = vec![read.records.clone()];
                        (data.with_records(Some(read.records)), slices)
                    }
                    Err(e) => (
                        data.with_error_code(crate::error::storage_error_code(&e).code()),
                        Vec::new(),
                    ),
                }
            });
            let resp =
                FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
                    .with_topic(topic)
                    .with_partitions(vec![data])]);
            r.encode(&resp, &slices)
        })
    }
}

/// Fences silent brokers and moves leaderships, every `period`, until `stop`.
pub(crate) async fn tick_loop(
    driver: Arc<ControllerDriver>,
    period: Duration,
    stop: CancellationToken,
    fatal: FatalSignal,
) {
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let d = driver.clone();
        match tokio::task::spawn_blocking(move || d.tick(now_ms())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                fatal.raise(format!("controller tick: {e}"));
                return;
            }
            Err(e) => {
                fatal.raise(format!("controller tick panicked: {e}"));
                return;
            }
        }
    }
}
