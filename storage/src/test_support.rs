//! Test support (not part of the API): builds valid uncompressed v2 record batches without a
//! Kafka client, for this crate's tests and the crash-writer binary.

use bytes::Bytes;

/// One batch (base offset 0, leader epoch -1, no producer id) holding one record per value,
/// all with `timestamp`. Panics on an empty `values`.
pub fn batch(values: &[&[u8]], timestamp: i64) -> Vec<u8> {
    assert!(!values.is_empty(), "a batch needs at least one record");
    keel_protocol::encode::values_batch(values.iter().map(|v| Bytes::copy_from_slice(v)), timestamp)
        .to_vec()
}

/// A batch of `count` records of `value_len` bytes each; record bytes derived from `seed`.
pub fn sized_batch(count: usize, value_len: usize, seed: u64, timestamp: i64) -> Vec<u8> {
    let values: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            (0..value_len)
                .map(|j| (seed.wrapping_mul(31).wrapping_add((i * 7 + j) as u64) % 251) as u8)
                .collect()
        })
        .collect();
    let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
    batch(&refs, timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use kafka_protocol::records::RecordBatchDecoder;
    use keel_protocol::batch::BatchHeader;

    #[test]
    fn kafka_decoder_accepts_our_batches() {
        let b = batch(&[b"one", b"two", b""], 42);
        let h = BatchHeader::parse(&b).unwrap();
        h.validate(&b).unwrap();
        assert_eq!(h.last_offset(), 2);
        let mut buf = Bytes::from(b);
        let set = RecordBatchDecoder::decode(&mut buf).unwrap();
        let values: Vec<_> = set
            .records
            .iter()
            .map(|r| r.value.clone().unwrap())
            .collect();
        assert_eq!(values, vec![&b"one"[..], &b"two"[..], &b""[..]]);
        assert_eq!(set.records[2].offset, 2);
        assert_eq!(set.records[0].timestamp, 42);
    }
}
