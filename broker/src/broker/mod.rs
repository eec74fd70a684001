//! The broker role: how a node that holds partition replicas takes part in the cluster.
//!
//! - [`controller_link`]: the link to the controller: registration, heartbeats, controlled
//!   shutdown, AlterPartition.
//! - [`metadata_follower`]: follows the controller's metadata log into this broker's
//!   [`MetadataImage`].
//! - [`replica_manager`]: turns image changes into replica roles, runs one fetcher per
//!   leader, decides readiness, checks the ISRs of the partitions led here.
//! - [`fetcher`]: the follower fetcher, one task per leader broker.
//! - [`producer_ids`]: blocks of producer ids from the controller, for InitProducerId.
//!
//! [`BrokerRuntime`] ties them together for the node and the Kafka handlers. Every loop
//! backs off on failure (bounded, counted) and stops with the broker.

pub(crate) mod controller_link;
pub(crate) mod create_topics;
pub(crate) mod fetcher;
pub(crate) mod metadata_follower;
pub(crate) mod producer_ids;
pub(crate) mod replica_manager;

use crate::config::BrokerConfig;
use crate::controller::MetadataImage;
use crate::partition::registry::Topics;
use crate::partition::Replica;
use controller_link::{ControllerLink, HeartbeatStatus};
use fetcher::FetchSettings;
use keel_storage::FlushPolicy;
use metadata_follower::MetadataFollower;
use replica_manager::ReplicaManager;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub(crate) struct BrokerRuntime {
    pub(crate) node_id: i32,
    pub(crate) link: Arc<ControllerLink>,
    pub(crate) metadata: Arc<MetadataFollower>,
    pub(crate) replicas: Arc<ReplicaManager>,
    pub(crate) producer_ids: Arc<producer_ids::ProducerIds>,
    config: BrokerConfig,
    stop: CancellationToken,
}

impl BrokerRuntime {
    /// A broker over `registry` that registers `advertised` with the controller `voters`
    /// (id and `host:port` each).
    pub(crate) fn new(
        config: BrokerConfig,
        advertised: (String, i32),
        voters: Vec<(i32, String)>,
        registry: Arc<Topics>,
        stop: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            node_id: config.node_id,
            link: Arc::new(ControllerLink::new(
                config.node_id,
                config.cluster_id.clone(),
                advertised,
                voters,
            )),
            metadata: Arc::new(MetadataFollower::new(config.node_id)),
            replicas: Arc::new(ReplicaManager::new(config.node_id, registry)),
            producer_ids: Arc::new(producer_ids::ProducerIds::default()),
            config,
            stop,
        })
    }

    /// Starts the broker's loops: heartbeats, the metadata follower, the replica manager
    /// and the ISR checks.
    pub(crate) fn spawn(&self) -> Vec<JoinHandle<()>> {
        let c = &self.config;
        let status = {
            let (metadata, replicas) = (self.metadata.clone(), self.replicas.clone());
            move || HeartbeatStatus {
                metadata_offset: metadata.image().offset(),
                want_fence: !replicas.is_ready(),
            }
        };
        let fetch = FetchSettings {
            wait_ms: c.replica_fetch_wait_max_ms,
            partition_max_bytes: c.replica_fetch_max_bytes,
            response_max_bytes: c.replica_fetch_response_max_bytes,
            flush_always: c.log.flush_policy == FlushPolicy::Always,
        };
        let heartbeat = Duration::from_millis(c.heartbeat_interval_ms.max(10));
        let isr_period = Duration::from_millis((c.replica_lag_time_max_ms / 2).clamp(50, 5_000));
        vec![
            tokio::spawn(
                self.link
                    .clone()
                    .heartbeat_loop(status, heartbeat, self.stop.clone()),
            ),
            tokio::spawn(
                self.metadata
                    .clone()
                    .run(self.link.clone(), self.stop.clone()),
            ),
            tokio::spawn(self.replicas.clone().run(
                self.metadata.clone(),
                self.link.clone(),
                fetch,
                self.stop.clone(),
            )),
            tokio::spawn(self.replicas.clone().isr_loop(
                self.metadata.clone(),
                self.link.clone(),
                isr_period,
                self.stop.clone(),
            )),
            tokio::spawn({
                let (ids, link, metadata) = (
                    self.producer_ids.clone(),
                    self.link.clone(),
                    self.metadata.clone(),
                );
                let (node, stop) = (self.node_id, self.stop.clone());
                async move { ids.prefetch(node, &link, &metadata, &stop).await }
            }),
        ]
    }

    /// The latest metadata image.
    pub(crate) fn image(&self) -> Arc<MetadataImage> {
        self.metadata.image()
    }

    /// Watches the metadata offset up to which replica changes are applied here.
    pub(crate) fn applied(&self) -> watch::Receiver<i64> {
        self.replicas.applied()
    }

    /// Sends a proposed ISR of a partition led here to the controller.
    pub(crate) fn propose_isr(&self, replica: Arc<Replica>, topic_id: uuid::Uuid, isr: Vec<i32>) {
        self.link
            .propose_isr(replica, topic_id, isr, self.metadata.image());
    }

    /// Whether this broker serves: registered, caught up with the metadata up to its
    /// registration, and unfenced, or fenced only because it asks to be (a replica is
    /// repairing data lost here and fetches it from its leader meanwhile).
    fn is_serving(&self) -> bool {
        let image = self.image();
        image.broker(self.node_id).is_some_and(|b| {
            b.epoch == self.link.broker_epoch()
                && image.offset() >= b.registered_at
                && (!b.fenced || self.replicas.is_repairing())
        })
    }

    /// Resolves once [`Self::is_serving`].
    pub(crate) async fn serving(&self) {
        let mut image = self.metadata.subscribe();
        let mut waited = 0u32;
        while !self.is_serving() {
            // Also polled: the broker epoch and readiness change outside the image.
            let _ = tokio::time::timeout(Duration::from_millis(50), image.changed()).await;
            waited += 1;
            if waited.is_multiple_of(200) {
                tracing::info!(node = self.node_id, controller = %self.link.controller_addr(), "still waiting to be registered and unfenced");
            }
        }
    }

    /// See [`ControllerLink::controlled_shutdown`].
    pub(crate) async fn controlled_shutdown(&self, limit: Duration) {
        self.link
            .controlled_shutdown(self.image().offset(), limit)
            .await;
    }
}
