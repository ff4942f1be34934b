//! Authorization by SPIFFE ID: nobody can speak as someone else.

use std::time::Duration;

use slim_auth::policy::Policy;
use slim_client::{Client, ClientConfig, ClientError, Event};
use slim_tests::*;
use slim_wire::{ErrorCode, Mode};

const POLICY: &str = r#"
[[rule]]
spiffe_id = "spiffe://example.org/agent/a"
register = ["org/ns/a/*"]
publish = ["org/ns/chan", "org/ns/a/*"]
subscribe = ["org/ns/chan"]

[[rule]]
spiffe_id = "spiffe://example.org/agent/b"
register = ["org/ns/b/*"]
subscribe = ["org/ns/chan", "org/ns/private"]
"#;

async fn connect_as(
    pki: &Pki,
    node: std::net::SocketAddr,
    svid: &str,
    n: &str,
) -> Result<Client, ClientError> {
    Client::connect(ClientConfig::new(node, name(n), pki.identity(svid))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofing_is_refused_and_counted_while_allowed_traffic_flows() {
    init_tracing();
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |c| c.policy = Policy::from_toml(POLICY).unwrap()).await;
    let addr = node.local_addr();

    // Registering under someone else's name: rejected with the reason.
    match connect_as(&pki, addr, "agent/a", "org/ns/b/1").await {
        Err(ClientError::Rejected { code, reason }) => {
            assert_eq!(code, ErrorCode::UNAUTHORIZED);
            assert_eq!(
                reason,
                "spiffe://example.org/agent/a may not register org/ns/b/1"
            );
        }
        other => panic!("expected rejection, got {other:?}"),
    }
    // An identity no rule knows cannot even connect.
    match connect_as(&pki, addr, "agent/stranger", "org/ns/s/1").await {
        Err(ClientError::Rejected { code, reason }) => {
            assert_eq!(code, ErrorCode::UNAUTHORIZED);
            assert!(
                reason.contains("not allowed by the authorization policy"),
                "{reason}"
            );
        }
        other => panic!("expected refusal, got {other:?}"),
    }

    let a = connect_as(&pki, addr, "agent/a", "org/ns/a/1")
        .await
        .unwrap();
    let b = connect_as(&pki, addr, "agent/b", "org/ns/b/1")
        .await
        .unwrap();
    b.subscribe(&name("org/ns/chan")).await.unwrap();
    b.subscribe(&name("org/ns/private")).await.unwrap();

    // Subscribing outside its rules: refused, connection stays.
    match a.subscribe(&name("org/ns/private")).await {
        Err(ClientError::Subscribe { code, reason, .. }) => {
            assert_eq!(code, ErrorCode::UNAUTHORIZED);
            assert!(
                reason.contains("may not subscribe org/ns/private"),
                "{reason}"
            );
        }
        other => panic!("expected refusal, got {other:?}"),
    }
    // Publishing outside its rules: an error frame with the reason.
    let id = a
        .publish(&name("org/ns/private"), Mode::Multicast, b"leak")
        .await
        .unwrap();
    match next_event(&a, Duration::from_secs(5)).await {
        Some(Event::Error(e)) => {
            assert_eq!(e.code, ErrorCode::UNAUTHORIZED);
            assert_eq!(e.msg_id, Some(id));
            assert!(
                e.reason.contains("may not publish org/ns/private"),
                "{}",
                e.reason
            );
        }
        other => panic!("expected an unauthorized error, got {other:?}"),
    }
    // The allowed traffic still works, stamped with the sender's real identity.
    a.publish(&name("org/ns/chan"), Mode::Multicast, b"hello")
        .await
        .unwrap();
    let d = next_message(&b, Duration::from_secs(5)).await;
    assert_eq!(&d.payload[..], b"hello");
    assert_eq!(
        d.from_identity.as_deref(),
        Some("spiffe://example.org/agent/a")
    );
    assert_eq!(d.from.as_str(), a.name().as_str());
    assert_no_message(&b, Duration::from_millis(200)).await;

    // A reloaded policy applies to established connections at their next action.
    let widened = POLICY.replace(
        "publish = [\"org/ns/chan\", \"org/ns/a/*\"]",
        "publish = [\"org/ns/chan\", \"org/ns/a/*\", \"org/ns/private\"]",
    );
    node.set_policy(Policy::from_toml(&widened).unwrap());
    a.publish(&name("org/ns/private"), Mode::Multicast, b"now allowed")
        .await
        .unwrap();
    assert_eq!(
        &next_message(&b, Duration::from_secs(5)).await.payload[..],
        b"now allowed"
    );
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_reload_revokes_what_established_connections_hold() {
    init_tracing();
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |c| c.policy = Policy::from_toml(POLICY).unwrap()).await;
    let addr = node.local_addr();
    let a = connect_as(&pki, addr, "agent/a", "org/ns/a/1")
        .await
        .unwrap();
    let b = connect_as(&pki, addr, "agent/b", "org/ns/b/1")
        .await
        .unwrap();
    b.subscribe(&name("org/ns/chan")).await.unwrap();
    b.subscribe(&name("org/ns/private")).await.unwrap();

    // b may no longer subscribe to the private channel: that subscription
    // goes, b is told why, and b's other subscription stays.
    let narrowed = POLICY.replace(
        "subscribe = [\"org/ns/chan\", \"org/ns/private\"]",
        "subscribe = [\"org/ns/chan\"]",
    );
    node.set_policy(Policy::from_toml(&narrowed).unwrap());
    match next_event(&b, Duration::from_secs(5)).await {
        Some(Event::Error(e)) => {
            assert_eq!(e.code, ErrorCode::UNAUTHORIZED);
            assert_eq!(e.name.as_ref().map(|n| n.as_str()), Some("org/ns/private"));
            assert!(
                e.reason.contains("revoked by a policy reload"),
                "{}",
                e.reason
            );
        }
        other => panic!("expected the revocation, got {other:?}"),
    }
    assert_eventually(
        Duration::from_secs(5),
        "the registry drops the revoked subscription",
        || async { node.registry().lookup("org/ns/private").is_none() },
    )
    .await;
    a.publish(&name("org/ns/chan"), Mode::Multicast, b"still here")
        .await
        .unwrap();
    assert_eq!(
        &next_message(&b, Duration::from_secs(5)).await.payload[..],
        b"still here"
    );

    // a's identity loses its rule altogether: its connection is closed.
    let without_a = narrowed.replace(
        "spiffe://example.org/agent/a",
        "spiffe://example.org/agent/gone",
    );
    node.set_policy(Policy::from_toml(&without_a).unwrap());
    assert_eventually(
        Duration::from_secs(5),
        "a's connection is closed by the node",
        || async {
            node.connections()
                .iter()
                .all(|c| c.name != a.name().as_str())
        },
    )
    .await;
    assert_eq!(node.connections().len(), 1, "only b is left");
    drop(a);
    node.shutdown(Duration::from_secs(1)).await;
}
