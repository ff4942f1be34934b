//! Refused handshakes cannot make the node log without bound: 300 clients
//! with certificates from a CA the node does not trust are all refused and
//! counted, and the log holds one line showing the first and a summary of
//! the rest. (Its own test binary: it captures this process's log.)

use std::time::Duration;

use slim_tests::*;

/// One attempt with an untrusted certificate; the node refuses it.
async fn untrusted_attempt(ep: &quinn::Endpoint, node: std::net::SocketAddr) {
    let Ok(connecting) = ep.connect(node, "slim-node") else {
        return;
    };
    if let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_secs(5), connecting).await {
        // TLS 1.3: the client may finish before the node's verdict arrives.
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_handshakes_make_a_bounded_number_of_log_lines() {
    let log = CapturedLog::install("info");
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |_| {}).await;
    let addr = node.local_addr();

    // Same trust-domain name, another CA; it trusts the real node, so that
    // only the node can refuse it.
    let evil = Pki::new("example.org");
    let mut mallory = evil.identity("agent/mallory");
    mallory.bundles = pki.ca.bundles();
    let ep = quic_endpoint(client_tls(&mallory));
    const N: u64 = 300;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..N {
        let ep = ep.clone();
        set.spawn(async move { untrusted_attempt(&ep, addr).await });
        if set.len() >= 20 {
            set.join_next().await;
        }
    }
    while set.join_next().await.is_some() {}
    eprintln!("refusals: {:?}", node.handshake_refusals());
    assert_eventually(Duration::from_secs(10), "every attempt refused", || {
        let n = node
            .handshake_refusals()
            .get("untrusted_issuer")
            .copied()
            .unwrap_or(0);
        async move { n == N }
    })
    .await;

    // Every refusal is in the log, as its own line or in a window's
    // summary; the summaries come every 10 s.
    let summary = "connection attempts refused or abandoned in the last 10 s";
    let accounted = |log: &CapturedLog| {
        let total: u64 = log
            .lines_with(&[summary])
            .iter()
            .filter_map(|l| {
                l.split(&['"', ' '][..])
                    .find_map(|w| w.strip_prefix("total=")?.parse::<u64>().ok())
            })
            .sum();
        total + log.lines_with(&["handshake refused"]).len() as u64
    };
    assert_eventually(
        Duration::from_secs(25),
        "the refusals are accounted for",
        || {
            let n = accounted(&log);
            async move { n >= N }
        },
    )
    .await;
    let refused = log.lines_with(&["handshake refused"]);
    let summaries = log.lines_with(&[summary]);
    for l in refused.iter().chain(&summaries) {
        eprintln!("{l}");
    }
    // One line in full per reason per window, and a summary per window.
    assert!(
        refused.len() <= 3,
        "{} lines in full for {N} refusals",
        refused.len()
    );
    assert!(summaries.len() <= 3, "{summaries:?}");
    // Nothing else logs per refusal: every line the process wrote (the
    // node's start and stop included) is far fewer than the refusals.
    let all = log.lines_with(&[""]);
    assert!(
        all.len() < 40,
        "{} log lines for {N} refusals:\n{}",
        all.len(),
        all.join("\n")
    );
    node.shutdown(Duration::ZERO).await;
}
