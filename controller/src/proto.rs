//! The controller protocol. Sans-IO: messages in, bytes out, and back.
//!
//! # Framing
//!
//! One bidirectional QUIC stream per connection (ALPN [`ALPN_CONTROLLER`]),
//! opened by the caller (a node or an admin client). Each message is one
//! frame: `len: u32 BE | body`, `len` counting the body only. The body is the
//! message as MessagePack (rmp-serde, compact form: a struct is an array of
//! its fields in declaration order; an enum is a one-entry map
//! `{"Variant": fields}`, a unit variant just the string `"Variant"`). A
//! declared `len` of 0 or over [`Limits::max_frame`] is an error as soon as
//! the 4 length bytes are in, before anything is allocated for the body; a
//! partial frame is "need more" (`Ok(None)`), never an error.
//!
//! # Conversation
//!
//! Node: `Register` → `Registered`. Then the node's state as one full
//! report, sent as `Report` parts (the one with `last` completes it), and
//! after that only `ReportDelta`s, each numbered one past the previous
//! report or delta; a delta whose number does not follow, or one before any
//! full report, makes the controller answer `SendReport`, and the node starts
//! over with a full report. Alongside: `Events` (each answered by
//! `EventsAck`), while the controller pushes `SetPeers` whenever the node's
//! planned dial set changes. The caller's SPIFFE ID is taken from its TLS
//! certificate, never from a message.
//!
//! Admin: `Admin(request)` → zero or more `AdminPart(page)` then
//! `Admin(last page)` (or `Error`), repeatedly. Pages of one answer are the
//! same variant; their lists concatenate ([`AdminResponse::merge`]).
//!
//! No message needs a frame anywhere near [`DEFAULT_MAX_FRAME`]: full
//! reports, large deltas and admin answers are cut into pieces of about
//! [`PIECE_BYTES`] ([`Pager`]).
//!
//! # Versions
//!
//! The version is the ALPN. Version 2 (full report in parts, then deltas;
//! paged admin answers; `LinkInfo::link_id`) replaced version 1 (a full
//! report every 2 s in one frame, routes capped at 20,000; one-frame admin
//! answers). The two are not wire compatible, and a version mismatch fails
//! the TLS handshake ("no application protocol") instead of garbling
//! messages: upgrade the controller, the nodes and `slimctl` together. Nodes
//! that cannot register keep their links, routes and dial sets meanwhile.
//!
//! Times are Unix milliseconds (`u64`).

use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Version of the controller protocol (see "Versions" above).
pub const PROTOCOL_VERSION: u32 = 2;
/// ALPN of the controller protocol: carries [`PROTOCOL_VERSION`].
pub const ALPN_CONTROLLER: &[u8] = b"slim-controller/2";
/// Default largest frame body.
pub const DEFAULT_MAX_FRAME: u32 = 8 << 20;
/// Target size of one report part, delta or admin page: small next to the
/// frame limit, so a piece never approaches it, and large enough that a
/// big answer is a handful of frames.
pub const PIECE_BYTES: usize = 512 << 10;

/// Codec limits; configuration, not constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_frame: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: DEFAULT_MAX_FRAME,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("empty frame")]
    EmptyFrame,
    #[error("frame of {declared} bytes exceeds the limit of {max}")]
    FrameTooLarge { declared: u64, max: u32 },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("cannot encode message: {0}")]
    Encode(String),
}

impl ProtoError {
    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ProtoError::EmptyFrame => "empty_frame",
            ProtoError::FrameTooLarge { .. } => "too_large",
            ProtoError::Malformed(_) => "malformed",
            ProtoError::Encode(_) => "encode",
        }
    }
}

/// Error codes carried in [`FromController::Error`] and as QUIC close codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    pub const UNAUTHORIZED: ErrorCode = ErrorCode(1);
    pub const BAD_REQUEST: ErrorCode = ErrorCode(2);
    /// Another identity holds this node id on a live connection.
    pub const NODE_ID_TAKEN: ErrorCode = ErrorCode(3);
    pub const INTERNAL: ErrorCode = ErrorCode(4);
    pub const UNKNOWN_NODE: ErrorCode = ErrorCode(5);
    /// A newer connection registered the same node id.
    pub const REPLACED: ErrorCode = ErrorCode(6);
    pub const SHUTTING_DOWN: ErrorCode = ErrorCode(7);
    pub const MALFORMED: ErrorCode = ErrorCode(8);

    pub fn as_str(self) -> &'static str {
        match self {
            Self::UNAUTHORIZED => "unauthorized",
            Self::BAD_REQUEST => "bad_request",
            Self::NODE_ID_TAKEN => "node_id_taken",
            Self::INTERNAL => "internal",
            Self::UNKNOWN_NODE => "unknown_node",
            Self::REPLACED => "replaced",
            Self::SHUTTING_DOWN => "shutting_down",
            Self::MALFORMED => "malformed",
            _ => "unknown",
        }
    }
}

