//! The partition log: appends, group commit, reads, lookups by time, truncation, retention.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, MutexGuard};
use tracing::warn;
use weir_record::{
    BATCH_HEADER_BYTES, BatchHeader, BatchIter, Compression, RecordError, records, set_base_offset,
    set_partition_leader_epoch, validate_batch,
};

use crate::config::{
    FsyncPolicy, LogConfig, PREALLOCATE_BYTES, READ_BYTES_LIMIT, READ_CHUNK_BYTES_MIN,
};
use crate::disk::{Disk, DiskFile, OpenMode};
use crate::index::{OffsetEntry, SegmentIndex};
use crate::marker::{CleanShutdown, write_clean_shutdown};
use crate::recovery::{RecoveryReport, recover};
use crate::segment::{
    LOG_SUFFIX, Segment, SegmentReader, last_offset, relative, remove_if_exists,
    remove_index_files, remove_segment_files, segment_path, would_block, write_index_files,
};
use crate::{Clock, StorageError};

/// Unless fsync is `always`, appends start the writeback of every this many bytes of the
/// active segment. Otherwise dirty pages pile up until the kernel flushes them in a burst
/// that stalls appends; on the development VM early writeback raised 100-byte appends with
/// fsync `never` from 3.56 M to 4.4 M msg/s (median of 5). No durability is implied.
const WRITEBACK_BYTES: u64 = 8 * 1024 * 1024;

/// The header prefix an append patches (baseOffset, batchLength, partitionLeaderEpoch):
/// written from a copy, the rest of each batch from the caller's buffer.
const PATCHED_HEADER_BYTES: usize = 16;

/// The batches given to an append: patched where they are, or left as they are.
enum Batches<'a> {
    /// [`Log::append`]: the caller's buffer is patched, then written.
    InPlace(&'a mut [u8]),
    /// [`Log::append_shared`]: patched header copies are written with the untouched rest.
    Shared(&'a [u8]),
}

impl Batches<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Batches::InPlace(b) => b,
            Batches::Shared(b) => b,
        }
    }
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset assigned to the first record of the first batch.
    pub base_offset: i64,
    /// Offset of the last record of the last batch.
    pub last_offset: i64,
    /// Largest `maxTimestamp` among the appended batches.
    pub max_timestamp: i64,
    /// Clock time of the append (for `LogAppendTime` topics).
    pub log_append_time_ms: i64,
}

/// Whole batches returned by [`Log::read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    /// Concatenated batches, exactly as stored; empty when there is nothing to return.
    pub bytes: Bytes,
    /// Offset to fetch next: after the last returned batch, or the requested offset when
    /// nothing was returned.
    pub next_offset: i64,
}

/// What [`Log::apply_retention`] deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionReport {
    /// Segments deleted.
    pub segments_deleted: usize,
    /// Bytes of data deleted.
    pub bytes_deleted: u64,
    /// Log start offset afterwards.
    pub log_start_offset: i64,
}

/// Mutable state, all behind one mutex.
#[derive(Debug)]
struct State {
    /// Segments in offset order; the last one is active. Never empty.
    segments: Vec<Segment>,
    /// Next offset to assign.
    log_end: i64,
    /// Every offset below this is on disk.
    durable_end: i64,
    /// A group-commit fsync is running without the lock.
    syncing: bool,
    /// Bumped by every truncation, so a sync that started before one does not publish a
    /// durable end for data that was cut and rewritten meanwhile.
    truncations: u64,
    /// An fsync failed: no more writes (the kernel may have dropped the dirty pages).
    poisoned: bool,
    /// `close` or `delete` ran.
    closed: bool,
    /// A roll sealed the active segment (its data synced, its index files written) but
    /// failed before the next segment was durably created; this is the base offset that
    /// segment was to have. The sealed segment takes no more appends — its index files
    /// already describe it as finished — and the next append retries the roll first.
    roll_pending: Option<i64>,
    /// Clock time of the last completed sync, for [`FsyncPolicy::IntervalMs`].
    last_sync_ms: i64,
    /// Unless fsync is `always`: the active segment's base offset, and the position up to
    /// which its writeback was started (see [`WRITEBACK_BYTES`]).
    writeback: (i64, u64),
    /// Whether to reserve space ahead of appends ([`PREALLOCATE_BYTES`]): fsync `always`,
    /// until the file system says it cannot.
    preallocate: bool,
}

impl State {
    fn active(&self) -> &Segment {
        self.segments
            .last()
            .expect("a log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("a log always has an active segment")
    }

    fn log_start(&self) -> i64 {
        self.segments[0].base_offset
    }

    fn writable(&self) -> Result<(), StorageError> {
        if self.closed {
            Err(StorageError::Closed)
        } else if self.poisoned {
            Err(StorageError::Poisoned)
        } else {
            Ok(())
        }
    }

    /// Index of the segment that holds `offset` (the last one based at or below it).
    fn find(&self, offset: i64) -> usize {
        self.segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1)
    }

