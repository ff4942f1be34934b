//! One peer link: the link actor, the dial and accept handshakes, and the
//! four tasks of a live link.
//!
//! A link is one QUIC connection with two streams, both opened by the dialler:
//! the *data* stream (`PeerHello`/`PeerAccept`, then `Forward` frames both
//! ways) and the *control* stream (`Interest`, `Ping`/`Pong`), sent at a
//! higher QUIC priority so that liveness and interest are never stuck behind
//! bulk data. Whoever can reach the other dials; the link then carries
//! traffic both ways, so a node behind NAT needs no inbound port.
//!
//! Forwarded publishes are routed inline by the data reader (registry read,
//! outbox pushes), like client publishes; control goes to the federation actor.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use metrics::counter;
use quinn::{RecvStream, SendStream, VarInt};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use slim_wire::{
    ErrorCode, ForwardView, Frame, FrameKind, NodeIds, PROTOCOL_VERSION, PeerAccept, PeerHello,
    Ping, Pong, Reject, WireError, codec,
};
use tokio::io::AsyncReadExt;
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, info, warn};

use crate::conn::{AbortOnDrop, encode, read_one};
use crate::engine::{self, Decision, Env, Silent, Tally};
use crate::federation::{FedMsg, LinkSession, LinkShared, LinkState, PeerSpec};
use crate::interest::valid_node_id;
use crate::metrics as m;
use crate::node::{NodeCtx, TlsIdentity};
use crate::outbox::{Outbox, SlowConsumerPolicy};

/// Why a link attempt or a live link ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("handshake timed out")]
    Timeout,
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("peer not authorized: {0}")]
    Unauthorized(String),
    #[error("peer answered as node {got:?}, expected {expected:?}")]
    NodeIdMismatch { expected: String, got: String },
    #[error("another link to this peer is in use")]
    Duplicate,
    #[error("refused by peer ({code}): {reason}")]
    Refused { code: &'static str, reason: String },
    #[error("wire: {0}")]
    Wire(#[from] WireError),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("connection lost: {0}")]
    Lost(String),
    #[error("no pong within the link timeout")]
    Liveness,
}

impl LinkError {
    fn label(&self) -> &'static str {
        match self {
            LinkError::Connect(_) => "connect",
            LinkError::Timeout => "timeout",
            LinkError::Tls(_) => "tls",
            LinkError::Unauthorized(_) => "unauthorized",
            LinkError::NodeIdMismatch { .. } => "node_id_mismatch",
            LinkError::Duplicate => "duplicate",
            LinkError::Refused { .. } => "refused",
            LinkError::Wire(_) => "wire",
            LinkError::Protocol(_) => "protocol",
            LinkError::Lost(_) => "lost",
            LinkError::Liveness => "liveness",
        }
    }
}

impl From<crate::conn::ConnError> for LinkError {
    fn from(e: crate::conn::ConnError) -> Self {
        match e {
            crate::conn::ConnError::Wire(w) => LinkError::Wire(w),
            other => LinkError::Lost(other.to_string()),
        }
    }
}

/// An incoming connection whose first frame was a `PeerHello` from an
/// identity the policy lets peer.
pub(crate) struct Accepted {
    pub conn: quinn::Connection,
    pub send: SendStream,
    pub recv: RecvStream,
    pub buf: BytesMut,
    pub node_id: String,
    pub spiffe_id: slim_auth::SpiffeId,
}

pub(crate) enum LinkKind {
    Dial(PeerSpec),
    Accepted(Box<Accepted>),
}

pub(crate) struct LinkArgs {
    pub ctx: Arc<NodeCtx>,
    /// Key of this link in `Fed::links`.
    pub key: u64,
    pub shared: Arc<LinkShared>,
    pub kind: LinkKind,
}

pub(crate) enum LinkMsg {
    Ended(Result<(), String>),
}

pub(crate) struct LinkActor;

pub(crate) struct LinkActorState {
    ctx: Arc<NodeCtx>,
    key: u64,
    shared: Arc<LinkShared>,
    _task: AbortOnDrop,
}

