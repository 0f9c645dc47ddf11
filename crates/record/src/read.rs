//! Reading the records of an uncompressed batch.

use crate::RecordError;
use crate::header::{BATCH_HEADER_BYTES, BatchHeader, Compression, validate_batch};
use crate::varint::{get_varint, get_varlong};

/// One record borrowed from a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// Absolute offset (batch base offset + delta).
    pub offset: i64,
    /// Timestamp (ms).
    pub timestamp_ms: i64,
    /// Key, or `None` for a null key.
    pub key: Option<&'a [u8]>,
    /// Value, or `None` for a null value.
    pub value: Option<&'a [u8]>,
    /// Headers in order. A header key that is not UTF-8 is an error.
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
}

/// An owned copy of a record, for callers that outlive the fetched buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRecord {
    /// Absolute offset.
    pub offset: i64,
    /// Timestamp (ms).
    pub timestamp_ms: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl RecordView<'_> {
    /// Copies the record out of the batch.
    pub fn to_owned_record(&self) -> OwnedRecord {
        OwnedRecord {
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            key: self.key.map(<[u8]>::to_vec),
            value: self.value.map(<[u8]>::to_vec),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.map(<[u8]>::to_vec)))
                .collect(),
        }
    }
}

/// Iterator over the records of one batch; every length is checked against the batch.
#[derive(Debug)]
pub struct RecordIter<'a> {
    buf: &'a [u8],
    pos: usize,
    remaining: i32,
    base_offset: i64,
    base_timestamp: i64,
}

/// Validates `batch` (header and CRC) and iterates its records.
///
/// Compressed batches return [`RecordError::Compressed`].
pub fn records(batch: &[u8]) -> Result<RecordIter<'_>, RecordError> {
    let h = validate_batch(batch)?;
    iter_uncompressed(batch, &h)
}

/// The record iterator over `batch`, whose header `h` was checked.
fn iter_uncompressed<'a>(batch: &'a [u8], h: &BatchHeader) -> Result<RecordIter<'a>, RecordError> {
    let c = h.compression();
    if c != Compression::None {
        return Err(RecordError::Compressed(c));
    }
    Ok(RecordIter {
        buf: batch,
        pos: BATCH_HEADER_BYTES,
        remaining: h.records_count,
        base_offset: h.base_offset,
        base_timestamp: h.base_timestamp,
    })
}

/// Like [`records`], for a batch whose CRC was verified already (by [`records`] or
/// [`validate_batch`] on the same bytes): the header and length are checked again, the
/// CRC-32C over the whole batch is not recomputed. Reading stays bounds-checked, so bytes
/// that were not verified can make it return errors, never read out of bounds.
pub fn records_without_crc(batch: &[u8]) -> Result<RecordIter<'_>, RecordError> {
    let h = BatchHeader::parse(batch)?;
    if h.total_bytes() != batch.len() {
        return Err(RecordError::BadLength(h.batch_length.into()));
    }
    if h.records_count < 0 {
        return Err(RecordError::Invalid("negative record count"));
    }
    iter_uncompressed(batch, &h)
}

fn take<'a>(buf: &'a [u8], pos: &mut usize, len: i32) -> Result<Option<&'a [u8]>, RecordError> {
    if len < 0 {
        return if len == -1 {
            Ok(None)
        } else {
            Err(RecordError::BadLength(len.into()))
        };
    }
    let end = pos
        .checked_add(len as usize)
        .filter(|&e| e <= buf.len())
        .ok_or(RecordError::Truncated {
            need: *pos + len as usize,
            have: buf.len(),
        })?;
    let s = &buf[*pos..end];
    *pos = end;
    Ok(Some(s))
}