/// A node introduces itself. `[node_id, cluster, external_endpoint, listen,
/// server_name, epoch, dialing, external_host?]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    pub node_id: String,
    /// Cluster / group name, for the fleet view.
    pub cluster: String,
    /// Where other nodes can dial this node; `None`: behind NAT, dials only.
    pub external_endpoint: Option<SocketAddr>,
    /// The node's bound listen address (informational).
    pub listen: Option<SocketAddr>,
    /// TLS server name other nodes use when dialling it.
    pub server_name: String,
    /// Random per node process start; scopes event sequence numbers.
    pub epoch: u64,
    /// The dial set the node currently applies (from an earlier controller
    /// run): lets a restarted controller keep links to peers that have not
    /// re-registered yet.
    pub dialing: Vec<PeerSpec>,
    /// The external endpoint as a `host:port` name (then
    /// `external_endpoint` is `None`): handed to dialers as the name, which
    /// they resolve at each dial. Added after version 2 shipped: left out of
    /// the frame when `None`, so IP-only nodes send what they always did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_host: Option<String>,
}

impl Register {
    /// Where other nodes dial this node, `host:port` (a name or an IP).
    pub fn endpoint(&self) -> Option<String> {
        self.external_host
            .clone()
            .or_else(|| self.external_endpoint.map(|a| a.to_string()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkDirection {
    Dialled,
    Accepted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    Connecting,
    Up,
    Backoff,
}

/// One peer link as its node sees it. `[link_id, peer_node_id,
/// peer_spiffe_id, remote_addr, direction, state, up_since_ms, frames_in,
/// frames_out, drops]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkInfo {
    /// Unique among the reporting node's links (per node process): deltas
    /// name links by it, since a node can have two links to one peer.
    pub link_id: u64,
    pub peer_node_id: String,
    pub peer_spiffe_id: Option<String>,
    pub remote_addr: SocketAddr,
    pub direction: LinkDirection,
    pub state: LinkState,
    pub up_since_ms: Option<u64>,
    pub frames_in: u64,
    pub frames_out: u64,
    pub drops: u64,
}

impl LinkInfo {
    /// Same link, same state; only the traffic counters may differ. Such a
    /// change is not worth a prompt delta (the counters ride along with the
    /// next one, or go out every `report_interval`).
    pub fn same_but_counters(&self, other: &LinkInfo) -> bool {
        self.link_id == other.link_id
            && self.peer_node_id == other.peer_node_id
            && self.peer_spiffe_id == other.peer_spiffe_id
            && self.remote_addr == other.remote_addr
            && self.direction == other.direction
            && self.state == other.state
            && self.up_since_ms == other.up_since_ms
    }
}

/// One name in a node's routing table. `[name, local_subscribers, remote_peers]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteInfo {
    pub name: String,
    pub local_subscribers: u64,
    pub remote_peers: Vec<String>,
}

/// One part of a node's full state. `[seq, links, routes, last]`. A full
/// report is one or more parts with the same `seq`, the final one with
/// `last`; the parts' lists together are every link and every route of the
/// node. Sent after registering and whenever the controller asks
/// (`SendReport`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Report {
    /// Numbers the state this report describes; the next delta is `seq + 1`.
    pub seq: u64,
    pub links: Vec<LinkInfo>,
    pub routes: Vec<RouteInfo>,
    /// This part completes the report.
    pub last: bool,
}

/// What changed since the state numbered `seq - 1` (a full report or the
/// previous delta). `[seq, links, links_removed, routes, routes_removed]`.
/// An empty delta says "still here, nothing changed".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ReportDelta {
    pub seq: u64,
    /// Links added or changed (each replaces the link with its `link_id`).
    pub links: Vec<LinkInfo>,
    /// `link_id`s of links gone.
    pub links_removed: Vec<u64>,
    /// Names added or changed (each replaces the entry of its name).
    pub routes: Vec<RouteInfo>,
    /// Names gone.
    pub routes_removed: Vec<String>,
}

impl ReportDelta {
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
            && self.links_removed.is_empty()
            && self.routes.is_empty()
            && self.routes_removed.is_empty()
    }
}

