//! The controller quorum as `keel cluster status` and `keel check` see it: each voter's
//! `QuorumState` (Keel's own request on the controller listener), and a table of them.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use keel_client::connection::Connection;
use keel_protocol::quorum::{QuorumQuery, QuorumState, QuorumStateRequest};

use crate::table::{strings, table};

/// Asks one voter for its state (and a digest of its metadata log over `digest`).
pub async fn quorum_state(
    addr: SocketAddr,
    digest: Option<(i64, i64)>,
    timeout: Duration,
) -> anyhow::Result<QuorumState> {
    let addr = addr.to_string();
    let c = Connection::connect(&addr, "keel-cli", timeout, timeout)
        .await
        .with_context(|| format!("cannot reach the controller listener {addr}"))?;
    let req = QuorumStateRequest::new(&QuorumQuery { digest });
    let resp = c
        .send_unlisted(&req, 0, timeout)
        .await
        .with_context(|| format!("QuorumState from {addr}"))?;
    resp.state()
}

/// Every voter's state, in order; a voter that does not answer is an error in its place.
pub async fn quorum_states(
    voters: &[(i32, SocketAddr)],
    digest: Option<(i64, i64)>,
    timeout: Duration,
) -> Vec<(i32, anyhow::Result<QuorumState>)> {
    let asks = voters
        .iter()
        .map(|&(id, addr)| async move { (id, quorum_state(addr, digest, timeout).await) });
    futures_util::future::join_all(asks).await
}

/// The quorum summary line and one row per voter.
pub fn render(states: &[(i32, anyhow::Result<QuorumState>)]) -> String {
    let leader_state = states
        .iter()
        .filter_map(|(_, s)| s.as_ref().ok())
        .filter(|s| s.leader == s.node_id)
        .max_by_key(|s| s.term);
    let mut out = match leader_state {
        Some(l) => format!(
            "controller quorum: {} voters, active controller node {} (term {}, committed offset {})\n",
            states.len(),
            l.node_id,
            l.term,
            l.committed
        ),
        None => format!(
            "controller quorum: {} voters, NO active controller (metadata changes wait; brokers keep serving the leaders they know)\n",
            states.len()
        ),
    };
    let mut rows = vec![strings(&[
        "VOTER",
        "STATE",
        "LEADER",
        "TERM",
        "COMMITTED",
        "APPLIED",
        "LAG",
    ])];
    for (id, s) in states {
        match s {
            Ok(s) => {
                let lag = leader_state
                    .and_then(|l| {
                        let p = l.progress.iter().find(|p| p.id == *id)?;
                        Some((l.last - p.matched).max(0).to_string())
                    })
                    .unwrap_or_else(|| "-".into());
                rows.push(vec![
                    id.to_string(),
                    if s.leader == s.node_id {
                        "leader"
                    } else {
                        "follower"
                    }
                    .into(),
                    if s.leader < 0 {
                        "none".into()
                    } else {
                        s.leader.to_string()
                    },
                    s.term.to_string(),
                    s.committed.to_string(),
                    s.applied.to_string(),
                    lag,
                ]);
            }
            Err(e) => rows.push(vec![
                id.to_string(),
                format!("unreachable ({})", first_line(e)),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]),
        }
    }
    out.push_str(&table(&rows));
    out
}

fn first_line(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    text.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(60)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_protocol::quorum::VoterProgress;

    #[test]
    fn a_table_of_voters_names_the_leader_and_the_lag() {
        let state = |id, leader| QuorumState {
            node_id: id,
            voters: vec![1, 2, 3],
            leader,
            term: 4,
            committed: 50,
            applied: 50,
            last: 52,
            progress: if id == leader {
                vec![
                    VoterProgress {
                        id: 1,
                        matched: 52,
                        recent: true,
                    },
                    VoterProgress {
                        id: 2,
                        matched: 47,
                        recent: true,
                    },
                ]
            } else {
                Vec::new()
            },
            ..QuorumState::default()
        };
        let states = vec![
            (1, Ok(state(1, 1))),
            (2, Ok(state(2, 1))),
            (3, Err(anyhow::anyhow!("connection refused"))),
        ];
        let text = render(&states);
        assert!(
            text.starts_with("controller quorum: 3 voters, active controller node 1 (term 4"),
            "{text}"
        );
        let row2 = text.lines().find(|l| l.starts_with('2')).unwrap();
        assert!(
            row2.contains("follower") && row2.trim_end().ends_with('5'),
            "{row2}"
        );
        assert!(text.contains("unreachable (connection refused)"), "{text}");
        let none = render(&[(1, Ok(state(1, -1)))]);
        assert!(none.contains("NO active controller"), "{none}");
    }
}
