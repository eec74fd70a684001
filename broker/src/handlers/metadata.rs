//! Metadata: this broker, and the topics asked for (all when the list is null, or empty
//! at v0). With `auto.create.topics.enable`, an unknown requested topic is created.

use super::{Ctx, Reply};
use crate::topics::{CreateError, Topic};
use kafka_protocol::messages::metadata_request::MetadataRequest;
use kafka_protocol::messages::metadata_response::{
    MetadataResponse, MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use std::collections::BTreeMap;
use std::sync::Arc;

pub fn handle(ctx: &Ctx, req: MetadataRequest) -> Reply {
    let shared = &ctx.shared;
    if let Some(rt) = &shared.cluster {
        // Cluster mode: the metadata image answers; this broker stands in as the
        // "controller" clients send admin requests to, and forwards them.
        let image = rt.image();
        let wanted: Option<Vec<String>> = match req.topics {
            None => None,
            Some(t) if t.is_empty() && ctx.version == 0 => None,
            Some(t) => Some(
                t.into_iter()
                    .filter_map(|t| match t.name {
                        Some(n) => Some(n.to_string()),
                        None => image.topic_by_id(t.topic_id).map(|x| x.name.clone()),
                    })
                    .collect(),
            ),
        };
        return ctx.now(crate::cluster::metadata_response(
            &image,
            &shared.config.cluster_id,
            shared.config.node_id,
            wanted.as_deref(),
            ctx.version,
        ));
    }
    let node = BrokerId(shared.config.node_id);
    let all = match &req.topics {
        None => true,
        Some(t) => t.is_empty() && ctx.version == 0,
    };
    let topics = if all {
        shared
            .topics
            .all()
            .iter()
            .map(|t| describe(t, node))
            .collect()
    } else {
        let auto_create =
            shared.config.auto_create_topics && (ctx.version < 4 || req.allow_auto_topic_creation);
        req.topics
            .unwrap_or_default()
            .into_iter()
            .map(|t| match t.name {
                Some(name) => by_name(ctx, &name.0, auto_create, node),
                None => match shared
                    .topics
                    .all()
                    .into_iter()
                    .find(|x| x.meta.id == t.topic_id)
                {
                    Some(topic) => describe(&topic, node),
                    None => MetadataResponseTopic::default()
                        .with_topic_id(t.topic_id)
                        .with_error_code(ResponseError::UnknownTopicId.code()),
                },
            })
            .collect()
    };
    let (host, port) = shared.advertised.clone();
    ctx.now(
        MetadataResponse::default()
            .with_brokers(vec![MetadataResponseBroker::default()
                .with_node_id(node)
                .with_host(StrBytes::from_string(host))
                .with_port(port)])
            .with_cluster_id(Some(StrBytes::from_string(
                shared.config.cluster_id.clone(),
            )))
            .with_controller_id(node)
            .with_topics(topics),
    )
}

fn by_name(ctx: &Ctx, name: &StrBytes, auto_create: bool, node: BrokerId) -> MetadataResponseTopic {
    let topics = &ctx.shared.topics;
    if let Some(topic) = topics.get(name) {
        return describe(&topic, node);
    }
    let error = |e: ResponseError| {
        MetadataResponseTopic::default()
            .with_name(Some(TopicName(name.clone())))
            .with_error_code(e.code())
    };
    if !auto_create {
        return error(ResponseError::UnknownTopicOrPartition);
    }
    let config = &ctx.shared.config;
    match topics.create(
        name,
        config.num_partitions,
        config.default_replication_factor,
        BTreeMap::new(),
    ) {
        Ok(topic) => describe(&topic, node),
        // Lost a race with another creator: fine, it exists now.
        Err(CreateError::Exists(_)) => match topics.get(name) {
            Some(topic) => describe(&topic, node),
            None => error(ResponseError::LeaderNotAvailable),
        },
        Err(CreateError::InvalidName { .. }) => error(ResponseError::InvalidTopicException),
        Err(e) => {
            tracing::warn!(topic = %name, error = %e, "auto-creating topic failed");
            error(ResponseError::UnknownTopicOrPartition)
        }
    }
}

fn describe(topic: &Arc<Topic>, node: BrokerId) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(
            topic.meta.name.clone(),
        ))))
        .with_topic_id(topic.meta.id)
        .with_partitions(
            topic
                .replicas
                .iter()
                .map(|r| {
                    MetadataResponsePartition::default()
                        .with_partition_index(r.partition)
                        .with_leader_id(node)
                        .with_leader_epoch(r.leader_epoch())
                        .with_replica_nodes(vec![node])
                        .with_isr_nodes(vec![node])
                })
                .collect(),
        )
}
