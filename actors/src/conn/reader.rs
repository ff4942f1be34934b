//! The read side of a client connection: frames in, routing decisions out.
//! Publishes are routed inline (registry read + outbox pushes), so data never
//! goes through an actor mailbox.

use std::collections::HashSet;
use std::sync::Arc;

use metrics::counter;
use quinn::VarInt;
use slim_auth::policy::{Action, Denied, Grants};
use slim_wire::{
    ErrorCode, ErrorFrame, Frame, FrameKind, Name, NodeIds, Pong, PublishView, SubAck, SubError,
    WireError, codec,
};
use tracing::{debug, info};

use crate::conn::partial::PartialFrame;
use crate::conn::shared::{ConnError, ConnShared};
use crate::ctx::{NodeCtx, Reader, encode};
use crate::engine::{self, Decision, Env, Refusal, Silent, Tally};
use crate::metrics as m;
use crate::outbox::Push;
use crate::registry::RouteMemo;
use crate::run::Runs;
use slim_framed::ReadError;
use tokio::time::Instant;

pub(crate) async fn read_loop(
    ctx: Arc<NodeCtx>,
    sh: Arc<ConnShared>,
    mut reader: Reader,
) -> Result<(), ConnError> {
    let mut shutdown = ctx.shutdown_rx();
    let mut router = Router::new(&ctx, &sh);
    let bytes_in = counter!(m::BYTES_IN_TOTAL, "kind" => "client");
    let mut partial = PartialFrame::new(
        &ctx.partial_bytes,
        ctx.cfg.partial_frame_budget,
        ctx.cfg.frame_read_timeout,
    );
    // One timer for the connection's life, armed at a frame's deadline and
    // re-armed only when it fires early (the frames it watched completed and
    // a later one began): a busy connection starts a new frame on nearly
    // every read, and a timer registered per read would cost more than the
    // read's routing.
    let timer = tokio::time::sleep(ctx.cfg.frame_read_timeout);
    tokio::pin!(timer);
    let mut armed = false;
    let result = loop {
        // Frames that arrived with the hello are already buffered.
        // Boxed: routing's future (~1.9 KiB, it may wait for room in full
        // outboxes) would otherwise sit in every connection's task for its
        // whole life, idle or not; one allocation per read batch instead.
        let res = Box::pin(router.drain(&mut reader)).await;
        router.flush_metrics();
        let completed = match res {
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        if let Err(e) = partial.update(Instant::now(), completed, reader.buffered()) {
            break Err(e);
        }
        if !armed && let Some(d) = partial.deadline() {
            timer.as_mut().reset(d);
            armed = true;
        }
        tokio::select! {
            biased;
            _ = shutdown.changed() => return Ok(()),
            r = reader.fill_idle(|| router.idle()) => match r {
                Ok(0) => return Ok(()),
                Ok(n) => bytes_in.increment(n as u64),
                Err(ReadError::Wire(e)) => break Err(e.into()),
                Err(ReadError::Io(e)) => return Err(ConnError::Lost(e.to_string())),
            },
            _ = &mut timer, if armed => match partial.deadline() {
                Some(d) if d <= Instant::now() => break Err(partial.timed_out(reader.buffered())),
                Some(d) => timer.as_mut().reset(d),
                None => armed = false,
            },
        }
    };
    if let Err(e) = &result {
        if let ConnError::PartialFrame { reason, .. } = e {
            counter!(m::PARTIAL_FRAME_CLOSES_TOTAL, "reason" => *reason).increment(1);
            if ctx.log.note(crate::logthrottle::Kind::PartialFrame, reason) {
                info!(conn = sh.id, name = %sh.name, identity = sh.identity().unwrap_or("-"), error = %e, "closing connection over an incomplete frame (first in this window; the rest are summed up)");
            }
        } else {
            let label = match e {
                ConnError::Wire(w) => w.reason_label(),
                _ => "protocol",
            };
            m::protocol_error(label);
            if let ConnError::Wire(WireError::FrameTooLarge { .. }) = e {
                m::dropped("too_large", 1);
            } else {
                m::dropped("malformed", 1);
            }
            info!(conn = sh.id, name = %sh.name, error = %e, "closing connection on bad input");
        }
        sh.conn.close(
            VarInt::from_u32(e.code().0 as u32),
            e.to_string().as_bytes(),
        );
    }
    result
}

/// This connection's grants under the current policy, recomputed only when
/// the policy generation changed (which also empties the publish cache).
fn refresh_grants<'g>(
    ctx: &NodeCtx,
    sh: &ConnShared,
    grants: &'g mut Option<Box<(u64, Grants)>>,
    publish_ok: &mut HashSet<Box<str>>,
) -> &'g Grants {
    let generation = ctx.policy_gen();
    if grants.as_ref().is_none_or(|b| b.0 != generation) {
        let (policy, generation) = ctx.policy();
        let g = policy
            .grants(sh.spiffe_id.as_ref())
            .unwrap_or_else(|_| Grants::none(sh.identity().unwrap_or("-")));
        publish_ok.clear();
        *grants = Some(Box::new((generation, g)));
    }
    &grants.as_ref().expect("set above").1
}

