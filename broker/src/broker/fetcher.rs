//! The follower fetcher: one task per leader broker, pulling every partition this broker
//! follows there in one long-polling Fetch (v15: topic ids and this broker's epoch), in a
//! fetch session: after a full first fetch, requests name only the partitions whose fetch
//! state changed, and answers only partitions with something new. A session the leader
//! lost (evicted, restarted) or refused means one full fetch and a new session.
//!
//! Per partition and response: a diverging epoch is resolved by truncation first
//! (`on_diverging_epoch`); otherwise the batches are appended verbatim and, under
//! `log.flush.policy=always`, fsynced before the next fetch reports the new offset; only
//! then is the leader's high watermark adopted (clamped to the local log).

use super::controller_link::{backoff, error_name, sleep_or_stop, ControllerLink};
use super::metadata_follower::MetadataFollower;
use crate::metrics as m;
use crate::partition::registry::Topics;
use crate::partition::{FollowingGuard, Replica};
use crate::replication::{
    on_diverging_epoch, on_offset_out_of_range, EpochEndOffset, TruncationDecision,
};
use kafka_protocol::messages::fetch_request::{
    FetchPartition, FetchRequest, FetchTopic, ForgottenTopic, ReplicaState,
};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
};
use kafka_protocol::messages::{BrokerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use keel_client::connection::Connection;
use keel_client::fetch_session::{is_session_error, Plan, SessionBuilder, Want};
use keel_client::ClientError;
use keel_storage::StorageError;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const FETCH_VERSION: i16 = 15;

/// The `replica.fetch.*` settings, and whether appends are fsynced before the next fetch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FetchSettings {
    /// `replica.fetch.wait.max.ms`
    pub(crate) wait_ms: i32,
    /// `replica.fetch.max.bytes`
    pub(crate) partition_max_bytes: i32,
    /// `replica.fetch.response.max.bytes`
    pub(crate) response_max_bytes: i32,
    /// `log.flush.policy=always`
    pub(crate) flush_always: bool,
}

/// What a fetcher needs from its broker: narrow on purpose.
pub(crate) struct FetcherContext {
    pub(crate) node_id: i32,
    pub(crate) settings: FetchSettings,
    /// The replicas, among which it finds those that follow its leader.
    pub(crate) registry: Arc<Topics>,
    /// Where the leader listens.
    pub(crate) metadata: Arc<MetadataFollower>,
    /// This broker's epoch, sent with every fetch.
    pub(crate) link: Arc<ControllerLink>,
    /// Moves when the replica manager applied a new image.
    pub(crate) applied: watch::Receiver<i64>,
}

/// Why one partition of a fetch answer, or a fetch, was not applied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("the leader answered {}", error_name(*.0))]
    Refused(i16),
    #[error("no longer follows broker {leader} in leader epoch {epoch}: answer dropped")]
    NotFollowing { leader: i32, epoch: i32 },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("asking the leader for its offsets: {0}")]
    Client(#[from] ClientError),
    #[error("the leader's ListOffsets answer names no partition")]
    EmptyAnswer,
    #[error("the task applying it panicked: {0}")]
    Panicked(String),
}

