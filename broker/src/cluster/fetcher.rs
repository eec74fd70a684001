//! The follower fetcher: one task per leader broker, pulling every partition this broker
//! follows there in one long-polling Fetch (v15: topic ids and this broker's epoch).
//!
//! Per partition and response: a diverging epoch is resolved by truncation first
//! (`on_diverging_epoch`); otherwise the batches are appended verbatim and, under
//! `log.flush.policy=always`, fsynced before the next fetch reports the new offset; only
//! then is the leader's high watermark adopted (clamped to the local log).

use super::broker_runtime::{backoff, ClusterBroker};
use crate::metrics as m;
use crate::replica::Replica;
use crate::replication::{on_diverging_epoch, EpochEndOffset, TruncationDecision};
use kafka_protocol::messages::fetch_request::{
    FetchPartition, FetchRequest, FetchTopic, ReplicaState,
};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::BrokerId;
use kafka_protocol::ResponseError;
use keel_client::connection::Connection;
use keel_storage::FlushPolicy;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const FETCH_VERSION: i16 = 15;

/// Follows `leader` until `stop` (the leader led nothing we follow, or shutdown).
pub async fn run(rt: Arc<ClusterBroker>, leader: i32, stop: CancellationToken) {
    let mut conn: Option<Arc<Connection>> = None;
    let mut attempt = 0u32;
    let wait_ms = rt.config.replica_fetch_wait_max_ms.max(0);
    loop {
        if stop.is_cancelled() {
            return;
        }
        let followed = followed_partitions(&rt, leader);
        if followed.is_empty() {
            // Nothing to fetch from this leader (yet): the replica manager stops us when
            // it no longer leads anything of ours.
            if sleep_or_stop(&stop, Duration::from_millis(100)).await {
                return;
            }
            continue;
        }
        let Some(addr) = rt
            .image()
            .broker(leader)
            .map(|b| format!("{}:{}", b.host, b.port))
        else {
            if sleep_or_stop(&stop, backoff(attempt)).await {
                return;
            }
            attempt += 1;
            continue;
        };
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            let timeout = Duration::from_secs(5);
            let client_id = format!("keel-fetcher-{}", rt.node_id);
            match Connection::connect(&addr, &client_id, timeout, timeout).await {
                Ok(c) => conn = Some(Arc::new(c)),
                Err(e) => {
                    tracing::debug!(leader, error = %e, "fetcher cannot reach the leader");
                    metrics::counter!(m::FETCHER_RETRIES_TOTAL).increment(1);
                    attempt += 1;
                    if sleep_or_stop(&stop, backoff(attempt)).await {
                        return;
                    }
                    continue;
                }
            }
        }
        let Some(c) = conn.clone() else { continue };
        let req = request(&rt, &followed, wait_ms);
        let timeout = Duration::from_millis(wait_ms as u64) + Duration::from_secs(10);
        let resp = tokio::select! {
            r = c.send_version(&req, FETCH_VERSION, timeout) => r,
            _ = stop.cancelled() => return,
        };
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(leader, error = %e, "follower fetch failed");
                metrics::counter!(m::FETCHER_RETRIES_TOTAL).increment(1);
                conn = None;
                attempt += 1;
                if sleep_or_stop(&stop, backoff(attempt)).await {
                    return;
                }
                continue;
            }
        };
        // Partitions are independent logs: append and fsync them side by side, so one
        // response costs about one fsync, not one per partition.
        let flush = rt.config.log.flush_policy == FlushPolicy::Always;
        let mut work = Vec::new();
        for t in resp.responses {
            for p in t.partitions {
                let Some((_, replica)) = followed
                    .iter()
                    .find(|(id, r)| *id == t.topic_id && r.partition == p.partition_index)
                else {
                    continue;
                };
                let r = replica.clone();
                work.push(async move {
                    let outcome =
                        tokio::task::spawn_blocking(move || handle_partition(&r, p, flush)).await;
                    (replica.clone(), outcome)
                });
            }
        }
        let mut backed_off = false;
        for (replica, outcome) in futures::future::join_all(work).await {
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    // Usually a metadata race (the leader learns of a change a moment
                    // later than we do); counted, backed off, retried.
                    tracing::debug!(topic = %replica.topic, partition = replica.partition, leader, error = %e, "follower fetch refused");
                    backed_off = true;
                }
                Err(e) => tracing::error!(error = %e, "follower append task panicked"),
            }
        }
        if backed_off {
            // A leadership or epoch mismatch: wait for newer metadata before retrying.
            attempt += 1;
            metrics::counter!(m::FETCHER_RETRIES_TOTAL).increment(1);
            if sleep_or_stop(&stop, backoff(attempt)).await {
                return;
            }
        } else {
            attempt = 0;
        }
    }
}

