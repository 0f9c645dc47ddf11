//! Opening a partition directory: classify files, check or rebuild indexes, cut a torn
//! tail off the active segment.

use std::collections::BTreeSet;
use std::path::Path;

use tracing::{debug, warn};

use weir_record::BATCH_HEADER_BYTES;

use crate::config::{LogConfig, SCAN_CHUNK_BYTES, SEGMENT_BYTES_LIMIT};
use crate::disk::{Disk, DiskFile, OpenMode};
use crate::index::{
    INDEX_TRAILER_BYTES, OFFSET_ENTRY_BYTES, SegmentIndex, TIME_ENTRY_BYTES, entries_max,
};
use crate::marker::{CLEAN_SHUTDOWN_FILE, CleanShutdown, read_clean_shutdown};
use crate::segment::{
    INDEX_SUFFIX, LOG_SUFFIX, NAME_DIGITS, Segment, SegmentReader, TIME_INDEX_SUFFIX, TMP_SUFFIX,
    last_offset, relative, remove_if_exists, scan, segment_path, write_index_files,
};
use crate::{Clock, StorageError};

/// What [`Log::open`](crate::Log::open) found and repaired. Each repair is also logged
/// with `tracing::warn!`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Segments in the log after recovery.
    pub segments: usize,
    /// Base offsets of sealed segments whose index files were missing or damaged and were
    /// rebuilt by scanning the segment.
    pub indexes_rebuilt: Vec<i64>,
    /// The torn or corrupt tail cut off the active segment, if any.
    pub truncated: Option<TruncatedTail>,
    /// Sealed segments holding a bad batch, found while rebuilding their index. Their data
    /// is kept; reads of the bad region fail with [`StorageError::Corrupt`].
    pub corrupt: Vec<CorruptRegion>,
    /// Names of stray files removed: temporary files, indexes without a segment.
    pub stray_files_removed: Vec<String>,
    /// Names of files that are not the log's; left alone.
    pub unknown_files: Vec<String>,
    /// The log was closed cleanly and its clean-shutdown marker matched the active
    /// segment, so the segment was trusted without a scan.
    pub clean_shutdown: bool,
    /// A clean-shutdown marker was there but did not match the files, and why; the
    /// active segment was scanned as after a crash.
    pub clean_shutdown_rejected: Option<String>,
}

impl RecoveryReport {
    /// Whether nothing had to be repaired. Cutting an unwritten tail is not a repair: it
    /// is what a crash of an fsync `always` log leaves (see [`TruncatedTail::unwritten`]).
    pub fn is_clean(&self) -> bool {
        self.indexes_rebuilt.is_empty()
            && self.truncated.as_ref().is_none_or(|t| t.unwritten)
            && self.corrupt.is_empty()
            && self.stray_files_removed.is_empty()
    }
}

/// A tail cut off the active segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruncatedTail {
    /// Base offset of the segment.
    pub segment: i64,
    /// New length of the segment file: where the first bad batch started.
    pub position: u64,
    /// Bytes removed.
    pub bytes: u64,
    /// What was wrong with the first removed byte.
    pub reason: String,
    /// Every removed byte was zero: space reserved ahead of appends that no write
    /// reached (or a write that never reached the disk), never data written there.
    pub unwritten: bool,
}

/// A bad batch in a sealed segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptRegion {
    /// Base offset of the segment.
    pub segment: i64,
    /// Byte position of the bad batch.
    pub position: u64,
    /// What was wrong.
    pub reason: String,
}

/// The log state rebuilt from disk.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// Segments in offset order; the last is active. Never empty.
    pub(crate) segments: Vec<Segment>,
    /// Offset after the last valid batch.
    pub(crate) log_end: i64,
}

/// A file name the log owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Log,
    Index,
}

fn parse_name(name: &str) -> Option<(i64, Kind)> {
    let (stem, suffix) = name.split_once('.')?;
    if stem.len() != NAME_DIGITS || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let base = stem.parse::<i64>().ok()?;
    match suffix {
        LOG_SUFFIX => Some((base, Kind::Log)),
        INDEX_SUFFIX | TIME_INDEX_SUFFIX => Some((base, Kind::Index)),
        _ => None,
    }
}

fn corrupt_reason(e: &StorageError) -> (u64, String) {
    match e {
        StorageError::Corrupt {
            position, reason, ..
        } => (*position, reason.clone()),
        other => (0, other.to_string()),
    }
}

