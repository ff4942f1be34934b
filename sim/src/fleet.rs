//! The fleet: N [`InterestTable`]s, the links between them and one event queue
//! in virtual time.
//!
//! The model follows the federation actor (`actors/src/fed/actor.rs`):
//! - a node handles one stimulus at a time (a local interest change, a link
//!   coming up or going down, one received `Interest` frame) and then
//!   *flushes*: every announcement the table has pending becomes one
//!   `Frame::Interest` on that peer's link, and every changed route is read
//!   back with `remote_dests` (the actor installs it in the registry);
//! - a frame reaches the peer after the link's latency, in order per link
//!   (fixed latency per link; ties in time are broken by send order);
//! - a frame still in flight when its link goes down is lost (the actor
//!   ignores frames from a session that is no longer the active one);
//! - processing takes no virtual time (virtual time is pure propagation),
//!   unless `proc_us` is set: then a node spends that long per received
//!   entry, handles one frame at a time in arrival order (the actor's
//!   mailbox) and sends what it flushes when it is done.
//!
//! Bytes are what the node would write on the link's control stream: the
//! frame encoded by `slim_wire::codec::encode` (4-byte length prefix, kind
//! byte, MessagePack body), without QUIC/UDP/IP overhead.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use slim_actors::interest::InterestTable;
use slim_wire::codec::{self, Limits};
use slim_wire::{Frame, Interest};

use crate::topology::{Graph, Topology};

/// Virtual time, in microseconds.
pub type Micros = u64;

/// A client (an agent connected to one node).
pub type ClientId = u32;

/// How the fleet is built and bounded.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub nodes: usize,
    pub topology: Topology,
    pub seed: u64,
    /// The node's `federation.max_hops` (default 8).
    pub max_hops: usize,
    /// Link latency range in µs, one value per link drawn uniformly from the
    /// seed (at least 1 µs).
    pub latency_us: (u64, u64),
    /// Virtual time a node spends per received entry (add or remove): a node
    /// handles one frame at a time, in arrival order (the federation
    /// actor's mailbox), and sends what it flushes when done. 0: instant.
    pub proc_us: u64,
    /// A run stops once this many frames were sent since the last
    /// [`Fleet::take_traffic`].
    pub budget: u64,
    /// A run also stops after this much wall-clock time.
    pub wall_limit: Option<Duration>,
}

impl FleetConfig {
    pub fn new(nodes: usize, topology: Topology, seed: u64) -> Self {
        FleetConfig {
            nodes,
            topology,
            seed,
            max_hops: 8,
            latency_us: (1_000, 50_000),
            proc_us: 0,
            budget: 50_000_000,
            wall_limit: None,
        }
    }
}

/// What made a node send: the stimulus it was handling when it flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cause {
    /// A local interest change (a client connected or left).
    Local = 0,
    /// An `Interest` frame received from a peer (relaying what it learned).
    Relay = 1,
    /// A link came up: the table replays every route it can offer the peer.
    PeerUp = 2,
    /// A link went down: routes learned from that peer are withdrawn or replaced.
    PeerDown = 3,
}

impl Cause {
    pub const ALL: [Cause; 4] = [Cause::Local, Cause::Relay, Cause::PeerUp, Cause::PeerDown];

    pub fn label(self) -> &'static str {
        match self {
            Cause::Local => "local change",
            Cause::Relay => "relay",
            Cause::PeerUp => "peer-up replay",
            Cause::PeerDown => "peer-down",
        }
    }
}

/// Frames, bytes and entries sent for one cause.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CauseTraffic {
    pub msgs: u64,
    pub bytes: u64,
    pub adds: u64,
    pub removes: u64,
}

/// Everything counted between two [`Fleet::take_traffic`] calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Traffic {
    /// `Frame::Interest` frames sent (one per announcement polled).
    pub msgs: u64,
    /// Their encoded size.
    pub bytes: u64,
    /// Route additions/replacements and withdrawals carried.
    pub adds: u64,
    pub removes: u64,
    /// The same, by what made the node send.
    pub by_cause: [CauseTraffic; 4],
    /// Entries (adds + removes) about instance names (`org/ns/svc/inst`) and
    /// about service names (`org/ns/svc`).
    pub instance_entries: u64,
    pub service_entries: u64,
    /// Adds by path length (index = number of nodes in the path).
    pub add_path_len: Vec<u64>,
    /// Frames lost: in flight when their link went down, or dropped by a fault.
    pub dropped: u64,
    /// Adds a table refused (`handle_add` errors).
    pub refused: u64,
    /// Names whose remote destinations changed (registry route installs).
    pub route_changes: u64,
}

