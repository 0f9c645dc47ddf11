//! Read-ahead for consumers reading a backlog.
//!
//! A consumer behind the log end fetches a partition again from where its last answer
//! ended, as soon as that answer arrives. When a fetch leaves data behind in a partition,
//! the broker starts that next read at once on the blocking pool, while the answer is
//! written to the socket and handed out by the client; the next fetch from that offset
//! takes the result (waiting for it if it is still being read) instead of reading then.
//! The read, its checksums and the client's work then overlap instead of taking turns.
//! It reads only below the high watermark, which no truncation ever goes under, so what
//! it holds stays the log's content; whether retention has deleted it since is checked
//! when it is taken.
//!
//! Bounded: one read-ahead per partition, only for reads of [`READ_AHEAD_BYTES_MIN`] to
//! [`READ_AHEAD_BYTES_MAX`], all of them together within [`READ_AHEAD_BUDGET_BYTES`].
//! A fresh read-ahead that nobody has claimed is never replaced, so two consumers at
//! different places in one partition cannot make each other's reads wasted work: the
//! second simply reads as before. After [`READ_AHEAD_STALE`] an unclaimed one may be
//! replaced, and a sweep drops stale ones when the budget runs out.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use weir_storage::{Log, ReadResult};

/// Smallest read worth reading ahead: a consumer reading a backlog asks for much more
/// than a batch, one at the log end or a lookup of one record asks for little.
pub(crate) const READ_AHEAD_BYTES_MIN: u32 = 64 * 1024;
/// Largest read that is read ahead (a consumer's usual 1 MiB per partition, with room).
pub(crate) const READ_AHEAD_BYTES_MAX: u32 = 2 * 1024 * 1024;
/// Memory all read-aheads of the broker may hold at once.
pub(crate) const READ_AHEAD_BUDGET_BYTES: u32 = 64 * 1024 * 1024;
/// Age after which an unclaimed read-ahead may be replaced or swept.
pub(crate) const READ_AHEAD_STALE: Duration = Duration::from_secs(1);

/// The budget is counted in KiB: a semaphore's permits are `u32`.
const BUDGET_UNIT_BYTES: u32 = 1024;

/// A read under way or done; `None` if it failed (the fetch then reads and reports).
type Pending = Shared<BoxFuture<'static, Option<ReadResult>>>;

struct Ahead {
    offset: i64,
    max_bytes: u32,
    started: Instant,
    read: Pending,
    /// Held while the read-ahead waits here to be claimed.
    budget: OwnedSemaphorePermit,
}

/// A read-ahead taken by the fetch it was made for.
pub(crate) struct Claimed {
    /// `max_bytes` it was read with.
    pub(crate) max_bytes: u32,
    read: Pending,
    _budget: OwnedSemaphorePermit,
}

impl Claimed {
    /// The result, once read; `None` if the read failed.
    pub(crate) async fn result(self) -> Option<ReadResult> {
        self.read.await
    }
}

/// A partition's one read-ahead.
#[derive(Default)]
pub(crate) struct ReadAheadSlot(Mutex<Option<Ahead>>);

impl fmt::Debug for ReadAheadSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let slot = self.0.lock();
        match slot.as_ref() {
            Some(a) => write!(f, "ReadAhead({}, {} bytes)", a.offset, a.max_bytes),
            None => f.write_str("ReadAhead(none)"),
        }
    }
}

impl ReadAheadSlot {
    /// Takes the read-ahead made for a read at `offset`, if there is one.
    pub(crate) fn claim(&self, offset: i64) -> Option<Claimed> {
        let mut slot = self.0.lock();
        if slot.as_ref()?.offset != offset {
            return None;
        }
        let a = slot.take()?;
        Some(Claimed {
            max_bytes: a.max_bytes,
            read: a.read,
            _budget: a.budget,
        })
    }

    /// Starts reading `max_bytes` at `offset` (below `upper`) of `log` on the blocking
    /// pool, unless a read-ahead is here already (the same one, or another that is still
    /// fresh). `Err` if the broker's read-ahead memory is all held.
    pub(crate) fn start(
        &self,
        log: &Arc<Log>,
        offset: i64,
        max_bytes: u32,
        upper: i64,
        budget: &ReadAheadBudget,
    ) -> Result<(), OverBudget> {
        let mut slot = self.0.lock();
        if let Some(a) = slot.as_ref()
            && (a.offset == offset || a.started.elapsed() < READ_AHEAD_STALE)
        {
            return Ok(());
        }
        let permit = budget.reserve(max_bytes).ok_or(OverBudget)?;
        let log = log.clone();
        let read = tokio::task::spawn_blocking(move || {
            // A first batch larger than asked for would hold more than was reserved.
            log.read(offset, max_bytes, upper)
                .ok()
                .filter(|r| r.bytes.len() <= max_bytes as usize)
        });
        *slot = Some(Ahead {
            offset,
            max_bytes,
            started: Instant::now(),
            read: async move { read.await.ok().flatten() }.boxed().shared(),
            budget: permit,
        });
        Ok(())
    }

