//! Group sessions: per-sender sequence numbers, gap detection and recovery.
//!
//! Each member sends with a [`SenderSeq`]: its messages are numbered from 0
//! and multicast to the group; the last `buffer` of them are kept to answer
//! retransmission requests (`RtxRequest`) with a unicast retransmission, or
//! with `Gone` for what was evicted. Every data packet carries the sender's
//! buffer floor (`base`), so receivers know what can no longer be asked for.
//!
//! Each member receives with one [`GapTracker`], which follows every sender
//! separately: it delivers each sender's messages in that sender's order
//! (`GroupDelivered`), asks the sender for missing ones at once and again with
//! backoff, accepts retransmissions, and reports what cannot be recovered —
//! evicted, answered `Gone`, unanswered after `max_requests` requests, or
//! pushed out by a full reorder buffer — as `Lost`, in stream order. Nothing
//! is skipped silently.
//!
//! Routing by kind (for the actor): `Data`/`Gone` go to the [`GapTracker`],
//! `RtxRequest` to the [`SenderSeq`]. The `from` argument is the sender's name
//! as routed by SLIM (the `Deliver` frame's `from`), which the packet's own
//! `sender` field must match.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::packet::{FLAG_RETRANSMIT, Kind, MAX_PACKET, MAX_SENDER, MAX_SEQS, Packet};
use super::reliable::{check_name, check_session};
use super::{SessionError, SessionEvent, backoff};

/// Group-mode tuning.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Sender: messages kept for retransmission.
    pub buffer: usize,
    /// Sender: largest payload.
    pub max_payload: usize,
    /// Receiver: most messages held per sender beyond a gap; a message further
    /// ahead forces the oldest gaps to be reported lost.
    pub max_out_of_order: usize,
    /// Receiver: wait before asking again for a missing message.
    pub rtx_timeout: Duration,
    /// Receiver: backoff cap.
    pub max_rtx_timeout: Duration,
    /// Receiver: requests per missing message before reporting it lost.
    pub max_requests: u32,
    /// Receiver: most senders tracked.
    pub max_senders: usize,
    /// Receiver: largest jump of a sender's base accepted in one packet.
    pub max_skip: u64,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            buffer: 1024,
            max_payload: 64 * 1024,
            max_out_of_order: 1024,
            rtx_timeout: Duration::from_millis(100),
            max_rtx_timeout: Duration::from_secs(2),
            max_requests: 5,
            max_senders: 4096,
            max_skip: 1 << 20,
        }
    }
}

impl GroupConfig {
    pub fn validate(&self) -> Result<(), SessionError> {
        let bad = |what: &str| {
            Err(SessionError::Malformed(format!(
                "invalid group config: {what}"
            )))
        };
        if self.buffer == 0 {
            return bad("buffer is 0");
        }
        if self.max_out_of_order == 0 {
            return bad("max_out_of_order is 0");
        }
        if self.max_requests == 0 {
            return bad("max_requests is 0");
        }
        if self.rtx_timeout.is_zero() {
            return bad("rtx_timeout is 0");
        }
        if self.max_payload > MAX_PACKET - 2 * MAX_SENDER {
            return bad("max_payload too large for a session packet");
        }
        Ok(())
    }
}

/// Where a group packet goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// Multicast to the group's channel.
    Group,
    /// Unicast to one member (full name).
    Member(String),
}

/// A packet to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub dest: Dest,
    pub packet: Vec<u8>,
}

/// Sender counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SenderSeqStats {
    pub sent: u64,
    pub retransmitted: u64,
    pub gone: u64,
    /// Newest messages multicast again as tail-loss probes.
    pub tail_probes: u64,
}

/// One member's sending side in a group.
#[derive(Debug)]
pub struct SenderSeq {
    cfg: GroupConfig,
    session_id: u64,
    name: String,
    next_seq: u64,
    /// Contiguous: `buffer[i]` has seq `next_seq - buffer.len() + i`.
    buffer: VecDeque<Bytes>,
    transmits: VecDeque<Transmit>,
    stats: SenderSeqStats,
}

