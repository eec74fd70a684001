//! DescribeConfigs for topics (effective values, and whether each is the topic's own
//! setting or the broker default) and, briefly, for this broker.

use super::{Ctx, Reply};
use crate::handlers::Shared;
use crate::topic_config::{topic_log_config, TOPIC_CONFIG_KEYS};
use kafka_protocol::messages::describe_configs_request::{
    DescribeConfigsRequest, DescribeConfigsResource,
};
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResponse, DescribeConfigsResult,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const SOURCE_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;
const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;
const TYPE_LIST: i8 = 7;

pub(crate) fn handle(ctx: &Ctx, req: DescribeConfigsRequest) -> Reply {
    let results = req
        .resources
        .iter()
        .map(|r| describe(&ctx.shared, r))
        .collect();
    ctx.now(DescribeConfigsResponse::default().with_results(results))
}

fn describe(shared: &Shared, r: &DescribeConfigsResource) -> DescribeConfigsResult {
    let result = DescribeConfigsResult::default()
        .with_resource_type(r.resource_type)
        .with_resource_name(r.resource_name.clone());
    let entries = match r.resource_type {
        RESOURCE_TOPIC => match topic_entries(shared, &r.resource_name) {
            Some(e) => e,
            None => return result.with_error_code(ResponseError::UnknownTopicOrPartition.code()),
        },
        RESOURCE_BROKER => {
            let c = &shared.config;
            vec![
                (
                    "node.id",
                    c.node_id.to_string(),
                    SOURCE_STATIC_BROKER,
                    TYPE_INT,
                ),
                (
                    "log.dirs",
                    c.data_dir.display().to_string(),
                    SOURCE_STATIC_BROKER,
                    TYPE_STRING,
                ),
                (
                    "auto.create.topics.enable",
                    c.auto_create_topics.to_string(),
                    SOURCE_STATIC_BROKER,
                    1,
                ),
                (
                    "num.partitions",
                    c.num_partitions.to_string(),
                    SOURCE_STATIC_BROKER,
                    TYPE_INT,
                ),
                (
                    "min.insync.replicas",
                    c.min_insync_replicas.to_string(),
                    SOURCE_STATIC_BROKER,
                    TYPE_INT,
                ),
            ]
        }
        _ => {
            return result
                .with_error_code(ResponseError::InvalidRequest.code())
                .with_error_message(Some(StrBytes::from_static_str("unsupported resource type")))
        }
    };
    // Kafka treats an empty key list like a null one: everything.
    let keys = r.configuration_keys.as_ref().filter(|k| !k.is_empty());
    let configs = entries
        .into_iter()
        .filter(|(k, ..)| keys.is_none_or(|keys| keys.iter().any(|x| x.as_str() == *k)))
        .map(|(k, v, source, config_type)| {
            DescribeConfigsResourceResult::default()
                .with_name(StrBytes::from_static_str(k))
                .with_value(Some(StrBytes::from_string(v)))
                .with_config_source(source)
                .with_config_type(config_type)
                .with_read_only(source != SOURCE_TOPIC && r.resource_type == RESOURCE_BROKER)
        })
        .collect();
    result.with_configs(configs)
}

type Entry = (&'static str, String, i8, i8);

fn topic_entries(shared: &Shared, name: &str) -> Option<Vec<Entry>> {
    // From the metadata image: every broker knows every topic's configs, not only the
    // brokers holding one of its replicas.
    let image = shared.broker.image();
    let own = &image.topic(name)?.configs;
    let log = topic_log_config(&shared.config.log, own).ok()?;
    let limit = |v: Option<u64>| v.map_or(-1, |v| v as i64).to_string();
    Some(
        TOPIC_CONFIG_KEYS
            .iter()
            .map(|&k| {
                let (value, config_type) = match k {
                    "cleanup.policy" => (
                        if log.compact { "compact" } else { "delete" }.to_string(),
                        TYPE_LIST,
                    ),
                    "retention.ms" => (limit(log.retention_ms), TYPE_LONG),
                    "retention.bytes" => (limit(log.retention_bytes), TYPE_LONG),
                    "segment.bytes" => (log.segment_bytes.to_string(), TYPE_INT),
                    "segment.ms" => (limit(log.segment_ms), TYPE_LONG),
                    "max.message.bytes" => (log.max_batch_bytes.to_string(), TYPE_INT),
                    "min.insync.replicas" => (
                        own.get(k)
                            .cloned()
                            .unwrap_or_else(|| shared.config.min_insync_replicas.to_string()),
                        TYPE_INT,
                    ),
                    _ => (String::new(), TYPE_STRING),
                };
                let source = if own.contains_key(k) {
                    SOURCE_TOPIC
                } else {
                    SOURCE_DEFAULT
                };
                (k, value, source, config_type)
            })
            .collect(),
    )
}
