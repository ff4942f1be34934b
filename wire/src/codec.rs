//! Length-prefixed MessagePack codec. Sans-IO: bytes in, frames out.
//!
//! Decoding is two steps, as in mini-redis: [`check`] looks at the header and
//! says whether a whole frame is buffered (or that the declared length is over
//! the limit, before anything is allocated for it), then [`decode_body`] parses
//! exactly that frame. "Incomplete" is `Ok(None)`, never an error.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Serialize;

use crate::frame::*;
use crate::mp;
use crate::{Name, WireError};

/// Bytes before the body: `len: u32` and `kind: u8`.
pub const HEADER_LEN: usize = 5;
/// Default maximum frame length (kind + body), 1 MiB.
pub const DEFAULT_MAX_FRAME: u32 = 1 << 20;

/// Codec limits; configuration, not constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted `len` (kind byte + body).
    pub max_frame: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: DEFAULT_MAX_FRAME,
        }
    }
}

/// If `buf` starts with a whole frame, its total length (header included).
/// `Ok(None)` means "need more bytes". An over-limit or zero declared length is
/// an error as soon as the 4 length bytes are present.
pub fn check(buf: &[u8], limits: &Limits) -> Result<Option<usize>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len == 0 {
        return Err(WireError::EmptyFrame);
    }
    if len > limits.max_frame {
        return Err(WireError::FrameTooLarge {
            declared: len as u64,
            max: limits.max_frame,
        });
    }
    let total = 4 + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some(total))
}

