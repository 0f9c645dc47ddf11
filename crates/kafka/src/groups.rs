//! Consumer groups (Kafka's classic group protocol) mapped onto the broker's group
//! coordinator, which already speaks that protocol: opaque member metadata, leader-side
//! assignment, generations, static membership, session and rebalance timeouts. Nothing
//! about groups is decided here; this module only translates requests, versions and
//! error codes.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    DescribeGroupsRequest, DescribeGroupsResponse, GroupId, HeartbeatRequest, HeartbeatResponse,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest,
    ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use weir_broker::group::{CommitOffsets, GroupError, GroupState, JoinGroup};

use crate::conn::Shared;

/// The Kafka error for a coordinator error.
pub(crate) fn group_error(e: &GroupError) -> ResponseError {
    match e {
        GroupError::InvalidGroupId(_) => ResponseError::InvalidGroupId,
        GroupError::UnknownMemberId(_) => ResponseError::UnknownMemberId,
        GroupError::IllegalGeneration { .. } => ResponseError::IllegalGeneration,
        GroupError::RebalanceInProgress => ResponseError::RebalanceInProgress,
        GroupError::InconsistentGroupProtocol(_) => ResponseError::InconsistentGroupProtocol,
        GroupError::InvalidSessionTimeout { .. } => ResponseError::InvalidSessionTimeout,
        GroupError::FencedInstanceId(_) => ResponseError::FencedInstanceId,
        GroupError::NonEmptyGroup => ResponseError::NonEmptyGroup,
        GroupError::GroupNotFound(_) => ResponseError::GroupIdNotFound,
        GroupError::OffsetMetadataTooLarge { .. } => ResponseError::OffsetMetadataTooLarge,
        // Only Weir's own consumer protocol has assignments the coordinator can read; a
        // commit outside one's assignment means the member's view is stale: rejoin.
        GroupError::PartitionNotOwned { .. } => ResponseError::IllegalGeneration,
        GroupError::GroupMaxSizeReached(_) => ResponseError::GroupMaxSizeReached,
        GroupError::MemberIdRequired(_) => ResponseError::MemberIdRequired,
        GroupError::InvalidRequest(_) => ResponseError::InvalidRequest,
        GroupError::UnknownTopic(_) | GroupError::UnknownPartition { .. } => {
            ResponseError::UnknownTopicOrPartition
        }
        // Retriable for clients: they look the coordinator up again and retry.
        GroupError::Storage(_) => ResponseError::CoordinatorNotAvailable,
        GroupError::ShuttingDown => ResponseError::NotCoordinator,
        _ => ResponseError::UnknownServerError,
    }
}

fn code(e: &GroupError) -> i16 {
    group_error(e).code()
}

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

fn opt(v: Option<&StrBytes>) -> Option<String> {
    v.filter(|v| !v.is_empty()).map(|v| v.to_string())
}

/// JoinGroup: v4+ first joins learn their member id first (`MEMBER_ID_REQUIRED`);
/// v0 has no rebalance timeout (the session timeout stands in, as in Kafka).
pub(crate) async fn join_group(
    shared: &Shared,
    version: i16,
    client_id: Option<&StrBytes>,
    client_host: String,
    r: JoinGroupRequest,
) -> JoinGroupResponse {
    let timeout = |ms: i32| u32::try_from(ms).unwrap_or(0);
    let req = JoinGroup {
        group_id: r.group_id.to_string(),
        member_id: r.member_id.to_string(),
        group_instance_id: opt(r.group_instance_id.as_ref()),
        session_timeout_ms: timeout(r.session_timeout_ms),
        rebalance_timeout_ms: if version == 0 {
            timeout(r.session_timeout_ms)
        } else {
            timeout(r.rebalance_timeout_ms)
        },
        protocol_type: r.protocol_type.to_string(),
        protocols: r
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
        client_id: client_id.map(|c| c.to_string()).unwrap_or_default(),
        client_host,
        require_known_member_id: version >= 4 && r.member_id.is_empty(),
    };
    let protocol_type = req.protocol_type.clone();
    let mut out = JoinGroupResponse::default();
    out.protocol_name = Some(StrBytes::default());
    match shared.broker.groups().join_group(req).await {
        Ok(j) => {
            out.generation_id = j.generation_id;
            if version >= 7 {
                out.protocol_type = Some(s(protocol_type));
            }
            out.protocol_name = Some(s(j.protocol_name));
            out.leader = s(j.leader_id);
            out.member_id = s(j.member_id);
            out.members = j
                .members
                .into_iter()
                .map(|m| {
                    let mut jm = JoinGroupResponseMember::default();
                    jm.member_id = s(m.member_id);
                    jm.group_instance_id = m.group_instance_id.map(s);
                    jm.metadata = m.metadata;
                    jm
                })
                .collect();
        }
        Err(e) => {
            out.error_code = code(&e);
            if let GroupError::MemberIdRequired(id) = e {
                out.member_id = s(id);
            } else {
                out.member_id = r.member_id;
            }
            if version >= 7 {
                out.protocol_name = None;
            }
        }
    }
    out
}

