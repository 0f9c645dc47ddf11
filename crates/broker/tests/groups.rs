//! The group coordinator: joins, syncs, heartbeats, expiry, static members, commits.

use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use weir_broker::group::{
    CommitOffsets, GroupConfig, GroupCoordinator, GroupError, GroupState, JoinGroup, JoinResult,
    WEIR_CONSUMER_PROTOCOL_TYPE,
};
use weir_proto::v1::{ConsumerAssignment, TopicPartitions};

const SESSION_MS: u32 = 300;

fn config() -> GroupConfig {
    GroupConfig {
        session_timeout_ms_min: 100,
        // Long enough for members started together to land in one generation.
        initial_rebalance_delay_ms: 200,
        ..GroupConfig::default()
    }
}

fn join(group: &str, member: &str, instance: Option<&str>) -> JoinGroup {
    JoinGroup {
        group_id: group.into(),
        member_id: member.into(),
        group_instance_id: instance.map(Into::into),
        session_timeout_ms: SESSION_MS,
        rebalance_timeout_ms: 2_000,
        protocol_type: WEIR_CONSUMER_PROTOCOL_TYPE.into(),
        protocols: vec![("range".into(), Bytes::from_static(b"meta"))],
        client_id: "test".into(),
        ..JoinGroup::default()
    }
}

fn assignment(topic: &str, partitions: &[u32]) -> Bytes {
    ConsumerAssignment {
        partitions: vec![TopicPartitions {
            topic: topic.into(),
            partitions: partitions.to_vec(),
        }],
        user_data: Bytes::new(),
    }
    .encode_to_vec()
    .into()
}

/// Runs the coordinator's periodic work, as the broker does.
fn ticking(c: &std::sync::Arc<GroupCoordinator>) -> tokio::task::JoinHandle<()> {
    let c = c.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            c.tick();
        }
    })
}

