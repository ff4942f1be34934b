//! The SLIM agent SDK.
//!
//! A [`Client`] dials out to its node over QUIC with mutual TLS (it never
//! listens), registers its full name, and then subscribes, publishes and
//! receives. If the connection drops it reconnects with exponential backoff and
//! jitter and restores its subscriptions; messages published while it is
//! disconnected wait in the bounded outbound queue (publishers block when it is
//! full) and messages in flight on the dead connection are lost (at most once,
//! like NATS core; reliable sessions come with the sessions issue).
#![forbid(unsafe_code)]

mod addr;
pub mod app;
pub mod channel;
mod client;
mod config;
mod confirm;
mod conn;
mod endpoint;
mod error;
mod event;
mod host;
pub mod session;
mod shared;

pub use channel::{
    Channel, ChannelEvent, ChannelMember, ChannelModerator, ChannelOptions, Invitation, Invitations,
};
pub use client::Client;
pub use config::{Backoff, ClientConfig, Credentials, DEFAULT_MAX_UDP_PAYLOAD};
pub use confirm::{CONNECTION_LOST, DisconnectPolicy};
pub use error::ClientError;
pub use event::{ConnState, Delivery, Event};

/// Who the node proved to be at the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The SPIFFE ID in the node's X.509-SVID.
    pub spiffe_id: String,
    /// When the node's certificate expires.
    pub not_after: Option<std::time::SystemTime>,
}
pub use slim_wire::{Deliver, FLAG_NO_ROUTE_SILENT};
