//! The state a [`crate::Client`] shares with its connection driver.

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use slim_wire::{ErrorCode, ErrorFrame, Frame, Limits, Name, codec};
use tokio::sync::{oneshot, watch};

use crate::config::ClientConfig;
use crate::confirm::Confirmations;
use crate::event::ConnState;

pub(crate) type Pending = Mutex<HashMap<u64, oneshot::Sender<Result<(), (ErrorCode, String)>>>>;

/// SDK metric handles; no-ops unless `ClientConfig::metrics` is set.
pub(crate) struct SdkMetrics {
    pub published: metrics::Counter,
    pub received: metrics::Counter,
    pub reconnects: metrics::Counter,
    pub node_errors: metrics::Counter,
    pub publishes_failed: metrics::Counter,
    pub inbound_stalls: metrics::Counter,
}

impl SdkMetrics {
    pub(crate) fn new(on: bool) -> Self {
        if !on {
            return SdkMetrics {
                published: metrics::Counter::noop(),
                received: metrics::Counter::noop(),
                reconnects: metrics::Counter::noop(),
                node_errors: metrics::Counter::noop(),
                publishes_failed: metrics::Counter::noop(),
                inbound_stalls: metrics::Counter::noop(),
            };
        }
        SdkMetrics {
            published: metrics::counter!("slim_client_messages_published_total"),
            received: metrics::counter!("slim_client_messages_received_total"),
            reconnects: metrics::counter!("slim_client_reconnects_total"),
            node_errors: metrics::counter!("slim_client_node_errors_total"),
            publishes_failed: metrics::counter!("slim_client_publishes_failed_total"),
            inbound_stalls: metrics::counter!("slim_client_inbound_stalls_total"),
        }
    }
}

pub(crate) struct Shared {
    pub cfg: ClientConfig,
    pub metrics: SdkMetrics,
    pub subs: Mutex<HashSet<Name>>,
    pub pending: Pending,
    pub next_id: AtomicU64,
    pub state: watch::Sender<ConnState>,
    pub identity_seen: Mutex<Option<String>>,
    /// What the node's certificate said at the last handshake.
    pub node_seen: Mutex<Option<crate::NodeIdentity>>,
    /// The node's most recent error frames, for [`Client::take_errors`](crate::Client::take_errors).
    pub recent_errors: Mutex<std::collections::VecDeque<ErrorFrame>>,
    /// What the node confirmed of what the writer sent.
    pub confirm: Confirmations,
    /// Whether a connection is up (the driver's view), for
    /// `DisconnectPolicy::Fail` to refuse publishes while it is not.
    pub connected: AtomicBool,
    /// The protocol version this client says hello in: `PROTOCOL_VERSION`
    /// until a node refuses it as too new, then 1 for the client's life.
    pub proto: AtomicU16,
}

/// Error frames kept for [`Client::take_errors`](crate::Client::take_errors).
pub(crate) const RECENT_ERRORS: usize = 4096;

impl Shared {
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

pub(crate) fn encode_frame(frame: &Frame, limits: &Limits) -> Result<Bytes, slim_wire::WireError> {
    let mut b = BytesMut::new();
    codec::encode(frame, limits, &mut b)?;
    Ok(b.freeze())
}
