//! The 61-byte batch header, validation and the two patchable fields.

use crate::RecordError;

/// Bytes of the fixed batch header before the first record.
pub const BATCH_HEADER_BYTES: usize = 61;
/// Bytes before `batchLength` starts counting: baseOffset (8) and batchLength (4).
pub const LOG_OVERHEAD_BYTES: usize = 12;
/// The only supported magic value.
pub const MAGIC_V2: i8 = 2;

const BATCH_LENGTH_AT: usize = 8;
const LEADER_EPOCH_AT: usize = 12;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
pub(crate) const ATTRIBUTES_OFFSET: usize = 21;
const ATTRIBUTES_AT: usize = ATTRIBUTES_OFFSET;
/// Smallest legal batchLength: a header with no records.
const BATCH_LENGTH_MIN: i32 = (BATCH_HEADER_BYTES - LOG_OVERHEAD_BYTES) as i32;

const COMPRESSION_MASK: i16 = 0x07;
const TRANSACTIONAL_FLAG: i16 = 0x10;
const CONTROL_FLAG: i16 = 0x20;

const _: () = assert!(CRC_AT + 4 == ATTRIBUTES_AT);
const _: () = assert!(BATCH_LENGTH_MIN == 49);

/// Compression codec from the low three bits of `attributes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Records are stored as they are.
    None,
    /// gzip.
    Gzip,
    /// Snappy (xerial framing).
    Snappy,
    /// LZ4 frame.
    Lz4,
    /// Zstandard.
    Zstd,
    /// A codec id this version does not know.
    Unknown(u8),
}

impl Compression {
    fn from_attributes(attributes: i16) -> Self {
        match (attributes & COMPRESSION_MASK) as u8 {
            0 => Self::None,
            1 => Self::Gzip,
            2 => Self::Snappy,
            3 => Self::Lz4,
            4 => Self::Zstd,
            other => Self::Unknown(other),
        }
    }
}

/// The parsed fixed header of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: i64,
    /// Bytes after this field: total size minus [`LOG_OVERHEAD_BYTES`].
    pub batch_length: i32,
    /// Leader term that appended the batch.
    pub partition_leader_epoch: i32,
    /// Format version, always 2.
    pub magic: i8,
    /// CRC-32C over `attributes` to the end.
    pub crc: u32,
    /// Compression, timestamp type, transactional and control flags.
    pub attributes: i16,
    /// Offset of the last record relative to `base_offset`.
    pub last_offset_delta: i32,
    /// Timestamp of the first record (ms).
    pub base_timestamp: i64,
    /// Largest record timestamp (ms).
    pub max_timestamp: i64,
    /// Idempotent producer id, or -1.
    pub producer_id: i64,
    /// Idempotent producer epoch, or -1.
    pub producer_epoch: i16,
    /// Sequence number of the first record, or -1.
    pub base_sequence: i32,
    /// Number of records.
    pub records_count: i32,
}

fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

impl BatchHeader {
    /// Parses the fixed header. Checks magic and that `batchLength` is plausible; does not
    /// check the CRC or that the whole batch is present.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, RecordError> {
        if buf.len() < BATCH_HEADER_BYTES {
            return Err(RecordError::Truncated {
                need: BATCH_HEADER_BYTES,
                have: buf.len(),
            });
        }
        let magic = buf[MAGIC_AT] as i8;
        if magic != MAGIC_V2 {
            return Err(RecordError::BadMagic(magic));
        }
        let batch_length = i32_at(buf, BATCH_LENGTH_AT);
        if batch_length < BATCH_LENGTH_MIN {
            return Err(RecordError::BadLength(batch_length.into()));
        }
        Ok(BatchHeader {
            base_offset: i64_at(buf, 0),
            batch_length,
            partition_leader_epoch: i32_at(buf, LEADER_EPOCH_AT),
            magic,
            crc: i32_at(buf, CRC_AT) as u32,
            attributes: i16_at(buf, ATTRIBUTES_AT),
            last_offset_delta: i32_at(buf, 23),
            base_timestamp: i64_at(buf, 27),
            max_timestamp: i64_at(buf, 35),
            producer_id: i64_at(buf, 43),
            producer_epoch: i16_at(buf, 51),
            base_sequence: i32_at(buf, 53),
            records_count: i32_at(buf, 57),
        })
    }

    /// Size of the whole batch in bytes.
    pub fn total_bytes(&self) -> usize {
        // batch_length >= BATCH_LENGTH_MIN > 0 was checked by `parse`.
        LOG_OVERHEAD_BYTES + self.batch_length as usize
    }

    /// Offset of the last record. Saturates at `i64::MAX` (or `MIN`) for a corrupt or
    /// hostile header whose base offset plus delta would overflow.
    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .saturating_add(i64::from(self.last_offset_delta))
    }

    /// Compression codec of the records.
    pub fn compression(&self) -> Compression {
        Compression::from_attributes(self.attributes)
    }

    /// Whether the batch belongs to a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_FLAG != 0
    }

    /// Whether the batch holds control records (transaction markers).
    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_FLAG != 0
    }
}

