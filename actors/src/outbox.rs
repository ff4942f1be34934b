//! A connection's bounded outbound queue and its slow-consumer policy.
//!
//! The publish path pushes encoded frames here from whichever task routed them;
//! one writer task per connection drains it and coalesces frames into large
//! stream writes. The queue is bounded twice: by frame count (the channel) and
//! by bytes (`max_bytes`), so a stalled reader costs at most `max_bytes`.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

/// What to do with a connection whose queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SlowConsumerPolicy {
    /// Drop the newest frame and count it; the connection stays up.
    #[default]
    DropNewest,
    /// Drop while full, and close the connection once the queue has stayed
    /// full for the grace period.
    Disconnect { grace: Duration },
}

/// Outcome of [`Outbox::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// Dropped because the queue is full (slow consumer).
    Dropped,
    /// Dropped, and the policy says this connection must now be closed.
    Disconnect,
    /// The connection is gone.
    Closed,
}

pub struct Outbox {
    tx: mpsc::Sender<Bytes>,
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    policy: SlowConsumerPolicy,
    dropped: AtomicU64,
    closed: AtomicBool,
    full_since: Mutex<Option<Instant>>,
    /// When the oldest frame not yet taken by the writer was queued
    /// (nanoseconds since [`epoch`], 0 = none): one clock read per batch, not
    /// per message, feeds the enqueue-to-write histogram.
    oldest: AtomicU64,
}

static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// The process-wide reference instant for queue timestamps.
pub fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    (epoch().elapsed().as_nanos() as u64).max(1)
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("queued_bytes", &self.queued_bytes())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl Outbox {
    /// A new queue bounded to `max_frames` frames and `max_bytes` bytes.
    pub fn new(
        max_frames: usize,
        max_bytes: usize,
        policy: SlowConsumerPolicy,
    ) -> (Outbox, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(max_frames.max(1));
        (
            Outbox {
                tx,
                queued_bytes: AtomicUsize::new(0),
                max_bytes,
                policy,
                dropped: AtomicU64::new(0),
                closed: AtomicBool::new(false),
                full_since: Mutex::new(None),
                oldest: AtomicU64::new(0),
            },
            rx,
        )
    }

    /// Enqueues a frame without waiting. Never blocks the router.
    pub fn push(&self, frame: Bytes) -> Push {
        if self.closed.load(Ordering::Relaxed) {
            return Push::Closed;
        }
        let len = frame.len();
        let prev = self.queued_bytes.fetch_add(len, Ordering::AcqRel);
        if prev + len > self.max_bytes && prev != 0 {
            // A single frame larger than the cap still goes through on an empty
            // queue, otherwise it could never be delivered.
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            return self.full();
        }
        match self.tx.try_send(frame) {
            Ok(()) => {
                if self.oldest.load(Ordering::Relaxed) == 0 {
                    let _ = self.oldest.compare_exchange(
                        0,
                        now_ns(),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                if self.policy != SlowConsumerPolicy::DropNewest {
                    self.clear_full();
                }
                Push::Queued
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                self.full()
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                self.closed.store(true, Ordering::Relaxed);
                Push::Closed
            }
        }
    }

    /// Enqueues a control frame (acks, errors), waiting for room rather than
    /// dropping it; used only from the connection's own reader.
    pub async fn push_control(&self, frame: Bytes) -> Push {
        if self.closed.load(Ordering::Relaxed) {
            return Push::Closed;
        }
        let len = frame.len();
        self.queued_bytes.fetch_add(len, Ordering::AcqRel);
        match self.tx.send(frame).await {
            Ok(()) => Push::Queued,
            Err(_) => {
                self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                Push::Closed
            }
        }
    }

    fn full(&self) -> Push {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        match self.policy {
            SlowConsumerPolicy::DropNewest => Push::Dropped,
            SlowConsumerPolicy::Disconnect { grace } => {
                let now = Instant::now();
                let mut since = self.full_since.lock();
                let start = *since.get_or_insert(now);
                if now.duration_since(start) >= grace {
                    self.closed.store(true, Ordering::Relaxed);
                    Push::Disconnect
                } else {
                    Push::Dropped
                }
            }
        }
    }

    fn clear_full(&self) {
        if let Some(mut s) = self.full_since.try_lock() {
            *s = None;
        }
    }

    /// Called by the writer after it has handed `n` bytes to the transport.
    pub fn written(&self, n: usize) {
        self.queued_bytes.fetch_sub(n, Ordering::AcqRel);
    }

    /// How long the oldest frame the writer is about to write has waited;
    /// resets the mark so the next push starts a new measurement.
    pub fn take_wait(&self) -> Option<Duration> {
        let t = self.oldest.swap(0, Ordering::Relaxed);
        (t != 0).then(|| Duration::from_nanos(now_ns().saturating_sub(t)))
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Frames dropped because this queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_cap_drops_newest() {
        let (q, mut rx) = Outbox::new(100, 10, SlowConsumerPolicy::DropNewest);
        assert_eq!(q.push(Bytes::from_static(b"123456")), Push::Queued);
        assert_eq!(q.push(Bytes::from_static(b"123456")), Push::Dropped);
        assert_eq!(q.queued_bytes(), 6);
        assert_eq!(q.dropped(), 1);
        let b = rx.try_recv().unwrap();
        q.written(b.len());
        assert_eq!(q.push(Bytes::from_static(b"123456")), Push::Queued);
    }

    #[test]
    fn frame_cap_and_disconnect() {
        let (q, _rx) = Outbox::new(
            1,
            1000,
            SlowConsumerPolicy::Disconnect {
                grace: Duration::ZERO,
            },
        );
        assert_eq!(q.push(Bytes::from_static(b"a")), Push::Queued);
        assert_eq!(q.push(Bytes::from_static(b"b")), Push::Disconnect);
        assert_eq!(q.push(Bytes::from_static(b"c")), Push::Closed);
        assert!(q.is_closed());
    }

    #[test]
    fn oversized_frame_passes_on_empty_queue() {
        let (q, _rx) = Outbox::new(10, 4, SlowConsumerPolicy::DropNewest);
        assert_eq!(q.push(Bytes::from_static(b"0123456789")), Push::Queued);
        assert_eq!(q.push(Bytes::from_static(b"x")), Push::Dropped);
    }
}
