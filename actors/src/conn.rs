//! One client connection: the hello exchange, the connection actor, and the
//! reader and writer tasks it owns.
//!
//! Data never crosses the actor's mailbox: the reader routes each publish by
//! reading the registry directly and pushing into subscribers' outboxes; the
//! writer drains this connection's outbox. The actor owns the lifecycle: it
//! starts both tasks, hears when either ends, and cleans up.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use metrics::counter;
use quinn::{RecvStream, SendStream, VarInt};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use slim_wire::{
    Accept, ErrorCode, Frame, Hello, Name, PROTOCOL_VERSION, Reject, WireError, codec,
};

use slim_auth::policy::Action;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::metrics as m;
use crate::node::NodeCtx;
use crate::outbox::Outbox;
use crate::registry::ConnId;
use crate::table::TableMsg;

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("wire: {0}")]
    Wire(#[from] WireError),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("connection lost: {0}")]
    Lost(String),
    #[error("handshake timed out")]
    Timeout,
    #[error("refused: {0}")]
    Refused(String),
}

impl ConnError {
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            ConnError::Wire(e) => e.code(),
            ConnError::Protocol(_) => ErrorCode::PROTOCOL,
            ConnError::Refused(_) => ErrorCode::UNAUTHORIZED,
            _ => ErrorCode::INTERNAL,
        }
    }
}

/// What the reader and writer of one connection share.
pub struct ConnShared {
    pub id: ConnId,
    pub name: Name,
    /// Who the peer authenticated as (certificate, JWT-SVID or shared secret).
    pub spiffe_id: Option<slim_auth::SpiffeId>,
    pub outbox: Arc<Outbox>,
    pub conn: quinn::Connection,
    pub actor: std::sync::OnceLock<ActorRef<ConnMsg>>,
}

impl ConnShared {
    /// The peer's SPIFFE ID as a string (stamped on every delivery it sends).
    pub fn identity(&self) -> Option<&str> {
        self.spiffe_id.as_ref().map(slim_auth::SpiffeId::as_str)
    }
}

pub(crate) fn encode(frame: &Frame, ctx: &NodeCtx) -> Bytes {
    let mut b = BytesMut::new();
    // Control frames are small and built by us; failing to encode one is a bug.
    if let Err(e) = codec::encode(frame, &ctx.cfg.limits, &mut b) {
        warn!(error = %e, "cannot encode control frame");
    }
    b.freeze()
}

/// Reads exactly one frame with a deadline; used for the hello.
pub(crate) async fn read_one(
    recv: &mut RecvStream,
    buf: &mut BytesMut,
    ctx: &NodeCtx,
) -> Result<Frame, ConnError> {
    loop {
        if let Some(total) = codec::check(buf, &ctx.cfg.limits)? {
            let f = buf.split_to(total);
            return Ok(codec::decode_body(&f[4..])?);
        }
        buf.reserve(4096);
        match recv.read_buf(buf).await {
            Ok(0) => return Err(ConnError::Lost("stream closed before hello".into())),
            Ok(_) => {}
            Err(e) => return Err(ConnError::Lost(e.to_string())),
        }
    }
}

