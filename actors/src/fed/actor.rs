//! The federation actor: owns the interest table, the session in use per
//! peer and the dialled peers' link actors; turns interest changes into
//! announcements and registry routes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use metrics::{counter, gauge};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use slim_wire::Frame;
use tracing::{info, warn};

use crate::ctx::{AbortOnDrop, NodeCtx, encode};
use crate::fed::shared::{FedMsg, LinkSession, LinkShared, interest_epoch};
use crate::interest::{InterestConfig, InterestTable, NodeId};
use crate::link::actor::{LinkArgs, LinkKind, LinkMsg, spawn_link};
use crate::metrics as m;
use crate::registry::RemoteGroup;
use crate::table::TableMsg;
use crate::types::{LinkDirection, LinkState, NodeEvent, PeerSpec};

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
    /// The interest table's clock starts here.
    start: Instant,
    last_gc: Instant,
    /// The pending wake-up (a `Tick`) for frames held back by pacing or a
    /// full control queue.
    wake_at: Option<Instant>,
    wake: Option<AbortOnDrop<Result<(), ractor::MessagingErr<FedMsg>>>>,
    _gc: AbortOnDrop,
}

/// How often expired tombstones and unreachable origins are dropped.
const GC_EVERY: Duration = Duration::from_secs(1);
/// How soon to retry a peer whose control queue was full.
const RETRY_FULL: Duration = Duration::from_millis(10);

impl Actor for FederationActor {
    type Msg = FedMsg;
    type State = FedState;
    type Arguments = Arc<NodeCtx>;