/// The partitions (topic id, replica) this broker follows from `leader`.
fn followed_partitions(rt: &ClusterBroker, leader: i32) -> Vec<(uuid::Uuid, Arc<Replica>)> {
    rt.topics
        .all()
        .iter()
        .flat_map(|t| t.replicas.iter().map(move |r| (t.meta.id, r.clone())))
        .filter(|(_, r)| !r.is_deleted() && !r.is_leader() && r.role_view().0 == leader)
        .collect()
}

fn request(
    rt: &ClusterBroker,
    followed: &[(uuid::Uuid, Arc<Replica>)],
    wait_ms: i32,
) -> FetchRequest {
    let mut topics: Vec<FetchTopic> = Vec::new();
    for (id, r) in followed {
        let log = r.log();
        let mut p = FetchPartition::default();
        p.partition = r.partition;
        p.fetch_offset = log.log_end_offset();
        p.current_leader_epoch = r.leader_epoch();
        p.last_fetched_epoch = log.latest_epoch().unwrap_or(-1);
        p.log_start_offset = log.log_start_offset();
        p.partition_max_bytes = rt.config.replica_fetch_max_bytes;
        match topics.iter_mut().find(|t| t.topic_id == *id) {
            Some(t) => t.partitions.push(p),
            None => {
                let mut t = FetchTopic::default();
                t.topic_id = *id;
                t.partitions = vec![p];
                topics.push(t);
            }
        }
    }
    let mut req = FetchRequest::default();
    req.replica_state = ReplicaState::default()
        .with_replica_id(BrokerId(rt.node_id))
        .with_replica_epoch(rt.broker_epoch());
    req.max_wait_ms = wait_ms;
    req.min_bytes = 1;
    req.max_bytes = rt.config.replica_fetch_max_bytes.saturating_mul(16);
    req.session_epoch = -1;
    req.topics = topics;
    req
}

/// Applies one partition of a fetch response to the follower replica.
fn handle_partition(r: &Replica, p: PartitionData, flush: bool) -> Result<(), String> {
    let log = r.log();
    if p.error_code != 0 {
        let name = ResponseError::try_from_code(p.error_code)
            .map_or_else(|| "?".into(), |e| e.to_string());
        return Err(format!("leader answered {name} ({})", p.error_code));
    }
    if p.diverging_epoch.epoch >= 0 || p.diverging_epoch.end_offset >= 0 {
        let diverging = EpochEndOffset::new(p.diverging_epoch.epoch, p.diverging_epoch.end_offset);
        let leo = log.log_end_offset();
        let size_before = log.size_bytes();
        let decision = on_diverging_epoch(diverging, log.as_ref(), leo, r.high_watermark());
        let truncated = match decision {
            TruncationDecision::TruncateTo(o)
            | TruncationDecision::TruncateToAndAskAgain { offset: o, .. } => {
                log.truncate_to(o).map(|()| o)
            }
            TruncationDecision::TruncateFully { start_offset } => log
                .truncate_fully_and_start_at(start_offset)
                .map(|()| start_offset),
            TruncationDecision::NoTruncation | TruncationDecision::AskAgain { .. } => Ok(leo),
        }
        .map_err(|e| e.to_string())?;
        metrics::counter!(m::TRUNCATIONS_TOTAL).increment(1);
        metrics::counter!(m::TRUNCATED_RECORDS_TOTAL)
            .increment(leo.saturating_sub(truncated).max(0) as u64);
        metrics::counter!(m::TRUNCATED_BYTES_TOTAL)
            .increment(size_before.saturating_sub(log.size_bytes()));
        tracing::info!(topic = %r.topic, partition = r.partition, from = leo, to = truncated, ?diverging, "truncated diverging log");
        r.follower_appended();
        r.set_follower_hw(r.high_watermark());
        return Ok(());
    }
    if let Some(records) = p.records.filter(|b| !b.is_empty()) {
        // A fetch may end inside a batch; append whole batches only.
        let whole: usize = keel_protocol::batch::batches(&records)
            .map_while(Result::ok)
            .map(|b| b.bytes.len())
            .sum();
        if whole > 0 {
            log.append_as_follower(&records[..whole])
                .map_err(|e| e.to_string())?;
            if flush {
                // The next fetch reports this offset to the leader: it must be on disk.
                log.flush().map_err(|e| e.to_string())?;
            }
            r.follower_appended();
        }
    }
    r.set_follower_hw(p.high_watermark);
    Ok(())
}

async fn sleep_or_stop(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.cancelled() => true,
    }
}
