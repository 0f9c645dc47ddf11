//! Consumer groups through the SDK against the real server (in-process).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use common::{TestServer, create};
use weir_client::{
    Client, GroupConfig, GroupConsumer, GroupMode, OffsetStore, ProducerConfig, ProducerRecord,
    StartFrom, Strategy,
};

fn config(group: &str) -> GroupConfig {
    let mut c = GroupConfig::new(group);
    c.session_timeout_ms = 3_000;
    c.heartbeat_interval_ms = 200;
    c.start_from = StartFrom::Earliest;
    c.auto_commit_interval_ms = 200;
    c
}

async fn produce(client: &Client, topic: &str, n: usize, tag: &str) {
    let producer = client
        .producer(ProducerConfig::default())
        .expect("producer");
    let acks: Vec<_> = (0..n)
        .map(|i| {
            producer.send_async(
                ProducerRecord::new(topic)
                    .with_key(format!("k{i}"))
                    .with_value(format!("{tag}-{i}")),
            )
        })
        .collect();
    for a in acks {
        a.await.expect("ack");
    }
    producer.close().await;
}

/// Polls every member in turn until `done` says so or 20 s pass; returns values per member.
async fn drive(
    members: &mut [GroupConsumer],
    mut done: impl FnMut(&[GroupConsumer], &[Vec<String>]) -> bool,
) -> Vec<Vec<String>> {
    let mut got = vec![Vec::new(); members.len()];
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && !done(members, &got) {
        for (i, m) in members.iter_mut().enumerate() {
            for r in m.poll(Duration::from_millis(50)).await.expect("poll") {
                got[i]
                    .push(String::from_utf8(r.value.unwrap_or_default().to_vec()).expect("utf-8"));
            }
        }
    }
    got
}

