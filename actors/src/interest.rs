//! Interest propagation between nodes, sans-IO: announcements and link events
//! in (`handle_*`), announcements to send and routes to install out (`poll_*`).
//!
//! It is a path-vector protocol over interest. A node announces "`origin` has
//! subscribers of `name`; reach it through me" with the node path the route
//! took (origin first, announcer last). Each node keeps, per (name, origin),
//! the routes its peers announced and uses the shortest (ties: lowest peer id).
//! Loops are impossible by construction: a node drops any path that already
//! contains itself, never announces a route back to the peer it uses it
//! through (split horizon) and caps paths at `max_hops`. There is no
//! count-to-infinity: a withdrawn route is gone as soon as every path holding
//! it has been withdrawn along it.
//!
//! The data plane uses the result as *destinations*: a publish is sent, per
//! next-hop peer, with the list of origin nodes that peer must reach, so each
//! interested node is reached through exactly one branch (exactly-once
//! multicast in any mesh, not just in trees).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use slim_wire::{Interest, InterestAdd, InterestRemove, Name};

/// A node id.
pub type NodeId = Arc<str>;

type Key = (Arc<str>, NodeId);

/// Why an announcement from a peer was ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterestError {
    #[error("interest from {peer}: empty path for {name}")]
    EmptyPath { peer: String, name: String },
    #[error("interest from {peer}: path for {name} does not end with the announcing node")]
    NotFromPeer { peer: String, name: String },
    #[error("interest from {peer}: path for {name} contains this node (a loop)")]
    Loop { peer: String, name: String },
    #[error("interest from {peer}: path for {name} is {len} hops, over the limit of {max}")]
    TooLong {
        peer: String,
        name: String,
        len: usize,
        max: usize,
    },
    #[error("interest from {peer}: path for {name} repeats a node or has an invalid node id")]
    BadPath { peer: String, name: String },
    #[error("interest from {peer}, which has no link up")]
    UnknownPeer { peer: String },
}

impl InterestError {
    /// A short label for metrics.
    pub fn reason_label(&self) -> &'static str {
        match self {
            InterestError::EmptyPath { .. } => "empty_path",
            InterestError::NotFromPeer { .. } => "not_from_peer",
            InterestError::Loop { .. } => "loop",
            InterestError::TooLong { .. } => "too_long",
            InterestError::BadPath { .. } => "bad_path",
            InterestError::UnknownPeer { .. } => "unknown_peer",
        }
    }
}

/// What to tell one peer: routes to add (or replace) and routes to withdraw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Announce {
    /// (name, path ending with this node).
    pub add: Vec<(String, Vec<String>)>,
    /// (name, origin).
    pub remove: Vec<(String, String)>,
}

impl Announce {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// The `Interest` frame a link carries for this announcement. Names in
    /// the table were validated when they entered it (a client's hello or
    /// subscribe, a peer's decoded frame), so none is dropped here.
    pub fn into_interest(self) -> Interest {
        Interest {
            add: self
                .add
                .into_iter()
                .filter_map(|(name, path)| {
                    Some(InterestAdd {
                        name: Name::parse(&name).ok()?,
                        path,
                    })
                })
                .collect(),
            remove: self
                .remove
                .into_iter()
                .filter_map(|(name, origin)| {
                    Some(InterestRemove {
                        name: Name::parse(&name).ok()?,
                        origin,
                    })
                })
                .collect(),
        }
    }
}

/// A node id a peer may send: short, printable, no separators that logs or
/// labels would mangle.
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'))
}

/// The interest state of one node.
#[derive(Debug)]
pub struct InterestTable {
    me: NodeId,
    max_hops: usize,
    /// Peers with a link up.
    peers: BTreeSet<NodeId>,
    /// Names with local subscribers.
    local: BTreeSet<Arc<str>>,
    /// (name, origin) → peer → path as that peer announced it.
    learned: HashMap<Key, BTreeMap<NodeId, Vec<NodeId>>>,
    /// Index of `learned`: name → origins with at least one route.
    origins: HashMap<Arc<str>, BTreeSet<NodeId>>,
    /// What each peer was last told: peer → (name, origin) → path.
    told: HashMap<NodeId, HashMap<Key, Vec<NodeId>>>,
    /// Changes not yet polled: peer → (name, origin) → Some(path) add / None remove.
    pending: BTreeMap<NodeId, BTreeMap<Key, Option<Vec<NodeId>>>>,
    /// Names whose remote destinations changed since the last poll.
    changed: BTreeSet<Arc<str>>,
}

