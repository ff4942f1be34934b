//! The session multiplexer: one dispatcher task per [`Client`] that reads
//! everything the node delivers and hands session packets to the session
//! that owns their `session_id`, so that any number of sessions share the
//! client's one QUIC connection.
//!
//! Session traffic is the payload of ordinary SLIM publishes; the node never
//! parses it. A delivery is recognised as a session packet by a cheap prefix
//! check (the MessagePack marker of the packet's 9-element array followed by
//! the packet version) and then a full [`Packet::decode`]; anything else —
//! and node errors that do not belong to a tracked session publish — goes to
//! the application's receiver untouched.
//!
//! The dispatcher never waits on a session: inboxes are bounded and a packet
//! for a full inbox is dropped and counted (the reliability layers recover by
//! retransmission). Packets for an unknown session go to the acceptor for
//! their kind (a new p2p session, an RPC open, an invite); with no acceptor
//! they are dropped and counted, and for point-to-point kinds the sender is
//! told with an `Unreachable` packet so that it fails fast instead of
//! retrying into the void.

use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use slim_wire::{ErrorCode, Mode, Name};
use tokio::sync::mpsc;

use super::SessionError;
use super::packet::{Kind, Packet, VERSION};
use crate::client::Client;
use crate::error::ClientError;
use crate::event::Event;
use slim_wire::FLAG_NO_ROUTE_SILENT;

/// A session packet handed to a session (or an acceptor).
#[derive(Debug, Clone)]
pub struct Incoming {
    pub packet: Packet,
    /// The publisher's full name (`Deliver.from`).
    pub from: Name,
    /// The publisher's SPIFFE ID as authenticated by its node.
    pub from_identity: Option<Arc<str>>,
    /// The name it was published to.
    pub name: Name,
    pub mode: Mode,
}

/// Flag on an `Unreachable` the mux made from the node's error (as opposed
/// to one the peer's mux sent): the node has no route *now*, which during a
/// reconnect can be brief.
pub const UNREACHABLE_FROM_NODE: u16 = 0b1;

/// How many node errors can be matched back to the session publish that
/// caused them. A `NO_ROUTE` comes back within one round trip, so only the
/// most recent tracked publishes need remembering.
const TRACKED: usize = 16 * 1024;
/// Deliveries the dispatcher takes from the client per wake-up.
const BATCH: usize = 256;
/// `Unreachable` answers waiting to be published; beyond this they are
/// dropped (the peer's own timers still end its session).
const REPLIES: usize = 1024;

struct Metrics {
    unroutable: metrics::Counter,
    inbox_full: metrics::Counter,
    app_dropped: metrics::Counter,
    malformed: metrics::Counter,
}

impl Metrics {
    fn new(on: bool) -> Metrics {
        if !on {
            return Metrics {
                unroutable: metrics::Counter::noop(),
                inbox_full: metrics::Counter::noop(),
                app_dropped: metrics::Counter::noop(),
                malformed: metrics::Counter::noop(),
            };
        }
        Metrics {
            unroutable: metrics::counter!("slim_client_session_unroutable_total"),
            inbox_full: metrics::counter!("slim_client_session_inbox_dropped_total"),
            app_dropped: metrics::counter!("slim_client_session_app_dropped_total"),
            malformed: metrics::counter!("slim_client_session_malformed_total"),
        }
    }
}

/// Counters of what the dispatcher could not hand on (also exported as
/// `slim_client_session_*` metrics when the client's metrics are on).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MuxStats {
    /// Packets for an unregistered session with no acceptor for their kind.
    pub unroutable: u64,
    /// Packets dropped because their session's inbox was full.
    pub inbox_full: u64,
    /// Non-session deliveries and errors dropped because the app receiver was full.
    pub app_dropped: u64,
    /// Deliveries that looked like session packets but did not decode.
    pub malformed: u64,
}

