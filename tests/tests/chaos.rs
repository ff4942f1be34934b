//! Chaos: reliable point-to-point sessions and MLS channels while the real
//! `slim-node` processes they ride on are `kill -9`'d and restarted on the
//! same port with the same configuration.
//!
//! Payloads carry sequence numbers; a bitset ([`SeqSet`]) proves that every
//! message arrived exactly once, and the receivers check the order as they
//! go. Nothing here asserts a duration: the time from each restart to the
//! first delivery after it is printed (run with `--nocapture`), and
//! `docs/BENCHMARKS.md` records it.
//!
//! The nodes run with a short QUIC idle timeout and keep-alive so that the
//! clients notice a dead node within about a second and a half; the SDK
//! then redials with backoff and restores its subscriptions, and the
//! sessions and channels resume over the new connection.
//!
//! `SLIM_CHAOS_MESSAGES` sets the session tests' message count (default
//! 30,000), `SLIM_CHAOS_CHANNEL_MESSAGES` and `SLIM_CHAOS_CHANNEL_RATE` the
//! channel test's (default 150 at 10/s: MLS signs and verifies every
//! message, which debug builds do so slowly — tens of ms a message and
//! member — that a faster stream starves the test's runtime, QUIC timers
//! included, and connections time out with no node killed). Needs the workspace binaries: `cargo build --workspace --bins`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use slim_auth::SpiffeId;
use slim_client::channel::{
    Channel, ChannelConfig, ChannelEvent, ChannelMember, ChannelOptions, Invitations,
};
use slim_client::session::SessionMux;
use slim_client::session::p2p::{P2pConfig, P2pEvent, P2pListener, P2pSession};
use slim_client::{Client, ClientConfig};
use slim_mls::MlsIdentity;
use slim_tests::netns::bin;
use slim_tests::*;

const TD: &str = "example.org";

/// The test's directory (configs, SVIDs, node logs); kept for a look
/// afterwards with `SLIM_CHAOS_KEEP=1`.
fn workdir() -> tempfile::TempDir {
    let mut d = tempfile::tempdir().expect("tempdir");
    if std::env::var_os("SLIM_CHAOS_KEEP").is_some() {
        d.disable_cleanup(true);
        eprintln!("keeping {}", d.path().display());
    }
    d
}

