//! The producer, shaped like the Java producer and librdkafka.
//!
//! `send` picks a partition (explicit, murmur2 of the key, or sticky), reserves buffer memory
//! (awaiting while `buffer_memory` bytes are queued or unacknowledged) and appends the record
//! to the [`Accumulator`]. One sender task drains ready batches, grouping the partitions led by
//! one broker into one Produce request, with up to `max_in_flight_per_broker` requests per
//! broker pipelined on its connection; each request runs in its own task and wakes the sender
//! when done. Retriable failures (NOT_LEADER_OR_FOLLOWER, LEADER_NOT_AVAILABLE, network errors,
//! timeouts, ...) trigger a metadata refresh and re-send the batch after `retry_backoff`, up to
//! `retries` times; other failures fail the batch's deliveries with the named error.
//!
//! Idempotent by default (`enable_idempotence`, with `acks = All`), as the Java client: the
//! producer gets an id and epoch with InitProducerId, numbers each partition's batches, and
//! keeps a batch's sequence through its retries, so the broker writes it once and in order —
//! also when a retry goes to a new leader after a failover. At most five batches of a
//! partition are out at once, all to one broker, and only one until the partition has
//! acknowledged a batch of this epoch (a partition takes any sequence from a producer it has
//! never seen, so a second batch could otherwise be written before a refused first). A
//! sequence error on a batch that was the first unsettled one of its partition when sent,
//! or UNKNOWN_PRODUCER_ID, means the broker lost the producer's state there: the producer
//! waits for its requests in flight, bumps its epoch (KIP-360) and numbers every unsettled
//! batch again from 0. Before the bump, every batch of another partition that was sent and
//! may be written is retried under the old epoch until it resolves: numbered again, the
//! broker could not recognise it as a retry and would write it twice. A sequence error on a
//! batch sent behind an unsettled one is only its echo and is retried. An older epoch
//! (another producer with this id took over) fails the batch. A batch that fails for good
//! leaves a hole in its partition's sequences, so it bumps the epoch too.
//!
//! Without idempotence a retry may duplicate a batch the broker did append before the failure
//! was seen, and with more than one request in flight a retried batch may land after a later
//! batch of the same partition. Use `max_in_flight_per_broker = 1` to keep per-partition order
//! across retries then.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::{
    InitProducerIdRequest, ProduceRequest, ProduceResponse, ProducerId, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tokio::sync::{oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::accumulator::{Accumulator, PendingRecord, ProducerBatch};
use crate::cluster::{Cluster, TopicMeta, LEADER_NOT_AVAILABLE, UNKNOWN_TOPIC_OR_PARTITION};
use crate::config::{Acks, ClientConfig, ProducerConfig};
use crate::error::ClientError;
use crate::partitioner::{partition_for_key, StickyPartitioner};
use crate::record::{ProducerRecord, RecordMetadata, BATCH_HEADER_BYTES};

/// Resolves when the record is acknowledged (or fails).
#[derive(Debug)]
pub struct DeliveryFuture {
    rx: oneshot::Receiver<Result<RecordMetadata, ClientError>>,
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ClientError::Closed)))
    }
}

/// An async Kafka producer. Cloning is cheap; clones share one sender.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
    /// When the last clone is dropped, the sender delivers what is queued and stops.
    _last_handle: Arc<StopOnDrop>,
}

struct StopOnDrop(Arc<Inner>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.closing.store(true, Ordering::Release);
        self.0.wake.notify_one();
    }
}

