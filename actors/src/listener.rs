//! The QUIC listener actor: accepts connections and supervises the actors
//! they start (one per client connection; peer links are supervised by the
//! federation actor).

use std::sync::Arc;

use metrics::counter;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::ctx::NodeCtx;
use crate::metrics as m;

/// The listener takes no messages: it accepts and supervises. A failed child
/// is found by its actor id among the node's live connections.
pub(crate) enum ListenerMsg {}

pub(crate) struct ListenerActor;

pub(crate) struct ListenerState {
    accept: JoinHandle<()>,
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
        let actx = ctx;
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
        Ok(ListenerState { accept })
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<ListenerMsg>,
        evt: SupervisionEvent,
        _st: &mut ListenerState,
    ) -> Result<(), ActorProcessingErr> {
        // Cleanup is not done here: the watcher `conn::admit` starts with
        // each actor removes every trace of it however it ends (a killed
        // listener takes its children along, and hears of nothing).
        if let SupervisionEvent::ActorFailed(cell, err) = evt {
            warn!(actor = %cell.get_id(), error = %err, "connection actor failed");
            counter!(m::ACTOR_RESTARTS_TOTAL, "actor" => "connection").increment(1);
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
