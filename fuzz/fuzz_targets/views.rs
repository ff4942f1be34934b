//! The zero-copy views used on the hot paths (`publish_view`, `deliver_view`,
//! `forward_view`)
//! must agree exactly with the full decoder on every input: same verdict,
//! same fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slim_wire::{Frame, FrameKind, decode_body, deliver_view, forward_view, publish_view};

fuzz_target!(|data: &[u8]| {
    for kind in [FrameKind::Publish, FrameKind::Deliver, FrameKind::Forward] {
        let mut framed = vec![kind as u8];
        framed.extend_from_slice(data);
        let full = decode_body(&framed);
        match kind {
            FrameKind::Publish => match (publish_view(data), full) {
                (Ok(Ok(v)), Ok(Frame::Publish(p))) => {
                    assert_eq!(v.name, p.name.as_str());
                    assert_eq!((v.mode, v.flags, v.msg_id), (p.mode, p.flags, p.msg_id));
                    assert_eq!(v.payload, &p.payload[..]);
                }
                (Ok(Err(f)), Ok(g)) => assert_eq!(f, g),
                (Err(a), Err(b)) => assert_eq!(a, b),
                (a, b) => panic!("view {a:?} vs decoder {b:?}"),
            },
            FrameKind::Forward => match (forward_view(data), full) {
                (Ok(Ok(v)), Ok(Frame::Forward(f))) => {
                    assert_eq!((v.name, v.from), (f.name.as_str(), f.from.as_str()));
                    assert_eq!(v.from_identity, f.from_identity.as_deref());
                    assert_eq!((v.mode, v.msg_id), (f.mode, f.msg_id));
                    assert!(v.path.iter().eq(f.path.iter().map(String::as_str)));
                    assert!(v.dests.iter().eq(f.dests.iter().map(String::as_str)));
                    assert_eq!(v.payload, &f.payload[..]);
                }
                (Ok(Err(f)), Ok(g)) => assert_eq!(f, g),
                (Err(a), Err(b)) => assert_eq!(a, b),
                (a, b) => panic!("view {a:?} vs decoder {b:?}"),
            },
            _ => match (deliver_view(data), full) {
                (Ok(Ok(v)), Ok(Frame::Deliver(d))) => {
                    assert_eq!((v.name, v.from), (d.name.as_str(), d.from.as_str()));
                    assert_eq!(v.from_identity, d.from_identity.as_deref());
                    assert_eq!((v.mode, v.msg_id), (d.mode, d.msg_id));
                    assert_eq!(v.payload, &d.payload[..]);
                }
                (Ok(Err(f)), Ok(g)) => assert_eq!(f, g),
                (Err(a), Err(b)) => assert_eq!(a, b),
                (a, b) => panic!("view {a:?} vs decoder {b:?}"),
            },
        }
    }
});
