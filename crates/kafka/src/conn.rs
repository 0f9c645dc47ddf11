//! Connections: accept → read frames → start requests in order → answer in order.
//!
//! Kafka clients match responses to requests by position as well as by correlation id
//! (the Java client checks that each response answers its oldest outstanding request), so
//! a connection answers strictly in request order. Each connection has three tasks:
//!
//! - the reader (this task) splits and decodes frames; each request that expects an answer
//!   gets the next sequence number and a permit (at most `inflight_requests_max` requests
//!   are unanswered; beyond that the reader stops reading), then reserves its bytes (and a
//!   fetch the bytes it may answer with) from the connection's [`ByteBudget`]
//!   (`connection_buffer_bytes_max`; the reader waits while it is spent), then goes to the
//!   dispatcher. A bad frame or request ends the reader: the connection is closed after
//!   the requests before it are answered.
//! - the dispatcher starts requests in arrival order: produce requests are appended to
//!   the log right there, one after the other (so a connection's batches reach each
//!   partition in the order sent, like the native listener's `append_loop`); the wait for
//!   durability, and every other request, runs in its own task.
//! - the writer receives answers as they are ready, with their sequence numbers, keeps
//!   the early ones aside, and writes them in sequence, gathering whatever is ready into
//!   vectored writes (a fetch response's records go to the socket from the log's buffers,
//!   uncopied). A permit and a reservation are released only once their answer is written,
//!   so the answers kept aside are bounded too: a client that does not read its responses
//!   stops being read. Reservations are taken in request order and answers are written in
//!   request order, so the reader's wait always ends once the earlier answers are out.

use std::collections::BTreeMap;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weir_broker::Broker;
use weir_net::{ByteBudget, READ_CHUNK_BYTES, Reservation};
use weir_proto::{FrameParts, WRITE_GATHER_BYTES_MAX, WRITE_SLICES_MAX, WriteQueue};

use crate::codec::{self, Decoded, Header, Request};
use crate::{KafkaConfig, handler, produce, versions};

/// What every connection shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) broker: Broker,
    pub(crate) config: KafkaConfig,
    /// Cancelled at shutdown: connections stop reading new requests.
    pub(crate) stop: CancellationToken,
}

/// An encoded response frame (as parts: a fetch response's records are not copied into
/// it), or `None` when the connection must close instead (a response that could not be
/// encoded: the client would wait for it forever).
pub(crate) type Reply = Option<FrameParts>;

/// An answer on its way to the writer.
struct Answer {
    /// Position among the connection's answered requests, from 0.
    seq: u64,
    reply: Reply,
    /// Released once the answer is written.
    _permit: OwnedSemaphorePermit,
    /// Returned to the connection's budget once the answer is written.
    _reservation: Option<Reservation>,
}

/// Where one request's answer goes. Dropped without an answer (a task that panicked), it
/// answers `None`, which closes the connection instead of leaving the client waiting.
struct Responder {
    seq: u64,
    tx: mpsc::UnboundedSender<Answer>,
    permit: Option<OwnedSemaphorePermit>,
    reservation: Option<Reservation>,
}

impl Responder {
    fn send(mut self, reply: Reply) {
        self.answer(reply);
    }

    fn answer(&mut self, reply: Reply) {
        if let Some(permit) = self.permit.take() {
            // The writer is gone only when the connection is: nobody left to tell.
            let _ = self.tx.send(Answer {
                seq: self.seq,
                reply,
                _permit: permit,
                _reservation: self.reservation.take(),
            });
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.answer(None);
    }
}

/// A request on its way from the reader to the dispatcher.
struct Work {
    header: Header,
    request: Request,
    /// Where the answer goes; `None` for a produce with acks=0, which is not answered.
    reply: Option<Responder>,
    /// This request's share of the budget when nobody is answered (acks=0); otherwise the
    /// responder holds it.
    reservation: Option<Reservation>,
}

/// Accepts connections until `stop` is cancelled. Each runs on `connections`.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    connections: TaskTracker,
) {
    let serving = shared.clone();
    weir_net::accept_loop(
        listener,
        shared.stop.clone(),
        shared.config.connections_max,
        connections,
        move |socket, peer| serve(socket, peer, serving.clone()),
        // Kafka has no frame to say why; the client sees the close and backs off.
        |socket, _| async move { drop(socket) },
    )
    .await;
}

