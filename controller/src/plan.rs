//! Link planning: who dials whom. A pure function of the registered nodes
//! and a [`PlanConfig`]; the same nodes, in any order, give the same plan.
//!
//! Rules at every size:
//! - a node with an external endpoint is *reachable*; one without is behind
//!   NAT or a firewall and only ever dials out;
//! - one link per pair, dialled by one side (a link carries traffic both
//!   ways): of two reachable nodes the lower node id dials; a NATed node
//!   always dials;
//! - two NATed nodes never link directly: they reach each other through
//!   reachable nodes (the data plane forwards multi-hop and is loop-free);
//! - the graph is connected whenever at least one node is reachable. With no
//!   reachable node and two or more nodes, no plan can connect them
//!   ([`Plan::disconnected`]);
//! - losing any one reachable node leaves the rest connected when two or
//!   more are reachable and NATed nodes have two or more uplinks.
//!
//! **Small fleets** (at most [`PlanConfig::full_mesh_max`] nodes, default 8)
//! get a full mesh: the reachable nodes form a clique and every NATed node
//! dials every reachable node; every path is one or two links.
//!
//! **Larger fleets** get a sparse overlay. A full mesh needs O(n²) links
//! (4,950 for 100 reachable clusters), and the interest protocol sends its
//! updates over every link, so its cost grows with the links, not just with
//! the nodes (docs/BENCHMARKS.md, *Fleet scale*: a 100-node mesh does not
//! settle one client leaving within 90 s of simulation). Every node keeps at
//! most [`PlanConfig::max_degree`] links, dialled and accepted together
//! (default 6):
//! 1. the reachable nodes, in id order, form a ring: the core is connected,
//!    and the ring minus any one node is still a path;
//! 2. each NATed node dials [`PlanConfig::nat_uplinks`] distinct reachable
//!    nodes (default 2, so that losing one leaves it linked), chosen by
//!    rendezvous hashing: it ranks the reachable nodes by a hash of
//!    (its id, their id) and takes the best-ranked ones that have room;
//! 3. the room left on the reachable nodes is filled with chords: each
//!    ranks the others by a hash of the pair and proposes its best ones
//!    while it has room; two nodes that propose each other are linked; two
//!    rounds. The result is a near-regular pseudo-random graph (an expander),
//!    whose diameter grows like log n: 4, 6 and 8 links at 20, 100 and 1,000
//!    nodes with one third NATed (see the tests). A forwarded message
//!    may cross at most the node's `max_hops` (16 by default) nodes, well
//!    above these (half NATed: 9 at 1,000); a larger `max_degree` (8 gives 7
//!    links up to 2,000 nodes) shortens paths further.
//!
//! Connectivity wins over the degree bound: the ring and the uplinks are
//! always planned, the chords only within it. So a node exceeds
//! `max_degree` only when the NATed nodes need more uplinks than the
//! reachable nodes have room for (50 NATed nodes and one reachable: it takes
//! all 50), or when `max_degree` < 2 leaves no room for the ring.
//!
//! Stability: the hash is fixed (not std's randomly keyed one), so every
//! controller, across restarts and upgrades, plans the same links; and each
//! choice depends on few nodes besides the pair, so one node joining or
//! leaving a fleet changes about 2 × `max_degree` links — its own, the ring
//! around it, the uplinks that rank it first, the chords those displace and
//! their refill — not the whole plan (at 100 nodes: 9.5 on average, at most
//! 21 of 600 cases). The fleet pushes new dial sets only to the nodes whose
//! set changed.

use crate::proto::PeerSpec;
use std::collections::BTreeMap;

/// What planning needs to know about a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanNode {
    pub node_id: String,
    /// `host:port` (an IP or a name, handed to dialers as it is).
    pub external_endpoint: Option<String>,
    pub server_name: String,
    /// The SPIFFE ID it presented to the controller; dialers pin it.
    pub spiffe_id: String,
}

/// The planner's knobs (`[plan]` in the controller config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanConfig {
    /// Fleets of at most this many nodes get the full mesh.
    pub full_mesh_max: usize,
    /// Above `full_mesh_max`: the most links one node has, dialled and
    /// accepted together (exceeded only where connectivity needs it).
    pub max_degree: usize,
    /// Above `full_mesh_max`: how many reachable nodes each NATed node dials.
    pub nat_uplinks: usize,
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig {
            full_mesh_max: 8,
            max_degree: 6,
            nat_uplinks: 2,
        }
    }
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

