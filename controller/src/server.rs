//! The controller service: a QUIC listener with mutual TLS; one task per
//! connection (node session or admin session) and one push task that turns
//! [`Fleet`] decisions into `SetPeers` messages. State lives in the sans-IO
//! [`Fleet`] (behind a mutex never held across an await) and the
//! [`AuditStore`].

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metrics::{counter, gauge};
use quinn::crypto::rustls::QuicServerConfig;
use rustls_pki_types::CertificateDer;
use slim_auth::{Identity, IdentitySource, SpiffeClientVerifier, SpiffeId};
use tokio::sync::{Notify, mpsc, watch};
use tracing::{debug, info, warn};

use crate::authz::{Authz, PatternError, Roles};
use crate::conn::{ConnError, FramedStream};
use crate::fleet::{ConnId, Fleet, FleetConfig, FleetError};
use crate::metrics as m;
use crate::proto::{
    ALPN_CONTROLLER, AdminRequest, AdminResponse, ErrorCode, Limits, LinkView, NodeView, ToCaller,
    ToController, now_ms, piece_budget,
};
use crate::store::{AuditStore, Origin, StoreError};

/// Largest event batch a node may send in one message.
pub const MAX_EVENT_BATCH: usize = 4096;
/// Most entries of a registering node's current dial set considered.
const MAX_DIALING: usize = 1024;
/// Most audit records one answer carries.
pub const MAX_AUDIT_PAGE: u32 = 10_000;
/// Messages queued towards one node; a node that does not read them is
/// closed (it reconnects and gets a full push).
const NODE_QUEUE: usize = 64;

/// The stateless reset key file's name in `data_dir` when none is configured.
pub const RESET_KEY_FILE: &str = "quic-reset.key";

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub listen: SocketAddr,
    /// Where the audit trail lives (`audit.redb`).
    pub data_dir: PathBuf,
    /// SPIFFE ID patterns of nodes (see [`crate::authz`]).
    pub nodes: Vec<String>,
    /// SPIFFE ID patterns of admins.
    pub admins: Vec<String>,
    pub fleet: FleetConfig,
    pub limits: Limits,
    pub handshake_timeout: Duration,
    pub max_connections: usize,
    /// The file of the secret behind the endpoint's QUIC stateless resets
    /// (32 bytes; created, mode 0600, when missing). `None`:
    /// `data_dir/quic-reset.key`. The same secret after a restart lets the
    /// new process reset the old connections, so nodes reconnect at once
    /// instead of after their idle timeout.
    pub reset_key_file: Option<PathBuf>,
}

impl ControllerConfig {
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        ControllerConfig {
            listen,
            data_dir,
            nodes: Vec::new(),
            admins: Vec::new(),
            fleet: FleetConfig::default(),
            limits: Limits::default(),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            reset_key_file: None,
        }
    }
}

/// The controller's own credentials.
#[derive(Clone)]
pub enum ControllerIdentity {
    Static(Identity),
    Source(IdentitySource),
}

impl From<&Identity> for ControllerIdentity {
    fn from(i: &Identity) -> Self {
        ControllerIdentity::Static(i.clone())
    }
}

impl From<&IdentitySource> for ControllerIdentity {
    fn from(s: &IdentitySource) -> Self {
        ControllerIdentity::Source(s.clone())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Authz(#[from] PatternError),
    #[error("QUIC stateless reset key: {0}")]
    ResetKey(slim_auth::AuthError),
}

struct Slot {
    tx: mpsc::Sender<ToCaller>,
    conn: quinn::Connection,
}

struct Shared {
    cfg: ControllerConfig,
    fleet: Mutex<Fleet>,
    store: AuditStore,
    slots: Mutex<HashMap<ConnId, Slot>>,
    authz: Authz,
    wake: Notify,
    next_id: AtomicU64,
    open_conns: AtomicU64,
    shutdown: watch::Receiver<bool>,
}

impl Shared {
    fn fleet(&self) -> parking_lot::MutexGuard<'_, Fleet> {
        self.fleet.lock()
    }

    fn slots(&self) -> parking_lot::MutexGuard<'_, HashMap<ConnId, Slot>> {
        self.slots.lock()
    }
}

