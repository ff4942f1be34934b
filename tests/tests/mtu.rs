//! Path-MTU discovery on loopback: client connections and peer links grow
//! their datagrams past Ethernet size up to `max_udp_payload`, and stay
//! within it when it is set to Ethernet size. Loopback's MTU is 64 KiB, so
//! any limit below that is the configured one, not the path's.

use std::time::Duration;

use slim_actors::NodeHandle;
use slim_client::Client;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_and_link_datagrams_grow_past_ethernet_size() {
    deadline(T * 2, "mtu growth", async {
        let pki = Pki::new("example.org");
        // Jumbo-frame ceiling (the default stays at Ethernet size).
        let jumbo = |c: &mut slim_actors::NodeConfig| c.max_udp_payload = 8952;
        let b = start_peer_node(&pki, "b", vec![], jumbo).await;
        let a = start_peer_node(&pki, "a", vec![peer_spec(&b)], jumbo).await;
        assert_eventually(T, "linked", || async { links_up(&a) == 1 }).await;
        let chan = name("mtu/grow/chan");
        let jumbo_client = |addr, n: &str| {
            let mut cfg = client_config(&pki, addr, n);
            cfg.max_udp_payload = 8952;
            slim_client::Client::connect(cfg)
        };
        let sub = jumbo_client(b.local_addr(), "mtu/grow/sub").await.unwrap();
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
        assert_eventually(T, "route", || async { routes_to(&a, chan.as_str(), "b") }).await;
        let publ = jumbo_client(a.local_addr(), "mtu/grow/pub").await.unwrap();
        // The ceiling here is 8,952; discovery stops within its minimum
        // step (20 bytes) of it, so anything past 1,452 shows it grew and
        // past 8,952 would mean the ceiling was ignored.
        mtus_until(&a, "A's client and link paths > 1452", |m| {
            max_mtu(m, "client") > 1452 && max_mtu(m, "link") > 1452
        })
        .await;
        mtus_until(&b, "B's client and link paths > 1452", |m| {
            max_mtu(m, "client") > 1452 && max_mtu(m, "link") > 1452
        })
        .await;
        for n in [&a, &b] {
            let m = n.path_mtus();
            println!("{}: {m:?}", n.node_id());
            assert!(m.iter().all(|p| p.2 <= 8952), "over the ceiling: {m:?}");
        }
        // 16 KiB messages cross the link whole, in the larger datagrams.
        let payload = vec![7u8; 16 * 1024];
        for _ in 0..16 {
            publ.publish(&chan, Mode::Multicast, &payload)
                .await
                .unwrap();
        }
        let (n, whole) = reader.await.unwrap();
        println!("subscriber read {n} messages");
        assert!(n >= 16 && whole, "read {n} messages, all 16 KiB: {whole}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ethernet_ceiling_keeps_datagrams_within_it() {
    deadline(T * 2, "mtu ceiling", async {
        let pki = Pki::new("example.org");
        let node = start_node(&pki, |c| c.max_udp_payload = 1452).await;
        let chan = name("mtu/cap/chan");
        let sub = client(&pki, node.local_addr(), "mtu/cap/sub").await;
        sub.subscribe(&chan).await.unwrap();
        let mut cfg = client_config(&pki, node.local_addr(), "mtu/cap/pub");
        cfg.max_udp_payload = 1452;
        let _publ = Client::connect(cfg).await.unwrap();
        // Discovery from 1,200 towards 1,452 ends within its 20-byte step.
        mtus_until(&node, "paths > 1400", |m| {
            m.len() == 2 && m.iter().all(|p| p.2 > 1400)
        })
        .await;
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
/// (`slim_framed::datagrams`), a loopback path loses nothing.
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

/// With the defaults, a dialled peer link's datagrams grow past Ethernet
/// size (links have their own ceiling, 6,550: few connections, much data)
/// while client connections stay within 1,452.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_links_grow_and_clients_stay_at_ethernet_size() {
    deadline(T * 2, "default ceilings", async {
        let pki = Pki::new("example.org");
        let b = start_peer_node(&pki, "b", vec![], |_| {}).await;
        let a = start_peer_node(&pki, "a", vec![peer_spec(&b)], |_| {}).await;
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
