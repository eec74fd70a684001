//! A local cluster for a test: N brokers (nodes 1..=N), each a `keel broker` process on
//! 127.0.0.1 with its own temp data dir, killed (by pid) on drop, and a controller quorum:
//! by default one controller-only node (node 0); with [`ClusterOpts::voters`], brokers
//! 1..=V are also the controller voters (`process.roles=broker,controller`), as in
//! `keel cluster start`.
//!
//! Brokers are [`TestBroker`]s started with `controller.quorum.voters`; a controller-only
//! node is started here, because it has no Kafka listener for `TestBroker` to wait for.
//! Voters' controller listeners get free ports chosen up front (every voter must know the
//! others' addresses); every other port is ephemeral at first; a restarted node asks for
//! the ports it had, so clients' metadata and the voters' addresses stay valid.
//!
//! Questions to the cluster (leaders, brokers, metrics) run on a short-lived thread with
//! its own runtime, so they work from plain tests and from inside async tests alike, and
//! each is bounded by [`PROBE_TIMEOUT`].

use std::fs::OpenOptions;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use keel::cmd::cluster::{partition_offsets, scrape_metrics, ReadyLine, ReplicaOffsets, Role};
use keel_client::{Admin, ClientConfig, PartitionInfo, TopicDescription, TopicSpec};

use crate::broker::{die_with_parent, stdout_lines, wait_for_ready_line};
use crate::broker::{BrokerOpts, TestBroker, SIGTERM_TIMEOUT};
use crate::command::{keel_bin, tail, CmdOutput};
use crate::proxy::{FaultProxy, Net};
use crate::wait::{wait_for, wait_until};

/// How long the brokers may take to appear in Metadata after they started.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);
/// One admin request or one `/metrics` scrape.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How to start a [`TestCluster`].
#[derive(Debug, Clone)]
pub struct ClusterOpts {
    /// Number of brokers, node ids 1..=brokers.
    pub brokers: usize,
    /// Properties passed as `--set key=value` to every node, before the cluster's own
    /// (`process.roles`, `controller.*`), which win.
    pub settings: Vec<(String, String)>,
    /// Environment variables set for every node.
    pub env: Vec<(String, String)>,
    /// Put a [`FaultProxy`] in front of every node's listener: brokers advertise it and
    /// reach the controller through it, so [`TestCluster::net`] can cut links between nodes.
    pub fault_proxies: bool,
    /// 0: one controller-only node 0. V > 0: brokers 1..=V are the controller voters.
    pub voters: usize,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            brokers: 3,
            settings: Vec::new(),
            env: Vec::new(),
            fault_proxies: false,
            voters: 0,
        }
    }
}

impl ClusterOpts {
    pub fn brokers(mut self, n: usize) -> Self {
        self.brokers = n;
        self
    }

