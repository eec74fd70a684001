//! Periodic work on every log: recovery-point checkpoints (every
//! `log.flush.offset.checkpoint.interval.ms`, and within a second of a segment roll),
//! time-based segment roll, retention, and the fsync timer of `log.flush.policy=interval`.

use crate::clock::now_ms;
use crate::config::BrokerConfig;
use crate::error::FatalSignal;
use crate::partition::registry::Topics;
use keel_storage::FlushPolicy;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Starts every periodic task; each stops when `stop` is cancelled.
pub(crate) fn spawn_all(
    config: &BrokerConfig,
    topics: Arc<Topics>,
    stop: CancellationToken,
    fatal: FatalSignal,
) -> Vec<JoinHandle<()>> {
    let mut tasks = vec![
        every(
            Duration::from_millis(config.checkpoint_interval_ms.max(100)),
            topics.clone(),
            stop.clone(),
            |topics| {
                for_each_log(topics, "checkpoint", |r| r.log().checkpoint().map(|_| ()));
            },
        ),
        // A roll leaves the recovery point below the sealed segment until a checkpoint; do
        // it within a second, so a crash scans little more than the active segment.
        every(
            Duration::from_secs(1),
            topics.clone(),
            stop.clone(),
            |topics| {
                for_each_log(topics, "checkpoint after a roll", |r| {
                    r.log().checkpoint_if_rolled().map(|_| ())
                });
            },
        ),
        every(
            Duration::from_millis(config.retention_check_interval_ms.clamp(100, 60_000)),
            topics.clone(),
            stop.clone(),
            |topics| {
                let now = now_ms();
                for_each_log(topics, "roll", |r| r.log().maybe_roll(now).map(|_| ()));
                for_each_log(topics, "retention", |r| {
                    let out = r.log().enforce_retention(now)?;
                    if out.segments_deleted > 0 {
                        tracing::info!(topic = %r.topic, partition = r.partition, segments = out.segments_deleted, bytes = out.bytes_deleted, "retention deleted segments");
                    }
                    Ok(())
                });
            },
        ),
    ];
    let expiration_ms = i64::try_from(config.producer_id_expiration_ms).unwrap_or(i64::MAX);
    tasks.push(every(
        Duration::from_millis(config.producer_id_expiration_check_interval_ms.max(100)),
        topics.clone(),
        stop.clone(),
        move |topics| {
            let now = now_ms();
            for_each_log(topics, "producer expiration", |r| {
                let expired = r.log().expire_producers(now, expiration_ms);
                if expired > 0 {
                    tracing::info!(topic = %r.topic, partition = r.partition, expired, "idle producer ids expired");
                }
                Ok(())
            });
        },
    ));
    if let FlushPolicy::Interval { ms } = config.log.flush_policy {
        tasks.push(every(
            Duration::from_millis(ms.max(1)),
            topics,
            stop,
            move |topics| {
                for topic in topics.all() {
                    for r in &topic.replicas {
                        if let Err(e) = r.flush() {
                            if !r.is_deleted() {
                                fatal.raise(format!(
                                    "{}-{}: flush failed: {e}",
                                    r.topic, r.partition
                                ));
                            }
                        }
                    }
                }
            },
        ));
    }
    tasks
}

fn every<F>(
    period: Duration,
    topics: Arc<Topics>,
    stop: CancellationToken,
    work: F,
) -> JoinHandle<()>
where
    F: Fn(&Topics) + Send + Sync + 'static,
{
    let work = Arc::new(work);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let (topics, work) = (topics.clone(), work.clone());
            if let Err(e) = tokio::task::spawn_blocking(move || work(&topics)).await {
                tracing::error!(error = %e, "maintenance task panicked");
            }
        }
    })
}

fn for_each_log(
    topics: &Topics,
    what: &str,
    f: impl Fn(&crate::partition::Replica) -> Result<(), keel_storage::StorageError>,
) {
    for topic in topics.all() {
        for r in &topic.replicas {
            if r.is_deleted() {
                continue;
            }
            if let Err(e) = f(r) {
                tracing::warn!(topic = %r.topic, partition = r.partition, error = %e, "{what} failed");
            }
        }
    }
}
