//! The metadata follower: reads the committed metadata log from a controller voter with
//! long-polling Fetch requests from the offset after the last entry applied, replays the
//! records into this broker's [`MetadataImage`] and publishes each new image. When the
//! entries it needs are only in a snapshot now (a new broker, or one down for long), it
//! fetches the snapshot (FetchSnapshot) and starts from its image. Each answer names the
//! quorum's leader, which the [`ControllerLink`] sends its commands to.

use super::controller_link::{backoff, error_name, sleep_or_stop, ControllerLink, LinkError};
use crate::controller::METADATA_TOPIC;
use crate::controller::{decode_batches, MetadataImage, MetadataLogError, MetadataRecord};
use crate::metrics as m;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::fetch_snapshot_request::{
    FetchSnapshotRequest, PartitionSnapshot, SnapshotId, TopicSnapshot,
};
use kafka_protocol::messages::{BrokerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How many removed topic ids a broker remembers (16 bytes each).
const REMOVED_TOPICS_KEPT: usize = 1024;
/// The largest metadata read at once.
const MAX_READ_BYTES: i32 = 4 << 20;
/// How long a metadata fetch waits at the controller for new records.
const LONG_POLL_MS: i32 = 500;

/// Why a round of following the metadata log failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FollowError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("the metadata fetch answer names no partition")]
    EmptyAnswer,
    #[error("the controller refused the metadata fetch: {}", error_name(*.0))]
    Refused(i16),
    #[error(transparent)]
    Decode(#[from] MetadataLogError),
    #[error("the metadata snapshot does not decode: {0}")]
    Snapshot(String),
}

/// What one round of following brought.
enum Fetched {
    Entries(Vec<(i64, Vec<MetadataRecord>)>),
    /// The image of a snapshot, to start again from.
    Snapshot(MetadataImage),
}

pub(crate) struct MetadataFollower {
    node_id: i32,
    image: watch::Sender<Arc<MetadataImage>>,
    /// Ids of the topics most recently removed by the metadata (at most
    /// [`REMOVED_TOPICS_KEPT`], oldest first): a forwarded CreateTopics whose topic was
    /// deleted again before this broker saw it learns so here instead of waiting in vain.
    removed_topics: std::sync::Mutex<VecDeque<uuid::Uuid>>,
}

impl MetadataFollower {
    pub(crate) fn new(node_id: i32) -> Self {
        Self {
            node_id,
            image: watch::Sender::new(Arc::new(MetadataImage::new())),
            removed_topics: std::sync::Mutex::new(VecDeque::new()),
        }
    }

    /// The latest image.
    pub(crate) fn image(&self) -> Arc<MetadataImage> {
        self.image.borrow().clone()
    }

    /// Watches the image.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.image.subscribe()
    }

    /// Whether the metadata removed the topic with this id lately (see `removed_topics`).
    pub(crate) fn was_removed(&self, id: uuid::Uuid) -> bool {
        self.removed_topics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&id)
    }

    /// Follows the metadata log through `link` until `stop`.
    pub(crate) async fn run(self: Arc<Self>, link: Arc<ControllerLink>, stop: CancellationToken) {
        let mut image = (*self.image()).clone();
        let mut attempt = 0;
        while !stop.is_cancelled() {
            let fetched = tokio::select! {
                r = self.fetch(&link, image.offset() + 1) => r,
                _ = stop.cancelled() => return,
            };
            match fetched {
                Ok(Fetched::Entries(entries)) => {
                    attempt = 0;
                    if entries.is_empty() {
                        continue;
                    }
                    for (offset, records) in &entries {
                        image.apply_entry(*offset, records);
                        for record in records {
                            if let MetadataRecord::RemoveTopic { id, .. } = record {
                                self.remember_removed(*id);
                            }
                        }
                    }
                    self.image.send_replace(Arc::new(image.clone()));
                }
                Ok(Fetched::Snapshot(snapshot)) => {
                    attempt = 0;
                    tracing::info!(
                        node = self.node_id,
                        offset = snapshot.offset(),
                        "metadata caught up from a snapshot"
                    );
                    for t in image.topics() {
                        if snapshot.topic_by_id(t.id).is_none() {
                            self.remember_removed(t.id);
                        }
                    }
                    image = snapshot;
                    self.image.send_replace(Arc::new(image.clone()));
                }
                Err(e) => {
                    tracing::warn!(node = self.node_id, error = %e, "metadata fetch failed");
                    metrics::counter!(m::CONTROLLER_RETRIES_TOTAL, "call" => "metadata")
                        .increment(1);
                    attempt += 1;
                    if sleep_or_stop(&stop, backoff(attempt)).await {
                        return;
                    }
                }
            }
        }
    }

    fn remember_removed(&self, id: uuid::Uuid) {
        let mut removed = self
            .removed_topics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if removed.len() == REMOVED_TOPICS_KEPT {
            removed.pop_front();
        }
        removed.push_back(id);
    }

    /// One long-polling read of the metadata log from `offset`.
    async fn fetch(&self, link: &ControllerLink, offset: i64) -> Result<Fetched, FollowError> {
        let mut p = FetchPartition::default();
        p.partition = 0;
        p.fetch_offset = offset;
        p.current_leader_epoch = -1;
        p.last_fetched_epoch = -1;
        p.log_start_offset = -1;
        p.partition_max_bytes = MAX_READ_BYTES;
        let mut t = FetchTopic::default();
        t.topic = TopicName(StrBytes::from_static_str(METADATA_TOPIC));
        t.partitions = vec![p];
        let mut req = FetchRequest::default();
        req.replica_id = BrokerId(self.node_id);
        req.max_wait_ms = LONG_POLL_MS;
        req.min_bytes = 1;
        req.max_bytes = MAX_READ_BYTES;
        req.session_epoch = -1;
        req.topics = vec![t];
        let timeout = Duration::from_millis(LONG_POLL_MS as u64) + Duration::from_secs(10);
        let resp = link.long_poll("metadata fetch", &req, 12, timeout).await?;
        let p = resp
            .responses
            .into_iter()
            .flat_map(|t| t.partitions)
            .next()
            .ok_or(FollowError::EmptyAnswer)?;
        if p.current_leader.leader_id.0 >= 0 {
            link.leader_hint(p.current_leader.leader_id.0);
        }
        if p.error_code == ResponseError::OffsetOutOfRange.code() && p.snapshot_id.end_offset > 0 {
            return self
                .fetch_snapshot(link, p.snapshot_id.end_offset, p.snapshot_id.epoch)
                .await
                .map(Fetched::Snapshot);
        }
        if p.error_code != 0 {
            return Err(FollowError::Refused(p.error_code));
        }
        Ok(Fetched::Entries(decode_batches(
            p.records.unwrap_or_default(),
        )?))
    }

    /// Reads the snapshot `(end_offset, epoch)` whole, chunk by chunk, from the voter the
    /// follower reads from.
    async fn fetch_snapshot(
        &self,
        link: &ControllerLink,
        end_offset: i64,
        epoch: i32,
    ) -> Result<MetadataImage, FollowError> {
        let mut data = Vec::new();
        loop {
            let mut id = SnapshotId::default();
            id.end_offset = end_offset;
            id.epoch = epoch;
            let mut p = PartitionSnapshot::default();
            p.partition = 0;
            p.current_leader_epoch = -1;
            p.snapshot_id = id;
            p.position = data.len() as i64;
            let mut t = TopicSnapshot::default();
            t.name = TopicName(StrBytes::from_static_str(METADATA_TOPIC));
            t.partitions = vec![p];
            let mut req = FetchSnapshotRequest::default();
            req.replica_id = BrokerId(self.node_id);
            req.max_bytes = MAX_READ_BYTES;
            req.topics = vec![t];
            let resp = link
                .long_poll("metadata snapshot", &req, 0, Duration::from_secs(10))
                .await?;
            let p = resp
                .topics
                .into_iter()
                .flat_map(|t| t.partitions)
                .next()
                .ok_or(FollowError::EmptyAnswer)?;
            if p.error_code != 0 {
                return Err(FollowError::Refused(p.error_code));
            }
            if p.unaligned_records.is_empty() && (data.len() as i64) < p.size {
                return Err(FollowError::Snapshot(
                    "an empty chunk before the end".into(),
                ));
            }
            data.extend_from_slice(&p.unaligned_records);
            if data.len() as i64 >= p.size {
                break;
            }
        }
        let image: MetadataImage =
            serde_json::from_slice(&data).map_err(|e| FollowError::Snapshot(e.to_string()))?;
        if image.offset() != end_offset - 1 {
            return Err(FollowError::Snapshot(format!(
                "the snapshot ending at {end_offset} holds an image at offset {}",
                image.offset()
            )));
        }
        Ok(image)
    }
}
