//! Request/response RPC and server streaming over point-to-point sessions.
//!
//! A requester ([`RpcClient`]) opens one session per destination name (with
//! `OpenRpc`, anycast, so the responder's acceptor takes it and the session
//! binds to the instance that answered) and multiplexes calls over it by call
//! id; many calls can be outstanding at once. Because calls ride a session,
//! they get its guarantees: reliable mode gives ordered, exactly-once
//! requests and responses (a stream of responses arrives in order), and MLS,
//! once sessions have it, would encrypt them end to end.
//!
//! Each RPC frame is one session message:
//! `tag: u8 | call_id: u64 BE | rest`, where by tag
//!
//! | tag | frame | rest |
//! |---|---|---|
//! | 0 | `Request` | `timeout_ms: u32 BE` (remaining time, so the responder can drop late work) + payload |
//! | 1 | `Item` (one response of a stream) | payload |
//! | 2 | `End` (end of stream) | – |
//! | 3 | `Error` (the responder failed the call) | reason, UTF-8 |
//! | 4 | `Cancel` (the requester gave up) | – |
//! | 5 | `Reply` (the one response of a unary call) | payload |
//!
//! A deadline covers the whole call, including opening the session. With no
//! subscriber to the name the node's `NO_ROUTE` comes back as
//! [`RpcError::NoResponder`] within a round trip.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use slim_wire::Name;
use tokio::sync::{OnceCell, mpsc};
use tokio::time::Instant;

use super::mux::SessionMux;
use super::p2p::{self, P2pConfig, P2pEvent, P2pListener, P2pReceiver, P2pSender, P2pSession};
use super::{Kind, SessionError};

/// Everything an RPC can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// The deadline passed before the (last) response.
    #[error("deadline of {0:?} expired")]
    Timeout(Duration),
    /// Nobody subscribes to the name.
    #[error("no responder for {name}")]
    NoResponder { name: String },
    /// The responder failed the call.
    #[error("responder error: {0}")]
    Remote(String),
    /// The responder ended a unary call without a response.
    #[error("the responder ended the call without a response")]
    NoResponse,
    /// The request was not acknowledged by the responder after all retries.
    #[error("request could not be delivered")]
    DeliveryFailed,
    /// The session carrying the call failed or closed.
    #[error("session: {0}")]
    Session(SessionError),
    #[error("malformed RPC frame: {0}")]
    Malformed(String),
}

impl From<SessionError> for RpcError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::NoResponder { name, .. } => RpcError::NoResponder { name },
            e => RpcError::Session(e),
        }
    }
}

const TAG_REQUEST: u8 = 0;
const TAG_ITEM: u8 = 1;
const TAG_END: u8 = 2;
const TAG_ERROR: u8 = 3;
const TAG_CANCEL: u8 = 4;
const TAG_REPLY: u8 = 5;

/// A decoded RPC frame.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Frame {
    Request {
        call: u64,
        timeout_ms: u32,
        payload: Bytes,
    },
    Item(u64, Bytes),
    End(u64),
    Error(u64, String),
    Cancel(u64),
    Reply(u64, Bytes),
}

impl Frame {
    fn call(&self) -> u64 {
        match self {
            Frame::Request { call, .. }
            | Frame::Item(call, _)
            | Frame::End(call)
            | Frame::Error(call, _)
            | Frame::Cancel(call)
            | Frame::Reply(call, _) => *call,
        }
    }

    fn encode(&self) -> Bytes {
        let (tag, call, extra, body): (u8, u64, Option<u32>, &[u8]) = match self {
            Frame::Request {
                call,
                timeout_ms,
                payload,
            } => (TAG_REQUEST, *call, Some(*timeout_ms), payload),
            Frame::Item(c, p) => (TAG_ITEM, *c, None, p),
            Frame::End(c) => (TAG_END, *c, None, &[]),
            Frame::Error(c, r) => (TAG_ERROR, *c, None, r.as_bytes()),
            Frame::Cancel(c) => (TAG_CANCEL, *c, None, &[]),
            Frame::Reply(c, p) => (TAG_REPLY, *c, None, p),
        };
        let mut b = BytesMut::with_capacity(13 + body.len());
        b.put_u8(tag);
        b.put_u64(call);
        if let Some(t) = extra {
            b.put_u32(t);
        }
        b.put_slice(body);
        b.freeze()
    }

