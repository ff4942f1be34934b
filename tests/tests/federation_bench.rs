//! Federation figures (not a pass/fail test; prints numbers):
//! cross-node 1→1 throughput as a ratio of single-node throughput measured in
//! the same run, and time from subscribe to first cross-node delivery.
//!
//! ```text
//! cargo test --release -p slim-tests --test federation_bench -- --ignored --nocapture
//! ```
//! Everything runs in one process on loopback (two nodes, clients), so the
//! cross-node run shares the CPU between two nodes where the single-node run
//! has one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use slim_client::{Client, Event, FLAG_NO_ROUTE_SILENT};
use slim_tests::*;
use slim_wire::Mode;

const RUN: Duration = Duration::from_secs(3);

/// Publishes `size`-byte messages for `RUN`, counting what `sub` receives.
/// Returns (sent, delivered, delivered per second).
async fn one_to_one(
    publ: &Client,
    sub: Client,
    chan: &slim_wire::Name,
    size: usize,
) -> (u64, u64, f64) {
    let done = Arc::new(AtomicBool::new(false));
    let d = Arc::clone(&done);
    let reader = tokio::spawn(async move {
        let mut buf = Vec::with_capacity(1024);
        let mut n = 0u64;
        let mut last = Instant::now();
        loop {
            buf.clear();
            let got =
                tokio::time::timeout(Duration::from_millis(500), sub.recv_many(&mut buf, 1024))
                    .await;
            match got {
                Ok(0) => break,
                Ok(_) => {
                    n += buf
                        .iter()
                        .filter(|e| matches!(e, Event::Message(_)))
                        .count() as u64;
                    last = Instant::now();
                }
                Err(_) if d.load(Ordering::Relaxed) => break,
                Err(_) => {}
            }
        }
        (n, last)
    });
    let payload = vec![0xab; size];
    let t0 = Instant::now();
    let mut sent = 0u64;
    while t0.elapsed() < RUN {
        for _ in 0..256 {
            publ.publish_with(chan, Mode::Multicast, FLAG_NO_ROUTE_SILENT, &payload)
                .await
                .unwrap();
        }
        sent += 256;
    }
    publ.flush().await;
    done.store(true, Ordering::Relaxed);
    let (delivered, last) = reader.await.unwrap();
    let secs = last.duration_since(t0).as_secs_f64();
    (sent, delivered, delivered as f64 / secs)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture (release build)"]
async fn cross_node_throughput_ratio_and_subscribe_to_first_delivery() {
    let pki = Pki::new("example.org");
    let b = start_peer_node(&pki, "b", vec![], |_| {}).await;
    let a = start_peer_node(&pki, "a", vec![peer_spec(&b)], |_| {}).await;
    assert_eventually(Duration::from_secs(10), "linked", || async {
        links_up(&a) == 1
    })
    .await;

    for size in [16usize, 1024] {
        let mut ratios = Vec::new();
        // Alternate single-node and cross-node runs so both see the same machine.
        for round in 0..2 {
            let chan = name(&format!("bench/tp/s{size}r{round}"));
            let sub = client(
                &pki,
                a.local_addr(),
                &format!("bench/tp/sub-local-{size}-{round}"),
            )
            .await;
            sub.subscribe(&chan).await.unwrap();
            let publ = client(
                &pki,
                a.local_addr(),
                &format!("bench/tp/pub-{size}-{round}"),
            )
            .await;
            let (s1, d1, local) = one_to_one(&publ, sub, &chan, size).await;

            let chan = name(&format!("bench/tp/x{size}r{round}"));
            let sub = client(
                &pki,
                b.local_addr(),
                &format!("bench/tp/sub-remote-{size}-{round}"),
            )
            .await;
            sub.subscribe(&chan).await.unwrap();
            assert_eventually(Duration::from_secs(10), "route", || async {
                routes_to(&a, chan.as_str(), "b")
            })
            .await;
            let (s2, d2, remote) = one_to_one(&publ, sub, &chan, size).await;
            let ratio = remote / local;
            ratios.push(ratio);
            println!(
                "size {size:>5} B round {round}: single-node {local:>10.0} msg/s (sent {s1}, delivered {d1}); \
                 cross-node {remote:>10.0} msg/s (sent {s2}, delivered {d2}); ratio {ratio:.2}"
            );
        }
        println!(
            "size {size:>5} B: cross-node / single-node throughput = {:.2} (mean of {} rounds)",
            ratios.iter().sum::<f64>() / ratios.len() as f64,
            ratios.len()
        );
    }

    // Subscribe on a, publisher on b probing every millisecond: the time from
    // the subscribe call to the first delivery (resolution ~1 ms, the probe
    // interval).
    let probe = client(&pki, b.local_addr(), "bench/lat/probe").await;
    let sub = client(&pki, a.local_addr(), "bench/lat/sub").await;
    let mut samples = Vec::with_capacity(100);
    for trial in 0..100 {
        let chan = name(&format!("bench/lat/c{trial}"));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, c) = (Arc::clone(&stop), chan.clone());
        let probe_ref = &probe;
        let publish = async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            while !s.load(Ordering::Relaxed) {
                tick.tick().await;
                probe_ref
                    .publish_with(
                        &c,
                        Mode::Multicast,
                        FLAG_NO_ROUTE_SILENT,
                        &seq_payload(trial, 16),
                    )
                    .await
                    .unwrap();
            }
        };
        let measure = async {
            // Let the probe run before subscribing.
            tokio::time::sleep(Duration::from_millis(5)).await;
            let t0 = Instant::now();
            sub.subscribe(&chan).await.unwrap();
            // Skip stragglers of the previous trial's channel.
            while next_message(&sub, Duration::from_secs(10)).await.name != chan {}
            let dt = t0.elapsed();
            stop.store(true, Ordering::Relaxed);
            dt
        };
        let ((), dt) = tokio::join!(publish, measure);
        samples.push(dt);
        sub.unsubscribe(&chan).await.unwrap();
        // Drain probes that were in flight when the trial ended.
        while tokio::time::timeout(Duration::from_millis(20), sub.next_message())
            .await
            .is_ok()
        {}
    }
    samples.sort();
    println!(
        "subscribe -> first cross-node delivery over {} trials: p50 {:.2} ms, p99 {:.2} ms, min {:.2} ms, max {:.2} ms (probe every 1 ms)",
        samples.len(),
        pct(&samples, 0.5).as_secs_f64() * 1e3,
        pct(&samples, 0.99).as_secs_f64() * 1e3,
        samples[0].as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3,
    );
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}
