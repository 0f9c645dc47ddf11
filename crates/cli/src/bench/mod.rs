//! `weir bench`: throughput and latency of a Weir broker, measured through the Rust SDK.
//!
//! One run: resolve the settings ([`Settings`]), start an embedded broker if asked
//! (`embedded.rs`), create the topic with the asked fsync policy, then run the scenario's
//! phases — producers (`produce_phase`), consumers (`consume_phase`), or both at once —
//! while a progress bar on stderr shows live rates. Every message carries a stamp
//! (`payload.rs`: run, producer, sequence, send time), so the consumers measure
//! end-to-end latency per message and verify count, offsets and order. The findings
//! (`report.rs`) are printed as a table or as JSON; a failed verification makes the
//! command fail. CPU and memory come from `/proc` (`sys.rs`).
//!
//! Each producer and consumer is its own SDK [`Client`] with its own connection, as
//! separate applications would be. With `--protocol kafka` they speak the Kafka wire
//! protocol to the Kafka listener instead (`kafka.rs`); topics are still created and
//! described through the native admin API.

mod embedded;
mod floor;
mod kafka;
mod payload;
mod report;
mod sys;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use weir_client::{
    Acks, AutoOffsetReset, BatchAckHandler, BatchAcks, Client, ClientConfig, ConsumerConfig,
    ConsumerRecord, GroupConfig, GroupConsumer, ProducerConfig, ProducerRecord, SeekTo, StartFrom,
    Topic,
};

use self::payload::{PayloadWriter, STAMP_BYTES, Verifier};
use self::report::{ClientFigure, Latency, Phase, Report, Resources, Throughput, Verification};
use crate::args::AcksArg;
use crate::exit::{Exit, user_error};

/// Most producers or consumers one bench runs.
const CLIENTS_MAX: u32 = 1024;
/// Largest message size accepted (the default batch limit of a topic is 8 MiB).
const MESSAGE_BYTES_MAX: u32 = 8 * 1024 * 1024;
/// Messages when neither `--messages` nor `--duration-s` is given.
const MESSAGES_DEFAULT: u64 = 1_000_000;
/// Run time of the latency and idle scenarios when neither is given.
const DURATION_S_DEFAULT: u32 = 10;
/// A producer under a rate limit sleeps on tokio's timer, whose resolution is 1 ms: the
/// messages that fell due during a millisecond leave together at its end, each stamped
/// then. The disk floor releases its messages in the same steps.
const PACE_STEP: Duration = Duration::from_millis(1);
/// Rate of the latency scenario when `--rate` is not given (messages/s).
const LATENCY_RATE_DEFAULT: u64 = 5_000;
/// Longest a poll waits before the consumer checks whether it is done.
const POLL_WAIT: Duration = Duration::from_millis(200);
/// Consumers give up when nothing arrives this long after the producers finished (or,
/// reading a backlog, at all): what is still missing is reported.
const DRAIN_IDLE: Duration = Duration::from_secs(5);
/// Records a consumer takes per poll.
const POLL_RECORDS_MAX: u32 = 100_000;
/// Progress bar refresh period.
const PROGRESS_TICK: Duration = Duration::from_millis(200);

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Producers only: send throughput and per-message acknowledgement latency.
    Produce,
    /// Consumers only, reading a backlog (a topic the bench creates is filled first).
    Consume,
    /// Producers and consumers at once: throughput and end-to-end latency.
    Pubsub,
    /// Like pubsub, but the consumers are members of one consumer group.
    Group,
    /// End-to-end latency at a fixed rate (default 5,000 msg/s, 10 s, linger 0).
    Latency,
    /// Consumers long-polling an idle topic: what waiting costs (CPU).
    Idle,
}

/// Fsync policy of the topic the bench creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FsyncArg {
    /// fdatasync before acknowledging (group commit).
    Always,
    /// fdatasync every `--fsync-interval-ms`.
    Interval,
    /// Leave it to the page cache.
    Never,
}

/// Compression of produced batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    /// Uncompressed.
    None,
    /// gzip (`--protocol kafka` only: the native SDK writes uncompressed batches).
    Gzip,
    /// Snappy (`--protocol kafka` only).
    Snappy,
    /// LZ4 (`--protocol kafka` only).
    Lz4,
    /// Zstandard (`--protocol kafka` only).
    Zstd,
}

/// Wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    /// Weir's native protocol through weir-client.
    Native,
    /// The Kafka wire protocol, to the Kafka listener (`--kafka-addr`, or the embedded
    /// broker's). Not for the `group` scenario.
    Kafka,
}

/// `weir bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Run a broker inside this process (temporary data directory, loopback port) instead
    /// of using --addr.
    #[arg(long)]
    pub embedded: bool,
    /// Data directory of the embedded broker (default: a temporary one, removed after).
    #[arg(long, value_name = "DIR", requires = "embedded")]
    pub data_dir: Option<PathBuf>,
    /// Topic to use; if it exists it is used as it is. Default: a new `weir-bench-<id>`,
    /// deleted at the end.
    #[arg(long)]
    pub topic: Option<String>,
    /// Keep the topic the bench created.
    #[arg(long)]
    pub keep_topic: bool,
    /// Producers, each with its own connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(CLIENTS_MAX)))]
    pub producers: u32,
    /// Consumers, each with its own connection (partitions are dealt round-robin).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(CLIENTS_MAX)))]
    pub consumers: u32,
    /// Partitions of the topic the bench creates.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub partitions: u32,
    /// Bytes of each message value (at least 32: the stamp used for checks and latency).
    #[arg(long, default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(STAMP_BYTES as i64..=i64::from(MESSAGE_BYTES_MAX)))]
    pub message_size: u32,
    /// Messages to send over all producers (default 1,000,000; the latency and idle
    /// scenarios run 10 s instead).
    #[arg(long, conflicts_with = "duration_s", value_parser = clap::value_parser!(u64).range(1..))]
    pub messages: Option<u64>,
    /// Send for this many seconds instead of a message count.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub duration_s: Option<u32>,
    /// Largest batch in bytes.
    #[arg(long, default_value_t = 1024 * 1024,
          value_parser = clap::value_parser!(u32).range(1024..=64 * 1024 * 1024))]
    pub batch_bytes: u32,
    /// How long a batch waits for more messages (default 5; latency scenario 0).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=60_000))]
    pub linger_ms: Option<u32>,
    /// Producer memory for unacknowledged messages, in bytes.
    #[arg(long, default_value_t = 64 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..=1 << 40))]
    pub buffer_bytes: u64,
    /// Acknowledgement level.
    #[arg(long, value_enum, default_value_t = AcksArg::All)]
    pub acks: AcksArg,
    /// Fsync policy of the topic the bench creates.
    #[arg(long, value_enum, default_value_t = FsyncArg::Always)]
    pub fsync: FsyncArg,
    /// Period of fsync `interval`.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=3_600_000))]
    pub fsync_interval_ms: u32,
    /// Produce requests in flight per partition and producer (above 1, a retried batch
    /// may land after a later one).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub inflight: u32,
    /// Messages per second over all producers (default: as fast as possible; latency
    /// scenario 5,000).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: Option<u64>,
    /// Most bytes one fetch returns over all partitions (default: the SDK's).
    #[arg(long, default_value_t = ConsumerConfig::default().fetch_bytes_max,
          value_parser = clap::value_parser!(u32).range(64 * 1024..=60 * 1024 * 1024))]
    pub fetch_bytes: u32,
    /// Most bytes one fetch returns for one partition, at most --fetch-bytes (default: the
    /// SDK's, like Kafka's `max.partition.fetch.bytes`).
    #[arg(long, default_value_t = ConsumerConfig::default().partition_fetch_bytes_max,
          value_parser = clap::value_parser!(u32).range(1024..=60 * 1024 * 1024))]
    pub partition_fetch_bytes: u32,
    /// Compression of produced batches.
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    pub compression: CompressionArg,
    /// Protocol of the producers and consumers.
    #[arg(long, value_enum, default_value_t = ProtocolArg::Native)]
    pub protocol: ProtocolArg,
    /// The broker's Kafka listener, for `--protocol kafka` without `--embedded`.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:9092")]
    pub kafka_addr: String,
    /// Pid of a broker running as its own process, to report its CPU and memory.
    #[arg(long, value_name = "PID", conflicts_with = "embedded")]
    pub server_pid: Option<u32>,
    /// Before the run, measure what the disk alone allows a durable acknowledgement at
    /// this rate and message size: the same messages appended to a file in DIR and
    /// fdatasynced, perfect group commit, no network and no broker (reported as `disk
    /// floor`). DIR defaults to the embedded broker's data directory; it must be on the
    /// broker's disk. Needs a rate: the latency scenario, or --rate.
    #[arg(long, value_name = "DIR", num_args = 0..=1)]
    pub disk_floor: Option<Option<PathBuf>>,
    /// Print the report as JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// The settings a run uses, defaults resolved; part of the report.
