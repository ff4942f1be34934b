//! The connection task: owns one client connection's reader and writer
//! tasks and its control (subscription changes, policy re-checks, credential
//! expiry), hears when either task ends, and removes every trace of the
//! connection when it stops — also when it panics.
//!
//! A plain task rather than an actor: an actor's mailboxes and cell were
//! several KiB held by every idle connection, and its requests come only
//! from this connection's reader and from the node's policy changes, which
//! one bounded channel carries (see
//! [`CONTROL_CAPACITY`](crate::conn::shared::CONTROL_CAPACITY)).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use metrics::counter;
use quinn::{SendStream, VarInt};
use slim_auth::policy::Action;
use slim_wire::{ErrorCode, ErrorFrame, Frame, Name};
use tracing::{debug, info, warn};

use crate::conn::shared::{ConnShared, Credential, Ctl};
use crate::ctx::{AbortOnDrop, NodeCtx, Reader, TaskPanicked, close_conn, encode};
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
    pub ctl: slim_framed::queue::QueueRx<Ctl>,
    /// When the client's credential (plus grace) runs out, and which.
    pub expires_at: Option<(SystemTime, Credential)>,
}

/// What the connection task owns besides its reader, writer and channel.
struct ConnState {
    ctx: Arc<NodeCtx>,
    shared: Arc<ConnShared>,
    /// The client's explicit subscriptions (its registration names aside),
    /// owned here: every change goes through this task.
    subscriptions: HashSet<Box<str>>,
}

/// Starts the connection's task (which starts its reader and writer).
/// However it ends — its reader or writer ended, or it panicked — every
/// trace of the connection goes with it.
pub(crate) fn spawn(a: ConnArgs) {
    use futures::FutureExt;
    metrics::gauge!(m::CONNECTIONS, "kind" => "client").increment(1.0);
    counter!(m::CONNECTIONS_TOTAL, "kind" => "client").increment(1);
    let (ctx, id) = (Arc::clone(&a.ctx), a.shared.id);
    // The panic is caught inside the task, not by a second task awaiting
    // its handle: a watcher task per connection is memory every idle
    // connection would hold. Unwinding drops the reader and writer handles,
    // which aborts both tasks. A combinator rather than an `async` block
    // around `run(a)`: the block would hold the arguments (or the body)
    // twice, captured and awaited, for the connection's whole life.
    let task = std::panic::AssertUnwindSafe(run(a))
        .catch_unwind()
        .map(move |ended| {
            if let Err(p) = ended {
                let p = TaskPanicked::from_payload(p);
                warn!(conn = id, error = %p, "connection task failed; removing the connection");
                counter!(m::ACTOR_RESTARTS_TOTAL, "actor" => "connection").increment(1);
            }
            cleanup(&ctx, id);
        });
    tokio::spawn(task);
}

/// The task's body: a thin driver around [`ConnState`]. Returns when the
/// connection is over (the reader or writer ended, or the writer finished
/// draining at shutdown); dropping the handles then aborts what is left.
async fn run(a: ConnArgs) {
    let ConnArgs {
        ctx,
        shared,
        send,
        reader,
        rx,
        ctl,
        expires_at,
    } = a;
    let mut reader = AbortOnDrop(tokio::spawn(crate::conn::reader::read_loop(
        Arc::clone(&ctx),
        Arc::clone(&shared),
        reader,
    )));
    let mut writer = AbortOnDrop(tokio::spawn(crate::conn::writer::write_loop(
        Arc::clone(&ctx),
        Arc::clone(&shared),
        send,
        rx,
    )));
    let (expiry, credential) = match expires_at {
        Some((at, c)) => (
            at.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
            Some(c),
        ),
        None => (Duration::ZERO, None),
    };
    let expired = tokio::time::sleep(expiry);
    tokio::pin!(expired);
    let mut credential = credential;
    let mut reader_done = false;
    let mut st = ConnState {
        ctx,
        shared,
        subscriptions: HashSet::new(),
    };
    loop {
        tokio::select! {
            r = &mut reader.0, if !reader_done => {
                reader_done = true;
                let r = match r {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(e) => Err(format!("reader task failed: {e}")),
                };
                if st.ctx.is_shutting_down() {
                    // The writer is draining the outbox; its end ends this.
                    continue;
                }
                if let Err(e) = &r {
                    debug!(conn = st.shared.id, error = %e, "reader ended");
                }
                return;
            }
            r = &mut writer.0 => {
                if let Ok(Err(e)) | Err(e) = r.map_err(|e| format!("writer task failed: {e}")) {
                    debug!(conn = st.shared.id, error = %e, "writer ended");
                }
                return;
            }
            // Boxed: what handling a request awaits (a table call, a
            // control frame's push) would otherwise be part of this future,
            // i.e. of every idle connection's task, for the rare moment it
            // runs.
            Some(msg) = ctl.recv() => Box::pin(st.handle(msg)).await,
            () = st.shared.policy_stale.notified() => Box::pin(st.policy_changed()).await,
            () = &mut expired, if credential.is_some() => {
                st.credential_expired(credential.take().expect("guarded"));
            }
        }
    }
}

impl ConnState {
    async fn handle(&mut self, msg: Ctl) {
        match msg {
            Ctl::Subscribe { name, reply } => {
                let r = ractor::call!(self.ctx.table(), |reply| TableMsg::Subscribe {
                    conn: self.shared.id,
                    outbox: Arc::clone(&self.shared.outbox),
                    key: name.to_string(),
                    reply,
                })
                .map_err(|e| format!("subscription table unavailable: {e}"));
                if r.is_ok() {
                    self.subscriptions.insert(name);
                }
                let _ = reply.send(r);
            }
            Ctl::Unsubscribe { name, reply } => {
                let r = ractor::call!(self.ctx.table(), |reply| TableMsg::Unsubscribe {
                    conn: self.shared.id,
                    key: name.to_string(),
                    reply,
                })
                .map_err(|e| format!("subscription table unavailable: {e}"));
                if r.is_ok() {
                    self.subscriptions.remove(&name);
                }
                let _ = reply.send(r);
            }
            Ctl::PolicyChanged => self.policy_changed().await,
            #[cfg(feature = "test-util")]
            Ctl::InjectPanic => panic!("injected connection task fault"),
            #[cfg(feature = "test-util")]
            Ctl::Hold { held, until } => {
                let _ = held.send(());
                let _ = until.await;
            }
            #[cfg(feature = "test-util")]
            Ctl::Nothing => {}
        }
    }

    fn credential_expired(&self, credential: Credential) {
        let sh = &self.shared;
        match credential {
            Credential::Certificate => {
                counter!(m::PEER_CERT_EXPIRED_TOTAL).increment(1);
                info!(conn = sh.id, name = %sh.name, "closing: the peer certificate expired");
                close_conn(
                    &sh.conn,
                    ErrorCode::UNAUTHORIZED,
                    "peer certificate expired",
                );
            }
            Credential::JwtSvid => {
                // The token was checked once, at the hello: past its `exp`
                // nothing vouches for the identity any more.
                counter!(m::PEER_JWT_EXPIRED_TOTAL).increment(1);
                info!(conn = sh.id, name = %sh.name, identity = ?sh.identity(), "closing: the client's JWT-SVID expired");
                close_conn(
                    &sh.conn,
                    ErrorCode::UNAUTHORIZED,
                    "JWT-SVID expired: reconnect with a fresh token",
                );
            }
        }
    }

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
        let revoked: Vec<(Box<str>, String)> = self
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
                key: name.to_string(),
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

/// Removes every trace of a connection. Idempotent: called when the
/// connection task ends, however it ends.
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