/// Follows `leader` until `stop` (the leader led nothing we follow, or shutdown).
pub(crate) async fn run(ctx: FetcherContext, leader: i32, stop: CancellationToken) {
    let mut conn: Option<Arc<Connection>> = None;
    let mut attempt = 0u32;
    let mut refusals = 0u32;
    let wait_ms = ctx.settings.wait_ms.max(0);
    let mut applied = ctx.applied.clone();
    // One fetch session with the leader (KIP-227): after the first full fetch, a request
    // names only partitions whose fetch state changed, and the answer only partitions with
    // something new, so idle partitions cost nothing per round.
    let mut session: SessionBuilder<Key> = SessionBuilder::default();
    let mut followed: Vec<(uuid::Uuid, Arc<Replica>)> = Vec::new();
    // The image the followed list was computed from (None: compute it again).
    let mut followed_at: Option<i64> = None;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let image = *applied.borrow();
        if followed_at != Some(image) {
            followed = followed_partitions(&ctx.registry, leader);
            followed_at = Some(image);
        }
        if followed.is_empty() {
            // Nothing to fetch from this leader (yet): the replica manager stops us when
            // it no longer leads anything of ours.
            followed_at = None;
            if sleep_or_stop(&stop, Duration::from_millis(100)).await {
                return;
            }
            continue;
        }
        let Some(addr) = ctx
            .metadata
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
            // Whatever the leader made of the last request, start the session over.
            session.lost();
            let timeout = Duration::from_secs(5);
            let client_id = format!("keel-fetcher-{}", ctx.node_id);
            match Connection::connect(&addr, &client_id, timeout, timeout).await {
                Ok(c) => {
                    metrics::counter!(m::FETCHER_RECONNECTS_TOTAL).increment(1);
                    conn = Some(Arc::new(c));
                }
                Err(e) => {
                    tracing::debug!(leader, error = %e, "fetcher cannot reach the leader");
                    metrics::counter!(m::FETCHER_BACKOFFS_TOTAL).increment(1);
                    attempt += 1;
                    if sleep_or_stop(&stop, backoff(attempt)).await {
                        return;
                    }
                    continue;
                }
            }
        }
        let Some(c) = conn.clone() else { continue };
        let wanted = wants(&ctx, &followed);
        let plan = session.plan(&wanted);
        let req = request(&ctx, &plan, wait_ms);
        let timeout = Duration::from_millis(wait_ms as u64) + Duration::from_secs(10);
        let send = c.send_version(&req, FETCH_VERSION, timeout);
        tokio::pin!(send);
        let resp = loop {
            tokio::select! {
                r = &mut send => break Some(r),
                _ = stop.cancelled() => return,
                changed = applied.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // New partitions to follow (a topic created, a leader moved here)
                    // should not wait out this long poll: the leader answers requests on
                    // one connection in order, so start over on a fresh one.
                    if !same_partitions(&followed, &followed_partitions(&ctx.registry, leader)) {
                        break None;
                    }
                }
            }
        };
        let Some(resp) = resp else {
            conn = None;
            session.lost();
            followed_at = None;
            continue;
        };
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(leader, error = %e, "follower fetch failed");
                metrics::counter!(m::FETCHER_BACKOFFS_TOTAL).increment(1);
                conn = None;
                session.lost();
                followed_at = None;
                attempt += 1;
                if sleep_or_stop(&stop, backoff(attempt)).await {
                    return;
                }
                continue;
            }
        };
        let error = resp.error_code;
        if !session.answered(plan, error, resp.session_id) && error != 0 {
            // The leader lost or refused the session (evicted, restarted, an epoch out of
            // step): the next request is a full one, at once. Anything else is a bug on
            // one side; back off so it cannot spin.
            tracing::debug!(leader, error = %error_name(error), "fetch session refused: starting over with a full fetch");
            if !is_session_error(error) {
                metrics::counter!(m::FETCHER_BACKOFFS_TOTAL).increment(1);
                attempt += 1;
                if sleep_or_stop(&stop, backoff(attempt)).await {
                    return;
                }
            }
            continue;
        }
        if resp.responses.iter().all(|t| t.partitions.is_empty()) {
            // Nothing new in the session (the usual answer of an idle one).
            attempt = 0;
            refusals = 0;
            continue;
        }
        // Partitions are independent logs: append and fsync them side by side, so one
        // response costs about one fsync, not one per partition.
        let flush = ctx.settings.flush_always;
        // Looked up per partition of the response: maps, not scans (thousands of partitions
        // made the scans quadratic, the largest idle cost of a follower).
        let replicas: HashMap<(uuid::Uuid, i32), &Arc<Replica>> = followed
            .iter()
            .map(|(id, r)| ((*id, r.partition), r))
            .collect();
        // The epoch each partition was fetched in: what the session holds for it, which is
        // what this round wanted (sent now, or unchanged since it was).
        let epochs: HashMap<Key, i32> = wanted
            .iter()
            .map(|(k, w)| (*k, w.current_leader_epoch))
            .collect();
        let mut work = Vec::new();
        for t in resp.responses {
            for p in t.partitions {
                let key = (t.topic_id, p.partition_index);
                let Some(replica) = replicas.get(&key) else {
                    continue;
                };
                let replica = Arc::clone(replica);
                let r = replica.clone();
                // The epoch this partition was fetched in: the answer applies only if the
                // replica still follows `leader` in it.
                let epoch = epochs.get(&key).copied().unwrap_or(-1);
                let fetched = (leader, epoch);
                // Only a partition with records or a diverging epoch does I/O; an idle one
                // just adopts the HW, here, without a trip to the blocking pool (with many
                // idle partitions those trips cost more CPU than the data).
                let idle = p.error_code == 0
                    && !has_diverging_epoch(&p)
                    && p.records.as_ref().is_none_or(|b| b.is_empty());
                work.push(async move {
                    let outcome = if idle {
                        Ok(handle_partition(&r, fetched, p, flush))
                    } else {
                        tokio::task::spawn_blocking(move || handle_partition(&r, fetched, p, flush))
                            .await
                    };
                    (replica, outcome)
                });
            }
        }
        let mut backed_off = false;
        let mut out_of_range = Vec::new();
        for (replica, outcome) in futures::future::join_all(work).await {
            match outcome {
                Ok(Ok(Applied::Done)) => {}
                Ok(Ok(Applied::OutOfRange(epoch))) => out_of_range.push((replica, epoch)),
                Ok(Err(e)) => {
                    // Usually a metadata race (the leader learns of a change a moment
                    // later than we do); counted, backed off, retried.
                    tracing::debug!(topic = %replica.topic, partition = replica.partition, leader, error = %e, "follower fetch refused");
                    backed_off = true;
                }
                Err(e) => tracing::error!(error = %e, "follower append task panicked"),
            }
        }
        for (replica, epoch) in out_of_range {
            if let Err(e) = resolve_out_of_range(&c, ctx.node_id, &replica, (leader, epoch)).await {
                tracing::warn!(topic = %replica.topic, partition = replica.partition, leader, error = %e, "cannot resolve an out-of-range fetch");
                backed_off = true;
            }
        }
        if backed_off {
            followed_at = None;
            // A leadership or epoch mismatch, nearly always a race: the leader applies the
            // same metadata change a moment after us (a new topic), or we after it. Retry as
            // soon as our metadata moves, or after a back-off that starts short and doubles
            // while the refusals go on: a long first wait stalls every partition this fetcher
            // carries, and with them acks=all on the leader.
            refusals += 1;
            metrics::counter!(m::FETCHER_BACKOFFS_TOTAL).increment(1);
            tokio::select! {
                _ = tokio::time::sleep(refusal_backoff(refusals)) => {}
                changed = applied.changed() => if changed.is_err() { return },
                _ = stop.cancelled() => return,
            }
        } else {
            attempt = 0;
            refusals = 0;
        }
    }
}

