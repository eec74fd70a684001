//! Broker metrics: names in one place, the Prometheus recorder, and the `/metrics`
//! endpoint on its own port.
//!
//! Names follow `keel_<subsystem>_<name>_<unit>`; counters end in `_total`.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

// Server: the Kafka and controller listeners.
pub const REQUESTS_TOTAL: &str = "keel_server_requests_total";
pub const REQUEST_ERRORS_TOTAL: &str = "keel_server_request_errors_total";
pub const REQUEST_DURATION_SECONDS: &str = "keel_server_request_duration_seconds";
pub const CONNECTIONS_ACTIVE: &str = "keel_server_connections_active";
pub const RUNTIME_TASKS: &str = "keel_runtime_tasks";
pub const PROCESS_OPEN_FDS: &str = "keel_process_open_fds";
pub const PROCESS_OPEN_FILES_LIMIT: &str = "keel_process_open_files_limit";
pub const CONNECTIONS_CLOSED_ON_ERROR_TOTAL: &str = "keel_server_connections_closed_on_error_total";
pub const RECEIVED_BYTES_TOTAL: &str = "keel_server_received_bytes_total";
pub const SENT_BYTES_TOTAL: &str = "keel_server_sent_bytes_total";
pub const PRODUCE_BYTES_TOTAL: &str = "keel_produce_appended_bytes_total";
pub const PRODUCE_PURGATORY_REQUESTS: &str = "keel_produce_purgatory_requests";
pub const PRODUCE_DUPLICATES_TOTAL: &str = "keel_produce_duplicate_batches_total";
pub const PRODUCE_OUT_OF_ORDER_TOTAL: &str = "keel_produce_out_of_order_sequence_total";
pub const PRODUCE_FENCED_TOTAL: &str = "keel_produce_fenced_producer_total";
pub const FETCH_BYTES_TOTAL: &str = "keel_fetch_returned_bytes_total";
pub const FETCH_PURGATORY_REQUESTS: &str = "keel_fetch_purgatory_requests";
pub const FETCH_REQUESTS_TOTAL: &str = "keel_fetch_requests_total";
pub const FETCH_SESSIONS: &str = "keel_fetch_sessions";
pub const FETCH_SESSION_PARTITIONS: &str = "keel_fetch_session_partitions";
pub const FETCH_SESSION_EVICTIONS_TOTAL: &str = "keel_fetch_session_evictions_total";

// Partition replicas on this broker (labels: topic, partition).
pub const PARTITION_LOG_START_OFFSET: &str = "keel_partition_log_start_offset";
pub const PARTITION_LOG_END_OFFSET: &str = "keel_partition_log_end_offset";
pub const PARTITION_HIGH_WATERMARK: &str = "keel_partition_high_watermark";
pub const PARTITION_SIZE_BYTES: &str = "keel_partition_size_bytes";
pub const PARTITION_SEGMENTS: &str = "keel_partition_segments";
pub const PARTITION_LEADER_EPOCH: &str = "keel_partition_leader_epoch";
pub const PARTITION_IS_LEADER: &str = "keel_partition_is_leader";
pub const PARTITION_ISR_SIZE: &str = "keel_partition_isr_size";
pub const PARTITION_UNDER_REPLICATED: &str = "keel_partition_under_replicated";
pub const PARTITION_UNDER_MIN_ISR: &str = "keel_partition_under_min_isr";
pub const PARTITION_PRODUCERS: &str = "keel_partition_producers";

// The leader's view of each follower (labels: topic, partition, replica).
pub const FOLLOWER_LAG_RECORDS: &str = "keel_follower_lag_records";
pub const FOLLOWER_LAG_BYTES: &str = "keel_follower_lag_bytes";
pub const FOLLOWER_CAUGHT_UP_AGE_SECONDS: &str = "keel_follower_caught_up_age_seconds";
pub const FOLLOWER_FETCH_AGE_SECONDS: &str = "keel_follower_fetch_age_seconds";

