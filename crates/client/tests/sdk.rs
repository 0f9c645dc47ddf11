//! The SDK against the real server, started in-process on 127.0.0.1:0 over a temporary
//! data directory.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{TestServer, create};
use tokio::sync::oneshot;
use weir_client::{
    AutoOffsetReset, BatchAckHandler, BatchAcks, CancellationToken, ClientError, ConsumerConfig,
    ConsumerRecord, ProducerConfig, ProducerRecord, SeekTo, TaggedAck, Topic, partition_for_key,
    v1,
};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn values(records: &[ConsumerRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap_or_default().to_vec()).unwrap())
        .collect()
}

/// Polls until `n` records arrived (or 10 s passed).
async fn poll_n(consumer: &mut weir_client::Consumer, n: usize) -> Vec<ConsumerRecord> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        out.extend(
            consumer
                .poll(Duration::from_millis(500))
                .await
                .expect("poll"),
        );
    }
    out
}

#[tokio::test]
async fn admin_create_list_describe_delete() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let admin = client.admin();
    let configs = HashMap::from([("fsync".to_owned(), "always".to_owned())]);
    let info = admin.create_topic("orders", 3, configs).await.unwrap();
    assert_eq!((info.name.as_str(), info.partition_count), ("orders", 3));
    let err = admin
        .create_topic("orders", 1, HashMap::new())
        .await
        .unwrap_err();
    assert_eq!(err.server_code(), Some(v1::ErrorCode::TopicAlreadyExists));
    let names: Vec<String> = admin
        .list_topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, vec!["orders"]);
    let d = admin.describe_topic("orders").await.unwrap();
    assert_eq!(d.partitions.len(), 3);
    assert_eq!(d.configs.get("fsync").map(String::as_str), Some("always"));
    let md = admin.metadata(vec!["orders".into()]).await.unwrap();
    assert_eq!(md.topics[0].partitions.len(), 3);
    admin.delete_topic("orders").await.unwrap();
    assert!(admin.list_topics().await.unwrap().is_empty());
    let err = admin.describe_topic("orders").await.unwrap_err();
    assert_eq!(err.server_code(), Some(v1::ErrorCode::UnknownTopic));
    let err = admin
        .create_topic("bad name", 1, HashMap::new())
        .await
        .unwrap_err();
    assert_eq!(err.server_code(), Some(v1::ErrorCode::InvalidTopicName));
    server.stop().await;
}

#[tokio::test]
async fn sync_async_callback_and_oneway_sends_arrive_in_order() {
    let server = TestServer::start().await;
    let client = server.client().await;
    create(&client, "t", 1).await;
    let producer = client.producer(ProducerConfig::default()).unwrap();

    let md = producer
        .send(
            ProducerRecord::new("t")
                .with_value("v0")
                .with_header("h", "x"),
        )
        .await
        .unwrap();
    assert_eq!((md.topic.as_str(), md.partition, md.offset), ("t", 0, 0));
    let pending: Vec<_> = (1..=10)
        .map(|i| producer.send_async(ProducerRecord::new("t").with_value(format!("v{i}"))))
        .collect();
    let mut offsets = Vec::new();
    for p in pending {
        offsets.push(p.await.unwrap().offset);
    }
    assert_eq!(offsets, (1..=10).collect::<Vec<i64>>());
    let (tx, rx) = oneshot::channel();
    producer
        .send_with_callback(ProducerRecord::new("t").with_value("v11"), move |r| {
            let _ = tx.send(r);
        })
        .await;
    assert_eq!(rx.await.unwrap().unwrap().offset, 11);
    producer
        .send_oneway(ProducerRecord::new("t").with_value("v12"))
        .await
        .unwrap();
    producer.close().await;

    let mut consumer = client.consumer(ConsumerConfig::default()).unwrap();
    consumer.assign("t", &[0]).await.unwrap();
    consumer.seek("t", 0, SeekTo::Beginning).await.unwrap();
    let got = poll_n(&mut consumer, 13).await;
    assert_eq!(
        values(&got),
        (0..=12).map(|i| format!("v{i}")).collect::<Vec<_>>()
    );
    assert_eq!(
        got[0].headers,
        vec![("h".to_owned(), Some(bytes::Bytes::from_static(b"x")))]
    );
    assert_eq!(consumer.position("t", 0), Some(13));
    server.stop().await;
}

