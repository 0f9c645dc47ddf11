//! `--protocol kafka`: producers and consumers that speak the Kafka wire protocol to
//! Weir's Kafka listener, so the bench measures that path as Kafka clients use it.
//!
//! Requests and responses are the `kafka-protocol` crate's types (Produce v7, Fetch v4).
//! Uncompressed batches are built by `weir-record`, as the native SDK builds them, so the
//! two protocols are compared on equal terms; compressed ones by `kafka-protocol`'s
//! encoder. Weir is one node, so there is no metadata discovery: each producer and
//! consumer is one connection to the listener. Like Kafka clients, a producer keeps up to
//! `--inflight` requests outstanding on its connection, and responses come in request order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    FetchRequest, FetchResponse, ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::records::{
    Compression, NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE, Record,
    RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use weir_client::{ConsumerRecord, Topic};
use weir_record::{BatchBuilder, BatchIter};

use super::Acked;

/// Produce request version: record batch v2, not yet the flexible encoding.
const PRODUCE_VERSION: i16 = 7;
/// Fetch request version: no fetch sessions.
const FETCH_VERSION: i16 = 4;
/// Largest response frame a bench client accepts (a fetch is at most 60 MiB plus framing).
const RESPONSE_BYTES_MAX: usize = 128 * 1024 * 1024;
/// Bytes a record adds to a batch besides its value (length, attributes, deltas, key and
/// header counts), for deciding when a batch is full.
const RECORD_OVERHEAD_BYTES: usize = 16;

/// A fetch answer with fewer record bytes than this is handed out before the next fetch
/// is sent: a consumer at the tail gains nothing from sending early, and the write would
/// sit between each record and the application (the next poll sends it). A larger answer,
/// a backlog being read, sends the next fetch first so the broker reads while this one is
/// decoded.
const PREFETCH_FIRST_BYTES_MIN: usize = 64 * 1024;

/// Encodes one request frame: size prefix, header, body.
fn encode_request<R: Request>(req: &R, version: i16, correlation_id: i32) -> Result<BytesMut> {
    let mut header = RequestHeader::default();
    header.request_api_key = R::KEY;
    header.request_api_version = version;
    header.correlation_id = correlation_id;
    header.client_id = Some(StrBytes::from_static_str("weir-bench"));
    let mut frame = BytesMut::new();
    frame.put_i32(0);
    header
        .encode(&mut frame, R::header_version(version))
        .map_err(|e| anyhow!("cannot encode a request header: {e}"))?;
    req.encode(&mut frame, version)
        .map_err(|e| anyhow!("cannot encode a request: {e}"))?;
    let size = i32::try_from(frame.len() - 4).context("request too large")?;
    frame[..4].copy_from_slice(&size.to_be_bytes());
    Ok(frame)
}

/// Reads one response frame (without its size prefix).
async fn read_frame(rd: &mut OwnedReadHalf) -> Result<Bytes> {
    let size = rd.read_i32().await.context("the Kafka listener closed")?;
    let size = usize::try_from(size).map_err(|_| anyhow!("negative response size {size}"))?;
    if size > RESPONSE_BYTES_MAX {
        bail!("response of {size} bytes is above {RESPONSE_BYTES_MAX}");
    }
    // Read into spare capacity: no zero-fill of a buffer the socket overwrites.
    let mut body = BytesMut::with_capacity(size);
    while body.len() < size {
        let want = (size - body.len()) as u64;
        let got = (&mut *rd)
            .take(want)
            .read_buf(&mut body)
            .await
            .context("the Kafka listener closed")?;
        if got == 0 {
            bail!("the Kafka listener closed");
        }
    }
    Ok(body.freeze())
}

/// Decodes a response to the request `correlation_id`.
fn decode_response<R: Decodable + HeaderVersion>(
    mut frame: Bytes,
    version: i16,
    correlation_id: i32,
) -> Result<R> {
    let header = ResponseHeader::decode(&mut frame, R::header_version(version))
        .map_err(|e| anyhow!("bad response header: {e}"))?;
    if header.correlation_id != correlation_id {
        bail!(
            "response to request {} where {correlation_id} was due",
            header.correlation_id
        );
    }
    R::decode(&mut frame, version).map_err(|e| anyhow!("bad response: {e}"))
}

