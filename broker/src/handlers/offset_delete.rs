//! OffsetDelete (v0): deletes a group's committed offsets of topics it does not consume.

use super::{Ctx, Reply};
use kafka_protocol::messages::offset_delete_request::OffsetDeleteRequest;
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponse, OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use std::collections::BTreeMap;

pub(crate) fn handle(ctx: &Ctx, req: OffsetDeleteRequest) -> Reply {
    let ctx = ctx.clone();
    Box::pin(async move {
        let groups = ctx.shared.groups.clone();
        if !groups.valid_group_id(&req.group_id) {
            let resp = OffsetDeleteResponse::default()
                .with_error_code(ResponseError::InvalidGroupId.code());
            return ctx.encode(&resp, &[]);
        }
        let partitions = req
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(move |p| (t.name.to_string(), p.partition_index))
            })
            .collect();
        let resp = match groups.delete_offsets(&req.group_id, partitions).await {
            Err(e) => OffsetDeleteResponse::default().with_error_code(e.code()),
            Ok(results) => {
                let mut by_topic: BTreeMap<String, Vec<OffsetDeleteResponsePartition>> =
                    BTreeMap::new();
                for (t, p, code) in results {
                    by_topic.entry(t).or_default().push(
                        OffsetDeleteResponsePartition::default()
                            .with_partition_index(p)
                            .with_error_code(code),
                    );
                }
                OffsetDeleteResponse::default().with_topics(
                    by_topic
                        .into_iter()
                        .map(|(t, parts)| {
                            OffsetDeleteResponseTopic::default()
                                .with_name(TopicName(StrBytes::from_string(t)))
                                .with_partitions(parts)
                        })
                        .collect(),
                )
            }
        };
        ctx.encode(&resp, &[])
    })
}
