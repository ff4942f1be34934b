//! The receiving half: in-order, exactly-once delivery, SACK acks, NACKs
//! for new gaps, and the close handshake's acknowledgement.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;

use super::config::{Config, FLAG_ACK_NOW, FLAG_CLOSE_ACK, check_name, check_session};
use crate::session::packet::{Kind, MAX_SEQS, Packet};
use crate::session::{SessionError, SessionEvent};

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
