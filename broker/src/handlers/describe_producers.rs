//! DescribeProducers (v0): the idempotent producers a partition's leader keeps state for:
//! id, epoch, last sequence and the timestamp of its last batch.

use super::{Ctx, Reply};
use kafka_protocol::messages::describe_producers_request::DescribeProducersRequest;
use kafka_protocol::messages::describe_producers_response::{
    DescribeProducersResponse, PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::ProducerId;

pub(crate) fn handle(ctx: &Ctx, req: DescribeProducersRequest) -> Reply {
    let topics = &ctx.shared.topics;
    let responses = req
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partition_indexes
                .iter()
                .map(|&p| {
                    let out = PartitionResponse::default().with_partition_index(p);
                    let replica = match topics.leader(&t.name, p) {
                        Ok(r) => r,
                        Err(e) => return out.with_error_code(e.code()),
                    };
                    let active = replica
                        .log()
                        .producers()
                        .into_iter()
                        .map(|(id, e)| {
                            let last = e.last();
                            ProducerState::default()
                                .with_producer_id(ProducerId(id))
                                .with_producer_epoch(i32::from(e.epoch))
                                .with_last_sequence(last.map_or(-1, |b| b.last_seq))
                                .with_last_timestamp(last.map_or(-1, |b| b.timestamp))
                                .with_coordinator_epoch(-1)
                                .with_current_txn_start_offset(-1)
                        })
                        .collect();
                    out.with_active_producers(active)
                })
                .collect();
            TopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    ctx.now(DescribeProducersResponse::default().with_topics(responses))
}
