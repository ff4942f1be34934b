//! Federation: peer links between nodes and interest propagation over them.
//!
//! The federation actor (a child of the node supervisor) owns the
//! [`InterestTable`] and the set of dialled peers; it supervises one link actor
//! per peer link ([`crate::link`]). Control flows through it: local interest
//! changes (from the subscription-table actor), link up/down, announcements
//! from peers. Data does not: a publish for remote subscribers is pushed by
//! the routing task straight into the link's bounded outbox, found through the
//! same registry lookup as local subscribers ([`crate::registry::RemoteGroup`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use bytes::Bytes;
use metrics::{counter, gauge};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde::{Deserialize, Serialize};
use slim_wire::{Frame, Interest, InterestAdd, InterestRemove, Name};
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, info, warn};

use crate::interest::{InterestTable, NodeId};
use crate::link::{LinkActor, LinkArgs, LinkKind, LinkMsg};
use crate::metrics as m;
use crate::node::{NodeCtx, NodeHandle};
use crate::outbox::Outbox;
use crate::registry::{ConnId, RemoteGroup};
use crate::table::TableMsg;

/// A peer this node dials.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerSpec {
    /// Checked against the peer's answer; a mismatch is an error.
    pub node_id: String,
    pub addr: SocketAddr,
    /// SNI only: the peer is authenticated by its SPIFFE ID.
    pub server_name: String,
    /// When set, the peer must present exactly this SPIFFE ID; otherwise any
    /// SVID from a trusted bundle whose policy rule grants `peer = true`.
    pub expect_spiffe_id: Option<slim_auth::SpiffeId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkDirection {
    Dialled,
    Accepted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkState {
    Connecting,
    Up,
    Backoff,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Up => "up",
            LinkState::Backoff => "backoff",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkInfo {
    pub peer_node_id: String,
    pub peer_spiffe_id: Option<String>,
    pub remote_addr: SocketAddr,
    pub direction: LinkDirection,
    pub state: LinkState,
    pub up_since: Option<SystemTime>,
    pub frames_in: u64,
    pub frames_out: u64,
    /// Frames dropped because the link's outbound queue was full.
    pub drops: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteInfo {
    pub name: String,
    pub local_subscribers: usize,
    /// Remote nodes with subscribers of `name` (interest origins), sorted.
    pub remote_peers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum NodeEvent {
    ClientConnected {
        client: String,
        spiffe_id: Option<String>,
        at: SystemTime,
    },
    ClientDisconnected {
        client: String,
        spiffe_id: Option<String>,
        at: SystemTime,
    },
    /// An explicit client subscribe (not the implicit registration subscriptions).
    Subscribed {
        name: String,
        client: String,
        spiffe_id: Option<String>,
        at: SystemTime,
    },
    Unsubscribed {
        name: String,
        client: String,
        spiffe_id: Option<String>,
        at: SystemTime,
    },
    LinkUp {
        peer_node_id: String,
        at: SystemTime,
    },
    LinkDown {
        peer_node_id: String,
        reason: String,
        at: SystemTime,
    },
}

/// One live connection of a link: what the routing path and the federation
/// actor need to send on it. A new connection is a new session (new id).
pub(crate) struct LinkSession {
    pub id: ConnId,
    pub peer: NodeId,
    /// Node id of the side that dialled this connection (tie-break between
    /// two links to the same peer).
    pub dialler: NodeId,
    pub outbox: Arc<Outbox>,
    /// Interest announcements and pongs, on the link's priority stream.
    pub ctl: mpsc::Sender<Bytes>,
    pub conn: quinn::Connection,
}

/// The state of one link actor, visible to `links()`.
pub(crate) struct LinkShared {
    pub direction: LinkDirection,
    pub peer_node_id: RwLock<String>,
    pub peer_spiffe_id: RwLock<Option<String>>,
    pub remote_addr: RwLock<SocketAddr>,
    state: AtomicU8,
    pub up_since: RwLock<Option<SystemTime>>,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    /// Drops of sessions that ended.
    pub past_drops: AtomicU64,
    pub session: RwLock<Option<Arc<LinkSession>>>,
}

impl LinkShared {
    pub fn new(direction: LinkDirection, peer: &str, addr: SocketAddr) -> Self {
        LinkShared {
            direction,
            peer_node_id: RwLock::new(peer.to_owned()),
            peer_spiffe_id: RwLock::new(None),
            remote_addr: RwLock::new(addr),
            state: AtomicU8::new(0),
            up_since: RwLock::new(None),
            frames_in: AtomicU64::new(0),
            frames_out: AtomicU64::new(0),
            past_drops: AtomicU64::new(0),
            session: RwLock::new(None),
        }
    }

    pub fn state(&self) -> LinkState {
        match self.state.load(Ordering::Relaxed) {
            1 => LinkState::Up,
            2 => LinkState::Backoff,
            _ => LinkState::Connecting,
        }
    }

    pub fn set_state(&self, s: LinkState) {
        let v = match s {
            LinkState::Connecting => 0,
            LinkState::Up => 1,
            LinkState::Backoff => 2,
        };
        self.state.store(v, Ordering::Relaxed);
        if s != LinkState::Up {
            *self.up_since.write().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    pub fn session(&self) -> Option<Arc<LinkSession>> {
        self.session
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Detaches the current session (exactly one caller gets it, so the
    /// federation hears of its end exactly once).
    pub fn take_session(&self) -> Option<Arc<LinkSession>> {
        let s = self
            .session
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(s) = &s {
            s.outbox.close();
            self.past_drops
                .fetch_add(s.outbox.dropped(), Ordering::Relaxed);
        }
        s
    }

    fn info(&self) -> LinkInfo {
        let drops = self.past_drops.load(Ordering::Relaxed)
            + self.session().map_or(0, |s| s.outbox.dropped());
        LinkInfo {
            peer_node_id: self
                .peer_node_id
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            peer_spiffe_id: self
                .peer_spiffe_id
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            remote_addr: *self.remote_addr.read().unwrap_or_else(|e| e.into_inner()),
            direction: self.direction,
            state: self.state(),
            up_since: *self.up_since.read().unwrap_or_else(|e| e.into_inner()),
            frames_in: self.frames_in.load(Ordering::Relaxed),
            frames_out: self.frames_out.load(Ordering::Relaxed),
            drops,
        }
    }
}

/// Federation state shared by the node's actors and tasks.
pub(crate) struct Fed {
    pub events: broadcast::Sender<NodeEvent>,
    /// Every link actor (dialled ones also while connecting or backing off).
    pub links: dashmap::DashMap<u64, Arc<LinkShared>>,
    next_link: AtomicU64,
    actor: RwLock<Option<ActorRef<FedMsg>>>,
    /// Owned by the federation actor; locked briefly by `routes()`.
    pub interest: Mutex<InterestTable>,
    /// Peers with a link in use; a dialled link stands by while its peer is
    /// connected through another link (e.g. one the peer dialled), so two
    /// nodes that both dial each other do not keep replacing links.
    pub connected: tokio::sync::watch::Sender<std::collections::BTreeSet<NodeId>>,
    /// Bumped each time the federation actor (re)starts: link actors of a
    /// previous incarnation see it change and end, since the new actor does
    /// not know them.
    generation: AtomicU64,
}

impl Fed {
    pub fn new(node_id: &str, max_hops: usize) -> Self {
        Fed {
            events: broadcast::channel(1024).0,
            links: dashmap::DashMap::new(),
            next_link: AtomicU64::new(1),
            actor: RwLock::new(None),
            interest: Mutex::new(InterestTable::new(node_id, max_hops)),
            connected: tokio::sync::watch::channel(Default::default()).0,
            generation: AtomicU64::new(0),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn next_link_key(&self) -> u64 {
        self.next_link.fetch_add(1, Ordering::Relaxed)
    }

    pub fn actor(&self) -> Option<ActorRef<FedMsg>> {
        self.actor.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn emit(&self, e: NodeEvent) {
        // No receiver is fine; a lagging one resyncs from routes()/links().
        let _ = self.events.send(e);
    }

    /// Tells the federation actor (if running) that local interest in these
    /// names may have changed.
    pub fn local_changed(&self, names: &[Arc<str>]) {
        if let Some(a) = self.actor() {
            let _ = a.send_message(FedMsg::LocalChanged(names.to_vec()));
        }
    }
}

pub(crate) enum FedMsg {
    LocalChanged(Vec<Arc<str>>),
    /// A link session completed its handshake; reply whether it is the one
    /// to use for its peer (false: another link to that peer wins).
    Up {
        session: Arc<LinkSession>,
        reply: RpcReplyPort<bool>,
    },
    Down {
        session: Arc<LinkSession>,
        reason: String,
    },
    Interest {
        peer: NodeId,
        session: ConnId,
        frame: Interest,
        /// Bounds how many updates per link wait in this mailbox.
        _permit: tokio::sync::OwnedSemaphorePermit,
    },
    SetDialPeers(Vec<PeerSpec>),
}

pub(crate) struct FederationActor;

pub(crate) struct FedState {
    ctx: Arc<NodeCtx>,
    /// The session in use per peer node.
    active: HashMap<NodeId, Arc<LinkSession>>,
    /// Dialled peers (static and controller-given) and their link actors.
    dialled: HashMap<PeerSpec, ActorRef<LinkMsg>>,
    /// Which child actor dials which peer (to restart it after a failure).
    children: HashMap<ActorId, PeerSpec>,
    dynamic: Vec<PeerSpec>,
}

impl Actor for FederationActor {
    type Msg = FedMsg;
    type State = FedState;
    type Arguments = Arc<NodeCtx>;

    async fn pre_start(
        &self,
        myself: ActorRef<FedMsg>,
        ctx: Arc<NodeCtx>,
    ) -> Result<FedState, ActorProcessingErr> {
        ctx.fed.generation.fetch_add(1, Ordering::AcqRel);
        *ctx.fed.actor.write().unwrap_or_else(|e| e.into_inner()) = Some(myself.clone());
        // Restarted: links of the previous incarnation are gone with it; start
        // from the registry's local interest.
        {
            let mut t = ctx.fed.interest.lock().unwrap_or_else(|e| e.into_inner());
            *t = InterestTable::new(&ctx.cfg.node_id, ctx.cfg.federation.max_hops);
            for name in ctx.registry.local_names() {
                t.handle_local(&name, true);
            }
        }
        let mut st = FedState {
            ctx: Arc::clone(&ctx),
            active: HashMap::new(),
            dialled: HashMap::new(),
            children: HashMap::new(),
            dynamic: Vec::new(),
        };
        st.reconcile_dials(&myself).await;
        Ok(st)
    }

    async fn handle(
        &self,
        myself: ActorRef<FedMsg>,
        msg: FedMsg,
        st: &mut FedState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            FedMsg::LocalChanged(names) => {
                let mut t = st.interest();
                for n in names {
                    let present = st.ctx.registry.has_local(&n);
                    t.handle_local(&n, present);
                }
            }
            FedMsg::Up { session, reply } => {
                let keep = st.up(session);
                let _ = reply.send(keep);
            }
            FedMsg::Down { session, reason } => st.down(&session, &reason),
            FedMsg::Interest {
                peer,
                session,
                frame,
                _permit,
            } => {
                if st.active.get(&peer).is_none_or(|s| s.id != session) {
                    // From a link that lost the tie-break or just went down.
                    return Ok(());
                }
                let mut t = st.interest();
                for a in frame.add {
                    if let Err(e) = t.handle_add(&peer, a.name.as_str(), &a.path) {
                        counter!(m::INTEREST_REFUSED_TOTAL, "reason" => e.reason_label())
                            .increment(1);
                        debug!(error = %e, "interest announcement ignored");
                    }
                }
                for r in frame.remove {
                    t.handle_remove(&peer, r.name.as_str(), &r.origin);
                }
            }
            FedMsg::SetDialPeers(peers) => {
                st.dynamic = peers;
                st.reconcile_dials(&myself).await;
            }
        }
        st.flush();
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<FedMsg>,
        evt: SupervisionEvent,
        st: &mut FedState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                counter!(m::ACTOR_RESTARTS_TOTAL, "actor" => "link").increment(1);
                warn!(error = %err, "link actor failed");
                if let Some(spec) = st.children.remove(&cell.get_id()) {
                    st.dialled.remove(&spec);
                    st.reconcile_dials(&myself).await;
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                if let Some(spec) = st.children.remove(&cell.get_id())
                    && st
                        .dialled
                        .get(&spec)
                        .is_some_and(|a| a.get_id() == cell.get_id())
                {
                    st.dialled.remove(&spec);
                }
            }
            _ => {}
        }
        st.flush();
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<FedMsg>,
        st: &mut FedState,
    ) -> Result<(), ActorProcessingErr> {
        *st.ctx.fed.actor.write().unwrap_or_else(|e| e.into_inner()) = None;
        st.ctx.fed.connected.send_replace(Default::default());
        for s in st.active.values() {
            s.conn.close(
                quinn::VarInt::from_u32(slim_wire::ErrorCode::SHUTTING_DOWN.0 as u32),
                b"federation stopped",
            );
        }
        Ok(())
    }
}

impl FedState {
    fn interest(&self) -> std::sync::MutexGuard<'_, InterestTable> {
        self.ctx
            .fed
            .interest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Starts link actors for wanted peers and stops the others.
    async fn reconcile_dials(&mut self, myself: &ActorRef<FedMsg>) {
        if self.ctx.is_shutting_down() {
            return;
        }
        let mut want: Vec<PeerSpec> = self.ctx.cfg.federation.peers.clone();
        for p in &self.dynamic {
            if !want.contains(p) {
                want.push(p.clone());
            }
        }
        let wanted: HashSet<&PeerSpec> = want.iter().collect();
        let gone: Vec<PeerSpec> = self
            .dialled
            .keys()
            .filter(|k| !wanted.contains(k))
            .cloned()
            .collect();
        for spec in gone {
            if let Some(a) = self.dialled.remove(&spec) {
                info!(peer = %spec.node_id, "peer no longer wanted; closing its link");
                self.children.remove(&a.get_id());
                a.stop(Some("peer removed".into()));
            }
        }
        for spec in want {
            if self.dialled.contains_key(&spec) {
                continue;
            }
            let key = self.ctx.fed.next_link_key();
            let shared = Arc::new(LinkShared::new(
                LinkDirection::Dialled,
                &spec.node_id,
                spec.addr,
            ));
            let args = LinkArgs {
                ctx: Arc::clone(&self.ctx),
                key,
                shared,
                kind: LinkKind::Dial(spec.clone()),
            };
            match Actor::spawn_linked(None, LinkActor, args, myself.get_cell()).await {
                Ok((a, _)) => {
                    self.children.insert(a.get_id(), spec.clone());
                    self.dialled.insert(spec, a);
                }
                Err(e) => warn!(peer = %spec.node_id, error = %e, "cannot start link actor"),
            }
        }
    }

    fn up(&mut self, session: Arc<LinkSession>) -> bool {
        if let Some(old) = self.active.get(&session.peer) {
            // Two links to one peer: both ends keep the one dialled by the
            // lower node id, so they agree without talking; between two
            // links dialled by the same node the newer wins (the older is
            // likely dead and not yet noticed).
            let new_wins = session.dialler < old.dialler
                || (session.dialler == old.dialler && session.id != old.id);
            if !new_wins {
                return false;
            }
            let old = Arc::clone(old);
            old.conn.close(
                quinn::VarInt::from_u32(slim_wire::ErrorCode::LINK_EXISTS.0 as u32),
                b"replaced by another link to the same node",
            );
            self.active.remove(&session.peer);
            self.interest().handle_peer_down(&session.peer);
        }
        info!(peer = %session.peer, session = session.id, "peer link up");
        self.active
            .insert(Arc::clone(&session.peer), Arc::clone(&session));
        self.publish_connected();
        self.interest().handle_peer_up(&session.peer);
        self.ctx.fed.emit(NodeEvent::LinkUp {
            peer_node_id: session.peer.to_string(),
            at: SystemTime::now(),
        });
        true
    }

    fn down(&mut self, session: &LinkSession, reason: &str) {
        if self
            .active
            .get(&session.peer)
            .is_none_or(|s| s.id != session.id)
        {
            return;
        }
        info!(peer = %session.peer, reason, "peer link down");
        self.active.remove(&session.peer);
        self.publish_connected();
        self.interest().handle_peer_down(&session.peer);
        self.ctx.fed.emit(NodeEvent::LinkDown {
            peer_node_id: session.peer.to_string(),
            reason: reason.to_owned(),
            at: SystemTime::now(),
        });
    }

    fn publish_connected(&self) {
        let peers = self.active.keys().cloned().collect();
        self.ctx.fed.connected.send_replace(peers);
    }

    /// Sends pending announcements and installs changed routes.
    fn flush(&mut self) {
        let mut announce = Vec::new();
        let mut changed = Vec::new();
        {
            let mut t = self.interest();
            while let Some(a) = t.poll_announce() {
                announce.push(a);
            }
            while let Some(n) = t.poll_route_change() {
                let dests = t.remote_dests(&n);
                changed.push((n, dests));
            }
            gauge!(m::INTEREST_ENTRIES).set(t.entry_count() as f64);
        }
        for (peer, a) in announce {
            let Some(s) = self.active.get(&peer) else {
                continue;
            };
            let frame = Frame::Interest(Interest {
                add: a
                    .add
                    .into_iter()
                    .filter_map(|(name, path)| {
                        Some(InterestAdd {
                            name: Name::parse(&name).ok()?,
                            path,
                        })
                    })
                    .collect(),
                remove: a
                    .remove
                    .into_iter()
                    .filter_map(|(name, origin)| {
                        Some(InterestRemove {
                            name: Name::parse(&name).ok()?,
                            origin,
                        })
                    })
                    .collect(),
            });
            let bytes = crate::conn::encode(&frame, &self.ctx);
            if s.ctl.try_send(bytes).is_err() {
                // The peer is too far behind to follow incremental updates:
                // reset the link; it resyncs from scratch when it comes back.
                counter!(m::LINK_DROPS_TOTAL, "reason" => "control_overflow").increment(1);
                warn!(peer = %peer, "link control queue full; resetting the link");
                s.conn.close(
                    quinn::VarInt::from_u32(slim_wire::ErrorCode::SLOW_CONSUMER.0 as u32),
                    b"interest updates overflowed",
                );
            }
        }
        for (name, dests) in changed {
            let mut groups: BTreeMap<NodeId, Vec<NodeId>> = BTreeMap::new();
            for (origin, via) in dests {
                groups.entry(via).or_default().push(origin);
            }
            let remote: Vec<RemoteGroup> = groups
                .into_iter()
                .filter_map(|(via, origins)| {
                    let s = self.active.get(&via)?;
                    Some(RemoteGroup {
                        peer: via,
                        link: s.id,
                        outbox: Arc::clone(&s.outbox),
                        origins,
                    })
                })
                .collect();
            let _ = self.ctx.table().send_message(TableMsg::SetRemote {
                key: name.to_string(),
                remote,
            });
        }
    }
}

/// Starts the federation actor under the node supervisor.
pub(crate) async fn spawn(
    ctx: &Arc<NodeCtx>,
    sup: ractor::ActorCell,
    name: String,
) -> Result<(), ActorProcessingErr> {
    Actor::spawn_linked(Some(name), FederationActor, Arc::clone(ctx), sup).await?;
    Ok(())
}

/// Gauges sampled once a second.
pub(crate) fn sample_gauges(ctx: &NodeCtx) {
    let mut by_state = [0usize; 3];
    for l in ctx.fed.links.iter() {
        by_state[l.state() as usize] += 1;
    }
    for (s, n) in [LinkState::Connecting, LinkState::Up, LinkState::Backoff]
        .into_iter()
        .zip(by_state)
    {
        gauge!(m::LINKS, "state" => s.as_str()).set(n as f64);
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

    /// Every link: dialled ones (also while connecting or backing off) and
    /// accepted ones.
    pub fn links(&self) -> Vec<LinkInfo> {
        let mut v: Vec<LinkInfo> = self.ctx().fed.links.iter().map(|l| l.info()).collect();
        v.sort_by(|a, b| a.peer_node_id.cmp(&b.peer_node_id));
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

    /// Fault injection for link tests: closes the live connection of every
    /// link to `peer_node_id` (as a network failure would end it). Returns
    /// how many were closed.
    pub fn inject_link_failure(&self, peer_node_id: &str) -> usize {
        let mut n = 0;
        for l in self.ctx().fed.links.iter() {
            if *l.peer_node_id.read().unwrap_or_else(|e| e.into_inner()) == peer_node_id
                && let Some(s) = l.session()
            {
                s.conn
                    .close(quinn::VarInt::from_u32(0), b"injected link failure");
                n += 1;
            }
        }
        n
    }
}
