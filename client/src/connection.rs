//! One TCP connection to one broker.
//!
//! Requests are pipelined: callers encode a frame (4-byte big-endian size, request header,
//! body — all with `kafka-protocol` codecs), register a oneshot under a fresh correlation id
//! and hand the frame to a writer task. A reader task reads response frames and routes each
//! to the oneshot registered under its correlation id. Responses may therefore arrive in any
//! order and many requests may be outstanding at once.
//!
//! On connect the client sends ApiVersions and keeps, per API it speaks, the highest version
//! both sides support. An API with no overlap is reported when it is first used, so a broker
//! lacking an admin API still serves produce and fetch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::debug;

use crate::error::ClientError;

/// Largest response frame accepted (a fetch response is bounded by `fetch.max.bytes`).
const MAX_FRAME_BYTES: usize = 512 * 1024 * 1024;

/// UNSUPPORTED_VERSION: the broker answers an ApiVersions request it cannot parse with a v0
/// body carrying its own version table.
const UNSUPPORTED_VERSION: i16 = 35;

/// The APIs this client speaks and the version range it speaks them in.
///
/// Produce v13+ and Fetch v13+ address topics by id only; this client uses names, so caps
/// them at 12.
const CLIENT_VERSIONS: &[(ApiKey, &str, i16, i16)] = &[
    (ApiKey::Produce, "Produce", 3, 12),
    (ApiKey::Fetch, "Fetch", 4, 12),
    (ApiKey::ListOffsets, "ListOffsets", 1, 7),
    (ApiKey::Metadata, "Metadata", 1, 12),
    (ApiKey::ApiVersions, "ApiVersions", 0, 3),
    (ApiKey::CreateTopics, "CreateTopics", 2, 7),
    (ApiKey::DeleteTopics, "DeleteTopics", 1, 6),
    (ApiKey::DescribeConfigs, "DescribeConfigs", 1, 4),
    (ApiKey::InitProducerId, "InitProducerId", 0, 5),
    (ApiKey::DescribeProducers, "DescribeProducers", 0, 0),
    (ApiKey::FindCoordinator, "FindCoordinator", 1, 3),
    (ApiKey::JoinGroup, "JoinGroup", 4, 7),
    (ApiKey::SyncGroup, "SyncGroup", 3, 5),
    (ApiKey::Heartbeat, "Heartbeat", 3, 4),
    (ApiKey::LeaveGroup, "LeaveGroup", 3, 5),
    (ApiKey::OffsetCommit, "OffsetCommit", 7, 8),
    (ApiKey::OffsetFetch, "OffsetFetch", 6, 7),
    (ApiKey::ListGroups, "ListGroups", 3, 4),
    (ApiKey::DescribeGroups, "DescribeGroups", 3, 5),
    (ApiKey::DeleteGroups, "DeleteGroups", 1, 2),
];

/// The name of an API key this client speaks.
pub(crate) fn api_name(key: i16) -> &'static str {
    CLIENT_VERSIONS
        .iter()
        .find(|(k, ..)| *k as i16 == key)
        .map(|(_, name, ..)| *name)
        .unwrap_or("unknown api")
}

/// The broker's range for one API, and the version chosen within the client's range.
#[derive(Debug, Clone, Copy)]
struct Negotiated {
    broker_min: i16,
    broker_max: i16,
    chosen: Option<i16>,
}

/// Picks, per API the client speaks, the highest version inside both ranges.
fn negotiate(broker: &[(i16, i16, i16)]) -> HashMap<i16, Negotiated> {
    CLIENT_VERSIONS
        .iter()
        .map(|&(key, _, cmin, cmax)| {
            let key = key as i16;
            let (bmin, bmax) = broker
                .iter()
                .find(|(k, ..)| *k == key)
                .map(|&(_, lo, hi)| (lo, hi))
                .unwrap_or((-1, -1));
            let hi = cmax.min(bmax);
            let chosen = (bmax >= 0 && hi >= cmin.max(bmin)).then_some(hi);
            let n = Negotiated {
                broker_min: bmin,
                broker_max: bmax,
                chosen,
            };
            (key, n)
        })
        .collect()
}

