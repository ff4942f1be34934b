//! Link planning: who dials whom. A pure function of the registered nodes.
//!
//! Rules:
//! - a node with an external endpoint is *reachable*; one without is behind
//!   NAT or a firewall and only ever dials out;
//! - two reachable nodes: the one with the lower node id dials (one link per
//!   pair; a link carries traffic both ways);
//! - a NATed node dials every reachable node. Two NATed nodes never link
//!   directly: they reach each other through any reachable node (the data
//!   plane forwards multi-hop and is loop-free).
//!
//! So the reachable nodes form a clique and every NATed node hangs off all of
//! them: the graph is connected whenever at least one node is reachable,
//! and losing any one reachable node leaves it connected when there are two
//! or more. With no reachable node at all and two or more nodes, no plan can
//! connect them ([`Plan::disconnected`]). Full mesh costs O(n²) links, fine
//! for tens of clusters; larger fleets would want a sparser (e.g. k-regular)
//! overlay.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::proto::PeerSpec;

/// What planning needs to know about a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanNode {
    pub node_id: String,
    pub external_endpoint: Option<SocketAddr>,
    pub server_name: String,
    /// The SPIFFE ID it presented to the controller; dialers pin it.
    pub spiffe_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// For every planned node, the peers it dials (sorted by node id). Every
    /// input node has an entry, possibly empty.
    pub dials: BTreeMap<String, Vec<PeerSpec>>,
    /// Two or more nodes and none reachable: they cannot be linked.
    pub disconnected: bool,
}

impl Plan {
    /// Number of links (each dialled by exactly one side).
    pub fn link_count(&self) -> usize {
        self.dials.values().map(Vec::len).sum()
    }
}

