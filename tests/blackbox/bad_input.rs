//! Bad input from the network: the offending connection is closed or answered with a
//! specific error, and everyone else keeps being served.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::BytesMut;
use rand::{Rng, RngCore};
use weir_proto::{FrameHeader, Request, Response, decode_frame, v1};

use crate::harness::{fetch_request, rss_kib, server_pid};
use crate::support::{
    KafkaServer, RawClient, ServerProcess, batch_of, kafka_fetch_v4, kafka_frame,
};

fn produce_one(c: &mut RawClient, topic: &str, value: &[u8]) -> i64 {
    let resp = c
        .call(&Request::Produce(v1::ProduceRequest {
            topic: topic.into(),
            partition: 0,
            acks: v1::Acks::All as i32,
            timeout_ms: 0,
            records: batch_of(&[value.to_vec()]).freeze(),
        }))
        .expect("produce");
    let Response::Produce(r) = resp else {
        panic!("unexpected {resp:?}")
    };
    assert!(r.status.unwrap_or_default().is_ok());
    r.base_offset
}

/// Reads until the server closes the connection; panics if it stays open.
fn expect_closed(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("connection not closed: {e}"),
        }
    }
}

#[test]
fn random_bytes_close_that_connection_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = ServerProcess::start(&dir.path().join("data"));
    let mut good = RawClient::connect(server.addr).expect("connect");
    good.create_topic("t", 1);
    assert_eq!(produce_one(&mut good, "t", b"before"), 0);

    let mut rng = rand::rng();
    for i in 0..50 {
        let mut s = TcpStream::connect(server.addr).expect("connect");
        let mut noise = vec![0u8; rng.random_range(1..4096)];
        rng.fill_bytes(&mut noise);
        if i % 2 == 1 {
            // Our magic, then garbage: exercises the header checks past the magic.
            noise[0] = 0x57;
            if noise.len() > 1 {
                noise[1] = 0x45;
            }
        }
        let _ = s.write_all(&noise);
        let _ = s.shutdown(std::net::Shutdown::Write);
        expect_closed(&mut s);
    }
    assert!(server.is_running());
    assert_eq!(produce_one(&mut good, "t", b"after"), 1);
    let values: Vec<_> = good.read_all("t", 0).into_iter().map(|(_, v)| v).collect();
    assert_eq!(values, vec![b"before".to_vec(), b"after".to_vec()]);
}

/// How a frame is damaged: where its length field lies (big-endian, four bytes) and how
/// many bytes precede what it counts.
struct Framing {
    length_at: usize,
    header_bytes: usize,
}

/// `frame` damaged the `round`-th way: bytes changed; a four-byte window set to a huge
/// count; cut short (its length field kept true, so the damage reaches the decoders); or
/// replaced by noise.
fn damaged(frame: &[u8], round: usize, f: &Framing, rng: &mut impl Rng) -> Vec<u8> {
    let mut bytes = frame.to_vec();
    let body = f.header_bytes;
    match round % 4 {
        0 => {
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(body..bytes.len());
                bytes[at] = rng.random();
            }
        }
        1 => {
            let at = rng.random_range(body..bytes.len().saturating_sub(4).max(body + 1));
            let end = (at + 4).min(bytes.len());
            bytes[at..end].copy_from_slice(&[0x7f, 0xff, 0xff, 0xf0][..end - at]);
        }
        2 => {
            bytes.truncate(rng.random_range(body..bytes.len()));
            let len = (bytes.len() - f.header_bytes) as u32;
            bytes[f.length_at..f.length_at + 4].copy_from_slice(&len.to_be_bytes());
        }
        _ => {
            bytes = vec![0u8; rng.random_range(1..256)];
            rng.fill_bytes(&mut bytes);
        }
    }
    bytes
}

