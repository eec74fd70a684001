//! The topics this broker holds: their metadata (persisted in `<data>/topics.toml`) and
//! the replica of each partition.
//!
//! Create and delete take the registry's write lock for the whole check-and-change, so a
//! create racing a delete of the same name cannot leave an orphan directory or a replica
//! writing into a deleted one. A deleted replica's directory is renamed `*-delete` at
//! once and removed in the background.

use crate::error::BrokerError;
use crate::replica::{FatalSignal, Replica};
use keel_storage::LogConfig;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio_util::sync::CancellationToken;

/// What is stored about a topic.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TopicMeta {
    pub name: String,
    pub id: uuid::Uuid,
    pub partitions: i32,
    pub replication_factor: i16,
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TopicsFile {
    version: u32,
    #[serde(default, rename = "topic")]
    topics: Vec<TopicMeta>,
}

pub struct Topic {
    pub meta: TopicMeta,
    /// The partitions this broker holds a replica of (all of them when standalone).
    pub replicas: Vec<Arc<Replica>>,
}

impl Topic {
    pub fn replica(&self, partition: i32) -> Option<Arc<Replica>> {
        self.replicas
            .iter()
            .find(|r| r.partition == partition)
            .cloned()
    }
}

/// Why a topic could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("topic `{0}` already exists")]
    Exists(String),
    #[error("invalid topic name `{name}`: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid partition count {0}")]
    InvalidPartitions(i32),
    #[error("replication factor {factor} is larger than the {brokers} available broker(s)")]
    InvalidReplicationFactor { factor: i16, brokers: i32 },
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

pub struct Topics {
    /// This broker's id (standalone: the leader of everything).
    node_id: i32,
    lag_time_max_ms: u64,
    data_dir: PathBuf,
    defaults: LogConfig,
    min_insync_replicas: i32,
    stop: CancellationToken,
    fatal: FatalSignal,
    map: RwLock<HashMap<String, Arc<Topic>>>,
}

const TOPICS_FILE: &str = "topics.toml";