/// Keeps what a [`BatchAckHandler`] is told.
#[derive(Default)]
struct Batches {
    calls: AtomicUsize,
    acks: Mutex<Vec<(String, u32, TaggedAck)>>,
}

impl BatchAckHandler for Batches {
    fn on_batch(&self, acks: &BatchAcks<'_>) {
        assert!(acks.result.is_ok(), "{:?}", acks.result);
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut all = self.acks.lock().unwrap();
        for a in acks.records {
            all.push((acks.topic.to_string(), acks.partition, *a));
        }
    }
}

#[tokio::test]
async fn tagged_sends_are_reported_a_batch_at_a_time() {
    let server = TestServer::start().await;
    let client = server.client().await;
    create(&client, "t", 1).await;
    let batches = Arc::new(Batches::default());
    let mut pc = ProducerConfig::default().batch_ack_handler(batches.clone());
    pc.linger_ms = 100;
    let producer = client.producer(pc).unwrap();
    let topic = Topic::from("t");
    let (tx, rx) = oneshot::channel();
    let mut tx = Some(tx);
    for i in 0..100u64 {
        let record = ProducerRecord::new(topic.clone())
            .with_value(format!("v{i}"))
            .with_timestamp_ms(1_000 + i as i64);
        if i == 50 {
            // A record with its own callback shares the batch, and takes its offset.
            let tx = tx.take().expect("once");
            producer
                .send_with_callback(record, move |r| {
                    let _ = tx.send(r);
                })
                .await;
        } else {
            producer.send_tagged(record, i * 10).await.unwrap();
        }
    }
    let err = producer
        .send_tagged(ProducerRecord::new("missing").with_value("x"), 7)
        .await
        .unwrap_err();
    assert!(!err.to_string().is_empty());
    producer.close().await;
    let md = rx.await.unwrap().unwrap();
    assert_eq!((md.topic == "t", md.offset), (true, 50));

    let acks = batches.acks.lock().unwrap().clone();
    let expected: Vec<(String, u32, TaggedAck)> = (0..100u64)
        .filter(|&i| i != 50)
        .map(|i| {
            let ack = TaggedAck {
                tag: i * 10,
                offset: i as i64,
                timestamp_ms: 1_000 + i as i64,
            };
            ("t".to_owned(), 0, ack)
        })
        .collect();
    assert_eq!(acks, expected, "every tag once, in offset order");
    let calls = batches.calls.load(Ordering::Relaxed);
    assert!(
        calls <= 10,
        "{calls} calls for 99 records lingering together"
    );

    let plain = client.producer(ProducerConfig::default()).unwrap();
    let err = plain
        .send_tagged(ProducerRecord::new("t").with_value("x"), 1)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::InvalidArgument(_)), "{err}");
    plain.close().await;
    server.stop().await;
}

#[tokio::test]
async fn linger_puts_concurrent_sends_into_one_batch() {
    let server = TestServer::start().await;
    let client = server.client().await;
    create(&client, "lingered", 1).await;
    create(&client, "eager", 1).await;
    let mut pc = ProducerConfig::default();
    pc.linger_ms = 100;
    let lingering = client.producer(pc.clone()).unwrap();
    // Learn the partition count first so every send below is batched at once.
    lingering
        .send(ProducerRecord::new("lingered").with_value("first"))
        .await
        .unwrap();
    let started = Instant::now();
    let acks: Vec<_> = (0..50)
        .map(|i| lingering.send_async(ProducerRecord::new("lingered").with_value(format!("{i}"))))
        .collect();
    for a in acks {
        a.await.unwrap();
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(90),
        "linger not applied: {took:?}"
    );

    pc.linger_ms = 0;
    let eager = client.producer(pc).unwrap();
    for i in 0..50 {
        eager
            .send(ProducerRecord::new("eager").with_value(format!("{i}")))
            .await
            .unwrap();
    }
    let size = |t: &'static str| {
        let admin = client.admin();
        async move { admin.describe_topic(t).await.unwrap().partitions[0].size_bytes }
    };
    // 50 one-record batches carry 50 batch headers (61 bytes each); one batch carries one.
    let (lingered, eager_size) = (size("lingered").await, size("eager").await);
    assert!(
        lingered + 40 * 61 < eager_size,
        "lingered {lingered} bytes vs eager {eager_size} bytes"
    );
    server.stop().await;
}

