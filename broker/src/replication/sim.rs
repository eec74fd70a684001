//! Test-only: a model replica log, the follower/leader truncation protocol run over it, and
//! the convergence simulations (hand-written failover scenarios and seeded random histories).
//!
//! The model log stores, for every offset, the epoch of the leader that wrote it. Under the
//! replication invariants (one leader per epoch; a follower appends what it fetched at the
//! offset it fetched it) two replicas hold the same record at an offset exactly when they
//! hold the same epoch there and agree on everything before, so comparing these vectors is
//! comparing the logs.

use super::truncation::{
    on_diverging_epoch, on_offset_out_of_range, validate_follower_fetch, EpochSource,
    FetchPartitionRequestView, FetchValidation, TruncationDecision,
};

/// A seeded xorshift64* generator: reproducible random cases without a proptest dependency.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `[0, n)`; 0 when `n` is 0.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SimLog {
    start: i64,
    /// `epochs[i]` is the epoch of the record at offset `start + i`.
    epochs: Vec<i32>,
}

impl SimLog {
    pub(crate) fn empty(start: i64) -> Self {
        SimLog {
            start,
            epochs: Vec::new(),
        }
    }

    /// A log from epoch-cache entries `(epoch, start offset)` and its LEO.
    pub(crate) fn from_entries(start: i64, entries: &[(i32, i64)], leo: i64) -> Self {
        let mut log = SimLog::empty(start);
        for (i, &(epoch, from)) in entries.iter().enumerate() {
            let to = entries.get(i + 1).map_or(leo, |&(_, o)| o);
            assert_eq!(
                from,
                log.leo(),
                "entries must be contiguous from the log start"
            );
            log.append(epoch, (to - from) as usize);
        }
        log
    }

    pub(crate) fn leo(&self) -> i64 {
        self.start + self.epochs.len() as i64
    }

    fn latest_epoch(&self) -> Option<i32> {
        self.epochs.last().copied()
    }

    /// The epoch cache this log would have: `(epoch, first offset)` per run.
    fn entries(&self) -> Vec<(i32, i64)> {
        let mut out: Vec<(i32, i64)> = Vec::new();
        for (i, &e) in self.epochs.iter().enumerate() {
            if out.last().is_none_or(|&(last, _)| last != e) {
                out.push((e, self.start + i as i64));
            }
        }
        out
    }

    fn distinct_epochs(&self) -> usize {
        self.entries().len()
    }

    fn append(&mut self, epoch: i32, n: usize) {
        assert!(self.latest_epoch().is_none_or(|l| l <= epoch));
        self.epochs.extend(std::iter::repeat_n(epoch, n));
    }

    /// As `Log::truncate_to`: at or past the LEO a no-op, below the log start an empty log
    /// restarted at `offset`.
    fn truncate_to(&mut self, offset: i64) {
        if offset >= self.leo() {
            return;
        }
        if offset < self.start {
            *self = SimLog::empty(offset);
        } else {
            self.epochs.truncate((offset - self.start) as usize);
        }
    }

    /// Appends up to `max` of the leader's records from this log's LEO (a fetch response).
    fn copy_from(&mut self, leader: &SimLog, max: usize) {
        assert!(self.leo() >= leader.start && self.leo() <= leader.leo());
        let from = (self.leo() - leader.start) as usize;
        let to = leader.epochs.len().min(from.saturating_add(max));
        self.epochs.extend_from_slice(&leader.epochs[from..to]);
    }

    fn epoch_at(&self, offset: i64) -> Option<i32> {
        if offset < self.start {
            return None;
        }
        self.epochs.get((offset - self.start) as usize).copied()
    }
}

impl EpochSource for SimLog {
    fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, i64)> {
        let entries = self.entries();
        let i = entries.iter().rposition(|&(e, _)| e <= epoch)?;
        let end = entries.get(i + 1).map_or(self.leo(), |&(_, o)| o);
        Some((entries[i].0, end))
    }

    fn latest_epoch(&self) -> Option<i32> {
        self.entries().last().map(|&(e, _)| e)
    }
}

/// Length of the longest common prefix (both logs start at 0 in the random histories).
fn common_prefix(a: &SimLog, b: &SimLog) -> i64 {
    let mut o = a.start.max(b.start);
    while o < a.leo() && o < b.leo() && a.epoch_at(o) == b.epoch_at(o) {
        o += 1;
    }
    o
}

#[derive(Debug, Default)]
struct Stats {
    /// Truncation decisions taken (DivergingEpoch and out-of-range).
    rounds: usize,
    /// The lowest LEO the follower had during the exchange: where it truncated to.
    low_water: i64,
    /// A fallback (undefined answer or out of range) was taken.
    fell_back: bool,
}

