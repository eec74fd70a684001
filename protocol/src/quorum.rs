//! The controller quorum's own requests, on the controller listener (not advertised in
//! ApiVersions, like [`crate::replica_state`]):
//!
//! - `RaftMessages` ([`RAFT_MESSAGES_KEY`]): one voter hands another a run of Raft messages.
//!   The body is opaque here (the broker crate frames and encodes the messages); the answer
//!   is empty. Raft retransmits what is lost, so a failed call is simply dropped.
//! - `QuorumState` ([`QUORUM_STATE_KEY`]): what a voter knows of the quorum (term, leader,
//!   commit, each voter's progress as the leader sees it) and, optionally, a digest of its
//!   metadata log over a range, for `keel cluster status` and `keel check`. JSON both ways.

use crate::replica_state::RangeDigest;
use anyhow::Context;
use bytes::Bytes;
use kafka_protocol::protocol::Request;
use serde::{Deserialize, Serialize};

/// The API key of `RaftMessages`.
pub const RAFT_MESSAGES_KEY: i16 = 32_101;
/// The API key of `QuorumState`.
pub const QUORUM_STATE_KEY: i16 = 32_102;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RaftMessagesRequest {
    pub body: Bytes,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RaftMessagesResponse {
    pub body: Bytes,
}

crate::bytes_message!(RaftMessagesRequest, body, "RaftMessages", 1);
crate::bytes_message!(RaftMessagesResponse, body, "RaftMessages", 0);

impl Request for RaftMessagesRequest {
    const KEY: i16 = RAFT_MESSAGES_KEY;
    type Response = RaftMessagesResponse;
}

/// What `QuorumState` asks: optionally a digest of the metadata log over `[from, to)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumQuery {
    #[serde(default)]
    pub digest: Option<(i64, i64)>,
}

/// One voter's progress as the leader tracks it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoterProgress {
    pub id: i32,
    /// The highest metadata offset known to be on this voter (the leader's match index).
    pub matched: i64,
    /// Whether the leader has heard from it within the election timeout.
    pub recent: bool,
}

/// One voter's view of the quorum.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumState {
    pub node_id: i32,
    pub voters: Vec<i32>,
    /// The leader this voter knows, -1 if none.
    pub leader: i32,
    pub term: u64,
    /// The last committed metadata offset this voter knows; entries up to it are served.
    pub committed: i64,
    /// The last metadata offset applied to this voter's image.
    pub applied: i64,
    /// The first and last metadata offsets in this voter's log.
    pub log_start: i64,
    pub last: i64,
    /// The metadata offset of the newest snapshot, -1 if none.
    pub snapshot: i64,
    /// Filled in by the leader only.
    #[serde(default)]
    pub progress: Vec<VoterProgress>,
    #[serde(default)]
    pub digest: Option<RangeDigest>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuorumStateRequest {
    pub json: Bytes,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuorumStateResponse {
    pub json: Bytes,
}

crate::bytes_message!(QuorumStateRequest, json, "QuorumState", 1);
crate::bytes_message!(QuorumStateResponse, json, "QuorumState", 0);

impl Request for QuorumStateRequest {
    const KEY: i16 = QUORUM_STATE_KEY;
    type Response = QuorumStateResponse;
}

const PLAIN_DATA: &str = "quorum states are plain data and always serialise";

impl QuorumStateRequest {
    pub fn new(query: &QuorumQuery) -> Self {
        Self {
            json: Bytes::from(serde_json::to_vec(query).expect(PLAIN_DATA)),
        }
    }

    pub fn query(&self) -> anyhow::Result<QuorumQuery> {
        serde_json::from_slice(&self.json).context("QuorumState request is not a QuorumQuery")
    }
}

impl QuorumStateResponse {
    pub fn new(state: &QuorumState) -> Self {
        Self {
            json: Bytes::from(serde_json::to_vec(state).expect(PLAIN_DATA)),
        }
    }

    pub fn state(&self) -> anyhow::Result<QuorumState> {
        serde_json::from_slice(&self.json).context("QuorumState response is not a QuorumState")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::protocol::{Decodable, Encodable};

    #[test]
    fn requests_and_states_round_trip() {
        let mut buf = BytesMut::new();
        let msgs = RaftMessagesRequest {
            body: Bytes::from_static(b"\x00\x01raft"),
        };
        msgs.encode(&mut buf, 0).unwrap();
        assert_eq!(
            RaftMessagesRequest::decode(&mut buf.split().freeze(), 0).unwrap(),
            msgs
        );
        assert!(msgs.encode(&mut buf, 1).is_err(), "only v0 exists");

        let state = QuorumState {
            node_id: 2,
            voters: vec![1, 2, 3],
            leader: 1,
            term: 7,
            committed: 40,
            progress: vec![VoterProgress {
                id: 3,
                matched: 38,
                recent: true,
            }],
            ..QuorumState::default()
        };
        QuorumStateResponse::new(&state)
            .encode(&mut buf, 0)
            .unwrap();
        let back = QuorumStateResponse::decode(&mut buf.split().freeze(), 0).unwrap();
        assert_eq!(back.state().unwrap(), state);
    }

    #[test]
    fn a_short_body_is_refused() {
        let mut short = Bytes::from_static(&[0, 0, 0, 9, 1]);
        assert!(RaftMessagesRequest::decode(&mut short, 0).is_err());
    }
}
