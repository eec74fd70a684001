//! One partition replica on this broker: its log, its high watermark, and the waits that
//! produce and fetch requests do on them.
//!
//! The rules are pure functions in [`crate::replication`] and [`role`]; this file
//! wires them to the log and to `watch` channels.
//!
//! Durability: under `log.flush.policy=always` a per-partition flusher task fsyncs after
//! appends (one fsync covers every append that arrived while the previous one ran: group
//! commit), and only fsynced offsets count toward the high watermark and toward acks.
//! Under `interval` the leader's log end counts at once and a timer fsyncs.

use crate::controller::PartitionRecord;
use crate::error::BrokerError;
use crate::replication::{follower_high_watermark, IsrChangeResult};
pub(crate) mod acks;
pub(crate) mod flusher;
pub(crate) mod gauges;
pub(crate) mod maintenance;
pub(crate) mod registry;
mod repair;
pub(crate) mod role;
pub(crate) mod wakeups;

use crate::error::FatalSignal;
use acks::{AckError, Acks};
use flusher::{flusher, leader_ack_offset};
use keel_storage::{AppendInfo, FlushPolicy, Log, LogConfig, StorageError};
use repair::Repair;
use role::{Role, Timing, Transition};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, Ordering};
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
pub(crate) use wakeups::{Moved, Wakeups};

pub(crate) struct Replica {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    log: Arc<Log>,
    flush_always: bool,
    /// Log end offset after the latest append (wakes the flusher).
    appended: watch::Sender<i64>,
    /// Offsets below this are on disk (fsynced).
    durable: watch::Sender<i64>,
    /// High watermark: consumers read below it, acks=all waits for it.
    hw: watch::Sender<i64>,
    /// The node's shard wake-ups, and this replica's shard: bumped whenever `hw` or
    /// `appended` wakes its waiters.
    wakeups: Arc<Wakeups>,
    shard: usize,
    deleted: AtomicBool,
    /// The leader epoch this replica leads in, or [`NOT_LEADING`]: mirrors the role for
    /// waiters that must not take the role lock.
    leading_epoch: AtomicI32,
    /// Mirrors `role.epoch_start_offset()`, for consumer fetches.
    epoch_start: AtomicI64,
    min_insync_replicas: i32,
    /// Leader or follower, and the leader's view of its followers.
    role: Mutex<Role>,
    /// Held shared by leader appends for their whole write, exclusively by role changes: a
    /// role change waits for the appends in flight, so no batch is stamped with an epoch
    /// this replica no longer leads; yet the role lock is free during a write, so follower
    /// fetches (which move the HW) never wait on the disk. Taken before the role lock.
    leadership: RwLock<()>,
    /// `replica.lag.time.max.ms`
    lag_time_max_ms: u64,
    /// Acknowledged data this replica lacks and must fetch again before it may lead.
    repair: Repair,
}

/// See [`Replica::following`].
pub(crate) struct FollowingGuard<'a> {
    _role: MutexGuard<'a, Role>,
}

/// Per-replica settings from the topic and broker configs.
#[derive(Debug, Clone)]
pub(crate) struct ReplicaSettings {
    pub(crate) min_insync_replicas: i32,
    /// `replica.lag.time.max.ms`
    pub(crate) lag_time_max_ms: u64,
    /// The node's shard wake-ups, bumped with this replica's HW and log end watches.
    pub(crate) wakeups: Arc<Wakeups>,
}

/// A replica's state for the gauges and for `keel check`, read at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ReplicaStatus {
    pub(crate) leader: i32,
    pub(crate) leader_epoch: i32,
    pub(crate) is_leader: bool,
    pub(crate) replicas: Vec<i32>,
    pub(crate) isr: Vec<i32>,
    pub(crate) min_insync_replicas: i32,
    pub(crate) log_start: i64,
    pub(crate) leo: i64,
    pub(crate) hw: i64,
    pub(crate) size_bytes: u64,
    pub(crate) segments: usize,
    /// When this broker became leader (0 unless leading).
    pub(crate) leader_since_ms: u64,
    /// When this status was read. This and the other times are on the broker's lag clock
    /// (wall-clock milliseconds that skip stalls of the process), so only their differences
    /// mean anything.
    pub(crate) now_ms: u64,
    /// The leader's view of its followers (empty unless leading).
    pub(crate) followers: Vec<FollowerStatus>,
}

