//! Every request decoder over arbitrary bodies: the first byte picks the kind (each known
//! request kind equally, or a raw kind byte), the second the version, the rest is the
//! body. Decoding never panics, and whatever decodes re-encodes to a frame that decodes
//! to the same request.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use weir_proto::{
    Frame, FrameHeader, Kind, PROTOCOL_VERSION, Request, decode_frame, encode_request,
};

fuzz_target!(|data: &[u8]| {
    let [pick, version, body @ ..] = data else {
        return;
    };
    let kind = if *pick < 0xF0 {
        Kind::REQUESTS[*pick as usize % Kind::REQUESTS.len()] as u8
    } else {
        *pick
    };
    let version = if version & 0x80 == 0 {
        PROTOCOL_VERSION
    } else {
        *version
    };
    let frame = Frame {
        header: FrameHeader {
            version,
            kind,
            correlation_id: 7,
            body_len: body.len() as u32,
        },
        body: Bytes::copy_from_slice(body),
    };
    let Ok(request) = Request::decode(&frame) else {
        return;
    };
    assert_eq!(request.kind() as u8, kind);
    let mut out = BytesMut::new();
    encode_request(&mut out, 7, &request);
    let again = decode_frame(&mut out, u32::MAX)
        .expect("our own frame")
        .expect("complete");
    assert!(out.is_empty());
    assert_eq!(Request::decode(&again).expect("our own body"), request);
});
