//! What a client connection's task, its reader and writer tasks and the
//! rest of the node share about it, and the task's control messages.

use std::sync::Arc;

use slim_framed::queue::{Queue, Refused};
use slim_wire::{ErrorCode, Name, WireError};
use tokio::sync::{Notify, oneshot};
use tracing::info;

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

/// Closes `conn` with `code`, telling the peer `reason`.
pub(crate) fn close_conn(conn: &quinn::Connection, code: ErrorCode, reason: &str) {
    conn.close(
        quinn::VarInt::from_u32(u32::from(code.0)),
        reason.as_bytes(),
    );
}

/// How many control requests a connection's task holds unanswered. Its one
/// reader awaits each (un)subscribe's answer before reading on, so it never
/// has more than one in flight; the rest of the room is for policy-change
/// wake-ups, which are sent without waiting (see [`ConnShared::policy_changed`]).
pub(crate) const CONTROL_CAPACITY: usize = 8;

/// What the reader and writer of one connection share.
pub struct ConnShared {
    pub id: ConnId,
    pub name: Name,
    /// Who the peer authenticated as (certificate, JWT-SVID or shared secret).
    pub spiffe_id: Option<slim_auth::SpiffeId>,
    pub outbox: Arc<Outbox>,
    pub conn: quinn::Connection,
    /// The connection task's control channel (bounded).
    pub(crate) ctl: Queue<Ctl>,
    /// Wakes the connection task for a policy change that found its control
    /// channel full.
    pub(crate) policy_stale: Notify,
}

impl ConnShared {
    /// Closes the connection, telling the client why. Closing the QUIC
    /// connection is all the task would do with it: its reader then ends,
    /// and the task removes every trace of the connection. Done here rather
    /// than through the control channel so that no close can wait for (or
    /// be lost to) a full channel.
    pub(crate) fn close(&self, code: ErrorCode, reason: &str) {
        info!(conn = self.id, name = %self.name, %reason, "closing connection");
        close_conn(&self.conn, code, reason);
    }

    /// Tells the connection task the authorization policy was replaced.
    /// Never waits: the node tells every connection in a loop. A change is
    /// idempotent (the task re-checks against whatever policy is current
    /// when it runs), so when the channel is full the `Notify` fallback is
    /// enough: it keeps one wake-up permit however many changes arrive,
    /// and the task re-checks once for all of them.
    pub(crate) fn policy_changed(&self) {
        match self.ctl.push(Ctl::PolicyChanged) {
            Ok(()) => {}
            Err(Refused::Full(_)) => self.policy_stale.notify_one(),
            // The task has ended: there is nothing left to re-check.
            Err(Refused::Closed) => {}
        }
    }

    /// Asks the connection task to (un)subscribe and waits for its answer:
    /// whether the subscription was new (subscribe) or existed (unsubscribe).
    pub(crate) async fn subscription(&self, name: &str, subscribe: bool) -> Result<bool, String> {
        let (reply, answer) = oneshot::channel();
        let name = name.into();
        let req = if subscribe {
            Ctl::Subscribe { name, reply }
        } else {
            Ctl::Unsubscribe { name, reply }
        };
        self.ctl
            .push_wait(req)
            .await
            .map_err(|_| "connection task ended".to_owned())?;
        answer
            .await
            .map_err(|_| "connection task ended before answering".to_owned())?
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

/// What a connection task is told. Publishes never come here: they are
/// routed by the reader task. Closes neither: [`ConnShared::close`] closes
/// the QUIC connection directly.
pub(crate) enum Ctl {
    /// A client subscribe (already authorized by the reader). The reader
    /// awaits the answer before reading on, so a publish after it sees the
    /// subscription. Answers whether the subscription is new.
    Subscribe {
        name: Box<str>,
        reply: oneshot::Sender<Result<bool, String>>,
    },
    /// Answers whether the connection was subscribed.
    Unsubscribe {
        name: Box<str>,
        reply: oneshot::Sender<Result<bool, String>>,
    },
    /// The authorization policy was replaced: an identity no longer allowed
    /// its name is disconnected, subscriptions no longer allowed are removed
    /// (the client is told which, with the reason).
    PolicyChanged,
    /// Fault injection for supervision tests: makes the task panic.
    #[cfg(feature = "test-util")]
    InjectPanic,
    /// Test only: the task says it holds (`held`), then takes no further
    /// request until `until` fires or its sender is dropped (to fill its
    /// control channel on purpose).
    #[cfg(feature = "test-util")]
    Hold {
        held: oneshot::Sender<()>,
        until: oneshot::Receiver<()>,
    },
    /// Test only: does nothing (fills the channel behind a `Hold`).
    #[cfg(feature = "test-util")]
    Nothing,
}
