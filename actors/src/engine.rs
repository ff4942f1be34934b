//! The routing engine: every publish, forward and delivery decision of a node
//! as a synchronous function of (frame, registry snapshot, authorization,
//! route hook), with no I/O and no actor.
//!
//! Its two drivers are thin: a client connection's reader
//! ([`crate::conn::reader`]) feeds it `Publish` frames, a peer link's data
//! reader ([`crate::link::forward`]) feeds it `Forward` frames. Each driver
//! encodes the outgoing frames the [`Plan`] asks for and pushes them through a
//! [`Tally`], which turns outbox outcomes into slow-consumer decisions. So the
//! delivery modes, loop prevention, anycast picks and refusals are unit-tested
//! here without a socket (see the tests at the end), and the drivers only move
//! bytes.
//!
//! Outboxes are bounded in-memory queues, not I/O: tests build real ones.

use std::sync::Arc;

use bytes::Bytes;
use slim_auth::policy::Denied;
use slim_wire::{ErrorCode, FLAG_NO_ROUTE_SILENT, ForwardView, Mode, PublishView};

use crate::hook::{HookVerdict, RouteHook, RoutedFrame};
use crate::outbox::{Direct, Outbox, Push};
use crate::registry::{ConnId, Registry, RemoteGroup, Route, RouteMemo, Sub};

/// What the engine reads: the subscription registry and the route hook.
pub struct Env<'e> {
    pub registry: &'e Registry,
    /// The test/diagnostic hook, if one is installed.
    pub hook: Option<&'e RouteHook>,
    /// The reader's memo of its last lookup, if it keeps one.
    pub memo: Option<&'e mut RouteMemo>,
}

impl Env<'_> {
    fn lookup(&mut self, key: &str) -> Option<Arc<Route>> {
        match &mut self.memo {
            Some(m) => m.lookup(self.registry, key),
            None => self.registry.lookup(key),
        }
    }
}

/// Why a publish is refused: the publisher gets an `Error` frame saying so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Unicast needs a full name (with an instance).
    BadName,
    /// The policy does not let this connection publish to the name.
    Unauthorized(String),
    /// No subscriber anywhere.
    NoRoute(String),
}

impl Refusal {
    pub fn code(&self) -> ErrorCode {
        match self {
            Refusal::BadName => ErrorCode::BAD_NAME,
            Refusal::Unauthorized(_) => ErrorCode::UNAUTHORIZED,
            Refusal::NoRoute(_) => ErrorCode::NO_ROUTE,
        }
    }

    pub fn reason(&self) -> String {
        match self {
            Refusal::BadName => "unicast needs a full name with an instance".into(),
            Refusal::Unauthorized(r) => r.clone(),
            Refusal::NoRoute(name) => format!("no subscriber for {name}"),
        }
    }
}

/// Why a message is dropped without telling its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silent {
    /// The route hook dropped it (tests inject loss this way).
    Hook,
    /// No subscriber, and the publisher asked not to hear about it.
    NoRouteSilent,
    /// A forward whose path is malformed, too long or already holds this
    /// node: a loop, dropped (counted as `loop`).
    BadPath,
    /// A forward for a name nobody here knows; `n` destinations unreached.
    NoRoute { n: u64 },
}

/// Local subscribers a message goes to (indices into `Route::subs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    None,
    One(usize),
    All,
}

impl Local {
    /// The subscribers of `route` this selects.
    pub fn subs(self, route: &Route) -> &[Sub] {
        match self {
            Local::None => &[],
            Local::One(i) => std::slice::from_ref(&route.subs[i]),
            Local::All => &route.subs,
        }
    }
}

/// The destination nodes one link copy carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dests<'f> {
    /// Every origin of the group (multicast from a local publisher).
    AllOrigins,
    /// One origin of the group (anycast/unicast), by index.
    Origin(usize),
    /// Named destinations of a forwarded message.
    Listed(Vec<&'f str>),
}

/// The node ids one hop carries, borrowed from the route or the frame.
#[derive(Debug, Clone)]
pub enum DestIds<'a> {
    Origins(std::slice::Iter<'a, Arc<str>>),
    Listed(std::slice::Iter<'a, &'a str>),
}

impl<'a> Iterator for DestIds<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        match self {
            DestIds::Origins(i) => i.next().map(|o| &**o),
            DestIds::Listed(i) => i.next().copied(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            DestIds::Origins(i) => i.size_hint(),
            DestIds::Listed(i) => i.size_hint(),
        }
    }
}