/// The `--compression` codec as Kafka's attribute.
pub fn compression(name: &str) -> Compression {
    match name {
        "gzip" => Compression::Gzip,
        "snappy" => Compression::Snappy,
        "lz4" => Compression::Lz4,
        "zstd" => Compression::Zstd,
        _ => Compression::None,
    }
}

/// What a producer needs to know.
#[derive(Debug, Clone)]
pub struct ProducerSettings {
    pub topic: String,
    pub partitions: u32,
    /// Kafka's acks: -1 all, 1 leader, 0 none.
    pub acks: i16,
    pub timeout_ms: i32,
    pub batch_bytes: usize,
    pub linger: Duration,
    pub compression: Compression,
    /// Produce requests outstanding on the connection.
    pub inflight: u32,
    /// Under a rate limit: the producer waits ([`KafkaProducer::idle_until`]) between
    /// the messages it sends together, and a lingered batch goes out then.
    pub paced: bool,
}

/// A batch being filled.
#[derive(Debug)]
enum Open {
    Plain(BatchBuilder),
    Compressed(Vec<Record>),
}

#[derive(Debug)]
struct OpenBatch {
    partition: u32,
    records: Open,
    bytes: usize,
    /// Send time of each record, for its acknowledgement latency.
    sent: Vec<Instant>,
    /// When it goes out even if not full.
    deadline: Instant,
}

/// A request whose response is due.
#[derive(Debug)]
struct Pending {
    correlation_id: i32,
    sent: Vec<Instant>,
    _permit: OwnedSemaphorePermit,
}

/// A Kafka-protocol producer: sticky partitioning (one batch per partition in turn),
/// batches sent when full or when their linger has passed, responses matched in order by
/// a reader task that reports each record to [`Acked`].
#[derive(Debug)]
pub struct KafkaProducer {
    s: ProducerSettings,
    topic: TopicName,
    wr: OwnedWriteHalf,
    open: Option<OpenBatch>,
    next_partition: u32,
    next_id: i32,
    inflight: Arc<Semaphore>,
    pending: Option<mpsc::UnboundedSender<Pending>>,
    reader: tokio::task::JoinHandle<()>,
    acked: Arc<Acked>,
}

