//! Publish confirmation across reconnects: nothing a publisher handed to the
//! SDK vanishes without either reaching the node or an error the publisher
//! sees.
//!
//! The node handles a connection's frames in order and answers a `Ping` only
//! after every frame before it was processed (routed to its subscribers'
//! queues or peer links). So the writer, after each batch it writes, appends a
//! `Ping` whose nonce is the sequence number of the batch's last frame (with
//! [`CONFIRM_BIT`] set, apart from the application's pings); the `Pong`
//! confirms every frame up to it. Frames written but not yet confirmed stay in
//! a bounded [`Unconfirmed`] buffer (the `Bytes` are shared, not copied).
//!
//! When the connection drops, what is unconfirmed is handled by the
//! application's [`DisconnectPolicy`]: written again first thing on the next
//! connection (`Buffer`: at least once, so a frame the node had processed but
//! whose `Pong` was lost arrives twice), or failed with an
//! [`Event::Error`](crate::Event::Error) of code [`CONNECTION_LOST`] carrying
//! each publish's message id (`Fail`). Either way the publisher learns of it.
//!
//! What this does not cover: a message the node had confirmed and then lost
//! itself (killed with the message in a subscriber's queue). Only a reliable
//! session (acknowledged end to end) covers that.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use slim_framed::{BATCH, COALESCE, ChunkSink, FrameWriter};
use slim_wire::{ErrorCode, ErrorFrame, Frame, FrameKind, HEADER_LEN, Limits, Name, Ping, codec};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

/// Marks the writer's own pings, so their pongs are not looked up as the
/// application's requests.
pub(crate) const CONFIRM_BIT: u64 = 1 << 63;

/// The code of an error the SDK itself reports for a publish that the node
/// never confirmed before the connection dropped (`DisconnectPolicy::Fail`).
pub const CONNECTION_LOST: ErrorCode = ErrorCode::CONNECTION_LOST;

/// What happens to publishes when the connection to the node is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectPolicy {
    /// Publishes written but unconfirmed are written again on the next
    /// connection, before anything newer; publishes made while disconnected
    /// wait in the outbound queue (`ClientConfig::outbound_capacity` frames,
    /// `ClientConfig::outbound_bytes` bytes). A
    /// publisher that finds the queue full waits at most `max_wait` and then
    /// gets [`ClientError::Disconnected`](crate::ClientError::Disconnected).
    /// Delivery is at least once: a publish the node had already taken when
    /// its confirmation was lost is delivered twice.
    Buffer { max_wait: Duration },
    /// Publishes written but unconfirmed are failed: each produces an
    /// [`Event::Error`](crate::Event::Error) with code [`CONNECTION_LOST`] and
    /// its message id (also in [`Client::take_errors`](crate::Client::take_errors)).
    /// A publish made while disconnected fails at once with
    /// [`ClientError::Disconnected`](crate::ClientError::Disconnected).
    /// Delivery is at most once, and every loss is reported.
    Fail,
}

impl Default for DisconnectPolicy {
    fn default() -> Self {
        DisconnectPolicy::Buffer {
            max_wait: Duration::from_secs(30),
        }
    }
}

/// Confirmation state shared by the writer (which pings) and the reader
/// (which sees the pongs).
#[derive(Default)]
pub(crate) struct Confirmations {
    /// The highest frame sequence number the node confirmed.
    confirmed: AtomicU64,
    /// Woken when `confirmed` moves, for a writer waiting on a full buffer.
    moved: Notify,
    /// The sequence number of the last frame written (what `confirmed`
    /// must reach for nothing to be outstanding).
    written: AtomicU64,
}

impl Confirmations {
    /// Handles a pong; false if it was not one of the writer's.
    pub(crate) fn handle_pong(&self, nonce: u64) -> bool {
        if nonce & CONFIRM_BIT == 0 {
            return false;
        }
        self.confirmed
            .fetch_max(nonce & !CONFIRM_BIT, Ordering::AcqRel);
        self.moved.notify_waiters();
        true
    }

    fn confirmed(&self) -> u64 {
        self.confirmed.load(Ordering::Acquire)
    }

