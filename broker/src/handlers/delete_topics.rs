//! DeleteTopics: by name (v1–v5) or by name or id (v6).

use super::{Ctx, Reply};
use kafka_protocol::messages::delete_topics_request::DeleteTopicsRequest;
use kafka_protocol::messages::delete_topics_response::{
    DeletableTopicResult, DeleteTopicsResponse,
};
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

pub fn handle(ctx: &Ctx, req: DeleteTopicsRequest) -> Reply {
    if ctx.shared.cluster.is_some() {
        return super::forward_to_controller::<DeleteTopicsRequest>(ctx, req);
    }
    let topics = &ctx.shared.topics;
    let mut wanted: Vec<(Option<TopicName>, uuid::Uuid)> = req
        .topic_names
        .into_iter()
        .map(|n| (Some(n), uuid::Uuid::nil()))
        .collect();
    wanted.extend(req.topics.into_iter().map(|t| (t.name, t.topic_id)));
    let responses = wanted
        .into_iter()
        .map(|(name, id)| {
            let name = name.map(|n| n.0.to_string()).or_else(|| {
                topics
                    .all()
                    .into_iter()
                    .find(|t| t.meta.id == id)
                    .map(|t| t.meta.name.clone())
            });
            let result = DeletableTopicResult::default()
                .with_name(name.clone().map(|n| TopicName(StrBytes::from_string(n))))
                .with_topic_id(id);
            let Some(name) = name else {
                return result.with_error_code(ResponseError::UnknownTopicId.code());
            };
            match topics.delete(&name) {
                Ok(true) => result,
                Ok(false) => result.with_error_code(ResponseError::UnknownTopicOrPartition.code()),
                Err(e) => {
                    tracing::error!(topic = %name, error = %e, "deleting topic failed");
                    result
                        .with_error_code(ResponseError::KafkaStorageError.code())
                        .with_error_message(Some(StrBytes::from_string(e.to_string())))
                }
            }
        })
        .collect();
    ctx.now(DeleteTopicsResponse::default().with_responses(responses))
}
