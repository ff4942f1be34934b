//! DevSpire driven by the real `spiffe` crate client over a Unix socket, and by
//! a raw gRPC client to check the security header.

use std::time::{Duration, SystemTime};

use slim_auth::jwt::JwtBundles;
use slim_auth::{DevCa, JwtError, SpiffeId, validate_jwt_svid};
use slim_devspire::{DevSpire, DevSpireConfig, pb};
use tonic::codegen::http::uri::PathAndQuery;
use tonic_prost::ProstCodec;

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn serial(der: &[u8]) -> Vec<u8> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).unwrap();
    cert.raw_serial().to_vec()
}

async fn start(dir: &std::path::Path, ids: &[&str]) -> DevSpire {
    let ca = DevCa::generate("example.org").unwrap();
    let mut cfg = DevSpireConfig::new(dir.join("agent.sock"), id(ids[0]));
    cfg.ids = ids.iter().map(|s| id(s)).collect();
    DevSpire::start(cfg, ca).await.unwrap()
}

/// A plain tonic channel over the Unix socket, without the spiffe crate's
/// header-adding interceptor.
async fn raw_channel(path: &std::path::Path) -> tonic::transport::Channel {
    let path = path.to_path_buf();
    tonic::transport::Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .unwrap()
}

async fn raw_fetch_x509(
    channel: tonic::transport::Channel,
    with_header: bool,
) -> Result<pb::X509svidResponse, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(pb::X509svidRequest {});
    if with_header {
        req.metadata_mut()
            .insert(slim_devspire::SECURITY_HEADER, "true".parse().unwrap());
    }
    let resp = grpc
        .server_streaming(
            req,
            PathAndQuery::from_static("/SpiffeWorkloadAPI/FetchX509SVID"),
            ProstCodec::<pb::X509svidRequest, pb::X509svidResponse>::default(),
        )
        .await?;
    let mut stream = resp.into_inner();
    Ok(stream.message().await?.expect("one message"))
}

#[tokio::test]
async fn x509_source_gets_the_svid() {
    let dir = tempfile::tempdir().unwrap();
    let spire = start(
        dir.path(),
        &["spiffe://example.org/node/a", "spiffe://example.org/node/b"],
    )
    .await;
    let served = spire.current_svids();

    let source = spiffe::X509Source::builder()
        .endpoint(spire.endpoint())
        .initial_sync_timeout(Duration::from_secs(5))
        .build()
        .await
        .unwrap();
    let svid = source.svid().unwrap();
    assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/node/a");
    assert_eq!(svid.leaf().as_bytes(), served[0].cert_chain[0].as_ref());
    let bundles = source.bundle_set().unwrap();
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    let bundle = bundles.get(&td).expect("bundle for example.org");
    assert_eq!(bundle.authorities().len(), 1);
    assert_eq!(
        bundle.authorities()[0].as_bytes(),
        spire.bundles().get("example.org").unwrap()[0].as_ref()
    );
    source.shutdown().await;

    // Every configured ID is served, default first.
    let client = spiffe::WorkloadApiClient::connect_to(spire.endpoint())
        .await
        .unwrap();
    let all = client.fetch_all_x509_svids().await.unwrap();
    let ids: Vec<String> = all.iter().map(|s| s.spiffe_id().to_string()).collect();
    assert_eq!(
        ids,
        ["spiffe://example.org/node/a", "spiffe://example.org/node/b"]
    );
    let b = client.fetch_x509_bundles().await.unwrap();
    assert!(b.get(&td).is_some());
    spire.shutdown().await;
    assert!(!dir.path().join("agent.sock").exists(), "socket removed");
}

#[tokio::test]
async fn request_without_security_header_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spire = start(dir.path(), &["spiffe://example.org/node/a"]).await;
    let channel = raw_channel(spire.socket_path()).await;

    let err = raw_fetch_x509(channel.clone(), false)
        .await
        .expect_err("no header must be refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert_eq!(err.message(), "security header missing from request");

    // The same call with the header succeeds, so the refusal is the header's doing.
    let ok = raw_fetch_x509(channel, true).await.unwrap();
    assert_eq!(ok.svids.len(), 1);
    assert_eq!(ok.svids[0].spiffe_id, "spiffe://example.org/node/a");
    spire.shutdown().await;
}

#[tokio::test]
async fn rotate_now_reaches_open_streams() {
    let dir = tempfile::tempdir().unwrap();
    let spire = start(dir.path(), &["spiffe://example.org/node/a"]).await;
    let source = spiffe::X509Source::builder()
        .endpoint(spire.endpoint())
        .build()
        .await
        .unwrap();
    let before = serial(source.svid().unwrap().leaf().as_bytes());
    let mut updates = source.updated();

    spire.rotate_now().unwrap();
    tokio::time::timeout(Duration::from_secs(2), updates.changed())
        .await
        .expect("update within 2 s")
        .unwrap();
    let after = serial(source.svid().unwrap().leaf().as_bytes());
    assert_ne!(before, after, "new serial after rotation");
    assert_eq!(
        after,
        serial(spire.current_svids()[0].cert_chain[0].as_ref())
    );
    source.shutdown().await;
    spire.shutdown().await;
}

