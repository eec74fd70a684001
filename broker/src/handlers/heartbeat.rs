//! Heartbeat (v0–v4): keeps a member's session, and tells it when a rebalance starts.

use super::{Ctx, Reply};
use kafka_protocol::messages::heartbeat_request::HeartbeatRequest;
use kafka_protocol::messages::heartbeat_response::HeartbeatResponse;
use kafka_protocol::ResponseError;

pub(crate) fn handle(ctx: &Ctx, req: HeartbeatRequest) -> Reply {
    let groups = &ctx.shared.groups;
    let result = if groups.valid_group_id(&req.group_id) {
        groups.heartbeat(
            &req.group_id,
            &req.member_id,
            req.group_instance_id.as_deref(),
            req.generation_id,
        )
    } else {
        Err(ResponseError::InvalidGroupId)
    };
    let code = result.err().map_or(0, |e| e.code());
    ctx.now(HeartbeatResponse::default().with_error_code(code))
}
