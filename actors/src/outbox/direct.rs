//! Writing a frame straight onto a client connection's stream from the task
//! that routed it, when nothing is queued ahead of it.
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
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures::FutureExt;
use quinn::SendStream;
use slim_framed::ChunkSink;

use super::Outbox;

/// The stream of a connection whose outbox may be written around.
pub(crate) struct Stream {
    send: SendStream,
    /// The unwritten rest of a frame a direct write could write only in part.
    carry: Option<Bytes>,
}

/// What [`Outbox::try_direct`] did with a frame.
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

impl Outbox {
    /// Attaches the connection's stream: from now on the writer task writes
    /// through [`Outbox::writer_sink`], and routers may write around the queue
    /// ([`Outbox::try_direct`]). A second call is ignored (one stream per
    /// connection).
    pub(crate) fn attach(&self, send: SendStream) {
        let _ = self
            .stream
            .set(tokio::sync::Mutex::new(Stream { send, carry: None }));
    }

    /// The writer task's sink: writes a pending carry first, then the chunk.
    pub(crate) fn writer_sink(self: &Arc<Self>) -> WriterSink {
        WriterSink(Arc::clone(self))
    }

    /// Writes `frame` onto the stream now, without waking the writer, if
    /// nothing is queued or being written ahead of it; otherwise hands it back
    /// ([`Direct::Busy`]) to be queued as usual. Never waits.
    pub fn try_direct(&self, frame: Bytes) -> Direct {
        let Some(stream) = self.stream.get() else {
            return Direct::Busy(frame);
        };
        // The writer holds the lock while it writes; it is busy anyway then.
        let Ok(mut s) = stream.try_lock() else {
            return Direct::Busy(frame);
        };
        if s.carry.is_some()
            || self.queued_bytes.load(Ordering::SeqCst) != 0
            || self.closed.load(Ordering::Relaxed)
        {
            return Direct::Busy(frame);
        }
        let len = frame.len();
        let mut bufs = [frame];
        // `write_chunks` writes nothing unless it resolves, so polling it once
        // and dropping it when it is pending (send window full) is safe.
        match s.send.write_chunks(&mut bufs).now_or_never() {
            Some(Ok(w)) if w.chunks == 1 => {
                self.direct.fetch_add(1, Ordering::Relaxed);
                Direct::Written
            }
            Some(Ok(_)) => {
                let [rest] = bufs;
                self.queued_bytes.fetch_add(rest.len(), Ordering::SeqCst);
                s.carry = Some(rest);
                drop(s);
                self.direct.fetch_add(1, Ordering::Relaxed);
                self.carried.fetch_add(1, Ordering::Relaxed);
                // Wake the writer for the carry; an empty frame writes nothing
                // itself. A full queue means the writer is awake already; a
                // closed one, that the connection is going.
                let _ = self.tx.try_send(Bytes::new());
                Direct::Carried
            }
            // Pending: nothing written. An error: the writer meets it too and
            // ends the connection; the frame is queued (and lost with it).
            Some(Err(_)) | None => {
                let [frame] = bufs;
                debug_assert_eq!(frame.len(), len);
                Direct::Busy(frame)
            }
        }
    }

    /// Frames written around the queue by [`Outbox::try_direct`].
    pub fn direct_writes(&self) -> u64 {
        self.direct.load(Ordering::Relaxed)
    }

    /// Of those, the frames QUIC took only in part (their rest was carried).
    pub fn carried(&self) -> u64 {
        self.carried.load(Ordering::Relaxed)
    }
}

/// The writer task's [`ChunkSink`] for a connection with an attached stream.
pub(crate) struct WriterSink(Arc<Outbox>);

impl WriterSink {
    /// Finishes the stream (no more data) and waits up to `deadline` for the
    /// peer to have received everything.
    pub(crate) async fn finish(&self, deadline: std::time::Duration) {
        let Some(stream) = self.0.stream.get() else {
            return;
        };
        let mut s = stream.lock().await;
        let _ = s.send.finish();
        let _ = tokio::time::timeout(deadline, s.send.stopped()).await;
    }
}

impl ChunkSink for WriterSink {
    async fn write_chunk(&mut self, chunk: Bytes) -> io::Result<()> {
        let Some(stream) = self.0.stream.get() else {
            return Err(io::Error::other("no stream attached to the outbox"));
        };
        let mut s = stream.lock().await;
        if let Some(rest) = s.carry.take() {
            let n = rest.len();
            s.send.write_chunk(rest).await.map_err(io::Error::from)?;
            self.0.written(n);
        }
        if chunk.is_empty() {
            return Ok(());
        }
        s.send.write_chunk(chunk).await.map_err(io::Error::from)
    }
}
