//! A bounded FIFO under a short lock, between the tasks that push items and
//! the task(s) that take them: a node outbox's frames (routers → writer) and
//! the SDK's inbound events (connection reader → application).
//!
//! Why not `tokio::sync::mpsc`: a fan-out pushes one copy per subscriber per
//! message, and the bounded channel spends a semaphore permit, a block
//! lookup, a slot-ready flag and a receiver wake-up on each (a fifth of the
//! node's CPU at 1 → 100, in `perf`). Here a push is a lock, a `VecDeque`
//! push and an unlock; a taker is woken only when the queue goes from empty
//! to non-empty (it sleeps only after finding it empty), and it takes up to a
//! batch per lock. An idle queue holds no buffer (the channel kept a block of
//! 32 slots per connection).
//!
//! Two ways to meet a full queue: [`Queue::push`] hands the item back (the
//! node's outbox applies its own deadline and policy), while
//! [`Queue::push_wait`] / [`Queue::push_all`] wait for room without losing
//! anything (the SDK's reader: it stops reading QUIC, which pushes back on
//! the node). A taker that takes from a full queue wakes those waiting.
//!
//! The taking side works through `&self`, so several tasks may take from one
//! [`QueueRx`] at once (each item goes to exactly one of them): a taker that
//! leaves items behind passes the wake-up on, so no taker sleeps while items
//! wait.

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
pub enum Refused<T = Bytes> {
    /// `max_items` are queued: the item is handed back.
    Full(T),
    /// The taking side is gone (e.g. the connection is closing).
    Closed,
}

#[derive(Debug)]
struct State<T> {
    items: VecDeque<T>,
    /// The taking side ([`QueueRx`]) was dropped: pushes are refused.
    rx_gone: bool,
    /// The pushing side ([`Queue`]) was dropped: takers end once they have
    /// taken what is left.
    tx_gone: bool,
}

#[derive(Debug)]
struct Inner<T> {
    state: Mutex<State<T>>,
    /// Wakes a taker. Takers register (`enable`) before their last look at
    /// the queue, and a notification sent while nobody waits is kept as a
    /// permit, so one sent between a look and a wait is not lost.
    ready: Notify,
    /// Wakes pushers waiting for room (registered the same way).
    space: Notify,
    max_items: usize,
}

/// The pushing side.
#[derive(Debug)]
pub struct Queue<T = Bytes>(Arc<Inner<T>>);

/// The taking side.
#[derive(Debug)]
pub struct QueueRx<T = Bytes>(Arc<Inner<T>>);

/// A queue of at most `max_items` items (at least one).
pub fn queue<T>(max_items: usize) -> (Queue<T>, QueueRx<T>) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State {
            items: VecDeque::new(),
            rx_gone: false,
            tx_gone: false,
        }),
        ready: Notify::new(),
        space: Notify::new(),
        max_items: max_items.max(1),
    });
    (Queue(Arc::clone(&inner)), QueueRx(inner))
}

/// A refused push with its item.
enum Back<T> {
    Full(T),
    Closed(T),
}

impl<T> Queue<T> {
    /// The most items it holds.
    pub fn capacity(&self) -> usize {
        self.0.max_items
    }

    /// Appends `item` unless the queue is full or the taking side is gone.
    pub fn push(&self, item: T) -> Result<(), Refused<T>> {
        match self.try_push(item) {
            Ok(()) => Ok(()),
            Err(Back::Full(item)) => Err(Refused::Full(item)),
            Err(Back::Closed(_)) => Err(Refused::Closed),
        }
    }

    fn try_push(&self, item: T) -> Result<(), Back<T>> {
        let was_empty = {
            let mut s = self.0.state.lock();
            if s.rx_gone {
                return Err(Back::Closed(item));
            }
            if s.items.len() >= self.0.max_items {
                return Err(Back::Full(item));
            }
            s.items.push_back(item);
            s.items.len() == 1
        };
        if was_empty {
            self.0.ready.notify_one();
        }
        Ok(())
    }

    /// Appends `item`, waiting for room while the queue is full; hands it
    /// back only when the taking side is gone.
    pub async fn push_wait(&self, item: T) -> Result<(), T> {
        let mut item = match self.try_push(item) {
            Ok(()) => return Ok(()),
            Err(Back::Closed(item)) => return Err(item),
            Err(Back::Full(item)) => item,
        };
        loop {
            // Registered before the look, so room made between the look and
            // the wait still wakes us.
            let space = self.0.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            item = match self.try_push(item) {
                Ok(()) => return Ok(()),
                Err(Back::Closed(item)) => return Err(item),
                Err(Back::Full(item)) => item,
            };
            space.await;
        }
    }

