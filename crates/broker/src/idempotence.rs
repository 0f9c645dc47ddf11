//! Idempotent producers: producer ids, and per partition the sequence checks and duplicate
//! suppression that make a producer's retries safe.
//!
//! A batch carries `producerId`, `producerEpoch` and `baseSequence` in its header (covered
//! by the CRC); a producer numbers its records per partition from 0. For each partition the
//! broker remembers, per producer id, its epoch and its last [`PRODUCER_BATCHES_CACHED`]
//! batches (first and last sequence, first and last offset). An append of batches with a
//! producer id (≥ 0) is checked against that, under the partition's producer-state lock,
//! before it is written (Kafka's rules, `ProducerStateManager`):
//!
//! - an epoch older than the producer's current one: [`BrokerError::InvalidProducerEpoch`];
//! - a newer epoch must start again at sequence 0;
//! - the same epoch: a batch equal (same first and last sequence) to one of the cached
//!   batches is a **duplicate**: nothing is written and the original offsets are answered;
//!   otherwise its first sequence must follow the last one, else
//!   [`BrokerError::OutOfOrderSequence`];
//! - a producer id the partition does not know (new, or forgotten) is accepted at any
//!   sequence, as Kafka does for producers whose state expired.
//!
//! Batches without a producer id (the native SDK's, by default) skip all of this.
//!
//! # Surviving a restart: snapshot + log replay
//! The state is **persisted** in a snapshot per partition, `topics/<topic dir>/<n>.producers`
//! (`[crc32c u32 BE][JSON]`, written to `.tmp`, fsynced, renamed), holding the state and
//! the log end offset it reflects. It is written when a partition sees its first
//! idempotent batch (an empty snapshot at the current log end, before that batch is
//! appended), every [`PRODUCER_SNAPSHOT_INTERVAL_MS`] while the partition changes, and at
//! shutdown. Opening a partition loads the snapshot and **replays the log after it**
//! (batch headers only), so the state matches the log exactly however the broker stopped;
//! cached batches above the recovered log end (a torn tail that was never acknowledged) are
//! dropped. A partition without a snapshot never held an idempotent batch and starts
//! empty; a snapshot that fails its checksum is ignored and the whole log is replayed.
//!
//! Lock order: a partition's producer-state lock is taken before its log's own lock (the
//! log is appended while holding it); nothing else is locked inside it.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_record::{BatchHeader, BatchIter};
use weir_storage::{AppendInfo, Log, StorageError};

use crate::partition::Partition;
use crate::{Broker, BrokerError};

/// Batches remembered per producer and partition for duplicate detection (Kafka's 5, the
/// most in-flight requests an idempotent Kafka producer allows).
pub const PRODUCER_BATCHES_CACHED: usize = 5;
/// Producers remembered per partition; beyond it the least recently active is forgotten.
pub const PRODUCERS_PER_PARTITION_MAX: usize = 10_000;
/// A producer that has not appended to a partition for this long is forgotten there
/// (Kafka's `producer.id.expiration.ms` default).
pub const PRODUCER_EXPIRATION_MS: i64 = 24 * 60 * 60 * 1000;
/// How often changed producer state is snapshotted.
pub const PRODUCER_SNAPSHOT_INTERVAL_MS: u64 = 30_000;
/// Largest snapshot file read back.
const SNAPSHOT_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// Bytes read at a time when replaying the log.
const REPLAY_READ_BYTES: u32 = 4 * 1024 * 1024;
/// Producer ids reserved on disk at a time.
const PRODUCER_ID_BLOCK: i64 = 1000;

const _: () = assert!(PRODUCER_BATCHES_CACHED > 0 && PRODUCERS_PER_PARTITION_MAX > 0);

/// One batch remembered for duplicate detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct BatchMeta {
    first_seq: i32,
    last_seq: i32,
    base_offset: i64,
    last_offset: i64,
}

