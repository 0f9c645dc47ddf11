//! The record accumulator: per-partition batches, sealed when full or when their linger
//! expires, with at most `inflight_max` batches in flight per partition (1 by default),
//! handed out in order so that a partition's records are appended in the order they were
//! sent.
//!
//! Pure bookkeeping: no I/O, no async; the clock is read only through the closure
//! [`Accumulator::try_append`] is given, and only when a record starts a batch. The producer's sender task calls
//! [`Accumulator::drain_ready`] with the current time and sends what it returns; this is
//! what the unit tests below drive directly.

use std::collections::hash_map::{Entry, RandomState};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_record::{BATCH_HEADER_BYTES, BatchBuilder, Record};

use crate::config::Partitioning;
use crate::partitioner::partition_for_key;
use crate::record::Topic;

/// Smallest buffer a new batch starts with; it grows as records come.
const BATCH_CAPACITY_BYTES_MIN: usize = 4096;

/// A multiply-rotate hasher (the one rustc uses, "FxHash") for the accumulator's maps:
/// their keys are the application's own topic names and partition numbers, looked up on
/// every send, where SipHash's flooding resistance buys nothing and costs most of a lookup.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
        }
    }

    fn write_u32(&mut self, i: u32) {
        self.write(&i.to_le_bytes());
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// Identifies a partition queue: partition number and lane (acknowledged or one-way).
/// One-way records travel in their own batches because a produce request has one `acks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Lane {
    pub partition: u32,
    pub oneway: bool,
}

/// A record waiting in a batch: what to complete once the batch is acknowledged.
#[derive(Debug)]
pub(crate) struct Pending<C> {
    pub timestamp_ms: i64,
    pub completion: C,
}

#[derive(Debug)]
struct OpenBatch<C> {
    id: u64,
    builder: BatchBuilder,
    created: Instant,
    records: Vec<Pending<C>>,
    reserved_bytes: usize,
}

/// A finished batch, ready to be sent as one produce request.
#[derive(Debug)]
pub(crate) struct SealedBatch<C> {
    pub id: u64,
    pub topic: Topic,
    pub lane: Lane,
    pub bytes: Bytes,
    pub records: Vec<Pending<C>>,
    /// Buffer bytes the records reserved; released when the batch completes.
    pub reserved_bytes: usize,
}

#[derive(Debug)]
struct PartQueue<C> {
    open: Option<OpenBatch<C>>,
    ready: VecDeque<SealedBatch<C>>,
    /// Batches sent and not yet completed (at most `inflight_max`).
    in_flight: u32,
}

impl<C> PartQueue<C> {
    fn new() -> Self {
        Self {
            open: None,
            ready: VecDeque::new(),
            in_flight: 0,
        }
    }

    fn is_idle(&self) -> bool {
        self.open.is_none() && self.ready.is_empty() && self.in_flight == 0
    }
}

#[derive(Debug)]
struct TopicQueues<C> {
    name: Topic,
    parts: FxMap<Lane, PartQueue<C>>,
    /// Partition that records without key (or under round-robin) stick to.
    sticky: u32,
    /// Partition count last seen for the topic.
    partitions: u32,
    /// When `partitions` was learnt; the fast path asks again once it is too old.
    partitions_at: Instant,
    /// The size of the last sealed batch.
    hint: BatchHint,
}

/// Bytes and records of the last sealed batch of a topic: the room the next batch
/// starts with, so a batch that fills up is not regrown (and copied) a dozen times on
/// its way to the limit.
#[derive(Debug, Clone, Copy)]
struct BatchHint {
    bytes: usize,
    records: usize,
}

/// What [`Accumulator::drain_ready`] hands to the sender.
#[derive(Debug)]
pub(crate) struct Drained<C> {
    /// Batches to send now, in order per partition; their partitions count them in flight.
    pub batches: Vec<SealedBatch<C>>,
    /// When the next open batch's linger expires, if any partition is waiting for one.
    pub next_deadline: Option<Instant>,
}