    /// Moves every item of `items` (in order) into the queue, one lock per
    /// stretch that fits, waiting for room while it is full. `false` when
    /// the taking side is gone (what did not go in is left in `items`).
    #[must_use = "false means the taking side is gone"]
    pub async fn push_all(&self, items: &mut Vec<T>) -> bool {
        loop {
            match self.push_some(items) {
                None => return false,
                Some(()) if items.is_empty() => return true,
                Some(()) => {}
            }
            let space = self.0.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            match self.push_some(items) {
                None => return false,
                Some(()) if items.is_empty() => return true,
                Some(()) => {}
            }
            space.await;
        }
    }

    /// Takes items back from the tail, the newest first, while `more` says
    /// so of the next one; returns them newest first. For a pusher that
    /// gives up on what it queued last (a node outbox shedding a slow
    /// consumer's overflow); pushers waiting for room are woken.
    pub fn take_newest_while(&self, mut more: impl FnMut(&T) -> bool) -> Vec<T> {
        let (taken, was_full) = {
            let mut s = self.0.state.lock();
            let was_full = s.items.len() >= self.0.max_items;
            let mut taken = Vec::new();
            while let Some(item) = s.items.back() {
                if !more(item) {
                    break;
                }
                taken.extend(s.items.pop_back());
            }
            shrink_if_drained(&mut s.items);
            (taken, was_full)
        };
        if was_full && !taken.is_empty() {
            self.0.space.notify_waiters();
        }
        taken
    }

    /// Moves as many of `items` as fit; `None` when the taking side is gone.
    fn push_some(&self, items: &mut Vec<T>) -> Option<()> {
        let was_empty = {
            let mut s = self.0.state.lock();
            if s.rx_gone {
                return None;
            }
            let n = (self.0.max_items.saturating_sub(s.items.len())).min(items.len());
            if n == 0 {
                return Some(());
            }
            let was_empty = s.items.is_empty();
            s.items.extend(items.drain(..n));
            was_empty
        };
        if was_empty {
            self.0.ready.notify_one();
        }
        Some(())
    }
}

impl<T> Drop for Queue<T> {
    fn drop(&mut self) {
        self.0.state.lock().tx_gone = true;
        // Every taker, not one: several may be waiting, and each must see
        // the end.
        self.0.ready.notify_waiters();
    }
}

impl<T> QueueRx<T> {
    /// Waits until `attempt` (which looks at the queue under its lock) has
    /// an answer; `attempt` answers once it took something or the pushing
    /// side is gone.
    async fn until<R>(&self, mut attempt: impl FnMut() -> Option<R>) -> R {
        if let Some(r) = attempt() {
            return r;
        }
        loop {
            // Registered before the second look (see `Inner::ready`).
            let ready = self.0.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            if let Some(r) = attempt() {
                return r;
            }
            ready.await;
        }
    }

    /// Moves up to `limit` items into `batch`, waiting until there is at
    /// least one; 0 once the pushing side is gone and nothing is left.
    /// Cancel-safe: nothing is taken unless this returns.
    pub async fn recv_many(&self, batch: &mut Vec<T>, limit: usize) -> usize {
        let limit = limit.max(1);
        self.until(|| {
            let (n, tx_gone) = self.take(batch, limit);
            (n > 0 || tx_gone).then_some(n)
        })
        .await
    }

    /// The next item if one is queued, without waiting.
    pub fn try_recv(&self) -> Option<T> {
        self.take_one().0
    }

    /// The next item, waiting for one; `None` once the pushing side is gone
    /// and nothing is left. Cancel-safe like [`QueueRx::recv_many`].
    pub async fn recv(&self) -> Option<T> {
        self.until(|| match self.take_one() {
            (Some(item), _) => Some(Some(item)),
            (None, true) => Some(None),
            (None, false) => None,
        })
        .await
    }

    /// Items queued now.
    pub fn len(&self) -> usize {
        self.0.state.lock().items.len()
    }

