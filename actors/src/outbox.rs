//! A connection's bounded outbound queue and its slow-consumer policy.
//!
//! The publish path pushes encoded frames here from whichever task routed them;
//! one writer task per connection drains it and coalesces frames into large
//! stream writes. The queue is bounded twice: by frame count (see [`queue`]) and
//! by bytes (`max_bytes`), so a stalled reader costs at most `max_bytes`.
//!
//! A full queue first makes the pusher *wait* (the publisher's reader stops
//! reading, so QUIC flow control slows the publisher) while the queue's
//! writer makes progress: nobody loses anything while every subscriber keeps
//! up on average. A queue whose writer has made no progress for the policy's
//! write deadline (like NATS's `write_deadline`, the time a write may block)
//! is a slow consumer, handled by [`SlowAction`]: cut off (disconnected), or
//! marked and dropped for at once (without waiting) until it has drained, so
//! it cannot stall its publishers again.
//!
//! Before anyone waits, a client outbox over its cap borrows room from the
//! node-wide [`Overflow`] pool, and the deadline counts time without progress
//! by the queue's writer, not time spent full (see [`overflow`]). A queue
//! declared slow gives the room back: cut, or (drop policy) by dropping what
//! it held beyond its cap.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;

mod direct;
mod overflow;
pub use direct::Direct;
use direct::{Attempt, Stream};
pub use overflow::Overflow;
use overflow::StallClock;
pub use slim_framed::queue::QueueRx;
use slim_framed::queue::{self, Queue, Refused};

/// What happens to a subscriber whose queue stays full past the write deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowAction {
    /// Drop what does not fit, count it and log the identity; the connection
    /// stays up, and publishers no longer wait for it until it has drained.
    Drop,
    /// Close the connection (NATS's behaviour for a slow consumer).
    Disconnect,
}

/// How a full queue is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlowConsumerPolicy {
    /// How long a full queue's writer may make no progress (its client not
    /// reading) before the queue's owner is declared a slow consumer. Zero:
    /// never wait (fire-and-forget: a full queue drops, or disconnects, at
    /// once).
    pub write_deadline: Duration,
    pub action: SlowAction,
}

impl SlowConsumerPolicy {
    /// The default write deadline. NATS's is 10 s (compare.sh sees
    /// nats-server 2.9 cut a stalled subscriber after ~10.7 s), buffering
    /// up to 64 MB for it meanwhile. Here a stalled subscriber borrows from
    /// the node's overflow room first, and its publishers wait for it only
    /// once that is used up, so the deadline is kept short: the room a
    /// stalled subscriber can take is the rate it is sent at times this.
    pub const DEFAULT_WRITE_DEADLINE: Duration = Duration::from_secs(2);

    /// Fire-and-forget: never wait; drop the newest frame of a full queue.
    pub const fn drop_newest() -> Self {
        SlowConsumerPolicy {
            write_deadline: Duration::ZERO,
            action: SlowAction::Drop,
        }
    }

    /// Wait up to `write_deadline` for room, then apply `action`.
    pub const fn wait(write_deadline: Duration, action: SlowAction) -> Self {
        SlowConsumerPolicy {
            write_deadline,
            action,
        }
    }
}

impl Default for SlowConsumerPolicy {
    /// Lossless while subscribers keep up; a subscriber stuck for 2 s is cut.
    fn default() -> Self {
        SlowConsumerPolicy::wait(Self::DEFAULT_WRITE_DEADLINE, SlowAction::Disconnect)
    }
}

/// How long a full queue's writer must have made no progress before the
/// queue borrows overflow room: a stall, not a subscriber reading slowly
/// (whose writer moves every few milliseconds; the clock restarts each
/// time). Each stall costs its publishers this long instead of the deadline.
pub const BORROW_AFTER: Duration = Duration::from_millis(100);

/// How many write deadlines a client's read-progress reports may keep its
/// stalled queue from being declared slow while its writer does not move (no
/// QUIC credit). A client reading steadily grants credit once per eighth of
/// its stream window (512 KiB of the SDK's 4 MiB), so with the default 2 s
/// deadline a reader of ≥ 52 KB/s is never cut (without reports: 256 KB/s).
pub const REPORT_STRETCH: u64 = 5;

