//! `keel bench produce|consume`: a load generator that reports throughput and,
//! for produce, per-record acknowledgement latency.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use clap::{Args, Subcommand};
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use keel_client::{
    Admin, Consumer, ConsumerConfig, DeliveryFuture, GroupConfig, Offset, Producer, ProducerConfig,
    ProducerRecord, TopicSpec,
};
use rand::RngCore as _;
use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};

use crate::args::{parse_acks, AcksArg, Bootstrap, CompressionArg, ConnArgs};
use crate::connect;
use crate::histogram::LatencyHistogram;

#[derive(Debug, Clone, Subcommand)]
pub enum BenchCommand {
    /// Send --records records of --record-size random bytes and report
    /// records/s, MB/s (10^6 payload bytes) and ack latency percentiles.
    ///
    /// The topic is created if absent. Latency is measured per record, from
    /// send() to its acknowledgement. The run stops at --records or
    /// --duration-s, whichever comes first.
    Produce(BenchProduceArgs),
    /// Read --records records from the beginning of every partition and report
    /// records/s, MB/s and the time to the first record.
    ///
    /// Fill the topic first with `keel bench produce`. The run also stops at
    /// --duration-s, or when no record arrives for 10 s (the topic is drained).
    Consume(BenchConsumeArgs),
    /// Commit a group's offsets as fast as the coordinator takes them: OffsetCommit/s,
    /// each with one offset per partition of --topic (simple commits, no members).
    Commit(super::bench_group::BenchCommitArgs),
    /// Time a group of --members consumers: forming, and the rebalance after one member
    /// leaves and after one joins.
    Group(super::bench_group::BenchGroupArgs),
    /// Create and delete --topics one-partition topics one after another: metadata
    /// operations per second through the active controller.
    Metadata(super::bench_quorum::BenchMetadataArgs),
    /// Kill the active controller (or, with --broker, another node) of a `keel cluster
    /// start` cluster --kills times and time the new active controller and new leaders.
    Failover(super::bench_quorum::BenchFailoverArgs),
}

impl BenchCommand {
    /// The brokers the benchmark talks to (`None`: it finds them in a cluster directory).
    pub fn bootstrap(&self) -> Option<&Bootstrap> {
        match self {
            BenchCommand::Produce(a) => Some(&a.run.conn.bootstrap_server),
            BenchCommand::Consume(a) => Some(&a.run.conn.bootstrap_server),
            BenchCommand::Commit(a) => Some(&a.conn.bootstrap_server),
            BenchCommand::Group(a) => Some(&a.conn.bootstrap_server),
            BenchCommand::Metadata(a) => Some(&a.conn.bootstrap_server),
            BenchCommand::Failover(_) => None,
        }
    }
}

/// Flags both benchmarks share.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Topic to use.
    #[arg(long, default_value = "keel-bench")]
    pub topic: String,
    /// Records to send or read.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Stop after this many seconds even if --records is not reached.
    #[arg(long = "duration-s", value_name = "SECONDS", default_value_t = 120)]
    pub duration_s: u64,
    /// Print one JSON object with the results on stdout, and no progress bar.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Clone, Args)]
