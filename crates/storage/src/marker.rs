//! The clean-shutdown marker: a small file [`Log::close`](crate::Log::close) writes last,
//! once every byte of data and the active segment's index files are durable. It lets the
//! next open trust the active segment instead of scanning it batch by batch, which is
//! what makes restarting a broker with many partitions and much data fast.
//!
//! Format (`clean-shutdown` in the partition directory, 36 bytes, big-endian):
//!
//! | byte | field          | type |
//! |-----:|----------------|------|
//! | 0    | magic          | `WEIRCLN1` (8 ASCII bytes) |
//! | 8    | active base    | i64: base offset of the active segment at close |
//! | 16   | active bytes   | u64: its length at close |
//! | 24   | log end        | i64: the log end offset at close |
//! | 32   | crc            | u32: CRC-32C of bytes `[0, 32)` |
//!
//! Opening a log removes the marker before the log takes any write: a crash after the
//! open normally finds no marker and scans, as before. A marker that does not match what
//! is on disk is ignored (and the segment scanned).
//!
//! The removal is not fsynced at open (with a thousand partitions, a directory fsync each
//! costs more than the rest of a clean start). If a crash brings the marker back, it is
//! still true or visibly wrong: it pins the active segment's base offset and exact length.
//! The log never rewrites bytes below the end of the active segment; appends only grow
//! it, and a grown length no longer matches. Everything that could change the segment
//! otherwise — a roll (new active segment), `truncate_after`, retention, rewriting index
//! files — syncs the directory, which makes the removal durable first. And the bytes the
//! marker vouches for are the ones `close` synced, whatever happened after.

use std::io;
use std::path::Path;

use crate::disk::{Disk, OpenMode};
use crate::segment::{TMP_SUFFIX, remove_if_exists};

/// File name of the marker inside the partition directory.
pub(crate) const CLEAN_SHUTDOWN_FILE: &str = "clean-shutdown";
/// First bytes of the marker; the digit is the format version.
const MAGIC: &[u8; 8] = b"WEIRCLN1";
/// Bytes of the marker file.
const MARKER_BYTES: usize = 36;

/// What a clean shutdown left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CleanShutdown {
    /// Base offset of the active segment.
    pub(crate) active_base: i64,
    /// Length of the active segment file: all of it is whole, valid, synced batches.
    pub(crate) active_bytes: u64,
    /// Next offset the log would have assigned.
    pub(crate) log_end: i64,
}

impl CleanShutdown {
    fn encode(&self) -> [u8; MARKER_BYTES] {
        let mut out = [0u8; MARKER_BYTES];
        out[..8].copy_from_slice(MAGIC);
        out[8..16].copy_from_slice(&self.active_base.to_be_bytes());
        out[16..24].copy_from_slice(&self.active_bytes.to_be_bytes());
        out[24..32].copy_from_slice(&self.log_end.to_be_bytes());
        let crc = crc32c::crc32c(&out[..32]);
        out[32..].copy_from_slice(&crc.to_be_bytes());
        out
    }

    fn decode(b: &[u8]) -> Result<Self, &'static str> {
        let b: &[u8; MARKER_BYTES] = b.try_into().map_err(|_| "wrong size")?;
        if &b[..8] != MAGIC {
            return Err("bad magic");
        }
        let crc = u32::from_be_bytes([b[32], b[33], b[34], b[35]]);
        if crc32c::crc32c(&b[..32]) != crc {
            return Err("checksum mismatch");
        }
        let i64_at = |at: usize| {
            let mut v = [0u8; 8];
            v.copy_from_slice(&b[at..at + 8]);
            v
        };
        let m = CleanShutdown {
            active_base: i64::from_be_bytes(i64_at(8)),
            active_bytes: u64::from_be_bytes(i64_at(16)),
            log_end: i64::from_be_bytes(i64_at(24)),
        };
        if m.active_base < 0 || m.log_end < m.active_base {
            return Err("offsets out of order");
        }
        Ok(m)
    }
}

/// Writes the marker durably: temporary file, fsync, rename, directory fsync.
pub(crate) fn write_clean_shutdown(
    disk: &dyn Disk,
    dir: &Path,
    marker: &CleanShutdown,
) -> io::Result<()> {
    let path = dir.join(CLEAN_SHUTDOWN_FILE);
    let tmp = dir.join(format!("{CLEAN_SHUTDOWN_FILE}.{TMP_SUFFIX}"));
    remove_if_exists(disk, &tmp)?;
    let f = disk.open(&tmp, OpenMode::CreateNew)?;
    f.write_all_at(&marker.encode(), 0)?;
    f.sync_data()?;
    disk.rename(&tmp, &path)?;
    disk.sync_dir(dir)
}

/// Reads the marker if there is one. `Err` carries why an existing marker is unusable.
/// Does not remove it: the caller does, durably, before the log takes writes.
pub(crate) fn read_clean_shutdown(
    disk: &dyn Disk,
    dir: &Path,
) -> io::Result<Option<Result<CleanShutdown, &'static str>>> {
    let f = match disk.open(&dir.join(CLEAN_SHUTDOWN_FILE), OpenMode::Existing) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if f.len()? != MARKER_BYTES as u64 {
        return Ok(Some(Err("wrong size")));
    }
    let mut buf = [0u8; MARKER_BYTES];
    let got = f.read_full_at(&mut buf, 0)?;
    Ok(Some(CleanShutdown::decode(&buf[..got])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let m = CleanShutdown {
            active_base: 4711,
            active_bytes: 123_456,
            log_end: 9000,
        };
        let b = m.encode();
        assert_eq!(CleanShutdown::decode(&b), Ok(m));
        for i in 0..MARKER_BYTES {
            for bit in 0..8 {
                let mut d = b;
                d[i] ^= 1 << bit;
                assert!(CleanShutdown::decode(&d).is_err(), "byte {i} bit {bit}");
            }
        }
        assert!(CleanShutdown::decode(&b[..35]).is_err());
    }
}
