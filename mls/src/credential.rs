//! MLS credentials bound to SPIFFE X.509-SVIDs.
//!
//! The identity bytes of the MLS `BasicCredential` are a MessagePack array
//! `[version, spiffe_id, svid_chain (DER, leaf first), binding_signature]`.
//! `binding_signature` is an ECDSA-P256-SHA256 (ASN.1 DER) signature by the
//! X.509-SVID private key over [`binding_message`], which ties the MLS
//! signature public key to the SPIFFE ID.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, UnparsedPublicKey,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use slim_auth::{Identity, SpiffeId, TrustBundles, Usage, verify_svid};

use crate::MlsError;

/// Domain separator of the binding signature.
pub const BINDING_DOMAIN: &[u8] = b"slim-mls-binding-v1";
const CREDENTIAL_VERSION: u8 = 1;
/// Upper bound on the size of an encoded credential we are willing to decode.
const MAX_CREDENTIAL_LEN: usize = 64 * 1024;
/// Upper bound on the number of certificates in a credential's chain.
const MAX_CHAIN_LEN: usize = 8;

#[derive(Serialize, Deserialize)]
struct BoundCredential {
    version: u8,
    spiffe_id: String,
    chain: Vec<ByteBuf>,
    binding: ByteBuf,
}

/// The message signed by the SVID key:
/// `"slim-mls-binding-v1" || u32be(len(id)) || id || u32be(len(pk)) || pk`.
/// Lengths make the concatenation unambiguous.
pub fn binding_message(spiffe_id: &str, mls_signature_key: &[u8]) -> Vec<u8> {
    let mut m =
        Vec::with_capacity(BINDING_DOMAIN.len() + 8 + spiffe_id.len() + mls_signature_key.len());
    m.extend_from_slice(BINDING_DOMAIN);
    for part in [spiffe_id.as_bytes(), mls_signature_key] {
        m.extend_from_slice(&(part.len() as u32).to_be_bytes());
        m.extend_from_slice(part);
    }
    m
}

/// Signs the binding of `mls_signature_key` to `svid`'s SPIFFE ID with the
/// SVID's private key and returns the encoded credential identity bytes.
pub fn bind_credential(svid: &Identity, mls_signature_key: &[u8]) -> Result<Vec<u8>, MlsError> {
    if svid.cert_chain.is_empty() {
        return Err(MlsError::NoCertificate);
    }
    let rng = SystemRandom::new();
    let key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, svid.key.secret_der(), &rng)
            .map_err(|e| MlsError::SvidKey(e.to_string()))?;
    let msg = binding_message(svid.spiffe_id.as_str(), mls_signature_key);
    let sig = key
        .sign(&rng, &msg)
        .map_err(|e| MlsError::SvidKey(e.to_string()))?;
    encode_credential(svid.spiffe_id.as_str(), &svid.cert_chain, sig.as_ref())
}

/// Encodes credential identity bytes from their parts (no signing; for tests
/// and tools that assemble a credential themselves).
pub fn encode_credential(
    spiffe_id: &str,
    chain: &[CertificateDer<'_>],
    binding_signature: &[u8],
) -> Result<Vec<u8>, MlsError> {
    let cred = BoundCredential {
        version: CREDENTIAL_VERSION,
        spiffe_id: spiffe_id.to_string(),
        chain: chain.iter().map(|c| ByteBuf::from(c.to_vec())).collect(),
        binding: ByteBuf::from(binding_signature.to_vec()),
    };
    rmp_serde::to_vec(&cred).map_err(|e| MlsError::MalformedCredential(e.to_string()))
}

fn decode(credential: &[u8]) -> Result<BoundCredential, MlsError> {
    if credential.len() > MAX_CREDENTIAL_LEN {
        return Err(MlsError::MalformedCredential(format!(
            "{} bytes, over the {MAX_CREDENTIAL_LEN}-byte limit",
            credential.len()
        )));
    }
    let c: BoundCredential = rmp_serde::from_slice(credential)
        .map_err(|e| MlsError::MalformedCredential(e.to_string()))?;
    if c.version != CREDENTIAL_VERSION {
        return Err(MlsError::MalformedCredential(format!(
            "unknown credential version {}",
            c.version
        )));
    }
    if c.chain.is_empty() || c.chain.len() > MAX_CHAIN_LEN {
        return Err(MlsError::MalformedCredential(format!(
            "certificate chain of {} certificates",
            c.chain.len()
        )));
    }
    Ok(c)
}

/// The SPIFFE ID a credential *claims*, without verifying anything. Use only
/// for naming a member in an error or looking up a member already verified.
pub fn claimed_spiffe_id(credential: &[u8]) -> Result<String, MlsError> {
    decode(credential).map(|c| c.spiffe_id)
}

/// A verified credential: who it is, and until when the SVID is valid.
#[derive(Debug, Clone)]
pub struct VerifiedCredential {
    /// The SPIFFE ID proven by the SVID chain.
    pub spiffe_id: SpiffeId,
    /// The leaf SVID's notAfter.
    pub not_after: SystemTime,
}

/// Verifies a SPIFFE-bound credential and returns the SPIFFE ID it proves.
///
/// Checks: the SVID chain verifies against `bundles` at `now` for client
/// auth; the claimed SPIFFE ID equals the SVID's; the binding signature by the
/// SVID key over `mls_signature_key` verifies.
pub fn verify_credential(
    credential: &[u8],
    mls_signature_key: &[u8],
    bundles: &TrustBundles,
    now: UnixTime,
) -> Result<SpiffeId, MlsError> {
    verify_credential_full(credential, mls_signature_key, bundles, now).map(|v| v.spiffe_id)
}

/// [`verify_credential`], also returning the SVID's notAfter.
pub fn verify_credential_full(
    credential: &[u8],
    mls_signature_key: &[u8],
    bundles: &TrustBundles,
    now: UnixTime,
) -> Result<VerifiedCredential, MlsError> {
    let c = decode(credential)?;
    let leaf = CertificateDer::from(c.chain[0].as_slice());
    let intermediates: Vec<CertificateDer<'_>> = c.chain[1..]
        .iter()
        .map(|b| CertificateDer::from(b.as_slice()))
        .collect();
    let svid_id = verify_svid(&leaf, &intermediates, bundles, now, Usage::ClientAuth)?;
    if svid_id.as_str() != c.spiffe_id {
        return Err(MlsError::IdMismatch {
            claimed: c.spiffe_id,
            svid: svid_id,
        });
    }
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| MlsError::MalformedCredential(format!("leaf certificate: {e}")))?;
    let spki = cert.public_key();
    let point = spki.subject_public_key.data.as_ref();
    let msg = binding_message(&c.spiffe_id, mls_signature_key);
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point)
        .verify(&msg, &c.binding)
        .map_err(|_| MlsError::BadBinding)?;
    let not_after = u64::try_from(cert.validity().not_after.timestamp())
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
        .unwrap_or(UNIX_EPOCH);
    Ok(VerifiedCredential {
        spiffe_id: svid_id,
        not_after,
    })
}

