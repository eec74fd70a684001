//! Consumer groups (the classic protocol): the assignors the group's leader runs, and this
//! consumer's membership (join, sync, heartbeats, commits). [`crate::Consumer::subscribe`]
//! puts them to work.

mod admin;
pub mod assignor;
pub(crate) mod member;

pub use admin::{GroupDescription, GroupListing, MemberDescription};
pub use assignor::Assignor;

/// A change of a group consumer's assignment, told to its rebalance listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rebalance {
    /// These partitions are now this consumer's (positions at their committed offsets).
    Assigned(Vec<(String, i32)>),
    /// These partitions are no longer this consumer's (committed first with auto-commit).
    Revoked(Vec<(String, i32)>),
}
