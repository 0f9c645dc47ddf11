//! Real Kafka clients against a real `weir server`: kcat (librdkafka) for produce, consume
//! and metadata, the same records read through both protocols, and the Python client
//! suite in `tests/kafka/` (confluent-kafka and kafka-python). The clients are installed
//! by `scripts/kafka-deps`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use weir_proto::{Request, Response, v1};

use crate::support::{KafkaServer, RawClient};

/// Longest one client command may run.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest the Python suite may run.
const PYTHON_SUITE_TIMEOUT: Duration = Duration::from_secs(900);

/// Runs `program` with `args`, feeding `stdin`, killing it after `timeout`.
fn run(
    program: &str,
    args: &[&str],
    stdin: &[u8],
    envs: &[(&str, &str)],
    timeout: Duration,
) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}); install it with scripts/kafka-deps")
        });
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(stdin)
        .expect("write stdin");
    let deadline = Instant::now() + timeout;
    // Drain the pipes on threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut b);
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut b);
        b
    });
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{program} {args:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_t.join().expect("stdout thread"),
        stderr: err_t.join().expect("stderr thread"),
    }
}

fn kcat(broker: SocketAddr, args: &[&str], stdin: &[u8]) -> String {
    let b = broker.to_string();
    let mut all = vec!["-b", b.as_str()];
    all.extend_from_slice(args);
    let out = run("kcat", &all, stdin, &[], CLIENT_TIMEOUT);
    assert!(
        out.status.success(),
        "kcat {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

/// Records read with `kcat -C -J` from the start to the end of a topic.
fn kcat_consume(broker: SocketAddr, topic: &str) -> Vec<Value> {
    kcat(
        broker,
        &["-C", "-t", topic, "-o", "beginning", "-e", "-J", "-q"],
        b"",
    )
    .lines()
    .map(|l| serde_json::from_str(l).expect("kcat json"))
    .collect()
}

fn native_topics(c: &mut RawClient) -> Vec<String> {
    let resp = c
        .call(&Request::ListTopics(v1::ListTopicsRequest {}))
        .expect("list topics");
    let Response::ListTopics(l) = resp else {
        panic!("unexpected {resp:?}")
    };
    l.topics.into_iter().map(|t| t.name).collect()
}

fn start() -> (tempfile::TempDir, KafkaServer) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = KafkaServer::start_env(&dir.path().join("data"), &[]);
    (dir, server)
}

#[test]
fn kcat_produces_consumes_and_lists_topics() {
    let (_dir, server) = start();
    let broker = server.kafka_addr;
    let mut lines = String::new();
    for i in 0..500 {
        lines.push_str(&format!("key{}:value-{i}\n", i % 7));
    }
    // The topic does not exist: kcat's metadata request creates it, as Kafka would.
    kcat(
        broker,
        &["-P", "-t", "kc", "-K:", "-H", "app=kcat", "-z", "lz4"],
        lines.as_bytes(),
    );
    let got = kcat_consume(broker, "kc");
    assert_eq!(got.len(), 500);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r["offset"], i as i64);
        assert_eq!(r["key"], format!("key{}", i % 7));
        assert_eq!(r["payload"], format!("value-{i}"));
        assert_eq!(r["headers"], serde_json::json!(["app", "kcat"]));
        assert_eq!(r["tstype"], "create");
    }
    let meta: Value =
        serde_json::from_str(&kcat(broker, &["-L", "-J"], b"")).expect("metadata json");
    let topic = meta["topics"]
        .as_array()
        .expect("topics")
        .iter()
        .find(|t| t["topic"] == "kc")
        .expect("kc listed");
    assert_eq!(topic["partitions"][0]["leader"], 0);
    assert_eq!(meta["brokers"][0]["name"], broker.to_string());
}