// Replication on this broker.
pub const REPLICAS_HOSTED: &str = "keel_replica_hosted";
pub const REPLICAS_CREATED_TOTAL: &str = "keel_replica_created_total";
pub const REPLICAS_DELETED_TOTAL: &str = "keel_replica_deleted_total";
pub const ISR_SHRINKS_TOTAL: &str = "keel_isr_shrinks_total";
pub const ISR_EXPANDS_TOTAL: &str = "keel_isr_expands_total";
pub const TRUNCATIONS_TOTAL: &str = "keel_replica_truncations_total";
pub const CREATE_TOPICS_UNSETTLED_TOTAL: &str = "keel_create_topics_unsettled_total";
pub const TRUNCATED_RECORDS_TOTAL: &str = "keel_replica_truncated_records_total";
pub const TRUNCATED_BYTES_TOTAL: &str = "keel_replica_truncated_bytes_total";
pub const DIVERGENCE_RESYNCS_TOTAL: &str = "keel_replica_divergence_resyncs_total";
pub const FETCHER_RECONNECTS_TOTAL: &str = "keel_fetcher_reconnects_total";
pub const FETCHER_BACKOFFS_TOTAL: &str = "keel_fetcher_backoffs_total";
pub const CONTROLLER_RETRIES_TOTAL: &str = "keel_broker_controller_call_retries_total";
pub const NOT_CONTROLLER_TOTAL: &str = "keel_broker_not_controller_total";

// The group coordinator.
pub const GROUPS: &str = "keel_group_coordinator_groups";
pub const GROUP_PARTITIONS_LOADED: &str = "keel_group_coordinator_partitions_loaded";
pub const GROUP_LOAD_SECONDS: &str = "keel_group_coordinator_load_seconds";
pub const GROUP_COMMITS_TOTAL: &str = "keel_group_offset_commits_total";
// Per group, topic and partition (bounded by group.lag.metrics.max.series).
pub const GROUP_COMMITTED_OFFSET: &str = "keel_group_committed_offset";
pub const GROUP_LAG_RECORDS: &str = "keel_group_lag_records";

// Disk (label: dir).
pub const LOG_DIR_USED_BYTES: &str = "keel_log_dir_used_bytes";
pub const LOG_DIR_CAPACITY_BYTES: &str = "keel_log_dir_capacity_bytes";
pub const LOG_DIR_AVAILABLE_BYTES: &str = "keel_log_dir_available_bytes";
pub const LOG_PAGE_CACHE_WINDOW_BYTES: &str = "keel_log_page_cache_window_bytes";
pub const LOG_PAGE_CACHE_WINDOW_LIMIT_BYTES: &str = "keel_log_page_cache_window_limit_bytes";

// The controller (on nodes with the controller role).
pub const CONTROLLER_BROKERS_REGISTERED: &str = "keel_controller_brokers_registered";
pub const CONTROLLER_BROKERS_FENCED: &str = "keel_controller_brokers_fenced";
pub const CONTROLLER_BROKERS_ACTIVE: &str = "keel_controller_brokers_active";
pub const CONTROLLER_OFFLINE_PARTITIONS: &str = "keel_controller_offline_partitions";
pub const CONTROLLER_PARTITIONS: &str = "keel_controller_partitions";
pub const CONTROLLER_LEADER_ELECTIONS_TOTAL: &str = "keel_controller_leader_elections_total";
pub const CONTROLLER_METADATA_LOG_OFFSET: &str = "keel_controller_metadata_log_offset";
pub const QUORUM_TERM: &str = "keel_controller_quorum_term";
pub const QUORUM_LEADER: &str = "keel_controller_quorum_leader";
pub const QUORUM_ACTIVE: &str = "keel_controller_quorum_active";
pub const QUORUM_COMMITTED_OFFSET: &str = "keel_controller_quorum_committed_offset";
pub const QUORUM_APPLIED_OFFSET: &str = "keel_controller_quorum_applied_offset";
pub const QUORUM_VOTER_LAG: &str = "keel_controller_quorum_voter_lag";
pub const QUORUM_VOTER_REACHABLE: &str = "keel_controller_quorum_voter_reachable";
pub const QUORUM_ELECTIONS_TOTAL: &str = "keel_controller_quorum_elections_total";
pub const QUORUM_SNAPSHOT_BYTES: &str = "keel_controller_quorum_snapshot_bytes";
pub const QUORUM_SNAPSHOT_OFFSET: &str = "keel_controller_quorum_snapshot_offset";
pub const QUORUM_SNAPSHOT_AGE_SECONDS: &str = "keel_controller_quorum_snapshot_age_seconds";

