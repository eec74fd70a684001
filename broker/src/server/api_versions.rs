//! ApiVersions: the supported key/version table. Default-valued tagged fields are left
//! out (kafka-protocol does so), which older librdkafka needs to parse the response.

use super::reply::{Reply, Responder};
use bytes::BytesMut;
use kafka_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};
use kafka_protocol::messages::ResponseHeader;
use kafka_protocol::protocol::Encodable;
use kafka_protocol::ResponseError;
use keel_protocol::api::ApiSupport;

fn table(apis: &[ApiSupport], error: i16) -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(error)
        .with_api_keys(
            apis.iter()
                .map(|a| {
                    ApiVersion::default()
                        .with_api_key(a.key as i16)
                        .with_min_version(a.min)
                        .with_max_version(a.max)
                })
                .collect(),
        )
}

pub(crate) fn handle(ctx: &Responder, apis: &[ApiSupport]) -> Reply {
    ctx.now(table(apis, 0))
}

/// The answer to an ApiVersions request of a version newer than ours: v0 (header v0),
/// error UNSUPPORTED_VERSION and the table, so the client retries with a version we have.
pub(crate) fn unsupported_version(apis: &[ApiSupport], correlation_id: i32) -> Reply {
    let mut buf = BytesMut::new();
    let encoded = ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut buf, 0)
        .and_then(|()| table(apis, ResponseError::UnsupportedVersion.code()).encode(&mut buf, 0));
    let out = match encoded {
        Ok(()) => Some(vec![buf.freeze()]),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode ApiVersions v0 response");
            None
        }
    };
    Box::pin(std::future::ready(out))
}
