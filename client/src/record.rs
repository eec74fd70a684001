//! Records as users see them, and their conversion to and from Kafka v2 record batches.
//!
//! Batches are encoded with [`keel_protocol::encode`] and decoded with
//! `kafka_protocol::records`; this module only reads the 12-byte batch prefix (base offset,
//! length) to split a fetched byte range into whole batches, and two header fields the decoder
//! does not expose (last offset delta, max timestamp).

use bytes::Bytes;
#[cfg(test)]
use bytes::BytesMut;
use kafka_protocol::records::{Record, RecordBatchDecoder, TimestampType};
use keel_protocol::encode::{encode_records, place_one, NewRecord, ProducerIds};

use crate::config::Compression;
use crate::error::ClientError;

/// Bytes before a batch's `length` field ends: baseOffset (8) + length (4).
pub(crate) const BATCH_PREFIX_BYTES: usize = 12;
/// Size of a v2 record batch header, the fixed cost of every batch.
pub(crate) const BATCH_HEADER_BYTES: usize = 61;
const MAGIC_POS: usize = 16;
const LAST_OFFSET_DELTA_POS: usize = 23;
const MAX_TIMESTAMP_POS: usize = 35;

/// A record to produce.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerRecord {
    /// Target topic.
    pub topic: String,
    /// Target partition; `None` lets the partitioner choose.
    pub partition: Option<i32>,
    /// Key; keyed records are partitioned by murmur2(key).
    pub key: Option<Bytes>,
    /// Value; `None` is a tombstone.
    pub value: Option<Bytes>,
    /// Headers. Duplicate keys collapse to the last value (a `kafka-protocol` limitation).
    pub headers: Vec<(String, Option<Bytes>)>,
    /// CreateTime in ms since the epoch; `None` = now.
    pub timestamp: Option<i64>,
}

impl ProducerRecord {
    /// A record with a value and nothing else.
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> Self {
        ProducerRecord {
            topic: topic.into(),
            value: Some(value.into()),
            ..ProducerRecord::default()
        }
    }

    /// Sets the key.
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((key.into(), Some(value.into())));
        self
    }

    /// Pins the partition.
    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Sets the CreateTime timestamp (ms since the epoch).
    pub fn timestamp(mut self, timestamp_ms: i64) -> Self {
        self.timestamp = Some(timestamp_ms);
        self
    }

    /// Upper bound of this record's encoded size inside a batch (varints at 5 bytes).
    pub(crate) fn estimated_size(&self) -> usize {
        let opt = |b: &Option<Bytes>| 5 + b.as_ref().map_or(0, Bytes::len);
        let headers: usize = self.headers.iter().map(|(k, v)| 5 + k.len() + opt(v)).sum();
        // length + attributes + timestamp delta + offset delta + key + value + header count
        5 + 1 + 10 + 5 + opt(&self.key) + opt(&self.value) + 5 + headers
    }

    /// The wire record at `offset_delta` within its batch, stamped `timestamp_ms`.
    pub(crate) fn into_wire(self, offset_delta: i64, timestamp_ms: i64) -> Record {
        let mut record = NewRecord {
            key: self.key,
            value: self.value,
            headers: self.headers,
            timestamp: self.timestamp.unwrap_or(timestamp_ms),
        }
        .into_wire();
        place_in_batch(&mut record, offset_delta);
        record
    }
}

/// Sets a wire record's offset delta within its batch (a batch without a producer id).
pub(crate) fn place_in_batch(record: &mut Record, offset_delta: i64) {
    place_one(record, offset_delta, ProducerIds::NONE);
}

/// Where a produced record landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset; -1 with acks=0.
    pub offset: i64,
    /// CreateTime, or LogAppendTime when the topic uses it.
    pub timestamp: i64,
}

