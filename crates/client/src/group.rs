//! [`GroupConsumer`]: consumer groups (partitions shared among the members, rebalanced as
//! members come and go, positions committed on the broker) and broadcast consumption
//! (every member reads everything, positions kept per member).
//!
//! Clustering mode follows Kafka's group protocol: the member joins, the leader assigns
//! with a [`Strategy`], everyone syncs, a background task heartbeats. With the default
//! cooperative sticky strategy a rebalance revokes only the partitions that move: the
//! others keep being consumed while it runs. Delivery is at least once by default: the
//! positions committed are those of records already returned by `poll`, which the
//! application processed before it polled again; [`Delivery::AtMostOnce`] commits before
//! returning records instead.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use prost::Message;
use tokio_util::sync::CancellationToken;
use weir_proto::{Request, Response, v1};

use crate::assignor::{MemberSubscription, Strategy, TopicPartition, assign};
use crate::client::Client;
use crate::config::ConsumerConfig;
use crate::conn::unexpected;
use crate::consumer::{Consumer, SeekTo};
use crate::error::{ClientError, Result, check};
use crate::record::ConsumerRecord;

/// Protocol type of Weir consumers (the coordinator reads their assignments).
pub const PROTOCOL_TYPE: &str = "weir-consumer";
/// Longest a poll waits on the server before it checks for a rebalance.
const POLL_SLICE: Duration = Duration::from_millis(500);

/// When positions are committed relative to handing records out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delivery {
    /// Commit after processing (positions of records already returned): a crash may
    /// deliver the uncommitted window again, nothing is skipped.
    #[default]
    AtLeastOnce,
    /// Commit before returning records: a crash may skip them, nothing is delivered twice.
    AtMostOnce,
}

/// Where a partition with no committed position starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// The oldest retained record (consume history).
    Earliest,
    /// Only records produced from now on.
    #[default]
    Latest,
    /// This offset.
    Offset(i64),
    /// The first record at or after this time (ms since the epoch).
    Timestamp(i64),
}

/// Where a broadcast member keeps its positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffsetStore {
    /// On the broker, under the group id `"<group>@<member>"`.
    Broker,
    /// In a local JSON file the application chooses (written atomically).
    LocalFile(PathBuf),
}

/// Clustering (partitions shared) or broadcast (everyone reads everything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupMode {
    /// Partitions are divided among the members.
    Clustering,
    /// Every member reads every partition; `member` names this one.
    Broadcast {
        /// Stable name of this member.
        member: String,
        /// Where its positions live.
        offsets: OffsetStore,
    },
}

/// Settings of a [`GroupConsumer`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GroupConfig {
    /// Group id.
    pub group_id: String,
    /// Clustering or broadcast.
    pub mode: GroupMode,
    /// Static membership: a stable id so a restart within the session timeout gets the
    /// same partitions back without a rebalance.
    pub group_instance_id: Option<String>,
    /// The member is removed after this long without a heartbeat.
    pub session_timeout_ms: u32,
    /// How long a rebalance waits for this member.
    pub rebalance_timeout_ms: u32,
    /// Between heartbeats (well under the session timeout).
    pub heartbeat_interval_ms: u32,
    /// Strategies offered, preferred first; all members must share one.
    pub strategies: Vec<Strategy>,
    /// Commit positions periodically from `poll`.
    pub auto_commit: bool,
    /// Period of automatic commits.
    pub auto_commit_interval_ms: u32,
    /// Commit before or after handing records out.
    pub delivery: Delivery,
    /// Where partitions without a committed position start.
    pub start_from: StartFrom,
    /// Fetch settings.
    pub consumer: ConsumerConfig,
}

