//! Zero-copy views of the two per-message frames, for the hot paths: the
//! node reads `Publish` bodies and the SDK reads `Deliver` bodies without
//! allocating. Only the canonical encoding (what this crate's encoder writes)
//! is parsed here; anything else falls back to the full serde decoder, so a
//! view never accepts or rejects differently from [`crate::decode_body`].

use crate::codec::decode_body;
use crate::frame::{Frame, Mode};
use crate::mp;
use crate::{Name, WireError};

/// A `Publish` body borrowed from the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishView<'a> {
    /// A validated name string.
    pub name: &'a str,
    pub mode: Mode,
    pub flags: u8,
    pub msg_id: u64,
    pub payload: &'a [u8],
}

/// A `Deliver` body borrowed from the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliverView<'a> {
    pub name: &'a str,
    pub mode: Mode,
    pub from: &'a str,
    pub from_identity: Option<&'a str>,
    pub msg_id: u64,
    pub payload: &'a [u8],
}

/// A `Deliver` body's fields located but its strings not yet checked
/// (UTF-8, name syntax): for a reader that keeps the names it validated last
/// and checks only a string that differs from them, as consecutive
/// deliveries share their names. Check a string before using it as one:
/// [`checked_name`], [`checked_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawDeliverView<'a> {
    pub name: &'a [u8],
    pub mode: Mode,
    pub from: &'a [u8],
    pub from_identity: Option<&'a [u8]>,
    pub msg_id: u64,
    pub payload: &'a [u8],
}

/// A `Publish` body's fields located, its name not yet checked (like
/// [`RawDeliverView`]): a node's reader checks only a name that differs
/// from the last one it checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawPublishView<'a> {
    pub name: &'a [u8],
    pub mode: Mode,
    pub flags: u8,
    pub msg_id: u64,
    pub payload: &'a [u8],
}

impl<'a> DeliverView<'a> {
    /// The same fields as bytes.
    pub fn raw(&self) -> RawDeliverView<'a> {
        RawDeliverView {
            name: self.name.as_bytes(),
            mode: self.mode,
            from: self.from.as_bytes(),
            from_identity: self.from_identity.map(str::as_bytes),
            msg_id: self.msg_id,
            payload: self.payload,
        }
    }
}

/// A MessagePack array of node ids inside a [`ForwardView`], already
/// validated as strings; iterated without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeList<'a> {
    len: usize,
    raw: &'a [u8],
}

impl<'a> NodeList<'a> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> NodeIter<'a> {
        NodeIter {
            left: self.len,
            rd: self.raw,
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.iter().any(|x| x == id)
    }

    pub fn first(&self) -> Option<&'a str> {
        self.iter().next()
    }
}

/// Iterator over a [`NodeList`].
#[derive(Debug, Clone)]
pub struct NodeIter<'a> {
    left: usize,
    rd: &'a [u8],
}

impl<'a> Iterator for NodeIter<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Validated when the view was built.
        str_of(&mut self.rd)
    }
}

/// A `Forward` body borrowed from the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardView<'a> {
    pub name: &'a str,
    pub mode: Mode,
    pub from: &'a str,
    pub from_identity: Option<&'a str>,
    pub msg_id: u64,
    pub path: NodeList<'a>,
    pub dests: NodeList<'a>,
    pub payload: &'a [u8],
}

impl PublishView<'_> {
    /// Whether the (already validated) name carries an instance id.
    pub fn has_instance(&self) -> bool {
        self.name.bytes().filter(|&b| b == b'/').count() == 3
    }
}

fn mode(b: u8) -> Option<Mode> {
    match b {
        0 => Some(Mode::Anycast),
        1 => Some(Mode::Multicast),
        2 => Some(Mode::Unicast),
        _ => None,
    }
}

/// A string, if it is valid UTF-8 (on `None`, `rd` may have moved: the
/// callers give up on the whole body).
fn str_of<'a>(rd: &mut &'a [u8]) -> Option<&'a str> {
    std::str::from_utf8(raw_str(rd)?).ok()
}

/// A string's bytes, unchecked.
fn raw_str<'a>(rd: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = mp::str_len(rd)?;
    mp::take(rd, len)
}

/// `b` as a name string, if it is valid UTF-8 and a valid name.
pub fn checked_name(b: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(b).ok()?;
    Name::validate(s).ok()?;
    Some(s)
}

/// `b` as a string, if it is valid UTF-8.
pub fn checked_str(b: &[u8]) -> Option<&str> {
    std::str::from_utf8(b).ok()
}

fn bin<'a>(rd: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = mp::bin_len(rd)?;
    mp::take(rd, len)
}

