//! How a client connects: [`ClientConfig`], its [`Credentials`] and [`Backoff`].

use std::net::SocketAddr;
use std::time::Duration;

use slim_auth::{Identity, IdentitySource, ServerMatch, TrustBundles};
use slim_wire::{Limits, Name};

use crate::addr;
use crate::confirm::DisconnectPolicy;
use crate::error::ClientError;

/// Reconnection backoff: `initial * 2^n` capped at `max`, each wait randomized
/// to between half and the full value so a fleet does not reconnect in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The wait before attempt `n` (0-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX));
        let capped = exp.min(self.max);
        let jitter: f64 = rand::random_range(0.5..=1.0);
        capped.mul_f64(jitter)
    }
}

/// How a client proves who it is.
#[derive(Clone)]
pub enum Credentials {
    /// Mutual TLS with a fixed X.509-SVID.
    Svid(Identity),
    /// Mutual TLS with the SVID of a source that rotates (SPIRE Workload
    /// API, watched spiffe-helper files, development CA). New connections
    /// always present the latest SVID.
    Source(IdentitySource),
    /// Server-authenticated TLS plus a JWT-SVID for `audience` in the hello,
    /// fetched from the source at every (re)connect. For environments where
    /// the client cannot present a certificate.
    Jwt {
        source: IdentitySource,
        audience: String,
    },
    /// INSECURE, development only: a shared secret instead of an identity.
    /// `bundles` authenticates the node.
    SharedSecret {
        secret: String,
        bundles: TrustBundles,
    },
}

impl Credentials {
    /// The SPIFFE ID this client expects to be known as, if it has one.
    pub fn spiffe_id(&self) -> Option<slim_auth::SpiffeId> {
        match self {
            Credentials::Svid(i) => Some(i.spiffe_id.clone()),
            Credentials::Source(s) | Credentials::Jwt { source: s, .. } => Some(s.spiffe_id()),
            Credentials::SharedSecret { .. } => None,
        }
    }
}

/// [`ClientConfig::max_udp_payload`]'s default: Ethernet's 1,500 less the
/// IPv6 and UDP headers (the node's client default too).
pub const DEFAULT_MAX_UDP_PAYLOAD: u16 = slim_framed::datagrams::ETHERNET_UDP_PAYLOAD;

#[derive(Clone)]
pub struct ClientConfig {
    /// The node to dial (when `host` is unset).
    pub node: SocketAddr,
    /// `host:port` resolved with the system resolver at every (re)connect;
    /// each address it resolves to is tried in turn. Overrides `node`.
    pub host: Option<String>,
    /// TLS server name sent in SNI (SPIFFE verification ignores it).
    pub server_name: String,
    /// Which server identities to accept.
    pub server: ServerMatch,
    /// This client's name; an instance id is generated when it has none.
    pub name: Name,
    pub credentials: Credentials,
    pub limits: Limits,
    pub backoff: Backoff,
    pub connect_timeout: Duration,
    /// Close the connection after this long without any packet from the
    /// node (QUIC uses the smaller of this and the node's value). This is
    /// what notices a node that is gone for good; a node restarted on the
    /// same port is noticed at the next packet this client sends.
    pub idle_timeout: Duration,
    /// Send a QUIC PING after this long without receiving anything. A node
    /// restarted on the same port answers it with a stateless reset, so this
    /// bounds how long a restart goes unnoticed by an idle client.
    pub keep_alive: Duration,
    /// Deliveries buffered for the application before the node is pushed back on.
    pub inbound_capacity: usize,
    /// Encoded frames buffered for sending before publishers wait.
    pub outbound_capacity: usize,
    /// Bytes of encoded frames buffered for sending before publishers wait
    /// (whichever of this and `outbound_capacity` is reached first). Bytes
    /// leave the count when the connection driver has handed their frame to
    /// QUIC. A frame larger than this is still sent, alone. Default 4 MiB.
    pub outbound_bytes: usize,
    /// How long `subscribe`/`unsubscribe` wait for the node's answer.
    pub request_timeout: Duration,
    /// QUIC flow-control window for the frame stream: how many bytes the node
    /// may send ahead of what this client has read.
    pub stream_window: u32,
    /// The largest UDP payload QUIC's path-MTU discovery probes for
    /// (default 1,452: within Ethernet's 1,500; 8,952 fits a 9,000-byte jumbo
    /// frame). Datagrams start at 1,200 bytes and grow only by probes the
    /// path acknowledged. To a node on this host (a loopback address) they
    /// start at 6,550, or at this value if larger, with nothing to probe.
    pub max_udp_payload: u16,
    /// Record SDK metrics (`slim_client_*`) into the process's `metrics`
    /// recorder. Off by default: an agent that installs no recorder pays nothing.
    pub metrics: bool,
    /// What happens to publishes when the connection drops: held and
    /// written again after the reconnect, or failed with an error the
    /// publisher sees. Never dropped silently.
    pub on_disconnect: DisconnectPolicy,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("node", &self.node)
            .field("name", &self.name)
            .field("identity", &self.credentials.spiffe_id())
            .finish()
    }
}

