//! Runtime configuration of a node's actor tree (the file format lives in the
//! `node` crate, which maps onto this).

use std::net::SocketAddr;
use std::time::Duration;

use slim_auth::policy::Policy;
use slim_wire::Limits;

use crate::outbox::SlowConsumerPolicy;

/// Default ceiling of QUIC's path-MTU discovery on client connections over
/// a network: Ethernet's 1,500 less the IPv6 and UDP headers (quinn's own
/// default). Larger ceilings carry 1–4 KiB messages 25–50 % faster where the
/// path allows them (jumbo frames), but every new connection then spends its
/// first round trips on larger probes, which halved the connect rate and
/// added ~6 KiB per idle connection (`compare.sh` connections,
/// docs/BENCHMARKS.md): opt-in for nodes whose clients move bulk data over
/// such paths. Clients on this host need no probes and start at
/// [`slim_framed::datagrams::LOOPBACK_UDP_PAYLOAD`].
pub const DEFAULT_MAX_UDP_PAYLOAD: u16 = slim_framed::datagrams::ETHERNET_UDP_PAYLOAD;

/// Default ceiling on peer links: the largest at which quinn keeps UDP
/// segmentation offload ([`slim_framed::datagrams::MAX_GSO_UDP_PAYLOAD`]).
/// A node has a handful of links, each carrying many clients' traffic, so
/// the probes' cost is paid a few times, not per client; on an Ethernet path
/// discovery settles near 1,452 after a few lost probes, never lost data.
pub const DEFAULT_LINK_MAX_UDP_PAYLOAD: u16 = slim_framed::datagrams::MAX_GSO_UDP_PAYLOAD;

#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Frames a connection's outbound queue holds before the slow-consumer policy applies.
    pub max_frames: usize,
    /// Bytes a connection's outbound queue holds before the slow-consumer policy applies.
    pub max_bytes: usize,
    pub policy: SlowConsumerPolicy,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_frames: 65_536,
            max_bytes: 2 << 20,
            policy: SlowConsumerPolicy::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: String,
    pub listen: SocketAddr,
    pub limits: Limits,
    pub queue: QueueConfig,
    /// Unacknowledged bytes all client connections together may have in
    /// QUIC's send buffers: shared by the connections receiving at once
    /// (see [`crate::sendbudget`]); one receiver alone keeps a 2 MiB window.
    pub send_budget: u64,
    /// Bytes client outboxes together may queue beyond their own
    /// `queue.max_bytes` before a publisher has to wait for one of them
    /// (`outbox::Overflow`): one subscriber that stops reading then costs
    /// memory up to this, not its publishers' time. 0: never borrow.
    pub overflow_bytes: usize,
    /// QUIC+TLS handshake plus the hello exchange must finish within this:
    /// one deadline from the first Initial to the hello.
    pub handshake_timeout: Duration,
    /// Which connection attempts are taken on: handshake cap, QUIC Retry
    /// under pressure, per-source rate (see [`crate::admission`]).
    pub admission: crate::admission::AdmissionConfig,
    /// A frame that has begun to arrive must be complete within this, else
    /// the connection is closed (`PARTIAL_FRAME_CLOSES_TOTAL`): a client
    /// cannot hold a frame buffer by trickling its last bytes.
    pub frame_read_timeout: Duration,
    /// Bytes all connections together may hold in incomplete frames larger
    /// than [`PARTIAL_FRAME_FREE`](crate::conn::PARTIAL_FRAME_FREE); a
    /// connection whose frame would go beyond it is closed.
    pub partial_frame_budget: usize,
    /// A connection with no traffic at all for this long is closed (QUIC
    /// uses the smaller of the two ends' values). It bounds how long a
    /// vanished client keeps its names here, and how long a client takes to
    /// notice a node that is gone for good (a *restarted* node is noticed at
    /// once: see `reset_key`).
    pub idle_timeout: Duration,
    /// QUIC keep-alive interval (well under common NAT UDP timeouts). A
    /// keep-alive goes out only after this long without receiving anything,
    /// so an SDK client (300 ms by default) keeps the node from ever sending
    /// one; this is for clients with longer intervals, and for accepted peer
    /// links, whose dialler may restart on the same port.
    pub keep_alive: Duration,
    /// Upper bound on concurrent client connections.
    pub max_connections: usize,
    /// Kernel send/receive buffer asked for the UDP socket (0 = OS default).
    pub udp_buffer_bytes: usize,
    /// The largest UDP payload QUIC's path-MTU discovery probes for on
    /// client connections (see [`DEFAULT_MAX_UDP_PAYLOAD`]; peer links have
    /// their own, [`FederationConfig::max_udp_payload`]).
    /// Connections over a network start at 1,200 bytes and grow only by
    /// probes the path acknowledged, so a bound above the path's MTU costs a
    /// few lost probes, never lost data. 1,452 keeps every datagram within
    /// Ethernet's 1,500. Clients on this host start at 65,000 or this,
    /// whichever is larger ([`slim_framed::datagrams::Path`]).
    pub max_udp_payload: u16,
    /// Who may register, publish and subscribe to what. Replaceable at run
    /// time with `NodeHandle::set_policy`.
    pub policy: Policy,
    /// In-band authentication for clients without a certificate. When any is
    /// set, client certificates become optional at the TLS layer (a presented
    /// one is still fully verified).
    pub token_auth: TokenAuth,
    /// A connection is closed this long after its peer's certificate (or
    /// the JWT-SVID a client authenticated with) expired.
    /// Rotation never touches established connections, so this is what ends
    /// a connection whose peer stopped rotating. Default: at expiry.
    pub peer_expiry_grace: Duration,
    /// Peer links to other nodes (static peers; a controller adds more at run
    /// time with `NodeHandle::set_dial_peers`).
    pub federation: FederationConfig,
    /// The secret of the node's QUIC stateless resets. The same secret after
    /// a restart on the same port lets the new process answer the packets of
    /// the old one's connections with a reset, so clients and peers drop
    /// them and reconnect at once instead of after their idle timeout.
    pub reset_key: ResetKey,
}