/// A fetched record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Timestamp (CreateTime or LogAppendTime, per the batch).
    pub timestamp: i64,
    /// Key.
    pub key: Option<Bytes>,
    /// Value.
    pub value: Option<Bytes>,
    /// Headers, in order.
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Encodes `records` (offsets 0..n) into one v2 record batch.
pub(crate) fn encode_batch(
    records: &[Record],
    compression: Compression,
) -> Result<Bytes, ClientError> {
    encode_records(records, compression.to_protocol())
        .map_err(|e| ClientError::protocol(format!("encode {compression} record batch"), e))
}

/// Length of the leading run of whole batches in `buf`; a fetch response may end with a
/// partial batch, which is dropped.
pub(crate) fn whole_batches_len(buf: &[u8]) -> usize {
    let mut pos = 0;
    while buf.len() - pos >= BATCH_PREFIX_BYTES {
        let len = i32::from_be_bytes(read4(buf, pos + 8));
        let Ok(len) = usize::try_from(len) else {
            break;
        };
        let total = BATCH_PREFIX_BYTES + len;
        if buf.len() - pos < total {
            break;
        }
        pos += total;
    }
    pos
}

fn read4(buf: &[u8], pos: usize) -> [u8; 4] {
    [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]]
}

fn read8(buf: &[u8], pos: usize) -> [u8; 8] {
    let mut out = [0; 8];
    out.copy_from_slice(&buf[pos..pos + 8]);
    out
}

/// Records decoded from one partition's fetched bytes.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    /// Data records at or above the fetch position.
    pub(crate) records: Vec<ConsumerRecord>,
    /// The offset after the last whole batch, if there was one.
    pub(crate) next_offset: Option<i64>,
}

/// Decodes every whole batch in `data` (any compression), keeping data records at or above
/// `position`. Control batches are skipped but still advance the position.
pub(crate) fn decode_fetched(
    topic: &str,
    partition: i32,
    data: Bytes,
    position: i64,
) -> Result<Decoded, ClientError> {
    let context = || format!("decode fetched records of {topic}-{partition}");
    let mut data = data.slice(..whole_batches_len(&data));
    let mut out = Decoded::default();
    while !data.is_empty() {
        let len = i32::from_be_bytes(read4(&data, 8)) as usize;
        let mut batch = data.split_to(BATCH_PREFIX_BYTES + len);
        if batch.len() < BATCH_HEADER_BYTES {
            return Err(ClientError::protocol(
                context(),
                "batch shorter than its header",
            ));
        }
        let magic = batch[MAGIC_POS];
        if magic != 2 {
            return Err(ClientError::protocol(
                context(),
                format!("message format v{magic} is not supported"),
            ));
        }
        let base_offset = i64::from_be_bytes(read8(&batch, 0));
        let last_delta = i32::from_be_bytes(read4(&batch, LAST_OFFSET_DELTA_POS));
        let max_timestamp = i64::from_be_bytes(read8(&batch, MAX_TIMESTAMP_POS));
        let set = RecordBatchDecoder::decode(&mut batch)
            .map_err(|e| ClientError::protocol(context(), e))?;
        out.next_offset = Some(base_offset + i64::from(last_delta) + 1);
        let wanted = set
            .records
            .into_iter()
            .filter(|r| !r.control && r.offset >= position);
        out.records.extend(wanted.map(|r| {
            ConsumerRecord {
                topic: topic.to_owned(),
                partition,
                offset: r.offset,
                timestamp: match r.timestamp_type {
                    TimestampType::LogAppend => max_timestamp,
                    TimestampType::Creation => r.timestamp,
                },
                key: r.key,
                value: r.value,
                headers: r
                    .headers
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            }
        }));
    }
    Ok(out)
}

