//! Interest and topology propagation between nodes, sans-IO: link events,
//! local changes and received frames in (`handle_*`); frames to send, routes
//! to install and the next wake-up out (`poll_*`).
//!
//! Every node is the *origin* of a small set of entries: its **link set**
//! (the peers it has a link up with) and one **name state** per name it has
//! local subscribers of (present, or withdrawn: a tombstone). Entries are
//! versioned by the origin — `(epoch, seq)`, the epoch being the origin's
//! incarnation — and flooded unchanged to every node: a node that learns a
//! newer entry stores it and passes it to every peer but the one it came
//! from; an entry it already has (or an older one) stops there. So one
//! change costs one small frame per link, whatever the path lengths, and a
//! withdrawal is just another entry: nothing hunts for alternative paths
//! (the path-vector protocol this replaces re-announced ever longer paths
//! on every withdrawal and grew as N³–N⁴; see docs/BENCHMARKS.md).
//!
//! Routes come from the topology: an edge counts when both ends list each
//! other (this node's own links count as soon as they are up); a breadth-
//! first search from this node, neighbours in id order, gives every
//! reachable origin its next hop. An unreachable origin's names are not
//! routed to at all (a crashed node's clients vanish with its links), and
//! it is forgotten after `unreachable_ttl`.
//!
//! Coalescing and pacing: what a peer must hear is a *set of keys*
//! (origin, entry), read at send time, so ten changes of one name while a
//! link is busy cost one entry; a peer gets at most one frame per `pace`,
//! and the driver only takes a frame when the link's control queue has room
//! (backpressure, never a reset).
//!
//! A link coming up exchanges *digests* (per origin: epoch, present-name
//! count, an order-independent hash); each side then sends only the origins
//! that differ. The origin is the authority on its own entries: a node that
//! receives a stale entry about itself (after a partition, say) re-issues
//! the truth with a higher seq, which floods and wins everywhere. When a
//! partition heals, the link that comes up is rarely next to every node
//! whose view drifted (nodes forget unreachable origins and tombstones on
//! their own timers), so each node that held an origin through a partition
//! floods it once more when it becomes reachable again.
//!
//! The data plane uses the result as *destinations*: a publish is sent, per
//! next-hop peer, with the list of origin nodes that peer must reach, so each
//! interested node is reached through exactly one branch (exactly-once
//! multicast in any mesh, not just in trees).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::Hasher;
use std::sync::Arc;
use std::time::Duration;

use slim_wire::{Interest, LinkSet, Name, NameState, OriginDigest, OriginUpdate};

/// A node id.
pub type NodeId = Arc<str>;

/// Why (part of) a frame from a peer was ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterestError {
    #[error("interest from {peer}, which has no link up")]
    UnknownPeer { peer: String },
    #[error("interest from {peer}: invalid origin node id {origin:?}")]
    BadOrigin { peer: String, origin: String },
    #[error("interest from {peer}: link set of {origin} is invalid ({why})")]
    BadLinks {
        peer: String,
        origin: String,
        why: &'static str,
    },
    #[error(
        "interest from {peer}: the table is full ({max} entries); entries of {origin} not stored"
    )]
    TableFull {
        peer: String,
        origin: String,
        max: usize,
    },
}

