//! The outbox's queueing, waiting, overflow and slow-consumer decisions.

use super::*;
use std::sync::Arc;

fn waiting(action: SlowAction) -> SlowConsumerPolicy {
    SlowConsumerPolicy::wait(Duration::from_secs(3600), action)
}

/// A pusher waiting for room for `frame`; returns once it is waiting.
async fn spawn_waiter(
    q: &std::sync::Arc<Outbox>,
    frame: &'static [u8],
) -> tokio::task::JoinHandle<Push> {
    let waiter = {
        let q = q.clone();
        tokio::spawn(async move { q.push_wait_frames(Bytes::from_static(frame), 1).await })
    };
    while q.waiters.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    waiter
}

#[test]
fn fire_and_forget_drops_newest_at_once() {
    let (q, rx) = Outbox::new(100, 10, SlowConsumerPolicy::drop_newest());
    assert_eq!(q.push(Bytes::from_static(b"123456")), Push::Queued);
    assert_eq!(
        q.push(Bytes::from_static(b"123456")),
        Push::Slow { shed: 0 }
    );
    assert_eq!(q.queued_bytes(), 6);
    assert_eq!(q.dropped(), 1);
    let b = rx.try_recv().unwrap();
    q.written(b.len());
    assert_eq!(q.push(Bytes::from_static(b"123456")), Push::Queued);
}

#[test]
fn a_full_queue_hands_the_frame_back_to_wait() {
    let (q, _rx) = Outbox::new(1, 1000, waiting(SlowAction::Drop));
    assert_eq!(q.push(Bytes::from_static(b"a")), Push::Queued);
    assert_eq!(
        q.push(Bytes::from_static(b"b")),
        Push::Full(Bytes::from_static(b"b"))
    );
    assert_eq!(q.dropped(), 0, "waiting is not dropping");
}

#[tokio::test]
async fn a_waiting_push_goes_through_once_the_writer_makes_room() {
    let (q, rx) = Outbox::new(1, 1000, waiting(SlowAction::Disconnect));
    let q = std::sync::Arc::new(q);
    assert_eq!(q.push(Bytes::from_static(b"a")), Push::Queued);
    let waiter = spawn_waiter(&q, b"b").await;
    // The writer takes "a" only once the pusher is waiting for room.
    let a = rx.recv().await.unwrap();
    q.written(a.len());
    assert_eq!(waiter.await.unwrap(), Push::Queued);
    assert_eq!(rx.recv().await.unwrap(), Bytes::from_static(b"b"));
    assert_eq!((q.dropped(), q.waits()), (0, 1));
}

#[tokio::test]
async fn past_the_deadline_a_disconnect_policy_closes() {
    let (q, _rx) = Outbox::new(1, 1000, waiting(SlowAction::Disconnect));
    assert_eq!(q.push(Bytes::from_static(b"a")), Push::Queued);
    let past = tokio::time::Instant::now();
    let out = q.push_wait(Bytes::from_static(b"b"), past).await;
    assert_eq!(out, Push::Disconnect);
    assert!(q.is_closed());
    assert_eq!(q.push(Bytes::from_static(b"c")), Push::Closed);
}

#[tokio::test]
async fn past_the_deadline_a_drop_policy_stops_waiting_until_drained() {
    let (q, rx) = Outbox::new(1, 1000, waiting(SlowAction::Drop));
    assert_eq!(q.push(Bytes::from_static(b"a")), Push::Queued);
    let past = tokio::time::Instant::now();
    assert_eq!(
        q.push_wait(Bytes::from_static(b"b"), past).await,
        Push::Slow { shed: 0 }
    );
    assert!(q.is_slow() && !q.is_closed());
    // Declared slow: the next full push drops without waiting.
    assert_eq!(q.push(Bytes::from_static(b"c")), Push::Dropped);
    assert_eq!(q.dropped(), 2);
    // Once drained it is waited for again.
    let a = rx.try_recv().unwrap();
    q.written(a.len());
    assert!(!q.is_slow());
    assert_eq!(q.push(Bytes::from_static(b"d")), Push::Queued);
    assert!(matches!(q.push(Bytes::from_static(b"e")), Push::Full(_)));
}