/// A running controller.
pub struct ControllerHandle {
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    shutdown_tx: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for ControllerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerHandle")
            .field("listen", &self.endpoint.local_addr().ok())
            .finish()
    }
}

fn tls_config(identity: &ControllerIdentity) -> Result<rustls::ServerConfig, ControllerError> {
    let bundles = match identity {
        ControllerIdentity::Static(i) => Arc::new(std::sync::RwLock::new(i.bundles.clone())),
        ControllerIdentity::Source(s) => s.shared_bundles(),
    };
    let hook: slim_auth::verify::RejectHook = Arc::new(|e: &slim_auth::SvidError| {
        counter!(m::REFUSED_TOTAL, "reason" => e.reason_code()).increment(1);
        tracing::info!(reason = e.reason_code(), error = %e, "client SVID rejected");
    });
    let verifier = Arc::new(SpiffeClientVerifier::new(bundles).with_reject_hook(hook));
    let alpn: &[&[u8]] = &[ALPN_CONTROLLER];
    match identity {
        ControllerIdentity::Static(i) => {
            slim_auth::tls::server_config_with_verifier(i, alpn, verifier)
        }
        ControllerIdentity::Source(s) => {
            slim_auth::tls::server_config_from_source_with_verifier(s, alpn, verifier)
        }
    }
    .map_err(|e| ControllerError::Tls(e.to_string()))
}

/// Starts the controller: opens the audit store, binds, serves.
pub async fn start(
    cfg: ControllerConfig,
    identity: impl Into<ControllerIdentity>,
) -> Result<ControllerHandle, ControllerError> {
    let identity = identity.into();
    let authz = Authz::new(&cfg.nodes, &cfg.admins)?;
    if cfg.nodes.is_empty() {
        warn!("controller: no node identity pattern configured; no node can register");
    }
    let store = AuditStore::open(&cfg.data_dir)?;
    let tls = tls_config(&identity)?;
    let quic = QuicServerConfig::try_from(Arc::new(tls))
        .map_err(|e| ControllerError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(Arc::new(crate::conn::transport()));
    // After the store: `data_dir` exists now.
    let reset_file = cfg
        .reset_key_file
        .clone()
        .unwrap_or_else(|| cfg.data_dir.join(RESET_KEY_FILE));
    let reset =
        slim_auth::ResetSecret::load_or_create(&reset_file).map_err(ControllerError::ResetKey)?;
    info!(source = %reset.origin(), "QUIC stateless reset key");
    let bind = |source| ControllerError::Bind {
        addr: cfg.listen,
        source,
    };
    let socket = std::net::UdpSocket::bind(cfg.listen).map_err(bind)?;
    socket.set_nonblocking(true).map_err(bind)?;
    let endpoint = quinn::Endpoint::new(
        crate::conn::endpoint_config(&reset),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(bind)?;
    let (shutdown_tx, shutdown) = watch::channel(false);
    gauge!(m::AUDIT_RECORDS).set(store.len().unwrap_or(0) as f64);
    let shared = Arc::new(Shared {
        fleet: Mutex::new(Fleet::new(cfg.fleet.clone(), Instant::now())),
        store,
        slots: Mutex::new(HashMap::new()),
        authz,
        wake: Notify::new(),
        next_id: AtomicU64::new(1),
        open_conns: AtomicU64::new(0),
        shutdown,
        cfg,
    });
    let tasks = vec![
        tokio::spawn(accept_loop(Arc::clone(&shared), endpoint.clone())),
        tokio::spawn(push_loop(Arc::clone(&shared))),
    ];
    info!(addr = %endpoint.local_addr().map(|a| a.to_string()).unwrap_or_default(), data_dir = %shared.cfg.data_dir.display(), "controller listening");
    Ok(ControllerHandle {
        shared,
        endpoint,
        shutdown_tx,
        tasks,
    })
}

impl ControllerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .expect("a bound endpoint has an address")
    }

    /// The fleet view (as `slimctl node list` shows it).
    pub fn nodes(&self) -> Vec<NodeView> {
        self.shared.fleet().nodes()
    }

    /// The link view (as `slimctl link list` shows it).
    pub fn links(&self) -> Vec<LinkView> {
        self.shared.fleet().links()
    }

    pub fn audit_len(&self) -> u64 {
        self.shared.store.len().unwrap_or(0)
    }

    /// Closes every connection and waits (bounded) for all tasks, so the
    /// store file is released when this returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        self.endpoint.close(
            quinn::VarInt::from_u32(ErrorCode::SHUTTING_DOWN.0 as u32),
            b"controller shutting down",
        );
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&self.shared) > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if Arc::strong_count(&self.shared) > 1 {
            warn!("controller tasks still running after shutdown");
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        info!("controller stopped");
    }
}

