//! Client churn leaves nothing behind in a node process (issue 17, item 5).
//!
//! A real `slim-node` process (its own allocator, its own RSS) serves 10
//! rounds of 200 clients, each with its own SVID, each registering a name,
//! subscribing to 10 names and closing: 2,000 connect/subscribe/close cycles.
//! Once the node settled after round 2 and again after round 10, its tables
//! must be back to their idle size (connections, registry entries,
//! subscriptions, names, interest entries, runtime tasks), and what it holds
//! must not have grown per departed client: neither the bytes in live
//! allocations (the allocator's own count, exact) nor its resident set.
//!
//! No timing thresholds: every wait polls a condition with a generous limit.
//! A close the node missed (a CONNECTION_CLOSE is sent once, over UDP) ends
//! at the idle timeout, 5 s here instead of 30 s, within the settle wait.
//! The node runs with a 500 ms interest tombstone TTL so that the tombstones
//! of departed clients (kept 30 s by default, by design) are gone when the
//! measurements are taken instead of being counted as growth.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use slim_client::{Client, ClientConfig};
use slim_tests::*;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

const ROUNDS: usize = 10;
const CLIENTS: usize = 200;
const SUBS: usize = 10;
/// Handshakes (and closes) in flight at most, like `slim-loadtest connections`.
const CONCURRENCY: usize = 32;
/// Clients served between the two measurements.
const MEASURED: usize = (ROUNDS - 2) * CLIENTS;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral TCP port")
}

/// `name{labels}` → value, from the node's Prometheus text.
fn scrape(addr: SocketAddr) -> Option<BTreeMap<String, f64>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (_, body) = out.split_once("\r\n\r\n")?;
    Some(
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.trim().rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect(),
    )
}

fn rss_kib_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .expect("the node's VmRSS")
}

/// The node's tables once settled, and what it holds.
#[derive(Debug)]
struct Settled {
    tables: BTreeMap<&'static str, f64>,
    tasks: f64,
    allocated: Option<f64>,
    rss_kib: u64,
}

/// Gauges that must be back to these values once every client left.
const IDLE_TABLES: &[(&str, &str, f64)] = &[
    ("connections", "slim_connections_open{kind=\"client\"}", 0.0),
    (
        "connection table",
        "slim_table_entries{table=\"connections\"}",
        0.0,
    ),
    (
        "registry connections",
        "slim_table_entries{table=\"registry_connections\"}",
        0.0,
    ),
    (
        "registry owners",
        "slim_table_entries{table=\"registry_owners\"}",
        0.0,
    ),
    ("subscriptions", "slim_subscriptions", 0.0),
    ("registry names", "slim_registry_names", 0.0),
    // The node's own link set only: every tombstone expired.
    ("interest entries", "slim_interest_entries", 1.0),
];

/// Runtime tasks a quiet node may have beyond its fresh count. The fresh
/// count can be read before the node's last background tasks have started
/// (a full CI run on 2 loaded cores read 11, then 14 at rest ever after), so
/// a few are allowed; a task kept per departed client would show as hundreds.
const TASK_SLACK: f64 = 4.0;

/// Waits until every table is back to its idle size and the runtime's task
/// count is back to `tasks` (if given; connection tasks wind down a moment after
/// the tables are clean), then reads what the node holds. The
/// gauges are sampled once a second, so a condition holds only once two
/// consecutive scrapes agree.
async fn settle(metrics: SocketAddr, pid: u32, tasks: Option<f64>) -> Settled {
    settle_at(metrics, pid, tasks, IDLE_TABLES).await
}

