//! Point-to-point reliable session throughput through an in-process node on
//! loopback (real QUIC + mTLS), with a window of messages in flight compared
//! with one at a time (window 1), and over a path losing 1 % and 5 % of
//! frames; then unary RPC latency and throughput over one session.
//!
//! `cargo bench -p slim-client --bench p2p` (`P2P_BENCH_N` scales the count).

use std::sync::Arc;
use std::time::{Duration, Instant};

use slim_actors::{HookVerdict, NodeConfig, RoutedFrame};
use slim_auth::{DevCa, SpiffeId};
use slim_client::session::SessionMux;
use slim_client::session::p2p::{P2pConfig, P2pEvent, P2pListener, P2pSession, Reliability};
use slim_client::session::reliable;
use slim_client::{Client, ClientConfig};
use slim_wire::Name;

struct Case {
    window: usize,
    size: usize,
    loss_per_mille: u32,
    n: u64,
}

async fn run(ca: &DevCa, node: &slim_actors::NodeHandle, c: &Case, k: usize) -> (f64, u64) {
    let ident = |p: &str| {
        let id = SpiffeId::parse(&format!("spiffe://bench.org/{p}")).expect("id");
        ca.issue(&id, Duration::from_secs(3600)).expect("svid")
    };
    let connect = |n: String, p: &str| {
        let cfg = ClientConfig::new(node.local_addr(), Name::parse(&n).expect("name"), ident(p));
        async move { Client::connect(cfg).await.expect("connect") }
    };
    let svc = format!("bench/p2p/recv{k}");
    let (a, _) = SessionMux::new(connect(format!("bench/p2p/send{k}"), "send").await);
    let (b, _) = SessionMux::new(connect(svc.clone(), "recv").await);
    let base = match P2pConfig::default().reliability {
        Reliability::Reliable(c) => c,
        Reliability::Unreliable { .. } => reliable::Config::default(),
    };
    let cfg = P2pConfig {
        reliability: Reliability::Reliable(reliable::Config {
            window: c.window,
            max_out_of_order: c.window.max(1),
            ..base
        }),
        ..P2pConfig::default()
    };
    let mut l = P2pListener::new(&b, cfg.clone()).expect("listener");
    let accept = tokio::spawn(async move { l.accept().await.expect("accept") });
    let s = P2pSession::open(&a, &Name::parse(&svc).expect("name"), cfg)
        .await
        .expect("open");
    let r = accept.await.expect("join");
    let payload = bytes::Bytes::from(vec![0xab; c.size]);
    let tx = s.sender();
    let n = c.n;
    let start = Instant::now();
    let send = tokio::spawn(async move {
        for _ in 0..n {
            tx.send(payload.clone()).await.expect("send");
        }
        tx.close().await.expect("close");
    });
    let mut got = 0u64;
    let mut buf = Vec::new();
    let (_keep, mut rx) = r.into_split();
    while got < n {
        buf.clear();
        if rx.recv_many(&mut buf, 256).await == 0 {
            panic!("session ended after {got}");
        }
        got += buf
            .iter()
            .filter(|e| matches!(e, P2pEvent::Message { .. }))
            .count() as u64;
    }
    send.await.expect("sender");
    let secs = start.elapsed().as_secs_f64();
    let rtx = s.stats().await.map(|s| s.sender.retransmitted).unwrap_or(0);
    (n as f64 / secs, rtx)
}

