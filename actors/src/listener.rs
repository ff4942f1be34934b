//! The QUIC listener actor: accepts connections and supervises the actors
//! they start (one per client connection; peer links are supervised by the
//! federation actor).

use std::sync::Arc;

use metrics::counter;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::conn::actor::cleanup;
use crate::ctx::NodeCtx;
use crate::metrics as m;

/// The listener takes no messages: it accepts and supervises. A failed child
/// is found by its actor id among the node's live connections.
pub(crate) enum ListenerMsg {}

pub(crate) struct ListenerActor;

pub(crate) struct ListenerState {
    accept: JoinHandle<()>,
    ctx: Arc<NodeCtx>,
}

impl Actor for ListenerActor {
    type Msg = ListenerMsg;
    type State = ListenerState;
    type Arguments = Arc<NodeCtx>;

    async fn pre_start(
        &self,
        myself: ActorRef<ListenerMsg>,
        ctx: Arc<NodeCtx>,
    ) -> Result<ListenerState, ActorProcessingErr> {
        let endpoint = ctx.endpoint.clone();
        let cell = myself.get_cell();
        let actx = Arc::clone(&ctx);
        let accept = tokio::spawn(async move {
            let mut shutdown = actx.shutdown_rx();
            loop {
                let incoming = tokio::select! {
                    biased;
                    _ = shutdown.changed() => break,
                    i = endpoint.accept() => match i { Some(i) => i, None => break },
                };
                if actx.conns.len() >= actx.cfg.max_connections {
                    m::handshake("refused_capacity");
                    incoming.refuse();
                    continue;
                }
                let c = Arc::clone(&actx);
                let cell = cell.clone();
                tokio::spawn(async move {
                    if let Err(e) = crate::accept::accept(c, incoming, cell).await {
                        debug!(error = %e, "connection setup failed");
                    }
                });
            }
        });
        Ok(ListenerState { accept, ctx })
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<ListenerMsg>,
        evt: SupervisionEvent,
        st: &mut ListenerState,
    ) -> Result<(), ActorProcessingErr> {
        // A connection actor that stopped normally cleaned up in post_stop;
        // one that failed (panicked) or was killed did not: clean up for it.
        let (cell, why) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "terminated".into()))
            }
            _ => return Ok(()),
        };
        let id = cell.get_id();
        let conn = st
            .ctx
            .conns
            .iter()
            .find(|c| c.actor.get().is_some_and(|a| a.get_id() == id))
            .map(|c| c.id);
        if let Some(conn) = conn {
            warn!(conn, reason = %why, "connection actor ended without cleaning up; cleaning up");
            counter!(m::ACTOR_RESTARTS_TOTAL, "actor" => "connection").increment(1);
            cleanup(&st.ctx, conn);
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ListenerMsg>,
        st: &mut ListenerState,
    ) -> Result<(), ActorProcessingErr> {
        st.accept.abort();
        Ok(())
    }
}
