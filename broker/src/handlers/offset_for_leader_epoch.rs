//! OffsetForLeaderEpoch: the end offset of a leader epoch in this replica's log, used by
//! consumers to detect truncation (KIP-320) and by followers to find where their log and
//! the leader's diverge (KIP-101).

use super::{Ctx, Reply};
use kafka_protocol::messages::offset_for_leader_epoch_request::OffsetForLeaderEpochRequest;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderEpochResponse, OffsetForLeaderTopicResult,
};
use kafka_protocol::ResponseError;

/// UNDEFINED_EPOCH and UNDEFINED_EPOCH_OFFSET.
const UNDEFINED: (i32, i64) = (-1, -1);

pub(crate) fn handle(ctx: &Ctx, req: OffsetForLeaderEpochRequest) -> Reply {
    let topics = &ctx.shared.topics;
    let results = req
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let r = EpochEndOffset::default()
                        .with_partition(p.partition)
                        .with_leader_epoch(UNDEFINED.0)
                        .with_end_offset(UNDEFINED.1);
                    let replica = match topics.leader(&t.topic, p.partition) {
                        Ok(replica) => replica,
                        Err(e) => return r.with_error_code(e.code()),
                    };
                    let ours = replica.leader_epoch();
                    if p.current_leader_epoch >= 0 && p.current_leader_epoch < ours {
                        return r.with_error_code(ResponseError::FencedLeaderEpoch.code());
                    }
                    if p.current_leader_epoch > ours {
                        return r.with_error_code(ResponseError::UnknownLeaderEpoch.code());
                    }
                    let (epoch, end) = replica
                        .log()
                        .end_offset_for_epoch(p.leader_epoch)
                        .unwrap_or(UNDEFINED);
                    r.with_leader_epoch(epoch).with_end_offset(end)
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(partitions)
        })
        .collect();
    ctx.now(OffsetForLeaderEpochResponse::default().with_topics(results))
}
