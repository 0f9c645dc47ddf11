//! Per-log configuration and every limit, named in one place.

use weir_record::BATCH_HEADER_BYTES;

use crate::StorageError;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// Smallest `segment_bytes_max`: one page. Tiny segments are legal so tests can roll with
/// little data; production uses hundreds of MiB.
pub const SEGMENT_BYTES_MIN: u64 = 4 * KIB;
/// Largest `segment_bytes_max`: index positions are `u32`, and 2 GiB leaves a batch's worth
/// of headroom below `u32::MAX`.
pub const SEGMENT_BYTES_LIMIT: u64 = 2048 * MIB;
/// Default `segment_bytes_max`.
pub const SEGMENT_BYTES_DEFAULT: u64 = 256 * MIB;

/// Smallest `batch_bytes_max`: a batch header with no records.
pub const BATCH_BYTES_MIN: u32 = BATCH_HEADER_BYTES as u32;
/// Largest `batch_bytes_max`, and the largest batch recovery and reads accept from disk
/// whatever the configuration, so a corrupt length never makes us allocate gigabytes.
pub const BATCH_BYTES_LIMIT: u32 = 64 * MIB as u32;
/// Default `batch_bytes_max` (Kafka's `message.max.bytes` is about 1 MiB; ours is roomier).
pub const BATCH_BYTES_DEFAULT: u32 = 8 * MIB as u32;

/// Smallest `index_interval_bytes`: index every batch.
pub const INDEX_INTERVAL_BYTES_MIN: u32 = 1;
/// Largest `index_interval_bytes`: a lookup walks at most this much past an index entry.
pub const INDEX_INTERVAL_BYTES_LIMIT: u32 = 16 * MIB as u32;
/// Default `index_interval_bytes` (Kafka's `index.interval.bytes`).
pub const INDEX_INTERVAL_BYTES_DEFAULT: u32 = 4096;

/// Smallest `segment_age_ms_max`.
pub const SEGMENT_AGE_MS_MIN: u64 = 1;
/// Largest `segment_age_ms_max`: a year.
pub const SEGMENT_AGE_MS_LIMIT: u64 = 365 * DAY_MS;
/// Default `segment_age_ms_max`: seven days.
pub const SEGMENT_AGE_MS_DEFAULT: u64 = 7 * DAY_MS;

/// Smallest `retention_ms_max` when set.
pub const RETENTION_MS_MIN: u64 = 1;
/// Largest `retention_ms_max` when set (about 290 million years: anything that fits `i64`).
pub const RETENTION_MS_LIMIT: u64 = i64::MAX as u64;
/// Default `retention_ms_max`: seven days.
pub const RETENTION_MS_DEFAULT: u64 = 7 * DAY_MS;

/// Smallest fsync interval.
pub const FSYNC_INTERVAL_MS_MIN: u64 = 1;
/// Largest fsync interval: an hour. Longer would make `interval` mean `never`.
pub const FSYNC_INTERVAL_MS_LIMIT: u64 = 60 * 60 * 1000;

/// Largest `max_bytes` one read honours; larger requests are clamped to it.
pub const READ_BYTES_LIMIT: u32 = 64 * MIB as u32;
/// Smallest chunk a read fetches from disk, so short reads do not cost one syscall per header.
pub const READ_CHUNK_BYTES_MIN: u32 = 64 * KIB as u32;
/// Largest read [`Log::read_cached`](crate::Log::read_cached) serves: room for a
/// consumer's usual 1 MiB per partition and the index slack before it. A bigger copy
/// takes long enough (about half a millisecond per 2 MiB) to belong on a thread that may
/// block.
pub const CACHED_READ_BYTES_MAX: u32 = 2 * MIB as u32;
/// Space reserved ahead of the appends of an fsync `always` log's active segment, so that
/// most appends land inside the file instead of growing it. An `fdatasync` after a write
/// that grew the file must also commit the new length to the file system's journal; one
/// after a write into reserved space need not, and on ext4 takes about a third less time.
/// Sealed segments and a cleanly closed active one are cut back to their data.
pub const PREALLOCATE_BYTES: u64 = MIB;
/// Chunk size used when scanning a whole segment during recovery.
pub const SCAN_CHUNK_BYTES: u32 = MIB as u32;

const _: () = assert!(SEGMENT_BYTES_LIMIT <= u32::MAX as u64);
const _: () = assert!((BATCH_BYTES_LIMIT as u64) < SEGMENT_BYTES_LIMIT);
const _: () = assert!(SEGMENT_BYTES_MIN >= BATCH_BYTES_MIN as u64);
const _: () = assert!(SEGMENT_BYTES_MIN <= SEGMENT_BYTES_DEFAULT);
const _: () = assert!(BATCH_BYTES_DEFAULT as u64 <= SEGMENT_BYTES_DEFAULT);

