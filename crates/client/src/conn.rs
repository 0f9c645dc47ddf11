//! One multiplexed connection: a writer task, a reader task and a map of pending
//! requests keyed by correlation id.
//!
//! A request takes a permit from the in-flight semaphore, registers a oneshot under a
//! fresh correlation id, and hands its encoded frame to the writer task; the reader task
//! decodes each response frame and completes the oneshot with the same id, in whatever
//! order the server answers. When either task fails, the connection is marked closed and
//! every pending request fails with the same error; [`crate::Client`] then opens a new
//! connection for the next request.

use std::collections::HashMap;
use std::io::IoSlice;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use weir_proto::{
    FrameParts, Request, Response, WRITE_GATHER_BYTES_MAX, WRITE_SLICES_MAX, WriteQueue, v1,
};

use crate::config::ClientConfig;
use crate::error::{ClientError, Result};

/// Frames queued for the writer task beyond the in-flight requests (one-way produces do
/// not hold an in-flight permit, so this bounds them).
const WRITE_QUEUE_FRAMES_MAX: usize = 1024;
/// Spare room the reader keeps in its receive buffer.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// What the server said about itself in the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// Negotiated protocol version.
    pub protocol_version: u32,
    /// The server's software version.
    pub server_version: String,
    /// The server's node id.
    pub node_id: i32,
    /// The server's limits, with unset values replaced by the protocol defaults.
    pub limits: ServerLimits,
}

/// Limits the server enforces, from the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Largest request frame body the server accepts.
    pub frame_bytes_max: u32,
    /// Largest record batch the server accepts.
    pub batch_bytes_max: u32,
    /// Requests the server serves at once on one connection.
    pub inflight_requests_max: u32,
    /// Longest long-poll wait the server honours.
    pub fetch_wait_ms_max: u32,
}

impl ServerLimits {
    fn from_wire(l: Option<&v1::Limits>) -> Self {
        let or = |v: u32, d: u32| if v == 0 { d } else { v };
        let l = l.cloned().unwrap_or_default();
        let frame = or(l.frame_bytes_max, weir_proto::FRAME_BYTES_MAX_DEFAULT);
        Self {
            frame_bytes_max: frame,
            batch_bytes_max: or(l.batch_bytes_max, frame),
            inflight_requests_max: or(l.inflight_requests_max, u32::MAX),
            fetch_wait_ms_max: or(l.fetch_wait_ms_max, 30_000),
        }
    }
}

type Reply = oneshot::Sender<Result<Response>>;

#[derive(Debug, Default)]
struct Pending {
    map: HashMap<u32, Reply>,
    /// Set once; every later request fails with it.
    closed: Option<ClientError>,
}

#[derive(Debug)]
struct Shared {
    pending: Mutex<Pending>,
    /// Cancelled when the connection is closed, to stop both tasks.
    closed: CancellationToken,
}

impl Shared {
    fn close(&self, err: ClientError) {
        let drained: Vec<Reply> = {
            let mut p = self.pending.lock();
            if p.closed.is_some() {
                return;
            }
            tracing::debug!(error = %err, pending = p.map.len(), "connection closed");
            p.closed = Some(err.clone());
            p.map.drain().map(|(_, tx)| tx).collect()
        };
        for tx in drained {
            let _ = tx.send(Err(err.clone()));
        }
        self.closed.cancel();
    }
}

/// A request whose frame is queued for the socket; [`Exchange::response`] waits for
/// its answer. Dropping it forgets the request (a late answer is ignored) and frees its
/// in-flight permit.
#[derive(Debug)]
pub(crate) struct Exchange {
    shared: Arc<Shared>,
    id: u32,
    rx: oneshot::Receiver<Result<Response>>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.shared.pending.lock().map.remove(&self.id);
    }
}

impl Exchange {
    /// Waits for the response. A [`Response::Error`] becomes [`ClientError::Server`].
    pub(crate) async fn response(mut self) -> Result<Response> {
        self.wait().await
    }

    /// Like [`response`](Self::response), but cancel-safe: if the wait is dropped (a
    /// timeout), the exchange stays pending and can be waited on again.
    pub(crate) async fn wait(&mut self) -> Result<Response> {
        match (&mut self.rx).await {
            Ok(Ok(Response::Error(e))) => {
                let status = e.status.unwrap_or_else(|| {
                    v1::Status::new(v1::ErrorCode::UnknownServerError, "error without status")
                });
                Err(ClientError::server(&status))
            }
            Ok(r) => r,
            Err(_) => Err(closed_error(&self.shared)),
        }
    }
}

