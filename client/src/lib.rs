//! `keel-client` — an async Kafka client speaking the standard Kafka protocol, used by the
//! `keel` CLI and the integration tests, and usable against any Kafka broker.
//!
//! Every request, response and record batch is encoded and decoded with `kafka-protocol`.
//!
//! # Modules
//! - [`error`] — [`ClientError`], Kafka error-code names, what is retriable.
//! - [`config`] — [`ClientConfig`], [`ProducerConfig`], [`ConsumerConfig`], [`Acks`],
//!   [`Compression`].
//! - [`connection`] — one TCP connection: version negotiation, pipelined requests routed by
//!   correlation id, request timeouts. Public for the broker's own inter-broker calls.
//! - `cluster` — bootstrap, the Metadata cache (brokers, topic → partitions → leader) and the
//!   connection pool.
//! - [`admin`] — [`Admin`]: create/delete/list/describe topics, brokers, offsets.
//! - [`record`] — [`ProducerRecord`], [`RecordMetadata`], [`ConsumerRecord`] and record batch
//!   encoding/decoding.
//! - [`partitioner`] — murmur2 for keyed records, sticky partitions for unkeyed ones.
//! - `accumulator` — per-partition batches and the readiness rule (size, linger, flush, backoff),
//!   and the idempotent producer's sequence numbers (kept across retries, at most 5 batches in
//!   flight per partition).
//! - [`producer`] — [`Producer`]: batching, one sender task, pipelined requests, retries;
//!   idempotent by default (a producer id from InitProducerId, an epoch bump on the errors
//!   KIP-360 names).
//! - [`consumer`] — [`Consumer`]: manual assignment or a group subscription, positions,
//!   long-polling fetch, commits.
//! - [`group`] — consumer groups: the assignors (range, cooperative-sticky) and the
//!   membership protocol (join, sync, heartbeats, commits, leave).
//! - `offsets` — [`Offset`] and resolving it with ListOffsets (consumer and admin).
//!
//! Not implemented: transactional producing, KIP-848 group consumers, SASL/TLS.
//!
//! ```no_run
//! # async fn demo() -> Result<(), keel_client::ClientError> {
//! use keel_client::{ClientConfig, Consumer, ConsumerConfig, Offset, Producer, ProducerConfig, ProducerRecord};
//! let client = ClientConfig::new("127.0.0.1:9092");
//! let producer = Producer::new(client.clone(), ProducerConfig::default()).await?;
//! let delivery = producer.send(ProducerRecord::new("orders", "hello").key("k1")).await?;
//! let meta = delivery.await?;
//! producer.close().await?;
//! let mut consumer = Consumer::new(client, ConsumerConfig::default()).await?;
//! consumer.assign("orders", &[meta.partition], Offset::At(meta.offset)).await?;
//! let records = consumer.poll().await?;
//! # let _ = records; Ok(()) }
//! ```

mod accumulator;
pub mod admin;
mod cluster;
pub mod config;
pub mod connection;
pub mod consumer;
pub mod error;
pub mod fetch_session;
pub mod group;
mod offsets;
pub mod partitioner;
pub mod producer;
pub mod record;

pub use admin::{Admin, PartitionProducers, ProducerInfo, TopicDescription, TopicSpec};
pub use cluster::{BrokerInfo, PartitionInfo};
pub use config::{Acks, ClientConfig, Compression, ConsumerConfig, GroupConfig, ProducerConfig};
pub use consumer::{Consumer, Offset};
pub use error::ClientError;
pub use group::{Assignor, GroupDescription, GroupListing, MemberDescription, Rebalance};
pub use producer::{DeliveryFuture, Producer};
pub use record::{ConsumerRecord, ProducerRecord, RecordMetadata};

/// Compile-time check: the handles and their futures can move between tasks.
#[allow(dead_code)]
fn assert_send_sync(admin: &Admin, producer: &Producer, consumer: &mut Consumer) {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: T) {}
    send_sync(admin);
    send_sync(producer);
    send_sync(consumer);
    send(admin.list_topics());
    send(producer.send(ProducerRecord::new("t", "v")));
    send(producer.flush());
    send(consumer.poll());
}
