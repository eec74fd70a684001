//! The history checker: what the clients were told and saw, against what the cluster holds
//! after heal and drain. Pure functions over plain maps, with table tests.
//!
//! Values are unique and never re-sent, so every value can be traced: an acknowledged value
//! must be present exactly once, at its acknowledged offset; a value whose write failed or
//! timed out may be present at most once; nothing else may be present at all.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// (partition, offset).
pub type Position = (i32, i64);

/// What the producers were told.
#[derive(Debug, Default, Clone)]
pub struct Writes {
    /// value → where the broker said it is.
    pub acked: BTreeMap<String, Position>,
    /// Values whose write failed or whose outcome is unknown (timeouts, lost connections).
    pub indeterminate: BTreeSet<String>,
}

impl Writes {
    pub fn merge(&mut self, other: Writes) {
        self.acked.extend(other.acked);
        self.indeterminate.extend(other.indeterminate);
    }
}

/// What the live consumers saw while faults ran.
#[derive(Debug, Default, Clone)]
pub struct Reads {
    /// (partition, offset) → value, as first seen.
    pub seen: BTreeMap<Position, String>,
    /// The highest high watermark each partition's leader reported to a consumer.
    pub max_hw: BTreeMap<i32, i64>,
    /// Problems the consumers noticed as they read (offsets going backwards, a value
    /// replaced at an offset already read, a high watermark going down).
    pub anomalies: Vec<Anomaly>,
    /// Records read, counting re-reads.
    pub records: u64,
}

/// What the group consumer committed and what it saw of its group's committed offsets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Commits {
    /// The highest acknowledged commit of each partition.
    pub acked: BTreeMap<i32, i64>,
    /// Commits acknowledged in all.
    pub acknowledged: u64,
    /// A committed offset read back lower than an earlier read of it: (partition, was, now).
    pub went_back: Vec<(i32, i64, i64)>,
}

impl Commits {
    /// Notes the committed offsets as read now (OffsetFetch).
    pub fn observe(&mut self, seen: &BTreeMap<i32, i64>, last: &mut BTreeMap<i32, i64>) {
        for (&p, &o) in seen {
            if let Some(&was) = last.get(&p) {
                if o < was {
                    self.went_back.push((p, was, o));
                }
            }
            last.insert(p, o);
        }
    }
}

/// One thing a consumer saw that a correct broker never shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anomaly {
    /// A fetch returned an offset at or below one this consumer had already read.
    OffsetWentBack {
        partition: i32,
        after: i64,
        got: i64,
    },
    /// An offset already read came back with another value.
    ValueReplaced {
        at: Position,
        first: String,
        then: String,
    },
    /// The partition's reported high watermark went down.
    HwRegressed { partition: i32, from: i64, to: i64 },
    /// The leader said an offset this consumer had reached is out of range: data it read
    /// (or the end it reached) is gone.
    OutOfRange { partition: i32, position: i64 },
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Anomaly::OffsetWentBack {
                partition,
                after,
                got,
            } => write!(
                f,
                "partition {partition}: offset {got} returned after offset {after}"
            ),
            Anomaly::ValueReplaced { at, first, then } => write!(
                f,
                "partition {} offset {}: read {first:?}, later {then:?}",
                at.0, at.1
            ),
            Anomaly::HwRegressed {
                partition,
                from,
                to,
            } => write!(f, "partition {partition}: high watermark {from} then {to}"),
            Anomaly::OutOfRange {
                partition,
                position,
            } => write!(
                f,
                "partition {partition}: position {position} became out of range"
            ),
        }
    }
}

impl Reads {
    /// Records one fetched record, noting anomalies. `last` is this consumer's last offset
    /// read in the partition (per consumer: several consumers share one `Reads`).
    pub fn record(&mut self, last: &mut Option<i64>, partition: i32, offset: i64, value: &str) {
        self.records += 1;
        if let Some(after) = *last {
            if offset <= after {
                self.anomalies.push(Anomaly::OffsetWentBack {
                    partition,
                    after,
                    got: offset,
                });
            }
        }
        *last = Some(last.map_or(offset, |l| l.max(offset)));
        match self.seen.get(&(partition, offset)) {
            Some(first) if first != value => self.anomalies.push(Anomaly::ValueReplaced {
                at: (partition, offset),
                first: first.clone(),
                then: value.to_string(),
            }),
            Some(_) => {}
            None => {
                self.seen.insert((partition, offset), value.to_string());
            }
        }
    }