/// Decodes one frame from the front of `buf`, consuming it. `Ok(None)`: need more.
pub fn decode(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Frame>, WireError> {
    match check(buf, limits)? {
        None => Ok(None),
        Some(total) => {
            let frame = decode_body(&buf[4..total]);
            buf.advance(total);
            frame.map(Some)
        }
    }
}

fn parse<'a, T: serde::Deserialize<'a>>(kind: FrameKind, body: &'a [u8]) -> Result<T, WireError> {
    // Read through a `&mut &[u8]` so that what is left unread is observable
    // afterwards. (`Deserializer::from_read_ref(..).get_ref()` returns the
    // *whole* input, not the unread rest, which made every non-empty body look
    // like trailing bytes.)
    let mut unread: &'a [u8] = body;
    let mut de = rmp_serde::Deserializer::new(&mut unread);
    let v = T::deserialize(&mut de).map_err(|e| WireError::Malformed {
        kind: kind.as_str(),
        reason: e.to_string(),
    })?;
    drop(de);
    let rest = unread.len();
    if rest != 0 {
        return Err(WireError::TrailingBytes {
            kind: kind.as_str(),
            extra: rest,
        });
    }
    Ok(v)
}

/// Parses `kind | body` (the bytes after the length prefix).
pub fn decode_body(frame: &[u8]) -> Result<Frame, WireError> {
    let (&k, body) = frame.split_first().ok_or(WireError::EmptyFrame)?;
    let kind = FrameKind::from_u8(k).ok_or(WireError::UnknownFrameKind(k))?;
    Ok(match kind {
        FrameKind::Hello => Frame::Hello(parse(kind, body)?),
        FrameKind::Accept => Frame::Accept(parse(kind, body)?),
        FrameKind::Reject => Frame::Reject(parse(kind, body)?),
        FrameKind::Subscribe => Frame::Subscribe(parse(kind, body)?),
        FrameKind::Unsubscribe => Frame::Unsubscribe(parse(kind, body)?),
        FrameKind::SubAck => Frame::SubAck(parse(kind, body)?),
        FrameKind::SubError => Frame::SubError(parse(kind, body)?),
        FrameKind::Publish => Frame::Publish(parse(kind, body)?),
        FrameKind::Deliver => Frame::Deliver(parse(kind, body)?),
        FrameKind::Ping => Frame::Ping(parse(kind, body)?),
        FrameKind::Pong => Frame::Pong(parse(kind, body)?),
        FrameKind::Error => Frame::Error(parse(kind, body)?),
        FrameKind::PeerHello => Frame::PeerHello(parse(kind, body)?),
        FrameKind::PeerAccept => Frame::PeerAccept(parse(kind, body)?),
        FrameKind::Interest => Frame::Interest(parse(kind, body)?),
        FrameKind::Forward => Frame::Forward(parse(kind, body)?),
        FrameKind::ReadProgress => Frame::ReadProgress(parse(kind, body)?),
    })
}

/// Writes `len | kind | body` for any serializable body, checking the limit.
fn encode_with<T: Serialize + ?Sized>(
    kind: FrameKind,
    body: &T,
    limits: &Limits,
    out: &mut BytesMut,
) -> Result<(), WireError> {
    let start = out.len();
    out.put_u32(0);
    out.put_u8(kind as u8);
    let mut w = out.writer();
    let res = rmp_serde::encode::write(&mut w, body);
    let out = w.into_inner();
    if let Err(e) = res {
        out.truncate(start);
        return Err(WireError::Encode(e.to_string()));
    }
    let len = out.len() - start - 4;
    if len > limits.max_frame as usize {
        out.truncate(start);
        return Err(WireError::FrameTooLarge {
            declared: len as u64,
            max: limits.max_frame,
        });
    }
    out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Appends the encoding of `frame` to `out`. On error `out` is left as it was.
pub fn encode(frame: &Frame, limits: &Limits, out: &mut BytesMut) -> Result<(), WireError> {
    let kind = frame.kind();
    match frame {
        Frame::Hello(f) => encode_with(kind, f, limits, out),
        Frame::Accept(f) => encode_with(kind, f, limits, out),
        Frame::Reject(f) => encode_with(kind, f, limits, out),
        Frame::Subscribe(f) => encode_with(kind, f, limits, out),
        Frame::Unsubscribe(f) => encode_with(kind, f, limits, out),
        Frame::SubAck(f) => encode_with(kind, f, limits, out),
        Frame::SubError(f) => encode_with(kind, f, limits, out),
        Frame::Publish(f) => encode_with(kind, f, limits, out),
        Frame::Deliver(f) => encode_with(kind, f, limits, out),
        Frame::Ping(f) => encode_with(kind, f, limits, out),
        Frame::Pong(f) => encode_with(kind, f, limits, out),
        Frame::Error(f) => encode_with(kind, f, limits, out),
        Frame::PeerHello(f) => encode_with(kind, f, limits, out),
        Frame::PeerAccept(f) => encode_with(kind, f, limits, out),
        Frame::Interest(f) => encode_with(kind, f, limits, out),
        Frame::Forward(f) => encode_with(kind, f, limits, out),
        Frame::ReadProgress(f) => encode_with(kind, f, limits, out),
    }
}

/// Convenience: the encoding of one frame as its own buffer.
pub fn encode_to_vec(frame: &Frame, limits: &Limits) -> Result<Vec<u8>, WireError> {
    let mut b = BytesMut::new();
    encode(frame, limits, &mut b)?;
    Ok(b.to_vec())
}

/// Appends `len | kind | body` for a body of `body` bytes that `write`
/// writes: the frame limit is checked first (nothing is written for a frame
/// over it), and the buffer grows once.
fn encode_direct(
    kind: FrameKind,
    body: usize,
    limits: &Limits,
    out: &mut BytesMut,
    write: impl FnOnce(&mut BytesMut),
) -> Result<(), WireError> {
    let len = 1 + body;
    if len > limits.max_frame as usize {
        return Err(WireError::FrameTooLarge {
            declared: len as u64,
            max: limits.max_frame,
        });
    }
    out.reserve(4 + len);
    let start = out.len();
    out.put_u32(len as u32);
    out.put_u8(kind as u8);
    write(out);
    debug_assert_eq!(out.len() - start, 4 + len, "{kind:?}: sized wrong");
    Ok(())
}

/// Encodes a [`Deliver`] from borrowed parts; the router's hot path uses this
/// so that a publish's payload is copied once, into the outgoing frame.
#[allow(clippy::too_many_arguments)]
pub fn encode_deliver(
    name: &Name,
    mode: Mode,
    from: &Name,
    from_identity: Option<&str>,
    msg_id: u64,
    payload: &[u8],
    limits: &Limits,
    out: &mut BytesMut,
) -> Result<(), WireError> {
    encode_deliver_raw(
        name.as_str(),
        mode,
        from.as_str(),
        from_identity,
        msg_id,
        payload,
        limits,
        out,
    )
}

/// [`encode_deliver`] from name strings the caller has already validated
/// (e.g. from a [`crate::PublishView`]).
#[allow(clippy::too_many_arguments)]
pub fn encode_deliver_raw(
    name: &str,
    mode: Mode,
    from: &str,
    from_identity: Option<&str>,
    msg_id: u64,
    payload: &[u8],
    limits: &Limits,
    out: &mut BytesMut,
) -> Result<(), WireError> {
    let body = mp::array_head(6)
        + mp::str_size(name)
        + 1
        + mp::str_size(from)
        + mp::opt_str_size(from_identity)
        + mp::uint_size(msg_id)
        + mp::bin_size(payload);
    encode_direct(FrameKind::Deliver, body, limits, out, |out| {
        mp::put_array(out, 6);
        mp::put_str(out, name);
        mp::put_uint(out, mode as u64);
        mp::put_str(out, from);
        mp::put_opt_str(out, from_identity);
        mp::put_uint(out, msg_id);
        mp::put_bin(out, payload);
    })
}

/// A list of node ids serialized as a MessagePack array of strings, from
/// borrowed parts: the ids already on a message's path plus, optionally, one
/// more (the forwarding node), without building a `Vec<String>`.
pub struct NodeIds<'a, I: Iterator<Item = &'a str> + Clone> {
    pub ids: I,
    pub len: usize,
    pub then: Option<&'a str>,
}

impl<'a, I: Iterator<Item = &'a str> + Clone> NodeIds<'a, I> {
    fn all(&self) -> impl Iterator<Item = &'a str> {
        self.ids.clone().take(self.len).chain(self.then)
    }

    fn count(&self) -> usize {
        self.len + usize::from(self.then.is_some())
    }

    /// Encoded size, as a MessagePack array of strings.
    fn size(&self) -> usize {
        mp::array_head(self.count()) + self.all().map(mp::str_size).sum::<usize>()
    }

    fn put(&self, out: &mut BytesMut) {
        mp::put_array(out, self.count());
        for id in self.all() {
            mp::put_str(out, id);
        }
    }
}