/// What a partition knows about one producer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ProducerEntry {
    id: i64,
    epoch: i16,
    /// Oldest first; at most [`PRODUCER_BATCHES_CACHED`].
    batches: VecDeque<BatchMeta>,
    /// Wall-clock ms of its last append here, for expiry.
    last_append_ms: i64,
}

/// The snapshot file's content.
#[derive(Debug, Serialize, Deserialize)]
struct Snapshot {
    /// The state reflects every batch below this offset.
    end_offset: i64,
    producers: Vec<ProducerEntry>,
}

/// Idempotence state of one partition. Guarded by the partition's producer-state lock.
#[derive(Debug, Default)]
pub(crate) struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
    /// Where the snapshot lives; `None` for partitions opened without a directory.
    path: Option<PathBuf>,
    /// Whether a snapshot file exists (once one does, it is kept up to date).
    has_snapshot: bool,
    /// Log end offset of the last snapshot written or loaded.
    snapshot_end: i64,
    /// Changed since the last snapshot.
    dirty: bool,
}

/// The decision for one append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Append,
    Duplicate(BatchMeta),
}

/// Kafka's sequence arithmetic: sequences wrap from `i32::MAX` to 0.
fn add_seq(seq: i32, delta: i32) -> i32 {
    let s = i64::from(seq) + i64::from(delta);
    if s > i64::from(i32::MAX) {
        (s - i64::from(i32::MAX) - 1) as i32
    } else {
        s as i32
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn is_idempotent(h: &BatchHeader) -> bool {
    h.producer_id >= 0
}

fn last_seq(h: &BatchHeader) -> i32 {
    add_seq(h.base_sequence, h.last_offset_delta)
}

impl ProducerStates {
    fn snapshot_path(log_dir: &Path) -> Option<PathBuf> {
        let name = log_dir.file_name()?.to_str()?;
        Some(log_dir.with_file_name(format!("{name}.producers")))
    }

    /// Checks the batches of one append, in order, as if each earlier one were applied.
    fn check(&self, batches: &[BatchHeader]) -> Result<Check, BrokerError> {
        // (epoch, last sequence) of producers seen earlier in this same append.
        let mut pending: HashMap<i64, (i16, i32)> = HashMap::new();
        let idempotent = batches.iter().filter(|h| is_idempotent(h)).count();
        for h in batches.iter().filter(|h| is_idempotent(h)) {
            let id = h.producer_id;
            if h.base_sequence < 0 || h.producer_epoch < 0 {
                return Err(BrokerError::CorruptBatch(format!(
                    "batch of producer {id} has no sequence number or epoch"
                )));
            }
            let known = pending.get(&id).copied().or_else(|| {
                self.producers
                    .get(&id)
                    .and_then(|e| e.batches.back().map(|b| (e.epoch, b.last_seq)))
            });
            let Some((epoch, last)) = known else {
                pending.insert(id, (h.producer_epoch, last_seq(h)));
                continue;
            };
            if h.producer_epoch < epoch {
                return Err(BrokerError::InvalidProducerEpoch {
                    producer_id: id,
                    epoch: h.producer_epoch,
                    current: epoch,
                });
            }
            if h.producer_epoch == epoch && !pending.contains_key(&id) {
                let cached = self.producers.get(&id).and_then(|e| {
                    e.batches
                        .iter()
                        .find(|b| b.first_seq == h.base_sequence && b.last_seq == last_seq(h))
                });
                if let Some(b) = cached {
                    if idempotent == 1 && batches.len() == 1 {
                        return Ok(Check::Duplicate(*b));
                    }
                    return Err(BrokerError::OutOfOrderSequence {
                        producer_id: id,
                        expected: add_seq(last, 1),
                        got: h.base_sequence,
                    });
                }
            }
            let expected = if h.producer_epoch > epoch {
                0
            } else {
                add_seq(last, 1)
            };
            if h.base_sequence != expected {
                return Err(BrokerError::OutOfOrderSequence {
                    producer_id: id,
                    expected,
                    got: h.base_sequence,
                });
            }
            pending.insert(id, (h.producer_epoch, last_seq(h)));
        }
        Ok(Check::Append)
    }

    /// Remembers appended batches; `bytes` are the batches with their offsets patched.
    fn record_header(&mut self, h: &BatchHeader, now_ms: i64) {
        if !is_idempotent(h) || h.base_sequence < 0 {
            return;
        }
        let entry = self
            .producers
            .entry(h.producer_id)
            .or_insert_with(|| ProducerEntry {
                id: h.producer_id,
                epoch: h.producer_epoch,
                batches: VecDeque::with_capacity(PRODUCER_BATCHES_CACHED),
                last_append_ms: now_ms,
            });
        if h.producer_epoch != entry.epoch {
            entry.epoch = h.producer_epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == PRODUCER_BATCHES_CACHED {
            entry.batches.pop_front();
        }
        entry.batches.push_back(BatchMeta {
            first_seq: h.base_sequence,
            last_seq: last_seq(h),
            base_offset: h.base_offset,
            last_offset: h.last_offset(),
        });
        entry.last_append_ms = entry.last_append_ms.max(now_ms);
        self.dirty = true;
        if self.producers.len() > PRODUCERS_PER_PARTITION_MAX {
            self.evict_oldest();
        }
    }

    /// Forgets the least recently active tenth of the producers.
    fn evict_oldest(&mut self) {
        let mut ages: Vec<(i64, i64)> = self
            .producers
            .values()
            .map(|e| (e.last_append_ms, e.id))
            .collect();
        ages.sort_unstable();
        let drop = (self.producers.len() / 10).max(1);
        for (_, id) in ages.into_iter().take(drop) {
            self.producers.remove(&id);
        }
    }

    fn expire(&mut self, now_ms: i64) {
        let before = self.producers.len();
        self.producers
            .retain(|_, e| now_ms.saturating_sub(e.last_append_ms) < PRODUCER_EXPIRATION_MS);
        if self.producers.len() != before {
            self.dirty = true;
        }
    }

    fn encode_snapshot(&self, end_offset: i64) -> Vec<u8> {
        let mut producers: Vec<_> = self.producers.values().cloned().collect();
        producers.sort_by_key(|e| e.id);
        let snapshot = Snapshot {
            end_offset,
            producers,
        };
        // Serializing plain data to memory cannot fail.
        let json = serde_json::to_vec(&snapshot).unwrap_or_default();
        let mut out = Vec::with_capacity(json.len() + 4);
        out.extend_from_slice(&crc32c::crc32c(&json).to_be_bytes());
        out.extend_from_slice(&json);
        out
    }

    /// Marks a snapshot as written for `end_offset`.
    fn snapshot_written(&mut self, end_offset: i64) {
        self.has_snapshot = true;
        self.snapshot_end = end_offset;
        self.dirty = false;
    }

    /// Loads the snapshot of the partition whose log is `log` and replays the log after it.
    pub(crate) fn load(log: &Log) -> ProducerStates {
        let mut st = ProducerStates {
            path: Self::snapshot_path(log.dir()),
            ..ProducerStates::default()
        };
        let Some(path) = st.path.clone() else {
            return st;
        };
        let log_start = log.log_start_offset();
        let log_end = log.log_end_offset();
        let replay_from = match read_snapshot(&path) {
            Ok(None) => return st,
            Ok(Some(snap)) => {
                for mut e in snap.producers {
                    // Batches above the recovered log end were cut with a torn tail.
                    e.batches.retain(|b| b.last_offset < log_end);
                    if !e.batches.is_empty() {
                        st.producers.insert(e.id, e);
                    }
                }
                st.has_snapshot = true;
                snap.end_offset.clamp(log_start, log_end)
            }
            Err(reason) => {
                tracing::warn!(path = %path.display(), %reason, "producer state snapshot unusable; replaying the whole log");
                st.has_snapshot = true;
                log_start
            }
        };
        let replayed = st.replay(log, replay_from, log_end);
        st.snapshot_end = replay_from;
        st.dirty = replayed > 0;
        if replayed > 0 {
            tracing::info!(path = %path.display(), from = replay_from, to = log_end, batches = replayed, "rebuilt producer state from the log");
        }
        st
    }

    /// Applies the idempotent batches in `[from, to)`; returns how many.
    fn replay(&mut self, log: &Log, from: i64, to: i64) -> u64 {
        let mut offset = from;
        let mut n = 0u64;
        let now = now_ms();
        while offset < to {
            let read = match log.read(offset, REPLAY_READ_BYTES, to) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(offset, error = %e, "producer state replay stopped early");
                    break;
                }
            };
            if read.next_offset <= offset {
                break;
            }
            for (h, _) in BatchIter::new(&read.bytes).flatten() {
                if is_idempotent(&h) && h.last_offset() >= from {
                    // Producers that were idle for the expiry period are dropped at the
                    // next snapshot; their batch times are not known here.
                    self.record_header(&h, now);
                    n += 1;
                }
            }
            offset = read.next_offset;
        }
        n
    }
}

fn read_snapshot(path: &Path) -> Result<Option<Snapshot>, String> {
    let len = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
        Ok(m) => m.len(),
    };
    if len > SNAPSHOT_BYTES_MAX {
        return Err(format!("{len} bytes exceeds {SNAPSHOT_BYTES_MAX}"));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let Some((crc, json)) = bytes.split_first_chunk::<4>() else {
        return Err("shorter than its checksum".into());
    };
    if u32::from_be_bytes(*crc) != crc32c::crc32c(json) {
        return Err("checksum mismatch".into());
    }
    serde_json::from_slice(json)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Writes `bytes` to `path` atomically: a `.tmp` file, fsynced, renamed over it.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("producers.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)
}

/// Writes the snapshot of `p` if it has one and its state or log end moved since the last
/// one (moving the snapshot's offset forward keeps the replay after a crash short).
fn snapshot_partition(p: &Partition) {
    let (path, bytes, end) = {
        let mut st = p.producers.lock();
        let Some(path) = st.path.clone() else { return };
        if !st.has_snapshot {
            return;
        }
        let end = p.log.log_end_offset();
        if !st.dirty && end == st.snapshot_end {
            return;
        }
        st.expire(now_ms());
        let bytes = st.encode_snapshot(end);
        // Marked before the write so that appends meanwhile mark it dirty again.
        st.snapshot_written(end);
        (path, bytes, end)
    };
    if let Err(e) = write_atomically(&path, &bytes) {
        tracing::warn!(path = %path.display(), error = %e, "writing producer state snapshot failed");
        p.producers.lock().dirty = true;
    } else {
        tracing::debug!(path = %path.display(), end, "producer state snapshot written");
    }
}

/// At shutdown: the final snapshot of a partition, so a clean restart replays nothing.
pub(crate) fn snapshot_on_close(p: &Partition) {
    snapshot_partition(p);
}

/// Why an append failed: in storage, or in the producer checks.
#[derive(Debug)]
pub(crate) enum AppendError {
    Storage(StorageError),
    Producer(BrokerError),
}

impl AppendError {
    pub(crate) fn into_broker(self, topic: &str, partition: u32) -> BrokerError {
        match self {
            AppendError::Storage(e) => crate::storage_err(topic, partition, e),
            AppendError::Producer(e) => e,
        }
    }
}

/// Appends `records` to `p`, with the producer checks if any batch has a producer id.
/// `records` is written as it is, its headers patched on the way to the disk.
/// Blocking: runs on the blocking pool.
pub(crate) fn append(
    p: &Partition,
    records: &[u8],
    leader_epoch: i32,
) -> Result<AppendInfo, AppendError> {
    let mut headers = Vec::new();
    let mut idempotent = false;
    for batch in BatchIter::new(records) {
        match batch {
            Ok((h, _)) => {
                idempotent |= is_idempotent(&h);
                headers.push(h);
            }
            // Let the log report the problem precisely.
            Err(_) => break,
        }
    }
    if !idempotent {
        return p
            .log
            .append_shared(records, leader_epoch)
            .map_err(AppendError::Storage);
    }
    // Checksums first, so a corrupt batch is reported as corrupt and not as out of order.
    for (_, bytes) in BatchIter::new(records).flatten() {
        weir_record::validate_batch(bytes)
            .map_err(|e| AppendError::Storage(StorageError::Record(e)))?;
    }
    let mut st = p.producers.lock();
    match st.check(&headers).map_err(AppendError::Producer)? {
        Check::Duplicate(b) => {
            let max_timestamp = headers.first().map_or(-1, |h| h.max_timestamp);
            tracing::debug!(
                producer_id = headers[0].producer_id,
                first_seq = b.first_seq,
                "duplicate batch answered with its original offsets"
            );
            return Ok(AppendInfo {
                base_offset: b.base_offset,
                last_offset: b.last_offset,
                max_timestamp,
                log_append_time_ms: -1,
            });
        }
        Check::Append => {}
    }
    if !st.has_snapshot {
        // The first idempotent batch of this partition: an empty snapshot at the current
        // end makes a restart replay from here on.
        if let Some(path) = st.path.clone() {
            let end = p.log.log_end_offset();
            match write_atomically(&path, &st.encode_snapshot(end)) {
                Ok(()) => st.snapshot_written(end),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write producer state snapshot; state will not survive a crash");
                }
            }
        }
    }
    let info = p
        .log
        .append_shared(records, leader_epoch)
        .map_err(AppendError::Storage)?;
    // `records` keeps the producer's headers: give them the offsets the log assigned.
    let now = now_ms();
    let mut next = info.base_offset;
    for h in &mut headers {
        h.base_offset = next;
        next += i64::from(h.last_offset_delta) + 1;
        st.record_header(h, now);
    }
    Ok(info)
}

/// Allocates producer ids from blocks reserved durably in `<data_dir>/producer_ids`
/// (`[crc32c u32 BE][end of the reserved block i64 BE]`), so an id is never handed out
/// twice, even across crashes (ids left in a block at a crash are skipped).
#[derive(Debug)]
pub(crate) struct ProducerIds {
    path: PathBuf,
    /// `(next id, end of the reserved block)`, loaded on first use.
    state: parking_lot::Mutex<Option<(i64, i64)>>,
}

impl ProducerIds {
    pub(crate) fn new(data_dir: &Path) -> ProducerIds {
        ProducerIds {
            path: data_dir.join("producer_ids"),
            state: parking_lot::Mutex::new(None),
        }
    }

    fn read_block_end(&self) -> Result<i64, String> {
        match std::fs::read(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e.to_string()),
            Ok(b) if b.len() == 12 => {
                let crc = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                if crc != crc32c::crc32c(&b[4..]) {
                    return Err(format!("{} fails its checksum", self.path.display()));
                }
                let mut v = [0u8; 8];
                v.copy_from_slice(&b[4..]);
                Ok(i64::from_be_bytes(v))
            }
            Ok(b) => Err(format!(
                "{} has {} bytes, not 12",
                self.path.display(),
                b.len()
            )),
        }
    }

    fn write_block_end(&self, end: i64) -> std::io::Result<()> {
        let mut b = Vec::with_capacity(12);
        let v = end.to_be_bytes();
        b.extend_from_slice(&crc32c::crc32c(&v).to_be_bytes());
        b.extend_from_slice(&v);
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&b)?;
        f.sync_data()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// The next unused producer id. Blocking.
    fn allocate(&self) -> Result<i64, BrokerError> {
        let mut st = self.state.lock();
        let (next, end) = match *st {
            Some(s) => s,
            None => {
                let end = self.read_block_end().map_err(|e| {
                    BrokerError::Storage(StorageError::Io(std::io::Error::other(e)))
                })?;
                (end, end)
            }
        };
        let (next, end) = if next < end {
            (next, end)
        } else {
            let new_end = next
                .checked_add(PRODUCER_ID_BLOCK)
                .ok_or_else(|| BrokerError::InvalidRequest("producer ids are exhausted".into()))?;
            self.write_block_end(new_end)
                .map_err(|e| BrokerError::Storage(StorageError::Io(e)))?;
            (next, new_end)
        };
        *st = Some((next + 1, end));
        Ok(next)
    }

    fn is_allocated(&self, id: i64) -> bool {
        self.state.lock().is_some_and(|(next, _)| id < next)
            || self.read_block_end().is_ok_and(|end| id < end)
    }
}

