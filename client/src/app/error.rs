//! [`SlimError`]: the front door's one error type, and how the lower
//! layers' errors fold into it.

use slim_wire::ErrorCode;

use crate::error::ClientError;
use crate::session::SessionError;
use crate::session::channel::ChannelError;
use crate::session::rpc::RpcError;

/// Everything the front door can fail with. Each variant carries the reason
/// as text a person can act on; the Python package maps each to its own
/// exception class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlimError {
    /// The node's name did not resolve, the node could not be reached, or
    /// the TLS handshake failed.
    #[error("{0}")]
    Connect(String),
    /// The identity could not be obtained or used (Workload API, files, JWT).
    #[error("identity: {0}")]
    Identity(String),
    /// Refused by the node's authorization policy (register, subscribe,
    /// publish); the reason names who was refused what.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The moderator refused the join request.
    #[error("join refused: {0}")]
    JoinRefused(String),
    /// Nobody subscribes to or serves the name.
    #[error("no route: {0}")]
    NoRoute(String),
    #[error("timed out: {0}")]
    Timeout(String),
    /// The app or the session is closed (or this member was removed).
    #[error("closed: {0}")]
    Closed(String),
    /// End-to-end encryption failed.
    #[error("MLS: {0}")]
    Mls(String),
    /// An operation of another role (e.g. `invite` on a member).
    #[error("{op} is not available to a {role} ({kind} session)")]
    WrongRole {
        op: &'static str,
        role: &'static str,
        kind: &'static str,
    },
    /// The RPC responder failed the call.
    #[error("remote error: {0}")]
    Remote(String),
    /// A reliable message was not acknowledged after every retry.
    #[error("delivery failed: {0}")]
    DeliveryFailed(String),
    #[error("invalid name: {0}")]
    InvalidName(String),
    /// Invalid arguments or configuration.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// Something the peer or node sent could not be understood.
    #[error("protocol: {0}")]
    Protocol(String),
}

impl SlimError {
    /// A short machine-readable kind (used for exception mapping and logs).
    pub fn kind(&self) -> &'static str {
        match self {
            SlimError::Connect(_) => "connect",
            SlimError::Identity(_) => "identity",
            SlimError::PermissionDenied(_) => "permission_denied",
            SlimError::JoinRefused(_) => "join_refused",
            SlimError::NoRoute(_) => "no_route",
            SlimError::Timeout(_) => "timeout",
            SlimError::Closed(_) => "closed",
            SlimError::Mls(_) => "mls",
            SlimError::WrongRole { .. } => "wrong_role",
            SlimError::Remote(_) => "remote",
            SlimError::DeliveryFailed(_) => "delivery_failed",
            SlimError::InvalidName(_) => "invalid_name",
            SlimError::Invalid(_) => "invalid",
            SlimError::Protocol(_) => "protocol",
        }
    }

    pub(super) fn from_code(code: ErrorCode, reason: String) -> SlimError {
        match code {
            ErrorCode::UNAUTHORIZED => SlimError::PermissionDenied(reason),
            ErrorCode::NO_ROUTE => SlimError::NoRoute(reason),
            ErrorCode::BAD_NAME => SlimError::InvalidName(reason),
            ErrorCode::SHUTTING_DOWN => SlimError::Closed(reason),
            ErrorCode::CONNECTION_LOST => SlimError::Connect(reason),
            c => SlimError::Protocol(format!("{} ({})", reason, c.as_str())),
        }
    }
}

impl From<ClientError> for SlimError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Connect { .. }
            | ClientError::Tls(_)
            | ClientError::Resolve { .. }
            | ClientError::Disconnected { .. } => SlimError::Connect(e.to_string()),
            ClientError::Rejected { code, reason } => match code {
                ErrorCode::UNAUTHORIZED => SlimError::PermissionDenied(reason),
                _ => SlimError::Connect(format!("the node rejected the connection: {reason}")),
            },
            ClientError::Timeout(d) => SlimError::Timeout(format!("no answer within {d:?}")),
            ClientError::Closed => SlimError::Closed("the app is closed".into()),
            ClientError::Subscribe { name, code, reason } => match code {
                ErrorCode::UNAUTHORIZED => {
                    SlimError::PermissionDenied(format!("subscribe to {name}: {reason}"))
                }
                ErrorCode::SHUTTING_DOWN => SlimError::Closed(reason),
                _ => SlimError::Protocol(format!("subscribe to {name}: {reason}")),
            },
            ClientError::Name(n) => SlimError::InvalidName(n.to_string()),
            ClientError::Wire(w) => SlimError::Protocol(w.to_string()),
            ClientError::Protocol(p) => SlimError::Protocol(p),
        }
    }
}