/// Reads a whole index file, refusing one larger than `bytes_max`.
fn read_index_file(disk: &dyn Disk, path: &Path, bytes_max: u64) -> Result<Vec<u8>, String> {
    let f = disk
        .open(path, OpenMode::Existing)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let len = f.len().map_err(|e| e.to_string())?;
    if len > bytes_max {
        return Err(format!("{}: {len} bytes is too large", path.display()));
    }
    let mut buf = vec![0u8; len as usize];
    let got = f.read_full_at(&mut buf, 0).map_err(|e| e.to_string())?;
    buf.truncate(got);
    Ok(buf)
}

/// Loads a sealed segment's index files and checks them without scanning the data.
fn load_index(
    disk: &dyn Disk,
    dir: &Path,
    base: i64,
    file: &dyn DiskFile,
    len: u64,
    rel_max: u32,
    interval: u32,
) -> Result<SegmentIndex, String> {
    let entries = entries_max(len);
    let offsets = read_index_file(
        disk,
        &segment_path(dir, base, INDEX_SUFFIX),
        entries * OFFSET_ENTRY_BYTES as u64 + INDEX_TRAILER_BYTES as u64,
    )?;
    let times = read_index_file(
        disk,
        &segment_path(dir, base, TIME_INDEX_SUFFIX),
        entries * TIME_ENTRY_BYTES as u64 + INDEX_TRAILER_BYTES as u64,
    )?;
    let index = SegmentIndex::decode(interval, &offsets, &times, len, rel_max)?;
    let last = index
        .last_offset_entry()
        .ok_or_else(|| "index is empty".to_owned())?;
    let h = SegmentReader::new(file, base, len, BATCH_HEADER_BYTES as u32)
        .header(last.pos.into())
        .map_err(|e| format!("last index entry: {e}"))?;
    if h.base_offset != base + i64::from(last.rel) {
        return Err(format!(
            "last index entry names offset {} but the batch there starts at {}",
            base + i64::from(last.rel),
            h.base_offset
        ));
    }
    Ok(index)
}

/// The active segment as a clean shutdown left it, checked against its marker without
/// scanning it: its index files must load (checksums, bounds, last entry on a batch), and
/// the batches from the last index entry on — at most `index_interval_bytes` and one
/// batch, unless the index files are older than the close (then they are completed here)
/// — must be valid, contiguous and end exactly at the recorded length and log end.
fn resume_active(
    disk: &dyn Disk,
    dir: &Path,
    base: i64,
    file: &dyn DiskFile,
    len: u64,
    marker: &CleanShutdown,
    interval: u32,
) -> Result<(SegmentIndex, Option<i64>), String> {
    if marker.active_base != base {
        return Err(format!(
            "marker names segment {} but the active one is {base}",
            marker.active_base
        ));
    }
    if marker.active_bytes != len {
        return Err(format!(
            "marker records {} bytes but the segment has {len}",
            marker.active_bytes
        ));
    }
    if len == 0 {
        if marker.log_end != base {
            return Err("empty segment but the marker's log end is past it".to_owned());
        }
        return Ok((SegmentIndex::new(interval), None));
    }
    let rel_max = marker
        .log_end
        .checked_sub(1)
        .and_then(|l| relative(l, base))
        .ok_or_else(|| "the marker's log end does not fit the segment".to_owned())?;
    let mut index = load_index(disk, dir, base, file, len, rel_max, interval)?;
    let entry = index
        .last_offset_entry()
        .ok_or_else(|| "index is empty".to_owned())?;
    let mut r = SegmentReader::new(file, base, len, interval.saturating_add(1 << 16));
    let mut pos = u64::from(entry.pos);
    let mut next = base + i64::from(entry.rel);
    while pos < len {
        let (h, _) = r.batch(pos).map_err(|e| e.to_string())?;
        let last = last_offset(&h)
            .filter(|_| h.base_offset == next)
            .ok_or_else(|| format!("batch at byte {pos} is not where the index says"))?;
        let rel = relative(h.base_offset, base).ok_or("offset outside the segment")?;
        // pos < len <= SEGMENT_BYTES_LIMIT and a batch <= BATCH_BYTES_LIMIT: both fit u32.
        let total = h.total_bytes() as u32;
        if pos == u64::from(entry.pos) {
            index.resume_at(rel, total);
        } else {
            index.observe(rel, pos as u32, total, h.max_timestamp);
        }
        pos += u64::from(total);
        next = last + 1;
    }
    if next != marker.log_end {
        return Err(format!(
            "segment ends at offset {next} but the marker says {}",
            marker.log_end
        ));
    }
    let first = SegmentReader::new(file, base, len, BATCH_HEADER_BYTES as u32)
        .header(0)
        .map_err(|e| e.to_string())?;
    Ok((index, Some(first.max_timestamp)))
}

