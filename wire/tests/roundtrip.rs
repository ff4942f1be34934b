//! Property tests: names and every frame variant survive a trip through the
//! codec, alone, concatenated, and fed to the decoder in arbitrary pieces.

use bytes::BytesMut;
use proptest::prelude::*;
use slim_wire::codec::{encode_deliver, encode_publish, encode_to_vec};
use slim_wire::{
    Accept, Deliver, ErrorCode, ErrorFrame, Forward, Frame, FrameKind, HEADER_LEN, Hello, Interest,
    Limits, LinkSet, MAX_COMPONENT_LEN, Mode, Name, NameState, OriginDigest, OriginUpdate,
    PeerAccept, PeerHello, Ping, Pong, Publish, ReadProgress, Reject, SubAck, SubError, Subscribe,
    Unsubscribe, WireError, check, decode, decode_body, encode,
};

// ---------------------------------------------------------------- strategies

/// A char allowed inside a name component: anything but '/' and control chars.
fn component_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => proptest::char::ranges(vec!['a'..='z', 'A'..='Z', '0'..='9'].into()),
        1 => proptest::sample::select(vec!['-', '_', '.', ':', '@', ' ', '~', '+']),
        // Multi-byte: Latin-1 supplement, Greek, CJK, emoji, line separator (not Cc).
        2 => proptest::char::ranges(
            vec!['\u{a1}'..='\u{ff}', '\u{391}'..='\u{3c9}', '\u{4e00}'..='\u{4e50}',
                 '\u{1f600}'..='\u{1f64f}', '\u{2028}'..='\u{2029}'].into()
        ),
        1 => any::<char>(),
    ]
    // '*' and '>' are refused until wildcard subscriptions exist.
    .prop_filter("no '/', wildcard or control characters", |c| {
        !matches!(c, '/' | '*' | '>') && !c.is_control()
    })
}

/// A valid component of 1..=128 bytes (sometimes padded to exactly 128).
fn component() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(component_char(), 1..=MAX_COMPONENT_LEN),
        any::<bool>(),
    )
        .prop_map(|(chars, pad_to_max)| {
            let mut s = String::new();
            for c in chars {
                if s.len() + c.len_utf8() > MAX_COMPONENT_LEN {
                    break;
                }
                s.push(c);
            }
            if pad_to_max {
                while s.len() < MAX_COMPONENT_LEN {
                    s.push('x');
                }
            }
            s
        })
}

type NameParts = (String, String, String, Option<String>);

fn name_parts() -> impl Strategy<Value = NameParts> {
    (
        component(),
        component(),
        component(),
        proptest::option::of(component()),
    )
}

fn name() -> impl Strategy<Value = Name> {
    name_parts().prop_map(|(o, n, s, i)| Name::new(&o, &n, &s, i.as_deref()).unwrap())
}

/// Integers biased towards MessagePack encoding-width boundaries.
fn int_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        proptest::sample::select(vec![
            0,
            1,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            u32::MAX as u64,
            u32::MAX as u64 + 1,
            u64::MAX,
        ]),
        0..1_000u64,
        any::<u64>(),
    ]
}

fn int_u16() -> impl Strategy<Value = u16> {
    prop_oneof![
        proptest::sample::select(vec![0u16, 127, 128, 255, 256, u16::MAX]),
        any::<u16>(),
    ]
}

fn int_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        proptest::sample::select(vec![0u32, 127, 128, 65_535, 65_536, u32::MAX]),
        any::<u32>(),
    ]
}

fn mode() -> impl Strategy<Value = Mode> {
    proptest::sample::select(vec![Mode::Anycast, Mode::Multicast, Mode::Unicast])
}

fn code() -> impl Strategy<Value = ErrorCode> {
    int_u16().prop_map(ErrorCode)
}

/// Free text (reasons, identities, tokens): any unicode, control chars included.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        ".{0,40}",
        any::<String>(),
        // Long enough for str8 / str16 headers.
        (any::<char>(), 32usize..400).prop_map(|(c, n)| std::iter::repeat_n(c, n).collect()),
    ]
}