impl ExactSizeIterator for DestIds<'_> {}

/// One copy onto one peer link (`group` indexes `Route::remote`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop<'f> {
    pub group: usize,
    pub dests: Dests<'f>,
}

/// Where one message goes.
#[derive(Debug)]
pub struct Plan<'f> {
    pub route: Arc<Route>,
    pub local: Local,
    pub hops: Vec<Hop<'f>>,
    /// Forwarded destinations no route reaches (counted as `no_route`).
    pub unreached: u64,
    /// Forwarded destinations dropped because the next hop is on the
    /// message's path: tables are reconverging; dropping beats looping.
    pub loops: u64,
}

impl Plan<'_> {
    /// The local subscribers to deliver to.
    pub fn local_subs(&self) -> &[Sub] {
        self.local.subs(&self.route)
    }

    pub fn group(&self, hop: &Hop<'_>) -> &RemoteGroup {
        &self.route.remote[hop.group]
    }

    /// The destination node ids of one hop, in order, without allocating
    /// (the drivers encode them straight into the `Forward`).
    pub fn dest_ids<'a>(&'a self, hop: &'a Hop<'_>) -> DestIds<'a> {
        let g = self.group(hop);
        match &hop.dests {
            Dests::AllOrigins => DestIds::Origins(g.origins.iter()),
            Dests::Origin(i) => DestIds::Origins(std::slice::from_ref(&g.origins[*i]).iter()),
            Dests::Listed(v) => DestIds::Listed(v.iter()),
        }
    }

    /// [`Plan::dest_ids`] collected, for tests.
    #[cfg(test)]
    pub fn dests<'a>(&'a self, hop: &'a Hop<'_>) -> Vec<&'a str> {
        self.dest_ids(hop).collect()
    }
}

/// The engine's answer for one message.
#[derive(Debug)]
pub enum Decision<'f> {
    Refuse(Refusal),
    Silent(Silent),
    Route(Plan<'f>),
}

fn hook_drops(env: &Env<'_>, frame: RoutedFrame<'_>) -> bool {
    env.hook.is_some_and(|h| h(&frame) == HookVerdict::Drop)
}

/// A publish from a local client registered as `from`. `authorize` is asked
/// (once, after the name checks) whether this connection may publish to the
/// name; drivers cache grants behind it.
pub fn route_publish<'f>(
    env: &mut Env<'_>,
    from: &str,
    p: &PublishView<'f>,
    authorize: impl FnOnce(&str) -> Result<(), Denied>,
) -> Decision<'f> {
    if p.mode == Mode::Unicast && !p.has_instance() {
        return Decision::Refuse(Refusal::BadName);
    }
    if let Err(d) = authorize(p.name) {
        return Decision::Refuse(Refusal::Unauthorized(d.to_string()));
    }
    let frame = RoutedFrame {
        name: p.name,
        mode: p.mode,
        from,
        payload: p.payload,
    };
    if hook_drops(env, frame) {
        return Decision::Silent(Silent::Hook);
    }
    let Some(route) = env.lookup(p.name).filter(|r| !r.is_empty()) else {
        if p.flags & FLAG_NO_ROUTE_SILENT != 0 {
            return Decision::Silent(Silent::NoRouteSilent);
        }
        return Decision::Refuse(Refusal::NoRoute(p.name.to_owned()));
    };
    let (local, hops) = match p.mode {
        Mode::Multicast => {
            let local = if route.subs.is_empty() {
                Local::None
            } else {
                Local::All
            };
            // One copy per link, carrying the nodes beyond it that want it.
            let hops = (0..route.remote.len())
                .map(|group| Hop {
                    group,
                    dests: Dests::AllOrigins,
                })
                .collect();
            (local, hops)
        }
        // Local subscribers first, then one remote node.
        Mode::Anycast | Mode::Unicast => match route.pick_live() {
            Some(i) => (Local::One(i), Vec::new()),
            None => match route.pick_remote() {
                Some((group, o)) => (
                    Local::None,
                    vec![Hop {
                        group,
                        dests: Dests::Origin(o),
                    }],
                ),
                None => (Local::None, Vec::new()),
            },
        },
    };
    Decision::Route(Plan {
        route,
        local,
        hops,
        unreached: 0,
        loops: 0,
    })
}

