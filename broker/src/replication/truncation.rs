//! Where a follower truncates, and how the leader validates a follower's fetch position.
//!
//! Every batch carries the leader epoch that wrote it, and every replica keeps an epoch cache
//! `epoch -> start offset`. Two replicas holding the same epoch at the same offset hold the same
//! records there and before (one leader per epoch, and a follower only appends what it
//! fetched at the offset it fetched it). So the logs agree exactly up to the end of the last
//! epoch they share; a follower truncates there — not at its HW, which loses acknowledged
//! writes (KIP-101), and not at its LEO, which keeps a divergent tail.
//!
//! The follower asks with Fetch v12+ (KAFKA-10554; Kafka's rule is
//! `AbstractFetcherThread.getOffsetTruncationState`): it sends `LastFetchedEpoch` (its latest
//! epoch) with its fetch offset (its LEO); the leader checks them ([`validate_follower_fetch`])
//! and answers `DivergingEpoch` when its log disagrees; the follower decides with
//! [`on_diverging_epoch`]. The leader answers OffsetForLeaderEpoch (KIP-101/279) with
//! [`leader_end_offset_for_epoch`], for consumers that validate their position (KIP-320);
//! Keel's own followers never need to ask it.
//!
//! # Bounded rounds
//!
//! A decision either completes (the follower fetches from its new LEO) or, when the leader's
//! epoch is unknown locally, truncates and asks again with the next fetch: the truncation
//! removes every local epoch above the one the leader named, so the next `LastFetchedEpoch` is
//! strictly smaller.
//!
//! So at most one round per distinct epoch in the follower's log, plus the fallbacks below
//! (each changes the log and can happen at most twice), reach the fixed point; the tests
//! simulate random histories with back-to-back failovers and check the bound.
//!
//! # Fallbacks
//!
//! An undefined answer (epoch or end offset -1: the leader has no epoch at or below the one
//! asked about — its log start passed it, or its log is empty) cannot locate the common
//! point. On the fetch path the leader never sends one (on the wire it reads as "no
//! divergence", and a follower would fetch past a history it never reconciled, forever):
//! it answers out of range, and the follower asks for the leader's log start and end and
//! truncates by those ([`on_offset_out_of_range`]). A `DivergingEpoch` the follower cannot use
//! makes it truncate to its own high watermark, as Kafka: everything below it was committed,
//! so the leader has it; it never empties its log on such an answer.
//!
//! Deviation from Kafka, on purpose: when the leader's answer names an epoch below every
//! epoch the follower has, Kafka truncates to `min(leader end offset, LEO)` (meant for logs
//! written before epochs existed). Every Keel batch carries an epoch, so that case means the
//! leader has none of the follower's epochs and the follower's whole log diverges; Keel treats
//! it as undefined (HW fallback) instead of keeping a divergent prefix.

/// Kafka's `UNDEFINED_EPOCH`.
pub(crate) const UNDEFINED_EPOCH: i32 = -1;
/// Kafka's `UNDEFINED_EPOCH_OFFSET`.
pub(crate) const UNDEFINED_EPOCH_OFFSET: i64 = -1;

/// An epoch and its end offset: the wire shape of an OffsetForLeaderEpoch answer and of
/// Fetch's `DivergingEpoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EpochEndOffset {
    pub(crate) epoch: i32,
    pub(crate) end_offset: i64,
}

impl EpochEndOffset {
    /// "No such epoch": both fields -1.
    pub(crate) const UNDEFINED: EpochEndOffset = EpochEndOffset {
        epoch: UNDEFINED_EPOCH,
        end_offset: UNDEFINED_EPOCH_OFFSET,
    };

    pub(crate) fn new(epoch: i32, end_offset: i64) -> Self {
        Self { epoch, end_offset }
    }

    /// Undefined if either field is negative.
    pub(crate) fn is_undefined(&self) -> bool {
        self.epoch < 0 || self.end_offset < 0
    }
}