fn node_ids() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(text(), 0..6)
}

fn payload(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..=max)
}

fn frame_with_payload(max_payload: usize) -> BoxedStrategy<Frame> {
    prop_oneof![
        (int_u16(), name(), proptest::option::of(text())).prop_map(|(version, name, token)| {
            Frame::Hello(Hello {
                version,
                name,
                token,
            })
        }),
        (text(), proptest::option::of(text()), int_u32()).prop_map(
            |(node_id, identity, max_frame)| Frame::Accept(Accept {
                node_id,
                identity,
                max_frame,
            })
        ),
        (code(), text()).prop_map(|(code, reason)| Frame::Reject(Reject { code, reason })),
        (int_u64(), name()).prop_map(|(id, name)| Frame::Subscribe(Subscribe { id, name })),
        (int_u64(), name()).prop_map(|(id, name)| Frame::Unsubscribe(Unsubscribe { id, name })),
        int_u64().prop_map(|id| Frame::SubAck(SubAck { id })),
        (int_u64(), code(), text()).prop_map(|(id, code, reason)| Frame::SubError(SubError {
            id,
            code,
            reason
        })),
        (name(), mode(), any::<u8>(), int_u64(), payload(max_payload)).prop_map(
            |(name, mode, flags, msg_id, payload)| Frame::Publish(Publish {
                name,
                mode,
                flags,
                msg_id,
                payload,
            })
        ),
        (
            name(),
            mode(),
            name(),
            proptest::option::of(text()),
            int_u64(),
            payload(max_payload)
        )
            .prop_map(|(name, mode, from, from_identity, msg_id, payload)| {
                Frame::Deliver(Deliver {
                    name,
                    mode,
                    from,
                    from_identity,
                    msg_id,
                    payload,
                })
            }),
        int_u64().prop_map(|nonce| Frame::Ping(Ping { nonce })),
        int_u64().prop_map(|nonce| Frame::Pong(Pong { nonce })),
        int_u64().prop_map(|read| Frame::ReadProgress(ReadProgress { read })),
        (
            code(),
            proptest::option::of(int_u64()),
            proptest::option::of(name()),
            text()
        )
            .prop_map(|(code, msg_id, name, reason)| Frame::Error(ErrorFrame {
                code,
                msg_id,
                name,
                reason,
            })),
        (int_u16(), text())
            .prop_map(|(version, node_id)| Frame::PeerHello(PeerHello { version, node_id })),
        text().prop_map(|node_id| Frame::PeerAccept(PeerAccept { node_id })),
        (
            proptest::collection::vec(
                (
                    text(),
                    int_u64(),
                    proptest::option::of((int_u64(), node_ids())),
                    proptest::collection::vec((name(), int_u64(), any::<bool>()), 0..4),
                ),
                0..3,
            ),
            proptest::collection::vec(
                (text(), int_u64(), int_u64(), any::<u32>(), int_u64()),
                0..3
            ),
            any::<bool>(),
        )
            .prop_map(|(updates, digest, digest_last)| Frame::Interest(Interest {
                updates: updates
                    .into_iter()
                    .map(|(origin, epoch, links, names)| OriginUpdate {
                        origin,
                        epoch,
                        links: links.map(|(seq, peers)| LinkSet { seq, peers }),
                        names: names
                            .into_iter()
                            .map(|(name, seq, present)| NameState { name, seq, present })
                            .collect(),
                    })
                    .collect(),
                digest: digest
                    .into_iter()
                    .map(|(origin, epoch, links_seq, names, hash)| OriginDigest {
                        origin,
                        epoch,
                        links_seq,
                        names,
                        hash,
                    })
                    .collect(),
                digest_last,
            })),
        (
            (name(), mode(), name(), proptest::option::of(text())),
            (int_u64(), node_ids(), node_ids(), payload(max_payload))
        )
            .prop_map(
                |((name, mode, from, from_identity), (msg_id, path, dests, payload))| {
                    Frame::Forward(Forward {
                        name,
                        mode,
                        from,
                        from_identity,
                        msg_id,
                        path,
                        dests,
                        payload,
                    })
                }
            ),
    ]
    .boxed()
}