fn describe() {
    use keel_storage::metrics as s;
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(REQUESTS_TOTAL, "Requests handled, by API and version.");
    describe_counter!(
        REQUEST_ERRORS_TOTAL,
        "Requests refused or failed before a response, by reason."
    );
    describe_histogram!(
        REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time from request read to response ready, by API and version."
    );
    describe_gauge!(CONNECTIONS_ACTIVE, "Open client connections.");
    describe_gauge!(
        RUNTIME_TASKS,
        "Async tasks alive in this process (connections, fetchers, flushers, timers)."
    );
    describe_gauge!(
        PROCESS_OPEN_FDS,
        "File descriptors open in this process (segments, indexes, sockets); Linux only."
    );
    describe_gauge!(
        PROCESS_OPEN_FILES_LIMIT,
        "This process's open-files limit (RLIMIT_NOFILE), raised to the hard limit at start."
    );
    describe_counter!(
        CONNECTIONS_CLOSED_ON_ERROR_TOTAL,
        "Connections closed because of a protocol error."
    );
    describe_counter!(
        RECEIVED_BYTES_TOTAL,
        Unit::Bytes,
        "Request bytes read on the listeners (size prefixes included)."
    );
    describe_counter!(
        SENT_BYTES_TOTAL,
        Unit::Bytes,
        "Response bytes written on the listeners (size prefixes included)."
    );
    describe_counter!(
        PRODUCE_BYTES_TOTAL,
        Unit::Bytes,
        "Record-batch bytes appended by produce requests."
    );
    describe_gauge!(
        PRODUCE_PURGATORY_REQUESTS,
        "Produce requests appended and waiting for their acknowledgement (fsync or high watermark)."
    );
    describe_counter!(
        FETCH_BYTES_TOTAL,
        Unit::Bytes,
        "Record-batch bytes returned by fetch requests (consumers and followers)."
    );
    describe_gauge!(
        FETCH_PURGATORY_REQUESTS,
        "Fetch requests long-polling for data."
    );
    describe_counter!(
        FETCH_REQUESTS_TOTAL,
        "Fetch requests by session kind: full (no session, or one being opened), incremental, or refused (unknown session or wrong epoch)."
    );
    describe_gauge!(
        FETCH_SESSIONS,
        "Incremental fetch sessions (KIP-227) this broker holds."
    );
    describe_gauge!(
        FETCH_SESSION_PARTITIONS,
        "Partitions held across all fetch sessions."
    );
    describe_counter!(
        FETCH_SESSION_EVICTIONS_TOTAL,
        "Fetch sessions evicted to make room for a new one (the evicted fetcher starts over with a full fetch)."
    );
    describe_gauge!(
        PARTITION_LOG_START_OFFSET,
        "First offset still in the log, by topic and partition."
    );
    describe_gauge!(
        PARTITION_LOG_END_OFFSET,
        "Log end offset (next offset to write), by topic and partition."
    );
    describe_gauge!(
        PARTITION_HIGH_WATERMARK,
        "High watermark (consumers read below it), by topic and partition."
    );
    describe_gauge!(
        PARTITION_SIZE_BYTES,
        Unit::Bytes,
        "Bytes of segment files on disk, by topic and partition."
    );
    describe_gauge!(PARTITION_SEGMENTS, "Segment count, by topic and partition.");
    describe_gauge!(
        PARTITION_LEADER_EPOCH,
        "Leader epoch this replica knows, by topic and partition."
    );
    describe_gauge!(
        PARTITION_IS_LEADER,
        "1 if this broker leads the partition, else 0."
    );
    describe_gauge!(
        PARTITION_ISR_SIZE,
        "In-sync replicas of the partition as this replica knows them."
    );
    describe_gauge!(
        PARTITION_UNDER_REPLICATED,
        "1 on the leader while the ISR is smaller than the replica set (0 on followers)."
    );
    describe_gauge!(
        PARTITION_UNDER_MIN_ISR,
        "1 on the leader while the ISR is below min.insync.replicas: acks=all is refused (0 on followers)."
    );
    describe_gauge!(
        FOLLOWER_LAG_RECORDS,
        "Leader only: leader log end offset minus the follower's, by topic, partition and follower (replica)."
    );
    describe_gauge!(
        FOLLOWER_LAG_BYTES,
        Unit::Bytes,
        "Leader only: bytes of the leader's log the follower has yet to fetch."
    );
    describe_gauge!(
        FOLLOWER_CAUGHT_UP_AGE_SECONDS,
        Unit::Seconds,
        "Leader only: seconds since the follower was last caught up (it leaves the ISR past replica.lag.time.max.ms)."
    );
    describe_gauge!(
        FOLLOWER_FETCH_AGE_SECONDS,
        Unit::Seconds,
        "Leader only: seconds since the follower's last fetch."
    );
    describe_gauge!(REPLICAS_HOSTED, "Partition replicas held by this broker.");
    describe_counter!(
        REPLICAS_CREATED_TOTAL,
        "Partition replicas created (or opened for a new assignment) on this broker."
    );
    describe_counter!(
        REPLICAS_DELETED_TOTAL,
        "Partition replicas removed from this broker."
    );
    describe_counter!(
        CREATE_TOPICS_UNSETTLED_TOTAL,
        "Forwarded CreateTopics answered when the wait for this broker's metadata to show the \
         new topics (led, or deleted again) ran out: its metadata lags the controller's."
    );
    describe_counter!(
        ISR_SHRINKS_TOTAL,
        "ISR shrinks committed by the controller for partitions this broker leads."
    );
    describe_counter!(
        ISR_EXPANDS_TOTAL,
        "ISR expansions committed by the controller for partitions this broker leads."
    );
    describe_counter!(
        TRUNCATIONS_TOTAL,
        "Follower log truncations to the leader's history."
    );
    describe_counter!(
        TRUNCATED_RECORDS_TOTAL,
        "Offsets removed by follower truncations."
    );
    describe_counter!(
        TRUNCATED_BYTES_TOTAL,
        Unit::Bytes,
        "Bytes removed by follower truncations."
    );
    describe_counter!(
        DIVERGENCE_RESYNCS_TOTAL,
        "Times a follower found its log diverged from the leader's epochs and resynchronised."
    );
    describe_counter!(
        FETCHER_RECONNECTS_TOTAL,
        "Follower fetcher connections (re)opened to a leader."
    );
    describe_counter!(
        FETCHER_BACKOFFS_TOTAL,
        "Follower fetches that failed or were refused and were retried after a back-off."
    );
    describe_counter!(
        CONTROLLER_RETRIES_TOTAL,
        "Failed calls from this broker to the controller that were retried, by call."
    );
    describe_counter!(
        NOT_CONTROLLER_TOTAL,
        "Calls from this broker that a voter answered NOT_CONTROLLER (sent on to another voter), by call."
    );
    describe_gauge!(
        LOG_DIR_USED_BYTES,
        Unit::Bytes,
        "Bytes of partition segment files in the data directory."
    );
    describe_gauge!(
        LOG_PAGE_CACHE_WINDOW_BYTES,
        Unit::Bytes,
        "Recently written bytes kept in the page cache for readers (log.cache.bytes window)."
    );
    describe_gauge!(
        LOG_PAGE_CACHE_WINDOW_LIMIT_BYTES,
        Unit::Bytes,
        "log.cache.bytes: the most written bytes kept in the page cache; -1 leaves all to the kernel."
    );
    describe_gauge!(
        LOG_DIR_CAPACITY_BYTES,
        Unit::Bytes,
        "Size of the file system holding the data directory."
    );
    describe_gauge!(
        LOG_DIR_AVAILABLE_BYTES,
        Unit::Bytes,
        "Bytes available to Keel on the file system holding the data directory."
    );
    describe_counter!(
        s::FSYNCS_TOTAL,
        "fsync/fdatasync calls on segments, indexes, checkpoints and directories."
    );
    describe_histogram!(
        s::FSYNC_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of each fsync/fdatasync."
    );
    describe_gauge!(s::OPEN_SEGMENTS, "Segment files open.");
    describe_counter!(
        s::PRODUCER_SNAPSHOTS_WRITTEN_TOTAL,
        "Producer-state snapshots written (at segment rolls and clean closes)."
    );
    describe_histogram!(
        s::PRODUCER_STATE_LOAD_SECONDS,
        Unit::Seconds,
        "Time to load a log's producer state when it opens (newest snapshot, then replay)."
    );
    describe_counter!(
        PRODUCE_DUPLICATES_TOTAL,
        "Idempotent producers' retried batches answered with their first offsets, not appended."
    );
    describe_counter!(
        PRODUCE_OUT_OF_ORDER_TOTAL,
        "Idempotent producers' batches refused for a sequence gap (OUT_OF_ORDER_SEQUENCE_NUMBER)."
    );
    describe_counter!(
        PRODUCE_FENCED_TOTAL,
        "Idempotent producers' batches refused for an old epoch (INVALID_PRODUCER_EPOCH)."
    );
    describe_gauge!(
        PARTITION_PRODUCERS,
        "Idempotent producer ids this replica keeps state for (expire after producer.id.expiration.ms)."
    );
    describe_gauge!(
        GROUPS,
        "Groups of the offsets partitions this broker coordinates."
    );
    describe_gauge!(
        GROUP_PARTITIONS_LOADED,
        "Offsets partitions this broker leads and has loaded."
    );
    describe_histogram!(
        GROUP_LOAD_SECONDS,
        Unit::Seconds,
        "Time to load an offsets partition's groups after becoming its leader."
    );
    describe_counter!(
        GROUP_COMMITS_TOTAL,
        "Partition offsets committed (acknowledged) through this coordinator."
    );
    describe_gauge!(
        GROUP_COMMITTED_OFFSET,
        "Committed offset, by group, topic and partition (up to group.lag.metrics.max.series series)."
    );
    describe_gauge!(
        GROUP_LAG_RECORDS,
        "High watermark minus the committed offset, by group, topic and partition (same bound)."
    );
    describe_gauge!(
        s::MAPPED_BYTES,
        Unit::Bytes,
        "Bytes of segment files memory-mapped."
    );
    describe_gauge!(
        CONTROLLER_BROKERS_REGISTERED,
        "Controller: brokers registered."
    );
    describe_gauge!(
        CONTROLLER_BROKERS_FENCED,
        "Controller: registered brokers that are fenced (silent past broker.session.timeout.ms, or shutting down)."
    );
    describe_gauge!(
        CONTROLLER_BROKERS_ACTIVE,
        "Controller: registered brokers that are not fenced."
    );
    describe_gauge!(
        CONTROLLER_OFFLINE_PARTITIONS,
        "Controller: partitions without a leader."
    );
    describe_gauge!(
        CONTROLLER_PARTITIONS,
        "Controller: partitions in the cluster."
    );
    describe_counter!(
        CONTROLLER_LEADER_ELECTIONS_TOTAL,
        "Controller: leader changes committed (failover, preferred leader, leaderless to led)."
    );
    describe_gauge!(
        CONTROLLER_METADATA_LOG_OFFSET,
        "Controller: offset of the last metadata entry applied to this voter's image."
    );
    describe_gauge!(QUORUM_TERM, "Controller quorum: this voter's Raft term.");
    describe_gauge!(
        QUORUM_LEADER,
        "Controller quorum: the node id of the Raft leader this voter knows, -1 if none."
    );
    describe_gauge!(
        QUORUM_ACTIVE,
        "Controller quorum: 1 on the active controller (the leader, running commands), else 0."
    );
    describe_gauge!(
        QUORUM_COMMITTED_OFFSET,
        "Controller quorum: the last committed metadata offset this voter knows."
    );
    describe_gauge!(
        QUORUM_APPLIED_OFFSET,
        "Controller quorum: the last metadata offset applied to this voter's image."
    );
    describe_gauge!(
        QUORUM_VOTER_LAG,
        "Controller quorum, on the leader: metadata entries each voter is behind the leader's log."
    );
    describe_gauge!(
        QUORUM_VOTER_REACHABLE,
        "Controller quorum, on the leader: 1 if the voter answered within the election timeout."
    );
    describe_counter!(
        QUORUM_ELECTIONS_TOTAL,
        "Controller quorum: times this voter became the active controller."
    );
    describe_gauge!(
        QUORUM_SNAPSHOT_BYTES,
        Unit::Bytes,
        "Controller quorum: size of this voter's newest metadata snapshot."
    );
    describe_gauge!(
        QUORUM_SNAPSHOT_OFFSET,
        "Controller quorum: metadata offset of this voter's newest snapshot (0: none yet)."
    );
    describe_gauge!(
        QUORUM_SNAPSHOT_AGE_SECONDS,
        "Controller quorum: seconds since this voter wrote or installed its newest snapshot (since start if none)."
    );
}

