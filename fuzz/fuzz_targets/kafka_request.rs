//! The Kafka listener's frame splitter and every request decoder it serves, over arbitrary
//! bytes. The first byte picks a supported api key, the next two bytes a version; the rest
//! follows a well-formed size prefix and header start, so the fuzzer spends its time
//! inside the body decoders (raw mode, the first byte odd, feeds the bytes unchanged).
#![no_main]

use libfuzzer_sys::fuzz_target;

/// Api keys the listener serves (docs/kafka.md).
const API_KEYS: [i16; 20] = [0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 19, 20, 22, 23, 32, 37];
/// A small limit, so the "too large" path is reached cheaply too.
const FRAME_BYTES_MAX: u32 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let [mode, version, rest @ ..] = data else {
        return;
    };
    if mode & 1 == 1 {
        weir_kafka::decode_requests(rest, FRAME_BYTES_MAX);
        return;
    }
    let api = API_KEYS[usize::from(mode >> 1) % API_KEYS.len()];
    let version = i16::from(*version % 16);
    let mut frame = Vec::with_capacity(rest.len() + 12);
    let size = (rest.len() + 8) as u32;
    frame.extend_from_slice(&size.to_be_bytes());
    frame.extend_from_slice(&api.to_be_bytes());
    frame.extend_from_slice(&version.to_be_bytes());
    frame.extend_from_slice(&7i32.to_be_bytes()); // correlation id
    frame.extend_from_slice(rest);
    weir_kafka::decode_requests(&frame, FRAME_BYTES_MAX);
});
