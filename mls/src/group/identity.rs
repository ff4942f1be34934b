//! [`MlsIdentity`]: an MLS signing identity bound to a SPIFFE X.509-SVID, and its key packages.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use slim_auth::{Identity, SpiffeId, TrustBundles};

use super::codec::{credential_identity, decode_untrusted};
use super::types::CIPHERSUITE;
use crate::MlsError;
use crate::credential::{bind_credential, claimed_spiffe_id};

/// An MLS signing identity bound to a SPIFFE X.509-SVID, plus the key store
/// holding the private keys of the key packages it published.
///
/// Cloning is cheap and shares the key store: a key package made by one clone
/// can be consumed by a `Group::join` with another.
#[derive(Clone)]
pub struct MlsIdentity {
    pub(super) inner: Arc<IdentityInner>,
}

pub(super) struct IdentityInner {
    pub(super) provider: Arc<OpenMlsRustCrypto>,
    pub(super) signer: SignatureKeyPair,
    pub(super) credential: CredentialWithKey,
    pub(super) credential_bytes: Vec<u8>,
    pub(super) spiffe_id: SpiffeId,
    pub(super) bundles: TrustBundles,
    pub(super) not_after: SystemTime,
}

impl fmt::Debug for MlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MlsIdentity")
            .field("spiffe_id", &self.inner.spiffe_id)
            .field("not_after", &self.inner.not_after)
            .finish_non_exhaustive()
    }
}

impl MlsIdentity {
    /// Generates an Ed25519 MLS signature key pair and binds it to `svid`'s
    /// SPIFFE ID with a signature by the SVID's private key.
    pub fn new(svid: &Identity) -> Result<MlsIdentity, MlsError> {
        Self::with_provider(svid, Arc::new(OpenMlsRustCrypto::default()))
    }

    /// A new binding for a rotated SVID (same SPIFFE ID expected), sharing this
    /// identity's key store, e.g. for key packages published after rotation.
    pub fn rotate(&self, svid: &Identity) -> Result<MlsIdentity, MlsError> {
        if svid.spiffe_id != self.inner.spiffe_id {
            return Err(MlsError::IdentityChanged {
                from: self.inner.spiffe_id.clone(),
                to: svid.spiffe_id.clone(),
            });
        }
        Self::with_provider(svid, self.inner.provider.clone())
    }

    fn with_provider(
        svid: &Identity,
        provider: Arc<OpenMlsRustCrypto>,
    ) -> Result<MlsIdentity, MlsError> {
        let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm())
            .map_err(|e| MlsError::protocol("signature key generation", format!("{e:?}")))?;
        let credential_bytes = bind_credential(svid, signer.public())?;
        let credential = CredentialWithKey {
            credential: BasicCredential::new(credential_bytes.clone()).into(),
            signature_key: signer.public().into(),
        };
        Ok(MlsIdentity {
            inner: Arc::new(IdentityInner {
                provider,
                signer,
                credential,
                credential_bytes,
                spiffe_id: svid.spiffe_id.clone(),
                bundles: svid.bundles.clone(),
                not_after: svid.not_after,
            }),
        })
    }

    /// The SPIFFE ID this identity is bound to.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.inner.spiffe_id
    }

    /// The MLS signature public key (Ed25519, 32 bytes).
    pub fn signature_public_key(&self) -> &[u8] {
        self.inner.signer.public()
    }

    /// The encoded SPIFFE-bound credential (the BasicCredential identity).
    pub fn credential_bytes(&self) -> &[u8] {
        &self.inner.credential_bytes
    }

    /// The trust bundles of the SVID this identity was built from.
    pub fn bundles(&self) -> &TrustBundles {
        &self.inner.bundles
    }

    /// The SVID's notAfter: rebind before it.
    pub fn not_after(&self) -> SystemTime {
        self.inner.not_after
    }

    /// A fresh serialized KeyPackage (TLS encoding of the RFC 9420
    /// `KeyPackage`). Its private keys stay in this identity's key store until
    /// a Welcome consuming it is joined.
    pub fn key_package(&self) -> Result<Vec<u8>, MlsError> {
        let bundle = KeyPackage::builder()
            .build(
                CIPHERSUITE,
                &*self.inner.provider,
                &self.inner.signer,
                self.inner.credential.clone(),
            )
            .map_err(|e| MlsError::protocol("key package", e))?;
        bundle
            .key_package()
            .tls_serialize_detached()
            .map_err(|e| MlsError::protocol("key package encoding", e))
    }
}

/// The SPIFFE ID the credential of a serialized key package *claims*, without
/// verifying it. A moderator compares it with the identity the transport
/// authenticated before admitting; [`Group::add_members`](crate::Group::add_members) then proves it.
pub fn key_package_claimed_id(key_package: &[u8]) -> Result<String, MlsError> {
    let kp = decode_untrusted("key package", || {
        KeyPackageIn::tls_deserialize_exact(key_package)
    })?;
    let cred = credential_identity(&kp.unverified_credential().credential)?;
    claimed_spiffe_id(&cred)
}