/// The leader's view of one follower.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FollowerStatus {
    pub(crate) broker_id: i32,
    /// The follower's last fetch offset, -1 before its first fetch in this leadership.
    pub(crate) leo: i64,
    /// 0 before the first fetch in this leadership.
    pub(crate) last_fetch_ms: u64,
    /// 0 if never caught up in this leadership.
    pub(crate) last_caught_up_ms: u64,
}

/// Why an append as leader was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AppendError {
    #[error("this replica is not the leader")]
    NotLeader,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// `leading_epoch` of a replica that does not lead.
const NOT_LEADING: i32 = -1;

fn leading_epoch(role: &Role) -> i32 {
    if role.is_leader() {
        role.leader_epoch
    } else {
        NOT_LEADING
    }
}

/// Batches appended as leader: where they went, and what an acknowledgement waits for.
#[derive(Debug, Clone)]
pub(crate) struct Appended {
    pub(crate) info: AppendInfo,
    pub(crate) ack: AckTarget,
}

/// What an acknowledgement waits for: the HW reaching `end_offset` (one past the last
/// appended offset) while this replica still leads in `leader_epoch`, the epoch the batches
/// were appended in. A replica that lost its leadership and won it back in a later epoch may
/// have truncated the batches and written others at the same offsets, so a HW it reaches
/// then says nothing about them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AckTarget {
    pub(crate) end_offset: i64,
    pub(crate) leader_epoch: i32,
}

/// Why an acknowledgement wait ended without success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WaitError {
    TimedOut,
    /// The replica was deleted, lost its leadership, or the broker is stopping.
    Gone,
}

impl Replica {
    /// Opens (recovering if needed) the log in `dir` and starts its flusher.
    #[allow(clippy::too_many_arguments)] // identity, storage, settings, role, lifecycle
    pub(crate) fn open(
        topic: &str,
        partition: i32,
        dir: PathBuf,
        config: LogConfig,
        settings: ReplicaSettings,
        role: Role,
        stop: &CancellationToken,
        fatal: &FatalSignal,
    ) -> Result<Arc<Self>, BrokerError> {
        let flush_always = config.flush_policy == FlushPolicy::Always;
        let started = std::time::Instant::now();
        let log = Arc::new(Log::open(&dir, config)?);
        let open_ms = started.elapsed().as_millis() as u64;
        let leo = log.log_end_offset();
        let durable = log.durable_end_offset();
        let info = log.recovery_info();
        let must_reach = info.checkpointed_hw.filter(|_| info.hw_above_leo);
        if info.hw_above_leo {
            // The broker stays fenced (no leadership, no ISR) until this replica has caught
            // up from its leader; the only replica of a partition can only say so.
            tracing::error!(
                topic,
                partition,
                leo,
                checkpointed_hw = ?info.checkpointed_hw,
                "recovered log ends below its checkpointed high watermark: acknowledged data was lost here"
            );
        }
        tracing::info!(
            topic,
            partition,
            log_start = log.log_start_offset(),
            leo,
            clean = info.clean_shutdown,
            scanned_segments = info.scanned_segments,
            truncated_bytes = info.truncated_bytes,
            open_ms,
            "opened replica"
        );
        // The HW starts from the checkpoint; the ISR (as leader) or the leader (as
        // follower) moves it once the metadata gives this replica its role.
        let hw = log.high_watermark();
        let replica = Arc::new(Self {
            topic: Arc::from(topic),
            partition,
            log,
            flush_always,
            appended: watch::Sender::new(leo),
            durable: watch::Sender::new(durable),
            hw: watch::Sender::new(hw),
            shard: Wakeups::shard_of(topic, partition),
            wakeups: settings.wakeups,
            deleted: AtomicBool::new(false),
            leading_epoch: AtomicI32::new(leading_epoch(&role)),
            epoch_start: AtomicI64::new(role.epoch_start_offset()),
            min_insync_replicas: settings.min_insync_replicas,
            role: Mutex::new(role),
            leadership: RwLock::new(()),
            lag_time_max_ms: settings.lag_time_max_ms,
            repair: Repair::new(must_reach),
        });
        if flush_always {
            tokio::spawn(flusher(replica.clone(), stop.clone(), fatal.clone()));
        }
        Ok(replica)
    }

