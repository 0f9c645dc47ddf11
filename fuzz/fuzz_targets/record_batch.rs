//! The record-batch validator and readers over arbitrary bytes, as a producer could send
//! them and as they could come back from a damaged disk: header parsing, CRC validation,
//! the batch iterator and the record iterator never panic, and what they accept is
//! self-consistent.
//!
//! The first byte picks a mode. Raw: the bytes as they are (the CRC almost never
//! matches, which exercises the validator's refusals). Fixed up: the batch length and
//! CRC fields are recomputed first, so the header checks and the record parser behind
//! them see the fuzzer's bytes too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_record::{
    BATCH_HEADER_BYTES, BatchHeader, BatchIter, records, records_without_crc, validate_batch,
};

fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else {
        return;
    };
    let mut bytes = rest.to_vec();
    if mode & 1 == 1 && bytes.len() >= BATCH_HEADER_BYTES {
        let len = (bytes.len() - 12) as i32;
        bytes[8..12].copy_from_slice(&len.to_be_bytes());
        bytes[16] = 2; // magic
        let crc = crc32c::crc32c(&bytes[21..]);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
    }
    check(&bytes);
});

fn check(data: &[u8]) {
    if let Ok(h) = BatchHeader::parse(data) {
        let _ = h.total_bytes();
        let _ = h.last_offset();
        let _ = h.compression();
    }
    if let Ok(h) = validate_batch(data) {
        assert_eq!(
            h.total_bytes(),
            data.len(),
            "a valid batch is exactly its length"
        );
        if let Ok(iter) = records(data) {
            let mut n = 0i64;
            for r in iter {
                let Ok(r) = r else { break };
                let _ = (r.offset, r.timestamp_ms, r.key, r.value, r.headers.len());
                n += 1;
            }
            assert!(n <= i64::from(h.records_count.max(0)));
        }
    }
    // The reader clients use after a CRC check of their own: bounds-checked on its own.
    if let Ok(iter) = records_without_crc(data) {
        for r in iter {
            if r.is_err() {
                break;
            }
        }
    }
    let mut iter = BatchIter::new(data);
    let mut whole = 0usize;
    for b in iter.by_ref() {
        let Ok((h, bytes)) = b else { break };
        assert_eq!(bytes.len(), h.total_bytes());
        whole += bytes.len();
        let _ = validate_batch(bytes);
        if let Ok(rs) = records(bytes) {
            for r in rs {
                if r.is_err() {
                    break;
                }
            }
        }
    }
    assert_eq!(iter.consumed(), whole);
    assert!(iter.consumed() <= data.len());
}
