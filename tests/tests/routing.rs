//! Routing on one node over real QUIC + mTLS on loopback.

use std::collections::HashMap;
use std::time::Duration;

use slim_client::{Event, FLAG_NO_ROUTE_SILENT};
use slim_tests::*;
use slim_wire::{ErrorCode, Mode};

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_carries_sender_name_and_identity() {
    init_tracing();
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |_| {}).await;
    let sub = client(&pki, node.local_addr(), "acme/eu/sub").await;
    let publ = client(&pki, node.local_addr(), "acme/eu/pub").await;
    let chan = name("acme/monitoring/incident");
    sub.subscribe(&chan).await.unwrap();
    for i in 0..100u64 {
        publ.publish(&chan, Mode::Multicast, &seq_payload(i, 16))
            .await
            .unwrap();
    }
    for i in 0..100u64 {
        let d = next_message(&sub, T).await;
        assert_eq!(payload_seq(&d.payload), i, "in order");
        assert_eq!(d.name, chan);
        assert_eq!(&d.from, publ.name());
        assert_eq!(
            d.from_identity.as_deref(),
            Some("spiffe://example.org/agent/acme-eu-pub")
        );
    }
    assert_eq!(
        sub.authenticated_as().as_deref(),
        Some("spiffe://example.org/agent/acme-eu-sub")
    );
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multicast_to_100_subscribers_exactly_once() {
    init_tracing();
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |_| {}).await;
    let chan = name("acme/monitoring/fanout");
    let mut subs = Vec::new();
    for i in 0..100 {
        let c = client(&pki, node.local_addr(), &format!("acme/fan/sub{i}")).await;
        c.subscribe(&chan).await.unwrap();
        // A repeated subscribe must not double deliveries.
        if i == 0 {
            c.subscribe(&chan).await.unwrap();
        }
        subs.push(c);
    }
    let publ = client(&pki, node.local_addr(), "acme/fan/pub").await;
    const N: u64 = 200;
    for i in 0..N {
        publ.publish(&chan, Mode::Multicast, &seq_payload(i, 16))
            .await
            .unwrap();
    }
    for s in &subs {
        let mut seen = SeqSet::new(N);
        for _ in 0..N {
            let d = next_message(s, T).await;
            assert!(
                seen.insert(payload_seq(&d.payload)),
                "{}: duplicate",
                s.name()
            );
        }
        assert_eq!(seen.missing(N), Vec::<u64>::new());
        assert_no_message(s, Duration::from_millis(20)).await;
    }
    assert_no_message(&subs[0], Duration::from_millis(200)).await;
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anycast_over_three_instances_delivers_each_once_and_uses_all() {
    init_tracing();
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |_| {}).await;
    // Three instances of one service: each registers acme/eu/worker/<i>, which
    // also makes it a candidate for anycast to acme/eu/worker.
    let mut workers = Vec::new();
    for i in 0..3 {
        workers.push(client(&pki, node.local_addr(), &format!("acme/eu/worker/{i}")).await);
    }
    let publ = client(&pki, node.local_addr(), "acme/eu/caller").await;
    let svc = name("acme/eu/worker");
    const N: u64 = 300;
    for i in 0..N {
        publ.publish(&svc, Mode::Anycast, &seq_payload(i, 16))
            .await
            .unwrap();
    }
    let mut seen = SeqSet::new(N);
    let mut per_worker: HashMap<String, u64> = HashMap::new();
    let mut total = 0;
    let mut idle_rounds = 0;
    while total < N {
        let mut progressed = false;
        for w in &workers {
            if let Some(Event::Message(d)) = next_event(w, Duration::from_millis(50)).await {
                assert!(
                    seen.insert(payload_seq(&d.payload)),
                    "duplicate anycast delivery"
                );
                *per_worker.entry(w.name().to_string()).or_default() += 1;
                total += 1;
                progressed = true;
            }
        }
        idle_rounds = if progressed { 0 } else { idle_rounds + 1 };
        assert!(idle_rounds < 100, "stalled at {total}/{N}");
    }
    assert_eq!(seen.count(), N);
    assert_eq!(per_worker.len(), 3, "every instance used: {per_worker:?}");
    for w in &workers {
        assert_no_message(w, Duration::from_millis(100)).await;
    }
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unicast_reaches_only_the_named_instance() {
    init_tracing();
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |_| {}).await;
    let a = client(&pki, node.local_addr(), "acme/eu/worker/a").await;
    let b = client(&pki, node.local_addr(), "acme/eu/worker/b").await;
    let publ = client(&pki, node.local_addr(), "acme/eu/caller").await;
    for _ in 0..10 {
        publ.publish(b.name(), Mode::Unicast, b"for b")
            .await
            .unwrap();
    }
    for _ in 0..10 {
        let d = next_message(&b, T).await;
        assert_eq!(&d.payload[..], b"for b");
        assert_eq!(d.mode, Mode::Unicast);
    }
    assert_no_message(&a, Duration::from_millis(200)).await;
    // Unicast needs an instance: a typed error comes back.
    let id = publ
        .publish(&name("acme/eu/worker"), Mode::Unicast, b"x")
        .await
        .unwrap();
    match next_event(&publ, T).await {
        Some(Event::Error(e)) => {
            assert_eq!(e.code, ErrorCode::BAD_NAME);
            assert_eq!(e.msg_id, Some(id));
        }
        other => panic!("expected a bad-name error, got {other:?}"),
    }
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_delivery() {
    init_tracing();
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |_| {}).await;
    let sub = client(&pki, node.local_addr(), "acme/eu/sub").await;
    let publ = client(&pki, node.local_addr(), "acme/eu/pub").await;
    let chan = name("acme/ch/one");
    sub.subscribe(&chan).await.unwrap();
    publ.publish(&chan, Mode::Multicast, b"before")
        .await
        .unwrap();
    assert_eq!(&next_message(&sub, T).await.payload[..], b"before");
    sub.unsubscribe(&chan).await.unwrap();
    publ.publish_with(&chan, Mode::Multicast, FLAG_NO_ROUTE_SILENT, b"after")
        .await
        .unwrap();
    assert_no_message(&sub, Duration::from_millis(300)).await;
    // Unsubscribing again is an error the caller sees.
    assert!(sub.unsubscribe(&chan).await.is_err());
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_reported_unless_silenced() {
    init_tracing();
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |_| {}).await;
    let publ = client(&pki, node.local_addr(), "acme/eu/pub").await;
    let nobody = name("acme/nobody/here");
    publ.publish_with(&nobody, Mode::Multicast, FLAG_NO_ROUTE_SILENT, b"x")
        .await
        .unwrap();
    let id = publ.publish(&nobody, Mode::Anycast, b"y").await.unwrap();
    match next_event(&publ, T).await {
        Some(Event::Error(e)) => {
            assert_eq!(e.code, ErrorCode::NO_ROUTE);
            assert_eq!(e.msg_id, Some(id), "the silenced publish produced no error");
            assert_eq!(e.name.as_ref(), Some(&nobody));
        }
        other => panic!("expected no-route error, got {other:?}"),
    }
    node.shutdown(Duration::from_secs(1)).await;
}