fn fast_publish(body: &[u8]) -> Option<PublishView<'_>> {
    let r = raw_publish_view(body)?;
    Some(PublishView {
        name: checked_name(r.name)?,
        mode: r.mode,
        flags: r.flags,
        msg_id: r.msg_id,
        payload: r.payload,
    })
}

/// The fields of a `Publish` body in the canonical encoding, its name
/// unchecked ([`RawPublishView`]); `None` for anything else (use
/// [`publish_view`], which also says what is wrong).
pub fn raw_publish_view(body: &[u8]) -> Option<RawPublishView<'_>> {
    let mut rd = body;
    if mp::array_len(&mut rd)? != 5 {
        return None;
    }
    let name = raw_str(&mut rd)?;
    let mode = mode(u8::try_from(mp::uint(&mut rd)?).ok()?)?;
    let flags = u8::try_from(mp::uint(&mut rd)?).ok()?;
    let msg_id = mp::uint(&mut rd)?;
    let payload = bin(&mut rd)?;
    rd.is_empty().then_some(RawPublishView {
        name,
        mode,
        flags,
        msg_id,
        payload,
    })
}

fn fast_deliver(body: &[u8]) -> Option<DeliverView<'_>> {
    let r = raw_deliver_view(body)?;
    Some(DeliverView {
        name: checked_name(r.name)?,
        mode: r.mode,
        from: checked_name(r.from)?,
        from_identity: checked_identity(r.from_identity)?,
        msg_id: r.msg_id,
        payload: r.payload,
    })
}

/// The fields of a `Deliver` body in the canonical encoding, its strings
/// unchecked ([`RawDeliverView`]); `None` for anything else (use
/// [`deliver_view`], which also says what is wrong).
pub fn raw_deliver_view(body: &[u8]) -> Option<RawDeliverView<'_>> {
    let mut rd = body;
    let Head {
        name,
        mode,
        from,
        from_identity,
        msg_id,
    } = raw_head(&mut rd, 6)?;
    let payload = bin(&mut rd)?;
    rd.is_empty().then_some(RawDeliverView {
        name,
        mode,
        from,
        from_identity,
        msg_id,
        payload,
    })
}

/// The fields `Deliver` and `Forward` bodies begin with, unchecked: the
/// array header (which must announce `fields`), name, mode, sender, its
/// identity (nil or a string) and message id.
struct Head<'a> {
    name: &'a [u8],
    mode: Mode,
    from: &'a [u8],
    from_identity: Option<&'a [u8]>,
    msg_id: u64,
}

fn raw_head<'a>(rd: &mut &'a [u8], fields: usize) -> Option<Head<'a>> {
    if mp::array_len(rd)? != fields {
        return None;
    }
    let name = raw_str(rd)?;
    let mode = mode(u8::try_from(mp::uint(rd)?).ok()?)?;
    let from = raw_str(rd)?;
    let from_identity = if rd.first() == Some(&mp::NIL) {
        *rd = &rd[1..];
        None
    } else {
        Some(raw_str(rd)?)
    };
    Some(Head {
        name,
        mode,
        from,
        from_identity,
        msg_id: mp::uint(rd)?,
    })
}

/// `b`, if present, as a string if it is valid UTF-8 (`None` if it is not).
fn checked_identity(b: Option<&[u8]>) -> Option<Option<&str>> {
    match b {
        None => Some(None),
        Some(b) => checked_str(b).map(Some),
    }
}

/// A `Forward` body's fields located, its strings unchecked (private: the
/// two ways to check them are [`fast_forward`] and [`ForwardMemo::view`]).
struct RawForward<'a> {
    head: Head<'a>,
    /// Node-id arrays: element count and bytes.
    path: (usize, &'a [u8]),
    dests: (usize, &'a [u8]),
    payload: &'a [u8],
}

fn raw_forward(body: &[u8]) -> Option<RawForward<'_>> {
    let mut rd = body;
    let head = raw_head(&mut rd, 8)?;
    let path = raw_node_list(&mut rd)?;
    let dests = raw_node_list(&mut rd)?;
    let payload = bin(&mut rd)?;
    rd.is_empty().then_some(RawForward {
        head,
        path,
        dests,
        payload,
    })
}

/// Checks every id of a node-id array.
fn checked_list((len, raw): (usize, &[u8])) -> Option<NodeList<'_>> {
    let mut rd = raw;
    for _ in 0..len {
        str_of(&mut rd)?;
    }
    Some(NodeList { len, raw })
}

