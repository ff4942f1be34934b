//! The session-layer packet, carried as the payload of a SLIM publish.
//!
//! Layout (one MessagePack array, rmp-serde, fields in order):
//! `[version: u8, session_id: u64, kind: u8, seq: u64, base: u64,
//!   sender: str, flags: u16, seqs: [u64], body: bin]`.
//!
//! Field meaning per kind:
//!
//! | kind | `seq` | `base` | `seqs` | `body` |
//! |---|---|---|---|---|
//! | `Data` | message sequence number | sender's lowest unresolved seq: everything below was acknowledged, abandoned (p2p) or evicted from the retransmission buffer (group) | – | payload |
//! | `Ack` | – | cumulative: every seq below was received in order | seqs received out of order (SACK) | – |
//! | `Nack` | – | cumulative, as for `Ack` | seqs found missing (a new gap) | – |
//! | `RtxRequest` | – | – | seqs asked for (group) | – |
//! | `Gone` | – | sender's current buffer floor | seqs asked for but no longer buffered | – |
//! | `Close` | – | number of messages sent (`next_seq`) | – | – |
//! | `Open`, `OpenRpc` | attempt number | – | – | – (`flags`: `p2p::OPEN_RELIABLE`, `p2p::OPEN_MLS`) |
//! | `Accept` | – | – | – | MLS: the responder's key package (`flags`: as agreed, + `p2p::ACCEPT_JOINED` once it joined) |
//! | `Refuse` | – | – | – | reason (UTF-8) |
//! | `MlsWelcome` | – | – | – | MLS Welcome |
//! | `Unreachable` | error code | – | – | reason (UTF-8) |
//! | `Control` | – | – | – | channel control message (`channel::Ctl`, MessagePack) |
//!
//! Decoding never sizes memory from a declared length beyond the checked
//! packet size, and rejects trailing bytes, unknown kinds and versions.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::SessionError;

/// The session packet format version.
pub const VERSION: u8 = 1;
/// Largest encoded session packet accepted or produced (fits in a default
/// 1 MiB SLIM frame with room for the publish header).
pub const MAX_PACKET: usize = 1024 * 1024 - 4096;
/// Most sequence numbers one packet's `seqs` list may carry.
pub const MAX_SEQS: usize = 4096;
/// Largest sender name.
pub const MAX_SENDER: usize = 1024;

/// Flag on `Data`: this is a retransmission.
pub const FLAG_RETRANSMIT: u16 = 0b0000_0001;
/// Flag on `Data`: best-effort (unreliable) session, do not acknowledge.
pub const FLAG_UNRELIABLE: u16 = 0b0000_0010;

/// The packet kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    Data = 0,
    Ack = 1,
    Nack = 2,
    Close = 3,
    RtxRequest = 4,
    Gone = 5,
    // 6..=9: group channels (see `channel`); 7..=9 reserved.
    /// Channel control (moderator/member protocol; body = `channel::Ctl`).
    Control = 6,
    /// Point-to-point open (anycast to a service name).
    Open = 10,
    /// Open of an RPC session (anycast to a service name; the RPC responder's acceptor).
    OpenRpc = 11,
    /// Answer to `Open`/`OpenRpc`, from the instance that took the session.
    Accept = 12,
    /// Answer to `Open`/`OpenRpc`: refused (reason in `body`).
    Refuse = 13,
    /// Point-to-point MLS: the initiator's Welcome for the responder.
    MlsWelcome = 14,
    /// "No such session here": sent back by a mux that got a packet for a
    /// session id it does not know, and synthesized locally by the mux from
    /// the node's error for a tracked publish (`seq` = error code, `body` =
    /// reason).
    Unreachable = 15,
}

