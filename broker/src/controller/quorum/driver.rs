//! The voter's driver: a thread that owns the [`Voter`], ticks it, feeds it messages and
//! commands, makes its writes durable (blocking disk I/O, off the async runtime), hands its
//! messages to the [`Transport`] and publishes what the rest of the node reads: the quorum's
//! state, the applied image, and how far the metadata log may be served.
//!
//! A storage failure stops the voter for good ([`FatalSignal`]): it can no longer tell what
//! it made durable.

use super::store::{RaftStore, StoreError};
use super::transport::{PeerReport, Transport};
use super::voter::{Answer, Command, CommandError, Fast, Tuning, Voter};
use crate::controller::machine::ControllerConfig;
use crate::controller::MetadataImage;
use crate::error::FatalSignal;
use crate::metrics as m;
use bytes::Bytes;
use keel_storage::Log;
use raft::prelude::Message;
use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

/// How long a command may wait for its answer (its records committed).
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(8);

pub(crate) type Reply = oneshot::Sender<Result<Answer, CommandError>>;

/// What the driver thread is told.
pub(crate) enum Input {
    Message(Message),
    Command(Reply, Command),
    /// A command with a quick way ([`Voter::submit_fast`]).
    Fast(Reply, Fast, Command),
    Peer(PeerReport),
}

/// What a voter publishes after each round.
#[derive(Debug, Clone)]
pub(crate) struct QuorumView {
    pub(crate) node_id: i32,
    pub(crate) voters: Vec<i32>,
    pub(crate) leader: Option<i32>,
    pub(crate) active: bool,
    pub(crate) term: u64,
    pub(crate) committed: u64,
    /// The last committed offset this voter holds: brokers may read up to it.
    pub(crate) served: u64,
    pub(crate) applied: u64,
    pub(crate) last: u64,
    /// `(offset, term, JSON image)` of the newest snapshot (offset 0: none).
    pub(crate) snapshot: (u64, u64, Bytes),
    /// On the leader: each voter's matched offset and whether it answered lately.
    pub(crate) progress: Vec<(i32, u64, bool)>,
}

/// Timing of a voter's driver.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) tick: Duration,
    pub(crate) tuning: Tuning,
    /// How often the active controller runs its own tick (fencing, elections).
    pub(crate) controller_tick: Duration,
}

impl Timing {
    pub(crate) fn new(
        election_timeout_ms: u64,
        heartbeat_ms: u64,
        snapshot_entries: u64,
        controller_tick: Duration,
    ) -> Self {
        let tick_ms = (heartbeat_ms / 2).clamp(10, 100);
        Self {
            tick: Duration::from_millis(tick_ms),
            tuning: Tuning {
                election_ticks: (election_timeout_ms / tick_ms).max(2) as usize,
                heartbeat_ticks: (heartbeat_ms / tick_ms).max(1) as usize,
                snapshot_entries,
                ..Tuning::default()
            },
            controller_tick,
        }
    }
}

/// The node's handle on its voter.
pub(crate) struct Quorum {
    node_id: i32,
    input: Sender<Input>,
    view: watch::Receiver<QuorumView>,
    image: watch::Receiver<Arc<MetadataImage>>,
    log: Arc<Log>,
}

