//! The wire side of channels: the channel session id, the stream items
//! ([`Stream`]) and control messages ([`Ctl`]) and their MessagePack
//! encoding, and the node's refusals of our publishes.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::error::ChannelError;
use crate::session::SessionError;
use crate::session::packet::{Kind, Packet};

/// The session id of a channel: FNV-1a 64 over `"slim-channel\0" || name`,
/// stable across versions and processes so joiners can compute it.
pub fn session_id(channel: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"slim-channel\0".iter().chain(channel.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The node's reason when `p` is its policy refusing one of our publishes.
pub(super) fn denied(p: &Packet) -> Option<String> {
    (p.flags & crate::session::mux::UNREACHABLE_FROM_NODE != 0
        && p.seq == u64::from(slim_wire::ErrorCode::UNAUTHORIZED.0))
    .then(|| String::from_utf8_lossy(&p.body).into_owned())
}

/// A stream item (body of a channel `Data` packet).
#[derive(Debug, Serialize, Deserialize)]
pub enum Stream {
    App {
        epoch: u64,
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    Commit {
        epoch: u64,
        #[serde(with = "serde_bytes")]
        commit: Vec<u8>,
        added: Vec<(String, String)>,
        removed: Vec<(String, String)>,
    },
    Close {
        reason: String,
    },
}

/// A control message (body of a `Control` packet).
#[derive(Debug, Serialize, Deserialize)]
pub enum Ctl {
    Join {
        #[serde(with = "serde_bytes")]
        key_package: Vec<u8>,
        invited: bool,
    },
    Invite {
        channel: String,
        mls: bool,
    },
    Decline {
        reason: String,
    },
    Welcome {
        #[serde(with = "serde_bytes")]
        welcome: Vec<u8>,
        epoch: u64,
        mod_seq: u64,
        roster: Vec<(String, String)>,
    },
    Refused {
        reason: String,
    },
    Joined {
        epoch: u64,
    },
    CommitAck {
        epoch: u64,
    },
    Removed {
        reason: String,
    },
    Leave,
    /// Member → moderator: a self-update commit (SVID rebind) made at `epoch`,
    /// for the moderator to sequence.
    Rebind {
        epoch: u64,
        #[serde(with = "serde_bytes")]
        commit: Vec<u8>,
    },
    /// Moderator → member: the rebind commit was not sequenced (another
    /// commit came first); make a new one.
    RebindRefused {
        reason: String,
    },
    Ping {
        n: u64,
    },
    Pong {
        n: u64,
    },
    CloseAck,
    /// Anyone → moderator: the roster, please, without joining (answered
    /// with `Roster` to members and to identities the admission policy
    /// admits, `Refused` otherwise). Appended last: older peers' variant
    /// numbers are unchanged.
    RosterQuery,
    /// Moderator → querier: the members at `epoch` as (name, SPIFFE ID).
    Roster {
        epoch: u64,
        members: Vec<(String, String)>,
    },
}

/// Encodes a control packet of `channel` from `me` (tools and tests that
/// speak the protocol by hand).
pub fn control_packet(channel: &str, me: &str, ctl: &Ctl) -> Result<Vec<u8>, ChannelError> {
    let mut p = Packet::new(session_id(channel), Kind::Control, me);
    p.body = Bytes::from(encode(ctl)?);
    Ok(p.encode()?)
}

/// Decodes the body of a control packet.
pub fn decode_control(p: &Packet) -> Result<Ctl, ChannelError> {
    if p.kind != Kind::Control {
        return Err(SessionError::UnexpectedKind {
            kind: p.kind,
            role: "control decoder",
        }
        .into());
    }
    decode("control", &p.body)
}

pub(super) fn decode<T: for<'de> Deserialize<'de>>(
    what: &str,
    b: &[u8],
) -> Result<T, ChannelError> {
    rmp_serde::from_slice(b).map_err(|e| ChannelError::Malformed(format!("{what}: {e}")))
}

pub(super) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, ChannelError> {
    rmp_serde::to_vec(v).map_err(|e| ChannelError::Session(SessionError::Encode(e.to_string())))
}
