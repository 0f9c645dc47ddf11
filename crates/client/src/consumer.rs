//! [`Consumer`]: manual assignment, seeks, long-poll fetches and a push mode.
//!
//! A poll sends one fetch for every assigned partition at its fetch position, asking
//! the server to hold the request until data arrives or the wait ends (long-poll), so
//! an idle consumer costs one request per wait, not a busy loop. Returned batches are
//! read record by record; records below the position (the batch started before it) are
//! skipped. Fetched batches are kept as the raw bytes the server sent and decoded only
//! as records are handed out, `max_poll_records` at a time. While they are handed out
//! the next fetch is already on its way (prefetch): the server reads, and the network
//! carries, the next data while the application processes this one, so memory stays
//! within two fetches (`fetch_bytes_max` each). Changing the assignment or seeking drops
//! the prefetch.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use weir_proto::{Request, Response, v1};
use weir_record::{BatchIter, LOG_OVERHEAD_BYTES, records, records_without_crc};

use crate::client::Client;
use crate::config::{AutoOffsetReset, ConsumerConfig};
use crate::conn::{Exchange, unexpected};
use crate::error::{ClientError, Result, check};
use crate::record::{ConsumerRecord, Topic};

/// Where [`Consumer::seek`] moves a partition's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeekTo {
    /// The oldest retained record.
    Beginning,
    /// The end of the log: only records produced after the seek are read.
    End,
    /// An absolute offset (out-of-range offsets are handled per `auto_offset_reset`).
    Offset(i64),
    /// The first record whose timestamp is at least this (ms since the epoch), or the end
    /// of the log if there is none.
    Timestamp(i64),
}

/// Longest pause between retries of a push consumer after a retriable error.
const RUN_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// First pause of a push consumer after a retriable error.
const RUN_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Stands in for poll timeouts too large to add to the clock (a year).
const POLL_TIMEOUT_MAX: Duration = Duration::from_secs(365 * 24 * 3600);
/// Long-poll wait of a push consumer; it returns as soon as data arrives.
const RUN_POLL_WAIT: Duration = Duration::from_secs(5);
/// Long-poll wait of a prefetch (it returns as soon as data arrives; an empty answer
/// just means the next poll fetches again).
const PREFETCH_WAIT_MS: u32 = 500;

/// A fetch sent ahead, for the positions after the buffered batches.
#[derive(Debug)]
struct Prefetch {
    exchange: Exchange,
    /// When to stop waiting for its answer.
    deadline: Instant,
}

#[derive(Debug, Clone, Copy, Default)]
struct PartState {
    /// Next offset to fetch; `None` until sought or reset per `auto_offset_reset`.
    fetch_offset: Option<i64>,
    /// Next offset to hand out while batches of this partition are buffered.
    position: i64,
}

/// One fetched record batch not yet fully handed out.
#[derive(Debug)]
struct Buffered {
    topic: Topic,
    partition: u32,
    /// Offset of the batch's last record.
    last_offset: i64,
    /// The whole batch, CRC already checked.
    batch: Bytes,
}

/// Reads records from manually assigned partitions. Not shared: methods take `&mut self`.
#[derive(Debug)]
pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    /// Assigned partitions, ordered so fetches list them deterministically.
    parts: BTreeMap<(String, u32), PartState>,
    /// Batches fetched but not yet fully returned, in fetch order.
    buffer: VecDeque<Buffered>,
    /// The next fetch, sent while the buffer is handed out.
    prefetch: Option<Prefetch>,
}

impl Consumer {
    pub(crate) fn new(client: Client, config: ConsumerConfig) -> Result<Consumer> {
        config.validate(client.config().frame_bytes_max)?;
        Ok(Consumer {
            client,
            config,
            parts: BTreeMap::new(),
            buffer: VecDeque::new(),
            prefetch: None,
        })
    }

