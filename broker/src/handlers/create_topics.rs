//! CreateTopics: forwarded to the controller, which validates and creates each topic;
//! the answer waits until this broker's metadata has the new topics.

use super::{Ctx, Reply};
use crate::broker::controller_link::LinkError;
use crate::broker::create_topics::create_and_settle;
use kafka_protocol::messages::create_topics_request::CreateTopicsRequest;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicResult, CreateTopicsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

pub(crate) fn handle(ctx: &Ctx, req: CreateTopicsRequest) -> Reply {
    let ctx = ctx.clone();
    Box::pin(async move {
        match create_and_settle(&ctx.shared.broker, &req).await {
            Ok(resp) => ctx.encode(&resp, &[]),
            Err(e @ LinkError::NoController { .. }) => {
                // The quorum has no leader: every topic times out, with the reason.
                tracing::warn!(error = %e, "CreateTopics: no active controller");
                ctx.encode(&timed_out(&req, &e.to_string()), &[])
            }
            Err(e) => {
                // No answer is better than a made-up one: the client reconnects and retries.
                tracing::warn!(error = %e, "forwarding CreateTopics to the controller failed");
                super::CLOSE
            }
        }
    })
}

/// REQUEST_TIMED_OUT for every topic of `req`, with `message`.
fn timed_out(req: &CreateTopicsRequest, message: &str) -> CreateTopicsResponse {
    let topics = req
        .topics
        .iter()
        .map(|t| {
            CreatableTopicResult::default()
                .with_name(t.name.clone())
                .with_num_partitions(-1)
                .with_replication_factor(-1)
                .with_error_code(ResponseError::RequestTimedOut.code())
                .with_error_message(Some(StrBytes::from_string(message.to_string())))
        })
        .collect();
    CreateTopicsResponse::default().with_topics(topics)
}
