//! The I/O around the sans-IO machines: the opener's and the responder's
//! publishes, and one task per bound session that selects over its inbox,
//! the application's commands and stats requests, room in the application's
//! event queue and the machine's next deadline, feeds the [`P2pMachine`] and
//! performs its outputs. The task decides nothing about the protocol; what
//! it owns is flow control towards the application:
//!
//! * Sends wait while the reliable window is full (one parked send, the
//!   command queue not read meanwhile).
//! * While the application's event queue is full, the peer's packets wait
//!   unprocessed (at most an inbox's worth; more are dropped and the peer
//!   retransmits), so a slow reader backs the peer off through the window
//!   instead of growing a queue. Acks for our own sends are handled
//!   regardless, and stats requests have their own channel: an application
//!   that never reads its events (e.g. its `DeliveryFailed`s) can still send
//!   and ask for counters.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::handshake::{Opener, accept_open, open_refusal};
use super::machine::{P2pMachine, SendStatus};
use super::types::{P2pConfig, P2pEvent, P2pStats, Transmit};
use crate::session::SessionError;
use crate::session::mux::{Inbox, Incoming, SessionMux};
use crate::session::packet::Kind;
use slim_wire::Name;

/// What the application's handles ask of the session task.
pub(crate) enum Cmd {
    Send(Bytes, oneshot::Sender<Result<u64, SessionError>>),
    Close(oneshot::Sender<Result<(), SessionError>>),
}

/// The application's ends of a running session task.
pub(crate) struct Ends {
    pub cmd: mpsc::Sender<Cmd>,
    /// Stats requests, on their own channel: answered even while a send
    /// waits for window room (which holds up the command queue).
    pub stats: mpsc::Sender<oneshot::Sender<P2pStats>>,
    /// The counters as the session task ended, for `stats` after the end.
    pub last_stats: Arc<Mutex<Option<P2pStats>>>,
    pub events: mpsc::Receiver<P2pEvent>,
}

async fn publish(mux: &SessionMux, session_id: u64, t: &Transmit) -> Result<(), SessionError> {
    if t.tracked {
        mux.publish(session_id, &t.to, t.mode, &t.bytes).await?;
    } else {
        mux.publish_silent(&t.to, t.mode, &t.bytes).await?;
    }
    Ok(())
}

/// Initiator: registers a fresh session id and runs the [`Opener`] until the
/// session is bound (or the open failed).
pub(crate) async fn open(
    mux: &SessionMux,
    service: &Name,
    cfg: &P2pConfig,
    kind: Kind,
) -> Result<(Inbox, P2pMachine), SessionError> {
    cfg.validate()?;
    let me = mux.client().name().clone();
    let (session_id, mut inbox) = loop {
        let id = rand::random::<u64>();
        match mux.register(id, cfg.inbox) {
            Ok(i) => break (id, i),
            Err(SessionError::AlreadyRegistered(_)) => continue,
            Err(e) => return Err(e),
        }
    };
    let mut opener = Opener::with_kind(session_id, &me, service, cfg, kind, Instant::now())?;
    loop {
        while let Some(t) = opener.poll_transmit() {
            publish(mux, session_id, &t).await?;
        }
        if let Some(outcome) = opener.poll_outcome() {
            return outcome.map(|m| (inbox, m));
        }
        let deadline = opener.poll_timeout();
        tokio::select! {
            inc = inbox.recv() => match inc {
                Some(inc) => opener.handle_packet(inc, Instant::now()),
                None => return Err(SessionError::Closed),
            },
            _ = sleep_until(deadline) => opener.handle_timeout(Instant::now()),
        }
    }
}

