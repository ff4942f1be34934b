//! A test/diagnostic hook on the routing path.
//!
//! Tests use it to prove what a node sees (the zero-knowledge test records
//! every routed payload of an MLS channel) and to inject loss at the SLIM
//! frame level (QUIC would repair UDP-level loss, so a lossy-path test of the
//! session layer needs frames to vanish above QUIC). With no hook set, the
//! routing path pays one atomic load per publish.

use std::sync::Arc;

use slim_wire::Mode;

/// One publish about to be routed.
#[derive(Debug, Clone, Copy)]
pub struct RoutedFrame<'a> {
    pub name: &'a str,
    pub mode: Mode,
    /// The publisher's registered full name.
    pub from: &'a str,
    pub payload: &'a [u8],
}

/// What the hook decides for one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookVerdict {
    Forward,
    /// Drop silently, as if lost on the way (counted as `reason="hook"`).
    Drop,
}

/// Called for every publish a node routes, on the routing task: keep it cheap.
pub type RouteHook = Arc<dyn Fn(&RoutedFrame<'_>) -> HookVerdict + Send + Sync>;
