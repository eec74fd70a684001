//! The gauges of every replica this broker holds, of each follower of the partitions it
//! leads, of its disk and of its request purgatories, set at each scrape.

use super::registry::Topics;
use crate::metrics::*;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The leader-side lag of one follower, as the gauges report it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct FollowerLag {
    /// Where the follower's log is taken to end: its LEO, or the log start when that is
    /// unknown or below it (the lag in bytes is counted from here too).
    pub(crate) from: i64,
    pub(crate) records: i64,
    pub(crate) caught_up_age_s: f64,
    pub(crate) fetch_age_s: f64,
}

/// A follower's lag from the leader's view. A follower that has not fetched yet in this
/// leadership (LEO unknown, -1) counts from the log start, and its ages from when the
/// leadership began: it is as far behind as anything the leader knows.
pub(crate) fn follower_lag(
    f: &super::FollowerStatus,
    leader_leo: i64,
    log_start: i64,
    leader_since_ms: u64,
    now_ms: u64,
) -> FollowerLag {
    let from = f.leo.max(log_start);
    let age =
        |t: u64| now_ms.saturating_sub(if t == 0 { leader_since_ms } else { t }) as f64 / 1000.0;
    FollowerLag {
        from,
        records: (leader_leo - from).max(0),
        caught_up_age_s: age(f.last_caught_up_ms),
        fetch_age_s: age(f.last_fetch_ms),
    }
}

/// (under-replicated, under-min-ISR) as the gauges report them: only a leader reports a
/// partition, so a sum over the cluster counts each partition once.
pub(crate) fn partition_health(s: &super::ReplicaStatus) -> (bool, bool) {
    if !s.is_leader {
        return (false, false);
    }
    let isr = s.isr.len();
    (
        isr < s.replicas.len(),
        (isr as i32) < s.min_insync_replicas.max(1),
    )
}

/// Sets the broker's gauges at every scrape until `stop`: per partition replica, per
/// follower of the partitions led here, disk, storage and purgatories. Nothing runs between
/// scrapes, so idle partitions cost nothing here.
pub(crate) async fn broker_gauges(topics: Arc<Topics>, stop: CancellationToken) {
    let _hook = on_scrape(move || refresh_broker_gauges(&topics));
    stop.cancelled().await;
}

fn refresh_broker_gauges(topics: &Topics) {
    let mut count = 0usize;
    let mut used = 0u64;
    for topic in topics.all() {
        for r in &topic.replicas {
            count += 1;
            let s = r.status();
            used += s.size_bytes;
            let partition = r.partition.to_string();
            let labels = [
                ("topic", topic.meta.name.clone()),
                ("partition", partition.clone()),
            ];
            let set = |name: &'static str, v: f64| metrics::gauge!(name, &labels).set(v);
            set(PARTITION_LOG_START_OFFSET, s.log_start as f64);
            set(PARTITION_LOG_END_OFFSET, s.leo as f64);
            set(PARTITION_HIGH_WATERMARK, s.hw as f64);
            set(PARTITION_SIZE_BYTES, s.size_bytes as f64);
            set(PARTITION_SEGMENTS, s.segments as f64);
            set(PARTITION_LEADER_EPOCH, f64::from(s.leader_epoch));
            set(PARTITION_IS_LEADER, f64::from(u8::from(s.is_leader)));
            set(PARTITION_ISR_SIZE, s.isr.len() as f64);
            let (under, under_min) = partition_health(&s);
            set(PARTITION_UNDER_REPLICATED, f64::from(u8::from(under)));
            set(PARTITION_UNDER_MIN_ISR, f64::from(u8::from(under_min)));
            set(PARTITION_PRODUCERS, r.log().producer_count() as f64);
            for f in &s.followers {
                let lag = follower_lag(f, s.leo, s.log_start, s.leader_since_ms, s.now_ms);
                let labels = [
                    ("topic", topic.meta.name.clone()),
                    ("partition", partition.clone()),
                    ("replica", f.broker_id.to_string()),
                ];
                let bytes = r.log().bytes_from(lag.from);
                metrics::gauge!(FOLLOWER_LAG_RECORDS, &labels).set(lag.records as f64);
                metrics::gauge!(FOLLOWER_LAG_BYTES, &labels).set(bytes as f64);
                metrics::gauge!(FOLLOWER_CAUGHT_UP_AGE_SECONDS, &labels).set(lag.caught_up_age_s);
                metrics::gauge!(FOLLOWER_FETCH_AGE_SECONDS, &labels).set(lag.fetch_age_s);
            }
        }
    }
    metrics::gauge!(REPLICAS_HOSTED).set(count as f64);
    metrics::gauge!(CONNECTIONS_ACTIVE).set(OPEN_CONNECTIONS.load(Ordering::Relaxed) as f64);
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        metrics::gauge!(RUNTIME_TASKS).set(rt.metrics().num_alive_tasks() as f64);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        // The directory's own descriptor is among the entries: not counted.
        metrics::gauge!(PROCESS_OPEN_FDS).set(fds.count().saturating_sub(1) as f64);
    }
    metrics::gauge!(PRODUCE_PURGATORY_REQUESTS).set(PRODUCE_WAITING.load(Ordering::Relaxed) as f64);
    metrics::gauge!(FETCH_PURGATORY_REQUESTS).set(FETCH_WAITING.load(Ordering::Relaxed) as f64);
    let storage = keel_storage::stats();
    metrics::gauge!(keel_storage::metrics::OPEN_SEGMENTS).set(storage.open_segments as f64);
    metrics::gauge!(keel_storage::metrics::MAPPED_BYTES).set(storage.mapped_bytes as f64);
    let cache = topics.page_cache();
    metrics::gauge!(LOG_PAGE_CACHE_WINDOW_BYTES).set(cache.held_bytes() as f64);
    metrics::gauge!(LOG_PAGE_CACHE_WINDOW_LIMIT_BYTES)
        .set(cache.limit().map_or(-1.0, |l| l as f64));
    let dir = topics.data_dir();
    let labels = [("dir", dir.display().to_string())];
    metrics::gauge!(LOG_DIR_USED_BYTES, &labels).set(used as f64);
    if let Some((capacity, available)) = fs_space(dir) {
        metrics::gauge!(LOG_DIR_CAPACITY_BYTES, &labels).set(capacity as f64);
        metrics::gauge!(LOG_DIR_AVAILABLE_BYTES, &labels).set(available as f64);
    }
}