/// A replica's epoch history, as far as truncation needs it.
pub(crate) trait EpochSource {
    /// The largest known epoch `<= epoch` and its end offset: the start offset of the next
    /// known epoch, or the LEO for the latest. `None` if `epoch` is below the earliest known
    /// epoch or no epoch is known.
    fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, i64)>;

    /// The latest known epoch.
    fn latest_epoch(&self) -> Option<i32>;
}

/// The floor lookup these rules are written for, over the log's epoch cache. (The log's own
/// `end_offset_for_epoch` answers OffsetForLeaderEpoch with Kafka's wire semantics, which
/// differ for epochs outside the cache's range.)
impl EpochSource for keel_storage::Log {
    fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, i64)> {
        let entries = self.epoch_entries();
        let i = entries.iter().rposition(|&(e, _)| e <= epoch)?;
        let end = entries
            .get(i + 1)
            .map_or_else(|| self.log_end_offset(), |&(_, o)| o);
        Some((entries[i].0, end))
    }

    fn latest_epoch(&self) -> Option<i32> {
        keel_storage::Log::latest_epoch(self)
    }
}

/// What the follower does next, for one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// The variants say what is truncated and how; the shared prefix is the point.
#[allow(clippy::enum_variant_names)]
pub(crate) enum TruncationDecision {
    /// `Log::truncate_to(offset)`, then fetch from the new LEO.
    TruncateTo(i64),
    /// `Log::truncate_to(offset)`, then ask again about `epoch` (KIP-279): "ask again" is the
    /// next fetch, since after the truncation the log's latest epoch is `epoch`, which becomes
    /// its `LastFetchedEpoch`.
    TruncateToAndAskAgain { offset: i64, epoch: i32 },
    /// `Log::truncate_fully_and_start_at(start_offset)`: an empty log at that offset, no
    /// epochs; fetch from there.
    TruncateFully { start_offset: i64 },
}

/// The follower got `DivergingEpoch = diverging` in a fetch response. `local` is its log,
/// `local_leo` its LEO (the fetch offset it sent, with `LastFetchedEpoch` = its latest epoch)
/// and `local_hw` its high watermark (used only by the undefined fallback).
///
/// Rules: undefined → HW fallback (see the module doc); the leader's epoch is known locally →
/// truncate to `min(leader end offset, local end offset of that epoch, LEO)`; unknown locally →
/// truncate to the local end of the largest local epoch below it and fetch again
/// (`TruncateToAndAskAgain`). A `DivergingEpoch` always changes the log (an answer that would
/// not, which a correct leader never sends, takes the HW fallback), so repeated answers cannot
/// loop.
pub(crate) fn on_diverging_epoch(
    diverging: EpochEndOffset,
    local: &impl EpochSource,
    local_leo: i64,
    local_hw: i64,
) -> TruncationDecision {
    // A correct leader answers with an epoch at or below the one the follower sent (its
    // latest); anything else cannot be trusted to locate the common point.
    if local.latest_epoch().is_some_and(|l| diverging.epoch > l) {
        return fall_back_to_high_watermark(local_leo, local_hw);
    }
    match truncation_state(diverging, local, local_leo) {
        // An offset at the log end removes no data, only epochs that start there (an epoch
        // assigned at election with nothing written in it): the next fetch then carries
        // the common epoch and is accepted.
        State::Complete(offset) => TruncationDecision::TruncateTo(offset.min(local_leo)),
        State::Incomplete { offset, epoch } => TruncationDecision::TruncateToAndAskAgain {
            offset: offset.min(local_leo),
            epoch,
        },
        State::Undefined => fall_back_to_high_watermark(local_leo, local_hw),
    }
}

