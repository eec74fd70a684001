//! Open files are bounded by segments, not by index files: an index keeps its mapping and
//! no descriptor, so a broker with thousands of partitions stays inside its open-files limit.

mod common;

use common::{batch, describe, read_all, small_config};
use keel_storage::{Log, LogConfig};
use std::path::Path;

/// The files under `dir` this process holds descriptors for.
fn open_files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if let Ok(target) = std::fs::read_link(e.path()) {
            if target.starts_with(dir) {
                out.push(target.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_log_holds_one_descriptor_per_segment_and_none_per_index() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let config = LogConfig {
        segment_bytes: 64 << 10,
        ..small_config()
    };
    let log = Log::open(dir.path(), config.clone()).unwrap();
    for i in 0..40 {
        log.append_as_leader(&batch(8, 1000, i, i as i64), 1)
            .unwrap();
        log.flush().unwrap();
    }
    log.checkpoint().unwrap();
    let segments = log.segment_count();
    assert!(segments >= 4, "{segments} segments");
    let open = open_files_under(dir.path());
    assert!(
        open.iter().all(|f| f.ends_with(".log")),
        "only segment files stay open: {open:?}"
    );
    assert_eq!(open.len(), segments, "{open:?}");
    // Indexes still answer lookups, across a truncation (which punches their tails) and a
    // reopen (which resizes and trims them).
    let cut = log.log_end_offset() / 2;
    log.truncate_to(cut).unwrap();
    drop(log);
    let log = Log::open(dir.path(), config).unwrap();
    assert_eq!(log.log_end_offset(), cut);
    let all = read_all(&log, cut / 2);
    assert_eq!(describe(&all).last().map(|d| d.1), Some(cut - 1));
}