    fn decode(mut b: Bytes) -> Result<Frame, RpcError> {
        if b.len() < 9 {
            return Err(RpcError::Malformed(format!("{} bytes, need 9", b.len())));
        }
        let tag = b[0];
        let call = u64::from_be_bytes(b[1..9].try_into().unwrap_or([0; 8]));
        let rest = b.split_off(9);
        let empty = |rest: &Bytes| {
            if rest.is_empty() {
                Ok(())
            } else {
                Err(RpcError::Malformed(format!(
                    "{} trailing bytes",
                    rest.len()
                )))
            }
        };
        Ok(match tag {
            TAG_REQUEST => {
                if rest.len() < 4 {
                    return Err(RpcError::Malformed("request without a timeout".into()));
                }
                let timeout_ms = u32::from_be_bytes(rest[..4].try_into().unwrap_or([0; 4]));
                Frame::Request {
                    call,
                    timeout_ms,
                    payload: rest.slice(4..),
                }
            }
            TAG_ITEM => Frame::Item(call, rest),
            TAG_END => {
                empty(&rest)?;
                Frame::End(call)
            }
            TAG_ERROR => Frame::Error(call, String::from_utf8_lossy(&rest).into_owned()),
            TAG_CANCEL => {
                empty(&rest)?;
                Frame::Cancel(call)
            }
            TAG_REPLY => Frame::Reply(call, rest),
            t => return Err(RpcError::Malformed(format!("unknown tag {t}"))),
        })
    }
}

/// RPC settings.
#[derive(Debug, Clone)]
pub struct RpcConfig {
    /// The sessions calls ride on.
    pub session: P2pConfig,
    /// Responses buffered per call before the session waits for the reader.
    pub call_buffer: usize,
    /// Requests buffered for the responder application.
    pub requests: usize,
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            session: P2pConfig::default(),
            call_buffer: 256,
            requests: 1024,
        }
    }
}

type Calls = Arc<Mutex<CallTable>>;

#[derive(Default)]
struct CallTable {
    calls: HashMap<u64, mpsc::Sender<Result<Frame, RpcError>>>,
    /// Session seq of each call's request, to pin a `DeliveryFailed` on it.
    by_seq: HashMap<u64, u64>,
    /// Set once the session has ended: new calls must reopen.
    dead: Option<RpcError>,
}

fn lock(c: &Calls) -> parking_lot::MutexGuard<'_, CallTable> {
    c.lock()
}

/// One session to one destination, shared by that destination's calls.
struct Conn {
    tx: P2pSender,
    calls: Calls,
    next_call: AtomicU64,
}

impl Conn {
    fn is_dead(&self) -> bool {
        lock(&self.calls).dead.is_some() || self.tx.is_closed()
    }
}

/// Makes calls; keeps one session per destination name, reopened when it fails.
pub struct RpcClient {
    mux: SessionMux,
    cfg: RpcConfig,
    conns: Arc<Conns>,
}

/// An [`RpcClient`]'s sessions, one per destination called. A session that
/// ends (its peer left, or it failed) takes its own entry out: an agent that
/// calls many peers that come and go keeps the live sessions only, not one
/// dead session per peer it ever called.
type Conns = Mutex<HashMap<Name, Cell>>;
type Cell = Arc<OnceCell<Arc<Conn>>>;

/// Takes `name`'s entry out of `conns` if it is still `cell` (not a newer
/// session's, opened since).
fn forget_conn(conns: &Conns, name: &Name, cell: &Cell) {
    let mut m = conns.lock();
    if m.get(name).is_some_and(|c| Arc::ptr_eq(c, cell)) {
        m.remove(name);
    }
}

/// Where a session's entry is, for the session to take it out as it ends
/// (weak: the session must not keep its client's map, or its own entry,
/// alive).
struct Entry {
    conns: std::sync::Weak<Conns>,
    name: Name,
    cell: std::sync::Weak<OnceCell<Arc<Conn>>>,
}

impl std::fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient").finish_non_exhaustive()
    }
}

