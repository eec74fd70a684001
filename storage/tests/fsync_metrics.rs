//! Every fsync the crate issues is counted in `keel_log_fsyncs_total` and timed in
//! `keel_log_fsync_duration_seconds`.
//!
//! A thread-local recorder (`metrics::with_local_recorder`) sees only this test's calls: the
//! log's syncs all run on the calling thread.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::{batch, small_config};
use keel_storage::{metrics as names, Log};
use metrics::{
    Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

/// Counts what the storage crate records.
#[derive(Debug, Default)]
struct Probe {
    fsyncs: AtomicU64,
    durations: Mutex<Vec<f64>>,
}

impl CounterFn for Probe {
    fn increment(&self, value: u64) {
        self.fsyncs.fetch_add(value, Ordering::Relaxed);
    }

    fn absolute(&self, value: u64) {
        self.fsyncs.store(value, Ordering::Relaxed);
    }
}

impl HistogramFn for Probe {
    fn record(&self, value: f64) {
        self.durations.lock().unwrap().push(value);
    }
}

struct ProbeRecorder(Arc<Probe>);

impl Recorder for ProbeRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        if key.name() == names::FSYNCS_TOTAL {
            Counter::from_arc(self.0.clone())
        } else {
            Counter::noop() // e.g. producer-state snapshot writes: not this test's concern
        }
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        panic!("unexpected gauge {}", key.name())
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        if key.name() == names::FSYNC_DURATION_SECONDS {
            Histogram::from_arc(self.0.clone())
        } else {
            Histogram::noop() // e.g. the producer-state load time
        }
    }
}

#[test]
fn fsyncs_are_counted_and_timed_once_each() {
    assert_eq!(names::FSYNCS_TOTAL, "keel_log_fsyncs_total");
    assert_eq!(
        names::FSYNC_DURATION_SECONDS,
        "keel_log_fsync_duration_seconds"
    );
    assert_eq!(names::OPEN_SEGMENTS, "keel_log_open_segments");
    assert_eq!(names::MAPPED_BYTES, "keel_log_mapped_bytes");

    let dir = tempfile::tempdir().unwrap();
    let probe = Arc::new(Probe::default());
    let count = || probe.fsyncs.load(Ordering::Relaxed);
    metrics::with_local_recorder(&ProbeRecorder(probe.clone()), || {
        let log = Log::open(dir.path(), small_config()).unwrap();
        assert_eq!(count(), 1, "a new log: one directory fsync");
        log.append_as_leader(&batch(2, 150, 0, 1), 1).unwrap();
        assert_eq!(count(), 1, "appends do not sync");
        log.flush().unwrap();
        assert_eq!(count(), 2, "fdatasync of the active segment");
        log.flush().unwrap();
        assert_eq!(count(), 2, "nothing new to flush");
        log.checkpoint().unwrap();
        assert_eq!(count(), 7, "four checkpoint files and the directory");
        log.checkpoint().unwrap();
        assert_eq!(count(), 7, "nothing changed: nothing written");
        log.mark_for_rescan(0).unwrap();
        assert_eq!(count(), 9, "the mark and the directory");
        // Roll: seal (segment fdatasync), directory, then the checkpoint's index msync +
        // fsync of both index files, and the producer-state snapshot of the sealed segment
        // (the file and the directory). The checkpoint files already say what the roll
        // leaves (no new data), so they are not written again.
        log.roll().unwrap();
        assert_eq!(count(), 9 + 2 + 4 + 2);
        log.append_as_leader(&batch(2, 150, 1, 2), 1).unwrap();
        log.flush().unwrap();
        log.checkpoint().unwrap();
        assert_eq!(
            count(),
            17 + 1 + 5,
            "new data: a flush and the checkpoint files"
        );
        log.close().unwrap();
        assert!(count() > 20);
    });
    let durations = probe.durations.lock().unwrap();
    assert_eq!(durations.len() as u64, count(), "one timing per fsync");
    assert!(durations.iter().all(|d| (0.0..60.0).contains(d)));
}