/// When appended data is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// The caller acknowledges only after [`Log::sync_to`](crate::Log::sync_to); concurrent
    /// callers share one `fdatasync` (group commit). The high watermark is the durable end.
    Always,
    /// An append that finds the last sync older than this many ms runs one (unless a sync
    /// is already running). The high watermark is the log end.
    IntervalMs(u64),
    /// Only rolls, truncation, `sync` and `close` fsync. The high watermark is the log end.
    Never,
}

/// Configuration of one partition log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// A segment is rolled before an append would make it larger than this.
    pub segment_bytes_max: u64,
    /// A segment is rolled once its first append is this old.
    pub segment_age_ms_max: u64,
    /// Sealed segments whose newest timestamp is older than this are deleted. `None`: keep.
    pub retention_ms_max: Option<u64>,
    /// Oldest sealed segments are deleted while the log is larger than this. `None`: keep.
    pub retention_bytes_max: Option<u64>,
    /// An offset index entry is added once this many bytes were written since the last one.
    pub index_interval_bytes: u32,
    /// Largest single batch accepted by `append`.
    pub batch_bytes_max: u32,
    /// When data is fsynced.
    pub fsync: FsyncPolicy,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes_max: SEGMENT_BYTES_DEFAULT,
            segment_age_ms_max: SEGMENT_AGE_MS_DEFAULT,
            retention_ms_max: Some(RETENTION_MS_DEFAULT),
            retention_bytes_max: None,
            index_interval_bytes: INDEX_INTERVAL_BYTES_DEFAULT,
            batch_bytes_max: BATCH_BYTES_DEFAULT,
            fsync: FsyncPolicy::Always,
        }
    }
}

fn in_range(field: &'static str, value: u64, min: u64, max: u64) -> Result<(), StorageError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(StorageError::InvalidConfig {
            field,
            value,
            min,
            max,
        })
    }
}

impl LogConfig {
    /// Checks every field against its limit; `Log::open` calls this.
    pub fn validate(&self) -> Result<(), StorageError> {
        in_range(
            "batch_bytes_max",
            self.batch_bytes_max.into(),
            BATCH_BYTES_MIN.into(),
            BATCH_BYTES_LIMIT.into(),
        )?;
        // A batch must always fit into an empty segment.
        in_range(
            "segment_bytes_max",
            self.segment_bytes_max,
            SEGMENT_BYTES_MIN.max(self.batch_bytes_max.into()),
            SEGMENT_BYTES_LIMIT,
        )?;
        in_range(
            "segment_age_ms_max",
            self.segment_age_ms_max,
            SEGMENT_AGE_MS_MIN,
            SEGMENT_AGE_MS_LIMIT,
        )?;
        if let Some(ms) = self.retention_ms_max {
            in_range("retention_ms_max", ms, RETENTION_MS_MIN, RETENTION_MS_LIMIT)?;
        }
        in_range(
            "index_interval_bytes",
            self.index_interval_bytes.into(),
            INDEX_INTERVAL_BYTES_MIN.into(),
            INDEX_INTERVAL_BYTES_LIMIT.into(),
        )?;
        if let FsyncPolicy::IntervalMs(ms) = self.fsync {
            in_range(
                "fsync_interval_ms",
                ms,
                FSYNC_INTERVAL_MS_MIN,
                FSYNC_INTERVAL_MS_LIMIT,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        LogConfig::default().validate().expect("default config");
    }

    #[test]
    fn out_of_range_fields_are_named() {
        let field = |c: LogConfig| match c.validate() {
            Err(StorageError::InvalidConfig { field, .. }) => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        };
        let d = LogConfig::default;
        assert_eq!(
            field(LogConfig {
                segment_bytes_max: SEGMENT_BYTES_LIMIT + 1,
                ..d()
            }),
            "segment_bytes_max"
        );
        assert_eq!(
            field(LogConfig {
                segment_bytes_max: 1024,
                ..d()
            }),
            "segment_bytes_max"
        );
        // Smaller than one batch.
        assert_eq!(
            field(LogConfig {
                segment_bytes_max: 4 * MIB,
                ..d()
            }),
            "segment_bytes_max"
        );
        assert_eq!(
            field(LogConfig {
                batch_bytes_max: 10,
                ..d()
            }),
            "batch_bytes_max"
        );
        assert_eq!(
            field(LogConfig {
                index_interval_bytes: 0,
                ..d()
            }),
            "index_interval_bytes"
        );
        assert_eq!(
            field(LogConfig {
                retention_ms_max: Some(0),
                ..d()
            }),
            "retention_ms_max"
        );
        assert_eq!(
            field(LogConfig {
                fsync: FsyncPolicy::IntervalMs(0),
                ..d()
            }),
            "fsync_interval_ms"
        );
        assert_eq!(
            field(LogConfig {
                segment_age_ms_max: 0,
                ..d()
            }),
            "segment_age_ms_max"
        );
    }
}
