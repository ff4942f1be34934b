//! Point-to-point sessions over a [`SessionMux`].
//!
//! Opening: the initiator registers a random session id and publishes `Open`
//! (or `OpenRpc`) **anycast** to a service name; whichever instance the node
//! picks answers `Accept` from its full name, and from then on both ends
//! publish unicast to each other's full name — the reply binds the session to
//! that instance. A lost `Open`/`Accept` is repaired by resending `Open`
//! (bounded attempts); a duplicate `Open` reaching the responder's session is
//! answered with `Accept` again. If a retransmitted `Open` reached a second
//! instance, its late `Accept` is answered with `Close` so it does not linger.
//! With no subscriber to the service the node's `NO_ROUTE` surfaces as
//! [`SessionError::NoResponder`]. Mid-session, the node's `NO_ROUTE` is
//! tolerated for [`P2pConfig::peer_absent_grace`] (the peer may be
//! reconnecting), while a peer that answers "no such session" fails the
//! session at once.
//!
//! Once bound, each end runs one session task: a thin driver owning the
//! sans-IO machines of both directions ([`reliable`] or [`unreliable`]
//! sender + receiver), its [`Inbox`], a bounded command channel and a bounded
//! event channel to the application. Sends wait while the reliable window is
//! full (back-pressure, many messages in flight); deliveries wait in the
//! machine, and the peer's data waits unprocessed (at most an inbox's
//! worth), while the application's event queue is full (so a slow reader
//! backs the peer off through the window instead of growing a queue). Acks
//! for our own sends are handled regardless, and a send waiting for window
//! room does not hold up [`P2pSender::stats`]: an application that never
//! reads its events (e.g. its `DeliveryFailed`s) can still send.
//!
//! Closing: `Close` carries the number of messages sent; the closer keeps
//! retransmitting what is unacknowledged (and `Close` itself) until all is
//! acknowledged or given up, bounded by the retry budget. The other end
//! reports [`P2pEvent::PeerClosed`] only once everything before the close was
//! delivered or reported lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use slim_wire::{ErrorCode, Mode, Name};
use tokio::sync::{mpsc, oneshot};

use super::mux::{Inbox, Incoming, SessionMux, UNREACHABLE_FROM_NODE};
use super::packet::{Kind, Packet};
use super::reliable::{self, ReceiverStats, SenderStats};
use super::{SessionError, SessionEvent, unreliable};
use slim_mls::Group;
pub use slim_mls::MlsIdentity;

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
    /// before the session fails with [`SessionError::Unreachable`] (sooner
    /// if a message runs out of retries meanwhile). A peer whose mux answers
    /// "no such session" fails the session at once.
    pub peer_absent_grace: Duration,
    /// After the peer's close is complete, how long to keep answering its
    /// retransmitted `Close` before the session task ends.
    pub linger: Duration,
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
            mls: None,
        }
    }
}

/// Reliable tuning for sessions over SLIM: a session's packets travel one
/// ordered QUIC stream per hop, so a gap is a loss, never reordering, and is
/// NACKed almost at once instead of after the machine's generic delay (a
/// window-limited sender waits for that NACK on every loss).
fn p2p_reliable() -> reliable::Config {
    reliable::Config {
        nack_delay: Duration::from_millis(2),
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

    fn validate(&self) -> Result<(), SessionError> {
        if let Reliability::Reliable(c) = &self.reliability {
            c.validate()?;
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

enum Cmd {
    Send(Bytes, oneshot::Sender<Result<u64, SessionError>>),
    Close(oneshot::Sender<Result<(), SessionError>>),
}

/// A handle for sending on a session; cheap to clone.
#[derive(Clone, Debug)]
pub struct P2pSender {
    cmd: mpsc::Sender<Cmd>,
    /// Stats requests, on their own channel: answered even while a send
    /// waits for window room (which holds up the command queue).
    stats: mpsc::Sender<oneshot::Sender<P2pStats>>,
    /// The counters as the session task ended, for `stats` after the end.
    last_stats: Arc<std::sync::Mutex<Option<P2pStats>>>,
}

impl P2pSender {
    /// Queues `payload` as the next message and returns its sequence number;
    /// waits while the reliable window is full.
    pub async fn send(&self, payload: impl Into<Bytes>) -> Result<u64, SessionError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Send(payload.into(), tx))
            .await
            .map_err(|_| SessionError::Closed)?;
        rx.await.map_err(|_| SessionError::Closed)?
    }

    /// Queues `payload` without waiting: for best-effort notices (e.g. an
    /// RPC cancel). `false` if the command queue was full or the session is
    /// gone; the message's fate is not reported.
    pub fn try_send(&self, payload: impl Into<Bytes>) -> bool {
        let (tx, _rx) = oneshot::channel();
        self.cmd.try_send(Cmd::Send(payload.into(), tx)).is_ok()
    }

    /// Whether the session task has ended.
    pub fn is_closed(&self) -> bool {
        self.cmd.is_closed()
    }

    /// Closes the session and waits until the peer acknowledged everything
    /// sent (or the retry budget ran out: `DeliveryFailed` events say what).
    pub async fn close(&self) -> Result<(), SessionError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Close(tx))
            .await
            .map_err(|_| SessionError::Closed)?;
        rx.await.map_err(|_| SessionError::Closed)?
    }

    /// Both directions' counters (the final ones once the session ended).
    pub async fn stats(&self) -> Result<P2pStats, SessionError> {
        let (tx, rx) = oneshot::channel();
        if self.stats.send(tx).await.is_ok()
            && let Ok(st) = rx.await
        {
            return Ok(st);
        }
        self.last_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(SessionError::Closed)
    }
}