type Waiter = oneshot::Sender<Result<Bytes, ClientError>>;

/// Responses awaited, by correlation id; once the connection fails, the reason.
#[derive(Default)]
struct PendingState {
    waiters: HashMap<i32, Waiter>,
    closed: Option<ClientError>,
}

#[derive(Default)]
struct Pending(Mutex<PendingState>);

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, PendingState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(&self, correlation_id: i32, waiter: Waiter) -> Result<(), ClientError> {
        let mut state = self.lock();
        if let Some(err) = &state.closed {
            return Err(err.clone());
        }
        state.waiters.insert(correlation_id, waiter);
        Ok(())
    }

    fn take(&self, correlation_id: i32) -> Option<Waiter> {
        self.lock().waiters.remove(&correlation_id)
    }

    /// Marks the connection failed and fails every outstanding request with `err`.
    fn close(&self, err: ClientError) {
        let waiters = {
            let mut state = self.lock();
            if state.closed.is_none() {
                state.closed = Some(err.clone());
            }
            std::mem::take(&mut state.waiters)
        };
        for (_, waiter) in waiters {
            let _ = waiter.send(Err(err.clone()));
        }
    }
}

/// Removes a registered waiter if the request future is dropped or times out.
struct PendingGuard<'a> {
    pending: &'a Pending,
    correlation_id: i32,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.pending.take(self.correlation_id);
    }
}

/// A frame for the writer task, with an optional notice once it is on the socket.
struct WriteOp {
    frame: Bytes,
    written: Option<oneshot::Sender<Result<(), ClientError>>>,
}

