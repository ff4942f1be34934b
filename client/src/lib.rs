//! The SLIM agent SDK.
//!
//! A [`Client`] dials out to its node over QUIC with mutual TLS (it never
//! listens), registers its full name, and then subscribes, publishes and
//! receives. If the connection drops it reconnects with exponential backoff and
//! jitter and restores its subscriptions; messages published while it is
//! disconnected wait in the bounded outbound queue (publishers block when it is
//! full) and messages in flight on the dead connection are lost (at most once,
//! like NATS core; reliable sessions come with the sessions issue).
#![forbid(unsafe_code)]

pub mod app;
pub mod channel;
mod conn;
pub mod session;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use slim_auth::{Identity, IdentitySource, ServerMatch, TrustBundles};
use slim_wire::{ErrorCode, ErrorFrame, Frame, Limits, Mode, Name, Subscribe, Unsubscribe, codec};
use tokio::sync::{mpsc, oneshot, watch};

pub use channel::{
    Channel, ChannelEvent, ChannelMember, ChannelModerator, ChannelOptions, Invitation, Invitations,
};
pub use slim_wire::{Deliver, FLAG_NO_ROUTE_SILENT};

/// Everything the SDK can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    /// The node's host name did not resolve (distinct from "cannot connect").
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("node rejected the connection ({}): {reason}", code.as_str())]
    Rejected { code: ErrorCode, reason: String },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("client is closed")]
    Closed,
    #[error("subscription to {name} failed ({}): {reason}", code.as_str())]
    Subscribe {
        name: String,
        code: ErrorCode,
        reason: String,
    },
    #[error("wire: {0}")]
    Wire(#[from] slim_wire::WireError),
    #[error("invalid name: {0}")]
    Name(#[from] slim_wire::InvalidName),
    #[error("protocol: {0}")]
    Protocol(String),
}

/// Reconnection backoff: `initial * 2^n` capped at `max`, each wait randomized
/// to between half and the full value so a fleet does not reconnect in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The wait before attempt `n` (0-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX));
        let capped = exp.min(self.max);
        let jitter: f64 = rand::random_range(0.5..=1.0);
        capped.mul_f64(jitter)
    }
}

/// How a client proves who it is.
#[derive(Clone)]
pub enum Credentials {
    /// Mutual TLS with a fixed X.509-SVID.
    Svid(Identity),
    /// Mutual TLS with the SVID of a source that rotates (SPIRE Workload
    /// API, watched spiffe-helper files, development CA). New connections
    /// always present the latest SVID.
    Source(IdentitySource),
    /// Server-authenticated TLS plus a JWT-SVID for `audience` in the hello,
    /// fetched from the source at every (re)connect. For environments where
    /// the client cannot present a certificate.
    Jwt {
        source: IdentitySource,
        audience: String,
    },
    /// INSECURE, development only: a shared secret instead of an identity.
    /// `bundles` authenticates the node.
    SharedSecret {
        secret: String,
        bundles: TrustBundles,
    },
}

impl Credentials {
    /// The SPIFFE ID this client expects to be known as, if it has one.
    pub fn spiffe_id(&self) -> Option<slim_auth::SpiffeId> {
        match self {
            Credentials::Svid(i) => Some(i.spiffe_id.clone()),
            Credentials::Source(s) | Credentials::Jwt { source: s, .. } => Some(s.spiffe_id()),
            Credentials::SharedSecret { .. } => None,
        }
    }
}

#[derive(Clone)]
pub struct ClientConfig {
    /// The node to dial (when `host` is unset).
    pub node: SocketAddr,
    /// `host:port` resolved with the system resolver at every (re)connect;
    /// each address it resolves to is tried in turn. Overrides `node`.
    pub host: Option<String>,
    /// TLS server name sent in SNI (SPIFFE verification ignores it).
    pub server_name: String,
    /// Which server identities to accept.
    pub server: ServerMatch,
    /// This client's name; an instance id is generated when it has none.
    pub name: Name,
    pub credentials: Credentials,
    pub limits: Limits,
    pub backoff: Backoff,
    pub connect_timeout: Duration,
    /// Close the connection after this long without any packet from the node.
    pub idle_timeout: Duration,
    pub keep_alive: Duration,
    /// Deliveries buffered for the application before the node is pushed back on.
    pub inbound_capacity: usize,
    /// Encoded frames buffered for sending before publishers wait.
    pub outbound_capacity: usize,
    /// How long `subscribe`/`unsubscribe` wait for the node's answer.
    pub request_timeout: Duration,
    /// QUIC flow-control window for the frame stream: how many bytes the node
    /// may send ahead of what this client has read.
    pub stream_window: u32,
    /// Record SDK metrics (`slim_client_*`) into the process's `metrics`
    /// recorder. Off by default: an agent that installs no recorder pays nothing.
    pub metrics: bool,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("node", &self.node)
            .field("name", &self.name)
            .field("identity", &self.credentials.spiffe_id())
            .finish()
    }
}

