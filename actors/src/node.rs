//! The node supervisor and the handle used to start and stop a node, from the
//! `slim-node` binary or inside a test.

use parking_lot::RwLock;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use metrics::{counter, gauge};
use quinn::crypto::rustls::QuicServerConfig;
use std::collections::HashMap;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use slim_auth::policy::Policy;
use slim_auth::{IdentitySource, JwtBundles, SpiffeClientVerifier};
use slim_framed::datagrams::Path;
use tokio::sync::{broadcast, watch};
use tracing::{debug, error, info, warn};

use crate::config::{JwtKeys, NodeConfig, ResetKey};
use crate::ctx::{HotMetrics, NodeCtx, endpoint_config, transport_config};
use crate::fed::shared::{Fed, FedMsg};
use crate::listener::ListenerActor;
use crate::metrics as m;
use crate::registry::Registry;
use crate::table::TableActor;
use crate::types::{ConnStats, LinkInfo, NodeEvent, PeerSpec, RouteInfo, TlsIdentity};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start actor: {0}")]
    Spawn(String),
}

/// The node supervisor's children, each with its restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChildKind {
    /// The subscription-table actor: restarted whenever it ends unasked
    /// (its state lives in the registry, so the new one resumes from it).
    Table,
    /// The federation actor: restarted unless the node is shutting down;
    /// link actors of the previous incarnation end on their own.
    Federation,
    /// The QUIC listener: restarted unless the node is shutting down.
    Listener,
}

impl ChildKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChildKind::Table => "table",
            ChildKind::Federation => "federation",
            ChildKind::Listener => "listener",
        }
    }

    /// Whether a child of this kind that ended unasked is started again.
    fn restart(self, shutting_down: bool) -> bool {
        match self {
            ChildKind::Table => true,
            ChildKind::Federation | ChildKind::Listener => !shutting_down,
        }
    }
}

/// The stop reason `NodeHandle::shutdown` gives its actors.
const SHUTDOWN_REASON: &str = "shutdown";

pub(crate) enum SupMsg {
    /// The current child of each kind.
    Children(RpcReplyPort<Vec<(ChildKind, ractor::ActorCell)>>),
}

struct NodeSupervisor;

struct SupState {
    ctx: Arc<NodeCtx>,
    children: HashMap<ActorId, (ChildKind, ractor::ActorCell)>,
}

impl SupState {
    async fn start(
        &mut self,
        kind: ChildKind,
        myself: &ActorRef<SupMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let ctx = &self.ctx;
        let name = format!("{}-{}", ctx.tag, kind.as_str());
        let cell = match kind {
            ChildKind::Table => spawn_table(ctx, myself, name).await?,
            ChildKind::Federation => crate::fed::actor::spawn(ctx, myself.get_cell(), name).await?,
            ChildKind::Listener => Actor::spawn_linked(
                Some(name),
                ListenerActor,
                Arc::clone(ctx),
                myself.get_cell(),
            )
            .await?
            .0
            .get_cell(),
        };
        self.children.insert(cell.get_id(), (kind, cell));
        Ok(())
    }
}

impl Actor for NodeSupervisor {
    type Msg = SupMsg;
    type State = SupState;
    type Arguments = Arc<NodeCtx>;

    async fn pre_start(
        &self,
        myself: ActorRef<SupMsg>,
        ctx: Arc<NodeCtx>,
    ) -> Result<SupState, ActorProcessingErr> {
        let mut st = SupState {
            ctx,
            children: HashMap::new(),
        };
        // The table first: the listener's connections register through it.
        for kind in [ChildKind::Table, ChildKind::Federation, ChildKind::Listener] {
            st.start(kind, &myself).await?;
        }
        Ok(st)
    }

