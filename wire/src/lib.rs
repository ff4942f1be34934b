//! The SLIM wire protocol: [`Name`]s, the [`Frame`] set and a length-prefixed
//! MessagePack [`codec`]. No I/O and no async runtime: callers hand bytes in and
//! get frames out, so the same code serves the node, the SDK, tests and fuzzers.
//!
//! Framing: `len: u32 BE | kind: u8 | body (MessagePack array)`; see [`frame`] for
//! each body's layout. Limits ([`Limits`]) are checked against the declared
//! length before any allocation for the body.
#![forbid(unsafe_code)]

pub mod codec;
pub mod frame;
mod mp;
pub mod name;
pub mod view;

pub use codec::{
    DEFAULT_MAX_FRAME, HEADER_LEN, Limits, NodeIds, check, coalesce, coalesce_from, decode,
    decode_body, encode, merge_adjacent,
};
pub use frame::*;
pub use name::{InvalidName, MAX_COMPONENT_LEN, Name};
pub use view::{
    DeliverView, ForwardMemo, ForwardView, NodeIter, NodeList, PublishView, RawDeliverView,
    RawPublishView, checked_name, checked_str, deliver_view, forward_view, publish_view,
    raw_deliver_view, raw_publish_view,
};

/// Everything that can go wrong turning bytes into frames or back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("declared frame length {declared} exceeds the limit of {max} bytes")]
    FrameTooLarge { declared: u64, max: u32 },
    #[error("zero-length frame")]
    EmptyFrame,
    #[error("unknown frame kind {0}")]
    UnknownFrameKind(u8),
    #[error("malformed {kind} frame: {reason}")]
    Malformed { kind: &'static str, reason: String },
    #[error("{extra} trailing bytes after {kind} frame body")]
    TrailingBytes { kind: &'static str, extra: usize },
    #[error("cannot encode frame: {0}")]
    Encode(String),
    #[error("stream ended inside a frame ({buffered} bytes of it received)")]
    Truncated { buffered: usize },
}

impl WireError {
    /// The error code a node reports to the peer for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            WireError::FrameTooLarge { .. } => ErrorCode::TOO_LARGE,
            WireError::UnknownFrameKind(_) => ErrorCode::UNKNOWN_FRAME,
            WireError::Encode(_) => ErrorCode::INTERNAL,
            _ => ErrorCode::MALFORMED,
        }
    }

    /// A short label for metrics.
    pub fn reason_label(&self) -> &'static str {
        match self {
            WireError::FrameTooLarge { .. } => "too_large",
            WireError::EmptyFrame => "empty",
            WireError::UnknownFrameKind(_) => "unknown_frame",
            WireError::Malformed { .. } => "malformed",
            WireError::TrailingBytes { .. } => "trailing_bytes",
            WireError::Encode(_) => "encode",
            WireError::Truncated { .. } => "truncated",
        }
    }
}