    pub fn set(mut self, key: &str, value: &str) -> Self {
        self.settings.push((key.to_string(), value.to_string()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Failures noticed within seconds: fencing after 1.5 s of silence, ISR shrink after
    /// 2 s behind, partition gauges every 100 ms.
    pub fn fast_failover(self) -> Self {
        self.set("broker.session.timeout.ms", "1500")
            .set("broker.heartbeat.interval.ms", "200")
            .set("replica.lag.time.max.ms", "2000")
    }

    /// See [`ClusterOpts::fault_proxies`].
    pub fn fault_proxies(mut self) -> Self {
        self.fault_proxies = true;
        self
    }

    /// Brokers 1..=`n` are the controller voters (see [`ClusterOpts::voters`]).
    pub fn voters(mut self, n: usize) -> Self {
        self.voters = n;
        self
    }

    /// A controller quorum that notices a lost leader within about a second.
    pub fn fast_elections(self) -> Self {
        self.set("controller.quorum.election.timeout.ms", "600")
            .set("controller.quorum.heartbeat.interval.ms", "100")
    }
}

/// One node of a [`TestCluster`].
pub struct Node {
    id: i32,
    process: Process,
    /// Started and not killed or stopped by the test since (a crash is not noticed here).
    up: bool,
    /// SIGSTOPped and not yet continued.
    paused: bool,
    /// The proxy in front of its listener, with fault proxies on.
    proxy: Option<FaultProxy>,
    /// A combined voter's controller listener (the proxy's address with fault proxies on)
    /// and the proxy in front of it.
    voter: Option<(SocketAddr, Option<FaultProxy>)>,
}

enum Process {
    Controller(ControllerProcess),
    Broker(TestBroker),
}

impl Node {
    pub fn id(&self) -> i32 {
        self.id
    }

    pub fn role(&self) -> Role {
        match self.process {
            Process::Controller(_) => Role::Controller,
            Process::Broker(_) if self.voter.is_some() => Role::Combined,
            Process::Broker(_) => Role::Broker,
        }
    }

    /// The Kafka listener; panics for the controller, which has none.
    pub fn kafka_addr(&self) -> SocketAddr {
        match &self.process {
            Process::Broker(b) => b.kafka_addr(),
            Process::Controller(_) => {
                panic!("node {} is the controller: no kafka listener", self.id)
            }
        }
    }

    /// The controller listener (as the voters reach it); `None` for a broker that is no
    /// voter.
    pub fn controller_addr(&self) -> Option<SocketAddr> {
        match &self.process {
            Process::Controller(c) => Some(c.controller),
            Process::Broker(_) => self.voter.as_ref().map(|(a, _)| *a),
        }
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        match &self.process {
            Process::Broker(b) => b.metrics_addr(),
            Process::Controller(c) => c.metrics,
        }
    }

    /// Process id of the running node; panics when it is not running.
    pub fn pid(&self) -> u32 {
        match &self.process {
            Process::Broker(b) => b.pid(),
            Process::Controller(c) => c.child.as_ref().expect("controller is not running").id(),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        match &self.process {
            Process::Broker(b) => b.data_dir(),
            Process::Controller(c) => c.dir.path().join("data"),
        }
    }

    /// The file that collects the node's stderr over all its starts.
    pub fn log_path(&self) -> PathBuf {
        match &self.process {
            Process::Broker(b) => b.log_path(),
            Process::Controller(c) => c.log_path(),
        }
    }

    /// The last `max` bytes of the node's stderr.
    pub fn stderr_tail(&self, max: usize) -> String {
        tail(&std::fs::read(self.log_path()).unwrap_or_default(), max)
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.process {
            Process::Broker(b) => b.is_running(),
            Process::Controller(c) => {
                matches!(c.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
            }
        }
    }

    /// Up and not paused: it should answer requests.
    fn is_live(&self) -> bool {
        self.up && !self.paused
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child, which is not reaped (`pid()` panics otherwise),
        // so the pid was not reused.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({sig}) of node {} failed", self.id);
    }
}

/// A free port on 127.0.0.1 now (the listener is closed again at once).
fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr")
}

/// A controller and brokers over temp directories.
pub struct TestCluster {
    opts: ClusterOpts,
    /// Node 0 (the controller) first, then the brokers in id order.
    nodes: Vec<Node>,
    /// The links' faults, used by the proxies (idle without them).
    net: Net,
}

impl TestCluster {
    /// Starts the controller, then the brokers, and waits until Metadata lists them all.
    pub fn start(opts: ClusterOpts) -> TestCluster {
        assert!(opts.brokers >= 1, "a cluster needs at least one broker");
        if opts.voters > 0 {
            return Self::start_with_voters(opts);
        }
        let net = Net::new();
        let proxy = |id: i32| opts.fault_proxies.then(|| FaultProxy::start(&net, id));
        let controller = ControllerProcess::start(&opts.settings, &opts.env);
        let controller_proxy = proxy(0);
        let voters = match &controller_proxy {
            Some(p) => {
                p.set_target(controller.controller);
                format!("0@{}", p.addr())
            }
            None => format!("0@{}", controller.controller),
        };
        let mut nodes = vec![Node {
            id: 0,
            process: Process::Controller(controller),
            up: true,
            paused: false,
            proxy: controller_proxy,
            voter: None,
        }];
        for id in 1..=opts.brokers {
            let id = i32::try_from(id).expect("broker count fits i32");
            let broker_proxy = proxy(id);
            let mut settings = opts.settings.clone();
            settings.push(("process.roles".into(), "broker".into()));
            settings.push(("controller.quorum.voters".into(), voters.clone()));
            if let Some(p) = &broker_proxy {
                settings.push(("advertised.listeners".into(), p.addr().to_string()));
            }
            let broker = TestBroker::start(BrokerOpts {
                node_id: id,
                settings,
                env: opts.env.clone(),
            });
            if let Some(p) = &broker_proxy {
                p.set_target(broker.kafka_addr());
            }
            nodes.push(Node {
                id,
                process: Process::Broker(broker),
                up: true,
                paused: false,
                proxy: broker_proxy,
                voter: None,
            });
        }
        let cluster = TestCluster { opts, nodes, net };
        let ids = cluster.broker_ids();
        cluster.wait_for_brokers(&ids, REGISTER_TIMEOUT);
        cluster
    }

    /// Brokers 1..=V are voters too: all start at once (none is ready before a quorum is).
    fn start_with_voters(opts: ClusterOpts) -> TestCluster {
        assert!(
            opts.voters <= opts.brokers,
            "voters are brokers 1..=V: {} voters need as many brokers",
            opts.voters
        );
        let net = Net::new();
        let proxy = |id: i32| opts.fault_proxies.then(|| FaultProxy::start(&net, id));
        let ids: Vec<i32> = (1..=opts.brokers as i32).collect();
        // Each voter's controller listener: a free port now, behind a proxy if asked.
        let mut voter_addrs = Vec::new();
        for &id in ids.iter().take(opts.voters) {
            let listen = free_port();
            let p = proxy(id);
            if let Some(p) = &p {
                p.set_target(listen);
            }
            let reach = p.as_ref().map_or(listen, FaultProxy::addr);
            voter_addrs.push((id, listen, reach, p));
        }
        let voters = voter_addrs
            .iter()
            .map(|(id, _, reach, _)| format!("{id}@{reach}"))
            .collect::<Vec<_>>()
            .join(",");
        let kafka_proxies: Vec<Option<FaultProxy>> = ids.iter().map(|&id| proxy(id)).collect();
        let starts: Vec<BrokerOpts> = ids
            .iter()
            .zip(&kafka_proxies)
            .map(|(&id, kp)| {
                let mut settings = opts.settings.clone();
                match voter_addrs.iter().find(|v| v.0 == id) {
                    Some((_, listen, _, _)) => {
                        settings.push(("process.roles".into(), "broker,controller".into()));
                        settings.push(("controller.listener".into(), listen.to_string()));
                    }
                    None => settings.push(("process.roles".into(), "broker".into())),
                }
                settings.push(("controller.quorum.voters".into(), voters.clone()));
                if let Some(p) = kp {
                    settings.push(("advertised.listeners".into(), p.addr().to_string()));
                }
                BrokerOpts {
                    node_id: id,
                    settings,
                    env: opts.env.clone(),
                }
            })
            .collect();
        let brokers = TestBroker::start_all(starts);
        let mut voter_addrs = voter_addrs.into_iter();
        let nodes = ids
            .iter()
            .zip(brokers)
            .zip(kafka_proxies)
            .map(|((&id, broker), kp)| {
                if let Some(p) = &kp {
                    p.set_target(broker.kafka_addr());
                }
                let voter = (i64::from(id) <= opts.voters as i64)
                    .then(|| voter_addrs.next().expect("one per voter"))
                    .map(|(_, _, reach, p)| (reach, p));
                Node {
                    id,
                    process: Process::Broker(broker),
                    up: true,
                    paused: false,
                    proxy: kp,
                    voter,
                }
            })
            .collect();
        let cluster = TestCluster { opts, nodes, net };
        let ids = cluster.broker_ids();
        cluster.wait_for_brokers(&ids, REGISTER_TIMEOUT);
        cluster
    }

    /// Every broker's Kafka address, comma-separated (also stopped ones).
    pub fn bootstrap(&self) -> String {
        self.brokers()
            .map(|n| n.kafka_addr().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// All node ids, the controller's (0) first.
    pub fn node_ids(&self) -> Vec<i32> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// The brokers' ids, 1..=N.
    pub fn broker_ids(&self) -> Vec<i32> {
        self.brokers().map(|n| n.id).collect()
    }

    pub fn node(&self, id: i32) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}; nodes are {:?}", self.node_ids()))
    }

    /// Broker `id`; panics for a controller-only node or an unknown id.
    pub fn broker(&self, id: i32) -> &Node {
        let node = self.node(id);
        assert!(node.role().is_broker(), "node {id} is not a broker");
        node
    }

    /// The controller-only node 0 (a cluster without [`ClusterOpts::voters`]).
    pub fn controller(&self) -> &Node {
        assert_eq!(
            self.nodes[0].role(),
            Role::Controller,
            "this cluster's voters are brokers"
        );
        &self.nodes[0]
    }

    /// The fault table of the links between nodes; it acts only with
    /// [`ClusterOpts::fault_proxies`].
    pub fn net(&self) -> &Net {
        assert!(
            self.opts.fault_proxies,
            "link faults need a cluster started with ClusterOpts::fault_proxies"
        );
        &self.net
    }

    fn node_mut(&mut self, id: i32) -> &mut Node {
        let ids = self.node_ids();
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}; nodes are {ids:?}"))
    }

    fn brokers(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.role().is_broker())
    }

    /// The controller voters' ids.
    pub fn voter_ids(&self) -> Vec<i32> {
        self.nodes
            .iter()
            .filter(|n| n.role().is_controller())
            .map(|n| n.id)
            .collect()
    }

    /// SIGKILL node `id`, then reap it.
    pub fn kill9(&mut self, id: i32) -> ExitStatus {
        let node = self.node_mut(id);
        node.paused = false;
        node.up = false;
        match &mut node.process {
            Process::Broker(b) => b.kill9(),
            Process::Controller(c) => c.kill9(),
        }
    }

    /// SIGSTOP node `id`: it keeps its sockets but answers nothing until [`Self::sigcont`].
    pub fn sigstop(&mut self, id: i32) {
        let node = self.node_mut(id);
        node.signal(libc::SIGSTOP);
        node.paused = true;
    }

    pub fn sigcont(&mut self, id: i32) {
        let node = self.node_mut(id);
        node.signal(libc::SIGCONT);
        node.paused = false;
    }

    /// SIGTERM node `id` and wait for it to exit; panics after [`SIGTERM_TIMEOUT`].
    pub fn stop(&mut self, id: i32) -> ExitStatus {
        let node = self.node_mut(id);
        if node.paused {
            node.signal(libc::SIGCONT);
            node.paused = false;
        }
        node.up = false;
        match &mut node.process {
            Process::Broker(b) => b.sigterm_and_wait(),
            Process::Controller(c) => c.sigterm_and_wait(),
        }
    }

    /// Starts node `id` again on its data dir and the ports it had (a running node is
    /// stopped with SIGTERM first) and waits for its ready line. It does not wait for
    /// the node to register: use [`Self::wait_for_brokers`] or a condition of the test.
    pub fn restart(&mut self, id: i32) {
        let node = self.node_mut(id);
        if node.paused {
            node.signal(libc::SIGCONT);
            node.paused = false;
        }
        match &mut node.process {
            Process::Broker(b) => b.restart(),
            Process::Controller(c) => c.restart(),
        }
        // A restart may have fallen back to other ports.
        if let Some(p) = &node.proxy {
            match &node.process {
                Process::Broker(b) => p.set_target(b.kafka_addr()),
                Process::Controller(c) => p.set_target(c.controller),
            }
        }
        node.up = true;
    }

    /// The Kafka addresses of brokers that run and are not paused.
    fn live_bootstrap(&self) -> Option<String> {
        let live: Vec<String> = self
            .brokers()
            .filter(|n| n.is_live())
            .map(|n| n.kafka_addr().to_string())
            .collect();
        (!live.is_empty()).then(|| live.join(","))
    }

    /// Runs `query` with an admin client on a live broker; `None` when no broker is live
    /// or the query fails or takes longer than [`PROBE_TIMEOUT`].
    fn ask<T, F>(&self, query: impl FnOnce(Admin) -> F + Send) -> Option<T>
    where
        T: Send,
        F: Future<Output = Result<T, keel_client::ClientError>> + Send,
    {
        let bootstrap = self.live_bootstrap()?;
        let mut config = ClientConfig::new(&bootstrap);
        config.connect_timeout = PROBE_TIMEOUT;
        config.request_timeout = PROBE_TIMEOUT;
        block_on(async move {
            let answer = async { query(Admin::new(config).await?).await };
            tokio::time::timeout(PROBE_TIMEOUT * 2, answer)
                .await
                .ok()?
                .ok()
        })
    }

    /// What voter `id` says of the controller quorum; `None` if it does not answer.
    pub fn quorum_state(&self, id: i32) -> Option<keel_protocol::quorum::QuorumState> {
        let node = self.node(id);
        if !node.is_live() {
            return None;
        }
        let addr = node.controller_addr()?;
        block_on(async move {
            keel::cmd::cluster::quorum::quorum_state(addr, None, PROBE_TIMEOUT)
                .await
                .ok()
        })
    }

    /// The active controller: a live voter that says it leads, if one does.
    pub fn active_controller(&self) -> Option<i32> {
        self.voter_ids()
            .into_iter()
            .filter_map(|id| self.quorum_state(id))
            .filter(|s| s.leader == s.node_id)
            .max_by_key(|s| s.term)
            .map(|s| s.node_id)
    }

    /// Broker ids that Metadata lists now (registered and not fenced).
    pub fn brokers_in_metadata(&self) -> Option<Vec<i32>> {
        let brokers = self.ask(|admin| async move { admin.brokers().await })?;
        Some(brokers.iter().map(|b| b.node_id).collect())
    }

    /// Waits until Metadata lists every broker in `ids`.
    pub fn wait_for_brokers(&self, ids: &[i32], timeout: Duration) {
        let desc = format!("metadata lists brokers {ids:?}");
        wait_until(&desc, timeout, || {
            self.brokers_in_metadata()
                .is_some_and(|listed| ids.iter().all(|id| listed.contains(id)))
        });
    }

    /// The topic as Metadata describes it now; `None` if it is unknown or no one answers.
    pub fn describe_topic(&self, topic: &str) -> Option<TopicDescription> {
        let names = vec![topic.to_string()];
        let mut described = self.ask(|admin| async move { admin.describe_topics(&names).await })?;
        described.pop().filter(|d| d.error.is_none())
    }

    /// Creates `topic` with `partitions` partitions, replication factor 3 and min ISR 2, and
    /// waits until every partition has a leader and an ISR of 3; panics when the creation
    /// fails or the wait takes longer than `timeout`.
    pub fn create_replicated_topic(&self, topic: &str, partitions: i32, timeout: Duration) {
        let config = ClientConfig::new(&self.bootstrap());
        let spec = TopicSpec {
            name: topic.to_string(),
            partitions,
            replication_factor: 3,
            configs: vec![("min.insync.replicas".into(), "2".into())],
        };
        block_on(async move { Admin::new(config).await?.create_topics(&[spec]).await })
            .unwrap_or_else(|e| panic!("create topic {topic}: {e}"));
        wait_until(
            &format!("{topic}: every partition has a leader and an ISR of 3"),
            timeout,
            || {
                self.describe_topic(topic).is_some_and(|d| {
                    d.partitions.len() == partitions as usize
                        && d.partitions.iter().all(|p| {
                            p.replicas.len() == 3 && p.isr.len() == 3 && p.isr.contains(&p.leader)
                        })
                })
            },
        );
    }

    /// The partition's ISR according to Metadata, sorted; `None` if the partition is
    /// unknown or no one answers.
    pub fn isr_of(&self, topic: &str, partition: i32) -> Option<Vec<i32>> {
        let desc = self.describe_topic(topic)?;
        let p = desc.partitions.iter().find(|p| p.partition == partition)?;
        let mut isr = p.isr.clone();
        isr.sort_unstable();
        Some(isr)
    }

    /// The partition's leader according to Metadata, if it has one.
    pub fn leader_of(&self, topic: &str, partition: i32) -> Option<i32> {
        let desc = self.describe_topic(topic)?;
        let p = desc.partitions.iter().find(|p| p.partition == partition)?;
        (p.leader >= 0).then_some(p.leader)
    }

    /// Waits until the partition has a leader other than `not`, and returns it.
    pub fn wait_for_leader(
        &self,
        topic: &str,
        partition: i32,
        not: Option<i32>,
        timeout: Duration,
    ) -> i32 {
        let desc = match not {
            Some(old) => format!("{topic}-{partition} has a leader other than {old}"),
            None => format!("{topic}-{partition} has a leader"),
        };
        wait_for(&desc, timeout, || {
            self.leader_of(topic, partition)
                .filter(|leader| Some(*leader) != not)
        })
    }

    /// `keel check --topic <topic>` against the cluster, with `extra` arguments (such as
    /// `--timeout-ms`); exit 0 means every partition is SYNCED.
    pub fn keel_check(&self, topic: &str, extra: &[&str]) -> CmdOutput {
        let bootstrap = self.bootstrap();
        let mut args = vec!["check", "--bootstrap-server", &bootstrap, "--topic", topic];
        args.extend_from_slice(extra);
        crate::command::keel(&args, None)
    }

    /// Node `id`'s `/metrics` text; panics if it does not answer.
    pub fn scrape_metrics(&self, id: i32) -> String {
        self.get_metrics(id)
            .unwrap_or_else(|e| panic!("node {id}: {e:#}"))
    }

    /// Node `id`'s `/metrics` text, `None` when it does not answer within
    /// [`PROBE_TIMEOUT`]: for conditions, where a paused or restarting node is expected.
    pub fn try_scrape_metrics(&self, id: i32) -> Option<String> {
        self.get_metrics(id).ok()
    }

    fn get_metrics(&self, id: i32) -> anyhow::Result<String> {
        let addr = self.node(id).metrics_addr();
        block_on(scrape_metrics(addr, PROBE_TIMEOUT))
    }

    /// One partition of [`TestCluster::describe_topic`].
    pub fn partition_info(&self, topic: &str, partition: i32) -> Option<PartitionInfo> {
        self.describe_topic(topic)?
            .partitions
            .into_iter()
            .find(|p| p.partition == partition)
    }

    /// Kafka addresses of brokers `ids`, comma-separated (a bootstrap list).
    pub fn kafka_addrs(&self, ids: &[i32]) -> String {
        ids.iter()
            .map(|&id| self.broker(id).kafka_addr().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// (LEO, HW) of node `id`'s replica of `topic-partition` from its metrics, `None`s when
    /// the node does not answer or has no such replica.
    pub fn try_replica_offsets(
        &self,
        id: i32,
        topic: &str,
        partition: i32,
    ) -> (Option<i64>, Option<i64>) {
        let Some(text) = self.try_scrape_metrics(id) else {
            return (None, None);
        };
        partition_offsets(&text)
            .get(&(topic.to_string(), partition))
            .map_or((None, None), |o| (o.leo, o.hw))
    }

    /// Waits until Metadata shows every broker in `ids` in the ISR with a leader among
    /// them, and every replica in `ids` reports the same LEO with HW == LEO, at least
    /// `min_leo`. Returns (leader, LEO); panics with the last state seen after `timeout`.
    pub fn wait_in_sync(
        &self,
        topic: &str,
        partition: i32,
        ids: &[i32],
        min_leo: i64,
        timeout: Duration,
    ) -> (i32, i64) {
        let mut last = String::new();
        let start = Instant::now();
        let mut found = None;
        crate::wait::poll_until(timeout, || {
            let state = self.partition_info(topic, partition);
            let offsets: Vec<(i32, Option<i64>, Option<i64>)> = ids
                .iter()
                .map(|&id| {
                    let (leo, hw) = self.try_replica_offsets(id, topic, partition);
                    (id, leo, hw)
                })
                .collect();
            last = format!("metadata {state:?}; (id, leo, hw) {offsets:?}");
            let Some(p) = &state else { return false };
            let isr_ok = ids.iter().all(|id| p.isr.contains(id)) && ids.contains(&p.leader);
            let leo = offsets[0].1;
            let same = offsets
                .iter()
                .all(|(_, l, h)| l.is_some() && *l == leo && *h == leo);
            if isr_ok && same && leo.is_some_and(|l| l >= min_leo) {
                found = Some((p.leader, leo.unwrap_or_default()));
            }
            found.is_some()
        });
        found.unwrap_or_else(|| {
            panic!(
                "timed out after {:.1}s waiting until {topic}-{partition}: replicas {ids:?} in \
                 the ISR, LEO == HW >= {min_leo} everywhere; last seen: {last}",
                start.elapsed().as_secs_f64()
            )
        })
    }

    /// LEO and HW of node `id`'s replica of `topic-partition`, from its metrics (set when
    /// scraped); default when it has no such replica.
    pub fn replica_offsets(&self, id: i32, topic: &str, partition: i32) -> ReplicaOffsets {
        let offsets = partition_offsets(&self.scrape_metrics(id));
        offsets
            .get(&(topic.to_string(), partition))
            .copied()
            .unwrap_or_default()
    }
}

/// Copies every node's stderr log out of the cluster's temp dirs, to
/// `$TMPDIR/<suite>/<test>/node-<id>.stderr.log`, when dropped during a panic (or always,
/// with `KEEL_TEST_KEEP_LOGS` set). Declare it after the cluster, so it drops (and copies)
/// first.
pub struct KeepLogs {
    test: String,
    dir: PathBuf,
    logs: Vec<(i32, PathBuf)>,
}

impl KeepLogs {
    pub fn new(suite: &str, test: &str, cluster: &TestCluster) -> KeepLogs {
        let logs = cluster
            .node_ids()
            .into_iter()
            .map(|id| (id, cluster.node(id).log_path()))
            .collect();
        KeepLogs {
            test: test.to_string(),
            dir: std::env::temp_dir().join(suite).join(test),
            logs,
        }
    }
}

impl Drop for KeepLogs {
    fn drop(&mut self) {
        if !std::thread::panicking() && std::env::var_os("KEEL_TEST_KEEP_LOGS").is_none() {
            return;
        }
        let _ = std::fs::create_dir_all(&self.dir);
        for (id, path) in &self.logs {
            let _ = std::fs::copy(path, self.dir.join(format!("node-{id}.stderr.log")));
        }
        eprintln!("node logs of {} kept in {}", self.test, self.dir.display());
    }
}

/// Runs `f` to completion on a new thread with its own runtime: callable from sync code
/// and from within another runtime.
pub(crate) fn block_on<F>(f: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build a runtime")
                .block_on(f)
        })
        .join()
        .expect("the probe thread panicked")
    })
}

