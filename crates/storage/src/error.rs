//! The storage crate's error type.

use std::io;

use weir_record::RecordError;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The disk failed for this operation; nothing it was asked to do happened (a failed
    /// append was cut back), and the log stays usable. `ENOSPC` arrives here: appends
    /// work again once space is freed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// An I/O failure that poisoned the log: an fsync failed (so the kernel may have
    /// dropped data it could not write), or a failed write could not be cut back, or a
    /// truncation failed half way. This caller gets the cause; later writes get
    /// [`StorageError::Poisoned`].
    #[error("i/o error, log poisoned: {0}")]
    Fatal(io::Error),
    /// An appended batch is malformed (header, length or CRC).
    #[error("invalid record batch: {0}")]
    Record(#[from] RecordError),
    /// One appended batch exceeds `LogConfig::batch_bytes_max`.
    #[error("batch of {size} bytes exceeds the limit of {max}")]
    BatchTooLarge {
        /// Size of the offending batch.
        size: u64,
        /// The configured limit.
        max: u64,
    },
    /// The batches of one append call together exceed `LogConfig::segment_bytes_max`,
    /// so they could not be written into one segment.
    #[error("append of {size} bytes exceeds the segment limit of {max}")]
    AppendTooLarge {
        /// Total bytes of the call.
        size: u64,
        /// The configured segment limit.
        max: u64,
    },
    /// `append` was called with no bytes.
    #[error("append with no batches")]
    EmptyAppend,
    /// The requested offset is outside `[log_start, log_end]`.
    #[error("offset {offset} out of range [{start}, {end}]")]
    OffsetOutOfRange {
        /// The requested offset.
        offset: i64,
        /// Log start offset.
        start: i64,
        /// Log end offset.
        end: i64,
    },
    /// An fsync (or an unrecoverable write) failed earlier; the log refuses writes until it
    /// is reopened, because the kernel may have dropped the dirty pages it could not write.
    #[error("log is poisoned by an earlier fsync failure; reopen it to recover")]
    Poisoned,
    /// The log was closed or deleted.
    #[error("log is closed")]
    Closed,
    /// Bytes on disk are not a valid batch where one was expected.
    #[error("corrupt data in segment {segment} at byte {position}: {reason}")]
    Corrupt {
        /// Base offset of the segment.
        segment: i64,
        /// Byte position inside the segment file.
        position: u64,
        /// What was wrong.
        reason: String,
    },
    /// A `LogConfig` field is out of its allowed range.
    #[error("invalid config: {field} = {value} must be in [{min}, {max}]")]
    InvalidConfig {
        /// Name of the field.
        field: &'static str,
        /// The value given.
        value: u64,
        /// Smallest allowed value.
        min: u64,
        /// Largest allowed value.
        max: u64,
    },
}
