//! The consumer group coordinator.
//!
//! It speaks Kafka's group protocol, so the Kafka listener maps JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup, OffsetCommit and OffsetFetch straight onto it:
//!
//! - Members join with a protocol type and a list of (protocol name, opaque metadata). A
//!   join starts or joins a rebalance and waits until every known member has joined again
//!   (or the rebalance timeout drops those that did not). The coordinator then bumps the
//!   generation, picks the protocol all members support that most prefer, picks a leader,
//!   and answers every join; the leader's answer carries all members' metadata.
//! - The leader computes the assignment (client side, as in Kafka: range, round-robin,
//!   cooperative sticky) and sends it in its SyncGroup; every member's SyncGroup returns
//!   its part.
//! - Heartbeats keep members alive; a member silent for its session timeout is removed and
//!   the group rebalances. During a rebalance heartbeats answer `RebalanceInProgress`.
//! - Static members (a group instance id) that come back within their session timeout
//!   with the same metadata get their assignment back without a rebalance.
//!
//! State machine per group: `Empty → PreparingRebalance → CompletingRebalance → Stable`,
//! and back to `PreparingRebalance` on any membership change. Membership lives in memory
//! (members rejoin after a restart); committed offsets are durable ([`offsets`]).

pub mod offsets;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::state_store::StateStore;
use offsets::{Committed, OFFSETS_PARTITIONS, OffsetsCommand, OffsetsState, offsets_partition};

/// Longest group id.
pub const GROUP_ID_BYTES_MAX: usize = 255;
/// Longest member or instance id.
pub const MEMBER_ID_BYTES_MAX: usize = 255;
/// Most protocols a member may offer.
pub const GROUP_PROTOCOLS_MAX: usize = 16;
/// Largest protocol metadata or assignment of one member.
pub const PROTOCOL_METADATA_BYTES_MAX: usize = 1024 * 1024;
/// Longest metadata string attached to a committed offset.
pub const OFFSET_METADATA_BYTES_MAX: usize = 4096;
/// Most partitions in one commit.
pub const COMMIT_PARTITIONS_MAX: usize = 100_000;
/// Protocol type of Weir's own consumers: the coordinator can read their assignments and
/// refuses commits for partitions a member does not own.
pub const WEIR_CONSUMER_PROTOCOL_TYPE: &str = "weir-consumer";

/// Coordinator settings.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Shortest session timeout a member may ask for.
    pub session_timeout_ms_min: u32,
    /// Longest session timeout a member may ask for.
    pub session_timeout_ms_max: u32,
    /// Longest rebalance timeout honoured.
    pub rebalance_timeout_ms_max: u32,
    /// Most members in one group.
    pub group_members_max: u32,
    /// How long the first rebalance of an empty group waits for more members, so a fleet
    /// starting together rebalances once instead of once per member.
    pub initial_rebalance_delay_ms: u32,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            session_timeout_ms_min: 1_000,
            session_timeout_ms_max: 1_800_000,
            rebalance_timeout_ms_max: 300_000,
            group_members_max: 1_000,
            initial_rebalance_delay_ms: 300,
        }
    }
}

/// Why a group request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// Empty or too long.
    #[error("invalid group id: {0}")]
    InvalidGroupId(String),
    /// The member is not (or no longer) in the group; join again.
    #[error("unknown member id {0:?}")]
    UnknownMemberId(String),
    /// The request's generation is not the group's.
    #[error("generation {got} is not the group's current generation {current}")]
    IllegalGeneration {
        /// Group's generation.
        current: i32,
        /// Request's.
        got: i32,
    },
    /// A rebalance is under way; join again.
    #[error("the group is rebalancing")]
    RebalanceInProgress,
    /// Protocol type or protocols incompatible with the group's.
    #[error("inconsistent group protocol: {0}")]
    InconsistentGroupProtocol(String),
    /// Session timeout out of the allowed range.
    #[error("session timeout {got} ms is not between {min} and {max} ms")]
    InvalidSessionTimeout {
        /// Requested.
        got: u32,
        /// Minimum.
        min: u32,
        /// Maximum.
        max: u32,
    },
    /// Another member took this group instance id.
    #[error("group instance id {0:?} is used by a newer member")]
    FencedInstanceId(String),
    /// The operation needs a group without members.
    #[error("the group has active members")]
    NonEmptyGroup,
    /// No such group.
    #[error("group {0:?} not found")]
    GroupNotFound(String),
    /// Offset metadata too long.
    #[error("offset metadata of {len} bytes exceeds {max}")]
    OffsetMetadataTooLarge {
        /// Length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// A commit for a partition the member was not assigned.
    #[error("partition {topic}/{partition} is not assigned to this member")]
    PartitionNotOwned {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
    },
    /// The group has `group_members_max` members.
    #[error("the group already has the maximum of {0} members")]
    GroupMaxSizeReached(u32),
    /// First join of a member that must learn its id first (Kafka JoinGroup v4+).
    #[error("member id required; join again with {0:?}")]
    MemberIdRequired(String),
    /// A field out of range.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// No such topic.
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// No such partition.
    #[error("topic {topic:?} has no partition {partition}")]
    UnknownPartition {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
    },
    /// Committed offsets could not be stored.
    #[error("offsets store: {0}")]
    Storage(String),
    /// The coordinator is stopping.
    #[error("the coordinator is shutting down")]
    ShuttingDown,
}

