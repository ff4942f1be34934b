//! A framed message stream over one QUIC bidirectional stream, and the
//! client side of connecting to the controller (used by nodes, `slimctl`
//! and tests).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::proto::{
    self, ALPN_CONTROLLER, AdminRequest, AdminResponse, Limits, ProtoError, ToCaller, ToController,
};

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The controller's host name did not resolve (distinct from `Connect`).
    #[error("cannot resolve the controller address {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("cannot connect to the controller at {addr}: {message}")]
    Connect { addr: SocketAddr, message: String },
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream read: {0}")]
    Read(#[from] quinn::ReadError),
    #[error(transparent)]
    Proto(#[from] ProtoError),
    #[error("the peer closed the stream")]
    Closed,
    #[error("timed out: {0}")]
    Timeout(&'static str),
    #[error("refused by the controller ({code}): {reason}")]
    Refused { code: &'static str, reason: String },
    #[error("unexpected message: {0}")]
    Unexpected(String),
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// Frames over a QUIC stream pair. `recv` is cancel-safe (bytes read stay
/// in the buffer), so it can sit in a `select!`.
#[derive(Debug)]
pub struct FramedStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    buf: BytesMut,
    out: Vec<u8>,
    limits: Limits,
}

impl FramedStream {
    pub fn new(send: quinn::SendStream, recv: quinn::RecvStream, limits: Limits) -> Self {
        FramedStream {
            send,
            recv,
            buf: BytesMut::with_capacity(4096),
            out: Vec::new(),
            limits,
        }
    }

    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), ConnError> {
        self.out.clear();
        proto::encode(msg, &self.limits, &mut self.out)?;
        self.send.write_all(&self.out).await?;
        // Large admin answers would otherwise keep a big buffer alive.
        if self.out.capacity() > 64 << 10 {
            self.out = Vec::new();
        }
        Ok(())
    }

    /// The next message; `Ok(None)` when the peer finished the stream cleanly.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ConnError> {
        loop {
            if let Some(m) = proto::decode(&mut self.buf, &self.limits)? {
                return Ok(Some(m));
            }
            // Capacity grows by what arrives, bounded by the frame limit
            // already checked in `decode`, never by a declared length.
            let mut chunk = [0u8; 16 << 10];
            match self.recv.read(&mut chunk).await? {
                None => {
                    return if self.buf.is_empty() {
                        Ok(None)
                    } else {
                        Err(ConnError::Closed)
                    };
                }
                Some(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Writes bytes as they are (fault injection in tests).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        self.send.write_all(bytes).await?;
        Ok(())
    }

    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }

    /// Finishes the stream and waits (bounded) until the peer acknowledged
    /// all of it, so a connection close right after does not discard it.
    pub async fn finish_and_flush(&mut self, timeout: Duration) {
        let _ = self.send.finish();
        let _ = tokio::time::timeout(timeout, self.send.stopped()).await;
    }
}

/// A client connection to the controller.
#[derive(Debug)]
pub struct ControllerConn {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    pub stream: FramedStream,
}

/// QUIC transport for controller connections (both ends). A keep-alive
/// goes out after 500 ms without receiving anything: an idle node link
/// survives any NAT, and a controller restarted on the same port is noticed
/// within about that long, since its new process answers the node's next
/// packet with a stateless reset (see [`endpoint_config`]). Cost: about two
/// small packets per second each way per idle node (2,000/s for a fleet of
/// 1,000). The 5 s idle timeout (ten keep-alives) bounds the detection of a
/// controller or node that is gone for good (no close ever arrives).
pub fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(1u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .keep_alive_interval(Some(Duration::from_millis(500)))
        .datagram_receive_buffer_size(None);
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(5)) {
        t.max_idle_timeout(Some(idle));
    }
    t
}

/// Stateless resets at most this often (quinn's default, one per 20 ms,
/// would take 20 s to reset a fleet of 1,000 nodes after a restart). A
/// reset is always smaller than the packet that caused it (no
/// amplification), and packets whose connection ID we did not issue get
/// none.
const MIN_RESET_INTERVAL: Duration = Duration::from_micros(100);

/// The controller endpoint's global QUIC settings: stateless resets keyed by
/// `secret` and connection IDs signed with a key derived from it, both the
/// same in the process that restarts on this port, so that it resets the
/// old process's connections (quinn's defaults pick both keys at random per
/// process: the new process would drop the old connections' packets, and
/// nodes would wait for their idle timeout). The node's endpoint does the
/// same (`slim_actors`, `ctx::endpoint_config`).
pub fn endpoint_config(secret: &slim_auth::ResetSecret) -> quinn::EndpointConfig {
    let mut c = quinn::EndpointConfig::new(Arc::new(secret.hmac_key()));
    let cid_key = secret.cid_key();
    c.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)))
        .min_reset_interval(MIN_RESET_INTERVAL);
    c
}

/// Resolves `host:port` with the system resolver ([`slim_auth::resolve`]).
pub async fn resolve(host: &str, timeout: Duration) -> Result<Vec<SocketAddr>, ConnError> {
    slim_auth::resolve::resolve(host, timeout)
        .await
        .map_err(|e| ConnError::Resolve {
            host: e.host,
            reason: e.reason,
        })
}

