//! FindCoordinator (v0–v6): a group's coordinator is the leader of its `__consumer_offsets`
//! partition; the first request creates that topic. Transaction coordinators are refused
//! (Keel has no transactions).

use super::{Ctx, Reply};
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::find_coordinator_response::{Coordinator, FindCoordinatorResponse};
use kafka_protocol::messages::BrokerId;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

const GROUP: i8 = 0;
const TRANSACTION: i8 = 1;

pub(crate) fn handle(ctx: &Ctx, req: FindCoordinatorRequest) -> Reply {
    let keys: Vec<StrBytes> = if ctx.version >= 4 {
        req.coordinator_keys
    } else {
        vec![req.key]
    };
    let found: Vec<Coordinator> = keys
        .into_iter()
        .map(|key| find(ctx, req.key_type, key))
        .collect();
    let response = if ctx.version >= 4 {
        FindCoordinatorResponse::default().with_coordinators(found)
    } else {
        let c = found.into_iter().next().unwrap_or_default();
        let r = FindCoordinatorResponse::default()
            .with_error_code(c.error_code)
            .with_node_id(c.node_id)
            .with_host(c.host)
            .with_port(c.port);
        if ctx.version >= 1 {
            r.with_error_message(c.error_message)
        } else {
            r
        }
    };
    ctx.now(response)
}

fn find(ctx: &Ctx, key_type: i8, key: StrBytes) -> Coordinator {
    let none = Coordinator::default()
        .with_key(key.clone())
        .with_node_id(BrokerId(-1))
        .with_port(-1);
    let refuse = |e: ResponseError, message: &'static str| {
        none.clone()
            .with_error_code(e.code())
            .with_error_message(Some(StrBytes::from_static_str(message)))
    };
    match key_type {
        GROUP => {}
        TRANSACTION => {
            return refuse(
                ResponseError::TransactionalIdAuthorizationFailed,
                "transactions are not supported",
            )
        }
        _ => {
            return refuse(
                ResponseError::InvalidRequest,
                "unknown coordinator key type",
            )
        }
    }
    let groups = &ctx.shared.groups;
    if !groups.valid_group_id(&key) {
        return refuse(ResponseError::InvalidGroupId, "empty or over-long group id");
    }
    match groups.find(&key) {
        Ok((id, host, port)) => none
            .with_node_id(BrokerId(id))
            .with_host(StrBytes::from_string(host))
            .with_port(port),
        Err(e) => none.with_error_code(e.code()),
    }
}
