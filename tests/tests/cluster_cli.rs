//! `keel cluster start` as a user runs it (three brokers that are also the three controller
//! voters), broken with `keel cluster node ...` from "another terminal" while a producer
//! streams acks=all: a killed leader is reported and replaced
//! while the supervisor and the other nodes keep running, `node start` brings it back into
//! the ISR, a paused follower leaves the ISR and rejoins when resumed, a node killed from
//! outside is reported with its signal, and nothing acknowledged is lost.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use keel::cmd::cluster::{ClusterFile, NodeState};
use keel_client::{Admin, ClientConfig, Consumer, ConsumerConfig, Offset};
use keel_tests::load::steady_producer;
use keel_tests::{keel, runtime, wait_for, wait_until, CmdOutput};

const TOPIC: &str = "cli-failover";
const TIMEOUT: Duration = Duration::from_secs(60);

/// A `keel cluster start` child on free ports; SIGKILLed (by its pid) when dropped, which
/// its nodes follow (they get SIGTERM when their parent dies).
struct Supervisor {
    child: Child,
    dir: tempfile::TempDir,
    base_port: u16,
    stderr: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `count` consecutive ports that are free now.
fn free_ports(count: u16) -> u16 {
    for attempt in 0..200u32 {
        let base = 20_000 + ((std::process::id() * 7919 + attempt * 104_729) % 40_000) as u16;
        let all_free =
            (0..count).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no {count} consecutive free ports");
}

impl Supervisor {
    fn start() -> Supervisor {
        let dir = tempfile::Builder::new()
            .prefix("keel-cluster-cli-")
            .tempdir()
            .unwrap();
        // 3 voters' controller listeners, 3 Kafka listeners, then the metrics listeners
        // (dedicated controller 1's slot, unused, and brokers 1..=3), in one range.
        let base = free_ports(10);
        let mut child = Command::new(keel_tests::keel_bin())
            .args(["cluster", "start", "--brokers", "3"])
            .arg("--data-dir")
            .arg(dir.path().join("c"))
            .args(["--controller-port", &(base + 2).to_string()])
            .args(["--base-port", &(base + 3).to_string()])
            .args(["--metrics-base-port", &(base + 6).to_string()])
            .args(["--set", "broker.session.timeout.ms=1500"])
            .args(["--set", "broker.heartbeat.interval.ms=200"])
            .args(["--set", "replica.lag.time.max.ms=2000"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keel cluster start");
        let (tx, stderr) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let out = child.stdout.take().unwrap();
        let (ready_tx, ready) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.starts_with("Ctrl-C stops the cluster") {
                    let _ = ready_tx.send(());
                }
            }
        });
        let mut s = Supervisor {
            child,
            dir,
            base_port: base,
            stderr,
            seen: Vec::new(),
        };
        if ready.recv_timeout(TIMEOUT).is_err() {
            s.drain();
            panic!("the cluster did not start: {:?}", s.seen);
        }
        s
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("c")
    }

    fn bootstrap(&self) -> String {
        (0..3)
            .map(|i| format!("127.0.0.1:{}", self.base_port + 3 + i))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn node(&self, action: &str, id: i32) -> CmdOutput {
        let dir = self.data_dir();
        keel(
            &[
                "cluster",
                "node",
                action,
                &id.to_string(),
                "--data-dir",
                dir.to_str().unwrap(),
            ],
            None,
        )
    }

    fn drain(&mut self) {
        while let Ok(line) = self.stderr.try_recv() {
            self.seen.push(line);
        }
    }

    /// Waits until the supervisor has printed a line containing `needle`.
    fn wait_said(&mut self, needle: &str) {
        wait_until(&format!("the supervisor says {needle:?}"), TIMEOUT, || {
            self.drain();
            self.seen.iter().any(|l| l.contains(needle))
        });
    }

    fn file(&self) -> ClusterFile {
        ClusterFile::read(&self.data_dir().join("cluster.json"))
            .unwrap()
            .expect("cluster.json")
    }

    fn still_supervising(&mut self) {
        assert!(
            matches!(self.child.try_wait(), Ok(None)),
            "keel cluster start exited"
        );
    }
}

fn partition(s: &Supervisor) -> Option<(i32, Vec<i32>)> {
    let bootstrap = s.bootstrap();
    runtime().block_on(async move {
        let mut config = ClientConfig::new(&bootstrap);
        config.request_timeout = Duration::from_secs(3);
        config.connect_timeout = Duration::from_secs(3);
        let admin = Admin::new(config).await.ok()?;
        let d = admin.describe_topics(&[TOPIC.to_string()]).await.ok()?;
        let p = d.first()?.partitions.first()?.clone();
        Some((p.leader, p.isr))
    })
}

/// The partition's end offset (its high watermark), as a consumer sees it.
fn end_offset(s: &Supervisor) -> Option<i64> {
    let bootstrap = s.bootstrap();
    runtime().block_on(async move {
        let mut config = ClientConfig::new(&bootstrap);
        config.request_timeout = Duration::from_secs(3);
        config.connect_timeout = Duration::from_secs(3);
        let admin = Admin::new(config).await.ok()?;
        admin.list_offsets(TOPIC, 0, Offset::Latest).await.ok()
    })
}

fn read_all(bootstrap: &str, end: i64) -> BTreeMap<i64, String> {
    runtime().block_on(async {
        let mut c = Consumer::new(ClientConfig::new(bootstrap), ConsumerConfig::default())
            .await
            .unwrap();
        c.assign(TOPIC, &[0], Offset::Earliest).await.unwrap();
        let mut got = BTreeMap::new();
        for _ in 0..2_000 {
            if c.position(TOPIC, 0).unwrap_or(0) >= end {
                break;
            }
            if let Ok(Ok(records)) = tokio::time::timeout(Duration::from_secs(5), c.poll()).await {
                for r in records {
                    let v = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
                    got.insert(r.offset, v);
                }
            }
        }
        got
    })
}

fn state_of(s: &Supervisor, id: i32) -> (NodeState, Option<String>) {
    let f = s.file();
    let n = f.nodes.iter().find(|n| n.id == id).unwrap();
    (n.state, n.exit.clone())
}

fn kill9_from_outside(pid: u32) {
    // SAFETY: kill(2) on a node process the supervisor reported running just now; it is
    // its unreaped child, so the pid is still that node's.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0);
}

#[test]
fn a_local_cluster_survives_its_nodes_being_broken() {
    let mut s = Supervisor::start();
    let out = keel(
        &[
            "topic",
            "create",
            TOPIC,
            "--partitions",
            "1",
            "--replication-factor",
            "3",
            "--bootstrap-server",
            &s.bootstrap(),
        ],
        None,
    );
    out.assert_success();
    wait_until(
        "the partition has a leader and an ISR of 3",
        TIMEOUT,
        || partition(&s).is_some_and(|(l, isr)| l > 0 && isr.len() == 3),
    );

    let rt = runtime();
    let stop = Arc::new(AtomicBool::new(false));
    let producer = rt.spawn(steady_producer(s.bootstrap(), TOPIC, stop.clone()));

    wait_until("acks=all records flow", TIMEOUT, || {
        end_offset(&s).is_some_and(|e| e > 50)
    });
    // Kill the leader through the supervisor: the others keep serving, a new leader comes.
    let (leader, _) = partition(&s).unwrap();
    s.node("kill", leader).assert_success();
    s.wait_said(&format!(
        "node {leader} killed (killed by signal 9 (SIGKILL))"
    ));
    assert_eq!(state_of(&s, leader).0, NodeState::Down);
    let status = keel(
        &[
            "cluster",
            "status",
            "--data-dir",
            s.data_dir().to_str().unwrap(),
        ],
        None,
    );
    status.assert_success();
    assert!(
        status
            .stdout_str()
            .contains("down (killed by signal 9 (SIGKILL))"),
        "{status}"
    );
    let new_leader = wait_for("a new leader", TIMEOUT, || {
        partition(&s).and_then(|(l, _)| (l > 0 && l != leader).then_some(l))
    });
    s.still_supervising();
    let at_failover = end_offset(&s).unwrap_or(0);
    wait_until("production continues on the new leader", TIMEOUT, || {
        end_offset(&s).is_some_and(|e| e > at_failover + 50)
    });

    // Back with the same ports and data: it rejoins the ISR.
    let started = s.node("start", leader);
    started.assert_success();
    assert!(started.stdout_str().contains("is up again"), "{started}");
    wait_until("the restarted node is back in the ISR", TIMEOUT, || {
        partition(&s).is_some_and(|(_, isr)| isr.len() == 3)
    });

    // A paused follower leaves the ISR; resumed, it comes back.
    let (now_leader, _) = partition(&s).unwrap();
    let follower = (1..=3).find(|&b| b != now_leader).unwrap();
    s.node("pause", follower).assert_success();
    assert_eq!(state_of(&s, follower).0, NodeState::Paused);
    s.node("pause", follower).assert_failure();
    wait_until("the paused follower left the ISR", TIMEOUT, || {
        partition(&s).is_some_and(|(_, isr)| !isr.contains(&follower))
    });
    s.node("resume", follower).assert_success();
    wait_until("the resumed follower rejoined the ISR", TIMEOUT, || {
        partition(&s).is_some_and(|(_, isr)| isr.len() == 3)
    });

    // A node killed from outside the supervisor is reported with its signal.
    let victim = (1..=3)
        .find(|&b| b != new_leader && b != follower)
        .unwrap_or(follower);
    let pid = s.file().nodes.iter().find(|n| n.id == victim).unwrap().pid;
    kill9_from_outside(pid);
    s.wait_said(&format!(
        "node {victim} exited (killed by signal 9 (SIGKILL))"
    ));
    wait_until("cluster.json shows it down", TIMEOUT, || {
        state_of(&s, victim).0 == NodeState::Down
    });
    s.node("stop", victim).assert_failure();
    s.node("start", victim).assert_success();
    s.node("start", victim).assert_failure();
    wait_until("every node back in the ISR", TIMEOUT, || {
        partition(&s).is_some_and(|(_, isr)| isr.len() == 3)
    });
    s.still_supervising();

    stop.store(true, Ordering::Release);
    let (acked, failures) = rt.block_on(producer).unwrap();
    assert!(
        acked.len() > 100,
        "only {} records acknowledged; failures: {failures:?}",
        acked.len()
    );
    let end = acked.keys().next_back().unwrap() + 1;
    let got = read_all(&s.bootstrap(), end);
    let lost: Vec<_> = acked
        .iter()
        .filter(|(o, v)| got.get(o) != Some(v))
        .take(5)
        .collect();
    assert!(lost.is_empty(), "acknowledged records lost: {lost:?}");
    assert_no_stray_dirs(&s.data_dir());
}

/// Every node kept its own directory and log.
fn assert_no_stray_dirs(dir: &Path) {
    for id in 1..=3 {
        assert!(dir.join(format!("node-{id}")).is_dir(), "node-{id}");
        assert!(
            dir.join(format!("node-{id}.log")).is_file(),
            "node-{id}.log"
        );
    }
}
