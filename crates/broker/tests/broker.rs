//! Broker operations end to end over a real data directory, without sockets.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::BytesMut;
use weir_broker::{
    Acks, Broker, BrokerConfig, BrokerError, FetchPartitionSpec, FetchSpec, OffsetQuery,
};
use weir_record::{BatchBuilder, BatchIter, Record, records};

fn batch(ts: i64, values: &[&str]) -> BytesMut {
    let mut b = BatchBuilder::new(ts);
    for v in values {
        b.push(Record {
            timestamp_ms: ts,
            key: None,
            value: Some(v.as_bytes()),
            headers: &[],
        });
    }
    b.finish()
}

fn fetch_spec(topic: &str, offset: i64, wait_ms: u32) -> FetchSpec {
    FetchSpec {
        max_wait_ms: wait_ms,
        min_bytes: 1,
        max_bytes: 1 << 20,
        partitions: vec![FetchPartitionSpec {
            topic: topic.into(),
            partition: 0,
            offset,
            max_bytes: 1 << 20,
        }],
    }
}

fn values(bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for b in BatchIter::new(bytes) {
        let (_, b) = b.expect("batch");
        for r in records(b).expect("records") {
            out.push(
                String::from_utf8(r.expect("record").value.expect("value").to_vec()).expect("utf8"),
            );
        }
    }
    out
}

async fn open(dir: &std::path::Path) -> Broker {
    Broker::open(BrokerConfig::new(dir))
        .await
        .expect("open broker")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_wakes_on_produce_and_times_out_when_idle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = open(dir.path()).await;
    broker
        .create_topic("t", 1, BTreeMap::new())
        .await
        .expect("create");

    // Idle: the fetch waits its whole max_wait, then returns empty.
    let started = tokio::time::Instant::now();
    let r = broker.fetch(fetch_spec("t", 0, 200)).await.expect("fetch");
    assert!(r[0].records.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(200));

    // A waiting fetch returns as soon as a produce lands, long before its max_wait.
    let waiter = {
        let b = broker.clone();
        tokio::spawn(async move { b.fetch(fetch_spec("t", 0, 30_000)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = tokio::time::Instant::now();
    broker
        .produce("t", 0, batch(1, &["a", "b"]), Acks::All, 0)
        .await
        .expect("produce");
    let r = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("woke up")
        .expect("join")
        .expect("fetch");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(values(&r[0].records), ["a", "b"]);
    assert_eq!(r[0].high_watermark, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_leader_answers_and_data_becomes_visible_once_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = open(dir.path()).await;
    broker
        .create_topic("t", 1, BTreeMap::new())
        .await
        .expect("create");
    let info = broker
        .produce("t", 0, batch(1, &["x"]), Acks::Leader, 0)
        .await
        .expect("produce");
    assert_eq!(info.base_offset, 0);
    // The background sync makes it readable.
    let r = broker
        .fetch(fetch_spec("t", 0, 5_000))
        .await
        .expect("fetch");
    assert_eq!(values(&r[0].records), ["x"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_by_time_and_ends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = open(dir.path()).await;
    broker
        .create_topic("t", 1, BTreeMap::new())
        .await
        .expect("create");
    for (i, ts) in [1000i64, 2000, 3000].iter().enumerate() {
        let v = format!("v{i}");
        broker
            .produce("t", 0, batch(*ts, &[&v]), Acks::All, 0)
            .await
            .expect("produce");
    }
    let q = |q| broker.list_offsets("t", 0, q);
    assert_eq!(q(OffsetQuery::Earliest).await.expect("earliest"), (0, true));
    assert_eq!(q(OffsetQuery::Latest).await.expect("latest"), (3, true));
    assert_eq!(
        q(OffsetQuery::Timestamp(1500)).await.expect("ts"),
        (1, true)
    );
    assert_eq!(
        q(OffsetQuery::Timestamp(3000)).await.expect("ts"),
        (2, true)
    );
    assert_eq!(
        q(OffsetQuery::Timestamp(9999)).await.expect("ts"),
        (3, false)
    );
    let r = broker.fetch(fetch_spec("t", 4, 0)).await.expect("fetch");
    assert!(matches!(
        r[0].error,
        Some(BrokerError::OffsetOutOfRange { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_lifecycle_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let broker = open(dir.path()).await;
        let mut configs = BTreeMap::new();
        configs.insert("fsync".to_owned(), "never".to_owned());
        let d = broker.create_topic("a", 3, configs).await.expect("create");
        assert_eq!(d.partitions.len(), 3);
        assert_eq!(d.configs["fsync"], "never");
        assert!(matches!(
            broker.create_topic("a", 1, BTreeMap::new()).await,
            Err(BrokerError::TopicExists(_))
        ));
        assert!(matches!(
            broker.create_topic("bad/name", 1, BTreeMap::new()).await,
            Err(BrokerError::InvalidTopicName(_))
        ));
        assert!(matches!(
            broker.create_topic("b", 0, BTreeMap::new()).await,
            Err(BrokerError::InvalidPartitionCount { .. })
        ));
        broker
            .produce("a", 2, batch(1, &["kept"]), Acks::All, 0)
            .await
            .expect("produce");
        broker
            .create_topic("gone", 1, BTreeMap::new())
            .await
            .expect("create");
        broker.delete_topic("gone").await.expect("delete");
        assert!(matches!(
            broker.delete_topic("gone").await,
            Err(BrokerError::UnknownTopic(_))
        ));
        broker.shutdown().await;
        assert!(matches!(
            broker
                .produce("a", 0, batch(1, &["late"]), Acks::All, 0)
                .await,
            Err(BrokerError::ShuttingDown)
        ));
    }
    let broker = open(dir.path()).await;
    assert_eq!(broker.list_topics(), [("a".to_owned(), 3)]);
    let d = broker.describe_topic("a").expect("describe");
    assert_eq!(d.configs["fsync"], "never");
    assert_eq!(d.partitions[2].log_end_offset, 1);
    // A re-created topic of a deleted name starts empty.
    broker
        .create_topic("gone", 1, BTreeMap::new())
        .await
        .expect("re-create");
    assert_eq!(
        broker.describe_topic("gone").expect("describe").partitions[0].log_end_offset,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_keep_offsets_unique_and_dense() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = open(dir.path()).await;
    broker
        .create_topic("t", 1, BTreeMap::new())
        .await
        .expect("create");
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let b = broker.clone();
            tokio::spawn(async move {
                let v = format!("m{i}");
                b.produce("t", 0, batch(1, &[&v, &v]), Acks::All, 0).await
            })
        })
        .collect();
    let mut bases = Vec::new();
    for t in tasks {
        bases.push(t.await.expect("join").expect("produce").base_offset);
    }
    bases.sort();
    assert_eq!(bases, (0..32).map(|i| i * 2).collect::<Vec<i64>>());
    assert_eq!(
        broker.describe_topic("t").expect("d").partitions[0].high_watermark,
        64
    );
}
