//! The one record-batch encoder of the workspace: new v2 record batches, through
//! kafka-protocol's encoder, with the bookkeeping it needs done in one place.
//!
//! kafka-protocol's encoder starts a new batch whenever `offset - sequence` changes between
//! two records and takes the batch's base sequence from the first one; so the records of one
//! batch get offsets `0..n` and sequences `base..base + n`, where `base` is the producer's
//! first sequence number (idempotence) or `-1` for a batch without a producer id.

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
pub use kafka_protocol::records::{Compression, Record};
use kafka_protocol::records::{
    RecordBatchEncoder, RecordEncodeOptions, TimestampType, NO_PARTITION_LEADER_EPOCH,
    NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE,
};

/// Why a batch could not be encoded (a codec failed, or a record is too large to frame).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode a record batch: {0}")]
pub struct EncodeError(String);

/// Who writes a batch: the idempotent producer's id, epoch and first sequence number, or
/// [`ProducerIds::NONE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerIds {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl ProducerIds {
    /// A batch without a producer id (not idempotent).
    pub const NONE: ProducerIds = ProducerIds {
        producer_id: NO_PRODUCER_ID,
        producer_epoch: NO_PRODUCER_EPOCH,
        base_sequence: NO_SEQUENCE,
    };
}

/// A record for a new batch: key, value, headers in order, and its CreateTime.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewRecord {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
}

impl NewRecord {
    /// A record with only a value.
    pub fn value(value: impl Into<Bytes>, timestamp: i64) -> NewRecord {
        NewRecord {
            value: Some(value.into()),
            timestamp,
            ..NewRecord::default()
        }
    }

    /// The wire record, at offset 0 of a batch without a producer id (see [`place`]).
    pub fn into_wire(self) -> Record {
        let headers: IndexMap<StrBytes, Option<Bytes>> = self
            .headers
            .into_iter()
            .map(|(k, v)| (StrBytes::from_string(k), v))
            .collect();
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: NO_SEQUENCE,
            timestamp: self.timestamp,
            key: self.key,
            value: self.value,
            headers,
        }
    }
}

/// Numbers `records` as the records `0..n` of one batch written by `producer`.
pub fn place(records: &mut [Record], producer: ProducerIds) {
    for (i, r) in records.iter_mut().enumerate() {
        place_one(r, i as i64, producer);
    }
}

/// Numbers `record` as record `index` of a batch written by `producer`.
pub fn place_one(record: &mut Record, index: i64, producer: ProducerIds) {
    record.offset = index;
    record.producer_id = producer.producer_id;
    record.producer_epoch = producer.producer_epoch;
    record.sequence = producer.base_sequence.wrapping_add(index as i32);
}

/// Encodes `records`, numbered by [`place`], as one v2 batch with base offset 0.
pub fn encode_records(records: &[Record], compression: Compression) -> Result<Bytes, EncodeError> {
    let payload: usize = records
        .iter()
        .map(|r| r.value.as_ref().map_or(0, Bytes::len) + r.key.as_ref().map_or(0, Bytes::len))
        .sum();
    let mut buf =
        BytesMut::with_capacity(crate::batch::BATCH_HEADER_LEN + payload + 16 * records.len());
    let options = RecordEncodeOptions {
        version: 2,
        compression,
    };
    RecordBatchEncoder::encode(&mut buf, records, &options)
        .map_err(|e| EncodeError(format!("{compression:?}: {e:#}")))?;
    Ok(buf.freeze())
}

/// Encodes `records` as one v2 batch written by `producer`, with base offset 0.
pub fn encode_batch(
    records: impl IntoIterator<Item = NewRecord>,
    compression: Compression,
    producer: ProducerIds,
) -> Result<Bytes, EncodeError> {
    let mut wire: Vec<Record> = records.into_iter().map(NewRecord::into_wire).collect();
    place(&mut wire, producer);
    encode_records(&wire, compression)
}

/// One uncompressed batch without a producer id holding one record per value, all with
/// `timestamp`: what tests and internal logs (the metadata log) write.
pub fn values_batch<V: Into<Bytes>>(values: impl IntoIterator<Item = V>, timestamp: i64) -> Bytes {
    encode_batch(
        values.into_iter().map(|v| NewRecord::value(v, timestamp)),
        Compression::None,
        ProducerIds::NONE,
    )
    .expect("an uncompressed batch of plain values always encodes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchHeader;
    use kafka_protocol::records::RecordBatchDecoder;

    #[test]
    fn one_batch_per_call_with_its_producer() {
        let producer = ProducerIds {
            producer_id: 42,
            producer_epoch: 3,
            base_sequence: 7,
        };
        let records = (0..5).map(|i| NewRecord {
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(format!("v{i}"))),
            headers: vec![("h".into(), Some(Bytes::from_static(b"x")))],
            timestamp: 1_000 + i,
        });
        for compression in [Compression::None, Compression::Gzip, Compression::Lz4] {
            let b = encode_batch(records.clone(), compression, producer).unwrap();
            let h = BatchHeader::parse(&b).unwrap();
            h.validate(&b).unwrap();
            assert_eq!(h.total_len(), b.len(), "{compression:?}: exactly one batch");
            assert_eq!((h.base_offset(), h.records_count()), (0, 5));
            assert_eq!(
                (h.producer_id(), h.producer_epoch(), h.base_sequence()),
                (42, 3, 7)
            );
            assert_eq!((h.base_timestamp(), h.max_timestamp()), (1_000, 1_004));
            let mut bytes = b.clone();
            let set = RecordBatchDecoder::decode(&mut bytes).unwrap();
            let values: Vec<_> = set.records.iter().map(|r| r.value.clone()).collect();
            assert_eq!(values[4], Some(Bytes::from("v4")));
            assert_eq!(set.records[2].sequence, 9);
        }
    }

    #[test]
    fn without_a_producer_the_base_sequence_is_minus_one() {
        let b = values_batch(["a", "b", "c"], 5);
        let h = BatchHeader::parse(&b).unwrap();
        assert_eq!(h.total_len(), b.len());
        assert_eq!(
            (h.producer_id(), h.producer_epoch(), h.base_sequence()),
            (-1, -1, -1)
        );
        assert_eq!(h.last_offset_delta(), 2);
        assert_eq!(h.partition_leader_epoch(), -1);
    }
}