/// Payloads up to 70 000 bytes would make shrinking slow; 1 000 already covers
/// bin8 and bin16. The bin32 case has its own test below.
fn frame() -> BoxedStrategy<Frame> {
    frame_with_payload(1_000)
}

fn small_frame() -> BoxedStrategy<Frame> {
    frame_with_payload(48)
}

// ------------------------------------------------------------------- helpers

fn encode_all(frames: &[Frame]) -> BytesMut {
    let mut buf = BytesMut::new();
    for f in frames {
        encode(f, &Limits::default(), &mut buf).unwrap();
    }
    buf
}

/// Decodes everything currently decodable; asserts that "incomplete" leaves
/// the buffer untouched.
fn drain(buf: &mut BytesMut, out: &mut Vec<Frame>) -> Result<(), TestCaseError> {
    loop {
        let before = buf.clone();
        match decode(buf, &Limits::default()) {
            Ok(Some(f)) => out.push(f),
            Ok(None) => {
                prop_assert_eq!(&*buf, &before, "Ok(None) must not consume bytes");
                return Ok(());
            }
            Err(e) => return Err(TestCaseError::fail(format!("decode error: {e}"))),
        }
    }
}

/// Feeds `stream` to a fresh decoder in the given pieces.
fn decode_in_pieces<'a>(
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(Vec<Frame>, BytesMut), TestCaseError> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for p in pieces {
        buf.extend_from_slice(p);
        drain(&mut buf, &mut out)?;
    }
    Ok((out, buf))
}

