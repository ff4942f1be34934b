//! MessagePack by hand for the per-message frames (`Publish`, `Deliver`,
//! `Forward`): writers that produce exactly what `rmp_serde` produces for
//! the same struct (the smallest form of every length and integer), and
//! readers for what the views accept.
//!
//! Why: through serde, each field is a trait call into an `io::Write`
//! adapter over the buffer, and reading an integer goes through rmp's
//! generic number conversion. Both showed in a 1→1 16 B profile at ~15 %
//! of the whole process (clients and node): per message, encoding and
//! parsing a frame cost more than routing it. The frames and every other
//! kind still have their serde definitions (`frame.rs`), which stay the
//! reference: the tests compare these writers' bytes with `rmp_serde`'s.

use bytes::{BufMut, BytesMut};

pub(crate) const NIL: u8 = 0xc0;

/// Encoded size of an unsigned integer.
pub(crate) fn uint_size(v: u64) -> usize {
    match v {
        0..0x80 => 1,
        0x80..0x100 => 2,
        0x100..0x1_0000 => 3,
        0x1_0000..0x1_0000_0000 => 5,
        _ => 9,
    }
}

pub(crate) fn put_uint(out: &mut BytesMut, v: u64) {
    match uint_size(v) {
        1 => out.put_u8(v as u8),
        2 => {
            out.put_u8(0xcc);
            out.put_u8(v as u8);
        }
        3 => {
            out.put_u8(0xcd);
            out.put_u16(v as u16);
        }
        5 => {
            out.put_u8(0xce);
            out.put_u32(v as u32);
        }
        _ => {
            out.put_u8(0xcf);
            out.put_u64(v);
        }
    }
}

/// Encoded size of a string's header.
fn str_head(len: usize) -> usize {
    match len {
        0..32 => 1,
        32..0x100 => 2,
        0x100..0x1_0000 => 3,
        _ => 5,
    }
}

/// Encoded size of a string.
pub(crate) fn str_size(s: &str) -> usize {
    str_head(s.len()) + s.len()
}

/// A length header of `size` bytes: `fix | len` in one byte, or the 8-, 16-
/// or 32-bit form after its marker in `markers`.
fn put_head(out: &mut BytesMut, size: usize, len: usize, fix: u8, markers: [u8; 3]) {
    match size {
        1 => out.put_u8(fix | len as u8),
        2 => {
            out.put_u8(markers[0]);
            out.put_u8(len as u8);
        }
        3 => {
            out.put_u8(markers[1]);
            out.put_u16(len as u16);
        }
        _ => {
            out.put_u8(markers[2]);
            out.put_u32(len as u32);
        }
    }
}

pub(crate) fn put_str(out: &mut BytesMut, s: &str) {
    put_head(out, str_head(s.len()), s.len(), 0xa0, [0xd9, 0xda, 0xdb]);
    out.put_slice(s.as_bytes());
}

/// Encoded size of an optional string (nil when absent).
pub(crate) fn opt_str_size(s: Option<&str>) -> usize {
    s.map_or(1, str_size)
}

pub(crate) fn put_opt_str(out: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_str(out, s),
        None => out.put_u8(NIL),
    }
}

/// Encoded size of a binary's header.
fn bin_head(len: usize) -> usize {
    match len {
        0..0x100 => 2,
        0x100..0x1_0000 => 3,
        _ => 5,
    }
}

/// Encoded size of a binary.
pub(crate) fn bin_size(b: &[u8]) -> usize {
    bin_head(b.len()) + b.len()
}

pub(crate) fn put_bin(out: &mut BytesMut, b: &[u8]) {
    // No one-byte form: `fix` is never used.
    put_head(out, bin_head(b.len()), b.len(), 0, [0xc4, 0xc5, 0xc6]);
    out.put_slice(b);
}

/// Encoded size of an array's header.
pub(crate) fn array_head(len: usize) -> usize {
    match len {
        0..16 => 1,
        16..0x1_0000 => 3,
        _ => 5,
    }
}

pub(crate) fn put_array(out: &mut BytesMut, len: usize) {
    // No 8-bit form: `array_head` never answers 2.
    put_head(out, array_head(len), len, 0x90, [0, 0xdc, 0xdd]);
}

/// The next `n` bytes as a big-endian unsigned integer.
fn be(rd: &mut &[u8], n: usize) -> Option<u64> {
    let b = take(rd, n)?;
    Some(b.iter().fold(0u64, |v, &x| (v << 8) | u64::from(x)))
}

/// The next `len` bytes, if there are as many.
pub(crate) fn take<'a>(rd: &mut &'a [u8], len: usize) -> Option<&'a [u8]> {
    if rd.len() < len {
        return None;
    }
    let (b, rest) = rd.split_at(len);
    *rd = rest;
    Some(b)
}

fn marker(rd: &mut &[u8]) -> Option<u8> {
    let (&m, rest) = rd.split_first()?;
    *rd = rest;
    Some(m)
}

