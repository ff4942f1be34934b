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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::packet::{FLAG_RETRANSMIT, Kind, MAX_PACKET, MAX_SENDER, MAX_SEQS, Packet};
use super::{SessionError, SessionEvent, backoff};

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

/// Sender counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SenderStats {
    pub sent: u64,
    pub retransmitted: u64,
    pub acked: u64,
    pub failed: u64,
    /// Retransmissions because the timer expired (the rest were NACKed or
    /// detected from the acks).
    pub timeouts: u64,
    /// Retransmissions because a message transmitted later was acknowledged
    /// first (loss detected from the acks).
    pub fast_retransmits: u64,
    /// Retransmissions because acks stopped coming (tail-loss probes).
    pub probes: u64,
    /// The current retransmission timeout.
    pub rto: Duration,
    /// The smoothed RTT (zero before the first sample).
    pub srtt: Duration,
}

#[derive(Debug)]
struct InFlight {
    payload: Bytes,
    /// Transmissions so far (the first one included): sets the backoff.
    attempts: u32,
    /// Transmissions counted against `max_retries`: those made while the
    /// peer is known unreachable ([`Sender::set_peer_unreachable`]) are not,
    /// since they could not reach it.
    charged: u32,
    deadline: Instant,
    /// When it was last (re)transmitted.
    sent_at: Instant,
    /// Transmission order of its last (re)transmission: a message whose
    /// `tx` is below that of an acknowledged one was lost (ordered path).
    tx: u64,
    /// Sent again by a probe (not an attempt): its ack is ambiguous too.
    probed: bool,
}

/// Probes in a row without an ack in between; then only the RTO (with its
/// backoff) retransmits, so a dead path is not probed at RTT pace.
pub const MAX_PROBES: u32 = 2;

/// RTT estimation and the retransmission timeout (RFC 6298).
#[derive(Debug, Clone)]
struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    rto: Duration,
    min: Duration,
    max: Duration,
}

/// Clock granularity `G` of RFC 6298: tokio's timer wheel ticks in
/// milliseconds.
const GRANULARITY: Duration = Duration::from_millis(1);

impl RttEstimator {
    fn new(cfg: &Config) -> RttEstimator {
        let mut e = RttEstimator {
            srtt: None,
            rttvar: Duration::ZERO,
            rto: cfg.initial_rto,
            min: cfg.min_rto.min(cfg.max_rto),
            max: cfg.max_rto,
        };
        e.rto = e.clamp(cfg.initial_rto);
        e
    }

    fn clamp(&self, d: Duration) -> Duration {
        d.max(self.min).min(self.max)
    }

    /// A round trip measured on a message transmitted once (Karn).
    fn sample(&mut self, r: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(r);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((srtt * 7 + r) / 8);
            }
        }
        let srtt = self.srtt.unwrap_or(r);
        self.rto = self.clamp(srtt + (self.rttvar * 4).max(GRANULARITY));
    }

    /// The timer expired: back off until the next sample (RFC 6298 5.5).
    fn back_off(&mut self) {
        self.rto = self.clamp(self.rto.saturating_mul(2));
    }
}

/// The sending half of a reliable point-to-point session.
#[derive(Debug)]
pub struct Sender {
    cfg: Config,
    session_id: u64,
    name: String,
    next_seq: u64,
    in_flight: BTreeMap<u64, InFlight>,
    timers: BTreeSet<(Instant, u64)>,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<SessionEvent>,
    closed: bool,
    stats: SenderStats,
    rtt: RttEstimator,
    /// Transmissions so far (orders them for loss detection).
    tx_count: u64,
    /// When to probe if no ack arrives first.
    probe_at: Option<Instant>,
    /// Probes since the last ack.
    probes: u32,
    /// Until when the peer is known unreachable (the node answers "no
    /// route"): retransmissions before then are free, and nothing is given
    /// up on.
    unreachable_until: Option<Instant>,
}

