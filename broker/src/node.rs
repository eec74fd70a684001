//! A node: the roles its configuration asks for (controller, broker or both), their
//! listeners and tasks, started together and stopped in order.

use crate::config::{self, BrokerConfig};
use crate::controller::quorum::driver::Quorum;
use crate::error::{BrokerError, FatalSignal};
use crate::handlers::Shared;
use crate::partition::maintenance;
use crate::partition::registry::Topics;
use crate::{broker, metrics, server, upgrade};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub struct Broker;

/// A running node: a Kafka listener (broker role), a controller listener (controller
/// role), or both.
pub struct BrokerHandle {
    node_id: i32,
    kafka_addr: Option<SocketAddr>,
    controller_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    topics: Option<Arc<Topics>>,
    broker: Option<Arc<broker::BrokerRuntime>>,
    /// Cancelled first on shutdown: the listeners stop taking requests.
    listeners_stop: CancellationToken,
    background: CancellationToken,
    connections: TaskTracker,
    tasks: Vec<JoinHandle<()>>,
    fatal: FatalSignal,
    _lock: DataDirLock,
}

async fn bind(what: &'static str, addr: &str) -> Result<(TcpListener, SocketAddr), BrokerError> {
    let bind_err = |source| BrokerError::Bind {
        what,
        addr: addr.to_string(),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
    let local = listener
        .local_addr()
        .map_err(|e| BrokerError::io(format!("reading the {what} listener address"), e))?;
    Ok((listener, local))
}

impl Broker {
    /// Recovers the data directory, binds the listeners and starts every role's tasks.
    /// A broker serves clients once [`BrokerHandle::serving`] resolves.
    pub async fn start(config: BrokerConfig) -> Result<BrokerHandle, BrokerError> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            BrokerError::io(
                format!("creating data dir {}", config.data_dir.display()),
                e,
            )
        })?;
        let lock = DataDirLock::acquire(&config.data_dir)?;
        let metrics_handle = metrics::recorder();
        match crate::limits::raise_open_files() {
            Ok(l) => {
                tracing::info!(
                    before = l.before,
                    now = l.now,
                    hard = l.hard,
                    "open files limit"
                );
                ::metrics::gauge!(metrics::PROCESS_OPEN_FILES_LIMIT).set(l.now as f64);
            }
            Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
        }

        let background = CancellationToken::new();
        let listeners_stop = CancellationToken::new();
        let fatal = FatalSignal::default();
        let connections = TaskTracker::new();
        let mut tasks = Vec::new();

        let metrics_addr = match &config.metrics_listener {
            Some(m) => {
                let (l, a) = bind("metrics", m).await?;
                tasks.push(tokio::spawn(metrics::serve(
                    l,
                    metrics_handle,
                    background.clone(),
                )));
                Some(a)
            }
            None => None,
        };

        let controller = if config.roles.controller {
            let (addr, driver, mut started) =
                start_controller(&config, &listeners_stop, &background, &fatal, &connections)
                    .await?;
            tasks.append(&mut started);
            Some((addr, driver))
        } else {
            None
        };
        upgrade::import_standalone_topics(&config, controller.as_ref().map(|(_, q)| &**q)).await?;

        let (kafka_addr, topics, broker) = if config.roles.broker {
            // The voters this broker reports to: as configured, or this node's own
            // controller listener (which may have been given port 0).
            let voters = match (config.controller_voters.is_empty(), &controller) {
                (false, _) => config.controller_voters.clone(),
                (true, Some((addr, _))) => vec![(config.node_id, addr.to_string())],
                (true, None) => unreachable!("validate() requires voters or the controller role"),
            };
            let (addr, topics, cluster, mut started) = start_broker(
                config.clone(),
                voters,
                &listeners_stop,
                &background,
                &fatal,
                &connections,
            )
            .await?;
            tasks.append(&mut started);
            (Some(addr), Some(topics), Some(cluster))
        } else {
            (None, None, None)
        };
        let controller_addr = controller.map(|(addr, _)| addr);
        tracing::info!(node = config.node_id, ?kafka_addr, ?controller_addr, ?metrics_addr, data_dir = %config.data_dir.display(), "node started");
        Ok(BrokerHandle {
            node_id: config.node_id,
            kafka_addr,
            controller_addr,
            metrics_addr,
            topics,
            broker,
            listeners_stop,
            background,
            connections,
            tasks,
            fatal,
            _lock: lock,
        })
    }
}

