//! Black-box tests of `weir_storage::Log` on a real file system (temporary directories),
//! with injected faults and a manual clock where needed.

mod common;

use common::{batch_of, small_config};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use proptest::prelude::*;
use weir_record::{BatchHeader, BatchIter};
use weir_storage::testing::{FaultKind, FaultyDisk};
use weir_storage::{
    CACHED_READ_BYTES_MAX, Clock, Disk, FsDisk, FsyncPolicy, Log, LogConfig, PREALLOCATE_BYTES,
    RecoveryReport, StorageError, SystemClock, TestClock,
};

const T0: i64 = 1_700_000_000_000;

/// An uncompressed batch of `records` records, `value_bytes` each, timestamps `ts`, `ts+1`…
fn batch(records: usize, ts: i64, value_bytes: usize) -> BytesMut {
    batch_of(ts, records, &vec![b'v'; value_bytes])
}

fn open(dir: &Path, config: LogConfig) -> (Log, RecoveryReport) {
    Log::open(dir, config, Arc::new(FsDisk), Arc::new(SystemClock)).expect("open")
}

/// A log on the real file system with fsync `never`, defaults otherwise.
fn open_unsynced(dir: &Path) -> Log {
    let config = LogConfig {
        fsync: FsyncPolicy::Never,
        ..LogConfig::default()
    };
    open(dir, config).0
}

/// A log with default settings on a fault-injecting disk over the real file system (no
/// faults armed yet).
fn open_faulty(dir: &Path) -> (Log, Arc<FaultyDisk>) {
    let disk = Arc::new(FaultyDisk::new(Arc::new(FsDisk)));
    let (log, _) = open_with(
        dir,
        LogConfig::default(),
        disk.clone(),
        Arc::new(SystemClock),
    );
    (log, disk)
}

fn open_with(
    dir: &Path,
    config: LogConfig,
    disk: Arc<dyn Disk>,
    clock: Arc<dyn Clock>,
) -> (Log, RecoveryReport) {
    Log::open(dir, config, disk, clock).expect("open")
}

/// Every batch from the log start to the log end, by repeated reads.
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

fn headers(bytes: &[u8]) -> Vec<BatchHeader> {
    BatchIter::new(bytes).map(|b| b.expect("batch").0).collect()
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

/// Appends `n` batches of 2 records and 300-byte values (rolls often under `small_config`).
fn fill(log: &Log, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut b = batch(2, T0 + 10 * i as i64, 300);
            log.append(&mut b, 1).expect("append");
            b.to_vec()
        })
        .collect()
}

#[test]
fn append_read_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (log, report) = open(dir.path(), LogConfig::default());
    assert!(report.is_clean());
    let mut b = batch(3, T0, 10);
    let info = log.append(&mut b, 7).unwrap();
    assert_eq!((info.base_offset, info.last_offset), (0, 2));
    assert_eq!(info.max_timestamp, T0 + 2);
    log.sync_to(info.last_offset).unwrap();
    assert_eq!(log.durable_end_offset(), 3);
    let r = log.read(0, 1 << 20, log.high_watermark()).unwrap();
    assert_eq!(&r.bytes[..], &b[..]);
    assert_eq!(r.next_offset, 3);
    let h = headers(&r.bytes);
    assert_eq!(h[0].partition_leader_epoch, 7);
    let recs: Vec<_> = weir_record::records(&r.bytes)
        .unwrap()
        .map(|r| r.unwrap().offset)
        .collect();
    assert_eq!(recs, vec![0, 1, 2]);
}

#[test]
fn multi_batch_append_assigns_contiguous_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), LogConfig::default());
    let mut all = BytesMut::new();
    for n in [2, 3, 1] {
        all.extend_from_slice(&batch(n, T0, 5));
    }
    let info = log.append(&mut all, 1).unwrap();
    assert_eq!((info.base_offset, info.last_offset), (0, 5));
    let r = log.read(0, 1 << 20, i64::MAX).unwrap();
    let bases: Vec<i64> = headers(&r.bytes).iter().map(|h| h.base_offset).collect();
    assert_eq!(bases, vec![0, 2, 5]);
    let info = log.append(&mut batch(1, T0, 5), 1).unwrap();
    assert_eq!(info.base_offset, 6);
}

#[test]
fn a_bad_batch_in_a_call_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), LogConfig::default());
    let mut all = BytesMut::new();
    all.extend_from_slice(&batch(2, T0, 5));
    let mut bad = batch(2, T0, 5);
    let last = bad.len() - 1;
    bad[last] ^= 1;
    all.extend_from_slice(&bad);
    assert!(matches!(
        log.append(&mut all, 1),
        Err(StorageError::Record(_))
    ));
    assert_eq!(log.log_end_offset(), 0);
    assert_eq!(log.size_bytes(), 0);

    assert!(matches!(
        log.append(&mut [], 1),
        Err(StorageError::EmptyAppend)
    ));
    let mut partial = batch(2, T0, 5);
    partial.extend_from_slice(&batch(1, T0, 5)[..30]);
    assert!(matches!(
        log.append(&mut partial, 1),
        Err(StorageError::Record(_))
    ));
    assert_eq!(log.log_end_offset(), 0);
}

