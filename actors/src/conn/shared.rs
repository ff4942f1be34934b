//! What a client connection's actor, its reader and writer tasks and the
//! rest of the node share about it, and the actor's mailbox type.

use std::sync::Arc;

use ractor::ActorRef;
use slim_wire::{ErrorCode, Name, WireError};

use crate::outbox::Outbox;
use crate::registry::ConnId;

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("wire: {0}")]
    Wire(#[from] WireError),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("connection lost: {0}")]
    Lost(String),
    #[error("handshake timed out")]
    Timeout,
    #[error("refused: {0}")]
    Refused(String),
}

impl ConnError {
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            ConnError::Wire(e) => e.code(),
            ConnError::Protocol(_) => ErrorCode::PROTOCOL,
            ConnError::Refused(_) => ErrorCode::UNAUTHORIZED,
            _ => ErrorCode::INTERNAL,
        }
    }
}

/// What the reader and writer of one connection share.
pub struct ConnShared {
    pub id: ConnId,
    pub name: Name,
    /// Who the peer authenticated as (certificate, JWT-SVID or shared secret).
    pub spiffe_id: Option<slim_auth::SpiffeId>,
    pub outbox: Arc<Outbox>,
    pub conn: quinn::Connection,
    pub actor: std::sync::OnceLock<ActorRef<ConnMsg>>,
}

impl ConnShared {
    /// The peer's SPIFFE ID as a string (stamped on every delivery it sends).
    pub fn identity(&self) -> Option<&str> {
        self.spiffe_id.as_ref().map(slim_auth::SpiffeId::as_str)
    }
}

pub enum ConnMsg {
    ReaderEnded(Result<(), String>),
    WriterEnded(Result<(), String>),
    /// Fault injection for supervision tests: makes the actor's handler panic.
    InjectPanic,
}