// --------------------------------------------------------------------- names

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn name_round_trips_through_parse_and_display((org, ns, svc, inst) in name_parts()) {
        let name = Name::new(&org, &ns, &svc, inst.as_deref()).unwrap();
        let expected = match &inst {
            Some(i) => format!("{org}/{ns}/{svc}/{i}"),
            None => format!("{org}/{ns}/{svc}"),
        };
        let shown = name.to_string();
        prop_assert_eq!(&shown, &expected);
        prop_assert_eq!(name.as_str(), expected.as_str());

        let parsed = Name::parse(&shown).unwrap();
        prop_assert_eq!(&parsed, &name);
        prop_assert_eq!(shown.parse::<Name>().unwrap(), name.clone());

        // The parsed name exposes the same parts as the constructed one.
        prop_assert_eq!(parsed.org(), org.as_str());
        prop_assert_eq!(parsed.namespace(), ns.as_str());
        prop_assert_eq!(parsed.service(), svc.as_str());
        prop_assert_eq!(parsed.instance(), inst.as_deref());
        prop_assert_eq!(parsed.has_instance(), inst.is_some());
        prop_assert_eq!(parsed.service_str(), format!("{org}/{ns}/{svc}"));

        // Instance manipulation keeps the service part intact.
        let bare = parsed.without_instance();
        prop_assert_eq!(bare.instance(), None);
        prop_assert_eq!(bare.to_string(), format!("{org}/{ns}/{svc}"));
        prop_assert_eq!(Name::parse(&bare.to_string()).unwrap(), bare.clone());
        if let Some(i) = &inst {
            prop_assert_eq!(bare.with_instance(i).unwrap(), name);
        }
    }

    #[test]
    fn every_frame_round_trips(frame in frame()) {
        let limits = Limits::default();
        let mut buf = BytesMut::new();
        encode(&frame, &limits, &mut buf).unwrap();
        let bytes = buf.clone().freeze();

        // Header: len counts kind + body; kind byte matches the variant.
        prop_assert!(bytes.len() > HEADER_LEN);
        let declared = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        prop_assert_eq!(declared, bytes.len() - 4);
        prop_assert_eq!(bytes[4], frame.kind() as u8);
        prop_assert_eq!(FrameKind::from_u8(bytes[4]), Some(frame.kind()));

        // check: exactly one whole frame; any strict prefix is incomplete.
        prop_assert_eq!(check(&bytes, &limits), Ok(Some(bytes.len())));
        prop_assert_eq!(check(&bytes[..bytes.len() - 1], &limits), Ok(None));
        prop_assert_eq!(check(&bytes[..4], &limits), Ok(None));

        prop_assert_eq!(decode_body(&bytes[4..]).unwrap(), frame.clone());
        prop_assert_eq!(encode_to_vec(&frame, &limits).unwrap(), bytes.to_vec());

        let decoded = decode(&mut buf, &limits).unwrap();
        prop_assert_eq!(decoded, Some(frame));
        prop_assert!(buf.is_empty(), "{} bytes left after decode", buf.len());
        prop_assert_eq!(decode(&mut buf, &limits), Ok(None));
    }

    #[test]
    fn encode_appends_and_keeps_existing_bytes(prefix in payload(64), frame in frame()) {
        let limits = Limits::default();
        let mut buf = BytesMut::from(&prefix[..]);
        encode(&frame, &limits, &mut buf).unwrap();
        prop_assert_eq!(&buf[..prefix.len()], &prefix[..]);
        prop_assert_eq!(&buf[prefix.len()..], &encode_to_vec(&frame, &limits).unwrap()[..]);
    }

    #[test]
    fn encode_fails_cleanly_when_limit_is_one_byte_short(frame in frame()) {
        let exact = encode_to_vec(&frame, &Limits::default()).unwrap();
        let len = (exact.len() - 4) as u32;

        let mut out = BytesMut::from(&b"keep"[..]);
        encode(&frame, &Limits { max_frame: len }, &mut out).unwrap();
        prop_assert_eq!(&out[4..], &exact[..]);

        let mut out = BytesMut::from(&b"keep"[..]);
        let err = encode(&frame, &Limits { max_frame: len - 1 }, &mut out).unwrap_err();
        prop_assert_eq!(err, WireError::FrameTooLarge { declared: len as u64, max: len - 1 });
        prop_assert_eq!(&out[..], &b"keep"[..]);
    }

    #[test]
    fn concatenated_frames_decode_in_order(frames in proptest::collection::vec(frame(), 1..12)) {
        let limits = Limits::default();
        let mut buf = encode_all(&frames);
        let first_len = encode_to_vec(&frames[0], &limits).unwrap().len();
        prop_assert_eq!(check(&buf, &limits), Ok(Some(first_len)));

        let mut out = Vec::new();
        while let Some(f) = decode(&mut buf, &limits).unwrap() {
            out.push(f);
        }
        prop_assert_eq!(out, frames);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn stream_fed_in_random_pieces_gives_same_frames(
        frames in proptest::collection::vec(frame(), 1..8),
        cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..24),
    ) {
        let stream = encode_all(&frames);
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        cuts.push(0);
        cuts.push(stream.len());
        cuts.sort_unstable();
        cuts.dedup();
        let pieces = cuts.windows(2).map(|w| &stream[w[0]..w[1]]);
        let (out, rest) = decode_in_pieces(pieces)?;
        prop_assert_eq!(out, frames);
        prop_assert!(rest.is_empty());
    }
}

proptest! {
    // Quadratic in the stream length: fewer cases, small payloads.
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn stream_split_at_every_boundary_gives_same_frames(
        frames in proptest::collection::vec(small_frame(), 1..5),
    ) {
        let stream = encode_all(&frames);
        for at in 0..=stream.len() {
            let (out, rest) = decode_in_pieces([&stream[..at], &stream[at..]])?;
            prop_assert_eq!(&out, &frames, "split at {}", at);
            prop_assert!(rest.is_empty());
        }
    }

    #[test]
    fn stream_fed_one_byte_at_a_time_gives_same_frames(
        frames in proptest::collection::vec(small_frame(), 1..5),
    ) {
        let stream = encode_all(&frames);
        let (out, rest) = decode_in_pieces(stream.chunks(1))?;
        prop_assert_eq!(out, frames);
        prop_assert!(rest.is_empty());
    }
}

