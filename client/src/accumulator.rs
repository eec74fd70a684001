//! The producer's record accumulator: per-partition queues of batches, and the rule deciding
//! which batches are ready to send. Pure (no I/O, time passed in) so it is table-testable.
//!
//! A partition's front batch is ready when it is full (`batch_size` reached, or a newer batch
//! exists behind it), when `linger` has passed since it was opened, when a flush or close is
//! in progress, or — for a retried batch — when its backoff has passed. `drain` takes ready
//! front batches whose leader is known and whose broker may take another request, groups them
//! by broker and caps each group at `max_request_size`.
//!
//! With idempotence on ([`Accumulator::idempotent`]) it also keeps each partition's sequence
//! numbers: a batch gets its base sequence when it is first drained and keeps it through
//! every retry; a retried batch goes back in sequence order; at most [`MAX_IN_FLIGHT`]
//! batches of a partition are out from its first unsettled batch on, settled or not (the
//! broker keeps a producer's last five batches to recognise retries: a sixth written after
//! a batch still to be retried, even once the ones between were delivered, would push that
//! batch out of the broker's window, and its retry would be written again); and after an
//! epoch bump every unsettled batch is numbered again from 0.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::records::Record;
use tokio::sync::{oneshot, OwnedSemaphorePermit};

use crate::config::Compression;
use crate::error::ClientError;
use crate::record::{encode_batch, place_in_batch, RecordMetadata, BATCH_HEADER_BYTES};
use keel_protocol::encode::{place, ProducerIds};

/// Batches of one partition out at once with idempotence: the broker keeps the last five
/// batches of a producer to recognise retries.
pub(crate) const MAX_IN_FLIGHT: usize = 5;

/// A record waiting for delivery, with its completion channel and reserved buffer memory.
pub(crate) struct PendingRecord {
    pub(crate) record: Record,
    pub(crate) size: usize,
    pub(crate) delivery: oneshot::Sender<Result<RecordMetadata, ClientError>>,
    /// Buffer memory held until the record is delivered or failed (then dropped).
    pub(crate) _memory: Option<OwnedSemaphorePermit>,
}

/// Records bound for one partition, sent (and retried) together.
pub(crate) struct ProducerBatch {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) records: Vec<PendingRecord>,
    pub(crate) bytes: usize,
    pub(crate) created: Instant,
    /// Sends (or leader look-ups) that failed retriably so far.
    pub(crate) attempts: u32,
    pub(crate) retry_at: Option<Instant>,
    /// With idempotence: the base sequence, from the first drain on.
    pub(crate) sequence: Option<i32>,
    /// With idempotence: whether, when this batch was last sent, every batch of its
    /// partition numbered before it had settled (see [`Accumulator::is_first_unsettled`]).
    first_when_sent: bool,
}

impl ProducerBatch {
    fn new(topic: &str, partition: i32, now: Instant) -> Self {
        ProducerBatch {
            topic: topic.to_owned(),
            partition,
            records: Vec::new(),
            bytes: BATCH_HEADER_BYTES,
            created: now,
            attempts: 0,
            retry_at: None,
            sequence: None,
            first_when_sent: false,
        }
    }

    /// Encodes the batch (offsets 0..n) as one v2 record batch, stamped with `producer`
    /// (its id and epoch, and this batch's sequence) when idempotent.
    pub(crate) fn encode(
        &self,
        compression: Compression,
        producer: Option<(i64, i16)>,
    ) -> Result<Bytes, ClientError> {
        let mut records: Vec<Record> = self.records.iter().map(|r| r.record.clone()).collect();
        if let (Some((producer_id, producer_epoch)), Some(base_sequence)) =
            (producer, self.sequence)
        {
            place(
                &mut records,
                ProducerIds {
                    producer_id,
                    producer_epoch,
                    base_sequence,
                },
            );
        }
        encode_batch(&records, compression)
    }

    /// Resolves every delivery: record `i` is at `base_offset + i` (or -1 when unknown).
    /// Returns how many records were resolved.
    pub(crate) fn complete(self, base_offset: i64, log_append_time: i64) -> usize {
        let n = self.records.len();
        for (i, r) in self.records.into_iter().enumerate() {
            let offset = if base_offset < 0 {
                -1
            } else {
                base_offset + i as i64
            };
            let timestamp = if log_append_time >= 0 {
                log_append_time
            } else {
                r.record.timestamp
            };
            let _ = r.delivery.send(Ok(RecordMetadata {
                topic: self.topic.clone(),
                partition: self.partition,
                offset,
                timestamp,
            }));
        }
        n
    }

    /// Fails every delivery with `err`. Returns how many records were failed.
    pub(crate) fn fail(self, err: &ClientError) -> usize {
        let n = self.records.len();
        for r in self.records {
            let _ = r.delivery.send(Err(err.clone()));
        }
        n
    }
}

