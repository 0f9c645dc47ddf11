//! Torn and corrupt files, and the clean-shutdown marker: every damage a disk can do to a
//! partition directory is either repaired at start-up (and reported) or makes the damaged
//! region read as `StorageError::Corrupt` — it is never served as data, and never at the
//! wrong offset. (The torn tail of the active segment, cut at every byte of the last
//! batch, is in `tests/log.rs`: `recovery_cuts_the_last_batch_torn_at_every_byte`.)

mod common;

use common::{batch_of, small_config};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use weir_record::BatchIter;
use weir_storage::testing::{FaultKind, FaultyDisk};
use weir_storage::{FsDisk, Log, RecoveryReport, StorageError, SystemClock, TestClock};

const T0: i64 = 1_700_000_000_000;
/// `partitionLeaderEpoch`: the one header field no checksum covers (as in Kafka).
const EPOCH_BYTES: std::ops::Range<usize> = 12..16;

fn batch(i: usize, records: usize, value_bytes: usize) -> BytesMut {
    let mut value = format!("batch-{i:06}").into_bytes();
    value.resize(value_bytes.max(12), b'v');
    batch_of(T0 + 10 * i as i64, records, &value)
}

/// Opens on the real file system, minus the fsyncs: these tests reopen logs thousands of
/// times to check detection and repair, not durability.
fn open(dir: &Path) -> (Log, RecoveryReport) {
    Log::open(dir, small_config(), no_syncs(), Arc::new(SystemClock)).expect("open")
}

fn no_syncs() -> Arc<FaultyDisk> {
    Arc::new(FaultyDisk::without_real_syncs(Arc::new(FsDisk)))
}

/// A batch as appended: its offsets and patched bytes.
#[derive(Debug, Clone)]
struct Written {
    base: i64,
    last: i64,
    bytes: Vec<u8>,
}

/// Appends `n` batches of 2 records with 300-byte values (about 680 bytes each, so six
/// fill a 4 KiB segment).
fn fill(log: &Log, n: usize) -> Vec<Written> {
    (0..n)
        .map(|i| {
            let mut b = batch(i, 2, 300);
            let info = log.append(&mut b, 1).expect("append");
            Written {
                base: info.base_offset,
                last: info.last_offset,
                bytes: b.to_vec(),
            }
        })
        .collect()
}

fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    v
}

/// Every batch from the log start to the log end by repeated reads; panics on any error.
fn read_all(log: &Log) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = log.log_start_offset();
    let end = log.log_end_offset();
    while at < end {
        let r = log.read(at, 1 << 20, end).expect("read");
        assert!(!r.bytes.is_empty(), "no progress at {at}");
        for b in BatchIter::new(&r.bytes) {
            out.push(b.expect("whole batch").1.to_vec());
        }
        at = r.next_offset;
    }
    out
}

fn flip(path: &Path, at: usize, bit: u8) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[at] ^= 1 << bit;
    std::fs::write(path, &bytes).expect("write");
}

fn same_but_epoch(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .enumerate()
            .all(|(i, (x, y))| x == y || EPOCH_BYTES.contains(&i))
}

/// Reads every offset of the log one by one. Each read either fails with `Corrupt` or
/// returns batches identical to what was written at those offsets (a flip in the
/// uncovered leader-epoch field aside). Returns the offsets whose read failed.
fn check_reads(log: &Log, written: &[Written], flipped_batch: usize, in_epoch: bool) -> Vec<i64> {
    let mut failed = Vec::new();
    let end = log.log_end_offset();
    for offset in 0..end {
        match log.read(offset, 1 << 20, end) {
            Ok(r) => {
                assert!(!r.bytes.is_empty(), "empty read at {offset}");
                let first = written
                    .iter()
                    .position(|w| w.base <= offset && offset <= w.last)
                    .expect("offset written");
                for (k, b) in BatchIter::new(&r.bytes).enumerate() {
                    let (_, bytes) = b.expect("whole batch");
                    weir_record::validate_batch(bytes).expect("served batches pass their CRC");
                    let want = &written[first + k].bytes;
                    if first + k == flipped_batch && in_epoch {
                        assert!(same_but_epoch(bytes, want), "offset {offset}");
                    } else {
                        assert_eq!(bytes, &want[..], "wrong bytes served for offset {offset}");
                    }
                }
            }
            Err(StorageError::Corrupt { .. }) => failed.push(offset),
            Err(e) => panic!("read {offset}: unexpected {e}"),
        }
    }
    failed
}

