//! The workload of a chaos run: producers writing unique values with acks=all, and
//! consumers reading every partition from the start for the whole run.
//!
//! Producers are the client's default, idempotent producer with unlimited retries: a batch is
//! re-sent until it is acknowledged, across leader failovers, and the broker must write it
//! once (the checker counts every value present twice). A value whose send fails for good
//! (the client gave up, which unlimited retries leave to the run's end) is indeterminate —
//! present at most once. Every value is sent once by the workload, so each stays traceable.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_client::{
    Acks, Admin, ClientConfig, Consumer, ConsumerConfig, DeliveryFuture, GroupConfig, Offset,
    Producer, ProducerConfig, ProducerRecord,
};

use super::checker::{Anomaly, Commits, Reads, Writes};

/// The group the workload's group consumer commits in.
pub const GROUP: &str = "chaos-group";

/// The Kafka error code OFFSET_OUT_OF_RANGE.
const OFFSET_OUT_OF_RANGE: i16 = 1;

/// How hard the workload pushes.
#[derive(Debug, Clone)]
pub struct WorkloadOpts {
    pub topic: String,
    pub partitions: i32,
    pub producers: usize,
    pub consumers: usize,
    /// Records per second per producer.
    pub rate: u32,
    /// Deliveries a producer awaits at most at once.
    pub in_flight: usize,
}

