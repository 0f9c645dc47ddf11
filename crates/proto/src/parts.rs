//! Frames as a few byte strings, so that record batches are never copied into a frame.
//!
//! A produce request or a fetch response is mostly record batches that the sender already
//! holds as [`Bytes`] (the producer's batch, the log's read). [`encode_request_parts`] and
//! [`encode_response_parts`] encode everything else (frame header, the other fields, the
//! length prefixes) into one small buffer and hand the batches on as further parts that
//! share their memory. The parts concatenated are byte for byte what [`encode_request`] /
//! [`encode_response`] write: record bytes are the last field of their message
//! (`ProduceRequest.records = 5`, `FetchPartitionResult.records = 6`), which is where a
//! protobuf encoder puts them too.
//!
//! [`WriteQueue`] then gathers the parts of many frames into vectored writes: no copy
//! into a write buffer, and few system calls.
//!
//! [`encode_request`]: crate::encode_request
//! [`encode_response`]: crate::encode_response

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use crate::{FrameHeader, HEADER_BYTES, PROTOCOL_VERSION, RESPONSE_BIT, Request, Response, v1};

/// Record bytes at least this long travel as their own part; shorter ones are copied,
/// which costs less than another entry in a vectored write.
pub const SHARED_PART_BYTES_MIN: usize = 4096;

/// One encoded frame as consecutive byte strings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrameParts {
    parts: Vec<Bytes>,
    len: usize,
}

impl FrameParts {
    /// Bytes of the whole frame.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The parts, in order.
    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    /// The frame as one contiguous buffer (copies when there is more than one part).
    pub fn to_bytes(&self) -> Bytes {
        match self.parts.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => {
                let mut out = BytesMut::with_capacity(self.len);
                for p in many {
                    out.extend_from_slice(p);
                }
                out.freeze()
            }
        }
    }

    /// Appends a part (an empty one is left out).
    pub fn push(&mut self, part: Bytes) {
        if !part.is_empty() {
            self.len += part.len();
            self.parts.push(part);
        }
    }
}

impl From<Bytes> for FrameParts {
    fn from(b: Bytes) -> Self {
        let mut f = FrameParts::default();
        f.push(b);
        f
    }
}

impl From<BytesMut> for FrameParts {
    fn from(b: BytesMut) -> Self {
        b.freeze().into()
    }
}

fn header(out: &mut BytesMut, kind: u8, correlation_id: u32, body_len: usize) {
    FrameHeader {
        version: PROTOCOL_VERSION,
        kind,
        correlation_id,
        body_len: u32::try_from(body_len).unwrap_or(u32::MAX),
    }
    .encode(out);
}

/// Bytes a length-delimited field adds around `len` bytes of payload.
fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64)
}

/// Encodes `request` as parts: a produce request's records are not copied.
pub fn encode_request_parts(correlation_id: u32, request: &Request) -> FrameParts {
    const RECORDS_TAG: u32 = 5;
    match request {
        Request::Produce(p) if p.records.len() >= SHARED_PART_BYTES_MIN => {
            let head = v1::ProduceRequest {
                records: Bytes::new(),
                ..p.clone()
            };
            let n = p.records.len();
            let head_len = head.encoded_len() + delimited_len(RECORDS_TAG, n);
            let mut out = BytesMut::with_capacity(HEADER_BYTES + head_len);
            header(&mut out, request.kind() as u8, correlation_id, head_len + n);
            // Encoding into reserved room cannot fail.
            let _ = head.encode(&mut out);
            encode_key(RECORDS_TAG, WireType::LengthDelimited, &mut out);
            encode_varint(n as u64, &mut out);
            let mut f = FrameParts::from(out);
            f.push(p.records.clone());
            f
        }
        _ => {
            let mut out = BytesMut::new();
            crate::encode_request(&mut out, correlation_id, request);
            out.into()
        }
    }
}