/// Wait after the `n`th refused fetch in a row: 10 ms, doubling, at most 1 s.
fn refusal_backoff(n: u32) -> Duration {
    Duration::from_millis((5u64 << n.clamp(1, 8)).min(1_000))
}

/// The partitions (topic id, replica) this broker follows from `leader`.
fn followed_partitions(registry: &Topics, leader: i32) -> Vec<(uuid::Uuid, Arc<Replica>)> {
    registry
        .all()
        .iter()
        .flat_map(|t| t.replicas.iter().map(move |r| (t.meta.id, r.clone())))
        .filter(|(_, r)| !r.is_deleted() && !r.is_leader() && r.role_view().0 == leader)
        .collect()
}

fn same_partitions(a: &[(uuid::Uuid, Arc<Replica>)], b: &[(uuid::Uuid, Arc<Replica>)]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ia, ra), (ib, rb))| ia == ib && Arc::ptr_eq(ra, rb))
}

/// A followed partition: topic id and partition index.
type Key = (uuid::Uuid, i32);

/// What this broker wants of each followed partition now: its log end, epochs and start.
fn wants(ctx: &FetcherContext, followed: &[(uuid::Uuid, Arc<Replica>)]) -> Vec<(Key, Want)> {
    followed
        .iter()
        .map(|(id, r)| {
            let log = r.log();
            let want = Want {
                fetch_offset: log.log_end_offset(),
                max_bytes: ctx.settings.partition_max_bytes,
                current_leader_epoch: r.leader_epoch(),
                last_fetched_epoch: log.latest_epoch().unwrap_or(-1),
                log_start_offset: log.log_start_offset(),
            };
            ((*id, r.partition), want)
        })
        .collect()
}

