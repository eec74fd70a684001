//! Looking at a node from the outside: its metrics text, its data dir, its open files.

use std::path::Path;

/// Sum of all samples of `name` (any labels) in Prometheus text; 0 when absent.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                return None;
            }
            l.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

/// Every file and directory below `dir` with its length, one per line, sorted (for a
/// failure message or kept evidence).
pub fn list_tree(dir: &Path) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let len = e.metadata().map(|m| m.len()).unwrap_or(0);
        out.push_str(&format!("{} {len}\n", path.display()));
        if path.is_dir() {
            out.push_str(&list_tree(&path));
        }
    }
    out
}

/// Open descriptors of `pid` whose target path contains `needle`.
pub fn open_fds_matching(pid: u32, needle: &str) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.display().to_string())
        .filter(|p| p.contains(needle))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum_reads_counters_with_and_without_labels() {
        let text = "# TYPE keel_replica_truncations_total counter\n\
                    keel_replica_truncations_total 3\n\
                    keel_replica_truncations_total_other 9\n\
                    keel_replica_truncations_total{topic=\"a\"} 2\n";
        assert_eq!(metric_sum(text, "keel_replica_truncations_total"), 5.0);
        assert_eq!(metric_sum(text, "absent"), 0.0);
    }
}