/// Something that happened on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeEvent {
    ClientConnected {
        client: String,
        spiffe_id: Option<String>,
        at_ms: u64,
    },
    ClientDisconnected {
        client: String,
        spiffe_id: Option<String>,
        at_ms: u64,
    },
    Subscribed {
        name: String,
        client: String,
        spiffe_id: Option<String>,
        at_ms: u64,
    },
    Unsubscribed {
        name: String,
        client: String,
        spiffe_id: Option<String>,
        at_ms: u64,
    },
    LinkUp {
        peer_node_id: String,
        at_ms: u64,
    },
    LinkDown {
        peer_node_id: String,
        reason: String,
        at_ms: u64,
    },
}

/// A link the controller wants a node to dial. `[node_id, addr, server_name,
/// expect_spiffe_id, host?]`; `expect_spiffe_id` is the SPIFFE ID the target
/// presented to the controller, so the dialler pins it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerSpec {
    pub node_id: String,
    /// The target's address; `0.0.0.0:0` (undialable) when `host` is set.
    pub addr: SocketAddr,
    pub server_name: String,
    pub expect_spiffe_id: Option<String>,
    /// The target's endpoint as a `host:port` name, which the dialer
    /// resolves at each dial: a name travels as a name. Left out of the
    /// frame when `None` (see [`Register::external_host`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl PeerSpec {
    /// A spec for dialling `endpoint` (`ip:port`, or `host:port` kept as a name).
    pub fn new(
        node_id: String,
        endpoint: &str,
        server_name: String,
        expect_spiffe_id: Option<String>,
    ) -> PeerSpec {
        let (addr, host) = match endpoint.parse::<SocketAddr>() {
            Ok(a) => (a, None),
            Err(_) => (
                SocketAddr::from(([0, 0, 0, 0], 0)),
                Some(endpoint.to_owned()),
            ),
        };
        PeerSpec {
            node_id,
            addr,
            server_name,
            expect_spiffe_id,
            host,
        }
    }

    /// Where to dial: the name if there is one, else the address.
    pub fn target(&self) -> String {
        self.host.clone().unwrap_or_else(|| self.addr.to_string())
    }
}

/// Caller → controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToController {
    /// `Register`.
    Register(Register),
    /// One part of a full report (after registering, and on `SendReport`).
    Report(Report),
    /// Changes since the previous report or delta.
    ReportDelta(ReportDelta),
    /// `[epoch, first_seq, events]`: events numbered `first_seq..`;
    /// resent after a reconnect until acknowledged (the controller skips
    /// numbers it already stored for this epoch).
    Events {
        epoch: u64,
        first_seq: u64,
        events: Vec<NodeEvent>,
    },
    /// An admin request.
    Admin(AdminRequest),
}

