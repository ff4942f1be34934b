//! Writing a frame straight onto a client connection's stream (or a peer
//! link's data stream) from the task that routed it, when nothing is queued
//! ahead of it.
//!
//! Why: at low rates (request/reply) every delivery used to wake the
//! connection's writer task only for it to hand one frame to QUIC. That
//! hand-off is a task switch, often a thread wake-up, on the critical path of
//! every request and every reply. A frame that finds its outbox empty and the
//! stream free is now written by the router itself (one hop fewer). Under load
//! the queue is seldom empty, and frames still go through the writer, which
//! coalesces them into large writes.
//!
//! Order: a frame is written directly only while the router holds the
//! stream's lock and the outbox counts no byte (`queued_bytes` counts a frame
//! from before it is queued until the writer has written it), so no frame
//! queued earlier can still be unwritten; frames queued later are written by
//! the writer, which needs the same lock. A frame QUIC takes only in part (the
//! stream's send window ran out inside it) leaves its rest as the *carry*,
//! which the writer writes before anything else; the carry is counted in the
//! outbox, so no other frame goes direct until it is written.

use std::io;

use bytes::Bytes;
use futures::FutureExt;
use quinn::SendStream;

/// The stream of a connection whose outbox may be written around (behind
/// the outbox's lock, shared by the writer task and the routers).
pub(crate) struct Stream {
    send: SendStream,
    /// The unwritten rest of a frame a direct write could write only in part.
    carry: Option<Bytes>,
}

/// What the outbox's `try_direct` did with a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Direct {
    /// Handed to QUIC whole.
    Written,
    /// Handed to QUIC in part; the writer writes the rest before anything else.
    Carried,
    /// Not written (no stream attached, the writer is busy, frames are queued,
    /// or QUIC's send window is full): the frame comes back, to be queued.
    Busy(Bytes),
}

/// What one write attempt did.
pub(crate) enum Attempt {
    Whole,
    /// Written in part; the rest is now the carry (this many bytes).
    Part(usize),
    /// Nothing written.
    None(Bytes),
}

impl Stream {
    pub(crate) fn new(send: SendStream) -> Self {
        Stream { send, carry: None }
    }

    pub(crate) fn has_carry(&self) -> bool {
        self.carry.is_some()
    }

    /// Writes `frame` if QUIC takes any of it right now, never waiting:
    /// `write_chunks` writes nothing unless it resolves, so polling it once
    /// and dropping it when it is pending (send window full) is safe. A
    /// part written leaves the rest as the carry.
    pub(crate) fn try_write(&mut self, frame: Bytes) -> Attempt {
        let mut bufs = [frame];
        match self.send.write_chunks(&mut bufs).now_or_never() {
            Some(Ok(w)) if w.chunks == 1 => Attempt::Whole,
            Some(Ok(_)) => {
                let [rest] = bufs;
                let n = rest.len();
                self.carry = Some(rest);
                Attempt::Part(n)
            }
            // Pending: nothing written. An error: the writer meets it too and
            // ends the connection; the frame is queued (and lost with it).
            Some(Err(_)) | None => {
                let [frame] = bufs;
                Attempt::None(frame)
            }
        }
    }

    /// Writes the carry, if any; how many bytes it held.
    pub(crate) async fn write_carry(&mut self) -> io::Result<usize> {
        match self.carry.take() {
            None => Ok(0),
            Some(rest) => {
                let n = rest.len();
                self.send.write_chunk(rest).await.map_err(io::Error::from)?;
                Ok(n)
            }
        }
    }

    /// Writes `chunk` whole (an empty one is skipped).
    pub(crate) async fn write_chunk(&mut self, chunk: Bytes) -> io::Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.send.write_chunk(chunk).await.map_err(io::Error::from)
    }

    /// Finishes the stream and waits up to `deadline` for the peer to have
    /// received everything.
    pub(crate) async fn finish(&mut self, deadline: std::time::Duration) {
        let _ = self.send.finish();
        let _ = tokio::time::timeout(deadline, self.send.stopped()).await;
    }
}
