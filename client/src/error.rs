//! [`ClientError`]: everything the SDK's client layer can fail with.

use std::net::SocketAddr;
use std::time::Duration;

use slim_wire::ErrorCode;

/// Everything the SDK can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    /// The node's host name did not resolve (distinct from "cannot connect").
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("node rejected the connection ({}): {reason}", code.as_str())]
    Rejected { code: ErrorCode, reason: String },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("client is closed")]
    Closed,
    #[error("subscription to {name} failed ({}): {reason}", code.as_str())]
    Subscribe {
        name: String,
        code: ErrorCode,
        reason: String,
    },
    #[error("wire: {0}")]
    Wire(#[from] slim_wire::WireError),
    #[error("invalid name: {0}")]
    Name(#[from] slim_wire::InvalidName),
    #[error("protocol: {0}")]
    Protocol(String),
    /// Not connected to the node, and the client's `DisconnectPolicy` says
    /// to fail rather than wait (or the wait for room ran out).
    #[error("not connected to the node: {reason}")]
    Disconnected { reason: String },
}
