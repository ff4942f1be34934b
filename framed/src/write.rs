//! The write side: batches of encoded frames onto a stream, coalesced.

use std::future::Future;
use std::io;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Most frames taken off a queue for one batch.
pub const BATCH: usize = 512;
/// The most a chunk of coalesced small frames holds (64 KiB; a frame that
/// would overflow it starts the next chunk, see [`slim_wire::coalesce`]).
pub const COALESCE: usize = 64 * 1024;

/// Where coalesced chunks go. quinn's [`SendStream`](quinn::SendStream) takes
/// [`Bytes`] without copying; any [`AsyncWrite`] works through [`IoSink`]
/// (tests use `tokio::io::duplex`).
pub trait ChunkSink: Send {
    /// Writes all of `chunk`.
    fn write_chunk(&mut self, chunk: Bytes) -> impl Future<Output = io::Result<()>> + Send;
}

impl ChunkSink for quinn::SendStream {
    /// [`quinn::SendStream::write_chunk`]; its error becomes an `io::Error`
    /// that displays the same message.
    async fn write_chunk(&mut self, chunk: Bytes) -> io::Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        quinn::SendStream::write_chunk(self, chunk)
            .await
            .map_err(io::Error::from)
    }
}

/// A [`ChunkSink`] over any [`AsyncWrite`]: each chunk is written whole, then
/// flushed (so a buffered writer does not hold frames back).
#[derive(Debug)]
pub struct IoSink<W>(pub W);

impl<W: AsyncWrite + Unpin + Send> ChunkSink for IoSink<W> {
    async fn write_chunk(&mut self, chunk: Bytes) -> io::Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.0.write_all(&chunk).await?;
        self.0.flush().await
    }
}

/// Writes encoded frames (each `len | kind | body`, as [`slim_wire::codec`]
/// produces them) to a [`ChunkSink`], coalescing small ones.
#[derive(Debug)]
pub struct FrameWriter<S> {
    sink: S,
    max_chunk: usize,
    /// Scratch for [`slim_wire::coalesce`]; empty between calls.
    chunks: Vec<Bytes>,
}

impl<S: ChunkSink> FrameWriter<S> {
    /// A writer that coalesces small frames into buffers of about 64 KiB
    /// ([`COALESCE`]).
    pub fn new(sink: S) -> Self {
        FrameWriter {
            sink,
            max_chunk: COALESCE,
            chunks: Vec::new(),
        }
    }

    /// Writes (and drains) a batch of encoded frames, in order: small ones
    /// coalesced via [`slim_wire::coalesce`], large ones (at least a quarter
    /// of 64 KiB) and a lone frame passed through uncopied, one sink write per
    /// chunk. Returns the bytes written. On error the rest of the batch is
    /// dropped (the stream is broken anyway).
    pub async fn write_batch(&mut self, batch: &mut Vec<Bytes>) -> io::Result<usize> {
        let total: usize = batch.iter().map(Bytes::len).sum();
        slim_wire::coalesce(batch, self.max_chunk, &mut self.chunks);
        if self.chunks.is_empty() {
            // A batch of empty frames still reaches the sink once: an empty
            // frame is how a sink with bytes of its own to write first (the
            // node's direct-write carry) is woken.
            self.chunks.push(Bytes::new());
        }
        // Sinks skip empty chunks themselves.
        write_all(&mut self.sink, &mut self.chunks).await?;
        Ok(total)
    }

    /// Writes (and drains) chunks the caller already grouped (e.g. with
    /// [`slim_wire::coalesce_from`]), each as it is: grouping them again
    /// would copy the smaller ones a second time. Returns the bytes written.
    pub async fn write_chunks(&mut self, chunks: &mut Vec<Bytes>) -> io::Result<usize> {
        write_all(&mut self.sink, chunks).await
    }

    /// Writes one encoded frame as its own chunk, uncopied.
    pub async fn write_frame(&mut self, frame: Bytes) -> io::Result<()> {
        if frame.is_empty() {
            return Ok(());
        }
        self.sink.write_chunk(frame).await
    }

    /// The sink (e.g. to finish a QUIC stream).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    /// The sink.
    pub fn into_inner(self) -> S {
        self.sink
    }
}

/// Writes `chunks` to `sink` in order, draining them: if a write fails or
/// the future is dropped, the drain empties the rest, so a later call
/// writes nothing stale. Returns the bytes written.
async fn write_all<S: ChunkSink>(sink: &mut S, chunks: &mut Vec<Bytes>) -> io::Result<usize> {
    let mut total = 0;
    for chunk in chunks.drain(..) {
        total += chunk.len();
        sink.write_chunk(chunk).await?;
    }
    Ok(total)
}

