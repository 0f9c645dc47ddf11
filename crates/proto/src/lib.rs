//! Weir's native protocol: frames and message bodies. No I/O, no async.
//!
//! Every frame is a fixed 12-byte header followed by a body:
//!
//! | offset | field          | type | meaning                                      |
//! |-------:|----------------|------|----------------------------------------------|
//! | 0      | magic          | u16  | [`MAGIC`] (`"WE"`), rejects stray peers fast |
//! | 2      | version        | u8   | body schema version ([`PROTOCOL_VERSION`])   |
//! | 3      | kind           | u8   | [`Kind`]; responses set bit 7                |
//! | 4      | correlation id | u32  | echoed in the response                        |
//! | 8      | body length    | u32  | bytes after the header, at most a set limit  |
//!
//! All integers are big-endian. Bodies are protobuf messages from `proto/weir.proto`
//! (module [`v1`]); record batches travel inside them as raw bytes and are never
//! re-encoded. [`decode_frame`] checks the header before it waits for the body, so an
//! oversized or foreign frame is refused after 12 bytes.
//!
//! ```
//! use bytes::BytesMut;
//! use weir_proto::{decode_frame, encode_request, Request, v1};
//! let mut buf = BytesMut::new();
//! encode_request(&mut buf, 7, &Request::ListTopics(v1::ListTopicsRequest {}));
//! let frame = decode_frame(&mut buf, 1 << 20).unwrap().unwrap();
//! assert_eq!(frame.header.correlation_id, 7);
//! assert!(matches!(Request::decode(&frame).unwrap(), Request::ListTopics(_)));
//! ```
#![deny(missing_docs)]

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

mod parts;

pub use parts::{
    FrameParts, SHARED_PART_BYTES_MIN, WRITE_GATHER_BYTES_MAX, WRITE_SLICES_MAX, WriteQueue,
    encode_request_parts, encode_response_parts,
};

/// Generated protobuf types of protocol version 1.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/weir.v1.rs"));
}

/// First two bytes of every frame: ASCII "WE".
pub const MAGIC: u16 = 0x5745;
/// The body schema version this build speaks.
pub const PROTOCOL_VERSION: u8 = 1;
/// Oldest body schema version this build accepts.
pub const PROTOCOL_VERSION_MIN: u8 = 1;
/// Size of the fixed frame header.
pub const HEADER_BYTES: usize = 12;
/// Bit set in `kind` for responses.
pub const RESPONSE_BIT: u8 = 0x80;
/// Default largest body a peer may send (server and client may configure less).
pub const FRAME_BYTES_MAX_DEFAULT: u32 = 64 * 1024 * 1024;

/// Why a frame could not be decoded. Any of these ends the connection: the stream can no
/// longer be trusted to be aligned on frame boundaries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The first two bytes are not [`MAGIC`].
    #[error("bad frame magic {0:#06x}")]
    BadMagic(u16),
    /// The body length exceeds the receiver's limit.
    #[error("frame body of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced body length.
        len: u32,
        /// Receiver's limit.
        max: u32,
    },
}

/// Why a well-framed body could not be turned into a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// `kind` names no known request or response.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// The frame's body schema version is not spoken here.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// The protobuf body did not decode.
    #[error("malformed {kind:?} body: {reason}")]
    Malformed {
        /// Kind that was being decoded.
        kind: Kind,
        /// Decoder's message.
        reason: String,
    },
}

/// The fixed header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Body schema version.
    pub version: u8,
    /// Request or response kind; see [`Kind`].
    pub kind: u8,
    /// Chosen by the requester, echoed by the responder.
    pub correlation_id: u32,
    /// Bytes of body that follow.
    pub body_len: u32,
}

impl FrameHeader {
    /// Appends the 12 header bytes to `out`.
    pub fn encode(&self, out: &mut impl BufMut) {
        out.put_u16(MAGIC);
        out.put_u8(self.version);
        out.put_u8(self.kind);
        out.put_u32(self.correlation_id);
        out.put_u32(self.body_len);
    }

    /// Parses and checks a header; `body_bytes_max` bounds the announced body.
    pub fn decode(head: &[u8; HEADER_BYTES], body_bytes_max: u32) -> Result<Self, FrameError> {
        let mut b = &head[..];
        let magic = b.get_u16();
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        let h = FrameHeader {
            version: b.get_u8(),
            kind: b.get_u8(),
            correlation_id: b.get_u32(),
            body_len: b.get_u32(),
        };
        if h.body_len > body_bytes_max {
            return Err(FrameError::TooLarge {
                len: h.body_len,
                max: body_bytes_max,
            });
        }
        Ok(h)
    }
}

