//! The record format's hot paths: what the broker does per produced batch (validate:
//! header + CRC-32C), what a producer does per record (build), what a consumer does per
//! record (read). `cargo bench -p weir-record`.

use std::hint::black_box;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use weir_record::{BatchBuilder, Record, records, records_without_crc, validate_batch};

/// A batch of about `batch_bytes` holding records of `value_bytes`.
fn batch(value_bytes: usize, batch_bytes: usize) -> (BytesMut, usize) {
    let value = vec![7u8; value_bytes];
    let mut b = BatchBuilder::with_capacity(1_700_000_000_000, batch_bytes);
    let mut n = 0;
    while b.size_bytes() + value_bytes + 16 < batch_bytes {
        b.push(Record {
            timestamp_ms: 1_700_000_000_000 + n as i64,
            key: None,
            value: Some(&value),
            headers: &[],
        });
        n += 1;
    }
    (b.finish(), n)
}

const SHAPES: [(usize, usize); 3] = [(100, 64 * 1024), (100, 1 << 20), (1024, 1 << 20)];

fn validate(c: &mut Criterion) {
    let mut g = c.benchmark_group("validate_batch");
    for (value, size) in SHAPES {
        let (b, _) = batch(value, size);
        g.throughput(Throughput::Bytes(b.len() as u64));
        g.bench_with_input(
            BenchmarkId::new(format!("{value}B"), size),
            &b,
            |bench, b| {
                bench.iter(|| validate_batch(black_box(b)).unwrap());
            },
        );
    }
    g.finish();
}

fn build(c: &mut Criterion) {
    let mut g = c.benchmark_group("build_batch");
    for (value, size) in SHAPES {
        let (_, n) = batch(value, size);
        let v = vec![7u8; value];
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new(format!("{value}B"), size), |bench| {
            bench.iter(|| {
                let mut b = BatchBuilder::with_capacity(1_700_000_000_000, size);
                for i in 0..n {
                    b.push(Record {
                        timestamp_ms: 1_700_000_000_000 + i as i64,
                        key: None,
                        value: Some(black_box(&v)),
                        headers: &[],
                    });
                }
                b.finish()
            });
        });
    }
    g.finish();
}

fn read(c: &mut Criterion) {
    let mut g = c.benchmark_group("read_records");
    for (value, size) in SHAPES {
        let (b, n) = batch(value, size);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(
            BenchmarkId::new(format!("{value}B/crc"), size),
            &b,
            |bench, b| bench.iter(|| records(black_box(b)).unwrap().count()),
        );
        g.bench_with_input(
            BenchmarkId::new(format!("{value}B/no-crc"), size),
            &b,
            |bench, b| bench.iter(|| records_without_crc(black_box(b)).unwrap().count()),
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    targets = validate, build, read
}
criterion_main!(benches);
