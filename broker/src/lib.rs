//! The Keel broker library.
//!
//! Module map:
//! - [`alloc_guard`]: the global allocator guard against hostile array length prefixes.
//! - [`config`]: [`BrokerConfig`], Kafka property names, TOML and `--set` overrides.
//! - [`server`]: the Kafka listener; per-connection reader and in-order writer.
//! - [`handlers`]: one file per Kafka API.
//! - [`topics`]: the topic registry (persisted) and replica create/delete.
//! - [`replica`]: one partition replica: log, high watermark, acks and group commit.
//! - [`maintenance`]: timers for checkpoints, retention, segment roll and interval flush.
//! - [`metrics`]: metric names, the Prometheus recorder and `/metrics`.
//! - [`error`]: errors and the single mapping to Kafka error codes.

pub mod alloc_guard;
pub mod config;
pub mod controller;
pub mod error;
pub mod handlers;
pub mod maintenance;
pub mod metrics;
pub mod replica;
pub mod replication;
pub mod server;
pub mod topics;

pub use config::{BrokerConfig, ConfigError};
pub use error::BrokerError;

use replica::FatalSignal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use topics::Topics;

/// What every request handler may read: narrow on purpose.
pub struct Shared {
    pub config: BrokerConfig,
    pub topics: Arc<Topics>,
    /// Host and port given to clients in Metadata.
    pub advertised: (String, i32),
    /// Cancelled when the broker stops taking requests.
    pub stop: CancellationToken,
}

impl server::Service for Shared {
    fn apis(&self) -> &'static [keel_protocol::api::ApiSupport] {
        keel_protocol::api::SUPPORTED_APIS
    }

    fn max_frame(&self) -> usize {
        self.config.socket_request_max_bytes
    }

    fn max_inflight(&self) -> usize {
        self.config.max_inflight_per_connection
    }

    fn stop(&self) -> &CancellationToken {
        &self.stop
    }

    fn dispatch(
        self: &Arc<Self>,
        req: keel_protocol::api::ParsedRequest,
    ) -> Result<Option<handlers::Reply>, server::RequestError> {
        handlers::dispatch(self, req)
    }
}

pub struct Broker;

/// A running broker.
pub struct BrokerHandle {
    node_id: i32,
    kafka_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    background: CancellationToken,
    connections: TaskTracker,
    tasks: Vec<JoinHandle<()>>,
    fatal: FatalSignal,
    _lock: DataDirLock,
}

impl Broker {
    /// Recovers the data directory, binds the listeners and starts serving.
    pub async fn start(config: BrokerConfig) -> Result<BrokerHandle, BrokerError> {
        config.validate()?;
        if config.is_cluster() {
            // The controller and replication cores exist (see docs/REPLICATION.md) but are
            // not wired to listeners yet: refuse rather than run standalone silently.
            return Err(BrokerError::Config(ConfigError::Invalid {
                key: "controller.quorum.voters / process.roles".into(),
                value: String::new(),
                reason:
                    "cluster mode is not available yet; run without them for a standalone broker"
                        .into(),
            }));
        }
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            BrokerError::io(
                format!("creating data dir {}", config.data_dir.display()),
                e,
            )
        })?;
        let lock = DataDirLock::acquire(&config.data_dir)?;
        let metrics_handle = metrics::recorder();

        let background = CancellationToken::new();
        let fatal = FatalSignal::default();
        let topics = Arc::new(Topics::load(
            &config.data_dir,
            config.log.clone(),
            config.min_insync_replicas,
            background.clone(),
            fatal.clone(),
        )?);

        let addr = config.listener_addr()?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| BrokerError::Bind {
                what: "kafka",
                addr: config.listener.clone(),
                source,
            })?;
        let kafka_addr = listener
            .local_addr()
            .map_err(|e| BrokerError::io("reading listener address", e))?;
        let advertised = match &config.advertised_listener {
            Some(a) => config::parse_host_port("advertised.listeners", a)?,
            None => (kafka_addr.ip().to_string(), i32::from(kafka_addr.port())),
        };

        let mut tasks = Vec::new();
        let metrics_addr = match &config.metrics_listener {
            Some(m) => {
                let l = TcpListener::bind(m)
                    .await
                    .map_err(|source| BrokerError::Bind {
                        what: "metrics",
                        addr: m.clone(),
                        source,
                    })?;
                let a = l
                    .local_addr()
                    .map_err(|e| BrokerError::io("reading metrics address", e))?;
                tasks.push(tokio::spawn(metrics::serve(
                    l,
                    metrics_handle,
                    background.clone(),
                )));
                Some(a)
            }
            None => None,
        };
        tasks.push(tokio::spawn(metrics::partition_gauges(
            topics.clone(),
            Duration::from_millis(config.metrics_interval_ms.max(100)),
            background.clone(),
        )));
        tasks.extend(maintenance::spawn_all(
            &config,
            topics.clone(),
            background.clone(),
            fatal.clone(),
        ));

        let shared = Arc::new(Shared {
            config,
            topics,
            advertised,
            stop: CancellationToken::new(),
        });
        let connections = TaskTracker::new();
        tasks.push(tokio::spawn(server::accept_loop(
            shared.clone(),
            listener,
            connections.clone(),
        )));
        tracing::info!(node = shared.config.node_id, %kafka_addr, ?metrics_addr, data_dir = %shared.config.data_dir.display(), "broker started");
        Ok(BrokerHandle {
            node_id: shared.config.node_id,
            kafka_addr,
            metrics_addr,
            shared,
            background,
            connections,
            tasks,
            fatal,
            _lock: lock,
        })
    }
}

impl BrokerHandle {
    pub fn node_id(&self) -> i32 {
        self.node_id
    }

    /// The Kafka listener's bound address (none on a controller-only node).
    pub fn kafka_addr(&self) -> Option<SocketAddr> {
        Some(self.kafka_addr)
    }

    /// The controller listener's bound address, on a node with the controller role.
    pub fn controller_addr(&self) -> Option<SocketAddr> {
        None
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Resolves only if the broker stops on its own (a fatal error).
    pub async fn wait(&mut self) -> Result<(), BrokerError> {
        let reason = self.fatal.raised().await;
        Err(BrokerError::Fatal(reason))
    }

    /// Clean shutdown: stop accepting, let in-flight requests finish (bounded), flush,
    /// checkpoint and close every log with its clean-shutdown marker.
    pub async fn shutdown(self) -> Result<(), BrokerError> {
        tracing::info!(node = self.node_id, "shutting down");
        self.shared.stop.cancel();
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
        let topics = self.shared.topics.clone();
        tokio::task::spawn_blocking(move || topics.close_all())
            .await
            .map_err(|e| BrokerError::Fatal(format!("closing logs panicked: {e}")))?;
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