fn owners(members: &[GroupConsumer]) -> BTreeMap<(String, u32), usize> {
    let mut m = BTreeMap::new();
    for (i, c) in members.iter().enumerate() {
        for tp in c.assignment() {
            assert!(m.insert(tp.clone(), i).is_none(), "{tp:?} owned twice");
        }
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_split_six_partitions_and_a_fourth_moves_only_what_it_takes() {
    let server = TestServer::start().await;
    let client = server.client().await;
    create(&client, "orders", 6).await;
    produce(&client, "orders", 600, "a").await;

    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(
            client
                .group_consumer(config("g"), vec!["orders".into()])
                .expect("member"),
        );
    }
    let got = drive(&mut members, |ms, got| {
        ms.iter().all(|m| m.assignment().len() == 2)
            && got.iter().map(Vec::len).sum::<usize>() >= 600
    })
    .await;
    assert!(
        members.iter().all(|m| m.assignment().len() == 2),
        "2 partitions each"
    );
    let all: BTreeSet<&String> = got.iter().flatten().collect();
    assert_eq!(all.len(), 600, "every message consumed");
    let before = owners(&members);
    assert_eq!(before.len(), 6);

    // A fourth member: cooperative sticky moves only the partitions it takes, and the
    // members that keep theirs go on receiving messages while the rebalance runs.
    let stop = tokio_util::sync::CancellationToken::new();
    let feeder = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let producer = client
                .producer(ProducerConfig::default())
                .expect("producer");
            let mut i = 0u64;
            while !stop.is_cancelled() {
                producer
                    .send(
                        ProducerRecord::new("orders")
                            .with_key(format!("c{i}"))
                            .with_value(format!("c-{i}")),
                    )
                    .await
                    .expect("send");
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            producer.close().await;
        })
    };
    members.push(
        client
            .group_consumer(config("g"), vec!["orders".into()])
            .expect("member"),
    );
    let started = Instant::now();
    let mut during: Vec<usize> = vec![0; 4];
    let deadline = Instant::now() + Duration::from_secs(20);
    let rebalance_took = loop {
        assert!(
            Instant::now() < deadline,
            "the fourth member never got a partition"
        );
        for (i, m) in members.iter_mut().enumerate() {
            during[i] += m.poll(Duration::from_millis(50)).await.expect("poll").len();
        }
        if !members[3].assignment().is_empty() {
            break started.elapsed();
        }
    };
    stop.cancel();
    feeder.await.expect("feeder");
    let after = owners(&members);
    assert_eq!(after.len(), 6);
    let moved: Vec<_> = before
        .iter()
        .filter(|(tp, o)| after.get(*tp) != Some(o))
        .collect();
    let taken = members[3].assignment();
    assert_eq!(
        moved.len(),
        taken.len(),
        "only the newcomer's partitions moved: {moved:?}"
    );
    assert!(!taken.is_empty());
    let losers: BTreeSet<usize> = moved.iter().map(|(_, o)| **o).collect();
    for (i, received) in during.iter().enumerate().take(3) {
        if !losers.contains(&i) {
            assert!(
                *received > 0,
                "member {i} kept its partitions but received nothing during the {rebalance_took:?} rebalance"
            );
        }
    }
    eprintln!(
        "rebalance to admit a fourth member took {rebalance_took:?}; messages received meanwhile by the first three: {:?}",
        &during[..3]
    );

    // Messages produced now reach the group once each.
    produce(&client, "orders", 300, "b").await;
    let got = drive(&mut members, |_, got| {
        got.iter().flatten().filter(|v| v.starts_with("b-")).count() >= 300
    })
    .await;
    let b: BTreeSet<&String> = got
        .iter()
        .flatten()
        .filter(|v| v.starts_with("b-"))
        .collect();
    assert_eq!(b.len(), 300);
    for m in &mut members {
        m.close().await.expect("close");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_resume_the_group_and_history_starts_where_asked() {
    let server = TestServer::start().await;
    let client = server.client().await;
    create(&client, "t", 2).await;
    produce(&client, "t", 100, "x").await;

    let mut c = client
        .group_consumer(config("resume"), vec!["t".into()])
        .expect("member");
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen < 100 && Instant::now() < deadline {
        seen += c
            .poll(Duration::from_millis(200))
            .await
            .expect("poll")
            .len();
    }
    assert_eq!(seen, 100);
    c.commit().await.expect("commit");
    c.close().await.expect("close");

    produce(&client, "t", 10, "y").await;
    let mut c = client
        .group_consumer(config("resume"), vec!["t".into()])
        .expect("member");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < 10 && Instant::now() < deadline {
        got.extend(c.poll(Duration::from_millis(200)).await.expect("poll"));
    }
    assert_eq!(got.len(), 10, "resumed after the committed position");
    assert!(
        got.iter()
            .all(|r| r.value.as_deref().is_some_and(|v| v.starts_with(b"y-")))
    );
    c.close().await.expect("close");

    // A new group told to start at the latest offset sees nothing old.
    let mut late = config("late");
    late.start_from = StartFrom::Latest;
    let mut c = client
        .group_consumer(late, vec!["t".into()])
        .expect("member");
    assert!(
        c.poll(Duration::from_secs(1))
            .await
            .expect("poll")
            .is_empty()
    );
    c.close().await.expect("close");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_delivers_everything_to_everyone_with_positions_per_member() {
    let server = TestServer::start().await;
    let client = server.client().await;
    create(&client, "news", 3).await;
    produce(&client, "news", 90, "n").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let broadcast = |name: &str, store: OffsetStore| {
        let mut c = config("fans");
        c.mode = GroupMode::Broadcast {
            member: name.into(),
            offsets: store,
        };
        c
    };
    let file = dir.path().join("b.json");
    let mut members = vec![
        client
            .group_consumer(broadcast("a", OffsetStore::Broker), vec!["news".into()])
            .expect("a"),
        client
            .group_consumer(
                broadcast("b", OffsetStore::LocalFile(file.clone())),
                vec!["news".into()],
            )
            .expect("b"),
    ];
    let got = drive(&mut members, |_, got| got.iter().all(|g| g.len() >= 90)).await;
    for g in &got {
        assert_eq!(
            g.iter().collect::<BTreeSet<_>>().len(),
            90,
            "each member gets all 90"
        );
    }
    for m in &mut members {
        m.commit().await.expect("commit");
        m.close().await.expect("close");
    }
    let saved: HashMap<String, HashMap<String, i64>> =
        serde_json::from_slice(&std::fs::read(&file).expect("offsets file")).expect("json");
    assert_eq!(saved["news"].values().sum::<i64>(), 90);
    // Restarted, each resumes from its own positions: nothing again.
    produce(&client, "news", 3, "m").await;
    let mut again = client
        .group_consumer(
            broadcast("b", OffsetStore::LocalFile(file)),
            vec!["news".into()],
        )
        .expect("b");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < 3 && Instant::now() < deadline {
        got.extend(again.poll(Duration::from_millis(200)).await.expect("poll"));
    }
    assert_eq!(got.len(), 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_range_members_share_partitions_too() {
    let server = TestServer::start().await;
    let client = server.client().await;
    create(&client, "r", 4).await;
    let mut members = Vec::new();
    for _ in 0..2 {
        let mut c = config("ranged");
        c.strategies = vec![Strategy::Range];
        members.push(client.group_consumer(c, vec!["r".into()]).expect("member"));
    }
    drive(&mut members, |ms, _| {
        ms.iter().all(|m| m.assignment().len() == 2)
    })
    .await;
    assert_eq!(owners(&members).len(), 4);
    server.stop().await;
}
