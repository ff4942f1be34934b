//! Request/response RPC over point-to-point sessions on a real node: unary
//! round trips, deadline expiry, no responder, server streaming of 1,000
//! responses in order with end of stream, concurrent calls on one client,
//! responder errors, and a stream over a lossy path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use slim_actors::{HookVerdict, NodeHandle, RoutedFrame};
use slim_client::session::SessionMux;
use slim_client::session::rpc::{RpcClient, RpcConfig, RpcError, RpcRequest, RpcServer};
use slim_tests::*;

/// Overall limit of one test (its own waits have shorter ones).
const TEST_DEADLINE: Duration = Duration::from_secs(120);

/// Runs a test body under an overall deadline: a hang fails fast, naming the
/// test, instead of stalling the whole CI run (one once ate 26 minutes).
const T: Duration = Duration::from_secs(30);

async fn mux(pki: &Pki, node: &NodeHandle, n: &str) -> SessionMux {
    SessionMux::new(client(pki, node.local_addr(), n).await).0
}

/// A responder: `echo:X` → X; `stream:N` → N items then end; `hang` → kept
/// unanswered; `fail` → error.
fn spawn_responder(mut server: RpcServer, hung: Arc<std::sync::Mutex<Vec<RpcRequest>>>) {
    tokio::spawn(async move {
        while let Some(req) = server.next().await {
            let hung = Arc::clone(&hung);
            tokio::spawn(async move {
                let body = String::from_utf8_lossy(&req.payload).into_owned();
                if let Some(x) = body.strip_prefix("echo:") {
                    let _ = req.responder.reply(format!("{x}@{}", req.from)).await;
                } else if let Some(n) = body.strip_prefix("stream:") {
                    let n: u64 = n.parse().expect("count");
                    let mut r = req.responder;
                    for i in 0..n {
                        if r.send(seq_payload(i, 16)).await.is_err() {
                            return;
                        }
                    }
                    let _ = r.end().await;
                } else if body == "drop" {
                    drop(req);
                } else if body == "hang" {
                    hung.lock().unwrap().push(req);
                } else {
                    let _ = req.responder.fail("no such method").await;
                }
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_deadline_no_responder_stream_and_concurrency() {
    deadline(
        TEST_DEADLINE,
        "unary_deadline_no_responder_stream_and_concurrency",
        async {
            init_tracing();
            let pki = Pki::new("example.org");
            let node = start_node(&pki, |_| {}).await;
            let server_mux = mux(&pki, &node, "acme/rpc/echo").await;
            let hung = Arc::new(std::sync::Mutex::new(Vec::new()));
            spawn_responder(
                RpcServer::new(&server_mux, RpcConfig::default()).unwrap(),
                Arc::clone(&hung),
            );
            let a = mux(&pki, &node, "acme/rpc/caller").await;
            let rpc = RpcClient::new(&a, RpcConfig::default());
            let svc = name("acme/rpc/echo");

            // Unary round trips; the responder sees the authenticated caller.
            for i in 0..20 {
                let r = rpc.request(&svc, format!("echo:{i}"), T).await.unwrap();
                assert_eq!(r, format!("{i}@{}", a.client().name()).as_bytes());
            }

            // Deadline expiry: the responder holds the request unanswered.
            let err = rpc
                .request(&svc, "hang", Duration::from_millis(300))
                .await
                .unwrap_err();
            assert_eq!(err, RpcError::Timeout(Duration::from_millis(300)));
            assert_eventually(T, "the responder sees the cancel", || {
                let hung = Arc::clone(&hung);
                async move {
                    hung.lock()
                        .unwrap()
                        .first()
                        .is_some_and(|r| r.responder.is_cancelled())
                }
            })
            .await;
            {
                let h = hung.lock().unwrap();
                let req = &h[0];
                assert_eq!(
                    req.from_identity.as_deref(),
                    Some("spiffe://example.org/agent/acme-rpc-caller")
                );
                // The requester's remaining time travelled with the request.
                assert!(req.deadline <= tokio::time::Instant::now() + Duration::from_millis(300));
            }

            // No responder: the node's NO_ROUTE, as a typed error.
            let err = rpc
                .request(&name("acme/rpc/nobody"), "echo:x", T)
                .await
                .unwrap_err();
            assert_eq!(
                err,
                RpcError::NoResponder {
                    name: "acme/rpc/nobody".into()
                }
            );
            // A responder error is typed too.
            assert_eq!(
                rpc.request(&svc, "frobnicate", T).await.unwrap_err(),
                RpcError::Remote("no such method".into())
            );

            // A responder that drops the request fails the call at once.
            assert_eq!(
                rpc.request(&svc, "drop", T).await.unwrap_err(),
                RpcError::Remote("the responder dropped the request".into())
            );

            // Server streaming: 1,000 responses in order, then end of stream.
            let mut stream = rpc.request_stream(&svc, "stream:1000", T).await.unwrap();
            for i in 0..1000u64 {
                let item = stream.next().await.expect("an item").expect("not an error");
                assert_eq!(payload_seq(&item), i, "in order");
            }
            assert!(stream.next().await.is_none(), "end of stream");
            assert!(stream.next().await.is_none(), "stays ended");

            // Concurrent calls on one client, unary and streaming mixed.
            let rpc = Arc::new(rpc);
            let mut tasks = tokio::task::JoinSet::new();
            for k in 0..32u64 {
                let rpc = Arc::clone(&rpc);
                let svc = svc.clone();
                let me = a.client().name().to_string();
                tasks.spawn(async move {
                    if k % 4 == 0 {
                        let mut s = rpc.request_stream(&svc, "stream:100", T).await.unwrap();
                        let mut n = 0;
                        while let Some(item) = s.next().await {
                            assert_eq!(payload_seq(&item.unwrap()), n);
                            n += 1;
                        }
                        assert_eq!(n, 100);
                    } else {
                        let r = rpc.request(&svc, format!("echo:{k}"), T).await.unwrap();
                        assert_eq!(r, format!("{k}@{me}").as_bytes());
                    }
                });
            }
            while let Some(r) = tasks.join_next().await {
                r.unwrap();
            }

            // The one-off `request(name, bytes, deadline)` works as well.
            let r = a.request(&svc, "echo:once", T).await.unwrap();
            assert_eq!(r, format!("once@{}", a.client().name()).as_bytes());
            node.shutdown(Duration::from_secs(1)).await;
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_in_order_over_a_lossy_path() {
    deadline(TEST_DEADLINE, "stream_in_order_over_a_lossy_path", async {
        init_tracing();
        let pki = Pki::new("example.org");
        let node = start_node(&pki, |_| {}).await;
        let hung = Arc::new(std::sync::Mutex::new(Vec::new()));
        let server_mux = mux(&pki, &node, "acme/rpc/echo").await;
        let server = RpcServer::new(&server_mux, RpcConfig::default()).unwrap();
        spawn_responder(server, Arc::clone(&hung));
        let a = mux(&pki, &node, "acme/rpc/caller").await;
        let rpc = RpcClient::new(&a, RpcConfig::default());
        let svc = name("acme/rpc/echo");

        let dropped = Arc::new(AtomicU64::new(0));
        let d = Arc::clone(&dropped);
        node.set_route_hook(Some(Arc::new(move |_f: &RoutedFrame<'_>| {
            if rand::random_range(0..100u32) < 5 {
                d.fetch_add(1, Ordering::Relaxed);
                HookVerdict::Drop
            } else {
                HookVerdict::Forward
            }
        })));
        let mut stream = rpc.request_stream(&svc, "stream:1000", T).await.unwrap();
        for i in 0..1000u64 {
            let item = stream.next().await.expect("an item").expect("not an error");
            assert_eq!(payload_seq(&item), i);
        }
        assert!(stream.next().await.is_none());
        assert!(dropped.load(Ordering::Relaxed) > 0, "loss was injected");
        node.set_route_hook(None);

        let r = rpc.request(&svc, "echo:after", T).await.unwrap();
        assert!(r.starts_with(b"after@"));
        node.shutdown(Duration::from_secs(1)).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_over_mls_sessions() {
    deadline(TEST_DEADLINE, "rpc_over_mls_sessions", async {
        use slim_client::session::p2p::{MlsIdentity, P2pConfig};
        init_tracing();
        let pki = Pki::new("example.org");
        let node = start_node(&pki, |_| {}).await;
        let seen: Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Arc::default();
        let rec = Arc::clone(&seen);
        node.set_route_hook(Some(Arc::new(move |f: &RoutedFrame<'_>| {
            rec.lock().unwrap().push(f.payload.to_vec());
            HookVerdict::Forward
        })));
        let cfg = |path: &str| RpcConfig {
            session: P2pConfig {
                mls: Some(MlsIdentity::new(&pki.identity(path)).unwrap()),
                ..P2pConfig::default()
            },
            ..RpcConfig::default()
        };
        let server_mux = mux(&pki, &node, "acme/rpc/secret").await;
        spawn_responder(
            RpcServer::new(&server_mux, cfg("agent/acme-rpc-secret")).unwrap(),
            Arc::default(),
        );
        let a = mux(&pki, &node, "acme/rpc/caller").await;
        let rpc = RpcClient::new(&a, cfg("agent/acme-rpc-caller"));
        let svc = name("acme/rpc/secret");
        let canary = format!("{:032x}", rand::random::<u128>());
        let r = rpc
            .request(&svc, format!("echo:{canary}"), T)
            .await
            .unwrap();
        assert_eq!(r, format!("{canary}@{}", a.client().name()).as_bytes());
        let mut stream = rpc.request_stream(&svc, "stream:100", T).await.unwrap();
        for i in 0..100u64 {
            assert_eq!(payload_seq(&stream.next().await.unwrap().unwrap()), i);
        }
        assert!(stream.next().await.is_none());
        node.set_route_hook(None);
        let frames = std::mem::take(&mut *seen.lock().unwrap());
        assert!(!frames.is_empty());
        for f in &frames {
            assert!(
                !f.windows(canary.len()).any(|w| w == canary.as_bytes()),
                "plaintext on the wire"
            );
        }
        node.shutdown(Duration::from_secs(1)).await;
    })
    .await
}

/// A caller keeps one session per destination it called; a session whose
/// peer has left ends and takes its entry with it. Before, one dead session
/// stayed per peer ever called (until a later call to the same name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_to_departed_responders_are_dropped() {
    deadline(
        TEST_DEADLINE,
        "sessions_to_departed_responders_are_dropped",
        async {
            use slim_client::session::p2p::P2pConfig;
            init_tracing();
            let pki = Pki::new("example.org");
            let node = start_node(&pki, |_| {}).await;
            // A peer that left is noticed within about a second.
            let cfg = || RpcConfig {
                session: P2pConfig {
                    keep_alive: Some(Duration::from_millis(200)),
                    idle_timeout: Some(Duration::from_secs(1)),
                    peer_absent_grace: Duration::from_millis(500),
                    ..P2pConfig::default()
                },
                ..RpcConfig::default()
            };
            let a = mux(&pki, &node, "acme/rpc/caller").await;
            let rpc = RpcClient::new(&a, cfg());
            const PEERS: usize = 20;
            let mut servers = Vec::new();
            for i in 0..PEERS {
                let n = format!("acme/rpc/peer{i}");
                let m = mux(&pki, &node, &n).await;
                spawn_responder(
                    RpcServer::new(&m, cfg()).unwrap(),
                    Arc::new(std::sync::Mutex::new(Vec::new())),
                );
                let r = rpc.request(&name(&n), "echo:x", T).await.unwrap();
                assert_eq!(r, format!("x@{}", a.client().name()).as_bytes());
                servers.push(m);
            }
            assert_eq!(rpc.sessions(), PEERS, "one session per destination");
            // Every responder leaves.
            for m in servers {
                m.client().shutdown().await;
            }
            // The departed responders' sessions end (idle timeout or the
            // node's no-route) and leave; a new destination's stays.
            let last = mux(&pki, &node, "acme/rpc/last").await;
            spawn_responder(
                RpcServer::new(&last, cfg()).unwrap(),
                Arc::new(std::sync::Mutex::new(Vec::new())),
            );
            let last_name = name("acme/rpc/last");
            assert_eventually(
                T,
                "the departed responders' sessions are dropped",
                || async {
                    rpc.request(&last_name, "echo:y", T).await.unwrap();
                    rpc.sessions() == 1
                },
            )
            .await;
        },
    )
    .await;
}