#[test]
fn oversized_batches_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), small_config());
    match log.append(&mut batch(1, T0, 3000), 1) {
        Err(StorageError::BatchTooLarge { max, .. }) => assert_eq!(max, 2048),
        other => panic!("expected BatchTooLarge, got {other:?}"),
    }
    let mut many = BytesMut::new();
    for _ in 0..4 {
        many.extend_from_slice(&batch(1, T0, 1500));
    }
    assert!(matches!(
        log.append(&mut many, 1),
        Err(StorageError::AppendTooLarge { .. })
    ));
}

#[test]
fn read_returns_whole_batches_within_limits() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), LogConfig::default());
    let mut sizes = Vec::new();
    for i in 0..10 {
        let mut b = batch(3, T0 + i, 20);
        sizes.push(b.len());
        log.append(&mut b, 1).unwrap();
    }
    // An offset inside a batch returns the batch holding it.
    let r = log.read(4, 1 << 20, i64::MAX).unwrap();
    assert_eq!(headers(&r.bytes)[0].base_offset, 3);
    assert_eq!(r.next_offset, 30);
    // max_bytes smaller than one batch: the first batch, whole.
    let r = log.read(4, 1, i64::MAX).unwrap();
    assert_eq!(r.bytes.len(), sizes[1]);
    assert_eq!(r.next_offset, 6);
    // max_bytes of two batches and a bit.
    let r = log
        .read(0, (sizes[0] + sizes[1] + 5) as u32, i64::MAX)
        .unwrap();
    assert_eq!(headers(&r.bytes).len(), 2);
    // upper: stops before a batch based at or after it.
    let r = log.read(0, 1 << 20, 7).unwrap();
    let bases: Vec<i64> = headers(&r.bytes).iter().map(|h| h.base_offset).collect();
    assert_eq!(bases, vec![0, 3, 6]);
    assert!(log.read(7, 1 << 20, 7).unwrap().bytes.is_empty());
    // The end is empty, past it is out of range.
    let r = log.read(30, 1 << 20, i64::MAX).unwrap();
    assert!(r.bytes.is_empty());
    assert_eq!(r.next_offset, 30);
    assert!(matches!(
        log.read(31, 1 << 20, i64::MAX),
        Err(StorageError::OffsetOutOfRange {
            offset: 31,
            start: 0,
            end: 30
        })
    ));
    assert!(matches!(
        log.read(-1, 1 << 20, i64::MAX),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
}

/// Whether `path` is on tmpfs, where file data lives only in memory and every page is
/// always cached.
fn on_tmpfs(path: &Path) -> bool {
    const TMPFS_MAGIC: u64 = 0x0102_1994;
    let st = rustix::fs::statfs(path).expect("statfs");
    u64::try_from(st.f_type).is_ok_and(|t| t == TMPFS_MAGIC)
}

#[test]
fn cached_reads_answer_as_reads_do_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_unsynced(dir.path());
    // About 2.4 MiB: more than one cached read may copy.
    let written = fill(&log, 3600);
    assert!(log.size_bytes() > u64::from(CACHED_READ_BYTES_MAX));
    let end = log.log_end_offset();
    let hw = log.high_watermark();
    for (offset, max_bytes) in [
        (0, 1),
        (0, 4096),
        (7, 20_000),
        (1500, 100_000),
        (end, 1 << 20),
    ] {
        let cached = log
            .read_cached(offset, max_bytes, hw)
            .expect("the tail is cached");
        let read = log.read(offset, max_bytes, hw).unwrap();
        assert_eq!(cached.bytes, read.bytes, "offset {offset}");
        assert_eq!(cached.next_offset, read.next_offset);
    }
    let first = log.read_cached(0, 1, hw).unwrap();
    assert_eq!(&first.bytes[..], &written[0][..]);
    // A read bigger than CACHED_READ_BYTES_MAX, and errors, are left to `read`.
    assert!(log.read_cached(0, CACHED_READ_BYTES_MAX, hw).is_none());
    let whole = log.read(0, CACHED_READ_BYTES_MAX, hw).unwrap();
    assert!(whole.bytes.len() > CACHED_READ_BYTES_MAX as usize - 1000);
    assert!(log.read_cached(end + 1, 4096, hw).is_none());
    assert!(log.read_cached(-1, 4096, hw).is_none());

    // Dropped from the page cache (synced pages are clean, so the hint drops them): only
    // `read` reads them, and they are cached again after it. The hint skips a page some
    // other reference holds for a moment, so it is given until the read sees it work.
    log.sync().unwrap();
    let segment = std::fs::File::open(&files(dir.path(), ".log")[0]).unwrap();
    if on_tmpfs(dir.path()) {
        eprintln!("tmpfs keeps every page cached: the eviction case is not tested here");
    } else {
        let evicted = (0..100).any(|_| {
            rustix::fs::fadvise(&segment, 0, None, rustix::fs::Advice::DontNeed).unwrap();
            let gone = log.read_cached(0, 4096, hw).is_none();
            if !gone {
                std::thread::sleep(Duration::from_millis(20));
            }
            gone
        });
        assert!(
            evicted,
            "pages the kernel dropped were still read as cached"
        );
    }
    let read = log.read(0, 4096, hw).unwrap();
    let cached = log.read_cached(0, 4096, hw).expect("cached by the read");
    assert_eq!(cached.bytes, read.bytes);
}

