//! Test support (not part of the API): builds valid uncompressed v2 record batches without a
//! Kafka client, for this crate's tests and the crash-writer binary.

use keel_protocol::batch::{BATCH_HEADER_LEN, BATCH_OVERHEAD, CRC_START};

fn varint(buf: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        buf.push((z as u8) | 0x80);
        z >>= 7;
    }
    buf.push(z as u8);
}

/// One batch (base offset 0, leader epoch -1, no producer id) holding one record per value,
/// all with `timestamp`. Panics on an empty `values`.
pub fn batch(values: &[&[u8]], timestamp: i64) -> Vec<u8> {
    assert!(!values.is_empty(), "a batch needs at least one record");
    let mut b = vec![0u8; BATCH_HEADER_LEN];
    for (i, v) in values.iter().enumerate() {
        let mut rec = vec![0u8]; // attributes
        varint(&mut rec, 0); // timestamp delta
        varint(&mut rec, i as i64); // offset delta
        varint(&mut rec, -1); // null key
        varint(&mut rec, v.len() as i64);
        rec.extend_from_slice(v);
        varint(&mut rec, 0); // headers
        varint(&mut b, rec.len() as i64);
        b.extend_from_slice(&rec);
    }
    let n = values.len() as i32;
    let batch_length = (b.len() - BATCH_OVERHEAD) as i32;
    b[8..12].copy_from_slice(&batch_length.to_be_bytes());
    b[12..16].copy_from_slice(&(-1i32).to_be_bytes());
    b[16] = 2;
    b[21..23].copy_from_slice(&0i16.to_be_bytes());
    b[23..27].copy_from_slice(&(n - 1).to_be_bytes());
    b[27..35].copy_from_slice(&timestamp.to_be_bytes());
    b[35..43].copy_from_slice(&timestamp.to_be_bytes());
    b[43..51].copy_from_slice(&(-1i64).to_be_bytes());
    b[51..53].copy_from_slice(&(-1i16).to_be_bytes());
    b[53..57].copy_from_slice(&(-1i32).to_be_bytes());
    b[57..61].copy_from_slice(&n.to_be_bytes());
    let crc = crc32c::crc32c(&b[CRC_START..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
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