/// Runs the TLS handshake and hello for one incoming connection and, on
/// success, starts its actor under `listener`.
pub(crate) async fn accept(
    ctx: Arc<NodeCtx>,
    incoming: quinn::Incoming,
    listener: ractor::ActorCell,
) -> Result<(), ConnError> {
    let deadline = ctx.cfg.handshake_timeout;
    let conn = match tokio::time::timeout(deadline, incoming).await {
        Err(_) => {
            m::handshake("timeout");
            return Err(ConnError::Timeout);
        }
        Ok(Err(e)) => {
            m::handshake("refused");
            info!(error = %e, "handshake refused");
            return Err(ConnError::Refused(e.to_string()));
        }
        Ok(Ok(c)) => c,
    };
    let certs = peer_certs(&conn);
    let cert_id = certs
        .as_deref()
        .and_then(|c| slim_auth::peer_spiffe_id(c).ok());
    let expires_at = certs.as_deref().and_then(slim_auth::peer_not_after);
    // A certificate identity the policy does not know is refused before any frame.
    let (policy, _) = ctx.policy();
    let cert_grants = match &cert_id {
        None => None,
        Some(id) => match policy.grants(Some(id)) {
            Ok(g) => Some(g),
            Err(denied) => {
                m::handshake("unauthorized");
                m::denied("connect");
                info!(identity = %id, reason = %denied, "connection refused by policy");
                conn.close(
                    VarInt::from_u32(ErrorCode::UNAUTHORIZED.0 as u32),
                    denied.to_string().as_bytes(),
                );
                return Err(ConnError::Refused(denied.to_string()));
            }
        },
    };
    let setup = async {
        let (send, mut recv) = conn
            .accept_bi()
            .await
            .map_err(|e| ConnError::Lost(e.to_string()))?;
        let mut buf = BytesMut::with_capacity(4096);
        let hello = match read_one(&mut recv, &mut buf, &ctx).await? {
            Frame::Hello(h) => First::Client(h),
            Frame::PeerHello(h) => First::Peer(h),
            other => {
                return Err(ConnError::Protocol(format!(
                    "expected hello, got {}",
                    other.kind().as_str()
                )));
            }
        };
        Ok::<_, ConnError>((send, recv, buf, hello))
    };
    let (mut send, recv, buf, first) = match tokio::time::timeout(deadline, setup).await {
        Err(_) => {
            m::handshake("timeout");
            conn.close(
                VarInt::from_u32(ErrorCode::PROTOCOL.0 as u32),
                b"hello timeout",
            );
            return Err(ConnError::Timeout);
        }
        Ok(Err(e)) => {
            m::handshake("bad_hello");
            m::protocol_error("bad_hello");
            conn.close(
                VarInt::from_u32(e.code().0 as u32),
                e.to_string().as_bytes(),
            );
            return Err(e);
        }
        Ok(Ok(v)) => v,
    };
    let hello = match first {
        First::Client(h) => h,
        First::Peer(h) => {
            // A node opening a peer link: its certificate identity must be
            // granted `peer` by the policy.
            let cert = cert_id.map(|id| {
                let ok = cert_grants
                    .as_ref()
                    .map_or(Ok(()), |g| g.check_peer().map_err(|d| d.to_string()));
                (id, ok)
            });
            return crate::link::accept_peer(ctx, conn, send, recv, buf, h, cert).await;
        }
    };
    let authenticated = check_hello(&hello).and_then(|()| match (&cert_id, cert_grants) {
        (Some(id), Some(g)) => match hello.token {
            Some(_) => Err(Reject {
                code: ErrorCode::PROTOCOL,
                reason: "authenticate with a client certificate or a token, not both".into(),
            }),
            None => Ok((id.clone(), g)),
        },
        _ => {
            let id = authenticate_token(&ctx, hello.token.as_deref())?;
            policy.grants(Some(&id)).map(|g| (id, g)).map_err(|d| {
                m::denied("connect");
                Reject {
                    code: ErrorCode::UNAUTHORIZED,
                    reason: d.to_string(),
                }
            })
        }
    });
    let checked = authenticated.and_then(|(id, grants)| {
        grants
            .check(Action::Register, hello.name.as_str())
            .map(|()| id)
            .map_err(|d| {
                m::denied("register");
                Reject {
                    code: ErrorCode::UNAUTHORIZED,
                    reason: d.to_string(),
                }
            })
    });
    let spiffe_id = match checked {
        Ok(id) => Some(id),
        Err(reject) => {
            m::handshake("rejected");
            info!(name = %hello.name, reason = %reject.reason, "hello rejected");
            let _ = send
                .write_all(&encode(&Frame::Reject(reject.clone()), &ctx))
                .await;
            let _ = send.finish();
            // Give the reject a moment to reach the client before the close.
            let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
            conn.close(
                VarInt::from_u32(reject.code.0 as u32),
                reject.reason.as_bytes(),
            );
            return Err(ConnError::Refused(reject.reason));
        }
    };
    let identity = spiffe_id.as_ref().map(slim_auth::SpiffeId::as_str);

    let id = ctx.next_conn_id();
    let q = &ctx.cfg.queue;
    let (outbox, rx) = Outbox::new(q.max_frames, q.max_bytes, q.policy);
    let outbox = Arc::new(outbox);
    let shared = Arc::new(ConnShared {
        id,
        name: hello.name.clone(),
        spiffe_id: spiffe_id.clone(),
        outbox: Arc::clone(&outbox),
        conn: conn.clone(),
        actor: std::sync::OnceLock::new(),
    });
    ctx.conns.insert(id, Arc::clone(&shared));
    let displaced = ractor::call!(ctx.table(), |reply| TableMsg::Register {
        conn: id,
        outbox: Arc::clone(&outbox),
        full: hello.name.as_str().to_owned(),
        service: hello.name.service_str().to_owned(),
        reply,
    })
    .map_err(|e| ConnError::Lost(format!("subscription table unavailable: {e}")))?;
    if let Some(old) = displaced.and_then(|old| ctx.conns.get(&old).map(|c| Arc::clone(c.value())))
    {
        info!(name = %hello.name, "name taken over by a new connection; closing the old one");
        old.conn.close(
            VarInt::from_u32(ErrorCode::NAME_TAKEN.0 as u32),
            b"replaced by a newer connection with the same name",
        );
    }
    let accept = Frame::Accept(Accept {
        node_id: ctx.cfg.node_id.clone(),
        identity: identity.map(str::to_owned),
        max_frame: ctx.cfg.limits.max_frame,
    });
    send.write_all(&encode(&accept, &ctx))
        .await
        .map_err(|e| ConnError::Lost(e.to_string()))?;
    m::handshake("ok");
    ctx.fed.emit(crate::federation::NodeEvent::ClientConnected {
        client: hello.name.to_string(),
        spiffe_id: identity.map(str::to_owned),
        at: std::time::SystemTime::now(),
    });
    info!(conn = id, name = %hello.name, identity = identity.unwrap_or("-"), remote = %conn.remote_address(), "client connected");

    let args = ConnArgs {
        expires_at: expires_at.map(|t| t + ctx.cfg.peer_expiry_grace),
        ctx: Arc::clone(&ctx),
        shared: Arc::clone(&shared),
        send,
        recv,
        buf,
        rx,
    };
    let (actor, _) = Actor::spawn_linked(None, ConnectionActor, args, listener.clone())
        .await
        .map_err(|e| ConnError::Lost(format!("cannot spawn connection actor: {e}")))?;
    let _ = shared.actor.set(actor.clone());
    let _ = listener.send_message(crate::listener::ListenerMsg::Child {
        actor: actor.get_id(),
        conn: id,
    });
    Ok(())
}

