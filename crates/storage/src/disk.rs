//! The file system behind two small traits, so tests can inject faults.
//!
//! Only what the log needs: positional reads and writes (no shared cursor, so readers and
//! the writer never race on a seek position), `fdatasync`, truncation, and the handful of
//! directory operations recovery, rolling and retention use.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// How [`Disk::open`] treats an existing or missing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// The file must exist.
    Existing,
    /// The file must not exist; it is created empty.
    CreateNew,
}

/// An open file: positional I/O only, shareable between threads.
pub trait DiskFile: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `pos`; returns how many were read (0 at end of file).
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;

    /// Writes all of `buf` at `pos`, extending the file if needed.
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()>;

    /// Writes `parts` one after another from `pos`, as [`DiskFile::write_all_at`] of their
    /// concatenation would. The log writes a batch as its patched header and the rest of
    /// the producer's bytes, so it never copies a batch to patch it.
    fn write_all_vectored_at(&self, parts: &[&[u8]], pos: u64) -> io::Result<()> {
        self.write_all_at(&parts.concat(), pos)
    }

    /// Asks the kernel to start writing `len` bytes from `pos` back to the disk now, in the
    /// background, instead of all at once when too many pages are dirty. A hint: it makes
    /// nothing durable and its failure loses nothing.
    fn start_writeback(&self, _pos: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }

    /// `fdatasync`: makes written data (and the length) durable.
    fn sync_data(&self) -> io::Result<()>;

    /// Truncates or extends the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Reserves disk blocks for `len` bytes from `pos` and makes the file at least
    /// `pos + len` bytes long, reading as zeros past what was written (`fallocate(2)` mode
    /// 0). [`io::ErrorKind::Unsupported`] where the file system cannot.
    fn allocate(&self, _pos: u64, _len: u64) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;

    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Reads `len` bytes at `pos` into a new buffer, fewer only where the file ends.
    fn read_vec_at(&self, len: usize, pos: u64) -> io::Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        let got = self.read_full_at(&mut v, pos)?;
        v.truncate(got);
        Ok(v)
    }

    /// Reads `len` bytes at `pos` into a new buffer only if all of them are in the page
    /// cache: `Ok(None)` where any would wait for the disk, where the file ends sooner, or
    /// where the platform cannot tell. A reader on an async thread can serve hot data
    /// this way and hand only the rest to a thread that may block.
    fn read_cached_at(&self, _len: usize, _pos: u64) -> io::Result<Option<Vec<u8>>> {
        Ok(None)
    }

    /// Reads until `buf` is full or the file ends; returns the bytes read.
    fn read_full_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            let at = pos
                .checked_add(done as u64)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "position overflow"))?;
            match self.read_at(&mut buf[done..], at) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

/// A file system: opens files and manages the partition directory.
pub trait Disk: Send + Sync + fmt::Debug {
    /// Opens `path` for reading and writing.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn DiskFile>>;
    /// Unlinks a file. Open handles keep working (POSIX semantics).
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Atomically renames a file.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Creates a directory and its parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory and everything in it.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Names of the entries of a directory (not full paths), in no particular order.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Makes creations, renames and removals in a directory durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
}

/// Most slices one `pwritev` takes (Linux `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// The real file system, through `std::fs` (and `rustix` for the vectored and
/// uninitialized-buffer positional I/O `std` has no stable API for).
#[derive(Debug, Clone, Copy, Default)]
pub struct FsDisk;

/// A `std::fs::File` as a [`DiskFile`].
#[derive(Debug)]
struct FsFile {
    /// The open file; positional I/O needs no lock.
    file: File,
}

impl DiskFile for FsFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        FileExt::read_at(&self.file, buf, pos)
    }

    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        FileExt::write_all_at(&self.file, buf, pos)
    }

    fn write_all_vectored_at(&self, parts: &[&[u8]], pos: u64) -> io::Result<()> {
        let mut slices: Vec<IoSlice<'_>> = parts
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| IoSlice::new(p))
            .collect();
        let mut rest = &mut slices[..];
        let mut at = pos;
        while !rest.is_empty() {
            let n = rest.len().min(IOV_MAX);
            match rustix::io::pwritev(&self.file, &rest[..n], at) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    at += written as u64;
                    IoSlice::advance_slices(&mut rest, written);
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn read_vec_at(&self, len: usize, pos: u64) -> io::Result<Vec<u8>> {
        // Read into the new buffer's spare capacity: no zero-fill of what the read overwrites.
        let mut v = Vec::with_capacity(len);
        while v.len() < len {
            let at = pos + v.len() as u64;
            match rustix::io::pread(&self.file, rustix::buffer::spare_capacity(&mut v), at) {
                Ok(0) => break,
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // The capacity may exceed `len`, and so may the last read.
        v.truncate(len);
        Ok(v)
    }

    fn read_cached_at(&self, len: usize, pos: u64) -> io::Result<Option<Vec<u8>>> {
        // RWF_NOWAIT: the kernel copies what the page cache holds and answers EAGAIN
        // instead of starting disk I/O. preadv2 wants initialized memory, hence the zeroes;
        // callers keep these reads small.
        let mut v = vec![0u8; len];
        let mut done = 0;
        while done < len {
            let at = pos + done as u64;
            let mut slice = [IoSliceMut::new(&mut v[done..])];
            match rustix::io::preadv2(
                &self.file,
                &mut slice,
                at,
                rustix::io::ReadWriteFlags::NOWAIT,
            ) {
                // The file ends sooner: the caller's size snapshot is not what it reads.
                Ok(0) => return Ok(None),
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => {}
                // Not cached, or a kernel or file system without RWF_NOWAIT for reads.
                Err(
                    rustix::io::Errno::AGAIN
                    | rustix::io::Errno::OPNOTSUPP
                    | rustix::io::Errno::INVAL,
                ) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Some(v))
    }

    fn start_writeback(&self, pos: u64, len: u64) -> io::Result<()> {
        // POSIX_FADV_DONTNEED starts asynchronous writeback of the range's dirty pages
        // (Linux `generic_fadvise`), and drops only pages already clean: the bytes just
        // appended stay cached for readers at the tail.
        let len = std::num::NonZeroU64::new(len);
        rustix::fs::fadvise(&self.file, pos, len, rustix::fs::Advice::DontNeed)?;
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn allocate(&self, pos: u64, len: u64) -> io::Result<()> {
        match rustix::fs::fallocate(&self.file, rustix::fs::FallocateFlags::empty(), pos, len) {
            Err(rustix::io::Errno::OPNOTSUPP) => Err(io::ErrorKind::Unsupported.into()),
            r => Ok(r?),
        }
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
}

impl Disk for FsDisk {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn DiskFile>> {
        let mut o = OpenOptions::new();
        // Never O_APPEND: positional writes ignore the offset under O_APPEND on Linux.
        o.read(true).write(true);
        if mode == OpenMode::CreateNew {
            o.create_new(true);
        }
        Ok(Arc::new(FsFile {
            file: o.open(path)?,
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir_all(path)
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(path)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
}
