//! Fault injection for tests: a [`Disk`] wrapper that counts operations and fails them
//! the way a dying or full disk would — on command, or at random from a seed.
//!
//! Two modes:
//! - [`FaultyDisk::new`]: faults only on command ([`FaultyDisk::fail_syncs_after`],
//!   [`FaultyDisk::fail_writes_after`]). Cheap; used to fail one precise operation.
//! - [`FaultyDisk::seeded`]: additionally fails operations at random according to a
//!   [`FaultPlan`] (EIO or ENOSPC on writes, short writes, failed fsyncs, failed
//!   truncations and directory operations), and remembers what each file held at its last
//!   successful `fdatasync`. [`FaultyDisk::crash`] then turns the files into what a power
//!   cut could leave: the synced content plus a random subset of the later writes and
//!   truncations, the last of them possibly torn. Everything is drawn from one
//!   deterministic generator seeded by the test, so a failing seed replays exactly as long
//!   as the operations arrive in the same order (single-threaded use).
//!
//! Simplifications, on purpose: directory operations (create, rename, remove) are durable
//! as soon as they return (the log syncs its directory after each anyway, and a failed
//! directory sync is injected as an error); a file is tracked under the path it was opened
//! with (the log never writes to a file after renaming it).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::disk::{Disk, DiskFile, OpenMode};

/// `EIO` on Linux (and every other Unix Weir targets).
const EIO: i32 = 5;
/// `ENOSPC` on Linux (and every other Unix Weir targets).
const ENOSPC: i32 = 28;
/// Probabilities are in parts per million.
const PPM: u64 = 1_000_000;

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

/// How often a [`FaultyDisk::seeded`] disk fails each kind of operation at random, in
/// parts per million. The default fails nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// File writes that fail, with `EIO` or `ENOSPC` (even odds).
    pub write_ppm: u32,
    /// Whether a failing write first writes a random prefix of its buffer, as a real
    /// short write followed by an error does.
    pub short_writes: bool,
    /// File `fdatasync` calls that fail, with `EIO` or `ENOSPC` (even odds).
    pub sync_ppm: u32,
    /// File truncations (`set_len`) that fail with `EIO`, and reservations of space
    /// (`allocate`) that fail with `ENOSPC`.
    pub set_len_ppm: u32,
    /// Directory operations (create a file, rename, remove, directory fsync) that fail,
    /// with `EIO` or `ENOSPC` (even odds).
    pub dir_ppm: u32,
}

/// An armed fault: let `remaining` more operations succeed, then fail every one.
#[derive(Debug, Clone, Copy)]
struct Fault {
    remaining: u64,
    kind: FaultKind,
}

/// What happened to a file since its last successful sync, in order.
#[derive(Debug, Clone)]
enum Pending {
    /// Bytes written at a position (for a failed short write: the part that was written).
    Write { pos: u64, bytes: Vec<u8> },
    /// A truncation or extension.
    SetLen(u64),
}

/// A file's durable content and what was done to it since.
#[derive(Debug, Default)]
struct Tracked {
    /// Content at the last successful `sync_data` (or when first seen).
    durable: Vec<u8>,
    /// Operations since then, which a crash may or may not keep.
    pending: Vec<Pending>,
}

/// The seeded part: random faults and crash simulation.
#[derive(Debug)]
struct Random {
    /// splitmix64 state.
    state: u64,
    /// Fault probabilities.
    plan: FaultPlan,
    /// Tracked files by path.
    files: HashMap<PathBuf, Tracked>,
}

impl Random {
    /// The next pseudo-random number (splitmix64: tiny, fast, good enough for tests).
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn hit(&mut self, ppm: u32) -> bool {
        ppm > 0 && self.below(PPM) < u64::from(ppm)
    }

    fn kind(&mut self) -> FaultKind {
        if self.next() & 1 == 0 {
            FaultKind::Eio
        } else {
            FaultKind::Enospc
        }
    }
}

/// State shared by the disk and every file it opened.
#[derive(Debug, Default)]
struct Faults {
    /// `sync_data` calls on files, failed ones included.
    syncs: AtomicU64,
    /// `write_all_at` calls on files, failed ones included.
    writes: AtomicU64,
    /// `start_writeback` calls on files: (position, length), in order.
    writebacks: Mutex<Vec<(u64, u64)>>,
    /// Armed fault for `sync_data`.
    sync_fault: Mutex<Option<Fault>>,
    /// Armed fault for `write_all_at`.
    write_fault: Mutex<Option<Fault>>,
    /// Armed fault for directory syncs.
    dir_sync_fault: Mutex<Option<Fault>>,
    /// Extra latency of each `sync_data`, to make concurrent syncs overlap in tests.
    sync_delay: Mutex<Duration>,
    /// Files whose `sync_data` failed (injected), in order.
    failed_syncs: Mutex<Vec<PathBuf>>,
    /// Present for a seeded disk.
    random: Option<Mutex<Random>>,
    /// File and directory syncs succeed without reaching the real disk: for tests whose
    /// subject is not durability (or, seeded, that model it themselves), and that would
    /// otherwise spend their time in fsync.
    skip_real_syncs: bool,
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

impl Faults {
    /// Whether a random directory operation fault strikes now.
    fn dir_fault(&self) -> io::Result<()> {
        if let Some(r) = &self.random {
            let mut r = r.lock();
            let ppm = r.plan.dir_ppm;
            if r.hit(ppm) {
                return Err(r.kind().error());
            }
        }
        Ok(())
    }
}

/// Wraps another [`Disk`]; counts file syncs and writes and fails operations on command
/// or, when seeded, at random. See the module docs.
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

