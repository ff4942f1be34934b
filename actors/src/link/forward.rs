//! The driver of the routing engine for forwarded publishes arriving on one
//! link: local delivery when this node is a destination, onward forwarding
//! for the other destinations.

use metrics::counter;
use slim_wire::{ForwardView, NodeIds, codec};

use crate::ctx::NodeCtx;
use crate::engine::{self, Decision, Env, Silent, Tally};
use crate::fed::shared::LinkSession;
use crate::link::error::LinkError;
use crate::metrics as m;
use crate::registry::RouteMemo;
use crate::run::Runs;

/// Routes forwarded publishes arriving on one link: local delivery when this
/// node is a destination, onward forwarding for the other destinations.
pub(crate) struct Forwarder<'a> {
    ctx: &'a NodeCtx,
    session: &'a LinkSession,
    tally: Tally,
    no_route: u64,
    loops: u64,
    /// This read's deliveries to local subscribers, pushed per run.
    runs: Runs,
    /// The last route looked up (`RouteMemo`).
    routes: RouteMemo,
}

impl<'a> Forwarder<'a> {
    pub(crate) fn new(ctx: &'a NodeCtx, session: &'a LinkSession) -> Self {
        Forwarder {
            ctx,
            session,
            tally: Tally::default(),
            no_route: 0,
            loops: 0,
            runs: Runs::default(),
            routes: RouteMemo::default(),
        }
    }

    /// Pushes the read's pending deliveries; `last`: nothing read is behind
    /// them (they may be written around empty outboxes). Called at the end
    /// of every read and before anything else the link's reader does.
    pub(crate) async fn flush_runs(&mut self, last: bool) {
        self.runs.flush(self.ctx, &mut self.tally, last).await;
    }

    /// The link has nothing more to read for now: the encode buffers and
    /// the route memo go, as on a client connection (`conn::reader`).
    pub(crate) fn idle(&mut self) {
        self.runs.release();
        self.routes.forget();
    }

    pub(crate) fn flush_metrics(&mut self) {
        let hm = &self.ctx.hot;
        if self.no_route > 0 {
            hm.no_route.increment(std::mem::take(&mut self.no_route));
        }
        if self.loops > 0 {
            counter!(m::LINK_DROPS_TOTAL, "reason" => "loop")
                .increment(std::mem::take(&mut self.loops));
        }
        self.ctx.flush_tally(&mut self.tally);
    }

    pub(crate) async fn route(&mut self, v: ForwardView<'_>) -> Result<(), LinkError> {
        let me = self.ctx.cfg.node_id.as_str();
        let hook = self.ctx.route_hook();
        let max_hops = self.ctx.cfg.federation.max_hops;
        let decision = {
            let mut env = Env {
                registry: &self.ctx.registry,
                hook: hook.as_ref(),
                memo: Some(&mut self.routes),
            };
            engine::route_forward(&mut env, me, max_hops, &self.session.peer, &v)
        };
        let plan = match decision {
            Decision::Route(plan) => plan,
            Decision::Silent(Silent::Hook) => {
                m::dropped_by_hook();
                return Ok(());
            }
            Decision::Silent(Silent::BadPath) => {
                self.loops += 1;
                return Ok(());
            }
            Decision::Silent(Silent::NoRoute { n }) => {
                self.no_route += n;
                return Ok(());
            }
            Decision::Silent(Silent::NoRouteSilent) | Decision::Refuse(_) => {
                // A forward has no publisher to tell; the engine never says so.
                self.no_route += 1;
                return Ok(());
            }
        };
        self.no_route += plan.unreached;
        self.loops += plan.loops;
        if !plan.local_subs().is_empty() {
            let limits = &self.ctx.cfg.limits;
            self.runs
                .add(self.ctx, &mut self.tally, &plan, v.payload.len(), |buf| {
                    codec::encode_deliver_raw(
                        v.name,
                        v.mode,
                        v.from,
                        v.from_identity,
                        v.msg_id,
                        v.payload,
                        limits,
                        buf,
                    )
                })
                .await?;
        }
        for hop in &plan.hops {
            let dests = plan.dest_ids(hop);
            let n = dests.len();
            let limits = &self.ctx.cfg.limits;
            self.runs
                .forward(
                    self.ctx,
                    &mut self.tally,
                    plan.group(hop),
                    v.payload.len() + 64 * (n + v.path.len() + 1),
                    |buf| {
                        codec::encode_forward_raw(
                            v.name,
                            v.mode,
                            v.from,
                            v.from_identity,
                            v.msg_id,
                            NodeIds {
                                ids: v.path.iter(),
                                len: v.path.len(),
                                then: Some(me),
                            },
                            NodeIds {
                                ids: dests,
                                len: n,
                                then: None,
                            },
                            v.payload,
                            limits,
                            buf,
                        )
                    },
                )
                .await?;
        }
        Ok(())
    }
}
