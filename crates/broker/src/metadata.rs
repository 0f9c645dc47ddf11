//! Cluster metadata as a replicated-state-machine: commands, the state they build, and
//! the durable command log with snapshots that a single node keeps.
//!
//! Shaped for Raft from day one: [`MetadataState::apply`] is deterministic and is the only
//! way state changes; the cluster issue puts the same commands behind openraft instead of
//! [`MetadataStore`].
//!
//! Files under `<data_dir>/meta/`:
//! - `metadata.log`: records of `[len: u32 BE][crc32c of payload: u32 BE][payload]`, where
//!   the payload is one JSON [`LogEntry`]. A torn or corrupt tail is truncated at start-up.
//! - `snapshot.json`: `[crc32c: u32 BE]` then the JSON [`Snapshot`], written to
//!   `snapshot.json.tmp`, fsynced, renamed over the old one, directory fsynced. After a
//!   snapshot the log is emptied the same way, so a crash between the two only replays
//!   entries the snapshot already holds (they are skipped by index).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Bytes one metadata log entry may take; a longer length on disk is corruption.
pub const METADATA_ENTRY_BYTES_MAX: u32 = 1024 * 1024;
/// Bytes the snapshot may take on disk.
pub const METADATA_SNAPSHOT_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// Commands between snapshots.
pub const METADATA_SNAPSHOT_EVERY_ENTRIES: u64 = 1000;

const LOG_FILE: &str = "metadata.log";
const SNAPSHOT_FILE: &str = "snapshot.json";
const SNAPSHOT_TMP_FILE: &str = "snapshot.json.tmp";
const ENTRY_HEADER_BYTES: usize = 8;

/// A change to cluster metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum MetadataCommand {
    /// Create a topic with a fresh id.
    CreateTopic {
        /// Topic name.
        name: String,
        /// Unique id; keeps the data of a deleted and re-created topic apart.
        id: Uuid,
        /// Partition count.
        partitions: u32,
        /// Explicit per-topic settings (defaults are not stored, so they can change).
        configs: BTreeMap<String, String>,
    },
    /// Delete a topic.
    DeleteTopic {
        /// Topic name.
        name: String,
    },
    /// Replace some per-topic settings.
    AlterTopicConfig {
        /// Topic name.
        name: String,
        /// Settings to set; other settings are kept.
        configs: BTreeMap<String, String>,
    },
}

/// What the metadata knows about one topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    /// Topic name.
    pub name: String,
    /// Unique id.
    pub id: Uuid,
    /// Partition count.
    pub partitions: u32,
    /// Explicit settings.
    pub configs: BTreeMap<String, String>,
}

impl TopicMeta {
    /// Directory under `topics/` that holds this topic's partitions.
    pub fn dir_name(&self) -> String {
        format!("{}~{}", self.name, self.id.simple())
    }
}

/// Why a command cannot be applied to the current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The name is taken.
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    /// No such topic.
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
}

/// The state built by applying commands in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataState {
    /// Index of the last applied command (0 when none).
    pub last_applied: u64,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicMeta>,
}

impl MetadataState {
    /// Checks that `cmd` would apply, without changing anything.
    pub fn check(&self, cmd: &MetadataCommand) -> Result<(), ApplyError> {
        match cmd {
            MetadataCommand::CreateTopic { name, .. } if self.topics.contains_key(name) => {
                Err(ApplyError::TopicExists(name.clone()))
            }
            MetadataCommand::DeleteTopic { name }
            | MetadataCommand::AlterTopicConfig { name, .. }
                if !self.topics.contains_key(name) =>
            {
                Err(ApplyError::UnknownTopic(name.clone()))
            }
            _ => Ok(()),
        }
    }

    /// Applies command number `index`. Deterministic: replicas that apply the same commands
    /// in the same order reach the same state.
    pub fn apply(&mut self, index: u64, cmd: &MetadataCommand) -> Result<(), ApplyError> {
        self.check(cmd)?;
        match cmd {
            MetadataCommand::CreateTopic {
                name,
                id,
                partitions,
                configs,
            } => {
                self.topics.insert(
                    name.clone(),
                    TopicMeta {
                        name: name.clone(),
                        id: *id,
                        partitions: *partitions,
                        configs: configs.clone(),
                    },
                );
            }
            MetadataCommand::DeleteTopic { name } => {
                self.topics.remove(name);
            }
            MetadataCommand::AlterTopicConfig { name, configs } => {
                if let Some(t) = self.topics.get_mut(name) {
                    t.configs.extend(configs.clone());
                }
            }
        }
        self.last_applied = index;
        Ok(())
    }
}