/// Plans the links between `nodes` with the default [`PlanConfig`].
pub fn plan(nodes: &[PlanNode]) -> Plan {
    plan_with(nodes, &PlanConfig::default())
}

/// Plans the links between `nodes` (node ids should be unique: of several
/// entries with one id only one is planned; the order of the input does not
/// matter).
pub fn plan_with(nodes: &[PlanNode], cfg: &PlanConfig) -> Plan {
    let mut sorted: Vec<&PlanNode> = nodes.iter().collect();
    // By id, then by the rest, so that even duplicate ids do not make the
    // result depend on the input order.
    sorted.sort_by(|a, b| {
        (
            &a.node_id,
            &a.external_endpoint,
            &a.server_name,
            &a.spiffe_id,
        )
            .cmp(&(
                &b.node_id,
                &b.external_endpoint,
                &b.server_name,
                &b.spiffe_id,
            ))
    });
    sorted.dedup_by(|a, b| a.node_id == b.node_id);
    let graph = if sorted.len() <= cfg.full_mesh_max {
        full_mesh(&sorted)
    } else {
        sparse(&sorted, cfg)
    };
    let mut dials: BTreeMap<String, Vec<PeerSpec>> = BTreeMap::new();
    for (a, n) in sorted.iter().enumerate() {
        // Neighbours in index order are in node id order.
        let mut peers: Vec<usize> = graph.adj[a].clone();
        peers.sort_unstable();
        let out = peers
            .into_iter()
            .filter(|&b| dials_to(&sorted, a, b))
            .filter_map(|b| {
                let m = sorted[b];
                Some(PeerSpec::new(
                    m.node_id.clone(),
                    m.external_endpoint.as_deref()?,
                    m.server_name.clone(),
                    Some(m.spiffe_id.clone()),
                ))
            })
            .collect();
        dials.insert(n.node_id.clone(), out);
    }
    let disconnected = sorted.len() >= 2 && sorted.iter().all(|n| n.external_endpoint.is_none());
    Plan {
        dials,
        disconnected,
    }
}

/// Whether `a` is the side of link a–b that dials: a NATed node always does
/// (the planner never links two NATed nodes); of two reachable nodes, the
/// lower id (index) does.
fn dials_to(sorted: &[&PlanNode], a: usize, b: usize) -> bool {
    match (
        sorted[a].external_endpoint.is_some(),
        sorted[b].external_endpoint.is_some(),
    ) {
        (false, true) => true,
        (true, true) => a < b,
        _ => false,
    }
}

/// An undirected simple graph over indices into the sorted nodes.
struct Graph {
    adj: Vec<Vec<usize>>,
}

impl Graph {
    fn new(n: usize) -> Graph {
        Graph {
            adj: vec![Vec::new(); n],
        }
    }

    fn degree(&self, a: usize) -> usize {
        self.adj[a].len()
    }

    fn linked(&self, a: usize, b: usize) -> bool {
        // The shorter list: a hub may have many NATed nodes on it.
        let (s, t) = if self.adj[a].len() <= self.adj[b].len() {
            (a, b)
        } else {
            (b, a)
        };
        self.adj[s].contains(&t)
    }

    fn link(&mut self, a: usize, b: usize) {
        if a != b && !self.linked(a, b) {
            self.adj[a].push(b);
            self.adj[b].push(a);
        }
    }
}

/// Every reachable pair, and every NATed node to every reachable node.
fn full_mesh(sorted: &[&PlanNode]) -> Graph {
    let mut g = Graph::new(sorted.len());
    let reachable: Vec<usize> = (0..sorted.len())
        .filter(|&i| sorted[i].external_endpoint.is_some())
        .collect();
    for (a, n) in sorted.iter().enumerate() {
        // Each pair once, without `link`'s check: full_mesh_max may be large.
        let natted = n.external_endpoint.is_none();
        for &b in reachable.iter().filter(|&&b| natted || b > a) {
            g.adj[a].push(b);
            g.adj[b].push(a);
        }
    }
    g
}

/// Rounds of mutual proposals when placing chords. More rounds fill more of
/// the room but let a change travel further. Measured with the default
/// config: after 1, 2, 3 rounds the reachable nodes of a 1,000-node fleet
/// (one third NATed) use 84 %, 90 %, 95 % of their links and the diameter is
/// 9, 8, 8 links; in fleets of 100, one node joining or leaving changed
/// 7.5, 9.5, 11.0 links on average, at most 17, 21, 25 (600 cases). Two
/// keeps 1,000 nodes at diameter 8 with less churn than three.
const CHORD_ROUNDS: usize = 2;

