//! The broker: topics and partitions over `weir-storage`, the metadata state machine, and
//! the operations every listener calls (produce, fetch with long-poll, list offsets,
//! topic admin). It knows nothing of sockets or wire formats: the native listener and,
//! later, the Kafka listener translate their requests into these calls.
//!
//! Layout:
//! - [`metadata`]: commands, the state they build, the durable command log + snapshot.
//! - [`topic`]: topic name rules and per-topic settings.
//! - `partition`: a partition's log and its high-watermark signal.
//! - [`idempotence`]: producer ids, sequence checks and duplicate suppression for
//!   idempotent producers; `partitions`: growing a topic.
//!
//! Threads: storage calls block (positional I/O, fdatasync), so they run on tokio's
//! blocking pool; group commit happens inside `weir_storage::Log::sync_to`, where
//! concurrent producers to one partition share one fdatasync.
//!
//! Lock order: `admin` (tokio mutex, serializes metadata changes) before `topics`
//! (read-mostly map); a partition's producer-state lock before its log's lock; the storage
//! log's own lock is always innermost.
#![deny(missing_docs)]

pub mod group;
pub mod idempotence;
pub mod metadata;
mod partition;
mod partitions;
mod read_ahead;
pub mod state_store;
pub mod topic;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::RwLock;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use weir_storage::{
    CACHED_READ_BYTES_MAX, Disk, FsDisk, FsyncPolicy, Log, LogConfig, ReadResult, StorageError,
    SystemClock,
};

use metadata::{MetadataCommand, MetadataError, MetadataStore, TopicMeta};
use partition::Partition;
use read_ahead::{
    READ_AHEAD_BUDGET_BYTES, READ_AHEAD_BYTES_MAX, READ_AHEAD_BYTES_MIN, ReadAheadBudget,
};
pub use weir_storage::AppendInfo;

/// Settings of the broker, filled by the server from its configuration.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Root of all data: `meta/` and `topics/`.
    pub data_dir: PathBuf,
    /// This node's id in metadata responses.
    pub node_id: i32,
    /// Settings of topics that do not override them.
    pub topic_defaults: LogConfig,
    /// Most topics the broker holds.
    pub topics_max: u32,
    /// Most partitions one topic may have.
    pub topic_partitions_max: u32,
    /// Partitions of a topic created without a count.
    pub topic_partitions_default: u32,
    /// Longest a fetch may wait for data.
    pub fetch_wait_ms_max: u32,
    /// Most bytes one fetch response carries (plus at most one batch, so consumers of a
    /// partition whose next batch is larger still make progress).
    pub fetch_bytes_max: u32,
    /// Most partitions one fetch may name.
    pub fetch_partitions_max: u32,
    /// How often sealed segments are checked against retention.
    pub retention_check_interval_ms: u64,
    /// Consumer group coordinator settings.
    pub groups: group::GroupConfig,
    /// The file system every partition log is opened on: the real one by default; tests
    /// inject a failing one (`weir_storage::testing::FaultyDisk`).
    pub disk: Arc<dyn Disk>,
}

impl BrokerConfig {
    /// Defaults for a broker rooted at `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            node_id: 0,
            topic_defaults: LogConfig::default(),
            topics_max: 10_000,
            topic_partitions_max: 4096,
            topic_partitions_default: 1,
            fetch_wait_ms_max: 30_000,
            fetch_bytes_max: 16 * 1024 * 1024,
            fetch_partitions_max: 4096,
            retention_check_interval_ms: 60_000,
            groups: group::GroupConfig::default(),
            disk: Arc::new(FsDisk),
        }
    }
}