/// Whether this connection may publish to `name`; grants of allowed names
/// are cached (bounded), a refusal is rare and recomputes its reason.
fn may_publish(
    ctx: &NodeCtx,
    sh: &ConnShared,
    grants: &mut Option<Box<(u64, Grants)>>,
    publish_ok: &mut HashSet<Box<str>>,
    name: &str,
) -> Result<(), Denied> {
    let g = refresh_grants(ctx, sh, grants, publish_ok);
    if g.is_unrestricted() || publish_ok.contains(name) {
        return Ok(());
    }
    g.check(Action::Publish, name)?;
    if publish_ok.len() >= PUBLISH_CACHE_MAX {
        publish_ok.clear();
    }
    publish_ok.insert(name.into());
    Ok(())
}

/// Per-connection routing state: scratch buffers and batched metric counts,
/// so the per-message path does no allocation beyond the outgoing frame and
/// no metric registry lookups.
struct Router<'a> {
    ctx: &'a NodeCtx,
    sh: &'a ConnShared,
    // This read's counts (flushed to the metrics after every read), so
    // u32: the router is part of every idle connection's reader task.
    frames_in: u32,
    routed: [u32; 3],
    tally: Tally,
    no_route: u32,
    unauthorized: u32,
    publishes: u64,
    /// Boxed: made on the first publish, so a connection that only
    /// subscribes does not hold it.
    grants: Option<Box<(u64, Grants)>>,
    /// Names this connection may publish to under the current grants; bounded.
    publish_ok: HashSet<Box<str>>,
    /// This read's deliveries to local subscribers, pushed per run.
    runs: Runs,
    /// The last route looked up (`RouteMemo`).
    routes: RouteMemo,
    /// The name of the last publish that passed its checks: a stream of
    /// publishes to one name checks it once (the next are compared).
    last_name: String,
}

const PUBLISH_CACHE_MAX: usize = 4096;

impl<'a> Router<'a> {
    fn new(ctx: &'a NodeCtx, sh: &'a ConnShared) -> Self {
        Router {
            ctx,
            sh,
            frames_in: 0,
            routed: [0; 3],
            tally: Tally::default(),
            no_route: 0,
            unauthorized: 0,
            publishes: 0,
            grants: None,
            publish_ok: HashSet::new(),
            runs: Runs::default(),
            routes: RouteMemo::default(),
            last_name: String::new(),
        }
    }

    /// This connection's grants under the current policy, recomputed only
    /// when the policy generation changed.
    fn grants(&mut self) -> &Grants {
        refresh_grants(self.ctx, self.sh, &mut self.grants, &mut self.publish_ok)
    }

