//! Fault injection for tests: a [`Disk`] wrapper that counts operations and fails them on
//! command, the way a dying or full disk would.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::disk::{Disk, DiskFile, OpenMode};

/// `EIO` on Linux (and every other Unix Weir targets).
const EIO: i32 = 5;
/// `ENOSPC` on Linux (and every other Unix Weir targets).
const ENOSPC: i32 = 28;

/// Which error an injected fault returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// `EIO`: the device failed.
    Eio,
    /// `ENOSPC`: the device is full.
    Enospc,
}

impl FaultKind {
    fn error(self) -> io::Error {
        io::Error::from_raw_os_error(match self {
            FaultKind::Eio => EIO,
            FaultKind::Enospc => ENOSPC,
        })
    }
}

/// An armed fault: let `remaining` more operations succeed, then fail every one.
#[derive(Debug, Clone, Copy)]
struct Fault {
    remaining: u64,
    kind: FaultKind,
}

/// State shared by the disk and every file it opened.
#[derive(Debug, Default)]
struct Faults {
    /// `sync_data` calls on files, failed ones included.
    syncs: AtomicU64,
    /// `write_all_at` calls on files, failed ones included.
    writes: AtomicU64,
    /// Armed fault for `sync_data`.
    sync_fault: Mutex<Option<Fault>>,
    /// Armed fault for `write_all_at`.
    write_fault: Mutex<Option<Fault>>,
    /// Extra latency of each `sync_data`, to make concurrent syncs overlap in tests.
    sync_delay: Mutex<Duration>,
}

fn check(fault: &Mutex<Option<Fault>>) -> io::Result<()> {
    let mut f = fault.lock();
    match f.as_mut() {
        None => Ok(()),
        Some(Fault { remaining: 0, kind }) => Err(kind.error()),
        Some(Fault { remaining, .. }) => {
            *remaining -= 1;
            Ok(())
        }
    }
}

/// Wraps another [`Disk`]; counts file syncs and writes and fails them on command.
#[derive(Debug, Clone)]
pub struct FaultyDisk {
    /// The disk doing the real work.
    inner: Arc<dyn Disk>,
    /// Counters and armed faults, shared with every file opened through this disk.
    faults: Arc<Faults>,
}

impl FaultyDisk {
    /// Wraps `inner` with no fault armed.
    pub fn new(inner: Arc<dyn Disk>) -> Self {
        Self {
            inner,
            faults: Arc::default(),
        }
    }

    /// After `n` more successful file syncs, every `sync_data` fails with `kind`.
    pub fn fail_syncs_after(&self, n: u64, kind: FaultKind) {
        *self.faults.sync_fault.lock() = Some(Fault { remaining: n, kind });
    }

    /// After `n` more successful file writes, every `write_all_at` fails with `kind`.
    pub fn fail_writes_after(&self, n: u64, kind: FaultKind) {
        *self.faults.write_fault.lock() = Some(Fault { remaining: n, kind });
    }

    /// Disarms every fault.
    pub fn clear_faults(&self) {
        *self.faults.sync_fault.lock() = None;
        *self.faults.write_fault.lock() = None;
    }

    /// Makes each file sync take at least `delay` longer.
    pub fn set_sync_delay(&self, delay: Duration) {
        *self.faults.sync_delay.lock() = delay;
    }

    /// File `sync_data` calls so far (failed ones included).
    pub fn sync_count(&self) -> u64 {
        self.faults.syncs.load(Ordering::SeqCst)
    }

    /// File `write_all_at` calls so far (failed ones included).
    pub fn write_count(&self) -> u64 {
        self.faults.writes.load(Ordering::SeqCst)
    }
}

/// A file opened through a [`FaultyDisk`].
#[derive(Debug)]
struct FaultyFile {
    /// The real file.
    inner: Arc<dyn DiskFile>,
    /// Shared with the disk that opened it.
    faults: Arc<Faults>,
}

impl DiskFile for FaultyFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.inner.read_at(buf, pos)
    }

    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.faults.writes.fetch_add(1, Ordering::SeqCst);
        check(&self.faults.write_fault)?;
        self.inner.write_all_at(buf, pos)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.faults.syncs.fetch_add(1, Ordering::SeqCst);
        let delay = *self.faults.sync_delay.lock();
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        check(&self.faults.sync_fault)?;
        self.inner.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
}

impl Disk for FaultyDisk {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn DiskFile>> {
        Ok(Arc::new(FaultyFile {
            inner: self.inner.open(path, mode)?,
            faults: Arc::clone(&self.faults),
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_dir_all(path)
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.read_dir(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.sync_dir(path)
    }
}