impl ClientConfig {
    pub fn new(node: SocketAddr, name: Name, identity: Identity) -> Self {
        Self::with_credentials(node, name, Credentials::Svid(identity))
    }

    /// A config for the node at `url` (`slim://host:port` or `host:port`):
    /// the host is resolved now and again at every reconnect, and each
    /// address it resolves to is tried. "Cannot resolve" is
    /// [`ClientError::Resolve`], distinct from "cannot connect".
    pub async fn for_url(
        url: &str,
        name: Name,
        credentials: Credentials,
    ) -> Result<Self, ClientError> {
        let host = app::parse_url(url).map_err(|e| ClientError::Resolve {
            host: url.to_owned(),
            reason: e.to_string(),
        })?;
        let addrs = conn::resolve(&host, Duration::from_secs(10)).await?;
        let mut cfg = Self::with_credentials(addrs[0], name, credentials);
        cfg.host = Some(host);
        Ok(cfg)
    }

    pub fn with_credentials(node: SocketAddr, name: Name, credentials: Credentials) -> Self {
        ClientConfig {
            node,
            host: None,
            server_name: "slim-node".into(),
            server: ServerMatch::Any,
            name,
            credentials,
            limits: Limits::default(),
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            inbound_capacity: 65_536,
            outbound_capacity: 65_536,
            request_timeout: Duration::from_secs(10),
            stream_window: 4 << 20,
            metrics: false,
        }
    }
}

/// A message delivered to this client.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The name it was published to.
    pub name: Name,
    pub mode: Mode,
    /// The publisher's full name.
    pub from: Name,
    /// The publisher's SPIFFE ID as authenticated by its node.
    pub from_identity: Option<Arc<str>>,
    pub msg_id: u64,
    pub payload: Bytes,
}

/// What the client hands the application.
#[derive(Debug, Clone)]
pub enum Event {
    Message(Delivery),
    /// An error the node reported about something this client sent (e.g. no route).
    Error(ErrorFrame),
}

/// Connection state, observable through [`Client::state`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnState {
    Connected { node_id: String },
    Reconnecting { attempt: u32, last_error: String },
    Closed,
}

pub(crate) type Pending = Mutex<HashMap<u64, oneshot::Sender<Result<(), (ErrorCode, String)>>>>;

/// SDK metric handles; no-ops unless `ClientConfig::metrics` is set.
pub(crate) struct SdkMetrics {
    pub published: metrics::Counter,
    pub received: metrics::Counter,
    pub reconnects: metrics::Counter,
    pub node_errors: metrics::Counter,
}

impl SdkMetrics {
    fn new(on: bool) -> Self {
        if !on {
            return SdkMetrics {
                published: metrics::Counter::noop(),
                received: metrics::Counter::noop(),
                reconnects: metrics::Counter::noop(),
                node_errors: metrics::Counter::noop(),
            };
        }
        SdkMetrics {
            published: metrics::counter!("slim_client_messages_published_total"),
            received: metrics::counter!("slim_client_messages_received_total"),
            reconnects: metrics::counter!("slim_client_reconnects_total"),
            node_errors: metrics::counter!("slim_client_node_errors_total"),
        }
    }
}

pub(crate) struct Shared {
    pub cfg: ClientConfig,
    pub metrics: SdkMetrics,
    pub subs: Mutex<HashSet<Name>>,
    pub pending: Pending,
    pub next_id: AtomicU64,
    pub state: watch::Sender<ConnState>,
    pub identity_seen: Mutex<Option<String>>,
    /// The node's most recent error frames, for [`Client::take_errors`].
    pub recent_errors: Mutex<std::collections::VecDeque<ErrorFrame>>,
}

/// Error frames kept for [`Client::take_errors`].
pub(crate) const RECENT_ERRORS: usize = 4096;

impl Shared {
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// A connected agent.
pub struct Client {
    shared: Arc<Shared>,
    out: mpsc::Sender<Bytes>,
    events: tokio::sync::Mutex<mpsc::Receiver<Event>>,
    driver: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    close: Mutex<Option<oneshot::Sender<()>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.shared.cfg.name)
            .finish()
    }
}