#[test]
fn a_first_batch_above_max_bytes_is_read_from_the_cache_in_one_pass() {
    // Batches of about 1,000 KiB read with max_bytes 600 KiB: each fetch answers one
    // whole batch. Looking past it for the next batch's header would copy another chunk
    // and push the read over CACHED_READ_BYTES_MAX, leaving a cached tail to `read`.
    let dir = tempfile::tempdir().unwrap();
    let log = open_unsynced(dir.path());
    for i in 0..3 {
        log.append(&mut batch(10, T0 + i, 100 * 1024), 1).unwrap();
    }
    let hw = log.high_watermark();
    for offset in [0, 10, 25] {
        let read = log.read(offset, 600 * 1024, hw).unwrap();
        assert_eq!(headers(&read.bytes).len(), 1, "offset {offset}");
        let cached = log
            .read_cached(offset, 600 * 1024, hw)
            .expect("one batch of the cached tail");
        assert_eq!(cached.bytes, read.bytes, "offset {offset}");
        assert_eq!(cached.next_offset, read.next_offset);
    }
}

#[test]
fn a_disk_that_cannot_tell_what_is_cached_leaves_every_read_to_read() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open_faulty(dir.path());
    fill(&log, 3);
    log.sync().unwrap();
    let hw = log.high_watermark();
    assert!(log.read_cached(0, 4096, hw).is_none());
    assert_eq!(log.read(0, 4096, hw).unwrap().next_offset, 6);
}

#[test]
fn segments_roll_by_size_and_every_offset_reads_across_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config();
    let (log, _) = open(dir.path(), config.clone());
    let written = fill(&log, 40);
    assert!(log.segment_count() > 3, "{}", log.segment_count());
    for f in files(dir.path(), ".log") {
        assert!(std::fs::metadata(&f).unwrap().len() <= config.segment_bytes_max);
    }
    assert_eq!(read_all(&log), written);
    for offset in 0..log.log_end_offset() {
        let r = log.read(offset, 1, i64::MAX).unwrap();
        let h = headers(&r.bytes);
        assert_eq!(h.len(), 1);
        assert!(
            h[0].base_offset <= offset && offset <= h[0].last_offset(),
            "{offset}"
        );
    }
    // Sealed segments have index files; reopening finds them valid.
    assert_eq!(files(dir.path(), ".index").len(), log.segment_count() - 1);
    let segments = log.segment_count();
    drop(log);
    let (log, report) = open(dir.path(), config);
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(log.segment_count(), segments);
    assert_eq!(read_all(&log), written);
}

#[test]
fn segments_roll_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(TestClock::new(T0));
    let config = LogConfig {
        segment_age_ms_max: 1000,
        ..LogConfig::default()
    };
    let (log, _) = open_with(dir.path(), config, Arc::new(FsDisk), clock.clone());
    log.append(&mut batch(1, T0, 5), 1).unwrap();
    clock.advance_ms(999);
    log.append(&mut batch(1, T0, 5), 1).unwrap();
    assert_eq!(log.segment_count(), 1);
    clock.advance_ms(1);
    log.append(&mut batch(1, T0, 5), 1).unwrap();
    assert_eq!(log.segment_count(), 2);
    // The new segment's age counts from its first append, not from the roll.
    clock.advance_ms(500);
    log.append(&mut batch(1, T0, 5), 1).unwrap();
    assert_eq!(log.segment_count(), 2);
    assert_eq!(files(dir.path(), ".log").len(), 2);
}

#[test]
fn offset_for_timestamp_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), small_config());
    // Batch i holds two records at T0 + 10i and T0 + 10i + 1.
    fill(&log, 30);
    let check = |log: &Log| {
        for q in (T0 - 5)..(T0 + 300) {
            let d = q - T0;
            let expect = if d <= 0 {
                Some(0)
            } else {
                let (j, k) = (d / 10, d % 10);
                Some(match k {
                    0 => 2 * j,
                    1 => 2 * j + 1,
                    _ => 2 * j + 2,
                })
            };
            let expect = expect.filter(|&o| o < 60);
            assert_eq!(log.offset_for_timestamp(q).unwrap(), expect, "ts {q}");
        }
    };
    check(&log);
    drop(log);
    let (log, _) = open(dir.path(), small_config());
    check(&log);
}