/// Chord candidates per reachable node, as a multiple of `max_degree`: its
/// best-weighted partners. Two rounds never reach further down the list
/// than that (three times as many gave the same plans).
const CHORD_CANDIDATES: usize = 2;

fn sparse(sorted: &[&PlanNode], cfg: &PlanConfig) -> Graph {
    let n = sorted.len();
    let max = cfg.max_degree;
    let mut g = Graph::new(n);
    let hash: Vec<u64> = sorted.iter().map(|n| id_hash(&n.node_id)).collect();
    let reach: Vec<usize> = (0..n)
        .filter(|&i| sorted[i].external_endpoint.is_some())
        .collect();
    let nat: Vec<usize> = (0..n)
        .filter(|&i| sorted[i].external_endpoint.is_none())
        .collect();
    let r = reach.len();

    // 1. The ring over the reachable nodes in id order: a node joining
    // changes three links (a–c becomes a–new–c).
    match r {
        0 | 1 => {}
        2 => g.link(reach[0], reach[1]),
        _ => {
            for i in 0..r {
                g.link(reach[i], reach[(i + 1) % r]);
            }
        }
    }

    // 2. NATed uplinks. Rendezvous hashing: each NATed node ranks the
    // reachable nodes by a hash of the pair, so a reachable node joining or
    // leaving moves only the uplinks that ranked it first.
    let k = cfg.nat_uplinks.min(r);
    if k > 0 {
        let mut ranked: Vec<(u64, usize)> = Vec::with_capacity(r);
        for &x in &nat {
            ranked.clear();
            ranked.extend(
                reach
                    .iter()
                    .map(|&b| (weight(NAT_DOMAIN, hash[x], hash[b]), b)),
            );
            // Usually the first few have room: rank those first, all only if needed.
            let mut chosen = choose_uplinks(&g, &mut ranked, k, max, (4 * k + 8).min(r));
            if chosen.len() < k && r > 4 * k + 8 {
                chosen = choose_uplinks(&g, &mut ranked, k, max, r);
            }
            for b in chosen {
                g.link(x, b);
            }
        }
    }

    // 3. Chords in the room that is left, between reachable nodes only.
    if r >= 2 && max > 0 {
        let per = (CHORD_CANDIDATES * max).max(1);
        let mut cand: Vec<Vec<usize>> = Vec::with_capacity(r);
        let mut all: Vec<(u64, usize)> = Vec::with_capacity(r);
        for (p, &a) in reach.iter().enumerate() {
            all.clear();
            all.extend(
                (0..r)
                    .filter(|&q| q != p && !g.linked(a, reach[q]))
                    .map(|q| (pair_weight(&hash, a, reach[q]), q)),
            );
            cand.push(top(&mut all, per).iter().map(|&(_, q)| q).collect());
        }
        let mut choice: Vec<Vec<usize>> = vec![Vec::new(); r];
        for _ in 0..CHORD_ROUNDS {
            for (p, &a) in reach.iter().enumerate() {
                let room = max.saturating_sub(g.degree(a));
                choice[p].clear();
                choice[p].extend(
                    cand[p]
                        .iter()
                        .copied()
                        .filter(|&q| g.degree(reach[q]) < max && !g.linked(a, reach[q]))
                        .take(room),
                );
            }
            let mut added = false;
            for p in 0..r {
                for &q in &choice[p] {
                    if p < q && choice[q].contains(&p) {
                        g.link(reach[p], reach[q]);
                        added = true;
                    }
                }
            }
            if !added {
                break;
            }
        }
    }
    g
}

/// The first `k` of the `m` best-ranked reachable nodes that have room,
/// then, if fewer than `k` have room, the best-ranked of the others:
/// connectivity wins over the degree bound.
fn choose_uplinks(
    g: &Graph,
    ranked: &mut [(u64, usize)],
    k: usize,
    max: usize,
    m: usize,
) -> Vec<usize> {
    let whole = m >= ranked.len();
    let best = top(ranked, m);
    let mut chosen: Vec<usize> = best
        .iter()
        .map(|&(_, b)| b)
        .filter(|&b| g.degree(b) < max)
        .take(k)
        .collect();
    if chosen.len() < k && whole {
        for &(_, b) in best.iter() {
            if chosen.len() == k {
                break;
            }
            if !chosen.contains(&b) {
                chosen.push(b);
            }
        }
    }
    chosen
}

