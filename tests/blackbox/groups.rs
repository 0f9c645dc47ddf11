//! Consumer groups with real processes: `weir consume --group` members killed with
//! SIGKILL, committed offsets across a broker restart, broadcast, reset-offsets.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prost::Message;
use weir_proto::{Request, Response, v1};

use crate::support::{RawClient, ServerProcess, batch_of};

const SESSION_MS: u64 = 3_000;

/// A `weir consume --group` process printing JSON lines into a file.
struct Member {
    child: Child,
    out: PathBuf,
}

impl Member {
    fn start(addr: std::net::SocketAddr, dir: &Path, name: &str, extra: &[&str]) -> Member {
        let out = dir.join(format!("{name}.jsonl"));
        let child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["--addr", &addr.to_string(), "consume"])
            .args(extra)
            .args(["--format", "json", "--from-beginning"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("output file"))
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn weir consume");
        Member { child, out }
    }

    /// (partition, offset, value) of every line printed so far.
    fn seen(&self) -> Vec<(u32, i64, String)> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| {
                (
                    v["partition"].as_u64().unwrap_or(0) as u32,
                    v["offset"].as_i64().unwrap_or(-1),
                    v["value"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "consumer exited with {status:?}");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("consumer did not stop on SIGTERM");
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn produce(c: &mut RawClient, topic: &str, partitions: u32, from: usize, n: usize) {
    for p in 0..partitions {
        let values: Vec<Vec<u8>> = (from..from + n)
            .filter(|i| (*i as u32) % partitions == p)
            .map(|i| format!("m{i}").into_bytes())
            .collect();
        let resp = c
            .call(&Request::Produce(v1::ProduceRequest {
                topic: topic.into(),
                partition: p,
                acks: v1::Acks::All as i32,
                timeout_ms: 0,
                records: batch_of(&values).freeze(),
            }))
            .expect("produce");
        let Response::Produce(r) = resp else {
            panic!("unexpected {resp:?}")
        };
        assert!(r.status.unwrap_or_default().is_ok());
    }
}

/// Member id → partitions, from the coordinator.
fn assignment(c: &mut RawClient, group: &str) -> BTreeMap<String, Vec<u32>> {
    let resp = c
        .call(&Request::DescribeGroup(v1::DescribeGroupRequest {
            group_id: group.into(),
        }))
        .expect("describe group");
    let Response::DescribeGroup(d) = resp else {
        panic!("unexpected {resp:?}")
    };
    d.members
        .into_iter()
        .map(|m| {
            let a = v1::ConsumerAssignment::decode(m.assignment).unwrap_or_default();
            let mut ps: Vec<u32> = a
                .partitions
                .into_iter()
                .flat_map(|tp| tp.partitions)
                .collect();
            ps.sort();
            (m.member_id, ps)
        })
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

fn weir(addr: std::net::SocketAddr, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["--addr", &addr.to_string()])
        .args(args)
        .output()
        .expect("run weir")
}

#[test]
fn killed_member_partitions_move_and_every_message_is_processed_at_least_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = ServerProcess::start(&data);
    let mut c = RawClient::connect(server.addr).expect("connect");
    c.create_topic("orders", 6);
    produce(&mut c, "orders", 6, 0, 3000);

    let session = SESSION_MS.to_string();
    let group_args = [
        "orders",
        "--group",
        "g",
        "--session-timeout-ms",
        session.as_str(),
    ];
    let mut members: Vec<Member> = (0..3)
        .map(|i| Member::start(server.addr, dir.path(), &format!("m{i}"), &group_args))
        .collect();
    wait_for(
        "three members with two partitions each",
        Duration::from_secs(30),
        || {
            let a = assignment(&mut c, "g");
            a.len() == 3 && a.values().all(|ps| ps.len() == 2)
        },
    );

    // Kill one member the hard way once it has printed (and so may not yet have
    // committed) some messages: that window is what may be delivered again.
    let mut victim = members.remove(0);
    wait_for("the victim to consume", Duration::from_secs(30), || {
        !victim.seen().is_empty()
    });
    let _ = victim.child.kill();
    let _ = victim.child.wait();
    produce(&mut c, "orders", 6, 3000, 3000);
    let moved = wait_for(
        "its partitions to be reassigned",
        Duration::from_secs(30),
        || {
            let a = assignment(&mut c, "g");
            a.len() == 2 && a.values().map(Vec::len).sum::<usize>() == 6
        },
    );
    eprintln!(
        "partitions of the killed member reassigned {moved:?} after the kill (session timeout {SESSION_MS} ms)"
    );
    assert!(
        moved < Duration::from_millis(SESSION_MS) + Duration::from_secs(5),
        "reassignment took {moved:?}"
    );

    let total = 6000;
    wait_for(
        "every message to be consumed",
        Duration::from_secs(60),
        || {
            let mut all: Vec<String> = victim.seen().into_iter().map(|s| s.2).collect();
            for m in &members {
                all.extend(m.seen().into_iter().map(|s| s.2));
            }
            all.sort();
            all.dedup();
            all.len() == total
        },
    );
    for m in &mut members {
        m.terminate();
    }
    // At least once, and duplicates only from the killed member's uncommitted window:
    // whatever was printed twice was printed once by the member that died.
    let victim_seen: std::collections::HashSet<(u32, i64)> =
        victim.seen().into_iter().map(|s| (s.0, s.1)).collect();
    let mut count: HashMap<(u32, i64), usize> = HashMap::new();
    for s in victim
        .seen()
        .into_iter()
        .chain(members.iter().flat_map(Member::seen))
    {
        *count.entry((s.0, s.1)).or_default() += 1;
    }
    assert_eq!(count.len(), total);
    let dups: Vec<_> = count
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, _)| *k)
        .collect();
    for d in &dups {
        assert!(
            victim_seen.contains(d),
            "{d:?} delivered twice, but not by the killed member"
        );
    }
    eprintln!(
        "{} messages, {} redelivered after the kill",
        total,
        dups.len()
    );