impl SenderSeq {
    pub fn new(session_id: u64, name: &str, cfg: GroupConfig) -> Result<SenderSeq, SessionError> {
        cfg.validate()?;
        check_name(name)?;
        Ok(SenderSeq {
            cfg,
            session_id,
            name: name.to_owned(),
            next_seq: 0,
            buffer: VecDeque::new(),
            transmits: VecDeque::new(),
            stats: SenderSeqStats::default(),
        })
    }

    /// Numbers `payload`, multicasts it, and keeps it for retransmission
    /// (evicting the oldest kept message when the buffer is full).
    pub fn handle_send(&mut self, payload: Bytes, _now: Instant) -> Result<u64, SessionError> {
        if payload.len() > self.cfg.max_payload {
            return Err(SessionError::PayloadTooLarge {
                len: payload.len(),
                max: self.cfg.max_payload,
            });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.buffer.push_back(payload);
        if self.buffer.len() > self.cfg.buffer {
            self.buffer.pop_front();
        }
        self.stats.sent += 1;
        let p = self.data(seq, false);
        self.push(Dest::Group, &p);
        Ok(seq)
    }

    /// Handles a packet sent to us as a sender (`RtxRequest`).
    pub fn handle_packet(
        &mut self,
        from: &str,
        p: &Packet,
        _now: Instant,
    ) -> Result<(), SessionError> {
        check_session(self.session_id, p)?;
        check_from(from, p)?;
        if p.kind != Kind::RtxRequest {
            return Err(SessionError::UnexpectedKind {
                kind: p.kind,
                role: "group sender",
            });
        }
        let mut gone = Vec::new();
        let mut seen = BTreeSet::new();
        for &seq in &p.seqs {
            if seq >= self.next_seq || !seen.insert(seq) {
                continue; // never sent, or asked twice in one request
            }
            if seq >= self.base() {
                self.stats.retransmitted += 1;
                let d = self.data(seq, true);
                self.push(Dest::Member(from.to_owned()), &d);
            } else {
                gone.push(seq);
            }
        }
        if !gone.is_empty() {
            self.stats.gone += gone.len() as u64;
            let mut g = Packet::new(self.session_id, Kind::Gone, &self.name);
            g.base = self.base();
            g.seqs = gone;
            self.push(Dest::Member(from.to_owned()), &g);
        }
        Ok(())
    }

    pub fn handle_datagram(
        &mut self,
        from: &str,
        bytes: &[u8],
        now: Instant,
    ) -> Result<(), SessionError> {
        let p = Packet::decode(bytes)?;
        self.handle_packet(from, &p, now)
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Multicasts the newest kept message again, flagged as a
    /// retransmission: receivers that missed the end of a burst (it went
    /// into a connection that died, say) see the gap and ask for it; the
    /// others drop it as a duplicate. False if nothing is kept.
    pub fn probe_tail(&mut self) -> bool {
        if self.buffer.is_empty() {
            return false;
        }
        self.stats.tail_probes += 1;
        let p = self.data(self.next_seq - 1, true);
        self.push(Dest::Group, &p);
        true
    }

    /// Always `None`: the sending side has no timers.
    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    pub fn handle_timeout(&mut self, _now: Instant) {}

    /// Oldest seq still kept for retransmission.
    pub fn base(&self) -> u64 {
        self.next_seq - self.buffer.len() as u64
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn stats(&self) -> &SenderSeqStats {
        &self.stats
    }

    fn data(&self, seq: u64, retransmit: bool) -> Packet {
        let base = self.base();
        let mut p = Packet::new(self.session_id, Kind::Data, &self.name);
        p.seq = seq;
        p.base = base;
        p.flags = if retransmit { FLAG_RETRANSMIT } else { 0 };
        p.body = self
            .buffer
            .get((seq - base) as usize)
            .cloned()
            .unwrap_or_default();
        p
    }

    fn push(&mut self, dest: Dest, p: &Packet) {
        if let Ok(packet) = p.encode() {
            self.transmits.push_back(Transmit { dest, packet });
        }
    }
}

fn check_from(from: &str, p: &Packet) -> Result<(), SessionError> {
    if p.sender != from {
        return Err(SessionError::SenderMismatch {
            claimed: p.sender.clone(),
            from: from.to_owned(),
        });
    }
    Ok(())
}

#[derive(Debug)]
struct Missing {
    requests: u32,
    deadline: Instant,
}

#[derive(Debug)]
struct Peer {
    name: String,
    next_expected: u64,
    /// One past the highest seq seen or skipped.
    end: u64,
    buffer: BTreeMap<u64, Bytes>,
    missing: BTreeMap<u64, Missing>,
    /// Declared lost, not yet reached by the delivery cursor.
    lost: BTreeSet<u64>,
}

/// Receiver counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GapTrackerStats {
    pub delivered: u64,
    pub duplicates: u64,
    pub requests_sent: u64,
    pub recovered: u64,
    pub lost: u64,
}

/// One member's receiving side in a group: tracks every sender.
#[derive(Debug)]
pub struct GapTracker {
    cfg: GroupConfig,
    session_id: u64,
    name: String,
    index: HashMap<String, usize>,
    peers: Vec<Peer>,
    /// Slots of forgotten senders, reused before `peers` grows.
    free: Vec<usize>,
    /// `(deadline, peer index, seq)` of every missing message.
    timers: BTreeSet<(Instant, usize, u64)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<SessionEvent>,
    stats: GapTrackerStats,
}

impl GapTracker {
    /// `name` is our own name, put in retransmission requests.
    pub fn new(session_id: u64, name: &str, cfg: GroupConfig) -> Result<GapTracker, SessionError> {
        cfg.validate()?;
        check_name(name)?;
        Ok(GapTracker {
            cfg,
            session_id,
            name: name.to_owned(),
            index: HashMap::new(),
            peers: Vec::new(),
            free: Vec::new(),
            timers: BTreeSet::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: GapTrackerStats::default(),
        })
    }

    /// Starts following `sender` at `seq` (e.g. from the join point the
    /// moderator announced). Without it, a sender is followed from the first
    /// seq seen from it. Has no effect on a sender already followed.
    pub fn expect_from(&mut self, sender: &str, seq: u64) -> Result<(), SessionError> {
        if !self.index.contains_key(sender) {
            self.peer_index(sender, seq)?;
        }
        Ok(())
    }

    /// Stops following `sender` (it left the group): a later stream under the
    /// same name, e.g. the same member joining again with a fresh sender
    /// numbered from 0, is followed from scratch instead of being taken for
    /// duplicates. Its slot is reused.
    pub fn forget(&mut self, sender: &str) {
        let Some(i) = self.index.remove(sender) else {
            return;
        };
        let peer = &mut self.peers[i];
        for (&seq, m) in &peer.missing {
            self.timers.remove(&(m.deadline, i, seq));
        }
        peer.missing.clear();
        peer.buffer.clear();
        peer.lost.clear();
        peer.name.clear();
        self.free.push(i);
    }

    /// Handles a `Data` or `Gone` packet routed to us from `from`.
    pub fn handle_packet(
        &mut self,
        from: &str,
        p: &Packet,
        now: Instant,
    ) -> Result<(), SessionError> {
        check_session(self.session_id, p)?;
        check_from(from, p)?;
        match p.kind {
            Kind::Data => self.on_data(p, now),
            Kind::Gone => {
                let Some(&i) = self.index.get(from) else {
                    return Ok(());
                };
                self.check_skip(i, p.base)?;
                for &seq in &p.seqs {
                    self.declare_lost(i, seq);
                }
                self.apply_base(i, p.base);
                self.advance(i);
                Ok(())
            }
            kind => Err(SessionError::UnexpectedKind {
                kind,
                role: "group receiver",
            }),
        }
    }

    pub fn handle_datagram(
        &mut self,
        from: &str,
        bytes: &[u8],
        now: Instant,
    ) -> Result<(), SessionError> {
        let p = Packet::decode(bytes)?;
        self.handle_packet(from, &p, now)
    }

    /// Asks again for what is still missing, and gives up on what was asked
    /// for `max_requests` times.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut batches: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        while let Some(&(t, i, seq)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.pop_first();
            let max = self.cfg.max_requests;
            let Some(m) = self.peers[i].missing.get_mut(&seq) else {
                continue;
            };
            if m.requests >= max {
                self.declare_lost(i, seq);
            } else {
                m.requests += 1;
                m.deadline =
                    now + backoff(self.cfg.rtx_timeout, self.cfg.max_rtx_timeout, m.requests);
                self.timers.insert((m.deadline, i, seq));
                batches.entry(i).or_default().push(seq);
            }
        }
        for (i, seqs) in batches {
            self.request(i, seqs);
        }
        let touched: Vec<usize> = (0..self.peers.len())
            .filter(|&i| !self.peers[i].lost.is_empty())
            .collect();
        for i in touched {
            self.advance(i);
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|&(t, _, _)| t)
    }

