//! One segment: a file of concatenated batches, its in-memory indexes, and the two ways
//! to walk it (a bounded chunked reader and the full recovery scan).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use weir_record::{BATCH_HEADER_BYTES, BatchHeader, validate_batch};

use crate::StorageError;
use crate::config::{BATCH_BYTES_LIMIT, CACHED_READ_BYTES_MAX, SCAN_CHUNK_BYTES};
use crate::disk::{Disk, DiskFile, OpenMode};
use crate::index::SegmentIndex;

/// File name suffix of segment data.
pub(crate) const LOG_SUFFIX: &str = "log";
/// File name suffix of the offset index.
pub(crate) const INDEX_SUFFIX: &str = "index";
/// File name suffix of the time index.
pub(crate) const TIME_INDEX_SUFFIX: &str = "timeindex";
/// Suffix of a file being written before its atomic rename.
pub(crate) const TMP_SUFFIX: &str = "tmp";
/// Digits of the zero-padded base offset in file names, so names sort by offset.
pub(crate) const NAME_DIGITS: usize = 20;

/// `{base:020}.{suffix}` inside `dir`.
pub(crate) fn segment_path(dir: &Path, base_offset: i64, suffix: &str) -> PathBuf {
    dir.join(format!("{base_offset:0NAME_DIGITS$}.{suffix}"))
}

/// One segment of the log.
#[derive(Debug)]
pub(crate) struct Segment {
    /// Offset of the first batch; also the file name.
    pub(crate) base_offset: i64,
    /// The data file, shared with readers so they can read without the log lock.
    pub(crate) file: Arc<dyn DiskFile>,
    /// Bytes of whole batches in the file.
    pub(crate) size_bytes: u64,
    /// Length of the file: more than `size_bytes` while the active segment has space
    /// reserved ahead of its appends (see [`PREALLOCATE_BYTES`](crate::config::PREALLOCATE_BYTES)).
    pub(crate) file_bytes: u64,
    /// Sparse offset and time indexes.
    pub(crate) index: SegmentIndex,
    /// Clock time of the first append, for rolling by age; `None` while empty.
    pub(crate) first_append_ms: Option<i64>,
}

/// Relative offset of `offset` in a segment based at `base`, if it fits in `u32`.
pub(crate) fn relative(offset: i64, base: i64) -> Option<u32> {
    offset.checked_sub(base).and_then(|d| u32::try_from(d).ok())
}

/// Last offset of a batch read from disk, `None` if the header's numbers are negative or
/// leave no room for a next offset.
pub(crate) fn last_offset(h: &BatchHeader) -> Option<i64> {
    if h.last_offset_delta < 0 || h.base_offset < 0 {
        return None;
    }
    h.base_offset
        .checked_add(i64::from(h.last_offset_delta))
        .filter(|&l| l < i64::MAX)
}

/// Reads a segment through a window of one chunk, so that walking headers costs one
/// positional read per chunk rather than one per header.
pub(crate) struct SegmentReader<'a> {
    /// The segment's data file.
    file: &'a dyn DiskFile,
    /// Segment base offset, for error messages.
    base_offset: i64,
    /// Bytes of the segment that may be read (a snapshot of its size).
    end: u64,
    /// Bytes read per refill at least.
    chunk: u64,
    /// The current window.
    buf: Bytes,
    /// File position of `buf[0]`.
    buf_pos: u64,
    /// `Some`: refill only from the page cache, with at most these bytes left to read in
    /// all (from [`CACHED_READ_BYTES_MAX`]); anything else fails with
    /// [`io::ErrorKind::WouldBlock`]. `None`: refill from the disk as needed.
    cached_bytes_left: Option<u64>,
}

/// What a read that must not wait answers instead.
pub(crate) fn would_block() -> io::Error {
    io::ErrorKind::WouldBlock.into()
}

