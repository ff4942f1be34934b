//! What the handshake, the session machine, the driver and the handles
//! share: settings, the events and counters the application sees, and the
//! packets the machines ask the driver to publish.

use std::time::Duration;

use bytes::Bytes;
use slim_mls::MlsIdentity;
use slim_wire::{Mode, Name};

use crate::session::SessionError;
use crate::session::reliable::{self, ReceiverStats, SenderStats};

/// `Open` flag: reliable mode.
pub const OPEN_RELIABLE: u16 = 0b01;
/// `Open` flag: MLS requested (and on `Accept`: agreed, `body` = the
/// responder's key package).
pub const OPEN_MLS: u16 = 0b10;
/// `Accept` flag: the responder joined the MLS group from the Welcome.
pub const ACCEPT_JOINED: u16 = 0b100;

/// Delivery guarantees of a session.
#[derive(Debug, Clone)]
pub enum Reliability {
    /// Acks, retransmission, in-order exactly-once delivery.
    Reliable(reliable::Config),
    /// Best effort: no acks, no timers, duplicates suppressed.
    Unreliable { max_payload: usize },
}

/// Point-to-point session settings.
#[derive(Debug, Clone)]
pub struct P2pConfig {
    /// The initiator picks the mode; a responder takes the initiator's mode
    /// and its own tuning for it.
    pub reliability: Reliability,
    /// How long one `Open` waits for its `Accept`.
    pub open_timeout: Duration,
    /// `Open` transmissions before giving up.
    pub open_attempts: u32,
    /// Packets buffered between the mux and the session task.
    pub inbox: usize,
    /// Events buffered for the application.
    pub events: usize,
    /// Commands (sends) buffered for the session task.
    pub commands: usize,
    /// Mid-session, how long the node may keep reporting "no route" to the
    /// peer (e.g. while one of us reconnects), with nothing heard from it,
    /// before the session fails with [`SessionError::Unreachable`].
    /// Meanwhile retransmissions go on with their backoff but cost no
    /// retries (they cannot reach the peer), and a close keeps waiting. A
    /// peer whose mux answers "no such session" fails the session at once.
    pub peer_absent_grace: Duration,
    /// Once a close (ours or the peer's) is complete, how long the session
    /// task stays, counted from the last packet heard from the peer: it
    /// answers retransmitted `Close`s (our close-ack may have been lost) and
    /// takes what the peer still had in flight (sent before it learnt of our
    /// close), then ends.
    pub linger: Duration,
    /// While the session is open, a keep-alive goes to the peer when we have
    /// sent it nothing for this long (never while traffic flows). `None`:
    /// no keep-alives (then set no `idle_timeout` either, or a quiet peer
    /// looks gone).
    pub keep_alive: Option<Duration>,
    /// While the session is open, nothing heard from the peer for this long
    /// (its data, acks and keep-alives all count) ends the session with
    /// [`SessionError::IdleTimeout`]: a peer that vanished without a word
    /// does not keep the session, and its task, forever. Must exceed
    /// `keep_alive` (a few keep-alives may be lost in a row).
    pub idle_timeout: Option<Duration>,
    /// End-to-end MLS (a 2-member group) with this identity, whose SPIFFE
    /// ID must be the one the client authenticates as. An initiator with it
    /// asks for MLS; a responder without it refuses such opens.
    pub mls: Option<MlsIdentity>,
}

impl Default for P2pConfig {
    fn default() -> Self {
        P2pConfig {
            reliability: Reliability::Reliable(p2p_reliable()),
            open_timeout: Duration::from_millis(500),
            open_attempts: 6,
            inbox: 4096,
            events: 1024,
            commands: 256,
            linger: Duration::from_secs(1),
            peer_absent_grace: Duration::from_secs(5),
            // Six keep-alives per idle timeout: five lost in a row (or a
            // peer stalled that long) before a live session is ended.
            keep_alive: Some(Duration::from_secs(5)),
            idle_timeout: Some(Duration::from_secs(30)),
            mls: None,
        }
    }
}

/// Reliable tuning for sessions over SLIM: a session's packets travel one
/// ordered QUIC stream per hop, so a gap is a loss, never reordering, and is
/// NACKed almost at once instead of after the machine's generic delay (a
/// window-limited sender waits for that NACK on every loss); for the same
/// reason an unacknowledged message transmitted before an acknowledged one
/// is lost, with no reordering window.
pub(crate) fn p2p_reliable() -> reliable::Config {
    reliable::Config {
        nack_delay: Duration::from_millis(2),
        reorder_window: Duration::ZERO,
        ..reliable::Config::default()
    }
}

impl P2pConfig {
    pub fn unreliable() -> Self {
        P2pConfig {
            reliability: Reliability::Unreliable {
                max_payload: 64 * 1024,
            },
            ..P2pConfig::default()
        }
    }

    pub(crate) fn validate(&self) -> Result<(), SessionError> {
        if let Reliability::Reliable(c) = &self.reliability {
            c.validate()?;
        }
        if self.keep_alive.is_some_and(|k| k.is_zero()) {
            return Err(SessionError::Malformed("keep_alive is 0".into()));
        }
        if let Some(idle) = self.idle_timeout {
            match self.keep_alive {
                Some(k) if k < idle => {}
                _ => {
                    return Err(SessionError::Malformed(
                        "idle_timeout needs a shorter keep_alive".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// What a session tells the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum P2pEvent {
    /// The next message: in order and exactly once in reliable mode; in
    /// arrival order, duplicates suppressed, in best-effort mode.
    Message { seq: u64, payload: Bytes },
    /// Our message `seq` was not acknowledged after `attempts` transmissions.
    DeliveryFailed { seq: u64, attempts: u32 },
    /// Peer messages that will never arrive (the peer gave up on them).
    Lost { seqs: Vec<u64> },
    /// The peer closed after sending `sent` messages, all of which were
    /// delivered or reported lost. Final.
    PeerClosed { sent: u64 },
    /// The session failed (peer unreachable, refused, …). Final.
    Failed(SessionError),
    /// MLS: message `seq` arrived but did not decrypt (or was not from the
    /// peer's credential); it is not delivered.
    Rejected { seq: u64, reason: String },
}

/// Both directions' counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct P2pStats {
    pub sender: SenderStats,
    pub receiver: ReceiverStats,
    /// Packets from someone other than the bound peer, ignored.
    pub foreign: u64,
    /// Packets the machines refused (wrong kind, malformed).
    pub rejected: u64,
    /// MLS: messages that did not decrypt.
    pub undecryptable: u64,
    /// Peer packets dropped because the application's event queue stayed
    /// full while as many as the inbox holds were waiting (the peer
    /// retransmits them).
    pub overflow: u64,
}

/// A session packet a machine asks its driver to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: Name,
    pub mode: Mode,
    pub bytes: Vec<u8>,
    /// Published so that the node's refusal (no route, …) comes back to the
    /// session as an `Unreachable` packet; untracked packets (acks, answers
    /// to duplicates) are ones whose loss the protocol tolerates.
    pub tracked: bool,
}
