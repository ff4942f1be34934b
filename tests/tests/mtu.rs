//! Datagram sizes. On loopback, client connections and peer links start at
//! 65,000 bytes (or a larger ceiling) with nothing to discover; over a
//! network path they start at 1,200 and path-MTU discovery grows them up to
//! `max_udp_payload`. The network-path tests run in a namespace of their own
//! whose host has a non-loopback address (`slim_tests::netns::in_own_netns`;
//! its packets still go through the kernel's loopback, whose 64 KiB MTU
//! means any limit below that is the configured one, not the path's).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use slim_actors::{NodeConfig, NodeHandle};
use slim_client::Client;
use slim_framed::datagrams::LOOPBACK_UDP_PAYLOAD;
use slim_tests::*;
use slim_wire::Mode;

const T: Duration = Duration::from_secs(20);

/// Waits until `cond` holds for `node`'s paths (quinn probes right after
/// the handshake, with or without traffic), or panics after `T`.
async fn mtus_until(
    node: &NodeHandle,
    what: &str,
    cond: impl Fn(&[(&'static str, String, u16)]) -> bool,
) {
    let t0 = tokio::time::Instant::now();
    loop {
        let mtus = node.path_mtus();
        if cond(&mtus) {
            return;
        }
        assert!(
            t0.elapsed() < T,
            "{what}: not reached within {T:?}: {mtus:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn max_mtu(mtus: &[(&'static str, String, u16)], kind: &str) -> u16 {
    mtus.iter()
        .filter(|(k, _, _)| *k == kind)
        .map(|m| m.2)
        .max()
        .unwrap_or(0)
}

/// Listens on `ip` (an ephemeral port).
fn listen_on(ip: impl Into<IpAddr>) -> impl Fn(&mut NodeConfig) {
    let addr = SocketAddr::new(ip.into(), 0);
    move |c: &mut NodeConfig| c.listen = addr
}

/// Sends 16 KiB messages from a client of `from` to a subscriber on `to`
/// (two nodes, or the same one twice) and checks they all arrive whole.
async fn sixteen_kib_messages_cross(
    pki: &Pki,
    from: &NodeHandle,
    to: &NodeHandle,
    ceiling: u16,
    n: &str,
) {
    let chan = name(&format!("mtu/{n}/chan"));
    let connect = |addr, who: &str| {
        let mut cfg = client_config(pki, addr, &format!("mtu/{n}/{who}"));
        cfg.max_udp_payload = ceiling;
        Client::connect(cfg)
    };
    let sub = connect(to.local_addr(), "sub").await.unwrap();
    sub.subscribe(&chan).await.unwrap();
    // Read from the start, so the subscriber is never a slow consumer.
    let reader = tokio::spawn(async move {
        let (mut n, mut whole) = (0u64, true);
        while let Ok(Some(d)) = tokio::time::timeout(T, sub.next_message()).await {
            n += 1;
            whole &= d.payload.len() == 16 * 1024;
            if n >= 16 {
                break;
            }
        }
        (n, whole)
    });
    if from.node_id() != to.node_id() {
        let origin = to.node_id().to_owned();
        assert_eventually(T, "route", || async {
            routes_to(from, chan.as_str(), &origin)
        })
        .await;
    }
    let publ = connect(from.local_addr(), "pub").await.unwrap();
    let payload = vec![7u8; 16 * 1024];
    for _ in 0..16 {
        publ.publish(&chan, Mode::Multicast, &payload)
            .await
            .unwrap();
    }
    let (n, whole) = reader.await.unwrap();
    println!("subscriber read {n} messages");
    assert!(n >= 16 && whole, "read {n} messages, all 16 KiB: {whole}");
}

/// With the defaults, a node's clients and its peer links (dialled and
/// accepted) on this host use 6,550-byte datagrams from their first packets:
/// no discovery, and nothing smaller or larger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_loopback_clients_and_links_start_at_the_loopback_size() {
    deadline(T * 2, "loopback size", async {
        let pki = Pki::new("example.org");
        let b = start_peer_node(&pki, "b", vec![], |_| {}).await;
        let a = start_peer_node(&pki, "a", vec![peer_spec(&b)], |_| {}).await;
        assert_eventually(T, "linked", || async { links_up(&a) == 1 }).await;
        let _ca = client(&pki, a.local_addr(), "mtu/lo/ca").await;
        let _cb = client(&pki, b.local_addr(), "mtu/lo/cb").await;
        for n in [&a, &b] {
            mtus_until(n, "a client and a link path", |m| {
                max_mtu(m, "client") > 0 && max_mtu(m, "link") > 0
            })
            .await;
            let m = n.path_mtus();
            println!("{}: {m:?}", n.node_id());
            assert!(
                m.iter().all(|p| p.2 == LOOPBACK_UDP_PAYLOAD),
                "{}: not all at {LOOPBACK_UDP_PAYLOAD}: {m:?}",
                n.node_id()
            );
        }
        sixteen_kib_messages_cross(&pki, &a, &b, 1452, "lo").await;
    })
    .await;
}

/// A ceiling above the loopback size is used from the start on loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_loopback_a_larger_ceiling_is_used_from_the_start() {
    // Above LOOPBACK_UDP_PAYLOAD, within IPv4's largest UDP payload.
    const CEILING: u16 = 65_500;
    const { assert!(CEILING > LOOPBACK_UDP_PAYLOAD) };
    deadline(T * 2, "loopback ceiling", async {
        let pki = Pki::new("example.org");
        let node = start_node(&pki, |c| c.max_udp_payload = CEILING).await;
        let mut cfg = client_config(&pki, node.local_addr(), "mtu/lo-jumbo/c");
        cfg.max_udp_payload = CEILING;
        let _c = Client::connect(cfg).await.unwrap();
        mtus_until(&node, "a client path", |m| m.len() == 1).await;
        let m = node.path_mtus();
        assert_eq!(m[0].2, CEILING, "{m:?}");
    })
    .await;
}

/// Over a network path with jumbo-frame ceilings, client connections and
/// peer links grow past Ethernet size by discovery, never past the ceiling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_network_client_and_link_datagrams_grow_past_ethernet_size() {
    let Some(ip) = netns::in_own_netns() else {
        return;
    };
    deadline(T * 2, "mtu growth", async {
        let pki = Pki::new("example.org");
        let jumbo = |c: &mut NodeConfig| {
            listen_on(ip)(c);
            c.max_udp_payload = 8952;
            c.federation.max_udp_payload = 8952;
        };
        let b = start_peer_node(&pki, "b", vec![], jumbo).await;
        let a = start_peer_node(&pki, "a", vec![peer_spec(&b)], jumbo).await;
        assert_eventually(T, "linked", || async { links_up(&a) == 1 }).await;
        let mut cfg = client_config(&pki, a.local_addr(), "mtu/grow/c");
        cfg.max_udp_payload = 8952;
        let _c = Client::connect(cfg).await.unwrap();
        // Discovery stops within its minimum step (20 bytes) of the
        // ceiling, so anything past 1,452 shows it grew and past 8,952
        // would mean the ceiling was ignored.
        mtus_until(&a, "A's client and link paths > 1452", |m| {
            max_mtu(m, "client") > 1452 && max_mtu(m, "link") > 1452
        })
        .await;
        let m = a.path_mtus();
        println!("{m:?}");
        assert!(m.iter().all(|p| p.2 <= 8952), "over the ceiling: {m:?}");
        sixteen_kib_messages_cross(&pki, &a, &b, 8952, "grow").await;
    })
    .await;
}

/// Over a network path, a 1,452 ceiling on both ends keeps datagrams
/// within it (discovery from 1,200 ends within its 20-byte step of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_network_an_ethernet_ceiling_keeps_datagrams_within_it() {
    let Some(ip) = netns::in_own_netns() else {
        return;
    };
    deadline(T * 2, "mtu ceiling", async {
        let pki = Pki::new("example.org");
        let node = start_node(&pki, |c| {
            listen_on(ip)(c);
            c.max_udp_payload = 1452;
        })
        .await;
        let mut cfg = client_config(&pki, node.local_addr(), "mtu/cap/c");
        cfg.max_udp_payload = 1452;
        let _c = Client::connect(cfg).await.unwrap();
        mtus_until(&node, "path > 1400", |m| m.len() == 1 && m[0].2 > 1400).await;
        let m = node.path_mtus();
        println!("{m:?}");
        assert!(m.iter().all(|p| p.2 <= 1452), "over 1452: {m:?}");
    })
    .await;
}

/// Datagrams past 6,550 bytes with the bursts of a full-speed stream: quinn
/// batches up to 10 datagrams per GSO send, and a batch over 65,507 bytes is
/// refused by the kernel (`EMSGSIZE`), which quinn-udp drops silently as if
/// it were a failed MTU probe. With GSO turned off above that size
/// (`slim_framed::datagrams`), a loopback path loses nothing. (On loopback
/// the connections start at the 8,952 ceiling.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jumbo_datagrams_at_full_speed_lose_no_packet() {
    const N: u64 = 20_000;
    const SIZE: usize = 1024;
    deadline(T * 3, "jumbo stream", async {
        let pki = Pki::new("example.org");
        let node = start_node(&pki, |c| c.max_udp_payload = 8952).await;
        let chan = name("mtu/burst/chan");
        let jumbo_client = |n: &str| {
            let mut cfg = client_config(&pki, node.local_addr(), n);
            cfg.max_udp_payload = 8952;
            Client::connect(cfg)
        };
        let sub = jumbo_client("mtu/burst/sub").await.unwrap();
        sub.subscribe(&chan).await.unwrap();
        let publ = jumbo_client("mtu/burst/pub").await.unwrap();
        mtus_until(&node, "both paths past the GSO-safe size", |m| {
            m.len() == 2
                && m.iter()
                    .all(|p| p.2 > slim_framed::datagrams::MAX_GSO_UDP_PAYLOAD)
        })
        .await;
        let reader = tokio::spawn(async move {
            for seq in 0..N {
                let d = next_message(&sub, T).await;
                assert_eq!(payload_seq(&d.payload), seq, "out of order");
            }
        });
        for seq in 0..N {
            publ.publish(&chan, Mode::Multicast, &seq_payload(seq, SIZE))
                .await
                .unwrap();
        }
        reader.await.unwrap();
        let lost = node.path_lost_packets();
        println!("mtus {:?}, lost {lost:?}", node.path_mtus());
        assert!(
            lost.iter().all(|p| p.2 == 0),
            "packets lost on loopback: {lost:?}"
        );
    })
    .await;
}

