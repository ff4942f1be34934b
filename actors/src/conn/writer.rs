//! The write side of a client connection: drains its outbox through the
//! framed writer, which coalesces frames into large QUIC stream writes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::SendStream;
use slim_framed::{FrameWriter, PumpEnd, WriteHooks, drain_now, pump};
use slim_wire::{ErrorCode, codec};

use crate::conn::shared::ConnShared;
use crate::ctx::{NodeCtx, close_conn};
use crate::outbox::Detach;

/// Counts written frames and records how long the oldest waited.
struct Hooks<'a> {
    ctx: &'a NodeCtx,
    sh: &'a ConnShared,
    wait: Option<Duration>,
    /// Frames in the batch being written: an item may be a run of a fan-out
    /// read's deliveries (`run.rs`), so items are not frames.
    frames: usize,
}

impl WriteHooks for Hooks<'_> {
    fn taken(&mut self, batch: &[Bytes]) {
        self.wait = self.sh.outbox.take_wait();
        self.frames = batch.iter().map(|b| codec::count_frames(b)).sum();
    }

    fn written(&mut self, _items: usize, bytes: usize) {
        self.sh.outbox.written(bytes);
        self.ctx.hot.bytes_out.increment(bytes as u64);
        self.ctx
            .hot
            .frames_out
            .increment(std::mem::take(&mut self.frames) as u64);
        if let Some(w) = self.wait.take() {
            self.ctx
                .hot
                .enqueue_to_write_seconds
                .record(w.as_secs_f64());
        }
    }
}

pub(crate) async fn write_loop(
    ctx: Arc<NodeCtx>,
    sh: Arc<ConnShared>,
    send: SendStream,
    mut rx: crate::outbox::QueueRx,
) -> Result<(), String> {
    let mut shutdown = ctx.shutdown_rx();
    let mut hooks = Hooks {
        ctx: &ctx,
        sh: &sh,
        wait: None,
        frames: 0,
    };
    // The stream is shared with the routers that write around an empty
    // outbox (`Outbox::try_direct`); this task writes through the same lock.
    sh.outbox.attach(send);
    let _detach = Detach(&sh.outbox);
    let mut w = FrameWriter::new(sh.outbox.writer_sink());
    let stop = std::pin::pin!(async {
        let _ = shutdown.changed().await;
    });
    let end = pump(&mut rx, &mut w, &mut hooks, stop)
        .await
        .map_err(|e| e.to_string())?;
    if end == PumpEnd::Stopped {
        // Shutting down: take no more, write what is queued, then close.
        sh.outbox.close();
        // Boxed, as the shutdown path: inline, these futures would be the
        // largest part of every connection's writer task.
        Box::pin(drain_now(&mut rx, &mut w, &mut hooks))
            .await
            .map_err(|e| e.to_string())?;
        Box::pin(w.get_mut().finish(ctx.drain_deadline())).await;
        close_conn(&sh.conn, ErrorCode::SHUTTING_DOWN, "node shutting down");
    }
    Ok(())
}
