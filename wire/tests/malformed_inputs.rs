//! Malformed input: every case names the exact error it must produce.

use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::BytesMut;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use slim_wire::codec::{encode_deliver, encode_publish, encode_to_vec};
use slim_wire::{
    Accept, DEFAULT_MAX_FRAME, Deliver, ErrorCode, ErrorFrame, Forward, Frame, FrameKind, Hello,
    Interest, InvalidName, Limits, LinkSet, MAX_COMPONENT_LEN, Mode, Name, NameState, OriginDigest,
    OriginUpdate, PeerAccept, PeerHello, Ping, Pong, Publish, Reject, SubAck, SubError, Subscribe,
    Unsubscribe, WireError, check, decode, decode_body, encode,
};

// ------------------------------------------------ a tiny MessagePack builder

fn arr(items: &[Vec<u8>]) -> Vec<u8> {
    assert!(items.len() < 16, "fixarray only");
    let mut v = vec![0x90 | items.len() as u8];
    for i in items {
        v.extend_from_slice(i);
    }
    v
}

fn map(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    assert!(entries.len() < 16, "fixmap only");
    let mut v = vec![0x80 | entries.len() as u8];
    for (k, val) in entries {
        v.extend_from_slice(k);
        v.extend_from_slice(val);
    }
    v
}

fn str_bytes(b: &[u8]) -> Vec<u8> {
    let mut v = match b.len() {
        n if n < 32 => vec![0xa0 | n as u8],
        n if n < 256 => vec![0xd9, n as u8],
        n => {
            let mut h = vec![0xda];
            h.extend_from_slice(&(n as u16).to_be_bytes());
            h
        }
    };
    v.extend_from_slice(b);
    v
}

fn s(x: &str) -> Vec<u8> {
    str_bytes(x.as_bytes())
}

fn uint(x: u64) -> Vec<u8> {
    match x {
        0..=0x7f => vec![x as u8],
        0x80..=0xff => vec![0xcc, x as u8],
        0x100..=0xffff => [vec![0xcd], (x as u16).to_be_bytes().to_vec()].concat(),
        0x1_0000..=0xffff_ffff => [vec![0xce], (x as u32).to_be_bytes().to_vec()].concat(),
        _ => [vec![0xcf], x.to_be_bytes().to_vec()].concat(),
    }
}

fn nil() -> Vec<u8> {
    vec![0xc0]
}

fn bin(b: &[u8]) -> Vec<u8> {
    assert!(b.len() < 256, "bin8 only");
    [vec![0xc4, b.len() as u8], b.to_vec()].concat()
}

/// `len | kind | body` with a correct length.
fn framed(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut v = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    v.push(kind);
    v.extend_from_slice(body);
    v
}

const HELLO: u8 = FrameKind::Hello as u8;
const ACCEPT: u8 = FrameKind::Accept as u8;
const SUBSCRIBE: u8 = FrameKind::Subscribe as u8;
const UNSUBSCRIBE: u8 = FrameKind::Unsubscribe as u8;
const SUB_ACK: u8 = FrameKind::SubAck as u8;
const SUB_ERROR: u8 = FrameKind::SubError as u8;
const PUBLISH: u8 = FrameKind::Publish as u8;
const DELIVER: u8 = FrameKind::Deliver as u8;
const PING: u8 = FrameKind::Ping as u8;
const ERROR: u8 = FrameKind::Error as u8;
const PEER_HELLO: u8 = FrameKind::PeerHello as u8;
const INTEREST: u8 = FrameKind::Interest as u8;
const FORWARD: u8 = FrameKind::Forward as u8;

fn forward_body(path: Vec<u8>, dests: Vec<u8>) -> Vec<u8> {
    arr(&[
        s("a/b/c"),
        uint(1),
        s("d/e/f/9"),
        nil(),
        uint(42),
        path,
        dests,
        bin(b"hi"),
    ])
}

fn publish_body(name: Vec<u8>, mode: Vec<u8>, flags: Vec<u8>, payload: Vec<u8>) -> Vec<u8> {
    arr(&[name, mode, flags, uint(42), payload])
}

fn deliver_body(name: Vec<u8>, mode: Vec<u8>, from: Vec<u8>) -> Vec<u8> {
    arr(&[name, mode, from, nil(), uint(42), bin(b"hi")])
}

fn n(x: &str) -> Name {
    Name::parse(x).unwrap()
}

fn too_long() -> String {
    "x".repeat(MAX_COMPONENT_LEN + 1)
}

// ------------------------------------------------- the builder is faithful

