//! Harness for cross-crate scenario tests: a throwaway PKI, in-process nodes
//! on loopback, SDK clients, polling helpers instead of sleeps, and a bitset to
//! prove that sequence-numbered messages arrived exactly once.
#![forbid(unsafe_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use slim_actors::{NodeConfig, NodeHandle};
use slim_auth::{DevCa, Identity, SpiffeId};
use slim_client::{Client, ClientConfig, Delivery, Event};
use slim_wire::Name;

pub mod netns;

pub use slim_actors;
pub use slim_auth;
pub use slim_client;
pub use slim_devspire;
pub use slim_wire;

/// Logs to the test's output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_ansi(false)
        .with_test_writer()
        .try_init();
}

/// A log sink for tests that read what the process logged: clone it into
/// `tracing_subscriber::fmt().with_writer(move || sink.clone())`.
#[derive(Clone, Default)]
pub struct CapturedLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLog {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLog {
    /// Installs the process's tracing subscriber at `filter`, writing
    /// uncoloured lines here (once per test binary).
    pub fn install(filter: &str) -> CapturedLog {
        let log = CapturedLog::default();
        let writer = log.clone();
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        log
    }

    /// The lines containing every one of `needles`.
    pub fn lines_with(&self, needles: &[&str]) -> Vec<String> {
        let buf = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        String::from_utf8_lossy(&buf)
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_owned)
            .collect()
    }
}

/// Runs a test body under a hard limit, so that a hang fails the test with
/// its name instead of stalling the suite.
pub async fn deadline<F: std::future::Future>(limit: Duration, test: &str, body: F) -> F::Output {
    match tokio::time::timeout(limit, body).await {
        Ok(v) => v,
        Err(_) => panic!("{test}: not finished within {limit:?} (a hang?)"),
    }
}

/// A development trust domain for one test.
pub struct Pki {
    pub ca: DevCa,
}

impl Pki {
    pub fn new(trust_domain: &str) -> Pki {
        Pki {
            ca: DevCa::generate(trust_domain).expect("generate dev CA"),
        }
    }

    /// An SVID for `spiffe://<td>/<path>`.
    pub fn identity(&self, path: &str) -> Identity {
        let id = SpiffeId::parse(&format!("spiffe://{}/{}", self.ca.trust_domain(), path))
            .expect("valid SPIFFE ID");
        self.ca
            .issue(&id, Duration::from_secs(3600))
            .expect("issue SVID")
    }
}

/// A node on an ephemeral loopback port.
pub async fn start_node(pki: &Pki, tweak: impl FnOnce(&mut NodeConfig)) -> NodeHandle {
    let mut cfg = NodeConfig {
        listen: "127.0.0.1:0".parse().expect("static"),
        ..NodeConfig::default()
    };
    tweak(&mut cfg);
    let identity = pki.identity("node");
    // A just-stopped node on the same port may hold its socket for a moment
    // while its endpoint driver winds down.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match slim_actors::start(cfg.clone(), &identity).await {
            Ok(n) => return n,
            Err(slim_actors::NodeError::Bind { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("start node: {e}"),
        }
    }
}

pub fn name(s: &str) -> Name {
    Name::parse(s).expect("valid name")
}

pub fn client_config(pki: &Pki, node: SocketAddr, n: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new(
        node,
        name(n),
        pki.identity(&format!("agent/{}", n.replace('/', "-"))),
    );
    cfg.backoff.initial = Duration::from_millis(50);
    cfg.backoff.max = Duration::from_millis(500);
    cfg
}

