//! Runs: one read's deliveries to the same local subscribers, encoded back
//! to back and pushed as one item per subscriber.
//!
//! A fan-out of small messages used to cost every subscriber one queue push
//! (a lock, two atomics, a shared-buffer reference) and one writer pass per
//! message, and the writer then copied each frame into its coalescing
//! buffer. A publisher's read holds many publishes, and consecutive ones
//! usually go to the same subscribers (one subject, one route), so their
//! `Deliver` frames are appended to one buffer while the route stays the
//! same, and each subscriber gets that buffer once. The frames inside are
//! ordinary frames; the client reads them as before.
//!
//! Order is kept: a run is pushed before anything else goes to a subscriber
//! from the same reader (a delivery on another route, a control frame, the
//! end of the read). The outbox bounds, the write deadline and the
//! slow-consumer policy apply to a run as to one frame; a dropped run counts
//! each of its frames.

use std::sync::Arc;

use bytes::BytesMut;
use slim_wire::WireError;

use crate::ctx::NodeCtx;
use crate::engine::{Local, Plan, Tally};
use crate::registry::Route;

/// A run is pushed once it holds this much: large enough that the
/// per-subscriber costs are spread over hundreds of small messages and the
/// writer passes the run to QUIC uncopied (it copies only pieces under
/// 16 KiB), small enough that the first subscriber does not wait behind
/// much encoding.
pub(crate) const RUN_MAX: usize = 32 * 1024;

/// The size at which a run is pushed: [`RUN_MAX`], or a quarter of a
/// subscriber queue's byte bound if that is smaller (a run goes into a queue
/// as one item, so a run as large as the bound would only fit an empty one).
fn run_max(ctx: &NodeCtx) -> usize {
    RUN_MAX.min(ctx.cfg.queue.max_bytes / 4)
}

/// Makes room in an encode buffer for a frame around a payload of
/// `payload` bytes: grows it by 64 KiB chunks, so consecutive frames share
/// one allocation and split off it without copying.
pub(crate) fn reserve_chunk(buf: &mut BytesMut, payload: usize) {
    // 512: the frame's header, names and node lists around the payload.
    if buf.capacity() - buf.len() < payload + 512 {
        buf.reserve(64 * 1024 + payload);
    }
}

/// The pending run of one reader (a client connection's or a link's).
#[derive(Default)]
pub(crate) struct Runs {
    run: Option<Run>,
    buf: BytesMut,
}

struct Run {
    /// The route the run's messages were planned on: a subscription change
    /// makes a new route, so a new run.
    route: Arc<Route>,
    local: Local,
    frames: u64,
}

impl Runs {
    /// Appends one message for `plan`'s local subscribers (which must not be
    /// empty), encoded by `encode` onto the run's buffer, after pushing the
    /// pending run if it goes elsewhere. `payload` is the message's payload
    /// size, to reserve room.
    pub(crate) async fn add(
        &mut self,
        ctx: &NodeCtx,
        tally: &mut Tally,
        plan: &Plan<'_>,
        payload: usize,
        encode: impl FnOnce(&mut BytesMut) -> Result<(), WireError>,
    ) -> Result<(), WireError> {
        let same = self
            .run
            .as_ref()
            .is_some_and(|r| r.local == plan.local && Arc::ptr_eq(&r.route, &plan.route));
        if !same {
            self.flush(ctx, tally, false).await;
        }
        reserve_chunk(&mut self.buf, payload);
        // On error the buffer is left as it was (the codec truncates).
        encode(&mut self.buf)?;
        match &mut self.run {
            Some(r) => r.frames += 1,
            None => {
                self.run = Some(Run {
                    route: Arc::clone(&plan.route),
                    local: plan.local,
                    frames: 1,
                })
            }
        }
        if self.buf.len() >= run_max(ctx) {
            self.flush(ctx, tally, false).await;
        }
        Ok(())
    }

    /// Gives back the encode buffer when the reader goes idle (nothing
    /// pending: the end of every read flushes). A buffer kept between reads
    /// would pin the rest of its 64 KiB chunk for as long as the connection
    /// lives, on every connection that ever published.
    pub(crate) fn release(&mut self) {
        debug_assert!(self.run.is_none(), "a run is flushed before the read waits");
        if self.run.is_none() {
            self.buf = BytesMut::new();
        }
    }

    /// Pushes the pending run to each of its subscribers (one shared item
    /// each). `last`: nothing read is behind it, so it may be written around
    /// an empty outbox (`NodeCtx::deliver`).
    pub(crate) async fn flush(&mut self, ctx: &NodeCtx, tally: &mut Tally, last: bool) {
        let Some(run) = self.run.take() else {
            return;
        };
        let frames = self.buf.split().freeze();
        for sub in run.local.subs(&run.route) {
            ctx.deliver(tally, sub, frames.clone(), run.frames, last)
                .await;
        }
    }
}
