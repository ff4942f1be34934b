//! An incoming QUIC connection until its first frame: the TLS handshake, the
//! certificate identity and its policy check, then the first frame decides
//! the kind. A `Hello` goes to [`crate::conn::admit`], a `PeerHello` to
//! [`crate::link::admit`]; each starts its own actor.

use std::sync::Arc;

use quinn::VarInt;
use slim_wire::{ErrorCode, Frame, Hello};
use tracing::info;

use crate::conn::shared::ConnError;
use crate::ctx::{NodeCtx, Opened, Reader, read_first};
use crate::metrics as m;

/// Runs the TLS handshake of one incoming connection, reads its first frame
/// and hands it to the right kind: a client (`Hello`) or a peer node
/// (`PeerHello`), which then starts its own actor.
pub(crate) async fn accept(
    ctx: Arc<NodeCtx>,
    incoming: quinn::Incoming,
    listener: ractor::ActorCell,
) -> Result<(), ConnError> {
    let deadline = ctx.cfg.handshake_timeout;
    let conn = match tokio::time::timeout(deadline, incoming).await {
        Err(_) => {
            m::handshake("timeout");
            return Err(ConnError::Timeout);
        }
        Ok(Err(e)) => {
            m::handshake("refused");
            info!(error = %e, "handshake refused");
            return Err(ConnError::Refused(e.to_string()));
        }
        Ok(Ok(c)) => c,
    };
    let certs = peer_certs(&conn);
    let cert_id = certs
        .as_deref()
        .and_then(|c| slim_auth::peer_spiffe_id(c).ok());
    let expires_at = certs.as_deref().and_then(slim_auth::peer_not_after);
    // A certificate identity the policy does not know is refused before any frame.
    let (policy, _) = ctx.policy();
    let cert_grants = match &cert_id {
        None => None,
        Some(id) => match policy.grants(Some(id)) {
            Ok(g) => Some(g),
            Err(denied) => {
                m::handshake("unauthorized");
                m::denied("connect");
                info!(identity = %id, reason = %denied, "connection refused by policy");
                conn.close(
                    VarInt::from_u32(ErrorCode::UNAUTHORIZED.0 as u32),
                    denied.to_string().as_bytes(),
                );
                return Err(ConnError::Refused(denied.to_string()));
            }
        },
    };
    let setup = async {
        let (send, recv) = conn
            .accept_bi()
            .await
            .map_err(|e| ConnError::Lost(e.to_string()))?;
        let mut reader = Reader::new(recv, ctx.cfg.limits);
        let hello = match read_first(&mut reader).await? {
            Frame::Hello(h) => First::Client(h),
            Frame::PeerHello(h) => First::Peer(h),
            other => {
                return Err(ConnError::Protocol(format!(
                    "expected hello, got {}",
                    other.kind().as_str()
                )));
            }
        };
        Ok::<_, ConnError>((send, reader, hello))
    };
    let (send, reader, first) = match tokio::time::timeout(deadline, setup).await {
        Err(_) => {
            m::handshake("timeout");
            conn.close(
                VarInt::from_u32(ErrorCode::PROTOCOL.0 as u32),
                b"hello timeout",
            );
            return Err(ConnError::Timeout);
        }
        Ok(Err(e)) => {
            m::handshake("bad_hello");
            m::protocol_error("bad_hello");
            conn.close(
                VarInt::from_u32(e.code().0 as u32),
                e.to_string().as_bytes(),
            );
            return Err(e);
        }
        Ok(Ok(v)) => v,
    };
    let opened = Opened {
        conn,
        send,
        reader,
        cert_id,
        cert_grants,
        expires_at,
        policy,
    };
    match first {
        First::Client(h) => crate::conn::admit::admit(ctx, opened, h, listener).await,
        First::Peer(h) => crate::link::admit::accept_peer(ctx, opened, h)
            .await
            .map_err(|e| ConnError::Refused(e.to_string())),
    }
}

/// The first frame of an incoming connection: a client's or a peer node's.
enum First {
    Client(Hello),
    Peer(slim_wire::PeerHello),
}

fn peer_certs(conn: &quinn::Connection) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
    conn.peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()
        .map(|b| *b)
}