    /// The next seq expected from `sender`, if it is followed.
    pub fn next_expected(&self, sender: &str) -> Option<u64> {
        self.index.get(sender).map(|&i| self.peers[i].next_expected)
    }

    /// Messages currently missing from `sender` (asked for, not yet resolved).
    pub fn missing(&self, sender: &str) -> Vec<u64> {
        self.index
            .get(sender)
            .map(|&i| self.peers[i].missing.keys().copied().collect())
            .unwrap_or_default()
    }

    pub fn stats(&self) -> &GapTrackerStats {
        &self.stats
    }

    fn peer_index(&mut self, sender: &str, start: u64) -> Result<usize, SessionError> {
        if let Some(&i) = self.index.get(sender) {
            return Ok(i);
        }
        let peer = Peer {
            name: sender.to_owned(),
            next_expected: start,
            end: start,
            buffer: BTreeMap::new(),
            missing: BTreeMap::new(),
            lost: BTreeSet::new(),
        };
        let i = if let Some(i) = self.free.pop() {
            self.peers[i] = peer;
            i
        } else {
            if self.peers.len() >= self.cfg.max_senders {
                return Err(SessionError::Malformed(format!(
                    "more than {} senders in the group",
                    self.cfg.max_senders
                )));
            }
            self.peers.push(peer);
            self.peers.len() - 1
        };
        self.index.insert(sender.to_owned(), i);
        Ok(i)
    }