impl KafkaProducer {
    /// Connects to the Kafka listener at `addr`.
    pub async fn connect(addr: &str, s: ProducerSettings, acked: Arc<Acked>) -> Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to the Kafka listener at {addr}"))?;
        stream.set_nodelay(true)?;
        let (rd, wr) = stream.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_acks(rd, rx, acked.clone()));
        Ok(Self {
            topic: TopicName(StrBytes::from_string(s.topic.clone())),
            inflight: Arc::new(Semaphore::new(s.inflight.max(1) as usize)),
            s,
            wr,
            open: None,
            next_partition: 0,
            next_id: 1,
            pending: Some(tx),
            reader,
            acked,
        })
    }

    /// Adds one record, sending its batch when it is full or its linger has passed.
    pub async fn send(&mut self, value: Bytes, timestamp_ms: i64, sent: Instant) -> Result<()> {
        if self.open.is_none() {
            let partition = self.next_partition;
            self.next_partition = (partition + 1) % self.s.partitions.max(1);
            let records = match self.s.compression {
                Compression::None => Open::Plain(BatchBuilder::with_capacity(
                    timestamp_ms,
                    self.s.batch_bytes,
                )),
                _ => Open::Compressed(Vec::new()),
            };
            self.open = Some(OpenBatch {
                partition,
                records,
                bytes: 0,
                sent: Vec::new(),
                deadline: sent + self.s.linger,
            });
        }
        let Some(b) = self.open.as_mut() else {
            unreachable!("a batch was just opened")
        };
        let len = value.len();
        match &mut b.records {
            Open::Plain(builder) => builder.push(weir_record::Record {
                timestamp_ms,
                key: None,
                value: Some(&value),
                headers: &[],
            }),
            // kafka-protocol puts records in one batch only while `offset - sequence` stays
            // the same; starting at -1 also gives the batch Kafka's "no sequence" (-1).
            Open::Compressed(records) => records.push(Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
                producer_id: NO_PRODUCER_ID,
                producer_epoch: NO_PRODUCER_EPOCH,
                timestamp_type: TimestampType::Creation,
                offset: records.len() as i64,
                sequence: NO_SEQUENCE + records.len() as i32,
                timestamp: timestamp_ms,
                key: None,
                value: Some(value),
                headers: IndexMap::new(),
            }),
        }
        b.bytes += len + RECORD_OVERHEAD_BYTES;
        b.sent.push(sent);
        let full = b.bytes + len + RECORD_OVERHEAD_BYTES > self.s.batch_bytes;
        if full {
            let permit = self.inflight.clone().acquire_owned().await?;
            self.flush(permit).await?;
        } else if !self.s.paced
            && sent >= b.deadline
            && let Ok(permit) = self.inflight.clone().try_acquire_owned()
        {
            // Lingered long enough and the connection has room: like Kafka's sender, a
            // batch waits for a free slot only by growing.
            self.flush(permit).await?;
        }
        // A paced producer sends when it next waits instead: the messages that fell due
        // together go in one batch, as a Kafka client's sender thread, woken by the first
        // of them, finds the rest appended by the time it runs.
        Ok(())
    }

    /// Waits until `due`, sending the open batch when its linger passes meanwhile.
    pub async fn idle_until(&mut self, due: Instant) -> Result<()> {
        loop {
            let Some(deadline) = self.open.as_ref().map(|b| b.deadline) else {
                tokio::time::sleep_until(due.into()).await;
                return Ok(());
            };
            if deadline >= due {
                tokio::time::sleep_until(due.into()).await;
                return Ok(());
            }
            // tokio's timer rounds a deadline up to its next millisecond tick, even one
            // already past: sleeping only when the deadline is ahead keeps that millisecond
            // out of every lingering record's latency.
            if deadline > Instant::now() {
                tokio::time::sleep_until(deadline.into()).await;
            }
            // Waiting for a free request slot never holds back the next message: it is
            // stamped when it falls due and joins the open batch, which grows meanwhile.
            tokio::select! {
                permit = self.inflight.clone().acquire_owned() => self.flush(permit?).await?,
                () = tokio::time::sleep_until(due.into()) => return Ok(()),
            }
        }
    }

    /// Sends what is open and waits for every response.
    pub async fn close(mut self) -> Result<()> {
        if self.open.is_some() {
            let permit = self.inflight.clone().acquire_owned().await?;
            self.flush(permit).await?;
        }
        drop(self.pending.take());
        let _ = (&mut self.reader).await;
        let _ = self.wr.shutdown().await;
        Ok(())
    }

    async fn flush(&mut self, permit: OwnedSemaphorePermit) -> Result<()> {
        let Some(b) = self.open.take() else {
            return Ok(());
        };
        let records = match b.records {
            Open::Plain(builder) => builder.finish().freeze(),
            Open::Compressed(records) => {
                let mut buf = BytesMut::new();
                let options = RecordEncodeOptions {
                    version: 2,
                    compression: self.s.compression,
                };
                RecordBatchEncoder::encode(&mut buf, &records, &options)
                    .map_err(|e| anyhow!("cannot build a compressed batch: {e}"))?;
                buf.freeze()
            }
        };
        let mut data = PartitionProduceData::default();
        data.index = i32::try_from(b.partition).context("partition")?;
        data.records = Some(records);
        let mut topic = TopicProduceData::default();
        topic.name = self.topic.clone();
        topic.partition_data = vec![data];
        let mut req = ProduceRequest::default();
        req.acks = self.s.acks;
        req.timeout_ms = self.s.timeout_ms;
        req.topic_data = vec![topic];
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let frame = encode_request(&req, PRODUCE_VERSION, id)?;
        if self.s.acks == 0 {
            // No response will come: the record counts as sent once it is written.
            self.wr.write_all(&frame).await?;
            self.acked.ok_all(Instant::now(), b.sent.into_iter());
            drop(permit);
            return Ok(());
        }
        // Registered before the write, so the reader expects the response in order.
        let pending = Pending {
            correlation_id: id,
            sent: b.sent,
            _permit: permit,
        };
        if let Some(tx) = &self.pending {
            let _ = tx.send(pending);
        }
        self.wr
            .write_all(&frame)
            .await
            .context("the Kafka listener closed")?;
        Ok(())
    }
}

