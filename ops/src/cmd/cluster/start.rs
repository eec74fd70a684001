//! `keel cluster start`: the controller and the brokers as child processes.
//!
//! Each node is this executable run as `keel broker` with the [`plan`](super::plan)'s
//! arguments, stdout piped (the ready line, then drained), stderr appended to its log
//! file. The nodes start one after the other, the controller first, each once the
//! previous one printed its ready line; then Metadata from broker 1 must list every
//! broker. The children live in their own process group, so a Ctrl-C in the terminal
//! reaches only this process, which stops them by pid: brokers first, then the
//! controller.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use keel_client::{Admin, ClientConfig};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, ChildStdout};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::time::{timeout, Instant};

use super::file::{render_nodes, ClusterFile, FILE_NAME};
use super::plan::{cluster_defaults, layout, node_args, voters, NodePlan, Role};
use super::ready::ReadyLine;
use super::{StartArgs, PROBE_TIMEOUT};
use crate::connect;

/// How long a node may take to print `KEEL_READY`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the brokers may take to all appear in Metadata.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A spawned node.
pub(super) struct Running {
    pub(super) plan: NodePlan,
    child: Child,
    pub(super) pid: u32,
    pub(super) ready: Option<ReadyLine>,
}

struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

pub async fn run(args: StartArgs) -> anyhow::Result<()> {
    let plan = layout(&args)?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    // Before any child exists, so a signal during startup is not lost.
    let mut signals = Signals::install()?;
    let mut nodes = Vec::new();
    let result = tokio::select! {
        r = bring_up(&plan, &args, &mut nodes) => match r {
            Ok(()) => run_until_signal(&mut nodes, &mut signals).await,
            Err(e) => Err(e),
        },
        _ = signals.recv() => Err(anyhow!("interrupted while the cluster was starting")),
    };
    match &result {
        Ok(()) => eprintln!("stopping {} node(s)", nodes.len()),
        Err(e) => eprintln!(
            "stopping {} node(s): {}",
            nodes.len(),
            connect::error_chain(e.chain())
        ),
    }
    stop_all(&mut nodes, &mut signals).await;
    let _ = std::fs::remove_file(args.data_dir.join(FILE_NAME));
    result
}

/// Spawns every node in `plan` (the controller first), each after the previous one is
/// ready, then waits for all brokers to be registered. Spawned nodes go into `nodes`
/// at once, so the caller stops them whatever happens here.
async fn bring_up(
    plan: &[NodePlan],
    args: &StartArgs,
    nodes: &mut Vec<Running>,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let voters = voters(plan);
    let settings: Vec<(String, String)> = cluster_defaults(usize::from(args.brokers))
        .into_iter()
        .chain(args.set.iter().cloned())
        .collect();
    for node in plan {
        let (child, stdout) = spawn_node(&exe, node, &node_args(node, &voters, &settings))?;
        let pid = child.id().unwrap_or(0);
        nodes.push(Running {
            plan: node.clone(),
            child,
            pid,
            ready: None,
        });
        let running = nodes.last_mut().expect("just pushed");
        let ready = wait_ready(running, stdout).await.inspect_err(|_| {
            print_log_tail(&running.plan);
        })?;
        let listens = match (ready.kafka, ready.controller.or(node.controller)) {
            (Some(k), _) => format!("kafka {k}"),
            (None, Some(c)) => format!("controller {c}"),
            (None, None) => "no listener".to_string(),
        };
        eprintln!("node {} ({}) is up: {listens}", node.id, node.role.as_str());
        running.ready = Some(ready);
    }
    eprintln!("waiting for the brokers to register");
    let brokers: Vec<&Running> = nodes
        .iter()
        .filter(|n| n.plan.role == Role::Broker)
        .collect();
    let first = brokers
        .first()
        .and_then(|n| n.ready.as_ref()?.kafka)
        .ok_or_else(|| anyhow!("broker 1 announced no kafka listener"))?;
    let want: Vec<i32> = brokers.iter().map(|n| n.plan.id).collect();
    wait_registered(first, &want, nodes).await?;

    let file = ClusterFile::from_nodes(nodes);
    file.write(&args.data_dir.join(FILE_NAME))?;
    print!("{}", render_nodes(&file));
    println!("bootstrap servers: {}", file.bootstrap().join(","));
    println!(
        "status: keel cluster status --data-dir {dir}; replica check: keel check --bootstrap-server {}",
        file.bootstrap().join(","),
        dir = args.data_dir.display()
    );
    println!(
        "prometheus (keel cluster prometheus-config --data-dir {} > prometheus.yml):",
        args.data_dir.display()
    );
    for line in file.prometheus_config().lines() {
        println!("  {line}");
    }
    println!("Ctrl-C stops the cluster");
    Ok(())
}