/// Counters a broker exports from its start, at zero until their first event, so that
/// dashboards and alerts see 0 rather than no data.
const BROKER_COUNTERS: &[&str] = &[
    CONNECTIONS_CLOSED_ON_ERROR_TOTAL,
    RECEIVED_BYTES_TOTAL,
    SENT_BYTES_TOTAL,
    PRODUCE_BYTES_TOTAL,
    FETCH_BYTES_TOTAL,
    FETCH_SESSION_EVICTIONS_TOTAL,
    REPLICAS_CREATED_TOTAL,
    REPLICAS_DELETED_TOTAL,
    ISR_SHRINKS_TOTAL,
    ISR_EXPANDS_TOTAL,
    CREATE_TOPICS_UNSETTLED_TOTAL,
    TRUNCATIONS_TOTAL,
    TRUNCATED_RECORDS_TOTAL,
    TRUNCATED_BYTES_TOTAL,
    DIVERGENCE_RESYNCS_TOTAL,
    FETCHER_RECONNECTS_TOTAL,
    FETCHER_BACKOFFS_TOTAL,
    keel_storage::metrics::FSYNCS_TOTAL,
    keel_storage::metrics::PRODUCER_SNAPSHOTS_WRITTEN_TOTAL,
    PRODUCE_DUPLICATES_TOTAL,
    PRODUCE_OUT_OF_ORDER_TOTAL,
    PRODUCE_FENCED_TOTAL,
    GROUP_COMMITS_TOTAL,
];

