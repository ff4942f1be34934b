//! rustls configurations for SLIM connections: TLS 1.3 only, ring provider, mutual
//! X.509-SVID authentication.
//!
//! The configs are suitable for quinn (`QuicServerConfig::try_from` /
//! `QuicClientConfig::try_from`): the ring provider includes
//! `TLS13_AES_128_GCM_SHA256`, which QUIC needs for its Initial packets.

use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::NoServerSessionStorage;
use rustls::{ClientConfig, KeyLog, KeyLogFile, ServerConfig};

use crate::identity::Identity;
use crate::source::IdentitySource;
use crate::verify::{ServerMatch, SpiffeClientVerifier, SpiffeServerVerifier, leaf_spiffe_id};
use crate::{AuthError, SpiffeId, SvidError, x509};

/// ALPN protocol identifier of the SLIM protocol, version 1.
pub const ALPN_SLIM: &[u8] = b"slim/1";

/// The crypto provider used for every SLIM TLS config.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A key logger writing to `$SSLKEYLOGFILE` when that variable is set and non-empty.
///
/// Session keys let anyone holding the file decrypt captured traffic, so this is
/// strictly opt-in and announced with a warning.
pub fn keylog_from_env() -> Option<Arc<dyn KeyLog>> {
    let path = std::env::var_os("SSLKEYLOGFILE").filter(|v| !v.is_empty())?;
    tracing::warn!(
        path = %path.to_string_lossy(),
        "SSLKEYLOGFILE is set: TLS session secrets will be written to it"
    );
    Some(Arc::new(KeyLogFile::new()))
}

fn alpn_list(alpn: &[&[u8]]) -> Vec<Vec<u8>> {
    alpn.iter().map(|p| p.to_vec()).collect()
}

/// Server config requiring and verifying client SVIDs against `identity.bundles`
/// (any trust domain with a bundle is accepted).
pub fn server_config(identity: &Identity, alpn: &[&[u8]]) -> Result<ServerConfig, AuthError> {
    let verifier = SpiffeClientVerifier::new(Arc::new(RwLock::new(identity.bundles.clone())));
    server_config_with_verifier(identity, alpn, Arc::new(verifier))
}

/// [`server_config`] with a caller-built verifier, e.g. one sharing its bundles with
/// a rotation task or restricted to some trust domains.
pub fn server_config_with_verifier(
    identity: &Identity,
    alpn: &[&[u8]],
    verifier: Arc<SpiffeClientVerifier>,
) -> Result<ServerConfig, AuthError> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.cert_chain.clone(), identity.key.clone_key())?;
    Ok(harden_server(config, alpn))
}

fn harden_server(mut config: ServerConfig, alpn: &[&[u8]]) -> ServerConfig {
    config.alpn_protocols = alpn_list(alpn);
    // Resumption skips client certificate verification, so a session ticket would
    // let a peer keep connecting after its short-lived SVID expired or its CA was
    // dropped from the bundle. It also rules out 0-RTT, whose data is replayable.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.max_early_data_size = 0;
    if let Some(keylog) = keylog_from_env() {
        config.key_log = keylog;
    }
    config
}

/// Client config presenting `identity`'s SVID and accepting servers per `server`.
/// The server name given to the connection is not checked (see [`SpiffeServerVerifier`]).
pub fn client_config(
    identity: &Identity,
    alpn: &[&[u8]],
    server: ServerMatch,
) -> Result<ClientConfig, AuthError> {
    let verifier =
        SpiffeServerVerifier::new(Arc::new(RwLock::new(identity.bundles.clone())), server);
    client_config_with_verifier(identity, alpn, Arc::new(verifier))
}

/// [`client_config`] with a caller-built verifier, e.g. one sharing its bundles with
/// a rotation task.
pub fn client_config_with_verifier(
    identity: &Identity,
    alpn: &[&[u8]],
    verifier: Arc<SpiffeServerVerifier>,
) -> Result<ClientConfig, AuthError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(identity.cert_chain.clone(), identity.key.clone_key())?;
    Ok(harden_client(config, alpn))
}

fn harden_client(mut config: ClientConfig, alpn: &[&[u8]]) -> ClientConfig {
    config.alpn_protocols = alpn_list(alpn);
    // Same reason as on the server: a resumed session would not re-verify the server.
    config.resumption = Resumption::disabled();
    config.enable_early_data = false;
    if let Some(keylog) = keylog_from_env() {
        config.key_log = keylog;
    }
    config
}

/// Server config that follows `source`: each handshake presents the latest SVID
/// and verifies clients against the latest bundles (any trust domain with a
/// bundle). Established connections keep the material they were made with.
pub fn server_config_from_source(
    source: &IdentitySource,
    alpn: &[&[u8]],
) -> Result<ServerConfig, AuthError> {
    let verifier = SpiffeClientVerifier::new(source.shared_bundles());
    server_config_from_source_with_verifier(source, alpn, Arc::new(verifier))
}

/// [`server_config_from_source`] with a caller-built verifier (e.g. restricted
/// to some trust domains). Build it over [`IdentitySource::shared_bundles`] so it
/// follows bundle rotation.
pub fn server_config_from_source_with_verifier(
    source: &IdentitySource,
    alpn: &[&[u8]],
    verifier: Arc<SpiffeClientVerifier>,
) -> Result<ServerConfig, AuthError> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(source.cert_resolver());
    Ok(harden_server(config, alpn))
}

/// Client config that follows `source` (latest SVID presented, latest bundles
/// used to verify the server) and accepts servers per `server`.
/// Server-authenticated TLS only (no client certificate), for clients that
/// authenticate in-band with a JWT-SVID or the development shared secret.
pub fn client_config_server_auth_only(
    bundles: crate::SharedBundles,
    alpn: &[&[u8]],
    server: ServerMatch,
) -> Result<ClientConfig, AuthError> {
    let verifier = SpiffeServerVerifier::new(bundles, server);
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(harden_client(config, alpn))
}

pub fn client_config_from_source(
    source: &IdentitySource,
    alpn: &[&[u8]],
    server: ServerMatch,
) -> Result<ClientConfig, AuthError> {
    let verifier = SpiffeServerVerifier::new(source.shared_bundles(), server);
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(source.cert_resolver());
    Ok(harden_client(config, alpn))
}

/// The notAfter of the leaf of `chain` (e.g. `conn.peer_certificates()`), so a
/// node can close a connection once the peer's SVID has expired (plus a grace of
/// its choosing): rotation never touches established connections, so an
/// unrotated peer would otherwise stay connected on an expired certificate.
/// `None` if there is no parseable leaf.
pub fn peer_not_after(chain: &[CertificateDer<'_>]) -> Option<SystemTime> {
    let leaf = chain.first()?;
    x509::parse(leaf)
        .ok()
        .map(|info| x509::unix_to_system(info.not_after))
}

/// The SPIFFE ID of the leaf of `chain` (e.g. `conn.peer_certificates()`).
///
/// Performs no chain verification: only call it on certificates that a handshake
/// with this crate's verifiers has already accepted.
pub fn peer_spiffe_id(chain: &[CertificateDer<'_>]) -> Result<SpiffeId, SvidError> {
    let leaf = chain.first().ok_or(SvidError::NoCertificate)?;
    leaf_spiffe_id(leaf)
}
