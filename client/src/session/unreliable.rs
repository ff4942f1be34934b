//! Point-to-point best-effort mode: numbered data packets, no acks, no
//! retransmissions, no timers. The receiver delivers on arrival (not
//! reordered) and drops duplicates it still remembers.

use std::collections::{BTreeSet, VecDeque};
use std::time::Instant;

use bytes::Bytes;

use super::packet::{FLAG_UNRELIABLE, Kind, MAX_PACKET, MAX_SENDER, Packet};
use super::reliable::{check_name, check_session};
use super::{SessionError, SessionEvent};

/// How many recent seqs the receiver remembers for duplicate suppression.
pub const DEDUP_WINDOW: usize = 4096;

/// The sending half of a best-effort session.
#[derive(Debug)]
pub struct Sender {
    session_id: u64,
    name: String,
    next_seq: u64,
    max_payload: usize,
    transmits: VecDeque<Vec<u8>>,
}

impl Sender {
    pub fn new(session_id: u64, name: &str, max_payload: usize) -> Result<Sender, SessionError> {
        check_name(name)?;
        let max_payload = max_payload.min(MAX_PACKET - 2 * MAX_SENDER);
        Ok(Sender {
            session_id,
            name: name.to_owned(),
            next_seq: 0,
            max_payload,
            transmits: VecDeque::new(),
        })
    }

    /// Queues one packet; never back-pressures and never retransmits.
    pub fn handle_send(&mut self, payload: Bytes, _now: Instant) -> Result<u64, SessionError> {
        if payload.len() > self.max_payload {
            return Err(SessionError::PayloadTooLarge {
                len: payload.len(),
                max: self.max_payload,
            });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut p = Packet::new(self.session_id, Kind::Data, &self.name);
        p.seq = seq;
        p.base = seq;
        p.flags = FLAG_UNRELIABLE;
        p.body = payload;
        self.transmits.push_back(p.encode()?);
        Ok(seq)
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    /// Always `None`: best effort has no timers.
    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    pub fn handle_timeout(&mut self, _now: Instant) {}

    /// The seq the next message will get (= messages sent).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

/// The receiving half of a best-effort session.
#[derive(Debug)]
pub struct Receiver {
    session_id: u64,
    seen: BTreeSet<u64>,
    events: VecDeque<SessionEvent>,
    duplicates: u64,
}

impl Receiver {
    pub fn new(session_id: u64) -> Receiver {
        Receiver {
            session_id,
            seen: BTreeSet::new(),
            events: VecDeque::new(),
            duplicates: 0,
        }
    }

    pub fn handle_packet(&mut self, p: &Packet, _now: Instant) -> Result<(), SessionError> {
        check_session(self.session_id, p)?;
        match p.kind {
            Kind::Data => {
                let oldest = self.seen.first().copied();
                let stale = self.seen.len() >= DEDUP_WINDOW && oldest.is_some_and(|o| p.seq < o);
                if stale || !self.seen.insert(p.seq) {
                    self.duplicates += 1;
                    return Ok(());
                }
                if self.seen.len() > DEDUP_WINDOW {
                    self.seen.pop_first();
                }
                self.events.push_back(SessionEvent::Delivered {
                    seq: p.seq,
                    payload: p.body.clone(),
                });
                Ok(())
            }
            Kind::Close => {
                self.events.push_back(SessionEvent::PeerClosed {
                    sender: p.sender.clone(),
                    next_seq: p.base,
                });
                Ok(())
            }
            kind => Err(SessionError::UnexpectedKind {
                kind,
                role: "unreliable receiver",
            }),
        }
    }

    pub fn handle_datagram(&mut self, bytes: &[u8], now: Instant) -> Result<(), SessionError> {
        let p = Packet::decode(bytes)?;
        self.handle_packet(&p, now)
    }

    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// Always `None`: best effort has no timers.
    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    pub fn handle_timeout(&mut self, _now: Instant) {}

    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }
}