/// One connection to one broker. Cheap to share (`Arc<Connection>`); all methods take `&self`.
pub struct Connection {
    addr: String,
    client_id: StrBytes,
    request_timeout: Duration,
    next_correlation_id: AtomicI32,
    writes: mpsc::Sender<WriteOp>,
    pending: Arc<Pending>,
    versions: HashMap<i16, Negotiated>,
    /// The broker's ApiVersions table: (key, min, max).
    broker_versions: Vec<(i16, i16, i16)>,
    reader: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Connection {
    /// Connects to `addr`, starts the reader and writer tasks and negotiates API versions.
    pub async fn connect(
        addr: &str,
        client_id: &str,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Connection, ClientError> {
        let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::ConnectTimeout {
                addr: addr.to_owned(),
                timeout: connect_timeout,
            })?
            .map_err(|e| ClientError::io(addr, e))?;
        let _ = stream.set_nodelay(true);
        let (read_half, write_half) = stream.into_split();
        let pending = Arc::new(Pending::default());
        let (writes, write_rx) = mpsc::channel(64);
        tokio::spawn(write_loop(
            write_half,
            write_rx,
            Arc::clone(&pending),
            addr.to_owned(),
        ));
        let reader = tokio::spawn(read_loop(read_half, Arc::clone(&pending), addr.to_owned()));
        let mut conn = Connection {
            addr: addr.to_owned(),
            client_id: StrBytes::from_string(client_id.to_owned()),
            request_timeout,
            next_correlation_id: AtomicI32::new(1),
            writes,
            pending,
            versions: HashMap::new(),
            broker_versions: Vec::new(),
            reader,
        };
        conn.broker_versions = conn.fetch_api_versions().await?;
        conn.versions = negotiate(&conn.broker_versions);
        debug!(addr, "connected");
        Ok(conn)
    }

    /// Asks the broker which versions it supports: (api key, min, max) triples.
    async fn fetch_api_versions(&self) -> Result<Vec<(i16, i16, i16)>, ClientError> {
        let mut req = ApiVersionsRequest::default();
        req.client_software_name = StrBytes::from_static_str("keel-client");
        req.client_software_version = StrBytes::from_static_str(env!("CARGO_PKG_VERSION"));
        let mut version = 3;
        for _ in 0..2 {
            let body = self
                .round_trip::<ApiVersionsRequest>(&req, version, self.request_timeout)
                .await?;
            let mut resp =
                decode_response::<ApiVersionsResponse>(&self.addr, body.clone(), version);
            if resp
                .as_ref()
                .map_or(true, |r| r.error_code == UNSUPPORTED_VERSION)
            {
                // The broker could not parse our version and answered with a v0 body.
                resp = decode_response::<ApiVersionsResponse>(&self.addr, body, 0);
            }
            let resp = resp?;
            let table: Vec<_> = resp
                .api_keys
                .iter()
                .map(|k| (k.api_key, k.min_version, k.max_version))
                .collect();
            if resp.error_code == 0 {
                return Ok(table);
            }
            let ours = table
                .iter()
                .find(|(k, ..)| *k == ApiKey::ApiVersions as i16);
            match ours {
                Some(&(_, _, max)) if resp.error_code == UNSUPPORTED_VERSION && max < version => {
                    version = max.max(0);
                }
                _ => {
                    return Err(ClientError::kafka(
                        resp.error_code,
                        format!("{}: api versions", self.addr),
                    ))
                }
            }
        }
        Err(ClientError::protocol(
            format!("{}: api versions", self.addr),
            "broker rejected every ApiVersions version",
        ))
    }

    /// The broker address this connection is to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether the connection has failed (it is then never used again).
    pub fn is_closed(&self) -> bool {
        self.pending.lock().closed.is_some() || self.writes.is_closed()
    }

    /// The negotiated version of request `R`, or why there is none.
    pub fn version<R: Request>(&self) -> Result<i16, ClientError> {
        let unsupported = |n: Option<&Negotiated>| {
            let (cmin, cmax) = CLIENT_VERSIONS
                .iter()
                .find(|(k, ..)| *k as i16 == R::KEY)
                .map(|&(_, _, lo, hi)| (lo, hi))
                .unwrap_or((-1, -1));
            ClientError::UnsupportedVersion {
                addr: self.addr.clone(),
                api: api_name(R::KEY),
                broker_min: n.map_or(-1, |n| n.broker_min),
                broker_max: n.map_or(-1, |n| n.broker_max),
                client_min: cmin,
                client_max: cmax,
            }
        };
        let n = self.versions.get(&R::KEY);
        n.and_then(|n| n.chosen).ok_or_else(|| unsupported(n))
    }

    /// Sends `req` at its negotiated version and awaits the response.
    pub async fn send<R: Request>(&self, req: &R) -> Result<R::Response, ClientError> {
        self.send_with_timeout(req, self.request_timeout).await
    }

    /// Like [`Connection::send`] with an explicit timeout (e.g. a long-polling fetch).
    pub async fn send_with_timeout<R: Request>(
        &self,
        req: &R,
        timeout: Duration,
    ) -> Result<R::Response, ClientError> {
        let version = self.version::<R>()?;
        let body = self.round_trip(req, version, timeout).await?;
        decode_response::<R::Response>(&self.addr, body, version)
    }

    /// Sends `req` at an explicit `version`, which must be inside the broker's range for
    /// it (inter-broker calls pick versions for their fields, e.g. Fetch v15 for the
    /// replica's broker epoch). The client's own version table is not consulted.
    pub async fn send_version<R: Request>(
        &self,
        req: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response, ClientError> {
        let (lo, hi) = self.broker_range(R::KEY);
        if version < lo || version > hi {
            return Err(ClientError::UnsupportedVersion {
                addr: self.addr.clone(),
                api: api_name(R::KEY),
                broker_min: lo,
                broker_max: hi,
                client_min: version,
                client_max: version,
            });
        }
        let body = self.round_trip(req, version, timeout).await?;
        decode_response::<R::Response>(&self.addr, body, version)
    }

    /// Sends a request the broker serves without advertising it in ApiVersions (Keel's own
    /// APIs, such as `ReplicaState`), at `version`.
    pub async fn send_unlisted<R: Request>(
        &self,
        req: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response, ClientError> {
        let body = self.round_trip(req, version, timeout).await?;
        decode_response::<R::Response>(&self.addr, body, version)
    }

    /// The broker's advertised version range for `key`, or (-1, -1).
    pub fn broker_range(&self, key: i16) -> (i16, i16) {
        self.broker_versions
            .iter()
            .find(|(k, ..)| *k == key)
            .map_or((-1, -1), |&(_, lo, hi)| (lo, hi))
    }

    /// Sends `req` expecting no response (Produce with acks=0); returns once written.
    pub async fn send_oneway<R: Request>(&self, req: &R) -> Result<(), ClientError> {
        let version = self.version::<R>()?;
        let frame = self.encode_frame(req, version, self.next_correlation_id())?;
        let (tx, rx) = oneshot::channel();
        self.enqueue(frame, Some(tx)).await?;
        rx.await.map_err(|_| self.disconnected())?
    }

    fn next_correlation_id(&self) -> i32 {
        // Wraps after 2^31 requests; ids only need to be unique among outstanding requests.
        self.next_correlation_id
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_abs()
    }

    fn disconnected(&self) -> ClientError {
        self.pending
            .lock()
            .closed
            .clone()
            .unwrap_or_else(|| ClientError::Disconnected {
                addr: self.addr.clone(),
            })
    }

    async fn enqueue(
        &self,
        frame: Bytes,
        written: Option<oneshot::Sender<Result<(), ClientError>>>,
    ) -> Result<(), ClientError> {
        self.writes
            .send(WriteOp { frame, written })
            .await
            .map_err(|_| self.disconnected())
    }

    /// Writes one request and returns the raw response body (starting at the header).
    async fn round_trip<R: Request>(
        &self,
        req: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<Bytes, ClientError> {
        let correlation_id = self.next_correlation_id();
        let frame = self.encode_frame(req, version, correlation_id)?;
        let (tx, rx) = oneshot::channel();
        self.pending.register(correlation_id, tx)?;
        let _guard = PendingGuard {
            pending: &self.pending,
            correlation_id,
        };
        self.enqueue(frame, None).await?;
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(ClientError::RequestTimeout {
                addr: self.addr.clone(),
                api: api_name(R::KEY),
                timeout,
            }),
            Ok(Err(_)) => Err(self.disconnected()),
            Ok(Ok(result)) => result,
        }
    }

    fn encode_frame<R: Request>(
        &self,
        req: &R,
        version: i16,
        correlation_id: i32,
    ) -> Result<Bytes, ClientError> {
        let mut header = RequestHeader::default();
        header.request_api_key = R::KEY;
        header.request_api_version = version;
        header.correlation_id = correlation_id;
        header.client_id = Some(self.client_id.clone());
        let context = || format!("{}: encode {} v{version}", self.addr, api_name(R::KEY));
        let mut buf = BytesMut::with_capacity(256);
        buf.put_i32(0);
        header
            .encode(&mut buf, R::header_version(version))
            .map_err(|e| ClientError::protocol(context(), e))?;
        req.encode(&mut buf, version)
            .map_err(|e| ClientError::protocol(context(), e))?;
        let size = i32::try_from(buf.len() - 4)
            .map_err(|_| ClientError::protocol(context(), "request larger than 2 GiB"))?;
        buf[..4].copy_from_slice(&size.to_be_bytes());
        Ok(buf.freeze())
    }
}

/// Decodes a response header (at the version its API requires) and body.
fn decode_response<T: Decodable + HeaderVersion>(
    addr: &str,
    mut body: Bytes,
    version: i16,
) -> Result<T, ClientError> {
    let context = || format!("{addr}: decode response v{version}");
    ResponseHeader::decode(&mut body, T::header_version(version))
        .map_err(|e| ClientError::protocol(context(), e))?;
    T::decode(&mut body, version).map_err(|e| ClientError::protocol(context(), e))
}

async fn write_loop(
    mut socket: OwnedWriteHalf,
    mut ops: mpsc::Receiver<WriteOp>,
    pending: Arc<Pending>,
    addr: String,
) {
    while let Some(op) = ops.recv().await {
        match socket.write_all(&op.frame).await {
            Ok(()) => {
                if let Some(done) = op.written {
                    let _ = done.send(Ok(()));
                }
            }
            Err(e) => {
                let err = ClientError::io(&addr, e);
                if let Some(done) = op.written {
                    let _ = done.send(Err(err.clone()));
                }
                pending.close(err);
                return;
            }
        }
    }
}

async fn read_loop(socket: OwnedReadHalf, pending: Arc<Pending>, addr: String) {
    let mut socket = BufReader::with_capacity(64 * 1024, socket);
    let mut buffers = FrameBuffers::default();
    let err = loop {
        match read_frame(&mut socket, &addr, &mut buffers).await {
            Ok(frame) => {
                let correlation_id = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
                match pending.take(correlation_id) {
                    Some(waiter) => {
                        let _ = waiter.send(Ok(frame));
                    }
                    None => debug!(addr, correlation_id, "dropping response nobody awaits"),
                }
            }
            Err(e) => break e,
        }
    };
    debug!(addr, error = %err, "connection closed");
    pending.close(err);
}

/// Buffers large responses are read into, reused once every frame read into them is dropped.
/// A fetch response of tens of megabytes is above the allocator's mmap threshold: allocated
/// afresh each time, its pages were faulted in and zeroed by the kernel on every response,
/// which cost a consumer more CPU than decoding the records.
#[derive(Default)]
struct FrameBuffers {
    spare: Vec<BytesMut>,
}

impl FrameBuffers {
    /// Responses at least this large are read into reused buffers; smaller ones come from
    /// the allocator's free lists anyway.
    const REUSE_FROM: usize = 1 << 20;
    /// Buffers kept per connection.
    const KEEP: usize = 2;

    /// An empty buffer with room for `size` bytes.
    fn take(&mut self, size: usize) -> BytesMut {
        if size < Self::REUSE_FROM {
            return BytesMut::with_capacity(size);
        }
        if let Some(i) = self.spare.iter_mut().position(|b| b.try_reclaim(size)) {
            return self.spare.swap_remove(i);
        }
        BytesMut::with_capacity(size)
    }

    /// Splits the frame off `buf` (its first `size` bytes) and keeps what is left of the
    /// allocation for a later frame.
    fn frame(&mut self, mut buf: BytesMut, size: usize) -> Bytes {
        let frame = buf.split_to(size).freeze();
        if size >= Self::REUSE_FROM {
            if self.spare.len() >= Self::KEEP {
                self.spare.remove(0);
            }
            self.spare.push(buf);
        }
        frame
    }
}

async fn read_frame(
    socket: &mut BufReader<OwnedReadHalf>,
    addr: &str,
    buffers: &mut FrameBuffers,
) -> Result<Bytes, ClientError> {
    let size = match socket.read_i32().await {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(ClientError::Disconnected {
                addr: addr.to_owned(),
            })
        }
        Err(e) => return Err(ClientError::io(addr, e)),
    };
    let size = usize::try_from(size).unwrap_or(0);
    if !(4..=MAX_FRAME_BYTES).contains(&size) {
        return Err(ClientError::protocol(
            format!("{addr}: read frame"),
            format!("invalid response size {size}"),
        ));
    }
    // Read into spare capacity: zeroing a fetch response's megabyte first costs as much
    // CPU as the copy from the socket.
    let mut frame = buffers.take(size);
    while frame.len() < size {
        let want = size - frame.len();
        let n = socket
            .read_buf(&mut (&mut frame).limit(want))
            .await
            .map_err(|e| ClientError::io(addr, e))?;
        if n == 0 {
            return Err(ClientError::Disconnected {
                addr: addr.to_owned(),
            });
        }
    }
    Ok(buffers.frame(frame, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_picks_highest_common_version() {
        // (key, broker min, broker max)
        let broker = [
            (ApiKey::Produce as i16, 0, 11),
            (ApiKey::Fetch as i16, 0, 17),
            (ApiKey::Metadata as i16, 0, 0),
            (ApiKey::ListOffsets as i16, 8, 10),
        ];
        let n = negotiate(&broker);
        assert_eq!(n[&(ApiKey::Produce as i16)].chosen, Some(11));
        assert_eq!(
            n[&(ApiKey::Fetch as i16)].chosen,
            Some(12),
            "capped at client max"
        );
        assert_eq!(
            n[&(ApiKey::Metadata as i16)].chosen,
            None,
            "v0 only: no overlap"
        );
        assert_eq!(
            n[&(ApiKey::ListOffsets as i16)].chosen,
            None,
            "broker min above ours"
        );
        assert_eq!(n[&(ApiKey::CreateTopics as i16)].chosen, None, "absent");
    }
}
