//! Running child processes with stdin, captured output and a timeout; the `keel` CLI helper.

use std::fmt;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Default time limit for one CLI invocation.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest pause between two polls of a running child.
const POLL: Duration = Duration::from_millis(20);

/// The finished process: exit status and everything it printed.
pub struct CmdOutput {
    pub cmdline: String,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl CmdOutput {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics with the command line and its output unless it exited 0.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(self.success(), "command failed: {self}");
        self
    }

    /// Panics with the command line and its output if it exited 0.
    #[track_caller]
    pub fn assert_failure(&self) -> &Self {
        assert!(!self.success(), "command unexpectedly succeeded: {self}");
        self
    }
}

impl fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` exited with {}\n--- stdout (tail) ---\n{}\n--- stderr (tail) ---\n{}",
            self.cmdline,
            self.status,
            tail(&self.stdout, 4000),
            tail(&self.stderr, 4000)
        )
    }
}

impl fmt::Debug for CmdOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The last `max` bytes of `bytes` as (lossy) text.
pub fn tail(bytes: &[u8], max: usize) -> String {
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// Path of the `keel` CLI built for the tests (`keel-testbin`).
///
/// Cargo builds the crate's bin targets before its integration tests and puts them in the
/// target directory, one level above the test executables (`target/debug/deps/..`).
/// `env!("CARGO_BIN_EXE_keel-testbin")` only exists while compiling an integration test, not
/// this library, so integration tests may pass it explicitly through `KEEL_TESTBIN`; otherwise
/// the path is derived from the running test executable.
pub fn keel_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KEEL_TESTBIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut candidates = Vec::new();
    for dir in exe.ancestors().skip(1).take(3) {
        candidates.push(dir.join(format!("keel-testbin{}", std::env::consts::EXE_SUFFIX)));
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "keel-testbin not found near {} (looked at {candidates:?}); \
                 run the suites with `cargo test -p keel-tests`",
                exe.display()
            )
        })
}

/// Runs the `keel` CLI with `args` and optional stdin, at most [`CLI_TIMEOUT`].
pub fn keel(args: &[&str], stdin: Option<&[u8]>) -> CmdOutput {
    let mut cmd = Command::new(keel_bin());
    cmd.args(args);
    run(&mut cmd, stdin, CLI_TIMEOUT)
}

/// Runs `cmd` to completion with piped stdin/stdout/stderr; kills it and panics after
/// `timeout`.
pub fn run(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> CmdOutput {
    let cmdline = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = ChildGuard(
        cmd.spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmdline}: {e}")),
    );
    let stdout = drain(child.0.stdout.take().expect("stdout is piped"));
    let stderr = drain(child.0.stderr.take().expect("stderr is piped"));
    let writer = stdin.map(|input| {
        let mut pipe = child.0.stdin.take().expect("stdin is piped");
        let input = input.to_vec();
        std::thread::spawn(move || {
            // A child that exits early closes the pipe; that is not the writer's concern.
            let _ = pipe.write_all(&input);
        })
    });
    let start = Instant::now();
    let max_polls = timeout.as_millis() / POLL.as_millis() + 2;
    let mut status = None;
    for _ in 0..max_polls {
        if let Some(s) = child.0.try_wait().expect("try_wait") {
            status = Some(s);
            break;
        }
        if start.elapsed() >= timeout {
            break;
        }
        std::thread::sleep(POLL);
    }
    let timed_out = status.is_none();
    let status = match status {
        Some(s) => s,
        None => child.kill_and_reap(),
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    let out = CmdOutput {
        cmdline,
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    assert!(!timed_out, "timed out after {timeout:?}: {out}");
    out
}

/// Reads a pipe to its end on a thread.
fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Owns a child process and kills it (by its own handle, so by its pid) when dropped early.
struct ChildGuard(Child);

impl ChildGuard {
    fn kill_and_reap(&mut self) -> ExitStatus {
        let _ = self.0.kill();
        self.0.wait().expect("wait after kill")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.kill_and_reap();
        }
    }
}