/// A connected, handshaken connection.
#[derive(Debug)]
pub(crate) struct Conn {
    writer: mpsc::Sender<FrameParts>,
    shared: Arc<Shared>,
    next_id: AtomicU32,
    inflight: Arc<Semaphore>,
    pub(crate) server: ServerInfo,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared.close(ClientError::Closed);
    }
}

impl Conn {
    /// Connects to `addr`, starts the tasks and performs the handshake.
    pub(crate) async fn connect(addr: &str, config: &ClientConfig) -> Result<Conn> {
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms.into());
        let connect_err = |e: std::io::Error| ClientError::Connect {
            addr: addr.to_owned(),
            error: Arc::new(e),
        };
        let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                connect_err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {connect_timeout:?}"),
                ))
            })?
            .map_err(connect_err)?;
        stream.set_nodelay(true).map_err(connect_err)?;
        let (read, write) = stream.into_split();
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            closed: CancellationToken::new(),
        });
        let (tx, rx) = mpsc::channel(WRITE_QUEUE_FRAMES_MAX);
        tokio::spawn(write_loop(rx, write, shared.clone()));
        tokio::spawn(read_loop(read, shared.clone(), config.frame_bytes_max));
        let mut conn = Conn {
            writer: tx,
            shared,
            next_id: AtomicU32::new(1),
            // One permit for the handshake; replaced once the server's limit is known.
            inflight: Arc::new(Semaphore::new(1)),
            server: ServerInfo {
                protocol_version: 0,
                server_version: String::new(),
                node_id: -1,
                limits: ServerLimits::from_wire(None),
            },
        };
        let hello = Request::Handshake(v1::HandshakeRequest {
            version_min: weir_proto::PROTOCOL_VERSION_MIN.into(),
            version_max: weir_proto::PROTOCOL_VERSION.into(),
            client_id: config.client_id.clone(),
        });
        let resp = match conn.request(&hello, connect_timeout).await? {
            Response::Handshake(r) => r,
            other => return Err(unexpected("Handshake", &other)),
        };
        crate::error::check(resp.status.as_ref())?;
        let version_ok = (u32::from(weir_proto::PROTOCOL_VERSION_MIN)
            ..=u32::from(weir_proto::PROTOCOL_VERSION))
            .contains(&resp.version);
        if !version_ok {
            return Err(ClientError::Protocol(format!(
                "server chose protocol version {}, this client speaks {}..={}",
                resp.version,
                weir_proto::PROTOCOL_VERSION_MIN,
                weir_proto::PROTOCOL_VERSION
            )));
        }
        let limits = ServerLimits::from_wire(resp.limits.as_ref());
        let inflight = config
            .inflight_requests_max
            .min(limits.inflight_requests_max);
        conn.inflight = Arc::new(Semaphore::new(inflight as usize));
        conn.server = ServerInfo {
            protocol_version: resp.version,
            server_version: resp.server_version,
            node_id: resp.node_id,
            limits,
        };
        Ok(conn)
    }

    /// Whether the connection has failed or was closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }

    /// Closes the connection; pending requests fail with `err`.
    pub(crate) fn close(&self, err: ClientError) {
        self.shared.close(err);
    }

    /// Encodes a request; record batches of a produce request are shared, not copied.
    fn encode(&self, id: u32, request: &Request) -> Result<FrameParts> {
        let frame = weir_proto::encode_request_parts(id, request);
        let body = frame.len() - weir_proto::HEADER_BYTES;
        let max = self.server.limits.frame_bytes_max as usize;
        if body > max {
            return Err(ClientError::InvalidArgument(format!(
                "{:?} request of {body} bytes exceeds the server's frame limit of {max}",
                request.kind()
            )));
        }
        Ok(frame)
    }

    /// Takes an in-flight permit and queues `request` for the socket. Requests started
    /// one after another from one task reach the server in that order, which lets a
    /// producer pipeline batches of a partition.
    pub(crate) async fn start(&self, request: &Request) -> Result<Exchange> {
        let permit = self
            .inflight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ClientError::Closed)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = self.encode(id, request)?;
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.shared.pending.lock();
            if let Some(e) = &p.closed {
                return Err(e.clone());
            }
            // Ids wrap after 2^32 requests; one that old and still pending is a bug.
            let previous = p.map.insert(id, tx);
            assert!(
                previous.is_none(),
                "correlation id {id} reused while pending"
            );
        }
        let exchange = Exchange {
            shared: self.shared.clone(),
            id,
            rx,
            _permit: permit,
        };
        self.writer
            .send(frame)
            .await
            .map_err(|_| self.closed_error())?;
        Ok(exchange)
    }

    /// Sends `request` and waits up to `timeout` (queueing for a permit included) for its
    /// response. A [`Response::Error`] becomes [`ClientError::Server`].
    pub(crate) async fn request(&self, request: &Request, timeout: Duration) -> Result<Response> {
        let exchange = async { self.start(request).await?.response().await };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout(timeout)),
        }
    }

    /// Sends a request the server will not answer (a produce with acks none); waits up
    /// to `timeout` for room in the write queue.
    pub(crate) async fn send_oneway(&self, request: &Request, timeout: Duration) -> Result<()> {
        if let Some(e) = &self.shared.pending.lock().closed {
            return Err(e.clone());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = self.encode(id, request)?;
        match tokio::time::timeout(timeout, self.writer.send(frame)).await {
            Ok(sent) => sent.map_err(|_| self.closed_error()),
            Err(_) => Err(ClientError::Timeout(timeout)),
        }
    }

    fn closed_error(&self) -> ClientError {
        closed_error(&self.shared)
    }
}

