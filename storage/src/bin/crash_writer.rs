//! Test support for `storage/tests/crash.rs`, not a tool.
//!
//! `keel-storage-crash-writer <dir> <segment_bytes> <max_appends>` opens the log in `<dir>` with
//! `FlushPolicy::Always`, then appends batches in a loop. After each `flush` it prints
//! `ack <last offset>` to stdout: those batches are durable. The batch written at base offset
//! `b` is `expected_batch(b)` (deterministic, so the test can check every byte). The test
//! SIGKILLs the process at an arbitrary point; `max_appends` only bounds a forgotten process.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use keel_storage::test_support::sized_batch;
use keel_storage::{FlushPolicy, Log, LogConfig};

/// The batch the writer appends at base offset `base` (before stamping).
fn expected_batch(base: i64) -> Vec<u8> {
    let count = 1 + (base % 3) as usize;
    let value_len = 20 + (base % 200) as usize;
    sized_batch(count, value_len, base as u64, base)
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, segment_bytes, max_appends] = args.as_slice() else {
        return Err("usage: keel-storage-crash-writer <dir> <segment_bytes> <max_appends>".into());
    };
    let segment_bytes: u64 = segment_bytes
        .parse()
        .map_err(|e| format!("segment_bytes: {e}"))?;
    let max_appends: u64 = max_appends
        .parse()
        .map_err(|e| format!("max_appends: {e}"))?;
    let config = LogConfig {
        segment_bytes,
        flush_policy: FlushPolicy::Always,
        ..Default::default()
    };
    let log = Log::open(&PathBuf::from(dir), config).map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    for _ in 0..max_appends {
        let batch = expected_batch(log.log_end_offset());
        let info = log.append_as_leader(&batch, 1).map_err(|e| e.to_string())?;
        log.flush().map_err(|e| e.to_string())?;
        writeln!(out, "ack {}", info.last_offset).map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crash-writer: {e}");
            ExitCode::FAILURE
        }
    }
}
