//! What every actor and task of one node shares ([`NodeCtx`]), beneath both
//! connection kinds (clients in [`crate::conn`], peer links in
//! [`crate::link`]) and the federation: configuration, the registry, the live
//! client connections, the federation's shared state, policy, metrics handles.

use parking_lot::RwLock;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use metrics::{Counter, Histogram, counter, histogram};
use quinn::{RecvStream, SendStream};
use ractor::ActorRef;
use slim_auth::JwtBundles;
use slim_auth::SpiffeId;
use slim_auth::policy::{Grants, Policy};
use slim_framed::{FrameReader, ReadError};
use slim_wire::{ErrorCode, Frame, codec};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::config::NodeConfig;
use crate::conn::shared::{ConnError, ConnShared};
use crate::engine::Next;
use crate::fed::shared::Fed;
use crate::logthrottle::Kind;
use crate::metrics as m;
use crate::registry::{ConnId, Registry, Sub};
use crate::table::TableMsg;
use crate::types::TlsIdentity;

/// How a connection without a SPIFFE ID (none today) is named in logs.
const NO_IDENTITY: &str = "(no identity)";

/// What a slow consumer's missing QUIC credit means, in both policies' log
/// lines: the node sees a client read through stream credit, which quinn
/// grants per eighth of the client's stream window read, and through the
/// read-progress reports of a protocol-2 SDK, which hold a cut off for at
/// most `REPORT_STRETCH` deadlines without credit.
const NO_CREDIT: &str = "it read nothing, or under an eighth of its stream window, and reported no reading since (or reported it for longer than credit can take to come)";

/// Appended to per-identity log lines.
const THROTTLED_PER_IDENTITY: &str =
    " (logged once per identity per 10 s; the rest are counted at the window's end)";

/// Counter handles resolved once, so the per-message path never looks up a
/// metric by name.
pub(crate) struct HotMetrics {
    pub frames_in: Counter,
    pub routed: [Counter; 3],
    pub deliveries: Counter,
    pub no_route: Counter,
    pub slow_consumer: Counter,
    pub subscriber_gone: Counter,
    pub unauthorized: Counter,
    pub routing_seconds: Histogram,
    pub enqueue_to_write_seconds: Histogram,
    pub frames_out: Counter,
    pub bytes_out: Counter,
    /// Peer links' data streams, written by their writers or directly.
    pub link_frames_out: Counter,
    pub link_bytes_out: Counter,
}

impl HotMetrics {
    pub(crate) fn new() -> Self {
        HotMetrics {
            frames_in: counter!(m::FRAMES_IN_TOTAL, "kind" => "client"),
            routed: [
                counter!(m::MESSAGES_ROUTED_TOTAL, "mode" => "anycast"),
                counter!(m::MESSAGES_ROUTED_TOTAL, "mode" => "multicast"),
                counter!(m::MESSAGES_ROUTED_TOTAL, "mode" => "unicast"),
            ],
            deliveries: counter!(m::DELIVERIES_TOTAL),
            no_route: counter!(m::MESSAGES_DROPPED_TOTAL, "reason" => "no_route"),
            slow_consumer: counter!(m::MESSAGES_DROPPED_TOTAL, "reason" => "slow_consumer"),
            subscriber_gone: counter!(m::MESSAGES_DROPPED_TOTAL, "reason" => "subscriber_gone"),
            unauthorized: counter!(m::MESSAGES_DROPPED_TOTAL, "reason" => "unauthorized"),
            routing_seconds: histogram!(m::ROUTING_SECONDS),
            enqueue_to_write_seconds: histogram!(m::ENQUEUE_TO_WRITE_SECONDS),
            frames_out: counter!(m::FRAMES_OUT_TOTAL, "kind" => "client"),
            bytes_out: counter!(m::BYTES_OUT_TOTAL, "kind" => "client"),
            link_frames_out: counter!(m::LINK_FRAMES_TOTAL, "direction" => "out"),
            link_bytes_out: counter!(m::LINK_BYTES_TOTAL, "direction" => "out"),
        }
    }
}