/// [`settle`], for tables that must be back to the values in `want`.
async fn settle_at(
    metrics: SocketAddr,
    pid: u32,
    tasks: Option<f64>,
    want: &[(&'static str, &'static str, f64)],
) -> Settled {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut agreed = 0;
    loop {
        let m = tokio::task::spawn_blocking(move || scrape(metrics))
            .await
            .unwrap()
            .unwrap_or_default();
        // (A gauge not yet set, like the connection count before the first
        // client, reads 0.)
        let idle = want
            .iter()
            .all(|(_, key, want)| m.get(*key).copied().unwrap_or(0.0) == *want);
        let t = m.get("slim_runtime_tasks").copied();
        // A quiet node still has a task or two that come and go (timer
        // wake-ups of the federation actor, a metrics sample), so the count
        // at rest is the fresh count give or take TASK_SLACK; a task kept per
        // departed client would show as hundreds.
        let tasks_ok = t.is_some_and(|now| tasks.is_none_or(|want| now <= want + TASK_SLACK));
        if idle && tasks_ok {
            agreed += 1;
            if agreed >= 2 {
                // The node's allocator returns freed pages after 1 s
                // (slim-node's DIRTY_DECAY_MS) and its statistics are
                // sampled every second: let both catch up with the quiet
                // node before reading what it holds.
                tokio::time::sleep(Duration::from_millis(2500)).await;
                let m = tokio::task::spawn_blocking(move || scrape(metrics))
                    .await
                    .unwrap()
                    .unwrap_or_default();
                return Settled {
                    tables: want
                        .iter()
                        .map(|(what, key, _)| (*what, m.get(*key).copied().unwrap_or(0.0)))
                        .collect(),
                    tasks: t.expect("checked"),
                    allocated: m.get("slim_allocator_bytes{kind=\"allocated\"}").copied(),
                    rss_kib: rss_kib_of(pid),
                };
            }
        } else {
            agreed = 0;
        }
        if Instant::now() >= deadline {
            let shown: Vec<_> = want
                .iter()
                .map(|(what, key, want)| (what, m.get(*key), want))
                .collect();
            panic!(
                "the node did not settle within 30 s: tables (what, now, idle) {shown:?}; \
                 tasks {t:?}, expected {tasks:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One round: `CLIENTS` clients connect, register, subscribe to `SUBS`
/// names each and close, at most `CONCURRENCY` handshakes (and closes) at once.
async fn round(node: SocketAddr, ids: &[slim_auth::Identity], r: usize) {
    let gate = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = JoinSet::new();
    for (i, id) in ids.iter().enumerate() {
        let gate = Arc::clone(&gate);
        let id = id.clone();
        tasks.spawn(async move {
            let permit = gate.acquire_owned().await.expect("open semaphore");
            let cfg = ClientConfig::new(node, name(&format!("churn/test/client/r{r}c{i}")), id);
            let c = Client::connect(cfg)
                .await
                .unwrap_or_else(|e| panic!("round {r} client {i}: connect: {e}"));
            drop(permit);
            for k in 0..SUBS {
                c.subscribe(&name(&format!("churn/test/topic/r{r}c{i}k{k}")))
                    .await
                    .unwrap_or_else(|e| panic!("round {r} client {i}: subscribe: {e}"));
            }
            c
        });
    }
    let mut clients = Vec::with_capacity(ids.len());
    while let Some(c) = tasks.join_next().await {
        clients.push(c.expect("client task"));
    }
    assert_eq!(clients.len(), CLIENTS);
    let mut closing = JoinSet::new();
    for c in clients {
        let gate = Arc::clone(&gate);
        closing.spawn(async move {
            let _permit = gate.acquire_owned().await.expect("open semaphore");
            c.close().await;
        });
    }
    while let Some(r) = closing.join_next().await {
        r.expect("close task");
    }
}

/// The node binary: the workspace's, or `SLIM_CHURN_NODE_BIN` (to measure
/// another build, e.g. one with the platform allocator, against this test).
fn node_bin() -> (PathBuf, bool) {
    match std::env::var_os("SLIM_CHURN_NODE_BIN") {
        Some(p) => (PathBuf::from(p), true),
        None => (slim_tests::netns::bin("slim-node"), false),
    }
}

/// A `slim-node` process serving on loopback, with its metrics listener.
struct NodeProc {
    _child: KillOnDrop,
    pid: u32,
    addr: SocketAddr,
    metrics: SocketAddr,
    /// Started from `SLIM_CHURN_NODE_BIN`, not the workspace's build.
    other_build: bool,
    _dir: tempfile::TempDir,
}

/// Starts the node and waits until it serves `/metrics`.
async fn start_node_process(pki: &Pki) -> NodeProc {
    let dir = tempfile::tempdir().unwrap();
    pki.identity("node")
        .write_to_dir(&dir.path().join("node"))
        .expect("write the node SVID");
    let port = free_udp_port();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nid = \"churn-node\"\nlisten = \"127.0.0.1:{port}\"\n\
             idle_timeout_ms = 5000\nkeep_alive_ms = 1000\n\
             [identity]\ndir = \"{}\"\n\
             [metrics]\nlisten = \"{metrics}\"\n\
             [federation]\ntombstone_ttl_ms = 500\n\
             [log]\nlevel = \"warn\"\n\
             [authz]\nmode = \"allow_all\"\n",
            dir.path().join("node").display()
        ),
    )
    .unwrap();
    let (bin, other_build) = node_bin();
    let log = std::fs::File::create(dir.path().join("node.log")).unwrap();
    let child = Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        // Eight runtime workers whatever the machine: memory an allocator
        // keeps per thread (glibc's arenas) shows as it would on 8 cores.
        .env("TOKIO_WORKER_THREADS", "8")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    let child = KillOnDrop(child);
    let pid = child.0.id();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let started = Instant::now();
    while scrape(metrics).is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the node did not serve /metrics within 30 s:\n{}",
            std::fs::read_to_string(dir.path().join("node.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    NodeProc {
        _child: child,
        pid,
        addr,
        metrics,
        other_build,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn departed_clients_leave_nothing_behind() {
    let pki = Pki::new("churn.test");
    let node = start_node_process(&pki).await;
    let (pid, addr, metrics, other_build) = (node.pid, node.addr, node.metrics, node.other_build);

    // One SVID per client, reused every round (issuing is not what is measured).
    let ids: Vec<_> = (0..CLIENTS)
        .map(|i| pki.identity(&format!("churn/client-{i}")))
        .collect();
    let fresh = settle(metrics, pid, None).await;
    eprintln!("fresh node: {fresh:?}");

    let mut warm = None;
    for r in 0..ROUNDS {
        let t = Instant::now();
        round(addr, &ids, r).await;
        eprintln!(
            "round {r}: {CLIENTS} clients x {SUBS} subscriptions in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        if r == 1 {
            // The first rounds grow every table and pool to its working
            // size; growth is measured from here.
            let s = settle(metrics, pid, Some(fresh.tasks)).await;
            eprintln!("after round 2: {s:?}");
            warm = Some(s);
        }
    }
    let warm = warm.expect("measured after round 2");
    // The fresh node's task count again: no task per departed client.
    let end = settle(metrics, pid, Some(fresh.tasks)).await;
    eprintln!("after round {ROUNDS}: {end:?}");

    for (what, key, want) in IDLE_TABLES {
        assert_eq!(
            end.tables[what], *want,
            "{what} ({key}) after the last round"
        );
    }
    let rss_per_client = (end.rss_kib as f64 - warm.rss_kib as f64) * 1024.0 / MEASURED as f64;
    eprintln!(
        "RSS {} KiB fresh, {} KiB after round 2, {} KiB after round {ROUNDS}: \
         {rss_per_client:.0} B per departed client",
        fresh.rss_kib, warm.rss_kib, end.rss_kib
    );
    match (warm.allocated, end.allocated) {
        (Some(a), Some(b)) => {
            let per_client = (b - a) / MEASURED as f64;
            eprintln!(
                "live heap {a:.0} B after round 2, {b:.0} B after round {ROUNDS}: \
                 {per_client:.1} B per departed client"
            );
            // Measured on 2 cores: -107 to +285 B per client, once 816 B in a
            // full CI run (-171 KiB to +1.3 MiB over 1,600: one more doubling
            // of a table, and objects parked in the 8 workers' thread caches
            // count as allocated),
            // not a record per client but the high-water capacity of tables
            // that grow in steps and never shrink (the interest table's
            // tombstone queue and map double with the burst of withdrawals
            // one round's closes produce). What a client holds while
            // connected is tens of KiB (its QUIC connection, frame buffer,
            // outbound queue, tasks), so any of it left behind is far above
            // the bound; the tables' own entries are checked exactly above.
            assert!(
                per_client < 2048.0,
                "the node's live heap grew by {per_client:.1} B per departed client \
                 ({a:.0} B -> {b:.0} B over {MEASURED} clients)"
            );
        }
        _ => assert!(
            other_build,
            "slim-node exports no slim_allocator_bytes: its allocator is not jemalloc"
        ),
    }
    // Measured with jemalloc on 8 workers: -456 to +842 B per client (flat,
    // give or take a MiB of pages in use at either reading). The same node
    // with glibc's malloc (before issue 17; SLIM_CHURN_NODE_BIN): +2,639 B
    // per client on 8 workers, never returned (+655 to +1,029 B on 2).
    assert!(
        rss_per_client < 1536.0,
        "the node's RSS grew by {rss_per_client:.0} B per departed client \
         ({} KiB -> {} KiB over {MEASURED} clients)",
        warm.rss_kib,
        end.rss_kib
    );
}

/// Subscribers each publisher of [`idle_publishers_hold_nothing_of_departed_subscribers`]
/// reaches, then loses; and its rounds.
const FANOUT: usize = 100;
const PUB_ROUNDS: usize = 6;
/// Runtime tasks a connected client costs the node.
const TASKS_PER_CLIENT: usize = 4;

/// One round: a new publisher connects (and stays, idle, after the round);
/// `FANOUT` subscribers subscribe to the round's name; the publisher
/// publishes once, every subscriber gets the message, and they close.
async fn publish_round(
    node: SocketAddr,
    publisher: &slim_auth::Identity,
    ids: &[slim_auth::Identity],
    r: usize,
) -> Client {
    let topic = name(&format!("churn/fanout/r{r}"));
    let p = Client::connect(ClientConfig::new(
        node,
        name(&format!("churn/test/pub-r{r}")),
        publisher.clone(),
    ))
    .await
    .unwrap_or_else(|e| panic!("round {r} publisher: connect: {e}"));
    let gate = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = JoinSet::new();
    for (i, id) in ids.iter().enumerate() {
        let (gate, id, topic) = (Arc::clone(&gate), id.clone(), topic.clone());
        tasks.spawn(async move {
            let permit = gate.acquire_owned().await.expect("open semaphore");
            let cfg = ClientConfig::new(node, name(&format!("churn/test/sub-r{r}c{i}")), id);
            let c = Client::connect(cfg)
                .await
                .unwrap_or_else(|e| panic!("round {r} subscriber {i}: connect: {e}"));
            drop(permit);
            c.subscribe(&topic)
                .await
                .unwrap_or_else(|e| panic!("round {r} subscriber {i}: subscribe: {e}"));
            c
        });
    }
    let mut subs = Vec::with_capacity(ids.len());
    while let Some(c) = tasks.join_next().await {
        subs.push(c.expect("subscriber task"));
    }
    p.publish(&topic, slim_wire::Mode::Multicast, &[7u8; 1024])
        .await
        .unwrap_or_else(|e| panic!("round {r}: publish: {e}"));
    let mut closing = JoinSet::new();
    for (i, c) in subs.into_iter().enumerate() {
        let gate = Arc::clone(&gate);
        closing.spawn(async move {
            let got = tokio::time::timeout(Duration::from_secs(30), c.next_message())
                .await
                .unwrap_or_else(|_| panic!("round {r} subscriber {i}: no message within 30 s"));
            assert!(
                got.is_some(),
                "round {r} subscriber {i}: closed before the message"
            );
            let _permit = gate.acquire_owned().await.expect("open semaphore");
            c.close().await;
        });
    }
    while let Some(r) = closing.join_next().await {
        r.expect("subscriber task");
    }
    p
}

/// A publisher that has gone quiet holds nothing of the subscribers it
/// last delivered to once they have left: not their outboxes (through its
/// route memo), so not their closed QUIC connections behind them, and no
/// encode buffer of its own. Each round adds one idle publisher whose last
/// message went to `FANOUT` subscribers that then left; the node's live heap
/// must not grow by what those subscribers held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_publishers_hold_nothing_of_departed_subscribers() {
    let pki = Pki::new("churn.test");
    let node = start_node_process(&pki).await;
    let ids: Vec<_> = (0..FANOUT)
        .map(|i| pki.identity(&format!("churn/sub-{i}")))
        .collect();
    let pub_ids: Vec<_> = (0..PUB_ROUNDS)
        .map(|i| pki.identity(&format!("churn/pub-{i}")))
        .collect();
    let fresh = settle(node.metrics, node.pid, None).await;
    eprintln!("fresh node: {fresh:?}");
    let mut publishers = Vec::new();
    let mut warm = None;
    let mut end = None;
    for (r, id) in pub_ids.iter().enumerate() {
        publishers.push(publish_round(node.addr, id, &ids, r).await);
        let want = [
            (
                "connections",
                "slim_connections_open{kind=\"client\"}",
                publishers.len() as f64,
            ),
            // A client's registration routes two names (its full name and
            // its service name): the publishers' are all that is left.
            (
                "subscriptions",
                "slim_subscriptions",
                2.0 * publishers.len() as f64,
            ),
        ];
        // The departed subscribers' tasks end a moment after the tables
        // are clean; what they hold until then is not what is measured. An
        // idle publisher keeps its own: its connection task, reader, writer
        // and QUIC driver.
        let tasks = fresh.tasks + (TASKS_PER_CLIENT * publishers.len()) as f64;
        let s = settle_at(node.metrics, node.pid, Some(tasks), &want).await;
        eprintln!("after round {}: {s:?}", r + 1);
        if r == 1 {
            // Growth is measured from here (the first rounds grow the
            // node's tables and pools to their working size).
            warm = Some(s);
        } else {
            end = Some(s);
        }
    }
    let (warm, end) = (warm.expect("round 2"), end.expect("last round"));
    let departed = ((PUB_ROUNDS - 2) * FANOUT) as f64;
    match (warm.allocated, end.allocated) {
        (Some(a), Some(b)) => {
            let per_sub = (b - a) / departed;
            eprintln!(
                "live heap {a:.0} B after round 2, {b:.0} B after round {PUB_ROUNDS}: \
                 {per_sub:.1} B per departed subscriber (the idle publishers included)"
            );
            // Measured on 2 cores: -1.2 to +1.3 KiB per subscriber (the
            // live heap moves by ±0.5 MB between quiet readings: thread
            // caches, tables grown in steps), with one connected idle
            // publisher added per round. Before idle readers dropped their
            // route memo, each departed subscriber's outbox and, behind its
            // stream, its closed QUIC connection stayed: +33.6 KiB per
            // subscriber (the same test against that build's slim-node,
            // SLIM_CHURN_NODE_BIN).
            assert!(
                per_sub < 8192.0,
                "the node's live heap grew by {per_sub:.1} B per departed subscriber \
                 ({a:.0} B -> {b:.0} B over {departed} subscribers, one idle publisher per {FANOUT})"
            );
        }
        _ => assert!(
            node.other_build,
            "slim-node exports no slim_allocator_bytes: its allocator is not jemalloc"
        ),
    }
    for p in publishers {
        p.close().await;
    }
}
