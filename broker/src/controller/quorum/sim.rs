//! A seeded simulation of the controller quorum in one process: the real [`Voter`]s over
//! in-memory stores, a simulated network that delays, drops and partitions messages, a
//! simulated clock, and crashes that lose everything but the store. Brokers register,
//! heartbeat and go silent; topics come and go. After every step the invariants are checked:
//!
//! - at most one leader per term;
//! - every voter's committed entries are the same entries (term and bytes) at the same index;
//! - images applied to the same offset are equal;
//! - per partition, leader epochs never go backwards on any voter, and one epoch has one leader;
//! - an answered command's records are in the committed log (none lost after an answer).
//!
//! And at the end, with the network healed: one active controller, every voter caught up.

use super::store::RaftStore;
use super::voter::{Answer, Command, CommandError, Fast, Tuning, Voter};
use super::{node_id, raft_id};
use crate::controller::machine::{ControllerConfig, NewTopic};
use crate::controller::Heartbeat;
use crate::controller::{ControllerError, MetadataImage, MetadataRecord};
use raft::prelude::Message;
use raft::Storage;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What a command was, to check its answer.
#[derive(Debug, Clone)]
enum Asked {
    Register(i32),
    Heartbeat(i32),
    Create(String),
    Delete(String),
    Tick,
}

struct Sim {
    rng: StdRng,
    voters: BTreeMap<i32, Option<Voter<u64>>>,
    stores: BTreeMap<i32, RaftStore>,
    tuning: Tuning,
    /// (deliver at step, message)
    network: Vec<(u64, Message)>,
    /// Links that drop everything (both directions), as node id pairs (low, high).
    cut: BTreeSet<(i32, i32)>,
    step: u64,
    now_ms: u64,
    next_token: u64,
    asked: HashMap<u64, Asked>,
    // Invariant state.
    leaders: BTreeMap<u64, i32>,
    committed: BTreeMap<u64, (u64, Vec<u8>)>,
    checked: BTreeMap<i32, u64>,
    images: BTreeMap<i64, MetadataImage>,
    epochs: BTreeMap<(String, i32), BTreeMap<i32, i32>>,
    seen_epoch: BTreeMap<(i32, String, i32), i32>,
    /// Broker epochs answered by registration, by broker id.
    broker_epochs: BTreeMap<i32, i64>,
    answered: u64,
    refused_not_controller: u64,
}

fn config() -> ControllerConfig {
    ControllerConfig {
        session_timeout_ms: 3_000,
        default_replication_factor: 3,
        ..ControllerConfig::default()
    }
}

impl Sim {
    fn new(seed: u64, n: i32) -> Self {
        let ids: Vec<u64> = (1..=n).map(raft_id).collect();
        let tuning = Tuning {
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot_entries: 25,
            max_entry_bytes: 64 << 10,
        };
        let mut voters = BTreeMap::new();
        let stores = BTreeMap::new();
        for id in 1..=n {
            let v = Voter::new(id, RaftStore::in_memory(&ids), config(), tuning).unwrap();
            voters.insert(id, Some(v));
        }
        Self {
            rng: StdRng::seed_from_u64(seed),
            voters,
            stores,
            tuning,
            network: Vec::new(),
            cut: BTreeSet::new(),
            step: 0,
            now_ms: 0,
            next_token: 0,
            asked: HashMap::new(),
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
            checked: BTreeMap::new(),
            images: BTreeMap::new(),
            epochs: BTreeMap::new(),
            seen_epoch: BTreeMap::new(),
            broker_epochs: BTreeMap::new(),
            answered: 0,
            refused_not_controller: 0,
        }
    }

    fn linked(&self, a: i32, b: i32) -> bool {
        !self.cut.contains(&(a.min(b), a.max(b)))
    }

    /// Tells a snapshot's sender how its delivery went, as the transport does.
    fn report_snapshot(&mut self, m: &Message, delivered: bool) {
        if m.get_msg_type() != raft::prelude::MessageType::MsgSnapshot {
            return;
        }
        let (from, to) = (node_id(m.from), node_id(m.to));
        if let Some(v) = self.voters.get_mut(&from).and_then(Option::as_mut) {
            v.report_snapshot(to, delivered);
        }
    }

