//! What the node logs and counts when a client is refused by policy or
//! cannot keep up (its own test binary: it captures this process's log and
//! owns its metrics recorder).
//!
//! - A publisher floods a channel with one healthy and one stalled
//!   subscriber: the node logs "slow consumer detected" naming the stalled
//!   client's SPIFFE ID and name, once per identity per window however many
//!   messages it drops; and every routed copy is counted once, delivered or
//!   dropped: `routed × fan-out = slim_deliveries_total +
//!   slim_messages_dropped_total{reason=~"slow_consumer|subscriber_gone"}`,
//!   and the stalled client, once it reads, gets exactly the copies counted
//!   as delivered to it.
//! - Publishes and a subscription the policy refuses: one line naming the
//!   identity, the name and the action.
//! - At each 10 s window's end, one line per identity says how many more
//!   events there were; with the full lines they account for every event.

use std::time::{Duration, Instant};

use slim_actors::{SlowAction, SlowConsumerPolicy};
use slim_auth::policy::Policy;
use slim_client::{Client, ClientConfig};
use slim_tests::*;
use slim_wire::Mode;

const POLICY: &str = r#"
[[rule]]
spiffe_id = "spiffe://example.org/agent/stalled"
register = ["acme/flood/*/*"]
subscribe = ["acme/flood/chan"]

[[rule]]
spiffe_id = "spiffe://example.org/agent/reader"
register = ["acme/flood/*/*"]
subscribe = ["acme/flood/chan"]

[[rule]]
spiffe_id = "spiffe://example.org/agent/pub"
register = ["acme/flood/*/*"]
publish = ["acme/flood/chan"]
"#;

const N: u64 = 3000;
const SIZE: usize = 2048;
const CAP: usize = 256 * 1024;

/// One exact series of the Prometheus text, 0 if absent.
fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0) as u64
}

