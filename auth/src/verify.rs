//! X.509-SVID verification (SPIFFE X509-SVID spec, §4 "Validation") and the rustls
//! verifiers built on it.
//!
//! Standard WebPKI verification authenticates a DNS name; SPIFFE authenticates the
//! single URI SAN instead, and picks the trust anchors by the trust domain named in
//! that URI. So the verifiers here first extract the SPIFFE ID, select that trust
//! domain's bundle, and only then let webpki check the chain, validity and EKU.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};

use crate::bundle::TrustBundles;
use crate::id::{InvalidId, SpiffeId};
use crate::x509;

/// Which side of a TLS handshake a certificate authenticates; selects the
/// extended key usage the leaf must allow (if it has an EKU extension at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Usage {
    /// The peer is a TLS client (EKU `clientAuth`).
    ClientAuth,
    /// The peer is a TLS server (EKU `serverAuth`).
    ServerAuth,
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Usage::ClientAuth => "clientAuth",
            Usage::ServerAuth => "serverAuth",
        })
    }
}

/// Why a certificate is not an acceptable X.509-SVID.
///
/// `Debug` prints the reason code and the message (see the impl below), not
/// the variant: rustls formats the refusal with `{:?}`, and that text is what
/// a QUIC peer receives in the close frame and what users read.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SvidError {
    /// The peer sent no certificate at all.
    #[error("no certificate was presented")]
    NoCertificate,
    /// The certificate could not be parsed.
    #[error("malformed certificate: {0}")]
    Malformed(String),
    /// No URI SAN, so no SPIFFE ID (e.g. a DNS-name-only WebPKI certificate).
    #[error("certificate has no URI SAN, so it carries no SPIFFE ID")]
    NoUriSan,
    /// More than one URI SAN; the identity would be ambiguous.
    #[error("certificate has {count} URI SANs; an X.509-SVID must have exactly one")]
    TwoUriSans {
        /// Number of URI SANs found.
        count: usize,
    },
    /// The single URI SAN is not a valid SPIFFE ID.
    #[error("URI SAN {uri:?} is not a valid SPIFFE ID: {reason}")]
    NotSpiffe {
        /// The URI as found in the certificate.
        uri: String,
        /// Why it is not a SPIFFE ID.
        reason: InvalidId,
    },
    /// The leaf is a CA certificate (basicConstraints CA:TRUE).
    #[error("a CA certificate (basicConstraints CA:TRUE) was presented as a leaf SVID")]
    CaAsLeaf,
    /// The leaf's keyUsage is wrong for an SVID.
    #[error("bad key usage for a leaf SVID: {0}")]
    BadKeyUsage(String),
    /// The ID's trust domain has no bundle here, so nothing can vouch for it.
    #[error("no trust bundle for trust domain {td:?}")]
    UnknownTrustDomain {
        /// The trust domain named in the certificate.
        td: String,
    },
    /// Authenticated, but the trust domain is not allowed by local policy.
    #[error("{id} is from trust domain {:?}, which is not allowed here (allowed: {})", id.trust_domain(), allowed.join(", "))]
    WrongTrustDomain {
        /// The authenticated peer ID.
        id: SpiffeId,
        /// The trust domains that would have been accepted.
        allowed: Vec<String>,
    },
    /// Authenticated, but not the exact peer we meant to reach.
    #[error("peer is {id}, expected {expected}")]
    UnexpectedId {
        /// The authenticated peer ID.
        id: SpiffeId,
        /// The ID we expected.
        expected: SpiffeId,
    },
    /// Past notAfter.
    #[error("certificate expired at {} ({}s before now, {})", crate::explain::rfc3339_secs(*not_after), now.saturating_sub(*not_after), crate::explain::rfc3339_secs(*now))]
    Expired {
        /// notAfter, seconds since the Unix epoch.
        not_after: u64,
        /// Verification time, seconds since the Unix epoch.
        now: u64,
    },
    /// Before notBefore.
    #[error("certificate not valid before {} ({}s after now, {}: check both clocks)", crate::explain::rfc3339_secs(*not_before), not_before.saturating_sub(*now), crate::explain::rfc3339_secs(*now))]
    NotYetValid {
        /// notBefore, seconds since the Unix epoch.
        not_before: u64,
        /// Verification time, seconds since the Unix epoch.
        now: u64,
    },
    /// The chain does not lead to any CA in the trust domain's bundle.
    #[error("the certificate of {id} is not issued by any CA in the trust bundle for {td:?}")]
    UntrustedIssuer {
        /// The trust domain whose bundle was used.
        td: String,
        /// The SPIFFE ID the certificate claims (what was presented).
        id: String,
    },
    /// The issuer is identified as a trusted CA, but the signature does not verify.
    #[error("certificate signature does not verify against its (trusted) issuer's key")]
    BadSignature,
    /// The leaf's extendedKeyUsage does not allow this use.
    #[error("certificate's extendedKeyUsage does not allow {usage}")]
    WrongUsage {
        /// The usage that was required.
        usage: Usage,
    },
    /// Anything else webpki rejected.
    #[error("certificate rejected: {0}")]
    Other(String),
}

