//! IdentitySource against a real Workload API server (slim-devspire) through the
//! `spiffe` crate, against spiffe-helper files, and the dev CA; rotation seen by
//! rustls handshakes.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConnection, ServerConnection};
use slim_auth::tls::{
    ALPN_SLIM, client_config, client_config_from_source, server_config_from_source,
};
use slim_auth::{
    AuthError, DevCa, Identity, IdentitySource, IdentitySourceConfig, ServerMatch, SpiffeId,
    TrustBundles, peer_not_after, peer_spiffe_id, validate_jwt_svid,
};
use slim_devspire::{DevSpire, DevSpireConfig};

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn serial(der: &[u8]) -> Vec<u8> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).unwrap();
    cert.raw_serial().to_vec()
}

fn leaf_serial(identity: &Identity) -> Vec<u8> {
    serial(identity.cert_chain[0].as_ref())
}

fn spire_cfg(endpoint: String) -> IdentitySourceConfig {
    IdentitySourceConfig::Spire {
        socket: Some(endpoint),
        initial_timeout: Duration::from_secs(5),
    }
}

/// Moves TLS records both ways until neither side has anything to send.
fn pump(client: &mut ClientConnection, server: &mut ServerConnection) -> Result<(), rustls::Error> {
    for _ in 0..100 {
        let mut progressed = false;
        while client.wants_write() {
            let mut buf = Vec::new();
            client.write_tls(&mut buf).unwrap();
            if buf.is_empty() {
                break;
            }
            progressed = true;
            let mut rd = &buf[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
            }
            server.process_new_packets()?;
        }
        while server.wants_write() {
            let mut buf = Vec::new();
            server.write_tls(&mut buf).unwrap();
            if buf.is_empty() {
                break;
            }
            progressed = true;
            let mut rd = &buf[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
            }
            client.process_new_packets()?;
        }
        if !progressed {
            return Ok(());
        }
    }
    panic!("handshake did not settle");
}

fn connect(
    ccfg: &Arc<rustls::ClientConfig>,
    scfg: &Arc<rustls::ServerConfig>,
) -> (ClientConnection, ServerConnection) {
    let name = ServerName::try_from("ignored.invalid").unwrap();
    let mut c = ClientConnection::new(ccfg.clone(), name).unwrap();
    let mut s = ServerConnection::new(scfg.clone()).unwrap();
    pump(&mut c, &mut s).unwrap();
    assert!(!c.is_handshaking() && !s.is_handshaking());
    (c, s)
}

fn server_leaf(c: &ClientConnection) -> CertificateDer<'static> {
    c.peer_certificates().unwrap()[0].clone().into_owned()
}

async fn changed_within(
    rx: &mut tokio::sync::watch::Receiver<Arc<Identity>>,
    limit: Duration,
) -> Duration {
    let t0 = Instant::now();
    tokio::time::timeout(limit, rx.changed())
        .await
        .unwrap_or_else(|_| panic!("no rotation seen within {limit:?}"))
        .unwrap();
    t0.elapsed()
}

/// Polls `cond` every 10 ms until it holds, or panics after `limit`.
async fn eventually(limit: Duration, what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn spire_rotation_reaches_new_handshakes_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    DevCa::init(&ca_dir, "example.org").unwrap();
    let server_spire = DevSpire::start(
        DevSpireConfig::new(
            dir.path().join("server.sock"),
            id("spiffe://example.org/node/1"),
        ),
        DevCa::load(&ca_dir).unwrap(),
    )
    .await
    .unwrap();
    let client_spire = DevSpire::start(
        DevSpireConfig::new(
            dir.path().join("client.sock"),
            id("spiffe://example.org/agent/a"),
        ),
        DevCa::load(&ca_dir).unwrap(),
    )
    .await
    .unwrap();

    let server_src = IdentitySource::start(spire_cfg(server_spire.endpoint()))
        .await
        .unwrap();
    let client_src = IdentitySource::start(spire_cfg(client_spire.endpoint()))
        .await
        .unwrap();
    assert_eq!(server_src.kind(), "spire");
    assert_eq!(server_src.spiffe_id(), id("spiffe://example.org/node/1"));
    let s1 = leaf_serial(&server_src.current());
    assert_eq!(s1, leaf_serial(&server_spire.current_svids()[0]));

    let scfg = Arc::new(server_config_from_source(&server_src, &[ALPN_SLIM]).unwrap());
    let ccfg = Arc::new(
        client_config_from_source(
            &client_src,
            &[ALPN_SLIM],
            ServerMatch::Exact(id("spiffe://example.org/node/1")),
        )
        .unwrap(),
    );

    let (mut c1, mut srv1) = connect(&ccfg, &scfg);
    assert_eq!(serial(server_leaf(&c1).as_ref()), s1);
    assert_eq!(
        peer_spiffe_id(srv1.peer_certificates().unwrap()).unwrap(),
        id("spiffe://example.org/agent/a")
    );
    let not_after = peer_not_after(c1.peer_certificates().unwrap()).unwrap();
    assert_eq!(not_after, server_src.current().not_after);
    assert!(not_after > SystemTime::now());

    // Rotate both sides.
    let mut srx = server_src.subscribe();
    let mut crx = client_src.subscribe();
    server_spire.rotate_now().unwrap();
    client_spire.rotate_now().unwrap();
    let took = changed_within(&mut srx, Duration::from_secs(2)).await;
    changed_within(&mut crx, Duration::from_secs(2)).await;
    eprintln!("rotation reached the IdentitySource after {took:?}");
    let s2 = leaf_serial(&server_src.current());
    assert_ne!(s1, s2, "new serial");
    assert_eq!(s2, leaf_serial(&server_spire.current_svids()[0]));

    // A new handshake with the same (unchanged) configs presents the new SVIDs.
    let (c2, srv2) = connect(&ccfg, &scfg);
    assert_eq!(serial(server_leaf(&c2).as_ref()), s2);
    assert_eq!(
        serial(srv2.peer_certificates().unwrap()[0].as_ref()),
        leaf_serial(&client_src.current())
    );

    // The connection made before rotation is untouched and still carries data.
    assert_eq!(serial(server_leaf(&c1).as_ref()), s1);
    use std::io::{Read, Write};
    c1.writer().write_all(b"still here").unwrap();
    pump(&mut c1, &mut srv1).unwrap();
    let mut buf = [0u8; 10];
    srv1.reader().read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here");

    server_src.shutdown().await;
    client_src.shutdown().await;
    server_spire.shutdown().await;
    client_spire.shutdown().await;
}

