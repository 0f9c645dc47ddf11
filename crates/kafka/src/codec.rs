//! Kafka framing: an `i32` size prefix, a request header whose version depends on the API
//! and its version, then the body. Pure functions over buffers; no I/O.
//!
//! A frame is checked before it is buffered: a negative size, or one above
//! `frame_bytes_max`, is a [`FrameError`] and the connection is closed (the stream can no
//! longer be trusted to be aligned on frames). A whole frame that cannot be used — an
//! unknown API key, an API or version this listener does not speak, a body that does not
//! decode — is a [`DecodeError`], which also closes the connection, as Kafka brokers do.
//! The one exception is Kafka's own: an `ApiVersions` request newer than any version this
//! listener speaks is answered at v0 with `UNSUPPORTED_VERSION` and the supported ranges,
//! so the client can retry with a version both sides know.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest,
    DescribeConfigsRequest, DescribeGroupsRequest, FetchRequest, FetchResponse,
    FindCoordinatorRequest, HeartbeatRequest, InitProducerIdRequest, JoinGroupRequest,
    LeaveGroupRequest, ListGroupsRequest, ListOffsetsRequest, MetadataRequest, OffsetCommitRequest,
    OffsetFetchRequest, OffsetForLeaderEpochRequest, ProduceRequest, RequestHeader, ResponseHeader,
    SyncGroupRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use weir_proto::{FrameParts, SHARED_PART_BYTES_MIN};

use crate::versions;

/// Bytes of the size prefix in front of every request and response.
pub(crate) const SIZE_PREFIX_BYTES: usize = 4;
/// Bytes a request needs before the client id: api key, api version, correlation id.
const HEADER_FIXED_BYTES: usize = 8;

/// A frame that cannot be read; the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    /// The size prefix is negative.
    #[error("negative request size {0}")]
    NegativeSize(i32),
    /// The size prefix is above the limit.
    #[error("request of {size} bytes exceeds frame_bytes_max {max}")]
    TooLarge {
        /// Announced size.
        size: u32,
        /// Limit.
        max: u32,
    },
}

/// Takes one whole frame (without its size prefix) off the front of `buf`, or `None` if
/// it is not all there yet. Checks the size before anything is buffered for it.
pub(crate) fn split_frame(buf: &mut BytesMut, max: u32) -> Result<Option<Bytes>, FrameError> {
    let Some(prefix) = buf.first_chunk::<SIZE_PREFIX_BYTES>() else {
        return Ok(None);
    };
    let size = i32::from_be_bytes(*prefix);
    let Ok(size) = u32::try_from(size) else {
        return Err(FrameError::NegativeSize(size));
    };
    if size > max {
        return Err(FrameError::TooLarge { size, max });
    }
    // `size <= max <= u32::MAX`, and usize is at least 32 bits on every supported target.
    let total = SIZE_PREFIX_BYTES + size as usize;
    if buf.len() < total {
        // Room for the rest of this frame, so it arrives in one allocation.
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    buf.advance(SIZE_PREFIX_BYTES);
    Ok(Some(buf.split_to(size as usize).freeze()))
}

/// The header fields a handler needs.
#[derive(Debug, Clone)]
pub(crate) struct Header {
    /// Which API.
    pub(crate) api_key: ApiKey,
    /// Its version; the response is encoded at the same version.
    pub(crate) version: i16,
    /// Echoed in the response.
    pub(crate) correlation_id: i32,
    /// The client's name, for logs.
    pub(crate) client_id: Option<StrBytes>,
}

/// A decoded request body.
#[derive(Debug)]
pub(crate) enum Request {
    ApiVersions(ApiVersionsRequest),
    Metadata(MetadataRequest),
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    ListOffsets(ListOffsetsRequest),
    OffsetForLeaderEpoch(OffsetForLeaderEpochRequest),
    FindCoordinator(FindCoordinatorRequest),
    CreateTopics(CreateTopicsRequest),
    DeleteTopics(DeleteTopicsRequest),
    CreatePartitions(CreatePartitionsRequest),
    DescribeConfigs(DescribeConfigsRequest),
    InitProducerId(InitProducerIdRequest),
    JoinGroup(JoinGroupRequest),
    SyncGroup(SyncGroupRequest),
    Heartbeat(HeartbeatRequest),
    LeaveGroup(LeaveGroupRequest),
    OffsetCommit(OffsetCommitRequest),
    OffsetFetch(OffsetFetchRequest),
    ListGroups(ListGroupsRequest),
    DescribeGroups(DescribeGroupsRequest),
}

/// What a frame holds.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// A request this listener speaks (boxed: request bodies are large and vary).
    Request(Header, Box<Request>),
    /// `ApiVersions` at a version above ours: answered at v0 with `UNSUPPORTED_VERSION`.
    ApiVersionsTooNew(Header),
}

