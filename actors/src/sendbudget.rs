//! The node-wide budget for bytes handed to QUIC and not yet acknowledged
//! by client connections.
//!
//! Every client connection may have up to [`MAX_WINDOW`] unacknowledged
//! bytes in QUIC's send buffer (its send window). That is what one fast
//! subscriber needs for full speed, but under fan-out every receiving
//! connection fills its window at once: 1,000 subscribers of one publisher
//! held ~2 GiB in send buffers alone (docs/BENCHMARKS.md, "Fan-out memory").
//! The budget splits [`NodeConfig::send_budget`](crate::NodeConfig) among
//! the connections that are receiving: each gets `budget ÷ receiving`,
//! rounded down to a power of two, between [`MIN_WINDOW`] and
//! [`MAX_WINDOW`]. One busy subscriber among thousands of idle ones keeps
//! the full window; a thousand busy ones share the budget.
//!
//! [`SendBudget`] is the decision, free of I/O; [`run`] samples the
//! connections every [`TICK`] and applies changed windows with
//! `quinn::Connection::set_send_window` (QUIC blocks further writes until
//! the unacknowledged bytes are under a lowered window: nothing is dropped).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::info;

use crate::ctx::NodeCtx;
use crate::metrics as m;
use crate::registry::ConnId;

/// A connection's send window when few connections are receiving, and the
/// window it starts with (the transport's, `ctx::CLIENT_SEND_WINDOW`).
pub const MAX_WINDOW: u64 = crate::ctx::CLIENT_SEND_WINDOW;

/// The smallest window the budget gives: enough for a fan-out subscriber's
/// share of a link; below it per-connection throughput would suffer more
/// than the memory saved is worth. `MIN_WINDOW × receiving` may exceed the
/// budget when more than `budget ÷ MIN_WINDOW` connections receive at once.
pub const MIN_WINDOW: u64 = 64 << 10;

/// How often the connections are sampled. A fan-out burst fills windows
/// within a second or so; sampling four times a second catches it early.
pub const TICK: Duration = Duration::from_millis(250);

/// Ticks a larger window must be due before it is given: shrinking is
/// immediate (memory), growing waits so that a receiving count flapping
/// around a power of two does not retune every connection each tick.
const GROW_AFTER_TICKS: u32 = 4;

/// What one sample of a connection shows.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub conn: ConnId,
    /// Bytes its writer has handed to QUIC so far (monotonic).
    pub written: u64,
    /// Bytes waiting in its outbound queue now.
    pub queued: usize,
}

#[derive(Debug)]
struct Seen {
    written: u64,
    window: u64,
}

/// Decides every client connection's send window from which of them are
/// receiving.
#[derive(Debug)]
pub struct SendBudget {
    budget: u64,
    seen: HashMap<ConnId, Seen>,
    /// The next tick's `seen`, kept to reuse its allocation.
    spare: HashMap<ConnId, Seen>,
    /// The window currently given.
    window: u64,
    /// Consecutive ticks a larger window than `window` was due.
    grow_due: u32,
    receiving: usize,
}

impl SendBudget {
    pub fn new(budget: u64) -> Self {
        SendBudget {
            budget,
            seen: HashMap::new(),
            spare: HashMap::new(),
            window: MAX_WINDOW,
            grow_due: 0,
            receiving: 0,
        }
    }

    /// The window for `receiving` connections receiving at once.
    pub fn window_for(&self, receiving: usize) -> u64 {
        let share = self.budget / receiving.max(1) as u64;
        // A power of two, so the window changes only when the count crosses
        // one (and rounding down keeps the total within the budget).
        let pow2 = if share == 0 {
            0
        } else {
            1u64 << (63 - share.leading_zeros())
        };
        pow2.clamp(MIN_WINDOW, MAX_WINDOW)
    }

    /// The window given now.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// Connections that were receiving at the last tick.
    pub fn receiving(&self) -> usize {
        self.receiving
    }

    /// One tick's samples of every client connection; returns the
    /// connections whose window must change and to what. A connection is
    /// receiving if its writer handed bytes to QUIC since the last tick or
    /// its queue holds some. Connections not sampled are forgotten.
    pub fn handle_tick(&mut self, samples: impl IntoIterator<Item = Sample>) -> Vec<(ConnId, u64)> {
        let mut receiving = 0usize;
        let mut present = std::mem::take(&mut self.spare);
        present.clear();
        for s in samples {
            let (active, window) = match self.seen.get(&s.conn) {
                Some(prev) => (s.written != prev.written || s.queued > 0, prev.window),
                // New since the last tick: it starts at the transport's
                // window, and counts as receiving if it already has anything.
                None => (s.written > 0 || s.queued > 0, MAX_WINDOW),
            };
            receiving += usize::from(active);
            present.insert(
                s.conn,
                Seen {
                    written: s.written,
                    window,
                },
            );
        }
        self.spare = std::mem::replace(&mut self.seen, present);
        self.receiving = receiving;
        let due = self.window_for(receiving);
        if due < self.window {
            self.window = due;
            self.grow_due = 0;
        } else if due > self.window {
            self.grow_due += 1;
            if self.grow_due >= GROW_AFTER_TICKS {
                self.window = due;
                self.grow_due = 0;
            }
        } else {
            self.grow_due = 0;
        }
        let want = self.window;
        let mut changes = Vec::new();
        for (id, seen) in &mut self.seen {
            if seen.window != want {
                seen.window = want;
                changes.push((*id, want));
            }
        }
        changes
    }
}