/// How long a control frame (an ack, an error, a pong) for a connection's
/// own client may wait when the policy never waits for data: losing an ack
/// would hang the client's call, so it gets this long before the policy
/// applies.
pub const CONTROL_WAIT: Duration = Duration::from_secs(2);

/// Outcome of [`Outbox::push`] and [`Outbox::push_wait`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// The queue is full and the policy says to wait for room: the frame is
    /// handed back for [`Outbox::push_wait`].
    Full(Bytes),
    /// Dropped: the queue is full and its owner is a slow consumer.
    Dropped,
    /// Dropped, and this push is the one that declared the owner a slow
    /// consumer (the write deadline just passed under [`SlowAction::Drop`]).
    /// `shed` frames queued earlier (and counted as delivered then) were
    /// dropped from the queue's tail: the ones it held in overflow room
    /// (`Outbox::shed_overflow`).
    Slow {
        shed: u64,
    },
    /// Dropped, and the policy says this connection must now be closed.
    Disconnect,
    /// The connection is gone.
    Closed,
}

pub struct Outbox {
    tx: Queue,
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    policy: SlowConsumerPolicy,
    dropped: AtomicU64,
    closed: AtomicBool,
    /// Declared a slow consumer (the write deadline passed under
    /// [`SlowAction::Drop`]): pushes that find the queue full drop at once
    /// until the writer has emptied it.
    slow: AtomicBool,
    /// Woken by the writer when it has taken frames, for pushers waiting
    /// for room; `waiters` spares the writer the wake-up when nobody waits.
    space: Notify,
    waiters: AtomicUsize,
    /// Pushes that waited for room (their wait times go to
    /// `slim_publisher_wait_seconds`).
    waits: AtomicU64,
    /// When the oldest frame not yet taken by the writer was queued
    /// (nanoseconds since [`epoch`], 0 = none): one clock read per batch, not
    /// per message, feeds the enqueue-to-write histogram.
    oldest: AtomicU64,
    /// The connection's stream (a client's, or a peer link's data stream),
    /// for frames written around the queue (see [`direct`]); unset until its
    /// writer attaches it, `None` again once the connection is over
    /// ([`Outbox::detach`]).
    stream: std::sync::OnceLock<tokio::sync::Mutex<Option<Stream>>>,
    /// Items written around the queue, those of them written in part, and
    /// the frames they held (an item may be a run of frames).
    direct: AtomicU64,
    carried: AtomicU64,
    direct_frames: AtomicU64,
    /// Bytes the writer has handed to the transport so far (the send
    /// budget tells receiving connections from idle ones by it).
    written_total: AtomicU64,
    /// The pool this outbox may borrow from beyond `max_bytes` (client
    /// connections; `None` for peer links), and what it holds of it now.
    overflow: Option<std::sync::Arc<Overflow>>,
    borrowed: AtomicUsize,
    /// How long the writer has made no progress while the queue was over
    /// its cap: the slow-consumer deadline runs on this.
    stall: StallClock,
    /// When the client last reported reading (nanoseconds since [`epoch`],
    /// 0 = never) and how much it had read then (see
    /// [`Outbox::note_read_progress`]).
    reported: AtomicU64,
    read_reported: AtomicU64,
}

static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// The process-wide reference instant for queue timestamps.
pub fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    (epoch().elapsed().as_nanos() as u64).max(1)
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.repay_over(0);
    }
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("queued_bytes", &self.queued_bytes())
            .field("dropped", &self.dropped())
            .field("slow", &self.is_slow())
            .finish()
    }
}

impl Outbox {
    /// A new queue bounded to `max_frames` frames and `max_bytes` bytes.
    pub fn new(
        max_frames: usize,
        max_bytes: usize,
        policy: SlowConsumerPolicy,
    ) -> (Outbox, QueueRx) {
        let (tx, rx) = queue::queue(max_frames);
        (
            Outbox {
                tx,
                queued_bytes: AtomicUsize::new(0),
                max_bytes,
                policy,
                dropped: AtomicU64::new(0),
                closed: AtomicBool::new(false),
                slow: AtomicBool::new(false),
                space: Notify::new(),
                waiters: AtomicUsize::new(0),
                waits: AtomicU64::new(0),
                oldest: AtomicU64::new(0),
                stream: std::sync::OnceLock::new(),
                direct: AtomicU64::new(0),
                carried: AtomicU64::new(0),
                direct_frames: AtomicU64::new(0),
                written_total: AtomicU64::new(0),
                overflow: None,
                borrowed: AtomicUsize::new(0),
                stall: StallClock::default(),
                reported: AtomicU64::new(0),
                read_reported: AtomicU64::new(0),
            },
            rx,
        )
    }