#[tokio::test]
async fn keys_land_on_the_partition_kafka_would_choose() {
    let server = TestServer::start().await;
    let client = server.client().await;
    create(&client, "keyed", 4).await;
    let producer = client.producer(ProducerConfig::default()).unwrap();
    let md = producer
        .send(
            ProducerRecord::new("keyed")
                .with_key("foobar")
                .with_value("x"),
        )
        .await
        .unwrap();
    // toPositive(murmur2("foobar")) = 1357151166, and 1357151166 % 4 = 2.
    assert_eq!(md.partition, 2);
    for i in 0..40 {
        let key = format!("key-{i}");
        let md = producer
            .send(
                ProducerRecord::new("keyed")
                    .with_key(key.clone())
                    .with_value("v"),
            )
            .await
            .unwrap();
        assert_eq!(md.partition, partition_for_key(key.as_bytes(), 4), "{key}");
    }
    // Records without a key still spread over every partition.
    let mut seen = [false; 4];
    for _ in 0..40 {
        let md = producer
            .send(ProducerRecord::new("keyed").with_value("v"))
            .await
            .unwrap();
        seen[md.partition as usize] = true;
    }
    assert!(seen.iter().all(|&s| s), "{seen:?}");
    server.stop().await;
}

#[tokio::test]
async fn seek_to_beginning_offset_timestamp_and_end() {
    let server = TestServer::start().await;
    let client = server.client().await;
    create(&client, "t", 1).await;
    let producer = client.producer(ProducerConfig::default()).unwrap();
    let base = now_ms() - 60_000;
    for i in 0..10 {
        producer
            .send(
                ProducerRecord::new("t")
                    .with_value(format!("v{i}"))
                    .with_timestamp_ms(base + i * 1_000),
            )
            .await
            .unwrap();
    }
    let mut consumer = client.consumer(ConsumerConfig::default()).unwrap();
    consumer.assign_all("t").await.unwrap();

    consumer.seek("t", 0, SeekTo::Beginning).await.unwrap();
    assert_eq!(consumer.position("t", 0), Some(0));
    assert_eq!(poll_n(&mut consumer, 10).await.len(), 10);

    consumer.seek("t", 0, SeekTo::Offset(7)).await.unwrap();
    assert_eq!(values(&poll_n(&mut consumer, 3).await), ["v7", "v8", "v9"]);

    consumer
        .seek("t", 0, SeekTo::Timestamp(base + 4_500))
        .await
        .unwrap();
    assert_eq!(consumer.position("t", 0), Some(5));
    let got = poll_n(&mut consumer, 5).await;
    assert_eq!(got[0].offset, 5);
    assert_eq!(got[0].timestamp_ms, base + 5_000);

    consumer
        .seek("t", 0, SeekTo::Timestamp(now_ms() + 3_600_000))
        .await
        .unwrap();
    assert_eq!(
        consumer.position("t", 0),
        Some(10),
        "no newer record: log end"
    );

    consumer.seek("t", 0, SeekTo::End).await.unwrap();
    let started = Instant::now();
    assert!(
        consumer
            .poll(Duration::from_millis(200))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(started.elapsed() >= Duration::from_millis(150));

    // Small polls hand out max_poll_records at a time, in order.
    let mut cc = ConsumerConfig::default();
    cc.max_poll_records = 3;
    cc.auto_offset_reset = AutoOffsetReset::Earliest;
    let mut small = client.consumer(cc).unwrap();
    small.assign("t", &[0]).await.unwrap();
    let first = small.poll(Duration::from_secs(5)).await.unwrap();
    assert_eq!(values(&first), ["v0", "v1", "v2"]);
    assert_eq!(small.position("t", 0), Some(3));
    // An offset past the end is reset per auto_offset_reset (earliest here).
    small.seek("t", 0, SeekTo::Offset(1_000)).await.unwrap();
    assert_eq!(
        values(&small.poll(Duration::from_secs(5)).await.unwrap())[0],
        "v0"
    );
    server.stop().await;
}

#[tokio::test]
async fn long_poll_returns_as_soon_as_data_arrives() {
    let server = TestServer::start().await;
    let client = server.client().await;
    create(&client, "t", 2).await;
    let mut consumer = client.consumer(ConsumerConfig::default()).unwrap();
    consumer.assign_all("t").await.unwrap();
    // Latest by default: positions resolve to the (empty) log end.
    let producer = client.producer(ProducerConfig::default()).unwrap();
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        producer
            .send(
                ProducerRecord::new("t")
                    .with_partition(1)
                    .with_value("late"),
            )
            .await
            .unwrap();
    });
    let started = Instant::now();
    let got = consumer.poll(Duration::from_secs(20)).await.unwrap();
    let took = started.elapsed();
    late.await.unwrap();
    assert_eq!(values(&got), ["late"]);
    assert_eq!(got[0].partition, 1);
    assert!(
        took >= Duration::from_millis(250),
        "returned before the data: {took:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "did not wake on data: {took:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn push_consumer_waits_for_its_handler_and_stops_on_cancel_or_error() {
    let server = TestServer::start().await;
    let client = server.client().await;
    create(&client, "t", 1).await;
    let producer = client.producer(ProducerConfig::default()).unwrap();
    for i in 0..100 {
        producer
            .send_async(ProducerRecord::new("t").with_value(format!("{i}")))
            .await
            .unwrap();
    }
    let mut cc = ConsumerConfig::default();
    cc.max_poll_records = 10;
    cc.auto_offset_reset = AutoOffsetReset::Earliest;
    let mut consumer = client.consumer(cc.clone()).unwrap();
    consumer.assign("t", &[0]).await.unwrap();

    let cancel = CancellationToken::new();
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let active = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let (s, a, c, stop) = (seen.clone(), active.clone(), calls.clone(), cancel.clone());
    consumer
        .run(cancel.clone(), move |batch| {
            let (s, a, c, stop) = (s.clone(), a.clone(), c.clone(), stop.clone());
            async move {
                assert_eq!(a.fetch_add(1, Ordering::SeqCst), 0, "handlers overlap");
                assert!(batch.len() <= 10);
                c.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                let mut s = s.lock();
                s.extend(batch.iter().map(|r| r.offset));
                if s.len() == 100 {
                    stop.cancel();
                }
                a.fetch_sub(1, Ordering::SeqCst);
                Ok::<(), std::io::Error>(())
            }
        })
        .await
        .unwrap();
    assert_eq!(*seen.lock(), (0..100).collect::<Vec<i64>>());
    assert!(calls.load(Ordering::SeqCst) >= 10);
    assert_eq!(consumer.position("t", 0), Some(100));

    let mut failing = client.consumer(cc).unwrap();
    failing.assign("t", &[0]).await.unwrap();
    let err = failing
        .run(CancellationToken::new(), |_| async {
            Err::<(), _>(std::io::Error::other("handler says no"))
        })
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Handler(_)), "{err}");
    assert!(err.to_string().contains("handler says no"));
    server.stop().await;
}

