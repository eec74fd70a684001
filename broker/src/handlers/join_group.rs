//! JoinGroup (v0–v9): held until the group's join phase ends (see `group::machine`).

use super::{Ctx, Reply};
use crate::group::machine::Join;
use kafka_protocol::messages::join_group_request::JoinGroupRequest;
use kafka_protocol::messages::join_group_response::{JoinGroupResponse, JoinGroupResponseMember};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

/// Largest protocol metadata a member may send, summed over its protocols (a group's
/// metadata record holds every member's, and must fit in a batch).
const MAX_MEMBER_METADATA: usize = 256 << 10;

/// `client_id` and `client_host` are the request's, as DescribeGroups shows them.
pub(crate) fn handle(
    ctx: &Ctx,
    req: JoinGroupRequest,
    client_id: String,
    client_host: String,
) -> Reply {
    let ctx = ctx.clone();
    Box::pin(async move {
        let groups = ctx.shared.groups.clone();
        let error = |e: ResponseError| {
            JoinGroupResponse::default()
                .with_error_code(e.code())
                .with_generation_id(-1)
                .with_member_id(req.member_id.clone())
        };
        if !groups.valid_group_id(&req.group_id) {
            return ctx.encode(&error(ResponseError::InvalidGroupId), &[]);
        }
        let metadata: usize = req.protocols.iter().map(|p| p.metadata.len()).sum();
        if metadata > MAX_MEMBER_METADATA {
            tracing::debug!(group = %req.group_id.0, bytes = metadata, "join group metadata too large");
            return ctx.encode(&error(ResponseError::InvalidRequest), &[]);
        }
        let prefix: String = match &req.group_instance_id {
            Some(i) => i.to_string(),
            None => client_id.clone(),
        }
        .chars()
        .take(200)
        .collect();
        let join = Join {
            member_id: req.member_id.to_string(),
            instance_id: req.group_instance_id.as_ref().map(|s| s.to_string()),
            client_id,
            client_host,
            session_timeout_ms: req.session_timeout_ms,
            // v0 has no rebalance timeout: the session timeout stands in, as in Kafka.
            rebalance_timeout_ms: if ctx.version >= 1 {
                req.rebalance_timeout_ms
            } else {
                req.session_timeout_ms
            },
            protocol_type: req.protocol_type.to_string(),
            protocols: req
                .protocols
                .iter()
                .map(|p| (p.name.to_string(), p.metadata.clone()))
                .collect(),
            require_known_member_id: ctx.version >= 4,
            new_member_id: format!("{prefix}-{}", uuid::Uuid::new_v4()),
        };
        let r = groups.join(&req.group_id, join).await;
        let members = r
            .members
            .into_iter()
            .map(|m| {
                JoinGroupResponseMember::default()
                    .with_member_id(StrBytes::from_string(m.member_id))
                    .with_group_instance_id(m.instance_id.map(StrBytes::from_string))
                    .with_metadata(m.metadata)
            })
            .collect();
        let resp = JoinGroupResponse::default()
            .with_error_code(r.error)
            .with_generation_id(r.generation)
            .with_protocol_type(r.protocol_type.map(StrBytes::from_string))
            .with_protocol_name(Some(StrBytes::from_string(r.protocol.unwrap_or_default())))
            .with_leader(StrBytes::from_string(r.leader))
            .with_skip_assignment(r.skip_assignment && ctx.version >= 9)
            .with_member_id(StrBytes::from_string(r.member_id))
            .with_members(members);
        ctx.encode(&resp, &[])
    })
}
