//! DeleteGroups (v0–v2): empty groups only; their offsets and metadata get tombstones.

use super::{Ctx, Reply};
use kafka_protocol::messages::delete_groups_request::DeleteGroupsRequest;
use kafka_protocol::messages::delete_groups_response::{
    DeletableGroupResult, DeleteGroupsResponse,
};
use kafka_protocol::ResponseError;

pub(crate) fn handle(ctx: &Ctx, req: DeleteGroupsRequest) -> Reply {
    let ctx = ctx.clone();
    Box::pin(async move {
        let groups = ctx.shared.groups.clone();
        let mut results = Vec::with_capacity(req.groups_names.len());
        for id in req.groups_names {
            let code = if groups.valid_group_id(&id) {
                groups.delete_group(&id).await.err().map_or(0, |e| e.code())
            } else {
                ResponseError::InvalidGroupId.code()
            };
            results.push(
                DeletableGroupResult::default()
                    .with_group_id(id)
                    .with_error_code(code),
            );
        }
        ctx.encode(&DeleteGroupsResponse::default().with_results(results), &[])
    })
}
