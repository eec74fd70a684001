//! The Raft log storage of one voter: the entries after the newest snapshot kept in memory
//! (what Raft reads), and — on a real voter — made durable on disk before Raft hears they
//! are (see the module doc of [`super`] for the format). The simulation test runs the same
//! store without the disk part.

use super::entry;
use super::entry::MetadataLogError;
use super::files::{self, FileError};
use keel_storage::{Log, LogConfig, StorageError};
use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError as RaftStorageError};
use std::path::Path;
use std::sync::Arc;

const HARD_STATE_FILE: &str = "quorum-state";
const HARD_STATE_MAGIC: &[u8; 8] = b"KEELHS01";
const SNAPSHOT_FILE: &str = "snapshot";
const SNAPSHOT_MAGIC: &[u8; 8] = b"KEELSN01";
/// The metadata log's segment size: small, so snapshots free the space below them soon.
const SEGMENT_BYTES: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error(transparent)]
    Log(#[from] StorageError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Decode(#[from] MetadataLogError),
    #[error("{0}")]
    Inconsistent(String),
}

/// The on-disk half of a [`RaftStore`].
#[derive(Clone)]
struct Disk {
    log: Arc<Log>,
    dir: std::path::PathBuf,
}

#[derive(Clone)]
pub(crate) struct RaftStore {
    hard: HardState,
    /// The newest snapshot (index 0 and no data before the first).
    snap: Snapshot,
    /// Entries `snap.index + 1 ..= last`.
    entries: Vec<Entry>,
    disk: Option<Disk>,
}

impl RaftStore {
    /// A store in memory only, for the simulation: `voters` are raft ids.
    #[cfg(test)]
    pub(crate) fn in_memory(voters: &[u64]) -> Self {
        let mut snap = Snapshot::default();
        snap.mut_metadata().mut_conf_state().voters = voters.to_vec();
        Self {
            hard: HardState::default(),
            snap,
            entries: Vec::new(),
            disk: None,
        }
    }