// ------------------------------------------------ borrowed encoders = encode

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn encode_publish_matches_encode(
        name in name(),
        mode in mode(),
        flags in any::<u8>(),
        msg_id in int_u64(),
        payload in payload(1_000),
        prefix in payload(8),
    ) {
        let limits = Limits::default();
        let mut borrowed = BytesMut::from(&prefix[..]);
        encode_publish(&name, mode, flags, msg_id, &payload, &limits, &mut borrowed).unwrap();

        let frame = Frame::Publish(Publish { name, mode, flags, msg_id, payload });
        let mut owned = BytesMut::from(&prefix[..]);
        encode(&frame, &limits, &mut owned).unwrap();
        prop_assert_eq!(&borrowed, &owned);

        // Same limit behaviour, too.
        let tight = Limits { max_frame: (owned.len() - prefix.len() - 5) as u32 };
        let mut a = BytesMut::from(&prefix[..]);
        let mut b = BytesMut::from(&prefix[..]);
        let Frame::Publish(p) = &frame else { unreachable!() };
        let ea = encode_publish(&p.name, p.mode, p.flags, p.msg_id, &p.payload, &tight, &mut a);
        let eb = encode(&frame, &tight, &mut b);
        prop_assert!(matches!(ea, Err(WireError::FrameTooLarge { .. })), "{:?}", ea);
        prop_assert_eq!(ea, eb);
        prop_assert_eq!(&a[..], &prefix[..]);
        prop_assert_eq!(&b[..], &prefix[..]);
    }

    #[test]
    fn encode_deliver_matches_encode(
        name in name(),
        mode in mode(),
        from in name(),
        from_identity in proptest::option::of(text()),
        msg_id in int_u64(),
        payload in payload(1_000),
        prefix in payload(8),
    ) {
        let limits = Limits::default();
        let mut borrowed = BytesMut::from(&prefix[..]);
        encode_deliver(
            &name, mode, &from, from_identity.as_deref(), msg_id, &payload, &limits, &mut borrowed,
        )
        .unwrap();

        let frame = Frame::Deliver(Deliver { name, mode, from, from_identity, msg_id, payload });
        let mut owned = BytesMut::from(&prefix[..]);
        encode(&frame, &limits, &mut owned).unwrap();
        prop_assert_eq!(&borrowed, &owned);

        let tight = Limits { max_frame: (owned.len() - prefix.len() - 5) as u32 };
        let mut a = BytesMut::from(&prefix[..]);
        let mut b = BytesMut::from(&prefix[..]);
        let Frame::Deliver(d) = &frame else { unreachable!() };
        let ea = encode_deliver(
            &d.name, d.mode, &d.from, d.from_identity.as_deref(), d.msg_id, &d.payload, &tight,
            &mut a,
        );
        let eb = encode(&frame, &tight, &mut b);
        prop_assert!(matches!(ea, Err(WireError::FrameTooLarge { .. })), "{:?}", ea);
        prop_assert_eq!(ea, eb);
        prop_assert_eq!(&a[..], &prefix[..]);
        prop_assert_eq!(&b[..], &prefix[..]);
    }

    /// The forwarding hot path: the borrowed encoder (path extended by one
    /// hop) equals the owned encoder, and the zero-copy view reads back
    /// exactly the owned frame's fields.
    #[test]
    fn encode_forward_raw_matches_encode_and_the_view(
        name in name(),
        mode in mode(),
        from in name(),
        from_identity in proptest::option::of(text()),
        msg_id in int_u64(),
        path in node_ids(),
        hop in text(),
        dests in node_ids(),
        payload in payload(1_000),
    ) {
        let limits = Limits::default();
        let mut borrowed = BytesMut::new();
        slim_wire::codec::encode_forward_raw(
            name.as_str(), mode, from.as_str(), from_identity.as_deref(), msg_id,
            slim_wire::NodeIds { ids: path.iter().map(String::as_str), len: path.len(), then: Some(&hop) },
            slim_wire::NodeIds { ids: dests.iter().map(String::as_str), len: dests.len(), then: None },
            &payload, &limits, &mut borrowed,
        )
        .unwrap();
        let mut full_path = path.clone();
        full_path.push(hop.clone());
        let f = Forward {
            name, mode, from, from_identity, msg_id, path: full_path, dests, payload,
        };
        let mut owned = BytesMut::new();
        encode(&Frame::Forward(f.clone()), &limits, &mut owned).unwrap();
        prop_assert_eq!(&borrowed, &owned);
        let v = slim_wire::forward_view(&owned[5..]).unwrap().unwrap();
        prop_assert_eq!(v.name, f.name.as_str());
        prop_assert_eq!(v.from, f.from.as_str());
        prop_assert_eq!(v.from_identity, f.from_identity.as_deref());
        prop_assert_eq!((v.mode, v.msg_id), (f.mode, f.msg_id));
        prop_assert_eq!(v.path.iter().collect::<Vec<_>>(), f.path.iter().map(String::as_str).collect::<Vec<_>>());
        prop_assert_eq!(v.dests.iter().collect::<Vec<_>>(), f.dests.iter().map(String::as_str).collect::<Vec<_>>());
        prop_assert_eq!(v.payload, &f.payload[..]);
    }
}

