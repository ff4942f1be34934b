//! A development certificate authority that issues X.509-SVIDs for one trust domain.
//!
//! This stands in for SPIRE in development, tests and small deployments. The CA is a
//! self-signed ECDSA P-256 root whose URI SAN is the trust domain ID
//! (`spiffe://<td>`), so bundles built from it are filed under the right trust
//! domain. Leaves are issued directly by the root (no intermediates).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use crate::id::{SpiffeId, TrustDomain};
use crate::identity::{Identity, TrustBundles};
use crate::{AuthError, files, pem, x509};

/// CA certificate file written by [`DevCa::init`].
pub const CA_CERT_FILE: &str = "ca.crt";
/// CA private key file written by [`DevCa::init`] (mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";

/// Lifetime of a generated CA: long enough that a dev setup does not break on its
/// own, short enough that a leaked dev key does not stay useful forever.
const CA_LIFETIME: Duration = Duration::from_secs(5 * 365 * 24 * 3600);

/// Backdating of notBefore, to tolerate clock skew between issuer and verifier.
const BACKDATE: Duration = Duration::from_secs(60);

fn gen_err(e: rcgen::Error) -> AuthError {
    AuthError::CertGen(e.to_string())
}

fn to_asn1_time(t: SystemTime) -> Result<OffsetDateTime, AuthError> {
    // Whole seconds: X.509 validity has no fractions, and truncating here keeps
    // `Identity::not_after` identical to what a peer will parse from the certificate.
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| AuthError::CertGen("validity time before 1970".into()))?
        .as_secs();
    let secs =
        i64::try_from(secs).map_err(|_| AuthError::CertGen("validity time too far".into()))?;
    OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|e| AuthError::CertGen(format!("validity time out of range: {e}")))
}

fn random_serial() -> Result<SerialNumber, AuthError> {
    let mut buf = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut buf)
        .map_err(|_| AuthError::CertGen("system random number generator failed".into()))?;
    // Positive (top bit clear) and non-zero leading byte, so the DER INTEGER is
    // exactly 16 bytes: RFC 5280 limits serials to 20 octets.
    buf[0] = (buf[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&buf))
}

fn uri_san(uri: &str) -> Result<SanType, AuthError> {
    Ia5String::try_from(uri)
        .map(SanType::URI)
        .map_err(|e| AuthError::CertGen(format!("URI SAN {uri:?}: {e}")))
}

/// A development CA for one trust domain.
pub struct DevCa {
    trust_domain: TrustDomain,
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    not_after: SystemTime,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa")
            .field("trust_domain", &self.trust_domain)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl DevCa {
    /// Default SVID lifetime: short, as SPIFFE intends, yet long enough for dev loops.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

    /// Creates a new CA for `trust_domain` and writes `dir/ca.crt` and `dir/ca.key`
    /// (mode 0600). Fails with [`AuthError::CaExists`] if either file exists: silently
    /// replacing a CA would invalidate every SVID issued so far.
    pub fn init(dir: &Path, trust_domain: &str) -> Result<DevCa, AuthError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        for existing in [&cert_path, &key_path] {
            if existing.symlink_metadata().is_ok() {
                return Err(AuthError::CaExists {
                    existing: existing.clone(),
                });
            }
        }
        let ca = Self::generate(trust_domain)?;
        std::fs::create_dir_all(dir).map_err(files::io_err(dir))?;
        let exists = |path: &Path, e: AuthError| match e {
            AuthError::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists => {
                AuthError::CaExists {
                    existing: path.to_path_buf(),
                }
            }
            other => other,
        };
        files::write_new(&key_path, ca.issuer.key().serialize_pem().as_bytes(), 0o600)
            .map_err(|e| exists(&key_path, e))?;
        if let Err(e) = files::write_new(&cert_path, ca.ca_cert_pem().as_bytes(), 0o644) {
            // Do not leave a key without its certificate: the next init would refuse.
            let _ = std::fs::remove_file(&key_path);
            return Err(exists(&cert_path, e));
        }
        tracing::info!(trust_domain = %ca.trust_domain, dir = %dir.display(), "created development CA");
        Ok(ca)
    }

