//! One controller voter, sans-IO: the Raft node, the controller state machine it applies
//! committed entries to, and the queue of commands waiting for the active controller.
//!
//! The caller (the driver thread, or the simulation) feeds it ticks, messages and commands,
//! calls [`Voter::advance`] after each, sends the messages it returns, and hands each
//! command's outcome back to whoever asked (a token of type `T`).

use super::entry;
use super::store::{RaftStore, StoreError};
use super::{node_id, raft_id};
use crate::controller::image::{is_leader_election, MetadataImage};
use crate::controller::machine::{Controller, ControllerConfig, HeartbeatReply};
use crate::controller::records::{MetadataRecord, PartitionRecord};
use crate::controller::ControllerError;
use raft::prelude::{Entry, EntryType, Message, Snapshot};
use raft::{RawNode, SnapshotStatus, StateRole};
use std::collections::VecDeque;

/// What a command answers besides its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    None,
    Epoch(i64),
    Heartbeat(HeartbeatReply),
    TopicId(uuid::Uuid),
    Count(usize),
    ProducerIds(i64, i32),
    Partition(PartitionRecord),
}

/// A command for the active controller: checked against the applied image, it returns
/// its answer and the records that carry it out (none: answered at once).
pub(crate) type Command = Box<
    dyn FnOnce(&mut Controller) -> Result<(Answer, Vec<MetadataRecord>), ControllerError> + Send,
>;

/// The quick way of a command that usually changes nothing: run against the applied image
/// ahead of the command in flight and the queue, it answers (`Some`) when no records are
/// needed; `None` sends the command the usual way. See [`Voter::submit_fast`].
pub(crate) type Fast = Box<dyn FnOnce(&mut Controller) -> Option<Answer> + Send>;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub(crate) enum CommandError {
    #[error(transparent)]
    Refused(#[from] ControllerError),
    /// This voter is not the active controller (`leader`: the one it knows, if any), or lost
    /// the leadership before the command's records were committed.
    #[error("{}", not_controller(*leader))]
    NotController { leader: Option<i32> },
}

fn not_controller(leader: Option<i32>) -> String {
    match leader {
        Some(id) => format!("not the active controller; node {id} is"),
        None => "not the active controller; the controller quorum has no leader now".into(),
    }
}

/// Timing and snapshot settings of a voter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tuning {
    /// Ticks without a leader before a follower stands for election (randomised up to twice).
    pub(crate) election_ticks: usize,
    /// Ticks between the leader's heartbeats.
    pub(crate) heartbeat_ticks: usize,
    /// Applied entries between snapshots.
    pub(crate) snapshot_entries: u64,
    /// The largest entry proposed (at most [`entry::MAX_ENTRY_BYTES`], what the log takes).
    pub(crate) max_entry_bytes: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            election_ticks: 10,
            heartbeat_ticks: 1,
            snapshot_entries: 1000,
            max_entry_bytes: entry::MAX_ENTRY_BYTES,
        }
    }
}

/// The command whose records were proposed and are not applied yet.
struct Inflight<T> {
    index: u64,
    term: u64,
    token: T,
    answer: Answer,
}

/// What [`Voter::advance`] hands back.
pub(crate) struct Output<T> {
    pub(crate) messages: Vec<Message>,
    pub(crate) outcomes: Vec<(T, Result<Answer, CommandError>)>,
}

pub(crate) struct Voter<T> {
    raw: RawNode<RaftStore>,
    node_id: i32,
    config: ControllerConfig,
    controller: Controller,
    applied: u64,
    queue: VecDeque<(T, Command)>,
    inflight: Option<Inflight<T>>,
    /// The term in which this voter became the active controller; 0 while it is not.
    active_term: u64,
    /// The latest other voter seen leading.
    previous_leader: Option<i32>,
    tuning: Tuning,
    outcomes: Vec<(T, Result<Answer, CommandError>)>,
    /// Leader elections of partitions this voter wrote as the active controller.
    pub(crate) elections: u64,
}

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

