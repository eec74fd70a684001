//! The Keel broker library: one node of a Keel cluster, with the controller role, the
//! broker role, or both.
//!
//! Module map, from the node down:
//! - [`node`]: [`Broker::start`] assembles the roles a configuration asks for; [`BrokerHandle`]
//!   stops them in order.
//! - [`controller`]: the controller role. A sans-IO state machine over metadata records, the
//!   metadata log it is replayed from, and the controller listener brokers talk to.
//! - [`broker`]: the broker role's link to the controller, the metadata follower, the replica
//!   manager that turns metadata into replica roles, and the follower fetcher.
//! - [`partition`]: one partition replica (log, high watermark, role, the acks rule, the
//!   flusher), the registry of the replicas this broker holds, their timers and gauges.
//! - [`replication`]: the replication rules as pure functions: high watermark, ISR changes,
//!   truncation, the lag clock.
//! - [`group`]: the group coordinator: consumer groups (a sans-IO state machine per group)
//!   whose membership and committed offsets are records of `__consumer_offsets`.
//! - [`fetch_session`]: incremental fetch sessions (KIP-227) as pure state machines: the
//!   broker's session cache and the fetcher's side.
//! - [`handlers`]: the Kafka listener's state and one file per Kafka API.
//! - [`server`]: listener plumbing both listeners share: connections, replies, ApiVersions.
//! - [`config`], [`error`], [`metrics`], [`clock`], [`limits`], [`topic_config`], [`upgrade`],
//!   [`alloc_guard`]: the leaves everything else uses; [`failpoint`]: failure injection for
//!   the test suites (`test-util` feature only).

#![warn(unreachable_pub)]

pub mod alloc_guard;
pub(crate) mod broker;
pub(crate) mod clock;
pub mod config;
pub(crate) mod controller;
pub(crate) mod error;
pub mod failpoint;
pub(crate) mod fetch_session;
pub(crate) mod group;
pub(crate) mod handlers;
pub(crate) mod limits;
pub mod metrics;
pub(crate) mod node;
pub(crate) mod partition;
pub(crate) mod replication;
pub(crate) mod server;
pub(crate) mod topic_config;
pub(crate) mod upgrade;

pub use config::{BrokerConfig, ConfigError, GroupsConfig};
/// The metadata log's record format, for tools and tests that read it with Fetch.
pub use controller::{
    decode_batches, MetadataLogError, MetadataRecord, PartitionRecord, METADATA_TOPIC,
};
pub use error::BrokerError;
pub use node::{Broker, BrokerHandle};
