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

fn state(a: &Answer) -> Option<&ReplicaState> {
    match a {
        Answer::Replica(s) => Some(s),
        _ => None,
    }
}

/// The range two replicas have both committed: `[higher log start, lower HW)`. Data above
/// either HW may still be replicating, and data below either log start is gone by
/// retention; neither is compared. `None` when empty.
pub fn shared_range(a: &ReplicaState, b: &ReplicaState) -> Option<(i64, i64)> {
    let from = a.log_start.max(b.log_start);
    let to = a.hw.min(b.hw);
    (to > from).then_some((from, to))
}

/// Who leads, as the replicas claim it: the claimants at the highest leader epoch (a
/// broker still claiming an older epoch has not yet applied the change that moved the
/// leadership). One claimant is the leader; more than one at the same epoch is two leaders.
pub fn claimed_leaders(answers: &BTreeMap<i32, Answer>) -> Vec<i32> {
    let claims: Vec<(i32, i32)> = answers
        .iter()
        .filter_map(|(&b, a)| {
            state(a)
                .filter(|s| s.is_leader)
                .map(|s| (b, s.leader_epoch))
        })
        .collect();
    let Some(top) = claims.iter().map(|&(_, e)| e).max() else {
        return Vec::new();
    };
    claims
        .into_iter()
        .filter(|&(_, e)| e == top)
        .map(|(b, _)| b)
        .collect()
}

/// The replica every other is compared with: the leader, or without one the replica with
/// the highest LEO.
pub fn reference(answers: &BTreeMap<i32, Answer>) -> Option<i32> {
    match claimed_leaders(answers).as_slice() {
        [one] => Some(*one),
        _ => answers
            .iter()
            .filter_map(|(&b, a)| state(a).map(|s| (s.leo, b)))
            .max()
            .map(|(_, b)| b),
    }
}