/// Where the secret of a node's QUIC stateless resets comes from.
#[derive(Debug, Clone, Default)]
pub enum ResetKey {
    /// Derived (HKDF) from the node's TLS private key at start: survives a
    /// restart as long as the key does (static files; rotating sources
    /// until their next rotation).
    #[default]
    FromTlsKey,
    /// A given secret, e.g. the node's `reset_key_file`.
    Secret(slim_auth::ResetSecret),
}

/// Peer links and interest propagation.
#[derive(Debug, Clone)]
pub struct FederationConfig {
    /// Peers this node dials (and keeps dialling, with backoff and jitter).
    pub peers: Vec<crate::types::PeerSpec>,
    /// Interval of the link's ping (and of QUIC keep-alives on dialled links):
    /// well under common NAT UDP timeouts (30 s and up), and short enough
    /// that a peer restarted on the same port is noticed within about this
    /// long: its new process answers our next packet with a stateless reset.
    pub keep_alive: Duration,
    /// A link with no pong for this long is declared dead and closed (also
    /// the dialled link's QUIC idle timeout): what bounds the detection of a
    /// peer that is gone for good.
    pub link_timeout: Duration,
    /// Bounds of a link's outbound data queue (forwarded publishes).
    pub link_queue: QueueConfig,
    /// Interest updates a link may have waiting before it is reset (a peer
    /// that far behind is resynchronised from scratch on reconnect).
    pub control_queue: usize,
    /// First and largest reconnect delay of a dialled link (jittered).
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Longest node path a forwarded message may carry: a safety bound, since
    /// routes follow shortest paths and a path holding this node is refused
    /// anyway; 16 leaves room for any overlay the controller plans.
    pub max_hops: usize,
    /// How long a withdrawn name's tombstone is kept in the interest table
    /// (so that an older "present" still travelling some path cannot
    /// resurrect it). Every client that leaves leaves one per name it held,
    /// so under client churn this window is what the table holds beyond the
    /// live names; it must stay well above the time an announcement takes
    /// to cross the fleet.
    pub tombstone_ttl: Duration,
    /// The largest UDP payload path-MTU discovery probes for on peer links
    /// over a network (see [`DEFAULT_LINK_MAX_UDP_PAYLOAD`]); links to a node
    /// on this host start at 65,000 or this, whichever is larger.
    pub max_udp_payload: u16,
}

