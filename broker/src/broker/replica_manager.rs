//! The replica manager: turns each new metadata image into changes of this broker's
//! replicas (open, become leader or follower, remove), keeps one fetcher per leader it
//! follows, decides whether the broker is ready to be unfenced, and checks the ISRs of the
//! partitions it leads.

use super::controller_link::{sleep_or_stop, ControllerLink};
use super::fetcher::{self, FetchSettings, FetcherContext};
use super::metadata_follower::MetadataFollower;
use crate::controller::{diff, MetadataImage, ReplicaChange};
use crate::partition::registry::Topics;
use crate::partition::role::Transition;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub(crate) struct ReplicaManager {
    node_id: i32,
    registry: Arc<Topics>,
    /// The metadata offset whose replica changes this broker has applied (-1: none yet).
    applied: watch::Sender<i64>,
    /// Whether this broker may be unfenced: it has applied the metadata up to its own
    /// registration and no replica is repairing data lost in an unclean stop. Until then
    /// heartbeats ask to stay fenced, so it neither leads nor counts in an ISR.
    ready: AtomicBool,
    /// Some replica here is repairing data lost in an unclean stop (so `ready` is false).
    repairing: AtomicBool,
    /// Wakes the manager to look at readiness again (a repair was requested).
    recheck: Notify,
}

impl ReplicaManager {
    pub(crate) fn new(node_id: i32, registry: Arc<Topics>) -> Self {
        Self {
            node_id,
            registry,
            applied: watch::Sender::new(-1),
            ready: AtomicBool::new(false),
            repairing: AtomicBool::new(false),
            recheck: Notify::new(),
        }
    }

    /// Watches the metadata offset up to which replica changes are applied here.
    pub(crate) fn applied(&self) -> watch::Receiver<i64> {
        self.applied.subscribe()
    }

    /// See `ready`.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// See `repairing`.
    pub(crate) fn is_repairing(&self) -> bool {
        self.repairing.load(Ordering::Acquire)
    }

    /// A replica asked for a repair: look at readiness now (a ready broker otherwise waits
    /// for a metadata change), so the broker asks to be fenced without delay.
    pub(crate) fn recheck_readiness(&self) {
        self.recheck.notify_one();
    }

