//! The record accumulator: per-partition batches, sealed when full or when their linger
//! expires, with at most one batch in flight per partition so that a partition's records
//! are appended in the order they were sent.
//!
//! Pure bookkeeping: no I/O, no clock reads, no async. The producer's sender task calls
//! [`Accumulator::drain_ready`] with the current time and sends what it returns; this is
//! what the unit tests below drive directly.

use std::collections::hash_map::{Entry, RandomState};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_record::{BATCH_HEADER_BYTES, BatchBuilder, Record};

use crate::config::Partitioning;
use crate::partitioner::partition_for_key;

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
    pub topic: Arc<str>,
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
    in_flight: bool,
}

impl<C> PartQueue<C> {
    fn is_idle(&self) -> bool {
        self.open.is_none() && self.ready.is_empty() && !self.in_flight
    }
}

#[derive(Debug)]
struct TopicQueues<C> {
    name: Arc<str>,
    parts: HashMap<Lane, PartQueue<C>>,
    /// Partition that records without key (or under round-robin) stick to.
    sticky: u32,
    /// Partition count last seen for the topic.
    partitions: u32,
}

/// What [`Accumulator::drain_ready`] hands to the sender.
#[derive(Debug)]
pub(crate) struct Drained<C> {
    /// Batches to send now; their partitions are marked in flight.
    pub batches: Vec<SealedBatch<C>>,
    /// When the next open batch's linger expires, if any partition is waiting for one.
    pub next_deadline: Option<Instant>,
}

/// Per-partition batches of one producer.
#[derive(Debug)]
pub(crate) struct Accumulator<C> {
    topics: HashMap<Arc<str>, TopicQueues<C>>,
    batch_bytes_max: usize,
    linger: Duration,
    next_batch_id: u64,
    /// Ids of batches not yet completed, for flush.
    live: BTreeSet<u64>,
    /// Seed for the first sticky partition of a topic, so producers spread out.
    seed: u64,
}

impl<C> Accumulator<C> {
    pub(crate) fn new(batch_bytes_max: usize, linger: Duration) -> Self {
        assert!(batch_bytes_max > BATCH_HEADER_BYTES);
        Self {
            topics: HashMap::new(),
            batch_bytes_max,
            linger,
            next_batch_id: 0,
            live: BTreeSet::new(),
            seed: RandomState::new().build_hasher().finish(),
        }
    }

    /// Largest record (as bounded by the caller) that fits an empty batch.
    pub(crate) fn record_bytes_max(&self) -> usize {
        self.batch_bytes_max - BATCH_HEADER_BYTES
    }

    fn topic_mut(&mut self, topic: &str, partitions: u32) -> &mut TopicQueues<C> {
        if !self.topics.contains_key(topic) {
            let name: Arc<str> = Arc::from(topic);
            let sticky = (self.seed % u64::from(partitions.max(1))) as u32;
            self.topics.insert(
                name.clone(),
                TopicQueues {
                    name,
                    parts: HashMap::new(),
                    sticky,
                    partitions,
                },
            );
        }
        let t = self.topics.get_mut(topic).expect("inserted above");
        if t.partitions != partitions {
            t.partitions = partitions;
            t.sticky %= partitions.max(1);
        }
        t
    }

