//! The front door: one [`App`] handle per agent.
//!
//! Everything an agent does goes through it: connect by URL with an identity
//! from the SPIFFE Workload API (or spiffe-helper files, a JWT-SVID, or the
//! development shared secret), raw subscribe/publish/receive, point-to-point
//! sessions (opened or accepted), group channels (created as moderator or
//! joined by request or invitation), and request/reply and streaming RPC.
//! Whatever the kind and role, a session is one [`Session`] type; an
//! operation its role cannot do is refused with [`SlimError::WrongRole`].
//!
//! ```no_run
//! # async fn agent() -> Result<(), slim_client::app::SlimError> {
//! use slim_client::app::{App, AppConfig};
//! let app = App::connect(AppConfig::new("slim://127.0.0.1:4500", "acme/eu-west/monitor")).await?;
//! let ch = app.join_channel("acme/monitoring/security-incident", Default::default()).await?;
//! ch.publish(b"hello").await?;
//! while let Ok(msg) = ch.receive().await {
//!     println!("{} [{:?}]: {:?}", msg.source, msg.spiffe_id, msg.payload);
//! }
//! # Ok(()) }
//! ```
//!
//! The machinery underneath ([`crate::Client`], [`SessionMux`],
//! [`crate::channel`], [`crate::session::p2p`], [`crate::session::rpc`])
//! stays available for what this layer does not cover.

mod config;
mod error;
mod front;
mod rpc;
mod session;
mod types;

pub use config::{
    AppConfig, CreateOptions, IdentityConfig, JoinOptions, SessionOptions, parse_url,
};
pub use error::SlimError;
pub use front::App;
pub use rpc::{Request, RpcStream};
pub use session::Session;
pub use types::{Message, Role, SessionEvent, SessionKind};
