//! OffsetFetch (v1–v9): committed offsets of one group (v1–v7) or several (v8+); -1 where
//! nothing is committed. Keel has no transactions, so `require_stable` never has to wait.

use super::{Ctx, Reply};
use crate::group::records::CommittedOffset;
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequest;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponse, OffsetFetchResponseGroup, OffsetFetchResponsePartition,
    OffsetFetchResponsePartitions, OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{GroupId, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use std::collections::BTreeMap;

type Found = Result<Vec<(String, i32, Option<CommittedOffset>)>, ResponseError>;

pub(crate) fn handle(ctx: &Ctx, req: OffsetFetchRequest) -> Reply {
    let groups = &ctx.shared.groups;
    let fetch = |group: &str, topics: Option<Vec<(String, Vec<i32>)>>| -> Found {
        if !groups.valid_group_id(group) {
            return Err(ResponseError::InvalidGroupId);
        }
        groups.fetch_offsets(group, topics)
    };
    if ctx.version >= 8 {
        let out = req
            .groups
            .iter()
            .map(|g| {
                let topics = g.topics.as_ref().map(|ts| {
                    ts.iter()
                        .map(|t| (t.name.to_string(), t.partition_indexes.clone()))
                        .collect()
                });
                group_v8(g.group_id.clone(), fetch(&g.group_id, topics))
            })
            .collect();
        return ctx.now(OffsetFetchResponse::default().with_groups(out));
    }
    let topics = req.topics.as_ref().map(|ts| {
        ts.iter()
            .map(|t| (t.name.to_string(), t.partition_indexes.clone()))
            .collect()
    });
    let resp = match fetch(&req.group_id, topics) {
        Ok(found) => {
            let mut by_topic: BTreeMap<String, Vec<OffsetFetchResponsePartition>> = BTreeMap::new();
            for (t, p, c) in found {
                let (offset, epoch, meta) = fields(c);
                by_topic.entry(t).or_default().push(
                    OffsetFetchResponsePartition::default()
                        .with_partition_index(p)
                        .with_committed_offset(offset)
                        .with_committed_leader_epoch(epoch)
                        .with_metadata(meta),
                );
            }
            OffsetFetchResponse::default().with_topics(
                by_topic
                    .into_iter()
                    .map(|(t, parts)| {
                        OffsetFetchResponseTopic::default()
                            .with_name(TopicName(StrBytes::from_string(t)))
                            .with_partitions(parts)
                    })
                    .collect(),
            )
        }
        Err(e) => {
            // v1 has no group error code: every requested partition carries it.
            let topics = req
                .topics
                .unwrap_or_default()
                .into_iter()
                .map(|t| {
                    OffsetFetchResponseTopic::default()
                        .with_name(t.name)
                        .with_partitions(
                            t.partition_indexes
                                .into_iter()
                                .map(|p| {
                                    OffsetFetchResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(-1)
                                        .with_committed_leader_epoch(-1)
                                        .with_error_code(e.code())
                                })
                                .collect(),
                        )
                })
                .collect();
            OffsetFetchResponse::default()
                .with_error_code(e.code())
                .with_topics(topics)
        }
    };
    ctx.now(resp)
}

fn fields(c: Option<CommittedOffset>) -> (i64, i32, Option<StrBytes>) {
    match c {
        Some(c) => (
            c.offset,
            c.leader_epoch,
            Some(StrBytes::from_string(c.metadata)),
        ),
        None => (-1, -1, Some(StrBytes::default())),
    }
}

fn group_v8(id: GroupId, found: Found) -> OffsetFetchResponseGroup {
    match found {
        Err(e) => OffsetFetchResponseGroup::default()
            .with_group_id(id)
            .with_error_code(e.code()),
        Ok(found) => {
            let mut by_topic: BTreeMap<String, Vec<OffsetFetchResponsePartitions>> =
                BTreeMap::new();
            for (t, p, c) in found {
                let (offset, epoch, meta) = fields(c);
                by_topic.entry(t).or_default().push(
                    OffsetFetchResponsePartitions::default()
                        .with_partition_index(p)
                        .with_committed_offset(offset)
                        .with_committed_leader_epoch(epoch)
                        .with_metadata(meta),
                );
            }
            OffsetFetchResponseGroup::default()
                .with_group_id(id)
                .with_topics(
                    by_topic
                        .into_iter()
                        .map(|(t, parts)| {
                            OffsetFetchResponseTopics::default()
                                .with_name(TopicName(StrBytes::from_string(t)))
                                .with_partitions(parts)
                        })
                        .collect(),
                )
        }
    }
}