    /// Whether nothing is queued now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Moves up to `limit` items into `batch`; how many, and whether the
    /// pushing side is gone (read under the same lock).
    fn take(&self, batch: &mut Vec<T>, limit: usize) -> (usize, bool) {
        let (n, was_full, left, tx_gone) = {
            let mut s = self.0.state.lock();
            let len = s.items.len();
            let n = len.min(limit);
            batch.extend(s.items.drain(..n));
            shrink_if_drained(&mut s.items);
            (n, len >= self.0.max_items, len - n, s.tx_gone)
        };
        if n > 0 {
            self.took(was_full, left);
        }
        (n, tx_gone)
    }

    /// The front item, and whether the pushing side is gone.
    fn take_one(&self) -> (Option<T>, bool) {
        let (item, was_full, left, tx_gone) = {
            let mut s = self.0.state.lock();
            let was_full = s.items.len() >= self.0.max_items;
            let item = s.items.pop_front();
            shrink_if_drained(&mut s.items);
            (item, was_full, s.items.len(), s.tx_gone)
        };
        if item.is_some() {
            self.took(was_full, left);
        }
        (item, tx_gone)
    }

    /// Wake-ups owed after a take: pushers waiting for room (the queue was
    /// full), and another taker when items are left (a push wakes one taker
    /// only, on empty → non-empty; with several takers the woken one passes
    /// it on, so none sleeps with items queued).
    fn took(&self, was_full: bool, left: usize) {
        if was_full {
            self.0.space.notify_waiters();
        }
        if left > 0 {
            self.0.ready.notify_one();
        }
    }
}

impl<T> Drop for QueueRx<T> {
    fn drop(&mut self) {
        let mut s = self.0.state.lock();
        s.rx_gone = true;
        // Nobody will take these now; free them with the queue.
        s.items = VecDeque::new();
        drop(s);
        self.0.space.notify_waiters();
    }
}

fn shrink_if_drained<T>(items: &mut VecDeque<T>) {
    if items.is_empty() && items.capacity() > KEEP_SLOTS {
        *items = VecDeque::new();
    }
}