/// What an append did, for waking the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Append {
    /// The record opened a new batch.
    pub(crate) new_batch: bool,
    /// The batch the record went into is now full.
    pub(crate) batch_full: bool,
}

/// The outcome of one drain.
#[derive(Default)]
pub(crate) struct Drain {
    /// Batches to send, by leader broker id.
    pub(crate) by_broker: HashMap<i32, Vec<ProducerBatch>>,
    /// Ready partitions without a known leader: metadata should be refreshed.
    pub(crate) no_leader: Vec<(String, i32)>,
    /// Batches that found no leader more than `retries` times; to be failed.
    pub(crate) expired: Vec<ProducerBatch>,
}

type TopicPartition = (String, i32);

/// One partition's sequence numbers (idempotence).
#[derive(Debug, Default)]
struct PartitionSequences {
    /// The next base sequence to hand out.
    next: i32,
    /// The batches drained from the first unsettled one on, in sequence order: (base
    /// sequence, settled). A settled batch behind an unsettled one stays: the broker's
    /// window of five counts it.
    window: VecDeque<(i32, bool)>,
    /// Batches of this partition in flight.
    in_flight: usize,
    /// The broker those batches went to.
    sent_to: Option<i32>,
    /// A batch of this epoch was delivered: the partition knows the producer, and its state
    /// keeps later batches in order. Until then one batch goes at a time, since a partition
    /// takes any sequence from a producer it has never seen (KIP-360): a second batch could
    /// be written before a first that was refused (say the broker was not the leader yet).
    known: bool,
    /// The broker lost this partition's sequences (a gap on its first unsettled batch, or an
    /// unknown producer): none of its unsettled batches is in the log, so the epoch bump may
    /// number them again.
    lost: bool,
}

/// Per-partition batch queues.
pub(crate) struct Accumulator {
    batch_size: usize,
    linger: Duration,
    retries: u32,
    retry_backoff: Duration,
    queues: BTreeMap<TopicPartition, VecDeque<ProducerBatch>>,
    /// Rotates the drain start so no partition is always last under `max_request_size`.
    drain_cursor: usize,
    /// With idempotence on: sequence numbers per partition.
    sequences: Option<HashMap<TopicPartition, PartitionSequences>>,
    /// An epoch bump is waiting: only batches already sent (with their sequence) of
    /// partitions not [lost](PartitionSequences::lost) are drained, so each resolves under
    /// the epoch it may already be written with.
    holding: bool,
}

impl Accumulator {
    pub(crate) fn new(
        batch_size: usize,
        linger: Duration,
        retries: u32,
        retry_backoff: Duration,
    ) -> Self {
        Accumulator {
            batch_size,
            linger,
            retries,
            retry_backoff,
            queues: BTreeMap::new(),
            drain_cursor: 0,
            sequences: None,
            holding: false,
        }
    }

    /// Turns idempotence on: sequence numbers and the per-partition in-flight cap.
    pub(crate) fn idempotent(mut self) -> Self {
        self.sequences = Some(HashMap::new());
        self
    }

    /// A drained batch is settled (delivered or failed for good): it no longer holds its
    /// partition's sequence range or an in-flight slot.
    pub(crate) fn settled(&mut self, batch: &ProducerBatch) {
        self.settle(batch, false);
    }

    /// [`Accumulator::settled`] for a batch the broker acknowledged.
    pub(crate) fn delivered(&mut self, batch: &ProducerBatch) {
        self.settle(batch, true);
    }

    fn settle(&mut self, batch: &ProducerBatch, delivered: bool) {
        if let Some(s) = self.partition_sequences(batch) {
            s.known |= delivered;
            s.in_flight = s.in_flight.saturating_sub(1);
            if let Some(seq) = batch.sequence {
                if let Some(slot) = s.window.iter_mut().find(|(q, _)| *q == seq) {
                    slot.1 = true;
                }
                while s.window.front().is_some_and(|(_, settled)| *settled) {
                    s.window.pop_front();
                }
            }
        }
    }

    /// Whether no unsettled batch of the partition came before `batch` when it was last sent:
    /// only then is a sequence error on it news about the broker's state. Asked when the
    /// answer arrives, "first unsettled" could be wrong: answers from one connection are
    /// handled by concurrent tasks, so a batch numbered earlier but sent (retried) later may
    /// already have been handled as delivered, although the broker saw this batch first.
    pub(crate) fn is_first_unsettled(&self, batch: &ProducerBatch) -> bool {
        self.sequences.is_none() || batch.first_when_sent
    }

    /// Marks `batch`'s partition as one whose sequences the broker lost (see
    /// [`PartitionSequences::lost`]).
    pub(crate) fn mark_lost(&mut self, batch: &ProducerBatch) {
        if let Some(s) = self.partition_sequences(batch) {
            s.lost = true;
        }
    }