    pub(crate) fn log(&self) -> &Arc<Log> {
        &self.log
    }

    fn role(&self) -> MutexGuard<'_, Role> {
        self.role.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn leader_epoch(&self) -> i32 {
        self.role().leader_epoch
    }

    /// Holds the role while a follower fetch's answer is applied, if this replica still
    /// follows `leader` in `leader_epoch` (the epoch the fetch was sent for); `None` if it
    /// has moved on. A role change waits until the guard is dropped, so nothing an old
    /// leadership sent (batches, a truncation, a HW) lands in a replica that has since become
    /// leader or follows someone else: a new leader's epoch would otherwise start below
    /// batches appended after it, and its epoch history differ from its followers'.
    pub(crate) fn following(&self, leader: i32, leader_epoch: i32) -> Option<FollowingGuard<'_>> {
        let role = self.role();
        (!role.is_leader() && role.leader == leader && role.leader_epoch == leader_epoch)
            .then_some(FollowingGuard { _role: role })
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.role().is_leader()
    }

    fn is_leading(&self) -> bool {
        self.leading_epoch.load(Ordering::Acquire) != NOT_LEADING
    }

    /// Whether this replica leads in `leader_epoch` (not an earlier or a later one).
    fn leads_in(&self, leader_epoch: i32) -> bool {
        self.leading_epoch.load(Ordering::Acquire) == leader_epoch
    }

    /// (leader, leader epoch, replicas, ISR) as this replica knows them.
    pub(crate) fn role_view(&self) -> (i32, i32, Vec<i32>, Vec<i32>) {
        let r = self.role();
        (r.leader, r.leader_epoch, r.replicas.clone(), r.isr.clone())
    }

    /// The replica's state for metrics and checks.
    pub(crate) fn status(&self) -> ReplicaStatus {
        let (role, hw) = {
            let role = self.role();
            let followers = role
                .followers()
                .iter()
                .map(|f| FollowerStatus {
                    broker_id: f.broker_id(),
                    leo: f.leo(),
                    last_fetch_ms: f.last_fetch_ms(),
                    last_caught_up_ms: f.last_caught_up_ms(),
                })
                .collect();
            let status = ReplicaStatus {
                leader: role.leader,
                leader_epoch: role.leader_epoch,
                is_leader: role.is_leader(),
                replicas: role.replicas.clone(),
                isr: role.isr.clone(),
                leader_since_ms: role.leader_since_ms,
                now_ms: self.now_ms(),
                followers,
                ..ReplicaStatus::default()
            };
            (status, self.high_watermark())
        };
        ReplicaStatus {
            min_insync_replicas: self.min_insync_replicas,
            log_start: self.log.log_start_offset(),
            leo: self.log.log_end_offset(),
            hw,
            size_bytes: self.log.size_bytes(),
            segments: self.log.segment_count(),
            ..role
        }
    }

    /// True while this replica lacks data it had acknowledged (lost in an unclean stop, or
    /// about to be cut at a corrupt batch): its broker stays fenced meanwhile.
    pub(crate) fn is_repairing(&self) -> bool {
        self.repair.is_pending(self.log.log_end_offset())
    }

    /// A replica whose partition has no other replica cannot get lost data back: it stops
    /// waiting for it (logged as data loss) and may lead with what it has.
    pub(crate) fn forgo_repair_if_alone(&self, me: i32) {
        if !self.is_repairing() || self.role().replicas != [me] {
            return;
        }
        let lost_from = self.log.log_end_offset();
        let wanted = self.repair.forgo();
        tracing::error!(
            topic = %self.topic,
            partition = self.partition,
            lost_from,
            wanted,
            "the only replica of this partition lost acknowledged data and has nobody to \
             fetch it from: serving what is left"
        );
    }

    /// Asks for the log to be cut at `bad` (a batch that fails its CRC check) and fetched
    /// again from the leader. The cut waits until the broker is fenced and this replica
    /// follows ([`Self::take_repair`]): a replica still in an ISR must not lack data it
    /// acknowledged. Until it is back at today's HW it neither leads nor joins an ISR.
    pub(crate) fn request_repair(&self, bad: i64) {
        self.repair.request(bad, self.high_watermark());
    }

    /// The offset to cut at, if a repair is pending and this replica is a follower; the
    /// request is consumed.
    pub(crate) fn take_repair(&self) -> Option<i64> {
        if self.is_leader() || self.is_deleted() {
            return None;
        }
        self.repair.take_cut()
    }

    pub(crate) fn partition_epoch(&self) -> i32 {
        self.role().partition_epoch
    }

    pub(crate) fn isr_size(&self) -> usize {
        self.role().isr.len()
    }

    /// The log end offset (followers read up to it).
    pub(crate) fn subscribe_leo(&self) -> watch::Receiver<i64> {
        self.appended.subscribe()
    }

    /// The HW to show consumers; `None` while this is a new leader whose HW has not yet
    /// reached the log end it started its epoch with. Until then the HW may be below one
    /// the previous leader already showed (it learns the followers' ends only from their
    /// next fetches), and a consumer must never see the HW go back: it is asked to retry.
    pub(crate) fn consumer_high_watermark(&self) -> Option<i64> {
        let start = self.epoch_start.load(Ordering::Acquire);
        let hw = self.high_watermark();
        (hw >= start).then_some(hw)
    }

    pub(crate) fn high_watermark(&self) -> i64 {
        *self.hw.borrow()
    }

    pub(crate) fn subscribe_hw(&self) -> watch::Receiver<i64> {
        self.hw.subscribe()
    }

    pub(crate) fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Whether batches asking for `acks` may be appended now: the acks rule before the
    /// append ([`acks::may_append`]).
    pub(crate) fn may_append(&self, acks: Acks) -> Result<(), AckError> {
        acks::may_append(acks, self.isr_size(), self.min_insync_replicas_count())
    }

    /// Waits until the batches of `target` are acknowledged at the level `acks` asks for,
    /// then answers by the acks rule ([`acks::outcome`]).
    pub(crate) async fn acknowledged(
        &self,
        acks: Acks,
        target: AckTarget,
        timeout: Duration,
    ) -> Result<(), AckError> {
        let waited = self.wait_acked(acks, target, timeout).await;
        acks::outcome(
            acks,
            waited,
            target.end_offset,
            self.high_watermark(),
            self.isr_size(),
            self.min_insync_replicas_count(),
        )
    }

    fn min_insync_replicas_count(&self) -> usize {
        self.min_insync_replicas.max(1) as usize
    }

    /// Appends a produce request's batches as leader. Returns once the bytes are in the
    /// log (page cache); acknowledgement waits are separate ([`Replica::acknowledged`]).
    pub(crate) fn append(&self, records: &[u8]) -> Result<Appended, AppendError> {
        let leadership = self.leadership.read().unwrap_or_else(|p| p.into_inner());
        let leader_epoch = {
            let role = self.role();
            if !role.is_leader() {
                return Err(AppendError::NotLeader);
            }
            role.leader_epoch
        };
        let info = self.log.append_as_leader(records, leader_epoch)?;
        drop(leadership);
        self.appended.send_replace(info.log_end_offset);
        self.moved(Moved::LogEnd);
        if !self.flush_always {
            self.advance_hw();
        }
        let ack = AckTarget {
            end_offset: info.last_offset + 1,
            leader_epoch,
        };
        Ok(Appended { info, ack })
    }

    /// Waits until the batches of `target` are acknowledged at the level `acks` asks for: on
    /// the leader (durable under `always`), or below the high watermark for `acks=all` —
    /// in both cases while this replica still leads in the epoch they were appended in.
    async fn wait_acked(
        &self,
        acks: Acks,
        target: AckTarget,
        timeout: Duration,
    ) -> Result<(), WaitError> {
        let AckTarget {
            end_offset,
            leader_epoch,
        } = target;
        let mut rx = if acks == Acks::All || !self.flush_always {
            self.hw.subscribe()
        } else {
            self.durable.subscribe()
        };
        let reached = tokio::time::timeout(timeout, async {
            // A lost leadership ends the wait too: the new leader may not keep the batch. The
            // wait may start late (the future is first polled after the append), so it checks
            // the epoch, not only "leading": leading again in a later epoch is no success.
            rx.wait_for(|&v| v >= end_offset || self.is_deleted() || !self.leads_in(leader_epoch))
                .await
                .is_ok()
        })
        .await;
        match reached {
            Ok(true) if !self.is_deleted() && self.leads_in(leader_epoch) => Ok(()),
            Ok(_) => Err(WaitError::Gone),
            Err(_) => Err(WaitError::TimedOut),
        }
    }

    /// Flushes everything appended so far (for `interval` policy and shutdown).
    pub(crate) fn flush(&self) -> Result<(), StorageError> {
        let durable = self.log.flush()?;
        self.durable.send_replace(durable);
        Ok(())
    }

    fn leader_acked(&self) -> i64 {
        leader_ack_offset(
            self.flush_always,
            self.log.log_end_offset(),
            *self.durable.borrow(),
        )
    }

    /// After the durable offset moved: a leader's HW may follow. A follower's HW comes from
    /// its leader, and its role lock is held by the fetcher for the whole append and fsync,
    /// so it is not touched here (a runtime worker would wait out the fsync). A replica that
    /// becomes leader recomputes its HW from the durable offset set before this.
    fn durable_moved(&self) {
        if self.is_leading() {
            self.advance_hw();
        }
    }

    /// Recomputes a leader's high watermark (a follower's comes from its leader).
    fn advance_hw(&self) {
        let role = self.role();
        let leo = self.log.log_end_offset();
        let (acked, min_isr) = (
            self.leader_acked(),
            self.min_insync_replicas.max(1) as usize,
        );
        let t = self.timing();
        let moved = self.hw.send_if_modified(|hw| {
            let new = role.high_watermark(*hw, acked, leo, min_isr, t, |id| role.is_eligible(id));
            let moved = new != *hw;
            *hw = new;
            moved
        });
        drop(role);
        if moved {
            self.moved(Moved::HighWatermark);
        }
        self.log.set_high_watermark(self.high_watermark());
    }

    /// Applies the partition's record from the metadata image (leader, epoch, ISR).
    pub(crate) fn apply_record(&self, record: &PartitionRecord) -> Transition {
        let leadership = self.leadership.write().unwrap_or_else(|p| p.into_inner());
        let transition = {
            let mut role = self.role();
            let t = role.apply(record, self.log.log_end_offset(), self.now_ms());
            self.leading_epoch
                .store(leading_epoch(&role), Ordering::Release);
            self.epoch_start
                .store(role.epoch_start_offset(), Ordering::Release);
            t
        };
        if transition == Transition::BecameLeader {
            if let Err(e) = self.log.assign_epoch(record.leader_epoch) {
                tracing::warn!(topic = %self.topic, partition = self.partition, error = %e, "recording the new leader epoch");
            }
        }
        drop(leadership);
        if transition != Transition::BecameFollower {
            self.advance_hw();
        }
        // Wake waiters so produce and fetch requests re-check leadership.
        self.hw.send_modify(|_| {});
        self.moved(Moved::HighWatermark);
        transition
    }

    /// The leader's side of a follower fetch: records the follower's position, moves the
    /// HW, and returns an ISR change to propose, if one is due.
    pub(crate) fn follower_fetched(&self, follower: i32, fetch_offset: i64) -> Option<Vec<i32>> {
        let now = self.now_ms();
        let leo = self.log.log_end_offset();
        {
            let mut role = self.role();
            role.follower_mut(follower)?
                .on_fetch(fetch_offset, leo, now);
        }
        self.advance_hw();
        let hw = self.high_watermark();
        let t = Timing {
            now_ms: now,
            lag_time_max_ms: self.lag_time_max_ms,
        };
        let mut role = self.role();
        let fenced = role.fenced.clone();
        role.propose_isr(hw, leo, t, |id| !fenced.contains(&id))
    }

    /// A periodic check on a leader: an ISR change to propose (lagging followers out).
    pub(crate) fn isr_check(&self) -> Option<Vec<i32>> {
        let hw = self.high_watermark();
        let leo = self.log.log_end_offset();
        let t = self.timing();
        let mut role = self.role();
        let fenced = role.fenced.clone();
        role.propose_isr(hw, leo, t, |id| !fenced.contains(&id))
    }

    /// The brokers among this partition's replicas that the controller has fenced.
    pub(crate) fn set_fenced(&self, fenced: Vec<i32>) {
        let changed = {
            let mut role = self.role();
            let changed = role.fenced != fenced;
            role.fenced = fenced;
            changed
        };
        if changed {
            self.advance_hw();
        }
    }

    /// Now on the lag clock, stepping at most half the lag limit: the ISR check period, so
    /// a running broker's checks alone keep the clock at pace (50 ms at least, the shortest
    /// period the check loop uses).
    fn now_ms(&self) -> u64 {
        crate::clock::lag_clock_ms((self.lag_time_max_ms / 2).max(50))
    }

    fn timing(&self) -> Timing {
        Timing {
            now_ms: self.now_ms(),
            lag_time_max_ms: self.lag_time_max_ms,
        }
    }

    /// The controller's answer to a proposed ISR change.
    pub(crate) fn isr_change_done(&self, result: IsrChangeResult) {
        self.role().isr_change_done(result);
        self.advance_hw();
    }

    /// A follower's HW: the leader's, clamped to this log (only after truncating and
    /// appending what the same fetch returned).
    pub(crate) fn set_follower_hw(&self, leader_hw: i64) {
        let hw = follower_high_watermark(
            leader_hw,
            self.log.log_start_offset(),
            self.log.log_end_offset(),
        );
        // No shard wake-up: a follower replica answers fetches with an error at once, so
        // no fetch waits on it (waking the shard woke every fetch in it for nothing).
        self.hw.send_replace(hw);
        self.log.set_high_watermark(hw);
    }

    /// After a follower append, truncation or flush: wakes the flusher and waiters.
    pub(crate) fn follower_appended(&self) {
        // No shard wake-up, as in `set_follower_hw`.
        self.appended.send_replace(self.log.log_end_offset());
    }

    /// Wakes the fetches that watch this replica's shard.
    fn moved(&self, what: Moved) {
        self.wakeups.moved(what, self.shard);
    }

    /// The shard of [`Wakeups`] this replica bumps.
    pub(crate) fn shard(&self) -> usize {
        self.shard
    }

    /// Marks the replica deleted: waiters wake up and see [`WaitError::Gone`].
    pub(crate) fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
        self.hw.send_modify(|_| {});
        self.durable.send_modify(|_| {});
        self.appended.send_modify(|_| {});
        self.moved(Moved::HighWatermark);
        self.moved(Moved::LogEnd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Partition `partition` of topic "t" on broker 1, not told its role yet.
    fn open_replica(
        dir: &std::path::Path,
        partition: i32,
        stop: &CancellationToken,
    ) -> Arc<Replica> {
        Replica::open(
            "t",
            partition,
            dir.join(format!("t-{partition}")),
            LogConfig::default(),
            ReplicaSettings {
                min_insync_replicas: 1,
                lag_time_max_ms: 30_000,
                wakeups: Arc::default(),
            },
            Role::unassigned(1),
            stop,
            &FatalSignal::default(),
        )
        .unwrap()
    }

    /// The zombie of a replica created and deleted at once: its flusher must end even when
    /// the deletion comes before the task first runs, or it keeps the log's files open.
    #[tokio::test(flavor = "current_thread")]
    async fn replica_deleted_before_its_flusher_runs_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let stop = CancellationToken::new();
        for i in 0..20 {
            let r = open_replica(dir.path(), i, &stop);
            // On a current-thread runtime the flusher has not run yet.
            r.mark_deleted();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while Arc::strong_count(&r) > 1 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(
                Arc::strong_count(&r),
                1,
                "replica {i}: its flusher still holds it after deletion"
            );
        }
    }

    /// A fetch answer from an old leadership must not land in a replica that moved on: the
    /// guard is only given while the replica follows that leader in that epoch, and a role
    /// change waits for it. (Without it a broker that became leader while appending a fetch
    /// from its old leader had batches below its new epoch's start, and `keel check` saw
    /// its epoch history differ from its followers'.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fetch_answer_applies_only_to_the_leadership_it_was_fetched_in() {
        let dir = tempfile::tempdir().unwrap();
        let stop = CancellationToken::new();
        let r = open_replica(dir.path(), 0, &stop);
        r.apply_record(&PartitionRecord::test_record(2, 5, &[1, 2, 3]));
        // (leader, epoch) -> guard given?
        for (leader, epoch, want) in [(2, 5, true), (2, 4, false), (2, 6, false), (3, 5, false)] {
            assert_eq!(
                r.following(leader, epoch).is_some(),
                want,
                "{leader} {epoch}"
            );
        }
        // While an answer is applied, becoming leader waits for it.
        let guard = r.following(2, 5).expect("follows 2 in epoch 5");
        let r2 = r.clone();
        let elected = std::thread::spawn(move || {
            r2.apply_record(&PartitionRecord::test_record(1, 6, &[1, 2, 3]))
        });
        // Room for the election to run if the guard did not hold it back.
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !elected.is_finished(),
            "the role changed under an applying fetch"
        );
        drop(guard);
        assert_eq!(elected.join().unwrap(), Transition::BecameLeader);
        assert!(r.following(2, 5).is_none(), "a leader follows nobody");
        stop.cancel();
    }

    /// An acknowledgement belongs to the leadership that appended the batch. Found by the
    /// chaos run (seed 111): a leader appended a batch, lost the partition, truncated the
    /// batch away as a follower and won the partition back in a later epoch; the produce's
    /// wait, first polled only then, saw the new HW pass its offset and acknowledged a batch
    /// that no replica held any more.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wait_from_an_earlier_leadership_is_never_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let stop = CancellationToken::new();
        let r = open_replica(dir.path(), 0, &stop);
        let batch = |v: &str| keel_protocol::encode::values_batch([v.to_owned()], 0);
        let wait = Duration::from_secs(5);
        r.apply_record(&PartitionRecord::test_record(1, 5, &[1, 2]));
        let first = r.append(&batch("a")).unwrap().ack;
        assert_eq!(
            first,
            AckTarget {
                end_offset: 1,
                leader_epoch: 5
            }
        );
        // Follower 2 has not fetched it when broker 2 takes over in epoch 6 without it; this
        // broker truncates the batch away as its follower.
        r.apply_record(&PartitionRecord::test_record(2, 6, &[1, 2]));
        r.log().truncate_to(0).unwrap();
        // Leader again in epoch 7: another batch at the same offset, fetched by broker 2.
        r.apply_record(&PartitionRecord::test_record(1, 7, &[1, 2]));
        let second = r.append(&batch("b")).unwrap().ack;
        assert_eq!(
            second,
            AckTarget {
                end_offset: 1,
                leader_epoch: 7
            }
        );
        r.flush().unwrap();
        r.follower_fetched(2, 0);
        r.follower_fetched(2, 1);
        assert!(r.high_watermark() >= 1, "the HW passed offset 0 in epoch 7");
        assert_eq!(r.acknowledged(Acks::All, second, wait).await, Ok(()));
        assert_eq!(
            r.acknowledged(Acks::All, first, wait).await,
            Err(AckError::NotLeader),
            "the epoch-5 batch at offset 0 was truncated; the HW of epoch 7 says nothing of it"
        );
        stop.cancel();
    }

    #[test]
    fn leader_counts_durable_offset_only_under_always() {
        assert_eq!(leader_ack_offset(true, 10, 4), 4);
        assert_eq!(leader_ack_offset(false, 10, 4), 10);
    }
}
