//! Gauges the node samples once a second instead of maintaining them per
//! message (queue depths, table sizes, task counts).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use metrics::gauge;

use crate::ctx::{NodeCtx, PathKind};
use crate::metrics as m;

/// The smallest and largest datagram size among a kind of connection.
#[derive(Default)]
struct Span(Option<(u16, u16)>);

impl Span {
    fn add(&mut self, mtu: u16) {
        self.0 = Some(
            self.0
                .map_or((mtu, mtu), |(lo, hi)| (lo.min(mtu), hi.max(mtu))),
        );
    }

    /// Sets `slim_path_datagram_bytes` for `kind`: 0 when it has no
    /// connection, so a gauge never shows a departed connection's size.
    fn set(&self, kind: &'static str) {
        let (lo, hi) = self.0.unwrap_or((0, 0));
        gauge!(m::PATH_DATAGRAM_BYTES, "kind" => kind, "stat" => "min").set(f64::from(lo));
        gauge!(m::PATH_DATAGRAM_BYTES, "kind" => kind, "stat" => "max").set(f64::from(hi));
    }
}

/// Gauges that are cheaper to sample than to maintain per message.
pub(crate) async fn sample(ctx: Arc<NodeCtx>) {
    let mut shutdown = ctx.shutdown_rx();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let (mut total, mut max) = (0usize, 0usize);
        for c in ctx.conns.iter() {
            let q = c.outbox.queued_bytes();
            total += q;
            max = max.max(q);
        }
        let (mut clients, mut peers) = (Span::default(), Span::default());
        ctx.for_each_path(|kind, _, s| match kind {
            PathKind::Client => clients.add(s.path.current_mtu),
            PathKind::Link => peers.add(s.path.current_mtu),
        });
        clients.set("client");
        peers.set("peer");
        gauge!(m::QUEUE_BYTES).set(total as f64);
        gauge!(m::QUEUE_BYTES_MAX).set(max as f64);
        gauge!(m::QUEUE_OVERFLOW_BYTES).set(ctx.overflow.used() as f64);
        m::registry_gauges(&ctx.registry);
        gauge!(m::TABLE_ENTRIES, "table" => "connections").set(ctx.conns.len() as f64);
        gauge!(m::TABLE_ENTRIES, "table" => "registry_connections")
            .set(ctx.registry.conn_count() as f64);
        gauge!(m::TABLE_ENTRIES, "table" => "registry_owners")
            .set(ctx.registry.owner_count() as f64);
        gauge!(m::RUNTIME_TASKS).set(
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks() as f64,
        );
        crate::fed::actor::sample_gauges(&ctx);
        gauge!(m::HANDSHAKES_IN_PROGRESS).set(ctx.handshakes.load(Ordering::Relaxed) as f64);
        gauge!(m::PARTIAL_FRAME_BYTES).set(ctx.partial_bytes.load(Ordering::Relaxed) as f64);
    }
}