    /// Adds `partitions` of `topic` to the assignment (positions unset until a seek or
    /// the first poll, which applies `auto_offset_reset`).
    pub async fn assign(&mut self, topic: &str, partitions: &[u32]) -> Result<()> {
        let n = self.partition_count(topic).await?;
        if let Some(p) = partitions.iter().find(|&&p| p >= n) {
            return Err(ClientError::InvalidArgument(format!(
                "partition {p} does not exist: topic {topic:?} has {n} partitions"
            )));
        }
        self.prefetch = None;
        for &p in partitions {
            self.parts.entry((topic.to_owned(), p)).or_default();
        }
        Ok(())
    }

    /// Adds every partition of `topic` to the assignment and returns their numbers.
    pub async fn assign_all(&mut self, topic: &str) -> Result<Vec<u32>> {
        let n = self.partition_count(topic).await?;
        let all: Vec<u32> = (0..n).collect();
        self.assign(topic, &all).await?;
        Ok(all)
    }

    /// Removes `topic` from the assignment, with its buffered records.
    pub fn unassign(&mut self, topic: &str) {
        self.prefetch = None;
        self.parts.retain(|(t, _), _| t != topic);
        self.buffer.retain(|b| b.topic != topic);
    }

    /// Removes one partition from the assignment, with its buffered records.
    pub fn unassign_partition(&mut self, topic: &str, partition: u32) {
        self.prefetch = None;
        self.parts.remove(&(topic.to_owned(), partition));
        self.buffer
            .retain(|b| !(b.partition == partition && b.topic == topic));
    }

    /// The assigned partitions.
    pub fn assignment(&self) -> Vec<(String, u32)> {
        self.parts.keys().cloned().collect()
    }

    async fn partition_count(&self, topic: &str) -> Result<u32> {
        self.client.invalidate_metadata(topic);
        self.client.partition_count(topic).await
    }

    /// The offset `to` names in a partition, asked of the server (not assigned needed).
    pub async fn offset_for(&self, topic: &str, partition: u32, to: SeekTo) -> Result<i64> {
        let (spec, timestamp_ms) = match to {
            SeekTo::Offset(o) => return Ok(o),
            SeekTo::Beginning => (v1::OffsetSpec::Earliest, 0),
            SeekTo::End => (v1::OffsetSpec::Latest, 0),
            SeekTo::Timestamp(ts) => (v1::OffsetSpec::Timestamp, ts),
        };
        let req = Request::ListOffsets(v1::ListOffsetsRequest {
            topic: topic.to_owned(),
            partition,
            spec: spec as i32,
            timestamp_ms,
        });
        match self
            .client
            .request(&req, self.client.request_timeout())
            .await?
        {
            Response::ListOffsets(r) => {
                check(r.status.as_ref())?;
                // For a timestamp with no newer record, `offset` is the log end.
                Ok(r.offset)
            }
            other => Err(unexpected("ListOffsets", &other)),
        }
    }

    /// Moves the position of an assigned partition; its buffered records are dropped.
    pub async fn seek(&mut self, topic: &str, partition: u32, to: SeekTo) -> Result<()> {
        let key = (topic.to_owned(), partition);
        if !self.parts.contains_key(&key) {
            return Err(ClientError::InvalidArgument(format!(
                "{topic}/{partition} is not assigned"
            )));
        }
        if let SeekTo::Offset(o) = to
            && o < 0
        {
            return Err(ClientError::InvalidArgument(format!(
                "offset {o} is negative"
            )));
        }
        let offset = self.offset_for(topic, partition, to).await?;
        self.prefetch = None;
        self.buffer
            .retain(|b| !(b.topic == topic && b.partition == partition));
        if let Some(s) = self.parts.get_mut(&key) {
            s.fetch_offset = Some(offset);
        }
        Ok(())
    }