    /// Wraps `inner`, failing operations at random per `plan` from a generator seeded with
    /// `seed`, and tracking what each file holds durably so that [`FaultyDisk::crash`]
    /// can simulate a power cut. Files that exist when first opened count as durable.
    ///
    /// The real disk never sees a sync: durability is what this disk models (see
    /// [`FaultyDisk::crash`]), and the tests run many times faster.
    pub fn seeded(inner: Arc<dyn Disk>, seed: u64, plan: FaultPlan) -> Self {
        Self {
            inner,
            faults: Arc::new(Faults {
                random: Some(Mutex::new(Random {
                    state: seed,
                    plan,
                    files: HashMap::new(),
                })),
                skip_real_syncs: true,
                ..Faults::default()
            }),
        }
    }

    /// Wraps `inner` with no fault armed, and file and directory syncs that succeed
    /// without reaching the real disk: for tests that reopen logs thousands of times and
    /// test detection and repair, not durability.
    pub fn without_real_syncs(inner: Arc<dyn Disk>) -> Self {
        Self {
            inner,
            faults: Arc::new(Faults {
                skip_real_syncs: true,
                ..Faults::default()
            }),
        }
    }

    /// Replaces the random fault plan (no effect unless seeded). `FaultPlan::default()`
    /// turns random faults off, e.g. while a test reopens the log "on a healthy disk".
    pub fn set_plan(&self, plan: FaultPlan) {
        if let Some(r) = &self.faults.random {
            r.lock().plan = plan;
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

    /// After `n` more successful directory syncs, every `sync_dir` fails with `kind`.
    pub fn fail_dir_syncs_after(&self, n: u64, kind: FaultKind) {
        *self.faults.dir_sync_fault.lock() = Some(Fault { remaining: n, kind });
    }

    /// Disarms every fault armed on command (the random plan stays).
    pub fn clear_faults(&self) {
        *self.faults.sync_fault.lock() = None;
        *self.faults.write_fault.lock() = None;
        *self.faults.dir_sync_fault.lock() = None;
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

    /// The (position, length) of every `start_writeback` hint so far, in order.
    pub fn writebacks(&self) -> Vec<(u64, u64)> {
        self.faults.writebacks.lock().clone()
    }

    /// Paths of the files whose `sync_data` was failed by this disk, in order.
    pub fn failed_syncs(&self) -> Vec<PathBuf> {
        self.faults.failed_syncs.lock().clone()
    }

    /// Simulates a power cut (seeded disks only; otherwise does nothing): every tracked
    /// file becomes its content at its last successful sync plus a random subset of the
    /// writes and truncations made since, in order, each write possibly torn. Drop
    /// everything that uses the disk before calling this, and reopen afterwards. Returns
    /// how many unsynced operations were dropped or torn.
    pub fn crash(&self) -> io::Result<u64> {
        let Some(r) = &self.faults.random else {
            return Ok(0);
        };
        let mut r = r.lock();
        let mut files: Vec<(PathBuf, Tracked)> = r.files.drain().collect();
        // A fixed order, so the same seed draws the same numbers for the same files.
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let mut lost = 0;
        for (path, t) in files {
            let mut content = t.durable;
            for op in t.pending {
                match r.below(4) {
                    // Never reached the disk.
                    0 => lost += 1,
                    // Torn: a prefix of a write.
                    1 => {
                        if let Pending::Write { pos, bytes } = &op {
                            let keep = r.below(bytes.len() as u64 + 1) as usize;
                            apply(
                                &mut content,
                                &Pending::Write {
                                    pos: *pos,
                                    bytes: bytes[..keep].to_vec(),
                                },
                            );
                            lost += 1;
                        } else {
                            apply(&mut content, &op);
                        }
                    }
                    _ => apply(&mut content, &op),
                }
            }
            let f = self.inner.open(&path, OpenMode::Existing)?;
            f.set_len(0)?;
            f.write_all_at(&content, 0)?;
            r.files.insert(
                path,
                Tracked {
                    durable: content,
                    pending: Vec::new(),
                },
            );
        }
        Ok(lost)
    }
}

/// Applies one pending operation to a file's content.
fn apply(content: &mut Vec<u8>, op: &Pending) {
    match op {
        Pending::Write { pos, bytes } => {
            let pos = *pos as usize;
            let end = pos + bytes.len();
            if content.len() < end {
                content.resize(end, 0);
            }
            content[pos..end].copy_from_slice(bytes);
        }
        Pending::SetLen(len) => content.resize(*len as usize, 0),
    }
}

/// A file opened through a [`FaultyDisk`].
#[derive(Debug)]
struct FaultyFile {
    /// The real file.
    inner: Arc<dyn DiskFile>,
    /// The path it was opened with, for tracking.
    path: PathBuf,
    /// Shared with the disk that opened it.
    faults: Arc<Faults>,
}

impl FaultyFile {
    fn record(&self, op: Pending) {
        if let Some(r) = &self.faults.random
            && let Some(t) = r.lock().files.get_mut(&self.path)
        {
            t.pending.push(op);
        }
    }
}

impl DiskFile for FaultyFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.inner.read_at(buf, pos)
    }

    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.faults.writes.fetch_add(1, Ordering::SeqCst);
        check(&self.faults.write_fault)?;
        if let Some(r) = &self.faults.random {
            let fault = {
                let mut r = r.lock();
                let ppm = r.plan.write_ppm;
                if r.hit(ppm) {
                    let written = if r.plan.short_writes {
                        r.below(buf.len() as u64 + 1) as usize
                    } else {
                        0
                    };
                    Some((r.kind(), written))
                } else {
                    None
                }
            };
            if let Some((kind, written)) = fault {
                if written > 0 {
                    self.inner.write_all_at(&buf[..written], pos)?;
                    self.record(Pending::Write {
                        pos,
                        bytes: buf[..written].to_vec(),
                    });
                }
                return Err(kind.error());
            }
        }
        self.inner.write_all_at(buf, pos)?;
        self.record(Pending::Write {
            pos,
            bytes: buf.to_vec(),
        });
        Ok(())
    }

