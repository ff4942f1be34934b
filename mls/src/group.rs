//! MLS identities (SVID-bound signature keys) and groups (one per channel).

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use openmls::framing::errors::{MessageDecryptionError, SecretTreeError};
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::storage::StorageProvider as _;
use rustls_pki_types::UnixTime;
use slim_auth::{Identity, SpiffeId, TrustBundles};

use crate::MlsError;
use crate::credential::{VerifiedCache, bind_credential, claimed_spiffe_id, rejected};

/// The one ciphersuite SLIM uses: X25519, AES-128-GCM, SHA-256, Ed25519.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// How many past epochs a member keeps secrets for, so that application
/// messages sent just before a commit and delivered just after it still
/// decrypt. Replays in those epochs are still refused (consumed keys are
/// deleted per epoch).
pub const MAX_PAST_EPOCHS: usize = 2;

/// An MLS signing identity bound to a SPIFFE X.509-SVID, plus the key store
/// holding the private keys of the key packages it published.
///
/// Cloning is cheap and shares the key store: a key package made by one clone
/// can be consumed by a `Group::join` with another.
#[derive(Clone)]
pub struct MlsIdentity {
    inner: Arc<IdentityInner>,
}

struct IdentityInner {
    provider: Arc<OpenMlsRustCrypto>,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
    credential_bytes: Vec<u8>,
    spiffe_id: SpiffeId,
    bundles: TrustBundles,
    not_after: SystemTime,
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
/// authenticated before admitting; [`Group::add_members`] then proves it.
pub fn key_package_claimed_id(key_package: &[u8]) -> Result<String, MlsError> {
    let kp = decode_untrusted("key package", || {
        KeyPackageIn::tls_deserialize_exact(key_package)
    })?;
    let cred = credential_identity(&kp.unverified_credential().credential)?;
    claimed_spiffe_id(&cred)
}

/// A commit to send to the group, and a Welcome for the members it adds.
#[derive(Debug, Clone)]
pub struct Commit {
    /// The commit (an MLS PrivateMessage): send to the current members.
    pub commit: Vec<u8>,
    /// The Welcome for added members, when the commit adds any.
    pub welcome: Option<Vec<u8>>,
}

/// A decrypted application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decrypted {
    /// The sender, from its verified SPIFFE-bound credential.
    pub sender: SpiffeId,
    /// The plaintext.
    pub plaintext: Vec<u8>,
}

/// What a processed commit changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    /// The committer.
    pub sender: SpiffeId,
    /// The epoch after the commit.
    pub epoch: u64,
    /// Members added (verified credentials).
    pub added: Vec<SpiffeId>,
    /// Members removed.
    pub removed: Vec<SpiffeId>,
    /// Members whose leaf (credential or keys) changed, e.g. by a rebind.
    pub updated: Vec<SpiffeId>,
    /// This member was removed: the group is no longer usable.
    pub self_removed: bool,
}

/// An incoming group message after processing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// An application message.
    Application(Decrypted),
    /// A commit, already merged.
    Commit(CommitInfo),
}

/// One MLS group (one per channel).
pub struct Group {
    me: MlsIdentity,
    pending_me: Option<MlsIdentity>,
    group: MlsGroup,
    bundles: TrustBundles,
    cache: VerifiedCache,
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

fn credential_identity(credential: &Credential) -> Result<Vec<u8>, MlsError> {
    let basic = BasicCredential::try_from(credential.clone())
        .map_err(|e| MlsError::MalformedCredential(format!("not a basic credential: {e}")))?;
    Ok(basic.identity().to_vec())
}

/// Runs a TLS-codec decode of untrusted bytes. tls_codec 0.4 has a
/// `debug_assert!` on the length prefix of variable-length vectors (a first
/// byte with the two top bits set) that panics on such input in builds with
/// debug assertions, where release builds return an error. Catch that panic so
/// hostile bytes are a typed error in every build.
fn decode_untrusted<T, E: fmt::Display>(
    what: &str,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, MlsError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(MlsError::Malformed(format!("{what}: {e}"))),
        Err(_) => Err(MlsError::Malformed(format!(
            "{what}: invalid variable-length vector prefix"
        ))),
    }
}

fn parse_message(bytes: &[u8]) -> Result<MlsMessageBodyIn, MlsError> {
    decode_untrusted("MLS message", || MlsMessageIn::tls_deserialize_exact(bytes))
        .map(MlsMessageIn::extract)
}

fn map_group_state(op: &'static str, e: MlsGroupStateError) -> MlsError {
    match e {
        MlsGroupStateError::UseAfterEviction => MlsError::Evicted,
        MlsGroupStateError::PendingCommit => MlsError::PendingCommit,
        other => MlsError::protocol(op, other),
    }
}

