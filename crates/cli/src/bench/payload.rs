//! What a bench message carries, and the check of what the consumers read.
//!
//! Every value starts with a 32-byte stamp (big-endian), the rest is zero padding up to
//! `--message-size`:
//!
//! | byte | field        | why |
//! |-----:|--------------|-----|
//! | 0    | magic `WBv1` | tells bench messages from other data in a topic |
//! | 4    | run id       | tells this run's messages from an earlier run's |
//! | 8    | producer id  | per-producer order and completeness |
//! | 12   | reserved (0) | |
//! | 16   | sequence     | the producer's message number, from 0 |
//! | 24   | send time    | ns since the Unix epoch, read just before the send: end-to-end latency |
//!
//! The consumers' [`Verifier`] checks, per partition, that offsets arrive contiguous and
//! increasing, and per producer and partition that sequences only increase (order kept);
//! a bitmap per producer counts every sequence once, which finds duplicates and, against
//! what the producers had acknowledged, losses.

use bytes::{BufMut, Bytes, BytesMut};

/// Bytes of the stamp at the start of every value; the smallest `--message-size`.
pub const STAMP_BYTES: usize = 32;
const MAGIC: [u8; 4] = *b"WBv1";
/// Values are cut from chunks of this size, so a message costs no allocation of its own.
const CHUNK_BYTES: usize = 1024 * 1024;

/// The stamp of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub run: u32,
    pub producer: u32,
    pub seq: u64,
    pub sent_unix_ns: u64,
}

/// Writes stamped values of one producer.
#[derive(Debug)]
pub struct PayloadWriter {
    chunk: BytesMut,
    size: usize,
    run: u32,
    producer: u32,
}

impl PayloadWriter {
    pub fn new(run: u32, producer: u32, size: usize) -> Self {
        assert!(size >= STAMP_BYTES, "message size below the stamp");
        Self {
            chunk: BytesMut::new(),
            size,
            run,
            producer,
        }
    }

    /// The value of message `seq`, stamped with `sent_unix_ns`.
    pub fn value(&mut self, seq: u64, sent_unix_ns: u64) -> Bytes {
        if self.chunk.capacity() - self.chunk.len() < self.size {
            self.chunk = BytesMut::with_capacity(CHUNK_BYTES.max(self.size));
        }
        let mut stamp = [0u8; STAMP_BYTES];
        stamp[..4].copy_from_slice(&MAGIC);
        stamp[4..8].copy_from_slice(&self.run.to_be_bytes());
        stamp[8..12].copy_from_slice(&self.producer.to_be_bytes());
        stamp[16..24].copy_from_slice(&seq.to_be_bytes());
        stamp[24..32].copy_from_slice(&sent_unix_ns.to_be_bytes());
        let c = &mut self.chunk;
        c.put_slice(&stamp);
        c.put_bytes(0, self.size - STAMP_BYTES);
        c.split().freeze()
    }
}

/// The stamp of a value, if it is a bench message.
pub fn parse(value: &[u8]) -> Option<Stamp> {
    let head = value.first_chunk::<STAMP_BYTES>()?;
    if head[..4] != MAGIC {
        return None;
    }
    let u32_at = |i: usize| u32::from_be_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&head[i..i + 8]);
        u64::from_be_bytes(b)
    };
    Some(Stamp {
        run: u32_at(4),
        producer: u32_at(8),
        seq: u64_at(16),
        sent_unix_ns: u64_at(24),
    })
}

/// Counts of what a verifier saw; they add up across consumers.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Records read (this run's and others).
    pub records: u64,
    /// Records of this run.
    pub run_records: u64,
    /// Records without this run's stamp (older data in the topic).
    pub foreign: u64,
    /// Times an offset was skipped: the next record's offset was above the expected one.
    pub offset_gaps: u64,
    /// Times an offset did not increase.
    pub offset_regressions: u64,
    /// Times a producer's sequence did not increase within a partition.
    pub order_violations: u64,
    /// Messages of this run read more than once.
    pub duplicates: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.records += o.records;
        self.run_records += o.run_records;
        self.foreign += o.foreign;
        self.offset_gaps += o.offset_gaps;
        self.offset_regressions += o.offset_regressions;
        self.order_violations += o.order_violations;
        self.duplicates += o.duplicates;
    }
}

#[derive(Debug)]
struct PartCheck {
    /// Offset the next record must have; `None` until the first record (groups) or
    /// the start offset given by [`Verifier::expect_from`].
    next_offset: Option<i64>,
    /// Last sequence seen per producer in this partition.
    last_seq: Vec<Option<u64>>,
}

/// One bit per (producer, sequence), growing as needed.
#[derive(Debug, Default, Clone)]
struct Bits(Vec<u64>);

impl Bits {
    /// Sets bit `i`; returns whether it was set already.
    fn set(&mut self, i: u64) -> bool {
        let word = usize::try_from(i / 64).expect("sequence fits memory");
        if word >= self.0.len() {
            self.0.resize((word + 1).next_power_of_two(), 0);
        }
        let mask = 1u64 << (i % 64);
        let was = self.0[word] & mask != 0;
        self.0[word] |= mask;
        was
    }