/// Registers the broker's event counters at zero (see [`BROKER_COUNTERS`]).
pub fn register_broker_counters() {
    for &name in BROKER_COUNTERS {
        metrics::counter!(name).increment(0);
    }
    for reason in [
        "unsupported_version",
        "unknown_api_key",
        "malformed_header",
        "malformed_keel_request",
    ] {
        metrics::counter!(REQUEST_ERRORS_TOTAL, "reason" => reason).increment(0);
    }
    for call in ["register", "heartbeat", "metadata"] {
        metrics::counter!(CONTROLLER_RETRIES_TOTAL, "call" => call).increment(0);
    }
}

/// Registers the controller's event counters at zero.
pub fn register_controller_counters() {
    metrics::counter!(CONTROLLER_LEADER_ELECTIONS_TOTAL).increment(0);
    metrics::counter!(QUORUM_ELECTIONS_TOTAL).increment(0);
}

/// Installs the process-wide Prometheus recorder once and returns its handle.
pub fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Gauges not set for a minute disappear: a deleted topic's partitions stop
            // being reported. Gauges that mirror state are set by scrape hooks
            // ([`on_scrape`]) just before each render, the rest as events happen.
            let recorder = PrometheusBuilder::new()
                .idle_timeout(MetricKindMask::GAUGE, Some(Duration::from_secs(60)))
                .set_buckets(&[
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0,
                ])
                .expect("static bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            describe();
            handle
        })
        .clone()
}

