//! [`Admin`]: topic management and metadata.

use std::collections::HashMap;

use weir_proto::{Request, Response, v1};

use crate::client::Client;
use crate::conn::unexpected;
use crate::error::{Result, check};

/// Topic administration. Obtained from [`Client::admin`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct Admin {
    client: Client,
}

macro_rules! call {
    ($self:ident, $kind:ident, $req:expr) => {{
        let req = Request::$kind($req);
        match $self
            .client
            .request(&req, $self.client.request_timeout())
            .await?
        {
            Response::$kind(r) => {
                check(r.status.as_ref())?;
                r
            }
            other => return Err(unexpected(stringify!($kind), &other)),
        }
    }};
}

impl Admin {
    pub(crate) fn new(client: Client) -> Self {
        Self { client }
    }

    /// Creates `name` with `partitions` partitions and per-topic `configs`
    /// (for example `fsync` = `always` | `interval` | `never`, with `fsync_interval_ms`), returning the
    /// topic as created, defaults included.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        configs: HashMap<String, String>,
    ) -> Result<v1::TopicInfo> {
        let r = call!(
            self,
            CreateTopic,
            v1::CreateTopicRequest {
                name: name.to_owned(),
                partitions,
                configs,
            }
        );
        self.client.invalidate_metadata(name);
        r.topic.ok_or_else(|| missing("CreateTopic", "topic"))
    }

    /// Deletes `name` and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        call!(
            self,
            DeleteTopic,
            v1::DeleteTopicRequest {
                name: name.to_owned(),
            }
        );
        self.client.invalidate_metadata(name);
        Ok(())
    }

    /// Names and partition counts of all topics.
    pub async fn list_topics(&self) -> Result<Vec<v1::TopicSummary>> {
        Ok(call!(self, ListTopics, v1::ListTopicsRequest {}).topics)
    }

    /// One topic with its effective configs and per-partition offsets and sizes.
    pub async fn describe_topic(&self, name: &str) -> Result<v1::TopicInfo> {
        let r = call!(
            self,
            DescribeTopic,
            v1::DescribeTopicRequest {
                name: name.to_owned(),
            }
        );
        r.topic.ok_or_else(|| missing("DescribeTopic", "topic"))
    }

    /// Brokers and partition leaders of `topics` (all topics when empty). Per-topic
    /// errors (such as an unknown topic) are in each topic's `status`.
    pub async fn metadata(&self, topics: Vec<String>) -> Result<v1::MetadataResponse> {
        self.client.metadata(topics).await
    }

    /// Every group with members or committed offsets.
    pub async fn list_groups(&self) -> Result<Vec<v1::GroupSummary>> {
        Ok(call!(self, ListGroups, v1::ListGroupsRequest {}).groups)
    }

    /// A group's state, members and their assignments.
    pub async fn describe_group(&self, group_id: &str) -> Result<v1::DescribeGroupResponse> {
        Ok(call!(
            self,
            DescribeGroup,
            v1::DescribeGroupRequest {
                group_id: group_id.to_owned(),
            }
        ))
    }

    /// A group's committed offsets (every partition it committed).
    pub async fn group_offsets(&self, group_id: &str) -> Result<Vec<v1::CommittedOffset>> {
        Ok(call!(
            self,
            OffsetFetch,
            v1::OffsetFetchRequest {
                group_id: group_id.to_owned(),
                partitions: Vec::new(),
            }
        )
        .offsets)
    }

    /// Sets committed offsets of a group without members; one status per partition.
    pub async fn reset_offsets(
        &self,
        group_id: &str,
        offsets: Vec<(String, u32, i64)>,
    ) -> Result<Vec<v1::PartitionStatus>> {
        Ok(call!(
            self,
            ResetOffsets,
            v1::ResetOffsetsRequest {
                group_id: group_id.to_owned(),
                offsets: v1::PartitionOffset::list(offsets),
            }
        )
        .partitions)
    }

    /// Forgets the committed offsets of a group without members.
    pub async fn delete_group(&self, group_id: &str) -> Result<()> {
        call!(
            self,
            DeleteGroup,
            v1::DeleteGroupRequest {
                group_id: group_id.to_owned(),
            }
        );
        Ok(())
    }
}

fn missing(kind: &str, field: &str) -> crate::ClientError {
    crate::ClientError::Protocol(format!("{kind} response without {field}"))
}
