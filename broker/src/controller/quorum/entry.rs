//! A Raft entry as a record batch of the metadata log, and back; and the broker's view of
//! fetched batches: `(offset, records)` per entry.

use crate::controller::records::MetadataRecord;
use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;
use keel_protocol::batch::{batches, set_base_offset, set_partition_leader_epoch};
use keel_protocol::encode::{encode_batch, Compression, NewRecord, ProducerIds};
use keel_storage::StorageError;
use raft::prelude::{Entry, EntryType};

/// Why the metadata log could not be written or read back.
#[derive(Debug, thiserror::Error)]
pub enum MetadataLogError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("metadata log offset {offset}: {reason}")]
    Corrupt { offset: i64, reason: String },
}

/// The batch holding `e`: base offset = index, leader epoch = term, one record whose key is
/// the entry type and whose value is the entry's data. No clock in it, so every voter
/// stores the same bytes for the same entry (their digests compare).
pub(crate) fn encode(e: &Entry) -> Bytes {
    let record = NewRecord {
        key: Some(Bytes::copy_from_slice(&[e.get_entry_type() as u8])),
        value: Some(Bytes::copy_from_slice(&e.data)),
        headers: Vec::new(),
        timestamp: 0,
    };
    let batch = encode_batch([record], Compression::None, ProducerIds::NONE)
        .expect("an uncompressed one-record batch always encodes");
    let mut batch = batch.to_vec();
    set_base_offset(&mut batch, e.index as i64);
    set_partition_leader_epoch(&mut batch, e.term as i32);
    Bytes::from(batch)
}

/// The entries in `bytes` (whole batches; a trailing partial batch is ignored).
pub(crate) fn decode(bytes: Bytes) -> Result<Vec<Entry>, MetadataLogError> {
    let mut out = Vec::new();
    for (offset, term, kind, data) in raw_entries(bytes)? {
        let mut e = Entry {
            index: offset as u64,
            term: term as u64,
            data,
            ..Default::default()
        };
        e.set_entry_type(match kind {
            1 => EntryType::EntryConfChange,
            2 => EntryType::EntryConfChangeV2,
            _ => EntryType::EntryNormal,
        });
        out.push(e);
    }
    Ok(out)
}

/// The largest entry (the JSON of one command's records) a voter proposes: a CreateTopics of
/// 1,000 partitions with 3 replicas each is about 1.3 MB.
pub(crate) const MAX_ENTRY_BYTES: usize = 32 << 20;

/// The metadata log's batch limit: one entry and its batch framing.
pub(crate) const MAX_BATCH_BYTES: u32 = MAX_ENTRY_BYTES as u32 + 4096;

/// The records of one command: the data of a normal entry.
pub(crate) fn encode_records(records: &[MetadataRecord]) -> Vec<u8> {
    serde_json::to_vec(records).expect("metadata records are plain data")
}

pub(crate) fn decode_records(
    offset: i64,
    data: &[u8],
) -> Result<Vec<MetadataRecord>, MetadataLogError> {
    if data.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(data).map_err(|e| MetadataLogError::Corrupt {
        offset,
        reason: e.to_string(),
    })
}

/// What a broker applies from fetched metadata batches: each entry's offset and records.
pub fn decode_batches(bytes: Bytes) -> Result<Vec<(i64, Vec<MetadataRecord>)>, MetadataLogError> {
    raw_entries(bytes)?
        .into_iter()
        .map(|(offset, _, kind, data)| {
            let records = if kind == 0 {
                decode_records(offset, &data)?
            } else {
                Vec::new()
            };
            Ok((offset, records))
        })
        .collect()
}

/// `(offset, term, entry type, data)` of each whole batch in `bytes`.
fn raw_entries(mut bytes: Bytes) -> Result<Vec<(i64, i32, u8, Bytes)>, MetadataLogError> {
    let complete: usize = batches(&bytes)
        .map_while(Result::ok)
        .map(|b| b.bytes.len())
        .sum();
    bytes.truncate(complete);
    let epochs: Vec<i32> = batches(&bytes)
        .map_while(Result::ok)
        .map(|b| b.header.partition_leader_epoch())
        .collect();
    let sets =
        RecordBatchDecoder::decode_all(&mut bytes).map_err(|e| MetadataLogError::Corrupt {
            offset: -1,
            reason: e.to_string(),
        })?;
    let mut out = Vec::with_capacity(sets.len());
    for (set, term) in sets.into_iter().zip(epochs) {
        let [record] = <[_; 1]>::try_from(set.records).map_err(|r| MetadataLogError::Corrupt {
            offset: r.first().map_or(-1, |r| r.offset),
            reason: format!("a metadata batch holds {} records, not 1", r.len()),
        })?;
        let kind = record
            .key
            .as_ref()
            .and_then(|k| k.first().copied())
            .unwrap_or(0);
        out.push((record.offset, term, kind, record.value.unwrap_or_default()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::PartitionRecord;

    fn entry(index: u64, term: u64, data: Vec<u8>) -> Entry {
        Entry {
            index,
            term,
            data: data.into(),
            ..Default::default()
        }
    }

    #[test]
    fn entries_round_trip_through_batches() {
        let records = vec![
            MetadataRecord::FenceBroker { id: 2, epoch: 9 },
            MetadataRecord::Partition(PartitionRecord::test_record(1, 4, &[1, 3])),
        ];
        let entries = [
            entry(7, 3, Vec::new()),
            entry(8, 3, encode_records(&records)),
            entry(9, 5, encode_records(&records[..1])),
        ];
        let mut bytes = Vec::new();
        for e in &entries {
            bytes.extend_from_slice(&encode(e));
        }
        // Same entry, same bytes: nothing in the batch depends on who writes it or when.
        assert_eq!(encode(&entries[1]), encode(&entries[1].clone()));
        let back = decode(Bytes::from(bytes.clone())).unwrap();
        assert_eq!(back, entries);
        let seen = decode_batches(Bytes::from(bytes.clone())).unwrap();
        assert_eq!(
            seen,
            vec![
                (7, vec![]),
                (8, records.clone()),
                (9, records[..1].to_vec())
            ]
        );
        // A torn tail is not an entry.
        bytes.truncate(bytes.len() - 3);
        assert_eq!(decode(Bytes::from(bytes)).unwrap().len(), 2);
    }

    #[test]
    fn data_that_is_not_records_is_refused() {
        let e = entry(1, 1, b"{not json".to_vec());
        assert!(matches!(
            decode_batches(encode(&e)),
            Err(MetadataLogError::Corrupt { offset: 1, .. })
        ));
    }
}
