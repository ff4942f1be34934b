//! The connection actor: owns one client connection's reader and writer
//! tasks and its control (close, drain, subscription changes), hears when
//! either task ends, and removes every trace of the connection when it stops.

use std::collections::HashSet;
use std::sync::Arc;

use metrics::counter;
use quinn::{SendStream, VarInt};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use slim_auth::policy::Action;
use slim_wire::{ErrorCode, ErrorFrame, Frame, Name};
use tracing::{debug, info, warn};

use crate::conn::shared::{ConnMsg, ConnShared, Credential};
use crate::ctx::{NodeCtx, Owned, Reader, close_conn, encode};
use crate::metrics as m;
use crate::registry::ConnId;
use crate::table::TableMsg;
use crate::types::NodeEvent;

pub(crate) struct ConnArgs {
    pub ctx: Arc<NodeCtx>,
    pub shared: Arc<ConnShared>,
    pub send: SendStream,
    pub reader: Reader,
    pub rx: crate::outbox::QueueRx,
}

pub(crate) struct ConnState {
    ctx: Arc<NodeCtx>,
    shared: Arc<ConnShared>,
    /// The client's explicit subscriptions (its registration names aside),
    /// owned here: every change goes through this actor.
    subscriptions: HashSet<String>,
    reader: Option<Owned>,
    writer: Option<Owned>,
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
        let reader = Owned::spawn(
            crate::conn::reader::read_loop(
                Arc::clone(&a.ctx),
                Arc::clone(&a.shared),
                myself.clone(),
                a.reader,
            ),
            move |r| {
                let r = match r {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(e) => Err(format!("reader task failed: {e}")),
                };
                let _ = me.send_message(ConnMsg::ReaderEnded(r));
            },
        );
        let me = myself.clone();
        let writer = Owned::spawn(
            crate::conn::writer::write_loop(
                Arc::clone(&a.ctx),
                Arc::clone(&a.shared),
                a.send,
                a.rx,
            ),
            move |r| {
                let r = match r {
                    Ok(r) => r,
                    Err(e) => Err(format!("writer task failed: {e}")),
                };
                let _ = me.send_message(ConnMsg::WriterEnded(r));
            },
        );
        Ok(ConnState {
            ctx: a.ctx,
            shared: a.shared,
            subscriptions: HashSet::new(),
            reader: Some(reader),
            writer: Some(writer),
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
            ConnMsg::Subscribe { name, reply } => {
                let r = ractor::call!(st.ctx.table(), |reply| TableMsg::Subscribe {
                    conn: st.shared.id,
                    outbox: Arc::clone(&st.shared.outbox),
                    key: name.clone(),
                    reply,
                })
                .map_err(|e| format!("subscription table unavailable: {e}"));
                if r.is_ok() {
                    st.subscriptions.insert(name);
                }
                let _ = reply.send(r);
            }
            ConnMsg::Unsubscribe { name, reply } => {
                let r = ractor::call!(st.ctx.table(), |reply| TableMsg::Unsubscribe {
                    conn: st.shared.id,
                    key: name.clone(),
                    reply,
                })
                .map_err(|e| format!("subscription table unavailable: {e}"));
                if r.is_ok() {
                    st.subscriptions.remove(&name);
                }
                let _ = reply.send(r);
            }
            ConnMsg::Close { code, reason } => {
                info!(conn = st.shared.id, name = %st.shared.name, %reason, "closing connection");
                close_conn(&st.shared.conn, code, &reason);
            }
            ConnMsg::PolicyChanged => st.policy_changed().await,
            ConnMsg::CredentialExpired(Credential::Certificate) => {
                counter!(m::PEER_CERT_EXPIRED_TOTAL).increment(1);
                info!(conn = st.shared.id, name = %st.shared.name, "closing: the peer certificate expired");
                close_conn(
                    &st.shared.conn,
                    ErrorCode::UNAUTHORIZED,
                    "peer certificate expired",
                );
            }
            ConnMsg::CredentialExpired(Credential::JwtSvid) => {
                // The token was checked once, at the hello: past its `exp`
                // nothing vouches for the identity any more.
                counter!(m::PEER_JWT_EXPIRED_TOTAL).increment(1);
                info!(conn = st.shared.id, name = %st.shared.name, identity = ?st.shared.spiffe_id.as_ref().map(|i| i.as_str()), "closing: the client's JWT-SVID expired");
                close_conn(
                    &st.shared.conn,
                    ErrorCode::UNAUTHORIZED,
                    "JWT-SVID expired: reconnect with a fresh token",
                );
            }
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
            #[cfg(feature = "test-util")]
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

impl ConnState {
    /// Re-checks what this connection holds against the current policy.
    async fn policy_changed(&mut self) {
        let (policy, _) = self.ctx.policy();
        let sh = &self.shared;
        let grants = match policy.grants(sh.spiffe_id.as_ref()) {
            Ok(g) => g,
            Err(d) => {
                m::denied("connect");
                counter!(m::POLICY_REVOCATIONS_TOTAL, "what" => "connection").increment(1);
                warn!(conn = sh.id, name = %sh.name, reason = %d, "policy reload: connection no longer allowed; closing");
                close_conn(&sh.conn, ErrorCode::UNAUTHORIZED, &d.to_string());
                return;
            }
        };
        if let Err(d) = grants.check(Action::Register, sh.name.as_str()) {
            m::denied("register");
            counter!(m::POLICY_REVOCATIONS_TOTAL, "what" => "connection").increment(1);
            warn!(conn = sh.id, name = %sh.name, reason = %d, "policy reload: name no longer allowed; closing");
            close_conn(&sh.conn, ErrorCode::UNAUTHORIZED, &d.to_string());
            return;
        }
        let revoked: Vec<(String, String)> = self
            .subscriptions
            .iter()
            .filter_map(|n| {
                grants
                    .check(Action::Subscribe, n)
                    .err()
                    .map(|d| (n.clone(), d.to_string()))
            })
            .collect();
        for (name, reason) in revoked {
            let removed = ractor::call!(self.ctx.table(), |reply| TableMsg::Unsubscribe {
                conn: sh.id,
                key: name.clone(),
                reply,
            });
            if let Err(e) = removed {
                // The table is being restarted: close rather than keep
                // delivering what the policy now forbids.
                warn!(conn = sh.id, error = %e, "policy reload: cannot revoke a subscription; closing");
                close_conn(&sh.conn, ErrorCode::INTERNAL, "cannot apply the new policy");
                return;
            }
            self.subscriptions.remove(&name);
            m::denied("subscribe");
            counter!(m::POLICY_REVOCATIONS_TOTAL, "what" => "subscription").increment(1);
            warn!(conn = sh.id, client = %sh.name, %name, %reason, "policy reload: subscription revoked");
            let frame = Frame::Error(ErrorFrame {
                code: ErrorCode::UNAUTHORIZED,
                msg_id: None,
                name: Name::parse(&name).ok(),
                reason: format!("subscription revoked by a policy reload: {reason}"),
            });
            let _ = sh.outbox.push_control(encode(&frame, &self.ctx)).await;
        }
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