fn map_process<E: fmt::Debug>(e: ProcessMessageError<E>) -> MlsError {
    match e {
        ProcessMessageError::ValidationError(v) => match v {
            ValidationError::WrongGroupId => MlsError::WrongGroup,
            ValidationError::WrongEpoch | ValidationError::NoPastEpochData => MlsError::WrongEpoch,
            ValidationError::CannotDecryptOwnMessage => MlsError::OwnMessage,
            ValidationError::InvalidSignature | ValidationError::InvalidMembershipTag => {
                MlsError::Tampered
            }
            ValidationError::UnableToDecrypt(d) => match d {
                MessageDecryptionError::AeadError | MessageDecryptionError::MalformedContent => {
                    MlsError::Tampered
                }
                MessageDecryptionError::SecretTreeError(
                    SecretTreeError::SecretReuseError | SecretTreeError::TooDistantInThePast,
                ) => MlsError::Replay,
                MessageDecryptionError::SecretTreeError(SecretTreeError::TooDistantInTheFuture) => {
                    MlsError::TooFarAhead
                }
                other => MlsError::protocol("decrypt", other),
            },
            other => MlsError::protocol("process message", other),
        },
        ProcessMessageError::GroupStateError(s) => map_group_state("process message", s),
        ProcessMessageError::IncompatibleWireFormat => {
            MlsError::UnexpectedMessage("plaintext handshake message (only ciphertext accepted)")
        }
        other => MlsError::protocol("process message", format!("{other:?}")),
    }
}

fn to_bytes(op: &'static str, m: &MlsMessageOut) -> Result<Vec<u8>, MlsError> {
    m.to_bytes().map_err(|e| MlsError::protocol(op, e))
}

