//! Node restarts, actor crashes and shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use slim_actors::{HookVerdict, RoutedFrame};

use slim_client::{ConnState, FLAG_NO_ROUTE_SILENT};
use slim_tests::*;
use slim_wire::Mode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reconnects_to_a_restarted_node_and_restores_subscriptions() {
    init_tracing();
    let pki = Pki::new("example.org");
    let port = free_udp_port();
    let listen: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let node = start_node(&pki, |c| c.listen = listen).await;
    let sub = client(&pki, listen, "acme/re/sub").await;
    let chan = name("acme/re/chan");
    sub.subscribe(&chan).await.unwrap();
    let mut state = sub.state();

    node.shutdown(Duration::from_secs(1)).await;
    assert_eventually(
        Duration::from_secs(5),
        "client notices the node is gone",
        || {
            let s = state.borrow_and_update().clone();
            async move { matches!(s, ConnState::Reconnecting { .. }) }
        },
    )
    .await;

    let node = start_node(&pki, |c| c.listen = listen).await;
    assert_eventually(Duration::from_secs(10), "client reconnected", || {
        let s = sub.state().borrow().clone();
        async move { matches!(s, ConnState::Connected { .. }) }
    })
    .await;
    let publ = client(&pki, listen, "acme/re/pub").await;
    // The subscription is restored by the SDK right after it reconnects.
    assert_eventually(Duration::from_secs(5), "subscription restored", || async {
        node.registry().lookup(chan.as_str()).is_some()
    })
    .await;
    publ.publish(&chan, Mode::Multicast, b"after restart")
        .await
        .unwrap();
    let d = next_message(&sub, Duration::from_secs(5)).await;
    assert_eq!(&d.payload[..], b"after restart");
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_connection_actor_is_cleaned_up_and_the_node_keeps_serving() {
    init_tracing();
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |_| {}).await;
    let addr = node.local_addr();
    let victim = client(&pki, addr, "acme/crash/victim").await;
    let other = client(&pki, addr, "acme/crash/other").await;
    let publ = client(&pki, addr, "acme/crash/pub").await;
    let chan = name("acme/crash/chan");
    victim.subscribe(&chan).await.unwrap();
    other.subscribe(&chan).await.unwrap();
    let victim_name = victim.name().to_string();
    let first_conn = node
        .connections()
        .into_iter()
        .find(|c| c.name == victim_name)
        .unwrap()
        .id;

    assert!(node.inject_connection_panic(&victim_name));
    // Its subscriptions disappear with it…
    assert_eventually(
        Duration::from_secs(5),
        "crashed connection removed",
        || async {
            node.registry().names_of(first_conn).is_empty()
                && !node.connections().iter().any(|c| c.id == first_conn)
        },
    )
    .await;
    // …the rest of the node is untouched…
    publ.publish(&chan, Mode::Multicast, b"still here")
        .await
        .unwrap();
    assert_eq!(
        &next_message(&other, Duration::from_secs(5)).await.payload[..],
        b"still here"
    );
    // …and the crashed client's SDK reconnects and gets its subscription back.
    assert_eventually(
        Duration::from_secs(10),
        "victim back with its subscription",
        || async {
            node.connections()
                .iter()
                .any(|c| c.name == victim_name && c.id != first_conn)
                && node
                    .registry()
                    .lookup(chan.as_str())
                    .is_some_and(|r| r.subs.len() == 2)
        },
    )
    .await;
    // Drain whatever the victim may have received before the crash.
    while next_event(&victim, Duration::from_millis(50))
        .await
        .is_some()
    {}
    publ.publish(&chan, Mode::Multicast, b"welcome back")
        .await
        .unwrap();
    assert_eq!(
        &next_message(&victim, Duration::from_secs(5)).await.payload[..],
        b"welcome back"
    );
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_queued_messages() {
    init_tracing();
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |_| {}).await;
    let addr = node.local_addr();
    let sub = client(&pki, addr, "acme/drain/sub").await;
    let publ = client(&pki, addr, "acme/drain/pub").await;
    let chan = name("acme/drain/chan");
    sub.subscribe(&chan).await.unwrap();
    // The node routes one connection's frames in order on one task, so once
    // the route hook sees the marker published after the last message, every
    // message before it has been routed into the subscriber's queue.
    let marker = name("acme/drain/marker");
    let routed = Arc::new(AtomicU64::new(0));
    let marker_seen = Arc::new(AtomicBool::new(false));
    {
        let (routed, marker_seen) = (Arc::clone(&routed), Arc::clone(&marker_seen));
        let (chan, marker) = (chan.as_str().to_string(), marker.as_str().to_string());
        node.set_route_hook(Some(Arc::new(move |r: &RoutedFrame<'_>| {
            if r.name == chan {
                routed.fetch_add(1, Ordering::SeqCst);
            } else if r.name == marker {
                marker_seen.store(true, Ordering::SeqCst);
            }
            HookVerdict::Forward
        })));
    }
    const N: u64 = 2000;
    for i in 0..N {
        publ.publish_with(
            &chan,
            Mode::Multicast,
            FLAG_NO_ROUTE_SILENT,
            &seq_payload(i, 64),
        )
        .await
        .unwrap();
    }
    publ.publish_with(&marker, Mode::Multicast, FLAG_NO_ROUTE_SILENT, b"end")
        .await
        .unwrap();
    publ.flush().await;
    // Let the node route everything the publisher sent before shutting down.
    assert_eventually(
        Duration::from_secs(10),
        "node routed every publish (the marker after the last one)",
        || async { marker_seen.load(Ordering::SeqCst) },
    )
    .await;
    assert_eq!(
        routed.load(Ordering::SeqCst),
        N,
        "publishes routed before the marker"
    );
    node.shutdown(Duration::from_secs(5)).await;
    let mut seen = SeqSet::new(N);
    while let Some(slim_client::Event::Message(d)) =
        next_event(&sub, Duration::from_millis(500)).await
    {
        seen.insert(payload_seq(&d.payload));
    }
    assert_eq!(
        seen.missing(N),
        Vec::<u64>::new(),
        "messages lost in shutdown"
    );
    assert_eq!(seen.duplicates(), 0);
}
