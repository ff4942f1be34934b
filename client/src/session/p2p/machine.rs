//! A bound point-to-point session as a sans-IO machine: both directions'
//! delivery machines ([`reliable`] or [`unreliable`]), the close protocol,
//! the responder's MLS join, and the rules for when the session is over.
//!
//! Inputs are `handle_*` calls (a packet from the mux, an application send
//! or close, every handle dropped, a timer, a failed publish), each with the
//! current `now`; outputs are drained with `poll_*`: packets to publish,
//! events for the application, the next deadline, the outcomes of a parked
//! send and of a close. [`P2pMachine::is_done`] says the session is over:
//! the driver then hands the application what [`P2pMachine::poll_event`]
//! still has (the final event last) and stops. The machine reads no clock
//! and does no I/O, so the lossy-link simulator of the tests drives it in
//! virtual time.
//!
//! Closing: `Close` carries the number of messages sent and the lowest one
//! unresolved; the closer keeps retransmitting what is unacknowledged (and
//! `Close` itself) until the peer's close-ack says everything arrived, or
//! the retry budget runs out. The other end reports
//! [`P2pEvent::PeerClosed`] only once everything before the close was
//! delivered or reported lost. Once a close is complete, each end lingers
//! until it has heard nothing from the peer for [`P2pConfig::linger`]: the
//! closee answers retransmitted `Close`s (its close-ack may have been
//! lost), the closer takes what the peer had in flight before it learnt of
//! the close, and when both close at once each waits for the other's close
//! to complete too. Ending at once instead would answer the peer's next
//! packet with "no such session" and fail a session that was ending well.
//!
//! Liveness: while the session is open, a side that has sent the peer
//! nothing for [`P2pConfig::keep_alive`] sends a keep-alive (an `Ack`
//! flagged [`reliable::FLAG_KEEP_ALIVE`]), and a side that has heard nothing
//! from the peer for [`P2pConfig::idle_timeout`] fails the session with
//! [`SessionError::IdleTimeout`]: a peer that vanishes without a word (no
//! close, no node error) does not hold the session forever.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use slim_wire::{ErrorCode, Mode, Name};

use super::mls::MlsState;
use super::types::{ACCEPT_JOINED, OPEN_MLS, P2pConfig, P2pEvent, P2pStats, Reliability, Transmit};
use crate::session::mux::{Incoming, UNREACHABLE_FROM_NODE};
use crate::session::packet::{Kind, Packet};
use crate::session::reliable::{self, ReceiverStats, SenderStats};
use crate::session::{SessionError, SessionEvent, unreliable};

/// `Close` retransmissions, once nothing is in flight, before the closer
/// stops waiting for the peer's answer.
pub const CLOSE_ATTEMPTS: u32 = 6;

// One per session, never moved after the session starts: boxing the larger
// variant would only add an indirection on every packet.
#[allow(clippy::large_enum_variant)]
enum Inner {
    Reliable(reliable::Sender, reliable::Receiver),
    Unreliable(unreliable::Sender, unreliable::Receiver),
}

struct Closing {
    /// The peer acknowledged our `Close` with everything we sent resolved
    /// (or we stopped waiting).
    finished: bool,
    next_rtx: Instant,
    /// `Close` retransmissions since nothing was left in flight, not
    /// counting those made while the node said the peer was unreachable.
    attempts: u32,
    /// `Close` retransmissions in the current absence of the peer (they
    /// back off like the others, but cost no attempt).
    held: u32,
    started: Instant,
}

/// What became of an application send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendStatus {
    /// Queued as message `seq`.
    Sent(u64),
    /// The reliable window is full: held until acknowledgements make room;
    /// [`P2pMachine::poll_parked`] tells its fate. Take no further sends
    /// while one is parked ([`P2pMachine::accepts_sends`]).
    Parked,
    /// Not queued.
    Refused(SessionError),
}

#[derive(Default)]
struct Counters {
    foreign: u64,
    rejected: u64,
    undecryptable: u64,
    overflow: u64,
}