pub struct BenchProduceArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Value size of each record, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 1024)]
    pub record_size: usize,
    /// Partitions, if the topic has to be created.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: i32,
    /// Replication factor, if the topic has to be created [default: the brokers'
    /// default.replication.factor].
    #[arg(long, value_parser = clap::value_parser!(i16).range(1..))]
    pub replication_factor: Option<i16>,
    /// Acknowledgement required per batch: 0, 1 or all.
    #[arg(long, default_value = "all", value_name = "0|1|all", value_parser = parse_acks)]
    pub acks: AcksArg,
    /// How long the producer waits to fill a batch.
    #[arg(long, value_name = "MS", default_value_t = 5)]
    pub linger_ms: u64,
    /// Largest record batch per partition, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 1024 * 1024)]
    pub batch_size: usize,
    /// Unacknowledged produce requests per connection [default: the client's].
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<usize>,
    /// Produce without a producer id, to compare with the idempotent default.
    #[arg(long)]
    pub no_idempotence: bool,
    /// Compression codec (the payload is random, so this measures codec cost).
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    pub compression: CompressionArg,
    /// Send at this many records per second instead of as fast as possible. Record i is
    /// due at start + i/RATE and its latency is measured from that time (or from when it
    /// was sent, if that was earlier: records go out up to one 1 ms timer tick early), so a
    /// stall that delays later sends shows up in their latency (no coordinated omission).
    #[arg(long, value_name = "RECORDS_PER_SEC", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Write the ack latency over time to FILE: one CSV row per 100 ms of send (or due)
    /// time with the records sent in it and their largest latency, to place stalls.
    #[arg(long, value_name = "FILE")]
    pub timeline: Option<std::path::PathBuf>,
    /// Leave the records sent (or due) in the first SECONDS out of the latency percentiles:
    /// they include connecting and the first metadata lookups. They still count toward
    /// records/s.
    #[arg(long = "warmup-s", value_name = "SECONDS", default_value_t = 0)]
    pub warmup_s: u64,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "{s:?} is not a positive number of records per second"
        )),
    }
}

#[derive(Debug, Clone, Args)]
pub struct BenchConsumeArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Read as the only member of this consumer group (from its committed offsets, else
    /// the start) instead of assigning every partition.
    #[arg(long, value_name = "G")]
    pub group: Option<String>,
    /// Largest fetch answer, over all its partitions (fetch.max.bytes) [default: the
    /// client's, 50 MiB].
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(i32).range(1..))]
    pub fetch_max_bytes: Option<i32>,
    /// Largest fetch answer per partition (max.partition.fetch.bytes) [default: the
    /// client's, 1 MiB].
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(i32).range(1..))]
    pub partition_max_bytes: Option<i32>,
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Produce(args) => produce(args).await,
        BenchCommand::Consume(args) => consume(args).await,
        BenchCommand::Commit(args) => super::bench_group::commit(args).await,
        BenchCommand::Group(args) => super::bench_group::group(args).await,
        BenchCommand::Metadata(args) => super::bench_quorum::metadata(args).await,
        BenchCommand::Failover(args) => super::bench_quorum::failover(args).await,
    }
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    Records,
    Duration,
    Idle,
    Error,
}

impl Stop {
    pub fn as_str(self) -> &'static str {
        match self {
            Stop::Records => "records",
            Stop::Duration => "duration",
            Stop::Idle => "idle",
            Stop::Error => "error",
        }
    }
}

/// Random payloads, generated once; record `i` gets a zero-copy slice. The
/// pool is larger than any compression window or batch, so no codec finds
/// repeats between records.
pub struct Payloads {
    pool: Bytes,
    size: usize,
    count: usize,
}

impl Payloads {
    const POOL_BYTES: usize = 16 << 20;

    pub fn new(size: usize, records: u64) -> Self {
        let count = (Self::POOL_BYTES / size.max(1))
            .min(usize::try_from(records).unwrap_or(usize::MAX))
            .max(1);
        let mut pool = vec![0u8; size * count];
        rand::thread_rng().fill_bytes(&mut pool);
        Self {
            pool: Bytes::from(pool),
            size,
            count,
        }
    }

    pub fn get(&self, i: u64) -> Bytes {
        let slot = usize::try_from(i % self.count as u64).unwrap_or(0);
        self.pool.slice(slot * self.size..(slot + 1) * self.size)
    }
}

#[derive(Debug, Serialize)]
pub struct ProduceReport {
    pub mode: &'static str,
    pub topic: String,
    pub records: u64,
    pub failed: u64,
    pub record_size: usize,
    pub acks: String,
    /// The --rate asked for, if any.
    pub target_records_per_sec: Option<f64>,
    /// Records sent in this first part of the run are not in the latency percentiles.
    pub warmup_s: u64,
    pub seconds: f64,
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_p999_ms: f64,
    pub latency_max_ms: f64,
    pub stopped_by: Stop,
}

