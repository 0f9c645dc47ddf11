//! Native requests → broker operations → native responses, and the one mapping from broker
//! errors to protocol error codes.

use weir_broker::group::{CommitOffsets, GroupError, JoinGroup, PartitionResult};
use weir_broker::{
    Acks, Appended, BrokerError, FetchPartitionSpec, FetchSpec, OffsetQuery, TopicDescription,
};
use weir_proto::v1::{self, ErrorCode};
use weir_proto::{PROTOCOL_VERSION, PROTOCOL_VERSION_MIN, Request, Response};

use crate::native::Shared;

/// The protocol code for a broker error.
pub(crate) fn error_code(e: &BrokerError) -> ErrorCode {
    match e {
        BrokerError::UnknownTopic(_) => ErrorCode::UnknownTopic,
        BrokerError::UnknownPartition { .. } => ErrorCode::UnknownPartition,
        BrokerError::TopicExists(_) => ErrorCode::TopicAlreadyExists,
        BrokerError::InvalidTopicName(_) => ErrorCode::InvalidTopicName,
        BrokerError::InvalidPartitionCount { .. } => ErrorCode::InvalidPartitionCount,
        BrokerError::InvalidConfig(_) => ErrorCode::InvalidConfig,
        BrokerError::TooManyTopics { .. } => ErrorCode::TooManyTopics,
        BrokerError::InvalidRequest(_) => ErrorCode::InvalidRequest,
        BrokerError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
        BrokerError::CorruptBatch(_) => ErrorCode::CorruptBatch,
        BrokerError::BatchTooLarge { .. } => ErrorCode::BatchTooLarge,
        BrokerError::PartitionFailed { .. } => ErrorCode::PartitionFailed,
        BrokerError::DiskFull { .. } => ErrorCode::DiskFull,
        BrokerError::CorruptData { .. } => ErrorCode::CorruptData,
        BrokerError::Timeout(_) => ErrorCode::RequestTimedOut,
        BrokerError::ShuttingDown => ErrorCode::ShuttingDown,
        BrokerError::Storage(_) | BrokerError::Metadata(_) => ErrorCode::StorageError,
        _ => ErrorCode::UnknownServerError,
    }
}

/// The protocol code for a group error.
pub(crate) fn group_error_code(e: &GroupError) -> ErrorCode {
    match e {
        GroupError::InvalidGroupId(_) => ErrorCode::InvalidGroupId,
        GroupError::UnknownMemberId(_) => ErrorCode::UnknownMemberId,
        GroupError::IllegalGeneration { .. } => ErrorCode::IllegalGeneration,
        GroupError::RebalanceInProgress => ErrorCode::RebalanceInProgress,
        GroupError::InconsistentGroupProtocol(_) => ErrorCode::InconsistentGroupProtocol,
        GroupError::InvalidSessionTimeout { .. } => ErrorCode::InvalidSessionTimeout,
        GroupError::FencedInstanceId(_) => ErrorCode::FencedInstanceId,
        GroupError::NonEmptyGroup => ErrorCode::NonEmptyGroup,
        GroupError::GroupNotFound(_) => ErrorCode::GroupNotFound,
        GroupError::OffsetMetadataTooLarge { .. } => ErrorCode::OffsetMetadataTooLarge,
        GroupError::PartitionNotOwned { .. } => ErrorCode::PartitionNotOwned,
        GroupError::GroupMaxSizeReached(_) => ErrorCode::GroupMaxSizeReached,
        GroupError::MemberIdRequired(_) => ErrorCode::MemberIdRequired,
        GroupError::InvalidRequest(_) => ErrorCode::InvalidRequest,
        GroupError::UnknownTopic(_) => ErrorCode::UnknownTopic,
        GroupError::UnknownPartition { .. } => ErrorCode::UnknownPartition,
        GroupError::Storage(_) => ErrorCode::StorageError,
        GroupError::ShuttingDown => ErrorCode::ShuttingDown,
        _ => ErrorCode::UnknownServerError,
    }
}

fn group_status(e: &GroupError) -> Option<v1::Status> {
    Some(v1::Status::new(group_error_code(e), e.to_string()))
}

fn instance(id: String) -> Option<String> {
    (!id.is_empty()).then_some(id)
}

