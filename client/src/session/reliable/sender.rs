//! The sending half: numbering, the window, retransmission (RTO, RACK-like
//! loss detection, tail-loss probes) and the retry budget.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::config::{Config, FLAG_ACK_NOW, check_name, check_session};
use crate::session::packet::{FLAG_RETRANSMIT, Kind, Packet};
use crate::session::{SessionError, SessionEvent, backoff};

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