/// What every actor and task of one node shares.
pub(crate) struct NodeCtx {
    pub(crate) cfg: NodeConfig,
    /// Unique per node instance in this process: ractor actor names are
    /// process-global, and tests run several nodes in one process.
    pub(crate) tag: String,
    pub(crate) registry: Arc<Registry>,
    pub(crate) endpoint: quinn::Endpoint,
    /// The endpoint's server settings for connections from this host
    /// (datagrams start large: `slim_framed::datagrams::Path::Loopback`);
    /// the endpoint's own are for everyone else.
    pub(crate) loopback_server: Arc<quinn::ServerConfig>,
    pub(crate) conns: DashMap<ConnId, Arc<ConnShared>>,
    pub(crate) hot: HotMetrics,
    pub(crate) table: RwLock<Option<ActorRef<TableMsg>>>,
    pub(crate) next_id: AtomicU64,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) drain: RwLock<Duration>,
    pub(crate) slow_disconnects: AtomicU64,
    /// Client SVIDs refused at the handshake, by reason.
    pub(crate) refusals: Arc<DashMap<&'static str, u64>>,
    pub(crate) jwt_keys: RwLock<JwtBundles>,
    /// The node's own credentials (its source lives as long as the node).
    pub(crate) node_identity: TlsIdentity,
    pub(crate) policy: RwLock<Arc<Policy>>,
    /// Bumped on every policy change so connections refresh their grants.
    pub(crate) policy_gen: AtomicU64,
    /// Test/diagnostic hook on the routing path; `hook_set` lets the hot path
    /// skip the lock when there is none.
    pub(crate) hook: RwLock<Option<crate::RouteHook>>,
    pub(crate) hook_set: std::sync::atomic::AtomicBool,
    pub(crate) fed: Fed,
    /// Connections between their first Initial and their hello.
    pub(crate) handshakes: std::sync::atomic::AtomicUsize,
    /// The send window the send budget gives each client connection now.
    pub(crate) send_window: std::sync::atomic::AtomicU64,
    /// The same, per source address (entries only while non-zero).
    pub(crate) source_handshakes: DashMap<std::net::IpAddr, usize>,
    /// Bytes all connections hold in incomplete large frames.
    pub(crate) partial_bytes: std::sync::atomic::AtomicUsize,
    /// Room beyond their caps that client outboxes share.
    pub(crate) overflow: Arc<crate::outbox::Overflow>,
    /// Rate-limits the log lines anyone on the network can cause.
    pub(crate) log: Arc<crate::logthrottle::LogThrottle>,
}

impl NodeCtx {
    pub(crate) fn next_conn_id(&self) -> ConnId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn table(&self) -> ActorRef<TableMsg> {
        self.table
            .read()
            .clone()
            .expect("table actor is set before the listener starts")
    }

