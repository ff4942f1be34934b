//! The read side: whole frames out of a byte stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use slim_wire::{Frame, Limits, WireError, codec};
use tokio::io::AsyncRead;

/// What [`FrameReader::read_chunk`] defaults to: 16 KiB.
pub const DEFAULT_READ_CHUNK: usize = 16 * 1024;

/// When less than this is free at the end of the buffer, [`FrameReader::fill`]
/// reserves another read chunk before reading (so reads are not tiny).
const LOW_WATER: usize = 1024;

/// Why reading frames failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer sent bytes that are not a valid frame, or the stream ended
    /// inside a frame ([`WireError::Truncated`]).
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The stream itself failed (connection lost, reset, ...).
    #[error("read: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads length-prefixed frames (`len: u32 BE | kind: u8 | body`) from `R`.
///
/// Frames come out as `kind byte + body` (the length prefix stripped), split
/// off the receive buffer without copying, so a payload can be handed on as a
/// slice of it ([`Bytes::slice_ref`]). The buffer grows on demand only, and a
/// reader waiting with nothing buffered holds no buffer at all: an idle
/// connection costs no receive buffer (see [`fill`](Self::fill)).
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    limits: Limits,
    chunk: usize,
    /// `inner` has reported end of stream; it is not read again.
    eof: bool,
    /// Bytes read from `inner` so far.
    read_total: u64,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader with an empty buffer (nothing is allocated until the first read).
    pub fn new(inner: R, limits: Limits) -> Self {
        Self::with_buffered(inner, BytesMut::new(), limits)
    }

    /// Starts with bytes already read from `inner` (e.g. frames that arrived
    /// with a hello); they come out first.
    pub fn with_buffered(inner: R, buf: BytesMut, limits: Limits) -> Self {
        FrameReader {
            inner,
            buf,
            limits,
            chunk: DEFAULT_READ_CHUNK,
            eof: false,
            read_total: 0,
        }
    }

    /// How much to reserve when the buffer runs low (default
    /// [`DEFAULT_READ_CHUNK`], 16 KiB; links use 64 KiB). The buffer grows on
    /// demand only, so an idle connection keeps a small buffer.
    pub fn read_chunk(mut self, bytes: usize) -> Self {
        self.chunk = bytes.max(1);
        self
    }

    /// The next whole buffered frame as `kind byte + body` (length prefix
    /// stripped), split off the buffer in O(1). `Ok(None)`: need more bytes
    /// (call [`fill`](Self::fill)). A zero or over-limit declared length is an
    /// error as soon as the 4 length bytes are buffered, before the body
    /// arrives ([`codec::check`]).
    pub fn try_next(&mut self) -> Result<Option<Bytes>, WireError> {
        match codec::check(&self.buf, &self.limits)? {
            None => Ok(None),
            Some(total) => {
                let mut frame = self.buf.split_to(total);
                frame.advance(4);
                Ok(Some(frame.freeze()))
            }
        }
    }

    /// Reads more from the stream: `Ok(n)` with `n > 0` bytes read, or `Ok(0)`
    /// at a clean end of stream.
    ///
    /// The end-of-stream rule, for every connection kind: end of stream inside
    /// a frame (a partial frame buffered) is
    /// `Err(ReadError::Wire(WireError::Truncated { buffered }))`. Call this when
    /// [`try_next`](Self::try_next) has returned `None` (as [`next`](Self::next)
    /// does); should whole frames still be buffered at end of stream, `Ok(0)` is
    /// returned and they remain for `try_next` (a partial frame behind them is
    /// reported by the next `fill`). After end of stream the stream is not
    /// read again.
    pub async fn fill(&mut self) -> Result<usize, ReadError> {
        if !self.eof {
            let n = std::future::poll_fn(|cx| self.poll_read_some(cx)).await?;
            if n > 0 {
                self.read_total += n as u64;
                return Ok(n);
            }
            self.eof = true;
        }
        if self.buf.is_empty() || codec::check(&self.buf, &self.limits)?.is_some() {
            return Ok(0);
        }
        Err(WireError::Truncated {
            buffered: self.buf.len(),
        }
        .into())
    }

    /// [`fill`](Self::fill), calling `on_wait` once if the read has to wait
    /// (the stream has nothing for now). A reader uses it to give back what
    /// only a busy connection needs (encode buffers, memos) as the
    /// connection goes idle, without a timer: most connections are idle most
    /// of the time.
    pub async fn fill_idle(&mut self, on_wait: impl FnOnce()) -> Result<usize, ReadError> {
        let mut on_wait = Some(on_wait);
        let mut fill = std::pin::pin!(self.fill());
        std::future::poll_fn(|cx| {
            let p = fill.as_mut().poll(cx);
            if p.is_pending()
                && let Some(f) = on_wait.take()
            {
                f();
            }
            p
        })
        .await
    }

    /// One read into the buffer, reserving a read chunk first when it runs
    /// low. A read that has to wait while nothing is buffered gives the
    /// buffer back: most connections are idle most of the time, and each
    /// would otherwise keep up to a read chunk allocated between messages.
    /// The next poll (when data has arrived) reserves a fresh chunk; frames
    /// split off earlier keep their own part of the old one alive.
    fn poll_read_some(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < LOW_WATER.min(self.chunk) {
            self.buf.reserve(self.chunk);
        }
        let r = tokio_util::io::poll_read_buf(Pin::new(&mut self.inner), cx, &mut self.buf);
        if r.is_pending() && self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        r
    }

    /// The next frame (as [`try_next`](Self::try_next)), reading as needed;
    /// `Ok(None)` at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<Bytes>, ReadError> {
        loop {
            if let Some(frame) = self.try_next()? {
                return Ok(Some(frame));
            }
            if self.fill().await? == 0 {
                return Ok(None);
            }
        }
    }

    /// The next frame decoded ([`codec::decode_body`]); `Ok(None)` at a clean
    /// end of stream.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        match self.next().await? {
            None => Ok(None),
            Some(frame) => Ok(Some(codec::decode_body(&frame)?)),
        }
    }

    /// Bytes read from the stream so far (not counting those this reader
    /// was started with).
    pub fn bytes_read(&self) -> u64 {
        self.read_total
    }

    /// Bytes buffered and not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Bytes the receive buffer holds allocated, used or not (0 while the
    /// reader waits with nothing buffered).
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The limits frames are checked against.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The underlying stream. Reading from it directly bypasses the buffer.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The stream and the bytes buffered but not yet returned as frames.
    pub fn into_parts(self) -> (R, BytesMut) {
        (self.inner, self.buf)
    }
}
