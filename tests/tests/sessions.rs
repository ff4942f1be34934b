//! Point-to-point sessions over real nodes: anycast open bound to one
//! instance, reliable delivery over a lossy path (frames dropped by the
//! node's route hook, above QUIC), delivery failure after N retries,
//! duplicate suppression, close, best effort, and failing fast when the
//! peer is gone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use slim_actors::{HookVerdict, NodeHandle, RoutedFrame};
use slim_client::session::SessionError;
use slim_client::session::SessionMux;
use slim_client::session::p2p::{P2pConfig, P2pEvent, P2pListener, P2pSession, Reliability};
use slim_client::session::reliable;
use slim_tests::*;

/// Overall limit of one test (its own waits have shorter ones).
const TEST_DEADLINE: Duration = Duration::from_secs(120);

/// Runs a test body under an overall deadline: a hang fails fast, naming the
/// test, instead of stalling the whole CI run (one once ate 26 minutes).
const T: Duration = Duration::from_secs(30);

async fn mux(pki: &Pki, node: &NodeHandle, n: &str) -> SessionMux {
    SessionMux::new(client(pki, node.local_addr(), n).await).0
}

async fn next(s: &mut P2pSession) -> P2pEvent {
    match tokio::time::timeout(T, s.recv()).await {
        Ok(Some(e)) => e,
        Ok(None) => panic!("session ended while waiting for an event"),
        Err(_) => panic!("no session event within {T:?}"),
    }
}

/// Drops a share of all routed frames (both directions: data and acks).
fn lossy(node: &NodeHandle, per_mille: u32, dropped: Arc<AtomicU64>) {
    node.set_route_hook(Some(Arc::new(move |_f: &RoutedFrame<'_>| {
        if rand::random_range(0..1000u32) < per_mille {
            dropped.fetch_add(1, Ordering::Relaxed);
            HookVerdict::Drop
        } else {
            HookVerdict::Forward
        }
    })));
}

/// Drops every frame published by `from` while `on` is set.
fn blackhole(node: &NodeHandle, from: String, on: Arc<AtomicBool>) {
    node.set_route_hook(Some(Arc::new(move |f: &RoutedFrame<'_>| {
        if on.load(Ordering::Relaxed) && f.from == from {
            HookVerdict::Drop
        } else {
            HookVerdict::Forward
        }
    })));
}