/// Errors of broker operations. Listeners map them onto their protocol's error codes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// No topic of that name.
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// The topic has no such partition.
    #[error("topic {topic:?} has no partition {partition}")]
    UnknownPartition {
        /// Topic.
        topic: String,
        /// Requested partition.
        partition: u32,
    },
    /// A topic of that name exists.
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    /// The name breaks the naming rules.
    #[error("invalid topic name {0}")]
    InvalidTopicName(String),
    /// Partition count out of range.
    #[error("partition count {count} is not between 1 and {max}")]
    InvalidPartitionCount {
        /// Requested count.
        count: u32,
        /// Largest allowed.
        max: u32,
    },
    /// A setting is unknown or out of range.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// The broker holds as many topics as it may.
    #[error("the broker already holds the maximum of {max} topics")]
    TooManyTopics {
        /// Limit.
        max: u32,
    },
    /// A request field is out of bounds.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A fetch or seek outside the log.
    #[error("offset {offset} is outside the log [{start}, {end}]")]
    OffsetOutOfRange {
        /// Requested offset.
        offset: i64,
        /// Log start offset.
        start: i64,
        /// Log end offset.
        end: i64,
    },
    /// The records are not valid RecordBatch v2 bytes.
    #[error("corrupt record batch: {0}")]
    CorruptBatch(String),
    /// A batch is larger than the topic allows.
    #[error("batch of {size} bytes exceeds the topic's batch_bytes_max of {max}")]
    BatchTooLarge {
        /// Batch size.
        size: u64,
        /// Limit.
        max: u64,
    },
    /// The partition stopped taking writes after a failed fsync or write; its data up to
    /// the last acknowledged offset is intact, newer data is not promised.
    #[error("partition {topic}/{partition} has failed and takes no writes: {reason}")]
    PartitionFailed {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Cause.
        reason: String,
    },
    /// The disk is full: nothing of this write was stored, the partition is intact, and
    /// writes succeed again once space is freed.
    #[error("partition {topic}/{partition}: no space left on the disk; nothing was written")]
    DiskFull {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
    },
    /// Stored data failed its checksum (or sits at the wrong offset); the damaged region
    /// is never served. Other partitions, and the rest of this one, are unaffected.
    #[error("partition {topic}/{partition} holds corrupt data: {reason}")]
    CorruptData {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Where and what, as storage found it.
        reason: String,
    },
    /// The storage layer failed.
    #[error("storage: {0}")]
    Storage(StorageError),
    /// The metadata store failed.
    #[error("metadata: {0}")]
    Metadata(#[from] MetadataError),
    /// The request's own timeout passed; the write may still become durable.
    #[error("timed out after {0} ms")]
    Timeout(u32),
    /// The broker is shutting down.
    #[error("the broker is shutting down")]
    ShuttingDown,
    /// An idempotent producer's batch does not follow its previous batch.
    #[error("out of order sequence from producer {producer_id}: expected {expected}, got {got}")]
    OutOfOrderSequence {
        /// Producer id.
        producer_id: i64,
        /// The sequence the partition expected.
        expected: i32,
        /// The batch's first sequence.
        got: i32,
    },
    /// A batch from an older epoch of an idempotent producer (a fenced, stale instance).
    #[error("producer {producer_id} epoch {epoch} is older than its current epoch {current}")]
    InvalidProducerEpoch {
        /// Producer id.
        producer_id: i64,
        /// The batch's epoch.
        epoch: i16,
        /// The newest epoch the partition has seen.
        current: i16,
    },
    /// A topic can only grow.
    #[error("topic {topic:?} has {current} partitions; {requested} would not add any")]
    PartitionsNotIncreased {
        /// Topic.
        topic: String,
        /// Partitions it has.
        current: u32,
        /// Partitions asked for.
        requested: u32,
    },
}

impl From<tokio::task::JoinError> for BrokerError {
    fn from(e: tokio::task::JoinError) -> Self {
        BrokerError::Storage(StorageError::Io(std::io::Error::other(e.to_string())))
    }
}

/// How long a producer waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// Answer after the leader wrote and (per the topic's fsync policy) synced the data.
    All,
    /// Answer after the leader wrote the data, before any fsync.
    Leader,
    /// No answer at all; the listener sends nothing back.
    None,
}

/// One partition of a fetch.
#[derive(Debug, Clone)]
pub struct FetchPartitionSpec {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// First offset wanted.
    pub offset: i64,
    /// Most bytes for this partition.
    pub max_bytes: u32,
}

/// A fetch over several partitions with long-poll.
#[derive(Debug, Clone)]
pub struct FetchSpec {
    /// Longest wait for `min_bytes` (capped by the broker's `fetch_wait_ms_max`).
    pub max_wait_ms: u32,
    /// Bytes that end the wait early; 0 or 1 answers as soon as anything is there.
    pub min_bytes: u32,
    /// Most bytes in the whole response (capped by `fetch_bytes_max`).
    pub max_bytes: u32,
    /// Partitions to read.
    pub partitions: Vec<FetchPartitionSpec>,
}

/// What a fetch returned for one partition.
#[derive(Debug)]
pub struct FetchedPartition {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Error for this partition, if any.
    pub error: Option<BrokerError>,
    /// Offsets below this are readable.
    pub high_watermark: i64,
    /// First offset still stored.
    pub log_start_offset: i64,
    /// Whole record batches as stored.
    pub records: Bytes,
}

/// Which offset [`Broker::list_offsets`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetQuery {
    /// First offset still stored.
    Earliest,
    /// The high watermark: the offset the next readable record will get.
    Latest,
    /// The first offset whose timestamp is at least this (ms).
    Timestamp(i64),
}

/// Batches written to a partition, possibly still on their way to the disk.
#[derive(Debug)]
pub struct Appended {
    info: AppendInfo,
    durable: Option<tokio::sync::oneshot::Receiver<Result<(), StorageError>>>,
    topic: String,
    partition: u32,
}

impl Appended {
    /// Offsets the batches got.
    pub fn info(&self) -> &AppendInfo {
        &self.info
    }

