//! The subscription-table actor: the only writer of the [`Registry`].
//!
//! Serializing mutations through one actor keeps the registry's per-name
//! snapshots consistent without readers ever taking a mutation lock. Its state
//! lives in the shared registry, so a restarted table actor resumes from it.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::outbox::Outbox;
use crate::registry::{ConnId, Registry};

pub enum TableMsg {
    /// Register a client's full name: claims it (returning a displaced owner)
    /// and subscribes both the full name and its service name.
    Register {
        conn: ConnId,
        outbox: Arc<Outbox>,
        full: String,
        service: String,
        reply: RpcReplyPort<Option<ConnId>>,
    },
    Subscribe {
        conn: ConnId,
        outbox: Arc<Outbox>,
        key: String,
        reply: RpcReplyPort<bool>,
    },
    Unsubscribe {
        conn: ConnId,
        key: String,
        reply: RpcReplyPort<bool>,
    },
    RemoveConn {
        conn: ConnId,
    },
}

pub struct TableActor;

impl Actor for TableActor {
    type Msg = TableMsg;
    type State = Arc<Registry>;
    type Arguments = Arc<Registry>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        registry: Arc<Registry>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(registry)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        reg: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TableMsg::Register {
                conn,
                outbox,
                full,
                service,
                reply,
            } => {
                let displaced = reg.claim(conn, &full);
                reg.add(conn, &outbox, &full);
                reg.add(conn, &outbox, &service);
                let _ = reply.send(displaced);
            }
            TableMsg::Subscribe {
                conn,
                outbox,
                key,
                reply,
            } => {
                let _ = reply.send(reg.add(conn, &outbox, &key));
            }
            TableMsg::Unsubscribe { conn, key, reply } => {
                let _ = reply.send(reg.remove(conn, &key));
            }
            TableMsg::RemoveConn { conn } => {
                reg.remove_conn(conn);
            }
        }
        Ok(())
    }
}
