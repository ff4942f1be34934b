//! The [`Group`] state: creating and joining a group, member lookups and credential checks.

use std::fmt;

use openmls::prelude::*;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::storage::StorageProvider as _;
use rustls_pki_types::UnixTime;
use slim_auth::{SpiffeId, TrustBundles};

use super::codec::{credential_identity, parse_message};
use super::identity::MlsIdentity;
use super::types::{CIPHERSUITE, MAX_PAST_EPOCHS};
use crate::MlsError;
use crate::credential::{VerifiedCache, claimed_spiffe_id, rejected};

/// One MLS group (one per channel).
pub struct Group {
    pub(super) me: MlsIdentity,
    pub(super) pending_me: Option<MlsIdentity>,
    pub(super) group: MlsGroup,
    pub(super) bundles: TrustBundles,
    pub(super) cache: VerifiedCache,
}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("me", &self.me.inner.spiffe_id)
            .field("epoch", &self.group.epoch().as_u64())
            .field("members", &self.group.members().count())
            .field("active", &self.group.is_active())
            .finish_non_exhaustive()
    }
}

fn create_config() -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .ciphersuite(CIPHERSUITE)
        .use_ratchet_tree_extension(true)
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .build()
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .build()
}

impl Group {
    pub(super) fn provider(&self) -> &OpenMlsRustCrypto {
        &self.me.inner.provider
    }

    /// Creates a group with `identity` as its only member (the moderator).
    /// Members' credentials are verified against `identity`'s trust bundles
    /// (see [`Group::set_bundles`]).
    pub fn create(identity: &MlsIdentity, group_id: &[u8]) -> Result<Group, MlsError> {
        let inner = &identity.inner;
        let group = MlsGroup::new_with_group_id(
            &*inner.provider,
            &inner.signer,
            &create_config(),
            GroupId::from_slice(group_id),
            inner.credential.clone(),
        )
        .map_err(|e| MlsError::protocol("create group", format!("{e:?}")))?;
        Ok(Group {
            me: identity.clone(),
            pending_me: None,
            group,
            bundles: inner.bundles.clone(),
            cache: VerifiedCache::default(),
        })
    }

    /// Joins a group from a Welcome made for a key package of `identity`.
    /// Every member credential in the ratchet tree is verified against
    /// `bundles`; one that does not verify refuses the whole Welcome.
    pub fn join(
        identity: &MlsIdentity,
        welcome: &[u8],
        bundles: &TrustBundles,
    ) -> Result<Group, MlsError> {
        let welcome = match parse_message(welcome)? {
            MlsMessageBodyIn::Welcome(w) => w,
            _ => return Err(MlsError::UnexpectedMessage("expected a Welcome")),
        };
        let provider = &*identity.inner.provider;
        // openmls deletes the key package a Welcome names before it has
        // validated anything, so a corrupted or refused Welcome would burn
        // it. Keep a copy and put it back if joining fails.
        let saved: Vec<(KeyPackageRef, KeyPackageBundle)> = welcome
            .secrets()
            .iter()
            .filter_map(|egs| {
                let r = egs.new_member();
                let b: KeyPackageBundle = provider.storage().key_package(&r).ok()??;
                Some((r, b))
            })
            .collect();
        let joined = Self::join_staged(provider, welcome, bundles);
        if joined.is_err() {
            for (r, b) in &saved {
                // Best effort: failing to restore only loses the retry.
                let _ = provider.storage().write_key_package(r, b);
            }
        }
        let (group, cache) = joined?;
        Ok(Group {
            me: identity.clone(),
            pending_me: None,
            group,
            bundles: bundles.clone(),
            cache,
        })
    }

