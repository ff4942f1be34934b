//! The write side of a client connection: drains its outbox and coalesces
//! frames into large QUIC stream writes.

use std::sync::Arc;

use bytes::Bytes;
use metrics::counter;
use quinn::{SendStream, VarInt};
use slim_wire::ErrorCode;
use tokio::sync::mpsc;

use crate::conn::shared::ConnShared;
use crate::ctx::NodeCtx;
use crate::metrics as m;

pub(crate) async fn write_loop(
    ctx: Arc<NodeCtx>,
    sh: Arc<ConnShared>,
    mut send: SendStream,
    mut rx: mpsc::Receiver<Bytes>,
) -> Result<(), String> {
    const BATCH: usize = 512;
    const COALESCE: usize = 64 * 1024;
    let mut shutdown = ctx.shutdown_rx();
    // Grows with load (recv_many appends up to BATCH) instead of reserving
    // 512 slots (16 KiB) up front for every idle connection.
    let mut batch: Vec<Bytes> = Vec::new();
    let mut chunks: Vec<Bytes> = Vec::new();
    let bytes_out = counter!(m::BYTES_OUT_TOTAL, "kind" => "client");
    let mut draining = false;
    loop {
        if !draining {
            tokio::select! {
                biased;
                n = rx.recv_many(&mut batch, BATCH) => if n == 0 { break },
                _ = shutdown.changed() => {
                    draining = true;
                    sh.outbox.close();
                    continue;
                }
            }
        } else {
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(b) => batch.push(b),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                break;
            }
        }
        let wait = sh.outbox.take_wait();
        let frames = batch.len() as u64;
        let total: usize = batch.iter().map(Bytes::len).sum();
        slim_wire::coalesce(&mut batch, COALESCE, &mut chunks);
        for chunk in chunks.drain(..) {
            send.write_chunk(chunk).await.map_err(|e| e.to_string())?;
        }
        sh.outbox.written(total);
        bytes_out.increment(total as u64);
        ctx.hot.frames_out.increment(frames);
        if let Some(w) = wait {
            ctx.hot.enqueue_to_write_seconds.record(w.as_secs_f64());
        }
    }
    if draining {
        let _ = send.finish();
        let _ = tokio::time::timeout(ctx.drain_deadline(), send.stopped()).await;
        sh.conn.close(
            VarInt::from_u32(ErrorCode::SHUTTING_DOWN.0 as u32),
            b"node shutting down",
        );
    }
    Ok(())
}