/// The leader answered a follower fetch with `OFFSET_OUT_OF_RANGE`; `leader_log_start` and
/// `leader_leo` are the leader's (ListOffsets earliest / latest). Kafka
/// `AbstractFetcherThread.fetchOffsetAndTruncate`:
/// - the follower is past the leader's LEO → truncate to it (reached only by a follower whose
///   log has no epochs; with epochs the leader answers `DivergingEpoch` first);
/// - the follower is below the leader's log start (retention deleted what it needs) → empty
///   the log and restart it at the leader's log start;
/// - otherwise the follower's offset is in range, so the leader could not place its last
///   epoch at all: no common point above the leader's log start can be shown, so the
///   follower starts over there (Kafka would fetch again and get the same answer forever).
pub(crate) fn on_offset_out_of_range(
    leader_log_start: i64,
    leader_leo: i64,
    local_leo: i64,
) -> TruncationDecision {
    if local_leo > leader_leo {
        TruncationDecision::TruncateTo(leader_leo)
    } else {
        TruncationDecision::TruncateFully {
            start_offset: leader_log_start,
        }
    }
}

/// The leader's answer for `requested_epoch`: the largest epoch it knows `<=` it and that
/// epoch's end offset, or [`EpochEndOffset::UNDEFINED`] if the epoch is negative or below
/// everything the leader knows. Serves OffsetForLeaderEpoch and the fetch divergence check.
/// (Fence the request's `CurrentLeaderEpoch` first with [`check_current_leader_epoch`].)
pub(crate) fn leader_end_offset_for_epoch(
    leader_log: &impl EpochSource,
    requested_epoch: i32,
) -> EpochEndOffset {
    if requested_epoch < 0 {
        return EpochEndOffset::UNDEFINED;
    }
    leader_log
        .end_offset_for_epoch(requested_epoch)
        .map_or(EpochEndOffset::UNDEFINED, |(epoch, end)| {
            EpochEndOffset::new(epoch, end)
        })
}

/// Why a request's `CurrentLeaderEpoch` was refused (KIP-320).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EpochFence {
    /// The sender's epoch is older than ours: `FENCED_LEADER_EPOCH` (it must refresh metadata).
    FencedLeaderEpoch,
    /// The sender's epoch is newer than ours: `UNKNOWN_LEADER_EPOCH` (we have not heard of it
    /// yet; retriable).
    UnknownLeaderEpoch,
}

/// Kafka's `CurrentLeaderEpoch` check: equal passes; -1 means "not sent" and passes.
pub(crate) fn check_current_leader_epoch(
    current_leader_epoch: i32,
    leader_epoch: i32,
) -> Result<(), EpochFence> {
    if current_leader_epoch < 0 || current_leader_epoch == leader_epoch {
        Ok(())
    } else if current_leader_epoch < leader_epoch {
        Err(EpochFence::FencedLeaderEpoch)
    } else {
        Err(EpochFence::UnknownLeaderEpoch)
    }
}

/// The fields of one partition of a follower's Fetch that the leader validates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FetchPartitionRequestView {
    /// The follower's LEO.
    pub(crate) fetch_offset: i64,
    /// The leader epoch the follower believes current (-1: not sent).
    pub(crate) current_leader_epoch: i32,
    /// The epoch of the follower's last batch (-1: empty log, or Fetch < v12).
    pub(crate) last_fetched_epoch: i32,
}

/// The leader's verdict on one partition of a follower fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FetchValidation {
    /// Read from `fetch_offset` and update the follower's state.
    Ok,
    /// `FENCED_LEADER_EPOCH`.
    FencedLeaderEpoch,
    /// `UNKNOWN_LEADER_EPOCH`.
    UnknownLeaderEpoch,
    /// Answer with no records and this `DivergingEpoch`; do **not** update the follower's
    /// state (its fetch offset is not a position in our log).
    Diverging(EpochEndOffset),
    /// `OFFSET_OUT_OF_RANGE`.
    OffsetOutOfRange,
}