/// Serves one connection until the peer closes it, sends a bad request, or shutdown.
async fn serve(socket: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let (mut rd, wr) = socket.into_split();
    let inflight_max = shared.config.inflight_requests_max.max(1) as usize;
    // Unbounded, but every answer holds one of `inflight_max` permits.
    let (answer_tx, answer_rx) = mpsc::unbounded_channel::<Answer>();
    let inflight = Arc::new(Semaphore::new(inflight_max));
    let budget = ByteBudget::new(shared.config.connection_buffer_bytes_max);
    let mut next_seq = 0u64;
    let writer = tokio::spawn(write_loop(wr, answer_rx, peer));
    let requests = TaskTracker::new();
    let (work_tx, work_rx) = mpsc::channel::<Work>(inflight_max);
    let dispatcher = tokio::spawn(dispatch_loop(
        shared.clone(),
        work_rx,
        requests.clone(),
        peer,
    ));
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    'conn: loop {
        loop {
            let frame = match codec::split_frame(&mut buf, shared.config.frame_bytes_max) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::info!(%peer, error = %e, "closing kafka connection after a bad frame");
                    break 'conn;
                }
            };
            let frame_bytes = frame.len();
            let (header, request) = match codec::decode(frame) {
                Ok(Decoded::Request(h, r)) => (h, *r),
                Ok(Decoded::ApiVersionsTooNew(h)) => {
                    // Answered at v0 with the ranges, so the client can retry lower.
                    let reply = codec::encode_at(
                        h.api_key,
                        h.correlation_id,
                        0,
                        &versions::api_versions_response(Some(
                            kafka_protocol::ResponseError::UnsupportedVersion,
                        )),
                    )
                    .ok()
                    .map(FrameParts::from);
                    let Ok(permit) = inflight.clone().acquire_owned().await else {
                        break 'conn;
                    };
                    let responder = Responder {
                        seq: next_seq,
                        tx: answer_tx.clone(),
                        permit: Some(permit),
                        reservation: None,
                    };
                    next_seq += 1;
                    responder.send(reply);
                    continue;
                }
                Err(e) => {
                    tracing::info!(%peer, error = %e, "closing kafka connection after a request it cannot serve");
                    break 'conn;
                }
            };
            let permit = if produce::expects_reply(&request) {
                let Ok(permit) = inflight.clone().acquire_owned().await else {
                    break 'conn;
                };
                Some(permit)
            } else {
                None
            };
            let answer_bytes = match &request {
                Request::Fetch(f) => u32::try_from(f.max_bytes)
                    .unwrap_or(0)
                    .clamp(1, shared.broker.config().fetch_bytes_max),
                _ => 0,
            };
            let reservation = budget.reserve(frame_bytes + answer_bytes as usize).await;
            let (reply, reservation) = match permit {
                Some(permit) => {
                    let responder = Responder {
                        seq: next_seq,
                        tx: answer_tx.clone(),
                        permit: Some(permit),
                        reservation: Some(reservation),
                    };
                    next_seq += 1;
                    (Some(responder), None)
                }
                None => (None, Some(reservation)),
            };
            let work = Work {
                header,
                request,
                reply,
                reservation,
            };
            if work_tx.send(work).await.is_err() {
                break 'conn;
            }
        }
        if !weir_net::read_more(&mut rd, &mut buf, &shared.stop, peer).await {
            break;
        }
    }
    // Answer what was asked before closing.
    drop(work_tx);
    let _ = dispatcher.await;
    requests.close();
    requests.wait().await;
    drop(answer_tx);
    let _ = writer.await;
}

/// Starts requests in arrival order; see the module documentation.
async fn dispatch_loop(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Work>,
    requests: TaskTracker,
    peer: SocketAddr,
) {
    while let Some(work) = rx.recv().await {
        let Work {
            header,
            request,
            reply,
            reservation,
        } = work;
        match request {
            Request::Produce(r) => {
                let started = produce::start(&shared, r).await;
                // Unanswered (acks=0): the records are in the log, the bytes are free.
                drop(reservation);
                requests.spawn(async move {
                    let answer = produce::finish(&header, started).await;
                    if let Some(reply) = reply {
                        reply.send(answer);
                    }
                });
            }
            other => {
                let shared = shared.clone();
                requests.spawn(async move {
                    let answer = handler::handle(&shared, &header, other, peer).await;
                    if let Some(reply) = reply {
                        reply.send(answer);
                    }
                });
            }
        }
    }
}

/// Writes answers in request order; see the module documentation.
async fn write_loop(
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    mut answers: mpsc::UnboundedReceiver<Answer>,
    peer: SocketAddr,
) {
    let mut queue = WriteQueue::new();
    let mut next = 0u64;
    // Answers that arrived before an earlier one; at most `inflight_requests_max`.
    let mut early: BTreeMap<u64, Answer> = BTreeMap::new();
    // Answers queued for the socket; dropped (permits and budget released) once written.
    let mut written: Vec<Answer> = Vec::new();
    let mut closing = false;
    while let Some(first) = answers.recv().await {
        early.insert(first.seq, first);
        loop {
            // Gather whatever else is ready into the same writes.
            while let Ok(a) = answers.try_recv() {
                early.insert(a.seq, a);
            }
            while !closing
                && queue.len() < WRITE_GATHER_BYTES_MAX
                && let Some(mut answer) = early.remove(&next)
            {
                match answer.reply.take() {
                    Some(frame) => {
                        queue.push(frame);
                        written.push(answer);
                        next += 1;
                    }
                    None => {
                        tracing::warn!(%peer, "closing kafka connection: a response could not be produced");
                        closing = true;
                    }
                }
            }
            if queue.is_empty() {
                break;
            }
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES_MAX];
            let n = queue.io_slices(&mut slices);
            match wr.write_vectored(&slices[..n]).await {
                Ok(0) | Err(_) => return,
                Ok(done) => queue.advance(done),
            }
            if queue.is_empty() {
                written.clear();
            }
        }
        if closing {
            // Everything before the missing answer is written; the close tells the rest.
            return;
        }
    }
    let _ = wr.shutdown().await;
}