impl Quorum {
    /// Opens the voter's store in `dir`, replays it and starts the driver thread and the
    /// transport to the other `voters`.
    pub(crate) fn start(
        node_id: i32,
        dir: &Path,
        voters: &[(i32, String)],
        config: ControllerConfig,
        timing: Timing,
        fatal: FatalSignal,
        stop: CancellationToken,
    ) -> Result<(Arc<Self>, std::thread::JoinHandle<()>), StoreError> {
        let ids: Vec<u64> = voters.iter().map(|(id, _)| super::raft_id(*id)).collect();
        let started = Instant::now();
        let store = RaftStore::open(dir, &ids)?;
        let log = store.log().expect("an opened store has its log");
        let mut voter = Voter::new(node_id, store, config, timing.tuning)?;
        voter.campaign_if_alone();
        voter.advance()?;
        tracing::info!(
            node = node_id,
            snapshot = voter.store().snapshot_index(),
            last = voter.store().last(),
            applied = voter.applied(),
            ms = started.elapsed().as_millis() as u64,
            "opened the metadata log"
        );
        let (input, rx) = std::sync::mpsc::channel();
        let reports = {
            let input = input.clone();
            Arc::new(move |r| {
                let _ = input.send(Input::Peer(r));
            })
        };
        let transport = Transport::start(node_id, voters, reports, stop.clone());
        let (view_tx, view) = watch::channel(view_of(&voter));
        let (image_tx, image) = watch::channel(Arc::new(voter.image().clone()));
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("keel-voter-{node_id}"))
            .spawn(move || {
                let mut d = Driver {
                    voter,
                    rx,
                    transport,
                    view: view_tx,
                    image: image_tx,
                    timing,
                    stop: thread_stop,
                    snapshot_at: Instant::now(),
                    elections: 0,
                };
                if let Err(e) = d.run() {
                    fatal.raise(format!("controller metadata log: {e}"));
                }
                d.voter.store().close();
            })
            .map_err(|e| StoreError::Inconsistent(format!("starting the voter thread: {e}")))?;
        let quorum = Arc::new(Self {
            node_id,
            input,
            view,
            image,
            log,
        });
        Ok((quorum, thread))
    }

    /// Runs `command` on the active controller, if this voter is it.
    pub(crate) async fn run(&self, command: Command) -> Result<Answer, CommandError> {
        self.ask(|tx| Input::Command(tx, command)).await
    }

    /// [`Self::run`], answered at once when `fast` can ([`Voter::submit_fast`]).
    pub(crate) async fn run_fast(
        &self,
        fast: Fast,
        command: Command,
    ) -> Result<Answer, CommandError> {
        self.ask(|tx| Input::Fast(tx, fast, command)).await
    }

    async fn ask(&self, input: impl FnOnce(Reply) -> Input) -> Result<Answer, CommandError> {
        let (tx, rx) = oneshot::channel();
        if self.input.send(input(tx)).is_err() {
            return Err(CommandError::NotController { leader: None });
        }
        match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(answer)) => answer,
            // The voter stopped, or the command is still not committed: as far as the
            // caller can tell, this is not (or no longer) a working controller.
            Ok(Err(_)) | Err(_) => Err(CommandError::NotController {
                leader: self.view().leader.filter(|&l| l != self.node_id),
            }),
        }
    }

    /// Hands messages from another voter to this one.
    pub(crate) fn deliver(&self, messages: Vec<Message>) {
        for m in messages {
            let _ = self.input.send(Input::Message(m));
        }
    }

    /// Waits (up to `limit`) until this voter is the active controller.
    pub(crate) async fn wait_active(&self, limit: Duration) -> bool {
        let mut view = self.view.clone();
        tokio::time::timeout(limit, view.wait_for(|v| v.active))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    pub(crate) fn view(&self) -> QuorumView {
        self.view.borrow().clone()
    }

    pub(crate) fn subscribe_view(&self) -> watch::Receiver<QuorumView> {
        self.view.clone()
    }

    /// The image as applied on this voter (committed metadata only).
    pub(crate) fn image(&self) -> Arc<MetadataImage> {
        self.image.borrow().clone()
    }

    /// The metadata log (for brokers' fetches and digests).
    pub(crate) fn log(&self) -> &Arc<Log> {
        &self.log
    }
}

fn view_of<T>(v: &Voter<T>) -> QuorumView {
    let store = v.store();
    QuorumView {
        node_id: v.node_id(),
        voters: v.voters(),
        leader: v.leader(),
        active: v.is_active(),
        term: v.term(),
        committed: v.committed(),
        served: v.served(),
        applied: v.applied(),
        last: store.last(),
        snapshot: (
            store.snapshot_index(),
            store.snapshot_term(),
            Bytes::copy_from_slice(store.snapshot_data()),
        ),
        progress: v.progress(),
    }
}

struct Driver {
    voter: Voter<Option<Reply>>,
    rx: Receiver<Input>,
    transport: Transport,
    view: watch::Sender<QuorumView>,
    image: watch::Sender<Arc<MetadataImage>>,
    timing: Timing,
    stop: CancellationToken,
    snapshot_at: Instant,
    elections: u64,
}