    /// Records a high watermark a leader reported to a consumer. `last` is the last one this
    /// consumer was given for the partition.
    pub fn record_hw(&mut self, last: &mut Option<i64>, partition: i32, hw: i64) {
        if let Some(from) = *last {
            if hw < from {
                self.anomalies.push(Anomaly::HwRegressed {
                    partition,
                    from,
                    to: hw,
                });
            }
        }
        *last = Some(last.map_or(hw, |l| l.max(hw)));
        let max = self.max_hw.entry(partition).or_insert(hw);
        *max = (*max).max(hw);
    }

    pub fn merge(&mut self, other: Reads) {
        for (at, v) in other.seen {
            match self.seen.get(&at) {
                Some(first) if *first != v => self.anomalies.push(Anomaly::ValueReplaced {
                    at,
                    first: first.clone(),
                    then: v,
                }),
                Some(_) => {}
                None => {
                    self.seen.insert(at, v);
                }
            }
        }
        for (p, hw) in other.max_hw {
            let max = self.max_hw.entry(p).or_insert(hw);
            *max = (*max).max(hw);
        }
        self.anomalies.extend(other.anomalies);
        self.records += other.records;
    }
}

/// The committed content of the topic after heal, read from the leaders up to the HW.
#[derive(Debug, Default, Clone)]
pub struct Final {
    pub records: BTreeMap<Position, String>,
    /// Each partition's high watermark at the read.
    pub hw: BTreeMap<i32, i64>,
}

/// The verdict on a history. Every list empty means the run passed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub acked: usize,
    pub indeterminate: usize,
    pub indeterminate_present: usize,
    pub final_records: usize,
    /// Acknowledged values not present anywhere.
    pub lost: Vec<(String, Position)>,
    /// Acknowledged values present, but not (only) at their acknowledged offset.
    pub misplaced: Vec<(String, Position, Vec<Position>)>,
    /// Values present more than once.
    pub duplicated: Vec<(String, Vec<Position>)>,
    /// Values present that no producer ever sent.
    pub phantom: Vec<(Position, String)>,
    /// Offsets a consumer read whose committed value is now different or absent.
    pub read_then_changed: Vec<(Position, String, Option<String>)>,
    /// Partitions whose final HW is below one a consumer was shown.
    pub hw_below_seen: Vec<(i32, i64, i64)>,
    /// What the consumers noticed while reading.
    pub anomalies: Vec<Anomaly>,
    /// Group commits acknowledged.
    pub commits_acked: u64,
    /// Acknowledged commits the group's final offsets are below: (partition, acknowledged,
    /// final).
    pub commits_lost: Vec<(i32, i64, Option<i64>)>,
    /// Committed offsets read back lower than before (no reset in the run).
    pub commits_went_back: Vec<(i32, i64, i64)>,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.lost.is_empty()
            && self.misplaced.is_empty()
            && self.duplicated.is_empty()
            && self.phantom.is_empty()
            && self.read_then_changed.is_empty()
            && self.hw_below_seen.is_empty()
            && self.anomalies.is_empty()
            && self.commits_lost.is_empty()
            && self.commits_went_back.is_empty()
    }
}

/// How many items of each list the report prints.
const SHOW: usize = 10;

fn list<T>(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    items: &[T],
    show: impl Fn(&T) -> String,
) -> fmt::Result {
    writeln!(f, "  {name}: {}", items.len())?;
    for item in items.iter().take(SHOW) {
        writeln!(f, "    {}", show(item))?;
    }
    if items.len() > SHOW {
        writeln!(f, "    … and {} more", items.len() - SHOW)?;
    }
    Ok(())
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  acknowledged {}, indeterminate {} ({} present), committed records {}",
            self.acked, self.indeterminate, self.indeterminate_present, self.final_records
        )?;
        list(f, "lost writes", &self.lost, |(v, at)| {
            format!("{v} acknowledged at {}:{}", at.0, at.1)
        })?;
        list(
            f,
            "inconsistent offsets",
            &self.misplaced,
            |(v, at, found)| format!("{v} acknowledged at {}:{}, found at {found:?}", at.0, at.1),
        )?;
        list(f, "duplicated values", &self.duplicated, |(v, at)| {
            format!("{v} at {at:?}")
        })?;
        list(f, "values never sent", &self.phantom, |(at, v)| {
            format!("{v:?} at {}:{}", at.0, at.1)
        })?;
        list(
            f,
            "offsets read and later changed",
            &self.read_then_changed,
            |(at, read, now)| format!("{}:{} read {read:?}, now {now:?}", at.0, at.1),
        )?;
        list(
            f,
            "HW regressions",
            &self.hw_below_seen,
            |(p, seen, now)| format!("partition {p}: a consumer saw HW {seen}, final HW {now}"),
        )?;
        list(f, "consumer anomalies", &self.anomalies, |a| a.to_string())?;
        writeln!(f, "  group commits acknowledged {}", self.commits_acked)?;
        list(
            f,
            "acknowledged commits lost",
            &self.commits_lost,
            |(p, o, now)| format!("partition {p}: committed {o}, final {now:?}"),
        )?;
        list(
            f,
            "committed offsets that went back",
            &self.commits_went_back,
            |(p, was, now)| format!("partition {p}: {was} then {now}"),
        )
    }
}