/// The image a snapshot holds (the empty image for the initial, empty snapshot).
pub(crate) fn snapshot_image(data: &[u8]) -> Result<MetadataImage, StoreError> {
    if data.is_empty() {
        return Ok(MetadataImage::new());
    }
    serde_json::from_slice(data).map_err(|e| {
        StoreError::Inconsistent(format!("the metadata snapshot does not decode: {e}"))
    })
}

impl<T> Voter<T> {
    /// A voter over `store` (opened, or in memory): the image is the snapshot's, and the
    /// committed entries after it are applied as Raft hands them over.
    pub(crate) fn new(
        node_id: i32,
        store: RaftStore,
        config: ControllerConfig,
        tuning: Tuning,
    ) -> Result<Self, StoreError> {
        let image = snapshot_image(store.snapshot_data())?;
        let applied = store.snapshot_index();
        let raft_config = raft::Config {
            id: raft_id(node_id),
            election_tick: tuning.election_ticks,
            heartbeat_tick: tuning.heartbeat_ticks,
            applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..raft::Config::default()
        };
        let raw = RawNode::new(&raft_config, store, &logger())
            .map_err(|e| StoreError::Inconsistent(format!("starting Raft: {e}")))?;
        Ok(Self {
            raw,
            node_id,
            controller: Controller::from_image(config.clone(), image),
            config,
            applied,
            queue: VecDeque::new(),
            inflight: None,
            active_term: 0,
            previous_leader: None,
            tuning,
            outcomes: Vec::new(),
            elections: 0,
        })
    }

    pub(crate) fn node_id(&self) -> i32 {
        self.node_id
    }

    /// A voter alone in its quorum need not wait an election timeout to lead.
    pub(crate) fn campaign_if_alone(&mut self) {
        if self.voters().len() == 1 && self.raw.raft.state != StateRole::Leader {
            let _ = self.raw.campaign();
        }
    }

    pub(crate) fn voters(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self
            .raw
            .raft
            .prs()
            .conf()
            .voters()
            .ids()
            .iter()
            .map(node_id)
            .collect();
        v.sort_unstable();
        v
    }

    pub(crate) fn store(&self) -> &RaftStore {
        self.raw.store()
    }

    pub(crate) fn image(&self) -> &MetadataImage {
        self.controller.image()
    }