fn spawn_node(
    exe: &Path,
    node: &NodePlan,
    args: &[String],
) -> anyhow::Result<(Child, ChildStdout)> {
    std::fs::create_dir_all(&node.data_dir)
        .with_context(|| format!("cannot create {}", node.data_dir.display()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&node.log_file)
        .with_context(|| format!("cannot open {}", node.log_file.display()))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    child_of_this_process(&mut cmd);
    let mut child = tokio::process::Command::from(cmd)
        .spawn()
        .with_context(|| {
            format!(
                "cannot start node {}: {} {}",
                node.id,
                exe.display(),
                args.join(" ")
            )
        })?;
    let stdout = child.stdout.take().expect("stdout is piped");
    Ok((child, stdout))
}

/// Own process group: the terminal's Ctrl-C reaches only `keel cluster`, which then
/// stops each node once (a second signal would make a broker skip its clean shutdown).
/// PDEATHSIG: if `keel cluster` itself dies, the kernel sends each node SIGTERM. It fires
/// when the spawning thread exits; nodes are spawned from the runtime's `block_on`
/// future, i.e. the main thread, which lives as long as the process.
fn child_of_this_process(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt as _;
    cmd.process_group(0);
    // SAFETY: runs in the forked child before exec and only calls prctl(2), which is
    // async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Reads stdout up to the node's ready line, then drains the rest in a task so the node
/// never blocks on a full pipe.
async fn wait_ready(node: &mut Running, stdout: ChildStdout) -> anyhow::Result<ReadyLine> {
    let id = node.plan.id;
    let mut lines = BufReader::new(stdout).lines();
    let read = async {
        let mut seen = Vec::new();
        // Bounded by READY_TIMEOUT around it; a node prints almost nothing on stdout.
        loop {
            match lines.next_line().await {
                Ok(Some(line)) => match ReadyLine::parse(&line) {
                    Some(ready) => return ready.map_err(|e| anyhow!(e)),
                    None => seen.push(line),
                },
                Ok(None) | Err(_) => {
                    let status = node.child.wait().await.ok();
                    bail!(
                        "node {id} exited ({}) before its ready line; stdout was {seen:?}",
                        status.map_or_else(|| "status unknown".to_string(), |s| s.to_string())
                    )
                }
            }
        }
    };
    let ready = timeout(READY_TIMEOUT, read)
        .await
        .map_err(|_| anyhow!("node {id} printed no KEEL_READY line within {READY_TIMEOUT:?}"))??;
    if ready.node != id {
        bail!("node {id} announced itself as node {}", ready.node);
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(ready)
}

/// Polls Metadata at `first` until it lists every broker in `want`.
async fn wait_registered(
    first: SocketAddr,
    want: &[i32],
    nodes: &mut [Running],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + REGISTER_TIMEOUT;
    let mut config = ClientConfig::new(&first.to_string());
    config.connect_timeout = PROBE_TIMEOUT;
    config.request_timeout = PROBE_TIMEOUT;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        if let Some((node, status)) = first_exited(nodes) {
            print_log_tail(&node.plan);
            bail!(
                "node {} exited ({status}) while the brokers were registering",
                node.plan.id
            );
        }
        let probe = async { Admin::new(config.clone()).await?.brokers().await };
        match timeout(PROBE_TIMEOUT * 2, probe).await {
            Ok(Ok(brokers)) => {
                let ids: Vec<i32> = brokers.iter().map(|b| b.node_id).collect();
                if want.iter().all(|w| ids.contains(w)) {
                    return Ok(());
                }
                last = format!("brokers {ids:?} of {want:?}");
            }
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "metadata request timed out".to_string(),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("after {REGISTER_TIMEOUT:?}, Metadata from {first} still lists {last}")
}

fn first_exited(nodes: &mut [Running]) -> Option<(&Running, ExitStatus)> {
    let index = nodes
        .iter_mut()
        .position(|n| matches!(n.child.try_wait(), Ok(Some(_))))?;
    let node = &mut nodes[index];
    // try_wait keeps the status; asking again returns it without waiting.
    let status = node.child.try_wait().ok().flatten()?;
    Some((&nodes[index], status))
}

async fn run_until_signal(nodes: &mut [Running], signals: &mut Signals) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = signals.recv() => return Ok(()),
            _ = tick.tick() => {
                if let Some((node, status)) = first_exited(nodes) {
                    print_log_tail(&node.plan);
                    bail!("node {} exited unexpectedly ({status})", node.plan.id);
                }
            }
        }
    }
}

/// SIGTERM to the brokers, then to the controller; SIGKILL to whatever still runs after
/// [`STOP_TIMEOUT`], and to every node left once another Ctrl-C/SIGTERM arrives.
async fn stop_all(nodes: &mut [Running], signals: &mut Signals) {
    let mut hurry = false;
    for role in [Role::Broker, Role::Controller] {
        let mut phase: Vec<&mut Running> =
            nodes.iter_mut().filter(|n| n.plan.role == role).collect();
        for n in phase.iter_mut() {
            send(n, if hurry { libc::SIGKILL } else { libc::SIGTERM });
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        for n in phase {
            let waited = if hurry {
                None
            } else {
                tokio::select! {
                    r = tokio::time::timeout_at(deadline, n.child.wait()) => r.ok(),
                    _ = signals.recv() => {
                        hurry = true;
                        None
                    }
                }
            };
            let status = match waited {
                Some(Ok(status)) => status,
                _ => {
                    eprintln!("node {} (pid {}): sending SIGKILL", n.plan.id, n.pid);
                    send(n, libc::SIGKILL);
                    match timeout(STOP_TIMEOUT, n.child.wait()).await {
                        Ok(Ok(status)) => status,
                        _ => {
                            eprintln!("node {} (pid {}) could not be reaped", n.plan.id, n.pid);
                            continue;
                        }
                    }
                }
            };
            eprintln!("node {} (pid {}) stopped: {status}", n.plan.id, n.pid);
        }
    }
}

/// Signals a child by its pid, only while it is not reaped (so the pid is still its own).
fn send(node: &mut Running, sig: libc::c_int) {
    if matches!(node.child.try_wait(), Ok(None)) {
        if let Some(pid) = node.child.id().and_then(|p| libc::pid_t::try_from(p).ok()) {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(pid, sig) };
        }
    }
}

fn print_log_tail(node: &NodePlan) {
    let text = std::fs::read(&node.log_file).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(30)..];
    eprintln!(
        "--- node {} log ({}), last {} lines ---\n{}",
        node.id,
        node.log_file.display(),
        tail.len(),
        tail.join("\n")
    );
}
