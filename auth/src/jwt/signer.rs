//! [`JwtSigner`]: the development and test signer of JWT-SVIDs (in
//! production SPIRE signs; the node only validates).

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};

use super::{JWT_BUNDLE_FILE, JWT_KEY_FILE, JwtBundles, JwtKey, b64, unix_secs};
use crate::id::{SpiffeId, TrustDomain};
use crate::{AuthError, files, pem};

/// An ES256 JWT-SVID signing key for one trust domain (development and tests;
/// in production SPIRE signs).
///
/// Its `kid` is the RFC 7638 JWK thumbprint of the public key.
pub struct JwtSigner {
    trust_domain: TrustDomain,
    kid: String,
    pub(super) pkcs8: Vec<u8>,
    /// Only for the public key (ring generates the key; `jsonwebtoken` signs).
    key: EcdsaKeyPair,
    encoding: EncodingKey,
}

impl fmt::Debug for JwtSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSigner")
            .field("trust_domain", &self.trust_domain)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl JwtSigner {
    /// A fresh P-256 key for `trust_domain`.
    pub fn generate(trust_domain: &str) -> Result<JwtSigner, AuthError> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| AuthError::CertGen("JWT key generation failed".into()))?;
        Self::from_pkcs8(trust_domain, doc.as_ref())
    }

    /// A signer from a PKCS#8 (DER) P-256 private key.
    pub fn from_pkcs8(trust_domain: &str, pkcs8: &[u8]) -> Result<JwtSigner, AuthError> {
        let trust_domain = TrustDomain::parse(trust_domain)?;
        let rng = SystemRandom::new();
        let key =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
                .map_err(|e| AuthError::CertGen(format!("unusable JWT signing key: {e}")))?;
        let point = key.public_key().as_ref();
        let (x, y) = point[1..].split_at(32);
        // RFC 7638: members in lexicographic order, no whitespace.
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            b64(x),
            b64(y)
        );
        let kid = b64(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()).as_ref());
        Ok(JwtSigner {
            trust_domain,
            kid,
            pkcs8: pkcs8.to_vec(),
            key,
            encoding: EncodingKey::from_ec_der(pkcs8),
        })
    }

    /// Loads `dir/jwt.key`, or creates it (mode 0600) if absent; either way
    /// (re)writes `dir/jwt_bundle.json` with the public JWKS so that other local
    /// processes can validate the tokens.
    pub fn load_or_init(dir: &Path, trust_domain: &str) -> Result<JwtSigner, AuthError> {
        let key_path = dir.join(JWT_KEY_FILE);
        let signer = if key_path.exists() {
            let pem_bytes = files::read(&key_path, "JWT signing key (PEM)")?;
            files::warn_if_key_exposed(&key_path);
            let der =
                PrivateKeyDer::from_pem_slice(&pem_bytes).map_err(|e| AuthError::BadFile {
                    path: key_path.clone(),
                    reason: format!("no usable private key: {e}"),
                })?;
            Self::from_pkcs8(trust_domain, der.secret_der()).map_err(|e| AuthError::BadFile {
                path: key_path.clone(),
                reason: e.to_string(),
            })?
        } else {
            std::fs::create_dir_all(dir).map_err(files::io_err(dir))?;
            let signer = Self::generate(trust_domain)?;
            files::write_new(
                &key_path,
                pem::encode("PRIVATE KEY", &signer.pkcs8).as_bytes(),
                0o600,
            )?;
            signer
        };
        files::write_replace(
            &dir.join(JWT_BUNDLE_FILE),
            signer.jwks_json().as_bytes(),
            0o644,
        )?;
        Ok(signer)
    }

    /// The trust domain whose JWT-SVIDs this key signs.
    pub fn trust_domain(&self) -> &str {
        self.trust_domain.as_str()
    }

    /// The key ID put in every token header and in the JWK.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> Value {
        let point = self.key.public_key().as_ref();
        let (x, y) = point[1..].split_at(32);
        json!({
            "kty": "EC",
            "crv": "P-256",
            "x": b64(x),
            "y": b64(y),
            "kid": self.kid,
            "use": "jwt-svid",
            "alg": "ES256",
        })
    }

    /// `{"keys": [jwk]}`.
    pub fn jwks_json(&self) -> String {
        json!({ "keys": [self.jwk()] }).to_string()
    }

    /// JWT bundles holding this key for its trust domain.
    pub fn bundles(&self) -> JwtBundles {
        let mut b = JwtBundles::new();
        // The JWK is built here, so it always parses.
        if let Ok(key) = JwtKey::from_jwk(&self.jwk()) {
            let _ = b.add_key(self.trust_domain(), key);
        }
        b
    }

    /// Signs a JWT-SVID for `sub` valid for `ttl` (`iat` now, `exp` now + ttl).
    pub fn sign(
        &self,
        sub: &SpiffeId,
        audience: &[&str],
        ttl: Duration,
    ) -> Result<String, AuthError> {
        if !sub.is_member_of(self.trust_domain()) {
            return Err(AuthError::TrustDomainMismatch {
                id: sub.clone(),
                ca_trust_domain: self.trust_domain().to_string(),
            });
        }
        if audience.is_empty() {
            return Err(AuthError::Bundle(
                "a JWT-SVID needs at least one audience".into(),
            ));
        }
        let now = unix_secs(SystemTime::now());
        let aud: Value = match audience {
            [one] => json!(one),
            many => json!(many),
        };
        let claims = json!({
            "sub": sub.as_str(),
            "aud": aud,
            "iat": now,
            "exp": now + ttl.as_secs().max(1),
        });
        self.sign_claims(&claims)
    }

    /// Signs arbitrary claims as-is (tests: expired or odd tokens).
    pub fn sign_claims(&self, claims: &Value) -> Result<String, AuthError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| AuthError::CertGen(format!("JWT signing failed: {e}")))
    }

    /// Signs header and payload JSON text byte for byte (tests: hostile
    /// tokens a JSON serializer would not write, such as repeated keys).
    pub fn sign_raw(&self, header_json: &str, payload_json: &str) -> Result<String, AuthError> {
        let input = format!(
            "{}.{}",
            b64(header_json.as_bytes()),
            b64(payload_json.as_bytes())
        );
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &self.encoding, Algorithm::ES256)
            .map_err(|e| AuthError::CertGen(format!("JWT signing failed: {e}")))?;
        Ok(format!("{input}.{sig}"))
    }
}
