//! The node supervisor and the handle used to start and stop a node, from the
//! `slim-node` binary or inside a test.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use dashmap::DashMap;
use metrics::{Counter, Histogram, counter, gauge, histogram};
use quinn::crypto::rustls::QuicServerConfig;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use slim_auth::policy::Policy;
use slim_auth::{Identity, IdentitySource, JwtBundles, SpiffeClientVerifier};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::{JwtKeys, NodeConfig};
use crate::conn::ConnShared;
use crate::listener::ListenerActor;
use crate::metrics as m;
use crate::registry::{ConnId, Registry};
use crate::table::{TableActor, TableMsg};

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

/// Counter handles resolved once, so the per-message path never looks up a
/// metric by name.
pub(crate) struct HotMetrics {
    pub frames_in: Counter,
    pub routed: [Counter; 3],
    pub deliveries: Counter,
    pub no_route: Counter,
    pub slow_consumer: Counter,
    pub unauthorized: Counter,
    pub routing_seconds: Histogram,
    pub enqueue_to_write_seconds: Histogram,
    pub frames_out: Counter,
}

impl HotMetrics {
    fn new() -> Self {
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
            unauthorized: counter!(m::MESSAGES_DROPPED_TOTAL, "reason" => "unauthorized"),
            routing_seconds: histogram!(m::ROUTING_SECONDS),
            enqueue_to_write_seconds: histogram!(m::ENQUEUE_TO_WRITE_SECONDS),
            frames_out: counter!(m::FRAMES_OUT_TOTAL, "kind" => "client"),
        }
    }
}

/// What every actor and task of one node shares.
pub struct NodeCtx {
    pub cfg: NodeConfig,
    /// Unique per node instance in this process: ractor actor names are
    /// process-global, and tests run several nodes in one process.
    tag: String,
    pub registry: Arc<Registry>,
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) conns: DashMap<ConnId, Arc<ConnShared>>,
    pub(crate) hot: HotMetrics,
    table: RwLock<Option<ActorRef<TableMsg>>>,
    next_id: AtomicU64,
    shutdown: watch::Receiver<bool>,
    drain: RwLock<Duration>,
    slow_disconnects: AtomicU64,
    /// Client SVIDs refused at the handshake, by reason.
    refusals: Arc<DashMap<&'static str, u64>>,
    pub(crate) jwt_keys: RwLock<JwtBundles>,
    /// The node's own credentials (its source lives as long as the node).
    node_identity: TlsIdentity,
    policy: RwLock<Arc<Policy>>,
    /// Bumped on every policy change so connections refresh their grants.
    policy_gen: AtomicU64,
    /// Test/diagnostic hook on the routing path; `hook_set` lets the hot path
    /// skip the lock when there is none.
    hook: RwLock<Option<crate::RouteHook>>,
    pub(crate) hook_set: std::sync::atomic::AtomicBool,
    pub(crate) fed: crate::federation::Fed,
}

impl NodeCtx {
    pub(crate) fn next_conn_id(&self) -> ConnId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn table(&self) -> ActorRef<TableMsg> {
        self.table
            .read()
            .unwrap_or_else(|e| e.into_inner())
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
        let p = Arc::clone(&self.policy.read().unwrap_or_else(|e| e.into_inner()));
        (p, self.policy_gen.load(Ordering::Acquire))
    }

    pub(crate) fn policy_gen(&self) -> u64 {
        self.policy_gen.load(Ordering::Acquire)
    }