/// State of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// No members.
    Empty,
    /// Waiting for members to join.
    PreparingRebalance,
    /// Waiting for the leader's assignment.
    CompletingRebalance,
    /// Assigned and consuming.
    Stable,
}

impl std::fmt::Display for GroupState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        })
    }
}

/// A JoinGroup request.
#[derive(Debug, Clone, Default)]
pub struct JoinGroup {
    /// Group.
    pub group_id: String,
    /// Empty on a first join.
    pub member_id: String,
    /// Static membership id.
    pub group_instance_id: Option<String>,
    /// Removed after this long without a heartbeat.
    pub session_timeout_ms: u32,
    /// How long a rebalance waits for this member to join again.
    pub rebalance_timeout_ms: u32,
    /// e.g. "consumer" (Kafka) or [`WEIR_CONSUMER_PROTOCOL_TYPE`].
    pub protocol_type: String,
    /// (name, metadata) in order of preference.
    pub protocols: Vec<(String, Bytes)>,
    /// Client's id, for describe.
    pub client_id: String,
    /// Client's address, for describe.
    pub client_host: String,
    /// Answer a first join with [`GroupError::MemberIdRequired`] (Kafka JoinGroup v4+).
    pub require_known_member_id: bool,
}

/// One member as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedMember {
    /// Member id.
    pub member_id: String,
    /// Static id, if any.
    pub group_instance_id: Option<String>,
    /// Metadata for the chosen protocol.
    pub metadata: Bytes,
}

/// A JoinGroup answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinResult {
    /// New generation.
    pub generation_id: i32,
    /// Chosen protocol.
    pub protocol_name: String,
    /// The leader's member id.
    pub leader_id: String,
    /// This member's id.
    pub member_id: String,
    /// All members, for the leader only.
    pub members: Vec<JoinedMember>,
}

/// A commit of group offsets.
#[derive(Debug, Clone, Default)]
pub struct CommitOffsets {
    /// Group.
    pub group_id: String,
    /// -1 with an empty member id: a commit outside group management.
    pub generation_id: i32,
    /// Member.
    pub member_id: String,
    /// Static id.
    pub group_instance_id: Option<String>,
    /// (topic, partition, offset, metadata).
    pub offsets: Vec<(String, u32, i64, String)>,
}

/// Per-partition outcome of a commit.
pub type PartitionResult = (String, u32, Result<(), GroupError>);

/// A member in `describe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    /// Member id.
    pub member_id: String,
    /// Static id.
    pub group_instance_id: Option<String>,
    /// Client id.
    pub client_id: String,
    /// Client host.
    pub client_host: String,
    /// Metadata for the group's protocol.
    pub metadata: Bytes,
    /// Current assignment.
    pub assignment: Bytes,
}

/// A group in `describe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// Group.
    pub group_id: String,
    /// State.
    pub state: GroupState,
    /// Protocol type.
    pub protocol_type: String,
    /// Chosen protocol.
    pub protocol: String,
    /// Generation.
    pub generation_id: i32,
    /// Leader's member id.
    pub leader_id: String,
    /// Members.
    pub members: Vec<MemberDescription>,
}

/// A group in `list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    /// Group.
    pub group_id: String,
    /// Protocol type (empty for a group known only by its offsets).
    pub protocol_type: String,
    /// State.
    pub state: GroupState,
    /// Member count.
    pub members: u32,
}

type JoinWaiter = oneshot::Sender<Result<JoinResult, GroupError>>;
type SyncWaiter = oneshot::Sender<Result<Bytes, GroupError>>;

#[derive(Debug)]
struct Member {
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocol_type: String,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_heartbeat: Instant,
    join_order: u64,
    join_waiter: Option<JoinWaiter>,
    sync_waiter: Option<SyncWaiter>,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

#[derive(Debug)]
struct Group {
    state: GroupState,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: HashMap<String, Member>,
    static_members: HashMap<String, String>,
    /// Ids handed out with MemberIdRequired, not yet joined.
    pending_members: HashSet<String>,
    rebalance_deadline: Instant,
    initial_delay_until: Instant,
    next_join_order: u64,
}

impl Group {
    fn new(now: Instant) -> Self {
        Self {
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: HashMap::new(),
            static_members: HashMap::new(),
            pending_members: HashSet::new(),
            rebalance_deadline: now,
            initial_delay_until: now,
            next_join_order: 0,
        }
    }