    /// Opens (or creates) the store in `dir`. A new one starts with `voters` (raft ids); an
    /// existing one must have been made for the same voters.
    pub(crate) fn open(dir: &Path, voters: &[u64]) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| FileError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let hard_path = dir.join(HARD_STATE_FILE);
        let hard = match files::read(&hard_path, HARD_STATE_MAGIC)? {
            Some(b) => HardState::parse_from_bytes(&b).map_err(|e| FileError::Damaged {
                path: hard_path.clone(),
                reason: e.to_string(),
            })?,
            None => HardState::default(),
        };
        let snap_path = dir.join(SNAPSHOT_FILE);
        let snap = match files::read(&snap_path, SNAPSHOT_MAGIC)? {
            Some(b) => Snapshot::parse_from_bytes(&b).map_err(|e| FileError::Damaged {
                path: snap_path.clone(),
                reason: e.to_string(),
            })?,
            None => {
                let mut s = Snapshot::default();
                s.mut_metadata().mut_conf_state().voters = voters.to_vec();
                s
            }
        };
        let mut stored: Vec<u64> = snap.get_metadata().get_conf_state().voters.clone();
        stored.sort_unstable();
        let mut wanted = voters.to_vec();
        wanted.sort_unstable();
        if stored != wanted {
            return Err(StoreError::Inconsistent(format!(
                "the metadata log in {} belongs to the voters {:?}, not {:?}: changing the voters \
                 of an existing cluster is not supported",
                dir.display(),
                stored
                    .iter()
                    .map(|&v| super::node_id(v))
                    .collect::<Vec<_>>(),
                wanted
                    .iter()
                    .map(|&v| super::node_id(v))
                    .collect::<Vec<_>>(),
            )));
        }
        let config = LogConfig {
            retention_ms: None,
            retention_bytes: None,
            segment_ms: None,
            segment_bytes: SEGMENT_BYTES,
            max_batch_bytes: super::entry::MAX_BATCH_BYTES,
            ..LogConfig::default()
        };
        let log = Log::open(dir, config)?;
        let first = snap.get_metadata().index + 1;
        let fresh = log.log_end_offset() == 0 && log.log_start_offset() == 0;
        if !fresh && hard == HardState::default() && snap.get_metadata().index == 0 {
            return Err(StoreError::Inconsistent(format!(
                "{} holds a metadata log from before the controller quorum; start an earlier \
                 Keel on it, or give this node another log.dirs",
                dir.display()
            )));
        }
        if fresh || log.log_end_offset() < first as i64 || log.log_start_offset() > first as i64 {
            // Nothing after the snapshot survives here (a new log, or a snapshot installed
            // just before a crash): the log starts after it.
            log.truncate_fully_and_start_at(first as i64)?;
        }
        let mut entries = Vec::new();
        let end = log.log_end_offset();
        let mut offset = first as i64;
        while offset < end {
            let read = log.read(offset, 4 << 20, end)?;
            let got = entry::decode(read.records)?;
            let Some(last) = got.last() else {
                return Err(StoreError::Inconsistent(format!(
                    "{}: nothing readable at offset {offset} below the end {end}",
                    dir.display()
                )));
            };
            offset = last.index as i64 + 1;
            entries.extend(got.into_iter().filter(|e| e.index >= first));
        }
        if entries.first().is_some_and(|e| e.index != first)
            || entries.windows(2).any(|w| w[1].index != w[0].index + 1)
        {
            return Err(StoreError::Inconsistent(format!(
                "{}: the metadata log has a gap after offset {}",
                dir.display(),
                first - 1
            )));
        }
        let mut store = Self {
            hard,
            snap,
            entries,
            disk: Some(Disk {
                log: Arc::new(log),
                dir: dir.to_path_buf(),
            }),
        };
        // A commit beyond what survived (it is not fsynced with every advance) is unknown
        // again; Raft learns it anew from the leader.
        let last = store.last();
        if store.hard.commit > last {
            store.hard.commit = last.max(store.snap.get_metadata().index);
        }
        Ok(store)
    }

    /// The log brokers and `keel check` read (on a real voter).
    pub(crate) fn log(&self) -> Option<Arc<Log>> {
        self.disk.as_ref().map(|d| d.log.clone())
    }

    pub(crate) fn snapshot_index(&self) -> u64 {
        self.snap.get_metadata().index
    }

    pub(crate) fn snapshot_data(&self) -> &[u8] {
        &self.snap.data
    }

    pub(crate) fn snapshot_term(&self) -> u64 {
        self.snap.get_metadata().term
    }

    fn first(&self) -> u64 {
        self.snap.get_metadata().index + 1
    }

    pub(crate) fn last(&self) -> u64 {
        self.snap.get_metadata().index + self.entries.len() as u64
    }

    /// Makes `new` durable after the entries before its first, replacing any suffix it
    /// conflicts with.
    pub(crate) fn append(&mut self, new: &[Entry]) -> Result<(), StoreError> {
        let Some(head) = new.first() else {
            return Ok(());
        };
        if head.index < self.first() || head.index > self.last() + 1 {
            return Err(StoreError::Inconsistent(format!(
                "append at {} to a log holding {}..={}",
                head.index,
                self.first(),
                self.last()
            )));
        }
        if let Some(d) = &self.disk {
            if (head.index as i64) < d.log.log_end_offset() {
                d.log.truncate_to(head.index as i64)?;
            }
            let mut bytes = Vec::new();
            for e in new {
                bytes.extend_from_slice(&entry::encode(e));
            }
            d.log.append_as_follower(&bytes)?;
            d.log.flush()?;
        }
        self.entries.truncate((head.index - self.first()) as usize);
        self.entries.extend_from_slice(new);
        Ok(())
    }

    /// Records the hard state. Term and vote are made durable at once (a vote must never
    /// be given twice in a term); the commit index is written with them but not on its own,
    /// since Raft can always learn it again.
    pub(crate) fn set_hard_state(&mut self, hs: &HardState) -> Result<(), StoreError> {
        let durable = hs.term != self.hard.term || hs.vote != self.hard.vote;
        self.hard = hs.clone();
        if durable {
            self.write_hard_state()?;
        }
        Ok(())
    }

    pub(crate) fn set_commit(&mut self, commit: u64) {
        self.hard.commit = commit;
    }

    fn write_hard_state(&self) -> Result<(), StoreError> {
        if let Some(d) = &self.disk {
            let bytes = self.hard.write_to_bytes().expect("a hard state encodes");
            files::write(&d.dir.join(HARD_STATE_FILE), HARD_STATE_MAGIC, &bytes)?;
        }
        Ok(())
    }

    fn write_snapshot(&self) -> Result<(), StoreError> {
        if let Some(d) = &self.disk {
            let bytes = self.snap.write_to_bytes().expect("a snapshot encodes");
            files::write(&d.dir.join(SNAPSHOT_FILE), SNAPSHOT_MAGIC, &bytes)?;
        }
        Ok(())
    }

    /// Replaces everything with the leader's snapshot (this voter was too far behind).
    pub(crate) fn install_snapshot(&mut self, snap: &Snapshot) -> Result<(), StoreError> {
        let index = snap.get_metadata().index;
        if index <= self.snapshot_index() {
            return Ok(());
        }
        self.snap = snap.clone();
        self.write_snapshot()?;
        if let Some(d) = &self.disk {
            d.log.truncate_fully_and_start_at(index as i64 + 1)?;
        }
        self.entries.clear();
        self.hard.commit = self.hard.commit.max(index);
        self.hard.term = self.hard.term.max(snap.get_metadata().term);
        self.write_hard_state()
    }

    /// Takes a snapshot holding `data`, the state applied up to `index`, and drops the log
    /// below it (whole segments, on disk).
    pub(crate) fn compact(&mut self, index: u64, data: Vec<u8>) -> Result<(), StoreError> {
        if index <= self.snapshot_index() || index > self.last() {
            return Ok(());
        }
        let term = self.entry_term(index)?;
        let keep_from = (index + 1 - self.first()) as usize;
        let conf = self.snap.get_metadata().get_conf_state().clone();
        let mut snap = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(conf);
        self.snap = snap;
        self.write_snapshot()?;
        self.write_hard_state()?;
        self.entries.drain(..keep_from);
        if let Some(d) = &self.disk {
            d.log.delete_segments_below(index as i64 + 1)?;
        }
        Ok(())
    }

    fn entry_term(&self, idx: u64) -> Result<u64, StoreError> {
        raft::Storage::term(self, idx)
            .map_err(|e| StoreError::Inconsistent(format!("term of entry {idx}: {e}")))
    }

    /// Closes the on-disk log cleanly.
    pub(crate) fn close(&self) {
        if let Some(d) = &self.disk {
            if let Err(e) = d.log.close() {
                tracing::warn!(error = %e, "closing the metadata log");
            }
        }
    }
}