/// Controller → caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToCaller {
    /// Registration accepted.
    Registered,
    /// The complete set of links this node should dial.
    SetPeers(Vec<PeerSpec>),
    /// `[epoch, upto]`: events up to and including `upto` are stored.
    EventsAck { epoch: u64, upto: u64 },
    /// An admin response, or its last page.
    Admin(AdminResponse),
    /// A page of an admin response; more follow, the last as `Admin`.
    AdminPart(AdminResponse),
    /// The controller's view of this node is out of step (a delta that
    /// does not follow on): send a full report.
    SendReport,
    /// `[code, reason]`; for a node, the connection closes after it.
    Error { code: ErrorCode, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    ListNodes,
    ListLinks,
    ListRoutes {
        node: String,
    },
    ListChannels,
    /// Newest `limit` records matching; `since_ms` inclusive.
    Audit {
        channel: Option<String>,
        since_ms: Option<u64>,
        limit: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminResponse {
    Nodes(Vec<NodeView>),
    Links(Vec<LinkView>),
    Routes {
        node: String,
        routes: Vec<RouteInfo>,
    },
    Channels(Vec<ChannelView>),
    Audit {
        records: Vec<AuditRecord>,
        /// More records matched than `limit`; the oldest were left out.
        truncated: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub node_id: String,
    pub cluster: String,
    pub spiffe_id: String,
    pub external_endpoint: Option<SocketAddr>,
    pub listen: Option<SocketAddr>,
    pub connected: bool,
    pub registered_ms: u64,
    pub last_seen_ms: u64,
    /// Links in state `Up` in the node's last report.
    pub links_up: u32,
    /// Node ids this node was told to dial.
    pub dials: Vec<String>,
    /// Known only from another node's dial set (not registered since the
    /// controller started); kept in the plan until it registers or the
    /// plan grace runs out.
    pub hearsay: bool,
    /// The external endpoint when it is a `host:port` name (see
    /// [`Register::external_host`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_host: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkView {
    /// The node that reported the link.
    pub node_id: String,
    pub link: LinkInfo,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelNode {
    pub node_id: String,
    pub local_subscribers: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelView {
    pub name: String,
    pub subscribers: u64,
    pub nodes: Vec<ChannelNode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    ClientConnected,
    ClientDisconnected,
    Subscribed,
    Unsubscribed,
}

impl AuditKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::ClientConnected => "client_connected",
            AuditKind::ClientDisconnected => "client_disconnected",
            AuditKind::Subscribed => "subscribed",
            AuditKind::Unsubscribed => "unsubscribed",
        }
    }
}

/// One audit trail entry: who (SPIFFE ID) did what on which node, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the trail (monotonic across restarts).
    pub seq: u64,
    /// When it happened (node clock).
    pub at_ms: u64,
    /// When the controller stored it.
    pub recorded_ms: u64,
    pub node_id: String,
    pub node_spiffe_id: String,
    pub kind: AuditKind,
    pub client: String,
    pub spiffe_id: Option<String>,
    pub channel: Option<String>,
}

impl AdminResponse {
    /// Cuts this answer into pages of about `budget` encoded bytes each (at
    /// least one page; a list item larger than `budget` is a page of its own).
    pub fn into_pages(self, budget: usize) -> Vec<AdminResponse> {
        match self {
            AdminResponse::Nodes(v) => paginate(v, budget)
                .into_iter()
                .map(AdminResponse::Nodes)
                .collect(),
            AdminResponse::Links(v) => paginate(v, budget)
                .into_iter()
                .map(AdminResponse::Links)
                .collect(),
            AdminResponse::Channels(v) => paginate(v, budget)
                .into_iter()
                .map(AdminResponse::Channels)
                .collect(),
            AdminResponse::Routes { node, routes } => paginate(routes, budget)
                .into_iter()
                .map(|routes| AdminResponse::Routes {
                    node: node.clone(),
                    routes,
                })
                .collect(),
            AdminResponse::Audit { records, truncated } => paginate(records, budget)
                .into_iter()
                .map(|records| AdminResponse::Audit { records, truncated })
                .collect(),
        }
    }

    /// Appends the next page of the same answer.
    pub fn merge(&mut self, next: AdminResponse) -> Result<(), ProtoError> {
        match (self, next) {
            (AdminResponse::Nodes(a), AdminResponse::Nodes(b)) => a.extend(b),
            (AdminResponse::Links(a), AdminResponse::Links(b)) => a.extend(b),
            (AdminResponse::Channels(a), AdminResponse::Channels(b)) => a.extend(b),
            (
                AdminResponse::Routes { node, routes },
                AdminResponse::Routes {
                    node: n,
                    routes: more,
                },
            ) if *node == n => routes.extend(more),
            (
                AdminResponse::Audit { records, truncated },
                AdminResponse::Audit {
                    records: more,
                    truncated: t,
                },
            ) => {
                records.extend(more);
                *truncated |= t;
            }
            (_, next) => {
                return Err(ProtoError::Malformed(format!(
                    "a page of another answer: {}",
                    next.kind()
                )));
            }
        }
        Ok(())
    }

    fn kind(&self) -> &'static str {
        match self {
            AdminResponse::Nodes(_) => "nodes",
            AdminResponse::Links(_) => "links",
            AdminResponse::Routes { .. } => "routes",
            AdminResponse::Channels(_) => "channels",
            AdminResponse::Audit { .. } => "audit",
        }
    }
}

/// Piece size for `limits`: [`PIECE_BYTES`], or less under a small frame
/// limit, so a piece (plus its envelope) always fits in one frame.
pub fn piece_budget(limits: &Limits) -> usize {
    PIECE_BYTES.min(limits.max_frame as usize / 4).max(1)
}

/// Splits `items` into pieces of about `budget` encoded bytes (at least one
/// piece, possibly empty).
pub fn paginate<T: Serialize>(items: Vec<T>, budget: usize) -> Vec<Vec<T>> {
    let mut pager = Pager::new(budget);
    let mut pages = vec![Vec::new()];
    for item in items {
        if pager.next_piece(&item) {
            pages.push(Vec::new());
        }
        if let Some(p) = pages.last_mut() {
            p.push(item);
        }
    }
    pages
}

/// Cuts a stream of items into pieces of about `budget` encoded bytes,
/// measuring each item as it is encoded on the wire.
#[derive(Debug, Clone)]
pub struct Pager {
    budget: usize,
    used: usize,
}

impl Pager {
    pub fn new(budget: usize) -> Pager {
        Pager {
            budget: budget.max(1),
            used: 0,
        }
    }

