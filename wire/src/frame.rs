//! The frame set.
//!
//! Every frame on a stream is `len: u32 (big endian) | kind: u8 | body`, where
//! `len` counts `kind` and `body`, and `body` is the frame's struct encoded by
//! rmp-serde as a MessagePack array (fields in declaration order, no names).
//! The per-frame layouts below list those array fields.

use serde::{Deserialize, Serialize};

use crate::Name;

/// The client protocol version an SDK offers in [`Hello`]. 2 adds
/// [`ReadProgress`] (client → node); nothing else differs from 1.
pub const PROTOCOL_VERSION: u16 = 2;

/// The oldest client protocol version a node still accepts. A node answers
/// a hello of any version in `MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION`; an
/// SDK refused with [`ErrorCode::VERSION`] by an older node says hello again
/// in version 1 (and then sends no [`ReadProgress`]), so SDK and nodes can
/// be upgraded in either order.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// Node-to-node protocol version carried in [`PeerHello`]. 2: interest is
/// flooded per origin (link sets and name states, last writer wins) instead
/// of path-vector routes; a version-1 node cannot link with a version-2 one.
pub const LINK_PROTOCOL_VERSION: u16 = 2;

/// How a publish is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Exactly one subscriber of the name (round-robin, local first).
    Anycast = 0,
    /// Every subscriber of the name, each exactly once.
    Multicast = 1,
    /// The named instance only.
    Unicast = 2,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Anycast => "anycast",
            Mode::Multicast => "multicast",
            Mode::Unicast => "unicast",
        }
    }
}

impl Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(*self as u8)
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u8::deserialize(d)? {
            0 => Ok(Mode::Anycast),
            1 => Ok(Mode::Multicast),
            2 => Ok(Mode::Unicast),
            other => Err(serde::de::Error::custom(format!(
                "unknown delivery mode {other}"
            ))),
        }
    }
}

/// Error and rejection codes carried in [`ErrorFrame`], [`Reject`] and [`SubError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    pub const MALFORMED: ErrorCode = ErrorCode(1);
    pub const TOO_LARGE: ErrorCode = ErrorCode(2);
    pub const UNKNOWN_FRAME: ErrorCode = ErrorCode(3);
    pub const PROTOCOL: ErrorCode = ErrorCode(4);
    pub const NO_ROUTE: ErrorCode = ErrorCode(10);
    pub const UNAUTHORIZED: ErrorCode = ErrorCode(11);
    pub const SLOW_CONSUMER: ErrorCode = ErrorCode(12);
    pub const BAD_NAME: ErrorCode = ErrorCode(13);
    pub const NAME_TAKEN: ErrorCode = ErrorCode(14);
    pub const SHUTTING_DOWN: ErrorCode = ErrorCode(15);
    pub const VERSION: ErrorCode = ErrorCode(16);
    /// A peer link refused because another link to the same node wins the
    /// tie-break (the link dialled by the lower node id is kept).
    pub const LINK_EXISTS: ErrorCode = ErrorCode(17);
    /// Never sent by a node: the SDK's own report of a publish the node
    /// had not confirmed when the connection to it dropped.
    pub const CONNECTION_LOST: ErrorCode = ErrorCode(18);
    pub const INTERNAL: ErrorCode = ErrorCode(99);

    pub fn as_str(self) -> &'static str {
        match self {
            Self::MALFORMED => "malformed",
            Self::TOO_LARGE => "too_large",
            Self::UNKNOWN_FRAME => "unknown_frame",
            Self::PROTOCOL => "protocol",
            Self::NO_ROUTE => "no_route",
            Self::UNAUTHORIZED => "unauthorized",
            Self::SLOW_CONSUMER => "slow_consumer",
            Self::BAD_NAME => "bad_name",
            Self::NAME_TAKEN => "name_taken",
            Self::SHUTTING_DOWN => "shutting_down",
            Self::VERSION => "version",
            Self::LINK_EXISTS => "link_exists",
            Self::CONNECTION_LOST => "connection_lost",
            Self::INTERNAL => "internal",
            _ => "other",
        }
    }
}

/// Client → node, first frame on the connection.
/// Layout: `[version: u16, name: str, token: str|nil]`.
/// `name` is the client's full name (with instance id); `token` is reserved for
/// JWT-SVID authentication (identity issue) and must be nil for now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u16,
    pub name: Name,
    pub token: Option<String>,
}

/// Node → client, the hello was accepted.
/// Layout: `[node_id: str, identity: str|nil, max_frame: u32]`.
/// `identity` is the SPIFFE ID the node authenticated the client as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accept {
    pub node_id: String,
    pub identity: Option<String>,
    pub max_frame: u32,
}

