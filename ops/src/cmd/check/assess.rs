//! The rules of `keel check`, as pure functions over what the brokers answered: which range
//! of a partition to compare, and each replica's and partition's status.

use std::collections::BTreeMap;

use keel_protocol::replica_state::ReplicaState;
use serde::Serialize;

/// A replica's or a partition's verdict, worst last within the healthy ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Same committed history as the leader, and in sync (in the ISR, or at its LEO).
    Synced,
    /// Same committed history, behind the leader and out of the ISR: still replicating.
    Lagging,
    /// The broker holding the replica did not answer, or does not hold it.
    Offline,
    /// No broker leads the partition.
    Leaderless,
    /// More than one broker claims to lead the partition.
    Multileader,
    /// Different batches or epoch history than the leader over the committed range.
    Diverged,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Synced => "SYNCED",
            Status::Lagging => "LAGGING",
            Status::Offline => "OFFLINE",
            Status::Leaderless => "LEADERLESS",
            Status::Multileader => "MULTILEADER",
            Status::Diverged => "DIVERGED",
        }
    }
}

/// A partition as the cluster metadata lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMeta {
    pub topic: String,
    pub partition: i32,
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

/// What one assigned replica's broker said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Replica(Box<ReplicaState>),
    /// The broker answered but holds no such replica.
    Missing,
    /// The broker could not be asked (the error, for the note).
    Unreachable(String),
}

/// The committed range to compare: `[max log start, min HW)` over the replicas that
/// answered. Data above the lowest HW may still be replicating, and data below a replica's
/// log start is gone by retention; neither is compared. `None` when nothing is comparable.
pub fn committed_range(answers: &BTreeMap<i32, Answer>) -> Option<(i64, i64)> {
    let states: Vec<&ReplicaState> = answers.values().filter_map(state).collect();
    let from = states.iter().map(|s| s.log_start).max()?;
    let to = states.iter().map(|s| s.hw).min()?;
    (to > from).then_some((from, to))
}

fn state(a: &Answer) -> Option<&ReplicaState> {
    match a {
        Answer::Replica(s) => Some(s),
        _ => None,
    }
}

/// The epoch history over `[from, to)`: entries starting below `to`, the one in force at
/// `from` moved to start there.
pub fn epochs_in_range(entries: &[(i32, i64)], from: i64, to: i64) -> Vec<(i32, i64)> {
    let mut out: Vec<(i32, i64)> = Vec::new();
    for &(epoch, start) in entries.iter().filter(|(_, s)| *s < to) {
        if start <= from {
            out.clear();
            out.push((epoch, from));
        } else {
            out.push((epoch, start));
        }
    }
    out
}

/// One replica's row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicaRow {
    pub broker: i32,
    pub leo: Option<i64>,
    pub hw: Option<i64>,
    /// Records behind the leader's LEO (or the highest LEO seen when leaderless).
    pub lag: Option<i64>,
    pub in_isr: bool,
    pub is_leader: bool,
    pub status: Status,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// One partition's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionReport {
    pub topic: String,
    pub partition: i32,
    pub leader: i32,
    pub leader_epoch: i32,
    /// The compared committed range, if any.
    pub committed: Option<(i64, i64)>,
    pub status: Status,
    pub replicas: Vec<ReplicaRow>,
}

impl PartitionReport {
    /// The largest lag of a LAGGING replica.
    pub fn max_lag(&self) -> i64 {
        self.replicas
            .iter()
            .filter(|r| r.status == Status::Lagging)
            .filter_map(|r| r.lag)
            .max()
            .unwrap_or(0)
    }
}

/// Judges one partition from its metadata and every assigned replica's answer (the
/// answers carry digests over [`committed_range`]).
pub fn assess(meta: &PartitionMeta, answers: &BTreeMap<i32, Answer>) -> PartitionReport {
    let claimants: Vec<i32> = answers
        .iter()
        .filter(|(_, a)| state(a).is_some_and(|s| s.is_leader))
        .map(|(&b, _)| b)
        .collect();
    let leader = match claimants.as_slice() {
        [one] => Some(*one),
        _ => None,
    };
    let reference = leader
        .and_then(|b| answers.get(&b).and_then(state))
        .or_else(|| answers.values().filter_map(state).max_by_key(|s| s.leo));
    // The leader's ISR is the freshest; the metadata's stands in without a leader.
    let isr = reference
        .filter(|s| s.is_leader)
        .map_or(&meta.isr, |s| &s.isr);
    let committed = committed_range(answers);
    let mut rows = Vec::new();
    for &broker in &meta.replicas {
        let answer = answers
            .get(&broker)
            .cloned()
            .unwrap_or(Answer::Unreachable("not asked".into()));
        rows.push(replica_row(broker, &answer, reference, isr, committed));
    }
    let status = if claimants.len() > 1 {
        Status::Multileader
    } else if leader.is_none() {
        Status::Leaderless
    } else {
        rows.iter()
            .map(|r| r.status)
            .max()
            .unwrap_or(Status::Synced)
    };
    PartitionReport {
        topic: meta.topic.clone(),
        partition: meta.partition,
        leader: leader.unwrap_or(meta.leader),
        leader_epoch: reference.map_or(meta.leader_epoch, |s| s.leader_epoch),
        committed,
        status,
        replicas: rows,
    }
}

