//! The subscription-table actor: the only writer of the [`Registry`].
//!
//! Serializing mutations through one actor keeps the registry's per-name
//! snapshots consistent without readers ever taking a mutation lock. Its state
//! lives in the shared registry, so a restarted table actor resumes from it.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::outbox::Outbox;
use crate::registry::{ConnId, Registry, RemoteGroup};

/// Told the names whose local subscribers went from none to some or back
/// (the federation announces them to peers).
pub type LocalInterestHook = Arc<dyn Fn(&[Arc<str>]) + Send + Sync>;

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
    /// Replace the remote subscribers of a name (from the federation).
    SetRemote {
        key: String,
        remote: Vec<RemoteGroup>,
    },
}

pub struct TableState {
    reg: Arc<Registry>,
    on_local: LocalInterestHook,
}

pub struct TableActor;

impl Actor for TableActor {
    type Msg = TableMsg;
    type State = TableState;
    type Arguments = (Arc<Registry>, LocalInterestHook);

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        (reg, on_local): (Arc<Registry>, LocalInterestHook),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(TableState { reg, on_local })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let reg = &st.reg;
        // A name's first local subscriber or its last one leaving is what
        // peers must hear about.
        let local_edge = |key: &str| reg.local_count(key) == 1;
        match msg {
            TableMsg::Register {
                conn,
                outbox,
                full,
                service,
                reply,
            } => {
                let displaced = reg.claim(conn, &full);
                let mut edges: Vec<Arc<str>> = Vec::new();
                for key in [&full, &service] {
                    if reg.add(conn, &outbox, key) && local_edge(key) {
                        edges.push(Arc::from(key.as_str()));
                    }
                }
                let _ = reply.send(displaced);
                if !edges.is_empty() {
                    (st.on_local)(&edges);
                }
            }
            TableMsg::Subscribe {
                conn,
                outbox,
                key,
                reply,
            } => {
                let added = reg.add(conn, &outbox, &key);
                let _ = reply.send(added);
                if added && local_edge(&key) {
                    (st.on_local)(&[Arc::from(key.as_str())]);
                }
            }
            TableMsg::Unsubscribe { conn, key, reply } => {
                let removed = reg.remove(conn, &key);
                let _ = reply.send(removed);
                if removed && !reg.has_local(&key) {
                    (st.on_local)(&[Arc::from(key.as_str())]);
                }
            }
            TableMsg::RemoveConn { conn } => {
                let names = reg.names_of(conn);
                reg.remove_conn(conn);
                let gone: Vec<Arc<str>> = names
                    .into_iter()
                    .filter(|n| !reg.has_local(n))
                    .map(Arc::from)
                    .collect();
                if !gone.is_empty() {
                    (st.on_local)(&gone);
                }
            }
            TableMsg::SetRemote { key, remote } => {
                reg.set_remote(&key, remote);
            }
        }
        Ok(())
    }
}