#[tokio::test]
async fn closing_wakes_a_waiting_pusher() {
    let (q, _rx) = Outbox::new(1, 1000, waiting(SlowAction::Drop));
    let q = std::sync::Arc::new(q);
    assert_eq!(q.push(Bytes::from_static(b"a")), Push::Queued);
    let waiter = spawn_waiter(&q, b"b").await;
    q.close();
    assert_eq!(waiter.await.unwrap(), Push::Closed);
}

fn pooled(max_bytes: usize, pool: usize, deadline: Duration) -> (Outbox, QueueRx, Arc<Overflow>) {
    pooled_with(max_bytes, pool, deadline, SlowAction::Disconnect)
}

fn pooled_with(
    max_bytes: usize,
    pool: usize,
    deadline: Duration,
    action: SlowAction,
) -> (Outbox, QueueRx, Arc<Overflow>) {
    let pool = Arc::new(Overflow::new(pool));
    let (q, rx) = Outbox::new(100, max_bytes, SlowConsumerPolicy::wait(deadline, action));
    (q.with_overflow(Arc::clone(&pool)), rx, pool)
}

/// `frame` finds the queue full; once the writer has been stuck for
/// [`BORROW_AFTER`] it goes into borrowed room.
fn push_after_a_stall(q: &Outbox, frame: Bytes) {
    assert!(
        matches!(q.push(frame.clone()), Push::Full(_)),
        "borrows only after a stall"
    );
    std::thread::sleep(BORROW_AFTER + BORROW_AFTER / 2);
    assert_eq!(q.push(frame), Push::Queued);
}

#[test]
fn a_stalled_queue_borrows_from_the_pool_and_the_writer_gives_it_back() {
    let (q, rx, pool) = pooled(10, 20, Duration::from_secs(3600));
    assert_eq!(q.push(Bytes::from_static(b"aaaaaa")), Push::Queued);
    let shared = Bytes::from_static(b"bbbbbb");
    push_after_a_stall(&q, shared.clone());
    assert_eq!(
        q.push(Bytes::from_static(b"cccccccccc")),
        Push::Queued,
        "still stuck"
    );
    assert_eq!((q.borrowed(), pool.used()), (16, 16));
    assert!(
        matches!(q.push(Bytes::from_static(b"dddddd")), Push::Full(_)),
        "the pool is used up: wait"
    );
    assert_eq!(
        (q.borrowed(), pool.used()),
        (16, 16),
        "a refused push holds nothing"
    );
    assert_eq!(q.dropped(), 0);
    let a = rx.try_recv().unwrap();
    q.written(a.len());
    assert_eq!(
        (q.borrowed(), pool.used()),
        (6, 6),
        "only what is over the cap stays borrowed"
    );
    let b = rx.try_recv().unwrap();
    assert_eq!(b, shared);
    assert_ne!(
        b.as_ptr(),
        shared.as_ptr(),
        "a borrowed frame is a copy of its own"
    );
    q.written(b.len());
    assert_eq!((q.borrowed(), pool.used()), (0, 0));
}

#[test]
fn a_queue_whose_writer_moves_does_not_borrow() {
    let (q, rx, pool) = pooled(10, 100, Duration::from_secs(3600));
    assert_eq!(q.push(Bytes::from_static(b"aaaaaaaa")), Push::Queued);
    assert!(matches!(
        q.push(Bytes::from_static(b"bbbbbb")),
        Push::Full(_)
    ));
    std::thread::sleep(BORROW_AFTER + BORROW_AFTER / 2);
    // The writer wrote part of what is queued: its client reads, if
    // slowly. Its publisher waits for it rather than queueing more.
    q.queued_bytes.fetch_add(2, Ordering::SeqCst);
    q.written(2);
    assert!(matches!(
        q.push(Bytes::from_static(b"bbbbbb")),
        Push::Full(_)
    ));
    assert_eq!(pool.used(), 0);
    drop(rx);
}

