//! `keel cluster start`: the controller and the brokers as child processes.
//!
//! Each node is this executable run as `keel broker` with the [`plan`](super::plan)'s
//! arguments, stdout piped (the ready line, then drained), stderr appended to its log
//! file. The nodes start one after the other, the controller first, each once the
//! previous one printed its ready line; then Metadata from broker 1 must list every
//! broker.
//!
//! Then it supervises: a node that exits is reported (which node, and its exit code or
//! signal) and left down while the others keep serving; `keel cluster node ...` from
//! another terminal asks it, over the [`control`](super::control) socket, to stop, kill,
//! pause, resume or start a node again with the same arguments, ports and data dir. Every
//! change is written to `<dir>/cluster.json` for `keel cluster status`. The children live
//! in their own process group, so a Ctrl-C in the terminal reaches only this process, which
//! stops them by pid: brokers first, then the controller.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use keel_client::{Admin, ClientConfig};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdout};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::time::{timeout, Instant};

use super::control;
use super::file::{render_nodes, ClusterFile, NodeEntry, NodeState, FILE_NAME};
use super::plan::{cluster_defaults, layout, node_args, voters, NodePlan, Role};
use super::ready::ReadyLine;
use super::{StartArgs, PROBE_TIMEOUT};
use crate::connect;

/// How long a node may take to print `KEEL_READY` (it opens every replica it holds first).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the brokers may take to all appear in Metadata.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

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
    let control = control::bind(&args.data_dir)?;
    let settings: Vec<(String, String)> = cluster_defaults(usize::from(args.brokers))
        .into_iter()
        .chain(args.set.iter().cloned())
        .collect();
    let mut sup = Supervisor {
        exe: std::env::current_exe().context("cannot find this executable")?,
        voters: voters(&plan),
        settings,
        file: args.data_dir.join(FILE_NAME),
        nodes: plan.into_iter().map(Slot::new).collect(),
    };
    let result = tokio::select! {
        r = sup.bring_up(&args) => match r {
            Ok(()) => sup.run(&mut signals, &control).await,
            Err(e) => Err(e),
        },
        _ = signals.recv() => Err(anyhow!("interrupted while the cluster was starting")),
    };
    let running = sup.nodes.iter().filter(|n| n.child.is_some()).count();
    match &result {
        Ok(()) => eprintln!("stopping {running} node(s)"),
        Err(e) => eprintln!(
            "stopping {running} node(s): {}",
            connect::error_chain(e.chain())
        ),
    }
    sup.stop_all(&mut signals).await;
    let _ = std::fs::remove_file(&sup.file);
    result
}

/// One node of the cluster and, while it runs, its process.
pub(super) struct Slot {
    pub(super) plan: NodePlan,
    child: Option<Child>,
    pub(super) pid: u32,
    pub(super) ready: Option<ReadyLine>,
    pub(super) state: NodeState,
    /// How the node last exited, while it is down.
    pub(super) exit: Option<String>,
}

impl Slot {
    fn new(plan: NodePlan) -> Slot {
        Slot {
            plan,
            child: None,
            pid: 0,
            ready: None,
            state: NodeState::Down,
            exit: None,
        }
    }

    /// Signals the node by pid, only while its child is not reaped (so the pid is still
    /// its own).
    fn signal(&mut self, sig: libc::c_int) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            if let Some(pid) = child.id().and_then(|p| libc::pid_t::try_from(p).ok()) {
                // SAFETY: kill(2) on our own unreaped child.
                unsafe { libc::kill(pid, sig) };
            }
        }
    }

    /// Records that the node's process is gone (reaped) and how it ended.
    fn exited(&mut self, status: ExitStatus) -> String {
        self.child = None;
        let how = describe_exit(status);
        self.state = NodeState::Down;
        self.exit = Some(how.clone());
        how
    }

    /// Waits up to `limit` for the node to exit, then reaps it; `None` if it still runs.
    async fn reap_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match timeout(limit, child.wait()).await {
            Ok(Ok(status)) => Some(status),
            _ => None,
        }
    }
}

/// `exit code 1`, or `killed by signal 9 (SIGKILL)`.
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig} ({})", signal_name(sig)),
        (None, None) => status.to_string(),
    }
}

fn signal_name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGHUP => "SIGHUP",
        _ => "signal",
    }
}