/// Responder: answers an `Open` the acceptor received. `None` if it was
/// refused, or was a duplicate of one whose session already answers it.
pub(crate) async fn answer(
    mux: &SessionMux,
    cfg: &P2pConfig,
    inc: Incoming,
) -> Result<Option<(Inbox, P2pMachine)>, SessionError> {
    let me = mux.client().name().clone();
    let id = inc.packet.session_id;
    if let Some(refuse) = open_refusal(&inc, &me, cfg) {
        publish(mux, id, &refuse).await?;
        return Ok(None);
    }
    let inbox = match mux.register(id, cfg.inbox) {
        Ok(i) => i,
        // A duplicate `Open` raced its session's registration: the session answers it.
        Err(SessionError::AlreadyRegistered(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    // The `Accept` is the machine's first packet, published by its task.
    let machine = accept_open(&inc, &me, cfg, Instant::now())?;
    Ok(Some((inbox, machine)))
}

/// Starts the task of a bound session.
pub(crate) fn spawn(inbox: Inbox, machine: P2pMachine, cfg: &P2pConfig) -> Ends {
    let (cmd_tx, cmd_rx) = mpsc::channel(cfg.commands.max(1));
    let (stats_tx, stats_rx) = mpsc::channel(cfg.commands.max(1));
    let (ev_tx, ev_rx) = mpsc::channel(cfg.events.max(1));
    let last_stats = Arc::new(Mutex::new(None));
    let driver = Driver {
        mux: inbox.mux().clone(),
        inbox,
        machine,
        cmds: cmd_rx,
        cmds_open: true,
        stats_requests: Some(stats_rx),
        events: ev_tx,
        pending: None,
        held: VecDeque::new(),
        held_max: cfg.inbox.max(1),
        parked: None,
        closers: Vec::new(),
        last_stats: Arc::clone(&last_stats),
    };
    tokio::spawn(driver.run());
    Ends {
        cmd: cmd_tx,
        stats: stats_tx,
        last_stats,
        events: ev_rx,
    }
}

enum Wake {
    Packet(Option<Incoming>),
    Cmd(Option<Cmd>),
    Stats(Option<oneshot::Sender<P2pStats>>),
    Timer,
    Nothing,
}

struct Driver {
    mux: SessionMux,
    inbox: Inbox,
    machine: P2pMachine,
    cmds: mpsc::Receiver<Cmd>,
    /// Some handle may still send commands.
    cmds_open: bool,
    /// `None` once every handle is gone.
    stats_requests: Option<mpsc::Receiver<oneshot::Sender<P2pStats>>>,
    events: mpsc::Sender<P2pEvent>,
    /// One event the application's queue had no room for.
    pending: Option<P2pEvent>,
    /// Packets read while the application's event queue is full, in arrival
    /// order: the inbox keeps being read so that acks for our own sends are
    /// never held up by the application not reading its events.
    held: VecDeque<Incoming>,
    /// At most this many held (the inbox capacity); more are dropped like an
    /// overflowing inbox's.
    held_max: usize,
    /// The caller of the send the machine parked.
    parked: Option<oneshot::Sender<Result<u64, SessionError>>>,
    /// Callers waiting for the close.
    closers: Vec<oneshot::Sender<Result<(), SessionError>>>,
    last_stats: Arc<Mutex<Option<P2pStats>>>,
}

impl Driver {
    async fn run(mut self) {
        loop {
            self.flush().await;
            self.answer();
            self.pump();
            if self.machine.is_done() {
                break;
            }
            if self.pending.is_none() && !self.held.is_empty() {
                // The application made room: what arrived meanwhile first.
                let now = Instant::now();
                while let Some(inc) = self.held.pop_front() {
                    self.machine.handle_packet(inc, now);
                }
                continue;
            }
            let stalled = self.pending.is_some();
            let deadline = self.machine.poll_timeout();
            let take_cmds = self.cmds_open && self.machine.accepts_sends();
            let wake = tokio::select! {
                // Read even while stalled: `on_incoming` holds back what would
                // make events and handles acks for our own sends at once.
                inc = self.inbox.recv() => Wake::Packet(inc),
                cmd = self.cmds.recv(), if take_cmds => Wake::Cmd(cmd),
                st = recv_opt(&mut self.stats_requests) => Wake::Stats(st),
                permit = self.events.reserve(), if stalled => {
                    match permit {
                        Ok(p) => {
                            if let Some(ev) = self.pending.take() {
                                p.send(ev);
                            }
                        }
                        // The application stopped listening.
                        Err(_) => self.pending = None,
                    }
                    Wake::Nothing
                }
                _ = sleep_until(deadline), if deadline.is_some() => Wake::Timer,
            };
            let now = Instant::now();
            match wake {
                // The mux is gone.
                Wake::Packet(None) => break,
                Wake::Packet(Some(inc)) => {
                    self.on_incoming(inc, now);
                    // Take what is already queued before publishing answers.
                    for _ in 0..64 {
                        let Some(inc) = self.inbox.try_recv() else {
                            break;
                        };
                        self.on_incoming(inc, now);
                    }
                }
                Wake::Stats(Some(reply)) => {
                    let _ = reply.send(self.machine.stats());
                }
                Wake::Stats(None) => self.stats_requests = None,
                Wake::Cmd(Some(c)) => {
                    self.on_cmd(c, now);
                    // Take queued sends in one go: one wake-up, one flush.
                    for _ in 0..64 {
                        if !self.machine.accepts_sends() {
                            break;
                        }
                        let Ok(c) = self.cmds.try_recv() else { break };
                        self.on_cmd(c, now);
                    }
                }
                Wake::Cmd(None) => {
                    self.cmds_open = false;
                    self.machine.handle_handles_gone(now);
                }
                Wake::Timer => self.machine.handle_timeout(now),
                Wake::Nothing => {}
            }
        }
        *self.last_stats.lock() = Some(self.machine.stats());
        // Stats from here on come from `last_stats` at once (queued requests
        // fall back to it too): the drain below may wait for the
        // application to read, and nothing may wait on that.
        self.stats_requests = None;
        // Answer waiting callers before the drain.
        self.answer();
        if let Some(r) = self.parked.take() {
            let _ = r.send(Err(SessionError::Closed));
        }
        for r in self.closers.drain(..) {
            let _ = r.send(Err(SessionError::Closed));
        }
        self.drain().await;
    }

    /// At the end: hands the application everything still queued, the final
    /// event last. Waits for the application to read (or drop its receiver):
    /// messages already acknowledged to the peer must not vanish.
    async fn drain(&mut self) {
        if let Some(ev) = self.pending.take()
            && self.events.send(ev).await.is_err()
        {
            return;
        }
        while let Some(ev) = self.machine.poll_event() {
            if self.events.send(ev).await.is_err() {
                return;
            }
        }
    }

    /// Publishes what the machine has queued; a failed publish (the client
    /// is closed) fails the session.
    async fn flush(&mut self) {
        let id = self.machine.id();
        while let Some(t) = self.machine.poll_transmit() {
            if let Err(e) = publish(&self.mux, id, &t).await {
                self.machine.handle_publish_error(e, Instant::now());
                break;
            }
        }
    }

    /// Tells waiting callers what became of their parked send and close.
    fn answer(&mut self) {
        if let Some(r) = self.machine.poll_parked()
            && let Some(reply) = self.parked.take()
        {
            let _ = reply.send(r);
        }
        if let Some(r) = self.machine.poll_close() {
            for reply in self.closers.drain(..) {
                let _ = reply.send(r.clone());
            }
        }
    }

    /// Moves machine events to the application until its queue is full.
    fn pump(&mut self) {
        while self.pending.is_none() {
            let Some(ev) = self.machine.poll_event() else {
                break;
            };
            match self.events.try_send(ev) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(ev)) => self.pending = Some(ev),
                // The application stopped listening; keep the protocol going.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }

    fn on_cmd(&mut self, cmd: Cmd, now: Instant) {
        match cmd {
            Cmd::Send(payload, reply) => match self.machine.handle_send(payload, now) {
                SendStatus::Sent(seq) => {
                    let _ = reply.send(Ok(seq));
                }
                SendStatus::Parked => self.parked = Some(reply),
                SendStatus::Refused(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Cmd::Close(reply) => {
                self.closers.push(reply);
                self.machine.handle_close(now);
            }
        }
    }

    /// While the application's event queue is full, only acks (which make no
    /// events and may open the window for a parked send) are handled; the
    /// rest waits, so a slow reader still backs the peer off through the
    /// window.
    fn on_incoming(&mut self, inc: Incoming, now: Instant) {
        if self.pending.is_none() || matches!(inc.packet.kind, Kind::Ack | Kind::Nack) {
            self.machine.handle_packet(inc, now);
        } else if self.held.len() < self.held_max {
            self.machine.handle_held(&inc, now);
            self.held.push_back(inc);
        } else {
            // As a full inbox would: the peer retransmits. It is alive all
            // the same.
            self.machine.handle_held(&inc, now);
            self.machine.handle_overflow();
        }
    }
}

/// The next item, or never once the channel is gone.
async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}
