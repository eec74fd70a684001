//! ListGroups (v0–v5): the groups this broker coordinates (clients ask every broker),
//! filtered by state (v4+) and type (v5+; every Keel group is `classic`).

use super::{Ctx, Reply};
use kafka_protocol::messages::list_groups_request::ListGroupsRequest;
use kafka_protocol::messages::list_groups_response::{ListGroupsResponse, ListedGroup};
use kafka_protocol::messages::GroupId;
use kafka_protocol::protocol::StrBytes;

pub(crate) fn handle(ctx: &Ctx, req: ListGroupsRequest) -> Reply {
    let listed = match ctx.shared.groups.list() {
        Ok(l) => l,
        Err(e) => return ctx.now(ListGroupsResponse::default().with_error_code(e.code())),
    };
    let states: Vec<String> = req
        .states_filter
        .iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let types: Vec<String> = req
        .types_filter
        .iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let groups = listed
        .into_iter()
        .filter(|g| states.is_empty() || states.contains(&g.state.name().to_ascii_lowercase()))
        .filter(|_| types.is_empty() || types.iter().any(|t| t == "classic"))
        .map(|g| {
            ListedGroup::default()
                .with_group_id(GroupId(StrBytes::from_string(g.group_id)))
                .with_protocol_type(StrBytes::from_string(g.protocol_type))
                .with_group_state(StrBytes::from_static_str(g.state.name()))
                .with_group_type(StrBytes::from_static_str("classic"))
        })
        .collect();
    ctx.now(ListGroupsResponse::default().with_groups(groups))
}
