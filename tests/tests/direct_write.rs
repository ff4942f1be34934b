//! Direct writes: a delivery that finds its subscriber's queue empty is
//! written onto the subscriber's stream by the publisher's reader (no hop
//! through the writer task), and so is a forward that finds its peer link's
//! queue empty. Order and completeness must not change: a request/reply
//! exchange goes direct both ways, on one node and across a link, bursts
//! that queue mix with single messages that go direct, and a frame QUIC
//! takes only in part (the subscriber's window is full) is finished before
//! anything queued behind it.

use std::time::Duration;

use slim_actors::{ConnStats, SlowAction, SlowConsumerPolicy};
use slim_tests::*;
use slim_wire::Mode;

/// Reads messages `next..upto` from `sub`, each whole, unchanged and in order.
async fn read_in_order(sub: &slim_client::Client, next: &mut u64, upto: u64, size: usize) {
    while *next < upto {
        let d = next_message(sub, Duration::from_secs(10)).await;
        assert_eq!(d.payload.len(), size, "a delivery was cut or merged");
        let got = payload_seq(&d.payload);
        assert_eq!(got, *next, "out of order");
        assert_eq!(
            &d.payload[..],
            &seq_payload(got, size)[..],
            "payload changed"
        );
        *next += 1;
    }
}

/// `n` requests to `svc`, one at a time, each answered by `responder`
/// (which echoes it back) before the next; replies checked in order.
/// Returns the responder once it has answered all of them.
async fn request_reply(
    requester: &slim_client::Client,
    responder: slim_client::Client,
    svc: &slim_wire::Name,
    n: u64,
) -> slim_client::Client {
    let echo = tokio::spawn(async move {
        for _ in 0..n {
            let d = next_message(&responder, Duration::from_secs(10)).await;
            responder
                .publish(&d.from, Mode::Unicast, &d.payload)
                .await
                .unwrap();
        }
        responder
    });
    for seq in 0..n {
        requester
            .publish(svc, Mode::Anycast, &seq_payload(seq, 64))
            .await
            .unwrap();
        let reply = next_message(requester, Duration::from_secs(10)).await;
        assert_eq!(payload_seq(&reply.payload), seq, "reply out of order");
    }
    echo.await.unwrap()
}

