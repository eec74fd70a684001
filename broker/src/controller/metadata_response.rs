//! Kafka Metadata answers built from a metadata image: the controller listener's, and every
//! broker's.

use super::{MetadataImage, NO_LEADER};
use kafka_protocol::messages::metadata_response::{
    MetadataResponse, MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

/// A Metadata response from `image`: every unfenced broker, and the topics in `wanted`
/// (all when `None`). `controller_id` is what clients are told (-1: none of theirs).
pub(crate) fn metadata_response(
    image: &MetadataImage,
    cluster_id: &str,
    controller_id: i32,
    wanted: Option<&[String]>,
    version: i16,
) -> MetadataResponse {
    let brokers = image
        .unfenced_brokers()
        .map(|b| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.id))
                .with_host(StrBytes::from_string(b.host.clone()))
                .with_port(b.port)
        })
        .collect();
    let describe = |name: &str| -> MetadataResponseTopic {
        let Some(topic) = image.topic(name) else {
            return MetadataResponseTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(name.to_string()))))
                .with_error_code(ResponseError::UnknownTopicOrPartition.code());
        };
        let partitions = topic
            .partitions
            .iter()
            .map(|p| {
                let ids = |v: &[i32]| v.iter().map(|&b| BrokerId(b)).collect::<Vec<_>>();
                let offline: Vec<i32> = p
                    .replicas
                    .iter()
                    .copied()
                    .filter(|&b| !image.is_unfenced(b))
                    .collect();
                let error = if p.leader == NO_LEADER {
                    ResponseError::LeaderNotAvailable.code()
                } else {
                    0
                };
                let r = MetadataResponsePartition::default()
                    .with_error_code(error)
                    .with_partition_index(p.partition)
                    .with_leader_id(BrokerId(p.leader))
                    .with_replica_nodes(ids(&p.replicas))
                    .with_isr_nodes(ids(&p.isr));
                // Fields that do not exist in older versions must keep their defaults.
                let r = if version >= 5 {
                    r.with_offline_replicas(ids(&offline))
                } else {
                    r
                };
                if version >= 7 {
                    r.with_leader_epoch(p.leader_epoch)
                } else {
                    r
                }
            })
            .collect();
        MetadataResponseTopic::default()
            .with_name(Some(TopicName(StrBytes::from_string(topic.name.clone()))))
            .with_topic_id(topic.id)
            .with_is_internal(crate::topic_config::is_internal_topic(&topic.name))
            .with_partitions(partitions)
    };
    let topics = match wanted {
        Some(names) => names.iter().map(|n| describe(n)).collect(),
        None => image.topics().map(|t| describe(&t.name)).collect(),
    };
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(StrBytes::from_string(cluster_id.to_string())))
        .with_controller_id(BrokerId(controller_id))
        .with_topics(topics)
}