/// Adds the group consumer's checks to `verdict`: every acknowledged commit is at or below
/// the group's final committed offset of its partition, and no read of the committed
/// offsets went back (nothing resets them in a run).
pub fn check_commits(verdict: &mut Verdict, commits: &Commits, final_offsets: &BTreeMap<i32, i64>) {
    verdict.commits_acked = commits.acknowledged;
    for (&p, &o) in &commits.acked {
        let now = final_offsets.get(&p).copied();
        if now.is_none_or(|n| n < o) {
            verdict.commits_lost.push((p, o, now));
        }
    }
    verdict.commits_went_back = commits.went_back.clone();
}

/// Checks a run's history against the final committed content.
pub fn check(writes: &Writes, reads: &Reads, fin: &Final) -> Verdict {
    let mut where_is: BTreeMap<&str, Vec<Position>> = BTreeMap::new();
    for (at, v) in &fin.records {
        where_is.entry(v.as_str()).or_default().push(*at);
    }
    let mut verdict = Verdict {
        acked: writes.acked.len(),
        indeterminate: writes.indeterminate.len(),
        final_records: fin.records.len(),
        anomalies: reads.anomalies.clone(),
        ..Verdict::default()
    };
    for (v, &at) in &writes.acked {
        match where_is.get(v.as_str()) {
            None => verdict.lost.push((v.clone(), at)),
            Some(found) if !found.contains(&at) => {
                verdict.misplaced.push((v.clone(), at, found.clone()))
            }
            Some(_) => {}
        }
    }
    for (v, found) in &where_is {
        if found.len() > 1 {
            verdict.duplicated.push((v.to_string(), found.clone()));
        }
        let acked = writes.acked.contains_key(*v);
        let maybe = writes.indeterminate.contains(*v);
        if maybe && !acked {
            verdict.indeterminate_present += 1;
        }
        if !acked && !maybe {
            for at in found {
                verdict.phantom.push((*at, v.to_string()));
            }
        }
    }
    for (at, read) in &reads.seen {
        let now = fin.records.get(at);
        if now != Some(read) {
            verdict
                .read_then_changed
                .push((*at, read.clone(), now.cloned()));
        }
    }
    for (&p, &seen) in &reads.max_hw {
        let now = fin.hw.get(&p).copied().unwrap_or(0);
        if now < seen {
            verdict.hw_below_seen.push((p, seen, now));
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writes(acked: &[(&str, i32, i64)], maybe: &[&str]) -> Writes {
        Writes {
            acked: acked
                .iter()
                .map(|&(v, p, o)| (v.to_string(), (p, o)))
                .collect(),
            indeterminate: maybe.iter().map(|v| v.to_string()).collect(),
        }
    }

    fn fin(records: &[(i32, i64, &str)], hw: &[(i32, i64)]) -> Final {
        Final {
            records: records
                .iter()
                .map(|&(p, o, v)| ((p, o), v.to_string()))
                .collect(),
            hw: hw.iter().copied().collect(),
        }
    }

    #[test]
    fn a_clean_history_passes() {
        let w = writes(&[("a", 0, 0), ("b", 0, 1), ("c", 1, 0)], &["d", "e"]);
        let mut r = Reads::default();
        let (mut last, mut hw) = (None, None);
        r.record(&mut last, 0, 0, "a");
        r.record(&mut last, 0, 1, "b");
        r.record_hw(&mut hw, 0, 2);
        r.record_hw(&mut hw, 0, 3);
        let f = fin(
            &[(0, 0, "a"), (0, 1, "b"), (0, 2, "d"), (1, 0, "c")],
            &[(0, 3), (1, 1)],
        );
        let v = check(&w, &r, &f);
        assert!(v.ok(), "{v}");
        assert_eq!(
            (v.acked, v.indeterminate, v.indeterminate_present),
            (3, 2, 1)
        );
    }

    #[test]
    fn each_violation_is_reported() {
        // (what the history is, which list must hold one entry)
        type Case = (&'static str, Writes, Final, fn(&Verdict) -> usize);
        let cases: Vec<Case> = vec![
            (
                "acked value missing",
                writes(&[("a", 0, 0)], &[]),
                fin(&[], &[(0, 0)]),
                |v| v.lost.len(),
            ),
            (
                "acked value at another offset",
                writes(&[("a", 0, 0)], &[]),
                fin(&[(0, 1, "a")], &[(0, 2)]),
                |v| v.misplaced.len(),
            ),
            (
                "value twice",
                writes(&[], &["x"]),
                fin(&[(0, 0, "x"), (1, 4, "x")], &[(0, 1), (1, 5)]),
                |v| v.duplicated.len(),
            ),
            (
                "value never sent",
                writes(&[], &[]),
                fin(&[(0, 0, "ghost")], &[(0, 1)]),
                |v| v.phantom.len(),
            ),
        ];
        for (name, w, f, pick) in cases {
            let v = check(&w, &Reads::default(), &f);
            assert!(!v.ok(), "{name}: passed");
            assert_eq!(pick(&v), 1, "{name}: {v}");
        }
    }

    #[test]
    fn an_acked_value_also_present_elsewhere_is_a_duplicate_not_misplaced() {
        let v = check(
            &writes(&[("a", 0, 0)], &[]),
            &Reads::default(),
            &fin(&[(0, 0, "a"), (0, 1, "a")], &[(0, 2)]),
        );
        assert!(v.misplaced.is_empty(), "{v}");
        assert_eq!(v.duplicated.len(), 1, "{v}");
    }

    #[test]
    fn reads_that_later_changed_or_vanished_fail() {
        let mut r = Reads::default();
        let mut last = None;
        r.record(&mut last, 0, 0, "a");
        r.record(&mut last, 0, 1, "b");
        r.record(&mut last, 0, 2, "c");
        let w = writes(&[], &["a", "b", "c", "z"]);
        let v = check(&w, &r, &fin(&[(0, 0, "a"), (0, 1, "z")], &[(0, 2)]));
        assert_eq!(
            v.read_then_changed,
            [
                ((0, 1), "b".to_string(), Some("z".to_string())),
                ((0, 2), "c".to_string(), None)
            ]
        );
    }

    #[test]
    fn consumer_anomalies_are_noted_as_they_happen() {
        let mut r = Reads::default();
        let (mut last, mut hw) = (None, None);
        r.record(&mut last, 3, 10, "a");
        r.record(&mut last, 3, 10, "a");
        r.record_hw(&mut hw, 3, 20);
        r.record_hw(&mut hw, 3, 15);
        let mut other = None;
        r.record(&mut other, 3, 10, "b");
        assert_eq!(
            r.anomalies,
            [
                Anomaly::OffsetWentBack {
                    partition: 3,
                    after: 10,
                    got: 10
                },
                Anomaly::HwRegressed {
                    partition: 3,
                    from: 20,
                    to: 15
                },
                Anomaly::ValueReplaced {
                    at: (3, 10),
                    first: "a".into(),
                    then: "b".into()
                },
            ]
        );
        assert_eq!(r.max_hw[&3], 20);
        let v = check(&Writes::default(), &r, &fin(&[], &[(3, 12)]));
        assert_eq!(v.hw_below_seen, [(3, 20, 12)]);
        assert!(!v.ok());
    }

    #[test]
    fn merging_reads_of_two_consumers_finds_disagreement() {
        let (mut a, mut b) = (Reads::default(), Reads::default());
        a.record(&mut None, 0, 5, "x");
        b.record(&mut None, 0, 5, "y");
        b.record_hw(&mut None, 0, 9);
        a.merge(b);
        assert_eq!(a.anomalies.len(), 1);
        assert_eq!(a.max_hw[&0], 9);
        assert_eq!(a.records, 2);
    }
}