/// Cache of verified credentials, keyed by SHA-256 of the credential bytes,
/// remembering the MLS signature key it was verified with. An entry is used
/// only while `now` is before the SVID's notAfter.
#[derive(Default)]
pub(crate) struct VerifiedCache {
    map: HashMap<[u8; 32], (Vec<u8>, VerifiedCredential)>,
}

fn unix(now: UnixTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(now.as_secs())
}

impl VerifiedCache {
    fn key(credential: &[u8]) -> [u8; 32] {
        let d = ring::digest::digest(&ring::digest::SHA256, credential);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }

    /// The SPIFFE ID of a credential this cache verified (with whatever key it
    /// was bound to) and whose SVID has not expired at `now`.
    pub(crate) fn lookup(&self, credential: &[u8], now: UnixTime) -> Option<SpiffeId> {
        let (_, v) = self.map.get(&Self::key(credential))?;
        (unix(now) < v.not_after).then(|| v.spiffe_id.clone())
    }

    /// Verifies (or finds in the cache) and returns the SPIFFE ID. Errors are
    /// wrapped in [`MlsError::CredentialRejected`] naming the claimed member.
    pub(crate) fn verify(
        &mut self,
        credential: &[u8],
        sig_key: &[u8],
        bundles: &TrustBundles,
        now: UnixTime,
    ) -> Result<SpiffeId, MlsError> {
        let k = Self::key(credential);
        if let Some((key, v)) = self.map.get(&k)
            && key == sig_key
            && unix(now) < v.not_after
        {
            return Ok(v.spiffe_id.clone());
        }
        match verify_credential_full(credential, sig_key, bundles, now) {
            Ok(v) => {
                let id = v.spiffe_id.clone();
                self.map.insert(k, (sig_key.to_vec(), v));
                Ok(id)
            }
            Err(e) => Err(rejected(credential, e)),
        }
    }

    pub(crate) fn clear(&mut self) {
        self.map.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// Wraps `e` in [`MlsError::CredentialRejected`] naming the claimed member.
pub(crate) fn rejected(credential: &[u8], e: MlsError) -> MlsError {
    MlsError::CredentialRejected {
        member: claimed_spiffe_id(credential)
            .unwrap_or_else(|_| "<undecodable credential>".to_string()),
        reason: Box::new(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_message_is_unambiguous() {
        assert_ne!(binding_message("ab", b"c"), binding_message("a", b"bc"));
        assert!(binding_message("x", b"k").starts_with(BINDING_DOMAIN));
    }

    #[test]
    fn decode_refuses_junk_and_oversize() {
        assert!(matches!(
            decode(b"junk"),
            Err(MlsError::MalformedCredential(_))
        ));
        let big = vec![0u8; MAX_CREDENTIAL_LEN + 1];
        assert!(matches!(
            decode(&big),
            Err(MlsError::MalformedCredential(_))
        ));
        let empty_chain = encode_credential("spiffe://example.org/a", &[], b"sig").unwrap();
        assert!(matches!(
            decode(&empty_chain),
            Err(MlsError::MalformedCredential(_))
        ));
    }
}