/// Validates one partition of a follower fetch, in Kafka's order (`Partition.fetchRecords`,
/// `readRecords`):
/// 1. `CurrentLeaderEpoch`: older → fenced, newer → unknown.
/// 2. If `LastFetchedEpoch >= 0`: look it up in the leader's log; if the leader's epoch is
///    smaller (it never had the follower's last epoch) or its end offset is below the fetch
///    offset (the follower has records of that epoch that the leader does not), answer
///    `Diverging` with the leader's epoch and end offset (undefined if the leader has nothing
///    at or below it).
///    If the leader has no epoch at or below it at all (undefined), out of range instead.
/// 3. Fetch offset outside `[log_start, leader_leo]` → out of range.
pub(crate) fn validate_follower_fetch(
    req: &FetchPartitionRequestView,
    leader_epoch: i32,
    leader_log: &impl EpochSource,
    leader_leo: i64,
    log_start: i64,
) -> FetchValidation {
    match check_current_leader_epoch(req.current_leader_epoch, leader_epoch) {
        Err(EpochFence::FencedLeaderEpoch) => return FetchValidation::FencedLeaderEpoch,
        Err(EpochFence::UnknownLeaderEpoch) => return FetchValidation::UnknownLeaderEpoch,
        Ok(()) => {}
    }
    // Below the leader's log start nothing can be compared (retention removed those
    // epochs): the follower restarts at the log start. Checked before the epochs, so a
    // follower whose epochs the leader no longer has is not sent round the HW fallback.
    if req.fetch_offset < log_start {
        return FetchValidation::OffsetOutOfRange;
    }
    if req.last_fetched_epoch >= 0 {
        let ours = leader_end_offset_for_epoch(leader_log, req.last_fetched_epoch);
        if ours.is_undefined() {
            // Nothing of ours to compare with. An undefined DivergingEpoch reads as "no
            // divergence" on the wire, so (as Kafka does) say out of range: the follower
            // then asks for our log start and end and truncates by those.
            return FetchValidation::OffsetOutOfRange;
        }
        if ours.epoch < req.last_fetched_epoch || ours.end_offset < req.fetch_offset {
            return FetchValidation::Diverging(ours);
        }
    }
    if req.fetch_offset > leader_leo {
        return FetchValidation::OffsetOutOfRange;
    }
    FetchValidation::Ok
}

/// `getOffsetTruncationState` before the caller-specific guards.
enum State {
    Complete(i64),
    Incomplete { offset: i64, epoch: i32 },
    Undefined,
}

fn truncation_state(answer: EpochEndOffset, local: &impl EpochSource, local_leo: i64) -> State {
    if answer.is_undefined() {
        return State::Undefined;
    }
    match local.end_offset_for_epoch(answer.epoch) {
        Some((epoch, end)) if epoch == answer.epoch => {
            State::Complete(answer.end_offset.min(end).min(local_leo))
        }
        Some((epoch, end)) => State::Incomplete {
            offset: end.min(local_leo),
            epoch,
        },
        // Deliberate deviation from Kafka: see the module doc.
        None => State::Undefined,
    }
}

