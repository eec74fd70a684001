//! FindCoordinator: Keel has no group or transaction coordinator yet, so every key gets
//! COORDINATOR_NOT_AVAILABLE (retriable). The API is advertised because librdkafka
//! before 2.11 uses its presence to enable lz4 (see `keel_protocol::api`).

use super::{Ctx, Reply};
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::find_coordinator_response::{Coordinator, FindCoordinatorResponse};
use kafka_protocol::messages::BrokerId;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

pub(crate) fn handle(ctx: &Ctx, req: FindCoordinatorRequest) -> Reply {
    let code = ResponseError::CoordinatorNotAvailable.code();
    let message = || {
        Some(StrBytes::from_static_str(
            "keel has no group coordinator yet",
        ))
    };
    let response = if ctx.version >= 4 {
        FindCoordinatorResponse::default().with_coordinators(
            req.coordinator_keys
                .into_iter()
                .map(|key| {
                    Coordinator::default()
                        .with_key(key)
                        .with_node_id(BrokerId(-1))
                        .with_port(-1)
                        .with_error_code(code)
                        .with_error_message(message())
                })
                .collect(),
        )
    } else {
        let r = FindCoordinatorResponse::default()
            .with_error_code(code)
            .with_node_id(BrokerId(-1))
            .with_port(-1);
        if ctx.version >= 1 {
            r.with_error_message(message())
        } else {
            r
        }
    };
    ctx.now(response)
}
