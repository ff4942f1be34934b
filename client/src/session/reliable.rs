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
    /// Sender: first retransmission timeout.
    pub initial_rto: Duration,
    /// Sender: backoff cap.
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            window: 256,
            initial_rto: Duration::from_millis(200),
            max_rto: Duration::from_secs(5),
            max_retries: 6,
            max_payload: 64 * 1024,
            ack_every: 8,
            ack_delay: Duration::from_millis(10),
            max_out_of_order: 256,
            max_nack: 256,
            nack_delay: Duration::from_millis(20),
            max_skip: 1 << 20,
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
}

#[derive(Debug)]
struct InFlight {
    payload: Bytes,
    attempts: u32,
    deadline: Instant,
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
}

impl Sender {
    /// `name` is our own SLIM name, put in every packet.
    pub fn new(session_id: u64, name: &str, cfg: Config) -> Result<Sender, SessionError> {
        cfg.validate()?;
        check_name(name)?;
        Ok(Sender {
            cfg,
            session_id,
            name: name.to_owned(),
            next_seq: 0,
            in_flight: BTreeMap::new(),
            timers: BTreeSet::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            closed: false,
            stats: SenderStats::default(),
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
        let deadline = now + backoff(self.cfg.initial_rto, self.cfg.max_rto, 1);
        self.in_flight.insert(
            seq,
            InFlight {
                payload,
                attempts: 1,
                deadline,
            },
        );
        self.timers.insert((deadline, seq));
        self.stats.sent += 1;
        self.transmit(seq, false);
        Ok(seq)
    }

    /// Handles a packet from the receiver.
    pub fn handle_packet(&mut self, p: &Packet, now: Instant) -> Result<(), SessionError> {
        check_session(self.session_id, p)?;
        match p.kind {
            Kind::Ack => {
                self.on_ack(p.base, &p.seqs);
                Ok(())
            }
            Kind::Nack => {
                self.on_ack(p.base, &[]);
                for &seq in &p.seqs {
                    self.retransmit(seq, now);
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
        while let Some(&(t, seq)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.pop_first();
            let Some(f) = self.in_flight.get(&seq) else {
                continue;
            };
            if f.attempts > self.cfg.max_retries {
                let attempts = f.attempts;
                self.in_flight.remove(&seq);
                self.stats.failed += 1;
                self.events
                    .push_back(SessionEvent::DeliveryFailed { seq, attempts });
            } else {
                self.retransmit(seq, now);
            }
        }
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
        self.timers.first().map(|&(t, _)| t)
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

    fn on_ack(&mut self, cum: u64, sack: &[u64]) {
        let cum = cum.min(self.next_seq);
        while let Some((&seq, _)) = self.in_flight.first_key_value() {
            if seq >= cum {
                break;
            }
            self.resolve(seq);
        }
        for &seq in sack {
            self.resolve(seq);
        }
    }

    fn resolve(&mut self, seq: u64) {
        if let Some(f) = self.in_flight.remove(&seq) {
            self.timers.remove(&(f.deadline, seq));
            self.stats.acked += 1;
        }
    }

    /// Retransmits `seq` now if it is in flight and has retries left.
    fn retransmit(&mut self, seq: u64, now: Instant) {
        let Some(f) = self.in_flight.get_mut(&seq) else {
            return;
        };
        if f.attempts > self.cfg.max_retries {
            // Out of retries: the pending timer reports the failure.
            return;
        }
        self.timers.remove(&(f.deadline, seq));
        f.attempts += 1;
        f.deadline = now + backoff(self.cfg.initial_rto, self.cfg.max_rto, f.attempts);
        self.timers.insert((f.deadline, seq));
        self.stats.retransmitted += 1;
        self.transmit(seq, true);
    }

    fn transmit(&mut self, seq: u64, retransmit: bool) {
        let base = self.base();
        let Some(f) = self.in_flight.get(&seq) else {
            return;
        };
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
