//! The node's public data types: what an embedder configures (peers, the
//! node's credentials) and what admin views and event streams report. A leaf
//! module: it imports nothing from the rest of the crate.

use std::net::SocketAddr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use slim_auth::{Identity, IdentitySource};

use crate::registry::ConnId;

/// A peer this node dials.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerSpec {
    /// Checked against the peer's answer; a mismatch is an error.
    pub node_id: String,
    /// `host:port`: an IP address or a DNS name, resolved with the system
    /// resolver at every dial (every address it resolves to is tried).
    pub addr: String,
    /// SNI only: the peer is authenticated by its SPIFFE ID.
    pub server_name: String,
    /// When set, the peer must present exactly this SPIFFE ID; otherwise any
    /// SVID from a trusted bundle whose policy rule grants `peer = true`.
    pub expect_spiffe_id: Option<slim_auth::SpiffeId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkDirection {
    Dialled,
    Accepted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkState {
    Connecting,
    Up,
    Backoff,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Up => "up",
            LinkState::Backoff => "backoff",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkInfo {
    /// Unique among this node process's links (a new link actor, a new id);
    /// lets a reader tell two links to the same peer apart.
    pub link_id: u64,
    pub peer_node_id: String,
    pub peer_spiffe_id: Option<String>,
    pub remote_addr: SocketAddr,
    pub direction: LinkDirection,
    pub state: LinkState,
    pub up_since: Option<SystemTime>,
    pub frames_in: u64,
    pub frames_out: u64,
    /// Of `frames_out`, those a reader wrote straight onto the link's data
    /// stream because nothing was queued ahead of them (no hop through the
    /// link's writer task).
    #[serde(default)]
    pub direct_frames: u64,
    /// Frames dropped because the link's outbound queue was full.
    pub drops: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteInfo {
    pub name: String,
    pub local_subscribers: usize,
    /// Remote nodes with subscribers of `name` (interest origins), sorted.
    pub remote_peers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum NodeEvent {
    ClientConnected {
        client: String,
        spiffe_id: Option<String>,
        at: SystemTime,
    },
    ClientDisconnected {
        client: String,
        spiffe_id: Option<String>,
        at: SystemTime,
    },
    /// An explicit client subscribe (not the implicit registration subscriptions).
    Subscribed {
        name: String,
        client: String,
        spiffe_id: Option<String>,
        at: SystemTime,
    },
    Unsubscribed {
        name: String,
        client: String,
        spiffe_id: Option<String>,
        at: SystemTime,
    },
    LinkUp {
        peer_node_id: String,
        at: SystemTime,
    },
    LinkDown {
        peer_node_id: String,
        reason: String,
        at: SystemTime,
    },
}

/// A snapshot of one client connection, for admin views and tests.
#[derive(Debug, Clone)]
pub struct ConnStats {
    pub id: ConnId,
    pub name: String,
    pub identity: Option<String>,
    pub queued_bytes: usize,
    pub max_queued_bytes: usize,
    /// Of `queued_bytes`, those beyond `max_queued_bytes`, borrowed from the
    /// node's overflow room (`[queue] overflow_bytes`).
    pub overflow_bytes: usize,
    /// Messages this subscriber will not get: dropped because its queue was
    /// full, or dropped from its queue when it was declared slow under the
    /// drop policy (what it held in overflow room).
    pub dropped: u64,
    /// Times a publisher had to wait for room in this connection's queue.
    pub waited: u64,
    /// Whether it is currently a declared slow consumer (drop policy).
    pub slow: bool,
    /// Frames written straight onto its stream, around an empty queue.
    pub direct: u64,
    /// Of those, frames QUIC took only in part (the writer wrote the rest).
    pub carried: u64,
}

/// The node's own credentials: a fixed SVID, or a source that rotates.
#[derive(Clone)]
pub enum TlsIdentity {
    Static(Identity),
    Source(IdentitySource),
}

impl From<&Identity> for TlsIdentity {
    fn from(i: &Identity) -> Self {
        TlsIdentity::Static(i.clone())
    }
}

impl From<&IdentitySource> for TlsIdentity {
    fn from(s: &IdentitySource) -> Self {
        TlsIdentity::Source(s.clone())
    }
}