fn partition_statuses(results: Vec<PartitionResult>) -> Vec<v1::PartitionStatus> {
    results
        .into_iter()
        .map(|(topic, partition, r)| v1::PartitionStatus {
            topic,
            partition,
            status: r.err().as_ref().map_or_else(ok, group_status),
        })
        .collect()
}

fn status(e: &BrokerError) -> Option<v1::Status> {
    Some(v1::Status::new(error_code(e), e.to_string()))
}

fn ok() -> Option<v1::Status> {
    Some(v1::Status::ok())
}

fn topic_info(d: TopicDescription) -> v1::TopicInfo {
    v1::TopicInfo {
        name: d.name,
        id: d.id.to_string(),
        partition_count: d.partitions.len() as u32,
        configs: d.configs.into_iter().collect(),
        partitions: d
            .partitions
            .into_iter()
            .map(|p| v1::PartitionInfo {
                partition: p.partition,
                log_start_offset: p.log_start_offset,
                high_watermark: p.high_watermark,
                log_end_offset: p.log_end_offset,
                size_bytes: p.size_bytes,
                segments: p.segments,
                leader_epoch: p.leader_epoch,
            })
            .collect(),
    }
}

/// The first phase of a produce request.
pub(crate) enum ProduceStart {
    /// Answered (or, with acks none, deliberately unanswered) already.
    Done(Option<Response>),
    /// Written to the log; [`finish_produce`] waits for durability and answers.
    Appended {
        appended: Appended,
        acks: Acks,
        timeout_ms: u32,
    },
}

fn produce_error(e: &BrokerError) -> Response {
    Response::Produce(v1::ProduceResponse {
        status: status(e),
        base_offset: -1,
        last_offset: -1,
        log_append_time_ms: -1,
    })
}

/// Validates a produce request and appends its batches. Awaited in turn for the produce
/// requests of one connection, so their batches reach each partition in the order sent.
pub(crate) async fn start_produce(shared: &Shared, r: v1::ProduceRequest) -> ProduceStart {
    let acks = match v1::Acks::try_from(r.acks) {
        Ok(v1::Acks::All) => Acks::All,
        Ok(v1::Acks::Leader) => Acks::Leader,
        Ok(v1::Acks::None) => Acks::None,
        Err(_) => {
            let e = BrokerError::InvalidRequest(format!("unknown acks value {}", r.acks));
            return ProduceStart::Done(Some(produce_error(&e)));
        }
    };
    // The records stay a slice of the frame: the log writes patched headers from copies.
    match shared
        .broker
        .append(&r.topic, r.partition, r.records, acks)
        .await
    {
        Ok(appended) => ProduceStart::Appended {
            appended,
            acks,
            timeout_ms: r.timeout_ms,
        },
        Err(e) if acks == Acks::None => {
            tracing::debug!(topic = %r.topic, partition = r.partition, error = %e, "acks=none produce failed");
            ProduceStart::Done(None)
        }
        Err(e) => ProduceStart::Done(Some(produce_error(&e))),
    }
}

/// Waits for an appended produce to be as durable as asked and builds its answer.
pub(crate) async fn finish_produce(
    appended: Appended,
    acks: Acks,
    timeout_ms: u32,
) -> Option<Response> {
    let result = appended.wait(timeout_ms).await;
    if acks == Acks::None {
        return None;
    }
    Some(match result {
        Ok(info) => Response::Produce(v1::ProduceResponse {
            status: ok(),
            base_offset: info.base_offset,
            last_offset: info.last_offset,
            log_append_time_ms: info.log_append_time_ms,
        }),
        Err(e) => produce_error(&e),
    })
}