    async fn pre_start(
        &self,
        myself: ActorRef<FedMsg>,
        ctx: Arc<NodeCtx>,
    ) -> Result<FedState, ActorProcessingErr> {
        ctx.fed.started(myself.clone());
        // A predecessor that was killed never cleared this.
        ctx.fed.connected.send_replace(Default::default());
        // Restarted: links of the previous incarnation are gone with it; start
        // from the registry's local interest.
        {
            let mut t = ctx.fed.interest.lock();
            *t = InterestTable::new(
                &ctx.cfg.node_id,
                interest_epoch(),
                InterestConfig {
                    tombstone_ttl: ctx.cfg.federation.tombstone_ttl,
                    ..InterestConfig::default()
                },
            );
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
            start: Instant::now(),
            last_gc: Instant::now(),
            wake_at: None,
            wake: None,
            _gc: AbortOnDrop(tokio::spawn({
                let me = myself.clone();
                async move {
                    let mut every = tokio::time::interval(GC_EVERY);
                    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        every.tick().await;
                        if me.send_message(FedMsg::Tick).is_err() {
                            return;
                        }
                    }
                }
            })),
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
                let mut t = st.ctx.fed.interest.lock();
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
                let now = st.now();
                let errors = st.interest().handle_interest(&peer, &frame, now);
                for e in errors {
                    counter!(m::INTEREST_REFUSED_TOTAL, "reason" => e.reason_label()).increment(1);
                    // A peer node sending bad entries is a bug or an attack
                    // on a trusted link: worth a warning, once per frame part.
                    warn!(peer = %peer, error = %e, "interest entries refused");
                }
            }
            FedMsg::SetDialPeers(peers) => {
                st.dynamic = peers;
                st.reconcile_dials(&myself).await;
            }
            FedMsg::ResyncRoutes => st.interest().retry_all_routes(),
            FedMsg::Tick => {
                if st.wake_at.is_some_and(|w| w <= Instant::now()) {
                    st.wake_at = None;
                    st.wake = None;
                }
                if st.last_gc.elapsed() >= GC_EVERY {
                    st.last_gc = Instant::now();
                    let now = st.now();
                    st.interest().handle_tick(now);
                }
            }
        }
        st.flush(&myself);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<FedMsg>,
        evt: SupervisionEvent,
        st: &mut FedState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err.to_string())),
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            _ => return Ok(()),
        };
        let id = cell.get_id();
        // Its entry and session are cleaned up by the watcher `spawn_link` set.
        // A dialled peer's actor that ended while still wanted is restarted;
        // one stopped on purpose was already taken out of `children`.
        if let Some(spec) = st.children.remove(&id) {
            counter!(m::ACTOR_RESTARTS_TOTAL, "actor" => "link").increment(1);
            warn!(peer = %spec.node_id, reason = failure.as_deref().unwrap_or("ended"), "link actor ended; restarting");
            if st.dialled.get(&spec).is_some_and(|a| a.get_id() == id) {
                st.dialled.remove(&spec);
            }
            st.reconcile_dials(&myself).await;
        }
        st.flush(&myself);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<FedMsg>,
        st: &mut FedState,
    ) -> Result<(), ActorProcessingErr> {
        st.ctx.fed.stopped();
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
    fn interest(&self) -> parking_lot::MutexGuard<'_, InterestTable> {
        self.ctx.fed.interest.lock()
    }

    /// The interest table's clock.
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Makes sure a `Tick` arrives by `at`.
    fn wake_by(&mut self, myself: &ActorRef<FedMsg>, at: Instant) {
        if self.wake_at.is_some_and(|w| w <= at) {
            return;
        }
        self.wake_at = Some(at);
        let after = at.saturating_duration_since(Instant::now());
        self.wake = Some(AbortOnDrop(myself.send_after(after, || FedMsg::Tick)));
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
                // Until the first dial resolves it, a name has no address.
                spec.addr
                    .parse()
                    .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            ));
            let args = LinkArgs {
                ctx: Arc::clone(&self.ctx),
                key,
                shared,
                kind: LinkKind::Dial(spec.clone()),
            };
            match spawn_link(args, myself.get_cell()).await {
                Ok(a) => {
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
            let now = self.now();
            self.interest().handle_peer_down(&session.peer, now);
        }
        info!(peer = %session.peer, session = session.id, "peer link up");
        self.active
            .insert(Arc::clone(&session.peer), Arc::clone(&session));
        self.publish_connected();
        let now = self.now();
        {
            let mut t = self.interest();
            t.handle_peer_up(&session.peer, now);
            // If this replaced another link to the same peer, the routes
            // through it are the same but their outbox is not.
            t.retry_routes_via(&session.peer);
        }
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
        let now = self.now();
        self.interest().handle_peer_down(&session.peer, now);
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

    /// Sends what peers are due to hear (as far as pacing and their control
    /// queues allow; the rest waits in the table, coalescing) and installs
    /// changed routes.
    fn flush(&mut self, myself: &ActorRef<FedMsg>) {
        let now = self.now();
        let mut changed = Vec::new();
        let mut full = false;
        let next = {
            let mut t = self.ctx.fed.interest.lock();
            for (peer, s) in &self.active {
                if !t.has_pending(peer) {
                    continue;
                }
                // Take a frame only when the control queue has room for it:
                // a slow peer makes entries wait (and coalesce) here instead
                // of the link being reset.
                let Ok(slot) = s.ctl.try_reserve() else {
                    counter!(m::INTEREST_DEFERRED_TOTAL).increment(1);
                    full = true;
                    continue;
                };
                if let Some(f) = t.poll_announce_to(peer, now) {
                    let bytes = encode(&Frame::Interest(f), &self.ctx);
                    counter!(m::INTEREST_BYTES_TOTAL).increment(bytes.len() as u64);
                    slot.send(bytes);
                }
            }
            while let Some(n) = t.poll_route_change() {
                let dests = t.remote_dests(&n);
                changed.push((n, dests));
            }
            gauge!(m::INTEREST_ENTRIES).set(t.entry_count() as f64);
            gauge!(m::INTEREST_ORIGINS).set(t.origin_count() as f64);
            t.poll_timeout()
        };
        if full {
            self.wake_by(myself, Instant::now() + RETRY_FULL);
        }
        if let Some(at) = next {
            // (Never sooner than 5 ms: a peer due now but not sent to must not
            // spin the actor.)
            self.wake_by(myself, self.start + at.max(now + Duration::from_millis(5)));
        }
        let mut lost: Vec<Arc<str>> = Vec::new();
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
            let sent = self.ctx.table().send_message(TableMsg::SetRemote {
                key: name.to_string(),
                remote,
            });
            if sent.is_err() {
                // The table actor is between incarnations: try again soon
                // (its restart also asks for every route again).
                lost.push(name);
            }
        }
        if !lost.is_empty() {
            warn!(
                names = lost.len(),
                "subscription-table actor not running; remote routes will be installed again"
            );
            let mut t = self.interest();
            for n in lost {
                t.retry_route(n);
            }
            drop(t);
            self.wake_by(myself, Instant::now() + Duration::from_millis(100));
        }
    }
}

/// Starts the federation actor under the node supervisor.
pub(crate) async fn spawn(
    ctx: &Arc<NodeCtx>,
    sup: ractor::ActorCell,
    name: String,
) -> Result<ractor::ActorCell, ActorProcessingErr> {
    let (a, _) = Actor::spawn_linked(Some(name), FederationActor, Arc::clone(ctx), sup).await?;
    Ok(a.get_cell())
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