    fn start_writeback(&self, pos: u64, len: u64) -> io::Result<()> {
        // Recorded for tests; a hint changes nothing a simulated power cut keeps.
        self.faults.writebacks.lock().push((pos, len));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.faults.syncs.fetch_add(1, Ordering::SeqCst);
        let delay = *self.faults.sync_delay.lock();
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let mut result = check(&self.faults.sync_fault);
        if let Some(r) = &self.faults.random
            && result.is_ok()
        {
            let mut r = r.lock();
            let ppm = r.plan.sync_ppm;
            if r.hit(ppm) {
                result = Err(r.kind().error());
            }
        }
        if let Err(e) = result {
            self.faults.failed_syncs.lock().push(self.path.clone());
            return Err(e);
        }
        if !self.faults.skip_real_syncs {
            self.inner.sync_data()?;
        }
        if let Some(r) = &self.faults.random
            && let Some(t) = r.lock().files.get_mut(&self.path)
        {
            let pending = std::mem::take(&mut t.pending);
            for op in &pending {
                apply(&mut t.durable, op);
            }
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if let Some(r) = &self.faults.random {
            let mut r = r.lock();
            let ppm = r.plan.set_len_ppm;
            if r.hit(ppm) {
                return Err(FaultKind::Eio.error());
            }
        }
        self.inner.set_len(len)?;
        self.record(Pending::SetLen(len));
        Ok(())
    }

    fn allocate(&self, pos: u64, len: u64) -> io::Result<()> {
        if let Some(r) = &self.faults.random {
            let mut r = r.lock();
            let ppm = r.plan.set_len_ppm;
            if r.hit(ppm) {
                return Err(FaultKind::Enospc.error());
            }
        }
        self.inner.allocate(pos, len)?;
        // To a power cut, reserved space is the file growing by zeros (never shrinking).
        let end = (pos + len).max(self.inner.len()?);
        self.record(Pending::SetLen(end));
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
}

impl Disk for FaultyDisk {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn DiskFile>> {
        if mode == OpenMode::CreateNew {
            self.faults.dir_fault()?;
        }
        let inner = self.inner.open(path, mode)?;
        if let Some(r) = &self.faults.random {
            let mut r = r.lock();
            if mode == OpenMode::CreateNew || !r.files.contains_key(path) {
                // A new file is empty; an existing one first seen now counts as durable.
                let mut durable = vec![0u8; inner.len()? as usize];
                let got = inner.read_full_at(&mut durable, 0)?;
                durable.truncate(got);
                r.files.insert(
                    path.to_owned(),
                    Tracked {
                        durable,
                        pending: Vec::new(),
                    },
                );
            }
        }
        Ok(Arc::new(FaultyFile {
            inner,
            path: path.to_owned(),
            faults: Arc::clone(&self.faults),
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.faults.dir_fault()?;
        self.inner.remove_file(path)?;
        if let Some(r) = &self.faults.random {
            r.lock().files.remove(path);
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.faults.dir_fault()?;
        self.inner.rename(from, to)?;
        if let Some(r) = &self.faults.random {
            let mut r = r.lock();
            r.files.remove(to);
            if let Some(t) = r.files.remove(from) {
                r.files.insert(to.to_owned(), t);
            }
        }
        Ok(())
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_dir_all(path)?;
        if let Some(r) = &self.faults.random {
            r.lock().files.retain(|p, _| !p.starts_with(path));
        }
        Ok(())
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.read_dir(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        check(&self.faults.dir_sync_fault)?;
        self.faults.dir_fault()?;
        if self.faults.skip_real_syncs {
            return Ok(());
        }
        self.inner.sync_dir(path)
    }
}
