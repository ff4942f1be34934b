//! Who is linked to whom, and how slow each link is.
//!
//! - `mesh`: every pair of nodes has one link (what the controller plans today
//!   for reachable nodes: the lower node id dials, one link per pair).
//! - `sparse`: a ring (so the graph is always connected, and stays connected
//!   when any one link fails) plus random chords until every node has about
//!   `degree` links. Chords pair "stubs" at random (a configuration model):
//!   each node gets `degree - 2` chord ends, shuffled and paired; a pair that
//!   would be a self-link or a duplicate is re-paired a few times and
//!   dropped if that fails, so a few nodes may end up one or two links short.
//!   With `degree = 4` this is a random 4-regular-ish expander: diameter
//!   grows like log₃ N (5 at N = 100, 8–9 at N = 1000).
//!
//! Everything is drawn from the seed, so a (nodes, topology, seed) triple
//! always gives the same graph and the same latencies.

use std::collections::{HashSet, VecDeque};

use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// Unreachable in [`Graph::distances`].
pub const FAR: u32 = u32::MAX;

/// The shape of the fleet's overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// Every pair linked.
    Mesh,
    /// A ring plus random chords, about `degree` links per node.
    Sparse { degree: usize },
}

impl Topology {
    pub fn label(&self) -> String {
        match self {
            Topology::Mesh => "mesh".into(),
            Topology::Sparse { degree } => format!("sparse k={degree}"),
        }
    }
}

/// An undirected graph with edge ids.
#[derive(Debug, Clone)]
pub struct Graph {
    /// Edges as (lower node, higher node).
    pub edges: Vec<(u32, u32)>,
    /// Per node: (peer, edge id), sorted by peer.
    pub adj: Vec<Vec<(u32, u32)>>,
}

impl Graph {
    /// Builds the overlay for `n` nodes.
    pub fn build(n: usize, topology: Topology, rng: &mut StdRng) -> Graph {
        let mut set: HashSet<(u32, u32)> = HashSet::new();
        let mut edges = Vec::new();
        let mut add = |a: u32, b: u32, set: &mut HashSet<(u32, u32)>| -> bool {
            let e = (a.min(b), a.max(b));
            if a == b || !set.insert(e) {
                return false;
            }
            edges.push(e);
            true
        };
        let degree = match topology {
            Topology::Mesh => n.saturating_sub(1),
            Topology::Sparse { degree } => degree.max(2),
        };
        if degree + 1 >= n {
            for a in 0..n as u32 {
                for b in a + 1..n as u32 {
                    add(a, b, &mut set);
                }
            }
        } else {
            for a in 0..n as u32 {
                add(a, (a + 1) % n as u32, &mut set);
            }
            let mut stubs: Vec<u32> = (0..n as u32)
                .flat_map(|a| std::iter::repeat_n(a, degree - 2))
                .collect();
            for _round in 0..20 {
                if stubs.len() < 2 {
                    break;
                }
                stubs.shuffle(rng);
                let mut left = Vec::new();
                for pair in stubs.chunks(2) {
                    match pair {
                        [a, b] if !add(*a, *b, &mut set) => left.extend([*a, *b]),
                        [a] => left.push(*a),
                        _ => {}
                    }
                }
                stubs = left;
            }
        }
        let mut adj = vec![Vec::new(); n];
        for (i, &(a, b)) in edges.iter().enumerate() {
            adj[a as usize].push((b, i as u32));
            adj[b as usize].push((a, i as u32));
        }
        for l in &mut adj {
            l.sort_unstable();
        }
        let _ = rng.random::<u64>(); // keep later draws independent of the branch taken
        Graph { edges, adj }
    }

    pub fn nodes(&self) -> usize {
        self.adj.len()
    }

    /// Hop distances from `src` over the edges for which `up` holds
    /// ([`FAR`] when unreachable).
    pub fn distances(&self, src: u32, up: impl Fn(u32) -> bool) -> Vec<u32> {
        let mut d = vec![FAR; self.adj.len()];
        let mut q = VecDeque::new();
        d[src as usize] = 0;
        q.push_back(src);
        while let Some(x) = q.pop_front() {
            for &(y, e) in &self.adj[x as usize] {
                if d[y as usize] == FAR && up(e) {
                    d[y as usize] = d[x as usize] + 1;
                    q.push_back(y);
                }
            }
        }
        d
    }

    /// The longest shortest path ([`FAR`] if disconnected).
    pub fn diameter(&self) -> u32 {
        let n = self.adj.len();
        if self.edges.len() == n * n.saturating_sub(1) / 2 {
            return u32::from(n > 1);
        }
        (0..n as u32)
            .map(|s| self.distances(s, |_| true).into_iter().max().unwrap_or(0))
            .max()
            .unwrap_or(0)
    }

    pub fn max_degree(&self) -> usize {
        self.adj.iter().map(Vec::len).max().unwrap_or(0)
    }

    pub fn min_degree(&self) -> usize {
        self.adj.iter().map(Vec::len).min().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn sparse_is_connected_and_about_k_regular() {
        for seed in 0..3 {
            let mut rng = StdRng::seed_from_u64(seed);
            let g = Graph::build(200, Topology::Sparse { degree: 4 }, &mut rng);
            assert!(g.diameter() < FAR);
            assert!(g.min_degree() >= 2 && g.max_degree() <= 4);
            assert!(g.edges.len() >= 390, "{}", g.edges.len());
        }
    }

    #[test]
    fn mesh_has_every_pair() {
        let mut rng = StdRng::seed_from_u64(1);
        let g = Graph::build(10, Topology::Mesh, &mut rng);
        assert_eq!(g.edges.len(), 45);
        assert_eq!(g.diameter(), 1);
    }
}
