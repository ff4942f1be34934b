//! Raw pub/sub across a `kill -9` of the node (issue 17, item 2): every
//! publish is either delivered or failed with an error its publisher saw.
//!
//! A real `slim-node` process serves a publisher and a subscriber. The
//! publisher sends sequence-numbered messages at a steady rate; part-way the
//! node is killed and restarted on the same port. With
//! `DisconnectPolicy::Fail` each sequence number must end up delivered, or
//! reported to the publisher (a refused `publish`, a `CONNECTION_LOST` for a
//! publish the node never confirmed, or the node's `NO_ROUTE` while the
//! subscriber had not yet re-subscribed). With `DisconnectPolicy::Buffer`
//! (the default) each must be delivered or reported `NO_ROUTE`, duplicates
//! allowed and counted.
//!
//! No timing thresholds: the clients detect the dead node through a short
//! idle timeout, and every wait polls with a generous limit.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use slim_client::{CONNECTION_LOST, Client, ClientError, DisconnectPolicy, Event};
use slim_tests::*;
use slim_wire::{ErrorCode, Mode};

const MESSAGES: u32 = 3_000;
const KILL_AT: u32 = 1_000;
/// Between publishes: slow enough that the node's queues are empty most of
/// the time, fast enough that publishes are in flight when it dies.
const GAP: Duration = Duration::from_micros(700);

struct Node {
    child: Option<Child>,
    config: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl Node {
    fn start(dir: &Path, pki: &Pki, port: u16) -> Node {
        pki.identity("node")
            .write_to_dir(&dir.join("node"))
            .expect("write the node SVID");
        let config = dir.join("node.toml");
        std::fs::write(
            &config,
            format!(
                "[node]\nid = \"kill-node\"\nlisten = \"127.0.0.1:{port}\"\n\
                 [identity]\ndir = \"{}\"\n\
                 [metrics]\nlisten = \"\"\n\
                 [log]\nlevel = \"warn\"\n\
                 [authz]\nmode = \"allow_all\"\n",
                dir.join("node").display()
            ),
        )
        .unwrap();
        let mut n = Node {
            child: None,
            config,
            log: dir.join("node.log"),
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let bin = slim_tests::netns::bin("slim-node");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&bin)
            .arg("--config")
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "node log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

fn config(
    pki: &Pki,
    node: SocketAddr,
    n: &str,
    policy: DisconnectPolicy,
) -> slim_client::ClientConfig {
    let mut cfg = client_config(pki, node, n);
    // The restarted node does not know the old connections: without a
    // stateless reset the clients notice at their idle timeout.
    cfg.idle_timeout = Duration::from_millis(1000);
    cfg.keep_alive = Duration::from_millis(200);
    cfg.on_disconnect = policy;
    cfg
}

async fn connect(cfg: slim_client::ClientConfig) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Client::connect(cfg.clone()).await {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("connect {}: {e}", cfg.name),
        }
    }
}

#[derive(Default, Debug)]
struct Outcome {
    delivered: HashMap<u32, u32>,
    refused: Vec<u32>,
    lost: Vec<u32>,
    no_route: Vec<u32>,
}

async fn run(policy: DisconnectPolicy) -> Outcome {
    init_tracing();
    let pki = Pki::new("kill.test");
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut node = Node::start(dir.path(), &pki, port);
    let topic = name("acme/kill/stream");
    let sub = connect(config(&pki, addr, "acme/kill/sub", policy)).await;
    sub.subscribe(&topic).await.unwrap();
    let publ = connect(config(&pki, addr, "acme/kill/pub", policy)).await;
    // A first message proves the route before the clock starts.
    let probe = Instant::now();
    loop {
        publ.publish(&topic, Mode::Anycast, b"probe").await.unwrap();
        if let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_millis(200), sub.next_message()).await
        {
            break;
        }
        assert!(
            probe.elapsed() < Duration::from_secs(20),
            "no route to the subscriber"
        );
    }

