//! Produce throughput of the native and the Kafka listener of one running `weir server`,
//! on the same workload: identical record batches (built once), the same partitions, the
//! same number of connections and requests in flight. Only the protocol differs, so the
//! difference is the listener's cost (framing, decoding, dispatch, encoding).
//!
//! ```text
//! cargo run --release -p weir-kafka --example listener_bench -- \
//!     --native 127.0.0.1:6086 --kafka 127.0.0.1:9092 [--seconds 10] [--connections 4] \
//!     [--inflight 8] [--partitions 4] [--batch-records 100] [--record-bytes 1000] \
//!     [--acks all|leader] [--rounds 3] [--server-pid PID] [--only native|kafka]
//! ```
//!
//! With `--server-pid`, it also reports the server's CPU time (user + system, from
//! `/proc/PID/stat`) per GB produced: on a shared machine that is steadier than MB/s.
//!
//! Runs alternate between the protocols (native, kafka, native, …) so that disk and cache
//! effects fall on both; each run writes to a fresh topic. Prints MB/s of record batch
//! bytes acknowledged, and requests/s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use weir_proto::{Request, Response, v1};

#[derive(Debug, Clone)]
struct Args {
    native: SocketAddr,
    kafka: SocketAddr,
    seconds: u64,
    connections: usize,
    inflight: usize,
    partitions: u32,
    batch_records: usize,
    record_bytes: usize,
    acks_all: bool,
    rounds: usize,
    server_pid: Option<u32>,
    only: Option<Proto>,
}