/// Opens `dir` and rebuilds the in-memory state, repairing what it must.
pub(crate) fn recover(
    dir: &Path,
    config: &LogConfig,
    disk: &dyn Disk,
    clock: &dyn Clock,
    report: &mut RecoveryReport,
) -> Result<Recovered, StorageError> {
    disk.create_dir_all(dir)?;
    let interval = config.index_interval_bytes;
    let names = disk.read_dir(dir)?;
    let mut bases = BTreeSet::new();
    let mut indexes = Vec::new();
    let mut dir_changed = false;
    for name in &names {
        if name == CLEAN_SHUTDOWN_FILE {
            continue;
        }
        match parse_name(name) {
            Some((base, Kind::Log)) => {
                bases.insert(base);
            }
            Some((base, Kind::Index)) => indexes.push((base, name)),
            None if name.ends_with(&format!(".{TMP_SUFFIX}")) => {
                warn!(dir = %dir.display(), file = %name, "removing stray temporary file");
                remove_if_exists(disk, &dir.join(name))?;
                report.stray_files_removed.push(name.clone());
                dir_changed = true;
            }
            None => {
                warn!(dir = %dir.display(), file = %name, "ignoring a file that is not part of the log");
                report.unknown_files.push(name.clone());
            }
        }
    }
    for (base, name) in indexes {
        if !bases.contains(&base) {
            warn!(dir = %dir.display(), file = %name, "removing index without a segment");
            remove_if_exists(disk, &dir.join(name))?;
            report.stray_files_removed.push(name.clone());
            dir_changed = true;
        }
    }
    // Consumed before anything is repaired or written: from here on the log may change,
    // and only the next clean close may vouch for it again. The removal is not synced
    // here (a directory fsync per partition would dominate a clean start): should a
    // crash bring the marker back, it still pins the active segment's base and exact
    // length, which appends can only grow and which everything else that changes the
    // directory (roll, truncation, retention) syncs first. See `marker.rs`.
    let marker = match read_clean_shutdown(disk, dir)? {
        None => None,
        Some(m) => {
            remove_if_exists(disk, &dir.join(CLEAN_SHUTDOWN_FILE))?;
            match m {
                Ok(m) => Some(m),
                Err(why) => {
                    warn!(dir = %dir.display(), reason = why, "ignoring an unreadable clean-shutdown marker");
                    report.clean_shutdown_rejected = Some(why.to_owned());
                    None
                }
            }
        }
    };
    if bases.is_empty() {
        disk.open(&segment_path(dir, 0, LOG_SUFFIX), OpenMode::CreateNew)?;
        bases.insert(0);
        dir_changed = true;
    }

    let bases: Vec<i64> = bases.into_iter().collect();
    let mut segments = Vec::with_capacity(bases.len());
    let now = clock.now_ms();
    for (i, &base) in bases.iter().enumerate() {
        let file = disk.open(&segment_path(dir, base, LOG_SUFFIX), OpenMode::Existing)?;
        let len = file.len()?;
        if len > SEGMENT_BYTES_LIMIT {
            return Err(StorageError::Corrupt {
                segment: base,
                position: len,
                reason: "segment file is larger than any segment Weir writes".to_owned(),
            });
        }
        let Some(&next_base) = bases.get(i + 1) else {
            if let Some(m) = &marker {
                match resume_active(disk, dir, base, file.as_ref(), len, m, interval) {
                    Ok((index, first_max_timestamp)) => {
                        report.clean_shutdown = true;
                        segments.push(Segment {
                            base_offset: base,
                            file,
                            size_bytes: len,
                            file_bytes: len,
                            index,
                            first_append_ms: first_age(first_max_timestamp, now),
                        });
                        if dir_changed {
                            disk.sync_dir(dir)?;
                        }
                        report.segments = segments.len();
                        return Ok(Recovered {
                            segments,
                            log_end: m.log_end,
                        });
                    }
                    Err(why) => {
                        warn!(dir = %dir.display(), segment = base, reason = %why,
                            "clean-shutdown marker does not match; scanning the active segment");
                        report.clean_shutdown_rejected = Some(why);
                    }
                }
            }
            // The active segment: validate every batch and cut the first bad one and
            // everything after it; it was never acknowledged as durable past that point.
            let s = scan(file.as_ref(), base, len, interval)?;
            if let Some(stop) = &s.stop {
                let (position, mut reason) = corrupt_reason(stop);
                let bytes = len - s.valid_bytes;
                let unwritten = all_zeros(file.as_ref(), s.valid_bytes, len)?;
                if unwritten {
                    // Space reserved ahead of appends (`PREALLOCATE_BYTES`) reads as zeros:
                    // the usual tail after a crash, not damage.
                    reason = "unwritten space (reserved ahead of appends, or data that never \
                              reached the disk)"
                        .to_owned();
                    debug!(dir = %dir.display(), segment = base, position, bytes, %reason,
                        "cutting the unwritten tail of the active segment");
                } else {
                    warn!(dir = %dir.display(), segment = base, position, bytes, %reason,
                        "truncating torn or corrupt tail of the active segment");
                }
                file.set_len(s.valid_bytes)?;
                report.truncated = Some(TruncatedTail {
                    segment: base,
                    position: s.valid_bytes,
                    bytes,
                    reason,
                    unwritten,
                });
            }
            // Makes the cut durable, and whatever the old process wrote may still sit in
            // the page cache only: after this the whole log is durable.
            file.sync_data()?;
            segments.push(Segment {
                base_offset: base,
                file,
                size_bytes: s.valid_bytes,
                file_bytes: s.valid_bytes,
                index: s.index,
                first_append_ms: first_age(s.first_max_timestamp, now),
            });
            let log_end = s.next_offset;
            if dir_changed {
                disk.sync_dir(dir)?;
            }
            report.segments = segments.len();
            return Ok(Recovered { segments, log_end });
        };
        // A sealed segment holds offsets up to the next segment's base; a relative offset
        // beyond u32 cannot be indexed (the scan stops there and reports it).
        let rel_max = relative(next_base - 1, base).unwrap_or(u32::MAX);
        let index = match load_index(disk, dir, base, file.as_ref(), len, rel_max, interval) {
            Ok(index) => index,
            Err(why) => {
                warn!(dir = %dir.display(), segment = base, reason = %why, "rebuilding index of sealed segment");
                let mut s = scan(file.as_ref(), base, len, interval)?;
                s.index.seal();
                if let Some(stop) = &s.stop {
                    let (position, reason) = corrupt_reason(stop);
                    warn!(dir = %dir.display(), segment = base, position, %reason,
                        "sealed segment holds a bad batch; reads of it will fail");
                    report.corrupt.push(CorruptRegion {
                        segment: base,
                        position,
                        reason,
                    });
                } else {
                    // Persist only a complete index, so the corruption is found again on
                    // the next open instead of hiding behind a valid-looking index.
                    write_index_files(disk, dir, base, &s.index, true)?;
                    dir_changed = true;
                }
                report.indexes_rebuilt.push(base);
                s.index
            }
        };
        segments.push(Segment {
            base_offset: base,
            file,
            size_bytes: len,
            file_bytes: len,
            index,
            first_append_ms: None,
        });
    }
    unreachable!("the loop returns at the last segment, and there is at least one")
}

/// Whether bytes `from..to` of a file are all zeros, read a chunk at a time.
fn all_zeros(file: &dyn DiskFile, from: u64, to: u64) -> Result<bool, StorageError> {
    let mut pos = from;
    while pos < to {
        let want = (to - pos).min(SCAN_CHUNK_BYTES.into());
        // Bounded by the chunk size, itself a `u32`.
        let chunk = file.read_vec_at(want as usize, pos)?;
        if chunk.is_empty() {
            break;
        }
        if chunk.iter().any(|&b| b != 0) {
            return Ok(false);
        }
        pos += chunk.len() as u64;
    }
    Ok(true)
}

/// When the active segment's age counts from after a restart: its first batch's max
/// timestamp, unless that is absent, negative or in the future (then now).
fn first_age(first_max_timestamp: Option<i64>, now: i64) -> Option<i64> {
    first_max_timestamp.map(|ts| if ts >= 0 { ts.min(now) } else { now })
}