    /// While an epoch bump waits ([`Accumulator::holding`]).
    pub(crate) fn set_holding(&mut self, holding: bool) {
        self.holding = holding;
    }

    /// Whether a batch sent under the current epoch may still be in a partition's log with
    /// its outcome unknown (outside lost partitions). A new epoch would number it again and
    /// the broker could not tell it is a retry, so the bump waits until there is none.
    pub(crate) fn unresolved(&self) -> bool {
        self.sequences
            .as_ref()
            .is_some_and(|seqs| seqs.values().any(|s| !s.lost && !s.window.is_empty()))
    }

    /// After an epoch bump (nothing in flight, nothing [unresolved](Self::unresolved)):
    /// every partition starts again at sequence 0, and every queued batch is numbered again
    /// when next drained, in queue order.
    pub(crate) fn reset_sequences(&mut self) {
        if let Some(seqs) = self.sequences.as_mut() {
            seqs.clear();
        }
        for batch in self.queues.values_mut().flatten() {
            batch.sequence = None;
        }
        self.holding = false;
    }

    /// As if a batch of `topic`-`partition` had been delivered (tests of the five-batch
    /// window start from a partition that knows the producer).
    #[cfg(test)]
    fn assume_known(&mut self, topic: &str, partition: i32) {
        if let Some(seqs) = self.sequences.as_mut() {
            seqs.entry((topic.to_owned(), partition)).or_default().known = true;
        }
    }

    fn partition_sequences(&mut self, batch: &ProducerBatch) -> Option<&mut PartitionSequences> {
        self.sequences
            .as_mut()?
            .get_mut(&(batch.topic.clone(), batch.partition))
    }

    /// Appends a record to the open batch of `topic`-`partition`, opening one if there is none
    /// or the record does not fit.
    pub(crate) fn append(
        &mut self,
        topic: &str,
        partition: i32,
        mut rec: PendingRecord,
        now: Instant,
    ) -> Append {
        let batch_size = self.batch_size;
        let queue = self
            .queues
            .entry((topic.to_owned(), partition))
            .or_default();
        let fits = |b: &ProducerBatch| b.attempts == 0 && b.bytes + rec.size <= batch_size;
        let new_batch = !queue.back().is_some_and(fits);
        if new_batch {
            queue.push_back(ProducerBatch::new(topic, partition, now));
        }
        let batch = queue.back_mut().expect("a batch was just ensured");
        place_in_batch(&mut rec.record, batch.records.len() as i64);
        batch.bytes += rec.size;
        batch.records.push(rec);
        Append {
            new_batch,
            batch_full: batch.bytes >= batch_size,
        }
    }

    /// Puts a batch that failed retriably back at the front of its partition's queue, in
    /// sequence order among the batches already back there.
    pub(crate) fn requeue(&mut self, batch: ProducerBatch) {
        if let Some(s) = self.partition_sequences(&batch) {
            s.in_flight = s.in_flight.saturating_sub(1);
        }
        let key = (batch.topic.clone(), batch.partition);
        let queue = self.queues.entry(key).or_default();
        let at = match batch.sequence {
            Some(seq) => queue
                .iter()
                .position(|b| b.sequence.is_none_or(|s| s > seq))
                .unwrap_or(queue.len()),
            None => 0,
        };
        queue.insert(at, batch);
    }

