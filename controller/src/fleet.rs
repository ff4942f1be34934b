//! The fleet view and the push decisions, sans-IO: `handle_*` for what
//! happened, `poll_push` for what to send. The server task is a thin driver.
//!
//! Nothing here is persisted: after a controller restart the view is rebuilt
//! from the nodes re-registering. For that, nothing is pushed during
//! `startup_hold` after start: a node that registered first would otherwise
//! be told to drop its links to nodes that have not re-registered yet. A node
//! whose controller connection drops stays in the plan for `plan_grace`
//! (its links likely still carry traffic); after that it is forgotten.
//!
//! The hold alone would not be enough: a node only notices that a killed
//! controller is gone after its QUIC idle timeout. So a registering node
//! also says whom it currently dials; peers that have not registered yet are
//! kept as *hearsay* entries (planned like a node that disconnected when the
//! controller started), so nobody is told to drop a live link just because
//! its peer is slower to come back.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::plan::{Plan, PlanConfig, PlanNode, plan_with};
use crate::proto::{
    ChannelNode, ChannelView, LinkView, NodeView, PeerSpec, Register, Report, ReportDelta,
    RouteInfo,
};
use crate::view::{NodeReports, ViewError};

pub type ConnId = u64;

#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub plan_grace: Duration,
    pub startup_hold: Duration,
    /// How links are planned (full mesh for small fleets, sparse above).
    pub plan: PlanConfig,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            plan_grace: Duration::from_secs(300),
            startup_hold: Duration::from_secs(10),
            plan: PlanConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FleetError {
    #[error("node id {node_id:?} is held by {holder} on a live connection")]
    NodeIdTaken { node_id: String, holder: String },
    #[error("this connection is not registered")]
    NotRegistered,
    #[error("this connection is already registered")]
    AlreadyRegistered,
    #[error("invalid registration: {0}")]
    Invalid(String),
    /// A report delta that does not follow on what the view holds.
    #[error(transparent)]
    Report(#[from] ViewError),
}

#[derive(Debug)]
struct NodeEntry {
    reg: Register,
    spiffe_id: String,
    conn: Option<ConnId>,
    disconnected_at: Option<Instant>,
    registered_ms: u64,
    last_seen_ms: u64,
    reports: NodeReports,
    /// Known only from another node's `dialing` list.
    hearsay: bool,
}

#[derive(Debug)]
pub struct Fleet {
    cfg: FleetConfig,
    started: Instant,
    hold_until: Instant,
    nodes: BTreeMap<String, NodeEntry>,
    by_conn: HashMap<ConnId, String>,
    plan: Plan,
    /// What each live connection was last sent.
    pushed: HashMap<ConnId, Vec<PeerSpec>>,
    /// Connections to ask for a full report (their view is out of step);
    /// at most one entry per connection.
    resync: BTreeSet<ConnId>,
}

/// What `handle_register` asks the driver to do.
#[derive(Debug, PartialEq, Eq)]
pub struct Registered {
    /// An older connection of the same node, to close.
    pub replaced: Option<ConnId>,
}

impl Fleet {
    pub fn new(cfg: FleetConfig, now: Instant) -> Fleet {
        Fleet {
            started: now,
            hold_until: now + cfg.startup_hold,
            cfg,
            nodes: BTreeMap::new(),
            by_conn: HashMap::new(),
            plan: Plan::default(),
            pushed: HashMap::new(),
            resync: BTreeSet::new(),
        }
    }

    /// A node registered on `conn`, authenticated as `spiffe_id`.
    pub fn handle_register(
        &mut self,
        conn: ConnId,
        spiffe_id: &str,
        reg: Register,
        wall_ms: u64,
    ) -> Result<Registered, FleetError> {
        if self.by_conn.contains_key(&conn) {
            return Err(FleetError::AlreadyRegistered);
        }
        if reg.node_id.is_empty() || reg.node_id.len() > 256 {
            return Err(FleetError::Invalid("node_id must be 1..=256 bytes".into()));
        }
        if reg.server_name.len() > 256 || reg.cluster.len() > 256 {
            return Err(FleetError::Invalid(
                "server_name and cluster must be at most 256 bytes".into(),
            ));
        }
        let mut replaced = None;
        let mut replan = true;
        if let Some(old) = self.nodes.get(&reg.node_id) {
            if old.conn.is_some() && old.spiffe_id != spiffe_id {
                return Err(FleetError::NodeIdTaken {
                    node_id: reg.node_id,
                    holder: old.spiffe_id.clone(),
                });
            }
            replaced = old.conn;
            replan = old.hearsay
                || old.reg.endpoint() != reg.endpoint()
                || old.reg.server_name != reg.server_name
                || old.spiffe_id != spiffe_id;
        }
        if let Some(r) = replaced {
            self.by_conn.remove(&r);
            self.pushed.remove(&r);
            self.resync.remove(&r);
        }
        self.by_conn.insert(conn, reg.node_id.clone());
        for p in &reg.dialing {
            if p.node_id == reg.node_id || self.nodes.contains_key(&p.node_id) {
                continue;
            }
            let Some(sid) = &p.expect_spiffe_id else {
                continue;
            };
            // Planned as if it had disconnected when the controller started:
            // it expires `plan_grace` after the start unless it registers.
            self.nodes.insert(
                p.node_id.clone(),
                NodeEntry {
                    reg: Register {
                        node_id: p.node_id.clone(),
                        cluster: String::new(),
                        external_endpoint: p.host.is_none().then_some(p.addr),
                        listen: None,
                        server_name: p.server_name.clone(),
                        epoch: 0,
                        dialing: Vec::new(),
                        external_host: p.host.clone(),
                    },
                    spiffe_id: sid.clone(),
                    conn: None,
                    disconnected_at: Some(self.started),
                    registered_ms: 0,
                    last_seen_ms: 0,
                    reports: NodeReports::default(),
                    hearsay: true,
                },
            );
            replan = true;
        }
        self.nodes.insert(
            reg.node_id.clone(),
            NodeEntry {
                reg,
                spiffe_id: spiffe_id.to_owned(),
                conn: Some(conn),
                disconnected_at: None,
                registered_ms: wall_ms,
                last_seen_ms: wall_ms,
                reports: NodeReports::default(),
                hearsay: false,
            },
        );
        if replan {
            self.replan();
        }
        Ok(Registered { replaced })
    }

    /// One part of a node's full report; the last part replaces its view.
    pub fn handle_report(
        &mut self,
        conn: ConnId,
        part: Report,
        wall_ms: u64,
    ) -> Result<(), FleetError> {
        let e = self.entry_mut(conn)?;
        let complete = part.last;
        e.reports.handle_part(part);
        e.last_seen_ms = wall_ms;
        if complete && e.reports.truncated() {
            tracing::warn!(
                node = %e.reg.node_id,
                "node reports more links or names than the controller keeps per node; its view is partial"
            );
        }
        Ok(())
    }

    /// Changes to a node's view. A delta that does not follow on what the
    /// view holds is refused ([`ViewError::NotSynced`],
    /// [`ViewError::OutOfStep`]) and the node is to be asked for a
    /// full report ([`Fleet::poll_resync`]).
    pub fn handle_report_delta(
        &mut self,
        conn: ConnId,
        delta: ReportDelta,
        wall_ms: u64,
    ) -> Result<(), FleetError> {
        let e = self.entry_mut(conn)?;
        e.last_seen_ms = wall_ms;
        let r = e.reports.handle_delta(delta);
        if r.is_err() && e.reports.take_ask() {
            self.resync.insert(conn);
        }
        Ok(r?)
    }

    /// The next connection to send `SendReport`.
    pub fn poll_resync(&mut self) -> Option<ConnId> {
        while let Some(conn) = self.resync.pop_first() {
            if self.by_conn.contains_key(&conn) {
                return Some(conn);
            }
        }
        None
    }

    /// Any other message from a node: it is alive.
    pub fn handle_seen(&mut self, conn: ConnId, wall_ms: u64) -> Result<(), FleetError> {
        self.entry_mut(conn)?.last_seen_ms = wall_ms;
        Ok(())
    }

    /// The connection ended. The node stays planned for `plan_grace`.
    pub fn handle_disconnect(&mut self, conn: ConnId, now: Instant) {
        self.pushed.remove(&conn);
        self.resync.remove(&conn);
        let Some(id) = self.by_conn.remove(&conn) else {
            return;
        };
        if let Some(e) = self.nodes.get_mut(&id)
            && e.conn == Some(conn)
        {
            e.conn = None;
            e.disconnected_at = Some(now);
        }
    }

    /// Forgets nodes disconnected for longer than `plan_grace`; returns their ids.
    pub fn handle_tick(&mut self, now: Instant) -> Vec<String> {
        let grace = self.cfg.plan_grace;
        let gone: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, e)| {
                e.disconnected_at
                    .is_some_and(|t| now.duration_since(t) >= grace)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            self.nodes.remove(id);
        }
        if !gone.is_empty() {
            self.replan();
        }
        gone
    }

    /// The next dial set to send: a connected node whose planned set differs
    /// from what its connection was last sent. `None` during the startup hold.
    /// Only nodes whose own set changed are sent anything: a node joining a
    /// large fleet changes few links (see `plan`), so it costs few pushes.
    pub fn poll_push(&mut self, now: Instant) -> Option<(ConnId, Vec<PeerSpec>)> {
        if now < self.hold_until {
            return None;
        }
        for (id, e) in &self.nodes {
            let Some(conn) = e.conn else { continue };
            // Compared in place: this scans every node on each call.
            let want = self.plan.dials.get(id).map_or(&[][..], Vec::as_slice);
            if self.pushed.get(&conn).map(Vec::as_slice) != Some(want) {
                let want = want.to_vec();
                self.pushed.insert(conn, want.clone());
                return Some((conn, want));
            }
        }
        None
    }

    /// When the startup hold ends (the driver wakes up then).
    pub fn hold_until(&self) -> Instant {
        self.hold_until
    }

    pub fn node_of(&self, conn: ConnId) -> Option<&str> {
        self.by_conn.get(&conn).map(String::as_str)
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn connected_count(&self) -> usize {
        self.by_conn.len()
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Links reported `Up` (each counted once per reporting side).
    pub fn links_up(&self) -> usize {
        self.nodes.values().map(|e| e.reports.links_up()).sum()
    }

    pub fn nodes(&self) -> Vec<NodeView> {
        self.nodes
            .iter()
            .map(|(id, e)| NodeView {
                node_id: id.clone(),
                cluster: e.reg.cluster.clone(),
                spiffe_id: e.spiffe_id.clone(),
                external_endpoint: e.reg.external_endpoint,
                external_host: e.reg.external_host.clone(),
                listen: e.reg.listen,
                connected: e.conn.is_some(),
                registered_ms: e.registered_ms,
                last_seen_ms: e.last_seen_ms,
                links_up: e.reports.links_up() as u32,
                dials: self
                    .plan
                    .dials
                    .get(id)
                    .map(|v| v.iter().map(|p| p.node_id.clone()).collect())
                    .unwrap_or_default(),
                hearsay: e.hearsay,
            })
            .collect()
    }

    pub fn links(&self) -> Vec<LinkView> {
        self.nodes
            .iter()
            .flat_map(|(id, e)| {
                e.reports.links().map(move |l| LinkView {
                    node_id: id.clone(),
                    link: l.clone(),
                })
            })
            .collect()
    }

    pub fn routes(&self, node: &str) -> Option<Vec<RouteInfo>> {
        self.nodes.get(node).map(|e| e.reports.routes().collect())
    }

    /// Names with local subscribers anywhere, from the nodes' last reports.
    pub fn channels(&self) -> Vec<ChannelView> {
        let mut by_name: BTreeMap<&str, Vec<ChannelNode>> = BTreeMap::new();
        for (id, e) in &self.nodes {
            for (name, local_subscribers) in e.reports.local_names() {
                by_name.entry(name).or_default().push(ChannelNode {
                    node_id: id.clone(),
                    local_subscribers,
                });
            }
        }
        by_name
            .into_iter()
            .map(|(name, nodes)| ChannelView {
                name: name.to_owned(),
                subscribers: nodes.iter().map(|n| n.local_subscribers).sum(),
                nodes,
            })
            .collect()
    }

    fn entry_mut(&mut self, conn: ConnId) -> Result<&mut NodeEntry, FleetError> {
        let id = self.by_conn.get(&conn).ok_or(FleetError::NotRegistered)?;
        self.nodes.get_mut(id).ok_or(FleetError::NotRegistered)
    }

    fn replan(&mut self) {
        let input: Vec<PlanNode> = self
            .nodes
            .values()
            .map(|e| PlanNode {
                node_id: e.reg.node_id.clone(),
                external_endpoint: e.reg.endpoint(),
                server_name: e.reg.server_name.clone(),
                spiffe_id: e.spiffe_id.clone(),
            })
            .collect();
        self.plan = plan_with(&input, &self.cfg.plan);
        // A hearsay node is only a stand-in for links that already exist:
        // keep it in the dial sets of the nodes that said they dial it, and
        // plan no new link to it until it registers itself.
        for (dialler, peers) in self.plan.dials.iter_mut() {
            let Some(d) = self.nodes.get(dialler) else {
                continue;
            };
            peers.retain(|p| {
                !self.nodes.get(&p.node_id).is_some_and(|t| t.hearsay)
                    || d.reg.dialing.iter().any(|x| x.node_id == p.node_id)
            });
        }
        if self.plan.disconnected {
            tracing::warn!(
                nodes = input.len(),
                "no registered node has an external endpoint: nodes cannot be linked"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{LinkDirection, LinkInfo, LinkState};

    fn reg(id: &str, ext: Option<&str>) -> Register {
        Register {
            node_id: id.into(),
            cluster: "c".into(),
            external_endpoint: ext.and_then(|a| a.parse().ok()),
            listen: None,
            server_name: "slim-node".into(),
            epoch: 1,
            dialing: Vec::new(),
            // Not an IP: a name.
            external_host: ext
                .filter(|a| a.parse::<std::net::SocketAddr>().is_err())
                .map(str::to_owned),
        }
    }

    #[test]
    fn a_named_endpoint_reaches_the_dialer_as_the_name() {
        let t0 = Instant::now();
        let mut f = Fleet::new(cfg(), t0);
        f.handle_register(1, "spiffe://x/a", reg("a", None), 0)
            .unwrap();
        f.handle_register(2, "spiffe://x/b", reg("b", Some("node-b.example:4500")), 0)
            .unwrap();
        let view = f.nodes().into_iter().find(|n| n.node_id == "b").unwrap();
        assert_eq!(view.external_host.as_deref(), Some("node-b.example:4500"));
        assert_eq!(view.external_endpoint, None);
        let mut pushed = None;
        while let Some((conn, set)) = f.poll_push(t0 + Duration::from_secs(10)) {
            if conn == 1 {
                pushed = Some(set);
            }
        }
        let set = pushed.expect("a NATed node gets a dial set");
        assert_eq!(set.len(), 1);
        assert_eq!(set[0].node_id, "b");
        assert_eq!(set[0].host.as_deref(), Some("node-b.example:4500"));
        assert_eq!(set[0].target(), "node-b.example:4500");
    }

    fn cfg() -> FleetConfig {
        FleetConfig {
            plan_grace: Duration::from_secs(60),
            startup_hold: Duration::from_secs(10),
            plan: PlanConfig::default(),
        }
    }

    fn drain(f: &mut Fleet, now: Instant) -> Vec<(ConnId, Vec<String>)> {
        let mut v = Vec::new();
        while let Some((c, peers)) = f.poll_push(now) {
            v.push((c, peers.into_iter().map(|p| p.node_id).collect()));
        }
        v.sort();
        v
    }

    #[test]
    fn nothing_is_pushed_during_the_startup_hold_then_each_set_once() {
        let t0 = Instant::now();
        let mut f = Fleet::new(cfg(), t0);
        f.handle_register(1, "spiffe://x/a", reg("a", None), 0)
            .unwrap();
        f.handle_register(2, "spiffe://x/b", reg("b", Some("10.0.0.2:1")), 0)
            .unwrap();
        assert_eq!(f.poll_push(t0 + Duration::from_secs(9)), None);
        let after = t0 + Duration::from_secs(10);
        assert_eq!(
            drain(&mut f, after),
            vec![(1, vec!["b".to_string()]), (2, vec![])]
        );
        // Unchanged: nothing more.
        assert_eq!(drain(&mut f, after), vec![]);
        // A third, NATed node: only it gets a (new) set.
        f.handle_register(3, "spiffe://x/c", reg("c", None), 0)
            .unwrap();
        assert_eq!(drain(&mut f, after), vec![(3, vec!["b".to_string()])]);
    }

    #[test]
    fn disconnected_node_stays_planned_for_the_grace_then_is_dropped() {
        let t0 = Instant::now();
        let mut f = Fleet::new(cfg(), t0);
        let now = t0 + Duration::from_secs(10);
        f.handle_register(1, "spiffe://x/a", reg("a", Some("10.0.0.1:1")), 0)
            .unwrap();
        f.handle_register(2, "spiffe://x/b", reg("b", Some("10.0.0.2:1")), 0)
            .unwrap();
        assert_eq!(
            drain(&mut f, now),
            vec![(1, vec!["b".to_string()]), (2, vec![])]
        );
        f.handle_disconnect(2, now);
        assert!(f.handle_tick(now + Duration::from_secs(59)).is_empty());
        assert_eq!(drain(&mut f, now), vec![], "a keeps dialling b");
        assert!(!f.nodes()[1].connected);
        assert_eq!(
            f.handle_tick(now + Duration::from_secs(60)),
            vec!["b".to_string()]
        );
        assert_eq!(drain(&mut f, now), vec![(1, vec![])]);
        assert_eq!(f.node_count(), 1);
    }

    #[test]
    fn reconnect_gets_a_fresh_push_and_replaces_the_old_connection() {
        let t0 = Instant::now();
        let mut f = Fleet::new(cfg(), t0);
        let now = t0 + Duration::from_secs(10);
        f.handle_register(1, "spiffe://x/a", reg("a", None), 0)
            .unwrap();
        f.handle_register(2, "spiffe://x/b", reg("b", Some("10.0.0.2:1")), 0)
            .unwrap();
        drain(&mut f, now);
        // Same identity, new connection (the old one is half-dead).
        let r = f
            .handle_register(3, "spiffe://x/a", reg("a", None), 5)
            .unwrap();
        assert_eq!(r.replaced, Some(1));
        assert_eq!(drain(&mut f, now), vec![(3, vec!["b".to_string()])]);
        // The old connection's late end does not mark the node disconnected.
        f.handle_disconnect(1, now);
        assert!(f.nodes()[0].connected);
        // Another identity cannot take a live node id.
        assert!(matches!(
            f.handle_register(4, "spiffe://x/evil", reg("a", None), 0),
            Err(FleetError::NodeIdTaken { .. })
        ));
        assert_eq!(
            f.handle_register(3, "spiffe://x/a", reg("a", None), 0),
            Err(FleetError::AlreadyRegistered)
        );
        assert_eq!(
            f.handle_report(99, Report::default(), 0),
            Err(FleetError::NotRegistered)
        );
    }

    #[test]
    fn after_a_restart_a_live_link_survives_its_peer_coming_back_late() {
        let t0 = Instant::now();
        let mut f = Fleet::new(cfg(), t0);
        let after_hold = t0 + Duration::from_secs(10);
        // NATed a comes back first and says it dials b.
        let mut ra = reg("a", None);
        ra.dialing = vec![PeerSpec {
            node_id: "b".into(),
            addr: "10.0.0.2:1".parse().unwrap(),
            server_name: "slim-node".into(),
            expect_spiffe_id: Some("spiffe://x/b".into()),
            host: None,
        }];
        f.handle_register(1, "spiffe://x/a", ra, 0).unwrap();
        assert_eq!(drain(&mut f, after_hold), vec![(1, vec!["b".to_string()])]);
        let b = f.nodes().into_iter().find(|n| n.node_id == "b").unwrap();
        assert!(b.hearsay && !b.connected);
        // b registers late: it replaces the hearsay entry, a's set is unchanged.
        f.handle_register(2, "spiffe://x/b", reg("b", Some("10.0.0.2:1")), 0)
            .unwrap();
        assert_eq!(drain(&mut f, after_hold), vec![(2, vec![])]);
        assert!(!f.nodes()[1].hearsay);
        // Hearsay about a peer that never comes back ends with the grace.
        let mut rc = reg("c", None);
        rc.dialing = vec![PeerSpec {
            node_id: "gone".into(),
            addr: "10.0.0.9:1".parse().unwrap(),
            server_name: "slim-node".into(),
            expect_spiffe_id: Some("spiffe://x/gone".into()),
            host: Some("gone.example:4500".into()),
        }];
        f.handle_register(3, "spiffe://x/c", rc, 0).unwrap();
        assert_eq!(
            drain(&mut f, after_hold),
            vec![(3, vec!["b".to_string(), "gone".to_string()])]
        );
        assert_eq!(
            f.handle_tick(t0 + Duration::from_secs(60)),
            vec!["gone".to_string()]
        );
        assert_eq!(drain(&mut f, after_hold), vec![(3, vec!["b".to_string()])]);
    }

    #[test]
    fn views_come_from_reports() {
        let t0 = Instant::now();
        let mut f = Fleet::new(cfg(), t0);
        f.handle_register(1, "spiffe://x/a", reg("a", None), 1)
            .unwrap();
        f.handle_register(2, "spiffe://x/b", reg("b", Some("10.0.0.2:1")), 1)
            .unwrap();
        let route = |n: &str, c| RouteInfo {
            name: n.into(),
            local_subscribers: c,
            remote_peers: vec![],
        };
        f.handle_report(
            1,
            Report {
                seq: 1,
                links: vec![LinkInfo {
                    link_id: 1,
                    peer_node_id: "b".into(),
                    peer_spiffe_id: Some("spiffe://x/b".into()),
                    remote_addr: "10.0.0.2:1".parse().unwrap(),
                    direction: LinkDirection::Dialled,
                    state: LinkState::Up,
                    up_since_ms: Some(1),
                    frames_in: 0,
                    frames_out: 0,
                    drops: 0,
                }],
                routes: vec![route("o/n/chan", 2), route("o/n/other", 0)],
                last: true,
            },
            7,
        )
        .unwrap();
        f.handle_report(
            2,
            Report {
                seq: 1,
                links: vec![],
                routes: vec![route("o/n/chan", 1)],
                last: true,
            },
            7,
        )
        .unwrap();
        let ch = f.channels();
        assert_eq!(ch.len(), 1);
        assert_eq!(ch[0].name, "o/n/chan");
        assert_eq!(ch[0].subscribers, 3);
        assert_eq!(f.links().len(), 1);
        assert_eq!(f.links_up(), 1);
        let nodes = f.nodes();
        assert_eq!(nodes[0].links_up, 1);
        assert_eq!(nodes[0].last_seen_ms, 7);
        assert_eq!(nodes[0].dials, vec!["b".to_string()]);
        assert_eq!(f.routes("b").unwrap().len(), 1);
        assert!(f.routes("zz").is_none());
    }

    fn up_link(id: u64, peer: &str) -> LinkInfo {
        LinkInfo {
            link_id: id,
            peer_node_id: peer.into(),
            peer_spiffe_id: Some(format!("spiffe://x/{peer}")),
            remote_addr: "10.0.0.2:1".parse().unwrap(),
            direction: LinkDirection::Dialled,
            state: LinkState::Up,
            up_since_ms: Some(1),
            frames_in: 0,
            frames_out: 0,
            drops: 0,
        }
    }

    #[test]
    fn deltas_update_the_view_and_a_gap_asks_for_a_full_report_once() {
        let t0 = Instant::now();
        let mut f = Fleet::new(cfg(), t0);
        f.handle_register(1, "spiffe://x/a", reg("a", None), 1)
            .unwrap();
        // A delta before the first full report cannot be applied.
        let early = ReportDelta {
            seq: 2,
            links: vec![up_link(1, "b")],
            ..Default::default()
        };
        assert_eq!(
            f.handle_report_delta(1, early, 2),
            Err(FleetError::Report(ViewError::NotSynced { got: 2 }))
        );
        assert_eq!(f.poll_resync(), Some(1));
        assert_eq!(f.poll_resync(), None);
        assert!(f.links().is_empty());
        assert_eq!(
            f.nodes()[0].last_seen_ms,
            2,
            "a refused delta still says it is alive"
        );
        f.handle_report(
            1,
            Report {
                seq: 3,
                last: true,
                ..Default::default()
            },
            3,
        )
        .unwrap();
        f.handle_report_delta(
            1,
            ReportDelta {
                seq: 4,
                links: vec![up_link(1, "b")],
                ..Default::default()
            },
            4,
        )
        .unwrap();
        assert_eq!(f.links_up(), 1);
        assert_eq!(f.nodes()[0].links_up, 1);
        f.handle_report_delta(
            1,
            ReportDelta {
                seq: 5,
                links_removed: vec![1],
                ..Default::default()
            },
            5,
        )
        .unwrap();
        assert!(f.links().is_empty());
        // 6 went missing: 7 and 8 are refused, one request goes out.
        for seq in [7, 8] {
            assert!(
                f.handle_report_delta(
                    1,
                    ReportDelta {
                        seq,
                        ..Default::default()
                    },
                    6
                )
                .is_err()
            );
        }
        assert_eq!(f.poll_resync(), Some(1));
        assert_eq!(f.poll_resync(), None);
        // A connection that ended is not asked.
        f.handle_report(
            1,
            Report {
                seq: 9,
                last: true,
                ..Default::default()
            },
            7,
        )
        .unwrap();
        f.handle_report_delta(
            1,
            ReportDelta {
                seq: 1,
                ..Default::default()
            },
            7,
        )
        .unwrap_err();
        f.handle_disconnect(1, t0);
        assert_eq!(f.poll_resync(), None);
        assert_eq!(
            f.handle_report_delta(1, ReportDelta::default(), 0),
            Err(FleetError::NotRegistered)
        );
    }

    #[test]
    fn a_fleet_sized_link_list_is_answered_in_pages_under_the_frame_limit() {
        use crate::proto::{AdminResponse, Limits, ToCaller, encode, piece_budget};
        // 200 nodes with 25 links each: 5,000 links in the view.
        let t0 = Instant::now();
        let mut f = Fleet::new(cfg(), t0);
        for n in 0..200u64 {
            let id = format!("node-{n:03}");
            f.handle_register(n, &format!("spiffe://x/{id}"), reg(&id, None), 1)
                .unwrap();
            let links = (0..25).map(|i| up_link(i, &format!("node-{:03}", (n + i + 1) % 200)));
            f.handle_report(
                n,
                Report {
                    seq: 1,
                    links: links.collect(),
                    routes: vec![],
                    last: true,
                },
                1,
            )
            .unwrap();
        }
        let view = f.links();
        assert_eq!(view.len(), 5000);
        let limits = Limits {
            max_frame: 128 << 10,
        };
        let answer = AdminResponse::Links(view);
        let mut whole = Vec::new();
        assert!(
            encode(&ToCaller::Admin(answer.clone()), &limits, &mut whole).is_err(),
            "as one frame it would exceed the limit"
        );
        let pages = answer.clone().into_pages(piece_budget(&limits));
        assert!(pages.len() >= 3, "{} pages", pages.len());
        let mut merged: Option<AdminResponse> = None;
        for page in pages {
            let mut out = Vec::new();
            encode(&ToCaller::AdminPart(page.clone()), &limits, &mut out).unwrap();
            assert!(out.len() < limits.max_frame as usize);
            match &mut merged {
                Some(m) => m.merge(page).unwrap(),
                None => merged = Some(page),
            }
        }
        assert_eq!(merged, Some(answer));
    }

    #[test]
    fn one_more_node_in_a_fleet_of_50_pushes_to_few_nodes() {
        let t0 = Instant::now();
        let after = t0 + Duration::from_secs(10);
        let max = PlanConfig::default().max_degree;
        for (newcomer, ext) in [("n25x", Some("10.0.1.1:1")), ("n25y", None)] {
            let mut f = Fleet::new(cfg(), t0);
            for i in 0..50u64 {
                let id = format!("n{i:02}");
                let addr = format!("10.0.0.{}:1", i + 1);
                // One in three NATed.
                let r = reg(&id, (i % 3 != 2).then_some(addr.as_str()));
                f.handle_register(i, &format!("spiffe://x/{id}"), r, 0)
                    .unwrap();
            }
            assert_eq!(drain(&mut f, after).len(), 50);
            let links_before = f.plan().link_count();
            f.handle_register(50, "spiffe://x/new", reg(newcomer, ext), 0)
                .unwrap();
            let pushes = drain(&mut f, after);
            eprintln!(
                "{newcomer} joins 50 nodes ({links_before} links): {} pushes",
                pushes.len()
            );
            assert!(pushes.iter().any(|(c, _)| *c == 50));
            assert!(pushes.len() <= 2 * max, "{pushes:?}");
            // Each push is the node's whole set, as planned.
            for (c, peers) in &pushes {
                let id = f.node_of(*c).unwrap();
                let planned: Vec<String> = f.plan().dials[id]
                    .iter()
                    .map(|p| p.node_id.clone())
                    .collect();
                assert_eq!(peers, &planned);
            }
            assert_eq!(drain(&mut f, after), vec![]);
        }
    }
}
