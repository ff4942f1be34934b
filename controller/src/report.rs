//! The node's half of reporting, sans-IO: snapshots of the node's links and
//! routes in, report messages out (the node's controller link is the driver).
//!
//! After [`ReportTracker::handle_resync`] (a new connection, or the
//! controller's `SendReport`) the next update is a full report, cut into
//! parts; after that an update yields only what changed since the previous
//! one, as numbered deltas, and nothing when nothing changed. Changes of a
//! link's traffic counters alone are not worth a message of their own: they
//! go with the next delta, or once per `refresh`, when an empty delta also
//! tells the controller the node is still there.
//!
//! The tracker keeps what it last reported (the controller's view of this
//! node), so a route snapshot is only needed when the node's routes changed.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::proto::{LinkInfo, Pager, Report, ReportDelta, RouteInfo, ToController};

#[derive(Debug, Clone)]
pub struct TrackerConfig {
    /// Counter-only link changes, or an empty delta when nothing changed,
    /// go out this often.
    pub refresh: Duration,
    /// Target encoded size of one message (see [`crate::proto::PIECE_BYTES`]).
    pub piece_bytes: usize,
}

/// What a node last reported, and the numbering of its reports.
#[derive(Debug)]
pub struct ReportTracker {
    cfg: TrackerConfig,
    /// Number of the last report part or delta produced.
    seq: u64,
    /// The controller holds `links`/`routes` (false: a full report is due).
    synced: bool,
    links: BTreeMap<u64, LinkInfo>,
    routes: HashMap<String, (u64, Vec<String>)>,
    refresh_due: Instant,
}

impl ReportTracker {
    pub fn new(cfg: TrackerConfig, now: Instant) -> ReportTracker {
        ReportTracker {
            refresh_due: now + cfg.refresh,
            cfg,
            seq: 0,
            synced: false,
            links: BTreeMap::new(),
            routes: HashMap::new(),
        }
    }

    /// The controller does not (or no longer) hold our state: the next
    /// update is a full report.
    pub fn handle_resync(&mut self) {
        self.synced = false;
    }

    /// The node's current links, and its routes if they may have changed
    /// since the previous call (`None`: unchanged, the last ones still hold;
    /// the first call must pass them). Returns the messages to send, in order.
    pub fn update(
        &mut self,
        now: Instant,
        links: Vec<LinkInfo>,
        routes: Option<Vec<RouteInfo>>,
    ) -> Vec<ToController> {
        let refresh = now >= self.refresh_due;
        if refresh {
            self.refresh_due = now + self.cfg.refresh;
        }
        let routes = routes.map(|r| {
            r.into_iter()
                .map(|r| (r.name, (r.local_subscribers, r.remote_peers)))
                .collect::<HashMap<_, _>>()
        });
        if !self.synced {
            self.links = links.into_iter().map(|l| (l.link_id, l)).collect();
            if let Some(r) = routes {
                self.routes = r;
            }
            self.synced = true;
            self.refresh_due = now + self.cfg.refresh;
            return self.full_report();
        }
        let mut d = ReportDelta::default();
        let mut now_links: BTreeMap<u64, LinkInfo> =
            links.into_iter().map(|l| (l.link_id, l)).collect();
        self.links.retain(|id, _| {
            let keep = now_links.contains_key(id);
            if !keep {
                d.links_removed.push(*id);
            }
            keep
        });
        for (id, l) in std::mem::take(&mut now_links) {
            match self.links.get_mut(&id) {
                Some(old) if *old == l => {}
                // Counters alone: wait for the refresh (or the next delta).
                Some(old) if old.same_but_counters(&l) && !refresh => {}
                Some(old) => {
                    d.links.push(l.clone());
                    *old = l;
                }
                None => {
                    d.links.push(l.clone());
                    self.links.insert(id, l);
                }
            }
        }
        if let Some(new) = routes {
            for (name, e) in &new {
                if self.routes.get(name) != Some(e) {
                    d.routes.push(RouteInfo {
                        name: name.clone(),
                        local_subscribers: e.0,
                        remote_peers: e.1.clone(),
                    });
                }
            }
            d.routes_removed.extend(
                self.routes
                    .keys()
                    .filter(|n| !new.contains_key(*n))
                    .cloned(),
            );
            d.routes.sort_by(|a, b| a.name.cmp(&b.name));
            d.routes_removed.sort();
            self.routes = new;
        }
        if d.is_empty() && !refresh {
            return Vec::new();
        }
        self.split_delta(d)
    }

