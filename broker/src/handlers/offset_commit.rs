//! OffsetCommit (v2–v9): a group's committed offsets, answered once their record is below
//! the high watermark of the group's offsets partition.

use super::{Ctx, Reply};
use crate::clock::now_ms;
use crate::group::records::CommittedOffset;
use kafka_protocol::messages::offset_commit_request::OffsetCommitRequest;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponse, OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use std::collections::BTreeMap;

pub(crate) fn handle(ctx: &Ctx, req: OffsetCommitRequest) -> Reply {
    let ctx = ctx.clone();
    let groups = ctx.shared.groups.clone();
    let now = now_ms();
    let offsets: Vec<(String, i32, CommittedOffset)> = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(move |p| {
                (
                    t.name.to_string(),
                    p.partition_index,
                    CommittedOffset {
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata: p.committed_metadata.as_deref().unwrap_or("").to_string(),
                        commit_timestamp: now,
                    },
                )
            })
        })
        .collect();
    // Written now, in the connection's request order; only the wait is in the reply.
    let written = groups.valid_group_id(&req.group_id).then(|| {
        groups.commit(
            &req.group_id,
            &req.member_id,
            req.group_instance_id.as_deref(),
            req.generation_id_or_member_epoch,
            offsets.clone(),
        )
    });
    Box::pin(async move {
        let results = match written {
            None => Err(ResponseError::InvalidGroupId),
            Some(written) => written.await,
        };
        let results: Vec<(String, i32, i16)> = match results {
            Ok(r) => r,
            Err(e) => offsets
                .into_iter()
                .map(|(t, p, _)| (t, p, e.code()))
                .collect(),
        };
        let mut by_topic: BTreeMap<String, Vec<OffsetCommitResponsePartition>> = BTreeMap::new();
        for (t, p, code) in results {
            by_topic.entry(t).or_default().push(
                OffsetCommitResponsePartition::default()
                    .with_partition_index(p)
                    .with_error_code(code),
            );
        }
        let topics = by_topic
            .into_iter()
            .map(|(t, parts)| {
                OffsetCommitResponseTopic::default()
                    .with_name(TopicName(StrBytes::from_string(t)))
                    .with_partitions(parts)
            })
            .collect();
        ctx.encode(&OffsetCommitResponse::default().with_topics(topics), &[])
    })
}
