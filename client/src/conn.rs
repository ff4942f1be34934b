//! The connection driver: dial, hello, and the read/write loops of one live
//! connection; reconnection with backoff when it drops.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::{RecvStream, SendStream};
use slim_framed::queue::Queue;
use slim_framed::{FrameReader, FrameWriter};
use slim_wire::{ErrorCode, Frame, Hello, MIN_PROTOCOL_VERSION, Name, Subscribe, codec};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::addr::resolve;
use crate::config::Credentials;
use crate::confirm::{self, DisconnectPolicy, OutboundBytes, ReadReport, Unconfirmed};
use crate::endpoint::Endpoint;
use crate::error::ClientError;
use crate::event::{ConnState, Event};
use crate::shared::{RECENT_ERRORS, Shared, encode_frame};

mod read;
use read::{read_err, read_loop};

pub(crate) struct Live {
    conn: quinn::Connection,
    send: SendStream,
    /// Holds whatever arrived after the accept.
    reader: FrameReader<RecvStream>,
}

/// The receive buffer grows by this much when it runs low.
const READ_CHUNK: usize = 64 * 1024;

fn close_reason(conn: &quinn::Connection) -> Option<ClientError> {
    match conn.close_reason()? {
        quinn::ConnectionError::ApplicationClosed(c) => Some(ClientError::Rejected {
            code: slim_wire::ErrorCode(c.error_code.into_inner().min(u16::MAX as u64) as u16),
            reason: String::from_utf8_lossy(&c.reason).into_owned(),
        }),
        e @ (quinn::ConnectionError::TransportError(_)
        | quinn::ConnectionError::ConnectionClosed(_)) => Some(tls_err(&e)),
        other => Some(ClientError::Protocol(other.to_string())),
    }
}

/// A failed handshake in words: who refused, why, and what to check (see
/// `slim_auth::explain`), instead of rustls's debug form.
fn tls_err(e: &quinn::ConnectionError) -> ClientError {
    use slim_auth::explain::{HandshakeFailure, Refuser};
    // QUIC carries a TLS alert as a crypto error code: 0x100 + the alert.
    let alert = |code: quinn::TransportErrorCode| {
        u64::from(code)
            .checked_sub(0x100)
            .and_then(|a| u8::try_from(a).ok())
    };
    let failure = match e {
        quinn::ConnectionError::TransportError(t) if alert(t.code).is_some() => {
            HandshakeFailure::from_reason(Refuser::Us, &t.reason, alert(t.code))
        }
        quinn::ConnectionError::ConnectionClosed(c) if alert(c.error_code).is_some() => {
            HandshakeFailure::from_reason(
                Refuser::Peer,
                &String::from_utf8_lossy(&c.reason),
                alert(c.error_code),
            )
        }
        // Not a TLS refusal (e.g. a protocol close): say it as QUIC did.
        other => return ClientError::Protocol(other.to_string()),
    };
    ClientError::Tls(failure.to_string())
}

/// The node's SPIFFE ID and expiry from its (already verified) certificate.
fn node_identity(conn: &quinn::Connection) -> Option<crate::NodeIdentity> {
    let chain = conn
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    Some(crate::NodeIdentity {
        spiffe_id: slim_auth::tls::peer_spiffe_id(&chain).ok()?.to_string(),
        not_after: slim_auth::tls::peer_not_after(&chain),
    })
}

/// One attempt: QUIC+TLS handshake, hello, accept. A node older than this
/// SDK refuses its protocol version; the attempt is then made again in
/// version 1 (no read-progress reports), and the client keeps to it.
async fn connect_to(
    shared: &Arc<Shared>,
    ep: &Endpoint,
    node: SocketAddr,
) -> Result<Live, ClientError> {
    let version = shared.proto.load(Ordering::Relaxed);
    match hello_at(shared, ep, node, version).await {
        Err(ClientError::Rejected { code, reason })
            if code == ErrorCode::VERSION && version > MIN_PROTOCOL_VERSION =>
        {
            info!(
                node = %node,
                refused = %reason,
                "the node speaks an older protocol: saying hello in version {MIN_PROTOCOL_VERSION} from now on (the node cannot be told of slow, steady reading, so a slow reader is cut sooner)"
            );
            shared.proto.store(MIN_PROTOCOL_VERSION, Ordering::Relaxed);
            hello_at(shared, ep, node, MIN_PROTOCOL_VERSION).await
        }
        r => r,
    }
}

