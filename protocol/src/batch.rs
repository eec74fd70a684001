//! Zero-copy view of a Kafka v2 record-batch header.
//!
//! A v2 batch starts with a fixed 61-byte header (all fields big-endian):
//!
//! ```text
//! offset  size  field
//!      0     8  baseOffset             \ the 12-byte "log overhead";
//!      8     4  batchLength            / batchLength counts the bytes after it
//!     12     4  partitionLeaderEpoch
//!     16     1  magic (= 2)
//!     17     4  crc (CRC-32C over bytes 21..end)
//!     21     2  attributes
//!     23     4  lastOffsetDelta
//!     27     8  baseTimestamp
//!     35     8  maxTimestamp
//!     43     8  producerId
//!     51     2  producerEpoch
//!     53     4  baseSequence
//!     57     4  recordsCount
//!     61        records...
//! ```
//!
//! `baseOffset` and `partitionLeaderEpoch` lie outside the CRC, so a leader can stamp them
//! ([`set_base_offset`], [`set_partition_leader_epoch`]) without recomputing it. Records are
//! never decoded here.

/// Length of the fixed v2 batch header.
pub const BATCH_HEADER_LEN: usize = 61;
/// Bytes before the part counted by `batchLength` (baseOffset + batchLength).
pub const BATCH_OVERHEAD: usize = 12;
/// Smallest legal `batchLength`: the header after the overhead, with zero records.
pub const MIN_BATCH_LENGTH: i32 = (BATCH_HEADER_LEN - BATCH_OVERHEAD) as i32;
/// The only supported record-batch format.
pub const MAGIC_V2: i8 = 2;

const BASE_OFFSET: usize = 0;
const BATCH_LENGTH: usize = 8;
const PARTITION_LEADER_EPOCH: usize = 12;
const MAGIC: usize = 16;
const CRC: usize = 17;
const ATTRIBUTES: usize = 21;
const LAST_OFFSET_DELTA: usize = 23;
const BASE_TIMESTAMP: usize = 27;
const MAX_TIMESTAMP: usize = 35;
const PRODUCER_ID: usize = 43;
const PRODUCER_EPOCH: usize = 51;
const BASE_SEQUENCE: usize = 53;
const RECORDS_COUNT: usize = 57;

/// Start of the CRC-covered region (the attributes field).
pub const CRC_START: usize = ATTRIBUTES;

const COMPRESSION_MASK: i16 = 0x07;
const TIMESTAMP_TYPE_BIT: i16 = 0x08;
const TRANSACTIONAL_BIT: i16 = 0x10;
const CONTROL_BIT: i16 = 0x20;

/// Why a byte range is not a valid v2 record batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Fewer bytes than the header or the batch length require.
    #[error("truncated batch: needed {needed} bytes, {available} available")]
    Truncated { needed: usize, available: usize },
    /// Magic byte is not 2.
    #[error("unsupported batch magic {0} (only v2 is supported)")]
    BadMagic(i8),
    /// `batchLength` smaller than the fixed header.
    #[error("bad batch length {0}")]
    BadLength(i32),
    /// `recordsCount` is negative.
    #[error("bad records count {0}")]
    BadRecordsCount(i32),
    /// `lastOffsetDelta` is negative.
    #[error("bad last offset delta {0}")]
    BadLastOffsetDelta(i32),
    /// Stored CRC does not match the bytes.
    #[error("crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
}

/// Borrowed view over the first [`BATCH_HEADER_LEN`] bytes of a batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchHeader<'a> {
    buf: &'a [u8; BATCH_HEADER_LEN],
}

#[inline]
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline]
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

impl<'a> BatchHeader<'a> {
    /// Views the header at the start of `buf`. Needs at least [`BATCH_HEADER_LEN`] bytes; does
    /// not require the whole batch and checks nothing else (see [`BatchHeader::validate`]).
    pub fn parse(buf: &'a [u8]) -> Result<Self, BatchError> {
        buf.get(..BATCH_HEADER_LEN)
            .and_then(|head| <&[u8; BATCH_HEADER_LEN]>::try_from(head).ok())
            .map(|buf| BatchHeader { buf })
            .ok_or(BatchError::Truncated {
                needed: BATCH_HEADER_LEN,
                available: buf.len(),
            })
    }