#[test]
fn recovery_cuts_the_last_batch_torn_at_every_byte() {
    let probe = tempfile::tempdir().unwrap();
    let (log, _) = open(probe.path(), LogConfig::default());
    fill(&log, 3);
    let start = log.size_bytes();
    let last_len = batch(2, T0, 300).len() as u64;
    drop(log);
    for cut in start..start + last_len {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open(dir.path(), LogConfig::default());
        let written = fill(&log, 4);
        drop(log); // a crash: no close
        let seg = &files(dir.path(), ".log")[0];
        std::fs::OpenOptions::new()
            .write(true)
            .open(seg)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let (log, report) = open(dir.path(), LogConfig::default());
        assert_eq!(log.log_end_offset(), 6, "cut {cut}");
        assert_eq!(log.durable_end_offset(), 6);
        if cut == start {
            assert!(report.truncated.is_none());
        } else {
            let t = report.truncated.clone().expect("truncation reported");
            assert_eq!((t.position, t.bytes), (start, cut - start), "cut {cut}");
        }
        assert_eq!(std::fs::metadata(seg).unwrap().len(), start);
        assert_eq!(read_all(&log), written[..3].to_vec());
        let info = log.append(&mut batch(1, T0, 1), 1).unwrap();
        assert_eq!(info.base_offset, 6);
    }
}

#[test]
fn recovery_cuts_a_tail_with_a_flipped_bit() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), LogConfig::default());
    let written = fill(&log, 5);
    let start_of_4th = (written[0].len() * 3) as u64;
    drop(log);
    let seg = &files(dir.path(), ".log")[0];
    let mut bytes = std::fs::read(seg).unwrap();
    bytes[start_of_4th as usize + 100] ^= 0x10;
    std::fs::write(seg, &bytes).unwrap();
    let (log, report) = open(dir.path(), LogConfig::default());
    let t = report.truncated.expect("truncated");
    assert_eq!(t.position, start_of_4th);
    assert!(t.reason.contains("crc"), "{}", t.reason);
    assert_eq!(log.log_end_offset(), 6);
    assert_eq!(read_all(&log), written[..3].to_vec());
}

#[test]
fn missing_and_garbage_indexes_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), small_config());
    let written = fill(&log, 30);
    let sealed = log.segment_count() - 1;
    drop(log);
    let indexes = files(dir.path(), ".index");
    let times = files(dir.path(), ".timeindex");
    std::fs::remove_file(&indexes[0]).unwrap();
    std::fs::remove_file(&times[1]).unwrap();
    std::fs::write(&indexes[2], b"garbage!garbage").unwrap();
    // Whole entries but pointing past the segment.
    std::fs::write(
        &indexes[3],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0],
    )
    .unwrap();
    let (log, report) = open(dir.path(), small_config());
    assert_eq!(report.indexes_rebuilt.len(), 4, "{report:?}");
    assert!(report.corrupt.is_empty() && report.truncated.is_none());
    assert_eq!(log.segment_count(), sealed + 1);
    assert_eq!(read_all(&log), written);
    assert_eq!(log.offset_for_timestamp(T0 + 101).unwrap(), Some(21));
    drop(log);
    let (_, report) = open(dir.path(), small_config());
    assert!(report.is_clean(), "{report:?}");
}

#[test]
fn stray_files_are_removed_and_unknown_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), small_config());
    fill(&log, 3);
    drop(log);
    let p = dir.path();
    std::fs::write(p.join("00000000000000000000.index.tmp"), b"x").unwrap();
    std::fs::write(p.join("00000000000000099999.index"), b"x").unwrap();
    std::fs::write(p.join("notes.txt"), b"x").unwrap();
    let (_, report) = open(p, small_config());
    let mut removed = report.stray_files_removed.clone();
    removed.sort();
    assert_eq!(
        removed,
        vec![
            "00000000000000000000.index.tmp",
            "00000000000000099999.index"
        ]
    );
    assert_eq!(report.unknown_files, vec!["notes.txt"]);
    assert!(p.join("notes.txt").exists());
    assert!(!p.join("00000000000000099999.index").exists());
}

#[test]
fn a_corrupt_sealed_segment_is_reported_and_reads_fail_there() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), small_config());
    let written = fill(&log, 30);
    let batch_len = written[0].len();
    drop(log);
    let seg0 = &files(dir.path(), ".log")[0];
    let mut bytes = std::fs::read(seg0).unwrap();
    bytes[batch_len + 200] ^= 1; // inside the second batch (offsets 2, 3)
    std::fs::write(seg0, &bytes).unwrap();

    // Index intact: recovery does not scan sealed data, but reads check the CRC.
    let (log, report) = open(dir.path(), small_config());
    assert!(report.is_clean());
    assert!(matches!(
        log.read(2, 1 << 20, i64::MAX),
        Err(StorageError::Corrupt { segment: 0, .. })
    ));
    drop(log);

    std::fs::remove_file(&files(dir.path(), ".index")[0]).unwrap();
    let (log, report) = open(dir.path(), small_config());
    assert_eq!(report.corrupt.len(), 1);
    assert_eq!(report.corrupt[0].segment, 0);
    assert_eq!(report.corrupt[0].position, batch_len as u64);
    assert!(matches!(
        log.read(3, 1 << 20, i64::MAX),
        Err(StorageError::Corrupt { .. })
    ));
    // Before the bad batch: only the good one; other segments are unaffected.
    let r = log.read(0, 1 << 20, i64::MAX).unwrap();
    assert_eq!(&r.bytes[..], &written[0][..]);
    let last = log.log_end_offset() - 1;
    assert!(!log.read(last, 1 << 20, i64::MAX).unwrap().bytes.is_empty());
    // The data is kept, not deleted.
    assert_eq!(std::fs::metadata(seg0).unwrap().len(), bytes.len() as u64);
}