impl Group {
    fn provider(&self) -> &OpenMlsRustCrypto {
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

    fn verify_leaf(
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
    fn verify_sender(
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

    /// Moderator: stages a commit adding the members of these serialized key
    /// packages. Each key package's credential binding is verified first; the
    /// first that fails refuses the whole call with
    /// [`MlsError::CredentialRejected`] naming the member. A SPIFFE ID already
    /// in the group (or twice in the batch) is refused with
    /// [`MlsError::AlreadyMember`]. Send `commit` to the current members and
    /// `welcome` to the new ones, then [`merge_pending_commit`](Self::merge_pending_commit).
    pub fn add_members<K: AsRef<[u8]>>(&mut self, key_packages: &[K]) -> Result<Commit, MlsError> {
        let mut kps = Vec::with_capacity(key_packages.len());
        let mut ids = self.members();
        for raw in key_packages {
            let kp_in = decode_untrusted("key package", || {
                KeyPackageIn::tls_deserialize_exact(raw.as_ref())
            })?;
            let kp = kp_in
                .validate(self.provider().crypto(), ProtocolVersion::Mls10)
                .map_err(|e| MlsError::Malformed(format!("key package: {e}")))?;
            if kp.ciphersuite() != CIPHERSUITE {
                return Err(MlsError::Malformed(format!(
                    "key package for ciphersuite {:?}",
                    kp.ciphersuite()
                )));
            }
            let leaf = kp.leaf_node();
            let id = self.verify_leaf(leaf.credential(), leaf.signature_key().as_slice())?;
            if ids.contains(&id) {
                return Err(MlsError::AlreadyMember(id));
            }
            ids.push(id);
            kps.push(kp);
        }
        let provider = &*self.me.inner.provider;
        let (commit, welcome, _) = self
            .group
            .add_members(provider, &self.me.inner.signer, &kps)
            .map_err(|e| match e {
                AddMembersError::GroupStateError(s) => map_group_state("add members", s),
                other => MlsError::protocol("add members", format!("{other:?}")),
            })?;
        Ok(Commit {
            commit: to_bytes("commit encoding", &commit)?,
            welcome: Some(to_bytes("welcome encoding", &welcome)?),
        })
    }

    /// Moderator: stages a commit removing these members (every leaf whose
    /// credential carries one of these SPIFFE IDs). An ID not in the group is
    /// [`MlsError::UnknownMember`].
    pub fn remove_members(&mut self, ids: &[SpiffeId]) -> Result<Commit, MlsError> {
        let mut leaves = Vec::new();
        for id in ids {
            let before = leaves.len();
            for m in self.group.members() {
                let claimed = credential_identity(&m.credential)
                    .ok()
                    .and_then(|c| claimed_spiffe_id(&c).ok());
                if claimed.as_deref() == Some(id.as_str()) {
                    leaves.push(m.index);
                }
            }
            if leaves.len() == before {
                return Err(MlsError::UnknownMember(id.clone()));
            }
        }
        let provider = &*self.me.inner.provider;
        let (commit, welcome, _) = self
            .group
            .remove_members(provider, &self.me.inner.signer, &leaves)
            .map_err(|e| match e {
                RemoveMembersError::GroupStateError(s) => map_group_state("remove members", s),
                other => MlsError::protocol("remove members", format!("{other:?}")),
            })?;
        Ok(Commit {
            commit: to_bytes("commit encoding", &commit)?,
            welcome: welcome
                .map(|w| to_bytes("welcome encoding", &w))
                .transpose()?,
        })
    }

    /// Applies this member's own pending commit (after sending it). Advances
    /// the epoch; after a [`rebind`](Self::rebind) switches to the new key.
    pub fn merge_pending_commit(&mut self) -> Result<(), MlsError> {
        let provider = &*self.me.inner.provider;
        self.group
            .merge_pending_commit(provider)
            .map_err(|e| match e {
                MergePendingCommitError::MlsGroupStateError(s) => map_group_state("merge", s),
                other => MlsError::protocol("merge pending commit", format!("{other:?}")),
            })?;
        if let Some(new_me) = self.pending_me.take() {
            self.me = new_me;
        }
        Ok(())
    }

    /// Drops this member's own pending commit (e.g. the channel refused it).
    pub fn clear_pending_commit(&mut self) -> Result<(), MlsError> {
        let provider = &*self.me.inner.provider;
        self.group
            .clear_pending_commit(provider.storage())
            .map_err(|e| MlsError::protocol("clear pending commit", format!("{e:?}")))?;
        self.pending_me = None;
        Ok(())
    }

    /// Rebinds this member to a rotated X.509-SVID (same SPIFFE ID): a new MLS
    /// signature key and credential, committed as a self-update with a new
    /// signer. Send the commit, then [`merge_pending_commit`](Self::merge_pending_commit).
    pub fn rebind(&mut self, svid: &Identity) -> Result<Commit, MlsError> {
        let new_me = self.me.rotate(svid)?;
        let provider = &*self.me.inner.provider;
        let bundle = self
            .group
            .self_update_with_new_signer(
                provider,
                &self.me.inner.signer,
                NewSignerBundle {
                    signer: &new_me.inner.signer,
                    credential_with_key: new_me.inner.credential.clone(),
                },
                LeafNodeParameters::builder()
                    .with_credential_with_key(new_me.inner.credential.clone())
                    .build(),
            )
            .map_err(|e| match e {
                SelfUpdateError::GroupStateError(s) => map_group_state("rebind", s),
                other => MlsError::protocol("rebind", format!("{other:?}")),
            })?;
        let commit = to_bytes("commit encoding", bundle.commit())?;
        self.pending_me = Some(new_me);
        Ok(Commit {
            commit,
            welcome: None,
        })
    }

    /// Encrypts an application message for the group.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, MlsError> {
        let provider = &*self.me.inner.provider;
        let msg = self
            .group
            .create_message(provider, &self.me.inner.signer, plaintext)
            .map_err(|e| match e {
                CreateMessageError::GroupStateError(s) => map_group_state("encrypt", s),
                other => MlsError::protocol("encrypt", format!("{other:?}")),
            })?;
        to_bytes("message encoding", &msg)
    }

    /// Decrypts an application message and verifies its sender's SPIFFE-bound
    /// credential. A commit here is [`MlsError::UnexpectedMessage`] (and is not
    /// applied): use [`process_commit`](Self::process_commit) or
    /// [`process`](Self::process).
    pub fn decrypt(&mut self, bytes: &[u8]) -> Result<Decrypted, MlsError> {
        match self.process_inner(bytes, Some(ContentType::Application))? {
            Incoming::Application(d) => Ok(d),
            Incoming::Commit(_) => Err(MlsError::UnexpectedMessage("commit given to decrypt")),
        }
    }

    /// Processes a commit from another member: verifies the credentials of
    /// members it adds or updates, then merges it.
    pub fn process_commit(&mut self, bytes: &[u8]) -> Result<CommitInfo, MlsError> {
        match self.process_inner(bytes, Some(ContentType::Commit))? {
            Incoming::Commit(c) => Ok(c),
            Incoming::Application(_) => Err(MlsError::UnexpectedMessage(
                "application message given to process_commit",
            )),
        }
    }

    /// Processes any group message: an application message is decrypted, a
    /// commit is verified and merged.
    pub fn process(&mut self, bytes: &[u8]) -> Result<Incoming, MlsError> {
        self.process_inner(bytes, None)
    }

    /// `expect`: refuse (without consuming any key) a message of another
    /// content type; the content type is in the clear in a PrivateMessage.
    fn process_inner(
        &mut self,
        bytes: &[u8],
        expect: Option<ContentType>,
    ) -> Result<Incoming, MlsError> {
        let pm: ProtocolMessage = match parse_message(bytes)? {
            MlsMessageBodyIn::PrivateMessage(m) => m.into(),
            MlsMessageBodyIn::PublicMessage(m) => m.into(),
            _ => {
                return Err(MlsError::UnexpectedMessage(
                    "not a group message (welcome, key package or group info)",
                ));
            }
        };
        if !self.group.is_active() {
            return Err(MlsError::Evicted);
        }
        if let Some(want) = expect
            && pm.content_type() != want
        {
            return Err(MlsError::UnexpectedMessage(match want {
                ContentType::Application => "not an application message",
                _ => "not a commit",
            }));
        }
        let provider = &*self.me.inner.provider;
        let processed = self
            .group
            .process_message(provider, pm)
            .map_err(map_process)?;
        let sender_idx = match processed.sender() {
            Sender::Member(idx) => *idx,
            _ => {
                return Err(MlsError::UnexpectedMessage(
                    "message from a non-member sender",
                ));
            }
        };
        let sender_id = self.verify_sender(sender_idx, processed.credential())?;
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                Ok(Incoming::Application(Decrypted {
                    sender: sender_id,
                    plaintext: app.into_bytes(),
                }))
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                let info = self.check_commit(sender_idx, sender_id, &staged)?;
                let provider = &*self.me.inner.provider;
                self.group
                    .merge_staged_commit(provider, *staged)
                    .map_err(|e| MlsError::protocol("merge commit", format!("{e:?}")))?;
                Ok(Incoming::Commit(CommitInfo {
                    epoch: self.group.epoch().as_u64(),
                    ..info
                }))
            }
            ProcessedMessageContent::ProposalMessage(_)
            | ProcessedMessageContent::ExternalJoinProposalMessage(_) => Err(
                MlsError::UnsupportedProposal("standalone proposals are not accepted"),
            ),
        }
    }

