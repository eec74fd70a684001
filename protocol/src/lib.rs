//! Kafka wire protocol pieces shared by the Keel broker, client and storage.
//!
//! Message codecs come from the `kafka-protocol` crate; this crate adds only what sits
//! around them:
//!
//! - [`frame`]: the 4-byte size-prefixed framing, with a maximum frame size.
//! - [`api`]: the table of API keys and versions Keel serves, and request-header parsing
//!   that tells a bad header from an unsupported version.
//! - [`batch`]: a zero-copy view of the 61-byte v2 record-batch header, used by storage
//!   and the broker so that neither decodes records on the produce or fetch path.
//! - [`encode`]: the one record-batch encoder (new batches, with or without a producer id),
//!   used by the client, the metadata log and every test that builds batches.
//! - [`gather`]: an encode buffer that keeps large `Bytes` (segment slices) by reference,
//!   so a fetch response goes to the socket with `write_vectored` and no record copy.
//! - [`replica_state`]: Keel's own `ReplicaState` request, which `keel check` sends to
//!   every broker.

pub mod api;
pub mod batch;
pub mod bytes_message;
pub mod encode;
pub mod frame;
pub mod gather;
pub mod quorum;
pub mod replica_state;

pub use kafka_protocol;
