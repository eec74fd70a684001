//! One consumer group's membership, as a sans-IO state machine (Kafka's classic group
//! protocol): JoinGroup, SyncGroup, Heartbeat and LeaveGroup in, responses and "store the
//! group" requests out. Time is passed in (milliseconds); the coordinator calls [`Group::tick`]
//! at [`Group::next_deadline`].
//!
//! States: Empty → PreparingRebalance → CompletingRebalance → Stable, and back to
//! PreparingRebalance whenever membership or a member's protocols change. Responses to
//! JoinGroup and SyncGroup may be held: the caller gives each request a [`Waiter`] id and
//! sends the response when an [`Effect`] names it.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use std::collections::{BTreeMap, BTreeSet};

/// Identifies a held response; chosen by the caller, unique among its pending requests.
pub(crate) type Waiter = u64;

/// Group settings (Kafka's broker properties).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GroupConfig {
    /// `group.min.session.timeout.ms`.
    pub(crate) min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`.
    pub(crate) max_session_timeout_ms: i32,
    /// `group.initial.rebalance.delay.ms`: how long the first rebalance of an empty group
    /// waits for more members (each new member extends it, up to the rebalance timeout).
    pub(crate) initial_rebalance_delay_ms: i32,
    /// `group.max.size`: members per group.
    pub(crate) max_size: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            initial_rebalance_delay_ms: 3_000,
            max_size: usize::MAX,
        }
    }
}

/// The states of a classic group, named as DescribeGroups and ListGroups report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    pub(crate) fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// A JoinGroup request, as the machine needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Join {
    /// Empty on a member's first join.
    pub(crate) member_id: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) session_timeout_ms: i32,
    pub(crate) rebalance_timeout_ms: i32,
    pub(crate) protocol_type: String,
    /// (name, metadata) in the member's order of preference.
    pub(crate) protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+ (KIP-394): a new dynamic member first gets MEMBER_ID_REQUIRED.
    pub(crate) require_known_member_id: bool,
    /// The id to give the member if it is new (the caller makes it unique).
    pub(crate) new_member_id: String,
}

/// One member as the group leader sees it in its JoinGroup response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JoinedMember {
    pub(crate) member_id: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) metadata: Bytes,
}

/// A JoinGroup response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JoinResult {
    pub(crate) error: i16,
    pub(crate) generation: i32,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol: Option<String>,
    pub(crate) leader: String,
    pub(crate) member_id: String,
    /// Every member with its metadata for the chosen protocol; only for the leader.
    pub(crate) members: Vec<JoinedMember>,
    /// A static leader rejoining a stable group keeps the current assignment (v9+).
    pub(crate) skip_assignment: bool,
}

impl JoinResult {
    pub(crate) fn error(error: ResponseError, member_id: &str) -> Self {
        JoinResult {
            error: error.code(),
            generation: -1,
            protocol_type: None,
            protocol: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
            skip_assignment: false,
        }
    }
}

/// A SyncGroup response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyncResult {
    pub(crate) error: i16,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol: Option<String>,
    pub(crate) assignment: Bytes,
}

impl SyncResult {
    pub(crate) fn error(error: ResponseError) -> Self {
        SyncResult {
            error: error.code(),
            protocol_type: None,
            protocol: None,
            assignment: Bytes::new(),
        }
    }
}

/// What the caller must do after an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Answer a held (or immediate) JoinGroup.
    Join(Waiter, JoinResult),
    /// Answer a held (or immediate) SyncGroup.
    Sync(Waiter, SyncResult),
    /// Write the group's metadata record ([`Group::snapshot`]) to the log; when it is
    /// acknowledged or fails, call [`Group::stored`] with this generation.
    Store { generation: i32 },
}

/// One member of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    pub(crate) id: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) session_timeout_ms: i32,
    pub(crate) rebalance_timeout_ms: i32,
    pub(crate) protocol_type: String,
    pub(crate) protocols: Vec<(String, Bytes)>,
    pub(crate) assignment: Bytes,
    /// A held JoinGroup: the member has joined the current rebalance.
    join_waiter: Option<Waiter>,
    sync_waiter: Option<Waiter>,
    /// Session deadline: removed if no heartbeat (or join/sync) comes before it.
    deadline: u64,
}

impl Member {
    /// This member's metadata for `protocol`.
    pub(crate) fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    fn same_protocols(&self, join: &Join) -> bool {
        self.protocol_type == join.protocol_type && self.protocols == join.protocols
    }
}

/// A group's membership as stored in the log (Kafka's GroupMetadataValue), and as a loaded
/// group starts from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct GroupSnapshot {
    pub(crate) protocol_type: String,
    pub(crate) generation: i32,
    pub(crate) protocol: Option<String>,
    pub(crate) leader: Option<String>,
    pub(crate) state_timestamp: i64,
    pub(crate) members: Vec<StoredMember>,
}

/// One member in a [`GroupSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct StoredMember {
    pub(crate) id: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) rebalance_timeout_ms: i32,
    pub(crate) session_timeout_ms: i32,
    /// Its metadata for the group's protocol.
    pub(crate) subscription: Bytes,
    pub(crate) assignment: Bytes,
}