/// The controller role: opens the metadata log and starts this node's voter, serves the
/// controller listener.
async fn start_controller(
    config: &BrokerConfig,
    listeners_stop: &CancellationToken,
    background: &CancellationToken,
    fatal: &FatalSignal,
    connections: &TaskTracker,
) -> Result<(SocketAddr, Arc<Quorum>, Vec<JoinHandle<()>>), BrokerError> {
    use crate::controller::quorum::driver::Timing;
    use crate::controller::service::ControllerService;
    use crate::controller::{ControllerConfig, METADATA_TOPIC};
    let controller_config = ControllerConfig {
        session_timeout_ms: config.session_timeout_ms,
        connection_grace_ms: config.session_connection_grace_ms,
        default_replication_factor: config.default_replication_factor,
        default_min_insync_replicas: config.min_insync_replicas,
        default_partitions: config.num_partitions,
    };
    controller_config
        .validate()
        .map_err(|e| BrokerError::Fatal(format!("controller configuration: {e}")))?;
    // A voter listens where the voters list says, unless told otherwise.
    let listen = match config.voter_addr(config.node_id) {
        Some(addr) if config.controller_listener.ends_with(":0") => addr.to_string(),
        _ => config.controller_listener.clone(),
    };
    let (listener, addr) = bind("controller", &listen).await?;
    let voters = if config.controller_voters.is_empty() {
        vec![(config.node_id, addr.to_string())]
    } else {
        config.controller_voters.clone()
    };
    let timing = Timing::new(
        config.election_timeout_ms,
        config.quorum_heartbeat_interval_ms,
        config.snapshot_entries,
        Duration::from_millis((config.heartbeat_interval_ms / 4).clamp(50, 1000)),
    );
    let dir = config.data_dir.join(format!("{METADATA_TOPIC}-0"));
    metrics::register_controller_counters();
    let (quorum, voter_thread) = Quorum::start(
        config.node_id,
        &dir,
        &voters,
        controller_config,
        timing,
        fatal.clone(),
        background.clone(),
    )
    .map_err(|e| BrokerError::Fatal(format!("opening the metadata log: {e}")))?;
    let service = Arc::new(ControllerService {
        quorum: quorum.clone(),
        cluster_id: config.cluster_id.clone(),
        max_frame: config.socket_request_max_bytes,
        stop: listeners_stop.clone(),
        heartbeat_links: Default::default(),
    });
    let stopped = background.clone();
    let tasks = vec![
        tokio::spawn(server::accept_loop(service, listener, connections.clone())),
        // Stopping the node waits for the voter to close its log.
        tokio::spawn(async move {
            stopped.cancelled().await;
            let _ = tokio::task::spawn_blocking(move || voter_thread.join()).await;
        }),
    ];
    Ok((addr, quorum, tasks))
}

type BrokerParts = (
    SocketAddr,
    Arc<Topics>,
    Arc<broker::BrokerRuntime>,
    Vec<JoinHandle<()>>,
);