impl Sender {
    /// `name` is our own SLIM name, put in every packet.
    pub fn new(session_id: u64, name: &str, cfg: Config) -> Result<Sender, SessionError> {
        cfg.validate()?;
        check_name(name)?;
        let rtt = RttEstimator::new(&cfg);
        Ok(Sender {
            session_id,
            name: name.to_owned(),
            next_seq: 0,
            in_flight: BTreeMap::new(),
            timers: BTreeSet::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            closed: false,
            stats: SenderStats {
                rto: rtt.rto,
                ..SenderStats::default()
            },
            rtt,
            tx_count: 0,
            probe_at: None,
            probes: 0,
            unreachable_until: None,
            cfg,
        })
    }

    /// Queues `payload` as the next message; returns its sequence number.
    /// `WindowFull` is back-pressure: nothing was queued.
    pub fn handle_send(&mut self, payload: Bytes, now: Instant) -> Result<u64, SessionError> {
        if self.closed {
            return Err(SessionError::Closed);
        }
        if payload.len() > self.cfg.max_payload {
            return Err(SessionError::PayloadTooLarge {
                len: payload.len(),
                max: self.cfg.max_payload,
            });
        }
        if self.next_seq - self.base() >= self.cfg.window as u64 {
            return Err(SessionError::WindowFull {
                window: self.cfg.window,
            });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let deadline = now + self.rtt.rto;
        self.in_flight.insert(
            seq,
            InFlight {
                payload,
                attempts: 1,
                charged: 1,
                deadline,
                sent_at: now,
                tx: 0,
                probed: false,
            },
        );
        self.timers.insert((deadline, seq));
        self.stats.sent += 1;
        self.transmit(seq, false);
        self.arm_probe(now);
        Ok(seq)
    }

    /// Handles a packet from the receiver.
    pub fn handle_packet(&mut self, p: &Packet, now: Instant) -> Result<(), SessionError> {
        check_session(self.session_id, p)?;
        match p.kind {
            Kind::Ack => {
                self.on_ack(p.base, &p.seqs, now);
                Ok(())
            }
            Kind::Nack => {
                self.on_ack(p.base, &[], now);
                for &seq in &p.seqs {
                    // The NACK may have been written before a retransmission
                    // we already made (from the acks) reached the receiver:
                    // give that one a round trip before sending another.
                    let recent = self.in_flight.get(&seq).is_some_and(|f| {
                        f.attempts > 1 && now.duration_since(f.sent_at) < self.srtt_or_rto()
                    });
                    if !recent {
                        self.retransmit(seq, now);
                    }
                }
                Ok(())
            }
            Kind::Close => {
                self.closed = true;
                self.events.push_back(SessionEvent::PeerClosed {
                    sender: p.sender.clone(),
                    next_seq: p.base,
                });
                Ok(())
            }
            kind => Err(SessionError::UnexpectedKind {
                kind,
                role: "reliable sender",
            }),
        }
    }

    /// Decodes and handles a packet from the receiver.
    pub fn handle_datagram(&mut self, bytes: &[u8], now: Instant) -> Result<(), SessionError> {
        let p = Packet::decode(bytes)?;
        self.handle_packet(&p, now)
    }

    /// Retransmits what is due and gives up on what has run out of retries.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.probe_at.is_some_and(|t| t <= now) {
            self.probe(now);
        }
        let mut expired = false;
        while let Some(&(t, seq)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.pop_first();
            let Some(f) = self.in_flight.get(&seq) else {
                continue;
            };
            if self.exhausted(f, now) {
                let attempts = f.attempts;
                self.in_flight.remove(&seq);
                self.stats.failed += 1;
                self.events
                    .push_back(SessionEvent::DeliveryFailed { seq, attempts });
            } else {
                if !expired {
                    // One expiry of the timer, however many messages it
                    // covers, backs the RTO off once (the messages of one
                    // window go out together and expire together).
                    expired = true;
                    self.rtt.back_off();
                    self.stats.rto = self.rtt.rto;
                }
                self.stats.timeouts += 1;
                self.retransmit(seq, now);
            }
        }
    }

    /// The peer is known unreachable until `until` (`None`: it is not, as
    /// far as we know): the node answered "no route" to it, so our
    /// transmissions meanwhile are lost before they reach it. They do not
    /// count against `max_retries` and nothing is given up on before
    /// `until`; retransmissions go on with their backoff (up to `max_rto`),
    /// so a path that comes back within that time is found within `max_rto`.
    /// A partition must not use up a retry budget meant for losses.
    pub fn set_peer_unreachable(&mut self, until: Option<Instant>) {
        self.unreachable_until = until;
    }

    fn unreachable(&self, now: Instant) -> bool {
        self.unreachable_until.is_some_and(|t| now < t)
    }

    /// Out of retries, and not held by a known absence of the peer.
    fn exhausted(&self, f: &InFlight, now: Instant) -> bool {
        f.charged > self.cfg.max_retries && !self.unreachable(now)
    }

    /// Sends a `Close` carrying the number of messages sent. Further
    /// `handle_send`s fail with `Closed`; unresolved messages keep their timers.
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        let mut p = Packet::new(self.session_id, Kind::Close, &self.name);
        p.base = self.next_seq;
        p.seq = self.base();
        if let Ok(b) = p.encode() {
            self.transmits.push_back(b);
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let rto = self.timers.first().map(|&(t, _)| t);
        match (rto, self.probe_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Lowest unresolved seq (everything below was acknowledged or given up).
    pub fn base(&self) -> u64 {
        self.in_flight
            .first_key_value()
            .map_or(self.next_seq, |(&s, _)| s)
    }

    /// The seq the next message will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Messages sent and neither acknowledged nor given up on.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn stats(&self) -> &SenderStats {
        &self.stats
    }

    /// The current retransmission timeout.
    pub fn rto(&self) -> Duration {
        self.rtt.rto
    }

    /// The cap of the RTO and of each message's backoff.
    pub fn max_rto(&self) -> Duration {
        self.cfg.max_rto
    }

    fn srtt_or_rto(&self) -> Duration {
        self.rtt.srtt.unwrap_or(self.rtt.rto)
    }

    fn on_ack(&mut self, cum: u64, sack: &[u64], now: Instant) {
        let cum = cum.min(self.next_seq);
        // The newest transmission this ack covers: the RTT sample, and the
        // reference for loss detection. Only messages transmitted once count
        // (Karn): an ack for a retransmitted one may be for its original, and
        // taking it for the retransmission would both shrink the RTT and
        // declare everything sent in between lost.
        let mut newest = None::<(u64, Instant)>;
        let mut note = |f: &InFlight| {
            if f.attempts == 1 && !f.probed && newest.is_none_or(|(tx, _)| f.tx > tx) {
                newest = Some((f.tx, f.sent_at));
            }
        };
        while let Some((&seq, _)) = self.in_flight.first_key_value() {
            if seq >= cum {
                break;
            }
            if let Some(f) = self.resolve(seq) {
                note(&f);
            }
        }
        for &seq in sack {
            if let Some(f) = self.resolve(seq) {
                note(&f);
            }
        }
        if let Some((_, sent_at)) = newest {
            self.rtt.sample(now.saturating_duration_since(sent_at));
        }
        self.stats.rto = self.rtt.rto;
        self.stats.srtt = self.rtt.srtt.unwrap_or_default();
        if let Some((tx, sent_at)) = newest {
            self.detect_lost(tx, sent_at, now);
        }
        // The path answers: probing starts over from this ack.
        self.probes = 0;
        self.arm_probe(now);
    }

    /// The probe timeout: two round trips plus the receiver's ack delay
    /// (the ack for a lone message waits for it), never beyond the RTO.
    fn pto(&self) -> Duration {
        let rto = self.rtt.rto;
        match self.rtt.srtt {
            // max/min rather than clamp: a configured RTO below the
            // granularity must not panic.
            Some(srtt) => (srtt * 2 + self.cfg.ack_delay).max(GRANULARITY).min(rto),
            None => rto,
        }
    }

    /// (Re)arms the probe from `now`, backed off by the probes already sent.
    fn arm_probe(&mut self, now: Instant) {
        self.probe_at = (!self.in_flight.is_empty() && self.probes < MAX_PROBES)
            .then(|| now + self.pto() * (1 << self.probes));
    }

    /// No ack for a probe timeout: send the lowest message in flight again
    /// (the one holding the window, or the lost tail). Not an attempt: a
    /// probe into a dead path must not use up the retry budget.
    fn probe(&mut self, now: Instant) {
        self.probe_at = None;
        let max = self.cfg.max_retries;
        let held = self.unreachable(now);
        let Some((&seq, f)) = self
            .in_flight
            .iter_mut()
            .find(|(_, f)| held || f.charged <= max)
        else {
            return;
        };
        f.sent_at = now;
        f.probed = true;
        self.probes += 1;
        self.stats.probes += 1;
        self.stats.retransmitted += 1;
        self.transmit(seq, true);
        self.arm_probe(now);
    }

    /// Sessions travel one ordered stream per hop: whatever was transmitted
    /// before a message that is now acknowledged (by `reorder_window` or
    /// more), and is not acknowledged itself, was lost. Retransmit it now
    /// rather than after its timer. Each retransmission gets a new
    /// transmission order, so it is only declared lost again once something
    /// transmitted after it is acknowledged.
    fn detect_lost(&mut self, newest_tx: u64, newest_sent: Instant, now: Instant) {
        let window = self.cfg.reorder_window;
        let lost: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| {
                f.tx < newest_tx && f.sent_at + window <= newest_sent && !self.exhausted(f, now)
            })
            .map(|(&s, _)| s)
            .collect();
        for seq in lost {
            self.stats.fast_retransmits += 1;
            self.retransmit(seq, now);
        }
    }

    fn resolve(&mut self, seq: u64) -> Option<InFlight> {
        let f = self.in_flight.remove(&seq)?;
        self.timers.remove(&(f.deadline, seq));
        self.stats.acked += 1;
        Some(f)
    }

    /// Retransmits `seq` now if it is in flight and has retries left.
    fn retransmit(&mut self, seq: u64, now: Instant) {
        let held = self.unreachable(now);
        let Some(f) = self.in_flight.get_mut(&seq) else {
            return;
        };
        if f.charged > self.cfg.max_retries && !held {
            // Out of retries: the pending timer reports the failure.
            return;
        }
        self.timers.remove(&(f.deadline, seq));
        f.attempts += 1;
        if !held {
            f.charged += 1;
        }
        // Per message on top of the session's (possibly backed-off) RTO: a
        // message that keeps failing waits longer each time even while other
        // messages' acks keep the RTO low, so its retry budget still spans a
        // node restart.
        f.deadline = now + backoff(self.rtt.rto, self.cfg.max_rto, f.attempts);
        f.sent_at = now;
        self.timers.insert((f.deadline, seq));
        self.stats.retransmitted += 1;
        self.transmit(seq, true);
    }

    fn transmit(&mut self, seq: u64, retransmit: bool) {
        let base = self.base();
        self.tx_count += 1;
        let tx = self.tx_count;
        let Some(f) = self.in_flight.get_mut(&seq) else {
            return;
        };
        f.tx = tx;
        let p = Packet {
            session_id: self.session_id,
            kind: Kind::Data,
            seq,
            base,
            sender: self.name.clone(),
            flags: (if retransmit { FLAG_RETRANSMIT } else { 0 })
                | (if self.next_seq - base >= self.cfg.window as u64 {
                    FLAG_ACK_NOW
                } else {
                    0
                }),
            seqs: Vec::new(),
            body: f.payload.clone(),
        };
        // Cannot fail: payload and name sizes were checked.
        if let Ok(b) = p.encode() {
            self.transmits.push_back(b);
        }
    }
}

