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

/// Publishes 16 KiB messages from `publ` until `cond` holds for `node`'s
/// paths (discovery probes ride on traffic), or panics after `T`.
async fn traffic_until(
    publ: &Client,
    chan: &slim_wire::Name,
    node: &NodeHandle,
    what: &str,
    cond: impl Fn(&[(&'static str, String, u16)]) -> bool,
) {
    let payload = vec![7u8; 16 * 1024];
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
        for _ in 0..16 {
            publ.publish(chan, Mode::Multicast, &payload).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
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
        let b = start_peer_node(&pki, "b", vec![], |_| {}).await;
        let a = start_peer_node(&pki, "a", vec![peer_spec(&b)], |_| {}).await;
        assert_eventually(T, "linked", || async { links_up(&a) == 1 }).await;
        let chan = name("mtu/grow/chan");
        let sub = client(&pki, b.local_addr(), "mtu/grow/sub").await;
        sub.subscribe(&chan).await.unwrap();
        assert_eventually(T, "route", || async { routes_to(&a, chan.as_str(), "b") }).await;
        let publ = client(&pki, a.local_addr(), "mtu/grow/pub").await;
        // The default ceiling is 8,952; discovery stops within its minimum
        // step (20 bytes) of it, so anything past 1,452 shows it grew and
        // past 8,952 would mean the ceiling was ignored.
        traffic_until(&publ, &chan, &a, "A's client and link paths > 1452", |m| {
            max_mtu(m, "client") > 1452 && max_mtu(m, "link") > 1452
        })
        .await;
        traffic_until(&publ, &chan, &b, "B's client and link paths > 1452", |m| {
            max_mtu(m, "client") > 1452 && max_mtu(m, "link") > 1452
        })
        .await;
        for n in [&a, &b] {
            let m = n.path_mtus();
            println!("{}: {m:?}", n.node_id());
            assert!(m.iter().all(|p| p.2 <= 8952), "over the ceiling: {m:?}");
        }
        // Every message arrived whole, in 16 KiB pieces of larger datagrams.
        let d = next_message(&sub, T).await;
        assert_eq!(d.payload.len(), 16 * 1024);
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
        let publ = Client::connect(cfg).await.unwrap();
        // Discovery from 1,200 towards 1,452 ends within its 20-byte step.
        traffic_until(&publ, &chan, &node, "paths > 1400", |m| {
            m.len() == 2 && m.iter().all(|p| p.2 > 1400)
        })
        .await;
        let m = node.path_mtus();
        println!("{m:?}");
        assert!(m.iter().all(|p| p.2 <= 1452), "over 1452: {m:?}");
    })
    .await;
}
