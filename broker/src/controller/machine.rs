//! The controller state machine: commands in, metadata records out.

use super::changes::Changes;
use super::error::ControllerError;
use super::image::{BrokerInfo, MetadataImage};
use super::records::{MetadataRecord, PartitionRecord, NO_LEADER};
use super::METADATA_TOPIC;
use crate::topic_config::{topic_log_config, validate_topic_name};
use keel_storage::LogConfig;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use uuid::Uuid;

/// Largest partition count a topic may be created with.
pub(crate) const MAX_PARTITIONS: i32 = 100_000;

/// Producer ids per block handed to a broker (Kafka's `PRODUCER_ID_BLOCK_SIZE`).
pub(crate) const PRODUCER_ID_BLOCK: i32 = 1000;

/// Controller settings (Kafka names in the field docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ControllerConfig {
    /// `broker.session.timeout.ms`: an unfenced broker silent for longer is fenced.
    pub(crate) session_timeout_ms: u64,
    /// `broker.session.connection.grace.ms`: a broker whose heartbeat connection closed is
    /// fenced this long after, unless it heartbeats first. 0: off.
    pub(crate) connection_grace_ms: u64,
    /// `default.replication.factor`, for topics created without one.
    pub(crate) default_replication_factor: i16,
    /// `min.insync.replicas`, written into the configs of topics created without one.
    pub(crate) default_min_insync_replicas: i32,
    /// `num.partitions`, for topics created without a partition count.
    pub(crate) default_partitions: i32,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            session_timeout_ms: 9000,
            connection_grace_ms: 3000,
            default_replication_factor: 1,
            default_min_insync_replicas: 1,
            default_partitions: 1,
        }
    }
}

impl ControllerConfig {
    pub(crate) fn validate(&self) -> Result<(), ControllerError> {
        let bad = |what: &str| Err(ControllerError::InvalidConfig(what.to_string()));
        if self.session_timeout_ms == 0 {
            return bad("broker.session.timeout.ms must be positive");
        }
        if self.default_replication_factor < 1 {
            return bad("default.replication.factor must be at least 1");
        }
        if self.default_min_insync_replicas < 1 {
            return bad("min.insync.replicas must be at least 1");
        }
        if !(1..=MAX_PARTITIONS).contains(&self.default_partitions) {
            return bad("num.partitions must be between 1 and 100000");
        }
        Ok(())
    }
}

/// A topic to create, as CreateTopics asks for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NewTopic {
    pub(crate) name: String,
    /// `None`: `num.partitions`. Ignored with `assignments`.
    pub(crate) partitions: Option<i32>,
    /// `None`: `default.replication.factor`. Ignored with `assignments`.
    pub(crate) replication_factor: Option<i16>,
    /// The replicas of partition `i` at index `i`; empty: assigned round-robin.
    pub(crate) assignments: Vec<Vec<i32>>,
    pub(crate) configs: BTreeMap<String, String>,
}

/// The answer to a broker heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeartbeatReply {
    /// Fenced once the returned records are applied.
    pub(crate) fenced: bool,
    /// The broker asked to shut down, is fenced and leads nothing in the committed image.
    pub(crate) should_shutdown: bool,
}

/// What a broker's heartbeat says (Kafka BrokerHeartbeat).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Heartbeat {
    pub(crate) id: i32,
    pub(crate) epoch: i64,
    /// How far the broker has applied the metadata log.
    pub(crate) metadata_offset: i64,
    pub(crate) want_shutdown: bool,
    /// Not ready to serve (a replica under repair, or recovered below its HW).
    pub(crate) want_fence: bool,
}

impl Heartbeat {
    /// A running broker's heartbeat that asks for nothing.
    pub(crate) fn routine(id: i32, epoch: i64, metadata_offset: i64) -> Self {
        Self {
            id,
            epoch,
            metadata_offset,
            want_shutdown: false,
            want_fence: false,
        }
    }
}

/// What a heartbeat changes in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeartbeatChange {
    Nothing,
    Shutdown,
    Fence,
    Unfence,
}