async fn accept_loop(shared: Arc<Shared>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        if shared.open_conns.load(Ordering::Relaxed) as usize >= shared.cfg.max_connections {
            counter!(m::REFUSED_TOTAL, "reason" => "max_connections").increment(1);
            incoming.refuse();
            continue;
        }
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            shared.open_conns.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = serve_conn(&shared, incoming).await {
                debug!(error = %e, "controller connection ended");
            }
            shared.open_conns.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

fn close(conn: &quinn::Connection, code: ErrorCode, reason: &str) {
    conn.close(quinn::VarInt::from_u32(code.0 as u32), reason.as_bytes());
}

fn peer_id(conn: &quinn::Connection) -> Option<SpiffeId> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    slim_auth::tls::peer_spiffe_id(&certs).ok()
}

async fn serve_conn(shared: &Arc<Shared>, incoming: quinn::Incoming) -> Result<(), ConnError> {
    let timeout = shared.cfg.handshake_timeout;
    let conn = match tokio::time::timeout(timeout, incoming).await {
        Ok(r) => r?,
        Err(_) => return Err(ConnError::Timeout("handshake")),
    };
    let Some(id) = peer_id(&conn) else {
        counter!(m::REFUSED_TOTAL, "reason" => "no_identity").increment(1);
        close(
            &conn,
            ErrorCode::UNAUTHORIZED,
            "no SPIFFE ID in the client certificate",
        );
        return Ok(());
    };
    let roles = shared.authz.roles(&id);
    if roles == Roles::default() {
        counter!(m::REFUSED_TOTAL, "reason" => "unauthorized").increment(1);
        warn!(spiffe_id = %id, remote = %conn.remote_address(), "refused: neither a node nor an admin identity");
        close(
            &conn,
            ErrorCode::UNAUTHORIZED,
            &format!("{id} is neither a node nor an admin identity"),
        );
        return Ok(());
    }
    let (send, recv) = match tokio::time::timeout(timeout, conn.accept_bi()).await {
        Ok(r) => r?,
        Err(_) => {
            close(&conn, ErrorCode::BAD_REQUEST, "no stream opened");
            return Err(ConnError::Timeout("stream"));
        }
    };
    let mut stream = FramedStream::new(send, recv, shared.cfg.limits);
    let first = match tokio::time::timeout(timeout, stream.recv::<ToController>()).await {
        Ok(Ok(Some(m))) => m,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => {
            malformed(&conn, &e);
            return Err(e);
        }
        Err(_) => {
            close(&conn, ErrorCode::BAD_REQUEST, "no message");
            return Err(ConnError::Timeout("first message"));
        }
    };
    match first {
        ToController::Register(reg) if roles.node => {
            node_session(shared, conn, stream, id, reg).await
        }
        ToController::Admin(req) if roles.admin => admin_session(shared, conn, stream, req).await,
        ToController::Register(_) | ToController::Admin(_) => {
            counter!(m::REFUSED_TOTAL, "reason" => "unauthorized").increment(1);
            let what = if roles.node { "admin" } else { "node" };
            let reason = format!("{id} is not a {what} identity");
            warn!(spiffe_id = %id, "refused: {reason}");
            refuse(&conn, &mut stream, ErrorCode::UNAUTHORIZED, reason).await;
            Ok(())
        }
        _ => {
            refuse(
                &conn,
                &mut stream,
                ErrorCode::BAD_REQUEST,
                "the first message must be Register or Admin".into(),
            )
            .await;
            Ok(())
        }
    }
}