impl Client {
    /// Dials the node, registers, and starts the connection driver. The first
    /// attempt's failure is returned; later drops are retried forever.
    pub async fn connect(mut cfg: ClientConfig) -> Result<Client, ClientError> {
        if !cfg.name.has_instance() {
            let id = format!("{:016x}", rand::random::<u64>());
            cfg.name = cfg.name.with_instance(&id)?;
        }
        let (state, _) = watch::channel(ConnState::Reconnecting {
            attempt: 0,
            last_error: String::new(),
        });
        let shared = Arc::new(Shared {
            metrics: SdkMetrics::new(cfg.metrics),
            cfg,
            subs: Mutex::new(HashSet::new()),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            state,
            identity_seen: Mutex::new(None),
            recent_errors: Mutex::new(std::collections::VecDeque::new()),
        });
        let endpoint = conn::endpoint(&shared.cfg)?;
        let live = conn::connect_once(&shared, &endpoint).await?;
        let (out_tx, out_rx) = mpsc::channel(shared.cfg.outbound_capacity.max(1));
        let (ev_tx, ev_rx) = mpsc::channel(shared.cfg.inbound_capacity.max(1));
        let (close_tx, close_rx) = oneshot::channel();
        let driver = tokio::spawn(conn::drive(
            Arc::clone(&shared),
            endpoint,
            live,
            out_rx,
            ev_tx,
            close_rx,
        ));
        Ok(Client {
            shared,
            out: out_tx,
            events: tokio::sync::Mutex::new(ev_rx),
            driver: tokio::sync::Mutex::new(Some(driver)),
            close: Mutex::new(Some(close_tx)),
        })
    }

    /// This client's registered full name.
    pub fn name(&self) -> &Name {
        &self.shared.cfg.name
    }

    /// The SPIFFE ID the node says it authenticated this client as.
    pub fn authenticated_as(&self) -> Option<String> {
        self.shared
            .identity_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn state(&self) -> watch::Receiver<ConnState> {
        self.shared.state.subscribe()
    }

    async fn request(&self, id: u64, frame: Frame) -> Result<(), (ErrorCode, String)> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let bytes = encode_frame(&frame, &self.shared.cfg.limits)
            .map_err(|e| (ErrorCode::INTERNAL, e.to_string()))?;
        if self.out.send(bytes).await.is_err() {
            return Err((ErrorCode::SHUTTING_DOWN, "client is closed".into()));
        }
        let t = self.shared.cfg.request_timeout;
        let res = tokio::time::timeout(t, rx).await;
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        match res {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err((ErrorCode::INTERNAL, "connection lost".into())),
            Err(_) => Err((ErrorCode::INTERNAL, format!("no answer within {t:?}"))),
        }
    }