impl Broker {
    /// A producer id and epoch for an idempotent producer: a new id at epoch 0, or, when
    /// `current` names an id this broker allocated, the same id at the next epoch (a
    /// producer resetting its sequences, KIP-360). An exhausted epoch gets a new id.
    pub async fn init_producer_id(
        &self,
        current: Option<(i64, i16)>,
    ) -> Result<(i64, i16), BrokerError> {
        self.check_running()?;
        let broker = self.clone();
        tokio::task::spawn_blocking(move || {
            let ids = &broker.inner.producer_ids;
            if let Some((id, epoch)) = current {
                if !ids.is_allocated(id) {
                    return Err(BrokerError::InvalidRequest(format!(
                        "producer id {id} was not allocated by this broker"
                    )));
                }
                if (0..i16::MAX - 1).contains(&epoch) {
                    return Ok((id, epoch + 1));
                }
            }
            Ok((ids.allocate()?, 0))
        })
        .await?
    }

    /// Starts the task that snapshots changed producer state periodically.
    pub(crate) fn start_producer_snapshot_task(&self) {
        let broker = self.clone();
        let stop = self.inner.shutdown.clone();
        self.inner.tasks.spawn(async move {
            let every = Duration::from_millis(PRODUCER_SNAPSHOT_INTERVAL_MS);
            loop {
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = stop.cancelled() => return,
                }
                let parts: Vec<Arc<Partition>> = broker
                    .inner
                    .topics
                    .read()
                    .values()
                    .flat_map(|t| t.partitions.iter().cloned())
                    .collect();
                let _ = tokio::task::spawn_blocking(move || {
                    for p in parts {
                        snapshot_partition(&p);
                    }
                })
                .await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use weir_record::{BatchBuilder, Record};

    /// An uncompressed batch of `n` records from producer `id` at `epoch`, first sequence `seq`.
    fn batch(id: i64, epoch: i16, seq: i32, n: usize) -> BytesMut {
        let mut b = BatchBuilder::new(1000);
        for _ in 0..n {
            b.push(Record {
                timestamp_ms: 1000,
                key: None,
                value: Some(b"v"),
                headers: &[],
            });
        }
        let mut bytes = b.finish();
        // producerId, producerEpoch, baseSequence are inside the CRC: rewrite and re-sum.
        bytes[43..51].copy_from_slice(&id.to_be_bytes());
        bytes[51..53].copy_from_slice(&epoch.to_be_bytes());
        bytes[53..57].copy_from_slice(&seq.to_be_bytes());
        let crc = crc32c::crc32c(&bytes[21..]);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        bytes
    }

    fn header(b: &[u8]) -> BatchHeader {
        weir_record::validate_batch(b).expect("valid")
    }

    fn appended(st: &mut ProducerStates, b: &mut BytesMut, base: i64) {
        weir_record::set_base_offset(b, base);
        for (h, _) in BatchIter::new(b).flatten() {
            st.record_header(&h, 1);
        }
    }

    #[test]
    fn sequences_must_follow_and_duplicates_return_original_offsets() {
        let mut st = ProducerStates::default();
        let mut b0 = batch(7, 0, 0, 3);
        assert_eq!(st.check(&[header(&b0)]).unwrap(), Check::Append);
        appended(&mut st, &mut b0, 100);
        let mut b1 = batch(7, 0, 3, 2);
        assert_eq!(st.check(&[header(&b1)]).unwrap(), Check::Append);
        appended(&mut st, &mut b1, 103);
        // A retry of the first batch.
        match st.check(&[header(&batch(7, 0, 0, 3))]).unwrap() {
            Check::Duplicate(m) => assert_eq!((m.base_offset, m.last_offset), (100, 102)),
            other => panic!("{other:?}"),
        }
        // A gap.
        assert!(matches!(
            st.check(&[header(&batch(7, 0, 9, 1))]),
            Err(BrokerError::OutOfOrderSequence {
                expected: 5,
                got: 9,
                ..
            })
        ));
        // An older epoch is fenced; a newer one starts at 0.
        assert!(matches!(
            st.check(&[header(&batch(7, 0, 5, 1))]),
            Ok(Check::Append)
        ));
        let mut newer = batch(7, 1, 0, 1);
        assert_eq!(st.check(&[header(&newer)]).unwrap(), Check::Append);
        appended(&mut st, &mut newer, 105);
        assert!(matches!(
            st.check(&[header(&batch(7, 0, 5, 1))]),
            Err(BrokerError::InvalidProducerEpoch {
                epoch: 0,
                current: 1,
                ..
            })
        ));
        assert!(matches!(
            st.check(&[header(&batch(7, 2, 3, 1))]),
            Err(BrokerError::OutOfOrderSequence { expected: 0, .. })
        ));
        // Unknown producers are accepted at any sequence.
        assert_eq!(
            st.check(&[header(&batch(8, 0, 42, 1))]).unwrap(),
            Check::Append
        );
    }

    #[test]
    fn only_the_last_five_batches_are_duplicates() {
        let mut st = ProducerStates::default();
        for i in 0..7 {
            let mut b = batch(1, 0, i, 1);
            appended(&mut st, &mut b, i64::from(i));
        }
        assert!(matches!(
            st.check(&[header(&batch(1, 0, 2, 1))]),
            Ok(Check::Duplicate(_))
        ));
        assert!(matches!(
            st.check(&[header(&batch(1, 0, 1, 1))]),
            Err(BrokerError::OutOfOrderSequence { .. })
        ));
    }

    #[test]
    fn several_batches_in_one_append_are_checked_in_order() {
        let st = ProducerStates::default();
        let ok = [header(&batch(1, 0, 0, 2)), header(&batch(1, 0, 2, 2))];
        assert_eq!(st.check(&ok).unwrap(), Check::Append);
        let gap = [header(&batch(1, 0, 0, 2)), header(&batch(1, 0, 3, 2))];
        assert!(st.check(&gap).is_err());
    }

    #[test]
    fn sequences_wrap() {
        assert_eq!(add_seq(i32::MAX, 1), 0);
        assert_eq!(add_seq(i32::MAX - 1, 3), 1);
        assert_eq!(add_seq(5, 0), 5);
    }

    #[test]
    fn snapshot_round_trips() {
        let mut st = ProducerStates::default();
        let mut b = batch(3, 2, 10, 4);
        appended(&mut st, &mut b, 50);
        let bytes = st.encode_snapshot(54);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.producers");
        write_atomically(&path, &bytes).expect("write");
        let snap = read_snapshot(&path).expect("valid").expect("present");
        assert_eq!(snap.end_offset, 54);
        assert_eq!(snap.producers.len(), 1);
        assert_eq!(snap.producers[0].epoch, 2);
        std::fs::write(&path, b"\0\0\0\0{}").expect("write");
        assert!(read_snapshot(&path).is_err());
    }

    #[test]
    fn producer_ids_are_never_reused_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = ProducerIds::new(dir.path());
        let first: Vec<_> = (0..3).map(|_| a.allocate().expect("id")).collect();
        assert_eq!(first, [0, 1, 2]);
        let b = ProducerIds::new(dir.path());
        let next = b.allocate().expect("id");
        assert!(next >= PRODUCER_ID_BLOCK, "{next}");
        assert!(b.is_allocated(1));
    }
}