impl Topics {
    /// Loads `topics.toml` and opens (recovers) every partition it lists.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        node_id: i32,
        lag_time_max_ms: u64,
        data_dir: &Path,
        defaults: LogConfig,
        min_insync_replicas: i32,
        stop: CancellationToken,
        fatal: FatalSignal,
    ) -> Result<Self, BrokerError> {
        let topics = Self {
            node_id,
            lag_time_max_ms,
            data_dir: data_dir.to_path_buf(),
            defaults,
            min_insync_replicas,
            stop,
            fatal,
            map: RwLock::new(HashMap::new()),
        };
        remove_leftover_deletions(data_dir);
        let path = data_dir.join(TOPICS_FILE);
        let file: TopicsFile = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| BrokerError::TopicMetadata {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => TopicsFile::default(),
            Err(e) => return Err(BrokerError::io(format!("reading {}", path.display()), e)),
        };
        let mut map = HashMap::new();
        for meta in file.topics {
            let topic = topics.open_topic(meta)?;
            map.insert(topic.meta.name.clone(), Arc::new(topic));
        }
        *topics.map.write().unwrap_or_else(|p| p.into_inner()) = map;
        Ok(topics)
    }

    fn open_topic(&self, meta: TopicMeta) -> Result<Topic, BrokerError> {
        let config = topic_log_config(&self.defaults, &meta.configs).map_err(|e| {
            BrokerError::TopicMetadata {
                path: TOPICS_FILE.into(),
                reason: format!("topic {}: {e}", meta.name),
            }
        })?;
        let min_isr = topic_min_insync_replicas(&meta.configs, self.min_insync_replicas).map_err(
            |reason| BrokerError::TopicMetadata {
                path: TOPICS_FILE.into(),
                reason: format!("topic {}: {reason}", meta.name),
            },
        )?;
        let mut replicas = Vec::with_capacity(meta.partitions.max(0) as usize);
        for p in 0..meta.partitions {
            let opened = Replica::open(
                &meta.name,
                p,
                self.partition_dir(&meta.name, p),
                config.clone(),
                crate::replica::ReplicaSettings {
                    min_insync_replicas: min_isr,
                    lag_time_max_ms: self.lag_time_max_ms,
                },
                crate::role::Role::standalone(self.node_id),
                &self.stop,
                &self.fatal,
            );
            match opened {
                Ok(r) => replicas.push(r),
                Err(e) => {
                    // Release the partitions already opened (flusher tasks, handles,
                    // maps). Their directories stay: on startup they hold data; a
                    // failed create removes its own (see `create`).
                    for r in &replicas {
                        r.mark_deleted();
                        let _ = r.log().close();
                    }
                    return Err(e);
                }
            }
        }
        Ok(Topic { meta, replicas })
    }

    /// The data directory holding every partition directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn partition_dir(&self, topic: &str, partition: i32) -> PathBuf {
        self.data_dir.join(format!("{topic}-{partition}"))
    }

    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub fn get_by_id(&self, id: uuid::Uuid) -> Option<Arc<Topic>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .find(|t| t.meta.id == id)
            .cloned()
    }

    pub fn replica(&self, name: &str, partition: i32) -> Option<Arc<Replica>> {
        self.get(name)?.replica(partition)
    }

    /// Every topic, sorted by name.
    pub fn all(&self) -> Vec<Arc<Topic>> {
        let mut v: Vec<_> = self
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
        v
    }

    /// Validates a topic spec without creating anything (also used by `validate_only`).
    pub fn validate_new(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: &BTreeMap<String, String>,
    ) -> Result<(), CreateError> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        self.validate_new_locked(&map, name, partitions, replication_factor, configs)
    }

    /// Creates a topic, its partition directories and logs, and persists the registry.
    pub fn create(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
    ) -> Result<Arc<Topic>, CreateError> {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        self.validate_new_locked(&map, name, partitions, replication_factor, &configs)?;
        let meta = TopicMeta {
            name: name.to_string(),
            id: uuid::Uuid::new_v4(),
            partitions,
            replication_factor,
            configs,
        };
        // A leftover directory of the same name (from a crash between delete steps) is
        // moved aside before the new topic's logs are created.
        for p in 0..partitions {
            let dir = self.partition_dir(name, p);
            if dir.exists() {
                let moved = keel_storage::delete_log_dir(&dir).map_err(BrokerError::from)?;
                remove_in_background(moved);
            }
        }
        let topic = match self.open_topic(meta) {
            Ok(t) => Arc::new(t),
            Err(e) => {
                // The directories were created by this attempt (leftovers were moved
                // aside above): remove them, so a failed create leaves nothing behind.
                for p in 0..partitions {
                    let dir = self.partition_dir(name, p);
                    if dir.exists() {
                        if let Ok(moved) = keel_storage::delete_log_dir(&dir) {
                            remove_in_background(moved);
                        }
                    }
                }
                return Err(e.into());
            }
        };
        map.insert(name.to_string(), topic.clone());
        self.persist(&map)?;
        tracing::info!(topic = name, partitions, "created topic");
        Ok(topic)
    }

    fn validate_new_locked(
        &self,
        map: &HashMap<String, Arc<Topic>>,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: &BTreeMap<String, String>,
    ) -> Result<(), CreateError> {
        if map.contains_key(name) {
            return Err(CreateError::Exists(name.to_string()));
        }
        validate_topic_name(name)?;
        if !(1..=100_000).contains(&partitions) {
            return Err(CreateError::InvalidPartitions(partitions));
        }
        if replication_factor != 1 {
            return Err(CreateError::InvalidReplicationFactor {
                factor: replication_factor,
                brokers: 1,
            });
        }
        topic_log_config(&self.defaults, configs).map_err(CreateError::InvalidConfig)?;
        Ok(())
    }

    /// Deletes a topic: unregisters it, stops its replicas, renames their directories
    /// `*-delete` and removes them in the background. Returns false if it did not exist.
    pub fn delete(&self, name: &str) -> Result<bool, BrokerError> {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let Some(topic) = map.remove(name) else {
            return Ok(false);
        };
        self.persist(&map)?;
        for replica in &topic.replicas {
            replica.mark_deleted();
            if let Err(e) = replica.log().close() {
                tracing::warn!(topic = name, partition = replica.partition, error = %e, "closing deleted replica");
            }
            let moved = keel_storage::delete_log_dir(replica.log().dir())?;
            remove_in_background(moved);
        }
        tracing::info!(topic = name, "deleted topic");
        Ok(true)
    }

    fn persist(&self, map: &HashMap<String, Arc<Topic>>) -> Result<(), BrokerError> {
        let mut topics: Vec<TopicMeta> = map.values().map(|t| t.meta.clone()).collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        let text = toml::to_string(&TopicsFile { version: 1, topics }).map_err(|e| {
            BrokerError::TopicMetadata {
                path: TOPICS_FILE.into(),
                reason: e.to_string(),
            }
        })?;
        write_atomically(&self.data_dir.join(TOPICS_FILE), text.as_bytes())
    }

    /// Cluster mode: the replica of `topic`/`partition` (with the topic's id and configs
    /// from the metadata image), opened — and recovered — if this broker has none yet.
    /// A replica of an older incarnation of the name (another id) is deleted first.
    pub fn ensure_replica(
        &self,
        name: &str,
        id: uuid::Uuid,
        partition: i32,
        configs: &BTreeMap<String, String>,
    ) -> Result<Arc<Replica>, BrokerError> {
        {
            let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
            if let Some(r) = map
                .get(name)
                .filter(|t| t.meta.id == id)
                .and_then(|t| t.replica(partition))
            {
                return Ok(r);
            }
            // A topic re-created under the same name: the old one goes first (its
            // directories have the names the new replicas need).
            let stale = map.get(name).filter(|t| t.meta.id != id).cloned();
            if let Some(old) = stale {
                map.remove(name);
                for r in &old.replicas {
                    Self::retire(r);
                }
            }
        }
        let config =
            topic_log_config(&self.defaults, configs).map_err(|e| BrokerError::TopicMetadata {
                path: "metadata image".into(),
                reason: format!("topic {name}: {e}"),
            })?;
        let dir = self.partition_dir(name, partition);
        claim_partition_dir(&dir, id)?;
        let min_isr =
            topic_min_insync_replicas(configs, self.min_insync_replicas).map_err(|reason| {
                BrokerError::TopicMetadata {
                    path: "metadata image".into(),
                    reason: format!("topic {name}: {reason}"),
                }
            })?;
        // Opening (recovery, fsyncs) happens outside the registry lock, so the partitions
        // of a new topic open side by side and requests keep being served meanwhile. The
        // caller (the replica manager) serializes changes per partition.
        let replica = Replica::open(
            name,
            partition,
            dir,
            config,
            crate::replica::ReplicaSettings {
                min_insync_replicas: min_isr,
                lag_time_max_ms: self.lag_time_max_ms,
            },
            crate::role::Role::unassigned(self.node_id),
            &self.stop,
            &self.fatal,
        )?;
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let mut replicas = match map.get(name) {
            Some(t) if t.meta.id == id => t.replicas.clone(),
            Some(_) => {
                // The topic was replaced while this replica opened: it is already stale.
                drop(map);
                Self::retire(&replica);
                return Err(BrokerError::TopicMetadata {
                    path: "metadata image".into(),
                    reason: format!("topic {name} was replaced while partition {partition} opened"),
                });
            }
            None => Vec::new(),
        };
        if let Some(existing) = replicas.iter().find(|r| r.partition == partition).cloned() {
            // Cannot happen while changes are serialized per partition; if it ever does,
            // keep the replica others already use and drop ours without writing anything
            // (same directory).
            drop(map);
            tracing::error!(
                topic = name,
                partition,
                "replica opened twice; keeping the first"
            );
            replica.mark_deleted();
            return Ok(existing);
        }
        metrics::counter!(crate::metrics::REPLICAS_CREATED_TOTAL).increment(1);
        replicas.push(replica.clone());
        replicas.sort_by_key(|r| r.partition);
        let meta = TopicMeta {
            name: name.to_string(),
            id,
            partitions: replicas.len() as i32,
            replication_factor: -1,
            configs: configs.clone(),
        };
        map.insert(name.to_string(), Arc::new(Topic { meta, replicas }));
        Ok(replica)
    }

    /// Cluster mode: stops and deletes this broker's replica of `topic`/`partition`.
    pub fn remove_replica(&self, name: &str, id: uuid::Uuid, partition: i32) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let Some(topic) = map.get(name).filter(|t| t.meta.id == id).cloned() else {
            return;
        };
        let (gone, kept): (Vec<_>, Vec<_>) = topic
            .replicas
            .iter()
            .cloned()
            .partition(|r| r.partition == partition);
        if kept.is_empty() {
            map.remove(name);
        } else {
            let meta = TopicMeta {
                partitions: kept.len() as i32,
                ..topic.meta.clone()
            };
            map.insert(
                name.to_string(),
                Arc::new(Topic {
                    meta,
                    replicas: kept,
                }),
            );
        }
        drop(map);
        for r in &gone {
            Self::retire(r);
        }
    }

    /// Cluster mode, once this broker has the whole metadata: removes every partition
    /// directory that the metadata does not assign here (topics deleted, or replicas moved
    /// away, while it was down) and no open replica uses. Returns how many it moved aside.
    pub fn remove_unassigned_dirs(&self, assigned: impl Fn(&str, i32) -> bool) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.data_dir) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let Some((topic, partition)) = parse_partition_dir(&file_name) else {
                continue;
            };
            if !entry.file_type().is_ok_and(|t| t.is_dir())
                || topic.starts_with("__cluster_metadata")
                || assigned(topic, partition)
                || self.replica(topic, partition).is_some()
            {
                continue;
            }
            match keel_storage::delete_log_dir(&entry.path()) {
                Ok(moved) => {
                    tracing::info!(
                        topic,
                        partition,
                        "removing a replica directory no longer assigned here"
                    );
                    remove_in_background(moved);
                    removed += 1;
                }
                Err(e) => {
                    tracing::warn!(topic, partition, error = %e, "cannot move an unassigned replica directory aside")
                }
            }
        }
        removed
    }

    /// Marks a replica deleted, closes its log and moves its directory aside for removal.
    fn retire(r: &Arc<Replica>) {
        r.mark_deleted();
        if let Err(e) = r.log().close() {
            tracing::warn!(topic = %r.topic, partition = r.partition, error = %e, "closing a removed replica");
        }
        metrics::counter!(crate::metrics::REPLICAS_DELETED_TOTAL).increment(1);
        match keel_storage::delete_log_dir(r.log().dir()) {
            Ok(moved) => remove_in_background(moved),
            Err(e) => {
                tracing::error!(topic = %r.topic, partition = r.partition, error = %e, "moving a removed replica aside")
            }
        }
        tracing::info!(topic = %r.topic, partition = r.partition, "removed replica");
    }

    /// Flushes and closes every log (clean shutdown).
    pub fn close_all(&self) {
        for topic in self.all() {
            for r in &topic.replicas {
                if let Err(e) = r.log().close() {
                    tracing::error!(topic = %r.topic, partition = r.partition, error = %e, "closing log");
                }
            }
        }
    }
}