    /// Lets this outbox borrow from `pool` when it is full (see
    /// [`overflow`]).
    pub fn with_overflow(mut self, pool: std::sync::Arc<Overflow>) -> Outbox {
        self.overflow = Some(pool);
        self
    }

    /// Enqueues a frame without waiting. A full queue hands the frame back
    /// as [`Push::Full`] when the policy says to wait (see
    /// [`Outbox::push_wait`]), else drops it under the policy.
    pub fn push(&self, frame: Bytes) -> Push {
        self.push_frames(frame, 1)
    }

    /// [`Outbox::push`] for a run of `frames` frames encoded back to back
    /// (one fan-out read's deliveries to this subscriber): it is queued,
    /// waited for and dropped as one item, and a drop counts every frame.
    pub fn push_frames(&self, frame: Bytes, frames: u64) -> Push {
        if self.closed.load(Ordering::Relaxed) {
            return Push::Closed;
        }
        match self.try_queue(frame) {
            Ok(()) => Push::Queued,
            Err(None) => Push::Closed,
            Err(Some(frame)) => {
                if self.policy.write_deadline.is_zero() || self.is_slow() {
                    self.overdue(frames)
                } else {
                    Push::Full(frame)
                }
            }
        }
    }

    /// For a waiting data push: when to look again, and when the writer's
    /// current stall reaches the write deadline (the push may wait until
    /// then; the deadline moves on whenever the writer makes progress). It
    /// looks again before the deadline when the stall will be old enough to
    /// borrow overflow room, if there is room to borrow.
    fn stall_deadline(&self) -> (tokio::time::Instant, tokio::time::Instant) {
        let now = now_ns();
        let (since, due) = self.stall_window(now);
        let at = |ns: u64| tokio::time::Instant::from_std(epoch() + Duration::from_nanos(ns));
        let borrow_at = since + self.borrow_after().as_nanos() as u64;
        let wake = match &self.overflow {
            Some(pool) if now < borrow_at && pool.used() < pool.limit() => at(borrow_at),
            _ => at(due),
        };
        (wake, at(due))
    }

    /// The current stall at `now` (nanoseconds since [`epoch`]): since when
    /// the writer has made no progress, and when the queue's owner is due to
    /// be declared a slow consumer.
    ///
    /// The writer moves when the client grants QUIC credit, which it does
    /// only per eighth of its stream window read, so a client reading
    /// steadily, if slowly, may grant none for a while: its
    /// [`ReadProgress`](slim_wire::ReadProgress) reports move the deadline
    /// on too, but only up to [`REPORT_STRETCH`] write deadlines past the
    /// writer's last move. A client claiming to read while granting no
    /// credit at all (lying, or stuck behind its reader) is still cut, just
    /// later. Reports do not restart the stall itself: a queue whose writer
    /// does not move still borrows overflow room after [`BORROW_AFTER`], as
    /// before, so its publishers do not wait for a slow reader any sooner.
    fn stall_window(&self, now: u64) -> (u64, u64) {
        let writer = self.stall.started(self.activity(), now);
        let deadline = self.policy.write_deadline.as_nanos() as u64;
        let progress = writer.max(self.reported.load(Ordering::Relaxed));
        let due = (progress + deadline).min(writer + deadline * REPORT_STRETCH);
        (writer, due)
    }

    /// How long the writer has made no progress (the clock starts with the
    /// first look while the queue is full), and whether the owner is due to
    /// be declared a slow consumer.
    fn stalled(&self) -> (Duration, bool) {
        let now = now_ns();
        let (since, due) = self.stall_window(now);
        (Duration::from_nanos(now.saturating_sub(since)), now >= due)
    }

    /// Whether the queue's owner is due to be declared a slow consumer.
    fn stalled_past_deadline(&self) -> bool {
        self.stalled().1
    }

    /// The client reported reading `read` bytes of its stream so far
    /// ([`ReadProgress`](slim_wire::ReadProgress)): progress for the stall
    /// clock (see [`Outbox::stall_window`]). A report that does not move
    /// past the last one is refused with the last count (the count only
    /// grows).
    pub fn note_read_progress(&self, read: u64) -> Result<(), u64> {
        let last = self.read_reported.fetch_max(read, Ordering::Relaxed);
        if read <= last {
            return Err(last);
        }
        self.reported.store(now_ns(), Ordering::Relaxed);
        Ok(())
    }