#[derive(Debug, Serialize)]
pub struct ConsumeReport {
    pub mode: &'static str,
    pub topic: String,
    pub records: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    pub first_record_ms: f64,
    pub stopped_by: Stop,
}

/// Records and 10^6-byte megabytes per second; zero for an empty interval.
pub fn rates(records: u64, bytes: u64, seconds: f64) -> (f64, f64) {
    if seconds <= 0.0 {
        return (0.0, 0.0);
    }
    (records as f64 / seconds, bytes as f64 / 1e6 / seconds)
}

/// The runtime's timer resolution: a sleep ends on the first tick at or after its deadline.
const TIMER_TICK: Duration = Duration::from_millis(1);

/// Paced sending: when to wake for a record due at `due`, or `None` to send it now. The
/// wake is one tick early: a timer fires up to a tick late, and that lateness belongs to
/// this load generator, not to the broker under test.
fn pacing_wake(due: Instant, now: Instant) -> Option<Instant> {
    let wake = due.checked_sub(TIMER_TICK)?;
    (wake > now).then_some(wake)
}

/// Where a paced record's latency starts: the earlier of when it was due and when it was
/// sent. A record sent late (a stall in the generator or the client) is charged from its
/// due time, so stalls are not hidden (no coordinated omission); one sent early (up to a
/// tick, see [`pacing_wake`]) from its actual send time, so nothing is understated.
fn latency_origin(due: Instant, sent: Instant) -> Instant {
    due.min(sent)
}

/// Deliveries still outstanding when the run stops get this long to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes of records sent but not yet acknowledged before sending pauses.
const MAX_UNACKED_BYTES: usize = 256 << 20;
/// Bytes beyond the value that one record adds to a request: batch header,
/// record framing, topic and partition headers. Generous on purpose.
const RECORD_OVERHEAD: usize = 1024;
/// `bench consume` stops when the topic yields nothing for this long.
const CONSUME_IDLE: Duration = Duration::from_secs(10);
/// How long `bench consume --group` waits for its first records.
const GROUP_FORM_IDLE: Duration = Duration::from_secs(60);