impl From<SessionError> for SlimError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Closed => SlimError::Closed("the session is closed".into()),
            SessionError::NoResponder { name, reason } => {
                SlimError::NoRoute(format!("nobody serves {name}: {reason}"))
            }
            SessionError::Denied(reason) => SlimError::PermissionDenied(reason),
            SessionError::Unreachable { code, reason } => match ErrorCode(code) {
                ErrorCode::UNAUTHORIZED => SlimError::PermissionDenied(reason),
                _ => SlimError::NoRoute(format!("the peer is unreachable: {reason}")),
            },
            SessionError::Refused(r) => SlimError::Closed(format!("refused by the peer: {r}")),
            SessionError::Timeout(d) => SlimError::Timeout(format!("no answer within {d:?}")),
            SessionError::CloseIncomplete { .. } => SlimError::Timeout(e.to_string()),
            SessionError::IdleTimeout(d) => {
                SlimError::Timeout(format!("nothing heard from the peer for {d:?}"))
            }
            SessionError::Mls(m) => SlimError::Mls(m),
            SessionError::PayloadTooLarge { .. } => SlimError::Invalid(e.to_string()),
            SessionError::Client(c) => SlimError::Closed(format!("connection: {c}")),
            other => SlimError::Protocol(other.to_string()),
        }
    }
}

impl From<ChannelError> for SlimError {
    fn from(e: ChannelError) -> Self {
        match e {
            ChannelError::Session(s) => s.into(),
            ChannelError::Mls(m) => SlimError::Mls(m.to_string()),
            ChannelError::JoinRefused { reason } => SlimError::JoinRefused(reason),
            ChannelError::Denied { reason } => SlimError::PermissionDenied(reason),
            ChannelError::JoinFailed { reason } => SlimError::Timeout(format!("join: {reason}")),
            ChannelError::Closed => SlimError::Closed("the channel is closed".into()),
            ChannelError::Removed => SlimError::Closed("removed from the channel".into()),
            ChannelError::NotJoined => SlimError::Closed("not a member of the channel".into()),
            ChannelError::Admission(a) => SlimError::Invalid(format!("admission pattern: {a}")),
            e @ (ChannelError::NotAMember(_) | ChannelError::AlreadyMember(_)) => {
                SlimError::Invalid(e.to_string())
            }
            other => SlimError::Protocol(other.to_string()),
        }
    }
}

impl From<RpcError> for SlimError {
    fn from(e: RpcError) -> Self {
        match e {
            RpcError::Timeout(d) => SlimError::Timeout(format!("deadline of {d:?} expired")),
            RpcError::NoResponder { name } => SlimError::NoRoute(format!("nobody serves {name}")),
            RpcError::Remote(r) => SlimError::Remote(r),
            RpcError::NoResponse => {
                SlimError::Remote("the responder ended the call without a response".into())
            }
            RpcError::DeliveryFailed => {
                SlimError::DeliveryFailed("the request was not acknowledged".into())
            }
            RpcError::Session(s) => s.into(),
            RpcError::Malformed(m) => SlimError::Protocol(m),
        }
    }
}

impl From<slim_wire::InvalidName> for SlimError {
    fn from(e: slim_wire::InvalidName) -> Self {
        SlimError::InvalidName(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_map_codes() {
        assert_eq!(
            SlimError::from_code(ErrorCode::UNAUTHORIZED, "x".into()).kind(),
            "permission_denied"
        );
        assert_eq!(
            SlimError::from_code(ErrorCode::NO_ROUTE, "x".into()).kind(),
            "no_route"
        );
        let e: SlimError = ClientError::Subscribe {
            name: "a/b/c".into(),
            code: ErrorCode::UNAUTHORIZED,
            reason: "spiffe://td/x may not subscribe to a/b/c".into(),
        }
        .into();
        assert!(matches!(&e, SlimError::PermissionDenied(r) if r.contains("may not subscribe")));
        let e: SlimError = ChannelError::JoinRefused {
            reason: "not allowed".into(),
        }
        .into();
        assert_eq!(e.kind(), "join_refused");
    }
}
