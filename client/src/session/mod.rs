//! Sessions: sans-IO state machines and the tasks that drive them.
//!
//! The protocol machines ([`reliable`], [`unreliable`], [`group`]) do no I/O,
//! spawn no tasks and read no clock, in the style of `quinn-proto`. Inputs
//! are `handle_*(…, now: Instant)`; outputs are drained with
//! `poll_transmit()` (session-layer packets to publish), `poll_event()`
//! ([`SessionEvent`]s for the application) and `poll_timeout()` (the earliest
//! instant at which `handle_timeout(now)` must be called). The session tasks
//! only move bytes and time between them and the [`crate::Client`]:
//!
//! * [`mux`]: one dispatcher per client handing session packets to the
//!   session (or acceptor) that owns them; everything else to the app.
//! * [`p2p`]: point-to-point sessions (anycast open bound to one instance,
//!   reliable or best effort, optional MLS), one task per session.
//! * [`rpc`]: request/response and server streaming over p2p sessions.
//!
//! * [`packet`]: the session-layer packet carried as the payload of a SLIM
//!   publish (header + body, MessagePack, size-checked).
//! * [`reliable`]: point-to-point reliable mode: sequence numbers, a bounded
//!   in-flight window, cumulative ACK + SACK, NACK for new gaps, loss
//!   detection from the acks, retransmission on an adaptive timeout (RFC
//!   6298) with exponential backoff and a bounded retry count, in-order
//!   delivery, duplicate suppression, ack coalescing.
//! * [`unreliable`]: point-to-point best effort: no acks, no timers.
//! * [`group`]: per-sender sequence numbers in a group, gap detection,
//!   retransmission requests and answers from a bounded buffer, and `Lost`
//!   reporting for what cannot be recovered.

pub mod channel;
pub mod group;
pub mod mux;
pub mod p2p;
pub mod packet;
pub mod reliable;
pub mod rpc;
pub mod unreliable;

use bytes::Bytes;

pub use mux::{Inbox, Incoming, SessionMux};
pub use packet::{Kind, Packet};

/// Everything the session layer can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The sender already has `window` messages unresolved; retry after acks
    /// arrive (back-pressure).
    #[error("send window full ({window} messages in flight)")]
    WindowFull { window: usize },
    #[error("payload of {len} bytes exceeds the session limit of {max}")]
    PayloadTooLarge { len: usize, max: usize },
    #[error("session packet of {len} bytes exceeds the limit of {max}")]
    PacketTooLarge { len: usize, max: usize },
    #[error("session packet carries {len} sequence numbers, limit {max}")]
    TooManySeqs { len: usize, max: usize },
    #[error("malformed session packet: {0}")]
    Malformed(String),
    #[error("{extra} trailing bytes after the session packet")]
    TrailingBytes { extra: usize },
    #[error("unsupported session packet version {0}")]
    UnsupportedVersion(u8),
    #[error("unknown session packet kind {0}")]
    UnknownKind(u8),
    #[error("packet for session {got:#x} delivered to session {expected:#x}")]
    WrongSession { expected: u64, got: u64 },
    #[error("packet kind {} is not handled by {role}", kind.as_str())]
    UnexpectedKind { kind: Kind, role: &'static str },
    #[error("packet claims sender {claimed:?} but was routed from {from:?}")]
    SenderMismatch { claimed: String, from: String },
    #[error("session is closed")]
    Closed,
    #[error("encode: {0}")]
    Encode(String),
    #[error("session {0:#x} is already registered with the mux")]
    AlreadyRegistered(u64),
    #[error("an acceptor for packet kind {} is already installed", .0.as_str())]
    AcceptorTaken(Kind),
    #[error("client: {0}")]
    Client(String),
    /// Nobody subscribes to the name (the node answered `NO_ROUTE`).
    #[error("no responder for {name}: {reason}")]
    NoResponder { name: String, reason: String },
    /// The node or the peer reported that the session cannot be reached.
    #[error("unreachable ({code}): {reason}")]
    Unreachable { code: u16, reason: String },
    #[error("refused by peer: {0}")]
    Refused(String),
    /// The node's authorization policy refused a publish of this session.
    #[error("refused by the node's policy: {0}")]
    Denied(String),
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// A reliable close gave up: the peer did not confirm it. `unacked` of
    /// the `sent` messages were never acknowledged (each was reported as
    /// `DeliveryFailed`).
    #[error(
        "close not confirmed by the peer after {waited:?}: {unacked} of {sent} messages unacknowledged"
    )]
    CloseIncomplete {
        unacked: u64,
        sent: u64,
        waited: std::time::Duration,
    },
    /// Nothing heard from the peer (data, acks or keep-alives) for this
    /// long: it vanished without a word (crashed, partitioned).
    #[error("nothing heard from the peer for {0:?}")]
    IdleTimeout(std::time::Duration),
    /// End-to-end encryption failed (handshake, encrypt or decrypt).
    #[error("MLS: {0}")]
    Mls(String),
}

/// What a session machine tells the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// Point-to-point: the next message, in order, exactly once.
    Delivered { seq: u64, payload: Bytes },
    /// Point-to-point sender: message `seq` was not acknowledged after
    /// `attempts` transmissions (delivery failed after N retries). The receiver
    /// may or may not have it; it will learn that the sender gave up from the
    /// `base` of the next data packet and report the gap as `Lost`.
    DeliveryFailed { seq: u64, attempts: u32 },
    /// Group: the next message from `sender`, in that sender's order.
    GroupDelivered {
        sender: String,
        seq: u64,
        payload: Bytes,
    },
    /// Messages that will never be delivered (the sender gave up on them or
    /// evicted them before a retransmission could be asked for, or our
    /// requests went unanswered). Reported in stream order, never skipped
    /// silently. `sender` is the peer's name (empty if a point-to-point peer
    /// never told its name).
    Lost { sender: String, seqs: Vec<u64> },
    /// The peer closed the session after sending `next_seq` messages.
    PeerClosed { sender: String, next_seq: u64 },
}

/// `initial * 2^(attempt-1)` capped at `max` (attempt 1 = first transmission).
pub(crate) fn backoff(
    initial: std::time::Duration,
    max: std::time::Duration,
    attempt: u32,
) -> std::time::Duration {
    let shift = attempt.saturating_sub(1).min(20);
    initial.saturating_mul(1u32 << shift).min(max)
}
