//! A durable home for a deterministic state machine on one node: a command log plus
//! snapshots. Topic metadata and each partition of committed group offsets use it; in a
//! cluster each becomes a Raft group applying the same commands.
//!
//! Files in the store's directory:
//! - `commands.log`: records of `[len: u32 BE][crc32c of payload: u32 BE][payload]`, where
//!   the payload is one JSON [`LogEntry`]. A torn or corrupt tail is truncated at start-up.
//! - `snapshot.json`: `[crc32c: u32 BE]` then the JSON state, written to
//!   `snapshot.json.tmp`, fsynced, renamed over the old one, directory fsynced. After a
//!   snapshot the log is emptied, so a crash between the two only replays entries the
//!   snapshot already holds (they are skipped by index).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Bytes one log entry may take; a longer length on disk is corruption.
pub const STORE_ENTRY_BYTES_MAX: u32 = 16 * 1024 * 1024;
/// Bytes a snapshot may take on disk.
pub const STORE_SNAPSHOT_BYTES_MAX: u64 = 1024 * 1024 * 1024;
/// Commands between snapshots.
pub const STORE_SNAPSHOT_EVERY_ENTRIES: u64 = 1000;

pub(crate) const LOG_FILE: &str = "commands.log";
pub(crate) const SNAPSHOT_FILE: &str = "snapshot.json";
pub(crate) const SNAPSHOT_TMP_FILE: &str = "snapshot.json.tmp";
pub(crate) const ENTRY_HEADER_BYTES: usize = 8;

/// A deterministic state machine: replicas applying the same commands in the same order
/// reach the same state.
pub trait StateMachine: Default + Clone + Serialize + DeserializeOwned + Send + 'static {
    /// A change.
    type Command: Serialize + DeserializeOwned + Clone + Send + 'static;
    /// Why a command does not apply.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Index of the last applied command (0 when none).
    fn last_applied(&self) -> u64;
    /// Checks that `cmd` would apply, without changing anything.
    fn check(&self, cmd: &Self::Command) -> Result<(), Self::Error>;
    /// Applies command number `index`; the only way the state changes.
    fn apply(&mut self, index: u64, cmd: &Self::Command) -> Result<(), Self::Error>;
}

/// One record of the command log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogEntry<C> {
    /// Position of the command in the total order, from 1.
    pub index: u64,
    /// The command.
    pub command: C,
}

/// Errors of a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError<E: std::error::Error + 'static> {
    /// Reading or writing a file failed.
    #[error("I/O on {path}: {source}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The snapshot exists but cannot be trusted; refusing to start with guessed state.
    #[error("snapshot {path} is corrupt: {reason}")]
    CorruptSnapshot {
        /// File involved.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A command in the log does not apply (a bug, or a hand-edited file).
    #[error("log entry {index} does not apply: {source}")]
    Replay {
        /// Entry index.
        index: u64,
        /// Cause.
        source: E,
    },
    /// The command does not apply to the current state.
    #[error(transparent)]
    Apply(E),
}

/// What start-up found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreRecovery {
    /// Entries replayed from the log on top of the snapshot.
    pub entries_replayed: u64,
    /// Bytes cut from a torn or corrupt log tail.
    pub log_bytes_truncated: u64,
    /// A leftover `snapshot.json.tmp` from an interrupted snapshot was removed.
    pub removed_partial_snapshot: bool,
}

/// A state machine kept durable in a directory.
#[derive(Debug)]
pub struct StateStore<M: StateMachine> {
    dir: PathBuf,
    log: File,
    state: M,
    entries_since_snapshot: u64,
}