/// The receiving side of a session.
#[derive(Debug)]
pub struct P2pReceiver {
    events: mpsc::Receiver<P2pEvent>,
}

impl P2pReceiver {
    /// The next event; `None` once the session task has ended.
    pub async fn recv(&mut self) -> Option<P2pEvent> {
        self.events.recv().await
    }

    /// Up to `max` events at once.
    pub async fn recv_many(&mut self, buf: &mut Vec<P2pEvent>, max: usize) -> usize {
        self.events.recv_many(buf, max).await
    }
}

/// An open point-to-point session.
#[derive(Debug)]
pub struct P2pSession {
    id: u64,
    peer: Name,
    peer_identity: Option<Arc<str>>,
    reliable: bool,
    mls: bool,
    tx: P2pSender,
    rx: P2pReceiver,
}

impl P2pSession {
    /// Opens a session to `service` (anycast; the answering instance is the
    /// peer from then on).
    pub async fn open(
        mux: &SessionMux,
        service: &Name,
        cfg: P2pConfig,
    ) -> Result<P2pSession, SessionError> {
        open(mux, service, cfg, Kind::Open).await
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The peer's full name.
    pub fn peer(&self) -> &Name {
        &self.peer
    }

    /// The peer's SPIFFE ID as authenticated by its node.
    pub fn peer_identity(&self) -> Option<&str> {
        self.peer_identity.as_deref()
    }

    pub fn is_reliable(&self) -> bool {
        self.reliable
    }

    /// Whether payloads are MLS-encrypted end to end.
    pub fn is_mls(&self) -> bool {
        self.mls
    }

    pub fn sender(&self) -> P2pSender {
        self.tx.clone()
    }

    pub async fn send(&self, payload: impl Into<Bytes>) -> Result<u64, SessionError> {
        self.tx.send(payload).await
    }

    pub async fn recv(&mut self) -> Option<P2pEvent> {
        self.rx.recv().await
    }

    pub async fn close(&self) -> Result<(), SessionError> {
        self.tx.close().await
    }

    pub async fn stats(&self) -> Result<P2pStats, SessionError> {
        self.tx.stats().await
    }

    pub fn into_split(self) -> (P2pSender, P2pReceiver) {
        (self.tx, self.rx)
    }
}

/// Accepts point-to-point sessions opened to this client's service name.
#[derive(Debug)]
pub struct P2pListener {
    mux: SessionMux,
    cfg: P2pConfig,
    opens: mpsc::Receiver<Incoming>,
}

impl P2pListener {
    /// Takes the mux's acceptor for `Open`.
    pub fn new(mux: &SessionMux, cfg: P2pConfig) -> Result<P2pListener, SessionError> {
        Self::for_kind(mux, cfg, Kind::Open)
    }

    pub(crate) fn for_kind(
        mux: &SessionMux,
        cfg: P2pConfig,
        kind: Kind,
    ) -> Result<P2pListener, SessionError> {
        cfg.validate()?;
        let opens = mux.acceptor(&[kind], cfg.inbox)?;
        Ok(P2pListener {
            mux: mux.clone(),
            cfg,
            opens,
        })
    }

