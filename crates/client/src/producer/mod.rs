//! [`Producer`]: batching, partitioning, acks, retries and back-pressure.
//!
//! A record goes through: interceptors' `on_send` → size checks → partition count (cached
//! metadata) → a reservation of `buffer_bytes_max` (waiting here is the back-pressure) →
//! the [`Accumulator`](accumulator::Accumulator), under one short lock. A sender task
//! takes batches that are full, whose linger expired, or that a flush sealed, and sends
//! each as one produce request, by default at most one in flight per partition (which
//! keeps a partition's records in send order, retries included; see
//! `partition_inflight_batches_max` for pipelining). The sender queues each batch's first
//! attempt on the connection itself, so pipelined batches leave in order. When the
//! response arrives, each record's completion runs with its offset (base offset + index),
//! the records sent with `send_tagged` are reported to the [`BatchAckHandler`] in one
//! call, and the reservation is released.
//!
//! The common send takes the fast path (`try_append`): the partition count is known, the
//! buffer has room, so the record is batched under one lock, with one map lookup (the
//! partition's; the topic's too unless the record's [`Topic`] is a clone of the previous
//! record's), no allocation and no clock read unless it starts a batch. Anything else (first send to a topic, a partition
//! count older than `metadata_max_age_ms` when a batch starts, back-pressure) goes the
//! slow, awaiting path.

mod accumulator;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore, oneshot};
use weir_proto::{Request, Response, v1};
use weir_record::Record;

use self::accumulator::{Accumulator, Destination, Lane, Placed, SealedBatch};
use crate::client::Client;
use crate::config::{Acks, ProducerConfig};
use crate::conn::Exchange;
use crate::error::{ClientError, Result};
use crate::record::{ProducerRecord, RecordMetadata, Topic};

/// Hooks around every record a producer sends.
///
/// `on_send` runs before the record is partitioned and batched and may change it
/// (add a header, set a timestamp); `on_ack` runs once per record with its outcome,
/// before the sender's own future or callback sees it. Both run on the caller's or the
/// sender's task: keep them short and non-blocking.
pub trait ProducerInterceptor: Send + Sync {
    /// Called before the record is batched.
    fn on_send(&self, record: &mut ProducerRecord) {
        let _ = record;
    }

    /// Called with each record's outcome.
    fn on_ack(&self, result: std::result::Result<&RecordMetadata, &ClientError>) {
        let _ = result;
    }
}

/// Receives the outcomes of records sent with [`Producer::send_tagged`], one call per
/// batch.
///
/// For a sender that tracks many records, this replaces a callback per record (a boxed
/// closure, and a call, per record) with one call per produce request; each record is
/// known by the `u64` tag it was sent with (a sequence number, an index into the
/// caller's own table, a send time). Set it with
/// [`ProducerConfig::batch_ack_handler`](crate::ProducerConfig::batch_ack_handler).
/// It runs on the producer's tasks: keep it short and non-blocking.
pub trait BatchAckHandler: Send + Sync {
    /// Called once for each batch that carried tagged records, when its answer arrives
    /// (or its last retry fails), after the interceptors' `on_ack`.
    fn on_batch(&self, acks: &BatchAcks<'_>);
}

/// The outcome of the tagged records of one batch (see [`BatchAckHandler`]).
#[derive(Debug)]
pub struct BatchAcks<'a> {
    /// Topic.
    pub topic: &'a Topic,
    /// Partition.
    pub partition: u32,
    /// `Ok` when the batch was written, or the error that failed all its records.
    pub result: std::result::Result<(), &'a ClientError>,
    /// The batch's tagged records, in offset order.
    pub records: &'a [TaggedAck],
}

/// One record of [`BatchAcks`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaggedAck {
    /// The tag it was sent with.
    pub tag: u64,
    /// Its offset; -1 when the batch failed or was sent with acks none.
    pub offset: i64,
    /// Its create time (ms since the epoch).
    pub timestamp_ms: i64,
}