#[derive(Default)]
struct Tracked {
    by_msg: HashMap<u64, u64>,
    order: VecDeque<u64>,
}

struct Inner {
    client: Client,
    sessions: RwLock<HashMap<u64, mpsc::Sender<Incoming>>>,
    acceptors: RwLock<HashMap<Kind, mpsc::Sender<Incoming>>>,
    tracked: Mutex<Tracked>,
    stats: Mutex<MuxStats>,
    metrics: Metrics,
    replies: mpsc::Sender<(Name, Packet)>,
    /// When the last overflow was logged, and the drops since.
    overflow_log: Mutex<(Option<std::time::Instant>, u64)>,
}

/// Aborts the dispatcher and reply tasks when the last handle goes.
struct Life {
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for Life {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The per-client session multiplexer. Cheap to clone; the dispatcher stops
/// (and the client closes) when the last clone, and the last [`Inbox`], is
/// dropped.
#[derive(Clone)]
pub struct SessionMux {
    inner: Arc<Inner>,
    _life: Arc<Life>,
}

impl std::fmt::Debug for SessionMux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionMux")
            .field("client", self.inner.client.name())
            .finish()
    }
}

impl SessionMux {
    /// Spawns the dispatcher task. Deliveries whose payload is not a session
    /// packet, and node `Event::Error`s not caused by a tracked session
    /// publish, go to the returned receiver (bounded by the client's
    /// `inbound_capacity`; when full they are dropped and counted, because
    /// the dispatcher must not stall every session for one slow reader).
    /// The dispatcher is from then on the client's only reader: take raw
    /// traffic from the returned receiver, not from `Client::recv`.
    pub fn new(client: Client) -> (SessionMux, mpsc::Receiver<Event>) {
        let cap = client.shared.cfg.inbound_capacity.max(1);
        let (app_tx, app_rx) = mpsc::channel(cap);
        let (reply_tx, reply_rx) = mpsc::channel(REPLIES);
        let inner = Arc::new(Inner {
            metrics: Metrics::new(client.metrics_on()),
            client,
            sessions: RwLock::new(HashMap::new()),
            acceptors: RwLock::new(HashMap::new()),
            tracked: Mutex::new(Tracked::default()),
            stats: Mutex::new(MuxStats::default()),
            replies: reply_tx,
            overflow_log: Mutex::new((None, 0)),
        });
        let d = tokio::spawn(dispatch(Arc::clone(&inner), app_tx));
        let r = tokio::spawn(reply(Arc::clone(&inner), reply_rx));
        let life = Arc::new(Life {
            tasks: vec![d.abort_handle(), r.abort_handle()],
        });
        (SessionMux { inner, _life: life }, app_rx)
    }

    /// The client; publish and subscribe through it.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Packets for `session_id` go to the returned inbox (bounded to `cap`;
    /// when full the packet is dropped and counted). Dropping the inbox
    /// unregisters the session.
    pub fn register(&self, session_id: u64, cap: usize) -> Result<Inbox, SessionError> {
        let (tx, rx) = mpsc::channel(cap.max(1));
        let mut map = write(&self.inner.sessions);
        if map.get(&session_id).is_some_and(|old| !old.is_closed()) {
            return Err(SessionError::AlreadyRegistered(session_id));
        }
        map.insert(session_id, tx.clone());
        Ok(Inbox {
            rx,
            guard: Unregister {
                mux: self.clone(),
                session_id,
                tx,
            },
        })
    }

    /// Session packets of these kinds whose session id is not registered go
    /// to the returned receiver. One acceptor per kind; dropping the
    /// receiver frees its kinds.
    pub fn acceptor(
        &self,
        kinds: &[Kind],
        cap: usize,
    ) -> Result<mpsc::Receiver<Incoming>, SessionError> {
        let (tx, rx) = mpsc::channel(cap.max(1));
        let mut map = write(&self.inner.acceptors);
        for k in kinds {
            if map.get(k).is_some_and(|t| !t.is_closed()) {
                return Err(SessionError::AcceptorTaken(*k));
            }
        }
        for k in kinds {
            map.insert(*k, tx.clone());
        }
        Ok(rx)
    }