fn parse_args() -> Args {
    let mut a = Args {
        native: "127.0.0.1:6086".parse().expect("addr"),
        kafka: "127.0.0.1:9092".parse().expect("addr"),
        seconds: 10,
        connections: 4,
        inflight: 8,
        partitions: 4,
        batch_records: 100,
        record_bytes: 1000,
        acks_all: true,
        rounds: 3,
        server_pid: None,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--native" => a.native = v.parse().expect("--native HOST:PORT"),
            "--kafka" => a.kafka = v.parse().expect("--kafka HOST:PORT"),
            "--seconds" => a.seconds = v.parse().expect("--seconds N"),
            "--connections" => a.connections = v.parse().expect("--connections N"),
            "--inflight" => a.inflight = v.parse().expect("--inflight N"),
            "--partitions" => a.partitions = v.parse().expect("--partitions N"),
            "--batch-records" => a.batch_records = v.parse().expect("--batch-records N"),
            "--record-bytes" => a.record_bytes = v.parse().expect("--record-bytes N"),
            "--acks" => a.acks_all = v == "all",
            "--rounds" => a.rounds = v.parse().expect("--rounds N"),
            "--server-pid" => a.server_pid = Some(v.parse().expect("--server-pid PID")),
            "--only" => {
                a.only = Some(if v == "native" {
                    Proto::Native
                } else {
                    Proto::Kafka
                })
            }
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// One uncompressed batch of `records` records of `bytes` bytes each.
fn batch(records: usize, bytes: usize) -> Bytes {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let value = vec![b'x'; bytes];
    let mut b = weir_record::BatchBuilder::new(now);
    for _ in 0..records {
        b.push(weir_record::Record {
            timestamp_ms: now,
            key: None,
            value: Some(&value),
            headers: &[],
        });
    }
    b.finish().freeze()
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    // USER_HZ is 100 on Linux.
    ticks / 100.0
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Proto {
    Native,
    Kafka,
}

/// Encodes one produce request of `records` to `topic`/`partition`.
fn encode(
    proto: Proto,
    id: u32,
    topic: &str,
    partition: u32,
    acks_all: bool,
    records: &Bytes,
) -> BytesMut {
    let mut out = BytesMut::with_capacity(records.len() + 256);
    match proto {
        Proto::Native => {
            let req = Request::Produce(v1::ProduceRequest {
                topic: topic.to_owned(),
                partition,
                acks: if acks_all {
                    v1::Acks::All
                } else {
                    v1::Acks::Leader
                } as i32,
                timeout_ms: 30_000,
                records: records.clone(),
            });
            weir_proto::encode_request(&mut out, id, &req);
        }
        Proto::Kafka => {
            let version = 9;
            let mut p = PartitionProduceData::default();
            p.index = partition as i32;
            p.records = Some(records.clone());
            let mut t = TopicProduceData::default();
            t.name = TopicName(StrBytes::from_string(topic.to_owned()));
            t.partition_data = vec![p];
            let mut r = ProduceRequest::default();
            r.transactional_id = None;
            r.acks = if acks_all { -1 } else { 1 };
            r.timeout_ms = 30_000;
            r.topic_data = vec![t];
            let mut h = RequestHeader::default();
            h.request_api_key = 0;
            h.request_api_version = version;
            h.correlation_id = id as i32;
            h.client_id = Some(StrBytes::from_static_str("bench"));
            let mut body = BytesMut::new();
            h.encode(&mut body, ProduceRequest::header_version(version))
                .expect("header");
            r.encode(&mut body, version).expect("request");
            out.put_i32(body.len() as i32);
            out.put_slice(&body);
        }
    }
    out
}

/// Reads one response and checks that it succeeded.
async fn read_response(proto: Proto, rd: &mut tokio::net::tcp::OwnedReadHalf, buf: &mut BytesMut) {
    match proto {
        Proto::Native => loop {
            if let Some(frame) = weir_proto::decode_frame(buf, 1 << 30).expect("frame") {
                let Response::Produce(p) = Response::decode(&frame).expect("response") else {
                    panic!("not a produce response")
                };
                assert!(p.status.unwrap_or_default().is_ok(), "produce failed");
                return;
            }
            if rd.read_buf(buf).await.expect("read") == 0 {
                panic!("server closed the connection");
            }
        },
        Proto::Kafka => loop {
            if buf.len() >= 4 {
                let size = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                if buf.len() >= 4 + size {
                    buf.advance(4);
                    let mut frame = buf.split_to(size).freeze();
                    ResponseHeader::decode(&mut frame, ProduceResponse::header_version(9))
                        .expect("header");
                    let r = ProduceResponse::decode(&mut frame, 9).expect("response");
                    let code = r.responses[0].partition_responses[0].error_code;
                    assert_eq!(code, 0, "produce failed");
                    return;
                }
            }
            if rd.read_buf(buf).await.expect("read") == 0 {
                panic!("server closed the connection");
            }
        },
    }
}

/// One native admin request, which must succeed.
async fn admin(native: SocketAddr, req: Request) {
    let mut s = TcpStream::connect(native).await.expect("connect");
    let mut out = BytesMut::new();
    weir_proto::encode_request(&mut out, 1, &req);
    s.write_all(&out).await.expect("write");
    let mut buf = BytesMut::new();
    loop {
        if let Some(f) = weir_proto::decode_frame(&mut buf, 1 << 30).expect("frame") {
            let ok = match Response::decode(&f).expect("decode") {
                Response::CreateTopic(r) => r.status.unwrap_or_default().is_ok(),
                Response::DeleteTopic(r) => r.status.unwrap_or_default().is_ok(),
                other => panic!("unexpected {other:?}"),
            };
            assert!(ok, "admin request failed");
            return;
        }
        assert!(s.read_buf(&mut buf).await.expect("read") > 0, "closed");
    }
}

/// One run: `connections` connections produce for `seconds`; returns (bytes, requests).
async fn run(a: &Args, proto: Proto, topic: &str, records: &Bytes) -> (u64, u64, Duration) {
    let bytes = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let until = start + Duration::from_secs(a.seconds);
    let mut tasks = Vec::new();
    for c in 0..a.connections {
        let addr = if proto == Proto::Native {
            a.native
        } else {
            a.kafka
        };
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (mut rd, mut wr) = stream.into_split();
        let window = Arc::new(Semaphore::new(a.inflight));
        let partition = c as u32 % a.partitions;
        let topic = topic.to_owned();
        let batch_len = records.len() as u64;
        let records = records.clone();
        let acks_all = a.acks_all;
        let sent = Arc::new(AtomicU64::new(0));
        let (bytes, requests) = (bytes.clone(), requests.clone());
        let writer = {
            let window = window.clone();
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut id = 1u32;
                while Instant::now() < until {
                    window.acquire().await.expect("open").forget();
                    let frame = encode(proto, id, &topic, partition, acks_all, &records);
                    wr.write_all(&frame).await.expect("write");
                    sent.fetch_add(1, Ordering::Relaxed);
                    id += 1;
                }
                wr
            })
        };
        tasks.push(tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            let mut done = 0u64;
            loop {
                if done == sent.load(Ordering::Relaxed) {
                    if writer.is_finished() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                read_response(proto, &mut rd, &mut buf).await;
                done += 1;
                window.add_permits(1);
                bytes.fetch_add(batch_len, Ordering::Relaxed);
                requests.fetch_add(1, Ordering::Relaxed);
            }
            drop(writer.await);
        }));
    }
    for t in tasks {
        t.await.expect("connection task");
    }
    (
        bytes.load(Ordering::Relaxed),
        requests.load(Ordering::Relaxed),
        start.elapsed(),
    )
}

