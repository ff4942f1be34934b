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
//!
//! Forwards onto peer links run the same way, one pending run per link: the
//! link's writer then passes 32 KiB runs to QUIC uncopied instead of copying
//! every `Forward` into its coalescing buffer, and the link's queue takes
//! one push per run instead of one per message. A link run is pushed at the
//! same points as the local one (all of a reader's runs go together), so a
//! confirming pong still follows everything routed before it.

use std::sync::Arc;

use bytes::BytesMut;
use slim_wire::WireError;

use crate::ctx::NodeCtx;
use crate::engine::{Local, Plan, Tally};
use crate::outbox::Outbox;
use crate::registry::{RemoteGroup, Route};

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

/// [`run_max`] for a link's queue.
fn link_run_max(ctx: &NodeCtx) -> usize {
    RUN_MAX.min(ctx.cfg.federation.link_queue.max_bytes / 4)
}

/// Links with a pending run per reader: a forward to one more pushes them
/// all first. A plan's hops go to different links, and a reader usually
/// feeds one or two.
const LINK_RUNS_MAX: usize = 8;

/// Whether an encode buffer lacks room for a frame around a payload of
/// `payload` bytes (512: the frame's header, names and node lists).
fn short_of_room(buf: &BytesMut, payload: usize) -> bool {
    buf.capacity() - buf.len() < payload + 512
}

/// Makes room in an encode buffer for a frame around a payload of
/// `payload` bytes: a new 64 KiB chunk, so consecutive frames share one
/// allocation and split off it without copying. Callers push a pending
/// run first: reserving with bytes in the buffer would copy them into the
/// new chunk.
fn reserve_chunk(buf: &mut BytesMut, payload: usize) {
    if short_of_room(buf, payload) {
        buf.reserve(64 * 1024 + payload);
    }
}

/// The pending runs of one reader (a client connection's or a link's): to
/// local subscribers, and onto each peer link.
#[derive(Default)]
pub(crate) struct Runs {
    run: Option<Run>,
    buf: BytesMut,
    links: Vec<LinkRun>,
}

/// Forwards encoded back to back for one peer link.
struct LinkRun {
    outbox: Arc<Outbox>,
    peer: Arc<str>,
    buf: BytesMut,
    frames: u64,
}

impl LinkRun {
    /// `last`: nothing read is behind the run ([`NodeCtx::forward`]).
    async fn push(&mut self, ctx: &NodeCtx, tally: &mut Tally, last: bool) {
        if self.frames == 0 {
            return;
        }
        let frames = std::mem::take(&mut self.frames);
        let run = self.buf.split().freeze();
        ctx.forward(tally, &self.outbox, &self.peer, run, frames, last)
            .await;
    }
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
        if !same || (!self.buf.is_empty() && short_of_room(&self.buf, payload)) {
            self.flush_local(ctx, tally, false).await;
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
            self.flush_local(ctx, tally, false).await;
        }
        Ok(())
    }

    /// Appends one `Forward` for link `g`, encoded by `encode` onto that
    /// link's run; `room` is what to reserve for it (payload and node ids).
    pub(crate) async fn forward(
        &mut self,
        ctx: &NodeCtx,
        tally: &mut Tally,
        g: &RemoteGroup,
        room: usize,
        encode: impl FnOnce(&mut BytesMut) -> Result<(), WireError>,
    ) -> Result<(), WireError> {
        let i = match self
            .links
            .iter()
            .position(|r| Arc::ptr_eq(&r.outbox, &g.outbox))
        {
            Some(i) => i,
            None => {
                if self.links.len() >= LINK_RUNS_MAX {
                    self.flush_links(ctx, tally, false).await;
                    self.links.clear();
                }
                self.links.push(LinkRun {
                    outbox: Arc::clone(&g.outbox),
                    peer: Arc::clone(&g.peer),
                    buf: BytesMut::new(),
                    frames: 0,
                });
                self.links.len() - 1
            }
        };
        let r = &mut self.links[i];
        if !r.buf.is_empty() && short_of_room(&r.buf, room) {
            r.push(ctx, tally, false).await;
        }
        reserve_chunk(&mut r.buf, room);
        // On error the buffer is left as it was (the codec truncates).
        encode(&mut r.buf)?;
        r.frames += 1;
        if r.buf.len() >= link_run_max(ctx) {
            r.push(ctx, tally, false).await;
        }
        Ok(())
    }

    /// Gives back the encode buffers when the reader goes idle (nothing
    /// pending: the end of every read flushes). A buffer kept between reads
    /// would pin the rest of its 64 KiB chunk for as long as the connection
    /// lives, on every connection that ever published; a link run would also
    /// keep its link's queue.
    pub(crate) fn release(&mut self) {
        debug_assert!(
            self.run.is_none() && self.links.iter().all(|r| r.frames == 0),
            "runs are flushed before the read waits"
        );
        if self.run.is_none() {
            self.buf = BytesMut::new();
        }
        self.links.retain(|r| r.frames > 0);
    }

    /// Pushes the pending runs: the local one to each of its subscribers
    /// (one shared item each), then each link's. `last`: nothing read is
    /// behind them, so a run may be written around an empty outbox
    /// (`NodeCtx::deliver`, `NodeCtx::forward`).
    pub(crate) async fn flush(&mut self, ctx: &NodeCtx, tally: &mut Tally, last: bool) {
        self.flush_local(ctx, tally, last).await;
        self.flush_links(ctx, tally, last).await;
    }

    async fn flush_local(&mut self, ctx: &NodeCtx, tally: &mut Tally, last: bool) {
        let Some(run) = self.run.take() else {
            return;
        };
        let frames = self.buf.split().freeze();
        for sub in run.local.subs(&run.route) {
            ctx.deliver(tally, sub, frames.clone(), run.frames, last)
                .await;
        }
    }

    async fn flush_links(&mut self, ctx: &NodeCtx, tally: &mut Tally, last: bool) {
        for r in &mut self.links {
            r.push(ctx, tally, last).await;
        }
    }
}
