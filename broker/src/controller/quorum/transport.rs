//! Raft messages between voters: one task per peer voter, holding one connection to its
//! controller listener and sending what the voter hands it, in runs, as `RaftMessages`
//! requests. A failed send drops the run (Raft sends again) and is reported to the voter as
//! the peer being unreachable, and as a failed snapshot if the run held one.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use keel_client::connection::Connection;
use keel_protocol::quorum::RaftMessagesRequest;
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Messages sent in one request at most.
const RUN: usize = 64;
/// A run stops growing past this many bytes, so that a request stays far below the
/// controller listener's frame limit (`socket.request.max.bytes`) even when its last message
/// carries the largest entry.
const RUN_BYTES: usize = 16 << 20;
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// Length-prefixed protobuf messages: the body of a `RaftMessages` request.
pub(crate) fn encode(messages: &[Message]) -> Bytes {
    let mut buf = BytesMut::new();
    for m in messages {
        let bytes = m.write_to_bytes().expect("a raft message encodes");
        buf.put_u32(bytes.len() as u32);
        buf.put_slice(&bytes);
    }
    buf.freeze()
}

pub(crate) fn decode(mut body: Bytes) -> Result<Vec<Message>, String> {
    let mut out = Vec::new();
    while body.has_remaining() {
        if body.remaining() < 4 {
            return Err("a truncated message length".into());
        }
        let len = body.get_u32() as usize;
        if body.remaining() < len {
            return Err(format!(
                "a message of {len} bytes, {} left",
                body.remaining()
            ));
        }
        let m = Message::parse_from_bytes(&body.split_to(len)).map_err(|e| e.to_string())?;
        out.push(m);
    }
    Ok(out)
}

/// What a peer's task tells the voter about its sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerReport {
    Unreachable(i32),
    Snapshot { peer: i32, delivered: bool },
}

/// Where the peer tasks send their [`PeerReport`]s.
pub(crate) type Reports = Arc<dyn Fn(PeerReport) + Send + Sync>;

/// Senders to each peer's task, by node id.
pub(crate) struct Transport {
    peers: HashMap<i32, mpsc::UnboundedSender<Message>>,
}

impl Transport {
    /// Starts one task per peer (every voter but `me`).
    pub(crate) fn start(
        me: i32,
        voters: &[(i32, String)],
        reports: Reports,
        stop: CancellationToken,
    ) -> Self {
        let mut peers = HashMap::new();
        for (id, addr) in voters.iter().filter(|(id, _)| *id != me) {
            let (tx, rx) = mpsc::unbounded_channel();
            peers.insert(*id, tx);
            tokio::spawn(peer_loop(
                me,
                *id,
                addr.clone(),
                rx,
                reports.clone(),
                stop.clone(),
            ));
        }
        Self { peers }
    }

    pub(crate) fn send(&self, m: Message) {
        if let Some(tx) = self.peers.get(&super::node_id(m.to)) {
            let _ = tx.send(m);
        }
    }
}

async fn peer_loop(
    me: i32,
    peer: i32,
    addr: String,
    mut rx: mpsc::UnboundedReceiver<Message>,
    reports: Reports,
    stop: CancellationToken,
) {
    let mut conn: Option<Connection> = None;
    let mut failures = 0u32;
    loop {
        let first = tokio::select! {
            m = rx.recv() => match m { Some(m) => m, None => return },
            _ = stop.cancelled() => return,
        };
        let mut bytes = first.compute_size() as usize;
        let mut run = vec![first];
        while run.len() < RUN && bytes < RUN_BYTES {
            match rx.try_recv() {
                Ok(m) => {
                    bytes += m.compute_size() as usize;
                    run.push(m);
                }
                Err(_) => break,
            }
        }
        let snapshot = run
            .iter()
            .any(|m| m.get_msg_type() == MessageType::MsgSnapshot);
        let sent = send(&mut conn, me, &addr, &run).await;
        if snapshot {
            reports(PeerReport::Snapshot {
                peer,
                delivered: sent.is_ok(),
            });
        }
        match sent {
            Ok(()) => failures = 0,
            Err(e) => {
                conn = None;
                if failures == 0 {
                    tracing::warn!(peer, %addr, error = %e, "cannot reach controller voter");
                }
                failures += 1;
                reports(PeerReport::Unreachable(peer));
                // Raft resends what matters; what queued meanwhile is stale.
                let backoff = Duration::from_millis((25u64 << failures.min(4)).min(400));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => return,
                }
                while rx.try_recv().is_ok() {}
            }
        }
    }
}

async fn send(
    conn: &mut Option<Connection>,
    me: i32,
    addr: &str,
    run: &[Message],
) -> Result<(), String> {
    if conn.as_ref().is_none_or(Connection::is_closed) {
        let c = Connection::connect(
            addr,
            &format!("keel-voter-{me}"),
            Duration::from_secs(1),
            SEND_TIMEOUT,
        )
        .await
        .map_err(|e| e.to_string())?;
        *conn = Some(c);
    }
    let c = conn.as_ref().expect("connected above");
    let req = RaftMessagesRequest { body: encode(run) };
    c.send_unlisted(&req, 0, SEND_TIMEOUT)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        let mut a = Message::default();
        a.set_msg_type(MessageType::MsgHeartbeat);
        a.from = 1;
        a.to = 2;
        a.term = 7;
        let mut b = a.clone();
        b.set_msg_type(MessageType::MsgAppend);
        b.commit = 40;
        let body = encode(&[a.clone(), b.clone()]);
        assert_eq!(decode(body.clone()).unwrap(), vec![a, b]);
        assert!(decode(body.slice(..body.len() - 1)).is_err());
        assert!(decode(Bytes::from_static(&[0, 0])).is_err());
    }
}
