//! Flow control: a full subscriber queue makes the publisher wait instead of
//! dropping, so nothing is lost while subscribers keep up on average; a
//! subscriber that stays full past the write deadline is a slow consumer,
//! cut (or dropped for) by policy, and the others lose nothing. With the
//! node's overflow room, a full queue borrows before anyone waits, so a
//! stalled subscriber costs memory instead of the others' time.

use std::time::Duration;

use slim_actors::{SlowAction, SlowConsumerPolicy};
use slim_tests::*;
use slim_wire::Mode;

const N: u64 = 3000;
const SIZE: usize = 2048;
const CAP: usize = 1024 * 1024;
/// Short, so the stalled subscriber is declared soon; the healthy readers
/// never come near it (they read all the time). Not shorter: once, with a
/// CI run and this test on the same two cores, the 300 ms this used to be
/// failed the test after ~30 s of a healthy reader waiting for the end
/// marker; most likely that reader was starved past 300 ms, cut, and
/// reconnected after the marker had gone by (not reproduced since).
const DEADLINE: Duration = Duration::from_secs(1);

/// The scenarios each push ~60 MB through loopback; running them at the
/// same time on a 2-core CI machine could starve a *healthy* reader past the
/// deadline.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Publishes `N` messages as fast as the node lets it (then an end marker,
/// sequence number `N`) to nine healthy readers and one stalled subscriber.
/// Returns once every healthy reader has received the marker, i.e. once the
/// node has routed every message, with the stalled client still alive (its
/// connection is the node's to close) and the stalled queue's peak.
/// `overflow`: the node's overflow room (0: full queues make publishers
/// wait at once).
async fn run(
    policy: SlowConsumerPolicy,
    overflow: usize,
) -> (slim_actors::NodeHandle, slim_client::Client, u64) {
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |c| {
        c.queue.max_bytes = CAP;
        c.queue.policy = policy;
        c.overflow_bytes = overflow;
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
                let d = next_message(&c, Duration::from_secs(30)).await;
                let seq = payload_seq(&d.payload);
                if seq == N {
                    break;
                }
                assert!(seen.insert(seq), "duplicate {seq}");
            }
            seen.missing(N)
        }));
    }
    let publ = client(&pki, addr, "acme/slow/pub").await;
    let mut max_queued = 0;
    // No pacing when the policy waits: the node's back-pressure is what keeps
    // the healthy readers from losing anything. Fire-and-forget drops for
    // anyone who falls behind, healthy or not, so there the publisher is
    // paced to a rate healthy readers keep up with.
    let paced = policy.write_deadline.is_zero();
    for i in 0..N {
        publ.publish(&chan, Mode::Multicast, &seq_payload(i, SIZE))
            .await
            .unwrap();
        if paced && i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if i % 100 == 99
            && let Some(s) = node
                .connections()
                .iter()
                .find(|c| c.name == stalled.name().as_str())
        {
            max_queued = max_queued.max(s.queued_bytes);
        }
    }
    publ.publish(&chan, Mode::Multicast, &seq_payload(N, SIZE))
        .await
        .unwrap();
    // Every healthy reader has the marker: the node has routed (and pushed)
    // every message, so the drop counters below are final.
    for r in readers {
        assert_eq!(
            r.await.unwrap(),
            Vec::<u64>::new(),
            "a healthy subscriber lost messages"
        );
    }
    for c in node.connections() {
        if !c.name.starts_with("acme/slow/stalled") {
            assert_eq!(c.dropped, 0, "healthy subscriber had drops: {c:?}");
        }
    }
    assert!(
        max_queued <= CAP + overflow,
        "stalled queue {max_queued} over cap {CAP} + overflow room {overflow}"
    );
    (node, stalled, max_queued as u64)
}

/// The stalled client's connection, if the node still has it.
fn find_stalled(node: &slim_actors::NodeHandle) -> Option<slim_actors::ConnStats> {
    node.connections()
        .into_iter()
        .find(|c| c.name.starts_with("acme/slow/stalled"))
}

/// The stalled client's connection, still there under a drop policy.
fn stalled_stats(node: &slim_actors::NodeHandle) -> slim_actors::ConnStats {
    find_stalled(node).expect("stalled client still connected under the drop policy")
}