    /// The last byte count the client reported reading (0: none).
    pub fn read_reported(&self) -> u64 {
        self.read_reported.load(Ordering::Relaxed)
    }

    /// How long a full queue's writer must have made no progress before the
    /// queue may borrow overflow room ([`BORROW_AFTER`], or half a shorter
    /// deadline).
    fn borrow_after(&self) -> Duration {
        BORROW_AFTER.min(self.policy.write_deadline / 2)
    }

    /// The deadline a control frame pushed now may wait until.
    pub fn control_deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.policy.write_deadline.max(CONTROL_WAIT)
    }

    /// Enqueues a frame, waiting for room until `deadline`; a queue still
    /// full then is a slow consumer, handled by the policy.
    pub async fn push_wait(&self, frame: Bytes, deadline: tokio::time::Instant) -> Push {
        self.wait_for_room(frame, 1, |_| (deadline, deadline)).await
    }

    /// Enqueues a run of `frames` data frames (see [`Outbox::push_frames`]),
    /// waiting for room as long as the writer makes progress; a queue whose
    /// writer has made none for the write deadline is a slow consumer,
    /// handled by the policy.
    pub async fn push_wait_frames(&self, frame: Bytes, frames: u64) -> Push {
        self.wait_for_room(frame, frames, Outbox::stall_deadline)
            .await
    }

    /// Waits for room until the deadline `until` gives (with the moment to
    /// look again before it, if any), asked again on every wake-up, so a
    /// deadline that moves on is followed.
    async fn wait_for_room(
        &self,
        frame: Bytes,
        frames: u64,
        until: impl Fn(&Outbox) -> (tokio::time::Instant, tokio::time::Instant),
    ) -> Push {
        let mut frame = frame;
        let out = loop {
            if self.closed.load(Ordering::Relaxed) {
                break Push::Closed;
            }
            // Registered before the attempt, so room made between the attempt
            // and the wait still wakes us (the writer checks `waiters` after
            // freeing room; both are SeqCst).
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.waiters.fetch_add(1, Ordering::SeqCst);
            let out = match self.try_queue(frame) {
                Ok(()) => Push::Queued,
                Err(None) => Push::Closed,
                // Someone else declared it slow while we waited: no more waiting.
                Err(Some(_)) if self.is_slow() => self.overdue(frames),
                Err(Some(f)) => {
                    let woke = tokio::time::timeout_at(until(self).0, notified)
                        .await
                        .is_ok();
                    self.waiters.fetch_sub(1, Ordering::SeqCst);
                    if !woke && until(self).1 <= tokio::time::Instant::now() {
                        break self.overdue(frames);
                    }
                    frame = f;
                    continue;
                }
            };
            self.waiters.fetch_sub(1, Ordering::SeqCst);
            break out;
        };
        self.waits.fetch_add(1, Ordering::Relaxed);
        out
    }

    /// Enqueues a control frame (an ack, an error, a pong) for the
    /// connection's own client: waits for room even under a policy that
    /// never waits for data (see [`CONTROL_WAIT`]).
    pub async fn push_control(&self, frame: Bytes) -> Push {
        if self.closed.load(Ordering::Relaxed) {
            return Push::Closed;
        }
        match self.try_queue(frame) {
            Ok(()) => Push::Queued,
            Err(None) => Push::Closed,
            Err(Some(frame)) => self.push_wait(frame, self.control_deadline()).await,
        }
    }

    /// Queues `frame` if both bounds allow; gives it back when full (`None`
    /// when the connection is gone).
    fn try_queue(&self, frame: Bytes) -> Result<(), Option<Bytes>> {
        let len = frame.len();
        let prev = self.queued_bytes.fetch_add(len, Ordering::SeqCst);
        let mut frame = frame;
        let mut borrowed = 0;
        // A single frame larger than the cap still goes through on an empty
        // queue, otherwise it could never be delivered.
        if prev + len > self.max_bytes && prev != 0 {
            if !self.borrow(len) {
                self.queued_bytes.fetch_sub(len, Ordering::SeqCst);
                return Err(Some(frame));
            }
            borrowed = len;
            // Its own copy: a fan-out's frames are slices of one encode chunk
            // shared by all subscribers of a read, which a borrowed frame
            // would otherwise keep whole.
            frame = Bytes::copy_from_slice(&frame);
        }
        match self.tx.push(frame) {
            Ok(()) => {
                if self.oldest.load(Ordering::Relaxed) == 0 {
                    let _ = self.oldest.compare_exchange(
                        0,
                        now_ns(),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                Ok(())
            }
            Err(Refused::Full(frame)) => {
                self.queued_bytes.fetch_sub(len, Ordering::SeqCst);
                self.repay(borrowed);
                Err(Some(frame))
            }
            Err(Refused::Closed) => {
                self.queued_bytes.fetch_sub(len, Ordering::SeqCst);
                self.repay(borrowed);
                self.closed.store(true, Ordering::Relaxed);
                Err(None)
            }
        }
    }

    /// Borrows `len` bytes from the pool for a queue over its cap whose
    /// writer has been stuck for [`Outbox::borrow_after`], not yet for the
    /// deadline (then it is a slow consumer, and the pool is kept for the
    /// others), and that was not declared slow. A queue whose writer moves
    /// (its client reads, if slowly) does not borrow: its publishers wait for
    /// it, as flow control should, without a backlog growing behind it.
    fn borrow(&self, len: usize) -> bool {
        let Some(pool) = &self.overflow else {
            return false;
        };
        if self.policy.write_deadline.is_zero() || self.is_slow() {
            return false;
        }
        let (stalled, due) = self.stalled();
        if stalled < self.borrow_after() || due {
            return false;
        }
        if !pool.take(len) {
            return false;
        }
        self.borrowed.fetch_add(len, Ordering::SeqCst);
        true
    }

    /// Gives back `n` bytes of what this outbox holds of the pool (fewer if
    /// the writer has given some back already).
    fn repay(&self, n: usize) {
        self.settle(|held| held.saturating_sub(n));
    }

    /// Gives back to the pool whatever this outbox holds beyond `keep`
    /// bytes of it.
    fn repay_over(&self, keep: usize) {
        self.settle(|held| held.min(keep));
    }

    /// Lowers what this outbox holds of the pool to `keep(held)` and gives
    /// the difference back, in one step with the change to `borrowed` (so
    /// the pool's count stays the sum of the outboxes').
    fn settle(&self, keep: impl Fn(usize) -> usize) {
        let Some(pool) = &self.overflow else {
            return;
        };
        if let Ok(held) = self
            .borrowed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
                (keep(b) < b).then(|| keep(b))
            })
        {
            pool.give(held - keep(held));
        }
    }

    /// Bytes this outbox holds of the overflow pool.
    pub fn borrowed(&self) -> usize {
        self.borrowed.load(Ordering::Relaxed)
    }

    /// For the node's periodic sweep: an outbox holding pool bytes whose
    /// writer has made no progress for the write deadline is a slow
    /// consumer even if nobody pushes to it any more (otherwise it would
    /// keep its share of the pool). Applies the policy as a timed-out push
    /// would and says what it did; `None` if it is not stalled.
    pub fn expire_stalled(&self) -> Option<Push> {
        if self.borrowed() == 0 || self.is_closed() || self.is_slow() {
            return None;
        }
        self.stalled_past_deadline().then(|| self.overdue(0))
    }

    /// The queue is full past its deadline (or the policy never waits):
    /// `frames` frames are dropped.
    fn overdue(&self, frames: u64) -> Push {
        self.dropped.fetch_add(frames, Ordering::Relaxed);
        match self.policy.action {
            SlowAction::Drop => {
                if self.slow.swap(true, Ordering::Relaxed) {
                    Push::Dropped
                } else {
                    Push::Slow {
                        shed: self.shed_overflow(),
                    }
                }
            }
            SlowAction::Disconnect => {
                self.closed.store(true, Ordering::Relaxed);
                // Pushers still waiting give up at once.
                self.space.notify_waiters();
                Push::Disconnect
            }
        }
    }

    /// A queue just declared slow under [`SlowAction::Drop`] gives back the
    /// overflow room it holds at once: its newest frames beyond the cap are
    /// dropped (counted in [`Outbox::dropped`]); returns how many. Under this
    /// policy the connection stays up, so what it borrowed would otherwise
    /// stay out of the other stalled queues' reach for as long as its client
    /// stays connected without reading. What its writer has already taken
    /// is not in the queue and stays borrowed until written.
    fn shed_overflow(&self) -> u64 {
        if self.borrowed() == 0 {
            return 0;
        }
        let mut over = self
            .queued_bytes
            .load(Ordering::SeqCst)
            .saturating_sub(self.max_bytes);
        let shed = self.tx.take_newest_while(|b| {
            let more = over > 0;
            over = over.saturating_sub(b.len());
            more
        });
        let frames: u64 = shed
            .iter()
            .map(|b| slim_wire::codec::count_frames(b) as u64)
            .sum();
        self.unqueue(shed.iter().map(Bytes::len).sum());
        self.dropped.fetch_add(frames, Ordering::Relaxed);
        frames
    }

    /// `n` queued bytes have left the queue (written, or shed): what is
    /// still queued beyond the cap is all that stays borrowed. Returns the
    /// bytes still queued.
    fn unqueue(&self, n: usize) -> usize {
        let left = self.queued_bytes.fetch_sub(n, Ordering::SeqCst) - n;
        if self.borrowed.load(Ordering::Relaxed) != 0 {
            self.repay_over(left.saturating_sub(self.max_bytes));
        }
        left
    }

    /// Called by the writer after it has handed `n` bytes to the transport.
    pub fn written(&self, n: usize) {
        self.written_total.fetch_add(n as u64, Ordering::Relaxed);
        let left = self.unqueue(n);
        if left == 0 && self.slow.load(Ordering::Relaxed) {
            // Drained: it kept up after all; publishers wait for it again.
            self.slow.store(false, Ordering::Relaxed);
        }
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.space.notify_waiters();
        }
    }

    /// How long the oldest frame the writer is about to write has waited;
    /// resets the mark so the next push starts a new measurement.
    pub fn take_wait(&self) -> Option<Duration> {
        let t = self.oldest.swap(0, Ordering::Relaxed);
        (t != 0).then(|| Duration::from_nanos(now_ns().saturating_sub(t)))
    }

    /// Grows whenever the connection is sent something: bytes the writer
    /// handed to the transport plus frames written around the queue.
    pub fn activity(&self) -> u64 {
        self.written_total
            .load(Ordering::Relaxed)
            .wrapping_add(self.direct.load(Ordering::Relaxed))
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Frames dropped because this queue was full, and frames dropped from
    /// it to give back overflow room (`Outbox::shed_overflow`).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Pushes that had to wait for room (back-pressure on a publisher).
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// Whether this queue's owner is currently a declared slow consumer.
    pub fn is_slow(&self) -> bool {
        self.slow.load(Ordering::Relaxed)
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.space.notify_waiters();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

/// Writing around the queue (see [`direct`] for why and how order is kept).
impl Outbox {
    /// Attaches the connection's stream: from now on the writer task writes
    /// through [`Outbox::writer_sink`], and routers may write around the queue
    /// ([`Outbox::try_direct`]). A second call is ignored (one stream per
    /// connection).
    pub(crate) fn attach(&self, send: quinn::SendStream) {
        let _ = self
            .stream
            .set(tokio::sync::Mutex::new(Some(Stream::new(send))));
    }

    /// Lets go of the stream once the connection is over (its writer has
    /// ended or is ending). An outbox can outlive its connection for a
    /// while: routes hold it until the table has removed the connection,
    /// and a reader busy routing holds its last route. Without this, each
    /// such holder would keep the closed connection's QUIC state alive, with
    /// its send buffer (megabytes of unacknowledged data for a cut slow
    /// consumer). Called by the writer as it ends, when it no longer holds
    /// the stream's lock.
    pub(crate) fn detach(&self) {
        if let Some(Ok(mut s)) = self.stream.get().map(|s| s.try_lock()) {
            s.take();
        }
        // The writer is ending, and the queue's frames with it.
        self.repay_over(0);
    }

    /// The writer task's sink: writes a pending carry first, then the chunk.
    pub(crate) fn writer_sink(self: &std::sync::Arc<Self>) -> WriterSink {
        WriterSink(std::sync::Arc::clone(self))
    }

    /// Writes `frame` (holding `frames` frames) onto the stream now, without
    /// waking the writer, if nothing is queued or being written ahead of it;
    /// otherwise hands it back ([`Direct::Busy`]) to be queued as usual.
    /// Never waits.
    pub fn try_direct(&self, frame: Bytes, frames: u64) -> Direct {
        let Some(stream) = self.stream.get() else {
            return Direct::Busy(frame);
        };
        // The writer holds the lock while it writes; it is busy anyway then.
        let Ok(mut guard) = stream.try_lock() else {
            return Direct::Busy(frame);
        };
        let Some(s) = guard.as_mut() else {
            return Direct::Busy(frame);
        };
        if s.has_carry()
            || self.queued_bytes.load(Ordering::SeqCst) != 0
            || self.closed.load(Ordering::Relaxed)
        {
            return Direct::Busy(frame);
        }
        match s.try_write(frame) {
            Attempt::Whole => {
                self.direct.fetch_add(1, Ordering::Relaxed);
                self.direct_frames.fetch_add(frames, Ordering::Relaxed);
                Direct::Written
            }
            Attempt::Part(rest) => {
                // Counted until the writer has written it, so nothing else
                // goes direct meanwhile and the cap sees it.
                self.queued_bytes.fetch_add(rest, Ordering::SeqCst);
                drop(guard);
                self.direct.fetch_add(1, Ordering::Relaxed);
                self.carried.fetch_add(1, Ordering::Relaxed);
                self.direct_frames.fetch_add(frames, Ordering::Relaxed);
                // Wake the writer for the carry; an empty frame writes nothing
                // itself. A full queue means the writer is awake already; a
                // closed one, that the connection is going.
                let _ = self.tx.push(Bytes::new());
                Direct::Carried
            }
            Attempt::None(frame) => Direct::Busy(frame),
        }
    }

    /// What the writer is doing, for the slow-consumer log line: inside a
    /// write (a write that lasts means QUIC flow control: the client is not
    /// reading), or not (with frames queued: its task has not run, i.e. the
    /// node is short of CPU).
    pub fn writer_state(&self) -> &'static str {
        match self.stream.get() {
            None => "no stream attached",
            Some(s) => match s.try_lock() {
                Err(_) => "writing, held by QUIC flow control (the client is not reading)",
                Ok(s) if s.is_none() => "detached (the connection is over)",
                Ok(_) => "not writing (its task has not run: the node may be short of CPU)",
            },
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

    /// The frames those direct writes held (a run holds several): the
    /// writer task does not see them, so whoever counts written frames adds
    /// these.
    pub fn direct_frames(&self) -> u64 {
        self.direct_frames.load(Ordering::Relaxed)
    }
}

/// Detaches an outbox's stream when dropped ([`Outbox::detach`]): a writer
/// task holds one from [`Outbox::attach`] on, so that however it ends
/// (returns, fails, or is aborted with its connection) the stream goes with
/// it. Declared before the writer, so dropped after it and after any write
/// in progress.
pub(crate) struct Detach<'a>(pub(crate) &'a Outbox);

impl Drop for Detach<'_> {
    fn drop(&mut self) {
        self.0.detach();
    }
}

/// The writer task's [`ChunkSink`](slim_framed::ChunkSink) for a connection
/// with an attached stream.
pub(crate) struct WriterSink(std::sync::Arc<Outbox>);

impl WriterSink {
    /// Locks the attached stream and writes a pending carry first.
    async fn stream(&self) -> std::io::Result<tokio::sync::MappedMutexGuard<'_, Stream>> {
        let Some(stream) = self.0.stream.get() else {
            return Err(std::io::Error::other("no stream attached to the outbox"));
        };
        let mut s = tokio::sync::MutexGuard::try_map(stream.lock().await, Option::as_mut)
            .map_err(|_| std::io::Error::other("the connection is over (stream detached)"))?;
        let n = s.write_carry().await?;
        if n > 0 {
            self.0.written(n);
        }
        Ok(s)
    }

    /// Finishes the stream (no more data) and waits up to `deadline` for the
    /// peer to have received everything.
    pub(crate) async fn finish(&self, deadline: Duration) {
        if let Ok(mut s) = self.stream().await {
            s.finish(deadline).await;
        }
    }
}

impl slim_framed::ChunkSink for WriterSink {
    async fn write_chunk(&mut self, chunk: Bytes) -> std::io::Result<()> {
        self.stream().await?.write_chunk(chunk).await
    }
}

#[cfg(test)]
mod tests;