/// The controller node: like [`TestBroker`], but it announces a controller listener and
/// no Kafka listener.
struct ControllerProcess {
    settings: Vec<(String, String)>,
    env: Vec<(String, String)>,
    // Field order matters: the child is killed in `Drop` before the directory goes away.
    child: Option<Child>,
    controller: SocketAddr,
    metrics: SocketAddr,
    starts: u32,
    dir: tempfile::TempDir,
}

impl ControllerProcess {
    fn start(settings: &[(String, String)], env: &[(String, String)]) -> ControllerProcess {
        let dir = tempfile::Builder::new()
            .prefix("keel-test-controller-")
            .tempdir()
            .expect("create temp dir");
        std::fs::create_dir_all(dir.path().join("data")).expect("create data dir");
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut c = ControllerProcess {
            settings: settings.to_vec(),
            env: env.to_vec(),
            child: None,
            controller: any,
            metrics: any,
            starts: 0,
            dir,
        };
        c.spawn(0, 0).unwrap_or_else(|e| panic!("{e}"));
        c
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("controller.stderr.log")
    }

    fn stderr_tail(&self, max: usize) -> String {
        tail(&std::fs::read(self.log_path()).unwrap_or_default(), max)
    }

    fn kill9(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("controller is not running");
        let _ = child.kill();
        child.wait().expect("wait for killed controller")
    }