#[test]
fn truncate_after_within_and_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), small_config());
    let written = fill(&log, 30); // offsets 0..60, 2 per batch
    let segments = log.segment_count();
    // Nothing past the end.
    assert_eq!(log.truncate_after(59).unwrap(), 60);
    assert_eq!(log.truncate_after(100).unwrap(), 60);
    // Inside the last segment, cutting mid-batch keeps the batch holding the offset.
    assert_eq!(log.truncate_after(56).unwrap(), 58);
    assert_eq!(log.segment_count(), segments);
    // Across segments.
    assert_eq!(log.truncate_after(20).unwrap(), 22);
    assert!(log.segment_count() < segments);
    assert_eq!(log.durable_end_offset(), 22);
    assert!(matches!(
        log.read(23, 100, i64::MAX),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    assert_eq!(read_all(&log), written[..11].to_vec());
    let info = log.append(&mut batch(2, T0, 300), 2).unwrap();
    assert_eq!(info.base_offset, 22);
    // The cut batches' timestamps are gone with them.
    assert_eq!(log.offset_for_timestamp(T0 + 101).unwrap(), Some(21));
    assert_eq!(log.offset_for_timestamp(T0 + 102).unwrap(), None);
    let expected_files = log.segment_count();
    drop(log);
    let (log, report) = open(dir.path(), small_config());
    assert!(report.truncated.is_none(), "{report:?}");
    assert_eq!(log.log_end_offset(), 24);
    assert_eq!(log.segment_count(), expected_files);
    // Everything.
    assert!(matches!(
        log.truncate_after(-2),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    assert_eq!(log.truncate_after(-1).unwrap(), 0);
    assert_eq!(log.size_bytes(), 0);
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.append(&mut batch(1, T0, 1), 3).unwrap().base_offset, 0);
}

#[test]
fn retention_by_age_and_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(TestClock::new(T0 + 1000));
    let config = LogConfig {
        retention_ms_max: Some(10_000),
        ..small_config()
    };
    let (log, _) = open_with(dir.path(), config.clone(), Arc::new(FsDisk), clock.clone());
    fill(&log, 30); // timestamps T0 .. T0 + 291
    let segments = log.segment_count();
    let r = log.apply_retention().unwrap();
    assert_eq!(r.segments_deleted, 0);
    // Everything is older than the horizon, but the active segment stays.
    clock.set_ms(T0 + 100_000);
    let r = log.apply_retention().unwrap();
    assert_eq!(r.segments_deleted, segments - 1);
    assert_eq!(log.segment_count(), 1);
    assert_eq!(r.log_start_offset, log.log_start_offset());
    assert!(log.log_start_offset() > 0);
    assert_eq!(files(dir.path(), ".log").len(), 1);
    assert!(files(dir.path(), ".index").is_empty());
    assert!(matches!(
        log.read(0, 100, i64::MAX),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    let start = log.log_start_offset();
    assert!(!log.read(start, 100, i64::MAX).unwrap().bytes.is_empty());
    drop(log);

    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_bytes_max: Some(8000),
        ..small_config()
    };
    let (log, _) = open(dir.path(), config.clone());
    fill(&log, 30);
    let before = log.size_bytes();
    let r = log.apply_retention().unwrap();
    assert!(r.segments_deleted > 0);
    assert_eq!(before - r.bytes_deleted, log.size_bytes());
    assert!(log.size_bytes() <= 8000);
    drop(log);
    let (log, report) = open(dir.path(), config);
    assert!(report.is_clean());
    assert!(log.size_bytes() <= 8000);
}

#[test]
fn a_failed_fsync_poisons_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (log, disk) = open_faulty(dir.path());
    let info = log.append(&mut batch(1, T0, 5), 1).unwrap();
    log.sync_to(info.last_offset).unwrap();
    log.append(&mut batch(1, T0, 5), 1).unwrap();
    disk.fail_syncs_after(0, FaultKind::Eio);
    assert!(matches!(log.sync(), Err(StorageError::Fatal(_))));
    assert!(log.is_poisoned());
    disk.clear_faults();
    // Never retried as if nothing happened.
    assert!(matches!(log.sync(), Err(StorageError::Poisoned)));
    assert!(matches!(
        log.append(&mut batch(1, T0, 5), 1),
        Err(StorageError::Poisoned)
    ));
    assert!(matches!(log.truncate_after(0), Err(StorageError::Poisoned)));
    assert_eq!(log.durable_end_offset(), 1);
    // Durable data stays readable.
    assert!(
        !log.read(0, 100, log.high_watermark())
            .unwrap()
            .bytes
            .is_empty()
    );
    drop(log);
    let (log, _) = open(dir.path(), LogConfig::default());
    assert!(!log.is_poisoned());
}

#[test]
fn a_failed_write_leaves_the_log_usable() {
    let dir = tempfile::tempdir().unwrap();
    let (log, disk) = open_faulty(dir.path());
    log.append(&mut batch(1, T0, 5), 1).unwrap();
    disk.fail_writes_after(0, FaultKind::Enospc);
    match log.append(&mut batch(1, T0, 5), 1) {
        Err(StorageError::Io(e)) => assert_eq!(e.raw_os_error(), Some(28)),
        other => panic!("expected ENOSPC, got {other:?}"),
    }
    assert_eq!(log.log_end_offset(), 1);
    disk.clear_faults();
    assert_eq!(log.append(&mut batch(1, T0, 5), 1).unwrap().base_offset, 1);
    log.sync().unwrap();
    drop(log);
    let (log, report) = open(dir.path(), LogConfig::default());
    assert!(report.is_clean());
    assert_eq!(log.log_end_offset(), 2);
}

#[test]
fn one_fsync_covers_every_earlier_append() {
    let dir = tempfile::tempdir().unwrap();
    let (log, disk) = open_faulty(dir.path());
    let base = disk.sync_count();
    let mut last = 0;
    for _ in 0..10 {
        last = log.append(&mut batch(1, T0, 5), 1).unwrap().last_offset;
    }
    assert_eq!(log.high_watermark(), 0, "nothing durable yet");
    log.sync_to(last).unwrap();
    assert_eq!(disk.sync_count() - base, 1);
    log.sync_to(3).unwrap();
    log.sync().unwrap();
    assert_eq!(disk.sync_count() - base, 1);
    assert_eq!(log.high_watermark(), 10);
}

/// Without fsync `always`, every 8 MiB appended to the active segment starts its
/// writeback (a hint, contiguous ranges, nothing skipped); with `always`, fdatasync does.
#[test]
fn appends_start_writeback_every_8_mib_unless_fsync_is_always() {
    for fsync in [FsyncPolicy::Never, FsyncPolicy::Always] {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(FaultyDisk::new(Arc::new(FsDisk)));
        let config = LogConfig {
            fsync,
            ..LogConfig::default()
        };
        let (log, _) = open_with(dir.path(), config, disk.clone(), Arc::new(SystemClock));
        let mut written = 0u64;
        while written < 20 << 20 {
            let mut b = batch(16, T0, 64 * 1024);
            written += b.len() as u64;
            log.append(&mut b, 1).unwrap();
        }
        let hints = disk.writebacks();
        if fsync == FsyncPolicy::Always {
            assert!(hints.is_empty(), "{hints:?}");
            continue;
        }
        assert_eq!(hints.len(), 2, "{hints:?}");
        assert_eq!(hints[0].0, 0);
        assert_eq!(hints[1].0, hints[0].0 + hints[0].1, "contiguous");
        assert!(hints.iter().all(|(_, len)| *len >= 8 << 20), "{hints:?}");
    }
}

#[test]
fn concurrent_appenders_share_fsyncs() {
    const THREADS: usize = 4;
    const APPENDS: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let (log, disk) = open_faulty(dir.path());
    disk.set_sync_delay(Duration::from_millis(2));
    let log = Arc::new(log);
    let base = disk.sync_count();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for i in 0..APPENDS {
                    let mut b = batch(1, T0 + (t * APPENDS + i) as i64, 16);
                    let info = log.append(&mut b, 1).unwrap();
                    log.sync_to(info.last_offset).unwrap();
                    assert!(log.durable_end_offset() > info.last_offset);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let syncs = disk.sync_count() - base;
    assert!(
        syncs < (THREADS * APPENDS) as u64,
        "{syncs} fsyncs for {} appends",
        THREADS * APPENDS
    );
    assert_eq!(log.log_end_offset(), (THREADS * APPENDS) as i64);
    let offsets: Vec<i64> = read_all(&log)
        .iter()
        .map(|b| BatchHeader::parse(b).unwrap().base_offset)
        .collect();
    assert_eq!(offsets, (0..(THREADS * APPENDS) as i64).collect::<Vec<_>>());
}

#[test]
fn readers_see_whole_batches_while_appending_and_deleting() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(TestClock::new(T0 + 1000));
    let config = LogConfig {
        retention_bytes_max: Some(6000),
        ..small_config()
    };
    let (log, _) = open_with(dir.path(), config, Arc::new(FsDisk), clock);
    let log = Arc::new(log);
    let reader = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut reads = 0;
            while log.log_end_offset() < 200 {
                let start = log.log_start_offset();
                match log.read(start, 3000, log.log_end_offset()) {
                    Ok(r) => {
                        let mut batches = BatchIter::new(&r.bytes);
                        for b in batches.by_ref() {
                            weir_record::validate_batch(b.unwrap().1).unwrap();
                        }
                        assert_eq!(batches.consumed(), r.bytes.len(), "only whole batches");
                        reads += 1;
                    }
                    // Retention moved the start between the two calls.
                    Err(StorageError::OffsetOutOfRange { .. }) => {}
                    Err(e) => panic!("read failed: {e}"),
                }
            }
            reads
        })
    };
    for _ in 0..100 {
        log.append(&mut batch(2, T0, 300), 1).unwrap();
        log.apply_retention().unwrap();
    }
    assert!(reader.join().unwrap() > 0);
    assert!(log.log_start_offset() > 0);
}