    fn join_result(&self, member_id: &str) -> JoinResult {
        let protocol = self.protocol.clone().unwrap_or_default();
        let leader = self.leader.clone().unwrap_or_default();
        let members = if leader == member_id {
            let mut v: Vec<_> = self.members.iter().collect();
            v.sort_by_key(|(_, m)| m.join_order);
            v.into_iter()
                .map(|(id, m)| JoinedMember {
                    member_id: id.clone(),
                    group_instance_id: m.instance_id.clone(),
                    metadata: m.metadata_for(&protocol),
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinResult {
            generation_id: self.generation,
            protocol_name: protocol,
            leader_id: leader,
            member_id: member_id.to_owned(),
            members,
        }
    }

    /// Whether every member offers at least one protocol in common with `protocols`.
    fn supports(&self, protocols: &[(String, Bytes)], except: &str) -> bool {
        protocols.iter().any(|(name, _)| {
            self.members
                .iter()
                .filter(|(id, _)| id.as_str() != except)
                .all(|(_, m)| m.protocols.iter().any(|(n, _)| n == name))
        })
    }

    fn prepare_rebalance(&mut self, now: Instant, initial_delay: Duration) {
        for m in self.members.values_mut() {
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.send(Err(GroupError::RebalanceInProgress));
            }
        }
        if self.state != GroupState::PreparingRebalance {
            let was_empty = self.state == GroupState::Empty;
            self.state = GroupState::PreparingRebalance;
            let wait = self
                .members
                .values()
                .map(|m| m.rebalance_timeout)
                .max()
                .unwrap_or_default();
            self.rebalance_deadline = now + wait;
            self.initial_delay_until = if was_empty { now + initial_delay } else { now };
        }
    }

    fn remove_member(&mut self, id: &str, reason: GroupError) {
        if let Some(m) = self.members.remove(id) {
            if let Some(i) = &m.instance_id
                && self.static_members.get(i).is_some_and(|v| v == id)
            {
                self.static_members.remove(i);
            }
            if let Some(w) = m.join_waiter {
                let _ = w.send(Err(reason.clone()));
            }
            if let Some(w) = m.sync_waiter {
                let _ = w.send(Err(reason));
            }
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
    }

    /// Finishes the join phase when every member joined (or at the deadline, dropping the
    /// members that did not).
    fn maybe_complete_join(&mut self, now: Instant, at_deadline: bool) {
        if self.state != GroupState::PreparingRebalance || now < self.initial_delay_until {
            return;
        }
        let all_joined = self.members.values().all(|m| m.join_waiter.is_some());
        if !all_joined && !at_deadline {
            return;
        }
        let absent: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.join_waiter.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in absent {
            tracing::info!(member = %id, "removing member that did not rejoin in time");
            self.remove_member(&id, GroupError::UnknownMemberId(id.clone()));
        }
        self.generation = self.generation.wrapping_add(1).max(1);
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol = None;
            self.protocol_type = None;
            self.leader = None;
            return;
        }
        self.protocol = Some(self.select_protocol());
        self.protocol_type = self
            .members
            .values()
            .next()
            .map(|m| m.protocol_type.clone());
        if self
            .leader
            .as_ref()
            .is_none_or(|l| !self.members.contains_key(l))
        {
            self.leader = self
                .members
                .iter()
                .min_by_key(|(_, m)| m.join_order)
                .map(|(id, _)| id.clone());
        }
        self.state = GroupState::CompletingRebalance;
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let result = self.join_result(&id);
            if let Some(m) = self.members.get_mut(&id) {
                m.assignment = Bytes::new();
                m.last_heartbeat = now;
                if let Some(w) = m.join_waiter.take() {
                    let _ = w.send(Ok(result));
                }
            }
        }
    }

    /// The protocol every member supports that most members prefer.
    fn select_protocol(&self) -> String {
        let mut candidates: Option<BTreeSet<&str>> = None;
        for m in self.members.values() {
            let names: BTreeSet<&str> = m.protocols.iter().map(|(n, _)| n.as_str()).collect();
            candidates = Some(match candidates {
                None => names,
                Some(c) => c.intersection(&names).copied().collect(),
            });
        }
        let candidates = candidates.unwrap_or_default();
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some((n, _)) = m
                .protocols
                .iter()
                .find(|(n, _)| candidates.contains(n.as_str()))
            {
                *votes.entry(n.as_str()).or_default() += 1;
            }
        }
        votes
            .iter()
            .max_by_key(|(name, count)| (**count, std::cmp::Reverse(**name)))
            .map(|(n, _)| (*n).to_owned())
            .unwrap_or_default()
    }

