//! Opening a session, sans-IO: the initiator's [`Opener`] (anycast `Open`
//! with bounded retransmission, then for MLS the Welcome until the responder
//! confirms) and the responder's answer ([`open_refusal`], [`accept_open`]).
//! Both end in a bound [`P2pMachine`].
//!
//! A lost `Open` or `Accept` is repaired by resending `Open`; the bound
//! responder answers a duplicate `Open` with its `Accept` again. Peer traffic
//! that overtakes a lost `Accept` (or a lost "joined" confirmation) binds the
//! session too and is handed to the machine first.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use slim_mls::Group;
use slim_wire::{ErrorCode, Mode, Name};

use super::machine::P2pMachine;
use super::mls::{self, MlsState, mls_err};
use super::types::{
    ACCEPT_JOINED, OPEN_MLS, OPEN_RELIABLE, P2pConfig, Reliability, Transmit, p2p_reliable,
};
use crate::session::SessionError;
use crate::session::mux::Incoming;
use crate::session::packet::{Kind, Packet};

enum Phase {
    /// `Open` sent (attempt n), waiting for an `Accept`.
    Opening,
    /// MLS: the Welcome sent to the instance that accepted, waiting for its
    /// "joined" confirmation.
    Welcoming {
        peer: Name,
        peer_identity: Option<Arc<str>>,
        group: Box<Group>,
        welcome: Vec<u8>,
    },
    Done,
}