/// Bytes a produce request frame adds around its batch (header, topic, fields).
const PRODUCE_OVERHEAD_BYTES: u32 = 4096;

type Callback = Box<dyn FnOnce(Result<RecordMetadata>) + Send>;

/// What to do when a record's batch completes.
enum Completion {
    /// Nobody waits (one-way).
    None,
    /// A future waits.
    Channel(oneshot::Sender<Result<RecordMetadata>>),
    /// A callback waits.
    Callback(Callback),
    /// The producer's [`BatchAckHandler`] hears of it under this tag, with its batch.
    Tagged(u64),
}

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Completion::None => "None",
            Completion::Channel(_) => "Channel",
            Completion::Callback(_) => "Callback",
            Completion::Tagged(_) => "Tagged",
        })
    }
}

impl Completion {
    fn complete(self, result: Result<RecordMetadata>) {
        match self {
            Completion::None => {}
            Completion::Channel(tx) => {
                let _ = tx.send(result);
            }
            Completion::Callback(cb) => cb(result),
            // Reported by `send_batch` a batch at a time; a record that never reached a
            // batch is reported to the caller of `send_tagged` instead.
            Completion::Tagged(_) => {}
        }
    }
}

/// State shared by the producer handles, the sender task and the batch tasks.
struct Shared {
    client: Client,
    config: ProducerConfig,
    /// Largest record (bounded by [`ProducerRecord::size_bound_bytes`]) one batch holds.
    record_bytes_max: usize,
    state: Mutex<Accumulator<Completion>>,
    /// Bytes of `buffer_bytes_max` not reserved by records in flight.
    buffer: Semaphore,
    /// Wakes the sender (a batch started, sealed or completed; a flush; a close).
    wake: Notify,
    /// Signals batch completions to flush waiters.
    done: Notify,
    /// New records are refused.
    closed: AtomicBool,
    /// The last handle is gone: the sender exits once everything is sent.
    detached: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

/// Sets the sender draining when the last [`Producer`] clone is dropped.
#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.detached.store(true, Ordering::Release);
        self.shared.state.lock().seal_all();
        self.shared.wake.notify_one();
    }
}

/// A batching producer. Cheap to clone; clones share batches and the sender task.
///
/// Records to the same partition are appended in the order their sends were enqueued.
/// Dropping the last clone sends what is buffered in the background; call
/// [`close`](Producer::close) to wait for it.
#[derive(Debug, Clone)]
pub struct Producer {
    handle: Arc<Handle>,
}

/// A record that passed the checks, with its partition count.
struct Prepared {
    record: ProducerRecord,
    partitions: u32,
    reserve_bytes: usize,
}