/// Encodes a [`Forward`] from borrowed parts (a node's forwarding hot path).
#[allow(clippy::too_many_arguments)]
pub fn encode_forward_raw<'p, 'd, P, D>(
    name: &str,
    mode: Mode,
    from: &str,
    from_identity: Option<&str>,
    msg_id: u64,
    path: NodeIds<'p, P>,
    dests: NodeIds<'d, D>,
    payload: &[u8],
    limits: &Limits,
    out: &mut BytesMut,
) -> Result<(), WireError>
where
    P: Iterator<Item = &'p str> + Clone,
    D: Iterator<Item = &'d str> + Clone,
{
    let body = mp::array_head(8)
        + mp::str_size(name)
        + 1
        + mp::str_size(from)
        + mp::opt_str_size(from_identity)
        + mp::uint_size(msg_id)
        + path.size()
        + dests.size()
        + mp::bin_size(payload);
    encode_direct(FrameKind::Forward, body, limits, out, |out| {
        mp::put_array(out, 8);
        mp::put_str(out, name);
        mp::put_uint(out, mode as u64);
        mp::put_str(out, from);
        mp::put_opt_str(out, from_identity);
        mp::put_uint(out, msg_id);
        path.put(out);
        dests.put(out);
        mp::put_bin(out, payload);
    })
}

/// Encodes a [`Publish`] from borrowed parts (the SDK's publish path).
pub fn encode_publish(
    name: &Name,
    mode: Mode,
    flags: u8,
    msg_id: u64,
    payload: &[u8],
    limits: &Limits,
    out: &mut BytesMut,
) -> Result<(), WireError> {
    let name = name.as_str();
    let body = mp::array_head(5)
        + mp::str_size(name)
        + 1
        + mp::uint_size(u64::from(flags))
        + mp::uint_size(msg_id)
        + mp::bin_size(payload);
    encode_direct(FrameKind::Publish, body, limits, out, |out| {
        mp::put_array(out, 5);
        mp::put_str(out, name);
        mp::put_uint(out, mode as u64);
        mp::put_uint(out, u64::from(flags));
        mp::put_uint(out, msg_id);
        mp::put_bin(out, payload);
    })
}

