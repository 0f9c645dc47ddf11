//! Zig-zag varints as used inside Kafka records.

use crate::RecordError;

/// Longest encoding of a 64-bit varint.
pub(crate) const VARLONG_BYTES_MAX: usize = 10;
/// Longest encoding of a 32-bit varint.
pub(crate) const VARINT_BYTES_MAX: usize = 5;

pub(crate) fn put_varlong(out: &mut impl bytes::BufMut, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.put_u8((z as u8) | 0x80);
        z >>= 7;
    }
    out.put_u8(z as u8);
}

pub(crate) fn put_varint(out: &mut impl bytes::BufMut, v: i32) {
    put_varlong(out, i64::from(v));
}

pub(crate) fn varlong_len(v: i64) -> usize {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    let mut n = 1;
    while z >= 0x80 {
        z >>= 7;
        n += 1;
    }
    n
}

/// Reads a zig-zag varint of at most `max_bytes` bytes from `buf[*pos..]`.
fn get(buf: &[u8], pos: &mut usize, max_bytes: usize) -> Result<i64, RecordError> {
    let mut z: u64 = 0;
    for i in 0..max_bytes {
        let Some(&b) = buf.get(*pos) else {
            return Err(RecordError::Truncated {
                need: *pos + 1,
                have: buf.len(),
            });
        };
        *pos += 1;
        z |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
        }
    }
    Err(RecordError::Invalid("varint too long"))
}

pub(crate) fn get_varlong(buf: &[u8], pos: &mut usize) -> Result<i64, RecordError> {
    get(buf, pos, VARLONG_BYTES_MAX)
}

pub(crate) fn get_varint(buf: &[u8], pos: &mut usize) -> Result<i32, RecordError> {
    let v = get(buf, pos, VARINT_BYTES_MAX)?;
    i32::try_from(v).map_err(|_| RecordError::Invalid("varint out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varlong_round_trips(v in any::<i64>()) {
            let mut out = Vec::new();
            put_varlong(&mut out, v);
            prop_assert_eq!(out.len(), varlong_len(v));
            let mut pos = 0;
            prop_assert_eq!(get_varlong(&out, &mut pos).unwrap(), v);
            prop_assert_eq!(pos, out.len());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            let mut pos = 0;
            let _ = get_varint(&bytes, &mut pos);
        }
    }
}