fn closed_error(shared: &Shared) -> ClientError {
    shared
        .pending
        .lock()
        .closed
        .clone()
        .unwrap_or_else(|| ClientError::Disconnected("connection closed".into()))
}

pub(crate) fn unexpected(want: &str, got: &Response) -> ClientError {
    ClientError::Protocol(format!("expected a {want} response, got {:?}", got.kind()))
}

/// Writes queued frames: whatever is queued when the socket can take more leaves in one
/// vectored write, record batches straight from the producer's buffers.
async fn write_loop(
    mut rx: mpsc::Receiver<FrameParts>,
    mut w: OwnedWriteHalf,
    shared: Arc<Shared>,
) {
    let mut queue = WriteQueue::new();
    let result: std::io::Result<()> = async {
        loop {
            let frame = tokio::select! {
                f = rx.recv() => f,
                () = shared.closed.cancelled() => return Ok(()),
            };
            let Some(frame) = frame else {
                return Ok(());
            };
            queue.push(frame);
            while !queue.is_empty() {
                while queue.len() < WRITE_GATHER_BYTES_MAX {
                    match rx.try_recv() {
                        Ok(frame) => queue.push(frame),
                        Err(_) => break,
                    }
                }
                let mut slices = [IoSlice::new(&[]); WRITE_SLICES_MAX];
                let n = queue.io_slices(&mut slices);
                let written = tokio::select! {
                    r = w.write_vectored(&slices[..n]) => r?,
                    () = shared.closed.cancelled() => return Ok(()),
                };
                if written == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                queue.advance(written);
            }
        }
    }
    .await;
    match result {
        Ok(()) => shared.close(ClientError::Disconnected("connection closed".into())),
        Err(e) => shared.close(ClientError::Io(Arc::new(e))),
    }
    let _ = w.shutdown().await;
}

async fn read_loop(mut read: OwnedReadHalf, shared: Arc<Shared>, frame_bytes_max: u32) {
    let mut buf = BytesMut::with_capacity(READ_BUFFER_BYTES);
    let err = loop {
        loop {
            match weir_proto::decode_frame(&mut buf, frame_bytes_max) {
                Ok(Some(frame)) => dispatch(&shared, &frame),
                Ok(None) => break,
                Err(e) => {
                    shared.close(ClientError::Protocol(e.to_string()));
                    return;
                }
            }
        }
        if buf.capacity() - buf.len() < READ_BUFFER_BYTES / 4 {
            buf.reserve(READ_BUFFER_BYTES);
        }
        tokio::select! {
            n = read.read_buf(&mut buf) => match n {
                Ok(0) => break ClientError::Disconnected("server closed the connection".into()),
                Ok(_) => {}
                Err(e) => break ClientError::Io(Arc::new(e)),
            },
            () = shared.closed.cancelled() => return,
        }
    };
    shared.close(err);
}

fn dispatch(shared: &Shared, frame: &weir_proto::Frame) {
    let id = frame.header.correlation_id;
    let Some(tx) = shared.pending.lock().map.remove(&id) else {
        // The request timed out or was dropped; its late answer is not an error.
        tracing::trace!(id, "response for a request no longer pending");
        return;
    };
    let resp = Response::decode(frame).map_err(|e| ClientError::Protocol(e.to_string()));
    let _ = tx.send(resp);
}
