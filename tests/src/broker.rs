//! One `keel broker` process for a test: its own temp data dir, stdout parsed for the ready
//! line, stderr kept in a log file, killed (by its pid) when dropped.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::command::{keel_bin, tail};

/// How long a broker may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a broker may take to exit after SIGTERM.
pub const SIGTERM_TIMEOUT: Duration = Duration::from_secs(20);

/// How to start a [`TestBroker`].
#[derive(Debug, Clone)]
pub struct BrokerOpts {
    pub node_id: i32,
    /// Broker properties passed as `--set key=value`.
    pub settings: Vec<(String, String)>,
    /// Environment variables for the process.
    pub env: Vec<(String, String)>,
}

impl Default for BrokerOpts {
    fn default() -> Self {
        BrokerOpts {
            node_id: 1,
            settings: Vec::new(),
            env: Vec::new(),
        }
    }
}

impl BrokerOpts {
    pub fn set(mut self, key: &str, value: &str) -> Self {
        self.settings.push((key.to_string(), value.to_string()));
        self
    }
}

/// A running (or stopped) broker process over a temp directory.
pub struct TestBroker {
    opts: BrokerOpts,
    // Field order matters: the child is killed in `Drop` before the directory goes away.
    child: Option<Child>,
    kafka: SocketAddr,
    metrics: SocketAddr,
    starts: u32,
    dir: tempfile::TempDir,
}

impl TestBroker {
    /// Starts a broker on ephemeral ports and waits for its ready line.
    pub fn start(opts: BrokerOpts) -> TestBroker {
        Self::start_over(opts, |_| {})
    }

    /// [`TestBroker::start`] over a data dir that `prepare` filled first.
    pub fn start_over(opts: BrokerOpts, prepare: impl FnOnce(&std::path::Path)) -> TestBroker {
        let mut b = Self::unstarted(opts);
        prepare(&b.data_dir());
        b.spawn(0, 0).unwrap_or_else(|e| panic!("{e}"));
        b
    }

    /// Starts several brokers at once and waits for all their ready lines: nodes that
    /// become ready only together (controller voters, which need a quorum) start this way.
    /// The processes are spawned from this thread (they die with it); only the waits run
    /// on threads of their own.
    pub fn start_all(opts: Vec<BrokerOpts>) -> Vec<TestBroker> {
        let mut brokers: Vec<TestBroker> = opts.into_iter().map(Self::unstarted).collect();
        let launched: Vec<(Receiver<String>, String)> = brokers
            .iter_mut()
            .map(|b| b.launch(0, 0).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        let outcomes: Vec<Result<(), String>> = std::thread::scope(|scope| {
            let waits: Vec<_> = brokers
                .iter_mut()
                .zip(launched)
                .map(|(b, (lines, cmdline))| scope.spawn(move || b.finish_start(&lines, &cmdline)))
                .collect();
            waits
                .into_iter()
                .map(|w| w.join().unwrap_or_else(|_| Err("the wait panicked".into())))
                .collect()
        });
        for o in outcomes {
            o.unwrap_or_else(|e| panic!("{e}"));
        }
        brokers
    }

    fn unstarted(opts: BrokerOpts) -> TestBroker {
        let dir = tempfile::Builder::new()
            .prefix("keel-test-")
            .tempdir()
            .expect("create temp dir");
        std::fs::create_dir_all(dir.path().join("data")).expect("create data dir");
        TestBroker {
            opts,
            child: None,
            kafka: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics: SocketAddr::from(([127, 0, 0, 1], 0)),
            starts: 0,
            dir,
        }
    }

    /// `host:port` of the Kafka listener.
    pub fn bootstrap(&self) -> String {
        self.kafka.to_string()
    }

    pub fn kafka_addr(&self) -> SocketAddr {
        self.kafka
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The file that collects the broker's stderr over all its starts.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("broker.stderr.log")
    }

    /// The last `max` bytes of the broker's stderr.
    pub fn stderr_tail(&self, max: usize) -> String {
        let bytes = std::fs::read(self.log_path()).unwrap_or_default();
        tail(&bytes, max)
    }

    /// Process id of the running broker.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("broker is not running").id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("broker is not running");
        // `Child::kill` sends SIGKILL to this child's pid.
        let _ = child.kill();
        child.wait().expect("wait for killed broker")
    }

