//! Our own identity (X.509-SVID + key) and the trust bundles used to verify peers.

use std::fmt;
use std::path::Path;
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

pub use crate::bundle::TrustBundles;
use crate::id::SpiffeId;
use crate::verify::{Usage, leaf_spiffe_id, verify_svid};
use crate::{AuthError, SvidError, files, pem, x509};

/// SVID certificate chain file in the spiffe-helper layout (leaf first, PEM).
pub const CERT_FILE: &str = "tls.crt";
/// SVID private key file in the spiffe-helper layout (PKCS#8 PEM, mode 0600).
pub const KEY_FILE: &str = "tls.key";
/// Trust bundle file in the spiffe-helper layout (CA certificates, PEM).
pub const BUNDLE_FILE: &str = "svid_bundle.pem";

/// A workload identity: our X.509-SVID, its private key, and the bundles we trust.
pub struct Identity {
    /// The SPIFFE ID in our leaf certificate.
    pub spiffe_id: SpiffeId,
    /// Leaf first, then any intermediates (never the root).
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// CAs used to verify peers.
    pub bundles: TrustBundles,
    /// The leaf's notAfter.
    pub not_after: SystemTime,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            spiffe_id: self.spiffe_id.clone(),
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
            bundles: self.bundles.clone(),
            not_after: self.not_after,
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("spiffe_id", &self.spiffe_id)
            .field("cert_chain_len", &self.cert_chain.len())
            .field("key", &"[redacted]")
            .field("bundles", &self.bundles)
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl Identity {
    /// Loads `dir/tls.crt`, `dir/tls.key` and `dir/svid_bundle.pem` (spiffe-helper layout).
    pub fn from_files(dir: &Path) -> Result<Identity, AuthError> {
        Self::from_paths(
            &dir.join(CERT_FILE),
            &dir.join(KEY_FILE),
            &dir.join(BUNDLE_FILE),
        )
    }

    /// Loads an identity from explicit file paths.
    ///
    /// Besides parsing, checks that the key belongs to the leaf and that the leaf is a
    /// valid SVID under the bundle, so a mismatched set of files fails here with the
    /// file named rather than later as an opaque handshake failure. An expired or
    /// not-yet-valid SVID only logs a warning: a rotation agent may be about to
    /// replace it.
    pub fn from_paths(cert: &Path, key: &Path, bundle: &Path) -> Result<Identity, AuthError> {
        let cert_pem = files::read(cert, "SVID certificate chain (PEM)")?;
        let key_pem = files::read(key, "SVID private key (PEM)")?;
        let bundle_pem = files::read(bundle, "trust bundle (PEM)")?;
        files::warn_if_key_exposed(key);

        let bad = |path: &Path, reason: String| AuthError::BadFile {
            path: path.to_path_buf(),
            reason,
        };

        let cert_chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(cert, format!("bad PEM: {e}")))?;
        let leaf = cert_chain
            .first()
            .ok_or_else(|| bad(cert, "no CERTIFICATE block found".into()))?;
        let spiffe_id =
            leaf_spiffe_id(leaf).map_err(|e| bad(cert, format!("leaf is not an SVID: {e}")))?;
        let not_after = x509::parse(leaf)
            .map(|info| x509::unix_to_system(info.not_after))
            .map_err(|e| bad(cert, e))?;

        let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| bad(key, format!("no usable private key: {e}")))?;
        let provider = rustls::crypto::ring::default_provider();
        rustls::sign::CertifiedKey::from_der(cert_chain.clone(), key_der.clone_key(), &provider)
            .map_err(|e| {
                bad(
                    key,
                    format!("key does not match certificate {}: {e}", cert.display()),
                )
            })?;

        let bundles = TrustBundles::from_pem(spiffe_id.trust_domain(), &bundle_pem)
            .map_err(|e| bad(bundle, e.to_string()))?;

        let identity = Identity {
            spiffe_id,
            cert_chain,
            key: key_der,
            bundles,
            not_after,
        };
        match identity.check(UnixTime::now()) {
            Ok(()) => {}
            Err(e @ (SvidError::Expired { .. } | SvidError::NotYetValid { .. })) => {
                tracing::warn!(
                    id = %identity.spiffe_id,
                    path = %cert.display(),
                    error = %e,
                    "loaded SVID is not currently valid"
                );
            }
            Err(e) => {
                return Err(bad(
                    cert,
                    format!(
                        "SVID does not verify against trust bundle {}: {e}",
                        bundle.display()
                    ),
                ));
            }
        }
        Ok(identity)
    }

    /// Verifies our own SVID against our own bundles for both TLS roles, as a peer would.
    pub fn check(&self, now: UnixTime) -> Result<(), SvidError> {
        let (leaf, intermediates) = self
            .cert_chain
            .split_first()
            .ok_or(SvidError::NoCertificate)?;
        for usage in [Usage::ServerAuth, Usage::ClientAuth] {
            verify_svid(leaf, intermediates, &self.bundles, now, usage)?;
        }
        Ok(())
    }

    /// Writes the spiffe-helper layout into `dir` (created if needed), replacing
    /// existing files atomically; the key file gets mode 0600.
    pub fn write_to_dir(&self, dir: &Path) -> Result<(), AuthError> {
        std::fs::create_dir_all(dir).map_err(files::io_err(dir))?;
        let chain: String = self
            .cert_chain
            .iter()
            .map(|c| pem::encode("CERTIFICATE", c))
            .collect();
        let key_label = match &self.key {
            PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
            PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
            _ => "PRIVATE KEY",
        };
        let key = pem::encode(key_label, self.key.secret_der());
        // Key before certificate: a watcher that reloads on the certificate change
        // then finds the matching key already in place.
        files::write_replace(&dir.join(KEY_FILE), key.as_bytes(), 0o600)?;
        files::write_replace(&dir.join(CERT_FILE), chain.as_bytes(), 0o644)?;
        files::write_replace(
            &dir.join(BUNDLE_FILE),
            self.bundles.to_pem().as_bytes(),
            0o644,
        )
    }
}