/// How many whole frames (`len | kind | body`, as this codec encodes them)
/// `buf` holds back to back; a truncated tail is not counted.
pub fn count_frames(buf: &[u8]) -> usize {
    let mut n = 0;
    let mut rest = buf;
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let len = u32::from_be_bytes(*len) as usize;
        let Some(next) = tail.get(len..) else {
            break;
        };
        n += 1;
        rest = next;
    }
    n
}

/// Groups encoded frames queued for one stream into few large chunks, in
/// order, so a writer makes one QUIC write per chunk rather than per frame.
/// Frames of at least `max_chunk / 4` bytes pass through uncopied; smaller
/// ones are copied into buffers of at most `max_chunk` bytes sized for what
/// this batch holds (nothing is kept between batches; a frame that does not
/// fit the current buffer starts the next one). A lone frame passes
/// through as is. `frames` is left empty.
pub fn coalesce(frames: &mut Vec<Bytes>, max_chunk: usize, out: &mut Vec<Bytes>) {
    coalesce_from(frames, max_chunk, max_chunk / 4, out);
}

/// [`coalesce`] with the size from which a piece passes through uncopied
/// (`pass`) chosen by the caller, e.g. for pieces that are already runs of
/// frames ([`merge_adjacent`]).
pub fn coalesce_from(frames: &mut Vec<Bytes>, max_chunk: usize, pass: usize, out: &mut Vec<Bytes>) {
    if frames.len() == 1 {
        out.extend(frames.pop());
        return;
    }
    let big = pass.max(1);
    let mut small_left: usize = frames
        .iter()
        .filter(|b| b.len() < big)
        .map(Bytes::len)
        .sum();
    let mut buf = BytesMut::new();
    for b in frames.drain(..) {
        if b.len() >= big {
            if !buf.is_empty() {
                out.push(buf.split().freeze());
            }
            out.push(b);
            continue;
        }
        if buf.capacity() - buf.len() < b.len() {
            // Never grow a buffer in place: growing reallocates and copies
            // everything written so far (a second copy of nearly every
            // byte of a full chunk). A frame that does not fit starts the
            // next chunk instead.
            if !buf.is_empty() {
                out.push(buf.split().freeze());
            }
            buf = BytesMut::with_capacity(small_left.min(max_chunk));
        }
        small_left -= b.len();
        buf.extend_from_slice(&b);
    }
    if !buf.is_empty() {
        out.push(buf.freeze());
    }
}