impl Producer {
    pub(crate) fn new(client: Client, config: ProducerConfig) -> Result<Producer> {
        config.validate()?;
        let linger = Duration::from_millis(config.linger_ms.into());
        // The server's limits lower ours; a produce frame adds a little around the batch.
        let server_max = client.cached_server_info().map_or(u32::MAX, |s| {
            s.limits.batch_bytes_max.min(
                s.limits
                    .frame_bytes_max
                    .saturating_sub(PRODUCE_OVERHEAD_BYTES),
            )
        });
        let batch_bytes_max = config
            .batch_bytes_max
            .min(server_max)
            .max(crate::config::BATCH_BYTES_MIN) as usize;
        let metadata_max_age = Duration::from_millis(client.config().metadata_max_age_ms.into());
        let accumulator = Accumulator::new(
            batch_bytes_max,
            linger,
            config.partition_inflight_batches_max,
            metadata_max_age,
        );
        let buffer = usize::try_from(config.buffer_bytes_max).unwrap_or(usize::MAX >> 4);
        let shared = Arc::new(Shared {
            client,
            record_bytes_max: accumulator.record_bytes_max(),
            state: Mutex::new(accumulator),
            buffer: Semaphore::new(buffer),
            wake: Notify::new(),
            done: Notify::new(),
            closed: AtomicBool::new(false),
            detached: AtomicBool::new(false),
            config,
        });
        tokio::spawn(sender_loop(shared.clone()));
        Ok(Producer {
            handle: Arc::new(Handle { shared }),
        })
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// The producer's settings.
    pub fn config(&self) -> &ProducerConfig {
        &self.shared().config
    }

    /// Sends a record and waits for its acknowledgement (sync send).
    ///
    /// Waits first for buffer room if `buffer_bytes_max` is used up.
    pub async fn send(&self, record: ProducerRecord) -> Result<RecordMetadata> {
        let (tx, rx) = oneshot::channel();
        let oneway = self.config().acks == Acks::None;
        self.enqueue(record, oneway, Completion::Channel(tx))
            .await
            .map_err(|(e, _)| e)?;
        rx.await.unwrap_or(Err(ClientError::Closed))
    }

    /// Enqueues a record now and returns a future for its acknowledgement (async send).
    ///
    /// The record is batched before this returns when the topic's partition count is
    /// cached and the buffer has room; otherwise (first send to a topic, or
    /// back-pressure) the returned future waits for those, then enqueues it. The future
    /// need not be polled for an enqueued record to be sent.
    pub fn send_async(
        &self,
        record: ProducerRecord,
    ) -> impl Future<Output = Result<RecordMetadata>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let oneway = self.config().acks == Acks::None;
        let mut record = record;
        let mut later = None;
        match self.prepare(&mut record) {
            Err(e) => finish_record(self.shared(), Completion::Channel(tx), Err(e)),
            Ok(reserve_bytes) => {
                match self.try_append(&record, reserve_bytes, oneway, Completion::Channel(tx)) {
                    Fast::Batched => {}
                    Fast::Later(completion) => {
                        let prep = Prepared {
                            record,
                            partitions: 0,
                            reserve_bytes,
                        };
                        later = Some((prep, completion));
                    }
                    Fast::Failed(e, completion) => {
                        finish_record(self.shared(), completion, Err(e));
                    }
                }
            }
        }
        let this = self.clone();
        async move {
            if let Some((prep, completion)) = later
                && let Err((e, _)) = this.enqueue_prepared(prep, oneway, completion).await
            {
                return Err(e);
            }
            rx.await.unwrap_or(Err(ClientError::Closed))
        }
    }

    /// Enqueues a record; `callback` runs exactly once with its outcome (an enqueue
    /// failure included). Returns once the record is batched, after waiting for buffer
    /// room if needed.
    pub async fn send_with_callback<F>(&self, record: ProducerRecord, callback: F)
    where
        F: FnOnce(Result<RecordMetadata>) + Send + 'static,
    {
        let oneway = self.config().acks == Acks::None;
        if let Err((e, completion)) = self
            .enqueue(record, oneway, Completion::Callback(Box::new(callback)))
            .await
        {
            completion.complete(Err(e));
        }
    }

    /// Enqueues a record whose outcome goes, under `tag`, to the producer's
    /// [`BatchAckHandler`], in one call with the other tagged records of its batch. The
    /// cheapest way to learn of every record's outcome: no allocation and no callback
    /// per record.
    ///
    /// Returns once the record is batched, after waiting for buffer room if needed. An
    /// error means it was not batched (closed producer, unknown topic, record too large,
    /// no handler in [`ProducerConfig`](crate::ProducerConfig)), and the handler will not
    /// hear of it.
    pub async fn send_tagged(&self, record: ProducerRecord, tag: u64) -> Result<()> {
        if self.config().batch_ack_handler.is_none() {
            return Err(ClientError::InvalidArgument(
                "send_tagged needs ProducerConfig::batch_ack_handler".into(),
            ));
        }
        let oneway = self.config().acks == Acks::None;
        self.enqueue(record, oneway, Completion::Tagged(tag))
            .await
            .map_err(|(e, _)| e)
    }