    fn join_staged(
        provider: &OpenMlsRustCrypto,
        welcome: Welcome,
        bundles: &TrustBundles,
    ) -> Result<(MlsGroup, VerifiedCache), MlsError> {
        let staged = StagedWelcome::new_from_welcome(provider, &join_config(), welcome, None)
            .map_err(|e| match e {
                WelcomeError::NoMatchingKeyPackage => MlsError::WelcomeNotForUs,
                other => MlsError::protocol("welcome", format!("{other:?}")),
            })?;
        if staged.group_context().ciphersuite() != CIPHERSUITE {
            return Err(MlsError::protocol(
                "welcome",
                format!(
                    "unsupported ciphersuite {:?}",
                    staged.group_context().ciphersuite()
                ),
            ));
        }
        let mut cache = VerifiedCache::default();
        let now = UnixTime::now();
        for m in staged.members() {
            let cred =
                credential_identity(&m.credential).map_err(|e| MlsError::CredentialRejected {
                    member: "<non-SLIM credential>".into(),
                    reason: Box::new(e),
                })?;
            cache.verify(&cred, &m.signature_key, bundles, now)?;
        }
        let group = staged
            .into_group(provider)
            .map_err(|e| MlsError::protocol("welcome", format!("{e:?}")))?;
        Ok((group, cache))
    }

    /// Replaces the trust bundles used to verify members (bundle rotation) and
    /// forgets cached verifications.
    pub fn set_bundles(&mut self, bundles: TrustBundles) {
        self.bundles = bundles;
        self.cache.clear();
    }

    /// The group id.
    pub fn group_id(&self) -> &[u8] {
        self.group.group_id().as_slice()
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.group.epoch().as_u64()
    }

    /// False once this member has been removed.
    pub fn is_active(&self) -> bool {
        self.group.is_active()
    }

    /// This member's SPIFFE ID.
    pub fn own_id(&self) -> &SpiffeId {
        self.me.spiffe_id()
    }

    /// The SPIFFE IDs of all members (including this one), in leaf order.
    /// Every one was verified when it entered the group.
    pub fn members(&self) -> Vec<SpiffeId> {
        self.group
            .members()
            .filter_map(|m| {
                let cred = credential_identity(&m.credential).ok()?;
                SpiffeId::parse(&claimed_spiffe_id(&cred).ok()?).ok()
            })
            .collect()
    }

    /// This member's current MLS signature public key (changes on rebind).
    pub fn own_signature_public_key(&self) -> &[u8] {
        self.me.signature_public_key()
    }

    /// Number of credentials currently cached as verified.
    pub fn verified_cache_len(&self) -> usize {
        self.cache.len()
    }

    pub(super) fn verify_leaf(
        &mut self,
        credential: &Credential,
        signature_key: &[u8],
    ) -> Result<SpiffeId, MlsError> {
        let cred = credential_identity(credential).map_err(|e| MlsError::CredentialRejected {
            member: "<non-SLIM credential>".into(),
            reason: Box::new(e),
        })?;
        self.cache
            .verify(&cred, signature_key, &self.bundles, UnixTime::now())
    }

    /// The sender's credential is the one of its leaf *in the message's epoch*
    /// (which may be a past epoch). Accept it if this member verified it (at
    /// join or when a commit brought it in) and its SVID is still valid;
    /// otherwise re-verify it only if the leaf still holds it now. A past-epoch
    /// message from a leaf since removed or reused by someone else is refused
    /// rather than attributed to the leaf's current holder.
    pub(super) fn verify_sender(
        &mut self,
        idx: LeafNodeIndex,
        credential: &Credential,
    ) -> Result<SpiffeId, MlsError> {
        let cred = credential_identity(credential).map_err(|e| MlsError::CredentialRejected {
            member: "<non-SLIM credential>".into(),
            reason: Box::new(e),
        })?;
        let now = UnixTime::now();
        if let Some(id) = self.cache.lookup(&cred, now) {
            return Ok(id);
        }
        match self.group.member_at(idx) {
            Some(m) if m.credential == *credential => {
                self.cache
                    .verify(&cred, &m.signature_key, &self.bundles, now)
            }
            _ => Err(rejected(&cred, MlsError::StaleSender)),
        }
    }
}
