//! CreateTopics: forwarded to the controller, which validates and creates each topic;
//! the answer waits until this broker's metadata has the new topics.

use super::{Ctx, Reply};
use crate::broker::create_topics::create_and_settle;
use kafka_protocol::messages::create_topics_request::CreateTopicsRequest;

pub(crate) fn handle(ctx: &Ctx, req: CreateTopicsRequest) -> Reply {
    let ctx = ctx.clone();
    Box::pin(async move {
        match create_and_settle(&ctx.shared.broker, &req).await {
            Ok(resp) => ctx.encode(&resp, &[]),
            Err(e) => {
                // No answer is better than a made-up one: the client reconnects and retries.
                tracing::warn!(error = %e, "forwarding CreateTopics to the controller failed");
                super::CLOSE
            }
        }
    })
}