impl Actor for LinkActor {
    type Msg = LinkMsg;
    type State = LinkActorState;
    type Arguments = LinkArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<LinkMsg>,
        a: LinkArgs,
    ) -> Result<LinkActorState, ActorProcessingErr> {
        a.ctx.fed.links.insert(a.key, Arc::clone(&a.shared));
        let (ctx, shared) = (Arc::clone(&a.ctx), Arc::clone(&a.shared));
        let task = tokio::spawn(async move {
            let run = tokio::spawn(run(ctx, shared, a.kind));
            let r = match run.await {
                Ok(()) => Ok(()),
                Err(e) => Err(format!("link task failed: {e}")),
            };
            let _ = myself.send_message(LinkMsg::Ended(r));
        });
        Ok(LinkActorState {
            ctx: a.ctx,
            key: a.key,
            shared: a.shared,
            _task: AbortOnDrop(task),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<LinkMsg>,
        msg: LinkMsg,
        _st: &mut LinkActorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            // A failed task fails the actor, so its supervisor restarts it.
            LinkMsg::Ended(Err(e)) => return Err(e.into()),
            LinkMsg::Ended(Ok(())) => myself.stop(None),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<LinkMsg>,
        st: &mut LinkActorState,
    ) -> Result<(), ActorProcessingErr> {
        st.ctx.fed.links.remove(&st.key);
        end_session(&st.ctx, &st.shared, "link actor stopped");
        Ok(())
    }
}

async fn run(ctx: Arc<NodeCtx>, shared: Arc<LinkShared>, kind: LinkKind) {
    match kind {
        LinkKind::Dial(spec) => dial_loop(ctx, shared, spec).await,
        LinkKind::Accepted(a) => {
            if let Err(e) = accept_session(&ctx, &shared, *a).await {
                info!(error = %e, "accepted peer link ended");
            }
        }
    }
}

/// `base` jittered into [base/2, base], so that many nodes that lost
/// the same peer do not all redial in lockstep.
fn jittered(base: Duration) -> Duration {
    let mut b = [0u8; 4];
    let r = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map(|()| u32::from_le_bytes(b))
        .unwrap_or(u32::MAX / 2);
    let half = base / 2;
    half + half.mul_f64(f64::from(r) / f64::from(u32::MAX))
}

async fn dial_loop(ctx: Arc<NodeCtx>, shared: Arc<LinkShared>, spec: PeerSpec) {
    let fc = &ctx.cfg.federation;
    let mut attempt: u32 = 0;
    let mut shutdown = ctx.shutdown_rx();
    let generation = ctx.fed.generation();
    loop {
        if ctx.is_shutting_down() || ctx.fed.generation() != generation {
            return;
        }
        // Stand by while another link (one the peer dialled) connects us.
        let mut connected = ctx.fed.connected.subscribe();
        if connected.borrow().contains(spec.node_id.as_str()) {
            shared.set_state(LinkState::Backoff);
            tokio::select! {
                _ = connected.wait_for(|s| !s.contains(spec.node_id.as_str())) => {}
                _ = shutdown.changed() => return,
            }
            // Both ends may have been waiting for the same link to go:
            // jitter keeps them from redialling each other in lockstep.
            tokio::select! {
                _ = tokio::time::sleep(jittered(fc.backoff_initial)) => {}
                _ = shutdown.changed() => return,
            }
            continue;
        }
        shared.set_state(LinkState::Connecting);
        let mut delay = None;
        match dial(&ctx, &shared, &spec).await {
            Ok(streams) => {
                let t0 = Instant::now();
                if let Err(e) = serve_dialled(&ctx, &shared, &spec, streams).await {
                    if matches!(e, LinkError::Duplicate) {
                        delay = Some(fc.backoff_max);
                    }
                    info!(peer = %spec.node_id, error = %e, "peer link ended");
                }
                // A link that stayed up for a while starts its backoff over.
                if t0.elapsed() >= fc.backoff_max {
                    attempt = 0;
                }
            }
            Err(e) => {
                counter!(m::LINK_CONNECT_FAILURES_TOTAL, "reason" => e.label()).increment(1);
                if matches!(e, LinkError::Duplicate) {
                    delay = Some(fc.backoff_max);
                }
                info!(peer = %spec.node_id, addr = %spec.addr, error = %e, "cannot establish peer link");
            }
        }
        if ctx.is_shutting_down() {
            return;
        }
        shared.set_state(LinkState::Backoff);
        counter!(m::LINK_RECONNECTS_TOTAL).increment(1);
        let base = delay.unwrap_or_else(|| {
            fc.backoff_initial
                .saturating_mul(1u32 << attempt.min(16))
                .min(fc.backoff_max)
        });
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(jittered(base)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// QUIC settings of a dialled link: keep-alives at the federation's interval
/// (they keep the NAT mapping of a dialling node open) and larger windows
/// than a client connection, since one link carries many clients' traffic.
fn link_transport(ctx: &NodeCtx) -> quinn::TransportConfig {
    let fc = &ctx.cfg.federation;
    let mut t = crate::node::transport_config(&ctx.cfg);
    t.keep_alive_interval(Some(fc.keep_alive))
        .stream_receive_window((8u32 << 20).into())
        .receive_window((16u32 << 20).into())
        .send_window(16 << 20);
    if let Ok(idle) = quinn::IdleTimeout::try_from(fc.link_timeout) {
        t.max_idle_timeout(Some(idle));
    }
    t
}

/// What a completed handshake hands to the session.
struct Streams {
    conn: quinn::Connection,
    peer_spiffe: Option<String>,
    dialler: String,
    send: SendStream,
    recv: RecvStream,
    buf: BytesMut,
    ctl_send: SendStream,
    ctl_recv: RecvStream,
}

fn peer_cert_id(conn: &quinn::Connection) -> Option<slim_auth::SpiffeId> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    slim_auth::peer_spiffe_id(&certs).ok()
}

fn close(conn: &quinn::Connection, code: ErrorCode, reason: &str) {
    conn.close(VarInt::from_u32(u32::from(code.0)), reason.as_bytes());
}

async fn dial(ctx: &NodeCtx, shared: &LinkShared, spec: &PeerSpec) -> Result<Streams, LinkError> {
    let alpn: &[&[u8]] = &[slim_auth::ALPN_SLIM];
    let server = match &spec.expect_spiffe_id {
        Some(id) => slim_auth::ServerMatch::Exact(id.clone()),
        None => slim_auth::ServerMatch::Any,
    };
    let tls = match ctx.node_identity() {
        TlsIdentity::Static(i) => slim_auth::client_config(i, alpn, server),
        TlsIdentity::Source(s) => slim_auth::client_config_from_source(s, alpn, server),
    }
    .map_err(|e| LinkError::Tls(e.to_string()))?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))
        .map_err(|e| LinkError::Tls(e.to_string()))?;
    let mut cc = quinn::ClientConfig::new(Arc::new(quic));
    cc.transport_config(Arc::new(link_transport(ctx)));
    let connecting = ctx
        .endpoint
        .connect_with(cc, spec.addr, &spec.server_name)
        .map_err(|e| LinkError::Connect(e.to_string()))?;
    let deadline = ctx.cfg.handshake_timeout;
    let conn = match tokio::time::timeout(deadline, connecting).await {
        Err(_) => return Err(LinkError::Timeout),
        Ok(Err(e)) => return Err(LinkError::Connect(e.to_string())),
        Ok(Ok(c)) => c,
    };
    // Mutual: the node we dialled must be a peer under *our* policy too.
    let peer_id = peer_cert_id(&conn)
        .ok_or_else(|| LinkError::Unauthorized("peer presented no SPIFFE ID".into()))?;
    let (policy, _) = ctx.policy();
    if let Err(reason) = policy.grants(Some(&peer_id)).and_then(|g| g.check_peer()) {
        counter!(m::LINK_REFUSALS_TOTAL, "reason" => "unauthorized").increment(1);
        close(&conn, ErrorCode::UNAUTHORIZED, &reason.to_string());
        return Err(LinkError::Unauthorized(reason.to_string()));
    }
    let handshake = async {
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| LinkError::Lost(e.to_string()))?;
        let hello = Frame::PeerHello(PeerHello {
            version: PROTOCOL_VERSION,
            node_id: ctx.cfg.node_id.clone(),
        });
        send.write_all(&encode(&hello, ctx))
            .await
            .map_err(|e| LinkError::Lost(e.to_string()))?;
        let mut buf = BytesMut::with_capacity(4096);
        let answer = read_one(&mut recv, &mut buf, ctx).await?;
        Ok::<_, LinkError>((send, recv, buf, answer))
    };
    let (send, recv, buf, answer) = match tokio::time::timeout(deadline, handshake).await {
        Err(_) => {
            close(&conn, ErrorCode::PROTOCOL, "peer hello timeout");
            return Err(LinkError::Timeout);
        }
        Ok(r) => r?,
    };
    match answer {
        Frame::PeerAccept(a) if a.node_id == spec.node_id => {}
        Frame::PeerAccept(a) => {
            close(&conn, ErrorCode::PROTOCOL, "unexpected node id");
            return Err(LinkError::NodeIdMismatch {
                expected: spec.node_id.clone(),
                got: a.node_id,
            });
        }
        Frame::Reject(r) if r.code == ErrorCode::LINK_EXISTS => return Err(LinkError::Duplicate),
        Frame::Reject(r) => {
            return Err(LinkError::Refused {
                code: r.code.as_str(),
                reason: r.reason,
            });
        }
        other => {
            close(&conn, ErrorCode::PROTOCOL, "expected peer accept");
            return Err(LinkError::Protocol(format!(
                "expected peer_accept, got {}",
                other.kind().as_str()
            )));
        }
    }
    let (mut ctl_send, ctl_recv) = conn
        .open_bi()
        .await
        .map_err(|e| LinkError::Lost(e.to_string()))?;
    // A stream exists for the peer only once something is sent on it.
    ctl_send
        .write_all(&encode(&Frame::Ping(Ping { nonce: 0 }), ctx))
        .await
        .map_err(|e| LinkError::Lost(e.to_string()))?;
    *shared
        .remote_addr
        .write()
        .unwrap_or_else(|e| e.into_inner()) = conn.remote_address();
    Ok(Streams {
        conn,
        peer_spiffe: Some(peer_id.to_string()),
        dialler: ctx.cfg.node_id.clone(),
        send,
        recv,
        buf,
        ctl_send,
        ctl_recv,
    })
}

