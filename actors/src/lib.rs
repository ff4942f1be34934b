//! The node's actor tree (ractor): a node supervisor over the subscription
//! table actor and the QUIC listener actor, which supervises one actor per
//! client connection. Actors own lifecycle and control; messages flow through
//! bounded per-connection queues ([`outbox`]) and lock-free registry reads
//! ([`registry`]), never through a mailbox per message.
#![forbid(unsafe_code)]

pub mod config;
pub mod conn;
pub mod engine;
pub mod federation;
pub mod hook;
pub mod interest;
mod link;
pub mod listener;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod registry;
mod router;
pub mod table;
mod writer;

pub use config::{FederationConfig, JwtAuth, JwtKeys, NodeConfig, QueueConfig, TokenAuth};
pub use federation::{LinkDirection, LinkInfo, LinkState, NodeEvent, PeerSpec, RouteInfo};
pub use hook::{HookVerdict, RouteHook, RoutedFrame};
pub use node::{ConnStats, NodeError, NodeHandle, TlsIdentity, start};
pub use outbox::{Outbox, Push, SlowConsumerPolicy};
pub use registry::{ConnId, Registry};