impl InterestError {
    /// A short label for metrics.
    pub fn reason_label(&self) -> &'static str {
        match self {
            InterestError::UnknownPeer { .. } => "unknown_peer",
            InterestError::BadOrigin { .. } => "bad_origin",
            InterestError::BadLinks { .. } => "bad_links",
            InterestError::TableFull { .. } => "table_full",
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

/// Tuning of the protocol (the defaults suit fleets of 1 to 1,000 nodes).
#[derive(Debug, Clone)]
pub struct InterestConfig {
    /// Least time between two frames to one peer; what changes meanwhile is
    /// coalesced into the next frame.
    pub pace: Duration,
    /// How long a withdrawn name's tombstone is kept, so that an older
    /// "present" still travelling some other path cannot resurrect it.
    pub tombstone_ttl: Duration,
    /// How long the entries of an origin no path reaches are kept (a node
    /// that comes back within it is routed to at once; later it resyncs
    /// through the digest of whichever link brings it back).
    pub unreachable_ttl: Duration,
    /// Entries (keys) per frame.
    pub batch: usize,
    /// Most entries (names of all origins, tombstones included) the table
    /// holds; beyond it a peer's new entries are refused with an error.
    pub max_entries: usize,
}

impl Default for InterestConfig {
    fn default() -> Self {
        InterestConfig {
            pace: Duration::from_millis(20),
            tombstone_ttl: Duration::from_secs(30),
            unreachable_ttl: Duration::from_secs(60),
            batch: 512,
            max_entries: 2_000_000,
        }
    }
}

/// Most peers one link set may list.
const MAX_LINKS: usize = 4096;

/// An origin unreachable for this long and reachable again is flooded once
/// more by every node that held it (see `refresh_routes`).
const RETURN_AFTER: Duration = Duration::from_secs(1);

/// One entry of an origin.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Item {
    Links,
    Name(Arc<str>),
}

type Key = (NodeId, Item);

#[derive(Debug, Clone, Copy)]
struct NameEntry {
    seq: u64,
    present: bool,
}

/// Containers at or below this capacity are never shrunk.
const SHRINK_FLOOR: usize = 64;

/// Gives back a map's capacity once it is a quarter full (see `handle_tick`).
fn shrink_map<K: std::hash::Hash + Eq, V>(m: &mut HashMap<K, V>) {
    if m.capacity() > SHRINK_FLOOR && m.len() < m.capacity() / 4 {
        m.shrink_to((m.len() * 2).max(SHRINK_FLOOR));
    }
}

#[derive(Debug)]
struct Origin {
    epoch: u64,
    links: Option<(u64, BTreeSet<NodeId>)>,
    names: HashMap<Arc<str>, NameEntry>,
    present: u32,
    /// XOR of the present names' hashes.
    hash: u64,
    unreachable_since: Option<Duration>,
}

impl Origin {
    fn new(epoch: u64) -> Self {
        Origin {
            epoch,
            links: None,
            names: HashMap::new(),
            present: 0,
            hash: 0,
            unreachable_since: None,
        }
    }

    fn digest(&self, id: &str) -> OriginDigest {
        OriginDigest {
            origin: id.to_owned(),
            epoch: self.epoch,
            links_seq: self.links.as_ref().map_or(0, |(s, _)| *s),
            names: self.present,
            hash: self.hash,
        }
    }

    fn entries(&self) -> usize {
        self.names.len() + usize::from(self.links.is_some())
    }

    /// Names this origin has subscribers of now.
    fn present_names(&self) -> impl Iterator<Item = Arc<str>> + '_ {
        self.names
            .iter()
            .filter(|(_, e)| e.present)
            .map(|(n, _)| Arc::clone(n))
    }

    /// The keys of every entry held of this origin (`id`).
    fn keys<'a>(&'a self, id: &'a NodeId) -> impl Iterator<Item = Key> + 'a {
        self.links
            .as_ref()
            .map(|_| (Arc::clone(id), Item::Links))
            .into_iter()
            .chain(
                self.names
                    .keys()
                    .map(|n| (Arc::clone(id), Item::Name(Arc::clone(n)))),
            )
    }
}

/// What one peer still has to hear.
#[derive(Debug, Default)]
struct Peer {
    pending: BTreeSet<Key>,
    digest: VecDeque<OriginDigest>,
    next_at: Duration,
    /// The last origin of its digest's previous part (the next part covers
    /// the origins after it).
    digest_from: Option<String>,
    /// Whether its link-up digest arrived (until then, the digest exchange
    /// is what brings it what it lacks).
    heard_digest: bool,
}

impl Peer {
    fn has_work(&self) -> bool {
        !self.pending.is_empty() || !self.digest.is_empty()
    }
}

