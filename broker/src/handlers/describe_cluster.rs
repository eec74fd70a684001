//! DescribeCluster (v0–v1): the cluster id, the controller id clients are told (see
//! [`super::metadata::controller_id`]) and the unfenced brokers. Asking a broker for the
//! controllers' endpoints (v1 endpoint type 2) is refused, as Kafka's brokers do.

use super::{Ctx, Reply};
use kafka_protocol::messages::describe_cluster_request::DescribeClusterRequest;
use kafka_protocol::messages::describe_cluster_response::{
    DescribeClusterBroker, DescribeClusterResponse,
};
use kafka_protocol::messages::BrokerId;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

/// `endpoint_type` of brokers (the default).
const BROKERS: i8 = 1;

pub(crate) fn handle(ctx: &Ctx, req: DescribeClusterRequest) -> Reply {
    let rt = &ctx.shared.broker;
    let image = rt.image();
    let resp = DescribeClusterResponse::default()
        .with_endpoint_type(BROKERS)
        .with_cluster_id(StrBytes::from_string(ctx.shared.config.cluster_id.clone()))
        .with_cluster_authorized_operations(i32::MIN);
    if ctx.version >= 1 && req.endpoint_type != BROKERS {
        return ctx.now(
            resp.with_error_code(ResponseError::UnsupportedEndpointType.code())
                .with_error_message(Some(StrBytes::from_static_str(
                    "brokers describe brokers; ask a controller listener for controllers",
                ))),
        );
    }
    let brokers = image
        .unfenced_brokers()
        .map(|b| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(b.id))
                .with_host(StrBytes::from_string(b.host.clone()))
                .with_port(b.port)
        })
        .collect();
    ctx.now(
        resp.with_controller_id(BrokerId(super::metadata::controller_id(rt, &image)))
            .with_brokers(brokers),
    )
}
