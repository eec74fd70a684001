//! Fetch for consumers: reads `[offset, HW)` straight out of the segments (zero-copy
//! `Bytes` over the mmap, sent with `write_vectored`), long-polling on the partitions'
//! high watermarks until `min_bytes` are there or `max_wait_ms` passes.
//!
//! Fetch sessions are never granted (`session_id` 0), so every request is a full one.

use super::{Ctx, Reply};
use crate::error::storage_error_code;
use crate::metrics as m;
use crate::replica::Replica;
use bytes::Bytes;
use kafka_protocol::messages::fetch_request::FetchRequest;
use kafka_protocol::messages::fetch_response::{
    FetchResponse, FetchableTopicResponse, PartitionData,
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
    partitions: Vec<(i32, i64, usize, Option<Arc<Replica>>)>,
}

pub fn handle(ctx: Ctx, req: FetchRequest) -> Reply {
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
                    .map(|p| {
                        let max = usize::try_from(p.partition_max_bytes).unwrap_or(0);
                        let replica = topic.as_ref().and_then(|topic| {
                            usize::try_from(p.partition)
                                .ok()
                                .and_then(|i| topic.replicas.get(i).cloned())
                        });
                        (p.partition, p.fetch_offset, max, replica)
                    })
                    .collect(),
                unknown_id: by_id && topic.is_none(),
                topic: t.topic,
                topic_id: t.topic_id,
            }
        })
        .collect();
    let max_bytes = usize::try_from(req.max_bytes).unwrap_or(0);
    let min_bytes = usize::try_from(req.min_bytes).unwrap_or(0);
    let max_wait = Duration::from_millis(u64::try_from(req.max_wait_ms).unwrap_or(0));
    Box::pin(async move {
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut watches: Vec<watch::Receiver<i64>> = wanted
            .iter()
            .flat_map(|w| w.partitions.iter())
            .filter_map(|(_, _, _, r)| r.as_ref().map(|r| r.subscribe_hw()))
            .collect();
        loop {
            for w in &mut watches {
                w.borrow_and_update();
            }
            let (response, records, bytes, errors) = read_all(&wanted, max_bytes);
            let now = tokio::time::Instant::now();
            let stopping = ctx.shared.stop.is_cancelled();
            if bytes >= min_bytes || errors || now >= deadline || watches.is_empty() || stopping {
                metrics::counter!(m::FETCH_BYTES_TOTAL).increment(bytes as u64);
                return ctx.encode(&response, &records);
            }
            // Nothing (enough) yet: wait for any high watermark to move, or the deadline.
            // A stopping broker answers at once with what it has.
            let changed = async {
                tokio::select! {
                    _ = futures_any_changed(&mut watches) => {}
                    _ = ctx.shared.stop.cancelled() => {}
                }
            };
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let (response, records, bytes, _) = read_all(&wanted, max_bytes);
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

/// Reads every wanted partition once. Returns the response, the record slices to send
/// by reference, the record byte count, and whether any partition had an error.
fn read_all(wanted: &[Wanted], max_bytes: usize) -> (FetchResponse, Vec<Bytes>, usize, bool) {
    let mut total = 0usize;
    let mut slices = Vec::new();
    let mut errors = false;
    let responses = wanted
        .iter()
        .map(|w| {
            let partitions = w
                .partitions
                .iter()
                .map(|(index, offset, part_max, replica)| {
                    let mut data = PartitionData::default()
                        .with_partition_index(*index)
                        .with_high_watermark(-1)
                        .with_last_stable_offset(-1)
                        .with_log_start_offset(-1)
                        .with_records(Some(Bytes::new()));
                    let Some(replica) = replica.as_ref().filter(|r| !r.is_deleted()) else {
                        errors = true;
                        let code = if w.unknown_id {
                            ResponseError::UnknownTopicId
                        } else {
                            ResponseError::UnknownTopicOrPartition
                        };
                        return data.with_error_code(code.code());
                    };
                    let hw = replica.high_watermark();
                    let log = replica.log();
                    data = data
                        .with_high_watermark(hw)
                        .with_last_stable_offset(hw)
                        .with_log_start_offset(log.log_start_offset());
                    // KIP-74: the first batch of the first non-empty partition always
                    // goes, however large; after that, the caps hold.
                    let budget = (*part_max).min(max_bytes.saturating_sub(total));
                    if budget == 0 && total > 0 {
                        return data;
                    }
                    // One HW snapshot bounds the read and is what the response reports.
                    match log.read(*offset, budget.max(1), hw) {
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
