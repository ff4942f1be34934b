//! SLIM identity: SPIFFE IDs, X.509-SVIDs, JWT-SVIDs, where they come from, and
//! the rustls configurations that authenticate every SLIM connection.
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
//! * [`source`]: [`IdentitySource`], our identity kept current, from one of
//!   ([`IdentitySourceConfig`]):
//!   - **SPIRE**: the SPIFFE Workload API over the agent's Unix socket
//!     (`SPIFFE_ENDPOINT_SOCKET` or configured), through the `spiffe` crate's
//!     `X509Source`/`JwtSource`. The first fetch is bounded; without an agent,
//!     [`IdentitySource::start`] fails with [`AuthError::NoAgent`]
//!     (`no SPIRE agent at unix:///path: <cause>`). Afterwards the source follows
//!     the agent's stream (new SVIDs, new bundles) and re-dials with backoff if the
//!     stream breaks, serving the last SVID meanwhile.
//!   - **Files**: the spiffe-helper layout, polled every second and reloaded on change.
//!   - **Dev**: an in-process [`DevCa`] re-issuing at half the SVID lifetime.
//! * [`tls`]: TLS 1.3-only rustls configs (ring provider, ALPN [`ALPN_SLIM`],
//!   no resumption) suitable for quinn:
//!   - rotating: [`server_config_from_source`] / [`client_config_from_source`]
//!     present the source's latest SVID at each handshake (the rustls
//!     `CertifiedKey` is built once per rotation) and verify peers against
//!     bundles the source updates in place. New handshakes pick up rotation
//!     immediately; established connections are untouched, so use
//!     [`peer_not_after`] to close connections whose peer SVID has expired.
//!   - static: [`server_config`] / [`client_config`] from a fixed [`Identity`].
//!   - [`peer_spiffe_id`] for the authenticated peer of a connection.
//! * [`verify`]: [`verify_svid`], X.509-SVID verification per the SPIFFE X509-SVID spec,
//!   with a typed [`SvidError`] whose [`SvidError::reason_code`] labels metrics; and the
//!   rustls verifiers [`SpiffeClientVerifier`] / [`SpiffeServerVerifier`].
//! * [`jwt`]: JWT-SVIDs for authentication beyond one hop: [`validate_jwt_svid`]
//!   (signature checked with ring: ES256/384, RS256/384/512, PS256/384/512; `none`
//!   and `HS*` refused), [`JwtBundles`] (trust domain → JWKS keys, from the
//!   Workload API via [`IdentitySource::jwt_bundles`] or a JWKS file), a typed
//!   [`JwtError`] with [`JwtError::reason_code`], and [`JwtSigner`] for dev/test
//!   tokens. [`IdentitySource::fetch_jwt_svid`] gets a token for an audience.
//! * [`identity`]: [`Identity`] (our SVID, its key and the trust bundles) loaded from the
//!   file layout written by `spiffe-helper` (`tls.crt`, `tls.key`, `svid_bundle.pem`),
//!   and [`TrustBundles`] (trust domain → CA certificates).
//! * [`devca`]: [`DevCa`], a file-backed development CA that issues X.509-SVIDs for one
//!   trust domain, plus [`devca::testing`] to mint deliberately broken certificates.
//!   The `slim-devspire` crate serves it over the Workload API as a SPIRE stand-in.
//! * [`reset`]: [`ResetSecret`], the persistent secret behind QUIC stateless
//!   resets (a key file, or HKDF of the TLS key), so a restarted node or
//!   controller resets its peers' stale connections at once.
//!
//! * [`resolve`]: `host:port` to addresses, bounded in time, for every dialler.
//!
//! All cryptography goes through `ring`; the crate never pulls in `aws-lc-rs`.
//!
//! # Not yet here
//!
//! * Authorization policy beyond "peer is in an allowed trust domain / is this exact ID".
#![forbid(unsafe_code)]

pub mod devca;
pub mod explain;
pub mod id;
pub mod identity;
pub mod jwt;
pub mod policy;
pub mod reset;
pub mod resolve;
pub mod section;
pub mod source;
pub mod tls;
pub mod verify;
pub mod watch;

mod bundle;
mod files;
mod pem;
mod x509;

use std::path::PathBuf;
use std::time::Duration;

pub use devca::DevCa;
pub use id::{InvalidId, SpiffeId, TrustDomain};
pub use identity::{Identity, TrustBundles};
pub use jwt::{JwtBundles, JwtError, JwtKey, JwtSigner, JwtSvid, validate_jwt_svid};
pub use reset::{ResetSecret, ResetSecretOrigin};
pub use section::{
    IdentityPreflight, IdentitySection, IdentitySourceKind, foreign_patterns, pattern_trust_domain,
};
pub use source::{IdentitySource, IdentitySourceConfig, SourceCertResolver};
pub use tls::{
    ALPN_SLIM, client_config, client_config_from_source, peer_not_after, peer_spiffe_id,
    server_config, server_config_from_source,
};
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
    /// The SPIFFE Workload API could not be reached (nothing listening, socket
    /// missing, no endpoint configured) within the initial timeout.
    #[error("no SPIRE agent at {endpoint}: {cause}")]
    NoAgent {
        /// The Workload API endpoint (`unix:///path`).
        endpoint: String,
        /// The last connection error.
        cause: String,
    },
    /// The Workload API answered, but not with what we need.
    #[error("SPIFFE Workload API at {endpoint}: {cause}")]
    WorkloadApi {
        /// The Workload API endpoint.
        endpoint: String,
        /// What went wrong.
        cause: String,
    },
    /// A JWT-SVID was refused.
    #[error("invalid JWT-SVID: {0}")]
    Jwt(#[from] JwtError),
    /// The identity source cannot do this.
    #[error("{0}")]
    Unsupported(String),
    /// The system's random number generator failed.
    #[error("the system random number generator failed")]
    NoRandomness,
}
