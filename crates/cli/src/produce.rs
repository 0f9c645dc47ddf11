//! `weir produce`: one message per input line, through the SDK's batching producer.
//!
//! A reader thread splits the input into lines (bounded by `--batch-bytes`) without
//! copying them and hands them over in chunks through a bounded channel; the async side
//! enqueues each line with `send_with_callback`, which waits only when the producer's
//! buffer is full. Nothing waits for one message's acknowledgement before the next is
//! sent, so a million lines take a handful of produce requests, not a million round trips.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, Result};
use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use weir_client::{Acks, Client, ClientError, ProducerConfig, ProducerRecord, Topic};

use crate::args::{AcksArg, PAIRS_MAX, ProduceArgs};
use crate::exit::{Exit, user_error};

/// Bytes asked of the input per read.
const READ_BYTES: usize = 1024 * 1024;
/// Chunks of lines in flight between the reader thread and the producer.
const CHUNKS_QUEUED_MAX: usize = 8;

/// Lines, or why reading stopped.
type Chunk = std::result::Result<Vec<Bytes>, anyhow::Error>;

/// Outcomes reported by the producer's callbacks.
#[derive(Default)]
struct Progress {
    acked: AtomicU64,
    failed: AtomicU64,
    /// The first failure, for the error message.
    first_error: Mutex<Option<ClientError>>,
}

pub async fn run(client: &Client, args: ProduceArgs) -> Result<()> {
    if args.headers.len() > PAIRS_MAX {
        return Err(user_error(
            Exit::Usage,
            format!("at most {PAIRS_MAX} --header values"),
        ));
    }
    let mut config = ProducerConfig::default();
    config.acks = match args.acks {
        AcksArg::All => Acks::All,
        AcksArg::Leader => Acks::Leader,
        AcksArg::None => Acks::None,
    };
    config.linger_ms = args.linger_ms;
    config.batch_bytes_max = args.batch_bytes;
    config.buffer_bytes_max = config.buffer_bytes_max.max(4 * u64::from(args.batch_bytes));
    config.request_timeout_ms = client.config().request_timeout_ms;
    let producer = client.producer(config)?;

    // Fail fast, before reading any input, if the topic or partition does not exist.
    let partitions = client
        .admin()
        .describe_topic(&args.topic)
        .await
        .with_context(|| format!("cannot produce to topic {:?}", args.topic))?
        .partition_count;
    if let Some(p) = args.partition
        && p >= partitions
    {
        return Err(user_error(
            Exit::NotFound,
            format!(
                "partition {p} does not exist: topic {:?} has {partitions} partition(s)",
                args.topic
            ),
        ));
    }

    let line_bytes_max = args.batch_bytes as usize;
    let (tx, mut rx) = mpsc::channel::<Chunk>(CHUNKS_QUEUED_MAX);
    let input: Box<dyn Read + Send> = match &args.file {
        Some(path) => Box::new(open(path)?),
        None => Box::new(std::io::stdin()),
    };
    std::thread::Builder::new()
        .name("weir-produce-reader".into())
        .spawn(move || read_lines(input, line_bytes_max, &tx))
        .context("cannot start the input reader")?;

    let topic = Topic::from(&args.topic);
    let key = args.key.map(Bytes::from);
    let separator = args.key_separator.map(String::into_bytes);
    let headers: Vec<(String, Bytes)> = args
        .headers
        .into_iter()
        .map(|(k, v)| (k, Bytes::from(v)))
        .collect();
    let progress = Arc::new(Progress::default());
    let mut sent: u64 = 0;
    let mut input_error = None;
    'input: while let Some(chunk) = rx.recv().await {
        let lines = match chunk {
            Ok(lines) => lines,
            Err(e) => {
                input_error = Some(e);
                break;
            }
        };
        for line in lines {
            if progress.failed.load(Ordering::Relaxed) > 0 {
                break 'input;
            }
            let (k, value) = match &separator {
                None => (key.clone(), line),
                Some(sep) => match memchr::memmem::find(&line, sep) {
                    Some(i) => (Some(line.slice(..i)), line.slice(i + sep.len()..)),
                    None => {
                        input_error = Some(user_error(
                            Exit::Invalid,
                            format!("line {} has no key separator", sent + 1),
                        ));
                        break 'input;
                    }
                },
            };
            let record = ProducerRecord {
                topic: topic.clone(),
                partition: args.partition,
                key: k,
                value: Some(value),
                headers: headers.clone(),
                timestamp_ms: None,
            };
            let p = progress.clone();
            producer
                .send_with_callback(record, move |r| match r {
                    Ok(_) => {
                        p.acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        p.failed.fetch_add(1, Ordering::Relaxed);
                        p.first_error
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .get_or_insert(e);
                    }
                })
                .await;
            sent += 1;
        }
    }
    producer.close().await;
    let acked = progress.acked.load(Ordering::Relaxed);
    let failed = progress.failed.load(Ordering::Relaxed);
    eprintln!(
        "produced {acked} message{} to {}{}",
        if acked == 1 { "" } else { "s" },
        args.topic,
        if failed > 0 {
            format!(" ({failed} failed)")
        } else {
            String::new()
        }
    );
    let first_error = progress
        .first_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some(e) = first_error {
        return Err(anyhow::Error::new(e).context(format!(
            "{failed} of {sent} messages were not written to {:?}",
            args.topic
        )));
    }
    if let Some(e) = input_error {
        return Err(e);
    }
    Ok(())
}