    /// Whether nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.queues.values().all(VecDeque::is_empty)
    }

    /// Topics with queued batches.
    pub(crate) fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.queues.keys().map(|(t, _)| t.clone()).collect();
        topics.dedup();
        topics
    }

    fn is_ready(&self, queue: &VecDeque<ProducerBatch>, now: Instant, flushing: bool) -> bool {
        let Some(front) = queue.front() else {
            return false;
        };
        match front.retry_at {
            Some(at) => at <= now,
            None => {
                queue.len() > 1
                    || front.bytes >= self.batch_size
                    || flushing
                    || now >= front.created + self.linger
            }
        }
    }

    /// Takes the ready front batches that can be sent now.
    ///
    /// `leader` maps a partition to its leader; `can_send` is asked once per broker whether it
    /// may take another request (it reserves an in-flight slot when it says yes).
    pub(crate) fn drain(
        &mut self,
        now: Instant,
        flushing: bool,
        max_request_size: usize,
        leader: impl Fn(&str, i32) -> Option<i32>,
        mut can_send: impl FnMut(i32) -> bool,
    ) -> Drain {
        let mut out = Drain::default();
        let mut allowed: HashMap<i32, bool> = HashMap::new();
        let mut request_bytes: HashMap<i32, usize> = HashMap::new();
        let keys: Vec<TopicPartition> = self.queues.keys().cloned().collect();
        let start = if keys.is_empty() {
            0
        } else {
            self.drain_cursor % keys.len()
        };
        self.drain_cursor = self.drain_cursor.wrapping_add(1);
        for key in keys[start..].iter().chain(&keys[..start]) {
            let queue = &self.queues[key];
            if !self.is_ready(queue, now, flushing) {
                continue;
            }
            if self.holding {
                let lost = self
                    .sequences
                    .as_ref()
                    .and_then(|s| s.get(key))
                    .is_some_and(|s| s.lost);
                if lost || queue.front().is_some_and(|b| b.sequence.is_none()) {
                    continue;
                }
            }
            // A new batch waits while five are out from the first unsettled one on; a retry
            // (it has its sequence, so it is one of the five) goes when a slot is free.
            let retry = queue.front().is_some_and(|b| b.sequence.is_some());
            if self
                .sequences
                .as_ref()
                .and_then(|s| s.get(key))
                .is_some_and(|s| {
                    let cap = if s.known { MAX_IN_FLIGHT } else { 1 };
                    s.in_flight >= cap || (!retry && s.window.len() >= cap)
                })
            {
                continue;
            }
            let queue = self.queues.get_mut(key).expect("key from this map");
            let Some(broker) = leader(&key.0, key.1) else {
                let front = queue.front_mut().expect("ready queue is non-empty");
                front.attempts += 1;
                front.retry_at = Some(now + self.retry_backoff);
                out.no_leader.push(key.clone());
                if front.attempts > self.retries {
                    out.expired.extend(queue.pop_front());
                }
                continue;
            };
            // While batches of the partition are out to another broker (the leader moved, or
            // metadata said so), nothing goes to the new one: a broker that has no state for
            // the producer takes any sequence (KIP-360), so a later batch could be written
            // there before an earlier one that fails at the old broker and is retried,
            // breaking the order. They resolve (or fail there) first.
            if self
                .sequences
                .as_ref()
                .and_then(|s| s.get(key))
                .is_some_and(|s| s.in_flight > 0 && s.sent_to.is_some_and(|b| b != broker))
            {
                continue;
            }
            if !*allowed.entry(broker).or_insert_with(|| can_send(broker)) {
                continue;
            }
            let size = queue.front().map_or(0, |b| b.bytes);
            let used = request_bytes.entry(broker).or_insert(0);
            if *used > 0 && *used + size > max_request_size {
                continue;
            }
            *used += size;
            let mut batch = queue.pop_front().expect("ready queue is non-empty");
            batch.retry_at = None;
            if let Some(seqs) = self.sequences.as_mut() {
                let s = seqs.entry(key.clone()).or_default();
                let seq = *batch.sequence.get_or_insert_with(|| {
                    let seq = s.next;
                    // Sequences wrap after i32::MAX to 0, as Kafka's do.
                    s.next = (i64::from(seq) + batch.records.len() as i64)
                        .rem_euclid(i64::from(i32::MAX) + 1) as i32;
                    seq
                });
                if !s.window.iter().any(|(q, _)| *q == seq) {
                    s.window.push_back((seq, false));
                }
                batch.first_when_sent = s
                    .window
                    .iter()
                    .find(|(_, settled)| !settled)
                    .is_none_or(|(first, _)| *first == seq);
                s.in_flight += 1;
                s.sent_to = Some(broker);
            }
            out.by_broker.entry(broker).or_default().push(batch);
        }
        self.queues.retain(|_, q| !q.is_empty());
        out
    }

    /// When the earliest not-yet-ready batch becomes ready (linger or backoff expiry).
    /// Ready batches waiting on a broker slot are not included: a completing request wakes
    /// the sender instead.
    pub(crate) fn next_deadline(&self, now: Instant, flushing: bool) -> Option<Instant> {
        self.queues
            .values()
            .filter(|q| !self.is_ready(q, now, flushing))
            .filter_map(|q| q.front())
            .map(|b| b.retry_at.unwrap_or(b.created + self.linger))
            .min()
    }
}

#[cfg(test)]
mod idempotence_tests {
    use super::tests_support::*;
    use super::*;

    #[test]
    fn sequences_are_given_once_and_kept_across_retries() {
        let mut a = acc(1, 0).idempotent();
        a.assume_known("t", 0);
        let t0 = Instant::now();
        for _ in 0..3 {
            a.append("t", 0, rec(10).0, t0);
        }
        let mut sent = Vec::new();
        for _ in 0..3 {
            let mut d = drain_to_0(&mut a, t0);
            sent.extend(d.by_broker.remove(&0).unwrap());
        }
        let seqs: Vec<_> = sent.iter().map(|b| b.sequence).collect();
        assert_eq!(seqs, [Some(0), Some(1), Some(2)]);
        // The second and the first fail, in that order: back in sequence order.
        let mut it = sent.into_iter();
        let (first, second, third) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        assert!(!a.is_first_unsettled(&second), "batch 0 is still unsettled");
        a.requeue(second);
        a.requeue(first);
        let mut d = drain_to_0(&mut a, t0 + Duration::from_secs(1));
        let again = d.by_broker.remove(&0).unwrap();
        assert_eq!(again[0].sequence, Some(0), "retried first, same sequence");
        assert!(a.is_first_unsettled(&again[0]));
        a.settled(&again[0]);
        a.settled(&third);
        // After a bump everything still queued starts again at 0.
        a.reset_sequences();
        let mut d = drain_to_0(&mut a, t0 + Duration::from_secs(2));
        assert_eq!(d.by_broker.remove(&0).unwrap()[0].sequence, Some(0));
    }