/// Encodes `response` as parts: a fetch response's records are not copied.
pub fn encode_response_parts(correlation_id: u32, response: &Response) -> FrameParts {
    const PARTITIONS_TAG: u32 = 2;
    const RECORDS_TAG: u32 = 6;
    match response {
        Response::Fetch(r)
            if r.partitions.iter().map(|p| p.records.len()).sum::<usize>()
                >= SHARED_PART_BYTES_MIN =>
        {
            let status = v1::FetchResponse {
                status: r.status.clone(),
                partitions: Vec::new(),
            };
            let heads: Vec<(v1::FetchPartitionResult, usize)> = r
                .partitions
                .iter()
                .map(|p| {
                    let head = v1::FetchPartitionResult {
                        records: Bytes::new(),
                        ..p.clone()
                    };
                    let n = p.records.len();
                    let records = if n == 0 {
                        0
                    } else {
                        delimited_len(RECORDS_TAG, n) + n
                    };
                    let len = head.encoded_len() + records;
                    (head, len)
                })
                .collect();
            let body_len = status.encoded_len()
                + heads
                    .iter()
                    .map(|(_, len)| delimited_len(PARTITIONS_TAG, *len) + len)
                    .sum::<usize>();
            let small = body_len
                - r.partitions
                    .iter()
                    .map(|p| p.records.len())
                    .filter(|n| *n >= SHARED_PART_BYTES_MIN)
                    .sum::<usize>();
            let mut out = BytesMut::with_capacity(HEADER_BYTES + small);
            header(
                &mut out,
                response.kind() as u8 | RESPONSE_BIT,
                correlation_id,
                body_len,
            );
            let _ = status.encode(&mut out);
            let mut f = FrameParts::default();
            for ((head, len), p) in heads.iter().zip(&r.partitions) {
                encode_key(PARTITIONS_TAG, WireType::LengthDelimited, &mut out);
                encode_varint(*len as u64, &mut out);
                let _ = head.encode(&mut out);
                if p.records.is_empty() {
                    continue;
                }
                encode_key(RECORDS_TAG, WireType::LengthDelimited, &mut out);
                encode_varint(p.records.len() as u64, &mut out);
                if p.records.len() >= SHARED_PART_BYTES_MIN {
                    f.push(out.split().freeze());
                    f.push(p.records.clone());
                } else {
                    out.extend_from_slice(&p.records);
                }
            }
            f.push(out.freeze());
            debug_assert_eq!(f.len(), HEADER_BYTES + body_len);
            f
        }
        _ => {
            let mut out = BytesMut::new();
            crate::encode_response(&mut out, correlation_id, response);
            out.into()
        }
    }
}

/// Bytes a writer task gathers from ready frames into one round of vectored writes.
pub const WRITE_GATHER_BYTES_MAX: usize = 256 * 1024;
/// Buffers one vectored write hands to the kernel at most (Linux allows 1024).
pub const WRITE_SLICES_MAX: usize = 64;

/// Frames waiting to be written, gathered into vectored writes.
///
/// The writer task pushes frames, asks for [`io_slices`](Self::io_slices), writes them
/// with one `write_vectored`, and [`advance`](Self::advance)s by what the socket took.
#[derive(Debug, Default)]
pub struct WriteQueue {
    parts: VecDeque<Bytes>,
    len: usize,
}