    /// Waits until the batches are as durable as the producer's `acks` asked: for
    /// [`Acks::All`] on a topic with fsync `always`, until the fdatasync covering them
    /// returned. `timeout_ms` 0 waits as long as it takes.
    pub async fn wait(self, timeout_ms: u32) -> Result<AppendInfo, BrokerError> {
        let Some(rx) = self.durable else {
            return Ok(self.info);
        };
        let answer = if timeout_ms == 0 {
            rx.await
        } else {
            tokio::time::timeout(Duration::from_millis(timeout_ms.into()), rx)
                .await
                .map_err(|_| BrokerError::Timeout(timeout_ms))?
        };
        match answer {
            Ok(Ok(())) => Ok(self.info),
            Ok(Err(e)) => Err(storage_err(&self.topic, self.partition, e)),
            Err(_) => Err(BrokerError::ShuttingDown),
        }
    }
}

/// Per-partition figures for `describe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    /// Partition.
    pub partition: u32,
    /// First offset still stored.
    pub log_start_offset: i64,
    /// Offsets below this are readable.
    pub high_watermark: i64,
    /// Next offset to assign.
    pub log_end_offset: i64,
    /// Bytes stored.
    pub size_bytes: u64,
    /// Segment files.
    pub segments: u32,
    /// Current leader term.
    pub leader_epoch: i32,
}

/// A topic as `describe` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    /// Name.
    pub name: String,
    /// Unique id.
    pub id: Uuid,
    /// Effective settings, defaults included.
    pub configs: BTreeMap<String, String>,
    /// Partitions in order.
    pub partitions: Vec<PartitionState>,
}

#[derive(Debug)]
struct TopicHandle {
    meta: TopicMeta,
    config: LogConfig,
    partitions: Vec<Arc<Partition>>,
}

#[derive(Debug)]
struct Inner {
    /// Producer ids for idempotent producers (`idempotence`).
    producer_ids: idempotence::ProducerIds,
    config: BrokerConfig,
    groups: group::GroupCoordinator,
    admin: Arc<tokio::sync::Mutex<MetadataStore>>,
    topics: RwLock<HashMap<String, Arc<TopicHandle>>>,
    shutdown: CancellationToken,
    tasks: tokio_util::task::TaskTracker,
    /// Memory the partitions' read-aheads share (`read_ahead`).
    read_ahead: ReadAheadBudget,
}

/// The broker. Cheap to clone; every clone is the same broker.
#[derive(Debug, Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

const META_DIR: &str = "meta";
const TOPICS_DIR: &str = "topics";
const GROUPS_DIR: &str = "groups";
/// How often group sessions and rebalance deadlines are checked.
const GROUP_TICK_MS: u64 = 100;

fn storage_err(topic: &str, partition: u32, e: StorageError) -> BrokerError {
    match e {
        StorageError::OffsetOutOfRange { offset, start, end } => {
            BrokerError::OffsetOutOfRange { offset, start, end }
        }
        StorageError::BatchTooLarge { size, max } | StorageError::AppendTooLarge { size, max } => {
            BrokerError::BatchTooLarge { size, max }
        }
        StorageError::Record(r) => BrokerError::CorruptBatch(r.to_string()),
        StorageError::EmptyAppend => BrokerError::InvalidRequest("no record batch".into()),
        StorageError::Poisoned | StorageError::Closed => BrokerError::PartitionFailed {
            topic: topic.to_owned(),
            partition,
            reason: "an earlier write or fsync failed".into(),
        },
        // This very operation's fsync failed: never retried (fsyncgate), the partition
        // is failed from now on.
        StorageError::Fatal(e) => BrokerError::PartitionFailed {
            topic: topic.to_owned(),
            partition,
            reason: format!("an fsync or write failed: {e}"),
        },
        StorageError::Io(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ) =>
        {
            BrokerError::DiskFull {
                topic: topic.to_owned(),
                partition,
            }
        }
        e @ StorageError::Corrupt { .. } => {
            tracing::error!(topic, partition, error = %e, "corrupt data in a partition log; the damaged region is not served");
            BrokerError::CorruptData {
                topic: topic.to_owned(),
                partition,
                reason: e.to_string(),
            }
        }
        other => BrokerError::Storage(other),
    }
}

impl Broker {
    /// Opens the broker: replays metadata, recovers every partition log, removes the data
    /// of topics that were deleted (or half-created) before a crash, starts background work.
    /// Must be called inside a tokio runtime.
    pub async fn open(config: BrokerConfig) -> Result<Broker, BrokerError> {
        let cfg = config.clone();
        let (store, topics, groups) = tokio::task::spawn_blocking(move || open_all(&cfg)).await??;
        let inner = Arc::new(Inner {
            producer_ids: idempotence::ProducerIds::new(&config.data_dir),
            config,
            groups,
            admin: Arc::new(tokio::sync::Mutex::new(store)),
            topics: RwLock::new(topics),
            shutdown: CancellationToken::new(),
            tasks: tokio_util::task::TaskTracker::new(),
            read_ahead: ReadAheadBudget::new(READ_AHEAD_BUDGET_BYTES),
        });
        let broker = Broker { inner };
        let handles: Vec<_> = broker.inner.topics.read().values().cloned().collect();
        for t in handles {
            broker.start_partition_tasks(&t);
        }
        broker.start_retention_task();
        broker.start_producer_snapshot_task();
        broker.start_group_task();
        Ok(broker)
    }