/// SyncGroup: the leader's request carries every assignment; each member gets its own.
pub(crate) async fn sync_group(shared: &Shared, r: SyncGroupRequest) -> SyncGroupResponse {
    let assignments = r
        .assignments
        .into_iter()
        .map(|a| (a.member_id.to_string(), a.assignment))
        .collect();
    let instance = opt(r.group_instance_id.as_ref());
    let result = shared
        .broker
        .groups()
        .sync_group(
            &r.group_id,
            r.generation_id,
            &r.member_id,
            instance.as_deref(),
            assignments,
        )
        .await;
    let mut out = SyncGroupResponse::default();
    // v5+: echo what the member joined with (the coordinator checked it at join time).
    out.protocol_type = r.protocol_type;
    out.protocol_name = r.protocol_name;
    match result {
        Ok(assignment) => out.assignment = assignment,
        Err(e) => {
            out.error_code = code(&e);
            out.assignment = Bytes::new();
        }
    }
    out
}

/// Heartbeat.
pub(crate) fn heartbeat(shared: &Shared, r: HeartbeatRequest) -> HeartbeatResponse {
    let instance = opt(r.group_instance_id.as_ref());
    let mut out = HeartbeatResponse::default();
    if let Err(e) = shared.broker.groups().heartbeat(
        &r.group_id,
        r.generation_id,
        &r.member_id,
        instance.as_deref(),
    ) {
        out.error_code = code(&e);
    }
    out
}

/// LeaveGroup: one member (v0–v2) or a batch with an answer per member (v3+).
pub(crate) fn leave_group(
    shared: &Shared,
    version: i16,
    r: LeaveGroupRequest,
) -> LeaveGroupResponse {
    let groups = shared.broker.groups();
    let mut out = LeaveGroupResponse::default();
    if version < 3 {
        if let Err(e) = groups.leave_group(&r.group_id, &[(r.member_id.to_string(), None)]) {
            out.error_code = code(&e);
        }
        return out;
    }
    for m in r.members {
        let instance = opt(m.group_instance_id.as_ref());
        let mut answer = MemberResponse::default();
        answer.error_code =
            match groups.leave_group(&r.group_id, &[(m.member_id.to_string(), instance)]) {
                Ok(()) => 0,
                Err(e) => code(&e),
            };
        answer.member_id = m.member_id;
        answer.group_instance_id = m.group_instance_id;
        out.members.push(answer);
    }
    out
}

/// OffsetCommit: with a generation and member (group-managed) or generation -1 and no
/// member (a standalone consumer committing its own positions).
pub(crate) async fn offset_commit(shared: &Shared, r: OffsetCommitRequest) -> OffsetCommitResponse {
    let mut offsets = Vec::new();
    let mut out = OffsetCommitResponse::default();
    // Where each partition's answer goes; negative partitions are refused here.
    let mut slots = Vec::new();
    for (t, topic) in r.topics.iter().enumerate() {
        let mut answer = OffsetCommitResponseTopic::default();
        answer.name = topic.name.clone();
        answer.topic_id = topic.topic_id;
        for (p, part) in topic.partitions.iter().enumerate() {
            let mut pa = OffsetCommitResponsePartition::default();
            pa.partition_index = part.partition_index;
            match u32::try_from(part.partition_index) {
                Ok(partition) => {
                    offsets.push((
                        topic.name.to_string(),
                        partition,
                        part.committed_offset,
                        part.committed_metadata
                            .as_ref()
                            .map(|m| m.to_string())
                            .unwrap_or_default(),
                    ));
                    slots.push((t, p));
                }
                Err(_) => pa.error_code = ResponseError::UnknownTopicOrPartition.code(),
            }
            answer.partitions.push(pa);
        }
        out.topics.push(answer);
    }
    let req = CommitOffsets {
        group_id: r.group_id.to_string(),
        generation_id: r.generation_id_or_member_epoch,
        member_id: r.member_id.to_string(),
        group_instance_id: opt(r.group_instance_id.as_ref()),
        offsets,
    };
    match shared.broker.commit_offsets(req).await {
        Ok(results) => {
            for ((t, p), (_, _, result)) in slots.into_iter().zip(results) {
                if let Err(e) = result {
                    out.topics[t].partitions[p].error_code = code(&e);
                }
            }
        }
        Err(e) => {
            let c = code(&e);
            for (t, p) in slots {
                out.topics[t].partitions[p].error_code = c;
            }
        }
    }
    out
}