/// A new session for `conn`, registered with the federation actor. `Err(Duplicate)`
/// if another link to the same peer wins the tie-break.
async fn start_session(
    ctx: &NodeCtx,
    shared: &LinkShared,
    conn: &quinn::Connection,
    peer: &str,
    dialler: &str,
) -> Result<
    (
        Arc<LinkSession>,
        mpsc::Receiver<Bytes>,
        mpsc::Receiver<Bytes>,
    ),
    LinkError,
> {
    let fc = &ctx.cfg.federation;
    // A link never disconnects on a full queue: dropping (counted) isolates
    // a slow peer, and the link stays up for everyone else's traffic.
    let (outbox, rx) = Outbox::new(
        fc.link_queue.max_frames,
        fc.link_queue.max_bytes,
        SlowConsumerPolicy::DropNewest,
    );
    let (ctl, ctl_rx) = mpsc::channel(fc.control_queue.max(1));
    let session = Arc::new(LinkSession {
        id: ctx.next_conn_id(),
        peer: Arc::from(peer),
        dialler: Arc::from(dialler),
        outbox: Arc::new(outbox),
        ctl,
        conn: conn.clone(),
    });
    *shared
        .peer_node_id
        .write()
        .unwrap_or_else(|e| e.into_inner()) = peer.to_owned();
    *shared.session.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&session));
    let fed = ctx
        .fed
        .actor()
        .ok_or_else(|| LinkError::Lost("federation actor not running".into()))?;
    let keep = ractor::call!(fed, |reply| FedMsg::Up {
        session: Arc::clone(&session),
        reply,
    })
    .map_err(|e| LinkError::Lost(format!("federation actor unavailable: {e}")));
    match keep {
        Ok(true) => Ok((session, rx, ctl_rx)),
        Ok(false) => {
            shared.take_session();
            Err(LinkError::Duplicate)
        }
        Err(e) => {
            shared.take_session();
            Err(e)
        }
    }
}

