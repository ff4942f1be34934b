//! Federation on loopback: peer links between in-process nodes, interest
//! propagation, exactly-once multicast across a mesh, anycast local-first,
//! multi-hop, link flaps and node restarts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use slim_actors::{HookVerdict, LinkDirection, LinkState, NodeEvent, NodeHandle};
use slim_client::Client;
use slim_tests::*;
use slim_wire::{ErrorCode, Frame, LINK_PROTOCOL_VERSION, Mode, PeerHello};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

const T: Duration = Duration::from_secs(20);

/// Reads `n` sequence-numbered messages (or until `T` passes without one)
/// on a task of its own, so that publishers never wait for readers.
fn collect(c: Client, n: u64) -> JoinHandle<(Client, SeqSet)> {
    tokio::spawn(async move {
        let mut seen = SeqSet::new(n);
        while seen.count() < n {
            match tokio::time::timeout(T, c.next_message()).await {
                Ok(Some(d)) => {
                    seen.insert(payload_seq(&d.payload));
                }
                _ => break,
            }
        }
        (c, seen)
    })
}

async fn publish_seq(p: &Client, chan: &slim_wire::Name, mode: Mode, range: std::ops::Range<u64>) {
    for i in range {
        p.publish(chan, mode, &seq_payload(i, 16)).await.unwrap();
    }
}