/// The outcome of [`Accumulator::try_append`].
#[derive(Debug)]
pub(crate) enum Placed<C> {
    /// The record is in a batch; `wake` says the sender should look (a batch started or
    /// was sealed).
    Batched { wake: bool },
    /// The topic's partition count is not known, or too old to start a batch with: learn
    /// it, then call [`Accumulator::append`]. The record was not touched.
    NeedPartitions(C),
    /// The record names a partition the topic does not have.
    NoSuchPartition { completion: C, partitions: u32 },
}

/// Where a record goes, as the sender asked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Destination<'a> {
    pub topic: &'a Topic,
    pub key: Option<&'a [u8]>,
    pub partition: Option<u32>,
    pub partitioning: Partitioning,
    pub oneway: bool,
}

/// Batch ids and the limits every partition queue shares.
#[derive(Debug)]
struct Book {
    batch_bytes_max: usize,
    next_batch_id: u64,
    /// Ids of batches not yet completed, for flush.
    live: BTreeSet<u64>,
}

/// Per-partition batches of one producer.
#[derive(Debug)]
pub(crate) struct Accumulator<C> {
    /// Topics ever sent to; never removed, so an index stays valid.
    topics: Vec<TopicQueues<C>>,
    /// Index in `topics` by name.
    topic_index: FxMap<Topic, usize>,
    /// The topic the last fast-path send named and its index: a producer that clones
    /// one [`Topic`] into its records finds it by pointer, without hashing the name.
    last_topic: Option<(Topic, usize)>,
    book: Book,
    linger: Duration,
    /// Batches of one partition (and lane) in flight at once.
    inflight_max: u32,
    /// How long a learnt partition count is used to start new batches.
    partitions_max_age: Duration,
    /// Seed for the first sticky partition of a topic, so producers spread out.
    seed: u64,
}

impl<C> Accumulator<C> {
    pub(crate) fn new(
        batch_bytes_max: usize,
        linger: Duration,
        inflight_max: u32,
        partitions_max_age: Duration,
    ) -> Self {
        assert!(batch_bytes_max > BATCH_HEADER_BYTES);
        assert!(inflight_max >= 1);
        Self {
            topics: Vec::new(),
            topic_index: FxMap::default(),
            last_topic: None,
            book: Book {
                batch_bytes_max,
                next_batch_id: 0,
                live: BTreeSet::new(),
            },
            linger,
            inflight_max,
            partitions_max_age,
            seed: RandomState::new().build_hasher().finish(),
        }
    }

    /// Largest record (as bounded by the caller) that fits an empty batch.
    pub(crate) fn record_bytes_max(&self) -> usize {
        self.book.batch_bytes_max - BATCH_HEADER_BYTES
    }

    /// The index of `topic`'s queues, made if new, with `partitions` learnt at `now`.
    fn topic_at(&mut self, topic: &str, partitions: u32, now: Instant) -> usize {
        let i = match self.topic_index.get(topic) {
            Some(&i) => i,
            None => {
                let name = Topic::from(topic);
                let sticky = (self.seed % u64::from(partitions.max(1))) as u32;
                self.topic_index.insert(name.clone(), self.topics.len());
                self.topics.push(TopicQueues {
                    name,
                    parts: FxMap::default(),
                    sticky,
                    partitions,
                    partitions_at: now,
                    hint: BatchHint {
                        bytes: BATCH_CAPACITY_BYTES_MIN,
                        records: 0,
                    },
                });
                self.topics.len() - 1
            }
        };
        let t = &mut self.topics[i];
        t.partitions_at = now;
        if t.partitions != partitions {
            t.partitions = partitions;
            t.sticky %= partitions.max(1);
        }
        i
    }

