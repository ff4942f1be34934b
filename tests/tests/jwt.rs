//! JWT-SVID authenticated connections on a real node: closed when the token
//! expires, a small first-frame limit before authentication, and the JWT
//! bundle file reloaded when it changes.

use std::path::Path;
use std::time::{Duration, SystemTime};

use slim_auth::{JwtBundles, JwtSigner, JwtSvid, ServerMatch, SpiffeId};
use slim_tests::*;
use slim_wire::{ErrorCode, Frame, Hello, Mode, PROTOCOL_VERSION};

const AUDIENCE: &str = "spiffe://example.org/node";

fn agent() -> SpiffeId {
    SpiffeId::parse("spiffe://example.org/agent/jwt").unwrap()
}

/// TLS that authenticates the node only: the client proves itself in its hello.
fn server_auth_only(pki: &Pki) -> rustls::ClientConfig {
    slim_auth::tls::client_config_server_auth_only(
        std::sync::Arc::new(std::sync::RwLock::new(pki.ca.bundles())),
        &[slim_auth::ALPN_SLIM],
        ServerMatch::Any,
    )
    .unwrap()
}

async fn jwt_node(pki: &Pki, keys: slim_actors::JwtKeys) -> slim_actors::NodeHandle {
    start_node(pki, |c| {
        c.token_auth.jwt = Some(slim_actors::JwtAuth {
            audience: AUDIENCE.into(),
            keys,
        });
    })
    .await
}