/// The file in each cluster-mode partition directory that names the topic id it belongs to,
/// so a directory left by a deleted topic is never taken for a re-created one of the same
/// name.
pub const PARTITION_METADATA: &str = "partition.metadata";

fn read_partition_topic_id(dir: &Path) -> Option<uuid::Uuid> {
    let text = std::fs::read_to_string(dir.join(PARTITION_METADATA)).ok()?;
    let mut lines = text.lines();
    if lines.next()? != "version: 0" {
        return None;
    }
    lines.next()?.strip_prefix("topic_id: ")?.parse().ok()
}

/// Makes `dir` the directory of topic `id`'s partition: one holding another topic's id, or
/// none (a leftover of an older topic, or of a crash before the id was written), is moved
/// aside first. A new directory gets the id file (fsynced) before any log file, and the
/// log's creation then syncs the directory.
fn claim_partition_dir(dir: &Path, id: uuid::Uuid) -> Result<(), BrokerError> {
    let io = |what: &str, e: std::io::Error| BrokerError::TopicMetadata {
        path: dir.display().to_string(),
        reason: format!("{what}: {e}"),
    };
    if dir.exists() {
        let found = read_partition_topic_id(dir);
        if found == Some(id) {
            return Ok(());
        }
        tracing::warn!(dir = %dir.display(), ?found, expected = %id, "moving aside a partition directory of another topic with this name");
        let moved = keel_storage::delete_log_dir(dir).map_err(|e| BrokerError::TopicMetadata {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        remove_in_background(moved);
    }
    std::fs::create_dir_all(dir).map_err(|e| io("create", e))?;
    write_atomically(
        &dir.join(PARTITION_METADATA),
        format!("version: 0\ntopic_id: {id}\n").as_bytes(),
    )?;
    dir.parent().map_or(Ok(()), sync_dir)
}

/// `"<topic>-<partition>"` as a partition directory name (topics may contain '-').
fn parse_partition_dir(name: &str) -> Option<(&str, i32)> {
    let (topic, partition) = name.rsplit_once('-')?;
    if topic.is_empty() || partition.is_empty() || !partition.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((topic, partition.parse().ok()?))
}

/// Directories renamed `*-delete` by a deletion whose background removal did not finish
/// (the process stopped first) are removed again at startup.
fn remove_leftover_deletions(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir && entry.file_name().to_string_lossy().ends_with("-delete") {
            tracing::info!(dir = %entry.path().display(), "removing a deleted replica left from before");
            remove_in_background(entry.path());
        }
    }
}

fn remove_in_background(dir: PathBuf) {
    std::thread::spawn(move || {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "removing deleted replica directory");
        }
    });
}