    /// Applies image changes to this broker's replicas, and keeps one fetcher per leader.
    pub(crate) async fn run(
        self: Arc<Self>,
        metadata: Arc<MetadataFollower>,
        link: Arc<ControllerLink>,
        fetch: FetchSettings,
        stop: CancellationToken,
    ) {
        let mut rx = metadata.subscribe();
        let mut applied = Arc::new(MetadataImage::new());
        let mut fetchers: BTreeMap<i32, (JoinHandle<()>, CancellationToken)> = BTreeMap::new();
        let mut last_ready: Option<(bool, Vec<String>)> = None;
        let mut swept = false;
        loop {
            let new = rx.borrow_and_update().clone();
            // Nothing is applied before the image reaches this broker's own registration:
            // until then it describes the previous incarnation of this broker, and may still
            // name it leader of a partition whose data it lost in a crash. Becoming that
            // leader, even for a moment, would record the stale epoch at the shorter log end
            // and corrupt the replica's epoch history. At the registration the controller has
            // fenced the old incarnation and moved its leaderships away.
            let caught_up = new
                .broker(self.node_id)
                .is_some_and(|b| b.epoch == link.broker_epoch() && new.offset() >= b.registered_at);
            // Removes first (a re-created topic needs its directories back), then the
            // rest. Within each group every change is for a different partition, so they
            // run side by side: a new topic's partitions open (and fsync) concurrently.
            let changes = if caught_up {
                diff(&applied, &new, self.node_id)
            } else {
                Vec::new()
            };
            let (removes, becomes): (Vec<_>, Vec<_>) = changes
                .into_iter()
                .partition(|c| matches!(c, ReplicaChange::Remove { .. }));
            for group in [removes, becomes] {
                let work = group.into_iter().map(|change| {
                    let topics = self.registry.clone();
                    let me = self.node_id;
                    let image = new.clone();
                    tokio::task::spawn_blocking(move || apply_change(&topics, &image, me, change))
                });
                for outcome in futures::future::join_all(work).await {
                    match outcome {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::error!(node = self.node_id, error = %e, "applying a replica change failed")
                        }
                        Err(e) => {
                            tracing::error!(node = self.node_id, error = %e, "replica change task panicked")
                        }
                    }
                }
            }
            if caught_up {
                self.applied.send_replace(new.offset());
            }
            // Fenced brokers no longer count toward any HW or ISR of ours.
            for topic in self.registry.all() {
                for r in &topic.replicas {
                    let (_, _, replicas, _) = r.role_view();
                    let fenced = replicas
                        .into_iter()
                        .filter(|&b| b != self.node_id && !new.is_unfenced(b))
                        .collect();
                    r.set_fenced(fenced);
                }
            }
            // Repairs of corrupt batches cut the log once the controller has fenced us (no
            // ISR holds us any more) and the replica follows.
            if !new.is_unfenced(self.node_id) {
                for topic in self.registry.all() {
                    for r in &topic.replicas {
                        if let Some(at) = r.take_repair() {
                            let r = r.clone();
                            let cut = tokio::task::spawn_blocking(move || fetcher::repair(&r, at));
                            if let Ok(Err(e)) = cut.await {
                                tracing::error!(node = self.node_id, topic = %topic.meta.name, error = %e, "cutting the log at a corrupt batch failed");
                            }
                        }
                    }
                }
            }
            // A replica that is the partition's only one has nobody to fetch lost data
            // from: it serves what it has (said once, loudly) instead of keeping the
            // broker fenced and the partition offline forever.
            for topic in self.registry.all() {
                for r in &topic.replicas {
                    r.forgo_repair_if_alone(self.node_id);
                }
            }
            let repairing: Vec<String> = self
                .registry
                .all()
                .iter()
                .flat_map(|t| t.replicas.iter())
                .filter(|r| r.is_repairing())
                .map(|r| format!("{}-{}", r.topic, r.partition))
                .collect();
            if caught_up && !swept {
                // The image now covers everything up to our registration: any partition
                // directory it does not assign here is a leftover (deleted topic, moved
                // replica) from while this broker was down.
                swept = true;
                let topics = self.registry.clone();
                let image = new.clone();
                let me = self.node_id;
                let removed = tokio::task::spawn_blocking(move || {
                    topics.remove_unassigned_dirs(|topic, partition| {
                        image.topic(topic).is_some_and(|t| {
                            t.partitions
                                .get(partition as usize)
                                .is_some_and(|p| p.replicas.contains(&me))
                        })
                    })
                })
                .await
                .unwrap_or(0);
                if removed > 0 {
                    tracing::info!(
                        node = self.node_id,
                        removed,
                        "removed unassigned replica directories"
                    );
                }
            }
            let ready = caught_up && repairing.is_empty();
            self.repairing
                .store(!repairing.is_empty(), Ordering::Release);
            if self.ready.swap(ready, Ordering::AcqRel) != ready {
                link.wake_heartbeat();
            }
            if last_ready.as_ref() != Some(&(ready, repairing.clone())) {
                tracing::info!(node = self.node_id, ready, ?repairing, "ready to serve");
                last_ready = Some((ready, repairing));
            }
            if caught_up {
                applied = new;
            }
            // One fetcher per broker that leads something we follow.
            let mut leaders: Vec<i32> = self
                .registry
                .all()
                .iter()
                .flat_map(|t| t.replicas.iter())
                .filter(|r| !r.is_deleted() && !r.is_leader())
                .map(|r| r.role_view().0)
                .filter(|&l| l >= 0)
                .collect();
            leaders.sort_unstable();
            leaders.dedup();
            fetchers.retain(|leader, (task, stop)| {
                let keep = leaders.contains(leader) && !task.is_finished();
                if !keep {
                    stop.cancel();
                }
                keep
            });
            for leader in leaders {
                fetchers.entry(leader).or_insert_with(|| {
                    let stop = stop.child_token();
                    let ctx = FetcherContext {
                        node_id: self.node_id,
                        settings: fetch,
                        registry: self.registry.clone(),
                        metadata: metadata.clone(),
                        link: link.clone(),
                        applied: self.applied.subscribe(),
                    };
                    let task = tokio::spawn(fetcher::run(ctx, leader, stop.clone()));
                    (task, stop)
                });
            }
            // Not ready yet: a repairing replica catches up without any metadata change,
            // so look again shortly even if the image stays the same.
            let recheck = if self.ready.load(Ordering::Acquire) {
                Duration::from_secs(3600)
            } else {
                Duration::from_millis(200)
            };
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep(recheck) => {}
                _ = self.recheck.notified() => {}
                _ = stop.cancelled() => break,
            }
        }
        for (_, (task, stop)) in fetchers {
            stop.cancel();
            let _ = task.await;
        }
    }

    /// Leaders check their followers every `period` (half `replica.lag.time.max.ms`) and
    /// propose ISR changes through `link`.
    pub(crate) async fn isr_loop(
        self: Arc<Self>,
        metadata: Arc<MetadataFollower>,
        link: Arc<ControllerLink>,
        period: Duration,
        stop: CancellationToken,
    ) {
        loop {
            if sleep_or_stop(&stop, period).await {
                return;
            }
            for topic in self.registry.all() {
                for r in &topic.replicas {
                    if let Some(isr) = r.isr_check() {
                        link.propose_isr(r.clone(), topic.meta.id, isr, metadata.image());
                    }
                }
            }
        }
    }
}

fn apply_change(
    topics: &Topics,
    image: &MetadataImage,
    me: i32,
    change: ReplicaChange,
) -> Result<(), crate::BrokerError> {
    match change {
        ReplicaChange::Remove {
            topic,
            topic_id,
            partition,
        } => {
            topics.remove_replica(&topic, topic_id, partition);
        }
        ReplicaChange::BecomeLeader {
            topic,
            topic_id,
            partition,
            record,
        }
        | ReplicaChange::BecomeFollower {
            topic,
            topic_id,
            partition,
            record,
        } => {
            let configs = image
                .topic(&topic)
                .map(|t| t.configs.clone())
                .unwrap_or_default();
            let replica = topics.ensure_replica(&topic, topic_id, partition, &configs)?;
            let transition = replica.apply_record(&record);
            if transition != Transition::IsrOnly {
                tracing::info!(
                    node = me,
                    topic,
                    partition,
                    leader = record.leader,
                    epoch = record.leader_epoch,
                    isr = ?record.isr,
                    "{}",
                    if transition == Transition::BecameLeader { "became leader" } else { "became follower" }
                );
            }
        }
    }
    Ok(())
}