/// The handshake, hello (in protocol `version`) and accept.
async fn hello_at(
    shared: &Arc<Shared>,
    ep: &Endpoint,
    node: SocketAddr,
    version: u16,
) -> Result<Live, ClientError> {
    let cfg = &shared.cfg;
    let attempt = async {
        let connecting = ep
            .connect(node, &cfg.server_name)
            .map_err(|e| ClientError::Connect {
                addr: node,
                reason: e.to_string(),
            })?;
        let conn = connecting.await.map_err(|e| match e {
            e @ (quinn::ConnectionError::TransportError(_)
            | quinn::ConnectionError::ConnectionClosed(_)) => tls_err(&e),
            other => ClientError::Connect {
                addr: node,
                reason: other.to_string(),
            },
        })?;
        *shared.node_seen.lock() = node_identity(&conn);
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| close_reason(&conn).unwrap_or(ClientError::Protocol(e.to_string())))?;
        let token = match &cfg.credentials {
            Credentials::Jwt { source, audience } => Some(format!(
                "jwt:{}",
                source
                    .fetch_jwt_svid(audience)
                    .await
                    .map_err(|e| ClientError::Tls(format!("cannot fetch a JWT-SVID: {e}")))?
            )),
            Credentials::SharedSecret { secret, .. } => Some(format!("secret:{secret}")),
            _ => None,
        };
        let hello = Frame::Hello(Hello {
            version,
            name: cfg.name.clone(),
            token,
        });
        send.write_all(&encode_frame(&hello, &cfg.limits)?)
            .await
            .map_err(|e| close_reason(&conn).unwrap_or(ClientError::Protocol(e.to_string())))?;
        let mut reader = FrameReader::new(recv, cfg.limits).read_chunk(READ_CHUNK);
        match reader.read_frame().await.map_err(read_err) {
            Ok(Some(Frame::Accept(a))) => {
                *shared.identity_seen.lock() = a.identity.clone();
                // `send_replace`, not `send`: `send` leaves the value alone
                // while nobody holds a receiver, and `Client::state()` hands
                // out receivers later, which then saw a stale state.
                shared.state.send_replace(ConnState::Connected {
                    node_id: a.node_id.clone(),
                });
                info!(node = %a.node_id, name = %cfg.name, "connected");
                Ok(Live { conn, send, reader })
            }
            Ok(Some(Frame::Reject(r))) => Err(ClientError::Rejected {
                code: r.code,
                reason: r.reason,
            }),
            Ok(Some(other)) => Err(ClientError::Protocol(format!(
                "expected accept, got {}",
                other.kind().as_str()
            ))),
            Ok(None) => Err(close_reason(&conn)
                .unwrap_or(ClientError::Protocol("node closed before accepting".into()))),
            Err(e) => Err(close_reason(&conn).unwrap_or(e)),
        }
    };
    match tokio::time::timeout(cfg.connect_timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Connect {
            addr: node,
            reason: format!("no answer within {:?}", cfg.connect_timeout),
        }),
    }
}