#[tokio::test]
async fn periodic_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::generate("example.org").unwrap();
    let mut cfg = DevSpireConfig::new(dir.path().join("a.sock"), id("spiffe://example.org/x"));
    cfg.rotate_every = Some(Duration::from_millis(300));
    let spire = DevSpire::start(cfg, ca).await.unwrap();
    let source = spiffe::X509Source::builder()
        .endpoint(spire.endpoint())
        .build()
        .await
        .unwrap();
    let first = serial(source.svid().unwrap().leaf().as_bytes());
    let mut updates = source.updated();
    tokio::time::timeout(Duration::from_secs(3), updates.changed())
        .await
        .expect("periodic rotation within 3 s")
        .unwrap();
    assert_ne!(first, serial(source.svid().unwrap().leaf().as_bytes()));
    source.shutdown().await;
    spire.shutdown().await;
}

fn to_slim_bundles(set: &spiffe::JwtBundleSet) -> JwtBundles {
    let mut out = JwtBundles::new();
    for (td, bundle) in set.iter() {
        let keys: Vec<serde_json::Value> = bundle
            .jwt_authorities()
            .map(|a| serde_json::from_slice(a.jwk_json()).unwrap())
            .collect();
        out.set_jwks(
            td.as_str(),
            serde_json::json!({ "keys": keys }).to_string().as_bytes(),
        )
        .unwrap();
    }
    out
}

#[tokio::test]
async fn jwt_svid_from_devspire_validates_against_its_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let spire = start(
        dir.path(),
        &["spiffe://example.org/node/a", "spiffe://example.org/node/b"],
    )
    .await;

    // The JwtSource streams FetchJWTBundles and fetches tokens.
    let jwt = spiffe::JwtSource::builder()
        .endpoint(spire.endpoint())
        .initial_sync_timeout(Duration::from_secs(5))
        .build()
        .await
        .unwrap();
    let b = id("spiffe://example.org/node/b");
    let spiffe_b = spiffe::SpiffeId::new(b.as_str()).unwrap();
    let svid = jwt
        .fetch_jwt_svid_with_id(["slim-node"], Some(&spiffe_b))
        .await
        .unwrap();
    assert_eq!(svid.spiffe_id().to_string(), b.as_str());
    assert_eq!(svid.key_id(), spire.jwt_signer().kid());

    let bundles = to_slim_bundles(&jwt.bundle_set().unwrap());
    assert!(
        bundles
            .get("example.org", spire.jwt_signer().kid())
            .is_some()
    );
    let got = validate_jwt_svid(svid.token(), "slim-node", &bundles, SystemTime::now()).unwrap();
    assert_eq!(got, b);
    assert!(matches!(
        validate_jwt_svid(svid.token(), "other", &bundles, SystemTime::now()),
        Err(JwtError::WrongAudience { .. })
    ));

    // The server-side ValidateJWTSVID agrees.
    let client = spiffe::WorkloadApiClient::connect_to(spire.endpoint())
        .await
        .unwrap();
    let v = client
        .validate_jwt_token("slim-node", svid.token())
        .await
        .unwrap();
    assert_eq!(v.spiffe_id().to_string(), b.as_str());
    let refused = client.validate_jwt_token("other", svid.token()).await;
    assert!(refused.is_err(), "wrong audience must be refused");

    // The default identity is the first one.
    let default = client.fetch_jwt_svid(["aud"], None).await.unwrap();
    assert_eq!(
        default.spiffe_id().to_string(),
        "spiffe://example.org/node/a"
    );

    jwt.shutdown().await;
    spire.shutdown().await;
}

#[tokio::test]
async fn config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::generate("example.org").unwrap();
    let cfg = DevSpireConfig::new(dir.path().join("a.sock"), id("spiffe://other.org/x"));
    let err = DevSpire::start(cfg, ca).await.unwrap_err();
    assert!(
        err.to_string().contains("not in the CA's trust domain"),
        "{err}"
    );

    // A regular file where the socket should go is not clobbered.
    let file = dir.path().join("file");
    std::fs::write(&file, b"keep me").unwrap();
    let ca = DevCa::generate("example.org").unwrap();
    let cfg = DevSpireConfig::new(&file, id("spiffe://example.org/x"));
    let err = DevSpire::start(cfg, ca).await.unwrap_err();
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}
