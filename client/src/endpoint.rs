//! The SDK's QUIC endpoint: one UDP socket, no server side, and the
//! connection settings for either kind of path to the node.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::crypto::rustls::QuicClientConfig;
use slim_framed::datagrams::Path;

use crate::config::{ClientConfig, Credentials};
use crate::error::ClientError;

/// A client-only endpoint (it has no server configuration, so it never
/// accepts a connection) and its connection settings for either kind of
/// path: datagrams to a node on this host start large
/// ([`slim_framed::datagrams::Path`]).
pub(crate) struct Endpoint {
    pub(crate) quic: quinn::Endpoint,
    network: quinn::ClientConfig,
    loopback: quinn::ClientConfig,
}

impl Endpoint {
    pub(crate) fn connect(
        &self,
        node: SocketAddr,
        server_name: &str,
    ) -> Result<quinn::Connecting, quinn::ConnectError> {
        let settings = match Path::to(node.ip()) {
            Path::Loopback => &self.loopback,
            Path::Network => &self.network,
        };
        self.quic.connect_with(settings.clone(), node, server_name)
    }
}

/// Opens the client's endpoint. quinn's drivers for it run in `host`
/// (`crate::host`).
pub(crate) fn endpoint(
    cfg: &ClientConfig,
    host: &crate::host::Host,
) -> Result<Endpoint, ClientError> {
    let bind: SocketAddr = if cfg.node.is_ipv6() {
        "[::]:0".parse().expect("static")
    } else {
        "0.0.0.0:0".parse().expect("static")
    };
    let socket_err = |e: std::io::Error| ClientError::Connect {
        addr: cfg.node,
        reason: format!("cannot open UDP socket: {e}"),
    };
    // Bigger kernel buffers than the default absorb bursts of deliveries; the
    // kernel silently caps them at net.core.rmem_max, which is fine here.
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(bind),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .map_err(socket_err)?;
    let _ = sock.set_recv_buffer_size(4 << 20);
    let _ = sock.set_send_buffer_size(4 << 20);
    sock.bind(&bind.into()).map_err(socket_err)?;
    sock.set_nonblocking(true).map_err(socket_err)?;
    // What the node may send us.
    let mut ep_cfg = quinn::EndpointConfig::default();
    slim_framed::datagrams::accept_up_to(&mut ep_cfg, cfg.max_udp_payload);
    let quic =
        quinn::Endpoint::new(ep_cfg, None, sock.into(), host.runtime()).map_err(socket_err)?;
    let alpn: &[&[u8]] = &[slim_auth::ALPN_SLIM];
    let server = cfg.server.clone();
    let tls = match &cfg.credentials {
        Credentials::Svid(i) => slim_auth::client_config(i, alpn, server),
        Credentials::Source(s) => slim_auth::tls::client_config_from_source(s, alpn, server),
        Credentials::Jwt { source, .. } => {
            slim_auth::tls::client_config_server_auth_only(source.shared_bundles(), alpn, server)
        }
        Credentials::SharedSecret { bundles, .. } => {
            slim_auth::tls::client_config_server_auth_only(
                Arc::new(std::sync::RwLock::new(bundles.clone())),
                alpn,
                server,
            )
        }
    }
    .map_err(|e| ClientError::Tls(e.to_string()))?;
    let tls =
        QuicClientConfig::try_from(Arc::new(tls)).map_err(|e| ClientError::Tls(e.to_string()))?;
    let tls = quinn::ClientConfig::new(Arc::new(tls));
    let settings = |path| {
        let mut t = quinn::TransportConfig::default();
        t.keep_alive_interval(Some(cfg.keep_alive))
            .max_concurrent_uni_streams(0u32.into())
            .stream_receive_window(cfg.stream_window.into())
            .receive_window((cfg.stream_window.saturating_mul(2)).into())
            .send_window(8 << 20);
        // Larger datagrams where the path carries them (loopback, jumbo
        // frames), and GSO only where quinn's batches fit one UDP datagram.
        slim_framed::datagrams::configure(&mut t, cfg.max_udp_payload, path);
        if let Ok(idle) = quinn::IdleTimeout::try_from(cfg.idle_timeout) {
            t.max_idle_timeout(Some(idle));
        }
        let mut c = tls.clone();
        c.transport_config(Arc::new(t));
        c
    };
    Ok(Endpoint {
        network: settings(Path::Network),
        loopback: settings(Path::Loopback),
        quic,
    })
}