/// A leader's ISR change (Kafka AlterPartition, one partition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AlterPartitionRequest {
    pub(crate) broker_id: i32,
    pub(crate) broker_epoch: i64,
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) leader_epoch: i32,
    pub(crate) partition_epoch: i32,
    /// (replica id, its broker epoch as the leader knows it).
    pub(crate) new_isr: Vec<(i32, i64)>,
}

/// The controller: the committed image plus runtime liveness state.
///
/// Every command returns records and changes nothing in the image; the driver persists
/// the records and then calls [`Controller::apply`] for each, in order, before it steps
/// the next command (a broker epoch is the offset its `RegisterBroker` record will get,
/// so commands must not be pipelined ahead of their records).
#[derive(Debug, Clone)]
pub(crate) struct Controller {
    image: MetadataImage,
    config: ControllerConfig,
    /// Last heartbeat (or registration) time per broker. Runtime only: after a restart
    /// every unfenced broker gets a full session from the first tick.
    last_heartbeat_ms: HashMap<i32, u64>,
    /// When the session of a broker whose heartbeat connection closed ends, unless it
    /// heartbeats first ([`Controller::connection_lost`]). Runtime only.
    lost_deadline_ms: HashMap<i32, u64>,
    /// Brokers that were unfenced at the end of the previous tick: only those may take
    /// preferred leadership back, so a broker that has just been unfenced first gets one
    /// tick to learn its follower state. Runtime only.
    settled: BTreeSet<i32>,
    /// Brokers in controlled shutdown, by the epoch that asked: that incarnation stays
    /// fenced (its regular heartbeats do not unfence it) until it registers again.
    /// Runtime only; a broker keeps asking until it stops.
    shutting_down: HashMap<i32, i64>,
}

impl Controller {
    #[cfg(test)]
    pub(crate) fn new(config: ControllerConfig) -> Self {
        Self::from_image(config, MetadataImage::new())
    }

    /// A controller over an image replayed from the metadata log.
    pub(crate) fn from_image(config: ControllerConfig, image: MetadataImage) -> Self {
        Self {
            image,
            config,
            last_heartbeat_ms: HashMap::new(),
            lost_deadline_ms: HashMap::new(),
            settled: BTreeSet::new(),
            shutting_down: HashMap::new(),
        }
    }

    pub(crate) fn image(&self) -> &MetadataImage {
        &self.image
    }

    /// Applies a record the driver has persisted at `offset` (tables apply one at a time).
    #[cfg(test)]
    pub(crate) fn apply(&mut self, offset: i64, record: &MetadataRecord) -> bool {
        self.image.apply(offset, record)
    }

    /// Applies a committed entry of the metadata log (the records of one command).
    pub(crate) fn apply_entry(&mut self, offset: i64, records: &[MetadataRecord]) -> bool {
        self.image.apply_entry(offset, records)
    }

    /// Registers (or re-registers, after a restart) a broker. Returns its new epoch,
    /// which is greater than any epoch the id had before. The broker starts fenced and,
    /// since a new incarnation has lost its predecessor's in-memory state, leaves every
    /// ISR the way a fenced broker does.
    pub(crate) fn register(
        &mut self,
        id: i32,
        host: &str,
        port: i32,
        now_ms: u64,
    ) -> Result<(i64, Vec<MetadataRecord>), ControllerError> {
        if id < 0 {
            return Err(ControllerError::InvalidRequest(format!(
                "broker id {id} is negative"
            )));
        }
        if host.is_empty() || !(1..=65535).contains(&port) {
            return Err(ControllerError::InvalidRequest(format!(
                "broker {id}: invalid endpoint {host}:{port}"
            )));
        }
        let previous = self.image.broker(id).map_or(-1, |b| b.epoch);
        let epoch = (self.image.offset() + 1).max(previous + 1);
        let mut changes = Changes::new(&self.image);
        changes.push(MetadataRecord::RegisterBroker {
            id,
            epoch,
            host: host.to_string(),
            port,
        });
        changes.fence(id, epoch);
        self.last_heartbeat_ms.insert(id, now_ms);
        self.lost_deadline_ms.remove(&id);
        self.settled.remove(&id);
        tracing::info!(broker = id, epoch, host, port, "registering broker");
        Ok((epoch, changes.into_records()))
    }