#[tokio::test]
async fn unknown_topics_and_partitions_are_clear_errors() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let producer = client.producer(ProducerConfig::default()).unwrap();
    let err = producer
        .send(ProducerRecord::new("nope").with_value("x"))
        .await
        .unwrap_err();
    assert_eq!(
        err.server_code(),
        Some(v1::ErrorCode::UnknownTopic),
        "{err}"
    );
    let err = producer
        .send_async(ProducerRecord::new("nope").with_value("x"))
        .await
        .unwrap_err();
    assert_eq!(
        err.server_code(),
        Some(v1::ErrorCode::UnknownTopic),
        "{err}"
    );
    let mut consumer = client.consumer(ConsumerConfig::default()).unwrap();
    let err = consumer.assign_all("nope").await.unwrap_err();
    assert_eq!(
        err.server_code(),
        Some(v1::ErrorCode::UnknownTopic),
        "{err}"
    );
    let err = client.admin().delete_topic("nope").await.unwrap_err();
    assert_eq!(
        err.server_code(),
        Some(v1::ErrorCode::UnknownTopic),
        "{err}"
    );
    create(&client, "t", 2).await;
    let err = consumer.assign("t", &[2]).await.unwrap_err();
    assert!(matches!(err, ClientError::InvalidArgument(_)), "{err}");
    assert!(
        consumer.poll(Duration::ZERO).await.is_err(),
        "nothing assigned"
    );
    server.stop().await;
}