impl<'a> SegmentReader<'a> {
    /// A reader over the first `end` bytes of `file`.
    pub(crate) fn new(file: &'a dyn DiskFile, base_offset: i64, end: u64, chunk: u32) -> Self {
        Self {
            file,
            base_offset,
            end,
            chunk: u64::from(chunk.max(BATCH_HEADER_BYTES as u32)),
            buf: Bytes::new(),
            buf_pos: 0,
            cached_bytes_left: None,
        }
    }

    /// This reader, refilling only from the page cache (see [`DiskFile::read_cached_at`])
    /// and reading at most [`CACHED_READ_BYTES_MAX`] in all.
    pub(crate) fn cached_only(mut self) -> Self {
        self.cached_bytes_left = Some(CACHED_READ_BYTES_MAX.into());
        self
    }

    /// Readable bytes of the segment.
    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    fn corrupt(&self, position: u64, reason: impl Into<String>) -> StorageError {
        StorageError::Corrupt {
            segment: self.base_offset,
            position,
            reason: reason.into(),
        }
    }

    /// `len` bytes at `pos`, from the window when they are in it.
    pub(crate) fn slice(&mut self, pos: u64, len: u64) -> Result<Bytes, StorageError> {
        let stop = pos
            .checked_add(len)
            .filter(|&s| s <= self.end)
            .ok_or_else(|| self.corrupt(pos, format!("{len} bytes run past the segment end")))?;
        let buf_end = self.buf_pos + self.buf.len() as u64;
        if pos < self.buf_pos || stop > buf_end {
            // `len` is bounded by `end`, itself bounded by the 2 GiB segment limit.
            let want = len.max(self.chunk).min(self.end - pos);
            let v = match &mut self.cached_bytes_left {
                None => self.file.read_vec_at(want as usize, pos)?,
                Some(left) => {
                    *left = left.checked_sub(want).ok_or_else(would_block)?;
                    self.file
                        .read_cached_at(want as usize, pos)?
                        .ok_or_else(would_block)?
                }
            };
            if (v.len() as u64) < len {
                return Err(self.corrupt(pos, "file is shorter than its recorded size"));
            }
            self.buf = Bytes::from(v);
            self.buf_pos = pos;
        }
        let from = (pos - self.buf_pos) as usize;
        Ok(self.buf.slice(from..from + len as usize))
    }

    /// The header of the batch at `pos`, checked to be sane and to end inside the segment.
    /// Does not check the CRC.
    pub(crate) fn header(&mut self, pos: u64) -> Result<BatchHeader, StorageError> {
        if self.end.saturating_sub(pos) < BATCH_HEADER_BYTES as u64 {
            return Err(self.corrupt(pos, "torn batch header"));
        }
        let raw = self.slice(pos, BATCH_HEADER_BYTES as u64)?;
        let h = BatchHeader::parse(&raw).map_err(|e| self.corrupt(pos, e.to_string()))?;
        let total = h.total_bytes() as u64;
        if total > u64::from(BATCH_BYTES_LIMIT) {
            return Err(self.corrupt(pos, format!("batch length {total} exceeds the limit")));
        }
        if pos + total > self.end {
            return Err(self.corrupt(pos, "torn batch: length runs past the segment end"));
        }
        Ok(h)
    }

    /// The whole batch at `pos`, header and CRC verified.
    pub(crate) fn batch(&mut self, pos: u64) -> Result<(BatchHeader, Bytes), StorageError> {
        let h = self.header(pos)?;
        let raw = self.slice(pos, h.total_bytes() as u64)?;
        validate_batch(&raw).map_err(|e| self.corrupt(pos, e.to_string()))?;
        Ok((h, raw))
    }
}

/// What a full scan of a segment found.
#[derive(Debug)]
pub(crate) struct Scan {
    /// Indexes of the valid prefix.
    pub(crate) index: SegmentIndex,
    /// Bytes of the valid prefix.
    pub(crate) valid_bytes: u64,
    /// Offset after the last valid batch (the base offset if none).
    pub(crate) next_offset: i64,
    /// Max timestamp of the first batch, to date the segment's age after a restart.
    pub(crate) first_max_timestamp: Option<i64>,
    /// Why the scan stopped before the end of the file, if it did.
    pub(crate) stop: Option<StorageError>,
}

