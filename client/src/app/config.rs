//! How the front door connects ([`AppConfig`], [`IdentityConfig`]), the
//! options of its sessions, and the parsing of names and node URLs.

use std::path::PathBuf;
use std::time::Duration;

use slim_auth::IdentitySource;
use slim_wire::Name;

use super::error::SlimError;

pub(super) fn parse_name(s: &str) -> Result<Name, SlimError> {
    Name::parse(s).map_err(|e| SlimError::InvalidName(format!("{s:?}: {e}")))
}

/// Where the agent's identity comes from.
#[derive(Clone)]
pub enum IdentityConfig {
    /// The SPIFFE Workload API (a SPIRE agent): `socket` or
    /// `$SPIFFE_ENDPOINT_SOCKET`. The default.
    WorkloadApi { socket: Option<String> },
    /// spiffe-helper files in `dir` (`tls.crt`, `tls.key`, `svid_bundle.pem`),
    /// watched for rotation.
    Files { dir: PathBuf },
    /// A JWT-SVID for `audience` from the Workload API instead of a client
    /// certificate (the node is still authenticated by its SVID).
    Jwt {
        audience: String,
        socket: Option<String>,
    },
    /// INSECURE, development only: a shared secret instead of an identity.
    /// `bundle` is the node's trust bundle (PEM) and `trust_domain` the
    /// trust domain its CA belongs to. No MLS (there is no SVID to bind).
    SharedSecret {
        secret: String,
        bundle: PathBuf,
        trust_domain: String,
    },
    /// A source the caller already started (tests, embedding).
    Source(IdentitySource),
}

impl std::fmt::Debug for IdentityConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdentityConfig::WorkloadApi { socket } => write!(f, "WorkloadApi({socket:?})"),
            IdentityConfig::Files { dir } => write!(f, "Files({})", dir.display()),
            IdentityConfig::Jwt { audience, .. } => write!(f, "Jwt({audience})"),
            IdentityConfig::SharedSecret { .. } => write!(f, "SharedSecret(…)"),
            IdentityConfig::Source(s) => write!(f, "Source({})", s.spiffe_id()),
        }
    }
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig::WorkloadApi { socket: None }
    }
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// `slim://host:port` or `host:port`; host names are resolved at every
    /// (re)connect and every address is tried.
    pub url: String,
    /// `org/namespace/service`; an instance id is appended.
    pub name: String,
    pub identity: IdentityConfig,
    /// Bound on the first connection (resolve, QUIC, TLS, hello).
    pub connect_timeout: Duration,
    /// How long subscribe/unsubscribe/flush wait for the node.
    pub request_timeout: Duration,
    /// Record `slim_client_*` metrics into the process's `metrics` recorder.
    pub metrics: bool,
    /// Raw publishes when the connection drops: held and sent after the
    /// reconnect, or failed (reported by the next `flush`).
    pub on_disconnect: crate::DisconnectPolicy,
    /// The largest UDP payload path-MTU discovery probes for towards a
    /// node over a network ([`crate::ClientConfig::max_udp_payload`]; a
    /// node on this host is reached with 6,550-byte datagrams regardless).
    pub max_udp_payload: u16,
}

impl AppConfig {
    pub fn new(url: impl Into<String>, name: impl Into<String>) -> AppConfig {
        AppConfig {
            url: url.into(),
            name: name.into(),
            identity: IdentityConfig::default(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            metrics: false,
            on_disconnect: crate::DisconnectPolicy::default(),
            max_udp_payload: crate::config::DEFAULT_MAX_UDP_PAYLOAD,
        }
    }

    pub fn identity(mut self, identity: IdentityConfig) -> AppConfig {
        self.identity = identity;
        self
    }
}

/// Splits `slim://host:port` or `host:port` into `host:port`.
pub fn parse_url(url: &str) -> Result<String, SlimError> {
    crate::addr::split_url(url).map_err(SlimError::Invalid)
}

/// Options of [`App::open_session`](super::App::open_session).
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Acks, retransmission, in-order exactly-once delivery.
    pub reliable: bool,
    /// End-to-end MLS (needs an X.509-SVID identity).
    pub mls: bool,
    /// Bound on opening (the peer answering).
    pub timeout: Option<Duration>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            reliable: true,
            mls: false,
            timeout: None,
        }
    }
}

/// Options of [`App::create_channel`](super::App::create_channel).
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub mls: bool,
    /// SPIFFE-ID patterns (`*` one segment, trailing `**` the rest) whose
    /// holders may join by request; empty: invitation only.
    pub admission: Vec<String>,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            mls: true,
            admission: Vec::new(),
        }
    }
}

/// Options of [`App::join_channel`](super::App::join_channel).
#[derive(Debug, Clone)]
pub struct JoinOptions {
    pub mls: bool,
    /// How long to keep asking (the moderator may not be up yet).
    pub timeout: Duration,
}

impl Default for JoinOptions {
    fn default() -> Self {
        JoinOptions {
            mls: true,
            timeout: Duration::from_secs(60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("slim://127.0.0.1:4500").unwrap(),
            "127.0.0.1:4500"
        );
        assert_eq!(parse_url("node.svc:4500").unwrap(), "node.svc:4500");
        assert_eq!(parse_url("slim://[::1]:4500/").unwrap(), "[::1]:4500");
        for bad in [
            "http://x:1",
            "slim://x",
            "x:0",
            "x:99999",
            ":4500",
            "slim://a:1/b",
        ] {
            assert!(
                matches!(parse_url(bad), Err(SlimError::Invalid(_))),
                "{bad}"
            );
        }
    }
}