fn open(path: &Path) -> Result<std::fs::File> {
    std::fs::File::open(path).map_err(|e| {
        user_error(
            Exit::LocalIo,
            format!("cannot read {}: {e}", path.display()),
        )
    })
}

/// Splits `input` into lines (without `\n` or a `\r` before it) and sends them in
/// chunks, one per read. Lines are slices of the read buffer, not copies.
fn read_lines(mut input: impl Read, line_bytes_max: usize, tx: &mpsc::Sender<Chunk>) {
    let mut scratch = vec![0u8; READ_BYTES];
    let mut buf = BytesMut::with_capacity(READ_BYTES);
    let mut line_no: u64 = 0;
    let mut scanned = 0;
    loop {
        let n = match input.read(&mut scratch) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = tx.blocking_send(Err(user_error(
                    Exit::LocalIo,
                    format!("cannot read the input: {e}"),
                )));
                return;
            }
        };
        let mut lines = Vec::new();
        if n == 0 {
            if !buf.is_empty() {
                lines.push(trim_cr(buf.split().freeze()));
            }
            if !lines.is_empty() {
                let _ = tx.blocking_send(Ok(lines));
            }
            return;
        }
        buf.extend_from_slice(&scratch[..n]);
        while let Some(i) = memchr::memchr(b'\n', &buf[scanned..]) {
            let end = scanned + i;
            let mut line = buf.split_to(end + 1).freeze();
            line.truncate(end);
            line_no += 1;
            scanned = 0;
            if line.len() > line_bytes_max {
                let _ = tx.blocking_send(Err(too_long(line_no, line_bytes_max)));
                return;
            }
            lines.push(trim_cr(line));
        }
        scanned = buf.len();
        if buf.len() > line_bytes_max {
            let _ = tx.blocking_send(Err(too_long(line_no + 1, line_bytes_max)));
            return;
        }
        if !lines.is_empty() && tx.blocking_send(Ok(lines)).is_err() {
            return;
        }
    }
}

fn trim_cr(mut line: Bytes) -> Bytes {
    if line.last() == Some(&b'\r') {
        line.truncate(line.len() - 1);
    }
    line
}

fn too_long(line_no: u64, max: usize) -> anyhow::Error {
    user_error(
        Exit::Invalid,
        format!("line {line_no} is longer than {max} bytes (raise --batch-bytes)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(input: &[u8], max: usize) -> Vec<std::result::Result<Vec<Bytes>, String>> {
        let (tx, mut rx) = mpsc::channel(1024);
        let input = input.to_vec();
        std::thread::spawn(move || read_lines(&input[..], max, &tx))
            .join()
            .unwrap();
        let mut out = Vec::new();
        while let Ok(c) = rx.try_recv() {
            out.push(c.map_err(|e| e.to_string()));
        }
        out
    }

    fn flat(input: &[u8]) -> Vec<Bytes> {
        lines_of(input, 100)
            .into_iter()
            .flat_map(|c| c.unwrap())
            .collect()
    }

    #[test]
    fn lines_are_split_exactly() {
        assert_eq!(flat(b"a\nbb\n\nccc"), vec!["a", "bb", "", "ccc"]);
        assert_eq!(flat(b"a\r\nb\n"), vec!["a", "b"]);
        assert!(flat(b"").is_empty());
        assert_eq!(flat(b"\n"), vec![""]);
    }

    #[test]
    fn long_lines_are_refused() {
        let out = lines_of(b"ok\n0123456789abc\n", 10);
        let err = out.last().unwrap().as_ref().unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        let out = lines_of(&[b'x'; 50], 10);
        assert!(out.last().unwrap().is_err());
    }
}