/// One attempt: resolve `host` (when set) and try each address in turn,
/// skipping those of the other address family than the endpoint's socket.
pub(crate) async fn connect_once(shared: &Arc<Shared>, ep: &Endpoint) -> Result<Live, ClientError> {
    let cfg = &shared.cfg;
    let Some(host) = &cfg.host else {
        return connect_to(shared, ep, cfg.node).await;
    };
    let v6 = cfg.node.is_ipv6();
    let addrs: Vec<SocketAddr> = resolve(host, cfg.connect_timeout)
        .await?
        .into_iter()
        .filter(|a| a.is_ipv6() == v6)
        .collect();
    let mut last = ClientError::Resolve {
        host: host.clone(),
        reason: format!("no {} address", if v6 { "IPv6" } else { "IPv4" }),
    };
    for a in addrs {
        match connect_to(shared, ep, a).await {
            Ok(l) => return Ok(l),
            // A refusal is the node's answer, not an unreachable address.
            Err(e @ ClientError::Rejected { .. }) => return Err(e),
            Err(ClientError::Connect { reason, .. }) => {
                // Name the host only when it was a name.
                let reason = if host.parse::<SocketAddr>().is_ok() {
                    reason
                } else {
                    format!("{reason} (resolved from {host})")
                };
                last = ClientError::Connect { addr: a, reason };
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Owns the connection for the client's lifetime.
pub(crate) async fn drive(
    shared: Arc<Shared>,
    ep: Endpoint,
    first: Live,
    mut out: mpsc::Receiver<BytesMut>,
    budget: Arc<OutboundBytes>,
    events: Arc<Queue<Event>>,
    mut close: oneshot::Receiver<()>,
) {
    let mut live = Some(first);
    let mut attempt: u32 = 0;
    let mut unconfirmed = Unconfirmed::default();
    // Frames to write first on the next connection (the policy's choice of
    // what was unconfirmed when the last one dropped).
    let mut again: Vec<Bytes> = Vec::new();
    loop {
        if let Some(l) = live.take() {
            attempt = 0;
            let conn = l.conn.clone();
            shared.connected.store(true, Ordering::Release);
            tokio::select! {
                r = run(&shared, l, &mut out, &budget, &events, &mut unconfirmed) => {
                    shared.connected.store(false, Ordering::Release);
                    let reason = r.err().map(|e| e.to_string()).unwrap_or_else(|| "closed".into());
                    again = settle_unconfirmed(&shared, &mut unconfirmed, &events, &reason).await;
                    warn!(name = %shared.cfg.name, reason = %reason, "connection lost; reconnecting");
                    shared.state.send_replace(ConnState::Reconnecting { attempt: 0, last_error: reason });
                }
                _ = &mut close => {
                    conn.close(0u32.into(), b"client closed");
                    break;
                }
            }
        }
        let wait = shared.cfg.backoff.delay(attempt);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut close => break,
        }
        attempt = attempt.saturating_add(1);
        match connect_once(&shared, &ep).await {
            Ok(mut l) => {
                shared.metrics.reconnects.increment(1);
                if let Err(e) = restore(&shared, &mut l, &again).await {
                    warn!(error = %e, "restoring subscriptions and unconfirmed frames failed");
                    continue;
                }
                again.clear();
                live = Some(l);
            }
            Err(e) => {
                debug!(attempt, error = %e, "reconnect failed");
                shared.state.send_replace(ConnState::Reconnecting {
                    attempt,
                    last_error: e.to_string(),
                });
            }
        }
    }
    shared.connected.store(false, Ordering::Release);
    // Publishes the node never confirmed will not be sent now: say so.
    let (ids, _) = unconfirmed.take_failed(&shared.confirm);
    report_lost(&shared, &events, ids, "the client closed").await;
    // Fail outstanding requests rather than let them wait for their timeout.
    shared.pending.lock().clear();
    shared.state.send_replace(ConnState::Closed);
    ep.quic.close(0u32.into(), b"client closed");
    let _ = tokio::time::timeout(Duration::from_secs(1), ep.quic.wait_idle()).await;
}

/// Applies the client's [`DisconnectPolicy`] to what the node had not
/// confirmed when the connection dropped; returns the frames to write first
/// on the next connection.
async fn settle_unconfirmed(
    shared: &Arc<Shared>,
    unconfirmed: &mut Unconfirmed,
    events: &Queue<Event>,
    reason: &str,
) -> Vec<Bytes> {
    match shared.cfg.on_disconnect {
        DisconnectPolicy::Buffer { .. } => {
            let again = unconfirmed.replay(&shared.confirm, &shared.cfg.limits);
            if !again.is_empty() {
                info!(
                    frames = unconfirmed.len(),
                    "unconfirmed frames held for the next connection"
                );
            }
            again
        }
        DisconnectPolicy::Fail => {
            let (ids, others) = unconfirmed.take_failed(&shared.confirm);
            report_lost(shared, events, ids, reason).await;
            others
        }
    }
}

/// Reports each of `ids` as a publish lost with the connection: an
/// [`Event::Error`] (also kept for `take_errors`) and a log line.
async fn report_lost(
    shared: &Arc<Shared>,
    events: &Queue<Event>,
    ids: Vec<(u64, Option<Name>)>,
    reason: &str,
) {
    if ids.is_empty() {
        return;
    }
    warn!(
        publishes = ids.len(),
        reason, "publishes failed: the connection dropped before the node confirmed them"
    );
    shared.metrics.publishes_failed.increment(ids.len() as u64);
    for id in ids {
        let e = crate::confirm::lost(id, reason);
        {
            let mut q = shared.recent_errors.lock();
            if q.len() >= RECENT_ERRORS {
                q.pop_front();
            }
            q.push_back(e.clone());
        }
        // Waits for room: every lost publish is reported, none dropped.
        if events.push_wait(Event::Error(e)).await.is_err() {
            return;
        }
    }
}

/// Re-sends every subscription on a fresh connection, then `again` (what the
/// last one left unconfirmed), before any queued publish.
async fn restore(
    shared: &Arc<Shared>,
    live: &mut Live,
    again: &[Bytes],
) -> Result<(), ClientError> {
    let names: Vec<_> = shared.subs.lock().iter().cloned().collect();
    let mut b = BytesMut::new();
    for name in names {
        let id = shared.next_id();
        codec::encode(
            &Frame::Subscribe(Subscribe { id, name }),
            &shared.cfg.limits,
            &mut b,
        )?;
    }
    for chunk in std::iter::once(&b[..]).chain(again.iter().map(|f| &f[..])) {
        if !chunk.is_empty() {
            live.send
                .write_all(chunk)
                .await
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
        }
    }
    Ok(())
}

async fn run(
    shared: &Arc<Shared>,
    live: Live,
    out: &mut mpsc::Receiver<BytesMut>,
    budget: &OutboundBytes,
    events: &Arc<Queue<Event>>,
    unconfirmed: &mut Unconfirmed,
) -> Result<(), ClientError> {
    let Live { conn, send, reader } = live;
    // The reader's read-progress reports for the writer: this connection's
    // own (a report's count is of this connection's stream, and the node
    // refuses one that does not grow).
    let report = Arc::new(ReadReport::default());
    let mut reader = tokio::spawn(read_loop(
        Arc::clone(shared),
        reader,
        Arc::clone(events),
        Arc::clone(&report),
    ));
    let mut writer = FrameWriter::new(send);
    // The writer loop runs until the client's queue closes (the client is
    // dropped) or the reader ends.
    let res = tokio::select! {
        r = &mut reader => match r {
            Ok(r) => r,
            Err(e) => Err(ClientError::Protocol(format!("reader task failed: {e}"))),
        },
        r = confirm::pump(out, budget, &mut writer, unconfirmed, &shared.confirm, &report, &shared.cfg.limits) => match r {
            Ok(_) => Ok(()),
            // A failed write is reported as itself, not as the connection's
            // close reason.
            Err(e) => {
                reader.abort();
                return Err(ClientError::Protocol(e.to_string()));
            }
        },
    };
    reader.abort();
    if let Some(r) = close_reason(&conn) {
        return Err(r);
    }
    res
}