/// Sends `rounds` damaged copies of `valid` frames to `addr`, each on its own connection,
/// and checks that each is answered or closed, that the server (`pid`) survives with its
/// memory near where it started, and that `good` is still served.
fn damaged_requests_are_survived(
    addr: std::net::SocketAddr,
    pid: u32,
    valid: &[Vec<u8>],
    framing: &Framing,
    good: &mut RawClient,
) {
    const ROUNDS: usize = 400;
    let rss_before = rss_kib(pid);
    let mut rng = rand::rng();
    for round in 0..ROUNDS {
        let bytes = damaged(&valid[round % valid.len()], round, framing, &mut rng);
        let mut s = TcpStream::connect(addr).expect("connect");
        let _ = s.write_all(&bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        expect_closed(&mut s);
    }
    let rss_after = rss_kib(pid);
    eprintln!("{ROUNDS} damaged requests: server RSS {rss_before} KiB -> {rss_after} KiB");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "server memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    // Damaged produce requests that still decode may have been stored too.
    assert!(produce_one(good, "t", b"after") >= 1);
}

/// Valid Kafka requests (ApiVersions, Metadata, Fetch) damaged at random, and plain noise,
/// each on its own connection to the Kafka port: every connection is answered or closed,
/// the server keeps serving and its memory stays near where it started. A count taken at
/// face value would ask for GiBs: that is how fuzzing found ADR 0004's bug.
#[test]
fn mutated_kafka_requests_close_only_their_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A damaged fetch may ask to wait long for data; the connection closes once it is
    // answered, so keep that wait short.
    let mut server = KafkaServer::start_env(
        &dir.path().join("data"),
        &[("WEIR_LIMITS__FETCH_WAIT_MS_MAX", "500")],
    );
    let mut good = RawClient::connect(server.process.addr).expect("connect");
    good.create_topic("t", 1);
    assert_eq!(produce_one(&mut good, "t", b"before"), 0);
    let mut metadata_v1 = 1i32.to_be_bytes().to_vec();
    metadata_v1.extend_from_slice(&1i16.to_be_bytes());
    metadata_v1.push(b't');
    let valid = [
        kafka_frame(18, 0, 1, &[]),                            // ApiVersions v0
        kafka_frame(3, 1, 2, &metadata_v1),                    // Metadata v1, topic "t"
        kafka_frame(1, 4, 3, &kafka_fetch_v4("t", 0, 65_536)), // Fetch v4
    ];
    let framing = Framing {
        length_at: 0,
        header_bytes: 4,
    };
    let pid = server.process.pid();
    damaged_requests_are_survived(server.kafka_addr, pid, &valid, &framing, &mut good);
    assert!(server.process.is_running(), "the server survived");
}

/// The same on the native port: valid produce, fetch and create-topic requests damaged at
/// random, and noise. Damage that still frames is answered with an error or a result;
/// damage that does not closes the connection.
#[test]
fn mutated_native_requests_are_answered_or_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, data) =
        ServerProcess::start_with_config(dir.path(), "[limits]\nfetch_wait_ms_max = 500\n");
    let mut good = RawClient::connect(server.addr).expect("connect");
    good.create_topic("t", 1);
    assert_eq!(produce_one(&mut good, "t", b"before"), 0);
    let encode = |req: &Request| {
        let mut out = BytesMut::new();
        weir_proto::encode_request(&mut out, 9, req);
        out.to_vec()
    };
    let valid = [
        encode(&Request::Produce(v1::ProduceRequest {
            topic: "t".into(),
            partition: 0,
            acks: v1::Acks::All as i32,
            timeout_ms: 0,
            records: batch_of(&[b"damaged".to_vec(), b"twice".to_vec()]).freeze(),
        })),
        encode(&fetch_request("t", 0, 0, 65_536)),
        encode(&Request::CreateTopic(v1::CreateTopicRequest {
            name: "u".into(),
            partitions: 2,
            ..Default::default()
        })),
    ];
    let framing = Framing {
        length_at: 8,
        header_bytes: weir_proto::HEADER_BYTES,
    };
    let pid = server_pid(&data);
    damaged_requests_are_survived(server.addr, pid, &valid, &framing, &mut good);
    assert!(server.is_running(), "the server survived");
}

#[test]
fn oversized_frame_gets_frame_too_large_then_close() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(&dir.path().join("data"));
    let mut s = TcpStream::connect(server.addr).expect("connect");
    let mut head = BytesMut::new();
    FrameHeader {
        version: 1,
        kind: 7,
        correlation_id: 42,
        body_len: u32::MAX,
    }
    .encode(&mut head);
    s.write_all(&head).expect("write");
    let mut got = BytesMut::from(&expect_closed(&mut s)[..]);
    let frame = decode_frame(&mut got, 1 << 20)
        .expect("valid")
        .expect("a frame");
    assert_eq!(frame.header.correlation_id, 42);
    let Response::Error(e) = Response::decode(&frame).expect("decodes") else {
        panic!("expected an error frame");
    };
    assert_eq!(
        e.status.unwrap_or_default().error_code(),
        v1::ErrorCode::FrameTooLarge
    );
}

