//! The sharded subscription registry.
//!
//! The publish path reads it directly (one dashmap shard read and an `Arc`
//! clone, no actor hop); only the subscription-table actor mutates it, so
//! mutations are serialized without making readers wait on a mailbox.
//! Each name maps to an immutable snapshot of its subscribers: a mutation
//! builds a new snapshot and swaps it in, so a reader iterates without
//! holding any lock while fanning out.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;

use crate::outbox::Outbox;

/// Node-local connection id.
pub type ConnId = u64;

/// One subscriber of a name: a connection and its outbound queue.
#[derive(Clone, Debug)]
pub struct Sub {
    pub conn: ConnId,
    pub outbox: Arc<Outbox>,
}

/// Remote subscribers of a name reached through one peer link: the link's
/// queue and the nodes (interest origins) that link must carry a message to.
#[derive(Clone, Debug)]
pub struct RemoteGroup {
    /// The node at the far end of the link.
    pub peer: Arc<str>,
    /// The link session's id (fresh per connection).
    pub link: ConnId,
    pub outbox: Arc<Outbox>,
    pub origins: Vec<Arc<str>>,
}

/// The subscribers of one name: local connections, and remote nodes grouped
/// by the peer link that reaches them (empty on a node without federation,
/// so the single-node path only pays an `is_empty` check).
#[derive(Debug, Default)]
pub struct Route {
    pub subs: Vec<Sub>,
    pub remote: Vec<RemoteGroup>,
    rr: AtomicUsize,
    rr_remote: AtomicUsize,
}

impl Route {
    /// No local and no remote subscriber.
    pub fn is_empty(&self) -> bool {
        self.subs.is_empty() && self.remote.is_empty()
    }

    /// Next remote node in round-robin order (anycast with no local
    /// subscriber), as (group index, origin index).
    pub fn pick_remote(&self) -> Option<(usize, usize)> {
        let total: usize = self.remote.iter().map(|g| g.origins.len()).sum();
        if total == 0 {
            return None;
        }
        let mut i = self.rr_remote.fetch_add(1, Ordering::Relaxed) % total;
        for (gi, g) in self.remote.iter().enumerate() {
            if i < g.origins.len() {
                return Some((gi, i));
            }
            i -= g.origins.len();
        }
        None
    }

    /// Next subscriber (index into `subs`) in round-robin order whose queue
    /// is open, so an anycast still finds a live instance while a closed one
    /// is cleaned up.
    pub fn pick_live(&self) -> Option<usize> {
        (0..self.subs.len())
            .filter_map(|_| self.pick())
            .find(|&i| !self.subs[i].outbox.is_closed())
    }

    /// Next subscriber (index into `subs`) in round-robin order.
    pub fn pick(&self) -> Option<usize> {
        if self.subs.is_empty() {
            return None;
        }
        Some(self.rr.fetch_add(1, Ordering::Relaxed) % self.subs.len())
    }
}

impl Route {
    /// The same route with other local subscribers (remote ones and the
    /// round-robin positions carry over).
    fn with_subs(&self, subs: Vec<Sub>) -> Route {
        Route {
            subs,
            remote: self.remote.clone(),
            rr: AtomicUsize::new(self.rr.load(Ordering::Relaxed)),
            rr_remote: AtomicUsize::new(self.rr_remote.load(Ordering::Relaxed)),
        }
    }
}

#[derive(Debug, Default)]
struct ConnEntry {
    outbox: Option<Arc<Outbox>>,
    names: HashSet<Arc<str>>,
}

/// Names are client-chosen, so the hasher must be keyed (HashDoS); ahash is
/// keyed per process and several times faster than the default SipHash.
type Hasher = ahash::RandomState;

#[derive(Debug, Default)]
pub struct Registry {
    routes: DashMap<Arc<str>, Arc<Route>, Hasher>,
    by_conn: DashMap<ConnId, ConnEntry, Hasher>,
    /// Which connection registered each full name (for takeover).
    owners: DashMap<Arc<str>, ConnId, Hasher>,
    subscriptions: AtomicUsize,
    /// Bumped on every change to `routes`, so a reader (the controller
    /// report) can tell "unchanged" without walking every name.
    changes: AtomicU64,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The current subscribers of `key` (a canonical name string).
    #[inline]
    pub fn lookup(&self, key: &str) -> Option<Arc<Route>> {
        self.routes.get(key).map(|r| Arc::clone(r.value()))
    }

