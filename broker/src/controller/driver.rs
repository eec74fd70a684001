//! The controller's I/O driver: steps the [`Controller`] one command at a time, persists
//! the records the command returns to the [`MetadataLog`] (fsynced), and only then applies
//! them and answers. Every method blocks on disk I/O; async callers use `spawn_blocking`.
//!
//! A failed metadata write is fatal ([`DriverError::Storage`]): the controller can no
//! longer tell what is durable, so its process must stop rather than answer.

use super::image::{is_leader_election, MetadataImage};
use super::machine::{
    AlterPartitionRequest, Controller, ControllerConfig, HeartbeatReply, NewTopic,
};
use super::metadata_log::{MetadataLog, MetadataLogError};
use super::records::{MetadataRecord, PartitionRecord};
use super::ControllerError;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use tokio::sync::watch;

/// A topic of a broker from before the one control plane, to import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImportedTopic {
    pub(crate) name: String,
    pub(crate) id: uuid::Uuid,
    pub(crate) partitions: i32,
    pub(crate) configs: BTreeMap<String, String>,
}

fn topic_id(records: &[MetadataRecord]) -> Option<uuid::Uuid> {
    records.iter().find_map(|r| match r {
        MetadataRecord::Topic { id, .. } => Some(*id),
        _ => None,
    })
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum DriverError {
    /// The command was refused; nothing was written.
    #[error(transparent)]
    Refused(#[from] ControllerError),
    /// The metadata log failed: the controller must stop.
    #[error("metadata log: {0}")]
    Storage(#[from] MetadataLogError),
}

struct Inner {
    controller: Controller,
    log: MetadataLog,
}

pub(crate) struct ControllerDriver {
    inner: Mutex<Inner>,
    /// The metadata log end offset, for brokers' long-polling metadata fetches.
    end: watch::Sender<i64>,
}

impl ControllerDriver {
    /// Opens the metadata log in `dir` and replays it into a fresh controller.
    pub(crate) fn open(dir: &Path, config: ControllerConfig) -> Result<Self, DriverError> {
        let log = MetadataLog::open(dir)?;
        let mut image = MetadataImage::new();
        let replayed = log.replay(&mut image)?;
        tracing::info!(
            records = replayed,
            offset = image.offset(),
            "replayed metadata log"
        );
        let end = log.next_offset();
        Ok(Self {
            inner: Mutex::new(Inner {
                controller: Controller::from_image(config, image),
                log,
            }),
            end: watch::Sender::new(end),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Persists then applies a command's records.
    fn commit(
        &self,
        inner: &mut Inner,
        records: &[MetadataRecord],
        now_ms: u64,
    ) -> Result<(), DriverError> {
        if records.is_empty() {
            return Ok(());
        }
        let first = inner.log.append(records, now_ms as i64)?;
        for (i, r) in records.iter().enumerate() {
            if let MetadataRecord::Partition(p) = r {
                let old = inner.controller.image().partition(&p.topic, p.partition);
                if is_leader_election(old, p) {
                    metrics::counter!(crate::metrics::CONTROLLER_LEADER_ELECTIONS_TOTAL)
                        .increment(1);
                }
            }
            inner.controller.apply(first + i as i64, r);
        }
        self.end.send_replace(inner.log.next_offset());
        Ok(())
    }

    /// A copy of the committed image.
    pub(crate) fn image(&self) -> MetadataImage {
        self.lock().controller.image().clone()
    }

    /// Watches the metadata log's end offset.
    pub(crate) fn subscribe_end(&self) -> watch::Receiver<i64> {
        self.end.subscribe()
    }

    /// Runs `f` with the metadata log (to serve metadata fetches).
    pub(crate) fn with_log<T>(&self, f: impl FnOnce(&MetadataLog) -> T) -> T {
        f(&self.lock().log)
    }

    pub(crate) fn register(
        &self,
        id: i32,
        host: &str,
        port: i32,
        now_ms: u64,
    ) -> Result<i64, DriverError> {
        let mut inner = self.lock();
        let (epoch, records) = inner.controller.register(id, host, port, now_ms)?;
        self.commit(&mut inner, &records, now_ms)?;
        tracing::info!(broker = id, epoch, host, port, "registered broker");
        Ok(epoch)
    }

    pub(crate) fn heartbeat(
        &self,
        id: i32,
        epoch: i64,
        metadata_offset: i64,
        want_shutdown: bool,
        want_fence: bool,
        now_ms: u64,
    ) -> Result<HeartbeatReply, DriverError> {
        let mut inner = self.lock();
        let (reply, records) = inner.controller.heartbeat_with(
            id,
            epoch,
            metadata_offset,
            want_shutdown,
            want_fence,
            now_ms,
        )?;
        self.commit(&mut inner, &records, now_ms)?;
        Ok(reply)
    }

    /// Fences silent brokers and moves leaderships; returns how many records it wrote.
    pub(crate) fn tick(&self, now_ms: u64) -> Result<usize, DriverError> {
        let mut inner = self.lock();
        let records = inner.controller.tick(now_ms);
        self.commit(&mut inner, &records, now_ms)?;
        Ok(records.len())
    }

    /// Creates a topic; returns its id. With `validate_only` the command is only checked:
    /// nothing is written and the id is nil.
    pub(crate) fn create_topic(
        &self,
        t: &NewTopic,
        validate_only: bool,
        now_ms: u64,
    ) -> Result<uuid::Uuid, DriverError> {
        let mut inner = self.lock();
        let records = inner.controller.new_topic(t)?;
        if validate_only {
            return Ok(uuid::Uuid::nil());
        }
        let id = topic_id(&records).expect("a created topic has a topic record");
        self.commit(&mut inner, &records, now_ms)?;
        Ok(id)
    }

    /// Writes the topics a broker kept before the one control plane (see
    /// [`Controller::import_topic`]) in one batch; a topic already imported is skipped.
    pub(crate) fn import_topics(
        &self,
        topics: &[ImportedTopic],
        broker: i32,
        now_ms: u64,
    ) -> Result<usize, DriverError> {
        let mut inner = self.lock();
        let mut records = Vec::new();
        let mut imported = 0;
        for t in topics {
            let r = inner.controller.import_topic(
                &t.name,
                t.id,
                t.partitions,
                broker,
                t.configs.clone(),
            )?;
            imported += usize::from(!r.is_empty());
            records.extend(r);
        }
        self.commit(&mut inner, &records, now_ms)?;
        Ok(imported)
    }

    /// The next block of producer ids for `broker` (see
    /// [`Controller::allocate_producer_ids`]): `(first id, count)`.
    pub(crate) fn allocate_producer_ids(
        &self,
        broker: i32,
        broker_epoch: i64,
        now_ms: u64,
    ) -> Result<(i64, i32), DriverError> {
        let mut inner = self.lock();
        let (block, records) = inner
            .controller
            .allocate_producer_ids(broker, broker_epoch)?;
        self.commit(&mut inner, &records, now_ms)?;
        Ok(block)
    }

    pub(crate) fn delete_topic(&self, name: &str, now_ms: u64) -> Result<(), DriverError> {
        let mut inner = self.lock();
        let records = inner.controller.delete_topic(name)?;
        self.commit(&mut inner, &records, now_ms)
    }

    pub(crate) fn alter_partition(
        &self,
        req: &AlterPartitionRequest,
        now_ms: u64,
    ) -> Result<PartitionRecord, DriverError> {
        let mut inner = self.lock();
        let (record, records) = inner.controller.alter_partition(req)?;
        self.commit(&mut inner, &records, now_ms)?;
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_survive_a_controller_restart() {
        let dir = tempfile::tempdir().unwrap();
        let config = ControllerConfig::default();
        let image = {
            let d = ControllerDriver::open(dir.path(), config.clone()).unwrap();
            let mut end = d.subscribe_end();
            for id in 1..=3 {
                let epoch = d.register(id, "127.0.0.1", 9000 + id, 0).unwrap();
                let offset = d.image().offset();
                assert!(
                    !d.heartbeat(id, epoch, offset, false, false, 1)
                        .unwrap()
                        .fenced
                );
            }
            assert!(end.has_changed().unwrap());
            assert_eq!(*end.borrow_and_update(), d.image().offset() + 1);
            let t = |partitions, rf| NewTopic {
                name: "t".into(),
                partitions: Some(partitions),
                replication_factor: Some(rf),
                ..NewTopic::default()
            };
            assert_eq!(
                d.create_topic(&t(2, 3), true, 2).unwrap(),
                uuid::Uuid::nil()
            );
            assert!(!end.has_changed().unwrap(), "validate_only writes nothing");
            d.create_topic(&t(2, 3), false, 2).unwrap();
            end.borrow_and_update();
            let refused = d.create_topic(&t(1, 1), false, 3);
            assert!(matches!(
                refused,
                Err(DriverError::Refused(ControllerError::TopicExists(_)))
            ));
            assert!(
                !end.has_changed().unwrap(),
                "a refused command writes nothing"
            );
            d.image()
        };
        let d = ControllerDriver::open(dir.path(), config).unwrap();
        assert_eq!(d.image(), image);
        let t = d.image().topic("t").cloned().unwrap();
        assert_eq!(t.partitions.len(), 2);
        assert!(t.partitions.iter().all(|p| p.isr.len() == 3));
        // Brokers re-register after the restart and get newer epochs.
        let before = image.broker(1).unwrap().epoch;
        assert!(d.register(1, "127.0.0.1", 9001, 10).unwrap() > before);
    }
}
