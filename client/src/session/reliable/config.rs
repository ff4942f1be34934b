//! Reliable-mode configuration, the packet flags both halves use, and the
//! checks of names and session ids.

use std::time::Duration;

use crate::session::SessionError;
use crate::session::packet::{MAX_PACKET, MAX_SENDER, MAX_SEQS, Packet};

/// Flag on `Ack`: the answer to a `Close` (the closer knows its close arrived).
pub const FLAG_CLOSE_ACK: u16 = 0b0000_0100;
/// Flag on `Ack`: a p2p session's keep-alive, sent when the session has been
/// quiet (a plain cumulative ack, harmless to a peer that ignores the flag).
pub const FLAG_KEEP_ALIVE: u16 = 0b0001_0000;
/// Flag on `Data`: the sender's window is now full, so acknowledge at once
/// instead of after `ack_delay` (a window-limited sender would otherwise
/// idle for the delay on every window's worth of messages).
pub const FLAG_ACK_NOW: u16 = 0b0000_1000;

/// Reliable-mode tuning. Both ends should use the same `window` /
/// `max_out_of_order` (the receiver's buffer must cover the sender's window).
#[derive(Debug, Clone)]
pub struct Config {
    /// Sender: most sequence numbers between the base and the next seq.
    pub window: usize,
    /// Sender: retransmission timeout before the first RTT sample (then the
    /// RTO follows the measured RTT, RFC 6298).
    pub initial_rto: Duration,
    /// Sender: floor of the adaptive RTO. It must stay above the receiver's
    /// deliberate ack delay (`ack_delay`), or every coalesced ack would come
    /// after a spurious retransmission.
    pub min_rto: Duration,
    /// Sender: cap of the RTO and of its backoff.
    pub max_rto: Duration,
    /// Sender: retransmissions after the first transmission before giving up.
    pub max_retries: u32,
    /// Sender: largest payload.
    pub max_payload: usize,
    /// Receiver: acknowledge after this many data packets…
    pub ack_every: u32,
    /// Receiver: …or this long after the first unacknowledged one.
    pub ack_delay: Duration,
    /// Receiver: most messages held beyond a gap (≥ `window`).
    pub max_out_of_order: usize,
    /// Receiver: most seqs listed in one NACK.
    pub max_nack: usize,
    /// Receiver: how long a new gap may stay open (reordering) before it is
    /// NACKed. Each missing seq is NACKed at most once; after that the
    /// sender's timer recovers it.
    pub nack_delay: Duration,
    /// Receiver: largest jump of the sender's base accepted in one packet.
    pub max_skip: u64,
    /// Sender: a message still unacknowledged when one transmitted at least
    /// this much later is acknowledged counts as lost and is retransmitted
    /// at once. Zero on a path that never reorders (a SLIM session: one
    /// ordered stream per hop); on one that does, more than its reordering.
    pub reorder_window: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            window: 256,
            initial_rto: Duration::from_millis(200),
            // On loopback or a LAN the RTT is well under a millisecond, so
            // the floor is what sets the RTO. It is 5 × `ack_delay`: the
            // receiver's coalescing delay can never trigger a retransmission,
            // nor can the queueing of a full window behind a busy reader
            // (measured ~25 ms on a loaded 2-core host, where a 20 ms floor
            // retransmitted 8 % of the messages at 0 % loss). Losses do not
            // wait for it: NACKs and ack-based detection repair them within
            // a round trip; the timer is for tails and lost retransmissions.
            // RFC 6298's 1 s floor exists for 200 ms delayed acks, which this
            // receiver does not have.
            min_rto: Duration::from_millis(50),
            max_rto: Duration::from_secs(5),
            max_retries: 6,
            max_payload: 64 * 1024,
            ack_every: 8,
            ack_delay: Duration::from_millis(10),
            max_out_of_order: 256,
            max_nack: 256,
            nack_delay: Duration::from_millis(20),
            max_skip: 1 << 20,
            reorder_window: Duration::from_millis(20),
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), SessionError> {
        let bad = |what: &str| {
            Err(SessionError::Malformed(format!(
                "invalid reliable config: {what}"
            )))
        };
        if self.window == 0 {
            return bad("window is 0");
        }
        if self.max_out_of_order == 0 || self.max_out_of_order > MAX_SEQS {
            return bad("max_out_of_order must be in 1..=MAX_SEQS");
        }
        if self.max_nack == 0 || self.max_nack > MAX_SEQS {
            return bad("max_nack must be in 1..=MAX_SEQS");
        }
        if self.max_payload > MAX_PACKET - 2 * MAX_SENDER {
            return bad("max_payload too large for a session packet");
        }
        if self.ack_every == 0 {
            return bad("ack_every is 0");
        }
        if self.initial_rto.is_zero() {
            return bad("initial_rto is 0");
        }
        Ok(())
    }
}

pub(crate) fn check_name(name: &str) -> Result<(), SessionError> {
    if name.len() > MAX_SENDER {
        return Err(SessionError::Malformed(format!(
            "name of {} bytes exceeds {MAX_SENDER}",
            name.len()
        )));
    }
    Ok(())
}

pub(crate) fn check_session(expected: u64, p: &Packet) -> Result<(), SessionError> {
    if p.session_id != expected {
        return Err(SessionError::WrongSession {
            expected,
            got: p.session_id,
        });
    }
    Ok(())
}