impl std::fmt::Debug for SvidError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {self}", self.reason_code())
    }
}

impl SvidError {
    /// A short, stable snake_case label for metrics and logs.
    pub fn reason_code(&self) -> &'static str {
        match self {
            SvidError::NoCertificate => "no_certificate",
            SvidError::Malformed(_) => "malformed",
            SvidError::NoUriSan => "no_uri_san",
            SvidError::TwoUriSans { .. } => "two_uri_sans",
            SvidError::NotSpiffe { .. } => "not_spiffe",
            SvidError::CaAsLeaf => "ca_as_leaf",
            SvidError::BadKeyUsage(_) => "bad_key_usage",
            SvidError::UnknownTrustDomain { .. } => "unknown_trust_domain",
            SvidError::WrongTrustDomain { .. } => "wrong_trust_domain",
            SvidError::UnexpectedId { .. } => "unexpected_id",
            SvidError::Expired { .. } => "expired",
            SvidError::NotYetValid { .. } => "not_yet_valid",
            SvidError::UntrustedIssuer { .. } => "untrusted_issuer",
            SvidError::BadSignature => "bad_signature",
            SvidError::WrongUsage { .. } => "wrong_usage",
            SvidError::Other(_) => "other",
        }
    }
}

/// Extracts the [`SvidError`] behind a rustls error produced by this crate's verifiers
/// (rustls reports them as `InvalidCertificate(CertificateError::Other(..))`).
pub fn svid_error(err: &rustls::Error) -> Option<&SvidError> {
    match err {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<SvidError>()
        }
        _ => None,
    }
}

fn to_rustls(err: SvidError) -> rustls::Error {
    // Always wrapped, never mapped to e.g. CertificateError::Expired, so callers and
    // metrics keep the precise SPIFFE reason (see `svid_error`).
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(err))))
}

/// Applies the X509-SVID rule "exactly one URI SAN, and it is a SPIFFE ID".
fn spiffe_id_from_uris(uris: &[String]) -> Result<SpiffeId, SvidError> {
    match uris {
        [] => Err(SvidError::NoUriSan),
        [uri] => SpiffeId::parse(uri).map_err(|reason| SvidError::NotSpiffe {
            uri: uri.clone(),
            reason,
        }),
        more => Err(SvidError::TwoUriSans { count: more.len() }),
    }
}