/// Something that sets gauges from current state, run just before each scrape.
type ScrapeHook = Arc<dyn Fn() + Send + Sync>;

fn scrape_hooks() -> &'static Mutex<Vec<(u64, ScrapeHook)>> {
    static HOOKS: OnceLock<Mutex<Vec<(u64, ScrapeHook)>>> = OnceLock::new();
    HOOKS.get_or_init(Default::default)
}

/// Runs `hook` before every scrape until the returned guard is dropped. Gauges that mirror
/// state (one series per partition replica, follower, group) are computed here rather than
/// on a timer, so a broker with thousands of idle partitions spends nothing on them between
/// scrapes.
#[must_use = "the hook runs only while the guard lives"]
pub fn on_scrape(hook: impl Fn() + Send + Sync + 'static) -> ScrapeGuard {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    scrape_hooks()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((id, Arc::new(hook)));
    ScrapeGuard(id)
}

/// Unregisters a scrape hook when dropped.
pub struct ScrapeGuard(u64);

impl Drop for ScrapeGuard {
    fn drop(&mut self) {
        scrape_hooks()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(id, _)| *id != self.0);
    }
}

/// Runs every scrape hook, then renders the exposition text. Blocking: hooks may walk
/// every replica and look into segments.
pub fn render(handle: &PrometheusHandle) -> String {
    let hooks: Vec<ScrapeHook> = scrape_hooks()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(_, h)| h.clone())
        .collect();
    for hook in hooks {
        hook();
    }
    handle.render()
}

