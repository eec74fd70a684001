//! LeaveGroup (v0–v5): one member (v0–v2) or a batch of members by id or instance id.

use super::{Ctx, Reply};
use kafka_protocol::messages::leave_group_request::LeaveGroupRequest;
use kafka_protocol::messages::leave_group_response::{LeaveGroupResponse, MemberResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

pub(crate) fn handle(ctx: &Ctx, req: LeaveGroupRequest) -> Reply {
    let groups = &ctx.shared.groups;
    if !groups.valid_group_id(&req.group_id) {
        return ctx.now(
            LeaveGroupResponse::default().with_error_code(ResponseError::InvalidGroupId.code()),
        );
    }
    let members: Vec<(String, Option<String>)> = if ctx.version >= 3 {
        req.members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|s| s.to_string()),
                )
            })
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    let resp = match groups.leave(&req.group_id, &members) {
        Err(e) => LeaveGroupResponse::default().with_error_code(e.code()),
        Ok(results) if ctx.version < 3 => {
            let code = results
                .first()
                .and_then(|r| r.err())
                .map_or(0, |e| e.code());
            LeaveGroupResponse::default().with_error_code(code)
        }
        Ok(results) => LeaveGroupResponse::default().with_members(
            members
                .into_iter()
                .zip(results)
                .map(|((member, instance), r)| {
                    MemberResponse::default()
                        .with_member_id(StrBytes::from_string(member))
                        .with_group_instance_id(instance.map(StrBytes::from_string))
                        .with_error_code(r.err().map_or(0, |e| e.code()))
                })
                .collect(),
        ),
    };
    ctx.now(resp)
}
