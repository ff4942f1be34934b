//! The framed transport of SLIM: reading `len: u32 BE | kind: u8 | body`
//! frames off a byte stream and writing batches of encoded frames onto one,
//! for every connection kind (node ⇄ client, node ⇄ node, SDK ⇄ node).
//!
//! Why a crate of its own: the read loop (check whether a whole frame is
//! buffered, split it off, read more) and the writer loop (batch from a queue,
//! [`slim_wire::coalesce`], write each chunk) used to be written by hand at
//! every connection kind, with magic offsets, and the copies drifted — half a
//! frame at end of stream was a clean close in one place and an error in
//! another. Here each rule is written once:
//!
//! - [`FrameReader`]: `check → split → advance` in one place
//!   ([`FrameReader::try_next`]), the buffer grows on demand only, and **the**
//!   end-of-stream rule: end of stream with nothing buffered is a clean end,
//!   end of stream inside a frame is [`WireError::Truncated`].
//! - [`FrameWriter`] + [`pump`] / [`drain_now`]: the writer loop (from any
//!   [`FrameSource`]), with small
//!   frames coalesced into chunks of at most 64 KiB and large ones passed
//!   through uncopied; metrics go through a [`WriteHooks`] implementation.
//! - [`queue`]: the bounded short-lock FIFO between pushers and takers (a
//!   node outbox's frames, the SDK's inbound events).
//! - [`datagrams`]: the QUIC datagram size settings every connection kind
//!   shares (path-MTU discovery, and GSO only where quinn's batches fit).
//! - [`task`]: what the node's and the SDK's tasks share (a caught panic's
//!   message).
//!
//! The frame format itself (and its limits) stays in [`slim_wire::codec`],
//! which is sans-IO; this crate is the thin async layer over it.
//!
//! [`WireError::Truncated`]: slim_wire::WireError::Truncated
#![forbid(unsafe_code)]

pub mod datagrams;
pub mod queue;
mod read;
pub mod task;
mod write;

pub use read::{DEFAULT_READ_CHUNK, FrameReader, ReadError};
pub use write::{
    BATCH, COALESCE, ChunkSink, FrameSource, FrameWriter, IoSink, PumpEnd, WriteHooks, drain_now,
    pump,
};