/// One call's response side.
struct Call {
    rx: mpsc::Receiver<Result<Frame, RpcError>>,
    conn: Arc<Conn>,
    id: u64,
    /// The session seq of the request, once sent.
    seq: Option<u64>,
    done: bool,
}

impl Drop for Call {
    fn drop(&mut self) {
        {
            let mut t = lock(&self.conn.calls);
            t.calls.remove(&self.id);
            if let Some(seq) = self.seq {
                t.by_seq.remove(&seq);
            }
        }
        if !self.done {
            // Best effort: tell the responder to stop working on it.
            let _ = self.conn.tx.try_send(Frame::Cancel(self.id).encode());
        }
    }
}

/// The responses of a streaming call, in order.
pub struct ResponseStream {
    call: Call,
    deadline: Instant,
    timeout: Duration,
}

impl std::fmt::Debug for ResponseStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseStream")
            .field("call", &self.call.id)
            .finish()
    }
}

impl ResponseStream {
    /// The next response; `None` after the end of the stream. An error is
    /// final (the next call returns `None`).
    pub async fn next(&mut self) -> Option<Result<Bytes, RpcError>> {
        if self.call.done {
            return None;
        }
        let r = match tokio::time::timeout_at(self.deadline, self.call.rx.recv()).await {
            Err(_) => Err(RpcError::Timeout(self.timeout)),
            Ok(None) => Err(RpcError::Session(SessionError::Closed)),
            Ok(Some(Err(e))) => Err(e),
            Ok(Some(Ok(Frame::Item(_, b)))) => return Some(Ok(b)),
            Ok(Some(Ok(Frame::Reply(_, b)))) => {
                self.call.done = true;
                return Some(Ok(b));
            }
            Ok(Some(Ok(Frame::End(_)))) => {
                self.call.done = true;
                return None;
            }
            Ok(Some(Ok(Frame::Error(_, r)))) => Err(RpcError::Remote(r)),
            Ok(Some(Ok(f))) => Err(RpcError::Malformed(format!("unexpected {f:?}"))),
        };
        // A timeout leaves `done` unset so that dropping the call cancels it.
        if !matches!(r, Err(RpcError::Timeout(_))) {
            self.call.done = true;
        } else {
            let (tx, rx) = mpsc::channel(1);
            drop(tx);
            // Further `next` calls return `None`.
            self.call.rx = rx;
        }
        Some(r)
    }
}

impl RpcClient {
    pub fn new(mux: &SessionMux, cfg: RpcConfig) -> RpcClient {
        RpcClient {
            mux: mux.clone(),
            cfg,
            conns: Arc::default(),
        }
    }

    /// Sessions this client keeps open (one per destination called whose
    /// session has not ended).
    pub fn sessions(&self) -> usize {
        self.conns.lock().len()
    }

