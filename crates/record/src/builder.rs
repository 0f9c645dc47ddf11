//! Building uncompressed batches on the client side.

use bytes::{BufMut, Bytes, BytesMut};

use crate::header::{ATTRIBUTES_OFFSET, BATCH_HEADER_BYTES, LOG_OVERHEAD_BYTES, MAGIC_V2};
use crate::varint::{put_varint, put_varlong, varlong_len};

/// One record to append to a batch.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// Create time (ms since the epoch).
    pub timestamp_ms: i64,
    /// Optional key; `None` is a null key.
    pub key: Option<&'a [u8]>,
    /// Optional value; `None` is a null value (a tombstone for compaction).
    pub value: Option<&'a [u8]>,
    /// Headers in order; keys are UTF-8.
    pub headers: &'a [(&'a str, &'a [u8])],
}

/// Accumulates records into one uncompressed RecordBatch v2.
///
/// The batch gets base offset 0 and producer id -1; the broker assigns offsets.
#[derive(Debug)]
pub struct BatchBuilder {
    /// The batch so far. A `Vec` rather than a `BytesMut`: a record is a dozen small
    /// writes, which a `Vec` does inline; [`finish`](Self::finish) hands the same
    /// allocation over as `BytesMut`.
    buf: Vec<u8>,
    base_timestamp: i64,
    max_timestamp: i64,
    count: i32,
}

impl BatchBuilder {
    /// Starts an empty batch whose timestamps are deltas from `base_timestamp_ms`.
    pub fn new(base_timestamp_ms: i64) -> Self {
        Self::with_capacity(base_timestamp_ms, 1024)
    }

    /// Like [`new`](Self::new), with room for `capacity_bytes` of batch before the buffer
    /// grows: a producer that knows its batches fill up to a limit avoids regrowing (and
    /// copying) the buffer on the way there.
    pub fn with_capacity(base_timestamp_ms: i64, capacity_bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity_bytes.max(BATCH_HEADER_BYTES));
        buf.resize(BATCH_HEADER_BYTES, 0);
        Self {
            buf,
            base_timestamp: base_timestamp_ms,
            max_timestamp: base_timestamp_ms,
            count: 0,
        }
    }

    /// Records pushed so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes the batch would have if finished now.
    pub fn size_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Bytes `record` would add to the batch.
    pub fn record_bytes(&self, record: &Record<'_>) -> usize {
        let body = self.body_len(record);
        varlong_len(body as i64) + body
    }

    fn body_len(&self, r: &Record<'_>) -> usize {
        let opt = |b: Option<&[u8]>| b.map_or(1, |b| varlong_len(b.len() as i64) + b.len());
        let mut n = 1
            + varlong_len(r.timestamp_ms.wrapping_sub(self.base_timestamp))
            + varlong_len(i64::from(self.count))
            + opt(r.key)
            + opt(r.value)
            + varlong_len(r.headers.len() as i64);
        for (k, v) in r.headers {
            n += varlong_len(k.len() as i64) + k.len() + varlong_len(v.len() as i64) + v.len();
        }
        n
    }

    /// Appends a record. Its bytes are written once, straight into the batch: the
    /// length prefix is computed first.
    ///
    /// # Panics
    /// If the batch already holds `i32::MAX` records.
    pub fn push(&mut self, r: Record<'_>) {
        assert!(self.count < i32::MAX, "record count overflow");
        let body = self.body_len(&r);
        let b = &mut self.buf;
        b.reserve(varlong_len(body as i64) + body);
        put_varlong(b, body as i64);
        let body_start = b.len();
        b.push(0); // record attributes: unused in v2
        put_varlong(b, r.timestamp_ms.wrapping_sub(self.base_timestamp));
        put_varint(b, self.count);
        for part in [r.key, r.value] {
            match part {
                Some(v) => {
                    put_varlong(b, v.len() as i64);
                    b.extend_from_slice(v);
                }
                None => put_varint(b, -1),
            }
        }
        put_varlong(b, r.headers.len() as i64);
        for (k, v) in r.headers {
            put_varlong(b, k.len() as i64);
            b.extend_from_slice(k.as_bytes());
            put_varlong(b, v.len() as i64);
            b.extend_from_slice(v);
        }
        assert_eq!(b.len() - body_start, body, "record length prefix");
        self.max_timestamp = self.max_timestamp.max(r.timestamp_ms);
        self.count += 1;
    }

    /// Writes the header and CRC and returns the finished batch.
    pub fn finish(self) -> BytesMut {
        let mut buf = self.buf;
        let batch_length = (buf.len() - LOG_OVERHEAD_BYTES) as i32;
        let mut h = &mut buf[..BATCH_HEADER_BYTES];
        h.put_i64(0); // base offset: assigned by the broker
        h.put_i32(batch_length);
        h.put_i32(-1); // partition leader epoch: stamped by the broker
        h.put_i8(MAGIC_V2);
        h.put_u32(0); // crc, below
        h.put_i16(0); // attributes: no compression, create time
        h.put_i32((self.count - 1).max(0));
        h.put_i64(self.base_timestamp);
        h.put_i64(self.max_timestamp);
        h.put_i64(-1); // producer id
        h.put_i16(-1); // producer epoch
        h.put_i32(-1); // base sequence
        h.put_i32(self.count);
        let crc = crc32c::crc32c(&buf[ATTRIBUTES_OFFSET..]);
        buf[ATTRIBUTES_OFFSET - 4..ATTRIBUTES_OFFSET].copy_from_slice(&crc.to_be_bytes());
        // The Vec's allocation becomes the BytesMut's: no copy (a fresh `Bytes` is unique).
        Bytes::from(buf)
            .try_into_mut()
            .unwrap_or_else(|shared| BytesMut::from(&shared[..]))
    }
}