    /// The raw header bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    pub fn base_offset(&self) -> i64 {
        be_i64(self.buf, BASE_OFFSET)
    }

    pub fn batch_length(&self) -> i32 {
        be_i32(self.buf, BATCH_LENGTH)
    }

    /// Whole batch size on the wire: [`BATCH_OVERHEAD`] + `batchLength`. Zero if the length
    /// field is negative (an invalid batch; [`BatchHeader::validate`] rejects it).
    pub fn total_len(&self) -> usize {
        usize::try_from(self.batch_length()).map_or(0, |l| l + BATCH_OVERHEAD)
    }

    pub fn partition_leader_epoch(&self) -> i32 {
        be_i32(self.buf, PARTITION_LEADER_EPOCH)
    }

    pub fn magic(&self) -> i8 {
        self.buf[MAGIC] as i8
    }

    pub fn crc(&self) -> u32 {
        be_i32(self.buf, CRC) as u32
    }

    pub fn attributes(&self) -> i16 {
        be_i16(self.buf, ATTRIBUTES)
    }

    /// Compression codec id (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub fn compression(&self) -> u8 {
        (self.attributes() & COMPRESSION_MASK) as u8
    }

    /// True if the batch timestamps are LogAppendTime (attribute bit 3).
    pub fn timestamp_type_log_append(&self) -> bool {
        self.attributes() & TIMESTAMP_TYPE_BIT != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes() & TRANSACTIONAL_BIT != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes() & CONTROL_BIT != 0
    }

    pub fn last_offset_delta(&self) -> i32 {
        be_i32(self.buf, LAST_OFFSET_DELTA)
    }

    /// `baseOffset + lastOffsetDelta`.
    pub fn last_offset(&self) -> i64 {
        self.base_offset()
            .saturating_add(i64::from(self.last_offset_delta()))
    }

    pub fn base_timestamp(&self) -> i64 {
        be_i64(self.buf, BASE_TIMESTAMP)
    }

    pub fn max_timestamp(&self) -> i64 {
        be_i64(self.buf, MAX_TIMESTAMP)
    }

    pub fn producer_id(&self) -> i64 {
        be_i64(self.buf, PRODUCER_ID)
    }

    pub fn producer_epoch(&self) -> i16 {
        be_i16(self.buf, PRODUCER_EPOCH)
    }

    pub fn base_sequence(&self) -> i32 {
        be_i32(self.buf, BASE_SEQUENCE)
    }

    pub fn records_count(&self) -> i32 {
        be_i32(self.buf, RECORDS_COUNT)
    }

    /// Checks the header fields alone (magic, length, counts), without the CRC.
    pub fn validate_header(&self) -> Result<(), BatchError> {
        if self.magic() != MAGIC_V2 {
            return Err(BatchError::BadMagic(self.magic()));
        }
        if self.batch_length() < MIN_BATCH_LENGTH {
            return Err(BatchError::BadLength(self.batch_length()));
        }
        if self.records_count() < 0 {
            return Err(BatchError::BadRecordsCount(self.records_count()));
        }
        if self.last_offset_delta() < 0 {
            return Err(BatchError::BadLastOffsetDelta(self.last_offset_delta()));
        }
        Ok(())
    }

    /// CRC-32C over `whole_batch[21..total_len]`, the value the `crc` field must hold.
    /// `whole_batch` must start with this header; if it holds fewer than `total_len()` bytes the
    /// CRC of the bytes present is returned (which will not match; [`BatchHeader::validate`]
    /// reports `Truncated` first).
    pub fn compute_crc(&self, whole_batch: &[u8]) -> u32 {
        let end = self.total_len().min(whole_batch.len());
        whole_batch.get(CRC_START..end).map_or(0, crc32c::crc32c)
    }

    /// Full check: magic 2, `batchLength` >= 49, non-negative counts, whole batch present and
    /// CRC matches.
    pub fn validate(&self, whole_batch: &[u8]) -> Result<(), BatchError> {
        self.validate_header()?;
        if whole_batch.len() < self.total_len() {
            return Err(BatchError::Truncated {
                needed: self.total_len(),
                available: whole_batch.len(),
            });
        }
        let computed = self.compute_crc(whole_batch);
        if computed != self.crc() {
            return Err(BatchError::CrcMismatch {
                stored: self.crc(),
                computed,
            });
        }
        Ok(())
    }
}