fn stats(node: &slim_actors::NodeHandle, who: &slim_client::Client) -> ConnStats {
    node.connections()
        .into_iter()
        .find(|c| c.name == who.name().as_str())
        .expect("connection listed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reply_is_written_directly_both_ways() {
    init_tracing();
    const N: u64 = 300;
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |_| {}).await;
    let addr = node.local_addr();
    let svc = name("acme/rr/svc");
    let responder = client(&pki, addr, "acme/rr/responder").await;
    responder.subscribe(&svc).await.unwrap();
    let requester = client(&pki, addr, "acme/rr/requester").await;
    let responder = request_reply(&requester, responder, &svc, N).await;
    let (req, rsp) = (stats(&node, &requester), stats(&node, &responder));
    println!(
        "direct writes: to the responder {} of {N}, to the requester {} of {N}",
        rsp.direct, req.direct
    );
    // One request at a time: each is alone in its read and finds the other
    // side's queue empty, unless a pong or ack happened to be queued.
    assert!(
        rsp.direct > 0 && req.direct > 0,
        "no direct write: {rsp:?} {req:?}"
    );
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partly_written_frame_is_finished_before_what_follows() {
    init_tracing();
    const N: u64 = 60;
    const SIZE: usize = 3000;
    let pki = Pki::new("example.org");
    // The subscriber is slow on purpose here; nobody is cut for it.
    let node = start_node(&pki, |c| {
        c.queue.policy = SlowConsumerPolicy::wait(Duration::from_secs(120), SlowAction::Drop);
    })
    .await;
    let addr = node.local_addr();
    let chan = name("acme/carry/chan");
    // A 16 KiB stream window and a one-message inbox: the SDK stops reading
    // after a message or two, and the node's sends soon find the window full
    // in the middle of a frame.
    let mut cfg = client_config(&pki, addr, "acme/carry/sub");
    cfg.inbound_capacity = 1;
    cfg.stream_window = 16 * 1024;
    let sub = slim_client::Client::connect(cfg).await.unwrap();
    sub.subscribe(&chan).await.unwrap();
    // A second subscriber that reads at once tells when the node has routed
    // a message.
    let witness = client(&pki, addr, "acme/carry/witness").await;
    witness.subscribe(&chan).await.unwrap();
    let publ = client(&pki, addr, "acme/carry/pub").await;

    // One message at a time, each published once the last one was routed and
    // the subscriber's queue is empty (so it goes direct), until a direct
    // write was carried. A message that was queued instead (a ping read with
    // it) leaves the writer blocked on the full window: then the subscriber
    // reads what it has, and the attempt goes on.
    let mut seq = 0;
    let mut next = 0;
    while stats(&node, &sub).carried == 0 {
        assert!(
            seq < N,
            "no frame was written in part: {:?}",
            stats(&node, &sub)
        );
        publ.publish(&chan, Mode::Multicast, &seq_payload(seq, SIZE))
            .await
            .unwrap();
        let d = next_message(&witness, Duration::from_secs(10)).await;
        assert_eq!(payload_seq(&d.payload), seq);
        seq += 1;
        let until = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            let s = stats(&node, &sub);
            if s.queued_bytes == 0 || s.carried > 0 {
                break;
            }
            if tokio::time::Instant::now() >= until {
                read_in_order(&sub, &mut next, seq, SIZE).await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let carried_at = seq;
    // The rest queue behind the carried frame.
    for s in seq..N {
        publ.publish(&chan, Mode::Multicast, &seq_payload(s, SIZE))
            .await
            .unwrap();
    }
    read_in_order(&sub, &mut next, N, SIZE).await;
    let s = stats(&node, &sub);
    println!(
        "carried at message {carried_at}; direct {} carried {} dropped {}",
        s.direct, s.carried, s.dropped
    );
    assert_eq!(s.dropped, 0);
    assert_eq!(s.queued_bytes, 0, "something is left unwritten");
    node.shutdown(Duration::from_secs(1)).await;
}

fn link_to(node: &slim_actors::NodeHandle, peer: &str) -> slim_actors::LinkInfo {
    node.links()
        .into_iter()
        .find(|l| l.peer_node_id == peer && l.state == slim_actors::LinkState::Up)
        .expect("link up")
}

/// Request/reply across a peer link: each request is alone on node A's
/// link and each reply alone on node B's, so the readers write them onto
/// the links themselves. Then bursts of 1 to 40 messages: a burst's first
/// runs queue (more of the read is behind them) while its last may go
/// direct, so direct and queued writes alternate on one link, and the
/// subscriber must still get every message once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_are_written_directly_onto_an_idle_link_in_order() {
    init_tracing();
    const N: u64 = 200;
    let pki = Pki::new("example.org");
    let b = start_peer_node(&pki, "node-b", vec![], |_| {}).await;
    let a = start_peer_node(&pki, "node-a", vec![peer_spec(&b)], |_| {}).await;
    let svc = name("acme/xdirect/svc");
    let responder = client(&pki, b.local_addr(), "acme/xdirect/responder").await;
    responder.subscribe(&svc).await.unwrap();
    let requester = client(&pki, a.local_addr(), "acme/xdirect/requester").await;
    assert_eventually(
        Duration::from_secs(10),
        "node-a routes the service to node-b",
        || async { routes_to(&a, svc.as_str(), "node-b") },
    )
    .await;
    // Replies go to the requester's own name: node-b must know it too, or
    // the first reply meets "no route" and the exchange waits out its 10 s.
    assert_eventually(
        Duration::from_secs(10),
        "node-b routes the requester to node-a",
        || async { routes_to(&b, requester.name().as_str(), "node-a") },
    )
    .await;
    let responder = request_reply(&requester, responder, &svc, N).await;
    let (ab, ba) = (link_to(&a, "node-b"), link_to(&b, "node-a"));
    println!(
        "direct: requests {} of {} frames out on node-a's link, replies {} of {} on node-b's",
        ab.direct_frames, ab.frames_out, ba.direct_frames, ba.frames_out
    );
    // One request at a time: each is alone in its read and finds the link's
    // queue empty, unless a pong or an interest update was queued then.
    assert!(
        ab.direct_frames > N / 2 && ba.direct_frames > N / 2,
        "forwards did not go direct: {ab:?} {ba:?}"
    );
    assert!(ab.frames_out >= N && ba.frames_out >= N, "{ab:?} {ba:?}");
    assert!(ab.direct_frames <= ab.frames_out && ba.direct_frames <= ba.frames_out);

    // Bursts: responder now just reads, in order.
    let chan = name("acme/xdirect/chan");
    responder.subscribe(&chan).await.unwrap();
    assert_eventually(
        Duration::from_secs(10),
        "node-a routes the channel to node-b",
        || async { routes_to(&a, chan.as_str(), "node-b") },
    )
    .await;
    let mut next = 0;
    let mut seq = 0;
    for burst in (1..=40u64).chain((1..=40).rev()) {
        for _ in 0..burst {
            requester
                .publish(&chan, Mode::Multicast, &seq_payload(seq, 200))
                .await
                .unwrap();
            seq += 1;
        }
        read_in_order(&responder, &mut next, seq, 200).await;
    }
    let ab = link_to(&a, "node-b");
    println!("after the bursts: {ab:?}");
    assert_eq!(ab.drops, 0);
    for node in [a, b] {
        node.shutdown(Duration::from_secs(1)).await;
    }
}
