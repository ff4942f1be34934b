//! Deadlines and a budget for frames a client has begun to send but not
//! finished. A frame buffer grows only as bytes arrive (never from the
//! declared length), but without these a client could declare a 1 MiB
//! frame, send all but its last bytes and trickle the rest, holding the
//! buffer for as long as it likes — and so could thousands of clients.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::conn::shared::ConnError;

/// Bytes of an incomplete frame that do not count against the node's
/// budget: frames up to this size complete within a read or two, and every
/// busy connection has the start of its next frame buffered most of the time.
pub const PARTIAL_FRAME_FREE: usize = 64 << 10;

/// One connection's incomplete frame: since when, and what it holds of the
/// node's shared budget.
pub(crate) struct PartialFrame<'a> {
    total: &'a AtomicUsize,
    budget: usize,
    timeout: Duration,
    /// When the frame now incomplete began to arrive.
    since: Option<Instant>,
    /// This connection's share of `total`.
    held: usize,
}

impl<'a> PartialFrame<'a> {
    pub(crate) fn new(total: &'a AtomicUsize, budget: usize, timeout: Duration) -> Self {
        PartialFrame {
            total,
            budget,
            timeout,
            since: None,
            held: 0,
        }
    }

    /// After the buffered whole frames were handled: `completed` of them,
    /// `buffered` bytes left (the start of a frame, if any). Fails when the
    /// bytes held would take the node over its budget.
    pub(crate) fn update(
        &mut self,
        now: Instant,
        completed: usize,
        buffered: usize,
    ) -> Result<(), ConnError> {
        if buffered == 0 {
            self.since = None;
        } else if completed > 0 || self.since.is_none() {
            // What is buffered now is the start of a frame after the ones
            // just completed.
            self.since = Some(now);
        }
        let want = buffered.saturating_sub(PARTIAL_FRAME_FREE);
        if want > self.held {
            let grow = want - self.held;
            let before = self.total.fetch_add(grow, Ordering::Relaxed);
            self.held = want;
            if before + grow > self.budget {
                return Err(ConnError::PartialFrame {
                    reason: "budget",
                    detail: format!(
                        "closed: incomplete frames on this node passed its budget of {} bytes (this connection held {want}); send large frames faster",
                        self.budget
                    ),
                });
            }
        } else if want < self.held {
            self.total.fetch_sub(self.held - want, Ordering::Relaxed);
            self.held = want;
        }
        Ok(())
    }

    /// When the incomplete frame must be complete, if there is one.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.since.map(|s| s + self.timeout)
    }

    /// The error for a frame that missed its deadline, `buffered` bytes in.
    pub(crate) fn timed_out(&self, buffered: usize) -> ConnError {
        ConnError::PartialFrame {
            reason: "timeout",
            detail: format!(
                "closed: a frame begun {:?} ago was not complete ({buffered} bytes received); frames must arrive within frame_read_timeout",
                self.timeout
            ),
        }
    }
}

impl Drop for PartialFrame<'_> {
    fn drop(&mut self) {
        if self.held > 0 {
            self.total.fetch_sub(self.held, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_follows_the_frame_not_the_reads() {
        let total = AtomicUsize::new(0);
        let mut p = PartialFrame::new(&total, 1 << 20, Duration::from_secs(10));
        let t0 = Instant::now();
        p.update(t0, 0, 0).unwrap();
        assert_eq!(p.deadline(), None);
        // A frame begins; more of it arrives later: the deadline stays.
        p.update(t0, 0, 100).unwrap();
        let d = p.deadline().unwrap();
        p.update(t0 + Duration::from_secs(3), 0, 5000).unwrap();
        assert_eq!(p.deadline(), Some(d));
        // It completes and the next one has begun: a new deadline.
        let t1 = t0 + Duration::from_secs(4);
        p.update(t1, 1, 10).unwrap();
        assert_eq!(p.deadline(), Some(t1 + Duration::from_secs(10)));
        p.update(t1, 1, 0).unwrap();
        assert_eq!(p.deadline(), None);
    }

    #[test]
    fn budget_is_shared_and_given_back() {
        let total = AtomicUsize::new(0);
        let budget = 2 * PARTIAL_FRAME_FREE;
        let now = Instant::now();
        let mut a = PartialFrame::new(&total, budget, Duration::from_secs(10));
        let mut b = PartialFrame::new(&total, budget, Duration::from_secs(10));
        // Small partial frames are free.
        a.update(now, 0, PARTIAL_FRAME_FREE).unwrap();
        assert_eq!(total.load(Ordering::Relaxed), 0);
        a.update(now, 0, 2 * PARTIAL_FRAME_FREE).unwrap();
        assert_eq!(total.load(Ordering::Relaxed), PARTIAL_FRAME_FREE);
        b.update(now, 0, 2 * PARTIAL_FRAME_FREE).unwrap();
        let err = b.update(now, 0, 2 * PARTIAL_FRAME_FREE + 1).unwrap_err();
        assert!(matches!(
            err,
            ConnError::PartialFrame {
                reason: "budget",
                ..
            }
        ));
        drop(b);
        assert_eq!(total.load(Ordering::Relaxed), PARTIAL_FRAME_FREE);
        a.update(now, 1, 0).unwrap();
        assert_eq!(total.load(Ordering::Relaxed), 0);
    }
}