/// Joins frames that were carved one after another out of one buffer
/// ([`BytesMut::split`] of a scratch buffer) back into one piece per run,
/// in queue order and without copying (`BytesMut::unsplit` of contiguous
/// parts of one allocation is O(1)); `frames` is left empty.
///
/// A publisher encodes its frames back to back into a scratch buffer and
/// queues each one; the writer then gets whole runs to hand to QUIC instead
/// of copying every frame into a coalescing buffer. Frames that merely sit
/// next to each other in memory but belong to different allocations are
/// joined by a copy (bytes' fallback), which is correct and rare.
pub fn merge_adjacent(frames: &mut Vec<BytesMut>, out: &mut Vec<Bytes>) {
    let mut run: Option<BytesMut> = None;
    for f in frames.drain(..) {
        match run.as_mut() {
            Some(r) if !f.is_empty() && r.as_ptr().wrapping_add(r.len()) == f.as_ptr() => {
                r.unsplit(f)
            }
            _ => out.extend(run.replace(f).map(BytesMut::freeze)),
        }
    }
    out.extend(run.map(BytesMut::freeze));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_frames_counts_whole_frames_back_to_back() {
        let limits = Limits::default();
        let mut buf = BytesMut::new();
        assert_eq!(count_frames(&buf), 0);
        for i in 0..3u8 {
            let f = Frame::Ping(crate::Ping {
                nonce: u64::from(i),
            });
            encode(&f, &limits, &mut buf).unwrap();
            assert_eq!(count_frames(&buf), usize::from(i) + 1);
        }
        // A cut-off frame at the end is not a frame.
        let whole = buf.len();
        encode(&Frame::Ping(crate::Ping { nonce: 9 }), &limits, &mut buf).unwrap();
        assert_eq!(count_frames(&buf[..buf.len() - 1]), 3);
        assert_eq!(count_frames(&buf[..whole + 2]), 3);
    }

    /// The hand-written encoders (`mp`) against the serde definitions they
    /// stand in for, at every length and integer boundary.
    #[test]
    fn direct_encoders_match_the_serde_encoding() {
        let limits = Limits::default();
        let names = [
            Name::parse("a/b/c").unwrap(),
            Name::parse(&format!("{}/ns/svc/i1", "o".repeat(40))).unwrap(),
        ];
        let strs = ["", "x", &"y".repeat(31), &"z".repeat(32), &"w".repeat(300)];
        let ids = [
            0u64,
            127,
            128,
            255,
            256,
            65_536,
            u32::MAX as u64 + 1,
            u64::MAX,
        ];
        let sizes = [0usize, 1, 255, 256, 65_535, 65_536, 70_000];
        let mut n = 0;
        for (i, name) in names.iter().enumerate() {
            for (j, &id) in ids.iter().enumerate() {
                let size = sizes[(i + j) % sizes.len()];
                let payload = vec![(j as u8).wrapping_mul(31); size];
                let identity = strs.get(j % 6).map(|s| s.to_string());
                let mode = [Mode::Anycast, Mode::Multicast, Mode::Unicast][j % 3];
                let flags = [0u8, 1, 127, 128, 255][j % 5];
                let list: Vec<String> = (0..[0usize, 1, 15, 16, 17][j % 5])
                    .map(|k| strs[k % strs.len()].to_owned())
                    .collect();

                let mut got = BytesMut::new();
                encode_publish(name, mode, flags, id, &payload, &limits, &mut got).unwrap();
                let mut want = BytesMut::new();
                let f = Frame::Publish(Publish {
                    name: name.clone(),
                    mode,
                    flags,
                    msg_id: id,
                    payload: payload.clone(),
                });
                encode(&f, &limits, &mut want).unwrap();
                assert_eq!(got, want, "publish {name} {id} {size}");
                assert_eq!(decode(&mut got, &limits).unwrap(), Some(f));

                let mut got = BytesMut::new();
                let (nm, from) = (name.as_str(), names[1 - i].as_str());
                encode_deliver_raw(
                    nm,
                    mode,
                    from,
                    identity.as_deref(),
                    id,
                    &payload,
                    &limits,
                    &mut got,
                )
                .unwrap();
                let mut want = BytesMut::new();
                let f = Frame::Deliver(Deliver {
                    name: name.clone(),
                    mode,
                    from: names[1 - i].clone(),
                    from_identity: identity.clone(),
                    msg_id: id,
                    payload: payload.clone(),
                });
                encode(&f, &limits, &mut want).unwrap();
                assert_eq!(got, want, "deliver {name} {id} {size}");

                let (path, then) = match list.split_last() {
                    Some((last, rest)) if j % 2 == 0 => (rest, Some(last.as_str())),
                    _ => (&list[..], None),
                };
                let mut got = BytesMut::new();
                encode_forward_raw(
                    nm,
                    mode,
                    from,
                    identity.as_deref(),
                    id,
                    NodeIds {
                        ids: path.iter().map(String::as_str),
                        len: path.len(),
                        then,
                    },
                    NodeIds {
                        ids: list.iter().map(String::as_str),
                        len: list.len(),
                        then: None,
                    },
                    &payload,
                    &limits,
                    &mut got,
                )
                .unwrap();
                let mut want = BytesMut::new();
                let f = Frame::Forward(Forward {
                    name: name.clone(),
                    mode,
                    from: names[1 - i].clone(),
                    from_identity: identity.clone(),
                    msg_id: id,
                    path: list.clone(),
                    dests: list.clone(),
                    payload,
                });
                encode(&f, &limits, &mut want).unwrap();
                assert_eq!(got, want, "forward {name} {id} {size}");
                n += 3;
            }
        }
        assert_eq!(n, 48);
    }

    #[test]
    fn a_direct_encoder_refuses_an_oversized_frame_as_serde_did() {
        let limits = Limits { max_frame: 1000 };
        let name = Name::parse("a/b/c").unwrap();
        let payload = vec![0u8; 1000];
        let mut out = BytesMut::from(&b"kept"[..]);
        let err =
            encode_publish(&name, Mode::Multicast, 0, 1, &payload, &limits, &mut out).unwrap_err();
        let f = Frame::Publish(Publish {
            name,
            mode: Mode::Multicast,
            flags: 0,
            msg_id: 1,
            payload,
        });
        assert_eq!(encode(&f, &limits, &mut BytesMut::new()).unwrap_err(), err);
        assert!(
            matches!(
                err,
                WireError::FrameTooLarge {
                    declared: 1014,
                    max: 1000
                }
            ),
            "{err}"
        );
        assert_eq!(&out[..], b"kept", "nothing written");
    }

    #[test]
    fn coalesce_keeps_bytes_and_order() {
        let frames: Vec<Bytes> = [3usize, 5, 40, 2, 2, 9, 100, 1]
            .iter()
            .enumerate()
            .map(|(i, &n)| Bytes::from(vec![i as u8; n]))
            .collect();
        let want: Vec<u8> = frames.iter().flat_map(|b| b.iter().copied()).collect();
        let mut batch = frames.clone();
        let mut out = Vec::new();
        coalesce(&mut batch, 16, &mut out);
        assert!(batch.is_empty());
        let got: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(got, want);
        // Small frames were merged; the 40- and 100-byte frames went through whole.
        assert!(out.len() < frames.len(), "{out:?}");
        assert!(out.iter().any(|c| c == &frames[2]) && out.iter().any(|c| c == &frames[6]));
        assert!(
            out.iter()
                .all(|c| c.len() <= 16 || c.len() == 40 || c.len() == 100)
        );
    }

    #[test]
    fn coalesced_chunks_never_outgrow_the_limit() {
        // 10-byte frames into 64-byte chunks: six fill 60 bytes, the seventh
        // does not fit. Growing the buffer for it would copy the 60 bytes
        // again (and make a 70-byte chunk); it must start the next chunk.
        let frames: Vec<Bytes> = (0..20u8).map(|i| Bytes::from(vec![i; 10])).collect();
        let want: Vec<u8> = frames.iter().flat_map(|b| b.iter().copied()).collect();
        let mut batch = frames.clone();
        let mut out = Vec::new();
        coalesce(&mut batch, 64, &mut out);
        let got: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(got, want);
        assert!(out.iter().all(|c| c.len() <= 64), "{out:?}");
        assert_eq!(
            out.iter().map(Bytes::len).collect::<Vec<_>>(),
            [60, 60, 60, 20]
        );
    }

    #[test]
    fn merge_adjacent_joins_runs_of_one_buffer_without_copying() {
        let mut scratch = BytesMut::with_capacity(1024);
        let mut frames = Vec::new();
        for i in 0..3u8 {
            scratch.extend_from_slice(&[i; 10]);
            frames.push(scratch.split());
        }
        // Another allocation breaks the run; then the scratch goes on.
        frames.push(BytesMut::from(&[9u8; 5][..]));
        scratch.extend_from_slice(&[3u8; 10]);
        frames.push(scratch.split());
        let base = frames[0].as_ptr();
        let mut out = Vec::new();
        merge_adjacent(&mut frames, &mut out);
        assert!(frames.is_empty());
        let lens: Vec<usize> = out.iter().map(Bytes::len).collect();
        assert_eq!(lens, vec![30, 5, 10]);
        assert_eq!(
            out[0].as_ptr(),
            base,
            "the run is the scratch buffer itself"
        );
        let mut want = Vec::new();
        for i in 0..3u8 {
            want.extend_from_slice(&[i; 10]);
        }
        assert_eq!(&out[0][..], &want[..]);
        assert_eq!(&out[1][..], &[9u8; 5]);
        assert_eq!(&out[2][..], &[3u8; 10]);
    }

    #[test]
    fn merged_runs_from_the_pass_size_are_not_copied_again() {
        let mut batch = vec![
            Bytes::from(vec![1u8; 40]),
            Bytes::from(vec![2u8; 3]),
            Bytes::from(vec![3u8; 3]),
        ];
        let first = batch[0].as_ptr();
        let mut out = Vec::new();
        coalesce_from(&mut batch, 64, 32, &mut out);
        let lens: Vec<usize> = out.iter().map(Bytes::len).collect();
        assert_eq!(lens, vec![40, 6]);
        assert_eq!(out[0].as_ptr(), first);
    }

    #[test]
    fn coalesce_passes_a_lone_frame_through() {
        let f = Bytes::from_static(b"hello");
        let mut batch = vec![f.clone()];
        let mut out = Vec::new();
        coalesce(&mut batch, 4, &mut out);
        assert_eq!(out, vec![f]);
    }
}