    pub(crate) fn shutdown_rx(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub(crate) fn policy(&self) -> (Arc<Policy>, u64) {
        let p = Arc::clone(&self.policy.read());
        (p, self.policy_gen.load(Ordering::Acquire))
    }

    pub(crate) fn policy_gen(&self) -> u64 {
        self.policy_gen.load(Ordering::Acquire)
    }

    pub(crate) fn route_hook(&self) -> Option<crate::RouteHook> {
        if !self.hook_set.load(Ordering::Acquire) {
            return None;
        }
        self.hook.read().clone()
    }

    pub(crate) fn node_identity(&self) -> &TlsIdentity {
        &self.node_identity
    }

    pub(crate) fn drain_deadline(&self) -> Duration {
        *self.drain.read()
    }

    /// Flushes one read batch's push outcomes to metrics.
    pub(crate) fn flush_tally(&self, t: &mut crate::engine::Tally) {
        let hm = &self.hot;
        if t.deliveries > 0 {
            hm.deliveries.increment(std::mem::take(&mut t.deliveries));
        }
        if t.slow > 0 {
            hm.slow_consumer.increment(std::mem::take(&mut t.slow));
        }
        // Not only with drops: the periodic sweep declares a subscriber slow
        // without dropping anything (`NodeCtx::expire_stalled`).
        for &conn in &t.slow_conns[..std::mem::take(&mut t.slow_n)] {
            self.log_slow_consumer(conn);
        }
        if t.declared > 0 {
            counter!(m::SLOW_CONSUMER_EVENTS_TOTAL, "action" => "drop")
                .increment(std::mem::take(&mut t.declared));
        }
        if t.gone > 0 {
            hm.subscriber_gone.increment(std::mem::take(&mut t.gone));
        }
        if t.shed > 0 {
            counter!(m::QUEUE_SHED_TOTAL).increment(std::mem::take(&mut t.shed));
        }
        if t.direct_bytes > 0 {
            hm.frames_out
                .increment(std::mem::take(&mut t.direct_frames));
            hm.bytes_out.increment(std::mem::take(&mut t.direct_bytes));
        }
        if t.link_direct_bytes > 0 {
            hm.link_frames_out
                .increment(std::mem::take(&mut t.link_direct_frames));
            hm.link_bytes_out
                .increment(std::mem::take(&mut t.link_direct_bytes));
        }
        if t.link_drops > 0 {
            counter!(m::LINK_DROPS_TOTAL, "reason" => "queue_full")
                .increment(std::mem::take(&mut t.link_drops));
        }
        if t.link_gone > 0 {
            counter!(m::LINK_DROPS_TOTAL, "reason" => "link_gone")
                .increment(std::mem::take(&mut t.link_gone));
        }
        if let Some(peer) = t.gone_link.take()
            && self.log.note_identity(Kind::LinkGone, &peer)
        {
            warn!(
                peer = %peer,
                "forwards to {peer} not carried: its link was going down; messages for nodes behind it are lost until their routes move to another link (slim_link_drops_total{{reason=\"link_gone\"}}){THROTTLED_PER_IDENTITY}"
            );
        }
        if let Some(peer) = t.slow_link.take() {
            counter!(m::SLOW_CONSUMER_EVENTS_TOTAL, "action" => "link").increment(1);
            if self.log.note_identity(Kind::SlowConsumer, &peer) {
                let deadline = self.cfg.federation.link_queue.policy.write_deadline;
                warn!(
                    peer = %peer,
                    action = "drop",
                    "slow peer link: the link to {peer} stayed full for its write deadline ({deadline:?}); messages for nodes behind it are dropped until it drains (slim_link_drops_total{{reason=\"queue_full\"}}){THROTTLED_PER_IDENTITY}"
                );
            }
        }
    }

    /// Pushes one copy of `frames` frames (one frame, or a run of them encoded
    /// back to back) to a local subscriber: when its queue is full, waits
    /// for room up to its write deadline (the caller is a publisher's reader,
    /// so the publisher is slowed instead of anything being lost), then
    /// applies its slow-consumer policy.
    ///
    /// `last`: the frames are the last ones of their read (nothing more is
    /// buffered behind them), so they may be written straight onto the
    /// subscriber's stream when its queue is empty (one task hand-off fewer;
    /// see `outbox/direct.rs`).
    pub(crate) async fn deliver(
        &self,
        t: &mut crate::engine::Tally,
        sub: &Sub,
        frame: Bytes,
        frames: u64,
        last: bool,
    ) {
        let mut next = if last {
            t.push_sub_direct(sub, frame, frames)
        } else {
            t.push_sub(sub, frame, frames)
        };
        if let Next::Wait(frame) = next {
            // Boxed: waiting is the rare path, and its timer would otherwise
            // sit in every connection reader's future.
            let out = Box::pin(wait_for_room(&sub.outbox, frame, frames)).await;
            next = t.sub_outcome(sub.conn, out, frames);
        }
        if let Next::Disconnect(conn) = next {
            self.disconnect_slow(conn);
        }
    }

    /// Pushes `frames` frames (a run of `Forward`s encoded back to back)
    /// onto the peer link to `peer`, waiting for room like
    /// [`NodeCtx::deliver`]; a link past its deadline drops, never closes.
    /// `last` as for [`NodeCtx::deliver`]: the link's writer task is then
    /// skipped when its queue is empty (on the 2-node request/reply path it
    /// was the hop that pushed the reader's chain past tokio's LIFO cap).
    pub(crate) async fn forward(
        &self,
        t: &mut crate::engine::Tally,
        link: &crate::outbox::Outbox,
        peer: &Arc<str>,
        frame: Bytes,
        frames: u64,
        last: bool,
    ) {
        let next = if last {
            t.push_link_direct(link, peer, frame, frames)
        } else {
            t.push_link(link, peer, frame, frames)
        };
        if let Next::Wait(frame) = next {
            let out = Box::pin(wait_for_room(link, frame, frames)).await;
            let _ = t.link_outcome(peer, out, frames);
        }
    }

    /// Logs that subscriber `conn` drops messages, once per identity per
    /// log window (the window's end says how many more events there were).
    pub(crate) fn log_slow_consumer(&self, conn: ConnId) {
        let Some(c) = self.conns.get(&conn).map(|c| Arc::clone(c.value())) else {
            return;
        };
        let identity = c.identity().unwrap_or(NO_IDENTITY);
        if self.log.note_identity(Kind::SlowConsumer, identity) {
            let q = &self.cfg.queue;
            let deadline = q.policy.write_deadline;
            let why = if deadline.is_zero() {
                "its outbound queue is full and the policy never waits".to_owned()
            } else {
                format!(
                    "its outbound queue was full and it granted no QUIC flow-control credit for the write deadline ({deadline:?}): {NO_CREDIT}"
                )
            };
            warn!(
                identity,
                name = %c.name,
                conn,
                action = "drop",
                max_frames = q.max_frames,
                max_bytes = q.max_bytes,
                read_reported = c.outbox.read_reported(),
                "slow consumer detected: {identity} ({}) does not read as fast as messages arrive: {why}; messages to it are dropped until it catches up (slim_messages_dropped_total{{reason=\"slow_consumer\"}}){THROTTLED_PER_IDENTITY}",
                c.name
            );
        }
    }

    /// Logs a publish or subscribe the authorization policy refused, once
    /// per identity per log window.
    pub(crate) fn log_denied(&self, c: &ConnShared, action: &str, name: &str, reason: &str) {
        let identity = c.identity().unwrap_or(NO_IDENTITY);
        if self.log.note_identity(Kind::Denied, identity) {
            warn!(
                identity,
                client = %c.name,
                action,
                name,
                reason,
                "{action} refused by policy: {reason} (client {}){THROTTLED_PER_IDENTITY}",
                c.name
            );
        }
    }

    /// Applies the slow-consumer policy to the client connections that hold
    /// overflow room while their writer has made no progress for the write
    /// deadline, whether or not anyone still pushes to them (see
    /// `outbox/overflow.rs`). Run on the send budget's tick.
    pub(crate) fn expire_stalled(&self) {
        let mut expired = Vec::new();
        for c in self.conns.iter() {
            if let Some(out) = c.outbox.expire_stalled() {
                expired.push((c.id, out));
            }
        }
        for (conn, out) in expired {
            self.settle_slow(conn, out);
        }
    }

    /// Applies a slow-consumer outcome for client `conn` that carries no
    /// frame of its own (the sweep's, or a dropped control frame's): counted,
    /// logged and cut as a timed-out data push's outcome is
    /// ([`crate::engine::Tally::sub_outcome`], [`NodeCtx::flush_tally`]).
    pub(crate) fn settle_slow(&self, conn: ConnId, out: crate::outbox::Push) {
        let mut t = crate::engine::Tally::default();
        if let Next::Disconnect(conn) = t.sub_outcome(conn, out, 0) {
            self.disconnect_slow(conn);
        }
        self.flush_tally(&mut t);
    }

    /// Closes connection `conn` (slow-consumer policy).
    pub(crate) fn disconnect_slow(&self, conn: ConnId) {
        let victim = self.conns.get(&conn).map(|c| Arc::clone(c.value()));
        if let Some(c) = victim {
            self.slow_disconnects.fetch_add(1, Ordering::Relaxed);
            counter!(m::SLOW_CONSUMER_EVENTS_TOTAL, "action" => "disconnect").increment(1);
            let identity = c.identity().unwrap_or(NO_IDENTITY);
            if self.log.note_identity(Kind::SlowConsumer, identity) {
                warn!(
                    identity,
                    name = %c.name,
                    conn = c.id,
                    action = "disconnect",
                    queued_bytes = c.outbox.queued_bytes(),
                    overflow_bytes = c.outbox.borrowed(),
                    writer = c.outbox.writer_state(),
                    read_reported = c.outbox.read_reported(),
                    "slow consumer detected: {identity} ({}) granted no QUIC flow-control credit for the write deadline ({:?}) while its outbound queue was full ({NO_CREDIT}); disconnecting it{THROTTLED_PER_IDENTITY}",
                    c.name,
                    self.cfg.queue.policy.write_deadline
                );
            }
            c.close(
                ErrorCode::SLOW_CONSUMER,
                "slow consumer: no read progress (QUIC flow-control credit) for the write deadline while its outbound queue was full",
            );
        }
    }
}

/// Waits for room in a full outbox up to its write deadline, timing the
/// wait (`slim_publisher_wait_seconds`); the outcome says what the policy did.
async fn wait_for_room(
    outbox: &crate::outbox::Outbox,
    frame: Bytes,
    frames: u64,
) -> crate::outbox::Push {
    let started = std::time::Instant::now();
    let out = outbox.push_wait_frames(frame, frames).await;
    m::publisher_waited(started.elapsed());
    out
}

/// A client connection's QUIC send window at the start, and its largest
/// (`sendbudget::MAX_WINDOW`): what one fast subscriber needs on a loaded
/// host (smaller windows cost 15–20 % at 4–16 KiB messages).
pub(crate) const CLIENT_SEND_WINDOW: u64 = 2 << 20;

/// QUIC transport settings of the node's connections over `path`, with
/// datagrams up to `max_udp_payload` (the client or the link ceiling).
pub(crate) fn transport_config(
    cfg: &NodeConfig,
    max_udp_payload: u16,
    path: slim_framed::datagrams::Path,
) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(4u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .keep_alive_interval(Some(cfg.keep_alive))
        .stream_receive_window((2u32 << 20).into())
        .receive_window((4u32 << 20).into())
        // The window a connection starts with; the send budget lowers it
        // while many connections receive at once (`sendbudget`).
        .send_window(CLIENT_SEND_WINDOW)
        // SLIM uses one stream per connection and no QUIC datagrams; not
        // negotiating them keeps per-connection state small.
        .datagram_receive_buffer_size(None)
        .datagram_send_buffer_size(0);
    slim_framed::datagrams::configure(&mut t, max_udp_payload, path);
    if let Ok(idle) = quinn::IdleTimeout::try_from(cfg.idle_timeout) {
        t.max_idle_timeout(Some(idle));
    }
    t
}

/// The two kinds of QUIC path a node sends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PathKind {
    Client,
    Link,
}