    /// Sends `payload` to `name` and waits for the response until `timeout`.
    pub async fn request(
        &self,
        name: &Name,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Bytes, RpcError> {
        let deadline = Instant::now() + timeout;
        let mut call = self.start(name, payload.into(), deadline, timeout).await?;
        let (r, terminal) = match tokio::time::timeout_at(deadline, call.rx.recv()).await {
            // Dropping the call unfinished cancels it at the responder.
            Err(_) => return Err(RpcError::Timeout(timeout)),
            Ok(None) => (Err(RpcError::Session(SessionError::Closed)), true),
            Ok(Some(Err(e))) => (Err(e), true),
            Ok(Some(Ok(Frame::Reply(_, b)))) => (Ok(b), true),
            // A unary call answered with a stream keeps the first item and
            // cancels the rest.
            Ok(Some(Ok(Frame::Item(_, b)))) => (Ok(b), false),
            Ok(Some(Ok(Frame::End(_)))) => (Err(RpcError::NoResponse), true),
            Ok(Some(Ok(Frame::Error(_, r)))) => (Err(RpcError::Remote(r)), true),
            Ok(Some(Ok(f))) => (Err(RpcError::Malformed(format!("unexpected {f:?}"))), true),
        };
        call.done = terminal;
        r
    }

    /// Sends `payload` to `name`; the responses arrive on the returned
    /// stream, in order, until the end of stream or `timeout`.
    pub async fn request_stream(
        &self,
        name: &Name,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<ResponseStream, RpcError> {
        let deadline = Instant::now() + timeout;
        let call = self.start(name, payload.into(), deadline, timeout).await?;
        Ok(ResponseStream {
            call,
            deadline,
            timeout,
        })
    }

    async fn start(
        &self,
        name: &Name,
        payload: Bytes,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Call, RpcError> {
        let conn = tokio::time::timeout_at(deadline, self.conn(name))
            .await
            .map_err(|_| RpcError::Timeout(timeout))??;
        let id = conn.next_call.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.cfg.call_buffer.max(1));
        {
            let mut t = lock(&conn.calls);
            if let Some(e) = &t.dead {
                return Err(e.clone());
            }
            t.calls.insert(id, tx);
        }
        let mut call = Call {
            rx,
            conn: Arc::clone(&conn),
            id,
            seq: None,
            done: false,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = Frame::Request {
            call: id,
            timeout_ms: u32::try_from(left.as_millis()).unwrap_or(u32::MAX),
            payload,
        };
        let seq = tokio::time::timeout_at(deadline, conn.tx.send(frame.encode()))
            .await
            .map_err(|_| RpcError::Timeout(timeout))??;
        lock(&conn.calls).by_seq.insert(seq, id);
        call.seq = Some(seq);
        Ok(call)
    }

    /// The live session to `name`, opening one if needed.
    async fn conn(&self, name: &Name) -> Result<Arc<Conn>, RpcError> {
        loop {
            let cell = {
                let mut m = self.conns.lock();
                Arc::clone(m.entry(name.clone()).or_default())
            };
            let r = cell
                .get_or_try_init(|| async {
                    let s =
                        p2p::open(&self.mux, name, self.cfg.session.clone(), Kind::OpenRpc).await?;
                    let entry = Entry {
                        conns: Arc::downgrade(&self.conns),
                        name: name.clone(),
                        cell: Arc::downgrade(&cell),
                    };
                    Ok::<_, RpcError>(Arc::new(start_conn(s, entry)))
                })
                .await;
            match r {
                Ok(c) if !c.is_dead() => return Ok(Arc::clone(c)),
                // The session died since: drop it and open a fresh one.
                Ok(_) => forget_conn(&self.conns, name, &cell),
                Err(e) => {
                    forget_conn(&self.conns, name, &cell);
                    return Err(e);
                }
            }
        }
    }
}

/// Starts a session's response reader; when the session ends, its entry
/// goes too.
fn start_conn(s: P2pSession, entry: Entry) -> Conn {
    let (tx, rx) = s.into_split();
    let calls: Calls = Arc::default();
    let c = Arc::clone(&calls);
    tokio::spawn(async move {
        read_responses(rx, c).await;
        if let (Some(conns), Some(cell)) = (entry.conns.upgrade(), entry.cell.upgrade()) {
            forget_conn(&conns, &entry.name, &cell);
        }
    });
    Conn {
        tx,
        calls,
        next_call: AtomicU64::new(1),
    }
}

/// Routes a session's responses to their calls.
async fn read_responses(mut rx: P2pReceiver, calls: Calls) {
    let end = loop {
        let Some(ev) = rx.recv().await else {
            break RpcError::Session(SessionError::Closed);
        };
        match ev {
            P2pEvent::Message { payload, .. } => {
                let frame = match Frame::decode(payload) {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::debug!(error = %e, "bad RPC frame");
                        continue;
                    }
                };
                let id = frame.call();
                let terminal = !matches!(frame, Frame::Item(..));
                let tx = {
                    let mut t = lock(&calls);
                    if terminal {
                        t.calls.remove(&id)
                    } else {
                        t.calls.get(&id).cloned()
                    }
                };
                if let Some(tx) = tx {
                    // Waits while the caller is behind: stream responses are
                    // back-pressured through the session window.
                    let _ = tx.send(Ok(frame)).await;
                }
            }
            P2pEvent::DeliveryFailed { seq, .. } => {
                let tx = {
                    let mut t = lock(&calls);
                    t.by_seq.remove(&seq).and_then(|id| t.calls.remove(&id))
                };
                if let Some(tx) = tx {
                    let _ = tx.try_send(Err(RpcError::DeliveryFailed));
                }
            }
            // Which call a lost or undecryptable frame belonged to is not
            // knowable; those calls end at their deadline.
            P2pEvent::Lost { .. } => {}
            P2pEvent::Rejected { seq, reason } => {
                tracing::warn!(seq, %reason, "RPC frame rejected by MLS");
            }
            P2pEvent::PeerClosed { .. } => break RpcError::Session(SessionError::Closed),
            P2pEvent::Failed(e) => break RpcError::from(e),
        }
    };
    let pending: Vec<_> = {
        let mut t = lock(&calls);
        t.dead = Some(end.clone());
        t.calls.drain().map(|(_, tx)| tx).collect()
    };
    for tx in pending {
        let _ = tx.try_send(Err(end.clone()));
    }
}

/// A one-off call over a fresh session (use an [`RpcClient`] to reuse one).
pub async fn request(
    mux: &SessionMux,
    name: &Name,
    payload: impl Into<Bytes>,
    timeout: Duration,
) -> Result<Bytes, RpcError> {
    RpcClient::new(mux, RpcConfig::default())
        .request(name, payload, timeout)
        .await
}

impl SessionMux {
    /// `request(name, bytes, deadline)`: a one-off call over a fresh session
    /// (an [`RpcClient`] keeps sessions for repeated calls).
    pub async fn request(
        &self,
        name: &Name,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Bytes, RpcError> {
        request(self, name, payload, timeout).await
    }
}

/// One request to answer.
pub struct RpcRequest {
    pub payload: Bytes,
    /// The requester's full name.
    pub from: Name,
    /// The requester's SPIFFE ID as authenticated by its node.
    pub from_identity: Option<Arc<str>>,
    /// When the requester stops waiting.
    pub deadline: Instant,
    pub responder: Responder,
}

impl std::fmt::Debug for RpcRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcRequest")
            .field("from", &self.from)
            .field("len", &self.payload.len())
            .finish()
    }
}

/// Answers one request: [`Responder::reply`] once, or [`Responder::send`]
/// any number of times and then [`Responder::end`]. Dropped without either,
/// it fails the call so the requester does not wait for its deadline.
pub struct Responder {
    tx: P2pSender,
    call: u64,
    /// The session's calls being worked on, each with its cancelled flag.
    active: Active,
    done: bool,
}

type Active = Arc<Mutex<HashMap<u64, bool>>>;

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("call", &self.call)
            .finish()
    }
}