/// One point-to-point session once bound to its peer.
pub struct P2pMachine {
    id: u64,
    me: String,
    peer: Name,
    peer_identity: Option<Arc<str>>,
    inner: Inner,
    /// A send waiting for window room (as ciphertext under MLS: never
    /// encrypted twice).
    parked: Option<Bytes>,
    parked_outcome: Option<Result<u64, SessionError>>,
    closing: Option<Closing>,
    close_outcome: Option<Result<(), SessionError>>,
    /// The peer's `next_seq` once it closed, until we have delivered up to it.
    peer_closed: Option<u64>,
    /// The session is over (the peer's close is complete, or it failed):
    /// sends are refused.
    ended: bool,
    /// `PeerClosed` was queued: nothing follows it.
    final_sent: bool,
    /// `Failed`, handed out after everything queued before it.
    final_event: Option<P2pEvent>,
    /// Every application handle is gone.
    handles_gone: bool,
    /// Once a close (ours or the peer's) is complete: until when to stay,
    /// answering retransmissions and taking what the peer still had in
    /// flight. Every packet from the peer pushes it back.
    linger_until: Option<Instant>,
    done: bool,
    /// The responder's `Accept`, resent for duplicate `Open`s.
    accept: Option<Vec<u8>>,
    /// The responder's "joined" `Accept`, resent for duplicate Welcomes.
    joined: Option<Vec<u8>>,
    mls: MlsState,
    /// A responder waiting for the Welcome gives up at this instant.
    mls_deadline: Option<Instant>,
    /// Since when the node has had no route to the peer (cleared by any
    /// packet from it), and what it said.
    absent: Option<(Instant, SessionError)>,
    absent_grace: Duration,
    linger: Duration,
    close_rto: Duration,
    events: VecDeque<P2pEvent>,
    /// Packets the machine builds itself (close retransmissions, answers to
    /// duplicates); the delivery machines queue their own.
    extra: VecDeque<Transmit>,
    counters: Counters,
    keep_alive: Option<Duration>,
    idle_timeout: Option<Duration>,
    /// The last packet from the peer (any kind but the node's `Unreachable`).
    last_heard: Instant,
    /// When we last sent the peer a packet. `poll_transmit` takes no clock:
    /// what it hands out goes out right after the input that queued it, so
    /// `sent_since` dates it to `last_input`.
    last_sent: Instant,
    sent_since: bool,
    last_input: Instant,
}

