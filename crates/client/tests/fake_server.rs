//! The SDK against an in-test fake server that speaks the frame codec: response
//! matching out of order, in-flight limits, timeouts, reconnects, oversized frames,
//! producer batching, retries and acks none.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use weir_client::{Acks, Client, ClientConfig, ClientError, ProducerConfig, ProducerRecord, v1};
use weir_proto::{Request, Response};

enum Action {
    Reply(Response),
    After(Duration, Response),
    NoReply,
    Close,
    /// Send a frame header announcing a body larger than any client accepts.
    Oversized,
}

type Handler = Arc<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Action> + Send>> + Send + Sync>;

struct Fake {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    inflight_peak: Arc<AtomicUsize>,
}

fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Action> + Send + 'static,
{
    Arc::new(move |r| Box::pin(f(r)))
}

async fn fake(limits: v1::Limits, h: Handler) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let inflight_peak = Arc::new(AtomicUsize::new(0));
    let (c, peak) = (connections.clone(), inflight_peak.clone());
    tokio::spawn(async move {
        loop {
            let (sock, _) = listener.accept().await.unwrap();
            c.fetch_add(1, Ordering::SeqCst);
            let (mut rd, mut wr) = sock.into_split();
            let (tx, mut rx) = mpsc::unbounded_channel::<Option<Bytes>>();
            tokio::spawn(async move {
                while let Some(Some(frame)) = rx.recv().await {
                    if wr.write_all(&frame).await.is_err() {
                        return;
                    }
                }
                let _ = wr.shutdown().await;
            });
            let (h, peak, limits) = (h.clone(), peak.clone(), limits);
            tokio::spawn(async move {
                let inflight = Arc::new(AtomicUsize::new(0));
                let mut buf = BytesMut::new();
                loop {
                    while let Some(frame) = weir_proto::decode_frame(&mut buf, 1 << 26).unwrap() {
                        let id = frame.header.correlation_id;
                        let req = Request::decode(&frame).unwrap();
                        if let Request::Handshake(_) = req {
                            let resp = Response::Handshake(v1::HandshakeResponse {
                                status: None,
                                version: 1,
                                server_version: "fake".into(),
                                limits: Some(limits),
                                node_id: 7,
                            });
                            let mut out = BytesMut::new();
                            weir_proto::encode_response(&mut out, id, &resp);
                            let _ = tx.send(Some(out.freeze()));
                            continue;
                        }
                        let now = inflight.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        let (h, tx, inflight) = (h.clone(), tx.clone(), inflight.clone());
                        tokio::spawn(async move {
                            let action = h(req).await;
                            let resp = match action {
                                Action::Reply(r) => Some(r),
                                Action::After(d, r) => {
                                    tokio::time::sleep(d).await;
                                    Some(r)
                                }
                                Action::NoReply => None,
                                Action::Close => {
                                    let _ = tx.send(None);
                                    None
                                }
                                Action::Oversized => {
                                    let mut out = BytesMut::new();
                                    weir_proto::FrameHeader {
                                        version: 1,
                                        kind: 0x85,
                                        correlation_id: id,
                                        body_len: u32::MAX,
                                    }
                                    .encode(&mut out);
                                    let _ = tx.send(Some(out.freeze()));
                                    None
                                }
                            };
                            inflight.fetch_sub(1, Ordering::SeqCst);
                            if let Some(r) = resp {
                                let mut out = BytesMut::new();
                                weir_proto::encode_response(&mut out, id, &r);
                                let _ = tx.send(Some(out.freeze()));
                            }
                        });
                    }
                    match rd.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    Fake {
        addr,
        connections,
        inflight_peak,
    }
}

fn limits() -> v1::Limits {
    v1::Limits {
        frame_bytes_max: 1 << 24,
        batch_bytes_max: 1 << 20,
        inflight_requests_max: 64,
        fetch_wait_ms_max: 1000,
    }
}

fn describe(name: &str) -> Response {
    Response::DescribeTopic(v1::DescribeTopicResponse {
        status: None,
        topic: Some(v1::TopicInfo {
            name: name.into(),
            partition_count: 1,
            ..Default::default()
        }),
    })
}

fn metadata(topic: &str, partitions: u32) -> Response {
    Response::Metadata(v1::MetadataResponse {
        topics: vec![v1::TopicMetadata {
            name: topic.into(),
            status: None,
            partitions: (0..partitions)
                .map(|p| v1::PartitionMetadata {
                    partition: p,
                    leader: 7,
                    leader_epoch: 0,
                })
                .collect(),
        }],
        ..Default::default()
    })
}

fn produce_ok(base: i64) -> Response {
    Response::Produce(v1::ProduceResponse {
        status: None,
        base_offset: base,
        last_offset: base,
        log_append_time_ms: -1,
    })
}

fn config() -> ClientConfig {
    let mut c = ClientConfig::default();
    c.request_timeout_ms = 2_000;
    c.connect_timeout_ms = 2_000;
    c
}

#[tokio::test]
async fn responses_are_matched_by_correlation_id_in_any_order() {
    let f = fake(
        limits(),
        handler(|req| async move {
            let Request::DescribeTopic(d) = req else {
                panic!("unexpected {req:?}")
            };
            // The first sent is answered last.
            let delay = match d.name.as_str() {
                "a" => 300,
                "b" => 150,
                _ => 0,
            };
            Action::After(Duration::from_millis(delay), describe(&d.name))
        }),
    )
    .await;
    let client = Client::connect(f.addr.to_string(), config()).await.unwrap();
    let info = client.server_info().await.unwrap();
    assert_eq!(info.node_id, 7);
    assert_eq!(info.limits.batch_bytes_max, 1 << 20);
    let admin = client.admin();
    let (a, b, c) = tokio::join!(
        admin.describe_topic("a"),
        admin.describe_topic("b"),
        admin.describe_topic("c")
    );
    assert_eq!(a.unwrap().name, "a");
    assert_eq!(b.unwrap().name, "b");
    assert_eq!(c.unwrap().name, "c");
    assert_eq!(f.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn inflight_requests_are_capped_by_the_servers_limit() {
    let mut l = limits();
    l.inflight_requests_max = 3;
    let f = fake(
        l,
        handler(|req| async move {
            let Request::DescribeTopic(d) = req else {
                panic!()
            };
            Action::After(Duration::from_millis(20), describe(&d.name))
        }),
    )
    .await;
    let client = Client::connect(f.addr.to_string(), config()).await.unwrap();
    let admin = client.admin();
    let all = futures::future::join_all((0..20).map(|i| {
        let admin = admin.clone();
        async move { admin.describe_topic(&format!("t{i}")).await }
    }))
    .await;
    for (i, r) in all.into_iter().enumerate() {
        assert_eq!(r.unwrap().name, format!("t{i}"));
    }
    let peak = f.inflight_peak.load(Ordering::SeqCst);
    assert!((1..=3).contains(&peak), "peak in flight {peak}");
}

#[tokio::test]
async fn timeouts_fail_one_request_and_leave_the_connection_usable() {
    let f = fake(
        limits(),
        handler(|req| async move {
            let Request::DescribeTopic(d) = req else {
                panic!()
            };
            if d.name == "slow" {
                Action::NoReply
            } else {
                Action::Reply(describe(&d.name))
            }
        }),
    )
    .await;
    let mut cfg = config();
    cfg.request_timeout_ms = 200;
    let client = Client::connect(f.addr.to_string(), cfg).await.unwrap();
    let err = client.admin().describe_topic("slow").await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout(_)), "{err}");
    assert!(err.is_retriable());
    assert_eq!(
        client.admin().describe_topic("ok").await.unwrap().name,
        "ok"
    );
    assert_eq!(f.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_dead_connection_fails_pending_requests_and_the_next_one_reconnects() {
    let f = fake(
        limits(),
        handler(|req| async move {
            let Request::DescribeTopic(d) = req else {
                panic!()
            };
            match d.name.as_str() {
                "die" => Action::Close,
                "hang" => Action::NoReply,
                "huge" => Action::Oversized,
                n => Action::Reply(describe(n)),
            }
        }),
    )
    .await;
    let client = Client::connect(f.addr.to_string(), config()).await.unwrap();
    let admin = client.admin();
    let hang = tokio::spawn({
        let admin = admin.clone();
        async move { admin.describe_topic("hang").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = admin.describe_topic("die").await.unwrap_err();
    assert!(matches!(err, ClientError::Disconnected(_)), "{err}");
    assert!(err.is_retriable());
    let err = hang.await.unwrap().unwrap_err();
    assert!(
        matches!(err, ClientError::Disconnected(_)),
        "pending: {err}"
    );

    assert_eq!(admin.describe_topic("again").await.unwrap().name, "again");
    assert_eq!(f.connections.load(Ordering::SeqCst), 2);

    // A frame over the client's receive limit ends the connection as a protocol error.
    let err = admin.describe_topic("huge").await.unwrap_err();
    assert!(matches!(err, ClientError::Protocol(_)), "{err}");
    assert_eq!(admin.describe_topic("after").await.unwrap().name, "after");
    assert_eq!(f.connections.load(Ordering::SeqCst), 3);

    client.close();
    assert!(matches!(
        admin.describe_topic("x").await,
        Err(ClientError::Closed)
    ));
}

#[tokio::test]
async fn server_errors_keep_their_code() {
    let f = fake(
        limits(),
        handler(|_| async move {
            Action::Reply(Response::DescribeTopic(v1::DescribeTopicResponse {
                status: Some(v1::Status::new(
                    v1::ErrorCode::UnknownTopic,
                    "no such topic",
                )),
                topic: None,
            }))
        }),
    )
    .await;
    let client = Client::connect(f.addr.to_string(), config()).await.unwrap();
    let err = client.admin().describe_topic("nope").await.unwrap_err();
    assert_eq!(err.server_code(), Some(v1::ErrorCode::UnknownTopic));
    assert!(!err.is_retriable());
}

#[tokio::test]
async fn connect_errors_name_the_address() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = Client::connect(addr.to_string(), config())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    assert!(err.to_string().contains(&addr.to_string()));
}

/// Records (partition, acks, values) of every produce request the fake receives.
type Produced = Arc<Mutex<Vec<(u32, i32, Vec<Vec<u8>>)>>>;

async fn produce_fake(partitions: u32, fail_first: u32) -> (Fake, Produced) {
    let produced: Produced = Arc::default();
    let failures = Arc::new(AtomicU32::new(fail_first));
    let next = Arc::new(Mutex::new(vec![0i64; partitions as usize]));
    let p2 = produced.clone();
    let f = fake(
        limits(),
        handler(move |req| {
            let (produced, failures, next) = (p2.clone(), failures.clone(), next.clone());
            async move {
                match req {
                    Request::Metadata(m) => Action::Reply(metadata(&m.topics[0], partitions)),
                    Request::Produce(p) => {
                        if failures
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok()
                        {
                            return Action::Reply(Response::Produce(v1::ProduceResponse {
                                status: Some(v1::Status::new(v1::ErrorCode::NotLeader, "moving")),
                                ..Default::default()
                            }));
                        }
                        let values: Vec<Vec<u8>> = weir_record::records(&p.records)
                            .unwrap()
                            .map(|r| r.unwrap().value.unwrap().to_vec())
                            .collect();
                        let n = values.len() as i64;
                        produced.lock().push((p.partition, p.acks, values));
                        let base = {
                            let mut next = next.lock();
                            let b = next[p.partition as usize];
                            next[p.partition as usize] += n;
                            b
                        };
                        if p.acks == v1::Acks::None as i32 {
                            Action::NoReply
                        } else {
                            Action::Reply(produce_ok(base))
                        }
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }),
    )
    .await;
    (f, produced)
}

#[tokio::test]
async fn producer_batches_within_linger_and_numbers_records() {
    let (f, produced) = produce_fake(1, 0).await;
    let client = Client::connect(f.addr.to_string(), config()).await.unwrap();
    let mut pc = ProducerConfig::default();
    pc.linger_ms = 200;
    let producer = client.producer(pc).unwrap();
    // The first send learns the partition count; the rest enqueue at once.
    let first = producer.send_async(ProducerRecord::new("t").with_value("v0"));
    let first = tokio::spawn(first);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let rest: Vec<_> = (1..10)
        .map(|i| producer.send_async(ProducerRecord::new("t").with_value(format!("v{i}"))))
        .collect();
    let mut offsets = vec![first.await.unwrap().unwrap().offset];
    for r in rest {
        offsets.push(r.await.unwrap().offset);
    }
    assert_eq!(offsets, (0..10).collect::<Vec<i64>>());
    let produced = produced.lock().clone();
    assert_eq!(
        produced.len(),
        1,
        "one batch for ten records within the linger"
    );
    assert_eq!(produced[0].2.len(), 10);
    assert_eq!(produced[0].1, v1::Acks::All as i32);
}

#[tokio::test]
async fn producer_retries_retriable_errors_and_places_keys_like_kafka() {
    let (f, produced) = produce_fake(4, 2).await;
    let client = Client::connect(f.addr.to_string(), config()).await.unwrap();
    let mut pc = ProducerConfig::default();
    pc.linger_ms = 0;
    pc.retry_backoff_ms = 10;
    let producer = client.producer(pc).unwrap();
    let md = producer
        .send(ProducerRecord::new("t").with_key("foobar").with_value("x"))
        .await
        .unwrap();
    // toPositive(murmur2("foobar")) = 1357151166; 1357151166 % 4 = 2.
    assert_eq!(md.partition, 2);
    assert_eq!(md.offset, 0);
    let md = producer
        .send(ProducerRecord::new("t").with_partition(3).with_value("y"))
        .await
        .unwrap();
    assert_eq!((md.partition, md.offset), (3, 0));
    assert_eq!(produced.lock().len(), 2);
    let err = producer
        .send(ProducerRecord::new("t").with_partition(4).with_value("z"))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::InvalidArgument(_)), "{err}");
}

#[tokio::test]
async fn retries_are_bounded() {
    let (f, _) = produce_fake(1, 100).await;
    let client = Client::connect(f.addr.to_string(), config()).await.unwrap();
    let mut pc = ProducerConfig::default();
    pc.retries_max = 2;
    pc.retry_backoff_ms = 1;
    let producer = client.producer(pc).unwrap();
    let err = producer
        .send(ProducerRecord::new("t").with_value("x"))
        .await
        .unwrap_err();
    assert_eq!(err.server_code(), Some(v1::ErrorCode::NotLeader));
}

#[tokio::test]
async fn oneway_and_acks_none_need_no_response_and_callbacks_run_once() {
    let (f, produced) = produce_fake(1, 0).await;
    let client = Client::connect(f.addr.to_string(), config()).await.unwrap();
    let mut pc = ProducerConfig::default();
    pc.linger_ms = 0;
    let producer = client.producer(pc.clone()).unwrap();
    producer
        .send_oneway(ProducerRecord::new("t").with_value("fire"))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    producer
        .send_with_callback(ProducerRecord::new("t").with_value("cb"), move |r| {
            tx.send(r).unwrap();
        })
        .await;
    let md = rx.await.unwrap().unwrap();
    // One-way records travel in their own batches, so the two may land in either order.
    assert!(md.offset == 0 || md.offset == 1, "{md:?}");
    producer.flush().await;

    pc.acks = Acks::None;
    let none = client.producer(pc).unwrap();
    let md = none
        .send(ProducerRecord::new("t").with_value("n"))
        .await
        .unwrap();
    assert_eq!(md.offset, -1);
    none.close().await;
    let err = none
        .send(ProducerRecord::new("t").with_value("late"))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Closed));
    // Acks none completes once the frame is queued; give the fake time to read it.
    for _ in 0..100 {
        if produced.lock().len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let produced = produced.lock().clone();
    let acks: Vec<i32> = produced.iter().map(|p| p.1).collect();
    assert_eq!(acks.len(), 3);
    assert_eq!(
        acks.iter().filter(|&&a| a == v1::Acks::None as i32).count(),
        2
    );
}

#[tokio::test]
async fn back_pressure_bounds_the_buffer_and_interceptors_see_everything() {
    struct Count {
        sent: AtomicU32,
        acked: AtomicU32,
        failed: AtomicU32,
    }
    impl weir_client::ProducerInterceptor for Count {
        fn on_send(&self, r: &mut ProducerRecord) {
            self.sent.fetch_add(1, Ordering::SeqCst);
            r.headers
                .push(("weir.test".into(), Bytes::from_static(b"1")));
        }
        fn on_ack(&self, r: Result<&weir_client::RecordMetadata, &ClientError>) {
            match r {
                Ok(_) => self.acked.fetch_add(1, Ordering::SeqCst),
                Err(_) => self.failed.fetch_add(1, Ordering::SeqCst),
            };
        }
    }
    let (f, produced) = produce_fake(2, 0).await;
    let client = Client::connect(f.addr.to_string(), config()).await.unwrap();
    let count = Arc::new(Count {
        sent: AtomicU32::new(0),
        acked: AtomicU32::new(0),
        failed: AtomicU32::new(0),
    });
    let mut pc = ProducerConfig::default().interceptor(count.clone());
    pc.linger_ms = 1;
    pc.batch_bytes_max = 4096;
    pc.buffer_bytes_max = 4096;
    let producer = client.producer(pc).unwrap();
    let value = vec![b'x'; 1000];
    for _ in 0..50 {
        producer
            .send_with_callback(ProducerRecord::new("t").with_value(value.clone()), |r| {
                r.unwrap();
            })
            .await;
    }
    producer.flush().await;
    assert_eq!(count.sent.load(Ordering::SeqCst), 50);
    assert_eq!(count.acked.load(Ordering::SeqCst), 50);
    let produced = produced.lock().clone();
    let total: usize = produced.iter().map(|p| p.2.len()).sum();
    assert_eq!(total, 50);
    // With 4 KiB of buffer, no batch can hold more than three 1 KB records.
    assert!(produced.iter().all(|p| p.2.len() <= 3), "{produced:?}");
    let err = producer
        .send(ProducerRecord::new("t").with_value(vec![0u8; 5000]))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::InvalidArgument(_)), "{err}");
    assert_eq!(count.failed.load(Ordering::SeqCst), 1);
}