impl Responder {
    /// The unary response.
    pub async fn reply(mut self, payload: impl Into<Bytes>) -> Result<(), RpcError> {
        self.done = true;
        self.finish(Frame::Reply(self.call, payload.into())).await
    }

    /// One response of a stream.
    pub async fn send(&mut self, payload: impl Into<Bytes>) -> Result<(), RpcError> {
        if self.is_cancelled() {
            return Err(RpcError::Remote("cancelled by the requester".into()));
        }
        self.tx
            .send(Frame::Item(self.call, payload.into()).encode())
            .await?;
        Ok(())
    }

    /// End of stream.
    pub async fn end(mut self) -> Result<(), RpcError> {
        self.done = true;
        self.finish(Frame::End(self.call)).await
    }

    /// Fails the call with `reason`.
    pub async fn fail(mut self, reason: &str) -> Result<(), RpcError> {
        self.done = true;
        self.finish(Frame::Error(self.call, reason.to_owned()))
            .await
    }

    /// Whether the requester gave up on this call.
    pub fn is_cancelled(&self) -> bool {
        self.active.lock().get(&self.call).copied().unwrap_or(false)
    }

    async fn finish(&self, f: Frame) -> Result<(), RpcError> {
        self.forget();
        self.tx.send(f.encode()).await?;
        Ok(())
    }

    fn forget(&self) {
        self.active.lock().remove(&self.call);
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if !self.done {
            self.forget();
            let f = Frame::Error(self.call, "the responder dropped the request".into());
            let _ = self.tx.try_send(f.encode());
        }
    }
}

