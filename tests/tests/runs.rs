//! A publisher's read of many publishes reaches each subscriber as *runs*:
//! consecutive deliveries to the same subscribers, queued as one item
//! (`actors/src/run.rs`). A run must end whenever the route changes and
//! before any control frame, or subscribers would see messages out of order
//! (or an error before the deliveries that preceded it). These tests mix
//! names, a publisher that hears itself and refused publishes in one fast
//! stream, and check that every subscriber gets exactly its messages, in
//! publish order.

use std::collections::HashMap;
use std::time::Duration;

use slim_client::{Client, Event};
use slim_tests::*;
use slim_wire::Mode;

const N: u64 = 20_000;
const WAIT: Duration = Duration::from_secs(60);

/// Where message `i` goes: runs of A and B of varying length, and every
/// 997th to a name nobody subscribes to (refused with "no route").
#[derive(Clone, Copy, PartialEq, Eq)]
enum To {
    A,
    B,
    Nobody,
}

fn to(i: u64) -> To {
    if i % 997 == 500 {
        To::Nobody
    } else if (i / 3).is_multiple_of(2) || i.is_multiple_of(11) {
        To::A
    } else {
        To::B
    }
}

/// Reads until `expect` sequence numbers have arrived, asserting each is the
/// next one expected (nothing lost, duplicated or reordered).
async fn read_in_order(c: Client, expect: Vec<u64>) -> Client {
    for (k, &want) in expect.iter().enumerate() {
        let d = next_message(&c, WAIT).await;
        let got = payload_seq(&d.payload);
        assert_eq!(
            got,
            want,
            "{}: message {k} of {} out of order or missing",
            c.name(),
            expect.len()
        );
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_names_arrive_whole_and_in_order() {
    init_tracing();
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |_| {}).await;
    let addr = node.local_addr();
    let (a, b, nobody) = (
        name("acme/run/a"),
        name("acme/run/b"),
        name("acme/run/nobody"),
    );
    let both = client(&pki, addr, "acme/run/both").await;
    both.subscribe(&a).await.unwrap();
    both.subscribe(&b).await.unwrap();
    let only_a = client(&pki, addr, "acme/run/only-a").await;
    only_a.subscribe(&a).await.unwrap();
    let publ = client(&pki, addr, "acme/run/pub").await;
    // The publisher hears its own A messages, so its node connection is both
    // in A's runs and the one its refusals go to.
    publ.subscribe(&a).await.unwrap();

    let expect = |f: &dyn Fn(To) -> bool| (0..N).filter(|&i| f(to(i))).collect::<Vec<_>>();
    let readers = [
        tokio::spawn(read_in_order(both, expect(&|t| t != To::Nobody))),
        tokio::spawn(read_in_order(only_a, expect(&|t| t == To::A))),
    ];
    let publisher = tokio::spawn(async move {
        let mut refused = HashMap::new();
        for i in 0..N {
            let n = match to(i) {
                To::A => &a,
                To::B => &b,
                To::Nobody => &nobody,
            };
            let id = publ
                .publish(n, Mode::Multicast, &seq_payload(i, 40))
                .await
                .unwrap();
            if to(i) == To::Nobody {
                refused.insert(id, i);
            }
        }
        (publ, refused)
    });
    for r in readers {
        r.await.unwrap();
    }
    let (publ, refused) = publisher.await.unwrap();

    // The publisher's own stream: its A messages and the refusals, each
    // after everything published before it.
    let want = (0..N).filter(|&i| to(i) != To::B).count();
    let mut last = None;
    for k in 0..want {
        let seq = match next_event(&publ, WAIT).await {
            Some(Event::Message(d)) => payload_seq(&d.payload),
            Some(Event::Error(e)) => *e
                .msg_id
                .and_then(|id| refused.get(&id))
                .unwrap_or_else(|| panic!("an error for no refused publish: {e:?}")),
            other => panic!("event {k} of {want}: {other:?}"),
        };
        assert!(
            last.is_none_or(|l| seq > l),
            "the publisher saw {seq} after {last:?}"
        );
        last = Some(seq);
    }
    assert_eq!(last, (0..N).filter(|&i| to(i) != To::B).max());
    let dropped: u64 = node.connections().iter().map(|c| c.dropped).sum();
    assert_eq!(dropped, 0, "nothing dropped");
    node.shutdown(Duration::from_secs(1)).await;
}

/// The same stream across peer links: forwards run per link whatever their
/// name (`run.rs`), so one link run carries A and B interleaved. spoke1's
/// publisher reaches a local subscriber of B, a subscriber of A on the hub
/// (delivered from the hub's link reader) and a subscriber of both on
/// spoke2, through the hub (forwarded on by the hub's link reader). Each
/// gets exactly its messages, in publish order, and nothing is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_names_arrive_whole_and_in_order_across_links() {
    init_tracing();
    let pki = Pki::new("example.org");
    let hub = start_peer_node(&pki, "hub", vec![], |_| {}).await;
    let s1 = start_peer_node(&pki, "spoke1", vec![peer_spec(&hub)], |_| {}).await;
    let s2 = start_peer_node(&pki, "spoke2", vec![peer_spec(&hub)], |_| {}).await;
    let (a, b, nobody) = (
        name("acme/xrun/a"),
        name("acme/xrun/b"),
        name("acme/xrun/nobody"),
    );
    let both = client(&pki, s2.local_addr(), "acme/xrun/both").await;
    both.subscribe(&a).await.unwrap();
    both.subscribe(&b).await.unwrap();
    let only_a = client(&pki, hub.local_addr(), "acme/xrun/only-a").await;
    only_a.subscribe(&a).await.unwrap();
    let only_b = client(&pki, s1.local_addr(), "acme/xrun/only-b").await;
    only_b.subscribe(&b).await.unwrap();
    for (node, n, origin) in [
        (&s1, &a, "hub"),
        (&s1, &a, "spoke2"),
        (&s1, &b, "spoke2"),
        (&hub, &a, "spoke2"),
        (&hub, &b, "spoke2"),
    ] {
        assert_eventually(
            WAIT,
            &format!("{} routes {n} to {origin}", node.node_id()),
            || async { routes_to(node, n.as_str(), origin) },
        )
        .await;
    }

    let expect = |f: &dyn Fn(To) -> bool| (0..N).filter(|&i| f(to(i))).collect::<Vec<_>>();
    let readers = [
        tokio::spawn(read_in_order(both, expect(&|t| t != To::Nobody))),
        tokio::spawn(read_in_order(only_a, expect(&|t| t == To::A))),
        tokio::spawn(read_in_order(only_b, expect(&|t| t == To::B))),
    ];
    let publ = client(&pki, s1.local_addr(), "acme/xrun/pub").await;
    for i in 0..N {
        let n = match to(i) {
            To::A => &a,
            To::B => &b,
            // Refused on spoke1 ("no route"): the pending runs are pushed
            // before the error goes back.
            To::Nobody => &nobody,
        };
        publ.publish(n, Mode::Multicast, &seq_payload(i, 40))
            .await
            .unwrap();
    }
    for r in readers {
        r.await.unwrap();
    }
    for node in [&s1, &hub, &s2] {
        let dropped: u64 = node.connections().iter().map(|c| c.dropped).sum();
        let link_drops: u64 = node.links().iter().map(|l| l.drops).sum();
        assert_eq!(
            (dropped, link_drops),
            (0, 0),
            "{}: nothing dropped",
            node.node_id()
        );
    }
    // Link frame counts are frames, not runs: every A and B message crossed
    // spoke1 → hub once.
    let out: u64 = s1.links().iter().map(|l| l.frames_out).sum();
    let crossed = (0..N).filter(|&i| to(i) != To::Nobody).count() as u64;
    assert!(
        out >= crossed,
        "spoke1 counted {out} frames out, {crossed} crossed"
    );
    drop(publ);
    for node in [s1, hub, s2] {
        node.shutdown(Duration::from_secs(1)).await;
    }
}