/// Kafka's fallback: everything below the high watermark was committed, so the leader has
/// it. Never more than that: emptying a log would drop committed data from this replica.
fn fall_back_to_high_watermark(local_leo: i64, local_hw: i64) -> TruncationDecision {
    TruncationDecision::TruncateTo(local_hw.min(local_leo))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::sim::SimLog;
    use TruncationDecision::*;

    /// Epoch-cache entries `(epoch, start offset)`.
    type Entries = &'static [(i32, i64)];

    fn log(entries: &[(i32, i64)], leo: i64) -> SimLog {
        SimLog::from_entries(0, entries, leo)
    }

    #[test]
    fn on_diverging_epoch_table() {
        let e = EpochEndOffset::new;
        // (follower entries, leo, hw, diverging, expected)
        let table: &[(Entries, i64, i64, EpochEndOffset, TruncationDecision)] = &[
            // Brief's example: leader [(0,0),(2,100)], follower [(0,0),(1,80)] LEO 90.
            (&[(0, 0), (1, 80)], 90, 50, e(0, 100), TruncateTo(80)),
            // Same epoch, leader's end is lower: its end.
            (&[(0, 0), (3, 50)], 90, 10, e(3, 70), TruncateTo(70)),
            // Leader's epoch unknown locally: end of the largest local epoch below it.
            (
                &[(0, 0), (1, 50), (3, 70)],
                90,
                10,
                e(2, 60),
                TruncateToAndAskAgain {
                    offset: 70,
                    epoch: 1,
                },
            ),
            // Undefined: truncate to HW.
            (
                &[(0, 0), (1, 80)],
                90,
                40,
                EpochEndOffset::UNDEFINED,
                TruncateTo(40),
            ),
            // Undefined and HW = LEO: nothing below the HW is given up.
            (&[(1, 0)], 40, 40, EpochEndOffset::UNDEFINED, TruncateTo(40)),
            // Leader's epoch below every local epoch: whole log diverges → HW.
            (&[(3, 0)], 50, 0, e(1, 30), TruncateTo(0)),
            // The common epoch ends past our log: nothing to remove (Kafka: min of the
            // ends and the LEO); never below the HW.
            (&[(0, 0)], 50, 20, e(0, 80), TruncateTo(50)),
            // Answer naming an epoch above our latest (bad leader): HW fallback.
            (&[(0, 0), (2, 30)], 50, 20, e(5, 80), TruncateTo(20)),
            // Half-defined answers are undefined.
            (&[(0, 0)], 50, 20, e(-1, 30), TruncateTo(20)),
            (&[(0, 0)], 50, 20, e(0, -1), TruncateTo(20)),
        ];
        for (i, &(entries, leo, hw, div, want)) in table.iter().enumerate() {
            let f = log(entries, leo);
            assert_eq!(on_diverging_epoch(div, &f, leo, hw), want, "row {i}");
        }
    }

    #[test]
    fn out_of_range_table() {
        // (leader log start, leader leo, local leo, expected)
        let table = [
            (0, 100, 120, TruncateTo(100)),
            (500, 1000, 100, TruncateFully { start_offset: 500 }),
            // In range, so the leader could not place the follower's epochs: start over.
            (500, 1000, 500, TruncateFully { start_offset: 500 }),
            (500, 1000, 1000, TruncateFully { start_offset: 500 }),
            (0, 0, 5, TruncateTo(0)),
            (1000, 1000, 0, TruncateFully { start_offset: 1000 }),
        ];
        for (start, leo, local, want) in table {
            assert_eq!(
                on_offset_out_of_range(start, leo, local),
                want,
                "{start} {leo} {local}"
            );
        }
    }

    #[test]
    fn leader_answer_table() {
        let leader = log(&[(2, 0), (4, 10), (7, 30)], 55);
        // (requested, expected)
        let table = [
            (-1, EpochEndOffset::UNDEFINED),
            (0, EpochEndOffset::UNDEFINED),
            (1, EpochEndOffset::UNDEFINED),
            (2, EpochEndOffset::new(2, 10)),
            (3, EpochEndOffset::new(2, 10)),
            (4, EpochEndOffset::new(4, 30)),
            (7, EpochEndOffset::new(7, 55)),
            (9, EpochEndOffset::new(7, 55)), // current epoch not written yet
        ];
        for (req, want) in table {
            assert_eq!(
                leader_end_offset_for_epoch(&leader, req),
                want,
                "epoch {req}"
            );
        }
        assert_eq!(
            leader_end_offset_for_epoch(&SimLog::empty(0), 3),
            EpochEndOffset::UNDEFINED
        );
    }

    #[test]
    fn current_leader_epoch_table() {
        let table = [
            (5, 5, Ok(())),
            (4, 5, Err(EpochFence::FencedLeaderEpoch)),
            (6, 5, Err(EpochFence::UnknownLeaderEpoch)),
            (-1, 5, Ok(())),
            (0, 0, Ok(())),
            (0, 1, Err(EpochFence::FencedLeaderEpoch)),
        ];
        for (current, ours, want) in table {
            assert_eq!(
                check_current_leader_epoch(current, ours),
                want,
                "{current} {ours}"
            );
        }
    }

    #[test]
    fn validate_follower_fetch_table() {
        // Leader at epoch 4: [(0,0),(2,100),(4,150)], LEO 200, log start 0 (or 120).
        let leader = log(&[(0, 0), (2, 100), (4, 150)], 200);
        let req =
            |fetch_offset, current_leader_epoch, last_fetched_epoch| FetchPartitionRequestView {
                fetch_offset,
                current_leader_epoch,
                last_fetched_epoch,
            };
        let d = |e, o| FetchValidation::Diverging(EpochEndOffset::new(e, o));
        // (request, log start, expected)
        let table = [
            (req(200, 4, 4), 0, FetchValidation::Ok),
            (req(160, 4, 4), 0, FetchValidation::Ok),
            (req(120, 4, 2), 0, FetchValidation::Ok),
            (req(200, 3, 4), 0, FetchValidation::FencedLeaderEpoch),
            (req(200, 5, 4), 0, FetchValidation::UnknownLeaderEpoch),
            // Follower has epoch 1 (never on the leader): leader's epoch 0 ends at 100.
            (req(90, 4, 1), 0, d(0, 100)),
            // Follower has epoch 2 records past where the leader's epoch 2 ended.
            (req(170, 4, 2), 0, d(2, 150)),
            // Follower's epoch 3 tail: leader's largest <= 3 is 2.
            (req(160, 4, 3), 0, d(2, 150)),
            // Past the leader's LEO in the same epoch.
            (req(210, 4, 4), 0, d(4, 200)),
            // No epoch sent: only the range is checked.
            (req(210, 4, -1), 0, FetchValidation::OffsetOutOfRange),
            (req(50, 4, -1), 120, FetchValidation::OffsetOutOfRange),
            (req(50, 4, 0), 120, FetchValidation::OffsetOutOfRange),
            (req(0, -1, -1), 0, FetchValidation::Ok),
        ];
        for (i, (r, start, want)) in table.into_iter().enumerate() {
            assert_eq!(
                validate_follower_fetch(&r, 4, &leader, 200, start),
                want,
                "row {i}"
            );
        }
        // An epoch the leader cannot place (it has none): out of range, never an undefined
        // DivergingEpoch (which the wire cannot tell from "none").
        let empty = SimLog::from_entries(0, &[], 0);
        assert_eq!(
            validate_follower_fetch(&req(40, 0, 0), 0, &empty, 0, 0),
            FetchValidation::OffsetOutOfRange
        );
    }

    /// The adapter over a real `keel_storage::Log`: epochs stamped by `append_as_leader`, a
    /// diverging answer applied with `truncate_to`.
    #[test]
    fn storage_log_adapter() {
        use keel_storage::test_support::batch;
        use keel_storage::{Log, LogConfig};
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), LogConfig::default()).unwrap();
        let rec: &[&[u8]] = &[b"a", b"b"];
        for epoch in [0, 0, 1, 3] {
            log.append_as_leader(&batch(rec, 0), epoch).unwrap();
        }
        // Epoch 0: [0, 4), epoch 1: [4, 6), epoch 3: [6, 8).
        assert_eq!(EpochSource::end_offset_for_epoch(&log, 2), Some((1, 6)));
        assert_eq!(EpochSource::end_offset_for_epoch(&log, 3), Some((3, 8)));
        let leo = log.log_end_offset();
        // A leader that has epochs 0 and 2: its epoch 0 ended at 4 as well.
        let decision = on_diverging_epoch(EpochEndOffset::new(2, 7), &log, leo, 0);
        assert_eq!(
            decision,
            TruncateToAndAskAgain {
                offset: 6,
                epoch: 1
            }
        );
        log.truncate_to(6).unwrap();
        assert_eq!(log.latest_epoch(), Some(1));
        let decision = on_diverging_epoch(EpochEndOffset::new(0, 4), &log, 6, 0);
        assert_eq!(decision, TruncateTo(4));
        log.truncate_to(4).unwrap();
        assert_eq!(log.latest_epoch(), Some(0));
        assert_eq!(log.log_end_offset(), 4);
        log.close().unwrap();
    }
}