/// One consumer group's membership.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    config: GroupConfig,
    state: GroupState,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// KIP-394: ids handed out with MEMBER_ID_REQUIRED, each with its deadline.
    pending: BTreeMap<String, u64>,
    /// Static members: instance id → member id.
    statics: BTreeMap<String, String>,
    /// PreparingRebalance: when the join phase ends even if members are missing.
    join_deadline: u64,
    /// PreparingRebalance: the initial delay of an empty group's first rebalance is running
    /// until `join_deadline`, and may be extended up to this bound.
    initial_delay_bound: Option<u64>,
    /// CompletingRebalance: when members that have not synced are removed.
    sync_deadline: u64,
    /// Members that sent SyncGroup in this generation.
    synced: BTreeSet<String>,
    /// A leader's assignment is being stored (its generation).
    storing: Option<i32>,
    /// Wall-clock ms of the last state change (for DescribeGroups and retention).
    state_timestamp: i64,
}

impl Group {
    pub(crate) fn new(config: GroupConfig, now_wall: i64) -> Self {
        Group {
            config,
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: BTreeMap::new(),
            statics: BTreeMap::new(),
            join_deadline: 0,
            initial_delay_bound: None,
            sync_deadline: 0,
            synced: BTreeSet::new(),
            storing: None,
            state_timestamp: now_wall,
        }
    }

    /// A group as loaded from its stored metadata: Stable with its members (each given a
    /// full session from `now`), or Empty.
    pub(crate) fn restore(config: GroupConfig, snap: GroupSnapshot, now: u64) -> Self {
        let mut g = Group::new(config, snap.state_timestamp);
        g.generation = snap.generation;
        g.protocol_type = (!snap.protocol_type.is_empty()).then_some(snap.protocol_type);
        g.protocol = snap.protocol.clone();
        g.leader = snap.leader;
        let protocol = snap.protocol.unwrap_or_default();
        for m in snap.members {
            if let Some(instance) = &m.instance_id {
                g.statics.insert(instance.clone(), m.id.clone());
            }
            let member = Member {
                id: m.id.clone(),
                instance_id: m.instance_id,
                client_id: m.client_id,
                client_host: m.client_host,
                session_timeout_ms: m.session_timeout_ms,
                rebalance_timeout_ms: m.rebalance_timeout_ms,
                protocol_type: g.protocol_type.clone().unwrap_or_default(),
                protocols: vec![(protocol.clone(), m.subscription)],
                assignment: m.assignment,
                join_waiter: None,
                sync_waiter: None,
                deadline: now + m.session_timeout_ms.max(0) as u64,
            };
            g.members.insert(m.id, member);
        }
        g.state = if g.members.is_empty() {
            GroupState::Empty
        } else {
            GroupState::Stable
        };
        g
    }

    pub(crate) fn state(&self) -> GroupState {
        self.state
    }

    pub(crate) fn generation(&self) -> i32 {
        self.generation
    }

    pub(crate) fn protocol_type(&self) -> Option<&str> {
        self.protocol_type.as_deref()
    }

    pub(crate) fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    #[cfg(test)]
    pub(crate) fn leader(&self) -> Option<&str> {
        self.leader.as_deref()
    }

    pub(crate) fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    #[cfg(test)]
    pub(crate) fn has_member(&self, id: &str) -> bool {
        self.members.contains_key(id)
    }