    fn send(&mut self, messages: Vec<Message>) {
        for m in messages {
            if self.rng.gen_bool(0.03) {
                self.report_snapshot(&m, false);
                continue; // lost
            }
            let delay = self.rng.gen_range(1..4);
            self.network.push((self.step + delay, m));
        }
    }

    fn advance(&mut self, id: i32) {
        let Some(v) = self.voters.get_mut(&id).and_then(Option::as_mut) else {
            return;
        };
        let out = v.advance().expect("an in-memory store does not fail");
        for (token, outcome) in out.outcomes {
            self.outcome(token, outcome);
        }
        self.send(out.messages);
        self.check(id);
    }

    fn outcome(&mut self, token: u64, outcome: Result<Answer, CommandError>) {
        let asked = self.asked.remove(&token).expect("a token we handed out");
        match (&asked, outcome) {
            (Asked::Register(b), Ok(Answer::Epoch(e))) => {
                self.answered += 1;
                let before = self.broker_epochs.insert(*b, e);
                assert!(before < Some(e), "broker {b}: epoch {e} after {before:?}");
            }
            (_, Ok(_)) => self.answered += 1,
            (_, Err(CommandError::NotController { .. })) => self.refused_not_controller += 1,
            (Asked::Create(_), Err(CommandError::Refused(_)))
            | (Asked::Delete(_), Err(CommandError::Refused(_)))
            | (Asked::Heartbeat(_), Err(CommandError::Refused(_))) => {}
            (a, Err(e)) => panic!("{a:?} refused: {e}"),
        }
    }

    fn submit(&mut self, to: i32, asked: Asked) {
        let token = self.next_token;
        self.next_token += 1;
        let now = self.now_ms;
        let epochs = self.broker_epochs.clone();
        let command: Command = match asked.clone() {
            Asked::Register(b) => Box::new(move |c| {
                let (epoch, records) = c.register(b, "127.0.0.1", 9000 + b, now)?;
                Ok((Answer::Epoch(epoch), records))
            }),
            Asked::Heartbeat(b) => Box::new(move |c| {
                let epoch = *epochs.get(&b).unwrap_or(&-1);
                let offset = c.image().offset();
                let (reply, records) =
                    c.heartbeat_with(Heartbeat::routine(b, epoch, offset), now)?;
                Ok((Answer::Heartbeat(reply), records))
            }),
            Asked::Create(name) => Box::new(move |c| {
                let records = c.new_topic(&NewTopic {
                    name,
                    partitions: Some(2),
                    replication_factor: Some(3),
                    ..NewTopic::default()
                })?;
                Ok((Answer::None, records))
            }),
            Asked::Delete(name) => Box::new(move |c| Ok((Answer::None, c.delete_topic(&name)?))),
            Asked::Tick => Box::new(move |c| {
                let records = c.tick(now);
                Ok((Answer::Count(records.len()), records))
            }),
        };
        // Heartbeats take the quick way, as the controller service sends them.
        let fast: Option<Fast> = match asked {
            Asked::Heartbeat(b) => {
                let epoch = *self.broker_epochs.get(&b).unwrap_or(&-1);
                Some(Box::new(move |c| {
                    let offset = c.image().offset();
                    c.quiet_heartbeat(Heartbeat::routine(b, epoch, offset), now)
                        .map(Answer::Heartbeat)
                }))
            }
            _ => None,
        };
        self.asked.insert(token, asked);
        if let Some(v) = self.voters.get_mut(&to).and_then(Option::as_mut) {
            match fast {
                Some(fast) => v.submit_fast(token, fast, command),
                None => v.submit(token, command),
            }
            self.advance(to);
        } else {
            self.asked.remove(&token);
        }
    }

