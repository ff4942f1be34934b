//! A subscriber that reads slowly but steadily is not a slow consumer.
//!
//! The node sees a client read through QUIC stream credit, which quinn
//! grants once the client has read an eighth of its stream window (512 KiB
//! of the SDK's 4 MiB): a backlogged subscriber reading under 512 KiB per
//! write deadline (2 s: 256 KB/s) showed no progress for the whole deadline
//! and was cut, although it read all the time. The SDK now tells the node
//! how far it has read (`ReadProgress`, protocol 2) while its application
//! holds it back, and the node counts that as progress for up to
//! `REPORT_STRETCH` deadlines without credit: the reader below (~100 KB/s,
//! credit every ~5 s) keeps its connection past several deadlines.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use slim_actors::{REPORT_STRETCH, SlowConsumerPolicy};
use slim_tests::*;
use slim_wire::Mode;

const SIZE: usize = 2048;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_reading_slowly_but_steadily_is_not_cut() {
    init_tracing();
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |c| {
        c.queue.max_bytes = 256 * 1024;
        c.queue.policy = SlowConsumerPolicy::default();
        c.overflow_bytes = 0;
    })
    .await;
    let addr = node.local_addr();
    let chan = name("acme/steady/chan");
    // The SDK's default stream window; a small inbound queue, so that the
    // reader's pace reaches QUIC at once.
    let mut cfg = client_config(&pki, addr, "acme/steady/reader");
    cfg.inbound_capacity = 16;
    let reader = slim_client::Client::connect(cfg).await.unwrap();
    reader.subscribe(&chan).await.unwrap();

    // A publisher faster than the reader: the node holds it back.
    let publ = client(&pki, addr, "acme/steady/pub").await;
    let stop = Arc::new(AtomicBool::new(false));
    let st = Arc::clone(&stop);
    let publisher = tokio::spawn(async move {
        let mut i = 0u64;
        while !st.load(Ordering::Relaxed) {
            if i.is_multiple_of(64) {
                tokio::task::yield_now().await;
            }
            if publ
                .publish(&chan, Mode::Multicast, &seq_payload(i, SIZE))
                .await
                .is_err()
            {
                break;
            }
            i += 1;
        }
    });

    // ~100 KB/s: one message every 20 ms, past the time reports alone may
    // hold off a cut (so QUIC credit must have come meanwhile too).
    let t0 = Instant::now();
    let span = SlowConsumerPolicy::DEFAULT_WRITE_DEADLINE * (REPORT_STRETCH as u32 + 1);
    let mut got = 0u64;
    while t0.elapsed() < span {
        next_message(&reader, Duration::from_secs(10)).await;
        got += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cuts = node.slow_consumer_disconnects();
    stop.store(true, Ordering::Relaxed);
    // Not awaited: a publish may be held, by the node's flow control while
    // the reader is connected, and once it is gone by the "no route" errors
    // this test never reads (the SDK reports every one, waiting for room).
    publisher.abort();
    drop(reader);
    assert_eq!(
        cuts,
        0,
        "a subscriber reading steadily ({got} messages of {SIZE} B in {:?}) was cut as a slow consumer",
        t0.elapsed()
    );
    node.shutdown(Duration::from_secs(1)).await;
}
