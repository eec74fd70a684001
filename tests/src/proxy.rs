//! A fault-injecting TCP proxy for the chaos suite, without root: one [`FaultProxy`] in front
//! of each node's listener, all of a cluster's proxies sharing one [`Net`] fault table.
//!
//! Nodes advertise their proxy's address, so every connection to a node (replica fetchers,
//! brokers to the controller, test clients) goes through that node's proxy. The proxy tells
//! who opened a connection from the client id of its first Kafka request frame
//! (`keel-fetcher-<id>`, `keel-broker-<id>` and `keel-voter-<id>` are node `<id>`, anything else is a
//! [`Peer::Client`]) and forwards every byte unchanged, that first frame included.
//!
//! Faults are set per link (`from` node → `to` node, the direction the connection was opened
//! in) and apply to both byte directions of the link's connections, existing ones included:
//! the table lives in a `tokio::sync::watch` channel that every pump of every proxy
//! subscribes to, and a pump waits on "the table changed" next to each read, delay and write,
//! so a change reaches it at once. Client connections are never faulted.
//!
//! Each proxy runs on its own thread with a current-thread tokio runtime; dropping the proxy
//! stops accepting, drops the runtime (and with it every connection) and joins the thread.
//! Each direction of a connection has one chunk of at most [`CHUNK`] bytes in flight.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::time::{sleep_until, timeout, timeout_at, Instant};

/// Largest chunk a pump reads and forwards at once (one in flight per direction).
pub const CHUNK: usize = 64 << 10;
/// How long the proxy waits for a connection's first frame before calling it a client.
pub const CLASSIFY_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an accepted connection waits for [`FaultProxy::set_target`] before it is closed.
pub const TARGET_WAIT: Duration = Duration::from_secs(10);
/// Bound on connecting to the target.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A first frame claiming more than this is not a Kafka request.
const MAX_FRAME: i32 = 100 << 20;
/// Frame size, api key, api version, correlation id and client id length.
const HEADER_PREFIX: usize = 14;
/// Client id of a broker's replica fetcher, followed by its node id.
const FETCHER_PREFIX: &str = "keel-fetcher-";
/// Client id of a broker's connection to the controller, followed by its node id.
const BROKER_PREFIX: &str = "keel-broker-";
/// Client id of a controller voter's connection to another voter, followed by its node id.
const VOTER_PREFIX: &str = "keel-voter-";
/// Pause after a failed accept (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Who opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// Anything that is not a Keel node: test clients, tools, unparseable first frames.
    Client,
    /// The node with this id (a replica fetcher or a broker's controller connection).
    Node(i32),
}

impl Peer {
    /// Classifies a Kafka client id: `keel-fetcher-<id>`, `keel-broker-<id>` and
    /// `keel-voter-<id>` are node `<id>`, anything else is [`Peer::Client`].
    pub fn from_client_id(client_id: &str) -> Peer {
        [FETCHER_PREFIX, BROKER_PREFIX, VOTER_PREFIX]
            .iter()
            .find_map(|prefix| client_id.strip_prefix(prefix)?.parse().ok())
            .map_or(Peer::Client, Peer::Node)
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Client => f.write_str("client"),
            Peer::Node(id) => write!(f, "node {id}"),
        }
    }
}

/// What happens to traffic on a link from one node to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkFault {
    /// Forward every chunk after this delay (order kept). A request/response round trip
    /// through the link takes at least twice the delay.
    Delay(Duration),
    /// Close existing connections on the link (both sides) and close new ones right after
    /// accept (once their first frame told who opened them).
    Drop,
    /// Stop forwarding in both directions but keep sockets open (stop reading, so TCP
    /// backpressure builds); on heal, forwarding resumes with the held bytes, as after a
    /// healed partition.
    Blackhole,
}

/// The fault table: `(from, to)` → fault.
type Faults = BTreeMap<(i32, i32), LinkFault>;

/// The shared fault table of a cluster: a cheap-to-clone handle.
#[derive(Clone)]
pub struct Net {
    inner: Arc<NetInner>,
}

struct NetInner {
    /// The table; every pump holds a receiver and is woken when it changes.
    faults: watch::Sender<Faults>,
    accepted: Mutex<BTreeMap<(Peer, i32), u64>>,
    dropped: AtomicU64,
    unreachable: AtomicU64,
    bytes: AtomicU64,
}