impl WriteQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues a frame behind the others.
    pub fn push(&mut self, frame: FrameParts) {
        self.len += frame.len;
        self.parts.extend(frame.parts);
    }

    /// Bytes queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fills `out` with the queued bytes in order, as many parts as fit; returns how many.
    pub fn io_slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, part) in out.iter_mut().zip(&self.parts) {
            *slot = IoSlice::new(part);
            n += 1;
        }
        n
    }

    /// Drops the first `n` bytes, which were written.
    ///
    /// # Panics
    /// If fewer than `n` bytes are queued.
    pub fn advance(&mut self, mut n: usize) {
        assert!(n <= self.len, "advanced past the queued bytes");
        self.len -= n;
        while n > 0 {
            let front = self.parts.front_mut().expect("len counts the parts");
            if front.len() <= n {
                n -= front.len();
                self.parts.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(records: usize) -> v1::FetchPartitionResult {
        v1::FetchPartitionResult {
            topic: "orders".into(),
            partition: 3,
            status: Some(v1::Status::ok()),
            high_watermark: 1_000_000,
            log_start_offset: 7,
            records: Bytes::from((0..records).map(|i| i as u8).collect::<Vec<u8>>()),
        }
    }

    fn whole_response(r: &Response) -> Bytes {
        let mut out = BytesMut::new();
        crate::encode_response(&mut out, 9, r);
        out.freeze()
    }

    #[test]
    fn fetch_response_parts_are_the_same_bytes_without_copying_records() {
        for sizes in [
            vec![],
            vec![0],
            vec![10],
            vec![SHARED_PART_BYTES_MIN],
            vec![100_000, 0, 5, 70_000],
            vec![1 << 20; 3],
        ] {
            let r = Response::Fetch(v1::FetchResponse {
                status: Some(v1::Status::ok()),
                partitions: sizes.iter().map(|n| partition(*n)).collect(),
            });
            let parts = encode_response_parts(9, &r);
            assert_eq!(parts.to_bytes(), whole_response(&r), "sizes {sizes:?}");
            // Large records are shared, not copied.
            let Response::Fetch(f) = &r else {
                unreachable!()
            };
            for p in f
                .partitions
                .iter()
                .filter(|p| p.records.len() >= SHARED_PART_BYTES_MIN)
            {
                assert!(
                    parts
                        .parts()
                        .iter()
                        .any(|x| x.as_ptr() == p.records.as_ptr()),
                    "records of {} bytes were copied",
                    p.records.len()
                );
            }
            let mut buf = BytesMut::from(&parts.to_bytes()[..]);
            let frame = crate::decode_frame(&mut buf, u32::MAX).unwrap().unwrap();
            assert_eq!(Response::decode(&frame).unwrap(), r);
        }
    }

    #[test]
    fn produce_request_parts_are_the_same_bytes() {
        for n in [0, 100, SHARED_PART_BYTES_MIN, 1 << 20] {
            let req = Request::Produce(v1::ProduceRequest {
                topic: "t".into(),
                partition: 1,
                acks: v1::Acks::Leader as i32,
                timeout_ms: 30_000,
                records: Bytes::from(vec![7u8; n]),
            });
            let parts = encode_request_parts(4, &req);
            let mut whole = BytesMut::new();
            crate::encode_request(&mut whole, 4, &req);
            assert_eq!(parts.to_bytes(), whole.freeze(), "{n} bytes");
            assert_eq!(
                parts.parts().len(),
                if n >= SHARED_PART_BYTES_MIN { 2 } else { 1 }
            );
        }
        let other = Request::ListTopics(v1::ListTopicsRequest {});
        let mut whole = BytesMut::new();
        crate::encode_request(&mut whole, 1, &other);
        assert_eq!(encode_request_parts(1, &other).to_bytes(), whole.freeze());
    }

    #[test]
    fn write_queue_hands_out_slices_and_advances_across_parts() {
        let mut q = WriteQueue::new();
        let mut f = FrameParts::from(Bytes::from_static(b"abc"));
        f.push(Bytes::from_static(b"defg"));
        q.push(f);
        q.push(FrameParts::from(Bytes::from_static(b"hi")));
        assert_eq!(q.len(), 9);
        let mut slots = [IoSlice::new(&[]); 2];
        assert_eq!(q.io_slices(&mut slots), 2);
        assert_eq!(&*slots[1], b"defg");
        q.advance(5);
        let mut slots = [IoSlice::new(&[]); 4];
        let n = q.io_slices(&mut slots);
        let rest: Vec<u8> = slots[..n].iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(rest, b"fghi");
        q.advance(4);
        assert!(q.is_empty());
    }
}
