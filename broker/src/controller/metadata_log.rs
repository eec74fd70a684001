//! The metadata log on disk: a Keel [`Log`] whose record values are JSON
//! [`MetadataRecord`]s, one record batch per controller command.
//!
//! The controller appends a command's records as one batch and fsyncs before applying
//! them, so the image never runs ahead of what a restart can replay. Brokers read the same
//! batches with Fetch and decode them with [`decode_batches`].

use super::image::MetadataImage;
use super::records::MetadataRecord;
use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;
use keel_protocol::encode::values_batch;
use keel_storage::{Log, LogConfig, StorageError};
use std::path::Path;

/// Why a metadata batch could not be written or read back.
#[derive(Debug, thiserror::Error)]
pub enum MetadataLogError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("metadata log offset {offset}: {reason}")]
    Corrupt { offset: i64, reason: String },
}

pub(crate) struct MetadataLog {
    log: Log,
}

/// Leader epoch stamped on metadata batches (one controller voter for now).
const CONTROLLER_EPOCH: i32 = 0;

impl MetadataLog {
    /// Opens (recovers) the metadata log in `dir`. It keeps every record: no retention.
    pub(crate) fn open(dir: &Path) -> Result<Self, MetadataLogError> {
        let config = LogConfig {
            retention_ms: None,
            retention_bytes: None,
            segment_ms: None,
            segment_bytes: 64 << 20,
            ..LogConfig::default()
        };
        Ok(Self {
            log: Log::open(dir, config)?,
        })
    }

    pub(crate) fn log(&self) -> &Log {
        &self.log
    }

    /// Offset the next record will get.
    pub(crate) fn next_offset(&self) -> i64 {
        self.log.log_end_offset()
    }

    /// Appends `records` as one batch and fsyncs it. Returns the offset of the first one.
    pub(crate) fn append(
        &self,
        records: &[MetadataRecord],
        now_ms: i64,
    ) -> Result<i64, MetadataLogError> {
        let batch = encode_batch(records, now_ms);
        let info = self.log.append_as_leader(&batch, CONTROLLER_EPOCH)?;
        self.log.flush()?;
        self.log.set_high_watermark(info.log_end_offset);
        Ok(info.base_offset)
    }

    /// Applies every stored record to `image`, in order.
    pub(crate) fn replay(&self, image: &mut MetadataImage) -> Result<usize, MetadataLogError> {
        let end = self.log.log_end_offset();
        let mut offset = self.log.log_start_offset();
        let mut applied = 0;
        while offset < end {
            let read = self.log.read(offset, 1 << 20, end)?;
            if read.records.is_empty() {
                break;
            }
            for (o, record) in decode_batches(read.records)? {
                if o >= offset {
                    image.apply(o, &record);
                    applied += 1;
                    offset = o + 1;
                }
            }
        }
        Ok(applied)
    }
}

/// One uncompressed v2 batch holding `records`, offsets from 0 (the log assigns them).
fn encode_batch(records: &[MetadataRecord], now_ms: i64) -> Bytes {
    values_batch(records.iter().map(MetadataRecord::encode), now_ms)
}

/// Decodes whole batches (a trailing partial batch is ignored) into (offset, record).
pub fn decode_batches(mut bytes: Bytes) -> Result<Vec<(i64, MetadataRecord)>, MetadataLogError> {
    let mut out = Vec::new();
    let complete: usize = keel_protocol::batch::batches(&bytes)
        .map_while(Result::ok)
        .map(|b| b.bytes.len())
        .sum();
    bytes.truncate(complete);
    let sets =
        RecordBatchDecoder::decode_all(&mut bytes).map_err(|e| MetadataLogError::Corrupt {
            offset: -1,
            reason: e.to_string(),
        })?;
    for record in sets.into_iter().flat_map(|s| s.records) {
        let value = record.value.unwrap_or_default();
        let decoded = MetadataRecord::decode(&value).map_err(|e| MetadataLogError::Corrupt {
            offset: record.offset,
            reason: e.to_string(),
        })?;
        out.push((record.offset, decoded));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::{Controller, ControllerConfig};
    use std::collections::BTreeMap;

    /// Steps a command the way the controller driver does: append, then apply.
    fn commit(log: &MetadataLog, c: &mut Controller, records: Vec<MetadataRecord>) {
        if records.is_empty() {
            return;
        }
        let first = log.append(&records, 0).unwrap();
        for (i, r) in records.iter().enumerate() {
            c.apply(first + i as i64, r);
        }
    }

    #[test]
    fn a_restarted_controller_replays_to_the_same_image() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Controller::new(ControllerConfig::default());
        {
            let log = MetadataLog::open(dir.path()).unwrap();
            for id in 1..=3 {
                let (epoch, records) = c.register(id, "127.0.0.1", 9000 + id, 0).unwrap();
                commit(&log, &mut c, records);
                let offset = c.image().offset();
                let (_, records) = c.heartbeat(id, epoch, offset, false, 10).unwrap();
                commit(&log, &mut c, records);
            }
            let records = c
                .create_topic("orders", Some(3), Some(3), BTreeMap::new())
                .unwrap();
            commit(&log, &mut c, records);
            let records = c.tick(60_000); // every broker silent: all fenced
            commit(&log, &mut c, records);
            assert_eq!(log.next_offset(), c.image().offset() + 1);
        }
        let log = MetadataLog::open(dir.path()).unwrap();
        let mut image = MetadataImage::new();
        let applied = log.replay(&mut image).unwrap();
        assert_eq!(applied as i64, log.next_offset());
        assert_eq!(&image, c.image());
        assert!(image.unfenced_brokers().next().is_none());
    }

    #[test]
    fn fetched_bytes_decode_and_a_partial_tail_is_left_for_later() {
        let dir = tempfile::tempdir().unwrap();
        let log = MetadataLog::open(dir.path()).unwrap();
        let first = vec![MetadataRecord::AssignmentCursor { next: 1 }];
        let second = vec![
            MetadataRecord::AssignmentCursor { next: 2 },
            MetadataRecord::AssignmentCursor { next: 3 },
        ];
        log.append(&first, 0).unwrap();
        log.append(&second, 0).unwrap();
        let all = log.log().read(0, 1 << 20, 3).unwrap().records;
        let decoded = decode_batches(all.clone()).unwrap();
        let offsets: Vec<i64> = decoded.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, vec![0, 1, 2]);
        assert_eq!(decoded[2].1, MetadataRecord::AssignmentCursor { next: 3 });
        // A fetch cut inside the second batch yields the first batch only.
        let cut = all.slice(..all.len() - 5);
        assert_eq!(decode_batches(cut).unwrap().len(), 1);
    }
}