/// Writes `path` so that a crash leaves either the old or the new content.
pub fn write_atomically(path: &Path, data: &[u8]) -> Result<(), BrokerError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let ctx = |what: &str| format!("{what} {}", tmp.display());
    let mut f = std::fs::File::create(&tmp).map_err(|e| BrokerError::io(ctx("creating"), e))?;
    f.write_all(data)
        .map_err(|e| BrokerError::io(ctx("writing"), e))?;
    f.sync_all()
        .map_err(|e| BrokerError::io(ctx("syncing"), e))?;
    std::fs::rename(&tmp, path).map_err(|e| BrokerError::io(ctx("renaming"), e))?;
    path.parent().map_or(Ok(()), sync_dir)
}

/// fsyncs a directory, so the entries created, renamed or removed in it are durable.
fn sync_dir(dir: &Path) -> Result<(), BrokerError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| BrokerError::io(format!("syncing {}", dir.display()), e))
}

/// Kafka's topic-name rules.
pub fn validate_topic_name(name: &str) -> Result<(), CreateError> {
    let bad = |reason| {
        Err(CreateError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name == "." || name == ".." {
        return bad("`.` and `..` are not allowed");
    }
    if name.len() > 249 {
        return bad("longer than 249 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return bad("only ASCII letters, digits, `.`, `_` and `-` are allowed");
    }
    Ok(())
}

/// Topic-level configs Keel accepts, applied over the broker's log defaults.
pub const TOPIC_CONFIG_KEYS: &[&str] = &[
    "cleanup.policy",
    "retention.ms",
    "retention.bytes",
    "segment.bytes",
    "segment.ms",
    "max.message.bytes",
    "min.insync.replicas",
];

/// The topic's `min.insync.replicas` (1..=2^31-1), or `default` when it sets none. The one
/// parser for it: validation on create and every replica open use this.
pub fn topic_min_insync_replicas(
    configs: &BTreeMap<String, String>,
    default: i32,
) -> Result<i32, String> {
    match configs.get("min.insync.replicas") {
        None => Ok(default),
        Some(v) => match v.trim().parse::<i32>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(format!(
                "min.insync.replicas: `{v}` is not a number from 1 to {}",
                i32::MAX
            )),
        },
    }
}

pub fn topic_log_config(
    defaults: &LogConfig,
    configs: &BTreeMap<String, String>,
) -> Result<LogConfig, String> {
    let mut c = defaults.clone();
    for (k, v) in configs {
        let num = || {
            v.trim()
                .parse::<i64>()
                .map_err(|_| format!("{k}: `{v}` is not a number"))
        };
        let limit = || -> Result<Option<u64>, String> {
            match num()? {
                -1 => Ok(None),
                n if n >= 0 => Ok(Some(n as u64)),
                _ => Err(format!("{k}: expected -1 or a non-negative number")),
            }
        };
        let positive = || -> Result<u64, String> {
            match num()? {
                n if n > 0 => Ok(n as u64),
                _ => Err(format!("{k}: must be positive")),
            }
        };
        match k.as_str() {
            "cleanup.policy" => {
                c.compact = match v.trim() {
                    "delete" => false,
                    "compact" | "compact,delete" | "delete,compact" => true,
                    _ => return Err(format!("{k}: expected delete or compact, got `{v}`")),
                }
            }
            "retention.ms" => c.retention_ms = limit()?,
            "retention.bytes" => c.retention_bytes = limit()?,
            "segment.bytes" => {
                let n = positive()?;
                if n < 1024 {
                    return Err(format!("{k}: must be at least 1024"));
                }
                c.segment_bytes = n
            }
            "segment.ms" => c.segment_ms = Some(positive()?),
            "max.message.bytes" => {
                c.max_batch_bytes =
                    u32::try_from(positive()?).map_err(|_| format!("{k}: too large"))?
            }
            "min.insync.replicas" => {
                topic_min_insync_replicas(configs, 1)?;
            }
            _ => return Err(format!("unknown topic config `{k}`")),
        }
    }
    c.validate().map_err(|e| e.to_string())?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_insync_replicas_has_one_parser() {
        let with = |v: &str| BTreeMap::from([("min.insync.replicas".to_string(), v.to_string())]);
        assert_eq!(topic_min_insync_replicas(&BTreeMap::new(), 2), Ok(2));
        assert_eq!(topic_min_insync_replicas(&with("3"), 2), Ok(3));
        assert_eq!(topic_min_insync_replicas(&with(" 1 "), 2), Ok(1));
        for bad in ["0", "-1", "x", "", "2147483648"] {
            assert!(topic_min_insync_replicas(&with(bad), 2).is_err(), "{bad:?}");
            assert!(
                topic_log_config(&LogConfig::default(), &with(bad)).is_err(),
                "create accepts what open would refuse: {bad:?}"
            );
        }
    }

    #[test]
    fn partition_dir_names() {
        let table = [
            ("orders-0", Some(("orders", 0))),
            ("my-topic-12", Some(("my-topic", 12))),
            ("t.x-3", Some(("t.x", 3))),
            ("orders-0.18c3a2-delete", None),
            ("orders", None),
            ("-1", None),
            ("orders-", None),
            ("orders--1", Some(("orders-", 1))),
            (".lock", None),
        ];
        for (name, want) in table {
            assert_eq!(parse_partition_dir(name), want, "{name}");
        }
    }

    #[test]
    fn a_partition_directory_of_another_topic_id_is_moved_aside() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("t-0");
        let (old, new) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        claim_partition_dir(&dir, old).unwrap();
        std::fs::write(dir.join("00000000000000000000.log"), b"old data").unwrap();
        // Same id: kept as it is.
        claim_partition_dir(&dir, old).unwrap();
        assert!(dir.join("00000000000000000000.log").exists());
        assert_eq!(read_partition_topic_id(&dir), Some(old));
        // Another id: the old directory goes, the new one starts empty with the new id.
        claim_partition_dir(&dir, new).unwrap();
        assert!(!dir.join("00000000000000000000.log").exists());
        assert_eq!(read_partition_topic_id(&dir), Some(new));
        // No id file at all (a leftover from before ids, or a crash before it was
        // written): not trusted either.
        std::fs::remove_file(dir.join(PARTITION_METADATA)).unwrap();
        std::fs::write(dir.join("00000000000000000000.log"), b"unknown").unwrap();
        claim_partition_dir(&dir, new).unwrap();
        assert!(!dir.join("00000000000000000000.log").exists());
        assert_eq!(read_partition_topic_id(&dir), Some(new));
    }

    #[test]
    fn leftover_deleted_directories_are_removed_at_startup() {
        let dir = tempfile::tempdir().unwrap();
        let leftover = dir.path().join("t-0.18c3a-delete");
        std::fs::create_dir_all(leftover.join("inner")).unwrap();
        std::fs::create_dir_all(dir.path().join("kept-0")).unwrap();
        remove_leftover_deletions(dir.path());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while leftover.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!leftover.exists());
        assert!(dir.path().join("kept-0").exists());
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        for ok in ["a", "orders.v1", "x_y-z", &"n".repeat(249)] {
            validate_topic_name(ok).unwrap();
        }
        for bad in ["", ".", "..", "a b", "ü", "a/b", &"n".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn topic_configs_override_defaults_and_reject_unknowns() {
        let d = LogConfig::default();
        let mut m = BTreeMap::new();
        m.insert("retention.ms".to_string(), "1000".to_string());
        m.insert("segment.bytes".to_string(), "4096".to_string());
        m.insert("retention.bytes".to_string(), "-1".to_string());
        let c = topic_log_config(&d, &m).unwrap();
        assert_eq!(c.retention_ms, Some(1000));
        assert_eq!(c.segment_bytes, 4096);
        assert_eq!(c.retention_bytes, None);
        for (k, v) in [
            ("segment.bytes", "0"),
            ("nope", "1"),
            ("cleanup.policy", "x"),
            ("retention.ms", "-7"),
        ] {
            let mut m = BTreeMap::new();
            m.insert(k.to_string(), v.to_string());
            assert!(topic_log_config(&d, &m).is_err(), "{k}={v}");
        }
    }
}
