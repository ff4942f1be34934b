//! Invariants of a settled fleet (nothing in flight).
//!
//! For every live local name (a (name, origin) where `origin` is up and has
//! a local subscriber of `name`) and every live node `n`:
//! - **reachable**: if `origin` is within `max_hops` links of `n` over the
//!   links that are up, following via-peer hops (`remote_dests`) from `n`
//!   reaches `origin`; each hop goes over a link that is up;
//! - **no loop**: following hops never revisits a node;
//! - **shortest**: those hops are as many as the graph distance (what a
//!   settled path-vector protocol with shortest-path selection must give;
//!   a lost announcement typically leaves a node on a longer detour);
//! - **unreachable means no route**: if `origin` is farther than `max_hops`
//!   (or cut off), `n` has no route to it.
//!
//! And no node routes a **departed** name: every (name, origin) in any
//! node's `remote_names` is live.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use crate::fleet::Fleet;
use crate::topology::FAR;

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    Unreachable {
        node: String,
        name: String,
        origin: String,
        /// Where the hops stopped (the node with no route).
        stuck_at: String,
        hops: Vec<String>,
    },
    Departed {
        node: String,
        name: String,
        origin: String,
        via: String,
    },
    Loop {
        node: String,
        name: String,
        origin: String,
        hops: Vec<String>,
    },
    DeadLink {
        node: String,
        name: String,
        origin: String,
        via: String,
    },
    BeyondReach {
        node: String,
        name: String,
        origin: String,
        via: String,
    },
    NotShortest {
        node: String,
        name: String,
        origin: String,
        hops: Vec<String>,
        distance: u32,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Unreachable {
                node,
                name,
                origin,
                stuck_at,
                hops,
            } => write!(
                f,
                "node {node} cannot reach {name} at {origin}: no route at {stuck_at} (hops {})",
                hops.join(" → ")
            ),
            Violation::Departed {
                node,
                name,
                origin,
                via,
            } => write!(
                f,
                "node {node} routes departed name {name} (origin {origin}, via {via})"
            ),
            Violation::Loop {
                node,
                name,
                origin,
                hops,
            } => write!(
                f,
                "forwarding loop for {name} (origin {origin}) from node {node}: {}",
                hops.join(" → ")
            ),
            Violation::DeadLink {
                node,
                name,
                origin,
                via,
            } => write!(
                f,
                "node {node} routes {name} (origin {origin}) via {via} over a link that is down"
            ),
            Violation::BeyondReach {
                node,
                name,
                origin,
                via,
            } => write!(
                f,
                "node {node} routes {name} to {origin} via {via}, but {origin} is beyond max_hops or cut off"
            ),
            Violation::NotShortest {
                node,
                name,
                origin,
                hops,
                distance,
            } => write!(
                f,
                "node {node} reaches {name} at {origin} in {} hops ({}), but it is {distance} links away",
                hops.len() - 1,
                hops.join(" → ")
            ),
        }
    }
}

/// Every violation found (the first few kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violations {
    pub first: Vec<Violation>,
    pub total: usize,
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} invariant violation(s)", self.total)?;
        for v in &self.first {
            write!(f, "; {v}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Violations {}

const KEEP: usize = 5;

impl Fleet {
    /// Checks the invariants; call it only when [`Fleet::run`] went quiet.
    pub fn check(&self) -> Result<(), Violations> {
        let mut out = Violations {
            first: Vec::new(),
            total: 0,
        };
        let mut bad = |v: Violation| {
            if out.first.len() < KEEP {
                out.first.push(v);
            }
            out.total += 1;
        };
        let n = self.nodes.len();
        let id = |i: u32| self.nodes[i as usize].id.to_string();
        // Live (name, origin) pairs.
        let mut live: HashSet<(Arc<str>, u32)> = HashSet::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if node.up {
                for name in node.local.keys() {
                    live.insert((Arc::clone(name), i as u32));
                }
            }
        }
        // Distances from every origin over the links that are up.
        let mut dist: HashMap<u32, Vec<u32>> = HashMap::new();
        for (_, o) in &live {
            dist.entry(*o)
                .or_insert_with(|| self.graph.distances(*o, |e| self.links[e as usize].up));
        }
        let max_hops = self.cfg.max_hops as u32;
        // Next hop per node and (name, origin).
        let mut next: Vec<HashMap<(Arc<str>, u32), u32>> = vec![HashMap::new(); n];
        for (i, node) in self.nodes.iter().enumerate() {
            if !node.up {
                continue;
            }
            for (name, _) in node.table.remote_names() {
                for (origin, via) in node.table.remote_dests(&name) {
                    let (Some(o), Some(v)) = (self.index_of(&origin), self.index_of(&via)) else {
                        bad(Violation::Departed {
                            node: id(i as u32),
                            name: name.to_string(),
                            origin: origin.to_string(),
                            via: via.to_string(),
                        });
                        continue;
                    };
                    let key = (Arc::clone(&name), o);
                    if !live.contains(&key) {
                        bad(Violation::Departed {
                            node: id(i as u32),
                            name: name.to_string(),
                            origin: origin.to_string(),
                            via: via.to_string(),
                        });
                        continue;
                    }
                    let link_up = self.graph.adj[i]
                        .iter()
                        .find(|x| x.0 == v)
                        .is_some_and(|x| self.links[x.1 as usize].up);
                    if !link_up {
                        bad(Violation::DeadLink {
                            node: id(i as u32),
                            name: name.to_string(),
                            origin: origin.to_string(),
                            via: via.to_string(),
                        });
                    }
                    if dist[&o][i] > max_hops {
                        bad(Violation::BeyondReach {
                            node: id(i as u32),
                            name: name.to_string(),
                            origin: origin.to_string(),
                            via: via.to_string(),
                        });
                    }
                    next[i].insert(key, v);
                }
            }
        }
        // Walk from every live node to every live origin within reach.
        let mut live_sorted: Vec<&(Arc<str>, u32)> = live.iter().collect();
        live_sorted.sort();
        for key in live_sorted {
            let (name, o) = key;
            let d = &dist[o];
            for start in 0..n as u32 {
                if start == *o || !self.nodes[start as usize].up || d[start as usize] == FAR {
                    continue;
                }
                if d[start as usize] > max_hops {
                    continue;
                }
                let mut seen = HashSet::new();
                let mut hops = vec![id(start)];
                let mut cur = start;
                seen.insert(cur);
                loop {
                    let Some(&v) = next[cur as usize].get(key) else {
                        bad(Violation::Unreachable {
                            node: id(start),
                            name: name.to_string(),
                            origin: id(*o),
                            stuck_at: id(cur),
                            hops,
                        });
                        break;
                    };
                    hops.push(id(v));
                    if v == *o {
                        if hops.len() - 1 != d[start as usize] as usize {
                            bad(Violation::NotShortest {
                                node: id(start),
                                name: name.to_string(),
                                origin: id(*o),
                                hops,
                                distance: d[start as usize],
                            });
                        }
                        break;
                    }
                    if !seen.insert(v) {
                        bad(Violation::Loop {
                            node: id(start),
                            name: name.to_string(),
                            origin: id(*o),
                            hops,
                        });
                        break;
                    }
                    cur = v;
                }
            }
        }
        if out.total == 0 { Ok(()) } else { Err(out) }
    }
}