    /// The invariants, as far as voter `id`'s state shows them.
    fn check(&mut self, id: i32) {
        let Some(v) = self.voters.get(&id).and_then(Option::as_ref) else {
            return;
        };
        if v.is_leader() {
            let before = self.leaders.insert(v.term(), id);
            assert!(
                before.is_none_or(|l| l == id),
                "two leaders in term {}: {before:?} and {id}",
                v.term()
            );
        }
        let store = v.store();
        let from = self.checked.get(&id).copied().unwrap_or(0) + 1;
        let to = v.committed().min(store.last());
        let first = store.first_index().unwrap();
        for index in from.max(first)..=to {
            let e = &store
                .entries(
                    index,
                    index + 1,
                    None,
                    raft::GetEntriesContext::empty(false),
                )
                .unwrap()[0];
            let mine = (e.term, e.data.to_vec());
            match self.committed.get(&index) {
                Some(c) => assert_eq!(c, &mine, "voter {id}: committed entry {index} differs"),
                None => {
                    self.committed.insert(index, mine);
                }
            }
        }
        if to >= from {
            self.checked.insert(id, to);
        }
        let image = v.image();
        match self.images.get(&image.offset()) {
            Some(i) => assert_eq!(i, image, "voter {id}: image at {} differs", image.offset()),
            None => {
                self.images.insert(image.offset(), image.clone());
            }
        }
        for p in image.partitions() {
            let topic_id = image.topic(&p.topic).expect("a partition's topic").id;
            let key = (format!("{}/{topic_id}", p.topic), p.partition);
            let leaders = self.epochs.entry(key).or_default();
            let before = leaders.insert(p.leader_epoch, p.leader);
            assert!(
                before.is_none_or(|l| l == p.leader),
                "{}-{}: two leaders in epoch {}",
                p.topic,
                p.partition,
                p.leader_epoch
            );
            // A topic deleted and created again starts over; key by its id too.
            let id_key = (id, format!("{}/{topic_id}", p.topic), p.partition);
            let seen = self.seen_epoch.entry(id_key).or_insert(p.leader_epoch);
            assert!(
                *seen <= p.leader_epoch,
                "voter {id}: {}-{} epoch went back",
                p.topic,
                p.partition
            );
            *seen = p.leader_epoch;
        }
    }

    fn deliver(&mut self) {
        let step = self.step;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.network)
            .into_iter()
            .partition(|(at, _)| *at <= step);
        self.network = later;
        let mut touched = BTreeSet::new();
        for (_, m) in due {
            let (from, to) = (node_id(m.from), node_id(m.to));
            let up = self.voters.get(&to).is_some_and(Option::is_some);
            if !self.linked(from, to) || !up {
                self.report_snapshot(&m, false);
                continue;
            }
            self.report_snapshot(&m, true);
            if let Some(v) = self.voters.get_mut(&to).and_then(Option::as_mut) {
                v.step(m);
                touched.insert(to);
                touched.insert(from);
            }
        }
        for id in touched {
            self.advance(id);
        }
    }

    fn crash(&mut self, id: i32) {
        if let Some(v) = self.voters.get_mut(&id).and_then(Option::take) {
            self.stores.insert(id, v.into_store());
            let (lost, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.network)
                .into_iter()
                .partition(|(_, m)| node_id(m.to) == id);
            self.network = kept;
            for (_, m) in lost {
                self.report_snapshot(&m, false);
            }
        }
    }

    fn restart(&mut self, id: i32) {
        if let Some(store) = self.stores.remove(&id) {
            let v = Voter::new(id, store, config(), self.tuning).unwrap();
            self.voters.insert(id, Some(v));
            self.advance(id);
        }
    }

    fn up(&self) -> Vec<i32> {
        self.voters
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    fn random_step(&mut self, topics: &mut u32) {
        self.step += 1;
        self.now_ms += 50;
        let n = self.voters.len() as i32;
        // Every live voter ticks every other step (a tick is 100 ms).
        if self.step.is_multiple_of(2) {
            for id in self.up() {
                if let Some(v) = self.voters.get_mut(&id).and_then(Option::as_mut) {
                    v.tick();
                }
                self.advance(id);
            }
        }
        self.deliver();
        let roll = self.rng.gen_range(0..1000);
        let target = self.rng.gen_range(1..=n);
        match roll {
            0..=5 => self.crash(target),
            6..=40 => self.restart(target),
            41..=46 => {
                let other = self.rng.gen_range(1..=n);
                if other != target {
                    self.cut.insert((target.min(other), target.max(other)));
                }
            }
            47..=70 => {
                self.cut.clear();
            }
            71..=130 => {
                let b = 100 + self.rng.gen_range(0..4);
                self.submit(target, Asked::Register(b));
            }
            131..=300 => {
                let b = 100 + self.rng.gen_range(0..4);
                self.submit(target, Asked::Heartbeat(b));
            }
            301..=340 => {
                *topics += 1;
                self.submit(target, Asked::Create(format!("t{}", *topics % 5)));
            }
            341..=360 => {
                let name = format!("t{}", self.rng.gen_range(0..5));
                self.submit(target, Asked::Delete(name));
            }
            361..=420 => self.submit(target, Asked::Tick),
            _ => {}
        }
    }

    /// Heals everything and lets the quorum settle; returns the active controller.
    fn settle(&mut self) -> i32 {
        self.cut.clear();
        for id in 1..=self.voters.len() as i32 {
            self.restart(id);
        }
        for _ in 0..400 {
            self.step += 1;
            self.now_ms += 50;
            if self.step.is_multiple_of(2) {
                for id in self.up() {
                    self.voters.get_mut(&id).unwrap().as_mut().unwrap().tick();
                    self.advance(id);
                }
            }
            self.deliver();
        }
        let active: Vec<i32> = self
            .up()
            .into_iter()
            .filter(|id| self.voters[id].as_ref().unwrap().is_active())
            .collect();
        assert_eq!(
            active.len(),
            1,
            "one active controller after healing: {active:?}"
        );
        let applied: BTreeSet<u64> = self
            .voters
            .values()
            .map(|v| v.as_ref().unwrap().applied())
            .collect();
        assert_eq!(
            applied.len(),
            1,
            "every voter applied the same: {applied:?}"
        );
        active[0]
    }
}

