//! The API keys and version ranges Keel serves, and request-header parsing.
//!
//! Version ranges are capped where a newer version would need a feature Keel does not
//! have yet: Produce v13 addresses topics by id only, Fetch v16+ adds leader endpoints and
//! replica directories, and ListOffsets v7
//! adds the max-timestamp query (-3), which needs a time index scan; Keel serves the
//! versions that still carry topic names. Clients negotiate down through ApiVersions.
//!
//! Two entries exist for client compatibility rather than function, as in Apache Kafka
//! 4.0 (KAFKA-18659): librdkafka before 2.11 enables gzip, snappy and lz4 only if Produce
//! is advertised from v0, and lz4 only if FindCoordinator is advertised at all. So
//! Produce is listed from v0, but v0–v2 (message formats 0 and 1) are refused
//! ([`PRODUCE_MIN_SERVED`]).
//!
//! The group APIs are the classic protocol's, every version kafka-protocol has; KIP-848's
//! ConsumerGroupHeartbeat is not served, so clients use the classic protocol.

use bytes::{Buf, Bytes};
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::Decodable;

/// One supported API: key and inclusive version range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiSupport {
    pub key: ApiKey,
    pub min: i16,
    pub max: i16,
}

const fn api(key: ApiKey, min: i16, max: i16) -> ApiSupport {
    ApiSupport { key, min, max }
}

/// Every API Keel answers, in key order. ApiVersions reports exactly this table.
pub const SUPPORTED_APIS: &[ApiSupport] = &[
    api(ApiKey::Produce, 0, 12),
    api(ApiKey::Fetch, 4, 15),
    api(ApiKey::ListOffsets, 1, 6),
    api(ApiKey::Metadata, 0, 12),
    api(ApiKey::OffsetCommit, 2, 9),
    api(ApiKey::OffsetFetch, 1, 9),
    api(ApiKey::FindCoordinator, 0, 6),
    api(ApiKey::JoinGroup, 0, 9),
    api(ApiKey::Heartbeat, 0, 4),
    api(ApiKey::LeaveGroup, 0, 5),
    api(ApiKey::SyncGroup, 0, 5),
    api(ApiKey::DescribeGroups, 0, 6),
    api(ApiKey::ListGroups, 0, 5),
    api(ApiKey::ApiVersions, 0, 3),
    api(ApiKey::CreateTopics, 2, 7),
    api(ApiKey::DeleteTopics, 1, 6),
    api(ApiKey::InitProducerId, 0, 5),
    api(ApiKey::OffsetForLeaderEpoch, 2, 4),
    api(ApiKey::DescribeConfigs, 1, 4),
    api(ApiKey::DeleteGroups, 0, 2),
    api(ApiKey::OffsetDelete, 0, 0),
    api(ApiKey::DescribeCluster, 0, 1),
    api(ApiKey::DescribeProducers, 0, 0),
];

/// Produce versions below this are advertised (see the module doc) but refused.
pub const PRODUCE_MIN_SERVED: i16 = 3;

/// What a controller listener serves to brokers (and to admin tools).
pub const CONTROLLER_APIS: &[ApiSupport] = &[
    api(ApiKey::Fetch, 4, 15),
    api(ApiKey::Metadata, 0, 12),
    api(ApiKey::ApiVersions, 0, 3),
    api(ApiKey::CreateTopics, 2, 7),
    api(ApiKey::DeleteTopics, 1, 6),
    api(ApiKey::AlterPartition, 2, 3),
    api(ApiKey::FetchSnapshot, 0, 1),
    api(ApiKey::BrokerRegistration, 0, 4),
    api(ApiKey::BrokerHeartbeat, 0, 1),
    api(ApiKey::AllocateProducerIds, 0, 0),
];

/// The supported version range of `key` in `table`, if it is served at all.
pub fn supported(table: &[ApiSupport], key: ApiKey) -> Option<ApiSupport> {
    table.iter().copied().find(|a| a.key == key)
}

/// A request whose header has been parsed; `body` is the rest of the frame, undecoded.
#[derive(Debug)]
pub struct ParsedRequest {
    pub api_key: ApiKey,
    pub header: RequestHeader,
    pub body: Bytes,
}

/// Why a request header was refused. The first three fields of every header are fixed
/// (key, version, correlation id), so they are known even when the rest is not.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("request frame of {0} bytes is too short for a request header")]
    TooShort(usize),
    #[error("unknown api key {api_key} (correlation id {correlation_id})")]
    UnknownApiKey { api_key: i16, correlation_id: i32 },
    #[error("unsupported version {version} of {api_key:?} (supported {min}..={max}, correlation id {correlation_id})")]
    UnsupportedVersion {
        api_key: ApiKey,
        version: i16,
        min: i16,
        max: i16,
        correlation_id: i32,
    },
    #[error("malformed request header for {api_key:?} v{version}: {reason}")]
    Malformed {
        api_key: ApiKey,
        version: i16,
        reason: String,
    },
}

