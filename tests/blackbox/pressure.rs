//! Limits under pressure: a flood of connections, a client that sends but never reads,
//! and consumers far behind while producers write. The server must stay within its
//! limits, refuse cleanly, and keep serving everyone else.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use weir_proto::{Request, Response, decode_frame, v1};

use crate::harness::{fetch_request, produce, rss_kib, server_pid};
use crate::support::{KafkaServer, RawClient, ServerProcess, kafka_fetch_v4, kafka_frame};

/// Whether the connection is served: false if the server refused it (an error frame with
/// correlation id 0, then close).
fn list_topics(c: &mut RawClient) -> bool {
    if c.send(&Request::ListTopics(v1::ListTopicsRequest {}))
        .is_err()
    {
        return false;
    }
    matches!(c.recv(), Ok((_, Response::ListTopics(_))))
}

/// Connects and reads until the server closes; returns the error code it sent, if any.
fn refused_code(addr: SocketAddr) -> Option<v1::ErrorCode> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut got = BytesMut::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("a refused connection must be closed, not left open: {e}"),
        }
    }
    let frame = decode_frame(&mut got, 1 << 20).ok()??;
    match Response::decode(&frame).ok()? {
        Response::Error(e) => Some(e.status.unwrap_or_default().error_code()),
        _ => None,
    }
}