/// Receiver counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    pub delivered: u64,
    pub duplicates: u64,
    /// Data beyond the out-of-order buffer, dropped (the sender retransmits).
    pub beyond_window: u64,
    pub acks_sent: u64,
    pub nacks_sent: u64,
    pub lost: u64,
}

/// The receiving half of a reliable point-to-point session.
#[derive(Debug)]
pub struct Receiver {
    cfg: Config,
    session_id: u64,
    name: String,
    peer: String,
    next_expected: u64,
    /// One past the highest seq seen (for detecting new gaps).
    end: u64,
    buffer: BTreeMap<u64, Bytes>,
    unacked: u32,
    ack_deadline: Option<Instant>,
    /// Seqs found missing and when they may be NACKed, in time order.
    gaps: VecDeque<(Instant, u64)>,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<SessionEvent>,
    stats: ReceiverStats,
    /// The `base` of the last close-ack sent, if any.
    close_acked: Option<u64>,
}

impl Receiver {
    pub fn new(session_id: u64, name: &str, cfg: Config) -> Result<Receiver, SessionError> {
        cfg.validate()?;
        check_name(name)?;
        Ok(Receiver {
            cfg,
            session_id,
            name: name.to_owned(),
            peer: String::new(),
            next_expected: 0,
            end: 0,
            buffer: BTreeMap::new(),
            unacked: 0,
            ack_deadline: None,
            gaps: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: ReceiverStats::default(),
            close_acked: None,
        })
    }