    /// The next session opened to us; `None` once the mux is gone. Opens we
    /// cannot serve are refused with a reason and skipped.
    pub async fn accept(&mut self) -> Option<P2pSession> {
        loop {
            let inc = self.opens.recv().await?;
            match accept_one(&self.mux, &self.cfg, inc).await {
                Ok(Some(s)) => return Some(s),
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "open not accepted"),
            }
        }
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

async fn accept_one(
    mux: &SessionMux,
    cfg: &P2pConfig,
    inc: Incoming,
) -> Result<Option<P2pSession>, SessionError> {
    let p = &inc.packet;
    let me = mux.client().name().clone();
    let mls = match (&cfg.mls, p.flags & OPEN_MLS != 0) {
        (None, true) => {
            let mut r = Packet::new(p.session_id, Kind::Refuse, me.as_str());
            r.body = Bytes::from_static(b"this responder does not do MLS");
            let bytes = r.encode()?;
            mux.publish_silent(&inc.from, Mode::Unicast, &bytes).await?;
            return Ok(None);
        }
        (Some(id), true) => Some(id.clone()),
        (_, false) => None,
    };
    let inbox = match mux.register(p.session_id, cfg.inbox) {
        Ok(i) => i,
        // A duplicate `Open` raced its session's registration: the session answers it.
        Err(SessionError::AlreadyRegistered(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let reliability = reliability_for(p.flags, cfg);
    let mut accept = Packet::new(p.session_id, Kind::Accept, me.as_str());
    accept.flags = p.flags;
    let mls = match mls {
        Some(id) => {
            // One key package per session; its private keys stay in the
            // identity's store until the initiator's Welcome consumes them.
            let kp = id.key_package().map_err(mls_err)?;
            accept.body = Bytes::from(kp);
            MlsState::Pending(id)
        }
        None => MlsState::Off,
    };
    let accept = accept.encode()?;
    let session = spawn(
        inbox,
        cfg,
        reliability,
        (inc.from.clone(), inc.from_identity.clone()),
        Some(accept.clone()),
        Vec::new(),
        mls,
    )?;
    mux.publish_silent(&inc.from, Mode::Unicast, &accept)
        .await?;
    Ok(Some(session))
}

pub(crate) async fn open(
    mux: &SessionMux,
    service: &Name,
    cfg: P2pConfig,
    kind: Kind,
) -> Result<P2pSession, SessionError> {
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
    let mut open = Packet::new(session_id, kind, me.as_str());
    if matches!(cfg.reliability, Reliability::Reliable(_)) {
        open.flags |= OPEN_RELIABLE;
    }
    if cfg.mls.is_some() {
        open.flags |= OPEN_MLS;
    }
    let attempts = cfg.open_attempts.max(1);
    // Peer traffic that overtook a lost `Accept`; replayed once bound.
    let mut early: Vec<Incoming> = Vec::new();
    for attempt in 1..=attempts {
        open.seq = u64::from(attempt);
        let bytes = open.encode()?;
        mux.publish(session_id, service, Mode::Anycast, &bytes)
            .await?;
        let deadline = tokio::time::Instant::now() + cfg.open_timeout;
        loop {
            let inc = match tokio::time::timeout_at(deadline, inbox.recv()).await {
                Ok(Some(i)) => i,
                Ok(None) => return Err(SessionError::Closed),
                Err(_) => break,
            };
            match inc.packet.kind {
                Kind::Accept if cfg.mls.is_some() => {
                    let (peer, ident) = (inc.from.clone(), inc.from_identity.clone());
                    let group = mls_initiate(mux, &mut inbox, &cfg, &inc, &mut early).await?;
                    return spawn(
                        inbox,
                        &cfg,
                        cfg.reliability.clone(),
                        (peer, ident),
                        None,
                        early,
                        MlsState::Ready(Box::new(group)),
                    );
                }
                Kind::Accept | Kind::Data | Kind::Ack | Kind::Nack if cfg.mls.is_none() => {
                    let (peer, ident) = (inc.from.clone(), inc.from_identity.clone());
                    if inc.packet.kind != Kind::Accept {
                        early.push(inc);
                    }
                    return spawn(
                        inbox,
                        &cfg,
                        cfg.reliability.clone(),
                        (peer, ident),
                        None,
                        early,
                        MlsState::Off,
                    );
                }
                Kind::Refuse => {
                    return Err(SessionError::Refused(
                        String::from_utf8_lossy(&inc.packet.body).into_owned(),
                    ));
                }
                Kind::Unreachable => return Err(unreachable(service, &inc.packet)),
                _ => {}
            }
        }
    }
    Err(SessionError::Timeout(cfg.open_timeout * attempts))
}

fn mls_err(e: slim_mls::MlsError) -> SessionError {
    SessionError::Mls(e.to_string())
}

/// The SPIFFE ID `claimed` by an MLS credential must be the one the node
/// authenticated the peer's connection as: the session's transport peer and
/// its MLS peer are then the same workload.
fn check_mls_peer(claimed: &str, transport: Option<&str>) -> Result<(), SessionError> {
    if transport != Some(claimed) {
        return Err(SessionError::Mls(format!(
            "MLS credential is for {claimed}, but the peer authenticated as {transport:?}"
        )));
    }
    Ok(())
}

/// Initiator side of the 2-member MLS group: verify the responder's key
/// package (bound to the SPIFFE ID its node authenticated), create the group
/// with it, send the Welcome until the responder confirms it joined.
async fn mls_initiate(
    mux: &SessionMux,
    inbox: &mut Inbox,
    cfg: &P2pConfig,
    accept: &Incoming,
    early: &mut Vec<Incoming>,
) -> Result<Group, SessionError> {
    let Some(identity) = &cfg.mls else {
        return Err(SessionError::Mls("no MLS identity".into()));
    };
    if accept.packet.flags & OPEN_MLS == 0 {
        return Err(SessionError::Refused(
            "the responder did not agree to MLS".into(),
        ));
    }
    let kp = &accept.packet.body;
    let claimed = slim_mls::key_package_claimed_id(kp).map_err(mls_err)?;
    check_mls_peer(&claimed, accept.from_identity.as_deref())?;
    let session_id = inbox.session_id();
    let mut group = Group::create(identity, &session_id.to_be_bytes()).map_err(mls_err)?;
    // Verifies the key package's SVID binding against the trust bundle.
    let commit = group.add_members(&[kp]).map_err(mls_err)?;
    group.merge_pending_commit().map_err(mls_err)?;
    let welcome = commit
        .welcome
        .ok_or_else(|| SessionError::Mls("add produced no Welcome".into()))?;
    let me = mux.client().name().clone();
    let mut w = Packet::new(session_id, Kind::MlsWelcome, me.as_str());
    w.body = Bytes::from(welcome);
    let bytes = w.encode()?;
    let peer = &accept.from;
    let attempts = cfg.open_attempts.max(1);
    for _ in 0..attempts {
        mux.publish(session_id, peer, Mode::Unicast, &bytes).await?;
        let deadline = tokio::time::Instant::now() + cfg.open_timeout;
        loop {
            let inc = match tokio::time::timeout_at(deadline, inbox.recv()).await {
                Ok(Some(i)) => i,
                Ok(None) => return Err(SessionError::Closed),
                Err(_) => break,
            };
            if inc.from != *peer {
                continue;
            }
            match inc.packet.kind {
                Kind::Accept if inc.packet.flags & ACCEPT_JOINED != 0 => return Ok(group),
                // Its data can only follow its join (a lost confirmation).
                Kind::Data | Kind::Ack | Kind::Nack => {
                    early.push(inc);
                    return Ok(group);
                }
                Kind::Refuse => {
                    return Err(SessionError::Refused(
                        String::from_utf8_lossy(&inc.packet.body).into_owned(),
                    ));
                }
                Kind::Unreachable => return Err(unreachable(peer, &inc.packet)),
                _ => {}
            }
        }
    }
    Err(SessionError::Timeout(cfg.open_timeout * attempts))
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

// One per session, never moved after the task starts: boxing the larger
// variant would only add an indirection on every packet.
#[allow(clippy::large_enum_variant)]
enum Machine {
    Reliable(reliable::Sender, reliable::Receiver),
    Unreliable(unreliable::Sender, unreliable::Receiver),
}

fn spawn(
    inbox: Inbox,
    cfg: &P2pConfig,
    reliability: Reliability,
    (peer, peer_identity): (Name, Option<Arc<str>>),
    accept: Option<Vec<u8>>,
    early: Vec<Incoming>,
    mls: MlsState,
) -> Result<P2pSession, SessionError> {
    let mls_deadline = matches!(mls, MlsState::Pending(_))
        .then(|| Instant::now() + cfg.open_timeout * cfg.open_attempts.max(1));
    let id = inbox.session_id();
    let me = inbox.mux().client().name().as_str().to_owned();
    let (machine, linger_unit, is_reliable) = match reliability {
        Reliability::Reliable(c) => {
            let unit = c.initial_rto;
            (
                Machine::Reliable(
                    reliable::Sender::new(id, &me, c.clone())?,
                    reliable::Receiver::new(id, &me, c)?,
                ),
                unit,
                true,
            )
        }
        Reliability::Unreliable { max_payload } => (
            Machine::Unreliable(
                unreliable::Sender::new(id, &me, max_payload)?,
                unreliable::Receiver::new(id),
            ),
            Duration::ZERO,
            false,
        ),
    };
    let (cmd_tx, cmd_rx) = mpsc::channel(cfg.commands.max(1));
    let (stats_tx, stats_rx) = mpsc::channel(cfg.commands.max(1));
    let last_stats = Arc::new(std::sync::Mutex::new(None));
    let (ev_tx, ev_rx) = mpsc::channel(cfg.events.max(1));
    let has_mls = !matches!(mls, MlsState::Off);
    let task = Task {
        mux: inbox.mux().clone(),
        inbox,
        id,
        me,
        peer: peer.clone(),
        machine,
        cmds: cmd_rx,
        stats_requests: Some(stats_rx),
        events: ev_tx,
        held: std::collections::VecDeque::new(),
        held_max: cfg.inbox.max(1),
        pending: None,
        parked: None,
        closing: None,
        peer_closed: None,
        ended: false,
        final_sent: false,
        final_event: None,
        backlog: Vec::new(),
        handles_gone: false,
        done_at: None,
        accept,
        joined: None,
        mls,
        mls_deadline,
        absent: None,
        absent_grace: cfg.peer_absent_grace,
        peer_identity: peer_identity.clone(),
        extra: Vec::new(),
        last_stats: Arc::clone(&last_stats),
        linger: cfg.linger,
        close_rto: linger_unit,
        stats_foreign: 0,
        stats_rejected: 0,
        stats_undecryptable: 0,
        stats_overflow: 0,
    };
    tokio::spawn(task.run(early));
    Ok(P2pSession {
        id,
        peer,
        peer_identity,
        reliable: is_reliable,
        mls: has_mls,
        tx: P2pSender {
            cmd: cmd_tx,
            stats: stats_tx,
            last_stats,
        },
        rx: P2pReceiver { events: ev_rx },
    })
}

struct Closing {
    reply: Option<oneshot::Sender<Result<(), SessionError>>>,
    /// The peer acknowledged our `Close` with everything we sent resolved.
    finished: bool,
    next_rtx: Instant,
    /// `Close` retransmissions since nothing was left in flight.
    attempts: u32,
}

/// Where a packet the driver builds itself goes.
struct Extra {
    bytes: Vec<u8>,
    to: Name,
    tracked: bool,
}

struct Task {
    mux: SessionMux,
    inbox: Inbox,
    id: u64,
    me: String,
    peer: Name,
    machine: Machine,
    cmds: mpsc::Receiver<Cmd>,
    /// `None` once every handle is gone.
    stats_requests: Option<mpsc::Receiver<oneshot::Sender<P2pStats>>>,
    events: mpsc::Sender<P2pEvent>,
    /// Packets for the receiving direction read while the application's
    /// event queue is full, in arrival order: the inbox keeps being read so
    /// that acks for our own sends are never held up by the application not
    /// reading its events.
    held: std::collections::VecDeque<Incoming>,
    /// At most this many held (the inbox capacity); more are dropped like an
    /// overflowing inbox's.
    held_max: usize,
    /// One event the application's queue had no room for.
    pending: Option<P2pEvent>,
    /// A send waiting for window room.
    parked: Option<(Bytes, oneshot::Sender<Result<u64, SessionError>>)>,
    closing: Option<Closing>,
    /// The peer's `next_seq` once it closed, until we have delivered up to it.
    peer_closed: Option<u64>,
    /// The session is over (peer closed or failed): sends are refused.
    ended: bool,
    /// `PeerClosed` went out: nothing follows it.
    final_sent: bool,
    /// `Failed`, delivered after everything the machines still hold.
    final_event: Option<P2pEvent>,
    /// Events that found the slot taken (not expected; never dropped).
    backlog: Vec<P2pEvent>,
    /// Every `P2pSender` was dropped.
    handles_gone: bool,
    /// When the session task ends (set once the session is over).
    done_at: Option<Instant>,
    /// The responder's `Accept`, resent for duplicate `Open`s.
    accept: Option<Vec<u8>>,
    /// The responder's "joined" `Accept`, resent for duplicate Welcomes.
    joined: Option<Vec<u8>>,
    mls: MlsState,
    /// Since when the node has had no route to the peer (cleared by any
    /// packet from it), and what it said.
    absent: Option<(Instant, SessionError)>,
    absent_grace: Duration,
    /// A responder waiting for the Welcome gives up at this instant.
    mls_deadline: Option<Instant>,
    peer_identity: Option<Arc<str>>,
    extra: Vec<Extra>,
    last_stats: Arc<std::sync::Mutex<Option<P2pStats>>>,
    linger: Duration,
    close_rto: Duration,
    stats_foreign: u64,
    stats_rejected: u64,
    stats_undecryptable: u64,
    stats_overflow: u64,
}

/// End-to-end encryption of a session's payloads.
enum MlsState {
    Off,
    /// Responder: key package sent, waiting for the Welcome.
    Pending(MlsIdentity),
    Ready(Box<Group>),
}

enum Wake {
    Packet(Option<Incoming>),
    Cmd(Option<Cmd>),
    Stats(Option<oneshot::Sender<P2pStats>>),
    Timer,
    Nothing,
}

/// `Close` retransmissions, once nothing is in flight, before the closer
/// stops waiting for the peer's answer.
const CLOSE_ATTEMPTS: u32 = 6;

impl Task {
    async fn run(mut self, early: Vec<Incoming>) {
        let now = Instant::now();
        for inc in early {
            self.on_packet(inc, now);
        }
        loop {
            if let Err(e) = self.flush().await {
                self.fail(e, Instant::now());
            }
            self.pump_events(Instant::now());
            if self.done_at.is_some_and(|t| Instant::now() >= t) {
                break;
            }
            if self.pending.is_none() && !self.held.is_empty() {
                // The application made room: what arrived meanwhile first.
                let now = Instant::now();
                while let Some(inc) = self.held.pop_front() {
                    self.on_packet(inc, now);
                }
                continue;
            }
            let stalled = self.pending.is_some();
            let deadline = self.next_deadline();
            // Sends after the end are answered `Closed` by `on_cmd`.
            // A responder waiting for the MLS Welcome cannot encrypt yet: sends wait.
            let take_cmds = self.parked.is_none()
                && !self.handles_gone
                && !matches!(self.mls, MlsState::Pending(_));
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
                            if !self.backlog.is_empty() {
                                self.pending = Some(self.backlog.remove(0));
                            }
                        }
                        Err(_) => self.pending = None,
                    }
                    Wake::Nothing
                }
                _ = sleep_until(deadline), if deadline.is_some() => Wake::Timer,
            };
            let now = Instant::now();
            match wake {
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
                    let _ = reply.send(self.stats());
                }
                Wake::Stats(None) => self.stats_requests = None,
                Wake::Cmd(Some(c)) => {
                    self.on_cmd(c, now);
                    // Take queued sends in one go: one wake-up, one flush.
                    for _ in 0..64 {
                        if self.parked.is_some() {
                            break;
                        }
                        let Ok(c) = self.cmds.try_recv() else { break };
                        self.on_cmd(c, now);
                    }
                }
                // Every handle dropped: close gracefully.
                Wake::Cmd(None) if self.peer_closed.is_none() && !self.ended => {
                    self.handles_gone = true;
                    self.start_close(None, now)
                }
                // Nobody left to tell: end once a close in progress settles.
                Wake::Cmd(None) => {
                    self.handles_gone = true;
                    if self.closing.as_ref().is_none_or(|c| c.finished) {
                        self.done_at = Some(now);
                    }
                }
                Wake::Timer => self.on_timeout(now),
                Wake::Nothing => {}
            }
        }
        *self.last_stats.lock().unwrap_or_else(|e| e.into_inner()) = Some(self.stats());
        // Answer waiting callers before the drain, which may wait for the
        // application to read.
        if let Some(r) = self.closing.as_mut().and_then(|c| c.reply.take()) {
            let _ = r.send(Ok(()));
        }
        if let Some((_, r)) = self.parked.take() {
            let _ = r.send(Err(SessionError::Closed));
        }
        self.drain().await;
    }

