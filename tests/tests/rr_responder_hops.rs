//! Request/reply figures (not a pass/fail test; prints numbers): how much of a
//! round trip is the responder's task hops. The same requester (an SDK client
//! publishing from its own thread on a 1 ms schedule, as `slim-loadtest
//! latency` does) is answered, in alternating rounds, by
//!
//! - `sdk`: an SDK client, `next_message` then `publish` in one application
//!   task (quinn's endpoint and connection drivers, the SDK's reader task,
//!   the application task, the SDK's writer task, quinn's connection driver);
//! - `raw`: one task that reads its QUIC stream and writes the reply onto it
//!   itself (no SDK reader or writer task in between).
//!
//! ```text
//! cargo test --release -p slim-tests --test rr_responder_hops -- --ignored --nocapture
//! CLIENT_WORKERS=1 ROUNDS=4 REQUESTS=3000 cargo test --release -p slim-tests --test rr_responder_hops -- --ignored --nocapture
//! ```
//!
//! The node runs on its own 2-worker runtime, the clients on another
//! (`CLIENT_WORKERS`, default 2). docs/BENCHMARKS.md (*Request/reply: the
//! responder's fourth hop*) explains what the difference is: tokio runs at
//! most three tasks in a row from a worker's LIFO slot, and a task woken by
//! the fourth goes through the run queue, waking the sibling worker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use slim_client::Client;
use slim_tests::*;
use slim_wire::{Frame, Limits, Mode, Name, Publish, Subscribe, codec};

fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Echoes every delivery back to its sender through the SDK.
async fn sdk_responder(resp: Client) {
    while let Some(d) = resp.next_message().await {
        if resp
            .publish(&d.from, Mode::Unicast, &d.payload)
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Echoes every delivery back to its sender, reading and writing the
/// connection's stream in this one task.
async fn raw_responder(raw: RawConn) {
    let RawConn {
        mut send,
        mut recv,
        endpoint: _endpoint,
        conn: _conn,
    } = raw;
    let limits = Limits::default();
    let mut buf = BytesMut::new();
    let mut msg_id = 0u64;
    loop {
        let frame = match slim_wire::decode(&mut buf, &limits).expect("the node sends valid frames")
        {
            Some(f) => f,
            None => match recv.read_chunk(1 << 16, true).await {
                Ok(Some(chunk)) => {
                    buf.extend_from_slice(&chunk.bytes);
                    continue;
                }
                _ => return,
            },
        };
        let Frame::Deliver(d) = frame else { continue };
        msg_id += 1;
        let reply = Frame::Publish(Publish {
            name: d.from,
            mode: Mode::Unicast,
            flags: 0,
            msg_id,
            payload: d.payload,
        });
        let bytes = codec::encode_to_vec(&reply, &limits).expect("encode reply");
        if send.write_all(&bytes).await.is_err() {
            return;
        }
    }
}

/// One round: `requests` requests at 1,000/s; returns the sorted latencies (ns).
fn round(rt: &tokio::runtime::Runtime, req: &Arc<Client>, echo: &Name, requests: u64) -> Vec<u64> {
    let t0 = Instant::now() + Duration::from_millis(20);
    let reader = {
        let req = Arc::clone(req);
        rt.spawn(async move {
            let mut lat = Vec::with_capacity(requests as usize);
            while (lat.len() as u64) < requests {
                match tokio::time::timeout(Duration::from_secs(5), req.next_message()).await {
                    Ok(Some(d)) => {
                        let sent = u64::from_le_bytes(d.payload[..8].try_into().expect("8 bytes"));
                        lat.push((Instant::now() - t0).as_nanos() as u64 - sent);
                    }
                    _ => break,
                }
            }
            lat
        })
    };
    let handle = rt.handle().clone();
    let (req2, echo2) = (Arc::clone(req), echo.clone());
    // The sender: its own thread, sleeping then spinning to each slot.
    std::thread::spawn(move || {
        for i in 0..requests {
            let at = t0 + Duration::from_micros(1000 * i);
            let now = Instant::now();
            if at > now + Duration::from_micros(200) {
                std::thread::sleep(at - now - Duration::from_micros(200));
            }
            while Instant::now() < at {
                std::hint::spin_loop();
            }
            let mut p = [0u8; 16];
            p[..8].copy_from_slice(&((Instant::now() - t0).as_nanos() as u64).to_le_bytes());
            handle
                .block_on(req2.publish(&echo2, Mode::Anycast, &p))
                .expect("publish");
        }
    })
    .join()
    .expect("sender");
    let mut lat = rt.block_on(reader).expect("reader");
    assert_eq!(lat.len() as u64, requests, "every request answered");
    lat.sort_unstable();
    lat
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture (release build)"]
fn responder_hops() {
    let workers = env_or("CLIENT_WORKERS", 2) as usize;
    let rounds = env_or("ROUNDS", 3);
    let requests = env_or("REQUESTS", 3000);
    let pki = Pki::new("example.org");
    let node_rt = runtime(2);
    let node = node_rt.block_on(start_node(&pki, |_| {}));
    let addr = node.local_addr();
    let rt = runtime(workers);
    let req = Arc::new(rt.block_on(client(&pki, addr, "org/ns/requester")));
    let echo = name("org/ns/echo");
    let mut results: Vec<(&str, Vec<u64>)> = Vec::new();
    for r in 0..rounds * 2 {
        let kind = if r % 2 == 0 { "sdk" } else { "raw" };
        let responder = if kind == "sdk" {
            let resp = rt.block_on(client(&pki, addr, "org/ns/responder"));
            rt.block_on(resp.subscribe(&echo)).expect("subscribe");
            rt.spawn(sdk_responder(resp))
        } else {
            let id = pki.identity("responder");
            let mut raw = rt.block_on(RawConn::connect(addr, &id));
            rt.block_on(raw.hello("org/ns/responder/raw"));
            let sub = Frame::Subscribe(Subscribe {
                id: 1,
                name: echo.clone(),
            });
            let bytes = codec::encode_to_vec(&sub, &Limits::default()).expect("encode");
            rt.block_on(raw.send.write_all(&bytes)).expect("subscribe");
            rt.spawn(raw_responder(raw))
        };
        // Until the node routes to the new responder (anycast reaches it).
        std::thread::sleep(Duration::from_millis(300));
        let lat = round(&rt, &req, &echo, requests);
        let q = |f: f64| lat[((lat.len() - 1) as f64 * f) as usize] as f64 / 1000.0;
        println!(
            "round {} responder={kind} client_workers={workers}: p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs",
            r / 2 + 1,
            q(0.5),
            q(0.9),
            q(0.99)
        );
        responder.abort();
        results.push((kind, lat));
        // Let the node drop the old responder before the next one subscribes.
        std::thread::sleep(Duration::from_millis(300));
    }
    for kind in ["sdk", "raw"] {
        let mut p50s: Vec<f64> = results
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, l)| l[(l.len() - 1) / 2] as f64 / 1000.0)
            .collect();
        p50s.sort_by(f64::total_cmp);
        println!(
            "responder={kind}: p50 per round {:?} µs, median {:.1} µs",
            p50s,
            p50s[p50s.len() / 2]
        );
    }
}