async fn produce(args: BenchProduceArgs) -> anyhow::Result<()> {
    let run = &args.run;
    let admin = connect::admin(&run.conn.bootstrap_server).await?;
    ensure_topic(&admin, &args).await?;

    let producer_config = producer_config(&args);
    let config = connect::client_config(&run.conn.bootstrap_server);
    let producer = Producer::new(config, producer_config)
        .await
        .context("cannot create a producer")?;
    let payloads = Payloads::new(args.record_size, run.records);
    let progress = progress_bar(run.records, run.json, "sent and acknowledged");

    let window = Arc::new(Semaphore::new(
        (MAX_UNACKED_BYTES / args.record_size.max(1)).clamp(1024, 256 * 1024),
    ));
    let (tx, rx) = mpsc::channel::<(Instant, DeliveryFuture)>(4096);
    let start = Instant::now();
    let wall_start = std::time::SystemTime::now();
    let measured_from = start + Duration::from_secs(args.warmup_s);
    let collector = tokio::spawn(collect(
        rx,
        progress.clone(),
        Arc::clone(&window),
        start,
        measured_from,
    ));

    let deadline = start + Duration::from_secs(run.duration_s);
    let mut sent = 0u64;
    let mut send_error = None;
    let send_all = async {
        let tx = tx; // dropped when sending stops, which ends the collector
        while sent < run.records {
            let Ok(permit) = window.acquire().await else {
                break;
            };
            permit.forget(); // given back by the collector on acknowledgement
            let record = ProducerRecord {
                topic: run.topic.clone(),
                value: Some(payloads.get(sent)),
                ..ProducerRecord::default()
            };
            let sent_at = match args.rate {
                Some(rate) => {
                    let due = start + Duration::from_secs_f64(sent as f64 / rate);
                    // Behind schedule (or within a timer tick of it): send at once (a
                    // timer, even an expired one, costs a trip through the timer wheel).
                    if let Some(wake) = pacing_wake(due, Instant::now()) {
                        tokio::time::sleep_until(wake.into()).await;
                    }
                    latency_origin(due, Instant::now())
                }
                None => Instant::now(),
            };
            match producer.send(record).await {
                Ok(delivery) => {
                    if tx.send((sent_at, delivery)).await.is_err() {
                        break;
                    }
                }
                Err(err) => {
                    send_error = Some(err);
                    break;
                }
            }
            sent += 1;
        }
    };
    let mut stopped = tokio::select! {
        () = send_all => Stop::Records,
        () = tokio::time::sleep_until(deadline.into()) => Stop::Duration,
    };
    if send_error.is_some() {
        stopped = Stop::Error;
    }

    let drain = async {
        let flushed = producer.flush().await;
        (flushed, collector.await)
    };
    let (flushed, collected) = tokio::time::timeout(DRAIN_TIMEOUT, drain)
        .await
        .map_err(|_| {
            anyhow!(
                "acknowledgements still outstanding {}s after the run stopped",
                DRAIN_TIMEOUT.as_secs()
            )
        })?;
    let seconds = start.elapsed().as_secs_f64();
    progress.finish_and_clear();
    let mut collected = collected.context("the acknowledgement task failed")?;
    if let Some(path) = &args.timeline {
        write_timeline(path, wall_start, &collected.timeline)?;
    }

    let (records_per_sec, mb_per_sec) = rates(
        collected.delivered,
        collected.delivered * args.record_size as u64,
        seconds,
    );
    let latency = collected.latencies.summary();
    let report = ProduceReport {
        mode: "produce",
        topic: run.topic.clone(),
        records: collected.delivered,
        failed: collected.failed,
        record_size: args.record_size,
        acks: args.acks.to_string(),
        target_records_per_sec: args.rate,
        warmup_s: args.warmup_s,
        seconds,
        records_per_sec,
        mb_per_sec,
        latency_p50_ms: latency.p50_ms,
        latency_p99_ms: latency.p99_ms,
        latency_p999_ms: latency.p999_ms,
        latency_max_ms: latency.max_ms,
        stopped_by: stopped,
    };
    if run.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", render_produce(&report));
    }

    if let Some(err) = send_error {
        return Err(anyhow::Error::new(err))
            .with_context(|| format!("send failed after {sent} records"));
    }
    flushed.context("cannot flush the producer")?;
    if let Some(first) = collected.first_error {
        bail!(
            "{} of {sent} records were not acknowledged; first error: {first}",
            collected.failed
        );
    }
    Ok(())
}

/// The producer settings the flags ask for. Requests and the buffer grow to fit
/// a --batch-size or --record-size beyond the client's defaults.
fn producer_config(args: &BenchProduceArgs) -> ProducerConfig {
    let defaults = ProducerConfig::default();
    let max_request_size = defaults
        .max_request_size
        .max(args.batch_size)
        .max(args.record_size.saturating_add(RECORD_OVERHEAD));
    ProducerConfig {
        acks: args.acks.to_client(),
        linger: Duration::from_millis(args.linger_ms),
        batch_size: args.batch_size,
        compression: args.compression.to_client(),
        max_in_flight_per_broker: args
            .max_in_flight
            .unwrap_or(defaults.max_in_flight_per_broker),
        max_request_size,
        buffer_memory: defaults
            .buffer_memory
            .max(max_request_size.saturating_mul(2)),
        enable_idempotence: !args.no_idempotence,
        ..defaults
    }
}

/// Creates the bench topic unless it exists; another process winning the race is fine.
async fn ensure_topic(admin: &Admin, args: &BenchProduceArgs) -> anyhow::Result<()> {
    let topic = &args.run.topic;
    let exists = |topics: &[String]| topics.iter().any(|t| t == topic);
    if exists(&admin.list_topics().await.context("cannot list topics")?) {
        return Ok(());
    }
    let spec = TopicSpec {
        name: topic.clone(),
        partitions: args.partitions,
        replication_factor: args.replication_factor.unwrap_or(-1),
        configs: Vec::new(),
    };
    if let Err(err) = admin.create_topics(&[spec]).await {
        if !exists(&admin.list_topics().await.context("cannot list topics")?) {
            return Err(anyhow::Error::new(err))
                .with_context(|| format!("cannot create topic '{topic}'"));
        }
    } else if !args.run.json {
        let rf = args
            .replication_factor
            .map_or_else(|| "broker default".to_string(), |rf| rf.to_string());
        eprintln!(
            "created topic {topic} (partitions={}, replication-factor={rf})",
            args.partitions
        );
    }
    Ok(())
}

