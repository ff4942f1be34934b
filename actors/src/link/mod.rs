//! Peer links between nodes.
//!
//! A link is one QUIC connection with two streams, both opened by the dialler:
//! the *data* stream (`PeerHello`/`PeerAccept`, then `Forward` frames both
//! ways) and the *control* stream (`Interest`, `Ping`/`Pong`), sent at a
//! higher QUIC priority so that liveness and interest are never stuck behind
//! bulk data. Whoever can reach the other dials; the link then carries
//! traffic both ways, so a node behind NAT needs no inbound port.
//!
//! By job: [`admit`] (an incoming `PeerHello`), [`actor`] (the link actor),
//! [`dial`] (the dial loop), [`handshake`] (both handshakes), [`session`] (a
//! live session and its four I/O tasks), [`forward`] (the routing engine's
//! driver for forwarded publishes), [`error`].
//!
//! Dependency order, one way: admit → actor → dial → handshake → session →
//! forward; everything may use error.

pub(crate) mod actor;
pub(crate) mod admit;
pub(crate) mod dial;
pub(crate) mod error;
pub(crate) mod forward;
pub(crate) mod handshake;
pub(crate) mod session;
