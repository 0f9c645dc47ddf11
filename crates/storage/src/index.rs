//! The sparse offset index and time index of one segment, in memory and on disk.
//!
//! Offset index entry (8 bytes): relative offset `u32` BE, byte position `u32` BE.
//! Time index entry (12 bytes): max timestamp so far `i64` BE, relative offset `u32` BE.
//! The first batch of a segment is always indexed, then one entry each time at least
//! `index_interval_bytes` were written since the last entry.
//!
//! On disk each file is its entries followed by a 4-byte trailer: the CRC-32C of the
//! entries, big-endian. A flipped bit anywhere in an index file is therefore found when
//! the log opens, and the index is rebuilt from the segment instead of sending reads to
//! the wrong place.

use weir_record::BATCH_HEADER_BYTES;

/// Bytes of one offset index entry.
pub(crate) const OFFSET_ENTRY_BYTES: usize = 8;
/// Bytes of one time index entry.
pub(crate) const TIME_ENTRY_BYTES: usize = 12;
/// Max timestamp of a segment that holds no batch.
pub(crate) const NO_TIMESTAMP: i64 = i64::MIN;
/// Bytes of the CRC-32C trailer after the entries of an index file.
pub(crate) const INDEX_TRAILER_BYTES: usize = 4;

/// `entries` followed by their CRC-32C (big-endian): an index file's bytes.
fn with_trailer(mut entries: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&entries);
    entries.extend_from_slice(&crc.to_be_bytes());
    entries
}

/// The entries of an index file whose trailer checks out.
fn strip_trailer(file: &[u8]) -> Result<&[u8], &'static str> {
    let Some((entries, crc)) = file.split_last_chunk::<INDEX_TRAILER_BYTES>() else {
        return Err("index file is shorter than its checksum");
    };
    if crc32c::crc32c(entries) != u32::from_be_bytes(*crc) {
        return Err("index file checksum mismatch");
    }
    Ok(entries)
}

/// One offset index entry: the batch whose base offset is `base + rel` starts at `pos`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    /// Base offset of the batch, relative to the segment's base offset.
    pub(crate) rel: u32,
    /// Byte position of the batch in the segment file.
    pub(crate) pos: u32,
}

/// One time index entry: every batch up to and including the one at `rel` has a max
/// timestamp `<= ts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    /// Largest batch max timestamp seen so far in the segment.
    pub(crate) ts: i64,
    /// Relative base offset of the batch at which `ts` was recorded.
    pub(crate) rel: u32,
}

/// The in-memory indexes of one segment; bounded by `segment bytes / interval` entries.
#[derive(Debug, Clone)]
pub(crate) struct SegmentIndex {
    /// Bytes written between two offset index entries.
    interval: u32,
    /// Offset index, strictly increasing in `rel` and `pos`.
    offsets: Vec<OffsetEntry>,
    /// Time index, strictly increasing in `ts`, non-decreasing in `rel`.
    times: Vec<TimeEntry>,
    /// Largest batch max timestamp in the segment, [`NO_TIMESTAMP`] when empty.
    max_timestamp: i64,
    /// Relative base offset of the last batch, for the final time entry at seal.
    last_rel: Option<u32>,
    /// Bytes written since the last offset index entry, the one it points at included.
    bytes_since_entry: u64,
}