/// Counters of a [`Net`], for a test's report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Connections accepted (and classified) per (who opened it, node it was for).
    pub accepted: BTreeMap<(Peer, i32), u64>,
    /// Connections closed by a [`LinkFault::Drop`], existing or new.
    pub dropped: u64,
    /// Connections closed because the target was not set in time, refused or timed out.
    pub unreachable: u64,
    /// Bytes forwarded, both directions, all proxies.
    pub bytes: u64,
}

impl fmt::Display for NetStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("accepted:")?;
        for ((peer, to), n) in &self.accepted {
            write!(f, " {peer}->node {to}: {n},")?;
        }
        write!(
            f,
            " dropped: {}, unreachable: {}, forwarded: {} bytes",
            self.dropped, self.unreachable, self.bytes
        )
    }
}

impl Default for Net {
    fn default() -> Self {
        Net::new()
    }
}

impl fmt::Debug for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Net")
            .field("faults", &*self.inner.faults.borrow())
            .finish_non_exhaustive()
    }
}

impl Net {
    /// An empty fault table: every link healthy.
    pub fn new() -> Net {
        Net {
            inner: Arc::new(NetInner {
                faults: watch::Sender::new(Faults::new()),
                accepted: Mutex::new(BTreeMap::new()),
                dropped: AtomicU64::new(0),
                unreachable: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
            }),
        }
    }

    /// Sets (`Some`) or heals (`None`) the fault on traffic from node `from` to node `to`
    /// (the connection's direction: opened by `from` to `to`'s listener; the fault applies to
    /// both byte directions of such connections). Existing connections see it at once.
    pub fn set(&self, from: i32, to: i32, fault: Option<LinkFault>) {
        self.inner.faults.send_if_modified(|faults| match fault {
            Some(fault) => faults.insert((from, to), fault) != Some(fault),
            None => faults.remove(&(from, to)).is_some(),
        });
    }

    /// Cuts both directions between two nodes with `fault`.
    pub fn partition(&self, a: i32, b: i32, fault: LinkFault) {
        self.set(a, b, Some(fault));
        self.set(b, a, Some(fault));
    }

    /// Heals both directions between two nodes.
    pub fn heal(&self, a: i32, b: i32) {
        self.set(a, b, None);
        self.set(b, a, None);
    }

    /// Isolates `node` from every node of `others` (both directions; `node` itself may be in
    /// `others` and is skipped).
    pub fn isolate(&self, node: i32, others: &[i32], fault: LinkFault) {
        for &other in others.iter().filter(|&&o| o != node) {
            self.partition(node, other, fault);
        }
    }

    /// Heals every link.
    pub fn heal_all(&self) {
        self.inner.faults.send_if_modified(|faults| {
            let had = !faults.is_empty();
            faults.clear();
            had
        });
    }

    /// The current faults as `(from, to, fault)`, ordered by `(from, to)`.
    pub fn faults(&self) -> Vec<(i32, i32, LinkFault)> {
        self.inner
            .faults
            .borrow()
            .iter()
            .map(|(&(from, to), &fault)| (from, to, fault))
            .collect()
    }

    /// The fault on the link from `from` to `to`, if any.
    pub fn fault(&self, from: i32, to: i32) -> Option<LinkFault> {
        self.inner.faults.borrow().get(&(from, to)).copied()
    }

    /// Counters for the report: connections accepted per (peer, node), connections dropped
    /// by faults, connections whose target was unreachable, bytes forwarded.
    pub fn stats(&self) -> NetStats {
        NetStats {
            accepted: self.accepted().clone(),
            dropped: self.inner.dropped.load(Ordering::Relaxed),
            unreachable: self.inner.unreachable.load(Ordering::Relaxed),
            bytes: self.inner.bytes.load(Ordering::Relaxed),
        }
    }

    fn accepted(&self) -> std::sync::MutexGuard<'_, BTreeMap<(Peer, i32), u64>> {
        self.inner
            .accepted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn count_accepted(&self, peer: Peer, to: i32) {
        *self.accepted().entry((peer, to)).or_default() += 1;
    }
}

