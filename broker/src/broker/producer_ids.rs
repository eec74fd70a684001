//! Producer ids for InitProducerId: blocks of ids from the controller (AllocateProducerIds;
//! the controller records each block in the metadata log, so no id is handed out twice,
//! across brokers and restarts), handed out one by one. A broker takes a new block when its
//! current one runs out, and only once its own metadata shows the block: every other broker
//! then learns of it about as soon, and can tell an issued id from a forged one.
//!
//! A broker takes its first block as soon as it is registered ([`ProducerIds::prefetch`]),
//! not at the first InitProducerId: idempotent producers (every modern client's default)
//! can then start while the controller quorum has no leader.

use super::controller_link::{ControllerLink, LinkError, RPC_TIMEOUT};
use super::metadata_follower::MetadataFollower;
use kafka_protocol::messages::allocate_producer_ids_request::AllocateProducerIdsRequest;
use kafka_protocol::messages::BrokerId;
use std::time::Duration;
use tokio::sync::Mutex;

/// How long a new block may take to reach this broker's metadata.
const BLOCK_VISIBLE_WAIT: Duration = Duration::from_secs(5);

/// The block being handed out: `[next, end)`.
#[derive(Debug, Default)]
pub(crate) struct ProducerIds {
    block: Mutex<(i64, i64)>,
}

impl ProducerIds {
    /// The next unused producer id, taking a block from the controller when needed.
    pub(crate) async fn next(
        &self,
        node_id: i32,
        link: &ControllerLink,
        metadata: &MetadataFollower,
    ) -> Result<i64, LinkError> {
        let mut block = self.block.lock().await;
        Self::fill(&mut block, node_id, link, metadata).await?;
        let id = block.0;
        block.0 += 1;
        Ok(id)
    }

    /// Takes a block now if there is none left, retrying (with back-off) until it has one or
    /// `stop`; run once this broker is registered.
    pub(crate) async fn prefetch(
        &self,
        node_id: i32,
        link: &ControllerLink,
        metadata: &MetadataFollower,
        stop: &tokio_util::sync::CancellationToken,
    ) {
        use super::controller_link::{backoff, sleep_or_stop};
        let mut attempt = 0;
        while !stop.is_cancelled() {
            let pause = if link.broker_epoch() < 0 {
                Duration::from_millis(50) // not registered yet
            } else {
                let mut block = self.block.lock().await;
                match Self::fill(&mut block, node_id, link, metadata).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::debug!(node = node_id, error = %e, "producer id prefetch");
                        attempt += 1;
                        backoff(attempt)
                    }
                }
            };
            if sleep_or_stop(stop, pause).await {
                return;
            }
        }
    }

    /// Takes a new block into `block` if it is used up.
    async fn fill(
        block: &mut (i64, i64),
        node_id: i32,
        link: &ControllerLink,
        metadata: &MetadataFollower,
    ) -> Result<(), LinkError> {
        if block.0 >= block.1 {
            let call = "allocate producer ids";
            let req = AllocateProducerIdsRequest::default()
                .with_broker_id(BrokerId(node_id))
                .with_broker_epoch(link.broker_epoch());
            let resp = link.call(call, &req, 0, RPC_TIMEOUT).await?;
            if resp.error_code != 0 {
                return Err(LinkError::Refused {
                    call,
                    code: resp.error_code,
                });
            }
            let start = resp.producer_id_start.0;
            let end = start + i64::from(resp.producer_id_len.max(0));
            let mut image = metadata.subscribe();
            let visible = tokio::time::timeout(
                BLOCK_VISIBLE_WAIT,
                image.wait_for(|i| i.next_producer_id() >= end),
            )
            .await;
            if !matches!(visible, Ok(Ok(_))) {
                tracing::warn!(
                    node = node_id,
                    start,
                    end,
                    "a producer id block did not reach this broker's metadata in time"
                );
            }
            tracing::info!(node = node_id, start, end, "took a block of producer ids");
            *block = (start, end);
        }
        Ok(())
    }
}
