//! One file per Kafka API. [`dispatch`] decodes the body and calls the handler; a handler
//! does its ordered, synchronous part at once and returns a [`Reply`] future for the rest.

pub(crate) mod create_topics;
pub(crate) mod delete_groups;
pub(crate) mod delete_topics;
pub(crate) mod describe_cluster;
pub(crate) mod describe_configs;
pub(crate) mod describe_groups;
pub(crate) mod describe_producers;
pub(crate) mod fetch;
pub(crate) mod find_coordinator;
pub(crate) mod heartbeat;
pub(crate) mod init_producer_id;
pub(crate) mod join_group;
pub(crate) mod leave_group;
pub(crate) mod list_groups;
pub(crate) mod list_offsets;
pub(crate) mod metadata;
pub(crate) mod offset_commit;
pub(crate) mod offset_delete;
pub(crate) mod offset_fetch;
pub(crate) mod offset_for_leader_epoch;
pub(crate) mod produce;
pub(crate) mod replica_state;
pub(crate) mod sync_group;

use crate::broker::BrokerRuntime;
use crate::config::BrokerConfig;
use crate::fetch_session::SessionCache;
use crate::group::GroupCoordinator;
use crate::metrics as m;
use crate::partition::registry::Topics;
use crate::server::api_versions;
pub(crate) use crate::server::reply::{decode, Reply, Responder, CLOSE};
use crate::server::RequestError;
use kafka_protocol::messages::ApiKey;
use keel_protocol::api::{ParsedRequest, PRODUCE_MIN_SERVED, SUPPORTED_APIS};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio_util::sync::CancellationToken;

/// A request on the Kafka listener: how to answer it, and the broker state it may read.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) resp: Responder,
}

impl std::ops::Deref for Ctx {
    type Target = Responder;

    fn deref(&self) -> &Responder {
        &self.resp
    }
}

/// Sends an admin request on to the controller at the client's version and relays the
/// answer (as Kafka brokers forward to the KRaft controller).
pub(crate) fn forward_to_controller<R>(ctx: &Ctx, req: R) -> Reply
where
    R: kafka_protocol::protocol::Request + Send + Sync + 'static,
    R::Response: Send + crate::broker::controller_link::ControllerAnswer,
{
    let ctx = ctx.clone();
    Box::pin(async move {
        let timeout = std::time::Duration::from_secs(30);
        let sent = ctx
            .shared
            .broker
            .link
            .call("a forwarded request", &req, ctx.version, timeout)
            .await;
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

/// Decodes the request body and runs its handler. `Ok(None)`: nothing to send.
pub(crate) fn dispatch(
    shared: &Arc<Shared>,
    mut req: ParsedRequest,
    peer: std::net::SocketAddr,
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
        ApiKey::InitProducerId => init_producer_id::handle(&ctx, decode(&mut req)?),
        ApiKey::DescribeProducers => describe_producers::handle(&ctx, decode(&mut req)?),
        ApiKey::JoinGroup => {
            let client_id = req.header.client_id.as_deref().unwrap_or("").to_string();
            let host = format!("/{}", peer.ip());
            join_group::handle(&ctx, decode(&mut req)?, client_id, host)
        }
        ApiKey::SyncGroup => sync_group::handle(&ctx, decode(&mut req)?),
        ApiKey::Heartbeat => heartbeat::handle(&ctx, decode(&mut req)?),
        ApiKey::LeaveGroup => leave_group::handle(&ctx, decode(&mut req)?),
        ApiKey::OffsetCommit => offset_commit::handle(&ctx, decode(&mut req)?),
        ApiKey::OffsetFetch => offset_fetch::handle(&ctx, decode(&mut req)?),
        ApiKey::ListGroups => list_groups::handle(&ctx, decode(&mut req)?),
        ApiKey::DescribeGroups => describe_groups::handle(&ctx, decode(&mut req)?),
        ApiKey::DeleteGroups => delete_groups::handle(&ctx, decode(&mut req)?),
        ApiKey::OffsetDelete => offset_delete::handle(&ctx, decode(&mut req)?),
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

/// What every request handler may read: narrow on purpose.
pub(crate) struct Shared {
    pub(crate) config: BrokerConfig,
    /// The replicas this broker holds.
    pub(crate) topics: Arc<Topics>,
    /// Cancelled when the broker stops taking requests.
    pub(crate) stop: CancellationToken,
    /// The broker role: its link to the controller and its metadata image.
    pub(crate) broker: Arc<BrokerRuntime>,
    /// The group coordinator of the offsets partitions this broker leads.
    pub(crate) groups: Arc<GroupCoordinator>,
    /// Incremental fetch sessions (KIP-227) of consumers and followers.
    pub(crate) fetch_sessions: Arc<Mutex<SessionCache>>,
}

impl Shared {
    /// The fetch session cache, for one short step (never held across an await).
    pub(crate) fn fetch_sessions(&self) -> MutexGuard<'_, SessionCache> {
        self.fetch_sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// An empty fetch session cache sized by the configuration, whose size the metrics show.
pub(crate) fn fetch_session_cache(
    config: &BrokerConfig,
) -> (Arc<Mutex<SessionCache>>, crate::metrics::ScrapeGuard) {
    let limits = crate::fetch_session::Limits {
        slots: config.fetch_session_cache_slots,
        eviction_ms: config.fetch_session_eviction_ms,
    };
    // Ids start anywhere, so a restarted broker does not hand out its predecessor's.
    let first = (uuid::Uuid::new_v4().as_u128() as i32) & i32::MAX;
    let cache = Arc::new(Mutex::new(SessionCache::new(limits, first)));
    let weak = Arc::downgrade(&cache);
    let reported = std::sync::atomic::AtomicU64::new(0);
    let guard = crate::metrics::on_scrape(move || {
        let Some(cache) = weak.upgrade() else { return };
        let c = cache.lock().unwrap_or_else(|e| e.into_inner());
        metrics::gauge!(m::FETCH_SESSIONS).set(c.len() as f64);
        metrics::gauge!(m::FETCH_SESSION_PARTITIONS).set(c.partitions() as f64);
        let evictions = c.evictions();
        let before = reported.swap(evictions, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!(m::FETCH_SESSION_EVICTIONS_TOTAL).increment(evictions - before);
    });
    (cache, guard)
}

impl crate::server::Service for Shared {
    fn apis(&self) -> &'static [keel_protocol::api::ApiSupport] {
        keel_protocol::api::SUPPORTED_APIS
    }

    fn max_frame(&self) -> usize {
        self.config.socket_request_max_bytes
    }

    fn max_inflight(&self) -> usize {
        self.config.max_inflight_per_connection
    }

    fn stop(&self) -> &CancellationToken {
        &self.stop
    }

    fn dispatch(
        self: &Arc<Self>,
        req: keel_protocol::api::ParsedRequest,
        peer: std::net::SocketAddr,
    ) -> Result<Option<Reply>, RequestError> {
        dispatch(self, req, peer)
    }

    fn keel_api(self: &Arc<Self>, api_key: i16, frame: &bytes::Bytes) -> Option<Reply> {
        (api_key == keel_protocol::replica_state::REPLICA_STATE_KEY)
            .then(|| replica_state::handle(self, frame.clone()))
    }
}
