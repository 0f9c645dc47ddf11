//! The partition log of Weir: durable, crash-safe storage of Kafka RecordBatch v2 bytes.
//!
//! # Layout
//!
//! One [`Log`] owns one partition directory:
//!
//! ```text
//! 00000000000000000000.log        segment: concatenated RecordBatch v2, byte for byte
//! 00000000000000000000.index      sparse offset index: (relative offset u32 BE, position u32 BE)
//! 00000000000000000000.timeindex  sparse time index: (max timestamp so far i64 BE, relative offset u32 BE)
//! 00000000000000001234.log        next segment, named after its base offset (20 digits)
//! …
//! ```
//!
//! The last segment is *active* (appended to); the others are *sealed* and never change
//! except by [`Log::truncate_after`] (which makes the cut one active again) or by retention
//! (which deletes them whole). The broker never re-encodes records: an append validates
//! each batch's header and CRC-32C (via `weir_record`), patches `baseOffset` and
//! `partitionLeaderEpoch` (outside the CRC) and writes the bytes. A segment is rolled when
//! an append would push it past `segment_bytes_max`, when its first append is older than
//! `segment_age_ms_max`, or when an offset would not fit the `u32` relative offset.
//!
//! Index entries are kept in memory (bounded by segment size / `index_interval_bytes`) and
//! written to disk when a segment is sealed (temporary file, fsync, rename) and at
//! [`Log::close`]. They are derived data: never fsynced per append, always rebuildable.
//! `docs/storage.md` has the byte-level format and the reasoning behind sparse indexes.
//!
//! # Recovery
//!
//! [`Log::open`] removes stray files (`*.tmp`, an index without its segment), checks each
//! sealed segment's index files cheaply (checksum, whole entries, monotonic, inside the
//! segment, last entry pointing at a batch header) and rebuilds damaged or missing ones by
//! scanning the segment. After a crash the active segment is scanned batch by batch
//! (header, CRC, offsets contiguous); the first bad batch and everything after it are cut
//! off (`set_len`, fsync).
//! A bad batch in a *sealed* segment is reported, not deleted; reads verify every returned
//! batch's CRC, so such a region reads as [`StorageError::Corrupt`], never as bytes. The
//! [`RecoveryReport`] lists every repair, and each one is logged with `tracing::warn!`.
//!
//! [`Log::close`] ends by writing a small clean-shutdown marker (`clean-shutdown`). When
//! the next open finds one that matches the files, it trusts the active segment (checking
//! its index files' checksums and the few batches after the last index entry) instead of
//! scanning it, so a cleanly stopped broker restarts in time proportional to its number of
//! segments, not its bytes. The marker is removed before the log takes any write, so a
//! crash later finds none and scans as before.
//!
//! # Group commit
//!
//! [`Log::append`] writes without fsync. [`Log::sync_to`] waits until an offset is durable:
//! if an fsync is running it waits for it (condition variable) and re-checks; otherwise it
//! becomes the syncer, notes the log end and the active file under the lock, *releases the
//! lock*, runs `fdatasync`, re-locks, publishes the new durable end and wakes everyone.
//! Appends never wait for a running fsync, and one fsync covers every append before it.
//! Under fsync `always` the active segment's file is kept [`PREALLOCATE_BYTES`] longer than
//! its data (`fallocate`), so that an fsync seldom has to commit a new file length too; the
//! reserved tail reads as zeros, and rolling, closing, dropping the log and recovery cut it
//! off. A failed fsync poisons the log for writes (the "fsyncgate" lesson: after a failed
//! fsync the kernel may have dropped the dirty pages, so retrying would lie).
//!
//! # Concurrency and lock order
//!
//! A `Log` is `Send + Sync`; all methods take `&self`. It has exactly one lock, the state
//! mutex (with its condition variable). It is held across appends' positional writes,
//! rolls and truncation, but never across the group-commit fsync nor a read's disk I/O:
//! reads clone the segment's `Arc` file handle and size under the lock and read after
//! releasing it. The [`Disk`] and [`Clock`] implementations must not call back into the log.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use weir_record::{BatchBuilder, Record};
//! use weir_storage::{FsDisk, Log, LogConfig, SystemClock};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let (log, report) =
//!     Log::open(dir.path(), LogConfig::default(), Arc::new(FsDisk), Arc::new(SystemClock)).unwrap();
//! assert!(report.is_clean());
//!
//! let mut b = BatchBuilder::new(1_700_000_000_000);
//! b.push(Record { timestamp_ms: 1_700_000_000_000, key: None, value: Some(b"hi"), headers: &[] });
//! let mut batch = b.finish();
//! let info = log.append(&mut batch, 1).unwrap();
//! log.sync_to(info.last_offset).unwrap(); // acknowledge only after this
//!
//! let read = log.read(0, 1 << 20, log.high_watermark()).unwrap();
//! assert_eq!(&read.bytes[..], &batch[..]);
//! assert_eq!(read.next_offset, 1);
//! ```
#![deny(missing_docs)]

mod clock;
mod config;
mod disk;
mod error;
mod index;
mod log;
mod marker;
mod recovery;
mod segment;
pub mod testing;

pub use clock::{Clock, SystemClock, TestClock};
pub use config::{
    BATCH_BYTES_DEFAULT, BATCH_BYTES_LIMIT, BATCH_BYTES_MIN, CACHED_READ_BYTES_MAX,
    FSYNC_INTERVAL_MS_LIMIT, FSYNC_INTERVAL_MS_MIN, FsyncPolicy, INDEX_INTERVAL_BYTES_DEFAULT,
    INDEX_INTERVAL_BYTES_LIMIT, INDEX_INTERVAL_BYTES_MIN, LogConfig, PREALLOCATE_BYTES,
    READ_BYTES_LIMIT, READ_CHUNK_BYTES_MIN, RETENTION_MS_DEFAULT, RETENTION_MS_LIMIT,
    RETENTION_MS_MIN, SCAN_CHUNK_BYTES, SEGMENT_AGE_MS_DEFAULT, SEGMENT_AGE_MS_LIMIT,
    SEGMENT_AGE_MS_MIN, SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_LIMIT, SEGMENT_BYTES_MIN,
};
pub use disk::{Disk, DiskFile, FsDisk, OpenMode};
pub use error::StorageError;
pub use log::{AppendInfo, Log, ReadResult, RetentionReport};
pub use recovery::{CorruptRegion, RecoveryReport, TruncatedTail};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Log>();
        assert_send_sync::<StorageError>();
    }
}
