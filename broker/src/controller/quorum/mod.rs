//! The controller quorum: the metadata log replicated by Raft over the controller voters
//! (`controller.quorum.voters`, 1, 3 or 5 of them). The Raft leader is the active controller,
//! the only one that runs commands and so the only writer of metadata.
//!
//! # Which Raft
//! tikv's `raft` crate (raft-rs), not one written here and not openraft. raft-rs is sans-IO:
//! a `RawNode` takes ticks and messages and hands back a `Ready` (entries and a hard state to
//! make durable, messages to send, committed entries to apply), which is the shape of
//! Keel's controller already (commands in, records out, a thin driver doing the I/O). It
//! lets [`voter::Voter`] — the Raft node plus the controller state machine — be the same
//! code in the broker and in the seeded simulation test, with a simulated network and clock
//! and no async runtime. It ships pre-vote and check-quorum (an isolated leader steps down
//! within an election timeout) and snapshots; TiKV runs it in production.
//!
//! # The log
//! The metadata log *is* the Raft log: entry `i` is metadata offset `i` (the first entry is
//! 1), one record batch holding one record whose value is the JSON array of the
//! [`MetadataRecord`](super::MetadataRecord)s of one controller command (empty for a new
//! leader's first entry), with the Raft term as the batch's leader epoch. It is stored in a
//! Keel [`Log`](keel_storage::Log) (CRC-checked batches, a torn tail cut at recovery), fsynced
//! before a vote or an append is acknowledged; the hard state (term, vote, commit) and the
//! newest snapshot are checksummed files written atomically ([`files`]). Brokers fetch the
//! log from any voter, but only up to what that voter knows is committed.
//!
//! # Snapshots
//! A snapshot is the JSON [`MetadataImage`](super::MetadataImage) at an applied offset. A
//! voter writes one every `controller.snapshot.entries` applied entries and drops the log
//! segments below it; a voter (or a broker) too far behind gets the snapshot instead of the
//! entries.
//!
//! # Commands
//! The active controller runs one command at a time against its applied image, proposes
//! the records, and answers when the entry is applied (or with NOT_CONTROLLER when it turned
//! out to be another leader's entry). A voter becomes active only once an entry of its own
//! term is committed and applied, so it never runs a command against a stale image; it then
//! starts every broker's session afresh, as a restarted controller does.

pub(crate) mod driver;
pub(crate) mod entry;
pub(crate) mod files;
pub(crate) mod store;
pub(crate) mod transport;
pub(crate) mod voter;

#[cfg(test)]
mod sim;

/// Raft ids must not be 0; Keel node ids start at 0.
pub(crate) fn raft_id(node_id: i32) -> u64 {
    node_id as u64 + 1
}

pub(crate) fn node_id(raft_id: u64) -> i32 {
    raft_id as i32 - 1
}