    /// Declares interest in `name`; returns once the node has acknowledged it.
    /// Subscriptions are restored after a reconnect.
    pub async fn subscribe(&self, name: &Name) -> Result<(), ClientError> {
        self.shared
            .subs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone());
        let id = self.shared.next_id();
        self.request(
            id,
            Frame::Subscribe(Subscribe {
                id,
                name: name.clone(),
            }),
        )
        .await
        .map_err(|(code, reason)| {
            if code == ErrorCode::UNAUTHORIZED {
                // Refused: not something to restore after a reconnect.
                self.shared
                    .subs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(name);
            }
            ClientError::Subscribe {
                name: name.to_string(),
                code,
                reason,
            }
        })
    }

    pub async fn unsubscribe(&self, name: &Name) -> Result<(), ClientError> {
        self.shared
            .subs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        let id = self.shared.next_id();
        self.request(
            id,
            Frame::Unsubscribe(Unsubscribe {
                id,
                name: name.clone(),
            }),
        )
        .await
        .map_err(|(code, reason)| ClientError::Subscribe {
            name: name.to_string(),
            code,
            reason,
        })
    }

    /// Publishes `payload` to `name`. Returns once the frame is queued for
    /// sending (waiting if the outbound queue is full). A "no route" answer
    /// arrives later as [`Event::Error`] unless `flags` has
    /// [`FLAG_NO_ROUTE_SILENT`].
    pub async fn publish_with(
        &self,
        name: &Name,
        mode: Mode,
        flags: u8,
        payload: &[u8],
    ) -> Result<u64, ClientError> {
        let msg_id = self.shared.next_id();
        self.publish_with_id(name, mode, flags, msg_id, payload)
            .await
    }

    /// A fresh message id for [`Client::publish_with_id`], so that a caller
    /// can file it (e.g. to match a later `NO_ROUTE`) before the frame leaves.
    pub(crate) fn reserve_msg_id(&self) -> u64 {
        self.shared.next_id()
    }

    /// Whether SDK metrics are on (session layers follow the same switch).
    pub(crate) fn metrics_on(&self) -> bool {
        self.shared.cfg.metrics
    }

    pub(crate) async fn publish_with_id(
        &self,
        name: &Name,
        mode: Mode,
        flags: u8,
        msg_id: u64,
        payload: &[u8],
    ) -> Result<u64, ClientError> {
        let frame = SCRATCH.with(|cell| {
            // Frames are carved out of a per-thread 64 KiB buffer, so small
            // publishes share allocations instead of each making one.
            let mut b = cell.borrow_mut();
            let need = payload.len() + name.as_str().len() + 32;
            if b.capacity() - b.len() < need {
                b.reserve(need.max(64 * 1024));
            }
            codec::encode_publish(
                name,
                mode,
                flags,
                msg_id,
                payload,
                &self.shared.cfg.limits,
                &mut b,
            )
            .map(|()| b.split().freeze())
        })?;
        let frame = match self.out.try_send(frame) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(f)) => Some(f),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(ClientError::Closed),
        };
        if let Some(frame) = frame {
            self.out
                .send(frame)
                .await
                .map_err(|_| ClientError::Closed)?;
        }
        self.shared.metrics.published.increment(1);
        Ok(msg_id)
    }

    pub async fn publish(
        &self,
        name: &Name,
        mode: Mode,
        payload: &[u8],
    ) -> Result<u64, ClientError> {
        self.publish_with(name, mode, 0, payload).await
    }

    /// The next delivery or node-reported error; `None` once closed.
    pub async fn recv(&self) -> Option<Event> {
        self.events.lock().await.recv().await
    }

    /// The next delivered message, skipping node-reported errors.
    pub async fn next_message(&self) -> Option<Delivery> {
        let mut rx = self.events.lock().await;
        loop {
            match rx.recv().await? {
                Event::Message(d) => return Some(d),
                Event::Error(e) => {
                    tracing::debug!(code = e.code.0, reason = %e.reason, "node reported an error");
                }
            }
        }
    }

    /// Receives up to `max` events into `buf` in one go (for high-rate consumers).
    pub async fn recv_many(&self, buf: &mut Vec<Event>, max: usize) -> usize {
        self.events.lock().await.recv_many(buf, max).await
    }

    /// Waits until every queued outbound frame has been handed to QUIC.
    pub async fn flush(&self) {
        let cap = self.out.max_capacity();
        while self.out.capacity() < cap && !self.out.is_closed() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Closes the connection after sending what is queued.
    pub async fn close(self) {
        self.shutdown().await;
    }

    /// [`Client::close`] through a shared reference (the handle stays, closed).
    pub async fn shutdown(&self) {
        self.flush().await;
        if let Some(c) = self.close.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = c.send(());
        }
        if let Some(mut d) = self.driver.lock().await.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut d).await;
        }
    }

    /// A round trip to the node (ping, pong): once it returns, the node has
    /// processed every frame this client sent before it.
    pub async fn ping(&self) -> Result<(), ClientError> {
        let id = self.shared.next_id();
        self.request(id, Frame::Ping(slim_wire::Ping { nonce: id }))
            .await
            .map_err(|(code, reason)| match code {
                ErrorCode::SHUTTING_DOWN => ClientError::Closed,
                _ => ClientError::Protocol(format!("ping: {reason}")),
            })
    }

    /// Removes and returns the node's recent error frames whose message id
    /// satisfies `want` (errors about publishes; the same errors also reach
    /// [`Client::recv`]). Up to the last 4096 errors are kept.
    pub fn take_errors(&self, want: impl Fn(u64) -> bool) -> Vec<ErrorFrame> {
        let mut q = self
            .shared
            .recent_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        q.retain(|e| match e.msg_id {
            Some(id) if want(id) => {
                out.push(e.clone());
                false
            }
            _ => true,
        });
        out
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(c) = self.close.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = c.send(());
        }
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

pub(crate) fn encode_frame(frame: &Frame, limits: &Limits) -> Result<Bytes, slim_wire::WireError> {
    let mut b = BytesMut::new();
    codec::encode(frame, limits, &mut b)?;
    Ok(b.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_capped_with_jitter() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for attempt in 0..30 {
            let d = b.delay(attempt);
            let full = Duration::from_millis(100)
                .saturating_mul(1 << attempt.min(20))
                .min(Duration::from_secs(1));
            assert!(
                d <= full && d >= full / 2,
                "attempt {attempt}: {d:?} vs {full:?}"
            );
        }
    }
}