/// A stable 64-bit hash (the same on every node and release, unlike std's
/// randomly keyed one): FNV-1a, then a finaliser so XORs of many stay spread.
fn stable_hash(tag: u8, name: &str, seq: u64) -> u64 {
    let mut h = fnv::FnvHasher::default();
    h.write_u8(tag);
    h.write(name.as_bytes());
    h.write_u64(seq);
    let mut x = h.finish();
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn name_hash(name: &str, seq: u64) -> u64 {
    stable_hash(1, name, seq)
}

/// The interest state of one node.
#[derive(Debug)]
pub struct InterestTable {
    me: NodeId,
    cfg: InterestConfig,
    /// This node's incarnation and its last seq.
    epoch: u64,
    seq: u64,
    /// Names with local subscribers (the truth about this origin).
    local: BTreeSet<Arc<str>>,
    peers: BTreeMap<NodeId, Peer>,
    origins: HashMap<NodeId, Origin>,
    /// Name → remote origins where it is present (reachable or not).
    by_name: HashMap<Arc<str>, BTreeSet<NodeId>>,
    /// Reachable remote origin → the peer it is reached through.
    routes: HashMap<NodeId, NodeId>,
    topo_dirty: bool,
    /// Names whose remote destinations changed since the last poll.
    changed: BTreeSet<Arc<str>>,
    /// Tombstones by expiry: (expires, origin, name, seq).
    tombstones: VecDeque<(Duration, NodeId, Arc<str>, u64)>,
    entries: usize,
    now: Duration,
}

impl InterestTable {
    /// A table for node `me`; `epoch` must grow across the node's restarts
    /// (its start time in µs since the Unix epoch serves).
    pub fn new(me: &str, epoch: u64, cfg: InterestConfig) -> Self {
        let me: NodeId = Arc::from(me);
        let mut origins = HashMap::new();
        let mut own = Origin::new(epoch);
        own.links = Some((1, BTreeSet::new()));
        origins.insert(Arc::clone(&me), own);
        InterestTable {
            me,
            cfg,
            epoch,
            seq: 1,
            local: BTreeSet::new(),
            peers: BTreeMap::new(),
            origins,
            by_name: HashMap::new(),
            routes: HashMap::new(),
            topo_dirty: false,
            changed: BTreeSet::new(),
            tombstones: VecDeque::new(),
            entries: 1,
            now: Duration::ZERO,
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Queues `key` for every peer except `except` (the one it came from).
    /// The origin gets its own entries back too: that is how it learns
    /// that a stale entry about it is around (after a partition) and
    /// corrects it; it costs one entry per link of the origin.
    fn flood(&mut self, key: Key, except: Option<&str>) {
        for (id, p) in self.peers.iter_mut() {
            if Some(&**id) == except {
                continue;
            }
            p.pending.insert(key.clone());
        }
    }

    /// Local subscribers of `name` appeared (`true`) or are all gone.
    pub fn handle_local(&mut self, name: &str, present: bool) {
        // One allocation of the name, shared by the local set and this
        // node's own entry (a node holds one per subscribed name).
        let changed = if present {
            if self.local.contains(name) {
                None
            } else {
                let name: Arc<str> = Arc::from(name);
                self.local.insert(Arc::clone(&name));
                Some(name)
            }
        } else {
            self.local.take(name)
        };
        if let Some(name) = changed {
            self.originate_name(name, present);
        }
    }

    /// Issues this node's entry for `name` with a new seq and floods it.
    fn originate_name(&mut self, name: Arc<str>, present: bool) {
        let seq = self.next_seq();
        let me = Arc::clone(&self.me);
        self.store_name(&me, &name, seq, present);
        self.flood((me, Item::Name(name)), None);
    }

    /// Issues this node's link set with a new seq and floods it.
    fn originate_links(&mut self) {
        let seq = self.next_seq();
        let peers: BTreeSet<NodeId> = self.peers.keys().cloned().collect();
        let me = Arc::clone(&self.me);
        let own = self.origins.get_mut(&me).expect("own origin");
        own.links = Some((seq, peers));
        self.topo_dirty = true;
        self.flood((me, Item::Links), None);
    }

    /// A link to `peer` came up: both ends re-issue their link sets and
    /// exchange digests.
    pub fn handle_peer_up(&mut self, peer: &str, now: Duration) {
        self.now = self.now.max(now);
        let peer: NodeId = Arc::from(peer);
        if self.peers.contains_key(&peer) {
            return;
        }
        let mut digest: Vec<OriginDigest> =
            self.origins.iter().map(|(id, o)| o.digest(id)).collect();
        digest.sort_by(|a, b| a.origin.cmp(&b.origin));
        self.peers.insert(
            Arc::clone(&peer),
            Peer {
                pending: BTreeSet::new(),
                digest: digest.into(),
                next_at: now,
                digest_from: None,
                heard_digest: false,
            },
        );
        self.originate_links();
    }

    /// The link to `peer` went down.
    pub fn handle_peer_down(&mut self, peer: &str, now: Duration) {
        self.now = self.now.max(now);
        if self.peers.remove(peer).is_none() {
            return;
        }
        self.originate_links();
    }

    /// A frame from `peer`: merges its entries and answers its digest.
    /// Returns the parts refused (the rest is applied).
    pub fn handle_interest(
        &mut self,
        peer: &str,
        frame: &Interest,
        now: Duration,
    ) -> Vec<InterestError> {
        self.now = self.now.max(now);
        if !self.peers.contains_key(peer) {
            return vec![InterestError::UnknownPeer { peer: peer.into() }];
        }
        let mut errors = Vec::new();
        for u in &frame.updates {
            if let Err(e) = self.handle_update(peer, u) {
                errors.push(e);
            }
        }
        if !frame.digest.is_empty() || frame.digest_last {
            self.handle_digest(peer, &frame.digest, frame.digest_last);
        }
        errors
    }

    fn handle_update(&mut self, peer: &str, u: &OriginUpdate) -> Result<(), InterestError> {
        if !valid_node_id(&u.origin) {
            return Err(InterestError::BadOrigin {
                peer: peer.into(),
                origin: u.origin.clone(),
            });
        }
        if let Some(ls) = &u.links {
            let why = if ls.peers.len() > MAX_LINKS {
                Some("too many peers")
            } else if !ls.peers.iter().all(|p| valid_node_id(p)) {
                Some("invalid node id")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(InterestError::BadLinks {
                    peer: peer.into(),
                    origin: u.origin.clone(),
                    why,
                });
            }
        }
        if *u.origin == *self.me {
            self.correct_own(u);
            return Ok(());
        }
        let origin: NodeId = self
            .origins
            .get_key_value(u.origin.as_str())
            .map(|(k, _)| Arc::clone(k))
            .unwrap_or_else(|| Arc::from(u.origin.as_str()));
        match self.origins.get(&origin).map(|o| o.epoch) {
            Some(e) if e > u.epoch => return Ok(()), // an older incarnation
            Some(e) if e < u.epoch => self.drop_origin(&origin),
            _ => {}
        }
        if self.entries + u.names.len() + 1 > self.cfg.max_entries {
            return Err(InterestError::TableFull {
                peer: peer.into(),
                origin: u.origin.clone(),
                max: self.cfg.max_entries,
            });
        }
        if !self.origins.contains_key(&origin) {
            let mut o = Origin::new(u.epoch);
            // Reachable or not is decided at the next route refresh.
            o.unreachable_since = Some(self.now);
            self.origins.insert(Arc::clone(&origin), o);
            self.topo_dirty = true;
        }
        if let Some(ls) = &u.links {
            let o = self.origins.get_mut(&origin).expect("inserted above");
            if o.links.as_ref().is_none_or(|(s, _)| ls.seq > *s) {
                if o.links.is_none() {
                    self.entries += 1;
                }
                o.links = Some((
                    ls.seq,
                    ls.peers.iter().map(|p| Arc::from(p.as_str())).collect(),
                ));
                self.topo_dirty = true;
                self.flood((Arc::clone(&origin), Item::Links), Some(peer));
            }
            let same = self.origins[&origin]
                .links
                .as_ref()
                .is_some_and(|(s, _)| *s == ls.seq);
            if same {
                self.heard(peer, (Arc::clone(&origin), Item::Links));
            }
        }
        for ns in &u.names {
            let mine = self
                .origins
                .get(&origin)
                .and_then(|o| o.names.get(ns.name.as_str()))
                .map(|e| e.seq);
            let name: Arc<str> = Arc::from(ns.name.as_str());
            let key = (Arc::clone(&origin), Item::Name(Arc::clone(&name)));
            if mine.is_none_or(|m| ns.seq > m) {
                self.store_name(&origin, &name, ns.seq, ns.present);
                self.flood(key.clone(), Some(peer));
                self.heard(peer, key);
            } else if mine == Some(ns.seq) {
                self.heard(peer, key);
            }
        }
        Ok(())
    }

    /// `peer` has the version of `key` we hold: it need not hear it from us
    /// (two neighbours that learned an entry at once would otherwise send it
    /// to each other).
    fn heard(&mut self, peer: &str, key: Key) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.pending.remove(&key);
        }
    }

    /// Someone holds an entry about this node: if it is not the truth, the
    /// truth is re-issued with a higher seq.
    fn correct_own(&mut self, u: &OriginUpdate) {
        if u.epoch > self.epoch {
            // Our clock went back across a restart: become newer than that
            // incarnation and re-issue everything.
            self.epoch = u.epoch + 1;
            self.origins.get_mut(&self.me).expect("own origin").epoch = self.epoch;
            let names: Vec<Arc<str>> = self.local.iter().cloned().collect();
            for n in names {
                self.originate_name(n, true);
            }
            self.originate_links();
            return;
        }
        if u.epoch < self.epoch {
            return; // our previous incarnation; our epoch supersedes it
        }
        let top = u
            .names
            .iter()
            .map(|n| n.seq)
            .chain(u.links.as_ref().map(|l| l.seq))
            .max()
            .unwrap_or(0);
        self.seq = self.seq.max(top);
        if u.links.as_ref().is_some_and(|l| {
            self.origins[&self.me]
                .links
                .as_ref()
                .is_none_or(|(s, _)| l.seq > *s)
        }) {
            self.originate_links();
        }
        for ns in &u.names {
            let mine = self.origins[&self.me].names.get(ns.name.as_str()).copied();
            // An entry newer than ours, or a "present" whose tombstone we
            // already forgot: re-issue the truth. An older entry needs
            // nothing: ours is newer and on its way.
            let stale = match mine {
                Some(m) => ns.seq > m.seq,
                None => ns.present,
            };
            if stale {
                let truth = self.local.contains(ns.name.as_str());
                self.originate_name(Arc::from(ns.name.as_str()), truth);
            }
        }
    }

    /// The peer's digest: every origin it lacks or holds differently is
    /// sent to it in full (tombstones included).
    fn handle_digest(&mut self, peer: &str, digest: &[OriginDigest], last: bool) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        // This part covers origins after the previous part's last one, up
        // to its own last one (or to the end if it is the last part).
        let from = p.digest_from.take();
        let to = (!last)
            .then(|| digest.iter().map(|d| d.origin.clone()).max())
            .flatten();
        p.digest_from.clone_from(&to);
        let in_part = |id: &str| {
            from.as_deref().is_none_or(|f| id > f) && to.as_deref().is_none_or(|t| id <= t)
        };
        let theirs: HashMap<&str, &OriginDigest> =
            digest.iter().map(|d| (d.origin.as_str(), d)).collect();
        let mut keys = Vec::new();
        for (id, o) in self.origins.iter().filter(|(id, _)| in_part(id)) {
            // (The peer's own origin too: if we hold something stale about
            // it, it corrects it.)
            // Link sets and names are compared apart: a link set changes on
            // every link event (both ends' digests are already behind the
            // link set this very link-up issued) and costs one entry, while
            // the names may be many.
            let links_seq = o.links.as_ref().map(|(s, _)| *s);
            let (links, names) = match theirs.get(&**id) {
                None => (links_seq.is_some(), true),
                Some(d) if d.epoch > o.epoch => (false, false), // ours is older: theirs comes our way
                Some(d) if d.epoch < o.epoch => (links_seq.is_some(), true),
                Some(d) => (
                    links_seq.is_some_and(|s| s > d.links_seq),
                    d.names != o.present || d.hash != o.hash,
                ),
            };
            if links {
                keys.push((Arc::clone(id), Item::Links));
            }
            if names {
                keys.extend(
                    o.names
                        .keys()
                        .map(|n| (Arc::clone(id), Item::Name(Arc::clone(n)))),
                );
            }
        }
        if let Some(p) = self.peers.get_mut(peer) {
            p.heard_digest |= last;
            p.pending.extend(keys);
        }
    }

    /// Stores one name state (already known to be newer).
    fn store_name(&mut self, origin: &NodeId, name: &Arc<str>, seq: u64, present: bool) {
        let Some(o) = self.origins.get_mut(origin) else {
            return;
        };
        let old = o.names.insert(Arc::clone(name), NameEntry { seq, present });
        match old {
            Some(e) if e.present => {
                o.hash ^= name_hash(name, e.seq);
                o.present -= 1;
            }
            Some(_) => {}
            None => self.entries += 1,
        }
        if present {
            o.hash ^= name_hash(name, seq);
            o.present += 1;
        } else {
            self.tombstones.push_back((
                self.now + self.cfg.tombstone_ttl,
                Arc::clone(origin),
                Arc::clone(name),
                seq,
            ));
        }
        if *origin == self.me {
            return;
        }
        let was = old.is_some_and(|e| e.present);
        if was != present {
            if present {
                self.by_name
                    .entry(Arc::clone(name))
                    .or_default()
                    .insert(Arc::clone(origin));
            } else if let Some(set) = self.by_name.get_mut(name) {
                set.remove(origin);
                if set.is_empty() {
                    self.by_name.remove(name);
                }
            }
            if self.routes.contains_key(origin) {
                self.changed.insert(Arc::clone(name));
            }
        }
    }

    /// Forgets every entry of `origin` (a newer incarnation, or unreachable
    /// for too long).
    fn drop_origin(&mut self, origin: &NodeId) {
        let Some(o) = self.origins.remove(origin) else {
            return;
        };
        self.entries -= o.entries();
        let routed = self.routes.contains_key(origin);
        for (name, e) in o.names {
            if !e.present {
                continue;
            }
            if let Some(set) = self.by_name.get_mut(&name) {
                set.remove(origin);
                if set.is_empty() {
                    self.by_name.remove(&name);
                }
            }
            if routed {
                self.changed.insert(name);
            }
        }
        for p in self.peers.values_mut() {
            p.pending.retain(|k| k.0 != *origin);
        }
        self.topo_dirty = true;
    }

    /// Time passed: expired tombstones and long-unreachable origins go.
    pub fn handle_tick(&mut self, now: Duration) {
        self.now = self.now.max(now);
        self.refresh_routes();
        while let Some((at, _, _, _)) = self.tombstones.front() {
            if *at > self.now {
                break;
            }
            let (_, origin, name, seq) = self.tombstones.pop_front().expect("front");
            let Some(o) = self.origins.get_mut(&origin) else {
                continue;
            };
            if o.names
                .get(&name)
                .is_some_and(|e| !e.present && e.seq == seq)
            {
                o.names.remove(&name);
                shrink_map(&mut o.names);
                self.entries -= 1;
                for p in self.peers.values_mut() {
                    p.pending
                        .remove(&(Arc::clone(&origin), Item::Name(Arc::clone(&name))));
                }
            }
        }
        // A burst of departures leaves these at their high-water capacity;
        // give it back once they are a quarter full (amortized O(1)), so a
        // node's memory returns to idle after churn stops.
        if self.tombstones.capacity() > SHRINK_FLOOR
            && self.tombstones.len() < self.tombstones.capacity() / 4
        {
            self.tombstones
                .shrink_to((self.tombstones.len() * 2).max(SHRINK_FLOOR));
        }
        let ttl = self.cfg.unreachable_ttl;
        let gone: Vec<NodeId> = self
            .origins
            .iter()
            .filter(|(_, o)| o.unreachable_since.is_some_and(|t| t + ttl <= self.now))
            .map(|(id, _)| Arc::clone(id))
            .collect();
        for id in gone {
            self.drop_origin(&id);
        }
    }

    /// The next frame for `peer`, if it has something to hear and its pace
    /// allows one now.
    pub fn poll_announce_to(&mut self, peer: &str, now: Duration) -> Option<Interest> {
        self.now = self.now.max(now);
        let batch = self.cfg.batch.max(1);
        let p = self.peers.get_mut(peer)?;
        if !p.has_work() || p.next_at > now {
            return None;
        }
        p.next_at = now + self.cfg.pace;
        let mut out = Interest {
            updates: Vec::new(),
            digest: Vec::new(),
            digest_last: false,
        };
        let mut n = 0;
        while n < batch {
            let Some(d) = p.digest.pop_front() else {
                break;
            };
            out.digest.push(d);
            n += 1;
        }
        out.digest_last = !out.digest.is_empty() && p.digest.is_empty();
        while n < batch {
            let Some(key) = p.pending.pop_first() else {
                break;
            };
            let Some(o) = self.origins.get(&key.0) else {
                continue;
            };
            if out.updates.last().is_none_or(|u| *u.origin != *key.0) {
                out.updates.push(OriginUpdate {
                    origin: key.0.to_string(),
                    epoch: o.epoch,
                    links: None,
                    names: Vec::new(),
                });
            }
            let u = out.updates.last_mut().expect("pushed above");
            match &key.1 {
                Item::Links => {
                    if let Some((seq, peers)) = &o.links {
                        u.links = Some(LinkSet {
                            seq: *seq,
                            peers: peers.iter().map(|p| p.to_string()).collect(),
                        });
                        n += 1;
                    }
                }
                Item::Name(name) => {
                    let (Some(e), Ok(parsed)) = (o.names.get(name), Name::parse(name)) else {
                        // A tombstone expired meanwhile; names in the table
                        // were validated when they entered it.
                        continue;
                    };
                    u.names.push(NameState {
                        name: parsed,
                        seq: e.seq,
                        present: e.present,
                    });
                    n += 1;
                }
            }
        }
        out.updates
            .retain(|u| u.links.is_some() || !u.names.is_empty());
        (!out.updates.is_empty() || !out.digest.is_empty()).then_some(out)
    }

    /// The next frame for any peer (see [`InterestTable::poll_announce_to`]).
    pub fn poll_announce(&mut self, now: Duration) -> Option<(NodeId, Interest)> {
        let ready: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.has_work() && p.next_at <= now)
            .map(|(id, _)| Arc::clone(id))
            .collect();
        for id in ready {
            if let Some(f) = self.poll_announce_to(&id, now) {
                return Some((id, f));
            }
        }
        None
    }

    /// When a peer that has something to hear may next be sent a frame
    /// (`None`: nobody waits).
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.peers
            .values()
            .filter(|p| p.has_work())
            .map(|p| p.next_at)
            .min()
    }

    /// Whether `peer` has anything waiting (sent or not because of pace or a
    /// full queue).
    pub fn has_pending(&self, peer: &str) -> bool {
        self.peers.get(peer).is_some_and(Peer::has_work)
    }

    /// The next name whose remote destinations changed (read them with
    /// [`InterestTable::remote_dests`]).
    pub fn poll_route_change(&mut self) -> Option<Arc<str>> {
        self.refresh_routes();
        self.changed.pop_first()
    }

    /// Hands `name` out again at the next [`InterestTable::poll_route_change`]
    /// (its install did not reach the registry).
    pub fn retry_route(&mut self, name: Arc<str>) {
        self.changed.insert(name);
    }

    /// Every name routed through `peer` is handed out again: the link to it
    /// was replaced by another one (same routes, new outbox), which a
    /// peer-down and peer-up in one go do not show as a route change.
    pub fn retry_routes_via(&mut self, peer: &str) {
        self.refresh_routes();
        for (o, via) in &self.routes {
            if **via != *peer {
                continue;
            }
            if let Some(origin) = self.origins.get(o) {
                self.changed.extend(origin.present_names());
            }
        }
    }

    /// Every name with remote interest is handed out again (the registry's
    /// remote routes must be rebuilt).
    pub fn retry_all_routes(&mut self) {
        self.changed.extend(self.by_name.keys().cloned());
    }

    /// Recomputes next hops if the topology changed; names of origins whose
    /// next hop or reachability changed are marked changed.
    fn refresh_routes(&mut self) {
        if !self.topo_dirty {
            return;
        }
        self.topo_dirty = false;
        let next = self.shortest_first_hops();
        let mut moved: Vec<NodeId> = Vec::new();
        for (o, via) in &next {
            if self.routes.get(o) != Some(via) {
                moved.push(Arc::clone(o));
            }
        }
        for o in self.routes.keys() {
            if !next.contains_key(o) {
                moved.push(Arc::clone(o));
            }
        }
        // Origins reachable again after a partition: nodes forget an
        // unreachable origin at different times (their GC timers differ)
        // and the origin forgets tombstones meanwhile, so neighbours may
        // now differ in ways only a link-up digest would show, and the
        // link that came up is elsewhere. Every node that held such an
        // origin (for `RETURN_AFTER` at least: not one whose entries merely
        // arrived in pieces) floods what it holds of it once more: a node
        // that forgot it learns it again, and a stale entry reaches the
        // origin, which corrects it (`correct_own`). A peer whose link-up
        // digest has not arrived yet is left to the digest exchange.
        let mut returned: Vec<NodeId> = Vec::new();
        for (id, o) in self.origins.iter_mut() {
            if *id == self.me {
                continue;
            }
            if next.contains_key(id) {
                if o.unreachable_since
                    .is_some_and(|t| self.now >= t + RETURN_AFTER)
                {
                    returned.push(Arc::clone(id));
                }
                o.unreachable_since = None;
            } else if o.unreachable_since.is_none() {
                o.unreachable_since = Some(self.now);
            }
        }
        for id in returned {
            let o = &self.origins[&id];
            let keys: Vec<Key> = o.keys(&id).collect();
            for p in self.peers.values_mut().filter(|p| p.heard_digest) {
                p.pending.extend(keys.iter().cloned());
            }
        }
        for id in moved {
            if let Some(o) = self.origins.get(&id) {
                self.changed.extend(o.present_names());
            }
        }
        self.routes = next;
    }

    /// Breadth-first search from this node over confirmed edges; each
    /// reachable node's first hop (neighbours in id order, so every node
    /// computes the same trees from the same view).
    fn shortest_first_hops(&self) -> HashMap<NodeId, NodeId> {
        let mut hop: HashMap<NodeId, NodeId> = HashMap::new();
        let mut queue: VecDeque<NodeId> = VecDeque::new();
        for p in self.peers.keys() {
            hop.insert(Arc::clone(p), Arc::clone(p));
            queue.push_back(Arc::clone(p));
        }
        while let Some(x) = queue.pop_front() {
            let first = Arc::clone(&hop[&x]);
            let Some((_, links)) = self.origins.get(&x).and_then(|o| o.links.as_ref()) else {
                continue;
            };
            for y in links {
                if *y == self.me || hop.contains_key(y) {
                    continue;
                }
                // Both ends must list each other.
                let confirmed = self
                    .origins
                    .get(y)
                    .and_then(|o| o.links.as_ref())
                    .is_some_and(|(_, l)| l.contains(&x));
                if confirmed {
                    hop.insert(Arc::clone(y), Arc::clone(&first));
                    queue.push_back(Arc::clone(y));
                }
            }
        }
        hop
    }

    /// Remote nodes with subscribers of `name` and the peer each is reached
    /// through (unreachable ones are left out).
    pub fn remote_dests(&self, name: &str) -> Vec<(NodeId, NodeId)> {
        let Some(origins) = self.by_name.get(name) else {
            return Vec::new();
        };
        origins
            .iter()
            .filter_map(|o| Some((Arc::clone(o), Arc::clone(self.routes.get(o)?))))
            .collect()
    }

    /// Every name with reachable remote interest and the remote nodes
    /// interested.
    pub fn remote_names(&self) -> BTreeMap<Arc<str>, Vec<NodeId>> {
        let mut out = BTreeMap::new();
        for (name, origins) in &self.by_name {
            let v: Vec<NodeId> = origins
                .iter()
                .filter(|o| self.routes.contains_key(*o))
                .cloned()
                .collect();
            if !v.is_empty() {
                out.insert(Arc::clone(name), v);
            }
        }
        out
    }

    /// Entries held (link sets and name states of every origin, tombstones
    /// included): the table's memory.
    pub fn entry_count(&self) -> usize {
        self.entries
    }

    /// Origins known (this node included).
    pub fn origin_count(&self) -> usize {
        self.origins.len()
    }

    /// Remote origins reachable now.
    pub fn reachable_count(&self) -> usize {
        self.routes.len()
    }

    pub fn peers(&self) -> impl Iterator<Item = &NodeId> {
        self.peers.keys()
    }
}

#[cfg(test)]
mod tests;