    fn out_of_range(&self, offset: i64) -> StorageError {
        StorageError::OffsetOutOfRange {
            offset,
            start: self.log_start(),
            end: self.log_end,
        }
    }
}

/// A segment to read without the lock: the file handle keeps working even if retention
/// unlinks the file meanwhile.
#[derive(Debug)]
struct SegmentRef {
    base_offset: i64,
    file: Arc<dyn DiskFile>,
    size_bytes: u64,
    /// Where to start walking: a batch boundary from the index.
    pos: u64,
    /// The base offset the batch at `pos` must have. Every batch walked over is checked
    /// against it (then against the previous batch's last offset + 1), so a damaged
    /// `baseOffset` — which the batch CRC does not cover — reads as corruption, never as
    /// data at the wrong offset.
    expect: i64,
}

impl SegmentRef {
    fn new(s: &Segment, entry: OffsetEntry) -> Self {
        Self {
            base_offset: s.base_offset,
            file: Arc::clone(&s.file),
            size_bytes: s.size_bytes,
            pos: entry.pos.into(),
            expect: s.base_offset + i64::from(entry.rel),
        }
    }
}

/// The error for a batch whose base offset is not the one its position implies.
fn misplaced(segment: i64, position: u64, found: i64, expected: i64) -> StorageError {
    StorageError::Corrupt {
        segment,
        position,
        reason: format!("batch base offset {found} where {expected} was expected"),
    }
}

/// The log of one partition: a directory of segments. See the crate docs for the layout.
///
/// All methods take `&self`; share it as `Arc<Log>` between threads.
#[derive(Debug)]
pub struct Log {
    /// The partition directory.
    dir: PathBuf,
    /// Validated configuration.
    config: LogConfig,
    /// File system, injected so tests can fail it.
    disk: Arc<dyn Disk>,
    /// Time, injected so tests can move it.
    clock: Arc<dyn Clock>,
    /// Everything mutable. Lock order: this is the only lock; it may be held across
    /// writes, but never across the group-commit fsync.
    state: Mutex<State>,
    /// Signalled when a sync finishes (or fails), for callers waiting in `sync_to`.
    synced: Condvar,
}

impl Drop for Log {
    /// A log dropped without [`Log::close`] gives back the space reserved ahead of its
    /// appends; nothing is synced, so a crash may still leave it for recovery to cut.
    fn drop(&mut self) {
        let st = self.state.get_mut();
        if !st.closed
            && let Err(e) = cut_reserved(st.active_mut())
        {
            tracing::debug!(dir = %self.dir.display(), error = %e, "giving back reserved space failed");
        }
    }
}

/// Cuts a segment's file back to its batches, giving back the space reserved ahead of
/// appends, before it is sealed or closed.
fn cut_reserved(seg: &mut Segment) -> Result<(), StorageError> {
    if seg.file_bytes > seg.size_bytes {
        seg.file.set_len(seg.size_bytes)?;
        seg.file_bytes = seg.size_bytes;
    }
    Ok(())
}

fn poison(st: &mut State, cv: &Condvar, dir: &Path, what: &str, e: &std::io::Error) {
    warn!(dir = %dir.display(), error = %e, "{what} failed: log poisoned");
    st.poisoned = true;
    cv.notify_all();
}