    /// A bump asked for by partition 1 must not renumber partition 0's batch that was sent
    /// and may be in the log: it is retried under the old epoch first.
    #[test]
    fn a_bump_waits_for_batches_that_may_be_written_and_holds_new_ones() {
        let mut a = acc(1, 0).idempotent();
        a.assume_known("t", 0);
        let t0 = Instant::now();
        let leaders = |_: &str, _: i32| Some(0);
        a.append("t", 0, rec(10).0, t0);
        a.append("t", 1, rec(10).0, t0);
        let mut sent = a
            .drain(t0, true, usize::MAX, leaders, |_| true)
            .by_broker
            .remove(&0)
            .unwrap();
        sent.sort_by_key(|b| b.partition);
        let (p0, p1) = (sent.remove(0), sent.remove(0));
        // Both requests failed: p0's outcome is unknown, p1's broker lost its sequences.
        a.mark_lost(&p1);
        a.requeue(p0);
        a.requeue(p1);
        a.append("t", 2, rec(10).0, t0);
        a.set_holding(true);
        assert!(a.unresolved(), "p0 may be written");
        let later = t0 + Duration::from_secs(1);
        let d = a.drain(later, true, usize::MAX, leaders, |_| true);
        let out = &d.by_broker[&0];
        assert_eq!(out.len(), 1, "only the retry of partition 0 goes out");
        assert_eq!((out[0].partition, out[0].sequence), (0, Some(0)));
        a.settled(&out[0]);
        assert!(!a.unresolved(), "only the lost partition is left");
        a.reset_sequences();
        let d = a.drain(later, true, usize::MAX, leaders, |_| true);
        let mut parts: Vec<(i32, Option<i32>)> = d.by_broker[&0]
            .iter()
            .map(|b| (b.partition, b.sequence))
            .collect();
        parts.sort();
        assert_eq!(parts, [(1, Some(0)), (2, Some(0))]);
    }

    /// A batch waiting for its retry still holds its place among the five: the broker
    /// must still have it in its window when the retry comes (a chaos run wrote a retry
    /// twice when a sixth batch had pushed it out).
    #[test]
    fn a_batch_awaiting_retry_keeps_its_slot() {
        let mut a = acc(1, 0).idempotent();
        a.assume_known("t", 0);
        let t0 = Instant::now();
        for _ in 0..7 {
            a.append("t", 0, rec(10).0, t0);
        }
        let mut out = Vec::new();
        for _ in 0..7 {
            if let Some(mut b) = drain_to_0(&mut a, t0).by_broker.remove(&0) {
                out.append(&mut b);
            }
        }
        assert_eq!(out.len(), MAX_IN_FLIGHT);
        // The first fails and waits to be retried, the other four are still out.
        let mut it = out.into_iter();
        let first = it.next().unwrap();
        let second = it.next().unwrap();
        a.requeue(first);
        let later = t0 + Duration::from_secs(1);
        let mut d = drain_to_0(&mut a, later);
        let sent: Vec<Option<i32>> = d.by_broker[&0].iter().map(|b| b.sequence).collect();
        assert_eq!(sent, [Some(0)], "the retry goes");
        let mut a_retry = d.by_broker.remove(&0).unwrap();
        let d = drain_to_0(&mut a, later);
        assert!(d.by_broker.is_empty(), "five unsettled: no sixth batch");
        // The one behind it is delivered: still five from the retry on.
        a.settled(&second);
        let d = drain_to_0(&mut a, later);
        assert!(d.by_broker.is_empty(), "the retry still heads the window");
        // The retry is delivered: the window slides past both, a new batch may go.
        let retried = a_retry.pop().unwrap();
        a.settled(&retried);
        let d = drain_to_0(&mut a, later);
        assert_eq!(d.by_broker[&0][0].sequence, Some(5));
    }