    fn next_seq(&mut self) -> u64 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn full_report(&mut self) -> Vec<ToController> {
        let seq = self.next_seq();
        let mut pager = Pager::new(self.cfg.piece_bytes);
        let mut parts = vec![Report {
            seq,
            ..Default::default()
        }];
        let new_part = || Report {
            seq,
            ..Default::default()
        };
        for l in self.links.values() {
            if pager.next_piece(l) {
                parts.push(new_part());
            }
            if let Some(p) = parts.last_mut() {
                p.links.push(l.clone());
            }
        }
        let mut names: Vec<&String> = self.routes.keys().collect();
        names.sort();
        for name in names {
            let (local, peers) = &self.routes[name];
            let r = RouteInfo {
                name: name.clone(),
                local_subscribers: *local,
                remote_peers: peers.clone(),
            };
            if pager.next_piece(&r) {
                parts.push(new_part());
            }
            if let Some(p) = parts.last_mut() {
                p.routes.push(r);
            }
        }
        if let Some(p) = parts.last_mut() {
            p.last = true;
        }
        parts.into_iter().map(ToController::Report).collect()
    }

    /// One delta, or several consecutive ones when it is large.
    fn split_delta(&mut self, d: ReportDelta) -> Vec<ToController> {
        let mut pager = Pager::new(self.cfg.piece_bytes);
        let mut out = vec![ReportDelta::default()];
        for id in d.links_removed {
            piece(&mut out, pager.next_piece(&id))
                .links_removed
                .push(id);
        }
        for l in d.links {
            piece(&mut out, pager.next_piece(&l)).links.push(l);
        }
        for n in d.routes_removed {
            piece(&mut out, pager.next_piece(&n)).routes_removed.push(n);
        }
        for r in d.routes {
            piece(&mut out, pager.next_piece(&r)).routes.push(r);
        }
        out.into_iter()
            .map(|mut d| {
                d.seq = self.next_seq();
                ToController::ReportDelta(d)
            })
            .collect()
    }
}