/// Entries per announcement, so one frame stays far below the frame limit.
const BATCH: usize = 256;

impl InterestTable {
    pub fn new(me: &str, max_hops: usize) -> Self {
        InterestTable {
            me: Arc::from(me),
            max_hops: max_hops.max(1),
            peers: BTreeSet::new(),
            local: BTreeSet::new(),
            learned: HashMap::new(),
            origins: HashMap::new(),
            told: HashMap::new(),
            pending: BTreeMap::new(),
            changed: BTreeSet::new(),
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// Local subscribers of `name` appeared (`true`) or are all gone.
    pub fn handle_local(&mut self, name: &str, present: bool) {
        let changed = if present {
            self.local.insert(Arc::from(name))
        } else {
            self.local.remove(name)
        };
        if changed {
            let key = (Arc::from(name), Arc::clone(&self.me));
            self.reconsider(&key, None);
        }
    }

    /// A link to `peer` came up: it gets every route we can offer it (a full
    /// resync; whatever it knew from an earlier link is gone with that link).
    pub fn handle_peer_up(&mut self, peer: &str) {
        let peer: NodeId = Arc::from(peer);
        if !self.peers.insert(Arc::clone(&peer)) {
            return;
        }
        self.told.insert(Arc::clone(&peer), HashMap::new());
        let mut keys: Vec<Key> = self.learned.keys().cloned().collect();
        keys.extend(
            self.local
                .iter()
                .map(|n| (Arc::clone(n), Arc::clone(&self.me))),
        );
        for key in keys {
            self.reconsider(&key, Some(&peer));
        }
    }

    /// The link to `peer` went down: every route learned from it is withdrawn.
    pub fn handle_peer_down(&mut self, peer: &str) {
        if !self.peers.remove(peer) {
            return;
        }
        self.told.remove(peer);
        self.pending.remove(peer);
        let keys: Vec<Key> = self
            .learned
            .iter()
            .filter(|(_, by)| by.contains_key(peer))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            if let Some(by) = self.learned.get_mut(&key) {
                by.remove(peer);
                if by.is_empty() {
                    self.forget(&key);
                }
            }
            self.changed.insert(Arc::clone(&key.0));
            self.reconsider(&key, None);
        }
    }

    /// `peer` announced a route. Invalid ones are refused (and ignored).
    pub fn handle_add(
        &mut self,
        peer: &str,
        name: &str,
        path: &[String],
    ) -> Result<(), InterestError> {
        let err_ctx = || (peer.to_owned(), name.to_owned());
        let Some(peer_id) = self.peers.get(peer).cloned() else {
            return Err(InterestError::UnknownPeer { peer: peer.into() });
        };
        let (p, n) = err_ctx();
        if path.is_empty() {
            return Err(InterestError::EmptyPath { peer: p, name: n });
        }
        if path.last().map(String::as_str) != Some(peer) {
            return Err(InterestError::NotFromPeer { peer: p, name: n });
        }
        if path.iter().any(|x| **x == *self.me) {
            return Err(InterestError::Loop { peer: p, name: n });
        }
        if path.len() > self.max_hops {
            return Err(InterestError::TooLong {
                peer: p,
                name: n,
                len: path.len(),
                max: self.max_hops,
            });
        }
        let distinct: BTreeSet<&str> = path.iter().map(String::as_str).collect();
        if distinct.len() != path.len() || !path.iter().all(|x| valid_node_id(x)) {
            return Err(InterestError::BadPath { peer: p, name: n });
        }
        let path: Vec<NodeId> = path.iter().map(|x| Arc::from(x.as_str())).collect();
        let key: Key = (Arc::from(name), Arc::clone(&path[0]));
        let before = self.best(&key).map(|(p, _)| Arc::clone(p));
        self.learned
            .entry(key.clone())
            .or_default()
            .insert(peer_id, path);
        self.origins
            .entry(Arc::clone(&key.0))
            .or_default()
            .insert(Arc::clone(&key.1));
        if self.best(&key).map(|(p, _)| Arc::clone(p)) != before {
            self.changed.insert(Arc::clone(&key.0));
        }
        self.reconsider(&key, None);
        Ok(())
    }

    /// `peer` withdrew its route to `origin`'s subscribers of `name`.
    pub fn handle_remove(&mut self, peer: &str, name: &str, origin: &str) {
        let key: Key = (Arc::from(name), Arc::from(origin));
        let before = self.best(&key).map(|(p, _)| Arc::clone(p));
        let Some(by) = self.learned.get_mut(&key) else {
            return;
        };
        if by.remove(peer).is_none() {
            return;
        }
        if by.is_empty() {
            self.forget(&key);
        }
        if self.best(&key).map(|(p, _)| Arc::clone(p)) != before {
            self.changed.insert(Arc::clone(&key.0));
        }
        self.reconsider(&key, None);
    }

    /// The next announcement to send: (peer, what to tell it).
    pub fn poll_announce(&mut self) -> Option<(NodeId, Announce)> {
        let (peer, mut changes) = self.pending.pop_first()?;
        let mut out = Announce::default();
        while let Some((key, change)) = changes.pop_first() {
            match change {
                Some(path) => out.add.push((
                    key.0.to_string(),
                    path.iter().map(|x| x.to_string()).collect(),
                )),
                None => out.remove.push((key.0.to_string(), key.1.to_string())),
            }
            if out.add.len() + out.remove.len() >= BATCH {
                break;
            }
        }
        if !changes.is_empty() {
            self.pending.insert(Arc::clone(&peer), changes);
        }
        Some((peer, out))
    }

    /// The next name whose remote destinations changed (read them with
    /// [`InterestTable::remote_dests`]).
    pub fn poll_route_change(&mut self) -> Option<Arc<str>> {
        self.changed.pop_first()
    }

    /// Remote nodes with subscribers of `name` and the peer each is reached
    /// through.
    pub fn remote_dests(&self, name: &str) -> Vec<(NodeId, NodeId)> {
        let Some(origins) = self.origins.get(name) else {
            return Vec::new();
        };
        let name: Arc<str> = Arc::from(name);
        origins
            .iter()
            .filter_map(|o| {
                let key = (Arc::clone(&name), Arc::clone(o));
                self.best(&key).map(|(p, _)| (Arc::clone(o), Arc::clone(p)))
            })
            .collect()
    }

    /// Drops a (name, origin) that no peer offers any more.
    fn forget(&mut self, key: &Key) {
        self.learned.remove(key);
        if let Some(set) = self.origins.get_mut(&key.0) {
            set.remove(&key.1);
            if set.is_empty() {
                self.origins.remove(&key.0);
            }
        }
    }

    /// Every name with remote interest and the remote nodes interested.
    pub fn remote_names(&self) -> BTreeMap<Arc<str>, Vec<NodeId>> {
        let mut out: BTreeMap<Arc<str>, Vec<NodeId>> = BTreeMap::new();
        for k in self.learned.keys() {
            if self.best(k).is_some() {
                out.entry(Arc::clone(&k.0))
                    .or_default()
                    .push(Arc::clone(&k.1));
            }
        }
        for v in out.values_mut() {
            v.sort();
        }
        out
    }

    /// Number of learned (name, origin, peer) routes.
    pub fn entry_count(&self) -> usize {
        self.learned.values().map(BTreeMap::len).sum()
    }

    pub fn peers(&self) -> impl Iterator<Item = &NodeId> {
        self.peers.iter()
    }

    /// Shortest path, ties broken by the lowest peer id.
    fn best(&self, key: &Key) -> Option<(&NodeId, &Vec<NodeId>)> {
        self.learned
            .get(key)?
            .iter()
            .min_by(|a, b| a.1.len().cmp(&b.1.len()).then_with(|| a.0.cmp(b.0)))
    }

    /// What `peer` should hear about `key` right now.
    fn desired(&self, key: &Key, peer: &NodeId) -> Option<Vec<NodeId>> {
        if key.1 == self.me {
            return self
                .local
                .contains(&key.0)
                .then(|| vec![Arc::clone(&self.me)]);
        }
        let (via, path) = self.best(key)?;
        // Split horizon; and a peer already on the path would refuse it.
        if via == peer || path.contains(peer) || path.len() + 1 > self.max_hops {
            return None;
        }
        let mut p = path.clone();
        p.push(Arc::clone(&self.me));
        Some(p)
    }

    /// Queues whatever changed for `key` towards one peer or all of them.
    fn reconsider(&mut self, key: &Key, only: Option<&NodeId>) {
        let peers: Vec<NodeId> = match only {
            Some(p) => vec![Arc::clone(p)],
            None => self.peers.iter().cloned().collect(),
        };
        for peer in peers {
            let want = self.desired(key, &peer);
            let told = self.told.entry(Arc::clone(&peer)).or_default();
            if told.get(key) == want.as_ref() {
                continue;
            }
            match &want {
                Some(p) => {
                    told.insert(key.clone(), p.clone());
                }
                None => {
                    told.remove(key);
                }
            }
            self.pending
                .entry(peer)
                .or_default()
                .insert(key.clone(), want);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Delivers every pending announcement between tables until quiet; returns
    /// the number of announcements exchanged.
    fn settle(nodes: &mut [InterestTable]) -> usize {
        let mut n = 0;
        loop {
            let mut msgs = Vec::new();
            for t in nodes.iter_mut() {
                while let Some((peer, a)) = t.poll_announce() {
                    msgs.push((t.me().to_string(), peer.to_string(), a));
                }
            }
            if msgs.is_empty() {
                return n;
            }
            for (from, to, a) in msgs {
                n += 1;
                let t = nodes.iter_mut().find(|t| t.me() == to).expect("known node");
                for (name, path) in &a.add {
                    t.handle_add(&from, name, path).expect("valid announcement");
                }
                for (name, origin) in &a.remove {
                    t.handle_remove(&from, name, origin);
                }
            }
            assert!(n < 10_000, "announcements do not converge");
        }
    }

    fn link(nodes: &mut [InterestTable], a: &str, b: &str) {
        for (x, y) in [(a, b), (b, a)] {
            nodes
                .iter_mut()
                .find(|t| t.me() == x)
                .unwrap()
                .handle_peer_up(y);
        }
    }

    fn unlink(nodes: &mut [InterestTable], a: &str, b: &str) {
        for (x, y) in [(a, b), (b, a)] {
            nodes
                .iter_mut()
                .find(|t| t.me() == x)
                .unwrap()
                .handle_peer_down(y);
        }
    }

    fn dests(nodes: &[InterestTable], at: &str, name: &str) -> Vec<(String, String)> {
        nodes
            .iter()
            .find(|t| t.me() == at)
            .unwrap()
            .remote_dests(name)
            .into_iter()
            .map(|(o, p)| (o.to_string(), p.to_string()))
            .collect()
    }

    fn s(a: &str, b: &str) -> (String, String) {
        (a.into(), b.into())
    }

    #[test]
    fn triangle_uses_direct_links_and_fails_over() {
        let mut n: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|x| InterestTable::new(x, 8))
            .collect();
        link(&mut n, "a", "b");
        link(&mut n, "b", "c");
        link(&mut n, "a", "c");
        n[0].handle_local("x/y/z", true);
        n[2].handle_local("x/y/z", true);
        settle(&mut n);
        assert_eq!(dests(&n, "b", "x/y/z"), vec![s("a", "a"), s("c", "c")]);
        assert_eq!(dests(&n, "a", "x/y/z"), vec![s("c", "c")]);
        // a–b fails: b reaches a through c.
        unlink(&mut n, "a", "b");
        settle(&mut n);
        assert_eq!(dests(&n, "b", "x/y/z"), vec![s("a", "c"), s("c", "c")]);
        // And back.
        link(&mut n, "a", "b");
        settle(&mut n);
        assert_eq!(dests(&n, "b", "x/y/z"), vec![s("a", "a"), s("c", "c")]);
        // a's subscribers leave: nobody routes to a any more.
        n[0].handle_local("x/y/z", false);
        settle(&mut n);
        assert_eq!(dests(&n, "b", "x/y/z"), vec![s("c", "c")]);
        assert_eq!(dests(&n, "c", "x/y/z"), vec![]);
        // b keeps c's direct route and the alternative through a.
        assert_eq!(n[1].entry_count(), 2);
    }

    #[test]
    fn chain_propagates_and_withdraws_without_counting_to_infinity() {
        // spoke1 – hub – spoke2, plus a ring back to test loop-freedom.
        let ids = ["s1", "hub", "s2", "s3"];
        let mut n: Vec<_> = ids.iter().map(|x| InterestTable::new(x, 8)).collect();
        link(&mut n, "s1", "hub");
        link(&mut n, "hub", "s2");
        link(&mut n, "s2", "s3");
        link(&mut n, "s3", "s1");
        n[2].handle_local("o/n/s", true);
        settle(&mut n);
        assert_eq!(dests(&n, "s1", "o/n/s"), vec![s("s2", "hub")]);
        n[2].handle_local("o/n/s", false);
        let msgs = settle(&mut n);
        assert!(msgs < 50, "withdrawal took {msgs} announcements");
        for id in ids {
            assert_eq!(dests(&n, id, "o/n/s"), vec![], "{id}");
        }
        assert!(n.iter().all(|t| t.entry_count() == 0));
        assert!(
            n.iter()
                .all(|t| t.origins.is_empty() && t.remote_names().is_empty())
        );
    }

    #[test]
    fn bad_announcements_are_refused() {
        let mut t = InterestTable::new("me", 3);
        assert!(matches!(
            t.handle_add("p", "a/b/c", &["p".into()]),
            Err(InterestError::UnknownPeer { .. })
        ));
        t.handle_peer_up("p");
        let cases: Vec<(Vec<String>, &str)> = vec![
            (vec![], "empty_path"),
            (vec!["q".into()], "not_from_peer"),
            (vec!["me".into(), "p".into()], "loop"),
            (
                vec!["a".into(), "b".into(), "c".into(), "p".into()],
                "too_long",
            ),
            (vec!["p".into(), "p".into()], "bad_path"),
            (vec!["a b".into(), "p".into()], "bad_path"),
        ];
        for (path, want) in cases {
            let e = t.handle_add("p", "a/b/c", &path).unwrap_err();
            assert_eq!(e.reason_label(), want, "{path:?}");
        }
        assert_eq!(t.entry_count(), 0);
        assert!(t.poll_route_change().is_none());
    }

    #[test]
    fn peer_up_gets_a_full_resync_and_split_horizon_holds() {
        let mut t = InterestTable::new("me", 8);
        t.handle_local("a/b/c", true);
        t.handle_peer_up("p");
        t.handle_add("p", "x/y/z", &["o".into(), "p".into()])
            .unwrap();
        let (peer, a) = t.poll_announce().unwrap();
        assert_eq!(&*peer, "p");
        // p hears about our local interest, not about the route it gave us.
        assert_eq!(a.add, vec![("a/b/c".to_string(), vec!["me".to_string()])]);
        assert!(t.poll_announce().is_none());
        t.handle_peer_up("q");
        let (peer, mut a) = t.poll_announce().unwrap();
        assert_eq!(&*peer, "q");
        a.add.sort();
        assert_eq!(
            a.add,
            vec![
                ("a/b/c".to_string(), vec!["me".to_string()]),
                (
                    "x/y/z".to_string(),
                    vec!["o".to_string(), "p".to_string(), "me".to_string()]
                ),
            ]
        );
        // p goes away: q is told to forget the route through us.
        t.handle_peer_down("p");
        let (peer, a) = t.poll_announce().unwrap();
        assert_eq!(&*peer, "q");
        assert_eq!(a.remove, vec![("x/y/z".to_string(), "o".to_string())]);
        assert_eq!(t.poll_route_change().as_deref(), Some("x/y/z"));
    }

    #[test]
    fn large_resyncs_are_batched() {
        let mut t = InterestTable::new("me", 8);
        for i in 0..1000 {
            t.handle_local(&format!("a/b/c{i}"), true);
        }
        t.handle_peer_up("p");
        let mut total = 0;
        while let Some((_, a)) = t.poll_announce() {
            assert!(a.add.len() <= BATCH);
            total += a.add.len();
        }
        assert_eq!(total, 1000);
    }
}
