//! Group channels: the moderator and member machines (sans-IO).
//!
//! A channel is a multicast name plus one MLS group (or none, for channels
//! created without MLS). Its session id is [`session_id`] of the channel name,
//! so a joiner can address it knowing only the name. The moderator is the
//! only committer: it sequences every membership change, one in flight at a
//! time, and queues the rest (bounded).
//!
//! # Streams and control
//!
//! Every member sends on its own [`SenderSeq`] stream (multicast `Data`
//! packets, per-sender sequence numbers, gap recovery from the sender's
//! bounded buffer) and receives every other member's stream with one
//! [`GapTracker`]. A stream item (the `Data` body) is a [`Stream`] value,
//! MessagePack:
//!
//! | item | sent by | content |
//! |---|---|---|
//! | `App{epoch, body}` | any member | MLS ciphertext (plaintext without MLS) of one application message, encrypted in `epoch` |
//! | `Commit{epoch, commit, added, removed}` | moderator | MLS commit taking the group from `epoch` to `epoch+1`, with the `(name, SPIFFE ID)` pairs it adds/removes |
//! | `Close{reason}` | moderator | the channel ends |
//!
//! Commits travel in the moderator's stream, so they reach every member
//! reliably and in order with the moderator's messages. A message from a
//! later epoch than a member has reached (another sender raced the
//! moderator's commit) is held (bounded) until the commit arrives; a message
//! from before the member's join epoch is not for it and is skipped.
//!
//! Control messages are `Control` packets (kind 6) whose body is a [`Ctl`]
//! value (MessagePack), unicast to full names except `Ping` (multicast) and a
//! join request without a known moderator (multicast to the channel name).
//!
//! # Membership changes
//!
//! * Join request: member → moderator `Join{key_package, invited: false}`.
//!   The moderator checks the SPIFFE ID the node authenticated for the
//!   requester against the admission patterns, and that the key package's
//!   credential names the same ID (`add_members` then proves it); it answers
//!   `Refused{reason}` or admits.
//! * Invite: moderator → invitee `Invite`; the invitee answers
//!   `Join{key_package, invited: true}` (or `Decline`).
//! * Admission: `Commit` (adds) in the moderator's stream, `Welcome` unicast
//!   to the new member (resent until it answers `Joined`), `CommitAck` from
//!   every existing member. The change completes when all have answered or
//!   at the deadline, when the silent ones are reported unresponsive.
//! * Removal / leave (`Leave`): `Commit` (removes), `Removed` to the removed
//!   member, acks from the rest.
//! * Close: `Close` in the moderator's stream, `CloseAck` from everyone.
//! * SVID rotation: a member's `Group::rebind` self-update commit goes to the
//!   moderator (`Rebind{epoch, commit}`); the moderator applies it only at
//!   that epoch (else `RebindRefused`, and the member makes a new one), puts
//!   it in its stream and collects acks like any change; the member merges
//!   its own pending commit when it comes back. The moderator's own rebind
//!   is an ordinary queued change.
//! * Liveness: the moderator multicasts `Ping`; members answer `Pong`.
//!   Anything from a member counts as a sign of life; `max_missed_pings`
//!   silent intervals report it (`MemberUnresponsive`) and, by policy,
//!   remove it. A member reports a moderator silent for as long
//!   (`ModeratorUnresponsive`).
//!
//! Senders are identified by the MLS-verified SPIFFE ID of their credential
//! (the roster's node-authenticated ID without MLS); a message whose verified
//! ID differs from the roster's ID for the sender's name is rejected.
//! Everything a machine refuses becomes a [`ChannelEvent::Rejected`] with a
//! typed [`ChannelError`] and a `slim_client_channel_rejected_total{reason}`
//! count.
//!
//! # Files
//!
//! * `error.rs`: [`ChannelError`].
//! * `codec.rs`: the session id, stream items, control messages and their
//!   encoding.
//! * `types.rs`: [`MemberInfo`], [`ChannelEvent`], [`ChannelConfig`],
//!   [`ChannelStats`].
//! * `core.rs`: the state and logic both roles share.
//! * `sequencer.rs`: the [`Moderator`]'s state and membership-change
//!   sequencing; `moderator.rs`: its API, packet and timer handling.
//! * `member.rs`: the [`Member`].
//!
//! Dependencies run one way: `error` ← {`codec`, `types`} ← `core` ←
//! {`sequencer` ← `moderator`, `member`}; this file only declares and
//! re-exports.
//!
//! [`SenderSeq`]: super::group::SenderSeq
//! [`GapTracker`]: super::group::GapTracker

mod codec;
mod core;
mod error;
mod member;
mod moderator;
mod sequencer;
mod types;

#[cfg(test)]
mod tests;

pub use codec::{Ctl, Stream, control_packet, decode_control, session_id};
pub use error::ChannelError;
pub use member::Member;
pub use sequencer::Moderator;
pub use types::{ChannelConfig, ChannelEvent, ChannelStats, MemberInfo};
