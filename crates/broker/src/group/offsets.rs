//! Committed offsets as a state machine. Groups are spread by a hash of their id over
//! [`OFFSETS_PARTITIONS`] independent stores, so commits of different groups do not
//! queue behind one fsync stream, and so that in a cluster each store can be its own Raft
//! group led by that group's coordinator (see docs/adr/0003-committed-offsets.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::state_store::StateMachine;

/// Independent offset stores per node.
pub const OFFSETS_PARTITIONS: u32 = 8;

/// The store a group's offsets live in.
pub fn offsets_partition(group_id: &str) -> usize {
    (crc32c::crc32c(group_id.as_bytes()) % OFFSETS_PARTITIONS) as usize
}

/// One committed position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// Next offset the group will consume.
    pub offset: i64,
    /// Free text the committer attached.
    pub metadata: String,
    /// When it was committed (ms since the epoch).
    pub commit_ms: i64,
}

/// Offsets of one group: topic → partition → position.
pub type GroupOffsets = BTreeMap<String, BTreeMap<u32, Committed>>;

/// A change to committed offsets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum OffsetsCommand {
    /// Set positions of one group.
    Commit {
        /// Group.
        group: String,
        /// (topic, partition, offset, metadata).
        offsets: Vec<(String, u32, i64, String)>,
        /// Commit time (ms), chosen by the leader so replicas agree.
        commit_ms: i64,
    },
    /// Forget a group.
    DeleteGroup {
        /// Group.
        group: String,
    },
    /// Forget every group's positions in a deleted topic.
    DeleteTopic {
        /// Topic.
        topic: String,
    },
}

/// Offsets commands always apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreachable")]
pub enum Never {}

/// All groups' committed offsets in one store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetsState {
    /// Index of the last applied command.
    pub last_applied: u64,
    /// Group → offsets.
    pub groups: BTreeMap<String, GroupOffsets>,
}

impl StateMachine for OffsetsState {
    type Command = OffsetsCommand;
    type Error = Never;

    fn last_applied(&self) -> u64 {
        self.last_applied
    }

    fn check(&self, _: &OffsetsCommand) -> Result<(), Never> {
        Ok(())
    }

    fn apply(&mut self, index: u64, cmd: &OffsetsCommand) -> Result<(), Never> {
        match cmd {
            OffsetsCommand::Commit {
                group,
                offsets,
                commit_ms,
            } => {
                let g = self.groups.entry(group.clone()).or_default();
                for (topic, partition, offset, metadata) in offsets {
                    g.entry(topic.clone()).or_default().insert(
                        *partition,
                        Committed {
                            offset: *offset,
                            metadata: metadata.clone(),
                            commit_ms: *commit_ms,
                        },
                    );
                }
            }
            OffsetsCommand::DeleteGroup { group } => {
                self.groups.remove(group);
            }
            OffsetsCommand::DeleteTopic { topic } => {
                for g in self.groups.values_mut() {
                    g.remove(topic);
                }
                self.groups.retain(|_, g| !g.is_empty());
            }
        }
        self.last_applied = index;
        Ok(())
    }
}