#[test]
fn an_outbox_gives_its_room_back_when_it_goes() {
    let (q, rx, pool) = pooled(4, 100, Duration::from_secs(3600));
    assert_eq!(q.push(Bytes::from_static(b"aaaa")), Push::Queued);
    push_after_a_stall(&q, Bytes::from_static(b"bbbb"));
    assert_eq!(pool.used(), 4);
    q.detach();
    assert_eq!(pool.used(), 0, "its writer has ended");
    drop(rx);
    assert_eq!(q.push(Bytes::from_static(b"cccc")), Push::Closed);
    assert_eq!(pool.used(), 0, "a push to a closed queue holds nothing");
    let (q, _rx, pool) = pooled(4, 100, Duration::from_secs(3600));
    assert_eq!(q.push(Bytes::from_static(b"aaaa")), Push::Queued);
    push_after_a_stall(&q, Bytes::from_static(b"bbbb"));
    drop(q);
    assert_eq!(pool.used(), 0, "dropped with room borrowed");
}

#[test]
fn a_stalled_queue_holding_room_is_expired_without_a_push() {
    let (q, rx, pool) = pooled(4, 100, Duration::from_millis(600));
    assert_eq!(q.push(Bytes::from_static(b"aaaa")), Push::Queued);
    push_after_a_stall(&q, Bytes::from_static(b"bbbb"));
    assert_eq!(q.expire_stalled(), None, "not yet");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(q.expire_stalled(), Some(Push::Disconnect));
    assert!(q.is_closed());
    assert_eq!(q.expire_stalled(), None, "expired once");
    drop((q, rx));
    assert_eq!(pool.used(), 0);
}

/// One encoded frame of 5 bytes (length 1, then `c`).
fn frame(c: u8) -> Bytes {
    Bytes::from(vec![0, 0, 0, 1, c])
}

#[test]
fn a_drop_policy_queue_declared_slow_gives_its_overflow_room_back() {
    let (q, rx, pool) = pooled_with(5, 100, Duration::from_millis(600), SlowAction::Drop);
    assert_eq!(q.push(frame(b'a')), Push::Queued);
    push_after_a_stall(&q, frame(b'b'));
    assert_eq!(q.push(frame(b'c')), Push::Queued, "still stuck");
    assert_eq!((q.borrowed(), pool.used()), (10, 10));
    std::thread::sleep(Duration::from_millis(600));
    // Declared slow (by the sweep here; a push past the deadline does the
    // same): the connection stays up, its borrowed frames go.
    assert_eq!(q.expire_stalled(), Some(Push::Slow { shed: 2 }));
    assert_eq!((q.borrowed(), pool.used()), (0, 0));
    assert_eq!((q.dropped(), q.queued_bytes()), (2, 5));
    assert!(q.is_slow() && !q.is_closed());
    assert_eq!(q.push(frame(b'd')), Push::Dropped, "slow: no borrowing");
    assert_eq!(pool.used(), 0);
    // What fitted under the cap is still delivered, and once it is written
    // the queue is waited for (and may borrow) again.
    let a = rx.try_recv().unwrap();
    assert_eq!(a, frame(b'a'));
    assert_eq!(rx.try_recv(), None);
    q.written(a.len());
    assert!(!q.is_slow());
    assert_eq!(q.dropped(), 3);
}

#[test]
fn a_queue_whose_writer_makes_progress_is_not_expired() {
    let (q, rx, _pool) = pooled(4, 100, Duration::from_millis(600));
    assert_eq!(q.push(Bytes::from_static(b"aaaa")), Push::Queued);
    push_after_a_stall(&q, Bytes::from_static(b"bbbbbbbb"));
    std::thread::sleep(Duration::from_millis(600));
    // The writer wrote something since the clock started: a new stall
    // begins now, however long the queue has been full.
    let a = rx.try_recv().unwrap();
    q.written(a.len());
    assert_eq!(q.expire_stalled(), None);
    assert!(!q.is_closed());
}

