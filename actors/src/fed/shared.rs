//! Federation state shared by the node's actors and tasks: the link
//! sessions the routing path sends on, each link actor's visible state, and
//! the federation actor's mailbox type. Beneath both the federation actor and
//! the link actors, so neither imports the other's internals.

use parking_lot::{Mutex, RwLock};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use ractor::{ActorRef, RpcReplyPort};
use slim_wire::Interest;
use tokio::sync::{broadcast, mpsc};

use crate::interest::{InterestConfig, InterestTable, NodeId};
use crate::outbox::Outbox;
use crate::registry::ConnId;
use crate::types::{LinkDirection, LinkInfo, LinkState, NodeEvent, PeerSpec};

/// One live connection of a link: what the routing path and the federation
/// actor need to send on it. A new connection is a new session (new id).
pub(crate) struct LinkSession {
    pub id: ConnId,
    pub peer: NodeId,
    /// Node id of the side that dialled this connection (tie-break between
    /// two links to the same peer).
    pub dialler: NodeId,
    pub outbox: Arc<Outbox>,
    /// Interest announcements and pongs, on the link's priority stream.
    pub ctl: mpsc::Sender<Bytes>,
    pub conn: quinn::Connection,
    /// When the peer was last heard on the control stream (a pong or its
    /// own ping), in ms since the process epoch; the link actor's liveness
    /// check reads it.
    pub last_pong: AtomicU64,
    /// Set by the link actor when no pong came within the link timeout: the
    /// session ends with a liveness failure.
    pub expired: tokio::sync::Notify,
}

/// The state of one link actor, visible to `links()`.
pub(crate) struct LinkShared {
    pub direction: LinkDirection,
    pub peer_node_id: RwLock<String>,
    pub peer_spiffe_id: RwLock<Option<String>>,
    pub remote_addr: RwLock<SocketAddr>,
    state: AtomicU8,
    pub up_since: RwLock<Option<SystemTime>>,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    /// Drops of sessions that ended.
    pub past_drops: AtomicU64,
    /// Direct writes of sessions that ended (frames, counted in `frames_out`
    /// too once the session ends).
    pub past_direct: AtomicU64,
    pub session: RwLock<Option<Arc<LinkSession>>>,
    /// The link actor, so its supervisor can find this entry if it dies
    /// without running its `post_stop`.
    pub actor: std::sync::OnceLock<ractor::ActorCell>,
}

impl LinkShared {
    pub fn new(direction: LinkDirection, peer: &str, addr: SocketAddr) -> Self {
        LinkShared {
            direction,
            peer_node_id: RwLock::new(peer.to_owned()),
            peer_spiffe_id: RwLock::new(None),
            remote_addr: RwLock::new(addr),
            state: AtomicU8::new(0),
            up_since: RwLock::new(None),
            frames_in: AtomicU64::new(0),
            frames_out: AtomicU64::new(0),
            past_drops: AtomicU64::new(0),
            past_direct: AtomicU64::new(0),
            session: RwLock::new(None),
            actor: std::sync::OnceLock::new(),
        }
    }

    pub fn state(&self) -> LinkState {
        match self.state.load(Ordering::Relaxed) {
            1 => LinkState::Up,
            2 => LinkState::Backoff,
            _ => LinkState::Connecting,
        }
    }

    pub fn set_state(&self, s: LinkState) {
        let v = match s {
            LinkState::Connecting => 0,
            LinkState::Up => 1,
            LinkState::Backoff => 2,
        };
        self.state.store(v, Ordering::Relaxed);
        if s != LinkState::Up {
            *self.up_since.write() = None;
        }
    }

    pub fn session(&self) -> Option<Arc<LinkSession>> {
        self.session.read().clone()
    }

    /// Detaches the current session (exactly one caller gets it, so the
    /// federation hears of its end exactly once).
    pub fn take_session(&self) -> Option<Arc<LinkSession>> {
        let mut current = self.session.write();
        let s = current.take();
        if let Some(s) = &s {
            s.outbox.close();
            self.past_drops
                .fetch_add(s.outbox.dropped(), Ordering::Relaxed);
            // Under the lock, so `info` never sees these frames twice or
            // not at all.
            let direct = s.outbox.direct_frames();
            self.frames_out.fetch_add(direct, Ordering::Relaxed);
            self.past_direct.fetch_add(direct, Ordering::Relaxed);
        }
        drop(current);
        s
    }