    /// SIGTERM, then wait for a clean exit; panics (after SIGKILL) if it takes longer than
    /// [`SIGTERM_TIMEOUT`].
    pub fn sigterm_and_wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("broker is not running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) with a pid we spawned and have not reaped yet (so it was not reused).
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
        let start = Instant::now();
        for _ in 0..(SIGTERM_TIMEOUT.as_millis() / 20 + 2) {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if start.elapsed() > SIGTERM_TIMEOUT {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "broker did not exit within {SIGTERM_TIMEOUT:?} of SIGTERM; stderr tail:\n{}",
            self.stderr_tail(4000)
        );
    }

    /// Starts the broker again on the same data dir. Asks for the same ports as before; if
    /// that start fails (e.g. the port was taken meanwhile), falls back to ephemeral ports.
    /// A running broker is stopped with SIGTERM first.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.sigterm_and_wait();
        }
        let (k, m) = (self.kafka.port(), self.metrics.port());
        if let Err(first) = self.spawn(k, m) {
            eprintln!("restart on the previous ports failed, retrying on ephemeral ports: {first}");
            self.spawn(0, 0).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// Spawns `keel broker` and waits for `KEEL_READY`; `Err` carries the stderr tail.
    fn spawn(&mut self, kafka_port: u16, metrics_port: u16) -> Result<(), String> {
        let (lines, cmdline) = self.launch(kafka_port, metrics_port)?;
        self.finish_start(&lines, &cmdline)
    }

    /// Spawns `keel broker` (from the calling thread, which it dies with); returns its
    /// stdout lines and command line.
    fn launch(
        &mut self,
        kafka_port: u16,
        metrics_port: u16,
    ) -> Result<(Receiver<String>, String), String> {
        self.starts += 1;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open broker log");
        let mut cmd = Command::new(keel_bin());
        cmd.arg("broker")
            .args(["--node-id", &self.opts.node_id.to_string()])
            .args(["--listeners", &format!("127.0.0.1:{kafka_port}")])
            .args(["--metrics-listener", &format!("127.0.0.1:{metrics_port}")])
            .arg("--data-dir")
            .arg(self.data_dir());
        for (k, v) in &self.opts.settings {
            cmd.args(["--set", &format!("{k}={v}")]);
        }
        cmd.envs(self.opts.env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        die_with_parent(&mut cmd);
        let cmdline = format!("{cmd:?}");
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {cmdline}: {e}"))?;
        let lines = stdout_lines(&mut child);
        // Stored now, so `Drop` kills it on every failure below.
        self.child = Some(child);
        Ok((lines, cmdline))
    }

    /// Waits for the ready line of the process [`Self::launch`] started.
    fn finish_start(&mut self, lines: &Receiver<String>, cmdline: &str) -> Result<(), String> {
        match self.wait_ready(lines) {
            Ok((kafka, metrics)) => {
                self.kafka = kafka;
                self.metrics = metrics;
                Ok(())
            }
            Err(why) => {
                if let Some(mut c) = self.child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                Err(format!(
                    "broker start #{} ({cmdline}) failed: {why}\n--- broker stderr (tail) ---\n{}",
                    self.starts,
                    self.stderr_tail(6000)
                ))
            }
        }
    }

    fn wait_ready(&mut self, lines: &Receiver<String>) -> Result<(SocketAddr, SocketAddr), String> {
        let node_id = self.opts.node_id;
        wait_for_ready_line(&mut self.child, lines, |line| parse_ready(line, node_id))
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- broker stderr ({}) tail ---\n{}",
                self.log_path().display(),
                self.stderr_tail(6000)
            );
        }
    }
}