/// Node → client, the hello was refused; the node closes the connection after it.
/// Layout: `[code: u16, reason: str]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reject {
    pub code: ErrorCode,
    pub reason: String,
}

/// Layout: `[id: u64, name: str]`. Answered by [`SubAck`] or [`SubError`] with the same id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    pub id: u64,
    pub name: Name,
}

/// Layout: `[id: u64, name: str]`. Answered like [`Subscribe`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsubscribe {
    pub id: u64,
    pub name: Name,
}

/// Layout: `[id: u64]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubAck {
    pub id: u64,
}

/// Layout: `[id: u64, code: u16, reason: str]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubError {
    pub id: u64,
    pub code: ErrorCode,
    pub reason: String,
}

/// Publish flag: do not report "no route" back to the publisher.
pub const FLAG_NO_ROUTE_SILENT: u8 = 0b0000_0001;

/// Client → node.
/// Layout: `[name: str, mode: u8, flags: u8, msg_id: u64, payload: bin]`.
/// `msg_id` is chosen by the publisher and echoed in errors about this publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    pub name: Name,
    pub mode: Mode,
    pub flags: u8,
    pub msg_id: u64,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// Node → client.
/// Layout: `[name: str, mode: u8, from: str, from_identity: str|nil, msg_id: u64, payload: bin]`.
/// `from` is the publisher's registered full name, `from_identity` the SPIFFE ID
/// that the first node authenticated it as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deliver {
    pub name: Name,
    pub mode: Mode,
    pub from: Name,
    pub from_identity: Option<String>,
    pub msg_id: u64,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// Client → node (protocol 2): the client has read `read` bytes of the
/// node's stream so far (all of it since the connection began).
///
/// The node sees a client read only through QUIC flow-control credit, which
/// a receiver grants in steps of an eighth of its stream window (512 KiB of
/// the SDK's 4 MiB): a client reading steadily but slower than that per
/// write deadline would look stalled. The SDK sends this while its
/// application holds it back (not on the fast path), and the node counts it
/// as progress for a bounded time (see the node's outbox).
/// Layout: `[read: u64]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadProgress {
    pub read: u64,
}

/// Layout: `[nonce: u64]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    pub nonce: u64,
}

/// Layout: `[nonce: u64]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    pub nonce: u64,
}

/// Either direction: something went wrong. Fatal errors are followed by close.
/// Layout: `[code: u16, msg_id: u64|nil, name: str|nil, reason: str]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    pub code: ErrorCode,
    pub msg_id: Option<u64>,
    pub name: Option<Name>,
    pub reason: String,
}

/// Node → node, first frame of a peer link (instead of [`Hello`]), sent by
/// the dialling node on the link's data stream.
/// Layout: `[version: u16, node_id: str]`.
/// The dialler's identity is its TLS client certificate; the acceptor's
/// policy must grant it `peer = true`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHello {
    pub version: u16,
    pub node_id: String,
}

/// Node → node, the peer hello was accepted (a refusal is a [`Reject`]).
/// Layout: `[node_id: str]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAccept {
    pub node_id: String,
}

/// A node's peer links as it last announced them: the topology half of the
/// interest protocol (an edge counts only when both ends list each other).
/// Layout: `[seq: u64, peers: [str]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkSet {
    pub seq: u64,
    pub peers: Vec<String>,
}

/// Whether the origin has local subscribers of `name`, as of its `seq`
/// (last writer wins; `present = false` is a tombstone).
/// Layout: `[name: str, seq: u64, present: bool]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameState {
    pub name: Name,
    pub seq: u64,
    pub present: bool,
}

/// Entries originated by one node, flooded unchanged to every node. `epoch`
/// is the origin's incarnation (its start time): entries of an older epoch
/// are dropped wherever a newer one is seen.
/// Layout: `[origin: str, epoch: u64, links: LinkSet|nil, names: [NameState]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginUpdate {
    pub origin: String,
    pub epoch: u64,
    pub links: Option<LinkSet>,
    pub names: Vec<NameState>,
}

/// What a node holds of one origin, sent when a link comes up so that the
/// peer sends back only the origins that differ (a compact snapshot, not a
/// replay). `links_seq` is the seq of the origin's link set held (0: none);
/// `hash` is order-independent over the present names and their seqs.
/// Layout: `[origin: str, epoch: u64, links_seq: u64, names: u32, hash: u64]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginDigest {
    pub origin: String,
    pub epoch: u64,
    pub links_seq: u64,
    pub names: u32,
    pub hash: u64,
}

