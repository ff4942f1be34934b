//! The frames of one outbox between the routers that push them and the
//! writer task that takes them: a bounded FIFO under a short lock.
//!
//! Why not `tokio::sync::mpsc`: a fan-out pushes one copy per subscriber per
//! message, and the bounded channel spends a semaphore permit, a block
//! lookup, a slot-ready flag and a receiver wake-up on each (a fifth of the
//! node's CPU at 1 → 100, in `perf`). Here a push is a lock, a `VecDeque`
//! push and an unlock; the writer is woken only when the queue goes from
//! empty to non-empty (it sleeps only after finding it empty), and it takes
//! up to a batch per lock. An idle queue holds no buffer (the channel kept a
//! block of 32 slots per connection).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// A drained queue whose buffer outgrew this many slots gives it back (an
/// idle connection should not keep a burst's worth of slots).
const KEEP_SLOTS: usize = 1024;

/// Why a push was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `max_frames` are queued: the frame is handed back.
    Full(Bytes),
    /// The writer is gone (the connection is closing).
    Closed,
}

#[derive(Debug)]
struct State {
    frames: VecDeque<Bytes>,
    /// The writer ([`QueueRx`]) was dropped: pushes are refused.
    rx_gone: bool,
    /// The pushing side ([`Queue`]) was dropped: the writer ends once it has
    /// taken what is left.
    tx_gone: bool,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    /// Wakes the writer; a notification sent while it is not waiting is kept
    /// as a permit, so one sent between its check and its wait is not lost.
    ready: Notify,
    max_frames: usize,
}

/// The pushing side, owned by the outbox.
#[derive(Debug)]
pub(crate) struct Queue(Arc<Inner>);

/// The taking side, owned by the writer task.
#[derive(Debug)]
pub struct QueueRx(Arc<Inner>);

/// A queue of at most `max_frames` frames (at least one).
pub(crate) fn queue(max_frames: usize) -> (Queue, QueueRx) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State {
            frames: VecDeque::new(),
            rx_gone: false,
            tx_gone: false,
        }),
        ready: Notify::new(),
        max_frames: max_frames.max(1),
    });
    (Queue(Arc::clone(&inner)), QueueRx(inner))
}

impl Queue {
    /// Appends `frame` unless the queue is full or the writer is gone.
    pub(crate) fn push(&self, frame: Bytes) -> Result<(), Refused> {
        let was_empty = {
            let mut s = self.0.state.lock();
            if s.rx_gone {
                return Err(Refused::Closed);
            }
            if s.frames.len() >= self.0.max_frames {
                return Err(Refused::Full(frame));
            }
            s.frames.push_back(frame);
            s.frames.len() == 1
        };
        if was_empty {
            self.0.ready.notify_one();
        }
        Ok(())
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.0.state.lock().tx_gone = true;
        self.0.ready.notify_one();
    }
}

impl QueueRx {
    /// Moves up to `limit` frames into `batch`, waiting until there is at
    /// least one; 0 once the pushing side is gone and nothing is left.
    pub async fn recv_many(&mut self, batch: &mut Vec<Bytes>, limit: usize) -> usize {
        loop {
            let (n, tx_gone) = self.take(batch, limit.max(1));
            if n > 0 || tx_gone {
                return n;
            }
            self.0.ready.notified().await;
        }
    }

    /// The next frame if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Bytes> {
        let mut s = self.0.state.lock();
        let f = s.frames.pop_front();
        shrink_if_drained(&mut s.frames);
        f
    }

    /// The next frame, waiting for one; `None` once the pushing side is gone
    /// and nothing is left.
    pub async fn recv(&mut self) -> Option<Bytes> {
        let mut one = Vec::with_capacity(1);
        (self.recv_many(&mut one, 1).await > 0).then(|| one.remove(0))
    }

    /// Moves up to `limit` frames into `batch`; how many, and whether the
    /// pushing side is gone (read under the same lock).
    fn take(&mut self, batch: &mut Vec<Bytes>, limit: usize) -> (usize, bool) {
        let mut s = self.0.state.lock();
        let n = s.frames.len().min(limit);
        batch.extend(s.frames.drain(..n));
        shrink_if_drained(&mut s.frames);
        (n, s.tx_gone)
    }
}

impl Drop for QueueRx {
    fn drop(&mut self) {
        let mut s = self.0.state.lock();
        s.rx_gone = true;
        // Nobody will write these now; free them with the connection.
        s.frames = VecDeque::new();
    }
}

fn shrink_if_drained(frames: &mut VecDeque<Bytes>) {
    if frames.is_empty() && frames.capacity() > KEEP_SLOTS {
        *frames = VecDeque::new();
    }
}