/// Over a network path with the defaults, a dialled peer link's datagrams
/// grow past Ethernet size (links have their own ceiling, 6,550: few
/// connections, much data) while client connections stay within 1,452.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_network_by_default_links_grow_and_clients_stay_at_ethernet_size() {
    let Some(ip) = netns::in_own_netns() else {
        return;
    };
    deadline(T * 2, "default ceilings", async {
        let pki = Pki::new("example.org");
        let b = start_peer_node(&pki, "b", vec![], listen_on(ip)).await;
        let a = start_peer_node(&pki, "a", vec![peer_spec(&b)], listen_on(ip)).await;
        assert_eventually(T, "linked", || async { links_up(&a) == 1 }).await;
        let _c = client(&pki, a.local_addr(), "mtu/default/c").await;
        mtus_until(&a, "A's dialled link > 1452 and its client > 1400", |m| {
            max_mtu(m, "link") > 1452 && max_mtu(m, "client") > 1400
        })
        .await;
        let m = a.path_mtus();
        println!("{m:?}");
        let link_ceiling = slim_actors::FederationConfig::default().max_udp_payload;
        assert!(max_mtu(&m, "link") <= link_ceiling, "{m:?}");
        assert!(max_mtu(&m, "client") <= 1452, "{m:?}");
    })
    .await;
}