impl GroupConfig {
    /// Defaults for `group_id`: clustering, cooperative sticky, auto-commit every 5 s,
    /// at least once, new partitions from the latest offset.
    pub fn new(group_id: impl Into<String>) -> Self {
        Self {
            group_id: group_id.into(),
            mode: GroupMode::Clustering,
            group_instance_id: None,
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            heartbeat_interval_ms: 1_000,
            strategies: vec![Strategy::CooperativeSticky],
            auto_commit: true,
            auto_commit_interval_ms: 5_000,
            delivery: Delivery::AtLeastOnce,
            start_from: StartFrom::Latest,
            consumer: ConsumerConfig::default(),
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ClientError::InvalidArgument(m));
        if self.group_id.is_empty() || self.group_id.len() > 255 {
            return bad("group id must be 1 to 255 bytes".into());
        }
        if self.strategies.is_empty() {
            return bad("at least one assignment strategy is required".into());
        }
        if self.heartbeat_interval_ms == 0
            || u64::from(self.heartbeat_interval_ms) * 3 > u64::from(self.session_timeout_ms)
        {
            return bad(format!(
                "heartbeat_interval_ms ({}) must be positive and at most a third of session_timeout_ms ({})",
                self.heartbeat_interval_ms, self.session_timeout_ms
            ));
        }
        if self.auto_commit_interval_ms == 0 {
            return bad("auto_commit_interval_ms must be positive".into());
        }
        if let GroupMode::Broadcast { member, .. } = &self.mode
            && (member.is_empty() || member.len() > 128)
        {
            return bad("a broadcast member name must be 1 to 128 bytes".into());
        }
        Ok(())
    }
}

/// Told about partitions before they go and after they come.
pub trait RebalanceListener: Send {
    /// About to stop consuming these (their positions were just committed, if the
    /// consumer commits at all).
    fn on_revoked(&mut self, partitions: &[TopicPartition]);
    /// Now consuming these.
    fn on_assigned(&mut self, partitions: &[TopicPartition]);
}

/// Membership shared with the heartbeat task.
#[derive(Debug, Default)]
struct Membership {
    member_id: String,
    generation: i32,
}

#[derive(Debug)]
struct Shared {
    membership: Mutex<Membership>,
    rejoin: AtomicBool,
    fatal: Mutex<Option<ClientError>>,
}

/// A member of a consumer group. Not shared: methods take `&mut self`.
pub struct GroupConsumer {
    client: Client,
    config: GroupConfig,
    topics: Vec<String>,
    inner: Consumer,
    owned: BTreeSet<TopicPartition>,
    shared: Arc<Shared>,
    heartbeat_stop: CancellationToken,
    last_commit: Instant,
    joined: bool,
    /// A JoinGroup/SyncGroup round in flight.
    pending: Option<tokio::task::JoinHandle<Result<BTreeSet<TopicPartition>>>>,
    listener: Option<Box<dyn RebalanceListener>>,
}

impl std::fmt::Debug for GroupConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupConsumer")
            .field("group_id", &self.config.group_id)
            .field("topics", &self.topics)
            .field("owned", &self.owned)
            .finish_non_exhaustive()
    }
}

macro_rules! call {
    ($client:expr, $kind:ident, $req:expr) => {{
        let req = Request::$kind($req);
        match $client.request(&req, $client.request_timeout()).await? {
            Response::$kind(r) => r,
            other => return Err(unexpected(stringify!($kind), &other)),
        }
    }};
}

fn code(status: Option<&v1::Status>) -> v1::ErrorCode {
    status.map_or(v1::ErrorCode::None, v1::Status::error_code)
}

impl GroupConsumer {
    pub(crate) fn new(client: Client, config: GroupConfig, topics: Vec<String>) -> Result<Self> {
        config.validate()?;
        if topics.is_empty() {
            return Err(ClientError::InvalidArgument(
                "subscribe to at least one topic".into(),
            ));
        }
        let inner = client.consumer(config.consumer.clone())?;
        Ok(Self {
            client,
            config,
            topics,
            inner,
            owned: BTreeSet::new(),
            shared: Arc::new(Shared {
                membership: Mutex::new(Membership {
                    member_id: String::new(),
                    generation: -1,
                }),
                rejoin: AtomicBool::new(true),
                fatal: Mutex::new(None),
            }),
            heartbeat_stop: CancellationToken::new(),
            last_commit: Instant::now(),
            joined: false,
            pending: None,
            listener: None,
        })
    }

    /// Installs a listener for partitions revoked and assigned.
    pub fn set_rebalance_listener(&mut self, listener: Box<dyn RebalanceListener>) {
        self.listener = Some(listener);
    }