/// The initiator's side of opening a session.
pub struct Opener {
    session_id: u64,
    me: String,
    service: Name,
    cfg: P2pConfig,
    open: Packet,
    /// Transmissions of the current phase's packet so far.
    attempt: u32,
    deadline: Instant,
    phase: Phase,
    /// Peer traffic that overtook a lost `Accept`; replayed once bound.
    early: Vec<Incoming>,
    transmits: VecDeque<Transmit>,
    outcome: Option<Result<P2pMachine, SessionError>>,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("session_id", &self.session_id)
            .field("service", &self.service)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl Opener {
    /// Opens session `session_id` (registered with the mux by the caller)
    /// from `me` to `service`; the first `Open` is queued.
    pub fn new(
        session_id: u64,
        me: &Name,
        service: &Name,
        cfg: &P2pConfig,
        now: Instant,
    ) -> Result<Opener, SessionError> {
        Self::with_kind(session_id, me, service, cfg, Kind::Open, now)
    }

    /// [`Opener::new`] with the opening kind (`OpenRpc` for RPC sessions).
    pub fn with_kind(
        session_id: u64,
        me: &Name,
        service: &Name,
        cfg: &P2pConfig,
        kind: Kind,
        now: Instant,
    ) -> Result<Opener, SessionError> {
        cfg.validate()?;
        let mut open = Packet::new(session_id, kind, me.as_str());
        if matches!(cfg.reliability, Reliability::Reliable(_)) {
            open.flags |= OPEN_RELIABLE;
        }
        if cfg.mls.is_some() {
            open.flags |= OPEN_MLS;
        }
        let mut o = Opener {
            session_id,
            me: me.as_str().to_owned(),
            service: service.clone(),
            cfg: cfg.clone(),
            open,
            attempt: 0,
            deadline: now,
            phase: Phase::Opening,
            early: Vec::new(),
            transmits: VecDeque::new(),
            outcome: None,
        };
        o.transmit(now)?;
        Ok(o)
    }

    fn attempts(&self) -> u32 {
        self.cfg.open_attempts.max(1)
    }

    /// (Re)sends the current phase's packet and restarts its timer.
    fn transmit(&mut self, now: Instant) -> Result<(), SessionError> {
        self.attempt += 1;
        let t = match &self.phase {
            Phase::Opening => {
                self.open.seq = u64::from(self.attempt);
                Transmit {
                    to: self.service.clone(),
                    mode: Mode::Anycast,
                    bytes: self.open.encode()?,
                    tracked: true,
                }
            }
            Phase::Welcoming { peer, welcome, .. } => Transmit {
                to: peer.clone(),
                mode: Mode::Unicast,
                bytes: welcome.clone(),
                tracked: true,
            },
            Phase::Done => return Ok(()),
        };
        self.transmits.push_back(t);
        self.deadline = now + self.cfg.open_timeout;
        Ok(())
    }

    fn finish(&mut self, r: Result<P2pMachine, SessionError>) {
        self.phase = Phase::Done;
        self.transmits.clear();
        self.outcome = Some(r);
    }

    /// A packet for the session being opened.
    pub fn handle_packet(&mut self, inc: Incoming, now: Instant) {
        match &self.phase {
            Phase::Opening => self.on_opening(inc, now),
            Phase::Welcoming { peer, .. } => {
                if inc.from == *peer {
                    self.on_welcoming(inc, now);
                }
            }
            Phase::Done => {}
        }
    }

    fn on_opening(&mut self, inc: Incoming, now: Instant) {
        let kind = inc.packet.kind;
        match kind {
            Kind::Accept if self.cfg.mls.is_some() => match self.mls_initiate(&inc) {
                Ok((group, welcome)) => {
                    self.phase = Phase::Welcoming {
                        peer: inc.from,
                        peer_identity: inc.from_identity,
                        group: Box::new(group),
                        welcome,
                    };
                    self.attempt = 0;
                    if let Err(e) = self.transmit(now) {
                        self.finish(Err(e));
                    }
                }
                Err(e) => self.finish(Err(e)),
            },
            Kind::Accept | Kind::Data | Kind::Ack | Kind::Nack if self.cfg.mls.is_none() => {
                let (peer, ident) = (inc.from.clone(), inc.from_identity.clone());
                if kind != Kind::Accept {
                    self.early.push(inc);
                }
                self.bind(peer, ident, MlsState::Off, now);
            }
            Kind::Refuse => self.finish(Err(SessionError::Refused(
                String::from_utf8_lossy(&inc.packet.body).into_owned(),
            ))),
            Kind::Unreachable => {
                let e = unreachable(&self.service, &inc.packet);
                self.finish(Err(e));
            }
            _ => {}
        }
    }

    fn on_welcoming(&mut self, inc: Incoming, now: Instant) {
        match inc.packet.kind {
            Kind::Accept if inc.packet.flags & ACCEPT_JOINED != 0 => self.bind_mls(now),
            // Its data can only follow its join (a lost confirmation).
            Kind::Data | Kind::Ack | Kind::Nack => {
                self.early.push(inc);
                self.bind_mls(now);
            }
            Kind::Refuse => self.finish(Err(SessionError::Refused(
                String::from_utf8_lossy(&inc.packet.body).into_owned(),
            ))),
            Kind::Unreachable => {
                let e = unreachable(&inc.from, &inc.packet);
                self.finish(Err(e));
            }
            _ => {}
        }
    }

    fn bind_mls(&mut self, now: Instant) {
        if let Phase::Welcoming {
            peer,
            peer_identity,
            group,
            ..
        } = std::mem::replace(&mut self.phase, Phase::Done)
        {
            self.bind(peer, peer_identity, MlsState::Ready(group), now);
        }
    }

    fn bind(&mut self, peer: Name, ident: Option<Arc<str>>, mls: MlsState, now: Instant) {
        let r = P2pMachine::new(
            self.session_id,
            &self.me,
            (peer, ident),
            self.cfg.reliability.clone(),
            &self.cfg,
            None,
            mls,
            now,
        )
        .map(|mut m| {
            for inc in self.early.drain(..) {
                m.handle_packet(inc, now);
            }
            m
        });
        self.finish(r);
    }

    /// Initiator side of the 2-member MLS group, from the responder's
    /// `Accept`: the group and the encoded Welcome packet.
    fn mls_initiate(&self, accept: &Incoming) -> Result<(Group, Vec<u8>), SessionError> {
        let Some(identity) = &self.cfg.mls else {
            return Err(SessionError::Mls("no MLS identity".into()));
        };
        if accept.packet.flags & OPEN_MLS == 0 {
            return Err(SessionError::Refused(
                "the responder did not agree to MLS".into(),
            ));
        }
        let (group, welcome) = mls::initiate(
            identity,
            self.session_id,
            &accept.packet.body,
            accept.from_identity.as_deref(),
        )?;
        let mut w = Packet::new(self.session_id, Kind::MlsWelcome, &self.me);
        w.body = Bytes::from(welcome);
        Ok((group, w.encode()?))
    }

    /// Resends the current packet when its answer is overdue; gives up after
    /// the configured attempts.
    pub fn handle_timeout(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Done) || now < self.deadline {
            return;
        }
        if self.attempt >= self.attempts() {
            let waited = self.cfg.open_timeout * self.attempts();
            self.finish(Err(SessionError::Timeout(waited)));
            return;
        }
        if let Err(e) = self.transmit(now) {
            self.finish(Err(e));
        }
    }

