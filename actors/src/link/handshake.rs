//! The link handshakes: the dialler's (`PeerHello` → `PeerAccept`, then
//! the control stream) and the acceptor's answer, both under the handshake
//! deadline.

use std::net::SocketAddr;
use std::sync::Arc;

use metrics::counter;
use quinn::SendStream;
use slim_wire::{ErrorCode, Frame, LINK_PROTOCOL_VERSION, PeerAccept, PeerHello, Ping, Reject};
use std::time::Duration;
use tracing::debug;

use crate::ctx::{NodeCtx, Reader, close_conn, encode, read_first, transport_config};
use crate::fed::shared::LinkShared;
use crate::link::error::LinkError;
use crate::link::session::{LINK_READ_CHUNK, Streams, end_session, serve, start_session};
use crate::metrics as m;
use crate::types::{PeerSpec, TlsIdentity};
use slim_framed::datagrams::Path;

/// QUIC settings of a dialled link over `path`: keep-alives at the
/// federation's interval (they keep the NAT mapping of a dialling node open)
/// and larger windows than a client connection, since one link carries many
/// clients' traffic.
pub(crate) fn link_transport(ctx: &NodeCtx, path: Path) -> quinn::TransportConfig {
    let fc = &ctx.cfg.federation;
    let mut t = transport_config(&ctx.cfg, fc.max_udp_payload, path);
    t.keep_alive_interval(Some(fc.keep_alive))
        .stream_receive_window((8u32 << 20).into())
        .receive_window((16u32 << 20).into())
        .send_window(16 << 20);
    if let Ok(idle) = quinn::IdleTimeout::try_from(fc.link_timeout) {
        t.max_idle_timeout(Some(idle));
    }
    t
}

pub(crate) fn peer_cert_id(conn: &quinn::Connection) -> Option<slim_auth::SpiffeId> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    slim_auth::peer_spiffe_id(&certs).ok()
}

/// Resolves `host:port` at every dial ([`slim_auth::resolve`]): a peer
/// that moved is found under its name.
pub(crate) async fn resolve(host: &str, timeout: Duration) -> Result<Vec<SocketAddr>, LinkError> {
    slim_auth::resolve::resolve(host, timeout)
        .await
        .map_err(|e| LinkError::Resolve {
            host: e.host,
            reason: e.reason,
        })
}

