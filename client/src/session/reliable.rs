//! Point-to-point reliable mode.
//!
//! The [`Sender`] numbers each message, keeps at most `window` sequence
//! numbers unresolved (from its lowest unresolved seq, the *base*, to the next
//! seq), and retransmits each message when its timer expires, with exponential
//! backoff, at most `max_retries` times; then it gives up and reports
//! [`SessionEvent::DeliveryFailed`]. Every data packet carries the sender's
//! base, so a receiver learns which messages were given up on and reports them
//! as [`SessionEvent::Lost`] instead of waiting forever.
//!
//! The retransmission timeout adapts to the path (RFC 6298): smoothed RTT
//! and its variation from acknowledged messages, `RTO = SRTT + max(G,
//! 4·RTTVAR)` clamped to `[min_rto, max_rto]`, no samples from retransmitted
//! messages (Karn), and the RTO doubled on every timer expiry until a fresh
//! sample arrives. Besides the timer and the receiver's NACK, a loss is
//! detected from the acks themselves (RACK-like): SLIM delivers a session's
//! packets in order, so a message still unacknowledged when one transmitted
//! after it is acknowledged was lost (or its retransmission was), and is
//! retransmitted at once instead of after a timeout. When acks stop coming
//! while messages are in flight (a lost tail, or a lost retransmission with
//! the window full: nothing newer to be acked), a probe retransmits the
//! lowest one after `2·SRTT + ack_delay` (a tail-loss probe, at most
//! [`MAX_PROBES`] in a row), long before its RTO; probes do not count
//! against the retry budget.
//!
//! The [`Receiver`] delivers in order, exactly once, buffers up to
//! `max_out_of_order` messages beyond a gap, acknowledges cumulatively with
//! the out-of-order seqs it holds (SACK) every `ack_every` packets or after
//! `ack_delay`, and sends a NACK listing the seqs of each new gap at once, so
//! that the sender does not have to wait for its timer.
//!
//! Packets from [`Sender`] go to the receiver and vice versa; each side's
//! `poll_transmit` output is published to the peer by the driving actor.

mod config;
mod receiver;
mod sender;

pub use config::{Config, FLAG_ACK_NOW, FLAG_CLOSE_ACK, FLAG_KEEP_ALIVE};
pub(crate) use config::{check_name, check_session};
pub use receiver::{Receiver, ReceiverStats};
pub use sender::{MAX_PROBES, Sender, SenderStats};
