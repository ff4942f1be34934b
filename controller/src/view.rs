//! One node's reported state as the controller holds it, sans-IO: a full
//! report (in parts) replaces it, numbered deltas patch it. A delta that
//! does not follow on the state's number cannot be applied (something was
//! missed); the state is then out of step until the next full report, which
//! the fleet asks the node for, once per episode.
//!
//! Bounded: at most [`MAX_LINKS_PER_NODE`] links and [`MAX_ROUTES_PER_NODE`]
//! names are kept per node; beyond that new entries are dropped and the
//! state is flagged truncated until a full report fits again.

use std::collections::BTreeMap;

use crate::proto::{LinkInfo, LinkState, Report, ReportDelta, RouteInfo};

/// Why a report delta was not applied (the node is then asked for a full
/// report).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ViewError {
    /// A delta before any full report on this connection.
    #[error("report delta {got} before a full report")]
    NotSynced { got: u64 },
    /// A delta that does not follow on the last one (one was missed).
    #[error("report delta {got} where {expected} was due")]
    OutOfStep { expected: u64, got: u64 },
}

/// Most links kept per node (a full mesh of a very large fleet).
pub const MAX_LINKS_PER_NODE: usize = 100_000;
/// Most names kept per node.
pub const MAX_ROUTES_PER_NODE: usize = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
struct RouteEntry {
    local_subscribers: u64,
    remote_peers: Vec<String>,
}

/// Links and routes of one node.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct State {
    links: BTreeMap<u64, LinkInfo>,
    routes: BTreeMap<String, RouteEntry>,
    truncated: bool,
}

impl State {
    fn set_link(&mut self, l: LinkInfo) {
        if self.links.len() >= MAX_LINKS_PER_NODE && !self.links.contains_key(&l.link_id) {
            self.truncated = true;
            return;
        }
        self.links.insert(l.link_id, l);
    }

    fn set_route(&mut self, r: RouteInfo) {
        let entry = RouteEntry {
            local_subscribers: r.local_subscribers,
            remote_peers: r.remote_peers,
        };
        let full = self.routes.len() >= MAX_ROUTES_PER_NODE;
        match self.routes.get_mut(&r.name) {
            Some(e) => *e = entry,
            None if full => self.truncated = true,
            None => {
                self.routes.insert(r.name, entry);
            }
        }
    }
}

/// What the controller knows of one node's links and routes.
#[derive(Debug, Default)]
pub struct NodeReports {
    state: State,
    /// Number of `state`; `None` while no usable state exists (before the
    /// first full report, and after a delta that did not follow on).
    synced: Option<u64>,
    /// A full report being received: its number and the parts so far. The
    /// previous state stays visible until its last part.
    incoming: Option<(u64, State)>,
    /// A full report was asked for and has not completed yet.
    asked: bool,
}

impl NodeReports {
    /// One part of a full report.
    pub fn handle_part(&mut self, part: Report) {
        let fresh = !matches!(&self.incoming, Some((seq, _)) if *seq == part.seq);
        if fresh {
            self.incoming = Some((part.seq, State::default()));
        }
        let Some((_, st)) = self.incoming.as_mut() else {
            return;
        };
        for l in part.links {
            st.set_link(l);
        }
        for r in part.routes {
            st.set_route(r);
        }
        if part.last
            && let Some((seq, st)) = self.incoming.take()
        {
            self.state = st;
            self.synced = Some(seq);
            self.asked = false;
        }
    }

    /// A delta; applied only if it follows on the current state.
    pub fn handle_delta(&mut self, d: ReportDelta) -> Result<(), ViewError> {
        let expected = match self.synced {
            None => return Err(ViewError::NotSynced { got: d.seq }),
            Some(s) => s.wrapping_add(1),
        };
        if d.seq != expected {
            self.synced = None;
            return Err(ViewError::OutOfStep {
                expected,
                got: d.seq,
            });
        }
        let st = &mut self.state;
        for id in d.links_removed {
            st.links.remove(&id);
        }
        for l in d.links {
            st.set_link(l);
        }
        for name in d.routes_removed {
            st.routes.remove(&name);
        }
        for r in d.routes {
            st.set_route(r);
        }
        self.synced = Some(d.seq);
        Ok(())
    }

    /// Whether to ask the node for a full report now: true once after the
    /// state went out of step, until a full report completes.
    pub fn take_ask(&mut self) -> bool {
        if self.synced.is_some() || self.asked {
            return false;
        }
        self.asked = true;
        true
    }

    /// The state follows the node (a full report arrived, no delta missed).
    pub fn is_synced(&self) -> bool {
        self.synced.is_some()
    }

    /// Some links or names were dropped at the per-node bound.
    pub fn truncated(&self) -> bool {
        self.state.truncated
    }

    pub fn links(&self) -> impl Iterator<Item = &LinkInfo> {
        self.state.links.values()
    }

    pub fn links_up(&self) -> usize {
        self.links().filter(|l| l.state == LinkState::Up).count()
    }