/// Checks the SPIFFE-specific leaf rules and returns the leaf's SPIFFE ID.
fn check_leaf(end_entity: &CertificateDer<'_>) -> Result<(SpiffeId, x509::CertInfo), SvidError> {
    let info = x509::parse(end_entity).map_err(SvidError::Malformed)?;
    if info.is_ca {
        return Err(SvidError::CaAsLeaf);
    }
    let id = spiffe_id_from_uris(&info.uris)?;
    match info.key_usage {
        None => {
            return Err(SvidError::BadKeyUsage(
                "keyUsage extension is missing; digitalSignature is required".into(),
            ));
        }
        Some(ku) if !ku.digital_signature => {
            return Err(SvidError::BadKeyUsage("digitalSignature is not set".into()));
        }
        Some(ku) if ku.key_cert_sign => {
            return Err(SvidError::BadKeyUsage(
                "keyCertSign is set, which only CA certificates may have".into(),
            ));
        }
        Some(ku) if ku.crl_sign => {
            return Err(SvidError::BadKeyUsage(
                "cRLSign is set, which only CA certificates may have".into(),
            ));
        }
        Some(_) => {}
    }
    Ok((id, info))
}

/// Verifies an X.509-SVID chain and returns the authenticated SPIFFE ID.
///
/// The trust anchors are the bundle of the trust domain named in the leaf's URI SAN;
/// a certificate from another trust domain is only accepted if `bundles` has a bundle
/// for it (federation). Checks, in order: leaf parses; not a CA; exactly one URI SAN
/// holding a valid SPIFFE ID; keyUsage digitalSignature without keyCertSign/cRLSign;
/// bundle exists; chain, validity period and EKU (per `usage`) verify with webpki.
pub fn verify_svid(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    bundles: &TrustBundles,
    now: UnixTime,
    usage: Usage,
) -> Result<SpiffeId, SvidError> {
    let (id, info) = check_leaf(end_entity)?;
    let td = id.trust_domain();
    let cas = bundles
        .get(td)
        .filter(|cas| !cas.is_empty())
        .ok_or_else(|| SvidError::UnknownTrustDomain { td: td.to_string() })?;
    let anchors: Vec<_> = cas
        .iter()
        .filter_map(|ca| webpki::anchor_from_trusted_cert(ca).ok())
        .collect();
    if anchors.is_empty() {
        return Err(SvidError::Other(format!(
            "the trust bundle for {td:?} holds no parseable CA certificate"
        )));
    }
    let ee = webpki::EndEntityCert::try_from(end_entity)
        .map_err(|e| SvidError::Malformed(e.to_string()))?;
    let eku = match usage {
        Usage::ClientAuth => webpki::KeyUsage::client_auth(),
        Usage::ServerAuth => webpki::KeyUsage::server_auth(),
    };
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        intermediates,
        now,
        eku,
        None,
        None,
    )
    .map_err(|e| map_webpki_error(e, &id, usage, &info, cas, intermediates))?;
    Ok(id)
}

