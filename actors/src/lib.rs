//! The node's actor tree (ractor): a node supervisor over the subscription
//! table actor, the federation actor (which supervises one actor per peer
//! link) and the QUIC listener actor (which supervises one actor per client
//! connection). Actors own lifecycle and control; messages flow through
//! bounded per-connection queues ([`outbox`]) and lock-free registry reads
//! ([`registry`]), never through a mailbox per message. Routing decisions are
//! made by an engine with no I/O ([`engine`]).
//!
//! Modules, leaves first: `types`, `hook`, `outbox`, `registry`, `interest`,
//! `metrics`, `config`, `table`, `engine`; then `conn::shared` and
//! `fed::shared`; `ctx` (what every actor shares); the connection kinds
//! (`conn`, `link`), `fed::actor`, `accept`, `listener`; `node` on top.
#![forbid(unsafe_code)]

mod accept;
pub mod admission;
pub mod config;
pub mod conn;
mod ctx;
pub mod engine;
mod fed;
mod gauges;
pub mod hook;
pub mod interest;
mod link;
mod listener;
pub mod logthrottle;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod registry;
mod run;
pub mod sendbudget;
pub mod table;
pub mod types;
mod udp;

pub use config::{
    FederationConfig, JwtAuth, JwtKeys, NodeConfig, QueueConfig, ResetKey, TokenAuth,
};
pub use hook::{HookVerdict, RouteHook, RoutedFrame};
pub use node::{NodeError, NodeHandle, start};
pub use outbox::{Outbox, Push, REPORT_STRETCH, SlowAction, SlowConsumerPolicy};
pub use registry::{ConnId, Registry};
pub use types::{
    ConnStats, LinkDirection, LinkInfo, LinkState, NodeEvent, PeerSpec, RouteInfo, TlsIdentity,
};