    /// Loads a CA written by [`DevCa::init`]. The trust domain comes from the CA
    /// certificate's `spiffe://` URI SAN.
    pub fn load(dir: &Path) -> Result<DevCa, AuthError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = files::read(&cert_path, "CA certificate (PEM)")?;
        let key_pem = files::read(&key_path, "CA private key (PEM)")?;
        files::warn_if_key_exposed(&key_path);
        let bad = |path: &Path, reason: String| AuthError::BadFile {
            path: path.to_path_buf(),
            reason,
        };

        let der = CertificateDer::from_pem_slice(&cert_pem)
            .map_err(|e| bad(&cert_path, format!("no CA certificate: {e}")))?;
        let info = x509::parse(&der).map_err(|e| bad(&cert_path, e))?;
        if !info.is_ca {
            return Err(bad(
                &cert_path,
                "not a CA certificate (basicConstraints CA:TRUE missing)".into(),
            ));
        }
        let td = info
            .uris
            .iter()
            .find(|u| u.starts_with("spiffe://"))
            .ok_or_else(|| {
                bad(
                    &cert_path,
                    "CA certificate has no spiffe:// URI SAN naming its trust domain".into(),
                )
            })
            .and_then(|u| {
                TrustDomain::parse(u).map_err(|e| bad(&cert_path, format!("URI SAN {u:?}: {e}")))
            })?;