impl Default for FederationConfig {
    fn default() -> Self {
        FederationConfig {
            peers: Vec::new(),
            // A ping each way every 500 ms on each link (a node has a handful
            // of links, so a few small packets per second): a restarted peer
            // is noticed within about half a second. Ten missed pings, 5 s,
            // declare a silent peer dead.
            keep_alive: Duration::from_millis(500),
            link_timeout: Duration::from_secs(5),
            link_queue: QueueConfig {
                max_frames: 65_536,
                max_bytes: 16 << 20,
                // Longer than a client's deadline: a subscriber stalling the
                // far node's link reader is cut there before this link gives
                // up, so the link loses nothing for the others behind it.
                policy: SlowConsumerPolicy::wait(
                    Duration::from_secs(5),
                    crate::outbox::SlowAction::Drop,
                ),
            },
            control_queue: 4096,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            max_hops: 16,
            tombstone_ttl: crate::interest::InterestConfig::default().tombstone_ttl,
            max_udp_payload: DEFAULT_LINK_MAX_UDP_PAYLOAD,
        }
    }
}

/// Where JWT-SVID validation keys come from.
#[derive(Clone)]
pub enum JwtKeys {
    /// A fixed JWKS.
    Static(slim_auth::JwtBundles),
    /// A JWKS file (see `JwtBundles::from_json_file`), reloaded when it
    /// changes; a file that fails to parse keeps the previous keys.
    File {
        path: std::path::PathBuf,
        /// The trust domain a bare JWKS in the file is filed under.
        default_trust_domain: String,
        /// The keys as first read (the caller reports a bad file at start).
        initial: slim_auth::JwtBundles,
    },
    /// The node's Workload API source (refreshed in the background).
    Source(slim_auth::IdentitySource),
}

#[derive(Clone)]
pub struct JwtAuth {
    /// The audience a client's JWT-SVID must carry (typically the node's SPIFFE ID).
    pub audience: String,
    pub keys: JwtKeys,
}

#[derive(Clone, Default)]
pub struct TokenAuth {
    pub jwt: Option<JwtAuth>,
    /// INSECURE, development only: a shared secret instead of a workload identity.
    pub shared_secret: Option<String>,
}

impl TokenAuth {
    pub fn enabled(&self) -> bool {
        self.jwt.is_some() || self.shared_secret.is_some()
    }
}

impl std::fmt::Debug for TokenAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuth")
            .field("jwt", &self.jwt.as_ref().map(|j| &j.audience))
            .field(
                "shared_secret",
                &self.shared_secret.as_ref().map(|_| "<set>"),
            )
            .finish()
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_id: "node-1".into(),
            listen: "127.0.0.1:4500".parse().expect("static address"),
            limits: Limits::default(),
            queue: QueueConfig::default(),
            // 128 receivers at the full 2 MiB window; 1,000 get 256 KiB each.
            send_budget: 256 << 20,
            // Two seconds of a stalled subscriber's share of a 1 -> 10 fan-out
            // at full speed on two cores (~20 MB/s each) fit, twice over.
            overflow_bytes: 64 << 20,
            handshake_timeout: Duration::from_secs(10),
            admission: crate::admission::AdmissionConfig::default(),
            // A full 1 MiB frame in 10 s needs 100 KB/s, well under any
            // link an agent runs on; a stalled one is gone within 10 s.
            frame_read_timeout: Duration::from_secs(10),
            partial_frame_budget: 256 << 20,
            // A node restart is detected through stateless resets (see
            // `reset_key`), which come back only when the client sends: the
            // SDK's 300 ms keep-alive bounds that. The idle timeout is left
            // for what resets cannot tell: a node or client gone for good;
            // 5 s is over a dozen of the SDK's keep-alive intervals and five
            // of the node's.
            idle_timeout: Duration::from_secs(5),
            // Sent only after 1 s without receiving anything: never towards
            // an SDK client with its default keep-alive, which pings first.
            keep_alive: Duration::from_secs(1),
            max_connections: 100_000,
            udp_buffer_bytes: 8 << 20,
            max_udp_payload: DEFAULT_MAX_UDP_PAYLOAD,
            policy: Policy::allow_all(),
            token_auth: TokenAuth::default(),
            peer_expiry_grace: Duration::ZERO,
            federation: FederationConfig::default(),
            reset_key: ResetKey::default(),
        }
    }
}
