//! Deterministic fault injection: random operation sequences against a `Log` on a
//! `FaultyDisk` that fails writes (EIO, ENOSPC, short writes), fsyncs, truncations and
//! directory operations at random from a seed, and simulates power cuts that keep only a
//! random part of what was not fsynced. After every operation and every restart the log's
//! promises are checked against a model:
//!
//! - everything the log reported durable (`durable_end_offset`, i.e. what `sync_to`
//!   acknowledged) survives a crash, byte for byte, at the same offsets;
//! - nothing half-written is ever served: every batch read back, before or after a crash,
//!   is whole, passes its CRC and is exactly one the caller asked to append at that offset;
//! - a failed fsync of segment data poisons the log, and a poisoned log refuses writes;
//! - a failed write does not poison the log (the partial write is cut back) and changes
//!   nothing the log reports;
//! - a restart without a power cut loses nothing the log had accepted, and a clean close
//!   lets the next open skip the scan.
//!
//! Replaying a failure: the proptest below persists failing inputs (seed included) under
//! `proptest-regressions/` and replays them first on the next run. The seed-driven
//! simulation replays one seed with `WEIR_SIM_SEED=<seed> cargo test -p weir-storage
//! --test faults seeded_simulation -- --nocapture`, and runs more seeds with
//! `WEIR_SIM_SEEDS=<count>`.

mod common;

use common::{batch_of, small_config};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use bytes::BytesMut;
use proptest::prelude::*;
use weir_record::BatchIter;
use weir_storage::testing::{FaultPlan, FaultyDisk};
use weir_storage::{FsDisk, Log, LogConfig, RecoveryReport, StorageError, TestClock};

const T0: i64 = 1_700_000_000_000;

#[derive(Debug, Clone)]
enum Op {
    /// Batches of (records, value bytes) in one call.
    Append(Vec<(usize, usize)>),
    Sync,
    Read {
        pick: u16,
        max_bytes: u16,
    },
    Truncate(u16),
    /// Power cut: unsynced data partly lost, then reopen on a healthy disk.
    Crash,
    /// Process exit without `close` (the page cache survives), then reopen.
    Reopen,
    /// `close`, optionally a power cut, then reopen.
    CloseReopen {
        crash: bool,
    },
}

/// One stored batch: base offset, last offset, bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    base: i64,
    last: i64,
    bytes: Vec<u8>,
}

/// What a run exercised, so the tests can check they are not vacuous.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Stats {
    appends_ok: u64,
    write_errors: u64,
    poisonings: u64,
    crashes: u64,
    crash_lost_ops: u64,
    clean_reopens: u64,
    /// Log end after the final crash and reopen.
    final_log_end: i64,
}

fn config() -> LogConfig {
    LogConfig {
        index_interval_bytes: 128,
        ..small_config()
    }
}

struct Sim {
    dir: tempfile::TempDir,
    disk: Arc<FaultyDisk>,
    clock: Arc<TestClock>,
    plan: FaultPlan,
    log: Option<Log>,
    /// What the log reported it holds, in order.
    model: Vec<Stored>,
    /// Offsets below this were reported durable: they must survive anything.
    acked_end: i64,
    /// Every batch ever handed to `append`, by the base offset it was (or would have
    /// been) written at: after a crash, unacknowledged batches may survive, but only
    /// exactly as one of these.
    attempts: HashMap<i64, Vec<Vec<u8>>>,
    /// A failed fsync poisoned the log.
    poisoned: bool,
    closed: bool,
    /// A truncation failed half way: until the next open, disk and memory may disagree
    /// (reads of the cut region may fail as corrupt, and a reopen may find it cut).
    torn_truncation: bool,
    /// Distinguishes every value ever written.
    counter: u64,
    /// Entries of `disk.failed_syncs()` already checked.
    failed_syncs_seen: usize,
    stats: Stats,
}