fn malformed(conn: &quinn::Connection, e: &ConnError) {
    if let ConnError::Proto(p) = e {
        counter!(m::MALFORMED_TOTAL, "reason" => p.reason()).increment(1);
        close(conn, ErrorCode::MALFORMED, &p.to_string());
    }
}

/// Tells the caller why, then closes: the reason travels both in-band and in
/// the QUIC close.
async fn refuse(
    conn: &quinn::Connection,
    stream: &mut FramedStream,
    code: ErrorCode,
    reason: String,
) {
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        stream.send(&ToCaller::Error {
            code,
            reason: reason.clone(),
        }),
    )
    .await;
    stream.finish_and_flush(Duration::from_secs(1)).await;
    close(conn, code, &reason);
}

async fn node_session(
    shared: &Arc<Shared>,
    conn: quinn::Connection,
    mut stream: FramedStream,
    spiffe_id: SpiffeId,
    reg: crate::proto::Register,
) -> Result<(), ConnError> {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel(NODE_QUEUE);
    // The slot exists before the fleet knows the node, so the push task
    // always finds it; `Registered` is queued first so it precedes SetPeers.
    let _ = tx.try_send(ToCaller::Registered);
    shared.slots().insert(
        id,
        Slot {
            tx,
            conn: conn.clone(),
        },
    );
    let node_id = reg.node_id.clone();
    let epoch = reg.epoch;
    let mut reg = reg;
    // Hearsay is only taken about identities that could register as nodes.
    reg.dialing.truncate(MAX_DIALING);
    reg.dialing.retain(|p| {
        p.expect_spiffe_id
            .as_deref()
            .and_then(|s| SpiffeId::parse(s).ok())
            .is_some_and(|id| shared.authz.roles(&id).node)
    });
    let registered = shared
        .fleet()
        .handle_register(id, spiffe_id.as_str(), reg, now_ms());
    let r = match registered {
        Ok(r) => r,
        Err(e) => {
            shared.slots().remove(&id);
            counter!(m::REFUSED_TOTAL, "reason" => "register").increment(1);
            warn!(node = %node_id, spiffe_id = %spiffe_id, error = %e, "registration refused");
            let code = match e {
                FleetError::NodeIdTaken { .. } => ErrorCode::NODE_ID_TAKEN,
                _ => ErrorCode::BAD_REQUEST,
            };
            refuse(&conn, &mut stream, code, e.to_string()).await;
            return Ok(());
        }
    };
    if let Some(old) = r.replaced
        && let Some(slot) = shared.slots().remove(&old)
    {
        close(
            &slot.conn,
            ErrorCode::REPLACED,
            "a newer connection registered this node",
        );
    }
    info!(node = %node_id, spiffe_id = %spiffe_id, remote = %conn.remote_address(), "node registered");
    counter!(m::REGISTRATIONS_TOTAL).increment(1);
    shared.wake.notify_one();
    let mut shutdown = shared.shutdown.clone();
    let result = loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(msg) => if let Err(e) = stream.send(&msg).await { break Err(e) },
                None => break Ok(()),
            },
            msg = stream.recv::<ToController>() => match msg {
                Ok(Some(ToController::Report(part))) => {
                    if part.last {
                        counter!(m::REPORTS_TOTAL, "kind" => "full").increment(1);
                    }
                    let _ = shared.fleet().handle_report(id, part, now_ms());
                }
                Ok(Some(ToController::ReportDelta(delta))) => {
                    counter!(m::REPORTS_TOTAL, "kind" => "delta").increment(1);
                    let r = shared.fleet().handle_report_delta(id, delta, now_ms());
                    if let Err(e) = r {
                        // The fleet queued a `SendReport` (once): the push
                        // task sends it.
                        debug!(node = %node_id, error = %e, "report delta not applied; asking for a full report");
                        shared.wake.notify_one();
                    }
                }
                Ok(Some(ToController::Events { epoch: e, first_seq, events })) => {
                    if e != epoch || events.len() > MAX_EVENT_BATCH {
                        refuse(&conn, &mut stream, ErrorCode::BAD_REQUEST,
                            format!("event batch: epoch must be the registered one and at most {MAX_EVENT_BATCH} events")).await;
                        break Ok(());
                    }
                    let _ = shared.fleet().handle_seen(id, now_ms());
                    match store_events(shared, &node_id, spiffe_id.as_str(), epoch, first_seq, events).await {
                        Ok(upto) => if let Err(err) = stream.send(&ToCaller::EventsAck { epoch, upto }).await { break Err(err) },
                        // Not acknowledged: the node keeps the batch and resends it.
                        Err(err) => warn!(node = %node_id, error = %err, "cannot store audit events"),
                    }
                }
                Ok(Some(_)) => {
                    refuse(&conn, &mut stream, ErrorCode::BAD_REQUEST, "unexpected message in a node session".into()).await;
                    break Ok(());
                }
                Ok(None) => break Ok(()),
                Err(e) => {
                    malformed(&conn, &e);
                    break Err(e);
                }
            },
            _ = shutdown.changed() => break Ok(()),
        }
    };
    {
        let mut slots = shared.slots();
        slots.remove(&id);
    }
    shared.fleet().handle_disconnect(id, Instant::now());
    shared.wake.notify_one();
    info!(node = %node_id, "node disconnected");
    result
}