    /// Partitions this member consumes now.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.owned.iter().cloned().collect()
    }

    /// This member's id and generation (clustering mode; empty before the first join).
    pub fn membership(&self) -> (String, i32) {
        let m = self.shared.membership.lock();
        (m.member_id.clone(), m.generation)
    }

    fn group_for_offsets(&self) -> String {
        match &self.config.mode {
            GroupMode::Broadcast { member, .. } => format!("{}@{member}", self.config.group_id),
            GroupMode::Clustering => self.config.group_id.clone(),
        }
    }

    /// Waits up to `timeout` for records of the partitions this member owns, joining or
    /// rebalancing first when needed.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.shared.fatal.lock().clone() {
                return Err(e);
            }
            if !self.joined || self.shared.rejoin.load(Ordering::Relaxed) {
                self.rejoin().await?;
            }
            self.await_join(Duration::ZERO).await?;
            let commit_due = self.last_commit.elapsed()
                >= Duration::from_millis(self.config.auto_commit_interval_ms.into());
            if self.config.auto_commit
                && self.config.delivery == Delivery::AtLeastOnce
                && self.pending.is_none()
                && commit_due
                && let Err(e) = self.commit().await
            {
                tracing::warn!(error = %e, "automatic commit failed");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let slice = left.min(POLL_SLICE);
            let records = if self.owned.is_empty() {
                if self.pending.is_some() {
                    self.await_join(slice).await?;
                } else {
                    tokio::time::sleep(slice).await;
                }
                Vec::new()
            } else {
                self.inner.poll(slice).await?
            };
            if !records.is_empty() {
                if self.config.delivery == Delivery::AtMostOnce {
                    self.commit().await?;
                }
                return Ok(records);
            }
            if Instant::now() >= deadline {
                return Ok(Vec::new());
            }
        }
    }

    /// Push mode: calls `handler` with each batch of records; the next fetch waits for it.
    /// Ends when `cancel` fires (committing, then leaving the group) or on a handler error.
    pub async fn run<F, Fut, E>(&mut self, cancel: CancellationToken, mut handler: F) -> Result<()>
    where
        F: FnMut(Vec<ConsumerRecord>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<(), E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        loop {
            let records = tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                r = self.poll(Duration::from_secs(5)) => r?,
            };
            if records.is_empty() {
                continue;
            }
            if let Err(e) = handler(records).await {
                let e: Box<dyn std::error::Error + Send + Sync> = e.into();
                return Err(ClientError::Handler(Arc::from(e)));
            }
        }
        self.close().await
    }

    /// Positions of owned partitions (the next offset to consume).
    fn positions(&self) -> Vec<(String, u32, i64)> {
        self.owned
            .iter()
            .filter_map(|(t, p)| Some((t.clone(), *p, self.inner.position(t, *p)?)))
            .collect()
    }

    /// Commits the positions of every owned partition and waits for the broker (or the
    /// local file) to have them.
    pub async fn commit(&mut self) -> Result<()> {
        let positions = self.positions();
        self.last_commit = Instant::now();
        if positions.is_empty() {
            return Ok(());
        }
        commit_positions(
            &self.client,
            &self.config,
            &self.group_for_offsets(),
            &self.shared,
            positions,
        )
        .await
    }

    /// Starts a commit of the current positions and returns at once; the handle resolves
    /// with its outcome.
    pub fn commit_async(&mut self) -> tokio::task::JoinHandle<Result<()>> {
        let (client, config, shared) = (
            self.client.clone(),
            self.config.clone(),
            self.shared.clone(),
        );
        let group = self.group_for_offsets();
        let positions = self.positions();
        self.last_commit = Instant::now();
        tokio::spawn(async move {
            if positions.is_empty() {
                return Ok(());
            }
            commit_positions(&client, &config, &group, &shared, positions).await
        })
    }

    /// Commits (when auto-commit is on), leaves the group (dynamic members) and stops
    /// heartbeating.
    pub async fn close(&mut self) -> Result<()> {
        if self.config.auto_commit
            && self.joined
            && let Err(e) = self.commit().await
        {
            tracing::warn!(error = %e, "commit at close failed");
        }
        self.heartbeat_stop.cancel();
        if let Some(p) = self.pending.take() {
            p.abort();
        }
        let member_id = self.shared.membership.lock().member_id.clone();
        if self.config.mode == GroupMode::Clustering
            && self.config.group_instance_id.is_none()
            && !member_id.is_empty()
        {
            let r = call!(
                self.client,
                LeaveGroup,
                v1::LeaveGroupRequest {
                    group_id: self.config.group_id.clone(),
                    members: vec![v1::LeavingMember {
                        member_id,
                        group_instance_id: String::new(),
                    }],
                }
            );
            check(r.status.as_ref())?;
        }
        self.joined = false;
        Ok(())
    }

    /// Makes progress on membership: broadcast members take every partition at once;
    /// clustering members start a join, or apply the one that finished.
    async fn rejoin(&mut self) -> Result<()> {
        if let GroupMode::Broadcast { .. } = self.config.mode {
            return self.join_broadcast().await;
        }
        if self.pending.is_none() {
            self.start_join().await;
        }
        Ok(())
    }

    /// Waits up to `wait` for a pending join and applies it if it finished.
    async fn await_join(&mut self, wait: Duration) -> Result<()> {
        let Some(handle) = self.pending.as_mut() else {
            return Ok(());
        };
        let Ok(joined) = tokio::time::timeout(wait, handle).await else {
            return Ok(());
        };
        self.pending = None;
        let assigned = joined.map_err(|e| ClientError::Protocol(format!("join task: {e}")))??;
        self.finish_join(assigned).await
    }

    async fn join_broadcast(&mut self) -> Result<()> {
        let mut all = BTreeSet::new();
        for t in &self.topics {
            let n = self.client.partition_count(t).await?;
            all.extend((0..n).map(|p| (t.clone(), p)));
        }
        let added: Vec<TopicPartition> = all.difference(&self.owned).cloned().collect();
        self.take_partitions(&added).await?;
        self.shared.rejoin.store(false, Ordering::Relaxed);
        self.joined = true;
        Ok(())
    }

    /// Gives up the partitions in `revoked`: commit (if this consumer commits), tell the
    /// listener, stop fetching them.
    fn drop_partitions(&mut self, revoked: &[TopicPartition]) {
        if revoked.is_empty() {
            return;
        }
        if let Some(l) = self.listener.as_mut() {
            l.on_revoked(revoked);
        }
        for (t, p) in revoked {
            self.inner.unassign_partition(t, *p);
            self.owned.remove(&(t.clone(), *p));
        }
    }

    /// Starts consuming `added`: from the committed position, else per `start_from`.
    async fn take_partitions(&mut self, added: &[TopicPartition]) -> Result<()> {
        if added.is_empty() {
            return Ok(());
        }
        let committed =
            fetch_committed(&self.client, &self.config, &self.group_for_offsets(), added).await?;
        for tp in added {
            self.inner.assign(&tp.0, &[tp.1]).await?;
            let to = match committed.get(tp) {
                Some(&o) if o >= 0 => SeekTo::Offset(o),
                _ => match self.config.start_from {
                    StartFrom::Earliest => SeekTo::Beginning,
                    StartFrom::Latest => SeekTo::End,
                    StartFrom::Offset(o) => SeekTo::Offset(o),
                    StartFrom::Timestamp(ts) => SeekTo::Timestamp(ts),
                },
            };
            self.inner.seek(&tp.0, tp.1, to).await?;
            self.owned.insert(tp.clone());
        }
        if let Some(l) = self.listener.as_mut() {
            l.on_assigned(added);
        }
        Ok(())
    }

    /// Starts a join in the background: commit what we own (while still in the old
    /// generation), give everything up first for eager strategies, then JoinGroup and
    /// SyncGroup in a task, so `poll` keeps its timeout and, with a cooperative strategy,
    /// keeps consuming the partitions it owns while the rebalance runs.
    async fn start_join(&mut self) {
        let cooperative = self.config.strategies.iter().all(|s| s.is_cooperative());
        // Some of what we own may be revoked by this rebalance, and a revoked partition
        // can no longer be committed.
        if self.joined
            && !self.owned.is_empty()
            && self.config.auto_commit
            && let Err(e) = self.commit().await
        {
            tracing::debug!(error = %e, "commit before rejoining failed");
        }
        if !cooperative {
            let all: Vec<_> = self.owned.iter().cloned().collect();
            self.drop_partitions(&all);
        }
        self.shared.rejoin.store(false, Ordering::Relaxed);
        let owned: Vec<TopicPartition> = self.owned.iter().cloned().collect();
        self.pending = Some(tokio::spawn(join_and_sync(
            self.client.clone(),
            self.config.clone(),
            self.topics.clone(),
            owned,
            self.shared.clone(),
        )));
    }

    /// Applies a finished join: revoke what is no longer ours, take what is new.
    async fn finish_join(&mut self, assigned: BTreeSet<TopicPartition>) -> Result<()> {
        // Heartbeats answered while the join ran said "rebalancing": that was this one. A
        // newer rebalance shows up in the next heartbeat.
        self.shared.rejoin.store(false, Ordering::Relaxed);
        let cooperative = self.config.strategies.iter().all(|s| s.is_cooperative());
        let revoked: Vec<_> = self.owned.difference(&assigned).cloned().collect();
        let added: Vec<_> = assigned.difference(&self.owned).cloned().collect();
        self.drop_partitions(&revoked);
        self.take_partitions(&added).await?;
        self.start_heartbeat();
        self.joined = true;
        let generation = self.shared.membership.lock().generation;
        tracing::info!(
            group = %self.config.group_id,
            generation,
            owned = self.owned.len(),
            revoked = revoked.len(),
            added = added.len(),
            "joined group"
        );
        // Cooperative: what we gave up goes to its new owner in one more round.
        if cooperative && !revoked.is_empty() {
            self.shared.rejoin.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    fn start_heartbeat(&mut self) {
        if !self.heartbeat_stop.is_cancelled() && self.joined {
            return;
        }
        self.heartbeat_stop = CancellationToken::new();
        let (client, shared, stop) = (
            self.client.clone(),
            self.shared.clone(),
            self.heartbeat_stop.clone(),
        );
        let group_id = self.config.group_id.clone();
        let instance = self.config.group_instance_id.clone().unwrap_or_default();
        let every = Duration::from_millis(self.config.heartbeat_interval_ms.into());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
                let (member_id, generation_id) = {
                    let m = shared.membership.lock();
                    (m.member_id.clone(), m.generation)
                };
                if member_id.is_empty() {
                    continue;
                }
                let req = Request::Heartbeat(v1::HeartbeatRequest {
                    group_id: group_id.clone(),
                    generation_id,
                    member_id,
                    group_instance_id: instance.clone(),
                });
                let status = match client.request(&req, client.request_timeout()).await {
                    Ok(Response::Heartbeat(r)) => r.status,
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::debug!(error = %e, "heartbeat failed");
                        continue;
                    }
                };
                // An answer about a generation we already left says nothing new.
                if shared.membership.lock().generation != generation_id {
                    continue;
                }
                match code(status.as_ref()) {
                    v1::ErrorCode::None => {}
                    v1::ErrorCode::RebalanceInProgress | v1::ErrorCode::IllegalGeneration => {
                        shared.rejoin.store(true, Ordering::Relaxed);
                    }
                    v1::ErrorCode::UnknownMemberId => {
                        shared.membership.lock().member_id.clear();
                        shared.rejoin.store(true, Ordering::Relaxed);
                    }
                    v1::ErrorCode::FencedInstanceId => {
                        if let Some(s) = status.as_ref() {
                            *shared.fatal.lock() = Some(ClientError::server(s));
                        }
                        return;
                    }
                    _ => {}
                }
            }
        });
    }
}

