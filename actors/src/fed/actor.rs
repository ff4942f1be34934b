//! The federation actor: owns the interest table, the session in use per
//! peer and the dialled peers' link actors; turns interest changes into
//! announcements and registry routes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use metrics::{counter, gauge};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use slim_wire::Frame;
use tracing::{debug, info, warn};

use crate::ctx::{NodeCtx, encode};
use crate::fed::shared::{FedMsg, LinkSession, LinkShared};
use crate::interest::{InterestTable, NodeId};
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
        ctx.fed.started(myself.clone());
        // A predecessor that was killed never cleared this.
        ctx.fed.connected.send_replace(Default::default());
        // Restarted: links of the previous incarnation are gone with it; start
        // from the registry's local interest.
        {
            let mut t = ctx.fed.interest.lock();
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
        st.flush();
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
            let frame = Frame::Interest(a.into_interest());
            let bytes = encode(&frame, &self.ctx);
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