/// A non-negative integer in any MessagePack integer form (as
/// `rmp::decode::read_int::<u64>` accepts: a signed form holding a negative
/// value is refused).
pub(crate) fn uint(rd: &mut &[u8]) -> Option<u64> {
    let m = marker(rd)?;
    match m {
        0x00..=0x7f => Some(u64::from(m)),
        0xcc => be(rd, 1),
        0xcd => be(rd, 2),
        0xce => be(rd, 4),
        0xcf => be(rd, 8),
        0xd0 => u64::try_from(be(rd, 1)? as u8 as i8).ok(),
        0xd1 => u64::try_from(be(rd, 2)? as u16 as i16).ok(),
        0xd2 => u64::try_from(be(rd, 4)? as u32 as i32).ok(),
        0xd3 => u64::try_from(be(rd, 8)? as i64).ok(),
        _ => None,
    }
}

/// A string's length from its header.
pub(crate) fn str_len(rd: &mut &[u8]) -> Option<usize> {
    let m = marker(rd)?;
    match m {
        0xa0..=0xbf => Some(usize::from(m & 0x1f)),
        0xd9 => be(rd, 1).map(|v| v as usize),
        0xda => be(rd, 2).map(|v| v as usize),
        0xdb => be(rd, 4).map(|v| v as usize),
        _ => None,
    }
}

/// A binary's length from its header.
pub(crate) fn bin_len(rd: &mut &[u8]) -> Option<usize> {
    match marker(rd)? {
        0xc4 => be(rd, 1).map(|v| v as usize),
        0xc5 => be(rd, 2).map(|v| v as usize),
        0xc6 => be(rd, 4).map(|v| v as usize),
        _ => None,
    }
}

/// An array's length from its header.
pub(crate) fn array_len(rd: &mut &[u8]) -> Option<usize> {
    let m = marker(rd)?;
    match m {
        0x90..=0x9f => Some(usize::from(m & 0x0f)),
        0xdc => be(rd, 2).map(|v| v as usize),
        0xdd => be(rd, 4).map(|v| v as usize),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values at every boundary between two encodings.
    const EDGES: &[u64] = &[
        0,
        1,
        31,
        32,
        127,
        128,
        255,
        256,
        65_535,
        65_536,
        u32::MAX as u64,
        u32::MAX as u64 + 1,
        u64::MAX,
    ];

    #[test]
    fn integers_are_encoded_as_rmp_encodes_them_and_read_back() {
        for &v in EDGES {
            let mut want = Vec::new();
            rmp::encode::write_uint(&mut want, v).unwrap();
            let mut got = BytesMut::new();
            put_uint(&mut got, v);
            assert_eq!(&got[..], &want[..], "{v}");
            assert_eq!(uint_size(v), want.len(), "{v}");
            let mut rd = &got[..];
            assert_eq!(uint(&mut rd), Some(v));
            assert!(rd.is_empty());
        }
    }

    #[test]
    fn signed_forms_are_read_like_rmp_reads_them() {
        for v in [-1i64, 0, 5, -200, 300, -70_000, 1 << 40, i64::MIN, i64::MAX] {
            let mut buf = Vec::new();
            rmp::encode::write_sint(&mut buf, v).unwrap();
            let want = rmp::decode::read_int::<u64, _>(&mut &buf[..]).ok();
            assert_eq!(uint(&mut &buf[..]), want, "{v}");
        }
    }

    #[test]
    fn lengths_are_encoded_as_rmp_encodes_them_and_read_back() {
        for &n in EDGES.iter().filter(|&&n| n <= 70_000) {
            let n = n as usize;
            let s = "x".repeat(n);
            let mut want = Vec::new();
            rmp::encode::write_str(&mut want, &s).unwrap();
            let mut got = BytesMut::new();
            put_str(&mut got, &s);
            assert_eq!(&got[..], &want[..], "str {n}");
            assert_eq!(str_size(&s), want.len());
            let mut rd = &got[..];
            assert_eq!(str_len(&mut rd), Some(n));
            assert_eq!(rd.len(), n);

            let b = vec![7u8; n];
            let mut want = Vec::new();
            rmp::encode::write_bin(&mut want, &b).unwrap();
            let mut got = BytesMut::new();
            put_bin(&mut got, &b);
            assert_eq!(&got[..], &want[..], "bin {n}");
            assert_eq!(bin_size(&b), want.len());
            let mut rd = &got[..];
            assert_eq!(bin_len(&mut rd), Some(n));

            let mut want = Vec::new();
            rmp::encode::write_array_len(&mut want, n as u32).unwrap();
            let mut got = BytesMut::new();
            put_array(&mut got, n);
            assert_eq!(&got[..], &want[..], "array {n}");
            assert_eq!(array_head(n), want.len());
            let mut rd = &got[..];
            assert_eq!(array_len(&mut rd), Some(n));
        }
    }

    #[test]
    fn truncated_or_foreign_input_is_refused() {
        for bad in [&[][..], &[0xcd, 1], &[0xdb, 0, 0], &[0xc6, 0], &[0xdd, 0]] {
            assert_eq!(uint(&mut &bad[..]), None, "{bad:?}");
            assert_eq!(str_len(&mut &bad[..]), None, "{bad:?}");
            assert_eq!(bin_len(&mut &bad[..]), None, "{bad:?}");
            assert_eq!(array_len(&mut &bad[..]), None, "{bad:?}");
        }
        // A string is not a binary, nor an integer a string.
        assert_eq!(bin_len(&mut &[0xa1, b'x'][..]), None);
        assert_eq!(str_len(&mut &[0x05][..]), None);
    }
}
