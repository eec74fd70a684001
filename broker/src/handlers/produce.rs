//! Produce: append each partition's batches as leader (now, in request order), then wait
//! for the acknowledgement level `acks` asks for (in the reply future).

use super::{Ctx, Reply};
use crate::error::storage_error_code;
use crate::metrics as m;
use crate::partition::acks::Acks;
use crate::partition::{AckTarget, AppendError, Appended, Replica};
use kafka_protocol::messages::produce_request::ProduceRequest;
use kafka_protocol::messages::produce_response::{
    PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use std::sync::Arc;
use std::time::Duration;

/// One partition's outcome so far: appended and waiting, or already failed.
enum Outcome {
    Appended {
        replica: Arc<Replica>,
        base_offset: i64,
        ack: AckTarget,
    },
    Failed(ResponseError, Option<String>),
}

pub(crate) fn handle(ctx: Ctx, req: ProduceRequest) -> Option<Reply> {
    let topics = &ctx.shared.topics;
    let acks = Acks::from_wire(req.acks);
    let issued_below = ctx.shared.broker.image().next_producer_id();
    let mut results = Vec::with_capacity(req.topic_data.len());
    for topic in req.topic_data {
        let mut parts = Vec::with_capacity(topic.partition_data.len());
        for p in topic.partition_data {
            let outcome = match acks {
                None => Outcome::Failed(ResponseError::InvalidRequiredAcks, None),
                // Forged group state: only the group coordinator writes there.
                Some(_) if crate::topic_config::is_internal_topic(&topic.name) => Outcome::Failed(
                    ResponseError::InvalidTopicException,
                    Some("cannot produce to an internal topic".into()),
                ),
                Some(_) if req.transactional_id.is_some() => Outcome::Failed(
                    ResponseError::TransactionalIdAuthorizationFailed,
                    Some("transactions are not supported".into()),
                ),
                Some(acks) => append(
                    topics.leader(&topic.name, p.index),
                    acks,
                    p.records.as_deref(),
                    issued_below,
                ),
            };
            parts.push((p.index, outcome));
        }
        results.push((topic.name, parts));
    }
    if acks == Some(Acks::None) {
        return answer_nothing(&results);
    }
    // An undefined acks value failed every partition above; the answer says so.
    let acks = acks.unwrap_or(Acks::All);
    let timeout = Duration::from_millis(u64::try_from(req.timeout_ms).unwrap_or(0));
    Some(Box::pin(async move {
        let _waiting = m::Waiting::new(&m::PRODUCE_WAITING);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut responses = Vec::with_capacity(results.len());
        for (name, parts) in results {
            let mut partition_responses = Vec::with_capacity(parts.len());
            for (index, outcome) in parts {
                let mut r = PartitionProduceResponse::default()
                    .with_index(index)
                    .with_base_offset(-1)
                    .with_log_append_time_ms(-1);
                match outcome {
                    Outcome::Appended {
                        replica,
                        base_offset,
                        ack,
                    } => {
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        r = match replica.acknowledged(acks, ack, left).await {
                            Ok(()) => r.with_base_offset(base_offset),
                            Err(e) => r.with_error_code(e.produce_code().code()),
                        };
                        r.log_start_offset = replica.log().log_start_offset();
                    }
                    Outcome::Failed(e, message) => {
                        r = r
                            .with_error_code(e.code())
                            .with_error_message(message.map(StrBytes::from_string));
                    }
                }
                partition_responses.push(r);
            }
            responses.push(
                TopicProduceResponse::default()
                    .with_name(name)
                    .with_partition_responses(partition_responses),
            );
        }
        if crate::failpoint::drop_produce_response() {
            tracing::warn!("test failpoint: dropping a produce response");
            return super::CLOSE;
        }
        ctx.encode(&ProduceResponse::default().with_responses(responses), &[])
    }))
}

/// `acks=0`: no response. A failed partition closes the connection instead, as Kafka does,
/// so the client notices (it reconnects and refreshes metadata) rather than losing data
/// silently, e.g. after a leadership move.
fn answer_nothing(results: &[(TopicName, Vec<(i32, Outcome)>)]) -> Option<Reply> {
    let failed = results
        .iter()
        .flat_map(|(_, parts)| parts)
        .find_map(|(index, o)| match o {
            Outcome::Failed(e, _) => Some((*index, *e)),
            Outcome::Appended { .. } => None,
        });
    if let Some((partition, error)) = failed {
        tracing::debug!(partition, %error, "acks=0 produce failed; closing the connection");
        return Some(Box::pin(async { super::CLOSE }));
    }
    None
}

fn append(
    replica: Result<Arc<Replica>, ResponseError>,
    acks: Acks,
    records: Option<&[u8]>,
    issued_below: i64,
) -> Outcome {
    let replica = match replica {
        Ok(replica) => replica,
        Err(e) => return Outcome::Failed(e, None),
    };
    let Some(records) = records.filter(|r| !r.is_empty()) else {
        return Outcome::Failed(
            ResponseError::CorruptMessage,
            Some("no record batches".into()),
        );
    };
    if let Some(problem) = batch_shape_problem(records) {
        return Outcome::Failed(ResponseError::InvalidRecord, Some(problem));
    }
    if let Some(pid) =
        unissued_producer(records, issued_below).filter(|&pid| !replica.log().has_producer(pid))
    {
        // Never handed out, or handed out so recently that this broker's metadata has not
        // shown it yet. UNKNOWN_PRODUCER_ID lets a client recover either way (KIP-360: it
        // asks InitProducerId again), where a fatal code would fail a legitimate producer.
        return Outcome::Failed(
            ResponseError::UnknownProducerId,
            Some(format!(
                "producer id {pid} is not known to this broker (never handed out, or newer than its metadata)"
            )),
        );
    }
    if let Err(e) = replica.may_append(acks) {
        return Outcome::Failed(e.produce_code(), None);
    }
    match replica.append(records) {
        Ok(Appended { info, ack }) => {
            if info.duplicate {
                metrics::counter!(m::PRODUCE_DUPLICATES_TOTAL).increment(1);
            } else {
                metrics::counter!(m::PRODUCE_BYTES_TOTAL).increment(records.len() as u64);
            }
            Outcome::Appended {
                base_offset: info.base_offset,
                ack,
                replica,
            }
        }
        Err(AppendError::NotLeader) => Outcome::Failed(ResponseError::NotLeaderOrFollower, None),
        Err(AppendError::Storage(e)) => {
            let code = storage_error_code(&e);
            match code {
                ResponseError::OutOfOrderSequenceNumber => {
                    metrics::counter!(m::PRODUCE_OUT_OF_ORDER_TOTAL).increment(1)
                }
                ResponseError::InvalidProducerEpoch => {
                    metrics::counter!(m::PRODUCE_FENCED_TOTAL).increment(1)
                }
                _ => {}
            }
            if code == ResponseError::KafkaStorageError {
                tracing::error!(topic = %replica.topic, partition = replica.partition, error = %e, "append failed");
            } else {
                tracing::debug!(topic = %replica.topic, partition = replica.partition, error = %e, "append refused");
            }
            Outcome::Failed(code, Some(e.to_string()))
        }
    }
}

/// A producer's batch must hold at least one record and its offset range must match its
/// record count (Kafka rejects it with INVALID_RECORD otherwise). A follower's copy of a
/// compacted batch may have gaps, so storage itself does not require this.
///
/// The producer fields must agree with each other: an idempotent producer's batch (producer
/// id >= 0) carries an epoch and a sequence >= 0, any other batch -1 for all three.
/// Transactional and control batches are refused (transactions are not supported).
fn batch_shape_problem(records: &[u8]) -> Option<String> {
    for (i, b) in keel_protocol::batch::batches(records).enumerate() {
        let Ok(b) = b else {
            return None; // framing errors are storage's to report (CORRUPT_MESSAGE)
        };
        let h = &b.header;
        let (count, delta) = (h.records_count(), h.last_offset_delta());
        if count < 1 || i64::from(delta) != i64::from(count) - 1 {
            return Some(format!(
                "batch {i}: {count} records but last offset delta {delta}"
            ));
        }
        if h.is_transactional() || h.is_control() {
            return Some(format!(
                "batch {i}: transactional and control batches are not supported"
            ));
        }
        let (pid, epoch, seq) = (h.producer_id(), h.producer_epoch(), h.base_sequence());
        let agree = if pid >= 0 {
            epoch >= 0 && seq >= 0
        } else {
            pid == -1 && epoch == -1 && seq == -1
        };
        if !agree {
            return Some(format!(
                "batch {i}: producer id {pid}, epoch {epoch} and base sequence {seq} disagree"
            ));
        }
    }
    None
}

/// A producer id in `records` that no broker of this cluster handed out as far as this
/// broker's metadata shows (ids below `issued_below` were).
fn unissued_producer(records: &[u8], issued_below: i64) -> Option<i64> {
    keel_protocol::batch::batches(records)
        .map_while(Result::ok)
        .map(|b| b.header.producer_id())
        .find(|&pid| pid >= issued_below)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize) -> Vec<u8> {
        keel_protocol::encode::values_batch(std::iter::repeat_n("v", n), 0).to_vec()
    }

    #[test]
    fn offset_range_must_match_the_record_count() {
        assert_eq!(batch_shape_problem(&batch(3)), None);
        let mut bad = batch(3);
        bad[23..27].copy_from_slice(&1_000_000i32.to_be_bytes()); // lastOffsetDelta
        assert!(batch_shape_problem(&bad).unwrap().contains("3 records"));
        let mut empty = batch(1);
        empty[57..61].copy_from_slice(&0i32.to_be_bytes()); // recordsCount
        assert!(batch_shape_problem(&empty).is_some());
    }
}
