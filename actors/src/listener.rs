//! The QUIC listener actor: accepts connections and supervises one
//! connection actor per client.

use std::collections::HashMap;
use std::sync::Arc;

use metrics::counter;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::conn;
use crate::metrics as m;
use crate::node::NodeCtx;
use crate::registry::ConnId;

pub enum ListenerMsg {
    /// A connection actor started; remember it so a crash can be cleaned up.
    Child { actor: ActorId, conn: ConnId },
}

pub struct ListenerActor;

pub struct ListenerState {
    accept: JoinHandle<()>,
    children: HashMap<ActorId, ConnId>,
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
                    if let Err(e) = conn::accept(c, incoming, cell).await {
                        debug!(error = %e, "connection setup failed");
                    }
                });
            }
        });
        Ok(ListenerState {
            accept,
            children: HashMap::new(),
            ctx,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<ListenerMsg>,
        msg: ListenerMsg,
        st: &mut ListenerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ListenerMsg::Child { actor, conn } => {
                // The child may already be gone; then its post_stop cleaned up.
                if st.ctx.conns.contains_key(&conn) {
                    st.children.insert(actor, conn);
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<ListenerMsg>,
        evt: SupervisionEvent,
        st: &mut ListenerState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                if let Some(conn) = st.children.remove(&cell.get_id()) {
                    warn!(conn, error = %err, "connection actor failed; cleaning up");
                    counter!(m::ACTOR_RESTARTS_TOTAL, "actor" => "connection").increment(1);
                    conn::cleanup(&st.ctx, conn);
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                st.children.remove(&cell.get_id());
            }
            _ => {}
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