impl Kind {
    pub fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            0 => Kind::Data,
            1 => Kind::Ack,
            2 => Kind::Nack,
            3 => Kind::Close,
            4 => Kind::RtxRequest,
            5 => Kind::Gone,
            6 => Kind::Control,
            10 => Kind::Open,
            11 => Kind::OpenRpc,
            12 => Kind::Accept,
            13 => Kind::Refuse,
            14 => Kind::MlsWelcome,
            15 => Kind::Unreachable,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Data => "data",
            Kind::Ack => "ack",
            Kind::Nack => "nack",
            Kind::Close => "close",
            Kind::RtxRequest => "rtx-request",
            Kind::Gone => "gone",
            Kind::Control => "control",
            Kind::Open => "open",
            Kind::OpenRpc => "open-rpc",
            Kind::Accept => "accept",
            Kind::Refuse => "refuse",
            Kind::MlsWelcome => "mls-welcome",
            Kind::Unreachable => "unreachable",
        }
    }
}

/// A decoded session packet. See the module docs for per-kind field meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub session_id: u64,
    pub kind: Kind,
    pub seq: u64,
    pub base: u64,
    pub sender: String,
    pub flags: u16,
    pub seqs: Vec<u64>,
    pub body: Bytes,
}

#[derive(Serialize)]
struct WireOut<'a>(
    u8,
    u64,
    u8,
    u64,
    u64,
    &'a str,
    u16,
    &'a [u64],
    #[serde(with = "serde_bytes")] &'a [u8],
);

#[derive(Deserialize)]
struct WireIn(
    u8,
    u64,
    u8,
    u64,
    u64,
    String,
    u16,
    Vec<u64>,
    #[serde(with = "serde_bytes")] Vec<u8>,
);