#[test]
fn a_flood_of_connections_beyond_the_limit_is_refused_cleanly() {
    const LIMIT: usize = 50;
    const FLOOD: usize = 500;
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, data) = ServerProcess::start_with_config(
        dir.path(),
        &format!("[limits]\nconnections_max = {LIMIT}\n"),
    );
    let pid = server_pid(&data);
    let rss_before = rss_kib(pid);
    let mut held: Vec<RawClient> = (0..LIMIT)
        .map(|_| RawClient::connect(server.addr).expect("connect"))
        .collect();
    for c in &mut held {
        assert!(list_topics(c), "a connection within the limit is served");
    }

    // The rest of the flood arrives at once, from several threads.
    let refused = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..10)
        .map(|_| {
            let (addr, refused) = (server.addr, refused.clone());
            std::thread::spawn(move || {
                for _ in 0..(FLOOD - LIMIT) / 10 {
                    let code = refused_code(addr);
                    assert_eq!(code, Some(v1::ErrorCode::TooManyConnections));
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("flood thread");
    }
    assert_eq!(refused.load(Ordering::Relaxed), FLOOD - LIMIT);
    let rss_after = rss_kib(pid);
    eprintln!(
        "{FLOOD} connections against a limit of {LIMIT}: {} refused with \
         TOO_MANY_CONNECTIONS; server RSS {rss_before} KiB -> {rss_after} KiB",
        FLOOD - LIMIT
    );

    // Everyone admitted is still served; once they leave, new connections get in again.
    for c in &mut held {
        assert!(list_topics(c));
    }
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut admitted = Vec::new();
    while admitted.len() < LIMIT {
        let mut c = RawClient::connect(server.addr).expect("connect");
        if list_topics(&mut c) {
            admitted.push(c); // keeps its slot
        } else {
            assert!(Instant::now() < deadline, "slots were not given back");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let mut server = server;
    assert!(server.is_running());
}

/// What a client that pipelines requests and never reads an answer does to the server's
/// memory: a thread writes `frame(i)` for i in 0..`requests` on one connection to `addr`
/// (until the server stops reading and TCP blocks it), the server's RSS is sampled for
/// 4 s, `still_served` checks meanwhile that another client is served, then the stuck
/// connection is shut down. Returns the RSS growth over the RSS at the start (MiB) and how
/// many requests were written.
fn never_reading_client(
    pid: u32,
    addr: SocketAddr,
    requests: usize,
    frame: impl Fn(usize) -> Vec<u8> + Send + 'static,
    still_served: impl FnOnce(),
) -> (u64, usize) {
    let rss_before = rss_kib(pid);
    let mut stuck = TcpStream::connect(addr).expect("connect");
    let stuck_handle = stuck.try_clone().expect("clone socket");
    let sent = Arc::new(AtomicUsize::new(0));
    let writer = {
        let sent = sent.clone();
        std::thread::spawn(move || {
            for i in 0..requests {
                if stuck.write_all(&frame(i)).is_err() {
                    break;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            // Keep the socket open, unread, until the test shuts it down.
            let _ = stuck.read(&mut [0u8; 1]);
        })
    };
    let mut rss_peak = rss_before;
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        rss_peak = rss_peak.max(rss_kib(pid));
    }
    still_served();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(100));
        rss_peak = rss_peak.max(rss_kib(pid));
    }
    let sent_n = sent.load(Ordering::Relaxed);
    let _ = stuck_handle.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    let growth_mib = rss_peak.saturating_sub(rss_before) / 1024;
    eprintln!(
        "never-reading client: {sent_n} of {requests} requests written; server RSS \
         {rss_before} KiB -> peak {rss_peak} KiB (+{growth_mib} MiB)"
    );
    (growth_mib, sent_n)
}

/// Starts a server with `toml`, writes 16 one-MiB records to `big`/0 and fetches one once
/// (so the baseline includes what any fetch allocates).
fn server_with_backlog(dir: &std::path::Path, toml: &str) -> (ServerProcess, u32) {
    let (server, data) = ServerProcess::start_with_config(dir, toml);
    let pid = server_pid(&data);
    let mut c = RawClient::connect(server.addr).expect("connect");
    c.create_topic("big", 1);
    let mib = vec![b'x'; 1 << 20];
    for _ in 0..16 {
        let (st, _) = produce(&mut c, "big", 0, std::slice::from_ref(&mib));
        assert!(st.is_ok(), "{st:?}");
    }
    c.call(&fetch_request("big", 0, 0, 1 << 20))
        .expect("warm-up fetch");
    (server, pid)
}

/// A native fetch of up to 1 MiB from an offset in 0..16 (a different offset each time:
/// nothing can be shared between answers), as a frame.
fn native_fetch_frame(i: usize) -> Vec<u8> {
    let mut out = BytesMut::new();
    let req = fetch_request("big", 0, (i % 16) as i64, 1 << 20);
    weir_proto::encode_request(&mut out, i as u32 + 1, &req);
    out.to_vec()
}

fn produce_still_served(addr: SocketAddr) -> impl FnOnce() {
    move || {
        let mut other = RawClient::connect(addr).expect("connect");
        let (st, _) = produce(&mut other, "big", 0, &[b"still served".to_vec()]);
        assert!(st.is_ok(), "{st:?}");
    }
}

/// Runs [`never_reading_client`] with 4,000 pipelined 1 MiB fetches on the native port of
/// a server configured by `toml`, and checks the growth against `bound_mib`.
fn native_fetches_never_read(toml: &str, bound_mib: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, pid) = server_with_backlog(dir.path(), toml);
    let (growth_mib, sent) = never_reading_client(
        pid,
        server.addr,
        4000,
        native_fetch_frame,
        produce_still_served(server.addr),
    );
    assert_bounded(growth_mib, sent, bound_mib);
    assert!(server.is_running());
}

fn assert_bounded(growth_mib: u64, sent: usize, bound_mib: u64) {
    assert!(sent > 100, "the client sent too little to prove anything");
    assert!(
        growth_mib <= bound_mib,
        "server memory grew by {growth_mib} MiB (bound {bound_mib} MiB, {sent} requests sent)"
    );
}

/// A client pipelines thousands of 1 MiB fetches and never reads an answer. With few
/// requests allowed in flight, the server reads at most `inflight_requests_max` of them,
/// their answers wait for the writer, and then it stops reading that socket: its memory
/// grows by about 2 × inflight × 1 MiB (bound: that with room for allocator slack), not
/// by thousands of MiB.
#[test]
fn a_client_that_never_reads_cannot_grow_the_server_memory() {
    const INFLIGHT: u64 = 8;
    native_fetches_never_read(
        &format!("[limits]\ninflight_requests_max = {INFLIGHT}\n"),
        4 * (2 * INFLIGHT) + 16,
    );
}

/// The same with the default 256 requests in flight: the connection's byte budget
/// (`connection_buffer_bytes_max`, 8 MiB here) bounds it, with the request being read,
/// the writer's gathering and allocator slack. Without the budget, 256 answers of 1 MiB
/// in flight and as many queued would be up to 512 MiB.
#[test]
fn the_connection_buffer_budget_bounds_a_client_that_never_reads() {
    native_fetches_never_read(
        &format!(
            "[limits]\nconnection_buffer_bytes_max = {}\n",
            BUDGET_MIB << 20
        ),
        4 * BUDGET_MIB + 16,
    );
}

/// The per-connection byte budget the budget tests configure.
const BUDGET_MIB: u64 = 8;

/// A Kafka Fetch v4 request for `big`/0 from `offset`, up to 1 MiB, as a frame.
fn kafka_fetch_frame(correlation_id: i32, offset: i64) -> Vec<u8> {
    kafka_frame(
        1,
        4,
        correlation_id,
        &kafka_fetch_v4("big", offset, 1 << 20),
    )
}

/// The same on the Kafka port, whose answers must go out in request order: pipelined
/// fetches that are never read are bounded by the same budget.
#[test]
fn a_kafka_client_that_never_reads_cannot_grow_the_server_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let budget = (BUDGET_MIB << 20).to_string();
    let server = KafkaServer::start_env(
        &dir.path().join("data"),
        &[("WEIR_LIMITS__CONNECTION_BUFFER_BYTES_MAX", &budget)],
    );
    let pid = server.process.pid();
    let mut c = RawClient::connect(server.process.addr).expect("connect");
    c.create_topic("big", 1);
    let mib = vec![b'x'; 1 << 20];
    for _ in 0..16 {
        let (st, _) = produce(&mut c, "big", 0, std::slice::from_ref(&mib));
        assert!(st.is_ok(), "{st:?}");
    }
    // Warm up the Kafka read path once.
    {
        let mut k = TcpStream::connect(server.kafka_addr).expect("connect");
        k.write_all(&kafka_fetch_frame(1, 0)).expect("send");
        let mut size = [0u8; 4];
        k.read_exact(&mut size).expect("answer size");
        let mut answer = vec![0u8; u32::from_be_bytes(size) as usize];
        k.read_exact(&mut answer).expect("answer");
        assert!(answer.len() > 1 << 20, "the warm-up fetch returned records");
    }
    let (growth_mib, sent) = never_reading_client(
        pid,
        server.kafka_addr,
        4000,
        |i| kafka_fetch_frame(i as i32 + 2, (i % 16) as i64),
        produce_still_served(server.process.addr),
    );
    assert_bounded(growth_mib, sent, 4 * BUDGET_MIB + 16);
    let mut server = server;
    assert!(server.process.is_running());
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

/// Acks=all produce latencies of `n` small batches to `topic`/0, sorted.
fn produce_latencies(addr: SocketAddr, topic: &str, n: usize) -> Vec<Duration> {
    let mut c = RawClient::connect(addr).expect("connect");
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let (st, _) = produce(&mut c, topic, 0, &[format!("small-{i}").into_bytes()]);
        let took = t.elapsed();
        assert!(st.is_ok(), "{st:?}");
        // Liveness, not speed: a producer is never starved for long.
        assert!(took < Duration::from_secs(10), "a produce took {took:?}");
        out.push(took);
    }
    out.sort();
    out
}

/// Two consumers far behind — one re-reading a 64 MiB backlog as fast as it can, one
/// that asks and never reads — do not stall a producer to the same partition. No timing
/// is asserted beyond liveness; the latencies are printed for comparison. The producer
/// goes on until the reader has read the whole backlog once (or a deadline passes), so
/// that both really ran side by side however fast produces are.
#[test]
fn consumers_far_behind_do_not_stall_producers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data);
    let mut c = RawClient::connect(server.addr).expect("connect");
    c.create_topic("lag", 1);
    let mib = vec![b'b'; 1 << 20];
    for _ in 0..64 {
        let (st, _) = produce(&mut c, "lag", 0, std::slice::from_ref(&mib));
        assert!(st.is_ok());
    }
    let alone = produce_latencies(server.addr, "lag", 200);

    let stop = Arc::new(AtomicBool::new(false));
    let read_bytes = Arc::new(AtomicUsize::new(0));
    let catching_up = {
        let (addr, stop, read_bytes) = (server.addr, stop.clone(), read_bytes.clone());
        std::thread::spawn(move || {
            let mut c = RawClient::connect(addr).expect("connect");
            let mut bytes = 0usize;
            let mut offset = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let resp = c
                    .call(&fetch_request("lag", 0, offset, 16 << 20))
                    .expect("fetch");
                let Response::Fetch(f) = resp else {
                    panic!("unexpected {resp:?}")
                };
                let p = &f.partitions[0];
                bytes += p.records.len();
                read_bytes.store(bytes, Ordering::Relaxed);
                let mut next = offset;
                for b in weir_record::BatchIter::new(&p.records) {
                    let (h, _) = b.expect("whole batch");
                    next = h.last_offset() + 1;
                }
                // Start over at the end: always far behind.
                offset = if next >= 64 { 0 } else { next };
            }
            bytes
        })
    };
    // Four 16 MiB answers nobody reads (the server holds them: see the never-reading test).
    let mut stalled = RawClient::connect(server.addr).expect("connect");
    for _ in 0..4 {
        stalled
            .send(&fetch_request("lag", 0, 0, 16 << 20))
            .expect("send");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut loaded = produce_latencies(server.addr, "lag", 200);
    while read_bytes.load(Ordering::Relaxed) <= 64 << 20 && Instant::now() < deadline {
        loaded.extend(produce_latencies(server.addr, "lag", 50));
    }
    loaded.sort();
    stop.store(true, Ordering::Relaxed);
    let read = catching_up.join().expect("consumer");
    eprintln!(
        "produce latency alone p50 {:?} p99 {:?}; with consumers far behind (one read {} MiB \
         meanwhile, one stalled) p50 {:?} p99 {:?}",
        percentile(&alone, 0.5),
        percentile(&alone, 0.99),
        read >> 20,
        percentile(&loaded, 0.5),
        percentile(&loaded, 0.99),
    );
    assert!(read > 64 << 20, "the lagging consumer did read the backlog");
    drop(stalled);
}