#[test]
fn unknown_kind_and_bad_batches_get_specific_errors_and_keep_the_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(&dir.path().join("data"));
    let mut c = RawClient::connect(server.addr).expect("connect");
    c.create_topic("t", 1);

    // Unknown kind: answered with UNKNOWN_REQUEST_KIND, connection stays.
    let mut raw = TcpStream::connect(server.addr).expect("connect");
    let mut frame = BytesMut::new();
    FrameHeader {
        version: 1,
        kind: 0x55,
        correlation_id: 9,
        body_len: 0,
    }
    .encode(&mut frame);
    raw.write_all(&frame).expect("write");
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 1024];
    raw.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let f = loop {
        if let Some(f) = decode_frame(&mut buf, 1 << 20).expect("valid") {
            break f;
        }
        let n = raw.read(&mut chunk).expect("read");
        assert!(n > 0, "closed instead of answering");
        buf.extend_from_slice(&chunk[..n]);
    };
    let Response::Error(e) = Response::decode(&f).expect("decodes") else {
        panic!("expected an error frame");
    };
    assert_eq!(
        e.status.unwrap_or_default().error_code(),
        v1::ErrorCode::UnknownRequestKind
    );

    let produce = |c: &mut RawClient, records: bytes::Bytes, topic: &str, partition: u32| {
        let resp = c
            .call(&Request::Produce(v1::ProduceRequest {
                topic: topic.into(),
                partition,
                acks: v1::Acks::All as i32,
                timeout_ms: 0,
                records,
            }))
            .expect("produce");
        let Response::Produce(r) = resp else {
            panic!("unexpected {resp:?}")
        };
        r.status.unwrap_or_default().error_code()
    };
    let mut corrupt = batch_of(&[b"x".to_vec()]);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    assert_eq!(
        produce(&mut c, corrupt.freeze(), "t", 0),
        v1::ErrorCode::CorruptBatch
    );
    assert_eq!(
        produce(&mut c, bytes::Bytes::from_static(b"short"), "t", 0),
        v1::ErrorCode::CorruptBatch
    );
    assert_eq!(
        produce(&mut c, bytes::Bytes::new(), "t", 0),
        v1::ErrorCode::InvalidRequest
    );
    let ok = batch_of(&[b"x".to_vec()]).freeze();
    assert_eq!(
        produce(&mut c, ok.clone(), "nope", 0),
        v1::ErrorCode::UnknownTopic
    );
    assert_eq!(
        produce(&mut c, ok.clone(), "t", 7),
        v1::ErrorCode::UnknownPartition
    );
    assert_eq!(produce(&mut c, ok, "t", 0), v1::ErrorCode::None);
    // Nothing invalid reached the log.
    assert_eq!(c.read_all("t", 0).len(), 1);
}

#[test]
fn connection_and_inflight_limits_get_specific_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        "[limits]\nconnections_max = 2\ninflight_requests_max = 1\n",
    )
    .expect("write config");
    let config = config.to_str().expect("utf-8 path").to_owned();
    let server = ServerProcess::start_with(&dir.path().join("data"), &["--config", &config]);
    let mut first = RawClient::connect(server.addr).expect("connect");
    first.create_topic("t", 1);

    // Two requests pipelined with a limit of one in flight: the long-poll fetch holds the
    // slot, the second is refused with its own correlation id.
    let long_poll = Request::Fetch(v1::FetchRequest {
        max_wait_ms: 2_000,
        min_bytes: 1,
        max_bytes: 1024,
        partitions: vec![v1::FetchPartition {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            max_bytes: 1024,
        }],
    });
    let id_wait = first.send(&long_poll).expect("send");
    let id_refused = first
        .send(&Request::ListTopics(v1::ListTopicsRequest {}))
        .expect("send");
    let (got, resp) = first.recv().expect("refusal");
    assert_eq!(got, id_refused);
    let Response::Error(e) = resp else {
        panic!("expected an error frame, got {resp:?}")
    };
    assert_eq!(
        e.status.unwrap_or_default().error_code(),
        v1::ErrorCode::TooManyInflightRequests
    );
    let (got, resp) = first.recv().expect("long poll ends");
    assert_eq!(got, id_wait);
    assert!(matches!(resp, Response::Fetch(_)));

    // Connections: two allowed, the third is told why and closed.
    let _second = RawClient::connect(server.addr).expect("connect");
    std::thread::sleep(Duration::from_millis(200));
    let mut third = TcpStream::connect(server.addr).expect("tcp connect");
    let mut got = BytesMut::from(&expect_closed(&mut third)[..]);
    let frame = decode_frame(&mut got, 1 << 20)
        .expect("valid")
        .expect("a frame");
    let Response::Error(e) = Response::decode(&frame).expect("decodes") else {
        panic!("expected an error frame");
    };
    assert_eq!(
        e.status.unwrap_or_default().error_code(),
        v1::ErrorCode::TooManyConnections
    );
    // The first connection is unaffected.
    assert_eq!(produce_one(&mut first, "t", b"still served"), 0);
}