    /// Publishes an encoded session packet for `session_id`; if the node
    /// refuses it (no route, unauthorized, …) the session's inbox gets an
    /// `Unreachable` packet with the error code in `seq` and the reason in
    /// `body`, so the session fails fast and with a typed cause.
    pub async fn publish(
        &self,
        session_id: u64,
        name: &Name,
        mode: Mode,
        packet: &[u8],
    ) -> Result<u64, SessionError> {
        self.publish_tracked(session_id, name, mode, 0, packet)
            .await
    }

    /// [`SessionMux::publish`] with publish `flags` (e.g.
    /// [`FLAG_NO_ROUTE_SILENT`]: other refusals still come back).
    pub async fn publish_tracked(
        &self,
        session_id: u64,
        name: &Name,
        mode: Mode,
        flags: u8,
        packet: &[u8],
    ) -> Result<u64, SessionError> {
        let msg_id = self.inner.client.reserve_msg_id();
        {
            let mut t = self.inner.tracked.lock();
            if t.order.len() >= TRACKED
                && let Some(old) = t.order.pop_front()
            {
                t.by_msg.remove(&old);
            }
            t.by_msg.insert(msg_id, session_id);
            t.order.push_back(msg_id);
        }
        self.inner
            .client
            .publish_with_id(name, mode, flags, msg_id, packet)
            .await
            .map_err(client_err)
    }

    /// Publishes an encoded session packet without error tracking (acks and
    /// other traffic whose loss the protocol tolerates): a `NO_ROUTE` for it
    /// is not even sent by the node.
    pub async fn publish_silent(
        &self,
        name: &Name,
        mode: Mode,
        packet: &[u8],
    ) -> Result<u64, SessionError> {
        self.inner
            .client
            .publish_with(name, mode, FLAG_NO_ROUTE_SILENT, packet)
            .await
            .map_err(client_err)
    }

    /// What the dispatcher has dropped so far.
    pub fn stats(&self) -> MuxStats {
        self.inner.stats.lock().clone()
    }

    /// Whether `session_id` is registered.
    pub fn is_registered(&self, session_id: u64) -> bool {
        read(&self.inner.sessions)
            .get(&session_id)
            .is_some_and(|t| !t.is_closed())
    }
}

pub(crate) fn client_err(e: ClientError) -> SessionError {
    SessionError::Client(e.to_string())
}

/// A session's queue of incoming packets; dropping it unregisters the session.
pub struct Inbox {
    rx: mpsc::Receiver<Incoming>,
    guard: Unregister,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("session_id", &self.guard.session_id)
            .finish()
    }
}

impl Inbox {
    pub async fn recv(&mut self) -> Option<Incoming> {
        self.rx.recv().await
    }

    pub fn try_recv(&mut self) -> Option<Incoming> {
        self.rx.try_recv().ok()
    }

    /// Takes up to `max` packets at once.
    pub async fn recv_many(&mut self, buf: &mut Vec<Incoming>, max: usize) -> usize {
        self.rx.recv_many(buf, max).await
    }

    pub fn session_id(&self) -> u64 {
        self.guard.session_id
    }

    /// The mux this inbox is registered with.
    pub fn mux(&self) -> &SessionMux {
        &self.guard.mux
    }
}

struct Unregister {
    mux: SessionMux,
    session_id: u64,
    tx: mpsc::Sender<Incoming>,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        let mut map = write(&self.mux.inner.sessions);
        // Only our own registration: the id may have been taken over since.
        if map
            .get(&self.session_id)
            .is_some_and(|t| t.same_channel(&self.tx))
        {
            map.remove(&self.session_id);
        }
    }
}