impl Packet {
    /// A packet of `kind` with everything else zero/empty.
    pub fn new(session_id: u64, kind: Kind, sender: &str) -> Packet {
        Packet {
            session_id,
            kind,
            seq: 0,
            base: 0,
            sender: sender.to_owned(),
            flags: 0,
            seqs: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// Encodes the packet, checking the size limits.
    pub fn encode(&self) -> Result<Vec<u8>, SessionError> {
        self.check_limits()?;
        let mut out =
            Vec::with_capacity(self.body.len() + self.sender.len() + 48 + 9 * self.seqs.len());
        rmp_serde::encode::write(
            &mut out,
            &WireOut(
                VERSION,
                self.session_id,
                self.kind as u8,
                self.seq,
                self.base,
                &self.sender,
                self.flags,
                &self.seqs,
                &self.body,
            ),
        )
        .map_err(|e| SessionError::Encode(e.to_string()))?;
        if out.len() > MAX_PACKET {
            return Err(SessionError::PacketTooLarge {
                len: out.len(),
                max: MAX_PACKET,
            });
        }
        Ok(out)
    }

    /// Decodes one packet occupying all of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Packet, SessionError> {
        if buf.len() > MAX_PACKET {
            return Err(SessionError::PacketTooLarge {
                len: buf.len(),
                max: MAX_PACKET,
            });
        }
        let mut unread: &[u8] = buf;
        let mut de = rmp_serde::Deserializer::new(&mut unread);
        let w = WireIn::deserialize(&mut de).map_err(|e| SessionError::Malformed(e.to_string()))?;
        drop(de);
        if !unread.is_empty() {
            return Err(SessionError::TrailingBytes {
                extra: unread.len(),
            });
        }
        let WireIn(version, session_id, kind, seq, base, sender, flags, seqs, body) = w;
        if version != VERSION {
            return Err(SessionError::UnsupportedVersion(version));
        }
        let kind = Kind::from_u8(kind).ok_or(SessionError::UnknownKind(kind))?;
        let p = Packet {
            session_id,
            kind,
            seq,
            base,
            sender,
            flags,
            seqs,
            body: Bytes::from(body),
        };
        p.check_limits()?;
        Ok(p)
    }

    fn check_limits(&self) -> Result<(), SessionError> {
        if self.seqs.len() > MAX_SEQS {
            return Err(SessionError::TooManySeqs {
                len: self.seqs.len(),
                max: MAX_SEQS,
            });
        }
        if self.sender.len() > MAX_SENDER {
            return Err(SessionError::Malformed(format!(
                "sender name of {} bytes exceeds {MAX_SENDER}",
                self.sender.len()
            )));
        }
        if self.body.len() > MAX_PACKET {
            return Err(SessionError::PayloadTooLarge {
                len: self.body.len(),
                max: MAX_PACKET,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Packet {
        Packet {
            session_id: 0xdead_beef_0102_0304,
            kind: Kind::Data,
            seq: 42,
            base: 7,
            sender: "org/ns/svc/inst-1".into(),
            flags: FLAG_RETRANSMIT,
            seqs: vec![],
            body: Bytes::from_static(b"hello"),
        }
    }

    #[test]
    fn round_trip_every_kind() {
        for k in (0..=u8::MAX).filter(|k| Kind::from_u8(*k).is_some()) {
            let mut p = sample();
            p.kind = Kind::from_u8(k).unwrap();
            assert_eq!(p.kind as u8, k);
            p.seqs = vec![1, 5, u64::MAX];
            let bytes = p.encode().unwrap();
            assert_eq!(Packet::decode(&bytes).unwrap(), p);
        }
        let p = Packet::new(1, Kind::Ack, "");
        assert_eq!(Packet::decode(&p.encode().unwrap()).unwrap(), p);
    }

    #[test]
    fn malformed_inputs_are_typed_errors() {
        let good = sample().encode().unwrap();
        // Every truncation is an error, never a panic.
        for n in 0..good.len() {
            assert!(
                matches!(Packet::decode(&good[..n]), Err(SessionError::Malformed(_))),
                "len {n}"
            );
        }
        let mut trailing = good.clone();
        trailing.push(0xc0);
        assert_eq!(
            Packet::decode(&trailing),
            Err(SessionError::TrailingBytes { extra: 1 })
        );
        // Version and kind bytes sit right after the array marker.
        let mut v = good.clone();
        v[1] = 9;
        assert_eq!(Packet::decode(&v), Err(SessionError::UnsupportedVersion(9)));
        let mut p = sample();
        p.seqs = vec![];
        let raw = rmp_serde::to_vec(&WireOut(VERSION, 1, 77, 0, 0, "x", 0, &[], b"")).unwrap();
        assert_eq!(Packet::decode(&raw), Err(SessionError::UnknownKind(77)));
        assert!(matches!(
            Packet::decode(b"\x93\x01\x02\x03"),
            Err(SessionError::Malformed(_))
        ));
        assert!(matches!(
            Packet::decode(&[0xff; 64]),
            Err(SessionError::Malformed(_))
        ));
        // Random garbage never panics.
        let mut x: u64 = 0x1234_5678;
        for _ in 0..2000 {
            let mut buf = good.clone();
            for _ in 0..3 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize) % buf.len();
                buf[i] = (x >> 32) as u8;
            }
            let _ = Packet::decode(&buf);
        }
    }

    #[test]
    fn size_limits() {
        let mut p = sample();
        p.body = Bytes::from(vec![0u8; MAX_PACKET]);
        assert!(matches!(
            p.encode(),
            Err(SessionError::PacketTooLarge { .. })
        ));
        assert!(matches!(
            Packet::decode(&vec![0u8; MAX_PACKET + 1]),
            Err(SessionError::PacketTooLarge { .. })
        ));
        let mut p = sample();
        p.seqs = vec![0; MAX_SEQS + 1];
        assert!(matches!(p.encode(), Err(SessionError::TooManySeqs { .. })));
        let raw = rmp_serde::to_vec(&WireOut(
            VERSION,
            1,
            1,
            0,
            0,
            "x",
            0,
            &vec![0; MAX_SEQS + 1],
            b"",
        ))
        .unwrap();
        assert!(matches!(
            Packet::decode(&raw),
            Err(SessionError::TooManySeqs { .. })
        ));
        let mut p = sample();
        p.sender = "a".repeat(MAX_SENDER + 1);
        assert!(matches!(p.encode(), Err(SessionError::Malformed(_))));
    }
}
