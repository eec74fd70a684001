//! An encode buffer that does not copy large registered `Bytes`.
//!
//! A fetch response carries record batches that are slices of memory-mapped segment
//! files. `kafka-protocol` encodes a message by calling `put_slice` for a bytes field;
//! [`GatherBuf`] recognises a slice that *is* one of the registered `Bytes` (same pointer
//! and length) and keeps a reference to it instead of copying. The result is a list of
//! chunks for `write_vectored`: the records go from the page cache to the socket with no
//! user-space copy.

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::protocol::buf::ByteBufMut;
use std::ops::Range;

/// Slices shorter than this are copied; a separate iovec is not worth it.
const MIN_ZERO_COPY: usize = 1024;

#[derive(Debug, Default)]
pub struct GatherBuf {
    done: Vec<Bytes>,
    /// Logical offset at which `tail` starts.
    tail_start: usize,
    tail: BytesMut,
    registered: Vec<Bytes>,
}

impl GatherBuf {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `bytes` so that encoding exactly this slice keeps it by reference.
    pub fn register(&mut self, bytes: &Bytes) {
        if bytes.len() >= MIN_ZERO_COPY {
            self.registered.push(bytes.clone());
        }
    }

    /// Total bytes written so far.
    pub fn len(&self) -> usize {
        self.tail_start + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The encoded message as chunks in order.
    pub fn into_chunks(mut self) -> Vec<Bytes> {
        if !self.tail.is_empty() {
            self.done.push(self.tail.freeze());
        }
        self.done
    }

    fn take_registered(&mut self, src: &[u8]) -> Option<Bytes> {
        let i = self
            .registered
            .iter()
            .position(|b| b.as_ptr() == src.as_ptr() && b.len() == src.len())?;
        Some(self.registered.swap_remove(i))
    }
}

// SAFETY: every method delegates to the tail `BytesMut`, which upholds BufMut's contract.
unsafe impl BufMut for GatherBuf {
    fn remaining_mut(&self) -> usize {
        self.tail.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller initialised `cnt` bytes of the chunk we handed out.
        unsafe { self.tail.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.tail.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        if src.len() >= MIN_ZERO_COPY {
            if let Some(bytes) = self.take_registered(src) {
                let tail = std::mem::take(&mut self.tail);
                self.tail_start += tail.len() + bytes.len();
                if !tail.is_empty() {
                    self.done.push(tail.freeze());
                }
                self.done.push(bytes);
                return;
            }
        }
        self.tail.extend_from_slice(src);
    }
}

impl ByteBufMut for GatherBuf {
    fn offset(&self) -> usize {
        self.len()
    }

    fn seek(&mut self, offset: usize) {
        assert!(
            offset >= self.tail_start,
            "gather buffer cannot seek back into a finished chunk"
        );
        let rel = offset - self.tail_start;
        if rel > self.tail.len() {
            self.tail.resize(rel, 0);
        } else {
            self.tail.truncate(rel);
        }
    }

    fn range(&mut self, r: Range<usize>) -> &mut [u8] {
        assert!(
            r.start >= self.tail_start,
            "gather buffer cannot reach into a finished chunk"
        );
        &mut self.tail[r.start - self.tail_start..r.end - self.tail_start]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::{
        FetchResponse, FetchableTopicResponse, PartitionData,
    };
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn response(records: Bytes) -> FetchResponse {
        FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
            .with_topic(TopicName(StrBytes::from_static_str("t")))
            .with_partitions(vec![PartitionData::default()
                .with_partition_index(0)
                .with_high_watermark(10)
                .with_records(Some(records))])])
    }

    #[test]
    fn registered_records_are_kept_by_reference_and_encoding_is_identical() {
        let records = Bytes::from(vec![7u8; 8192]);
        for version in [4, 11, 12] {
            let msg = response(records.clone());
            let mut plain = BytesMut::new();
            msg.encode(&mut plain, version).unwrap();

            let mut gather = GatherBuf::new();
            gather.register(&records);
            msg.encode(&mut gather, version).unwrap();
            assert_eq!(gather.len(), plain.len());
            let chunks = gather.into_chunks();
            assert!(
                chunks.iter().any(|c| c.as_ptr() == records.as_ptr()),
                "records were copied at v{version}"
            );
            let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
            assert_eq!(joined, plain.to_vec(), "v{version}");
        }
    }

    #[test]
    fn unregistered_and_small_slices_are_copied() {
        let small = Bytes::from_static(b"tiny");
        let mut gather = GatherBuf::new();
        gather.register(&small);
        gather.put_slice(&small);
        gather.put_slice(&[1u8; 2000]);
        assert_eq!(gather.into_chunks().len(), 1);
    }
}