fn read<T>(l: &RwLock<T>) -> parking_lot::RwLockReadGuard<'_, T> {
    l.read()
}

fn write<T>(l: &RwLock<T>) -> parking_lot::RwLockWriteGuard<'_, T> {
    l.write()
}

/// Cheap check before decoding: a packet is a 9-element MessagePack array
/// (`0x99`) whose first element is the version.
fn looks_like_packet(payload: &[u8]) -> bool {
    payload.len() >= 2 && payload[0] == 0x99 && payload[1] == VERSION
}

/// Kinds for which an unknown session is worth telling the sender about:
/// they start or carry point-to-point traffic. Acks, closes and group
/// traffic are not answered (that would only add noise, or loops).
fn answer_unknown(kind: Kind, mode: Mode) -> bool {
    mode != Mode::Multicast
        && matches!(
            kind,
            // A late `Accept` for an open we gave up on: the responder's
            // session learns at once that nobody is on the other end.
            Kind::Data | Kind::Open | Kind::OpenRpc | Kind::Accept
        )
}

async fn dispatch(inner: Arc<Inner>, app: mpsc::Sender<Event>) {
    let mut buf = Vec::with_capacity(BATCH);
    loop {
        buf.clear();
        if inner.client.recv_many(&mut buf, BATCH).await == 0 {
            return;
        }
        for ev in buf.drain(..) {
            inner.dispatch_one(ev, &app);
        }
    }
}

