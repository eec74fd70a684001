//! Replica logs read straight from the brokers' segment files, and the checks a healed
//! cluster must pass on them and on each broker's resources.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use keel::cmd::cluster::metrics::{parse_exposition, Sample};

/// One batch as stored: its offsets and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBatch {
    pub base_offset: i64,
    pub last_offset: i64,
    pub bytes: Vec<u8>,
}

/// The batches of the replica in `dir`, in order, up to the first bytes that do not parse
/// (a discarded or torn tail). Reading a running broker's files is fine: they are appended
/// with writes, and what a write put there is visible.
pub fn stored_batches(dir: &Path) -> Result<Vec<StoredBatch>, String> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("read {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segments.sort();
    let mut out = Vec::new();
    for seg in segments {
        let data = std::fs::read(&seg).map_err(|e| format!("read {}: {e}", seg.display()))?;
        for b in keel_protocol::batch::batches(&data).map_while(Result::ok) {
            out.push(StoredBatch {
                base_offset: b.header.base_offset(),
                last_offset: b.header.last_offset(),
                bytes: b.bytes.to_vec(),
            });
        }
    }
    Ok(out)
}

/// Compares the replicas of one partition below `hw`: every replica must hold the same
/// batches, byte for byte. `replicas` maps broker id → replica dir. Returns the problems.
pub fn compare_committed(
    partition: i32,
    hw: i64,
    replicas: &BTreeMap<i32, PathBuf>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut reference: Option<(i32, Vec<StoredBatch>)> = None;
    for (&broker, dir) in replicas {
        let batches = match stored_batches(dir) {
            Ok(b) => b,
            Err(e) => {
                problems.push(format!("partition {partition}, broker {broker}: {e}"));
                continue;
            }
        };
        let committed: Vec<StoredBatch> =
            batches.into_iter().filter(|b| b.last_offset < hw).collect();
        let covered = committed.last().map_or(0, |b| b.last_offset + 1);
        if covered < hw {
            problems.push(format!(
                "partition {partition}, broker {broker}: holds offsets up to {covered}, the HW is {hw}"
            ));
        }
        match &reference {
            None => reference = Some((broker, committed)),
            Some((ref_broker, ref_batches)) => {
                if let Some(diff) = first_difference(ref_batches, &committed) {
                    problems.push(format!(
                        "partition {partition}: broker {broker} differs from broker {ref_broker}: {diff}"
                    ));
                }
            }
        }
    }
    problems
}

fn first_difference(a: &[StoredBatch], b: &[StoredBatch]) -> Option<String> {
    for (x, y) in a.iter().zip(b) {
        if x.base_offset != y.base_offset || x.last_offset != y.last_offset {
            return Some(format!(
                "batch {}..={} against {}..={}",
                x.base_offset, x.last_offset, y.base_offset, y.last_offset
            ));
        }
        if x.bytes != y.bytes {
            let at = x.bytes.iter().zip(&y.bytes).position(|(p, q)| p != q);
            return Some(format!(
                "batch at offset {}: bytes differ (lengths {} and {}, first at byte {at:?})",
                x.base_offset,
                x.bytes.len(),
                y.bytes.len()
            ));
        }
    }
    (a.len() != b.len()).then(|| format!("{} batches against {}", a.len(), b.len()))
}

/// The partition replica dirs under a broker's data dir, by name (`<topic>-<partition>`);
/// dirs being deleted (`*-delete`) are listed separately.
pub fn replica_dirs(data_dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let (mut live, mut deleting) = (Vec::new(), Vec::new());
    for e in std::fs::read_dir(data_dir).into_iter().flatten().flatten() {
        let p = e.path();
        if !p.is_dir() {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with("-delete") {
            deleting.push(p);
        } else if name == "__cluster_metadata-0" {
            // A controller voter's metadata log: not a partition replica.
            continue;
        } else if name
            .rsplit_once('-')
            .is_some_and(|(_, n)| n.parse::<i32>().is_ok())
        {
            live.push(p);
        }
    }
    live.sort();
    deleting.sort();
    (live, deleting)
}

/// Links in `/proc/<pid>/fd` and mappings in `/proc/<pid>/maps` of files that are deleted:
/// a released segment must not stay open or mapped.
pub fn deleted_files_held(pid: u32) -> Vec<String> {
    let mut held = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(e.path()) {
            let t = target.to_string_lossy();
            if t.ends_with(" (deleted)") && t.starts_with('/') {
                held.push(format!("fd {}: {t}", e.file_name().to_string_lossy()));
            }
        }
    }
    // The broker's own executable is not a data file: a rebuild while a run goes on deletes
    // the binary the running brokers were started from.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    for line in maps.lines() {
        if (!exe.is_empty() && line.ends_with(exe.as_str())) || line.contains("/memfd:") {
            continue;
        }
        if line.ends_with(" (deleted)") && line.contains('/') {
            held.push(format!("map: {line}"));
        }
    }
    held
}