/// Matches produce responses to the requests in order and reports each record.
async fn read_acks(
    mut rd: OwnedReadHalf,
    mut pending: mpsc::UnboundedReceiver<Pending>,
    acked: Arc<Acked>,
) {
    let mut broken: Option<String> = None;
    while let Some(p) = pending.recv().await {
        if let Some(e) = &broken {
            fail_all(&acked, &p.sent, e);
            continue;
        }
        let response = match read_frame(&mut rd).await {
            Ok(frame) => {
                decode_response::<ProduceResponse>(frame, PRODUCE_VERSION, p.correlation_id)
            }
            Err(e) => Err(e),
        };
        match response {
            Ok(r) => {
                let error = r
                    .responses
                    .iter()
                    .flat_map(|t| t.partition_responses.iter())
                    .find(|p| p.error_code != 0)
                    .map(|p| p.error_code);
                match error {
                    // One clock read and one histogram lock per response, as for the SDK.
                    None => acked.ok_all(Instant::now(), p.sent.iter().copied()),
                    Some(code) => fail_all(&acked, &p.sent, &format!("Kafka error code {code}")),
                }
            }
            Err(e) => {
                let e = format!("{e:#}");
                fail_all(&acked, &p.sent, &e);
                broken = Some(e);
            }
        }
    }
}

fn fail_all(acked: &Acked, sent: &[Instant], error: &str) {
    for _ in sent {
        acked.failed(error);
    }
}

/// A Kafka-protocol consumer of some partitions of one topic, from given offsets. After
/// a large answer the next fetch is sent before its records are decoded; after a small
/// one, by the next poll (`PREFETCH_FIRST_BYTES_MIN`).
#[derive(Debug)]
pub struct KafkaConsumer {
    topic: Topic,
    topic_name: TopicName,
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    positions: BTreeMap<u32, i64>,
    fetch_bytes: i32,
    partition_fetch_bytes: i32,
    /// The fetch in flight, by correlation id.
    inflight: Option<i32>,
    next_id: i32,
}

