//! The fleet: N [`InterestTable`]s, the links between them and one event queue
//! in virtual time.
//!
//! The model follows the federation actor (`actors/src/fed/actor.rs`):
//! - a node handles one stimulus at a time (a local interest change, a link
//!   coming up or going down, one received `Interest` frame, a timer) and
//!   then *flushes*: it polls `poll_announce(now)` until the table has no
//!   frame due (each frame goes on its peer's link; the table paces each
//!   peer to one frame per `pace`, coalescing what changes meanwhile), reads
//!   every changed route back with `remote_dests` (the actor installs it in
//!   the registry) and, if a paced peer still has something to hear, sets a
//!   wake-up at `poll_timeout()` — never sooner than `wake_floor_us` from
//!   now, like the actor — keeping at most one pending wake-up per node, the
//!   earliest;
//! - every node's GC timer calls `handle_tick` once per `gc_every_us`, each
//!   node at its own phase (drawn from the seed). The timers only run while
//!   the fleet has something else queued: a quiet fleet stops ticking (so a
//!   run ends) and the timers resume, at their phase, with the next event.
//!   Tombstones and unreachable origins therefore expire during long runs
//!   and when a scenario lets virtual time pass ([`Fleet::idle`]);
//! - a frame reaches the peer after the link's latency, in order per link
//!   (fixed latency per link; ties in time are broken by send order);
//! - a frame still in flight when its link goes down is lost (the actor
//!   ignores frames from a session that is no longer the active one);
//! - a node restart is a fresh `InterestTable` with a larger epoch (the
//!   virtual start time in µs, + 1), its clients' names re-added;
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
use slim_actors::interest::{InterestConfig, InterestTable};
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
    /// Link latency range in µs, one value per link drawn uniformly from the
    /// seed (at least 1 µs).
    pub latency_us: (u64, u64),
    /// Virtual time a node spends per received entry (name state, link set
    /// or digest): a node handles one frame at a time, in arrival order (the
    /// federation actor's mailbox), and sends what it flushes when done.
    /// 0: instant.
    pub proc_us: u64,
    /// The nodes' protocol tuning (pace, tombstone and unreachable TTLs,
    /// batch size, table bound).
    pub interest: InterestConfig,
    /// A wake-up for a paced peer is never set sooner than this after the
    /// flush that sets it (the actor's 5 ms floor).
    pub wake_floor_us: Micros,
    /// Period of each node's GC timer (`handle_tick`; the actor's 1 s).
    pub gc_every_us: Micros,
    /// A run stops once this many frames were sent since the last
    /// [`Fleet::take_traffic`].
    pub budget: u64,
    /// A run also stops after this much wall-clock time.
    pub wall_limit: Option<Duration>,
    /// Print every action, frame and route change to stderr (debugging).
    pub trace: bool,
}

impl FleetConfig {
    pub fn new(nodes: usize, topology: Topology, seed: u64) -> Self {
        FleetConfig {
            nodes,
            topology,
            seed,
            latency_us: (1_000, 50_000),
            proc_us: 0,
            interest: InterestConfig::default(),
            wake_floor_us: 5_000,
            gc_every_us: 1_000_000,
            budget: 50_000_000,
            wall_limit: None,
            trace: false,
        }
    }
}

/// What made a node send: the stimulus that queued the frame's entries.
/// A frame that had to wait for its peer's pace is counted under the
/// stimulus that queued the oldest of its waiting entries (and as `paced`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cause {
    /// A local interest change (a client connected or left).
    Local = 0,
    /// An `Interest` frame received from a peer (relaying what it learned,
    /// or answering its digest).
    Relay = 1,
    /// A link came up: the new link set, flooded, and the digest to the peer.
    PeerUp = 2,
    /// A link went down: the new link set, flooded.
    PeerDown = 3,
}

impl Cause {
    pub const ALL: [Cause; 4] = [Cause::Local, Cause::Relay, Cause::PeerUp, Cause::PeerDown];

    pub fn label(self) -> &'static str {
        match self {
            Cause::Local => "local change",
            Cause::Relay => "relay",
            Cause::PeerUp => "peer-up",
            Cause::PeerDown => "peer-down",
        }
    }
}