/// Tells the federation a session is over (once, whoever gets here first).
fn end_session(ctx: &NodeCtx, shared: &LinkShared, reason: &str) {
    if let Some(s) = shared.take_session() {
        if s.conn.close_reason().is_none() {
            close(&s.conn, ErrorCode(0), reason);
        }
        shared.set_state(LinkState::Backoff);
        if let Some(fed) = ctx.fed.actor() {
            let _ = fed.send_message(FedMsg::Down {
                session: s,
                reason: reason.to_owned(),
            });
        }
    }
}

async fn serve_dialled(
    ctx: &Arc<NodeCtx>,
    shared: &Arc<LinkShared>,
    spec: &PeerSpec,
    st: Streams,
) -> Result<(), LinkError> {
    let (session, rx, ctl_rx) =
        match start_session(ctx, shared, &st.conn, &spec.node_id, &st.dialler).await {
            Ok(s) => s,
            Err(e) => {
                close(
                    &st.conn,
                    ErrorCode::LINK_EXISTS,
                    "another link to this node is in use",
                );
                return Err(e);
            }
        };
    *shared
        .peer_spiffe_id
        .write()
        .unwrap_or_else(|e| e.into_inner()) = st.peer_spiffe.clone();
    serve(ctx, shared, session, rx, ctl_rx, st).await
}