    fn sigterm_and_wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("controller is not running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child, not reaped yet.
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGTERM) },
            0,
            "kill(SIGTERM)"
        );
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
            "controller did not exit within {SIGTERM_TIMEOUT:?} of SIGTERM; stderr tail:\n{}",
            self.stderr_tail(4000)
        );
    }

    /// Same controller port (the brokers know it), same metrics port if it is still free.
    fn restart(&mut self) {
        if self.child.is_some() {
            self.sigterm_and_wait();
        }
        let (c, m) = (self.controller.port(), self.metrics.port());
        if let Err(first) = self.spawn(c, m) {
            eprintln!(
                "controller restart failed, retrying with an ephemeral metrics port: {first}"
            );
            self.spawn(c, 0).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// Spawns `keel broker` as the controller and waits for its ready line.
    fn spawn(&mut self, controller_port: u16, metrics_port: u16) -> Result<(), String> {
        self.starts += 1;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open controller log");
        let mut cmd = Command::new(keel_bin());
        cmd.arg("broker")
            .args(["--node-id", "0"])
            // No Kafka clients here; an ephemeral port in case the node binds one anyway.
            .args(["--listeners", "127.0.0.1:0"])
            .args(["--metrics-listener", &format!("127.0.0.1:{metrics_port}")])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"));
        let own = [
            ("process.roles", "controller".to_string()),
            (
                "controller.listener",
                format!("127.0.0.1:{controller_port}"),
            ),
        ];
        let own = own.iter().map(|(k, v)| (k.to_string(), v.clone()));
        for (k, v) in self.settings.iter().cloned().chain(own) {
            cmd.args(["--set", &format!("{k}={v}")]);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        die_with_parent(&mut cmd);
        let cmdline = format!("{cmd:?}");
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {cmdline}: {e}"))?;
        let lines = stdout_lines(&mut child);
        self.child = Some(child);
        match self.wait_ready(&lines) {
            Ok((controller, metrics)) => {
                self.controller = controller;
                self.metrics = metrics;
                Ok(())
            }
            Err(why) => {
                if let Some(mut c) = self.child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                Err(format!(
                    "controller start #{} ({cmdline}) failed: {why}\n\
                     --- controller stderr (tail) ---\n{}",
                    self.starts,
                    self.stderr_tail(6000)
                ))
            }
        }
    }

    /// The controller and metrics addresses from `KEEL_READY`.
    fn wait_ready(&mut self, lines: &Receiver<String>) -> Result<(SocketAddr, SocketAddr), String> {
        wait_for_ready_line(&mut self.child, lines, |line| {
            Some(
                ReadyLine::parse(line)?.and_then(|r| match (r.node, r.controller, r.metrics) {
                    (0, Some(c), Some(m)) if c.port() != 0 && m.port() != 0 => Ok((c, m)),
                    _ => Err(format!(
                        "ready line {line:?}: node 0 with controller= and metrics= ports expected"
                    )),
                }),
            )
        })
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- controller stderr ({}) tail ---\n{}",
                self.log_path().display(),
                self.stderr_tail(6000)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_on_works_inside_a_runtime() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let v = rt.block_on(async { block_on(async { 7 }) });
        assert_eq!(v, 7);
    }

    #[test]
    fn opts_builder() {
        let o = ClusterOpts::default()
            .brokers(5)
            .set("min.insync.replicas", "2");
        assert_eq!(o.brokers, 5);
        assert_eq!(o.settings, [("min.insync.replicas".into(), "2".into())]);
    }
}