    // Everything consumed and committed: lag 0 everywhere; the same after a restart.
    let check_lag = |addr| {
        let out = weir(addr, &["group", "describe", "g", "--format", "json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let parts = doc["partitions"].as_array().expect("partitions").clone();
        assert_eq!(parts.len(), 6);
        for p in parts {
            assert_eq!(p["lag"], 0, "{p}");
            assert_eq!(p["committed"], p["log_end"], "{p}");
        }
    };
    check_lag(server.addr);
    server.terminate();
    let server = ServerProcess::start(&data);
    check_lag(server.addr);
}

#[test]
fn reset_offsets_is_refused_while_members_are_live_and_broadcast_reaches_everyone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(&dir.path().join("data"));
    let mut c = RawClient::connect(server.addr).expect("connect");
    c.create_topic("news", 3);
    produce(&mut c, "news", 3, 0, 300);

    let mut live = Member::start(
        server.addr,
        dir.path(),
        "live",
        &["news", "--group", "readers"],
    );
    wait_for("the member to join", Duration::from_secs(30), || {
        !assignment(&mut c, "readers").is_empty()
    });
    let refused = weir(
        server.addr,
        &[
            "group",
            "reset-offsets",
            "readers",
            "--topic",
            "news",
            "--to-earliest",
        ],
    );
    assert_eq!(
        refused.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("active members"));
    wait_for("all 300 consumed", Duration::from_secs(30), || {
        live.seen().len() >= 300
    });
    live.terminate();
    let ok = weir(
        server.addr,
        &[
            "group",
            "reset-offsets",
            "readers",
            "--topic",
            "news",
            "--to-earliest",
        ],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let listed = weir(server.addr, &["group", "list"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("readers"));

    // Broadcast: both members get all 300.
    let fans: Vec<Member> = ["a", "b"]
        .iter()
        .map(|n| {
            Member::start(
                server.addr,
                dir.path(),
                &format!("fan-{n}"),
                &[
                    "news",
                    "--group",
                    "fans",
                    "--broadcast",
                    n,
                    "--idle-exit-ms",
                    "3000",
                ],
            )
        })
        .collect();
    for f in &fans {
        wait_for(
            "a broadcast member to read everything",
            Duration::from_secs(30),
            || f.seen().len() >= 300,
        );
        let mut v: Vec<String> = f.seen().into_iter().map(|s| s.2).collect();
        v.sort();
        v.dedup();
        assert_eq!(v.len(), 300);
    }
}
