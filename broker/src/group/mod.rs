//! The group coordinator (Kafka's classic group protocol): consumer groups whose membership
//! and committed offsets live on the replicated `__consumer_offsets` topic.
//!
//! - [`machine`]: one group's membership as a sans-IO state machine (join, sync, heartbeat,
//!   leave, timers), with table tests.
//! - [`records`]: the records of `__consumer_offsets`, in Kafka's format.
//! - [`placement`]: which offsets partition holds a group (Kafka's rule).
//! - [`state`]: a partition's groups rebuilt from its records; which offsets expire.
//! - [`coordinator`]: the I/O edge: leadership of offsets partitions, loading, acks=all
//!   writes, held responses and the timers.
//!
//! The coordinator of a group is the leader of its offsets partition. Every change is a
//! record in that partition, answered only once it is below the high watermark, so it
//! survives what acknowledged data survives; a new leader loads the partition's groups
//! before it answers for them.

pub(crate) mod coordinator;
pub(crate) mod machine;
pub(crate) mod placement;
pub(crate) mod records;
pub(crate) mod state;

pub(crate) use coordinator::GroupCoordinator;
pub(crate) use records::OFFSETS_TOPIC;

use kafka_protocol::messages::create_topics_request::{
    CreatableTopic, CreatableTopicConfig, CreateTopicsRequest,
};
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;

/// The CreateTopics request for `__consumer_offsets`: compacted (no time or size
/// retention), 100 MiB segments as Kafka's `offsets.topic.segment.bytes`.
pub(crate) fn offsets_topic_request(partitions: i32, rf: i16, min_isr: i16) -> CreateTopicsRequest {
    let configs = [
        ("cleanup.policy", "compact".to_string()),
        ("min.insync.replicas", min_isr.to_string()),
        ("segment.bytes", (100u64 << 20).to_string()),
    ]
    .into_iter()
    .map(|(k, v)| {
        CreatableTopicConfig::default()
            .with_name(StrBytes::from_static_str(k))
            .with_value(Some(StrBytes::from_string(v)))
    })
    .collect();
    let topic = CreatableTopic::default()
        .with_name(TopicName(StrBytes::from_static_str(OFFSETS_TOPIC)))
        .with_num_partitions(partitions)
        .with_replication_factor(rf)
        .with_configs(configs);
    CreateTopicsRequest::default()
        .with_topics(vec![topic])
        .with_timeout_ms(30_000)
}