/// (capacity, available to unprivileged users) of the file system holding `dir`.
fn fs_space(dir: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `path` is a valid NUL-terminated string and `st` a plain out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
    if rc != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    Some((st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::{FollowerStatus, ReplicaStatus};

    fn follower(leo: i64, fetch: u64, caught_up: u64) -> FollowerStatus {
        FollowerStatus {
            broker_id: 2,
            leo,
            last_fetch_ms: fetch,
            last_caught_up_ms: caught_up,
        }
    }

    #[test]
    fn follower_lag_table() {
        // (follower, leader LEO, log start, leader since, now) -> (records, caught-up age, fetch age)
        let cases = [
            (
                follower(100, 9_000, 9_000),
                100,
                0,
                1_000,
                10_000,
                (0, 1.0, 1.0),
            ),
            (
                follower(40, 9_500, 2_000),
                100,
                0,
                1_000,
                10_000,
                (60, 8.0, 0.5),
            ),
            // Not fetched yet in this leadership: from the log start, ages from its start.
            (follower(-1, 0, 0), 100, 30, 4_000, 10_000, (70, 6.0, 6.0)),
            // A follower ahead of what the leader knows never reports negative lag.
            (
                follower(120, 10_000, 10_000),
                100,
                0,
                0,
                10_000,
                (0, 0.0, 0.0),
            ),
        ];
        for (f, leo, start, since, now, (records, cu, fa)) in cases {
            let lag = follower_lag(&f, leo, start, since, now);
            assert_eq!(
                (lag.records, lag.caught_up_age_s, lag.fetch_age_s),
                (records, cu, fa),
                "{f:?}"
            );
            assert_eq!(lag.from, f.leo.max(start), "lag in bytes counts from here");
        }
    }

    #[test]
    fn only_a_leader_reports_partition_health() {
        let status = |is_leader, isr: &[i32], min| ReplicaStatus {
            is_leader,
            replicas: vec![1, 2, 3],
            isr: isr.to_vec(),
            min_insync_replicas: min,
            ..ReplicaStatus::default()
        };
        assert_eq!(
            partition_health(&status(true, &[1, 2, 3], 2)),
            (false, false)
        );
        assert_eq!(partition_health(&status(true, &[1, 2], 2)), (true, false));
        assert_eq!(partition_health(&status(true, &[1], 2)), (true, true));
        assert_eq!(partition_health(&status(false, &[1], 2)), (false, false));
    }
}