/// Positive controls: bodies built by hand decode to the expected frame, so
/// the malformed variants below differ from a valid frame only where intended.
#[test]
fn hand_built_valid_bodies_decode() {
    let cases: Vec<(Vec<u8>, Frame)> = vec![
        (
            framed(PING, &arr(&[uint(7)])),
            Frame::Ping(Ping { nonce: 7 }),
        ),
        (
            framed(HELLO, &arr(&[uint(1), s("acme/eu/svc/1"), nil()])),
            Frame::Hello(Hello {
                version: 1,
                name: n("acme/eu/svc/1"),
                token: None,
            }),
        ),
        (
            framed(
                PUBLISH,
                &publish_body(s("a/b/c"), uint(2), uint(1), bin(b"xyz")),
            ),
            Frame::Publish(Publish {
                name: n("a/b/c"),
                mode: Mode::Unicast,
                flags: 1,
                msg_id: 42,
                payload: b"xyz".to_vec(),
            }),
        ),
        (
            framed(DELIVER, &deliver_body(s("a/b/c"), uint(1), s("d/e/f/9"))),
            Frame::Deliver(Deliver {
                name: n("a/b/c"),
                mode: Mode::Multicast,
                from: n("d/e/f/9"),
                from_identity: None,
                msg_id: 42,
                payload: b"hi".to_vec(),
            }),
        ),
        (
            framed(
                SUBSCRIBE,
                &arr(&[
                    uint(3),
                    s(&format!("a/b/{}", "x".repeat(MAX_COMPONENT_LEN))),
                ]),
            ),
            Frame::Subscribe(Subscribe {
                id: 3,
                name: n(&format!("a/b/{}", "x".repeat(MAX_COMPONENT_LEN))),
            }),
        ),
        (
            framed(PEER_HELLO, &arr(&[uint(1), s("node-a")])),
            Frame::PeerHello(PeerHello {
                version: 1,
                node_id: "node-a".into(),
            }),
        ),
        (
            framed(
                INTEREST,
                &arr(&[
                    arr(&[arr(&[
                        s("n1"),
                        uint(7),
                        arr(&[uint(3), arr(&[s("n2"), s("n3")])]),
                        arr(&[arr(&[s("a/b/c"), uint(4), vec![0xc3]])]),
                    ])]),
                    arr(&[arr(&[s("n1"), uint(7), uint(3), uint(2), uint(99)])]),
                    vec![0xc3],
                ]),
            ),
            Frame::Interest(Interest {
                updates: vec![OriginUpdate {
                    origin: "n1".into(),
                    epoch: 7,
                    links: Some(LinkSet {
                        seq: 3,
                        peers: vec!["n2".into(), "n3".into()],
                    }),
                    names: vec![NameState {
                        name: n("a/b/c"),
                        seq: 4,
                        present: true,
                    }],
                }],
                digest: vec![OriginDigest {
                    origin: "n1".into(),
                    epoch: 7,
                    links_seq: 3,
                    names: 2,
                    hash: 99,
                }],
                digest_last: true,
            }),
        ),
        (
            framed(
                FORWARD,
                &forward_body(arr(&[s("n1")]), arr(&[s("n2"), s("n3")])),
            ),
            Frame::Forward(Forward {
                name: n("a/b/c"),
                mode: Mode::Multicast,
                from: n("d/e/f/9"),
                from_identity: None,
                msg_id: 42,
                path: vec!["n1".into()],
                dests: vec!["n2".into(), "n3".into()],
                payload: b"hi".to_vec(),
            }),
        ),
        (
            framed(ERROR, &arr(&[uint(10), nil(), s("a/b/c"), s("no route")])),
            Frame::Error(ErrorFrame {
                code: ErrorCode::NO_ROUTE,
                msg_id: None,
                name: Some(n("a/b/c")),
                reason: "no route".into(),
            }),
        ),
    ];
    for (bytes, expected) in cases {
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(decode(&mut buf, &Limits::default()), Ok(Some(expected)));
        assert!(buf.is_empty());
    }
}

// ------------------------------------------------------- the header: limits