#[test]
fn every_bit_flip_in_a_sealed_segment_is_caught_and_never_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path());
    let written = fill(&log, 40);
    log.close().expect("close");
    drop(log);
    let seg0 = files(dir.path(), ".log")[0].clone();
    let len = std::fs::metadata(&seg0).expect("stat").len() as usize;
    let starts: Vec<usize> = written
        .iter()
        .scan(0usize, |pos, w| {
            let at = *pos;
            *pos += w.bytes.len();
            Some(at)
        })
        .take_while(|&at| at < len)
        .collect();
    let batch_at = |at: usize| starts.iter().rposition(|&s| s <= at).expect("in a batch");
    let mut caught_at_open = 0;
    // Every header byte of the first two batches (every header field, once in the first
    // batch of the segment and once in a later one), then every 11th byte.
    let header_bytes = weir_record::BATCH_HEADER_BYTES;
    let in_header = |at: usize| (at - starts[batch_at(at)]) < header_bytes;
    let positions = (0..len).filter(|&at| (at < starts[2] && in_header(at)) || at % 11 == 0);
    for (n, at) in positions.enumerate() {
        let bit = (n % 8) as u8;
        let k = batch_at(at);
        let in_epoch = EPOCH_BYTES.contains(&(at - starts[k]));
        flip(&seg0, at, bit);

        // Index intact: start-up trusts the sealed segment; reads check it.
        let (log, _) = open(dir.path());
        let failed = check_reads(&log, &written, k, in_epoch);
        let w = &written[k];
        if in_epoch {
            assert!(failed.is_empty(), "byte {at}: {failed:?}");
        } else {
            assert!(
                (w.base..=w.last).all(|o| failed.contains(&o)),
                "byte {at} (batch {k}): its offsets must read as corrupt, failed {failed:?}"
            );
        }
        drop(log);

        // Index gone: start-up scans the segment and reports the damage.
        if n % 16 == 0 {
            for p in files(dir.path(), "00000000000000000000.index") {
                std::fs::remove_file(p).expect("rm");
            }
            let (log, report) = open(dir.path());
            if in_epoch {
                assert!(report.corrupt.is_empty(), "{report:?}");
            } else {
                assert_eq!(report.corrupt.len(), 1, "byte {at}: {report:?}");
                assert_eq!(report.corrupt[0].segment, 0);
                assert_eq!(report.corrupt[0].position, starts[k] as u64, "byte {at}");
                caught_at_open += 1;
            }
            check_reads(&log, &written, k, in_epoch);
            drop(log);
        }
        flip(&seg0, at, bit);
        // Restore the indexes (a clean scan writes them) for the next round.
        let (log, report) = open(dir.path());
        assert!(report.corrupt.is_empty());
        drop(log);
    }
    assert!(caught_at_open > 10);
}

#[test]
fn a_damaged_base_offset_is_never_served_at_the_wrong_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path());
    let written = fill(&log, 30);
    drop(log);
    let seg0 = files(dir.path(), ".log")[0].clone();
    // baseOffset (bytes 0..8) is outside the CRC: the third batch now claims offset 4+2^16.
    let third = written[0].bytes.len() + written[1].bytes.len();
    flip(&seg0, third + 5, 0);
    let (log, report) = open(dir.path());
    assert!(report.is_clean(), "indexes intact: no scan, {report:?}");
    for offset in 0..written[3].base {
        match log.read(offset, 1 << 20, i64::MAX) {
            Ok(r) => {
                for b in BatchIter::new(&r.bytes) {
                    let (h, _) = b.expect("batch");
                    assert!(h.base_offset < 4, "served the damaged batch for {offset}");
                }
            }
            Err(e) => assert!(matches!(e, StorageError::Corrupt { .. }), "{e}"),
        }
    }
    assert!(matches!(
        log.read(4, 1 << 20, i64::MAX),
        Err(StorageError::Corrupt { .. })
    ));
    // The time lookup and truncation walk the same headers and refuse too.
    assert!(matches!(
        log.offset_for_timestamp(T0 + 20),
        Err(StorageError::Corrupt { .. })
    ));
}

