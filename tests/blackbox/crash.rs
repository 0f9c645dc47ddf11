//! Durability under `kill -9`: with acks=all and fsync `always`, every acknowledged
//! message is there after a restart, exactly once and in order, and nothing served is
//! corrupt or half-written (`RawClient::read_all` checks every served batch's CRC, that
//! batches are whole, and that offsets are contiguous).
//!
//! CI runs [`CI_ROUNDS`] kills. The long soak is one command:
//!
//! ```text
//! WEIR_CRASH_ROUNDS=200 cargo test --release -p weir-cli --test blackbox crash -- --nocapture
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::Rng;
use weir_proto::{Request, Response, v1};

use crate::support::{RawClient, ServerProcess, batch_of};

const TOPIC: &str = "crash";
const PARTITIONS: u32 = 3;
/// Produce requests each producer keeps unanswered, so several share one fsync.
const WINDOW: usize = 8;
/// Kills in the CI run (`WEIR_CRASH_ROUNDS` overrides).
const CI_ROUNDS: usize = 20;

/// What one producer had acknowledged: (offset, seq) for each acked record.
pub type Acked = Vec<(i64, u64)>;

/// One [`produce_numbered`] thread per partition of `topic`, partition `p` starting at
/// `next_seq[p]`, until [`NumberedProducers::stop_into`].
pub struct NumberedProducers {
    stop: Arc<AtomicBool>,
    handles: Vec<std::thread::JoinHandle<(u32, Acked)>>,
}

impl NumberedProducers {
    pub fn start(addr: std::net::SocketAddr, topic: &'static str, next_seq: &[u64]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let handles = (0u32..)
            .zip(next_seq)
            .map(|(p, &first)| {
                let stop = stop.clone();
                std::thread::spawn(move || (p, produce_numbered(addr, topic, p, first, stop)))
            })
            .collect();
        Self { stop, handles }
    }

    /// Stops the producers and adds what each had acknowledged (offset → seq) to
    /// `all_acked[partition]`; returns how many records that was.
    pub fn stop_into(self, all_acked: &mut [BTreeMap<i64, u64>]) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let mut n = 0;
        for h in self.handles {
            let (p, acked) = h.join().expect("producer thread");
            n += acked.len();
            all_acked[p as usize].extend(acked);
        }
        n
    }
}

fn value(partition: u32, seq: u64) -> Vec<u8> {
    format!("p{partition}-{seq:012}").into_bytes()
}

/// The sequence number in a value written by [`produce_numbered`] to `partition`.
pub fn parse(partition: u32, v: &[u8]) -> u64 {
    let s = std::str::from_utf8(v).expect("utf-8 value");
    let rest = s
        .strip_prefix(&format!("p{partition}-"))
        .unwrap_or_else(|| panic!("value {s:?} in the wrong partition {partition}"));
    rest.parse().expect("sequence number")
}

/// Produces numbered messages (acks=all, [`WINDOW`] requests in flight) to one partition
/// of `topic` until the connection dies or `stop`; returns what was acknowledged.
pub fn produce_numbered(
    addr: std::net::SocketAddr,
    topic: &str,
    partition: u32,
    first_seq: u64,
    stop: Arc<AtomicBool>,
) -> Acked {
    let mut acked = Vec::new();
    let Ok(mut c) = RawClient::connect(addr) else {
        return acked;
    };
    let mut rng = rand::rng();
    let mut next_seq = first_seq;
    let mut pending = std::collections::VecDeque::new();
    loop {
        while pending.len() < WINDOW && !stop.load(Ordering::Relaxed) {
            let n = rng.random_range(1..=20u64);
            let values: Vec<_> = (next_seq..next_seq + n)
                .map(|s| value(partition, s))
                .collect();
            let req = Request::Produce(v1::ProduceRequest {
                topic: topic.into(),
                partition,
                acks: v1::Acks::All as i32,
                timeout_ms: 0,
                records: batch_of(&values).freeze(),
            });
            let Ok(id) = c.send(&req) else {
                return acked;
            };
            pending.push_back((id, next_seq, n));
            next_seq += n;
        }
        if pending.is_empty() {
            return acked;
        }
        let Ok((got, resp)) = c.recv() else {
            return acked;
        };
        // A connection's produce requests are appended in order, but answers may come in
        // any order; find the one this is.
        let Some(pos) = pending.iter().position(|p| p.0 == got) else {
            panic!("response to unknown request {got}");
        };
        let (_, first_got, n_got) = pending.remove(pos).expect("present");
        let Response::Produce(r) = resp else {
            panic!("unexpected {resp:?}")
        };
        let st = r.status.unwrap_or_default();
        if !st.is_ok() {
            // Shutting down or similar: not acknowledged, so nothing is promised.
            continue;
        }
        assert_eq!(r.last_offset - r.base_offset + 1, n_got as i64);
        for i in 0..n_got {
            acked.push((r.base_offset + i as i64, first_got + i));
        }
    }
}

