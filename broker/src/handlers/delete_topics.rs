//! DeleteTopics: forwarded to the controller, which removes the topics from the metadata;
//! every broker then deletes its replicas of them.

use super::{Ctx, Reply};
use kafka_protocol::messages::delete_topics_request::DeleteTopicsRequest;

pub(crate) fn handle(ctx: &Ctx, req: DeleteTopicsRequest) -> Reply {
    super::forward_to_controller::<DeleteTopicsRequest>(ctx, req)
}