#[test]
fn every_bit_flip_in_an_index_file_is_found_and_the_index_rebuilt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path());
    let written = fill(&log, 40);
    let expected: Vec<Vec<u8>> = written.iter().map(|w| w.bytes.clone()).collect();
    let ts_answers: Vec<Option<i64>> = (0..40)
        .map(|i| log.offset_for_timestamp(T0 + 10 * i + 1).expect("lookup"))
        .collect();
    drop(log);
    let targets = [
        files(dir.path(), ".index")[1].clone(),
        files(dir.path(), ".timeindex")[1].clone(),
    ];
    for path in &targets {
        let len = std::fs::metadata(path).expect("stat").len() as usize;
        let base: i64 = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse().ok())
            .expect("base");
        for at in 0..len {
            for bit in 0..8 {
                flip(path, at, bit);
                let (log, report) = open(dir.path());
                assert_eq!(
                    report.indexes_rebuilt,
                    vec![base],
                    "{} byte {at}",
                    path.display()
                );
                assert!(report.corrupt.is_empty());
                assert_eq!(read_all(&log), expected);
                for (i, want) in ts_answers.iter().enumerate() {
                    let got = log
                        .offset_for_timestamp(T0 + 10 * i as i64 + 1)
                        .expect("ts");
                    assert_eq!(&got, want, "timestamp lookup {i}");
                }
                // The rebuild rewrote a good file: nothing to undo.
            }
        }
    }
}

#[test]
fn deleting_every_index_file_rebuilds_them_all() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path());
    let written = fill(&log, 40);
    let sealed = log.segment_count() - 1;
    log.close().expect("close");
    drop(log);
    for p in files(dir.path(), "index") {
        std::fs::remove_file(p).expect("rm");
    }
    let (log, report) = open(dir.path());
    assert_eq!(report.indexes_rebuilt.len(), sealed, "{report:?}");
    assert!(
        !report.clean_shutdown,
        "the active segment's index is gone: scan"
    );
    assert!(report.clean_shutdown_rejected.is_some());
    let expected: Vec<Vec<u8>> = written.iter().map(|w| w.bytes.clone()).collect();
    assert_eq!(read_all(&log), expected);
    drop(log);
    let (_, report) = open(dir.path());
    assert!(report.is_clean(), "{report:?}");
}

#[test]
fn a_clean_close_skips_the_scan_and_appends_continue_as_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path());
    let mut written = fill(&log, 17);
    log.close().expect("close");
    drop(log);
    assert!(dir.path().join("clean-shutdown").exists());

    let (log, report) = open(dir.path());
    assert!(report.clean_shutdown, "{report:?}");
    assert!(report.is_clean());
    assert!(
        !dir.path().join("clean-shutdown").exists(),
        "consumed before the log takes writes"
    );
    // Appending continues exactly where it left off, across the next rolls.
    for i in 17..40 {
        let mut b = batch(i, 2, 300);
        let info = log.append(&mut b, 1).expect("append");
        assert_eq!(info.base_offset, written.last().expect("some").last + 1);
        written.push(Written {
            base: info.base_offset,
            last: info.last_offset,
            bytes: b.to_vec(),
        });
    }
    let expected: Vec<Vec<u8>> = written.iter().map(|w| w.bytes.clone()).collect();
    assert_eq!(read_all(&log), expected);
    assert!(check_reads(&log, &written, usize::MAX, false).is_empty());
    for i in 0..40 {
        assert_eq!(
            log.offset_for_timestamp(T0 + 10 * i + 1).expect("ts"),
            Some(2 * i + 1)
        );
    }
    log.sync().expect("sync");
    drop(log); // a crash: no close, no marker

    let (log, report) = open(dir.path());
    assert!(
        !report.clean_shutdown,
        "after a crash the active segment is scanned"
    );
    assert!(report.clean_shutdown_rejected.is_none());
    assert_eq!(read_all(&log), expected);
    // Sealed segments' indexes written at roll after the clean reopen are valid too.
    assert!(report.is_clean(), "{report:?}");
}

