//! DescribeGroups (v0–v6): state, protocol and members of each group (member metadata and
//! assignments only while the group is Stable, as Kafka). An unknown group is reported Dead
//! (v6+: GROUP_ID_NOT_FOUND).

use super::{Ctx, Reply};
use kafka_protocol::messages::describe_groups_request::DescribeGroupsRequest;
use kafka_protocol::messages::describe_groups_response::{
    DescribeGroupsResponse, DescribedGroup, DescribedGroupMember,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

pub(crate) fn handle(ctx: &Ctx, req: DescribeGroupsRequest) -> Reply {
    let groups = &ctx.shared.groups;
    let described = req
        .groups
        .into_iter()
        .map(|id| {
            let base = DescribedGroup::default()
                .with_group_id(id.clone())
                .with_authorized_operations(i32::MIN);
            if !groups.valid_group_id(&id) {
                return base.with_error_code(ResponseError::InvalidGroupId.code());
            }
            match groups.describe(&id) {
                Err(e) => base.with_error_code(e.code()),
                Ok(None) => {
                    let dead = base.with_group_state(StrBytes::from_static_str("Dead"));
                    if ctx.version >= 6 {
                        dead.with_error_code(ResponseError::GroupIdNotFound.code())
                    } else {
                        dead
                    }
                }
                Ok(Some(d)) => base
                    .with_group_state(StrBytes::from_static_str(d.state.name()))
                    .with_protocol_type(StrBytes::from_string(d.protocol_type))
                    .with_protocol_data(StrBytes::from_string(d.protocol))
                    .with_members(
                        d.members
                            .into_iter()
                            .map(|m| {
                                DescribedGroupMember::default()
                                    .with_member_id(StrBytes::from_string(m.member_id))
                                    .with_group_instance_id(
                                        m.instance_id.map(StrBytes::from_string),
                                    )
                                    .with_client_id(StrBytes::from_string(m.client_id))
                                    .with_client_host(StrBytes::from_string(m.client_host))
                                    .with_member_metadata(m.metadata)
                                    .with_member_assignment(m.assignment)
                            })
                            .collect(),
                    ),
            }
        })
        .collect();
    ctx.now(DescribeGroupsResponse::default().with_groups(described))
}
