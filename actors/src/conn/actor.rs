//! The connection actor: owns one client connection's reader and writer
//! tasks and its control (close, drain, subscription changes), hears when
//! either task ends, and removes every trace of the connection when it stops.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use metrics::counter;
use quinn::{RecvStream, SendStream, VarInt};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use slim_wire::ErrorCode;
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::conn::shared::{ConnMsg, ConnShared};
use crate::ctx::{AbortOnDrop, NodeCtx};
use crate::metrics as m;
use crate::registry::ConnId;
use crate::table::TableMsg;
use crate::types::NodeEvent;

pub(crate) struct ConnArgs {
    /// When the peer's certificate (plus grace) runs out.
    pub expires_at: Option<std::time::SystemTime>,
    pub ctx: Arc<NodeCtx>,
    pub shared: Arc<ConnShared>,
    pub send: SendStream,
    pub recv: RecvStream,
    pub buf: BytesMut,
    pub rx: mpsc::Receiver<Bytes>,
}

pub(crate) struct ConnState {
    ctx: Arc<NodeCtx>,
    shared: Arc<ConnShared>,
    reader: Option<AbortOnDrop>,
    writer: Option<AbortOnDrop>,
    _expiry: Option<AbortOnDrop>,
    reader_done: bool,
}

pub(crate) struct ConnectionActor;

impl Actor for ConnectionActor {
    type Msg = ConnMsg;
    type State = ConnState;
    type Arguments = ConnArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ConnMsg>,
        a: ConnArgs,
    ) -> Result<ConnState, ActorProcessingErr> {
        metrics::gauge!(m::CONNECTIONS, "kind" => "client").increment(1.0);
        counter!(m::CONNECTIONS_TOTAL, "kind" => "client").increment(1);
        let me = myself.clone();
        let reader = tokio::spawn(crate::conn::reader::read_loop(
            Arc::clone(&a.ctx),
            Arc::clone(&a.shared),
            a.recv,
            a.buf,
        ));
        let reader = tokio::spawn(async move {
            let r = match reader.await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(e) => Err(format!("reader task failed: {e}")),
            };
            let _ = me.send_message(ConnMsg::ReaderEnded(r));
        });
        let me = myself.clone();
        let writer = tokio::spawn(crate::conn::writer::write_loop(
            Arc::clone(&a.ctx),
            Arc::clone(&a.shared),
            a.send,
            a.rx,
        ));
        let writer = tokio::spawn(async move {
            let r = match writer.await {
                Ok(r) => r,
                Err(e) => Err(format!("writer task failed: {e}")),
            };
            let _ = me.send_message(ConnMsg::WriterEnded(r));
        });
        let expiry = a.expires_at.map(|at| {
            let sh = Arc::clone(&a.shared);
            AbortOnDrop(tokio::spawn(async move {
                let left = at
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                tokio::time::sleep(left).await;
                counter!(m::PEER_CERT_EXPIRED_TOTAL).increment(1);
                info!(conn = sh.id, name = %sh.name, "closing: the peer certificate expired");
                sh.conn.close(
                    VarInt::from_u32(ErrorCode::UNAUTHORIZED.0 as u32),
                    b"peer certificate expired",
                );
            }))
        });
        Ok(ConnState {
            ctx: a.ctx,
            shared: a.shared,
            reader: Some(AbortOnDrop(reader)),
            writer: Some(AbortOnDrop(writer)),
            _expiry: expiry,
            reader_done: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ConnMsg>,
        msg: ConnMsg,
        st: &mut ConnState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConnMsg::ReaderEnded(r) => {
                st.reader_done = true;
                st.reader = None;
                if st.ctx.is_shutting_down() {
                    // The writer is draining the outbox; it ends the actor.
                    return Ok(());
                }
                if let Err(e) = &r {
                    debug!(conn = st.shared.id, error = %e, "reader ended");
                }
                myself.stop(Some(r.err().unwrap_or_else(|| "closed by peer".into())));
            }
            ConnMsg::WriterEnded(r) => {
                st.writer = None;
                myself.stop(r.err());
            }
            ConnMsg::InjectPanic => panic!("injected connection actor fault"),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ConnMsg>,
        st: &mut ConnState,
    ) -> Result<(), ActorProcessingErr> {
        cleanup(&st.ctx, st.shared.id);
        Ok(())
    }
}

/// Removes every trace of a connection. Idempotent: called from the actor's
/// `post_stop` and, should the actor have died in a panic, by its supervisor.
pub(crate) fn cleanup(ctx: &NodeCtx, id: ConnId) {
    if let Some((_, shared)) = ctx.conns.remove(&id) {
        shared.outbox.close();
        if shared.conn.close_reason().is_none() {
            shared.conn.close(VarInt::from_u32(0), b"closed");
        }
        metrics::gauge!(m::CONNECTIONS, "kind" => "client").decrement(1.0);
        ctx.fed.emit(NodeEvent::ClientDisconnected {
            client: shared.name.to_string(),
            spiffe_id: shared.identity().map(str::to_owned),
            at: std::time::SystemTime::now(),
        });
        info!(conn = id, name = %shared.name, "client disconnected");
    }
    let _ = ctx.table().send_message(TableMsg::RemoveConn { conn: id });
}