impl slim_framed::FrameSource for QueueRx {
    fn recv_many<'a>(
        &'a mut self,
        batch: &'a mut Vec<Bytes>,
        limit: usize,
    ) -> impl Future<Output = usize> + Send + 'a {
        QueueRx::recv_many(self, batch, limit)
    }

    fn try_recv(&mut self) -> Option<Bytes> {
        QueueRx::try_recv(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[tokio::test]
    async fn frames_come_out_in_order_in_batches_of_at_most_the_limit() {
        let (q, mut rx) = queue(8);
        for s in ["a", "b", "c"] {
            q.push(b(s)).unwrap();
        }
        let mut batch = Vec::new();
        assert_eq!(rx.recv_many(&mut batch, 2).await, 2);
        assert_eq!(rx.recv_many(&mut batch, 2).await, 1);
        assert_eq!(batch, [b("a"), b("b"), b("c")]);
    }

    #[test]
    fn a_full_queue_hands_the_frame_back() {
        let (q, mut rx) = queue(2);
        q.push(b("a")).unwrap();
        q.push(b("b")).unwrap();
        assert_eq!(q.push(b("c")), Err(Refused::Full(b("c"))));
        assert_eq!(rx.try_recv(), Some(b("a")));
        q.push(b("c")).unwrap();
    }

    #[test]
    fn pushes_after_the_writer_is_gone_are_refused() {
        let (q, rx) = queue(2);
        q.push(b("a")).unwrap();
        drop(rx);
        assert_eq!(q.push(b("b")), Err(Refused::Closed));
    }

    #[tokio::test]
    async fn the_writer_ends_after_the_last_frame_once_the_pusher_is_gone() {
        let (q, mut rx) = queue(4);
        q.push(b("a")).unwrap();
        drop(q);
        assert_eq!(rx.recv().await, Some(b("a")));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_waiting_writer_is_woken_by_a_push_from_another_task() {
        let (q, mut rx) = queue(4);
        let writer = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(f) = rx.recv().await {
                got.push(f);
            }
            got
        });
        // Pushes spread out so the writer empties the queue and sleeps
        // between them: every one must wake it.
        for i in 0..50u8 {
            q.push(Bytes::from(vec![i])).unwrap();
            tokio::task::yield_now().await;
        }
        drop(q);
        let got = writer.await.unwrap();
        assert_eq!(
            got,
            (0..50u8).map(|i| Bytes::from(vec![i])).collect::<Vec<_>>()
        );
    }

    /// Four producers on other threads push into a small queue (retrying
    /// when it is full) while one writer takes batches: every frame comes out
    /// once, each producer's in its order. A lost wake-up would hang this
    /// test (bounded by the timeout) instead of passing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_producers_lose_nothing_and_keep_their_order() {
        const PER: u32 = 20_000;
        let (q, mut rx) = queue(16);
        let q = Arc::new(q);
        let mut producers = Vec::new();
        for p in 0..4u32 {
            let q = Arc::clone(&q);
            producers.push(tokio::spawn(async move {
                for i in 0..PER {
                    let mut f = Bytes::from([p.to_be_bytes(), i.to_be_bytes()].concat());
                    loop {
                        match q.push(f) {
                            Ok(()) => break,
                            Err(Refused::Full(back)) => {
                                f = back;
                                tokio::task::yield_now().await;
                            }
                            Err(Refused::Closed) => panic!("writer gone"),
                        }
                    }
                }
            }));
        }
        let writer = tokio::spawn(async move {
            let mut next = [0u32; 4];
            let mut batch = Vec::new();
            while rx.recv_many(&mut batch, 7).await > 0 {
                for f in batch.drain(..) {
                    let p = u32::from_be_bytes(f[..4].try_into().unwrap()) as usize;
                    let i = u32::from_be_bytes(f[4..].try_into().unwrap());
                    assert_eq!(i, next[p], "producer {p} out of order");
                    next[p] += 1;
                }
            }
            next
        });
        let run = async move {
            for p in producers {
                p.await.unwrap();
            }
            drop(Arc::into_inner(q).expect("producers are done"));
            writer.await.unwrap()
        };
        let next = tokio::time::timeout(std::time::Duration::from_secs(60), run)
            .await
            .expect("the writer must not sleep with frames queued");
        assert_eq!(next, [PER; 4]);
    }

    #[test]
    fn a_drained_queue_gives_a_burst_buffer_back() {
        let (q, mut rx) = queue(4 * KEEP_SLOTS);
        for _ in 0..2 * KEEP_SLOTS {
            q.push(b("x")).unwrap();
        }
        while rx.try_recv().is_some() {}
        assert_eq!(q.0.state.lock().frames.capacity(), 0);
    }
}