impl Default for WorkloadOpts {
    fn default() -> Self {
        WorkloadOpts {
            topic: "chaos".into(),
            partitions: 4,
            producers: 2,
            consumers: 1,
            rate: 400,
            in_flight: 200,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The running workload.
pub struct Workload {
    stop_producing: Arc<AtomicBool>,
    stop_consuming: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    consumed: Arc<AtomicU64>,
    producers: Vec<tokio::task::JoinHandle<Writes>>,
    consumers: Vec<tokio::task::JoinHandle<Reads>>,
    committer: Option<tokio::task::JoinHandle<Commits>>,
}

/// Counters of a running workload, for progress lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub acked: u64,
    pub failed: u64,
    pub consumed: u64,
}

impl Workload {
    /// Starts the producers and consumers on `rt`, bootstrapping from `bootstrap`.
    pub fn start(rt: &tokio::runtime::Runtime, bootstrap: &str, opts: &WorkloadOpts) -> Workload {
        let mut w = Workload {
            stop_producing: Arc::new(AtomicBool::new(false)),
            stop_consuming: Arc::new(AtomicBool::new(false)),
            acked: Arc::default(),
            failed: Arc::default(),
            consumed: Arc::default(),
            producers: Vec::new(),
            consumers: Vec::new(),
            committer: None,
        };
        for id in 0..opts.producers {
            let task = produce(
                id,
                bootstrap.to_string(),
                opts.clone(),
                w.stop_producing.clone(),
                w.acked.clone(),
                w.failed.clone(),
            );
            w.producers.push(rt.spawn(task));
        }
        for _ in 0..opts.consumers {
            let task = consume(
                bootstrap.to_string(),
                opts.clone(),
                w.stop_consuming.clone(),
                w.consumed.clone(),
            );
            w.consumers.push(rt.spawn(task));
        }
        let task = commit_as_group(
            bootstrap.to_string(),
            opts.clone(),
            w.stop_consuming.clone(),
        );
        w.committer = Some(rt.spawn(task));
        w
    }

    /// Stops the group consumer and returns its commits.
    pub fn stop_committer(&mut self, rt: &tokio::runtime::Runtime, timeout: Duration) -> Commits {
        self.stop_consuming.store(true, Ordering::Release);
        match self.committer.take() {
            Some(task) => rt
                .block_on(async { tokio::time::timeout(timeout, task).await })
                .unwrap_or_else(|_| panic!("the group consumer did not stop within {timeout:?}"))
                .expect("the group consumer task panicked"),
            None => Commits::default(),
        }
    }

    pub fn progress(&self) -> Progress {
        Progress {
            acked: self.acked.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            consumed: self.consumed.load(Ordering::Relaxed),
        }
    }

    /// Stops sending and waits (bounded by `timeout`) until every delivery is resolved.
    pub fn stop_producers(&mut self, rt: &tokio::runtime::Runtime, timeout: Duration) -> Writes {
        self.stop_producing.store(true, Ordering::Release);
        let mut all = Writes::default();
        for task in self.producers.drain(..) {
            let writes = rt
                .block_on(async { tokio::time::timeout(timeout, task).await })
                .unwrap_or_else(|_| panic!("a producer did not finish within {timeout:?}"))
                .expect("a producer task panicked");
            all.merge(writes);
        }
        all
    }

    /// Stops the consumers and returns what they saw.
    pub fn stop_consumers(&mut self, rt: &tokio::runtime::Runtime, timeout: Duration) -> Reads {
        self.stop_consuming.store(true, Ordering::Release);
        let mut all = Reads::default();
        for task in self.consumers.drain(..) {
            let reads = rt
                .block_on(async { tokio::time::timeout(timeout, task).await })
                .unwrap_or_else(|_| panic!("a consumer did not stop within {timeout:?}"))
                .expect("a consumer task panicked");
            all.merge(reads);
        }
        all
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop_producing.store(true, Ordering::Release);
        self.stop_consuming.store(true, Ordering::Release);
        for t in &self.producers {
            t.abort();
        }
        for t in &self.consumers {
            t.abort();
        }
        if let Some(t) = &self.committer {
            t.abort();
        }
    }
}

/// The value of producer `id`'s `seq`th record: unique over a run.
pub fn value_of(id: usize, seq: u64) -> String {
    format!("w{id}-{seq:09}")
}

fn client_config(bootstrap: &str, client_id: String) -> ClientConfig {
    let mut c = ClientConfig::new(bootstrap);
    c.client_id = client_id;
    c.connect_timeout = Duration::from_secs(3);
    c.request_timeout = Duration::from_secs(10);
    c.metadata_max_age = Duration::from_secs(2);
    c
}

/// One producer: paced sends round-robin over the partitions, deliveries awaited in order
/// by a collector task.
async fn produce(
    id: usize,
    bootstrap: String,
    opts: WorkloadOpts,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) -> Writes {
    let config = ProducerConfig {
        acks: Acks::All,
        enable_idempotence: true,
        retries: u32::MAX,
        retry_backoff: Duration::from_millis(100),
        request_timeout: Duration::from_secs(10),
        linger: Duration::from_millis(2),
        ..ProducerConfig::default()
    };
    let writes = Arc::new(Mutex::new(Writes::default()));
    let producer = loop {
        match Producer::new(
            client_config(&bootstrap, format!("chaos-producer-{id}")),
            config.clone(),
        )
        .await
        {
            Ok(p) => break p,
            Err(_) if !stop.load(Ordering::Acquire) => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(_) => return Writes::default(),
        }
    };
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<(String, DeliveryFuture)>(opts.in_flight.max(1));
    let collector = {
        let writes = writes.clone();
        let failed = failed.clone();
        tokio::spawn(async move {
            while let Some((value, delivery)) = rx.recv().await {
                match delivery.await {
                    Ok(meta) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                        lock(&writes)
                            .acked
                            .insert(value, (meta.partition, meta.offset));
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        lock(&writes).indeterminate.insert(value);
                    }
                }
            }
        })
    };
    // Ticks of 10 ms, each sending its share of the rate.
    let per_tick = (opts.rate / 100).max(1) as u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut seq = 0u64;
    while !stop.load(Ordering::Acquire) {
        tick.tick().await;
        for _ in 0..per_tick {
            let value = value_of(id, seq);
            let partition = (seq % opts.partitions as u64) as i32;
            seq += 1;
            let record =
                ProducerRecord::new(opts.topic.clone(), value.clone()).partition(partition);
            match producer.send(record).await {
                Ok(delivery) => {
                    if tx.send((value, delivery)).await.is_err() {
                        break;
                    }
                }
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    lock(&writes).indeterminate.insert(value);
                    // Back off: the cluster is changing under us.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = producer.close().await;
    let _ = collector.await;
    let out = std::mem::take(&mut *lock(&writes));
    out
}

/// One consumer: every partition from the start, until stopped. Records what it read and
/// the high watermarks it was shown, noting anomalies as they happen.
async fn consume(
    bootstrap: String,
    opts: WorkloadOpts,
    stop: Arc<AtomicBool>,
    consumed: Arc<AtomicU64>,
) -> Reads {
    let mut reads = Reads::default();
    let config = ConsumerConfig {
        max_wait: Duration::from_millis(200),
        ..ConsumerConfig::default()
    };
    let all: Vec<i32> = (0..opts.partitions).collect();
    let mut consumer = loop {
        if stop.load(Ordering::Acquire) {
            return reads;
        }
        let made = async {
            let mut c = Consumer::new(
                client_config(&bootstrap, "chaos-consumer".into()),
                config.clone(),
            )
            .await?;
            c.assign(&opts.topic, &all, Offset::At(0)).await?;
            Ok::<_, keel_client::ClientError>(c)
        };
        match made.await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let mut last: BTreeMap<i32, Option<i64>> = all.iter().map(|&p| (p, None)).collect();
    let mut last_hw: BTreeMap<i32, Option<i64>> = all.iter().map(|&p| (p, None)).collect();
    while !stop.load(Ordering::Acquire) {
        match tokio::time::timeout(Duration::from_secs(15), consumer.poll()).await {
            Ok(Ok(records)) => {
                for r in records {
                    let value = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default());
                    let slot = last.entry(r.partition).or_default();
                    reads.record(slot, r.partition, r.offset, &value);
                    consumed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Err(e)) => {
                if e.kafka_code() == Some(OFFSET_OUT_OF_RANGE) {
                    // Which partition: the one whose position the leader no longer has.
                    // Note every position, re-read from the earliest offset and go on.
                    for &p in &all {
                        let position = consumer.position(&opts.topic, p).unwrap_or(-1);
                        let gone = Anomaly::OutOfRange {
                            partition: p,
                            position,
                        };
                        if e.to_string().contains(&format!("{}-{p} ", opts.topic)) {
                            reads.anomalies.push(gone);
                            let _ = consumer.seek(&opts.topic, p, Offset::Earliest).await;
                            last.insert(p, None);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(_) => {}
        }
        for &p in &all {
            if let Some(hw) = consumer.high_watermark(&opts.topic, p) {
                let slot = last_hw.entry(p).or_default();
                reads.record_hw(slot, p, hw);
            }
        }
    }
    reads
}

/// A group consumer of the topic that commits its positions after every poll, noting each
/// acknowledged commit, while a watcher reads the group's committed offsets back every few
/// hundred milliseconds: an acknowledged commit must never be lost, and a committed offset
/// never go back (nothing resets them in a run).
async fn commit_as_group(bootstrap: String, opts: WorkloadOpts, stop: Arc<AtomicBool>) -> Commits {
    let commits = Arc::new(Mutex::new(Commits::default()));
    let watcher = {
        let commits = commits.clone();
        let stop = stop.clone();
        let bootstrap = bootstrap.clone();
        let topic = opts.topic.clone();
        tokio::spawn(async move {
            let mut last = BTreeMap::new();
            while !stop.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if let Some(seen) = group_offsets(&bootstrap, &topic).await {
                    lock(&commits).observe(&seen, &mut last);
                }
            }
        })
    };
    while !stop.load(Ordering::Acquire) {
        let config = ConsumerConfig {
            max_wait: Duration::from_millis(200),
            ..ConsumerConfig::default()
        };
        let made = async {
            let mut c = Consumer::new(
                client_config(&bootstrap, "chaos-group-member".into()),
                config,
            )
            .await?;
            let g = GroupConfig {
                auto_commit: false,
                auto_offset_reset: Offset::Earliest,
                session_timeout: Duration::from_secs(6),
                rebalance_timeout: Duration::from_secs(10),
                heartbeat_interval: Duration::from_millis(500),
                ..GroupConfig::new(GROUP)
            };
            c.subscribe(&[&opts.topic], g).await?;
            Ok::<_, keel_client::ClientError>(c)
        }
        .await;
        let Ok(mut c) = made else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while !stop.load(Ordering::Acquire) {
            if c.poll().await.is_err() {
                // Start over from the committed offsets with a new member.
                tokio::time::sleep(Duration::from_millis(200)).await;
                break;
            }
            let positions: Vec<(i32, i64)> = c
                .assignment()
                .into_iter()
                .filter_map(|(t, p)| c.position(&t, p).map(|o| (p, o)))
                .collect();
            if positions.is_empty() {
                continue;
            }
            if c.commit().await.is_ok() {
                let mut cm = lock(&commits);
                cm.acknowledged += 1;
                for (p, o) in positions {
                    let slot = cm.acked.entry(p).or_insert(o);
                    *slot = (*slot).max(o);
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), c.close()).await;
    }
    let _ = watcher.await;
    let out = std::mem::take(&mut *lock(&commits));
    out
}

/// The group's committed offsets of `topic`, read through any broker; `None` on an error.
pub async fn group_offsets(bootstrap: &str, topic: &str) -> Option<BTreeMap<i32, i64>> {
    let read = async {
        let admin = Admin::new(client_config(bootstrap, "chaos-group-watcher".into())).await?;
        admin.group_offsets(GROUP).await
    };
    match tokio::time::timeout(Duration::from_secs(5), read).await {
        Ok(Ok(all)) => Some(
            all.into_iter()
                .filter(|((t, _), _)| t == topic)
                .map(|((_, p), o)| (p, o))
                .collect(),
        ),
        _ => None,
    }
}
