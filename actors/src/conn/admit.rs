//! A client's admission: its `Hello` checked and authenticated (certificate,
//! JWT-SVID or the development shared secret), its name registered, the
//! `Accept` sent, and its connection task started.

use std::sync::Arc;
use std::time::Duration;

use metrics::counter;
use quinn::VarInt;
use slim_auth::policy::Action;
use slim_wire::{Accept, ErrorCode, Frame, Hello, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, Reject};
use tracing::{info, warn};

use crate::conn::shared::{CONTROL_CAPACITY, ConnError, ConnShared, Credential};
use crate::conn::task::ConnArgs;
use crate::ctx::{NodeCtx, Opened, encode};
use crate::metrics as m;
use crate::outbox::Outbox;
use crate::table::TableMsg;
use crate::types::NodeEvent;

/// Admits a client whose first frame was `hello`, and starts its task.
pub(crate) async fn admit(
    ctx: Arc<NodeCtx>,
    opened: Opened,
    hello: Hello,
) -> Result<(), ConnError> {
    let Opened {
        conn,
        mut send,
        reader,
        cert_id,
        cert_grants,
        expires_at,
        policy,
    } = opened;
    let authenticated = check_hello(&hello).and_then(|()| match (&cert_id, cert_grants) {
        (Some(id), Some(g)) => match hello.token {
            Some(_) => Err(Reject {
                code: ErrorCode::PROTOCOL,
                reason: "authenticate with a client certificate or a token, not both".into(),
            }),
            None => Ok((
                id.clone(),
                g,
                expires_at.map(|t| (t, Credential::Certificate)),
            )),
        },
        _ => {
            let (id, token_expiry) = authenticate_token(&ctx, hello.token.as_deref())?;
            // A certificate that carried no usable identity still bounds the
            // connection, as it did before tokens were checked.
            let expiry = match (token_expiry, expires_at) {
                (Some(t), Some(c)) if c < t => Some((c, Credential::Certificate)),
                (Some(t), _) => Some((t, Credential::JwtSvid)),
                (None, c) => c.map(|c| (c, Credential::Certificate)),
            };
            policy
                .grants(Some(&id))
                .map(|g| (id, g, expiry))
                .map_err(|d| {
                    m::denied("connect");
                    Reject {
                        code: ErrorCode::UNAUTHORIZED,
                        reason: d.to_string(),
                    }
                })
        }
    });
    let checked = authenticated.and_then(|(id, grants, expiry)| {
        grants
            .check(Action::Register, hello.name.as_str())
            .map(|()| (id, expiry))
            .map_err(|d| {
                m::denied("register");
                Reject {
                    code: ErrorCode::UNAUTHORIZED,
                    reason: d.to_string(),
                }
            })
    });
    let (spiffe_id, credential_expiry) = match checked {
        Ok((id, expiry)) => (Some(id), expiry),
        Err(reject) => {
            m::handshake("rejected");
            if ctx
                .log
                .note(crate::logthrottle::Kind::Handshake, "hello_rejected")
            {
                info!(name = %hello.name, reason = %reject.reason, "hello rejected (first in this window; the rest are summed up)");
            }
            refuse(&ctx, &conn, &mut send, &reject).await;
            return Err(ConnError::Refused(reject.reason));
        }
    };
    let identity = spiffe_id.as_ref().map(slim_auth::SpiffeId::as_str);

    let id = ctx.next_conn_id();
    let q = &ctx.cfg.queue;
    let (outbox, rx) = Outbox::new(q.max_frames, q.max_bytes, q.policy);
    let outbox = Arc::new(outbox.with_overflow(Arc::clone(&ctx.overflow)));
    // Made before the connection is listed in `ctx.conns`: a policy change
    // from then on waits in the channel for the task to start.
    // `slim_framed::queue`, not a tokio channel: it holds no buffer until a
    // request comes (the channel allocated a block per connection).
    let (ctl_tx, ctl) = slim_framed::queue::queue(CONTROL_CAPACITY);
    let shared = Arc::new(ConnShared {
        id,
        name: hello.name.clone(),
        spiffe_id: spiffe_id.clone(),
        outbox: Arc::clone(&outbox),
        conn: conn.clone(),
        ctl: ctl_tx,
        policy_stale: tokio::sync::Notify::new(),
    });
    ctx.conns.insert(id, Arc::clone(&shared));
    let displaced = match register(&ctx, id, &outbox, &hello).await {
        Ok(d) => d,
        Err(e) => {
            // The table stayed down past its restart window: tell the client
            // why (it may retry) instead of closing on it wordlessly.
            ctx.conns.remove(&id);
            m::handshake("unavailable");
            warn!(name = %hello.name, error = %e, "client refused: subscription table unavailable");
            let reject = Reject {
                code: ErrorCode::INTERNAL,
                reason: format!("node busy: {e}; retry"),
            };
            refuse(&ctx, &conn, &mut send, &reject).await;
            return Err(e);
        }
    };
    if let Some(old) = displaced.and_then(|old| ctx.conns.get(&old).map(|c| Arc::clone(c.value())))
    {
        info!(name = %hello.name, "name taken over by a new connection; closing the old one");
        old.close(
            ErrorCode::NAME_TAKEN,
            "replaced by a newer connection with the same name",
        );
    }
    let accept = Frame::Accept(Accept {
        node_id: ctx.cfg.node_id.clone(),
        identity: identity.map(str::to_owned),
        max_frame: ctx.cfg.limits.max_frame,
    });
    if let Err(e) = send.write_all(&encode(&accept, &ctx)).await {
        abandon(&ctx, id);
        return Err(ConnError::Lost(e.to_string()));
    }
    m::handshake("ok");
    ctx.fed.emit(NodeEvent::ClientConnected {
        client: hello.name.to_string(),
        spiffe_id: identity.map(str::to_owned),
        at: std::time::SystemTime::now(),
    });
    info!(conn = id, name = %hello.name, identity = identity.unwrap_or("-"), remote = %conn.remote_address(), "client connected");

    let expires_at = credential_expiry.map(|(t, c)| (t + ctx.cfg.peer_expiry_grace, c));
    crate::conn::task::spawn(ConnArgs {
        ctx: Arc::clone(&ctx),
        shared,
        send,
        reader,
        rx,
        ctl,
        expires_at,
    });
    Ok(())
}