impl Driver {
    fn run(&mut self) -> Result<(), StoreError> {
        let mut next_tick = Instant::now() + self.timing.tick;
        let mut next_controller_tick = Instant::now() + self.timing.controller_tick;
        let mut next_gauges = Instant::now();
        while !self.stop.is_cancelled() {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait) {
                Ok(input) => {
                    self.take(input);
                    // Everything already queued goes into the same round (one fsync).
                    for _ in 0..1024 {
                        match self.rx.try_recv() {
                            Ok(input) => self.take(input),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            let now = Instant::now();
            if now >= next_tick {
                self.voter.tick();
                next_tick = now + self.timing.tick;
            }
            if now >= next_controller_tick {
                next_controller_tick = now + self.timing.controller_tick;
                if self.voter.is_active() {
                    let now_ms = crate::clock::now_ms().max(0) as u64;
                    self.voter.submit(
                        None,
                        Box::new(move |c| {
                            let records = c.tick(now_ms);
                            Ok((Answer::Count(records.len()), records))
                        }),
                    );
                }
            }
            self.round()?;
            if now >= next_gauges {
                next_gauges = now + Duration::from_secs(1);
                self.gauges();
            }
        }
        Ok(())
    }

    fn take(&mut self, input: Input) {
        match input {
            Input::Message(m) => self.voter.step(m),
            Input::Command(reply, command) => self.voter.submit(Some(reply), command),
            Input::Fast(reply, fast, command) => self.voter.submit_fast(Some(reply), fast, command),
            Input::Peer(PeerReport::Unreachable(peer)) => self.voter.report_unreachable(peer),
            Input::Peer(PeerReport::Snapshot { peer, delivered }) => {
                self.voter.report_snapshot(peer, delivered)
            }
        }
    }

    fn round(&mut self) -> Result<(), StoreError> {
        let was_active = self.voter.is_active();
        let before = (self.voter.applied(), self.voter.store().snapshot_index());
        let out = self.voter.advance()?;
        for m in out.messages {
            self.transport.send(m);
        }
        if self.voter.is_active() && !was_active {
            self.elections += 1;
            metrics::counter!(m::QUORUM_ELECTIONS_TOTAL).increment(1);
        }
        let after = (self.voter.applied(), self.voter.store().snapshot_index());
        if after.1 != before.1 {
            self.snapshot_at = Instant::now();
        }
        if after.0 != before.0 {
            self.image
                .send_replace(Arc::new(self.voter.image().clone()));
        }
        let view = view_of(&self.voter);
        self.view.send_if_modified(|old| {
            let changed = old.leader != view.leader
                || old.active != view.active
                || old.term != view.term
                || old.committed != view.committed
                || old.served != view.served
                || old.applied != view.applied
                || old.last != view.last
                || old.snapshot.0 != view.snapshot.0
                || old.progress != view.progress;
            if changed {
                *old = view;
            }
            changed
        });
        // Answers go out after the view and image show their entries.
        for (reply, outcome) in out.outcomes {
            if let Some(reply) = reply {
                let _ = reply.send(outcome);
            }
        }
        let elections = std::mem::take(&mut self.voter.elections);
        if elections > 0 {
            metrics::counter!(m::CONTROLLER_LEADER_ELECTIONS_TOTAL).increment(elections);
        }
        Ok(())
    }

    fn gauges(&self) {
        let v = &self.voter;
        metrics::gauge!(m::QUORUM_TERM).set(v.term() as f64);
        metrics::gauge!(m::QUORUM_LEADER).set(v.leader().map_or(-1.0, f64::from));
        metrics::gauge!(m::QUORUM_ACTIVE).set(if v.is_active() { 1.0 } else { 0.0 });
        metrics::gauge!(m::QUORUM_COMMITTED_OFFSET).set(v.committed() as f64);
        metrics::gauge!(m::QUORUM_APPLIED_OFFSET).set(v.applied() as f64);
        let last = v.store().last();
        for (id, matched, recent) in v.progress() {
            let voter = id.to_string();
            metrics::gauge!(m::QUORUM_VOTER_LAG, "voter" => voter.clone())
                .set(last.saturating_sub(matched) as f64);
            metrics::gauge!(m::QUORUM_VOTER_REACHABLE, "voter" => voter).set(
                if recent || id == v.node_id() {
                    1.0
                } else {
                    0.0
                },
            );
        }
        let store = v.store();
        metrics::gauge!(m::QUORUM_SNAPSHOT_BYTES).set(store.snapshot_data().len() as f64);
        metrics::gauge!(m::QUORUM_SNAPSHOT_OFFSET).set(store.snapshot_index() as f64);
        metrics::gauge!(m::QUORUM_SNAPSHOT_AGE_SECONDS)
            .set(self.snapshot_at.elapsed().as_secs_f64());
        // The cluster-wide counts come from the active controller only (0 elsewhere), so
        // sums over every voter count each broker and partition once.
        let offset = v.image().offset();
        let s = if v.is_active() {
            v.image().stats()
        } else {
            Default::default()
        };
        metrics::gauge!(m::CONTROLLER_BROKERS_REGISTERED).set(s.registered as f64);
        metrics::gauge!(m::CONTROLLER_BROKERS_FENCED).set(s.fenced as f64);
        metrics::gauge!(m::CONTROLLER_BROKERS_ACTIVE).set((s.registered - s.fenced) as f64);
        metrics::gauge!(m::CONTROLLER_OFFLINE_PARTITIONS).set(s.offline_partitions as f64);
        metrics::gauge!(m::CONTROLLER_PARTITIONS).set(s.partitions as f64);
        metrics::gauge!(m::CONTROLLER_METADATA_LOG_OFFSET).set(offset as f64);
    }
}