/// Samples the node's client connections every [`TICK`] and applies the
/// windows [`SendBudget`] decides, until the node shuts down. The same tick
/// expires stalled outboxes that hold overflow room
/// ([`NodeCtx::expire_stalled`]): it already visits every connection.
pub(crate) async fn run(ctx: Arc<NodeCtx>) {
    let budget = ctx.cfg.send_budget;
    let mut state = SendBudget::new(budget);
    let mut shutdown = ctx.shutdown_rx();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut samples = Vec::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        samples.clear();
        samples.extend(ctx.conns.iter().map(|c| Sample {
            conn: c.id,
            written: c.outbox.activity(),
            queued: c.outbox.queued_bytes(),
        }));
        let before = state.window();
        let changes = state.handle_tick(samples.iter().copied());
        for (id, window) in &changes {
            if let Some(c) = ctx.conns.get(id) {
                c.conn.set_send_window(*window);
            }
        }
        if state.window() != before {
            info!(
                window_kib = state.window() >> 10,
                receiving = state.receiving(),
                budget_mib = budget >> 20,
                "each client connection's QUIC send window is now {} KiB: {} connections are receiving and share the node's send budget ([queue] send_budget_bytes)",
                state.window() >> 10,
                state.receiving()
            );
        }
        ctx.send_window.store(state.window(), Ordering::Relaxed);
        ctx.expire_stalled();
        metrics::gauge!(m::SEND_WINDOW_BYTES).set(state.window() as f64);
        metrics::gauge!(m::RECEIVING_CONNECTIONS).set(state.receiving() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(b: &mut SendBudget, conns: &[(ConnId, u64, usize)]) -> Vec<(ConnId, u64)> {
        let mut c = b.handle_tick(conns.iter().map(|&(conn, written, queued)| Sample {
            conn,
            written,
            queued,
        }));
        c.sort();
        c
    }

    #[test]
    fn the_window_is_the_budget_share_as_a_power_of_two_within_its_bounds() {
        let b = SendBudget::new(256 << 20);
        assert_eq!(b.window_for(0), MAX_WINDOW);
        assert_eq!(b.window_for(1), MAX_WINDOW);
        assert_eq!(b.window_for(128), MAX_WINDOW);
        assert_eq!(b.window_for(129), 1 << 20);
        assert_eq!(b.window_for(1000), 256 << 10);
        assert_eq!(b.window_for(1_000_000), MIN_WINDOW);
        // Rounded down: the windows of all receivers stay within the budget.
        for n in [3usize, 200, 700, 1500, 3000] {
            let w = b.window_for(n);
            assert!(w * n as u64 <= 256 << 20 || w == MIN_WINDOW, "{n}: {w}");
        }
    }

    #[test]
    fn many_receiving_connections_shrink_every_window_at_once() {
        // A budget of 8 windows: 16 receivers get half a window each.
        let mut b = SendBudget::new(8 * MAX_WINDOW);
        let idle: Vec<_> = (0..16).map(|i| (i, 0, 0)).collect();
        assert!(tick(&mut b, &idle).is_empty());
        let busy: Vec<_> = (0..16).map(|i| (i, 1000, 0)).collect();
        let changes = tick(&mut b, &busy);
        assert_eq!(changes.len(), 16);
        assert!(changes.iter().all(|&(_, w)| w == MAX_WINDOW / 2));
        assert_eq!(b.receiving(), 16);
        // Unchanged on the next tick: nothing to apply again.
        let busy: Vec<_> = (0..16).map(|i| (i, 2000, 0)).collect();
        assert!(tick(&mut b, &busy).is_empty());
    }

    #[test]
    fn queued_bytes_count_as_receiving_even_without_progress() {
        let mut b = SendBudget::new(8 * MAX_WINDOW);
        let conns: Vec<_> = (0..16).map(|i| (i, 5, 0)).collect();
        tick(&mut b, &conns);
        // No writes since, but every queue holds something: all receiving.
        let stuck: Vec<_> = (0..16).map(|i| (i, 5, 100)).collect();
        tick(&mut b, &stuck);
        assert_eq!(b.receiving(), 16);
        assert_eq!(b.window(), MAX_WINDOW / 2);
    }

    #[test]
    fn the_window_grows_back_only_after_the_load_has_stayed_low() {
        let mut b = SendBudget::new(8 * MAX_WINDOW);
        let busy = |n: u64| (0..16).map(move |i| (i, n, 0)).collect::<Vec<_>>();
        tick(&mut b, &busy(0));
        tick(&mut b, &busy(1));
        assert_eq!(b.window(), MAX_WINDOW / 2);
        // Quiet: the full window is due but given only after GROW_AFTER_TICKS.
        for t in 1..GROW_AFTER_TICKS {
            assert!(tick(&mut b, &busy(1)).is_empty(), "tick {t}");
            assert_eq!(b.window(), MAX_WINDOW / 2);
        }
        let changes = tick(&mut b, &busy(1));
        assert_eq!(changes.len(), 16);
        assert_eq!(b.window(), MAX_WINDOW);
    }

    #[test]
    fn a_new_connection_is_given_the_current_window_and_gone_ones_are_forgotten() {
        let mut b = SendBudget::new(8 * MAX_WINDOW);
        let busy: Vec<_> = (0..16).map(|i| (i, 1, 0)).collect();
        tick(
            &mut b,
            &busy.iter().map(|&(i, _, q)| (i, 0, q)).collect::<Vec<_>>(),
        );
        tick(&mut b, &busy);
        let mut next: Vec<_> = (1..16).map(|i| (i, 2, 0)).collect();
        next.push((99, 0, 0));
        let changes = tick(&mut b, &next);
        // Connection 0 left; 99 arrived with the transport's full window and
        // is brought down to the shared one.
        assert_eq!(changes, vec![(99, MAX_WINDOW / 2)]);
        assert!(!b.seen.contains_key(&0));
    }
}