// ----------------------------------------------------------- fixed examples

#[test]
fn bin32_payload_round_trips() {
    // > 65 535 bytes needs the bin32 encoding.
    let name = Name::parse("acme/eu/svc/1").unwrap();
    let payload: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let frame = Frame::Publish(Publish {
        name: name.clone(),
        mode: Mode::Multicast,
        flags: slim_wire::FLAG_NO_ROUTE_SILENT,
        msg_id: 9,
        payload: payload.clone(),
    });
    let limits = Limits::default();
    let mut buf = BytesMut::new();
    encode(&frame, &limits, &mut buf).unwrap();
    let mut via_borrowed = BytesMut::new();
    encode_publish(
        &name,
        Mode::Multicast,
        slim_wire::FLAG_NO_ROUTE_SILENT,
        9,
        &payload,
        &limits,
        &mut via_borrowed,
    )
    .unwrap();
    assert_eq!(buf, via_borrowed);
    assert_eq!(decode(&mut buf, &limits), Ok(Some(frame)));
    assert!(buf.is_empty());
}

#[test]
fn wire_layout_of_a_ping_is_as_documented() {
    // len = 1 (kind) + 1 (fixarray(1)) + 1 (positive fixint) = 3.
    let bytes = encode_to_vec(&Frame::Ping(Ping { nonce: 5 }), &Limits::default()).unwrap();
    assert_eq!(bytes, [0, 0, 0, 3, FrameKind::Ping as u8, 0x91, 0x05]);
}

#[test]
fn wire_layout_of_a_publish_is_as_documented() {
    let frame = Frame::Publish(Publish {
        name: Name::parse("a/b/c").unwrap(),
        mode: Mode::Unicast,
        flags: 1,
        msg_id: 300,
        payload: vec![0xAA, 0xBB],
    });
    let bytes = encode_to_vec(&frame, &Limits::default()).unwrap();
    let body: &[u8] = &[
        0x95, // fixarray(5)
        0xa5, b'a', b'/', b'b', b'/', b'c', // fixstr(5) name
        0x02, // mode
        0x01, // flags
        0xcd, 0x01, 0x2c, // uint16 300
        0xc4, 0x02, 0xAA, 0xBB, // bin8(2) payload
    ];
    assert_eq!(&bytes[..4], &(1 + body.len() as u32).to_be_bytes());
    assert_eq!(bytes[4], 8);
    assert_eq!(&bytes[5..], body);
}