/// `keel cluster start` once it runs: the nodes, and how to start each again.
struct Supervisor {
    exe: PathBuf,
    voters: String,
    settings: Vec<(String, String)>,
    /// `<dir>/cluster.json`, rewritten on every change of a node's state.
    file: PathBuf,
    nodes: Vec<Slot>,
}

impl Supervisor {
    /// Spawns the controller voters together and waits until each is ready, then every
    /// other node, each after the previous one is ready; then waits for all brokers to be
    /// registered. A spawned node is in `self.nodes` at
    /// once, so the caller stops it whatever happens here.
    async fn bring_up(&mut self, args: &StartArgs) -> anyhow::Result<()> {
        // The voters first and all at once: none is ready before a quorum of them runs.
        let (voters, others): (Vec<usize>, Vec<usize>) =
            (0..self.nodes.len()).partition(|&i| self.nodes[i].plan.role.is_controller());
        let mut spawned = Vec::new();
        for &i in &voters {
            spawned.push((i, self.spawn(i)?));
        }
        for (i, stdout) in spawned {
            self.await_ready(i, stdout).await.inspect_err(|_| {
                print_log_tail(&self.nodes[i].plan, 30);
            })?;
            self.announce(i);
        }
        for i in others {
            self.start_node(i).await.inspect_err(|_| {
                print_log_tail(&self.nodes[i].plan, 30);
            })?;
            self.announce(i);
        }
        eprintln!("waiting for the brokers to register");
        let brokers: Vec<&Slot> = self
            .nodes
            .iter()
            .filter(|n| n.plan.role.is_broker())
            .collect();
        let first = brokers
            .first()
            .and_then(|n| n.ready.as_ref()?.kafka)
            .ok_or_else(|| anyhow!("broker 1 announced no kafka listener"))?;
        let want: Vec<i32> = brokers.iter().map(|n| n.plan.id).collect();
        wait_registered(first, &want, &mut self.nodes).await?;

        let file = self.write_file()?;
        print!("{}", render_nodes(&file));
        println!("bootstrap servers: {}", file.bootstrap().join(","));
        println!(
            "status: keel cluster status --data-dir {dir}; replica check: keel check --bootstrap-server {} --voters {}",
            file.bootstrap().join(","),
            self.voters,
            dir = args.data_dir.display()
        );
        println!(
            "break it: keel cluster node stop|kill|pause|resume|start N --data-dir {}",
            args.data_dir.display()
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

    /// Spawns node `i` with its planned arguments and waits for its ready line.
    async fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let stdout = self.spawn(i)?;
        self.await_ready(i, stdout).await
    }

    fn announce(&self, i: usize) {
        let node = &self.nodes[i];
        eprintln!(
            "node {} ({}) is up: {}",
            node.plan.id,
            node.plan.role.as_str(),
            listens(node)
        );
    }

    /// Starts node `i`'s process; its ready line is read from the returned stdout.
    fn spawn(&mut self, i: usize) -> anyhow::Result<ChildStdout> {
        let args = node_args(&self.nodes[i].plan, &self.voters, &self.settings);
        let (child, stdout) = spawn_node(&self.exe, &self.nodes[i].plan, &args)?;
        let slot = &mut self.nodes[i];
        slot.pid = child.id().unwrap_or(0);
        slot.child = Some(child);
        slot.ready = None;
        slot.exit = None;
        slot.state = NodeState::Up;
        Ok(stdout)
    }

    /// Waits for node `i`'s ready line; a node that does not get there is killed.
    async fn await_ready(&mut self, i: usize, stdout: ChildStdout) -> anyhow::Result<()> {
        let slot = &mut self.nodes[i];
        match wait_ready(slot, stdout).await {
            Ok(ready) => {
                slot.ready = Some(ready);
                Ok(())
            }
            Err(e) => {
                // Not serving: it must not linger half-started.
                slot.signal(libc::SIGKILL);
                if let Some(status) = slot.reap_within(STOP_TIMEOUT).await {
                    slot.exited(status);
                }
                Err(e)
            }
        }
    }

    fn write_file(&self) -> anyhow::Result<ClusterFile> {
        let file = cluster_file(&self.nodes);
        file.write(&self.file)?;
        Ok(file)
    }

    /// Serves node requests and reports nodes that exit, until Ctrl-C or SIGTERM. A node
    /// that exits is reported and left down; the others keep running.
    async fn run(
        &mut self,
        signals: &mut Signals,
        control: &tokio::net::UnixListener,
    ) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = signals.recv() => return Ok(()),
                _ = tick.tick() => self.report_exits()?,
                conn = control.accept() => {
                    let Ok((stream, _)) = conn else { continue };
                    tokio::select! {
                        r = self.serve(stream) => r?,
                        _ = signals.recv() => return Ok(()),
                    }
                }
            }
        }
    }

    /// Reaps every node that exited on its own, says how, and records it.
    fn report_exits(&mut self) -> anyhow::Result<()> {
        let mut changed = false;
        for slot in &mut self.nodes {
            let Some(child) = slot.child.as_mut() else {
                continue;
            };
            if let Ok(Some(status)) = child.try_wait() {
                let how = slot.exited(status);
                eprintln!(
                    "node {} exited ({how}); the other nodes keep running. \
                     `keel cluster node start {}` starts it again",
                    slot.plan.id, slot.plan.id
                );
                print_log_tail(&slot.plan, 10);
                changed = true;
            }
        }
        if changed {
            self.write_file()?;
        }
        Ok(())
    }

    /// Reads one request from `stream`, carries it out and answers.
    async fn serve(&mut self, stream: tokio::net::UnixStream) -> anyhow::Result<()> {
        let (rd, mut wr) = stream.into_split();
        let mut line = String::new();
        let mut rd = BufReader::new(rd);
        let read = timeout(Duration::from_secs(5), rd.read_line(&mut line)).await;
        if !matches!(read, Ok(Ok(n)) if n > 0) {
            return Ok(());
        }
        let result = match control::Request::parse(&line) {
            Ok(req) => self.carry_out(req).await,
            Err(e) => Err(e),
        };
        match &result {
            Ok(m) => eprintln!("{m}"),
            Err(m) => eprintln!("refused `{}`: {m}", line.trim()),
        }
        self.write_file()?;
        // The requester may have given up waiting; that changes nothing here.
        let _ = wr.write_all(control::reply_line(&result).as_bytes()).await;
        Ok(())
    }

    async fn carry_out(&mut self, req: control::Request) -> Result<String, String> {
        use control::Action;
        let ids: Vec<i32> = self.nodes.iter().map(|n| n.plan.id).collect();
        let Some(i) = ids.iter().position(|&id| id == req.node) else {
            return Err(format!("no node {} (the nodes are {ids:?})", req.node));
        };
        let id = req.node;
        // An exit not yet reported is seen before acting on the node.
        self.report_exits().map_err(|e| e.to_string())?;
        let slot = &mut self.nodes[i];
        let running = slot.child.is_some();
        match req.action {
            Action::Start if running => Err(format!("node {id} is already running")),
            Action::Start => {
                self.start_node(i).await.map_err(|e| {
                    print_log_tail(&self.nodes[i].plan, 30);
                    format!("node {id} did not start: {e:#}")
                })?;
                Ok(format!(
                    "node {id} is up again: {}",
                    listens(&self.nodes[i])
                ))
            }
            _ if !running => Err(format!(
                "node {id} is not running ({})",
                slot.exit.as_deref().unwrap_or("down")
            )),
            Action::Pause if slot.state == NodeState::Paused => {
                Err(format!("node {id} is already paused"))
            }
            Action::Pause => {
                slot.signal(libc::SIGSTOP);
                slot.state = NodeState::Paused;
                Ok(format!("node {id} paused (SIGSTOP)"))
            }
            Action::Resume if slot.state != NodeState::Paused => {
                Err(format!("node {id} is not paused"))
            }
            Action::Resume => {
                slot.signal(libc::SIGCONT);
                slot.state = NodeState::Up;
                Ok(format!("node {id} resumed (SIGCONT)"))
            }
            Action::Kill => {
                slot.signal(libc::SIGKILL);
                let status = slot
                    .reap_within(STOP_TIMEOUT)
                    .await
                    .ok_or_else(|| format!("node {id} did not die after SIGKILL"))?;
                Ok(format!("node {id} killed ({})", slot.exited(status)))
            }
            Action::Stop => {
                if slot.state == NodeState::Paused {
                    slot.signal(libc::SIGCONT);
                }
                slot.signal(libc::SIGTERM);
                let status = match slot.reap_within(STOP_TIMEOUT).await {
                    Some(status) => status,
                    None => {
                        slot.signal(libc::SIGKILL);
                        slot.reap_within(STOP_TIMEOUT)
                            .await
                            .ok_or_else(|| format!("node {id} did not die after SIGKILL"))?
                    }
                };
                Ok(format!("node {id} stopped ({})", slot.exited(status)))
            }
        }
    }

    /// SIGTERM to the brokers, then to the combined nodes, then to the dedicated controllers
    /// (a paused node is continued first);
    /// SIGKILL to whatever still runs after [`STOP_TIMEOUT`], and to every node left once
    /// another Ctrl-C/SIGTERM arrives.
    async fn stop_all(&mut self, signals: &mut Signals) {
        let mut hurry = false;
        for role in [Role::Broker, Role::Combined, Role::Controller] {
            let mut phase: Vec<&mut Slot> = self
                .nodes
                .iter_mut()
                .filter(|n| n.plan.role == role && n.child.is_some())
                .collect();
            for n in phase.iter_mut() {
                if n.state == NodeState::Paused {
                    n.signal(libc::SIGCONT);
                }
                n.signal(if hurry { libc::SIGKILL } else { libc::SIGTERM });
            }
            let deadline = Instant::now() + STOP_TIMEOUT;
            for n in phase {
                let waited = if hurry {
                    None
                } else {
                    let child = n.child.as_mut().expect("filtered on a running child");
                    tokio::select! {
                        r = tokio::time::timeout_at(deadline, child.wait()) => r.ok(),
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
                        n.signal(libc::SIGKILL);
                        match n.reap_within(STOP_TIMEOUT).await {
                            Some(status) => status,
                            None => {
                                eprintln!("node {} (pid {}) could not be reaped", n.plan.id, n.pid);
                                continue;
                            }
                        }
                    }
                };
                let how = n.exited(status);
                eprintln!("node {} (pid {}) stopped: {how}", n.plan.id, n.pid);
            }
        }
    }
}