impl PathKind {
    /// As `NodeHandle::path_mtus` names it.
    pub(crate) fn label(self) -> &'static str {
        match self {
            PathKind::Client => "client",
            PathKind::Link => "link",
        }
    }
}

impl NodeCtx {
    /// Calls `f` with every live QUIC path this node sends on: each client
    /// connection's (named by its client) and each live peer link's (named by
    /// the peer node), with its connection's statistics.
    pub(crate) fn for_each_path(
        &self,
        mut f: impl FnMut(PathKind, &dyn std::fmt::Display, &quinn::ConnectionStats),
    ) {
        for c in self.conns.iter() {
            f(PathKind::Client, &c.name, &c.conn.stats());
        }
        for l in self.fed.links.iter() {
            if let Some(s) = l.value().session() {
                f(PathKind::Link, &s.peer, &s.conn.stats());
            }
        }
    }
}

/// Stateless resets at most this often (quinn's default is one per 20 ms,
/// i.e. 50/s for the whole endpoint). After a restart, every client and
/// peer of the old process sends within its keep-alive and each needs a
/// reset; at 50/s a node with 10,000 clients would take minutes to reset
/// them all. A reset is always smaller than the packet that caused it (no
/// amplification, no reset loop between two endpoints), and packets whose
/// connection ID this node did not issue (the keyed check of the generator
/// below) get none, so random junk draws no answer; the rate limit guards
/// CPU, and 10,000 HMACs a second are cheap.
const MIN_RESET_INTERVAL: Duration = Duration::from_micros(100);