/// The `m` highest-weighted entries, best first (ties by index, so the order
/// is total).
fn top(v: &mut [(u64, usize)], m: usize) -> &[(u64, usize)] {
    let order = |x: &(u64, usize), y: &(u64, usize)| y.0.cmp(&x.0).then(x.1.cmp(&y.1));
    let m = m.min(v.len());
    if m == 0 {
        return &[];
    }
    if m < v.len() {
        v.select_nth_unstable_by(m - 1, order);
    }
    let best = &mut v[..m];
    best.sort_unstable_by(order);
    best
}

/// Keep uplink and chord weights of one pair unrelated (ASCII "nat-uplk",
/// "chord-wr").
const NAT_DOMAIN: u64 = 0x6e61_742d_7570_6c6b;
const CHORD_DOMAIN: u64 = 0x6368_6f72_642d_7772;

/// The weight of a chord between `a` and `b`: the same from both sides.
fn pair_weight(hash: &[u64], a: usize, b: usize) -> u64 {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    weight(CHORD_DOMAIN, hash[lo], hash[hi])
}

fn weight(domain: u64, a: u64, b: u64) -> u64 {
    mix(mix(a ^ domain).wrapping_add(b))
}

/// FNV-1a (64 bit) of the id, finished with [`mix`]: fixed for ever, unlike
/// std's hasher (randomly keyed per process, algorithm unspecified), so
/// controllers of any version agree on the plan.
fn id_hash(id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in id.as_bytes() {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// splitmix64's finaliser: FNV alone spreads ids that differ in one digit
/// ("cluster-0041", "cluster-0042") poorly.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeSet, HashMap, VecDeque};

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

    /// The plan as an undirected graph over indices into `nodes`.
    struct Topo {
        adj: Vec<Vec<usize>>,
    }

    impl Topo {
        fn of(nodes: &[PlanNode], p: &Plan) -> Topo {
            let index: HashMap<&str, usize> = nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (n.node_id.as_str(), i))
                .collect();
            let mut adj = vec![Vec::new(); nodes.len()];
            for (a, bs) in &p.dials {
                for b in bs {
                    let (a, b) = (index[a.as_str()], index[b.node_id.as_str()]);
                    adj[a].push(b);
                    adj[b].push(a);
                }
            }
            Topo { adj }
        }

        fn max_degree(&self) -> usize {
            self.adj.iter().map(Vec::len).max().unwrap_or(0)
        }

        /// Hop counts from `src`, not passing through `without`.
        fn distances(&self, src: usize, without: Option<usize>) -> Vec<Option<usize>> {
            let mut d = vec![None; self.adj.len()];
            d[src] = Some(0);
            let mut q = VecDeque::from([src]);
            while let Some(x) = q.pop_front() {
                let next = d[x].map(|v| v + 1);
                for &y in &self.adj[x] {
                    if d[y].is_none() && Some(y) != without {
                        d[y] = next;
                        q.push_back(y);
                    }
                }
            }
            d
        }

        /// Connected once `without` (if any) and its links are gone.
        fn connected_without(&self, without: Option<usize>) -> bool {
            let Some(src) = (0..self.adj.len()).find(|&i| Some(i) != without) else {
                return true;
            };
            self.distances(src, without)
                .iter()
                .enumerate()
                .all(|(i, d)| d.is_some() || Some(i) == without)
        }

        /// The longest shortest path; `None` if disconnected.
        fn diameter(&self) -> Option<usize> {
            let mut worst = 0;
            for s in 0..self.adj.len() {
                for d in self.distances(s, None) {
                    worst = worst.max(d?);
                }
            }
            Some(worst)
        }
    }

    /// `n` nodes named `{prefix}-0000`…, every third one NATed.
    fn fleet(prefix: &str, n: usize) -> Vec<PlanNode> {
        (0..n)
            .map(|i| fleet_node(&format!("{prefix}-{i:04}"), i))
            .collect()
    }

    fn fleet_node(id: &str, i: usize) -> PlanNode {
        let a = format!("10.{}.{}.1:4500", i / 256, i % 256);
        node(id, (i % 3 != 2).then_some(a.as_str()))
    }

    /// The links as unordered pairs.
    fn link_set(p: &Plan) -> BTreeSet<(String, String)> {
        pairs(p)
            .into_iter()
            .map(|(a, b)| if a < b { (a, b) } else { (b, a) })
            .collect()
    }

    /// What the planner did before it knew sparse overlays: every reachable
    /// pair (the lower id dials) and every NATed node to every reachable one.
    fn full_mesh_reference(nodes: &[PlanNode]) -> Vec<(String, String)> {
        let mut v = Vec::new();
        for n in nodes {
            for m in nodes {
                if m.node_id != n.node_id
                    && m.external_endpoint.is_some()
                    && (n.external_endpoint.is_none() || n.node_id < m.node_id)
                {
                    v.push((n.node_id.clone(), m.node_id.clone()));
                }
            }
        }
        v.sort();
        v
    }

    /// Checks the rules every plan follows, whatever its size and config.
    fn check_rules(nodes: &[PlanNode], cfg: &PlanConfig, p: &Plan) -> Result<(), TestCaseError> {
        let by_id: HashMap<&str, &PlanNode> =
            nodes.iter().map(|n| (n.node_id.as_str(), n)).collect();
        let reach = nodes
            .iter()
            .filter(|n| n.external_endpoint.is_some())
            .count();
        let nat = nodes.len() - reach;
        prop_assert_eq!(p.dials.len(), nodes.len());
        prop_assert_eq!(p.disconnected, nodes.len() >= 2 && reach == 0);
        let topo = Topo::of(nodes, p);
        if reach > 0 {
            prop_assert!(topo.connected_without(None));
        }
        // One link per unordered pair, never a self link, never between two
        // NATed nodes, dialled by the NATed side or by the lower id.
        let mut seen = BTreeSet::new();
        for (a, b) in pairs(p) {
            prop_assert_ne!(&a, &b);
            let (na, nb) = (by_id[a.as_str()], by_id[b.as_str()]);
            prop_assert!(
                nb.external_endpoint.is_some(),
                "{} dials unreachable {}",
                a,
                b
            );
            if na.external_endpoint.is_some() {
                prop_assert!(a < b, "{} dials lower id {}", a, b);
            }
            let key = if a < b {
                (a.clone(), b.clone())
            } else {
                (b.clone(), a.clone())
            };
            prop_assert!(seen.insert(key), "duplicate link {} {}", a, b);
        }
        // Losing any one reachable node leaves the rest connected.
        let k = if nodes.len() <= cfg.full_mesh_max {
            reach
        } else {
            cfg.nat_uplinks.min(reach)
        };
        if reach >= 2 && k >= 2 {
            for (i, n) in nodes.iter().enumerate() {
                if n.external_endpoint.is_some() {
                    prop_assert!(
                        topo.connected_without(Some(i)),
                        "losing {} splits",
                        n.node_id
                    );
                }
            }
        }
        if nodes.len() <= cfg.full_mesh_max {
            prop_assert_eq!(pairs(p), full_mesh_reference(nodes));
            return Ok(());
        }
        // Sparse: every NATed node has min(k, reachable) uplinks. A node
        // over the degree bound is a reachable node full of NATed uplinks:
        // besides them it has only its ring neighbours.
        let max = cfg.max_degree;
        for (i, n) in nodes.iter().enumerate() {
            let deg = topo.adj[i].len();
            if n.external_endpoint.is_none() {
                prop_assert_eq!(deg, k, "{} uplinks", &n.node_id);
            } else if deg > max {
                let core = topo.adj[i]
                    .iter()
                    .filter(|&&j| nodes[j].external_endpoint.is_some())
                    .count();
                prop_assert!(
                    core <= 2,
                    "{} over the bound with {} core links",
                    &n.node_id,
                    core
                );
            }
        }
        // The bound holds whenever the reachable nodes have room for the
        // uplinks: overflowing needs fewer than k reachable nodes with room,
        // so at least reachable-k+1 full ones, each holding ≥ max-2 uplinks.
        if max >= 2 && k * nat.saturating_sub(1) < (reach + 1).saturating_sub(k) * (max - 2) {
            prop_assert!(
                topo.max_degree() <= max,
                "degree {} > {}",
                topo.max_degree(),
                max
            );
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn small_fleets_keep_the_full_mesh(
            spec in proptest::collection::vec(any::<bool>(), 0..=8),
            extra in 0usize..4,
        ) {
            let nodes: Vec<PlanNode> = spec
                .iter()
                .enumerate()
                .map(|(i, &reachable)| {
                    let a = format!("10.0.0.{}:4500", i + 1);
                    node(&format!("n{i:02}"), reachable.then_some(a.as_str()))
                })
                .collect();
            prop_assert_eq!(pairs(&plan(&nodes)), full_mesh_reference(&nodes));
            let cfg = PlanConfig { full_mesh_max: nodes.len() + extra, max_degree: 2, nat_uplinks: 1 };
            prop_assert_eq!(pairs(&plan_with(&nodes, &cfg)), full_mesh_reference(&nodes));
        }

        #[test]
        fn every_plan_follows_the_rules(
            spec in proptest::collection::vec(0u8..100, 0..48),
            reachable_pct in 0u8..=100,
            full_mesh_max in 0usize..=10,
            max_degree in 0usize..=8,
            nat_uplinks in 1usize..=3,
            rotate in 0usize..48,
        ) {
            let mut nodes: Vec<PlanNode> = spec
                .iter()
                .enumerate()
                .map(|(i, &roll)| {
                    let a = format!("10.0.{}.{}:4500", i / 200, i % 200 + 1);
                    node(&format!("n{i:02}"), (roll < reachable_pct).then_some(a.as_str()))
                })
                .collect();
            let cfg = PlanConfig { full_mesh_max, max_degree, nat_uplinks };
            let p = plan_with(&nodes, &cfg);
            check_rules(&nodes, &cfg, &p)?;
            // The input order does not matter.
            nodes.reverse();
            let len = nodes.len().max(1);
            nodes.rotate_left(rotate % len);
            prop_assert_eq!(plan_with(&nodes, &cfg), p);
        }
    }

    #[test]
    fn duplicate_ids_are_planned_once() {
        let nodes = [
            node("a", Some("10.0.0.1:1")),
            node("b", None),
            node("a", Some("10.0.0.9:1")),
        ];
        let p = plan(&nodes);
        assert_eq!(pairs(&p), vec![("b".into(), "a".into())]);
        let mut rev = nodes.clone();
        rev.reverse();
        assert_eq!(plan(&rev), p);
    }

    #[test]
    fn connectivity_wins_over_the_degree_bound() {
        // 50 NATed nodes and one reachable: it takes all 50 (a hub), far over
        // max_degree, because a NATed node has nowhere else to go.
        let mut nodes: Vec<PlanNode> = (0..50)
            .map(|i| node(&format!("nat-{i:02}"), None))
            .collect();
        nodes.push(node("hub", Some("10.0.0.1:4500")));
        let p = plan(&nodes);
        assert!(!p.disconnected);
        assert_eq!(p.link_count(), 50);
        for n in &nodes[..50] {
            assert_eq!(p.dials[&n.node_id].len(), 1);
            assert_eq!(p.dials[&n.node_id][0].node_id, "hub");
        }
        let topo = Topo::of(&nodes, &p);
        assert_eq!(topo.max_degree(), 50);
        assert!(topo.connected_without(None));

        // Three reachable nodes (12 free slots beside the ring) for 100
        // uplinks: every NATed node still gets two distinct uplinks, the
        // load spreads over all three, and losing any one of them splits
        // nothing.
        nodes.pop();
        for i in 0..3 {
            let a = format!("10.0.0.{}:4500", i + 1);
            nodes.push(node(&format!("hub-{i}"), Some(a.as_str())));
        }
        let cfg = PlanConfig::default();
        let p = plan_with(&nodes, &cfg);
        let topo = Topo::of(&nodes, &p);
        let mut degrees: Vec<usize> = (50..53).map(|i| topo.adj[i].len()).collect();
        degrees.sort();
        assert_eq!(degrees.iter().sum::<usize>(), 100 + 2 * 3);
        assert!(degrees[0] > cfg.max_degree, "{degrees:?}");
        check_rules(&nodes, &cfg, &p).unwrap();
    }

    #[test]
    fn a_ring_of_reachable_nodes_with_nothing_to_spare() {
        // max_degree 2: the ring fills every reachable node, chords have no
        // room, NATed nodes overflow onto it.
        let cfg = PlanConfig {
            full_mesh_max: 0,
            max_degree: 2,
            nat_uplinks: 2,
        };
        let nodes = fleet("r", 12);
        let p = plan_with(&nodes, &cfg);
        check_rules(&nodes, &cfg, &p).unwrap();
        let reach: Vec<&str> = nodes
            .iter()
            .filter(|n| n.external_endpoint.is_some())
            .map(|n| n.node_id.as_str())
            .collect();
        // The ring: each reachable node dials its successor in id order
        // (the last one is dialled by the first).
        for w in reach.windows(2) {
            assert!(p.dials[w[0]].iter().any(|s| s.node_id == w[1]));
        }
        assert!(
            p.dials[reach[0]]
                .iter()
                .any(|s| s.node_id == reach[reach.len() - 1])
        );
    }

    /// Links, max degree, diameter; the degree bound and the diameter bound
    /// (8 at 1,000 nodes, half the node's default `max_hops` of 16) hold,
    /// and losing any one reachable node leaves the rest connected. Prints the figures (`--nocapture`).
    #[test]
    fn fleets_of_20_100_and_1000_nodes() {
        let cfg = PlanConfig::default();
        for (n, diameter_bound) in [(20, 4), (100, 6), (1000, 8)] {
            let nodes = fleet("cluster", n);
            let started = std::time::Instant::now();
            let p = plan(&nodes);
            let took = started.elapsed();
            let topo = Topo::of(&nodes, &p);
            let diameter = topo.diameter().expect("connected");
            eprintln!(
                "n={n}: {} links (full mesh: {}), max degree {}, diameter {diameter}, plan() {took:?}",
                p.link_count(),
                full_mesh_reference(&nodes).len(),
                topo.max_degree(),
            );
            assert!(topo.max_degree() <= cfg.max_degree);
            assert!(diameter <= diameter_bound, "n={n}: diameter {diameter}");
            assert!(p.link_count() <= n * cfg.max_degree / 2);
            for (i, node) in nodes.iter().enumerate() {
                if node.external_endpoint.is_some() {
                    assert!(
                        topo.connected_without(Some(i)),
                        "n={n}: losing {}",
                        node.node_id
                    );
                }
            }
            let nat_ok = nodes
                .iter()
                .filter(|n| n.external_endpoint.is_none())
                .all(|n| p.dials[&n.node_id].len() == cfg.nat_uplinks);
            assert!(nat_ok);
        }
    }

    /// Adding or removing one node to a fleet of 100 changes O(max_degree)
    /// links, not the fleet's: the newcomer's own links, the ring around it,
    /// the NATed uplinks that now rank it first, and the chords displaced by
    /// those (and their refill). Prints the distribution (`--nocapture`).
    #[test]
    fn one_node_joining_or_leaving_changes_few_links() {
        let max = PlanConfig::default().max_degree;
        let mut changes = Vec::new();
        for prefix in ["cluster", "eu", "node", "zz"] {
            let nodes = fleet(prefix, 100);
            let base = link_set(&plan(&nodes));
            for i in 0..15 {
                // Newcomers of both kinds, spread over the id space.
                let mut more = nodes.clone();
                more.push(fleet_node(&format!("{prefix}-{:04}x", i * 7), i));
                changes.push(base.symmetric_difference(&link_set(&plan(&more))).count());
                let mut fewer = nodes.clone();
                fewer.remove(i * 6 + 1);
                changes.push(base.symmetric_difference(&link_set(&plan(&fewer))).count());
            }
        }
        changes.sort();
        let mean = changes.iter().sum::<usize>() as f64 / changes.len() as f64;
        eprintln!(
            "links changed by one node joining or leaving (n=100, {} cases): mean {mean:.1}, median {}, max {}",
            changes.len(),
            changes[changes.len() / 2],
            changes[changes.len() - 1],
        );
        assert!(mean <= 2.0 * max as f64, "mean {mean}");
        assert!(changes[changes.len() - 1] <= 4 * max, "{changes:?}");
    }

    #[test]
    fn the_hash_is_fixed() {
        // Every controller version must plan the same links for the same
        // fleet: changing these values reshuffles every fleet on upgrade.
        assert_eq!(id_hash(""), mix(0xcbf2_9ce4_8422_2325));
        assert_eq!(id_hash("cluster-0001"), 0x4bbe_8f2c_9fe5_fec7);
        assert_eq!(
            weight(NAT_DOMAIN, id_hash("a"), id_hash("b")),
            0xea61_5562_94b1_0186
        );
    }
}