/// One join: JoinGroup (retrying what the protocol says to retry), the leader's
/// assignment, SyncGroup. Returns the partitions assigned.
async fn join_and_sync(
    client: Client,
    config: GroupConfig,
    topics: Vec<String>,
    owned: Vec<TopicPartition>,
    shared: Arc<Shared>,
) -> Result<BTreeSet<TopicPartition>> {
    loop {
        let (member_id, generation) = {
            let m = shared.membership.lock();
            (m.member_id.clone(), m.generation)
        };
        let metadata: Bytes = v1::ConsumerSubscription {
            topics: topics.clone(),
            topic_pattern: String::new(),
            owned: group_by_topic(owned.iter()),
            generation_id: generation,
            user_data: Bytes::new(),
        }
        .encode_to_vec()
        .into();
        let join_timeout =
            client.request_timeout() + Duration::from_millis(config.rebalance_timeout_ms.into());
        let req = Request::JoinGroup(v1::JoinGroupRequest {
            group_id: config.group_id.clone(),
            member_id,
            group_instance_id: config.group_instance_id.clone().unwrap_or_default(),
            session_timeout_ms: config.session_timeout_ms,
            rebalance_timeout_ms: config.rebalance_timeout_ms,
            protocol_type: PROTOCOL_TYPE.into(),
            protocols: config
                .strategies
                .iter()
                .map(|s| v1::GroupProtocol {
                    name: s.name().into(),
                    metadata: metadata.clone(),
                })
                .collect(),
            client_id: "weir-client".into(),
        });
        let join = match client.request(&req, join_timeout).await? {
            Response::JoinGroup(r) => r,
            other => return Err(unexpected("JoinGroup", &other)),
        };
        match code(join.status.as_ref()) {
            v1::ErrorCode::None => {}
            v1::ErrorCode::UnknownMemberId => {
                shared.membership.lock().member_id.clear();
                continue;
            }
            v1::ErrorCode::RebalanceInProgress => continue,
            v1::ErrorCode::MemberIdRequired => {
                shared.membership.lock().member_id = join.member_id.clone();
                continue;
            }
            _ => check(join.status.as_ref())?,
        }
        {
            let mut m = shared.membership.lock();
            m.member_id = join.member_id.clone();
            m.generation = join.generation_id;
        }
        let assignments = if join.leader_id == join.member_id {
            let strategy = Strategy::from_name(&join.protocol_name).unwrap_or_default();
            leader_assign(&client, strategy, &join.members).await?
        } else {
            Vec::new()
        };
        let sync = call!(
            client,
            SyncGroup,
            v1::SyncGroupRequest {
                group_id: config.group_id.clone(),
                generation_id: join.generation_id,
                member_id: join.member_id.clone(),
                group_instance_id: config.group_instance_id.clone().unwrap_or_default(),
                assignments,
            }
        );
        match code(sync.status.as_ref()) {
            v1::ErrorCode::None => {}
            v1::ErrorCode::RebalanceInProgress | v1::ErrorCode::IllegalGeneration => continue,
            v1::ErrorCode::UnknownMemberId => {
                shared.membership.lock().member_id.clear();
                continue;
            }
            _ => check(sync.status.as_ref())?,
        }
        let assignment = v1::ConsumerAssignment::decode(sync.assignment)
            .map_err(|e| ClientError::Protocol(format!("assignment: {e}")))?;
        return Ok(v1::TopicPartitions::flatten(assignment.partitions).collect());
    }
}