/// The Fetch request for one round of `plan`.
fn request(ctx: &FetcherContext, plan: &Plan<Key>, wait_ms: i32) -> FetchRequest {
    let mut topics: Vec<FetchTopic> = Vec::new();
    for ((id, partition), w) in &plan.send {
        let p = FetchPartition::default()
            .with_partition(*partition)
            .with_fetch_offset(w.fetch_offset)
            .with_current_leader_epoch(w.current_leader_epoch)
            .with_last_fetched_epoch(w.last_fetched_epoch)
            .with_log_start_offset(w.log_start_offset)
            .with_partition_max_bytes(w.max_bytes);
        match topics.last_mut() {
            Some(t) if t.topic_id == *id => t.partitions.push(p),
            _ => topics.push(
                FetchTopic::default()
                    .with_topic_id(*id)
                    .with_partitions(vec![p]),
            ),
        }
    }
    let mut forgotten: Vec<ForgottenTopic> = Vec::new();
    for (id, partition) in &plan.forget {
        match forgotten.last_mut() {
            Some(t) if t.topic_id == *id => t.partitions.push(*partition),
            _ => forgotten.push(
                ForgottenTopic::default()
                    .with_topic_id(*id)
                    .with_partitions(vec![*partition]),
            ),
        }
    }
    let mut req = FetchRequest::default();
    req.replica_state = ReplicaState::default()
        .with_replica_id(BrokerId(ctx.node_id))
        .with_replica_epoch(ctx.link.broker_epoch());
    req.max_wait_ms = wait_ms;
    req.min_bytes = 1;
    req.max_bytes = ctx.settings.response_max_bytes;
    req.session_id = plan.session_id;
    req.session_epoch = plan.epoch;
    req.topics = topics;
    req.forgotten_topics_data = forgotten;
    req
}

/// What applying one partition of a fetch response led to.
enum Applied {
    Done,
    /// The leader answered OFFSET_OUT_OF_RANGE to a fetch in this leader epoch: ask for its
    /// log start and end.
    OutOfRange(i32),
}

/// Applies one partition of a fetch response to the follower replica, if it still follows
/// the leader in the epoch the fetch was sent for, `fetched` = (leader, leader epoch).
fn handle_partition(
    r: &Replica,
    fetched: (i32, i32),
    p: PartitionData,
    flush: bool,
) -> Result<Applied, FetchError> {
    let log = r.log();
    if p.error_code == ResponseError::OffsetOutOfRange.code() {
        return Ok(Applied::OutOfRange(fetched.1));
    }
    let _following = following(r, fetched)?;
    if p.error_code != 0 {
        return Err(FetchError::Refused(p.error_code));
    }
    if has_diverging_epoch(&p) {
        metrics::counter!(m::DIVERGENCE_RESYNCS_TOTAL).increment(1);
        let diverging = EpochEndOffset::new(p.diverging_epoch.epoch, p.diverging_epoch.end_offset);
        let decision = on_diverging_epoch(
            diverging,
            log.as_ref(),
            log.log_end_offset(),
            r.high_watermark(),
        );
        truncate(r, decision, &format!("diverging epoch {diverging:?}"))?;
        return Ok(Applied::Done);
    }
    if let Some(records) = p.records.filter(|b| !b.is_empty()) {
        // A fetch may end inside a batch; append whole batches only.
        let whole: usize = keel_protocol::batch::batches(&records)
            .map_while(Result::ok)
            .map(|b| b.bytes.len())
            .sum();
        if whole > 0 {
            log.append_as_follower(&records[..whole])?;
            if flush {
                // The next fetch reports this offset to the leader: it must be on disk.
                log.flush()?;
            }
            r.follower_appended();
        }
    }
    r.set_follower_hw(p.high_watermark);
    Ok(Applied::Done)
}

