//! What the front door hands the application: [`Message`], [`SessionEvent`],
//! and the [`SessionKind`] and [`Role`] of a session.

use bytes::Bytes;
use slim_wire::Mode;

use crate::session::channel::MemberInfo;

/// A message received raw (not in a session).
#[derive(Debug, Clone)]
pub struct Message {
    pub payload: Bytes,
    /// The sender's full name.
    pub source: String,
    /// The sender's SPIFFE ID: proven by MLS in an MLS channel,
    /// authenticated by the sender's node otherwise.
    pub spiffe_id: Option<String>,
    /// The name it was sent to (the channel's, for a group message).
    pub name: String,
    /// The sender's sequence number (sessions).
    pub seq: Option<u64>,
    /// The MLS epoch it was encrypted in.
    pub epoch: Option<u64>,
    /// How it was published (raw messages).
    pub mode: Option<Mode>,
}

/// What [`Session::next_event`](super::Session::next_event) returns.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    Message(Message),
    /// Group: a member was admitted (moderator: when its admission
    /// completed; members: when they applied the commit).
    MemberJoined(MemberInfo),
    /// Group: a member left or was removed.
    MemberLeft {
        member: MemberInfo,
        reason: String,
    },
}

/// The kind of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    PointToPoint,
    Group,
}

impl SessionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::PointToPoint => "p2p",
            SessionKind::Group => "group",
        }
    }
}

/// This end's role in a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opened the point-to-point session.
    Initiator,
    /// Accepted the point-to-point session.
    Responder,
    /// Created the channel.
    Moderator,
    /// Joined the channel (by request or invitation).
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Initiator => "initiator",
            Role::Responder => "responder",
            Role::Moderator => "moderator",
            Role::Member => "member",
        }
    }
}