    /// Batches delivered after one that waits for its retry still count: the broker's window
    /// of five holds them too (a chaos run wrote a retry twice when later batches had been
    /// delivered and new ones sent past it).
    #[test]
    fn delivered_batches_behind_a_retry_still_count() {
        let mut a = acc(1, 0).idempotent();
        a.assume_known("t", 0);
        let t0 = Instant::now();
        for _ in 0..8 {
            a.append("t", 0, rec(10).0, t0);
        }
        let mut out = Vec::new();
        for _ in 0..8 {
            if let Some(mut b) = drain_to_0(&mut a, t0).by_broker.remove(&0) {
                out.append(&mut b);
            }
        }
        assert_eq!(out.len(), MAX_IN_FLIGHT);
        let mut it = out.into_iter();
        let first = it.next().unwrap();
        a.requeue(first); // timed out: written or not, unknown
        for b in it {
            a.settled(&b); // the four after it are delivered
        }
        let later = t0 + Duration::from_secs(1);
        let d = drain_to_0(&mut a, later);
        let sent: Vec<Option<i32>> = d.by_broker[&0].iter().map(|b| b.sequence).collect();
        assert_eq!(sent, [Some(0)], "only the retry");
        let d = drain_to_0(&mut a, later);
        assert!(d.by_broker.is_empty(), "no batch past the broker's window");
    }

    /// Found by a chaos run with client debug logs: batch 2 went to a broker that failed and
    /// was retried after batches 3, 5 and 6; the broker answered 3 with a sequence error
    /// (it still expected 2), but the task handling that answer ran after the one that had
    /// delivered the retried 2. Asked then, 3 looked like the first unsettled batch, so the
    /// producer took the broker's state for lost and bumped its epoch for nothing. What
    /// counts is the state when 3 was sent.
    #[test]
    fn a_sequence_error_is_judged_by_what_was_unsettled_when_the_batch_was_sent() {
        let mut a = acc(1, 0).idempotent();
        a.assume_known("t", 0);
        let t0 = Instant::now();
        for _ in 0..2 {
            a.append("t", 0, rec(10).0, t0);
        }
        let first = drain_to_0(&mut a, t0).by_broker.remove(&0).unwrap();
        let second = drain_to_0(&mut a, t0).by_broker.remove(&0).unwrap();
        let (first, second) = (
            first.into_iter().next().unwrap(),
            second.into_iter().next().unwrap(),
        );
        assert!(a.is_first_unsettled(&first));
        assert!(
            !a.is_first_unsettled(&second),
            "batch 0 was out when batch 1 was sent"
        );
        // Batch 0 fails, is retried and delivered before batch 1's answer is handled.
        a.requeue(first);
        let later = t0 + Duration::from_secs(1);
        let retried = drain_to_0(&mut a, later).by_broker.remove(&0).unwrap();
        assert_eq!(retried[0].sequence, Some(0));
        assert!(
            a.is_first_unsettled(&retried[0]),
            "nothing before it when retried"
        );
        a.settled(&retried[0]);
        assert!(
            !a.is_first_unsettled(&second),
            "batch 1's sequence error may be the echo of batch 0 arriving after it"
        );
        // Sent again now, it is the first: a sequence error then means lost state.
        a.requeue(second);
        let again = drain_to_0(&mut a, later + Duration::from_secs(1));
        assert!(a.is_first_unsettled(&again.by_broker[&0][0]));
    }

    /// Found by `keel bench produce` on a fresh 3-broker topic: the first batch went to a
    /// broker that was not (yet) the leader while the next ones went to the leader, which,
    /// knowing nothing of the producer, wrote them; the first, retried there, was then out of
    /// order. Batches of a partition go to one broker at a time.
    #[test]
    fn a_partition_sends_to_one_broker_at_a_time() {
        let mut a = acc(1, 0).idempotent();
        a.assume_known("t", 0);
        let t0 = Instant::now();
        for _ in 0..3 {
            a.append("t", 0, rec(10).0, t0);
        }
        let d = a.drain(t0, true, usize::MAX, |_, _| Some(1), |_| true);
        let first = d.by_broker[&1][0].sequence;
        assert_eq!(first, Some(0));
        // Metadata now names broker 2: nothing goes there while batch 0 is out to broker 1.
        let d = a.drain(t0, true, usize::MAX, |_, _| Some(2), |_| true);
        assert!(
            d.by_broker.is_empty(),
            "a later batch went to another broker"
        );
        // Broker 1 refuses batch 0 (not the leader): it goes first, to broker 2.
        let mut d0 = a.drain(t0, true, usize::MAX, |_, _| Some(1), |_| true);
        let second = d0.by_broker.remove(&1).unwrap().remove(0);
        assert_eq!(second.sequence, Some(1), "to the same broker, more may go");
        a.requeue(second);
        let mut zero = ProducerBatch::new("t", 0, t0);
        zero.sequence = Some(0);
        zero.first_when_sent = true;
        a.requeue(zero);
        let later = t0 + Duration::from_secs(1);
        let d = a.drain(later, true, usize::MAX, |_, _| Some(2), |_| true);
        let sent: Vec<Option<i32>> = d.by_broker[&2].iter().map(|b| b.sequence).collect();
        assert_eq!(sent, [Some(0)], "the retry of batch 0 first");
    }