/// Resolves the peer's address and tries every address it resolves to in
/// turn (each under `deadline`), so one dead address of several does not
/// keep the link down. The error is the last address's.
async fn connect_any(
    ctx: &NodeCtx,
    spec: &PeerSpec,
    cc: quinn::ClientConfig,
    deadline: Duration,
) -> Result<quinn::Connection, LinkError> {
    let mut addrs = resolve(&spec.addr, deadline).await?;
    // Addresses of our socket's family first: the others fail at once on
    // an IPv4 socket, but may cost a handshake timeout on a dual-stack one.
    if let Ok(local) = ctx.endpoint.local_addr() {
        addrs.sort_by_key(|a| a.is_ipv6() != local.is_ipv6());
    }
    let mut last = None;
    for addr in addrs {
        let connect_err = |reason: String| LinkError::Connect {
            addr: addr.to_string(),
            reason,
        };
        let mut cc = cc.clone();
        cc.transport_config(Arc::new(link_transport(ctx, Path::to(addr.ip()))));
        let attempt = match ctx.endpoint.connect_with(cc, addr, &spec.server_name) {
            Err(e) => Err(connect_err(e.to_string())),
            Ok(connecting) => match tokio::time::timeout(deadline, connecting).await {
                Err(_) => Err(LinkError::Timeout),
                Ok(Err(e)) => Err(connect_err(e.to_string())),
                Ok(Ok(c)) => Ok(c),
            },
        };
        match attempt {
            Ok(c) => return Ok(c),
            Err(e) => {
                debug!(peer = %spec.node_id, host = %spec.addr, %addr, error = %e, "peer address failed; trying the next");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| LinkError::Resolve {
        host: spec.addr.clone(),
        reason: "no address".into(),
    }))
}

pub(crate) async fn dial(
    ctx: &NodeCtx,
    shared: &LinkShared,
    spec: &PeerSpec,
) -> Result<Streams, LinkError> {
    let alpn: &[&[u8]] = &[slim_auth::ALPN_SLIM];
    let server = match &spec.expect_spiffe_id {
        Some(id) => slim_auth::ServerMatch::Exact(id.clone()),
        None => slim_auth::ServerMatch::Any,
    };
    let tls = match ctx.node_identity() {
        TlsIdentity::Static(i) => slim_auth::client_config(i, alpn, server),
        TlsIdentity::Source(s) => slim_auth::client_config_from_source(s, alpn, server),
    }
    .map_err(|e| LinkError::Tls(e.to_string()))?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))
        .map_err(|e| LinkError::Tls(e.to_string()))?;
    // Its transport settings depend on the address it reaches (`connect_any`).
    let cc = quinn::ClientConfig::new(Arc::new(quic));
    let deadline = ctx.cfg.handshake_timeout;
    let conn = connect_any(ctx, spec, cc, deadline).await?;
    // Mutual: the node we dialled must be a peer under *our* policy too.
    let peer_id = peer_cert_id(&conn)
        .ok_or_else(|| LinkError::Unauthorized("peer presented no SPIFFE ID".into()))?;
    let (policy, _) = ctx.policy();
    if let Err(reason) = policy.grants(Some(&peer_id)).and_then(|g| g.check_peer()) {
        counter!(m::LINK_REFUSALS_TOTAL, "reason" => "unauthorized").increment(1);
        close_conn(&conn, ErrorCode::UNAUTHORIZED, &reason.to_string());
        return Err(LinkError::Unauthorized(reason.to_string()));
    }
    let handshake = async {
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| LinkError::Lost(e.to_string()))?;
        let hello = Frame::PeerHello(PeerHello {
            version: LINK_PROTOCOL_VERSION,
            node_id: ctx.cfg.node_id.clone(),
        });
        send.write_all(&encode(&hello, ctx))
            .await
            .map_err(|e| LinkError::Lost(e.to_string()))?;
        let mut reader = Reader::new(recv, ctx.cfg.limits).read_chunk(LINK_READ_CHUNK);
        let answer = read_first(&mut reader).await?;
        Ok::<_, LinkError>((send, reader, answer))
    };
    let (send, reader, answer) = match tokio::time::timeout(deadline, handshake).await {
        Err(_) => {
            close_conn(&conn, ErrorCode::PROTOCOL, "peer hello timeout");
            return Err(LinkError::Timeout);
        }
        Ok(r) => r?,
    };
    match answer {
        Frame::PeerAccept(a) if a.node_id == spec.node_id => {}
        Frame::PeerAccept(a) => {
            close_conn(&conn, ErrorCode::PROTOCOL, "unexpected node id");
            return Err(LinkError::NodeIdMismatch {
                expected: spec.node_id.clone(),
                got: a.node_id,
            });
        }
        Frame::Reject(r) if r.code == ErrorCode::LINK_EXISTS => return Err(LinkError::Duplicate),
        Frame::Reject(r) => {
            return Err(LinkError::Refused {
                code: r.code.as_str(),
                reason: r.reason,
            });
        }
        other => {
            close_conn(&conn, ErrorCode::PROTOCOL, "expected peer accept");
            return Err(LinkError::Protocol(format!(
                "expected peer_accept, got {}",
                other.kind().as_str()
            )));
        }
    }
    let (mut ctl_send, ctl_recv) = conn
        .open_bi()
        .await
        .map_err(|e| LinkError::Lost(e.to_string()))?;
    // A stream exists for the peer only once something is sent on it.
    ctl_send
        .write_all(&encode(&Frame::Ping(Ping { nonce: 0 }), ctx))
        .await
        .map_err(|e| LinkError::Lost(e.to_string()))?;
    *shared.remote_addr.write() = conn.remote_address();
    Ok(Streams {
        conn,
        peer_spiffe: Some(peer_id.to_string()),
        dialler: ctx.cfg.node_id.clone(),
        send,
        reader,
        ctl_send,
        ctl_recv,
    })
}