    /// Handles a packet from the sender.
    pub fn handle_packet(&mut self, p: &Packet, now: Instant) -> Result<(), SessionError> {
        check_session(self.session_id, p)?;
        match p.kind {
            Kind::Data => self.on_data(p, now),
            Kind::Close => {
                // `seq` is the closer's lowest unresolved seq: everything
                // below it that we lack was given up on, and no data packet
                // will come after the close to tell us so.
                let floor = p.seq.min(p.base);
                if floor > self.next_expected && floor - self.next_expected <= self.cfg.max_skip {
                    self.skip_to(floor);
                }
                self.events.push_back(SessionEvent::PeerClosed {
                    sender: p.sender.clone(),
                    next_seq: p.base,
                });
                // Make sure the sender hears where we are, and that its close arrived.
                self.send_ack_flags(FLAG_CLOSE_ACK);
                Ok(())
            }
            kind => Err(SessionError::UnexpectedKind {
                kind,
                role: "reliable receiver",
            }),
        }
    }

    pub fn handle_datagram(&mut self, bytes: &[u8], now: Instant) -> Result<(), SessionError> {
        let p = Packet::decode(bytes)?;
        self.handle_packet(&p, now)
    }

    /// Sends the NACK for gaps still open and the coalesced ACK when their
    /// delays have passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.gaps.front().is_some_and(|&(t, _)| t <= now) {
            self.send_nack(now);
        }
        if self.ack_deadline.is_some_and(|t| t <= now) {
            self.send_ack();
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.ack_deadline, self.gaps.front().map(|&(t, _)| t)) {
            (Some(a), Some(n)) => Some(a.min(n)),
            (a, n) => a.or(n),
        }
    }

    /// The peer's close is complete (everything before it delivered or
    /// reported lost): tell it now with a close-ack, unless one already
    /// said as much. Otherwise the closer learns it only from the answer to
    /// its next retransmitted `Close`, by which time this end may be gone.
    pub fn confirm_close(&mut self) {
        if self.close_acked.is_none_or(|b| b < self.next_expected) {
            self.send_ack_flags(FLAG_CLOSE_ACK);
        }
    }

    /// Every seq below this was delivered (or reported lost).
    pub fn next_expected(&self) -> u64 {
        self.next_expected
    }

    /// Messages held beyond a gap.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    pub fn stats(&self) -> &ReceiverStats {
        &self.stats
    }

    fn on_data(&mut self, p: &Packet, now: Instant) -> Result<(), SessionError> {
        if p.base > self.next_expected && p.base - self.next_expected > self.cfg.max_skip {
            return Err(SessionError::Malformed(format!(
                "sender base {} jumps more than {} past {}",
                p.base, self.cfg.max_skip, self.next_expected
            )));
        }
        if self.peer != p.sender {
            self.peer.clone_from(&p.sender);
        }
        // The sender gave up on everything below its base.
        if p.base > self.next_expected {
            self.skip_to(p.base);
        }
        let seq = p.seq;
        if seq < self.next_expected || self.buffer.contains_key(&seq) {
            // Our ack was probably lost: tell the sender now.
            self.stats.duplicates += 1;
            self.send_ack();
            return Ok(());
        }
        if seq - self.next_expected >= self.cfg.max_out_of_order as u64 {
            self.stats.beyond_window += 1;
            self.send_ack();
            return Ok(());
        }
        self.buffer.insert(seq, p.body.clone());
        let gap_from = self.end.max(self.next_expected);
        self.end = self.end.max(seq + 1);
        self.deliver_run();
        if seq > gap_from {
            let room = self.cfg.max_nack.saturating_sub(self.gaps.len());
            let new: Vec<u64> = (gap_from..seq)
                .filter(|s| *s >= self.next_expected && !self.buffer.contains_key(s))
                .take(room)
                .collect();
            let at = now + self.cfg.nack_delay;
            self.gaps.extend(new.into_iter().map(|s| (at, s)));
        }
        self.unacked += 1;
        if self.unacked >= self.cfg.ack_every || p.flags & FLAG_ACK_NOW != 0 {
            self.send_ack();
        } else if self.ack_deadline.is_none() {
            self.ack_deadline = Some(now + self.cfg.ack_delay);
        }
        Ok(())
    }

    /// Delivers buffered messages below `base` and reports the rest as lost.
    fn skip_to(&mut self, base: u64) {
        let mut lost = Vec::new();
        while self.next_expected < base {
            let s = self.next_expected;
            match self.buffer.remove(&s) {
                Some(payload) => {
                    self.flush_lost(&mut lost);
                    self.deliver(s, payload);
                }
                None => {
                    lost.push(s);
                    if lost.len() >= MAX_SEQS {
                        self.flush_lost(&mut lost);
                    }
                }
            }
            self.next_expected += 1;
        }
        self.flush_lost(&mut lost);
        self.end = self.end.max(self.next_expected);
        self.deliver_run();
    }

    fn flush_lost(&mut self, lost: &mut Vec<u64>) {
        if !lost.is_empty() {
            self.stats.lost += lost.len() as u64;
            self.events.push_back(SessionEvent::Lost {
                sender: self.peer.clone(),
                seqs: std::mem::take(lost),
            });
        }
    }

    fn deliver_run(&mut self) {
        while let Some(payload) = self.buffer.remove(&self.next_expected) {
            let s = self.next_expected;
            self.next_expected += 1;
            self.deliver(s, payload);
        }
    }

    fn deliver(&mut self, seq: u64, payload: Bytes) {
        self.stats.delivered += 1;
        self.events
            .push_back(SessionEvent::Delivered { seq, payload });
    }

    fn send_nack(&mut self, now: Instant) {
        let mut gaps = Vec::new();
        while let Some(&(t, s)) = self.gaps.front() {
            if t > now {
                break;
            }
            self.gaps.pop_front();
            if s >= self.next_expected && !self.buffer.contains_key(&s) {
                gaps.push(s);
            }
        }
        if gaps.is_empty() {
            return;
        }
        let mut n = Packet::new(self.session_id, Kind::Nack, &self.name);
        n.base = self.next_expected;
        n.seqs = gaps;
        self.push(&n);
        self.stats.nacks_sent += 1;
    }

    fn send_ack(&mut self) {
        self.send_ack_flags(0);
    }

    fn send_ack_flags(&mut self, flags: u16) {
        let mut a = Packet::new(self.session_id, Kind::Ack, &self.name);
        a.flags = flags;
        a.base = self.next_expected;
        a.seqs = self.buffer.keys().copied().collect();
        if flags & FLAG_CLOSE_ACK != 0 {
            self.close_acked = Some(self.next_expected);
        }
        self.push(&a);
        self.stats.acks_sent += 1;
        self.unacked = 0;
        self.ack_deadline = None;
    }

    fn push(&mut self, p: &Packet) {
        if let Ok(b) = p.encode() {
            self.transmits.push_back(b);
        }
    }
}