pub async fn client(pki: &Pki, node: SocketAddr, n: &str) -> Client {
    Client::connect(client_config(pki, node, n))
        .await
        .expect("client connects")
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub async fn assert_eventually<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("condition not met within {timeout:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The next delivered message within `timeout`, or a panic saying what was awaited.
pub async fn next_message(c: &Client, timeout: Duration) -> Delivery {
    match tokio::time::timeout(timeout, c.next_message()).await {
        Ok(Some(d)) => d,
        Ok(None) => panic!("{}: client closed while waiting for a message", c.name()),
        Err(_) => panic!("{}: no message within {timeout:?}", c.name()),
    }
}

/// The next event within `timeout`, or `None` if nothing came.
pub async fn next_event(c: &Client, timeout: Duration) -> Option<Event> {
    tokio::time::timeout(timeout, c.recv()).await.ok().flatten()
}

/// Asserts that nothing arrives for `quiet`.
pub async fn assert_no_message(c: &Client, quiet: Duration) {
    if let Ok(Some(d)) = tokio::time::timeout(quiet, c.next_message()).await {
        panic!("{}: unexpected message {:?}", c.name(), d);
    }
}

/// Records sequence numbers; reports duplicates as they happen.
#[derive(Debug, Clone)]
pub struct SeqSet {
    bits: Vec<u64>,
    count: u64,
    dups: u64,
}

impl SeqSet {
    pub fn new(n: u64) -> Self {
        SeqSet {
            bits: vec![0; n.div_ceil(64) as usize],
            count: 0,
            dups: 0,
        }
    }

    /// Returns false for a duplicate or out-of-range number.
    pub fn insert(&mut self, seq: u64) -> bool {
        let (w, b) = ((seq / 64) as usize, seq % 64);
        let Some(word) = self.bits.get_mut(w) else {
            self.dups += 1;
            return false;
        };
        if *word & (1 << b) != 0 {
            self.dups += 1;
            return false;
        }
        *word |= 1 << b;
        self.count += 1;
        true
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn duplicates(&self) -> u64 {
        self.dups
    }

    /// The numbers below `n` not seen.
    pub fn missing(&self, n: u64) -> Vec<u64> {
        (0..n)
            .filter(|s| self.bits[(s / 64) as usize] & (1 << (s % 64)) == 0)
            .collect()
    }
}

/// Payload carrying a sequence number (and optional padding).
pub fn seq_payload(seq: u64, size: usize) -> Vec<u8> {
    let mut v = seq.to_be_bytes().to_vec();
    v.resize(size.max(8), 0xab);
    v
}

pub fn payload_seq(p: &[u8]) -> u64 {
    u64::from_be_bytes(p[..8].try_into().expect("8-byte sequence prefix"))
}

/// A loopback UDP port that was free a moment ago.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral UDP port")
}

/// Resident set size of this process in KiB.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A bare quinn client endpoint on 127.0.0.1 with `tls` as its default.
pub fn quic_endpoint(tls: rustls::ClientConfig) -> quinn::Endpoint {
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(std::sync::Arc::new(tls))
        .expect("QUIC client config");
    let mut ep =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("static")).expect("client endpoint");
    ep.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(quic)));
    ep
}

/// The rustls client config of an SVID (accepting any node identity).
pub fn client_tls(identity: &Identity) -> rustls::ClientConfig {
    slim_auth::client_config(
        identity,
        &[slim_auth::ALPN_SLIM],
        slim_auth::ServerMatch::Any,
    )
    .expect("client TLS config")
}

/// A hand-driven QUIC connection to a node, for feeding it raw bytes.
pub struct RawConn {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
}

impl RawConn {
    /// Handshake with `identity` and open the frame stream; sends nothing.
    pub async fn connect(node: SocketAddr, identity: &Identity) -> RawConn {
        Self::connect_tls(node, client_tls(identity)).await
    }

    /// Handshake with a given rustls config (e.g. server-auth only).
    pub async fn connect_tls(node: SocketAddr, tls: rustls::ClientConfig) -> RawConn {
        let ep = quic_endpoint(tls);
        let conn = ep
            .connect(node, "slim-node")
            .expect("connect")
            .await
            .expect("handshake");
        let (send, recv) = conn.open_bi().await.expect("open stream");
        RawConn {
            endpoint: ep,
            conn,
            send,
            recv,
        }
    }

    /// Sends a valid hello and waits for the node's accept.
    pub async fn hello(&mut self, name: &str) {
        let answer = self.hello_with_token(name, None).await;
        assert!(
            matches!(answer, slim_wire::Frame::Accept(_)),
            "expected accept, got {answer:?}"
        );
    }

    /// Sends a hello (optionally with a token) and returns the node's answer.
    pub async fn hello_with_token(
        &mut self,
        name: &str,
        token: Option<String>,
    ) -> slim_wire::Frame {
        self.hello_in(slim_wire::PROTOCOL_VERSION, name, token)
            .await
    }