/// A `Forward` that arrived on the link to `peer`, at node `me`.
pub fn route_forward<'f>(
    env: &mut Env<'_>,
    me: &str,
    max_hops: usize,
    peer: &str,
    v: &ForwardView<'f>,
) -> Decision<'f> {
    // The path must start somewhere, end at the sender, and not hold us.
    let path_ok = !v.path.is_empty()
        && v.path.iter().last() == Some(peer)
        && v.path.len() < max_hops
        && !v.path.contains(me);
    if !path_ok {
        return Decision::Silent(Silent::BadPath);
    }
    let frame = RoutedFrame {
        name: v.name,
        mode: v.mode,
        from: v.from,
        payload: v.payload,
    };
    if hook_drops(env, frame) {
        return Decision::Silent(Silent::Hook);
    }
    let Some(route) = env.lookup(v.name) else {
        return Decision::Silent(Silent::NoRoute {
            n: v.dests.len() as u64,
        });
    };
    let mut plan = Plan {
        local: Local::None,
        hops: Vec::new(),
        unreached: 0,
        loops: 0,
        route,
    };
    let mut handled = 0usize;
    if v.dests.contains(me) {
        handled += 1;
        plan.local = match v.mode {
            _ if plan.route.subs.is_empty() => {
                plan.unreached += 1;
                Local::None
            }
            Mode::Multicast => Local::All,
            Mode::Anycast | Mode::Unicast => plan.route.pick_live().map_or(Local::None, Local::One),
        };
    }
    if v.dests.len() > handled {
        for (gi, g) in plan.route.remote.iter().enumerate() {
            let sub: Vec<&'f str> = v
                .dests
                .iter()
                .filter(|d| g.origins.iter().any(|o| **o == **d))
                .collect();
            if sub.is_empty() {
                continue;
            }
            handled += sub.len();
            if v.path.contains(&g.peer) {
                plan.loops += sub.len() as u64;
                continue;
            }
            plan.hops.push(Hop {
                group: gi,
                dests: Dests::Listed(sub),
            });
        }
    }
    plan.unreached += (v.dests.len() - handled.min(v.dests.len())) as u64;
    Decision::Route(plan)
}

/// Slow subscribers a [`Tally`] remembers per batch.
pub const SLOW_CONNS: usize = 4;

/// What a driver does after a push: nothing more, wait for room (the queue
/// is full and the policy says to wait; the frame comes back), or close a
/// connection the policy has cut.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum Next {
    Done,
    Wait(Bytes),
    Disconnect(ConnId),
}

/// Outcomes of the pushes of one read batch, and the slow-consumer decision
/// for each: counted here, flushed to metrics once per batch by the driver.
#[derive(Debug, Default)]
pub struct Tally {
    pub deliveries: u64,
    /// Local deliveries dropped because the subscriber's queue was full.
    pub slow: u64,
    /// Subscribers newly declared slow consumers (the write deadline passed
    /// under the drop policy).
    pub declared: u64,
    /// Local deliveries not made because the subscriber's connection was
    /// closing (its outbox closed).
    pub gone: u64,
    /// Copies delivered earlier (counted then) and dropped from a slow
    /// consumer's queue to give back its overflow room (`Push::Slow`).
    pub shed: u64,
    /// The first few slow subscribers of the batch, for the node's
    /// per-identity "slow consumer" log line (the rest show up in later
    /// batches; the counters count every drop).
    pub slow_conns: [ConnId; SLOW_CONNS],
    pub slow_n: usize,
    /// Link copies dropped because the link's queue was full (a slow peer is
    /// isolated; the link stays up for everyone else).
    pub link_drops: u64,
    /// Link copies not carried because the link was closing (its outbox
    /// closed: the link went down between the route lookup and the push).
    pub link_gone: u64,
    /// The peer of such a link, for the log.
    pub gone_link: Option<Arc<str>>,
    /// The peer of a link newly declared slow in this batch, for the log.
    pub slow_link: Option<Arc<str>>,
    /// Frames written around an outbox ([`Tally::push_sub_direct`]; whole,
    /// or begun there and finished by the writer) and the bytes written that
    /// way: the writer task does not count them, so the driver does.
    pub direct_frames: u64,
    pub direct_bytes: u64,
    /// The same for peer links ([`Tally::push_link_direct`]).
    pub link_direct_frames: u64,
    pub link_direct_bytes: u64,
}

