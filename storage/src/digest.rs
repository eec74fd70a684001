//! [`RangeDigest`]: a checksum over the record batches of an offset range, for comparing
//! replicas and finding corruption at rest.
//!
//! Batches are replicated verbatim, so replicas with the same history hold byte-identical
//! batches with the same boundaries: a range `[from, to)` covers exactly the batches whose
//! base offset is at least `from` and whose last offset is below `to`, and equal histories
//! give equal digests. The walk checks every covered batch as recovery does
//! ([`check_batch`]): a CRC mismatch is reported and the walk goes on (the batch's length is
//! still sane); an invalid header, a base offset going backwards or an unreadable length ends
//! it.
//!
//! [`DigestWalk`] is pure over byte slices; [`crate::Log::digest`] feeds it the segments.

use keel_protocol::batch::{batches, BatchHeader};
/// The digest type is the one `keel check` carries on the wire.
pub use keel_protocol::replica_state::RangeDigest;

use crate::segment::{check_batch, BatchFault};

/// Accumulates a [`RangeDigest`] over consecutive pieces of the log, oldest first.
#[derive(Debug)]
pub(crate) struct DigestWalk {
    digest: RangeDigest,
}

impl DigestWalk {
    pub(crate) fn new(from: i64, to: i64) -> Self {
        DigestWalk {
            digest: RangeDigest::empty(from, to),
        }
    }

    /// Walks `buf`, whole batches starting at a batch boundary whose batch starts at offset
    /// `next` or later (a segment from its start, or from an index entry). False when the walk
    /// is over: it passed `to` or met a batch it could not read.
    pub(crate) fn add(&mut self, buf: &[u8], mut next: i64) -> bool {
        for b in batches(buf) {
            let b = match b {
                Ok(b) => b,
                Err(_) => return self.unreadable(next),
            };
            let last = b.header.last_offset();
            let base = b.header.base_offset();
            // CRCs of batches starting outside the range are not computed. One starting
            // inside is checked even when its (perhaps damaged) last offset says it reaches
            // past the end.
            let starts_inside = base >= self.digest.from && base < self.digest.to;
            let covered = starts_inside && last < self.digest.to;
            let crc_ok = match check_batch(&b.header, b.bytes, next, starts_inside) {
                Ok(()) => true,
                Err(BatchFault::Crc(_)) => false,
                Err(BatchFault::Invalid(_)) => return self.unreadable(next),
            };
            if !crc_ok && !covered {
                // Its header cannot be trusted to say where the next batch starts.
                self.digest.corrupt_batch.get_or_insert(base);
                return false;
            }
            if last >= self.digest.to {
                return false;
            }
            if covered {
                self.cover(&b.header, b.bytes, crc_ok);
            }
            next = last + 1;
        }
        true
    }

    fn cover(&mut self, h: &BatchHeader<'_>, bytes: &[u8], crc_ok: bool) {
        let d = &mut self.digest;
        d.batches += 1;
        d.bytes += bytes.len() as u64;
        d.first_offset.get_or_insert(h.base_offset());
        d.end_offset = Some(h.last_offset() + 1);
        d.crc32c = crc32c::crc32c_append(d.crc32c, bytes);
        if !crc_ok {
            d.corrupt_batch.get_or_insert(h.base_offset());
        }
    }

    /// A batch at `next` cannot be read: the walk ends, reporting it if it may lie in range.
    fn unreadable(&mut self, next: i64) -> bool {
        if next < self.digest.to {
            self.digest.corrupt_batch.get_or_insert(next);
        }
        false
    }

    pub(crate) fn finish(self) -> RangeDigest {
        self.digest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::batch;
    use keel_protocol::batch::set_base_offset;

    /// Batches of 1, 2, 3 and 4 records at offsets 10, 11, 13, 16 (LEO 20).
    fn log_bytes() -> (Vec<u8>, Vec<usize>) {
        let mut out = Vec::new();
        let mut starts = Vec::new();
        let mut offset = 10;
        for n in 1..=4usize {
            let values: Vec<&[u8]> = vec![b"value"; n];
            let mut b = batch(&values, 1000);
            set_base_offset(&mut b, offset);
            starts.push(out.len());
            out.extend_from_slice(&b);
            offset += n as i64;
        }
        starts.push(out.len());
        (out, starts)
    }

    fn digest(buf: &[u8], from: i64, to: i64) -> RangeDigest {
        let mut w = DigestWalk::new(from, to);
        w.add(buf, 10);
        w.finish()
    }

    #[test]
    fn covers_whole_batches_inside_the_range() {
        let (buf, s) = log_bytes();
        let d = digest(&buf, 11, 19);
        // 11..=12 and 13..=15 are inside; 16..=19 ends past 19.
        assert_eq!(d.batches, 2);
        assert_eq!(d.bytes, (s[3] - s[1]) as u64);
        assert_eq!((d.first_offset, d.end_offset), (Some(11), Some(16)));
        assert_eq!(d.crc32c, crc32c::crc32c(&buf[s[1]..s[3]]));
        assert_eq!(d.corrupt_batch, None);
        // A batch straddling `from` is not covered either.
        assert_eq!(digest(&buf, 12, 20).first_offset, Some(13));
        assert_eq!(digest(&buf, 0, 100).batches, 4);
        assert_eq!(digest(&buf, 12, 13), RangeDigest::empty(12, 13));
    }

    #[test]
    fn reports_crc_mismatch_and_walks_on() {
        let (mut buf, s) = log_bytes();
        let good = digest(&buf, 0, 100);
        *buf.last_mut().unwrap() ^= 1; // the last record of the batch at 16
        buf[s[1] + 70] ^= 1; // a record of the batch at 11
        let d = digest(&buf, 0, 100);
        assert_eq!(d.corrupt_batch, Some(11));
        assert_eq!(d.batches, 4);
        assert_ne!(d.crc32c, good.crc32c);
        assert_eq!(digest(&buf, 13, 100).corrupt_batch, Some(16));
        assert_eq!(digest(&buf, 13, 16).corrupt_batch, None);
    }

    #[test]
    fn a_damaged_last_offset_is_a_crc_failure_not_the_end_of_the_range() {
        let (mut buf, s) = log_bytes();
        // lastOffsetDelta (bytes 23..27) of the batch at 13: it now claims to reach past 100.
        buf[s[2] + 23..s[2] + 27].copy_from_slice(&1000i32.to_be_bytes());
        let d = digest(&buf, 0, 100);
        assert_eq!(d.corrupt_batch, Some(13));
        assert_eq!(d.batches, 2, "the walk stops there");
        assert_eq!(digest(&buf, 0, 13).corrupt_batch, None, "past the range");
    }

    #[test]
    fn stops_at_an_unreadable_batch() {
        let (mut buf, s) = log_bytes();
        buf[s[2] + 16] = 7; // magic of the batch at 13
        let d = digest(&buf, 0, 100);
        assert_eq!(d.corrupt_batch, Some(13));
        assert_eq!((d.batches, d.end_offset), (2, Some(13)));
        assert_eq!(digest(&buf, 0, 13).corrupt_batch, None, "past the range");
        // A length running past the end.
        let (mut buf, s) = log_bytes();
        buf[s[3] + 8..s[3] + 12].copy_from_slice(&100_000i32.to_be_bytes());
        assert_eq!(digest(&buf, 0, 100).corrupt_batch, Some(16));
        // A base offset going backwards.
        let (mut buf, s) = log_bytes();
        set_base_offset(&mut buf[s[2]..], 11);
        assert_eq!(digest(&buf, 0, 100).corrupt_batch, Some(13));
    }
}
