//! `ReplicaState`: Keel's own request on the Kafka listener, answered by every broker about
//! the partition replicas it holds. `keel check` sends it to each broker directly (not only
//! to leaders) to compare replicas.
//!
//! Wire format: a Kafka request frame with API key [`REPLICA_STATE_KEY`], version 0, request
//! header v1 (no tagged fields); the body is one Kafka `BYTES` field (i32 length + bytes)
//! holding a JSON document: a [`StateQuery`] in the request, a [`BrokerState`] in the
//! response (response header v0). JSON keeps the API easy to read with any tool and to extend;
//! the payload is small next to the logs it describes.
//!
//! The key is not advertised in ApiVersions, so Kafka clients never see it; a Keel broker
//! that predates it closes the connection (an unknown API key), which `keel check` reports.
//!
//! A query asks for every replica's state (optionally only some topics) and, for the ranges it
//! names (several per partition if need be), a [`RangeDigest`] of the record batches: two
//! replicas with the same history over a range have the same batches, byte for byte, so the
//! same digest.

use anyhow::Context;
use bytes::Bytes;
use kafka_protocol::protocol::Request;
use serde::{Deserialize, Serialize};

/// The API key of `ReplicaState`: far above Kafka's own keys.
pub const REPLICA_STATE_KEY: i16 = 32_100;

/// What `keel check` asks a broker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateQuery {
    /// Only these topics; all when empty.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Digests to compute over these ranges (replicas this broker does not hold are skipped).
    #[serde(default)]
    pub digests: Vec<DigestRange>,
}

/// A half-open offset range of one partition: batches with base offset >= `from` and last
/// offset < `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestRange {
    pub topic: String,
    pub partition: i32,
    pub from: i64,
    pub to: i64,
}

/// A broker's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerState {
    pub broker_id: i32,
    pub replicas: Vec<ReplicaState>,
}

/// One partition replica as its broker sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaState {
    pub topic: String,
    pub partition: i32,
    /// The leader this replica knows, -1 for none.
    pub leader: i32,
    pub leader_epoch: i32,
    pub is_leader: bool,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub log_start: i64,
    pub leo: i64,
    pub hw: i64,
    /// The leader-epoch cache: (epoch, start offset), oldest first.
    pub epochs: Vec<(i32, i64)>,
    /// On the leader: each follower's LEO as of its last fetch (-1 before one).
    #[serde(default)]
    pub follower_leos: Vec<(i32, i64)>,
    /// One per range the query asked for on this partition.
    #[serde(default)]
    pub digests: Vec<RangeDigest>,
    /// Why a digest could not be computed.
    #[serde(default)]
    pub error: Option<String>,
}

/// The digest of a replica's batches over a [`DigestRange`], as the storage crate's
/// `Log::digest` computes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeDigest {
    /// As requested.
    pub from: i64,
    /// As requested.
    pub to: i64,
    /// Batches covered.
    pub batches: u64,
    /// Bytes of the covered batches.
    pub bytes: u64,
    /// Base offset of the first covered batch.
    #[serde(default)]
    pub first_offset: Option<i64>,
    /// Last offset + 1 of the last covered batch.
    #[serde(default)]
    pub end_offset: Option<i64>,
    /// CRC-32C chained (`crc32c_append`, starting from 0) over every covered batch's full
    /// bytes, header included; 0 if none is covered.
    pub crc32c: u32,
    /// Base offset of the first covered batch whose stored CRC does not match its bytes, or the
    /// offset where a batch could not be read (the offset after the last good batch; then the
    /// walk stopped there, and this may lie below `from` when the unreadable batch sits between
    /// the index entry the walk started from and `from`).
    pub corrupt_batch: Option<i64>,
}

impl RangeDigest {
    /// An empty digest of `[from, to)`: what a range that covers no batch gives.
    pub fn empty(from: i64, to: i64) -> Self {
        RangeDigest {
            from,
            to,
            ..RangeDigest::default()
        }
    }
}

/// Queries and states are plain data (numbers, strings, lists, no maps with non-string keys):
/// serialising them cannot fail.
const PLAIN_DATA: &str = "replica states are plain data and always serialise";

/// The request: a [`StateQuery`] as JSON.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplicaStateRequest {
    pub json: Bytes,
}

/// The response: a [`BrokerState`] as JSON.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplicaStateResponse {
    pub json: Bytes,
}

impl ReplicaStateRequest {
    pub fn new(query: &StateQuery) -> Self {
        Self {
            json: Bytes::from(serde_json::to_vec(query).expect(PLAIN_DATA)),
        }
    }

    pub fn query(&self) -> anyhow::Result<StateQuery> {
        serde_json::from_slice(&self.json).context("ReplicaState request is not a StateQuery")
    }
}

impl ReplicaStateResponse {
    pub fn new(state: &BrokerState) -> Self {
        Self {
            json: Bytes::from(serde_json::to_vec(state).expect(PLAIN_DATA)),
        }
    }

    pub fn state(&self) -> anyhow::Result<BrokerState> {
        serde_json::from_slice(&self.json).context("ReplicaState response is not a BrokerState")
    }
}

crate::bytes_message!(ReplicaStateRequest, json, "ReplicaState", 1);
crate::bytes_message!(ReplicaStateResponse, json, "ReplicaState", 0);

impl Request for ReplicaStateRequest {
    const KEY: i16 = REPLICA_STATE_KEY;
    type Response = ReplicaStateResponse;
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::protocol::{Decodable, Encodable};

    #[test]
    fn query_and_state_round_trip() {
        let query = StateQuery {
            topics: vec!["t".into()],
            digests: vec![DigestRange {
                topic: "t".into(),
                partition: 2,
                from: 10,
                to: 20,
            }],
        };
        let mut buf = BytesMut::new();
        ReplicaStateRequest::new(&query)
            .encode(&mut buf, 0)
            .unwrap();
        let back = ReplicaStateRequest::decode(&mut buf.freeze(), 0).unwrap();
        assert_eq!(back.query().unwrap(), query);

        let state = BrokerState {
            broker_id: 3,
            replicas: vec![ReplicaState {
                topic: "t".into(),
                partition: 2,
                epochs: vec![(0, 0), (4, 17)],
                digests: vec![RangeDigest {
                    crc32c: 7,
                    corrupt_batch: Some(12),
                    ..RangeDigest::default()
                }],
                ..ReplicaState::default()
            }],
        };
        let mut buf = BytesMut::new();
        ReplicaStateResponse::new(&state)
            .encode(&mut buf, 0)
            .unwrap();
        let back = ReplicaStateResponse::decode(&mut buf.freeze(), 0).unwrap();
        assert_eq!(back.state().unwrap(), state);
    }

    #[test]
    fn bad_bodies_are_errors() {
        let short = Bytes::from_static(&[0, 0, 0, 9, b'{']);
        assert!(ReplicaStateRequest::decode(&mut short.clone(), 0).is_err());
        assert!(ReplicaStateRequest::decode(&mut Bytes::new(), 0).is_err());
        let neg = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff]);
        assert!(ReplicaStateRequest::decode(&mut neg.clone(), 0).is_err());
        let not_json = ReplicaStateRequest {
            json: Bytes::from_static(b"[1,2"),
        };
        assert!(not_json.query().is_err());
        let mut buf = BytesMut::new();
        assert!(not_json.encode(&mut buf, 1).is_err(), "only v0 exists");
    }
}