    /// Waits until the node confirmed everything written so far, for at
    /// most `limit`; whether it did. A closing client uses it so that a
    /// publish made just before the close is not reported lost.
    pub(crate) async fn all_confirmed(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.confirmed() < self.written.load(Ordering::Acquire) {
            if Instant::now() >= deadline {
                return false;
            }
            let _ = tokio::time::timeout(Duration::from_millis(5), self.moved.notified()).await;
        }
        true
    }
}

/// The bytes of encoded frames in the outbound queue: taken by a publisher
/// before its frame goes in, given back by the writer once the frame was
/// handed to QUIC. With [`ClientConfig::outbound_bytes`](crate::ClientConfig::outbound_bytes)
/// as the bound, `publish` waits while the queue holds that much, so a
/// publisher that the node (or the network) slows down feels it within a
/// bounded amount of data instead of running ahead of it by a message count
/// whatever the message size.
pub(crate) struct OutboundBytes {
    limit: usize,
    queued: AtomicUsize,
    /// Woken whenever bytes are given back (publishers waiting for room,
    /// `Client::flush` waiting for an empty queue).
    freed: Notify,
}

impl OutboundBytes {
    pub(crate) fn new(limit: usize) -> Self {
        OutboundBytes {
            limit: limit.max(1),
            queued: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes queued and not yet handed to QUIC.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Takes `n` bytes if they fit. A frame larger than the whole bound
    /// fits an empty queue (it could never go otherwise).
    pub(crate) fn try_take(&self, n: usize) -> bool {
        let mut cur = self.queued.load(Ordering::Acquire);
        loop {
            if cur != 0 && cur.saturating_add(n) > self.limit {
                return false;
            }
            match self.queued.compare_exchange_weak(
                cur,
                cur + n,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Takes `n` bytes, waiting for the writer to free room.
    pub(crate) async fn take(&self, n: usize) {
        loop {
            // Registered before the check, so a release between the check
            // and the wait still wakes this one.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.try_take(n) {
                return;
            }
            freed.await;
        }
    }

    pub(crate) fn give_back(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.queued.fetch_sub(n, Ordering::AcqRel);
        self.freed.notify_waiters();
    }

    /// Waits until nothing is queued (everything was handed to QUIC).
    pub(crate) async fn empty(&self) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.queued() == 0 {
                return;
            }
            freed.await;
        }
    }
}

/// Gives bytes back when dropped: the writer's batch holds its bytes until
/// it was written, or until the write failed (the frames then sit in
/// [`Unconfirmed`] for the policy to handle, not in the queue); a publisher
/// holds them until its frame is in the queue ([`Taken::keep`]), so a
/// publish cancelled or failed in between gives them back.
pub(crate) struct Taken<'a> {
    pub(crate) budget: &'a OutboundBytes,
    pub(crate) n: usize,
}

impl Taken<'_> {
    /// The frame is in the queue: its bytes are now the writer's to give back.
    pub(crate) fn keep(mut self) {
        self.n = 0;
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        self.budget.give_back(self.n);
    }
}

/// Frames written but not yet confirmed, oldest first, bounded by
/// [`Unconfirmed::MAX_ENTRIES`] and [`Unconfirmed::MAX_BYTES`]: when full the
/// writer waits for the node's confirmation before taking more from the
/// outbound queue (so publishers feel the back-pressure, as with a full queue).
#[derive(Default)]
pub(crate) struct Unconfirmed {
    frames: VecDeque<(u64, Bytes)>,
    bytes: usize,
    /// The sequence number of the last frame written.
    seq: u64,
}

impl Unconfirmed {
    /// Entries are written chunks: single frames at low rates, up to
    /// 64 KiB of coalesced frames under load.
    const MAX_ENTRIES: usize = 64 * 1024;
    const MAX_BYTES: usize = 16 << 20;

    fn push(&mut self, frame: Bytes) {
        self.seq += 1;
        self.bytes += frame.len();
        self.frames.push_back((self.seq, frame));
    }

    /// Drops what the node confirmed.
    fn trim(&mut self, confirmed: u64) {
        while let Some((seq, f)) = self.frames.front() {
            if *seq > confirmed {
                break;
            }
            self.bytes -= f.len();
            self.frames.pop_front();
        }
    }

    fn full(&self) -> bool {
        self.frames.len() >= Self::MAX_ENTRIES || self.bytes >= Self::MAX_BYTES
    }

    pub(crate) fn len(&self) -> usize {
        self.frames.len()
    }