/// How often an overflow of the dispatcher is logged at most; the log line
/// carries the count since the last one.
const OVERFLOW_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl Inner {
    fn count(&self, f: impl FnOnce(&mut MuxStats)) {
        f(&mut self.stats.lock());
    }

    /// Surfaces a drop by the dispatcher (which must not wait on one slow
    /// session, or every other session would stall behind it): counted in
    /// [`MuxStats`] and the metrics, and logged once per
    /// [`OVERFLOW_LOG_EVERY`] with the running total.
    fn overflowed(&self, what: &'static str) {
        let mut log = self.overflow_log.lock();
        log.1 += 1;
        let now = std::time::Instant::now();
        if log
            .0
            .is_none_or(|t| now.duration_since(t) >= OVERFLOW_LOG_EVERY)
        {
            let n = std::mem::take(&mut log.1);
            log.0 = Some(now);
            tracing::warn!(
                client = %self.client.name(),
                what,
                dropped = n,
                "{}: dropped {n} incoming message(s) because {what} was full: the application does not read them as fast as they arrive (reliable sessions retransmit; others lose them). Read faster or raise the capacity.",
                self.client.name()
            );
        }
    }

    fn to_app(&self, ev: Event, app: &mpsc::Sender<Event>) {
        if let Err(mpsc::error::TrySendError::Full(_)) = app.try_send(ev) {
            self.metrics.app_dropped.increment(1);
            self.count(|s| s.app_dropped += 1);
            self.overflowed("the application's receive queue");
        }
    }

    fn dispatch_one(&self, ev: Event, app: &mpsc::Sender<Event>) {
        match ev {
            Event::Message(d) => {
                if !looks_like_packet(&d.payload) {
                    return self.to_app(Event::Message(d), app);
                }
                let packet = match Packet::decode(&d.payload) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::debug!(from = %d.from, error = %e, "undecodable session packet");
                        self.metrics.malformed.increment(1);
                        self.count(|s| s.malformed += 1);
                        return self.to_app(Event::Message(d), app);
                    }
                };
                let inc = Incoming {
                    packet,
                    from: d.from,
                    from_identity: d.from_identity,
                    name: d.name,
                    mode: d.mode,
                };
                self.route(inc);
            }
            Event::Error(e) => {
                let session = e.msg_id.and_then(|id| {
                    let mut t = self.tracked.lock();
                    t.by_msg.remove(&id)
                });
                let Some(session_id) = session else {
                    return self.to_app(Event::Error(e), app);
                };
                let dest = e.name.clone().unwrap_or_else(|| self.client.name().clone());
                let mut p = Packet::new(session_id, Kind::Unreachable, dest.as_str());
                p.flags = UNREACHABLE_FROM_NODE;
                p.seq = u64::from(e.code.0);
                p.body = bytes::Bytes::from(e.reason.into_bytes());
                let inc = Incoming {
                    packet: p,
                    from: dest.clone(),
                    from_identity: None,
                    name: self.client.name().clone(),
                    mode: Mode::Unicast,
                };
                if self.to_session(inc).is_some() {
                    self.metrics.unroutable.increment(1);
                    self.count(|s| s.unroutable += 1);
                }
            }
        }
    }

    /// Hands `inc` to its session; gives it back if no session has its id.
    fn to_session(&self, inc: Incoming) -> Option<Incoming> {
        let sessions = read(&self.sessions);
        let Some(tx) = sessions.get(&inc.packet.session_id) else {
            return Some(inc);
        };
        match tx.try_send(inc) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.inbox_full.increment(1);
                self.count(|s| s.inbox_full += 1);
                self.overflowed("a session's inbox");
                None
            }
            // Being dropped: as if unknown.
            Err(mpsc::error::TrySendError::Closed(inc)) => Some(inc),
        }
    }

    fn route(&self, inc: Incoming) {
        let (kind, mode) = (inc.packet.kind, inc.mode);
        let Some(inc) = self.to_session(inc) else {
            return;
        };
        let (from, session_id) = (inc.from.clone(), inc.packet.session_id);
        let acceptor = read(&self.acceptors).get(&kind).cloned();
        if let Some(tx) = acceptor {
            match tx.try_send(inc) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // The peer retries its open; refusing would be final.
                    self.metrics.inbox_full.increment(1);
                    self.count(|s| s.inbox_full += 1);
                    self.overflowed("the queue of sessions waiting to be accepted");
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        self.metrics.unroutable.increment(1);
        self.count(|s| s.unroutable += 1);
        if answer_unknown(kind, mode) && from != *self.client.name() {
            let mut p = Packet::new(session_id, Kind::Unreachable, self.client.name().as_str());
            p.seq = u64::from(ErrorCode::NO_ROUTE.0);
            p.body = bytes::Bytes::from_static(b"no such session");
            let _ = self.replies.try_send((from, p));
        }
    }
}

/// Publishes `Unreachable` answers off the dispatcher, which must not wait
/// on the client's outbound queue.
async fn reply(inner: Arc<Inner>, mut rx: mpsc::Receiver<(Name, Packet)>) {
    while let Some((to, p)) = rx.recv().await {
        let Ok(bytes) = p.encode() else { continue };
        let _ = inner
            .client
            .publish_with(&to, Mode::Unicast, FLAG_NO_ROUTE_SILENT, &bytes)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_check_matches_encoded_packets() {
        for k in [Kind::Data, Kind::Ack, Kind::Open, Kind::Unreachable] {
            let p = Packet::new(7, k, "a/b/c/d").encode().unwrap();
            assert!(looks_like_packet(&p), "{k:?}");
        }
        assert!(!looks_like_packet(b""));
        assert!(!looks_like_packet(b"hello"));
        assert!(!looks_like_packet(&[0x99, VERSION + 1]));
    }

    #[test]
    fn unknown_sessions_answered_only_for_p2p_starts() {
        assert!(answer_unknown(Kind::Open, Mode::Anycast));
        assert!(answer_unknown(Kind::Data, Mode::Unicast));
        assert!(!answer_unknown(Kind::Data, Mode::Multicast));
        assert!(!answer_unknown(Kind::Ack, Mode::Unicast));
        assert!(!answer_unknown(Kind::Unreachable, Mode::Unicast));
    }
}