type Fetched =
    Result<Vec<(String, u32, Option<weir_broker::group::offsets::Committed>)>, GroupError>;

/// Committed offsets of one group: the named partitions, or all it has (`None`).
fn fetch_group(shared: &Shared, group_id: &str, wanted: Option<Vec<(String, u32)>>) -> Fetched {
    shared
        .broker
        .groups()
        .fetch_offsets(group_id, wanted.as_deref())
}

/// (partition, committed offset or -1, metadata) rows of one topic.
type TopicOffsets = (String, Vec<(i32, i64, String)>);

/// Groups (topic, partition, committed) rows by topic, in first-seen order.
fn by_topic(
    rows: Vec<(String, u32, Option<weir_broker::group::offsets::Committed>)>,
) -> Vec<TopicOffsets> {
    let mut out: Vec<TopicOffsets> = Vec::new();
    for (topic, partition, committed) in rows {
        let (offset, metadata) = committed.map_or((-1, String::new()), |c| (c.offset, c.metadata));
        let row = (partition as i32, offset, metadata);
        match out.iter_mut().find(|(t, _)| *t == topic) {
            Some((_, parts)) => parts.push(row),
            None => out.push((topic, vec![row])),
        }
    }
    out
}

/// The partitions a request names; negative indexes cannot have offsets and are skipped.
fn wanted<'a>(topics: impl Iterator<Item = (&'a TopicName, &'a Vec<i32>)>) -> Vec<(String, u32)> {
    topics
        .flat_map(|(name, parts)| {
            parts
                .iter()
                .filter_map(|p| u32::try_from(*p).ok())
                .map(move |p| (name.to_string(), p))
        })
        .collect()
}

/// OffsetFetch: one group (v1–v7; from v2 a null topic list means all) or several (v8+).
/// A partition without a committed offset answers offset -1 and no error, as Kafka does.
pub(crate) fn offset_fetch(
    shared: &Shared,
    version: i16,
    r: OffsetFetchRequest,
) -> OffsetFetchResponse {
    let mut out = OffsetFetchResponse::default();
    if version >= 8 {
        for g in r.groups {
            let names = g
                .topics
                .as_ref()
                .map(|ts| wanted(ts.iter().map(|t| (&t.name, &t.partition_indexes))));
            let mut answer = OffsetFetchResponseGroup::default();
            answer.group_id = g.group_id.clone();
            match fetch_group(shared, &g.group_id, names) {
                Ok(rows) => {
                    answer.topics = by_topic(rows)
                        .into_iter()
                        .map(|(topic, parts)| {
                            let mut t = OffsetFetchResponseTopics::default();
                            t.name = TopicName(s(topic));
                            t.partitions = parts
                                .into_iter()
                                .map(|(p, offset, metadata)| {
                                    let mut rp = OffsetFetchResponsePartitions::default();
                                    rp.partition_index = p;
                                    rp.committed_offset = offset;
                                    rp.metadata = Some(s(metadata));
                                    rp
                                })
                                .collect();
                            t
                        })
                        .collect();
                }
                Err(e) => answer.error_code = code(&e),
            }
            out.groups.push(answer);
        }
        return out;
    }
    let names = r
        .topics
        .as_ref()
        .map(|ts| wanted(ts.iter().map(|t| (&t.name, &t.partition_indexes))));
    match fetch_group(shared, &r.group_id, names) {
        Ok(rows) => {
            out.topics = by_topic(rows)
                .into_iter()
                .map(|(topic, parts)| {
                    let mut t = OffsetFetchResponseTopic::default();
                    t.name = TopicName(s(topic));
                    t.partitions = parts
                        .into_iter()
                        .map(|(p, offset, metadata)| {
                            let mut rp = OffsetFetchResponsePartition::default();
                            rp.partition_index = p;
                            rp.committed_offset = offset;
                            rp.metadata = Some(s(metadata));
                            rp
                        })
                        .collect();
                    t
                })
                .collect();
        }
        Err(e) if version >= 2 => out.error_code = code(&e),
        Err(e) => {
            // v1 has no group-level error: every named partition carries it.
            let c = code(&e);
            for t in r.topics.unwrap_or_default() {
                let mut rt = OffsetFetchResponseTopic::default();
                rt.name = t.name;
                rt.partitions = t
                    .partition_indexes
                    .into_iter()
                    .map(|p| {
                        let mut rp = OffsetFetchResponsePartition::default();
                        rp.partition_index = p;
                        rp.committed_offset = -1;
                        rp.error_code = c;
                        rp
                    })
                    .collect();
                out.topics.push(rt);
            }
        }
    }
    out
}