#[tokio::test]
async fn requests_fail_cleanly_when_the_server_goes_away() {
    let server = TestServer::start().await;
    let client = server.client().await;
    create(&client, "t", 1).await;
    server.stop().await;
    let err = client.admin().list_topics().await.unwrap_err();
    assert!(err.is_retriable(), "{err}");
    assert!(
        matches!(
            err,
            ClientError::Connect { .. } | ClientError::Disconnected(_) | ClientError::Io(_)
        ),
        "{err}"
    );
}

#[tokio::test]
async fn pipelined_batches_keep_order_and_prefetch_follows_seeks() {
    let server = TestServer::start().await;
    let client = server.client().await;
    create(&client, "pipe", 2).await;
    let mut config = ProducerConfig::default();
    config.batch_bytes_max = 1024;
    config.linger_ms = 0;
    config.partition_inflight_batches_max = 8;
    let producer = client.producer(config).unwrap();
    let pending: Vec<_> = (0..3_000)
        .map(|i| {
            producer.send_async(
                ProducerRecord::new("pipe")
                    .with_partition(i % 2)
                    .with_value(format!("{i:06}")),
            )
        })
        .collect();
    for p in pending {
        p.await.unwrap();
    }
    producer.close().await;

    let mut cc = ConsumerConfig::default();
    cc.max_poll_records = 100;
    cc.partition_fetch_bytes_max = 4096;
    let mut consumer = client.consumer(cc).unwrap();
    consumer.assign("pipe", &[0, 1]).await.unwrap();
    consumer.seek("pipe", 0, SeekTo::Beginning).await.unwrap();
    consumer.seek("pipe", 1, SeekTo::Beginning).await.unwrap();
    // Small fetches and polls: most polls find a prefetch in flight.
    let mut seen: HashMap<u32, Vec<i64>> = HashMap::new();
    let first = poll_n(&mut consumer, 500).await;
    for r in &first {
        seen.entry(r.partition).or_default().push(r.offset);
    }
    // A seek while a prefetch is out: the prefetched data must not be handed out.
    consumer.seek("pipe", 0, SeekTo::Offset(10)).await.unwrap();
    let rest = poll_n(&mut consumer, 3_000).await;
    let p0: Vec<i64> = rest
        .iter()
        .filter(|r| r.partition == 0)
        .map(|r| r.offset)
        .collect();
    assert_eq!(
        p0,
        (10..1_500).collect::<Vec<_>>(),
        "partition 0 after the seek"
    );
    let mut p1 = seen.remove(&1).unwrap_or_default();
    p1.extend(rest.iter().filter(|r| r.partition == 1).map(|r| r.offset));
    assert_eq!(
        p1,
        (0..1_500).collect::<Vec<_>>(),
        "partition 1 read once, in order"
    );
    // Values were appended in send order per partition despite 8 batches in flight.
    let all: Vec<ConsumerRecord> = rest.into_iter().filter(|r| r.partition == 1).collect();
    let v = values(&all);
    let mut sorted = v.clone();
    sorted.sort();
    assert_eq!(v, sorted);
    server.stop().await;
}