fn run(seed: u64, voters: i32, steps: u64) -> Sim {
    let mut sim = Sim::new(seed, voters);
    let mut topics = 0;
    for _ in 0..steps {
        sim.random_step(&mut topics);
    }
    let active = sim.settle();
    // The healed quorum still takes commands, and the answer is in the log.
    let before = sim.answered;
    sim.submit(active, Asked::Register(200));
    for _ in 0..20 {
        sim.step += 1;
        sim.deliver();
    }
    assert_eq!(
        sim.answered,
        before + 1,
        "seed {seed}: the healed quorum answers"
    );
    assert!(
        sim.voters[&active]
            .as_ref()
            .unwrap()
            .image()
            .broker(200)
            .is_some(),
        "seed {seed}"
    );
    sim
}

#[test]
fn three_voters_keep_one_history_through_crashes_and_partitions() {
    let mut answered = 0;
    for seed in 0..12 {
        let sim = run(seed, 3, 3_000);
        answered += sim.answered;
        assert!(
            sim.leaders.len() > 1,
            "seed {seed}: leadership moved at least once"
        );
        assert!(
            sim.committed.len() > 50,
            "seed {seed}: {} entries",
            sim.committed.len()
        );
    }
    assert!(answered > 1_000, "{answered} commands answered");
}

#[test]
fn five_voters_keep_one_history_through_crashes_and_partitions() {
    for seed in 100..104 {
        let sim = run(seed, 5, 3_000);
        assert!(sim.answered > 50, "seed {seed}: {}", sim.answered);
    }
}

#[test]
fn a_voter_far_behind_catches_up_from_a_snapshot() {
    let mut sim = Sim::new(7, 3);
    sim.crash(3);
    let mut made = 0;
    for _ in 0..2_000 {
        sim.step += 1;
        sim.now_ms += 50;
        if sim.step.is_multiple_of(2) {
            for id in sim.up() {
                sim.voters.get_mut(&id).unwrap().as_mut().unwrap().tick();
                sim.advance(id);
            }
        }
        sim.deliver();
        if let Some(leader) = sim
            .up()
            .into_iter()
            .find(|id| sim.voters[id].as_ref().unwrap().is_active())
        {
            if sim.step.is_multiple_of(5) {
                made += 1;
                sim.submit(leader, Asked::Register(100 + made % 7));
            }
        }
    }
    let leader = sim
        .up()
        .into_iter()
        .find(|id| sim.voters[id].as_ref().unwrap().is_active())
        .unwrap();
    let leader_store = sim.voters[&leader].as_ref().unwrap().store();
    assert!(
        leader_store.snapshot_index() > 100,
        "the leader compacted its log"
    );
    sim.restart(3);
    let active = sim.settle();
    let v3 = sim.voters[&3].as_ref().unwrap();
    assert_eq!(v3.image(), sim.voters[&active].as_ref().unwrap().image());
    assert!(
        v3.store().snapshot_index() > 0,
        "voter 3 started from a snapshot"
    );
}