/// The first DescribeGroups version with authorized operations.
const DESCRIBE_GROUPS_OPERATIONS_VERSION: i16 = 3;
/// ACL operation bits a group allows (READ 3, DELETE 6, DESCRIBE 8): all of them.
const GROUP_OPERATIONS: i32 = (1 << 3) | (1 << 6) | (1 << 8);

/// Kafka's name of the only group type Weir has.
const CLASSIC: &str = "classic";

/// ListGroups, with the v4 state filter and the v5 type filter.
pub(crate) fn list_groups(shared: &Shared, r: ListGroupsRequest) -> ListGroupsResponse {
    let mut out = ListGroupsResponse::default();
    let classic_wanted = r.types_filter.is_empty()
        || r.types_filter
            .iter()
            .any(|t| t.eq_ignore_ascii_case(CLASSIC));
    if !classic_wanted {
        return out;
    }
    for g in shared.broker.groups().list_groups() {
        let state = g.state.to_string();
        if !r.states_filter.is_empty()
            && !r
                .states_filter
                .iter()
                .any(|f| f.eq_ignore_ascii_case(&state))
        {
            continue;
        }
        let mut lg = ListedGroup::default();
        lg.group_id = GroupId(s(g.group_id));
        lg.protocol_type = s(g.protocol_type);
        lg.group_state = s(state);
        lg.group_type = s(CLASSIC);
        out.groups.push(lg);
    }
    out
}

/// DescribeGroups. An unknown group is described as `Dead` without an error, as Kafka
/// does.
pub(crate) fn describe_groups(
    shared: &Shared,
    version: i16,
    r: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let mut out = DescribeGroupsResponse::default();
    for id in r.groups {
        let mut dg = DescribedGroup::default();
        match shared.broker.groups().describe_group(&id) {
            Ok(d) => {
                dg.group_state = s(d.state.to_string());
                dg.protocol_type = s(d.protocol_type);
                dg.protocol_data = s(
                    if d.state == GroupState::Stable || d.state == GroupState::CompletingRebalance {
                        d.protocol
                    } else {
                        String::new()
                    },
                );
                dg.members = d
                    .members
                    .into_iter()
                    .map(|m| {
                        let mut dm = DescribedGroupMember::default();
                        dm.member_id = s(m.member_id);
                        dm.group_instance_id = m.group_instance_id.map(s);
                        dm.client_id = s(m.client_id);
                        dm.client_host = s(m.client_host);
                        dm.member_metadata = m.metadata;
                        dm.member_assignment = m.assignment;
                        dm
                    })
                    .collect();
            }
            Err(GroupError::GroupNotFound(_)) => dg.group_state = s("Dead"),
            Err(e) => dg.error_code = code(&e),
        }
        dg.group_id = id;
        // Weir has no ACLs: everything is allowed. Filled in (v3+) even when not asked
        // for, as kafka-python (2.x) reads the field whether it asked or not.
        if version >= DESCRIBE_GROUPS_OPERATIONS_VERSION {
            dg.authorized_operations = GROUP_OPERATIONS;
        }
        out.groups.push(dg);
    }
    out
}
