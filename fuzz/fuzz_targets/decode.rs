//! Arbitrary bytes through the stream decoder.
//!
//! Properties:
//! - `decode` never panics; "incomplete" (`Ok(None)`) never consumes bytes and
//!   agrees with `check`;
//! - feeding the same bytes in two pieces (split point chosen by the first
//!   byte) yields exactly the same frames and the same final outcome;
//! - every decoded frame re-encodes, and that encoding decodes to the same frame.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use slim_wire::{Frame, Limits, WireError, check, decode, encode};

/// Small enough that the fuzzer reaches the limit check easily.
const LIMITS: Limits = Limits { max_frame: 4096 };

#[derive(Debug, PartialEq)]
enum End {
    Incomplete(usize),
    Error(WireError),
}

/// Decodes what `buf` holds; stops at "incomplete" or at a header error (which
/// leaves the buffer alone). A body error consumes that frame; decoding goes on.
fn drain(buf: &mut BytesMut, out: &mut Vec<Result<Frame, WireError>>) -> Option<End> {
    loop {
        let before = buf.clone();
        match decode(buf, &LIMITS) {
            Ok(Some(f)) => out.push(Ok(f)),
            Ok(None) => {
                assert_eq!(*buf, before, "Ok(None) consumed bytes");
                assert_eq!(check(buf, &LIMITS), Ok(None));
                return Some(End::Incomplete(buf.len()));
            }
            Err(e) if buf.len() == before.len() => {
                assert_eq!(*buf, before);
                assert_eq!(check(buf, &LIMITS), Err(e.clone()));
                return Some(End::Error(e));
            }
            Err(e) => out.push(Err(e)),
        }
    }
}

fn round_trip(frame: &Frame) {
    let mut out = BytesMut::new();
    // Re-encoding may legitimately be a few bytes longer than a non-canonical
    // input (e.g. a payload sent as a fixarray comes back as bin8), so use the
    // default limit here rather than the fuzzing one.
    encode(frame, &Limits::default(), &mut out).expect("a decoded frame re-encodes");
    let again = decode(&mut out, &Limits::default())
        .expect("re-encoded frame decodes")
        .expect("re-encoded frame is complete");
    assert_eq!(&again, frame);
    assert!(out.is_empty(), "re-encoding left {} bytes", out.len());
}

fuzz_target!(|data: &[u8]| {
    // In one piece.
    let mut whole = Vec::new();
    let mut buf = BytesMut::from(data);
    let end_whole = drain(&mut buf, &mut whole);

    // In two pieces.
    let split = data.first().map_or(0, |&b| b as usize % (data.len() + 1));
    let mut pieces = Vec::new();
    let mut buf = BytesMut::from(&data[..split]);
    let mut end_pieces = drain(&mut buf, &mut pieces);
    if !matches!(end_pieces, Some(End::Error(_))) {
        buf.extend_from_slice(&data[split..]);
        end_pieces = drain(&mut buf, &mut pieces);
    }
    assert_eq!(whole, pieces, "split at {split} changed the frames");
    assert_eq!(
        end_whole, end_pieces,
        "split at {split} changed the outcome"
    );

    for frame in whole.iter().flatten() {
        round_trip(frame);
    }
});