/// The first frame of an incoming connection: a client's or a peer node's.
enum First {
    Client(Hello),
    Peer(slim_wire::PeerHello),
}

fn check_hello(h: &Hello) -> Result<(), Reject> {
    if h.version != PROTOCOL_VERSION {
        return Err(Reject {
            code: ErrorCode::VERSION,
            reason: format!(
                "protocol version {} not supported (node speaks {PROTOCOL_VERSION})",
                h.version
            ),
        });
    }
    if !h.name.has_instance() {
        return Err(Reject {
            code: ErrorCode::BAD_NAME,
            reason: "a client registers its full name, org/namespace/service/instance".into(),
        });
    }
    Ok(())
}

/// The identity of the development shared-secret mode. Its trust domain says
/// what it is wherever it shows up (policies, deliveries, logs).
pub const SHARED_SECRET_ID: &str = "spiffe://insecure-shared-secret/client";

/// In-band authentication for a client that presented no certificate:
/// `jwt:<JWT-SVID>` or, in development, `secret:<shared secret>`.
fn authenticate_token(ctx: &NodeCtx, token: Option<&str>) -> Result<slim_auth::SpiffeId, Reject> {
    let unauthorized = |reason: String| Reject {
        code: ErrorCode::UNAUTHORIZED,
        reason,
    };
    let auth = &ctx.cfg.token_auth;
    let Some(token) = token else {
        m::denied("connect");
        return Err(unauthorized(
            "no client certificate and no token: present an X.509-SVID or a JWT-SVID".into(),
        ));
    };
    if let Some(jwt) = token.strip_prefix("jwt:") {
        let Some(cfg) = &auth.jwt else {
            return Err(unauthorized(
                "JWT-SVID authentication is not enabled on this node".into(),
            ));
        };
        let keys = ctx
            .jwt_keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        return slim_auth::validate_jwt_svid(
            jwt,
            &cfg.audience,
            &keys,
            std::time::SystemTime::now(),
        )
        .map_err(|e| {
            counter!(m::HANDSHAKE_REFUSALS_TOTAL, "reason" => e.reason_code()).increment(1);
            unauthorized(format!("JWT-SVID refused ({}): {e}", e.reason_code()))
        });
    }
    if let Some(secret) = token.strip_prefix("secret:") {
        let Some(expected) = &auth.shared_secret else {
            return Err(unauthorized(
                "shared-secret authentication is not enabled on this node".into(),
            ));
        };
        // HMAC under a throwaway key turns the comparison into ring's
        // constant-time tag verification.
        let key =
            ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
                .map_err(|_| unauthorized("cannot check the shared secret".into()))?;
        let tag = ring::hmac::sign(&key, expected.as_bytes());
        if ring::hmac::verify(&key, secret.as_bytes(), tag.as_ref()).is_err() {
            counter!(m::HANDSHAKE_REFUSALS_TOTAL, "reason" => "bad_shared_secret").increment(1);
            return Err(unauthorized("wrong shared secret".into()));
        }
        warn!("client authenticated with the INSECURE development shared secret");
        return Ok(slim_auth::SpiffeId::parse(SHARED_SECRET_ID).expect("static SPIFFE ID"));
    }
    Err(unauthorized(
        "unknown token kind (expected jwt:… or secret:…)".into(),
    ))
}

fn peer_certs(conn: &quinn::Connection) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
    conn.peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()
        .map(|b| *b)
}