    /// Waits until the read-ahead here, if any, is read.
    #[cfg(test)]
    pub(crate) async fn settled(&self) {
        let read = self.0.lock().as_ref().map(|a| a.read.clone());
        if let Some(read) = read {
            read.await;
        }
    }

    /// Drops the read-ahead if nobody claimed it in [`READ_AHEAD_STALE`].
    pub(crate) fn drop_stale(&self) {
        let mut slot = self.0.lock();
        if slot
            .as_ref()
            .is_some_and(|a| a.started.elapsed() >= READ_AHEAD_STALE)
        {
            *slot = None;
        }
    }
}

/// The broker's read-ahead memory is all held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OverBudget;

/// The memory all read-aheads share, and when stale ones were last swept.
#[derive(Debug)]
pub(crate) struct ReadAheadBudget {
    units: Arc<Semaphore>,
    last_sweep: Mutex<Option<Instant>>,
}

impl ReadAheadBudget {
    pub(crate) fn new(bytes: u32) -> Self {
        Self {
            units: Arc::new(Semaphore::new((bytes / BUDGET_UNIT_BYTES) as usize)),
            last_sweep: Mutex::new(None),
        }
    }

    fn reserve(&self, bytes: u32) -> Option<OwnedSemaphorePermit> {
        self.units
            .clone()
            .try_acquire_many_owned(bytes.div_ceil(BUDGET_UNIT_BYTES))
            .ok()
    }

