//! Fetch: consumers read `[offset, HW)` straight out of the segments (zero-copy `Bytes`
//! over the mmap, sent with `write_vectored`), long-polling on the partitions' high
//! watermarks until `min_bytes` are there or `max_wait_ms` passes.
//!
//! A follower's fetch (replica id >= 0) is validated against the leader's
//! epochs first (fenced / unknown epoch, diverging history → `DivergingEpoch`, out of
//! range); an accepted one records the follower's position, which moves the HW and may
//! propose an ISR change, and reads up to the leader's log end.
//!
//! Fetch sessions are never granted (`session_id` 0), so every request is a full one.

use super::{Ctx, Reply};
use crate::error::storage_error_code;
use crate::metrics as m;
use crate::partition::registry::leading;
use crate::partition::Replica;
use crate::replication::{
    is_stale_broker_epoch, validate_follower_fetch, FetchPartitionRequestView, FetchValidation,
};
use bytes::Bytes;
use kafka_protocol::messages::fetch_request::FetchRequest;
use kafka_protocol::messages::fetch_response::{
    EpochEndOffset as EpochEndOffsetWire, FetchResponse, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::TopicName;
use kafka_protocol::ResponseError;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

struct Wanted {
    topic: TopicName,
    topic_id: uuid::Uuid,
    /// Set when the request named a topic id this broker does not know (v13+).
    unknown_id: bool,
    partitions: Vec<Part>,
}

struct Part {
    index: i32,
    offset: i64,
    max_bytes: usize,
    current_leader_epoch: i32,
    last_fetched_epoch: i32,
    replica: Option<Arc<Replica>>,
}

/// Who is fetching.
#[derive(Clone, Copy)]
enum Reader {
    Consumer,
    /// A follower broker; `stale` when its broker epoch is not the registered one.
    Follower {
        id: i32,
        stale: bool,
    },
}

pub(crate) fn handle(ctx: Ctx, req: FetchRequest) -> Reply {
    let topics = &ctx.shared.topics;
    let by_id = ctx.version >= 13;
    let wanted: Vec<Wanted> = req
        .topics
        .into_iter()
        .map(|t| {
            // v13+ addresses topics by id only; older versions by name.
            let topic = if by_id {
                topics.get_by_id(t.topic_id)
            } else {
                topics.get(&t.topic)
            };
            Wanted {
                partitions: t
                    .partitions
                    .iter()
                    .map(|p| Part {
                        index: p.partition,
                        offset: p.fetch_offset,
                        max_bytes: usize::try_from(p.partition_max_bytes).unwrap_or(0),
                        current_leader_epoch: p.current_leader_epoch,
                        last_fetched_epoch: p.last_fetched_epoch,
                        replica: topic.as_ref().and_then(|t| t.replica(p.partition)),
                    })
                    .collect(),
                unknown_id: by_id && topic.is_none(),
                topic: t.topic,
                topic_id: t.topic_id,
            }
        })
        .collect();
    let follower = if ctx.version >= 15 {
        req.replica_state.replica_id.0
    } else {
        req.replica_id.0
    };
    let reader = match &ctx.shared.broker {
        rt if follower >= 0 => {
            let registered = rt.image().broker(follower).map(|b| b.epoch);
            let epoch = if ctx.version >= 15 {
                req.replica_state.replica_epoch
            } else {
                -1
            };
            Reader::Follower {
                id: follower,
                stale: is_stale_broker_epoch(epoch, registered),
            }
        }
        _ => Reader::Consumer,
    };
    if let Reader::Follower { id, stale: false } = reader {
        // The follower's position counts once per request, before anything is read.
        record_follower_positions(&ctx, &wanted, id);
    }
    let max_bytes = usize::try_from(req.max_bytes).unwrap_or(0);
    let min_bytes = usize::try_from(req.min_bytes).unwrap_or(0);
    let max_wait = Duration::from_millis(u64::try_from(req.max_wait_ms).unwrap_or(0));
    Box::pin(async move {
        let deadline = tokio::time::Instant::now() + max_wait;
        // Consumers wait for the HW to move, followers for the log end.
        let mut watches: Vec<watch::Receiver<i64>> = wanted
            .iter()
            .flat_map(|w| w.partitions.iter())
            .filter_map(|p| p.replica.as_ref())
            .map(|r| match reader {
                Reader::Consumer => r.subscribe_hw(),
                Reader::Follower { .. } => r.subscribe_leo(),
            })
            .collect();
        loop {
            for w in &mut watches {
                w.borrow_and_update();
            }
            let (response, records, bytes, errors) = read_all(&wanted, max_bytes, reader);
            let now = tokio::time::Instant::now();
            let stopping = ctx.shared.stop.is_cancelled();
            if bytes >= min_bytes || errors || now >= deadline || watches.is_empty() || stopping {
                metrics::counter!(m::FETCH_BYTES_TOTAL).increment(bytes as u64);
                return ctx.encode(&response, &records);
            }
            // Nothing (enough) yet: wait for any high watermark to move, or the deadline.
            // A stopping broker answers at once with what it has.
            let _waiting = m::Waiting::new(&m::FETCH_WAITING);
            let changed = async {
                tokio::select! {
                    _ = futures_any_changed(&mut watches) => {}
                    _ = ctx.shared.stop.cancelled() => {}
                }
            };
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let (response, records, bytes, _) = read_all(&wanted, max_bytes, reader);
                metrics::counter!(m::FETCH_BYTES_TOTAL).increment(bytes as u64);
                return ctx.encode(&response, &records);
            }
        }
    })
}