fn connect_cfg(pki: &Pki, node: std::net::SocketAddr, svid: &str, n: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new(node, name(n), pki.identity(svid));
    cfg.backoff.initial = Duration::from_millis(50);
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumers_and_refusals_are_logged_per_identity_and_counted_apart() {
    let log = CapturedLog::install("info");
    let prom = slim_node::install_metrics().expect("install recorder");
    let started = Instant::now();

    let pki = Pki::new("example.org");
    let node = start_node(&pki, |c| {
        c.policy = Policy::from_toml(POLICY).unwrap();
        c.queue.max_bytes = CAP;
        // Kept connected (the default cuts it), so every routed copy is
        // counted against the same two subscribers.
        c.queue.policy = SlowConsumerPolicy::wait(Duration::from_millis(300), SlowAction::Drop);
    })
    .await;
    let addr = node.local_addr();
    let chan = name("acme/flood/chan");

    // The stalled subscriber does not read until told; its SDK buffer is
    // tiny so the back-pressure reaches the node quickly.
    let mut cfg = connect_cfg(&pki, addr, "agent/stalled", "acme/flood/stalled");
    cfg.inbound_capacity = 8;
    cfg.stream_window = 256 * 1024;
    let stalled = Client::connect(cfg).await.unwrap();
    stalled.subscribe(&chan).await.unwrap();
    let reader = Client::connect(connect_cfg(&pki, addr, "agent/reader", "acme/flood/reader"))
        .await
        .unwrap();
    reader.subscribe(&chan).await.unwrap();
    let reading = tokio::spawn(async move {
        let mut seen = SeqSet::new(N + 1);
        while seen.count() < N + 1 {
            let d = next_message(&reader, Duration::from_secs(30)).await;
            assert!(seen.insert(payload_seq(&d.payload)), "duplicate");
        }
        reader
    });
    let publ = Client::connect(connect_cfg(&pki, addr, "agent/pub", "acme/flood/pub"))
        .await
        .unwrap();
    for i in 0..=N {
        publ.publish(&chan, Mode::Multicast, &seq_payload(i, SIZE))
            .await
            .unwrap();
        if i % 10 == 9 {
            // Paced so the healthy reader never falls behind the cap.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    // The healthy reader has every message: the node has routed and pushed
    // all of them, so the counters below are final.
    let _reader = tokio::time::timeout(Duration::from_secs(60), reading)
        .await
        .expect("the healthy reader gets every message")
        .unwrap();

    let text = prom.render();
    let routed = sample(&text, "slim_messages_routed_total{mode=\"multicast\"}");
    let delivered = sample(&text, "slim_deliveries_total");
    let slow = sample(
        &text,
        "slim_messages_dropped_total{reason=\"slow_consumer\"}",
    );
    let gone = sample(
        &text,
        "slim_messages_dropped_total{reason=\"subscriber_gone\"}",
    );
    eprintln!(
        "routed {routed} × fan-out 2 = {}; delivered {delivered} + dropped slow_consumer {slow} + subscriber_gone {gone} = {}",
        routed * 2,
        delivered + slow + gone
    );
    assert_eq!(routed, N + 1, "every publish routed once");
    assert!(slow > 0, "the stalled subscriber had drops");
    assert_eq!(
        delivered + slow + gone,
        2 * routed,
        "each routed copy is counted once, delivered or dropped"
    );

    // What the stalled subscriber held in overflow room when it was
    // declared slow was dropped from its queue (counted as delivered before).
    let shed = sample(&text, "slim_queue_shed_total");

    // The stalled client now reads: it gets exactly what was counted as
    // delivered to it (the reader got N + 1), less what was shed.
    let to_stalled = delivered - (N + 1) - shed;
    let mut got = 0;
    while got < to_stalled {
        next_message(&stalled, Duration::from_secs(10)).await;
        got += 1;
    }
    assert_no_message(&stalled, Duration::from_millis(300)).await;
    eprintln!("stalled client read {got} messages = delivered to it − shed {shed} = {to_stalled}");

    // Refused by policy: a publish to a name outside the publisher's rules
    // (many times), and a subscription outside the reader's.
    let secret = name("acme/secret/plans");
    for _ in 0..50 {
        publ.publish(&secret, Mode::Multicast, b"x").await.unwrap();
    }
    assert!(
        stalled.subscribe(&secret).await.is_err(),
        "subscribe refused"
    );
    assert_eventually(Duration::from_secs(10), "denials counted", || async {
        sample(
            &prom.render(),
            "slim_authz_denied_total{action=\"publish\"}",
        ) == 50
    })
    .await;

    let elapsed = started.elapsed();
    // One line per identity per 10 s window (and the window-end summaries
    // say how many more).
    let windows = 1 + elapsed.as_secs() as usize / 10;
    let slow_lines = log.lines_with(&[
        "slow consumer detected",
        "spiffe://example.org/agent/stalled",
        "acme/flood/stalled",
    ]);
    for l in &slow_lines {
        eprintln!("log: {l}");
    }
    assert!(
        !slow_lines.is_empty() && slow_lines.len() <= windows,
        "{} slow-consumer lines for {slow} drops in {elapsed:?}",
        slow_lines.len()
    );
    assert!(
        log.lines_with(&["slow consumer detected", "agent/reader"])
            .is_empty(),
        "the healthy reader is not reported"
    );
    let publish_lines = log.lines_with(&[
        "publish refused by policy",
        "spiffe://example.org/agent/pub",
        "acme/secret/plans",
    ]);
    let subscribe_lines = log.lines_with(&[
        "subscribe refused by policy",
        "spiffe://example.org/agent/stalled",
        "acme/secret/plans",
    ]);
    for l in publish_lines.iter().chain(&subscribe_lines) {
        eprintln!("log: {l}");
    }
    assert!(
        !publish_lines.is_empty() && publish_lines.len() <= windows,
        "{} publish-refusal lines for 50 refusals",
        publish_lines.len()
    );
    assert_eq!(subscribe_lines.len(), 1, "one subscribe refusal, one line");

    // The end of each window says how many were not logged: with the lines
    // logged in full, they account for every refused publish.
    let suppressed = |who: &str, what: &str| -> (usize, u64) {
        let lines = log.lines_with(&[who, what, "(suppressed)"]);
        let n = lines
            .iter()
            .filter_map(|l| {
                let (_, rest) = l.split_once(&format!("{who}: "))?;
                rest.split_whitespace().next()?.parse::<u64>().ok()
            })
            .sum();
        (lines.len(), n)
    };
    let publ_id = "spiffe://example.org/agent/pub";
    assert_eventually(
        Duration::from_secs(25),
        "the window's end accounts for every refused publish",
        || async {
            let full = log
                .lines_with(&["publish refused by policy", publ_id])
                .len() as u64;
            full + suppressed(publ_id, "more refusals by policy").1 == 50
        },
    )
    .await;
    let stalled_id = "spiffe://example.org/agent/stalled";
    assert_eventually(
        Duration::from_secs(25),
        "the window's end counts the slow consumer's other events",
        || async { suppressed(stalled_id, "more slow-consumer detections").1 > 0 },
    )
    .await;
    for l in log
        .lines_with(&["(suppressed)"])
        .iter()
        .filter(|l| l.contains(publ_id) || l.contains(stalled_id))
    {
        eprintln!("log: {l}");
    }
    node.shutdown(Duration::from_secs(1)).await;
}