/// The acceptor side of the link handshake (the hello was read and
/// authorized by `conn::accept`).
async fn accept_session(
    ctx: &Arc<NodeCtx>,
    shared: &Arc<LinkShared>,
    a: Accepted,
) -> Result<(), LinkError> {
    let Accepted {
        conn,
        mut send,
        recv,
        buf,
        node_id,
        spiffe_id,
    } = a;
    *shared
        .peer_spiffe_id
        .write()
        .unwrap_or_else(|e| e.into_inner()) = Some(spiffe_id.to_string());
    let (session, rx, ctl_rx) = match start_session(ctx, shared, &conn, &node_id, &node_id).await {
        Ok(s) => s,
        Err(e) => {
            counter!(m::LINK_REFUSALS_TOTAL, "reason" => "duplicate").increment(1);
            let reject = Frame::Reject(Reject {
                code: ErrorCode::LINK_EXISTS,
                reason: e.to_string(),
            });
            let _ = send.write_all(&encode(&reject, ctx)).await;
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
            close(&conn, ErrorCode::LINK_EXISTS, &e.to_string());
            return Err(e);
        }
    };
    let accept = Frame::PeerAccept(PeerAccept {
        node_id: ctx.cfg.node_id.clone(),
    });
    let opened = async {
        send.write_all(&encode(&accept, ctx))
            .await
            .map_err(|e| LinkError::Lost(e.to_string()))?;
        conn.accept_bi()
            .await
            .map_err(|e| LinkError::Lost(e.to_string()))
    };
    let (ctl_send, ctl_recv) = match tokio::time::timeout(ctx.cfg.handshake_timeout, opened).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            end_session(ctx, shared, &e.to_string());
            return Err(e);
        }
        Err(_) => {
            end_session(ctx, shared, "control stream not opened in time");
            return Err(LinkError::Timeout);
        }
    };
    let st = Streams {
        peer_spiffe: Some(spiffe_id.to_string()),
        dialler: node_id,
        conn,
        send,
        recv,
        buf,
        ctl_send,
        ctl_recv,
    };
    serve(ctx, shared, session, rx, ctl_rx, st).await
}

fn now_ms() -> u64 {
    crate::outbox::epoch().elapsed().as_millis() as u64
}

/// Runs a live link until one of its tasks ends, liveness fails or the node
/// shuts down; then closes it and tells the federation.
async fn serve(
    ctx: &Arc<NodeCtx>,
    shared: &Arc<LinkShared>,
    session: Arc<LinkSession>,
    rx: mpsc::Receiver<Bytes>,
    ctl_rx: mpsc::Receiver<Bytes>,
    st: Streams,
) -> Result<(), LinkError> {
    shared.set_state(LinkState::Up);
    *shared.up_since.write().unwrap_or_else(|e| e.into_inner()) = Some(SystemTime::now());
    *shared
        .remote_addr
        .write()
        .unwrap_or_else(|e| e.into_inner()) = st.conn.remote_address();
    metrics::gauge!(m::CONNECTIONS, "kind" => "peer").increment(1.0);
    counter!(m::CONNECTIONS_TOTAL, "kind" => "peer").increment(1);
    let last_pong = Arc::new(AtomicU64::new(now_ms()));
    // Liveness must not queue behind bulk data.
    let _ = st.ctl_send.set_priority(1);
    let (done_tx, mut done_rx) = mpsc::channel::<Result<(), LinkError>>(4);
    let spawn =
        |f: std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), LinkError>> + Send>>| {
            let done = done_tx.clone();
            AbortOnDrop(tokio::spawn(async move {
                let _ = done.send(f.await).await;
            }))
        };
    let _tasks = [
        spawn(Box::pin(data_writer(
            Arc::clone(ctx),
            Arc::clone(shared),
            Arc::clone(&session.outbox),
            st.send,
            rx,
        ))),
        spawn(Box::pin(ctl_writer(Arc::clone(ctx), st.ctl_send, ctl_rx))),
        spawn(Box::pin(data_reader(
            Arc::clone(ctx),
            Arc::clone(shared),
            Arc::clone(&session),
            st.recv,
            st.buf,
        ))),
        spawn(Box::pin(ctl_reader(
            Arc::clone(ctx),
            Arc::clone(&session),
            st.ctl_recv,
            Arc::clone(&last_pong),
        ))),
    ];
    let timeout_ms = ctx.cfg.federation.link_timeout.as_millis() as u64;
    let mut check =
        tokio::time::interval(ctx.cfg.federation.keep_alive.min(Duration::from_secs(1)));
    let mut shutdown = ctx.shutdown_rx();
    let generation = ctx.fed.generation();
    let result = loop {
        tokio::select! {
            r = done_rx.recv() => break r.unwrap_or(Ok(())),
            _ = check.tick() => {
                if ctx.fed.generation() != generation {
                    break Err(LinkError::Lost("the federation actor restarted".into()));
                }
                if now_ms().saturating_sub(last_pong.load(Ordering::Relaxed)) > timeout_ms {
                    break Err(LinkError::Liveness);
                }
            }
            _ = shutdown.changed() => break Ok(()),
        }
    };
    let reason = match &result {
        Ok(()) if ctx.is_shutting_down() => "node shutting down".to_string(),
        Ok(()) => "closed".to_string(),
        Err(e) => e.to_string(),
    };
    let code = match &result {
        Err(LinkError::Wire(w)) => w.code(),
        Err(LinkError::Protocol(_)) => ErrorCode::PROTOCOL,
        _ if ctx.is_shutting_down() => ErrorCode::SHUTTING_DOWN,
        _ => ErrorCode(0),
    };
    if let Err(e) = &result {
        counter!(m::LINK_DOWN_TOTAL, "reason" => e.label()).increment(1);
    }
    // Why the connection itself ended (peer close, idle timeout), if it did
    // before we close it: that says more than "stream closed".
    let reason = match session.conn.close_reason() {
        Some(r) => r.to_string(),
        None => {
            close(&session.conn, code, &reason);
            reason
        }
    };
    metrics::gauge!(m::CONNECTIONS, "kind" => "peer").decrement(1.0);
    end_session(ctx, shared, &reason);
    result
}

