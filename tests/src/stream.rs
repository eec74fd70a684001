//! Streams for failover tests: a background producer that records what was acknowledged
//! ([`BackgroundProducer`]), and a final read of a topic ([`read_all`]) to check it against.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use keel_client::{
    Acks, Admin, ClientConfig, Consumer, ConsumerConfig, DeliveryFuture, Offset, Producer,
    ProducerConfig, ProducerRecord,
};

/// Bound of the final read.
const WAIT: Duration = Duration::from_secs(30);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The value of the `i`th record a [`BackgroundProducer`] sends.
pub fn value_of(i: usize) -> String {
    format!("v{i:06}")
}

/// What a producer run acknowledged and what failed.
#[derive(Default)]
pub struct ProduceLog {
    /// value → (partition, offset), acknowledged records only.
    pub acked: BTreeMap<String, (i32, i64)>,
    /// value → error, records whose delivery failed after retries.
    pub failed: BTreeMap<String, String>,
}

/// A background producer: sends values `v000000..` round-robin over `partitions`, in
/// chunks of 10 (so the stream spans the failover), with acks=all and enough retries to
/// move to a new leader. `limit`: stop after that many records (`None`: until `stop`).
pub struct BackgroundProducer {
    log: Arc<Mutex<ProduceLog>>,
    acks: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<usize, String>>,
}

impl BackgroundProducer {
    pub fn start(
        rt: &tokio::runtime::Runtime,
        bootstrap: &str,
        topic: &str,
        partitions: i32,
        limit: Option<usize>,
        signal_at: Option<(usize, mpsc::Sender<()>)>,
    ) -> BackgroundProducer {
        let all: Vec<i32> = (0..partitions).collect();
        Self::start_to(rt, bootstrap, topic, &all, limit, signal_at)
    }

    /// [`Self::start`] to one partition only, `limit` records.
    pub fn start_on(
        rt: &tokio::runtime::Runtime,
        bootstrap: &str,
        topic: &str,
        partition: i32,
        limit: Option<usize>,
    ) -> BackgroundProducer {
        Self::start_to(rt, bootstrap, topic, &[partition], limit, None)
    }