    /// Sends a hello in protocol `version` and returns the node's answer.
    pub async fn hello_in(
        &mut self,
        version: u16,
        name: &str,
        token: Option<String>,
    ) -> slim_wire::Frame {
        use slim_wire::{Frame, Hello};
        let f = Frame::Hello(Hello {
            version,
            name: Name::parse(name).expect("valid name"),
            token,
        });
        let bytes = slim_wire::codec::encode_to_vec(&f, &slim_wire::Limits::default())
            .expect("encode hello");
        self.send.write_all(&bytes).await.expect("send hello");
        let mut buf = bytes::BytesMut::new();
        loop {
            if let Some(f) = slim_wire::decode(&mut buf, &slim_wire::Limits::default())
                .expect("node sends valid frames")
            {
                return f;
            }
            let chunk = self
                .recv
                .read_chunk(65536, true)
                .await
                .expect("read")
                .expect("stream open");
            buf.extend_from_slice(&chunk.bytes);
        }
    }

    /// Sends `frame`.
    pub async fn send_frame(&mut self, frame: &slim_wire::Frame) {
        let bytes = slim_wire::codec::encode_to_vec(frame, &slim_wire::Limits::default())
            .expect("encode frame");
        self.send.write_all(&bytes).await.expect("send frame");
    }

    /// The serial number of the certificate the node presented.
    pub fn node_cert_serial(&self) -> Vec<u8> {
        let certs = self
            .conn
            .peer_identity()
            .expect("peer identity")
            .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
            .expect("certificate chain");
        let (_, cert) = x509_parser::parse_x509_certificate(&certs[0]).expect("parse leaf");
        cert.raw_serial().to_vec()
    }

    /// Waits for the node to close the connection; returns its application
    /// error code and reason.
    pub async fn closed_by_node(&self, timeout: Duration) -> (u64, String) {
        match tokio::time::timeout(timeout, self.conn.closed()).await {
            Ok(quinn::ConnectionError::ApplicationClosed(c)) => (
                c.error_code.into_inner(),
                String::from_utf8_lossy(&c.reason).into_owned(),
            ),
            Ok(other) => panic!("connection ended otherwise: {other}"),
            Err(_) => panic!("node did not close the connection within {timeout:?}"),
        }
    }
}

/// How a test node dials `node` (loopback, any SVID of the test PKI).
pub fn peer_spec(node: &NodeHandle) -> slim_actors::PeerSpec {
    slim_actors::PeerSpec {
        node_id: node.node_id().to_owned(),
        addr: node.local_addr().to_string(),
        server_name: "slim-node".into(),
        expect_spiffe_id: None,
    }
}

/// Federation timings for tests: fast pings, a short link timeout and quick
/// redials, so that failures are detected and repaired in well under a second.
pub fn fast_federation(cfg: &mut NodeConfig) {
    let f = &mut cfg.federation;
    f.keep_alive = Duration::from_millis(100);
    f.link_timeout = Duration::from_secs(3);
    f.backoff_initial = Duration::from_millis(20);
    f.backoff_max = Duration::from_millis(300);
}

/// A node with id `id` (fast federation timings) that dials `peers`.
pub async fn start_peer_node(
    pki: &Pki,
    id: &str,
    peers: Vec<slim_actors::PeerSpec>,
    tweak: impl FnOnce(&mut NodeConfig),
) -> NodeHandle {
    start_node(pki, |cfg| {
        cfg.node_id = id.to_owned();
        fast_federation(cfg);
        cfg.federation.peers = peers;
        tweak(cfg);
    })
    .await
}

/// Whether `node` routes `name` to remote node `origin` (its interest arrived).
pub fn routes_to(node: &NodeHandle, name: &str, origin: &str) -> bool {
    node.routes()
        .iter()
        .any(|r| r.name == name && r.remote_peers.iter().any(|p| p == origin))
}

/// Number of links of `node` that are up.
pub fn links_up(node: &NodeHandle) -> usize {
    node.links()
        .iter()
        .filter(|l| l.state == slim_actors::LinkState::Up)
        .count()
}