fn fast_forward(body: &[u8]) -> Option<ForwardView<'_>> {
    let r = raw_forward(body)?;
    let h = r.head;
    Some(ForwardView {
        name: checked_name(h.name)?,
        mode: h.mode,
        from: checked_name(h.from)?,
        from_identity: checked_identity(h.from_identity)?,
        msg_id: h.msg_id,
        path: checked_list(r.path)?,
        dests: checked_list(r.dests)?,
        payload: r.payload,
    })
}

/// A link reader's memo of the strings of the last `Forward` it checked:
/// consecutive forwards of one stream share their name, sender, identity,
/// path and destinations, so only a string that differs from the last
/// one's is checked (UTF-8, name syntax) and kept. Holds no buffer until
/// the first forward.
#[derive(Debug, Default)]
pub struct ForwardMemo {
    /// Whether the fields below hold a checked forward's strings.
    checked: bool,
    name: String,
    from: String,
    from_identity: Option<String>,
    /// The path's and the destinations' MessagePack arrays (their element
    /// count and bytes), every id in them checked.
    path: (usize, Vec<u8>),
    dests: (usize, Vec<u8>),
}

impl ForwardMemo {
    /// The `Forward` in `body` (canonical encoding), its strings borrowed
    /// from this memo; `None` if it is not canonical or a string that
    /// changed fails its check (then [`forward_view`] says what is wrong).
    pub fn view<'a>(&'a mut self, body: &'a [u8]) -> Option<ForwardView<'a>> {
        let RawForward {
            head:
                Head {
                    name,
                    mode,
                    from,
                    from_identity,
                    msg_id,
                },
            path,
            dests,
            payload,
        } = raw_forward(body)?;
        // On a failed check `checked` stays false, so nothing half-updated
        // is ever compared against.
        let was = std::mem::replace(&mut self.checked, false);
        keep(&mut self.name, name, was, checked_name)?;
        keep(&mut self.from, from, was, checked_name)?;
        match from_identity {
            None => self.from_identity = None,
            Some(b) => {
                let id = self.from_identity.get_or_insert_with(String::new);
                keep(id, b, was, checked_str)?;
            }
        }
        keep_list(&mut self.path, path, was)?;
        keep_list(&mut self.dests, dests, was)?;
        self.checked = true;
        Some(ForwardView {
            name: &self.name,
            mode,
            from: &self.from,
            from_identity: self.from_identity.as_deref(),
            msg_id,
            path: NodeList {
                len: self.path.0,
                raw: &self.path.1,
            },
            dests: NodeList {
                len: self.dests.0,
                raw: &self.dests.1,
            },
            payload,
        })
    }
}

/// Makes `slot` hold `b`: as is if `was` (the slot holds a checked string)
/// and the bytes are the same, else once `check` accepts them.
fn keep(slot: &mut String, b: &[u8], was: bool, check: fn(&[u8]) -> Option<&str>) -> Option<()> {
    if !(was && slot.as_bytes() == b) {
        let s = check(b)?;
        slot.clear();
        slot.push_str(s);
    }
    Some(())
}

/// [`keep`] for a node-id array: every id checked when it changed.
fn keep_list(slot: &mut (usize, Vec<u8>), (len, raw): (usize, &[u8]), was: bool) -> Option<()> {
    if !(was && slot.0 == len && slot.1 == raw) {
        checked_list((len, raw))?;
        slot.0 = len;
        slot.1.clear();
        slot.1.extend_from_slice(raw);
    }
    Some(())
}

/// A node-id array's element count and bytes, its strings unchecked.
fn raw_node_list<'a>(rd: &mut &'a [u8]) -> Option<(usize, &'a [u8])> {
    let len = mp::array_len(rd)?;
    let start = *rd;
    for _ in 0..len {
        raw_str(rd)?;
    }
    Some((len, &start[..start.len() - rd.len()]))
}

/// Parses a `Forward` body like [`publish_view`].
pub fn forward_view(body: &[u8]) -> Result<Result<ForwardView<'_>, Frame>, WireError> {
    match fast_forward(body) {
        Some(v) => Ok(Ok(v)),
        None => slow(crate::FrameKind::Forward, body).map(Err),
    }
}

/// Parses a `Publish` body (the bytes after the kind byte). On anything but
/// the canonical encoding it defers to the serde decoder for the verdict.
pub fn publish_view(body: &[u8]) -> Result<Result<PublishView<'_>, Frame>, WireError> {
    match fast_publish(body) {
        Some(v) => Ok(Ok(v)),
        None => slow(crate::FrameKind::Publish, body).map(Err),
    }
}