/// Unary RPC round trips over one session: one call at a time (latency),
/// then 64 calls in flight (throughput).
async fn rpc(ca: &DevCa, node: &slim_actors::NodeHandle, n: usize) {
    use slim_client::session::rpc::{RpcClient, RpcConfig, RpcServer};
    let ident = |p: &str| {
        let id = SpiffeId::parse(&format!("spiffe://bench.org/{p}")).expect("id");
        ca.issue(&id, Duration::from_secs(3600)).expect("svid")
    };
    let connect = |n: &str, p: &str| {
        let cfg = ClientConfig::new(node.local_addr(), Name::parse(n).expect("name"), ident(p));
        async move { Client::connect(cfg).await.expect("connect") }
    };
    let (server_mux, _) = SessionMux::new(connect("bench/rpc/echo", "echo").await);
    let mut server = RpcServer::new(&server_mux, RpcConfig::default()).expect("server");
    tokio::spawn(async move {
        while let Some(req) = server.next().await {
            let _ = req.responder.reply(req.payload).await;
        }
    });
    let (a, _) = SessionMux::new(connect("bench/rpc/caller", "caller").await);
    let rpc = Arc::new(RpcClient::new(&a, RpcConfig::default()));
    let svc = Name::parse("bench/rpc/echo").expect("name");
    let t = Duration::from_secs(10);
    rpc.request(&svc, &b"warm-up"[..], t)
        .await
        .expect("warm-up");
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t0 = Instant::now();
        rpc.request(&svc, &b"0123456789abcdef"[..], t)
            .await
            .expect("call");
        lat.push(t0.elapsed());
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize];
    println!(
        "rpc unary, one at a time: {n} calls, {:.0} calls/s, p50 {:?}, p99 {:?}",
        n as f64 / secs,
        pct(0.5),
        pct(0.99)
    );
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..64 {
        let (rpc, svc) = (Arc::clone(&rpc), svc.clone());
        let per = n / 64 + usize::from(k < n % 64);
        tasks.spawn(async move {
            for _ in 0..per {
                rpc.request(&svc, &b"0123456789abcdef"[..], t)
                    .await
                    .expect("call");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("caller");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "rpc unary, 64 in flight:   {n} calls, {:.0} calls/s",
        n as f64 / secs
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let scale: u64 = std::env::var("P2P_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    rt.block_on(async {
        let ca = DevCa::generate("bench.org").expect("ca");
        let id = SpiffeId::parse("spiffe://bench.org/node").expect("id");
        let node_id = ca.issue(&id, Duration::from_secs(3600)).expect("svid");
        let cfg = NodeConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            ..NodeConfig::default()
        };
        let node = slim_actors::start(cfg, &node_id).await.expect("node");
        let cases = [
            Case {
                window: 1,
                size: 16,
                loss_per_mille: 0,
                n: (scale / 25).max(100),
            },
            Case {
                window: 16,
                size: 16,
                loss_per_mille: 0,
                n: scale,
            },
            Case {
                window: 256,
                size: 16,
                loss_per_mille: 0,
                n: scale,
            },
            Case {
                window: 256,
                size: 1024,
                loss_per_mille: 0,
                n: scale,
            },
            Case {
                window: 256,
                size: 1024,
                loss_per_mille: 10,
                n: scale,
            },
            Case {
                window: 256,
                size: 1024,
                loss_per_mille: 50,
                n: scale,
            },
        ];
        println!("p2p reliable session throughput (1 sender -> 1 receiver, one node, loopback)");
        println!(
            "{:>7} {:>8} {:>6} {:>9} {:>12} {:>10} {:>8}",
            "window", "payload", "loss", "messages", "msgs/s", "MiB/s", "rtx"
        );
        for (k, c) in cases.iter().enumerate() {
            let per_mille = c.loss_per_mille;
            node.set_route_hook((per_mille > 0).then(|| {
                Arc::new(move |_f: &RoutedFrame<'_>| {
                    if rand::random_range(0..1000u32) < per_mille {
                        HookVerdict::Drop
                    } else {
                        HookVerdict::Forward
                    }
                }) as slim_actors::RouteHook
            }));
            let (rate, rtx) = run(&ca, &node, c, k).await;
            println!(
                "{:>7} {:>7}B {:>5.1}% {:>9} {:>12.0} {:>10.1} {:>8}",
                c.window,
                c.size,
                f64::from(per_mille) / 10.0,
                c.n,
                rate,
                rate * c.size as f64 / (1024.0 * 1024.0),
                rtx
            );
        }
        node.set_route_hook(None);
        rpc(&ca, &node, (scale / 10).max(100) as usize).await;
        node.shutdown(Duration::from_secs(1)).await;
    });
}