    /// The configuration the broker runs with.
    pub fn config(&self) -> &BrokerConfig {
        &self.inner.config
    }

    fn topic(&self, name: &str) -> Result<Arc<TopicHandle>, BrokerError> {
        self.inner
            .topics
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_owned()))
    }

    fn partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>, BrokerError> {
        self.topic(topic)?
            .partitions
            .get(partition as usize)
            .cloned()
            .ok_or_else(|| BrokerError::UnknownPartition {
                topic: topic.to_owned(),
                partition,
            })
    }

    fn check_running(&self) -> Result<(), BrokerError> {
        if self.inner.shutdown.is_cancelled() {
            Err(BrokerError::ShuttingDown)
        } else {
            Ok(())
        }
    }

    /// Creates a topic; `configs` override the broker's topic defaults.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicDescription, BrokerError> {
        self.check_running()?;
        topic::validate_topic_name(name)?;
        let max = self.inner.config.topic_partitions_max;
        if partitions == 0 || partitions > max {
            return Err(BrokerError::InvalidPartitionCount {
                count: partitions,
                max,
            });
        }
        let log_config = topic::resolve_log_config(&self.inner.config.topic_defaults, &configs)?;
        let admin = self.inner.admin.clone().lock_owned().await;
        if admin.state().topics.contains_key(name) {
            return Err(BrokerError::TopicExists(name.to_owned()));
        }
        let topics_max = self.inner.config.topics_max;
        if admin.state().topics.len() >= topics_max as usize {
            return Err(BrokerError::TooManyTopics { max: topics_max });
        }
        let meta = TopicMeta {
            name: name.to_owned(),
            id: Uuid::new_v4(),
            partitions,
            configs,
        };
        // Open the logs first: if that fails, no metadata points at a broken topic, and the
        // directories are removed as orphans at the next start.
        let dir = topics_dir(&self.inner.config.data_dir).join(meta.dir_name());
        let cmd = MetadataCommand::CreateTopic {
            name: meta.name.clone(),
            id: meta.id,
            partitions,
            configs: meta.configs.clone(),
        };
        let disk = self.inner.config.disk.clone();
        let (handle, admin) = tokio::task::spawn_blocking(move || {
            let mut admin = admin;
            let handle = open_topic(&dir, meta, log_config, &disk)?;
            admin.submit(cmd)?;
            Ok::<_, BrokerError>((handle, admin))
        })
        .await??;
        let handle = Arc::new(handle);
        self.inner
            .topics
            .write()
            .insert(name.to_owned(), handle.clone());
        drop(admin);
        self.start_partition_tasks(&handle);
        tracing::info!(topic = name, partitions, "created topic");
        Ok(describe(&handle))
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<(), BrokerError> {
        self.check_running()?;
        let admin = self.inner.admin.clone().lock_owned().await;
        let cmd = MetadataCommand::DeleteTopic {
            name: name.to_owned(),
        };
        let (submitted, admin) = tokio::task::spawn_blocking(move || {
            let mut admin = admin;
            (admin.submit(cmd), admin)
        })
        .await?;
        submitted.map_err(|e| match e {
            state_store::StoreError::Apply(metadata::ApplyError::UnknownTopic(n)) => {
                BrokerError::UnknownTopic(n)
            }
            other => other.into(),
        })?;
        let handle = self.inner.topics.write().remove(name);
        drop(admin);
        if let Err(e) = self.inner.groups.purge_topic(name) {
            tracing::warn!(topic = name, error = %e, "could not forget committed offsets of the deleted topic");
        }
        if let Some(h) = handle {
            let dir = topics_dir(&self.inner.config.data_dir).join(h.meta.dir_name());
            // Producers still holding the partition write into unlinked files; their data
            // goes with the topic.
            tokio::task::spawn_blocking(move || {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!(dir = %dir.display(), error = %e, "could not remove deleted topic's data; it will be removed at the next start");
                }
            })
            .await?;
        }
        tracing::info!(topic = name, "deleted topic");
        Ok(())
    }

    /// Names and partition counts of all topics, sorted by name.
    pub fn list_topics(&self) -> Vec<(String, u32)> {
        let mut v: Vec<_> = self
            .inner
            .topics
            .read()
            .values()
            .map(|t| (t.meta.name.clone(), t.meta.partitions))
            .collect();
        v.sort();
        v
    }

    /// One topic with effective settings and per-partition offsets.
    pub fn describe_topic(&self, name: &str) -> Result<TopicDescription, BrokerError> {
        Ok(describe(&*self.topic(name)?))
    }

    /// Appends one or more record batches to a partition and waits as `acks` asks.
    ///
    /// Same as [`Broker::append`] followed by [`Appended::wait`].
    pub async fn produce(
        &self,
        topic: &str,
        partition: u32,
        records: impl Into<Bytes>,
        acks: Acks,
        timeout_ms: u32,
    ) -> Result<AppendInfo, BrokerError> {
        self.append(topic, partition, records, acks)
            .await?
            .wait(timeout_ms)
            .await
    }

    /// Writes one or more record batches to a partition and returns once they are in the
    /// log (not yet necessarily on disk); [`Appended::wait`] then waits as `acks` asks.
    ///
    /// The batches are validated and written as they are, with offsets and the leader term
    /// patched into their headers on the way to the disk (the caller's buffer is not
    /// copied or changed, so a slice of a request frame can be passed). Appends complete in the order this is awaited, so a
    /// listener that awaits the appends of one connection in turn keeps that connection's
    /// batches in order, while their fsyncs are still shared (group commit).
    pub async fn append(
        &self,
        topic: &str,
        partition: u32,
        records: impl Into<Bytes>,
        acks: Acks,
    ) -> Result<Appended, BrokerError> {
        self.check_running()?;
        let p = self.partition(topic, partition)?;
        let part = p.clone();
        let epoch = p.leader_epoch;
        let records = records.into();
        let (info, durable) = if p.fsync == FsyncPolicy::Always {
            // Synced whatever the producer waits for: data becomes readable only once it
            // is durable. The blocking thread that appended goes on to sync (concurrent
            // callers of sync_to share one fdatasync), one hand-off instead of two, while
            // this task answers as soon as the append is done so the connection's next
            // append can start.
            let (appended_tx, appended_rx) = tokio::sync::oneshot::channel();
            let (tx, rx) = tokio::sync::oneshot::channel();
            let task = tokio::task::spawn_blocking(move || {
                let appended = idempotence::append(&part, &records, epoch);
                let last = appended.as_ref().ok().map(|i| i.last_offset);
                let _ = appended_tx.send(appended);
                if let Some(last) = last {
                    let r = p.log.sync_to(last);
                    p.publish_high_watermark();
                    let _ = tx.send(r);
                }
            });
            let info = match appended_rx.await {
                Ok(appended) => appended.map_err(|e| e.into_broker(topic, partition))?,
                // The task ended without answering: it panicked or never ran.
                Err(_) => {
                    return Err(task
                        .await
                        .err()
                        .map_or(BrokerError::ShuttingDown, Into::into));
                }
            };
            (info, Some(rx))
        } else {
            let info =
                tokio::task::spawn_blocking(move || idempotence::append(&part, &records, epoch))
                    .await?
                    .map_err(|e| e.into_broker(topic, partition))?;
            p.publish_high_watermark();
            (info, None)
        };
        Ok(Appended {
            info,
            durable: if acks == Acks::All { durable } else { None },
            topic: topic.to_owned(),
            partition,
        })
    }

    /// Reads from several partitions, waiting up to `max_wait_ms` until `min_bytes` are
    /// available. Only data below each partition's high watermark is returned: with fsync
    /// `always`, that is data already on disk, so a consumer never sees a record that a
    /// crash could take back.
    pub async fn fetch(&self, spec: FetchSpec) -> Result<Vec<FetchedPartition>, BrokerError> {
        let cfg = &self.inner.config;
        if spec.partitions.len() > cfg.fetch_partitions_max as usize {
            return Err(BrokerError::InvalidRequest(format!(
                "fetch names {} partitions; at most {} are allowed",
                spec.partitions.len(),
                cfg.fetch_partitions_max
            )));
        }
        let wait = Duration::from_millis(spec.max_wait_ms.min(cfg.fetch_wait_ms_max).into());
        let deadline = Instant::now() + wait;
        let max_bytes = spec.max_bytes.clamp(1, cfg.fetch_bytes_max);
        // The most this fetch can copy.
        let inline_bytes = spec
            .partitions
            .iter()
            .map(|p| u64::from(p.max_bytes.min(max_bytes)))
            .sum::<u64>()
            .min(u64::from(max_bytes));
        let resolved: Vec<_> = spec
            .partitions
            .iter()
            .map(|s| self.partition(&s.topic, s.partition))
            .collect();
        let mut receivers: Vec<_> = resolved
            .iter()
            .filter_map(|r| r.as_ref().ok().map(|p| p.subscribe()))
            .collect();
        let parts: Vec<_> = resolved.iter().map(|r| r.as_ref().ok().cloned()).collect();
        // Reads made ahead for this fetch (`read_ahead`), waited for if still under way.
        let claimed: Vec<_> = parts
            .iter()
            .zip(&spec.partitions)
            .map(|(p, s)| p.as_ref().and_then(|p| p.read_ahead.claim(s.offset)))
            .collect();
        let ahead: Vec<_> = if claimed.iter().all(Option::is_none) {
            claimed.iter().map(|_| None).collect()
        } else {
            futures::future::join_all(claimed.into_iter().map(|c| async move {
                let c = c?;
                let max_bytes = c.max_bytes;
                c.result().await.map(|r| (max_bytes, r))
            }))
            .await
        };
        loop {
            for r in &mut receivers {
                r.borrow_and_update();
            }
            // A small fetch of data in the page cache (a consumer at the tail, or one
            // reading a backlog 1 MiB per partition) is read right here; one that may wait
            // for the disk or copy more goes to a blocking thread. The hand-off there and
            // back costs more than such a copy.
            let cached = (inline_bytes <= u64::from(CACHED_READ_BYTES_MAX))
                .then(|| {
                    read_partitions(
                        &spec.partitions,
                        &parts,
                        &ahead,
                        max_bytes,
                        |log, o, m, u| log.read_cached(o, m, u).map(Ok),
                    )
                })
                .flatten();
            let (mut results, next) = match cached {
                Some(read) => read,
                None => {
                    let specs = spec.partitions.clone();
                    let parts = parts.clone();
                    let ahead = ahead.clone();
                    tokio::task::spawn_blocking(move || {
                        read_partitions(&specs, &parts, &ahead, max_bytes, |log, o, m, u| {
                            Some(log.read(o, m, u))
                        })
                        .expect("a blocking read always answers")
                    })
                    .await?
                }
            };
            for (slot, r) in results.iter_mut().zip(&resolved) {
                if r.is_err() {
                    slot.error = self.partition(&slot.topic, slot.partition).err();
                }
            }
            let bytes: usize = results.iter().map(|r| r.records.len()).sum();
            let any_error = results.iter().any(|r| r.error.is_some());
            if bytes >= spec.min_bytes.max(1) as usize
                || any_error
                || receivers.is_empty()
                || Instant::now() >= deadline
                || self.inner.shutdown.is_cancelled()
            {
                self.start_read_aheads(&parts, &next);
                return Ok(results);
            }
            let changed =
                futures::future::select_all(receivers.iter_mut().map(|r| Box::pin(r.changed())));
            tokio::select! {
                _ = changed => {}
                () = tokio::time::sleep_until(deadline) => {}
                () = self.inner.shutdown.cancelled() => {}
            }
        }
    }

    /// Starts reading, for each partition a fetch left data behind in, what the same
    /// consumer will fetch next (`read_ahead`).
    fn start_read_aheads(&self, parts: &[Option<Arc<Partition>>], next: &[Option<NextRead>]) {
        if self.inner.shutdown.is_cancelled() {
            return;
        }
        let budget = &self.inner.read_ahead;
        for (p, next) in parts.iter().zip(next) {
            let (Some(p), Some(next)) = (p, next) else {
                continue;
            };
            let upper = p.log.high_watermark();
            if next.offset >= upper
                || !(READ_AHEAD_BYTES_MIN..=READ_AHEAD_BYTES_MAX).contains(&next.max_bytes)
            {
                continue;
            }
            let start = || {
                p.read_ahead
                    .start(&p.log, next.offset, next.max_bytes, upper, budget)
            };
            if start().is_err() && budget.sweep_due() {
                self.sweep_read_aheads();
                // Spent by live read-aheads after all: this partition reads as before.
                let _ = start();
            }
        }
    }

    /// Drops every read-ahead nobody claimed in time, returning its memory to the budget.
    fn sweep_read_aheads(&self) {
        let topics: Vec<_> = self.inner.topics.read().values().cloned().collect();
        for t in topics {
            for p in &t.partitions {
                p.read_ahead.drop_stale();
            }
        }
    }

    /// The earliest or latest offset of a partition, or the first offset at a time.
    /// Returns the offset and whether a record matched (always true but for timestamps
    /// newer than every record, which return the high watermark).
    pub async fn list_offsets(
        &self,
        topic: &str,
        partition: u32,
        query: OffsetQuery,
    ) -> Result<(i64, bool), BrokerError> {
        let p = self.partition(topic, partition)?;
        let hw = p.log.high_watermark();
        match query {
            OffsetQuery::Earliest => Ok((p.log.log_start_offset(), true)),
            OffsetQuery::Latest => Ok((hw, true)),
            OffsetQuery::Timestamp(ts) => {
                let log = p.log.clone();
                let found = tokio::task::spawn_blocking(move || log.offset_for_timestamp(ts))
                    .await?
                    .map_err(|e| storage_err(topic, partition, e))?;
                Ok(match found {
                    Some(o) if o < hw => (o, true),
                    _ => (hw, false),
                })
            }
        }
    }

    /// Refuses new produce and admin requests and wakes waiting fetches; requests already
    /// running finish. Call [`Broker::shutdown`] once they have.
    pub fn begin_shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.groups.shutdown();
    }

    /// Stops background work, wakes waiting fetches, and syncs and closes every log.
    /// Requests that arrive later get [`BrokerError::ShuttingDown`].
    pub async fn shutdown(&self) {
        self.begin_shutdown();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        let handles: Vec<_> = self.inner.topics.read().values().cloned().collect();
        let _ = tokio::task::spawn_blocking(move || {
            for t in handles {
                for (i, p) in t.partitions.iter().enumerate() {
                    idempotence::snapshot_on_close(p);
                    if let Err(e) = p.log.close() {
                        tracing::error!(topic = %t.meta.name, partition = i, error = %e, "closing partition failed");
                    }
                }
            }
        })
        .await;
        tracing::info!("broker stopped");
    }

    fn start_partition_tasks(&self, topic: &Arc<TopicHandle>) {
        let FsyncPolicy::IntervalMs(ms) = topic.config.fsync else {
            return;
        };
        for p in &topic.partitions {
            let p = p.clone();
            let stop = self.inner.shutdown.clone();
            self.inner.tasks.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(ms));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        () = stop.cancelled() => return,
                    }
                    // Holding the Arc keeps a deleted topic's log alive only until here.
                    if Arc::strong_count(&p) == 1 {
                        return;
                    }
                    let log = p.log.clone();
                    match tokio::task::spawn_blocking(move || log.sync()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, "interval fsync failed; partition stops taking writes");
                            return;
                        }
                        Err(_) => return,
                    }
                }
            });
        }
    }

    /// The consumer group coordinator.
    pub fn groups(&self) -> &group::GroupCoordinator {
        &self.inner.groups
    }

    /// Why a committed offset may not name this partition, if it may not.
    fn partition_error(&self, topic: &str, partition: u32) -> Option<group::GroupError> {
        match self.partition(topic, partition) {
            Ok(_) => None,
            Err(BrokerError::UnknownTopic(t)) => Some(group::GroupError::UnknownTopic(t)),
            Err(_) => Some(group::GroupError::UnknownPartition {
                topic: topic.to_owned(),
                partition,
            }),
        }
    }

    /// Commits group offsets, checking that each partition exists.
    pub async fn commit_offsets(
        &self,
        req: group::CommitOffsets,
    ) -> Result<Vec<group::PartitionResult>, group::GroupError> {
        self.inner
            .groups
            .commit_offsets(req, |t, p| self.partition_error(t, p))
            .await
    }

    /// Sets an idle group's offsets, checking that each partition exists.
    pub async fn reset_offsets(
        &self,
        group_id: &str,
        offsets: Vec<(String, u32, i64, String)>,
    ) -> Result<Vec<group::PartitionResult>, group::GroupError> {
        self.inner
            .groups
            .reset_offsets(group_id, offsets, |t, p| self.partition_error(t, p))
            .await
    }

    fn start_group_task(&self) {
        let broker = self.clone();
        let stop = self.inner.shutdown.clone();
        self.inner.tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(GROUP_TICK_MS));
            loop {
                tokio::select! {
                    _ = tick.tick() => broker.inner.groups.tick(),
                    () = stop.cancelled() => return,
                }
            }
        });
    }

    fn start_retention_task(&self) {
        let broker = self.clone();
        let every = Duration::from_millis(self.inner.config.retention_check_interval_ms.max(1));
        let stop = self.inner.shutdown.clone();
        self.inner.tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = stop.cancelled() => return,
                }
                broker.apply_retention().await;
            }
        });
    }

    /// Deletes sealed segments that fall outside each topic's retention.
    pub async fn apply_retention(&self) {
        let handles: Vec<_> = self.inner.topics.read().values().cloned().collect();
        let _ = tokio::task::spawn_blocking(move || {
            for t in handles {
                for (i, p) in t.partitions.iter().enumerate() {
                    match p.log.apply_retention() {
                        Ok(r) if r.segments_deleted > 0 => {
                            tracing::info!(topic = %t.meta.name, partition = i, segments = r.segments_deleted, "retention deleted segments");
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(topic = %t.meta.name, partition = i, error = %e, "retention failed");
                        }
                    }
                }
            }
        })
        .await;
    }
}