/// Parses a `Deliver` body like [`publish_view`].
pub fn deliver_view(body: &[u8]) -> Result<Result<DeliverView<'_>, Frame>, WireError> {
    match fast_deliver(body) {
        Some(v) => Ok(Ok(v)),
        None => slow(crate::FrameKind::Deliver, body).map(Err),
    }
}

fn slow(kind: crate::FrameKind, body: &[u8]) -> Result<Frame, WireError> {
    let mut frame = Vec::with_capacity(body.len() + 1);
    frame.push(kind as u8);
    frame.extend_from_slice(body);
    decode_body(&frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Deliver, Limits, Publish, codec};

    #[test]
    fn views_agree_with_the_serde_decoder() {
        let p = Publish {
            name: Name::parse("a/b/c").unwrap(),
            mode: Mode::Anycast,
            flags: 1,
            msg_id: u64::MAX,
            payload: vec![1, 2, 3],
        };
        let bytes = codec::encode_to_vec(&Frame::Publish(p.clone()), &Limits::default()).unwrap();
        let v = publish_view(&bytes[5..]).unwrap().unwrap();
        assert_eq!(
            (v.name, v.mode, v.flags, v.msg_id, v.payload),
            (p.name.as_str(), p.mode, p.flags, p.msg_id, &p.payload[..])
        );
        for ident in [None, Some("spiffe://x/y".to_string())] {
            let d = Deliver {
                name: Name::parse("a/b/c").unwrap(),
                mode: Mode::Multicast,
                from: Name::parse("a/b/d/1").unwrap(),
                from_identity: ident.clone(),
                msg_id: 7,
                payload: vec![9; 300],
            };
            let bytes =
                codec::encode_to_vec(&Frame::Deliver(d.clone()), &Limits::default()).unwrap();
            let v = deliver_view(&bytes[5..]).unwrap().unwrap();
            let raw = raw_deliver_view(&bytes[5..]).unwrap();
            assert_eq!(
                (raw.name, raw.mode, raw.from, raw.msg_id, raw.payload),
                (
                    v.name.as_bytes(),
                    v.mode,
                    v.from.as_bytes(),
                    v.msg_id,
                    v.payload
                )
            );
            assert_eq!(raw.from_identity, v.from_identity.map(str::as_bytes));
            assert_eq!(checked_name(raw.name), Some(v.name));
            assert_eq!(v.from_identity, ident.as_deref());
            assert_eq!(
                (v.name, v.from, v.msg_id, v.payload),
                ("a/b/c", "a/b/d/1", 7, &d.payload[..])
            );
        }
    }

    #[test]
    fn the_forward_memo_agrees_with_the_view_and_checks_what_changed() {
        let base = crate::Forward {
            name: Name::parse("a/b/c").unwrap(),
            mode: Mode::Multicast,
            from: Name::parse("a/b/d/1").unwrap(),
            from_identity: Some("spiffe://x/y".into()),
            msg_id: 1,
            path: vec!["n1".into()],
            dests: vec!["n3".into(), "n4".into()],
            payload: vec![7; 10],
        };
        let variants = [
            base.clone(),
            crate::Forward {
                msg_id: 2,
                ..base.clone()
            },
            crate::Forward {
                name: Name::parse("a/b/e").unwrap(),
                ..base.clone()
            },
            crate::Forward {
                from_identity: None,
                ..base.clone()
            },
            crate::Forward {
                path: vec!["n1".into(), "n2".into()],
                dests: vec![],
                ..base.clone()
            },
            base.clone(),
        ];
        let mut memo = ForwardMemo::default();
        for f in variants {
            let bytes = codec::encode_to_vec(&Frame::Forward(f), &Limits::default()).unwrap();
            let want = forward_view(&bytes[5..]).unwrap().unwrap();
            let got = memo.view(&bytes[5..]).expect("canonical and valid");
            assert_eq!(
                (got.name, got.mode, got.from, got.from_identity, got.msg_id),
                (
                    want.name,
                    want.mode,
                    want.from,
                    want.from_identity,
                    want.msg_id
                )
            );
            assert_eq!(got.payload, want.payload);
            assert!(got.path.iter().eq(want.path.iter()));
            assert!(got.dests.iter().eq(want.dests.iter()));
        }
        // A string that differs from the last one's only in a byte that
        // makes it invalid is checked and refused, and the memo forgets.
        let bytes =
            codec::encode_to_vec(&Frame::Forward(base.clone()), &Limits::default()).unwrap();
        assert!(memo.view(&bytes[5..]).is_some());
        for field in [&b"a/b/c"[..], b"a/b/d/1", b"spiffe://x/y", b"n3"] {
            let mut bad = bytes[5..].to_vec();
            let at = bad
                .windows(field.len())
                .position(|w| w == field)
                .expect("the string is in the frame");
            bad[at + 1] = 0xff;
            assert!(
                memo.view(&bad).is_none(),
                "{:?}",
                String::from_utf8_lossy(field)
            );
            assert!(forward_view(&bad).is_err());
            assert!(memo.view(&bytes[5..]).is_some(), "and the good one again");
        }
    }

    #[test]
    fn forward_view_agrees_and_re_encodes() {
        let f = crate::Forward {
            name: Name::parse("a/b/c").unwrap(),
            mode: Mode::Multicast,
            from: Name::parse("a/b/d/1").unwrap(),
            from_identity: Some("spiffe://x/y".into()),
            msg_id: 42,
            path: vec!["n1".into(), "n2".into()],
            dests: vec!["n3".into()],
            payload: vec![7; 100],
        };
        let bytes = codec::encode_to_vec(&Frame::Forward(f.clone()), &Limits::default()).unwrap();
        let v = forward_view(&bytes[5..]).unwrap().unwrap();
        assert_eq!(v.path.iter().collect::<Vec<_>>(), ["n1", "n2"]);
        assert!(v.path.contains("n2") && !v.path.contains("n3"));
        assert_eq!(v.dests.first(), Some("n3"));
        // Re-encoding from the view with one more hop gives the owned frame's encoding.
        let mut out = bytes::BytesMut::new();
        codec::encode_forward_raw(
            v.name,
            v.mode,
            v.from,
            v.from_identity,
            v.msg_id,
            codec::NodeIds {
                ids: v.path.iter(),
                len: v.path.len(),
                then: Some("n9"),
            },
            codec::NodeIds {
                ids: v.dests.iter(),
                len: v.dests.len(),
                then: None,
            },
            v.payload,
            &Limits::default(),
            &mut out,
        )
        .unwrap();
        let mut want = f.clone();
        want.path.push("n9".into());
        assert_eq!(codec::decode_body(&out[4..]).unwrap(), Frame::Forward(want));
    }

    #[test]
    fn a_raw_view_leaves_the_strings_to_be_checked() {
        // A canonical Deliver whose name is not a name and whose sender is
        // not UTF-8: located, not accepted as strings until checked.
        let mut body = vec![0x96, 0xa3];
        body.extend_from_slice(b"a/b");
        body.extend_from_slice(&[1, 0xa2, 0xff, 0xfe, 0xc0, 7, 0xc4, 1, 9]);
        let raw = raw_deliver_view(&body).unwrap();
        assert_eq!(
            (raw.name, raw.from, raw.payload),
            (&b"a/b"[..], &[0xff, 0xfe][..], &[9][..])
        );
        assert_eq!(checked_name(raw.name), None);
        assert_eq!(checked_str(raw.from), None);
        assert_eq!(checked_name(b"a/b/c"), Some("a/b/c"));
        // The checked view refuses the same body.
        assert!(deliver_view(&body).is_err());
        // Truncated: no view at all.
        assert_eq!(raw_deliver_view(&body[..body.len() - 1]), None);
    }

    #[test]
    fn non_canonical_input_gets_the_serde_verdict() {
        // A bad name inside a canonical layout: the serde path reports it.
        let mut body = vec![0x95, 0xa3];
        body.extend_from_slice(b"a/b");
        body.extend_from_slice(&[0, 0, 0, 0xc4, 0]);
        assert!(matches!(
            publish_view(&body),
            Err(WireError::Malformed { .. })
        ));
        // Trailing bytes after a canonical body.
        let p = Frame::Publish(Publish {
            name: Name::parse("a/b/c").unwrap(),
            mode: Mode::Anycast,
            flags: 0,
            msg_id: 1,
            payload: vec![],
        });
        let mut bytes = codec::encode_to_vec(&p, &Limits::default()).unwrap();
        bytes.push(0);
        assert!(matches!(
            publish_view(&bytes[5..]),
            Err(WireError::TrailingBytes { .. })
        ));
        // A map-encoded body is valid for serde: the view hands back the frame.
        let mut map = vec![0x85];
        for (k, v) in [
            ("name", &b"\xa5a/b/c"[..]),
            ("mode", &[1u8][..]),
            ("flags", &[0u8][..]),
            ("msg_id", &[5u8][..]),
            ("payload", &[0xc4, 1, 42][..]),
        ] {
            map.push(0xa0 | k.len() as u8);
            map.extend_from_slice(k.as_bytes());
            map.extend_from_slice(v);
        }
        match publish_view(&map).unwrap() {
            Err(Frame::Publish(p)) => assert_eq!(p.payload, vec![42]),
            other => panic!("{other:?}"),
        }
    }
}
