//! The `weir` binary end to end: a real `weir server` process, and the client commands
//! run as a user would, checking their output and exit codes.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// A `weir server` child process, killed when dropped.
struct Server {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(WEIR)
            .args(["server", "--native-addr", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .env("RUST_LOG", "warn")
            // Other listeners on ephemeral ports too, so concurrent tests never collide.
            .env("WEIR_KAFKA_ADDR", "127.0.0.1:0")
            .env("WEIR_HTTP_ADDR", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn weir server");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(addr) = line.strip_prefix("weir listening native=") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("server printed its address");
        Server {
            child,
            addr,
            _dir: dir,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(WEIR);
        c.env("WEIR_ADDR", &self.addr).args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args)
            .stdin(Stdio::null())
            .output()
            .expect("run weir")
    }

    fn run_with_input(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn weir");
        let mut stdin = child.stdin.take().expect("piped");
        let input = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().expect("wait");
        writer.join().expect("writer").expect("write stdin");
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("utf-8 stdout")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a failure with `code` and a single clean error line.
#[track_caller]
fn assert_fails(o: &Output, code: i32, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains(needle), "{needle:?} not in {err:?}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}

#[track_caller]
fn assert_ok(o: &Output) {
    assert!(o.status.success(), "exit {:?}: {}", o.status, stderr(o));
}

#[test]
fn topic_commands_and_their_exit_codes() {
    let s = Server::start();
    let o = s.run(&[
        "topic",
        "create",
        "orders",
        "--partitions",
        "3",
        "--config",
        "fsync=never",
    ]);
    assert_ok(&o);
    assert_eq!(stdout(&o), "created topic orders with 3 partitions\n");
    assert_fails(&s.run(&["topic", "create", "orders"]), 6, "already exists");
    assert_ok(&s.run(&["topic", "create", "audit"]));

    let list = stdout(&s.run(&["topic", "list"]));
    let rows: Vec<Vec<&str>> = list
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        vec![
            vec!["NAME", "PARTITIONS"],
            vec!["audit", "1"],
            vec!["orders", "3"]
        ]
    );
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&s.run(&["topic", "list", "--format", "json"]))).unwrap();
    assert_eq!(json[1]["name"], "orders");
    assert_eq!(json[1]["partitions"], 3);

    let text = stdout(&s.run(&["topic", "describe", "orders"]));
    assert!(text.contains("partitions: 3"), "{text}");
    assert!(text.contains("fsync = never"), "{text}");
    let d: serde_json::Value = serde_json::from_str(&stdout(
        &s.run(&["topic", "describe", "orders", "--format", "json"]),
    ))
    .unwrap();
    assert_eq!(d["partition_count"], 3);
    assert_eq!(d["partitions"].as_array().unwrap().len(), 3);
    assert_eq!(d["configs"]["fsync"], "never");

    assert_fails(&s.run(&["topic", "describe", "nope"]), 5, "UNKNOWN_TOPIC");
    assert_ok(&s.run(&["topic", "delete", "audit"]));
    assert_fails(&s.run(&["topic", "delete", "audit"]), 5, "unknown topic");
    assert_fails(
        &s.run(&["topic", "create", "bad name"]),
        7,
        "invalid topic name",
    );

    // Bad flag values are usage errors, caught before any request.
    assert_fails(
        &s.run(&["topic", "create", "x", "--partitions", "0"]),
        2,
        "--partitions",
    );
    assert_fails(
        &s.run(&["topic", "create", "x", "--config", "novalue"]),
        2,
        "KEY=VALUE",
    );
    assert_fails(
        &s.run(&["consume", "orders", "--from-time", "yesterday"]),
        2,
        "RFC 3339",
    );
    assert_fails(
        &s.run(&["consume", "orders", "--offset", "3"]),
        2,
        "--partition",
    );
    assert_fails(
        &s.run(&["produce", "orders", "--acks", "some"]),
        2,
        "--acks",
    );
    assert_fails(
        &s.run(&["--timeout-ms", "0", "topic", "list"]),
        2,
        "--timeout-ms",
    );

    // Not found, local I/O, unreachable.
    assert_fails(
        &s.run(&["produce", "nope", "--file", "/dev/null"]),
        5,
        "UNKNOWN_TOPIC",
    );
    assert_fails(
        &s.run(&["consume", "orders", "--partition", "9"]),
        5,
        "partition 9",
    );
    assert_fails(
        &s.run(&["produce", "orders", "--file", "/nonexistent/in.txt"]),
        8,
        "cannot read",
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap().to_string();
    drop(closed);
    let o = Command::new(WEIR)
        .args(["--addr", &dead, "topic", "list"])
        .output()
        .unwrap();
    assert_fails(&o, 3, "cannot connect");
    assert_eq!(stderr(&o).lines().count(), 1, "one line: {}", stderr(&o));
}

#[test]
fn a_million_lines_round_trip_exactly() {
    let s = Server::start();
    assert_ok(&s.run(&["topic", "create", "big"]));
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    let mut data = Vec::with_capacity(20 * 1_000_000);
    for i in 0..1_000_000u32 {
        // Varied lengths, an empty line now and then, and some non-ASCII text.
        match i % 1000 {
            0 => data.extend_from_slice(b"\n"),
            1 => writeln!(data, "ünïcödé {i} ✓").unwrap(),
            _ => writeln!(data, "line-{i}-{}", "x".repeat((i % 7) as usize)).unwrap(),
        }
    }
    std::fs::write(&input, &data).unwrap();

    let started = Instant::now();
    let o = s.run(&["produce", "big", "--file", input.to_str().unwrap()]);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("produced 1000000 messages to big"),
        "{}",
        stderr(&o)
    );
    let produced_in = started.elapsed();

    let started = Instant::now();
    let o = s.run(&["consume", "big"]);
    assert_ok(&o);
    let consumed_in = started.elapsed();
    assert_eq!(o.stdout.len(), data.len());
    assert!(o.stdout == data, "consumed bytes differ from the input");
    eprintln!("1M lines: produce {produced_in:?}, consume {consumed_in:?}");

    let desc: serde_json::Value = serde_json::from_str(&stdout(
        &s.run(&["topic", "describe", "big", "--format", "json"]),
    ))
    .unwrap();
    assert_eq!(desc["partitions"][0]["log_end_offset"], 1_000_000);

    // `| head`: closing stdout early ends the consumer quietly and successfully.
    let mut child = s
        .cmd(&["consume", "big"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    out.read_exact(&mut first).unwrap();
    drop(out);
    let o = child.wait_with_output().unwrap();
    assert_ok(&o);
    assert!(o.stderr.is_empty(), "{}", stderr(&o));
    assert_eq!(&first[..1], b"\n");
}

#[test]
fn keys_headers_json_and_start_positions() {
    let s = Server::start();
    assert_ok(&s.run(&["topic", "create", "kv", "--partitions", "3"]));
    let mut input = b"alpha:1\nbeta:2\ngamma:3\n".to_vec();
    input.extend_from_slice(b"\xff\xfe:binary key\n");
    let o = s.run_with_input(
        &[
            "produce",
            "kv",
            "--key-separator",
            ":",
            "--header",
            "src=test",
            "--linger-ms",
            "0",
        ],
        &input,
    );
    assert_ok(&o);
    assert!(stderr(&o).contains("produced 4 messages"), "{}", stderr(&o));

    let o = s.run(&["consume", "kv", "--format", "json"]);
    assert_ok(&o);
    let recs: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 4);
    for r in &recs {
        assert_eq!(r["topic"], "kv");
        assert!(r["offset"].is_i64() && r["timestamp"].is_i64());
        assert_eq!(
            r["headers"],
            serde_json::json!([{"key": "src", "value": "test"}])
        );
    }
    let by_value = |v: &str| recs.iter().find(|r| r["value"] == v).unwrap().clone();
    assert_eq!(by_value("1")["key"], "alpha");
    assert!(by_value("1").get("key_base64").is_none());
    let bin = by_value("binary key");
    assert_eq!(bin["key"], "//4=");
    assert_eq!(bin["key_base64"], true);

    // A line without the separator is invalid input.
    let o = s.run_with_input(
        &["produce", "kv", "--key-separator", ":"],
        b"no separator\n",
    );
    assert_fails(&o, 7, "line 1 has no key separator");

    // Start positions on one partition.
    assert_ok(&s.run(&["topic", "create", "seq"]));
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let lines: String = (0..10).map(|i| format!("m{i}\n")).collect();
    assert_ok(&s.run_with_input(&["produce", "seq", "--partition", "0"], lines.as_bytes()));
    let got = |args: &[&str]| {
        let o = s.run(args);
        assert_ok(&o);
        stdout(&o)
    };
    assert_eq!(
        got(&["consume", "seq", "--partition", "0", "--offset", "7"]),
        "m7\nm8\nm9\n"
    );
    assert_eq!(
        got(&["consume", "seq", "--from-beginning", "-n", "2"]),
        "m0\nm1\n"
    );
    assert_eq!(
        got(&[
            "consume",
            "seq",
            "--from-time",
            &before.to_string(),
            "-n",
            "1"
        ]),
        "m0\n"
    );
    assert_eq!(
        got(&["consume", "seq", "--from-time", "2999-01-01T00:00:00Z"]),
        ""
    );
    assert_eq!(got(&["consume", "seq", "--print-key", "-n", "1"]), "\tm0\n");
    let o = s.run(&[
        "consume",
        "seq",
        "--partition",
        "0",
        "--offset",
        "100",
        "--follow",
    ]);
    assert_fails(&o, 7, "OFFSET_OUT_OF_RANGE");
}

#[test]
fn follow_prints_new_messages_as_they_arrive() {
    let s = Server::start();
    assert_ok(&s.run(&["topic", "create", "live"]));
    assert_ok(&s.run_with_input(&["produce", "live"], b"old\n"));
    let mut child = s
        .cmd(&["consume", "live", "--follow"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Give the consumer time to reach the end before producing.
    std::thread::sleep(Duration::from_millis(500));
    assert_ok(&s.run_with_input(&["produce", "live", "--acks", "leader"], b"new\n"));
    let line = lines.next().unwrap().unwrap();
    assert_eq!(
        line, "new",
        "--follow without a start flag prints only new messages"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn server_flags_override_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        "native_addr = \"127.0.0.1:1\"\nlog_level = \"warn\"\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let mut child = Command::new(WEIR)
        .args(["server", "--config"])
        .arg(&config)
        .args(["--native-addr", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("WEIR_KAFKA_ADDR", "127.0.0.1:0")
        .env("WEIR_HTTP_ADDR", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("weir listening native=127.0.0.1:"),
        "{line}"
    );
    assert!(!line.contains("127.0.0.1:1\n"), "{line}");
    assert!(data.exists());
    child.kill().unwrap();
    child.wait().unwrap();

    std::fs::write(&config, "no_such_setting = 1\n").unwrap();
    let o = Command::new(WEIR)
        .args(["server", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_fails(&o, 2, "configuration");

    // A taken address is a local problem, reported as such.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let o = Command::new(WEIR)
        .args([
            "server",
            "--native-addr",
            &taken.local_addr().unwrap().to_string(),
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data2"))
        .env("WEIR_KAFKA_ADDR", "127.0.0.1:0")
        .env("WEIR_HTTP_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_fails(&o, 8, "cannot listen");
    assert!(!Path::new("weir-data").join("never-created").exists());
}