    /// Ors `other` in; returns how many bits were set in both.
    fn merge(&mut self, other: &Bits) -> u64 {
        if other.0.len() > self.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        let mut both = 0;
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            both += u64::from((*a & *b).count_ones());
            *a |= *b;
        }
        both
    }

    fn count(&self) -> u64 {
        self.0.iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

/// Checks the records one consumer reads; verifiers of all consumers merge at the end.
#[derive(Debug)]
pub struct Verifier {
    run: u32,
    producers: usize,
    /// Indexed by partition number.
    parts: Vec<PartCheck>,
    seen: Vec<Bits>,
    pub counts: Counts,
}

impl Verifier {
    pub fn new(run: u32, producers: usize) -> Self {
        Self {
            run,
            producers,
            parts: Vec::new(),
            seen: vec![Bits::default(); producers],
            counts: Counts::default(),
        }
    }

    /// The first record read from `partition` must have offset `offset`.
    pub fn expect_from(&mut self, partition: u32, offset: i64) {
        self.part(partition).next_offset = Some(offset);
    }

    /// The offset the next record of `partition` should have, if known.
    pub fn next_offset(&self, partition: u32) -> Option<i64> {
        self.parts
            .get(partition as usize)
            .and_then(|p| p.next_offset)
    }

    fn part(&mut self, partition: u32) -> &mut PartCheck {
        let i = partition as usize;
        if i >= self.parts.len() {
            let producers = self.producers;
            self.parts.resize_with(i + 1, || PartCheck {
                next_offset: None,
                last_seq: vec![None; producers],
            });
        }
        &mut self.parts[i]
    }

    /// Checks one record; returns its send time if it is a message of this run.
    pub fn observe(&mut self, partition: u32, offset: i64, value: Option<&[u8]>) -> Option<u64> {
        let run = self.run;
        let producers = self.producers;
        self.counts.records += 1;
        let mut c = std::mem::take(&mut self.counts);
        let p = self.part(partition);
        match p.next_offset {
            Some(next) if offset > next => c.offset_gaps += 1,
            Some(next) if offset < next => c.offset_regressions += 1,
            _ => {}
        }
        p.next_offset = Some(offset + 1);
        let stamp = value.and_then(parse).filter(|s| s.run == run);
        let Some(s) = stamp.filter(|s| (s.producer as usize) < producers) else {
            c.foreign += 1;
            self.counts = c;
            return None;
        };
        c.run_records += 1;
        let slot = &mut p.last_seq[s.producer as usize];
        if slot.is_some_and(|last| s.seq <= last) {
            c.order_violations += 1;
        }
        *slot = Some(s.seq);
        if self.seen[s.producer as usize].set(s.seq) {
            c.duplicates += 1;
        }
        self.counts = c;
        Some(s.sent_unix_ns)
    }

    /// Adds another consumer's findings; a message both read counts as a duplicate.
    pub fn merge(&mut self, other: Verifier) {
        self.counts.add(&other.counts);
        for (mine, theirs) in self.seen.iter_mut().zip(&other.seen) {
            self.counts.duplicates += mine.merge(theirs);
        }
    }

    /// Distinct messages of each producer that were read.
    pub fn distinct_per_producer(&self) -> Vec<u64> {
        self.seen.iter().map(Bits::count).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_values_have_the_asked_size() {
        let mut w = PayloadWriter::new(7, 3, 100);
        let v = w.value(42, 1_234);
        assert_eq!(v.len(), 100);
        assert_eq!(
            parse(&v),
            Some(Stamp {
                run: 7,
                producer: 3,
                seq: 42,
                sent_unix_ns: 1_234
            })
        );
        assert_eq!(parse(b"not a bench message, long enough....."), None);
        assert_eq!(parse(b"WBv1"), None);
    }

    #[test]
    fn verifier_finds_gaps_reorders_duplicates_and_foreign_records() {
        let mut w = PayloadWriter::new(1, 0, 32);
        let mut v = Verifier::new(1, 2);
        v.expect_from(0, 10);
        assert_eq!(v.observe(0, 10, Some(&w.value(0, 5))), Some(5));
        v.observe(0, 11, Some(&w.value(1, 5)));
        assert_eq!(v.counts.offset_gaps + v.counts.order_violations, 0);
        v.observe(0, 13, Some(&w.value(0, 5))); // gap, older sequence, and seen before
        assert_eq!(v.counts.offset_gaps, 1);
        assert_eq!(v.counts.order_violations, 1);
        assert_eq!(v.counts.duplicates, 1);
        assert_eq!(v.observe(0, 14, Some(b"other data")), None);
        assert_eq!(v.counts.foreign, 1);
        v.observe(0, 14, Some(&w.value(2, 5)));
        assert_eq!(v.counts.offset_regressions, 1);

        let mut other = Verifier::new(1, 2);
        other.observe(1, 0, Some(&w.value(2, 5))); // also read by the first verifier
        other.observe(1, 1, Some(&w.value(3, 5)));
        v.merge(other);
        assert_eq!(v.counts.duplicates, 2);
        assert_eq!(v.distinct_per_producer(), vec![4, 0]);
        assert_eq!(v.counts.records, 7);
        assert_eq!(v.counts.run_records, 6);
    }
}
