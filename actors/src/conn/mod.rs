//! One client connection: its admission ([`admit`]), its task ([`task`]),
//! which owns a reader task ([`reader`]: frames in, the routing engine's
//! decisions carried out inline) and a writer task ([`writer`]: its outbox
//! drained and coalesced into QUIC stream writes).
//!
//! Data never crosses the task's control channel: the reader routes each
//! publish by reading the registry directly and pushing into subscribers'
//! outboxes; the writer drains this connection's outbox. The connection task
//! owns the lifecycle and the connection's control.

pub(crate) mod admit;
pub(crate) mod partial;
pub(crate) mod reader;
pub mod shared;
pub(crate) mod task;
pub(crate) mod writer;

pub use admit::SHARED_SECRET_ID;
pub use partial::PARTIAL_FRAME_FREE;
pub use shared::{ConnError, ConnShared};