struct Collected {
    latencies: LatencyHistogram,
    /// Per 100 ms window of send time: (records, largest latency).
    timeline: Vec<(u64, Duration)>,
    delivered: u64,
    failed: u64,
    first_error: Option<String>,
}

impl Collected {
    fn record(
        &mut self,
        window: usize,
        measured: bool,
        latency: Duration,
        result: <DeliveryFuture as Future>::Output,
    ) {
        match result {
            Ok(_metadata) => {
                self.delivered += 1;
                if measured {
                    self.latencies.record(latency);
                }
                if self.timeline.len() <= window {
                    self.timeline.resize(window + 1, (0, Duration::ZERO));
                }
                let w = &mut self.timeline[window];
                w.0 += 1;
                w.1 = w.1.max(latency);
            }
            Err(err) => {
                self.failed += 1;
                self.first_error.get_or_insert_with(|| err.to_string());
            }
        }
    }
}

/// Times every delivery as it completes, in whatever order that happens.
async fn collect(
    mut rx: mpsc::Receiver<(Instant, DeliveryFuture)>,
    progress: ProgressBar,
    window: Arc<Semaphore>,
    start: Instant,
    measured_from: Instant,
) -> Collected {
    let mut collected = Collected {
        latencies: LatencyHistogram::default(),
        timeline: Vec::new(),
        delivered: 0,
        failed: 0,
        first_error: None,
    };
    let mut pending = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            Some((slot, measured, latency, result)) = pending.next(), if !pending.is_empty() => {
                window.add_permits(1);
                progress.inc(1);
                collected.record(slot, measured, latency, result);
            }
            next = rx.recv(), if open => match next {
                Some((sent_at, delivery)) => pending.push(async move {
                    let slot = (sent_at.saturating_duration_since(start).as_millis() / 100) as usize;
                    let measured = sent_at >= measured_from;
                    let result = delivery.await;
                    (slot, measured, sent_at.elapsed(), result)
                }),
                None => open = false,
            },
            else => break,
        }
    }
    collected
}

/// `--timeline`: CSV of (window start in seconds since the run started and in Unix time
/// milliseconds, to match broker logs; records; largest latency in ms).
fn write_timeline(
    path: &std::path::Path,
    wall_start: std::time::SystemTime,
    timeline: &[(u64, Duration)],
) -> anyhow::Result<()> {
    let start_ms = wall_start
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut out = String::from("second,unix_ms,records,max_latency_ms\n");
    for (i, (records, max)) in timeline.iter().enumerate() {
        out.push_str(&format!(
            "{:.1},{},{records},{:.3}\n",
            i as f64 / 10.0,
            start_ms + i as u128 * 100,
            max.as_secs_f64() * 1000.0
        ));
    }
    std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))
}