fn io_err<E: std::error::Error>(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError<E> + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

impl<M: StateMachine> StateStore<M> {
    /// Opens (or creates) the store in `dir`, replays it and repairs a torn log tail.
    pub fn open(dir: &Path) -> Result<(Self, StoreRecovery), StoreError<M::Error>> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut recovery = StoreRecovery::default();
        let tmp = dir.join(SNAPSHOT_TMP_FILE);
        if tmp.exists() {
            fs::remove_file(&tmp).map_err(io_err(&tmp))?;
            recovery.removed_partial_snapshot = true;
            tracing::warn!(path = %tmp.display(), "removed a partial snapshot");
        }
        let mut state: M = read_snapshot(&dir.join(SNAPSHOT_FILE))?;

        let log_path = dir.join(LOG_FILE);
        let mut log = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&log_path)
            .map_err(io_err(&log_path))?;
        let mut bytes = Vec::new();
        log.read_to_end(&mut bytes).map_err(io_err(&log_path))?;
        let mut pos = 0usize;
        let mut entries = 0u64;
        while let Some((entry, next)) = parse_entry::<M::Command>(&bytes, pos) {
            pos = next;
            entries += 1;
            if entry.index <= state.last_applied() {
                continue;
            }
            state
                .apply(entry.index, &entry.command)
                .map_err(|source| StoreError::Replay {
                    index: entry.index,
                    source,
                })?;
            recovery.entries_replayed += 1;
        }
        if pos < bytes.len() {
            recovery.log_bytes_truncated = (bytes.len() - pos) as u64;
            tracing::warn!(
                path = %log_path.display(),
                bytes = recovery.log_bytes_truncated,
                "truncated a torn command log tail"
            );
            log.set_len(pos as u64).map_err(io_err(&log_path))?;
            log.sync_all().map_err(io_err(&log_path))?;
        }
        Ok((
            Self {
                dir: dir.to_owned(),
                log,
                state,
                entries_since_snapshot: entries,
            },
            recovery,
        ))
    }

    /// The current state.
    pub fn state(&self) -> &M {
        &self.state
    }

    /// Makes `cmd` durable (written and fdatasynced), then applies it. Returns its index.
    pub fn submit(&mut self, cmd: M::Command) -> Result<u64, StoreError<M::Error>> {
        self.state.check(&cmd).map_err(StoreError::Apply)?;
        let index = self.state.last_applied() + 1;
        let entry = LogEntry {
            index,
            command: cmd,
        };
        let path = self.dir.join(LOG_FILE);
        let payload = serde_json::to_vec(&entry).map_err(|e| StoreError::Io {
            path: path.clone(),
            source: e.into(),
        })?;
        if payload.len() > STORE_ENTRY_BYTES_MAX as usize {
            return Err(StoreError::Io {
                path,
                source: std::io::Error::other(format!(
                    "entry of {} bytes exceeds {STORE_ENTRY_BYTES_MAX}",
                    payload.len()
                )),
            });
        }
        let mut record = Vec::with_capacity(ENTRY_HEADER_BYTES + payload.len());
        record.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        record.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
        record.extend_from_slice(&payload);
        self.log.write_all(&record).map_err(io_err(&path))?;
        self.log.sync_data().map_err(io_err(&path))?;
        self.state
            .apply(index, &entry.command)
            .map_err(StoreError::Apply)?;
        self.entries_since_snapshot += 1;
        if self.entries_since_snapshot >= STORE_SNAPSHOT_EVERY_ENTRIES {
            self.snapshot()?;
        }
        Ok(index)
    }

    /// Writes a snapshot of the current state and empties the log.
    pub fn snapshot(&mut self) -> Result<(), StoreError<M::Error>> {
        let path = self.dir.join(SNAPSHOT_FILE);
        let json = serde_json::to_vec(&self.state).map_err(|e| StoreError::Io {
            path: path.clone(),
            source: e.into(),
        })?;
        let tmp = self.dir.join(SNAPSHOT_TMP_FILE);
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&crc32c::crc32c(&json).to_be_bytes())
            .and_then(|()| f.write_all(&json))
            .and_then(|()| f.sync_all())
            .map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        let log_path = self.dir.join(LOG_FILE);
        self.log.set_len(0).map_err(io_err(&log_path))?;
        self.log.sync_all().map_err(io_err(&log_path))?;
        self.entries_since_snapshot = 0;
        Ok(())
    }
}

fn read_snapshot<M: StateMachine>(path: &Path) -> Result<M, StoreError<M::Error>> {
    let bytes = match fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(M::default()),
        Err(e) => return Err(io_err(path)(e)),
        Ok(m) if m.len() > STORE_SNAPSHOT_BYTES_MAX => {
            return Err(StoreError::CorruptSnapshot {
                path: path.to_owned(),
                reason: format!("{} bytes exceeds {STORE_SNAPSHOT_BYTES_MAX}", m.len()),
            });
        }
        Ok(_) => fs::read(path).map_err(io_err(path))?,
    };
    let corrupt = |reason: String| StoreError::CorruptSnapshot {
        path: path.to_owned(),
        reason,
    };
    let Some((crc, json)) = bytes.split_first_chunk::<4>() else {
        return Err(corrupt("shorter than its checksum".into()));
    };
    if u32::from_be_bytes(*crc) != crc32c::crc32c(json) {
        return Err(corrupt("checksum mismatch".into()));
    }
    serde_json::from_slice(json).map_err(|e| corrupt(e.to_string()))
}

/// Parses the entry at `pos`; `None` at the end or at a torn or corrupt record.
fn parse_entry<C: DeserializeOwned>(bytes: &[u8], pos: usize) -> Option<(LogEntry<C>, usize)> {
    let head = bytes.get(pos..pos.checked_add(ENTRY_HEADER_BYTES)?)?;
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    if len > STORE_ENTRY_BYTES_MAX {
        return None;
    }
    let crc = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    let start = pos + ENTRY_HEADER_BYTES;
    let payload = bytes.get(start..start.checked_add(len as usize)?)?;
    if crc32c::crc32c(payload) != crc {
        return None;
    }
    let entry = serde_json::from_slice(payload).ok()?;
    Some((entry, start + len as usize))
}
