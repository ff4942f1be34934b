//! An incoming QUIC connection until its first frame: the TLS handshake, the
//! certificate identity and its policy check, then the first frame decides
//! the kind. A `Hello` goes to [`crate::conn::admit`], a `PeerHello` to
//! [`crate::link::admit`]; each starts its own actor.

use std::sync::Arc;

use quinn::VarInt;
use slim_framed::datagrams::Path;
use slim_wire::{ErrorCode, Frame, Hello};
use tracing::info;

use crate::conn::shared::ConnError;
use crate::ctx::{HandshakeGuard, NodeCtx, Opened, Reader, read_first};
use crate::logthrottle::Kind;
use crate::metrics as m;

/// The largest first frame (`Hello`, `PeerHello`): a name and at most a
/// JWT-SVID. SPIRE's JWT-SVIDs are 1–2 KiB; 16 KiB leaves room for a token
/// with many claims while a stalled, unauthenticated hello holds little.
pub(crate) const MAX_HELLO_FRAME: u32 = 16 << 10;

/// The connection-level flow-control window until the first frame is read:
/// the most an unauthenticated client can make the node buffer across all
/// its streams (quinn buffers streams the node has not accepted too).
pub(crate) const PRE_HELLO_RECEIVE_WINDOW: u32 = 64 << 10;

/// The connection-level window after the first frame: the value of
/// `transport_config` in `ctx.rs` (keep the two equal).
const RECEIVE_WINDOW: u32 = 4 << 20;

/// Appended to log lines anyone on the network can cause.
const THROTTLED: &str = " (first of its kind in this window; the rest are summed up)";

/// A short label for a failed TLS handshake, for the log summary (the
/// certificate checks count their own reasons in
/// `slim_handshake_refusals_total`).
fn tls_reason(e: &quinn::ConnectionError) -> &'static str {
    use quinn::ConnectionError as E;
    match e {
        E::TransportError(_) => "tls_refused",
        E::ConnectionClosed(_) | E::ApplicationClosed(_) => "closed_by_client",
        E::TimedOut => "tls_timeout",
        E::Reset => "reset",
        E::VersionMismatch => "version_mismatch",
        E::LocallyClosed | E::CidsExhausted => "local",
    }
}

/// TLS alert `certificate_required` (RFC 8446 §6.2), which rustls sends
/// when client authentication is mandatory and the client presented none.
const ALERT_CERTIFICATE_REQUIRED: u8 = 116;

/// Whether the handshake failed because the client presented no certificate.
fn no_certificate(e: &quinn::ConnectionError) -> bool {
    matches!(e, quinn::ConnectionError::TransportError(te)
        if te.code == quinn_proto::TransportErrorCode::crypto(ALERT_CERTIFICATE_REQUIRED))
}

/// Runs the TLS handshake of one incoming connection, reads its first frame
/// and hands it to the right kind: a client (`Hello`) or a peer node
/// (`PeerHello`), which then starts its own actor.
pub(crate) async fn accept(
    ctx: Arc<NodeCtx>,
    incoming: quinn::Incoming,
    in_progress: HandshakeGuard,
) -> Result<(), ConnError> {
    // One deadline for TLS and hello together, as documented: a client that
    // stalls both gets `handshake_timeout`, not twice it.
    let deadline = tokio::time::Instant::now() + ctx.cfg.handshake_timeout;
    let remote = incoming.remote_address();
    let handshake = async {
        match Path::to(remote.ip()) {
            Path::Loopback => {
                incoming
                    .accept_with(Arc::clone(&ctx.loopback_server))?
                    .await
            }
            Path::Network => incoming.await,
        }
    };
    let conn = match tokio::time::timeout_at(deadline, handshake).await {
        Err(_) => {
            m::handshake("timeout");
            if ctx.log.note(Kind::Handshake, "tls_timeout") {
                info!(%remote, timeout = ?ctx.cfg.handshake_timeout, "handshake abandoned: TLS did not complete in time{THROTTLED}");
            }
            return Err(ConnError::Timeout);
        }
        Ok(Err(e)) => {
            // A client that went quiet mid-handshake ends in QUIC's idle
            // timeout: that is a timeout, not a refusal.
            let timed_out = matches!(e, quinn::ConnectionError::TimedOut);
            m::handshake(if timed_out { "timeout" } else { "refused" });
            if no_certificate(&e) {
                // rustls refuses a client without a certificate before any
                // SVID check runs, so it is counted here under its reason.
                *ctx.refusals.entry("no_certificate").or_insert(0) += 1;
                metrics::counter!(m::HANDSHAKE_REFUSALS_TOTAL, "reason" => "no_certificate")
                    .increment(1);
            }
            if ctx.log.note(Kind::Handshake, tls_reason(&e)) {
                info!(%remote, error = %e, "handshake refused{THROTTLED}");
            }
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
                if ctx.log.note(Kind::Handshake, "unauthorized") {
                    info!(%remote, identity = %id, reason = %denied, "connection refused by policy{THROTTLED}");
                }
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
        // Before its hello a connection may be anyone (JWT and shared-secret
        // clients present no certificate): its first frame gets a small
        // limit, so that a stalled hello holds at most this much.
        let hello_limits = slim_wire::Limits {
            max_frame: ctx.cfg.limits.max_frame.min(MAX_HELLO_FRAME),
        };
        let mut reader = Reader::new(recv, hello_limits).read_chunk(4096);
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
        let (recv, rest) = reader.into_parts();
        let reader = Reader::with_buffered(recv, rest, ctx.cfg.limits);
        // The hello is in: from here the node answers without waiting on
        // the client (a token is checked at once), so the full window is safe.
        conn.set_receive_window(VarInt::from_u32(RECEIVE_WINDOW));
        Ok::<_, ConnError>((send, reader, hello))
    };
    let setup = tokio::time::timeout_at(deadline, setup).await;
    drop(in_progress);
    let (send, reader, first) = match setup {
        Err(_) => {
            m::handshake("timeout");
            if ctx.log.note(Kind::Handshake, "hello_timeout") {
                info!(%remote, identity = ?cert_id.as_ref().map(|i| i.to_string()), timeout = ?ctx.cfg.handshake_timeout, "connection closed: no hello within the handshake timeout{THROTTLED}");
            }
            conn.close(
                VarInt::from_u32(ErrorCode::PROTOCOL.0 as u32),
                b"hello timeout",
            );
            return Err(ConnError::Timeout);
        }
        Ok(Err(e)) => {
            m::handshake("bad_hello");
            m::protocol_error("bad_hello");
            if ctx.log.note(Kind::Handshake, "bad_hello") {
                info!(%remote, error = %e, "connection closed: bad hello{THROTTLED}");
            }
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
        First::Client(h) => crate::conn::admit::admit(ctx, opened, h).await,
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