        let key_str = std::str::from_utf8(&key_pem)
            .map_err(|_| bad(&key_path, "not a PEM file (not UTF-8)".into()))?;
        let key = KeyPair::from_pem(key_str)
            .map_err(|e| bad(&key_path, format!("unusable private key: {e}")))?;
        if rcgen::PublicKeyData::subject_public_key_info(&key) != info.spki {
            return Err(bad(
                &key_path,
                format!("key does not match CA certificate {}", cert_path.display()),
            ));
        }
        Self::from_parts(td, der, key)
    }

    /// Creates a CA in memory only (tests, ephemeral setups).
    pub fn generate(trust_domain: &str) -> Result<DevCa, AuthError> {
        let td = TrustDomain::parse(trust_domain)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        params.not_before = to_asn1_time(now - BACKDATE)?;
        params.not_after = to_asn1_time(now + CA_LIFETIME)?;
        params.serial_number = Some(random_serial()?);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "SLIM development CA");
        dn.push(DnType::CommonName, format!("SLIM dev CA for {td}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![uri_san(td.id().as_str())?];
        let cert = params.self_signed(&key).map_err(gen_err)?;
        Self::from_parts(td, cert.der().clone(), key)
    }

    fn from_parts(
        trust_domain: TrustDomain,
        cert: CertificateDer<'static>,
        key: KeyPair,
    ) -> Result<DevCa, AuthError> {
        let info = x509::parse(&cert).map_err(AuthError::CertGen)?;
        // Built from the certificate (not the params) so that issued leaves carry an
        // authority key identifier equal to the CA's subject key identifier.
        let issuer = Issuer::from_ca_cert_der(&cert, key).map_err(gen_err)?;
        Ok(DevCa {
            trust_domain,
            cert,
            issuer,
            not_after: x509::unix_to_system(info.not_after),
        })
    }

    /// The trust domain this CA issues for.
    pub fn trust_domain(&self) -> &str {
        self.trust_domain.as_str()
    }

    /// The CA certificate (DER).
    pub fn ca_cert_der(&self) -> CertificateDer<'static> {
        self.cert.clone()
    }

    /// The CA certificate (PEM).
    pub fn ca_cert_pem(&self) -> String {
        pem::encode("CERTIFICATE", &self.cert)
    }

    /// The CA's notAfter.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// A bundle trusting only this CA, for its trust domain.
    pub fn bundles(&self) -> TrustBundles {
        let mut b = TrustBundles::new();
        b.add(self.trust_domain(), self.ca_cert_der());
        b
    }

    /// Issues an X.509-SVID for `id`, valid from 60 s ago (clock skew) for `ttl`.
    pub fn issue(&self, id: &SpiffeId, ttl: Duration) -> Result<Identity, AuthError> {
        if !id.is_member_of(self.trust_domain()) {
            return Err(AuthError::TrustDomainMismatch {
                id: id.clone(),
                ca_trust_domain: self.trust_domain().to_string(),
            });
        }
        if ttl < Duration::from_secs(1) {
            return Err(AuthError::InvalidTtl {
                ttl,
                reason: "must be at least one second".into(),
            });
        }
        let now = SystemTime::now();
        let not_after = now
            .checked_add(ttl)
            .filter(|t| *t <= self.not_after)
            .ok_or_else(|| AuthError::InvalidTtl {
                ttl,
                reason: "the SVID would outlive the CA certificate".into(),
            })?;
        let spec = testing::LeafSpec {
            not_before: now - BACKDATE,
            not_after,
            ..testing::LeafSpec::svid(id)
        };
        self.sign_leaf(id, &spec)
    }

    /// [`issue`](Self::issue), then write the spiffe-helper layout into `out`:
    /// `tls.crt` (leaf then chain), `tls.key` (PKCS#8, mode 0600), `svid_bundle.pem`.
    pub fn issue_to_dir(
        &self,
        id: &SpiffeId,
        ttl: Duration,
        out: &Path,
    ) -> Result<Identity, AuthError> {
        let identity = self.issue(id, ttl)?;
        identity.write_to_dir(out)?;
        Ok(identity)
    }

    fn sign_leaf(
        &self,
        claimed: &SpiffeId,
        spec: &testing::LeafSpec,
    ) -> Result<Identity, AuthError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let mut params = CertificateParams::default();
        params.not_before = to_asn1_time(spec.not_before)?;
        params.not_after = to_asn1_time(spec.not_after)?;
        params.serial_number = Some(random_serial()?);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "SLIM");
        params.distinguished_name = dn;
        params.use_authority_key_identifier_extension = true;
        params.is_ca = if spec.is_ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        let mut sans = Vec::new();
        for uri in &spec.uri_sans {
            sans.push(uri_san(uri)?);
        }
        for dns in &spec.dns_sans {
            let name = Ia5String::try_from(dns.as_str())
                .map_err(|e| AuthError::CertGen(format!("DNS SAN {dns:?}: {e}")))?;
            sans.push(SanType::DnsName(name));
        }
        params.subject_alt_names = sans;
        if spec.digital_signature {
            params.key_usages.push(KeyUsagePurpose::DigitalSignature);
        }
        if spec.key_cert_sign {
            params.key_usages.push(KeyUsagePurpose::KeyCertSign);
        }
        if spec.server_auth {
            params.insert_extended_key_usage(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if spec.client_auth {
            params.insert_extended_key_usage(ExtendedKeyUsagePurpose::ClientAuth);
        }
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err)?;
        let der = cert.der().clone();
        let info = x509::parse(&der).map_err(AuthError::CertGen)?;
        Ok(Identity {
            spiffe_id: claimed.clone(),
            cert_chain: vec![der],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            bundles: self.bundles(),
            not_after: x509::unix_to_system(info.not_after),
        })
    }
}

/// Deliberately defective certificates, **for tests only**.
///
/// Each helper returns an [`Identity`] signed by the given (trusted) CA, so a test
/// can present it in a real handshake and observe the exact rejection. The
/// `spiffe_id` field of the returned identity is the ID the holder *claims*; the
/// certificate may not actually carry it (that is the point).
pub mod testing {
    use super::*;

