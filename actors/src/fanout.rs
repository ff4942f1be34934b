//! Pushing one routed frame into outboxes, shared by the two routing paths:
//! a client connection's reader (`router`) and a peer link's forwarder
//! (`link`). Counts are kept per read batch and flushed to metrics once.

use bytes::Bytes;
use metrics::counter;

use crate::metrics as m;
use crate::node::NodeCtx;
use crate::outbox::Push;
use crate::registry::{RemoteGroup, Sub};

/// Outcomes of a batch's pushes.
#[derive(Debug, Default)]
pub(crate) struct Pushes {
    deliveries: u64,
    slow: u64,
    link_drops: u64,
}

impl Pushes {
    /// One local subscriber, under its slow-consumer policy.
    pub(crate) fn push_sub(&mut self, ctx: &NodeCtx, sub: &Sub, frame: Bytes) {
        match sub.outbox.push(frame) {
            Push::Queued => self.deliveries += 1,
            Push::Dropped => self.slow += 1,
            Push::Closed => {}
            Push::Disconnect => {
                self.slow += 1;
                ctx.disconnect_slow(sub.conn);
            }
        }
    }

    /// One peer link: a full link queue drops (a slow peer is isolated).
    pub(crate) fn push_link(&mut self, g: &RemoteGroup, frame: Bytes) {
        match g.outbox.push(frame) {
            Push::Queued | Push::Closed => {}
            Push::Dropped | Push::Disconnect => self.link_drops += 1,
        }
    }

    pub(crate) fn flush(&mut self, ctx: &NodeCtx) {
        let hm = &ctx.hot;
        if self.deliveries > 0 {
            hm.deliveries
                .increment(std::mem::take(&mut self.deliveries));
        }
        if self.slow > 0 {
            hm.slow_consumer.increment(std::mem::take(&mut self.slow));
        }
        if self.link_drops > 0 {
            counter!(m::LINK_DROPS_TOTAL, "reason" => "queue_full")
                .increment(std::mem::take(&mut self.link_drops));
        }
    }
}

impl NodeCtx {
    /// Runs the route hook, if any, on one publish; true when it is to be
    /// dropped (counted).
    pub(crate) fn hook_drops(&self, frame: crate::RoutedFrame<'_>) -> bool {
        let Some(hook) = self.route_hook() else {
            return false;
        };
        let drop = hook(&frame) == crate::HookVerdict::Drop;
        if drop {
            m::dropped_by_hook();
        }
        drop
    }
}