#[tokio::main]
async fn main() {
    let a = parse_args();
    let records = batch(a.batch_records, a.record_bytes);
    println!(
        "workload: {} connections x {} in flight, batches of {} records x {} B ({} B), {} partitions, acks={}, {} s per run",
        a.connections,
        a.inflight,
        a.batch_records,
        a.record_bytes,
        records.len(),
        a.partitions,
        if a.acks_all { "all" } else { "leader" },
        a.seconds
    );
    let stamp = std::process::id();
    let mut totals = [(0.0f64, 0usize); 2];
    let mut cpu = [(0.0f64, 0u64); 2];
    for round in 0..a.rounds {
        for (i, proto) in [Proto::Native, Proto::Kafka].into_iter().enumerate() {
            if a.only.is_some_and(|o| o != proto) {
                continue;
            }
            let topic = format!("bench-{stamp}-{round}-{proto:?}").to_lowercase();
            admin(
                a.native,
                Request::CreateTopic(v1::CreateTopicRequest {
                    name: topic.clone(),
                    partitions: a.partitions,
                    configs: Default::default(),
                }),
            )
            .await;
            let cpu_before = a.server_pid.map(cpu_seconds);
            let (bytes, requests, took) = run(&a, proto, &topic, &records).await;
            let mb_s = bytes as f64 / took.as_secs_f64() / 1e6;
            let cpu_note = match (a.server_pid, cpu_before) {
                (Some(pid), Some(before)) => {
                    let used = cpu_seconds(pid) - before;
                    cpu[i].0 += used;
                    cpu[i].1 += bytes;
                    format!(", server {:.2} CPU-s per GB", used / (bytes as f64 / 1e9))
                }
                _ => String::new(),
            };
            println!(
                "round {round} {proto:?}: {mb_s:.1} MB/s, {:.0} requests/s{cpu_note}",
                requests as f64 / took.as_secs_f64()
            );
            // Each run starts from an empty topic, and the disk does not fill up.
            admin(
                a.native,
                Request::DeleteTopic(v1::DeleteTopicRequest {
                    name: topic.clone(),
                }),
            )
            .await;
            totals[i].0 += mb_s;
            totals[i].1 += 1;
        }
    }
    if a.only.is_some() {
        return;
    }
    let native = totals[0].0 / totals[0].1 as f64;
    let kafka = totals[1].0 / totals[1].1 as f64;
    println!(
        "mean: native {native:.1} MB/s, kafka {kafka:.1} MB/s, kafka/native {:.2}",
        kafka / native
    );
    if a.server_pid.is_some() {
        let per_gb = |(s, b): (f64, u64)| s / (b as f64 / 1e9);
        println!(
            "server CPU per GB: native {:.2} s, kafka {:.2} s, kafka/native {:.2}",
            per_gb(cpu[0]),
            per_gb(cpu[1]),
            per_gb(cpu[1]) / per_gb(cpu[0])
        );
    }
}