    pub(crate) fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// The leader this voter knows of.
    pub(crate) fn leader(&self) -> Option<i32> {
        let id = self.raw.raft.leader_id;
        (id != raft::INVALID_ID).then(|| node_id(id))
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// Whether this voter runs commands: it leads, and an entry of its term is applied.
    pub(crate) fn is_active(&self) -> bool {
        self.active_term != 0 && self.active_term == self.raw.raft.term && self.is_leader()
    }

    /// The last committed index this voter knows that it also holds: what it may serve.
    pub(crate) fn served(&self) -> u64 {
        self.raw.raft.raft_log.committed.min(self.store().last())
    }

    pub(crate) fn committed(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    pub(crate) fn applied(&self) -> u64 {
        self.applied
    }

    /// Each voter's matched index and whether it was heard from lately (the leader only).
    pub(crate) fn progress(&self) -> Vec<(i32, u64, bool)> {
        if !self.is_leader() {
            return Vec::new();
        }
        let mut out: Vec<(i32, u64, bool)> = self
            .raw
            .raft
            .prs()
            .iter()
            .map(|(id, p)| (node_id(*id), p.matched, p.recent_active))
            .collect();
        out.sort_unstable();
        out
    }

    pub(crate) fn tick(&mut self) {
        self.raw.tick();
    }

    pub(crate) fn step(&mut self, m: Message) {
        let from = m.from;
        let kind = m.get_msg_type();
        if let Err(e) = self.raw.step(m) {
            tracing::debug!(from = node_id(from), ?kind, error = %e, "raft message dropped");
        }
    }

    pub(crate) fn report_unreachable(&mut self, node: i32) {
        self.raw.report_unreachable(raft_id(node));
    }

    pub(crate) fn report_snapshot(&mut self, node: i32, delivered: bool) {
        let status = if delivered {
            SnapshotStatus::Finish
        } else {
            SnapshotStatus::Failure
        };
        self.raw.report_snapshot(raft_id(node), status);
    }

    /// Queues a command for the active controller; its outcome comes out of a later
    /// [`Self::advance`] (at once if this voter cannot run it).
    pub(crate) fn submit(&mut self, token: T, command: Command) {
        self.queue.push_back((token, command));
        self.run_queue();
    }

    /// [`Self::submit`] for a command with a quick way: on the active controller, `fast`
    /// runs at once, and if it answers, `command` is dropped. Commands run one at a time
    /// (each one's records committed before the next is checked), so a routine broker
    /// heartbeat queued behind them waited for every commit ahead of it.
    pub(crate) fn submit_fast(&mut self, token: T, fast: Fast, command: Command) {
        if self.is_active() {
            if let Some(answer) = fast(&mut self.controller) {
                self.outcomes.push((token, Ok(answer)));
                return;
            }
        }
        self.submit(token, command);
    }

    fn run_queue(&mut self) {
        while !self.queue.is_empty() {
            if !self.is_active() {
                let leader = self.leader().filter(|&l| l != self.node_id);
                for (token, _) in self.queue.drain(..) {
                    self.outcomes
                        .push((token, Err(CommandError::NotController { leader })));
                }
                return;
            }
            if self.inflight.is_some() {
                return;
            }
            let (token, command) = self.queue.pop_front().expect("not empty");
            match command(&mut self.controller) {
                Err(e) => self.outcomes.push((token, Err(e.into()))),
                Ok((answer, records)) if records.is_empty() => {
                    self.outcomes.push((token, Ok(answer)))
                }
                Ok((answer, records)) => {
                    let data = entry::encode_records(&records);
                    let max = self.tuning.max_entry_bytes.min(entry::MAX_ENTRY_BYTES);
                    if data.len() > max {
                        let e = ControllerError::InvalidRequest(format!(
                            "the change needs a metadata entry of {} bytes, above the limit of \
                             {} bytes; ask for fewer topics or partitions at a time",
                            data.len(),
                            max
                        ));
                        self.outcomes.push((token, Err(e.into())));
                        continue;
                    }
                    let index = self.store_last_index() + 1;
                    let term = self.raw.raft.term;
                    match self.raw.propose(Vec::new(), data) {
                        Ok(()) => {
                            self.inflight = Some(Inflight {
                                index,
                                term,
                                token,
                                answer,
                            })
                        }
                        Err(_) => self.outcomes.push((
                            token,
                            Err(CommandError::NotController {
                                leader: self.leader(),
                            }),
                        )),
                    }
                }
            }
        }
    }

    fn store_last_index(&self) -> u64 {
        self.raw.raft.raft_log.last_index()
    }

    /// Persists what Raft asks, applies what is committed, and returns the messages to
    /// send and the commands answered since the last call.
    pub(crate) fn advance(&mut self) -> Result<Output<T>, StoreError> {
        let mut messages = Vec::new();
        while self.raw.has_ready() {
            let mut rd = self.raw.ready();
            messages.extend(rd.take_messages());
            if !rd.snapshot().is_empty() {
                self.install(rd.snapshot().clone())?;
            }
            self.apply(rd.take_committed_entries())?;
            self.raw.mut_store().append(rd.entries())?;
            if let Some(hs) = rd.hs() {
                self.raw.mut_store().set_hard_state(hs)?;
            }
            messages.extend(rd.take_persisted_messages());
            let mut light = self.raw.advance(rd);
            if let Some(commit) = light.commit_index() {
                self.raw.mut_store().set_commit(commit);
            }
            messages.extend(light.take_messages());
            self.apply(light.take_committed_entries())?;
            self.raw.advance_apply();
        }
        self.update_role();
        self.settle_inflight();
        self.run_queue();
        self.maybe_snapshot()?;
        Ok(Output {
            messages,
            outcomes: std::mem::take(&mut self.outcomes),
        })
    }

    fn install(&mut self, snap: Snapshot) -> Result<(), StoreError> {
        let image = snapshot_image(&snap.data)?;
        let index = snap.get_metadata().index;
        self.raw.mut_store().install_snapshot(&snap)?;
        tracing::info!(
            node = self.node_id,
            offset = index,
            "installed a metadata snapshot"
        );
        self.controller = Controller::from_image(self.config.clone(), image);
        self.applied = index;
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), StoreError> {
        for e in entries {
            if e.index <= self.applied {
                continue;
            }
            let records = if e.get_entry_type() == EntryType::EntryNormal {
                entry::decode_records(e.index as i64, &e.data)?
            } else {
                Vec::new()
            };
            if self.is_active() {
                for r in &records {
                    if let MetadataRecord::Partition(p) = r {
                        let old = self.controller.image().partition(&p.topic, p.partition);
                        if is_leader_election(old, p) {
                            self.elections += 1;
                        }
                    }
                }
            }
            self.controller.apply_entry(e.index as i64, &records);
            self.applied = e.index;
        }
        Ok(())
    }

    /// Becomes the active controller once an entry of its own term is applied; stops being
    /// it on losing the leadership.
    fn update_role(&mut self) {
        if let Some(l) = self.leader().filter(|l| *l != self.node_id) {
            self.previous_leader = Some(l);
        }
        if !self.is_leader() {
            if self.active_term != 0 {
                tracing::info!(
                    node = self.node_id,
                    term = self.active_term,
                    "no longer the active controller"
                );
            }
            self.active_term = 0;
            return;
        }
        let term = self.raw.raft.term;
        if self.active_term == term {
            return;
        }
        let log = &self.raw.raft.raft_log;
        let committed_this_term = log.term(log.committed).is_ok_and(|t| t == term);
        if committed_this_term && self.applied == log.committed {
            self.active_term = term;
            // A new active controller starts every broker's session afresh, as a restarted
            // one does: it has not heard their heartbeats.
            self.controller =
                Controller::from_image(self.config.clone(), self.controller.image().clone());
            // Except the previous active controller's broker: it stopped answering the
            // quorum, so its process has most likely died with its connections. It gets the
            // grace of a closed heartbeat connection; a live one heartbeats here within it.
            if let Some(prev) = self.previous_leader.take() {
                if let Some(epoch) = self.controller.image().broker(prev).map(|b| b.epoch) {
                    let now = crate::clock::now_ms().max(0) as u64;
                    self.controller.connection_lost(prev, epoch, now);
                }
            }
            tracing::info!(
                node = self.node_id,
                term,
                offset = self.applied,
                "became the active controller"
            );
        }
    }

    /// Answers the proposed command once its entry is applied: done if the entry there is
    /// the one proposed (same term), otherwise another leader's entry replaced it.
    fn settle_inflight(&mut self) {
        let Some(f) = &self.inflight else { return };
        if f.index > self.applied {
            if !self.is_leader() && self.raw.raft.term > f.term {
                // Still unknown; keep waiting for the index to be applied, but do not keep
                // later commands waiting behind it: they are refused while not active.
            }
            return;
        }
        let f = self.inflight.take().expect("checked");
        let ours = raft::Storage::term(self.raw.store(), f.index).is_ok_and(|t| t == f.term);
        let outcome = if ours {
            Ok(f.answer)
        } else {
            Err(CommandError::NotController {
                leader: self.leader(),
            })
        };
        self.outcomes.push((f.token, outcome));
    }

    fn maybe_snapshot(&mut self) -> Result<(), StoreError> {
        let since = self.applied.saturating_sub(self.store().snapshot_index());
        if since < self.tuning.snapshot_entries {
            return Ok(());
        }
        let data = serde_json::to_vec(self.controller.image()).expect("an image is plain data");
        let index = self.applied;
        self.raw.mut_store().compact(index, data)?;
        tracing::info!(
            node = self.node_id,
            offset = index,
            "wrote a metadata snapshot"
        );
        Ok(())
    }

    /// Gives the store back (the simulation's restart of a crashed voter).
    #[cfg(test)]
    pub(crate) fn into_store(self) -> RaftStore {
        self.raw.store().clone()
    }
}