    /// Found by `keel bench produce` on a fresh 3-broker topic (after the one-broker rule): the
    /// first batch was refused by the broker about to lead (its metadata was a moment behind)
    /// while the second, on the same connection, found it leading and was written as a new
    /// producer's. Until a partition has acknowledged a batch of this epoch, one goes at a
    /// time.
    #[test]
    fn a_partition_that_does_not_know_the_producer_gets_one_batch_at_a_time() {
        let mut a = acc(1, 0).idempotent();
        let t0 = Instant::now();
        for _ in 0..4 {
            a.append("t", 0, rec(10).0, t0);
        }
        let drain =
            |a: &mut Accumulator| drain_to_0(a, t0).by_broker.remove(&0).unwrap_or_default();
        let first = drain(&mut a);
        assert_eq!(first.len(), 1);
        assert!(
            drain(&mut a).is_empty(),
            "a second batch before the first is known"
        );
        a.delivered(&first[0]);
        let mut more = Vec::new();
        for _ in 0..4 {
            more.extend(drain(&mut a));
        }
        let seqs: Vec<Option<i32>> = more.iter().map(|b| b.sequence).collect();
        assert_eq!(seqs, [Some(1), Some(2), Some(3)], "then up to five");
    }

    #[test]
    fn at_most_five_batches_of_a_partition_are_out() {
        let mut a = acc(1, 0).idempotent();
        a.assume_known("t", 0);
        let t0 = Instant::now();
        for _ in 0..8 {
            a.append("t", 0, rec(10).0, t0);
        }
        let mut out = Vec::new();
        for _ in 0..8 {
            if let Some(mut b) = drain_to_0(&mut a, t0).by_broker.remove(&0) {
                out.append(&mut b);
            }
        }
        assert_eq!(out.len(), MAX_IN_FLIGHT);
        a.settled(&out[0]);
        let d = drain_to_0(&mut a, t0);
        assert_eq!(
            d.by_broker[&0][0].sequence,
            Some(5),
            "a slot freed, the next goes"
        );
    }
}

#[cfg(test)]
mod tests_support {
    use super::*;
    use crate::record::ProducerRecord;

    /// Drains what is ready at `now`, every partition led by broker 0, every broker free.
    pub(super) fn drain_to_0(a: &mut Accumulator, now: Instant) -> Drain {
        a.drain(now, true, usize::MAX, leader_0, |_| true)
    }

    pub(super) fn rec(
        value_len: usize,
    ) -> (
        PendingRecord,
        oneshot::Receiver<Result<RecordMetadata, ClientError>>,
    ) {
        let r = ProducerRecord::new("t", vec![b'x'; value_len]);
        let size = r.estimated_size();
        let (tx, rx) = oneshot::channel();
        let pending = PendingRecord {
            record: r.into_wire(0, 0),
            size,
            delivery: tx,
            _memory: None,
        };
        (pending, rx)
    }

    pub(super) fn acc(batch_size: usize, linger_ms: u64) -> Accumulator {
        Accumulator::new(
            batch_size,
            Duration::from_millis(linger_ms),
            2,
            Duration::from_millis(100),
        )
    }