async fn consume(args: BenchConsumeArgs) -> anyhow::Result<()> {
    let run = &args.run;
    let admin = connect::admin(&run.conn.bootstrap_server).await?;
    let topics = admin.list_topics().await.context("cannot list topics")?;
    if !topics.iter().any(|t| t == &run.topic) {
        bail!(
            "unknown topic '{0}' — fill it first with `keel bench produce --topic {0}`",
            run.topic
        );
    }
    let config = connect::client_config(&run.conn.bootstrap_server);
    let mut consumer_config = ConsumerConfig::default();
    if let Some(max) = args.fetch_max_bytes {
        consumer_config.max_bytes = max;
    }
    if let Some(max) = args.partition_max_bytes {
        consumer_config.max_partition_bytes = max;
    }
    let mut consumer = Consumer::new(config, consumer_config)
        .await
        .context("cannot create a consumer")?;
    let progress = progress_bar(run.records, run.json, "read");

    let start = Instant::now();
    let deadline = start + Duration::from_secs(run.duration_s);
    match &args.group {
        Some(g) => {
            let mut config = GroupConfig::new(g.clone());
            config.auto_offset_reset = Offset::Earliest;
            consumer.subscribe(&[&run.topic], config).await
        }
        None => consumer
            .assign_all(&run.topic, Offset::Earliest)
            .await
            .map(drop),
    }
    .with_context(|| format!("cannot read topic '{}'", run.topic))?;
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut first_record = None;
    let mut last_record = start;
    let stopped = loop {
        if records >= run.records {
            break Stop::Records;
        }
        // Through a group, the first records wait for the group to form (brokers take up to
        // their initial rebalance delay and more); after that the usual idle limit holds.
        let idle = if first_record.is_none() && args.group.is_some() {
            GROUP_FORM_IDLE
        } else {
            CONSUME_IDLE
        };
        let idle_at = last_record.max(start) + idle;
        let until = deadline.min(idle_at);
        let batch = match tokio::time::timeout_at(until.into(), consumer.poll()).await {
            Ok(result) => result.with_context(|| format!("cannot read topic '{}'", run.topic))?,
            Err(_) if until == deadline => break Stop::Duration,
            Err(_) => break Stop::Idle,
        };
        if batch.is_empty() {
            continue;
        }
        let now = Instant::now();
        first_record.get_or_insert(now);
        last_record = now;
        for record in batch.iter().take((run.records - records) as usize) {
            records += 1;
            bytes += (record.key.as_ref().map_or(0, Bytes::len)
                + record.value.as_ref().map_or(0, Bytes::len)) as u64;
        }
        progress.set_position(records);
    };
    progress.finish_and_clear();

    let Some(first_record) = first_record else {
        bail!(
            "no records arrived from topic '{}' — fill it first with `keel bench produce --topic {}`",
            run.topic,
            run.topic
        );
    };
    if stopped == Stop::Idle && !run.json {
        eprintln!(
            "the topic ran out after {records} records ({} were asked for)",
            run.records
        );
    }
    let seconds = (last_record - start).as_secs_f64();
    let (records_per_sec, mb_per_sec) = rates(records, bytes, seconds);
    let report = ConsumeReport {
        mode: "consume",
        topic: run.topic.clone(),
        records,
        bytes,
        seconds,
        records_per_sec,
        mb_per_sec,
        first_record_ms: (first_record - start).as_secs_f64() * 1000.0,
        stopped_by: stopped,
    };
    if run.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", render_consume(&report));
    }
    Ok(())
}