    /// Verifies every credential a staged commit brings in and summarizes it.
    fn check_commit(
        &mut self,
        sender_idx: LeafNodeIndex,
        sender: SpiffeId,
        staged: &StagedCommit,
    ) -> Result<CommitInfo, MlsError> {
        let mut info = CommitInfo {
            sender,
            epoch: 0,
            added: Vec::new(),
            removed: Vec::new(),
            updated: Vec::new(),
            self_removed: staged.self_removed(),
        };
        // Collect first: verification needs `&mut self`.
        // (report as: Some(true) added, Some(false) updated, None verify only)
        let mut to_verify: Vec<(Option<bool>, Credential, Vec<u8>)> = Vec::new();
        for q in staged.queued_proposals() {
            match q.proposal() {
                Proposal::Add(a) => {
                    let leaf = a.key_package().leaf_node();
                    to_verify.push((
                        Some(true),
                        leaf.credential().clone(),
                        leaf.signature_key().as_slice().to_vec(),
                    ));
                }
                Proposal::Update(u) => {
                    let leaf = u.leaf_node();
                    to_verify.push((
                        Some(false),
                        leaf.credential().clone(),
                        leaf.signature_key().as_slice().to_vec(),
                    ));
                }
                Proposal::Remove(r) => {
                    if let Some(id) = self.member_id_at(r.removed()) {
                        info.removed.push(id);
                    }
                }
                Proposal::SelfRemove => {
                    if let Sender::Member(idx) = q.sender()
                        && let Some(id) = self.member_id_at(*idx)
                    {
                        info.removed.push(id);
                    }
                }
                _ => {
                    return Err(MlsError::UnsupportedProposal(
                        "only add, remove and update proposals are accepted",
                    ));
                }
            }
        }
        // The committer's new leaf (a path is in most commits). Report it as
        // updated only if its credential or signature key changed (rebind).
        if let Some(leaf) = staged.update_path_leaf_node() {
            let unchanged = self.group.member_at(sender_idx).is_some_and(|m| {
                m.credential == *leaf.credential()
                    && m.signature_key == leaf.signature_key().as_slice()
            });
            to_verify.push((
                (!unchanged).then_some(false),
                leaf.credential().clone(),
                leaf.signature_key().as_slice().to_vec(),
            ));
        }
        for (added, cred, key) in to_verify {
            let id = self.verify_leaf(&cred, &key)?;
            match added {
                Some(true) => info.added.push(id),
                Some(false) if !info.updated.contains(&id) => info.updated.push(id),
                _ => {}
            }
        }
        Ok(info)
    }

    fn member_id_at(&self, idx: LeafNodeIndex) -> Option<SpiffeId> {
        let m = self.group.member_at(idx)?;
        let cred = credential_identity(&m.credential).ok()?;
        SpiffeId::parse(&claimed_spiffe_id(&cred).ok()?).ok()
    }
}