/// The acceptor side of the link handshake (the hello was read and
/// authorized by `conn::accept`).
pub(crate) async fn accept_session(
    ctx: &Arc<NodeCtx>,
    shared: &Arc<LinkShared>,
    a: Accepted,
) -> Result<(), LinkError> {
    let Accepted {
        conn,
        mut send,
        reader,
        node_id,
        spiffe_id,
    } = a;
    *shared.peer_spiffe_id.write() = Some(spiffe_id.to_string());
    let (session, rx, ctl_rx) = match start_session(ctx, shared, &conn, &node_id, &node_id).await {
        Ok(s) => s,
        Err(e) => {
            counter!(m::LINK_REFUSALS_TOTAL, "reason" => "duplicate").increment(1);
            let reject = Frame::Reject(Reject {
                code: ErrorCode::LINK_EXISTS,
                reason: e.to_string(),
            });
            let _ = send.write_all(&encode(&reject, ctx)).await;
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
            close_conn(&conn, ErrorCode::LINK_EXISTS, &e.to_string());
            return Err(e);
        }
    };
    let accept = Frame::PeerAccept(PeerAccept {
        node_id: ctx.cfg.node_id.clone(),
    });
    let opened = async {
        send.write_all(&encode(&accept, ctx))
            .await
            .map_err(|e| LinkError::Lost(e.to_string()))?;
        conn.accept_bi()
            .await
            .map_err(|e| LinkError::Lost(e.to_string()))
    };
    let (ctl_send, ctl_recv) = match tokio::time::timeout(ctx.cfg.handshake_timeout, opened).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            end_session(ctx, shared, &e.to_string());
            return Err(e);
        }
        Err(_) => {
            end_session(ctx, shared, "control stream not opened in time");
            return Err(LinkError::Timeout);
        }
    };
    let st = Streams {
        peer_spiffe: Some(spiffe_id.to_string()),
        dialler: node_id,
        conn,
        send,
        reader,
        ctl_send,
        ctl_recv,
    };
    serve(ctx, shared, session, rx, ctl_rx, st).await
}

/// An incoming connection whose first frame was a `PeerHello` from an
/// identity the policy lets peer.
pub(crate) struct Accepted {
    pub conn: quinn::Connection,
    pub send: SendStream,
    pub reader: Reader,
    pub node_id: String,
    pub spiffe_id: slim_auth::SpiffeId,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_a_resolve_error_not_a_connect_error() {
        // `.invalid` never resolves (RFC 2606).
        let e = resolve("no-such-host.invalid:4500", Duration::from_secs(10))
            .await
            .unwrap_err();
        assert_eq!(e.label(), "resolve");
        let text = e.to_string();
        assert!(
            text.starts_with("cannot resolve no-such-host.invalid:4500: "),
            "{text}"
        );
        let c = LinkError::Connect {
            addr: "127.0.0.1:9".into(),
            reason: "timed out".into(),
        };
        assert_eq!(c.label(), "connect");
        assert_eq!(c.to_string(), "cannot connect to 127.0.0.1:9: timed out");
    }

    #[tokio::test]
    async fn localhost_resolves_to_every_address_it_has() {
        let addrs = resolve("localhost:4500", Duration::from_secs(10))
            .await
            .unwrap();
        assert!(
            addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 4500),
            "{addrs:?}"
        );
        // An IP is its own (only) address.
        let one = resolve("192.0.2.7:1", Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(one, vec![SocketAddr::from(([192, 0, 2, 7], 1))]);
    }
}