/// The leader's part: decode every member's subscription, learn partition counts, run
/// the strategy.
async fn leader_assign(
    client: &Client,
    strategy: Strategy,
    members: &[v1::GroupMember],
) -> Result<Vec<v1::MemberAssignment>> {
    let mut subs = Vec::with_capacity(members.len());
    let mut topics = BTreeSet::new();
    for m in members {
        let s = v1::ConsumerSubscription::decode(m.metadata.clone())
            .map_err(|e| ClientError::Protocol(format!("member subscription: {e}")))?;
        topics.extend(s.topics.iter().cloned());
        subs.push(MemberSubscription {
            member_id: m.member_id.clone(),
            topics: s.topics.into_iter().collect(),
            owned: v1::TopicPartitions::flatten(s.owned).collect(),
            generation: s.generation_id,
        });
    }
    let mut counts = BTreeMap::new();
    for t in topics {
        client.invalidate_metadata(&t);
        match client.partition_count(&t).await {
            Ok(n) => {
                counts.insert(t, n);
            }
            Err(e) if e.server_code() == Some(v1::ErrorCode::UnknownTopic) => {}
            Err(e) => return Err(e),
        }
    }
    let plan = assign(strategy, &subs, &counts);
    Ok(plan
        .into_iter()
        .map(|(member_id, parts)| v1::MemberAssignment {
            member_id,
            assignment: v1::ConsumerAssignment {
                partitions: group_by_topic(parts.iter()),
                user_data: Bytes::new(),
            }
            .encode_to_vec()
            .into(),
        })
        .collect())
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        self.heartbeat_stop.cancel();
        if let Some(p) = self.pending.take() {
            p.abort();
        }
    }
}