/// Connects without a certificate and says hello with `jwt:<token>`.
async fn hello_with_jwt(pki: &Pki, node: std::net::SocketAddr, token: &str) -> (RawConn, Frame) {
    let mut raw = RawConn::connect_tls(node, server_auth_only(pki)).await;
    let answer = raw
        .hello_with_token("acme/jwt/agent/1", Some(format!("jwt:{token}")))
        .await;
    (raw, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_connection_is_closed_when_its_token_expires() {
    init_tracing();
    let pki = Pki::new("example.org");
    let signer = JwtSigner::generate("example.org").unwrap();
    let node = jwt_node(&pki, slim_actors::JwtKeys::Static(signer.bundles())).await;
    let addr = node.local_addr();

    let short = signer
        .sign(&agent(), &[AUDIENCE], Duration::from_secs(2))
        .unwrap();
    let long = signer
        .sign(&agent(), &[AUDIENCE], Duration::from_secs(300))
        .unwrap();
    let exp = JwtSvid::validate(&short, AUDIENCE, &signer.bundles(), SystemTime::now())
        .unwrap()
        .expiry;

    let (short_conn, answer) = hello_with_jwt(&pki, addr, &short).await;
    assert!(matches!(answer, Frame::Accept(_)), "{answer:?}");
    let mut long_conn = RawConn::connect_tls(addr, server_auth_only(&pki)).await;
    assert!(matches!(
        long_conn
            .hello_with_token("acme/jwt/agent/2", Some(format!("jwt:{long}")))
            .await,
        Frame::Accept(_)
    ));

    let (code, reason) = short_conn.closed_by_node(Duration::from_secs(30)).await;
    eprintln!("closed by the node: code {code}, reason {reason:?}");
    assert_eq!(code, u64::from(ErrorCode::UNAUTHORIZED.0));
    assert!(reason.contains("JWT-SVID expired"), "{reason}");
    assert!(
        SystemTime::now() >= exp,
        "closed before the token's exp {exp:?}"
    );
    // The connection whose token is still valid stays.
    assert!(long_conn.conn.close_reason().is_none());
    assert_eventually(Duration::from_secs(5), "one connection left", || async {
        node.connection_count() == 1
    })
    .await;
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_over_16_kib_is_refused_before_authentication() {
    init_tracing();
    let pki = Pki::new("example.org");
    let signer = JwtSigner::generate("example.org").unwrap();
    let node = jwt_node(&pki, slim_actors::JwtKeys::Static(signer.bundles())).await;
    let addr = node.local_addr();

    // Under the limit: read, then refused for what it says (not a JWT).
    let (_, answer) = hello_with_jwt(&pki, addr, &"A".repeat(12 << 10)).await;
    match answer {
        Frame::Reject(r) => {
            assert_eq!(r.code, ErrorCode::UNAUTHORIZED);
            assert!(r.reason.contains("malformed"), "{}", r.reason);
        }
        other => panic!("expected a reject, got {other:?}"),
    }

    // Over it: the connection is closed as soon as the frame's length is
    // known, with the size reason, before any token is looked at.
    let mut raw = RawConn::connect_tls(addr, server_auth_only(&pki)).await;
    let hello = Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        name: name("acme/jwt/agent/big"),
        token: Some(format!("jwt:{}", "A".repeat(17 << 10))),
    });
    let bytes = slim_wire::codec::encode_to_vec(&hello, &slim_wire::Limits::default()).unwrap();
    // The node may close before all of it is written.
    let _ = raw.send.write_all(&bytes).await;
    let (code, reason) = raw.closed_by_node(Duration::from_secs(10)).await;
    eprintln!("closed by the node: code {code}, reason {reason:?}");
    assert_eq!(code, u64::from(ErrorCode::TOO_LARGE.0));
    assert!(reason.contains("16384"), "{reason}");

    // The small pre-hello window and first-frame limit do not follow a
    // connection past its hello: a 512 KiB message goes through.
    let sub = client(&pki, addr, "acme/jwt/big/sub").await;
    let publ = client(&pki, addr, "acme/jwt/big/pub").await;
    let chan = name("acme/jwt/big/chan");
    sub.subscribe(&chan).await.unwrap();
    let payload = vec![7u8; 512 << 10];
    publ.publish(&chan, Mode::Multicast, &payload)
        .await
        .unwrap();
    let got = next_message(&sub, Duration::from_secs(10)).await;
    assert_eq!(got.payload.len(), payload.len());
    node.shutdown(Duration::from_secs(1)).await;
}

/// Pushes 1 MiB on a new stream of `conn`, one the node never reads: QUIC
/// buffers it for the node as far as flow control lets it.
fn park_a_megabyte(conn: &quinn::Connection) -> tokio::task::JoinHandle<()> {
    let conn = conn.clone();
    tokio::spawn(async move {
        if let Ok((mut extra, _recv)) = conn.open_bi().await {
            let _ = extra.write_all(&vec![0u8; 1 << 20]).await;
            // Keep the stream open: the node must not be told it ended.
            std::future::pending::<()>().await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_connection_can_park_only_a_small_window() {
    init_tracing();
    let pki = Pki::new("example.org");
    let signer = JwtSigner::generate("example.org").unwrap();
    let node = start_node(&pki, |c| {
        c.token_auth.jwt = Some(slim_actors::JwtAuth {
            audience: AUDIENCE.into(),
            keys: slim_actors::JwtKeys::Static(signer.bundles()),
        });
        c.handshake_timeout = Duration::from_secs(2);
    })
    .await;
    let addr = node.local_addr();

    // Before any hello: the client is held to the pre-hello window (it
    // was 4 MiB), then closed at the handshake timeout.
    let stalled = RawConn::connect_tls(addr, server_auth_only(&pki)).await;
    let pusher = park_a_megabyte(&stalled.conn);
    let conn = stalled.conn.clone();
    assert_eventually(
        Duration::from_secs(10),
        "the client is blocked by the node's connection window",
        || {
            let blocked = conn.stats().frame_tx.data_blocked > 0;
            async move { blocked }
        },
    )
    .await;
    let sent = conn.stats().udp_tx.bytes;
    eprintln!("bytes sent before the hello, when blocked: {sent}");
    assert!(sent < 256 << 10, "{sent} bytes went out before the hello");
    let (code, reason) = stalled.closed_by_node(Duration::from_secs(10)).await;
    assert_eq!(code, u64::from(ErrorCode::PROTOCOL.0));
    assert_eq!(reason, "hello timeout");
    pusher.abort();

    // After an accepted hello the window is the normal one: a megabyte on
    // an unread stream goes out.
    let token = signer
        .sign(&agent(), &[AUDIENCE], Duration::from_secs(300))
        .unwrap();
    let (admitted, answer) = hello_with_jwt(&pki, addr, &token).await;
    assert!(matches!(answer, Frame::Accept(_)), "{answer:?}");
    let pusher = park_a_megabyte(&admitted.conn);
    let conn = admitted.conn.clone();
    assert_eventually(
        Duration::from_secs(10),
        "a megabyte sent after the hello",
        || {
            let n = conn.stats().udp_tx.bytes;
            async move { n > 1 << 20 }
        },
    )
    .await;
    pusher.abort();
    node.shutdown(Duration::from_secs(1)).await;
}

/// Replaces `path` the way deployment tools do: write aside, then rename.
fn replace(path: &Path, data: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwt_bundle_file_is_reloaded_when_it_changes() {
    init_tracing();
    let pki = Pki::new("example.org");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwt_bundle.json");
    let old = JwtSigner::generate("example.org").unwrap();
    let new = JwtSigner::generate("example.org").unwrap();
    std::fs::write(&file, old.jwks_json()).unwrap();
    let node = jwt_node(
        &pki,
        slim_actors::JwtKeys::File {
            initial: JwtBundles::from_json_file(&file, "example.org").unwrap(),
            path: file.clone(),
            default_trust_domain: "example.org".into(),
        },
    )
    .await;
    let addr = node.local_addr();
    let by_old = old
        .sign(&agent(), &[AUDIENCE], Duration::from_secs(300))
        .unwrap();
    let by_new = new
        .sign(&agent(), &[AUDIENCE], Duration::from_secs(300))
        .unwrap();
    let accepted = |token: String| {
        let pki = &pki;
        async move { matches!(hello_with_jwt(pki, addr, &token).await.1, Frame::Accept(_)) }
    };
    assert!(accepted(by_old.clone()).await);
    match hello_with_jwt(&pki, addr, &by_new).await.1 {
        Frame::Reject(r) => assert!(r.reason.contains("unknown_key"), "{}", r.reason),
        other => panic!("a token by a key not yet in the bundle: {other:?}"),
    }

    // A broken file keeps the keys in force (the node logs why). Several
    // debounce periods pass while the old key keeps working.
    replace(&file, b"{ not json");
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < until {
        assert!(
            accepted(by_old.clone()).await,
            "a broken bundle file dropped the keys in force"
        );
    }

    // The new key replaces the old one once the file says so.
    replace(&file, new.jwks_json().as_bytes());
    assert_eventually(
        Duration::from_secs(10),
        "a token by the new key accepted after the bundle file changed",
        || accepted(by_new.clone()),
    )
    .await;
    assert!(
        !accepted(by_old.clone()).await,
        "the old key is gone with the old file"
    );
    node.shutdown(Duration::from_secs(1)).await;
}