/// The node endpoint's global QUIC settings: stateless resets keyed by
/// `secret`, and connection IDs signed with a key derived from it. Both must
/// be the same in the process that restarts on this port: it then resets
/// the old process's connections (their IDs validate, their tokens match)
/// instead of dropping their packets until the far ends' idle timeouts.
/// Connection IDs stay 8 bytes, so the new process parses the old IDs.
pub(crate) fn endpoint_config(
    secret: &slim_auth::ResetSecret,
    max_udp_payload: u16,
) -> quinn::EndpointConfig {
    let mut c = quinn::EndpointConfig::new(Arc::new(secret.hmac_key()));
    let cid_key = secret.cid_key();
    c.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)))
        .min_reset_interval(MIN_RESET_INTERVAL);
    slim_framed::datagrams::accept_up_to(&mut c, max_udp_payload);
    c
}

/// Encodes a control frame built by this node.
pub(crate) fn encode(frame: &Frame, ctx: &NodeCtx) -> Bytes {
    let mut b = BytesMut::new();
    // Control frames are small and built by us; failing to encode one is a bug.
    if let Err(e) = codec::encode(frame, &ctx.cfg.limits, &mut b) {
        warn!(error = %e, "cannot encode control frame");
    }
    b.freeze()
}

/// The framed read side of a QUIC stream (the one framing loop of the
/// node, shared with the SDK: check → split → advance, one end-of-stream rule).
pub(crate) type Reader = FrameReader<RecvStream>;