impl crate::FrameSource for QueueRx<Bytes> {
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
        let (q, rx) = queue(8);
        for s in ["a", "b", "c"] {
            q.push(b(s)).unwrap();
        }
        let mut batch = Vec::new();
        assert_eq!(rx.recv_many(&mut batch, 2).await, 2);
        assert_eq!(rx.recv_many(&mut batch, 2).await, 1);
        assert_eq!(batch, [b("a"), b("b"), b("c")]);
    }

    #[test]
    fn the_newest_items_are_taken_back_while_asked() {
        let (q, rx) = queue(4);
        for s in ["a", "bb", "ccc", "dddd"] {
            q.push(b(s)).unwrap();
        }
        let mut over = 6usize;
        let back = q.take_newest_while(|i| {
            let go = over > 0;
            over = over.saturating_sub(i.len());
            go
        });
        assert_eq!(back, [b("dddd"), b("ccc")]);
        assert!(q.take_newest_while(|_| false).is_empty());
        q.push(b("e")).unwrap();
        let mut batch = Vec::new();
        while let Some(i) = rx.try_recv() {
            batch.push(i);
        }
        assert_eq!(batch, [b("a"), b("bb"), b("e")], "the rest in order");
        assert!(q.take_newest_while(|_| true).is_empty(), "nothing left");
    }

    #[test]
    fn a_full_queue_hands_the_frame_back() {
        let (q, rx) = queue(2);
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
        let (q, rx) = queue(4);
        q.push(b("a")).unwrap();
        drop(q);
        assert_eq!(rx.recv().await, Some(b("a")));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_waiting_writer_is_woken_by_a_push_from_another_task() {
        let (q, rx) = queue(4);
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
        let (q, rx) = queue(16);
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
        let (q, rx) = queue(4 * KEEP_SLOTS);
        for _ in 0..2 * KEEP_SLOTS {
            q.push(b("x")).unwrap();
        }
        while rx.try_recv().is_some() {}
        assert_eq!(q.0.state.lock().items.capacity(), 0);
    }

    /// A pusher meeting a full queue waits (nothing dropped, nothing handed
    /// back) and goes on once the taker takes.
    #[tokio::test]
    async fn a_pusher_waits_for_room_and_resumes_when_the_taker_takes() {
        let (q, rx) = queue(2);
        q.push(b("a")).unwrap();
        q.push(b("b")).unwrap();
        let q = Arc::new(q);
        let pusher = tokio::spawn({
            let q = Arc::clone(&q);
            async move { q.push_wait(b("c")).await }
        });
        // Let the pusher run until it waits: the queue stays at its bound.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            !pusher.is_finished(),
            "a full queue must make the pusher wait"
        );
        assert_eq!(rx.len(), 2);
        assert_eq!(rx.recv().await, Some(b("a")));
        assert_eq!(pusher.await.unwrap(), Ok(()));
        let mut rest = Vec::new();
        assert_eq!(rx.recv_many(&mut rest, 8).await, 2);
        assert_eq!(rest, [b("b"), b("c")]);
    }

    #[tokio::test]
    async fn a_waiting_pusher_gets_its_item_back_when_the_taker_goes() {
        let (q, rx) = queue(1);
        q.push(b("a")).unwrap();
        let pusher = tokio::spawn(async move {
            let mut rest = vec![b("b"), b("c")];
            let all = q.push_all(&mut rest).await;
            (all, rest, q.push_wait(b("d")).await)
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        drop(rx);
        let (all, rest, one) = pusher.await.unwrap();
        assert!(!all);
        assert_eq!(rest, [b("b"), b("c")]);
        assert_eq!(one, Err(b("d")));
    }

    /// `push_all` through a queue much smaller than what it pushes: all of
    /// it comes out once, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn push_all_through_a_small_queue_keeps_order_and_loses_nothing() {
        const N: u32 = 10_000;
        let (q, rx) = queue::<u32>(4);
        let pusher = tokio::spawn(async move {
            let mut next = 0;
            let mut batch = Vec::new();
            while next < N {
                batch.extend(next..(next + 37).min(N));
                next = (next + 37).min(N);
                assert!(q.push_all(&mut batch).await, "taker gone");
                assert!(batch.is_empty());
            }
        });
        let run = async {
            let mut got = Vec::new();
            let mut batch = Vec::new();
            while rx.recv_many(&mut batch, 3).await > 0 {
                got.append(&mut batch);
            }
            got
        };
        let got = tokio::time::timeout(std::time::Duration::from_secs(60), run)
            .await
            .expect("a lost wake-up would hang here");
        pusher.await.unwrap();
        assert_eq!(got, (0..N).collect::<Vec<_>>());
    }

    /// One pusher, four takers on other threads taking through `&QueueRx`
    /// (`recv` and `recv_many` mixed): every item reaches exactly one taker,
    /// each taker sees its items in pushed order, and every taker sees the
    /// end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_takers_each_get_distinct_items_and_none_is_lost() {
        const N: u64 = 40_000;
        let (q, rx) = queue::<u64>(64);
        let rx = Arc::new(rx);
        let mut takers = Vec::new();
        for t in 0..4u64 {
            let rx = Arc::clone(&rx);
            takers.push(tokio::spawn(async move {
                let mut got = Vec::new();
                let mut batch = Vec::new();
                loop {
                    if t % 2 == 0 {
                        match rx.recv().await {
                            Some(i) => got.push(i),
                            None => break,
                        }
                    } else if rx.recv_many(&mut batch, 5).await > 0 {
                        got.append(&mut batch);
                    } else {
                        break;
                    }
                }
                got
            }));
        }
        let pusher = tokio::spawn(async move {
            let mut batch = Vec::new();
            for i in 0..N {
                if i % 3 == 0 {
                    q.push_wait(i).await.expect("takers are there");
                } else {
                    batch.push(i);
                }
                // Batches of two, pushed before the next single push.
                if (i + 1) % 3 == 0 {
                    assert!(q.push_all(&mut batch).await);
                }
            }
            assert!(q.push_all(&mut batch).await);
        });
        let run = async move {
            pusher.await.unwrap();
            let mut all = std::collections::HashSet::new();
            for t in takers {
                let got = t.await.unwrap();
                assert!(
                    got.windows(2).all(|w| w[0] < w[1]),
                    "a taker saw items out of order"
                );
                for i in got {
                    assert!(all.insert(i), "item {i} taken twice");
                }
            }
            all
        };
        let all = tokio::time::timeout(std::time::Duration::from_secs(60), run)
            .await
            .expect("a taker slept with items queued, or missed the end");
        assert_eq!(all.len() as u64, N);
        assert!((0..N).all(|i| all.contains(&i)));
    }
}