#[test]
fn high_watermark_follows_the_fsync_policy() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_unsynced(dir.path());
    log.append(&mut batch(2, T0, 5), 1).unwrap();
    assert_eq!(log.high_watermark(), 2);
    assert_eq!(log.durable_end_offset(), 0);
}

#[test]
fn interval_policy_syncs_from_append_when_due() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(FaultyDisk::new(Arc::new(FsDisk)));
    let clock = Arc::new(TestClock::new(T0));
    let config = LogConfig {
        fsync: FsyncPolicy::IntervalMs(100),
        ..LogConfig::default()
    };
    let (log, _) = open_with(dir.path(), config, disk.clone(), clock.clone());
    let base = disk.sync_count();
    log.append(&mut batch(1, T0, 5), 1).unwrap();
    assert_eq!(disk.sync_count(), base);
    clock.advance_ms(100);
    log.append(&mut batch(1, T0, 5), 1).unwrap();
    assert_eq!(disk.sync_count(), base + 1);
    assert_eq!(log.durable_end_offset(), 2);
}

#[test]
fn close_then_reopen_is_clean_and_delete_removes_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("topic-0");
    let (log, _) = open(&path, small_config());
    let written = fill(&log, 12);
    log.close().unwrap();
    log.close().unwrap();
    assert!(matches!(
        log.append(&mut batch(1, T0, 1), 1),
        Err(StorageError::Closed)
    ));
    assert_eq!(read_all(&log), written);
    drop(log);
    let (log, report) = open(&path, small_config());
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(read_all(&log), written);
    log.delete().unwrap();
    assert!(!path.exists());
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<(usize, usize)>),
    Read { pick: u16, max_bytes: u16 },
    Truncate(u16),
    Reopen,
    Sync,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec((1usize..4, 0usize..250), 1..4).prop_map(Op::Append),
        3 => (any::<u16>(), 1u16..3000).prop_map(|(pick, max_bytes)| Op::Read { pick, max_bytes }),
        1 => any::<u16>().prop_map(Op::Truncate),
        1 => Just(Op::Reopen),
        1 => Just(Op::Sync),
    ]
}