/// Reads the first frame of a stream (a hello or its answer); the caller
/// puts a deadline on it.
pub(crate) async fn read_first(reader: &mut Reader) -> Result<Frame, ConnError> {
    match reader.read_frame().await {
        Ok(Some(f)) => Ok(f),
        Ok(None) => Err(ConnError::Lost("stream closed before hello".into())),
        Err(ReadError::Wire(e)) => Err(ConnError::Wire(e)),
        Err(ReadError::Io(e)) => Err(ConnError::Lost(e.to_string())),
    }
}

/// Aborts the task when dropped, so a dead actor leaves no task behind.
pub(crate) struct AbortOnDrop<T = ()>(pub(crate) JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A task an actor owns, which reports its end (a result or a panic) to the
/// actor itself. Dropping it — the actor stopped, failed or was killed —
/// aborts it, so a dead actor leaves no task running.
///
/// The panic is caught inside the task rather than by a second task awaiting
/// its `JoinHandle`: every client connection owns two of these, and a task per
/// watcher was memory held by every idle connection.
pub(crate) struct Owned {
    task: tokio::task::AbortHandle,
}

/// An owned task panicked; the panic's message.
#[derive(Debug)]
pub(crate) struct TaskPanicked(String);

impl std::fmt::Display for TaskPanicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "task panicked: {}", self.0)
    }
}

impl TaskPanicked {
    pub(crate) fn from_payload(p: Box<dyn std::any::Any + Send>) -> Self {
        let msg = slim_framed::task::panic_message(&*p).unwrap_or("(not a string)");
        TaskPanicked(msg.to_owned())
    }
}

impl Owned {
    pub(crate) fn spawn<T: Send + 'static>(
        fut: impl Future<Output = T> + Send + 'static,
        on_end: impl FnOnce(Result<T, TaskPanicked>) + Send + 'static,
    ) -> Owned {
        use futures::FutureExt;
        let task = tokio::spawn(async move {
            let r = std::panic::AssertUnwindSafe(fut)
                .catch_unwind()
                .await
                .map_err(TaskPanicked::from_payload);
            on_end(r);
        });
        Owned {
            task: task.abort_handle(),
        }
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Closes a QUIC connection with an application error code and a reason.
pub(crate) use crate::conn::shared::close_conn;

/// An incoming connection after its TLS handshake and first frame, before it
/// is known to be a client or a peer node.
pub(crate) struct Opened {
    pub conn: quinn::Connection,
    pub send: SendStream,
    /// The stream's reader, holding whatever arrived after the first frame.
    pub reader: Reader,
    /// The SPIFFE ID of the TLS client certificate, if one was presented.
    pub cert_id: Option<SpiffeId>,
    /// Its grants under the policy at handshake time.
    pub cert_grants: Option<Grants>,
    /// When the certificate runs out.
    pub expires_at: Option<SystemTime>,
    pub policy: Arc<Policy>,
}

/// Counts one connection as a handshake in progress from its admission to
/// its hello (or its failure), however it ends.
pub(crate) struct HandshakeGuard(Arc<NodeCtx>, std::net::IpAddr);

impl HandshakeGuard {
    pub(crate) fn new(ctx: &Arc<NodeCtx>, source: std::net::IpAddr) -> Self {
        ctx.handshakes.fetch_add(1, Ordering::Relaxed);
        *ctx.source_handshakes.entry(source).or_insert(0) += 1;
        HandshakeGuard(Arc::clone(ctx), source)
    }
}

impl Drop for HandshakeGuard {
    fn drop(&mut self) {
        self.0.handshakes.fetch_sub(1, Ordering::Relaxed);
        // The entry goes when its count does, so the map holds only
        // sources with handshakes in progress (at most max_handshakes).
        self.0.source_handshakes.remove_if_mut(&self.1, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
}