#[test]
fn kill_9_during_produce_loses_nothing_acknowledged() {
    let rounds: usize = std::env::var("WEIR_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CI_ROUNDS);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = ServerProcess::start(&data);
    RawClient::connect(server.addr)
        .expect("connect")
        .create_topic(TOPIC, PARTITIONS);

    // Everything ever acknowledged, per partition: offset → seq.
    let mut all_acked: Vec<std::collections::BTreeMap<i64, u64>> =
        vec![Default::default(); PARTITIONS as usize];
    let mut next_seq = vec![0u64; PARTITIONS as usize];
    let mut rng = rand::rng();
    let started = std::time::Instant::now();
    let mut restarts = Vec::with_capacity(rounds);
    let mut stored_total = 0;
    for round in 0..rounds {
        let producers = NumberedProducers::start(server.addr, TOPIC, &next_seq);
        std::thread::sleep(Duration::from_millis(rng.random_range(100..600)));
        server.kill9();
        producers.stop_into(&mut all_acked);

        let restart = std::time::Instant::now();
        server = ServerProcess::start(&data);
        restarts.push(restart.elapsed());
        let mut c = RawClient::connect(server.addr).expect("connect after restart");
        let mut total_acked = 0;
        stored_total = 0;
        for p in 0..PARTITIONS {
            let stored = c.read_all(TOPIC, p);
            stored_total += stored.len();
            let seqs: Vec<u64> = stored.iter().map(|(_, v)| parse(p, v)).collect();
            // Exactly once and in order: the producer never retried, so the stored
            // sequence is strictly increasing by one from where each round started.
            for w in seqs.windows(2) {
                assert!(w[1] > w[0], "partition {p}: seq {} after {}", w[1], w[0]);
            }
            let by_offset: std::collections::HashMap<i64, u64> =
                stored.iter().map(|(o, v)| (*o, parse(p, v))).collect();
            for (offset, seq) in &all_acked[p as usize] {
                assert_eq!(
                    by_offset.get(offset),
                    Some(seq),
                    "round {round}: acknowledged p{p} offset {offset} seq {seq} is missing or different\nserver log:\n{}",
                    server.log()
                );
            }
            total_acked += all_acked[p as usize].len();
            next_seq[p as usize] = seqs.last().map_or(0, |s| s + 1).max(next_seq[p as usize]);
            // Unacknowledged sequence numbers may or may not have survived; start after
            // everything ever sent so a value is never written twice.
            next_seq[p as usize] += 1_000_000;
        }
        assert!(
            round > 0 || total_acked > 0,
            "the first round acknowledged nothing; the test proves nothing"
        );
        eprintln!("round {round}: {total_acked} acknowledged records verified");
    }
    assert!(server.is_running());
    let acked: usize = all_acked.iter().map(|m| m.len()).sum();
    restarts.sort();
    eprintln!(
        "{rounds} kills in {:.1} s: {acked} acknowledged records, all present exactly once and \
         in order; {stored_total} stored (the rest were written but never acknowledged); \
         restart to listening: median {:?}, max {:?}",
        started.elapsed().as_secs_f64(),
        restarts[restarts.len() / 2],
        restarts[restarts.len() - 1],
    );
}
