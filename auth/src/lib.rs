//! SLIM identity: SPIFFE IDs, X.509-SVIDs and the rustls configurations that
//! authenticate every SLIM connection.
//!
//! Every node and client in a SLIM fabric has a [SPIFFE](https://spiffe.io) identity
//! (`spiffe://<trust-domain>/<path>`) carried in an X.509-SVID: a short-lived leaf
//! certificate whose single URI SAN is the SPIFFE ID. Connections are mutually
//! authenticated TLS 1.3 (inside QUIC); peers are identified by SPIFFE ID, never by
//! DNS name.
//!
//! What this crate provides:
//!
//! * [`id`]: [`SpiffeId`] and [`TrustDomain`], strictly validated per the SPIFFE ID spec.
//! * [`identity`]: [`Identity`] (our SVID, its key and the trust bundles) loaded from the
//!   file layout written by `spiffe-helper` (`tls.crt`, `tls.key`, `svid_bundle.pem`),
//!   and [`TrustBundles`] (trust domain → CA certificates).
//! * [`devca`]: [`DevCa`], a file-backed development CA that issues X.509-SVIDs for one
//!   trust domain, plus [`devca::testing`] to mint deliberately broken certificates.
//! * [`verify`]: [`verify_svid`], X.509-SVID verification per the SPIFFE X509-SVID spec,
//!   with a typed [`SvidError`] whose [`SvidError::reason_code`] labels metrics; and the
//!   rustls verifiers [`SpiffeClientVerifier`] / [`SpiffeServerVerifier`].
//! * [`tls`]: ready-made TLS 1.3-only rustls [`server_config`] / [`client_config`]
//!   (ring provider, ALPN [`ALPN_SLIM`]) suitable for quinn, and [`peer_spiffe_id`].
//!
//! All cryptography goes through `ring`; the crate never pulls in `aws-lc-rs`.
//!
//! # Not yet here (the identity issue)
//!
//! * Fetching SVIDs and bundles from the SPIRE Workload API instead of files.
//! * Rotation: the verifiers already read their bundles through a shared
//!   [`verify::SharedBundles`] lock so that a watcher can swap them in place; reloading
//!   our own certificate without restarting needs a rustls certificate resolver.
//! * JWT-SVIDs for application-level (end-to-end, through relays) authentication.
//! * Authorization policy beyond "peer is in an allowed trust domain / is this exact ID".
#![forbid(unsafe_code)]

pub mod devca;
pub mod id;
pub mod identity;
pub mod tls;
pub mod verify;

mod files;
mod pem;
mod x509;

use std::path::PathBuf;
use std::time::Duration;

pub use devca::DevCa;
pub use id::{InvalidId, SpiffeId, TrustDomain};
pub use identity::{Identity, TrustBundles};
pub use tls::{ALPN_SLIM, client_config, peer_spiffe_id, server_config};
pub use verify::{
    ServerMatch, SharedBundles, SpiffeClientVerifier, SpiffeServerVerifier, SvidError, Usage,
    svid_error, verify_svid,
};

/// Errors from loading, issuing and configuring identities.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A required file does not exist.
    #[error("{}: {what} not found", path.display())]
    MissingFile {
        /// The missing file.
        path: PathBuf,
        /// What the file should have contained.
        what: &'static str,
    },
    /// A file exists but its content is unusable.
    #[error("{}: {reason}", path.display())]
    BadFile {
        /// The offending file.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// `DevCa::init` found an existing CA and will not overwrite it.
    #[error("a CA already exists at {}; refusing to overwrite it (use DevCa::load)", existing.display())]
    CaExists {
        /// The existing CA file.
        existing: PathBuf,
    },
    /// The CA was asked to issue an ID outside its trust domain.
    #[error("cannot issue {id}: this CA is for trust domain {ca_trust_domain}")]
    TrustDomainMismatch {
        /// The requested ID.
        id: SpiffeId,
        /// The CA's trust domain.
        ca_trust_domain: String,
    },
    /// An invalid SPIFFE ID or trust domain name.
    #[error("invalid SPIFFE ID or trust domain: {0}")]
    InvalidId(#[from] InvalidId),
    /// A certificate is not a usable X.509-SVID.
    #[error("invalid X.509-SVID: {0}")]
    Svid(#[from] SvidError),
    /// The requested certificate lifetime is unusable.
    #[error("invalid certificate lifetime {ttl:?}: {reason}")]
    InvalidTtl {
        /// The requested lifetime.
        ttl: Duration,
        /// Why it was rejected.
        reason: String,
    },
    /// A trust bundle is unusable.
    #[error("invalid trust bundle: {0}")]
    Bundle(String),
    /// Certificate or key generation failed.
    #[error("certificate generation failed: {0}")]
    CertGen(String),
    /// rustls refused the configuration (e.g. key does not match certificate).
    #[error("TLS configuration rejected: {0}")]
    Tls(#[from] rustls::Error),
}
