//! The Rust `rdkafka` crate (librdkafka 2.x, built from source) against a real
//! `weir server` process: admin, an idempotent compressed producer, and a consumer group
//! that commits.
//!
//! The server binary is `$WEIR_BIN`, or `weir` in the same target directory as this test
//! (built by `cargo test --workspace`, or `cargo build -p weir-cli` for the same profile).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{
    AdminClient, AdminOptions, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Longest a server may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A `weir server` child process, killed when dropped.
struct Weir {
    child: Child,
    bootstrap: String,
    _dir: tempfile::TempDir,
}

fn weir_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("WEIR_BIN") {
        return p.into();
    }
    // target/<profile>/deps/rdkafka-<hash> → target/<profile>/weir
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("weir"))
        .expect("target directory layout");
    assert!(
        bin.exists(),
        "{} not found: build it first (cargo build -p weir-cli, same profile) or set WEIR_BIN",
        bin.display()
    );
    bin
}

impl Weir {
    fn start() -> Weir {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log");
        let mut child = Command::new(weir_binary())
            .arg("server")
            .env("WEIR_DATA_DIR", dir.path().join("data"))
            .env("WEIR_NATIVE_ADDR", "127.0.0.1:0")
            .env("WEIR_KAFKA_ADDR", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn weir server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("weir listening kafka=") {
                    let _ = tx.send(a.trim().to_owned());
                }
            }
        });
        let Ok(bootstrap) = rx.recv_timeout(START_TIMEOUT) else {
            let _ = child.kill();
            let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
            panic!("weir server did not start its kafka listener:\n{log}");
        };
        Weir {
            child,
            bootstrap,
            _dir: dir,
        }
    }

    fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        c
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn create_topic(weir: &Weir, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = weir.config().create().expect("admin");
    let results = admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create topics");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_compressed_producer_and_a_committing_group() {
    let weir = Weir::start();
    let topic = "rd";
    create_topic(&weir, topic, 4).await;

    let producer: FutureProducer = weir
        .config()
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let base_ts = 1_700_000_000_000i64;
    let n = 2000usize;
    let mut sends = Vec::with_capacity(n);
    for i in 0..n {
        let key = format!("key-{}", i % 16);
        let value = format!("value-{i}");
        let headers = OwnedHeaders::new().insert(Header {
            key: "i",
            value: Some(i.to_string().as_bytes()),
        });
        let record = FutureRecord::to(topic)
            .key(key.as_bytes())
            .payload(value.as_bytes())
            .headers(headers)
            .timestamp(base_ts + i as i64);
        sends.push(producer.send_result(record).expect("queued"));
    }
    let mut offsets = std::collections::HashSet::new();
    for s in sends {
        let delivery = s.await.expect("delivery report").expect("delivered");
        assert!(
            offsets.insert((delivery.partition, delivery.offset)),
            "unique offsets"
        );
    }

    let consumer: StreamConsumer = weir
        .config()
        .set("group.id", "rdg")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut seen = vec![false; n];
    let mut got = 0;
    while got < n {
        let msg = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .expect("a record within 60 s")
            .expect("record");
        let value = std::str::from_utf8(msg.payload().expect("payload")).expect("utf8");
        let i: usize = value
            .strip_prefix("value-")
            .expect("prefix")
            .parse()
            .expect("index");
        assert!(!seen[i], "record {i} delivered twice");
        seen[i] = true;
        got += 1;
        assert_eq!(msg.key(), Some(format!("key-{}", i % 16).as_bytes()));
        assert_eq!(msg.timestamp().to_millis(), Some(base_ts + i as i64));
        let header = msg.headers().expect("headers").get(0);
        assert_eq!(header.key, "i");
        assert_eq!(header.value, Some(i.to_string().as_bytes()));
        if got % 100 == 0 {
            consumer
                .commit_message(&msg, CommitMode::Sync)
                .expect("commit");
        }
    }
    // Everything was consumed: the group's position is the end of every partition.
    consumer
        .commit_consumer_state(CommitMode::Sync)
        .expect("commit positions");
    let committed = consumer
        .committed(Duration::from_secs(10))
        .expect("committed offsets");
    let mut total = 0;
    for p in 0..4 {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        assert_eq!(low, 0);
        let at = committed
            .find_partition(topic, p)
            .and_then(|e| e.offset().to_raw())
            .expect("a committed offset");
        assert_eq!(at, high, "partition {p}");
        total += high;
    }
    assert_eq!(total, n as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_creates_describes_grows_and_deletes_topics() {
    let weir = Weir::start();
    let admin: AdminClient<DefaultClientContext> = weir.config().create().expect("admin");
    let opts = AdminOptions::new();
    let created = admin
        .create_topics(
            &[NewTopic::new("adm", 2, TopicReplication::Fixed(1)).set("retention.ms", "86400000")],
            &opts,
        )
        .await
        .expect("create");
    assert!(created[0].is_ok(), "{created:?}");
    let again = admin
        .create_topics(
            &[NewTopic::new("adm", 2, TopicReplication::Fixed(1))],
            &opts,
        )
        .await
        .expect("create again");
    assert!(again[0].is_err(), "a second create fails: {again:?}");

    let described = admin
        .describe_configs(&[ResourceSpecifier::Topic("adm")], &opts)
        .await
        .expect("describe");
    let resource = described[0].as_ref().expect("topic described");
    assert_eq!(
        resource
            .get("retention.ms")
            .and_then(|e| e.value.as_deref()),
        Some("86400000")
    );

    let grown = admin
        .create_partitions(&[NewPartitions::new("adm", 6)], &opts)
        .await
        .expect("create partitions");
    assert!(grown[0].is_ok(), "{grown:?}");
    let metadata = admin
        .inner()
        .fetch_metadata(Some("adm"), Duration::from_secs(10))
        .expect("metadata");
    assert_eq!(metadata.topics()[0].partitions().len(), 6);

    let deleted = admin.delete_topics(&["adm"], &opts).await.expect("delete");
    assert!(deleted[0].is_ok(), "{deleted:?}");
}