    /// The next packet to publish.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// When [`Opener::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!matches!(self.phase, Phase::Done)).then_some(self.deadline)
    }

    /// The bound session (its early packets already handled), or why the
    /// open failed; once.
    pub fn poll_outcome(&mut self) -> Option<Result<P2pMachine, SessionError>> {
        self.outcome.take()
    }
}

fn unreachable(to: &Name, p: &Packet) -> SessionError {
    let reason = String::from_utf8_lossy(&p.body).into_owned();
    let code = u16::try_from(p.seq).unwrap_or(u16::MAX);
    if code == ErrorCode::NO_ROUTE.0 {
        SessionError::NoResponder {
            name: to.to_string(),
            reason,
        }
    } else {
        SessionError::Unreachable { code, reason }
    }
}

fn reliability_for(flags: u16, cfg: &P2pConfig) -> Reliability {
    match (flags & OPEN_RELIABLE != 0, &cfg.reliability) {
        (true, Reliability::Reliable(c)) => Reliability::Reliable(c.clone()),
        (true, Reliability::Unreliable { .. }) => Reliability::Reliable(p2p_reliable()),
        (false, Reliability::Unreliable { max_payload }) => Reliability::Unreliable {
            max_payload: *max_payload,
        },
        (false, Reliability::Reliable(c)) => Reliability::Unreliable {
            max_payload: c.max_payload,
        },
    }
}

/// Responder, before registering the session: the `Refuse` to send if we
/// cannot serve this `Open` (MLS asked of a responder without an identity).
pub fn open_refusal(open: &Incoming, me: &Name, cfg: &P2pConfig) -> Option<Transmit> {
    let p = &open.packet;
    if cfg.mls.is_some() || p.flags & OPEN_MLS == 0 {
        return None;
    }
    let mut r = Packet::new(p.session_id, Kind::Refuse, me.as_str());
    r.body = Bytes::from_static(b"this responder does not do MLS");
    Some(Transmit {
        to: open.from.clone(),
        mode: Mode::Unicast,
        bytes: r.encode().ok()?,
        tracked: false,
    })
}

/// Responder, once the session's id is registered: the session bound to the
/// initiator, in the initiator's mode with our tuning for it, its `Accept`
/// queued as its first packet (and resent for duplicate `Open`s).
pub fn accept_open(
    open: &Incoming,
    me: &Name,
    cfg: &P2pConfig,
    now: Instant,
) -> Result<P2pMachine, SessionError> {
    let p = &open.packet;
    let mut accept = Packet::new(p.session_id, Kind::Accept, me.as_str());
    accept.flags = p.flags;
    let mls = match (&cfg.mls, p.flags & OPEN_MLS != 0) {
        (Some(id), true) => {
            // One key package per session; its private keys stay in the
            // identity's store until the initiator's Welcome consumes them.
            let kp = id.key_package().map_err(mls_err)?;
            accept.body = Bytes::from(kp);
            MlsState::Pending(id.clone())
        }
        (None, true) => {
            return Err(SessionError::Refused(
                "this responder does not do MLS".into(),
            ));
        }
        (_, false) => MlsState::Off,
    };
    P2pMachine::new(
        p.session_id,
        me.as_str(),
        (open.from.clone(), open.from_identity.clone()),
        reliability_for(p.flags, cfg),
        cfg,
        Some(accept.encode()?),
        mls,
        now,
    )
}