impl Sim {
    fn new(seed: u64, plan: FaultPlan) -> Sim {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = Arc::new(FaultyDisk::seeded(Arc::new(FsDisk), seed, plan));
        let clock = Arc::new(TestClock::new(T0));
        let mut sim = Sim {
            dir,
            disk,
            clock,
            plan,
            log: None,
            model: Vec::new(),
            acked_end: 0,
            attempts: HashMap::new(),
            poisoned: false,
            closed: false,
            torn_truncation: false,
            counter: 0,
            failed_syncs_seen: 0,
            stats: Stats::default(),
        };
        sim.reopen(false);
        sim
    }

    fn log(&self) -> &Log {
        self.log.as_ref().expect("log is open")
    }

    fn model_end(&self) -> i64 {
        self.model.last().map_or(0, |b| b.last + 1)
    }

    fn batch(&mut self, records: usize, value_bytes: usize) -> BytesMut {
        self.counter += 1;
        let mut value = format!("{:012}", self.counter).into_bytes();
        value.resize(value_bytes.max(12), b'v');
        batch_of(T0 + self.counter as i64, records, &value)
    }

    /// Opens the log on a healthy disk (random faults off), checks what recovery found
    /// against the model, and adopts it.
    fn reopen(&mut self, after_crash: bool) -> RecoveryReport {
        let after_crash = after_crash || std::mem::take(&mut self.torn_truncation);
        self.disk.set_plan(FaultPlan::default());
        let (log, report) = Log::open(
            self.dir.path(),
            config(),
            self.disk.clone(),
            self.clock.clone(),
        )
        .expect("open on a healthy disk");
        self.disk.set_plan(self.plan);
        assert!(report.corrupt.is_empty(), "{report:?}");
        let got = read_all(&log, self.dir.path());
        let common = got
            .iter()
            .zip(&self.model)
            .take_while(|(g, m)| g == m)
            .count();
        let acked = self
            .model
            .iter()
            .filter(|b| b.base < self.acked_end)
            .count();
        assert!(
            common >= acked,
            "acknowledged batch lost or changed: {acked} acknowledged (offsets < {}), \
             only {common} survived intact; model {:?}, recovered {:?}",
            self.acked_end,
            summary(&self.model),
            summary(&got)
        );
        if !after_crash {
            assert_eq!(
                common,
                self.model.len(),
                "a restart without a power cut lost data"
            );
        }
        for g in &got[common..] {
            let tried = self
                .attempts
                .get(&g.base)
                .is_some_and(|v| v.contains(&g.bytes));
            assert!(
                tried,
                "recovered a batch at offset {} that was never appended there",
                g.base
            );
        }
        assert_eq!(log.log_end_offset(), got.last().map_or(0, |b| b.last + 1));
        assert!(log.log_end_offset() >= self.acked_end);
        assert_eq!(log.durable_end_offset(), log.log_end_offset());
        assert!(!log.is_poisoned());
        self.model = got;
        self.acked_end = log.log_end_offset();
        self.poisoned = false;
        self.closed = false;
        self.log = Some(log);
        report
    }

