//! The link actor: owns one peer link (a dial loop for a dialled peer, or
//! one accepted session), receives the link's control messages, and reports
//! its end to its supervisor, the federation actor.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::info;

use crate::ctx::{AbortOnDrop, NodeCtx, Owned};
use crate::fed::shared::LinkShared;
use crate::link::dial::dial_loop;
use crate::link::handshake::{Accepted, accept_session};
use crate::link::session::{end_session, now_ms};
use crate::types::PeerSpec;

pub(crate) enum LinkKind {
    Dial(PeerSpec),
    Accepted(Box<Accepted>),
}

pub(crate) struct LinkArgs {
    pub ctx: Arc<NodeCtx>,
    /// Key of this link in `Fed::links`.
    pub key: u64,
    pub shared: Arc<LinkShared>,
    pub kind: LinkKind,
}

pub(crate) enum LinkMsg {
    /// The link's task ended (the dial loop, or an accepted session).
    Ended(Result<(), String>),
    /// Time for the liveness check: a live session whose peer has not been
    /// heard within the link timeout is ended as dead.
    Tick,
    /// Close the live session as a network failure would (the dial loop, if
    /// any, redials with backoff). Fault injection for tests.
    #[cfg(feature = "test-util")]
    Close { reason: String },
}

pub(crate) struct LinkActor;

pub(crate) struct LinkActorState {
    ctx: Arc<NodeCtx>,
    key: u64,
    shared: Arc<LinkShared>,
    _task: Owned,
    _ticks: AbortOnDrop,
}

impl Actor for LinkActor {
    type Msg = LinkMsg;
    type State = LinkActorState;
    type Arguments = LinkArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<LinkMsg>,
        a: LinkArgs,
    ) -> Result<LinkActorState, ActorProcessingErr> {
        let _ = a.shared.actor.set(myself.get_cell());
        a.ctx.fed.links.insert(a.key, Arc::clone(&a.shared));
        let (ctx, shared) = (Arc::clone(&a.ctx), Arc::clone(&a.shared));
        let fc = &a.ctx.cfg.federation;
        let ticks = AbortOnDrop(
            myself.send_interval(fc.keep_alive.min(Duration::from_secs(1)), || LinkMsg::Tick),
        );
        let task = Owned::spawn(run(ctx, shared, a.kind), move |r| {
            let r = r.map_err(|e| format!("link task failed: {e}"));
            let _ = myself.send_message(LinkMsg::Ended(r));
        });
        Ok(LinkActorState {
            ctx: a.ctx,
            key: a.key,
            shared: a.shared,
            _task: task,
            _ticks: ticks,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<LinkMsg>,
        msg: LinkMsg,
        st: &mut LinkActorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            // A failed task fails the actor, so its supervisor restarts it.
            LinkMsg::Ended(Err(e)) => return Err(e.into()),
            LinkMsg::Ended(Ok(())) => myself.stop(None),
            LinkMsg::Tick => {
                let timeout_ms = st.ctx.cfg.federation.link_timeout.as_millis() as u64;
                if let Some(s) = st.shared.session()
                    && now_ms().saturating_sub(s.last_pong.load(Ordering::Relaxed)) > timeout_ms
                {
                    // The session ends itself with a liveness failure (and
                    // says so in its close reason and metrics).
                    s.expired.notify_one();
                }
            }
            #[cfg(feature = "test-util")]
            LinkMsg::Close { reason } => {
                if let Some(s) = st.shared.session() {
                    info!(peer = %s.peer, %reason, "closing peer link");
                    crate::ctx::close_conn(&s.conn, slim_wire::ErrorCode(0), &reason);
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<LinkMsg>,
        st: &mut LinkActorState,
    ) -> Result<(), ActorProcessingErr> {
        st.ctx.fed.links.remove(&st.key);
        end_session(&st.ctx, &st.shared, "link actor stopped");
        Ok(())
    }
}

async fn run(ctx: Arc<NodeCtx>, shared: Arc<LinkShared>, kind: LinkKind) {
    match kind {
        LinkKind::Dial(spec) => dial_loop(ctx, shared, spec).await,
        LinkKind::Accepted(a) => {
            if let Err(e) = accept_session(&ctx, &shared, *a).await {
                info!(error = %e, "accepted peer link ended");
            }
        }
    }
}

/// Starts a link actor under `sup` (the federation actor), and a watcher
/// that removes the link's entry and ends its session when the actor ends,
/// however it ends: a killed actor, or the children of a killed federation
/// actor, run no `post_stop`.
pub(crate) async fn spawn_link(
    args: LinkArgs,
    sup: ractor::ActorCell,
) -> Result<ActorRef<LinkMsg>, ractor::SpawnErr> {
    let (ctx, key, shared) = (Arc::clone(&args.ctx), args.key, Arc::clone(&args.shared));
    let (actor, join) = Actor::spawn_linked(None, LinkActor, args, sup).await?;
    tokio::spawn(async move {
        let _ = join.await;
        ctx.fed
            .links
            .remove_if(&key, |_, l| Arc::ptr_eq(l, &shared));
        end_session(&ctx, &shared, "link actor ended");
    });
    Ok(actor)
}