    /// The partition for a record whose topic has `partitions` partitions (as learnt
    /// now): the explicit one, the key's hash, or the sticky one.
    pub(crate) fn choose_partition(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        explicit: Option<u32>,
        partitions: u32,
        partitioning: Partitioning,
    ) -> u32 {
        assert!(partitions > 0);
        if let Some(p) = explicit {
            return p;
        }
        match (partitioning, key) {
            (Partitioning::KeyHash, Some(k)) => partition_for_key(k, partitions),
            _ => {
                let i = self.topic_at(topic, partitions, Instant::now());
                self.topics[i].sticky
            }
        }
    }

    /// The fast path of a send: partitions and batches a record if its topic's partition
    /// count is known. `clock` is read only if the record starts a new batch, which is
    /// also when a partition count older than `partitions_max_age` sends the record to
    /// the slow path ([`Placed::NeedPartitions`]).
    pub(crate) fn try_append(
        &mut self,
        to: Destination<'_>,
        record: Record<'_>,
        completion: C,
        reserved_bytes: usize,
        clock: impl FnOnce() -> Instant,
    ) -> Placed<C> {
        let i = match &self.last_topic {
            Some((name, i)) if name.same(to.topic) => *i,
            _ => {
                let Some(&i) = self.topic_index.get(to.topic.as_str()) else {
                    return Placed::NeedPartitions(completion);
                };
                self.last_topic = Some((to.topic.clone(), i));
                i
            }
        };
        let t = &mut self.topics[i];
        let partitions = t.partitions;
        let partition = match to.partition {
            Some(p) if p >= partitions => {
                return Placed::NoSuchPartition {
                    completion,
                    partitions,
                };
            }
            Some(p) => p,
            None => match (to.partitioning, to.key) {
                (Partitioning::KeyHash, Some(k)) => partition_for_key(k, partitions),
                _ => t.sticky,
            },
        };
        let lane = Lane {
            partition,
            oneway: to.oneway,
        };
        let max = self.book.batch_bytes_max;
        // The common case, a record joining its lane's open batch, takes one map lookup
        // and sizes the record once.
        if let Some(q) = t.parts.get_mut(&lane)
            && let Some(open) = q.open.as_mut()
            && open.builder.size_bytes() + open.builder.record_bytes(&record) <= max
        {
            if !push_open(open, record, completion, reserved_bytes, max) {
                return Placed::Batched { wake: false };
            }
            let b = q.open.take().expect("present");
            q.ready.push_back(seal(b, &t.name, lane, &mut t.hint));
            advance_sticky(t, lane);
            return Placed::Batched { wake: true };
        }
        let now = clock();
        if now.saturating_duration_since(t.partitions_at) >= self.partitions_max_age {
            return Placed::NeedPartitions(completion);
        }
        let wake = append_lane(
            &mut self.book,
            t,
            lane,
            record,
            completion,
            reserved_bytes,
            now,
        );
        Placed::Batched { wake }
    }