/// A pusher waits as long as the writer makes progress, even past the
/// deadline in total, and gives up once it makes none for the deadline.
#[tokio::test]
async fn a_data_push_waits_while_the_writer_moves_and_not_longer() {
    let deadline = Duration::from_secs(2);
    let (q, rx) = Outbox::new(
        1,
        1000,
        SlowConsumerPolicy::wait(deadline, SlowAction::Disconnect),
    );
    let q = Arc::new(q);
    assert_eq!(q.push(Bytes::from_static(b"a")), Push::Queued);
    let waiter = spawn_waiter(&q, b"b").await;
    // Progress without room (the writer wrote part of what is queued),
    // for three deadlines in all.
    q.queued_bytes.fetch_add(6, Ordering::SeqCst);
    for _ in 0..6 {
        tokio::time::sleep(deadline / 2).await;
        q.written(1);
        assert!(!waiter.is_finished(), "gave up while the writer was moving");
    }
    // Then no progress at all: the deadline applies.
    let out = tokio::time::timeout(deadline * 5, waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out, Push::Disconnect);
    drop(rx);
}

#[test]
fn oversized_frame_passes_on_empty_queue() {
    let (q, _rx) = Outbox::new(10, 4, SlowConsumerPolicy::drop_newest());
    assert_eq!(q.push(Bytes::from_static(b"0123456789")), Push::Queued);
    assert_eq!(q.push(Bytes::from_static(b"x")), Push::Slow { shed: 0 });
}

/// A client's read-progress report moves the deadline on as the writer's
/// progress does, but only up to `REPORT_STRETCH` deadlines past the
/// writer's last move: without credit, reports alone cannot keep a queue
/// from being declared slow. The stall itself (what borrowing overflow room
/// goes by) stays the writer's.
#[test]
fn read_reports_hold_the_deadline_off_for_at_most_the_stretch() {
    let d = Duration::from_secs(2);
    let dn = d.as_nanos() as u64;
    let (q, _rx) = Outbox::new(1, 1000, SlowConsumerPolicy::wait(d, SlowAction::Disconnect));
    let t0 = 1_000_000;
    assert_eq!(
        q.stall_window(t0),
        (t0, t0 + dn),
        "first look: the writer's stall"
    );

    q.reported.store(t0 + dn / 2, Ordering::Relaxed);
    assert_eq!(
        q.stall_window(t0 + dn),
        (t0, t0 + dn / 2 + dn),
        "a report moves the deadline on"
    );

    let late = t0 + dn * (REPORT_STRETCH - 1) + dn / 2;
    q.reported.store(late, Ordering::Relaxed);
    assert_eq!(
        q.stall_window(late + 1),
        (t0, t0 + dn * REPORT_STRETCH),
        "but not past the stretch from the writer's last move"
    );

    // The writer moves: a new stall, the old report no longer counts.
    q.written_total.fetch_add(1, Ordering::Relaxed);
    let t1 = late + dn;
    assert_eq!(q.stall_window(t1), (t1, t1 + dn));
}

#[test]
fn a_read_report_must_grow() {
    let (q, _rx) = Outbox::new(1, 1000, waiting(SlowAction::Disconnect));
    assert_eq!(
        q.note_read_progress(0),
        Err(0),
        "nothing read is no progress"
    );
    assert_eq!(q.note_read_progress(10), Ok(()));
    assert_eq!(q.note_read_progress(10), Err(10));
    assert_eq!(q.note_read_progress(5), Err(10));
    assert_eq!(q.note_read_progress(11), Ok(()));
    assert_eq!(q.read_reported(), 11);
}
