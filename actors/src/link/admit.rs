//! A peer node's admission: its `PeerHello` checked against the version,
//! its node id and the policy, then its link actor started under the
//! federation actor.

use std::sync::Arc;
use std::time::Duration;

use metrics::counter;
use slim_wire::{ErrorCode, Frame, LINK_PROTOCOL_VERSION, PeerHello, Reject};
use tracing::{debug, info, warn};

use crate::ctx::{NodeCtx, Opened, close_conn, encode};
use crate::fed::shared::LinkShared;
use crate::interest::valid_node_id;
use crate::link::actor::{LinkArgs, LinkKind, spawn_link};
use crate::link::error::LinkError;
use crate::link::handshake::Accepted;
use crate::metrics as m;
use crate::types::LinkDirection;

/// Handles a `PeerHello` that arrived as the first frame of an incoming
/// connection: checks it, then starts the link actor under the federation
/// actor. The certificate identity must be granted `peer` by the policy.
pub(crate) async fn accept_peer(
    ctx: Arc<NodeCtx>,
    opened: Opened,
    hello: PeerHello,
) -> Result<(), LinkError> {
    let Opened {
        conn,
        mut send,
        reader,
        cert_id,
        cert_grants,
        ..
    } = opened;
    let cert = cert_id.map(|id| {
        let ok = cert_grants
            .as_ref()
            .map_or(Ok(()), |g| g.check_peer().map_err(|d| d.to_string()));
        (id, ok)
    });
    let refuse = |code: ErrorCode, label: &'static str, reason: String| {
        counter!(m::LINK_REFUSALS_TOTAL, "reason" => label).increment(1);
        Reject { code, reason }
    };
    let checked = if hello.version != LINK_PROTOCOL_VERSION {
        Err(refuse(
            ErrorCode::VERSION,
            "version",
            format!(
                "node-to-node protocol version {} not supported (this node speaks {}); \
                 the nodes of one fleet must run releases with the same link protocol",
                hello.version, LINK_PROTOCOL_VERSION
            ),
        ))
    } else if !valid_node_id(&hello.node_id) || hello.node_id == ctx.cfg.node_id {
        Err(refuse(
            ErrorCode::PROTOCOL,
            "bad_node_id",
            format!("invalid peer node id {:?}", hello.node_id),
        ))
    } else {
        match cert {
            None => Err(refuse(
                ErrorCode::UNAUTHORIZED,
                "no_certificate",
                "a peer link needs a node certificate".into(),
            )),
            Some((_, Err(reason))) => {
                m::denied("peer");
                Err(refuse(ErrorCode::UNAUTHORIZED, "unauthorized", reason))
            }
            Some((id, Ok(()))) => Ok(id),
        }
    };
    let spiffe_id = match checked {
        Ok(id) => id,
        Err(reject) => {
            info!(peer = %hello.node_id, reason = %reject.reason, "peer link refused");
            let _ = send
                .write_all(&encode(&Frame::Reject(reject.clone()), &ctx))
                .await;
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
            close_conn(&conn, reject.code, &reject.reason);
            return Err(LinkError::Unauthorized(reject.reason));
        }
    };
    let Some(fed) = ctx.fed.actor() else {
        close_conn(&conn, ErrorCode::SHUTTING_DOWN, "federation not running");
        return Err(LinkError::Lost("federation actor not running".into()));
    };
    let shared = Arc::new(LinkShared::new(
        LinkDirection::Accepted,
        &hello.node_id,
        conn.remote_address(),
    ));
    let args = LinkArgs {
        ctx: Arc::clone(&ctx),
        key: ctx.fed.next_link_key(),
        shared,
        kind: LinkKind::Accepted(Box::new(Accepted {
            conn: conn.clone(),
            send,
            reader,
            node_id: hello.node_id.clone(),
            spiffe_id,
        })),
    };
    if let Err(e) = spawn_link(args, fed.get_cell()).await {
        warn!(error = %e, "cannot start link actor");
        close_conn(&conn, ErrorCode::INTERNAL, "cannot start link");
        return Err(LinkError::Lost(e.to_string()));
    }
    debug!(peer = %hello.node_id, "peer link accepted");
    Ok(())
}