#[test]
fn over_limit_length_is_rejected_from_the_four_length_bytes_alone() {
    let default = Limits::default();
    let small = Limits { max_frame: 16 };
    type Case = (
        &'static str,
        Vec<u8>,
        Limits,
        Result<Option<usize>, WireError>,
    );
    let cases: Vec<Case> = vec![
        (
            "u32::MAX, default limit",
            vec![0xFF; 4],
            default,
            Err(WireError::FrameTooLarge {
                declared: 0xFFFF_FFFF,
                max: DEFAULT_MAX_FRAME,
            }),
        ),
        (
            "limit + 1, default limit",
            (DEFAULT_MAX_FRAME + 1).to_be_bytes().to_vec(),
            default,
            Err(WireError::FrameTooLarge {
                declared: DEFAULT_MAX_FRAME as u64 + 1,
                max: DEFAULT_MAX_FRAME,
            }),
        ),
        (
            "exactly the default limit is only incomplete",
            DEFAULT_MAX_FRAME.to_be_bytes().to_vec(),
            default,
            Ok(None),
        ),
        (
            "u32::MAX, small limit",
            vec![0xFF; 4],
            small,
            Err(WireError::FrameTooLarge {
                declared: 0xFFFF_FFFF,
                max: 16,
            }),
        ),
        (
            "17, small limit, kind byte and some body present",
            [17u32.to_be_bytes().to_vec(), vec![PING, 0x91, 0x01]].concat(),
            small,
            Err(WireError::FrameTooLarge {
                declared: 17,
                max: 16,
            }),
        ),
        (
            "16, small limit, is only incomplete",
            16u32.to_be_bytes().to_vec(),
            small,
            Ok(None),
        ),
        (
            "zero length",
            vec![0, 0, 0, 0],
            default,
            Err(WireError::EmptyFrame),
        ),
        (
            "zero length followed by a valid frame",
            [vec![0, 0, 0, 0], framed(PING, &arr(&[uint(1)]))].concat(),
            default,
            Err(WireError::EmptyFrame),
        ),
        ("nothing", vec![], default, Ok(None)),
        ("three 0xFF bytes", vec![0xFF; 3], default, Ok(None)),
        (
            "three 0xFF bytes, small limit",
            vec![0xFF; 3],
            small,
            Ok(None),
        ),
        ("three zero bytes", vec![0; 3], default, Ok(None)),
    ];
    for (what, bytes, limits, expected) in cases {
        assert_eq!(check(&bytes, &limits), expected, "check: {what}");
        let mut buf = BytesMut::from(&bytes[..]);
        let capacity = buf.capacity();
        assert_eq!(
            decode(&mut buf, &limits),
            expected.map(|_| None),
            "decode: {what}"
        );
        // Neither an error from the header nor "incomplete" consumes or grows anything.
        assert_eq!(&buf[..], &bytes[..], "buffer changed: {what}");
        assert_eq!(buf.capacity(), capacity, "buffer reallocated: {what}");
    }
}

#[test]
fn a_valid_frame_over_a_custom_limit_is_rejected_before_its_body_arrives() {
    let bytes = encode_to_vec(
        &Frame::Reject(Reject {
            code: ErrorCode::VERSION,
            reason: "unsupported protocol version".into(),
        }),
        &Limits::default(),
    )
    .unwrap();
    let len = (bytes.len() - 4) as u32;
    let tight = Limits { max_frame: len - 1 };
    let expected = Err(WireError::FrameTooLarge {
        declared: len as u64,
        max: len - 1,
    });
    assert_eq!(check(&bytes[..4], &tight), expected);
    assert_eq!(check(&bytes, &tight), expected);
    // At exactly the limit it decodes.
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(matches!(
        decode(&mut buf, &Limits { max_frame: len }),
        Ok(Some(Frame::Reject(_)))
    ));
}

#[test]
fn empty_kind_and_body_is_empty_frame() {
    assert_eq!(decode_body(&[]), Err(WireError::EmptyFrame));
}

// ----------------------------------------------------------- the kind byte

#[test]
fn unknown_kind_bytes() {
    let body = arr(&[uint(1)]); // a valid Ping body
    for kind in [0u8, 18, 19, 99, 255] {
        let bytes = framed(kind, &body);
        assert_eq!(check(&bytes, &Limits::default()), Ok(Some(bytes.len())));
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(
            decode(&mut buf, &Limits::default()),
            Err(WireError::UnknownFrameKind(kind)),
            "kind {kind}"
        );
        assert_eq!(
            decode_body(&bytes[4..]),
            Err(WireError::UnknownFrameKind(kind))
        );
    }
}

// ------------------------------------------------------------ incomplete

#[test]
fn every_truncation_of_a_valid_stream_is_incomplete_not_an_error() {
    let limits = Limits::default();
    let frames = [
        Frame::Publish(Publish {
            name: n("acme/eu/svc"),
            mode: Mode::Anycast,
            flags: 0,
            msg_id: 1,
            payload: vec![7; 300],
        }),
        Frame::Deliver(Deliver {
            name: n("acme/eu/svc"),
            mode: Mode::Multicast,
            from: n("acme/eu/pub/2"),
            from_identity: Some("spiffe://acme/pub".into()),
            msg_id: 1,
            payload: vec![1, 2, 3],
        }),
    ];
    for frame in frames {
        let bytes = encode_to_vec(&frame, &limits).unwrap();
        for cut in 0..bytes.len() {
            assert_eq!(check(&bytes[..cut], &limits), Ok(None), "cut at {cut}");
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(decode(&mut buf, &limits), Ok(None), "cut at {cut}");
            assert_eq!(&buf[..], &bytes[..cut], "cut at {cut}: bytes consumed");
        }
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(decode(&mut buf, &limits), Ok(Some(frame)));
    }
}

// ----------------------------------------------------------------- bodies