/// Validates every batch of a segment (header, CRC, offsets contiguous from its base) up
/// to the first bad one, and builds the indexes of that valid prefix.
pub(crate) fn scan(
    file: &dyn DiskFile,
    base_offset: i64,
    len: u64,
    interval: u32,
) -> Result<Scan, StorageError> {
    let mut r = SegmentReader::new(file, base_offset, len, SCAN_CHUNK_BYTES);
    let mut out = Scan {
        index: SegmentIndex::new(interval),
        valid_bytes: 0,
        next_offset: base_offset,
        first_max_timestamp: None,
        stop: None,
    };
    let mut pos = 0u64;
    while pos < len {
        let (h, _) = match r.batch(pos) {
            Ok(b) => b,
            Err(e @ StorageError::Corrupt { .. }) => {
                out.stop = Some(e);
                break;
            }
            Err(e) => return Err(e),
        };
        let last = last_offset(&h).filter(|&l| relative(l, base_offset).is_some());
        let Some(last) = last.filter(|_| h.base_offset == out.next_offset) else {
            out.stop = Some(StorageError::Corrupt {
                segment: base_offset,
                position: pos,
                reason: format!(
                    "batch base offset {} where {} was expected",
                    h.base_offset, out.next_offset
                ),
            });
            break;
        };
        let total = h.total_bytes() as u64;
        // pos < len <= SEGMENT_BYTES_LIMIT and total <= BATCH_BYTES_LIMIT: both fit u32.
        let rel = relative(h.base_offset, base_offset).unwrap_or(u32::MAX);
        out.index
            .observe(rel, pos as u32, total as u32, h.max_timestamp);
        out.first_max_timestamp.get_or_insert(h.max_timestamp);
        pos += total;
        out.valid_bytes = pos;
        out.next_offset = last + 1;
    }
    Ok(out)
}

/// Removes a file, treating "already gone" as success.
pub(crate) fn remove_if_exists(disk: &dyn Disk, path: &Path) -> io::Result<()> {
    match disk.remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Writes both index files of a segment atomically (temporary file, fsync if `durable`,
/// rename). The caller syncs the directory. Only the active segment's files written at
/// `close` skip the fsync: they are checked (checksum) and completed (tail walk) before
/// the next open trusts them, so losing them costs a scan, never correctness.
pub(crate) fn write_index_files(
    disk: &dyn Disk,
    dir: &Path,
    base_offset: i64,
    index: &SegmentIndex,
    durable: bool,
) -> io::Result<()> {
    for (suffix, bytes) in [
        (INDEX_SUFFIX, index.encode_offsets()),
        (TIME_INDEX_SUFFIX, index.encode_times()),
    ] {
        let path = segment_path(dir, base_offset, suffix);
        let tmp = segment_path(dir, base_offset, &format!("{suffix}.{TMP_SUFFIX}"));
        remove_if_exists(disk, &tmp)?;
        let f = disk.open(&tmp, OpenMode::CreateNew)?;
        f.write_all_at(&bytes, 0)?;
        if durable {
            f.sync_data()?;
        }
        disk.rename(&tmp, &path)?;
    }
    Ok(())
}

/// Removes both index files of a segment, if present.
pub(crate) fn remove_index_files(disk: &dyn Disk, dir: &Path, base_offset: i64) -> io::Result<()> {
    remove_if_exists(disk, &segment_path(dir, base_offset, INDEX_SUFFIX))?;
    remove_if_exists(disk, &segment_path(dir, base_offset, TIME_INDEX_SUFFIX))
}

/// Removes a segment's data file, then its indexes: a crash in between leaves an index
/// without data, which recovery treats as a stray file.
pub(crate) fn remove_segment_files(
    disk: &dyn Disk,
    dir: &Path,
    base_offset: i64,
) -> io::Result<()> {
    remove_if_exists(disk, &segment_path(dir, base_offset, LOG_SUFFIX))?;
    remove_index_files(disk, dir, base_offset)
}