/// Validates that `buf` is exactly one whole batch: header, length, CRC-32C and counts.
pub fn validate_batch(buf: &[u8]) -> Result<BatchHeader, RecordError> {
    let h = BatchHeader::parse(buf)?;
    if h.total_bytes() != buf.len() {
        return Err(RecordError::BadLength(h.batch_length.into()));
    }
    let computed = crc32c::crc32c(&buf[ATTRIBUTES_AT..]);
    if computed != h.crc {
        return Err(RecordError::CrcMismatch {
            stored: h.crc,
            computed,
        });
    }
    if h.records_count < 0 || h.last_offset_delta < 0 {
        return Err(RecordError::Invalid(
            "negative record count or offset delta",
        ));
    }
    if h.compression() == Compression::None
        && h.records_count > 0
        && i64::from(h.last_offset_delta) != i64::from(h.records_count) - 1
    {
        return Err(RecordError::Invalid(
            "lastOffsetDelta disagrees with recordsCount",
        ));
    }
    if let Compression::Unknown(_) = h.compression() {
        return Err(RecordError::Invalid("unknown compression codec"));
    }
    Ok(h)
}

/// Writes `baseOffset`. Not covered by the CRC, so the batch stays valid.
///
/// # Panics
/// If `buf` is shorter than a header: callers validate first.
pub fn set_base_offset(buf: &mut [u8], base_offset: i64) {
    buf[0..8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Writes `partitionLeaderEpoch`. Not covered by the CRC, so the batch stays valid.
///
/// # Panics
/// If `buf` is shorter than a header: callers validate first.
pub fn set_partition_leader_epoch(buf: &mut [u8], epoch: i32) {
    buf[LEADER_EPOCH_AT..LEADER_EPOCH_AT + 4].copy_from_slice(&epoch.to_be_bytes());
}

/// Iterates over concatenated batches, checking each header (not the CRC).
///
/// Stops at a trailing partial batch, which is normal at the end of a fetch; use
/// [`BatchIter::consumed`] to learn how many bytes were whole batches.
#[derive(Debug)]
pub struct BatchIter<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> BatchIter<'a> {
    /// Starts at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            failed: false,
        }
    }

    /// Bytes of whole batches yielded so far.
    pub fn consumed(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<(BatchHeader, &'a [u8]), RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let rest = &self.buf[self.pos..];
        if rest.len() < BATCH_HEADER_BYTES {
            return None;
        }
        let h = match BatchHeader::parse(rest) {
            Ok(h) => h,
            Err(e) => {
                self.failed = true;
                return Some(Err(e));
            }
        };
        let len = h.total_bytes();
        if rest.len() < len {
            return None;
        }
        self.pos += len;
        Some(Ok((h, &rest[..len])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BatchBuilder, Record};

    fn batch(n: usize) -> bytes::BytesMut {
        let mut b = BatchBuilder::new(1000);
        for i in 0..n {
            let v = format!("value-{i}");
            b.push(Record {
                timestamp_ms: 1000 + i as i64,
                key: None,
                value: Some(v.as_bytes()),
                headers: &[],
            });
        }
        b.finish()
    }

    #[test]
    fn patching_keeps_crc_valid() {
        let mut b = batch(3);
        set_base_offset(&mut b, 42);
        set_partition_leader_epoch(&mut b, 7);
        let h = validate_batch(&b).expect("valid");
        assert_eq!(h.base_offset, 42);
        assert_eq!(h.partition_leader_epoch, 7);
        assert_eq!(h.last_offset(), 44);
        assert_eq!(h.max_timestamp, 1002);
    }

    /// Found by the `record_batch` fuzz target (fuzz/): a header with a base offset near
    /// `i64::MAX` made `last_offset` overflow (a panic in debug builds, a wrapped, negative
    /// offset in release builds). `FOUND` is the fuzzer's input; the target's first byte
    /// (odd) asks it to fix up the length, magic and CRC of the rest, as done here.
    #[test]
    fn last_offset_near_i64_max_saturates_instead_of_overflowing() {
        const FOUND: [u8; 62] = [
            0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbf, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0x06, 0x00, 0xff, 0x00, 0x00, 0xff, 0x00, 0x00, 0x00, 0x00, 0xf9, 0x00, 0xff,
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xbf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x06, 0x00, 0xff, 0x00, 0x00, 0xff,
            0x00, 0x00, 0x00, 0x00, 0xf9, 0x00,
        ];
        let mut b = FOUND[1..].to_vec();
        let len = (b.len() - 12) as i32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
        b[16] = 2;
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        let h = BatchHeader::parse(&b).expect("a header");
        assert_eq!(h.last_offset(), i64::MAX);

        let mut b = batch(3);
        set_base_offset(&mut b, i64::MAX - 1);
        assert_eq!(
            BatchHeader::parse(&b).expect("header").last_offset(),
            i64::MAX
        );
    }

    #[test]
    fn every_flipped_bit_after_crc_is_detected() {
        let b = batch(2);
        for i in ATTRIBUTES_AT..b.len() {
            for bit in 0..8 {
                let mut c = b.clone();
                c[i] ^= 1 << bit;
                assert!(validate_batch(&c).is_err(), "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn truncation_anywhere_is_an_error() {
        let b = batch(2);
        for cut in 0..b.len() {
            assert!(validate_batch(&b[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn iter_stops_at_partial_tail() {
        let mut all = Vec::new();
        all.extend_from_slice(&batch(1));
        all.extend_from_slice(&batch(2));
        let whole = all.len();
        all.extend_from_slice(&batch(1)[..30]);
        let mut it = BatchIter::new(&all);
        assert_eq!(it.by_ref().count(), 2);
        assert_eq!(it.consumed(), whole);
    }

    #[test]
    fn bad_magic_and_length_rejected() {
        let mut b = batch(1);
        b[MAGIC_AT] = 1;
        assert_eq!(validate_batch(&b), Err(RecordError::BadMagic(1)));
        let mut b = batch(1);
        b[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(matches!(
            validate_batch(&b),
            Err(RecordError::BadLength(-5))
        ));
    }
}
