//! Membership commits of a [`Group`]: adding, removing, rebinding, merging, and checking incoming commits.

use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::*;
use slim_auth::{Identity, SpiffeId};

use super::codec::{credential_identity, decode_untrusted, map_group_state, to_bytes};
use super::state::Group;
use super::types::{CIPHERSUITE, Commit, CommitInfo};
use crate::MlsError;
use crate::credential::claimed_spiffe_id;

impl Group {
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

    /// Verifies every credential a staged commit brings in and summarizes it.
    pub(super) fn check_commit(
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
