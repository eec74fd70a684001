//! Producer state: per idempotent producer id, its epoch and the metadata of its last five
//! batches in this partition, derived from the log (Kafka's `ProducerStateManager`).
//!
//! Every replica builds the same state from the same batches: a leader checks a client's
//! batch against it before appending ([`ProducerState::check`]), and leaders and followers
//! alike record every appended batch ([`ProducerState::apply`]). So a newly elected leader
//! deduplicates a retried batch exactly as the old leader would have.
//!
//! # The rules ([`ProducerState::check`])
//! For a batch of producer `pid`, epoch `e`, sequences `first..=last`:
//! - `e` below the producer's epoch: fenced (`InvalidEpoch`).
//! - the same epoch and the same sequence range as one of the last five batches: a
//!   duplicate; the client is answered with that batch's offsets and nothing is appended.
//! - the same epoch: `first` must follow the last sequence (`last + 1`, wrapping after
//!   `i32::MAX` to 0), else `OutOfOrder`.
//! - a new, higher epoch (the producer bumped it after an error, KIP-360): `first` must be 0.
//! - no state for `pid` (never seen here, or expired): any sequence is accepted, as in Kafka
//!   since KIP-360, so a producer whose state expired carries on without an error.
//!
//! # Bounds
//! An entry expires once its last batch is older than `producer.id.expiration.ms`
//! ([`ProducerState::expire`]). Snapshots ([`ProducerState::encode`]) let recovery and
//! truncation start from a known offset instead of the log start.

use std::collections::{BTreeMap, VecDeque};

/// How many batches of each producer are kept for deduplication (Kafka's
/// `NUM_BATCHES_TO_RETAIN`; clients cap in-flight requests at the same number).
pub const BATCHES_KEPT: usize = 5;

/// One batch of a producer, as the state keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMeta {
    pub first_seq: i32,
    pub last_seq: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    /// The batch's max timestamp.
    pub timestamp: i64,
}

/// One producer id's state in this partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: i16,
    /// Oldest first, at most [`BATCHES_KEPT`].
    pub batches: VecDeque<BatchMeta>,
}

impl ProducerEntry {
    /// The last batch's sequence and timestamp.
    pub fn last(&self) -> Option<&BatchMeta> {
        self.batches.back()
    }
}

/// The producer fields of one batch and where it lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_seq: i32,
    /// `first_seq + last offset delta`, wrapped.
    pub last_seq: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    pub timestamp: i64,
}

/// What a leader does with a client's batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// New: append it.
    Append,
    /// Already in the log at these offsets: answer with them, append nothing.
    Duplicate { first_offset: i64, last_offset: i64 },
}

/// Why a leader refuses a client's batch. Nothing is appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProducerError {
    #[error("producer {producer_id}: epoch {got} is older than the current {current}")]
    InvalidEpoch {
        producer_id: i64,
        current: i16,
        got: i16,
    },
    #[error("producer {producer_id} epoch {epoch}: sequence {got} where {expected} was expected")]
    OutOfOrder {
        producer_id: i64,
        epoch: i16,
        expected: i32,
        got: i32,
    },
}

/// Whether `next` follows `last`.
fn in_sequence(last: i32, next: i32) -> bool {
    next == last.wrapping_add(1) || (last == i32::MAX && next == 0)
}

/// Whether `b` may follow a producer's batch of epoch `epoch` ending at sequence `last_seq`
/// (`None`: no batch of that epoch kept).
fn follows(b: &ProducerBatch, epoch: i16, last_seq: Option<i32>) -> Result<(), ProducerError> {
    let out_of_order = |expected: i32| ProducerError::OutOfOrder {
        producer_id: b.producer_id,
        epoch: b.epoch,
        expected,
        got: b.first_seq,
    };
    if b.epoch < epoch {
        return Err(ProducerError::InvalidEpoch {
            producer_id: b.producer_id,
            current: epoch,
            got: b.epoch,
        });
    }
    if b.epoch > epoch {
        return if b.first_seq == 0 {
            Ok(())
        } else {
            Err(out_of_order(0))
        };
    }
    match last_seq {
        Some(last) if !in_sequence(last, b.first_seq) => {
            Err(out_of_order(if last == i32::MAX { 0 } else { last + 1 }))
        }
        _ => Ok(()),
    }
}

