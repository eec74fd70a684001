//! The replication rules, as pure functions and small state machines: no I/O, no tokio, no
//! clocks. Times are `u64` milliseconds passed in by the caller; offsets are `i64`; leader
//! epochs `i32`; broker epochs `i64`.
//!
//! The I/O around them (follower fetcher tasks, the leader's Fetch and OffsetForLeaderEpoch
//! handlers, AlterPartition calls to the controller) lives elsewhere and calls in here, so
//! each rule is decided in exactly one place and tested with tables.
//!
//! Module map:
//!
//! - [`follower_state`]: the leader's view of one follower ([`FollowerState`]): LEO from its
//!   fetch offset, last fetch and last caught-up time (Kafka's two-step catch-up rule).
//! - [`isr`]: who leaves ([`shrink_candidates`]) and who joins ([`expand_candidates`]) the
//!   ISR, the maximal ISR of KIP-497 ([`maximal_isr`]), and the one-AlterPartition-in-flight
//!   gate ([`IsrChangeGate`]).
//! - [`high_watermark`]: the leader's HW ([`leader_high_watermark`]), frozen under min ISR
//!   (KIP-966); the follower's HW ([`follower_high_watermark`]); acks=all checks.
//! - [`lag_clock`]: the clock ISR decisions are measured on ([`LagClock`]), which skips
//!   stalls of the leader's own process.
//! - [`truncation`]: the follower's truncation point after a `DivergingEpoch` or an
//!   out-of-range answer (KIP-101/279/320), the leader's validation of a follower fetch
//!   (Fetch v12 `LastFetchedEpoch`) and its OffsetForLeaderEpoch answer.
//!
//! # How the I/O layer drives them
//!
//! Leader, on every follower fetch (after [`validate_follower_fetch`] said `Ok` and the
//! broker epoch was checked with [`is_stale_broker_epoch`]):
//! 1. [`FollowerState::on_fetch`] with the fetch offset and the leader LEO *before* the read.
//! 2. Recompute the HW: [`leader_high_watermark`] over the LEOs of [`hw_follower_leos`].
//! 3. If [`expand_candidates`] is non-empty, [`IsrChangeGate::try_begin`] and send the
//!    AlterPartition it returns.
//!
//! Leader, on a timer (Kafka: every `replica.lag.time.max.ms / 2`): [`shrink_candidates`]
//! and, if any, [`IsrChangeGate::try_begin`] with the smaller ISR.
//!
//! Follower, per partition in a fetch response: a `DivergingEpoch` goes to
//! [`on_diverging_epoch`] and the decision is applied **before** the response's HW is looked
//! at; only then [`follower_high_watermark`] (KAFKA-14704).

pub(crate) mod follower_state;
pub(crate) mod high_watermark;
pub(crate) mod isr;
pub(crate) mod lag_clock;
#[cfg(test)]
mod sim;
pub(crate) mod truncation;

pub(crate) use follower_state::{is_stale_broker_epoch, FollowerState};
pub(crate) use high_watermark::{
    check_acks_all, follower_high_watermark, leader_high_watermark, may_append_acks_all, AckCheck,
};
pub(crate) use isr::{
    expand_candidates, hw_follower_leos, maximal_isr, shrink_candidates, IsrChangeGate,
    IsrChangeResult,
};
pub(crate) use lag_clock::LagClock;
pub(crate) use truncation::{
    on_diverging_epoch, on_offset_out_of_range, validate_follower_fetch, EpochEndOffset,
    FetchPartitionRequestView, FetchValidation, TruncationDecision,
};
