//! The constants and plain result types of the group API (commits, decrypted messages).

use openmls::prelude::Ciphersuite;
use slim_auth::SpiffeId;

/// The one ciphersuite SLIM uses: X25519, AES-128-GCM, SHA-256, Ed25519.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// How many past epochs a member keeps secrets for, so that application
/// messages sent just before a commit and delivered just after it still
/// decrypt. Replays in those epochs are still refused (consumed keys are
/// deleted per epoch).
pub const MAX_PAST_EPOCHS: usize = 2;
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