    /// Number of (connection, name) subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.load(Ordering::Relaxed)
    }

    /// Number of distinct names with at least one subscriber.
    pub fn name_count(&self) -> usize {
        self.routes.len()
    }

    /// Connections with an entry (subscriptions or a registered name).
    pub fn conn_count(&self) -> usize {
        self.by_conn.len()
    }

    /// Full names claimed by a connection.
    pub fn owner_count(&self) -> usize {
        self.owners.len()
    }

    /// A counter that changes whenever a route (a name's local or remote
    /// subscribers) changes. Read it before [`Registry::route_summary`]: a
    /// change during the summary then shows as a new value next time.
    pub fn route_generation(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::Release);
    }

    /// Adds a subscription; idempotent per (connection, name).
    /// Returns false if it already existed.
    pub fn add(&self, conn: ConnId, outbox: &Arc<Outbox>, key: &str) -> bool {
        let mut ce = self.by_conn.entry(conn).or_default();
        if ce.outbox.is_none() {
            ce.outbox = Some(Arc::clone(outbox));
        }
        if ce.names.contains(key) {
            return false;
        }
        let key: Arc<str> = match self.routes.get(key) {
            Some(e) => Arc::clone(e.key()),
            None => Arc::from(key),
        };
        ce.names.insert(Arc::clone(&key));
        drop(ce);
        let sub = Sub {
            conn,
            outbox: Arc::clone(outbox),
        };
        let mut entry = self.routes.entry(key).or_default();
        let old = entry.value();
        let mut subs = Vec::with_capacity(old.subs.len() + 1);
        subs.extend(old.subs.iter().cloned());
        subs.push(sub);
        *entry.value_mut() = Arc::new(old.with_subs(subs));
        drop(entry);
        self.subscriptions.fetch_add(1, Ordering::Relaxed);
        self.changed();
        true
    }

    /// Replaces the remote subscribers of `key` (the federation computes them
    /// from interest announcements). Returns whether the name still has any
    /// subscriber.
    pub fn set_remote(&self, key: &str, remote: Vec<RemoteGroup>) -> bool {
        if remote.is_empty() && !self.routes.contains_key(key) {
            return false;
        }
        let key: Arc<str> = match self.routes.get(key) {
            Some(e) => Arc::clone(e.key()),
            None => Arc::from(key),
        };
        let mut entry = self.routes.entry(Arc::clone(&key)).or_default();
        let old = entry.value();
        let route = Route {
            subs: old.subs.clone(),
            remote,
            rr: AtomicUsize::new(old.rr.load(Ordering::Relaxed)),
            rr_remote: AtomicUsize::new(old.rr_remote.load(Ordering::Relaxed)),
        };
        let empty = route.is_empty();
        *entry.value_mut() = Arc::new(route);
        drop(entry);
        if empty {
            self.routes.remove_if(key.as_ref(), |_, r| r.is_empty());
        }
        self.changed();
        !empty
    }

    /// Whether `key` has local subscribers (connections of this node).
    pub fn has_local(&self, key: &str) -> bool {
        self.routes.get(key).is_some_and(|r| !r.subs.is_empty())
    }

    /// Names with local subscribers.
    pub fn local_names(&self) -> Vec<Arc<str>> {
        self.routes
            .iter()
            .filter(|e| !e.value().subs.is_empty())
            .map(|e| Arc::clone(e.key()))
            .collect()
    }

    /// Every name with a subscriber: (name, local subscribers, remote nodes).
    pub fn route_summary(&self) -> Vec<(Arc<str>, usize, Vec<Arc<str>>)> {
        self.routes
            .iter()
            .map(|e| {
                let mut remote: Vec<Arc<str>> = e
                    .value()
                    .remote
                    .iter()
                    .flat_map(|g| g.origins.iter().cloned())
                    .collect();
                remote.sort();
                (Arc::clone(e.key()), e.value().subs.len(), remote)
            })
            .collect()
    }

    /// Number of local subscribers of `key`.
    pub fn local_count(&self, key: &str) -> usize {
        self.routes.get(key).map_or(0, |r| r.subs.len())
    }

    /// Removes a subscription. Returns false if it did not exist.
    pub fn remove(&self, conn: ConnId, key: &str) -> bool {
        let removed = match self.by_conn.get_mut(&conn) {
            Some(mut ce) => ce.names.remove(key),
            None => false,
        };
        if removed {
            self.remove_route(conn, key);
        }
        removed
    }

    fn remove_route(&self, conn: ConnId, key: &str) {
        let now_empty = match self.routes.get_mut(key) {
            Some(mut entry) => {
                let old = entry.value();
                let subs: Vec<Sub> = old
                    .subs
                    .iter()
                    .filter(|s| s.conn != conn)
                    .cloned()
                    .collect();
                if subs.len() != old.subs.len() {
                    self.subscriptions.fetch_sub(1, Ordering::Relaxed);
                }
                let route = old.with_subs(subs);
                let empty = route.is_empty();
                *entry.value_mut() = Arc::new(route);
                empty
            }
            None => return,
        };
        if now_empty {
            self.routes.remove_if(key, |_, r| r.is_empty());
        }
        self.changed();
    }

    /// Records `conn` as the owner of full name `key`, returning the previous
    /// owner if another connection held it (the caller closes that one).
    pub fn claim(&self, conn: ConnId, key: &str) -> Option<ConnId> {
        let prev = self.owners.insert(Arc::from(key), conn);
        prev.filter(|p| *p != conn)
    }

    /// Removes every subscription of `conn` and its name claims.
    /// Returns how many subscriptions were removed.
    pub fn remove_conn(&self, conn: ConnId) -> usize {
        let Some((_, ce)) = self.by_conn.remove(&conn) else {
            return 0;
        };
        let n = ce.names.len();
        for key in &ce.names {
            self.remove_route(conn, key);
            self.owners
                .remove_if(key.as_ref(), |_, owner| *owner == conn);
        }
        n
    }

    /// Names a connection is subscribed to (for diagnostics and tests).
    pub fn names_of(&self, conn: ConnId) -> Vec<String> {
        self.by_conn
            .get(&conn)
            .map(|ce| ce.names.iter().map(|n| n.to_string()).collect())
            .unwrap_or_default()
    }
}

