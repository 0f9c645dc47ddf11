//! Helpers the storage test binaries share.

use bytes::BytesMut;
use weir_record::{BatchBuilder, Record};
use weir_storage::LogConfig;

/// An uncompressed batch of `records` records holding `value`, timestamps `ts`, `ts+1`…
pub fn batch_of(ts: i64, records: usize, value: &[u8]) -> BytesMut {
    let mut b = BatchBuilder::new(ts);
    for i in 0..records {
        b.push(Record {
            timestamp_ms: ts + i as i64,
            key: None,
            value: Some(value),
            headers: &[],
        });
    }
    b.finish()
}

/// Small segments, dense indexes and no retention: many segments from little data.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 4096,
        index_interval_bytes: 256,
        batch_bytes_max: 2048,
        retention_ms_max: None,
        ..LogConfig::default()
    }
}