/// Frames, bytes and entries sent for one cause.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CauseTraffic {
    pub msgs: u64,
    pub bytes: u64,
    /// Name states carried (present and tombstones).
    pub names: u64,
    /// Link sets carried.
    pub links: u64,
    /// Digest entries carried.
    pub digests: u64,
    /// Frames that waited for their peer's pace (sent on a later flush).
    pub paced: u64,
}

impl CauseTraffic {
    fn absorb(&mut self, o: &CauseTraffic) {
        self.msgs += o.msgs;
        self.bytes += o.bytes;
        self.names += o.names;
        self.links += o.links;
        self.digests += o.digests;
        self.paced += o.paced;
    }
}

/// Everything counted between two [`Fleet::take_traffic`] calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Traffic {
    /// `Frame::Interest` frames sent.
    pub msgs: u64,
    /// Their encoded size.
    pub bytes: u64,
    /// Name states carried: present, and tombstones (present = false).
    pub present: u64,
    pub absent: u64,
    /// Link-set entries carried.
    pub links: u64,
    /// Digest entries carried (one per origin, on link-up).
    pub digests: u64,
    /// The same, by what made the node send.
    pub by_cause: [CauseTraffic; 4],
    /// Name states about instance names (`org/ns/svc/inst`) and about
    /// service names (`org/ns/svc`).
    pub instance_entries: u64,
    pub service_entries: u64,
    /// Frames that waited for their peer's pace.
    pub paced: u64,
    /// Frames lost: in flight when their link went down, or dropped by a fault.
    pub dropped: u64,
    /// Parts of frames a table refused (`handle_interest` errors).
    pub refused: u64,
    /// Names whose remote destinations changed (registry route installs).
    pub route_changes: u64,
}

impl Traffic {
    /// Adds `o` into `self`.
    pub fn absorb(&mut self, o: &Traffic) {
        self.msgs += o.msgs;
        self.bytes += o.bytes;
        self.present += o.present;
        self.absent += o.absent;
        self.links += o.links;
        self.digests += o.digests;
        for (a, b) in self.by_cause.iter_mut().zip(&o.by_cause) {
            a.absorb(b);
        }
        self.instance_entries += o.instance_entries;
        self.service_entries += o.service_entries;
        self.paced += o.paced;
        self.dropped += o.dropped;
        self.refused += o.refused;
        self.route_changes += o.route_changes;
    }

    /// Entries of every kind carried.
    pub fn entries(&self) -> u64 {
        self.present + self.absent + self.links + self.digests
    }
}

/// Table sizes (`InterestTable::entry_count`) over the live nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EntryStats {
    pub min: usize,
    pub avg: f64,
    pub max: usize,
}

