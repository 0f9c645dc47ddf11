//! Growing a topic: more partitions for an existing topic (Kafka's CreatePartitions).
//!
//! Existing partitions keep their logs, offsets and producer state; new ones start empty.
//! As with topic creation, the new logs are opened before the metadata command is made
//! durable: a crash in between leaves empty partition directories that metadata does not
//! count, which the next growth reuses.

use std::sync::Arc;

use weir_storage::{Log, SystemClock};

use crate::metadata::MetadataCommand;
use crate::partition::Partition;
use crate::{
    Broker, BrokerError, TopicDescription, TopicHandle, describe, storage_err, topics_dir,
};

impl Broker {
    /// Grows topic `name` to `partitions` partitions in total.
    pub async fn create_partitions(
        &self,
        name: &str,
        partitions: u32,
    ) -> Result<TopicDescription, BrokerError> {
        self.check_running()?;
        let max = self.inner.config.topic_partitions_max;
        let admin = self.inner.admin.clone().lock_owned().await;
        let old = self.topic(name)?;
        let current = old.meta.partitions;
        if partitions <= current {
            return Err(BrokerError::PartitionsNotIncreased {
                topic: name.to_owned(),
                current,
                requested: partitions,
            });
        }
        if partitions > max {
            return Err(BrokerError::InvalidPartitionCount {
                count: partitions,
                max,
            });
        }
        let dir = topics_dir(&self.inner.config.data_dir).join(old.meta.dir_name());
        let config = old.config.clone();
        let topic = name.to_owned();
        let cmd = MetadataCommand::CreatePartitions {
            name: name.to_owned(),
            partitions,
        };
        let disk = self.inner.config.disk.clone();
        let (added, admin) = tokio::task::spawn_blocking(move || {
            let mut admin = admin;
            let mut added = Vec::new();
            for i in current..partitions {
                let (log, report) = Log::open(
                    dir.join(i.to_string()),
                    config.clone(),
                    disk.clone(),
                    Arc::new(SystemClock),
                )
                .map_err(|e| storage_err(&topic, i, e))?;
                if !report.is_clean() {
                    tracing::warn!(topic = %topic, partition = i, ?report, "recovered partition");
                }
                added.push(Arc::new(Partition::new(log, config.fsync)));
            }
            admin.submit(cmd)?;
            Ok::<_, BrokerError>((added, admin))
        })
        .await??;
        let mut meta = old.meta.clone();
        meta.partitions = partitions;
        let mut all = old.partitions.clone();
        all.extend(added.iter().cloned());
        let handle = Arc::new(TopicHandle {
            meta: meta.clone(),
            config: old.config.clone(),
            partitions: all,
        });
        self.inner
            .topics
            .write()
            .insert(name.to_owned(), handle.clone());
        drop(admin);
        // Background work (interval fsync) for the new partitions only.
        self.start_partition_tasks(&Arc::new(TopicHandle {
            meta,
            config: old.config.clone(),
            partitions: added,
        }));
        tracing::info!(
            topic = name,
            from = current,
            to = partitions,
            "added partitions"
        );
        Ok(describe(&handle))
    }
}
