//! The node's send budget: while many client connections receive at once
//! they share `send_budget` (smaller QUIC send windows, so a fan-out does
//! not hold a full window per subscriber), nothing is lost at the smaller
//! window, and the full window comes back once they stop receiving.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use slim_actors::sendbudget::{MAX_WINDOW, MIN_WINDOW};
use slim_tests::*;
use slim_wire::Mode;

const SUBS: usize = 8;
const SIZE: usize = 1024;
/// A reader gives up after this long without a message (the count then fails).
const SILENCE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_share_the_send_budget_and_lose_nothing() {
    init_tracing();
    deadline(Duration::from_secs(120), "send_budget", body()).await;
}

async fn body() {
    let pki = Pki::new("example.org");
    // Two full windows for eight receivers: a quarter window each.
    let budget = 2 * MAX_WINDOW;
    let node = start_node(&pki, |c| c.send_budget = budget).await;
    let addr = node.local_addr();
    let chan = name("acme/budget/chan");
    assert_eq!(node.send_window(), MAX_WINDOW);

    let mut subs = Vec::new();
    for i in 0..SUBS {
        let c = client(&pki, addr, &format!("acme/budget/sub{i}")).await;
        c.subscribe(&chan).await.unwrap();
        subs.push(Arc::new(c));
    }
    let publ = Arc::new(client(&pki, addr, "acme/budget/pub").await);

    // Publish until the node has shrunk the windows, then stop.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (publ, stop, chan) = (Arc::clone(&publ), Arc::clone(&stop), chan.clone());
        tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                publ.publish(&chan, Mode::Multicast, &seq_payload(seq, SIZE))
                    .await
                    .unwrap();
                seq += 1;
            }
            seq
        })
    };
    // Each reader stops once it has every message published (known when
    // the publisher stops), or after SILENCE without any.
    let total = Arc::new(AtomicU64::new(u64::MAX));
    let readers: Vec<_> = subs
        .iter()
        .map(|s| {
            let (s, total) = (Arc::clone(s), Arc::clone(&total));
            tokio::spawn(async move {
                let mut seen = SeqSet::new(1 << 24);
                let mut buf = Vec::new();
                let mut last = tokio::time::Instant::now();
                while seen.count() < total.load(Ordering::Acquire) && last.elapsed() < SILENCE {
                    buf.clear();
                    let got = tokio::time::timeout(
                        Duration::from_millis(250),
                        s.recv_many(&mut buf, 256),
                    );
                    if let Ok(0) = got.await {
                        break;
                    }
                    for ev in buf.drain(..) {
                        last = tokio::time::Instant::now();
                        if let slim_client::Event::Message(d) = ev {
                            assert!(seen.insert(payload_seq(&d.payload)), "duplicate");
                        }
                    }
                }
                seen
            })
        })
        .collect();

    // The publisher's connection receives the node's confirmations too, so
    // nine or eight share it: a power of two at most a quarter window.
    assert_eventually(Duration::from_secs(60), "the windows shrink", || {
        let w = node.send_window();
        async move { (MIN_WINDOW..MAX_WINDOW).contains(&w) && w * SUBS as u64 <= budget }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let sent = publisher.await.unwrap();
    total.store(sent, Ordering::Release);
    for r in readers {
        let seen = r.await.unwrap();
        assert_eq!(seen.count(), sent, "missing: {:?}", &seen.missing(sent)[..]);
    }

    // Nobody receives any more: the full window comes back.
    assert_eventually(Duration::from_secs(30), "the full window returns", || {
        let w = node.send_window();
        async move { w == MAX_WINDOW }
    })
    .await;
}