async fn data_writer(
    ctx: Arc<NodeCtx>,
    shared: Arc<LinkShared>,
    outbox: Arc<Outbox>,
    mut send: SendStream,
    mut rx: mpsc::Receiver<Bytes>,
) -> Result<(), LinkError> {
    const BATCH: usize = 512;
    const COALESCE: usize = 64 * 1024;
    let mut batch: Vec<Bytes> = Vec::new();
    let mut chunks: Vec<Bytes> = Vec::new();
    let bytes_out = counter!(m::LINK_BYTES_TOTAL, "direction" => "out");
    let frames_out = counter!(m::LINK_FRAMES_TOTAL, "direction" => "out");
    loop {
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            return Ok(());
        }
        let wait = outbox.take_wait();
        let frames = batch.len() as u64;
        let total: usize = batch.iter().map(Bytes::len).sum();
        slim_wire::coalesce(&mut batch, COALESCE, &mut chunks);
        for chunk in chunks.drain(..) {
            send.write_chunk(chunk)
                .await
                .map_err(|e| LinkError::Lost(e.to_string()))?;
        }
        outbox.written(total);
        bytes_out.increment(total as u64);
        frames_out.increment(frames);
        shared.frames_out.fetch_add(frames, Ordering::Relaxed);
        if let Some(w) = wait {
            ctx.hot.enqueue_to_write_seconds.record(w.as_secs_f64());
        }
    }
}

async fn ctl_writer(
    ctx: Arc<NodeCtx>,
    mut send: SendStream,
    mut rx: mpsc::Receiver<Bytes>,
) -> Result<(), LinkError> {
    let mut tick = tokio::time::interval(ctx.cfg.federation.keep_alive);
    let mut nonce = 0u64;
    loop {
        let frame = tokio::select! {
            b = rx.recv() => match b { Some(b) => b, None => return Ok(()) },
            _ = tick.tick() => {
                nonce += 1;
                encode(&Frame::Ping(Ping { nonce }), &ctx)
            }
        };
        send.write_all(&frame)
            .await
            .map_err(|e| LinkError::Lost(e.to_string()))?;
    }
}

async fn read_more(recv: &mut RecvStream, buf: &mut BytesMut) -> Result<bool, LinkError> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(64 * 1024);
    }
    match recv.read_buf(buf).await {
        Ok(0) if buf.is_empty() => Ok(false),
        Ok(0) => Err(WireError::Truncated {
            buffered: buf.len(),
        }
        .into()),
        Ok(n) => {
            counter!(m::LINK_BYTES_TOTAL, "direction" => "in").increment(n as u64);
            Ok(true)
        }
        Err(e) => Err(LinkError::Lost(e.to_string())),
    }
}

async fn ctl_reader(
    ctx: Arc<NodeCtx>,
    session: Arc<LinkSession>,
    mut recv: RecvStream,
    last_pong: Arc<AtomicU64>,
) -> Result<(), LinkError> {
    // Interest updates wait in the federation actor's mailbox; bounding how
    // many per link may wait there pushes back on a flooding peer (through
    // QUIC flow control) instead of growing memory.
    let permits = Arc::new(Semaphore::new(ctx.cfg.federation.control_queue.max(1)));
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        while let Some(total) = codec::check(&buf, &ctx.cfg.limits)? {
            let frame = codec::decode_body(&buf[4..total]);
            buf.advance(total);
            match frame.inspect_err(|e| m::protocol_error(e.reason_label()))? {
                Frame::Interest(i) => {
                    let permit = Arc::clone(&permits)
                        .acquire_owned()
                        .await
                        .map_err(|e| LinkError::Lost(e.to_string()))?;
                    let Some(fed) = ctx.fed.actor() else {
                        return Err(LinkError::Lost("federation actor not running".into()));
                    };
                    let _ = fed.send_message(FedMsg::Interest {
                        peer: Arc::clone(&session.peer),
                        session: session.id,
                        frame: i,
                        _permit: permit,
                    });
                }
                Frame::Ping(p) => {
                    // A peer that does not read its pongs only loses pongs.
                    let _ = session
                        .ctl
                        .try_send(encode(&Frame::Pong(Pong { nonce: p.nonce }), &ctx));
                    // Its pings prove it is alive too.
                    last_pong.store(now_ms(), Ordering::Relaxed);
                }
                Frame::Pong(_) => last_pong.store(now_ms(), Ordering::Relaxed),
                other => {
                    m::protocol_error("link_control");
                    return Err(LinkError::Protocol(format!(
                        "unexpected {} frame on a link's control stream",
                        other.kind().as_str()
                    )));
                }
            }
        }
        if !read_more(&mut recv, &mut buf).await? {
            return Ok(());
        }
    }
}

