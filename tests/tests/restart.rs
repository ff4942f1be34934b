//! A restart is noticed at once: the real `slim-node` (and `slim-controller`)
//! binary is `kill -9`'d and started again on the same port with the same
//! config, over and over; its clients, its peer's link and a node's
//! controller link must come back well before any idle timeout could have
//! told them. The new process answers the old connections' packets with QUIC
//! stateless resets because it keys them with the same secret (the node's
//! `reset_key_file`, or HKDF of its TLS key; the controller's file in its
//! data dir).
//!
//! Every idle timeout involved is 30 s (node configs, SDK clients, the
//! dialling node's link timeout), so a reconnect within [`BOUND`] can only
//! come from the resets. Each test prints p50/p99/max of its reconnect times
//! (`-- --nocapture`). Restarts per test: `SLIM_RESTART_ROUNDS` (default 12).
//!
//! Needs the binaries: `cargo build --bins -p slim-node -p slim-controller`
//! (or `--workspace --bins`) with the same profile as the test.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use slim_client::{Client, ClientConfig, ConnState, FLAG_NO_ROUTE_SILENT};
use slim_tests::slim_actors::{LinkState, NodeHandle, PeerSpec, TlsIdentity};
use slim_tests::slim_auth::SpiffeId;
use slim_tests::*;
use slim_wire::{Mode, Name};
use tokio::task::JoinHandle;

const TD: &str = "example.org";

/// The longest any one reconnect may take. Generous against the expected
/// few hundred milliseconds (slow CI, debug builds); far below the 30 s idle
/// timeouts, the only other way the old connections would end.
const BOUND: Duration = Duration::from_secs(5);

/// How long a freshly started binary may take to say it is listening.
const START: Duration = Duration::from_secs(20);

