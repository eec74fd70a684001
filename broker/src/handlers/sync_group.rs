//! SyncGroup (v0–v5): the leader's assignment, stored before anyone is answered.

use super::{Ctx, Reply};
use kafka_protocol::messages::sync_group_request::SyncGroupRequest;
use kafka_protocol::messages::sync_group_response::SyncGroupResponse;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

pub(crate) fn handle(ctx: &Ctx, req: SyncGroupRequest) -> Reply {
    let ctx = ctx.clone();
    Box::pin(async move {
        let groups = ctx.shared.groups.clone();
        if !groups.valid_group_id(&req.group_id) {
            let resp =
                SyncGroupResponse::default().with_error_code(ResponseError::InvalidGroupId.code());
            return ctx.encode(&resp, &[]);
        }
        let assignments = req
            .assignments
            .into_iter()
            .map(|a| (a.member_id.to_string(), a.assignment))
            .collect();
        let r = groups
            .sync(
                &req.group_id,
                &req.member_id,
                req.group_instance_id.as_deref(),
                req.generation_id,
                req.protocol_type.as_deref(),
                req.protocol_name.as_deref(),
                assignments,
            )
            .await;
        let resp = SyncGroupResponse::default()
            .with_error_code(r.error)
            .with_protocol_type(r.protocol_type.map(StrBytes::from_string))
            .with_protocol_name(r.protocol.map(StrBytes::from_string))
            .with_assignment(r.assignment);
        ctx.encode(&resp, &[])
    })
}