fn map_webpki_error(
    err: webpki::Error,
    id: &SpiffeId,
    usage: Usage,
    leaf: &x509::CertInfo,
    cas: &[CertificateDer<'static>],
    intermediates: &[CertificateDer<'_>],
) -> SvidError {
    use webpki::Error as E;
    let untrusted = || SvidError::UntrustedIssuer {
        td: id.trust_domain().to_string(),
        id: id.to_string(),
    };
    #[allow(deprecated)]
    match err {
        E::CertExpired { time, not_after } => SvidError::Expired {
            not_after: not_after.as_secs(),
            now: time.as_secs(),
        },
        E::CertNotValidYet { time, not_before } => SvidError::NotYetValid {
            not_before: not_before.as_secs(),
            now: time.as_secs(),
        },
        E::UnknownIssuer => untrusted(),
        E::InvalidSignatureForPublicKey => {
            // webpki only tries a key whose subject name matches the issuer name, and
            // CAs commonly share names (every SPIRE CA is "O=SPIFFE"). Telling a
            // foreign CA from a corrupted signature needs the key identifiers.
            let known_keys: BTreeSet<Vec<u8>> = cas
                .iter()
                .map(|c| c.as_ref())
                .chain(intermediates.iter().map(|c| c.as_ref()))
                .filter_map(|der| x509::parse(der).ok()?.subject_key_id)
                .collect();
            match &leaf.authority_key_id {
                Some(aki) if known_keys.contains(aki) => SvidError::BadSignature,
                _ => untrusted(),
            }
        }
        E::RequiredEkuNotFound | E::RequiredEkuNotFoundContext(_) | E::EmptyEkuExtension => {
            SvidError::WrongUsage { usage }
        }
        E::CaUsedAsEndEntity => SvidError::CaAsLeaf,
        E::BadDer | E::BadDerTime | E::MalformedExtensions | E::ExtensionValueInvalid => {
            SvidError::Malformed(err.to_string())
        }
        other => SvidError::Other(other.to_string()),
    }
}

/// Trust bundles shared between verifiers and whatever refreshes them.
///
/// Handshakes take a read lock per verification; a bundle watcher replaces the
/// contents under the write lock and every verifier sees the new bundles on the
/// next handshake, without rebuilding TLS configs.
pub type SharedBundles = Arc<RwLock<TrustBundles>>;

fn read_bundles(bundles: &SharedBundles) -> std::sync::RwLockReadGuard<'_, TrustBundles> {
    // The lock only guards a value that is replaced wholesale, so a panic while
    // holding it cannot leave it half-updated; recovering is safe.
    bundles.read().unwrap_or_else(PoisonError::into_inner)
}

fn ring_algs() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// Called with every refused client SVID (for metrics and diagnostics).
pub type RejectHook = Arc<dyn Fn(&SvidError) + Send + Sync>;

/// Server-side verifier of client X.509-SVIDs (client auth is mandatory
/// unless [`SpiffeClientVerifier::with_optional_client_auth`]).
#[derive(Clone)]
pub struct SpiffeClientVerifier {
    bundles: SharedBundles,
    allowed_trust_domains: Vec<String>,
    algs: WebPkiSupportedAlgorithms,
    mandatory: bool,
    on_reject: Option<RejectHook>,
}

impl std::fmt::Debug for SpiffeClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpiffeClientVerifier")
            .field("allowed_trust_domains", &self.allowed_trust_domains)
            .field("mandatory", &self.mandatory)
            .finish()
    }
}

impl SpiffeClientVerifier {
    /// A verifier reading `bundles` at every handshake.
    pub fn new(bundles: SharedBundles) -> Self {
        Self {
            bundles,
            allowed_trust_domains: Vec::new(),
            algs: ring_algs(),
            mandatory: true,
            on_reject: None,
        }
    }

    /// Lets clients connect without a certificate; they must then
    /// authenticate in-band (JWT-SVID or the development shared secret). A
    /// certificate that is presented is still fully verified.
    pub fn with_optional_client_auth(mut self) -> Self {
        self.mandatory = false;
        self
    }

    /// Calls `hook` with the reason of every refused client SVID.
    pub fn with_reject_hook(mut self, hook: RejectHook) -> Self {
        self.on_reject = Some(hook);
        self
    }

    /// A verifier over a private copy of `bundles`.
    pub fn from_bundles(bundles: TrustBundles) -> Self {
        Self::new(Arc::new(RwLock::new(bundles)))
    }

    /// Only accept clients from these trust domains. Empty (the default) accepts any
    /// trust domain we hold a bundle for.
    pub fn with_allowed_trust_domains<I, S>(mut self, tds: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allowed_trust_domains = tds.into_iter().map(Into::into).collect();
        self
    }

    /// The shared bundles, e.g. for a rotation task to update.
    pub fn bundles(&self) -> &SharedBundles {
        &self.bundles
    }

    /// The allowed trust domains (empty = any with a bundle).
    pub fn allowed_trust_domains(&self) -> &[String] {
        &self.allowed_trust_domains
    }