/// Writes `baseOffset` into the batch starting at `buf` (outside the CRC).
///
/// # Panics
/// If `buf` is shorter than 8 bytes.
pub fn set_base_offset(buf: &mut [u8], offset: i64) {
    buf[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&offset.to_be_bytes());
}

/// Writes `partitionLeaderEpoch` into the batch starting at `buf` (outside the CRC).
///
/// # Panics
/// If `buf` is shorter than 16 bytes.
pub fn set_partition_leader_epoch(buf: &mut [u8], epoch: i32) {
    buf[PARTITION_LEADER_EPOCH..PARTITION_LEADER_EPOCH + 4].copy_from_slice(&epoch.to_be_bytes());
}

/// One batch found by [`batches`].
#[derive(Debug, Clone, Copy)]
pub struct BatchRef<'a> {
    /// Position of the batch in the scanned buffer.
    pub pos: usize,
    pub header: BatchHeader<'a>,
    /// The whole batch (`header.total_len()` bytes).
    pub bytes: &'a [u8],
}

/// Iterator over consecutive batches; see [`batches`].
#[derive(Debug, Clone)]
pub struct BatchIter<'a> {
    buf: &'a [u8],
    pos: usize,
    done: bool,
}

/// Walks the batches in `buf` by their length fields. Checks only that each header is present
/// and its `batchLength` is at least the header size and fits in `buf`; it yields
/// `Err(Truncated)` (then stops) on a partial trailing batch and `Err(BadLength)` (then stops)
/// on a nonsensical length. CRCs are not checked: call [`BatchHeader::validate`] per batch.
pub fn batches(buf: &[u8]) -> BatchIter<'_> {
    BatchIter {
        buf,
        pos: 0,
        done: false,
    }
}