    /// Every route, in name order.
    pub fn routes(&self) -> impl Iterator<Item = RouteInfo> + '_ {
        self.state.routes.iter().map(|(name, e)| RouteInfo {
            name: name.clone(),
            local_subscribers: e.local_subscribers,
            remote_peers: e.remote_peers.clone(),
        })
    }

    /// `(name, local subscribers)` of names with local subscribers.
    pub fn local_names(&self) -> impl Iterator<Item = (&str, u64)> {
        self.state
            .routes
            .iter()
            .filter(|(_, e)| e.local_subscribers > 0)
            .map(|(n, e)| (n.as_str(), e.local_subscribers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::LinkDirection;

    fn link(id: u64, peer: &str, state: LinkState) -> LinkInfo {
        LinkInfo {
            link_id: id,
            peer_node_id: peer.into(),
            peer_spiffe_id: None,
            remote_addr: "10.0.0.1:4500".parse().unwrap(),
            direction: LinkDirection::Dialled,
            state,
            up_since_ms: None,
            frames_in: 0,
            frames_out: 0,
            drops: 0,
        }
    }

    fn route(name: &str, local: u64) -> RouteInfo {
        RouteInfo {
            name: name.into(),
            local_subscribers: local,
            remote_peers: vec![],
        }
    }

    fn full(seq: u64, links: Vec<LinkInfo>, routes: Vec<RouteInfo>) -> Report {
        Report {
            seq,
            links,
            routes,
            last: true,
        }
    }

    #[test]
    fn parts_build_the_state_and_the_old_one_stays_until_the_last_part() {
        let mut n = NodeReports::default();
        n.handle_part(full(1, vec![link(1, "a", LinkState::Up)], vec![]));
        assert!(n.is_synced());
        n.handle_part(Report {
            seq: 5,
            links: vec![link(2, "b", LinkState::Up)],
            routes: vec![route("x/y/1", 1)],
            last: false,
        });
        // Still the previous state while the parts arrive.
        assert_eq!(n.links().map(|l| l.link_id).collect::<Vec<_>>(), [1]);
        n.handle_part(Report {
            seq: 5,
            links: vec![link(3, "c", LinkState::Connecting)],
            routes: vec![route("x/y/2", 0)],
            last: true,
        });
        assert_eq!(n.links().map(|l| l.link_id).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(n.routes().count(), 2);
        assert_eq!(n.local_names().collect::<Vec<_>>(), [("x/y/1", 1)]);
        assert_eq!(n.links_up(), 1);
        // The next delta continues from 5.
        assert!(
            n.handle_delta(ReportDelta {
                seq: 6,
                ..Default::default()
            })
            .is_ok()
        );
    }

    #[test]
    fn deltas_patch_links_and_routes() {
        let mut n = NodeReports::default();
        n.handle_part(full(
            10,
            vec![
                link(1, "a", LinkState::Connecting),
                link(2, "b", LinkState::Up),
            ],
            vec![route("x/y/1", 1), route("x/y/2", 2)],
        ));
        n.handle_delta(ReportDelta {
            seq: 11,
            links: vec![link(1, "a", LinkState::Up), link(7, "c", LinkState::Up)],
            links_removed: vec![2],
            routes: vec![route("x/y/2", 5), route("x/y/3", 1)],
            routes_removed: vec!["x/y/1".into()],
        })
        .unwrap();
        let links: Vec<(u64, LinkState)> = n.links().map(|l| (l.link_id, l.state)).collect();
        assert_eq!(links, [(1, LinkState::Up), (7, LinkState::Up)]);
        assert_eq!(
            n.local_names().collect::<Vec<_>>(),
            [("x/y/2", 5), ("x/y/3", 1)]
        );
        // Removing what is not there is harmless.
        n.handle_delta(ReportDelta {
            seq: 12,
            links_removed: vec![99],
            routes_removed: vec!["nope".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(n.links().count(), 2);
    }

    #[test]
    fn a_delta_out_of_step_or_before_any_report_asks_once_for_a_full_report() {
        let mut n = NodeReports::default();
        let d = |seq| ReportDelta {
            seq,
            links: vec![link(1, "a", LinkState::Up)],
            ..Default::default()
        };
        assert_eq!(n.handle_delta(d(3)), Err(ViewError::NotSynced { got: 3 }));
        assert!(n.take_ask());
        assert!(!n.take_ask(), "asked once");
        assert_eq!(n.links().count(), 0, "nothing applied");
        n.handle_part(full(4, vec![], vec![]));
        assert!(!n.take_ask());
        n.handle_delta(d(5)).unwrap();
        // A gap: 6 is missing.
        assert_eq!(
            n.handle_delta(d(7)),
            Err(ViewError::OutOfStep {
                expected: 6,
                got: 7
            })
        );
        assert!(n.take_ask());
        // Deltas already on their way are refused too, without asking again.
        assert!(n.handle_delta(d(8)).is_err());
        assert!(!n.take_ask());
        // The stale view stays visible meanwhile.
        assert_eq!(n.links().count(), 1);
        n.handle_part(full(9, vec![], vec![route("x/y/z", 1)]));
        assert!(n.is_synced());
        assert_eq!(n.links().count(), 0);
        n.handle_delta(d(10)).unwrap();
    }

    #[test]
    fn the_per_node_bounds_hold_and_flag_truncation() {
        let mut n = NodeReports::default();
        n.handle_part(full(1, vec![], vec![]));
        let mut st = State::default();
        for i in 0..MAX_LINKS_PER_NODE as u64 + 3 {
            st.set_link(link(i, "p", LinkState::Up));
        }
        assert_eq!(st.links.len(), MAX_LINKS_PER_NODE);
        assert!(st.truncated);
        // Replacing an existing link at the bound is still allowed.
        st.set_link(link(0, "q", LinkState::Backoff));
        assert_eq!(st.links[&0].peer_node_id, "q");
        assert!(!n.truncated());
    }
}
