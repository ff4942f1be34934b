//! A client connection's task takes its control requests through a small
//! bounded channel, and the node's policy changes are sent to it without
//! waiting. Nothing that matters may be lost to a full channel: every
//! (un)subscribe is answered in order, and a policy change that finds the
//! channel full still applies.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use slim_auth::policy::Policy;
use slim_client::{Client, ClientConfig};
use slim_tests::*;

const T: Duration = Duration::from_secs(10);

const POLICY: &str = r#"
[[rule]]
spiffe_id = "spiffe://example.org/agent/a"
register = ["org/ns/a/*"]
subscribe = ["org/ns/s/*"]
"#;

/// The same grants for agent/a, one more rule for somebody else: a reload
/// that changes nothing agent/a holds.
const POLICY_TOO: &str = r#"
[[rule]]
spiffe_id = "spiffe://example.org/agent/a"
register = ["org/ns/a/*"]
subscribe = ["org/ns/s/*"]

[[rule]]
spiffe_id = "spiffe://example.org/agent/z"
register = ["org/ns/z/*"]
"#;

async fn connect_a(pki: &Pki, node: std::net::SocketAddr) -> Client {
    Client::connect(ClientConfig::new(
        node,
        name("org/ns/a/1"),
        pki.identity("agent/a"),
    ))
    .await
    .unwrap()
}

/// The connection's explicit subscriptions as the node's registry holds
/// them (its registration names aside).
fn subscriptions(node: &slim_actors::NodeHandle, client: &Client) -> BTreeSet<String> {
    let Some(c) = node
        .connections()
        .into_iter()
        .find(|c| c.name == client.name().as_str())
    else {
        return BTreeSet::new();
    };
    let own = [
        client.name().as_str().to_owned(),
        client.name().service_str().to_owned(),
    ];
    node.registry()
        .names_of(c.id)
        .into_iter()
        .filter(|n| !own.contains(n))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscription_changes_amid_policy_reloads_end_with_the_expected_set() {
    init_tracing();
    let pki = Pki::new("example.org");
    let node = Arc::new(start_node(&pki, |c| c.policy = Policy::from_toml(POLICY).unwrap()).await);
    let a = connect_a(&pki, node.local_addr()).await;

    // Reloads as fast as they come, each telling every connection's task
    // without waiting: its control channel is full much of the time.
    let stop = Arc::new(AtomicBool::new(false));
    let reloads = Arc::new(AtomicU64::new(0));
    let reloader = {
        let (node, stop, reloads) = (Arc::clone(&node), Arc::clone(&stop), Arc::clone(&reloads));
        let policies = [
            Policy::from_toml(POLICY).unwrap(),
            Policy::from_toml(POLICY_TOO).unwrap(),
        ];
        tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                node.set_policy(policies[i % 2].clone());
                reloads.fetch_add(1, Ordering::Relaxed);
                i += 1;
                tokio::task::yield_now().await;
            }
        })
    };

    // 1,000 requests over 37 names: each subscribes a name not held and
    // unsubscribes one held, so every answer depends on the ones before.
    let mut expected = BTreeSet::new();
    for i in 0..1000 {
        let n = format!("org/ns/s/{}", i % 37 + (i / 111) % 3);
        if expected.remove(&n) {
            a.unsubscribe(&name(&n)).await.unwrap_or_else(|e| {
                panic!("unsubscribe #{i} ({n}) refused: {e}");
            });
        } else {
            a.subscribe(&name(&n)).await.unwrap_or_else(|e| {
                panic!("subscribe #{i} ({n}) refused: {e}");
            });
            expected.insert(n);
        }
    }
    stop.store(true, Ordering::Relaxed);
    reloader.await.unwrap();
    assert!(
        reloads.load(Ordering::Relaxed) > 0,
        "no reload ran during the churn"
    );
    assert!(!expected.is_empty());
    // Every request was answered after the node applied it: the set is
    // exact now, with no wait.
    assert_eq!(subscriptions(&node, &a), expected);

    drop(a);
    if let Ok(node) = Arc::try_unwrap(node) {
        node.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_that_finds_the_control_channel_full_still_closes_a_denied_connection() {
    init_tracing();
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |c| c.policy = Policy::from_toml(POLICY).unwrap()).await;
    let a = connect_a(&pki, node.local_addr()).await;
    a.subscribe(&name("org/ns/s/kept")).await.unwrap();
    let id = node
        .connections()
        .into_iter()
        .find(|c| c.name == a.name().as_str())
        .expect("a connected")
        .id;

    // The task holds, its channel full of requests that are no policy
    // change: the change below can only be told through the fallback.
    let release = node
        .hold_connection_control(a.name().as_str())
        .await
        .expect("a's connection task");
    let without_a = POLICY.replace(
        "spiffe://example.org/agent/a",
        "spiffe://example.org/agent/gone",
    );
    node.set_policy(Policy::from_toml(&without_a).unwrap());
    assert!(
        node.connections().iter().any(|c| c.id == id),
        "nothing runs the policy check while the task holds"
    );
    drop(release);
    assert_eventually(T, "a's connection is closed by the node", || async {
        !node.connections().iter().any(|c| c.id == id) && node.registry().names_of(id).is_empty()
    })
    .await;
    drop(a);
    node.shutdown(Duration::from_secs(1)).await;
}