    /// Sends round-robin over `targets`.
    fn start_to(
        rt: &tokio::runtime::Runtime,
        bootstrap: &str,
        topic: &str,
        targets: &[i32],
        limit: Option<usize>,
        signal_at: Option<(usize, mpsc::Sender<()>)>,
    ) -> BackgroundProducer {
        let targets = targets.to_vec();
        let log = Arc::new(Mutex::new(ProduceLog::default()));
        let acks = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let client = ClientConfig::new(bootstrap);
        let config = ProducerConfig {
            acks: Acks::All,
            retries: 200,
            retry_backoff: Duration::from_millis(100),
            request_timeout: Duration::from_secs(15),
            ..ProducerConfig::default()
        };
        let topic = topic.to_string();
        let (log2, acks2, stop2) = (log.clone(), acks.clone(), stop.clone());
        let task = rt.spawn(async move {
            let producer = Producer::new(client, config)
                .await
                .map_err(|e| format!("producer: {e}"))?;
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, DeliveryFuture)>();
            // Awaits deliveries in send order and records each outcome.
            let log3 = log2.clone();
            let collector = tokio::spawn(async move {
                let mut signal_at = signal_at;
                while let Some((value, delivery)) = rx.recv().await {
                    let outcome = delivery.await;
                    let mut log = lock(&log3);
                    match outcome {
                        Ok(meta) => {
                            log.acked.insert(value, (meta.partition, meta.offset));
                            let n = acks2.fetch_add(1, Ordering::AcqRel) + 1;
                            if signal_at.as_ref().is_some_and(|(at, _)| n >= *at) {
                                if let Some((_, s)) = signal_at.take() {
                                    let _ = s.send(());
                                }
                            }
                        }
                        Err(e) => {
                            log.failed.insert(value, e.to_string());
                        }
                    }
                }
            });
            let mut sent = 0;
            // A bounded run sends all its records; an unbounded one sends until stopped.
            while match limit {
                Some(l) => sent < l,
                None => !stop2.load(Ordering::Acquire),
            } {
                let value = value_of(sent);
                let partition = targets[sent % targets.len()];
                let record = ProducerRecord::new(topic.clone(), value.clone()).partition(partition);
                match producer.send(record).await {
                    Ok(delivery) => {
                        let _ = tx.send((value, delivery));
                    }
                    Err(e) => {
                        lock(&log2).failed.insert(value, format!("send: {e}"));
                    }
                }
                sent += 1;
                if sent % 10 == 0 {
                    // Pacing, not correctness: spread the stream over a few seconds.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            drop(tx);
            // Failures are in the log; close's error is the first of them.
            let _ = producer.close().await;
            collector
                .await
                .map_err(|e| format!("collector panicked: {e}"))?;
            Ok(sent)
        });
        BackgroundProducer {
            log,
            acks,
            stop,
            task,
        }
    }

    pub fn acks(&self) -> usize {
        self.acks.load(Ordering::Acquire)
    }

    /// Stops sending (if unbounded) and waits until every delivery is resolved.
    pub fn finish(self, rt: &tokio::runtime::Runtime, timeout: Duration) -> (usize, ProduceLog) {
        self.stop.store(true, Ordering::Release);
        let sent = rt
            .block_on(async { tokio::time::timeout(timeout, self.task).await })
            .unwrap_or_else(|_| panic!("the producer did not finish within {timeout:?}"))
            .expect("producer task panicked")
            .unwrap_or_else(|e| panic!("{e}"));
        let log = std::mem::take(&mut *lock(&self.log));
        (sent, log)
    }
}

/// Reads every partition from the start up to `ends` (exclusive).
pub fn read_all(
    rt: &tokio::runtime::Runtime,
    bootstrap: &str,
    topic: &str,
    ends: &[i64],
) -> BTreeMap<(i32, i64), String> {
    let all: Vec<i32> = (0..ends.len() as i32).collect();
    read_partitions(rt, bootstrap, topic, &all, ends)
}

/// Reads partitions `all` from the start up to `ends[partition]` (exclusive).
pub fn read_partitions(
    rt: &tokio::runtime::Runtime,
    bootstrap: &str,
    topic: &str,
    all: &[i32],
    ends: &[i64],
) -> BTreeMap<(i32, i64), String> {
    let client = ClientConfig::new(bootstrap);
    rt.block_on(async {
        let mut consumer = Consumer::new(client, ConsumerConfig::default())
            .await
            .expect("consumer");
        consumer
            .assign(topic, all, Offset::Earliest)
            .await
            .expect("assign");
        let mut out = BTreeMap::new();
        let start = Instant::now();
        loop {
            let done = all
                .iter()
                .all(|&p| consumer.position(topic, p).unwrap_or(0) >= ends[p as usize]);
            if done {
                return out;
            }
            assert!(
                start.elapsed() < WAIT,
                "reading {topic} up to {ends:?} took more than {WAIT:?}; positions {:?}",
                all.iter()
                    .map(|&p| consumer.position(topic, p))
                    .collect::<Vec<_>>()
            );
            let records = tokio::time::timeout(Duration::from_secs(10), consumer.poll())
                .await
                .expect("poll took longer than 10 s")
                .unwrap_or_else(|e| panic!("final read of {topic}: {e}"));
            for r in records {
                let value =
                    String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned();
                out.insert((r.partition, r.offset), value);
            }
        }
    })
}

/// The HW (ListOffsets latest) of each partition.
pub fn high_watermarks(
    rt: &tokio::runtime::Runtime,
    bootstrap: &str,
    topic: &str,
    partitions: i32,
) -> Option<Vec<i64>> {
    let mut client = ClientConfig::new(bootstrap);
    client.request_timeout = Duration::from_secs(5);
    client.connect_timeout = Duration::from_secs(5);
    rt.block_on(async {
        let work = async {
            let admin = Admin::new(client).await.ok()?;
            let mut out = Vec::new();
            for p in 0..partitions {
                out.push(admin.list_offsets(topic, p, Offset::Latest).await.ok()?);
            }
            Some(out)
        };
        tokio::time::timeout(Duration::from_secs(15), work)
            .await
            .ok()
            .flatten()
    })
}
