//! The SLIM controller: nodes register with it over QUIC + mutual TLS; it
//! plans which node dials which ([`plan`]), pushes those plans, keeps the
//! fleet view ([`fleet`]) and a persistent audit trail of joins and leaves
//! ([`store`]), and answers `slimctl` admin requests. The protocol
//! ([`proto`]) is sans-IO, and so are both halves of reporting: the node's
//! ([`report`]: full report, then deltas) and the controller's ([`view`]);
//! [`conn`] is the client side used by nodes and `slimctl`. The controller is never on the data path: if it is down,
//! existing links and routes keep working.
#![forbid(unsafe_code)]

pub mod authz;
pub mod check;
pub mod config;
pub mod conn;
pub mod fleet;
pub mod http;
pub mod metrics;
pub mod plan;
pub mod proto;
pub mod report;
pub mod server;
pub mod store;
pub mod view;

pub use conn::{ConnError, ControllerConn, FramedStream};
pub use fleet::FleetConfig;
pub use proto::{ALPN_CONTROLLER, Limits};
pub use server::{ControllerConfig, ControllerError, ControllerHandle, ControllerIdentity, start};
