//! The frame decoder over any byte stream, as a peer could send it: `decode_frame` never
//! panics, never hands out a body above its limit, and every frame it returns decodes as
//! a request or a response or is refused with an error — never a panic.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use weir_proto::{HEADER_BYTES, Request, Response, decode_frame};

/// A small limit, so the fuzzer also reaches the "too large" path cheaply.
const BODY_BYTES_MAX: u32 = 4096;

fuzz_target!(|data: &[u8]| {
    // Fed in pieces, as reads from a socket arrive.
    let split = data.first().map_or(0, |b| *b as usize).min(data.len());
    let mut buf = BytesMut::new();
    for chunk in [&data[..split], &data[split..]] {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            match decode_frame(&mut buf, BODY_BYTES_MAX) {
                Ok(Some(frame)) => {
                    assert!(frame.header.body_len <= BODY_BYTES_MAX);
                    assert_eq!(frame.body.len(), frame.header.body_len as usize);
                    assert_eq!(buf.len() + HEADER_BYTES + frame.body.len(), before);
                    let _ = Request::decode(&frame);
                    let _ = Response::decode(&frame);
                }
                Ok(None) => break,
                // The connection would be closed here.
                Err(_) => return,
            }
        }
    }
});