/// Upper bound on entries for a segment of `segment_bytes`: each entry names a distinct
/// batch, plus one final time entry. Bounds how much of an index file recovery reads.
pub(crate) fn entries_max(segment_bytes: u64) -> u64 {
    segment_bytes / BATCH_HEADER_BYTES as u64 + 1
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl SegmentIndex {
    /// An empty index.
    pub(crate) fn new(interval: u32) -> Self {
        Self {
            interval,
            offsets: Vec::new(),
            times: Vec::new(),
            max_timestamp: NO_TIMESTAMP,
            last_rel: None,
            bytes_since_entry: 0,
        }
    }

    /// Records a batch of `total` bytes at `pos`, adding entries when due.
    pub(crate) fn observe(&mut self, rel: u32, pos: u32, total: u32, max_timestamp: i64) {
        self.max_timestamp = self.max_timestamp.max(max_timestamp);
        if self.offsets.is_empty() || self.bytes_since_entry >= u64::from(self.interval) {
            debug_assert!(
                self.offsets
                    .last()
                    .is_none_or(|e| e.rel < rel && e.pos < pos)
            );
            self.offsets.push(OffsetEntry { rel, pos });
            self.bytes_since_entry = 0;
            self.push_time(rel);
        }
        self.bytes_since_entry += u64::from(total);
        self.last_rel = Some(rel);
    }

    fn push_time(&mut self, rel: u32) {
        if self.times.last().is_none_or(|t| self.max_timestamp > t.ts) {
            self.times.push(TimeEntry {
                ts: self.max_timestamp,
                rel,
            });
        }
    }

    /// Adds a final time entry so the last entry carries the segment's max timestamp,
    /// which is how a sealed segment's max timestamp survives a restart.
    pub(crate) fn seal(&mut self) {
        if let Some(rel) = self.last_rel {
            self.push_time(rel);
        }
    }

    /// Largest batch max timestamp, [`NO_TIMESTAMP`] if the segment is empty.
    pub(crate) fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }

    /// The last entry at or before relative offset `rel`, or the segment start.
    pub(crate) fn floor(&self, rel: u32) -> OffsetEntry {
        let n = self.offsets.partition_point(|e| e.rel <= rel);
        n.checked_sub(1)
            .map_or(OffsetEntry { rel: 0, pos: 0 }, |i| self.offsets[i])
    }

    /// An offset index entry from which walking forward reaches the first batch whose max
    /// timestamp is `>= ts`: every batch before it has a smaller max timestamp.
    pub(crate) fn time_floor(&self, ts: i64) -> OffsetEntry {
        let n = self.times.partition_point(|t| t.ts < ts);
        n.checked_sub(1)
            .map_or(OffsetEntry { rel: 0, pos: 0 }, |i| {
                self.floor(self.times[i].rel)
            })
    }

    /// Drops everything from byte `pos` (relative offset `end_rel`) on. `tail_max_timestamp`
    /// and `tail_last_rel` describe the kept batches from the floor entry before `pos` to
    /// `pos`, which the caller walked to find the cut.
    pub(crate) fn truncate(
        &mut self,
        pos: u32,
        end_rel: u32,
        tail_max_timestamp: i64,
        tail_last_rel: Option<u32>,
    ) {
        self.offsets.retain(|e| e.pos < pos);
        self.times.retain(|t| t.rel < end_rel);
        self.max_timestamp = self
            .times
            .last()
            .map_or(NO_TIMESTAMP, |t| t.ts)
            .max(tail_max_timestamp);
        self.last_rel = tail_last_rel;
        self.bytes_since_entry = self.offsets.last().map_or(0, |e| u64::from(pos - e.pos));
    }

    /// The offset index file's bytes: entries, then their CRC-32C.
    pub(crate) fn encode_offsets(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(self.offsets.len() * OFFSET_ENTRY_BYTES + INDEX_TRAILER_BYTES);
        for e in &self.offsets {
            out.extend_from_slice(&e.rel.to_be_bytes());
            out.extend_from_slice(&e.pos.to_be_bytes());
        }
        with_trailer(out)
    }

    /// The time index file's bytes: entries, then their CRC-32C.
    pub(crate) fn encode_times(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.times.len() * TIME_ENTRY_BYTES + INDEX_TRAILER_BYTES);
        for t in &self.times {
            out.extend_from_slice(&t.ts.to_be_bytes());
            out.extend_from_slice(&t.rel.to_be_bytes());
        }
        with_trailer(out)
    }

    /// Continues a decoded index as the active segment's, after a clean shutdown, from
    /// its last offset entry: the batch there is based at relative offset `rel` and is
    /// `bytes` long. The caller then [`observe`](Self::observe)s every later batch, which
    /// adds whatever entries the files lacked, so appends go on exactly as if the process
    /// had never stopped.
    pub(crate) fn resume_at(&mut self, rel: u32, bytes: u32) {
        self.last_rel = Some(rel);
        self.bytes_since_entry = u64::from(bytes);
    }

    /// The last offset index entry, if any.
    pub(crate) fn last_offset_entry(&self) -> Option<OffsetEntry> {
        self.offsets.last().copied()
    }

    /// Decodes and checks a sealed segment's index files: checksum trailer, whole
    /// entries, first entry at the segment start, strictly monotonic, positions inside the
    /// segment, relative offsets at most `rel_max`. The caller still checks that the last
    /// entry points at a batch header.
    pub(crate) fn decode(
        interval: u32,
        offsets: &[u8],
        times: &[u8],
        segment_bytes: u64,
        rel_max: u32,
    ) -> Result<Self, &'static str> {
        let offsets = strip_trailer(offsets)?;
        let times = strip_trailer(times)?;
        let whole = |b: &[u8], n: usize| b.chunks_exact(n).remainder().is_empty();
        if !whole(offsets, OFFSET_ENTRY_BYTES) || !whole(times, TIME_ENTRY_BYTES) {
            return Err("index size is not a whole number of entries");
        }
        if offsets.is_empty() || times.is_empty() {
            return Err("index is empty");
        }
        let mut index = Self::new(interval);
        for e in offsets.chunks_exact(OFFSET_ENTRY_BYTES) {
            let e = OffsetEntry {
                rel: u32_at(e, 0),
                pos: u32_at(e, 4),
            };
            let monotonic = match index.offsets.last() {
                None => e.rel == 0 && e.pos == 0,
                Some(prev) => prev.rel < e.rel && prev.pos < e.pos,
            };
            if !monotonic {
                return Err("offset index entries are not strictly increasing from (0, 0)");
            }
            if u64::from(e.pos) >= segment_bytes || e.rel > rel_max {
                return Err("offset index entry points outside the segment");
            }
            index.offsets.push(e);
        }
        for t in times.chunks_exact(TIME_ENTRY_BYTES) {
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&t[..8]);
            let t = TimeEntry {
                ts: i64::from_be_bytes(ts),
                rel: u32_at(t, 8),
            };
            if index
                .times
                .last()
                .is_some_and(|prev| prev.ts >= t.ts || prev.rel > t.rel)
            {
                return Err("time index entries are not increasing");
            }
            if t.rel > rel_max {
                return Err("time index entry points outside the segment");
            }
            index.times.push(t);
        }
        index.max_timestamp = index.times.last().map_or(NO_TIMESTAMP, |t| t.ts);
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_entries_and_lookups() {
        let mut ix = SegmentIndex::new(100);
        // Batches of 60 bytes at offsets 0, 2, 4, ...: an entry every second batch.
        for i in 0..10u32 {
            ix.observe(i * 2, i * 60, 60, 1000 + i64::from(i));
        }
        let rels: Vec<u32> = ix.offsets.iter().map(|e| e.rel).collect();
        assert_eq!(rels, vec![0, 4, 8, 12, 16]);
        assert_eq!(ix.floor(5), OffsetEntry { rel: 4, pos: 120 });
        assert_eq!(ix.floor(0), OffsetEntry { rel: 0, pos: 0 });
        assert_eq!(ix.floor(100).rel, 16);
        assert_eq!(ix.max_timestamp(), 1009);
        // ts 1005 first appears in the batch at rel 10; the floor must be at or before it.
        let pos = ix.time_floor(1005).pos;
        assert!(pos <= 5 * 60, "{pos}");
        assert_eq!(ix.time_floor(0), OffsetEntry { rel: 0, pos: 0 });
    }

    #[test]
    fn encode_decode_round_trip_after_seal() {
        let mut ix = SegmentIndex::new(1);
        for i in 0..5u32 {
            ix.observe(i, i * 70, 70, 50 - i64::from(i));
        }
        ix.observe(5, 350, 70, 99);
        ix.seal();
        let back = SegmentIndex::decode(1, &ix.encode_offsets(), &ix.encode_times(), 420, 5)
            .expect("valid index");
        assert_eq!(back.offsets, ix.offsets);
        assert_eq!(back.times, ix.times);
        assert_eq!(back.max_timestamp(), 99);
    }

    #[test]
    fn decode_rejects_damage() {
        let mut ix = SegmentIndex::new(1);
        for i in 0..3u32 {
            ix.observe(i, i * 70, 70, i64::from(i));
        }
        let (o, t) = (ix.encode_offsets(), ix.encode_times());
        assert!(SegmentIndex::decode(1, &o[..o.len() - 1], &t, 210, 2).is_err());
        assert!(
            SegmentIndex::decode(1, &o, &t, 100, 2).is_err(),
            "position past end"
        );
        assert!(
            SegmentIndex::decode(1, &o, &t, 210, 1).is_err(),
            "offset past end"
        );
        let mut swapped = o.clone();
        swapped[8..16].copy_from_slice(&o[16..24]);
        swapped[16..24].copy_from_slice(&o[8..16]);
        assert!(SegmentIndex::decode(1, &swapped, &t, 210, 2).is_err());
        assert!(SegmentIndex::decode(1, &[], &t, 210, 2).is_err());
    }

    #[test]
    fn truncate_keeps_entries_before_the_cut() {
        let mut ix = SegmentIndex::new(1);
        for i in 0..6u32 {
            ix.observe(i, i * 70, 70, 10 * i64::from(i));
        }
        ix.truncate(3 * 70, 3, 20, Some(2));
        assert_eq!(ix.offsets.len(), 3);
        assert_eq!(ix.max_timestamp(), 20);
        assert_eq!(ix.times.last().map(|t| t.rel), Some(2));
        ix.observe(3, 210, 70, 5);
        assert_eq!(ix.offsets.len(), 4);
    }
}
