//! The native protocol listener: accept → connection → frame → request → broker → response.
//!
//! Each connection has one reader (this task) and one writer task. The reader decodes
//! frames and spawns one task per request, so requests run concurrently and answer in
//! any order; a semaphore caps how many are unanswered. Responses reach the writer
//! through a bounded channel: a client that does not read its responses stalls its own
//! request tasks, then its reader, then its socket — never the server's memory.

use std::net::SocketAddr;
use std::sync::Arc;

use std::io::IoSlice;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weir_broker::Broker;
use weir_proto::v1::{self, ErrorCode};
use weir_proto::{BodyError, FrameError, FrameParts, Request, Response, WriteQueue, decode_frame};

use crate::config::Limits;
use crate::handler;

/// Bytes read from a socket at a time when no frame announces more.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Bytes the writer gathers from ready responses before it writes them.
const WRITE_GATHER_BYTES_MAX: usize = 256 * 1024;
/// Buffers one vectored write hands to the kernel at most (Linux allows 1024).
const WRITE_SLICES_MAX: usize = 64;

/// What every connection shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) broker: Broker,
    pub(crate) limits: Limits,
    pub(crate) node_id: i32,
    pub(crate) advertised_host: String,
    pub(crate) advertised_port: u16,
    /// Cancelled at shutdown: connections stop reading new requests.
    pub(crate) stop: CancellationToken,
}

/// Accepts connections until `stop` is cancelled. Each runs on `connections`.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    connections: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(shared.limits.connections_max as usize));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = shared.stop.cancelled() => return,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                let shared = shared.clone();
                connections.spawn(async move {
                    tracing::debug!(%peer, "connection opened");
                    serve(socket, peer, shared).await;
                    tracing::debug!(%peer, "connection closed");
                    drop(permit);
                });
            }
            Err(_) => {
                tracing::warn!(%peer, max = shared.limits.connections_max, "refusing connection: too many");
                connections.spawn(refuse(socket, shared.limits.connections_max));
            }
        }
    }
}

async fn refuse(mut socket: TcpStream, max: u32) {
    let frame = error_frame(
        0,
        ErrorCode::TooManyConnections,
        format!("the server already has {max} connections"),
    );
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), socket.write_all(&frame)).await;
}

fn error_frame(correlation_id: u32, code: ErrorCode, message: impl Into<String>) -> BytesMut {
    let mut out = BytesMut::new();
    let resp = Response::Error(v1::ErrorResponse {
        status: Some(v1::Status::new(code, message)),
    });
    weir_proto::encode_response(&mut out, correlation_id, &resp);
    out
}

/// Serves one connection until the peer closes it, sends a bad frame, or shutdown.
async fn serve(socket: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let (mut rd, wr) = socket.into_split();
    let inflight_max = shared.limits.inflight_requests_max as usize;
    let (out_tx, out_rx) = mpsc::channel::<FrameParts>(inflight_max);
    let writer = tokio::spawn(write_loop(wr, out_rx));
    let inflight = Arc::new(Semaphore::new(inflight_max));
    let requests = TaskTracker::new();
    // Produce requests are appended one after another, in the order they arrived; only
    // their wait for the disk runs concurrently.
    let (append_tx, append_rx) = mpsc::channel(inflight_max);
    let appender = tokio::spawn(append_loop(
        shared.clone(),
        append_rx,
        out_tx.clone(),
        requests.clone(),
    ));
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    'conn: loop {
        loop {
            let frame = match decode_frame(&mut buf, shared.limits.frame_bytes_max) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    reject_frame(&buf, &e, &out_tx, peer).await;
                    break 'conn;
                }
            };
            let id = frame.header.correlation_id;
            let Ok(permit) = inflight.clone().try_acquire_owned() else {
                let msg = format!("more than {inflight_max} requests in flight");
                if out_tx
                    .send(error_frame(id, ErrorCode::TooManyInflightRequests, msg).into())
                    .await
                    .is_err()
                {
                    break 'conn;
                }
                continue;
            };
            let request = match Request::decode(&frame) {
                Ok(r) => r,
                Err(e) => {
                    let code = match e {
                        BodyError::UnknownKind(_) => ErrorCode::UnknownRequestKind,
                        BodyError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
                        _ => ErrorCode::MalformedRequest,
                    };
                    tracing::debug!(%peer, error = %e, "undecodable request");
                    if out_tx
                        .send(error_frame(id, code, e.to_string()).into())
                        .await
                        .is_err()
                    {
                        break 'conn;
                    }
                    continue;
                }
            };
            let request = match request {
                Request::Produce(r) => {
                    if append_tx.send((id, r, permit)).await.is_err() {
                        break 'conn;
                    }
                    continue;
                }
                other => other,
            };
            let shared = shared.clone();
            let out_tx = out_tx.clone();
            requests.spawn(async move {
                let response = handler::handle(&shared, peer, request).await;
                respond(id, response, &out_tx).await;
                drop(permit);
            });
        }
        if buf.capacity() - buf.len() < READ_CHUNK_BYTES / 4 {
            buf.reserve(READ_CHUNK_BYTES);
        }
        tokio::select! {
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "read failed");
                    break;
                }
            },
            () = shared.stop.cancelled() => break,
        }
    }
    // Finish what was asked before closing: acknowledged work is answered.
    drop(append_tx);
    let _ = appender.await;
    requests.close();
    requests.wait().await;
    drop(out_tx);
    let _ = writer.await;
}