fn topics_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(TOPICS_DIR)
}

fn open_topic(
    dir: &Path,
    meta: TopicMeta,
    config: LogConfig,
    disk: &Arc<dyn Disk>,
) -> Result<TopicHandle, BrokerError> {
    let mut partitions = Vec::with_capacity(meta.partitions as usize);
    for i in 0..meta.partitions {
        let (log, report) = Log::open(
            dir.join(i.to_string()),
            config.clone(),
            disk.clone(),
            Arc::new(SystemClock),
        )
        .map_err(|e| storage_err(&meta.name, i, e))?;
        if !report.is_clean() {
            tracing::warn!(topic = %meta.name, partition = i, ?report, "recovered partition");
        }
        partitions.push(Arc::new(Partition::new(log, config.fsync)));
    }
    Ok(TopicHandle {
        meta,
        config,
        partitions,
    })
}

type Opened = (
    MetadataStore,
    HashMap<String, Arc<TopicHandle>>,
    group::GroupCoordinator,
);

fn open_all(config: &BrokerConfig) -> Result<Opened, BrokerError> {
    let (store, recovery) = MetadataStore::open(&config.data_dir.join(META_DIR))?;
    if recovery != state_store::StoreRecovery::default() {
        tracing::warn!(?recovery, "recovered metadata");
    }
    let tdir = topics_dir(&config.data_dir);
    std::fs::create_dir_all(&tdir).map_err(|e| BrokerError::Storage(e.into()))?;
    let mut topics = HashMap::new();
    for meta in store.state().topics.values() {
        let log_config = topic::resolve_log_config(&config.topic_defaults, &meta.configs)?;
        let handle = open_topic(
            &tdir.join(meta.dir_name()),
            meta.clone(),
            log_config,
            &config.disk,
        )?;
        topics.insert(meta.name.clone(), Arc::new(handle));
    }
    let expected: std::collections::HashSet<String> = store
        .state()
        .topics
        .values()
        .map(TopicMeta::dir_name)
        .collect();
    let entries = std::fs::read_dir(&tdir).map_err(|e| BrokerError::Storage(e.into()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !expected.contains(&name) {
            tracing::warn!(dir = %entry.path().display(), "removing data of a topic that no longer exists");
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!(dir = %entry.path().display(), error = %e, "could not remove");
            }
        }
    }
    let groups =
        group::GroupCoordinator::open(&config.data_dir.join(GROUPS_DIR), config.groups.clone())
            .map_err(|e| {
                BrokerError::Storage(StorageError::Io(std::io::Error::other(e.to_string())))
            })?;
    tracing::info!(
        topics = topics.len(),
        "opened data directory {}",
        config.data_dir.display()
    );
    Ok((store, topics, groups))
}

