//! Test support for the integration, compatibility and bad-input suites.
//!
//! Every suite runs the real `keel` binary (as `keel-testbin`, built by cargo for the
//! integration tests) and talks to it over 127.0.0.1 only.
//!
//! - [`broker`]: [`TestBroker`], one broker process with its own temp data dir, killed on drop.
//! - [`cluster`]: [`TestCluster`], N brokers and a controller (one, or a quorum of voters);
//!   kill -9, SIGSTOP/SIGCONT and restart per node; leaders from Metadata, LEO/HW from each
//!   node's metrics; [`KeepLogs`] keeps the nodes' logs of a failed test.
//! - [`command`]: run a child process with stdin, a timeout and captured output; the
//!   [`keel`] CLI helper.
//! - [`tools`]: find external tools (`kcat`, `python3` modules); a missing tool fails the test.
//! - [`wait`]: [`wait_until`], the only way tests wait for a condition.
//! - [`raw`]: a small blocking Kafka connection built on the `kafka-protocol` codecs, used as an
//!   independent oracle and to send malformed requests.
//! - [`disk`]: disk faults on a stopped node's data: a simulated power cut (with the brokers'
//!   sync journal), a flipped byte, a torn tail.
//! - [`proxy`]: a fault-injecting TCP proxy per node ([`proxy::Net`] drops, black-holes or
//!   delays the links between nodes), used by a cluster started with fault proxies.
//! - [`chaos`]: the Jepsen-style run behind `keel-chaos`: workload, seeded nemesis schedule,
//!   history checker and the checks of a healed cluster.
//! - [`data`]: deterministic keyed records with headers, and their text forms for kcat.
//! - [`runtime`]: the tokio runtime a test drives its clients on.

pub mod broker;
pub mod chaos;
pub mod cluster;
pub mod command;
pub mod data;
pub mod disk;
pub mod inspect;
pub mod load;
pub mod proxy;
pub mod raw;
pub mod stream;
pub mod tools;
pub mod wait;

pub use broker::{BrokerOpts, TestBroker};
pub use cluster::{ClusterOpts, KeepLogs, Node, TestCluster};
pub use command::{keel, keel_bin, run, CmdOutput};
pub use data::TestRecord;
pub use tools::{require_python_modules, require_tool};
pub use wait::{poll_until, wait_for, wait_until};

/// One cluster at a time within a test binary: four node processes already share two
/// cores. Hold the guard for the whole test.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A multi-thread tokio runtime with two workers, on which a test drives its clients.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build a runtime")
}
