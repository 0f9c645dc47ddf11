//! Frame encode and decode of the two requests that carry data: a produce request (SDK
//! side) and a fetch response (server side), copied into one buffer or as parts that
//! share the record bytes. `cargo bench -p weir-proto`.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use weir_proto::{
    Request, Response, decode_frame, encode_request, encode_request_parts, encode_response,
    encode_response_parts, v1,
};

const SIZES: [usize; 2] = [64 * 1024, 1 << 20];

fn produce(records: usize) -> Request {
    Request::Produce(v1::ProduceRequest {
        topic: "bench".into(),
        partition: 3,
        acks: v1::Acks::All as i32,
        timeout_ms: 30_000,
        records: Bytes::from(vec![7u8; records]),
    })
}

fn fetch(records: usize) -> Response {
    Response::Fetch(v1::FetchResponse {
        status: Some(v1::Status::ok()),
        partitions: vec![v1::FetchPartitionResult {
            topic: "bench".into(),
            partition: 3,
            status: Some(v1::Status::ok()),
            high_watermark: 1 << 40,
            log_start_offset: 0,
            records: Bytes::from(vec![7u8; records]),
        }],
    })
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    for n in SIZES {
        g.throughput(Throughput::Bytes(n as u64));
        let req = produce(n);
        g.bench_with_input(BenchmarkId::new("produce/copy", n), &req, |b, r| {
            b.iter(|| {
                let mut out = BytesMut::new();
                encode_request(&mut out, 1, black_box(r));
                out
            });
        });
        g.bench_with_input(BenchmarkId::new("produce/parts", n), &req, |b, r| {
            b.iter(|| encode_request_parts(1, black_box(r)));
        });
        let resp = fetch(n);
        g.bench_with_input(BenchmarkId::new("fetch/copy", n), &resp, |b, r| {
            b.iter(|| {
                let mut out = BytesMut::new();
                encode_response(&mut out, 1, black_box(r));
                out
            });
        });
        g.bench_with_input(BenchmarkId::new("fetch/parts", n), &resp, |b, r| {
            b.iter(|| encode_response_parts(1, black_box(r)));
        });
    }
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    for n in SIZES {
        g.throughput(Throughput::Bytes(n as u64));
        let mut wire = BytesMut::new();
        encode_request(&mut wire, 1, &produce(n));
        let wire = wire.freeze();
        // The receive buffer is refilled outside the timing: decoding borrows the
        // records from it, so only the header and the protobuf fields cost time.
        g.bench_with_input(BenchmarkId::new("produce", n), &wire, |b, w| {
            b.iter_batched(
                || BytesMut::from(&w[..]),
                |mut buf| {
                    let frame = decode_frame(&mut buf, u32::MAX).unwrap().unwrap();
                    Request::decode(black_box(&frame)).unwrap()
                },
                BatchSize::SmallInput,
            );
        });
        let mut wire = BytesMut::new();
        encode_response(&mut wire, 1, &fetch(n));
        let wire = wire.freeze();
        // The receive buffer is refilled outside the timing: decoding borrows the
        // records from it, so only the header and the protobuf fields cost time.
        g.bench_with_input(BenchmarkId::new("fetch", n), &wire, |b, w| {
            b.iter_batched(
                || BytesMut::from(&w[..]),
                |mut buf| {
                    let frame = decode_frame(&mut buf, u32::MAX).unwrap().unwrap();
                    Response::decode(black_box(&frame)).unwrap()
                },
                BatchSize::SmallInput,
            );
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    targets = encode, decode
}
criterion_main!(benches);