    /// `link_id`: this link's key in [`Fed::links`].
    pub fn info(&self, link_id: u64) -> LinkInfo {
        let session = self.session.read();
        let drops = self.past_drops.load(Ordering::Relaxed)
            + session.as_ref().map_or(0, |s| s.outbox.dropped());
        // Frames the readers wrote around the queue are the outbox's count
        // until the session ends (`take_session` adds them then).
        let direct = session.as_ref().map_or(0, |s| s.outbox.direct_frames());
        let frames_out = self.frames_out.load(Ordering::Relaxed) + direct;
        let direct_frames = self.past_direct.load(Ordering::Relaxed) + direct;
        drop(session);
        LinkInfo {
            link_id,
            peer_node_id: self.peer_node_id.read().clone(),
            peer_spiffe_id: self.peer_spiffe_id.read().clone(),
            remote_addr: *self.remote_addr.read(),
            direction: self.direction,
            state: self.state(),
            up_since: *self.up_since.read(),
            frames_in: self.frames_in.load(Ordering::Relaxed),
            frames_out,
            direct_frames,
            drops,
        }
    }
}

/// Federation state shared by the node's actors and tasks.
pub(crate) struct Fed {
    pub events: broadcast::Sender<NodeEvent>,
    /// Every link actor (dialled ones also while connecting or backing off).
    pub links: dashmap::DashMap<u64, Arc<LinkShared>>,
    next_link: AtomicU64,
    actor: RwLock<Option<ActorRef<FedMsg>>>,
    /// Owned by the federation actor; locked briefly by `routes()`.
    pub interest: Mutex<InterestTable>,
    /// Peers with a link in use; a dialled link stands by while its peer is
    /// connected through another link (e.g. one the peer dialled), so two
    /// nodes that both dial each other do not keep replacing links.
    pub connected: tokio::sync::watch::Sender<std::collections::BTreeSet<NodeId>>,
    /// Bumped each time the federation actor (re)starts: link actors of a
    /// previous incarnation see it change and end, since the new actor does
    /// not know them.
    generation: AtomicU64,
}

impl Fed {
    pub fn new(node_id: &str) -> Self {
        Fed {
            events: broadcast::channel(1024).0,
            links: dashmap::DashMap::new(),
            next_link: AtomicU64::new(1),
            actor: RwLock::new(None),
            interest: Mutex::new(InterestTable::new(
                node_id,
                interest_epoch(),
                InterestConfig::default(),
            )),
            connected: tokio::sync::watch::channel(Default::default()).0,
            generation: AtomicU64::new(0),
        }
    }

    /// A federation actor (re)started: bumps the generation, so link
    /// actors of a previous incarnation end, and makes it reachable.
    pub fn started(&self, actor: ActorRef<FedMsg>) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        *self.actor.write() = Some(actor);
    }

    pub fn stopped(&self) {
        *self.actor.write() = None;
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn next_link_key(&self) -> u64 {
        self.next_link.fetch_add(1, Ordering::Relaxed)
    }

    pub fn actor(&self) -> Option<ActorRef<FedMsg>> {
        self.actor.read().clone()
    }

    pub fn emit(&self, e: NodeEvent) {
        // No receiver is fine; a lagging one resyncs from routes()/links().
        let _ = self.events.send(e);
    }

    /// Tells the federation actor (if running) that local interest in these
    /// names may have changed.
    pub fn local_changed(&self, names: &[Arc<str>]) {
        if let Some(a) = self.actor() {
            let _ = a.send_message(FedMsg::LocalChanged(names.to_vec()));
        }
    }
}

/// A new incarnation number for this node's interest entries: microseconds
/// since the Unix epoch, so a restarted node (or federation actor) is newer
/// than every earlier run of it as long as the clock does not jump back
/// (if it does, the table notices its own newer entries and moves past them).
pub(crate) fn interest_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1)
}

pub(crate) enum FedMsg {
    LocalChanged(Vec<Arc<str>>),
    /// A link session completed its handshake; reply whether it is the one
    /// to use for its peer (false: another link to that peer wins).
    Up {
        session: Arc<LinkSession>,
        reply: RpcReplyPort<bool>,
    },
    Down {
        session: Arc<LinkSession>,
        reason: String,
    },
    Interest {
        peer: NodeId,
        session: ConnId,
        frame: Interest,
        /// Bounds how many updates per link wait in this mailbox.
        _permit: tokio::sync::OwnedSemaphorePermit,
    },
    SetDialPeers(Vec<PeerSpec>),
    /// The subscription-table actor was restarted: install every remote
    /// route again (what was in its mailbox is lost).
    ResyncRoutes,
    /// Time to send what pacing or a full control queue held back, and (once
    /// a second) to expire tombstones and unreachable origins.
    Tick,
}
