//! Workload identity end to end: SVIDs from a Workload API server through the
//! real `spiffe` client, rotation under load, the certificate matrix at the
//! handshake, and JWT-SVID hellos.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use slim_auth::devca::testing;
use slim_auth::policy::Policy;
use slim_auth::{DevCa, IdentitySource, IdentitySourceConfig, JwtSigner, ServerMatch, SpiffeId};
use slim_client::{Client, ClientConfig, ClientError, ConnState, Credentials};
use slim_devspire::{DevSpire, DevSpireConfig};
use slim_tests::*;
use slim_wire::{ErrorCode, Frame, Mode};

fn sid(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

/// A Workload API server for one workload, rotating every `rotate`.
async fn agent(dir: &std::path::Path, id: &str, rotate: Option<Duration>) -> DevSpire {
    let ca_dir = dir.join("ca");
    let ca = if ca_dir.join("ca.crt").exists() {
        DevCa::load(&ca_dir).unwrap()
    } else {
        DevCa::init(&ca_dir, "example.org").unwrap()
    };
    let mut cfg = DevSpireConfig::new(
        dir.join(format!("{}.sock", id.replace('/', "_"))),
        sid(&format!("spiffe://example.org/{id}")),
    );
    cfg.rotate_every = rotate;
    DevSpire::start(cfg, ca)
        .await
        .expect("start Workload API server")
}

async fn source(agent: &DevSpire) -> IdentitySource {
    IdentitySource::start(IdentitySourceConfig::Spire {
        socket: Some(agent.endpoint()),
        initial_timeout: Duration::from_secs(5),
    })
    .await
    .expect("identity from the Workload API")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_every_2s_for_30s_loses_nothing_and_drops_no_connection() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let every = Some(Duration::from_secs(2));
    let (a_node, a_pub, a_sub) = (
        agent(dir.path(), "node", every).await,
        agent(dir.path(), "agent/pub", every).await,
        agent(dir.path(), "agent/sub", every).await,
    );
    let node_src = source(&a_node).await;
    let node = slim_actors::start(
        slim_actors::NodeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..Default::default()
        },
        &node_src,
    )
    .await
    .unwrap();
    let addr = node.local_addr();
    let connect = |src: IdentitySource, n: &str| {
        let cfg = ClientConfig::with_credentials(addr, name(n), Credentials::Source(src));
        async move { Client::connect(cfg).await.unwrap() }
    };
    let sub = connect(source(&a_sub).await, "acme/rot/sub").await;
    let publ = connect(source(&a_pub).await, "acme/rot/pub").await;
    let chan = name("acme/rot/chan");
    sub.subscribe(&chan).await.unwrap();
    let conns_before: BTreeSet<u64> = node.connections().iter().map(|c| c.id).collect();
    let first_serial = RawConn::connect(addr, &a_pub.current_svids()[0])
        .await
        .node_cert_serial();
    let mut pub_state = publ.state();
    let mut sub_state = sub.state();

    let started = Instant::now();
    let mut sent = 0u64;
    let mut seen = SeqSet::new(40_000);
    let mut serials = BTreeSet::new();
    while started.elapsed() < Duration::from_secs(30) {
        for _ in 0..10 {
            publ.publish(&chan, Mode::Multicast, &seq_payload(sent, 32))
                .await
                .unwrap();
            sent += 1;
        }
        while let Some(slim_client::Event::Message(d)) = next_event(&sub, Duration::ZERO).await {
            assert!(seen.insert(payload_seq(&d.payload)), "duplicate");
        }
        if sent.is_multiple_of(2000) {
            // A new handshake sees the node's current certificate.
            let raw = RawConn::connect(addr, &a_pub.current_svids()[0]).await;
            serials.insert(raw.node_cert_serial());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while seen.count() < sent {
        let d = next_message(&sub, Duration::from_secs(5)).await;
        assert!(seen.insert(payload_seq(&d.payload)), "duplicate");
    }
    assert_eq!(seen.missing(sent), Vec::<u64>::new(), "lost messages");
    assert_eq!(seen.duplicates(), 0);
    // No connection was dropped: same connection ids, clients never left Connected.
    let client_conns: BTreeSet<u64> = node
        .connections()
        .iter()
        .filter(|c| c.name.starts_with("acme/rot/"))
        .map(|c| c.id)
        .collect();
    assert!(
        client_conns.is_subset(&conns_before) && client_conns.len() == 2,
        "{client_conns:?} vs {conns_before:?}"
    );
    assert!(
        !pub_state.has_changed().unwrap()
            || matches!(*pub_state.borrow_and_update(), ConnState::Connected { .. })
    );
    assert!(
        !sub_state.has_changed().unwrap()
            || matches!(*sub_state.borrow_and_update(), ConnState::Connected { .. })
    );
    // New handshakes showed new certificates as the node's SVID rotated.
    serials.remove(&first_serial);
    assert!(
        serials.len() >= 5,
        "only {} new node serials seen over 30 s",
        serials.len()
    );
    eprintln!(
        "rotation: {sent} messages, 0 lost, 0 duplicates, {} distinct new node serials, connections kept: {client_conns:?}",
        serials.len()
    );
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_matrix_is_refused_at_the_handshake_with_distinct_reasons() {
    init_tracing();
    let pki = Pki::new("example.org");
    let policy = Policy::from_toml(
        r#"
[[rule]]
spiffe_id = "spiffe://example.org/agent/*"
register = ["acme/*/*/*"]
"#,
    )
    .unwrap();
    let node = start_node(&pki, |c| c.policy = policy).await;
    let addr = node.local_addr();
    let id = sid("spiffe://example.org/agent/x");
    let trusting_node = |mut i: slim_auth::Identity| {
        // Every bad client trusts the real node, so only the node can refuse it.
        i.bundles = pki.ca.bundles();
        i
    };
    let other_td = DevCa::generate("other.org").unwrap();
    let same_name = DevCa::generate("example.org").unwrap();
    let cases: Vec<(&str, slim_auth::Identity)> = vec![
        (
            "unknown_trust_domain",
            trusting_node(
                other_td
                    .issue(&sid("spiffe://other.org/agent/x"), Duration::from_secs(600))
                    .unwrap(),
            ),
        ),
        ("expired", testing::expired(&pki.ca, &id).unwrap()),
        (
            "not_yet_valid",
            testing::not_yet_valid(&pki.ca, &id).unwrap(),
        ),
        (
            "untrusted_issuer",
            trusting_node(same_name.issue(&id, Duration::from_secs(600)).unwrap()),
        ),
        ("ca_as_leaf", testing::ca_as_leaf(&pki.ca, &id).unwrap()),
        (
            "two_uri_sans",
            testing::two_uri_sans(&pki.ca, &id, &sid("spiffe://example.org/agent/y")).unwrap(),
        ),
        (
            "no_uri_san",
            testing::dns_only(&pki.ca, &id, "agent.example.org").unwrap(),
        ),
    ];
    for (reason, identity) in cases {
        let before = node.handshake_refusals().get(reason).copied().unwrap_or(0);
        let mut cfg = ClientConfig::new(addr, name("acme/m/x/1"), identity);
        cfg.connect_timeout = Duration::from_secs(5);
        let err = Client::connect(cfg).await.expect_err(reason);
        assert!(
            matches!(err, ClientError::Tls(_) | ClientError::Connect { .. }),
            "{reason}: {err:?}"
        );
        assert_eq!(
            node.handshake_refusals().get(reason).copied().unwrap_or(0),
            before + 1,
            "{reason}: refusals {:?}",
            node.handshake_refusals()
        );
        eprintln!("refused at handshake: {reason}: client saw {err}");
    }
    // Right trust domain and CA, but the policy does not know this ID.
    let mut cfg = ClientConfig::new(addr, name("acme/m/x/1"), pki.identity("ops/intruder"));
    cfg.connect_timeout = Duration::from_secs(5);
    match Client::connect(cfg).await {
        Err(ClientError::Rejected { code, reason }) => {
            assert_eq!(code, ErrorCode::UNAUTHORIZED);
            assert!(
                reason.contains("not allowed by the authorization policy"),
                "{reason}"
            );
            eprintln!("refused after handshake, before any frame: {reason}");
        }
        other => panic!("expected a policy refusal, got {other:?}"),
    }
    // The allowed identity connects.
    let ok = Client::connect(ClientConfig::new(
        addr,
        name("acme/m/x/2"),
        pki.identity("agent/x"),
    ))
    .await;
    assert!(ok.is_ok(), "{:?}", ok.err());
    assert_eq!(node.connection_count(), 1);
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_svid_hello_is_validated() {
    init_tracing();
    let pki = Pki::new("example.org");
    let signer = JwtSigner::generate("example.org").unwrap();
    let audience = "spiffe://example.org/node";
    let node = start_node(&pki, |c| {
        c.token_auth.jwt = Some(slim_actors::JwtAuth {
            audience: audience.into(),
            keys: slim_actors::JwtKeys::Static(signer.bundles()),
        });
    })
    .await;
    let addr = node.local_addr();
    let tls = || {
        slim_auth::tls::client_config_server_auth_only(
            std::sync::Arc::new(std::sync::RwLock::new(pki.ca.bundles())),
            &[slim_auth::ALPN_SLIM],
            ServerMatch::Any,
        )
        .unwrap()
    };
    let agent = sid("spiffe://example.org/agent/jwt");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let valid = signer
        .sign(&agent, &[audience], Duration::from_secs(300))
        .unwrap();
    let wrong_aud = signer
        .sign(
            &agent,
            &["spiffe://example.org/other"],
            Duration::from_secs(300),
        )
        .unwrap();
    let expired = signer
        .sign_claims(&serde_json::json!({"sub": agent.as_str(), "aud": [audience], "exp": now - 3600, "iat": now - 7200}))
        .unwrap();
    // Flip one character at the start of the signature: every base64url
    // symbol there carries 6 full bits, so the token still decodes (the last
    // symbol would not: it has padding bits that must be zero).
    let sig_at = valid.rfind('.').unwrap() + 1;
    let mut bad_sig = valid.clone();
    let flipped = if valid.as_bytes()[sig_at] == b'A' {
        "B"
    } else {
        "A"
    };
    bad_sig.replace_range(sig_at..sig_at + 1, flipped);
    let unknown_key = JwtSigner::generate("example.org")
        .unwrap()
        .sign(&agent, &[audience], Duration::from_secs(300))
        .unwrap();

    for (token, want) in [
        (wrong_aud, "wrong_audience"),
        (expired, "expired"),
        (bad_sig, "bad_signature"),
        (unknown_key, "unknown_key"),
    ] {
        let mut raw = RawConn::connect_tls(addr, tls()).await;
        match raw
            .hello_with_token("acme/jwt/agent/1", Some(format!("jwt:{token}")))
            .await
        {
            Frame::Reject(r) => {
                assert_eq!(r.code, ErrorCode::UNAUTHORIZED);
                assert!(r.reason.contains(want), "{want}: {}", r.reason);
                eprintln!("JWT refused: {}", r.reason);
            }
            other => panic!("{want}: expected a reject, got {other:?}"),
        }
    }
    // No token and no certificate: refused with a reason too.
    let mut raw = RawConn::connect_tls(addr, tls()).await;
    assert!(matches!(
        raw.hello_with_token("acme/jwt/agent/1", None).await,
        Frame::Reject(_)
    ));

    // The valid token is accepted and becomes the connection's identity.
    let mut raw = RawConn::connect_tls(addr, tls()).await;
    match raw
        .hello_with_token("acme/jwt/agent/1", Some(format!("jwt:{valid}")))
        .await
    {
        Frame::Accept(a) => assert_eq!(a.identity.as_deref(), Some(agent.as_str())),
        other => panic!("expected accept, got {other:?}"),
    }
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_authenticates_with_a_jwt_svid_from_the_workload_api() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let node_agent = agent(dir.path(), "node", None).await;
    let client_agent = agent(dir.path(), "agent/j", None).await;
    let node_src = source(&node_agent).await;
    // Both servers sign JWTs with their own keys; the node trusts the client's.
    let node = slim_actors::start(
        slim_actors::NodeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            token_auth: slim_actors::TokenAuth {
                jwt: Some(slim_actors::JwtAuth {
                    audience: "spiffe://example.org/node".into(),
                    keys: slim_actors::JwtKeys::Static(client_agent.jwt_bundles()),
                }),
                shared_secret: None,
            },
            ..Default::default()
        },
        &node_src,
    )
    .await
    .unwrap();
    let cfg = ClientConfig::with_credentials(
        node.local_addr(),
        name("acme/jwt/sdk"),
        Credentials::Jwt {
            source: source(&client_agent).await,
            audience: "spiffe://example.org/node".into(),
        },
    );
    let c = Client::connect(cfg).await.unwrap();
    assert_eq!(
        c.authenticated_as().as_deref(),
        Some("spiffe://example.org/agent/j")
    );
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_agent_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nothing-here.sock");
    let t0 = Instant::now();
    let err = IdentitySource::start(IdentitySourceConfig::Spire {
        socket: Some(format!("unix://{}", sock.display())),
        initial_timeout: Duration::from_secs(1),
    })
    .await
    .map(|_| ())
    .expect_err("no agent");
    let msg = err.to_string();
    eprintln!("absent agent: {msg}");
    assert!(
        msg.starts_with(&format!("no SPIRE agent at unix://{}", sock.display())),
        "{msg}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_secret_mode_is_development_only_and_checks_the_secret() {
    init_tracing();
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |c| c.token_auth.shared_secret = Some("s3cret".into())).await;
    let creds = |secret: &str| Credentials::SharedSecret {
        secret: secret.into(),
        bundles: pki.ca.bundles(),
    };
    let err = Client::connect(ClientConfig::with_credentials(
        node.local_addr(),
        name("acme/dev/x"),
        creds("wrong"),
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(&err, ClientError::Rejected { code, reason } if *code == ErrorCode::UNAUTHORIZED && reason == "wrong shared secret"),
        "{err:?}"
    );
    let c = Client::connect(ClientConfig::with_credentials(
        node.local_addr(),
        name("acme/dev/x"),
        creds("s3cret"),
    ))
    .await
    .unwrap();
    assert_eq!(
        c.authenticated_as().as_deref(),
        Some(slim_actors::conn::SHARED_SECRET_ID)
    );
    node.shutdown(Duration::from_secs(1)).await;
}