/// Serves `GET /metrics` (and `/` for humans) until `stop`.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle, stop: CancellationToken) {
    loop {
        let (mut stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            let read = async {
                while n < buf.len() {
                    let m = stream.read(&mut buf[n..]).await?;
                    if m == 0 {
                        break;
                    }
                    n += m;
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            };
            if tokio::time::timeout(Duration::from_secs(5), read)
                .await
                .is_err()
            {
                return;
            }
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = if path == "/metrics" || path.starts_with("/metrics?") {
                match tokio::task::spawn_blocking(move || render(&handle)).await {
                    Ok(body) => ("200 OK", body),
                    Err(e) => {
                        tracing::warn!(error = %e, "rendering the metrics failed");
                        (
                            "500 Internal Server Error",
                            "rendering failed\n".to_string(),
                        )
                    }
                }
            } else if path == "/" {
                ("200 OK", "keel broker: metrics at /metrics\n".to_string())
            } else {
                ("404 Not Found", "not found\n".to_string())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Open client connections; published as a gauge by [`broker_gauges`].
pub static OPEN_CONNECTIONS: AtomicI64 = AtomicI64::new(0);

/// Requests waiting in a purgatory; a [`Waiting`] guard counts one while it lives.
pub static PRODUCE_WAITING: AtomicI64 = AtomicI64::new(0);
pub static FETCH_WAITING: AtomicI64 = AtomicI64::new(0);

/// Counts one waiting request in `counter` until dropped.
pub struct Waiting(&'static AtomicI64);

impl Waiting {
    pub fn new(counter: &'static AtomicI64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