async fn data_reader(
    ctx: Arc<NodeCtx>,
    shared: Arc<LinkShared>,
    session: Arc<LinkSession>,
    mut recv: RecvStream,
    mut buf: BytesMut,
) -> Result<(), LinkError> {
    let mut fwd = Forwarder::new(&ctx, &session);
    let frames_in = counter!(m::LINK_FRAMES_TOTAL, "direction" => "in");
    loop {
        let mut n = 0u64;
        while let Some(total) = codec::check(&buf, &ctx.cfg.limits)? {
            n += 1;
            let f = &buf[4..total];
            if f[0] != FrameKind::Forward as u8 {
                let kind = FrameKind::from_u8(f[0]).map_or("unknown", FrameKind::as_str);
                m::protocol_error("link_data");
                return Err(LinkError::Protocol(format!(
                    "unexpected {kind} frame on a link's data stream"
                )));
            }
            match slim_wire::forward_view(&f[1..])
                .inspect_err(|e| m::protocol_error(e.reason_label()))?
            {
                Ok(v) => fwd.route(v)?,
                Err(Frame::Forward(owned)) => {
                    // Non-canonical encoding (never ours): re-encode and view it.
                    let mut b = BytesMut::new();
                    codec::encode(&Frame::Forward(owned), &ctx.cfg.limits, &mut b)?;
                    match slim_wire::forward_view(&b[5..])? {
                        Ok(v) => fwd.route(v)?,
                        Err(_) => return Err(LinkError::Protocol("unreadable forward".into())),
                    }
                }
                Err(_) => return Err(LinkError::Protocol("unreadable forward".into())),
            }
            buf.advance(total);
        }
        if n > 0 {
            frames_in.increment(n);
            shared.frames_in.fetch_add(n, Ordering::Relaxed);
            fwd.flush_metrics();
        }
        if !read_more(&mut recv, &mut buf).await? {
            return Ok(());
        }
    }
}

/// Routes forwarded publishes arriving on one link: local delivery when this
/// node is a destination, onward forwarding for the other destinations.
struct Forwarder<'a> {
    ctx: &'a NodeCtx,
    session: &'a LinkSession,
    scratch: BytesMut,
    tally: Tally,
    no_route: u64,
    loops: u64,
}

impl<'a> Forwarder<'a> {
    fn new(ctx: &'a NodeCtx, session: &'a LinkSession) -> Self {
        Forwarder {
            ctx,
            session,
            scratch: BytesMut::new(),
            tally: Tally::default(),
            no_route: 0,
            loops: 0,
        }
    }

    fn flush_metrics(&mut self) {
        let hm = &self.ctx.hot;
        if self.no_route > 0 {
            hm.no_route.increment(std::mem::take(&mut self.no_route));
        }
        if self.loops > 0 {
            counter!(m::LINK_DROPS_TOTAL, "reason" => "loop")
                .increment(std::mem::take(&mut self.loops));
        }
        self.ctx.flush_tally(&mut self.tally);
    }

    fn reserve(&mut self, n: usize) {
        if self.scratch.capacity() - self.scratch.len() < n + 512 {
            self.scratch.reserve(64 * 1024 + n);
        }
    }