/// Waits (up to `within`) for the node to have closed the stalled client's
/// connection; the client is still alive, so only the node can have.
async fn stalled_closed_within(node: &slim_actors::NodeHandle, within: Duration) {
    assert_eventually(within, "the node closed the stalled connection", || async {
        find_stalled(node).is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_is_cut_after_the_deadline_and_the_others_lose_nothing() {
    init_tracing();
    let _serial = SERIAL.lock().await;
    let (node, stalled_client, _) = run(
        SlowConsumerPolicy::wait(DEADLINE, SlowAction::Disconnect),
        0,
    )
    .await;
    // The decision is taken on a push, and every push is done.
    assert!(node.slow_consumer_disconnects() >= 1);
    // The close itself is asynchronous.
    stalled_closed_within(&node, Duration::from_secs(10)).await;
    drop(stalled_client);
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_policy_stops_waiting_for_the_stalled_one_and_counts_its_drops() {
    init_tracing();
    let _serial = SERIAL.lock().await;
    let (node, stalled_client, max_queued) =
        run(SlowConsumerPolicy::wait(DEADLINE, SlowAction::Drop), 0).await;
    // Every push is done (see `run`), and only a push can close a connection
    // under a policy, so this snapshot is final.
    let stalled = stalled_stats(&node);
    assert!(stalled.dropped > 0, "drops counted: {stalled:?}");
    assert!(stalled.slow, "declared a slow consumer: {stalled:?}");
    assert!(stalled.queued_bytes <= CAP);
    assert_eq!(node.slow_consumer_disconnects(), 0);
    eprintln!(
        "stalled: dropped {} frames, peak queue {max_queued} B (cap {CAP}), publisher waited {} times on it",
        stalled.dropped, stalled.waited
    );
    drop(stalled_client);
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_and_forget_policy_drops_without_waiting() {
    init_tracing();
    let _serial = SERIAL.lock().await;
    let (node, stalled_client, _) = run(SlowConsumerPolicy::drop_newest(), 0).await;
    let stalled = stalled_stats(&node);
    assert!(stalled.dropped > 0, "drops counted: {stalled:?}");
    assert_eq!(stalled.waited, 0, "fire-and-forget never waits");
    drop(stalled_client);
    node.shutdown(Duration::from_secs(1)).await;
}

/// The write deadline with overflow room: long enough that all of `run`'s
/// messages reach the healthy readers well within it on a loaded machine
/// (they take well under a second on an idle one), so the stalled
/// subscriber is certainly still connected when they have.
const OVERFLOW_DEADLINE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_overflow_room_a_stalled_subscriber_holds_nobody_up_and_is_cut_at_the_deadline() {
    init_tracing();
    let _serial = SERIAL.lock().await;
    // 64 MiB of room: more than `run` publishes (~6 MB).
    let (node, stalled_client, _) = run(
        SlowConsumerPolicy::wait(OVERFLOW_DEADLINE, SlowAction::Disconnect),
        64 << 20,
    )
    .await;
    // Every healthy reader has everything while the stalled one is still
    // connected: the publisher did not wait the deadline out for it (it
    // waited only until the stall was `BORROW_AFTER` old); its frames went
    // into the overflow room. Without the room, the publisher would have
    // waited for the deadline and the stalled one would be gone by now.
    let stalled =
        find_stalled(&node).expect("the stalled subscriber is still connected within the deadline");
    assert_eq!(stalled.dropped, 0, "{stalled:?}");
    assert!(
        stalled.queued_bytes > CAP,
        "it never went past its cap: {stalled:?}"
    );
    assert!(stalled.overflow_bytes > 0, "{stalled:?}");
    assert_eq!(node.overflow_bytes(), stalled.overflow_bytes);
    assert_eq!(node.slow_consumer_disconnects(), 0);
    // Nobody publishes any more; the node's sweep still cuts it once its
    // writer has made no progress for the deadline, and the room comes back.
    stalled_closed_within(&node, OVERFLOW_DEADLINE + Duration::from_secs(15)).await;
    assert_eq!(node.slow_consumer_disconnects(), 1);
    assert_eventually(
        Duration::from_secs(10),
        "the stalled subscriber's overflow room is given back",
        || async { node.overflow_bytes() == 0 },
    )
    .await;
    eprintln!(
        "stalled: {} B queued (cap {CAP}), {} B of it borrowed, publisher waited {} times on it; cut with nobody publishing",
        stalled.queued_bytes, stalled.overflow_bytes, stalled.waited
    );
    drop(stalled_client);
    node.shutdown(Duration::from_secs(1)).await;
}

/// Under the drop policy a stalled subscriber stays connected; once its
/// writer has made no progress for the deadline, the node's sweep declares
/// it slow and drops what it queued in the overflow room, so that room is
/// the other connections' again (it would otherwise stay borrowed for as
/// long as the client stays connected without reading).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_overflow_room_a_drop_policy_subscriber_gives_the_room_back_at_the_deadline() {
    init_tracing();
    let _serial = SERIAL.lock().await;
    let (node, stalled_client, _) = run(
        SlowConsumerPolicy::wait(OVERFLOW_DEADLINE, SlowAction::Drop),
        64 << 20,
    )
    .await;
    let before = stalled_stats(&node);
    assert!(before.overflow_bytes > 0, "{before:?}");
    assert_eq!(before.dropped, 0, "{before:?}");
    assert_eventually(
        OVERFLOW_DEADLINE + Duration::from_secs(15),
        "the stalled subscriber's overflow room is given back",
        || async { node.overflow_bytes() == 0 },
    )
    .await;
    let after = stalled_stats(&node);
    assert!(after.slow, "declared a slow consumer: {after:?}");
    assert_eq!(after.overflow_bytes, 0, "{after:?}");
    assert!(after.queued_bytes <= CAP, "{after:?}");
    assert!(
        after.dropped > 0,
        "the frames it held in the room are counted as dropped: {after:?}"
    );
    assert_eq!(node.slow_consumer_disconnects(), 0);
    eprintln!(
        "stalled: {} B queued, {} B of it borrowed; at the deadline {} frames dropped, {} B left queued",
        before.queued_bytes, before.overflow_bytes, after.dropped, after.queued_bytes
    );
    drop(stalled_client);
    node.shutdown(Duration::from_secs(1)).await;
}

/// A publisher faster than its 100 subscribers: the node makes it wait
/// instead of dropping, and every subscriber gets every message once. The
/// subscribers buffer little (8 deliveries, a 64 KiB QUIC window) and start
/// reading only once the node has made the publisher wait, so the publisher
/// is certainly ahead of them whatever the machine's speed; then they read
/// slowly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_to_100_slower_subscribers_loses_nothing() {
    init_tracing();
    let _serial = SERIAL.lock().await;
    const SUBS: usize = 100;
    const MSGS: u64 = 1000;
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |c| {
        // Bytes, not frames: a subscriber's queue item may hold many
        // deliveries (a run, `actors/src/run.rs`).
        c.queue.max_bytes = 8 * 1024;
        // Long enough that no subscriber of a loaded CI machine is ever
        // declared slow: this test is about waiting, not about the deadline.
        c.queue.policy = SlowConsumerPolicy::wait(Duration::from_secs(60), SlowAction::Drop);
        // Little overflow room (the subscribers' queues need ~25 MB to take
        // everything), so queues borrow, the room runs out and the publisher
        // waits too.
        c.overflow_bytes = 256 * 1024;
    })
    .await;
    let addr = node.local_addr();
    let chan = name("acme/fan/chan");
    let mut subs = Vec::with_capacity(SUBS);
    for i in 0..SUBS {
        let mut cfg = client_config(&pki, addr, &format!("acme/fan/s{i}"));
        cfg.inbound_capacity = 8;
        cfg.stream_window = 64 * 1024;
        let c = slim_client::Client::connect(cfg).await.unwrap();
        c.subscribe(&chan).await.unwrap();
        subs.push(c);
    }
    let (open, gate) = tokio::sync::watch::channel(false);
    let readers: Vec<_> = subs
        .into_iter()
        .map(|c| {
            let mut gate = gate.clone();
            tokio::spawn(async move {
                gate.wait_for(|open| *open).await.unwrap();
                let mut seen = SeqSet::new(MSGS);
                while seen.count() < MSGS {
                    let d = next_message(&c, Duration::from_secs(60)).await;
                    let seq = payload_seq(&d.payload);
                    assert!(seen.insert(seq), "duplicate {seq}");
                    if seq.is_multiple_of(50) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                seen.count()
            })
        })
        .collect();
    let publ = client(&pki, addr, "acme/fan/pub").await;
    let publisher = tokio::spawn({
        let chan = chan.clone();
        async move {
            for i in 0..MSGS {
                publ.publish(&chan, Mode::Multicast, &seq_payload(i, 256))
                    .await
                    .unwrap();
            }
            publ
        }
    });
    // 1,000 messages are far more than a subscriber, its QUIC window and
    // its 32-frame queue hold together, so nobody reading means waiting.
    assert_eventually(
        Duration::from_secs(60),
        "the node makes the publisher wait while nobody reads",
        || {
            let waited: u64 = node.connections().iter().map(|c| c.waited).sum();
            async move { waited > 0 }
        },
    )
    .await;
    open.send_replace(true);
    for r in readers {
        assert_eq!(r.await.unwrap(), MSGS, "a subscriber lost messages");
    }
    let _publ = publisher.await.unwrap();
    let stats = node.connections();
    assert_eq!(
        stats.iter().map(|c| c.dropped).sum::<u64>(),
        0,
        "nothing dropped anywhere"
    );
    let waited: u64 = stats.iter().map(|c| c.waited).sum();
    assert_eventually(
        Duration::from_secs(10),
        "every queue gave its overflow room back",
        || async { node.overflow_bytes() == 0 },
    )
    .await;
    eprintln!("1→{SUBS}: {MSGS} messages each, none lost; the publisher waited {waited} times");
    node.shutdown(Duration::from_secs(1)).await;
}