    /// Everything unconfirmed, for writing again on a new connection (the
    /// frames stay here until that connection confirms them).
    pub(crate) fn replay(&mut self, c: &Confirmations, limits: &Limits) -> Vec<Bytes> {
        self.trim(c.confirmed());
        let mut out: Vec<Bytes> = self.frames.iter().map(|(_, f)| f.clone()).collect();
        if !out.is_empty() {
            out.push(ping(self.seq, limits));
        }
        out
    }

    /// Takes everything unconfirmed out: the publishes' message ids (to be
    /// failed), and the other frames (requests, which are re-sent: the
    /// subscriptions they carry are restored anyway, and a request's caller
    /// waits for its answer).
    pub(crate) fn take_failed(
        &mut self,
        c: &Confirmations,
    ) -> (Vec<(u64, Option<Name>)>, Vec<Bytes>) {
        self.trim(c.confirmed());
        let mut ids = Vec::new();
        let mut others = Vec::new();
        // An entry is a chunk of whole frames (coalesced by the writer).
        for (_, f) in self.frames.drain(..) {
            let mut at = 0;
            while f.len() - at > HEADER_LEN {
                let len = u32::from_be_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]]) as usize;
                let end = (at + 4 + len).min(f.len());
                if f[at + 4] == FrameKind::Publish as u8 {
                    if let Ok(Ok(v)) = slim_wire::publish_view(&f[at + HEADER_LEN..end]) {
                        ids.push((v.msg_id, Name::parse(v.name).ok()));
                    }
                } else {
                    // Only the request itself goes again, not the failed
                    // publishes that shared its chunk.
                    others.push(f.slice(at..end));
                }
                at = end;
            }
        }
        self.bytes = 0;
        (ids, others)
    }
}

/// The reader's latest read-progress report (protocol 2), for the writer
/// to send: the reader stores the byte count and wakes the writer, which
/// sends the latest count (one frame for any number of wake-ups).
#[derive(Default)]
pub(crate) struct ReadReport {
    read: AtomicU64,
    wanted: tokio::sync::Notify,
}

impl ReadReport {
    /// Asks the writer to report `read` bytes read.
    pub(crate) fn want(&self, read: u64) {
        self.read.store(read, Ordering::Relaxed);
        self.wanted.notify_one();
    }

    fn frame(&self, limits: &Limits) -> Bytes {
        let mut b = BytesMut::with_capacity(16);
        codec::encode(
            &Frame::ReadProgress(slim_wire::ReadProgress {
                read: self.read.load(Ordering::Relaxed),
            }),
            limits,
            &mut b,
        )
        .expect("a read-progress report always encodes");
        b.freeze()
    }
}

fn ping(seq: u64, limits: &Limits) -> Bytes {
    let mut b = BytesMut::with_capacity(16);
    codec::encode(
        &Frame::Ping(Ping {
            nonce: CONFIRM_BIT | seq,
        }),
        limits,
        &mut b,
    )
    .expect("a ping always encodes");
    b.freeze()
}

/// The error event reported for each failed publish.
pub(crate) fn lost((msg_id, name): (u64, Option<Name>), reason: &str) -> ErrorFrame {
    ErrorFrame {
        code: CONNECTION_LOST,
        msg_id: Some(msg_id),
        name,
        reason: format!("connection to the node lost before it confirmed this publish: {reason}"),
    }
}

/// How long after a write its confirming ping follows. Not at once: a ping
/// in the same write as a request puts its pong on the wire just ahead of
/// the reply. 10 ms rather than a few: the runtime's timers tick in whole
/// milliseconds, so a short delay lands on the next request of a steady
/// 1,000/s stream anyway; at 10 ms at most one request in ten shares its
/// write with a ping. Under load one ping covers everything written in the
/// interval (or the buffer fills first and pings at once), and a
/// confirmation is at most this (plus a round trip) late.
const PING_DELAY: Duration = Duration::from_millis(10);

/// A run of frames from a publisher's scratch buffer at least this large
/// goes to QUIC as it is. Smaller pieces are copied together: quinn looks a
/// stream's unacknowledged data up piece by piece, so many small pieces in
/// flight cost it more than the copy.
const RUN_PASS: usize = COALESCE / 8;