struct Inner {
    cluster: Arc<Cluster>,
    config: ProducerConfig,
    accumulator: Mutex<Accumulator>,
    partitioner: Mutex<StickyPartitioner>,
    /// Permits are bytes of `buffer_memory`.
    memory: Arc<Semaphore>,
    /// Per broker, permits are in-flight request slots.
    slots: Mutex<HashMap<i32, Arc<Semaphore>>>,
    requests_in_flight: AtomicUsize,
    /// Records sent but not yet delivered or failed.
    outstanding: watch::Sender<usize>,
    flushes: AtomicUsize,
    closing: AtomicBool,
    refresh_needed: AtomicBool,
    /// First delivery failure since the last flush, reported by `flush`.
    first_error: Mutex<Option<ClientError>>,
    wake: Notify,
    sender: Mutex<Option<JoinHandle<()>>>,
    /// With idempotence: the producer id and epoch (see the module doc).
    producer_id: Mutex<Option<(i64, i16)>>,
    /// A sequence error asked for an epoch bump, done once nothing is in flight.
    bump_needed: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Producer {
    /// Connects to the cluster and starts the sender task.
    pub async fn new(
        client: ClientConfig,
        config: ProducerConfig,
    ) -> Result<Producer, ClientError> {
        config.validate()?;
        let cluster = Cluster::connect(client).await?;
        let c = &config;
        let mut accumulator = Accumulator::new(c.batch_size, c.linger, c.retries, c.retry_backoff);
        let producer_id = if c.idempotent() {
            accumulator = accumulator.idempotent();
            Some(init_producer_id(&cluster, c, None).await?)
        } else {
            None
        };
        let inner = Arc::new(Inner {
            cluster,
            accumulator: Mutex::new(accumulator),
            partitioner: Mutex::new(StickyPartitioner::new()),
            memory: Arc::new(Semaphore::new(c.buffer_memory)),
            slots: Mutex::new(HashMap::new()),
            requests_in_flight: AtomicUsize::new(0),
            outstanding: watch::Sender::new(0),
            flushes: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            refresh_needed: AtomicBool::new(false),
            first_error: Mutex::new(None),
            wake: Notify::new(),
            sender: Mutex::new(None),
            producer_id: Mutex::new(producer_id),
            bump_needed: AtomicBool::new(false),
            config,
        });
        let handle = tokio::spawn(run_sender(Arc::clone(&inner)));
        *lock(&inner.sender) = Some(handle);
        Ok(Producer {
            _last_handle: Arc::new(StopOnDrop(Arc::clone(&inner))),
            inner,
        })
    }

    /// Enqueues a record. Awaits only to look up an unknown topic's metadata and while
    /// `buffer_memory` is exhausted (backpressure). The returned future resolves on delivery.
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture, ClientError> {
        let inner = &self.inner;
        if inner.closing.load(Ordering::Acquire) {
            return Err(ClientError::Closed);
        }
        let size = record.estimated_size();
        if size + BATCH_HEADER_BYTES > inner.config.max_request_size {
            return Err(ClientError::RecordTooLarge {
                size: size + BATCH_HEADER_BYTES,
                max: inner.config.max_request_size,
            });
        }
        let meta = inner.topic_for_send(&record.topic).await?;
        let partition = inner.choose_partition(&record, &meta)?;
        let reserve = size.min(inner.config.buffer_memory) as u32;
        let memory = Arc::clone(&inner.memory)
            .acquire_many_owned(reserve)
            .await
            .map_err(|_| ClientError::Closed)?;
        let (tx, rx) = oneshot::channel();
        let topic = record.topic.clone();
        let pending = PendingRecord {
            record: record.into_wire(0, now_ms()),
            size,
            delivery: tx,
            _memory: Some(memory),
        };
        inner.outstanding.send_modify(|n| *n += 1);
        let append = lock(&inner.accumulator).append(&topic, partition, pending, Instant::now());
        if append.new_batch || append.batch_full {
            inner.wake.notify_one();
        }
        Ok(DeliveryFuture { rx })
    }

    /// Sends everything queued now (ignoring linger) and waits until every record sent so far
    /// — and any sent concurrently — is delivered or failed.
    ///
    /// Returns the first delivery failure since the previous flush, if any; each failed
    /// record's own [`DeliveryFuture`] reports its failure too.
    pub async fn flush(&self) -> Result<(), ClientError> {
        struct Flushing<'a>(&'a Inner);
        impl Drop for Flushing<'_> {
            fn drop(&mut self) {
                self.0.flushes.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let inner = &*self.inner;
        inner.flushes.fetch_add(1, Ordering::AcqRel);
        let _flushing = Flushing(inner);
        inner.wake.notify_one();
        let mut outstanding = inner.outstanding.subscribe();
        outstanding
            .wait_for(|n| *n == 0)
            .await
            .map_err(|_| ClientError::Closed)?;
        match lock(&inner.first_error).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Flushes, then stops the sender. Other clones can no longer send.
    pub async fn close(self) -> Result<(), ClientError> {
        let flushed = self.flush().await;
        self.inner.closing.store(true, Ordering::Release);
        self.inner.wake.notify_one();
        let handle = lock(&self.inner.sender).take();
        if let Some(handle) = handle {
            let _ = handle.await;
        }
        flushed
    }
}

impl Inner {
    /// Metadata of a topic to send to; retries while the topic is being created.
    async fn topic_for_send(&self, topic: &str) -> Result<Arc<TopicMeta>, ClientError> {
        if let Some(meta) = self.cluster.topic(topic) {
            if meta.error == 0 && !meta.partitions.is_empty() {
                return Ok(meta);
            }
        }
        let mut attempt = 0;
        loop {
            let err = match self.cluster.topic_metadata(topic).await {
                Ok(meta) if !meta.partitions.is_empty() => return Ok(meta),
                Ok(_) => ClientError::kafka(LEADER_NOT_AVAILABLE, format!("topic {topic}")),
                Err(e) => e,
            };
            if !err.is_retriable() || attempt >= self.config.retries {
                return Err(err);
            }
            attempt += 1;
            debug!(topic, attempt, error = %err, "waiting for topic metadata");
            tokio::time::sleep(self.config.retry_backoff).await;
        }
    }

    fn choose_partition(
        &self,
        record: &ProducerRecord,
        meta: &TopicMeta,
    ) -> Result<i32, ClientError> {
        let partitions = meta.partitions.len() as i32;
        match (record.partition, &record.key) {
            (Some(p), _) if (0..partitions).contains(&p) => Ok(p),
            (Some(p), _) => Err(ClientError::kafka(
                UNKNOWN_TOPIC_OR_PARTITION,
                format!(
                    "topic {} has {partitions} partitions, not {p}",
                    record.topic
                ),
            )),
            (None, Some(key)) => Ok(partition_for_key(key, partitions)),
            (None, None) => {
                let available = meta.available();
                Ok(lock(&self.partitioner).partition(&record.topic, &available, partitions))
            }
        }
    }

    fn slots(&self, broker: i32) -> Arc<Semaphore> {
        let mut slots = lock(&self.slots);
        let per_broker = self.config.max_in_flight_per_broker;
        Arc::clone(
            slots
                .entry(broker)
                .or_insert_with(|| Arc::new(Semaphore::new(per_broker))),
        )
    }

    fn delivered(&self, n: usize) {
        self.outstanding.send_modify(|c| *c = c.saturating_sub(n));
    }

    fn finish_ok(&self, batch: ProducerBatch, base_offset: i64, log_append_time: i64) {
        lock(&self.accumulator).delivered(&batch);
        debug!(
            topic = batch.topic,
            partition = batch.partition,
            sequence = ?batch.sequence,
            producer = ?*lock(&self.producer_id),
            base_offset,
            "batch delivered"
        );
        let n = batch.complete(base_offset, log_append_time);
        self.delivered(n);
    }

    fn finish_failed(&self, batch: ProducerBatch, err: &ClientError) {
        lock(&self.accumulator).settled(&batch);
        if batch.sequence.is_some() {
            // Its sequence range is a hole now: later batches of the partition would be out of
            // order. A new epoch starts every partition's sequences afresh (as Java does).
            self.bump_needed.store(true, Ordering::Release);
        }
        warn!(topic = batch.topic, partition = batch.partition, error = %err, "batch failed");
        lock(&self.first_error).get_or_insert_with(|| err.clone());
        let n = batch.fail(err);
        self.delivered(n);
    }

    fn retry_or_fail(&self, batch: ProducerBatch, err: &ClientError) {
        self.retry_if(batch, err, err.is_retriable());
    }

    /// Retries `batch` after `err` if `retriable` and it has retries left; fails it otherwise.
    fn retry_if(&self, mut batch: ProducerBatch, err: &ClientError, retriable: bool) {
        if !retriable || batch.attempts >= self.config.retries {
            return self.finish_failed(batch, err);
        }
        batch.attempts += 1;
        batch.retry_at = Some(Instant::now() + self.config.retry_backoff);
        debug!(
            topic = batch.topic,
            partition = batch.partition,
            sequence = ?batch.sequence,
            producer = ?*lock(&self.producer_id),
            attempt = batch.attempts,
            error = %err,
            "retrying batch"
        );
        self.refresh_needed.store(true, Ordering::Release);
        lock(&self.accumulator).requeue(batch);
    }

    /// Moves the sticky partition of each topic whose batch was just drained.
    fn batches_completed(&self, batches: &[ProducerBatch]) {
        for b in batches.iter().filter(|b| b.attempts == 0) {
            if let Some(meta) = self.cluster.topic(&b.topic) {
                let n = meta.partitions.len() as i32;
                lock(&self.partitioner).batch_completed(
                    &b.topic,
                    b.partition,
                    &meta.available(),
                    n,
                );
            }
        }
    }
}

/// The sender loop: refresh metadata when asked, drain ready batches, start one request task
/// per broker, then sleep until woken or the next linger/backoff deadline.
async fn run_sender(inner: Arc<Inner>) {
    loop {
        if inner.bump_needed.load(Ordering::Acquire) {
            if inner.requests_in_flight.load(Ordering::Acquire) > 0 {
                // Woken when a request completes.
                inner.wake.notified().await;
                continue;
            }
            if !lock(&inner.accumulator).unresolved() {
                bump_epoch(&inner).await;
                continue;
            }
            // Batches that may already be written are retried under the current epoch
            // first; everything else waits for the bump.
            lock(&inner.accumulator).set_holding(true);
        }
        let topics = lock(&inner.accumulator).topics();
        let refresh = inner.refresh_needed.swap(false, Ordering::AcqRel)
            || (!topics.is_empty() && inner.cluster.is_stale());
        if refresh {
            if let Err(e) = inner.cluster.refresh(Some(&topics)).await {
                debug!(error = %e, "producer metadata refresh failed");
            }
        }
        let now = Instant::now();
        let closing = inner.closing.load(Ordering::Acquire);
        let flushing = closing || inner.flushes.load(Ordering::Acquire) > 0;
        let mut reserved: HashMap<i32, OwnedSemaphorePermit> = HashMap::new();
        let drain = lock(&inner.accumulator).drain(
            now,
            flushing,
            inner.config.max_request_size,
            |topic, partition| inner.cluster.leader(topic, partition),
            |broker| match inner.slots(broker).try_acquire_owned() {
                Ok(permit) => {
                    reserved.insert(broker, permit);
                    true
                }
                Err(_) => false,
            },
        );
        for batch in drain.expired {
            let err = ClientError::kafka(
                LEADER_NOT_AVAILABLE,
                format!("produce to {}-{}: no leader", batch.topic, batch.partition),
            );
            inner.finish_failed(batch, &err);
        }
        if !drain.no_leader.is_empty() {
            inner.refresh_needed.store(true, Ordering::Release);
        }
        let progressed = !drain.by_broker.is_empty() || !drain.no_leader.is_empty();
        for (broker, batches) in drain.by_broker {
            inner.batches_completed(&batches);
            let slot = reserved.remove(&broker);
            inner.requests_in_flight.fetch_add(1, Ordering::AcqRel);
            tokio::spawn(send_request(Arc::clone(&inner), broker, batches, slot));
        }
        if progressed {
            tokio::task::yield_now().await;
            continue;
        }
        let idle = lock(&inner.accumulator).is_empty()
            && inner.requests_in_flight.load(Ordering::Acquire) == 0;
        if closing && idle {
            debug!("producer sender stopped");
            return;
        }
        let deadline = lock(&inner.accumulator).next_deadline(now, flushing);
        let woken = inner.wake.notified();
        match deadline {
            Some(at) => {
                tokio::select! {
                    _ = woken => {}
                    _ = tokio::time::sleep_until(at.into()) => {}
                }
            }
            None => woken.await,
        }
    }
}

/// Sends one Produce request and settles each batch: delivered, re-queued or failed.
async fn send_request(
    inner: Arc<Inner>,
    broker: i32,
    batches: Vec<ProducerBatch>,
    slot: Option<OwnedSemaphorePermit>,
) {
    match produce(&inner, broker, &batches).await {
        Err(e) => {
            debug!(broker, error = %e, "produce request failed");
            for batch in batches {
                inner.retry_or_fail(batch, &e);
            }
        }
        Ok(None) => {
            for batch in batches {
                inner.finish_ok(batch, -1, -1);
            }
        }
        Ok(Some(resp)) => settle(&inner, batches, resp),
    }
    drop(slot);
    inner.requests_in_flight.fetch_sub(1, Ordering::AcqRel);
    inner.wake.notify_one();
}

/// Builds and sends the request; `None` means acks=0 (nothing to wait for).
async fn produce(
    inner: &Inner,
    broker: i32,
    batches: &[ProducerBatch],
) -> Result<Option<ProduceResponse>, ClientError> {
    let conn = inner.cluster.connection(broker).await?;
    let mut req = ProduceRequest::default();
    req.acks = inner.config.acks.as_i16();
    req.timeout_ms = inner
        .config
        .request_timeout
        .as_millis()
        .min(i32::MAX as u128) as i32;
    for batch in batches {
        let mut data = PartitionProduceData::default();
        data.index = batch.partition;
        let producer = *lock(&inner.producer_id);
        data.records = Some(batch.encode(inner.config.compression, producer)?);
        match req
            .topic_data
            .iter_mut()
            .find(|t| *t.name.0 == *batch.topic)
        {
            Some(t) => t.partition_data.push(data),
            None => {
                let mut t = TopicProduceData::default();
                t.name = TopicName(StrBytes::from_string(batch.topic.clone()));
                t.partition_data.push(data);
                req.topic_data.push(t);
            }
        }
    }
    debug!(
        broker,
        producer = ?*lock(&inner.producer_id),
        batches = ?batches
            .iter()
            .map(|b| (b.partition, b.sequence, b.records.len()))
            .collect::<Vec<_>>(),
        "sending produce request"
    );
    if inner.config.acks == Acks::None {
        conn.send_oneway(&req).await?;
        return Ok(None);
    }
    let resp = conn
        .send_with_timeout(&req, inner.config.request_timeout)
        .await?;
    Ok(Some(resp))
}

fn settle(inner: &Inner, batches: Vec<ProducerBatch>, resp: ProduceResponse) {
    let mut by_partition: HashMap<(String, i32), PartitionProduceResponse> = HashMap::new();
    for topic in resp.responses {
        for p in topic.partition_responses {
            by_partition.insert((topic.name.0.to_string(), p.index), p);
        }
    }
    for batch in batches {
        let context = format!("produce to {}-{}", batch.topic, batch.partition);
        match by_partition.remove(&(batch.topic.clone(), batch.partition)) {
            None => {
                let err = ClientError::protocol(context, "partition missing from produce response");
                inner.finish_failed(batch, &err);
            }
            Some(p) if p.error_code == 0 => {
                inner.finish_ok(batch, p.base_offset, p.log_append_time_ms)
            }
            // An old broker's answer to a retry it had written: delivered, offset unknown.
            Some(p) if p.error_code == ResponseError::DuplicateSequenceNumber.code() => {
                inner.finish_ok(batch, -1, p.log_append_time_ms)
            }
            Some(p) => {
                let message = p.error_message.as_deref();
                let err = ClientError::kafka_with_message(p.error_code, context, message);
                match sequence_error(p.error_code) {
                    Some(_) if !lock(&inner.accumulator).is_first_unsettled(&batch) => {
                        // The echo of an earlier batch's failure (that batch may still be
                        // written): retried after it, never numbered again before it resolves.
                        inner.retry_if(batch, &err, true)
                    }
                    Some(SequenceError::Gap | SequenceError::UnknownProducer) => {
                        warn!(topic = batch.topic, partition = batch.partition, error = %err, "producer state lost on the broker; bumping the epoch");
                        lock(&inner.accumulator).mark_lost(&batch);
                        inner.bump_needed.store(true, Ordering::Release);
                        inner.retry_if(batch, &err, true)
                    }
                    None => inner.retry_or_fail(batch, &err),
                }
            }
        }
    }
}

/// The errors that tell an idempotent producer its sequence numbers no longer match the
/// broker's state for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SequenceError {
    /// OUT_OF_ORDER_SEQUENCE_NUMBER.
    Gap,
    /// UNKNOWN_PRODUCER_ID.
    UnknownProducer,
}

fn sequence_error(code: i16) -> Option<SequenceError> {
    if code == ResponseError::OutOfOrderSequenceNumber.code() {
        Some(SequenceError::Gap)
    } else if code == ResponseError::UnknownProducerId.code() {
        Some(SequenceError::UnknownProducer)
    } else {
        None
    }
}

/// A producer id and epoch from any broker (InitProducerId). With `current`, asks for that
/// id's next epoch (KIP-360, v3+); a broker may answer with a new id instead. Retries
/// retriable errors up to `retries` times.
async fn init_producer_id(
    cluster: &Cluster,
    config: &ProducerConfig,
    current: Option<(i64, i16)>,
) -> Result<(i64, i16), ClientError> {
    let mut attempt = 0;
    loop {
        let answer = async {
            let conn = cluster.any_connection().await?;
            let version = conn.version::<InitProducerIdRequest>().map_err(|_| {
                ClientError::Config(
                    "the broker does not support idempotent producers (no InitProducerId); \
                     set enable_idempotence = false"
                        .into(),
                )
            })?;
            let mut req = InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(-1)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1);
            if let (Some((id, epoch)), true) = (current, version >= 3) {
                req = req
                    .with_producer_id(ProducerId(id))
                    .with_producer_epoch(epoch);
            }
            let resp = conn.send(&req).await?;
            if resp.error_code != 0 {
                return Err(ClientError::kafka(resp.error_code, "init producer id"));
            }
            Ok((resp.producer_id.0, resp.producer_epoch))
        };
        match answer.await {
            Ok(ids) => {
                debug!(producer_id = ids.0, epoch = ids.1, "producer id");
                return Ok(ids);
            }
            Err(e) if e.is_retriable() && attempt < config.retries.max(5) => {
                attempt += 1;
                debug!(attempt, error = %e, "init producer id retry");
                tokio::time::sleep(config.retry_backoff).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// KIP-360's recovery, with nothing in flight: the next epoch for this producer id, and every
/// unsettled batch numbered again from 0. If it fails, the queued batches fail with it.
async fn bump_epoch(inner: &Inner) {
    let current = *lock(&inner.producer_id);
    match init_producer_id(&inner.cluster, &inner.config, current).await {
        Ok(ids) => {
            warn!(producer_id = ids.0, epoch = ids.1, "producer epoch bumped");
            *lock(&inner.producer_id) = Some(ids);
            lock(&inner.accumulator).reset_sequences();
        }
        Err(e) => {
            warn!(error = %e, "producer epoch bump failed");
            lock(&inner.first_error).get_or_insert_with(|| e.clone());
            lock(&inner.accumulator).set_holding(false);
        }
    }
    inner.bump_needed.store(false, Ordering::Release);
    inner.wake.notify_one();
}
