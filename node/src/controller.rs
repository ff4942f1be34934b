//! The node's link to the controller: dial out (mutual TLS with the node's
//! own SVID), register, send a full report on connect (and when the
//! controller asks), then only what changed: every `delta_interval` the
//! links and, if the registry's route generation moved, the routes are
//! compared with what was last reported ([`ReportTracker`]) and the
//! differences go out as one delta; nothing goes out when nothing changed,
//! except once per `report_interval` (link traffic counters, or an empty
//! delta as a sign of life). Also forwards node events (batched, resent
//! until acknowledged), and applies the controller's `SetPeers` through
//! `NodeHandle::set_dial_peers`. Reconnects forever with backoff and jitter.
//!
//! The controller is not on the data path: when it is unreachable nothing
//! else changes — the dial set stays what it was (it is never reset on a
//! disconnect), links and routes keep working, and events wait in a bounded
//! queue to be sent after the reconnect.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use metrics::{counter, gauge};
use rand::Rng;
use slim_actors::{NodeHandle, TlsIdentity};
use slim_auth::{ServerMatch, SpiffeId};
use slim_controller::proto::{self as p, ToCaller, ToController, unix_ms};
use slim_controller::report::{ReportTracker, TrackerConfig};
use slim_controller::{ConnError, ControllerConn, Limits};
use tokio::sync::{Notify, broadcast};
use tracing::{debug, info, warn};

/// Gauge: 1 while registered with the controller.
pub const CONNECTED: &str = "slim_controller_connected";
/// Counter: registrations after the first one (i.e. successful reconnects).
pub const RECONNECTS_TOTAL: &str = "slim_controller_reconnects_total";
/// Counter, `reason` = `overflow` (pending queue full while the controller
/// was away) or `lagged` (the node's event broadcast outran us): events that
/// will be missing from the audit trail.
pub const EVENTS_LOST_TOTAL: &str = "slim_controller_events_lost_total";
/// Counter: dial sets applied (changed sets only).
pub const DIAL_SETS_APPLIED_TOTAL: &str = "slim_controller_dial_sets_applied_total";

/// Registers the HELP text of the node's controller-link metrics (their
/// series appear once the node has a `[controller]` section).
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_gauge!(
        CONNECTED,
        Unit::Count,
        "1 while registered with the controller, else 0."
    );
    describe_counter!(
        RECONNECTS_TOTAL,
        Unit::Count,
        "Registrations with the controller after the first (successful reconnects)."
    );
    describe_counter!(
        EVENTS_LOST_TOTAL,
        Unit::Count,
        "Node events that will be missing from the controller's audit trail, by reason (overflow, lagged)."
    );
    describe_counter!(
        DIAL_SETS_APPLIED_TOTAL,
        Unit::Count,
        "Changed dial sets from the controller applied by the node."
    );
}

/// Events per `Events` message.
const BATCH: usize = 512;

#[derive(Debug, Clone)]
pub struct ControllerLinkConfig {
    /// `host:port` of the controller (resolved on every attempt).
    pub address: String,
    /// TLS server name (SNI) for the controller.
    pub server_name: String,
    /// Pin the controller's SPIFFE ID; without it, any SVID from the node's
    /// own trust domain is accepted.
    pub expect_spiffe_id: Option<SpiffeId>,
    pub cluster: String,
    /// Where other nodes can dial this node; `None` behind NAT.
    /// `host:port`; a name goes to the controller as the name
    /// (`Register::external_host`), for dialers to resolve.
    pub external_endpoint: Option<String>,
    /// The TLS server name other nodes should use when dialling this node.
    pub advertise_server_name: String,
    /// How often link changes and route changes are looked for; a change
    /// reaches the controller within about this long.
    pub delta_interval: Duration,
    /// How often link traffic counters are brought up to date in the
    /// controller's view; also the sign of life when nothing changed.
    pub report_interval: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub connect_timeout: Duration,
    /// Events kept while the controller is unreachable (oldest dropped first).
    pub max_pending_events: usize,
}