/// The broker role: the replicas the metadata assigns here, the Kafka listener, the link
/// to the controller `voters`, and maintenance.
async fn start_broker(
    config: BrokerConfig,
    voters: Vec<(i32, String)>,
    listeners_stop: &CancellationToken,
    background: &CancellationToken,
    fatal: &FatalSignal,
    connections: &TaskTracker,
) -> Result<BrokerParts, BrokerError> {
    let topics = Arc::new(Topics::new(
        config.node_id,
        config.replica_lag_time_max_ms,
        &config.data_dir,
        config.log.clone(),
        config.min_insync_replicas,
        background.clone(),
        fatal.clone(),
    ));
    config.listener_addr()?;
    let (listener, kafka_addr) = bind("kafka", &config.listener).await?;
    let advertised = match &config.advertised_listener {
        Some(a) => config::parse_host_port("advertised.listeners", a)?,
        None => (kafka_addr.ip().to_string(), i32::from(kafka_addr.port())),
    };
    metrics::register_broker_counters();
    let mut tasks = vec![tokio::spawn(crate::partition::gauges::broker_gauges(
        topics.clone(),
        background.clone(),
    ))];
    tasks.extend(maintenance::spawn_all(
        &config,
        topics.clone(),
        background.clone(),
        fatal.clone(),
    ));
    let cluster = broker::BrokerRuntime::new(
        config.clone(),
        advertised,
        voters,
        topics.clone(),
        background.clone(),
    );
    tasks.extend(cluster.spawn());
    let groups = crate::group::GroupCoordinator::new(
        config.groups.clone(),
        topics.clone(),
        cluster.clone(),
        listeners_stop.clone(),
    );
    tasks.push(tokio::spawn(groups.clone().run()));
    let (fetch_sessions, session_gauges) = crate::handlers::fetch_session_cache(&config);
    let until_stopped = background.clone();
    tasks.push(tokio::spawn(async move {
        let _gauges = session_gauges;
        until_stopped.cancelled().await;
    }));
    let shared = Arc::new(Shared {
        config,
        topics: topics.clone(),
        stop: listeners_stop.clone(),
        broker: cluster.clone(),
        groups,
        fetch_sessions,
    });
    tasks.push(tokio::spawn(server::accept_loop(
        shared,
        listener,
        connections.clone(),
    )));
    Ok((kafka_addr, topics, cluster, tasks))
}

impl BrokerHandle {
    pub fn node_id(&self) -> i32 {
        self.node_id
    }

    /// The Kafka listener's bound address (none on a controller-only node).
    pub fn kafka_addr(&self) -> Option<SocketAddr> {
        self.kafka_addr
    }

    /// The controller listener's bound address, on a node with the controller role.
    pub fn controller_addr(&self) -> Option<SocketAddr> {
        self.controller_addr
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Resolves once the node serves: at once without the broker role; with it, once the
    /// broker is registered, has the metadata up to its registration, and is unfenced (or
    /// stays fenced on purpose while a replica repairs lost data from its leader). Until
    /// then topics cannot be created on it (it counts for no replica). Waits as long as
    /// the controller cannot be reached.
    pub async fn serving(&self) {
        if let Some(rt) = &self.broker {
            rt.serving().await;
        }
    }

    /// Resolves only if the node stops on its own (a fatal error).
    pub async fn wait(&self) -> Result<(), BrokerError> {
        let reason = self.fatal.raised().await;
        Err(BrokerError::Fatal(reason))
    }

    /// Clean shutdown: stop accepting, let in-flight requests finish (bounded), flush,
    /// checkpoint and close every log with its clean-shutdown marker.
    pub async fn shutdown(self) -> Result<(), BrokerError> {
        tracing::info!(node = self.node_id, "shutting down");
        if let Some(rt) = &self.broker {
            rt.controlled_shutdown(Duration::from_secs(5)).await;
        }
        self.listeners_stop.cancel();
        self.connections.close();
        if tokio::time::timeout(Duration::from_secs(10), self.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!("in-flight requests did not finish within 10 s; closing anyway");
        }
        self.background.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(topics) = self.topics {
            tokio::task::spawn_blocking(move || topics.close_all())
                .await
                .map_err(|e| BrokerError::Fatal(format!("closing logs panicked: {e}")))?;
        }
        tracing::info!(node = self.node_id, "stopped cleanly");
        Ok(())
    }
}

/// An exclusive `flock` on `<data>/.lock`: two brokers never share a data directory.
struct DataDirLock {
    _file: std::fs::File,
}

impl DataDirLock {
    fn acquire(dir: &std::path::Path) -> Result<Self, BrokerError> {
        use std::os::fd::AsRawFd;
        let path = dir.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| BrokerError::io(format!("opening {}", path.display()), e))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(BrokerError::io(
                format!("data dir {} is in use by another broker", dir.display()),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Self { _file: file })
    }
}