    fn check_skip(&self, i: usize, base: u64) -> Result<(), SessionError> {
        let p = &self.peers[i];
        if base > p.next_expected && base - p.next_expected > self.cfg.max_skip {
            return Err(SessionError::Malformed(format!(
                "sender base {base} jumps more than {} past {}",
                self.cfg.max_skip, p.next_expected
            )));
        }
        Ok(())
    }

    fn on_data(&mut self, p: &Packet, now: Instant) -> Result<(), SessionError> {
        let i = self.peer_index(&p.sender, p.seq)?;
        self.check_skip(i, p.base)?;
        if p.seq > self.peers[i].next_expected
            && p.seq - self.peers[i].next_expected > self.cfg.max_skip
        {
            return Err(SessionError::Malformed(format!(
                "seq {} jumps too far ahead",
                p.seq
            )));
        }
        // Whatever the sender no longer keeps and we still miss is lost.
        self.apply_base(i, p.base);
        let seq = p.seq;
        let peer = &mut self.peers[i];
        if seq < peer.next_expected || peer.buffer.contains_key(&seq) {
            self.stats.duplicates += 1;
            self.advance(i);
            return Ok(());
        }
        // A message too far ahead: make room by giving up the oldest gaps.
        let limit = self.cfg.max_out_of_order as u64;
        if seq - peer.next_expected >= limit {
            let new_start = seq + 1 - limit;
            let gaps: Vec<u64> = (peer.next_expected..new_start.min(peer.end))
                .filter(|s| !peer.buffer.contains_key(s))
                .collect();
            for s in gaps {
                self.declare_lost(i, s);
            }
            let peer = &mut self.peers[i];
            if peer.end < new_start {
                // Never seen at all: lost too (the range is bounded by max_skip).
                let unseen: Vec<u64> = (peer.end..new_start).collect();
                peer.end = new_start;
                for s in unseen {
                    self.peers[i].lost.insert(s);
                }
            }
            self.advance(i);
        }
        let peer = &mut self.peers[i];
        if let Some(m) = peer.missing.remove(&seq) {
            self.timers.remove(&(m.deadline, i, seq));
            self.stats.recovered += 1;
        }
        // A late retransmission of something already declared lost but not
        // yet passed is still delivered.
        if peer.lost.remove(&seq) {
            self.stats.recovered += 1;
        }
        peer.buffer.insert(seq, p.body.clone());
        if seq > peer.end {
            let new: Vec<u64> = (peer.end..seq)
                .filter(|s| !peer.buffer.contains_key(s))
                .collect();
            let deadline = now + backoff(self.cfg.rtx_timeout, self.cfg.max_rtx_timeout, 1);
            for &s in &new {
                peer.missing.insert(
                    s,
                    Missing {
                        requests: 1,
                        deadline,
                    },
                );
                self.timers.insert((deadline, i, s));
            }
            if !new.is_empty() {
                self.request(i, new);
            }
        }
        let peer = &mut self.peers[i];
        peer.end = peer.end.max(seq + 1);
        self.advance(i);
        Ok(())
    }