    /// Accounts `item`. `true`: it does not fit the current piece, so that
    /// piece ends before it and `item` opens the next one.
    pub fn next_piece<T: Serialize>(&mut self, item: &T) -> bool {
        let n = encoded_len(item);
        if self.used > 0 && self.used + n > self.budget {
            self.used = n;
            true
        } else {
            self.used += n;
            false
        }
    }
}

/// Encoded size of `v` in bytes, without building the encoding.
pub fn encoded_len<T: Serialize>(v: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Our message types always encode; a failure would only undercount.
    let _ = rmp_serde::encode::write(&mut c, v);
    c.0
}

/// Appends `msg` as one frame to `out`. A body over the limit is an error
/// (the peer would refuse it).
pub fn encode<T: Serialize>(msg: &T, limits: &Limits, out: &mut Vec<u8>) -> Result<(), ProtoError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    if let Err(e) = rmp_serde::encode::write(out, msg) {
        out.truncate(start);
        return Err(ProtoError::Encode(e.to_string()));
    }
    let len = out.len() - start - 4;
    if len > limits.max_frame as usize {
        out.truncate(start);
        return Err(ProtoError::FrameTooLarge {
            declared: len as u64,
            max: limits.max_frame,
        });
    }
    out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// If `buf` starts with a whole frame, its total length (header included).
pub fn check(buf: &[u8], limits: &Limits) -> Result<Option<usize>, ProtoError> {
    let Some(head) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*head);
    if len == 0 {
        return Err(ProtoError::EmptyFrame);
    }
    if len > limits.max_frame {
        return Err(ProtoError::FrameTooLarge {
            declared: len as u64,
            max: limits.max_frame,
        });
    }
    let total = 4 + len as usize;
    Ok((buf.len() >= total).then_some(total))
}

/// Decodes one message from the front of `buf`, consuming its frame.
/// `Ok(None)`: need more bytes. A malformed body consumes the frame too, so
/// the caller may carry on if it wishes.
pub fn decode<T: DeserializeOwned>(
    buf: &mut BytesMut,
    limits: &Limits,
) -> Result<Option<T>, ProtoError> {
    let Some(total) = check(buf, limits)? else {
        return Ok(None);
    };
    let frame = buf.split_to(total);
    let mut body = &frame[4..];
    let msg = rmp_serde::decode::from_read(&mut body)
        .map_err(|e| ProtoError::Malformed(e.to_string()))?;
    if body.has_remaining() {
        return Err(ProtoError::Malformed(format!(
            "{} trailing bytes after the message",
            body.remaining()
        )));
    }
    Ok(Some(msg))
}