async fn wait_route(node: &NodeHandle, name: &str, origin: &str) {
    assert_eventually(
        T,
        &format!("{} routes {name} to {origin}", node.node_id()),
        || async { routes_to(node, name, origin) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_on_one_node_draws_publishes_from_another_both_ways() {
    init_tracing();
    let pki = Pki::new("example.org");
    let b = start_peer_node(&pki, "b", vec![], |_| {}).await;
    let mut events = b.subscribe_events();
    let a = start_peer_node(&pki, "a", vec![peer_spec(&b)], |_| {}).await;
    // The hook on the receiving node sees what arrives over the link.
    let seen_at_b = Arc::new(AtomicU64::new(0));
    let s = Arc::clone(&seen_at_b);
    b.set_route_hook(Some(Arc::new(move |f: &slim_actors::RoutedFrame<'_>| {
        if f.name == "acme/monitoring/security-incident" {
            s.fetch_add(1, Ordering::Relaxed);
        }
        HookVerdict::Forward
    })));

    let chan = name("acme/monitoring/security-incident");
    let sub_a = client(&pki, a.local_addr(), "acme/cluster-a/agent").await;
    let pub_b = client(&pki, b.local_addr(), "acme/cluster-b/agent").await;
    sub_a.subscribe(&chan).await.unwrap();
    // No configuration anywhere names the channel: interest alone routes it.
    wait_route(&b, chan.as_str(), "a").await;
    publish_seq(&pub_b, &chan, Mode::Multicast, 0..100).await;
    for i in 0..100 {
        let d = next_message(&sub_a, T).await;
        assert_eq!(payload_seq(&d.payload), i, "in order over one link");
        assert_eq!(&d.from, pub_b.name(), "original sender's name");
        assert_eq!(
            d.from_identity.as_deref(),
            Some("spiffe://example.org/agent/acme-cluster-b-agent"),
            "identity authenticated by the first node"
        );
    }

    // And the other way, over the same (dialled-by-a) link.
    let sub_b = client(&pki, b.local_addr(), "acme/cluster-b/listener").await;
    sub_b.subscribe(&chan).await.unwrap();
    wait_route(&a, chan.as_str(), "b").await;
    let pub_a = client(&pki, a.local_addr(), "acme/cluster-a/publisher").await;
    publish_seq(&pub_a, &chan, Mode::Multicast, 0..50).await;
    for i in 0..50 {
        let d = next_message(&sub_b, T).await;
        assert_eq!(payload_seq(&d.payload), i);
        assert_eq!(&d.from, pub_a.name());
        // The local subscriber on a gets them too.
        assert_eq!(payload_seq(&next_message(&sub_a, T).await.payload), i);
    }
    assert!(
        seen_at_b.load(Ordering::Relaxed) >= 100,
        "hook saw forwarded publishes"
    );

    // Both ends list one link, up, with traffic counted.
    let la = a.links();
    let lb = b.links();
    assert_eq!(la.len(), 1, "{la:?}");
    assert_eq!(lb.len(), 1, "{lb:?}");
    assert_eq!(
        (la[0].direction, la[0].state),
        (LinkDirection::Dialled, LinkState::Up)
    );
    assert_eq!(
        (lb[0].direction, lb[0].state),
        (LinkDirection::Accepted, LinkState::Up)
    );
    assert_eq!(lb[0].peer_node_id, "a");
    assert_eq!(
        lb[0].peer_spiffe_id.as_deref(),
        Some("spiffe://example.org/node")
    );
    assert!(
        la[0].frames_out >= 50 && lb[0].frames_out >= 100,
        "{la:?} {lb:?}"
    );
    assert_eq!(la[0].drops + lb[0].drops, 0);

    // b's event stream: the link came up and a subscription was made there.
    let mut saw_link = false;
    let mut saw_sub = false;
    while let Ok(e) = events.try_recv() {
        match e {
            NodeEvent::LinkUp { peer_node_id, .. } => saw_link |= peer_node_id == "a",
            NodeEvent::Subscribed {
                name, spiffe_id, ..
            } => {
                saw_sub |= name == chan.as_str()
                    && spiffe_id.as_deref()
                        == Some("spiffe://example.org/agent/acme-cluster-b-listener")
            }
            _ => {}
        }
    }
    assert!(saw_link && saw_sub);
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

/// Three nodes, every node dialling both others (so each pair starts with two
/// links and keeps one), subscribers on every node: 10,000 multicast messages
/// reach each subscriber exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triangle_with_links_both_ways_delivers_each_multicast_exactly_once() {
    init_tracing();
    let pki = Pki::new("example.org");
    let ports: Vec<u16> = (0..3).map(|_| free_udp_port()).collect();
    let ids = ["a", "b", "c"];
    let spec = |i: usize| slim_actors::PeerSpec {
        node_id: ids[i].into(),
        addr: SocketAddr::from(([127, 0, 0, 1], ports[i])).to_string(),
        server_name: "slim-node".into(),
        expect_spiffe_id: None,
    };
    let mut nodes = Vec::new();
    for i in 0..3 {
        let peers = (0..3).filter(|j| *j != i).map(spec).collect();
        let port = ports[i];
        nodes.push(
            start_peer_node(&pki, ids[i], peers, |c| {
                c.listen = SocketAddr::from(([127, 0, 0, 1], port));
            })
            .await,
        );
    }
    let chan = name("acme/mesh/fanout");
    let mut readers = Vec::new();
    const N: u64 = 10_000;
    for (i, n) in nodes.iter().enumerate() {
        for k in 0..2 {
            let c = client(
                &pki,
                n.local_addr(),
                &format!("acme/mesh/sub-{}-{k}", ids[i]),
            )
            .await;
            c.subscribe(&chan).await.unwrap();
            readers.push(collect(c, N));
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        for (j, other) in ids.iter().enumerate() {
            if i != j {
                wait_route(n, chan.as_str(), other).await;
            }
        }
    }
    assert_eventually(T, "one link per pair, all up, none in progress", || async {
        nodes
            .iter()
            .all(|n| links_up(n) == 2 && n.links().iter().all(|l| l.state != LinkState::Connecting))
    })
    .await;
    let publ = client(&pki, nodes[1].local_addr(), "acme/mesh/pub").await;
    publish_seq(&publ, &chan, Mode::Multicast, 0..N).await;
    for r in readers {
        let (c, seen) = r.await.unwrap();
        assert_eq!(seen.duplicates(), 0, "{}: duplicates", c.name());
        assert_eq!(seen.missing(N), Vec::<u64>::new(), "{}: missing", c.name());
        assert_no_message(&c, Duration::from_millis(100)).await;
    }
    for n in nodes {
        let drops: u64 = n.links().iter().map(|l| l.drops).sum();
        assert_eq!(drops, 0, "{}: link drops", n.node_id());
        n.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anycast_prefers_local_subscribers_then_remote() {
    init_tracing();
    let pki = Pki::new("example.org");
    let b = start_peer_node(&pki, "b", vec![], |_| {}).await;
    let a = start_peer_node(&pki, "a", vec![peer_spec(&b)], |_| {}).await;
    let service = name("acme/work/worker");
    let w1 = client(&pki, a.local_addr(), "acme/work/worker/1").await;
    let w2 = client(&pki, b.local_addr(), "acme/work/worker/2").await;
    wait_route(&a, service.as_str(), "b").await;
    wait_route(&b, service.as_str(), "a").await;
    let pa = client(&pki, a.local_addr(), "acme/work/pub-a").await;
    let pb = client(&pki, b.local_addr(), "acme/work/pub-b").await;
    publish_seq(&pa, &service, Mode::Anycast, 0..50).await;
    publish_seq(&pb, &service, Mode::Anycast, 100..150).await;
    for i in 0..50 {
        assert_eq!(
            payload_seq(&next_message(&w1, T).await.payload),
            i,
            "a's publishes stay on a"
        );
        assert_eq!(
            payload_seq(&next_message(&w2, T).await.payload),
            100 + i,
            "b's stay on b"
        );
    }
    assert_no_message(&w1, Duration::from_millis(100)).await;
    assert_no_message(&w2, Duration::from_millis(100)).await;
    // With no local instance left, a's anycasts go to b's, each exactly once.
    w1.close().await;
    assert_eventually(T, "a has no local worker", || async {
        a.routes()
            .iter()
            .any(|r| r.name == service.as_str() && r.local_subscribers == 0)
    })
    .await;
    publish_seq(&pa, &service, Mode::Anycast, 200..300).await;
    let mut seen = SeqSet::new(300);
    for _ in 200..300 {
        assert!(seen.insert(payload_seq(&next_message(&w2, T).await.payload)));
    }
    assert_eq!(seen.count(), 100);
    assert_no_message(&w2, Duration::from_millis(100)).await;
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

/// Spokes dial a hub (outbound only); subscribers on all three; publishers on
/// both spokes. Every message reaches every subscriber once, and a unicast
/// crosses two hops to a named instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoke_hub_spoke_is_loop_free_and_exactly_once() {
    init_tracing();
    let pki = Pki::new("example.org");
    let hub = start_peer_node(&pki, "hub", vec![], |_| {}).await;
    let s1 = start_peer_node(&pki, "spoke1", vec![peer_spec(&hub)], |_| {}).await;
    let s2 = start_peer_node(&pki, "spoke2", vec![peer_spec(&hub)], |_| {}).await;
    let chan = name("acme/hub/events");
    const N: u64 = 2_000;
    let mut readers = Vec::new();
    for (n, tag) in [(&s1, "s1"), (&hub, "hub"), (&s2, "s2")] {
        let c = client(&pki, n.local_addr(), &format!("acme/hub/sub-{tag}")).await;
        c.subscribe(&chan).await.unwrap();
        readers.push(collect(c, 2 * N));
    }
    wait_route(&s1, chan.as_str(), "spoke2").await;
    wait_route(&s2, chan.as_str(), "spoke1").await;
    wait_route(&s1, chan.as_str(), "hub").await;
    // spoke1 reaches spoke2 through the hub: no direct link exists.
    assert!(s1.links().iter().all(|l| l.peer_node_id == "hub"));
    let p1 = client(&pki, s1.local_addr(), "acme/hub/pub1").await;
    let p2 = client(&pki, s2.local_addr(), "acme/hub/pub2").await;
    let (r1, r2) = tokio::join!(
        publish_seq(&p1, &chan, Mode::Multicast, 0..N),
        publish_seq(&p2, &chan, Mode::Multicast, N..2 * N),
    );
    let _ = (r1, r2);
    for r in readers {
        let (c, seen) = r.await.unwrap();
        assert_eq!(seen.duplicates(), 0, "{}", c.name());
        assert_eq!(seen.missing(2 * N), Vec::<u64>::new(), "{}", c.name());
        assert_no_message(&c, Duration::from_millis(100)).await;
    }
    // Unicast to an instance two hops away.
    let target = client(&pki, s2.local_addr(), "acme/hub/target/7").await;
    wait_route(&s1, "acme/hub/target/7", "spoke2").await;
    p1.publish(target.name(), Mode::Unicast, &seq_payload(42, 16))
        .await
        .unwrap();
    let d = next_message(&target, T).await;
    assert_eq!(payload_seq(&d.payload), 42);
    assert_eq!(&d.from, p1.name());
    for n in [s1, s2, hub] {
        n.shutdown(Duration::from_secs(1)).await;
    }
}

/// A loopback UDP relay whose path can be cut, to make a link fail the way a
/// network does (packets vanish; nobody closes anything).
struct Relay {
    addr: SocketAddr,
    blocked: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        back.connect(target).await.unwrap();
        let addr = front.local_addr().unwrap();
        let blocked = Arc::new(AtomicBool::new(false));
        let b = Arc::clone(&blocked);
        let task = tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let (mut fbuf, mut bbuf) = (vec![0u8; 65536], vec![0u8; 65536]);
            loop {
                tokio::select! {
                    r = front.recv_from(&mut fbuf) => {
                        let Ok((n, from)) = r else { return };
                        client = Some(from);
                        if !b.load(Ordering::Relaxed) {
                            let _ = back.send(&fbuf[..n]).await;
                        }
                    }
                    r = back.recv(&mut bbuf) => {
                        let Ok(n) = r else { continue };
                        if let (false, Some(c)) = (b.load(Ordering::Relaxed), client) {
                            let _ = front.send_to(&bbuf[..n], c).await;
                        }
                    }
                }
            }
        });
        Relay {
            addr,
            blocked,
            task,
        }
    }

    fn block(&self, on: bool) {
        self.blocked.store(on, Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_flap_is_detected_and_the_link_reconverges() {
    init_tracing();
    let pki = Pki::new("example.org");
    let b = start_peer_node(&pki, "b", vec![], |_| {}).await;
    let relay = Relay::start(b.local_addr()).await;
    let mut spec = peer_spec(&b);
    spec.addr = relay.addr.to_string();
    let a = start_peer_node(&pki, "a", vec![spec], |_| {}).await;
    let chan = name("acme/flap/chan");
    let sub = client(&pki, b.local_addr(), "acme/flap/sub").await;
    sub.subscribe(&chan).await.unwrap();
    wait_route(&a, chan.as_str(), "b").await;
    let publ = client(&pki, a.local_addr(), "acme/flap/pub").await;
    publish_seq(&publ, &chan, Mode::Multicast, 0..100).await;
    for i in 0..100 {
        assert_eq!(payload_seq(&next_message(&sub, T).await.payload), i);
    }

    relay.block(true);
    // Both ends notice through their liveness check and drop the routes.
    assert_eventually(T, "both ends see the link down", || async {
        links_up(&a) == 0 && links_up(&b) == 0 && !routes_to(&a, chan.as_str(), "b")
    })
    .await;
    relay.block(false);
    assert_eventually(T, "the link is back and interest resynced", || async {
        links_up(&a) == 1 && routes_to(&a, chan.as_str(), "b")
    })
    .await;
    publish_seq(&publ, &chan, Mode::Multicast, 100..200).await;
    for i in 100..200 {
        assert_eq!(payload_seq(&next_message(&sub, T).await.payload), i);
    }
    assert_no_message(&sub, Duration::from_millis(100)).await;
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_relinks_and_routes_reconverge() {
    init_tracing();
    let pki = Pki::new("example.org");
    let b = start_peer_node(&pki, "b", vec![], |_| {}).await;
    let b_addr = b.local_addr();
    let a = start_peer_node(&pki, "a", vec![peer_spec(&b)], |_| {}).await;
    let chan = name("acme/restart/chan");
    let sub_a = client(&pki, a.local_addr(), "acme/restart/sub-a").await;
    sub_a.subscribe(&chan).await.unwrap();
    wait_route(&b, chan.as_str(), "a").await;

    b.shutdown(Duration::from_secs(1)).await;
    assert_eventually(T, "a sees b gone", || async { links_up(&a) == 0 }).await;
    let b = start_peer_node(&pki, "b", vec![], |c| c.listen = b_addr).await;
    // a redials on its own; the new b learns a's interest from the resync.
    wait_route(&b, chan.as_str(), "a").await;
    let sub_b = client(&pki, b.local_addr(), "acme/restart/sub-b").await;
    sub_b.subscribe(&chan).await.unwrap();
    wait_route(&a, chan.as_str(), "b").await;
    let pub_b = client(&pki, b.local_addr(), "acme/restart/pub-b").await;
    publish_seq(&pub_b, &chan, Mode::Multicast, 0..100).await;
    for i in 0..100 {
        assert_eq!(payload_seq(&next_message(&sub_a, T).await.payload), i);
        assert_eq!(payload_seq(&next_message(&sub_b, T).await.payload), i);
    }
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_link_failure_and_removed_peer() {
    init_tracing();
    let pki = Pki::new("example.org");
    let b = start_peer_node(&pki, "b", vec![], |_| {}).await;
    let a = start_peer_node(&pki, "a", vec![], |_| {}).await;
    // Dynamic peers (what the controller does).
    a.set_dial_peers(vec![peer_spec(&b)]);
    let chan = name("acme/dyn/chan");
    let sub = client(&pki, b.local_addr(), "acme/dyn/sub").await;
    sub.subscribe(&chan).await.unwrap();
    wait_route(&a, chan.as_str(), "b").await;
    let first_up = a.links()[0].up_since.expect("up");
    assert_eq!(a.inject_link_failure("b"), 1);
    // Redialled (a new session), resynced.
    assert_eventually(T, "relinked", || async {
        a.links()
            .iter()
            .any(|l| l.state == LinkState::Up && l.up_since.is_some_and(|t| t > first_up))
            && routes_to(&a, chan.as_str(), "b")
    })
    .await;
    // Routes settle right after the link: probe until one gets through.
    let publ = client(&pki, a.local_addr(), "acme/dyn/pub").await;
    assert_eventually(T, "a probe crosses the new link", || async {
        publ.publish(&chan, Mode::Multicast, &seq_payload(1, 16))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_millis(200), sub.next_message())
            .await
            .is_ok_and(|d| d.is_some_and(|d| payload_seq(&d.payload) == 1))
    })
    .await;
    // Removing the peer closes the link and withdraws its routes.
    a.set_dial_peers(vec![]);
    assert_eventually(T, "link removed", || async {
        a.links().is_empty() && b.links().is_empty() && !routes_to(&a, chan.as_str(), "b")
    })
    .await;
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

const PEER_POLICY: &str = r#"
[[rule]]
spiffe_id = "spiffe://example.org/node"
peer = true

[[rule]]
spiffe_id = "spiffe://example.org/agent/**"
register = ["acme/**"]
publish = ["acme/**"]
subscribe = ["acme/**"]
"#;

/// Sends a peer hello on a raw connection and returns the node's answer.
async fn raw_peer_hello(node: SocketAddr, identity: &slim_auth::Identity, id: &str) -> Frame {
    raw_peer_hello_v(node, identity, id, LINK_PROTOCOL_VERSION).await
}

async fn raw_peer_hello_v(
    node: SocketAddr,
    identity: &slim_auth::Identity,
    id: &str,
    version: u16,
) -> Frame {
    let mut raw = RawConn::connect(node, identity).await;
    let f = Frame::PeerHello(PeerHello {
        version,
        node_id: id.into(),
    });
    let bytes = slim_wire::codec::encode_to_vec(&f, &slim_wire::Limits::default()).unwrap();
    raw.send.write_all(&bytes).await.unwrap();
    let mut buf = bytes::BytesMut::new();
    loop {
        if let Some(f) = slim_wire::decode(&mut buf, &slim_wire::Limits::default()).unwrap() {
            return f;
        }
        let chunk = raw.recv.read_chunk(65536, true).await.unwrap().unwrap();
        buf.extend_from_slice(&chunk.bytes);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_identities_granted_peer_may_open_a_link() {
    init_tracing();
    let pki = Pki::new("example.org");
    let policy = slim_auth::policy::Policy::from_toml(PEER_POLICY).unwrap();
    let p = policy.clone();
    let b = start_peer_node(&pki, "b", vec![], move |c| c.policy = p).await;
    // An agent identity (no `peer = true`) is refused as a peer.
    let agent = pki.identity("agent/acme-x");
    match raw_peer_hello(b.local_addr(), &agent, "mallory").await {
        Frame::Reject(r) => assert_eq!(r.code, ErrorCode::UNAUTHORIZED, "{r:?}"),
        other => panic!("expected a reject, got {other:?}"),
    }
    // A node identity may; a bad node id is refused even then.
    let node_id = pki.identity("node");
    match raw_peer_hello(b.local_addr(), &node_id, "bad id!").await {
        Frame::Reject(r) => assert_eq!(r.code, ErrorCode::PROTOCOL, "{r:?}"),
        other => panic!("expected a reject, got {other:?}"),
    }
    // A node of the previous link protocol (path-vector interest) is told
    // why it cannot link.
    match raw_peer_hello_v(b.local_addr(), &node_id, "old", LINK_PROTOCOL_VERSION - 1).await {
        Frame::Reject(r) => {
            assert_eq!(r.code, ErrorCode::VERSION, "{r:?}");
            assert!(r.reason.contains("same link protocol"), "{}", r.reason);
        }
        other => panic!("expected a reject, got {other:?}"),
    }
    assert!(b.links().is_empty());
    // A real node with the node identity links up under the same policy.
    let a = start_peer_node(&pki, "a", vec![peer_spec(&b)], move |c| c.policy = policy).await;
    assert_eventually(T, "a and b linked", || async {
        links_up(&a) == 1 && links_up(&b) == 1
    })
    .await;
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_the_wrong_node_id_never_comes_up() {
    init_tracing();
    let pki = Pki::new("example.org");
    let b = start_peer_node(&pki, "b", vec![], |_| {}).await;
    let mut spec = peer_spec(&b);
    spec.node_id = "not-b".into();
    let a = start_peer_node(&pki, "a", vec![spec], |_| {}).await;
    // The dial fails on the node id check and backs off; it never reports up.
    assert_eventually(T, "a backs off", || async {
        a.links()
            .first()
            .is_some_and(|l| l.state == LinkState::Backoff)
    })
    .await;
    assert_eq!(links_up(&a), 0);
    assert!(a.routes().is_empty());
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

/// A peer link that cannot drain (its path is cut, so QUIC's send window
/// fills) makes the publisher wait for up to the link's write deadline, then
/// drops what its bounded queue cannot hold and counts it; local delivery is
/// slowed by at most that deadline and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_link_is_isolated_and_its_drops_counted() {
    init_tracing();
    let pki = Pki::new("example.org");
    // Links outlive the cut path here (no pings get through either), so it
    // is the write deadline, not the link timeout, that isolates the link.
    let patient =
        |c: &mut slim_actors::NodeConfig| c.federation.link_timeout = Duration::from_secs(120);
    let a = start_peer_node(&pki, "a", vec![], |c| {
        patient(c);
        c.federation.link_queue.max_frames = 64;
        c.federation.link_queue.max_bytes = 256 << 10;
        c.federation.link_queue.policy = slim_actors::SlowConsumerPolicy::wait(
            Duration::from_millis(300),
            slim_actors::SlowAction::Drop,
        );
        c.queue.max_bytes = 64 << 20;
    })
    .await;
    let relay = Relay::start(a.local_addr()).await;
    let mut spec = peer_spec(&a);
    spec.addr = relay.addr.to_string();
    // b dials a, so a sends on the link under its server-side send window.
    let b = start_peer_node(&pki, "b", vec![spec], patient).await;
    let chan = name("acme/stall/chan");
    let far = client(&pki, b.local_addr(), "acme/stall/far").await;
    far.subscribe(&chan).await.unwrap();
    let near = client(&pki, a.local_addr(), "acme/stall/near").await;
    near.subscribe(&chan).await.unwrap();
    wait_route(&a, chan.as_str(), "b").await;
    const N: u64 = 1000;
    let reader = collect(near, N);
    relay.block(true);
    let publ = client(&pki, a.local_addr(), "acme/stall/pub").await;
    for i in 0..N {
        publ.publish(&chan, Mode::Multicast, &seq_payload(i, 8 << 10))
            .await
            .unwrap();
    }
    let (near, seen) = reader.await.unwrap();
    assert_eq!(
        seen.missing(N),
        Vec::<u64>::new(),
        "local delivery unaffected"
    );
    assert_eq!(seen.duplicates(), 0);
    assert_eventually(T, "drops counted on the stalled link", || async {
        a.links()
            .iter()
            .any(|l| l.peer_node_id == "b" && l.drops > 0)
    })
    .await;
    assert_eq!(a.connections().iter().map(|c| c.dropped).sum::<u64>(), 0);
    drop(near);
    relay.block(false);
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

/// Hundreds of subscriptions cross in batched announcements, and all of them
/// come back after a link failure (full resync).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_subscriptions_propagate_and_resync_after_a_link_failure() {
    init_tracing();
    let pki = Pki::new("example.org");
    let b = start_peer_node(&pki, "b", vec![], |_| {}).await;
    let a = start_peer_node(&pki, "a", vec![peer_spec(&b)], |_| {}).await;
    const K: u64 = 600;
    let sub = client(&pki, b.local_addr(), "acme/many/sub").await;
    let names: Vec<_> = (0..K).map(|i| name(&format!("acme/many/c{i}"))).collect();
    for n in &names {
        sub.subscribe(n).await.unwrap();
    }
    let remote_many = |node: &NodeHandle| {
        node.routes()
            .iter()
            .filter(|r| r.name.starts_with("acme/many/c") && r.remote_peers == ["b"])
            .count() as u64
    };
    assert_eventually(T, "a routes every channel to b", || async {
        remote_many(&a) == K
    })
    .await;
    let publ = client(&pki, a.local_addr(), "acme/many/pub").await;
    let check_all = |round: u64| {
        let (publ, sub, names) = (&publ, &sub, &names);
        async move {
            for (i, n) in names.iter().enumerate() {
                publ.publish(n, Mode::Multicast, &seq_payload(i as u64, 16))
                    .await
                    .unwrap();
            }
            let mut seen = SeqSet::new(K);
            for _ in 0..K {
                seen.insert(payload_seq(&next_message(sub, T).await.payload));
            }
            assert_eq!(seen.missing(K), Vec::<u64>::new(), "round {round}");
            assert_eq!(seen.duplicates(), 0, "round {round}");
        }
    };
    check_all(0).await;
    let first_up = a.links()[0].up_since.expect("up");
    a.inject_link_failure("b");
    assert_eventually(T, "relinked and resynced", || async {
        a.links()
            .iter()
            .any(|l| l.state == LinkState::Up && l.up_since.is_some_and(|t| t > first_up))
            && remote_many(&a) == K
    })
    .await;
    // The registry can still hold routes through the old session for a
    // moment: probe one channel until it crosses, then check them all.
    assert_eventually(T, "a probe crosses the new link", || async {
        publ.publish(&names[0], Mode::Multicast, &seq_payload(K + 1, 16))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_millis(200), sub.next_message())
            .await
            .is_ok_and(|d| d.is_some())
    })
    .await;
    // The probe crossing means the old session's routes are gone (they were
    // withdrawn before the new link's came in), so this now counts new ones.
    assert_eventually(T, "every channel routed again", || async {
        remote_many(&a) == K
    })
    .await;
    while let Ok(Some(_)) =
        tokio::time::timeout(Duration::from_millis(100), sub.next_message()).await
    {}
    check_all(1).await;
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}