fn rounds() -> usize {
    std::env::var("SLIM_RESTART_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
        .max(1)
}

/// A child process with its output in a file; killed (SIGKILL) on drop, so
/// a failing test leaves nothing running.
struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(bin: &Path, config: &Path, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).expect("create log");
        let err = out.try_clone().expect("clone log");
        let child = Command::new(bin)
            .arg("--config")
            .arg(config)
            .env_remove("RUST_LOG")
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        Proc {
            child: Some(child),
            log,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// When the process printed its "listening on" line (polled every 2 ms).
    async fn ready(&mut self) -> Instant {
        let deadline = Instant::now() + START;
        loop {
            if self.log_text().contains("listening on") {
                return Instant::now();
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!("{} exited ({st}):\n{}", self.log.display(), self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "{} not listening within {START:?}:\n{}",
                self.log.display(),
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// SIGKILL, as a crash would; returns once the process is gone.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// p50/p99/max of `v` (nearest rank), in milliseconds.
fn summary(v: &[Duration]) -> String {
    let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
    format!(
        "n={} p50={:.0} ms p99={:.0} ms max={:.0} ms",
        ms.len(),
        at(0.50),
        at(0.99),
        at(1.0)
    )
}

fn issue(pki: &Pki, dir: &Path, path: &str) -> PathBuf {
    let out = dir.join(path.replace('/', "_"));
    let id = SpiffeId::parse(&format!("spiffe://{TD}/{path}")).expect("id");
    pki.ca
        .issue_to_dir(&id, Duration::from_secs(3600), &out)
        .expect("issue");
    out
}

/// A node config: allow-all, no metrics listener, the idle timeout at 30 s.
fn node_config(
    dir: &Path,
    file: &str,
    id: &str,
    listen: SocketAddr,
    identity: &Path,
    reset_key_file: Option<&Path>,
) -> PathBuf {
    let reset = reset_key_file
        .map(|p| format!("reset_key_file = {:?}\n", p.display().to_string()))
        .unwrap_or_default();
    let text = format!(
        "[node]\nid = \"{id}\"\nlisten = \"{listen}\"\nidle_timeout_ms = 30000\n{reset}\n\
         [identity]\nsource = \"files\"\ndir = {:?}\n\n\
         [authz]\nmode = \"allow_all\"\n\n[metrics]\nlisten = \"\"\n\n[log]\nlevel = \"info\"\n",
        identity.display().to_string()
    );
    let path = dir.join(file);
    std::fs::write(&path, text).expect("write config");
    path
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// An SDK client with default keep-alive and backoff, but a 30 s idle timeout.
async fn sdk_client(pki: &Pki, node: SocketAddr, n: &str) -> Client {
    let mut cfg = ClientConfig::new(node, name(n), pki.identity(&format!("agent/{n}")));
    cfg.idle_timeout = Duration::from_secs(30);
    Client::connect(cfg).await.expect("client connects")
}

/// First arrival of each epoch, per receiver.
type Seen = Arc<Mutex<Vec<HashMap<u64, Instant>>>>;

/// Publishes the current epoch to `chan` every 10 ms (silently dropped
/// while nobody is subscribed; queued while disconnected); with `quiet_once`
/// = (seen, i), only until receiver `i` has the epoch, so that nothing
/// flows between restarts.
fn publisher(
    c: Arc<Client>,
    chan: Name,
    epoch: Arc<AtomicU64>,
    quiet_once: Option<(Seen, usize)>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let e = epoch.load(Ordering::Relaxed);
            let done = quiet_once
                .as_ref()
                .is_some_and(|(seen, i)| seen.lock()[*i].contains_key(&e));
            if !done
                && c.publish_with(
                    &chan,
                    Mode::Multicast,
                    FLAG_NO_ROUTE_SILENT,
                    &e.to_be_bytes(),
                )
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

/// Records when receiver `i` first got each epoch.
fn receiver(c: Arc<Client>, i: usize, seen: Seen) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(d) = c.next_message().await {
            let Ok(b) = <[u8; 8]>::try_from(&d.payload[..]) else {
                continue;
            };
            seen.lock()[i]
                .entry(u64::from_be_bytes(b))
                .or_insert_with(Instant::now);
        }
    })
}

fn all_seen(seen: &Seen, epoch: u64) -> bool {
    seen.lock().iter().all(|m| m.contains_key(&epoch))
}

/// Waits until every receiver has `epoch`; panics with `why()` after `bound`.
async fn wait_all_seen(seen: &Seen, epoch: u64, bound: Duration, why: impl Fn() -> String) {
    let deadline = Instant::now() + bound;
    while !all_seen(seen, epoch) {
        assert!(
            Instant::now() < deadline,
            "not every receiver got epoch {epoch} within {bound:?}: {}",
            why()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn states(clients: &[Arc<Client>]) -> String {
    clients
        .iter()
        .map(|c| format!("{}: {:?}", c.name(), *c.state().borrow()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Clients of a node that is `kill -9`'d and restarted reconnect, and their
/// subscriptions carry messages again, within a few hundred milliseconds of
/// the new process listening. Then the control: a restart with another
/// reset secret goes unnoticed (no reset can be made for the old
/// connections), which shows the fast path is the resets.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_notice_a_restarted_node_at_once() {
    init_tracing();
    let node_bin = netns::bin("slim-node");
    let pki = Pki::new(TD);
    let dir = tempfile::tempdir().expect("tempdir");
    let id_dir = issue(&pki, dir.path(), "node");
    let addr = loopback(free_udp_port());
    // No reset_key_file: the secret is derived from the node's TLS key.
    let config = node_config(dir.path(), "node.toml", "restart-node", addr, &id_dir, None);
    let mut node = Proc::spawn(&node_bin, &config, dir.path().join("node.0.log"));
    node.ready().await;
    assert!(
        node.log_text().contains("derived from the TLS private key"),
        "the node says where its reset key comes from:\n{}",
        node.log_text()
    );

    // N subscribers that never publish, so nothing but their keep-alive
    // tells them the node is gone, and one publisher sending the current
    // epoch to each of their channels every 10 ms. A message of this epoch
    // reaching a subscriber needs it reconnected and resubscribed (and the
    // publisher reconnected).
    const N: usize = 6;
    let epoch = Arc::new(AtomicU64::new(0));
    let seen: Seen = Arc::new(Mutex::new(vec![HashMap::new(); N]));
    let chan = |i: usize| name(&format!("acme/restart/ch{i}"));
    let mut clients = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..N {
        let c = Arc::new(sdk_client(&pki, addr, &format!("acme/restart/sub{i}")).await);
        c.subscribe(&chan(i)).await.expect("subscribe");
        tasks.push(receiver(Arc::clone(&c), i, Arc::clone(&seen)));
        clients.push(c);
    }
    let publ = Arc::new(sdk_client(&pki, addr, "acme/restart/pub").await);
    for i in 0..N {
        tasks.push(publisher(
            Arc::clone(&publ),
            chan(i),
            Arc::clone(&epoch),
            None,
        ));
    }
    clients.push(publ);
    wait_all_seen(&seen, 0, Duration::from_secs(10), || states(&clients)).await;

    let (mut from_ready, mut from_kill, mut rounds_max, mut down) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in 1..=rounds() as u64 {
        node.kill9();
        let killed = Instant::now();
        // Only messages published after the old process died carry `r`.
        epoch.store(r, Ordering::Relaxed);
        let log = dir.path().join(format!("node.{r}.log"));
        node = Proc::spawn(&node_bin, &config, log);
        let ready = node.ready().await;
        down.push(ready - killed);
        wait_all_seen(&seen, r, BOUND, || {
            format!("restart {r}: {}\n{}", states(&clients), node.log_text())
        })
        .await;
        let got: Vec<Instant> = seen.lock().iter().map(|m| m[&r]).collect();
        from_ready.extend(got.iter().map(|t| t.saturating_duration_since(ready)));
        from_kill.extend(got.iter().map(|t| t.saturating_duration_since(killed)));
        rounds_max.push(
            got.iter()
                .max()
                .expect("clients")
                .saturating_duration_since(ready),
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!(
        "node restarts: {} x {N} idle subscribers + 1 publisher (SDK keep-alive {:?}, idle timeouts 30 s)",
        rounds(),
        ClientConfig::new(addr, name("a/b/c"), pki.identity("agent/x")).keep_alive
    );
    println!(
        "  kill -9 -> new process listening:                 {}",
        summary(&down)
    );
    println!(
        "  listening -> subscriber reconnected and receiving:     {}",
        summary(&from_ready)
    );
    println!(
        "  kill -9 -> subscriber reconnected and receiving:       {}",
        summary(&from_kill)
    );
    println!(
        "  listening -> all {N} subscribers receiving (per restart): {}",
        summary(&rounds_max)
    );

    // The control: a different secret (a fresh reset_key_file) cannot make
    // resets for the old connections, so they hang on until the idle timeout.
    let other = node_config(
        dir.path(),
        "node-other-key.toml",
        "restart-node",
        addr,
        &id_dir,
        Some(&dir.path().join("other-reset.key")),
    );
    node.kill9();
    let control = rounds() as u64 + 1;
    epoch.store(control, Ordering::Relaxed);
    node = Proc::spawn(&node_bin, &other, dir.path().join("node.control.log"));
    node.ready().await;
    assert!(
        node.log_text().contains("other-reset.key (created)"),
        "the node says it created its reset key file:\n{}",
        node.log_text()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        seen.lock().iter().all(|m| !m.contains_key(&control)),
        "with another reset secret the old connections cannot be reset"
    );
    for c in &clients {
        assert!(
            matches!(*c.state().borrow(), ConnState::Connected { .. }),
            "{}: the stale connection is still believed up: {:?}",
            c.name(),
            *c.state().borrow()
        );
    }
    for t in tasks {
        t.abort();
    }
    node.kill9();
}

/// Node A dials node B (a real process with a `reset_key_file`); B is
/// `kill -9`'d and restarted. A's link comes back and routes flow both ways
/// (a client of A to a client of B and back) within a few hundred
/// milliseconds, with A's link timeout and B's idle timeout at 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_link_comes_back_when_its_peer_restarts() {
    init_tracing();
    let node_bin = netns::bin("slim-node");
    let pki = Pki::new(TD);
    let dir = tempfile::tempdir().expect("tempdir");
    let b_id = issue(&pki, dir.path(), "node-b");
    let b_addr = loopback(free_udp_port());
    let key = dir.path().join("b-reset.key");
    let config = node_config(dir.path(), "b.toml", "restart-b", b_addr, &b_id, Some(&key));
    let mut b = Proc::spawn(&node_bin, &config, dir.path().join("b.0.log"));
    b.ready().await;
    assert!(
        b.log_text().contains("b-reset.key (created)"),
        "{}",
        b.log_text()
    );

    // A: in process, default federation timings except the link timeout.
    let a = start_node(&pki, |c| {
        c.node_id = "restart-a".into();
        c.idle_timeout = Duration::from_secs(30);
        c.federation.link_timeout = Duration::from_secs(30);
        c.federation.peers = vec![PeerSpec {
            node_id: "restart-b".into(),
            addr: b_addr.to_string(),
            server_name: "slim-node".into(),
            expect_spiffe_id: None,
        }];
    })
    .await;
    let a_addr = a.local_addr();
    let link_up_since = |a: &NodeHandle| {
        a.links()
            .into_iter()
            .find(|l| l.peer_node_id == "restart-b" && l.state == LinkState::Up)
            .and_then(|l| l.up_since)
    };

    // Receiver 0 (on B) gets what A's client publishes; receiver 1 (on A)
    // what B's client publishes: both directions over the link.
    let (ab, ba) = (name("acme/restart/ab"), name("acme/restart/ba"));
    let on_a = Arc::new(sdk_client(&pki, a_addr, "acme/restart/on-a").await);
    let on_b = Arc::new(sdk_client(&pki, b_addr, "acme/restart/on-b").await);
    on_b.subscribe(&ab).await.expect("subscribe");
    on_a.subscribe(&ba).await.expect("subscribe");
    let epoch = Arc::new(AtomicU64::new(0));
    let seen: Seen = Arc::new(Mutex::new(vec![HashMap::new(); 2]));
    let tasks = [
        receiver(Arc::clone(&on_b), 0, Arc::clone(&seen)),
        receiver(Arc::clone(&on_a), 1, Arc::clone(&seen)),
        publisher(
            Arc::clone(&on_a),
            ab,
            Arc::clone(&epoch),
            Some((Arc::clone(&seen), 0)),
        ),
        publisher(
            Arc::clone(&on_b),
            ba,
            Arc::clone(&epoch),
            Some((Arc::clone(&seen), 1)),
        ),
    ];
    wait_all_seen(&seen, 0, Duration::from_secs(15), || {
        format!("{:?}\n{}", a.links(), b.log_text())
    })
    .await;

    let (mut link_back, mut flowing) = (Vec::new(), Vec::new());
    for r in 1..=rounds() as u64 {
        b.kill9();
        let killed_at = SystemTime::now();
        b = Proc::spawn(&node_bin, &config, dir.path().join(format!("b.{r}.log")));
        let ready = b.ready().await;
        let deadline = ready + BOUND;
        let mut link_at = None;
        loop {
            // Nothing is published until A's link is back: the link is idle,
            // so only its pings (and QUIC keep-alives) can draw the resets.
            if link_at.is_none() && link_up_since(&a).is_some_and(|t| t > killed_at) {
                link_at = Some(Instant::now());
                epoch.store(r, Ordering::Relaxed);
            }
            if link_at.is_some() && all_seen(&seen, r) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "restart {r}: link or routes not back within {BOUND:?}: links {:?}, seen {:?}\n{}",
                a.links(),
                seen.lock()
                    .iter()
                    .map(|m| m.contains_key(&r))
                    .collect::<Vec<_>>(),
                b.log_text()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        link_back.push(link_at.expect("set").saturating_duration_since(ready));
        let last = seen.lock().iter().map(|m| m[&r]).max().expect("two");
        flowing.push(last.saturating_duration_since(ready));
        // Up for over a second: the next loss counts as one of a working
        // link, so the redial starts from the initial backoff again.
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    println!(
        "peer restarts: {} (link keep-alive {:?}, link timeout and idle timeouts 30 s)",
        rounds(),
        slim_tests::slim_actors::FederationConfig::default().keep_alive
    );
    println!(
        "  B listening -> A's (idle) link up again:                  {}",
        summary(&link_back)
    );
    println!(
        "  B listening -> routes flowing both ways (B's clients idle): {}",
        summary(&flowing)
    );
    for t in tasks {
        t.abort();
    }
    b.kill9();
    a.shutdown(Duration::from_secs(1)).await;
}

/// A node's controller link: the controller (a real process, its reset key
/// file in its data dir by default) is `kill -9`'d and restarted; the node
/// registers with the new process within a few hundred milliseconds. The
/// controller connection's idle timeout is 5 s, so the bound here is 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_registers_again_with_a_restarted_controller_at_once() {
    init_tracing();
    let ctl_bin = netns::bin("slim-controller");
    let pki = Pki::new(TD);
    let dir = tempfile::tempdir().expect("tempdir");
    let ctl_id = issue(&pki, dir.path(), "controller");
    let ctl_addr = loopback(free_udp_port());
    let data = dir.path().join("ctl-data");
    let config = dir.path().join("controller.toml");
    std::fs::write(
        &config,
        format!(
            "[controller]\nlisten = \"{ctl_addr}\"\ndata_dir = {:?}\n\n\
             [identity]\nsource = \"files\"\ndir = {:?}\n\n\
             [authz]\nnodes = [\"spiffe://{TD}/node\"]\n\n[metrics]\nlisten = \"\"\n",
            data.display().to_string(),
            ctl_id.display().to_string()
        ),
    )
    .expect("write config");
    let mut ctl = Proc::spawn(&ctl_bin, &config, dir.path().join("ctl.0.log"));
    ctl.ready().await;
    assert!(
        ctl.log_text().contains("quic-reset.key (created)"),
        "{}",
        ctl.log_text()
    );

    let node = Arc::new(start_node(&pki, |c| c.node_id = "restart-n".into()).await);
    let link = slim_node::controller::spawn(
        &node,
        TlsIdentity::Static(pki.identity("node")),
        slim_node::controller::ControllerLinkConfig::new(ctl_addr.to_string()),
    );
    let bound = Duration::from_secs(3);
    let registered = |n: u64, bound: Duration, why: String| {
        let link = &link;
        async move {
            let deadline = Instant::now() + bound;
            while link.registrations() < n {
                assert!(
                    Instant::now() < deadline,
                    "registration {n} not within {bound:?}: {why}"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Instant::now()
        }
    };
    registered(1, Duration::from_secs(15), ctl.log_text()).await;

    let mut back = Vec::new();
    for r in 1..=rounds() as u64 {
        ctl.kill9();
        ctl = Proc::spawn(&ctl_bin, &config, dir.path().join(format!("ctl.{r}.log")));
        let ready = ctl.ready().await;
        let at = registered(r + 1, bound, format!("restart {r}")).await;
        back.push(at.saturating_duration_since(ready));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!(
        "controller restarts: {} (controller link keep-alive 500 ms)",
        rounds()
    );
    println!(
        "  controller listening -> node registered again: {}",
        summary(&back)
    );
    link.stop().await;
    ctl.kill9();
    if let Some(node) = Arc::into_inner(node) {
        node.shutdown(Duration::from_secs(1)).await;
    }
}