/// A records progress bar on stderr; hidden for --json (and by indicatif when
/// stderr is not a terminal).
fn progress_bar(records: u64, json: bool, what: &str) -> ProgressBar {
    if json {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(records), ProgressDrawTarget::stderr());
    let template = format!(
        "{{elapsed_precise}} [{{bar:40}}] {{human_pos}}/{{human_len}} {what} ({{per_sec}}, eta {{eta}})"
    );
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn render_produce(r: &ProduceReport) -> String {
    let mut out = format!(
        "produced {} records of {} bytes to {} (acks={}, stopped by {})\n",
        r.records,
        r.record_size,
        r.topic,
        r.acks,
        r.stopped_by.as_str()
    );
    if r.failed > 0 {
        out.push_str(&format!("  failed       {}\n", r.failed));
    }
    if let Some(rate) = r.target_records_per_sec {
        out.push_str(&format!("  target/s     {rate:.0}\n"));
    }
    if r.warmup_s > 0 {
        out.push_str(&format!(
            "  warm-up      first {} s left out of the latencies\n",
            r.warmup_s
        ));
    }
    out.push_str(&format!(
        "  seconds      {:.3}\n  records/s    {:.0}\n  MB/s         {:.2}\n",
        r.seconds, r.records_per_sec, r.mb_per_sec
    ));
    out.push_str(&format!(
        "  latency ms   p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}\n",
        r.latency_p50_ms, r.latency_p99_ms, r.latency_p999_ms, r.latency_max_ms
    ));
    out
}

fn render_consume(r: &ConsumeReport) -> String {
    format!(
        "consumed {} records ({} bytes) from {}\n  seconds      {:.3}\n  records/s    {:.0}\n  \
         MB/s         {:.2}\n  first record {:.1} ms\n",
        r.records, r.bytes, r.topic, r.seconds, r.records_per_sec, r.mb_per_sec, r.first_record_ms
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(argv: &[&str]) -> BenchCommand {
        match crate::Cli::try_parse_from(argv).unwrap().command {
            crate::Command::Bench(c) => c,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn produce_defaults() {
        let BenchCommand::Produce(a) = parse(&["keel", "bench", "produce"]) else {
            panic!()
        };
        assert_eq!(a.run.topic, "keel-bench");
        assert_eq!(a.run.records, 1_000_000);
        assert_eq!(a.run.duration_s, 120);
        assert!(!a.run.json);
        assert_eq!(a.record_size, 1024);
        assert_eq!((a.partitions, a.replication_factor), (1, None));
        assert_eq!(a.acks, AcksArg::All);
        assert_eq!(a.linger_ms, 5);
        assert_eq!(a.batch_size, 1 << 20);
        assert_eq!(a.max_in_flight, None);
        assert_eq!(a.compression, CompressionArg::None);
        assert_eq!((a.warmup_s, a.timeline.is_none()), (0, true));
    }

    #[test]
    fn produce_flags() {
        let BenchCommand::Produce(a) = parse(&[
            "keel",
            "bench",
            "produce",
            "--topic",
            "b",
            "--records",
            "5000",
            "--record-size",
            "100",
            "--partitions",
            "4",
            "--replication-factor",
            "3",
            "--acks",
            "0",
            "--linger-ms",
            "0",
            "--batch-size",
            "16384",
            "--max-in-flight",
            "1",
            "--duration-s",
            "10",
            "--compression",
            "lz4",
            "--warmup-s",
            "3",
            "--timeline",
            "tl.csv",
            "--json",
            "--bootstrap-server",
            "127.0.0.1:19092",
        ]) else {
            panic!()
        };
        assert_eq!(
            (a.run.topic.as_str(), a.run.records, a.record_size),
            ("b", 5000, 100)
        );
        assert_eq!((a.partitions, a.replication_factor), (4, Some(3)));
        assert_eq!(
            (a.acks, a.linger_ms, a.batch_size),
            (AcksArg::None, 0, 16384)
        );
        assert_eq!((a.max_in_flight, a.run.duration_s), (Some(1), 10));
        assert_eq!(a.compression, CompressionArg::Lz4);
        assert_eq!(a.warmup_s, 3);
        assert_eq!(a.timeline.as_deref(), Some(std::path::Path::new("tl.csv")));
        assert!(a.run.json);
        assert_eq!(a.run.conn.bootstrap_server.to_string(), "127.0.0.1:19092");
    }

    #[test]
    fn consume_flags() {
        let BenchCommand::Consume(a) = parse(&[
            "keel",
            "bench",
            "consume",
            "--records",
            "10",
            "--json",
            "--topic",
            "b",
        ]) else {
            panic!()
        };
        assert_eq!(
            (a.run.topic.as_str(), a.run.records, a.run.json),
            ("b", 10, true)
        );
        for argv in [
            &["keel", "bench"][..],
            &["keel", "bench", "consume", "--record-size", "10"],
            &["keel", "bench", "produce", "--acks", "2"],
            &["keel", "bench", "produce", "--records", "-1"],
        ] {
            assert!(crate::Cli::try_parse_from(argv).is_err(), "{argv:?}");
        }
    }

    #[test]
    fn payloads_are_sized_slices_of_random_data() {
        let p = Payloads::new(1024, 1_000_000);
        assert_eq!(p.count, (16 << 20) / 1024);
        assert_eq!(p.get(0).len(), 1024);
        assert_ne!(p.get(0), p.get(1));
        assert_eq!(p.get(0), p.get(p.count as u64));
        // Random bytes: far from all zeros.
        assert!(p.get(7).iter().filter(|b| **b == 0).count() < 64);

        let small = Payloads::new(10, 3);
        assert_eq!(small.count, 3);
        let empty = Payloads::new(0, 5);
        assert_eq!(empty.get(4).len(), 0);
        let huge = Payloads::new(32 << 20, 5);
        assert_eq!((huge.count, huge.get(3).len()), (1, 32 << 20));
    }

    #[test]
    fn rates_table() {
        let cases = [
            (1000, 1_000_000, 1.0, (1000.0, 1.0)),
            (500, 2_000_000, 0.5, (1000.0, 4.0)),
            (10, 10, 0.0, (0.0, 0.0)),
            (0, 0, 2.0, (0.0, 0.0)),
        ];
        for (records, bytes, seconds, want) in cases {
            assert_eq!(
                rates(records, bytes, seconds),
                want,
                "{records} {bytes} {seconds}"
            );
        }
    }

    #[test]
    fn timeline_rows_are_windows_of_100_ms() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tl.csv");
        let start = std::time::UNIX_EPOCH + Duration::from_millis(5_000);
        let windows = [
            (3, Duration::from_micros(1500)),
            (0, Duration::ZERO),
            (2, Duration::from_millis(40)),
        ];
        write_timeline(&path, start, &windows).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "second,unix_ms,records,max_latency_ms\n0.0,5000,3,1.500\n0.1,5100,0,0.000\n\
             0.2,5200,2,40.000\n"
        );
    }

    #[test]
    fn paced_records_wake_a_tick_early_and_count_from_the_earlier_time() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // (due, now) -> (wake, latency origin if sent at `now`)
        let table = [
            (t0 + ms(10), t0, Some(t0 + ms(9)), t0),
            (t0 + ms(10), t0 + ms(9), None, t0 + ms(9)),
            (
                t0 + ms(10),
                t0 + ms(9) + Duration::from_micros(500),
                None,
                t0 + ms(9) + Duration::from_micros(500),
            ),
            (t0 + ms(10), t0 + ms(10), None, t0 + ms(10)),
            (t0 + ms(10), t0 + ms(25), None, t0 + ms(10)),
        ];
        for (due, now, wake, origin) in table {
            assert_eq!(pacing_wake(due, now), wake, "{:?}", due - t0);
            assert_eq!(latency_origin(due, now), origin, "{:?}", now - t0);
        }
    }

    #[test]
    fn rate_must_be_positive() {
        assert_eq!(parse_rate("2500"), Ok(2500.0));
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        for bad in ["0", "-1", "nan", "inf", "fast"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_report_fields() {
        let report = ProduceReport {
            mode: "produce",
            topic: "t".to_string(),
            records: 10,
            failed: 0,
            record_size: 1,
            acks: "all".to_string(),
            target_records_per_sec: Some(10.0),
            warmup_s: 2,
            seconds: 1.0,
            records_per_sec: 10.0,
            mb_per_sec: 0.00001,
            latency_p50_ms: 1.0,
            latency_p99_ms: 2.0,
            latency_p999_ms: 3.0,
            latency_max_ms: 4.0,
            stopped_by: Stop::Duration,
        };
        let v: serde_json::Value = serde_json::to_value(&report).unwrap();
        for key in [
            "records",
            "target_records_per_sec",
            "warmup_s",
            "seconds",
            "records_per_sec",
            "mb_per_sec",
            "latency_p50_ms",
            "latency_p99_ms",
            "latency_p999_ms",
            "latency_max_ms",
        ] {
            assert!(
                v.get(key).is_some_and(serde_json::Value::is_number),
                "{key}"
            );
        }
        assert_eq!(v["stopped_by"], "duration");
        assert!(render_produce(&report).contains("stopped by duration"));
    }
}