/// The client's writer loop: takes frames from `rx`, remembers them as
/// unconfirmed, writes them, and asks the node to confirm them
/// [`PING_DELAY`] later (at once when the buffer is full); also sends the
/// reader's read-progress reports ([`ReadReport`]). Ends when the queue
/// closes (`Ok`) or a write fails.
pub(crate) async fn pump<S: ChunkSink>(
    rx: &mut mpsc::Receiver<BytesMut>,
    budget: &OutboundBytes,
    w: &mut FrameWriter<S>,
    unconfirmed: &mut Unconfirmed,
    c: &Confirmations,
    report: &ReadReport,
    limits: &Limits,
) -> std::io::Result<()> {
    let mut batch: Vec<BytesMut> = Vec::new();
    let mut runs: Vec<Bytes> = Vec::new();
    let mut chunks: Vec<Bytes> = Vec::new();
    // When the oldest frame not yet covered by a ping was written. Frames
    // replayed after a reconnect come with their own ping.
    let mut owed_since: Option<Instant> = None;
    loop {
        unconfirmed.trim(c.confirmed());
        if unconfirmed.full() {
            // Full: only a pong frees room, so the frames written since the
            // last ping need theirs now.
            if owed_since.take().is_some() {
                chunks.push(ping(unconfirmed.seq, limits));
                w.write_chunks(&mut chunks).await?;
            }
            while unconfirmed.full() {
                // Re-check on a timer too: the pong that frees room may come
                // between `trim` and `notified()`.
                let _ = tokio::time::timeout(Duration::from_millis(10), c.moved.notified()).await;
                unconfirmed.trim(c.confirmed());
            }
        }
        let due = owed_since.map(|t| t + PING_DELAY);
        tokio::select! {
            biased;
            n = rx.recv_many(&mut batch, BATCH) => if n == 0 {
                return Ok(());
            },
            () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {}
            // Not among the frames kept for a reconnect: a count for this
            // connection's stream only.
            () = report.wanted.notified() => {
                w.write_chunks(&mut vec![report.frame(limits)]).await?;
                continue;
            }
        }
        // The batch's bytes leave the queue's count once written (or the
        // write failed), not when taken off the queue: a write that waits
        // on QUIC flow control keeps them counted, so publishers wait too.
        let _taken = Taken {
            budget,
            n: batch.iter().map(BytesMut::len).sum(),
        };
        // A publisher's frames follow each other in its scratch buffer:
        // joined back into runs, uncopied; what is left in small pieces is
        // copied into chunks of up to 64 KiB. Held as the chunks that are
        // written (one entry per run or chunk, not per frame); a run keeps
        // its part of the publisher's scratch buffer until confirmed.
        slim_wire::merge_adjacent(&mut batch, &mut runs);
        slim_wire::coalesce_from(&mut runs, COALESCE, RUN_PASS, &mut chunks);
        for ch in &chunks {
            unconfirmed.push(ch.clone());
        }
        c.written.store(unconfirmed.seq, Ordering::Release);
        if !chunks.is_empty() && owed_since.is_none() {
            owed_since = Some(Instant::now());
        }
        if owed_since.is_some_and(|t| t.elapsed() >= PING_DELAY) {
            chunks.push(ping(unconfirmed.seq, limits));
            owed_since = None;
        }
        if !chunks.is_empty() {
            w.write_chunks(&mut chunks).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slim_wire::Mode;

    fn publish(id: u64) -> Bytes {
        publish_sized(id, 2)
    }

    fn publish_sized(id: u64, size: usize) -> Bytes {
        let mut b = BytesMut::new();
        codec::encode_publish(
            &Name::parse("acme/ops/x").unwrap(),
            Mode::Anycast,
            0,
            id,
            &vec![7u8; size],
            &Limits::default(),
            &mut b,
        )
        .unwrap();
        b.freeze()
    }

    #[test]
    fn a_pong_confirms_every_frame_up_to_its_sequence_number() {
        let c = Confirmations::default();
        let mut u = Unconfirmed::default();
        for id in 1..=5 {
            u.push(publish(id));
        }
        assert!(!c.handle_pong(3), "an application pong is not ours");
        assert!(c.handle_pong(CONFIRM_BIT | 3));
        // An older pong arriving late does not move confirmation back.
        assert!(c.handle_pong(CONFIRM_BIT | 2));
        let (ids, others) = u.take_failed(&c);
        let ids: Vec<u64> = ids.into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, vec![4, 5]);
        assert!(others.is_empty());
        assert_eq!(u.len(), 0);
    }

    #[test]
    fn replay_returns_the_unconfirmed_frames_and_a_ping_for_the_last() {
        let c = Confirmations::default();
        let mut u = Unconfirmed::default();
        for id in 1..=3 {
            u.push(publish(id));
        }
        c.handle_pong(CONFIRM_BIT | 1);
        let frames = u.replay(&c, &Limits::default());
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0], publish(2));
        assert_eq!(frames[2], ping(3, &Limits::default()));
        // Still held until the new connection confirms them.
        assert_eq!(u.len(), 2);
    }

    #[test]
    fn failed_requests_are_kept_to_be_sent_again() {
        let c = Confirmations::default();
        let mut u = Unconfirmed::default();
        let sub = crate::shared::encode_frame(
            &Frame::Subscribe(slim_wire::Subscribe {
                id: 9,
                name: Name::parse("acme/ops/x").unwrap(),
            }),
            &Limits::default(),
        )
        .unwrap();
        u.push(sub.clone());
        u.push(publish(7));
        let (ids, others) = u.take_failed(&c);
        assert_eq!(ids, vec![(7, Some(Name::parse("acme/ops/x").unwrap()))]);
        assert_eq!(others, vec![sub]);
    }

    #[test]
    fn a_chunk_of_publishes_and_a_request_fails_the_publishes_and_keeps_the_request() {
        let c = Confirmations::default();
        let mut u = Unconfirmed::default();
        let sub = crate::shared::encode_frame(
            &Frame::Subscribe(slim_wire::Subscribe {
                id: 9,
                name: Name::parse("acme/ops/x").unwrap(),
            }),
            &Limits::default(),
        )
        .unwrap();
        let mut batch = vec![publish(1), sub.clone(), publish(2)];
        let mut chunks = Vec::new();
        slim_wire::coalesce(&mut batch, COALESCE, &mut chunks);
        assert_eq!(chunks.len(), 1, "one coalesced chunk");
        u.push(chunks.pop().unwrap());
        let (ids, others) = u.take_failed(&c);
        let ids: Vec<u64> = ids.into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, vec![1, 2]);
        assert_eq!(others, vec![sub]);
    }

    #[tokio::test]
    async fn the_byte_bound_holds_a_publisher_until_the_writer_gives_bytes_back() {
        let b = std::sync::Arc::new(OutboundBytes::new(100));
        assert!(b.try_take(60));
        assert!(!b.try_take(50), "60 + 50 is over the bound");
        assert!(b.try_take(40));
        let waiter = tokio::spawn({
            let b = std::sync::Arc::clone(&b);
            async move { b.take(30).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "taken with the queue full");
        b.give_back(60);
        waiter.await.unwrap();
        assert_eq!(b.queued(), 70);
        // A frame larger than the whole bound goes, alone.
        b.give_back(70);
        assert!(b.try_take(500));
        assert!(!b.try_take(1));
        b.give_back(500);
        b.empty().await;
    }

    #[test]
    fn the_buffer_is_bounded() {
        let mut u = Unconfirmed::default();
        for id in 0..Unconfirmed::MAX_ENTRIES as u64 {
            assert!(!u.full());
            u.push(publish(id));
        }
        assert!(u.full());
        u.trim(10);
        assert!(!u.full());
    }

    /// Two publishers' frames, each carved out of its own scratch buffer and
    /// queued interleaved in runs of 1, 3 and 40 frames (as publishers on two
    /// threads are), come out complete and in queue order; the long runs are
    /// written (and held) as parts of the scratch buffers themselves.
    #[tokio::test]
    async fn interleaved_scratch_runs_are_written_whole_and_in_order() {
        let (client_end, node_end) = tokio::io::duplex(1 << 20);
        let limits = Limits::default();
        let reader = tokio::spawn(async move {
            let mut r = slim_framed::FrameReader::new(node_end, limits);
            let mut ids = Vec::new();
            while let Ok(Some(f)) = r.read_frame().await {
                if let Frame::Publish(p) = f {
                    assert_eq!(p.payload.len(), 100 + (p.msg_id % 7) as usize * 300);
                    ids.push(p.msg_id);
                }
            }
            ids
        });
        let cap = 8 << 20;
        let mut scratch = [BytesMut::with_capacity(cap), BytesMut::with_capacity(cap)];
        let bases = scratch.each_ref().map(|b| b.as_ptr() as usize);
        let total = 2_000u64;
        let (tx, mut rx) = mpsc::channel(total as usize);
        let budget = OutboundBytes::new(usize::MAX);
        let (mut id, mut turn) = (0u64, 0usize);
        for run in [1u64, 3, 40].into_iter().cycle() {
            let b = &mut scratch[turn % 2];
            turn += 1;
            for _ in 0..run.min(total - id) {
                codec::encode_publish(
                    &Name::parse("acme/ops/x").unwrap(),
                    Mode::Anycast,
                    0,
                    id,
                    &vec![7u8; 100 + (id % 7) as usize * 300],
                    &limits,
                    b,
                )
                .unwrap();
                let f = b.split();
                assert!(budget.try_take(f.len()));
                tx.try_send(f).unwrap();
                id += 1;
            }
            if id == total {
                break;
            }
        }
        drop(tx);
        let c = Confirmations::default();
        let mut w = FrameWriter::new(slim_framed::IoSink(client_end));
        let mut u = Unconfirmed::default();
        pump(
            &mut rx,
            &budget,
            &mut w,
            &mut u,
            &c,
            &Default::default(),
            &limits,
        )
        .await
        .unwrap();
        drop(w);
        let ids = reader.await.unwrap();
        assert_eq!(ids, (0..total).collect::<Vec<_>>());
        assert_eq!(budget.queued(), 0);
        let in_scratch = u
            .frames
            .iter()
            .filter(|(_, f)| {
                let p = f.as_ptr() as usize;
                bases.iter().any(|&b| p >= b && p < b + cap)
            })
            .count();
        assert!(
            in_scratch > 0,
            "every piece written was a copy ({} pieces)",
            u.len()
        );
    }

    /// A publisher faster than the node's confirmations fills the buffer
    /// within one ping interval: the writer must then ping at once rather
    /// than wait for pongs it never asked for (it used to stall for good).
    #[tokio::test(start_paused = true)]
    async fn a_full_buffer_asks_for_its_confirmation_and_goes_on() {
        let (client_end, node_end) = tokio::io::duplex(1 << 20);
        let limits = Limits::default();
        let c = std::sync::Arc::new(Confirmations::default());
        // The node: reads frames in order, answers each confirming ping.
        let node_c = std::sync::Arc::clone(&c);
        let node = tokio::spawn(async move {
            let mut r = slim_framed::FrameReader::new(node_end, limits);
            let mut publishes = 0u64;
            while let Ok(Some(f)) = r.read_frame().await {
                match f {
                    Frame::Publish(_) => publishes += 1,
                    Frame::Ping(p) => {
                        node_c.handle_pong(p.nonce);
                    }
                    _ => {}
                }
            }
            publishes
        });
        // Everything queued up front, and the clock paused: the writer
        // fills its buffer without the ping interval ever passing. Frames
        // of 16 KiB are written (and held) one by one, not coalesced.
        let size = COALESCE / 4;
        let total = 3 * (Unconfirmed::MAX_BYTES / size) as u64;
        let (tx, mut rx) = mpsc::channel(total as usize);
        let budget = OutboundBytes::new(usize::MAX);
        for id in 0..total {
            let f = BytesMut::from(&publish_sized(id, size)[..]);
            assert!(budget.try_take(f.len()));
            tx.try_send(f).unwrap();
        }
        drop(tx);
        let mut w = FrameWriter::new(slim_framed::IoSink(client_end));
        let mut u = Unconfirmed::default();
        let done = tokio::time::timeout(
            Duration::from_secs(60),
            pump(
                &mut rx,
                &budget,
                &mut w,
                &mut u,
                &c,
                &Default::default(),
                &limits,
            ),
        )
        .await;
        assert!(
            done.is_ok(),
            "the writer stalled with {} frames unconfirmed",
            u.len()
        );
        drop(w);
        assert_eq!(node.await.unwrap(), total);
        assert_eq!(
            budget.queued(),
            0,
            "every written frame's bytes were given back"
        );
    }
}