/// The producer state of one partition as of `end` (every batch below it applied).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerState {
    producers: BTreeMap<i64, ProducerEntry>,
    /// The offset after the last applied batch.
    end: i64,
}

impl ProducerState {
    /// An empty state at `end` (a log that starts there).
    pub fn empty_at(end: i64) -> Self {
        Self {
            producers: BTreeMap::new(),
            end,
        }
    }

    /// The offset after the last applied batch.
    pub fn end(&self) -> i64 {
        self.end
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    /// Every producer, by id.
    pub fn producers(&self) -> impl Iterator<Item = (i64, &ProducerEntry)> + '_ {
        self.producers.iter().map(|(&id, e)| (id, e))
    }

    /// The rule for a leader: what to do with `b` (its offsets are not assigned yet and are
    /// ignored). See the module doc.
    pub fn check(&self, b: &ProducerBatch) -> Result<Verdict, ProducerError> {
        let Some(entry) = self.producers.get(&b.producer_id) else {
            return Ok(Verdict::Append);
        };
        if b.epoch == entry.epoch {
            if let Some(d) = entry
                .batches
                .iter()
                .find(|d| d.first_seq == b.first_seq && d.last_seq == b.last_seq)
            {
                return Ok(Verdict::Duplicate {
                    first_offset: d.first_offset,
                    last_offset: d.last_offset,
                });
            }
        }
        follows(b, entry.epoch, entry.last().map(|l| l.last_seq))?;
        Ok(Verdict::Append)
    }

    /// [`Self::check`] for the batches of one append, in order: a later batch of a producer
    /// must follow its earlier one in the same append. If any batch is a duplicate, the
    /// whole append is answered as that duplicate (as Kafka does).
    pub fn check_append(&self, batches: &[ProducerBatch]) -> Result<Verdict, ProducerError> {
        let mut earlier: BTreeMap<i64, (i16, i32)> = BTreeMap::new();
        for b in batches {
            match earlier.get(&b.producer_id) {
                None => {
                    if let dup @ Verdict::Duplicate { .. } = self.check(b)? {
                        return Ok(dup);
                    }
                }
                Some(&(epoch, last_seq)) => follows(b, epoch, Some(last_seq))?,
            }
            earlier.insert(b.producer_id, (b.epoch, b.last_seq));
        }
        Ok(Verdict::Append)
    }

    /// Records an appended batch (leader or follower): a new epoch starts the producer's
    /// batches afresh; at most [`BATCHES_KEPT`] are kept.
    pub fn apply(&mut self, b: &ProducerBatch) {
        let entry = self
            .producers
            .entry(b.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: b.epoch,
                batches: VecDeque::with_capacity(BATCHES_KEPT),
            });
        if b.epoch != entry.epoch {
            entry.epoch = b.epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == BATCHES_KEPT {
            entry.batches.pop_front();
        }
        entry.batches.push_back(BatchMeta {
            first_seq: b.first_seq,
            last_seq: b.last_seq,
            first_offset: b.first_offset,
            last_offset: b.last_offset,
            timestamp: b.timestamp,
        });
        self.end = self.end.max(b.last_offset + 1);
    }

    /// Moves the end past batches without a producer id.
    pub fn advance_to(&mut self, end: i64) {
        self.end = self.end.max(end);
    }

    /// Removes producers whose last batch is older than `max_age_ms` at `now_ms`; returns
    /// how many.
    pub fn expire(&mut self, now_ms: i64, max_age_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers.retain(|_, e| {
            e.last()
                .is_none_or(|b| now_ms.saturating_sub(b.timestamp) <= max_age_ms)
        });
        before - self.producers.len()
    }