impl<'a> RecordIter<'a> {
    fn read_one(&mut self) -> Result<RecordView<'a>, RecordError> {
        let buf = self.buf;
        let len = get_varint(buf, &mut self.pos)?;
        let body = take(buf, &mut self.pos, len)?.ok_or(RecordError::BadLength(-1))?;
        let mut p = 0;
        take(body, &mut p, 1)?; // attributes
        let ts_delta = get_varlong(body, &mut p)?;
        let off_delta = get_varint(body, &mut p)?;
        let key_len = get_varint(body, &mut p)?;
        let key = take(body, &mut p, key_len)?;
        let value_len = get_varint(body, &mut p)?;
        let value = take(body, &mut p, value_len)?;
        let n_headers = get_varint(body, &mut p)?;
        if n_headers < 0 || n_headers as usize > body.len() {
            return Err(RecordError::BadLength(n_headers.into()));
        }
        let mut headers = Vec::with_capacity(n_headers as usize);
        for _ in 0..n_headers {
            let kl = get_varint(body, &mut p)?;
            let k = take(body, &mut p, kl)?.ok_or(RecordError::Invalid("null header key"))?;
            let k =
                std::str::from_utf8(k).map_err(|_| RecordError::Invalid("header key not UTF-8"))?;
            let vl = get_varint(body, &mut p)?;
            headers.push((k, take(body, &mut p, vl)?));
        }
        if p != body.len() {
            return Err(RecordError::Invalid(
                "record length disagrees with its fields",
            ));
        }
        let offset = self
            .base_offset
            .checked_add(i64::from(off_delta))
            .ok_or(RecordError::Invalid("record offset overflows"))?;
        Ok(RecordView {
            offset,
            timestamp_ms: self.base_timestamp.wrapping_add(ts_delta),
            key,
            value,
            headers,
        })
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<RecordView<'a>, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining <= 0 {
            return None;
        }
        self.remaining -= 1;
        let r = self.read_one();
        if r.is_err() {
            self.remaining = 0;
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BatchBuilder, Record, set_base_offset};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn records_round_trip(
            recs in proptest::collection::vec(
                (any::<i32>(), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
                 proptest::option::of(proptest::collection::vec(any::<u8>(), 0..50)),
                 proptest::collection::vec(("[a-z.]{0,8}", proptest::collection::vec(any::<u8>(), 0..8)), 0..3)),
                1..20),
            base in any::<i32>(),
        ) {
            let base_ts = 1_700_000_000_000i64;
            let mut b = BatchBuilder::new(base_ts);
            for (dt, k, v, hs) in &recs {
                let hs: Vec<(&str, &[u8])> = hs.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
                b.push(Record { timestamp_ms: base_ts + i64::from(*dt), key: k.as_deref(), value: v.as_deref(), headers: &hs });
            }
            let mut batch = b.finish();
            set_base_offset(&mut batch, i64::from(base));
            let got: Vec<_> = records(&batch).unwrap().collect::<Result<_, _>>().unwrap();
            let unchecked: Vec<_> =
                records_without_crc(&batch).unwrap().collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(&got, &unchecked);
            prop_assert_eq!(got.len(), recs.len());
            for (i, (r, (dt, k, v, hs))) in got.iter().zip(&recs).enumerate() {
                prop_assert_eq!(r.offset, i64::from(base) + i as i64);
                prop_assert_eq!(r.timestamp_ms, base_ts + i64::from(*dt));
                prop_assert_eq!(r.key, k.as_deref());
                prop_assert_eq!(r.value, v.as_deref());
                prop_assert_eq!(r.headers.len(), hs.len());
            }
        }

        #[test]
        fn corrupt_records_never_panic(
            noise in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            // Build a batch whose records section is noise but whose CRC is right, so the
            // record parser (not the CRC) must catch it.
            let mut b = BatchBuilder::new(0).finish();
            b.truncate(BATCH_HEADER_BYTES);
            b.extend_from_slice(&noise);
            let len = (b.len() - 12) as i32;
            b[8..12].copy_from_slice(&len.to_be_bytes());
            b[57..61].copy_from_slice(&5i32.to_be_bytes());
            b[23..27].copy_from_slice(&4i32.to_be_bytes());
            let crc = crc32c::crc32c(&b[21..]);
            b[17..21].copy_from_slice(&crc.to_be_bytes());
            if let Ok(it) = records(&b) {
                for r in it { let _ = r; }
            }
        }
    }
}