/// A well-framed request that cannot be served; the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    /// Fewer bytes than the fixed header fields.
    #[error("request of {0} bytes is shorter than a request header")]
    Short(usize),
    /// Not a Kafka API key.
    #[error("unknown api key {0}")]
    UnknownApiKey(i16),
    /// A Kafka API this listener does not offer (it is absent from `ApiVersions`).
    #[error("api {0:?} is not supported")]
    UnsupportedApi(ApiKey),
    /// A version outside the range `ApiVersions` announced.
    #[error("{api:?} v{version} is not supported (supported: v{min} to v{max})")]
    UnsupportedVersion {
        /// API.
        api: ApiKey,
        /// Requested version.
        version: i16,
        /// Lowest supported.
        min: i16,
        /// Highest supported.
        max: i16,
    },
    /// The header or body does not decode.
    #[error("malformed {api:?} v{version} request: {reason}")]
    Malformed {
        /// API.
        api: ApiKey,
        /// Version.
        version: i16,
        /// Decoder's message.
        reason: String,
    },
}

/// Decodes one frame.
pub(crate) fn decode(mut frame: Bytes) -> Result<Decoded, DecodeError> {
    if frame.len() < HEADER_FIXED_BYTES {
        return Err(DecodeError::Short(frame.len()));
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let api = ApiKey::try_from(raw_key).map_err(|()| DecodeError::UnknownApiKey(raw_key))?;
    let Some((min, max)) = versions::supported(api) else {
        return Err(DecodeError::UnsupportedApi(api));
    };
    let malformed = |e: &dyn std::fmt::Display| DecodeError::Malformed {
        api,
        version,
        reason: e.to_string(),
    };
    // A too-new ApiVersions still has a header the client wrote for that version; Kafka
    // decodes it with the newest rules it knows (header v2 from ApiVersions v3 on).
    let header_version = api.request_header_version(version.min(max).max(min));
    let raw = RequestHeader::decode(&mut frame, header_version).map_err(|e| malformed(&e))?;
    let header = Header {
        api_key: api,
        version,
        correlation_id: raw.correlation_id,
        client_id: raw.client_id,
    };
    if api == ApiKey::ApiVersions && version > max {
        return Ok(Decoded::ApiVersionsTooNew(header));
    }
    if version < min || version > max {
        return Err(DecodeError::UnsupportedVersion {
            api,
            version,
            min,
            max,
        });
    }
    fn body<T: Decodable>(frame: &mut Bytes, version: i16) -> Result<T, String> {
        T::decode(frame, version).map_err(|e| e.to_string())
    }
    let f = &mut frame;
    let v = version;
    let request = match api {
        ApiKey::ApiVersions => body(f, v).map(Request::ApiVersions),
        ApiKey::Metadata => body(f, v).map(Request::Metadata),
        ApiKey::Produce => body(f, v).map(Request::Produce),
        ApiKey::Fetch => body(f, v).map(Request::Fetch),
        ApiKey::ListOffsets => body(f, v).map(Request::ListOffsets),
        ApiKey::OffsetForLeaderEpoch => body(f, v).map(Request::OffsetForLeaderEpoch),
        ApiKey::FindCoordinator => body(f, v).map(Request::FindCoordinator),
        ApiKey::CreateTopics => body(f, v).map(Request::CreateTopics),
        ApiKey::DeleteTopics => body(f, v).map(Request::DeleteTopics),
        ApiKey::CreatePartitions => body(f, v).map(Request::CreatePartitions),
        ApiKey::DescribeConfigs => body(f, v).map(Request::DescribeConfigs),
        ApiKey::InitProducerId => body(f, v).map(Request::InitProducerId),
        ApiKey::JoinGroup => body(f, v).map(Request::JoinGroup),
        ApiKey::SyncGroup => body(f, v).map(Request::SyncGroup),
        ApiKey::Heartbeat => body(f, v).map(Request::Heartbeat),
        ApiKey::LeaveGroup => body(f, v).map(Request::LeaveGroup),
        ApiKey::OffsetCommit => body(f, v).map(Request::OffsetCommit),
        ApiKey::OffsetFetch => body(f, v).map(Request::OffsetFetch),
        ApiKey::ListGroups => body(f, v).map(Request::ListGroups),
        ApiKey::DescribeGroups => body(f, v).map(Request::DescribeGroups),
        other => return Err(DecodeError::UnsupportedApi(other)),
    }
    .map_err(|e| malformed(&e))?;
    Ok(Decoded::Request(header, Box::new(request)))
}

/// A response could not be encoded: a bug (a field set that the version lacks).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode {api:?} v{version} response: {reason}")]
pub(crate) struct EncodeError {
    pub(crate) api: ApiKey,
    pub(crate) version: i16,
    pub(crate) reason: String,
}

/// Encodes a whole response frame: size prefix, response header, body.
pub(crate) fn encode_response<R: Encodable + HeaderVersion>(
    header: &Header,
    body: &R,
) -> Result<BytesMut, EncodeError> {
    encode_at(header.api_key, header.correlation_id, header.version, body)
}

/// Encodes a fetch response as parts that share the log's memory: record sets of at least
/// `SHARED_PART_BYTES_MIN` bytes are not copied into the frame (the writer hands them to the
/// socket as they are). The parts concatenated are byte for byte [`encode_response`].
///
/// kafka-protocol encodes a message into one buffer, so the frame around the records is
/// found by encoding the response twice with those record sets left out: once empty and
/// once null. The two encodings have the same length and differ only in each record set's
/// length field (`01` / `00` as a compact length from v12, `00000000` / `ffffffff` as an
/// `i32` before), which says where each record set goes.
pub(crate) fn encode_fetch_response(
    header: &Header,
    body: &FetchResponse,
) -> Result<FrameParts, EncodeError> {
    let shared: Vec<Bytes> = body
        .responses
        .iter()
        .flat_map(|t| &t.partitions)
        .filter_map(|p| p.records.clone())
        .filter(|r| r.len() >= SHARED_PART_BYTES_MIN)
        .collect();
    if shared.is_empty() {
        return encode_response(header, body).map(FrameParts::from);
    }
    let without = |records: Option<Bytes>| {
        let mut b = body.clone();
        for p in b.responses.iter_mut().flat_map(|t| &mut t.partitions) {
            if p.records
                .as_ref()
                .is_some_and(|r| r.len() >= SHARED_PART_BYTES_MIN)
            {
                p.records = records.clone();
            }
        }
        encode_response(header, &b)
    };
    let empty = without(Some(Bytes::new()))?.freeze();
    let null = without(None)?;
    let flexible = header.version >= FETCH_FLEXIBLE_VERSION;
    let field_bytes = if flexible { 1 } else { 4 };
    let fields = length_fields(&empty, &null);
    if fields.len() != shared.len() || fields.iter().any(|f| f.len() != field_bytes) {
        // Not the layout described above: encode the plain way rather than guess.
        debug_assert!(false, "fetch response length fields not found: {fields:?}");
        return encode_response(header, body).map(FrameParts::from);
    }
    let too_large = |e: std::num::TryFromIntError| EncodeError {
        api: header.api_key,
        version: header.version,
        reason: e.to_string(),
    };
    let mut head = BytesMut::with_capacity(empty.len() + shared.len() * VARINT_BYTES_MAX);
    let mut size = empty.len() - SIZE_PREFIX_BYTES - shared.len() * field_bytes;
    for records in &shared {
        size += records.len()
            + if flexible {
                varint_len(records.len() as u64 + 1)
            } else {
                4
            };
    }
    head.put_i32(i32::try_from(size).map_err(too_large)?);
    let mut out = FrameParts::default();
    let mut at = SIZE_PREFIX_BYTES;
    for (field, records) in fields.iter().zip(&shared) {
        head.extend_from_slice(&empty[at..field.start]);
        if flexible {
            put_unsigned_varint(&mut head, records.len() as u64 + 1);
        } else {
            head.put_i32(i32::try_from(records.len()).map_err(too_large)?);
        }
        out.push(head.split().freeze());
        out.push(records.clone());
        at = field.end;
    }
    head.extend_from_slice(&empty[at..]);
    out.push(head.freeze());
    debug_assert_eq!(out.len(), SIZE_PREFIX_BYTES + size);
    Ok(out)
}

/// Bytes of the longest unsigned varint of a `u64`.
const VARINT_BYTES_MAX: usize = 10;

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// First Fetch version with compact (flexible) encodings.
const FETCH_FLEXIBLE_VERSION: i16 = 12;

/// The byte ranges where two encodings of the same length differ, merged where adjacent.
fn length_fields(a: &[u8], b: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, _) in a.iter().zip(b).enumerate().filter(|(_, (x, y))| x != y) {
        match out.last_mut() {
            Some(r) if r.end == i => r.end = i + 1,
            _ => out.push(i..i + 1),
        }
    }
    out
}