/// A broker's resources that return to a baseline once faults are healed and clients are
/// gone: its async tasks (the `keel_runtime_tasks` gauge) and its file descriptors outside
/// its data dir (sockets, the event loop, its log). Descriptors of segment and index files
/// follow the data, which grows, so they are checked against the files instead
/// ([`deleted_files_held`], [`accounting_problems`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resources {
    pub tasks: f64,
    pub other_fds: usize,
}

/// [`Resources`] of the broker process `pid` with data dir `data_dir` and metrics text
/// `metrics`; `None` if the gauge is missing.
pub fn resources(pid: u32, data_dir: &Path, metrics: &str) -> Option<Resources> {
    let samples = parse_exposition(metrics).ok()?;
    let tasks = samples
        .iter()
        .find(|s| s.name == "keel_runtime_tasks")?
        .value;
    let data_dir = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_path_buf());
    let other_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|t| !t.starts_with(&data_dir))
        .count();
    Some(Resources { tasks, other_fds })
}

fn gauge(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

/// Differences between a broker's storage gauges and its files: open segments against
/// `.log` files, partition sizes against their bytes on disk, and no `*-delete` dir left.
pub fn accounting_problems(broker: i32, metrics: &str, data_dir: &Path) -> Vec<String> {
    let samples = match parse_exposition(metrics) {
        Ok(s) => s,
        Err(e) => return vec![format!("broker {broker}: metrics do not parse: {e}")],
    };
    let (live, deleting) = replica_dirs(data_dir);
    let mut problems = Vec::new();
    if !deleting.is_empty() {
        problems.push(format!(
            "broker {broker}: dirs still being deleted: {deleting:?}"
        ));
    }
    let (mut segments, mut bytes) = (0u64, 0u64);
    for dir in &live {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "log") {
                segments += 1;
                bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    // The gauge counts every open log, a voter's metadata log too.
    let metadata_segments = std::fs::read_dir(data_dir.join("__cluster_metadata-0"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .count() as u64;
    let segments = segments + metadata_segments;
    let open = gauge(&samples, "keel_log_open_segments") as u64;
    if open != segments {
        problems.push(format!(
            "broker {broker}: keel_log_open_segments is {open}, {segments} segment files on disk"
        ));
    }
    let sized = gauge(&samples, "keel_partition_size_bytes") as u64;
    if sized != bytes {
        problems.push(format!(
            "broker {broker}: keel_partition_size_bytes sums to {sized}, segment files hold {bytes} bytes"
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(base: i64, last: i64, fill: u8) -> StoredBatch {
        StoredBatch {
            base_offset: base,
            last_offset: last,
            bytes: vec![fill; 8],
        }
    }

    #[test]
    fn differences_are_named() {
        let a = [batch(0, 4, 1), batch(5, 9, 2)];
        assert_eq!(first_difference(&a, &a), None);
        assert!(first_difference(&a, &[batch(0, 4, 1), batch(5, 9, 3)])
            .unwrap()
            .contains("offset 5: bytes differ"));
        assert!(first_difference(&a, &[batch(0, 4, 1)])
            .unwrap()
            .contains("2 batches against 1"));
        assert!(first_difference(&a, &[batch(0, 3, 1)])
            .unwrap()
            .contains("0..=4 against 0..=3"));
    }

    #[test]
    fn replica_dirs_split_live_and_deleting() {
        let dir = tempfile::tempdir().unwrap();
        for d in [
            "t-0",
            "t-1",
            "t-0.abc-delete",
            "meta",
            "__cluster_metadata-0",
        ] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("x-3"), b"").unwrap();
        let (live, deleting) = replica_dirs(dir.path());
        let names = |v: &[PathBuf]| -> Vec<String> {
            v.iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(names(&live), ["t-0", "t-1"]);
        assert_eq!(names(&deleting), ["t-0.abc-delete"]);
    }

    #[test]
    fn this_process_holds_no_deleted_file_after_closing_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("held");
        let f = std::fs::File::create(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let pid = std::process::id();
        assert!(deleted_files_held(pid).iter().any(|h| h.contains("held")));
        drop(f);
        assert!(!deleted_files_held(pid).iter().any(|h| h.contains("held")));
    }
}