#[derive(Debug, Clone, Serialize)]
struct Settings {
    topic: String,
    producers: u32,
    consumers: u32,
    partitions: u32,
    message_size: u32,
    messages: Option<u64>,
    duration_s: Option<u32>,
    rate: Option<u64>,
    batch_bytes: u32,
    linger_ms: u32,
    buffer_bytes: u64,
    acks: &'static str,
    fsync: &'static str,
    fsync_interval_ms: Option<u32>,
    inflight: u32,
    fetch_bytes: u32,
    partition_fetch_bytes: u32,
    compression: &'static str,
    protocol: &'static str,
}

impl Settings {
    fn resolve(a: &BenchArgs, run: u32) -> Self {
        let timed = matches!(a.scenario, Scenario::Latency | Scenario::Idle);
        let (messages, duration_s) = match (a.messages, a.duration_s) {
            (Some(m), _) => (Some(m), None),
            (None, Some(d)) => (None, Some(d)),
            (None, None) if timed => (None, Some(DURATION_S_DEFAULT)),
            (None, None) => (Some(MESSAGES_DEFAULT), None),
        };
        let latency = a.scenario == Scenario::Latency;
        Settings {
            topic: a
                .topic
                .clone()
                .unwrap_or_else(|| format!("weir-bench-{run:08x}")),
            producers: a.producers,
            consumers: a.consumers,
            partitions: a.partitions,
            message_size: a.message_size,
            messages,
            duration_s,
            rate: a.rate.or(latency.then_some(LATENCY_RATE_DEFAULT)),
            batch_bytes: a.batch_bytes,
            linger_ms: a.linger_ms.unwrap_or(if latency { 0 } else { 5 }),
            buffer_bytes: a.buffer_bytes.max(u64::from(a.batch_bytes)),
            acks: match a.acks {
                AcksArg::All => "all",
                AcksArg::Leader => "leader",
                AcksArg::None => "none",
            },
            fsync: match a.fsync {
                FsyncArg::Always => "always",
                FsyncArg::Interval => "interval",
                FsyncArg::Never => "never",
            },
            fsync_interval_ms: (a.fsync == FsyncArg::Interval).then_some(a.fsync_interval_ms),
            inflight: a.inflight,
            fetch_bytes: a.fetch_bytes,
            partition_fetch_bytes: a.partition_fetch_bytes,
            compression: match a.compression {
                CompressionArg::None => "none",
                CompressionArg::Gzip => "gzip",
                CompressionArg::Snappy => "snappy",
                CompressionArg::Lz4 => "lz4",
                CompressionArg::Zstd => "zstd",
            },
            protocol: match a.protocol {
                ProtocolArg::Native => "native",
                ProtocolArg::Kafka => "kafka",
            },
        }
    }

    fn acks(&self) -> Acks {
        match self.acks {
            "all" => Acks::All,
            "leader" => Acks::Leader,
            _ => Acks::None,
        }
    }
}

/// Runs `weir bench`.
pub async fn run(addr: &str, timeout_ms: u32, args: BenchArgs) -> Result<()> {
    let json = args.json;
    let report = measure(addr, timeout_ms, args).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    if let Some(v) = &report.verification
        && !v.ok
    {
        return Err(user_error(
            Exit::Failure,
            format!("verification failed: {}", v.summary),
        ));
    }
    Ok(())
}