impl ClientConfig {
    pub fn new(node: SocketAddr, name: Name, identity: Identity) -> Self {
        Self::with_credentials(node, name, Credentials::Svid(identity))
    }

    /// A config for the node at `url` (`slim://host:port` or `host:port`):
    /// the host is resolved now and again at every reconnect, and each
    /// address it resolves to is tried. "Cannot resolve" is
    /// [`ClientError::Resolve`], distinct from "cannot connect".
    pub async fn for_url(
        url: &str,
        name: Name,
        credentials: Credentials,
    ) -> Result<Self, ClientError> {
        // Worded as `SlimError::Invalid` displays (what `app::parse_url` fails with).
        let host = addr::split_url(url).map_err(|e| ClientError::Resolve {
            host: url.to_owned(),
            reason: format!("invalid argument: {e}"),
        })?;
        let addrs = addr::resolve(&host, Duration::from_secs(10)).await?;
        // The address picks the socket's family (reconnects try only that
        // family): IPv4 when the name has one, since nodes listen on
        // 0.0.0.0 by default and names such as `localhost` may list ::1
        // first, where nothing answers.
        let node = *addrs.iter().find(|a| a.is_ipv4()).unwrap_or(&addrs[0]);
        let mut cfg = Self::with_credentials(node, name, credentials);
        cfg.host = Some(host);
        Ok(cfg)
    }

    pub fn with_credentials(node: SocketAddr, name: Name, credentials: Credentials) -> Self {
        ClientConfig {
            node,
            host: None,
            server_name: "slim-node".into(),
            server: ServerMatch::Any,
            name,
            credentials,
            limits: Limits::default(),
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(10),
            // A restarted node is noticed within one keep-alive plus a
            // round trip, and the first reconnect follows within
            // `backoff.initial` (100 ms): well under a second in all. The
            // cost: an idle client sends one PING (~40-byte datagram) every
            // 300 ms and the node answers with an ACK, about 7 packets/s
            // (~300 B/s) per idle client; 10,000 idle clients are ~33,000
            // packets/s into the node. A client that is busy receiving sends
            // ACKs anyway and no PINGs at all.
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_millis(300),
            inbound_capacity: 65_536,
            // A publish waits once 4,096 frames or 4 MiB wait to be handed
            // to QUIC, so a publisher slowed by the node is at most that far
            // ahead of it (65,536 frames let a 1 -> 1000 fan-out publisher
            // run tens of seconds ahead). 4,096 is eight of the writer's
            // batches, enough to keep it busy while the publisher runs.
            outbound_capacity: 4096,
            outbound_bytes: 4 << 20,
            request_timeout: Duration::from_secs(10),
            stream_window: 4 << 20,
            max_udp_payload: DEFAULT_MAX_UDP_PAYLOAD,
            metrics: false,
            on_disconnect: DisconnectPolicy::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_capped_with_jitter() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for attempt in 0..30 {
            let d = b.delay(attempt);
            let full = Duration::from_millis(100)
                .saturating_mul(1 << attempt.min(20))
                .min(Duration::from_secs(1));
            assert!(
                d <= full && d >= full / 2,
                "attempt {attempt}: {d:?} vs {full:?}"
            );
        }
    }
}