/// The metrics hook of a writer loop ([`pump`], [`drain_now`]).
pub trait WriteHooks: Send {
    /// Called with a batch taken off the queue, before it is written (e.g.
    /// to measure how long it waited, or to count the frames inside its
    /// items). No-op by default.
    fn taken(&mut self, batch: &[Bytes]) {
        let _ = batch;
    }

    /// Called after each batch is written: how many items (frames, or runs
    /// of frames the queue holds as one) and bytes.
    fn written(&mut self, frames: usize, bytes: usize);
}

/// No metrics.
impl WriteHooks for () {
    fn written(&mut self, _frames: usize, _bytes: usize) {}
}

/// Where a writer loop ([`pump`], [`drain_now`]) takes its frames from: a
/// `tokio::sync::mpsc` channel, or the node's own outbox queue.
pub trait FrameSource: Send {
    /// Moves up to `limit` frames into `batch`, waiting until there is at
    /// least one; 0 once no more can come (every sender is gone).
    fn recv_many<'a>(
        &'a mut self,
        batch: &'a mut Vec<Bytes>,
        limit: usize,
    ) -> impl Future<Output = usize> + Send + 'a;

    /// The next frame if one is queued now.
    fn try_recv(&mut self) -> Option<Bytes>;
}

impl FrameSource for mpsc::Receiver<Bytes> {
    fn recv_many<'a>(
        &'a mut self,
        batch: &'a mut Vec<Bytes>,
        limit: usize,
    ) -> impl Future<Output = usize> + Send + 'a {
        mpsc::Receiver::recv_many(self, batch, limit)
    }

    fn try_recv(&mut self) -> Option<Bytes> {
        mpsc::Receiver::try_recv(self).ok()
    }
}

/// How a [`pump`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PumpEnd {
    /// The queue's senders are all gone and it is empty.
    Closed,
    /// `stop` resolved first; frames may remain in the queue (see [`drain_now`]).
    Stopped,
}

/// The writer loop of every connection kind: takes up to [`BATCH`] frames
/// from `rx` at a time, writes them ([`FrameWriter::write_batch`]) and reports
/// each batch to `hooks`, until the channel is closed and empty
/// ([`PumpEnd::Closed`]) or `stop` resolves ([`PumpEnd::Stopped`]).
///
/// Frames already queued go first: `stop` is looked at only when the queue is
/// empty (as the node's client writer did), and never while a batch is being
/// written. An I/O error ends the loop with that error.
pub async fn pump<S: ChunkSink>(
    rx: &mut impl FrameSource,
    w: &mut FrameWriter<S>,
    hooks: &mut impl WriteHooks,
    // Pinned by the caller: pinned here, it would be held twice in this
    // future (the argument and the pinned copy).
    mut stop: impl Future<Output = ()> + Unpin,
) -> io::Result<PumpEnd> {
    // Grows with load (recv_many appends up to BATCH) instead of reserving
    // BATCH slots up front for every idle connection.
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        tokio::select! {
            biased;
            n = rx.recv_many(&mut batch, BATCH) => if n == 0 {
                return Ok(PumpEnd::Closed);
            },
            () = &mut stop => return Ok(PumpEnd::Stopped),
        }
        // Boxed: writing's future (it may wait for the transport) would
        // otherwise sit in every idle connection's writer task; one
        // allocation per batch instead.
        Box::pin(write_one(&mut batch, w, hooks)).await?;
    }
}

/// Writes whatever is queued right now (`try_recv`), in batches of up to
/// [`BATCH`], reporting each to `hooks`; for draining at shutdown. Returns
/// once the queue is empty (it does not wait for more).
pub async fn drain_now<S: ChunkSink>(
    rx: &mut impl FrameSource,
    w: &mut FrameWriter<S>,
    hooks: &mut impl WriteHooks,
) -> io::Result<()> {
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        while batch.len() < BATCH {
            match rx.try_recv() {
                Some(b) => batch.push(b),
                None => break,
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        write_one(&mut batch, w, hooks).await?;
    }
}

async fn write_one<S: ChunkSink>(
    batch: &mut Vec<Bytes>,
    w: &mut FrameWriter<S>,
    hooks: &mut impl WriteHooks,
) -> io::Result<()> {
    let frames = batch.len();
    hooks.taken(batch);
    let bytes = w.write_batch(batch).await?;
    hooks.written(frames, bytes);
    Ok(())
}
