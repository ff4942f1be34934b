//! The SDK's outbound queue is bounded by bytes as well as frames: a
//! publisher whose node stops taking its frames waits in `publish` once
//! `outbound_bytes` are queued, instead of queuing up to the frame bound
//! (which let a publisher run tens of seconds ahead of a slow fan-out).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use slim_actors::{SlowAction, SlowConsumerPolicy};
use slim_tests::*;
use slim_wire::Mode;

const SIZE: usize = 1024;
/// Far more than every buffer between the publisher and the stalled
/// subscriber holds (the node's QUIC window and queue, the subscriber's).
const MSGS: u64 = 20_000;
const BYTES: usize = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_waits_at_the_byte_bound_when_the_node_stops_reading() {
    init_tracing();
    deadline(
        Duration::from_secs(120),
        "publish_waits_at_the_byte_bound",
        body(),
    )
    .await;
}

async fn body() {
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |c| {
        c.queue.max_bytes = 64 * 1024;
        // The node waits for the stalled subscriber for the whole test,
        // so it stops reading the publisher and never drops.
        c.queue.policy = SlowConsumerPolicy::wait(Duration::from_secs(600), SlowAction::Drop);
    })
    .await;
    let addr = node.local_addr();
    let chan = name("acme/bp/chan");

    let mut cfg = client_config(&pki, addr, "acme/bp/stalled");
    cfg.inbound_capacity = 8;
    cfg.stream_window = 64 * 1024;
    let stalled = slim_client::Client::connect(cfg).await.unwrap();
    stalled.subscribe(&chan).await.unwrap();

    let mut cfg = client_config(&pki, addr, "acme/bp/pub");
    cfg.outbound_bytes = BYTES;
    // The frame bound is far away: only the byte bound can stop it.
    cfg.outbound_capacity = MSGS as usize;
    let publ = Arc::new(slim_client::Client::connect(cfg).await.unwrap());
    assert_eq!(publ.outbound_bytes_limit(), BYTES);

    let published = Arc::new(AtomicU64::new(0));
    let task = {
        let publ = Arc::clone(&publ);
        let published = Arc::clone(&published);
        let chan = chan.clone();
        tokio::spawn(async move {
            for i in 0..MSGS {
                publ.publish_with(
                    &chan,
                    Mode::Multicast,
                    slim_client::FLAG_NO_ROUTE_SILENT,
                    &seq_payload(i, SIZE),
                )
                .await
                .unwrap();
                published.store(i + 1, Ordering::Relaxed);
            }
        })
    };

    // The queue fills to its byte bound: the next frame does not fit.
    let frame = SIZE + 64;
    assert_eventually(
        Duration::from_secs(60),
        "the outbound queue reached its byte bound",
        || async { publ.queued_bytes() + frame > BYTES },
    )
    .await;
    let (bytes, frames) = (publ.queued_bytes(), publ.queued_messages());
    assert!(
        bytes <= BYTES,
        "{bytes} bytes queued over the bound {BYTES}"
    );
    assert!(
        frames * SIZE <= BYTES,
        "{frames} frames of {SIZE} B queued over the byte bound {BYTES}"
    );
    assert!(
        !task.is_finished(),
        "the publisher was never held back ({} published)",
        published.load(Ordering::Relaxed)
    );
    let held = published.load(Ordering::Relaxed);
    assert!(held < MSGS, "every publish returned: {held}");
    eprintln!("publisher held at {held} publishes, {frames} frames / {bytes} B queued");

    // The stalled subscriber goes: the node takes the backlog, the
    // publisher finishes, and the queue's bytes are all given back.
    drop(stalled);
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the publisher finished once the node read again")
        .unwrap();
    publ.flush().await;
    assert_eq!(publ.queued_bytes(), 0);
    assert_eq!(publ.queued_messages(), 0);
    node.shutdown(Duration::from_secs(1)).await;
}