    /// Enqueues a record with acks none: the server sends no response and nobody learns
    /// its offset. Returns once the record is batched; errors are only those found
    /// before sending (closed producer, unknown topic, record too large).
    pub async fn send_oneway(&self, record: ProducerRecord) -> Result<()> {
        self.enqueue(record, true, Completion::None)
            .await
            .map_err(|(e, _)| e)
    }

    /// Sends every buffered record now and waits until all records enqueued before the
    /// call are acknowledged or failed.
    pub async fn flush(&self) {
        let shared = self.shared();
        let bound = {
            let mut st = shared.state.lock();
            st.seal_all();
            st.next_batch_id()
        };
        shared.wake.notify_one();
        loop {
            let done = shared.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if shared.state.lock().completed_before(bound) {
                return;
            }
            done.await;
        }
    }

    /// Refuses new records, sends the buffered ones and waits for them. Other clones
    /// are closed too.
    pub async fn close(&self) {
        self.shared().closed.store(true, Ordering::Release);
        self.flush().await;
    }

    /// Runs interceptors and checks the record; returns the buffer bytes it reserves.
    /// Does not wait.
    fn prepare(&self, record: &mut ProducerRecord) -> Result<usize> {
        let shared = self.shared();
        if shared.closed.load(Ordering::Acquire) {
            return Err(ClientError::Closed);
        }
        for i in &shared.config.interceptors {
            i.on_send(record);
        }
        if record.topic.is_empty() {
            return Err(ClientError::InvalidArgument("empty topic name".into()));
        }
        let bound = record.size_bound_bytes();
        if bound > shared.record_bytes_max {
            return Err(ClientError::InvalidArgument(format!(
                "record of up to {bound} bytes does not fit a batch of at most {} bytes \
                 (batch_bytes_max, or the server's limit)",
                shared.record_bytes_max + weir_record::BATCH_HEADER_BYTES
            )));
        }
        Ok(bound)
    }

    /// Batches a prepared record if that needs no waiting: the partition count is known
    /// and the buffer has room. One lock, no clock read unless a batch starts.
    fn try_append(
        &self,
        r: &ProducerRecord,
        reserve_bytes: usize,
        oneway: bool,
        completion: Completion,
    ) -> Fast {
        let shared = self.shared();
        let reserve = u32::try_from(reserve_bytes).expect("bounded by batch_bytes_max");
        match shared.buffer.try_acquire_many(reserve) {
            Ok(permit) => permit.forget(),
            Err(_) => return Fast::Later(completion),
        }
        let headers = header_refs(r);
        let record = batch_record(r, &headers);
        let to = Destination {
            topic: &r.topic,
            key: r.key.as_deref(),
            partition: r.partition,
            partitioning: shared.config.partitioning,
            oneway,
        };
        let placed = {
            let mut st = shared.state.lock();
            if shared.closed.load(Ordering::Acquire) {
                drop(st);
                shared.buffer.add_permits(reserve_bytes);
                return Fast::Failed(ClientError::Closed, completion);
            }
            st.try_append(to, record, completion, reserve_bytes, Instant::now)
        };
        match placed {
            Placed::Batched { wake } => {
                if wake {
                    shared.wake.notify_one();
                }
                Fast::Batched
            }
            Placed::NeedPartitions(completion) => {
                shared.buffer.add_permits(reserve_bytes);
                Fast::Later(completion)
            }
            Placed::NoSuchPartition {
                completion,
                partitions,
            } => {
                shared.buffer.add_permits(reserve_bytes);
                let p = r.partition.unwrap_or_default();
                Fast::Failed(no_such_partition(&r.topic, p, partitions), completion)
            }
        }
    }

