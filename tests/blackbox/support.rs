//! Starting the real `weir` binary, and a small blocking client that speaks the native
//! protocol frame by frame, so tests control exactly what was sent and acknowledged.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use weir_proto::{Request, Response, decode_frame, encode_request, v1};

/// Longest a server may take to start in a test.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A `weir server` child process. Killed with SIGKILL when dropped.
pub struct ServerProcess {
    child: Child,
    /// Native listener address.
    pub addr: SocketAddr,
    /// Where its stderr (logs) goes.
    pub log_path: PathBuf,
}

impl ServerProcess {
    /// Starts `weir server` on an ephemeral port over `data_dir`, with extra arguments.
    pub fn start_with(data_dir: &Path, extra: &[&str]) -> ServerProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
        cmd.arg("server")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--native-addr")
            .arg("127.0.0.1:0")
            .args(extra)
            // Every listener on an ephemeral port, so parallel tests never collide.
            .env("WEIR_KAFKA_ADDR", "127.0.0.1:0");
        launch(cmd, data_dir, false).0
    }

    /// Starts `weir server` with defaults over `data_dir`.
    pub fn start(data_dir: &Path) -> ServerProcess {
        Self::start_with(data_dir, &[])
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts `weir server` with `toml` as its configuration file (written into `dir`) over
    /// `dir/data`; returns the process and the data directory.
    pub fn start_with_config(dir: &Path, toml: &str) -> (ServerProcess, PathBuf) {
        let config = dir.join("weir.toml");
        std::fs::write(&config, toml).expect("write config");
        let data = dir.join("data");
        let config = config.to_str().expect("utf-8 path").to_owned();
        (
            ServerProcess::start_with(&data, &["--config", &config]),
            data,
        )
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking native-protocol client: one connection, requests may be pipelined.
pub struct RawClient {
    stream: TcpStream,
    buf: BytesMut,
    next_id: u32,
}

impl RawClient {
    /// Connects with a read timeout, so a test never hangs on a dead server.
    pub fn connect(addr: SocketAddr) -> std::io::Result<RawClient> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_nodelay(true)?;
        Ok(RawClient {
            stream,
            buf: BytesMut::new(),
            next_id: 1,
        })
    }

    /// Sends a request without waiting; returns its correlation id.
    pub fn send(&mut self, req: &Request) -> std::io::Result<u32> {
        let id = self.next_id;
        self.next_id += 1;
        let mut out = BytesMut::new();
        encode_request(&mut out, id, req);
        self.stream.write_all(&out)?;
        Ok(id)
    }

    /// Reads the next response frame.
    pub fn recv(&mut self) -> std::io::Result<(u32, Response)> {
        loop {
            match decode_frame(&mut self.buf, 1 << 30) {
                Ok(Some(frame)) => {
                    let resp = Response::decode(&frame).map_err(std::io::Error::other)?;
                    return Ok((frame.header.correlation_id, resp));
                }
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::other(e)),
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends a request and waits for its response.
    pub fn call(&mut self, req: &Request) -> std::io::Result<Response> {
        let id = self.send(req)?;
        let (got, resp) = self.recv()?;
        assert_eq!(got, id, "responses to a lone request match it");
        Ok(resp)
    }

    /// Creates a topic, panicking on failure.
    pub fn create_topic(&mut self, name: &str, partitions: u32) {
        let resp = self
            .call(&Request::CreateTopic(v1::CreateTopicRequest {
                name: name.into(),
                partitions,
                configs: Default::default(),
            }))
            .expect("create topic");
        let Response::CreateTopic(r) = resp else {
            panic!("unexpected {resp:?}")
        };
        assert!(r.status.unwrap_or_default().is_ok(), "create {name}");
    }

    /// Reads a whole partition up to its high watermark as (offset, value) pairs,
    /// checking every batch's CRC and that offsets are contiguous from the log start.
    pub fn read_all(&mut self, topic: &str, partition: u32) -> Vec<(i64, Vec<u8>)> {
        self.read_records(topic, partition)
            .into_iter()
            .map(|r| (r.offset, r.value.unwrap_or_default()))
            .collect()
    }

    /// Reads a whole partition up to its high watermark, checking every batch's CRC and
    /// that offsets are contiguous from the log start.
    pub fn read_records(&mut self, topic: &str, partition: u32) -> Vec<weir_record::OwnedRecord> {
        let mut out = Vec::new();
        let mut offset = 0i64;
        loop {
            let resp = self
                .call(&Request::Fetch(v1::FetchRequest {
                    max_wait_ms: 0,
                    min_bytes: 0,
                    max_bytes: 4 << 20,
                    partitions: vec![v1::FetchPartition {
                        topic: topic.into(),
                        partition,
                        offset,
                        max_bytes: 4 << 20,
                    }],
                }))
                .expect("fetch");
            let Response::Fetch(f) = resp else {
                panic!("unexpected {resp:?}")
            };
            let p = &f.partitions[0];
            let st = p.status.clone().unwrap_or_default();
            assert!(st.is_ok(), "fetch {topic}/{partition}@{offset}: {st:?}");
            if p.records.is_empty() {
                assert_eq!(
                    offset, p.high_watermark,
                    "empty fetch below the high watermark"
                );
                return out;
            }
            for batch in weir_record::BatchIter::new(&p.records) {
                let (_, bytes) = batch.expect("batch header");
                for rec in weir_record::records(bytes).expect("valid batch (CRC)") {
                    let rec = rec.expect("valid record");
                    if rec.offset < offset {
                        continue;
                    }
                    assert_eq!(rec.offset, offset, "offsets are contiguous");
                    out.push(rec.to_owned_record());
                    offset += 1;
                }
            }
        }
    }
}

/// One batch holding `values` in order.
pub fn batch_of(values: &[Vec<u8>]) -> BytesMut {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let mut b = weir_record::BatchBuilder::new(now);
    for v in values {
        b.push(weir_record::Record {
            timestamp_ms: now,
            key: None,
            value: Some(v),
            headers: &[],
        });
    }
    b.finish()
}

/// A `weir server` started through its environment alone, with its Kafka listener.
pub struct KafkaServer {
    /// The process (and its native address).
    pub process: ServerProcess,
    /// Kafka listener address.
    pub kafka_addr: SocketAddr,
}

impl KafkaServer {
    /// Starts `weir server` over `data_dir` with every listener on an ephemeral loopback
    /// port, set through `WEIR_*` variables (and `envs` after them), and waits for both
    /// `weir listening` lines.
    pub fn start_env(data_dir: &Path, envs: &[(&str, &str)]) -> KafkaServer {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
        cmd.arg("server")
            .env("WEIR_DATA_DIR", data_dir)
            .env("WEIR_NATIVE_ADDR", "127.0.0.1:0")
            .env("WEIR_KAFKA_ADDR", "127.0.0.1:0")
            .envs(envs.iter().copied());
        let (process, kafka_addr) = launch(cmd, data_dir, true);
        KafkaServer {
            process,
            kafka_addr: kafka_addr.expect("kafka address"),
        }
    }
}

/// Runs `cmd` (a `weir server`) with its log in a file beside `data_dir`, and waits for its
/// `weir listening native=` line, and its `kafka=` line too when `kafka` is asked for.
fn launch(mut cmd: Command, data_dir: &Path, kafka: bool) -> (ServerProcess, Option<SocketAddr>) {
    let log_path = data_dir.with_extension(format!(
        "{}.log",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let log = std::fs::File::create(&log_path).expect("create server log file");
    let mut child = cmd
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn weir server");
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut native, mut kafka_addr) = (None, None);
        // Read to the end, so the server never writes into a closed pipe.
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Some(a) = line.strip_prefix("weir listening native=") {
                native = Some(a.trim().to_owned());
            } else if let Some(a) = line.strip_prefix("weir listening kafka=") {
                kafka_addr = Some(a.trim().to_owned());
            }
            if let Some(n) = &native
                && (!kafka || kafka_addr.is_some())
            {
                let _ = tx.send((n.clone(), kafka_addr.clone()));
            }
        }
    });
    let (native, kafka_addr) = match rx.recv_timeout(START_TIMEOUT) {
        Ok(a) => a,
        Err(_) => {
            let _ = child.kill();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            panic!("weir server did not start; its log:\n{log}");
        }
    };
    let process = ServerProcess {
        child,
        addr: native.parse().expect("native address"),
        log_path,
    };
    (
        process,
        kafka_addr.map(|a| a.parse().expect("kafka address")),
    )
}

/// A Kafka request frame: the size prefix, a v1 request header (api key, version,
/// correlation id, no client id), then `body`.
pub fn kafka_frame(api_key: i16, version: i16, correlation_id: i32, body: &[u8]) -> Vec<u8> {
    let mut frame = BytesMut::new();
    frame.put_i32((10 + body.len()) as i32);
    frame.put_i16(api_key);
    frame.put_i16(version);
    frame.put_i32(correlation_id);
    frame.put_i16(-1);
    frame.put_slice(body);
    frame.to_vec()
}

/// The body of a Kafka Fetch v4 request for `topic`/0 from `offset`, up to `max_bytes`.
pub fn kafka_fetch_v4(topic: &str, offset: i64, max_bytes: i32) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_i32(-1); // replica id: a consumer
    body.put_i32(0); // max wait
    body.put_i32(0); // min bytes
    body.put_i32(max_bytes);
    body.put_i8(0); // isolation level
    body.put_i32(1); // topics
    body.put_i16(topic.len() as i16);
    body.put_slice(topic.as_bytes());
    body.put_i32(1); // partitions
    body.put_i32(0);
    body.put_i64(offset);
    body.put_i32(max_bytes);
    body.to_vec()
}