#[test]
fn an_empty_active_segment_closes_and_reopens_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path());
    log.close().expect("close");
    drop(log);
    let (log, report) = open(dir.path());
    assert!(report.clean_shutdown, "{report:?}");
    assert_eq!(log.log_end_offset(), 0);
    assert_eq!(
        log.append(&mut batch(0, 1, 5), 1)
            .expect("append")
            .base_offset,
        0
    );
}

/// A marker that does not describe the files is ignored, and the active segment is
/// scanned and repaired as after a crash.
#[test]
fn a_stale_or_damaged_marker_is_ignored() {
    // (name, damage applied after a clean close, log end expected after reopening)
    type Damage = fn(&Path, &[Written]) -> i64;
    let cases: [(&str, Damage); 4] = [
        ("garbage", |dir, w| {
            std::fs::write(dir.join("clean-shutdown"), b"not a marker").expect("write");
            w.last().expect("some").last + 1
        }),
        ("active segment cut after close", |dir, w| {
            let seg = files(dir, ".log").pop().expect("segment");
            let len = std::fs::metadata(&seg).expect("stat").len();
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&seg)
                .expect("open");
            f.set_len(len - 10).expect("cut");
            w[w.len() - 2].last + 1
        }),
        ("bit flip in the last batch", |dir, w| {
            let seg = files(dir, ".log").pop().expect("segment");
            let len = std::fs::metadata(&seg).expect("stat").len() as usize;
            flip(&seg, len - 20, 3);
            w[w.len() - 2].last + 1
        }),
        ("an older marker after more appends", |dir, w| {
            // Reopen (consumes the marker), append, crash; then the old marker returns.
            let old = std::fs::read(dir.join("clean-shutdown")).expect("marker");
            let (log, _) = open(dir);
            log.append(&mut batch(999, 1, 5), 1).expect("append");
            log.sync().expect("sync");
            drop(log);
            std::fs::write(dir.join("clean-shutdown"), old).expect("write");
            w.last().expect("some").last + 2
        }),
    ];
    for (name, damage) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _) = open(dir.path());
        let written = fill(&log, 17);
        log.close().expect("close");
        drop(log);
        let end = damage(dir.path(), &written);
        let (log, report) = open(dir.path());
        assert!(!report.clean_shutdown, "{name}: {report:?}");
        assert!(
            report.clean_shutdown_rejected.is_some(),
            "{name}: {report:?}"
        );
        assert_eq!(log.log_end_offset(), end, "{name}");
        read_all(&log);
        assert!(!dir.path().join("clean-shutdown").exists(), "{name}");
    }
}

/// `close` does not fsync the active segment's index files, so a power cut after it may
/// leave older (still valid) ones under a newer marker. The open completes them from the
/// segment: every read and time lookup is right, and appends go on.
#[test]
fn stale_active_index_files_under_a_marker_are_completed() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The batches' own time, so a reopened active segment is not too old to take more.
    let clock = Arc::new(TestClock::new(T0 + 1000));
    let open =
        |dir: &Path| Log::open(dir, small_config(), Arc::new(FsDisk), clock.clone()).expect("open");
    let (log, _) = open(dir.path());
    let mut written = fill(&log, 13); // two sealed segments, one batch in the active one
    log.close().expect("close");
    drop(log);
    let active = files(dir.path(), ".log").pop().expect("active");
    let stale: Vec<(PathBuf, Vec<u8>)> = ["index", "timeindex"]
        .iter()
        .map(|ext| {
            let p = active.with_extension(ext);
            let b = std::fs::read(&p).expect("index file");
            (p, b)
        })
        .collect();
    let (log, report) = open(dir.path());
    assert!(report.clean_shutdown);
    for i in 13..18 {
        let mut b = batch(i, 2, 300);
        let info = log.append(&mut b, 1).expect("append");
        written.push(Written {
            base: info.base_offset,
            last: info.last_offset,
            bytes: b.to_vec(),
        });
    }
    assert_eq!(
        files(dir.path(), ".log").pop(),
        Some(active.clone()),
        "no roll"
    );
    log.close().expect("close");
    drop(log);
    for (p, b) in &stale {
        std::fs::write(p, b).expect("put the stale index back");
    }
    let (log, report) = open(dir.path());
    assert!(report.clean_shutdown, "{report:?}");
    assert!(check_reads(&log, &written, usize::MAX, false).is_empty());
    for i in 0..18 {
        let want = Some(2 * i + 1);
        assert_eq!(
            log.offset_for_timestamp(T0 + 10 * i + 1).expect("ts"),
            want,
            "{i}"
        );
    }
    let info = log.append(&mut batch(18, 2, 300), 1).expect("append");
    assert_eq!(info.base_offset, 36);
    drop(log);
    let (log, _) = open(dir.path());
    assert_eq!(log.log_end_offset(), 38);
}