impl Traffic {
    /// Adds `o` into `self`.
    pub fn absorb(&mut self, o: &Traffic) {
        self.msgs += o.msgs;
        self.bytes += o.bytes;
        self.adds += o.adds;
        self.removes += o.removes;
        for (a, b) in self.by_cause.iter_mut().zip(&o.by_cause) {
            a.msgs += b.msgs;
            a.bytes += b.bytes;
            a.adds += b.adds;
            a.removes += b.removes;
        }
        self.instance_entries += o.instance_entries;
        self.service_entries += o.service_entries;
        if self.add_path_len.len() < o.add_path_len.len() {
            self.add_path_len.resize(o.add_path_len.len(), 0);
        }
        for (a, b) in self.add_path_len.iter_mut().zip(&o.add_path_len) {
            *a += b;
        }
        self.dropped += o.dropped;
        self.refused += o.refused;
        self.route_changes += o.route_changes;
    }
}

/// Routing-table sizes (`InterestTable::entry_count`) over the live nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EntryStats {
    pub min: usize,
    pub avg: f64,
    pub max: usize,
}

/// A deliberate fault, to show that the invariant checker can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Lose the n-th frame delivered (1-based) after the fault is set.
    DropNth(u64),
    /// Lose the first delivered frame that carries a withdrawal.
    DropFirstRemove,
}

/// Something scheduled to happen to the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Connect(ClientId),
    Leave(ClientId),
    LinkDown(u32),
    LinkUp(u32),
    /// The node's process dies: its links go down and its interest table is
    /// lost (its clients' registrations survive, as after a federation actor
    /// restart, and are re-added to the fresh table).
    NodeDown(u32),
    /// The node is back: each of its links comes up after that link's latency
    /// (one handshake).
    NodeUp(u32),
    /// Record routing-table sizes (no effect on the protocol).
    Sample,
}

/// Why a run stopped before the fleet went quiet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Halt {
    Budget { msgs: u64 },
    WallClock { msgs: u64, after: Duration },
}

impl std::fmt::Display for Halt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Halt::Budget { msgs } => {
                write!(f, "did not converge within budget ({msgs} messages sent)")
            }
            Halt::WallClock { msgs, after } => write!(
                f,
                "did not converge within budget (wall-clock limit {:.0?}, {msgs} messages sent)",
                after
            ),
        }
    }
}

/// How a run that went quiet ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quiet {
    /// When the run started.
    pub start: Micros,
    /// The last protocol action (connect, leave, link or node event).
    pub last_action: Micros,
    /// The last frame delivered (or dropped); `start` if none.
    pub last_delivery: Micros,
}

impl Quiet {
    /// Virtual time from the last action until no frame was in flight.
    pub fn convergence(&self) -> Micros {
        self.last_delivery
            .saturating_sub(self.last_action.max(self.start))
    }
}

#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) node: u32,
    pub(crate) names: [Arc<str>; 2],
    pub(crate) connected: bool,
}

#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) id: Arc<str>,
    pub(crate) table: InterestTable,
    /// Local subscribers per name (the registry's view).
    pub(crate) local: BTreeMap<Arc<str>, u32>,
    pub(crate) up: bool,
    /// Until when it is busy handling a frame, and the frames waiting
    /// (only with `proc_us`).
    pub(crate) busy_until: Micros,
    mailbox: VecDeque<(u32, u32, u32, Interest)>,
    ready_scheduled: bool,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Link {
    pub(crate) a: u32,
    pub(crate) b: u32,
    pub(crate) latency: Micros,
    pub(crate) up: bool,
    /// Bumped whenever the link goes down: frames of an older epoch are lost.
    pub(crate) epoch: u32,
}