/// A DivergingEpoch is set (-1/-1 on the wire means none).
fn has_diverging_epoch(p: &PartitionData) -> bool {
    p.diverging_epoch.epoch >= 0 || p.diverging_epoch.end_offset >= 0
}

/// Cuts a follower replica at `bad`, a batch that failed its CRC check; the fetcher fetches
/// the rest again (an append in flight meanwhile fails its offset check and is retried).
pub(crate) fn repair(r: &Replica, bad: i64) -> Result<i64, FetchError> {
    truncate(
        r,
        TruncationDecision::TruncateTo(bad),
        "a batch fails its CRC check",
    )
}

/// Applies a truncation decision to a follower replica: truncates, counts it (truncations,
/// records and bytes removed), logs `why`, and adopts the HW only afterwards. Returns the
/// new log end.
fn truncate(r: &Replica, decision: TruncationDecision, why: &str) -> Result<i64, FetchError> {
    let log = r.log();
    let leo = log.log_end_offset();
    let size_before = log.size_bytes();
    let to = match decision {
        TruncationDecision::TruncateTo(o)
        | TruncationDecision::TruncateToAndAskAgain { offset: o, .. } => {
            log.truncate_to(o).map(|()| o)
        }
        TruncationDecision::TruncateFully { start_offset } => log
            .truncate_fully_and_start_at(start_offset)
            .map(|()| start_offset),
    }?;
    metrics::counter!(m::TRUNCATIONS_TOTAL).increment(1);
    metrics::counter!(m::TRUNCATED_RECORDS_TOTAL).increment(leo.saturating_sub(to).max(0) as u64);
    metrics::counter!(m::TRUNCATED_BYTES_TOTAL)
        .increment(size_before.saturating_sub(log.size_bytes()));
    tracing::info!(topic = %r.topic, partition = r.partition, from = leo, to, ?decision, "truncated follower log: {why}");
    r.follower_appended();
    r.set_follower_hw(r.high_watermark());
    Ok(to)
}

/// The leader said our fetch offset is out of range (below its log start, past its end, or
/// with a last epoch it cannot place): ask it for its log start and end (ListOffsets as a
/// replica, so "latest" is its LEO) and truncate as [`on_offset_out_of_range`] says.
async fn resolve_out_of_range(
    c: &Connection,
    node_id: i32,
    r: &Arc<Replica>,
    fetched: (i32, i32),
) -> Result<(), FetchError> {
    let mut ends = [0i64; 2];
    for (slot, timestamp) in ends.iter_mut().zip([-2i64, -1]) {
        let req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(node_id))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_string(r.topic.to_string())))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(r.partition)
                    .with_current_leader_epoch(fetched.1)
                    .with_timestamp(timestamp)])]);
        let resp = c.send_version(&req, 4, Duration::from_secs(10)).await?;
        let p = resp
            .topics
            .into_iter()
            .flat_map(|t| t.partitions)
            .next()
            .ok_or(FetchError::EmptyAnswer)?;
        if p.error_code != 0 {
            return Err(FetchError::Refused(p.error_code));
        }
        *slot = p.offset;
    }
    let [start, end] = ends;
    let r = r.clone();
    tokio::task::spawn_blocking(move || {
        let _following = following(&r, fetched)?;
        let decision = on_offset_out_of_range(start, end, r.log().log_end_offset());
        let why = format!("out of range: leader log start {start}, LEO {end}");
        tracing::warn!(topic = %r.topic, partition = r.partition, "fetch {why}");
        truncate(&r, decision, &why).map(|_| ())
    })
    .await
    .map_err(|e| FetchError::Panicked(e.to_string()))?
}

/// [`Replica::following`], or why the answer no longer applies.
fn following(r: &Replica, (leader, epoch): (i32, i32)) -> Result<FollowingGuard<'_>, FetchError> {
    r.following(leader, epoch)
        .ok_or(FetchError::NotFollowing { leader, epoch })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_back_off_from_10_ms_to_1_s() {
        let table = [
            (1, 10),
            (2, 20),
            (3, 40),
            (6, 320),
            (7, 640),
            (8, 1_000),
            (50, 1_000),
        ];
        for (n, ms) in table {
            assert_eq!(refusal_backoff(n), Duration::from_millis(ms), "refusal {n}");
        }
    }
}