/// Plans the links between `nodes` (node ids must be unique; the order of the
/// input does not matter).
pub fn plan(nodes: &[PlanNode]) -> Plan {
    let mut sorted: Vec<&PlanNode> = nodes.iter().collect();
    sorted.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    let mut dials: BTreeMap<String, Vec<PeerSpec>> = BTreeMap::new();
    for n in &sorted {
        let mut out = Vec::new();
        for m in &sorted {
            if m.node_id == n.node_id {
                continue;
            }
            let Some(addr) = m.external_endpoint else {
                continue;
            };
            // m is reachable. n dials it if n is NATed, or if both are
            // reachable and n has the lower id.
            let dial = match n.external_endpoint {
                None => true,
                Some(_) => n.node_id < m.node_id,
            };
            if dial {
                out.push(PeerSpec {
                    node_id: m.node_id.clone(),
                    addr,
                    server_name: m.server_name.clone(),
                    expect_spiffe_id: Some(m.spiffe_id.clone()),
                });
            }
        }
        dials.insert(n.node_id.clone(), out);
    }
    let disconnected = sorted.len() >= 2 && sorted.iter().all(|n| n.external_endpoint.is_none());
    Plan {
        dials,
        disconnected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeSet, HashMap};

    fn node(id: &str, ext: Option<&str>) -> PlanNode {
        PlanNode {
            node_id: id.into(),
            external_endpoint: ext.map(|a| a.parse().unwrap()),
            server_name: format!("{id}.example"),
            spiffe_id: format!("spiffe://acme/{id}/node/{id}"),
        }
    }

    fn pairs(p: &Plan) -> Vec<(String, String)> {
        let mut v: Vec<_> = p
            .dials
            .iter()
            .flat_map(|(from, to)| to.iter().map(move |t| (from.clone(), t.node_id.clone())))
            .collect();
        v.sort();
        v
    }

    fn connected(nodes: &[PlanNode], p: &Plan) -> bool {
        let ids: Vec<&str> = nodes.iter().map(|n| n.node_id.as_str()).collect();
        let mut adj: HashMap<&str, Vec<&str>> = HashMap::new();
        for (a, bs) in &p.dials {
            for b in bs {
                adj.entry(a.as_str()).or_default().push(b.node_id.as_str());
                adj.entry(b.node_id.as_str()).or_default().push(a.as_str());
            }
        }
        let Some(first) = ids.first() else {
            return true;
        };
        let mut seen = BTreeSet::from([*first]);
        let mut stack = vec![*first];
        while let Some(x) = stack.pop() {
            for y in adj.get(x).into_iter().flatten() {
                if seen.insert(y) {
                    stack.push(y);
                }
            }
        }
        seen.len() == ids.len()
    }

    #[test]
    fn natted_node_dials_the_reachable_one() {
        let nodes = [node("a", None), node("b", Some("10.0.0.2:4500"))];
        let p = plan(&nodes);
        assert_eq!(pairs(&p), vec![("a".into(), "b".into())]);
        let spec = &p.dials["a"][0];
        assert_eq!(spec.addr, "10.0.0.2:4500".parse().unwrap());
        assert_eq!(spec.server_name, "b.example");
        assert_eq!(
            spec.expect_spiffe_id.as_deref(),
            Some("spiffe://acme/b/node/b")
        );
        assert!(p.dials["b"].is_empty());
        assert!(!p.disconnected);
    }

    #[test]
    fn natted_node_dials_even_a_lower_id() {
        // The id rule applies only between two reachable nodes.
        let nodes = [node("z", None), node("a", Some("10.0.0.1:1"))];
        assert_eq!(pairs(&plan(&nodes)), vec![("z".into(), "a".into())]);
    }

    #[test]
    fn two_reachable_nodes_lower_id_dials_once() {
        let nodes = [node("b", Some("10.0.0.2:1")), node("a", Some("10.0.0.1:1"))];
        assert_eq!(pairs(&plan(&nodes)), vec![("a".into(), "b".into())]);
    }

    #[test]
    fn two_natted_spokes_meet_at_the_hub() {
        let nodes = [
            node("spoke-a", None),
            node("hub", Some("10.0.0.1:4500")),
            node("spoke-b", None),
        ];
        let p = plan(&nodes);
        assert_eq!(
            pairs(&p),
            vec![
                ("spoke-a".into(), "hub".into()),
                ("spoke-b".into(), "hub".into())
            ]
        );
        assert!(connected(&nodes, &p));
    }

    #[test]
    fn only_natted_nodes_cannot_be_linked() {
        let nodes = [node("a", None), node("b", None)];
        let p = plan(&nodes);
        assert!(p.disconnected);
        assert_eq!(p.link_count(), 0);
        assert_eq!(p.dials.len(), 2);
        // One node alone is trivially fine.
        assert!(!plan(&nodes[..1]).disconnected);
    }

    #[test]
    fn input_order_does_not_matter() {
        let mut nodes = vec![
            node("c", Some("10.0.0.3:1")),
            node("a", None),
            node("b", Some("10.0.0.2:1")),
            node("d", None),
        ];
        let p1 = plan(&nodes);
        nodes.reverse();
        assert_eq!(plan(&nodes), p1);
    }

    proptest! {
        #[test]
        fn plan_is_connected_with_one_link_per_pair(
            spec in proptest::collection::vec(any::<bool>(), 0..12)
        ) {
            let nodes: Vec<PlanNode> = spec
                .iter()
                .enumerate()
                .map(|(i, &reachable)| {
                    let a = format!("10.0.0.{}:4500", i + 1);
                    node(&format!("n{i:02}"), reachable.then_some(a.as_str()))
                })
                .collect();
            let p = plan(&nodes);
            let any_reachable = spec.iter().any(|r| *r);
            prop_assert_eq!(p.disconnected, nodes.len() >= 2 && !any_reachable);
            if any_reachable || nodes.len() < 2 {
                prop_assert!(connected(&nodes, &p));
            }
            // At most one link per unordered pair, never a self link, and a
            // dialled node always has an endpoint.
            let mut seen = BTreeSet::new();
            for (a, b) in pairs(&p) {
                prop_assert_ne!(&a, &b);
                let key = if a < b { (a.clone(), b.clone()) } else { (b.clone(), a.clone()) };
                prop_assert!(seen.insert(key), "duplicate link {} {}", a, b);
                let target = nodes.iter().find(|n| n.node_id == b).unwrap();
                prop_assert!(target.external_endpoint.is_some());
            }
            // Two NATed nodes are never asked to link to each other.
            for (a, b) in pairs(&p) {
                let na = nodes.iter().find(|n| n.node_id == a).unwrap();
                let nb = nodes.iter().find(|n| n.node_id == b).unwrap();
                prop_assert!(na.external_endpoint.is_some() || nb.external_endpoint.is_some());
            }
        }
    }
}