/// A deliberate fault, to show that the invariant checker can fail (and
/// which losses flooding repairs by itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Lose the n-th frame delivered (1-based) after the fault is set.
    DropNth(u64),
    /// Lose the first delivered frame that carries a tombstone.
    DropFirstTombstone,
    /// Lose every frame delivered to this node while its links stay up
    /// (a link that silently loses frames: QUIC never does that, which is
    /// why the protocol does not guard against it).
    Deaf(u32),
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
    /// restart).
    NodeDown(u32),
    /// The node is back with a fresh table (a new, larger epoch; its
    /// clients' names re-added); each of its links comes up after that
    /// link's latency (one handshake).
    NodeUp(u32),
    /// Record table sizes (no effect on the protocol).
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
    /// The first and the last protocol action (connect, leave, link or
    /// node event); `start` if none.
    pub first_action: Micros,
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

    /// Virtual time from the first action until no frame was in flight.
    pub fn span(&self) -> Micros {
        self.last_delivery
            .max(self.last_action)
            .saturating_sub(self.first_action)
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
    /// The epoch of the current table.
    epoch: u64,
    /// Until when it is busy handling a frame, and the frames waiting
    /// (only with `proc_us`).
    busy_until: Micros,
    mailbox: VecDeque<(u32, u32, u32, Interest)>,
    ready_scheduled: bool,
    /// The pending wake-up (the earliest asked for).
    wake_at: Option<Micros>,
    /// Per peer with entries waiting for its pace: what queued the oldest.
    held: BTreeMap<u32, Cause>,
    /// The GC timer's phase, and whether it is queued.
    gc_phase: Micros,
    gc_queued: bool,
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
    /// A paced peer of the node may be sent to.
    Wake(u32),
    /// The node's GC timer.
    Gc(u32),
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

/// One (name, origin) whose routes are followed: when each node gains or
/// loses a route to it.
#[derive(Debug)]
struct Watch {
    name: Arc<str>,
    origin: u32,
    routed: Vec<bool>,
    count: usize,
    /// The last time a node gained or lost the route.
    last_change: Option<Micros>,
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
    /// Events queued other than GC timers (the timers run while it is > 0).
    busy: u64,
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
    watch: Option<Watch>,
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
        let mut gc_rng = StdRng::seed_from_u64(cfg.seed ^ 0x6c0c_7133);
        let gc_every = cfg.gc_every_us.max(1);
        let nodes: Vec<Node> = (0..cfg.nodes as u32)
            .map(|i| {
                let id = node_id(i);
                Node {
                    table: InterestTable::new(&id, 1, cfg.interest.clone()),
                    id: Arc::from(id),
                    local: BTreeMap::new(),
                    up: true,
                    epoch: 1,
                    busy_until: 0,
                    mailbox: VecDeque::new(),
                    ready_scheduled: false,
                    wake_at: None,
                    held: BTreeMap::new(),
                    gc_phase: gc_rng.random_range(0..gc_every),
                    gc_queued: false,
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
            busy: 0,
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
            watch: None,
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

    pub fn node_is_up(&self, node: u32) -> bool {
        self.nodes[node as usize].up
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

    /// Lets `d` of virtual time pass (the GC timers tick meanwhile); run
    /// the fleet to get there.
    pub fn idle(&mut self, d: Micros) {
        self.schedule(self.now + d, Action::Sample);
    }

    pub fn set_fault(&mut self, fault: Option<Fault>) {
        self.fault = fault;
        self.delivered_since_fault = 0;
    }

    /// The fault set and not fired yet (a [`Fault::Deaf`] never fires out).
    pub fn fault(&self) -> Option<Fault> {
        self.fault
    }

    /// Follows the routes of every node to `name` at `origin` (see
    /// [`Fleet::watch_settled`]).
    pub fn watch(&mut self, name: &str, origin: u32) {
        let name: Arc<str> = Arc::from(name);
        let routed: Vec<bool> = (0..self.nodes.len() as u32)
            .map(|i| self.routes_to(i, &name, origin))
            .collect();
        self.watch = Some(Watch {
            count: routed.iter().filter(|x| **x).count(),
            name,
            origin,
            routed,
            last_change: None,
        });
    }

    /// The watched key: how many nodes route to it now, and when the last
    /// node gained or lost its route (since [`Fleet::watch`]).
    pub fn watch_settled(&self) -> Option<(usize, Option<Micros>)> {
        self.watch.as_ref().map(|w| (w.count, w.last_change))
    }

    /// The watched (name, origin), if any.
    pub fn watched(&self) -> Option<(&str, u32)> {
        self.watch.as_ref().map(|w| (&*w.name, w.origin))
    }

    fn routes_to(&self, node: u32, name: &str, origin: u32) -> bool {
        let n = &self.nodes[node as usize];
        let o = &self.nodes[origin as usize].id;
        n.up && n.table.remote_dests(name).iter().any(|(x, _)| x == o)
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

    /// Table sizes of the live nodes right now.
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

    /// Runs events until nothing but GC timers is queued (the timers stop
    /// there, without advancing virtual time).
    pub fn run(&mut self) -> Result<Quiet, Halt> {
        let start = self.now;
        let mut first_action = None;
        let mut last_action = start;
        let mut last_delivery = start;
        let t0 = Instant::now();
        let mut steps: u64 = 0;
        loop {
            if self.busy == 0 {
                // Only GC timers left: the fleet is quiet; they stop here
                // and resume with the next event.
                for q in self.queue.drain() {
                    if let Event::Gc(n) = q.ev {
                        self.nodes[n as usize].gc_queued = false;
                    }
                }
                break;
            }
            let Some(q) = self.queue.pop() else {
                break;
            };
            self.now = q.at;
            if !matches!(q.ev, Event::Gc(_)) {
                self.busy -= 1;
            }
            match q.ev {
                Event::Act(a) => {
                    if a != Action::Sample {
                        first_action.get_or_insert(q.at);
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
                    let work = self.cfg.proc_us * frame_entries(&frame);
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
                Event::Wake(n) => {
                    let node = &mut self.nodes[n as usize];
                    if node.wake_at != Some(q.at) {
                        continue; // superseded by an earlier wake-up
                    }
                    node.wake_at = None;
                    if !node.up {
                        continue;
                    }
                    if node.busy_until > q.at {
                        // Behind the frame being handled (the mailbox).
                        let at = node.busy_until;
                        self.wake_at(n, at);
                        continue;
                    }
                    self.flush(n, None);
                }
                Event::Gc(n) => {
                    let node = &mut self.nodes[n as usize];
                    node.gc_queued = false;
                    if node.up {
                        node.table.handle_tick(Duration::from_micros(q.at));
                        self.flush(n, None);
                    }
                    if self.busy > 0 {
                        let at = q.at + self.cfg.gc_every_us.max(1);
                        self.nodes[n as usize].gc_queued = true;
                        self.push(at, Event::Gc(n));
                    }
                }
            }
            if self.traffic.msgs > self.cfg.budget {
                self.clear_queue();
                return Err(Halt::Budget {
                    msgs: self.traffic.msgs,
                });
            }
            steps += 1;
            if steps.is_multiple_of(4096)
                && let Some(limit) = self.cfg.wall_limit
                && t0.elapsed() > limit
            {
                self.clear_queue();
                return Err(Halt::WallClock {
                    msgs: self.traffic.msgs,
                    after: limit,
                });
            }
        }
        Ok(Quiet {
            start,
            first_action: first_action.unwrap_or(start),
            last_action,
            last_delivery,
        })
    }

    fn clear_queue(&mut self) {
        self.queue.clear();
        self.busy = 0;
        for n in &mut self.nodes {
            n.gc_queued = false;
            n.wake_at = None;
            n.ready_scheduled = false;
            n.mailbox.clear();
        }
    }

    fn push(&mut self, at: Micros, ev: Event) {
        if !matches!(ev, Event::Gc(_)) {
            if self.busy == 0 {
                self.resume_gc(self.now);
            }
            self.busy += 1;
        }
        self.seq += 1;
        self.queue.push(Queued {
            at,
            seq: self.seq,
            ev,
        });
    }

    /// Queues every stopped GC timer at its next tick from `from` on.
    fn resume_gc(&mut self, from: Micros) {
        let every = self.cfg.gc_every_us.max(1);
        for i in 0..self.nodes.len() {
            let n = &mut self.nodes[i];
            if n.gc_queued {
                continue;
            }
            n.gc_queued = true;
            let phase = n.gc_phase;
            let at = if from <= phase {
                phase
            } else {
                phase + (from - phase).div_ceil(every) * every
            };
            self.seq += 1;
            self.queue.push(Queued {
                at,
                seq: self.seq,
                ev: Event::Gc(i as u32),
            });
        }
    }

    /// The actor's `wake_by`: at most one wake-up per node, the earliest.
    fn wake_at(&mut self, n: u32, at: Micros) {
        let node = &mut self.nodes[n as usize];
        if node.wake_at.is_some_and(|w| w <= at) {
            return;
        }
        node.wake_at = Some(at);
        self.push(at, Event::Wake(n));
    }

    fn act(&mut self, a: Action) {
        if self.cfg.trace && a != Action::Sample {
            let what = match a {
                Action::Connect(c) | Action::Leave(c) => {
                    let cl = &self.clients[c as usize];
                    format!("{a:?} {} at {}", cl.names[0], node_id(cl.node))
                }
                Action::LinkDown(e) | Action::LinkUp(e) => {
                    let (x, y) = self.graph.edges[e as usize];
                    format!("{a:?} {}–{}", node_id(x), node_id(y))
                }
                Action::NodeDown(n) | Action::NodeUp(n) => format!("{a:?} {}", node_id(n)),
                Action::Sample => String::new(),
            };
            eprintln!("{:>12} ACT {what}", self.now);
        }
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
                node.wake_at = None;
                node.held.clear();
                node.mailbox.clear();
                let edges: Vec<u32> = self.graph.adj[n as usize].iter().map(|x| x.1).collect();
                for e in edges {
                    self.link_down(e);
                }
                self.watch_update(n, self.now);
            }
            Action::NodeUp(n) => {
                let now = self.now;
                let interest = self.cfg.interest.clone();
                let node = &mut self.nodes[n as usize];
                if node.up {
                    return;
                }
                node.up = true;
                node.busy_until = now;
                // A fresh process: a new table, an epoch larger than any
                // before (its start time), its clients' names re-added.
                node.epoch = (node.epoch + 1).max(now + 1);
                node.table = InterestTable::new(&node.id, node.epoch, interest);
                for name in node.local.keys() {
                    node.table.handle_local(name, true);
                }
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
        self.flush(n as u32, Some(Cause::Local));
    }

    fn link_up(&mut self, e: u32) {
        let l = self.links[e as usize];
        if l.up || !self.nodes[l.a as usize].up || !self.nodes[l.b as usize].up {
            return;
        }
        self.links[e as usize].up = true;
        let now = Duration::from_micros(self.now);
        for (x, y) in [(l.a, l.b), (l.b, l.a)] {
            let peer = Arc::clone(&self.nodes[y as usize].id);
            self.nodes[x as usize].table.handle_peer_up(&peer, now);
            self.flush(x, Some(Cause::PeerUp));
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
        let now = Duration::from_micros(self.now);
        for (x, y) in [(l.a, l.b), (l.b, l.a)] {
            if !self.nodes[x as usize].up {
                continue;
            }
            let peer = Arc::clone(&self.nodes[y as usize].id);
            self.nodes[x as usize].table.handle_peer_down(&peer, now);
            self.flush(x, Some(Cause::PeerDown));
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
                Fault::DropFirstTombstone => frame
                    .updates
                    .iter()
                    .any(|u| u.names.iter().any(|n| !n.present)),
                Fault::Deaf(n) => to == n,
            };
            if fire {
                if !matches!(f, Fault::Deaf(_)) {
                    self.fault = None;
                }
                self.traffic.dropped += 1;
                return;
            }
        }
        if self.cfg.trace {
            eprintln!(
                "{:>12} RECV {} <- {}: {}",
                self.now + self.send_delay,
                node_id(to),
                node_id(from),
                describe(&frame)
            );
        }
        let from_id = Arc::clone(&self.nodes[from as usize].id);
        let now = Duration::from_micros(self.now + self.send_delay);
        let errors = self.nodes[to as usize]
            .table
            .handle_interest(&from_id, &frame, now);
        self.traffic.refused += errors.len() as u64;
        self.flush(to, Some(Cause::Relay));
    }

    /// What the federation actor's `flush` does: every frame the table has
    /// due goes on its peer's link; changed routes are read back; a wake-up
    /// is set for what pacing holds back. `cause`: what the node was
    /// handling (`None`: a timer).
    fn flush(&mut self, node: u32, cause: Option<Cause>) {
        let t = self.now + self.send_delay;
        let now = Duration::from_micros(t);
        let mut out = Vec::new();
        let mut changed = false;
        let next = {
            let n = &mut self.nodes[node as usize];
            while let Some(a) = n.table.poll_announce(now) {
                out.push(a);
            }
            while let Some(name) = n.table.poll_route_change() {
                let d = n.table.remote_dests(&name);
                if self.cfg.trace {
                    let d: Vec<String> = d.iter().map(|(o, v)| format!("{o} via {v}")).collect();
                    eprintln!("{t:>12} ROUTE {} {name}: [{}]", n.id, d.join(", "));
                }
                self.traffic.route_changes += 1;
                if self.watch.as_ref().is_some_and(|w| w.name == name) {
                    changed = true;
                }
            }
            n.table.poll_timeout()
        };
        if changed {
            self.watch_update(node, t);
        }
        for (peer, frame) in out {
            let Some(&p) = self.index.get(&peer) else {
                continue;
            };
            let Some(&(_, e)) = self.graph.adj[node as usize].iter().find(|x| x.0 == p) else {
                continue;
            };
            let n = &mut self.nodes[node as usize];
            let (why, paced) = match n.held.get(&p) {
                Some(&c) => (c, true),
                None => (cause.unwrap_or(Cause::Relay), false),
            };
            if !n.table.has_pending(&peer) {
                n.held.remove(&p);
            }
            if !self.links[e as usize].up {
                continue;
            }
            let frame = Frame::Interest(frame);
            self.buf.clear();
            codec::encode(&frame, &self.limits, &mut self.buf).expect("interest frame encodes");
            let bytes = self.buf.len() as u64;
            let Frame::Interest(frame) = frame else {
                unreachable!()
            };
            self.count(why, paced, &frame, bytes);
            let dir = e as usize * 2 + usize::from(node > p);
            self.link_bytes[dir] += bytes;
            self.link_msgs[dir] += 1;
            self.in_flight[dir] += 1;
            self.peak_in_flight = self.peak_in_flight.max(self.in_flight[dir]);
            let l = self.links[e as usize];
            self.push(
                t + l.latency,
                Event::Deliver {
                    link: e,
                    epoch: l.epoch,
                    from: node,
                    to: p,
                    frame,
                },
            );
        }
        // Remember what queued the entries pacing holds back.
        let n = &mut self.nodes[node as usize];
        let waiting: Vec<u32> = n
            .table
            .peers()
            .filter(|p| n.table.has_pending(p))
            .filter_map(|p| self.index.get(p).copied())
            .collect();
        n.held.retain(|p, _| waiting.contains(p));
        for p in waiting {
            n.held
                .entry(p)
                .or_insert_with(|| cause.unwrap_or(Cause::Relay));
        }
        if let Some(at) = next {
            let at = (at.as_micros() as Micros).max(t + self.cfg.wake_floor_us);
            self.wake_at(node, at);
        }
    }

    fn watch_update(&mut self, node: u32, t: Micros) {
        let Some(w) = &self.watch else {
            return;
        };
        let (name, origin) = (Arc::clone(&w.name), w.origin);
        let r = self.routes_to(node, &name, origin);
        let w = self.watch.as_mut().expect("checked above");
        if w.routed[node as usize] != r {
            w.routed[node as usize] = r;
            if r {
                w.count += 1;
            } else {
                w.count -= 1;
            }
            w.last_change = Some(t);
        }
    }

    fn count(&mut self, cause: Cause, paced: bool, f: &Interest, bytes: u64) {
        let t = &mut self.traffic;
        let mut names = 0;
        let mut links = 0;
        for u in &f.updates {
            links += u64::from(u.links.is_some());
            names += u.names.len() as u64;
            for n in &u.names {
                if n.present {
                    t.present += 1;
                } else {
                    t.absent += 1;
                }
                if n.name.instance().is_some() {
                    t.instance_entries += 1;
                } else {
                    t.service_entries += 1;
                }
            }
        }
        let digests = f.digest.len() as u64;
        t.msgs += 1;
        t.bytes += bytes;
        t.links += links;
        t.digests += digests;
        t.paced += u64::from(paced);
        let c = &mut t.by_cause[cause as usize];
        c.msgs += 1;
        c.bytes += bytes;
        c.names += names;
        c.links += links;
        c.digests += digests;
        c.paced += u64::from(paced);
    }

    /// The node index of a node id.
    pub fn index_of(&self, id: &str) -> Option<u32> {
        self.index.get(id).copied()
    }
}

/// A frame in one line (for traces).
fn describe(f: &Interest) -> String {
    let mut parts = Vec::new();
    for u in &f.updates {
        let mut p = format!("{}@{}", u.origin, u.epoch);
        if let Some(l) = &u.links {
            p += &format!(" links#{}[{}]", l.seq, l.peers.join(","));
        }
        for n in &u.names {
            p += &format!(
                " {}#{}{}",
                n.name.as_str(),
                n.seq,
                if n.present { "+" } else { "-" }
            );
        }
        parts.push(p);
    }
    for d in &f.digest {
        parts.push(format!(
            "digest {}@{} n={} h={:x}",
            d.origin, d.epoch, d.names, d.hash
        ));
    }
    parts.join("; ")
}

/// Entries in a frame (name states, link sets, digest entries).
pub fn frame_entries(f: &Interest) -> u64 {
    f.digest.len() as u64
        + f.updates
            .iter()
            .map(|u| u.names.len() as u64 + u64::from(u.links.is_some()))
            .sum::<u64>()
}