/// Node → node on a peer link's control stream: interest and topology
/// entries to merge, and (right after the link comes up) a digest of what
/// the sender holds. A digest larger than one frame comes in parts, sorted
/// by origin: each part covers the origins after the previous part's last
/// one, up to its own last one, and the part with `digest_last` everything
/// after (so an origin missing from the digest is seen as missing, not as
/// being in another part).
/// Layout: `[updates: [OriginUpdate], digest: [OriginDigest], digest_last: bool]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interest {
    pub updates: Vec<OriginUpdate>,
    pub digest: Vec<OriginDigest>,
    pub digest_last: bool,
}

/// Node → node on a peer link's data stream: a publish on its way to other
/// nodes' subscribers.
/// Layout: `[name: str, mode: u8, from: str, from_identity: str|nil, msg_id: u64,
/// path: [str], dests: [str], payload: bin]`.
/// `from`/`from_identity` are the publisher as the *first* node authenticated
/// it; `path` the node ids the message has crossed (first = that node);
/// `dests` the nodes this copy must reach (each destination node appears in
/// exactly one copy, which is what makes multicast exactly-once in meshes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    pub name: Name,
    pub mode: Mode,
    pub from: Name,
    pub from_identity: Option<String>,
    pub msg_id: u64,
    pub path: Vec<String>,
    pub dests: Vec<String>,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// The kind byte that precedes each body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Hello = 1,
    Accept = 2,
    Reject = 3,
    Subscribe = 4,
    Unsubscribe = 5,
    SubAck = 6,
    SubError = 7,
    Publish = 8,
    Deliver = 9,
    Ping = 10,
    Pong = 11,
    Error = 12,
    PeerHello = 13,
    PeerAccept = 14,
    Interest = 15,
    Forward = 16,
    ReadProgress = 17,
}

impl FrameKind {
    pub fn from_u8(b: u8) -> Option<Self> {
        use FrameKind::*;
        Some(match b {
            1 => Hello,
            2 => Accept,
            3 => Reject,
            4 => Subscribe,
            5 => Unsubscribe,
            6 => SubAck,
            7 => SubError,
            8 => Publish,
            9 => Deliver,
            10 => Ping,
            11 => Pong,
            12 => Error,
            13 => PeerHello,
            14 => PeerAccept,
            15 => Interest,
            16 => Forward,
            17 => ReadProgress,
            _ => return None,
        })
    }

    /// A stable lowercase label, e.g. for metrics.
    pub fn as_str(self) -> &'static str {
        use FrameKind::*;
        match self {
            Hello => "hello",
            Accept => "accept",
            Reject => "reject",
            Subscribe => "subscribe",
            Unsubscribe => "unsubscribe",
            SubAck => "sub_ack",
            SubError => "sub_error",
            Publish => "publish",
            Deliver => "deliver",
            Ping => "ping",
            Pong => "pong",
            Error => "error",
            PeerHello => "peer_hello",
            PeerAccept => "peer_accept",
            Interest => "interest",
            Forward => "forward",
            ReadProgress => "read_progress",
        }
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Accept(Accept),
    Reject(Reject),
    Subscribe(Subscribe),
    Unsubscribe(Unsubscribe),
    SubAck(SubAck),
    SubError(SubError),
    Publish(Publish),
    Deliver(Deliver),
    Ping(Ping),
    Pong(Pong),
    Error(ErrorFrame),
    PeerHello(PeerHello),
    PeerAccept(PeerAccept),
    Interest(Interest),
    Forward(Forward),
    ReadProgress(ReadProgress),
}

impl Frame {
    pub fn kind(&self) -> FrameKind {
        match self {
            Frame::Hello(_) => FrameKind::Hello,
            Frame::Accept(_) => FrameKind::Accept,
            Frame::Reject(_) => FrameKind::Reject,
            Frame::Subscribe(_) => FrameKind::Subscribe,
            Frame::Unsubscribe(_) => FrameKind::Unsubscribe,
            Frame::SubAck(_) => FrameKind::SubAck,
            Frame::SubError(_) => FrameKind::SubError,
            Frame::Publish(_) => FrameKind::Publish,
            Frame::Deliver(_) => FrameKind::Deliver,
            Frame::Ping(_) => FrameKind::Ping,
            Frame::Pong(_) => FrameKind::Pong,
            Frame::Error(_) => FrameKind::Error,
            Frame::PeerHello(_) => FrameKind::PeerHello,
            Frame::PeerAccept(_) => FrameKind::PeerAccept,
            Frame::Interest(_) => FrameKind::Interest,
            Frame::Forward(_) => FrameKind::Forward,
            Frame::ReadProgress(_) => FrameKind::ReadProgress,
        }
    }
}