impl ControllerLinkConfig {
    pub fn new(address: impl Into<String>) -> Self {
        ControllerLinkConfig {
            address: address.into(),
            server_name: "slim-controller".into(),
            expect_spiffe_id: None,
            cluster: String::new(),
            external_endpoint: None,
            advertise_server_name: "slim-node".into(),
            delta_interval: Duration::from_millis(200),
            report_interval: Duration::from_secs(10),
            // The first retry after a loss (a restarted controller resets
            // the connection at once) comes within 50–100 ms.
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            max_pending_events: 10_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerLinkError {
    #[error(transparent)]
    Conn(#[from] ConnError),
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("the node is gone")]
    NodeGone,
}

/// Observable state of the link (for tests and the admin view).
#[derive(Debug, Default)]
struct Status {
    connected: AtomicBool,
    registrations: AtomicU64,
    set_peers_received: AtomicU64,
    dial_sets_applied: AtomicU64,
}

/// Events not yet acknowledged by the controller, numbered per process
/// (`epoch`) so the controller stores each once even when resent.
#[derive(Debug)]
struct Pending {
    inner: Mutex<PendingInner>,
    notify: Notify,
    epoch: u64,
}

#[derive(Debug)]
struct PendingInner {
    next_seq: u64,
    queue: VecDeque<(u64, p::NodeEvent)>,
    /// Highest number sent on the current connection.
    sent_upto: u64,
    cap: usize,
}

impl Pending {
    fn lock(&self) -> parking_lot::MutexGuard<'_, PendingInner> {
        self.inner.lock()
    }

    fn push(&self, ev: p::NodeEvent) {
        {
            let mut g = self.lock();
            if g.queue.len() >= g.cap {
                g.queue.pop_front();
                counter!(EVENTS_LOST_TOTAL, "reason" => "overflow").increment(1);
            }
            let seq = g.next_seq;
            g.next_seq += 1;
            g.queue.push_back((seq, ev));
        }
        self.notify.notify_one();
    }

    fn ack(&self, upto: u64) {
        let mut g = self.lock();
        while g.queue.front().is_some_and(|(s, _)| *s <= upto) {
            g.queue.pop_front();
        }
    }

    /// A new connection: everything unacknowledged goes again.
    fn rewind(&self) {
        let mut g = self.lock();
        g.sent_upto = g.queue.front().map_or(g.next_seq - 1, |(s, _)| s - 1);
    }

    fn next_batch(&self) -> Option<(u64, Vec<p::NodeEvent>)> {
        let mut g = self.lock();
        let sent = g.sent_upto;
        let start = g.queue.iter().position(|(s, _)| *s > sent)?;
        let batch: Vec<_> = g.queue.iter().skip(start).take(BATCH).cloned().collect();
        let first = batch.first()?.0;
        g.sent_upto = batch.last()?.0;
        Some((first, batch.into_iter().map(|(_, e)| e).collect()))
    }

    fn len(&self) -> usize {
        self.lock().queue.len()
    }
}

/// The running link; dropping it does not stop it, [`ControllerLink::stop`] does.
#[derive(Debug)]
pub struct ControllerLink {
    status: Arc<Status>,
    pending: Arc<Pending>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ControllerLink {
    pub fn is_connected(&self) -> bool {
        self.status.connected.load(Ordering::Relaxed)
    }

    /// Successful registrations (the first one included).
    pub fn registrations(&self) -> u64 {
        self.status.registrations.load(Ordering::Relaxed)
    }

    /// `SetPeers` messages received, identical ones included.
    pub fn set_peers_received(&self) -> u64 {
        self.status.set_peers_received.load(Ordering::Relaxed)
    }

    /// Dial sets handed to the node (changed ones only).
    pub fn dial_sets_applied(&self) -> u64 {
        self.status.dial_sets_applied.load(Ordering::Relaxed)
    }

    /// Events waiting for the controller's acknowledgement.
    pub fn pending_events(&self) -> usize {
        self.pending.len()
    }

    pub async fn stop(self) {
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
        gauge!(CONNECTED).set(0.0);
    }
}

/// Starts the link for `node`. The task holds only a weak reference, so the
/// node can still be shut down (stop the link first to end it promptly).
pub fn spawn(
    node: &Arc<NodeHandle>,
    identity: TlsIdentity,
    cfg: ControllerLinkConfig,
) -> ControllerLink {
    let pending = Arc::new(Pending {
        inner: Mutex::new(PendingInner {
            next_seq: 1,
            queue: VecDeque::new(),
            sent_upto: 0,
            cap: cfg.max_pending_events.max(1),
        }),
        notify: Notify::new(),
        epoch: rand::rng().random(),
    });
    let status = Arc::new(Status::default());
    gauge!(CONNECTED).set(0.0);
    // Subscribed now, before the first connect, so no event is missed while
    // the controller is away.
    let events = node.subscribe_events();
    let tasks = vec![
        tokio::spawn(collect(events, Arc::clone(&pending))),
        tokio::spawn(run(
            Arc::downgrade(node),
            identity,
            cfg,
            Arc::clone(&status),
            Arc::clone(&pending),
        )),
    ];
    ControllerLink {
        status,
        pending,
        tasks,
    }
}

async fn collect(mut rx: broadcast::Receiver<slim_actors::NodeEvent>, pending: Arc<Pending>) {
    loop {
        match rx.recv().await {
            Ok(ev) => pending.push(event_to_wire(ev)),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                counter!(EVENTS_LOST_TOTAL, "reason" => "lagged").increment(n);
                warn!(lost = n, "node events lagged; the audit trail misses them");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn jitter(d: Duration) -> Duration {
    // Uniform over [d/2, d]: spreads the reconnects of a whole fleet after
    // a controller restart, while keeping the expected delay near d.
    let ms = d.as_millis() as u64;
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms.max(1)))
}

async fn run(
    node: Weak<NodeHandle>,
    identity: TlsIdentity,
    cfg: ControllerLinkConfig,
    status: Arc<Status>,
    pending: Arc<Pending>,
) {
    let mut backoff = cfg.backoff_initial;
    // The last dial set handed to the node, so an identical push (e.g. after
    // a reconnect) does not disturb its links.
    let mut applied: Option<Vec<slim_actors::PeerSpec>> = None;
    let mut reporting = Reporting::new(&cfg);
    loop {
        let r = session(
            &node,
            &identity,
            &cfg,
            &status,
            &pending,
            &mut applied,
            &mut reporting,
        )
        .await;
        if status.connected.swap(false, Ordering::Relaxed) {
            gauge!(CONNECTED).set(0.0);
            backoff = cfg.backoff_initial;
        }
        match r {
            Err(ControllerLinkError::NodeGone) => return,
            Err(e) => {
                warn!(controller = %cfg.address, error = %e, "controller link down; retrying")
            }
            Ok(()) => info!(controller = %cfg.address, "controller closed the link; retrying"),
        }
        tokio::time::sleep(jitter(backoff)).await;
        backoff = (backoff * 2).min(cfg.backoff_max);
    }
}

fn tls(
    identity: &TlsIdentity,
    cfg: &ControllerLinkConfig,
) -> Result<rustls::ClientConfig, ControllerLinkError> {
    let alpn: &[&[u8]] = &[slim_controller::ALPN_CONTROLLER];
    let own = match identity {
        TlsIdentity::Static(i) => i.spiffe_id.clone(),
        TlsIdentity::Source(s) => s.spiffe_id(),
    };
    let server = match &cfg.expect_spiffe_id {
        Some(id) => ServerMatch::Exact(id.clone()),
        None => ServerMatch::TrustDomain(own.trust_domain().to_owned()),
    };
    match identity {
        TlsIdentity::Static(i) => slim_auth::client_config(i, alpn, server),
        TlsIdentity::Source(s) => slim_auth::tls::client_config_from_source(s, alpn, server),
    }
    .map_err(|e| ControllerLinkError::Tls(e.to_string()))
}

/// What the controller was last told about this node's links and routes.
/// Kept across reconnects: a new connection starts with a full report.
struct Reporting {
    tracker: ReportTracker,
    /// The registry's route generation at the last route snapshot.
    route_gen: Option<u64>,
    /// A route snapshot walks every name: on a node with very many names
    /// that keep changing, snapshots are spaced so they take at most about
    /// a tenth of the time (links still go out every `delta_interval`).
    routes_not_before: Instant,
}

impl Reporting {
    fn new(cfg: &ControllerLinkConfig) -> Reporting {
        let now = Instant::now();
        Reporting {
            tracker: ReportTracker::new(
                TrackerConfig {
                    refresh: cfg.report_interval,
                    piece_bytes: p::piece_budget(&Limits::default()),
                },
                now,
            ),
            route_gen: None,
            routes_not_before: now,
        }
    }

    /// The report messages due now (none when nothing changed).
    fn messages(&mut self, node: &NodeHandle) -> Vec<ToController> {
        let now = Instant::now();
        let links = node.links().into_iter().map(link_to_wire).collect();
        let generation = node.registry().route_generation();
        let routes = if self.route_gen != Some(generation) && now >= self.routes_not_before {
            // Read before the snapshot: a change during it moves the
            // generation again and is picked up next time.
            self.route_gen = Some(generation);
            let routes = node.routes().into_iter().map(route_to_wire).collect();
            self.routes_not_before = now + now.elapsed() * 10;
            Some(routes)
        } else {
            None
        };
        self.tracker.update(now, links, routes)
    }
}

async fn session(
    node: &Weak<NodeHandle>,
    identity: &TlsIdentity,
    cfg: &ControllerLinkConfig,
    status: &Status,
    pending: &Pending,
    applied: &mut Option<Vec<slim_actors::PeerSpec>>,
    reporting: &mut Reporting,
) -> Result<(), ControllerLinkError> {
    let (node_id, listen) = {
        let n = node.upgrade().ok_or(ControllerLinkError::NodeGone)?;
        (n.node_id().to_owned(), n.local_addr())
    };
    // Resolved at every attempt, every address tried: a controller that
    // moved is found under its name.
    let mut c = ControllerConn::connect_host(
        &cfg.address,
        &cfg.server_name,
        tls(identity, cfg)?,
        Limits::default(),
        cfg.connect_timeout,
    )
    .await?;
    let result = registered_session(
        node, cfg, status, pending, applied, reporting, &mut c, node_id, listen,
    )
    .await;
    let result = match result {
        // A read error after the controller closed says less than its reason.
        Err(ControllerLinkError::Conn(ConnError::Read(_) | ConnError::Closed)) => {
            Err(c.closed_reason().into())
        }
        r => r,
    };
    c.close().await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn registered_session(
    node: &Weak<NodeHandle>,
    cfg: &ControllerLinkConfig,
    status: &Status,
    pending: &Pending,
    applied: &mut Option<Vec<slim_actors::PeerSpec>>,
    reporting: &mut Reporting,
    c: &mut ControllerConn,
    node_id: String,
    listen: SocketAddr,
) -> Result<(), ControllerLinkError> {
    let ext = cfg.external_endpoint.as_deref();
    let ext_addr = ext.and_then(|e| e.parse::<SocketAddr>().ok());
    c.stream
        .send(&ToController::Register(p::Register {
            node_id,
            cluster: cfg.cluster.clone(),
            external_endpoint: ext_addr,
            external_host: ext.filter(|_| ext_addr.is_none()).map(str::to_owned),
            listen: Some(listen),
            server_name: cfg.advertise_server_name.clone(),
            epoch: pending.epoch,
            dialing: applied
                .iter()
                .flatten()
                .map(|ps| {
                    p::PeerSpec::new(
                        ps.node_id.clone(),
                        &ps.addr,
                        ps.server_name.clone(),
                        ps.expect_spiffe_id.as_ref().map(|i| i.to_string()),
                    )
                })
                .collect(),
        }))
        .await?;
    match tokio::time::timeout(cfg.connect_timeout, c.stream.recv::<ToCaller>()).await {
        Err(_) => return Err(ConnError::Timeout("registration").into()),
        Ok(Ok(Some(ToCaller::Registered))) => {}
        Ok(Ok(Some(ToCaller::Error { code, reason }))) => {
            return Err(ConnError::Refused {
                code: code.as_str(),
                reason,
            }
            .into());
        }
        Ok(Ok(Some(other))) => return Err(ConnError::Unexpected(format!("{other:?}")).into()),
        Ok(Ok(None)) => return Err(c.closed_reason().into()),
        Ok(Err(e)) => return Err(e.into()),
    }
    status.connected.store(true, Ordering::Relaxed);
    if status.registrations.fetch_add(1, Ordering::Relaxed) > 0 {
        counter!(RECONNECTS_TOTAL).increment(1);
    }
    gauge!(CONNECTED).set(1.0);
    info!(controller = %cfg.address, "registered with the controller");
    pending.rewind();
    // This connection's controller state is empty: start with everything.
    reporting.tracker.handle_resync();
    let mut tick = tokio::time::interval(cfg.delta_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        while let Some((first_seq, events)) = pending.next_batch() {
            c.stream
                .send(&ToController::Events {
                    epoch: pending.epoch,
                    first_seq,
                    events,
                })
                .await?;
        }
        tokio::select! {
            // The first tick is immediate: the full report on connect.
            _ = tick.tick() => {
                let msgs = {
                    let n = node.upgrade().ok_or(ControllerLinkError::NodeGone)?;
                    reporting.messages(&n)
                };
                for m in &msgs {
                    c.stream.send(m).await?;
                }
            }
            _ = pending.notify.notified() => {}
            msg = c.stream.recv::<ToCaller>() => match msg? {
                Some(ToCaller::SetPeers(peers)) => {
                    let n = node.upgrade().ok_or(ControllerLinkError::NodeGone)?;
                    if apply_peers(&n, peers, applied) {
                        status.dial_sets_applied.fetch_add(1, Ordering::Relaxed);
                    }
                    // Counted after applying, so an observer that sees it
                    // also sees the effect.
                    status.set_peers_received.fetch_add(1, Ordering::Relaxed);
                }
                Some(ToCaller::EventsAck { epoch, upto }) if epoch == pending.epoch => pending.ack(upto),
                Some(ToCaller::SendReport) => {
                    debug!("the controller asks for a full report");
                    reporting.tracker.handle_resync();
                    tick.reset_immediately();
                }
                Some(ToCaller::Error { code, reason }) => {
                    return Err(ConnError::Refused { code: code.as_str(), reason }.into());
                }
                Some(other) => debug!(msg = ?other, "ignoring unexpected controller message"),
                None => return Ok(()),
            },
        }
    }
}

/// Hands the controller's dial set to the node if it differs from the last
/// one applied. Entries with an invalid SPIFFE ID are skipped (and logged):
/// the rest of the plan still applies.
fn apply_peers(
    node: &NodeHandle,
    peers: Vec<p::PeerSpec>,
    applied: &mut Option<Vec<slim_actors::PeerSpec>>,
) -> bool {
    let mut want: Vec<slim_actors::PeerSpec> = peers
        .into_iter()
        .filter_map(|ps| {
            let expect = match ps.expect_spiffe_id.as_deref().map(SpiffeId::parse) {
                None => None,
                Some(Ok(id)) => Some(id),
                Some(Err(e)) => {
                    warn!(peer = %ps.node_id, error = %e, "controller sent an invalid SPIFFE ID; skipping that peer");
                    return None;
                }
            };
            Some(slim_actors::PeerSpec {
                // The name, when the target registered one: resolved by the
                // link at each dial.
                addr: ps.target(),
                node_id: ps.node_id,
                server_name: ps.server_name,
                expect_spiffe_id: expect,
            })
        })
        .collect();
    want.sort_by(|a, b| a.node_id.cmp(&b.node_id).then(a.addr.cmp(&b.addr)));
    if applied.as_ref() == Some(&want) {
        return false;
    }
    info!(peers = ?want.iter().map(|p| p.node_id.as_str()).collect::<Vec<_>>(), "applying the controller's dial set");
    node.set_dial_peers(want.clone());
    counter!(DIAL_SETS_APPLIED_TOTAL).increment(1);
    *applied = Some(want);
    true
}

fn link_to_wire(l: slim_actors::LinkInfo) -> p::LinkInfo {
    p::LinkInfo {
        link_id: l.link_id,
        peer_node_id: l.peer_node_id,
        peer_spiffe_id: l.peer_spiffe_id,
        remote_addr: l.remote_addr,
        direction: match l.direction {
            slim_actors::LinkDirection::Dialled => p::LinkDirection::Dialled,
            slim_actors::LinkDirection::Accepted => p::LinkDirection::Accepted,
        },
        state: match l.state {
            slim_actors::LinkState::Connecting => p::LinkState::Connecting,
            slim_actors::LinkState::Up => p::LinkState::Up,
            slim_actors::LinkState::Backoff => p::LinkState::Backoff,
        },
        up_since_ms: l.up_since.map(unix_ms),
        frames_in: l.frames_in,
        frames_out: l.frames_out,
        drops: l.drops,
    }
}

fn route_to_wire(r: slim_actors::RouteInfo) -> p::RouteInfo {
    p::RouteInfo {
        name: r.name,
        local_subscribers: r.local_subscribers as u64,
        remote_peers: r.remote_peers,
    }
}

fn event_to_wire(ev: slim_actors::NodeEvent) -> p::NodeEvent {
    use slim_actors::NodeEvent as E;
    match ev {
        E::ClientConnected {
            client,
            spiffe_id,
            at,
        } => p::NodeEvent::ClientConnected {
            client,
            spiffe_id,
            at_ms: unix_ms(at),
        },
        E::ClientDisconnected {
            client,
            spiffe_id,
            at,
        } => p::NodeEvent::ClientDisconnected {
            client,
            spiffe_id,
            at_ms: unix_ms(at),
        },
        E::Subscribed {
            name,
            client,
            spiffe_id,
            at,
        } => p::NodeEvent::Subscribed {
            name,
            client,
            spiffe_id,
            at_ms: unix_ms(at),
        },
        E::Unsubscribed {
            name,
            client,
            spiffe_id,
            at,
        } => p::NodeEvent::Unsubscribed {
            name,
            client,
            spiffe_id,
            at_ms: unix_ms(at),
        },
        E::LinkUp { peer_node_id, at } => p::NodeEvent::LinkUp {
            peer_node_id,
            at_ms: unix_ms(at),
        },
        E::LinkDown {
            peer_node_id,
            reason,
            at,
        } => p::NodeEvent::LinkDown {
            peer_node_id,
            reason,
            at_ms: unix_ms(at),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: u64) -> p::NodeEvent {
        p::NodeEvent::LinkUp {
            peer_node_id: format!("n{i}"),
            at_ms: i,
        }
    }

    fn pending(cap: usize) -> Pending {
        Pending {
            inner: Mutex::new(PendingInner {
                next_seq: 1,
                queue: VecDeque::new(),
                sent_upto: 0,
                cap,
            }),
            notify: Notify::new(),
            epoch: 1,
        }
    }

    #[test]
    fn unacknowledged_events_are_resent_after_a_reconnect() {
        let p = pending(100);
        for i in 0..3 {
            p.push(ev(i));
        }
        let (first, b) = p.next_batch().unwrap();
        assert_eq!((first, b.len()), (1, 3));
        assert!(p.next_batch().is_none(), "sent once per connection");
        p.ack(2);
        p.push(ev(3));
        assert_eq!(p.next_batch().unwrap().0, 4);
        // Connection lost before the ack of 3 and 4: both go again.
        p.rewind();
        let (first, b) = p.next_batch().unwrap();
        assert_eq!((first, b), (3, vec![ev(2), ev(3)]));
        p.ack(4);
        assert_eq!(p.len(), 0);
        p.rewind();
        assert!(p.next_batch().is_none());
    }

    #[test]
    fn pending_queue_is_bounded_and_drops_the_oldest() {
        let p = pending(2);
        for i in 0..5 {
            p.push(ev(i));
        }
        assert_eq!(p.len(), 2);
        let (first, b) = p.next_batch().unwrap();
        assert_eq!((first, b), (4, vec![ev(3), ev(4)]));
    }
}