#[tokio::test]
async fn spire_bundle_update_reaches_verifiers() {
    let dir = tempfile::tempdir().unwrap();
    let spire = DevSpire::start(
        DevSpireConfig::new(dir.path().join("a.sock"), id("spiffe://example.org/node/1")),
        DevCa::generate("example.org").unwrap(),
    )
    .await
    .unwrap();
    let src = IdentitySource::start(spire_cfg(spire.endpoint()))
        .await
        .unwrap();
    let scfg = Arc::new(server_config_from_source(&src, &[ALPN_SLIM]).unwrap());

    // A client from another trust domain is refused while we have no bundle for it...
    let partner_ca = DevCa::generate("partner.org").unwrap();
    let partner = partner_ca
        .issue(
            &id("spiffe://partner.org/agent/p"),
            Duration::from_secs(600),
        )
        .unwrap();
    let mut partner_view = partner.clone();
    partner_view.bundles.merge(&spire.bundles());
    let ccfg = Arc::new(client_config(&partner_view, &[ALPN_SLIM], ServerMatch::Any).unwrap());
    let name = ServerName::try_from("x.invalid").unwrap();
    let mut c = ClientConnection::new(ccfg.clone(), name.clone()).unwrap();
    let mut s = ServerConnection::new(scfg.clone()).unwrap();
    let err = pump(&mut c, &mut s).expect_err("unknown trust domain must be refused");
    eprintln!("before federation: {err}");

    // ...and accepted once the agent serves the partner's bundle.
    let mut rx = src.subscribe();
    let mut extra = TrustBundles::new();
    extra.add("partner.org", partner_ca.ca_cert_der());
    spire.set_extra_bundles(extra);
    changed_within(&mut rx, Duration::from_secs(2)).await;
    assert!(
        src.shared_bundles()
            .read()
            .unwrap()
            .get("partner.org")
            .is_some()
    );
    let (_c, s) = connect(&ccfg, &scfg);
    assert_eq!(
        peer_spiffe_id(s.peer_certificates().unwrap()).unwrap(),
        id("spiffe://partner.org/agent/p")
    );
    src.shutdown().await;
    spire.shutdown().await;
}

#[tokio::test]
async fn no_agent_gives_a_clear_error_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nothing-here.sock");
    let t0 = Instant::now();
    let err = IdentitySource::start(IdentitySourceConfig::Spire {
        socket: Some(sock.display().to_string()),
        initial_timeout: Duration::from_secs(2),
    })
    .await
    .expect_err("there is no agent");
    let took = t0.elapsed();
    eprintln!("absent agent error after {took:?}: {err}");
    assert!(matches!(err, AuthError::NoAgent { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("no SPIRE agent at unix://{}: ", sock.display())),
        "{msg}"
    );
    assert!(msg.contains("No such file or directory"), "{msg}");
    assert!(took < Duration::from_secs(4), "took {took:?}");

    // A stale socket file with nobody listening: connection refused.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let err = IdentitySource::start(IdentitySourceConfig::Spire {
        socket: Some(format!("unix://{}", stale.display())),
        initial_timeout: Duration::from_secs(1),
    })
    .await
    .expect_err("nobody listens");
    eprintln!("stale socket error: {err}");
    assert!(err.to_string().contains("Connection refused"), "{err}");
}

