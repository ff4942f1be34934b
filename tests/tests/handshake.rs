//! Certificates refused at the QUIC/TLS handshake.

use std::time::Duration;

use slim_auth::{DevCa, SpiffeId, devca::testing};
use slim_client::{Client, ClientConfig, ClientError};
use slim_tests::*;

async fn connect_with(
    node: std::net::SocketAddr,
    identity: slim_auth::Identity,
) -> Result<Client, ClientError> {
    let mut cfg = ClientConfig::new(node, name("acme/test/client"), identity);
    cfg.connect_timeout = Duration::from_secs(5);
    Client::connect(cfg).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_ca_and_ca_as_leaf_are_refused() {
    init_tracing();
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |_| {}).await;

    // The good identity connects.
    let ok = connect_with(node.local_addr(), pki.identity("agent/good")).await;
    assert!(ok.is_ok(), "{:?}", ok.err());

    // Same trust-domain name, different CA: refused.
    let other = DevCa::generate("example.org").unwrap();
    let id = SpiffeId::parse("spiffe://example.org/agent/evil").unwrap();
    let mut foreign = other.issue(&id, Duration::from_secs(600)).unwrap();
    // The impostor trusts the real node so that only the server side can refuse it.
    foreign.bundles = pki.ca.bundles();
    let err = connect_with(node.local_addr(), foreign).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Tls(_) | ClientError::Connect { .. }),
        "{err:?}"
    );

    // A CA certificate presented as a leaf: refused.
    let ca_leaf = testing::ca_as_leaf(
        &pki.ca,
        &SpiffeId::parse("spiffe://example.org/agent/ca").unwrap(),
    )
    .unwrap();
    let err = connect_with(node.local_addr(), ca_leaf).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Tls(_) | ClientError::Connect { .. }),
        "{err:?}"
    );

    // Neither refused client got as far as a registered connection.
    assert_eventually(
        Duration::from_secs(2),
        "only the good client is connected",
        || async { node.connection_count() == 1 },
    )
    .await;
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_refuses_a_node_from_another_ca() {
    init_tracing();
    let pki = Pki::new("example.org");
    let rogue = Pki::new("example.org");
    let node = start_node(&rogue, |_| {}).await;
    let err = connect_with(node.local_addr(), pki.identity("agent/a"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Tls(_) | ClientError::Connect { .. }),
        "{err:?}"
    );
    assert_eq!(node.connection_count(), 0);
    node.shutdown(Duration::from_secs(1)).await;
}
