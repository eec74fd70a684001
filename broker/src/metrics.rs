//! Broker metrics: names in one place, the Prometheus recorder, and the `/metrics`
//! endpoint on its own port.
//!
//! Names follow `keel_<subsystem>_<name>_<unit>`; counters end in `_total`.

use crate::topics::Topics;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const REQUESTS_TOTAL: &str = "keel_requests_total";
pub const REQUEST_ERRORS_TOTAL: &str = "keel_request_errors_total";
pub const REQUEST_DURATION_SECONDS: &str = "keel_request_duration_seconds";
pub const CONNECTIONS_ACTIVE: &str = "keel_connections_active";
pub const CONNECTIONS_CLOSED_ON_ERROR_TOTAL: &str = "keel_connections_closed_on_error_total";
pub const PRODUCE_BYTES_TOTAL: &str = "keel_produce_bytes_total";
pub const FETCH_BYTES_TOTAL: &str = "keel_fetch_bytes_total";
pub const PARTITION_LOG_END_OFFSET: &str = "keel_partition_log_end_offset";
pub const PARTITION_HIGH_WATERMARK: &str = "keel_partition_high_watermark";
pub const PARTITION_LOG_START_OFFSET: &str = "keel_partition_log_start_offset";
pub const PARTITION_SIZE_BYTES: &str = "keel_partition_size_bytes";
pub const PARTITION_SEGMENTS: &str = "keel_partition_segments";
pub const PARTITIONS: &str = "keel_partitions";
pub const CONTROLLER_RETRIES_TOTAL: &str = "keel_controller_call_retries_total";
pub const FETCHER_RETRIES_TOTAL: &str = "keel_replica_fetcher_retries_total";
pub const TRUNCATIONS_TOTAL: &str = "keel_replica_truncations_total";
pub const TRUNCATED_RECORDS_TOTAL: &str = "keel_replica_truncated_records_total";
pub const TRUNCATED_BYTES_TOTAL: &str = "keel_replica_truncated_bytes_total";
pub const ISR_CHANGES_TOTAL: &str = "keel_isr_changes_total";

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(REQUESTS_TOTAL, "Requests handled, by API.");
    describe_counter!(
        REQUEST_ERRORS_TOTAL,
        "Requests refused or failed before a response, by reason."
    );
    describe_histogram!(
        REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time from request read to response ready, by API."
    );
    describe_gauge!(CONNECTIONS_ACTIVE, "Open client connections.");
    describe_counter!(
        CONNECTIONS_CLOSED_ON_ERROR_TOTAL,
        "Connections closed because of a protocol error."
    );
    describe_counter!(
        PRODUCE_BYTES_TOTAL,
        Unit::Bytes,
        "Record-batch bytes appended by produce requests."
    );
    describe_counter!(
        FETCH_BYTES_TOTAL,
        Unit::Bytes,
        "Record-batch bytes returned by fetch requests."
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
        PARTITION_LOG_START_OFFSET,
        "First offset still in the log, by topic and partition."
    );
    describe_gauge!(
        PARTITION_SIZE_BYTES,
        Unit::Bytes,
        "Bytes of segment files on disk, by topic and partition."
    );
    describe_gauge!(PARTITION_SEGMENTS, "Segment count, by topic and partition.");
    describe_gauge!(PARTITIONS, "Partition replicas held by this broker.");
    describe_counter!(
        CONTROLLER_RETRIES_TOTAL,
        "Failed calls to the controller that were retried, by call."
    );
    describe_counter!(
        FETCHER_RETRIES_TOTAL,
        "Follower fetches that failed or were refused and were retried after a back-off."
    );
    describe_counter!(
        TRUNCATIONS_TOTAL,
        "Follower log truncations to the leader's history."
    );
    describe_counter!(
        ISR_CHANGES_TOTAL,
        "ISR changes committed by the controller for partitions this broker leads."
    );
}

/// Installs the process-wide Prometheus recorder once and returns its handle.
pub fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Gauges not set for a minute disappear: a deleted topic's partitions stop
            // being reported. Every gauge is refreshed by `partition_gauges`.
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
                ("200 OK", handle.render())
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

/// Open client connections; published as a gauge by [`partition_gauges`].
pub static OPEN_CONNECTIONS: AtomicI64 = AtomicI64::new(0);

/// Refreshes the per-partition gauges every `interval` until `stop`.
pub async fn partition_gauges(topics: Arc<Topics>, interval: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let mut count = 0usize;
        for topic in topics.all() {
            for r in &topic.replicas {
                count += 1;
                let labels = [
                    ("topic", topic.meta.name.clone()),
                    ("partition", r.partition.to_string()),
                ];
                let log = r.log();
                metrics::gauge!(PARTITION_LOG_END_OFFSET, &labels).set(log.log_end_offset() as f64);
                metrics::gauge!(PARTITION_HIGH_WATERMARK, &labels).set(r.high_watermark() as f64);
                metrics::gauge!(PARTITION_LOG_START_OFFSET, &labels)
                    .set(log.log_start_offset() as f64);
                metrics::gauge!(PARTITION_SIZE_BYTES, &labels).set(log.size_bytes() as f64);
                metrics::gauge!(PARTITION_SEGMENTS, &labels).set(log.segment_count() as f64);
            }
        }
        metrics::gauge!(PARTITIONS).set(count as f64);
        metrics::gauge!(CONNECTIONS_ACTIVE).set(OPEN_CONNECTIONS.load(Ordering::Relaxed) as f64);
    }
}
