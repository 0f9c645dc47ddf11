//! Cluster metadata as a replicated state machine: the commands and the state they build.
//!
//! Shaped for Raft from day one: [`MetadataState::apply`] is deterministic and is the only
//! way state changes; a single node keeps the commands in a [`StateStore`] under
//! `<data_dir>/meta/`, and the cluster issue puts the same commands behind openraft.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::state_store::{StateMachine, StateStore, StoreError};

/// The single-node durable home of [`MetadataState`].
pub type MetadataStore = StateStore<MetadataState>;
/// Errors of the metadata store.
pub type MetadataError = StoreError<ApplyError>;

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
    /// Grow a topic to more partitions (existing partitions keep their data; a count
    /// that is not larger changes nothing).
    CreatePartitions {
        /// Topic name.
        name: String,
        /// New total partition count.
        partitions: u32,
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

impl StateMachine for MetadataState {
    type Command = MetadataCommand;
    type Error = ApplyError;

    fn last_applied(&self) -> u64 {
        self.last_applied
    }

    fn check(&self, cmd: &MetadataCommand) -> Result<(), ApplyError> {
        match cmd {
            MetadataCommand::CreateTopic { name, .. } if self.topics.contains_key(name) => {
                Err(ApplyError::TopicExists(name.clone()))
            }
            MetadataCommand::DeleteTopic { name }
            | MetadataCommand::AlterTopicConfig { name, .. }
            | MetadataCommand::CreatePartitions { name, .. }
                if !self.topics.contains_key(name) =>
            {
                Err(ApplyError::UnknownTopic(name.clone()))
            }
            _ => Ok(()),
        }
    }

    fn apply(&mut self, index: u64, cmd: &MetadataCommand) -> Result<(), ApplyError> {
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
            MetadataCommand::CreatePartitions { name, partitions } => {
                if let Some(t) = self.topics.get_mut(name) {
                    t.partitions = t.partitions.max(*partitions);
                }
            }
        }
        self.last_applied = index;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_store::{ENTRY_HEADER_BYTES, LOG_FILE, SNAPSHOT_FILE, SNAPSHOT_TMP_FILE};
    use std::fs;

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
            Err(crate::state_store::StoreError::CorruptSnapshot { .. })
        ));
    }

    #[test]
    fn commands_that_do_not_apply_are_refused_before_logging() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut s, _) = MetadataStore::open(dir.path()).expect("open");
        s.submit(create("a")).expect("a");
        assert!(matches!(
            s.submit(create("a")),
            Err(crate::state_store::StoreError::Apply(
                ApplyError::TopicExists(_)
            ))
        ));
        assert!(matches!(
            s.submit(MetadataCommand::DeleteTopic { name: "zz".into() }),
            Err(crate::state_store::StoreError::Apply(
                ApplyError::UnknownTopic(_)
            ))
        ));
        assert_eq!(s.state().last_applied, 1);
    }
}
