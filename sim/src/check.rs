//! Invariants of a settled fleet (nothing in flight).
//!
//! [`Fleet::check`], the routes. For every live local name (a (name,
//! origin) where `origin` is up and has a local subscriber of `name`) and
//! every live node `n` other than `origin`:
//! - **reachable**: if `origin` is in `n`'s connected component (over the
//!   links that are up), following next hops (`remote_dests`) from `n`
//!   reaches `origin`; each hop goes over a link that is up;
//! - **no loop**: following hops never revisits a node (so it ends within N
//!   steps);
//! - **shortest**: those hops are as many as the graph distance (every node
//!   runs a breadth-first search over the same settled topology; a lost
//!   link set typically leaves a node on a detour or with no route);
//! - **cut off means no route**: if `origin` is in another component, `n`
//!   has no route to it.
//!
//! And no node routes a **departed** name: every (name, origin) in any
//! node's `remote_names` is live.
//!
//! [`Fleet::check_memory`], the memory, once virtual time has passed the
//! tombstone and unreachable TTLs (with the GC timers ticking): every live
//! node holds exactly one link set per live origin in its component (itself
//! included) and one entry per live name of those origins — nothing about
//! departed clients, withdrawn names, previous incarnations or nodes it
//! cannot reach.

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
    CutOff {
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
    /// A node's table holds more (or fewer) entries than the live state.
    Memory {
        node: String,
        entries: usize,
        expected: usize,
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
            Violation::CutOff {
                node,
                name,
                origin,
                via,
            } => write!(
                f,
                "node {node} routes {name} to {origin} via {via}, but {origin} is cut off from it"
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
            Violation::Memory {
                node,
                entries,
                expected,
            } => write!(
                f,
                "node {node} holds {entries} entries, the live state is {expected}"
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

struct Collect {
    out: Violations,
}

impl Collect {
    fn new() -> Self {
        Collect {
            out: Violations {
                first: Vec::new(),
                total: 0,
            },
        }
    }

    fn bad(&mut self, v: Violation) {
        if self.out.first.len() < KEEP {
            self.out.first.push(v);
        }
        self.out.total += 1;
    }

    fn result(self) -> Result<(), Violations> {
        if self.out.total == 0 {
            Ok(())
        } else {
            Err(self.out)
        }
    }
}

impl Fleet {
    /// Connected components over the links that are up (a node that is
    /// down has none up): a component id per node.
    fn components(&self) -> Vec<u32> {
        let n = self.nodes.len();
        let mut comp = vec![FAR; n];
        let mut next = 0;
        for s in 0..n as u32 {
            if comp[s as usize] != FAR {
                continue;
            }
            let d = self.graph.distances(s, |e| self.links[e as usize].up);
            for (i, x) in d.iter().enumerate() {
                if *x != FAR {
                    comp[i] = next;
                }
            }
            next += 1;
        }
        comp
    }

    /// Checks the routes; call it only when [`Fleet::run`] went quiet.
    pub fn check(&self) -> Result<(), Violations> {
        let mut c = Collect::new();
        let n = self.nodes.len();
        let id = |i: u32| self.nodes[i as usize].id.to_string();
        let comp = self.components();
        // Live (name, origin) pairs.
        let mut live: HashSet<(Arc<str>, u32)> = HashSet::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if node.up {
                for name in node.local.keys() {
                    live.insert((Arc::clone(name), i as u32));
                }
            }
        }
        // Next hop per node and (name, origin).
        let mut next: Vec<HashMap<(Arc<str>, u32), u32>> = vec![HashMap::new(); n];
        for (i, node) in self.nodes.iter().enumerate() {
            if !node.up {
                continue;
            }
            for (name, _) in node.table.remote_names() {
                for (origin, via) in node.table.remote_dests(&name) {
                    let (Some(o), Some(v)) = (self.index_of(&origin), self.index_of(&via)) else {
                        c.bad(Violation::Departed {
                            node: id(i as u32),
                            name: name.to_string(),
                            origin: origin.to_string(),
                            via: via.to_string(),
                        });
                        continue;
                    };
                    let key = (Arc::clone(&name), o);
                    if !live.contains(&key) {
                        c.bad(Violation::Departed {
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
                        c.bad(Violation::DeadLink {
                            node: id(i as u32),
                            name: name.to_string(),
                            origin: origin.to_string(),
                            via: via.to_string(),
                        });
                    }
                    if comp[o as usize] != comp[i] {
                        c.bad(Violation::CutOff {
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
        // Distances from every live origin over the links that are up.
        let mut dist: HashMap<u32, Vec<u32>> = HashMap::new();
        for (_, o) in &live {
            dist.entry(*o)
                .or_insert_with(|| self.graph.distances(*o, |e| self.links[e as usize].up));
        }
        // Walk from every live node to every live origin of its component.
        let mut live_sorted: Vec<&(Arc<str>, u32)> = live.iter().collect();
        live_sorted.sort();
        for key in live_sorted {
            let (name, o) = key;
            let d = &dist[o];
            for start in 0..n as u32 {
                if start == *o || !self.nodes[start as usize].up || d[start as usize] == FAR {
                    continue;
                }
                let mut seen = HashSet::new();
                let mut hops = vec![id(start)];
                let mut cur = start;
                seen.insert(cur);
                loop {
                    let Some(&v) = next[cur as usize].get(key) else {
                        c.bad(Violation::Unreachable {
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
                            c.bad(Violation::NotShortest {
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
                        c.bad(Violation::Loop {
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
        c.result()
    }

    /// Checks that every live node holds exactly the live state of its
    /// component; call it when the fleet is quiet and virtual time has
    /// passed both TTLs since the last change ([`Fleet::idle`]).
    pub fn check_memory(&self) -> Result<(), Violations> {
        let mut c = Collect::new();
        let comp = self.components();
        // Per component: live origins' link sets + their live names.
        let mut per_comp: HashMap<u32, usize> = HashMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if node.up {
                *per_comp.entry(comp[i]).or_default() += 1 + node.local.len();
            }
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if !node.up {
                continue;
            }
            let expected = per_comp[&comp[i]];
            let entries = node.table.entry_count();
            if entries != expected {
                c.bad(Violation::Memory {
                    node: node.id.to_string(),
                    entries,
                    expected,
                });
            }
        }
        c.result()
    }
}
