//! The partition log's hot paths on the real file system: append (validate, patch,
//! positional write, index upkeep; fsync `never`, so the page cache is measured, not the
//! disk) and read at an offset (index lookup, one positional read, header walk, CRC).
//! `cargo bench -p weir-storage`. The data lives in a temporary directory.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use weir_record::{BatchBuilder, Record};
use weir_storage::{FsDisk, FsyncPolicy, Log, LogConfig, SystemClock};

fn batch(value_bytes: usize, batch_bytes: usize) -> BytesMut {
    let value = vec![7u8; value_bytes];
    let mut b = BatchBuilder::with_capacity(1_700_000_000_000, batch_bytes);
    while b.size_bytes() + value_bytes + 16 < batch_bytes {
        b.push(Record {
            timestamp_ms: 1_700_000_000_000,
            key: None,
            value: Some(&value),
            headers: &[],
        });
    }
    b.finish()
}

fn open(dir: &std::path::Path) -> Log {
    let config = LogConfig {
        fsync: FsyncPolicy::Never,
        // Small segments and a size bound keep the benchmark's disk use bounded.
        segment_bytes_max: 64 << 20,
        retention_bytes_max: Some(256 << 20),
        ..LogConfig::default()
    };
    Log::open(dir, config, Arc::new(FsDisk), Arc::new(SystemClock))
        .expect("open log")
        .0
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("append");
    for size in [64 * 1024, 1 << 20] {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path());
        let mut b = batch(100, size);
        let mut n = 0u64;
        g.throughput(Throughput::Bytes(b.len() as u64));
        g.bench_function(BenchmarkId::new("100B", size), |bench| {
            bench.iter(|| {
                let info = log.append(black_box(&mut b), 0).expect("append");
                n += 1;
                if n.is_multiple_of(256) {
                    log.apply_retention().expect("retention");
                }
                info
            });
        });
    }
    g.finish();
}

fn read(c: &mut Criterion) {
    let mut g = c.benchmark_group("read_at_offset");
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    let mut b = batch(100, 16 * 1024);
    for _ in 0..4096 {
        log.append(&mut b, 0).expect("append");
    }
    let end = log.log_end_offset();
    let hw = log.high_watermark();
    for max_bytes in [4096u32, 1 << 20] {
        g.throughput(Throughput::Elements(1));
        let mut x: i64 = 12345;
        g.bench_function(BenchmarkId::new("random", max_bytes), |bench| {
            bench.iter(|| {
                // A cheap LCG: offsets all over the log, so every lookup searches.
                x = (x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1)).rem_euclid(end);
                log.read(black_box(x), max_bytes, hw).expect("read")
            });
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    targets = append, read
}
criterion_main!(benches);