/// Parses the request header at the front of `frame`, checking the key and version
/// against `table` (e.g. [`SUPPORTED_APIS`]) before decoding anything version-dependent.
pub fn parse_request(mut frame: Bytes, table: &[ApiSupport]) -> Result<ParsedRequest, HeaderError> {
    if frame.len() < 8 {
        return Err(HeaderError::TooShort(frame.len()));
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let Some(support) = ApiKey::try_from(raw_key)
        .ok()
        .and_then(|k| supported(table, k))
    else {
        return Err(HeaderError::UnknownApiKey {
            api_key: raw_key,
            correlation_id,
        });
    };
    let api_key = support.key;
    if version < support.min || version > support.max {
        return Err(HeaderError::UnsupportedVersion {
            api_key,
            version,
            min: support.min,
            max: support.max,
            correlation_id,
        });
    }
    let header_version = api_key.request_header_version(version);
    let header =
        RequestHeader::decode(&mut frame, header_version).map_err(|e| HeaderError::Malformed {
            api_key,
            version,
            reason: e.to_string(),
        })?;
    Ok(ParsedRequest {
        api_key,
        header,
        body: frame.copy_to_bytes(frame.remaining()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn header_bytes(key: i16, version: i16, correlation_id: i32) -> Bytes {
        let mut buf = BytesMut::new();
        let header = RequestHeader::default()
            .with_request_api_key(key)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("t")));
        let hv = ApiKey::try_from(key)
            .map(|k| k.request_header_version(version))
            .unwrap_or(1);
        header.encode(&mut buf, hv).unwrap();
        buf.extend_from_slice(b"body");
        buf.freeze()
    }

    #[test]
    fn table_is_sorted_and_within_what_the_codec_supports() {
        for table in [SUPPORTED_APIS, CONTROLLER_APIS] {
            for pair in table.windows(2) {
                assert!((pair[0].key as i16) < (pair[1].key as i16));
            }
        }
        for a in SUPPORTED_APIS.iter().chain(CONTROLLER_APIS) {
            let codec = a.key.valid_versions();
            let min = if a.key == ApiKey::Produce {
                PRODUCE_MIN_SERVED
            } else {
                a.min
            };
            assert!(min >= codec.min && a.max <= codec.max, "{a:?} vs {codec:?}");
        }
    }

    #[test]
    fn parses_supported_requests_and_refuses_the_rest() {
        let cases: &[(i16, i16, Option<&str>)] = &[
            (18, 3, None),                 // ApiVersions v3, flexible header
            (18, 0, None),                 // ApiVersions v0
            (0, 9, None),                  // Produce v9, flexible
            (1, 12, None),                 // Fetch v12
            (18, 99, Some("unsupported")), // ApiVersions v99
            (0, 13, Some("unsupported")),  // Produce v13 (topic ids)
            (9999, 0, Some("unknown")),    // no such key
            (24, 0, Some("unknown")),      // AddPartitionsToTxn: not served
            (8, 2, None),                  // OffsetCommit v2
            (10, 2, None),                 // FindCoordinator v2
            (0, 2, None),                  // Produce v2: advertised, refused by the broker
        ];
        for &(key, version, want_err) in cases {
            let got = parse_request(header_bytes(key, version, 42), SUPPORTED_APIS);
            match (want_err, got) {
                (None, Ok(req)) => {
                    assert_eq!(req.header.correlation_id, 42);
                    assert_eq!(&req.body[..], b"body");
                }
                (
                    Some("unsupported"),
                    Err(HeaderError::UnsupportedVersion { correlation_id, .. }),
                ) => {
                    assert_eq!(correlation_id, 42)
                }
                (Some("unknown"), Err(HeaderError::UnknownApiKey { correlation_id, .. })) => {
                    assert_eq!(correlation_id, 42)
                }
                (want, got) => panic!("key {key} v{version}: wanted {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn short_and_malformed_headers_are_errors_not_panics() {
        assert_eq!(
            parse_request(Bytes::from_static(b"\0\x12\0"), SUPPORTED_APIS).unwrap_err(),
            HeaderError::TooShort(3)
        );
        // ApiVersions v3 header whose client id claims 300 bytes that are not there.
        let bad = Bytes::from_static(&[0, 18, 0, 3, 0, 0, 0, 1, 1, 44, b'x']);
        assert!(matches!(
            parse_request(bad, SUPPORTED_APIS),
            Err(HeaderError::Malformed { .. })
        ));
    }
}