impl KafkaConsumer {
    /// Connects to the Kafka listener at `addr`, to read `starts` (partition → offset).
    pub async fn connect(
        addr: &str,
        topic: &str,
        starts: &BTreeMap<u32, i64>,
        fetch_bytes: u32,
        partition_fetch_bytes: u32,
    ) -> Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to the Kafka listener at {addr}"))?;
        stream.set_nodelay(true)?;
        let (rd, wr) = stream.into_split();
        Ok(Self {
            topic: Topic::from(topic),
            topic_name: TopicName(StrBytes::from_string(topic.to_owned())),
            rd,
            wr,
            positions: starts.clone(),
            fetch_bytes: i32::try_from(fetch_bytes).unwrap_or(i32::MAX),
            partition_fetch_bytes: i32::try_from(partition_fetch_bytes).unwrap_or(i32::MAX),
            inflight: None,
            next_id: 1,
        })
    }

    async fn send_fetch(&mut self, wait: Duration) -> Result<()> {
        let mut topic = FetchTopic::default();
        topic.topic = self.topic_name.clone();
        for (p, offset) in &self.positions {
            let mut part = FetchPartition::default();
            part.partition = i32::try_from(*p).context("partition")?;
            part.fetch_offset = *offset;
            part.partition_max_bytes = self.partition_fetch_bytes;
            topic.partitions.push(part);
        }
        let mut req = FetchRequest::default();
        req.replica_id = (-1).into();
        req.max_wait_ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
        req.min_bytes = 1;
        req.max_bytes = self.fetch_bytes;
        req.topics = vec![topic];
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let frame = encode_request(&req, FETCH_VERSION, id)?;
        self.wr
            .write_all(&frame)
            .await
            .context("the Kafka listener closed")?;
        self.inflight = Some(id);
        Ok(())
    }

    /// The next records, waiting up to about `wait` for some.
    pub async fn poll(&mut self, wait: Duration) -> Result<Vec<ConsumerRecord>> {
        if self.positions.is_empty() {
            tokio::time::sleep(wait).await;
            return Ok(Vec::new());
        }
        let id = match self.inflight {
            Some(id) => id,
            None => {
                self.send_fetch(wait).await?;
                self.next_id.wrapping_sub(1)
            }
        };
        let frame = read_frame(&mut self.rd).await?;
        self.inflight = None;
        let response: FetchResponse = decode_response(frame, FETCH_VERSION, id)?;
        // Positions move past every whole batch before anything is decoded, so the next
        // fetch can be on its way while this one is handed out.
        let mut got = Vec::new();
        let mut fetched_bytes = 0usize;
        for t in response.responses {
            for p in t.partitions {
                if p.error_code != 0 {
                    bail!(
                        "fetch of {}/{} failed with Kafka error code {}",
                        self.topic,
                        p.partition_index,
                        p.error_code
                    );
                }
                let partition = u32::try_from(p.partition_index).context("partition")?;
                let Some(records) = p.records else { continue };
                let from = self.positions.get(&partition).copied().unwrap_or(0);
                let mut next = from;
                for b in BatchIter::new(&records) {
                    let (h, _) = b.map_err(|e| anyhow!("bad batch from the broker: {e}"))?;
                    next = next.max(h.last_offset() + 1);
                }
                self.positions.insert(partition, next);
                fetched_bytes += records.len();
                got.push((partition, from, records));
            }
        }
        if fetched_bytes >= PREFETCH_FIRST_BYTES_MIN {
            self.send_fetch(wait).await?;
        }
        let mut out = Vec::new();
        for (partition, from, records) in got {
            self.decode(partition, from, records, &mut out)?;
        }
        Ok(out)
    }

    /// Appends the records at or after `from` of whole batches in `data`.
    fn decode(
        &self,
        partition: u32,
        from: i64,
        data: Bytes,
        out: &mut Vec<ConsumerRecord>,
    ) -> Result<()> {
        let bad = |e: &dyn std::fmt::Display| anyhow!("bad batch from the broker: {e}");
        let mut rest = data.clone();
        for b in BatchIter::new(&data) {
            let (h, bytes) = b.map_err(|e| bad(&e))?;
            let batch = rest.split_to(bytes.len());
            if h.compression() == weir_record::Compression::None {
                for r in weir_record::records(&batch).map_err(|e| bad(&e))? {
                    let r = r.map_err(|e| bad(&e))?;
                    if r.offset < from {
                        continue;
                    }
                    out.push(ConsumerRecord {
                        topic: self.topic.clone(),
                        partition,
                        offset: r.offset,
                        timestamp_ms: r.timestamp_ms,
                        key: r.key.map(|k| batch.slice_ref(k)),
                        value: r.value.map(|v| batch.slice_ref(v)),
                        headers: Vec::new(),
                    });
                }
            } else {
                let mut buf = batch;
                let set = RecordBatchDecoder::decode(&mut buf).map_err(|e| bad(&e))?;
                for r in set.records.into_iter().filter(|r| r.offset >= from) {
                    out.push(ConsumerRecord {
                        topic: self.topic.clone(),
                        partition,
                        offset: r.offset,
                        timestamp_ms: r.timestamp,
                        key: r.key,
                        value: r.value,
                        headers: Vec::new(),
                    });
                }
            }
        }
        Ok(())
    }
}