    /// The connection has nothing more to read for now: what only a busy
    /// publisher needs goes. The encode buffers would each pin the rest of a
    /// 64 KiB chunk, and the route memo its subscribers' outboxes (with a
    /// departed subscriber's QUIC state behind its stream), for as long as
    /// this connection stays idle.
    fn idle(&mut self) {
        self.runs.release();
        self.routes.forget();
    }

    /// Handles every whole frame buffered in `reader`; how many there were.
    async fn drain(&mut self, reader: &mut Reader) -> Result<usize, ConnError> {
        let r = self.drain_frames(reader).await;
        // What this read's publishes are to deliver goes out now, also when
        // a bad frame is about to end the connection. Nothing read behind it
        // means it may be written around empty outboxes.
        let last = reader.buffered() == 0;
        self.runs.flush(self.ctx, &mut self.tally, last).await;
        r
    }

    async fn drain_frames(&mut self, reader: &mut Reader) -> Result<usize, ConnError> {
        let mut n = 0;
        while let Some(f) = reader.try_next()? {
            n += 1;
            self.frames_in += 1;
            if f[0] == FrameKind::Publish as u8 {
                if let Some(r) = slim_wire::raw_publish_view(&f[1..])
                    && self.name_checked(r.name)
                {
                    // Taken out for the call (the view borrows it), then
                    // put back: no allocation either way.
                    let name = std::mem::take(&mut self.last_name);
                    let v = PublishView {
                        name: &name,
                        mode: r.mode,
                        flags: r.flags,
                        msg_id: r.msg_id,
                        payload: r.payload,
                    };
                    let routed = self.publish(v).await;
                    self.last_name = name;
                    routed?;
                    continue;
                }
                match slim_wire::publish_view(&f[1..])? {
                    Ok(v) => self.publish(v).await?,
                    Err(frame) => Box::pin(self.handle_frame(frame)).await?,
                }
            } else {
                let frame = codec::decode_body(&f)?;
                // Boxed, like every rare path here: its awaits (a
                // subscription's round trip, a control push) would
                // otherwise be part of this task's future, i.e. of every
                // idle connection's memory.
                Box::pin(self.handle_frame(frame)).await?;
            }
        }
        Ok(n)
    }

    /// Whether `b` is a valid name, now in `last_name`: the last one if the
    /// bytes are the same, else checked (UTF-8, name syntax) and kept. An
    /// invalid one leaves the full parse to say what is wrong.
    fn name_checked(&mut self, b: &[u8]) -> bool {
        if !self.last_name.is_empty() && self.last_name.as_bytes() == b {
            return true;
        }
        match slim_wire::checked_name(b) {
            Some(s) => {
                self.last_name.clear();
                self.last_name.push_str(s);
                true
            }
            None => false,
        }
    }

    fn flush_metrics(&mut self) {
        let hm = &self.ctx.hot;
        if self.frames_in > 0 {
            hm.frames_in
                .increment(std::mem::take(&mut self.frames_in).into());
        }
        for (i, n) in self.routed.iter_mut().enumerate() {
            if *n > 0 {
                hm.routed[i].increment(std::mem::take(n).into());
            }
        }
        if self.no_route > 0 {
            hm.no_route
                .increment(std::mem::take(&mut self.no_route).into());
        }
        self.ctx.flush_tally(&mut self.tally);
        if self.unauthorized > 0 {
            hm.unauthorized
                .increment(std::mem::take(&mut self.unauthorized).into());
        }
    }

    async fn control(&self, f: Frame) -> Result<(), ConnError> {
        let b = encode(&f, self.ctx);
        match self.sh.outbox.push_control(b).await {
            Push::Closed => Err(ConnError::Lost("outbox closed".into())),
            Push::Disconnect => {
                // This client does not read its own acks: it is the slow consumer.
                self.ctx.disconnect_slow(self.sh.id);
                Err(ConnError::Lost(
                    "slow consumer: outbound queue stayed full past the write deadline".into(),
                ))
            }
            out @ (Push::Dropped | Push::Slow { .. }) => {
                // Not only a counter: the client's call will wait for an
                // answer that never comes, so the slow-consumer line names
                // whose queue dropped it (counted as a data push's drop is).
                self.ctx.settle_slow(self.sh.id, out);
                Ok(())
            }
            Push::Queued | Push::Full(_) => Ok(()),
        }
    }