/// One whole frame; `body` is a slice of the receive buffer (no copy).
#[derive(Debug, Clone)]
pub struct Frame {
    /// Parsed header.
    pub header: FrameHeader,
    /// Body bytes.
    pub body: Bytes,
}

/// Takes one frame off the front of `buf` if it is complete.
///
/// Returns `Ok(None)` when more bytes are needed; reserves room for the announced body so
/// the caller's next read can fill it. The header is checked first, so a bad peer is
/// refused before its body is buffered.
pub fn decode_frame(buf: &mut BytesMut, body_bytes_max: u32) -> Result<Option<Frame>, FrameError> {
    let Some(head) = buf.first_chunk::<HEADER_BYTES>() else {
        return Ok(None);
    };
    let header = FrameHeader::decode(head, body_bytes_max)?;
    // body_len <= body_bytes_max <= u32::MAX, so this cannot overflow on 64-bit targets.
    let total = HEADER_BYTES + header.body_len as usize;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    buf.advance(HEADER_BYTES);
    let body = buf.split_to(header.body_len as usize).freeze();
    Ok(Some(Frame { header, body }))
}

fn encode_frame(out: &mut BytesMut, kind: u8, correlation_id: u32, body: &impl Message) {
    let len = body.encoded_len();
    out.reserve(HEADER_BYTES + len);
    FrameHeader {
        version: PROTOCOL_VERSION,
        kind,
        correlation_id,
        body_len: u32::try_from(len).unwrap_or(u32::MAX),
    }
    .encode(out);
    // Encoding into a BytesMut with reserved room cannot fail.
    let _ = body.encode(out);
}