/// Sends the client `reject` and closes its connection with the same code
/// and reason.
async fn refuse(
    ctx: &NodeCtx,
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    reject: &Reject,
) {
    let _ = send
        .write_all(&encode(&Frame::Reject(reject.clone()), ctx))
        .await;
    let _ = send.finish();
    // Give the reject a moment to reach the client before the close.
    let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
    conn.close(
        VarInt::from_u32(reject.code.0 as u32),
        reject.reason.as_bytes(),
    );
}

/// How long an admission waits for a restarting subscription table. Its
/// supervisor restarts it within milliseconds; this only covers a slow box.
const TABLE_RESTART_WINDOW: Duration = Duration::from_secs(2);

/// Registers the client's name in the subscription table, riding out a
/// restart of the table actor (a killed actor's mailbox refuses the call;
/// the supervisor installs its successor in `ctx` shortly after).
async fn register(
    ctx: &NodeCtx,
    id: crate::registry::ConnId,
    outbox: &Arc<Outbox>,
    hello: &Hello,
) -> Result<Option<crate::registry::ConnId>, ConnError> {
    let deadline = tokio::time::Instant::now() + TABLE_RESTART_WINDOW;
    loop {
        let r = ractor::call!(ctx.table(), |reply| TableMsg::Register {
            conn: id,
            outbox: Arc::clone(outbox),
            full: hello.name.as_str().to_owned(),
            service: hello.name.service_str().to_owned(),
            reply,
        });
        match r {
            // A retry after a delivered-but-unanswered call finds the name
            // already ours: that is no takeover.
            Ok(displaced) => return Ok(displaced.filter(|old| *old != id)),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(ConnError::Lost(format!(
                    "subscription table unavailable: {e}"
                )));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Undoes a half-done admission: no trace of the connection is left.
fn abandon(ctx: &NodeCtx, id: crate::registry::ConnId) {
    ctx.conns.remove(&id);
    let _ = ctx.table().send_message(TableMsg::RemoveConn { conn: id });
}

fn check_hello(h: &Hello) -> Result<(), Reject> {
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&h.version) {
        return Err(Reject {
            code: ErrorCode::VERSION,
            reason: format!(
                "protocol version {} not supported (node speaks {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION})",
                h.version
            ),
        });
    }
    if !h.name.has_instance() {
        return Err(Reject {
            code: ErrorCode::BAD_NAME,
            reason: "a client registers its full name, org/namespace/service/instance".into(),
        });
    }
    Ok(())
}

/// The identity of the development shared-secret mode. Its trust domain says
/// what it is wherever it shows up (policies, deliveries, logs).
pub const SHARED_SECRET_ID: &str = "spiffe://insecure-shared-secret/client";

/// In-band authentication for a client that presented no certificate:
/// `jwt:<JWT-SVID>` or, in development, `secret:<shared secret>`. Returns the
/// identity and, for a JWT-SVID, its expiry (the connection ends then).
fn authenticate_token(
    ctx: &NodeCtx,
    token: Option<&str>,
) -> Result<(slim_auth::SpiffeId, Option<std::time::SystemTime>), Reject> {
    let unauthorized = |reason: String| Reject {
        code: ErrorCode::UNAUTHORIZED,
        reason,
    };
    let auth = &ctx.cfg.token_auth;
    let Some(token) = token else {
        m::denied("connect");
        ctx.refusals
            .entry("no_certificate")
            .and_modify(|n| *n += 1)
            .or_insert(1);
        counter!(m::HANDSHAKE_REFUSALS_TOTAL, "reason" => "no_certificate").increment(1);
        return Err(unauthorized(
            "no client certificate and no token: present an X.509-SVID or a JWT-SVID".into(),
        ));
    };
    if let Some(jwt) = token.strip_prefix("jwt:") {
        let Some(cfg) = &auth.jwt else {
            return Err(unauthorized(
                "JWT-SVID authentication is not enabled on this node".into(),
            ));
        };
        let keys = ctx.jwt_keys.read().clone();
        return slim_auth::JwtSvid::validate(
            jwt,
            &cfg.audience,
            &keys,
            std::time::SystemTime::now(),
        )
        .map(|svid| (svid.spiffe_id, Some(svid.expiry)))
        .map_err(|e| {
            counter!(m::HANDSHAKE_REFUSALS_TOTAL, "reason" => e.reason_code()).increment(1);
            unauthorized(format!("JWT-SVID refused ({}): {e}", e.reason_code()))
        });
    }
    if let Some(secret) = token.strip_prefix("secret:") {
        let Some(expected) = &auth.shared_secret else {
            return Err(unauthorized(
                "shared-secret authentication is not enabled on this node".into(),
            ));
        };
        // HMAC under a throwaway key turns the comparison into ring's
        // constant-time tag verification.
        let key =
            ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
                .map_err(|_| unauthorized("cannot check the shared secret".into()))?;
        let tag = ring::hmac::sign(&key, expected.as_bytes());
        if ring::hmac::verify(&key, secret.as_bytes(), tag.as_ref()).is_err() {
            counter!(m::HANDSHAKE_REFUSALS_TOTAL, "reason" => "bad_shared_secret").increment(1);
            return Err(unauthorized("wrong shared secret".into()));
        }
        warn!("client authenticated with the INSECURE development shared secret");
        return Ok((
            slim_auth::SpiffeId::parse(SHARED_SECRET_ID).expect("static SPIFFE ID"),
            None,
        ));
    }
    Err(unauthorized(
        "unknown token kind (expected jwt:… or secret:…)".into(),
    ))
}