#[test]
fn an_entry_above_the_limit_is_refused_and_nothing_is_proposed() {
    let mut sim = Sim::new(11, 3);
    let active = sim.settle();
    let v = sim.voters.get_mut(&active).unwrap().as_mut().unwrap();
    let last = v.store().last();
    let huge: Command = Box::new(|_| {
        let records = (0..5_000)
            .map(|i| MetadataRecord::FenceBroker { id: i, epoch: 1 })
            .collect();
        Ok((Answer::None, records))
    });
    v.submit(1, huge);
    let out = v.advance().unwrap();
    match &out.outcomes[..] {
        [(1, Err(CommandError::Refused(ControllerError::InvalidRequest(why))))] => {
            assert!(why.contains("above the limit"), "{why}")
        }
        other => panic!(
            "{:?}",
            other
                .iter()
                .map(|(t, o)| (t, o.as_ref().err()))
                .collect::<Vec<_>>()
        ),
    }
    assert_eq!(v.store().last(), last, "nothing proposed");
    // The voter goes on: the next command is proposed and committed.
    let small: Command = Box::new(|_| {
        Ok((
            Answer::Count(1),
            vec![MetadataRecord::FenceBroker { id: 1, epoch: 1 }],
        ))
    });
    v.submit(2, small);
    v.advance().unwrap();
    assert_eq!(v.store().last(), last + 1);
}

#[test]
fn a_minority_cannot_run_commands() {
    let mut sim = Sim::new(9, 3);
    let active = sim.settle();
    for other in [1, 2, 3] {
        if other != active {
            sim.cut.insert((active.min(other), active.max(other)));
        }
    }
    // Within an election timeout or two the isolated leader steps down (check quorum) and
    // refuses; the other two elect a new one.
    for _ in 0..100 {
        sim.step += 1;
        sim.now_ms += 50;
        for id in sim.up() {
            sim.voters.get_mut(&id).unwrap().as_mut().unwrap().tick();
            sim.advance(id);
        }
        sim.deliver();
    }
    assert!(!sim.voters[&active].as_ref().unwrap().is_active());
    let before = sim.refused_not_controller;
    sim.submit(active, Asked::Register(300));
    assert_eq!(sim.refused_not_controller, before + 1);
    let actives: Vec<i32> = sim
        .up()
        .into_iter()
        .filter(|id| sim.voters[id].as_ref().unwrap().is_active())
        .collect();
    assert_eq!(actives.len(), 1);
    assert_ne!(actives[0], active);
    let _ = ControllerError::UnknownTopic(String::new());
}

#[test]
fn a_fast_command_is_answered_ahead_of_the_commands_waiting_for_commits() {
    let mut sim = Sim::new(13, 3);
    let active = sim.settle();
    let v = sim.voters.get_mut(&active).unwrap().as_mut().unwrap();
    let fence = |id| -> Command {
        Box::new(move |_| {
            Ok((
                Answer::None,
                vec![MetadataRecord::FenceBroker { id, epoch: 1 }],
            ))
        })
    };
    // One command in flight (its records not yet committed: nothing is delivered), one
    // queued behind it.
    v.submit(1, fence(1));
    v.submit(2, fence(2));
    // A quick answer goes out at once; a command whose quick way declines queues.
    v.submit_fast(3, Box::new(|_| Some(Answer::Count(7))), fence(3));
    v.submit_fast(4, Box::new(|_| None), fence(4));
    let out = v.advance().unwrap();
    let answered: Vec<_> = out.outcomes.iter().map(|(t, o)| (*t, o.clone())).collect();
    assert_eq!(answered, vec![(3, Ok(Answer::Count(7)))]);
}