    /// After each operation: the log's own figures agree with the model, and every
    /// failed fsync of segment data left the log poisoned.
    fn check_invariants(&mut self) {
        let failed = self.disk.failed_syncs();
        let segment_sync_failed = failed[self.failed_syncs_seen..]
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "log"));
        self.failed_syncs_seen = failed.len();
        let log = self.log.as_ref().expect("open");
        if segment_sync_failed {
            assert!(log.is_poisoned(), "a failed fsync must poison the log");
        }
        if log.is_poisoned() && !self.poisoned {
            self.poisoned = true;
            self.stats.poisonings += 1;
        }
        assert_eq!(log.is_poisoned(), self.poisoned);
        assert_eq!(log.log_end_offset(), self.model_end());
        assert!(log.durable_end_offset() <= log.log_end_offset());
        // What the log reports durable is what it acknowledges.
        self.acked_end = self.acked_end.max(log.durable_end_offset());
    }

    fn apply(&mut self, op: &Op) {
        if std::env::var_os("WEIR_SIM_TRACE").is_some() {
            let mut files: Vec<String> = std::fs::read_dir(self.dir.path())
                .expect("read_dir")
                .flatten()
                .map(|e| {
                    let len = e.metadata().map_or(0, |m| m.len());
                    format!("{}:{len}", e.file_name().to_string_lossy())
                })
                .collect();
            files.sort();
            eprintln!(
                "op {op:?}; model end {}, acked end {}, files {files:?}",
                self.model_end(),
                self.acked_end
            );
        }
        match op {
            Op::Append(shape) => {
                let mut all = BytesMut::new();
                for (n, v) in shape {
                    let b = self.batch(*n, *v);
                    all.extend_from_slice(&b);
                }
                let end = self.model_end();
                let result = self.log().append(&mut all, 1);
                // Patched in place before the write, so these are the bytes that may
                // have reached the disk.
                for b in BatchIter::new(&all) {
                    let (h, bytes) = b.expect("whole batch");
                    self.attempts
                        .entry(h.base_offset)
                        .or_default()
                        .push(bytes.to_vec());
                }
                match result {
                    Ok(info) => {
                        assert!(!self.poisoned && !self.closed);
                        assert_eq!(info.base_offset, end);
                        for b in BatchIter::new(&all) {
                            let (h, bytes) = b.expect("whole batch");
                            self.model.push(Stored {
                                base: h.base_offset,
                                last: h.last_offset(),
                                bytes: bytes.to_vec(),
                            });
                        }
                        self.stats.appends_ok += 1;
                    }
                    Err(StorageError::Poisoned) => {
                        assert!(self.poisoned, "poisoned out of the blue")
                    }
                    Err(StorageError::Closed) => assert!(self.closed),
                    Err(StorageError::Io(_)) => {
                        assert!(!self.poisoned && !self.closed);
                        assert!(
                            !self.log().is_poisoned(),
                            "a failed write alone does not poison"
                        );
                        self.stats.write_errors += 1;
                    }
                    Err(StorageError::Fatal(_)) => {
                        assert!(!self.poisoned && !self.closed);
                        assert!(self.log().is_poisoned(), "Fatal means poisoned");
                        self.stats.write_errors += 1;
                    }
                    Err(e) => panic!("append failed unexpectedly: {e}"),
                }
            }
            Op::Sync => match self.log().sync() {
                Ok(()) => {
                    assert!(!self.poisoned && !self.closed);
                    assert_eq!(self.log().durable_end_offset(), self.model_end());
                }
                Err(StorageError::Fatal(_)) => {
                    assert!(
                        self.log().is_poisoned(),
                        "a failed sync must poison the log"
                    );
                }
                Err(StorageError::Poisoned) => assert!(self.poisoned),
                Err(StorageError::Closed) => {}
                Err(e) => panic!("sync failed unexpectedly: {e}"),
            },
            Op::Read { pick, max_bytes } => {
                let end = self.model_end();
                let offset = i64::from(*pick) % (end + 1);
                let r = match self.log().read(offset, (*max_bytes).into(), i64::MAX) {
                    Ok(r) => r,
                    Err(StorageError::Corrupt { .. }) if self.torn_truncation => return,
                    Err(e) => panic!("reads never fail on this disk: {e}"),
                };
                if offset == end || (r.bytes.is_empty() && self.torn_truncation) {
                    assert!(r.bytes.is_empty());
                    return;
                }
                let i = self
                    .model
                    .iter()
                    .position(|b| b.base <= offset && offset <= b.last)
                    .expect("offset in model");
                let got: Vec<&[u8]> = BatchIter::new(&r.bytes)
                    .map(|b| b.expect("whole batch").1)
                    .collect();
                assert!(!got.is_empty());
                for (k, g) in got.iter().enumerate() {
                    weir_record::validate_batch(g).expect("served batches pass their CRC");
                    assert_eq!(*g, &self.model[i + k].bytes[..], "served bytes differ");
                }
            }
            Op::Truncate(pick) => {
                let end = self.model_end();
                let offset = i64::from(*pick) % (end + 1) - 1;
                match self.log().truncate_after(offset) {
                    Ok(new_end) => {
                        assert!(!self.poisoned && !self.closed);
                        let before = self.model.len();
                        self.model.retain(|b| b.base <= offset);
                        assert_eq!(new_end, self.model_end());
                        if self.model.len() != before {
                            // Durable when it returns; the cut part is no longer promised.
                            self.acked_end = new_end;
                        }
                    }
                    Err(StorageError::Fatal(_)) => {
                        assert!(self.log().is_poisoned(), "a failed truncation poisons");
                        self.torn_truncation = true;
                        // Disk and memory may disagree now: the model keeps the old
                        // content, the acknowledged part stops at the cut.
                        self.acked_end = self.acked_end.min(offset + 1);
                    }
                    Err(StorageError::Poisoned) => assert!(self.poisoned),
                    Err(StorageError::Closed) => assert!(self.closed),
                    Err(e) => panic!("truncate failed unexpectedly: {e}"),
                }
            }
            Op::Crash => {
                self.log = None;
                self.stats.crashes += 1;
                self.stats.crash_lost_ops += self.disk.crash().expect("crash");
                self.reopen(true);
                return;
            }
            Op::Reopen => {
                self.log = None;
                self.reopen(false);
                return;
            }
            Op::CloseReopen { crash } => {
                let closed = self.log().close();
                match &closed {
                    Ok(()) => {
                        assert!(!self.poisoned);
                        assert_eq!(self.log().durable_end_offset(), self.model_end());
                    }
                    Err(StorageError::Poisoned) => assert!(self.poisoned),
                    Err(StorageError::Fatal(_)) => assert!(self.log().is_poisoned()),
                    // Index or marker files could not be written; the data is synced.
                    Err(StorageError::Io(_)) => {
                        assert_eq!(self.log().durable_end_offset(), self.model_end());
                    }
                    Err(e) => panic!("close failed unexpectedly: {e}"),
                }
                self.check_invariants();
                self.log = None;
                if *crash {
                    self.stats.crashes += 1;
                    self.stats.crash_lost_ops += self.disk.crash().expect("crash");
                }
                let report = self.reopen(*crash);
                if closed.is_ok() {
                    // After a power cut the (unsynced) index files the marker relies on
                    // may be gone: then the marker is refused and the segment scanned.
                    assert!(
                        report.clean_shutdown || *crash,
                        "a clean close skips the scan: {report:?}"
                    );
                    assert!(report.truncated.is_none(), "{report:?}");
                    self.stats.clean_reopens += u64::from(report.clean_shutdown);
                }
                return;
            }
        }
        self.check_invariants();
    }
}

