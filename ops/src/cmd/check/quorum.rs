//! `keel check --voters`: the controller voters' metadata logs compared like partition
//! replicas. Two rounds of `QuorumState`: each voter's offsets, then a digest of its log over
//! the committed range every answering voter holds, `[highest log start, lowest committed]`.
//! Voters with the same history have the same batches there, byte for byte.

use std::net::SocketAddr;
use std::time::Duration;

use keel_protocol::quorum::QuorumState;

use crate::cmd::cluster::quorum::quorum_states;
use crate::table::{strings, table};

/// What `keel check` says of one voter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoterStatus {
    /// Same digest as the leader over the common range, and caught up.
    Synced,
    /// Same history so far, but this many entries behind the leader's log.
    Behind(i64),
    /// Its metadata log differs from the leader's over the common committed range.
    Diverged,
    Unreachable(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoterReport {
    pub id: i32,
    pub leader: bool,
    pub status: VoterStatus,
    pub term: u64,
    pub committed: i64,
    pub range: Option<(i64, i64)>,
    pub crc: Option<u32>,
}

/// The range all answering voters hold committed: `[max log start, min committed + 1)`.
pub fn common_range(states: &[(i32, Result<QuorumState, String>)]) -> Option<(i64, i64)> {
    let ok: Vec<&QuorumState> = states.iter().filter_map(|(_, s)| s.as_ref().ok()).collect();
    let from = ok.iter().map(|s| s.log_start).max()?;
    let to = ok.iter().map(|s| s.committed).min()? + 1;
    (from < to).then_some((from, to))
}

/// Each voter's status, from its state with the digest of the common range.
pub fn assess(states: &[(i32, Result<QuorumState, String>)], max_lag: i64) -> Vec<VoterReport> {
    let leader = states
        .iter()
        .filter_map(|(_, s)| s.as_ref().ok())
        .filter(|s| s.leader == s.node_id)
        .max_by_key(|s| s.term);
    states
        .iter()
        .map(|(id, s)| match s {
            Err(e) => VoterReport {
                id: *id,
                leader: false,
                status: VoterStatus::Unreachable(e.clone()),
                term: 0,
                committed: -1,
                range: None,
                crc: None,
            },
            Ok(s) => {
                let digest = s.digest.as_ref();
                let reference = leader.and_then(|l| l.digest.as_ref());
                let same = match (digest, reference) {
                    (Some(d), Some(r)) => {
                        d.crc32c == r.crc32c && d.bytes == r.bytes && d.batches == r.batches
                    }
                    _ => true,
                };
                let behind = leader.map_or(0, |l| l.last - s.last.min(l.last));
                let status = if !same || digest.is_some_and(|d| d.corrupt_batch.is_some()) {
                    VoterStatus::Diverged
                } else if behind > max_lag {
                    VoterStatus::Behind(behind)
                } else {
                    VoterStatus::Synced
                };
                VoterReport {
                    id: *id,
                    leader: s.leader == s.node_id,
                    status,
                    term: s.term,
                    committed: s.committed,
                    range: digest.map(|d| (d.from, d.to)),
                    crc: digest.map(|d| d.crc32c),
                }
            }
        })
        .collect()
}

/// Asks every voter twice (offsets, then digests) and assesses them.
pub async fn check(
    voters: &[(i32, SocketAddr)],
    timeout: Duration,
    max_lag: i64,
) -> Vec<VoterReport> {
    let first: Vec<(i32, Result<QuorumState, String>)> = quorum_states(voters, None, timeout)
        .await
        .into_iter()
        .map(|(id, r)| (id, r.map_err(|e| format!("{e:#}"))))
        .collect();
    let range = common_range(&first);
    let second: Vec<(i32, Result<QuorumState, String>)> = match range {
        Some(r) => quorum_states(voters, Some(r), timeout)
            .await
            .into_iter()
            .map(|(id, r)| (id, r.map_err(|e| format!("{e:#}"))))
            .collect(),
        None => first,
    };
    assess(&second, max_lag)
}

/// How many voters fail (diverged, behind, unreachable; or no leader at all), and the line.
pub fn verdict(reports: &[VoterReport]) -> (usize, String) {
    let failing = reports
        .iter()
        .filter(|r| r.status != VoterStatus::Synced)
        .count();
    let leader = reports.iter().find(|r| r.leader);
    let line = match leader {
        Some(l) => format!(
            "controller quorum: {} voters, active controller node {}, {failing} not in sync",
            reports.len(),
            l.id
        ),
        None => format!(
            "controller quorum: {} voters, NO active controller, {failing} not in sync",
            reports.len()
        ),
    };
    (failing + usize::from(leader.is_none()), line)
}

pub fn render(reports: &[VoterReport]) -> String {
    let mut rows = vec![strings(&[
        "VOTER",
        "ROLE",
        "STATUS",
        "TERM",
        "COMMITTED",
        "COMPARED",
        "CRC32C",
    ])];
    for r in reports {
        let status = match &r.status {
            VoterStatus::Synced => "SYNCED".to_string(),
            VoterStatus::Behind(n) => format!("BEHIND ({n} entries)"),
            VoterStatus::Diverged => "DIVERGED".to_string(),
            VoterStatus::Unreachable(e) => {
                format!("UNREACHABLE ({})", e.chars().take(50).collect::<String>())
            }
        };
        rows.push(vec![
            r.id.to_string(),
            if r.leader { "leader" } else { "follower" }.into(),
            status,
            r.term.to_string(),
            r.committed.to_string(),
            r.range
                .map_or_else(|| "-".into(), |(a, b)| format!("[{a}, {b})")),
            r.crc.map_or_else(|| "-".into(), |c| format!("{c:08x}")),
        ]);
    }
    table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_protocol::replica_state::RangeDigest;

    fn state(id: i32, leader: i32, last: i64, crc: u32) -> QuorumState {
        QuorumState {
            node_id: id,
            voters: vec![1, 2, 3],
            leader,
            term: 2,
            committed: last,
            applied: last,
            log_start: 1,
            last,
            digest: Some(RangeDigest {
                from: 1,
                to: 11,
                batches: 10,
                bytes: 900,
                crc32c: crc,
                ..RangeDigest::default()
            }),
            ..QuorumState::default()
        }
    }

    #[test]
    fn voters_are_synced_behind_diverged_or_unreachable() {
        let states = vec![
            (1, Ok(state(1, 1, 40, 7))),
            (2, Ok(state(2, 1, 40, 7))),
            (3, Ok(state(3, 1, 30, 7))),
            (4, Ok(state(4, 1, 40, 8))),
            (5, Err("connection refused".to_string())),
        ];
        let got: Vec<VoterStatus> = assess(&states, 0).into_iter().map(|r| r.status).collect();
        assert_eq!(
            got,
            [
                VoterStatus::Synced,
                VoterStatus::Synced,
                VoterStatus::Behind(10),
                VoterStatus::Diverged,
                VoterStatus::Unreachable("connection refused".into()),
            ]
        );
        let reports = assess(&states, 10);
        assert_eq!(reports[2].status, VoterStatus::Synced, "within --max-lag");
        let (failing, line) = verdict(&reports);
        assert_eq!(failing, 2);
        assert!(line.contains("active controller node 1"), "{line}");
        assert!(render(&reports).contains("DIVERGED"));
    }

    #[test]
    fn the_common_range_is_what_every_answering_voter_holds_committed() {
        let mut a = state(1, 1, 40, 0);
        a.log_start = 5;
        let mut b = state(2, 1, 30, 0);
        b.committed = 28;
        let states = vec![(1, Ok(a)), (2, Ok(b)), (3, Err("down".into()))];
        assert_eq!(common_range(&states), Some((5, 29)));
        assert_eq!(common_range(&[(3, Err("down".into()))]), None);
        let (failing, line) = verdict(&assess(&[(1, Ok(state(1, -1, 3, 0)))], 0));
        assert_eq!(failing, 1, "no leader fails the check");
        assert!(line.contains("NO active controller"), "{line}");
    }
}