impl Log {
    /// Opens (or creates) the log in `dir`, recovering from a crash if needed.
    pub fn open(
        dir: impl AsRef<Path>,
        config: LogConfig,
        disk: Arc<dyn Disk>,
        clock: Arc<dyn Clock>,
    ) -> Result<(Log, RecoveryReport), StorageError> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let mut report = RecoveryReport::default();
        let r = recover(&dir, &config, disk.as_ref(), clock.as_ref(), &mut report)?;
        let now = clock.now_ms();
        let preallocate = config.fsync == FsyncPolicy::Always;
        let log = Log {
            dir,
            config,
            disk,
            clock,
            state: Mutex::new(State {
                segments: r.segments,
                log_end: r.log_end,
                // Recovery synced the active segment; sealed ones were synced at roll.
                durable_end: r.log_end,
                syncing: false,
                truncations: 0,
                poisoned: false,
                closed: false,
                roll_pending: None,
                last_sync_ms: now,
                writeback: (i64::MIN, 0),
                preallocate,
            }),
            synced: Condvar::new(),
        };
        Ok((log, report))
    }

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration the log was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Appends one or more concatenated batches, assigning offsets from the log end and
    /// stamping `leader_epoch`. `batch` is patched in place (baseOffset and
    /// partitionLeaderEpoch, neither covered by the CRC) before it is written, so the
    /// caller sees the stored headers even if the write then fails.
    ///
    /// Otherwise the same as [`Log::append_shared`].
    pub fn append(&self, batch: &mut [u8], leader_epoch: i32) -> Result<AppendInfo, StorageError> {
        self.append_from(Batches::InPlace(batch), leader_epoch)
    }

    /// Appends one or more concatenated batches, assigning offsets from the log end and
    /// stamping `leader_epoch`. `batch` is not modified: each batch is written as its
    /// patched header prefix (baseOffset and partitionLeaderEpoch, neither covered by the
    /// CRC) followed by the rest of its bytes, in one vectored positional write, so a
    /// producer's buffer goes to the disk without being copied.
    ///
    /// Every batch is validated before anything is written: the call is all or nothing.
    /// Nothing is fsynced here under [`FsyncPolicy::Always`]: acknowledge after
    /// [`Log::sync_to`]`(info.last_offset)`.
    pub fn append_shared(
        &self,
        batch: &[u8],
        leader_epoch: i32,
    ) -> Result<AppendInfo, StorageError> {
        self.append_from(Batches::Shared(batch), leader_epoch)
    }

    fn append_from(
        &self,
        mut src: Batches<'_>,
        leader_epoch: i32,
    ) -> Result<AppendInfo, StorageError> {
        let batch = src.bytes();
        if batch.is_empty() {
            return Err(StorageError::EmptyAppend);
        }
        let total = batch.len() as u64;
        if total > self.config.segment_bytes_max {
            return Err(StorageError::AppendTooLarge {
                size: total,
                max: self.config.segment_bytes_max,
            });
        }
        // Validate (CRC included) before taking the lock, so appenders do not serialize on it.
        let mut spans = Vec::new();
        let mut offsets = 0i64;
        let mut pos = 0usize;
        while pos < batch.len() {
            let rest = &batch[pos..];
            let h = BatchHeader::parse(rest)?;
            let size = h.total_bytes();
            if size > self.config.batch_bytes_max as usize {
                return Err(StorageError::BatchTooLarge {
                    size: size as u64,
                    max: self.config.batch_bytes_max.into(),
                });
            }
            if size > rest.len() {
                return Err(RecordError::Truncated {
                    need: size,
                    have: rest.len(),
                }
                .into());
            }
            let h = validate_batch(&rest[..size])?;
            // Each delta is < 2^31 and there are fewer than 2^32 batches: no overflow.
            offsets += i64::from(h.last_offset_delta) + 1;
            spans.push((pos, size, h));
            pos += size;
        }

        let mut st = self.state.lock();
        st.writable()?;
        let now = self.clock.now_ms();
        let base_offset = st.log_end;
        let last = base_offset
            .checked_add(offsets - 1)
            .filter(|&l| l < i64::MAX)
            .ok_or(RecordError::Invalid("offsets overflow i64"))?;
        if st.roll_pending.is_some() || self.roll_due(st.active(), total, last, now) {
            self.roll(&mut st)?;
        }
        let mut next = base_offset;
        let mut max_timestamp = i64::MIN;
        let mut heads = Vec::with_capacity(spans.len());
        for (at, _, h) in &spans {
            let mut head = [0u8; PATCHED_HEADER_BYTES];
            head.copy_from_slice(&src.bytes()[*at..at + PATCHED_HEADER_BYTES]);
            set_base_offset(&mut head, next);
            set_partition_leader_epoch(&mut head, leader_epoch);
            if let Batches::InPlace(b) = &mut src {
                b[*at..at + PATCHED_HEADER_BYTES].copy_from_slice(&head);
            }
            heads.push(head);
            next += i64::from(h.last_offset_delta) + 1;
            max_timestamp = max_timestamp.max(h.max_timestamp);
        }
        let batch = src.bytes();
        let parts: Vec<&[u8]> = match src {
            Batches::InPlace(_) => vec![batch],
            Batches::Shared(_) => spans
                .iter()
                .zip(&heads)
                .flat_map(|((at, size, _), head)| {
                    [&head[..], &batch[at + PATCHED_HEADER_BYTES..at + size]]
                })
                .collect(),
        };
        let mut writeback = st.writeback;
        if st.preallocate {
            st.preallocate = self.reserve(st.active_mut(), total);
        }
        let seg = st.active_mut();
        let seg_pos = seg.size_bytes;
        let seg_end = seg_pos + total;
        if let Err(e) = seg.file.write_all_vectored_at(&parts, seg_pos) {
            // A partial write may have extended the file: cut it back to whole batches.
            seg.file_bytes = seg_pos;
            if let Err(e2) = seg.file.set_len(seg_pos) {
                poison(
                    &mut st,
                    &self.synced,
                    &self.dir,
                    "cutting a failed write",
                    &e2,
                );
                return Err(StorageError::Fatal(e));
            }
            return Err(e.into());
        }
        seg.file_bytes = seg.file_bytes.max(seg_end);
        let mut at_offset = base_offset;
        for (at, size, h) in &spans {
            // The roll check guarantees every offset is within u32 of the segment base,
            // and positions stay below the 2 GiB segment limit.
            let rel = relative(at_offset, seg.base_offset).expect("roll keeps offsets in u32");
            seg.index.observe(
                rel,
                (seg_pos + *at as u64) as u32,
                *size as u32,
                h.max_timestamp,
            );
            at_offset += i64::from(h.last_offset_delta) + 1;
        }
        seg.size_bytes += total;
        seg.first_append_ms.get_or_insert(now);
        if self.config.fsync != FsyncPolicy::Always {
            if writeback.0 != seg.base_offset {
                writeback = (seg.base_offset, seg_pos);
            }
            let pending = seg.size_bytes - writeback.1;
            if pending >= WRITEBACK_BYTES {
                if let Err(e) = seg.file.start_writeback(writeback.1, pending) {
                    tracing::debug!(dir = %self.dir.display(), error = %e, "starting writeback failed");
                }
                writeback.1 = seg.size_bytes;
            }
        }
        st.writeback = writeback;
        st.log_end = next;
        if let FsyncPolicy::IntervalMs(ms) = self.config.fsync {
            let due = now.saturating_sub(st.last_sync_ms) >= ms as i64;
            if due && !st.syncing {
                self.run_sync(&mut st)?;
            }
        }
        Ok(AppendInfo {
            base_offset,
            last_offset: next - 1,
            max_timestamp,
            log_append_time_ms: now,
        })
    }

    /// Reserves space in `seg` for an append of `bytes` and [`PREALLOCATE_BYTES`] past it,
    /// unless the file already has room; never past the segment's size limit, where the
    /// next roll would cut it anyway. Returns whether the file system can reserve space.
    fn reserve(&self, seg: &mut Segment, bytes: u64) -> bool {
        let end = seg.size_bytes + bytes;
        if end <= seg.file_bytes {
            return true;
        }
        let to = (end + PREALLOCATE_BYTES).min(self.config.segment_bytes_max.max(end));
        match seg.file.allocate(seg.file_bytes, to - seg.file_bytes) {
            Ok(()) => seg.file_bytes = to,
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => return false,
            // No reserved space is no loss: the append's write grows the file itself.
            Err(e) => {
                tracing::debug!(dir = %self.dir.display(), error = %e, "reserving segment space failed");
            }
        }
        true
    }

    fn roll_due(&self, active: &Segment, bytes: u64, last_offset: i64, now: i64) -> bool {
        if active.size_bytes == 0 {
            return false;
        }
        let too_big = active.size_bytes + bytes > self.config.segment_bytes_max;
        let too_old = active.first_append_ms.is_some_and(|t| {
            now.saturating_sub(t)
                >= i64::try_from(self.config.segment_age_ms_max).unwrap_or(i64::MAX)
        });
        let offsets_overflow = relative(last_offset, active.base_offset).is_none();
        too_big || too_old || offsets_overflow
    }

    /// Seals the active segment (fsync, final indexes) and starts a new one at the log end.
    ///
    /// A failed fsync poisons the log. Any other failure (a full disk while writing the
    /// index files, a failed directory sync) leaves the roll pending: the sealed segment
    /// takes no more appends, and the next append retries the whole roll, so a segment's
    /// index files never describe less data than the segment holds.
    fn roll(&self, st: &mut State) -> Result<(), StorageError> {
        // Before the fsync, which then makes the cut durable with the data.
        cut_reserved(st.active_mut())?;
        if let Err(e) = st.active().file.sync_data() {
            poison(st, &self.synced, &self.dir, "fsync at segment roll", &e);
            return Err(StorageError::Fatal(e));
        }
        st.durable_end = st.durable_end.max(st.log_end);
        self.synced.notify_all();
        let base_offset = st.log_end;
        st.roll_pending = Some(base_offset);
        let disk = self.disk.as_ref();
        let seg = st.active_mut();
        seg.index.seal();
        write_index_files(disk, &self.dir, seg.base_offset, &seg.index, true)?;
        let path = segment_path(&self.dir, base_offset, LOG_SUFFIX);
        // Left over by an earlier roll whose directory sync failed; holds nothing.
        remove_if_exists(disk, &path)?;
        let file = disk.open(&path, OpenMode::CreateNew)?;
        disk.sync_dir(&self.dir)?;
        st.roll_pending = None;
        st.segments.push(Segment {
            base_offset,
            file,
            size_bytes: 0,
            file_bytes: 0,
            index: SegmentIndex::new(self.config.index_interval_bytes),
            first_append_ms: None,
        });
        Ok(())
    }

    /// Runs one group-commit fsync of the active segment with the lock released, then
    /// publishes the durable end it covers.
    fn run_sync(&self, st: &mut MutexGuard<'_, State>) -> Result<(), StorageError> {
        debug_assert!(!st.syncing);
        st.syncing = true;
        let target = st.log_end;
        let truncations = st.truncations;
        let file = Arc::clone(&st.active().file);
        // Appends proceed meanwhile; they land after `target` and wait for the next sync.
        let result = MutexGuard::unlocked(st, || file.sync_data());
        st.syncing = false;
        match result {
            Ok(()) => {
                if st.truncations == truncations {
                    st.durable_end = st.durable_end.max(target);
                }
                st.last_sync_ms = self.clock.now_ms();
                self.synced.notify_all();
                Ok(())
            }
            Err(e) => {
                poison(st, &self.synced, &self.dir, "fdatasync", &e);
                Err(StorageError::Fatal(e))
            }
        }
    }

    /// Blocks until every offset `<= offset` is on disk (offsets past the log end mean
    /// "everything appended so far"). Concurrent callers share fsyncs: one runs while the
    /// others wait and then find their offsets covered.
    ///
    /// A failed fsync poisons the log: the caller that ran it gets
    /// [`StorageError::Fatal`] with the I/O error, and every later `append`/`sync` gets
    /// [`StorageError::Poisoned`].
    pub fn sync_to(&self, offset: i64) -> Result<(), StorageError> {
        let mut st = self.state.lock();
        loop {
            if st.poisoned {
                return Err(StorageError::Poisoned);
            }
            let need = offset.saturating_add(1).min(st.log_end);
            if st.durable_end >= need {
                return Ok(());
            }
            if st.syncing {
                self.synced.wait(&mut st);
                continue;
            }
            self.run_sync(&mut st)?;
        }
    }

    /// Makes everything appended so far durable.
    pub fn sync(&self) -> Result<(), StorageError> {
        self.sync_to(i64::MAX)
    }

    /// Reads whole batches starting with the one that holds `offset`, stopping before any
    /// batch based at or after `upper` (pass the high watermark) and after `max_bytes`
    /// (clamped to [`READ_BYTES_LIMIT`]) — except that the first batch is always returned
    /// whole, so a consumer always progresses. A read does not cross a segment boundary:
    /// the next read continues in the next segment.
    ///
    /// Every returned batch's CRC is verified: bad data is [`StorageError::Corrupt`], never
    /// bytes. `offset` equal to the log end (or `>= upper`) returns nothing; outside
    /// `[log start, log end]` is [`StorageError::OffsetOutOfRange`].
    pub fn read(
        &self,
        offset: i64,
        max_bytes: u32,
        upper: i64,
    ) -> Result<ReadResult, StorageError> {
        self.read_from(offset, max_bytes, upper, false)
    }

    /// The same read as [`Log::read`], if it can be answered at once: the log's lock free,
    /// every byte in the page cache, and at most
    /// [`CACHED_READ_BYTES_MAX`](crate::CACHED_READ_BYTES_MAX) of them.
    /// `None` otherwise — and on any error, which [`Log::read`] then reports — so an async
    /// caller serves a consumer at the tail on its own thread and hands only the rest
    /// to a thread that may block.
    pub fn read_cached(&self, offset: i64, max_bytes: u32, upper: i64) -> Option<ReadResult> {
        self.read_from(offset, max_bytes, upper, true).ok()
    }

    fn read_from(
        &self,
        offset: i64,
        max_bytes: u32,
        upper: i64,
        cached_only: bool,
    ) -> Result<ReadResult, StorageError> {
        let empty = ReadResult {
            bytes: Bytes::new(),
            next_offset: offset,
        };
        let (targets, upper, truncations) = {
            let st = if cached_only {
                self.state.try_lock().ok_or_else(would_block)?
            } else {
                self.state.lock()
            };
            if offset < st.log_start() || offset > st.log_end {
                return Err(st.out_of_range(offset));
            }
            let upper = upper.min(st.log_end);
            if offset >= upper {
                return Ok(empty);
            }
            let i = st.find(offset);
            let mut targets = Vec::with_capacity(2);
            // The next segment too, for an offset the first one turns out not to hold.
            for (j, s) in st.segments.iter().enumerate().skip(i).take(2) {
                let start = OffsetEntry { rel: 0, pos: 0 };
                let entry = if j == i {
                    relative(offset, s.base_offset).map_or(start, |r| s.index.floor(r))
                } else {
                    start
                };
                targets.push(SegmentRef::new(s, entry));
            }
            (targets, upper, st.truncations)
        };
        let max_bytes = max_bytes.min(READ_BYTES_LIMIT);
        for t in &targets {
            match self.read_segment(t, offset, max_bytes, upper, cached_only) {
                Ok(Some(r)) => return Ok(r),
                Ok(None) => {}
                // A truncation cut the file under us: the data is gone, not corrupt.
                Err(StorageError::Corrupt { .. })
                    if !cached_only && self.state.lock().truncations != truncations =>
                {
                    return Ok(empty);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(empty)
    }

    /// Reads from one segment; `None` if no batch in it reaches `offset`.
    fn read_segment(
        &self,
        t: &SegmentRef,
        offset: i64,
        max_bytes: u32,
        upper: i64,
        cached_only: bool,
    ) -> Result<Option<ReadResult>, StorageError> {
        // Enough to walk from the index entry to the target and take max_bytes after it,
        // usually in one positional read.
        let chunk = max_bytes
            .saturating_add(self.config.index_interval_bytes)
            .max(READ_CHUNK_BYTES_MIN);
        let mut r = SegmentReader::new(t.file.as_ref(), t.base_offset, t.size_bytes, chunk);
        if cached_only {
            r = r.cached_only();
        }
        let corrupt = |position: u64, reason: &str| StorageError::Corrupt {
            segment: t.base_offset,
            position,
            reason: reason.to_owned(),
        };
        let mut start = t.pos;
        let mut expect = t.expect;
        loop {
            if start >= r.end() {
                return Ok(None);
            }
            let h = r.header(start)?;
            if h.base_offset != expect {
                return Err(misplaced(t.base_offset, start, h.base_offset, expect));
            }
            let last = last_offset(&h).ok_or_else(|| corrupt(start, "bad offsets in header"))?;
            if last >= offset {
                break;
            }
            start += h.total_bytes() as u64;
            expect = last + 1;
        }
        let mut end = start;
        while end < r.end() {
            // A batch is at least a header: once one no longer fits, stop without looking
            // (a look past the window would copy another chunk only to stop there).
            if end > start && end - start + BATCH_HEADER_BYTES as u64 > u64::from(max_bytes) {
                break;
            }
            let h = match r.header(end) {
                Ok(h) => h,
                Err(e) if end == start => return Err(e),
                // Later batches are someone else's problem: the next read reports them.
                Err(_) => break,
            };
            // The first batch was checked above; a later one out of place ends the result.
            let Some(last) = last_offset(&h).filter(|_| h.base_offset == expect) else {
                break;
            };
            let size = h.total_bytes() as u64;
            if h.base_offset >= upper || (end > start && end - start + size > max_bytes.into()) {
                break;
            }
            end += size;
            expect = last + 1;
        }
        let bytes = r.slice(start, end - start)?;
        let mut good = 0usize;
        let mut next_offset = offset;
        for item in BatchIter::new(&bytes) {
            let checked = item
                .and_then(|(_, b)| validate_batch(b))
                .map_err(|e| e.to_string())
                .and_then(|h| {
                    last_offset(&h)
                        .map(|l| (h, l))
                        .ok_or_else(|| "bad offsets in header".to_owned())
                });
            match checked {
                Ok((h, l)) => {
                    good += h.total_bytes();
                    next_offset = l + 1;
                }
                Err(reason) if good == 0 => return Err(corrupt(start, &reason)),
                Err(_) => break,
            }
        }
        Ok(Some(ReadResult {
            bytes: bytes.slice(..good),
            next_offset,
        }))
    }

    /// The earliest offset whose record timestamp is `>= ts_ms`, or `None` if there is
    /// none. Exact for uncompressed batches; for compressed ones, the batch's base offset.
    /// The answer may lie above the high watermark: callers clamp it.
    pub fn offset_for_timestamp(&self, ts_ms: i64) -> Result<Option<i64>, StorageError> {
        let targets: Vec<SegmentRef> = {
            let st = self.state.lock();
            st.segments
                .iter()
                .filter(|s| s.index.max_timestamp() >= ts_ms)
                .map(|s| SegmentRef::new(s, s.index.time_floor(ts_ms)))
                .collect()
        };
        for t in &targets {
            let mut r = SegmentReader::new(
                t.file.as_ref(),
                t.base_offset,
                t.size_bytes,
                READ_CHUNK_BYTES_MIN,
            );
            let mut pos = t.pos;
            let mut expect = t.expect;
            while pos < r.end() {
                let h = r.header(pos)?;
                if h.base_offset != expect {
                    return Err(misplaced(t.base_offset, pos, h.base_offset, expect));
                }
                if h.max_timestamp >= ts_ms {
                    if h.compression() != Compression::None {
                        return Ok(Some(h.base_offset));
                    }
                    let (_, raw) = r.batch(pos)?;
                    let corrupt = |e: RecordError| StorageError::Corrupt {
                        segment: t.base_offset,
                        position: pos,
                        reason: e.to_string(),
                    };
                    for rec in records(&raw).map_err(corrupt)? {
                        let rec = rec.map_err(corrupt)?;
                        if rec.timestamp_ms >= ts_ms {
                            return Ok(Some(rec.offset));
                        }
                    }
                    // The header's maxTimestamp overstated its records; keep walking.
                }
                pos += h.total_bytes() as u64;
                expect = last_offset(&h).map_or(i64::MAX, |l| l + 1);
            }
        }
        Ok(None)
    }

    /// Drops every batch whose base offset is `> offset` (whole batches: a batch holding
    /// `offset` stays) and returns the new log end. `offset = log_start - 1` empties the log.
    /// Durable when it returns. Used by replication to discard a divergent suffix.
    ///
    /// An I/O failure half way poisons the log: memory and disk may disagree until reopen.
    pub fn truncate_after(&self, offset: i64) -> Result<i64, StorageError> {
        let mut st = self.state.lock();
        st.writable()?;
        if offset < st.log_start() - 1 {
            return Err(st.out_of_range(offset));
        }
        if offset >= st.log_end - 1 {
            return Ok(st.log_end);
        }
        let cut_from = offset + 1;
        let keep = st
            .segments
            .partition_point(|s| s.base_offset < cut_from)
            .max(1);
        // Find the cut before changing anything: a corrupt header aborts cleanly.
        let seg = &st.segments[keep - 1];
        let (cut_pos, new_end, tail_max_ts, tail_last_rel) = find_cut(seg, offset)?;
        let disk = self.disk.as_ref();
        let result = (|| -> std::io::Result<()> {
            // A half-done roll may have left the next segment's (empty) file behind; it
            // would name offsets past the new end.
            if let Some(base) = st.roll_pending {
                remove_if_exists(disk, &segment_path(&self.dir, base, LOG_SUFFIX))?;
            }
            while st.segments.len() > keep {
                let gone = st.segments.pop().expect("len > keep >= 1");
                remove_segment_files(disk, &self.dir, gone.base_offset)?;
            }
            let seg = st.active_mut();
            // Its index files describe the old contents; the new ones are written at roll.
            remove_index_files(disk, &self.dir, seg.base_offset)?;
            seg.file.set_len(cut_pos)?;
            seg.file_bytes = cut_pos;
            seg.file.sync_data()?;
            disk.sync_dir(&self.dir)
        })();
        if let Err(e) = result {
            // Whatever lies past the cut may or may not be on disk any more: stop
            // promising (and serving) it.
            st.durable_end = st.durable_end.min(cut_from);
            poison(&mut st, &self.synced, &self.dir, "truncation", &e);
            return Err(StorageError::Fatal(e));
        }
        let now = self.clock.now_ms();
        let seg = st.active_mut();
        let end_rel = relative(new_end, seg.base_offset).unwrap_or(u32::MAX);
        // Positions are below the 2 GiB segment limit.
        seg.index
            .truncate(cut_pos as u32, end_rel, tail_max_ts, tail_last_rel);
        seg.size_bytes = cut_pos;
        seg.first_append_ms = if cut_pos == 0 {
            None
        } else {
            Some(seg.first_append_ms.unwrap_or(now))
        };
        st.log_end = new_end;
        st.durable_end = new_end;
        st.roll_pending = None;
        st.truncations += 1;
        self.synced.notify_all();
        Ok(new_end)
    }

    /// Deletes whole sealed segments, oldest first: those whose newest timestamp is older
    /// than `now - retention_ms_max`, then while the log is larger than
    /// `retention_bytes_max`. The active segment is never deleted. The log start offset
    /// moves to the first remaining segment. Readers that already hold a deleted segment
    /// keep reading it (its file is unlinked, not closed).
    pub fn apply_retention(&self) -> Result<RetentionReport, StorageError> {
        let now = self.clock.now_ms();
        let removed: Vec<Segment> = {
            let mut st = self.state.lock();
            if st.closed {
                return Err(StorageError::Closed);
            }
            let horizon = self
                .config
                .retention_ms_max
                .map(|ms| now.saturating_sub(i64::try_from(ms).unwrap_or(i64::MAX)));
            let mut total: u64 = st.segments.iter().map(|s| s.size_bytes).sum();
            let mut n = 0;
            while n + 1 < st.segments.len() {
                let s = &st.segments[n];
                let expired = horizon.is_some_and(|h| s.index.max_timestamp() < h);
                let oversize = self.config.retention_bytes_max.is_some_and(|b| total > b);
                if !expired && !oversize {
                    break;
                }
                total -= s.size_bytes;
                n += 1;
            }
            st.segments.drain(..n).collect()
        };
        let mut report = RetentionReport {
            segments_deleted: removed.len(),
            bytes_deleted: removed.iter().map(|s| s.size_bytes).sum(),
            log_start_offset: self.log_start_offset(),
        };
        if removed.is_empty() {
            return Ok(report);
        }
        // Oldest first: a crash part way leaves a contiguous suffix of segments.
        for s in &removed {
            remove_segment_files(self.disk.as_ref(), &self.dir, s.base_offset)?;
        }
        self.disk.sync_dir(&self.dir)?;
        report.log_start_offset = self.log_start_offset();
        Ok(report)
    }

    /// Syncs all data, writes the active segment's indexes and then the clean-shutdown
    /// marker, which lets the next [`Log::open`] skip scanning the active segment. Later
    /// appends and syncs return [`StorageError::Closed`]. Reads keep working. Idempotent.
    pub fn close(&self) -> Result<(), StorageError> {
        let mut st = self.state.lock();
        if st.closed {
            return Ok(());
        }
        if st.poisoned {
            return Err(StorageError::Poisoned);
        }
        while st.syncing {
            self.synced.wait(&mut st);
        }
        // The clean-shutdown marker records the file's exact length; the fsync below
        // makes the cut durable with the data.
        let cut = cut_reserved(st.active_mut());
        if let Err(e) = st.active().file.sync_data() {
            poison(&mut st, &self.synced, &self.dir, "fsync at close", &e);
            return Err(StorageError::Fatal(e));
        }
        st.durable_end = st.log_end;
        st.closed = true;
        self.synced.notify_all();
        if let Some(base) = st.roll_pending {
            // The empty next segment a half-done roll may have left would be taken for
            // the active one at the next open.
            remove_if_exists(
                self.disk.as_ref(),
                &segment_path(&self.dir, base, LOG_SUFFIX),
            )?;
        }
        // The data is durable: a failed cut only leaves the next open to scan (and cut)
        // the tail, as no marker vouches for this file.
        cut?;
        let seg = st.active();
        if seg.size_bytes > 0 {
            // Not fsynced: the next open checks and completes them before trusting them.
            let mut index = seg.index.clone();
            index.seal();
            write_index_files(
                self.disk.as_ref(),
                &self.dir,
                seg.base_offset,
                &index,
                false,
            )?;
        }
        // Last, once the data is durable. Its directory sync also persists the renames
        // above (and the removal of a half-done roll's file).
        let marker = CleanShutdown {
            active_base: seg.base_offset,
            active_bytes: seg.size_bytes,
            log_end: st.log_end,
        };
        write_clean_shutdown(self.disk.as_ref(), &self.dir, &marker)?;
        Ok(())
    }

    /// Closes the log and removes its directory with everything in it.
    pub fn delete(&self) -> Result<(), StorageError> {
        let mut st = self.state.lock();
        st.closed = true;
        self.synced.notify_all();
        self.disk.remove_dir_all(&self.dir)?;
        Ok(())
    }

    /// First offset still in the log.
    pub fn log_start_offset(&self) -> i64 {
        self.state.lock().log_start()
    }

    /// Next offset to be assigned.
    pub fn log_end_offset(&self) -> i64 {
        self.state.lock().log_end
    }

    /// Offset after the last durable one.
    pub fn durable_end_offset(&self) -> i64 {
        self.state.lock().durable_end
    }

    /// What consumers may see: the durable end under [`FsyncPolicy::Always`], the log end
    /// otherwise.
    pub fn high_watermark(&self) -> i64 {
        let st = self.state.lock();
        match self.config.fsync {
            FsyncPolicy::Always => st.durable_end,
            FsyncPolicy::IntervalMs(_) | FsyncPolicy::Never => st.log_end,
        }
    }

    /// Bytes of data in all segments.
    pub fn size_bytes(&self) -> u64 {
        self.state
            .lock()
            .segments
            .iter()
            .map(|s| s.size_bytes)
            .sum()
    }

    /// Number of segments, the active one included.
    pub fn segment_count(&self) -> usize {
        self.state.lock().segments.len()
    }

    /// Whether an fsync failure poisoned the log.
    pub fn is_poisoned(&self) -> bool {
        self.state.lock().poisoned
    }
}

/// Where to cut `seg` so that no batch based above `offset` remains: the byte position,
/// the new log end, and the max timestamp and last relative offset of the kept batches
/// walked from the index entry before the cut.
fn find_cut(seg: &Segment, offset: i64) -> Result<(u64, i64, i64, Option<u32>), StorageError> {
    if offset < seg.base_offset {
        // The cut is before this segment: empty it.
        return Ok((0, seg.base_offset, i64::MIN, None));
    }
    let entry = seg
        .index
        .floor(relative(offset, seg.base_offset).unwrap_or(u32::MAX));
    let mut r = SegmentReader::new(
        seg.file.as_ref(),
        seg.base_offset,
        seg.size_bytes,
        READ_CHUNK_BYTES_MIN,
    );
    let mut pos = u64::from(entry.pos);
    let mut end = seg.base_offset + i64::from(entry.rel);
    let mut max_ts = i64::MIN;
    let mut last_rel = None;
    while pos < seg.size_bytes {
        let h = r.header(pos)?;
        if h.base_offset != end {
            return Err(misplaced(seg.base_offset, pos, h.base_offset, end));
        }
        if h.base_offset > offset {
            break;
        }
        let last = last_offset(&h).ok_or_else(|| StorageError::Corrupt {
            segment: seg.base_offset,
            position: pos,
            reason: "bad offsets in header".to_owned(),
        })?;
        max_ts = max_ts.max(h.max_timestamp);
        last_rel = relative(h.base_offset, seg.base_offset);
        end = last + 1;
        pos += h.total_bytes() as u64;
    }
    Ok((pos, end, max_ts, last_rel))
}