impl ControllerConn {
    /// Resolves `host` (`host:port`, a name or an IP) now and connects to
    /// the first of its addresses that answers, trying each in turn; the
    /// error is the last one's. An answer from the controller (a refusal)
    /// ends the attempt at once.
    pub async fn connect_host(
        host: &str,
        server_name: &str,
        tls: rustls::ClientConfig,
        limits: Limits,
        timeout: Duration,
    ) -> Result<ControllerConn, ConnError> {
        let addrs = resolve(host, timeout).await?;
        let mut last = None;
        for addr in addrs {
            match Self::connect(addr, server_name, tls.clone(), limits, timeout).await {
                Ok(c) => return Ok(c),
                Err(e @ (ConnError::Connect { .. } | ConnError::Timeout(_))) => {
                    tracing::debug!(controller = %host, %addr, error = %e, "controller address failed; trying the next");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ConnError::Resolve {
            host: host.to_owned(),
            reason: "no address".into(),
        }))
    }

    /// Connects with `tls` (a client config presenting this caller's SVID;
    /// its ALPN is set here) and opens the stream.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        mut tls: rustls::ClientConfig,
        limits: Limits,
        timeout: Duration,
    ) -> Result<ControllerConn, ConnError> {
        tls.alpn_protocols = vec![ALPN_CONTROLLER.to_vec()];
        let err = |m: String| ConnError::Connect { addr, message: m };
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))
            .map_err(|e| ConnError::Tls(e.to_string()))?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
        cfg.transport_config(Arc::new(transport()));
        let bind: SocketAddr = if addr.is_ipv6() {
            "[::]:0".parse().expect("static")
        } else {
            "0.0.0.0:0".parse().expect("static")
        };
        let endpoint = quinn::Endpoint::client(bind).map_err(|e| err(e.to_string()))?;
        let connecting = endpoint
            .connect_with(cfg, addr, server_name)
            .map_err(|e| err(e.to_string()))?;
        let fut = async {
            let conn = connecting.await?;
            let (send, recv) = conn.open_bi().await?;
            Ok::<_, quinn::ConnectionError>((conn, send, recv))
        };
        let (conn, send, recv) = match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                endpoint.close(0u32.into(), b"");
                // Refused right after the handshake: say why, not just "closed".
                return Err(match e {
                    quinn::ConnectionError::ApplicationClosed(c) => app_closed(&c),
                    e => err(e.to_string()),
                });
            }
            Err(_) => {
                endpoint.close(0u32.into(), b"");
                return Err(ConnError::Timeout("handshake"));
            }
        };
        Ok(ControllerConn {
            endpoint,
            conn,
            stream: FramedStream::new(send, recv, limits),
        })
    }

    /// One admin request and its answer, its pages put back together.
    /// `timeout` bounds the wait for each page, so a large answer that keeps
    /// arriving is not cut short.
    pub async fn admin(
        &mut self,
        req: AdminRequest,
        timeout: Duration,
    ) -> Result<AdminResponse, ConnError> {
        // The controller may refuse us right after the handshake, while the
        // request is being written: report why, not the broken write.
        if let Err(e) = self.stream.send(&ToController::Admin(req)).await {
            return Err(match self.conn.close_reason() {
                Some(_) => self.closed_reason(),
                None => e,
            });
        }
        let mut got: Option<AdminResponse> = None;
        loop {
            let answer = tokio::time::timeout(timeout, self.stream.recv::<ToCaller>())
                .await
                .map_err(|_| ConnError::Timeout("admin answer"))?;
            let (page, last) = match answer {
                Ok(Some(ToCaller::Admin(r))) => (r, true),
                Ok(Some(ToCaller::AdminPart(r))) => (r, false),
                Ok(Some(ToCaller::Error { code, reason })) => {
                    return Err(ConnError::Refused {
                        code: code.as_str(),
                        reason,
                    });
                }
                Ok(Some(other)) => return Err(ConnError::Unexpected(format!("{other:?}"))),
                Ok(None) => return Err(self.closed_reason()),
                Err(e) => {
                    return Err(match self.conn.close_reason() {
                        Some(_) => self.closed_reason(),
                        None => e,
                    });
                }
            };
            match &mut got {
                Some(g) => g.merge(page)?,
                None => got = Some(page),
            }
            if last {
                return got.ok_or(ConnError::Closed);
            }
        }
    }

    /// Why the controller closed the connection, as an error.
    pub fn closed_reason(&self) -> ConnError {
        match self.conn.close_reason() {
            Some(quinn::ConnectionError::ApplicationClosed(c)) => app_closed(&c),
            Some(e) => ConnError::Connection(e),
            None => ConnError::Closed,
        }
    }

    pub async fn close(self) {
        self.conn.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

fn app_closed(c: &quinn::ApplicationClose) -> ConnError {
    ConnError::Refused {
        code: proto::ErrorCode(u16::try_from(c.error_code.into_inner()).unwrap_or(0)).as_str(),
        reason: String::from_utf8_lossy(&c.reason).into_owned(),
    }
}