    /// Appends a record to its partition's open batch, sealing that batch first if the
    /// record does not fit and after if the batch is full. `partitions` is the topic's
    /// partition count as learnt at `now`. Returns whether the sender should be woken (a
    /// batch was started or sealed).
    ///
    /// # Panics
    /// If the record alone does not fit an empty batch: callers check sizes first.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn append(
        &mut self,
        topic: &str,
        partitions: u32,
        lane: Lane,
        record: Record<'_>,
        completion: C,
        reserved_bytes: usize,
        now: Instant,
    ) -> bool {
        let i = self.topic_at(topic, partitions, now);
        let t = &mut self.topics[i];
        append_lane(
            &mut self.book,
            t,
            lane,
            record,
            completion,
            reserved_bytes,
            now,
        )
    }

    /// Takes the batches that can be sent now: for each partition with fewer than
    /// `inflight_max` batches in flight, its oldest sealed batches, then its open batch
    /// once the linger has expired.
    pub(crate) fn drain_ready(&mut self, now: Instant) -> Drained<C> {
        let mut batches = Vec::new();
        let mut next_deadline: Option<Instant> = None;
        let linger = self.linger;
        let inflight_max = self.inflight_max;
        for t in &mut self.topics {
            let mut sealed_sticky = Vec::new();
            for (lane, q) in &mut t.parts {
                while q.in_flight < inflight_max {
                    if let Some(b) = q.ready.pop_front() {
                        q.in_flight += 1;
                        batches.push(b);
                        continue;
                    }
                    let Some(open) = &q.open else { break };
                    let deadline = open.created + linger;
                    if deadline <= now {
                        let b = q.open.take().expect("present");
                        q.in_flight += 1;
                        batches.push(seal(b, &t.name, *lane, &mut t.hint));
                        sealed_sticky.push(*lane);
                    } else {
                        next_deadline = Some(next_deadline.map_or(deadline, |d| d.min(deadline)));
                    }
                    break;
                }
            }
            for lane in sealed_sticky {
                advance_sticky(t, lane);
            }
        }
        Drained {
            batches,
            next_deadline,
        }
    }

    /// Seals every open batch (for flush and close) so it goes out without lingering.
    pub(crate) fn seal_all(&mut self) {
        for t in &mut self.topics {
            let mut sealed = Vec::new();
            for (lane, q) in &mut t.parts {
                if let Some(b) = q.open.take() {
                    q.ready.push_back(seal(b, &t.name, *lane, &mut t.hint));
                    sealed.push(*lane);
                }
            }
            for lane in sealed {
                advance_sticky(t, lane);
            }
        }
    }

    /// Marks a sent batch complete, which lets its partition send the next one.
    pub(crate) fn finish(&mut self, topic: &str, lane: Lane, id: u64) {
        self.book.live.remove(&id);
        let Some(t) = self.topic_index.get(topic).map(|&i| &mut self.topics[i]) else {
            return;
        };
        if let Entry::Occupied(mut e) = t.parts.entry(lane) {
            let q = e.get_mut();
            q.in_flight = q.in_flight.saturating_sub(1);
            if e.get().is_idle() {
                e.remove();
            }
        }
        // The topic's entry (and its sticky partition) stays: a producer writes to a
        // bounded set of topics, and forgetting the sticky partition would pin unkeyed
        // records of a slow sender to one partition.
    }

    /// Whether every batch started before `next_batch_id` was `id_bound` is complete.
    pub(crate) fn completed_before(&self, id_bound: u64) -> bool {
        self.book
            .live
            .first()
            .is_none_or(|&oldest| oldest >= id_bound)
    }

    /// Id the next batch will get; batches started so far have smaller ids.
    pub(crate) fn next_batch_id(&self) -> u64 {
        self.book.next_batch_id
    }

    /// Whether no record is waiting or in flight.
    pub(crate) fn is_empty(&self) -> bool {
        self.book.live.is_empty()
    }
}

/// Puts a record into its lane's open batch (see [`Accumulator::append`]), starting one
/// at `now` if needed.
fn append_lane<C>(
    book: &mut Book,
    t: &mut TopicQueues<C>,
    lane: Lane,
    record: Record<'_>,
    completion: C,
    reserved_bytes: usize,
    now: Instant,
) -> bool {
    let max = book.batch_bytes_max;
    let mut wake = false;
    let mut sealed = false;
    let q = t.parts.entry(lane).or_insert_with(PartQueue::new);
    if let Some(open) = &q.open
        && open.builder.size_bytes() + open.builder.record_bytes(&record) > max
    {
        let b = q.open.take().expect("checked");
        q.ready.push_back(seal(b, &t.name, lane, &mut t.hint));
        sealed = true;
    }
    if q.open.is_none() {
        let id = book.next_batch_id;
        book.next_batch_id += 1;
        book.live.insert(id);
        let capacity = t.hint.bytes.max(BATCH_CAPACITY_BYTES_MIN).min(max);
        q.open = Some(OpenBatch {
            id,
            builder: BatchBuilder::with_capacity(record.timestamp_ms, capacity),
            created: now,
            records: Vec::with_capacity(t.hint.records),
            reserved_bytes: 0,
        });
        wake = true;
    }
    let open = q.open.as_mut().expect("present");
    assert!(
        open.builder.size_bytes() + open.builder.record_bytes(&record) <= max,
        "record larger than an empty batch"
    );
    if push_open(open, record, completion, reserved_bytes, max) {
        let b = q.open.take().expect("present");
        q.ready.push_back(seal(b, &t.name, lane, &mut t.hint));
        sealed = true;
    }
    if sealed {
        advance_sticky(t, lane);
        wake = true;
    }
    wake
}