/// Reads the node's stdout lines until `parse` recognises its ready line, the process
/// exits, or [`READY_TIMEOUT`] passes. `parse` returns `None` for other lines.
pub(crate) fn wait_for_ready_line<T>(
    child: &mut Option<Child>,
    lines: &Receiver<String>,
    mut parse: impl FnMut(&str) -> Option<Result<T, String>>,
) -> Result<T, String> {
    let start = Instant::now();
    let mut seen = Vec::new();
    for _ in 0..10_000 {
        let left = READY_TIMEOUT.saturating_sub(start.elapsed());
        if left.is_zero() {
            break;
        }
        match lines.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(line) => {
                if let Some(ready) = parse(&line) {
                    return ready;
                }
                seen.push(line);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                let status = child.as_mut().and_then(|c| c.wait().ok());
                return Err(format!(
                    "stdout closed before the ready line (exit status {status:?}); \
                     stdout was {seen:?}"
                ));
            }
        }
        if let Some(Ok(Some(status))) = child.as_mut().map(|c| c.try_wait()) {
            // Give the reader a moment to deliver a last line, then report.
            if let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
                if let Some(ready) = parse(&line) {
                    return ready;
                }
                seen.push(line);
            }
            return Err(format!(
                "process exited with {status} before the ready line; stdout was {seen:?}"
            ));
        }
    }
    Err(format!(
        "no `KEEL_READY` line within {READY_TIMEOUT:?}; stdout was {seen:?}"
    ))
}

/// Makes the kernel SIGKILL the broker when the thread that spawned it exits, so a test
/// binary killed from outside (timeout, Ctrl-C), where no `Drop` runs, leaves no broker
/// behind. The spawning thread is the test's own thread, which outlives its `TestBroker`.
pub(crate) fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
    // which is async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Parses `KEEL_READY node=<id> kafka=<host:port> metrics=<host:port>`.
///
/// `Some(Err)` when it is a ready line that does not match what was asked for.
fn parse_ready(line: &str, node_id: i32) -> Option<Result<(SocketAddr, SocketAddr), String>> {
    let rest = line.trim().strip_prefix("KEEL_READY ")?;
    let mut node = None;
    let mut kafka = None;
    let mut metrics = None;
    for field in rest.split_whitespace() {
        match field.split_once('=') {
            Some(("node", v)) => node = v.parse::<i32>().ok(),
            Some(("kafka", v)) => kafka = v.parse::<SocketAddr>().ok(),
            Some(("metrics", v)) => metrics = v.parse::<SocketAddr>().ok(),
            _ => {}
        }
    }
    Some(match (node, kafka, metrics) {
        (Some(n), Some(k), Some(m)) if n == node_id && k.port() != 0 && m.port() != 0 => Ok((k, m)),
        _ => Err(format!(
            "malformed ready line {line:?} (node {node_id} expected, ports must not be 0)"
        )),
    })
}

/// Sends each stdout line of `child` to the returned channel. The thread keeps draining
/// after the receiver is gone, so the broker never blocks on a full pipe; it ends when the
/// broker closes its stdout.
pub(crate) fn stdout_lines(child: &mut Child) -> Receiver<String> {
    let out = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(out);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let _ = tx.send(String::from_utf8_lossy(&buf).trim_end().to_string());
                }
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_ready_line() {
        let (k, m) = parse_ready(
            "KEEL_READY node=1 kafka=127.0.0.1:9092 metrics=127.0.0.1:9100",
            1,
        )
        .unwrap()
        .unwrap();
        assert_eq!(k, "127.0.0.1:9092".parse().unwrap());
        assert_eq!(m.port(), 9100);
        assert!(parse_ready("starting", 1).is_none());
        assert!(
            parse_ready("KEEL_READY node=2 kafka=127.0.0.1:1 metrics=127.0.0.1:2", 1)
                .unwrap()
                .is_err()
        );
        assert!(
            parse_ready("KEEL_READY node=1 kafka=127.0.0.1:0 metrics=127.0.0.1:2", 1)
                .unwrap()
                .is_err()
        );
    }
}