    pub(crate) fn state_timestamp(&self) -> i64 {
        self.state_timestamp
    }

    /// Kafka's rule for offset commits and fetches by a member: `Ok` if `member_id` at
    /// `generation` may commit now. A generation below 0 with no member id is an admin or
    /// simple-consumer commit, allowed only while the group has no members.
    pub(crate) fn validate_commit(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), ResponseError> {
        if self.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        if generation < 0 && member_id.is_empty() {
            return if self.state == GroupState::Empty {
                Ok(())
            } else {
                Err(ResponseError::UnknownMemberId)
            };
        }
        if let Some(instance) = instance_id {
            if self.statics.get(instance).is_some_and(|m| m != member_id) {
                return Err(ResponseError::FencedInstanceId);
            }
        }
        if !self.members.contains_key(member_id) {
            return Err(ResponseError::UnknownMemberId);
        }
        if generation != self.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        if self.state == GroupState::CompletingRebalance {
            return Err(ResponseError::RebalanceInProgress);
        }
        Ok(())
    }

    /// A member's commit counts as a heartbeat.
    pub(crate) fn touch(&mut self, member_id: &str, now: u64) {
        if let Some(m) = self.members.get_mut(member_id) {
            m.deadline = now + m.session_timeout_ms.max(0) as u64;
        }
    }