/// One record of the metadata log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Position of the command in the total order, from 1.
    pub index: u64,
    /// The command.
    pub command: MetadataCommand,
}

/// The snapshot file's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// State after applying every command up to `state.last_applied`.
    pub state: MetadataState,
}

/// Errors of the metadata store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// Reading or writing a metadata file failed.
    #[error("metadata I/O on {path}: {source}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The snapshot exists but cannot be trusted; refusing to start with guessed state.
    #[error("metadata snapshot {path} is corrupt: {reason}")]
    CorruptSnapshot {
        /// File involved.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A command in the log does not apply (a bug, or a hand-edited file).
    #[error("metadata log entry {index} does not apply: {source}")]
    Replay {
        /// Entry index.
        index: u64,
        /// Cause.
        source: ApplyError,
    },
    /// The command does not apply to the current state.
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// What start-up found and repaired in the metadata files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataRecovery {
    /// Entries replayed from the log on top of the snapshot.
    pub entries_replayed: u64,
    /// Bytes cut from a torn or corrupt log tail.
    pub log_bytes_truncated: u64,
    /// A leftover `snapshot.json.tmp` from an interrupted snapshot was removed.
    pub removed_partial_snapshot: bool,
}

/// The single-node durable home of [`MetadataState`].
#[derive(Debug)]
pub struct MetadataStore {
    dir: PathBuf,
    log: File,
    state: MetadataState,
    entries_since_snapshot: u64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> MetadataError + '_ {
    move |source| MetadataError::Io {
        path: path.to_owned(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<(), MetadataError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

impl MetadataStore {
    /// Opens (or creates) the store in `dir`, replays it and repairs a torn log tail.
    pub fn open(dir: &Path) -> Result<(Self, MetadataRecovery), MetadataError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut recovery = MetadataRecovery::default();
        let tmp = dir.join(SNAPSHOT_TMP_FILE);
        if tmp.exists() {
            fs::remove_file(&tmp).map_err(io_err(&tmp))?;
            recovery.removed_partial_snapshot = true;
            tracing::warn!(path = %tmp.display(), "removed a partial metadata snapshot");
        }
        let mut state = read_snapshot(&dir.join(SNAPSHOT_FILE))?;

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
        while let Some((entry, next)) = parse_entry(&bytes, pos) {
            pos = next;
            entries += 1;
            if entry.index <= state.last_applied {
                continue;
            }
            state
                .apply(entry.index, &entry.command)
                .map_err(|source| MetadataError::Replay {
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
                "truncated a torn metadata log tail"
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
    pub fn state(&self) -> &MetadataState {
        &self.state
    }

    /// Makes `cmd` durable, then applies it. Returns its index.
    pub fn submit(&mut self, cmd: MetadataCommand) -> Result<u64, MetadataError> {
        self.state.check(&cmd)?;
        let index = self.state.last_applied + 1;
        let entry = LogEntry {
            index,
            command: cmd,
        };
        let payload = serde_json::to_vec(&entry).map_err(|e| MetadataError::Io {
            path: self.dir.join(LOG_FILE),
            source: e.into(),
        })?;
        let mut record = Vec::with_capacity(ENTRY_HEADER_BYTES + payload.len());
        record.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        record.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
        record.extend_from_slice(&payload);
        let path = self.dir.join(LOG_FILE);
        self.log.write_all(&record).map_err(io_err(&path))?;
        self.log.sync_data().map_err(io_err(&path))?;
        self.state.apply(index, &entry.command)?;
        self.entries_since_snapshot += 1;
        if self.entries_since_snapshot >= METADATA_SNAPSHOT_EVERY_ENTRIES {
            self.snapshot()?;
        }
        Ok(index)
    }

    /// Writes a snapshot of the current state and empties the log.
    pub fn snapshot(&mut self) -> Result<(), MetadataError> {
        let snapshot = Snapshot {
            state: self.state.clone(),
        };
        let json = serde_json::to_vec(&snapshot).map_err(|e| MetadataError::Io {
            path: self.dir.join(SNAPSHOT_FILE),
            source: e.into(),
        })?;
        let tmp = self.dir.join(SNAPSHOT_TMP_FILE);
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&crc32c::crc32c(&json).to_be_bytes())
            .and_then(|()| f.write_all(&json))
            .and_then(|()| f.sync_all())
            .map_err(io_err(&tmp))?;
        let path = self.dir.join(SNAPSHOT_FILE);
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(&self.dir)?;
        let log_path = self.dir.join(LOG_FILE);
        self.log.set_len(0).map_err(io_err(&log_path))?;
        self.log.sync_all().map_err(io_err(&log_path))?;
        self.entries_since_snapshot = 0;
        Ok(())
    }
}

fn read_snapshot(path: &Path) -> Result<MetadataState, MetadataError> {
    let bytes = match fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(MetadataState::default()),
        Err(e) => return Err(io_err(path)(e)),
        Ok(m) if m.len() > METADATA_SNAPSHOT_BYTES_MAX => {
            return Err(MetadataError::CorruptSnapshot {
                path: path.to_owned(),
                reason: format!("{} bytes exceeds {METADATA_SNAPSHOT_BYTES_MAX}", m.len()),
            });
        }
        Ok(_) => fs::read(path).map_err(io_err(path))?,
    };
    let corrupt = |reason: String| MetadataError::CorruptSnapshot {
        path: path.to_owned(),
        reason,
    };
    let Some((crc, json)) = bytes.split_first_chunk::<4>() else {
        return Err(corrupt("shorter than its checksum".into()));
    };
    if u32::from_be_bytes(*crc) != crc32c::crc32c(json) {
        return Err(corrupt("checksum mismatch".into()));
    }
    let snapshot: Snapshot = serde_json::from_slice(json).map_err(|e| corrupt(e.to_string()))?;
    Ok(snapshot.state)
}

/// Parses the entry at `pos`; `None` at the end or at a torn or corrupt record.
fn parse_entry(bytes: &[u8], pos: usize) -> Option<(LogEntry, usize)> {
    let head = bytes.get(pos..pos.checked_add(ENTRY_HEADER_BYTES)?)?;
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    if len > METADATA_ENTRY_BYTES_MAX {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn create(name: &str) -> MetadataCommand {
        MetadataCommand::CreateTopic {
            name: name.into(),
            id: Uuid::new_v4(),
            partitions: 3,
            configs: BTreeMap::new(),
        }
    }

    #[test]
    fn state_survives_reopen_and_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut s, _) = MetadataStore::open(dir.path()).expect("open");
            s.submit(create("a")).expect("a");
            s.submit(create("b")).expect("b");
            s.snapshot().expect("snapshot");
            s.submit(MetadataCommand::DeleteTopic { name: "a".into() })
                .expect("delete");
            s.submit(create("c")).expect("c");
        }
        let (s, rec) = MetadataStore::open(dir.path()).expect("reopen");
        assert_eq!(rec.entries_replayed, 2);
        let names: Vec<_> = s.state().topics.keys().cloned().collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(s.state().last_applied, 4);
    }

    #[test]
    fn torn_log_tail_is_cut_at_every_byte() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut s, _) = MetadataStore::open(dir.path()).expect("open");
            s.submit(create("a")).expect("a");
            s.submit(create("b")).expect("b");
        }
        let log = dir.path().join(LOG_FILE);
        let full = fs::read(&log).expect("read");
        let first_len =
            ENTRY_HEADER_BYTES + u32::from_be_bytes([full[0], full[1], full[2], full[3]]) as usize;
        for cut in first_len..full.len() {
            fs::write(&log, &full[..cut]).expect("write");
            let (s, rec) = MetadataStore::open(dir.path()).expect("reopen");
            assert_eq!(s.state().topics.len(), 1, "cut at {cut}");
            assert_eq!(rec.log_bytes_truncated, (cut - first_len) as u64);
        }
    }

    #[test]
    fn partial_snapshot_is_ignored_and_corrupt_snapshot_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut s, _) = MetadataStore::open(dir.path()).expect("open");
            s.submit(create("a")).expect("a");
        }
        fs::write(dir.path().join(SNAPSHOT_TMP_FILE), b"{\"half").expect("write");
        let (s, rec) = MetadataStore::open(dir.path()).expect("reopen");
        assert!(rec.removed_partial_snapshot);
        assert_eq!(s.state().topics.len(), 1);
        drop(s);
        fs::write(dir.path().join(SNAPSHOT_FILE), b"\0\0\0\0garbage").expect("write");
        assert!(matches!(
            MetadataStore::open(dir.path()),
            Err(MetadataError::CorruptSnapshot { .. })
        ));
    }

    #[test]
    fn commands_that_do_not_apply_are_refused_before_logging() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut s, _) = MetadataStore::open(dir.path()).expect("open");
        s.submit(create("a")).expect("a");
        assert!(matches!(
            s.submit(create("a")),
            Err(MetadataError::Apply(ApplyError::TopicExists(_)))
        ));
        assert!(matches!(
            s.submit(MetadataCommand::DeleteTopic { name: "zz".into() }),
            Err(MetadataError::Apply(ApplyError::UnknownTopic(_)))
        ));
        assert_eq!(s.state().last_applied, 1);
    }
}