/// Receives requests sent to this client's service name.
pub struct RpcServer {
    requests: mpsc::Receiver<RpcRequest>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcServer").finish_non_exhaustive()
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RpcServer {
    /// Takes the mux's acceptor for RPC sessions.
    pub fn new(mux: &SessionMux, cfg: RpcConfig) -> Result<RpcServer, RpcError> {
        let listener = P2pListener::for_kind(mux, cfg.session.clone(), Kind::OpenRpc)?;
        let (tx, rx) = mpsc::channel(cfg.requests.max(1));
        let task = tokio::spawn(serve(listener, tx));
        Ok(RpcServer { requests: rx, task })
    }

    /// The next request; `None` once the mux is gone.
    pub async fn next(&mut self) -> Option<RpcRequest> {
        self.requests.recv().await
    }
}

async fn serve(mut listener: P2pListener, out: mpsc::Sender<RpcRequest>) {
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            s = listener.accept() => {
                let Some(s) = s else { return };
                sessions.spawn(serve_session(s, out.clone()));
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
}

async fn serve_session(s: P2pSession, out: mpsc::Sender<RpcRequest>) {
    let from = s.peer().clone();
    let from_identity = s.peer_identity().map(Arc::from);
    let (tx, mut rx) = s.into_split();
    let active: Active = Arc::default();
    while let Some(ev) = rx.recv().await {
        let P2pEvent::Message { payload, .. } = ev else {
            if matches!(ev, P2pEvent::PeerClosed { .. } | P2pEvent::Failed(_)) {
                break;
            }
            continue;
        };
        match Frame::decode(payload) {
            Ok(Frame::Request {
                call,
                timeout_ms,
                payload,
            }) => {
                active.lock().insert(call, false);
                let req = RpcRequest {
                    payload,
                    from: from.clone(),
                    from_identity: from_identity.clone(),
                    deadline: Instant::now() + Duration::from_millis(u64::from(timeout_ms)),
                    responder: Responder {
                        tx: tx.clone(),
                        call,
                        active: Arc::clone(&active),
                        done: false,
                    },
                };
                // Waits while the application is behind: requests are
                // back-pressured through the session window.
                if out.send(req).await.is_err() {
                    return;
                }
            }
            Ok(Frame::Cancel(call)) => {
                // Only calls still being worked on: a late cancel is moot.
                let mut a = active.lock();
                if let Some(c) = a.get_mut(&call) {
                    *c = true;
                }
            }
            Ok(f) => tracing::debug!(call = f.call(), "unexpected RPC frame at the responder"),
            Err(e) => tracing::debug!(error = %e, "bad RPC frame"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frames = [
            Frame::Request {
                call: 7,
                timeout_ms: 1500,
                payload: Bytes::from_static(b"ping"),
            },
            Frame::Request {
                call: u64::MAX,
                timeout_ms: 0,
                payload: Bytes::new(),
            },
            Frame::Item(1, Bytes::from_static(b"x")),
            Frame::Item(1, Bytes::new()),
            Frame::End(2),
            Frame::Error(3, "boom".into()),
            Frame::Cancel(4),
            Frame::Reply(5, Bytes::from_static(b"pong")),
        ];
        for f in frames {
            assert_eq!(Frame::decode(f.encode()).unwrap(), f);
        }
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        for bad in [
            &b""[..],
            &[0u8; 8][..],
            &[TAG_REQUEST, 0, 0, 0, 0, 0, 0, 0, 1, 0][..],
            &[TAG_END, 0, 0, 0, 0, 0, 0, 0, 1, 9][..],
            &[TAG_CANCEL, 0, 0, 0, 0, 0, 0, 0, 1, 9][..],
            &[99, 0, 0, 0, 0, 0, 0, 0, 1][..],
        ] {
            assert!(
                matches!(
                    Frame::decode(Bytes::copy_from_slice(bad)),
                    Err(RpcError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn no_responder_maps_from_the_session_error() {
        let e = RpcError::from(SessionError::NoResponder {
            name: "a/b/c".into(),
            reason: "x".into(),
        });
        assert_eq!(
            e,
            RpcError::NoResponder {
                name: "a/b/c".into()
            }
        );
        assert!(matches!(
            RpcError::from(SessionError::Closed),
            RpcError::Session(SessionError::Closed)
        ));
    }
}