    pub(crate) fn route_hook(&self) -> Option<crate::RouteHook> {
        if !self.hook_set.load(Ordering::Acquire) {
            return None;
        }
        self.hook.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn node_identity(&self) -> &TlsIdentity {
        &self.node_identity
    }

    pub(crate) fn drain_deadline(&self) -> Duration {
        *self.drain.read().unwrap_or_else(|e| e.into_inner())
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
        if t.link_drops > 0 {
            counter!(m::LINK_DROPS_TOTAL, "reason" => "queue_full")
                .increment(std::mem::take(&mut t.link_drops));
        }
    }

    /// Closes connection `conn` (slow-consumer policy).
    pub(crate) fn disconnect_slow(&self, conn: ConnId) {
        let victim = self.conns.get(&conn).map(|c| Arc::clone(c.value()));
        if let Some(c) = victim {
            self.slow_disconnects.fetch_add(1, Ordering::Relaxed);
            counter!(m::SLOW_CONSUMER_EVENTS_TOTAL, "action" => "disconnect").increment(1);
            warn!(conn = c.id, name = %c.name, "slow consumer disconnected");
            c.conn.close(
                quinn::VarInt::from_u32(slim_wire::ErrorCode::SLOW_CONSUMER.0 as u32),
                b"slow consumer: outbound queue stayed full",
            );
        }
    }
}

/// A snapshot of one client connection, for admin views and tests.
#[derive(Debug, Clone)]
pub struct ConnStats {
    pub id: ConnId,
    pub name: String,
    pub identity: Option<String>,
    pub queued_bytes: usize,
    pub max_queued_bytes: usize,
    pub dropped: u64,
}

enum SupMsg {}

struct NodeSupervisor;

struct SupState {
    ctx: Arc<NodeCtx>,
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
        spawn_table(&ctx, &myself).await?;
        crate::federation::spawn(&ctx, myself.get_cell(), format!("{}-federation", ctx.tag))
            .await?;
        Actor::spawn_linked(
            Some(format!("{}-listener", ctx.tag)),
            ListenerActor,
            Arc::clone(&ctx),
            myself.get_cell(),
        )
        .await?;
        Ok(SupState { ctx })
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupMsg>,
        evt: SupervisionEvent,
        st: &mut SupState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, err) = evt {
            let name = cell.get_name().unwrap_or_default();
            error!(actor = %name, error = %err, "child actor failed; restarting");
            if name.ends_with("-table") {
                counter!(m::ACTOR_RESTARTS_TOTAL, "actor" => "table").increment(1);
                spawn_table(&st.ctx, &myself).await?;
            } else if name.ends_with("-federation") && !st.ctx.is_shutting_down() {
                counter!(m::ACTOR_RESTARTS_TOTAL, "actor" => "federation").increment(1);
                crate::federation::spawn(&st.ctx, myself.get_cell(), name).await?;
            } else if name.ends_with("-listener") && !st.ctx.is_shutting_down() {
                counter!(m::ACTOR_RESTARTS_TOTAL, "actor" => "listener").increment(1);
                Actor::spawn_linked(
                    Some(name),
                    ListenerActor,
                    Arc::clone(&st.ctx),
                    myself.get_cell(),
                )
                .await?;
            }
        }
        Ok(())
    }
}

