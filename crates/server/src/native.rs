//! The native protocol listener: accept → connection → frame → request → broker → response.
//!
//! Each connection has one reader (this task) and one writer task. The reader decodes
//! frames and spawns one task per request, so requests run concurrently and answer in
//! any order; a semaphore caps how many are unanswered. Every request reserves its bytes
//! (and a fetch the bytes it may answer with) from the connection's [`ByteBudget`]
//! (`limits.connection_buffer_bytes_max`) before it is served, and returns them once its
//! answer is written: a client that does not read its responses stalls its own reader,
//! then its socket — never the server's memory.

use std::net::SocketAddr;
use std::sync::Arc;

use std::io::IoSlice;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weir_broker::Broker;
use weir_net::{ByteBudget, READ_CHUNK_BYTES, Reservation};
use weir_proto::v1::{self, ErrorCode};
use weir_proto::{
    BodyError, FrameError, FrameParts, Request, Response, WRITE_GATHER_BYTES_MAX, WRITE_SLICES_MAX,
    WriteQueue, decode_frame,
};

use crate::config::Limits;
use crate::handler;

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
    let max = shared.limits.connections_max;
    let serving = shared.clone();
    weir_net::accept_loop(
        listener,
        shared.stop.clone(),
        max,
        connections,
        move |socket, peer| serve(socket, peer, serving.clone()),
        move |socket, _| refuse(socket, max),
    )
    .await;
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

/// An answer on its way to the writer, with the budget its request reserved.
type Outgoing = (FrameParts, Option<Reservation>);

/// Serves one connection until the peer closes it, sends a bad frame, or shutdown.
async fn serve(socket: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let (mut rd, wr) = socket.into_split();
    let inflight_max = shared.limits.inflight_requests_max as usize;
    let budget = ByteBudget::new(shared.limits.connection_buffer_bytes_max);
    let (out_tx, out_rx) = mpsc::channel::<Outgoing>(inflight_max);
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
                if !send_error(&out_tx, id, ErrorCode::TooManyInflightRequests, msg).await {
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
                    if !send_error(&out_tx, id, code, e.to_string()).await {
                        break 'conn;
                    }
                    continue;
                }
            };
            // Until this request's bytes (and its answer's, for a fetch) fit in the
            // budget, nothing more is read from this connection.
            let answer_bytes = match &request {
                Request::Fetch(f) => f.max_bytes.clamp(1, shared.limits.fetch_bytes_max),
                _ => 0,
            };
            let held = frame.body.len() + answer_bytes as usize;
            let reservation = budget.reserve(held).await;
            let request = match request {
                Request::Produce(r) => {
                    if append_tx.send((id, r, permit, reservation)).await.is_err() {
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
                respond(id, response, &out_tx, reservation).await;
                drop(permit);
            });
        }
        if !weir_net::read_more(&mut rd, &mut buf, &shared.stop, peer).await {
            break;
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

/// Queues an error answer; false when the writer is gone (the connection is closing).
async fn send_error(
    out: &mpsc::Sender<Outgoing>,
    id: u32,
    code: ErrorCode,
    message: String,
) -> bool {
    out.send((error_frame(id, code, message).into(), None))
        .await
        .is_ok()
}

/// Encodes and queues a response, if there is one, with the request's reservation, which
/// the writer returns once the answer is written. Record batches of a fetch are not
/// copied: they reach the socket from the buffer the log read them into.
async fn respond(
    id: u32,
    response: Option<Response>,
    out: &mpsc::Sender<Outgoing>,
    reservation: Reservation,
) {
    if let Some(response) = response {
        let frame = weir_proto::encode_response_parts(id, &response);
        // The writer is gone only when the connection is: nobody left to tell.
        let _ = out.send((frame, Some(reservation))).await;
    }
}

type PendingProduce = (u32, v1::ProduceRequest, OwnedSemaphorePermit, Reservation);

async fn append_loop(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<PendingProduce>,
    out: mpsc::Sender<Outgoing>,
    requests: TaskTracker,
) {
    while let Some((id, request, permit, reservation)) = rx.recv().await {
        match handler::start_produce(&shared, request).await {
            handler::ProduceStart::Done(response) => {
                respond(id, response, &out, reservation).await;
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
                    respond(id, response, &out, reservation).await;
                    drop(permit);
                });
            }
        }
    }
}

/// Answers a frame that cannot be read, when there is someone to answer.
async fn reject_frame(buf: &[u8], e: &FrameError, out: &mpsc::Sender<Outgoing>, peer: SocketAddr) {
    tracing::debug!(%peer, error = %e, "closing connection after a bad frame");
    if let FrameError::TooLarge { .. } = e {
        // The header was ours (magic matched), so the peer can match the answer.
        let id = buf
            .get(4..8)
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        send_error(out, id, ErrorCode::FrameTooLarge, e.to_string()).await;
    }
}

/// Writes responses as they become ready: whatever is queued when the socket can take
/// more leaves in one vectored write, without being copied into a buffer first. The
/// reservations of the answers in a write are returned once all of it is written.
async fn write_loop(mut wr: tokio::net::tcp::OwnedWriteHalf, mut rx: mpsc::Receiver<Outgoing>) {
    let mut queue = WriteQueue::new();
    let mut written: Vec<Reservation> = Vec::new();
    while let Some((frame, reservation)) = rx.recv().await {
        queue.push(frame);
        written.extend(reservation);
        while !queue.is_empty() {
            // Gather whatever else is ready into the same write.
            while queue.len() < WRITE_GATHER_BYTES_MAX {
                match rx.try_recv() {
                    Ok((frame, reservation)) => {
                        queue.push(frame);
                        written.extend(reservation);
                    }
                    Err(_) => break,
                }
            }
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES_MAX];
            let n = queue.io_slices(&mut slices);
            match wr.write_vectored(&slices[..n]).await {
                Ok(0) | Err(_) => return,
                Ok(done) => queue.advance(done),
            }
        }
        written.clear();
    }
    let _ = wr.shutdown().await;
}
