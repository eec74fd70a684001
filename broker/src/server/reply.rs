//! How a listener answers: a [`Reply`] future per request, encoded by a [`Responder`].

use crate::metrics as m;
use crate::server::RequestError;
use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};
use keel_protocol::api::ParsedRequest;
use keel_protocol::gather::GatherBuf;
use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

/// What the writer sends for one request: encoded chunks; `None` for nothing (acks=0);
/// an empty list ([`CLOSE`]) closes the connection, for a request that cannot be answered
/// (the client must not see later responses in its place).
pub(crate) type Reply = Pin<Box<dyn Future<Output = Option<Vec<Bytes>>> + Send>>;

/// The reply that closes the connection instead of answering.
pub(crate) const CLOSE: Option<Vec<Bytes>> = Some(Vec::new());

/// How to answer one request: enough to encode its response.
#[derive(Clone)]
pub(crate) struct Responder {
    pub(crate) api_key: ApiKey,
    pub(crate) version: i16,
    pub(crate) correlation_id: i32,
    pub(crate) started: Instant,
}

impl Responder {
    pub(crate) fn new(req: &ParsedRequest) -> Self {
        metrics::counter!(m::REQUESTS_TOTAL, "api" => api_name(req.api_key), "version" => version_label(req.header.request_api_version)).increment(1);
        tracing::debug!(api = ?req.api_key, version = req.header.request_api_version, correlation_id = req.header.correlation_id, "request");
        Self {
            api_key: req.api_key,
            version: req.header.request_api_version,
            correlation_id: req.header.correlation_id,
            started: Instant::now(),
        }
    }

    /// Encodes `body` behind its response header; `zero_copy` slices are not copied.
    pub(crate) fn encode<R: Encodable>(&self, body: &R, zero_copy: &[Bytes]) -> Option<Vec<Bytes>> {
        let mut buf = GatherBuf::new();
        for b in zero_copy {
            buf.register(b);
        }
        let header_version = self.api_key.response_header_version(self.version);
        let header = ResponseHeader::default().with_correlation_id(self.correlation_id);
        let encoded = header
            .encode(&mut buf, header_version)
            .and_then(|()| body.encode(&mut buf, self.version));
        metrics::histogram!(m::REQUEST_DURATION_SECONDS, "api" => api_name(self.api_key), "version" => version_label(self.version))
            .record(self.started.elapsed().as_secs_f64());
        match encoded {
            Ok(()) => Some(buf.into_chunks()),
            Err(e) => {
                // A response we cannot encode is a bug; closing keeps the client's
                // correlation ids in step.
                tracing::error!(api = ?self.api_key, version = self.version, error = %e, "cannot encode response");
                CLOSE
            }
        }
    }

    /// A reply that is ready now.
    pub(crate) fn now<R: Encodable>(&self, body: R) -> Reply {
        let out = self.encode(&body, &[]);
        Box::pin(std::future::ready(out))
    }
}

pub(crate) fn decode<T: Decodable>(req: &mut ParsedRequest) -> Result<T, RequestError> {
    T::decode(&mut req.body, req.header.request_api_version).map_err(|e| RequestError::Body {
        api: req.api_key,
        version: req.header.request_api_version,
        reason: e.to_string(),
    })
}

/// A request version as a metric label, without allocating (versions outside 0..=20 are
/// refused before a handler runs).
pub(crate) fn version_label(version: i16) -> &'static str {
    const LABELS: [&str; 21] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
        "17", "18", "19", "20",
    ];
    usize::try_from(version)
        .ok()
        .and_then(|v| LABELS.get(v))
        .copied()
        .unwrap_or("other")
}

pub(crate) fn api_name(key: ApiKey) -> &'static str {
    match key {
        ApiKey::Produce => "produce",
        ApiKey::Fetch => "fetch",
        ApiKey::ListOffsets => "list_offsets",
        ApiKey::Metadata => "metadata",
        ApiKey::ApiVersions => "api_versions",
        ApiKey::CreateTopics => "create_topics",
        ApiKey::DeleteTopics => "delete_topics",
        ApiKey::DescribeConfigs => "describe_configs",
        ApiKey::BrokerRegistration => "broker_registration",
        ApiKey::BrokerHeartbeat => "broker_heartbeat",
        ApiKey::AlterPartition => "alter_partition",
        ApiKey::FindCoordinator => "find_coordinator",
        ApiKey::OffsetForLeaderEpoch => "offset_for_leader_epoch",
        ApiKey::DescribeCluster => "describe_cluster",
        ApiKey::InitProducerId => "init_producer_id",
        ApiKey::DescribeProducers => "describe_producers",
        ApiKey::AllocateProducerIds => "allocate_producer_ids",
        ApiKey::JoinGroup => "join_group",
        ApiKey::SyncGroup => "sync_group",
        ApiKey::Heartbeat => "heartbeat",
        ApiKey::LeaveGroup => "leave_group",
        ApiKey::OffsetCommit => "offset_commit",
        ApiKey::OffsetFetch => "offset_fetch",
        ApiKey::ListGroups => "list_groups",
        ApiKey::DescribeGroups => "describe_groups",
        ApiKey::DeleteGroups => "delete_groups",
        ApiKey::OffsetDelete => "offset_delete",
        _ => "other",
    }
}