/// Every batch from the log start to the log end, validated.
fn read_all(log: &Log, dir: &Path) -> Vec<Stored> {
    let mut out = Vec::new();
    let mut at = log.log_start_offset();
    let end = log.log_end_offset();
    while at < end {
        let r = log
            .read(at, 1 << 20, i64::MAX)
            .unwrap_or_else(|e| panic!("read {at} in {}: {e}", dir.display()));
        assert!(!r.bytes.is_empty(), "no progress at {at}");
        for b in BatchIter::new(&r.bytes) {
            let (h, bytes) = b.expect("whole batch");
            weir_record::validate_batch(bytes).expect("CRC");
            assert_eq!(h.base_offset, out.last().map_or(0, |s: &Stored| s.last + 1));
            out.push(Stored {
                base: h.base_offset,
                last: h.last_offset(),
                bytes: bytes.to_vec(),
            });
        }
        at = r.next_offset;
    }
    out
}

fn summary(v: &[Stored]) -> Vec<(i64, i64)> {
    v.iter().map(|s| (s.base, s.last)).collect()
}

fn run(seed: u64, plan: FaultPlan, ops: &[Op]) -> Stats {
    let mut sim = Sim::new(seed, plan);
    for op in ops {
        sim.apply(op);
    }
    // The end of every run is a power cut: the acknowledged data must be there.
    sim.log = None;
    sim.disk.crash().expect("crash");
    sim.reopen(true);
    sim.stats.final_log_end = sim.model_end();
    sim.stats
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => proptest::collection::vec((1usize..4, 0usize..300), 1..4).prop_map(Op::Append),
        3 => Just(Op::Sync),
        3 => (any::<u16>(), 1u16..3000).prop_map(|(pick, max_bytes)| Op::Read { pick, max_bytes }),
        1 => any::<u16>().prop_map(Op::Truncate),
        1 => Just(Op::Crash),
        1 => Just(Op::Reopen),
        1 => any::<bool>().prop_map(|crash| Op::CloseReopen { crash }),
    ]
}