impl<'a> BatchIter<'a> {
    /// Position just after the last batch yielded.
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<BatchRef<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos >= self.buf.len() {
            return None;
        }
        let rest = &self.buf[self.pos..];
        let header = match BatchHeader::parse(rest) {
            Ok(h) => h,
            Err(e) => {
                self.done = true;
                return Some(Err(e));
            }
        };
        if header.batch_length() < MIN_BATCH_LENGTH {
            self.done = true;
            return Some(Err(BatchError::BadLength(header.batch_length())));
        }
        let len = header.total_len();
        if rest.len() < len {
            self.done = true;
            return Some(Err(BatchError::Truncated {
                needed: len,
                available: rest.len(),
            }));
        }
        let item = BatchRef {
            pos: self.pos,
            header,
            bytes: &rest[..len],
        };
        self.pos += len;
        Some(Ok(item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::{encode_batch, Compression, NewRecord, ProducerIds};
    use bytes::Bytes;
    use proptest::prelude::*;

    fn record(ts: i64, value: &[u8]) -> NewRecord {
        NewRecord {
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::copy_from_slice(value)),
            headers: Vec::new(),
            timestamp: ts,
        }
    }

    /// One batch of `records`, with a producer sequence starting at 0 (and no producer id).
    fn encode(records: Vec<NewRecord>) -> Vec<u8> {
        let producer = ProducerIds {
            base_sequence: 0,
            ..ProducerIds::NONE
        };
        encode_batch(records, Compression::None, producer)
            .expect("encode batch")
            .to_vec()
    }

    fn sample(n: usize) -> Vec<u8> {
        encode((0..n).map(|i| record(1_000 + i as i64, b"hello")).collect())
    }

    #[test]
    fn parses_encoder_output() {
        let b = sample(3);
        let h = BatchHeader::parse(&b).unwrap();
        assert_eq!(h.base_offset(), 0);
        assert_eq!(h.total_len(), b.len());
        assert_eq!(h.magic(), 2);
        assert_eq!(h.last_offset_delta(), 2);
        assert_eq!(h.last_offset(), 2);
        assert_eq!(h.records_count(), 3);
        assert_eq!(h.base_timestamp(), 1_000);
        assert_eq!(h.max_timestamp(), 1_002);
        assert_eq!(h.producer_id(), -1);
        assert_eq!(h.producer_epoch(), -1);
        assert_eq!(h.base_sequence(), 0);
        assert_eq!(h.compression(), 0);
        assert!(!h.is_transactional());
        assert!(!h.is_control());
        assert!(!h.timestamp_type_log_append());
        assert_eq!(h.compute_crc(&b), h.crc());
        h.validate(&b).unwrap();
    }

    #[test]
    fn parse_needs_only_the_header() {
        let b = sample(2);
        let h = BatchHeader::parse(&b[..BATCH_HEADER_LEN]).unwrap();
        assert_eq!(h.total_len(), b.len());
        assert!(matches!(
            h.validate(&b[..BATCH_HEADER_LEN]),
            Err(BatchError::Truncated { .. })
        ));
        assert_eq!(
            BatchHeader::parse(&b[..60]).unwrap_err(),
            BatchError::Truncated {
                needed: 61,
                available: 60
            }
        );
    }

    #[test]
    fn rejects_bad_magic_and_length() {
        let mut b = sample(1);
        b[MAGIC] = 1;
        let h = BatchHeader::parse(&b).unwrap();
        assert_eq!(h.validate(&b), Err(BatchError::BadMagic(1)));

        let mut b = sample(1);
        b[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&10i32.to_be_bytes());
        let h = BatchHeader::parse(&b).unwrap();
        assert_eq!(h.validate(&b), Err(BatchError::BadLength(10)));

        let mut b = sample(1);
        b[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&(-5i32).to_be_bytes());
        let h = BatchHeader::parse(&b).unwrap();
        assert_eq!(h.total_len(), 0);
        assert_eq!(h.validate(&b), Err(BatchError::BadLength(-5)));
    }

    #[test]
    fn stamping_keeps_crc_valid() {
        let mut b = sample(4);
        set_base_offset(&mut b, 1 << 40);
        set_partition_leader_epoch(&mut b, 77);
        let h = BatchHeader::parse(&b).unwrap();
        assert_eq!(h.base_offset(), 1 << 40);
        assert_eq!(h.last_offset(), (1 << 40) + 3);
        assert_eq!(h.partition_leader_epoch(), 77);
        h.validate(&b).unwrap();
    }

    #[test]
    fn iterator_walks_and_stops_on_partial_batch() {
        let a = sample(1);
        let b = sample(5);
        let mut buf = a.clone();
        buf.extend_from_slice(&b);
        let full: Vec<_> = batches(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(full.len(), 2);
        assert_eq!(full[0].pos, 0);
        assert_eq!(full[1].pos, a.len());
        assert_eq!(full[1].bytes, &b[..]);

        buf.extend_from_slice(&a[..a.len() - 1]);
        let mut it = batches(&buf);
        assert!(it.next().unwrap().is_ok());
        assert!(it.next().unwrap().is_ok());
        assert_eq!(
            it.next().unwrap().unwrap_err(),
            BatchError::Truncated {
                needed: a.len(),
                available: a.len() - 1
            }
        );
        assert!(it.next().is_none());
        assert_eq!(it.position(), a.len() + b.len());
    }

    #[test]
    fn error_messages_are_lowercase() {
        let e = BatchError::CrcMismatch {
            stored: 1,
            computed: 2,
        };
        assert_eq!(
            e.to_string(),
            "crc mismatch: stored 0x00000001, computed 0x00000002"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn crc_detects_any_flipped_covered_byte(
            values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6),
            flip_seed in any::<usize>(),
            bit in 0u8..8,
            offset in any::<i64>(),
            epoch in any::<i32>(),
        ) {
            let recs: Vec<NewRecord> = values
                .iter()
                .enumerate()
                .map(|(i, v)| record(5 + i as i64, v))
                .collect();
            let mut b = encode(recs);
            let h = BatchHeader::parse(&b).unwrap();
            prop_assert_eq!(h.total_len(), b.len());
            prop_assert_eq!(h.records_count() as usize, values.len());
            prop_assert!(h.validate(&b).is_ok());

            set_base_offset(&mut b, offset);
            set_partition_leader_epoch(&mut b, epoch);
            let h = BatchHeader::parse(&b).unwrap();
            prop_assert_eq!(h.base_offset(), offset);
            prop_assert_eq!(h.partition_leader_epoch(), epoch);
            prop_assert!(h.validate(&b).is_ok());

            let covered = CRC_START + flip_seed % (b.len() - CRC_START);
            let mut bad = b.clone();
            bad[covered] ^= 1 << bit;
            let h = BatchHeader::parse(&bad).unwrap();
            prop_assert!(h.validate(&bad).is_err());
        }
    }
}