    /// A broker heartbeat. Unfences a fenced broker that has caught up with the metadata
    /// log up to its own registration; fences a broker that wants to shut down (which
    /// moves its leaderships away in the same records), and tells it to go once the
    /// committed image shows it leading nothing.
    #[cfg(test)]
    pub(crate) fn heartbeat(
        &mut self,
        id: i32,
        epoch: i64,
        metadata_offset: i64,
        want_shutdown: bool,
        now_ms: u64,
    ) -> Result<(HeartbeatReply, Vec<MetadataRecord>), ControllerError> {
        self.heartbeat_with(
            Heartbeat {
                want_shutdown,
                ..Heartbeat::routine(id, epoch, metadata_offset)
            },
            now_ms,
        )
    }

    /// [`Controller::heartbeat`] with Kafka's `want_fence`: a broker that is not ready to
    /// serve (e.g. a replica recovered below its checkpointed HW has not caught up, or one
    /// is being repaired) is fenced — out of every ISR and election — while it asks.
    pub(crate) fn heartbeat_with(
        &mut self,
        hb: Heartbeat,
        now_ms: u64,
    ) -> Result<(HeartbeatReply, Vec<MetadataRecord>), ControllerError> {
        let Heartbeat {
            id,
            epoch,
            want_shutdown,
            ..
        } = hb;
        let broker = check_broker(&self.image, id, epoch)?;
        let change = if self.heard_since(id, now_ms) {
            // A later heartbeat of this broker was answered first (the quick way, while this
            // one waited behind commits): what this one asked for is out of date.
            HeartbeatChange::Nothing
        } else {
            self.heartbeat_change(broker, hb)
        };
        let fenced = broker.fenced;
        self.heard_from(id, now_ms);
        let mut changes = Changes::new(&self.image);
        match change {
            HeartbeatChange::Shutdown => {
                self.shutting_down.insert(id, epoch);
                if !fenced {
                    tracing::info!(broker = id, "controlled shutdown");
                    changes.fence(id, epoch);
                    self.settled.remove(&id);
                }
            }
            HeartbeatChange::Fence => {
                // A running broker is about to lack acknowledged data (a replica under
                // repair): out of every ISR and leadership until it has it back.
                tracing::info!(broker = id, "fenced at its own request");
                changes.fence(id, epoch);
                self.settled.remove(&id);
            }
            HeartbeatChange::Unfence => changes.unfence(id, epoch),
            HeartbeatChange::Nothing => {}
        }
        let reply = HeartbeatReply {
            fenced: !changes.is_unfenced(id),
            should_shutdown: want_shutdown
                && fenced
                && self.image.partitions_led_by(id).next().is_none(),
        };
        Ok((reply, changes.into_records()))
    }

    /// What a heartbeat of `broker` (already checked against the image) changes.
    fn heartbeat_change(&self, broker: &BrokerInfo, hb: Heartbeat) -> HeartbeatChange {
        if hb.want_shutdown {
            HeartbeatChange::Shutdown
        } else if hb.want_fence && !broker.fenced {
            // Not while that would leave a partition without a leader (another broker
            // repairing too): then it waits, keeps asking, and repairs are done one after
            // the other.
            if self.image.can_fence_without_leaderless(broker.id) {
                HeartbeatChange::Fence
            } else {
                HeartbeatChange::Nothing
            }
        } else if broker.fenced
            && !hb.want_fence
            && hb.metadata_offset >= broker.registered_at
            && self.shutting_down.get(&broker.id) != Some(&broker.epoch)
        {
            HeartbeatChange::Unfence
        } else {
            HeartbeatChange::Nothing
        }
    }

    /// A routine heartbeat, answered without waiting for the metadata log: when it changes
    /// nothing (the broker runs and asks for nothing new, or still catches up), this notes
    /// that the broker is alive and answers; `None` when it must run as a command, in
    /// order, after the commands before it (it fences, unfences or shuts down, or is
    /// refused). A heartbeat that queued behind a chain of commits got its answer late,
    /// the broker's next heartbeat came later still, and under load brokers that were
    /// alive were fenced.
    pub(crate) fn quiet_heartbeat(&mut self, hb: Heartbeat, now_ms: u64) -> Option<HeartbeatReply> {
        let broker = check_broker(&self.image, hb.id, hb.epoch).ok()?;
        if self.heartbeat_change(broker, hb) != HeartbeatChange::Nothing {
            return None;
        }
        let fenced = broker.fenced;
        self.heard_from(hb.id, now_ms);
        Some(HeartbeatReply {
            fenced,
            should_shutdown: false,
        })
    }

