//! One file per Kafka API. [`dispatch`] decodes the body and calls the handler; a handler
//! does its ordered, synchronous part at once and returns a [`Reply`] future for the rest.

pub mod api_versions;
pub mod create_topics;
pub mod delete_topics;
pub mod describe_cluster;
pub mod describe_configs;
pub mod fetch;
pub mod find_coordinator;
pub mod list_offsets;
pub mod metadata;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod replica_state;

use crate::metrics as m;
use crate::server::RequestError;
use crate::Shared;
use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};
use keel_protocol::api::{ParsedRequest, PRODUCE_MIN_SERVED, SUPPORTED_APIS};
use keel_protocol::gather::GatherBuf;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

/// What the writer sends for one request: encoded chunks; `None` for nothing (acks=0);
/// an empty list ([`CLOSE`]) closes the connection, for a request that cannot be answered
/// (the client must not see later responses in its place).
pub type Reply = Pin<Box<dyn Future<Output = Option<Vec<Bytes>>> + Send>>;

/// The reply that closes the connection instead of answering.
pub const CLOSE: Option<Vec<Bytes>> = Some(Vec::new());

/// How to answer one request: enough to encode its response.
#[derive(Clone)]
pub struct Responder {
    pub api_key: ApiKey,
    pub version: i16,
    pub correlation_id: i32,
    pub started: Instant,
}

impl Responder {
    pub fn new(req: &ParsedRequest) -> Self {
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
    pub fn encode<R: Encodable>(&self, body: &R, zero_copy: &[Bytes]) -> Option<Vec<Bytes>> {
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
    pub fn now<R: Encodable>(&self, body: R) -> Reply {
        let out = self.encode(&body, &[]);
        Box::pin(std::future::ready(out))
    }
}

/// A request on the Kafka listener: how to answer it, and the broker state it may read.
#[derive(Clone)]
pub struct Ctx {
    pub shared: Arc<Shared>,
    pub resp: Responder,
}

impl std::ops::Deref for Ctx {
    type Target = Responder;

    fn deref(&self) -> &Responder {
        &self.resp
    }
}

/// Sends an admin request on to the controller at the client's version and relays the
/// answer (as Kafka brokers forward to the KRaft controller).
pub fn forward_to_controller<R>(ctx: &Ctx, req: R) -> Reply
where
    R: kafka_protocol::protocol::Request + Send + Sync + 'static,
    R::Response: Send,
{
    let ctx = ctx.clone();
    Box::pin(async move {
        let rt = ctx.shared.cluster.clone();
        let timeout = std::time::Duration::from_secs(30);
        let sent = match rt.controller().await {
            Ok(c) => c.send_version(&req, ctx.version, timeout).await,
            Err(e) => Err(e),
        };
        match sent {
            Ok(resp) => ctx.encode(&resp, &[]),
            Err(e) => {
                // No answer is better than a made-up one: the client reconnects and retries.
                tracing::warn!(api = ?ctx.api_key, error = %e, "forwarding to the controller failed");
                CLOSE
            }
        }
    })
}

pub fn decode<T: Decodable>(req: &mut ParsedRequest) -> Result<T, RequestError> {
    T::decode(&mut req.body, req.header.request_api_version).map_err(|e| RequestError::Body {
        api: req.api_key,
        version: req.header.request_api_version,
        reason: e.to_string(),
    })
}

/// A request version as a metric label, without allocating (versions outside 0..=20 are
/// refused before a handler runs).
pub fn version_label(version: i16) -> &'static str {
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

pub fn api_name(key: ApiKey) -> &'static str {
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
        _ => "other",
    }
}

/// Decodes the request body and runs its handler. `Ok(None)`: nothing to send.
pub fn dispatch(
    shared: &Arc<Shared>,
    mut req: ParsedRequest,
) -> Result<Option<Reply>, RequestError> {
    let ctx = Ctx {
        shared: shared.clone(),
        resp: Responder::new(&req),
    };
    let reply = match req.api_key {
        ApiKey::ApiVersions => api_versions::handle(&ctx, SUPPORTED_APIS),
        ApiKey::Metadata => metadata::handle(&ctx, decode(&mut req)?),
        ApiKey::Produce if ctx.version < PRODUCE_MIN_SERVED => {
            return Err(RequestError::Body {
                api: ApiKey::Produce,
                version: ctx.version,
                reason: "message formats 0 and 1 (produce v0-v2) are not supported".into(),
            })
        }
        ApiKey::Produce => return Ok(produce::handle(ctx, decode(&mut req)?)),
        ApiKey::FindCoordinator => find_coordinator::handle(&ctx, decode(&mut req)?),
        ApiKey::OffsetForLeaderEpoch => offset_for_leader_epoch::handle(&ctx, decode(&mut req)?),
        ApiKey::Fetch => fetch::handle(ctx, decode(&mut req)?),
        ApiKey::ListOffsets => list_offsets::handle(&ctx, decode(&mut req)?),
        ApiKey::CreateTopics => create_topics::handle(&ctx, decode(&mut req)?),
        ApiKey::DeleteTopics => delete_topics::handle(&ctx, decode(&mut req)?),
        ApiKey::DescribeConfigs => describe_configs::handle(&ctx, decode(&mut req)?),
        ApiKey::DescribeCluster => describe_cluster::handle(&ctx, decode(&mut req)?),
        other => {
            // parse_request only lets through keys in the supported table.
            return Err(RequestError::Body {
                api: other,
                version: ctx.version,
                reason: "no handler".into(),
            });
        }
    };
    Ok(Some(reply))
}