    /// Declares every still-missing seq below the sender's `base` lost.
    fn apply_base(&mut self, i: usize, base: u64) {
        let peer = &mut self.peers[i];
        if base <= peer.next_expected {
            return;
        }
        let gone: Vec<u64> = peer.missing.range(..base).map(|(&s, _)| s).collect();
        for s in gone {
            self.declare_lost(i, s);
        }
        let peer = &mut self.peers[i];
        if peer.end < base {
            for s in peer.end..base {
                peer.lost.insert(s);
            }
            peer.end = base;
        }
    }

    fn declare_lost(&mut self, i: usize, seq: u64) {
        let peer = &mut self.peers[i];
        if seq < peer.next_expected || peer.buffer.contains_key(&seq) {
            return;
        }
        if let Some(m) = peer.missing.remove(&seq) {
            self.timers.remove(&(m.deadline, i, seq));
        }
        if seq < peer.end {
            peer.lost.insert(seq);
        }
    }

    fn request(&mut self, i: usize, seqs: Vec<u64>) {
        let to = self.peers[i].name.clone();
        for chunk in seqs.chunks(MAX_SEQS) {
            let mut r = Packet::new(self.session_id, Kind::RtxRequest, &self.name);
            r.seqs = chunk.to_vec();
            if let Ok(packet) = r.encode() {
                self.stats.requests_sent += 1;
                self.transmits.push_back(Transmit {
                    dest: Dest::Member(to.clone()),
                    packet,
                });
            }
        }
    }

    /// Moves the delivery cursor over delivered and lost messages, reporting
    /// runs of lost ones in order.
    fn advance(&mut self, i: usize) {
        let peer = &mut self.peers[i];
        let mut lost = Vec::new();
        loop {
            let s = peer.next_expected;
            if let Some(payload) = peer.buffer.remove(&s) {
                if !lost.is_empty() {
                    self.stats.lost += lost.len() as u64;
                    self.events.push_back(SessionEvent::Lost {
                        sender: peer.name.clone(),
                        seqs: std::mem::take(&mut lost),
                    });
                }
                self.stats.delivered += 1;
                self.events.push_back(SessionEvent::GroupDelivered {
                    sender: peer.name.clone(),
                    seq: s,
                    payload,
                });
            } else if peer.lost.remove(&s) {
                lost.push(s);
                if lost.len() >= MAX_SEQS {
                    self.stats.lost += lost.len() as u64;
                    self.events.push_back(SessionEvent::Lost {
                        sender: peer.name.clone(),
                        seqs: std::mem::take(&mut lost),
                    });
                }
            } else {
                break;
            }
            peer.next_expected += 1;
        }
        if !lost.is_empty() {
            self.stats.lost += lost.len() as u64;
            self.events.push_back(SessionEvent::Lost {
                sender: peer.name.clone(),
                seqs: lost,
            });
        }
    }
}
