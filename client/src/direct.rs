//! Writing a publish straight onto the QUIC stream from the publisher's own
//! task, when nothing is queued ahead of it.
//!
//! Why: at low rates (request/reply) every publish used to go through the
//! outbound queue to the connection's writer task only for that task to hand
//! one frame to QUIC: a task switch, often a thread wake-up, on the path of
//! every request and every reply. A publish that finds the queue empty and the
//! stream free is now handed to QUIC by the publisher itself. Under load the
//! queue is seldom empty and frames still go through the writer, which
//! coalesces them.
//!
//! Guarantees kept (the writer's, see [`crate::confirm`]):
//! - Order: a frame goes direct only while its publisher holds the [`Wire`]
//!   lock and the outbound queue counts no byte ([`OutboundBytes`] counts a
//!   frame from before it is queued until the writer has written it), so no
//!   frame queued earlier is still unwritten; frames queued later are written
//!   by the writer, which needs the same lock.
//! - Confirmation: a direct frame is recorded in [`Unconfirmed`] (under the
//!   same lock as the write, so sequence numbers follow stream order) and
//!   replayed or failed after a reconnect like any other; the writer is woken
//!   to schedule its confirming ping within [`PING_DELAY`](crate::confirm).
//! - Budget: a frame QUIC takes only in part (the send window ran out inside
//!   it) leaves its rest as the *carry*, counted in the queue's bytes (so
//!   nothing else goes direct and `flush` waits for it) and written by the
//!   writer before anything else.
//! - Never waits: QUIC is polled once; a full window, a busy writer, a full
//!   confirmation buffer or no connection sends the frame to the queue.

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use slim_framed::{ChunkSink, IoSink};
use tokio::io::AsyncWrite;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::confirm::{Confirmations, OutboundBytes, Unconfirmed};

/// What a write that must not wait did.
pub(crate) enum TryWrite {
    /// Taken whole.
    Whole,
    /// Taken in part; the rest.
    Part(Bytes),
    /// Nothing taken (window full, or the stream failed: the writer meets
    /// that error too).
    Nothing,
}

/// A [`ChunkSink`] that can also take a chunk without waiting.
pub(crate) trait TrySink: ChunkSink {
    fn try_write(&mut self, chunk: Bytes) -> TryWrite;
}

impl TrySink for quinn::SendStream {
    fn try_write(&mut self, chunk: Bytes) -> TryWrite {
        let mut bufs = [chunk];
        // `write_chunks` takes nothing unless it resolves, so polling it once
        // and dropping it when pending is safe.
        let r = {
            let fut = pin!(self.write_chunks(&mut bufs));
            fut.poll(&mut Context::from_waker(Waker::noop()))
        };
        let [rest] = bufs;
        match r {
            Poll::Ready(Ok(w)) if w.chunks == 1 => TryWrite::Whole,
            Poll::Ready(Ok(w)) if w.bytes > 0 => TryWrite::Part(rest),
            _ => TryWrite::Nothing,
        }
    }
}

/// For tests over in-memory pipes.
impl<W: AsyncWrite + Unpin + Send> TrySink for IoSink<W> {
    fn try_write(&mut self, chunk: Bytes) -> TryWrite {
        match Pin::new(&mut self.0).poll_write(&mut Context::from_waker(Waker::noop()), &chunk) {
            Poll::Ready(Ok(n)) if n == chunk.len() => TryWrite::Whole,
            Poll::Ready(Ok(n)) if n > 0 => TryWrite::Part(chunk.slice(n..)),
            _ => TryWrite::Nothing,
        }
    }
}

/// The live connection's send stream and what must change with each write
/// on it (one lock: a frame's sequence number is its place on the stream).
pub(crate) struct Wire<S> {
    /// `None` while disconnected: nothing goes direct then.
    sink: Option<S>,
    /// The unwritten rest of a frame a direct write took only in part.
    carry: Option<Bytes>,
    pub(crate) unconfirmed: Unconfirmed,
    /// When the oldest write not yet followed by a confirming ping was made.
    pub(crate) owed_since: Option<Instant>,
}

