//! Runtime configuration of a node's actor tree (the file format lives in the
//! `node` crate, which maps onto this).

use std::net::SocketAddr;
use std::time::Duration;

use slim_auth::policy::Policy;
use slim_wire::Limits;

use crate::outbox::SlowConsumerPolicy;

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
            max_bytes: 8 << 20,
            policy: SlowConsumerPolicy::DropNewest,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: String,
    pub listen: SocketAddr,
    pub limits: Limits,
    pub queue: QueueConfig,
    /// QUIC+TLS handshake plus the hello exchange must finish within this.
    pub handshake_timeout: Duration,
    /// A connection with no traffic at all for this long is closed.
    pub idle_timeout: Duration,
    /// QUIC keep-alive interval (well under common NAT UDP timeouts).
    pub keep_alive: Duration,
    /// Upper bound on concurrent client connections.
    pub max_connections: usize,
    /// Who may register, publish and subscribe to what. Replaceable at run
    /// time with `NodeHandle::set_policy`.
    pub policy: Policy,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_id: "node-1".into(),
            listen: "127.0.0.1:4500".parse().expect("static address"),
            limits: Limits::default(),
            queue: QueueConfig::default(),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(10),
            max_connections: 100_000,
            policy: Policy::allow_all(),
        }
    }
}