#[tokio::test]
async fn spire_reconnects_after_agent_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    DevCa::init(&ca_dir, "example.org").unwrap();
    let sock = dir.path().join("agent.sock");
    let cfg = DevSpireConfig::new(&sock, id("spiffe://example.org/node/1"));
    let first = DevSpire::start(cfg.clone(), DevCa::load(&ca_dir).unwrap())
        .await
        .unwrap();
    let src = IdentitySource::start(spire_cfg(first.endpoint()))
        .await
        .unwrap();
    let before = leaf_serial(&src.current());
    let mut rx = src.subscribe();

    let failures = src.refresh_failures();
    first.shutdown().await;
    // The source has noticed the agent is gone: it tried to re-dial and failed…
    eventually(
        Duration::from_secs(10),
        "a failed re-dial of the stopped agent",
        || src.refresh_failures() > failures,
    )
    .await;
    // …and still serves the last SVID while the agent is away.
    assert_eq!(leaf_serial(&src.current()), before);

    let second = DevSpire::start(cfg, DevCa::load(&ca_dir).unwrap())
        .await
        .unwrap();
    let took = changed_within(&mut rx, Duration::from_secs(10)).await;
    eprintln!("re-synced with the restarted agent after {took:?}");
    let after = leaf_serial(&src.current());
    assert_ne!(before, after);
    assert_eq!(after, leaf_serial(&second.current_svids()[0]));
    src.shutdown().await;
    second.shutdown().await;
}

#[tokio::test]
async fn spire_jwt_svid_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let spire = DevSpire::start(
        DevSpireConfig::new(
            dir.path().join("a.sock"),
            id("spiffe://example.org/agent/a"),
        ),
        DevCa::generate("example.org").unwrap(),
    )
    .await
    .unwrap();
    let src = IdentitySource::start(spire_cfg(spire.endpoint()))
        .await
        .unwrap();
    let token = src
        .fetch_jwt_svid("spiffe://example.org/node/1")
        .await
        .unwrap();
    let bundles = src.jwt_bundles().await.unwrap();
    assert_eq!(bundles, spire.jwt_bundles());
    let who = validate_jwt_svid(
        &token,
        "spiffe://example.org/node/1",
        &bundles,
        SystemTime::now(),
    )
    .unwrap();
    assert_eq!(who, id("spiffe://example.org/agent/a"));
    let err = validate_jwt_svid(
        &token,
        "spiffe://example.org/node/2",
        &bundles,
        SystemTime::now(),
    )
    .unwrap_err();
    assert_eq!(err.reason_code(), "wrong_audience");
    src.shutdown().await;
    spire.shutdown().await;
}

#[tokio::test]
async fn files_source_reloads_rewritten_files() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::generate("example.org").unwrap();
    let me = id("spiffe://example.org/node/files");
    ca.issue_to_dir(&me, Duration::from_secs(600), dir.path())
        .unwrap();
    let src = IdentitySource::start(IdentitySourceConfig::Files {
        dir: dir.path().to_path_buf(),
    })
    .await
    .unwrap();
    assert_eq!(src.kind(), "files");
    let before = leaf_serial(&src.current());
    let mut rx = src.subscribe();

    let rewritten = ca
        .issue_to_dir(&me, Duration::from_secs(600), dir.path())
        .unwrap();
    let took = changed_within(&mut rx, Duration::from_secs(4)).await;
    eprintln!("files source reloaded after {took:?}");
    let after = leaf_serial(&src.current());
    assert_ne!(before, after);
    assert_eq!(after, leaf_serial(&rewritten));

    // A broken rewrite keeps the last good identity: once the poller has seen
    // the garbage and refused it, the identity is still the last good one.
    let failures = src.refresh_failures();
    std::fs::write(dir.path().join("tls.crt"), b"garbage").unwrap();
    eventually(
        Duration::from_secs(10),
        "the broken rewrite seen and refused",
        || src.refresh_failures() > failures,
    )
    .await;
    assert_eq!(leaf_serial(&src.current()), after);

    // Files cannot mint JWT-SVIDs.
    assert!(matches!(
        src.fetch_jwt_svid("aud").await,
        Err(AuthError::Unsupported(_))
    ));
    src.shutdown().await;
}

#[tokio::test]
async fn dev_source_issues_rotates_and_signs() {
    let dir = tempfile::tempdir().unwrap();
    let me = id("spiffe://example.org/node/dev");
    let src = IdentitySource::start(IdentitySourceConfig::Dev {
        ca_dir: dir.path().to_path_buf(),
        id: me.clone(),
        ttl: Duration::from_secs(2),
    })
    .await
    .unwrap();
    assert_eq!(src.kind(), "dev");
    assert_eq!(src.spiffe_id(), me);
    let before = leaf_serial(&src.current());
    let mut rx = src.subscribe();
    changed_within(&mut rx, Duration::from_secs(3)).await;
    assert_ne!(before, leaf_serial(&src.current()));

    let token = src.fetch_jwt_svid("aud").await.unwrap();
    let bundles = src.jwt_bundles().await.unwrap();
    assert_eq!(
        validate_jwt_svid(&token, "aud", &bundles, SystemTime::now()).unwrap(),
        me
    );
    // The CA and JWT key persist in the directory for other processes.
    assert!(dir.path().join("ca.crt").exists());
    assert!(dir.path().join("jwt_bundle.json").exists());
    src.shutdown().await;
}