fn apply(f: &mut SimLog, d: TruncationDecision, stats: &mut Stats) {
    match d {
        TruncationDecision::TruncateTo(o) => f.truncate_to(o),
        TruncationDecision::TruncateToAndAskAgain { offset, epoch } => {
            f.truncate_to(offset);
            assert_eq!(
                f.latest_epoch(),
                Some(epoch),
                "asks again about its latest epoch"
            );
        }
        TruncationDecision::TruncateFully { start_offset } => {
            *f = SimLog::empty(start_offset);
            stats.fell_back = true;
        }
    }
    stats.low_water = stats.low_water.min(f.leo());
}

/// The Fetch v12 path: fetch with `LastFetchedEpoch`, handle `DivergingEpoch` /
/// out-of-range until the leader says `Ok`, then copy up to `max_copy` records.
fn sync_by_fetch(
    f: &mut SimLog,
    hw: i64,
    leader: &SimLog,
    leader_epoch: i32,
    max_copy: usize,
    stats: &mut Stats,
) {
    let limit = f.distinct_epochs() + 4;
    loop {
        assert!(stats.rounds <= limit, "no convergence: {f:?} vs {leader:?}");
        let req = FetchPartitionRequestView {
            fetch_offset: f.leo(),
            current_leader_epoch: leader_epoch,
            last_fetched_epoch: f.latest_epoch().unwrap_or(-1),
        };
        match validate_follower_fetch(&req, leader_epoch, leader, leader.leo(), leader.start) {
            FetchValidation::Ok => {
                f.copy_from(leader, max_copy);
                return;
            }
            FetchValidation::Diverging(d) => {
                stats.rounds += 1;
                stats.fell_back |= d.is_undefined();
                let decision = on_diverging_epoch(d, f, f.leo(), hw.min(f.leo()));
                apply(f, decision, stats);
            }
            FetchValidation::OffsetOutOfRange => {
                stats.rounds += 1;
                stats.fell_back = true;
                let decision = on_offset_out_of_range(leader.start, leader.leo(), f.leo());
                apply(f, decision, stats);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Runs one full resync of `f` against `leader` and checks the fixed point.
fn resync_and_check(f: &mut SimLog, hw: i64, leader: &SimLog, leader_epoch: i32) -> Stats {
    let before = f.clone();
    let lcp = common_prefix(&before, leader);
    let mut stats = Stats {
        low_water: f.leo(),
        ..Stats::default()
    };
    sync_by_fetch(f, hw, leader, leader_epoch, usize::MAX, &mut stats);
    assert_eq!(f, leader, "converged to the leader's log, from {before:?}");
    assert!(
        stats.rounds <= before.distinct_epochs().max(1) + 2,
        "{} rounds for {} epochs: {before:?} vs {leader:?}",
        stats.rounds,
        before.distinct_epochs()
    );
    if !stats.fell_back {
        assert_eq!(
            stats.low_water, lcp,
            "truncated exactly to the common prefix: {before:?} vs {leader:?}"
        );
        assert!(
            stats.rounds <= before.distinct_epochs(),
            "one round per epoch at most"
        );
    }
    assert!(
        stats.low_water >= hw.min(lcp),
        "never below the committed prefix"
    );
    stats
}

#[test]
fn brief_example_single_round() {
    // Leader [(0,0),(2,100)] LEO 150; follower [(0,0),(1,80)] LEO 90.
    let leader = SimLog::from_entries(0, &[(0, 0), (2, 100)], 150);
    let mut f = SimLog::from_entries(0, &[(0, 0), (1, 80)], 90);
    let mut stats = Stats {
        low_water: f.leo(),
        ..Stats::default()
    };
    sync_by_fetch(&mut f, 50, &leader, 2, usize::MAX, &mut stats);
    assert_eq!((stats.rounds, stats.low_water), (1, 80));
    assert_eq!(f, leader);
}

#[test]
fn kip_279_multi_round() {
    // Follower led epochs 1 and 3, the other replica epochs 2 and 4, neither saw the
    // other's terms: common history is epoch 0 up to 50.
    let leader = SimLog::from_entries(0, &[(0, 0), (2, 50), (4, 60)], 80);
    let follower = SimLog::from_entries(0, &[(0, 0), (1, 50), (3, 70)], 90);
    let mut f = follower;
    let mut stats = Stats {
        low_water: f.leo(),
        ..Stats::default()
    };
    sync_by_fetch(&mut f, 0, &leader, 4, usize::MAX, &mut stats);
    assert_eq!((stats.rounds, stats.low_water), (2, 50));
    assert_eq!(f, leader);
}

/// Three replicas A, B, C; two back-to-back failovers leave divergent uncommitted tails on
/// the old leaders; a third failover later. Everyone converges on the committed history and
/// no committed offset is ever truncated.
#[test]
fn back_to_back_failovers_converge_on_committed_history() {
    let (a, b, c) = (0, 1, 2);
    let mut logs = [SimLog::empty(0), SimLog::empty(0), SimLog::empty(0)];
    // Epoch 0, leader A: 100 records replicated everywhere (committed).
    logs[a].append(0, 100);
    let leader = logs[a].clone();
    for r in [b, c] {
        resync_and_check(&mut logs[r], 0, &leader, 0);
    }
    let committed = 100;
    // A appends 20 more; B fetches 10 of them; C none. HW stays 100 (C lags). A dies.
    logs[a].append(0, 20);
    let leader = logs[a].clone();
    let mut stats = Stats::default();
    sync_by_fetch(&mut logs[b], committed, &leader, 0, 10, &mut stats);
    assert_eq!(logs[b].leo(), 110);
    // Epoch 1, leader C (in the ISR): writes 30 records nobody fetches, then dies.
    logs[c].append(1, 30);
    // Epoch 2, leader B: writes 30 records. A and C come back and follow B.
    logs[b].append(2, 30);
    let leader = logs[b].clone();
    resync_and_check(&mut logs[a], committed, &leader, 2); // A: cut its epoch-0 tail at 110
    resync_and_check(&mut logs[c], committed, &leader, 2); // C: cut epoch 1 at 100
    assert_eq!(logs[a], logs[b]);
    assert_eq!(logs[c], logs[b]);
    let committed = logs[b].leo(); // all three have it now
                                   // Epoch 3, leader A: 10 records nobody gets. Epoch 4, leader C: 5 records. A and B follow.
    logs[a].append(3, 10);
    logs[c].append(4, 5);
    let leader = logs[c].clone();
    resync_and_check(&mut logs[a], committed, &leader, 4);
    resync_and_check(&mut logs[b], committed, &leader, 4);
    assert!(logs.iter().all(|l| *l == leader));
    assert_eq!(leader.entries(), vec![(0, 0), (2, 110), (4, 140)]);
}

/// A follower whose epochs the leader deleted by retention: its fetch is out of range and
/// it restarts at the leader's log start. Bounded, and ends identical.
#[test]
fn follower_behind_leader_log_start() {
    let leader = SimLog::from_entries(5000, &[(2, 5000)], 6000);
    let mut f = SimLog::from_entries(0, &[(0, 0), (1, 50)], 5000);
    let mut stats = Stats {
        low_water: f.leo(),
        ..Stats::default()
    };
    sync_by_fetch(&mut f, 50, &leader, 2, usize::MAX, &mut stats);
    assert_eq!(f, leader);
    assert!(stats.fell_back);
    assert_eq!(stats.rounds, 1, "one restart at the leader's start");
}

/// Property (seeded random cases; `proptest` is not a dev-dependency of this crate): random
/// cluster histories of 3 replicas — appends, partial replication, leader elections with
/// back-to-back failovers (any replica may win, so divergent tails of every shape occur) —
/// then every follower resyncs with the current leader by one of the two paths. Each
/// converges to the leader's log, truncates exactly at the common prefix unless a fallback
/// was needed, and takes at most one round per epoch in its log (+2 for fallbacks).
#[test]
fn random_histories_converge() {
    let mut rng = Rng::new(0x6b65_656c_2024);
    // (resyncs, with truncation, multi-round, with fallback, max rounds)
    let mut seen = (0, 0, 0, 0, 0);
    for case in 0..1_500 {
        let mut logs = [SimLog::empty(0), SimLog::empty(0), SimLog::empty(0)];
        let mut leader = 0usize;
        let mut epoch = 0i32;
        for _ in 0..(5 + rng.below(25)) {
            match rng.below(10) {
                0..=3 => logs[leader].append(epoch, 1 + rng.below(5) as usize),
                4..=6 => {
                    let f = rng.below(3) as usize;
                    if f != leader {
                        let l = logs[leader].clone();
                        let mut stats = Stats {
                            low_water: logs[f].leo(),
                            ..Stats::default()
                        };
                        let max = rng.below(8) as usize;
                        sync_by_fetch(&mut logs[f], 0, &l, epoch, max, &mut stats);
                    }
                }
                _ => {
                    leader = rng.below(3) as usize;
                    epoch += 1 + rng.below(2) as i32;
                }
            }
        }
        let l = logs[leader].clone();
        for (f, before) in logs.iter().enumerate() {
            if f != leader {
                let hw = rng.below(common_prefix(before, &l) as u64 + 1) as i64;
                let result = std::panic::catch_unwind(|| {
                    let mut log = before.clone();
                    resync_and_check(&mut log, hw, &l, epoch)
                });
                let Ok(stats) = result else {
                    panic!("case {case}: follower {before:?} hw {hw} leader {l:?}");
                };
                seen.0 += 1;
                seen.1 += usize::from(stats.low_water < before.leo());
                seen.2 += usize::from(stats.rounds >= 2);
                seen.3 += usize::from(stats.fell_back);
                seen.4 = seen.4.max(stats.rounds);
            }
        }
    }
    // The generator must reach the interesting shapes, or the property proves little.
    eprintln!("resyncs, truncating, multi-round, fallback, max rounds: {seen:?}");
    assert!(
        seen.1 > seen.0 / 10 && seen.2 > 20 && seen.3 > 5,
        "{seen:?}"
    );
}