fn env_count(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// One `slim-node` process, restartable on the same port with the same
/// configuration file. Killed on drop.
struct NodeProc {
    id: String,
    addr: SocketAddr,
    config: PathBuf,
    dir: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl NodeProc {
    /// Writes the node's configuration (and its SVID) under `dir`; `peers`
    /// are the `(node id, port)` it dials.
    fn new(pki: &Pki, dir: &Path, id: &str, port: u16, peers: &[(&str, u16)]) -> NodeProc {
        let spiffe = SpiffeId::parse(&format!("spiffe://{TD}/node/{id}")).expect("SPIFFE ID");
        let ident = dir.join(format!("{id}-identity"));
        pki.ca
            .issue_to_dir(&spiffe, Duration::from_secs(3600), &ident)
            .expect("node SVID");
        let mut toml = format!(
            "[node]\nid = \"{id}\"\nlisten = \"127.0.0.1:{port}\"\n\
             idle_timeout_ms = 1500\nkeep_alive_ms = 300\nshutdown_drain_ms = 0\n\
             [identity]\nsource = \"files\"\ndir = \"{}\"\n\
             [metrics]\nlisten = \"\"\n\
             [log]\nlevel = \"{}\"\n\
             [authz]\nmode = \"allow_all\"\n\
             [federation]\nkeep_alive_ms = 200\nlink_timeout_ms = 1500\n\
             backoff_initial_ms = 50\nbackoff_max_ms = 300\n",
            ident.display(),
            std::env::var("SLIM_CHAOS_NODE_LOG").unwrap_or_else(|_| "info".into()),
        );
        for (peer, p) in peers {
            toml.push_str(&format!(
                "[[federation.peers]]\nnode_id = \"{peer}\"\naddress = \"127.0.0.1:{p}\"\n"
            ));
        }
        let config = dir.join(format!("{id}.toml"));
        std::fs::write(&config, toml).expect("write node config");
        NodeProc {
            id: id.to_owned(),
            addr: format!("127.0.0.1:{port}").parse().expect("addr"),
            config,
            dir: dir.to_path_buf(),
            child: None,
            starts: 0,
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.join(format!("{}-{}.log", self.id, self.starts))
    }

    /// Starts the process and waits until it listens; returns when it was spawned.
    fn start(&mut self) -> Instant {
        assert!(self.child.is_none(), "{} is running", self.id);
        self.starts += 1;
        let log = self.log();
        let out = std::fs::File::create(&log).expect("create log");
        let err = out.try_clone().expect("clone log");
        let t0 = Instant::now();
        let child = Command::new(bin("slim-node"))
            .arg("--config")
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn slim-node");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("listening on") {
                return t0;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!("{} exited ({st}) before listening:\n{text}", self.id);
            }
            assert!(
                Instant::now() < deadline,
                "{} did not listen within 20 s:\n{text}",
                self.id
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, as a crash would.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Client settings for the chaos runs: the node's short idle timeout is
/// what detects its death; reconnects retry quickly.
fn chaos_client(pki: &Pki, node: SocketAddr, n: &str) -> ClientConfig {
    let mut cfg = client_config(pki, node, n);
    cfg.idle_timeout = Duration::from_millis(1500);
    cfg.keep_alive = Duration::from_millis(300);
    cfg.connect_timeout = Duration::from_secs(1);
    cfg.backoff.initial = Duration::from_millis(50);
    cfg.backoff.max = Duration::from_millis(300);
    cfg
}

async fn connect(pki: &Pki, node: SocketAddr, n: &str) -> Client {
    Client::connect(chaos_client(pki, node, n))
        .await
        .unwrap_or_else(|e| panic!("{n} connects to {node}: {e}"))
}

/// Deliveries as they happen: a count to poll and the instant of each.
#[derive(Default)]
struct Progress {
    delivered: AtomicU64,
    times: Mutex<Vec<Instant>>,
}

impl Progress {
    fn count(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    fn note(&self) {
        self.times.lock().push(Instant::now());
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }

    /// Delivery's stall around a restart spawned at `started` after a kill
    /// at `killed`: the longest gap between two deliveries from the kill
    /// until `until` (the next kill), and when delivery resumed after it, counted from `started`.
    /// (Deliveries right after the kill can be ones already on their way
    /// to the application, so "the first delivery after the restart" would
    /// say little.)
    fn stall(
        &self,
        killed: Instant,
        started: Instant,
        until: Instant,
    ) -> Option<(Duration, Duration)> {
        let times = self.times.lock();
        let i = times.partition_point(|x| *x <= killed);
        let mut prev = killed;
        let mut best: Option<(Duration, Instant)> = None;
        for &t in &times[i..] {
            if t > until {
                break;
            }
            let gap = t - prev;
            if best.is_none_or(|(g, _)| gap > g) {
                best = Some((gap, t));
            }
            prev = t;
        }
        best.map(|(gap, t)| (gap, t.saturating_duration_since(started)))
    }

    async fn wait_for(&self, n: u64, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut said = Instant::now();
        while self.count() < n {
            if said.elapsed() > Duration::from_secs(5) {
                eprintln!("{what}: waiting, {} of {n} delivered", self.count());
                said = Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "{what}: only {} of {n} delivered within 60 s",
                self.count()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// What a receiver saw.
#[derive(Debug)]
struct Received {
    seen: SeqSet,
    out_of_order: u64,
    lost: u64,
    end: String,
}

/// One restart: when the kill happened, when the new process was spawned.
struct Restart {
    node: String,
    killed: Instant,
    started: Instant,
    at_kill: u64,
}

fn report_restarts(what: &str, p: &Progress, restarts: &[Restart]) {
    for (i, r) in restarts.iter().enumerate() {
        let until = restarts
            .get(i + 1)
            .map_or(r.killed + Duration::from_secs(60), |next| next.killed);
        let stall = p.stall(r.killed, r.started, until);
        println!(
            "{what}: restart {} of {} after {} delivered: process down {:?}; {}",
            i + 1,
            r.node,
            r.at_kill,
            r.started - r.killed,
            match stall {
                Some((gap, resumed)) =>
                    format!("delivery stalled {gap:.2?}, restart -> resumed delivery {resumed:.2?}"),
                None => "delivery never resumed".into(),
            }
        );
    }
}

/// A reliable session from a client of `tx_node` to one of `rx_node`
/// carrying `n` sequence-numbered messages as fast as the window allows,
/// while `chaos` kills and restarts nodes; asserts all `n` arrived once,
/// in order.
async fn session_through<F, Fut>(
    what: &str,
    pki: &Pki,
    tx_node: SocketAddr,
    rx_node: SocketAddr,
    n: u64,
    chaos: F,
) where
    F: FnOnce(Arc<Progress>) -> Fut,
    // The restarts, and the nodes (kept running until the session is done).
    Fut: std::future::Future<Output = (Vec<Restart>, Vec<NodeProc>)>,
{
    let rx_client = connect(pki, rx_node, "acme/chaos/rx/0").await;
    let (rx_mux, _rx_raw) = SessionMux::new(rx_client);
    let mut listener = P2pListener::new(&rx_mux, P2pConfig::default()).expect("listener");
    let tx_client = connect(pki, tx_node, "acme/chaos/tx/0").await;
    let (tx_mux, _tx_raw) = SessionMux::new(tx_client);

    let progress = Arc::new(Progress::default());
    let receiver = {
        let progress = Arc::clone(&progress);
        tokio::spawn(async move {
            let mut s = listener.accept().await.expect("a session is opened to us");
            let mut r = Received {
                seen: SeqSet::new(n),
                out_of_order: 0,
                lost: 0,
                end: "receiver gone".into(),
            };
            let mut next = 0u64;
            while let Some(ev) = s.recv().await {
                match ev {
                    P2pEvent::Message { payload, .. } => {
                        let seq = payload_seq(&payload);
                        if seq != next {
                            r.out_of_order += 1;
                        }
                        next = seq + 1;
                        r.seen.insert(seq);
                        progress.note();
                    }
                    P2pEvent::Lost { seqs } => r.lost += seqs.len() as u64,
                    P2pEvent::PeerClosed { sent } => {
                        r.end = format!("peer closed after {sent}");
                        break;
                    }
                    P2pEvent::Failed(e) => {
                        r.end = format!("failed: {e}");
                        break;
                    }
                    other => r.end = format!("unexpected {other:?}"),
                }
            }
            (r, rx_mux)
        })
    };

    // The receiver's name may take a moment to reach a remote node.
    let service = name("acme/chaos/rx");
    let deadline = Instant::now() + Duration::from_secs(10);
    let session = loop {
        match P2pSession::open(&tx_mux, &service, P2pConfig::default()).await {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                eprintln!("{what}: open: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{what}: open: {e}"),
        }
    };
    let t0 = Instant::now();
    let sender = tokio::spawn(async move {
        for i in 0..n {
            session
                .send(seq_payload(i, 32))
                .await
                .unwrap_or_else(|e| panic!("send {i}: {e}"));
        }
        let closed = session.close().await;
        let stats = session.stats().await;
        (closed, stats, session, tx_mux)
    });
    let (restarts, _nodes) = chaos(Arc::clone(&progress)).await;
    let (closed, stats, _session, _tx_mux) = sender.await.expect("sender task");
    let (r, _rx_mux) = receiver.await.expect("receiver task");
    let elapsed = t0.elapsed();
    let stats = stats.expect("sender stats");
    report_restarts(what, &progress, &restarts);
    println!(
        "{what}: {n} sent, {} delivered, {} out of order, {} duplicates, {} missing, {} lost, \
         {} retransmissions, {:.1} s, {:.0} msgs/s; {}",
        r.seen.count(),
        r.out_of_order,
        r.seen.duplicates(),
        r.seen.missing(n).len(),
        r.lost,
        stats.sender.retransmitted,
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        r.end
    );
    closed.unwrap_or_else(|e| panic!("{what}: close: {e}"));
    assert_eq!(
        r.seen.missing(n),
        Vec::<u64>::new(),
        "{what}: messages missing"
    );
    assert_eq!(r.seen.duplicates(), 0, "{what}: duplicates");
    assert_eq!(r.out_of_order, 0, "{what}: out of order");
    assert_eq!(r.lost, 0, "{what}: reported lost");
    assert_eq!(r.seen.count(), n);
    assert_eq!(r.end, format!("peer closed after {n}"), "{what}");
}

/// Kills `node` and restarts it `kills` times, each once a further share of
/// the `n` messages was delivered.
async fn kill_restart(node: &mut NodeProc, p: &Progress, n: u64, kills: u64) -> Vec<Restart> {
    let mut out = Vec::new();
    for k in 1..=kills {
        p.wait_for(n * k / (kills + 1), "before a kill").await;
        let at_kill = p.count();
        let killed = Instant::now();
        node.kill9();
        let started = node.start();
        out.push(Restart {
            node: node.id.clone(),
            killed,
            started,
            at_kill,
        });
        // Delivery resumes before the next kill.
        p.wait_for(at_kill + 1, "after a restart").await;
    }
    out
}

const BOUND: Duration = Duration::from_secs(100);

async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(BOUND, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not finish within {BOUND:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reliable_session_rides_through_three_node_kills() {
    init_tracing();
    let n = env_count("SLIM_CHAOS_MESSAGES", 30_000);
    let pki = Pki::new(TD);
    let dir = workdir();
    let mut node = NodeProc::new(&pki, dir.path(), "solo", free_udp_port(), &[]);
    node.start();
    let addr = node.addr;
    bounded(
        "session through three kills",
        session_through("session/kill x3", &pki, addr, addr, n, |p| async move {
            (kill_restart(&mut node, &p, n, 3).await, vec![node])
        }),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reliable_session_rides_through_a_restart_of_the_receivers_node_across_a_link() {
    init_tracing();
    let n = env_count("SLIM_CHAOS_MESSAGES", 30_000);
    let pki = Pki::new(TD);
    let dir = workdir();
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let mut b = NodeProc::new(&pki, dir.path(), "far", pb, &[]);
    let mut a = NodeProc::new(&pki, dir.path(), "near", pa, &[("far", pb)]);
    b.start();
    a.start();
    let (aa, ba) = (a.addr, b.addr);
    bounded(
        "session across a link, far node killed",
        session_through("link/far node kill x3", &pki, aa, ba, n, |p| async move {
            (kill_restart(&mut b, &p, n, 3).await, vec![b])
        }),
    )
    .await;
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reliable_session_rides_through_a_restart_of_the_transit_node() {
    init_tracing();
    let n = env_count("SLIM_CHAOS_MESSAGES", 30_000);
    let pki = Pki::new(TD);
    let dir = workdir();
    let (pa, pt, pb) = (free_udp_port(), free_udp_port(), free_udp_port());
    // near -> transit <- far: the session's packets cross two links.
    let mut t = NodeProc::new(&pki, dir.path(), "transit", pt, &[]);
    let mut a = NodeProc::new(&pki, dir.path(), "near", pa, &[("transit", pt)]);
    let mut b = NodeProc::new(&pki, dir.path(), "far", pb, &[("transit", pt)]);
    t.start();
    a.start();
    b.start();
    let (aa, ba) = (a.addr, b.addr);
    bounded(
        "session across two links, transit node killed",
        session_through(
            "link/transit node kill x3",
            &pki,
            aa,
            ba,
            n,
            |p| async move { (kill_restart(&mut t, &p, n, 3).await, vec![t]) },
        ),
    )
    .await;
    drop((a, b));
}

/// One member's view of the channel.
#[derive(Debug)]
struct MemberSeen {
    name: String,
    seen: SeqSet,
    out_of_order: u64,
    lost: u64,
    other: Vec<String>,
}

fn collect(
    who: String,
    mut m: ChannelMember,
    n: u64,
    progress: Arc<Progress>,
) -> tokio::task::JoinHandle<MemberSeen> {
    tokio::spawn(async move {
        let mut s = MemberSeen {
            name: who,
            seen: SeqSet::new(n),
            out_of_order: 0,
            lost: 0,
            other: Vec::new(),
        };
        let mut next = 0;
        loop {
            let ev = match tokio::time::timeout(Duration::from_secs(4), m.recv()).await {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                Err(_) => {
                    // Quiet for a while: say where this member stands.
                    if s.seen.count() >= n {
                        continue;
                    }
                    let st = tokio::time::timeout(Duration::from_secs(1), m.stats()).await;
                    eprintln!("{}: quiet, {} seen; {st:?}", s.name, s.seen.count());
                    continue;
                }
            };
            match ev {
                ChannelEvent::Message { payload, .. } => {
                    let seq = payload_seq(&payload);
                    if seq != next {
                        s.out_of_order += 1;
                    }
                    next = seq + 1;
                    s.seen.insert(seq);
                    progress.note();
                }
                ChannelEvent::Lost { seqs, .. } => s.lost += seqs.len() as u64,
                ChannelEvent::ChannelClosed { .. } => break,
                ChannelEvent::MembersChanged { .. } => {}
                ChannelEvent::ModeratorUnresponsive { .. } => {}
                other => s.other.push(format!("{other:?}")),
            }
        }
        s
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_of_an_mls_channel_gets_every_message_through_a_node_restart() {
    init_tracing();
    let n = env_count("SLIM_CHAOS_CHANNEL_MESSAGES", 150);
    let dir = workdir();
    let rate = env_count("SLIM_CHAOS_CHANNEL_RATE", 10).max(1);
    const MEMBERS: usize = 3;
    let pki = Pki::new(TD);
    let mut node = NodeProc::new(&pki, dir.path(), "chan", free_udp_port(), &[]);
    node.start();
    let addr = node.addr;
    let chan = name("acme/chaos/channel");
    let config = ChannelConfig {
        mls: true,
        ..ChannelConfig::default()
    };
    let opts = |n: &str| {
        let svid = pki.identity(&format!("agent/{}", n.replace('/', "-")));
        ChannelOptions::new(
            config.clone(),
            Some(MlsIdentity::new(&svid).expect("MLS identity")),
        )
    };
    bounded("channel through a restart", async {
        let mod_name = "acme/chaos/mod/0";
        let (mod_mux, _mod_raw) = SessionMux::new(connect(&pki, addr, mod_name).await);
        let mut moderator = Channel::create(&mod_mux, &chan, opts(mod_name))
            .await
            .expect("create the channel");
        let mut muxes = Vec::new();
        let mut joined = Vec::new();
        let mut names = Vec::new();
        for i in 0..MEMBERS {
            let mn = format!("acme/chaos/member{i}/0");
            let (mux, raw) = SessionMux::new(connect(&pki, addr, &mn).await);
            let inv = Invitations::listen(&mux, 16).expect("acceptor");
            joined.push(inv.auto_accept(opts(&mn)));
            moderator.invite(&mn).await.expect("invite");
            names.push(mn);
            muxes.push((mux, raw));
        }
        let progress = Arc::new(Progress::default());
        let mut collectors = Vec::new();
        for (rx, who) in joined.iter_mut().zip(&names) {
            let m = tokio::time::timeout(Duration::from_secs(20), rx.recv())
                .await
                .expect("joined in time")
                .expect("acceptor alive")
                .expect("joined");
            collectors.push(collect(who.clone(), m, n, Arc::clone(&progress)));
        }
        let mut admitted = 0;
        while admitted < MEMBERS {
            match tokio::time::timeout(Duration::from_secs(20), moderator.recv()).await {
                Ok(Some(ChannelEvent::MemberJoined { .. })) => admitted += 1,
                Ok(Some(_)) => {}
                _ => panic!("moderator: admissions did not complete"),
            }
        }

        let t0 = Instant::now();
        let total = n * MEMBERS as u64;
        let mut restart = None;
        // A steady stream the restart interrupts half-way.
        let mut tick = tokio::time::interval(Duration::from_secs(1) / rate as u32);
        for i in 0..n {
            tick.tick().await;
            while moderator.try_recv().is_some() {}
            if i == n / 2 {
                progress.wait_for(total / 4, "before the kill").await;
                let at_kill = progress.count();
                let killed = Instant::now();
                node.kill9();
                let started = node.start();
                restart = Some(Restart {
                    node: node.id.clone(),
                    killed,
                    started,
                    at_kill,
                });
            }
            moderator
                .publish(&seq_payload(i, 32))
                .await
                .unwrap_or_else(|e| panic!("publish {i}: {e}"));
        }
        progress
            .wait_for(total, "every member, every message")
            .await;
        let elapsed = t0.elapsed();
        report_restarts("channel/kill x1", &progress, &[restart.expect("restarted")]);
        let events = moderator.close("done").await.expect("close");
        let mut unresponsive = 0;
        for e in &events {
            if matches!(e, ChannelEvent::MemberUnresponsive { .. }) {
                unresponsive += 1;
            }
        }
        for c in collectors {
            let s = c.await.expect("collector");
            println!(
                "channel/kill x1: {} saw {} of {n}, {} out of order, {} duplicates, \
                 {} missing, {} lost, other events {:?}",
                s.name,
                s.seen.count(),
                s.out_of_order,
                s.seen.duplicates(),
                s.seen.missing(n).len(),
                s.lost,
                s.other
            );
            assert_eq!(s.seen.missing(n), Vec::<u64>::new(), "messages missing");
            assert_eq!(s.seen.duplicates(), 0);
            assert_eq!(s.out_of_order, 0);
            assert_eq!(s.lost, 0);
        }
        println!(
            "channel/kill x1: {MEMBERS} members x {n} messages in {:.1} s; \
             moderator events at close: {unresponsive} unresponsive",
            elapsed.as_secs_f64()
        );
        drop(muxes);
    })
    .await;
}

/// A child process killed (and reaped) on drop, so a failing test leaks none.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `slimctl request` to `name` through `node` with the SVID in `id`; the
/// reply, or the error output.
fn slimctl_request(
    node: SocketAddr,
    id: &Path,
    name: &str,
    payload: &str,
) -> Result<String, String> {
    let out = Command::new(bin("slimctl"))
        .args([
            "request",
            name,
            payload,
            "--timeout",
            "3s",
            "--as",
            "ops/chaos/cli",
        ])
        .arg("--node")
        .arg(node.to_string())
        .arg("--identity")
        .arg(id)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run slimctl request");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `slimctl respond` keeps answering across a node restart (its SDK
/// reconnects), and `slimctl request` gets the reply on both sides of it.
#[test]
fn slimctl_request_and_respond_across_a_node_restart() {
    let pki = Pki::new(TD);
    let dir = workdir();
    let mut node = NodeProc::new(&pki, dir.path(), "rr", free_udp_port(), &[]);
    node.start();
    let ids: Vec<PathBuf> = ["echo", "ops"]
        .iter()
        .map(|who| {
            let d = dir.path().join(who);
            let id = SpiffeId::parse(&format!("spiffe://{TD}/agent/{who}")).expect("id");
            pki.ca
                .issue_to_dir(&id, Duration::from_secs(3600), &d)
                .expect("SVID");
            d
        })
        .collect();
    let log = dir.path().join("respond.log");
    let out = std::fs::File::create(&log).expect("log");
    let mut responder = Reaped(
        Command::new(bin("slimctl"))
            .args(["respond", "--count", "2", "--as", "acme/chaos/echo/0"])
            .arg("--node")
            .arg(node.addr.to_string())
            .arg("--identity")
            .arg(&ids[0])
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn slimctl respond"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("answering")
    {
        assert!(Instant::now() < deadline, "slimctl respond did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let addr = node.addr;
    let ask = |payload: &str| {
        // Until the responder is back (and its name known to the node).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match slimctl_request(addr, &ids[1], "acme/chaos/echo", payload) {
                Ok(reply) => return reply,
                Err(e) if Instant::now() < deadline => {
                    let e = e.split_whitespace().collect::<Vec<_>>().join(" ");
                    eprintln!("slimctl request (retrying): {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("slimctl request failed: {e}"),
            }
        }
    };
    assert_eq!(ask("before"), "before");
    node.kill9();
    node.start();
    assert_eq!(ask("after"), "after");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = responder.0.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            panic!("slimctl respond did not exit after 2 answers");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "slimctl respond: {status}\n{text}");
    assert!(
        text.contains(": before") && text.contains(": after"),
        "{text}"
    );
}