#[test]
fn records_cross_between_the_kafka_and_native_protocols_intact() {
    let (_dir, server) = start();
    let broker = server.kafka_addr;
    let mut native = RawClient::connect(server.process.addr).expect("connect");

    // Kafka → native: keys, headers and timestamps as kcat wrote them.
    kcat(
        broker,
        &[
            "-P",
            "-t",
            "from-kafka",
            "-K:",
            "-H",
            "h1=one",
            "-H",
            "h2=two",
        ],
        b"k1:hello\nk2:world\n",
    );
    assert!(native_topics(&mut native).contains(&"from-kafka".to_owned()));
    let as_kafka = kcat_consume(broker, "from-kafka");
    let as_native = native.read_records("from-kafka", 0);
    assert_eq!(as_native.len(), 2);
    for (k, n) in as_kafka.iter().zip(&as_native) {
        assert_eq!(n.offset, k["offset"].as_i64().expect("offset"));
        assert_eq!(n.timestamp_ms, k["ts"].as_i64().expect("ts"));
        assert_eq!(
            n.key.as_deref(),
            Some(k["key"].as_str().expect("key").as_bytes())
        );
        assert_eq!(
            n.value.as_deref(),
            Some(k["payload"].as_str().expect("payload").as_bytes())
        );
        assert_eq!(
            n.headers,
            [
                ("h1".to_owned(), Some(b"one".to_vec())),
                ("h2".to_owned(), Some(b"two".to_vec()))
            ]
        );
    }

    // Native → Kafka: a topic created natively, a batch built with the record crate.
    native.create_topic("from-native", 2);
    let meta: Value = serde_json::from_str(&kcat(broker, &["-L", "-J", "-t", "from-native"], b""))
        .expect("metadata json");
    assert_eq!(
        meta["topics"][0]["partitions"].as_array().map(Vec::len),
        Some(2)
    );
    let ts = 1_700_000_000_123i64;
    let mut b = weir_record::BatchBuilder::new(ts);
    let headers: [(&str, &[u8]); 2] = [("trace", b"abc"), ("weir.tag", b"blue")];
    for i in 0..3i64 {
        let value = format!("native-{i}");
        b.push(weir_record::Record {
            timestamp_ms: ts + i,
            key: Some(b"nk"),
            value: Some(value.as_bytes()),
            headers: &headers,
        });
    }
    let resp = native
        .call(&Request::Produce(v1::ProduceRequest {
            topic: "from-native".into(),
            partition: 1,
            acks: v1::Acks::All as i32,
            timeout_ms: 10_000,
            records: b.finish().freeze(),
        }))
        .expect("produce");
    let Response::Produce(p) = resp else {
        panic!("unexpected {resp:?}")
    };
    assert!(p.status.unwrap_or_default().is_ok());
    let got = kcat_consume(broker, "from-native");
    assert_eq!(got.len(), 3);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r["partition"], 1);
        assert_eq!(r["offset"], i as i64);
        assert_eq!(r["ts"], ts + i as i64);
        assert_eq!(r["key"], "nk");
        assert_eq!(r["payload"], format!("native-{i}"));
        assert_eq!(
            r["headers"],
            serde_json::json!(["trace", "abc", "weir.tag", "blue"])
        );
    }
}

#[test]
fn the_kafka_listener_can_be_disabled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("server")
        .env("WEIR_DATA_DIR", dir.path().join("data"))
        .env("WEIR_NATIVE_ADDR", "127.0.0.1:0")
        .env("WEIR_KAFKA_ADDR", "")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let first = lines.next().expect("a line").expect("utf8");
    let native = first
        .strip_prefix("weir listening native=")
        .unwrap_or_else(|| panic!("{first}"));
    // Once the server answers, everything it prints at start-up has been printed.
    let mut c = RawClient::connect(native.trim().parse().expect("address")).expect("connect");
    assert!(native_topics(&mut c).is_empty());
    let _ = child.kill();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let _ = child.wait();
    assert!(
        !rest.iter().any(|l| l.starts_with("weir listening kafka=")),
        "{rest:?}"
    );
}

/// The pytest suite under `tests/kafka/`: confluent-kafka (idempotent producer with every
/// codec, admin, a consumer group of several processes that rebalances) and kafka-python
/// (admin, produce, consume in a group, commits). It starts its own servers from this
/// binary.
#[test]
fn python_kafka_clients() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let suite = root.join("tests/kafka");
    let suite = suite.to_str().expect("utf8 path");
    let out = run(
        "python3",
        &[
            "-m",
            "pytest",
            suite,
            "-q",
            "-p",
            "no:cacheprovider",
            "-rfE",
        ],
        b"",
        &[
            ("WEIR_BIN", env!("CARGO_BIN_EXE_weir")),
            ("PYTHONDONTWRITEBYTECODE", "1"),
        ],
        PYTHON_SUITE_TIMEOUT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Python Kafka client suite failed (scripts/kafka-deps installs its packages):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
}