async fn join_all(c: &std::sync::Arc<GroupCoordinator>, reqs: Vec<JoinGroup>) -> Vec<JoinResult> {
    let tasks: Vec<_> = reqs
        .into_iter()
        .map(|r| {
            let c = c.clone();
            tokio::spawn(async move { c.join_group(r).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("join task").expect("join"));
    }
    out
}

/// The leader syncs with an assignment of partition i to member i; everyone gets theirs.
async fn sync_all(c: &std::sync::Arc<GroupCoordinator>, joined: &[JoinResult]) -> Vec<Bytes> {
    let leader = joined
        .iter()
        .find(|j| j.member_id == j.leader_id)
        .expect("a leader");
    let plan: Vec<(String, Bytes)> = leader
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| (m.member_id.clone(), assignment("t", &[i as u32])))
        .collect();
    let tasks: Vec<_> = joined
        .iter()
        .map(|j| {
            let c = c.clone();
            let j = j.clone();
            let plan = if j.member_id == j.leader_id {
                plan.clone()
            } else {
                Vec::new()
            };
            tokio::spawn(async move {
                c.sync_group("g", j.generation_id, &j.member_id, None, plan)
                    .await
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("sync task").expect("sync"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_join_sync_and_a_silent_one_is_expired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = std::sync::Arc::new(GroupCoordinator::open(dir.path(), config()).expect("open"));
    let _tick = ticking(&c);
    let joined = join_all(&c, (0..3).map(|_| join("g", "", None)).collect()).await;
    let generation = joined[0].generation_id;
    assert!(joined.iter().all(|j| j.generation_id == generation));
    let leader: Vec<_> = joined
        .iter()
        .filter(|j| j.member_id == j.leader_id)
        .collect();
    assert_eq!(leader.len(), 1);
    assert_eq!(leader[0].members.len(), 3);
    let assigned = sync_all(&c, &joined).await;
    let mut parts: Vec<u32> = assigned
        .iter()
        .map(|a| {
            ConsumerAssignment::decode(a.clone())
                .expect("decodes")
                .partitions[0]
                .partitions[0]
        })
        .collect();
    parts.sort();
    assert_eq!(parts, [0, 1, 2]);
    assert_eq!(
        c.describe_group("g").expect("describe").state,
        GroupState::Stable
    );

    // Two keep heartbeating; the third goes silent and is expired after its session.
    let (alive, silent) = joined.split_at(2);
    let mut rebalance_seen = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        for j in alive {
            match c.heartbeat("g", generation, &j.member_id, None) {
                Ok(()) => {}
                Err(GroupError::RebalanceInProgress) => rebalance_seen = true,
                Err(e) => panic!("heartbeat: {e}"),
            }
        }
        if rebalance_seen {
            break;
        }
    }
    assert!(
        rebalance_seen,
        "the silent member's expiry starts a rebalance"
    );
    assert!(matches!(
        c.heartbeat("g", generation, &silent[0].member_id, None),
        Err(GroupError::UnknownMemberId(_))
    ));
    let rejoined = join_all(
        &c,
        alive
            .iter()
            .map(|j| join("g", &j.member_id, None))
            .collect(),
    )
    .await;
    assert!(rejoined.iter().all(|j| j.generation_id == generation + 1));
    assert_eq!(
        rejoined
            .iter()
            .find(|j| j.member_id == j.leader_id)
            .expect("leader")
            .members
            .len(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_member_gets_its_assignment_back_without_a_rebalance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = std::sync::Arc::new(GroupCoordinator::open(dir.path(), config()).expect("open"));
    let _tick = ticking(&c);
    let joined = join_all(&c, vec![join("g", "", Some("a")), join("g", "", Some("b"))]).await;
    let assigned = sync_all(&c, &joined).await;
    let generation = joined[0].generation_id;
    // The follower "restarts": it comes back with no member id but the same instance id.
    let (follower, before) = joined
        .iter()
        .zip(&assigned)
        .find(|(j, _)| j.member_id != j.leader_id)
        .expect("a follower");
    let instance = if joined[0].member_id == follower.member_id {
        "a"
    } else {
        "b"
    };
    let back = c
        .join_group(join("g", "", Some(instance)))
        .await
        .expect("rejoin");
    assert_eq!(back.generation_id, generation, "no rebalance");
    assert_ne!(back.member_id, follower.member_id);
    let again = c
        .sync_group(
            "g",
            back.generation_id,
            &back.member_id,
            Some(instance),
            Vec::new(),
        )
        .await
        .expect("sync");
    assert_eq!(&again, before);
    // The old incarnation is fenced.
    assert!(matches!(
        c.heartbeat("g", generation, &follower.member_id, Some(instance)),
        Err(GroupError::FencedInstanceId(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_are_checked_and_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exists = |t: &str, p: u32| {
        (t != "t" || p > 3).then(|| GroupError::UnknownPartition {
            topic: t.into(),
            partition: p,
        })
    };
    {
        let c = std::sync::Arc::new(GroupCoordinator::open(dir.path(), config()).expect("open"));
        let _tick = ticking(&c);
        let joined = join_all(&c, vec![join("g", "", None)]).await;
        let j = &joined[0];
        sync_all(&c, &joined).await; // owns t/0
        let commit = |generation: i32, member: &str, offsets: Vec<(String, u32, i64, String)>| {
            CommitOffsets {
                group_id: "g".into(),
                generation_id: generation,
                member_id: member.into(),
                group_instance_id: None,
                offsets,
            }
        };
        let one = |p: u32, o: i64, m: &str| vec![("t".to_owned(), p, o, m.to_owned())];
        assert!(matches!(
            c.commit_offsets(
                commit(j.generation_id + 1, &j.member_id, one(0, 5, "")),
                exists
            )
            .await,
            Err(GroupError::IllegalGeneration { .. })
        ));
        assert!(matches!(
            c.commit_offsets(commit(j.generation_id, "stranger", one(0, 5, "")), exists)
                .await,
            Err(GroupError::UnknownMemberId(_))
        ));
        assert!(matches!(
            c.commit_offsets(commit(-1, "", one(0, 5, "")), exists)
                .await,
            Err(GroupError::NonEmptyGroup)
        ));
        let results = c
            .commit_offsets(
                commit(
                    j.generation_id,
                    &j.member_id,
                    vec![
                        ("t".into(), 0, 42, "meta".into()),
                        ("t".into(), 1, 7, String::new()),
                        ("t".into(), 9, 7, String::new()),
                        ("t".into(), 0, 43, "x".repeat(5000)),
                    ],
                ),
                exists,
            )
            .await
            .expect("commit");
        assert!(results[0].2.is_ok());
        assert!(matches!(
            results[1].2,
            Err(GroupError::PartitionNotOwned { .. })
        ));
        assert!(matches!(
            results[2].2,
            Err(GroupError::UnknownPartition { .. })
        ));
        assert!(matches!(
            results[3].2,
            Err(GroupError::OffsetMetadataTooLarge { .. })
        ));
        assert!(matches!(
            c.reset_offsets("g", one(0, 0, ""), exists).await,
            Err(GroupError::NonEmptyGroup)
        ));
        c.leave_group("g", &[(j.member_id.clone(), None)])
            .expect("leave");
        c.reset_offsets("g", one(2, 9, "reset"), exists)
            .await
            .expect("reset");
    }
    let c = GroupCoordinator::open(dir.path(), config()).expect("reopen");
    let got = c.fetch_offsets("g", None).expect("fetch");
    let got: Vec<_> = got
        .into_iter()
        .map(|(t, p, c)| (t, p, c.map(|c| (c.offset, c.metadata))))
        .collect();
    assert_eq!(
        got,
        vec![
            ("t".to_owned(), 0, Some((42, "meta".to_owned()))),
            ("t".to_owned(), 2, Some((9, "reset".to_owned()))),
        ]
    );
    assert_eq!(c.list_groups()[0].group_id, "g");
    c.purge_topic("t").expect("purge");
    assert!(c.fetch_offsets("g", None).expect("fetch").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_joins_get_specific_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = std::sync::Arc::new(GroupCoordinator::open(dir.path(), config()).expect("open"));
    let _tick = ticking(&c);
    let mut j = join("g", "", None);
    j.session_timeout_ms = 10;
    assert!(matches!(
        c.join_group(j).await,
        Err(GroupError::InvalidSessionTimeout { .. })
    ));
    let j = join("", "", None);
    assert!(matches!(
        c.join_group(j).await,
        Err(GroupError::InvalidGroupId(_))
    ));
    let mut j = join("g", "", None);
    j.protocols = vec![("range".into(), Bytes::from(vec![0u8; 2 << 20]))];
    assert!(matches!(
        c.join_group(j).await,
        Err(GroupError::InvalidRequest(_))
    ));
    assert!(matches!(
        c.join_group(join("g", "who", None)).await,
        Err(GroupError::UnknownMemberId(_))
    ));
    let mut j = join("g", "", None);
    j.require_known_member_id = true;
    let Err(GroupError::MemberIdRequired(id)) = c.join_group(j.clone()).await else {
        panic!("expected MemberIdRequired");
    };
    j.member_id = id.clone();
    let r = c.join_group(j).await.expect("join with the given id");
    assert_eq!(r.member_id, id);
    let mut other = join("g", "", None);
    other.protocol_type = "consumer".into();
    assert!(matches!(
        c.join_group(other).await,
        Err(GroupError::InconsistentGroupProtocol(_))
    ));
}