impl Tally {
    /// `frames` frames to one local subscriber (a run encoded back to back,
    /// or a single frame), under its slow-consumer policy.
    pub fn push_sub(&mut self, sub: &Sub, frame: Bytes, frames: u64) -> Next {
        let out = sub.outbox.push_frames(frame, frames);
        self.sub_outcome(sub.conn, out, frames)
    }

    /// One local subscriber, written straight onto its stream when nothing
    /// is queued for it ([`crate::outbox::Outbox::try_direct`]), else queued
    /// as by [`Tally::push_sub`]. For the last frames of a read: frames with
    /// more behind them are better queued, so the writer coalesces them.
    pub fn push_sub_direct(&mut self, sub: &Sub, frame: Bytes, frames: u64) -> Next {
        let len = frame.len() as u64;
        match sub.outbox.try_direct(frame, frames) {
            Direct::Busy(frame) => self.push_sub(sub, frame, frames),
            Direct::Written | Direct::Carried => {
                // A carried write's frames are counted here too: the writer
                // writes their rest behind an empty wake-up item, which
                // counts no frame.
                self.direct_frames += frames;
                self.direct_bytes += len;
                self.deliveries += frames;
                Next::Done
            }
        }
    }

    /// Counts what became of `frames` copies to subscriber `conn`.
    pub fn sub_outcome(&mut self, conn: ConnId, out: Push, frames: u64) -> Next {
        match out {
            Push::Queued => self.deliveries += frames,
            Push::Full(frame) => return Next::Wait(frame),
            Push::Dropped => self.slow_from(conn, frames),
            Push::Slow { shed } => {
                self.declared += 1;
                // Not `slow`: the shed copies were counted as delivered when
                // they were queued, and each copy ends in one counter.
                self.shed += shed;
                self.slow_from(conn, frames);
            }
            Push::Closed => self.gone += frames,
            Push::Disconnect => {
                self.slow_from(conn, frames);
                return Next::Disconnect(conn);
            }
        }
        Next::Done
    }

    fn slow_from(&mut self, conn: ConnId, frames: u64) {
        self.slow += frames;
        if self.slow_n < SLOW_CONNS && !self.slow_conns[..self.slow_n].contains(&conn) {
            self.slow_conns[self.slow_n] = conn;
            self.slow_n += 1;
        }
    }

    /// `frames` frames onto the peer link to `peer` (a run of `Forward`s,
    /// or one); a full link queue is waited for like a subscriber's.
    pub fn push_link(&mut self, link: &Outbox, peer: &Arc<str>, frame: Bytes, frames: u64) -> Next {
        let out = link.push_frames(frame, frames);
        self.link_outcome(peer, out, frames)
    }

    /// [`Tally::push_link`], written straight onto the link's data stream
    /// when nothing is queued on it, as [`Tally::push_sub_direct`] does for a
    /// subscriber (and for the last frames of a read, for the same reason).
    pub fn push_link_direct(
        &mut self,
        link: &Outbox,
        peer: &Arc<str>,
        frame: Bytes,
        frames: u64,
    ) -> Next {
        let len = frame.len() as u64;
        match link.try_direct(frame, frames) {
            Direct::Busy(frame) => self.push_link(link, peer, frame, frames),
            Direct::Written | Direct::Carried => {
                self.link_direct_frames += frames;
                self.link_direct_bytes += len;
                Next::Done
            }
        }
    }

    /// Counts what became of `frames` frames onto the link to `peer`: a
    /// link is never cut for slowness (everyone behind it would lose their
    /// routes), it drops.
    pub fn link_outcome(&mut self, peer: &Arc<str>, out: Push, frames: u64) -> Next {
        match out {
            Push::Queued => {}
            Push::Closed => {
                self.link_gone += frames;
                self.gone_link = Some(Arc::clone(peer));
            }
            Push::Full(frame) => return Next::Wait(frame),
            Push::Slow { shed } => {
                // Links borrow no overflow room, so `shed` is 0 there.
                self.link_drops += frames + shed;
                self.slow_link = Some(Arc::clone(peer));
            }
            Push::Dropped | Push::Disconnect => self.link_drops += frames,
        }
        Next::Done
    }
}

#[cfg(test)]
mod tests;