impl std::fmt::Debug for P2pMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("P2pMachine")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .field("ended", &self.ended)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl P2pMachine {
    /// A session of `id` bound to `peer`; `accept` (responder) is queued as
    /// the first packet and resent for duplicate `Open`s.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: u64,
        me: &str,
        (peer, peer_identity): (Name, Option<Arc<str>>),
        reliability: Reliability,
        cfg: &P2pConfig,
        accept: Option<Vec<u8>>,
        mls: MlsState,
        now: Instant,
    ) -> Result<P2pMachine, SessionError> {
        let (inner, close_rto) = match reliability {
            Reliability::Reliable(c) => {
                let rto = c.initial_rto;
                (
                    Inner::Reliable(
                        reliable::Sender::new(id, me, c.clone())?,
                        reliable::Receiver::new(id, me, c)?,
                    ),
                    rto,
                )
            }
            Reliability::Unreliable { max_payload } => (
                Inner::Unreliable(
                    unreliable::Sender::new(id, me, max_payload)?,
                    unreliable::Receiver::new(id),
                ),
                Duration::ZERO,
            ),
        };
        let mls_deadline = matches!(mls, MlsState::Pending(_))
            .then(|| now + cfg.open_timeout * cfg.open_attempts.max(1));
        let mut extra = VecDeque::new();
        if let Some(a) = &accept {
            extra.push_back(Transmit {
                to: peer.clone(),
                mode: Mode::Unicast,
                bytes: a.clone(),
                tracked: false,
            });
        }
        Ok(P2pMachine {
            id,
            me: me.to_owned(),
            peer,
            peer_identity,
            inner,
            parked: None,
            parked_outcome: None,
            closing: None,
            close_outcome: None,
            peer_closed: None,
            ended: false,
            final_sent: false,
            final_event: None,
            handles_gone: false,
            linger_until: None,
            done: false,
            accept,
            joined: None,
            mls,
            mls_deadline,
            absent: None,
            absent_grace: cfg.peer_absent_grace,
            linger: cfg.linger,
            close_rto,
            events: VecDeque::new(),
            extra,
            counters: Counters::default(),
            keep_alive: cfg.keep_alive,
            idle_timeout: cfg.idle_timeout,
            last_heard: now,
            last_sent: now,
            sent_since: false,
            last_input: now,
        })
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The peer's full name.
    pub fn peer(&self) -> &Name {
        &self.peer
    }

    /// The peer's SPIFFE ID as authenticated by its node.
    pub fn peer_identity(&self) -> Option<&Arc<str>> {
        self.peer_identity.as_ref()
    }

    pub fn is_reliable(&self) -> bool {
        matches!(self.inner, Inner::Reliable(..))
    }

    /// Whether payloads are MLS-encrypted end to end.
    pub fn is_mls(&self) -> bool {
        !matches!(self.mls, MlsState::Off)
    }

    /// The session is over: feed it nothing more; hand the application what
    /// [`P2pMachine::poll_event`] still returns.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Whether to take the application's next command: not while a send is
    /// parked (sends keep their order), nor while a responder waits for the
    /// MLS Welcome (it cannot encrypt yet).
    pub fn accepts_sends(&self) -> bool {
        self.parked.is_none() && !matches!(self.mls, MlsState::Pending(_))
    }

    // ---- inputs ----

    /// A packet the mux delivered for this session.
    pub fn handle_packet(&mut self, inc: Incoming, now: Instant) {
        if self.done {
            return;
        }
        self.touch(now);
        self.on_packet(inc, now);
        self.settle(now);
    }

    /// The application sends `payload`.
    pub fn handle_send(&mut self, payload: Bytes, now: Instant) -> SendStatus {
        self.touch(now);
        if self.done || self.ended || self.peer_closed.is_some() || self.closing.is_some() {
            return SendStatus::Refused(SessionError::Closed);
        }
        let payload = match self.mls.seal(payload) {
            Ok(p) => p,
            Err(e) => return SendStatus::Refused(e),
        };
        let r = match &mut self.inner {
            Inner::Reliable(s, _) => s.handle_send(payload.clone(), now),
            Inner::Unreliable(s, _) => s.handle_send(payload.clone(), now),
        };
        match r {
            Ok(seq) => SendStatus::Sent(seq),
            Err(SessionError::WindowFull { .. }) if self.parked.is_none() => {
                self.parked = Some(payload);
                SendStatus::Parked
            }
            Err(e) => SendStatus::Refused(e),
        }
    }

    /// The application closes the session. [`P2pMachine::poll_close`] tells
    /// when it is complete (a close already in progress answers this one
    /// too).
    pub fn handle_close(&mut self, now: Instant) {
        if self.done || self.ended || self.closing.as_ref().is_some_and(|c| c.finished) {
            self.close_outcome = Some(Ok(()));
            return;
        }
        if self.closing.is_none() {
            self.start_close(now);
            self.settle(now);
        }
    }

    /// Every application handle was dropped: close gracefully, or end once a
    /// close in progress settles.
    pub fn handle_handles_gone(&mut self, now: Instant) {
        if self.done || self.handles_gone {
            return;
        }
        self.handles_gone = true;
        if self.closing.is_some() {
            // A close in progress (or done) ends the session.
        } else if self.peer_closed.is_none() && !self.ended {
            self.start_close(now);
        } else if self.linger_until.is_none() {
            // The peer closed (its close incomplete) or the session failed:
            // nobody left to tell. A linger under way still runs (the peer
            // may need our close-ack again).
            self.done = true;
        }
        self.settle(now);
    }

    /// Timers: retransmissions, acks, NACKs, the close, the linger, the MLS
    /// Welcome deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.done {
            return;
        }
        self.touch(now);
        if self.end_time().is_some_and(|t| t <= now) {
            self.done = true;
            return;
        }
        if matches!(self.mls, MlsState::Pending(_)) && self.mls_deadline.is_some_and(|t| t <= now) {
            self.fail(
                SessionError::Mls("no Welcome from the initiator".into()),
                now,
            );
            return;
        }
        if let Inner::Reliable(s, r) = &mut self.inner {
            s.handle_timeout(now);
            r.handle_timeout(now);
        }
        // Messages given up on free window room for a parked send, and may
        // end the session (given up while the peer is absent).
        self.settle(now);
        self.close_timer(now);
        self.liveness_timer(now);
    }

    /// A packet from the peer that the driver holds back (the application
    /// is behind on its events) still shows the peer is alive.
    pub fn handle_held(&mut self, inc: &Incoming, now: Instant) {
        if inc.from == self.peer && inc.packet.kind != Kind::Unreachable {
            self.last_heard = self.last_heard.max(now);
        }
    }

    /// Publishing failed (the client is closed): the session fails.
    pub fn handle_publish_error(&mut self, e: SessionError, now: Instant) {
        self.fail(e, now);
    }

    /// A peer packet was dropped because the application's event queue
    /// stayed full (the driver counts; the peer retransmits).
    pub fn handle_overflow(&mut self) {
        self.counters.overflow += 1;
    }

    // ---- outputs ----

    /// The next packet to publish.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let (b, tracked) = match &mut self.inner {
            // Acks: losing one is harmless, and a peer gone is seen by its data.
            Inner::Reliable(s, r) => match s.poll_transmit() {
                Some(b) => (Some(b), true),
                None => (r.poll_transmit(), false),
            },
            Inner::Unreliable(s, _) => (s.poll_transmit(), true),
        };
        let t = match b {
            Some(bytes) => Some(Transmit {
                to: self.peer.clone(),
                mode: Mode::Unicast,
                bytes,
                tracked,
            }),
            None => self.extra.pop_front(),
        };
        if t.is_some() {
            self.sent_since = true;
        }
        t
    }

    /// The next event for the application; after [`P2pMachine::is_done`]
    /// the final one (`Failed`) comes last.
    pub fn poll_event(&mut self) -> Option<P2pEvent> {
        if let Some(ev) = self.events.pop_front() {
            return Some(ev);
        }
        if self.done {
            return self.final_event.take();
        }
        None
    }

    /// When [`P2pMachine::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        let machines = match &self.inner {
            Inner::Reliable(s, r) => [s.poll_timeout(), r.poll_timeout()],
            Inner::Unreliable(..) => [None, None],
        };
        let close = self
            .closing
            .as_ref()
            .filter(|c| !c.finished)
            .map(|c| c.next_rtx);
        let welcome = self
            .mls_deadline
            .filter(|_| matches!(self.mls, MlsState::Pending(_)));
        machines
            .into_iter()
            .chain([close, self.end_time(), welcome])
            .chain(self.liveness_deadlines())
            .flatten()
            .min()
    }

    /// The parked send's outcome, once decided.
    pub fn poll_parked(&mut self) -> Option<Result<u64, SessionError>> {
        self.parked_outcome.take()
    }

    /// The close's outcome, once decided.
    pub fn poll_close(&mut self) -> Option<Result<(), SessionError>> {
        self.close_outcome.take()
    }

    /// Both directions' counters.
    pub fn stats(&self) -> P2pStats {
        let (sender, receiver) = match &self.inner {
            Inner::Reliable(s, r) => (s.stats().clone(), r.stats().clone()),
            Inner::Unreliable(s, r) => (
                SenderStats {
                    sent: s.next_seq(),
                    ..SenderStats::default()
                },
                ReceiverStats {
                    duplicates: r.duplicates(),
                    ..ReceiverStats::default()
                },
            ),
        };
        P2pStats {
            sender,
            receiver,
            foreign: self.counters.foreign,
            rejected: self.counters.rejected,
            undecryptable: self.counters.undecryptable,
            overflow: self.counters.overflow,
        }
    }

    // ---- internals ----

    /// Dates the packets drained since the last input (they went out right
    /// after it), and records this input.
    fn touch(&mut self, now: Instant) {
        if self.sent_since {
            self.sent_since = false;
            self.last_sent = self.last_sent.max(self.last_input);
        }
        self.last_input = self.last_input.max(now);
    }

    fn sent_at(&self) -> Instant {
        if self.sent_since {
            self.last_sent.max(self.last_input)
        } else {
            self.last_sent
        }
    }

    /// Keep-alives and the idle timeout run while the session is open: not
    /// during a close or the linger (they have their own timers and retry
    /// budgets), nor while a responder waits for the MLS Welcome.
    fn liveness_on(&self) -> bool {
        !self.done
            && !self.ended
            && self.closing.is_none()
            && self.linger_until.is_none()
            && self.peer_closed.is_none()
            && !matches!(self.mls, MlsState::Pending(_))
    }

    /// The next keep-alive and the idle deadline.
    fn liveness_deadlines(&self) -> [Option<Instant>; 2] {
        if !self.liveness_on() {
            return [None, None];
        }
        [
            self.keep_alive.map(|k| self.sent_at() + k),
            self.idle_timeout.map(|i| self.last_heard + i),
        ]
    }

    fn liveness_timer(&mut self, now: Instant) {
        if !self.liveness_on() {
            return;
        }
        if let Some(idle) = self.idle_timeout
            && now.duration_since(self.last_heard) >= idle
        {
            self.fail(SessionError::IdleTimeout(idle), now);
            return;
        }
        let Some(k) = self.keep_alive else { return };
        if now.duration_since(self.last_sent) < k {
            return;
        }
        let mut p = Packet::new(self.id, Kind::Ack, &self.me);
        p.flags = reliable::FLAG_KEEP_ALIVE;
        if let Inner::Reliable(_, r) = &self.inner {
            // Where our receiver is: a plain cumulative ack to the peer.
            p.base = r.next_expected();
        }
        if let Ok(b) = p.encode() {
            // Tracked: if the node has no route to the peer any more, its
            // refusal starts the `peer_absent_grace` clock.
            self.send_extra(b, self.peer.clone(), true);
            self.last_sent = now;
        }
    }

    /// Records whether the node has no route to the peer (since when), and
    /// tells the sender: until the grace ends, its retransmissions cannot
    /// reach the peer and must not use up their retry budget.
    fn set_absent(&mut self, absent: Option<(Instant, SessionError)>) {
        let until = absent.as_ref().map(|(t, _)| *t + self.absent_grace);
        if let Inner::Reliable(s, _) = &mut self.inner {
            s.set_peer_unreachable(until);
        }
        self.absent = absent;
    }

    /// The node says the peer is unreachable, and the grace has not run out.
    fn peer_held(&self, now: Instant) -> bool {
        self.absent
            .as_ref()
            .is_some_and(|(t, _)| now < *t + self.absent_grace)
    }

    fn send_extra(&mut self, bytes: Vec<u8>, to: Name, tracked: bool) {
        self.extra.push_back(Transmit {
            to,
            mode: Mode::Unicast,
            bytes,
            tracked,
        });
    }

    /// Moves the delivery machines' events to the application's queue (MLS
    /// decrypted), retries a parked send, and completes the peer's close
    /// once everything before it is delivered or reported lost.
    fn settle(&mut self, now: Instant) {
        loop {
            let ev = match &mut self.inner {
                Inner::Reliable(s, r) => s.poll_event().or_else(|| r.poll_event()),
                Inner::Unreliable(_, r) => r.poll_event(),
            };
            let Some(ev) = ev else { break };
            match ev {
                SessionEvent::Delivered { seq, payload } => self.deliver(seq, payload),
                SessionEvent::DeliveryFailed { seq, attempts } => {
                    self.emit(P2pEvent::DeliveryFailed { seq, attempts });
                    // Retries exhausted while the node says the peer is not
                    // there: it is gone, not just slow.
                    if let Some((_, e)) = self.absent.clone() {
                        self.set_absent(None);
                        self.fail(e, now);
                    }
                }
                SessionEvent::Lost { seqs, .. } => self.emit(P2pEvent::Lost { seqs }),
                SessionEvent::PeerClosed { next_seq, .. } => {
                    if self.peer_closed.is_none() {
                        self.peer_closed = Some(next_seq);
                    }
                }
                SessionEvent::GroupDelivered { .. } => self.counters.rejected += 1,
            }
        }
        self.retry_parked(now);
        if self.ended || self.done {
            return;
        }
        let Some(sent) = self.peer_closed else { return };
        let complete = match &self.inner {
            Inner::Reliable(_, r) => r.next_expected() >= sent,
            Inner::Unreliable(..) => true,
        };
        if !complete {
            return;
        }
        if self.parked.take().is_some() {
            self.parked_outcome = Some(Err(SessionError::Closed));
        }
        if let Inner::Reliable(_, r) = &mut self.inner {
            // Published before `PeerClosed` reaches the application, which
            // may end right after it.
            r.confirm_close();
        }
        self.emit(P2pEvent::PeerClosed { sent });
        self.final_sent = true;
        self.ended = true;
        // Our close-ack may be lost: answer its retransmitted `Close` for a
        // while (and, if our own close is still settling, until it is done).
        self.linger(now);
    }

    /// Stays `linger` longer (from now) once a close is complete.
    fn linger(&mut self, now: Instant) {
        let until = now + self.linger;
        self.linger_until = Some(self.linger_until.map_or(until, |t| t.max(until)));
    }

    /// When the session is over: at the end of the linger, and never while
    /// our own close is still settling.
    fn end_time(&self) -> Option<Instant> {
        if self.closing.as_ref().is_some_and(|c| !c.finished) {
            return None;
        }
        self.linger_until
    }

    fn deliver(&mut self, seq: u64, payload: Bytes) {
        match self.mls.open(payload, self.peer_identity.as_deref()) {
            Ok(payload) => self.emit(P2pEvent::Message { seq, payload }),
            Err(reason) => {
                self.counters.undecryptable += 1;
                self.emit(P2pEvent::Rejected { seq, reason });
            }
        }
    }

    fn emit(&mut self, ev: P2pEvent) {
        // Only our own `DeliveryFailed`s can follow the peer's close, and
        // `PeerClosed` is final.
        if !self.final_sent {
            self.events.push_back(ev);
        }
    }

    fn retry_parked(&mut self, now: Instant) {
        let Some(payload) = self.parked.take() else {
            return;
        };
        let r = match &mut self.inner {
            Inner::Reliable(s, _) => s.handle_send(payload.clone(), now),
            Inner::Unreliable(s, _) => s.handle_send(payload.clone(), now),
        };
        match r {
            Err(SessionError::WindowFull { .. }) => self.parked = Some(payload),
            r => self.parked_outcome = Some(r),
        }
    }

    fn start_close(&mut self, now: Instant) {
        if self.parked.take().is_some() {
            self.parked_outcome = Some(Err(SessionError::Closed));
        }
        match &mut self.inner {
            Inner::Reliable(s, _) => {
                s.close();
                self.closing = Some(Closing {
                    finished: false,
                    next_rtx: now + self.close_rto,
                    attempts: 0,
                    held: 0,
                    started: now,
                });
            }
            Inner::Unreliable(s, _) => {
                // Best effort: one `Close`, no wait.
                let mut p = Packet::new(self.id, Kind::Close, &self.me);
                p.base = s.next_seq();
                p.seq = p.base;
                if let Ok(b) = p.encode() {
                    self.send_extra(b, self.peer.clone(), false);
                }
                self.closing = Some(Closing {
                    finished: true,
                    next_rtx: now,
                    attempts: 0,
                    held: 0,
                    started: now,
                });
                self.close_outcome = Some(Ok(()));
                self.done = true;
            }
        }
    }

    /// Retransmits `Close` (with the current base) while unacknowledged; gives
    /// up after [`CLOSE_ATTEMPTS`] once nothing else is in flight. The wait
    /// for messages in flight is the sender's own: each is acknowledged or
    /// given up on within its retry budget. While the node says the peer is
    /// unreachable (within the grace), neither the messages' retransmissions
    /// nor the `Close`'s count: a close during a partition waits for the
    /// peer to come back, up to `peer_absent_grace`.
    fn close_timer(&mut self, now: Instant) {
        let held = self.peer_held(now);
        let Inner::Reliable(s, _) = &self.inner else {
            return;
        };
        let (in_flight, base, next) = (s.in_flight(), s.base(), s.next_seq());
        let (failed, sent) = (s.stats().failed, s.stats().sent);
        // The sender's RTO, backed off by a lossy or dead path, paces the
        // `Close` too: at the initial RTO alone the close's attempts could
        // all be spent before one round trip of such a path.
        let rto = self.close_rto.max(s.rto());
        let max_rto = s.max_rto();
        let Some(c) = self.closing.as_mut().filter(|c| !c.finished) else {
            return;
        };
        if c.next_rtx > now {
            return;
        }
        if held {
            c.held += 1;
        } else {
            c.held = 0;
            if in_flight == 0 {
                c.attempts += 1;
                if c.attempts > CLOSE_ATTEMPTS {
                    let waited = now.saturating_duration_since(c.started);
                    let e = SessionError::CloseIncomplete {
                        unacked: failed + in_flight as u64,
                        sent,
                        waited,
                    };
                    tracing::warn!(session = self.id, peer = %self.peer, error = %e, "p2p close gave up");
                    self.finish_close(Err(e), now);
                    return;
                }
            }
        }
        let shift = (c.attempts + c.held).min(5);
        c.next_rtx = now + (rto * (1 << shift)).min(max_rto.max(self.close_rto));
        let mut p = Packet::new(self.id, Kind::Close, &self.me);
        p.base = next;
        p.seq = base;
        if let Ok(b) = p.encode() {
            self.send_extra(b, self.peer.clone(), true);
        }
    }

    fn finish_close(&mut self, result: Result<(), SessionError>, now: Instant) {
        let Some(c) = self.closing.as_mut().filter(|c| !c.finished) else {
            return;
        };
        c.finished = true;
        let ok = result.is_ok();
        self.close_outcome = Some(result);
        if ok {
            // The peer has everything we sent, but may still have its own
            // messages in flight (sent before it learnt of our close), or be
            // closing too and need our close-ack again: stay a while.
            self.linger(now);
        } else if self.linger_until.is_none() {
            // Given up on a peer that does not answer.
            self.done = true;
        }
    }

    fn fail(&mut self, e: SessionError, now: Instant) {
        if self.done {
            return;
        }
        tracing::debug!(session = self.id, peer = %self.peer, error = %e, "p2p session failed");
        if self.parked.take().is_some() {
            self.parked_outcome = Some(Err(e.clone()));
        }
        self.finish_close(Err(e.clone()), now);
        // After the peer's complete close, `PeerClosed` was final.
        if !self.ended {
            self.final_event = Some(P2pEvent::Failed(e));
            self.ended = true;
        }
        self.done = true;
    }

    fn on_packet(&mut self, inc: Incoming, now: Instant) {
        if inc.from != self.peer {
            if inc.packet.kind == Kind::Accept {
                // A retransmitted `Open` reached a second instance; we are
                // bound elsewhere, so end its copy of the session.
                let mut p = Packet::new(self.id, Kind::Close, &self.me);
                p.base = 0;
                if let Ok(b) = p.encode() {
                    self.send_extra(b, inc.from, false);
                }
            } else {
                self.counters.foreign += 1;
            }
            return;
        }
        let p = &inc.packet;
        if p.kind != Kind::Unreachable {
            self.set_absent(None);
            self.last_heard = self.last_heard.max(now);
            if self.linger_until.is_some() {
                // The peer is still talking to us: it still needs us.
                self.linger(now);
            }
        }
        let r = match (p.kind, &mut self.inner) {
            // Nothing to do but having heard it (above).
            (Kind::Ack, Inner::Unreliable(..)) if p.flags & reliable::FLAG_KEEP_ALIVE != 0 => {
                Ok(())
            }
            (Kind::Data | Kind::Close, Inner::Reliable(_, r)) => r.handle_packet(p, now),
            (Kind::Data | Kind::Close, Inner::Unreliable(_, r)) => r.handle_packet(p, now),
            (Kind::Ack | Kind::Nack, Inner::Reliable(s, _)) => {
                let r = s.handle_packet(p, now);
                let all_done = p.flags & reliable::FLAG_CLOSE_ACK != 0
                    && p.base >= s.next_seq()
                    && s.in_flight() == 0;
                if all_done {
                    self.finish_close(Ok(()), now);
                }
                r
            }
            (Kind::Open | Kind::OpenRpc, _) => {
                if let Some(a) = self.accept.clone() {
                    self.send_extra(a, self.peer.clone(), false);
                }
                Ok(())
            }
            (Kind::Accept, _) => Ok(()),
            (Kind::MlsWelcome, _) => {
                self.on_welcome(&inc, now);
                Ok(())
            }
            (Kind::Refuse, _) => {
                let reason = String::from_utf8_lossy(&p.body).into_owned();
                self.fail(SessionError::Refused(reason), now);
                Ok(())
            }
            (Kind::Unreachable, _)
                if p.flags & UNREACHABLE_FROM_NODE != 0
                    && p.seq == u64::from(ErrorCode::UNAUTHORIZED.0) =>
            {
                // The node's policy refused our publish: final, and not
                // something retransmission can repair.
                let reason = String::from_utf8_lossy(&p.body).into_owned();
                self.fail(SessionError::Denied(reason), now);
                Ok(())
            }
            (Kind::Unreachable, _) if p.flags & UNREACHABLE_FROM_NODE != 0 => {
                // The node has no route to the peer right now: it may be
                // reconnecting (our retransmissions will reach it), or gone:
                // still no route after the grace, with nothing heard from it.
                let e = SessionError::Unreachable {
                    code: u16::try_from(p.seq).unwrap_or(u16::MAX),
                    reason: String::from_utf8_lossy(&p.body).into_owned(),
                };
                match &self.absent {
                    None => self.set_absent(Some((now, e))),
                    Some((t, _)) if now.duration_since(*t) >= self.absent_grace => {
                        self.fail(e, now)
                    }
                    Some(_) => {}
                }
                Ok(())
            }
            (Kind::Unreachable, _) => {
                // Mid-session, "nobody there" means the peer lost the session.
                let e = SessionError::Unreachable {
                    code: u16::try_from(p.seq).unwrap_or(u16::MAX),
                    reason: String::from_utf8_lossy(&p.body).into_owned(),
                };
                self.fail(e, now);
                Ok(())
            }
            (kind, _) => Err(SessionError::UnexpectedKind {
                kind,
                role: "p2p session",
            }),
        };
        if let Err(e) = r {
            tracing::debug!(session = self.id, error = %e, "packet rejected");
            self.counters.rejected += 1;
        }
    }

    /// Responder: join the 2-member group from the initiator's Welcome,
    /// check that the initiator's MLS identity is the authenticated peer,
    /// and confirm (again, for a retransmitted Welcome).
    fn on_welcome(&mut self, inc: &Incoming, now: Instant) {
        if let Some(j) = self.joined.clone() {
            self.send_extra(j, self.peer.clone(), false);
            return;
        }
        if !matches!(self.mls, MlsState::Pending(_)) {
            self.counters.rejected += 1;
            return;
        }
        let joined = self
            .mls
            .join(&inc.packet.body, self.peer_identity.as_deref());
        match joined {
            Ok(()) => {
                let mut a = Packet::new(self.id, Kind::Accept, &self.me);
                a.flags = OPEN_MLS | ACCEPT_JOINED;
                if let Ok(b) = a.encode() {
                    self.send_extra(b.clone(), self.peer.clone(), false);
                    self.joined = Some(b);
                }
            }
            Err(e) => {
                let mut r = Packet::new(self.id, Kind::Refuse, &self.me);
                r.body = Bytes::from(e.to_string().into_bytes());
                if let Ok(b) = r.encode() {
                    self.send_extra(b, self.peer.clone(), false);
                }
                self.fail(e, now);
            }
        }
    }
}

#[cfg(test)]
mod tests;