    /// Everything about a leaf that the helpers vary.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct LeafSpec {
        /// URI SANs, in order.
        pub uri_sans: Vec<String>,
        /// DNS SANs.
        pub dns_sans: Vec<String>,
        /// basicConstraints CA:TRUE instead of CA:FALSE.
        pub is_ca: bool,
        /// keyUsage digitalSignature.
        pub digital_signature: bool,
        /// keyUsage keyCertSign.
        pub key_cert_sign: bool,
        /// EKU serverAuth.
        pub server_auth: bool,
        /// EKU clientAuth.
        pub client_auth: bool,
        /// notBefore.
        pub not_before: SystemTime,
        /// notAfter.
        pub not_after: SystemTime,
    }

    impl LeafSpec {
        /// A correct SVID for `id`, valid from 60 s ago for [`DevCa::DEFAULT_TTL`].
        pub fn svid(id: &SpiffeId) -> Self {
            let now = SystemTime::now();
            LeafSpec {
                uri_sans: vec![id.as_str().to_string()],
                dns_sans: Vec::new(),
                is_ca: false,
                digital_signature: true,
                key_cert_sign: false,
                server_auth: true,
                client_auth: true,
                not_before: now - BACKDATE,
                not_after: now + DevCa::DEFAULT_TTL,
            }
        }
    }

    /// Issues a leaf exactly as described by `spec`, skipping all of
    /// [`DevCa::issue`]'s sanity checks.
    pub fn issue_custom(
        ca: &DevCa,
        claimed: &SpiffeId,
        spec: &LeafSpec,
    ) -> Result<Identity, AuthError> {
        ca.sign_leaf(claimed, spec)
    }

    /// A CA certificate (CA:TRUE, keyCertSign) with `id` as URI SAN, used as a leaf.
    pub fn ca_as_leaf(ca: &DevCa, id: &SpiffeId) -> Result<Identity, AuthError> {
        let spec = LeafSpec {
            is_ca: true,
            key_cert_sign: true,
            ..LeafSpec::svid(id)
        };
        issue_custom(ca, id, &spec)
    }

    /// A leaf with two URI SANs, `id` then `second`.
    pub fn two_uri_sans(
        ca: &DevCa,
        id: &SpiffeId,
        second: &SpiffeId,
    ) -> Result<Identity, AuthError> {
        let mut spec = LeafSpec::svid(id);
        spec.uri_sans.push(second.as_str().to_string());
        issue_custom(ca, id, &spec)
    }

    /// A WebPKI-style leaf with only a DNS SAN (no SPIFFE ID in the certificate).
    pub fn dns_only(ca: &DevCa, id: &SpiffeId, dns_name: &str) -> Result<Identity, AuthError> {
        let spec = LeafSpec {
            uri_sans: Vec::new(),
            dns_sans: vec![dns_name.to_string()],
            ..LeafSpec::svid(id)
        };
        issue_custom(ca, id, &spec)
    }

    /// A leaf that expired an hour ago.
    pub fn expired(ca: &DevCa, id: &SpiffeId) -> Result<Identity, AuthError> {
        let now = SystemTime::now();
        let spec = LeafSpec {
            not_before: now - Duration::from_secs(2 * 3600),
            not_after: now - Duration::from_secs(3600),
            ..LeafSpec::svid(id)
        };
        issue_custom(ca, id, &spec)
    }

    /// A leaf that becomes valid in an hour.
    pub fn not_yet_valid(ca: &DevCa, id: &SpiffeId) -> Result<Identity, AuthError> {
        let now = SystemTime::now();
        let spec = LeafSpec {
            not_before: now + Duration::from_secs(3600),
            not_after: now + Duration::from_secs(2 * 3600),
            ..LeafSpec::svid(id)
        };
        issue_custom(ca, id, &spec)
    }

    /// A non-CA leaf that nevertheless asserts keyUsage keyCertSign.
    pub fn key_cert_sign_leaf(ca: &DevCa, id: &SpiffeId) -> Result<Identity, AuthError> {
        let spec = LeafSpec {
            key_cert_sign: true,
            ..LeafSpec::svid(id)
        };
        issue_custom(ca, id, &spec)
    }

    /// A leaf whose EKU allows only serverAuth (so it fails as a client certificate).
    pub fn server_auth_only(ca: &DevCa, id: &SpiffeId) -> Result<Identity, AuthError> {
        let spec = LeafSpec {
            client_auth: false,
            ..LeafSpec::svid(id)
        };
        issue_custom(ca, id, &spec)
    }
}
