//! The channel layer's error type, [`ChannelError`], and its metric labels.

use slim_mls::MlsError;

use crate::session::SessionError;

/// Errors of the channel layer.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("MLS: {0}")]
    Mls(#[from] MlsError),
    #[error("malformed channel message: {0}")]
    Malformed(String),
    #[error("invalid admission pattern: {0}")]
    Admission(String),
    #[error("{0} is not a member of the channel")]
    NotAMember(String),
    #[error("{0} is already a member or being admitted")]
    AlreadyMember(String),
    #[error("{name} is {roster} in the roster but its message is signed by {signed}")]
    SenderMismatch {
        name: String,
        roster: String,
        signed: String,
    },
    #[error("{what} from {from}, which is not the moderator")]
    NotModerator { what: &'static str, from: String },
    #[error("too many pending membership changes ({0})")]
    QueueFull(usize),
    #[error("messages held for a future epoch exceed {0}")]
    HeldOverflow(usize),
    #[error("not a member of the channel (yet)")]
    NotJoined,
    #[error("removed from the channel")]
    Removed,
    #[error("the channel is closed")]
    Closed,
    #[error("join refused: {reason}")]
    JoinRefused { reason: String },
    #[error("join failed: {reason}")]
    JoinFailed { reason: String },
    /// The node's authorization policy refused a publish to the channel.
    #[error("refused by the node's policy: {reason}")]
    Denied { reason: String },
    /// The moderator would not show the roster (or nobody answered).
    #[error("roster query: {reason}")]
    Roster { reason: String },
}

impl ChannelError {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            ChannelError::Session(_) => "session",
            ChannelError::Mls(MlsError::Replay) => "replay",
            ChannelError::Mls(MlsError::Tampered) => "tampered",
            ChannelError::Mls(MlsError::Evicted) => "evicted",
            ChannelError::Mls(MlsError::WrongEpoch) => "wrong_epoch",
            ChannelError::Mls(MlsError::CredentialRejected { .. }) => "credential",
            ChannelError::Mls(_) => "mls",
            ChannelError::Malformed(_) => "malformed",
            ChannelError::Admission(_) => "admission",
            ChannelError::NotAMember(_) => "not_member",
            ChannelError::AlreadyMember(_) => "already_member",
            ChannelError::SenderMismatch { .. } => "sender_mismatch",
            ChannelError::NotModerator { .. } => "not_moderator",
            ChannelError::QueueFull(_) => "queue_full",
            ChannelError::HeldOverflow(_) => "held_overflow",
            ChannelError::NotJoined => "not_joined",
            ChannelError::Removed => "removed",
            ChannelError::Closed => "closed",
            ChannelError::JoinRefused { .. } => "join_refused",
            ChannelError::JoinFailed { .. } => "join_failed",
            ChannelError::Denied { .. } => "denied",
            ChannelError::Roster { .. } => "roster",
        }
    }
}