async fn store_events(
    shared: &Arc<Shared>,
    node_id: &str,
    node_spiffe_id: &str,
    epoch: u64,
    first_seq: u64,
    events: Vec<crate::proto::NodeEvent>,
) -> Result<u64, StoreError> {
    let shared2 = Arc::clone(shared);
    let (node_id, node_spiffe_id) = (node_id.to_owned(), node_spiffe_id.to_owned());
    let (upto, added) = tokio::task::spawn_blocking(move || {
        let origin = Origin {
            node_id: &node_id,
            node_spiffe_id: &node_spiffe_id,
            epoch,
        };
        shared2.store.append(&origin, first_seq, &events, now_ms())
    })
    .await
    .map_err(|e| StoreError::Db(e.to_string()))??;
    counter!(m::AUDIT_RECORDS_TOTAL).increment(added as u64);
    gauge!(m::AUDIT_RECORDS).increment(added as f64);
    Ok(upto)
}

async fn admin_session(
    shared: &Arc<Shared>,
    conn: quinn::Connection,
    mut stream: FramedStream,
    first: AdminRequest,
) -> Result<(), ConnError> {
    let mut next = Some(first);
    loop {
        let req = match next.take() {
            Some(r) => r,
            None => match stream.recv::<ToController>().await {
                Ok(Some(ToController::Admin(r))) => r,
                Ok(None) => return Ok(()),
                Ok(Some(_)) => {
                    refuse(
                        &conn,
                        &mut stream,
                        ErrorCode::BAD_REQUEST,
                        "admin sessions carry admin requests only".into(),
                    )
                    .await;
                    return Ok(());
                }
                Err(e) => {
                    malformed(&conn, &e);
                    return Err(e);
                }
            },
        };
        counter!(m::ADMIN_REQUESTS_TOTAL).increment(1);
        let resp = match answer(shared, req).await {
            Ok(r) => r,
            Err(refusal) => {
                stream.send(&refusal).await?;
                continue;
            }
        };
        // Pages of a bounded size: a fleet-sized list never needs a frame
        // near the limit. Written one after the other, so at most one page
        // is encoded at a time and the stream's flow control paces us.
        let mut pages = resp
            .into_pages(piece_budget(&shared.cfg.limits))
            .into_iter()
            .peekable();
        while let Some(page) = pages.next() {
            let msg = if pages.peek().is_some() {
                ToCaller::AdminPart(page)
            } else {
                ToCaller::Admin(page)
            };
            stream.send(&msg).await?;
        }
    }
}