    /// A heartbeat came from broker `id`: its session runs from then (never back).
    fn heard_from(&mut self, id: i32, now_ms: u64) {
        let last = self.last_heartbeat_ms.entry(id).or_insert(now_ms);
        *last = (*last).max(now_ms);
        self.lost_deadline_ms.remove(&id);
    }

    /// Whether broker `id` was heard from after `now_ms`.
    fn heard_since(&self, id: i32, now_ms: u64) -> bool {
        self.last_heartbeat_ms
            .get(&id)
            .is_some_and(|&last| last > now_ms)
    }

    /// The connection broker `id` (incarnation `epoch`) heartbeats over has closed: its
    /// process died (the kernel closes a killed process's sockets at once) or the link
    /// broke; or it ran the previous active controller, which stopped answering the
    /// quorum. Its session now ends `connection_grace_ms` from now, unless a heartbeat comes
    /// first: a live broker reconnects and heartbeats within its interval. A broker that
    /// dies without closing its sockets (power loss, a cut cable) is still fenced by the
    /// session timeout.
    pub(crate) fn connection_lost(&mut self, id: i32, epoch: i64, now_ms: u64) {
        let grace = self.config.connection_grace_ms;
        if grace == 0 {
            return;
        }
        if !self
            .image
            .broker(id)
            .is_some_and(|b| b.epoch == epoch && !b.fenced)
        {
            return;
        }
        if self.heard_since(id, now_ms) {
            // It heartbeated after the close (over a new connection), answered the quick
            // way while this waited behind commits: it is back.
            return;
        }
        let deadline = now_ms + grace;
        let session_end = self.last_heartbeat_ms.get(&id).copied().unwrap_or(now_ms)
            + self.config.session_timeout_ms;
        if deadline < session_end {
            tracing::info!(broker = id, grace_ms = grace, "heartbeat connection closed");
            let d = self.lost_deadline_ms.entry(id).or_insert(deadline);
            *d = (*d).min(deadline);
        }
    }

    /// Periodic work: fences every unfenced broker silent for longer than the session
    /// timeout, elects leaders for leaderless partitions that have an unfenced ISR
    /// member, and gives leadership back to preferred replicas (`replicas[0]`) that are
    /// in the ISR and were already unfenced at the previous tick.
    pub(crate) fn tick(&mut self, now_ms: u64) -> Vec<MetadataRecord> {
        let mut expired = Vec::new();
        for b in self.image.unfenced_brokers() {
            let last = *self.last_heartbeat_ms.entry(b.id).or_insert(now_ms);
            let silent = now_ms.saturating_sub(last);
            let closed = self
                .lost_deadline_ms
                .get(&b.id)
                .is_some_and(|d| now_ms > *d);
            if silent > self.config.session_timeout_ms || closed {
                tracing::warn!(
                    broker = b.id,
                    silent_ms = silent,
                    heartbeat_connection_closed = closed,
                    "broker session expired"
                );
                expired.push((b.id, b.epoch));
            }
        }
        let mut changes = Changes::new(&self.image);
        changes.fence_all(&expired);
        changes.elect_leaderless();
        changes.rebalance(&self.settled);
        self.settled = self
            .image
            .brokers()
            .map(|b| b.id)
            .filter(|id| changes.is_unfenced(*id))
            .collect();
        changes.into_records()
    }