/// Encodes and queues a response, if there is one. Record batches of a fetch are not
/// copied: they reach the socket from the buffer the log read them into.
async fn respond(id: u32, response: Option<Response>, out: &mpsc::Sender<FrameParts>) {
    if let Some(response) = response {
        let frame = weir_proto::encode_response_parts(id, &response);
        // The writer is gone only when the connection is: nobody left to tell.
        let _ = out.send(frame).await;
    }
}

type PendingProduce = (u32, v1::ProduceRequest, OwnedSemaphorePermit);

async fn append_loop(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<PendingProduce>,
    out: mpsc::Sender<FrameParts>,
    requests: TaskTracker,
) {
    while let Some((id, request, permit)) = rx.recv().await {
        match handler::start_produce(&shared, request).await {
            handler::ProduceStart::Done(response) => {
                respond(id, response, &out).await;
                drop(permit);
            }
            handler::ProduceStart::Appended {
                appended,
                acks,
                timeout_ms,
            } => {
                let out = out.clone();
                requests.spawn(async move {
                    let response = handler::finish_produce(appended, acks, timeout_ms).await;
                    respond(id, response, &out).await;
                    drop(permit);
                });
            }
        }
    }
}

/// Answers a frame that cannot be read, when there is someone to answer.
async fn reject_frame(
    buf: &[u8],
    e: &FrameError,
    out: &mpsc::Sender<FrameParts>,
    peer: SocketAddr,
) {
    tracing::debug!(%peer, error = %e, "closing connection after a bad frame");
    if let FrameError::TooLarge { .. } = e {
        // The header was ours (magic matched), so the peer can match the answer.
        let id = buf
            .get(4..8)
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        let _ = out
            .send(error_frame(id, ErrorCode::FrameTooLarge, e.to_string()).into())
            .await;
    }
}

/// Writes responses as they become ready: whatever is queued when the socket can take
/// more leaves in one vectored write, without being copied into a buffer first.
async fn write_loop(mut wr: tokio::net::tcp::OwnedWriteHalf, mut rx: mpsc::Receiver<FrameParts>) {
    let mut queue = WriteQueue::new();
    while let Some(frame) = rx.recv().await {
        queue.push(frame);
        while !queue.is_empty() {
            // Gather whatever else is ready into the same write.
            while queue.len() < WRITE_GATHER_BYTES_MAX {
                match rx.try_recv() {
                    Ok(frame) => queue.push(frame),
                    Err(_) => break,
                }
            }
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES_MAX];
            let n = queue.io_slices(&mut slices);
            match wr.write_vectored(&slices[..n]).await {
                Ok(0) | Err(_) => return,
                Ok(written) => queue.advance(written),
            }
        }
    }
    let _ = wr.shutdown().await;
}