    async fn handle_frame(&mut self, frame: Frame) -> Result<(), ConnError> {
        if let Frame::ReadProgress(p) = frame {
            // Not ordered with deliveries: nothing to flush first.
            return self.sh.outbox.note_read_progress(p.read).map_err(|last| {
                ConnError::Protocol(format!(
                    "read progress must grow: {} bytes reported after {last}",
                    p.read
                ))
            });
        }
        if !matches!(frame, Frame::Publish(_)) {
            // Deliveries of the publishes before this frame go first (e.g.
            // before the pong that confirms them, or a subscription change).
            self.runs.flush(self.ctx, &mut self.tally, false).await;
        }
        match frame {
            Frame::Publish(p) => {
                self.publish(PublishView {
                    name: p.name.as_str(),
                    mode: p.mode,
                    flags: p.flags,
                    msg_id: p.msg_id,
                    payload: &p.payload,
                })
                .await
            }
            Frame::Subscribe(s) => {
                if let Err(d) = self.grants().check(Action::Subscribe, s.name.as_str()) {
                    m::denied("subscribe");
                    self.ctx
                        .log_denied(self.sh, "subscribe", s.name.as_str(), &d.to_string());
                    return self
                        .control(Frame::SubError(SubError {
                            id: s.id,
                            code: ErrorCode::UNAUTHORIZED,
                            reason: d.to_string(),
                        }))
                        .await;
                }
                // The connection task owns the subscriptions; its answer
                // comes before this reader reads on.
                let ok = self.sh.subscription(s.name.as_str(), true).await;
                match ok {
                    Ok(added) => {
                        if added {
                            self.event_sub(s.name.as_str(), true);
                        }
                        self.control(Frame::SubAck(SubAck { id: s.id })).await
                    }
                    Err(e) => {
                        self.control(Frame::SubError(SubError {
                            id: s.id,
                            code: ErrorCode::INTERNAL,
                            reason: e,
                        }))
                        .await
                    }
                }
            }
            Frame::Unsubscribe(s) => {
                let ok = self.sh.subscription(s.name.as_str(), false).await;
                match ok {
                    Ok(true) => {
                        self.event_sub(s.name.as_str(), false);
                        self.control(Frame::SubAck(SubAck { id: s.id })).await
                    }
                    Ok(false) => {
                        self.control(Frame::SubError(SubError {
                            id: s.id,
                            code: ErrorCode::NO_ROUTE,
                            reason: format!("not subscribed to {}", s.name),
                        }))
                        .await
                    }
                    Err(e) => {
                        self.control(Frame::SubError(SubError {
                            id: s.id,
                            code: ErrorCode::INTERNAL,
                            reason: e,
                        }))
                        .await
                    }
                }
            }
            Frame::Ping(p) => self.control(Frame::Pong(Pong { nonce: p.nonce })).await,
            Frame::Pong(_) => Ok(()),
            Frame::Error(e) => {
                debug!(conn = self.sh.id, code = e.code.0, reason = %e.reason, "client reported an error");
                Ok(())
            }
            other => Err(ConnError::Protocol(format!(
                "unexpected {} frame from a client",
                other.kind().as_str()
            ))),
        }
    }

    /// An explicit (un)subscribe, for the node's event stream (audit trail).
    fn event_sub(&self, name: &str, subscribed: bool) {
        use crate::types::NodeEvent;
        let (name, client) = (name.to_owned(), self.sh.name.to_string());
        let spiffe_id = self.sh.identity().map(str::to_owned);
        let at = std::time::SystemTime::now();
        self.ctx.fed.emit(if subscribed {
            NodeEvent::Subscribed {
                name,
                client,
                spiffe_id,
                at,
            }
        } else {
            NodeEvent::Unsubscribed {
                name,
                client,
                spiffe_id,
                at,
            }
        });
    }