#[derive(Debug)]
enum Event {
    Deliver {
        link: u32,
        epoch: u32,
        from: u32,
        to: u32,
        frame: Interest,
    },
    Act(Action),
    /// The node is free to handle the next frame in its mailbox (`proc_us`).
    Ready(u32),
}

#[derive(Debug)]
struct Queued {
    at: Micros,
    seq: u64,
    ev: Event,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    /// Reversed: the heap pops the earliest event (then the earliest sent).
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// N interest tables, their links and the event queue.
#[derive(Debug)]
pub struct Fleet {
    pub(crate) cfg: FleetConfig,
    pub(crate) graph: Graph,
    pub(crate) nodes: Vec<Node>,
    pub(crate) links: Vec<Link>,
    pub(crate) clients: Vec<Client>,
    index: HashMap<Arc<str>, u32>,
    queue: BinaryHeap<Queued>,
    now: Micros,
    seq: u64,
    traffic: Traffic,
    /// Bytes and frames per directed link (2 × edge + direction).
    link_bytes: Vec<u64>,
    link_msgs: Vec<u64>,
    in_flight: Vec<u32>,
    peak_in_flight: u32,
    samples: Vec<EntryStats>,
    fault: Option<Fault>,
    delivered_since_fault: u64,
    buf: BytesMut,
    limits: Limits,
    /// Added to the departure time of what a flush sends (the node's
    /// processing time of the frame being handled).
    send_delay: Micros,
}

/// The id of node `i` (zero-padded so that id order is index order).
pub fn node_id(i: u32) -> String {
    format!("cluster-{i:04}")
}

impl Fleet {
    /// Builds the nodes and the overlay; no link is up yet.
    pub fn new(cfg: FleetConfig) -> Fleet {
        let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x70b0_1095);
        let graph = Graph::build(cfg.nodes, cfg.topology, &mut rng);
        let mut lat_rng = StdRng::seed_from_u64(cfg.seed ^ 0x1a7e_4c1e);
        let (lo, hi) = (cfg.latency_us.0.min(cfg.latency_us.1), cfg.latency_us.1);
        let links = graph
            .edges
            .iter()
            .map(|&(a, b)| Link {
                a,
                b,
                latency: lat_rng.random_range(lo..=hi.max(lo)).max(1),
                up: false,
                epoch: 0,
            })
            .collect::<Vec<_>>();
        let nodes: Vec<Node> = (0..cfg.nodes as u32)
            .map(|i| {
                let id = node_id(i);
                Node {
                    table: InterestTable::new(&id, cfg.max_hops),
                    id: Arc::from(id),
                    local: BTreeMap::new(),
                    up: true,
                    busy_until: 0,
                    mailbox: VecDeque::new(),
                    ready_scheduled: false,
                }
            })
            .collect();
        let index = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (Arc::clone(&n.id), i as u32))
            .collect();
        let dl = links.len() * 2;
        Fleet {
            cfg,
            graph,
            nodes,
            links,
            clients: Vec::new(),
            index,
            queue: BinaryHeap::new(),
            now: 0,
            seq: 0,
            traffic: Traffic::default(),
            link_bytes: vec![0; dl],
            link_msgs: vec![0; dl],
            in_flight: vec![0; dl],
            peak_in_flight: 0,
            samples: Vec::new(),
            fault: None,
            delivered_since_fault: 0,
            buf: BytesMut::with_capacity(4096),
            limits: Limits::default(),
            send_delay: 0,
        }
    }

    pub fn config(&self) -> &FleetConfig {
        &self.cfg
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn now(&self) -> Micros {
        self.now
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub fn table(&self, node: u32) -> &InterestTable {
        &self.nodes[node as usize].table
    }

    pub fn link_latency(&self, edge: u32) -> Micros {
        self.links[edge as usize].latency
    }

    pub fn link_is_up(&self, edge: u32) -> bool {
        self.links[edge as usize].up
    }

    /// Registers a client of service `org/ns/svc` named `org/ns/svc/instance`
    /// at `node` (not connected yet: schedule [`Action::Connect`]).
    pub fn add_client(&mut self, node: u32, service: &str, instance: &str) -> ClientId {
        let full: Arc<str> = Arc::from(format!("{service}/{instance}"));
        self.clients.push(Client {
            node,
            names: [full, Arc::from(service)],
            connected: false,
        });
        (self.clients.len() - 1) as ClientId
    }

    pub fn client_node(&self, c: ClientId) -> u32 {
        self.clients[c as usize].node
    }

    /// The client's full name and service name.
    pub fn client_names(&self, c: ClientId) -> [&str; 2] {
        let n = &self.clients[c as usize].names;
        [&n[0], &n[1]]
    }

    /// Schedules `action` at virtual time `at` (not before now).
    pub fn schedule(&mut self, at: Micros, action: Action) {
        self.push(at.max(self.now), Event::Act(action));
    }

    /// Brings every link up now (node by node, in edge order).
    pub fn schedule_all_links_up(&mut self) {
        for e in 0..self.links.len() as u32 {
            self.schedule(self.now, Action::LinkUp(e));
        }
    }

    pub fn set_fault(&mut self, fault: Option<Fault>) {
        self.fault = fault;
        self.delivered_since_fault = 0;
    }

    /// The fault set and not fired yet.
    pub fn fault(&self) -> Option<Fault> {
        self.fault
    }

    /// What was sent since the last call (the message budget counts from it).
    pub fn take_traffic(&mut self) -> Traffic {
        std::mem::take(&mut self.traffic)
    }

    /// Resets per-link counters, the in-flight peak and the table-size samples.
    pub fn reset_link_counters(&mut self) {
        self.link_bytes.iter_mut().for_each(|x| *x = 0);
        self.link_msgs.iter_mut().for_each(|x| *x = 0);
        self.peak_in_flight = 0;
        self.samples.clear();
    }

    /// The busiest directed link since the last [`Fleet::reset_link_counters`]:
    /// (bytes, frames) — each the maximum over links.
    pub fn max_link(&self) -> (u64, u64) {
        (
            self.link_bytes.iter().copied().max().unwrap_or(0),
            self.link_msgs.iter().copied().max().unwrap_or(0),
        )
    }

    /// Most frames ever in flight at once on one directed link.
    pub fn peak_in_flight(&self) -> u32 {
        self.peak_in_flight
    }

    /// Table sizes recorded by [`Action::Sample`].
    pub fn samples(&self) -> &[EntryStats] {
        &self.samples
    }

    /// Routing-table sizes of the live nodes right now.
    pub fn entry_stats(&self) -> EntryStats {
        let counts: Vec<usize> = self
            .nodes
            .iter()
            .filter(|n| n.up)
            .map(|n| n.table.entry_count())
            .collect();
        if counts.is_empty() {
            return EntryStats::default();
        }
        EntryStats {
            min: counts.iter().copied().min().unwrap_or(0),
            avg: counts.iter().sum::<usize>() as f64 / counts.len() as f64,
            max: counts.iter().copied().max().unwrap_or(0),
        }
    }

    /// Runs events until nothing is in flight or scheduled.
    pub fn run(&mut self) -> Result<Quiet, Halt> {
        let start = self.now;
        let mut last_action = start;
        let mut last_delivery = start;
        let t0 = Instant::now();
        let mut steps: u64 = 0;
        while let Some(q) = self.queue.pop() {
            self.now = q.at;
            match q.ev {
                Event::Act(a) => {
                    if a != Action::Sample {
                        last_action = q.at;
                    }
                    self.act(a);
                }
                Event::Deliver {
                    link,
                    epoch,
                    from,
                    to,
                    frame,
                } => {
                    if self.cfg.proc_us == 0 {
                        last_delivery = q.at;
                        self.deliver(link, epoch, from, to, frame);
                    } else {
                        // Into the node's mailbox, behind earlier arrivals.
                        let node = &mut self.nodes[to as usize];
                        node.mailbox.push_back((link, epoch, from, frame));
                        if !node.ready_scheduled {
                            node.ready_scheduled = true;
                            let at = node.busy_until.max(q.at);
                            self.push(at, Event::Ready(to));
                        }
                    }
                }
                Event::Ready(to) => {
                    let node = &mut self.nodes[to as usize];
                    node.ready_scheduled = false;
                    let Some((link, epoch, from, frame)) = node.mailbox.pop_front() else {
                        continue;
                    };
                    let work = self.cfg.proc_us * (frame.add.len() + frame.remove.len()) as u64;
                    node.busy_until = q.at + work;
                    if !node.mailbox.is_empty() {
                        node.ready_scheduled = true;
                        self.push(q.at + work, Event::Ready(to));
                    }
                    last_delivery = q.at + work;
                    self.send_delay = work;
                    self.deliver(link, epoch, from, to, frame);
                    self.send_delay = 0;
                }
            }
            if self.traffic.msgs > self.cfg.budget {
                self.queue.clear();
                return Err(Halt::Budget {
                    msgs: self.traffic.msgs,
                });
            }
            steps += 1;
            if steps.is_multiple_of(4096)
                && let Some(limit) = self.cfg.wall_limit
                && t0.elapsed() > limit
            {
                self.queue.clear();
                return Err(Halt::WallClock {
                    msgs: self.traffic.msgs,
                    after: limit,
                });
            }
        }
        Ok(Quiet {
            start,
            last_action,
            last_delivery,
        })
    }

    fn push(&mut self, at: Micros, ev: Event) {
        self.seq += 1;
        self.queue.push(Queued {
            at,
            seq: self.seq,
            ev,
        });
    }

    fn act(&mut self, a: Action) {
        match a {
            Action::Connect(c) => self.client_change(c, true),
            Action::Leave(c) => self.client_change(c, false),
            Action::LinkDown(e) => self.link_down(e),
            Action::LinkUp(e) => self.link_up(e),
            Action::NodeDown(n) => {
                let node = &mut self.nodes[n as usize];
                if !node.up {
                    return;
                }
                node.up = false;
                // The process is gone: its table with it. Its clients'
                // registrations come back with it (re-added to a fresh table).
                node.table = InterestTable::new(&node.id, self.cfg.max_hops);
                for name in node.local.keys() {
                    node.table.handle_local(name, true);
                }
                let edges: Vec<u32> = self.graph.adj[n as usize].iter().map(|x| x.1).collect();
                for e in edges {
                    self.link_down(e);
                }
            }
            Action::NodeUp(n) => {
                if self.nodes[n as usize].up {
                    return;
                }
                self.nodes[n as usize].up = true;
                let edges: Vec<u32> = self.graph.adj[n as usize].iter().map(|x| x.1).collect();
                for e in edges {
                    let at = self.now + self.links[e as usize].latency;
                    self.schedule(at, Action::LinkUp(e));
                }
            }
            Action::Sample => {
                let s = self.entry_stats();
                self.samples.push(s);
            }
        }
    }

    fn client_change(&mut self, c: ClientId, connect: bool) {
        let cl = &mut self.clients[c as usize];
        if cl.connected == connect {
            return;
        }
        let n = cl.node as usize;
        if !self.nodes[n].up {
            return;
        }
        cl.connected = connect;
        let names = cl.names.clone();
        // The table actor's edge rule: the first local subscriber of a name
        // or the last one leaving is what the federation hears about; both
        // names of one registration arrive in one `LocalChanged`.
        let node = &mut self.nodes[n];
        let mut edges = Vec::new();
        for name in names {
            let count = node.local.entry(Arc::clone(&name)).or_insert(0);
            if connect {
                *count += 1;
                if *count == 1 {
                    edges.push(name);
                }
            } else {
                *count -= 1;
                if *count == 0 {
                    node.local.remove(&name);
                    edges.push(name);
                }
            }
        }
        if edges.is_empty() {
            return;
        }
        for name in &edges {
            node.table.handle_local(name, connect);
        }
        self.flush(n as u32, Cause::Local);
    }

    fn link_up(&mut self, e: u32) {
        let l = self.links[e as usize];
        if l.up || !self.nodes[l.a as usize].up || !self.nodes[l.b as usize].up {
            return;
        }
        self.links[e as usize].up = true;
        for (x, y) in [(l.a, l.b), (l.b, l.a)] {
            let peer = Arc::clone(&self.nodes[y as usize].id);
            self.nodes[x as usize].table.handle_peer_up(&peer);
            self.flush(x, Cause::PeerUp);
        }
    }

    fn link_down(&mut self, e: u32) {
        let l = self.links[e as usize];
        if !l.up {
            return;
        }
        let link = &mut self.links[e as usize];
        link.up = false;
        link.epoch += 1;
        for (x, y) in [(l.a, l.b), (l.b, l.a)] {
            if !self.nodes[x as usize].up {
                continue;
            }
            let peer = Arc::clone(&self.nodes[y as usize].id);
            self.nodes[x as usize].table.handle_peer_down(&peer);
            self.flush(x, Cause::PeerDown);
        }
    }

    fn deliver(&mut self, link: u32, epoch: u32, from: u32, to: u32, frame: Interest) {
        let dir = link as usize * 2 + usize::from(from > to);
        self.in_flight[dir] -= 1;
        let l = self.links[link as usize];
        if !l.up || l.epoch != epoch {
            self.traffic.dropped += 1;
            return;
        }
        if let Some(f) = self.fault {
            self.delivered_since_fault += 1;
            let fire = match f {
                Fault::DropNth(n) => self.delivered_since_fault == n,
                Fault::DropFirstRemove => !frame.remove.is_empty(),
            };
            if fire {
                self.fault = None;
                self.traffic.dropped += 1;
                return;
            }
        }
        let from_id = Arc::clone(&self.nodes[from as usize].id);
        let t = &mut self.nodes[to as usize].table;
        for a in &frame.add {
            if t.handle_add(&from_id, a.name.as_str(), &a.path).is_err() {
                self.traffic.refused += 1;
            }
        }
        for r in &frame.remove {
            t.handle_remove(&from_id, r.name.as_str(), &r.origin);
        }
        self.flush(to, Cause::Relay);
    }

    /// What the federation actor's `flush` does: every pending announcement
    /// becomes one frame on its peer's link; changed routes are read back.
    fn flush(&mut self, node: u32, cause: Cause) {
        let mut out = Vec::new();
        {
            let t = &mut self.nodes[node as usize].table;
            while let Some(a) = t.poll_announce() {
                out.push(a);
            }
            while let Some(name) = t.poll_route_change() {
                let _ = t.remote_dests(&name);
                self.traffic.route_changes += 1;
            }
        }
        for (peer, a) in out {
            let Some(&p) = self.index.get(&peer) else {
                continue;
            };
            let Some(&(_, e)) = self.graph.adj[node as usize].iter().find(|x| x.0 == p) else {
                continue;
            };
            if !self.links[e as usize].up {
                continue;
            }
            let frame = Frame::Interest(a.into_interest());
            self.buf.clear();
            codec::encode(&frame, &self.limits, &mut self.buf).expect("interest frame encodes");
            let bytes = self.buf.len() as u64;
            let Frame::Interest(frame) = frame else {
                unreachable!()
            };
            self.count(cause, &frame, bytes);
            let dir = e as usize * 2 + usize::from(node > p);
            self.link_bytes[dir] += bytes;
            self.link_msgs[dir] += 1;
            self.in_flight[dir] += 1;
            self.peak_in_flight = self.peak_in_flight.max(self.in_flight[dir]);
            let l = self.links[e as usize];
            self.push(
                self.now + self.send_delay + l.latency,
                Event::Deliver {
                    link: e,
                    epoch: l.epoch,
                    from: node,
                    to: p,
                    frame,
                },
            );
        }
    }

    fn count(&mut self, cause: Cause, f: &Interest, bytes: u64) {
        let t = &mut self.traffic;
        t.msgs += 1;
        t.bytes += bytes;
        t.adds += f.add.len() as u64;
        t.removes += f.remove.len() as u64;
        let c = &mut t.by_cause[cause as usize];
        c.msgs += 1;
        c.bytes += bytes;
        c.adds += f.add.len() as u64;
        c.removes += f.remove.len() as u64;
        let names = f
            .add
            .iter()
            .map(|a| &a.name)
            .chain(f.remove.iter().map(|r| &r.name));
        for n in names {
            if n.instance().is_some() {
                t.instance_entries += 1;
            } else {
                t.service_entries += 1;
            }
        }
        for a in &f.add {
            let l = a.path.len();
            if t.add_path_len.len() <= l {
                t.add_path_len.resize(l + 1, 0);
            }
            t.add_path_len[l] += 1;
        }
    }

    /// The node index of a node id.
    pub fn index_of(&self, id: &str) -> Option<u32> {
        self.index.get(id).copied()
    }
}