/// The answer to one admin request, or the error to send instead.
async fn answer(shared: &Arc<Shared>, req: AdminRequest) -> Result<AdminResponse, ToCaller> {
    let resp = match req {
        AdminRequest::ListNodes => AdminResponse::Nodes(shared.fleet().nodes()),
        AdminRequest::ListLinks => AdminResponse::Links(shared.fleet().links()),
        AdminRequest::ListChannels => AdminResponse::Channels(shared.fleet().channels()),
        AdminRequest::ListRoutes { node } => match shared.fleet().routes(&node) {
            Some(routes) => AdminResponse::Routes { node, routes },
            None => {
                return Err(ToCaller::Error {
                    code: ErrorCode::UNKNOWN_NODE,
                    reason: format!("no node {node:?} is registered"),
                });
            }
        },
        AdminRequest::Audit {
            channel,
            since_ms,
            limit,
        } => {
            let shared = Arc::clone(shared);
            let limit = limit.clamp(1, MAX_AUDIT_PAGE) as usize;
            let r = tokio::task::spawn_blocking(move || {
                shared.store.query(channel.as_deref(), since_ms, limit)
            })
            .await;
            match r {
                Ok(Ok((records, truncated))) => AdminResponse::Audit { records, truncated },
                Ok(Err(e)) => {
                    return Err(ToCaller::Error {
                        code: ErrorCode::INTERNAL,
                        reason: e.to_string(),
                    });
                }
                Err(e) => {
                    return Err(ToCaller::Error {
                        code: ErrorCode::INTERNAL,
                        reason: e.to_string(),
                    });
                }
            }
        }
    };
    Ok(resp)
}

/// Applies the fleet's decisions: expiry of departed nodes and `SetPeers`
/// pushes. Wakes on every registration change and at least once a second.
async fn push_loop(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let now = Instant::now();
        let (pushes, resyncs, hold_until, gone) = {
            let mut f = shared.fleet();
            let gone = f.handle_tick(now);
            let mut pushes = Vec::new();
            while let Some(p) = f.poll_push(now) {
                pushes.push(p);
            }
            let mut resyncs = Vec::new();
            while let Some(c) = f.poll_resync() {
                resyncs.push(c);
            }
            gauge!(m::NODES, "state" => "connected").set(f.connected_count() as f64);
            gauge!(m::NODES, "state" => "known").set(f.node_count() as f64);
            gauge!(m::LINKS_PLANNED).set(f.plan().link_count() as f64);
            gauge!(m::LINKS_UP).set(f.links_up() as f64);
            (pushes, resyncs, f.hold_until(), gone)
        };
        for id in gone {
            info!(node = %id, "node forgotten after its grace period");
        }
        for conn in resyncs {
            let slots = shared.slots();
            let Some(slot) = slots.get(&conn) else {
                continue;
            };
            counter!(m::RESYNCS_TOTAL).increment(1);
            if slot.tx.try_send(ToCaller::SendReport).is_err() {
                warn!(conn, "node does not read its controller stream; closing it");
                close(&slot.conn, ErrorCode::INTERNAL, "controller queue full");
            }
        }
        for (conn, peers) in pushes {
            let slots = shared.slots();
            let Some(slot) = slots.get(&conn) else {
                continue;
            };
            debug!(conn, peers = peers.len(), "pushing SetPeers");
            counter!(m::SET_PEERS_TOTAL).increment(1);
            if slot.tx.try_send(ToCaller::SetPeers(peers)).is_err() {
                // It stopped reading; on reconnect it gets a full push.
                warn!(conn, "node does not read its controller stream; closing it");
                close(&slot.conn, ErrorCode::INTERNAL, "controller queue full");
            }
        }
        let wait = if hold_until > now {
            (hold_until - now).min(Duration::from_secs(1))
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}
