//! The Kafka listener: accepts connections and runs one reader and one writer per
//! connection.
//!
//! The reader takes frames off the socket, parses the header and starts the request's
//! handler. Handlers do their synchronous part at once, in arrival order (a produce
//! appends to the log here, so pipelined produces to one partition keep their order),
//! and return a future for the rest (waiting for acks, long-poll fetches). The writer
//! awaits those futures in request order and writes the responses, so responses go back
//! in the order the requests came, as Kafka requires.

pub(crate) mod api_versions;
pub(crate) mod reply;

use crate::metrics as m;
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;
use keel_protocol::api::{parse_request, ApiSupport, HeaderError, ParsedRequest};
use keel_protocol::frame::take_frame;
use reply::Reply;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a listener serves: its API table, limits, and the request dispatch. The Kafka
/// listener (`Shared`) and the controller listener implement it.
pub(crate) trait Service: Send + Sync + 'static {
    /// The API keys and versions this listener answers (also its ApiVersions response).
    fn apis(&self) -> &'static [ApiSupport];
    /// Largest request frame accepted.
    fn max_frame(&self) -> usize;
    /// Requests read ahead on one connection before reading pauses.
    fn max_inflight(&self) -> usize;
    /// Cancelled when the listener stops taking requests.
    fn stop(&self) -> &CancellationToken;
    /// Decodes the body and starts the request's handler.
    /// `peer`: the client's address (group members are described by it).
    fn dispatch(
        self: &Arc<Self>,
        req: ParsedRequest,
        peer: SocketAddr,
    ) -> Result<Option<Reply>, RequestError>;
    /// Keel's own API keys (outside Kafka's table): the reply to a whole frame whose key is
    /// `api_key`, or `None` if this listener does not serve it.
    fn keel_api(self: &Arc<Self>, _api_key: i16, _frame: &Bytes) -> Option<Reply> {
        None
    }
    /// The connection from `peer` has closed (by either side, or failed).
    fn closed(self: &Arc<Self>, _peer: SocketAddr) {}
}

/// Accepts connections until the service stops.
pub(crate) async fn accept_loop<S: Service>(
    shared: Arc<S>,
    listener: TcpListener,
    tracker: TaskTracker,
) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shared.stop().cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tracker.spawn(async move {
            m::OPEN_CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            serve_connection(shared, stream, peer).await;
            m::OPEN_CONNECTIONS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        });
    }
}

async fn serve_connection<S: Service>(shared: Arc<S>, stream: TcpStream, peer: SocketAddr) {
    let (mut rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Reply>(shared.max_inflight().max(1));
    let writer = tokio::spawn(write_loop(wr, rx, peer));
    let max = shared.max_frame();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    'conn: loop {
        loop {
            let frame = match take_frame(&mut buf, max) {
                Ok(Some(frame)) => {
                    metrics::counter!(m::RECEIVED_BYTES_TOTAL).increment(frame.len() as u64 + 4);
                    frame.freeze()
                }
                Ok(None) => break,
                Err(e) => {
                    close_on_error(peer, "bad frame", &e);
                    break 'conn;
                }
            };
            match handle_frame(&shared, frame, peer) {
                Ok(Some(reply)) => {
                    if tx.send(reply).await.is_err() {
                        break 'conn; // writer gone: the socket failed
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    close_on_error(peer, "bad request", &e);
                    break 'conn;
                }
            }
        }
        let read = tokio::select! {
            r = rd.read_buf(&mut buf) => r,
            _ = shared.stop().cancelled() => break,
        };
        match read {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(%peer, error = %e, "connection read failed");
                break;
            }
        }
    }
    // Dropping the sender lets the writer finish the replies already started, in order.
    drop(tx);
    let _ = writer.await;
    shared.closed(peer);
}

fn close_on_error(peer: SocketAddr, what: &str, e: &dyn std::fmt::Display) {
    tracing::warn!(%peer, error = %e, "{what}; closing the connection");
    metrics::counter!(m::CONNECTIONS_CLOSED_ON_ERROR_TOTAL).increment(1);
}

/// Why a connection is closed instead of answered.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("cannot decode {api:?} v{version} request body: {reason}")]
    Body {
        api: ApiKey,
        version: i16,
        reason: String,
    },
}

fn handle_frame<S: Service>(
    shared: &Arc<S>,
    frame: Bytes,
    peer: SocketAddr,
) -> Result<Option<Reply>, RequestError> {
    if frame.len() >= 2 {
        let key = i16::from_be_bytes([frame[0], frame[1]]);
        if let Some(reply) = shared.keel_api(key, &frame) {
            return Ok(Some(reply));
        }
    }
    let req = match parse_request(frame, shared.apis()) {
        Ok(req) => req,
        Err(HeaderError::UnsupportedVersion {
            api_key: ApiKey::ApiVersions,
            correlation_id,
            version,
            ..
        }) => {
            // A client newer than us: answer in v0 with the table so it can retry.
            metrics::counter!(m::REQUEST_ERRORS_TOTAL, "reason" => "unsupported_version")
                .increment(1);
            tracing::debug!(version, "unsupported ApiVersions version, answering v0");
            return Ok(Some(api_versions::unsupported_version(
                shared.apis(),
                correlation_id,
            )));
        }
        Err(e) => {
            let reason = match e {
                HeaderError::UnknownApiKey { .. } => "unknown_api_key",
                HeaderError::UnsupportedVersion { .. } => "unsupported_version",
                _ => "malformed_header",
            };
            metrics::counter!(m::REQUEST_ERRORS_TOTAL, "reason" => reason).increment(1);
            return Err(e.into());
        }
    };
    shared.dispatch(req, peer)
}

async fn write_loop(mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Reply>, peer: SocketAddr) {
    while let Some(reply) = rx.recv().await {
        let Some(chunks) = reply.await else {
            continue; // acks=0 produce: no response
        };
        if chunks.is_empty() {
            tracing::debug!(%peer, "closing the connection instead of answering");
            break;
        }
        if let Err(e) = write_chunks(&mut wr, &chunks).await {
            tracing::debug!(%peer, error = %e, "connection write failed");
            return;
        }
    }
    let _ = wr.shutdown().await;
}

/// Writes a size prefix and the chunks with as few syscalls as the kernel allows.
async fn write_chunks(wr: &mut OwnedWriteHalf, chunks: &[Bytes]) -> std::io::Result<()> {
    let total: usize = chunks.iter().map(Bytes::len).sum();
    metrics::counter!(m::SENT_BYTES_TOTAL).increment(total as u64 + 4);
    let size = i32::try_from(total)
        .map_err(|_| std::io::Error::other("response larger than 2 GiB"))?
        .to_be_bytes();
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(chunks.len() + 1);
    slices.push(IoSlice::new(&size));
    slices.extend(chunks.iter().map(|c| IoSlice::new(c)));
    let mut rest: &mut [IoSlice<'_>] = &mut slices;
    while !rest.is_empty() {
        let n = wr.write_vectored(rest).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}