fn put_unsigned_varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

/// Encodes a response at an explicit version (the ApiVersions fallback answers at v0).
pub(crate) fn encode_at<R: Encodable + HeaderVersion>(
    api: ApiKey,
    correlation_id: i32,
    version: i16,
    body: &R,
) -> Result<BytesMut, EncodeError> {
    let err = |e: &dyn std::fmt::Display| EncodeError {
        api,
        version,
        reason: e.to_string(),
    };
    let header_version = R::header_version(version);
    let mut head = ResponseHeader::default();
    head.correlation_id = correlation_id;
    let size = head
        .compute_size(header_version)
        .and_then(|h| Ok(h + body.compute_size(version)?))
        .map_err(|e| err(&e))?;
    let size_field = i32::try_from(size).map_err(|e| err(&e))?;
    let mut out = BytesMut::with_capacity(SIZE_PREFIX_BYTES + size);
    out.put_i32(size_field);
    head.encode(&mut out, header_version).map_err(|e| err(&e))?;
    body.encode(&mut out, version).map_err(|e| err(&e))?;
    debug_assert_eq!(
        out.len(),
        SIZE_PREFIX_BYTES + size,
        "compute_size agrees with encode"
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_i32(body.len() as i32);
        b.put_slice(body);
        b
    }

    #[test]
    fn frames_split_only_when_whole_and_bounded() {
        let mut buf = framed(b"0123456789");
        let whole = buf.clone();
        let mut partial = BytesMut::from(&whole[..7]);
        assert_eq!(split_frame(&mut partial, 100), Ok(None));
        assert_eq!(
            split_frame(&mut buf, 100).expect("ok").as_deref(),
            Some(&b"0123456789"[..])
        );
        assert!(buf.is_empty());
        let mut big = framed(&[0u8; 11]);
        assert_eq!(
            split_frame(&mut big, 10),
            Err(FrameError::TooLarge { size: 11, max: 10 })
        );
        let mut neg = BytesMut::from(&(-1i32).to_be_bytes()[..]);
        assert_eq!(split_frame(&mut neg, 10), Err(FrameError::NegativeSize(-1)));
    }

    #[test]
    fn unknown_and_unsupported_apis_are_errors() {
        let mut b = BytesMut::new();
        b.put_i16(999);
        b.put_i16(0);
        b.put_i32(7);
        b.put_i16(-1);
        assert_eq!(
            decode(b.freeze()).unwrap_err(),
            DecodeError::UnknownApiKey(999)
        );
        let mut b = BytesMut::new();
        b.put_i16(ApiKey::SaslHandshake as i16);
        b.put_i16(1);
        b.put_i32(7);
        b.put_i16(-1);
        assert_eq!(
            decode(b.freeze()).unwrap_err(),
            DecodeError::UnsupportedApi(ApiKey::SaslHandshake)
        );
        assert_eq!(
            decode(Bytes::from_static(b"\0\0")).unwrap_err(),
            DecodeError::Short(2)
        );
    }

    /// A fetch response with one partition per entry of `sizes` (`None`: no record set),
    /// spread over two topics.
    fn fetch_response(sizes: &[Option<usize>]) -> FetchResponse {
        use kafka_protocol::messages::TopicName;
        use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
        let mut r = FetchResponse::default();
        for (t, chunk) in sizes.chunks(3).enumerate() {
            let mut topic = FetchableTopicResponse::default();
            topic.topic = TopicName(StrBytes::from_string(format!("topic-{t}")));
            for (i, size) in chunk.iter().enumerate() {
                let mut p = PartitionData::default();
                p.partition_index = i as i32;
                p.high_watermark = 1_000_000 + i as i64;
                p.log_start_offset = 3;
                p.records = size.map(|n| Bytes::from((0..n).map(|b| b as u8).collect::<Vec<_>>()));
                topic.partitions.push(p);
            }
            r.responses.push(topic);
        }
        r
    }

    #[test]
    fn fetch_response_parts_are_the_same_bytes_without_copying_records() {
        let big = SHARED_PART_BYTES_MIN;
        for sizes in [
            vec![],
            vec![None],
            vec![Some(0)],
            vec![Some(10)],
            vec![Some(big)],
            vec![Some(big - 1), Some(big + 1)],
            vec![Some(1 << 20), None, Some(0), Some(200_000), Some(5)],
            vec![Some(1 << 20); 4],
        ] {
            let body = fetch_response(&sizes);
            let (low, high) = versions::supported(ApiKey::Fetch).expect("fetch is spoken");
            for version in low..=high {
                let header = Header {
                    api_key: ApiKey::Fetch,
                    version,
                    correlation_id: 77,
                    client_id: None,
                };
                let parts = encode_fetch_response(&header, &body).expect("encodes");
                let whole = encode_response(&header, &body).expect("encodes");
                assert_eq!(parts.to_bytes(), whole.freeze(), "v{version} {sizes:?}");
                for records in body
                    .responses
                    .iter()
                    .flat_map(|t| &t.partitions)
                    .filter_map(|p| p.records.as_ref())
                    .filter(|r| r.len() >= big)
                {
                    assert!(
                        parts.parts().iter().any(|x| x.as_ptr() == records.as_ptr()),
                        "v{version}: records of {} bytes were copied",
                        records.len()
                    );
                }
            }
        }
    }

    #[test]
    fn varint_lengths_match_the_encoding() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, 1 << 35, u64::MAX] {
            let mut b = BytesMut::new();
            put_unsigned_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
        }
    }
}
