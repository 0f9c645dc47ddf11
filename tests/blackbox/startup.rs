//! Start-up time with many partitions and much data: a measurement, not a CI test
//! (`#[ignore]`, no timed assertion). Run it with
//!
//! ```text
//! cargo test --release -p weir-cli --test blackbox startup -- --ignored --nocapture
//! ```
//!
//! `WEIR_STARTUP_PARTITIONS` (default 1000) and `WEIR_STARTUP_MIB_PER_PARTITION`
//! (default 3) size it. It fills the partitions, stops the server with SIGTERM (clean
//! shutdown: every log leaves its clean-shutdown marker), and times a restart; then kills
//! that server with SIGKILL (the markers were consumed by the restart, so the next open
//! must scan every active segment) and times the restart after the crash. With root it
//! also times both with the page cache dropped. Every partition's end offset is checked
//! after each restart.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use weir_proto::{Request, Response, v1};

use crate::support::{RawClient, ServerProcess, batch_of};

const TOPICS: u32 = 10;

fn env_u32(key: &str, default: u32) -> u32 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn topic(i: u32) -> String {
    format!("many-{i}")
}

/// Writes `mib` MiB to every partition over one connection per topic, pipelined.
fn fill(addr: SocketAddr, per_topic: u32, mib: u32) {
    let threads: Vec<_> = (0..TOPICS)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = RawClient::connect(addr).expect("connect");
                let values: Vec<Vec<u8>> = (0..16).map(|_| vec![b'd'; 64 * 1024]).collect();
                let records = batch_of(&values).freeze(); // one 1 MiB batch
                let mut pending = 0;
                for _ in 0..mib {
                    for p in 0..per_topic {
                        c.send(&Request::Produce(v1::ProduceRequest {
                            topic: topic(t),
                            partition: p,
                            acks: v1::Acks::All as i32,
                            timeout_ms: 0,
                            records: records.clone(),
                        }))
                        .expect("send");
                        pending += 1;
                        if pending == 32 {
                            check_produced(&mut c);
                            pending -= 1;
                        }
                    }
                }
                for _ in 0..pending {
                    check_produced(&mut c);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("filler");
    }
}

fn check_produced(c: &mut RawClient) {
    let (_, resp) = c.recv().expect("answer");
    let Response::Produce(r) = resp else {
        panic!("unexpected {resp:?}")
    };
    let st = r.status.unwrap_or_default();
    assert!(st.is_ok(), "{st:?}");
}

/// Every partition's latest offset.
fn ends(addr: SocketAddr, per_topic: u32) -> Vec<i64> {
    let mut c = RawClient::connect(addr).expect("connect");
    let mut out = Vec::new();
    for t in 0..TOPICS {
        for p in 0..per_topic {
            let resp = c
                .call(&Request::ListOffsets(v1::ListOffsetsRequest {
                    topic: topic(t),
                    partition: p,
                    spec: v1::OffsetSpec::Latest as i32,
                    timestamp_ms: 0,
                }))
                .expect("list offsets");
            let Response::ListOffsets(r) = resp else {
                panic!("unexpected {resp:?}")
            };
            out.push(r.offset);
        }
    }
    out
}

fn drop_caches() -> bool {
    std::process::Command::new("sync").status().is_ok()
        && std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn timed_start(data: &Path) -> (ServerProcess, Duration) {
    let t = Instant::now();
    let s = ServerProcess::start(data);
    (s, t.elapsed())
}

fn du_mib(path: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        std::fs::read_dir(p).map_or(0, |rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
    }
    walk(path) >> 20
}

#[test]
#[ignore = "a measurement: minutes and gigabytes; run by hand (see the module docs)"]
fn startup_with_many_partitions() {
    let partitions = env_u32("WEIR_STARTUP_PARTITIONS", 1000);
    let mib = env_u32("WEIR_STARTUP_MIB_PER_PARTITION", 3);
    let per_topic = partitions.div_ceil(TOPICS);
    let dir = tempfile::tempdir_in(
        std::env::var("WEIR_STARTUP_DIR")
            .unwrap_or_else(|_| std::env::temp_dir().to_string_lossy().into_owned()),
    )
    .expect("tempdir");
    let data = dir.path().join("data");
    let mut server = ServerProcess::start(&data);
    {
        let mut c = RawClient::connect(server.addr).expect("connect");
        for t in 0..TOPICS {
            c.create_topic(&topic(t), per_topic);
        }
    }
    let t = Instant::now();
    fill(server.addr, per_topic, mib);
    let fill_time = t.elapsed();
    let expected = ends(server.addr, per_topic);
    let total = TOPICS * per_topic;
    eprintln!(
        "filled {total} partitions with {mib} MiB each ({} MiB on disk) in {fill_time:.1?}",
        du_mib(&data)
    );

    let t = Instant::now();
    assert!(server.terminate().success());
    let stop_time = t.elapsed();
    let (mut server, clean) = timed_start(&data);
    assert_eq!(ends(server.addr, per_topic), expected);
    eprintln!("SIGTERM took {stop_time:.2?}; restart after a clean stop: {clean:.2?}");

    server.kill9();
    let (mut server, crashed) = timed_start(&data);
    assert_eq!(ends(server.addr, per_topic), expected);
    eprintln!("restart after kill -9 (every active segment scanned): {crashed:.2?}");

    if drop_caches() {
        assert!(server.terminate().success());
        assert!(drop_caches());
        let (mut s, clean_cold) = timed_start(&data);
        assert_eq!(ends(s.addr, per_topic), expected);
        s.kill9();
        assert!(drop_caches());
        let (s, crashed_cold) = timed_start(&data);
        assert_eq!(ends(s.addr, per_topic), expected);
        eprintln!(
            "with the page cache dropped: clean restart {clean_cold:.2?}, after kill -9 \
             {crashed_cold:.2?}"
        );
        drop(s);
    } else {
        eprintln!("(cannot drop the page cache here: cold-cache figures skipped)");
        server.kill9();
    }
}