fn group_by_topic<'a>(parts: impl Iterator<Item = &'a TopicPartition>) -> Vec<v1::TopicPartitions> {
    let mut by: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (t, p) in parts {
        by.entry(t.as_str()).or_default().push(*p);
    }
    by.into_iter()
        .map(|(topic, partitions)| v1::TopicPartitions {
            topic: topic.to_owned(),
            partitions,
        })
        .collect()
}

async fn commit_positions(
    client: &Client,
    config: &GroupConfig,
    group: &str,
    shared: &Shared,
    positions: Vec<(String, u32, i64)>,
) -> Result<()> {
    if let GroupMode::Broadcast {
        offsets: OffsetStore::LocalFile(path),
        ..
    } = &config.mode
    {
        return local::save(path, &positions).await;
    }
    let (generation_id, member_id) = match config.mode {
        GroupMode::Clustering => {
            let m = shared.membership.lock();
            (m.generation, m.member_id.clone())
        }
        GroupMode::Broadcast { .. } => (-1, String::new()),
    };
    let r = call!(
        client,
        OffsetCommit,
        v1::OffsetCommitRequest {
            group_id: group.to_owned(),
            generation_id,
            member_id,
            group_instance_id: match config.mode {
                GroupMode::Clustering => config.group_instance_id.clone().unwrap_or_default(),
                GroupMode::Broadcast { .. } => String::new(),
            },
            offsets: v1::PartitionOffset::list(positions),
        }
    );
    match code(r.status.as_ref()) {
        v1::ErrorCode::RebalanceInProgress
        | v1::ErrorCode::IllegalGeneration
        | v1::ErrorCode::UnknownMemberId => {
            shared.rejoin.store(true, Ordering::Relaxed);
        }
        _ => {}
    }
    check(r.status.as_ref())?;
    for p in &r.partitions {
        check(p.status.as_ref())?;
    }
    Ok(())
}