    /// Full client check without rustls: SVID verification plus trust-domain policy.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<SpiffeId, SvidError> {
        let id = verify_svid(
            end_entity,
            intermediates,
            &read_bundles(&self.bundles),
            now,
            Usage::ClientAuth,
        )?;
        if !self.allowed_trust_domains.is_empty()
            && !self
                .allowed_trust_domains
                .iter()
                .any(|td| id.is_member_of(td))
        {
            return Err(SvidError::WrongTrustDomain {
                id,
                allowed: self.allowed_trust_domains.clone(),
            });
        }
        Ok(id)
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints would have to borrow from the swappable bundles; an empty list makes
        // clients send their (single) SVID anyway, which is all SPIFFE needs.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.verify(end_entity, intermediates, now) {
            Ok(id) => {
                tracing::debug!(peer = %id, "client SVID accepted");
                Ok(ClientCertVerified::assertion())
            }
            Err(e) => {
                // A hook reports the refusal itself (the node rate-limits
                // its log lines: anyone can cause them); without one, log it.
                match &self.on_reject {
                    Some(hook) => hook(&e),
                    None => tracing::info!(
                        reason = e.reason_code(),
                        error = %e,
                        "client SVID rejected"
                    ),
                }
                Err(to_rustls(e))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Which server identity a client accepts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ServerMatch {
    /// Any SVID that verifies against a bundle we hold.
    #[default]
    Any,
    /// Any SVID from this trust domain.
    TrustDomain(String),
    /// Exactly this SPIFFE ID.
    Exact(SpiffeId),
}

impl ServerMatch {
    /// Applies the policy to an already authenticated ID.
    pub fn check(&self, id: &SpiffeId) -> Result<(), SvidError> {
        match self {
            ServerMatch::Any => Ok(()),
            ServerMatch::TrustDomain(td) if id.is_member_of(td) => Ok(()),
            ServerMatch::TrustDomain(td) => Err(SvidError::WrongTrustDomain {
                id: id.clone(),
                allowed: vec![td.clone()],
            }),
            ServerMatch::Exact(expected) if expected == id => Ok(()),
            ServerMatch::Exact(expected) => Err(SvidError::UnexpectedId {
                id: id.clone(),
                expected: expected.clone(),
            }),
        }
    }
}

/// Client-side verifier of server X.509-SVIDs.
///
/// The TLS server name is ignored: SPIFFE authenticates by ID, and the address a
/// client dials says nothing about which workload should answer. Use
/// [`ServerMatch::Exact`] to pin the peer.
#[derive(Debug, Clone)]
pub struct SpiffeServerVerifier {
    bundles: SharedBundles,
    expected: ServerMatch,
    algs: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    /// A verifier reading `bundles` at every handshake and applying `expected`.
    pub fn new(bundles: SharedBundles, expected: ServerMatch) -> Self {
        Self {
            bundles,
            expected,
            algs: ring_algs(),
        }
    }

    /// A verifier over a private copy of `bundles`.
    pub fn from_bundles(bundles: TrustBundles, expected: ServerMatch) -> Self {
        Self::new(Arc::new(RwLock::new(bundles)), expected)
    }

    /// The shared bundles, e.g. for a rotation task to update.
    pub fn bundles(&self) -> &SharedBundles {
        &self.bundles
    }

    /// The server identity policy.
    pub fn expected(&self) -> &ServerMatch {
        &self.expected
    }

    /// Full server check without rustls: SVID verification plus [`ServerMatch`].
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<SpiffeId, SvidError> {
        let id = verify_svid(
            end_entity,
            intermediates,
            &read_bundles(&self.bundles),
            now,
            Usage::ServerAuth,
        )?;
        self.expected.check(&id)?;
        Ok(id)
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.verify(end_entity, intermediates, now) {
            Ok(id) => {
                tracing::debug!(peer = %id, "server SVID accepted");
                Ok(ServerCertVerified::assertion())
            }
            Err(e) => {
                tracing::debug!(reason = e.reason_code(), error = %e, "server SVID rejected");
                Err(to_rustls(e))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Extracts the SPIFFE ID of a leaf without verifying its chain. Only for
/// certificates already verified (e.g. `peer_certificates()` after a handshake).
pub(crate) fn leaf_spiffe_id(leaf: &CertificateDer<'_>) -> Result<SpiffeId, SvidError> {
    let info = x509::parse(leaf).map_err(SvidError::Malformed)?;
    spiffe_id_from_uris(&info.uris)
}
