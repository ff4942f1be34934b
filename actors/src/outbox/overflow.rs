//! Room beyond a client outbox's own cap, shared by the node's client
//! connections, and the clock that says how long a queue's writer has been
//! stuck.
//!
//! Why: with only a per-connection cap, one subscriber that stops reading
//! makes every publisher that sends to it wait, for the whole write deadline,
//! before it is cut; everyone else subscribed to those publishers gets
//! nothing meanwhile (the readers' rate fell to ~0.85 over a 10 s window at a
//! 2 s deadline). NATS buffers for a stalled subscriber instead (up to
//! `max_pending`, 64 MB per connection) and lets its publishers run on. Here
//! a full outbox may *borrow* from one node-wide pool (`[queue]
//! overflow_bytes`): a publisher waits only once the pool is used up, so one
//! stalled subscriber costs memory (bounded for the whole node, not per
//! connection) instead of everyone's time. Borrowed frames are copied, so they
//! pin only their own bytes, not the shared encode chunk of a fan-out read.
//!
//! A subscriber is a slow consumer once its outbox is over its cap and its
//! writer has made no progress for the write deadline ([`StallClock`]), as
//! NATS's write deadline is the time a write may block: a subscriber that
//! reads slowly but steadily slows its publishers instead of being cut. The
//! writer moves only when the client grants stream credit, which quinn does
//! per eighth of the window read (512 KiB of the SDK's 4 MiB); in between,
//! the SDK's read-progress reports show the reading (see
//! `Outbox::stall_window`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The node-wide pool client outboxes borrow from when full.
#[derive(Debug)]
pub struct Overflow {
    limit: usize,
    used: AtomicUsize,
}

impl Overflow {
    /// A pool of `limit` bytes (0: outboxes never borrow).
    pub fn new(limit: usize) -> Overflow {
        Overflow {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// Takes `n` bytes if the pool has them.
    pub(super) fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u + n <= self.limit).then_some(u + n)
            })
            .is_ok()
    }

    /// Gives back `n` bytes taken earlier.
    pub(super) fn give(&self, n: usize) {
        let prev = self.used.fetch_sub(n, Ordering::AcqRel);
        debug_assert!(prev >= n, "overflow pool given back more than was taken");
    }

    /// Bytes borrowed now, by all outboxes together.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// When the current stall of a queue's writer began. The clock starts the
/// first time someone looks while the queue is over its cap, and starts
/// again whenever the writer has made progress since the last look (its
/// activity counter moved), so it measures time without progress, not time
/// spent full.
#[derive(Debug, Default)]
pub(super) struct StallClock {
    /// Nanoseconds since the outbox epoch (0: never started).
    since: AtomicU64,
    /// The writer's activity counter when the clock (re)started.
    mark: AtomicU64,
}

impl StallClock {
    /// The start of the stall that `activity` shows (`now` if the writer
    /// moved since the last look). Concurrent lookers may both restart it;
    /// either start is a moment without progress since, so both are right.
    pub(super) fn started(&self, activity: u64, now: u64) -> u64 {
        let since = self.since.load(Ordering::Acquire);
        if since != 0 && self.mark.load(Ordering::Acquire) == activity {
            return since;
        }
        self.mark.store(activity, Ordering::Release);
        self.since.store(now, Ordering::Release);
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_lends_up_to_its_limit_and_takes_back_what_is_given() {
        let p = Overflow::new(100);
        assert!(p.take(60));
        assert!(!p.take(41), "past the limit");
        assert!(p.take(40));
        assert_eq!(p.used(), 100);
        p.give(60);
        assert!(p.take(10));
        assert_eq!(p.used(), 50);
        assert!(!Overflow::new(0).take(1), "an empty pool lends nothing");
    }

    #[test]
    fn the_stall_clock_restarts_only_on_progress() {
        let c = StallClock::default();
        assert_eq!(c.started(7, 1_000), 1_000, "first look starts it");
        assert_eq!(c.started(7, 5_000), 1_000, "no progress: same stall");
        assert_eq!(c.started(8, 9_000), 9_000, "progress: a new stall");
        assert_eq!(c.started(8, 12_000), 9_000);
    }
}
