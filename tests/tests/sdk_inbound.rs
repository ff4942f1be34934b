//! The SDK's inbound queue through a real node: it pushes back instead of
//! dropping (with room for only a few events, a subscriber that reads slower
//! than the node delivers still gets every message, once and in order: its
//! reader waits for room and stops reading QUIC, and the node's outbox waits
//! in turn), and `recv` hands out what was queued before it says closed.

use std::time::Duration;

use slim_actors::{SlowAction, SlowConsumerPolicy};
use slim_client::Event;
use slim_tests::*;
use slim_wire::Mode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_inbound_queue_loses_nothing_through_a_real_node() {
    init_tracing();
    deadline(
        Duration::from_secs(120),
        "sdk_inbound_backpressure",
        backpressure(),
    )
    .await;
}

async fn backpressure() {
    const MSGS: u64 = 1_000;
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |c| {
        // The node waits for the slow subscriber rather than dropping.
        c.queue.policy = SlowConsumerPolicy::wait(Duration::from_secs(600), SlowAction::Drop);
    })
    .await;
    let addr = node.local_addr();
    let chan = name("acme/inbound/chan");

    let mut cfg = client_config(&pki, addr, "acme/inbound/sub");
    cfg.inbound_capacity = 4;
    let sub = slim_client::Client::connect(cfg).await.unwrap();
    sub.subscribe(&chan).await.unwrap();

    let publ = slim_client::Client::connect(client_config(&pki, addr, "acme/inbound/pub"))
        .await
        .unwrap();
    let pub_task = tokio::spawn({
        let chan = chan.clone();
        async move {
            for i in 0..MSGS {
                publ.publish(&chan, Mode::Multicast, &seq_payload(i, 1024))
                    .await
                    .unwrap();
            }
            publ
        }
    });

    // One message at a time, yielding between reads: the reader keeps
    // meeting a full queue of 4.
    let mut seqs = Vec::new();
    while (seqs.len() as u64) < MSGS {
        match sub.recv().await.expect("the client closed early") {
            Event::Message(d) => seqs.push(payload_seq(&d.payload)),
            Event::Error(e) => panic!("unexpected error event {e:?}"),
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(
        seqs,
        (0..MSGS).collect::<Vec<_>>(),
        "lost, repeated or reordered"
    );
    pub_task.await.unwrap().close().await;
    sub.close().await;
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_drains_what_was_queued_then_says_closed() {
    init_tracing();
    deadline(Duration::from_secs(60), "sdk_inbound_close", close_drains()).await;
}

async fn close_drains() {
    const MSGS: u64 = 10;
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |_| {}).await;
    let addr = node.local_addr();
    let chan = name("acme/inbound/close");
    let sub = slim_client::Client::connect(client_config(&pki, addr, "acme/inbound/sub"))
        .await
        .unwrap();
    sub.subscribe(&chan).await.unwrap();
    let publ = slim_client::Client::connect(client_config(&pki, addr, "acme/inbound/pub"))
        .await
        .unwrap();
    for i in 0..MSGS {
        publ.publish(&chan, Mode::Multicast, &seq_payload(i, 16))
            .await
            .unwrap();
    }
    // Once the publisher's ping is answered the node has routed its
    // messages into the subscriber's outbox; the subscriber's own pong comes
    // through that outbox behind them, and its reader queues what came
    // before a pong first: so after both pings all ten wait in the queue.
    publ.ping().await.unwrap();
    sub.ping().await.unwrap();
    sub.shutdown().await;
    let mut seqs = Vec::new();
    while let Some(ev) = sub.recv().await {
        match ev {
            Event::Message(d) => seqs.push(payload_seq(&d.payload)),
            Event::Error(e) => panic!("unexpected error event {e:?}"),
        }
    }
    assert_eq!(seqs, (0..MSGS).collect::<Vec<_>>());
    // Closed stays closed.
    assert!(sub.recv().await.is_none());
    let mut buf = Vec::new();
    assert_eq!(sub.recv_many(&mut buf, 8).await, 0);
    publ.close().await;
    node.shutdown(Duration::from_secs(1)).await;
}