fn replica_row(
    broker: i32,
    answer: &Answer,
    reference: Option<&ReplicaState>,
    isr: &[i32],
    committed: Option<(i64, i64)>,
) -> ReplicaRow {
    let in_isr = isr.contains(&broker);
    let offline = |note: String| ReplicaRow {
        broker,
        leo: None,
        hw: None,
        lag: None,
        in_isr,
        is_leader: false,
        status: Status::Offline,
        note,
    };
    let s = match answer {
        Answer::Replica(s) => s,
        Answer::Missing => return offline("broker does not hold this replica".into()),
        Answer::Unreachable(e) => return offline(e.clone()),
    };
    let lag = reference.map(|r| (r.leo - s.leo).max(0));
    let mut row = ReplicaRow {
        broker,
        leo: Some(s.leo),
        hw: Some(s.hw),
        lag,
        in_isr,
        is_leader: s.is_leader,
        status: Status::Synced,
        note: String::new(),
    };
    if let Some(why) = divergence(s, reference, committed) {
        row.status = Status::Diverged;
        row.note = why;
    } else if !in_isr && lag.unwrap_or(0) > 0 {
        row.status = Status::Lagging;
    }
    row
}

/// Why `s` differs from `reference` over the committed range, if it does.
fn divergence(
    s: &ReplicaState,
    reference: Option<&ReplicaState>,
    committed: Option<(i64, i64)>,
) -> Option<String> {
    if let Some(bad) = s.digest.as_ref().and_then(|d| d.corrupt_batch) {
        return Some(format!("batch at offset {bad} fails its CRC check"));
    }
    if let Some(e) = &s.error {
        return Some(format!("no digest: {e}"));
    }
    let (r, (from, to)) = (reference?, committed?);
    if std::ptr::eq(r, s) {
        return None;
    }
    if epochs_in_range(&s.epochs, from, to) != epochs_in_range(&r.epochs, from, to) {
        return Some(format!("leader epoch history differs in [{from}, {to})"));
    }
    match (&s.digest, &r.digest) {
        (Some(a), Some(b)) if (a.from, a.to) == (b.from, b.to) && a != b => Some(format!(
            "content differs in [{from}, {to}): {} batches crc32c {:08x}, leader {} batches crc32c {:08x}",
            a.batches, a.crc32c, b.batches, b.crc32c
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_protocol::replica_state::RangeDigest;

    fn replica(leader: bool, leo: i64, hw: i64, crc: u32) -> Answer {
        Answer::Replica(Box::new(ReplicaState {
            topic: "t".into(),
            partition: 0,
            leader: 1,
            leader_epoch: 3,
            is_leader: leader,
            replicas: vec![1, 2, 3],
            isr: vec![1, 2, 3],
            log_start: 0,
            leo,
            hw,
            epochs: vec![(0, 0), (3, 50)],
            digest: Some(RangeDigest {
                from: 0,
                to: 90,
                batches: 9,
                bytes: 900,
                crc32c: crc,
                corrupt_batch: None,
            }),
            ..ReplicaState::default()
        }))
    }

    fn meta() -> PartitionMeta {
        PartitionMeta {
            topic: "t".into(),
            partition: 0,
            leader: 1,
            leader_epoch: 3,
            replicas: vec![1, 2, 3],
            isr: vec![1, 2, 3],
        }
    }

    fn answers(list: Vec<(i32, Answer)>) -> BTreeMap<i32, Answer> {
        list.into_iter().collect()
    }

    fn with(a: Answer, f: impl FnOnce(&mut ReplicaState)) -> Answer {
        match a {
            Answer::Replica(mut s) => {
                f(&mut s);
                Answer::Replica(s)
            }
            other => other,
        }
    }

    fn statuses(r: &PartitionReport) -> Vec<Status> {
        r.replicas.iter().map(|r| r.status).collect()
    }

    #[test]
    fn epochs_in_range_table() {
        let e = [(0, 0), (3, 50), (5, 80)];
        assert_eq!(epochs_in_range(&e, 0, 100), vec![(0, 0), (3, 50), (5, 80)]);
        assert_eq!(epochs_in_range(&e, 60, 100), vec![(3, 60), (5, 80)]);
        assert_eq!(epochs_in_range(&e, 10, 80), vec![(0, 10), (3, 50)]);
        assert_eq!(epochs_in_range(&e, 50, 60), vec![(3, 50)]);
        assert_eq!(epochs_in_range(&[], 0, 10), vec![]);
    }

    #[test]
    fn committed_range_is_max_start_to_min_hw() {
        let a = answers(vec![
            (1, with(replica(true, 100, 90, 7), |s| s.log_start = 20)),
            (2, replica(false, 95, 80, 7)),
            (3, Answer::Unreachable("down".into())),
        ]);
        assert_eq!(committed_range(&a), Some((20, 80)));
        let none = answers(vec![(
            1,
            with(replica(true, 10, 5, 7), |s| s.log_start = 5),
        )]);
        assert_eq!(committed_range(&none), None, "empty range");
        assert_eq!(committed_range(&BTreeMap::new()), None);
    }

    #[test]
    fn the_status_table() {
        let synced = answers(vec![
            (1, replica(true, 100, 90, 7)),
            (2, replica(false, 98, 90, 7)),
            (3, replica(false, 100, 90, 7)),
        ]);
        let r = assess(&meta(), &synced);
        assert_eq!(r.status, Status::Synced);
        assert_eq!(
            r.replicas[1].lag,
            Some(2),
            "in the ISR a little behind is in sync"
        );

        // Out of the leader's ISR and behind: lagging, and the partition says so.
        let lagging = answers(vec![
            (1, with(replica(true, 100, 90, 7), |s| s.isr = vec![1, 3])),
            (2, replica(false, 60, 55, 7)),
            (3, replica(false, 100, 90, 7)),
        ]);
        let r = assess(&meta(), &lagging);
        assert_eq!(
            statuses(&r),
            [Status::Synced, Status::Lagging, Status::Synced]
        );
        assert_eq!((r.status, r.max_lag()), (Status::Lagging, 40));

        // Different content over the committed range.
        let diverged = answers(vec![
            (1, replica(true, 100, 90, 7)),
            (2, replica(false, 100, 90, 8)),
            (3, replica(false, 100, 90, 7)),
        ]);
        let r = assess(&meta(), &diverged);
        assert_eq!(
            statuses(&r),
            [Status::Synced, Status::Diverged, Status::Synced]
        );
        assert_eq!(r.status, Status::Diverged);
        assert!(r.replicas[1].note.contains("content differs"), "{r:?}");

        // Same bytes, different epoch history.
        let epochs = answers(vec![
            (1, replica(true, 100, 90, 7)),
            (
                2,
                with(replica(false, 100, 90, 7), |s| {
                    s.epochs = vec![(0, 0), (2, 50)]
                }),
            ),
            (3, replica(false, 100, 90, 7)),
        ]);
        assert_eq!(
            assess(&meta(), &epochs).replicas[1].status,
            Status::Diverged
        );

        // A corrupt batch found by the replica's own CRC check.
        let corrupt = answers(vec![
            (1, replica(true, 100, 90, 7)),
            (
                2,
                with(replica(false, 100, 90, 7), |s| {
                    s.digest.as_mut().unwrap().corrupt_batch = Some(40)
                }),
            ),
            (3, replica(false, 100, 90, 7)),
        ]);
        let r = assess(&meta(), &corrupt);
        assert_eq!(r.replicas[1].status, Status::Diverged);
        assert!(r.replicas[1].note.contains("offset 40"));

        // A broker that does not answer, or does not hold the replica.
        let offline = answers(vec![
            (1, replica(true, 100, 90, 7)),
            (2, Answer::Unreachable("connection refused".into())),
            (3, Answer::Missing),
        ]);
        let r = assess(&meta(), &offline);
        assert_eq!(
            statuses(&r),
            [Status::Synced, Status::Offline, Status::Offline]
        );
        assert_eq!(r.status, Status::Offline);

        // Nobody claims leadership; two claim it.
        let leaderless = answers(vec![
            (1, replica(false, 100, 90, 7)),
            (2, replica(false, 100, 90, 7)),
        ]);
        assert_eq!(assess(&meta(), &leaderless).status, Status::Leaderless);
        let two = answers(vec![
            (1, replica(true, 100, 90, 7)),
            (2, replica(true, 100, 90, 7)),
            (3, replica(false, 100, 90, 7)),
        ]);
        assert_eq!(assess(&meta(), &two).status, Status::Multileader);
    }

    #[test]
    fn a_replica_at_the_leader_end_but_outside_the_isr_is_synced() {
        let a = answers(vec![
            (1, with(replica(true, 100, 90, 7), |s| s.isr = vec![1, 3])),
            (2, replica(false, 100, 90, 7)),
            (3, replica(false, 100, 90, 7)),
        ]);
        let r = assess(&meta(), &a);
        assert_eq!(r.status, Status::Synced);
        assert!(!r.replicas[1].in_isr);
    }
}