    let receiver = tokio::spawn(async move {
        let mut got: HashMap<u32, u32> = HashMap::new();
        // Ends once nothing arrived for 3 s after the last publish.
        while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(5), sub.recv()).await {
            if let Event::Message(d) = ev
                && let Ok(b) = <[u8; 4]>::try_from(&d.payload[..])
            {
                *got.entry(u32::from_be_bytes(b)).or_default() += 1;
            }
        }
        sub.shutdown().await;
        got
    });

    let mut out = Outcome::default();
    let mut ids: HashMap<u64, u32> = HashMap::new();
    let t0 = tokio::time::Instant::now();
    for seq in 0..MESSAGES {
        if seq == KILL_AT {
            node.kill9();
            tokio::time::sleep(Duration::from_millis(100)).await;
            node.spawn();
        }
        tokio::time::sleep_until(t0 + GAP * seq).await;
        match publ
            .publish(&topic, Mode::Anycast, &seq.to_be_bytes())
            .await
        {
            Ok(id) => {
                ids.insert(id, seq);
            }
            Err(ClientError::Disconnected { .. }) => out.refused.push(seq),
            Err(e) => panic!("publish {seq}: unexpected error {e}"),
        }
    }
    // Let the last confirmations, or the last failures, come in.
    let settle = Instant::now();
    while !matches!(
        *publ.state().borrow(),
        slim_client::ConnState::Connected { .. }
    ) {
        assert!(
            settle.elapsed() < Duration::from_secs(30),
            "the publisher never reconnected: {:?}",
            *publ.state().borrow()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    publ.ping().await.expect("a last round trip");
    let delivered = receiver.await.unwrap();
    for e in publ.take_errors(|_| true) {
        let Some(seq) = e.msg_id.and_then(|id| ids.get(&id)).copied() else {
            continue;
        };
        match e.code {
            CONNECTION_LOST => out.lost.push(seq),
            ErrorCode::NO_ROUTE => out.no_route.push(seq),
            other => panic!(
                "publish {seq}: unexpected error {}: {}",
                other.as_str(),
                e.reason
            ),
        }
    }
    out.delivered = delivered;
    publ.shutdown().await;
    drop(node);
    out
}

fn report(policy: &str, o: &Outcome) -> Vec<u32> {
    let mut neither = Vec::new();
    let mut both = 0;
    for seq in 0..MESSAGES {
        let d = o.delivered.contains_key(&seq);
        let f = o.refused.contains(&seq) || o.lost.contains(&seq) || o.no_route.contains(&seq);
        if !d && !f {
            neither.push(seq);
        }
        if d && f {
            both += 1;
        }
    }
    let dups = o.delivered.values().filter(|n| **n > 1).count();
    eprintln!(
        "{policy}: {MESSAGES} published, {} delivered ({dups} more than once), failed: {} refused \
         while disconnected, {} connection lost, {} no route; {both} both delivered and failed; \
         {} neither",
        o.delivered.len(),
        o.refused.len(),
        o.lost.len(),
        o.no_route.len(),
        neither.len()
    );
    neither
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_policy_every_publish_is_delivered_or_reported() {
    let o = tokio::time::timeout(Duration::from_secs(120), run(DisconnectPolicy::Fail))
        .await
        .expect("the test finishes within 120 s");
    let neither = report("fail", &o);
    assert!(
        neither.is_empty(),
        "publishes neither delivered nor reported to the publisher: {neither:?}"
    );
    assert!(
        !o.refused.is_empty() || !o.lost.is_empty() || !o.no_route.is_empty(),
        "the kill should have cost something that was reported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffer_policy_every_publish_is_delivered_or_reported() {
    let o = tokio::time::timeout(
        Duration::from_secs(120),
        run(DisconnectPolicy::Buffer {
            max_wait: Duration::from_secs(30),
        }),
    )
    .await
    .expect("the test finishes within 120 s");
    let neither = report("buffer", &o);
    assert!(
        o.refused.is_empty() && o.lost.is_empty(),
        "buffering fails nothing"
    );
    assert!(
        neither.is_empty(),
        "publishes neither delivered nor reported to the publisher: {neither:?}"
    );
}
