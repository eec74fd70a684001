//! Kill -9 a real writer process and check what recovery finds: every acknowledged batch is
//! present and byte-identical, nothing torn is visible, and appends continue.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{describe, read_all};
use keel_protocol::batch::{batches, set_base_offset, set_partition_leader_epoch};
use keel_storage::test_support::sized_batch;
use keel_storage::{Log, LogConfig};

const SEGMENT_BYTES: u64 = 64 * 1024;

/// Mirrors `expected_batch` in `src/bin/crash_writer.rs`, stamped as the log stores it.
fn expected_stored(base: i64) -> Vec<u8> {
    let count = 1 + (base % 3) as usize;
    let value_len = 20 + (base % 200) as usize;
    let mut b = sized_batch(count, value_len, base as u64, base);
    set_base_offset(&mut b, base);
    set_partition_leader_epoch(&mut b, 1);
    b
}

/// Runs the writer until it has acknowledged `acks` appends, SIGKILLs it, returns the last
/// acknowledged offset.
fn run_and_kill(dir: &std::path::Path, acks: usize) -> i64 {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel-storage-crash-writer"))
        .arg(dir)
        .arg(SEGMENT_BYTES.to_string())
        .arg("1000000")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn crash writer");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last_ack = -1;
    let mut seen = 0;
    while seen < acks && Instant::now() < deadline {
        match lines.next() {
            Some(Ok(line)) => {
                last_ack = line.trim_start_matches("ack ").parse().expect("ack line");
                seen += 1;
            }
            _ => break,
        }
    }
    let pid = child.id() as libc::pid_t;
    // SAFETY: plain syscall; `pid` is our own child, not yet reaped (we wait below).
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill failed");
    child.wait().expect("wait");
    // Acks printed before the kill landed still count.
    for line in lines.map_while(Result::ok) {
        last_ack = line.trim_start_matches("ack ").parse().expect("ack line");
        seen += 1;
    }
    assert!(seen >= acks, "writer acknowledged only {seen} appends");
    last_ack
}

fn verify(dir: &std::path::Path, last_ack: i64) -> Log {
    let log = Log::open(
        dir,
        LogConfig {
            segment_bytes: SEGMENT_BYTES,
            ..Default::default()
        },
    )
    .expect("reopen after kill");
    assert!(!log.recovery_info().clean_shutdown);
    assert!(
        log.log_end_offset() > last_ack,
        "acknowledged offset {last_ack} lost (leo {})",
        log.log_end_offset()
    );
    let data = read_all(&log, 0);
    let mut next = 0;
    for b in batches(&data) {
        let b = b.expect("no torn batch visible");
        assert_eq!(b.header.base_offset(), next);
        assert_eq!(
            b.bytes,
            &expected_stored(next)[..],
            "batch at offset {next} differs"
        );
        next = b.header.last_offset() + 1;
    }
    assert_eq!(next, log.log_end_offset());
    log
}

#[test]
fn kill_9_loses_no_acknowledged_batch() {
    let dir = tempfile::tempdir().unwrap();
    let first = run_and_kill(dir.path(), 300);
    drop(verify(dir.path(), first));
    // Second round continues the same log across more segments, then kill again.
    let second = run_and_kill(dir.path(), 300);
    assert!(second > first);
    let log = verify(dir.path(), second);
    assert!(log.segment_count() > 1, "the runs rolled segments");
    let leo = log.log_end_offset();
    let a = log
        .append_as_leader(&sized_batch(1, 10, 0, 0), 2)
        .expect("append after recovery");
    assert_eq!(a.base_offset, leo);
    assert_eq!(describe(&read_all(&log, leo)), vec![(leo, leo, 2)]);
}
