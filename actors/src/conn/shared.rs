//! What a client connection's actor, its reader and writer tasks and the
//! rest of the node share about it, and the actor's mailbox type.

use std::sync::Arc;

use ractor::{ActorRef, RpcReplyPort};
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
    /// A frame that began to arrive was not completed in time, or would
    /// have taken the node over its budget of bytes in incomplete frames
    /// (`reason`: `timeout` or `budget`).
    #[error("{detail}")]
    PartialFrame {
        reason: &'static str,
        detail: String,
    },
}

impl ConnError {
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            ConnError::Wire(e) => e.code(),
            ConnError::Protocol(_) | ConnError::PartialFrame { .. } => ErrorCode::PROTOCOL,
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
    /// Asks the connection's actor to close it (closes the QUIC connection
    /// directly if the actor is not running yet or any more).
    pub(crate) fn close(&self, code: ErrorCode, reason: &str) {
        let sent = self.actor.get().is_some_and(|a| {
            a.send_message(ConnMsg::Close {
                code,
                reason: reason.to_owned(),
            })
            .is_ok()
        });
        if !sent {
            self.conn.close(
                quinn::VarInt::from_u32(u32::from(code.0)),
                reason.as_bytes(),
            );
        }
    }

    /// The peer's SPIFFE ID as a string (stamped on every delivery it sends).
    pub fn identity(&self) -> Option<&str> {
        self.spiffe_id.as_ref().map(slim_auth::SpiffeId::as_str)
    }
}

/// What authenticated a client: its end decides when the connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    /// Its X.509-SVID (the TLS client certificate).
    Certificate,
    /// The JWT-SVID in its hello.
    JwtSvid,
}

/// What a connection actor is told. Publishes never come here: they are
/// routed by the reader task.
pub enum ConnMsg {
    /// A client subscribe (already authorized by the reader). The reader
    /// awaits the answer before reading on, so a publish after it sees the
    /// subscription. Answers whether the subscription is new.
    Subscribe {
        name: String,
        reply: RpcReplyPort<Result<bool, String>>,
    },
    /// Answers whether the connection was subscribed.
    Unsubscribe {
        name: String,
        reply: RpcReplyPort<Result<bool, String>>,
    },
    /// Close the connection (its name was taken over, it is a slow consumer
    /// under the disconnect policy, …), telling the client why.
    Close {
        code: ErrorCode,
        reason: String,
    },
    /// The credential the client authenticated with (plus grace) ran out.
    CredentialExpired(Credential),
    /// The authorization policy was replaced: an identity no longer allowed
    /// its name is disconnected, subscriptions no longer allowed are removed
    /// (the client is told which, with the reason).
    PolicyChanged,
    ReaderEnded(Result<(), String>),
    WriterEnded(Result<(), String>),
    /// Fault injection for supervision tests: makes the actor's handler panic.
    #[cfg(feature = "test-util")]
    InjectPanic,
}