/// Runs the scenario and returns what it found.
async fn measure(addr: &str, timeout_ms: u32, args: BenchArgs) -> Result<Report> {
    let run_id: u32 = rand_u32();
    let settings = Settings::resolve(&args, run_id);
    let kafka = args.protocol == ProtocolArg::Kafka;
    if !kafka && args.compression != CompressionArg::None {
        return Err(user_error(
            Exit::Usage,
            "the native SDK writes uncompressed batches; --compression needs --protocol kafka",
        ));
    }
    if kafka && args.scenario == Scenario::Group {
        return Err(user_error(
            Exit::Usage,
            "the group scenario runs weir-client group members: use --protocol native",
        ));
    }
    let floor_rate = match (&args.disk_floor, settings.rate) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(user_error(
                Exit::Usage,
                "--disk-floor needs a rate: the latency scenario, or --rate",
            ));
        }
        (Some(None), Some(_)) if !args.embedded => {
            return Err(user_error(
                Exit::Usage,
                "--disk-floor needs a directory on the broker's disk without --embedded",
            ));
        }
        (Some(_), Some(rate)) => Some(rate),
    };
    let embedded = if args.embedded {
        Some(embedded::Embedded::start(args.data_dir.clone()).await?)
    } else {
        None
    };
    let disk_floor = match floor_rate {
        Some(rate) => {
            let dir = match (&args.disk_floor, &embedded) {
                (Some(Some(d)), _) => d.clone(),
                (_, Some(e)) => e.data_dir.clone(),
                _ => unreachable!("checked above"),
            };
            let messages = settings.messages.unwrap_or_else(|| {
                rate.saturating_mul(u64::from(settings.duration_s.unwrap_or(DURATION_S_DEFAULT)))
            });
            if !args.no_progress {
                eprintln!("measuring the disk floor: {messages} messages at {rate}/s");
            }
            let size = settings.message_size;
            let floor = tokio::task::spawn_blocking(move || {
                let pace = floor::Pace {
                    rate,
                    messages,
                    message_bytes: size,
                    step: PACE_STEP,
                };
                floor::measure(&dir, pace)
                    .with_context(|| format!("disk floor in {}", dir.display()))
            })
            .await?;
            match floor {
                Ok(f) => Some(f),
                Err(e) => {
                    if let Some(e) = embedded {
                        e.stop().await;
                    }
                    return Err(e);
                }
            }
        }
        None => None,
    };
    let target = embedded
        .as_ref()
        .map_or_else(|| addr.to_owned(), |e| e.addr.to_string());
    let kafka_addr = match &embedded {
        Some(e) => e.kafka_addr.to_string(),
        None => args.kafka_addr.clone(),
    };
    let bench = Bench {
        addr: target,
        kafka_addr: kafka.then_some(kafka_addr),
        timeout_ms,
        run_id,
        settings,
        embedded: embedded.is_some(),
        server_pid: args.server_pid,
        progress: !args.no_progress,
        keep_topic: args.keep_topic,
        scenario: args.scenario,
    };
    let outcome = bench.execute().await;
    if let Some(e) = embedded {
        e.stop().await;
    }
    let mut report = outcome?;
    report.disk_floor = disk_floor;
    Ok(report)
}

/// A random id for this run (the topic name and the stamps carry it).
fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u32
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[derive(Debug)]
struct Bench {
    addr: String,
    /// The Kafka listener the producers and consumers use, with `--protocol kafka`.
    kafka_addr: Option<String>,
    timeout_ms: u32,
    run_id: u32,
    settings: Settings,
    embedded: bool,
    server_pid: Option<u32>,
    progress: bool,
    keep_topic: bool,
    scenario: Scenario,
}

/// When producers stop.
#[derive(Debug, Clone, Copy)]
enum Limit {
    /// This many messages over all producers.
    Messages(u64),
    /// Until this long after the start.
    Duration(Duration),
}

/// Live counters the progress bar and the consumers' stop condition read.
#[derive(Debug, Default)]
struct Live {
    produced: Mutex<Vec<Arc<AtomicU64>>>,
    consumed: Mutex<Vec<Arc<AtomicU64>>>,
    /// Messages the consumers must read (this run's); `u64::MAX` until the producers end.
    expected: AtomicU64,
    /// Set when the producers are done (the consumers then stop when idle).
    producers_done: AtomicBool,
    /// When the producers started: consumers that started earlier (to be in place, or
    /// to join their group) count their time from here.
    producers_start: std::sync::OnceLock<Instant>,
}

impl Live {
    fn new() -> Arc<Live> {
        Arc::new(Live {
            expected: AtomicU64::new(u64::MAX),
            ..Live::default()
        })
    }

    fn counter(list: &Mutex<Vec<Arc<AtomicU64>>>) -> Arc<AtomicU64> {
        let c = Arc::new(AtomicU64::new(0));
        list.lock().expect("not poisoned").push(c.clone());
        c
    }