fn describe(t: &TopicHandle) -> TopicDescription {
    TopicDescription {
        name: t.meta.name.clone(),
        id: t.meta.id,
        configs: topic::describe_log_config(&t.config),
        partitions: t
            .partitions
            .iter()
            .enumerate()
            .map(|(i, p)| PartitionState {
                partition: i as u32,
                log_start_offset: p.log.log_start_offset(),
                high_watermark: p.log.high_watermark(),
                log_end_offset: p.log.log_end_offset(),
                size_bytes: p.log.size_bytes(),
                segments: p.log.segment_count() as u32,
                leader_epoch: p.leader_epoch,
            })
            .collect(),
    }
}

/// Where a partition's next read starts, after a fetch that returned data from it.
#[derive(Debug, Clone, Copy)]
struct NextRead {
    offset: i64,
    /// What this fetch asked of the partition.
    max_bytes: u32,
}

/// Reads each partition once, sharing `max_bytes` among them in order, and says where
/// each one that returned data goes on. A partition's read-ahead (`ahead`: the
/// `max_bytes` it was read with, and the result) stands in for its read where it is an
/// answer to it. `read` reads one log; when it answers `None` for any partition, so does
/// this.
fn read_partitions(
    specs: &[FetchPartitionSpec],
    parts: &[Option<Arc<Partition>>],
    ahead: &[Option<(u32, ReadResult)>],
    max_bytes: u32,
    read: impl Fn(&Log, i64, u32, i64) -> Option<Result<ReadResult, StorageError>>,
) -> Option<(Vec<FetchedPartition>, Vec<Option<NextRead>>)> {
    let mut left = max_bytes;
    let mut first_data = true;
    let read: Vec<_> = specs
        .iter()
        .zip(parts)
        .zip(ahead)
        .map(|((s, p), ahead)| {
            let mut out = FetchedPartition {
                topic: s.topic.clone(),
                partition: s.partition,
                error: None,
                high_watermark: -1,
                log_start_offset: -1,
                records: Bytes::new(),
            };
            let Some(p) = p else {
                return Some((out, None));
            };
            let hw = p.log.high_watermark();
            out.high_watermark = hw;
            out.log_start_offset = p.log.log_start_offset();
            if left == 0 && !first_data {
                return Some((out, None));
            }
            let want = s.max_bytes.min(left).max(1);
            // A read-ahead answers if a read of `want` could have returned it, and its
            // records are still retained (retention may have moved past them since).
            let answer = match ahead {
                Some((m, r))
                    if (*m <= want || r.bytes.len() <= want as usize)
                        && s.offset >= out.log_start_offset =>
                {
                    Ok(r.clone())
                }
                _ => read(&p.log, s.offset, want, hw)?,
            };
            match answer {
                Ok(r) => {
                    let n = r.bytes.len();
                    // Only the first partition with data may exceed the budget (by one
                    // batch), so that an oversized batch cannot stall a consumer.
                    if n as u64 > u64::from(left) && !first_data {
                        return Some((out, None));
                    }
                    left = left.saturating_sub(n as u32);
                    out.records = r.bytes;
                    if n > 0 {
                        first_data = false;
                        let next = NextRead {
                            offset: r.next_offset,
                            max_bytes: want,
                        };
                        return Some((out, Some(next)));
                    }
                }
                Err(e) => out.error = Some(storage_err(&s.topic, s.partition, e)),
            }
            Some((out, None))
        })
        .collect::<Option<_>>()?;
    Some(read.into_iter().unzip())
}