fn plan() -> impl Strategy<Value = FaultPlan> {
    (
        prop_oneof![Just(0u32), Just(20_000), Just(100_000)],
        any::<bool>(),
        prop_oneof![Just(0u32), Just(10_000), Just(50_000)],
        prop_oneof![Just(0u32), Just(50_000)],
        prop_oneof![Just(0u32), Just(20_000), Just(80_000)],
    )
        .prop_map(
            |(write_ppm, short_writes, sync_ppm, set_len_ppm, dir_ppm)| FaultPlan {
                write_ppm,
                short_writes,
                sync_ppm,
                set_len_ppm,
                dir_ppm,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]
    #[test]
    fn random_ops_on_a_faulty_disk_keep_every_acknowledged_batch(
        seed in any::<u64>(),
        plan in plan(),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        run(seed, plan, &ops);
    }
}

/// splitmix64, to derive a whole run from one seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A whole run (plan and operations) from one seed.
fn generate(seed: u64) -> (FaultPlan, Vec<Op>) {
    let mut r = Rng(seed ^ 0x5EED);
    let plan = FaultPlan {
        write_ppm: [0, 20_000, 100_000][r.below(3) as usize],
        short_writes: r.below(2) == 0,
        sync_ppm: [0, 10_000, 50_000][r.below(3) as usize],
        set_len_ppm: [0, 50_000][r.below(2) as usize],
        dir_ppm: [0, 20_000, 80_000][r.below(3) as usize],
    };
    let ops = (0..r.below(150) + 1)
        .map(|_| match r.below(19) {
            0..=7 => Op::Append(
                (0..r.below(3) + 1)
                    .map(|_| (r.below(3) as usize + 1, r.below(300) as usize))
                    .collect(),
            ),
            8..=10 => Op::Sync,
            11..=13 => Op::Read {
                pick: r.next() as u16,
                max_bytes: r.below(3000) as u16 + 1,
            },
            14 => Op::Truncate(r.next() as u16),
            15 => Op::Crash,
            16 => Op::Reopen,
            _ => Op::CloseReopen {
                crash: r.below(2) == 0,
            },
        })
        .collect();
    (plan, ops)
}

/// The same seed gives the same run: faults, crashes and what survived them.
#[test]
fn a_seed_replays_exactly() {
    for seed in [1u64, 42, 0xDEAD_BEEF] {
        let (plan, ops) = generate(seed);
        let first = run(seed, plan, &ops);
        assert_eq!(run(seed, plan, &ops), first, "seed {seed}");
    }
}

/// Many seeds, each a whole run; prints the seed before running it, so a failure names
/// the seed that replays it (`WEIR_SIM_SEED`). Also checks that the runs, together,
/// really exercised every kind of fault.
#[test]
fn seeded_simulation() {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let (first, count) = match env("WEIR_SIM_SEED") {
        Some(seed) => (seed, 1),
        None => (
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            env("WEIR_SIM_SEEDS").unwrap_or(60),
        ),
    };
    let mut total = Stats::default();
    for i in 0..count {
        let seed = first.wrapping_add(i);
        eprintln!("seed {seed}: replay with WEIR_SIM_SEED={seed}");
        let (plan, ops) = generate(seed);
        let s = run(seed, plan, &ops);
        total.appends_ok += s.appends_ok;
        total.write_errors += s.write_errors;
        total.poisonings += s.poisonings;
        total.crashes += s.crashes;
        total.crash_lost_ops += s.crash_lost_ops;
        total.clean_reopens += s.clean_reopens;
    }
    eprintln!("{count} seeds: {total:?}");
    if count >= 40 {
        assert!(total.appends_ok > 0, "{total:?}");
        assert!(total.write_errors > 0, "no write ever failed: {total:?}");
        assert!(total.poisonings > 0, "no fsync ever failed: {total:?}");
        assert!(
            total.crash_lost_ops > 0,
            "no crash ever lost anything: {total:?}"
        );
        assert!(total.clean_reopens > 0, "no clean restart: {total:?}");
    }
}