    /// The group's stored form.
    pub(crate) fn snapshot(&self) -> GroupSnapshot {
        let protocol = self.protocol.clone().unwrap_or_default();
        GroupSnapshot {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            state_timestamp: self.state_timestamp,
            members: self
                .members
                .values()
                .map(|m| StoredMember {
                    id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    session_timeout_ms: m.session_timeout_ms,
                    subscription: m.metadata(&protocol),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }

    /// Handles a JoinGroup.
    pub(crate) fn join(
        &mut self,
        waiter: Waiter,
        join: Join,
        now: u64,
        now_wall: i64,
        out: &mut Vec<Effect>,
    ) {
        let reply = |out: &mut Vec<Effect>, e: ResponseError| {
            out.push(Effect::Join(waiter, JoinResult::error(e, &join.member_id)))
        };
        if self.state == GroupState::Dead {
            // The group is being deleted or moved: the client finds the coordinator again.
            return reply(out, ResponseError::CoordinatorNotAvailable);
        }
        if join.session_timeout_ms < self.config.min_session_timeout_ms
            || join.session_timeout_ms > self.config.max_session_timeout_ms
        {
            return reply(out, ResponseError::InvalidSessionTimeout);
        }
        if join.protocol_type.is_empty() || join.protocols.is_empty() || !self.supports(&join) {
            return reply(out, ResponseError::InconsistentGroupProtocol);
        }
        if join.member_id.is_empty() {
            self.join_new(waiter, join, now, now_wall, out)
        } else {
            self.join_known(waiter, join, now, now_wall, out)
        }
    }

    /// Whether a member with these protocols can be in the group: same protocol type, and
    /// (once it has members) at least one protocol every member supports.
    fn supports(&self, join: &Join) -> bool {
        if self.members.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(join.protocol_type.as_str()) {
            return false;
        }
        join.protocols.iter().any(|(name, _)| {
            self.members
                .values()
                .filter(|m| m.id != join.member_id)
                .all(|m| m.protocols.iter().any(|(n, _)| n == name))
        })
    }

    fn is_full(&self) -> bool {
        self.members.len() + self.pending.len() >= self.config.max_size
    }

    fn join_new(
        &mut self,
        waiter: Waiter,
        join: Join,
        now: u64,
        now_wall: i64,
        out: &mut Vec<Effect>,
    ) {
        if let Some(instance) = join.instance_id.clone() {
            if let Some(old) = self.statics.get(&instance).cloned() {
                return self.rejoin_static(waiter, join, old, now, now_wall, out);
            }
        }
        if self.is_full() {
            let e = JoinResult::error(ResponseError::GroupMaxSizeReached, "");
            return out.push(Effect::Join(waiter, e));
        }
        let id = join.new_member_id.clone();
        if join.instance_id.is_none() && join.require_known_member_id {
            // KIP-394: the member must come back with this id within its session.
            self.pending
                .insert(id.clone(), now + join.session_timeout_ms as u64);
            let e = JoinResult::error(ResponseError::MemberIdRequired, &id);
            return out.push(Effect::Join(waiter, e));
        }
        self.add_member(waiter, id, join, now, now_wall, out);
    }

    fn join_known(
        &mut self,
        waiter: Waiter,
        join: Join,
        now: u64,
        now_wall: i64,
        out: &mut Vec<Effect>,
    ) {
        let id = join.member_id.clone();
        if self.pending.remove(&id).is_some() {
            if self.is_full() {
                let e = JoinResult::error(ResponseError::GroupMaxSizeReached, &id);
                return out.push(Effect::Join(waiter, e));
            }
            return self.add_member(waiter, id, join, now, now_wall, out);
        }
        if let Some(instance) = &join.instance_id {
            if self.statics.get(instance).is_some_and(|m| *m != id) {
                let e = JoinResult::error(ResponseError::FencedInstanceId, &id);
                return out.push(Effect::Join(waiter, e));
            }
        }
        let Some(member) = self.members.get_mut(&id) else {
            let e = JoinResult::error(ResponseError::UnknownMemberId, &id);
            return out.push(Effect::Join(waiter, e));
        };
        member.deadline = now + join.session_timeout_ms as u64;
        match self.state {
            GroupState::PreparingRebalance => {
                self.update_member(waiter, join, out);
                self.try_complete_join(now, now_wall, out);
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                let unchanged = member.same_protocols(&join);
                let is_leader = self.leader.as_deref() == Some(id.as_str());
                if unchanged && (self.state == GroupState::CompletingRebalance || !is_leader) {
                    // A member that missed its JoinGroup response, or a follower rejoining
                    // without change: the current generation stands.
                    let result = self.join_result(&id);
                    out.push(Effect::Join(waiter, result));
                } else {
                    self.update_member(waiter, join, out);
                    self.prepare_rebalance(now, now_wall, out);
                }
            }
            GroupState::Empty | GroupState::Dead => {
                let e = JoinResult::error(ResponseError::UnknownMemberId, &id);
                out.push(Effect::Join(waiter, e));
            }
        }
    }

    /// A static member rejoining with a new member id: the old id is fenced. A stable group
    /// whose protocols still fit keeps its assignment and generation (no rebalance).
    fn rejoin_static(
        &mut self,
        waiter: Waiter,
        join: Join,
        old: String,
        now: u64,
        now_wall: i64,
        out: &mut Vec<Effect>,
    ) {
        let new_id = join.new_member_id.clone();
        let Some(mut member) = self.members.remove(&old) else {
            self.statics
                .remove(join.instance_id.as_deref().unwrap_or_default());
            return self.add_member(waiter, new_id, join, now, now_wall, out);
        };
        if let Some(w) = member.join_waiter.take() {
            let e = JoinResult::error(ResponseError::FencedInstanceId, &old);
            out.push(Effect::Join(w, e));
        }
        if let Some(w) = member.sync_waiter.take() {
            out.push(Effect::Sync(
                w,
                SyncResult::error(ResponseError::FencedInstanceId),
            ));
        }
        let unchanged = member.same_protocols(&join);
        member.id = new_id.clone();
        member.client_id = join.client_id.clone();
        member.client_host = join.client_host.clone();
        member.session_timeout_ms = join.session_timeout_ms;
        member.rebalance_timeout_ms = join.rebalance_timeout_ms;
        member.deadline = now + join.session_timeout_ms as u64;
        if let Some(instance) = &join.instance_id {
            self.statics.insert(instance.clone(), new_id.clone());
        }
        let was_leader = self.leader.as_deref() == Some(old.as_str());
        if was_leader {
            self.leader = Some(new_id.clone());
        }
        if self.synced.remove(&old) {
            self.synced.insert(new_id.clone());
        }
        self.members.insert(new_id.clone(), member);
        match self.state {
            GroupState::Stable if unchanged => {
                let mut result = self.join_result(&new_id);
                result.skip_assignment = was_leader;
                out.push(Effect::Join(waiter, result));
                // The new member id must be in the stored group, or a coordinator that
                // loads it would not know the member.
                out.push(Effect::Store {
                    generation: self.generation,
                });
            }
            GroupState::PreparingRebalance => {
                self.update_member(waiter, join, out);
                self.try_complete_join(now, now_wall, out);
            }
            _ => {
                self.update_member(waiter, join, out);
                self.prepare_rebalance(now, now_wall, out);
            }
        }
    }

    fn add_member(
        &mut self,
        waiter: Waiter,
        id: String,
        join: Join,
        now: u64,
        now_wall: i64,
        out: &mut Vec<Effect>,
    ) {
        if self.members.is_empty() {
            self.protocol_type = Some(join.protocol_type.clone());
        }
        if let Some(instance) = &join.instance_id {
            self.statics.insert(instance.clone(), id.clone());
        }
        let member = Member {
            id: id.clone(),
            instance_id: join.instance_id.clone(),
            client_id: join.client_id.clone(),
            client_host: join.client_host.clone(),
            session_timeout_ms: join.session_timeout_ms,
            rebalance_timeout_ms: join.rebalance_timeout_ms,
            protocol_type: join.protocol_type.clone(),
            protocols: join.protocols.clone(),
            assignment: Bytes::new(),
            join_waiter: Some(waiter),
            sync_waiter: None,
            deadline: now + join.session_timeout_ms as u64,
        };
        self.members.insert(id, member);
        if self.state == GroupState::PreparingRebalance {
            self.extend_initial_delay(now);
            self.try_complete_join(now, now_wall, out);
        } else {
            self.prepare_rebalance(now, now_wall, out);
        }
    }

    /// Records a known member's join: its (possibly changed) protocols and its waiter. A
    /// previous join still held for it is answered REBALANCE_IN_PROGRESS (it rejoins).
    fn update_member(&mut self, waiter: Waiter, join: Join, out: &mut Vec<Effect>) {
        let id = self.statics_id(&join);
        let Some(m) = self.members.get_mut(&id) else {
            return;
        };
        m.protocol_type = join.protocol_type;
        m.protocols = join.protocols;
        m.client_id = join.client_id;
        m.client_host = join.client_host;
        m.session_timeout_ms = join.session_timeout_ms;
        m.rebalance_timeout_ms = join.rebalance_timeout_ms;
        if let Some(old) = m.join_waiter.replace(waiter) {
            let e = JoinResult::error(ResponseError::RebalanceInProgress, &id);
            out.push(Effect::Join(old, e));
        }
    }

    /// The member id a join refers to (a static rejoin has already been given its new id).
    fn statics_id(&self, join: &Join) -> String {
        match &join.instance_id {
            Some(i) if join.member_id.is_empty() => {
                self.statics.get(i).cloned().unwrap_or_default()
            }
            _ => join.member_id.clone(),
        }
    }

    /// Starts a rebalance: held syncs are answered REBALANCE_IN_PROGRESS, assignments are
    /// dropped, and the join phase waits for every member (an empty group's first
    /// rebalance waits `group.initial.rebalance.delay.ms` for more).
    fn prepare_rebalance(&mut self, now: u64, now_wall: i64, out: &mut Vec<Effect>) {
        if self.state == GroupState::CompletingRebalance {
            for m in self.members.values_mut() {
                m.assignment = Bytes::new();
            }
        }
        for m in self.members.values_mut() {
            if let Some(w) = m.sync_waiter.take() {
                out.push(Effect::Sync(
                    w,
                    SyncResult::error(ResponseError::RebalanceInProgress),
                ));
            }
        }
        self.synced.clear();
        self.storing = None;
        let from_empty = self.state == GroupState::Empty;
        let max_rebalance = self.max_rebalance_timeout();
        let delay = self.config.initial_rebalance_delay_ms.max(0) as u64;
        if from_empty && delay > 0 {
            self.join_deadline = now + delay.min(max_rebalance);
            self.initial_delay_bound = Some(now + max_rebalance);
        } else {
            self.join_deadline = now + max_rebalance;
            self.initial_delay_bound = None;
        }
        self.set_state(GroupState::PreparingRebalance, now_wall);
        self.try_complete_join(now, now_wall, out);
    }

    /// A member joining during the initial delay pushes its end back by the delay, up to
    /// the rebalance timeout.
    fn extend_initial_delay(&mut self, now: u64) {
        if let Some(bound) = self.initial_delay_bound {
            let delay = self.config.initial_rebalance_delay_ms.max(0) as u64;
            self.join_deadline = (now + delay).min(bound).max(self.join_deadline);
        }
    }

    fn max_rebalance_timeout(&self) -> u64 {
        self.members
            .values()
            .map(|m| m.rebalance_timeout_ms.max(0) as u64)
            .max()
            .unwrap_or(0)
    }

    /// Ends the join phase if every member has joined and no KIP-394 member is still to
    /// come (outside an initial delay), or at the join deadline.
    fn try_complete_join(&mut self, now: u64, now_wall: i64, out: &mut Vec<Effect>) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        let all_joined =
            self.pending.is_empty() && self.members.values().all(|m| m.join_waiter.is_some());
        let delaying = self.initial_delay_bound.is_some() && now < self.join_deadline;
        if (delaying || !all_joined) && now < self.join_deadline {
            return;
        }
        // Members that did not rejoin in time leave the group.
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join_waiter.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in gone {
            self.drop_member(&id, out);
        }
        self.initial_delay_bound = None;
        self.generation += 1;
        if self.members.is_empty() {
            // The protocol type stays: an empty consumer group is still a consumer group.
            self.protocol = None;
            self.leader = None;
            self.set_state(GroupState::Empty, now_wall);
            out.push(Effect::Store {
                generation: self.generation,
            });
            return;
        }
        self.protocol = self.select_protocol();
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        self.set_state(GroupState::CompletingRebalance, now_wall);
        self.sync_deadline = now + self.max_rebalance_timeout();
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let result = self.join_result(&id);
            let m = self.members.get_mut(&id).expect("member listed above");
            m.deadline = now + m.session_timeout_ms.max(0) as u64;
            if let Some(w) = m.join_waiter.take() {
                out.push(Effect::Join(w, result));
            }
        }
    }

    /// The JoinGroup answer of the current generation for `member_id`.
    fn join_result(&self, member_id: &str) -> JoinResult {
        let leader = self.leader.clone().unwrap_or_default();
        let protocol = self.protocol.clone().unwrap_or_default();
        let members = if leader == member_id {
            self.members
                .values()
                .map(|m| JoinedMember {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    metadata: m.metadata(&protocol),
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinResult {
            error: 0,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader,
            member_id: member_id.to_string(),
            members,
            skip_assignment: false,
        }
    }

    /// Kafka's vote: among the protocols every member supports, each member votes for the
    /// first in its own order; the most votes win (ties: the leader's preference).
    fn select_protocol(&self) -> Option<String> {
        let common: Vec<&String> = self
            .members
            .values()
            .next()?
            .protocols
            .iter()
            .map(|(n, _)| n)
            .filter(|n| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(p, _)| p == *n))
            })
            .collect();
        let mut votes: BTreeMap<&String, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some((name, _)) = m.protocols.iter().find(|(n, _)| common.contains(&n)) {
                *votes.entry(name).or_default() += 1;
            }
        }
        let order: Vec<&String> = match self.leader.as_ref().and_then(|l| self.members.get(l)) {
            Some(l) => l.protocols.iter().map(|(n, _)| n).collect(),
            None => common.clone(),
        };
        let best = votes.values().copied().max()?;
        order
            .into_iter()
            .find(|n| votes.get(n) == Some(&best))
            .cloned()
    }

