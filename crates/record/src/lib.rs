//! Kafka RecordBatch v2 (magic 2), the one record format Weir uses on the wire and on disk.
//!
//! Layout of a batch (all integers big-endian):
//!
//! | offset | field                | type  | covered by CRC |
//! |-------:|----------------------|-------|----------------|
//! | 0      | baseOffset           | i64   | no             |
//! | 8      | batchLength          | i32   | no             |
//! | 12     | partitionLeaderEpoch | i32   | no             |
//! | 16     | magic (= 2)          | i8    | no             |
//! | 17     | crc (CRC-32C)        | u32   | no             |
//! | 21     | attributes           | i16   | yes            |
//! | 23     | lastOffsetDelta      | i32   | yes            |
//! | 27     | baseTimestamp        | i64   | yes            |
//! | 35     | maxTimestamp         | i64   | yes            |
//! | 43     | producerId           | i64   | yes            |
//! | 51     | producerEpoch        | i16   | yes            |
//! | 53     | baseSequence         | i32   | yes            |
//! | 57     | recordsCount         | i32   | yes            |
//! | 61     | records …            |       | yes            |
//!
//! The broker only ever touches the header: [`validate_batch`] checks it and the CRC, and
//! [`set_base_offset`] / [`set_partition_leader_epoch`] patch the two fields the CRC does
//! not cover. Records are built by clients with [`BatchBuilder`] and read with [`records`].
//!
//! ```
//! use weir_record::{BatchBuilder, Record, validate_batch, records};
//! let mut b = BatchBuilder::new(1_700_000_000_000);
//! b.push(Record { timestamp_ms: 1_700_000_000_000, key: Some(b"k"), value: Some(b"hello"), headers: &[] });
//! let batch = b.finish();
//! let header = validate_batch(&batch).unwrap();
//! assert_eq!(header.records_count, 1);
//! let r = records(&batch).unwrap().next().unwrap().unwrap();
//! assert_eq!(r.value, Some(&b"hello"[..]));
//! ```
#![deny(missing_docs)]

mod builder;
mod header;
mod read;
mod varint;

pub use builder::{BatchBuilder, Record};
pub use header::{
    BATCH_HEADER_BYTES, BatchHeader, BatchIter, Compression, LOG_OVERHEAD_BYTES, MAGIC_V2,
    set_base_offset, set_partition_leader_epoch, validate_batch,
};
pub use read::{OwnedRecord, RecordIter, RecordView, records, records_without_crc};

/// Why a batch or a record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Fewer bytes than the structure needs.
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// The magic byte is not 2.
    #[error("unsupported record batch magic {0} (only 2 is supported)")]
    BadMagic(i8),
    /// A length field is negative, too small, or disagrees with the bytes present.
    #[error("bad length {0}")]
    BadLength(i64),
    /// The stored CRC does not match the bytes.
    #[error("crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// CRC in the header.
        stored: u32,
        /// CRC computed over the bytes.
        computed: u32,
    },
    /// A header field is inconsistent with the rest of the batch.
    #[error("invalid batch: {0}")]
    Invalid(&'static str),
    /// Records of a compressed batch cannot be read by this crate.
    #[error("records compressed with {0:?} cannot be decoded here")]
    Compressed(Compression),
}