/// The model: the log's batches, each with its base and last offset.
fn model_end(model: &[(i64, i64, Vec<u8>)]) -> i64 {
    model.last().map_or(0, |b| b.1 + 1)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]
    #[test]
    fn random_ops_match_a_model(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig { index_interval_bytes: 128, ..small_config() };
        let (mut log, _) = open(dir.path(), config.clone());
        let mut model: Vec<(i64, i64, Vec<u8>)> = Vec::new();
        for op in ops {
            match op {
                Op::Append(batches) => {
                    let mut all = BytesMut::new();
                    for (n, v) in &batches {
                        all.extend_from_slice(&batch(*n, T0, *v));
                    }
                    let info = log.append(&mut all, 1).unwrap();
                    prop_assert_eq!(info.base_offset, model_end(&model));
                    for b in BatchIter::new(&all) {
                        let (h, bytes) = b.unwrap();
                        model.push((h.base_offset, h.last_offset(), bytes.to_vec()));
                    }
                }
                Op::Read { pick, max_bytes } => {
                    let end = model_end(&model);
                    let offset = i64::from(pick) % (end + 1);
                    let r = log.read(offset, max_bytes.into(), i64::MAX).unwrap();
                    if offset == end {
                        prop_assert!(r.bytes.is_empty());
                        continue;
                    }
                    let i = model.iter().position(|b| b.0 <= offset && offset <= b.1).unwrap();
                    let got: Vec<Vec<u8>> = BatchIter::new(&r.bytes).map(|b| b.unwrap().1.to_vec()).collect();
                    prop_assert!(!got.is_empty());
                    prop_assert!(got.len() == 1 || r.bytes.len() <= usize::from(max_bytes));
                    for (k, g) in got.iter().enumerate() {
                        prop_assert_eq!(g, &model[i + k].2);
                    }
                    prop_assert_eq!(r.next_offset, model[i + got.len() - 1].1 + 1);
                }
                Op::Truncate(pick) => {
                    let end = model_end(&model);
                    let offset = i64::from(pick) % (end + 1) - 1;
                    let new_end = log.truncate_after(offset).unwrap();
                    model.retain(|b| b.0 <= offset);
                    prop_assert_eq!(new_end, model_end(&model));
                }
                Op::Reopen => {
                    drop(log);
                    let (l, report) = open(dir.path(), config.clone());
                    prop_assert!(report.truncated.is_none(), "{:?}", report);
                    prop_assert!(report.corrupt.is_empty());
                    log = l;
                    let all: Vec<Vec<u8>> = model.iter().map(|b| b.2.clone()).collect();
                    prop_assert_eq!(read_all(&log), all);
                }
                Op::Sync => {
                    log.sync().unwrap();
                    prop_assert_eq!(log.durable_end_offset(), model_end(&model));
                }
            }
            prop_assert_eq!(log.log_end_offset(), model_end(&model));
            prop_assert!(log.durable_end_offset() <= log.log_end_offset());
            prop_assert_eq!(log.log_start_offset(), 0);
        }
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).expect("metadata").len()
}