/// How to start a [`FaultProxy`]; the default binds an ephemeral port and uses the module's
/// timeouts.
#[derive(Debug, Clone)]
pub struct ProxyOpts {
    /// Port on 127.0.0.1; 0 picks a free one. A restarted proxy asks for the port it had, so
    /// the address nodes advertise stays valid.
    pub port: u16,
    /// See [`CLASSIFY_TIMEOUT`].
    pub classify_timeout: Duration,
    /// See [`TARGET_WAIT`].
    pub target_wait: Duration,
    /// See [`CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
}

impl Default for ProxyOpts {
    fn default() -> Self {
        ProxyOpts {
            port: 0,
            classify_timeout: CLASSIFY_TIMEOUT,
            target_wait: TARGET_WAIT,
            connect_timeout: CONNECT_TIMEOUT,
        }
    }
}

/// A TCP proxy on 127.0.0.1 in front of node `to`, applying the faults of its [`Net`];
/// stops and closes all its connections on drop.
pub struct FaultProxy {
    to: i32,
    addr: SocketAddr,
    target: watch::Sender<Option<SocketAddr>>,
    open: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("to", &self.to)
            .field("addr", &self.addr)
            .field("target", &self.target())
            .finish_non_exhaustive()
    }
}

/// What a proxy's connections share.
struct Ctx {
    net: Net,
    to: i32,
    opts: ProxyOpts,
    target: watch::Receiver<Option<SocketAddr>>,
    open: Arc<AtomicUsize>,
}

impl FaultProxy {
    /// Binds 127.0.0.1 on an ephemeral port in front of node `to`; panics if it cannot. The
    /// target may not be known yet: see [`FaultProxy::set_target`].
    pub fn start(net: &Net, to: i32) -> FaultProxy {
        FaultProxy::start_with(net, to, ProxyOpts::default())
            .unwrap_or_else(|e| panic!("start a fault proxy for node {to}: {e}"))
    }

    /// Like [`FaultProxy::start`] on a given port (to keep the same address after a test
    /// restarts things); fails if the port is taken.
    pub fn start_on(net: &Net, to: i32, port: u16) -> io::Result<FaultProxy> {
        FaultProxy::start_with(
            net,
            to,
            ProxyOpts {
                port,
                ..ProxyOpts::default()
            },
        )
    }

    /// Starts a proxy in front of node `to` with explicit options.
    pub fn start_with(net: &Net, to: i32, opts: ProxyOpts) -> io::Result<FaultProxy> {
        // std sets SO_REUSEADDR, so a port whose old connections are in TIME_WAIT rebinds.
        let listener = StdTcpListener::bind((Ipv4Addr::LOCALHOST, opts.port))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let (target, target_rx) = watch::channel(None);
        let (stop, stop_rx) = oneshot::channel();
        let open = Arc::new(AtomicUsize::new(0));
        let ctx = Arc::new(Ctx {
            net: net.clone(),
            to,
            opts,
            target: target_rx,
            open: open.clone(),
        });
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{to}"))
            .spawn(move || {
                runtime.block_on(accept_loop(listener, ctx, stop_rx));
                // Dropping the runtime drops every connection task, closing its sockets.
                drop(runtime);
            })?;
        Ok(FaultProxy {
            to,
            addr,
            target,
            open,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address clients (and the node's advertised listener) use.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The node this proxy is in front of.
    pub fn to(&self) -> i32 {
        self.to
    }

    /// Where to forward. Connections accepted before a target is set wait for it (at most
    /// [`TARGET_WAIT`], then close); a new target applies to new connections.
    pub fn set_target(&self, target: SocketAddr) {
        self.target.send_replace(Some(target));
    }

    /// The current target, if set.
    pub fn target(&self) -> Option<SocketAddr> {
        *self.target.borrow()
    }

    /// Connections accepted and not yet closed (including ones still being classified or
    /// waiting for the target).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    /// Stops accepting, closes every connection of this proxy and joins its thread; the port
    /// is free when this returns.
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: StdTcpListener, ctx: Arc<Ctx>, mut stop: oneshot::Receiver<()>) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("fault proxy for node {}: cannot listen: {e}", ctx.to);
            return;
        }
    };
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((conn, _)) => {
                    tokio::spawn(serve(conn, ctx.clone()));
                }
                Err(_) => tokio::time::sleep(ACCEPT_BACKOFF).await,
            },
        }
    }
}