    fn route(&mut self, v: ForwardView<'_>) -> Result<(), LinkError> {
        let me = self.ctx.cfg.node_id.as_str();
        let hook = self.ctx.route_hook();
        let env = Env {
            registry: &self.ctx.registry,
            hook: hook.as_ref(),
        };
        let max_hops = self.ctx.cfg.federation.max_hops;
        let plan = match engine::route_forward(&env, me, max_hops, &self.session.peer, &v) {
            Decision::Route(plan) => plan,
            Decision::Silent(Silent::Hook) => {
                m::dropped_by_hook();
                return Ok(());
            }
            Decision::Silent(Silent::BadPath) => {
                self.loops += 1;
                return Ok(());
            }
            Decision::Silent(Silent::NoRoute { n }) => {
                self.no_route += n;
                return Ok(());
            }
            Decision::Silent(Silent::NoRouteSilent) | Decision::Refuse(_) => {
                // A forward has no publisher to tell; the engine never says so.
                self.no_route += 1;
                return Ok(());
            }
        };
        self.no_route += plan.unreached;
        self.loops += plan.loops;
        let subs = plan.local_subs();
        if !subs.is_empty() {
            self.reserve(v.payload.len());
            codec::encode_deliver_raw(
                v.name,
                v.mode,
                v.from,
                v.from_identity,
                v.msg_id,
                v.payload,
                &self.ctx.cfg.limits,
                &mut self.scratch,
            )?;
            let frame = self.scratch.split().freeze();
            for sub in subs {
                if let Some(victim) = self.tally.push_sub(sub, frame.clone()) {
                    self.ctx.disconnect_slow(victim);
                }
            }
        }
        for hop in &plan.hops {
            let dests = plan.dests(hop);
            self.reserve(v.payload.len());
            codec::encode_forward_raw(
                v.name,
                v.mode,
                v.from,
                v.from_identity,
                v.msg_id,
                NodeIds {
                    ids: v.path.iter(),
                    len: v.path.len(),
                    then: Some(me),
                },
                NodeIds {
                    ids: dests.iter().copied(),
                    len: dests.len(),
                    then: None,
                },
                v.payload,
                &self.ctx.cfg.limits,
                &mut self.scratch,
            )?;
            let frame = self.scratch.split().freeze();
            self.tally.push_link(plan.group(hop), frame);
        }
        Ok(())
    }
}

/// Handles a `PeerHello` that arrived as the first frame of an incoming
/// connection: checks it, then starts the link actor under the federation
/// actor. `cert` is the TLS-authenticated identity and whether the policy
/// lets it peer.
pub(crate) async fn accept_peer(
    ctx: Arc<NodeCtx>,
    conn: quinn::Connection,
    mut send: SendStream,
    recv: RecvStream,
    buf: BytesMut,
    hello: PeerHello,
    cert: Option<(slim_auth::SpiffeId, Result<(), String>)>,
) -> Result<(), crate::conn::ConnError> {
    let refuse = |code: ErrorCode, label: &'static str, reason: String| {
        counter!(m::LINK_REFUSALS_TOTAL, "reason" => label).increment(1);
        Reject { code, reason }
    };
    let checked = if hello.version != PROTOCOL_VERSION {
        Err(refuse(
            ErrorCode::VERSION,
            "version",
            format!("protocol version {} not supported", hello.version),
        ))
    } else if !valid_node_id(&hello.node_id) || hello.node_id == ctx.cfg.node_id {
        Err(refuse(
            ErrorCode::PROTOCOL,
            "bad_node_id",
            format!("invalid peer node id {:?}", hello.node_id),
        ))
    } else {
        match cert {
            None => Err(refuse(
                ErrorCode::UNAUTHORIZED,
                "no_certificate",
                "a peer link needs a node certificate".into(),
            )),
            Some((_, Err(reason))) => {
                m::denied("peer");
                Err(refuse(ErrorCode::UNAUTHORIZED, "unauthorized", reason))
            }
            Some((id, Ok(()))) => Ok(id),
        }
    };
    let spiffe_id = match checked {
        Ok(id) => id,
        Err(reject) => {
            info!(peer = %hello.node_id, reason = %reject.reason, "peer link refused");
            let _ = send
                .write_all(&encode(&Frame::Reject(reject.clone()), &ctx))
                .await;
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
            close(&conn, reject.code, &reject.reason);
            return Err(crate::conn::ConnError::Refused(reject.reason));
        }
    };
    let Some(fed) = ctx.fed.actor() else {
        close(&conn, ErrorCode::SHUTTING_DOWN, "federation not running");
        return Err(crate::conn::ConnError::Lost(
            "federation actor not running".into(),
        ));
    };
    let shared = Arc::new(LinkShared::new(
        crate::federation::LinkDirection::Accepted,
        &hello.node_id,
        conn.remote_address(),
    ));
    let args = LinkArgs {
        ctx: Arc::clone(&ctx),
        key: ctx.fed.next_link_key(),
        shared,
        kind: LinkKind::Accepted(Box::new(Accepted {
            conn: conn.clone(),
            send,
            recv,
            buf,
            node_id: hello.node_id.clone(),
            spiffe_id,
        })),
    };
    if let Err(e) = Actor::spawn_linked(None, LinkActor, args, fed.get_cell()).await {
        warn!(error = %e, "cannot start link actor");
        close(&conn, ErrorCode::INTERNAL, "cannot start link");
        return Err(crate::conn::ConnError::Lost(e.to_string()));
    }
    debug!(peer = %hello.node_id, "peer link accepted");
    Ok(())
}