/// The delta being filled (`out` is never empty), after starting a new one
/// if `new`.
fn piece(out: &mut Vec<ReportDelta>, new: bool) -> &mut ReportDelta {
    if new || out.is_empty() {
        out.push(ReportDelta::default());
    }
    let last = out.len() - 1;
    &mut out[last]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{LinkDirection, LinkState, encoded_len};
    use crate::view::NodeReports;
    use proptest::prelude::*;

    fn cfg() -> TrackerConfig {
        TrackerConfig {
            refresh: Duration::from_secs(10),
            piece_bytes: 16 << 10,
        }
    }

    fn link(id: u64, state: LinkState, frames: u64) -> LinkInfo {
        LinkInfo {
            link_id: id,
            peer_node_id: format!("peer-{id}"),
            peer_spiffe_id: None,
            remote_addr: "10.0.0.1:4500".parse().unwrap(),
            direction: LinkDirection::Accepted,
            state,
            up_since_ms: None,
            frames_in: frames,
            frames_out: frames,
            drops: 0,
        }
    }

    fn route(name: &str, local: u64) -> RouteInfo {
        RouteInfo {
            name: name.into(),
            local_subscribers: local,
            remote_peers: vec!["b".into()],
        }
    }

    fn deltas(msgs: &[ToController]) -> Vec<&ReportDelta> {
        msgs.iter()
            .map(|m| match m {
                ToController::ReportDelta(d) => d,
                other => panic!("not a delta: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn full_report_first_then_only_changes_and_nothing_when_nothing_changed() {
        let t0 = Instant::now();
        let mut t = ReportTracker::new(cfg(), t0);
        let msgs = t.update(
            t0,
            vec![link(1, LinkState::Connecting, 0)],
            Some(vec![route("a/b/c", 1)]),
        );
        assert_eq!(
            msgs,
            vec![ToController::Report(Report {
                seq: 1,
                links: vec![link(1, LinkState::Connecting, 0)],
                routes: vec![route("a/b/c", 1)],
                last: true,
            })]
        );
        let t1 = t0 + Duration::from_millis(200);
        assert!(
            t.update(t1, vec![link(1, LinkState::Connecting, 0)], None)
                .is_empty()
        );
        // The link comes up: a delta, numbered on.
        let msgs = t.update(t1, vec![link(1, LinkState::Up, 0)], None);
        let d = deltas(&msgs);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].seq, 2);
        assert_eq!(d[0].links, vec![link(1, LinkState::Up, 0)]);
        // Counters alone: not now...
        assert!(
            t.update(t1, vec![link(1, LinkState::Up, 50)], None)
                .is_empty()
        );
        // ...but with the refresh.
        let t2 = t0 + Duration::from_secs(10);
        let msgs = t.update(t2, vec![link(1, LinkState::Up, 60)], None);
        assert_eq!(deltas(&msgs)[0].links, vec![link(1, LinkState::Up, 60)]);
        // Nothing at all changed at the next refresh: an empty delta (alive).
        let t3 = t2 + Duration::from_secs(10);
        let msgs = t.update(t3, vec![link(1, LinkState::Up, 60)], None);
        let d = deltas(&msgs);
        assert!(d[0].is_empty());
        assert_eq!(d[0].seq, 4);
        // Routes: added, changed, removed; the link went away.
        let msgs = t.update(t3, vec![], Some(vec![route("a/b/c", 2), route("a/b/d", 1)]));
        let d = deltas(&msgs);
        assert_eq!(d[0].links_removed, vec![1]);
        assert_eq!(d[0].routes, vec![route("a/b/c", 2), route("a/b/d", 1)]);
        let msgs = t.update(t3, vec![], Some(vec![route("a/b/d", 1)]));
        assert_eq!(deltas(&msgs)[0].routes_removed, vec!["a/b/c".to_string()]);
        assert!(deltas(&msgs)[0].routes.is_empty());
    }

    #[test]
    fn a_resync_sends_everything_again_from_what_is_known() {
        let t0 = Instant::now();
        let mut t = ReportTracker::new(cfg(), t0);
        t.update(t0, vec![], Some(vec![route("a/b/c", 1)]));
        t.handle_resync();
        // Routes unchanged (None): the full report still carries them.
        let msgs = t.update(t0, vec![link(3, LinkState::Up, 0)], None);
        assert_eq!(
            msgs,
            vec![ToController::Report(Report {
                seq: 2,
                links: vec![link(3, LinkState::Up, 0)],
                routes: vec![route("a/b/c", 1)],
                last: true,
            })]
        );
    }

    #[test]
    fn large_reports_and_deltas_come_in_pieces_under_the_budget() {
        let t0 = Instant::now();
        let mut t = ReportTracker::new(cfg(), t0);
        let many = |n: u64, local: u64| -> Vec<RouteInfo> {
            (0..n)
                .map(|i| route(&format!("acme/app/name-{i:06}"), local))
                .collect()
        };
        let msgs = t.update(t0, vec![], Some(many(20_000, 1)));
        assert!(msgs.len() > 10, "{} parts", msgs.len());
        let mut view = NodeReports::default();
        for (i, m) in msgs.iter().enumerate() {
            assert!(encoded_len(m) < 2 * cfg().piece_bytes);
            let ToController::Report(p) = m else {
                panic!("{m:?}")
            };
            assert_eq!(p.seq, 1);
            assert_eq!(p.last, i + 1 == msgs.len());
            view.handle_part(p.clone());
        }
        assert_eq!(view.routes().count(), 20_000);
        // Every name changes: consecutive deltas.
        let msgs = t.update(t0, vec![], Some(many(20_000, 2)));
        assert!(msgs.len() > 10);
        for (i, m) in msgs.iter().enumerate() {
            assert!(encoded_len(m) < 2 * cfg().piece_bytes);
            let ToController::ReportDelta(d) = m else {
                panic!("{m:?}")
            };
            assert_eq!(d.seq, 2 + i as u64);
            view.handle_delta(d.clone()).unwrap();
        }
        assert!(view.routes().all(|r| r.local_subscribers == 2));
    }

    #[derive(Debug, Clone)]
    enum Op {
        AddLink(u8),
        DropLink(u8),
        LinkUp(u8),
        Traffic(u8),
        AddRoute(u8, u8),
        DropRoute(u8),
        Resync,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            any::<u8>().prop_map(Op::AddLink),
            any::<u8>().prop_map(Op::DropLink),
            any::<u8>().prop_map(Op::LinkUp),
            any::<u8>().prop_map(Op::Traffic),
            (any::<u8>(), 0u8..4).prop_map(|(n, l)| Op::AddRoute(n, l)),
            any::<u8>().prop_map(Op::DropRoute),
            Just(Op::Resync),
        ]
    }

    proptest! {
        /// Whatever happens on the node, after each refresh the
        /// controller's view (fed only the tracker's messages) equals the
        /// node's state.
        #[test]
        fn the_controller_view_follows_the_node(ops in proptest::collection::vec(op(), 1..60)) {
            let t0 = Instant::now();
            let mut t = ReportTracker::new(TrackerConfig { refresh: Duration::from_secs(1), piece_bytes: 256 }, t0);
            let mut view = NodeReports::default();
            let mut links: BTreeMap<u64, LinkInfo> = BTreeMap::new();
            let mut routes: BTreeMap<String, u64> = BTreeMap::new();
            let mut now = t0;
            for (step, op) in ops.into_iter().enumerate() {
                let mut routes_changed = step == 0;
                // Even steps are a refresh apart (counters due), odd steps
                // follow 1 ms later (counters may lag, unless resynced).
                now += Duration::from_millis(if step % 2 == 0 { 1000 } else { 1 });
                let exact = step % 2 == 0 || matches!(op, Op::Resync);
                match op {
                    Op::AddLink(i) => { links.entry(u64::from(i % 16)).or_insert_with(|| link(u64::from(i % 16), LinkState::Connecting, 0)); }
                    Op::DropLink(i) => { links.remove(&u64::from(i % 16)); }
                    Op::LinkUp(i) => if let Some(l) = links.get_mut(&u64::from(i % 16)) { l.state = LinkState::Up },
                    Op::Traffic(i) => if let Some(l) = links.get_mut(&u64::from(i % 16)) { l.frames_in += 1 },
                    Op::AddRoute(n, l) => { routes.insert(format!("a/b/{}", n % 32), u64::from(l)); routes_changed = true; }
                    Op::DropRoute(n) => { routes.remove(&format!("a/b/{}", n % 32)); routes_changed = true; }
                    Op::Resync => t.handle_resync(),
                }
                let snapshot_routes = routes_changed.then(|| routes.iter().map(|(n, l)| route(n, *l)).collect());
                for m in t.update(now, links.values().cloned().collect(), snapshot_routes) {
                    prop_assert!(encoded_len(&m) < 1024);
                    match m {
                        ToController::Report(p) => view.handle_part(p),
                        ToController::ReportDelta(d) => view.handle_delta(d).unwrap(),
                        other => panic!("{other:?}"),
                    }
                }
                prop_assert!(view.is_synced());
                let got_routes: Vec<(String, u64)> = view.routes().map(|r| (r.name, r.local_subscribers)).collect();
                let want_routes: Vec<(String, u64)> = routes.iter().map(|(n, l)| (n.clone(), *l)).collect();
                prop_assert_eq!(got_routes, want_routes);
                let got: Vec<LinkInfo> = view.links().cloned().collect();
                let want: Vec<LinkInfo> = links.values().cloned().collect();
                if exact {
                    prop_assert_eq!(got, want);
                } else {
                    // Between refreshes only the counters may lag.
                    prop_assert_eq!(got.len(), want.len());
                    for (g, w) in got.iter().zip(&want) {
                        prop_assert!(g.same_but_counters(w));
                    }
                }
            }
        }
    }
}