    /// Creates a topic: validates it and assigns replicas round-robin over the sorted
    /// unfenced brokers, starting at the assignment cursor (partition `p`, replica `j`
    /// goes to `brokers[(cursor + p + j) % n]`) and moving the cursor past this topic.
    /// `None` or `-1` take the configured defaults. A `min.insync.replicas` config is
    /// added from the defaults when absent, so brokers read it from the image alone.
    pub(crate) fn create_topic(
        &self,
        name: &str,
        partitions: Option<i32>,
        replication_factor: Option<i16>,
        configs: BTreeMap<String, String>,
    ) -> Result<Vec<MetadataRecord>, ControllerError> {
        self.check_new_topic(name)?;
        let partitions = match partitions {
            None | Some(-1) => self.config.default_partitions,
            Some(p) => p,
        };
        if !(1..=MAX_PARTITIONS).contains(&partitions) {
            return Err(ControllerError::InvalidPartitions(partitions));
        }
        let brokers: Vec<i32> = self.image.unfenced_brokers().map(|b| b.id).collect();
        let factor = match replication_factor {
            None | Some(-1) => self.config.default_replication_factor,
            Some(f) => f,
        };
        let rf = usize::try_from(factor).unwrap_or(0);
        if rf < 1 || rf > brokers.len() {
            return Err(ControllerError::InvalidReplicationFactor {
                factor,
                brokers: brokers.len(),
            });
        }
        let cursor = self.image.assignment_cursor();
        let n = brokers.len() as u64;
        let assignments = (0..partitions)
            .map(|p| {
                (0..rf as u64)
                    .map(|j| brokers[((u64::from(cursor) + p as u64 + j) % n) as usize])
                    .collect()
            })
            .collect();
        let mut records = self.topic_records(name, Uuid::new_v4(), assignments, configs)?;
        records.push(MetadataRecord::AssignmentCursor {
            next: cursor.wrapping_add(partitions as u32),
        });
        tracing::info!(
            topic = name,
            partitions,
            replication_factor = factor,
            "creating topic"
        );
        Ok(records)
    }

    /// [`Self::create_topic`] or [`Self::create_topic_assigned`], as `t` asks.
    pub(crate) fn new_topic(&self, t: &NewTopic) -> Result<Vec<MetadataRecord>, ControllerError> {
        if t.assignments.is_empty() {
            self.create_topic(
                &t.name,
                t.partitions,
                t.replication_factor,
                t.configs.clone(),
            )
        } else if t.partitions.is_some_and(|p| p != -1)
            || t.replication_factor.is_some_and(|f| f != -1)
        {
            Err(ControllerError::InvalidRequest(
                "give either assignments or partitions and replication factor".into(),
            ))
        } else {
            self.create_topic_assigned(&t.name, t.assignments.clone(), t.configs.clone())
        }
    }

    /// Creates a topic with the replicas given per partition (CreateTopics `assignments`):
    /// partition `i` gets `assignments[i]`, every list of one length, of distinct registered
    /// brokers. The first unfenced one leads.
    pub(crate) fn create_topic_assigned(
        &self,
        name: &str,
        assignments: Vec<Vec<i32>>,
        configs: BTreeMap<String, String>,
    ) -> Result<Vec<MetadataRecord>, ControllerError> {
        self.check_new_topic(name)?;
        let partitions = i32::try_from(assignments.len()).unwrap_or(i32::MAX);
        if !(1..=MAX_PARTITIONS).contains(&partitions) {
            return Err(ControllerError::InvalidPartitions(partitions));
        }
        let rf = assignments[0].len();
        for (p, replicas) in assignments.iter().enumerate() {
            let bad = |why: String| {
                Err(ControllerError::InvalidReplicaAssignment(format!(
                    "partition {p}: {why}"
                )))
            };
            if replicas.is_empty() || replicas.len() != rf {
                return bad(format!(
                    "{} replicas where partition 0 has {rf}",
                    replicas.len()
                ));
            }
            let distinct: BTreeSet<i32> = replicas.iter().copied().collect();
            if distinct.len() != replicas.len() {
                return bad(format!("broker named twice in {replicas:?}"));
            }
            if let Some(b) = replicas.iter().find(|&&b| self.image.broker(b).is_none()) {
                return bad(format!("broker {b} is not registered"));
            }
        }
        tracing::info!(
            topic = name,
            partitions,
            replication_factor = rf,
            "creating topic with given assignments"
        );
        self.topic_records(name, Uuid::new_v4(), assignments, configs)
    }

