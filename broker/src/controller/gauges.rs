//! The controller's gauges: brokers, partitions, offline partitions, metadata log offset.

use crate::metrics::*;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Refreshes the controller's gauges every `interval` until `stop`.
pub(crate) async fn controller_gauges(
    driver: Arc<crate::controller::ControllerDriver>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let s = driver.image().stats();
        metrics::gauge!(CONTROLLER_BROKERS_REGISTERED).set(s.registered as f64);
        metrics::gauge!(CONTROLLER_BROKERS_FENCED).set(s.fenced as f64);
        metrics::gauge!(CONTROLLER_BROKERS_ACTIVE).set((s.registered - s.fenced) as f64);
        metrics::gauge!(CONTROLLER_OFFLINE_PARTITIONS).set(s.offline_partitions as f64);
        metrics::gauge!(CONTROLLER_PARTITIONS).set(s.partitions as f64);
        metrics::gauge!(CONTROLLER_METADATA_LOG_OFFSET).set(s.offset as f64);
    }
}