    /// Prepares, waits for metadata and buffer room if needed, and batches a record. On
    /// failure the completion is handed back (after `on_ack` ran) with the error.
    async fn enqueue(
        &self,
        record: ProducerRecord,
        oneway: bool,
        completion: Completion,
    ) -> std::result::Result<(), (ClientError, Completion)> {
        let mut record = record;
        let reserve_bytes = match self.prepare(&mut record) {
            Ok(n) => n,
            Err(e) => return Err(fail_early(self.shared(), e, completion)),
        };
        match self.try_append(&record, reserve_bytes, oneway, completion) {
            Fast::Batched => Ok(()),
            // Boxed: the rare slow path would otherwise make every send's future large.
            Fast::Later(completion) => {
                let prep = Prepared {
                    record,
                    partitions: 0,
                    reserve_bytes,
                };
                Box::pin(self.enqueue_prepared(prep, oneway, completion)).await
            }
            Fast::Failed(e, completion) => Err(fail_early(self.shared(), e, completion)),
        }
    }

    async fn enqueue_prepared(
        &self,
        mut prep: Prepared,
        oneway: bool,
        completion: Completion,
    ) -> std::result::Result<(), (ClientError, Completion)> {
        let shared = self.shared();
        let n = match shared.client.partition_count(&prep.record.topic).await {
            Ok(n) => n,
            Err(e) => return Err(fail_early(shared, e, completion)),
        };
        prep.partitions = n;
        if let Err(e) = check_partition(&prep) {
            return Err(fail_early(shared, e, completion));
        }
        let reserve = u32::try_from(prep.reserve_bytes).expect("bounded by batch_bytes_max");
        match shared.buffer.acquire_many(reserve).await {
            Ok(permit) => permit.forget(),
            Err(_) => return Err(fail_early(shared, ClientError::Closed, completion)),
        }
        self.append(prep, oneway, completion)
            .map_err(|(e, c)| fail_early(shared, e, c))
    }

    /// Puts a record whose buffer room is reserved and whose topic's partition count was
    /// just learnt into its batch.
    fn append(
        &self,
        prep: Prepared,
        oneway: bool,
        completion: Completion,
    ) -> std::result::Result<(), (ClientError, Completion)> {
        let shared = self.shared();
        let r = &prep.record;
        let headers = header_refs(r);
        let record = batch_record(r, &headers);
        let wake = {
            let mut st = shared.state.lock();
            if shared.closed.load(Ordering::Acquire) {
                drop(st);
                shared.buffer.add_permits(prep.reserve_bytes);
                return Err((ClientError::Closed, completion));
            }
            let partition = st.choose_partition(
                &r.topic,
                r.key.as_deref(),
                r.partition,
                prep.partitions,
                shared.config.partitioning,
            );
            st.append(
                &r.topic,
                prep.partitions,
                Lane { partition, oneway },
                record,
                completion,
                prep.reserve_bytes,
                Instant::now(),
            )
        };
        if wake {
            shared.wake.notify_one();
        }
        Ok(())
    }
}

/// The outcome of the no-wait path of a send.
enum Fast {
    /// The record is in a batch.
    Batched,
    /// It must wait for metadata or buffer room: the slow path takes it from here.
    Later(Completion),
    /// It cannot be sent.
    Failed(ClientError, Completion),
}

fn check_partition(prep: &Prepared) -> Result<()> {
    match prep.record.partition {
        Some(p) if p >= prep.partitions => {
            Err(no_such_partition(&prep.record.topic, p, prep.partitions))
        }
        _ => Ok(()),
    }
}

fn no_such_partition(topic: &str, partition: u32, partitions: u32) -> ClientError {
    ClientError::InvalidArgument(format!(
        "partition {partition} does not exist: topic {topic:?} has {partitions} partitions"
    ))
}

/// Reports a record that never reached a batch to the interceptors, and hands its
/// completion back to the caller.
fn fail_early(
    shared: &Shared,
    e: ClientError,
    completion: Completion,
) -> (ClientError, Completion) {
    for i in &shared.config.interceptors {
        i.on_ack(Err(&e));
    }
    (e, completion)
}