    /// Whether a sweep of stale read-aheads may run now (at most one per
    /// [`READ_AHEAD_STALE`], so a budget spent by live readers costs no sweep per fetch).
    pub(crate) fn sweep_due(&self) -> bool {
        let mut last = self.last_sweep.lock();
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < READ_AHEAD_STALE) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// Bytes not held by any read-ahead.
    #[cfg(test)]
    pub(crate) fn available_bytes(&self) -> u64 {
        self.units.available_permits() as u64 * u64::from(BUDGET_UNIT_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::{Seek, SeekFrom, Write};

    use bytes::BytesMut;
    use weir_record::{BatchBuilder, BatchIter, Record, records};

    use crate::{Acks, Broker, BrokerConfig, BrokerError, FetchPartitionSpec, FetchSpec};

    /// Bytes of each test record's value: a few make a read worth reading ahead.
    const VALUE_BYTES: usize = 100 * 1024;
    /// What the test consumers ask of the partition: one batch fits, two do not.
    const PARTITION_FETCH_BYTES: u32 = 128 * 1024;

    fn batch(value: u8) -> BytesMut {
        let v = vec![value; VALUE_BYTES];
        let mut b = BatchBuilder::new(1_700_000_000_000);
        b.push(Record {
            timestamp_ms: 1_700_000_000_000,
            key: None,
            value: Some(&v),
            headers: &[],
        });
        b.finish()
    }

    fn spec(offset: i64, partition_bytes: u32) -> FetchSpec {
        FetchSpec {
            max_wait_ms: 0,
            min_bytes: 0,
            max_bytes: 1 << 20,
            partitions: vec![FetchPartitionSpec {
                topic: "t".into(),
                partition: 0,
                offset,
                max_bytes: partition_bytes,
            }],
        }
    }

    /// A broker with topic "t" (one partition, `configs`) holding one record per value.
    async fn with_records(
        dir: &std::path::Path,
        configs: &[(&str, &str)],
        values: impl IntoIterator<Item = u8>,
    ) -> Broker {
        let broker = Broker::open(BrokerConfig::new(dir)).await.expect("open");
        let configs: BTreeMap<String, String> = configs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        broker.create_topic("t", 1, configs).await.expect("create");
        for v in values {
            broker
                .produce("t", 0, batch(v), Acks::All, 0)
                .await
                .expect("produce");
        }
        broker
    }

    /// `(offset, first value byte)` of every record fetched.
    fn decoded(bytes: &[u8]) -> Vec<(i64, u8)> {
        let mut out = Vec::new();
        for b in BatchIter::new(bytes) {
            let (_, b) = b.expect("batch");
            for r in records(b).expect("a valid batch") {
                let r = r.expect("record");
                out.push((r.offset, r.value.expect("value")[0]));
            }
        }
        out
    }

    async fn fetch_one(
        broker: &Broker,
        offset: i64,
        partition_bytes: u32,
    ) -> crate::FetchedPartition {
        let mut got = broker
            .fetch(spec(offset, partition_bytes))
            .await
            .expect("fetch");
        got.pop().expect("one partition")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_consumer_behind_the_end_gets_its_next_read_made_ahead() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = with_records(dir.path(), &[], [10, 11, 12]).await;
        let first = fetch_one(&broker, 0, PARTITION_FETCH_BYTES).await;
        assert_eq!(decoded(&first.records), [(0, 10)]);
        let p = broker.partition("t", 0).expect("partition");
        p.read_ahead.settled().await;

        // Damage record 1 on disk: only a read made before the damage can still serve it.
        let segment = std::fs::read_dir(p.log.dir())
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .find(|path| path.extension().is_some_and(|x| x == "log"))
            .expect("a segment file");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(segment)
            .expect("open segment");
        file.seek(SeekFrom::Start(first.records.len() as u64 + 1_000))
            .expect("seek");
        file.write_all(&[0xee; 64]).expect("damage");
        drop(file);

        let second = fetch_one(&broker, 1, PARTITION_FETCH_BYTES).await;
        assert!(second.error.is_none(), "{:?}", second.error);
        assert_eq!(decoded(&second.records), [(1, 11)]);
        // Read again, record 1 comes from the disk, where the checksum catches the damage.
        let again = fetch_one(&broker, 1, PARTITION_FETCH_BYTES).await;
        assert!(
            matches!(again.error, Some(BrokerError::CorruptData { .. })),
            "{:?}",
            again.error
        );
        broker.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn consumers_at_different_places_in_one_partition_each_read_every_record_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let count = 24u8;
        let broker = with_records(dir.path(), &[], 0..count).await;
        // Two readers that read ahead, one that asks too little to, taking turns.
        let wants = [PARTITION_FETCH_BYTES, 3 * PARTITION_FETCH_BYTES, 1_000];
        let mut positions = [0i64, 7, 3];
        let mut seen: [Vec<(i64, u8)>; 3] = Default::default();
        let starts = positions;
        while positions.iter().any(|&p| p < i64::from(count)) {
            for (i, want) in wants.iter().enumerate() {
                if positions[i] >= i64::from(count) {
                    continue;
                }
                let got = fetch_one(&broker, positions[i], *want).await;
                assert!(got.error.is_none(), "{:?}", got.error);
                let records = decoded(&got.records);
                assert!(!records.is_empty(), "reader {i} at {}", positions[i]);
                positions[i] = records.last().expect("a record").0 + 1;
                seen[i].extend(records);
            }
        }
        for (i, seen) in seen.iter().enumerate() {
            let expected: Vec<(i64, u8)> = (starts[i]..i64::from(count))
                .map(|o| (o, o as u8))
                .collect();
            assert_eq!(*seen, expected, "reader {i}");
        }
        broker.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_retention_deleted_are_not_served_from_a_read_ahead() {
        let dir = tempfile::tempdir().expect("tempdir");
        // About 80 records per segment (the smallest segment size); retention keeps only
        // the active one.
        let configs = [
            ("segment_bytes_max", "8388608"),
            ("retention_bytes_max", "1"),
        ];
        let broker = with_records(dir.path(), &configs, 0..170).await;
        let first = fetch_one(&broker, 0, PARTITION_FETCH_BYTES).await;
        assert_eq!(decoded(&first.records), [(0, 0)]);
        let p = broker.partition("t", 0).expect("partition");
        p.read_ahead.settled().await;
        broker.apply_retention().await;
        let start = p.log.log_start_offset();
        assert!(start > 1, "retention deleted the first segments ({start})");

        let after = fetch_one(&broker, 1, PARTITION_FETCH_BYTES).await;
        assert!(
            matches!(
                after.error,
                Some(BrokerError::OffsetOutOfRange { offset: 1, .. })
            ),
            "{:?}",
            after.error
        );
        assert!(after.records.is_empty());
        broker.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_aheads_hold_no_more_than_their_budget_and_stale_ones_are_swept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = with_records(dir.path(), &[], 0..4).await;
        let budget = &broker.inner.read_ahead;
        let total = budget.available_bytes();
        // Readers that stop after one fetch leave their read-aheads unclaimed.
        fetch_one(&broker, 0, PARTITION_FETCH_BYTES).await;
        let p = broker.partition("t", 0).expect("partition");
        p.read_ahead.settled().await;
        assert_eq!(
            budget.available_bytes(),
            total - u64::from(PARTITION_FETCH_BYTES)
        );
        // A fresh unclaimed read-ahead is not replaced by another reader's.
        fetch_one(&broker, 2, PARTITION_FETCH_BYTES).await;
        assert!(p.read_ahead.claim(3).is_none());
        let claimed = p
            .read_ahead
            .claim(1)
            .expect("the first reader's read-ahead");
        drop(claimed);
        assert_eq!(budget.available_bytes(), total);

        fetch_one(&broker, 0, PARTITION_FETCH_BYTES).await;
        tokio::time::sleep(super::READ_AHEAD_STALE).await;
        assert!(budget.sweep_due());
        broker.sweep_read_aheads();
        assert_eq!(budget.available_bytes(), total);
        assert!(p.read_ahead.claim(1).is_none());
        broker.shutdown().await;
    }
}