    fn sum(list: &Mutex<Vec<Arc<AtomicU64>>>) -> u64 {
        list.lock()
            .expect("not poisoned")
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// Where a consumer stops.
#[derive(Debug, Clone)]
enum Until {
    /// Every assigned partition read up to its end offset (a backlog).
    Offsets(BTreeMap<u32, i64>),
    /// The consumers together read `Live::expected` messages of this run.
    Expected,
    /// This instant (idle scenario).
    Deadline(Instant),
}

/// One producer's results.
#[derive(Debug)]
struct ProducerOutcome {
    id: u32,
    acked: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    ack_latency: Histogram<u64>,
}

/// One consumer's results.
#[derive(Debug)]
struct ConsumerOutcome {
    id: u32,
    records: u64,
    bytes: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    e2e_latency: Histogram<u64>,
    verifier: Verifier,
}

/// What producer callbacks share.
#[derive(Debug)]
struct Acked {
    count: Arc<AtomicU64>,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    latency: Mutex<Histogram<u64>>,
}

impl Acked {
    fn done(&self, result: weir_client::Result<weir_client::RecordMetadata>, sent: Instant) {
        match result {
            Ok(_) => self.ok(sent),
            Err(e) => self.failed(&e.to_string()),
        }
    }

    /// A record sent at `sent` is acknowledged now.
    fn ok(&self, sent: Instant) {
        let ns = u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.latency
            .lock()
            .expect("not poisoned")
            .saturating_record(ns.max(1));
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Records sent at `sent` are acknowledged at `now`, together (one response).
    fn ok_all(&self, now: Instant, sent: impl ExactSizeIterator<Item = Instant>) {
        let n = sent.len() as u64;
        let mut latency = self.latency.lock().expect("not poisoned");
        for s in sent {
            let ns = u64::try_from(now.saturating_duration_since(s).as_nanos()).unwrap_or(u64::MAX);
            latency.saturating_record(ns.max(1));
        }
        drop(latency);
        self.count.fetch_add(n, Ordering::Relaxed);
    }

    /// A record failed.
    fn failed(&self, error: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.first_error
            .lock()
            .expect("not poisoned")
            .get_or_insert_with(|| error.to_owned());
    }
}

/// The native producer's acknowledgements, a batch at a time: a record's tag is its send
/// time in ns after `base`, so no record needs a callback of its own.
struct NativeAcks {
    acked: Arc<Acked>,
    base: Instant,
}

impl BatchAckHandler for NativeAcks {
    fn on_batch(&self, acks: &BatchAcks<'_>) {
        match acks.result {
            Ok(()) => {
                let sent = acks
                    .records
                    .iter()
                    .map(|r| self.base + Duration::from_nanos(r.tag));
                self.acked.ok_all(Instant::now(), sent);
            }
            Err(e) => {
                let e = e.to_string();
                acks.records.iter().for_each(|_| self.acked.failed(&e));
            }
        }
    }
}

impl Bench {
    async fn connect(&self, name: String) -> Result<Client> {
        let mut config = ClientConfig::default();
        config.client_id = name;
        config.connect_timeout_ms = self.timeout_ms;
        config.request_timeout_ms = self.timeout_ms;
        Client::connect(self.addr.clone(), config)
            .await
            .with_context(|| format!("cannot connect to {}", self.addr))
    }

    /// A native client for a producer or consumer, unless they speak Kafka.
    async fn connect_native(&self, name: String) -> Result<Option<Client>> {
        match self.kafka_addr {
            Some(_) => Ok(None),
            None => self.connect(name).await.map(Some),
        }
    }

    async fn execute(&self) -> Result<Report> {
        let s = &self.settings;
        let admin_client = self.connect("weir-bench-admin".into()).await?;
        let admin = admin_client.admin();
        let mut notes = Vec::new();
        let created = match admin.describe_topic(&s.topic).await {
            Ok(info) => {
                notes.push(format!(
                    "used the existing topic {} ({} partitions) with its own settings",
                    s.topic, info.partition_count
                ));
                false
            }
            Err(e) if e.server_code() == Some(weir_client::v1::ErrorCode::UnknownTopic) => {
                let mut configs = HashMap::from([("fsync".to_owned(), s.fsync.to_owned())]);
                if let Some(ms) = s.fsync_interval_ms {
                    configs.insert("fsync_interval_ms".into(), ms.to_string());
                }
                admin
                    .create_topic(&s.topic, s.partitions, configs)
                    .await
                    .with_context(|| format!("cannot create topic {}", s.topic))?;
                true
            }
            Err(e) => return Err(e).context("cannot describe the topic"),
        };
        let server = admin_client.server_info().await?;
        let broker = format!(
            "{} broker {} at {}",
            if self.embedded { "embedded" } else { "remote" },
            server.server_version,
            self.addr
        );
        let result = self
            .scenario_phases(&admin_client, created, &mut notes)
            .await;
        if created
            && !self.keep_topic
            && let Err(e) = admin.delete_topic(&s.topic).await
        {
            notes.push(format!("could not delete topic {}: {e}", s.topic));
        }
        admin_client.close();
        let (fill, produce, consume, ack, e2e, verification, resources) = result?;
        Ok(Report {
            scenario: format!("{:?}", self.scenario).to_lowercase(),
            settings: serde_json::to_value(s)?,
            broker,
            fill,
            produce,
            consume,
            ack_latency: ack,
            e2e_latency: e2e,
            disk_floor: None,
            verification,
            resources,
            notes,
        })
    }

    #[allow(clippy::type_complexity)]
    async fn scenario_phases(
        &self,
        admin_client: &Client,
        created: bool,
        notes: &mut Vec<String>,
    ) -> Result<(
        Option<Phase>,
        Option<Phase>,
        Option<Phase>,
        Option<Latency>,
        Option<Latency>,
        Option<Verification>,
        Resources,
    )> {
        let s = &self.settings;
        let limit = match (s.messages, s.duration_s) {
            (Some(m), _) => Limit::Messages(m),
            (None, d) => {
                Limit::Duration(Duration::from_secs(d.unwrap_or(DURATION_S_DEFAULT).into()))
            }
        };
        let partitions = admin_client
            .admin()
            .describe_topic(&s.topic)
            .await?
            .partitions;
        let all: Vec<u32> = partitions.iter().map(|p| p.partition).collect();
        match self.scenario {
            Scenario::Produce => {
                let meter = Meter::start(self);
                let live = Live::new();
                let bar = self.bar(limit, "produced");
                let ticker = spawn_ticker(bar.clone(), live.clone(), limit, false);
                let producers = self.produce_phase(limit, live.clone()).await?;
                ticker.abort();
                bar.finish_and_clear();
                let resources = meter.finish(self);
                let (phase, ack) = self.producer_phase_report(&producers);
                Ok((None, Some(phase), None, ack, None, None, resources))
            }
            Scenario::Consume => {
                let mut fill = None;
                if created {
                    let live = Live::new();
                    let bar = self.bar(limit, "filling");
                    let ticker = spawn_ticker(bar.clone(), live.clone(), limit, false);
                    let producers = self.produce_phase(limit, live).await?;
                    ticker.abort();
                    bar.finish_and_clear();
                    fill = Some(self.producer_phase_report(&producers).0);
                }
                // The backlog: everything below each partition's high watermark now.
                let info = admin_client.admin().describe_topic(&s.topic).await?;
                let starts: BTreeMap<u32, i64> = info
                    .partitions
                    .iter()
                    .map(|p| (p.partition, p.log_start_offset))
                    .collect();
                let ends: BTreeMap<u32, i64> = info
                    .partitions
                    .iter()
                    .map(|p| (p.partition, p.high_watermark))
                    .collect();
                let backlog: i64 = ends.iter().map(|(p, e)| e - starts[p]).sum();
                let live = Live::new();
                live.expected
                    .store(u64::try_from(backlog).unwrap_or(0), Ordering::Relaxed);
                let bar = self.bar(Limit::Messages(backlog.max(0) as u64), "consumed");
                let ticker = spawn_ticker(
                    bar.clone(),
                    live.clone(),
                    Limit::Messages(backlog.max(0) as u64),
                    true,
                );
                let meter = Meter::start(self);
                let consumers = self
                    .consume_phase(&all, &starts, Until::Offsets(ends.clone()), live, false)
                    .await?;
                ticker.abort();
                bar.finish_and_clear();
                let resources = meter.finish(self);
                let (phase, e2e, verifier) = consumer_phase_report(consumers);
                let mut v = verifier;
                // A backlog check: every offset of the range, once, in order. Messages
                // of the fill are also checked per producer.
                let expected = u64::try_from(backlog).unwrap_or(0);
                let fill_expected = fill.as_ref().map(|f| f.total.messages);
                let verification = verify(&mut v, expected, fill_expected, false);
                if !created {
                    notes.push(
                        "consumed an existing backlog: order per producer is checked only for \
                         messages written by weir bench"
                            .into(),
                    );
                }
                let _ = e2e; // Latency of a backlog is its age, not a figure of the broker.
                Ok((
                    fill,
                    None,
                    Some(phase),
                    None,
                    None,
                    Some(verification),
                    resources,
                ))
            }
            Scenario::Pubsub | Scenario::Latency | Scenario::Group => {
                let group = self.scenario == Scenario::Group;
                let info = admin_client.admin().describe_topic(&s.topic).await?;
                let starts: BTreeMap<u32, i64> = info
                    .partitions
                    .iter()
                    .map(|p| (p.partition, p.high_watermark))
                    .collect();
                let live = Live::new();
                let bar = self.bar(limit, "produced");
                let ticker = spawn_ticker(bar.clone(), live.clone(), limit, false);
                let meter = Meter::start(self);
                let consumers = {
                    let live = live.clone();
                    let all = all.clone();
                    let starts = starts.clone();
                    let this = self.clone_light();
                    tokio::spawn(async move {
                        this.consume_phase(&all, &starts, Until::Expected, live, group)
                            .await
                    })
                };
                if group {
                    // Let the members join before the first message.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                let produced = self.produce_phase(limit, live.clone()).await;
                let expected: u64 = match &produced {
                    Ok(p) => p.iter().map(|p| p.acked).sum(),
                    Err(_) => 0,
                };
                live.expected.store(expected, Ordering::Relaxed);
                live.producers_done.store(true, Ordering::Relaxed);
                let consumers = consumers.await.context("consumer task failed")??;
                let producers = produced?;
                ticker.abort();
                bar.finish_and_clear();
                let resources = meter.finish(self);
                let (pphase, ack) = self.producer_phase_report(&producers);
                let (cphase, e2e, mut v) = consumer_phase_report(consumers);
                let verification = verify(&mut v, expected, Some(expected), group);
                if s.acks() == Acks::None {
                    notes.push(
                        "acks none: 'expected' counts messages sent, which the broker never \
                         confirmed"
                            .into(),
                    );
                }
                if group {
                    notes.push(
                        "group members deliver at least once: a rebalance may repeat records, \
                         counted as duplicates but not as a failure"
                            .into(),
                    );
                }
                Ok((
                    None,
                    Some(pphase),
                    Some(cphase),
                    ack,
                    e2e,
                    Some(verification),
                    resources,
                ))
            }
            Scenario::Idle => {
                let d = match limit {
                    Limit::Duration(d) => d,
                    Limit::Messages(_) => Duration::from_secs(DURATION_S_DEFAULT.into()),
                };
                let info = admin_client.admin().describe_topic(&s.topic).await?;
                let starts: BTreeMap<u32, i64> = info
                    .partitions
                    .iter()
                    .map(|p| (p.partition, p.high_watermark))
                    .collect();
                let live = Live::new();
                let bar = self.bar(Limit::Duration(d), "idle");
                let ticker = spawn_ticker(bar.clone(), live.clone(), Limit::Duration(d), true);
                let meter = Meter::start(self);
                let consumers = self
                    .consume_phase(
                        &all,
                        &starts,
                        Until::Deadline(Instant::now() + d),
                        live,
                        false,
                    )
                    .await?;
                ticker.abort();
                bar.finish_and_clear();
                let resources = meter.finish(self);
                let (phase, _, _) = consumer_phase_report(consumers);
                notes.push(format!(
                    "{} consumer(s) long-polled an idle topic for {:.0} s; the CPU figures are \
                     what waiting costs",
                    s.consumers,
                    d.as_secs_f64()
                ));
                Ok((None, None, Some(phase), None, None, None, resources))
            }
        }
    }

    /// A copy for a spawned task (the settings are small).
    fn clone_light(&self) -> Bench {
        Bench {
            addr: self.addr.clone(),
            kafka_addr: self.kafka_addr.clone(),
            timeout_ms: self.timeout_ms,
            run_id: self.run_id,
            settings: self.settings.clone(),
            embedded: self.embedded,
            server_pid: self.server_pid,
            progress: self.progress,
            keep_topic: self.keep_topic,
            scenario: self.scenario,
        }
    }

    fn bar(&self, limit: Limit, what: &str) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let (len, unit) = match limit {
            Limit::Messages(n) => (n, "msgs"),
            Limit::Duration(d) => (d.as_millis() as u64, "ms"),
        };
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        let template = format!(
            "{what:>9} [{{elapsed_precise}}] {{bar:30.cyan/blue}} {{pos:>10}}/{{len:10}} {unit} \
             {{msg}} (eta {{eta}})"
        );
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    }

    async fn produce_phase(&self, limit: Limit, live: Arc<Live>) -> Result<Vec<ProducerOutcome>> {
        let s = &self.settings;
        let n = s.producers;
        let mut clients = Vec::new();
        for id in 0..n {
            clients.push(self.connect_native(format!("weir-bench-p{id}")).await?);
        }
        let start = Instant::now();
        let _ = live.producers_start.set(start);
        let mut tasks = Vec::new();
        for (id, client) in (0..n).zip(clients) {
            let share = match limit {
                Limit::Messages(m) => {
                    let base = m / u64::from(n);
                    Limit::Messages(base + u64::from(u64::from(id) < m % u64::from(n)))
                }
                d => d,
            };
            let counter = Live::counter(&live.produced);
            let this = self.clone_light();
            tasks.push(tokio::spawn(async move {
                this.producer(client, id, share, start, counter).await
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.context("producer task failed")??);
        }
        Ok(out)
    }

    async fn producer(
        &self,
        client: Option<Client>,
        id: u32,
        limit: Limit,
        start: Instant,
        counter: Arc<AtomicU64>,
    ) -> Result<ProducerOutcome> {
        let s = &self.settings;
        let acked = Arc::new(Acked {
            count: counter,
            errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
            latency: Mutex::new(report::histogram()),
        });
        // One clock read per message: the send time, as an instant (ack latency, and the
        // native record's tag as ns after `base`) and as Unix time (the stamp, and the
        // record's timestamp).
        let (base, base_unix_ns) = (Instant::now(), unix_ns());
        let mut sink = match (&client, &self.kafka_addr) {
            (Some(client), _) => {
                let mut config = ProducerConfig::default();
                config.acks = s.acks();
                config.linger_ms = s.linger_ms;
                config.batch_bytes_max = s.batch_bytes;
                config.buffer_bytes_max = s.buffer_bytes;
                config.request_timeout_ms = self.timeout_ms;
                config.partition_inflight_batches_max = s.inflight;
                let acks = NativeAcks {
                    acked: acked.clone(),
                    base,
                };
                Sink::Native(client.producer(config.batch_ack_handler(Arc::new(acks)))?)
            }
            (None, Some(addr)) => {
                let settings = kafka::ProducerSettings {
                    topic: s.topic.clone(),
                    partitions: s.partitions,
                    acks: match s.acks() {
                        Acks::All => -1,
                        Acks::Leader => 1,
                        Acks::None => 0,
                    },
                    timeout_ms: i32::try_from(self.timeout_ms).unwrap_or(i32::MAX),
                    batch_bytes: s.batch_bytes as usize,
                    linger: Duration::from_millis(s.linger_ms.into()),
                    compression: kafka::compression(s.compression),
                    inflight: s.inflight,
                    paced: s.rate.is_some(),
                };
                Sink::Kafka(Box::new(
                    kafka::KafkaProducer::connect(addr, settings, acked.clone()).await?,
                ))
            }
            (None, None) => unreachable!("a producer has a native client or a Kafka address"),
        };
        let mut payloads = PayloadWriter::new(self.run_id, id, s.message_size as usize);
        // Messages of this producer are due every `interval` under a rate limit.
        let interval = s
            .rate
            .map(|r| Duration::from_secs_f64(f64::from(self.settings.producers) / r as f64));
        let oneway = s.acks() == Acks::None;
        let topic = Topic::from(&s.topic);
        let mut seq: u64 = 0;
        loop {
            if let Limit::Messages(m) = limit
                && seq >= m
            {
                break;
            }
            let mut now = Instant::now();
            if let Limit::Duration(d) = limit
                && now >= start + d
            {
                break;
            }
            if let Some(iv) = interval {
                let due = start + iv.mul_f64(seq as f64);
                if due > now {
                    match &mut sink {
                        Sink::Native(_) => tokio::time::sleep_until(due.into()).await,
                        Sink::Kafka(p) => p.idle_until(due).await?,
                    }
                    now = Instant::now();
                }
            }
            let sent = now;
            let since_base = u64::try_from((sent - base).as_nanos()).unwrap_or(u64::MAX);
            let sent_ns = base_unix_ns + since_base;
            let value = payloads.value(seq, sent_ns);
            let timestamp_ms = i64::try_from(sent_ns / 1_000_000).unwrap_or(i64::MAX);
            match &mut sink {
                Sink::Native(producer) => {
                    let record = ProducerRecord::new(topic.clone())
                        .with_value(value)
                        .with_timestamp_ms(timestamp_ms);
                    if oneway {
                        if let Err(e) = producer.send_oneway(record).await {
                            acked.done(Err(e), sent);
                        } else {
                            acked.count.fetch_add(1, Ordering::Relaxed);
                        }
                    } else if let Err(e) = producer.send_tagged(record, since_base).await {
                        acked.done(Err(e), sent);
                    }
                }
                Sink::Kafka(p) => p.send(value, timestamp_ms, sent).await?,
            }
            seq += 1;
        }
        match sink {
            Sink::Native(producer) => producer.close().await,
            Sink::Kafka(p) => p.close().await?,
        }
        let elapsed = start.elapsed();
        if let Some(client) = client {
            client.close();
        }
        let first_error = acked.first_error.lock().expect("not poisoned").take();
        let latency = std::mem::replace(
            &mut *acked.latency.lock().expect("not poisoned"),
            report::histogram(),
        );
        Ok(ProducerOutcome {
            id,
            acked: acked.count.load(Ordering::Relaxed),
            errors: acked.errors.load(Ordering::Relaxed),
            first_error,
            elapsed,
            ack_latency: latency,
        })
    }

    fn producer_phase_report(&self, producers: &[ProducerOutcome]) -> (Phase, Option<Latency>) {
        let size = u64::from(self.settings.message_size);
        let mut sum = PhaseSum::new();
        for p in producers {
            sum.add(
                p.id,
                (p.acked, p.acked * size, p.elapsed),
                p.errors,
                &p.first_error,
                &p.ack_latency,
            );
        }
        let (phase, hist) = sum.finish();
        let ack = if self.settings.acks() == Acks::None {
            None
        } else {
            Latency::from_histogram(&hist)
        };
        (phase, ack)
    }

    async fn consume_phase(
        &self,
        all: &[u32],
        starts: &BTreeMap<u32, i64>,
        until: Until,
        live: Arc<Live>,
        group: bool,
    ) -> Result<Vec<ConsumerOutcome>> {
        let s = &self.settings;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for id in 0..s.consumers {
            let parts: Vec<u32> = all
                .iter()
                .copied()
                .filter(|p| p % s.consumers == id)
                .collect();
            if parts.is_empty() && !group {
                continue;
            }
            let client = self.connect_native(format!("weir-bench-c{id}")).await?;
            let starts: BTreeMap<u32, i64> = parts.iter().map(|p| (*p, starts[p])).collect();
            let until = match &until {
                Until::Offsets(ends) => {
                    Until::Offsets(parts.iter().map(|p| (*p, ends[p])).collect())
                }
                other => other.clone(),
            };
            let counter = Live::counter(&live.consumed);
            let live = live.clone();
            let this = self.clone_light();
            tasks.push(tokio::spawn(async move {
                this.consumer(client, id, starts, until, start, live, counter, group)
                    .await
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.context("consumer task failed")??);
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    async fn consumer(
        &self,
        client: Option<Client>,
        id: u32,
        starts: BTreeMap<u32, i64>,
        until: Until,
        start: Instant,
        live: Arc<Live>,
        counter: Arc<AtomicU64>,
        group: bool,
    ) -> Result<ConsumerOutcome> {
        let s = &self.settings;
        let mut cc = ConsumerConfig::default();
        cc.max_poll_records = POLL_RECORDS_MAX;
        cc.fetch_bytes_max = s.fetch_bytes;
        cc.partition_fetch_bytes_max = s.partition_fetch_bytes;
        cc.auto_offset_reset = AutoOffsetReset::Error;
        let mut source = match (&client, &self.kafka_addr) {
            (None, Some(addr)) => Source::Kafka(Box::new(
                kafka::KafkaConsumer::connect(
                    addr,
                    &s.topic,
                    &starts,
                    s.fetch_bytes,
                    s.partition_fetch_bytes,
                )
                .await?,
            )),
            (None, None) => unreachable!("a consumer has a native client or a Kafka address"),
            (Some(client), _) if group => {
                let mut gc = GroupConfig::new(format!("weir-bench-{:08x}", self.run_id));
                gc.start_from = StartFrom::Earliest;
                cc.auto_offset_reset = AutoOffsetReset::Earliest;
                gc.consumer = cc;
                Source::Group(Box::new(client.group_consumer(gc, vec![s.topic.clone()])?))
            }
            (Some(client), _) => {
                let mut c = client.consumer(cc)?;
                let parts: Vec<u32> = starts.keys().copied().collect();
                c.assign(&s.topic, &parts).await?;
                for (p, o) in &starts {
                    c.seek(&s.topic, *p, SeekTo::Offset(*o)).await?;
                }
                Source::Manual(c)
            }
        };
        let mut verifier = Verifier::new(self.run_id, s.producers as usize);
        if !group {
            for (p, o) in &starts {
                verifier.expect_from(*p, *o);
            }
        }
        let mut hist = report::histogram();
        let mut records = 0u64;
        let mut bytes = 0u64;
        let mut errors = 0u64;
        let mut first_error = None;
        let mut last_record = start;
        let mut last_seen = Instant::now();
        loop {
            let done = match &until {
                Until::Offsets(ends) => ends
                    .iter()
                    .all(|(p, end)| verifier.next_offset(*p).is_some_and(|n| n >= *end)),
                Until::Expected => {
                    let expected = live.expected.load(Ordering::Relaxed);
                    expected != u64::MAX && Live::sum(&live.consumed) >= expected
                }
                Until::Deadline(d) => Instant::now() >= *d,
            };
            if done {
                break;
            }
            let stalled = match &until {
                Until::Offsets(_) => last_seen.elapsed() > DRAIN_IDLE,
                Until::Expected => {
                    live.producers_done.load(Ordering::Relaxed) && last_seen.elapsed() > DRAIN_IDLE
                }
                Until::Deadline(_) => false,
            };
            if stalled {
                break;
            }
            let wait = match &until {
                Until::Deadline(d) => d.saturating_duration_since(Instant::now()),
                _ => POLL_WAIT,
            };
            let polled = match &mut source {
                Source::Manual(c) => c.poll(wait).await,
                Source::Group(g) => g.poll(wait).await,
                Source::Kafka(k) => match k.poll(wait).await {
                    Ok(b) => Ok(b),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                        break;
                    }
                },
            };
            let batch = match polled {
                Ok(b) => b,
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert_with(|| e.to_string());
                    if e.is_retriable() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    break;
                }
            };
            if batch.is_empty() {
                continue;
            }
            let now_ns = unix_ns();
            last_seen = Instant::now();
            last_record = last_seen;
            let mut run_records = 0u64;
            for r in &batch {
                bytes += value_len(r);
                if let Some(sent) = verifier.observe(r.partition, r.offset, r.value.as_deref()) {
                    run_records += 1;
                    hist.saturating_record(now_ns.saturating_sub(sent).max(1));
                }
            }
            records += batch.len() as u64;
            let progress = match until {
                Until::Expected => run_records,
                _ => batch.len() as u64,
            };
            counter.fetch_add(progress, Ordering::Relaxed);
        }
        if let Source::Group(g) = &mut source {
            let _ = g.close().await;
        }
        if let Some(client) = client {
            client.close();
        }
        Ok(ConsumerOutcome {
            id,
            records,
            bytes,
            errors,
            first_error,
            elapsed: last_record
                .saturating_duration_since(live.producers_start.get().copied().unwrap_or(start)),
            e2e_latency: hist,
            verifier,
        })
    }
}

fn value_len(r: &ConsumerRecord) -> u64 {
    r.value.as_ref().map_or(0, |v| v.len() as u64)
}

/// A manually assigned consumer or a group member.
enum Source {
    Manual(weir_client::Consumer),
    Group(Box<GroupConsumer>),
    Kafka(Box<kafka::KafkaConsumer>),
}

/// Where a producer's records go: the SDK's producer, or the Kafka-protocol one.
enum Sink {
    Native(weir_client::Producer),
    Kafka(Box<kafka::KafkaProducer>),
}

/// The figures of a phase, summed over its clients as they are added.
struct PhaseSum {
    hist: Histogram<u64>,
    clients: Vec<ClientFigure>,
    messages: u64,
    bytes: u64,
    errors: u64,
    elapsed: Duration,
    first_error: Option<String>,
}

impl PhaseSum {
    fn new() -> Self {
        Self {
            hist: report::histogram(),
            clients: Vec::new(),
            messages: 0,
            bytes: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            first_error: None,
        }
    }

    /// One client's figures: (messages, bytes, elapsed), errors, its first error, and
    /// its latency histogram.
    fn add(
        &mut self,
        id: u32,
        (messages, bytes, elapsed): (u64, u64, Duration),
        errors: u64,
        first_error: &Option<String>,
        latency: &Histogram<u64>,
    ) {
        let _ = self.hist.add(latency);
        self.messages += messages;
        self.bytes += bytes;
        self.errors += errors;
        self.elapsed = self.elapsed.max(elapsed);
        if self.first_error.is_none() {
            self.first_error.clone_from(first_error);
        }
        self.clients.push(ClientFigure {
            id,
            throughput: Throughput::new(messages, bytes, elapsed),
            errors,
        });
    }

    /// The phase, and the latency histogram of all its clients.
    fn finish(self) -> (Phase, Histogram<u64>) {
        let phase = Phase {
            total: Throughput::new(self.messages, self.bytes, self.elapsed),
            errors: self.errors,
            first_error: self.first_error,
            clients: self.clients,
        };
        (phase, self.hist)
    }
}

fn consumer_phase_report(consumers: Vec<ConsumerOutcome>) -> (Phase, Option<Latency>, Verifier) {
    let mut sum = PhaseSum::new();
    let mut merged: Option<Verifier> = None;
    for c in consumers {
        sum.add(
            c.id,
            (c.records, c.bytes, c.elapsed),
            c.errors,
            &c.first_error,
            &c.e2e_latency,
        );
        match &mut merged {
            None => merged = Some(c.verifier),
            Some(m) => m.merge(c.verifier),
        }
    }
    let (phase, hist) = sum.finish();
    (
        phase,
        Latency::from_histogram(&hist),
        merged.unwrap_or_else(|| Verifier::new(0, 0)),
    )
}

/// Judges what the consumers read. `expected` counts the records that had to be read
/// (a backlog's offsets, or this run's acknowledged messages); `produced`, when known,
/// the messages of this run the producers had acknowledged.
fn verify(v: &mut Verifier, expected: u64, produced: Option<u64>, group: bool) -> Verification {
    let c = v.counts.clone();
    let distinct: u64 = v.distinct_per_producer().iter().sum();
    let read = if produced.is_some() && c.foreign == 0 {
        distinct
    } else {
        c.records - c.duplicates
    };
    let missing = expected.saturating_sub(read);
    let mut problems = Vec::new();
    if missing > 0 {
        problems.push(format!("{missing} of {expected} messages not read"));
    }
    if let Some(p) = produced
        && distinct > p
    {
        problems.push(format!(
            "{} messages read that were not acknowledged",
            distinct - p
        ));
    }
    if c.offset_gaps > 0 {
        problems.push(format!("{} offset gaps", c.offset_gaps));
    }
    if c.offset_regressions > 0 && !group {
        problems.push(format!("{} offsets out of order", c.offset_regressions));
    }
    if c.order_violations > 0 && !group {
        problems.push(format!(
            "{} messages out of their producer's order",
            c.order_violations
        ));
    }
    if c.duplicates > 0 && !group {
        problems.push(format!("{} messages read twice", c.duplicates));
    }
    let ok = problems.is_empty();
    let summary = if ok {
        format!(
            "{read} of {expected} messages read{}, offsets contiguous per partition, \
             every producer's order kept",
            if group {
                format!(" ({} repeated after rebalances)", c.duplicates)
            } else {
                " exactly once".to_owned()
            }
        )
    } else {
        problems.join("; ")
    };
    Verification {
        ok,
        summary,
        expected,
        distinct: read,
        missing,
        counts: c,
    }
}

/// CPU and memory figures over a phase.
#[derive(Debug)]
struct Meter {
    wall: Instant,
    process: Option<sys::CpuTime>,
    broker: Option<sys::CpuTime>,
    waited: Option<Duration>,
}

impl Meter {
    fn start(b: &Bench) -> Meter {
        Meter {
            wall: Instant::now(),
            process: sys::process_cpu("self"),
            broker: b.broker_cpu(),
            waited: sys::runqueue_wait(),
        }
    }

    fn finish(self, b: &Bench) -> Resources {
        let wall = self.wall.elapsed().as_secs_f64();
        let cores = |t: sys::CpuTime| t.total().as_secs_f64() / wall.max(1e-9);
        let process = sys::process_cpu("self")
            .zip(self.process)
            .map(|(n, s)| n.since(s));
        let broker = b.broker_cpu().zip(self.broker).map(|(n, s)| n.since(s));
        let own_memory = sys::memory("self");
        let broker_memory = b.server_pid.and_then(|p| sys::memory(&p.to_string()));
        let waited = sys::runqueue_wait()
            .zip(self.waited)
            .map(|(n, s)| n.saturating_sub(s).as_secs_f64() / wall.max(1e-9));
        Resources {
            process_cpu_wait_cores: waited,
            process_cpu_cores: process.map(cores),
            process_cpu_s: process.map(|t| t.total().as_secs_f64()),
            broker_cpu_cores: broker.map(cores),
            broker_cpu_s: broker.map(|t| t.total().as_secs_f64()),
            process_rss_peak_bytes: own_memory.map(|m| m.0),
            broker_rss_peak_bytes: broker_memory.map(|m| m.0),
            broker_rss_bytes: broker_memory.map(|m| m.1),
            wall_s: wall,
        }
    }
}

impl Bench {
    fn broker_cpu(&self) -> Option<sys::CpuTime> {
        if self.embedded {
            sys::threads_cpu(embedded::THREAD_PREFIX)
        } else {
            self.server_pid
                .and_then(|p| sys::process_cpu(&p.to_string()))
        }
    }
}

/// Refreshes the progress bar with live counts and rates until aborted.
fn spawn_ticker(
    bar: ProgressBar,
    live: Arc<Live>,
    limit: Limit,
    consumed: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut last = (Instant::now(), 0u64, 0u64);
        let mut tick = tokio::time::interval(PROGRESS_TICK);
        loop {
            tick.tick().await;
            let p = Live::sum(&live.produced);
            let c = Live::sum(&live.consumed);
            let now = Instant::now();
            let dt = now.duration_since(last.0).as_secs_f64().max(1e-9);
            let prate = (p - last.1.min(p)) as f64 / dt;
            let crate_ = (c - last.2.min(c)) as f64 / dt;
            last = (now, p, c);
            bar.set_position(match limit {
                Limit::Messages(_) if consumed => c,
                Limit::Messages(_) => p,
                Limit::Duration(_) => start.elapsed().as_millis() as u64,
            });
            bar.set_message(format!(
                "| out {p} ({:.0}/s) in {c} ({:.0}/s)",
                prate, crate_
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        b: BenchArgs,
    }

    fn args(line: &[&str]) -> BenchArgs {
        let mut v = vec!["t"];
        v.extend_from_slice(line);
        T::try_parse_from(v).unwrap().b
    }

    #[test]
    fn scenario_defaults_resolve() {
        let s = Settings::resolve(&args(&["latency"]), 1);
        assert_eq!(s.rate, Some(LATENCY_RATE_DEFAULT));
        assert_eq!(s.linger_ms, 0);
        assert_eq!(s.duration_s, Some(DURATION_S_DEFAULT));
        assert_eq!(s.messages, None);
        assert_eq!(s.topic, "weir-bench-00000001");
        let s = Settings::resolve(&args(&["produce", "--fsync", "interval"]), 1);
        assert_eq!(s.messages, Some(MESSAGES_DEFAULT));
        assert_eq!(s.rate, None);
        assert_eq!(s.linger_ms, 5);
        assert_eq!(s.fsync_interval_ms, Some(100));
        assert!(
            T::try_parse_from(["t", "produce", "--messages", "5", "--duration-s", "1"]).is_err()
        );
        assert!(T::try_parse_from(["t", "produce", "--message-size", "31"]).is_err());
    }

    #[tokio::test]
    async fn disk_floor_needs_a_rate_and_a_directory() {
        let e = measure("unused:0", 1_000, args(&["produce", "--disk-floor"]))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("needs a rate"), "{e}");
        let e = measure("unused:0", 1_000, args(&["latency", "--disk-floor"]))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("needs a directory"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let a = args(&["latency", "--disk-floor", dir.path().to_str().unwrap()]);
        assert_eq!(a.disk_floor, Some(Some(dir.path().to_path_buf())));
    }

    #[test]
    fn verification_reports_missing_and_duplicates() {
        let mut w = PayloadWriter::new(9, 0, 32);
        let mut v = Verifier::new(9, 1);
        v.expect_from(0, 0);
        for (o, seq) in [(0, 0), (1, 1), (2, 2)] {
            v.observe(0, o, Some(&w.value(seq, 1)));
        }
        let ok = verify(&mut v, 3, Some(3), false);
        assert!(ok.ok, "{}", ok.summary);
        let bad = verify(&mut v, 4, Some(4), false);
        assert!(!bad.ok);
        assert_eq!(bad.missing, 1);
        v.observe(0, 3, Some(&w.value(2, 1)));
        let dup = verify(&mut v, 3, Some(3), false);
        assert!(!dup.ok);
        assert!(dup.summary.contains("read twice"), "{}", dup.summary);
        assert!(verify(&mut v, 3, Some(3), true).ok);
    }

    /// Every scenario against an embedded broker, small: it runs, and what the consumers
    /// read verifies (no timing is asserted).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scenarios_run_and_verify_on_an_embedded_broker() {
        for line in [
            "produce --messages 3000 --acks leader",
            "consume --messages 3000 --partitions 3 --consumers 2",
            "pubsub --messages 4000 --producers 2 --partitions 2 --inflight 4 --fsync never",
            "pubsub --messages 2000 --acks none --fsync interval",
            "latency --duration-s 1 --rate 500 --disk-floor",
            "group --messages 2000 --consumers 2 --partitions 2",
            "idle --duration-s 1",
            // The Kafka listener, through Kafka-protocol producers and consumers.
            "produce --messages 3000 --protocol kafka",
            "consume --messages 3000 --partitions 3 --consumers 2 --protocol kafka --compression lz4",
            "pubsub --messages 4000 --producers 2 --partitions 2 --inflight 4 --protocol kafka --compression zstd",
            "pubsub --messages 2000 --acks none --protocol kafka --compression gzip",
            "latency --duration-s 1 --rate 500 --protocol kafka --compression snappy",
        ] {
            let mut a: Vec<&str> = line.split_whitespace().collect();
            a.extend(["--embedded", "--no-progress"]);
            let report = measure("unused:0", 10_000, args(&a))
                .await
                .unwrap_or_else(|e| panic!("{line:?}: {e:#}"));
            if let Some(v) = &report.verification {
                assert!(v.ok, "{line:?}: {}", v.summary);
            }
            let json = serde_json::to_value(&report).unwrap();
            assert_eq!(json["scenario"], a[0], "{line:?}");
            match a[0] {
                "produce" => assert_eq!(report.produce.unwrap().total.messages, 3000),
                "consume" => assert_eq!(report.consume.unwrap().total.messages, 3000),
                "latency" => {
                    assert!(report.e2e_latency.is_some());
                    if line.contains("--disk-floor") {
                        let floor = report.disk_floor.as_ref().expect("measured");
                        assert_eq!(floor.messages.count, 500, "{line:?}");
                        assert!(json["disk_floor"]["fdatasync"]["p99_us"].is_number());
                    }
                }
                "idle" => assert_eq!(report.consume.unwrap().total.messages, 0),
                _ => assert!(report.verification.is_some()),
            }
        }
    }
}
