//! `ReplicaState` (Keel's own API, see [`keel_protocol::replica_state`]): this broker's view of
//! every partition replica it holds, and digests of their batches over the ranges asked for.
//!
//! A digest that meets a batch whose CRC does not match its bytes starts a repair
//! ([`Replica::request_repair`]): the broker asks to be fenced, then cuts the log at the bad
//! batch and fetches the rest again from the leader. The log is also marked for a rescan
//! ([`keel_storage::Log::mark_for_rescan`]), so a crash before the cut does not lose it.

use super::{Reply, CLOSE};
use crate::handlers::Shared;
use crate::metrics as m;
use crate::partition::registry::Topics;
use crate::partition::Replica;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::RequestHeader;
use kafka_protocol::protocol::{Decodable, Encodable};
use keel_protocol::replica_state::{
    BrokerState, ReplicaState, ReplicaStateRequest, ReplicaStateResponse, StateQuery,
};
use std::sync::Arc;

/// Answers one `ReplicaState` frame (header included). A frame that does not decode closes
/// the connection, as a bad Kafka request does.
pub(crate) fn handle(shared: &Arc<Shared>, mut frame: Bytes) -> Reply {
    let header = match RequestHeader::decode(&mut frame, 1) {
        Ok(h) => h,
        Err(e) => return refuse(format!("bad ReplicaState header: {e}")),
    };
    let version = header.request_api_version;
    let query = ReplicaStateRequest::decode(&mut frame, version).and_then(|r| r.query());
    let query = match query {
        Ok(q) => q,
        Err(e) => return refuse(format!("bad ReplicaState v{version} request: {e:#}")),
    };
    metrics::counter!(m::REQUESTS_TOTAL, "api" => "replica_state", "version" => "0").increment(1);
    let started = std::time::Instant::now();
    let topics = shared.topics.clone();
    let broker_id = shared.config.node_id;
    let correlation_id = header.correlation_id;
    let cluster = shared.broker.clone();
    Box::pin(async move {
        let state =
            tokio::task::spawn_blocking(move || broker_state(&topics, broker_id, &query)).await;
        let state = match state {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "ReplicaState task failed");
                return CLOSE;
            }
        };
        let damaged = state
            .replicas
            .iter()
            .flat_map(|r| &r.digests)
            .any(|d| d.corrupt_batch.is_some());
        if damaged {
            cluster.replicas.recheck_readiness();
        }
        let mut buf = BytesMut::new();
        buf.put_i32(correlation_id);
        if let Err(e) = ReplicaStateResponse::new(&state).encode(&mut buf, 0) {
            tracing::error!(error = %e, "cannot encode a ReplicaState response");
            return CLOSE;
        }
        metrics::histogram!(m::REQUEST_DURATION_SECONDS, "api" => "replica_state", "version" => "0")
            .record(started.elapsed().as_secs_f64());
        Some(vec![buf.freeze()])
    })
}

fn refuse(reason: String) -> Reply {
    tracing::warn!(%reason, "closing the connection");
    metrics::counter!(m::REQUEST_ERRORS_TOTAL, "reason" => "malformed_keel_request").increment(1);
    Box::pin(std::future::ready(CLOSE))
}

/// The state of every replica `query` asks about (blocking: digests read the logs).
pub(crate) fn broker_state(topics: &Topics, broker_id: i32, query: &StateQuery) -> BrokerState {
    let mut replicas = Vec::new();
    for topic in topics.all() {
        let name = &topic.meta.name;
        if !query.topics.is_empty() && !query.topics.contains(name) {
            continue;
        }
        for r in &topic.replicas {
            let mut ranges: Vec<(i64, i64)> = query
                .digests
                .iter()
                .filter(|d| &d.topic == name && d.partition == r.partition)
                .map(|d| (d.from, d.to))
                .collect();
            ranges.sort_unstable();
            ranges.dedup();
            replicas.push(replica_state(broker_id, name, r, &ranges));
        }
    }
    BrokerState {
        broker_id,
        replicas,
    }
}

fn replica_state(me: i32, topic: &str, r: &Replica, ranges: &[(i64, i64)]) -> ReplicaState {
    let s = r.status();
    let others_in_sync = s.isr.iter().any(|&id| id != me);
    let mut out = ReplicaState {
        topic: topic.to_string(),
        partition: r.partition,
        leader: s.leader,
        leader_epoch: s.leader_epoch,
        is_leader: s.is_leader,
        replicas: s.replicas,
        isr: s.isr,
        log_start: s.log_start,
        leo: s.leo,
        hw: s.hw,
        epochs: r.log().epoch_entries(),
        follower_leos: s.followers.iter().map(|f| (f.broker_id, f.leo)).collect(),
        digests: Vec::new(),
        error: None,
    };
    for &(from, to) in ranges {
        let d = match r.log().digest(from, to) {
            Ok(d) => d,
            Err(e) => {
                out.error = Some(format!("digest of [{from}, {to}): {e}"));
                continue;
            }
        };
        if let Some(bad) = d.corrupt_batch {
            tracing::error!(
                topic,
                partition = r.partition,
                offset = bad,
                "a batch fails its CRC check"
            );
            mark_for_repair(topic, r, bad, others_in_sync);
        }
        out.digests.push(d);
    }
    out
}

/// Starts the repair of a replica at `bad` (and marks its log for a rescan); only while
/// another in-sync replica holds the data, since the cut also removes the good batches after
/// `bad`.
fn mark_for_repair(topic: &str, r: &Replica, bad: i64, others_in_sync: bool) {
    if !others_in_sync {
        tracing::error!(topic, partition = r.partition, offset = bad, "no other in-sync replica to repair from: not marking the log; copy the partition from a backup or accept losing it from this offset");
        return;
    }
    // The mark covers a crash before the online repair is done.
    if let Err(e) = r.log().mark_for_rescan(bad) {
        tracing::error!(topic, partition = r.partition, error = %e, "cannot mark the log for a rescan");
    }
    r.request_repair(bad);
    tracing::error!(topic, partition = r.partition, offset = bad, "repairing: the broker is fenced, truncates at the bad batch and fetches the rest from the leader");
}
