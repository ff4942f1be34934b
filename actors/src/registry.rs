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
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// The subscribers of one name.
#[derive(Debug, Default)]
pub struct Route {
    pub subs: Vec<Sub>,
    rr: AtomicUsize,
}

impl Route {
    /// Next subscriber in round-robin order.
    pub fn pick(&self) -> Option<&Sub> {
        if self.subs.is_empty() {
            return None;
        }
        let i = self.rr.fetch_add(1, Ordering::Relaxed) % self.subs.len();
        Some(&self.subs[i])
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
        let rr = old.rr.load(Ordering::Relaxed);
        *entry.value_mut() = Arc::new(Route {
            subs,
            rr: AtomicUsize::new(rr),
        });
        self.subscriptions.fetch_add(1, Ordering::Relaxed);
        true
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
                let empty = subs.is_empty();
                let rr = old.rr.load(Ordering::Relaxed);
                *entry.value_mut() = Arc::new(Route {
                    subs,
                    rr: AtomicUsize::new(rr),
                });
                empty
            }
            None => false,
        };
        if now_empty {
            self.routes.remove_if(key, |_, r| r.subs.is_empty());
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::SlowConsumerPolicy;

    fn ob() -> Arc<Outbox> {
        Arc::new(Outbox::new(4, 1024, SlowConsumerPolicy::DropNewest).0)
    }

    #[test]
    fn add_remove_idempotent() {
        let r = Registry::new();
        let a = ob();
        assert!(r.add(1, &a, "x/y/z"));
        assert!(!r.add(1, &a, "x/y/z"));
        assert!(r.add(2, &ob(), "x/y/z"));
        assert_eq!(r.lookup("x/y/z").unwrap().subs.len(), 2);
        assert_eq!(r.subscription_count(), 2);
        assert!(r.remove(1, "x/y/z"));
        assert!(!r.remove(1, "x/y/z"));
        assert_eq!(r.lookup("x/y/z").unwrap().subs.len(), 1);
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
            seen[route.pick().unwrap().conn as usize] += 1;
        }
        assert_eq!(seen, [10, 10, 10]);
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