/// Resolves when any of the receivers sees a new value (or its sender is gone).
async fn futures_any_changed(watches: &mut [watch::Receiver<i64>]) {
    let changes = watches.iter_mut().map(|w| Box::pin(w.changed()));
    let _ = futures::future::select_all(changes).await;
}

/// Records a follower's fetch offsets on the partitions this broker leads; proposes the
/// ISR changes that follow from them.
fn record_follower_positions(ctx: &Ctx, wanted: &[Wanted], follower: i32) {
    let rt = &ctx.shared.broker;
    for w in wanted {
        for p in &w.partitions {
            let Ok(r) = leading(p.replica.as_ref()) else {
                continue;
            };
            let view = FetchPartitionRequestView {
                fetch_offset: p.offset,
                current_leader_epoch: p.current_leader_epoch,
                last_fetched_epoch: p.last_fetched_epoch,
            };
            let log = r.log();
            let valid = validate_follower_fetch(
                &view,
                r.leader_epoch(),
                log.as_ref(),
                log.log_end_offset(),
                log.log_start_offset(),
            );
            if valid == FetchValidation::Ok {
                if let Some(isr) = r.follower_fetched(follower, p.offset) {
                    rt.propose_isr(r.clone(), w.topic_id, isr);
                }
            }
        }
    }
}

/// Reads every wanted partition once. Returns the response, the record slices to send
/// by reference, the record byte count, and whether any partition has an answer that
/// must go out now (an error or a diverging epoch).
fn read_all(
    wanted: &[Wanted],
    max_bytes: usize,
    reader: Reader,
) -> (FetchResponse, Vec<Bytes>, usize, bool) {
    let mut total = 0usize;
    let mut slices = Vec::new();
    let mut errors = false;
    let responses = wanted
        .iter()
        .map(|w| {
            let partitions = w
                .partitions
                .iter()
                .map(|p| {
                    let mut data = PartitionData::default()
                        .with_partition_index(p.index)
                        .with_high_watermark(-1)
                        .with_last_stable_offset(-1)
                        .with_log_start_offset(-1)
                        .with_records(Some(Bytes::new()));
                    let replica = match leading(p.replica.as_ref()) {
                        Ok(replica) => replica,
                        Err(e) => {
                            errors = true;
                            let code = match e {
                                ResponseError::UnknownTopicOrPartition if w.unknown_id => {
                                    ResponseError::UnknownTopicId
                                }
                                e => e,
                            };
                            return data.with_error_code(code.code());
                        }
                    };
                    let hw = match reader {
                        Reader::Consumer => match replica.consumer_high_watermark() {
                            Some(hw) => hw,
                            None => {
                                errors = true;
                                return data
                                    .with_error_code(ResponseError::OffsetNotAvailable.code());
                            }
                        },
                        Reader::Follower { .. } => replica.high_watermark(),
                    };
                    let log = replica.log();
                    data = data
                        .with_high_watermark(hw)
                        .with_last_stable_offset(hw)
                        .with_log_start_offset(log.log_start_offset());
                    // Consumers read below one HW snapshot; followers up to the log end.
                    let bound = match reader {
                        Reader::Consumer => hw,
                        Reader::Follower { stale: true, .. } => {
                            errors = true;
                            return data.with_error_code(ResponseError::NotLeaderOrFollower.code());
                        }
                        Reader::Follower { .. } => {
                            let view = FetchPartitionRequestView {
                                fetch_offset: p.offset,
                                current_leader_epoch: p.current_leader_epoch,
                                last_fetched_epoch: p.last_fetched_epoch,
                            };
                            let leo = log.log_end_offset();
                            let code = match validate_follower_fetch(
                                &view,
                                replica.leader_epoch(),
                                log.as_ref(),
                                leo,
                                log.log_start_offset(),
                            ) {
                                FetchValidation::Ok => None,
                                FetchValidation::FencedLeaderEpoch => {
                                    Some(ResponseError::FencedLeaderEpoch)
                                }
                                FetchValidation::UnknownLeaderEpoch => {
                                    Some(ResponseError::UnknownLeaderEpoch)
                                }
                                FetchValidation::OffsetOutOfRange => {
                                    Some(ResponseError::OffsetOutOfRange)
                                }
                                FetchValidation::Diverging(e) => {
                                    errors = true;
                                    return data.with_diverging_epoch(
                                        EpochEndOffsetWire::default()
                                            .with_epoch(e.epoch)
                                            .with_end_offset(e.end_offset),
                                    );
                                }
                            };
                            if let Some(code) = code {
                                errors = true;
                                return data.with_error_code(code.code());
                            }
                            leo
                        }
                    };
                    // KIP-74: the first batch of the first non-empty partition always
                    // goes, however large; after that, the caps hold.
                    let budget = p.max_bytes.min(max_bytes.saturating_sub(total));
                    if budget == 0 && total > 0 {
                        return data;
                    }
                    match log.read(p.offset, budget.max(1), bound) {
                        Ok(read) if total > 0 && read.records.len() > budget => data,
                        Ok(read) => {
                            total += read.records.len();
                            if !read.records.is_empty() {
                                slices.push(read.records.clone());
                            }
                            data.with_records(Some(read.records))
                        }
                        Err(e) => {
                            errors = true;
                            data.with_error_code(storage_error_code(&e).code())
                        }
                    }
                })
                .collect();
            FetchableTopicResponse::default()
                .with_topic(w.topic.clone())
                .with_topic_id(w.topic_id)
                .with_partitions(partitions)
        })
        .collect();
    (
        FetchResponse::default().with_responses(responses),
        slices,
        total,
        errors,
    )
}