    /// Handles a SyncGroup. `assignments` is the leader's (empty from followers).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn sync(
        &mut self,
        waiter: Waiter,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        protocol_type: Option<&str>,
        protocol: Option<&str>,
        assignments: Vec<(String, Bytes)>,
        now: u64,
        out: &mut Vec<Effect>,
    ) {
        let reply = |out: &mut Vec<Effect>, e: ResponseError| {
            out.push(Effect::Sync(waiter, SyncResult::error(e)))
        };
        if self.state == GroupState::Dead {
            return reply(out, ResponseError::CoordinatorNotAvailable);
        }
        if let Some(instance) = instance_id {
            if self.statics.get(instance).is_some_and(|m| m != member_id) {
                return reply(out, ResponseError::FencedInstanceId);
            }
        }
        if !self.members.contains_key(member_id) {
            return reply(out, ResponseError::UnknownMemberId);
        }
        if generation != self.generation {
            return reply(out, ResponseError::IllegalGeneration);
        }
        if protocol_type.is_some_and(|t| Some(t) != self.protocol_type.as_deref())
            || protocol.is_some_and(|p| Some(p) != self.protocol.as_deref())
        {
            return reply(out, ResponseError::InconsistentGroupProtocol);
        }
        match self.state {
            GroupState::Empty | GroupState::Dead => reply(out, ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => reply(out, ResponseError::RebalanceInProgress),
            GroupState::Stable => {
                self.touch(member_id, now);
                let m = &self.members[member_id];
                out.push(Effect::Sync(waiter, self.sync_result(m)));
            }
            GroupState::CompletingRebalance => {
                self.touch(member_id, now);
                self.synced.insert(member_id.to_string());
                let m = self.members.get_mut(member_id).expect("checked above");
                if let Some(old) = m.sync_waiter.replace(waiter) {
                    out.push(Effect::Sync(
                        old,
                        SyncResult::error(ResponseError::RebalanceInProgress),
                    ));
                }
                if self.leader.as_deref() == Some(member_id) && self.storing.is_none() {
                    let mut given: BTreeMap<String, Bytes> = assignments.into_iter().collect();
                    for m in self.members.values_mut() {
                        m.assignment = given.remove(&m.id).unwrap_or_default();
                    }
                    self.storing = Some(self.generation);
                    out.push(Effect::Store {
                        generation: self.generation,
                    });
                }
            }
        }
    }

    fn sync_result(&self, m: &Member) -> SyncResult {
        SyncResult {
            error: 0,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            assignment: m.assignment.clone(),
        }
    }

    /// The store asked for by [`Effect::Store`] for `generation` finished (`ok`) or failed.
    /// A stored assignment makes the group Stable and answers the held syncs; a failed one
    /// answers them with `error` and starts over.
    pub(crate) fn stored(
        &mut self,
        generation: i32,
        ok: Result<(), ResponseError>,
        now: u64,
        now_wall: i64,
        out: &mut Vec<Effect>,
    ) {
        if self.state != GroupState::CompletingRebalance
            || self.storing != Some(generation)
            || self.generation != generation
        {
            return;
        }
        self.storing = None;
        match ok {
            Ok(()) => {
                self.set_state(GroupState::Stable, now_wall);
                let ids: Vec<String> = self.members.keys().cloned().collect();
                for id in ids {
                    let result = self.sync_result(&self.members[&id]);
                    if let Some(w) = self.members.get_mut(&id).and_then(|m| m.sync_waiter.take()) {
                        out.push(Effect::Sync(w, result));
                    }
                }
            }
            Err(e) => {
                for m in self.members.values_mut() {
                    m.assignment = Bytes::new();
                    if let Some(w) = m.sync_waiter.take() {
                        out.push(Effect::Sync(w, SyncResult::error(e)));
                    }
                }
                self.prepare_rebalance(now, now_wall, out);
            }
        }
    }

    /// Handles a Heartbeat.
    pub(crate) fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: u64,
    ) -> Result<(), ResponseError> {
        if self.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        if let Some(instance) = instance_id {
            if self.statics.get(instance).is_some_and(|m| m != member_id) {
                return Err(ResponseError::FencedInstanceId);
            }
        }
        if !self.members.contains_key(member_id) {
            return Err(ResponseError::UnknownMemberId);
        }
        if generation != self.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        self.touch(member_id, now);
        match self.state {
            GroupState::PreparingRebalance => Err(ResponseError::RebalanceInProgress),
            GroupState::CompletingRebalance | GroupState::Stable => Ok(()),
            GroupState::Empty | GroupState::Dead => Err(ResponseError::UnknownMemberId),
        }
    }

    /// Handles one member of a LeaveGroup: by member id, or (static, member id empty) by
    /// instance id alone.
    pub(crate) fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        now: u64,
        now_wall: i64,
        out: &mut Vec<Effect>,
    ) -> Result<(), ResponseError> {
        if self.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        let id = match instance_id {
            Some(instance) => match self.statics.get(instance) {
                Some(m) if member_id.is_empty() || m == member_id => m.clone(),
                Some(_) => return Err(ResponseError::FencedInstanceId),
                None => return Err(ResponseError::UnknownMemberId),
            },
            None => member_id.to_string(),
        };
        if self.pending.remove(&id).is_some() {
            self.try_complete_join(now, now_wall, out);
            return Ok(());
        }
        if !self.members.contains_key(&id) {
            return Err(ResponseError::UnknownMemberId);
        }
        self.remove_and_rebalance(&id, now, now_wall, out);
        Ok(())
    }

    /// Removes a member (left, expired, fenced) and rebalances what is left.
    fn remove_and_rebalance(&mut self, id: &str, now: u64, now_wall: i64, out: &mut Vec<Effect>) {
        self.drop_member(id, out);
        match self.state {
            GroupState::PreparingRebalance => self.try_complete_join(now, now_wall, out),
            GroupState::CompletingRebalance | GroupState::Stable => {
                self.prepare_rebalance(now, now_wall, out)
            }
            GroupState::Empty | GroupState::Dead => {}
        }
    }

    /// Takes a member out, answering its held requests UNKNOWN_MEMBER_ID.
    fn drop_member(&mut self, id: &str, out: &mut Vec<Effect>) {
        if let Some(m) = self.members.remove(id) {
            if let Some(w) = m.join_waiter {
                out.push(Effect::Join(
                    w,
                    JoinResult::error(ResponseError::UnknownMemberId, id),
                ));
            }
            if let Some(w) = m.sync_waiter {
                out.push(Effect::Sync(
                    w,
                    SyncResult::error(ResponseError::UnknownMemberId),
                ));
            }
            if let Some(instance) = m.instance_id {
                if self.statics.get(&instance).is_some_and(|x| x == id) {
                    self.statics.remove(&instance);
                }
            }
            self.synced.remove(id);
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
    }

    /// The earliest time [`Group::tick`] has something to do.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        let members = self.members.values().map(|m| m.deadline);
        let pending = self.pending.values().copied();
        let phase = match self.state {
            GroupState::PreparingRebalance => Some(self.join_deadline),
            GroupState::CompletingRebalance => Some(self.sync_deadline),
            _ => None,
        };
        members.chain(pending).chain(phase).min()
    }

    /// Expires members whose session ran out and KIP-394 ids never used, and ends a join
    /// or sync phase whose time is up.
    pub(crate) fn tick(&mut self, now: u64, now_wall: i64, out: &mut Vec<Effect>) {
        if self.state == GroupState::Dead {
            return;
        }
        self.pending.retain(|_, deadline| *deadline > now);
        // A member waiting in the join phase is not expected to heartbeat.
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| m.deadline <= now && m.join_waiter.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in expired {
            self.remove_and_rebalance(&id, now, now_wall, out);
        }
        match self.state {
            GroupState::PreparingRebalance => self.try_complete_join(now, now_wall, out),
            GroupState::CompletingRebalance if now >= self.sync_deadline => {
                // Members that never synced (all of them, if the leader did not) are gone.
                let leader_synced = self
                    .leader
                    .as_ref()
                    .is_some_and(|l| self.synced.contains(l));
                let gone: Vec<String> = self
                    .members
                    .keys()
                    .filter(|id| !leader_synced || !self.synced.contains(*id))
                    .cloned()
                    .collect();
                for id in &gone {
                    self.drop_member(id, out);
                }
                self.prepare_rebalance(now, now_wall, out);
            }
            _ => {}
        }
    }

    /// Marks the group deleted (DeleteGroups, or unloaded): held requests are told to find
    /// the coordinator again.
    pub(crate) fn kill(&mut self, out: &mut Vec<Effect>, now_wall: i64) {
        for m in self.members.values_mut() {
            if let Some(w) = m.join_waiter.take() {
                let e = JoinResult::error(ResponseError::NotCoordinator, &m.id);
                out.push(Effect::Join(w, e));
            }
            if let Some(w) = m.sync_waiter.take() {
                out.push(Effect::Sync(
                    w,
                    SyncResult::error(ResponseError::NotCoordinator),
                ));
            }
        }
        self.members.clear();
        self.pending.clear();
        self.statics.clear();
        self.set_state(GroupState::Dead, now_wall);
    }

    fn set_state(&mut self, state: GroupState, now_wall: i64) {
        if self.state != state {
            self.state = state;
            self.state_timestamp = now_wall;
        }
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