impl raft::Storage for RaftStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let conf: ConfState = self.snap.get_metadata().get_conf_state().clone();
        Ok(RaftState {
            hard_state: self.hard.clone(),
            conf_state: conf,
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        let from = (low - self.first()) as usize;
        let to = (high - self.first()) as usize;
        let mut out = self.entries[from..to].to_vec();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let snap = self.snap.get_metadata();
        if idx == snap.index {
            return Ok(snap.term);
        }
        if idx < snap.index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        match self.entries.get((idx - self.first()) as usize) {
            Some(e) => Ok(e.term),
            None => Err(raft::Error::Store(RaftStorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snapshot_index() < request_index {
            return Err(raft::Error::Store(
                RaftStorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snap.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::quorum::raft_id;
    use raft::Storage as _;

    #[test]
    fn entries_above_a_mebibyte_survive_a_reopen() {
        // Fencing a broker of 10,000 partitions writes one entry of about 1.3 MB: the log
        // must take it, and give it back after a restart.
        let dir = tempfile::tempdir().unwrap();
        let voters = [raft_id(1)];
        let big = |index: u64, len: usize| Entry {
            index,
            term: 1,
            data: vec![b'x'; len].into(),
            ..Default::default()
        };
        let sizes = [3 << 20, 10, 12 << 20];
        {
            let mut store = RaftStore::open(dir.path(), &voters).unwrap();
            store
                .set_hard_state(&HardState {
                    term: 1,
                    vote: raft_id(1),
                    ..Default::default()
                })
                .unwrap();
            let first = store.last() + 1;
            let new: Vec<Entry> = sizes
                .iter()
                .enumerate()
                .map(|(i, &len)| big(first + i as u64, len))
                .collect();
            store.append(&new).unwrap();
            store.close();
        }
        let store = RaftStore::open(dir.path(), &voters).unwrap();
        let last = store.last();
        let got = store
            .entries(
                last + 1 - sizes.len() as u64,
                last + 1,
                None,
                GetEntriesContext::empty(false),
            )
            .unwrap();
        let lens: Vec<usize> = got.iter().map(|e| e.data.len()).collect();
        assert_eq!(lens, sizes);
    }
}
