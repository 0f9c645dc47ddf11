//! Limits under pressure: a flood of connections, a client that sends but never reads,
//! and consumers far behind while producers write. The server must stay within its
//! limits, refuse cleanly, and keep serving everyone else.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use weir_proto::{Request, Response, decode_frame, v1};

use crate::harness::{fetch_request, produce, rss_kib, server_pid};
use crate::support::{RawClient, ServerProcess};

fn start_with_config(dir: &std::path::Path, toml: &str) -> (ServerProcess, std::path::PathBuf) {
    let config = dir.join("weir.toml");
    std::fs::write(&config, toml).expect("write config");
    let data = dir.join("data");
    let config = config.to_str().expect("utf-8 path").to_owned();
    (
        ServerProcess::start_with(&data, &["--config", &config]),
        data,
    )
}

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
    let (server, data) = start_with_config(
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

/// A client pipelines thousands of 1 MiB fetches and never reads an answer. The server
/// reads at most `inflight_requests_max` of them, their answers wait in a channel of the
/// same capacity, and then it stops reading that socket: its memory grows by about
/// 2 × inflight × 1 MiB, not by thousands of MiB. Other clients are served meanwhile.
#[test]
fn a_client_that_never_reads_cannot_grow_the_server_memory() {
    const INFLIGHT: u64 = 8;
    const FETCH_MIB: u64 = 1;
    const REQUESTS: usize = 4000;
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, data) = start_with_config(
        dir.path(),
        &format!("[limits]\ninflight_requests_max = {INFLIGHT}\n"),
    );
    let pid = server_pid(&data);
    let mut c = RawClient::connect(server.addr).expect("connect");
    c.create_topic("big", 1);
    let mib = vec![b'x'; 1 << 20];
    for _ in 0..16 {
        let (st, _) = produce(&mut c, "big", 0, std::slice::from_ref(&mib));
        assert!(st.is_ok(), "{st:?}");
    }
    // Warm up the read path once, so the baseline includes what any fetch allocates.
    c.call(&fetch_request("big", 0, 0, (FETCH_MIB << 20) as u32))
        .expect("warm-up fetch");
    let rss_before = rss_kib(pid);

    let mut stuck = RawClient::connect(server.addr).expect("connect");
    let sent = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (sent, done) = (sent.clone(), done.clone());
        std::thread::spawn(move || {
            for i in 0..REQUESTS {
                // A different offset each time: nothing can be shared between answers.
                let req = fetch_request("big", 0, (i % 16) as i64, (FETCH_MIB << 20) as u32);
                if stuck.send(&req).is_err() {
                    break;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            done.store(true, Ordering::Relaxed);
            stuck // keep the socket open, unread, until the test is done with it
        })
    };
    // Let the server take whatever it will take.
    let mut rss_peak = rss_before;
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        rss_peak = rss_peak.max(rss_kib(pid));
    }
    // Meanwhile another client is served normally.
    let mut other = RawClient::connect(server.addr).expect("connect");
    let (st, _) = produce(&mut other, "big", 0, &[b"still served".to_vec()]);
    assert!(st.is_ok());
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(100));
        rss_peak = rss_peak.max(rss_kib(pid));
    }
    let growth_mib = rss_peak.saturating_sub(rss_before) / 1024;
    let sent_n = sent.load(Ordering::Relaxed);
    eprintln!(
        "never-reading client: {sent_n} fetches of {FETCH_MIB} MiB sent (writer {}); server RSS \
         {rss_before} KiB -> peak {rss_peak} KiB (+{growth_mib} MiB) with inflight_requests_max \
         = {INFLIGHT}",
        if done.load(Ordering::Relaxed) {
            "finished"
        } else {
            "blocked by back-pressure"
        },
    );
    assert!(sent_n > 100, "the client sent too little to prove anything");
    // The promise: answers in flight plus answers queued, each at most one fetch response,
    // plus the socket writer's buffer — with room for allocator slack. Unbounded, this
    // would be `sent_n` MiB.
    let bound_mib = 4 * (2 * INFLIGHT * FETCH_MIB) + 16;
    assert!(
        growth_mib <= bound_mib,
        "server memory grew by {growth_mib} MiB for a client that never reads \
         (bound {bound_mib} MiB, {sent_n} requests sent)"
    );
    let mut server = server;
    assert!(server.is_running());
    drop(server); // kills the server, which unblocks the writer thread
    let _ = writer.join();
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
/// is asserted beyond liveness; the latencies are printed for comparison.
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
    let catching_up = {
        let (addr, stop) = (server.addr, stop.clone());
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
    let loaded = produce_latencies(server.addr, "lag", 200);
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