async fn spawn_table(ctx: &Arc<NodeCtx>, sup: &ActorRef<SupMsg>) -> Result<(), ActorProcessingErr> {
    // Weak: the table actor must not keep the node's context alive.
    let weak = Arc::downgrade(ctx);
    let on_local: crate::table::LocalInterestHook = Arc::new(move |names| {
        if let Some(ctx) = weak.upgrade() {
            ctx.fed.local_changed(names);
        }
    });
    let (table, _) = Actor::spawn_linked(
        Some(format!("{}-table", ctx.tag)),
        TableActor,
        (Arc::clone(&ctx.registry), on_local),
        sup.get_cell(),
    )
    .await?;
    *ctx.table.write().unwrap_or_else(|e| e.into_inner()) = Some(table);
    Ok(())
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

/// Gauges that are cheaper to sample than to maintain per message.
async fn sample_gauges(ctx: Arc<NodeCtx>) {
    let mut shutdown = ctx.shutdown_rx();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let (mut total, mut max) = (0usize, 0usize);
        for c in ctx.conns.iter() {
            let q = c.outbox.queued_bytes();
            total += q;
            max = max.max(q);
        }
        gauge!(m::QUEUE_BYTES).set(total as f64);
        gauge!(m::QUEUE_BYTES_MAX).set(max as f64);
        m::registry_gauges(&ctx.registry);
        crate::federation::sample_gauges(&ctx);
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

/// QUIC transport settings shared by the node's endpoint.
pub fn transport_config(cfg: &NodeConfig) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(4u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .keep_alive_interval(Some(cfg.keep_alive))
        .stream_receive_window((2u32 << 20).into())
        .receive_window((4u32 << 20).into())
        .send_window(2 << 20)
        // SLIM uses one stream per connection and no QUIC datagrams; not
        // negotiating them keeps per-connection state small.
        .datagram_receive_buffer_size(None)
        .datagram_send_buffer_size(0);
    if let Ok(idle) = quinn::IdleTimeout::try_from(cfg.idle_timeout) {
        t.max_idle_timeout(Some(idle));
    }
    t
}

/// The node's own credentials: a fixed SVID, or a source that rotates.
#[derive(Clone)]
pub enum TlsIdentity {
    Static(Identity),
    Source(IdentitySource),
}

impl From<&Identity> for TlsIdentity {
    fn from(i: &Identity) -> Self {
        TlsIdentity::Static(i.clone())
    }
}

impl From<&IdentitySource> for TlsIdentity {
    fn from(s: &IdentitySource) -> Self {
        TlsIdentity::Source(s.clone())
    }
}

fn tls_config(
    cfg: &NodeConfig,
    identity: &TlsIdentity,
    refusals: Arc<DashMap<&'static str, u64>>,
) -> Result<rustls::ServerConfig, NodeError> {
    let bundles = match identity {
        TlsIdentity::Static(i) => Arc::new(RwLock::new(i.bundles.clone())),
        TlsIdentity::Source(s) => s.shared_bundles(),
    };
    let hook: slim_auth::verify::RejectHook = Arc::new(move |e: &slim_auth::SvidError| {
        let reason = e.reason_code();
        *refusals.entry(reason).or_insert(0) += 1;
        counter!(m::HANDSHAKE_REFUSALS_TOTAL, "reason" => reason).increment(1);
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
            Ok(b) => *ctx.jwt_keys.write().unwrap_or_else(|e| e.into_inner()) = b,
            Err(e) => warn!(error = %e, "cannot fetch JWT bundles; keeping the previous ones"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = shutdown.changed() => return,
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

/// Starts a node: binds its QUIC endpoint and its actor tree.
pub async fn start(
    cfg: NodeConfig,
    identity: impl Into<TlsIdentity>,
) -> Result<NodeHandle, NodeError> {
    let identity = identity.into();
    let refusals = Arc::new(DashMap::new());
    let tls = tls_config(&cfg, &identity, Arc::clone(&refusals))?;
    if cfg.token_auth.shared_secret.is_some() {
        warn!("INSECURE: shared-secret client authentication is enabled (development only)");
    }
    let quic =
        QuicServerConfig::try_from(Arc::new(tls)).map_err(|e| NodeError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(Arc::new(transport_config(&cfg)));
    let socket = bind_udp(cfg.listen, cfg.udp_buffer_bytes).map_err(|source| NodeError::Bind {
        addr: cfg.listen,
        source,
    })?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| NodeError::Bind {
        addr: cfg.listen,
        source,
    })?;
    let (shutdown_tx, shutdown) = watch::channel(false);
    let ctx = Arc::new(NodeCtx {
        registry: Arc::new(Registry::new()),
        endpoint,
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
            _ => JwtBundles::new(),
        }),
        node_identity: identity.clone(),
        policy: RwLock::new(Arc::new(cfg.policy.clone())),
        policy_gen: AtomicU64::new(0),
        hook: RwLock::new(None),
        hook_set: std::sync::atomic::AtomicBool::new(false),
        fed: crate::federation::Fed::new(&cfg.node_id, cfg.federation.max_hops),
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
    tokio::spawn(sample_gauges(Arc::clone(&ctx)));
    if let TlsIdentity::Source(src) = &ctx.node_identity {
        tokio::spawn(watch_svid(Arc::clone(&ctx), src.clone()));
    } else if let TlsIdentity::Static(i) = &ctx.node_identity {
        gauge!(m::SVID_EXPIRY_SECONDS).set(unix_seconds(i.not_after));
    }
    if let Some(JwtKeys::Source(src)) = ctx.cfg.token_auth.jwt.as_ref().map(|j| &j.keys) {
        tokio::spawn(refresh_jwt_keys(Arc::clone(&ctx), src.clone()));
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
    pub(crate) fn ctx(&self) -> &Arc<NodeCtx> {
        &self.ctx
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.ctx
            .endpoint
            .local_addr()
            .expect("a bound endpoint has an address")
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

    /// Replaces the authorization policy. Connections re-evaluate their
    /// grants on their next action; established connections stay open.
    /// Installs (or clears) a hook called for every publish this node routes:
    /// tests record what the node sees and inject frame-level loss with it.
    pub fn set_route_hook(&self, hook: Option<crate::RouteHook>) {
        let set = hook.is_some();
        *self.ctx.hook.write().unwrap_or_else(|e| e.into_inner()) = hook;
        self.ctx.hook_set.store(set, Ordering::Release);
    }

    pub fn set_policy(&self, policy: Policy) {
        if policy.is_allow_all() {
            warn!("authorization policy: ALLOW ALL (development only)");
        }
        *self.ctx.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
        self.ctx.policy_gen.fetch_add(1, Ordering::AcqRel);
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

    /// Connections closed by the disconnect slow-consumer policy.
    pub fn slow_consumer_disconnects(&self) -> u64 {
        self.ctx.slow_disconnects.load(Ordering::Relaxed)
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
                dropped: c.outbox.dropped(),
            })
            .collect()
    }

    /// Fault injection for supervision tests: makes the actor of the
    /// connection registered as `name` panic. Returns false if none is found.
    pub fn inject_connection_panic(&self, name: &str) -> bool {
        let actor = self
            .ctx
            .conns
            .iter()
            .find(|c| c.name.as_str() == name)
            .and_then(|c| c.actor.get().cloned());
        match actor {
            Some(a) => a.send_message(crate::conn::ConnMsg::InjectPanic).is_ok(),
            None => false,
        }
    }

    /// Stops accepting, lets every connection's writer drain its queue for up
    /// to `deadline`, then closes everything.
    pub async fn shutdown(self, deadline: Duration) {
        *self.ctx.drain.write().unwrap_or_else(|e| e.into_inner()) = deadline;
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
                .stop_children_and_wait(Some("shutdown".into()), Some(Duration::from_secs(2)))
                .await;
        }
        self.supervisor
            .stop_children_and_wait(Some("shutdown".into()), Some(Duration::from_secs(2)))
            .await;
        self.supervisor.stop(Some("shutdown".into()));
        let _ = tokio::time::timeout(Duration::from_secs(2), self.join).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ctx.endpoint.wait_idle()).await;
        info!(node = %self.ctx.cfg.node_id, "node stopped");
    }
}
