//! What a client hands the application ([`Event`], [`Delivery`]) and its
//! observable connection state ([`ConnState`]).

use std::sync::Arc;

use bytes::Bytes;
use slim_wire::{ErrorFrame, Mode, Name};

/// A message delivered to this client.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The name it was published to.
    pub name: Name,
    pub mode: Mode,
    /// The publisher's full name.
    pub from: Name,
    /// The publisher's SPIFFE ID as authenticated by its node.
    pub from_identity: Option<Arc<str>>,
    pub msg_id: u64,
    pub payload: Bytes,
}

/// What the client hands the application.
#[derive(Debug, Clone)]
pub enum Event {
    Message(Delivery),
    /// An error the node reported about something this client sent (e.g. no route).
    Error(ErrorFrame),
}

/// Connection state, observable through [`Client::state`](crate::Client::state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnState {
    Connected { node_id: String },
    Reconnecting { attempt: u32, last_error: String },
    Closed,
}
