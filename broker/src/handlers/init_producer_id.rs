//! InitProducerId (v0–v5) for idempotent producers: a new producer id at epoch 0, or, when a
//! producer passes the id and epoch it has (v3+, KIP-360: it recovers from a sequence error),
//! the same id at the next epoch. Transactions are not supported.

use super::{Ctx, Reply};
use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::messages::init_producer_id_response::InitProducerIdResponse;
use kafka_protocol::messages::ProducerId;
use kafka_protocol::ResponseError;

pub(crate) fn handle(ctx: &Ctx, req: InitProducerIdRequest) -> Reply {
    let ctx = ctx.clone();
    Box::pin(async move {
        let resp = InitProducerIdResponse::default()
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        match req.transactional_id.as_ref().map(|t| t.is_empty()) {
            None => {}
            // As Kafka: an empty transactional id is a malformed request.
            Some(true) => {
                return ctx.encode(
                    &resp.with_error_code(ResponseError::InvalidRequest.code()),
                    &[],
                )
            }
            // A transactional producer cannot work here; say so at once.
            Some(false) => {
                return ctx.encode(
                    &resp.with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code()),
                    &[],
                )
            }
        }
        let rt = &ctx.shared.broker;
        let (pid, epoch) = (req.producer_id.0, req.producer_epoch);
        if ctx.version >= 3 && pid >= 0 && epoch >= 0 {
            // An id this cluster issued, whose epoch has room: bump it. (An id it never
            // issued, or an exhausted epoch, gets a new id below.)
            if pid < rt.image().next_producer_id() && epoch < i16::MAX - 1 {
                let bumped = resp
                    .with_producer_id(ProducerId(pid))
                    .with_producer_epoch(epoch + 1);
                return ctx.encode(&bumped, &[]);
            }
        }
        let resp = match rt
            .producer_ids
            .next(rt.node_id, &rt.link, &rt.metadata)
            .await
        {
            Ok(id) => resp.with_producer_id(ProducerId(id)).with_producer_epoch(0),
            Err(e) => {
                tracing::warn!(error = %e, "no producer id to hand out");
                // Retriable: the client asks again.
                resp.with_error_code(ResponseError::CoordinatorLoadInProgress.code())
            }
        };
        ctx.encode(&resp, &[])
    })
}