    /// The records of a topic kept by a broker that ran before the one control plane (its
    /// own `topics.toml`): the same id and configs, every partition on `broker` alone, in an
    /// ISR of one and leaderless until that broker registers and is unfenced. Refused if a
    /// topic of that name exists, unless it is this very topic (an import that stopped
    /// half-way and runs again).
    pub(crate) fn import_topic(
        &self,
        name: &str,
        id: Uuid,
        partitions: i32,
        broker: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<Vec<MetadataRecord>, ControllerError> {
        if self.image.topic(name).is_some_and(|t| t.id == id) {
            return Ok(Vec::new());
        }
        self.check_new_topic(name)?;
        if !(1..=MAX_PARTITIONS).contains(&partitions) {
            return Err(ControllerError::InvalidPartitions(partitions));
        }
        let mut records =
            self.topic_records(name, id, vec![vec![broker]; partitions as usize], configs)?;
        for r in &mut records {
            if let MetadataRecord::Partition(p) = r {
                p.leader = NO_LEADER;
            }
        }
        Ok(records)
    }

    fn check_new_topic(&self, name: &str) -> Result<(), ControllerError> {
        validate_topic_name(name).map_err(|reason| ControllerError::InvalidTopicName {
            name: name.to_string(),
            reason: reason.to_string(),
        })?;
        if name == METADATA_TOPIC {
            return Err(ControllerError::InvalidTopicName {
                name: name.to_string(),
                reason: "reserved for the metadata log".to_string(),
            });
        }
        if self.image.topic(name).is_some() {
            return Err(ControllerError::TopicExists(name.to_string()));
        }
        Ok(())
    }

    /// A `Topic` record (configs checked, `min.insync.replicas` defaulted) and one
    /// `Partition` record per assignment, led by its first unfenced replica.
    fn topic_records(
        &self,
        name: &str,
        id: Uuid,
        assignments: Vec<Vec<i32>>,
        mut configs: BTreeMap<String, String>,
    ) -> Result<Vec<MetadataRecord>, ControllerError> {
        topic_log_config(&LogConfig::default(), &configs)
            .map_err(ControllerError::InvalidConfig)?;
        configs
            .entry("min.insync.replicas".to_string())
            .or_insert_with(|| self.config.default_min_insync_replicas.to_string());
        let mut records = Vec::with_capacity(assignments.len() + 2);
        records.push(MetadataRecord::Topic {
            name: name.to_string(),
            id,
            configs,
        });
        for (p, replicas) in assignments.into_iter().enumerate() {
            let leader = replicas
                .iter()
                .copied()
                .find(|&b| self.image.is_unfenced(b))
                .unwrap_or(NO_LEADER);
            records.push(MetadataRecord::Partition(PartitionRecord {
                topic: name.to_string(),
                partition: p as i32,
                isr: replicas.clone(),
                leader,
                replicas,
                leader_epoch: 0,
                partition_epoch: 0,
            }));
        }
        Ok(records)
    }

    /// The next block of [`PRODUCER_ID_BLOCK`] producer ids for a registered broker:
    /// `(first id, count)`. Ids come from the metadata log's counter, so none is handed out
    /// twice, across brokers and restarts.
    pub(crate) fn allocate_producer_ids(
        &self,
        broker: i32,
        broker_epoch: i64,
    ) -> Result<((i64, i32), Vec<MetadataRecord>), ControllerError> {
        check_broker(&self.image, broker, broker_epoch)?;
        let start = self.image.next_producer_id();
        let next = start
            .checked_add(i64::from(PRODUCER_ID_BLOCK))
            .ok_or_else(|| ControllerError::InvalidRequest("producer ids exhausted".into()))?;
        tracing::info!(broker, start, next, "allocating producer ids");
        Ok((
            (start, PRODUCER_ID_BLOCK),
            vec![MetadataRecord::ProducerIds {
                broker,
                broker_epoch,
                next,
            }],
        ))
    }

    /// Deletes a topic; brokers remove their replicas when they replay the record.
    pub(crate) fn delete_topic(&self, name: &str) -> Result<Vec<MetadataRecord>, ControllerError> {
        let topic = self
            .image
            .topic(name)
            .ok_or_else(|| ControllerError::UnknownTopic(name.to_string()))?;
        tracing::info!(topic = name, "deleting topic");
        Ok(vec![MetadataRecord::RemoveTopic {
            name: name.to_string(),
            id: topic.id,
        }])
    }

    /// A leader's ISR change, as a compare-and-set on (leader epoch, partition epoch)
    /// like Kafka's `validateAlterPartitionData`. Returns the partition state the leader
    /// should adopt (the current one if nothing changes) and the records to persist.
    /// The new ISR is stored in `replicas` order.
    pub(crate) fn alter_partition(
        &self,
        req: &AlterPartitionRequest,
    ) -> Result<(PartitionRecord, Vec<MetadataRecord>), ControllerError> {
        let (topic, partition) = (req.topic.clone(), req.partition);
        match check_broker(&self.image, req.broker_id, req.broker_epoch) {
            Err(ControllerError::BrokerIdNotRegistered { id }) => {
                return Err(ControllerError::StaleBrokerEpoch {
                    id,
                    given: req.broker_epoch,
                    current: -1,
                })
            }
            other => other?,
        };
        let cur = self
            .image
            .partition(&req.topic, req.partition)
            .ok_or_else(|| ControllerError::UnknownTopicOrPartition {
                topic: topic.clone(),
                partition,
            })?;
        if req.leader_epoch > cur.leader_epoch {
            return Err(ControllerError::UnknownLeaderEpoch {
                topic,
                partition,
                given: req.leader_epoch,
                current: cur.leader_epoch,
            });
        }
        if req.leader_epoch < cur.leader_epoch || req.broker_id != cur.leader {
            return Err(ControllerError::FencedLeaderEpoch {
                topic,
                partition,
                broker: req.broker_id,
                given: req.leader_epoch,
                leader: cur.leader,
                current: cur.leader_epoch,
            });
        }
        if req.partition_epoch != cur.partition_epoch {
            return Err(ControllerError::InvalidUpdateVersion {
                topic,
                partition,
                given: req.partition_epoch,
                current: cur.partition_epoch,
            });
        }
        let members: BTreeSet<i32> = req.new_isr.iter().map(|(id, _)| *id).collect();
        if members.len() != req.new_isr.len() {
            return Err(ControllerError::InvalidRequest(format!(
                "{topic}-{partition}: duplicate replica in the new isr"
            )));
        }
        if !members.contains(&cur.leader) {
            return Err(ControllerError::InvalidRequest(format!(
                "{topic}-{partition}: the new isr does not contain the leader {}",
                cur.leader
            )));
        }
        if let Some(r) = members.iter().find(|r| !cur.replicas.contains(r)) {
            return Err(ControllerError::InvalidRequest(format!(
                "{topic}-{partition}: isr member {r} is not a replica"
            )));
        }
        for &(replica, epoch) in &req.new_isr {
            if cur.isr.contains(&replica) {
                continue;
            }
            let ineligible = |reason| ControllerError::IneligibleReplica {
                topic: topic.clone(),
                partition,
                replica,
                reason,
            };
            match self.image.broker(replica) {
                None => return Err(ineligible("not registered")),
                Some(b) if b.fenced => return Err(ineligible("fenced")),
                Some(b) if b.epoch != epoch => return Err(ineligible("stale broker epoch")),
                Some(_) => {}
            }
        }
        let isr: Vec<i32> = cur
            .replicas
            .iter()
            .copied()
            .filter(|r| members.contains(r))
            .collect();
        if isr == cur.isr {
            return Ok((cur.clone(), Vec::new()));
        }
        debug_assert_ne!(cur.leader, NO_LEADER);
        let next = PartitionRecord {
            isr,
            partition_epoch: cur.partition_epoch + 1,
            ..cur.clone()
        };
        tracing::info!(topic, partition, isr = ?next.isr, partition_epoch = next.partition_epoch, "isr change");
        Ok((next.clone(), vec![MetadataRecord::Partition(next)]))
    }
}

/// The registered broker `id`, if `epoch` is its current epoch.
fn check_broker(
    image: &MetadataImage,
    id: i32,
    epoch: i64,
) -> Result<&BrokerInfo, ControllerError> {
    let broker = image
        .broker(id)
        .ok_or(ControllerError::BrokerIdNotRegistered { id })?;
    if broker.epoch != epoch {
        return Err(ControllerError::StaleBrokerEpoch {
            id,
            given: epoch,
            current: broker.epoch,
        });
    }
    Ok(broker)
}