#[test]
fn an_fsync_always_segment_reserves_space_ahead_and_close_gives_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), LogConfig::default());
    let written = fill(&log, 3);
    log.sync().unwrap();
    let data = log.size_bytes();
    let seg = &files(dir.path(), ".log")[0];
    // Reserved at the first append, and the later ones landed inside it.
    assert_eq!(file_len(seg), written[0].len() as u64 + PREALLOCATE_BYTES);
    assert_eq!(read_all(&log), written);
    log.close().unwrap();
    assert_eq!(file_len(seg), data);
    drop(log);
    let (log, report) = open(dir.path(), LogConfig::default());
    assert!(report.clean_shutdown, "{report:?}");
    assert_eq!(read_all(&log), written);
}

#[test]
fn other_fsync_policies_reserve_nothing() {
    for fsync in [FsyncPolicy::Never, FsyncPolicy::IntervalMs(1000)] {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open(
            dir.path(),
            LogConfig {
                fsync,
                ..LogConfig::default()
            },
        );
        fill(&log, 3);
        assert_eq!(file_len(&files(dir.path(), ".log")[0]), log.size_bytes());
    }
}

/// Writes `n` batches to a new fsync `always` log in `dir`, syncs them and crashes: neither
/// close nor drop runs, so the space reserved ahead of the appends stays. Returns the
/// batches and the bytes they take.
fn crash_after(dir: &Path, n: usize) -> (Vec<Vec<u8>>, u64) {
    let (log, _) = open(dir, LogConfig::default());
    let written = fill(&log, n);
    log.sync().unwrap();
    let data = log.size_bytes();
    std::mem::forget(log);
    (written, data)
}

#[test]
fn a_crash_leaves_reserved_space_that_recovery_cuts_as_unwritten() {
    let dir = tempfile::tempdir().unwrap();
    let (written, data) = crash_after(dir.path(), 4);
    let seg = &files(dir.path(), ".log")[0];
    assert!(file_len(seg) > data);
    let (log, report) = open(dir.path(), LogConfig::default());
    let t = report.truncated.clone().expect("the reserved tail is cut");
    assert!(t.unwritten, "{t:?}");
    assert_eq!(
        (t.position, t.bytes),
        (data, written[0].len() as u64 + PREALLOCATE_BYTES - data)
    );
    assert!(
        report.is_clean(),
        "cutting unwritten space is no repair: {report:?}"
    );
    assert_eq!(file_len(seg), data);
    assert_eq!(read_all(&log), written);
    let mut one = batch(1, T0, 1);
    let info = log.append(&mut one, 1).unwrap();
    assert_eq!(info.base_offset, 8);
    // The recovered segment is dated by its batches' (old) timestamps, so this append
    // rolled; the new active segment reserves space as the first did.
    let active = files(dir.path(), ".log").pop().unwrap();
    assert_ne!(&active, seg);
    assert_eq!(
        file_len(&active),
        one.len() as u64 + PREALLOCATE_BYTES,
        "reserves again"
    );
}

#[test]
fn a_torn_batch_inside_reserved_space_is_reported_as_damage() {
    let dir = tempfile::tempdir().unwrap();
    let (written, data) = crash_after(dir.path(), 2);
    // Half of a third batch reached the reserved space before the power went.
    let third = batch(2, T0, 300);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&files(dir.path(), ".log")[0])
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &third[..third.len() / 2], data).unwrap();
    let (log, report) = open(dir.path(), LogConfig::default());
    let t = report.truncated.clone().expect("cut");
    assert!(!t.unwritten && !report.is_clean(), "{report:?}");
    assert_eq!(t.position, data);
    assert_eq!(read_all(&log), written);
}

#[test]
fn sealed_segments_hold_only_their_batches() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config();
    let (log, _) = open(dir.path(), config.clone());
    let written = fill(&log, 40);
    let segs = files(dir.path(), ".log");
    assert!(segs.len() > 3);
    let (sealed, active) = segs.split_at(segs.len() - 1);
    let sealed_bytes: u64 = sealed.iter().map(|p| file_len(p)).sum();
    let active_data = log.size_bytes() - sealed_bytes;
    for p in sealed {
        assert!(file_len(p) <= config.segment_bytes_max);
    }
    // Reserved up to the segment limit at most, never past it.
    assert_eq!(
        file_len(&active[0]),
        config.segment_bytes_max.max(active_data)
    );
    assert_eq!(read_all(&log), written);
    drop(log);
    assert_eq!(
        file_len(&active[0]),
        active_data,
        "drop gives the space back"
    );
    let (log, report) = open(dir.path(), config);
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(read_all(&log), written);
}