pub struct ConnArgs {
    /// When the peer's certificate (plus grace) runs out.
    expires_at: Option<std::time::SystemTime>,
    ctx: Arc<NodeCtx>,
    shared: Arc<ConnShared>,
    send: SendStream,
    recv: RecvStream,
    buf: BytesMut,
    rx: mpsc::Receiver<Bytes>,
}

pub enum ConnMsg {
    ReaderEnded(Result<(), String>),
    WriterEnded(Result<(), String>),
    /// Fault injection for supervision tests: makes the actor's handler panic.
    InjectPanic,
}

/// Aborts the task when dropped, so a dead actor leaves no task behind.
pub(crate) struct AbortOnDrop(pub(crate) JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub struct ConnState {
    ctx: Arc<NodeCtx>,
    shared: Arc<ConnShared>,
    reader: Option<AbortOnDrop>,
    writer: Option<AbortOnDrop>,
    _expiry: Option<AbortOnDrop>,
    reader_done: bool,
}

pub struct ConnectionActor;

impl Actor for ConnectionActor {
    type Msg = ConnMsg;
    type State = ConnState;
    type Arguments = ConnArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ConnMsg>,
        a: ConnArgs,
    ) -> Result<ConnState, ActorProcessingErr> {
        metrics::gauge!(m::CONNECTIONS, "kind" => "client").increment(1.0);
        counter!(m::CONNECTIONS_TOTAL, "kind" => "client").increment(1);
        let me = myself.clone();
        let reader = tokio::spawn(crate::router::read_loop(
            Arc::clone(&a.ctx),
            Arc::clone(&a.shared),
            a.recv,
            a.buf,
        ));
        let reader = tokio::spawn(async move {
            let r = match reader.await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(e) => Err(format!("reader task failed: {e}")),
            };
            let _ = me.send_message(ConnMsg::ReaderEnded(r));
        });
        let me = myself.clone();
        let writer = tokio::spawn(crate::writer::write_loop(
            Arc::clone(&a.ctx),
            Arc::clone(&a.shared),
            a.send,
            a.rx,
        ));
        let writer = tokio::spawn(async move {
            let r = match writer.await {
                Ok(r) => r,
                Err(e) => Err(format!("writer task failed: {e}")),
            };
            let _ = me.send_message(ConnMsg::WriterEnded(r));
        });
        let expiry = a.expires_at.map(|at| {
            let sh = Arc::clone(&a.shared);
            AbortOnDrop(tokio::spawn(async move {
                let left = at
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                tokio::time::sleep(left).await;
                counter!(m::PEER_CERT_EXPIRED_TOTAL).increment(1);
                info!(conn = sh.id, name = %sh.name, "closing: the peer certificate expired");
                sh.conn.close(
                    VarInt::from_u32(ErrorCode::UNAUTHORIZED.0 as u32),
                    b"peer certificate expired",
                );
            }))
        });
        Ok(ConnState {
            ctx: a.ctx,
            shared: a.shared,
            reader: Some(AbortOnDrop(reader)),
            writer: Some(AbortOnDrop(writer)),
            _expiry: expiry,
            reader_done: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ConnMsg>,
        msg: ConnMsg,
        st: &mut ConnState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConnMsg::ReaderEnded(r) => {
                st.reader_done = true;
                st.reader = None;
                if st.ctx.is_shutting_down() {
                    // The writer is draining the outbox; it ends the actor.
                    return Ok(());
                }
                if let Err(e) = &r {
                    debug!(conn = st.shared.id, error = %e, "reader ended");
                }
                myself.stop(Some(r.err().unwrap_or_else(|| "closed by peer".into())));
            }
            ConnMsg::WriterEnded(r) => {
                st.writer = None;
                myself.stop(r.err());
            }
            ConnMsg::InjectPanic => panic!("injected connection actor fault"),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ConnMsg>,
        st: &mut ConnState,
    ) -> Result<(), ActorProcessingErr> {
        cleanup(&st.ctx, st.shared.id);
        Ok(())
    }
}

/// Removes every trace of a connection. Idempotent: called from the actor's
/// `post_stop` and, should the actor have died in a panic, by its supervisor.
pub(crate) fn cleanup(ctx: &NodeCtx, id: ConnId) {
    if let Some((_, shared)) = ctx.conns.remove(&id) {
        shared.outbox.close();
        if shared.conn.close_reason().is_none() {
            shared.conn.close(VarInt::from_u32(0), b"closed");
        }
        metrics::gauge!(m::CONNECTIONS, "kind" => "client").decrement(1.0);
        ctx.fed
            .emit(crate::federation::NodeEvent::ClientDisconnected {
                client: shared.name.to_string(),
                spiffe_id: shared.identity().map(str::to_owned),
                at: std::time::SystemTime::now(),
            });
        info!(conn = id, name = %shared.name, "client disconnected");
    }
    let _ = ctx.table().send_message(TableMsg::RemoveConn { conn: id });
}