fn fast_reliable() -> P2pConfig {
    P2pConfig {
        reliability: Reliability::Reliable(reliable::Config {
            initial_rto: Duration::from_millis(20),
            max_rto: Duration::from_millis(100),
            max_retries: 3,
            ..reliable::Config::default()
        }),
        open_timeout: Duration::from_millis(200),
        ..P2pConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reliable_p2p_10000_messages_over_5_percent_loss() {
    deadline(
        TEST_DEADLINE,
        "reliable_p2p_10000_messages_over_5_percent_loss",
        async {
            init_tracing();
            let pki = Pki::new("example.org");
            let node = start_node(&pki, |_| {}).await;
            let a = mux(&pki, &node, "acme/p2p/sender").await;
            let b = mux(&pki, &node, "acme/p2p/echo").await;
            let mut listener = P2pListener::new(&b, P2pConfig::default()).unwrap();
            let dropped = Arc::new(AtomicU64::new(0));
            lossy(&node, 50, Arc::clone(&dropped));

            let accept = tokio::spawn(async move {
                let s = listener.accept().await.expect("a session");
                (s, listener)
            });
            let service = name("acme/p2p/echo");
            let mut s = P2pSession::open(&a, &service, P2pConfig::default())
                .await
                .expect("open over a lossy path");
            let (mut r, _listener) = accept.await.unwrap();
            assert_eq!(s.peer(), b.client().name(), "bound to the instance");
            assert_eq!(r.peer(), a.client().name());
            assert_eq!(
                r.peer_identity(),
                Some("spiffe://example.org/agent/acme-p2p-sender")
            );

            const N: u64 = 10_000;
            let tx = s.sender();
            let send = tokio::spawn(async move {
                for i in 0..N {
                    tx.send(seq_payload(i, 32)).await.expect("send");
                }
                tx
            });
            let mut seen = SeqSet::new(N);
            let mut expect = 0u64;
            while expect < N {
                match next(&mut r).await {
                    P2pEvent::Message { seq, payload } => {
                        assert_eq!(seq, expect, "session seq in order");
                        assert_eq!(payload_seq(&payload), expect, "payload in order");
                        assert!(seen.insert(expect), "no duplicate");
                        expect += 1;
                    }
                    other => panic!("unexpected event at {expect}: {other:?}"),
                }
            }
            assert_eq!(seen.count(), N);
            assert_eq!(seen.duplicates(), 0);
            assert!(seen.missing(N).is_empty());
            // Every wait below has its own deadline: a liveness hole here once hung
            // a whole CI run for 26 minutes (no await without a bound).
            let tx = tokio::time::timeout(T, send)
                .await
                .expect("the sends finished")
                .unwrap();
            tokio::time::timeout(T, tx.close())
                .await
                .expect("close answered within the deadline")
                .expect("close: everything acknowledged");
            assert_eq!(next(&mut r).await, P2pEvent::PeerClosed { sent: N });
            // The loss really happened and was repaired by the session layer.
            assert!(dropped.load(Ordering::Relaxed) > 0);
            let st = tokio::time::timeout(T, s.stats())
                .await
                .expect("sender stats answered")
                .unwrap();
            assert!(st.sender.retransmitted > 0, "{st:?}");
            assert_eq!(
                (st.sender.sent, st.sender.acked, st.sender.failed),
                (N, N, 0)
            );
            let rs = tokio::time::timeout(T, r.stats())
                .await
                .expect("receiver stats answered")
                .unwrap();
            assert_eq!(rs.receiver.delivered, N);
            // Nothing after the final event.
            assert!(
                tokio::time::timeout(Duration::from_secs(5), s.recv())
                    .await
                    .is_ok_and(|e| e.is_none() || matches!(e, Some(P2pEvent::PeerClosed { .. }))),
                "the closer's session ends"
            );
            node.set_route_hook(None);
            node.shutdown(Duration::from_secs(1)).await;
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_failed_after_n_retries_then_lost_reported() {
    deadline(
        TEST_DEADLINE,
        "delivery_failed_after_n_retries_then_lost_reported",
        async {
            init_tracing();
            let pki = Pki::new("example.org");
            let node = start_node(&pki, |_| {}).await;
            let a = mux(&pki, &node, "acme/p2p/a").await;
            let b = mux(&pki, &node, "acme/p2p/b").await;
            let mut listener = P2pListener::new(&b, fast_reliable()).unwrap();
            let accept = tokio::spawn(async move { listener.accept().await.expect("a session") });
            let mut s = P2pSession::open(&a, &name("acme/p2p/b"), fast_reliable())
                .await
                .unwrap();
            let mut r = accept.await.unwrap();

            let on = Arc::new(AtomicBool::new(true));
            blackhole(&node, a.client().name().to_string(), Arc::clone(&on));
            for i in 0..5u64 {
                assert_eq!(s.send(seq_payload(i, 8)).await.unwrap(), i);
            }
            let mut failed = Vec::new();
            while failed.len() < 5 {
                match next(&mut s).await {
                    P2pEvent::DeliveryFailed { seq, attempts } => {
                        assert_eq!(attempts, 4, "first transmission + max_retries");
                        failed.push(seq);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            failed.sort_unstable();
            assert_eq!(failed, vec![0, 1, 2, 3, 4]);

            // The path heals: the receiver learns from the next message that 0..5
            // were given up on and reports them, never skipping silently.
            on.store(false, Ordering::Relaxed);
            assert_eq!(s.send(seq_payload(5, 8)).await.unwrap(), 5);
            assert_eq!(
                next(&mut r).await,
                P2pEvent::Lost {
                    seqs: vec![0, 1, 2, 3, 4]
                }
            );
            match next(&mut r).await {
                P2pEvent::Message { seq: 5, payload } => assert_eq!(payload_seq(&payload), 5),
                other => panic!("unexpected {other:?}"),
            }
            node.set_route_hook(None);
            node.shutdown(Duration::from_secs(1)).await;
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_acks_cause_retransmissions_that_are_suppressed() {
    deadline(
        TEST_DEADLINE,
        "lost_acks_cause_retransmissions_that_are_suppressed",
        async {
            init_tracing();
            let pki = Pki::new("example.org");
            let node = start_node(&pki, |_| {}).await;
            let a = mux(&pki, &node, "acme/p2p/a").await;
            let b = mux(&pki, &node, "acme/p2p/b").await;
            let cfg = || P2pConfig {
                reliability: Reliability::Reliable(reliable::Config {
                    initial_rto: Duration::from_millis(20),
                    max_rto: Duration::from_millis(50),
                    max_retries: 1000,
                    ..reliable::Config::default()
                }),
                ..P2pConfig::default()
            };
            let mut listener = P2pListener::new(&b, cfg()).unwrap();
            let accept = tokio::spawn(async move { listener.accept().await.expect("a session") });
            let s = P2pSession::open(&a, &name("acme/p2p/b"), cfg())
                .await
                .unwrap();
            let mut r = accept.await.unwrap();

            // The receiver's acks vanish: the sender retransmits what did arrive.
            let on = Arc::new(AtomicBool::new(true));
            blackhole(&node, b.client().name().to_string(), Arc::clone(&on));
            const N: u64 = 20;
            for i in 0..N {
                s.send(seq_payload(i, 8)).await.unwrap();
            }
            for i in 0..N {
                match next(&mut r).await {
                    P2pEvent::Message { seq, .. } => assert_eq!(seq, i),
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eventually(T, "duplicates reach the receiver", || {
                let r = r.sender();
                async move { r.stats().await.is_ok_and(|st| st.receiver.duplicates > 0) }
            })
            .await;
            on.store(false, Ordering::Relaxed);
            assert_eventually(T, "everything acknowledged", || {
                let s = s.sender();
                async move { s.stats().await.is_ok_and(|st| st.sender.acked == N) }
            })
            .await;
            s.close().await.unwrap();
            // Exactly once: the close comes right after the N messages.
            assert_eq!(next(&mut r).await, P2pEvent::PeerClosed { sent: N });
            let st = r.stats().await.unwrap();
            assert_eq!(st.receiver.delivered, N);
            assert!(st.receiver.duplicates > 0);
            node.set_route_hook(None);
            node.shutdown(Duration::from_secs(1)).await;
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_directions_many_sessions_and_anycast_binding() {
    deadline(
        TEST_DEADLINE,
        "both_directions_many_sessions_and_anycast_binding",
        async {
            init_tracing();
            let pki = Pki::new("example.org");
            let node = start_node(&pki, |_| {}).await;
            let a = mux(&pki, &node, "acme/p2p/client").await;
            // Two instances of one service: each session sticks to the one that answered.
            let b1 = mux(&pki, &node, "acme/p2p/svc").await;
            let b2 = mux(&pki, &node, "acme/p2p/svc").await;
            for m in [&b1, &b2] {
                let mut l = P2pListener::new(m, P2pConfig::default()).unwrap();
                tokio::spawn(async move {
                    // Echo server: replies to each message with the same bytes.
                    while let Some(mut s) = l.accept().await {
                        tokio::spawn(async move {
                            while let Some(ev) = s.recv().await {
                                match ev {
                                    P2pEvent::Message { payload, .. } => {
                                        if s.send(payload).await.is_err() {
                                            return;
                                        }
                                    }
                                    _ => return,
                                }
                            }
                        });
                    }
                });
            }
            let svc = name("acme/p2p/svc");
            let mut sessions = Vec::new();
            for _ in 0..6 {
                sessions.push(
                    P2pSession::open(&a, &svc, P2pConfig::default())
                        .await
                        .unwrap(),
                );
            }
            let instances: std::collections::HashSet<_> =
                sessions.iter().map(|s| s.peer().clone()).collect();
            assert!(
                instances.contains(b1.client().name()) && instances.contains(b2.client().name())
            );
            // All sessions at once on one client connection, each in its own order.
            for round in 0..50u64 {
                for (k, s) in sessions.iter().enumerate() {
                    s.send(seq_payload(round * 100 + k as u64, 16))
                        .await
                        .unwrap();
                }
            }
            for (k, s) in sessions.iter_mut().enumerate() {
                for round in 0..50u64 {
                    match next(s).await {
                        P2pEvent::Message { seq, payload } => {
                            assert_eq!(seq, round);
                            assert_eq!(payload_seq(&payload), round * 100 + k as u64);
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
            for s in &sessions {
                s.close().await.unwrap();
            }
            node.shutdown(Duration::from_secs(1)).await;
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreliable_session_best_effort() {
    deadline(TEST_DEADLINE, "unreliable_session_best_effort", async {
        init_tracing();
        let pki = Pki::new("example.org");
        let node = start_node(&pki, |_| {}).await;
        let a = mux(&pki, &node, "acme/p2p/a").await;
        let b = mux(&pki, &node, "acme/p2p/b").await;
        let mut listener = P2pListener::new(&b, P2pConfig::default()).unwrap();
        let accept = tokio::spawn(async move { listener.accept().await.expect("a session") });
        let s = P2pSession::open(&a, &name("acme/p2p/b"), P2pConfig::unreliable())
            .await
            .unwrap();
        let mut r = accept.await.unwrap();
        assert!(
            !s.is_reliable() && !r.is_reliable(),
            "responder takes the initiator's mode"
        );
        // Without loss on the path, best effort delivers everything; with loss it
        // would not retransmit (no acks are ever sent).
        for i in 0..100u64 {
            s.send(seq_payload(i, 8)).await.unwrap();
        }
        let mut seen = SeqSet::new(100);
        while seen.count() < 100 {
            if let P2pEvent::Message { payload, .. } = next(&mut r).await {
                assert!(seen.insert(payload_seq(&payload)));
            }
        }
        // Over a lossy path nothing is repaired: some messages never arrive,
        // none twice, nothing retransmitted. The path is ordered, so once a
        // marker sent after the loss stops arrives, the rest is settled.
        let dropped = Arc::new(AtomicU64::new(0));
        lossy(&node, 200, Arc::clone(&dropped));
        for i in 100..600u64 {
            s.send(seq_payload(i, 8)).await.unwrap();
        }
        node.set_route_hook(None);
        s.send(seq_payload(600, 8)).await.unwrap();
        let mut lossy_seen = SeqSet::new(601);
        loop {
            match next(&mut r).await {
                P2pEvent::Message { payload, .. } => {
                    let n = payload_seq(&payload);
                    assert!(lossy_seen.insert(n), "no duplicates");
                    if n == 600 {
                        break;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(dropped.load(Ordering::Relaxed) > 0);
        assert!(lossy_seen.count() < 501, "lost messages stay lost");
        s.close().await.unwrap();
        assert_eq!(next(&mut r).await, P2pEvent::PeerClosed { sent: 601 });
        let st = s.stats().await.unwrap();
        assert_eq!(st.sender.sent, 601);
        assert_eq!(st.sender.retransmitted, 0);
        assert_eq!(st.receiver.acks_sent, 0, "best effort sends no acks");
        node.shutdown(Duration::from_secs(1)).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_responder_and_gone_peer_fail_fast_with_typed_errors() {
    deadline(TEST_DEADLINE, "no_responder_and_gone_peer_fail_fast_with_typed_errors", async {
    init_tracing();
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |_| {}).await;
    let a = mux(&pki, &node, "acme/p2p/a").await;
    let err = P2pSession::open(&a, &name("acme/p2p/nobody"), P2pConfig::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SessionError::NoResponder { name, .. } if name == "acme/p2p/nobody"),
        "{err:?}"
    );

    // A client that subscribes but runs no listener answers "no such session".
    let deaf = mux(&pki, &node, "acme/p2p/deaf").await;
    let err = P2pSession::open(&a, &name("acme/p2p/deaf"), P2pConfig::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SessionError::NoResponder { reason, .. } if reason == "no such session"),
        "{err:?}"
    );
    assert!(deaf.stats().unroutable >= 1);

    // The peer's session ends without us hearing its close (blackholed):
    // our next message is answered "no such session" and fails the session.
    let b = mux(&pki, &node, "acme/p2p/b").await;
    let mut listener = P2pListener::new(&b, fast_reliable()).unwrap();
    let accept = tokio::spawn(async move { listener.accept().await.expect("a session") });
    let mut s = P2pSession::open(&a, &name("acme/p2p/b"), fast_reliable())
        .await
        .unwrap();
    let r = accept.await.unwrap();
    let rid = r.id();
    let on = Arc::new(AtomicBool::new(true));
    blackhole(&node, b.client().name().to_string(), Arc::clone(&on));
    drop(r);
    assert_eventually(T, "the peer's session gave up its close and ended", || {
        let b = b.clone();
        async move { !b.is_registered(rid) }
    })
    .await;
    on.store(false, Ordering::Relaxed);
    s.send(seq_payload(0, 8)).await.unwrap();
    match next(&mut s).await {
        P2pEvent::Failed(SessionError::Unreachable { reason, .. }) => {
            assert!(reason.contains("no such session"), "{reason}")
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        s.send(seq_payload(1, 8)).await.is_err(),
        "a failed session refuses sends"
    );
    node.set_route_hook(None);
    node.shutdown(Duration::from_secs(1)).await;
    })
    .await
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mls_p2p_session_encrypts_end_to_end() {
    deadline(
        TEST_DEADLINE,
        "mls_p2p_session_encrypts_end_to_end",
        async {
            use slim_client::session::p2p::MlsIdentity;
            init_tracing();
            let pki = Pki::new("example.org");
            let node = start_node(&pki, |_| {}).await;
            // Every payload the node routes, to prove it never sees plaintext.
            let seen: Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Arc::default();
            let rec = Arc::clone(&seen);
            node.set_route_hook(Some(Arc::new(move |f: &RoutedFrame<'_>| {
                rec.lock().unwrap().push(f.payload.to_vec());
                HookVerdict::Forward
            })));
            let a = mux(&pki, &node, "acme/mls/a").await;
            let b = mux(&pki, &node, "acme/mls/b").await;
            let mls = |path: &str| MlsIdentity::new(&pki.identity(path)).unwrap();
            let with_mls = |id: MlsIdentity| P2pConfig {
                mls: Some(id),
                ..P2pConfig::default()
            };
            let mut listener = P2pListener::new(&b, with_mls(mls("agent/acme-mls-b"))).unwrap();
            let accept = tokio::spawn(async move { listener.accept().await.expect("a session") });
            let mut s =
                P2pSession::open(&a, &name("acme/mls/b"), with_mls(mls("agent/acme-mls-a")))
                    .await
                    .expect("MLS open");
            let mut r = accept.await.unwrap();

            let canary: [u8; 32] = rand::random();
            let back: [u8; 32] = rand::random();
            s.send(canary.to_vec()).await.unwrap();
            for i in 0..100u64 {
                s.send(seq_payload(i, 64)).await.unwrap();
            }
            match next(&mut r).await {
                P2pEvent::Message { seq: 0, payload } => assert_eq!(&payload[..], &canary),
                other => panic!("unexpected {other:?}"),
            }
            for i in 0..100u64 {
                match next(&mut r).await {
                    P2pEvent::Message { payload, .. } => assert_eq!(payload_seq(&payload), i),
                    other => panic!("unexpected {other:?}"),
                }
            }
            r.send(back.to_vec()).await.unwrap();
            match next(&mut s).await {
                P2pEvent::Message { payload, .. } => assert_eq!(&payload[..], &back),
                other => panic!("unexpected {other:?}"),
            }
            s.close().await.unwrap();
            assert_eq!(next(&mut r).await, P2pEvent::PeerClosed { sent: 101 });
            {
                let frames = seen.lock().unwrap();
                assert!(frames.len() > 100, "the hook saw the traffic");
                for f in frames.iter() {
                    assert!(
                        !contains(f, &canary) && !contains(f, &back),
                        "plaintext on the wire"
                    );
                    assert!(!contains(f, &seq_payload(7, 64)[..16]));
                }
            }
            node.set_route_hook(None);

            // A responder without MLS refuses an MLS open.
            let plain = mux(&pki, &node, "acme/mls/plain").await;
            let mut l = P2pListener::new(&plain, P2pConfig::default()).unwrap();
            tokio::spawn(async move { while l.accept().await.is_some() {} });
            let err = P2pSession::open(
                &a,
                &name("acme/mls/plain"),
                with_mls(mls("agent/acme-mls-a")),
            )
            .await
            .unwrap_err();
            assert!(matches!(err, SessionError::Refused(_)), "{err:?}");

            // A responder whose MLS credential is for another SPIFFE ID than its
            // authenticated connection is refused by the initiator.
            let liar = mux(&pki, &node, "acme/mls/liar").await;
            let mut l = P2pListener::new(&liar, with_mls(mls("agent/someone-else"))).unwrap();
            tokio::spawn(async move { while l.accept().await.is_some() {} });
            let err = P2pSession::open(
                &a,
                &name("acme/mls/liar"),
                with_mls(mls("agent/acme-mls-a")),
            )
            .await
            .unwrap_err();
            assert!(
                matches!(&err, SessionError::Mls(m) if m.contains("someone-else")),
                "{err:?}"
            );
            node.shutdown(Duration::from_secs(1)).await;
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mux_passes_raw_traffic_and_counts_bad_session_packets() {
    deadline(
        TEST_DEADLINE,
        "mux_passes_raw_traffic_and_counts_bad_session_packets",
        async {
            init_tracing();
            let pki = Pki::new("example.org");
            let node = start_node(&pki, |_| {}).await;
            let a = mux(&pki, &node, "acme/mux/a").await;
            let (b, mut raw) = SessionMux::new(client(&pki, node.local_addr(), "acme/mux/b").await);
            let to = b.client().name().clone();
            let m = slim_wire::Mode::Unicast;
            // Plain application bytes, a session-looking prefix with garbage after
            // it, and a valid packet for a session nobody has.
            a.client().publish(&to, m, b"hello").await.unwrap();
            a.client()
                .publish(&to, m, &[0x99, 1, 0xff, 0xff])
                .await
                .unwrap();
            let stray = slim_client::session::Packet::new(42, slim_client::session::Kind::Ack, "x");
            a.client()
                .publish(&to, m, &stray.encode().unwrap())
                .await
                .unwrap();
            for want in [&b"hello"[..], &[0x99, 1, 0xff, 0xff][..]] {
                match tokio::time::timeout(T, raw.recv()).await {
                    Ok(Some(slim_client::Event::Message(d))) => assert_eq!(&d.payload[..], want),
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eventually(T, "bad and stray packets counted", || {
                let b = b.clone();
                async move {
                    let st = b.stats();
                    st.malformed == 1 && st.unroutable == 1
                }
            })
            .await;
            // Node errors for untracked publishes reach the app receiver too.
            b.client()
                .publish(&name("acme/mux/nobody"), slim_wire::Mode::Anycast, b"x")
                .await
                .unwrap();
            match tokio::time::timeout(T, raw.recv()).await {
                Ok(Some(slim_client::Event::Error(e))) => {
                    assert_eq!(e.code, slim_wire::ErrorCode::NO_ROUTE)
                }
                other => panic!("unexpected {other:?}"),
            }
            // Registration is exclusive and released on drop; so are acceptors.
            let inbox = b.register(7, 8).unwrap();
            assert_eq!(
                b.register(7, 8).unwrap_err(),
                SessionError::AlreadyRegistered(7)
            );
            drop(inbox);
            assert!(!b.is_registered(7));
            let _again = b.register(7, 8).unwrap();
            let acc = b.acceptor(&[slim_client::session::Kind::Open], 8).unwrap();
            assert!(b.acceptor(&[slim_client::session::Kind::Open], 8).is_err());
            drop(acc);
            assert!(b.acceptor(&[slim_client::session::Kind::Open], 8).is_ok());
            node.shutdown(Duration::from_secs(1)).await;
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_pushes_back_without_loss() {
    deadline(TEST_DEADLINE, "slow_reader_pushes_back_without_loss", async {
    init_tracing();
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |_| {}).await;
    let a = mux(&pki, &node, "acme/p2p/fast").await;
    let b = mux(&pki, &node, "acme/p2p/slow").await;
    let cfg = || P2pConfig {
        reliability: Reliability::Reliable(reliable::Config {
            window: 64,
            max_out_of_order: 64,
            ..reliable::Config::default()
        }),
        events: 8,
        inbox: 64,
        ..P2pConfig::default()
    };
    let mut listener = P2pListener::new(&b, cfg()).unwrap();
    let accept = tokio::spawn(async move { listener.accept().await.expect("a session") });
    let s = P2pSession::open(&a, &name("acme/p2p/slow"), cfg())
        .await
        .unwrap();
    let mut r = accept.await.unwrap();
    const N: u64 = 2_000;
    let tx = s.sender();
    let send = tokio::spawn(async move {
        for i in 0..N {
            tx.send(seq_payload(i, 8)).await.unwrap();
        }
        // Closing while the reader is still behind: the reader still gets
        // everything, then the close.
        tx.close().await.unwrap();
    });
    // Nobody reads yet: the sender fills its window and waits.
    assert_eventually(T, "the sender fills its window", || {
        let s = s.sender();
        async move { s.stats().await.is_ok_and(|st| st.sender.sent >= 64) }
    })
    .await;
    for i in 0..N {
        let ev = match tokio::time::timeout(T, r.recv()).await {
            Ok(Some(e)) => e,
            other => panic!(
                "no event for message {i} ({other:?}): sender {:?}, receiver {:?}, muxes {:?} {:?}",
                s.sender().stats().await,
                r.stats().await,
                a.stats(),
                b.stats()
            ),
        };
        match ev {
            P2pEvent::Message { seq, payload } => {
                assert_eq!((seq, payload_seq(&payload)), (i, i));
            }
            other => panic!("unexpected at {i}: {other:?}"),
        }
    }
    assert_eq!(next(&mut r).await, P2pEvent::PeerClosed { sent: N });
    send.await.unwrap();
    node.shutdown(Duration::from_secs(1)).await;
    })
    .await
}

/// A send waiting for window room holds up the command queue; `stats` must
/// not wait behind it (the slow-reader test polls it while the window is
/// full and the reader has not started reading).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_are_answered_while_a_send_waits_for_the_window() {
    deadline(
        TEST_DEADLINE,
        "stats_are_answered_while_a_send_waits_for_the_window",
        async {
            init_tracing();
            let pki = Pki::new("example.org");
            let node = start_node(&pki, |_| {}).await;
            let a = mux(&pki, &node, "acme/p2p/parked").await;
            let b = mux(&pki, &node, "acme/p2p/silent").await;
            let cfg = || P2pConfig {
                reliability: Reliability::Reliable(reliable::Config {
                    window: 4,
                    max_out_of_order: 4,
                    ..reliable::Config::default()
                }),
                ..P2pConfig::default()
            };
            let mut listener = P2pListener::new(&b, cfg()).unwrap();
            let accept = tokio::spawn(async move { listener.accept().await.expect("a session") });
            let s = P2pSession::open(&a, &name("acme/p2p/silent"), cfg())
                .await
                .unwrap();
            let _r = accept.await.unwrap();
            // No ack reaches the sender: its window fills and stays full.
            let on = Arc::new(AtomicBool::new(true));
            blackhole(&node, b.client().name().to_string(), Arc::clone(&on));
            for i in 0..4u64 {
                assert_eq!(s.send(seq_payload(i, 8)).await.unwrap(), i);
            }
            // Queued before the stats request: the session task parks it first.
            assert!(s.sender().try_send(seq_payload(4, 8)));
            let st = tokio::time::timeout(T, s.stats())
                .await
                .expect("stats while a send waits for the window")
                .unwrap();
            assert_eq!((st.sender.sent, st.sender.failed), (4, 0));
            node.shutdown(Duration::from_secs(1)).await;
        },
    )
    .await
}

/// An application that only sends never reads its events: once its event
/// queue is full of `DeliveryFailed`s the session must still take acks and
/// reuse the window room of what it gave up on, not wedge its sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_that_never_reads_its_events_keeps_sending() {
    deadline(
        TEST_DEADLINE,
        "a_sender_that_never_reads_its_events_keeps_sending",
        async {
            init_tracing();
            let pki = Pki::new("example.org");
            let node = start_node(&pki, |_| {}).await;
            let a = mux(&pki, &node, "acme/p2p/deaf").await;
            let b = mux(&pki, &node, "acme/p2p/listener").await;
            let cfg = || {
                let mut c = fast_reliable();
                if let Reliability::Reliable(r) = &mut c.reliability {
                    r.window = 4;
                    r.max_out_of_order = 4;
                }
                c.events = 1;
                c
            };
            let mut listener = P2pListener::new(&b, cfg()).unwrap();
            let accept = tokio::spawn(async move { listener.accept().await.expect("a session") });
            let s = P2pSession::open(&a, &name("acme/p2p/listener"), cfg())
                .await
                .unwrap();
            let mut r = accept.await.unwrap();
            // Three messages are given up on: one `DeliveryFailed` fills the
            // sender's (never read) event queue, the next ones wait behind it.
            let on = Arc::new(AtomicBool::new(true));
            blackhole(&node, a.client().name().to_string(), Arc::clone(&on));
            for i in 0..3u64 {
                assert_eq!(s.send(seq_payload(i, 8)).await.unwrap(), i);
            }
            assert_eventually(T, "the sender gives up on the first three", || {
                let s = s.sender();
                async move { s.stats().await.is_ok_and(|st| st.sender.failed >= 3) }
            })
            .await;
            on.store(false, Ordering::Relaxed);
            // Several windows' worth: needs acks, which the sender must still read.
            const N: u64 = 40;
            let tx = s.sender();
            let send = tokio::spawn(async move {
                for i in 3..N {
                    assert_eq!(tx.send(seq_payload(i, 8)).await.unwrap(), i);
                }
            });
            let mut i = 3;
            while i < N {
                match next(&mut r).await {
                    P2pEvent::Lost { seqs } => assert!(seqs.iter().all(|&q| q < 3), "{seqs:?}"),
                    P2pEvent::Message { seq, payload } => {
                        assert_eq!((seq, payload_seq(&payload)), (i, i));
                        i += 1;
                    }
                    other => panic!("unexpected at {i}: {other:?}"),
                }
            }
            tokio::time::timeout(T, send)
                .await
                .expect("every send completes")
                .unwrap();
            node.shutdown(Duration::from_secs(1)).await;
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reliable_session_survives_a_node_restart() {
    deadline(
        TEST_DEADLINE,
        "reliable_session_survives_a_node_restart",
        async {
            use slim_client::ConnState;
            init_tracing();
            let pki = Pki::new("example.org");
            let port = free_udp_port();
            let listen: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let node = start_node(&pki, |c| c.listen = listen).await;
            let a = SessionMux::new(client(&pki, listen, "acme/re/a").await).0;
            let b = SessionMux::new(client(&pki, listen, "acme/re/b").await).0;
            let mut listener = P2pListener::new(&b, P2pConfig::default()).unwrap();
            let accept = tokio::spawn(async move { listener.accept().await.expect("a session") });
            let s = P2pSession::open(&a, &name("acme/re/b"), P2pConfig::default())
                .await
                .unwrap();
            let mut r = accept.await.unwrap();
            for i in 0..50u64 {
                s.send(seq_payload(i, 8)).await.unwrap();
            }
            for i in 0..50u64 {
                assert!(matches!(next(&mut r).await, P2pEvent::Message { seq, .. } if seq == i));
            }

            node.shutdown(Duration::from_secs(1)).await;
            for m in [&a, &b] {
                let st = m.client().state();
                assert_eventually(T, "client notices the node is gone", || {
                    let s = st.borrow().clone();
                    async move { matches!(s, ConnState::Reconnecting { .. }) }
                })
                .await;
            }
            // Sent while the node is down: queued, lost with the old connection or
            // refused while the peer has not reconnected yet; retransmission repairs it.
            for i in 50..100u64 {
                s.send(seq_payload(i, 8)).await.unwrap();
            }
            let node = start_node(&pki, |c| c.listen = listen).await;
            for i in 50..100u64 {
                match next(&mut r).await {
                    P2pEvent::Message { seq, payload } => {
                        assert_eq!((seq, payload_seq(&payload)), (i, i))
                    }
                    other => panic!("unexpected at {i}: {other:?}"),
                }
            }
            s.close().await.unwrap();
            assert_eq!(next(&mut r).await, P2pEvent::PeerClosed { sent: 100 });
            node.shutdown(Duration::from_secs(1)).await;
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_vanishes_fails_the_session_after_the_grace() {
    deadline(
        TEST_DEADLINE,
        "a_peer_that_vanishes_fails_the_session_after_the_grace",
        async {
            init_tracing();
            let pki = Pki::new("example.org");
            let node = start_node(&pki, |_| {}).await;
            let a = mux(&pki, &node, "acme/p2p/a").await;
            let b = mux(&pki, &node, "acme/p2p/b").await;
            let cfg = || P2pConfig {
                peer_absent_grace: Duration::from_millis(300),
                ..fast_reliable()
            };
            let mut listener = P2pListener::new(&b, cfg()).unwrap();
            let accept = tokio::spawn(async move { listener.accept().await.expect("a session") });
            let mut s = P2pSession::open(&a, &name("acme/p2p/b"), cfg())
                .await
                .unwrap();
            let r = accept.await.unwrap();
            let rid = r.id();
            // The peer's process goes away without a word: its close is blackholed,
            // then its client disconnects.
            let on = Arc::new(AtomicBool::new(true));
            blackhole(&node, b.client().name().to_string(), Arc::clone(&on));
            drop(r);
            assert_eventually(T, "the peer's session ended", || {
                let b = b.clone();
                async move { !b.is_registered(rid) }
            })
            .await;
            let gone = b.client().name().to_string();
            drop(b);
            assert_eventually(T, "the node forgot the peer", || {
                let gone = gone.clone();
                let node = &node;
                async move { node.registry().lookup(&gone).is_none() }
            })
            .await;
            on.store(false, Ordering::Relaxed);
            s.send(seq_payload(0, 8)).await.unwrap();
            loop {
                match next(&mut s).await {
                    P2pEvent::Failed(SessionError::Unreachable { code, .. }) => {
                        assert_eq!(code, slim_wire::ErrorCode::NO_ROUTE.0);
                        break;
                    }
                    // The retry budget may run out first; the failure still follows.
                    P2pEvent::DeliveryFailed { seq: 0, .. } => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            node.set_route_hook(None);
            node.shutdown(Duration::from_secs(1)).await;
        },
    )
    .await
}

/// Throughput of one reliable session under loss (the route hook drops a
/// share of every routed frame, data and acks alike). Not a pass/fail test:
/// prints one line per loss rate.
///
/// `cargo test -p slim-tests --test sessions -- --ignored --nocapture reliable_session_throughput_under_loss`
/// (`SLIM_BENCH_MSGS` messages per run, 20 000 by default; `SLIM_BENCH_LOSS`
/// a comma-separated list of per-mille loss rates, `0,10,50` by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by hand, see docs/BENCHMARKS.md"]
async fn reliable_session_throughput_under_loss() {
    deadline(
        TEST_DEADLINE,
        "reliable_session_throughput_under_loss",
        async {
            init_tracing();
            let n: u64 = std::env::var("SLIM_BENCH_MSGS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(20_000);
            let rates: Vec<u32> = std::env::var("SLIM_BENCH_LOSS")
                .ok()
                .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
                .unwrap_or_else(|| vec![0, 10, 50]);
            for per_mille in rates {
                let pki = Pki::new("example.org");
                let node = start_node(&pki, |_| {}).await;
                let a = mux(&pki, &node, "acme/bench/sender").await;
                let b = mux(&pki, &node, "acme/bench/echo").await;
                let mut listener = P2pListener::new(&b, P2pConfig::default()).unwrap();
                let accept = tokio::spawn(async move {
                    let s = listener.accept().await.expect("a session");
                    (s, listener)
                });
                let s = P2pSession::open(&a, &name("acme/bench/echo"), P2pConfig::default())
                    .await
                    .expect("open");
                let (mut r, _listener) = accept.await.unwrap();
                // Loss starts after the handshake: the figure is the transfer's.
                let dropped = Arc::new(AtomicU64::new(0));
                lossy(&node, per_mille, Arc::clone(&dropped));
                let start = std::time::Instant::now();
                let tx = s.sender();
                let send = tokio::spawn(async move {
                    for i in 0..n {
                        tx.send(seq_payload(i, 32)).await.expect("send");
                    }
                });
                let mut got = 0u64;
                while got < n {
                    match next(&mut r).await {
                        P2pEvent::Message { .. } => got += 1,
                        other => panic!("unexpected event at {got}: {other:?}"),
                    }
                }
                let secs = start.elapsed().as_secs_f64();
                send.await.unwrap();
                let st = s.stats().await.unwrap();
                println!(
                    "loss {:>4.1} %: {n} msgs in {secs:>7.3} s = {:>8.0} msgs/s, \
             retransmitted {}, frames dropped {}",
                    f64::from(per_mille) / 10.0,
                    n as f64 / secs,
                    st.sender.retransmitted,
                    dropped.load(Ordering::Relaxed),
                );
                if std::env::var_os("SLIM_BENCH_VERBOSE").is_some() {
                    println!("  sender {:?}", st.sender);
                }
                node.set_route_hook(None);
                s.close().await.ok();
                node.shutdown(Duration::from_secs(1)).await;
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_responder_whose_initiator_vanishes_ends_with_an_idle_timeout() {
    deadline(
        TEST_DEADLINE,
        "a_responder_whose_initiator_vanishes_ends_with_an_idle_timeout",
        async {
            init_tracing();
            let pki = Pki::new("example.org");
            let node = start_node(&pki, |_| {}).await;
            let a = mux(&pki, &node, "acme/p2p/a").await;
            let b = mux(&pki, &node, "acme/p2p/b").await;
            let idle = Duration::from_millis(600);
            let cfg = || P2pConfig {
                keep_alive: Some(Duration::from_millis(100)),
                idle_timeout: Some(idle),
                ..fast_reliable()
            };
            let mut listener = P2pListener::new(&b, cfg()).unwrap();
            let accept = tokio::spawn(async move { listener.accept().await.expect("a session") });
            let s = P2pSession::open(&a, &name("acme/p2p/b"), cfg())
                .await
                .unwrap();
            let mut r = accept.await.unwrap();
            s.send(seq_payload(0, 8)).await.unwrap();
            assert!(matches!(
                next(&mut r).await,
                P2pEvent::Message { seq: 0, .. }
            ));
            // Quiet for several idle timeouts: keep-alives hold it open.
            tokio::time::sleep(idle * 3).await;
            s.send(seq_payload(1, 8)).await.unwrap();
            assert!(matches!(
                next(&mut r).await,
                P2pEvent::Message { seq: 1, .. }
            ));
            // The initiator vanishes without a word: everything it publishes
            // is lost (its client stays connected, so the node reports no
            // missing route either).
            let on = Arc::new(AtomicBool::new(true));
            blackhole(&node, a.client().name().to_string(), Arc::clone(&on));
            drop(s);
            assert_eq!(
                next(&mut r).await,
                P2pEvent::Failed(SessionError::IdleTimeout(idle))
            );
            assert!(r.recv().await.is_none(), "the responder's session ended");
            node.set_route_hook(None);
            node.shutdown(Duration::from_secs(1)).await;
        },
    )
    .await
}