/// The digests `keel check` asks for, per broker: each replica over the range it shares
/// with the reference, and the reference over each of those ranges.
pub fn digest_requests(answers: &BTreeMap<i32, Answer>) -> Vec<(i32, (i64, i64))> {
    let Some(r) = reference(answers) else {
        return Vec::new();
    };
    let Some(rs) = answers.get(&r).and_then(state) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (&b, a) in answers {
        let Some(s) = state(a) else { continue };
        if b == r {
            continue;
        }
        if let Some(range) = shared_range(s, rs) {
            out.push((b, range));
            out.push((r, range));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
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
    /// The range compared with the reference replica, if any.
    pub compared: Option<(i64, i64)>,
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
/// answers carry the digests [`digest_requests`] asked for).
pub fn assess(meta: &PartitionMeta, answers: &BTreeMap<i32, Answer>) -> PartitionReport {
    let leaders = claimed_leaders(answers);
    let reference_id = reference(answers);
    let reference = reference_id.and_then(|b| answers.get(&b).and_then(state));
    // The leader's ISR is the freshest; the metadata's stands in without a leader.
    let isr = match (leaders.as_slice(), reference) {
        ([_], Some(r)) => &r.isr,
        _ => &meta.isr,
    };
    let mut rows = Vec::new();
    for &broker in &meta.replicas {
        let answer = answers
            .get(&broker)
            .cloned()
            .unwrap_or(Answer::Unreachable("not asked".into()));
        let is_reference = reference_id == Some(broker);
        let mut row = replica_row(broker, &answer, reference, is_reference, isr);
        if row.is_leader && !leaders.contains(&broker) {
            row.is_leader = false;
            row.note = join(&row.note, "still claims an older leader epoch");
        }
        rows.push(row);
    }
    let status = match leaders.len() {
        0 => Status::Leaderless,
        1 => rows
            .iter()
            .map(|r| r.status)
            .max()
            .unwrap_or(Status::Synced),
        _ => Status::Multileader,
    };
    PartitionReport {
        topic: meta.topic.clone(),
        partition: meta.partition,
        leader: leaders.first().copied().unwrap_or(meta.leader),
        leader_epoch: reference.map_or(meta.leader_epoch, |s| s.leader_epoch),
        status,
        replicas: rows,
    }
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}; {b}")
    }
}

fn replica_row(
    broker: i32,
    answer: &Answer,
    reference: Option<&ReplicaState>,
    is_reference: bool,
    isr: &[i32],
) -> ReplicaRow {
    let in_isr = isr.contains(&broker);
    let offline = |note: String| ReplicaRow {
        broker,
        leo: None,
        hw: None,
        lag: None,
        in_isr,
        is_leader: false,
        compared: None,
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
        compared: None,
        status: Status::Synced,
        note: s
            .error
            .as_ref()
            .map(|e| format!("not compared: {e}"))
            .unwrap_or_default(),
    };
    // A replica's own CRC failures count whoever it is; the reference is not compared with
    // itself.
    let (compared, differs) = match (corrupt(s), reference.filter(|_| !is_reference)) {
        (Some(why), _) => (None, Some(why)),
        (None, Some(r)) => compare(s, r),
        (None, None) => (None, None),
    };
    row.compared = compared;
    if let Some(why) = differs {
        row.status = Status::Diverged;
        row.note = join(&row.note, &why);
    }
    if row.status == Status::Synced && !in_isr && lag.unwrap_or(0) > 0 {
        row.status = Status::Lagging;
    }
    row
}

/// A batch of `s` that failed its CRC check in any digest.
fn corrupt(s: &ReplicaState) -> Option<String> {
    s.digests
        .iter()
        .find_map(|d| d.corrupt_batch)
        .map(|bad| format!("batch at offset {bad} fails its CRC check"))
}

/// Compares `s` with the reference `r` over the range they share: the range compared (none
/// when they share no committed range or a digest is missing) and why they differ, if they do.
fn compare(s: &ReplicaState, r: &ReplicaState) -> (Option<(i64, i64)>, Option<String>) {
    let Some((from, to)) = shared_range(s, r) else {
        return (None, None);
    };
    if epochs_in_range(&s.epochs, from, to) != epochs_in_range(&r.epochs, from, to) {
        let why = format!("leader epoch history differs in [{from}, {to})");
        return (Some((from, to)), Some(why));
    }
    let digest = |x: &ReplicaState| {
        x.digests
            .iter()
            .find(|d| (d.from, d.to) == (from, to))
            .copied()
    };
    match (digest(s), digest(r)) {
        // A reference whose own batch is corrupt is no yardstick: it is flagged itself.
        (_, Some(b)) if b.corrupt_batch.is_some() => (None, None),
        (Some(a), Some(b)) => (
            Some((from, to)),
            (a != b).then(|| {
                format!(
                    "content differs in [{from}, {to}): {} batches crc32c {:08x}, reference {} batches crc32c {:08x}",
                    a.batches, a.crc32c, b.batches, b.crc32c
                )
            }),
        ),
        _ => (None, None),
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
            digests: vec![RangeDigest {
                from: 0,
                to: hw.min(90),
                batches: 9,
                bytes: 900,
                crc32c: crc,
                ..RangeDigest::default()
            }],
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
    fn ranges_are_shared_with_the_reference() {
        let a = answers(vec![
            (1, with(replica(true, 100, 90, 7), |s| s.log_start = 20)),
            (2, replica(false, 95, 80, 7)),
            (3, with(replica(false, 30, 25, 7), |s| s.log_start = 0)),
            (4, Answer::Unreachable("down".into())),
        ]);
        let state = |b| match &a[&b] {
            Answer::Replica(s) => s.clone(),
            _ => unreachable!(),
        };
        assert_eq!(shared_range(&state(2), &state(1)), Some((20, 80)));
        assert_eq!(shared_range(&state(3), &state(1)), Some((20, 25)));
        // Each replica over what it shares with the leader; the leader over each range.
        assert_eq!(
            digest_requests(&a),
            vec![(1, (20, 25)), (1, (20, 80)), (2, (20, 80)), (3, (20, 25))]
        );
        // A replica with nothing committed in common is not compared, and does not stop
        // the others from being compared.
        let far = answers(vec![
            (1, with(replica(true, 100, 90, 7), |s| s.log_start = 50)),
            (2, replica(false, 95, 90, 7)),
            (3, replica(false, 40, 40, 7)),
        ]);
        assert_eq!(digest_requests(&far), vec![(1, (50, 90)), (2, (50, 90))]);
        assert_eq!(digest_requests(&BTreeMap::new()), vec![]);
    }

    #[test]
    fn the_leader_is_the_claimant_at_the_highest_epoch() {
        let a = answers(vec![
            (1, with(replica(true, 100, 90, 7), |s| s.leader_epoch = 2)),
            (2, with(replica(true, 100, 90, 7), |s| s.leader_epoch = 3)),
            (3, replica(false, 100, 90, 7)),
        ]);
        assert_eq!(claimed_leaders(&a), vec![2]);
        assert_eq!(reference(&a), Some(2));
        let r = assess(&meta(), &a);
        assert_ne!(r.status, Status::Multileader);
        assert_eq!(r.leader, 2);
        assert!(r.replicas[0].note.contains("older leader epoch"), "{r:?}");
        // Without a leader the highest LEO is the reference.
        let none = answers(vec![
            (1, replica(false, 90, 80, 7)),
            (2, replica(false, 99, 80, 7)),
        ]);
        assert_eq!(reference(&none), Some(2));
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
                    s.digests[0].corrupt_batch = Some(40)
                }),
            ),
            (3, replica(false, 100, 90, 7)),
        ]);
        let r = assess(&meta(), &corrupt);
        assert_eq!(r.replicas[1].status, Status::Diverged);
        assert!(r.replicas[1].note.contains("offset 40"));

        // A corrupt batch on the leader: the leader is flagged, not every follower.
        let leader_corrupt = answers(vec![
            (
                1,
                with(replica(true, 100, 90, 7), |s| {
                    s.digests[0].corrupt_batch = Some(40);
                    s.digests[0].crc32c = 9;
                }),
            ),
            (2, replica(false, 100, 90, 7)),
            (3, replica(false, 100, 90, 7)),
        ]);
        let r = assess(&meta(), &leader_corrupt);
        assert_eq!(
            statuses(&r),
            [Status::Diverged, Status::Synced, Status::Synced]
        );

        // A digest that failed (say retention moved the log start meanwhile) is not compared.
        let failed = answers(vec![
            (1, replica(true, 100, 90, 7)),
            (
                2,
                with(replica(false, 100, 90, 8), |s| {
                    s.digests.clear();
                    s.error = Some("offset 0 out of range".into());
                }),
            ),
            (3, replica(false, 100, 90, 7)),
        ]);
        let r = assess(&meta(), &failed);
        assert_eq!(r.replicas[1].status, Status::Synced);
        assert!(r.replicas[1].note.starts_with("not compared"), "{r:?}");

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