    /// The snapshot payload: the end offset, then each producer (id, epoch, batches).
    /// Versioning and the checksum are the snapshot file's ([`crate::checkpoint`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + self.producers.len() * 64);
        out.extend_from_slice(&self.end.to_be_bytes());
        out.extend_from_slice(&(self.producers.len() as u32).to_be_bytes());
        for (&id, e) in &self.producers {
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&e.epoch.to_be_bytes());
            out.push(e.batches.len() as u8);
            for b in &e.batches {
                out.extend_from_slice(&b.first_seq.to_be_bytes());
                out.extend_from_slice(&b.last_seq.to_be_bytes());
                out.extend_from_slice(&b.first_offset.to_be_bytes());
                out.extend_from_slice(&b.last_offset.to_be_bytes());
                out.extend_from_slice(&b.timestamp.to_be_bytes());
            }
        }
        out
    }

    /// Parses [`Self::encode`]'s output; `None` if it is malformed.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        let end = r.i64()?;
        let count = r.u32()?;
        let mut producers = BTreeMap::new();
        for _ in 0..count {
            let id = r.i64()?;
            let epoch = r.i16()?;
            let n = usize::from(r.u8()?);
            if n > BATCHES_KEPT {
                return None;
            }
            let mut batches = VecDeque::with_capacity(n);
            for _ in 0..n {
                batches.push_back(BatchMeta {
                    first_seq: r.i32()?,
                    last_seq: r.i32()?,
                    first_offset: r.i64()?,
                    last_offset: r.i64()?,
                    timestamp: r.i64()?,
                });
            }
            producers.insert(id, ProducerEntry { epoch, batches });
        }
        r.0.is_empty().then_some(Self { producers, end })
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn i16(&mut self) -> Option<i16> {
        self.take().map(i16::from_be_bytes)
    }
    fn i32(&mut self) -> Option<i32> {
        self.take().map(i32::from_be_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_be_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take().map(i64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(epoch: i16, first: i32, count: i32, offset: i64) -> ProducerBatch {
        ProducerBatch {
            producer_id: 7,
            epoch,
            first_seq: first,
            last_seq: first.wrapping_add(count - 1),
            first_offset: offset,
            last_offset: offset + i64::from(count) - 1,
            timestamp: 1_000 + offset,
        }
    }

    /// A state that applied `batches` in order.
    fn state(batches: &[ProducerBatch]) -> ProducerState {
        let mut s = ProducerState::empty_at(0);
        for b in batches {
            s.apply(b);
        }
        s
    }

    #[test]
    fn check_table() {
        use ProducerError::*;
        let dup = |first_offset, last_offset| {
            Ok(Verdict::Duplicate {
                first_offset,
                last_offset,
            })
        };
        let ooo = |epoch, expected, got| {
            Err(OutOfOrder {
                producer_id: 7,
                epoch,
                expected,
                got,
            })
        };
        // (applied, candidate, verdict)
        let history = [batch(0, 0, 10, 0), batch(0, 10, 5, 10)];
        let fenced = [batch(2, 0, 1, 0)];
        let wrapping = [batch(0, i32::MAX - 1, 2, 0)];
        let table: Vec<(
            &[ProducerBatch],
            ProducerBatch,
            Result<Verdict, ProducerError>,
        )> = vec![
            // Unknown producer: anything goes (KIP-360).
            (&[], batch(0, 0, 3, 0), Ok(Verdict::Append)),
            (&[], batch(3, 42, 3, 0), Ok(Verdict::Append)),
            // In sequence.
            (&history, batch(0, 15, 2, 0), Ok(Verdict::Append)),
            // Retries of kept batches are duplicates, answered with their offsets.
            (&history, batch(0, 10, 5, 99), dup(10, 14)),
            (&history, batch(0, 0, 10, 99), dup(0, 9)),
            // A gap, a rewind that is no kept batch, an overlap.
            (&history, batch(0, 16, 1, 0), ooo(0, 15, 16)),
            (&history, batch(0, 5, 5, 0), ooo(0, 15, 5)),
            (&history, batch(0, 10, 4, 0), ooo(0, 15, 10)),
            // A fenced (older) epoch.
            (
                &fenced,
                batch(1, 1, 1, 0),
                Err(InvalidEpoch {
                    producer_id: 7,
                    current: 2,
                    got: 1,
                }),
            ),
            // A new epoch starts at sequence 0.
            (&history, batch(1, 0, 1, 0), Ok(Verdict::Append)),
            (&history, batch(1, 15, 1, 0), ooo(1, 0, 15)),
            // Sequences wrap after i32::MAX.
            (&wrapping, batch(0, 0, 1, 0), Ok(Verdict::Append)),
        ];
        for (i, (applied, candidate, want)) in table.into_iter().enumerate() {
            assert_eq!(state(applied).check(&candidate), want, "row {i}");
        }
    }

    #[test]
    fn batches_of_one_append_follow_each_other() {
        let s = state(&[batch(0, 0, 5, 0)]);
        let append = |batches: &[ProducerBatch]| s.check_append(batches);
        assert_eq!(
            append(&[batch(0, 5, 2, 0), batch(0, 7, 1, 0)]),
            Ok(Verdict::Append)
        );
        assert!(matches!(
            append(&[batch(0, 5, 2, 0), batch(0, 8, 1, 0)]),
            Err(ProducerError::OutOfOrder {
                expected: 7,
                got: 8,
                ..
            })
        ));
        assert!(matches!(
            append(&[batch(0, 0, 5, 0), batch(0, 5, 1, 0)]),
            Ok(Verdict::Duplicate {
                first_offset: 0,
                last_offset: 4
            })
        ));
        assert!(matches!(
            append(&[batch(1, 0, 2, 0), batch(0, 2, 1, 0)]),
            Err(ProducerError::InvalidEpoch {
                current: 1,
                got: 0,
                ..
            })
        ));
    }

    #[test]
    fn only_the_last_five_batches_are_duplicates() {
        let batches: Vec<_> = (0..7)
            .map(|i| batch(0, i * 2, 2, i64::from(i) * 2))
            .collect();
        let s = state(&batches);
        assert_eq!(s.get(7).unwrap().batches.len(), BATCHES_KEPT);
        assert!(matches!(
            s.check(&batch(0, 4, 2, 0)),
            Ok(Verdict::Duplicate { .. })
        ));
        assert!(
            matches!(
                s.check(&batch(0, 2, 2, 0)),
                Err(ProducerError::OutOfOrder { .. })
            ),
            "a sixth-last batch is no longer known"
        );
        assert_eq!(s.end(), 14);
    }

    #[test]
    fn a_new_epoch_forgets_the_old_batches() {
        let mut s = state(&[batch(0, 0, 3, 0)]);
        s.apply(&batch(1, 0, 2, 3));
        let e = s.get(7).unwrap();
        assert_eq!((e.epoch, e.batches.len()), (1, 1));
        assert_eq!(
            s.check(&batch(1, 0, 2, 0)),
            Ok(Verdict::Duplicate {
                first_offset: 3,
                last_offset: 4
            })
        );
    }

    #[test]
    fn idle_producers_expire() {
        let mut s = state(&[batch(0, 0, 1, 0)]);
        let mut other = batch(0, 0, 1, 1);
        other.producer_id = 8;
        other.timestamp = 50_000;
        s.apply(&other);
        assert_eq!(
            s.expire(20_000, 10_000),
            1,
            "producer 7's last batch is at 1000"
        );
        assert!(s.get(7).is_none() && s.get(8).is_some());
    }

    #[test]
    fn snapshots_round_trip_and_garbage_is_refused() {
        let mut s = state(&[batch(0, 0, 3, 0), batch(0, 3, 1, 3)]);
        let mut other = batch(4, 9, 2, 4);
        other.producer_id = i64::MAX;
        s.apply(&other);
        s.advance_to(100);
        let bytes = s.encode();
        assert_eq!(ProducerState::decode(&bytes), Some(s.clone()));
        assert_eq!(ProducerState::decode(&bytes[..bytes.len() - 1]), None);
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(ProducerState::decode(&longer), None);
        assert_eq!(
            ProducerState::decode(&ProducerState::empty_at(5).encode()),
            Some(ProducerState::empty_at(5))
        );
    }
}