    async fn publish(&mut self, p: PublishView<'_>) -> Result<(), ConnError> {
        self.publishes += 1;
        if self.publishes.is_multiple_of(m::ROUTING_SAMPLE) {
            let t0 = std::time::Instant::now();
            let r = self.route(p).await;
            self.ctx
                .hot
                .routing_seconds
                .record(t0.elapsed().as_secs_f64());
            return r;
        }
        self.route(p).await
    }

    /// Tells the publisher why its message went nowhere (after the
    /// deliveries of its earlier publishes).
    async fn refuse(
        &mut self,
        p: &PublishView<'_>,
        code: ErrorCode,
        reason: String,
    ) -> Result<(), ConnError> {
        self.runs.flush(self.ctx, &mut self.tally, false).await;
        self.control(Frame::Error(ErrorFrame {
            code,
            msg_id: Some(p.msg_id),
            name: Name::parse(p.name).ok(),
            reason,
        }))
        .await
    }

    async fn route(&mut self, p: PublishView<'_>) -> Result<(), ConnError> {
        let hook = self.ctx.route_hook();
        let from = self.sh.name.as_str();
        let decision = {
            let mut env = Env {
                registry: &self.ctx.registry,
                hook: hook.as_ref(),
                memo: Some(&mut self.routes),
            };
            engine::route_publish(&mut env, from, &p, |name| {
                may_publish(
                    self.ctx,
                    self.sh,
                    &mut self.grants,
                    &mut self.publish_ok,
                    name,
                )
            })
        };
        let plan = match decision {
            Decision::Route(plan) => plan,
            Decision::Silent(Silent::Hook) => {
                m::dropped_by_hook();
                return Ok(());
            }
            Decision::Silent(_) => {
                self.no_route += 1;
                return Ok(());
            }
            Decision::Refuse(r) => {
                match r {
                    Refusal::Unauthorized(ref why) => {
                        self.unauthorized += 1;
                        m::denied("publish");
                        self.ctx.log_denied(self.sh, "publish", p.name, why);
                    }
                    Refusal::NoRoute(_) => self.no_route += 1,
                    Refusal::BadName => {}
                }
                return self.refuse(&p, r.code(), r.reason()).await;
            }
        };
        self.routed[p.mode as usize] += 1;
        if !plan.local_subs().is_empty() {
            let (ctx, sh) = (self.ctx, self.sh);
            self.runs
                .add(ctx, &mut self.tally, &plan, p.payload.len(), |buf| {
                    codec::encode_deliver_raw(
                        p.name,
                        p.mode,
                        sh.name.as_str(),
                        sh.identity(),
                        p.msg_id,
                        p.payload,
                        &ctx.cfg.limits,
                        buf,
                    )
                })
                .await?;
        }
        let (ctx, sh) = (self.ctx, self.sh);
        let me = ctx.cfg.node_id.as_str();
        for hop in &plan.hops {
            let dests = plan.dest_ids(hop);
            let n = dests.len();
            // A `Forward` starting at this node, for the nodes `dests`; each
            // destination node id adds up to 64 bytes.
            self.runs
                .forward(
                    ctx,
                    &mut self.tally,
                    plan.group(hop),
                    p.payload.len() + 64 * n,
                    |buf| {
                        codec::encode_forward_raw(
                            p.name,
                            p.mode,
                            sh.name.as_str(),
                            sh.identity(),
                            p.msg_id,
                            NodeIds {
                                ids: std::iter::empty(),
                                len: 0,
                                then: Some(me),
                            },
                            NodeIds {
                                ids: dests,
                                len: n,
                                then: None,
                            },
                            p.payload,
                            &ctx.cfg.limits,
                            buf,
                        )
                    },
                )
                .await?;
        }
        Ok(())
    }
}