macro_rules! kinds {
    ($( $(#[$doc:meta])* $name:ident = $code:literal => $req:ident, $resp:ident; )*) => {
        /// Request kinds; a response carries the same value with [`RESPONSE_BIT`] set.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum Kind {
            $( $(#[$doc])* $name = $code, )*
            /// Response-only: a request could not be answered with its own response type.
            Error = 0x7f,
        }

        impl Kind {
            /// The kind for a request code (bit 7 clear).
            pub fn from_request_code(code: u8) -> Option<Kind> {
                match code {
                    $( $code => Some(Kind::$name), )*
                    _ => None,
                }
            }

            /// The kind for a response code (bit 7 set).
            pub fn from_response_code(code: u8) -> Option<Kind> {
                if code & RESPONSE_BIT == 0 {
                    return None;
                }
                match code & !RESPONSE_BIT {
                    0x7f => Some(Kind::Error),
                    other => Self::from_request_code(other),
                }
            }

            /// Every request kind, in code order.
            pub const REQUESTS: &'static [Kind] = &[$(Kind::$name),*];
        }

        /// A decoded request body.
        #[derive(Debug, Clone, PartialEq)]
        #[allow(missing_docs)]
        pub enum Request { $( $name(v1::$req), )* }

        /// A decoded response body.
        #[derive(Debug, Clone, PartialEq)]
        #[allow(missing_docs)]
        pub enum Response { $( $name(v1::$resp), )* Error(v1::ErrorResponse) }

        impl Request {
            /// The kind of this request.
            pub fn kind(&self) -> Kind {
                match self { $( Request::$name(_) => Kind::$name, )* }
            }

            /// Decodes a request frame's body according to its header.
            pub fn decode(frame: &Frame) -> Result<Request, BodyError> {
                check_version(frame.header.version)?;
                let kind = Kind::from_request_code(frame.header.kind)
                    .ok_or(BodyError::UnknownKind(frame.header.kind))?;
                let body = frame.body.clone();
                let malformed = |e: prost::DecodeError| BodyError::Malformed { kind, reason: e.to_string() };
                Ok(match kind {
                    $( Kind::$name => Request::$name(v1::$req::decode(body).map_err(malformed)?), )*
                    Kind::Error => return Err(BodyError::UnknownKind(frame.header.kind)),
                })
            }
        }

        impl Response {
            /// The kind of this response (without [`RESPONSE_BIT`]).
            pub fn kind(&self) -> Kind {
                match self { $( Response::$name(_) => Kind::$name, )* Response::Error(_) => Kind::Error }
            }

            /// Decodes a response frame's body according to its header.
            pub fn decode(frame: &Frame) -> Result<Response, BodyError> {
                check_version(frame.header.version)?;
                let kind = Kind::from_response_code(frame.header.kind)
                    .ok_or(BodyError::UnknownKind(frame.header.kind))?;
                let body = frame.body.clone();
                let malformed = |e: prost::DecodeError| BodyError::Malformed { kind, reason: e.to_string() };
                Ok(match kind {
                    $( Kind::$name => Response::$name(v1::$resp::decode(body).map_err(malformed)?), )*
                    Kind::Error => Response::Error(v1::ErrorResponse::decode(body).map_err(malformed)?),
                })
            }
        }

        /// Appends `request` as one frame.
        pub fn encode_request(out: &mut BytesMut, correlation_id: u32, request: &Request) {
            let code = request.kind() as u8;
            match request { $( Request::$name(m) => encode_frame(out, code, correlation_id, m), )* }
        }

        /// Appends `response` as one frame.
        pub fn encode_response(out: &mut BytesMut, correlation_id: u32, response: &Response) {
            let code = response.kind() as u8 | RESPONSE_BIT;
            match response {
                $( Response::$name(m) => encode_frame(out, code, correlation_id, m), )*
                Response::Error(m) => encode_frame(out, code, correlation_id, m),
            }
        }
    };
}

kinds! {
    /// Version negotiation and limits.
    Handshake = 0x01 => HandshakeRequest, HandshakeResponse;
    /// Brokers and partition leaders.
    Metadata = 0x02 => MetadataRequest, MetadataResponse;
    /// Create a topic.
    CreateTopic = 0x03 => CreateTopicRequest, CreateTopicResponse;
    /// Delete a topic and its data.
    DeleteTopic = 0x04 => DeleteTopicRequest, DeleteTopicResponse;
    /// Names and partition counts of all topics.
    ListTopics = 0x05 => ListTopicsRequest, ListTopicsResponse;
    /// One topic with configs and per-partition offsets.
    DescribeTopic = 0x06 => DescribeTopicRequest, DescribeTopicResponse;
    /// Append record batches to a partition.
    Produce = 0x07 => ProduceRequest, ProduceResponse;
    /// Read record batches, with long-poll.
    Fetch = 0x08 => FetchRequest, FetchResponse;
    /// Earliest, latest or by-timestamp offset of a partition.
    ListOffsets = 0x09 => ListOffsetsRequest, ListOffsetsResponse;
    /// Join a consumer group (may wait for a rebalance to complete).
    JoinGroup = 0x0a => JoinGroupRequest, JoinGroupResponse;
    /// Hand out (leader) or receive (everyone) the group's assignment.
    SyncGroup = 0x0b => SyncGroupRequest, SyncGroupResponse;
    /// Keep a group membership alive; learn about rebalances.
    Heartbeat = 0x0c => HeartbeatRequest, HeartbeatResponse;
    /// Leave a consumer group at once.
    LeaveGroup = 0x0d => LeaveGroupRequest, LeaveGroupResponse;
    /// Store a group's consumed positions.
    OffsetCommit = 0x0e => OffsetCommitRequest, OffsetCommitResponse;
    /// Read a group's committed positions.
    OffsetFetch = 0x0f => OffsetFetchRequest, OffsetFetchResponse;
    /// All groups.
    ListGroups = 0x10 => ListGroupsRequest, ListGroupsResponse;
    /// One group's state and members.
    DescribeGroup = 0x11 => DescribeGroupRequest, DescribeGroupResponse;
    /// Set an idle group's committed offsets.
    ResetOffsets = 0x12 => ResetOffsetsRequest, ResetOffsetsResponse;
    /// Forget an idle group's committed offsets.
    DeleteGroup = 0x13 => DeleteGroupRequest, DeleteGroupResponse;
}

fn check_version(version: u8) -> Result<(), BodyError> {
    if (PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION).contains(&version) {
        Ok(())
    } else {
        Err(BodyError::UnsupportedVersion(version))
    }
}

impl v1::PartitionOffset {
    /// Offsets to commit or set, from (topic, partition, offset), with no metadata.
    pub fn list(offsets: Vec<(String, u32, i64)>) -> Vec<v1::PartitionOffset> {
        offsets
            .into_iter()
            .map(|(topic, partition, offset)| v1::PartitionOffset {
                topic,
                partition,
                offset,
                metadata: String::new(),
            })
            .collect()
    }
}

impl v1::TopicPartitions {
    /// Every (topic, partition) of a list of these, in order.
    pub fn flatten(list: Vec<v1::TopicPartitions>) -> impl Iterator<Item = (String, u32)> {
        list.into_iter().flat_map(|tp| {
            let topic = tp.topic;
            tp.partitions.into_iter().map(move |p| (topic.clone(), p))
        })
    }
}

impl v1::Status {
    /// A status with the given code and message.
    pub fn new(code: v1::ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code: code as i32,
            message: message.into(),
        }
    }

    /// The success status.
    pub fn ok() -> Self {
        Self::default()
    }

    /// The code, with unknown values (from a newer peer) read as `UnknownServerError`.
    pub fn error_code(&self) -> v1::ErrorCode {
        v1::ErrorCode::try_from(self.code).unwrap_or(v1::ErrorCode::UnknownServerError)
    }

    /// Whether the status is success.
    pub fn is_ok(&self) -> bool {
        self.code == v1::ErrorCode::None as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(req: Request) {
        let mut buf = BytesMut::new();
        encode_request(&mut buf, 99, &req);
        let frame = decode_frame(&mut buf, FRAME_BYTES_MAX_DEFAULT)
            .expect("valid")
            .expect("complete");
        assert!(buf.is_empty());
        assert_eq!(frame.header.correlation_id, 99);
        assert_eq!(Request::decode(&frame).expect("decodes"), req);
    }

    #[test]
    fn requests_round_trip() {
        round_trip(Request::Produce(v1::ProduceRequest {
            topic: "t".into(),
            partition: 3,
            acks: v1::Acks::Leader as i32,
            timeout_ms: 100,
            records: Bytes::from_static(b"raw batch bytes"),
        }));
        round_trip(Request::Fetch(v1::FetchRequest {
            max_wait_ms: 500,
            min_bytes: 1,
            max_bytes: 1 << 20,
            partitions: vec![v1::FetchPartition {
                topic: "t".into(),
                partition: 0,
                offset: 42,
                max_bytes: 1000,
            }],
        }));
        for &k in Kind::REQUESTS {
            assert_eq!(Kind::from_request_code(k as u8), Some(k));
            assert_eq!(Kind::from_response_code(k as u8 | RESPONSE_BIT), Some(k));
        }
    }

    #[test]
    fn responses_round_trip() {
        let resp = Response::Error(v1::ErrorResponse {
            status: Some(v1::Status::new(
                v1::ErrorCode::UnknownRequestKind,
                "kind 0x55",
            )),
        });
        let mut buf = BytesMut::new();
        encode_response(&mut buf, 5, &resp);
        let frame = decode_frame(&mut buf, 1024).expect("ok").expect("complete");
        assert_eq!(Response::decode(&frame).expect("decodes"), resp);
    }

    #[test]
    fn partial_frames_wait_and_oversized_frames_fail_early() {
        let mut buf = BytesMut::new();
        encode_request(&mut buf, 1, &Request::ListTopics(v1::ListTopicsRequest {}));
        encode_request(
            &mut buf,
            2,
            &Request::DeleteTopic(v1::DeleteTopicRequest { name: "x".into() }),
        );
        let all = buf.clone();
        for cut in 0..HEADER_BYTES {
            let mut part = BytesMut::from(&all[..cut]);
            assert!(decode_frame(&mut part, 1024).expect("ok").is_none());
        }
        let mut big = BytesMut::new();
        FrameHeader {
            version: 1,
            kind: 7,
            correlation_id: 1,
            body_len: 2000,
        }
        .encode(&mut big);
        assert_eq!(
            decode_frame(&mut big, 1024).unwrap_err(),
            FrameError::TooLarge {
                len: 2000,
                max: 1024
            }
        );
        let mut bad = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert!(matches!(
            decode_frame(&mut bad, 1024),
            Err(FrameError::BadMagic(_))
        ));
    }

    #[test]
    fn unknown_kind_and_version_are_body_errors() {
        let frame = Frame {
            header: FrameHeader {
                version: 1,
                kind: 0x55,
                correlation_id: 1,
                body_len: 0,
            },
            body: Bytes::new(),
        };
        assert_eq!(Request::decode(&frame), Err(BodyError::UnknownKind(0x55)));
        let frame = Frame {
            header: FrameHeader {
                version: 9,
                kind: 1,
                correlation_id: 1,
                body_len: 0,
            },
            body: Bytes::new(),
        };
        assert_eq!(
            Request::decode(&frame),
            Err(BodyError::UnsupportedVersion(9))
        );
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(frame)) = decode_frame(&mut buf, 256) {
                let _ = Request::decode(&frame);
                let _ = Response::decode(&frame);
            }
        }
    }
}