async fn fetch_committed(
    client: &Client,
    config: &GroupConfig,
    group: &str,
    parts: &[TopicPartition],
) -> Result<BTreeMap<TopicPartition, i64>> {
    if let GroupMode::Broadcast {
        offsets: OffsetStore::LocalFile(path),
        ..
    } = &config.mode
    {
        return local::load(path).await;
    }
    let r = call!(
        client,
        OffsetFetch,
        v1::OffsetFetchRequest {
            group_id: group.to_owned(),
            partitions: parts
                .iter()
                .map(|(topic, partition)| v1::TopicPartition {
                    topic: topic.clone(),
                    partition: *partition,
                })
                .collect(),
        }
    );
    check(r.status.as_ref())?;
    Ok(r.offsets
        .into_iter()
        .map(|o| ((o.topic, o.partition), o.offset))
        .collect())
}

/// Broadcast positions in a local file: `{"topic": {"partition": offset}}`, replaced
/// atomically (temporary file, fsync, rename).
mod local {
    use std::collections::BTreeMap;
    use std::io::Write;
    use std::path::Path;

    use crate::error::{ClientError, Result};

    /// Largest offsets file read back.
    const OFFSETS_FILE_BYTES_MAX: u64 = 64 * 1024 * 1024;

    type Stored = BTreeMap<String, BTreeMap<u32, i64>>;

    fn io(path: &Path, e: impl std::fmt::Display) -> ClientError {
        ClientError::InvalidArgument(format!("offsets file {}: {e}", path.display()))
    }

    fn read(path: &Path) -> Result<Stored> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Stored::new()),
            Err(e) => return Err(io(path, e)),
            Ok(m) if m.len() > OFFSETS_FILE_BYTES_MAX => {
                return Err(io(
                    path,
                    format!("larger than {OFFSETS_FILE_BYTES_MAX} bytes"),
                ));
            }
            Ok(_) => {}
        }
        let text = std::fs::read(path).map_err(|e| io(path, e))?;
        serde_json::from_slice(&text).map_err(|e| io(path, e))
    }

    pub(super) async fn load(path: &Path) -> Result<BTreeMap<(String, u32), i64>> {
        let path = path.to_owned();
        let stored = tokio::task::spawn_blocking(move || read(&path))
            .await
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))??;
        Ok(stored
            .into_iter()
            .flat_map(|(t, ps)| ps.into_iter().map(move |(p, o)| ((t.clone(), p), o)))
            .collect())
    }

    pub(super) async fn save(path: &Path, positions: &[(String, u32, i64)]) -> Result<()> {
        let path = path.to_owned();
        let positions = positions.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut stored = read(&path)?;
            for (t, p, o) in positions {
                stored.entry(t).or_default().insert(p, o);
            }
            let json = serde_json::to_vec_pretty(&stored).map_err(|e| io(&path, e))?;
            let tmp = path.with_extension("tmp");
            let mut f = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
            f.write_all(&json)
                .and_then(|()| f.sync_all())
                .map_err(|e| io(&tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))
        })
        .await
        .map_err(|e| ClientError::InvalidArgument(e.to_string()))?
    }
}