    /// At the end: hands the application everything still held, then the
    /// final event. Waits for the application to read (or drop its receiver):
    /// messages already acknowledged to the peer must not vanish.
    async fn drain(&mut self) {
        let now = Instant::now();
        loop {
            if let Some(ev) = self.pending.take()
                && self.events.send(ev).await.is_err()
            {
                return;
            }
            for ev in std::mem::take(&mut self.backlog) {
                if self.events.send(ev).await.is_err() {
                    return;
                }
            }
            self.pump_events(now);
            if self.pending.is_none() && self.backlog.is_empty() {
                break;
            }
        }
        if let Some(ev) = self.final_event.take() {
            let _ = self.events.send(ev).await;
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let m = match &self.machine {
            Machine::Reliable(s, r) => min_opt(s.poll_timeout(), r.poll_timeout()),
            Machine::Unreliable(..) => None,
        };
        let c = self
            .closing
            .as_ref()
            .filter(|c| !c.finished)
            .map(|c| c.next_rtx);
        let j = self
            .mls_deadline
            .filter(|_| matches!(self.mls, MlsState::Pending(_)));
        min_opt(min_opt(min_opt(m, c), self.done_at), j)
    }

    fn on_cmd(&mut self, cmd: Cmd, now: Instant) {
        match cmd {
            Cmd::Send(payload, reply) => {
                if self.peer_closed.is_some() || self.ended || self.closing.is_some() {
                    let _ = reply.send(Err(SessionError::Closed));
                    return;
                }
                let payload = match &mut self.mls {
                    MlsState::Ready(g) => match g.encrypt(&payload) {
                        Ok(ct) => Bytes::from(ct),
                        Err(e) => {
                            let _ = reply.send(Err(mls_err(e)));
                            return;
                        }
                    },
                    MlsState::Off => payload,
                    MlsState::Pending(_) => {
                        let _ = reply.send(Err(SessionError::Mls("not joined yet".into())));
                        return;
                    }
                };
                // Parked (window full) as ciphertext: never encrypted twice.
                self.try_send(payload, reply, now);
            }
            Cmd::Close(reply) => self.start_close(Some(reply), now),
        }
    }

    fn stats(&self) -> P2pStats {
        let (sender, receiver) = match &self.machine {
            Machine::Reliable(s, r) => (s.stats().clone(), r.stats().clone()),
            Machine::Unreliable(s, r) => (
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
            foreign: self.stats_foreign,
            rejected: self.stats_rejected,
            undecryptable: self.stats_undecryptable,
            overflow: self.stats_overflow,
        }
    }

    fn try_send(
        &mut self,
        payload: Bytes,
        reply: oneshot::Sender<Result<u64, SessionError>>,
        now: Instant,
    ) {
        let r = match &mut self.machine {
            Machine::Reliable(s, _) => s.handle_send(payload.clone(), now),
            Machine::Unreliable(s, _) => s.handle_send(payload.clone(), now),
        };
        match r {
            Err(SessionError::WindowFull { .. }) => self.parked = Some((payload, reply)),
            r => {
                let _ = reply.send(r);
            }
        }
    }

    fn retry_parked(&mut self, now: Instant) {
        if let Some((payload, reply)) = self.parked.take() {
            self.try_send(payload, reply, now);
        }
    }

    fn start_close(
        &mut self,
        reply: Option<oneshot::Sender<Result<(), SessionError>>>,
        now: Instant,
    ) {
        if self.ended || self.closing.is_some() {
            if let Some(r) = reply {
                let _ = r.send(Ok(()));
            }
            return;
        }
        if let Some((_, r)) = self.parked.take() {
            let _ = r.send(Err(SessionError::Closed));
        }
        match &mut self.machine {
            Machine::Reliable(s, _) => {
                s.close();
                self.closing = Some(Closing {
                    reply,
                    finished: false,
                    next_rtx: now + self.close_rto,
                    attempts: 0,
                });
            }
            Machine::Unreliable(s, _) => {
                // Best effort: one `Close`, no wait.
                let mut p = Packet::new(self.id, Kind::Close, &self.me);
                p.base = s.next_seq();
                p.seq = p.base;
                if let Ok(b) = p.encode() {
                    self.extra.push(Extra {
                        bytes: b,
                        to: self.peer.clone(),
                        tracked: false,
                    });
                }
                if let Some(r) = reply {
                    let _ = r.send(Ok(()));
                }
                self.closing = Some(Closing {
                    reply: None,
                    finished: true,
                    next_rtx: now,
                    attempts: 0,
                });
                self.done_at = Some(now);
            }
        }
    }

    fn finish_close(&mut self, result: Result<(), SessionError>, now: Instant) {
        if let Some(c) = self.closing.as_mut() {
            c.finished = true;
            if let Some(r) = c.reply.take() {
                let _ = r.send(result);
            }
            self.done_at = Some(now);
        }
    }

    fn fail(&mut self, e: SessionError, now: Instant) {
        if self.ended {
            return;
        }
        tracing::debug!(session = self.id, peer = %self.peer, error = %e, "p2p session failed");
        if let Some((_, r)) = self.parked.take() {
            let _ = r.send(Err(e.clone()));
        }
        self.finish_close(Err(e.clone()), now);
        // After whatever the machines still hold for the application.
        self.final_event = Some(P2pEvent::Failed(e));
        self.ended = true;
        self.done_at = Some(now);
    }

    fn emit(&mut self, ev: P2pEvent) {
        if self.final_sent {
            // Only our own `DeliveryFailed`s can follow the peer's close.
            return;
        }
        if self.pending.is_some() {
            // Callers only emit with an empty slot; keep the event anyway.
            tracing::warn!(session = self.id, "event emitted while stalled: {ev:?}");
            self.backlog.push(ev);
            return;
        }
        match self.events.try_send(ev) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(ev)) => self.pending = Some(ev),
            // The application stopped listening; keep the protocol going.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Moves machine events to the application until its queue is full.
    fn pump_events(&mut self, now: Instant) {
        while self.pending.is_none() {
            let ev = match &mut self.machine {
                Machine::Reliable(s, r) => s.poll_event().or_else(|| r.poll_event()),
                Machine::Unreliable(_, r) => r.poll_event(),
            };
            let Some(ev) = ev else { break };
            match ev {
                SessionEvent::Delivered { seq, payload } => match &mut self.mls {
                    MlsState::Off => self.emit(P2pEvent::Message { seq, payload }),
                    // Delivered exactly once, in order: each ciphertext is
                    // decrypted once, so MLS replay protection never trips on
                    // our own retransmissions.
                    MlsState::Ready(g) => match g.decrypt(&payload) {
                        Ok(d) if Some(d.sender.as_str()) == self.peer_identity.as_deref() => {
                            self.emit(P2pEvent::Message {
                                seq,
                                payload: Bytes::from(d.plaintext),
                            });
                        }
                        Ok(d) => {
                            self.stats_undecryptable += 1;
                            let reason = format!("sent by {} instead of the peer", d.sender);
                            self.emit(P2pEvent::Rejected { seq, reason });
                        }
                        Err(e) => {
                            self.stats_undecryptable += 1;
                            self.emit(P2pEvent::Rejected {
                                seq,
                                reason: e.to_string(),
                            });
                        }
                    },
                    MlsState::Pending(_) => {
                        self.stats_undecryptable += 1;
                        self.emit(P2pEvent::Rejected {
                            seq,
                            reason: "data before the MLS Welcome".into(),
                        });
                    }
                },
                SessionEvent::DeliveryFailed { seq, attempts } => {
                    self.emit(P2pEvent::DeliveryFailed { seq, attempts });
                    // Retries exhausted while the node says the peer is not
                    // there: it is gone, not just slow.
                    if let Some((_, e)) = self.absent.take() {
                        self.fail(e, now);
                    }
                    self.retry_parked(now);
                }
                SessionEvent::Lost { seqs, .. } => self.emit(P2pEvent::Lost { seqs }),
                SessionEvent::PeerClosed { next_seq, .. } => {
                    if self.peer_closed.is_none() {
                        self.peer_closed = Some(next_seq);
                    }
                }
                SessionEvent::GroupDelivered { .. } => self.stats_rejected += 1,
            }
        }
        if self.pending.is_some() || self.ended {
            return;
        }
        if let Some(sent) = self.peer_closed {
            let complete = match &self.machine {
                Machine::Reliable(_, r) => r.next_expected() >= sent,
                Machine::Unreliable(..) => true,
            };
            if complete {
                if let Some((_, r)) = self.parked.take() {
                    let _ = r.send(Err(SessionError::Closed));
                }
                self.emit(P2pEvent::PeerClosed { sent });
                self.final_sent = true;
                self.ended = true;
                let linger = if self.closing.as_ref().is_some_and(|c| !c.finished) {
                    // Our own close is still settling; it ends the task.
                    None
                } else {
                    Some(now + self.linger)
                };
                if let Some(t) = linger {
                    self.done_at = Some(t);
                }
            }
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        if matches!(self.mls, MlsState::Pending(_)) && self.mls_deadline.is_some_and(|t| t <= now) {
            self.fail(
                SessionError::Mls("no Welcome from the initiator".into()),
                now,
            );
            return;
        }
        if let Machine::Reliable(s, r) = &mut self.machine {
            s.handle_timeout(now);
            r.handle_timeout(now);
        }
        // Messages given up on free window room even while their
        // `DeliveryFailed` waits for the application to read.
        self.retry_parked(now);
        let Machine::Reliable(s, _) = &self.machine else {
            return;
        };
        let (in_flight, base, next) = (s.in_flight(), s.base(), s.next_seq());
        let Some(c) = self.closing.as_mut().filter(|c| !c.finished) else {
            return;
        };
        if c.next_rtx > now {
            return;
        }
        if in_flight == 0 {
            c.attempts += 1;
            if c.attempts > CLOSE_ATTEMPTS {
                let waited = self.close_rto * CLOSE_ATTEMPTS;
                self.finish_close(Err(SessionError::Timeout(waited)), now);
                return;
            }
        }
        let shift = c.attempts.min(5);
        c.next_rtx = now + self.close_rto * (1 << shift);
        let mut p = Packet::new(self.id, Kind::Close, &self.me);
        p.base = next;
        p.seq = base;
        if let Ok(b) = p.encode() {
            self.extra.push(Extra {
                bytes: b,
                to: self.peer.clone(),
                tracked: true,
            });
        }
    }

    /// While the application's event queue is full, only acks (which make no
    /// events and may open the window for a parked send) are handled; the
    /// rest waits, so a slow reader still backs the peer off through the
    /// window.
    fn on_incoming(&mut self, inc: Incoming, now: Instant) {
        if self.pending.is_none() || matches!(inc.packet.kind, Kind::Ack | Kind::Nack) {
            self.on_packet(inc, now);
        } else if self.held.len() < self.held_max {
            self.held.push_back(inc);
        } else {
            // As a full inbox would: the peer retransmits.
            self.stats_overflow += 1;
        }
    }

    fn on_packet(&mut self, inc: Incoming, now: Instant) {
        if inc.from != self.peer {
            if inc.packet.kind == Kind::Accept {
                // A retransmitted `Open` reached a second instance; we are bound
                // elsewhere, so end its copy of the session.
                let mut p = Packet::new(self.id, Kind::Close, &self.me);
                p.base = 0;
                if let Ok(b) = p.encode() {
                    self.extra.push(Extra {
                        bytes: b,
                        to: inc.from,
                        tracked: false,
                    });
                }
            } else {
                self.stats_foreign += 1;
            }
            return;
        }
        let p = &inc.packet;
        if p.kind != Kind::Unreachable {
            self.absent = None;
        }
        let r = match (p.kind, &mut self.machine) {
            (Kind::Data | Kind::Close, Machine::Reliable(_, r)) => r.handle_packet(p, now),
            (Kind::Data | Kind::Close, Machine::Unreliable(_, r)) => r.handle_packet(p, now),
            (Kind::Ack | Kind::Nack, Machine::Reliable(s, _)) => {
                let r = s.handle_packet(p, now);
                let all_done = p.flags & reliable::FLAG_CLOSE_ACK != 0
                    && p.base >= s.next_seq()
                    && s.in_flight() == 0;
                if all_done && self.closing.as_ref().is_some_and(|c| !c.finished) {
                    self.finish_close(Ok(()), now);
                }
                self.retry_parked(now);
                r
            }
            (Kind::Open | Kind::OpenRpc, _) => {
                if let Some(a) = &self.accept {
                    self.extra.push(Extra {
                        bytes: a.clone(),
                        to: self.peer.clone(),
                        tracked: false,
                    });
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
                    None => self.absent = Some((now, e)),
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
            self.stats_rejected += 1;
        }
    }

    /// Responder: join the 2-member group from the initiator's Welcome,
    /// check that the initiator's MLS identity is the authenticated peer,
    /// and confirm (again, for a retransmitted Welcome).
    fn on_welcome(&mut self, inc: &Incoming, now: Instant) {
        if let Some(j) = &self.joined {
            self.extra.push(Extra {
                bytes: j.clone(),
                to: self.peer.clone(),
                tracked: false,
            });
            return;
        }
        let MlsState::Pending(identity) = &self.mls else {
            self.stats_rejected += 1;
            return;
        };
        let joined = Group::join(identity, &inc.packet.body, identity.bundles())
            .map_err(mls_err)
            .and_then(|g| {
                let own = g.own_id().as_str().to_owned();
                let others: Vec<String> = g
                    .members()
                    .iter()
                    .map(|m| m.as_str().to_owned())
                    .filter(|m| *m != own)
                    .collect();
                match others.as_slice() {
                    [one] => check_mls_peer(one, self.peer_identity.as_deref()).map(|()| g),
                    _ => Err(SessionError::Mls(format!(
                        "a point-to-point group has 2 members, this one {}",
                        others.len() + 1
                    ))),
                }
            });
        match joined {
            Ok(g) => {
                self.mls = MlsState::Ready(Box::new(g));
                let mut a = Packet::new(self.id, Kind::Accept, &self.me);
                a.flags = OPEN_MLS | ACCEPT_JOINED;
                if let Ok(b) = a.encode() {
                    self.extra.push(Extra {
                        bytes: b.clone(),
                        to: self.peer.clone(),
                        tracked: false,
                    });
                    self.joined = Some(b);
                }
            }
            Err(e) => {
                let mut r = Packet::new(self.id, Kind::Refuse, &self.me);
                r.body = Bytes::from(e.to_string().into_bytes());
                if let Ok(b) = r.encode() {
                    self.extra.push(Extra {
                        bytes: b,
                        to: self.peer.clone(),
                        tracked: false,
                    });
                }
                self.fail(e, now);
            }
        }
    }

    /// Publishes everything the machines and the driver have queued.
    async fn flush(&mut self) -> Result<(), SessionError> {
        let (mux, peer, id) = (&self.mux, &self.peer, self.id);
        match &mut self.machine {
            Machine::Reliable(s, r) => {
                while let Some(b) = s.poll_transmit() {
                    mux.publish(id, peer, Mode::Unicast, &b).await?;
                }
                // Acks: losing one is harmless, and a peer gone is seen by its data.
                while let Some(b) = r.poll_transmit() {
                    mux.publish_silent(peer, Mode::Unicast, &b).await?;
                }
            }
            Machine::Unreliable(s, _) => {
                while let Some(b) = s.poll_transmit() {
                    mux.publish(id, peer, Mode::Unicast, &b).await?;
                }
            }
        }
        for e in self.extra.drain(..) {
            if e.tracked {
                mux.publish(id, &e.to, Mode::Unicast, &e.bytes).await?;
            } else {
                mux.publish_silent(&e.to, Mode::Unicast, &e.bytes).await?;
            }
        }
        Ok(())
    }
}

fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
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
