//! ListOffsets: earliest (-2), latest (-1: the high watermark, which is also the last
//! stable offset as Keel has no transactions; for a follower, replica id >= 0, the log end),
//! or the first offset at/after a timestamp.

use super::{Ctx, Reply};
use crate::error::storage_error_code;
use kafka_protocol::messages::list_offsets_request::ListOffsetsRequest;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::ResponseError;

pub(crate) const LATEST: i64 = -1;
pub(crate) const EARLIEST: i64 = -2;

pub(crate) fn handle(ctx: &Ctx, req: ListOffsetsRequest) -> Reply {
    let topics = &ctx.shared.topics;
    let version = ctx.version;
    let responses = req
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let r = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_timestamp(-1)
                        .with_offset(-1);
                    let replica = match topics.leader(&t.name, p.partition_index) {
                        Ok(replica) => replica,
                        Err(e) => return r.with_error_code(e.code()),
                    };
                    let log = replica.log();
                    // KIP-207: a new leader gives no "latest" (nor anything bounded by the HW)
                    // until its HW has caught up with the previous leader's.
                    let Some(hw) = replica
                        .consumer_high_watermark()
                        .or_else(|| (req.replica_id.0 >= 0).then(|| replica.high_watermark()))
                    else {
                        return r.with_error_code(ResponseError::OffsetNotAvailable.code());
                    };
                    // The field exists from v4; an older response must leave it at -1.
                    let r = if version >= 4 {
                        r.with_leader_epoch(replica.leader_epoch())
                    } else {
                        r
                    };
                    match p.timestamp {
                        // A follower (replica id >= 0) asks for the log end, as in Kafka.
                        LATEST if req.replica_id.0 >= 0 => r.with_offset(log.log_end_offset()),
                        LATEST => r.with_offset(hw),
                        EARLIEST => r.with_offset(log.log_start_offset()),
                        ts if ts >= 0 => match log.offset_for_timestamp(ts) {
                            Ok(Some((offset, found_ts))) if offset < hw => {
                                r.with_offset(offset).with_timestamp(found_ts)
                            }
                            Ok(_) => r,
                            Err(e) => r.with_error_code(storage_error_code(&e).code()),
                        },
                        _ => r.with_error_code(ResponseError::InvalidRequest.code()),
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    ctx.now(ListOffsetsResponse::default().with_topics(responses))
}