/// Counts a connection as open while it lives.
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(open: &Arc<AtomicUsize>) -> OpenGuard {
        open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(open.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a pump stopped early; either way the whole connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The link's fault is [`LinkFault::Drop`].
    Cut,
    /// A socket error (e.g. a reset) on either side.
    Io,
}

/// One accepted connection: classify, apply the fault, connect to the target, pump.
async fn serve(mut client: TcpStream, ctx: Arc<Ctx>) {
    let _open = OpenGuard::new(&ctx.open);
    let _ = client.set_nodelay(true);
    let Ok((peer, first)) = classify(&mut client, ctx.opts.classify_timeout).await else {
        return;
    };
    ctx.net.count_accepted(peer, ctx.to);
    let link = match peer {
        Peer::Node(from) => Some((from, ctx.to)),
        Peer::Client => None,
    };
    let mut faults = ctx.net.inner.faults.subscribe();
    // A dropped link closes new connections; a blackholed one holds them before connecting.
    if gate(&mut faults, link).await.is_err() {
        ctx.net.inner.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut target = ctx.target.clone();
    let target = match timeout(ctx.opts.target_wait, target.wait_for(Option::is_some)).await {
        Ok(Ok(target)) => *target,
        _ => None,
    };
    let server = match target {
        Some(addr) => timeout(ctx.opts.connect_timeout, TcpStream::connect(addr)).await,
        None => Ok(Err(io::ErrorKind::NotConnected.into())),
    };
    let Ok(Ok(server)) = server else {
        ctx.net.inner.unreachable.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let _ = server.set_nodelay(true);
    let (client_rd, client_wr) = client.into_split();
    let (server_rd, server_wr) = server.into_split();
    let up = pump(client_rd, server_wr, first, link, faults.clone(), &ctx.net);
    let down = pump(server_rd, client_wr, Vec::new(), link, faults, &ctx.net);
    // The first error ends both pumps; returning drops (closes) both sockets.
    if let Err(End::Cut) = tokio::try_join!(up, down) {
        ctx.net.inner.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Reads the connection's first bytes until the client id of a Kafka request frame is known,
/// the bytes cannot be such a frame, the peer half-closes, or `limit` passes. Returns who
/// opened the connection and the bytes read, which are still to be forwarded.
async fn classify(conn: &mut TcpStream, limit: Duration) -> io::Result<(Peer, Vec<u8>)> {
    let deadline = Instant::now() + limit;
    let mut first = Vec::new();
    loop {
        if let Some(peer) = parse_first_frame(&first) {
            return Ok((peer, first));
        }
        first.reserve(1024);
        match timeout_at(deadline, conn.read_buf(&mut first)).await {
            Err(_) | Ok(Ok(0)) => return Ok((Peer::Client, first)),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// Who sent `buf`, the start of a Kafka request (`i32 size`, `i16 api_key`,
/// `i16 api_version`, `i32 correlation_id`, `i16` client id length with -1 for null, client
/// id); `None` while more bytes are needed. Anything that cannot be a request is a client.
fn parse_first_frame(buf: &[u8]) -> Option<Peer> {
    let size = i32::from_be_bytes(buf.get(..4)?.try_into().ok()?);
    if !(10..=MAX_FRAME).contains(&size) {
        return Some(Peer::Client);
    }
    let len = i16::from_be_bytes(buf.get(12..HEADER_PREFIX)?.try_into().ok()?);
    // Negative: null (-1) or garbage.
    let Ok(len) = usize::try_from(len) else {
        return Some(Peer::Client);
    };
    if HEADER_PREFIX - 4 + len > size.unsigned_abs() as usize {
        return Some(Peer::Client);
    }
    let client_id = buf.get(HEADER_PREFIX..HEADER_PREFIX + len)?;
    Some(std::str::from_utf8(client_id).map_or(Peer::Client, Peer::from_client_id))
}

/// What the link's fault lets a pump do now: forward (after `Some` delay), or stop (`Err`)
/// on [`LinkFault::Drop`]. Waits while the link is blackholed. Client connections (no link)
/// are never faulted.
async fn gate(
    faults: &mut watch::Receiver<Faults>,
    link: Option<(i32, i32)>,
) -> Result<Option<Duration>, End> {
    let Some(link) = link else {
        return Ok(None);
    };
    loop {
        let fault = faults.borrow_and_update().get(&link).copied();
        match fault {
            None => return Ok(None),
            Some(LinkFault::Delay(delay)) => return Ok(Some(delay)),
            Some(LinkFault::Drop) => return Err(End::Cut),
            Some(LinkFault::Blackhole) => faults.changed().await.map_err(|_| End::Cut)?,
        }
    }
}

/// Resolves when the fault table changed since the last [`gate`]; never for client
/// connections.
async fn changed(faults: &mut watch::Receiver<Faults>, link: Option<(i32, i32)>) {
    if link.is_none() || faults.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Forwards `rd` to `wr`, starting with `first`, one chunk at a time, obeying the link's
/// fault before every read and write. On EOF it half-closes `wr` and returns `Ok`.
async fn pump(
    mut rd: OwnedReadHalf,
    mut wr: OwnedWriteHalf,
    first: Vec<u8>,
    link: Option<(i32, i32)>,
    mut faults: watch::Receiver<Faults>,
    net: &Net,
) -> Result<(), End> {
    let (mut start, mut end) = (0, first.len());
    let mut buf = first;
    if buf.len() < CHUNK {
        buf.resize(CHUNK, 0);
    }
    let mut read_at = Instant::now();
    loop {
        if start == end {
            // Blackhole: do not read, so the sender's TCP window fills up.
            gate(&mut faults, link).await?;
            let read = tokio::select! {
                read = rd.read(&mut buf) => read,
                () = changed(&mut faults, link) => continue,
            };
            match read {
                Ok(0) => {
                    let _ = wr.shutdown().await;
                    return Ok(());
                }
                Ok(n) => (start, end, read_at) = (0, n, Instant::now()),
                Err(_) => return Err(End::Io),
            }
        }
        if let Some(delay) = gate(&mut faults, link).await? {
            let due = read_at + delay;
            if due > Instant::now() {
                tokio::select! {
                    () = sleep_until(due) => {}
                    () = changed(&mut faults, link) => continue,
                }
            }
        }
        tokio::select! {
            written = wr.write(&buf[start..end]) => match written {
                Ok(0) | Err(_) => return Err(End::Io),
                Ok(n) => {
                    start += n;
                    net.inner.bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
            },
            () = changed(&mut faults, link) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Read, Write};
    use std::net::{Shutdown, TcpStream as StdTcpStream};
    use std::time::Instant as StdInstant;

    use super::*;

    /// Bound on every blocking read/write of a test client.
    const IO: Duration = Duration::from_secs(10);
    /// How long "nothing arrives" is watched.
    const QUIET: Duration = Duration::from_millis(300);
    /// How long a close may take to be seen.
    const CLOSE: Duration = Duration::from_secs(3);

    /// A TCP echo server on 127.0.0.1; each connection echoes until EOF, then closes.
    struct Echo {
        addr: SocketAddr,
        _runtime: tokio::runtime::Runtime,
    }

    impl Echo {
        fn start() -> Echo {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("echo runtime");
            let listener = runtime
                .block_on(TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
                .expect("bind echo");
            let addr = listener.local_addr().expect("echo addr");
            runtime.spawn(async move {
                while let Ok((conn, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let (mut rd, mut wr) = conn.into_split();
                        let _ = tokio::io::copy(&mut rd, &mut wr).await;
                    });
                }
            });
            Echo {
                addr,
                _runtime: runtime,
            }
        }
    }

    /// A Kafka ApiVersions v3 request frame (header v2) with `client_id`.
    fn frame(client_id: Option<&str>) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend(18i16.to_be_bytes());
        body.extend(3i16.to_be_bytes());
        body.extend(7i32.to_be_bytes());
        match client_id {
            Some(id) => {
                body.extend(i16::try_from(id.len()).unwrap().to_be_bytes());
                body.extend(id.as_bytes());
            }
            None => body.extend((-1i16).to_be_bytes()),
        }
        body.push(0); // header tagged fields
        body.extend([0, 0]); // request body: empty compact strings
        let mut f = i32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        f.extend(body);
        f
    }

    fn connect(addr: SocketAddr) -> StdTcpStream {
        let conn = StdTcpStream::connect_timeout(&addr, IO).expect("connect to the proxy");
        conn.set_read_timeout(Some(IO)).unwrap();
        conn.set_write_timeout(Some(IO)).unwrap();
        conn
    }

    /// Writes `data` and expects it echoed back.
    fn roundtrip(conn: &mut StdTcpStream, data: &[u8]) {
        conn.write_all(data).expect("write");
        let mut got = vec![0; data.len()];
        conn.read_exact(&mut got).expect("read the echo");
        assert_eq!(got, data);
    }

    /// A connection through `proxy` whose first frame carries `client_id`, echoed once.
    fn open(proxy: &FaultProxy, client_id: &str) -> StdTcpStream {
        let mut conn = connect(proxy.addr());
        roundtrip(&mut conn, &frame(Some(client_id)));
        conn
    }

    /// True if the peer closed (EOF or reset) within `within`.
    fn closed_within(conn: &mut StdTcpStream, within: Duration) -> bool {
        conn.set_read_timeout(Some(within)).unwrap();
        let mut byte = [0; 1];
        let closed = match conn.read(&mut byte) {
            Ok(n) => n == 0,
            Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        };
        conn.set_read_timeout(Some(IO)).unwrap();
        closed
    }

    /// True if nothing arrives (and the connection stays open) for `QUIET`.
    fn quiet(conn: &mut StdTcpStream) -> bool {
        conn.set_read_timeout(Some(QUIET)).unwrap();
        let mut byte = [0; 1];
        let quiet = matches!(
            conn.read(&mut byte),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
        );
        conn.set_read_timeout(Some(IO)).unwrap();
        quiet
    }

    fn proxy_to_echo(net: &Net, to: i32, echo: &Echo) -> FaultProxy {
        let proxy = FaultProxy::start(net, to);
        proxy.set_target(echo.addr);
        proxy
    }

    #[test]
    fn parses_client_ids() {
        assert_eq!(Peer::from_client_id("keel-fetcher-2"), Peer::Node(2));
        assert_eq!(Peer::from_client_id("keel-broker-13"), Peer::Node(13));
        assert_eq!(Peer::from_client_id("keel-fetcher-"), Peer::Client);
        assert_eq!(Peer::from_client_id("keel-broker-x"), Peer::Client);
        assert_eq!(Peer::from_client_id("rdkafka"), Peer::Client);
        let f = frame(Some("keel-fetcher-2"));
        for cut in 0..f.len() - 2 {
            let want = (cut >= HEADER_PREFIX + "keel-fetcher-2".len()).then_some(Peer::Node(2));
            assert_eq!(parse_first_frame(&f[..cut]), want, "cut at {cut}");
        }
        assert_eq!(parse_first_frame(&frame(None)), Some(Peer::Client));
        assert_eq!(parse_first_frame(b"GET / HTTP/1.1\r\n"), Some(Peer::Client));
        assert_eq!(parse_first_frame(&[0, 0, 0, 3, 1]), Some(Peer::Client));
        // A client id longer than the frame.
        let mut bad = frame(Some("keel-broker-1"));
        bad[..4].copy_from_slice(&12i32.to_be_bytes());
        assert_eq!(parse_first_frame(&bad), Some(Peer::Client));
    }

    #[test]
    fn classifies_connections_by_first_frame() {
        let echo = Echo::start();
        let net = Net::new();
        let opts = ProxyOpts {
            classify_timeout: QUIET,
            ..ProxyOpts::default()
        };
        let proxy = FaultProxy::start_with(&net, 1, opts).unwrap();
        proxy.set_target(echo.addr);

        open(&proxy, "keel-fetcher-2");
        open(&proxy, "keel-broker-3");
        open(&proxy, "other");
        roundtrip(&mut connect(proxy.addr()), &frame(None));
        roundtrip(&mut connect(proxy.addr()), b"GET / HTTP/1.1\r\n\r\n");
        // The header split over two writes is still read whole.
        let mut split = connect(proxy.addr());
        let f = frame(Some("keel-fetcher-3"));
        split.write_all(&f[..9]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        split.write_all(&f[9..]).unwrap();
        let mut got = vec![0; f.len()];
        split.read_exact(&mut got).unwrap();
        assert_eq!(got, f);
        // Short first frame that stalls: a client once the classify timeout passes.
        let mut stalled = connect(proxy.addr());
        let started = StdInstant::now();
        roundtrip(&mut stalled, &f[..6]);
        assert!(started.elapsed() >= QUIET, "classified before the timeout");
        // Short first frame then EOF: forwarded, and the EOF too.
        let mut short = connect(proxy.addr());
        short.write_all(&f[..3]).unwrap();
        short.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        short.read_to_end(&mut got).unwrap();
        assert_eq!(got, &f[..3]);

        let stats = net.stats();
        let want = BTreeMap::from([
            ((Peer::Client, 1), 5),
            ((Peer::Node(2), 1), 1),
            ((Peer::Node(3), 1), 2),
        ]);
        assert_eq!(stats.accepted, want, "{stats}");
        assert_eq!(stats.dropped, 0);
    }

    #[test]
    fn passes_a_large_transfer_byte_exact() {
        let echo = Echo::start();
        let net = Net::new();
        let proxy = proxy_to_echo(&net, 1, &echo);
        let mut data = frame(Some("keel-fetcher-2"));
        data.extend((0..4u32 << 20).map(|i| (i.wrapping_mul(31) % 251) as u8));
        let mut conn = connect(proxy.addr());
        let mut writer = conn.try_clone().unwrap();
        let mut got = Vec::with_capacity(data.len());
        std::thread::scope(|s| {
            s.spawn(|| {
                writer.write_all(&data).unwrap();
                writer.shutdown(Shutdown::Write).unwrap();
            });
            conn.read_to_end(&mut got).unwrap();
        });
        assert!(
            got == data,
            "echo differs: {} of {} bytes",
            got.len(),
            data.len()
        );
        let stats = net.stats();
        assert_eq!(stats.accepted, BTreeMap::from([((Peer::Node(2), 1), 1)]));
        assert_eq!(stats.bytes, 2 * data.len() as u64, "{stats}");
    }

    #[test]
    fn delay_slows_existing_and_new_connections() {
        let echo = Echo::start();
        let net = Net::new();
        let proxy = proxy_to_echo(&net, 1, &echo);
        let delay = Duration::from_millis(150);
        let mut existing = open(&proxy, "keel-fetcher-2");

        net.set(2, 1, Some(LinkFault::Delay(delay)));
        assert_eq!(net.faults(), vec![(2, 1, LinkFault::Delay(delay))]);
        let started = StdInstant::now();
        roundtrip(&mut existing, b"ping");
        assert!(started.elapsed() >= 2 * delay, "{:?}", started.elapsed());

        let started = StdInstant::now();
        open(&proxy, "keel-broker-2");
        assert!(started.elapsed() >= 2 * delay, "{:?}", started.elapsed());

        net.set(2, 1, None);
        assert!(net.faults().is_empty());
        roundtrip(&mut existing, b"pong");
    }

    #[test]
    fn drop_closes_the_link_but_not_clients() {
        let echo = Echo::start();
        let net = Net::new();
        let proxy = proxy_to_echo(&net, 1, &echo);
        let mut fetcher = open(&proxy, "keel-fetcher-2");
        let mut client = open(&proxy, "keel-fetcher-9x");

        net.set(2, 1, Some(LinkFault::Drop));
        assert!(
            closed_within(&mut fetcher, CLOSE),
            "existing connection stays open"
        );
        roundtrip(&mut client, b"still here");
        let mut new = connect(proxy.addr());
        new.write_all(&frame(Some("keel-broker-2"))).unwrap();
        assert!(
            closed_within(&mut new, CLOSE),
            "new connection from node 2 stays open"
        );
        // Other nodes and clients still get through.
        open(&proxy, "keel-fetcher-3");
        open(&proxy, "admin");

        net.set(2, 1, None);
        let mut healed = open(&proxy, "keel-fetcher-2");
        roundtrip(&mut healed, b"back");
        assert_eq!(net.stats().dropped, 2, "{}", net.stats());
    }

    #[test]
    fn blackhole_holds_bytes_until_heal() {
        let echo = Echo::start();
        let net = Net::new();
        let proxy = proxy_to_echo(&net, 1, &echo);
        let mut existing = open(&proxy, "keel-fetcher-2");

        net.partition(1, 2, LinkFault::Blackhole);
        assert_eq!(
            net.faults(),
            vec![(1, 2, LinkFault::Blackhole), (2, 1, LinkFault::Blackhole)]
        );
        existing.write_all(b"abc").unwrap();
        assert!(quiet(&mut existing), "bytes crossed a blackhole");
        existing.write_all(b"def").unwrap();
        let mut new = connect(proxy.addr());
        let f = frame(Some("keel-broker-2"));
        new.write_all(&f).unwrap();
        assert!(quiet(&mut new), "new connection crossed a blackhole");
        // Clients are not affected.
        open(&proxy, "client");

        net.heal(2, 1);
        assert!(net.faults().is_empty());
        let mut got = [0; 6];
        existing.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"abcdef");
        let mut got = vec![0; f.len()];
        new.read_exact(&mut got).unwrap();
        assert_eq!(got, f);
        roundtrip(&mut new, b"more");
        assert_eq!(net.stats().dropped, 0);
    }

    #[test]
    fn waits_for_the_target_and_closes_when_it_is_down() {
        let echo = Echo::start();
        let net = Net::new();
        let proxy = FaultProxy::start(&net, 1);
        let mut early = connect(proxy.addr());
        let f = frame(Some("keel-fetcher-2"));
        early.write_all(&f).unwrap();
        assert!(quiet(&mut early));
        proxy.set_target(echo.addr);
        assert_eq!(proxy.target(), Some(echo.addr));
        let mut got = vec![0; f.len()];
        early.read_exact(&mut got).unwrap();
        assert_eq!(got, f);

        // A node that is down: its port refuses.
        let down = StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let down_addr = down.local_addr().unwrap();
        drop(down);
        proxy.set_target(down_addr);
        let started = StdInstant::now();
        let mut refused = connect(proxy.addr());
        refused.write_all(&f).unwrap();
        assert!(
            closed_within(&mut refused, CLOSE),
            "stays open to a down target"
        );
        assert!(started.elapsed() < CLOSE);

        // A target never set: closed after the wait.
        let opts = ProxyOpts {
            target_wait: QUIET,
            ..ProxyOpts::default()
        };
        let unset = FaultProxy::start_with(&net, 2, opts).unwrap();
        let mut waiting = connect(unset.addr());
        waiting.write_all(&frame(Some("other"))).unwrap();
        assert!(
            closed_within(&mut waiting, CLOSE),
            "waits forever for a target"
        );
        assert_eq!(net.stats().unreachable, 2, "{}", net.stats());
    }

    #[test]
    fn drop_of_the_proxy_closes_everything_and_frees_the_port() {
        let echo = Echo::start();
        let net = Net::new();
        let proxy = proxy_to_echo(&net, 1, &echo);
        let addr = proxy.addr();
        let mut node = open(&proxy, "keel-fetcher-2");
        let mut client = open(&proxy, "client");
        // Held by a blackhole: still closed by the drop.
        net.set(3, 1, Some(LinkFault::Blackhole));
        let mut held = connect(addr);
        held.write_all(&frame(Some("keel-fetcher-3"))).unwrap();
        wait_for_open(&proxy, 3);

        drop(proxy);
        assert!(closed_within(&mut node, CLOSE));
        assert!(closed_within(&mut client, CLOSE));
        assert!(closed_within(&mut held, CLOSE));
        assert!(
            StdTcpStream::connect_timeout(&addr, IO).is_err(),
            "still accepting"
        );

        let again = FaultProxy::start_on(&net, 1, addr.port()).expect("rebind the same port");
        assert_eq!(again.addr(), addr);
        again.set_target(echo.addr);
        open(&again, "keel-fetcher-2");
    }

    fn wait_for_open(proxy: &FaultProxy, n: usize) {
        crate::wait::wait_until(&format!("{n} open connections"), IO, || {
            proxy.open_connections() == n
        });
    }
}
