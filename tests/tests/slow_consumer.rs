//! A subscriber that stops reading is isolated by policy; the others keep receiving.

use std::time::Duration;

use slim_actors::SlowConsumerPolicy;
use slim_tests::*;
use slim_wire::Mode;

const N: u64 = 3000;
const SIZE: usize = 2048;
const CAP: usize = 1024 * 1024;

/// The two scenarios each push ~60 MB through loopback; running them at the
/// same time on a 2-core CI machine could starve a *healthy* reader.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Publishes `N` messages (then an end marker, sequence number `N`) to nine
/// healthy readers and one stalled subscriber. Returns once every healthy
/// reader has received the marker, i.e. once the node has routed every
/// message, with the stalled client still alive (its connection is the
/// node's to close) and the stalled queue's peak.
async fn run(policy: SlowConsumerPolicy) -> (slim_actors::NodeHandle, slim_client::Client, u64) {
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |c| {
        c.queue.max_bytes = CAP;
        c.queue.policy = policy;
    })
    .await;
    let addr = node.local_addr();
    let chan = name("acme/slow/chan");

    // The stalled subscriber never calls recv; its SDK buffer is tiny so the
    // back-pressure reaches the node quickly.
    let mut cfg = client_config(&pki, addr, "acme/slow/stalled");
    cfg.inbound_capacity = 8;
    cfg.stream_window = 256 * 1024;
    let stalled = slim_client::Client::connect(cfg).await.unwrap();
    stalled.subscribe(&chan).await.unwrap();

    let mut readers = Vec::new();
    for i in 0..9 {
        let c = client(&pki, addr, &format!("acme/slow/ok{i}")).await;
        c.subscribe(&chan).await.unwrap();
        readers.push(tokio::spawn(async move {
            let mut seen = SeqSet::new(N);
            // Everything up to the end marker (published after the last
            // message, delivered in order) counts; nothing may repeat.
            loop {
                let d = next_message(&c, Duration::from_secs(20)).await;
                let seq = payload_seq(&d.payload);
                if seq == N {
                    break;
                }
                assert!(seen.insert(seq), "duplicate {seq}");
            }
            seen.count()
        }));
    }
    let publ = client(&pki, addr, "acme/slow/pub").await;
    let mut max_queued = 0;
    for i in 0..N {
        publ.publish(&chan, Mode::Multicast, &seq_payload(i, SIZE))
            .await
            .unwrap();
        if i % 10 == 9 {
            // Pace the publisher so healthy readers never fall behind the cap.
            tokio::time::sleep(Duration::from_millis(5)).await;
            if let Some(s) = node
                .connections()
                .iter()
                .find(|c| c.name == stalled.name().as_str())
            {
                max_queued = max_queued.max(s.queued_bytes);
            }
        }
    }
    publ.publish(&chan, Mode::Multicast, &seq_payload(N, SIZE))
        .await
        .unwrap();
    // Every healthy reader has the marker: the node has routed (and pushed)
    // every message, so the drop counters below are final.
    for r in readers {
        assert_eq!(r.await.unwrap(), N, "a healthy subscriber lost messages");
    }
    for c in node.connections() {
        if !c.name.starts_with("acme/slow/stalled") {
            assert_eq!(c.dropped, 0, "healthy subscriber had drops: {c:?}");
        }
    }
    assert!(
        max_queued <= CAP,
        "stalled queue {max_queued} over cap {CAP}"
    );
    (node, stalled, max_queued as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_policy_counts_and_spares_the_others() {
    init_tracing();
    let _serial = SERIAL.lock().await;
    let (node, stalled_client, max_queued) = run(SlowConsumerPolicy::DropNewest).await;
    // Every push is done (see `run`), and only a push can close a connection
    // under a policy, so this snapshot is final.
    let stats = node.connections();
    let stalled = stats
        .iter()
        .find(|c| c.name.starts_with("acme/slow/stalled"))
        .expect("stalled client still connected under the drop policy");
    assert!(stalled.dropped > 0, "drops counted: {stalled:?}");
    assert!(stalled.queued_bytes <= CAP);
    assert_eq!(node.slow_consumer_disconnects(), 0);
    eprintln!(
        "stalled: dropped {} frames, peak queue {max_queued} B (cap {CAP})",
        stalled.dropped
    );
    drop(stalled_client);
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_policy_closes_the_stalled_connection() {
    init_tracing();
    let _serial = SERIAL.lock().await;
    let (node, stalled_client, _) = run(SlowConsumerPolicy::Disconnect {
        grace: Duration::from_millis(100),
    })
    .await;
    // The decision is taken on a push, and every push is done.
    assert!(node.slow_consumer_disconnects() >= 1);
    // The close itself is asynchronous; the client is still alive, so only
    // the node can have closed it.
    assert_eventually(
        Duration::from_secs(10),
        "the node closed the stalled connection",
        || async {
            !node
                .connections()
                .iter()
                .any(|c| c.name.starts_with("acme/slow/stalled"))
        },
    )
    .await;
    drop(stalled_client);
    node.shutdown(Duration::from_secs(1)).await;
}