    /// The offset of the next record [`poll`](Self::poll) will return for a partition;
    /// `None` if it is not assigned or has no position yet.
    pub fn position(&self, topic: &str, partition: u32) -> Option<i64> {
        let state = self.parts.get(&(topic.to_owned(), partition))?;
        let buffered = self
            .buffer
            .iter()
            .any(|b| b.partition == partition && b.topic == topic);
        if buffered {
            Some(state.position)
        } else {
            state.fetch_offset
        }
    }

    /// Waits up to `timeout` for records and returns at most `max_poll_records` of them
    /// (an empty vector when the time is up). One long-poll fetch covers every assigned
    /// partition; it returns as soon as the server has data.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>> {
        if !self.buffer.is_empty() {
            return self.take_buffered();
        }
        if self.parts.is_empty() {
            return Err(ClientError::InvalidArgument(
                "no partitions are assigned".into(),
            ));
        }
        // A timeout too large for the clock means "wait as long as it takes".
        let deadline = Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(|| Instant::now() + POLL_TIMEOUT_MAX);
        loop {
            if let Some(mut pf) = self.prefetch.take() {
                let until = deadline.min(pf.deadline);
                match tokio::time::timeout_at(until.into(), pf.exchange.wait()).await {
                    Ok(answer) => self.take_fetch(answer).await?,
                    Err(_) if Instant::now() >= pf.deadline => {
                        return Err(ClientError::Timeout(self.client.request_timeout()));
                    }
                    Err(_) => {
                        // The poll's time is up before the prefetch's: keep waiting for
                        // it in the next poll.
                        self.prefetch = Some(pf);
                        return Ok(Vec::new());
                    }
                }
            } else {
                self.resolve_positions().await?;
                let wait_max = self.client.server_info().await?.limits.fetch_wait_ms_max;
                let left = deadline.saturating_duration_since(Instant::now());
                let wait_ms = u32::try_from(left.as_millis())
                    .unwrap_or(u32::MAX)
                    .min(wait_max);
                self.fetch_once(wait_ms).await?;
            }
            if !self.buffer.is_empty() {
                self.start_prefetch().await;
                let records = self.take_buffered()?;
                if !records.is_empty() {
                    return Ok(records);
                }
            }
            if Instant::now() >= deadline {
                return Ok(Vec::new());
            }
        }
    }

    /// Push mode: polls and calls `handler` with each non-empty batch of records,
    /// fetching again only after the handler's future finishes (so a slow handler slows
    /// the fetching, never piles up records). Returns `Ok(())` once `cancel` is
    /// cancelled, or the first handler error as [`ClientError::Handler`]. Retriable
    /// errors are retried with backoff; others end the run.
    pub async fn run<F, Fut, E>(&mut self, cancel: CancellationToken, mut handler: F) -> Result<()>
    where
        F: FnMut(Vec<ConsumerRecord>) -> Fut,
        Fut: Future<Output = std::result::Result<(), E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut backoff = RUN_BACKOFF_MIN;
        loop {
            let polled = tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(()),
                r = self.poll(RUN_POLL_WAIT) => r,
            };
            let records = match polled {
                Ok(r) => {
                    backoff = RUN_BACKOFF_MIN;
                    r
                }
                Err(e) if e.is_retriable() => {
                    tracing::debug!(error = %e, ?backoff, "push consumer retrying");
                    tokio::select! {
                        () = cancel.cancelled() => return Ok(()),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(RUN_BACKOFF_MAX);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if records.is_empty() {
                continue;
            }
            if let Err(e) = handler(records).await {
                let e: Box<dyn std::error::Error + Send + Sync> = e.into();
                return Err(ClientError::Handler(Arc::from(e)));
            }
        }
    }

    /// Decodes up to `max_poll_records` records from the buffered batches and moves the
    /// positions past them. A batch that fails to decode is dropped with an error.
    fn take_buffered(&mut self) -> Result<Vec<ConsumerRecord>> {
        let max = self.config.max_poll_records as usize;
        let mut out = Vec::new();
        while out.len() < max {
            let Some(front) = self.buffer.front() else {
                break;
            };
            let key = (front.topic.to_string(), front.partition);
            let Some(state) = self.parts.get_mut(&key) else {
                self.buffer.pop_front();
                continue;
            };
            let decoded = decode_batch(front, state.position, max - out.len(), &mut out);
            match decoded {
                Ok(Some(next)) => state.position = next,
                Ok(None) => {
                    state.position = state.position.max(front.last_offset + 1);
                    self.buffer.pop_front();
                }
                Err(e) => {
                    // Skip the bad batch so the consumer is not stuck on it.
                    state.position = state.position.max(front.last_offset + 1);
                    self.buffer.pop_front();
                    if out.is_empty() {
                        return Err(e);
                    }
                    tracing::warn!(error = %e, "skipped an undecodable batch");
                }
            }
        }
        Ok(out)
    }

    /// Gives every partition without a position one, per `auto_offset_reset`.
    async fn resolve_positions(&mut self) -> Result<()> {
        let unset: Vec<(String, u32)> = self
            .parts
            .iter()
            .filter(|(_, s)| s.fetch_offset.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        for (topic, partition) in unset {
            let to = match self.config.auto_offset_reset {
                AutoOffsetReset::Earliest => SeekTo::Beginning,
                AutoOffsetReset::Latest => SeekTo::End,
                AutoOffsetReset::Error => {
                    return Err(ClientError::InvalidArgument(format!(
                        "{topic}/{partition} has no position; seek first \
                         (auto_offset_reset is Error)"
                    )));
                }
            };
            let offset = self.offset_for(&topic, partition, to).await?;
            if let Some(s) = self.parts.get_mut(&(topic, partition)) {
                s.fetch_offset = Some(offset);
            }
        }
        Ok(())
    }

    /// Sends the fetch for the positions after the buffered batches, unless one is out
    /// already. A failure to send is not an error: the next poll fetches as usual.
    async fn start_prefetch(&mut self) {
        if self.prefetch.is_some() || self.parts.values().any(|s| s.fetch_offset.is_none()) {
            return;
        }
        let wait_max = match self.client.server_info().await {
            Ok(info) => info.limits.fetch_wait_ms_max,
            Err(_) => return,
        };
        let wait_ms = PREFETCH_WAIT_MS.min(wait_max);
        let req = self.fetch_request(wait_ms);
        let timeout = self.client.request_timeout() + Duration::from_millis(wait_ms.into());
        let started = async { self.client.conn().await?.start(&req).await };
        if let Ok(Ok(exchange)) = tokio::time::timeout(timeout, started).await {
            self.prefetch = Some(Prefetch {
                exchange,
                deadline: Instant::now() + timeout,
            });
        }
    }

    fn fetch_request(&self, wait_ms: u32) -> Request {
        let partitions: Vec<v1::FetchPartition> = self
            .parts
            .iter()
            .filter_map(|((topic, partition), s)| {
                Some(v1::FetchPartition {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: s.fetch_offset?,
                    max_bytes: self.config.partition_fetch_bytes_max,
                })
            })
            .collect();
        Request::Fetch(v1::FetchRequest {
            max_wait_ms: wait_ms,
            min_bytes: self.config.fetch_min_bytes,
            max_bytes: self.config.fetch_bytes_max,
            partitions,
        })
    }

    /// One fetch of every assigned partition; appends what it returns to the buffer.
    async fn fetch_once(&mut self, wait_ms: u32) -> Result<()> {
        let req = self.fetch_request(wait_ms);
        let timeout = self.client.request_timeout() + Duration::from_millis(wait_ms.into());
        let answer = self.client.request(&req, timeout).await;
        self.take_fetch(answer).await
    }

    /// Appends what a fetch returned to the buffer and moves the fetch positions.
    async fn take_fetch(&mut self, answer: Result<Response>) -> Result<()> {
        let resp = match answer? {
            Response::Fetch(r) => r,
            other => return Err(unexpected("Fetch", &other)),
        };
        check(resp.status.as_ref())?;
        let mut first_error = None;
        for pr in resp.partitions {
            let key = (pr.topic, pr.partition);
            let Some(state) = self.parts.get(&key) else {
                continue;
            };
            let Some(offset) = state.fetch_offset else {
                continue;
            };
            let status = pr.status.unwrap_or_default();
            if status.error_code() == v1::ErrorCode::OffsetOutOfRange {
                let to = match self.config.auto_offset_reset {
                    AutoOffsetReset::Earliest => SeekTo::Beginning,
                    AutoOffsetReset::Latest => SeekTo::End,
                    AutoOffsetReset::Error => {
                        first_error.get_or_insert(ClientError::server(&status));
                        continue;
                    }
                };
                tracing::debug!(topic = %key.0, partition = key.1, offset, ?to, "offset out of range, resetting");
                let reset = self.offset_for(&key.0, key.1, to).await?;
                if let Some(s) = self.parts.get_mut(&key) {
                    s.fetch_offset = Some(reset);
                }
                continue;
            }
            if !status.is_ok() {
                if status.error_code() == v1::ErrorCode::UnknownTopic
                    || status.error_code() == v1::ErrorCode::UnknownPartition
                {
                    self.client.invalidate_metadata(&key.0);
                }
                first_error.get_or_insert(ClientError::server(&status));
                continue;
            }
            let topic = Topic::from(key.0.as_str());
            let next = split_batches(&topic, key.1, offset, &pr.records, &mut self.buffer)?;
            if let Some(s) = self.parts.get_mut(&key) {
                s.fetch_offset = Some(next);
                s.position = offset;
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Queues the whole batches in `data` that hold records at or after `offset` (checking
/// their CRC); returns the next offset to fetch.
fn split_batches(
    topic: &Topic,
    partition: u32,
    offset: i64,
    data: &Bytes,
    out: &mut VecDeque<Buffered>,
) -> Result<i64> {
    let bad = |e: weir_record::RecordError| {
        ClientError::Protocol(format!("{topic}/{partition}: bad record batch: {e}"))
    };
    let mut next = offset;
    let mut batches = BatchIter::new(data);
    for item in &mut batches {
        let (header, batch) = item.map_err(bad)?;
        let last = header.last_offset();
        if last < next {
            continue;
        }
        if !header.is_control() {
            // Validates the CRC and refuses compressed batches now, not when handed out.
            records(batch).map_err(bad)?;
            out.push_back(Buffered {
                topic: topic.clone(),
                partition,
                last_offset: last,
                batch: data.slice_ref(batch),
            });
        }
        next = last + 1;
    }
    if batches.consumed() == 0 && data.len() >= LOG_OVERHEAD_BYTES {
        // Only part of the first batch came back: it is larger than the fetch size, and
        // fetching the same offset again would return the same part.
        let len = i32::from_be_bytes([data[8], data[9], data[10], data[11]]);
        return Err(ClientError::InvalidArgument(format!(
            "{topic}/{partition}: the batch at offset {offset} ({} bytes) is larger than \
             partition_fetch_bytes_max or fetch_bytes_max",
            i64::from(len) + LOG_OVERHEAD_BYTES as i64
        )));
    }
    Ok(next)
}

/// Appends up to `limit` records at or after `from` of one buffered batch to `out`.
/// Returns the offset to resume at if the limit stopped it, `None` if the batch is done.
fn decode_batch(
    b: &Buffered,
    from: i64,
    limit: usize,
    out: &mut Vec<ConsumerRecord>,
) -> Result<Option<i64>> {
    let bad = |e: weir_record::RecordError| {
        ClientError::Protocol(format!(
            "{}/{}: bad record batch: {e}",
            b.topic, b.partition
        ))
    };
    let mut taken = 0;
    // The CRC was checked when the batch was fetched (split_batches).
    for r in records_without_crc(&b.batch).map_err(bad)? {
        let r = r.map_err(bad)?;
        if r.offset < from {
            continue;
        }
        if taken == limit {
            return Ok(Some(r.offset));
        }
        let slice = |s: &[u8]| b.batch.slice_ref(s);
        out.push(ConsumerRecord {
            topic: b.topic.clone(),
            partition: b.partition,
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            key: r.key.map(slice),
            value: r.value.map(slice),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.map(slice)))
                .collect(),
        });
        taken += 1;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_record::{BatchBuilder, Record, set_base_offset};

    fn batch(base: i64, values: &[&str]) -> bytes::BytesMut {
        let mut b = BatchBuilder::new(1_000);
        for v in values {
            b.push(Record {
                timestamp_ms: 1_000,
                key: None,
                value: Some(v.as_bytes()),
                headers: &[("h", b"x")],
            });
        }
        let mut out = b.finish();
        set_base_offset(&mut out, base);
        out
    }

    fn take_all(buffer: &VecDeque<Buffered>, from: i64, limit: usize) -> Vec<ConsumerRecord> {
        let mut out = Vec::new();
        for b in buffer {
            if decode_batch(b, from, limit - out.len(), &mut out)
                .unwrap()
                .is_some()
            {
                break;
            }
        }
        out
    }

    #[test]
    fn records_below_the_position_are_skipped_and_partial_batches_wait() {
        let mut data = batch(10, &["a", "b", "c"]);
        data.extend_from_slice(&batch(13, &["d"]));
        data.extend_from_slice(&batch(14, &["e"])[..30]); // partial trailing batch
        let data = data.freeze();
        let mut buf = VecDeque::new();
        let next = split_batches(&Topic::from("t"), 0, 11, &data, &mut buf).unwrap();
        assert_eq!(next, 14);
        assert_eq!(buf.len(), 2);
        let got: Vec<_> = take_all(&buf, 11, 100)
            .into_iter()
            .map(|r| (r.offset, r.value))
            .collect();
        assert_eq!(
            got,
            vec![
                (11, Some(Bytes::from_static(b"b"))),
                (12, Some(Bytes::from_static(b"c"))),
                (13, Some(Bytes::from_static(b"d"))),
            ]
        );
        let first = take_all(&buf, 11, 1);
        assert_eq!(first.len(), 1);
        assert_eq!(
            first[0].headers,
            vec![("h".to_owned(), Some(Bytes::from_static(b"x")))]
        );
        let mut out = Vec::new();
        assert_eq!(decode_batch(&buf[0], 11, 1, &mut out).unwrap(), Some(12));
        assert_eq!(decode_batch(&buf[0], 12, 5, &mut out).unwrap(), None);
    }

    #[test]
    fn a_batch_larger_than_the_fetch_is_an_error_not_a_stall() {
        let data = batch(0, &["0123456789"]).freeze();
        let mut out = VecDeque::new();
        let err = split_batches(&Topic::from("t"), 0, 0, &data.slice(..40), &mut out).unwrap_err();
        assert!(matches!(err, ClientError::InvalidArgument(_)), "{err}");
        assert_eq!(
            split_batches(&Topic::from("t"), 0, 5, &Bytes::new(), &mut out).unwrap(),
            5
        );
    }

    #[test]
    fn corrupt_batches_are_protocol_errors() {
        let mut data = batch(0, &["x"]);
        let n = data.len();
        data[n - 1] ^= 0xff;
        let mut out = VecDeque::new();
        let err = split_batches(&Topic::from("t"), 0, 0, &data.freeze(), &mut out).unwrap_err();
        assert!(matches!(err, ClientError::Protocol(_)), "{err}");
    }
}
