//! The one error type of the MLS layer.

use slim_auth::{SpiffeId, SvidError};

/// Errors of the MLS layer. Every failure is typed; nothing is reported as a
/// success that did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MlsError {
    /// The X.509-SVID private key could not be used for the binding signature
    /// (not PKCS#8 ECDSA P-256).
    #[error("unusable X.509-SVID private key: {0}")]
    SvidKey(String),
    /// The identity has no certificate chain.
    #[error("the identity has no X.509-SVID certificate")]
    NoCertificate,
    /// A credential could not be decoded (not a SLIM SPIFFE-bound credential).
    #[error("malformed MLS credential: {0}")]
    MalformedCredential(String),
    /// The SVID carried in a credential did not verify.
    #[error("the X.509-SVID in the MLS credential does not verify: {0}")]
    Svid(#[from] SvidError),
    /// The credential claims a SPIFFE ID other than the one in its SVID.
    #[error("credential claims {claimed:?} but its X.509-SVID is for {svid}")]
    IdMismatch {
        /// What the credential claims.
        claimed: String,
        /// What the verified SVID says.
        svid: SpiffeId,
    },
    /// The binding of the MLS signature key to the SVID key does not verify.
    #[error("the binding signature over the MLS signature key does not verify")]
    BadBinding,
    /// A member's credential was refused; `member` is the SPIFFE ID it claims
    /// (or a placeholder if it could not even be decoded).
    #[error("credential of {member} refused: {reason}")]
    CredentialRejected {
        /// The SPIFFE ID the credential claims.
        member: String,
        /// Why it was refused.
        #[source]
        reason: Box<MlsError>,
    },
    /// A message from a past epoch whose sender's credential was never
    /// verified here (or has expired) and whose leaf has since changed hands.
    #[error("the sender's leaf has changed since the message's epoch")]
    StaleSender,
    /// Bytes that should hold an MLS structure could not be decoded.
    #[error("malformed MLS message: {0}")]
    Malformed(String),
    /// The message is of a kind this call does not handle (e.g. a commit given
    /// to `decrypt`, or a plaintext handshake message).
    #[error("unexpected MLS message: {0}")]
    UnexpectedMessage(&'static str),
    /// The Welcome names none of this identity's key packages (not for us, or
    /// already used).
    #[error("the Welcome is for none of this identity's key packages")]
    WelcomeNotForUs,
    /// The message belongs to another group.
    #[error("the message is for another MLS group")]
    WrongGroup,
    /// The message is from another epoch (e.g. sent after we were removed, or
    /// before we processed a commit).
    #[error("the message is from another epoch than the group's")]
    WrongEpoch,
    /// This member was removed from the group; it can no longer decrypt or send.
    #[error("this member was removed from the group")]
    Evicted,
    /// A ciphertext was already decrypted (its key was consumed) or is too old.
    #[error("replayed or too old application message")]
    Replay,
    /// The sender is more generations ahead than the receiver will ratchet
    /// forward (openmls' maximum forward distance, 1000): too many of its
    /// messages were lost in between.
    #[error("message is too far ahead of the sender's ratchet (too many messages missed)")]
    TooFarAhead,
    /// Decryption or authentication of the ciphertext failed (tampered or
    /// forged message).
    #[error("ciphertext failed authentication (tampered or forged)")]
    Tampered,
    /// The message was sent by this member; MLS cannot decrypt own messages.
    #[error("cannot decrypt a message this member sent")]
    OwnMessage,
    /// The SPIFFE ID is already a member (or appears twice in one add).
    #[error("{0} is already a member of the group")]
    AlreadyMember(SpiffeId),
    /// A rebind would change the member's SPIFFE ID.
    #[error("rebind would change the identity from {from} to {to}")]
    IdentityChanged {
        /// The current SPIFFE ID.
        from: SpiffeId,
        /// The SPIFFE ID of the new SVID.
        to: SpiffeId,
    },
    /// No member of the group has this SPIFFE ID.
    #[error("{0} is not a member of the group")]
    UnknownMember(SpiffeId),
    /// A commit is pending: merge or clear it first.
    #[error("a commit is pending; merge or clear it first")]
    PendingCommit,
    /// The commit carries a proposal this layer does not accept.
    #[error("unsupported proposal in commit: {0}")]
    UnsupportedProposal(&'static str),
    /// Any other openmls failure, with its message.
    #[error("MLS protocol error in {op}: {msg}")]
    Protocol {
        /// The operation that failed.
        op: &'static str,
        /// openmls' description.
        msg: String,
    },
}

impl MlsError {
    pub(crate) fn protocol(op: &'static str, e: impl std::fmt::Display) -> Self {
        MlsError::Protocol {
            op,
            msg: e.to_string(),
        }
    }
}