    fn member_mut(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<&mut Member, GroupError> {
        if let Some(i) = instance_id {
            match self.static_members.get(i) {
                Some(owner) if owner != member_id => {
                    return Err(GroupError::FencedInstanceId(i.to_owned()));
                }
                _ => {}
            }
        }
        self.members
            .get_mut(member_id)
            .ok_or_else(|| GroupError::UnknownMemberId(member_id.to_owned()))
    }
}

/// The coordinator: group membership in memory, committed offsets in durable stores.
#[derive(Debug)]
pub struct GroupCoordinator {
    config: GroupConfig,
    groups: Mutex<HashMap<String, Group>>,
    stores: Vec<Arc<Mutex<StateStore<OffsetsState>>>>,
    stopping: std::sync::atomic::AtomicBool,
}

fn check_group_id(group_id: &str) -> Result<(), GroupError> {
    if group_id.is_empty() {
        return Err(GroupError::InvalidGroupId("empty".into()));
    }
    if group_id.len() > GROUP_ID_BYTES_MAX {
        return Err(GroupError::InvalidGroupId(format!(
            "longer than {GROUP_ID_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Partitions a `weir-consumer` assignment gives, or `None` for other protocol types.
fn owned_partitions(
    protocol_type: Option<&str>,
    assignment: &Bytes,
) -> Option<HashSet<(String, u32)>> {
    if protocol_type != Some(WEIR_CONSUMER_PROTOCOL_TYPE) {
        return None;
    }
    let a = weir_proto::v1::ConsumerAssignment::decode(assignment.clone()).ok()?;
    Some(weir_proto::v1::TopicPartitions::flatten(a.partitions).collect())
}

impl GroupCoordinator {
    /// Opens the offset stores under `dir`.
    pub fn open(dir: &Path, config: GroupConfig) -> Result<Self, GroupError> {
        let mut stores = Vec::with_capacity(OFFSETS_PARTITIONS as usize);
        for i in 0..OFFSETS_PARTITIONS {
            let (store, recovery) = StateStore::open(&dir.join(format!("offsets-{i}")))
                .map_err(|e| GroupError::Storage(e.to_string()))?;
            if recovery != Default::default() {
                tracing::warn!(store = i, ?recovery, "recovered committed offsets");
            }
            stores.push(Arc::new(Mutex::new(store)));
        }
        Ok(Self {
            config,
            groups: Mutex::new(HashMap::new()),
            stores,
            stopping: false.into(),
        })
    }

    fn store(&self, group_id: &str) -> Arc<Mutex<StateStore<OffsetsState>>> {
        self.stores[offsets_partition(group_id)].clone()
    }

    /// Joins a member; resolves when the rebalance it takes part in completes.
    pub async fn join_group(&self, req: JoinGroup) -> Result<JoinResult, GroupError> {
        check_group_id(&req.group_id)?;
        let c = &self.config;
        if req.session_timeout_ms < c.session_timeout_ms_min
            || req.session_timeout_ms > c.session_timeout_ms_max
        {
            return Err(GroupError::InvalidSessionTimeout {
                got: req.session_timeout_ms,
                min: c.session_timeout_ms_min,
                max: c.session_timeout_ms_max,
            });
        }
        if req.protocol_type.is_empty() || req.protocols.is_empty() {
            return Err(GroupError::InconsistentGroupProtocol(
                "a protocol type and at least one protocol are required".into(),
            ));
        }
        if req.protocols.len() > GROUP_PROTOCOLS_MAX {
            return Err(GroupError::InvalidRequest(format!(
                "{} protocols exceed {GROUP_PROTOCOLS_MAX}",
                req.protocols.len()
            )));
        }
        if let Some((n, _)) = req
            .protocols
            .iter()
            .find(|(_, m)| m.len() > PROTOCOL_METADATA_BYTES_MAX)
        {
            return Err(GroupError::InvalidRequest(format!(
                "metadata of protocol {n:?} exceeds {PROTOCOL_METADATA_BYTES_MAX} bytes"
            )));
        }
        let id_ok = |s: &str| s.len() <= MEMBER_ID_BYTES_MAX;
        if !id_ok(&req.member_id)
            || !id_ok(&req.client_id)
            || !id_ok(&req.client_host)
            || req
                .group_instance_id
                .as_ref()
                .is_some_and(|i| i.is_empty() || !id_ok(i))
        {
            return Err(GroupError::InvalidRequest(format!(
                "member, client and instance ids must be at most {MEMBER_ID_BYTES_MAX} bytes"
            )));
        }
        if self.stopping.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(GroupError::ShuttingDown);
        }
        let rebalance_timeout = Duration::from_millis(
            req.rebalance_timeout_ms
                .max(req.session_timeout_ms)
                .min(c.rebalance_timeout_ms_max)
                .into(),
        );
        let rx = {
            let mut groups = self.groups.lock();
            let now = Instant::now();
            let g = groups
                .entry(req.group_id.clone())
                .or_insert_with(|| Group::new(now));
            match self.join_locked(g, req, rebalance_timeout, now)? {
                Joined::Now(r) => return Ok(r),
                Joined::Wait(rx) => rx,
            }
        };
        // Bounded: the rebalance deadline completes every join, and shutdown drops waiters.
        match tokio::time::timeout(rebalance_timeout + Duration::from_secs(5), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(GroupError::ShuttingDown),
            Err(_) => Err(GroupError::RebalanceInProgress),
        }
    }

    fn join_locked(
        &self,
        g: &mut Group,
        req: JoinGroup,
        rebalance_timeout: Duration,
        now: Instant,
    ) -> Result<Joined, GroupError> {
        let initial_delay = Duration::from_millis(self.config.initial_rebalance_delay_ms.into());
        if !g.members.is_empty() {
            if g.protocol_type
                .as_deref()
                .is_some_and(|t| t != req.protocol_type)
                || g.members
                    .values()
                    .any(|m| m.protocol_type != req.protocol_type)
            {
                return Err(GroupError::InconsistentGroupProtocol(format!(
                    "the group uses protocol type {:?}",
                    g.protocol_type.clone().unwrap_or_default()
                )));
            }
            if !g.supports(&req.protocols, &req.member_id) {
                return Err(GroupError::InconsistentGroupProtocol(
                    "no protocol in common with the group's members".into(),
                ));
            }
        }
        let (tx, rx) = oneshot::channel();
        let new_member = |g: &mut Group| Member {
            instance_id: req.group_instance_id.clone(),
            client_id: req.client_id.clone(),
            client_host: req.client_host.clone(),
            session_timeout: Duration::from_millis(req.session_timeout_ms.into()),
            rebalance_timeout,
            protocol_type: req.protocol_type.clone(),
            protocols: req.protocols.clone(),
            assignment: Bytes::new(),
            last_heartbeat: now,
            join_order: {
                g.next_join_order += 1;
                g.next_join_order
            },
            join_waiter: None,
            sync_waiter: None,
        };

        let known_static = req
            .group_instance_id
            .as_ref()
            .and_then(|i| g.static_members.get(i).cloned());
        let member_id = if req.member_id.is_empty() {
            if let Some(old_id) = known_static {
                // A static member back (e.g. after a restart): it takes over its old
                // entry and assignment under a new id; the old id is fenced.
                let new_id = format!("{}-{}", req.client_id, uuid::Uuid::new_v4());
                let Some(mut m) = g.members.remove(&old_id) else {
                    return Err(GroupError::UnknownMemberId(old_id));
                };
                if let Some(w) = m.join_waiter.take() {
                    let _ = w.send(Err(GroupError::FencedInstanceId(
                        req.group_instance_id.clone().unwrap_or_default(),
                    )));
                }
                if let Some(w) = m.sync_waiter.take() {
                    let _ = w.send(Err(GroupError::FencedInstanceId(
                        req.group_instance_id.clone().unwrap_or_default(),
                    )));
                }
                let unchanged = m.protocols == req.protocols;
                m.protocols = req.protocols.clone();
                m.session_timeout = Duration::from_millis(req.session_timeout_ms.into());
                m.rebalance_timeout = rebalance_timeout;
                m.client_id = req.client_id.clone();
                m.client_host = req.client_host.clone();
                m.last_heartbeat = now;
                if let Some(i) = &req.group_instance_id {
                    g.static_members.insert(i.clone(), new_id.clone());
                }
                let was_leader = g.leader.as_deref() == Some(old_id.as_str());
                if was_leader {
                    g.leader = Some(new_id.clone());
                }
                g.members.insert(new_id.clone(), m);
                if g.state == GroupState::Stable && unchanged && !was_leader {
                    tracing::info!(group = %req.group_id, member = %new_id, "static member rejoined without a rebalance");
                    return Ok(Joined::Now(g.join_result(&new_id)));
                }
                new_id
            } else {
                if g.members.len() >= self.config.group_members_max as usize {
                    return Err(GroupError::GroupMaxSizeReached(
                        self.config.group_members_max,
                    ));
                }
                let id = format!("{}-{}", req.client_id, uuid::Uuid::new_v4());
                if req.require_known_member_id && req.group_instance_id.is_none() {
                    g.pending_members.insert(id.clone());
                    return Err(GroupError::MemberIdRequired(id));
                }
                let m = new_member(g);
                if let Some(i) = &req.group_instance_id {
                    g.static_members.insert(i.clone(), id.clone());
                }
                g.members.insert(id.clone(), m);
                id
            }
        } else if g.pending_members.remove(&req.member_id) {
            if g.members.len() >= self.config.group_members_max as usize {
                return Err(GroupError::GroupMaxSizeReached(
                    self.config.group_members_max,
                ));
            }
            let m = new_member(g);
            g.members.insert(req.member_id.clone(), m);
            req.member_id.clone()
        } else {
            let state = g.state;
            let is_leader = g.leader.as_deref() == Some(req.member_id.as_str());
            let m = g.member_mut(&req.member_id, req.group_instance_id.as_deref())?;
            let unchanged = m.protocols == req.protocols;
            m.protocols = req.protocols.clone();
            m.session_timeout = Duration::from_millis(req.session_timeout_ms.into());
            m.rebalance_timeout = rebalance_timeout;
            m.last_heartbeat = now;
            let answer_now = match state {
                GroupState::CompletingRebalance => unchanged,
                GroupState::Stable => unchanged && !is_leader,
                GroupState::PreparingRebalance | GroupState::Empty => false,
            };
            if answer_now {
                return Ok(Joined::Now(g.join_result(&req.member_id)));
            }
            req.member_id.clone()
        };
        if let Some(m) = g.members.get_mut(&member_id)
            && let Some(old) = m.join_waiter.replace(tx)
        {
            let _ = old.send(Err(GroupError::UnknownMemberId(member_id.clone())));
        }
        g.prepare_rebalance(now, initial_delay);
        g.maybe_complete_join(now, false);
        Ok(Joined::Wait(rx))
    }

    /// Hands out the assignment: the leader's request carries everyone's; every member's
    /// resolves with its own once the leader's arrived.
    pub async fn sync_group(
        &self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        group_instance_id: Option<&str>,
        assignments: Vec<(String, Bytes)>,
    ) -> Result<Bytes, GroupError> {
        check_group_id(group_id)?;
        if assignments
            .iter()
            .any(|(_, a)| a.len() > PROTOCOL_METADATA_BYTES_MAX)
        {
            return Err(GroupError::InvalidRequest(format!(
                "an assignment exceeds {PROTOCOL_METADATA_BYTES_MAX} bytes"
            )));
        }
        let rx = {
            let mut groups = self.groups.lock();
            let g = groups
                .get_mut(group_id)
                .ok_or_else(|| GroupError::UnknownMemberId(member_id.to_owned()))?;
            g.member_mut(member_id, group_instance_id)?;
            if generation_id != g.generation {
                return Err(GroupError::IllegalGeneration {
                    current: g.generation,
                    got: generation_id,
                });
            }
            match g.state {
                GroupState::Empty => {
                    return Err(GroupError::UnknownMemberId(member_id.to_owned()));
                }
                GroupState::PreparingRebalance => return Err(GroupError::RebalanceInProgress),
                GroupState::Stable => {
                    return Ok(g
                        .member_mut(member_id, group_instance_id)?
                        .assignment
                        .clone());
                }
                GroupState::CompletingRebalance => {}
            }
            let (tx, rx) = oneshot::channel();
            if g.leader.as_deref() == Some(member_id) {
                if g.protocol_type.as_deref() == Some(WEIR_CONSUMER_PROTOCOL_TYPE) {
                    for (id, a) in &assignments {
                        if weir_proto::v1::ConsumerAssignment::decode(a.clone()).is_err() {
                            return Err(GroupError::InvalidRequest(format!(
                                "assignment for {id:?} is not a ConsumerAssignment"
                            )));
                        }
                    }
                }
                let mut by_member: HashMap<String, Bytes> = assignments.into_iter().collect();
                for (id, m) in g.members.iter_mut() {
                    m.assignment = by_member.remove(id).unwrap_or_default();
                }
                g.state = GroupState::Stable;
                let _ = tx.send(Ok(Bytes::new()));
                for m in g.members.values_mut() {
                    if let Some(w) = m.sync_waiter.take() {
                        let _ = w.send(Ok(m.assignment.clone()));
                    }
                }
                return Ok(g
                    .member_mut(member_id, group_instance_id)?
                    .assignment
                    .clone());
            }
            let m = g.member_mut(member_id, group_instance_id)?;
            if let Some(old) = m.sync_waiter.replace(tx) {
                let _ = old.send(Err(GroupError::RebalanceInProgress));
            }
            rx
        };
        let wait = Duration::from_millis(self.config.rebalance_timeout_ms_max.into());
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(GroupError::ShuttingDown),
            Err(_) => Err(GroupError::RebalanceInProgress),
        }
    }

    /// Keeps a member alive. `RebalanceInProgress` tells it to join again.
    pub fn heartbeat(
        &self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        group_instance_id: Option<&str>,
    ) -> Result<(), GroupError> {
        check_group_id(group_id)?;
        let mut groups = self.groups.lock();
        let g = groups
            .get_mut(group_id)
            .ok_or_else(|| GroupError::UnknownMemberId(member_id.to_owned()))?;
        let state = g.state;
        let generation = g.generation;
        let m = g.member_mut(member_id, group_instance_id)?;
        m.last_heartbeat = Instant::now();
        match state {
            GroupState::PreparingRebalance => Err(GroupError::RebalanceInProgress),
            _ if generation_id != generation => Err(GroupError::IllegalGeneration {
                current: generation,
                got: generation_id,
            }),
            _ => Ok(()),
        }
    }

    /// Removes members at once (by member id, or by instance id for static members).
    pub fn leave_group(
        &self,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> Result<(), GroupError> {
        check_group_id(group_id)?;
        let mut groups = self.groups.lock();
        let g = groups
            .get_mut(group_id)
            .ok_or_else(|| GroupError::GroupNotFound(group_id.to_owned()))?;
        let now = Instant::now();
        for (member_id, instance_id) in members {
            let id = match instance_id {
                Some(i) => match g.static_members.get(i) {
                    Some(owner) if member_id.is_empty() || owner == member_id => owner.clone(),
                    Some(_) => return Err(GroupError::FencedInstanceId(i.clone())),
                    None => return Err(GroupError::UnknownMemberId(member_id.clone())),
                },
                None => member_id.clone(),
            };
            if !g.members.contains_key(&id) {
                return Err(GroupError::UnknownMemberId(id));
            }
            tracing::info!(group = group_id, member = %id, "member left");
            g.remove_member(&id, GroupError::UnknownMemberId(id.clone()));
        }
        let initial_delay = Duration::from_millis(self.config.initial_rebalance_delay_ms.into());
        g.prepare_rebalance(now, initial_delay);
        g.initial_delay_until = now;
        g.maybe_complete_join(now, false);
        Ok(())
    }

    /// Expires silent members and finishes rebalances whose deadline passed. Called
    /// periodically by the broker.
    pub fn tick(&self) {
        let now = Instant::now();
        let initial_delay = Duration::from_millis(self.config.initial_rebalance_delay_ms.into());
        let mut groups = self.groups.lock();
        for (gid, g) in groups.iter_mut() {
            let expired: Vec<String> = g
                .members
                .iter()
                .filter(|(_, m)| {
                    m.join_waiter.is_none()
                        && now.duration_since(m.last_heartbeat) > m.session_timeout
                })
                .map(|(id, _)| id.clone())
                .collect();
            if !expired.is_empty() {
                for id in &expired {
                    tracing::info!(group = %gid, member = %id, "member session expired");
                    g.remove_member(id, GroupError::UnknownMemberId(id.clone()));
                }
                g.prepare_rebalance(now, initial_delay);
            }
            if g.state == GroupState::PreparingRebalance {
                let at_deadline = now >= g.rebalance_deadline;
                g.maybe_complete_join(now, at_deadline);
            }
        }
        // Groups with neither members nor pending work are forgotten; their offsets stay.
        groups.retain(|_, g| {
            !(g.state == GroupState::Empty && g.members.is_empty() && g.pending_members.is_empty())
        });
    }

    /// Refuses new joins and releases every waiting join and sync.
    pub fn shutdown(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let mut groups = self.groups.lock();
        for g in groups.values_mut() {
            for m in g.members.values_mut() {
                if let Some(w) = m.join_waiter.take() {
                    let _ = w.send(Err(GroupError::ShuttingDown));
                }
                if let Some(w) = m.sync_waiter.take() {
                    let _ = w.send(Err(GroupError::ShuttingDown));
                }
            }
        }
    }

    /// Commits offsets. `partition_error` tells whether a partition exists. Returns one
    /// result per partition; the whole call fails only for group-level errors.
    pub async fn commit_offsets(
        &self,
        req: CommitOffsets,
        partition_error: impl Fn(&str, u32) -> Option<GroupError>,
    ) -> Result<Vec<PartitionResult>, GroupError> {
        check_group_id(&req.group_id)?;
        if req.offsets.len() > COMMIT_PARTITIONS_MAX {
            return Err(GroupError::InvalidRequest(format!(
                "{} partitions exceed {COMMIT_PARTITIONS_MAX}",
                req.offsets.len()
            )));
        }
        let owned = {
            let mut groups = self.groups.lock();
            match groups.get_mut(&req.group_id) {
                None => {
                    if req.generation_id >= 0 || !req.member_id.is_empty() {
                        return Err(GroupError::UnknownMemberId(req.member_id.clone()));
                    }
                    None
                }
                Some(g) if req.generation_id < 0 && req.member_id.is_empty() => {
                    if !g.members.is_empty() {
                        return Err(GroupError::NonEmptyGroup);
                    }
                    None
                }
                Some(g) => {
                    let state = g.state;
                    let generation = g.generation;
                    let protocol_type = g.protocol_type.clone();
                    let m = g.member_mut(&req.member_id, req.group_instance_id.as_deref())?;
                    if req.generation_id != generation {
                        return Err(GroupError::IllegalGeneration {
                            current: generation,
                            got: req.generation_id,
                        });
                    }
                    if state == GroupState::CompletingRebalance {
                        return Err(GroupError::RebalanceInProgress);
                    }
                    m.last_heartbeat = Instant::now();
                    owned_partitions(protocol_type.as_deref(), &m.assignment)
                }
            }
        };
        self.store_offsets(&req.group_id, req.offsets, owned.as_ref(), partition_error)
            .await
    }

    async fn store_offsets(
        &self,
        group_id: &str,
        offsets: Vec<(String, u32, i64, String)>,
        owned: Option<&HashSet<(String, u32)>>,
        partition_error: impl Fn(&str, u32) -> Option<GroupError>,
    ) -> Result<Vec<PartitionResult>, GroupError> {
        let mut results = Vec::with_capacity(offsets.len());
        let mut valid = Vec::new();
        for (topic, partition, offset, metadata) in offsets {
            let check = if metadata.len() > OFFSET_METADATA_BYTES_MAX {
                Err(GroupError::OffsetMetadataTooLarge {
                    len: metadata.len(),
                    max: OFFSET_METADATA_BYTES_MAX,
                })
            } else if offset < -1 {
                Err(GroupError::InvalidRequest(format!(
                    "offset {offset} is negative"
                )))
            } else if let Some(e) = partition_error(&topic, partition) {
                Err(e)
            } else if owned.is_some_and(|o| !o.contains(&(topic.clone(), partition))) {
                Err(GroupError::PartitionNotOwned {
                    topic: topic.clone(),
                    partition,
                })
            } else {
                Ok(())
            };
            if check.is_ok() {
                valid.push((topic.clone(), partition, offset, metadata));
            }
            results.push((topic, partition, check));
        }
        if !valid.is_empty() {
            let store = self.store(group_id);
            let cmd = OffsetsCommand::Commit {
                group: group_id.to_owned(),
                offsets: valid,
                commit_ms: now_ms(),
            };
            tokio::task::spawn_blocking(move || store.lock().submit(cmd).map(|_| ()))
                .await
                .map_err(|e| GroupError::Storage(e.to_string()))?
                .map_err(|e| GroupError::Storage(e.to_string()))?;
        }
        Ok(results)
    }

    /// Committed offsets of a group: the given partitions, or all it has.
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        partitions: Option<&[(String, u32)]>,
    ) -> Result<Vec<(String, u32, Option<Committed>)>, GroupError> {
        check_group_id(group_id)?;
        let store = self.store(group_id);
        let store = store.lock();
        let group = store.state().groups.get(group_id);
        let get = |t: &str, p: u32| {
            group
                .and_then(|g| g.get(t))
                .and_then(|ps| ps.get(&p))
                .cloned()
        };
        Ok(match partitions {
            Some(list) => list
                .iter()
                .map(|(t, p)| (t.clone(), *p, get(t, *p)))
                .collect(),
            None => group
                .into_iter()
                .flat_map(|g| {
                    g.iter().flat_map(|(t, ps)| {
                        ps.iter()
                            .map(move |(p, c)| (t.clone(), *p, Some(c.clone())))
                    })
                })
                .collect(),
        })
    }

    /// Sets a group's committed offsets from outside (admin); refused while it has members.
    pub async fn reset_offsets(
        &self,
        group_id: &str,
        offsets: Vec<(String, u32, i64, String)>,
        partition_error: impl Fn(&str, u32) -> Option<GroupError>,
    ) -> Result<Vec<PartitionResult>, GroupError> {
        check_group_id(group_id)?;
        if self.has_members(group_id) {
            return Err(GroupError::NonEmptyGroup);
        }
        self.store_offsets(group_id, offsets, None, partition_error)
            .await
    }

    fn has_members(&self, group_id: &str) -> bool {
        self.groups
            .lock()
            .get(group_id)
            .is_some_and(|g| !g.members.is_empty())
    }

    /// Forgets a group's committed offsets; refused while it has members.
    pub async fn delete_group(&self, group_id: &str) -> Result<(), GroupError> {
        check_group_id(group_id)?;
        if self.has_members(group_id) {
            return Err(GroupError::NonEmptyGroup);
        }
        let store = self.store(group_id);
        let group = group_id.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut s = store.lock();
            if !s.state().groups.contains_key(&group) {
                return Err(GroupError::GroupNotFound(group));
            }
            s.submit(OffsetsCommand::DeleteGroup { group })
                .map(|_| ())
                .map_err(|e| GroupError::Storage(e.to_string()))
        })
        .await
        .map_err(|e| GroupError::Storage(e.to_string()))?
    }

    /// Forgets every group's offsets in a deleted topic.
    pub fn purge_topic(&self, topic: &str) -> Result<(), GroupError> {
        for store in &self.stores {
            let mut s = store.lock();
            if s.state().groups.values().any(|g| g.contains_key(topic)) {
                s.submit(OffsetsCommand::DeleteTopic {
                    topic: topic.to_owned(),
                })
                .map_err(|e| GroupError::Storage(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Every group with members or committed offsets, sorted by id.
    pub fn list_groups(&self) -> Vec<GroupSummary> {
        let mut out: BTreeMap<String, GroupSummary> = BTreeMap::new();
        for store in &self.stores {
            for gid in store.lock().state().groups.keys() {
                out.insert(
                    gid.clone(),
                    GroupSummary {
                        group_id: gid.clone(),
                        protocol_type: String::new(),
                        state: GroupState::Empty,
                        members: 0,
                    },
                );
            }
        }
        for (gid, g) in self.groups.lock().iter() {
            out.insert(
                gid.clone(),
                GroupSummary {
                    group_id: gid.clone(),
                    protocol_type: g.protocol_type.clone().unwrap_or_default(),
                    state: g.state,
                    members: g.members.len() as u32,
                },
            );
        }
        out.into_values().collect()
    }

    /// One group's state and members.
    pub fn describe_group(&self, group_id: &str) -> Result<GroupDescription, GroupError> {
        check_group_id(group_id)?;
        if let Some(g) = self.groups.lock().get(group_id) {
            let protocol = g.protocol.clone().unwrap_or_default();
            let mut members: Vec<_> = g.members.iter().collect();
            members.sort_by_key(|(_, m)| m.join_order);
            return Ok(GroupDescription {
                group_id: group_id.to_owned(),
                state: g.state,
                protocol_type: g.protocol_type.clone().unwrap_or_default(),
                protocol: protocol.clone(),
                generation_id: g.generation,
                leader_id: g.leader.clone().unwrap_or_default(),
                members: members
                    .into_iter()
                    .map(|(id, m)| MemberDescription {
                        member_id: id.clone(),
                        group_instance_id: m.instance_id.clone(),
                        client_id: m.client_id.clone(),
                        client_host: m.client_host.clone(),
                        metadata: m.metadata_for(&protocol),
                        assignment: m.assignment.clone(),
                    })
                    .collect(),
            });
        }
        if self
            .store(group_id)
            .lock()
            .state()
            .groups
            .contains_key(group_id)
        {
            return Ok(GroupDescription {
                group_id: group_id.to_owned(),
                state: GroupState::Empty,
                protocol_type: String::new(),
                protocol: String::new(),
                generation_id: 0,
                leader_id: String::new(),
                members: Vec::new(),
            });
        }
        Err(GroupError::GroupNotFound(group_id.to_owned()))
    }
}

enum Joined {
    Now(JoinResult),
    Wait(oneshot::Receiver<Result<JoinResult, GroupError>>),
}