/// The open removes the marker without syncing the directory, so a crash may bring it
/// back. Whatever happened in between, it is then either still true or rejected.
#[test]
fn a_marker_brought_back_by_a_crash_is_true_or_rejected() {
    // (what the second life of the log did, whether the old marker is still true)
    type Life = fn(&Log);
    let cases: [(&str, Life, bool); 4] = [
        ("nothing", |_| {}, true),
        (
            "an acknowledged append",
            |log| {
                let info = log.append(&mut batch(100, 1, 5), 1).expect("append");
                log.sync_to(info.last_offset).expect("sync");
            },
            false,
        ),
        (
            "appends that roll",
            |log| {
                for i in 0..8 {
                    log.append(&mut batch(200 + i, 2, 300), 1).expect("append");
                }
                log.sync().expect("sync");
            },
            false,
        ),
        (
            "a truncation",
            |log| {
                log.truncate_after(3).expect("truncate");
            },
            false,
        ),
    ];
    for (name, life, still_true) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _) = open(dir.path());
        fill(&log, 9);
        log.close().expect("close");
        drop(log);
        let marker = std::fs::read(dir.path().join("clean-shutdown")).expect("marker");
        let (log, report) = open(dir.path());
        assert!(report.clean_shutdown);
        life(&log);
        let expected = read_all(&log);
        let end = log.log_end_offset();
        drop(log); // crash
        std::fs::write(dir.path().join("clean-shutdown"), &marker).expect("bring it back");
        let (log, report) = open(dir.path());
        assert_eq!(report.clean_shutdown, still_true, "{name}: {report:?}");
        assert_eq!(
            report.clean_shutdown_rejected.is_some(),
            !still_true,
            "{name}"
        );
        assert_eq!(read_all(&log), expected, "{name}");
        assert_eq!(log.log_end_offset(), end, "{name}");
    }
}

/// Found by the fault simulation (`tests/faults.rs`): a roll that sealed a segment (index
/// files written) but failed at the directory sync after creating the next segment used
/// to let the next, smaller append land in the sealed segment. At the next open the empty
/// next segment was taken for the active one and the sealed segment's index for the whole
/// truth: acknowledged records past the index were gone.
#[test]
fn acknowledged_appends_after_a_half_done_roll_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = Arc::new(FaultyDisk::new(Arc::new(FsDisk)));
    let (log, _) = Log::open(
        dir.path(),
        small_config(),
        disk.clone(),
        Arc::new(SystemClock),
    )
    .expect("open");
    let mut written = fill(&log, 5);
    assert_eq!(log.segment_count(), 1);
    let mut big = batch(5, 2, 500);
    let mut small = batch(6, 1, 5);
    let room = small_config().segment_bytes_max - log.size_bytes();
    assert!(big.len() as u64 > room && small.len() as u64 <= room);
    // The big batch does not fit: it rolls, and the roll's directory sync fails.
    disk.fail_dir_syncs_after(0, FaultKind::Eio);
    assert!(matches!(log.append(&mut big, 1), Err(StorageError::Io(_))));
    assert!(!log.is_poisoned(), "only an fsync of data poisons");
    disk.clear_faults();
    // The small batch would still fit the sealed segment; it must go to the new one.
    let info = log.append(&mut small, 1).expect("append");
    log.sync_to(info.last_offset).expect("acknowledged");
    written.push(Written {
        base: info.base_offset,
        last: info.last_offset,
        bytes: small.to_vec(),
    });
    assert_eq!(log.segment_count(), 2);
    drop(log);
    let (log, _) = open(dir.path());
    let expected: Vec<Vec<u8>> = written.iter().map(|w| w.bytes.clone()).collect();
    assert_eq!(read_all(&log), expected);
    assert_eq!(log.log_end_offset(), info.last_offset + 1);
}