/// Pushes a record that fits into an open batch; returns whether the batch is now full
/// (no room for another small record) and should be sealed.
fn push_open<C>(
    open: &mut OpenBatch<C>,
    record: Record<'_>,
    completion: C,
    reserved_bytes: usize,
    max: usize,
) -> bool {
    open.builder.push(record);
    open.records.push(Pending {
        timestamp_ms: record.timestamp_ms,
        completion,
    });
    open.reserved_bytes += reserved_bytes;
    open.builder.size_bytes() + 64 > max
}

fn seal<C>(b: OpenBatch<C>, topic: &Topic, lane: Lane, hint: &mut BatchHint) -> SealedBatch<C> {
    let bytes = b.builder.finish().freeze();
    *hint = BatchHint {
        bytes: bytes.len(),
        records: b.records.len(),
    };
    SealedBatch {
        id: b.id,
        topic: topic.clone(),
        lane,
        bytes,
        records: b.records,
        reserved_bytes: b.reserved_bytes,
    }
}

fn advance_sticky<C>(t: &mut TopicQueues<C>, lane: Lane) {
    if lane.partition == t.sticky && t.partitions > 0 {
        t.sticky = (t.sticky + 1) % t.partitions;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_record::records;

    const LANE0: Lane = Lane {
        partition: 0,
        oneway: false,
    };
    const HOUR: Duration = Duration::from_secs(3600);

    fn rec(v: &[u8]) -> Record<'_> {
        Record {
            timestamp_ms: 1_000,
            key: None,
            value: Some(v),
            headers: &[],
        }
    }

    fn values(b: &SealedBatch<u32>) -> Vec<Vec<u8>> {
        records(&b.bytes)
            .unwrap()
            .map(|r| r.unwrap().value.unwrap().to_vec())
            .collect()
    }

    #[test]
    fn batch_is_sent_when_linger_expires_not_before() {
        let t0 = Instant::now();
        let mut acc = Accumulator::<u32>::new(4096, Duration::from_millis(10), 1, HOUR);
        assert!(acc.append("t", 1, LANE0, rec(b"a"), 1, 10, t0));
        assert!(!acc.append("t", 1, LANE0, rec(b"b"), 2, 10, t0));
        let d = acc.drain_ready(t0 + Duration::from_millis(5));
        assert!(d.batches.is_empty());
        assert_eq!(d.next_deadline, Some(t0 + Duration::from_millis(10)));
        let d = acc.drain_ready(t0 + Duration::from_millis(10));
        assert_eq!(d.batches.len(), 1);
        let b = &d.batches[0];
        assert_eq!(values(b), vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(b.reserved_bytes, 20);
        assert_eq!(
            b.records.iter().map(|p| p.completion).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert!(!acc.is_empty());
        acc.finish("t", LANE0, b.id);
        assert!(acc.is_empty());
    }

    #[test]
    fn sticky_partition_survives_idle_periods() {
        let t0 = Instant::now();
        let mut acc = Accumulator::<u32>::new(4096, Duration::ZERO, 1, HOUR);
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..6 {
            let p = acc.choose_partition("t", None, None, 3, Partitioning::KeyHash);
            seen.insert(p);
            let lane = Lane {
                partition: p,
                oneway: false,
            };
            acc.append("t", 3, lane, rec(b"x"), i, 1, t0);
            for b in acc.drain_ready(t0).batches {
                acc.finish(&b.topic, b.lane, b.id);
            }
            assert!(acc.is_empty());
        }
        assert_eq!(
            seen.len(),
            3,
            "one record at a time still spreads: {seen:?}"
        );
    }

    /// 1 KiB batches, `inflight` per partition, and `n` records of 300 bytes appended to
    /// partition 1 of "t".
    fn filled_with_300_byte_records(inflight: u32, n: u32) -> (Accumulator<u32>, Instant) {
        let t0 = Instant::now();
        let mut acc = Accumulator::<u32>::new(1024, Duration::from_secs(60), inflight, HOUR);
        let big = [7u8; 300];
        for i in 0..n {
            acc.append("t", 1, LANE0, rec(&big), i, 300, t0);
        }
        (acc, t0)
    }

    #[test]
    fn full_batch_is_sealed_and_one_batch_per_partition_is_in_flight() {
        let (mut acc, t0) = filled_with_300_byte_records(1, 10);
        // 10 records of ~300 bytes do not fit in three 1 KiB batches.
        let d = acc.drain_ready(t0);
        assert_eq!(d.batches.len(), 1, "only one in flight per partition");
        let first = &d.batches[0];
        assert!(first.bytes.len() <= 1024);
        let n_first = values(first).len();
        assert!(n_first >= 2);
        // Nothing more until the first completes.
        assert!(acc.drain_ready(t0).batches.is_empty());
        acc.finish("t", LANE0, first.id);
        let d2 = acc.drain_ready(t0);
        assert_eq!(d2.batches.len(), 1);
        assert!(d2.batches[0].id > first.id);
        // Order is kept across batches.
        assert_eq!(d2.batches[0].records[0].completion as usize, n_first);
    }

    #[test]
    fn open_batch_keeps_growing_while_its_partition_is_in_flight() {
        let t0 = Instant::now();
        let mut acc = Accumulator::<u32>::new(4096, Duration::ZERO, 1, HOUR);
        acc.append("t", 1, LANE0, rec(b"1"), 1, 1, t0);
        let d = acc.drain_ready(t0);
        assert_eq!(d.batches.len(), 1);
        acc.append("t", 1, LANE0, rec(b"2"), 2, 1, t0);
        acc.append("t", 1, LANE0, rec(b"3"), 3, 1, t0);
        let idle = acc.drain_ready(t0);
        assert!(idle.batches.is_empty());
        assert_eq!(
            idle.next_deadline, None,
            "in-flight partitions set no deadline"
        );
        acc.finish("t", LANE0, d.batches[0].id);
        let d = acc.drain_ready(t0);
        assert_eq!(values(&d.batches[0]), vec![b"2".to_vec(), b"3".to_vec()]);
    }

    #[test]
    fn seal_all_and_flush_bookkeeping() {
        let t0 = Instant::now();
        let mut acc = Accumulator::<u32>::new(4096, Duration::from_secs(60), 1, HOUR);
        let lane1 = Lane {
            partition: 1,
            oneway: false,
        };
        acc.append("t", 2, LANE0, rec(b"a"), 1, 1, t0);
        acc.append("t", 2, lane1, rec(b"b"), 2, 1, t0);
        let bound = acc.next_batch_id();
        assert!(!acc.completed_before(bound));
        acc.seal_all();
        let d = acc.drain_ready(t0);
        assert_eq!(d.batches.len(), 2);
        // A batch started after the flush does not hold the flush up.
        acc.append("t", 2, LANE0, rec(b"c"), 3, 1, t0);
        for b in &d.batches {
            acc.finish(&b.topic, b.lane, b.id);
        }
        assert!(acc.completed_before(bound));
        assert!(!acc.is_empty());
    }

    #[test]
    fn sticky_partition_moves_on_when_its_batch_is_sealed() {
        let t0 = Instant::now();
        let mut acc = Accumulator::<u32>::new(4096, Duration::ZERO, 1, HOUR);
        let p0 = acc.choose_partition("t", None, None, 3, Partitioning::KeyHash);
        assert_eq!(
            acc.choose_partition("t", None, None, 3, Partitioning::KeyHash),
            p0
        );
        let lane = Lane {
            partition: p0,
            oneway: false,
        };
        acc.append("t", 3, lane, rec(b"x"), 1, 1, t0);
        let d = acc.drain_ready(t0);
        assert_eq!(d.batches.len(), 1);
        let p1 = acc.choose_partition("t", None, None, 3, Partitioning::KeyHash);
        assert_eq!(p1, (p0 + 1) % 3);
        // Keys hash like Kafka; explicit partitions win.
        assert_eq!(
            acc.choose_partition("t", Some(b"foobar"), None, 50, Partitioning::KeyHash),
            16
        );
        assert_eq!(
            acc.choose_partition("t", Some(b"foobar"), Some(2), 50, Partitioning::KeyHash),
            2
        );
        let rr = acc.choose_partition("t", Some(b"foobar"), None, 50, Partitioning::RoundRobin);
        assert!(rr < 50);
    }

    #[test]
    fn several_batches_of_a_partition_go_out_in_order_up_to_the_limit() {
        let (mut acc, t0) = filled_with_300_byte_records(3, 20);
        let d = acc.drain_ready(t0);
        assert_eq!(d.batches.len(), 3, "three in flight at once");
        let ids: Vec<u64> = d.batches.iter().map(|b| b.id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
        assert!(acc.drain_ready(t0).batches.is_empty());
        acc.finish("t", LANE0, ids[0]);
        let d2 = acc.drain_ready(t0);
        assert_eq!(d2.batches.len(), 1);
        assert!(d2.batches[0].id > ids[2]);
    }

    #[test]
    fn fast_path_needs_a_known_and_fresh_partition_count() {
        let t0 = Instant::now();
        let mut acc = Accumulator::<u32>::new(4096, Duration::from_secs(60), 1, HOUR);
        let topic = Topic::from("t");
        let to = Destination {
            topic: &topic,
            key: None,
            partition: None,
            partitioning: Partitioning::KeyHash,
            oneway: false,
        };
        assert!(matches!(
            acc.try_append(to, rec(b"a"), 1, 1, || t0),
            Placed::NeedPartitions(1)
        ));
        let sticky = acc.choose_partition("t", None, None, 2, Partitioning::KeyHash);
        let lane = Lane {
            partition: sticky,
            oneway: false,
        };
        acc.append("t", 2, lane, rec(b"b"), 2, 1, t0);
        // Joins an open batch: no clock read at all.
        let placed = acc.try_append(to, rec(b"c"), 3, 1, || panic!("clock read"));
        assert!(matches!(placed, Placed::Batched { wake: false }));
        // A new batch with a partition count older than the limit goes the slow way.
        let explicit = Destination {
            partition: Some(1 - sticky),
            ..to
        };
        let placed = acc.try_append(explicit, rec(b"d"), 4, 1, || t0 + 2 * HOUR);
        assert!(matches!(placed, Placed::NeedPartitions(4)));
        let placed = acc.try_append(explicit, rec(b"d"), 4, 1, || t0);
        assert!(matches!(placed, Placed::Batched { wake: true }));
        let bad = Destination {
            partition: Some(5),
            ..to
        };
        assert!(matches!(
            acc.try_append(bad, rec(b"e"), 5, 1, || t0),
            Placed::NoSuchPartition {
                completion: 5,
                partitions: 2
            }
        ));
    }
}