/// `SystemTime` → Unix milliseconds (0 before the epoch).
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn now_ms() -> u64 {
    unix_ms(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr() -> impl Strategy<Value = SocketAddr> {
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p)))
    }

    fn opt_str() -> impl Strategy<Value = Option<String>> {
        proptest::option::of("[a-z:/.]{0,20}")
    }

    fn event() -> impl Strategy<Value = NodeEvent> {
        prop_oneof![
            ("[a-z/]{1,20}", opt_str(), any::<u64>()).prop_map(|(client, spiffe_id, at_ms)| {
                NodeEvent::ClientConnected {
                    client,
                    spiffe_id,
                    at_ms,
                }
            }),
            ("[a-z/]{1,20}", "[a-z/]{1,20}", opt_str(), any::<u64>()).prop_map(
                |(name, client, spiffe_id, at_ms)| NodeEvent::Subscribed {
                    name,
                    client,
                    spiffe_id,
                    at_ms
                }
            ),
            ("[a-z]{1,8}", ".{0,30}", any::<u64>()).prop_map(|(peer_node_id, reason, at_ms)| {
                NodeEvent::LinkDown {
                    peer_node_id,
                    reason,
                    at_ms,
                }
            }),
        ]
    }

    fn link() -> impl Strategy<Value = LinkInfo> {
        (
            "[a-z]{1,8}",
            opt_str(),
            addr(),
            any::<bool>(),
            0u8..3,
            proptest::option::of(any::<u64>()),
            any::<(u64, u64, u64)>(),
        )
            .prop_map(|(peer, sid, remote_addr, d, s, up, (i, o, x))| LinkInfo {
                link_id: i ^ o,
                peer_node_id: peer,
                peer_spiffe_id: sid,
                remote_addr,
                direction: if d {
                    LinkDirection::Dialled
                } else {
                    LinkDirection::Accepted
                },
                state: [LinkState::Connecting, LinkState::Up, LinkState::Backoff][s as usize],
                up_since_ms: up,
                frames_in: i,
                frames_out: o,
                drops: x,
            })
    }

    fn to_controller() -> impl Strategy<Value = ToController> {
        prop_oneof![
            (
                "[a-z0-9-]{1,10}",
                "[a-z]{0,10}",
                proptest::option::of(addr()),
                proptest::option::of(addr()),
                "[a-z.]{0,10}",
                any::<u64>()
            )
                .prop_map(|(node_id, cluster, ext, listen, server_name, epoch)| {
                    ToController::Register(Register {
                        dialing: ext
                            .map(|addr| PeerSpec {
                                node_id: format!("{node_id}-peer"),
                                addr,
                                server_name: server_name.clone(),
                                expect_spiffe_id: None,
                                host: (epoch % 2 == 0).then(|| format!("{node_id}.example:4500")),
                            })
                            .into_iter()
                            .collect(),
                        node_id,
                        cluster,
                        external_host: (ext.is_none() && epoch % 3 == 0)
                            .then(|| format!("n{epoch}.example:4500")),
                        external_endpoint: ext,
                        listen,
                        server_name,
                        epoch,
                    })
                }),
            (
                proptest::collection::vec(link(), 0..4),
                proptest::collection::vec(
                    (
                        "[a-z/]{1,20}",
                        any::<u64>(),
                        proptest::collection::vec("[a-z]{1,5}", 0..3)
                    )
                        .prop_map(|(name, local_subscribers, remote_peers)| {
                            RouteInfo {
                                name,
                                local_subscribers,
                                remote_peers,
                            }
                        }),
                    0..4
                )
            )
                .prop_map(|(links, routes)| {
                    ToController::Report(Report {
                        seq: 1,
                        links,
                        routes,
                        last: true,
                    })
                }),
            (
                any::<u64>(),
                proptest::collection::vec(link(), 0..3),
                proptest::collection::vec(any::<u64>(), 0..3),
                proptest::collection::vec("[a-z/]{1,20}", 0..3)
            )
                .prop_map(|(seq, links, links_removed, routes_removed)| {
                    ToController::ReportDelta(ReportDelta {
                        seq,
                        links,
                        links_removed,
                        routes: Vec::new(),
                        routes_removed,
                    })
                }),
            (
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec(event(), 0..5)
            )
                .prop_map(|(epoch, first_seq, events)| ToController::Events {
                    epoch,
                    first_seq,
                    events
                }),
            (opt_str(), proptest::option::of(any::<u64>()), any::<u32>()).prop_map(
                |(channel, since_ms, limit)| ToController::Admin(AdminRequest::Audit {
                    channel,
                    since_ms,
                    limit
                })
            ),
            Just(ToController::Admin(AdminRequest::ListNodes)),
        ]
    }

    proptest! {
        #[test]
        fn round_trip_any_split(msgs in proptest::collection::vec(to_controller(), 1..6), cut in any::<usize>()) {
            let limits = Limits::default();
            let mut bytes = Vec::new();
            for m in &msgs {
                encode(m, &limits, &mut bytes).unwrap();
            }
            // Feed in two pieces split anywhere: the first piece may end
            // mid-frame, which must be "need more", never an error.
            let cut = cut % (bytes.len() + 1);
            let mut buf = BytesMut::from(&bytes[..cut]);
            let mut out = Vec::new();
            while let Some(m) = decode::<ToController>(&mut buf, &limits).unwrap() {
                out.push(m);
            }
            buf.extend_from_slice(&bytes[cut..]);
            while let Some(m) = decode::<ToController>(&mut buf, &limits).unwrap() {
                out.push(m);
            }
            prop_assert_eq!(out, msgs);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn garbage_is_an_error_or_need_more_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = decode::<ToController>(&mut buf, &Limits { max_frame: 128 });
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = decode::<ToCaller>(&mut buf, &Limits { max_frame: 128 });
        }
    }

    #[test]
    fn round_trip_to_caller() {
        let limits = Limits::default();
        let msgs = vec![
            ToCaller::Registered,
            ToCaller::SetPeers(vec![PeerSpec {
                node_id: "b".into(),
                addr: "10.0.0.2:4500".parse().unwrap(),
                server_name: "slim-node".into(),
                expect_spiffe_id: Some("spiffe://acme/b/node/b".into()),
                host: None,
            }]),
            ToCaller::EventsAck { epoch: 7, upto: 42 },
            ToCaller::SendReport,
            ToCaller::AdminPart(AdminResponse::Nodes(vec![])),
            ToCaller::Error {
                code: ErrorCode::UNAUTHORIZED,
                reason: "no".into(),
            },
            ToCaller::Admin(AdminResponse::Audit {
                records: vec![AuditRecord {
                    seq: 1,
                    at_ms: 2,
                    recorded_ms: 3,
                    node_id: "a".into(),
                    node_spiffe_id: "spiffe://x/a".into(),
                    kind: AuditKind::Subscribed,
                    client: "o/n/s/1".into(),
                    spiffe_id: None,
                    channel: Some("o/n/c".into()),
                }],
                truncated: false,
            }),
        ];
        let mut bytes = Vec::new();
        for m in &msgs {
            encode(m, &limits, &mut bytes).unwrap();
        }
        let mut buf = BytesMut::from(&bytes[..]);
        for m in &msgs {
            assert_eq!(
                decode::<ToCaller>(&mut buf, &limits).unwrap().as_ref(),
                Some(m)
            );
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_length_is_refused_from_the_header_alone() {
        let limits = Limits { max_frame: 1024 };
        // Only the 4 length bytes: the body was never sent, nothing allocated.
        let mut buf = BytesMut::from(&0xFFFF_FFFFu32.to_be_bytes()[..]);
        assert_eq!(
            decode::<ToController>(&mut buf, &limits),
            Err(ProtoError::FrameTooLarge {
                declared: 0xFFFF_FFFF,
                max: 1024
            })
        );
        let mut buf = BytesMut::from(&[0, 0, 0, 0][..]);
        assert_eq!(
            decode::<ToController>(&mut buf, &limits),
            Err(ProtoError::EmptyFrame)
        );
        // Three bytes of header: need more.
        let mut buf = BytesMut::from(&[0, 0, 1][..]);
        assert_eq!(decode::<ToController>(&mut buf, &limits), Ok(None));
    }

    #[test]
    fn malformed_body_and_trailing_bytes_are_errors() {
        let limits = Limits::default();
        // A MessagePack string where an enum is expected.
        let mut buf = BytesMut::from(&[0, 0, 0, 2, 0xa1, b'x'][..]);
        assert!(matches!(
            decode::<ToController>(&mut buf, &limits),
            Err(ProtoError::Malformed(_))
        ));
        assert!(buf.is_empty(), "the bad frame is consumed");
        // A valid message followed by junk inside the same frame.
        let mut good = Vec::new();
        encode(&ToCaller::Registered, &limits, &mut good).unwrap();
        let body_len = good.len() - 4 + 1;
        let mut framed = (body_len as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&good[4..]);
        framed.push(0xc0);
        let mut buf = BytesMut::from(&framed[..]);
        assert!(matches!(
            decode::<ToCaller>(&mut buf, &limits),
            Err(ProtoError::Malformed(_))
        ));
    }

    fn link_view(i: u64) -> LinkView {
        LinkView {
            node_id: format!("node-{:04}", i / 25),
            link: LinkInfo {
                link_id: i,
                peer_node_id: format!("node-{:04}", i % 200),
                peer_spiffe_id: Some(format!("spiffe://acme.example/node/node-{:04}", i % 200)),
                remote_addr: SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8], 4500)),
                direction: LinkDirection::Dialled,
                state: LinkState::Up,
                up_since_ms: Some(1_700_000_000_000 + i),
                frames_in: i * 1000,
                frames_out: i * 999,
                drops: 0,
            },
        }
    }

    #[test]
    fn a_large_admin_answer_goes_as_several_frames_each_under_the_limit() {
        // 5,000 links (~200 nodes × 25) under a 64 KiB frame limit.
        let limits = Limits {
            max_frame: 64 << 10,
        };
        let answer = AdminResponse::Links((0..5000).map(link_view).collect());
        let whole = encoded_len(&ToCaller::Admin(answer.clone()));
        assert!(
            whole > limits.max_frame as usize,
            "{whole} bytes fit one frame"
        );
        let pages = answer.clone().into_pages(piece_budget(&limits));
        assert!(pages.len() > 4, "{} pages", pages.len());
        let n = pages.len();
        let mut bytes = Vec::new();
        for (i, page) in pages.into_iter().enumerate() {
            let msg = if i + 1 < n {
                ToCaller::AdminPart(page)
            } else {
                ToCaller::Admin(page)
            };
            let before = bytes.len();
            encode(&msg, &limits, &mut bytes).unwrap();
            let frame = bytes.len() - before - 4;
            assert!(
                frame <= limits.max_frame as usize / 2,
                "frame of {frame} bytes"
            );
        }
        // The receiver's side: parts until the final `Admin`.
        let mut buf = BytesMut::from(&bytes[..]);
        let mut got: Option<AdminResponse> = None;
        loop {
            match decode::<ToCaller>(&mut buf, &limits).unwrap().unwrap() {
                ToCaller::AdminPart(p) => match &mut got {
                    Some(g) => g.merge(p).unwrap(),
                    None => got = Some(p),
                },
                ToCaller::Admin(p) => {
                    match &mut got {
                        Some(g) => g.merge(p).unwrap(),
                        None => got = Some(p),
                    }
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(buf.is_empty());
        assert_eq!(got, Some(answer));
    }

    #[test]
    fn pages_of_every_kind_reassemble_and_kinds_do_not_mix() {
        let route = |i: u32| RouteInfo {
            name: format!("acme/app/{i:06}"),
            local_subscribers: u64::from(i % 3),
            remote_peers: vec!["b".into(), "c".into()],
        };
        let answers = vec![
            AdminResponse::Routes {
                node: "a".into(),
                routes: (0..3000).map(route).collect(),
            },
            AdminResponse::Audit {
                records: (0..2000)
                    .map(|i| AuditRecord {
                        seq: i,
                        at_ms: i,
                        recorded_ms: i,
                        node_id: "a".into(),
                        node_spiffe_id: "spiffe://x/node/a".into(),
                        kind: AuditKind::Subscribed,
                        client: format!("acme/app/client/{i}"),
                        spiffe_id: None,
                        channel: Some("acme/app/chan".into()),
                    })
                    .collect(),
                truncated: true,
            },
            AdminResponse::Channels(Vec::new()),
        ];
        for a in answers {
            let pages = a.clone().into_pages(16 << 10);
            assert!(!pages.is_empty());
            for p in &pages {
                assert!(encoded_len(p) < 32 << 10);
            }
            let mut it = pages.into_iter();
            let mut got = it.next().unwrap();
            for p in it {
                got.merge(p).unwrap();
            }
            assert_eq!(got, a);
        }
        let mut nodes = AdminResponse::Nodes(Vec::new());
        assert!(nodes.merge(AdminResponse::Links(Vec::new())).is_err());
        let mut routes = AdminResponse::Routes {
            node: "a".into(),
            routes: vec![],
        };
        let other_node = AdminResponse::Routes {
            node: "b".into(),
            routes: vec![],
        };
        assert!(routes.merge(other_node).is_err());
    }

    /// `PeerSpec` as version 2 first shipped it, before `host`.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct PeerSpecV2 {
        node_id: String,
        addr: SocketAddr,
        server_name: String,
        expect_spiffe_id: Option<String>,
    }

    #[test]
    fn peer_spec_without_a_name_is_encoded_as_before_and_old_frames_still_decode() {
        let by_ip = PeerSpec::new("b".into(), "10.0.0.2:4500", "slim-node".into(), None);
        assert_eq!(by_ip.host, None);
        let old = PeerSpecV2 {
            node_id: "b".into(),
            addr: "10.0.0.2:4500".parse().unwrap(),
            server_name: "slim-node".into(),
            expect_spiffe_id: None,
        };
        let new_bytes = rmp_serde::to_vec(&by_ip).unwrap();
        assert_eq!(new_bytes, rmp_serde::to_vec(&old).unwrap());
        let back: PeerSpec = rmp_serde::from_slice(&new_bytes).unwrap();
        assert_eq!(back, by_ip);
        let by_name = PeerSpec::new("b".into(), "node-b.example:4500", "slim-node".into(), None);
        assert_eq!(by_name.host.as_deref(), Some("node-b.example:4500"));
        assert_eq!(by_name.target(), "node-b.example:4500");
        let back: PeerSpec = rmp_serde::from_slice(&rmp_serde::to_vec(&by_name).unwrap()).unwrap();
        assert_eq!(back, by_name);
    }

    #[test]
    fn encoded_len_is_the_encoding_length() {
        let m = ToController::ReportDelta(ReportDelta {
            seq: 9,
            links: vec![link_view(3).link],
            links_removed: vec![1, 2],
            routes: vec![],
            routes_removed: vec!["x/y/z".into()],
        });
        let mut out = Vec::new();
        encode(&m, &Limits::default(), &mut out).unwrap();
        assert_eq!(encoded_len(&m), out.len() - 4);
    }

    #[test]
    fn encoding_over_the_limit_is_refused_and_leaves_out_unchanged() {
        let limits = Limits { max_frame: 64 };
        let mut out = vec![1, 2, 3];
        let big = ToController::Admin(AdminRequest::ListRoutes {
            node: "x".repeat(100),
        });
        assert!(matches!(
            encode(&big, &limits, &mut out),
            Err(ProtoError::FrameTooLarge { .. })
        ));
        assert_eq!(out, vec![1, 2, 3]);
    }
}
