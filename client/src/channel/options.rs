//! Channel options (driver sizing) and the receipt of a published message.

use std::sync::Arc;

use slim_auth::Identity;
use slim_mls::MlsIdentity;

use crate::session::channel::ChannelConfig;

/// Driver sizing.
#[derive(Debug, Clone)]
pub struct ChannelOptions {
    /// The protocol configuration.
    pub config: ChannelConfig,
    /// The MLS identity (required when `config.mls`).
    pub identity: Option<MlsIdentity>,
    /// Inbox capacity (packets).
    pub inbox: usize,
    /// Event queue capacity.
    pub events: usize,
    /// SVID updates (e.g. `IdentitySource::subscribe()`): each new SVID is
    /// re-bound into the channel's MLS group with a self-update commit.
    pub rotation: Option<tokio::sync::watch::Receiver<Arc<Identity>>>,
}

impl ChannelOptions {
    pub fn new(config: ChannelConfig, identity: Option<MlsIdentity>) -> ChannelOptions {
        ChannelOptions {
            config,
            identity,
            inbox: 4096,
            events: 4096,
            rotation: None,
        }
    }
}

/// A published message: its sequence number in our stream and the epoch it
/// was encrypted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub seq: u64,
    pub epoch: u64,
}