/// What `cluster.json` says about `nodes`.
fn cluster_file(nodes: &[Slot]) -> ClusterFile {
    let nodes = nodes
        .iter()
        .map(|n| {
            let ready = n.ready.clone();
            NodeEntry {
                id: n.plan.id,
                role: n.plan.role,
                kafka: ready.as_ref().and_then(|r| r.kafka),
                // A node that does not announce its controller listener yet.
                controller: ready
                    .as_ref()
                    .and_then(|r| r.controller)
                    .or(n.plan.controller),
                metrics: ready.as_ref().and_then(|r| r.metrics),
                pid: n.pid,
                data_dir: n.plan.data_dir.clone(),
                log_file: n.plan.log_file.clone(),
                state: n.state,
                exit: n.exit.clone(),
            }
        })
        .collect();
    ClusterFile { nodes }
}

fn listens(node: &Slot) -> String {
    match node
        .ready
        .as_ref()
        .map(|r| (r.kafka, r.controller.or(node.plan.controller)))
    {
        Some((Some(k), _)) => format!("kafka {k}"),
        Some((None, Some(c))) => format!("controller {c}"),
        _ => "no listener".to_string(),
    }
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
async fn wait_ready(node: &mut Slot, stdout: ChildStdout) -> anyhow::Result<ReadyLine> {
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
                    let status = match node.child.as_mut() {
                        Some(child) => child.wait().await.ok(),
                        None => None,
                    };
                    bail!(
                        "node {id} exited ({}) before its ready line; stdout was {seen:?}",
                        status.map_or_else(|| "status unknown".to_string(), describe_exit)
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
    nodes: &mut [Slot],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + REGISTER_TIMEOUT;
    let mut config = ClientConfig::new(&first.to_string());
    config.connect_timeout = PROBE_TIMEOUT;
    config.request_timeout = PROBE_TIMEOUT;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        for node in nodes.iter_mut() {
            let Some(child) = node.child.as_mut() else {
                continue;
            };
            if let Ok(Some(status)) = child.try_wait() {
                let how = node.exited(status);
                print_log_tail(&node.plan, 30);
                bail!(
                    "node {} exited ({how}) while the brokers were registering",
                    node.plan.id
                );
            }
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

fn print_log_tail(node: &NodePlan, max_lines: usize) {
    let text = std::fs::read(&node.log_file).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(max_lines)..];
    eprintln!(
        "--- node {} log ({}), last {} lines ---\n{}",
        node.id,
        node.log_file.display(),
        tail.len(),
        tail.join("\n")
    );
}
