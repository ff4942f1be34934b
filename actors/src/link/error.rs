//! Why a link attempt or a live link ended.

use slim_wire::WireError;

use crate::conn::shared::ConnError;

/// Why a link attempt or a live link ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    /// The peer's host name did not resolve (distinct from `Connect`).
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("handshake timed out")]
    Timeout,
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("peer not authorized: {0}")]
    Unauthorized(String),
    #[error("peer answered as node {got:?}, expected {expected:?}")]
    NodeIdMismatch { expected: String, got: String },
    #[error("another link to this peer is in use")]
    Duplicate,
    #[error("refused by peer ({code}): {reason}")]
    Refused { code: &'static str, reason: String },
    #[error("wire: {0}")]
    Wire(#[from] WireError),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("connection lost: {0}")]
    Lost(String),
    #[error("no pong within the link timeout")]
    Liveness,
}

impl LinkError {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            LinkError::Resolve { .. } => "resolve",
            LinkError::Connect { .. } => "connect",
            LinkError::Timeout => "timeout",
            LinkError::Tls(_) => "tls",
            LinkError::Unauthorized(_) => "unauthorized",
            LinkError::NodeIdMismatch { .. } => "node_id_mismatch",
            LinkError::Duplicate => "duplicate",
            LinkError::Refused { .. } => "refused",
            LinkError::Wire(_) => "wire",
            LinkError::Protocol(_) => "protocol",
            LinkError::Lost(_) => "lost",
            LinkError::Liveness => "liveness",
        }
    }
}

impl From<ConnError> for LinkError {
    fn from(e: ConnError) -> Self {
        match e {
            ConnError::Wire(w) => LinkError::Wire(w),
            other => LinkError::Lost(other.to_string()),
        }
    }
}