    pub(super) fn leader_0(_: &str, _: i32) -> Option<i32> {
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::*;
    use super::*;

    #[test]
    fn batches_split_by_size() {
        let mut a = acc(1000, 10_000);
        let now = Instant::now();
        let mut outcomes = Vec::new();
        for _ in 0..10 {
            outcomes.push(a.append("t", 0, rec(200).0, now));
        }
        // 61 header + ~240 per record: 3 records per 1000-byte batch, 4th opens a new one.
        assert!(outcomes[0].new_batch);
        assert!(!outcomes[1].new_batch && !outcomes[2].new_batch);
        assert!(outcomes[3].new_batch);
        let d = a.drain(now, false, usize::MAX, leader_0, |_| true);
        let sent = &d.by_broker[&0];
        assert_eq!(
            sent.len(),
            1,
            "only the front batch of a partition per drain"
        );
        assert_eq!(sent[0].records.len(), 3);
        let offsets: Vec<i64> = sent[0].records.iter().map(|r| r.record.offset).collect();
        assert_eq!(offsets, vec![0, 1, 2], "offsets are positions in the batch");
    }

    #[test]
    fn linger_holds_a_small_batch_until_it_expires() {
        let mut a = acc(1 << 20, 5);
        let t0 = Instant::now();
        a.append("t", 0, rec(10).0, t0);
        let d = a.drain(
            t0 + Duration::from_millis(4),
            false,
            usize::MAX,
            leader_0,
            |_| true,
        );
        assert!(d.by_broker.is_empty());
        assert_eq!(
            a.next_deadline(t0, false),
            Some(t0 + Duration::from_millis(5))
        );
        let d = a.drain(
            t0 + Duration::from_millis(5),
            false,
            usize::MAX,
            leader_0,
            |_| true,
        );
        assert_eq!(d.by_broker[&0].len(), 1);
        assert!(a.is_empty());
    }

    #[test]
    fn flush_makes_everything_ready() {
        let mut a = acc(1 << 20, 60_000);
        let t0 = Instant::now();
        a.append("t", 0, rec(10).0, t0);
        a.append("t", 1, rec(10).0, t0);
        let d = drain_to_0(&mut a, t0);
        assert_eq!(d.by_broker[&0].len(), 2, "two partitions, one request");
    }

    #[test]
    fn groups_by_leader_and_respects_slots_and_request_size() {
        let mut a = acc(1 << 20, 0);
        let t0 = Instant::now();
        for p in 0..4 {
            a.append("t", p, rec(400).0, t0);
        }
        let leader = |_: &str, p: i32| Some(p % 2);
        // Broker 1 has no free slot; broker 0's request holds one ~500-byte batch.
        let d = a.drain(t0, false, 600, leader, |b| b == 0);
        assert_eq!(d.by_broker.len(), 1);
        assert_eq!(d.by_broker[&0].len(), 1);
        let d = a.drain(t0, false, 600, leader, |_| true);
        assert_eq!(d.by_broker[&0].len(), 1);
        assert_eq!(d.by_broker[&1].len(), 1);
        let d = a.drain(t0, false, 600, leader, |_| true);
        assert_eq!(d.by_broker[&1].len(), 1);
        assert!(a.is_empty());
    }

    #[test]
    fn no_leader_backs_off_then_expires() {
        let mut a = acc(1 << 20, 0);
        let t0 = Instant::now();
        a.append("t", 0, rec(10).0, t0);
        let none = |_: &str, _: i32| None;
        let d = a.drain(t0, false, usize::MAX, none, |_| true);
        assert_eq!(d.no_leader, vec![("t".to_owned(), 0)]);
        assert!(d.expired.is_empty());
        // Within the backoff nothing is ready; the deadline is the backoff end.
        let d = a.drain(
            t0 + Duration::from_millis(50),
            false,
            usize::MAX,
            none,
            |_| true,
        );
        assert!(d.no_leader.is_empty());
        assert_eq!(
            a.next_deadline(t0, false),
            Some(t0 + Duration::from_millis(100))
        );
        let mut t = t0;
        let mut expired = 0;
        for _ in 0..3 {
            t += Duration::from_millis(100);
            expired += a.drain(t, false, usize::MAX, none, |_| true).expired.len();
        }
        assert_eq!(expired, 1, "fails after retries (2) + 1 attempts");
        assert!(a.is_empty());
    }

    #[test]
    fn requeued_batch_goes_first_after_backoff() {
        let mut a = acc(1 << 20, 0);
        let t0 = Instant::now();
        a.append("t", 0, rec(10).0, t0);
        let mut d = a.drain(t0, false, usize::MAX, leader_0, |_| true);
        let mut batch = d.by_broker.remove(&0).unwrap().remove(0);
        a.append("t", 0, rec(20).0, t0); // a newer batch behind it
        batch.attempts = 1;
        batch.retry_at = Some(t0 + Duration::from_millis(100));
        a.requeue(batch);
        let d = a.drain(
            t0 + Duration::from_millis(10),
            false,
            usize::MAX,
            leader_0,
            |_| true,
        );
        assert!(
            d.by_broker.is_empty(),
            "the retried batch blocks its partition during backoff"
        );
        let d = a.drain(
            t0 + Duration::from_millis(100),
            false,
            usize::MAX,
            leader_0,
            |_| true,
        );
        assert_eq!(d.by_broker[&0][0].attempts, 1);
    }

    #[test]
    fn complete_and_fail_resolve_deliveries() {
        let mut a = acc(1 << 20, 0);
        let t0 = Instant::now();
        let (r0, rx0) = rec(1);
        let (r1, rx1) = rec(1);
        a.append("t", 3, r0, t0);
        a.append("t", 3, r1, t0);
        let mut d = a.drain(t0, false, usize::MAX, leader_0, |_| true);
        let batch = d.by_broker.remove(&0).unwrap().remove(0);
        assert_eq!(batch.complete(41, -1), 2);
        assert_eq!(rx0.blocking_recv().unwrap().unwrap().offset, 41);
        let m1 = rx1.blocking_recv().unwrap().unwrap();
        assert_eq!((m1.partition, m1.offset), (3, 42));

        let (r2, rx2) = rec(1);
        a.append("t", 0, r2, t0);
        let mut d = a.drain(t0, false, usize::MAX, leader_0, |_| true);
        let batch = d.by_broker.remove(&0).unwrap().remove(0);
        batch.fail(&ClientError::kafka(10, "produce to t-0"));
        let err = rx2.blocking_recv().unwrap().unwrap_err();
        assert_eq!(err.kafka_code(), Some(10));
    }
}
