//! The controller: cluster metadata as a sans-IO state machine (KRaft's model).
//!
//! # Records, not mutations
//! Every change to the cluster — a broker registering, being fenced or unfenced, a topic
//! created or deleted, a partition's leader or ISR moving — is a [`MetadataRecord`]. The
//! [`Controller`] never changes its state directly: a command (`register`, `heartbeat`,
//! `tick`, `create_topic`, `delete_topic`, `alter_partition`) validates against the
//! committed [`MetadataImage`] and returns the records that express its effect. The I/O
//! driver (not in this module) appends them to the metadata log, waits until they are
//! durable, and then applies each with [`Controller::apply`], in log order, before it
//! steps the next command. A command that fails returns an error and no records.
//!
//! The records carry everything (broker epochs, topic ids, full partition states), so
//! an image is a pure function of the log: replaying the same records at the same
//! offsets gives an equal image, on the controller after a restart and on every broker.
//! Liveness bookkeeping (last heartbeat times) is runtime state of the controller and
//! is deliberately not in the records.
//!
//! # How brokers learn metadata
//! The metadata log is an ordinary Keel log named [`METADATA_TOPIC`] (`__cluster_metadata`),
//! partition 0, on the controller node. Each record batch value is one JSON-encoded
//! [`MetadataRecord`] ([`MetadataRecord::encode`] / [`MetadataRecord::decode`]). Brokers
//! fetch it with plain Kafka `Fetch` requests from their last applied offset, long
//! polling, so changes reach them promptly without a separate push path; they replay
//! the records into their own [`MetadataImage`] and report the last applied offset in
//! their `BrokerHeartbeat` (`current_metadata_offset`), which is what unfences them after
//! registration. After each batch a broker calls [`diff`] between its previous and
//! new image to get the [`ReplicaChange`]s for its local replicas (become leader,
//! become follower, remove). Metadata responses to clients are served from the image.
//!
//! # Rules in one place
//! - Broker epochs are the offset of the `RegisterBroker` record, so they only grow.
//!   A registered broker starts fenced and leaves every ISR; it is unfenced by a
//!   heartbeat once its metadata offset reaches its registration.
//! - Fencing (session timeout, controlled shutdown, re-registration) removes a broker from
//!   every ISR and moves its leaderships to the first unfenced ISR member in replica
//!   order. The last ISR member is never removed: the partition goes leaderless
//!   (leader -1) and waits for it (unclean election is off).
//! - Every leader change bumps the leader epoch; every change of a partition bumps the
//!   partition epoch. ISR changes from leaders are compare-and-sets on both.

mod changes;
mod error;
mod image;
mod machine;
mod metadata_response;
pub(crate) mod quorum;
mod records;
pub(crate) mod service;

#[cfg(test)]
mod tests;

pub(crate) use error::ControllerError;
pub(crate) use image::{diff, MetadataImage, ReplicaChange};
pub(crate) use machine::{AlterPartitionRequest, ControllerConfig, Heartbeat, NewTopic};
#[cfg(test)]
pub(crate) use machine::{Controller, HeartbeatReply, MAX_PARTITIONS};
pub(crate) use metadata_response::metadata_response;
pub use quorum::entry::{decode_batches, MetadataLogError};
pub(crate) use records::NO_LEADER;
pub use records::{MetadataRecord, PartitionRecord};

/// Name of the metadata log (partition 0) and a reserved topic name.
pub const METADATA_TOPIC: &str = "__cluster_metadata";