/// The last route one reader looked up, reused while the registry has not
/// changed: a publisher streaming to one name then costs one atomic load
/// per message instead of a sharded map lookup (hash, shard lock, key
/// compare).
#[derive(Debug, Default)]
pub struct RouteMemo {
    /// The name looked up (its buffer reused from one name to the next).
    key: String,
    /// The registry generation read *before* that lookup: a change that
    /// raced with it then shows as a newer generation next time, so a
    /// stale route is never kept past it.
    generation: Option<u64>,
    route: Option<Arc<Route>>,
}

impl RouteMemo {
    /// [`Registry::lookup`], answered from the memo when `key` is the name
    /// of the last lookup and no route has changed since.
    pub fn lookup(&mut self, reg: &Registry, key: &str) -> Option<Arc<Route>> {
        let generation = reg.route_generation();
        if self.generation == Some(generation) && self.key == key {
            return self.route.clone();
        }
        let route = reg.lookup(key);
        self.key.clear();
        self.key.push_str(key);
        self.generation = Some(generation);
        self.route.clone_from(&route);
        route
    }

    /// Forgets the memo (when its reader goes idle): a route holds its
    /// subscribers' outboxes, and a memo kept by an idle publisher would keep
    /// those of subscribers that have since left.
    pub fn forget(&mut self) {
        self.generation = None;
        self.route = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::SlowConsumerPolicy;

    fn ob() -> Arc<Outbox> {
        Arc::new(Outbox::new(4, 1024, SlowConsumerPolicy::drop_newest()).0)
    }

    #[test]
    fn the_route_memo_follows_every_change() {
        let r = Registry::new();
        let mut m = RouteMemo::default();
        assert!(m.lookup(&r, "x/y/z").is_none());
        let a = ob();
        assert!(r.add(1, &a, "x/y/z"));
        let first = m.lookup(&r, "x/y/z").expect("a subscriber now");
        assert_eq!(first.subs.len(), 1);
        let again = m.lookup(&r, "x/y/z").unwrap();
        assert!(Arc::ptr_eq(&first, &again), "unchanged: the memo answers");
        assert!(r.add(2, &ob(), "x/y/z"));
        assert_eq!(m.lookup(&r, "x/y/z").unwrap().subs.len(), 2);
        assert!(m.lookup(&r, "a/b/c").is_none(), "another name is looked up");
        assert!(r.remove(1, "x/y/z"));
        assert!(r.remove(2, "x/y/z"));
        assert!(m.lookup(&r, "x/y/z").is_none_or(|r| r.is_empty()));
    }

    #[test]
    fn a_forgotten_memo_holds_no_outbox() {
        let r = Registry::new();
        let mut m = RouteMemo::default();
        let a = ob();
        assert!(r.add(1, &a, "x/y/z"));
        drop(m.lookup(&r, "x/y/z"));
        // The subscriber leaves; the memo's route still holds its outbox.
        assert_eq!(r.remove_conn(1), 1);
        assert!(Arc::strong_count(&a) > 1, "the memo pins the old route");
        m.forget();
        assert_eq!(Arc::strong_count(&a), 1, "forgotten: nothing else holds it");
        assert!(m.lookup(&r, "x/y/z").is_none_or(|r| r.is_empty()));
    }

    #[test]
    fn add_remove_idempotent() {
        let r = Registry::new();
        let a = ob();
        let g0 = r.route_generation();
        assert!(r.add(1, &a, "x/y/z"));
        let g1 = r.route_generation();
        assert_ne!(g0, g1);
        assert!(!r.add(1, &a, "x/y/z"));
        assert_eq!(r.route_generation(), g1, "no change, same generation");
        assert!(r.add(2, &ob(), "x/y/z"));
        assert_eq!(r.lookup("x/y/z").unwrap().subs.len(), 2);
        assert_eq!(r.subscription_count(), 2);
        assert!(r.remove(1, "x/y/z"));
        assert!(!r.remove(1, "x/y/z"));
        assert_eq!(r.lookup("x/y/z").unwrap().subs.len(), 1);
        assert_ne!(r.route_generation(), g1);
        assert_eq!(r.remove_conn(2), 1);
        assert!(r.lookup("x/y/z").is_none());
        assert_eq!(r.subscription_count(), 0);
        assert_eq!(r.name_count(), 0);
    }

    #[test]
    fn round_robin_uses_everyone() {
        let r = Registry::new();
        for c in 0..3 {
            r.add(c, &ob(), "a/b/c");
        }
        let route = r.lookup("a/b/c").unwrap();
        let mut seen = [0; 3];
        for _ in 0..30 {
            seen[route.subs[route.pick().unwrap()].conn as usize] += 1;
        }
        assert_eq!(seen, [10, 10, 10]);
    }

    #[test]
    fn remote_groups_survive_local_changes() {
        let r = Registry::new();
        let g = RemoteGroup {
            peer: Arc::from("p"),
            link: 99,
            outbox: ob(),
            origins: vec![Arc::from("n2"), Arc::from("n3")],
        };
        assert!(r.set_remote("a/b/c", vec![g]));
        assert!(!r.has_local("a/b/c"));
        r.add(1, &ob(), "a/b/c");
        r.remove(1, "a/b/c");
        let route = r.lookup("a/b/c").expect("remote interest keeps the name");
        assert_eq!(route.remote.len(), 1);
        let picks: Vec<String> = (0..4)
            .map(|_| {
                let (g, o) = route.pick_remote().unwrap();
                route.remote[g].origins[o].to_string()
            })
            .collect();
        assert_eq!(picks, ["n2", "n3", "n2", "n3"]);
        assert!(!r.set_remote("a/b/c", vec![]));
        assert!(r.lookup("a/b/c").is_none());
        assert_eq!(r.name_count(), 0);
    }

    #[test]
    fn claim_reports_previous_owner() {
        let r = Registry::new();
        assert_eq!(r.claim(1, "a/b/c/1"), None);
        assert_eq!(r.claim(2, "a/b/c/1"), Some(1));
        r.remove_conn(1);
        assert_eq!(r.claim(3, "a/b/c/1"), Some(2));
    }
}