/// What a malformed frame must decode to.
enum Expect {
    /// `Malformed` for this frame kind, with a reason containing this text.
    Malformed(&'static str, String),
    Exact(WireError),
}

fn malformed(kind: &'static str, reason: impl Into<String>) -> Expect {
    Expect::Malformed(kind, reason.into())
}

fn body_cases() -> Vec<(&'static str, Vec<u8>, Expect)> {
    let ok_name = || s("a/b/c");
    let payload = || bin(b"p");
    vec![
        // --- not MessagePack / not the right shape
        (
            "ping, kind only",
            framed(PING, &[]),
            malformed("ping", "failed to fill whole buffer"),
        ),
        (
            "ping, reserved marker 0xc1",
            framed(PING, &[0xc1]),
            malformed("ping", "Reserved"),
        ),
        (
            "ping, u64 cut short",
            framed(PING, &[0x91, 0xcf, 0, 0]),
            malformed("ping", "failed to fill whole buffer"),
        ),
        (
            "ping, array header promises an element that is not there",
            framed(PING, &[0x91]),
            malformed("ping", "failed to fill whole buffer"),
        ),
        (
            "ping, bare integer",
            framed(PING, &uint(5)),
            malformed("ping", "invalid type"),
        ),
        (
            "ping, text",
            framed(PING, b"hello"),
            malformed("ping", "invalid type"),
        ),
        (
            "ping, zero fields",
            framed(PING, &arr(&[])),
            malformed("ping", "invalid length 0"),
        ),
        (
            "ping, two fields",
            framed(PING, &arr(&[uint(1), uint(2)])),
            malformed("ping", "incorrect length"),
        ),
        (
            "publish, four fields",
            framed(PUBLISH, &arr(&[ok_name(), uint(0), uint(0), uint(1)])),
            malformed("publish", "invalid length 4"),
        ),
        (
            "publish, six fields",
            framed(
                PUBLISH,
                &arr(&[ok_name(), uint(0), uint(0), uint(1), payload(), nil()]),
            ),
            malformed("publish", "incorrect length"),
        ),
        (
            "deliver, five fields",
            framed(
                DELIVER,
                &arr(&[ok_name(), uint(0), ok_name(), nil(), uint(1)]),
            ),
            malformed("deliver", "invalid length 5"),
        ),
        // --- wrong types / out of range
        (
            "ping, string nonce",
            framed(PING, &arr(&[s("1")])),
            malformed("ping", "FixStr"),
        ),
        (
            "ping, negative nonce",
            framed(PING, &arr(&[vec![0xff]])),
            malformed("ping", "`-1`"),
        ),
        (
            "ping, nil nonce",
            framed(PING, &arr(&[nil()])),
            malformed("ping", ""),
        ),
        (
            "sub_ack, float id",
            framed(SUB_ACK, &arr(&[vec![0xca, 0x3f, 0x80, 0, 0]])),
            malformed("sub_ack", "invalid type"),
        ),
        (
            "hello, version over u16",
            framed(HELLO, &arr(&[uint(70_000), ok_name(), nil()])),
            malformed("hello", "`70000`, expected u16"),
        ),
        (
            "hello, name is an integer",
            framed(HELLO, &arr(&[uint(1), uint(5), nil()])),
            malformed("hello", "invalid type"),
        ),
        (
            "hello, token is an integer",
            framed(HELLO, &arr(&[uint(1), ok_name(), uint(5)])),
            malformed("hello", "invalid type"),
        ),
        (
            "accept, max_frame over u32",
            framed(ACCEPT, &arr(&[s("node-1"), nil(), uint(1 << 32)])),
            malformed("accept", "expected u32"),
        ),
        (
            "sub_error, code over u16",
            framed(SUB_ERROR, &arr(&[uint(1), uint(65_536), s("x")])),
            malformed("sub_error", "expected u16"),
        ),
        (
            "publish, flags over u8",
            framed(
                PUBLISH,
                &publish_body(ok_name(), uint(0), uint(256), payload()),
            ),
            malformed("publish", "`256`, expected u8"),
        ),
        (
            "publish, nil payload",
            framed(PUBLISH, &publish_body(ok_name(), uint(0), uint(0), nil())),
            malformed("publish", ""),
        ),
        (
            "publish, payload is a map",
            framed(
                PUBLISH,
                &publish_body(ok_name(), uint(0), uint(0), map(&[])),
            ),
            malformed("publish", ""),
        ),
        // --- delivery mode
        (
            "publish, mode 7",
            framed(
                PUBLISH,
                &publish_body(ok_name(), uint(7), uint(0), payload()),
            ),
            malformed("publish", "unknown delivery mode 7"),
        ),
        (
            "publish, mode 3",
            framed(
                PUBLISH,
                &publish_body(ok_name(), uint(3), uint(0), payload()),
            ),
            malformed("publish", "unknown delivery mode 3"),
        ),
        (
            "publish, mode 256",
            framed(
                PUBLISH,
                &publish_body(ok_name(), uint(256), uint(0), payload()),
            ),
            malformed("publish", "expected u8"),
        ),
        (
            "deliver, mode 255",
            framed(DELIVER, &deliver_body(ok_name(), uint(255), ok_name())),
            malformed("deliver", "unknown delivery mode 255"),
        ),
        (
            "publish, mode as text",
            framed(
                PUBLISH,
                &publish_body(ok_name(), s("anycast"), uint(0), payload()),
            ),
            malformed("publish", ""),
        ),
        // --- names inside frames
        (
            "subscribe, empty component",
            framed(SUBSCRIBE, &arr(&[uint(1), s("a//c")])),
            malformed(
                "subscribe",
                InvalidName::EmptyComponent { index: 1 }.to_string(),
            ),
        ),
        (
            "subscribe, empty name",
            framed(SUBSCRIBE, &arr(&[uint(1), s("")])),
            malformed(
                "subscribe",
                InvalidName::EmptyComponent { index: 0 }.to_string(),
            ),
        ),
        (
            "subscribe, trailing slash",
            framed(SUBSCRIBE, &arr(&[uint(1), s("a/b/c/")])),
            malformed(
                "subscribe",
                InvalidName::EmptyComponent { index: 3 }.to_string(),
            ),
        ),
        (
            "subscribe, control character",
            framed(SUBSCRIBE, &arr(&[uint(1), s("a/b/c\u{7}")])),
            malformed(
                "subscribe",
                InvalidName::ControlCharacter { index: 2 }.to_string(),
            ),
        ),
        (
            "subscribe, DEL in instance",
            framed(SUBSCRIBE, &arr(&[uint(1), s("a/b/c/\u{7f}")])),
            malformed(
                "subscribe",
                InvalidName::ControlCharacter { index: 3 }.to_string(),
            ),
        ),
        (
            "subscribe, five components",
            framed(SUBSCRIBE, &arr(&[uint(1), s("a/b/c/d/e")])),
            malformed("subscribe", InvalidName::ComponentCount(5).to_string()),
        ),
        (
            "subscribe, two components",
            framed(SUBSCRIBE, &arr(&[uint(1), s("a/b")])),
            malformed("subscribe", InvalidName::ComponentCount(2).to_string()),
        ),
        (
            "subscribe, component too long",
            framed(
                SUBSCRIBE,
                &arr(&[uint(1), s(&format!("a/b/{}", too_long()))]),
            ),
            malformed(
                "subscribe",
                InvalidName::ComponentTooLong {
                    index: 2,
                    len: MAX_COMPONENT_LEN + 1,
                }
                .to_string(),
            ),
        ),
        (
            "unsubscribe, instance too long",
            framed(
                UNSUBSCRIBE,
                &arr(&[uint(1), s(&format!("a/b/c/{}", too_long()))]),
            ),
            malformed(
                "unsubscribe",
                InvalidName::ComponentTooLong {
                    index: 3,
                    len: MAX_COMPONENT_LEN + 1,
                }
                .to_string(),
            ),
        ),
        (
            "subscribe, name not utf-8",
            framed(SUBSCRIBE, &arr(&[uint(1), str_bytes(&[b'a', b'/', 0xff])])),
            malformed("subscribe", "utf8"),
        ),
        (
            "subscribe, name as bin",
            framed(SUBSCRIBE, &arr(&[uint(1), bin(b"a/b/c")])),
            malformed("subscribe", "byte array"),
        ),
        (
            "hello, name without service",
            framed(HELLO, &arr(&[uint(1), s("acme/eu"), nil()])),
            malformed("hello", InvalidName::ComponentCount(2).to_string()),
        ),
        (
            "publish, control character in name",
            framed(
                PUBLISH,
                &publish_body(s("a/b\n/c"), uint(0), uint(0), payload()),
            ),
            malformed(
                "publish",
                InvalidName::ControlCharacter { index: 1 }.to_string(),
            ),
        ),
        (
            "deliver, invalid from",
            framed(DELIVER, &deliver_body(ok_name(), uint(0), s("a/b/c/d/e"))),
            malformed("deliver", InvalidName::ComponentCount(5).to_string()),
        ),
        (
            "error, invalid optional name",
            framed(ERROR, &arr(&[uint(1), nil(), s("/b/c"), s("x")])),
            malformed(
                "error",
                InvalidName::EmptyComponent { index: 0 }.to_string(),
            ),
        ),
        // --- trailing bytes after a complete body
        (
            "ping + one byte",
            framed(PING, &[arr(&[uint(1)]), vec![0x00]].concat()),
            Expect::Exact(WireError::TrailingBytes {
                kind: "ping",
                extra: 1,
            }),
        ),
        (
            "sub_ack + a second body",
            framed(SUB_ACK, &[arr(&[uint(1)]), arr(&[uint(2)])].concat()),
            Expect::Exact(WireError::TrailingBytes {
                kind: "sub_ack",
                extra: 2,
            }),
        ),
        (
            "publish + three nils",
            framed(
                PUBLISH,
                &[
                    publish_body(ok_name(), uint(0), uint(0), payload()),
                    vec![0xc0; 3],
                ]
                .concat(),
            ),
            Expect::Exact(WireError::TrailingBytes {
                kind: "publish",
                extra: 3,
            }),
        ),
        // --- peer-link frames
        (
            "peer hello, node id is a number",
            framed(PEER_HELLO, &arr(&[uint(1), uint(7)])),
            malformed("peer_hello", "invalid type"),
        ),
        (
            "interest, bad name in a name state",
            framed(
                INTEREST,
                &arr(&[
                    arr(&[arr(&[
                        s("n1"),
                        uint(1),
                        nil(),
                        arr(&[arr(&[s("a//c"), uint(1), vec![0xc3]])]),
                    ])]),
                    arr(&[]),
                    vec![0xc2],
                ]),
            ),
            malformed("interest", "empty"),
        ),
        (
            "interest, link set peers is not an array",
            framed(
                INTEREST,
                &arr(&[
                    arr(&[arr(&[s("n1"), uint(1), arr(&[uint(1), s("n2")]), arr(&[])])]),
                    arr(&[]),
                    vec![0xc2],
                ]),
            ),
            malformed("interest", "invalid type"),
        ),
        (
            "forward, path element is not a string",
            framed(FORWARD, &forward_body(arr(&[uint(1)]), arr(&[]))),
            malformed("forward", "invalid type"),
        ),
        (
            "forward, dests missing (7 fields)",
            framed(
                FORWARD,
                &arr(&[
                    s("a/b/c"),
                    uint(1),
                    s("d/e/f/9"),
                    nil(),
                    uint(42),
                    arr(&[]),
                    bin(b"hi"),
                ]),
            ),
            malformed("forward", "invalid"),
        ),
        (
            "forward, dests array promises more than there is",
            framed(
                FORWARD,
                &[&forward_body(arr(&[]), arr(&[]))[..]].concat()[..20],
            ),
            malformed("forward", "failed to fill whole buffer"),
        ),
        (
            "hello + garbage that is not msgpack",
            framed(
                HELLO,
                &[arr(&[uint(1), ok_name(), nil()]), vec![0xc1, 0xc1]].concat(),
            ),
            Expect::Exact(WireError::TrailingBytes {
                kind: "hello",
                extra: 2,
            }),
        ),
    ]
}

#[test]
fn malformed_bodies() {
    for (what, bytes, expect) in body_cases() {
        // The header is fine: check reports one whole frame.
        assert_eq!(
            check(&bytes, &Limits::default()),
            Ok(Some(bytes.len())),
            "{what}"
        );
        let from_body = decode_body(&bytes[4..]);
        let mut buf = BytesMut::from(&bytes[..]);
        let got = decode(&mut buf, &Limits::default());
        assert_eq!(
            got,
            from_body.clone().map(Some),
            "{what}: decode != decode_body"
        );
        match expect {
            Expect::Exact(e) => assert_eq!(from_body, Err(e), "{what}"),
            Expect::Malformed(kind, needle) => match from_body {
                Err(WireError::Malformed { kind: k, reason }) => {
                    assert_eq!(k, kind, "{what}");
                    assert!(
                        reason.contains(&needle),
                        "{what}: reason {reason:?} lacks {needle:?}"
                    );
                }
                other => panic!("{what}: expected Malformed({kind}), got {other:?}"),
            },
        }
        // A bad body is consumed whole, so the stream stays in sync.
        assert!(buf.is_empty(), "{what}: {} bytes left", buf.len());
    }
}

#[test]
fn after_a_bad_body_the_next_frame_still_decodes() {
    let limits = Limits::default();
    let good = Frame::Pong(Pong { nonce: 9 });
    let mut stream = framed(
        PUBLISH,
        &publish_body(s("a/b/c"), uint(7), uint(0), bin(b"")),
    );
    stream.extend(encode_to_vec(&good, &limits).unwrap());
    let mut buf = BytesMut::from(&stream[..]);
    assert!(matches!(
        decode(&mut buf, &limits),
        Err(WireError::Malformed {
            kind: "publish",
            ..
        })
    ));
    assert_eq!(decode(&mut buf, &limits), Ok(Some(good)));
    assert_eq!(decode(&mut buf, &limits), Ok(None));
}

#[test]
fn error_codes_and_labels_of_decode_errors() {
    let cases = [
        (
            WireError::FrameTooLarge {
                declared: 5,
                max: 4,
            },
            ErrorCode::TOO_LARGE,
            "too_large",
        ),
        (WireError::EmptyFrame, ErrorCode::MALFORMED, "empty"),
        (
            WireError::UnknownFrameKind(17),
            ErrorCode::UNKNOWN_FRAME,
            "unknown_frame",
        ),
        (
            WireError::Malformed {
                kind: "ping",
                reason: String::new(),
            },
            ErrorCode::MALFORMED,
            "malformed",
        ),
        (
            WireError::TrailingBytes {
                kind: "ping",
                extra: 1,
            },
            ErrorCode::MALFORMED,
            "trailing_bytes",
        ),
        (
            WireError::Encode(String::new()),
            ErrorCode::INTERNAL,
            "encode",
        ),
    ];
    for (err, code, label) in cases {
        assert_eq!(err.code(), code, "{err}");
        assert_eq!(err.reason_label(), label, "{err}");
    }
}

// ---------------------------------------------------------------- encoding

#[test]
fn encoding_over_the_limit_fails_and_leaves_the_output_unchanged() {
    let name = n("acme/eu/svc");
    let from = n("acme/eu/pub/1");
    let payload = vec![0xAB; 100];
    let publish = Frame::Publish(Publish {
        name: name.clone(),
        mode: Mode::Anycast,
        flags: 0,
        msg_id: 1,
        payload: payload.clone(),
    });
    let deliver = Frame::Deliver(Deliver {
        name: name.clone(),
        mode: Mode::Anycast,
        from: from.clone(),
        from_identity: Some("spiffe://acme/pub".into()),
        msg_id: 1,
        payload: payload.clone(),
    });
    let declared = |f: &Frame| (encode_to_vec(f, &Limits::default()).unwrap().len() - 4) as u64;
    let small = Limits { max_frame: 64 };
    let prefix = b"already queued bytes";

    let mut out = BytesMut::from(&prefix[..]);
    assert_eq!(
        encode(&publish, &small, &mut out),
        Err(WireError::FrameTooLarge {
            declared: declared(&publish),
            max: 64,
        })
    );
    assert_eq!(&out[..], &prefix[..]);

    let mut out = BytesMut::from(&prefix[..]);
    assert_eq!(
        encode_publish(&name, Mode::Anycast, 0, 1, &payload, &small, &mut out),
        Err(WireError::FrameTooLarge {
            declared: declared(&publish),
            max: 64,
        })
    );
    assert_eq!(&out[..], &prefix[..]);

    let mut out = BytesMut::from(&prefix[..]);
    assert_eq!(
        encode_deliver(
            &name,
            Mode::Anycast,
            &from,
            Some("spiffe://acme/pub"),
            1,
            &payload,
            &small,
            &mut out,
        ),
        Err(WireError::FrameTooLarge {
            declared: declared(&deliver),
            max: 64,
        })
    );
    assert_eq!(&out[..], &prefix[..]);

    let mut out = BytesMut::new();
    assert!(matches!(
        encode(&deliver, &small, &mut out),
        Err(WireError::FrameTooLarge { max: 64, .. })
    ));
    assert!(out.is_empty());

    // The default limit: a payload of exactly DEFAULT_MAX_FRAME bytes cannot fit.
    let huge = Frame::Publish(Publish {
        name,
        mode: Mode::Unicast,
        flags: 0,
        msg_id: 2,
        payload: vec![0; DEFAULT_MAX_FRAME as usize],
    });
    let mut out = BytesMut::from(&prefix[..]);
    match encode(&huge, &Limits::default(), &mut out) {
        Err(WireError::FrameTooLarge { declared, max }) => {
            assert_eq!(max, DEFAULT_MAX_FRAME);
            assert!(
                declared > DEFAULT_MAX_FRAME as u64 + 5,
                "declared {declared}"
            );
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    assert_eq!(&out[..], &prefix[..]);
}

// ------------------------------------------------------- random garbage

fn seed_frames() -> Vec<Vec<u8>> {
    let limits = Limits::default();
    let frames = vec![
        Frame::Hello(Hello {
            version: 1,
            name: n("acme/eu/svc/1"),
            token: Some("t".into()),
        }),
        Frame::Accept(Accept {
            node_id: "node-1".into(),
            identity: Some("spiffe://acme/x".into()),
            max_frame: 1 << 20,
        }),
        Frame::Reject(Reject {
            code: ErrorCode::UNAUTHORIZED,
            reason: "no".into(),
        }),
        Frame::Subscribe(Subscribe {
            id: 1,
            name: n("a/b/c"),
        }),
        Frame::Unsubscribe(Unsubscribe {
            id: 300,
            name: n("a/b/c/d"),
        }),
        Frame::SubAck(SubAck { id: 70_000 }),
        Frame::SubError(SubError {
            id: 2,
            code: ErrorCode::BAD_NAME,
            reason: "bad".into(),
        }),
        Frame::Publish(Publish {
            name: n("a/b/c"),
            mode: Mode::Multicast,
            flags: 1,
            msg_id: u64::MAX,
            payload: vec![1, 2, 3, 4],
        }),
        Frame::Deliver(Deliver {
            name: n("a/b/c"),
            mode: Mode::Unicast,
            from: n("x/y/z/1"),
            from_identity: None,
            msg_id: 5,
            payload: vec![9; 20],
        }),
        Frame::Ping(Ping { nonce: 1 }),
        Frame::Pong(Pong { nonce: 1 << 40 }),
        Frame::PeerHello(PeerHello {
            version: 1,
            node_id: "n1".into(),
        }),
        Frame::PeerAccept(PeerAccept {
            node_id: "n2".into(),
        }),
        Frame::Interest(Interest {
            updates: vec![OriginUpdate {
                origin: "n1".into(),
                epoch: 1,
                links: None,
                names: vec![NameState {
                    name: n("a/b/c/1"),
                    seq: 9,
                    present: false,
                }],
            }],
            digest: vec![],
            digest_last: false,
        }),
        Frame::Forward(Forward {
            name: n("a/b/c"),
            mode: Mode::Anycast,
            from: n("x/y/z/1"),
            from_identity: Some("spiffe://acme/x".into()),
            msg_id: 8,
            path: vec!["n1".into(), "n2".into()],
            dests: vec!["n3".into()],
            payload: vec![7; 30],
        }),
        Frame::Error(ErrorFrame {
            code: ErrorCode::NO_ROUTE,
            msg_id: Some(3),
            name: Some(n("a/b/c")),
            reason: "r".into(),
        }),
    ];
    frames
        .iter()
        .map(|f| encode_to_vec(f, &limits).unwrap())
        .collect()
}

fn random_input(rng: &mut StdRng, seeds: &[Vec<u8>]) -> Vec<u8> {
    match rng.random_range(0..4) {
        // Pure noise.
        0 => {
            let mut v = vec![0; rng.random_range(0..64)];
            rng.fill_bytes(&mut v);
            v
        }
        // A plausible header in front of noise.
        1 => {
            let mut body = vec![0; rng.random_range(0..48)];
            rng.fill_bytes(&mut body);
            framed(rng.random_range(0..=14), &body)
        }
        // A valid frame (or two) with a few bytes changed, cut or added.
        _ => {
            let mut v = seeds[rng.random_range(0..seeds.len())].clone();
            if rng.random_bool(0.3) {
                v.extend_from_slice(&seeds[rng.random_range(0..seeds.len())]);
            }
            for _ in 0..rng.random_range(1..=4) {
                let i = rng.random_range(0..v.len());
                match rng.random_range(0..4) {
                    0 => v[i] = rng.random(),
                    1 => v[i] ^= 1 << rng.random_range(0..8),
                    2 => v.truncate(i.max(1)),
                    _ => v.insert(i, rng.random()),
                }
            }
            // Often keep the length header consistent so the body parser is reached.
            if rng.random_bool(0.6) && v.len() > 4 {
                let len = (v.len() - 4) as u32;
                v[..4].copy_from_slice(&len.to_be_bytes());
            }
            v
        }
    }
}

#[test]
fn random_bytes_never_panic_and_decoded_frames_re_encode() {
    let mut rng = StdRng::seed_from_u64(0x51A4_5EED);
    let seeds = seed_frames();
    let limits = Limits { max_frame: 256 };
    let (mut decoded, mut errors, mut incomplete) = (0usize, 0usize, 0usize);

    for round in 0..10_000 {
        let input = random_input(&mut rng, &seeds);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let mut frames = Vec::new();
            let mut errs = 0;
            let mut buf = BytesMut::from(&input[..]);
            loop {
                let before = buf.len();
                match decode(&mut buf, &limits) {
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) => {
                        assert_eq!(buf.len(), before, "incomplete consumed bytes");
                        assert_eq!(check(&buf, &limits), Ok(None));
                        return (frames, errs, true);
                    }
                    Err(_) => {
                        errs += 1;
                        // Header errors leave the buffer alone; stop there.
                        if buf.len() == before {
                            return (frames, errs, false);
                        }
                    }
                }
            }
        }));
        let (frames, errs, was_incomplete) = match outcome {
            Ok(r) => r,
            Err(_) => panic!("round {round}: decode panicked on {input:02x?}"),
        };
        errors += errs;
        incomplete += usize::from(was_incomplete);
        for f in frames {
            decoded += 1;
            let bytes = encode_to_vec(&f, &Limits::default())
                .unwrap_or_else(|e| panic!("round {round}: {f:?} does not re-encode: {e}"));
            let mut buf = BytesMut::from(&bytes[..]);
            assert_eq!(
                decode(&mut buf, &Limits::default()),
                Ok(Some(f)),
                "round {round}: input {input:02x?}"
            );
            assert!(buf.is_empty());
        }
    }
    // All three outcomes must actually have been exercised.
    assert!(decoded >= 300, "only {decoded} frames decoded");
    assert!(errors >= 1_000, "only {errors} errors");
    assert!(incomplete >= 500, "only {incomplete} incomplete inputs");
    eprintln!("random inputs: {decoded} frames decoded, {errors} errors, {incomplete} incomplete");
}
