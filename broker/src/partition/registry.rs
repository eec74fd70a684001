//! The replicas this broker holds, by topic, as the metadata image assigns them.
//!
//! The replica manager opens a replica ([`Topics::ensure_replica`]) when the metadata
//! assigns one here and removes it ([`Topics::remove_replica`]) when it no longer does;
//! each partition directory names the topic id it belongs to, so a directory left by a
//! deleted topic is never taken for a re-created one of the same name. A removed replica's
//! directory is renamed `*-delete` at once and removed in the background.

use crate::error::BrokerError;
use crate::partition::{FatalSignal, Replica, Wakeups};
use crate::topic_config::{topic_log_config, topic_min_insync_replicas};
use kafka_protocol::ResponseError;
use keel_storage::LogConfig;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio_util::sync::CancellationToken;

/// What this broker knows of a topic it holds replicas of.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TopicMeta {
    pub(crate) name: String,
    pub(crate) id: uuid::Uuid,
    pub(crate) configs: BTreeMap<String, String>,
}

pub(crate) struct Topic {
    pub(crate) meta: TopicMeta,
    /// The partitions this broker holds a replica of, sorted by partition.
    pub(crate) replicas: Vec<Arc<Replica>>,
}

/// The one rule for serving a client at a partition's leader: the replica must be here, not
/// deleted, and leading; otherwise the error the client is told (either makes it refresh
/// its metadata and retry).
pub(crate) fn leading(replica: Option<&Arc<Replica>>) -> Result<&Arc<Replica>, ResponseError> {
    match replica {
        Some(r) if r.is_deleted() => Err(ResponseError::UnknownTopicOrPartition),
        Some(r) if !r.is_leader() => Err(ResponseError::NotLeaderOrFollower),
        Some(r) => Ok(r),
        None => Err(ResponseError::UnknownTopicOrPartition),
    }
}

impl Topic {
    pub(crate) fn replica(&self, partition: i32) -> Option<Arc<Replica>> {
        // Kept sorted by partition (see `ensure_replica`): a fetch looks up every partition.
        self.replicas
            .binary_search_by_key(&partition, |r| r.partition)
            .ok()
            .map(|i| self.replicas[i].clone())
    }
}

pub(crate) struct Topics {
    /// This broker's id.
    node_id: i32,
    lag_time_max_ms: u64,
    data_dir: PathBuf,
    defaults: LogConfig,
    min_insync_replicas: i32,
    stop: CancellationToken,
    fatal: FatalSignal,
    map: RwLock<HashMap<String, Arc<Topic>>>,
    /// Shard wake-ups shared by every replica (see [`Wakeups`]).
    wakeups: Arc<Wakeups>,
}

impl Topics {
    /// An empty registry over `data_dir`; removes what deletions left unfinished there.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        node_id: i32,
        lag_time_max_ms: u64,
        data_dir: &Path,
        defaults: LogConfig,
        min_insync_replicas: i32,
        stop: CancellationToken,
        fatal: FatalSignal,
    ) -> Self {
        remove_leftover_deletions(data_dir);
        Self {
            node_id,
            lag_time_max_ms,
            data_dir: data_dir.to_path_buf(),
            defaults,
            min_insync_replicas,
            stop,
            fatal,
            map: RwLock::new(HashMap::new()),
            wakeups: Arc::default(),
        }
    }

    /// The node's shard wake-ups, for fetches over many partitions.
    pub(crate) fn wakeups(&self) -> &Wakeups {
        &self.wakeups
    }

    /// The node's window of recently written data kept in the page cache.
    pub(crate) fn page_cache(&self) -> &keel_storage::PageCache {
        &self.defaults.page_cache
    }

    /// The data directory holding every partition directory.
    pub(crate) fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub(crate) fn partition_dir(&self, topic: &str, partition: i32) -> PathBuf {
        self.data_dir.join(format!("{topic}-{partition}"))
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub(crate) fn get_by_id(&self, id: uuid::Uuid) -> Option<Arc<Topic>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .find(|t| t.meta.id == id)
            .cloned()
    }

    pub(crate) fn replica(&self, name: &str, partition: i32) -> Option<Arc<Replica>> {
        self.get(name)?.replica(partition)
    }

    /// The replica of `name`/`partition` if this broker leads it (see [`leading`]).
    pub(crate) fn leader(&self, name: &str, partition: i32) -> Result<Arc<Replica>, ResponseError> {
        leading(self.replica(name, partition).as_ref()).cloned()
    }

    /// Every topic, sorted by name.
    pub(crate) fn all(&self) -> Vec<Arc<Topic>> {
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

    /// The replica of `topic`/`partition` (with the topic's id and configs
    /// from the metadata image), opened — and recovered — if this broker has none yet.
    /// A replica of an older incarnation of the name (another id) is deleted first.
    pub(crate) fn ensure_replica(
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
            crate::partition::ReplicaSettings {
                min_insync_replicas: min_isr,
                lag_time_max_ms: self.lag_time_max_ms,
                wakeups: self.wakeups.clone(),
            },
            crate::partition::role::Role::unassigned(self.node_id),
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
            configs: configs.clone(),
        };
        map.insert(name.to_string(), Arc::new(Topic { meta, replicas }));
        Ok(replica)
    }

    /// Stops and deletes this broker's replica of `topic`/`partition`.
    pub(crate) fn remove_replica(&self, name: &str, id: uuid::Uuid, partition: i32) {
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
            map.insert(
                name.to_string(),
                Arc::new(Topic {
                    meta: topic.meta.clone(),
                    replicas: kept,
                }),
            );
        }
        drop(map);
        for r in &gone {
            Self::retire(r);
        }
    }

    /// Once this broker has the whole metadata: removes every partition
    /// directory that the metadata does not assign here (topics deleted, or replicas moved
    /// away, while it was down) and no open replica uses. Returns how many it moved aside.
    pub(crate) fn remove_unassigned_dirs(&self, assigned: impl Fn(&str, i32) -> bool) -> usize {
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
    pub(crate) fn close_all(&self) {
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
pub(crate) const PARTITION_METADATA: &str = "partition.metadata";

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
    write_partition_topic_id(dir, id)?;
    dir.parent().map_or(Ok(()), sync_dir)
}

/// Writes (fsynced) the file in `dir` that names the topic id it belongs to.
pub(crate) fn write_partition_topic_id(dir: &Path, id: uuid::Uuid) -> Result<(), BrokerError> {
    write_atomically(
        &dir.join(PARTITION_METADATA),
        format!("version: 0\ntopic_id: {id}\n").as_bytes(),
    )
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
pub(crate) fn write_atomically(path: &Path, data: &[u8]) -> Result<(), BrokerError> {
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
pub(crate) fn sync_dir(dir: &Path) -> Result<(), BrokerError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| BrokerError::io(format!("syncing {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
