//! Metadata: the brokers, and the topics asked for (all when the list is null, or empty at
//! v0), from this broker's metadata image. With `auto.create.topics.enable`, unknown topics
//! asked for by name are created through the controller first.

use super::{Ctx, Reply};
use crate::broker::BrokerRuntime;
use crate::controller::{MetadataImage, METADATA_TOPIC};
use crate::topic_config::validate_topic_name;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
use kafka_protocol::messages::metadata_request::MetadataRequest;
use kafka_protocol::messages::metadata_response::{MetadataResponse, MetadataResponseTopic};
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

pub(crate) fn handle(ctx: &Ctx, req: MetadataRequest) -> Reply {
    let rt = ctx.shared.broker.clone();
    let image = rt.image();
    let all = match &req.topics {
        None => true,
        Some(t) => t.is_empty() && ctx.version == 0,
    };
    let mut names = Vec::new();
    let mut unknown_ids = Vec::new();
    for t in req.topics.iter().flatten() {
        match &t.name {
            Some(n) => names.push(n.to_string()),
            None => match image.topic_by_id(t.topic_id) {
                Some(topic) => names.push(topic.name.clone()),
                None => unknown_ids.push(t.topic_id),
            },
        }
    }
    let auto_create =
        ctx.shared.config.auto_create_topics && (ctx.version < 4 || req.allow_auto_topic_creation);
    let missing: Vec<String> = names
        .iter()
        .filter(|n| image.topic(n).is_none())
        .filter(|n| validate_topic_name(n).is_ok() && n.as_str() != METADATA_TOPIC)
        .cloned()
        .collect();
    let rt_for_create = rt.clone();
    let ctx = ctx.clone();
    let answer = move |image: &MetadataImage| {
        let wanted = (!all).then_some(names.as_slice());
        let mut resp = response(&ctx, &rt, image, wanted);
        resp.topics.extend(unknown_ids.iter().map(|&id| {
            MetadataResponseTopic::default()
                .with_topic_id(id)
                .with_error_code(ResponseError::UnknownTopicId.code())
        }));
        ctx.encode(&resp, &[])
    };
    if all || !auto_create || missing.is_empty() {
        return Box::pin(std::future::ready(answer(&image)));
    }
    let rt = rt_for_create;
    Box::pin(async move {
        let req = CreateTopicsRequest::default()
            .with_timeout_ms(30_000)
            .with_topics(
                missing
                    .into_iter()
                    .map(|n| {
                        CreatableTopic::default()
                            .with_name(TopicName(StrBytes::from_string(n)))
                            .with_num_partitions(-1)
                            .with_replication_factor(-1)
                    })
                    .collect(),
            );
        if let Err(e) = crate::broker::create_topics::create_and_settle(&rt, &req).await {
            // The topics stay unknown in the answer; the client asks again.
            tracing::warn!(error = %e, "auto-creating topics failed");
        }
        answer(&rt.image())
    })
}

/// The Metadata answer from `image`: the controller id is the active controller's when it
/// is also a broker clients can reach, else this broker's own (it forwards admin requests).
fn response(
    ctx: &Ctx,
    rt: &BrokerRuntime,
    image: &MetadataImage,
    wanted: Option<&[String]>,
) -> MetadataResponse {
    crate::controller::metadata_response(
        image,
        &ctx.shared.config.cluster_id,
        controller_id(rt, image),
        wanted,
        ctx.version,
    )
}

/// The node id clients are told is the controller (see [`response`]).
pub(crate) fn controller_id(rt: &BrokerRuntime, image: &MetadataImage) -> i32 {
    let active = rt.link.controller_id();
    if image.is_unfenced(active) {
        active
    } else {
        rt.node_id
    }
}