    /// The partition for a record: the explicit one, the key's hash, or the sticky one.
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
            _ => self.topic_mut(topic, partitions).sticky,
        }
    }

    /// Appends a record to its partition's open batch, sealing that batch first if the
    /// record does not fit and after if the batch is full. Returns whether the sender
    /// should be woken (a batch was started or sealed).
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
        let batch_bytes_max = self.batch_bytes_max;
        let mut next_id = self.next_batch_id;
        let mut wake = false;
        let t = self.topic_mut(topic, partitions);
        let q = t.parts.entry(lane).or_insert_with(|| PartQueue {
            open: None,
            ready: VecDeque::new(),
            in_flight: false,
        });
        if let Some(open) = &q.open
            && open.builder.size_bytes() + open.builder.record_bytes(&record) > batch_bytes_max
        {
            let b = q.open.take().expect("checked");
            q.ready.push_back(seal(b, &t.name, lane));
            advance_sticky(t, lane);
            wake = true;
        }
        let q = t.parts.get_mut(&lane).expect("inserted above");
        let mut started = None;
        let open = q.open.get_or_insert_with(|| {
            started = Some(next_id);
            next_id += 1;
            OpenBatch {
                id: started.expect("set"),
                builder: BatchBuilder::new(record.timestamp_ms),
                created: now,
                records: Vec::new(),
                reserved_bytes: 0,
            }
        });
        assert!(
            open.builder.size_bytes() + open.builder.record_bytes(&record) <= batch_bytes_max,
            "record larger than an empty batch"
        );
        open.builder.push(record);
        open.records.push(Pending {
            timestamp_ms: record.timestamp_ms,
            completion,
        });
        open.reserved_bytes += reserved_bytes;
        let full = open.builder.size_bytes() + 64 > batch_bytes_max;
        if full {
            let b = q.open.take().expect("present");
            q.ready.push_back(seal(b, &t.name, lane));
            advance_sticky(t, lane);
            wake = true;
        }
        if let Some(id) = started {
            self.live.insert(id);
            self.next_batch_id = next_id;
            wake = true;
        }
        wake
    }

    /// Takes the batches that can be sent now: for each partition not in flight, its
    /// oldest sealed batch, or its open batch once the linger has expired.
    pub(crate) fn drain_ready(&mut self, now: Instant) -> Drained<C> {
        let mut batches = Vec::new();
        let mut next_deadline: Option<Instant> = None;
        let linger = self.linger;
        for t in self.topics.values_mut() {
            let mut sealed_sticky = Vec::new();
            for (lane, q) in &mut t.parts {
                if q.in_flight {
                    continue;
                }
                if let Some(b) = q.ready.pop_front() {
                    q.in_flight = true;
                    batches.push(b);
                    continue;
                }
                let Some(open) = &q.open else { continue };
                let deadline = open.created + linger;
                if deadline <= now {
                    let b = q.open.take().expect("present");
                    q.in_flight = true;
                    batches.push(seal(b, &t.name, *lane));
                    sealed_sticky.push(*lane);
                } else {
                    next_deadline = Some(next_deadline.map_or(deadline, |d| d.min(deadline)));
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
        for t in self.topics.values_mut() {
            let mut sealed = Vec::new();
            for (lane, q) in &mut t.parts {
                if let Some(b) = q.open.take() {
                    q.ready.push_back(seal(b, &t.name, *lane));
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
        self.live.remove(&id);
        let Some(t) = self.topics.get_mut(topic) else {
            return;
        };
        if let Entry::Occupied(mut e) = t.parts.entry(lane) {
            e.get_mut().in_flight = false;
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
        self.live.first().is_none_or(|&oldest| oldest >= id_bound)
    }

    /// Id the next batch will get; batches started so far have smaller ids.
    pub(crate) fn next_batch_id(&self) -> u64 {
        self.next_batch_id
    }

    /// Whether no record is waiting or in flight.
    pub(crate) fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

fn seal<C>(b: OpenBatch<C>, topic: &Arc<str>, lane: Lane) -> SealedBatch<C> {
    SealedBatch {
        id: b.id,
        topic: topic.clone(),
        lane,
        bytes: b.builder.finish().freeze(),
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
        let mut acc = Accumulator::<u32>::new(4096, Duration::from_millis(10));
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
        let mut acc = Accumulator::<u32>::new(4096, Duration::ZERO);
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

    #[test]
    fn full_batch_is_sealed_and_one_batch_per_partition_is_in_flight() {
        let t0 = Instant::now();
        let mut acc = Accumulator::<u32>::new(1024, Duration::from_secs(60));
        let big = [7u8; 300];
        for i in 0..10 {
            acc.append("t", 1, LANE0, rec(&big), i, 300, t0);
        }
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
        let mut acc = Accumulator::<u32>::new(4096, Duration::ZERO);
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
        let mut acc = Accumulator::<u32>::new(4096, Duration::from_secs(60));
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
        let mut acc = Accumulator::<u32>::new(4096, Duration::ZERO);
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
}