    async fn handle(
        &self,
        _myself: ActorRef<SupMsg>,
        msg: SupMsg,
        st: &mut SupState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupMsg::Children(reply) => {
                let _ = reply.send(st.children.values().cloned().collect());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupMsg>,
        evt: SupervisionEvent,
        st: &mut SupState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        let Some((kind, _)) = st.children.remove(&cell.get_id()) else {
            return Ok(());
        };
        let shutting_down = st.ctx.is_shutting_down();
        // `NodeHandle::shutdown` stops every child with this reason once the
        // drain is over: the end of a clean shutdown, not a fault to restart
        // (and log as an error) — the table is restarted during the drain.
        if shutting_down && why == SHUTDOWN_REASON {
            debug!(actor = kind.as_str(), "child actor stopped for shutdown");
            return Ok(());
        }
        // Children stop on purpose only at shutdown; anything else is a fault.
        if kind.restart(shutting_down) {
            error!(actor = kind.as_str(), reason = %why, "child actor ended; restarting");
            counter!(m::ACTOR_RESTARTS_TOTAL, "actor" => kind.as_str()).increment(1);
            st.start(kind, &myself).await?;
            if kind == ChildKind::Table
                && let Some(fed) = st.ctx.fed.actor()
            {
                let _ = fed.send_message(crate::fed::shared::FedMsg::ResyncRoutes);
            }
        }
        Ok(())
    }
}

async fn spawn_table(
    ctx: &Arc<NodeCtx>,
    sup: &ActorRef<SupMsg>,
    name: String,
) -> Result<ractor::ActorCell, ActorProcessingErr> {
    // Weak: the table actor must not keep the node's context alive.
    let weak = Arc::downgrade(ctx);
    let on_local: crate::table::LocalInterestHook = Arc::new(move |names| {
        if let Some(ctx) = weak.upgrade() {
            ctx.fed.local_changed(names);
        }
    });
    let (table, _) = Actor::spawn_linked(
        Some(name),
        TableActor,
        (Arc::clone(&ctx.registry), on_local),
        sup.get_cell(),
    )
    .await?;
    let cell = table.get_cell();
    *ctx.table.write() = Some(table);
    Ok(cell)
}

fn unix_seconds(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Exports the node's own SVID expiry and counts rotations.
async fn watch_svid(ctx: Arc<NodeCtx>, src: IdentitySource) {
    let mut rx = src.subscribe();
    let mut shutdown = ctx.shutdown_rx();
    gauge!(m::SVID_EXPIRY_SECONDS).set(unix_seconds(rx.borrow_and_update().not_after));
    loop {
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
        let id = Arc::clone(&rx.borrow_and_update());
        counter!(m::SVID_ROTATIONS_TOTAL).increment(1);
        gauge!(m::SVID_EXPIRY_SECONDS).set(unix_seconds(id.not_after));
        info!(spiffe_id = %id.spiffe_id, "node SVID rotated; new handshakes use it");
    }
}

static INSTANCES: AtomicU64 = AtomicU64::new(0);

/// A running node.
pub struct NodeHandle {
    ctx: Arc<NodeCtx>,
    supervisor: ActorRef<SupMsg>,
    shutdown_tx: watch::Sender<bool>,
    join: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("node_id", &self.ctx.cfg.node_id)
            .finish()
    }
}

fn tls_config(
    cfg: &NodeConfig,
    identity: &TlsIdentity,
    refusals: Arc<DashMap<&'static str, u64>>,
    log: Arc<crate::logthrottle::LogThrottle>,
) -> Result<rustls::ServerConfig, NodeError> {
    let bundles = match identity {
        TlsIdentity::Static(i) => Arc::new(std::sync::RwLock::new(i.bundles.clone())),
        TlsIdentity::Source(s) => s.shared_bundles(),
    };
    let hook: slim_auth::verify::RejectHook = Arc::new(move |e: &slim_auth::SvidError| {
        let reason = e.reason_code();
        *refusals.entry(reason).or_insert(0) += 1;
        counter!(m::HANDSHAKE_REFUSALS_TOTAL, "reason" => reason).increment(1);
        if log.note(crate::logthrottle::Kind::Credentials, reason) {
            info!(reason, error = %e, "client SVID rejected (first of its kind in this window; the rest are summed up)");
        }
    });
    let mut verifier = SpiffeClientVerifier::new(bundles).with_reject_hook(hook);
    if cfg.token_auth.enabled() {
        verifier = verifier.with_optional_client_auth();
    }
    let alpn: &[&[u8]] = &[slim_auth::ALPN_SLIM];
    match identity {
        TlsIdentity::Static(i) => {
            slim_auth::tls::server_config_with_verifier(i, alpn, Arc::new(verifier))
        }
        TlsIdentity::Source(s) => {
            slim_auth::tls::server_config_from_source_with_verifier(s, alpn, Arc::new(verifier))
        }
    }
    .map_err(|e| NodeError::Tls(e.to_string()))
}

/// Keeps the JWT-SVID validation keys fresh when they come from the Workload API.
async fn refresh_jwt_keys(ctx: Arc<NodeCtx>, source: IdentitySource) {
    let mut shutdown = ctx.shutdown_rx();
    loop {
        match source.jwt_bundles().await {
            Ok(b) => *ctx.jwt_keys.write() = b,
            Err(e) => warn!(error = %e, "cannot fetch JWT bundles; keeping the previous ones"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Reloads the JWT bundle file when it changes. A file that does not parse
/// (or is mid-write) keeps the previous keys, and the log says why.
async fn reload_jwt_bundle_file(
    ctx: Arc<NodeCtx>,
    mut watch: slim_auth::watch::FileWatch,
    default_trust_domain: String,
) {
    let mut shutdown = ctx.shutdown_rx();
    loop {
        tokio::select! {
            _ = watch.changed() => {}
            _ = shutdown.changed() => return,
        }
        match JwtBundles::from_json_file(watch.path(), &default_trust_domain) {
            Ok(b) => {
                let trust_domains: Vec<String> = b.trust_domains().map(str::to_owned).collect();
                info!(file = %watch.path().display(), ?trust_domains, "JWT bundle file changed; reloaded");
                *ctx.jwt_keys.write() = b;
            }
            Err(e) => {
                warn!(file = %watch.path().display(), error = %e, "JWT bundle reload failed; keeping the previous keys")
            }
        }
    }
}

/// Binds the node's UDP socket with large kernel buffers: with the default
/// (~208 KiB) a burst of handshakes or of 1 KiB messages overflows the receive
/// queue and costs retransmissions (QUIC's first handshake retransmit waits 1 s).
pub fn bind_udp(addr: SocketAddr, buffer: usize) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        let _ = sock.set_only_v6(false);
    }
    if buffer > 0 {
        let _ = sock.set_recv_buffer_size(buffer);
        let _ = sock.set_send_buffer_size(buffer);
        // Linux reports twice what was granted; the cap is net.core.rmem_max.
        if let Ok(got) = sock.recv_buffer_size()
            && got / 2 < buffer
        {
            warn!(
                requested = buffer,
                granted = got / 2,
                "UDP receive buffer capped by the kernel; raise it with `sysctl -w net.core.rmem_max={buffer} net.core.wmem_max={buffer}`"
            );
        }
    }
    sock.bind(&addr.into())?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

/// The secret of the node's stateless resets, and a log line saying where
/// it came from (whether a restart will be noticed at once depends on it).
fn reset_secret(cfg: &NodeConfig, identity: &TlsIdentity) -> slim_auth::ResetSecret {
    let secret = match &cfg.reset_key {
        ResetKey::Secret(s) => s.clone(),
        ResetKey::FromTlsKey => match identity {
            TlsIdentity::Static(i) => slim_auth::ResetSecret::from_tls_key(&i.key),
            TlsIdentity::Source(s) => slim_auth::ResetSecret::from_tls_key(&s.current().key),
        },
    };
    match (secret.origin(), identity) {
        (slim_auth::ResetSecretOrigin::TlsKey, TlsIdentity::Source(_)) => info!(
            node = %cfg.node_id,
            source = %secret.origin(),
            "QUIC stateless reset key: survives a restart until the SVID's key rotates; set node.reset_key_file for one that always does"
        ),
        _ => info!(node = %cfg.node_id, source = %secret.origin(), "QUIC stateless reset key"),
    }
    secret
}

/// Connection attempts quinn may queue for the listener (see `start`).
const MAX_INCOMING: usize = 4096;

/// Starts a node: binds its QUIC endpoint and its actor tree.
pub async fn start(
    cfg: NodeConfig,
    identity: impl Into<TlsIdentity>,
) -> Result<NodeHandle, NodeError> {
    let identity = identity.into();
    let refusals = Arc::new(DashMap::new());
    let log = Arc::new(crate::logthrottle::LogThrottle::new());
    let tls = tls_config(&cfg, &identity, Arc::clone(&refusals), Arc::clone(&log))?;
    if cfg.token_auth.shared_secret.is_some() {
        warn!("INSECURE: shared-secret client authentication is enabled (development only)");
    }
    let quic =
        QuicServerConfig::try_from(Arc::new(tls)).map_err(|e| NodeError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    for (what, ceiling) in [
        ("client connections", cfg.max_udp_payload),
        ("peer links", cfg.federation.max_udp_payload),
    ] {
        if !slim_framed::datagrams::gso_allowed(ceiling) {
            info!(
                max_udp_payload = ceiling,
                "UDP segmentation offload is off on {what}: their datagrams may grow to {ceiling} bytes, and above {} quinn's batches of 10 would exceed what one UDP send can carry (the kernel refuses them)",
                slim_framed::datagrams::MAX_GSO_UDP_PAYLOAD
            );
        }
    }
    let accepted = |path| {
        let mut t = transport_config(&cfg, cfg.max_udp_payload, path);
        // Before its hello a client may be anyone: it gets a small connection
        // flow-control window (raised in `accept` once the hello is read), so
        // that a stalled connection cannot park megabytes in unread streams.
        t.receive_window(crate::accept::PRE_HELLO_RECEIVE_WINDOW.into());
        Arc::new(t)
    };
    // quinn queues attempts the listener has not decided yet (up to 65,536
    // and 100 MiB of their datagrams by default) and beyond that ignores
    // new Initials unseen by any metric. The listener decides each attempt
    // at once, but a burst arrives faster than one task runs: 4,096 queued
    // attempts ride out bursts of a few thousand datagrams while bounding
    // what the queue holds to 16 MiB.
    server
        .max_incoming(MAX_INCOMING)
        .incoming_buffer_size(64 << 10)
        .incoming_buffer_size_total((MAX_INCOMING as u64) * (4 << 10));
    // quinn takes an accepted connection's transport settings from its
    // server config; the listener picks this one for peers on this host.
    let mut loopback_server = server.clone();
    loopback_server.transport_config(accepted(Path::Loopback));
    server.transport_config(accepted(Path::Network));
    let bind_err = |source| NodeError::Bind {
        addr: cfg.listen,
        source,
    };
    let socket = bind_udp(cfg.listen, cfg.udp_buffer_bytes).map_err(bind_err)?;
    let reset = reset_secret(&cfg, &identity);
    let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
    let socket = crate::udp::CountingSocket::new(
        runtime.wrap_udp_socket(socket).map_err(bind_err)?,
        reset.cid_key(),
    );
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        // What peers may send us: a client up to the client ceiling, a peer
        // node up to the link one (anyone on this host: `accept_up_to`).
        endpoint_config(
            &reset,
            cfg.max_udp_payload.max(cfg.federation.max_udp_payload),
        ),
        Some(server),
        Arc::new(socket),
        runtime,
    )
    .map_err(bind_err)?;
    let (shutdown_tx, shutdown) = watch::channel(false);
    let ctx = Arc::new(NodeCtx {
        registry: Arc::new(Registry::new()),
        endpoint,
        loopback_server: Arc::new(loopback_server),
        conns: DashMap::new(),
        hot: HotMetrics::new(),
        table: RwLock::new(None),
        next_id: AtomicU64::new(1),
        shutdown,
        drain: RwLock::new(Duration::from_secs(5)),
        slow_disconnects: AtomicU64::new(0),
        refusals,
        jwt_keys: RwLock::new(match cfg.token_auth.jwt.as_ref().map(|j| &j.keys) {
            Some(JwtKeys::Static(b)) => b.clone(),
            Some(JwtKeys::File { initial, .. }) => initial.clone(),
            _ => JwtBundles::new(),
        }),
        node_identity: identity.clone(),
        policy: RwLock::new(Arc::new(cfg.policy.clone())),
        policy_gen: AtomicU64::new(0),
        hook: RwLock::new(None),
        hook_set: std::sync::atomic::AtomicBool::new(false),
        fed: Fed::new(&cfg.node_id),
        handshakes: std::sync::atomic::AtomicUsize::new(0),
        send_window: std::sync::atomic::AtomicU64::new(crate::sendbudget::MAX_WINDOW),
        source_handshakes: DashMap::new(),
        partial_bytes: std::sync::atomic::AtomicUsize::new(0),
        overflow: Arc::new(crate::outbox::Overflow::new(cfg.overflow_bytes)),
        log,
        tag: format!(
            "{}#{}",
            cfg.node_id,
            INSTANCES.fetch_add(1, Ordering::Relaxed)
        ),
        cfg,
    });
    let (supervisor, join) = Actor::spawn(
        Some(format!("{}-supervisor", ctx.tag)),
        NodeSupervisor,
        Arc::clone(&ctx),
    )
    .await
    .map_err(|e| NodeError::Spawn(e.to_string()))?;
    if ctx.cfg.policy.is_allow_all() {
        warn!(node = %ctx.cfg.node_id, "authorization policy: ALLOW ALL (development only; configure [authz] for production)");
    }
    tokio::spawn(crate::gauges::sample(Arc::clone(&ctx)));
    tokio::spawn(crate::sendbudget::run(Arc::clone(&ctx)));
    tokio::spawn(Arc::clone(&ctx.log).run(ctx.shutdown_rx()));
    if let TlsIdentity::Source(src) = &ctx.node_identity {
        tokio::spawn(watch_svid(Arc::clone(&ctx), src.clone()));
    } else if let TlsIdentity::Static(i) = &ctx.node_identity {
        gauge!(m::SVID_EXPIRY_SECONDS).set(unix_seconds(i.not_after));
    }
    match ctx.cfg.token_auth.jwt.as_ref().map(|j| &j.keys) {
        Some(JwtKeys::Source(src)) => {
            tokio::spawn(refresh_jwt_keys(Arc::clone(&ctx), src.clone()));
        }
        Some(JwtKeys::File {
            path,
            default_trust_domain,
            ..
        }) => {
            // Set up before `start` returns, so a change made right after is seen.
            let watch = slim_auth::watch::FileWatch::new(
                path,
                "JWT bundle",
                slim_auth::watch::DEFAULT_DEBOUNCE,
            );
            tokio::spawn(reload_jwt_bundle_file(
                Arc::clone(&ctx),
                watch,
                default_trust_domain.clone(),
            ));
        }
        _ => {}
    }
    info!(node = %ctx.cfg.node_id, addr = %ctx.endpoint.local_addr().map(|a| a.to_string()).unwrap_or_default(), "node listening");
    Ok(NodeHandle {
        ctx,
        supervisor,
        shutdown_tx,
        join,
    })
}

impl NodeHandle {
    fn ctx(&self) -> &Arc<NodeCtx> {
        &self.ctx
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.ctx
            .endpoint
            .local_addr()
            .expect("a bound endpoint has an address")
    }

    /// The supervisor's children that are running now, by kind (all three
    /// on a healthy node; one missing while it is being restarted).
    pub async fn children(&self) -> Vec<ChildKind> {
        let mut v: Vec<ChildKind> = ractor::call!(self.supervisor, SupMsg::Children)
            .map(|c| c.into_iter().map(|(k, _)| k).collect())
            .unwrap_or_default();
        v.sort_by_key(|k| k.as_str());
        v
    }

    pub fn node_id(&self) -> &str {
        &self.ctx.cfg.node_id
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.ctx.registry
    }

    pub fn connection_count(&self) -> usize {
        self.ctx.conns.len()
    }

    /// Installs (or clears) a hook called for every publish this node routes:
    /// tests record what the node sees and inject frame-level loss with it.
    pub fn set_route_hook(&self, hook: Option<crate::RouteHook>) {
        let set = hook.is_some();
        *self.ctx.hook.write() = hook;
        self.ctx.hook_set.store(set, Ordering::Release);
    }

    /// The QUIC send window each client connection has now: the node's send
    /// budget shared by the connections receiving at once
    /// ([`crate::sendbudget`]).
    pub fn send_window(&self) -> u64 {
        self.ctx.send_window.load(Ordering::Relaxed)
    }

    /// Replaces the authorization policy. Publishes are checked against it
    /// from their next one; each connection's task re-checks what it holds:
    /// a connection whose identity may no longer register its name is
    /// closed, subscriptions no longer allowed are removed and the client
    /// gets an `Error{UNAUTHORIZED}` naming each (counted in
    /// `slim_policy_revocations_total`).
    pub fn set_policy(&self, policy: Policy) {
        if policy.is_allow_all() {
            warn!("authorization policy: ALLOW ALL (development only)");
        }
        *self.ctx.policy.write() = Arc::new(policy);
        self.ctx.policy_gen.fetch_add(1, Ordering::AcqRel);
        // Publishes pick the new grants up on their own (the reader checks
        // the generation); what connections already hold, each connection's
        // task re-checks (told without waiting: see `ConnShared::policy_changed`).
        for c in self.ctx.conns.iter() {
            c.policy_changed();
        }
        info!("authorization policy updated");
    }

    /// Client certificates refused at the handshake, by reason code
    /// (`expired`, `untrusted_issuer`, `ca_as_leaf`, …).
    pub fn handshake_refusals(&self) -> std::collections::BTreeMap<String, u64> {
        self.ctx
            .refusals
            .iter()
            .map(|e| (e.key().to_string(), *e.value()))
            .collect()
    }

    /// Connections between their first Initial and their hello now.
    pub fn handshakes_in_progress(&self) -> usize {
        self.ctx.handshakes.load(Ordering::Relaxed)
    }

    /// Bytes held in incomplete large frames across all connections.
    pub fn partial_frame_bytes(&self) -> usize {
        self.ctx.partial_bytes.load(Ordering::Relaxed)
    }

    /// The QUIC endpoint's own count of handshakes accepted, refused and
    /// ignored (what the listener decided for each attempt).
    pub fn endpoint_stats(&self) -> quinn::EndpointStats {
        self.ctx.endpoint.stats()
    }

    /// Connections closed by the disconnect slow-consumer policy.
    pub fn slow_consumer_disconnects(&self) -> u64 {
        self.ctx.slow_disconnects.load(Ordering::Relaxed)
    }

    /// Bytes client outboxes hold beyond their caps now, of
    /// `NodeConfig::overflow_bytes`.
    pub fn overflow_bytes(&self) -> usize {
        self.ctx.overflow.used()
    }

    pub fn connections(&self) -> Vec<ConnStats> {
        self.ctx
            .conns
            .iter()
            .map(|c| ConnStats {
                id: c.id,
                name: c.name.to_string(),
                identity: c.identity().map(str::to_owned),
                queued_bytes: c.outbox.queued_bytes(),
                max_queued_bytes: c.outbox.max_bytes(),
                overflow_bytes: c.outbox.borrowed(),
                dropped: c.outbox.dropped(),
                waited: c.outbox.waits(),
                slow: c.outbox.is_slow(),
                direct: c.outbox.direct_writes(),
                carried: c.outbox.carried(),
            })
            .collect()
    }

    /// Stops accepting, lets every connection's writer drain its queue for up
    /// to `deadline`, then closes everything.
    pub async fn shutdown(self, deadline: Duration) {
        *self.ctx.drain.write() = deadline;
        let _ = self.shutdown_tx.send(true);
        self.ctx.endpoint.set_server_config(None);
        let wait = async {
            while !self.ctx.conns.is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        if tokio::time::timeout(deadline, wait).await.is_err() {
            warn!(
                remaining = self.ctx.conns.len(),
                "shutdown deadline reached with connections still draining"
            );
        }
        self.ctx.endpoint.close(
            quinn::VarInt::from_u32(slim_wire::ErrorCode::SHUTTING_DOWN.0 as u32),
            b"node shutting down",
        );
        // Children first (listener, table, and the listener's connections),
        // so nothing is left holding the endpoint.
        for child in self.supervisor.get_children() {
            child
                .stop_children_and_wait(Some(SHUTDOWN_REASON.into()), Some(Duration::from_secs(2)))
                .await;
        }
        self.supervisor
            .stop_children_and_wait(Some(SHUTDOWN_REASON.into()), Some(Duration::from_secs(2)))
            .await;
        self.supervisor.stop(Some(SHUTDOWN_REASON.into()));
        let _ = tokio::time::timeout(Duration::from_secs(2), self.join).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ctx.endpoint.wait_idle()).await;
        info!(node = %self.ctx.cfg.node_id, "node stopped");
    }
}

impl NodeHandle {
    /// Sets the dialled peers wanted in addition to the static ones
    /// (idempotent): links to peers not in the set are closed, new ones are
    /// dialled, with backoff and jitter, until removed.
    pub fn set_dial_peers(&self, peers: Vec<PeerSpec>) {
        match self.ctx().fed.actor() {
            Some(a) => {
                if a.send_message(FedMsg::SetDialPeers(peers)).is_err() {
                    warn!("federation actor gone; dial peers not applied");
                }
            }
            None => warn!("federation actor not running; dial peers not applied"),
        }
    }

    /// The largest UDP payload each live QUIC path currently uses (what
    /// path-MTU discovery reached so far, up to
    /// [`NodeConfig::max_udp_payload`]): `("client", name)` per client
    /// connection and `("link", peer node id)` per live peer link.
    pub fn path_mtus(&self) -> Vec<(&'static str, String, u16)> {
        self.paths(|s| s.path.current_mtu)
    }

    /// Packets QUIC declared lost on each live path this node sends on
    /// (same keys as [`NodeHandle::path_mtus`]). On loopback nothing should
    /// be lost: a count there means datagrams were dropped on the way out.
    pub fn path_lost_packets(&self) -> Vec<(&'static str, String, u64)> {
        self.paths(|s| s.path.lost_packets)
    }

    fn paths<T>(&self, f: impl Fn(&quinn::ConnectionStats) -> T) -> Vec<(&'static str, String, T)> {
        let mut v = Vec::new();
        self.ctx()
            .for_each_path(|kind, who, s| v.push((kind.label(), who.to_string(), f(s))));
        v
    }

    /// Every link: dialled ones (also while connecting or backing off) and
    /// accepted ones.
    pub fn links(&self) -> Vec<LinkInfo> {
        let mut v: Vec<LinkInfo> = self
            .ctx()
            .fed
            .links
            .iter()
            .map(|l| l.value().info(*l.key()))
            .collect();
        v.sort_by(|a, b| {
            a.peer_node_id
                .cmp(&b.peer_node_id)
                .then(a.link_id.cmp(&b.link_id))
        });
        v
    }

    /// Every name with local subscribers or remote interest, as the
    /// routing path sees it (the registry, not the interest table).
    pub fn routes(&self) -> Vec<RouteInfo> {
        let mut v: Vec<RouteInfo> = self
            .ctx()
            .registry
            .route_summary()
            .into_iter()
            .map(|(name, local, remote)| RouteInfo {
                name: name.to_string(),
                local_subscribers: local,
                remote_peers: remote.iter().map(|o| o.to_string()).collect(),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Node events (clients, subscriptions, links). Bounded (1024): a lagging
    /// receiver gets `Lagged` and should resync from `routes()`/`links()`.
    pub fn subscribe_events(&self) -> broadcast::Receiver<NodeEvent> {
        self.ctx().fed.events.subscribe()
    }
}

/// Fault injection, for tests only (feature `test-util`).
#[cfg(feature = "test-util")]
mod faults;
#[cfg(feature = "test-util")]
pub use faults::Victim;