/// Runs one request. `None` means no response is sent (produce with acks none).
pub(crate) async fn handle(
    shared: &Shared,
    peer: std::net::SocketAddr,
    request: Request,
) -> Option<Response> {
    let broker = &shared.broker;
    Some(match request {
        Request::Handshake(r) => {
            let lo = u32::from(PROTOCOL_VERSION_MIN).max(r.version_min);
            let hi = u32::from(PROTOCOL_VERSION).min(r.version_max);
            let status = if lo <= hi {
                ok()
            } else {
                Some(v1::Status::new(
                    ErrorCode::UnsupportedVersion,
                    format!(
                        "client speaks versions {}..={}, server {PROTOCOL_VERSION_MIN}..={PROTOCOL_VERSION}",
                        r.version_min, r.version_max
                    ),
                ))
            };
            Response::Handshake(v1::HandshakeResponse {
                status,
                version: hi,
                server_version: env!("CARGO_PKG_VERSION").into(),
                limits: Some(v1::Limits {
                    frame_bytes_max: shared.limits.frame_bytes_max,
                    batch_bytes_max: broker.config().topic_defaults.batch_bytes_max,
                    inflight_requests_max: shared.limits.inflight_requests_max,
                    fetch_wait_ms_max: shared.limits.fetch_wait_ms_max,
                }),
                node_id: shared.node_id,
            })
        }
        Request::Metadata(r) => {
            let names: Vec<String> = if r.topics.is_empty() {
                broker.list_topics().into_iter().map(|(n, _)| n).collect()
            } else {
                r.topics
            };
            let topics = names
                .into_iter()
                .map(|name| match broker.describe_topic(&name) {
                    Ok(d) => v1::TopicMetadata {
                        name,
                        status: ok(),
                        partitions: d
                            .partitions
                            .iter()
                            .map(|p| v1::PartitionMetadata {
                                partition: p.partition,
                                leader: shared.node_id,
                                leader_epoch: p.leader_epoch,
                            })
                            .collect(),
                    },
                    Err(e) => v1::TopicMetadata {
                        name,
                        status: status(&e),
                        partitions: Vec::new(),
                    },
                })
                .collect();
            Response::Metadata(v1::MetadataResponse {
                status: ok(),
                brokers: vec![v1::BrokerInfo {
                    node_id: shared.node_id,
                    host: shared.advertised_host.clone(),
                    port: shared.advertised_port.into(),
                }],
                topics,
                controller_id: shared.node_id,
            })
        }
        Request::CreateTopic(r) => {
            let partitions = if r.partitions == 0 {
                broker.config().topic_partitions_default
            } else {
                r.partitions
            };
            let configs = r.configs.into_iter().collect();
            match broker.create_topic(&r.name, partitions, configs).await {
                Ok(d) => Response::CreateTopic(v1::CreateTopicResponse {
                    status: ok(),
                    topic: Some(topic_info(d)),
                }),
                Err(e) => Response::CreateTopic(v1::CreateTopicResponse {
                    status: status(&e),
                    topic: None,
                }),
            }
        }
        Request::DeleteTopic(r) => Response::DeleteTopic(v1::DeleteTopicResponse {
            status: match broker.delete_topic(&r.name).await {
                Ok(()) => ok(),
                Err(e) => status(&e),
            },
        }),
        Request::ListTopics(_) => Response::ListTopics(v1::ListTopicsResponse {
            status: ok(),
            topics: broker
                .list_topics()
                .into_iter()
                .map(|(name, partition_count)| v1::TopicSummary {
                    name,
                    partition_count,
                })
                .collect(),
        }),
        Request::DescribeTopic(r) => match broker.describe_topic(&r.name) {
            Ok(d) => Response::DescribeTopic(v1::DescribeTopicResponse {
                status: ok(),
                topic: Some(topic_info(d)),
            }),
            Err(e) => Response::DescribeTopic(v1::DescribeTopicResponse {
                status: status(&e),
                topic: None,
            }),
        },
        Request::Produce(r) => {
            // Produce is normally routed through `start_produce` to keep its order; this
            // path serves callers that do not care about order.
            return match start_produce(shared, r).await {
                ProduceStart::Done(resp) => resp,
                ProduceStart::Appended {
                    appended,
                    acks,
                    timeout_ms,
                } => finish_produce(appended, acks, timeout_ms).await,
            };
        }
        Request::Fetch(r) => {
            let spec = FetchSpec {
                max_wait_ms: r.max_wait_ms,
                min_bytes: r.min_bytes,
                max_bytes: r.max_bytes,
                partitions: r
                    .partitions
                    .into_iter()
                    .map(|p| FetchPartitionSpec {
                        topic: p.topic,
                        partition: p.partition,
                        offset: p.offset,
                        max_bytes: p.max_bytes,
                    })
                    .collect(),
            };
            Response::Fetch(match broker.fetch(spec).await {
                Ok(parts) => v1::FetchResponse {
                    status: ok(),
                    partitions: parts
                        .into_iter()
                        .map(|p| v1::FetchPartitionResult {
                            status: p.error.as_ref().map_or_else(ok, status),
                            topic: p.topic,
                            partition: p.partition,
                            high_watermark: p.high_watermark,
                            log_start_offset: p.log_start_offset,
                            records: p.records,
                        })
                        .collect(),
                },
                Err(e) => v1::FetchResponse {
                    status: status(&e),
                    partitions: Vec::new(),
                },
            })
        }
        Request::ListOffsets(r) => {
            let query = match v1::OffsetSpec::try_from(r.spec) {
                Ok(v1::OffsetSpec::Earliest) => OffsetQuery::Earliest,
                Ok(v1::OffsetSpec::Latest) => OffsetQuery::Latest,
                Ok(v1::OffsetSpec::Timestamp) => OffsetQuery::Timestamp(r.timestamp_ms),
                Err(_) => {
                    return Some(Response::ListOffsets(v1::ListOffsetsResponse {
                        status: Some(v1::Status::new(
                            ErrorCode::InvalidRequest,
                            format!("unknown offset spec {}", r.spec),
                        )),
                        offset: -1,
                        found: false,
                    }));
                }
            };
            Response::ListOffsets(
                match broker.list_offsets(&r.topic, r.partition, query).await {
                    Ok((offset, found)) => v1::ListOffsetsResponse {
                        status: ok(),
                        offset,
                        found,
                    },
                    Err(e) => v1::ListOffsetsResponse {
                        status: status(&e),
                        offset: -1,
                        found: false,
                    },
                },
            )
        }
        Request::JoinGroup(r) => {
            let req = JoinGroup {
                group_id: r.group_id,
                member_id: r.member_id,
                group_instance_id: instance(r.group_instance_id),
                session_timeout_ms: r.session_timeout_ms,
                rebalance_timeout_ms: r.rebalance_timeout_ms,
                protocol_type: r.protocol_type,
                protocols: r
                    .protocols
                    .into_iter()
                    .map(|p| (p.name, p.metadata))
                    .collect(),
                client_id: r.client_id,
                client_host: peer.to_string(),
                require_known_member_id: false,
            };
            Response::JoinGroup(match broker.groups().join_group(req).await {
                Ok(j) => v1::JoinGroupResponse {
                    status: ok(),
                    generation_id: j.generation_id,
                    protocol_name: j.protocol_name,
                    leader_id: j.leader_id,
                    member_id: j.member_id,
                    members: j
                        .members
                        .into_iter()
                        .map(|m| v1::GroupMember {
                            member_id: m.member_id,
                            group_instance_id: m.group_instance_id.unwrap_or_default(),
                            metadata: m.metadata,
                        })
                        .collect(),
                },
                Err(e) => v1::JoinGroupResponse {
                    status: group_status(&e),
                    generation_id: -1,
                    ..Default::default()
                },
            })
        }
        Request::SyncGroup(r) => {
            let assignments = r
                .assignments
                .into_iter()
                .map(|a| (a.member_id, a.assignment))
                .collect();
            let instance_id = instance(r.group_instance_id);
            let result = broker
                .groups()
                .sync_group(
                    &r.group_id,
                    r.generation_id,
                    &r.member_id,
                    instance_id.as_deref(),
                    assignments,
                )
                .await;
            Response::SyncGroup(match result {
                Ok(assignment) => v1::SyncGroupResponse {
                    status: ok(),
                    assignment,
                },
                Err(e) => v1::SyncGroupResponse {
                    status: group_status(&e),
                    assignment: Default::default(),
                },
            })
        }
        Request::Heartbeat(r) => {
            let instance_id = instance(r.group_instance_id);
            let result = broker.groups().heartbeat(
                &r.group_id,
                r.generation_id,
                &r.member_id,
                instance_id.as_deref(),
            );
            Response::Heartbeat(v1::HeartbeatResponse {
                status: result.err().as_ref().map_or_else(ok, group_status),
            })
        }
        Request::LeaveGroup(r) => {
            let members: Vec<_> = r
                .members
                .into_iter()
                .map(|m| (m.member_id, instance(m.group_instance_id)))
                .collect();
            let result = broker.groups().leave_group(&r.group_id, &members);
            Response::LeaveGroup(v1::LeaveGroupResponse {
                status: result.err().as_ref().map_or_else(ok, group_status),
            })
        }
        Request::OffsetCommit(r) => {
            let req = CommitOffsets {
                group_id: r.group_id,
                generation_id: r.generation_id,
                member_id: r.member_id,
                group_instance_id: instance(r.group_instance_id),
                offsets: r
                    .offsets
                    .into_iter()
                    .map(|o| (o.topic, o.partition, o.offset, o.metadata))
                    .collect(),
            };
            Response::OffsetCommit(match broker.commit_offsets(req).await {
                Ok(results) => v1::OffsetCommitResponse {
                    status: ok(),
                    partitions: partition_statuses(results),
                },
                Err(e) => v1::OffsetCommitResponse {
                    status: group_status(&e),
                    partitions: Vec::new(),
                },
            })
        }
        Request::OffsetFetch(r) => {
            let wanted: Vec<(String, u32)> = r
                .partitions
                .into_iter()
                .map(|tp| (tp.topic, tp.partition))
                .collect();
            let wanted = (!wanted.is_empty()).then_some(wanted);
            let fetched = broker
                .groups()
                .fetch_offsets(&r.group_id, wanted.as_deref());
            Response::OffsetFetch(match fetched {
                Ok(list) => v1::OffsetFetchResponse {
                    status: ok(),
                    offsets: list
                        .into_iter()
                        .map(|(topic, partition, c)| v1::CommittedOffset {
                            topic,
                            partition,
                            offset: c.as_ref().map_or(-1, |c| c.offset),
                            metadata: c.map(|c| c.metadata).unwrap_or_default(),
                            status: ok(),
                        })
                        .collect(),
                },
                Err(e) => v1::OffsetFetchResponse {
                    status: group_status(&e),
                    offsets: Vec::new(),
                },
            })
        }
        Request::ListGroups(_) => Response::ListGroups(v1::ListGroupsResponse {
            status: ok(),
            groups: broker
                .groups()
                .list_groups()
                .into_iter()
                .map(|g| v1::GroupSummary {
                    group_id: g.group_id,
                    protocol_type: g.protocol_type,
                    state: g.state.to_string(),
                    members: g.members,
                })
                .collect(),
        }),
        Request::DescribeGroup(r) => {
            Response::DescribeGroup(match broker.groups().describe_group(&r.group_id) {
                Ok(d) => v1::DescribeGroupResponse {
                    status: ok(),
                    group_id: d.group_id,
                    state: d.state.to_string(),
                    protocol_type: d.protocol_type,
                    protocol: d.protocol,
                    generation_id: d.generation_id,
                    leader_id: d.leader_id,
                    members: d
                        .members
                        .into_iter()
                        .map(|m| v1::MemberDescription {
                            member_id: m.member_id,
                            group_instance_id: m.group_instance_id.unwrap_or_default(),
                            client_id: m.client_id,
                            client_host: m.client_host,
                            metadata: m.metadata,
                            assignment: m.assignment,
                        })
                        .collect(),
                },
                Err(e) => v1::DescribeGroupResponse {
                    status: group_status(&e),
                    group_id: r.group_id,
                    ..Default::default()
                },
            })
        }
        Request::ResetOffsets(r) => {
            let offsets = r
                .offsets
                .into_iter()
                .map(|o| (o.topic, o.partition, o.offset, o.metadata))
                .collect();
            Response::ResetOffsets(match broker.reset_offsets(&r.group_id, offsets).await {
                Ok(results) => v1::ResetOffsetsResponse {
                    status: ok(),
                    partitions: partition_statuses(results),
                },
                Err(e) => v1::ResetOffsetsResponse {
                    status: group_status(&e),
                    partitions: Vec::new(),
                },
            })
        }
        Request::DeleteGroup(r) => Response::DeleteGroup(v1::DeleteGroupResponse {
            status: broker
                .groups()
                .delete_group(&r.group_id)
                .await
                .err()
                .as_ref()
                .map_or_else(ok, group_status),
        }),
    })
}