/// Re-stamps a batch's base offset, as a broker does on append (used by tests).
#[cfg(test)]
pub(crate) fn with_base_offset(batch: &[u8], base_offset: i64) -> Bytes {
    use bytes::BufMut;
    let mut b = BytesMut::with_capacity(batch.len());
    b.put_i64(base_offset);
    b.extend_from_slice(&batch[8..]);
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(values: &[&str]) -> Vec<Record> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                ProducerRecord::new("t", v.to_string())
                    .key(format!("k{i}"))
                    .header("h", "x")
                    .into_wire(i as i64, 1_700_000_000_000 + i as i64)
            })
            .collect()
    }

    #[test]
    fn round_trip_every_compression() {
        let values: Vec<String> = (0..50)
            .map(|i| format!("value-{i}-{}", "z".repeat(i)))
            .collect();
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        for compression in Compression::ALL {
            let batch = encode_batch(&wire(&refs), compression).unwrap();
            let info = RecordBatchDecoder::decode_batch_info(&mut batch.clone()).unwrap();
            assert_eq!(info.len(), 1, "{compression}: one batch");
            assert_eq!(info[0].record_count, 50);
            assert_eq!(info[0].compression, compression.to_protocol());
            assert_eq!((info[0].producer_id, info[0].producer_epoch), (-1, -1));
            assert_eq!(info[0].base_sequence, -1);
            let batch = with_base_offset(&batch, 1000);
            let decoded = decode_fetched("t", 0, batch, 0).unwrap();
            assert_eq!(decoded.records.len(), 50, "{compression}");
            assert_eq!(decoded.next_offset, Some(1050), "{compression}");
            for (i, r) in decoded.records.iter().enumerate() {
                assert_eq!(r.offset, 1000 + i as i64);
                assert_eq!(r.value.as_deref(), Some(values[i].as_bytes()));
                assert_eq!(r.key.as_deref(), Some(format!("k{i}").as_bytes()));
                assert_eq!(r.timestamp, 1_700_000_000_000 + i as i64);
                assert_eq!(r.headers, vec![("h".to_owned(), Some(Bytes::from("x")))]);
            }
        }
    }

    #[test]
    fn compression_shrinks_repetitive_batches() {
        let values = vec!["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"; 100];
        let plain = encode_batch(&wire(&values), Compression::None).unwrap();
        for c in [
            Compression::Gzip,
            Compression::Lz4,
            Compression::Zstd,
            Compression::Snappy,
        ] {
            let packed = encode_batch(&wire(&values), c).unwrap();
            assert!(
                packed.len() < plain.len() / 2,
                "{c}: {} vs {}",
                packed.len(),
                plain.len()
            );
        }
    }

    #[test]
    fn partial_trailing_batch_is_dropped_and_low_offsets_skipped() {
        let a = with_base_offset(
            &encode_batch(&wire(&["a0", "a1", "a2"]), Compression::None).unwrap(),
            0,
        );
        let b = with_base_offset(
            &encode_batch(&wire(&["b0", "b1"]), Compression::Lz4).unwrap(),
            3,
        );
        let mut data = BytesMut::new();
        data.extend_from_slice(&a);
        data.extend_from_slice(&b);
        data.extend_from_slice(&b[..b.len() - 7]); // truncated third batch
        assert_eq!(whole_batches_len(&data), a.len() + b.len());
        let decoded = decode_fetched("t", 2, data.freeze(), 2).unwrap();
        let offsets: Vec<i64> = decoded.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![2, 3, 4]);
        assert_eq!(decoded.next_offset, Some(5));
        assert!(decoded.records.iter().all(|r| r.partition == 2));
    }

    #[test]
    fn only_partial_batch_decodes_to_nothing() {
        let a = encode_batch(&wire(&["a0"]), Compression::None).unwrap();
        let decoded = decode_fetched("t", 0, a.slice(..20), 0).unwrap();
        assert!(decoded.records.is_empty());
        assert_eq!(decoded.next_offset, None);
    }

    #[test]
    fn estimated_size_bounds_encoded_size() {
        let rec = ProducerRecord::new("t", "v".repeat(300))
            .key("key")
            .header("a", "b");
        let est = rec.estimated_size();
        let batch = encode_batch(&[rec.into_wire(0, 0)], Compression::None).unwrap();
        assert!(
            batch.len() - BATCH_HEADER_BYTES <= est,
            "{} > {est}",
            batch.len()
        );
    }
}