fn finish_record(shared: &Shared, completion: Completion, result: Result<RecordMetadata>) {
    for i in &shared.config.interceptors {
        i.on_ack(result.as_ref());
    }
    completion.complete(result);
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Sends batches as they become ready until the producer is dropped and drained.
///
/// Each batch's first attempt is queued on the connection here, in drain order, so the
/// batches of a partition reach the server in order even when several are in flight
/// (`partition_inflight_batches_max`); a task per batch then waits for its answer.
async fn sender_loop(shared: Arc<Shared>) {
    loop {
        let (drained, finished) = {
            let mut st = shared.state.lock();
            let d = st.drain_ready(Instant::now());
            let finished = shared.detached.load(Ordering::Acquire) && st.is_empty();
            (d, finished)
        };
        for batch in drained.batches {
            let first = start_produce(&shared, &batch.topic, batch.lane, batch.bytes.clone()).await;
            tokio::spawn(send_batch(shared.clone(), batch, first));
        }
        if finished {
            return;
        }
        match drained.next_deadline {
            Some(deadline) => {
                tokio::select! {
                    () = shared.wake.notified() => {}
                    () = tokio::time::sleep_until(deadline.into()) => {}
                }
            }
            None => shared.wake.notified().await,
        }
    }
}

/// A batch's first attempt, queued on the connection.
enum Started {
    /// Waiting for the answer until the deadline.
    Awaiting(Exchange, Instant),
    /// Sent one-way (acks none): nothing to wait for.
    Sent,
    /// Could not be queued.
    Failed(ClientError),
}

fn produce_request(shared: &Shared, topic: &str, lane: Lane, records: bytes::Bytes) -> Request {
    let acks = if lane.oneway {
        Acks::None
    } else {
        shared.config.acks
    };
    Request::Produce(v1::ProduceRequest {
        topic: topic.to_owned(),
        partition: lane.partition,
        acks: acks.to_wire() as i32,
        timeout_ms: shared.config.request_timeout_ms,
        records,
    })
}

/// The server answers within timeout_ms; leave it time to say so before giving up.
fn produce_timeout(config: &ProducerConfig) -> Duration {
    Duration::from_millis(u64::from(config.request_timeout_ms) + 1_000)
}

/// Queues the first attempt of a batch on the connection (waiting for an in-flight
/// permit, or a reconnect, if need be).
async fn start_produce(shared: &Shared, topic: &str, lane: Lane, records: bytes::Bytes) -> Started {
    let request = produce_request(shared, topic, lane, records);
    let timeout = produce_timeout(&shared.config);
    let deadline = Instant::now() + timeout;
    let oneway = lane.oneway || shared.config.acks == Acks::None;
    let queue = async {
        let conn = shared.client.conn().await?;
        if oneway {
            conn.send_oneway(&request, timeout).await.map(|()| None)
        } else {
            conn.start(&request).await.map(Some)
        }
    };
    match tokio::time::timeout(timeout, queue).await {
        Ok(Ok(Some(exchange))) => Started::Awaiting(exchange, deadline),
        Ok(Ok(None)) => Started::Sent,
        Ok(Err(e)) => Started::Failed(e),
        Err(_) => Started::Failed(ClientError::Timeout(timeout)),
    }
}

/// Sends one batch with retries, completes its records and frees its partition.
async fn send_batch(shared: Arc<Shared>, batch: SealedBatch<Completion>, first: Started) {
    let result = produce(
        &shared,
        &batch.topic,
        batch.lane,
        batch.bytes.clone(),
        first,
    )
    .await;
    let SealedBatch {
        id,
        topic,
        lane,
        records,
        reserved_bytes,
        ..
    } = batch;
    if let Err(e) = &result {
        tracing::debug!(%topic, partition = lane.partition, error = %e, "batch failed");
    }
    let quiet = shared.config.interceptors.is_empty();
    let handler = shared.config.batch_ack_handler.as_deref();
    let mut tagged = Vec::new();
    for (i, p) in records.into_iter().enumerate() {
        let offset = match &result {
            Ok(base) if *base >= 0 => base + i as i64,
            _ => -1,
        };
        match p.completion {
            Completion::None if quiet => continue,
            Completion::Tagged(tag) => {
                tagged.push(TaggedAck {
                    tag,
                    offset,
                    timestamp_ms: p.timestamp_ms,
                });
                if quiet {
                    continue;
                }
            }
            _ => {}
        }
        let r = match &result {
            Ok(_) => Ok(RecordMetadata {
                topic: topic.clone(),
                partition: lane.partition,
                offset,
                timestamp_ms: p.timestamp_ms,
            }),
            Err(e) => Err(e.clone()),
        };
        finish_record(&shared, p.completion, r);
    }
    if let Some(h) = handler
        && !tagged.is_empty()
    {
        h.on_batch(&BatchAcks {
            topic: &topic,
            partition: lane.partition,
            result: result.as_ref().map(|_| ()),
            records: &tagged,
        });
    }
    shared.buffer.add_permits(reserved_bytes);
    shared.state.lock().finish(&topic, lane, id);
    shared.wake.notify_one();
    shared.done.notify_waiters();
}

/// A produce request with bounded retries, its first attempt already started; returns
/// the base offset (-1 for acks none).
async fn produce(
    shared: &Shared,
    topic: &str,
    lane: Lane,
    records: bytes::Bytes,
    first: Started,
) -> Result<i64> {
    let config = &shared.config;
    let request = produce_request(shared, topic, lane, records);
    let acks = if lane.oneway { Acks::None } else { config.acks };
    let timeout = produce_timeout(config);
    let mut first = Some(first);
    let mut attempt: u32 = 0;
    loop {
        let answer = match first.take() {
            Some(Started::Awaiting(exchange, deadline)) => {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, exchange.response()).await {
                    Ok(r) => Some(r),
                    Err(_) => Some(Err(ClientError::Timeout(timeout))),
                }
            }
            Some(Started::Sent) => return Ok(-1),
            Some(Started::Failed(e)) => Some(Err(e)),
            None => None,
        };
        let result = if acks == Acks::None {
            match answer {
                Some(Err(e)) => Err(e),
                _ => shared
                    .client
                    .send_oneway(&request, timeout)
                    .await
                    .map(|()| -1),
            }
        } else {
            let answer = match answer {
                Some(a) => a,
                None => shared.client.request(&request, timeout).await,
            };
            match answer {
                Ok(Response::Produce(r)) => {
                    crate::error::check(r.status.as_ref()).map(|()| r.base_offset)
                }
                Ok(other) => Err(crate::conn::unexpected("Produce", &other)),
                Err(e) => Err(e),
            }
        };
        match result {
            Ok(base) => return Ok(base),
            Err(e) if e.is_retriable() && attempt < config.retries_max => {
                if matches!(
                    e.server_code(),
                    Some(v1::ErrorCode::UnknownPartition | v1::ErrorCode::UnknownTopic)
                ) {
                    shared.client.invalidate_metadata(topic);
                }
                let backoff = u64::from(config.retry_backoff_ms)
                    .saturating_mul(1 << attempt.min(20))
                    .min(config.retry_backoff_max_ms.into());
                tracing::debug!(attempt, error = %e, backoff_ms = backoff, "retrying produce");
                tokio::time::sleep(Duration::from_millis(backoff)).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A record's headers as the batch builder takes them.
fn header_refs(r: &ProducerRecord) -> Vec<(&str, &[u8])> {
    r.headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_ref()))
        .collect()
}

/// `r` as a record of a batch, stamped now unless it has a time.
fn batch_record<'a>(r: &'a ProducerRecord, headers: &'a [(&'a str, &'a [u8])]) -> Record<'a> {
    Record {
        timestamp_ms: r.timestamp_ms.unwrap_or_else(now_ms),
        key: r.key.as_deref(),
        value: r.value.as_deref(),
        headers,
    }
}