impl<S: TrySink> Wire<S> {
    pub(crate) fn attach(&mut self, sink: S) {
        self.sink = Some(sink);
    }

    /// Takes the stream off (the connection is gone). A carry goes with
    /// it: its frame is whole in `unconfirmed`, for the policy to handle.
    pub(crate) fn detach(&mut self, budget: &OutboundBytes) -> Option<S> {
        if let Some(c) = self.carry.take() {
            budget.give_back(c.len());
        }
        self.sink.take()
    }

    fn sink(&mut self) -> io::Result<&mut S> {
        self.sink
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "no connection"))
    }

    /// Writes the carry, if any, and gives its bytes back.
    pub(crate) async fn write_carry(&mut self, budget: &OutboundBytes) -> io::Result<()> {
        if let Some(rest) = self.carry.take() {
            let n = rest.len();
            let r = self.sink()?.write_chunk(rest).await;
            budget.give_back(n);
            r?;
        }
        Ok(())
    }

    /// Writes `chunk` whole, after the carry.
    pub(crate) async fn write_chunk(
        &mut self,
        chunk: Bytes,
        budget: &OutboundBytes,
    ) -> io::Result<()> {
        self.write_carry(budget).await?;
        self.sink()?.write_chunk(chunk).await
    }
}

impl<S> Default for Wire<S> {
    fn default() -> Self {
        Wire {
            sink: None,
            carry: None,
            unconfirmed: Unconfirmed::default(),
            owed_since: None,
        }
    }
}

/// The connection's write side, shared by the publishers (direct writes) and
/// the writer task.
pub(crate) struct Outbound<S> {
    /// The bytes in the outbound queue (and a carry).
    pub(crate) budget: OutboundBytes,
    pub(crate) wire: tokio::sync::Mutex<Wire<S>>,
    /// Wakes the writer: a direct write owes a ping, or left a carry.
    pub(crate) wake: Notify,
    /// Publishes written direct (for `Client::direct_writes`).
    pub(crate) direct_writes: AtomicU64,
}

impl<S> Outbound<S> {
    pub(crate) fn new(limit: usize) -> Self {
        Outbound {
            budget: OutboundBytes::new(limit),
            wire: tokio::sync::Mutex::new(Wire::default()),
            wake: Notify::new(),
            direct_writes: AtomicU64::new(0),
        }
    }
}

impl<S: TrySink> Outbound<S> {
    /// Hands `frame` to QUIC at once if nothing is ahead of it and QUIC
    /// takes it without waiting; otherwise gives it back, to be queued.
    pub(crate) fn try_direct(&self, frame: Bytes, c: &Confirmations) -> Result<(), Bytes> {
        let budget = &self.budget;
        let Ok(mut w) = self.wire.try_lock() else {
            return Err(frame);
        };
        // Checked under the lock: the writer holds it from before it
        // writes a batch until after, and the batch's bytes stay counted
        // until then.
        if budget.queued() != 0 || w.carry.is_some() {
            return Err(frame);
        }
        w.unconfirmed.trim(c.confirmed());
        if w.unconfirmed.full() {
            return Err(frame);
        }
        let Some(sink) = w.sink.as_mut() else {
            return Err(frame);
        };
        match sink.try_write(frame.clone()) {
            TryWrite::Nothing => return Err(frame),
            TryWrite::Whole => {}
            TryWrite::Part(rest) => {
                budget.add(rest.len());
                w.carry = Some(rest);
            }
        }
        w.unconfirmed.push(frame);
        c.note_written(w.unconfirmed.seq());
        let wake = w.carry.is_some() || w.owed_since.is_none();
        if w.owed_since.is_none() {
            w.owed_since = Some(Instant::now());
        }
        drop(w);
        self.direct_writes.fetch_add(1, Ordering::Relaxed);
        if wake {
            self.wake.notify_one();
        }
        Ok(())
    }
}
