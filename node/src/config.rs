//! The node's configuration file (TOML) and its environment overrides.
//! `deploy/config/node.toml` is the commented reference.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use slim_actors::admission::{AdmissionConfig, RetryMode};
use slim_actors::{NodeConfig, QueueConfig, ResetKey, SlowAction, SlowConsumerPolicy, TokenAuth};
use slim_auth::policy::Policy;
use slim_wire::Limits;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub node: NodeSection,
    pub identity: IdentitySection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub queue: QueueSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub log: LogSection,
    pub authz: AuthzSection,
    #[serde(default)]
    pub authn: AuthnSection,
    /// Peer links to other nodes (static peers).
    #[serde(default)]
    pub federation: FederationSection,
    /// Optional: register with a controller (link planning, fleet view, audit).
    pub controller: Option<ControllerSection>,
}

/// `[controller]`: the node dials the controller (outbound only).
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ControllerSection {
    /// `host:port` of the controller's QUIC listener (an IP or a DNS name,
    /// resolved at every (re)connect; every address is tried).
    pub address: String,
    /// TLS server name (SNI) for the controller.
    #[serde(default = "default_controller_name")]
    pub server_name: String,
    /// Pin the controller's SPIFFE ID (default: any SVID of our trust domain).
    pub expect_spiffe_id: Option<String>,
    /// Cluster / group name shown in the fleet view.
    #[serde(default)]
    pub cluster: String,
    /// Where other nodes can dial this node's listener, `host:port`: an IP,
    /// or a DNS name that the controller hands to dialers as the name (each
    /// resolves it at every dial). Absent: this node is behind NAT and only
    /// dials out.
    pub external_endpoint: Option<String>,
    /// TLS server name other nodes use when dialling this node.
    #[serde(default = "default_advertise_name")]
    pub advertise_server_name: String,
    /// Link and route changes reach the controller within about this long
    /// (they are looked for this often, and sent together).
    #[serde(default = "default_delta_ms")]
    pub delta_interval_ms: u64,
    /// Link traffic counters are brought up to date in the controller's
    /// view this often; also the sign of life when nothing changed.
    #[serde(default = "default_report_ms")]
    pub report_interval_ms: u64,
}

fn default_controller_name() -> String {
    "slim-controller".into()
}

fn default_advertise_name() -> String {
    "slim-node".into()
}

fn default_report_ms() -> u64 {
    10_000
}

fn default_delta_ms() -> u64 {
    200
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthzMode {
    /// Rules from `policy_file`; anything not granted is denied.
    Policy,
    /// Every authenticated identity may do everything. Development only.
    AllowAll,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzSection {
    pub mode: AuthzMode,
    /// TOML file of `[[rule]]` tables; reloaded on change and on SIGHUP.
    pub policy_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSection {
    pub id: String,
    pub listen: SocketAddr,
    pub handshake_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub keep_alive_ms: u64,
    pub max_connections: usize,
    pub shutdown_drain_ms: u64,
    pub udp_buffer_bytes: usize,
    /// Ceiling of QUIC's path-MTU discovery on client connections over a
    /// network (UDP payload bytes, 1200–65527). Above the default it slows
    /// connection setup: every new connection probes its way up with
    /// datagrams of padding that quinn decodes byte by byte (8,952 halved
    /// the connect rate or worse; BENCHMARKS.md). Clients on this host start
    /// at 65,000 or this, whichever is larger, and probe nothing.
    pub max_udp_payload: u16,
    /// File of the secret behind the node's QUIC stateless resets (32
    /// random bytes; created, mode 0600, when missing). Absent: derived from
    /// the node's TLS private key, which survives a restart only as long as
    /// that key does.
    pub reset_key_file: Option<PathBuf>,
}

impl Default for NodeSection {
    fn default() -> Self {
        let d = NodeConfig::default();
        NodeSection {
            id: d.node_id,
            listen: d.listen,
            handshake_timeout_ms: d.handshake_timeout.as_millis() as u64,
            idle_timeout_ms: d.idle_timeout.as_millis() as u64,
            keep_alive_ms: d.keep_alive.as_millis() as u64,
            max_connections: d.max_connections,
            shutdown_drain_ms: 5_000,
            udp_buffer_bytes: d.udp_buffer_bytes,
            max_udp_payload: d.max_udp_payload,
            reset_key_file: None,
        }
    }
}

pub use slim_auth::{IdentitySection, IdentitySourceKind};

/// In-band client authentication (for clients without certificates) and
/// certificate lifetime handling.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthnSection {
    /// Close a connection this long after its peer's certificate (or its
    /// JWT-SVID) expired.
    pub peer_expiry_grace_ms: u64,
    /// Accept JWT-SVIDs with this audience in the hello (over
    /// server-authenticated TLS). Usually the node's SPIFFE ID.
    pub jwt_audience: Option<String>,
    /// JWKS file with the JWT bundle, reloaded when it changes; without it,
    /// the Workload API's JWT bundles are used (identity.source = "spire" only).
    pub jwt_bundle_file: Option<PathBuf>,
    /// INSECURE, development only: accept this shared secret instead of a
    /// workload identity. Clients so authenticated are
    /// spiffe://insecure-shared-secret/client.
    pub shared_secret: Option<String>,
}

/// `[federation]`: peer links this node dials, and link tuning.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationSection {
    /// Ping interval on each link (QUIC keep-alives on dialled links too);
    /// keep it well under NAT UDP timeouts.
    pub keep_alive_ms: u64,
    /// A link without a pong for this long is closed (and redialled).
    pub link_timeout_ms: u64,
    /// A link's outbound queue, in frames and bytes. A full link makes the
    /// publishers feeding it wait for up to `link_write_deadline_ms`; past
    /// that, forwarded messages are dropped and counted
    /// (`slim_link_drops_total`) until the link drains. 0 = never wait.
    pub link_queue_frames: usize,
    pub link_queue_bytes: usize,
    pub link_write_deadline_ms: u64,
    /// Reconnect backoff of dialled links (doubling, jittered).
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Longest node path a message or an interest announcement may take.
    pub max_hops: usize,
    /// How long a withdrawn name's tombstone is kept (interest protocol).
    pub tombstone_ttl_ms: u64,
    /// The largest UDP payload path-MTU discovery probes for on peer links
    /// over a network (default 6,550; `[node] max_udp_payload` is the
    /// clients' ceiling). Links to a node on this host start at 65,000.
    pub max_udp_payload: u16,
    #[serde(rename = "peers")]
    pub peers: Vec<PeerSection>,
}

impl Default for FederationSection {
    fn default() -> Self {
        let d = slim_actors::FederationConfig::default();
        FederationSection {
            keep_alive_ms: d.keep_alive.as_millis() as u64,
            link_timeout_ms: d.link_timeout.as_millis() as u64,
            link_queue_frames: d.link_queue.max_frames,
            link_queue_bytes: d.link_queue.max_bytes,
            link_write_deadline_ms: d.link_queue.policy.write_deadline.as_millis() as u64,
            backoff_initial_ms: d.backoff_initial.as_millis() as u64,
            backoff_max_ms: d.backoff_max.as_millis() as u64,
            max_hops: d.max_hops,
            tombstone_ttl_ms: d.tombstone_ttl.as_millis() as u64,
            max_udp_payload: d.max_udp_payload,
            peers: Vec::new(),
        }
    }
}

/// A datagram ceiling (`key` names it in the error): QUIC needs 1,200 bytes,
/// and UDP carries at most 65,527 (over IPv6).
fn check_udp_payload(key: &str, v: u16) -> Result<(), ConfigError> {
    slim_framed::datagrams::check_ceiling(key, v).map_err(ConfigError::Invalid)
}

/// `[[federation.peers]]`: a node this node dials.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    /// The peer's node id (checked against its answer).
    pub node_id: String,
    /// `ip:port` or `host:port`: a name is kept and resolved at every
    /// (re)dial, and every address it resolves to is tried.
    pub address: String,
    /// TLS server name (SNI); default "slim-node". The peer is authenticated
    /// by SPIFFE ID, not by this name.
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// Require exactly this SPIFFE ID from the peer (recommended).
    pub spiffe_id: Option<String>,
}

fn default_server_name() -> String {
    "slim-node".into()
}

impl FederationSection {
    /// The static peers, checked (names are resolved at each dial, not here).
    pub fn peer_specs(&self) -> Result<Vec<slim_actors::PeerSpec>, ConfigError> {
        let mut out = Vec::with_capacity(self.peers.len());
        for (i, p) in self.peers.iter().enumerate() {
            if !slim_actors::interest::valid_node_id(&p.node_id) {
                return Err(ConfigError::Invalid(format!(
                    "federation.peers[{i}].node_id {:?} is not a valid node id",
                    p.node_id
                )));
            }
            check_host_port(&p.address)
                .map_err(|e| ConfigError::Invalid(format!("federation.peers[{i}].address: {e}")))?;
            let expect_spiffe_id = p
                .spiffe_id
                .as_deref()
                .map(slim_auth::SpiffeId::parse)
                .transpose()
                .map_err(|e| {
                    ConfigError::Invalid(format!("federation.peers[{i}].spiffe_id: {e}"))
                })?;
            out.push(slim_actors::PeerSpec {
                node_id: p.node_id.clone(),
                addr: p.address.clone(),
                server_name: p.server_name.clone(),
                expect_spiffe_id,
            });
        }
        Ok(out)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.keep_alive_ms == 0 || self.link_timeout_ms <= self.keep_alive_ms {
            return Err(ConfigError::Invalid(
                "federation: keep_alive_ms must be > 0 and link_timeout_ms > keep_alive_ms".into(),
            ));
        }
        check_udp_payload("federation.max_udp_payload", self.max_udp_payload)?;
        if self.max_hops == 0
            || self.link_queue_frames == 0
            || self.link_queue_bytes == 0
            || self.tombstone_ttl_ms == 0
        {
            return Err(ConfigError::Invalid(
                "federation: max_hops, link_queue_frames, link_queue_bytes and tombstone_ttl_ms \
                 must be > 0"
                    .into(),
            ));
        }
        self.peer_specs().map(|_| ())
    }

    fn federation_config(&self) -> slim_actors::FederationConfig {
        let d = slim_actors::FederationConfig::default();
        slim_actors::FederationConfig {
            // `validate` reported any error.
            peers: self.peer_specs().unwrap_or_default(),
            keep_alive: Duration::from_millis(self.keep_alive_ms),
            link_timeout: Duration::from_millis(self.link_timeout_ms),
            link_queue: QueueConfig {
                max_frames: self.link_queue_frames,
                max_bytes: self.link_queue_bytes,
                policy: SlowConsumerPolicy::wait(
                    Duration::from_millis(self.link_write_deadline_ms),
                    SlowAction::Drop,
                ),
            },
            backoff_initial: Duration::from_millis(self.backoff_initial_ms),
            backoff_max: Duration::from_millis(self.backoff_max_ms),
            max_hops: self.max_hops,
            tombstone_ttl: Duration::from_millis(self.tombstone_ttl_ms),
            max_udp_payload: self.max_udp_payload,
            ..d
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    pub max_frame_bytes: u32,
    /// A frame that has begun to arrive must be complete within this.
    pub frame_read_timeout_ms: u64,
    /// Bytes all connections together may hold in incomplete frames
    /// (beyond the first 64 KiB of each, which is free).
    pub partial_frame_budget_bytes: usize,
    /// Connections between their first packet and their hello at once.
    pub max_handshakes: usize,
    /// When unvalidated addresses get a QUIC Retry (one extra round trip):
    /// "auto" (from `retry_threshold` handshakes in progress), "always", "never".
    pub retry: RetryPolicy,
    pub retry_threshold: usize,
    /// New connections per second per (validated) source address while the
    /// node is under pressure; 0 = unlimited.
    pub per_source_rate: u32,
    pub per_source_burst: u32,
    /// Handshakes in progress one validated source address may hold while
    /// the node is under pressure; 0 = unlimited.
    pub per_source_handshakes: usize,
}

/// `limits.retry`.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RetryPolicy {
    Auto,
    Always,
    Never,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let d = NodeConfig::default();
        let a = d.admission;
        LimitsSection {
            max_frame_bytes: Limits::default().max_frame,
            frame_read_timeout_ms: d.frame_read_timeout.as_millis() as u64,
            partial_frame_budget_bytes: d.partial_frame_budget,
            max_handshakes: a.max_handshakes,
            retry: match a.retry {
                RetryMode::Always => RetryPolicy::Always,
                RetryMode::Never => RetryPolicy::Never,
                RetryMode::Auto { .. } => RetryPolicy::Auto,
            },
            retry_threshold: match a.retry {
                RetryMode::Auto { threshold } => threshold,
                _ => 64,
            },
            per_source_rate: a.per_source_rate,
            per_source_burst: a.per_source_burst,
            per_source_handshakes: a.per_source_handshakes,
        }
    }
}

impl LimitsSection {
    fn admission(&self) -> AdmissionConfig {
        AdmissionConfig {
            max_handshakes: self.max_handshakes,
            retry: match self.retry {
                RetryPolicy::Auto => RetryMode::Auto {
                    threshold: self.retry_threshold,
                },
                RetryPolicy::Always => RetryMode::Always,
                RetryPolicy::Never => RetryMode::Never,
            },
            per_source_rate: self.per_source_rate,
            per_source_burst: self.per_source_burst,
            per_source_handshakes: self.per_source_handshakes,
            ..AdmissionConfig::default()
        }
    }
}

/// What happens to a subscriber whose queue stays full past the write deadline.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SlowConsumer {
    /// Drop what does not fit (counted, logged per identity); publishers
    /// stop waiting for it until it has drained.
    Drop,
    /// Close its connection (NATS's behaviour).
    Disconnect,
}

/// `[queue]`: every client connection's outbound queue.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueSection {
    pub max_frames: usize,
    pub max_bytes: usize,
    /// How long a subscriber's full queue may go without its writer making
    /// progress (the subscriber reading) before that subscriber is a slow
    /// consumer; 0 = never wait (fire-and-forget: a full queue applies
    /// `slow_consumer` at once).
    /// `slow_consumer_grace_ms` is the name this had before it made
    /// publishers wait.
    #[serde(alias = "slow_consumer_grace_ms")]
    pub write_deadline_ms: u64,
    pub slow_consumer: SlowConsumer,
    /// Unacknowledged bytes all client connections together may have in
    /// QUIC's send buffers; the connections receiving at once share it
    /// (each between 64 KiB and 2 MiB).
    pub send_budget_bytes: u64,
    /// Bytes full queues together may hold beyond their own `max_bytes`
    /// before publishers wait for them (a stalled subscriber costs memory
    /// up to this instead of its publishers' time); 0 = never.
    pub overflow_bytes: usize,
}

impl Default for QueueSection {
    fn default() -> Self {
        let d = QueueConfig::default();
        QueueSection {
            max_frames: d.max_frames,
            max_bytes: d.max_bytes,
            write_deadline_ms: d.policy.write_deadline.as_millis() as u64,
            send_budget_bytes: NodeConfig::default().send_budget,
            overflow_bytes: NodeConfig::default().overflow_bytes,
            slow_consumer: match d.policy.action {
                SlowAction::Drop => SlowConsumer::Drop,
                SlowAction::Disconnect => SlowConsumer::Disconnect,
            },
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// HTTP address for /metrics, /healthz and /readyz; "" disables it.
    pub listen: String,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    pub format: LogFormat,
    /// A tracing filter, e.g. "info" or "slim_actors=debug,info".
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for {var}: {message}")]
    Env { var: &'static str, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut cfg: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        // Relative identity paths are relative to the config file, so one
        // config works from any working directory.
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut cfg.authz.policy_file,
            &mut cfg.authn.jwt_bundle_file,
            &mut cfg.node.reset_key_file,
            &mut cfg.identity.ca_dir,
            &mut cfg.identity.dir,
            &mut cfg.identity.cert,
            &mut cfg.identity.key,
            &mut cfg.identity.bundle,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(cfg)
    }

    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get("SLIM_NODE_ID") {
            self.node.id = v;
        }
        if let Some(v) = get("SLIM_LISTEN") {
            self.node.listen =
                v.parse()
                    .map_err(|e: std::net::AddrParseError| ConfigError::Env {
                        var: "SLIM_LISTEN",
                        message: e.to_string(),
                    })?;
        }
        if let Some(v) = get("SLIM_IDENTITY_DIR") {
            self.identity.dir = Some(v.into());
        }
        if let Some(v) = get("SLIM_METRICS_LISTEN") {
            self.metrics.listen = v;
        }
        if let Some(v) = get("SLIM_LOG_LEVEL") {
            self.log.level = v;
        }
        if let Some(v) = get("SLIM_CONTROLLER") {
            match &mut self.controller {
                Some(c) => c.address = v,
                None => {
                    self.controller = Some(ControllerSection {
                        address: v,
                        server_name: default_controller_name(),
                        expect_spiffe_id: None,
                        cluster: String::new(),
                        external_endpoint: None,
                        advertise_server_name: default_advertise_name(),
                        delta_interval_ms: default_delta_ms(),
                        report_interval_ms: default_report_ms(),
                    })
                }
            }
        }
        if let Some(v) = get("SLIM_EXTERNAL_ENDPOINT")
            && let Some(c) = &mut self.controller
        {
            check_host_port(&v).map_err(|message| ConfigError::Env {
                var: "SLIM_EXTERNAL_ENDPOINT",
                message,
            })?;
            c.external_endpoint = Some(v);
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node.id.is_empty() {
            return Err(ConfigError::Invalid("node.id must not be empty".into()));
        }
        check_udp_payload("node.max_udp_payload", self.node.max_udp_payload)?;
        if self.limits.max_frame_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "limits.max_frame_bytes must be at least 1024".into(),
            ));
        }
        if self.limits.max_handshakes == 0 {
            return Err(ConfigError::Invalid(
                "limits.max_handshakes must be at least 1".into(),
            ));
        }
        if self.limits.frame_read_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "limits.frame_read_timeout_ms must be positive".into(),
            ));
        }
        if self.limits.per_source_rate > 0 && self.limits.per_source_burst == 0 {
            return Err(ConfigError::Invalid(
                "limits.per_source_burst must be at least 1 when per_source_rate is set".into(),
            ));
        }
        if self.queue.send_budget_bytes < slim_actors::sendbudget::MAX_WINDOW {
            return Err(ConfigError::Invalid(format!(
                "queue.send_budget_bytes must be at least {} (one connection's full send window)",
                slim_actors::sendbudget::MAX_WINDOW
            )));
        }
        if self.queue.max_bytes < self.limits.max_frame_bytes as usize {
            return Err(ConfigError::Invalid(
                "queue.max_bytes must be at least limits.max_frame_bytes".into(),
            ));
        }
        let id = &self.identity;
        id.check(true).map_err(ConfigError::Invalid)?;
        if self.authn.jwt_audience.is_some()
            && self.authn.jwt_bundle_file.is_none()
            && id.source != IdentitySourceKind::Spire
        {
            return Err(ConfigError::Invalid(
                "authn.jwt_audience needs authn.jwt_bundle_file unless identity.source = \"spire\""
                    .into(),
            ));
        }
        match (self.authz.mode, &self.authz.policy_file) {
            (AuthzMode::Policy, None) => {
                return Err(ConfigError::Invalid(
                    "authz.mode = \"policy\" needs authz.policy_file".into(),
                ));
            }
            (AuthzMode::AllowAll, Some(_)) => {
                return Err(ConfigError::Invalid(
                    "authz.policy_file is set but authz.mode is \"allow_all\"".into(),
                ));
            }
            _ => {}
        }
        if !self.metrics.listen.is_empty() {
            self.metrics
                .listen
                .parse::<SocketAddr>()
                .map_err(|e| ConfigError::Invalid(format!("metrics.listen: {e}")))?;
        }
        if let Some(c) = &self.controller {
            c.link_config()?;
        }
        self.federation.validate()?;
        Ok(())
    }

    /// The identity source this config describes; `None` for the static
    /// cert/key/bundle triple.
    pub fn identity_source(&self) -> Result<Option<slim_auth::IdentitySourceConfig>, ConfigError> {
        self.identity.source_config().map_err(ConfigError::Invalid)
    }

    /// Loads the authorization policy this config names.
    pub fn load_policy(&self) -> Result<Policy, ConfigError> {
        match (&self.authz.mode, &self.authz.policy_file) {
            (AuthzMode::AllowAll, _) => Ok(Policy::allow_all()),
            (AuthzMode::Policy, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                Policy::from_toml(&text).map_err(|e| ConfigError::Parse {
                    path: path.clone(),
                    message: e.to_string(),
                })
            }
            (AuthzMode::Policy, None) => Err(ConfigError::Invalid(
                "authz.mode = \"policy\" needs authz.policy_file".into(),
            )),
        }
    }

    /// Where the node's stateless reset secret comes from: the
    /// `reset_key_file` (read, or created when missing), else the TLS key.
    pub fn reset_key(&self) -> Result<ResetKey, ConfigError> {
        match &self.node.reset_key_file {
            None => Ok(ResetKey::FromTlsKey),
            Some(path) => slim_auth::ResetSecret::load_or_create(path)
                .map(ResetKey::Secret)
                .map_err(|e| ConfigError::Invalid(format!("node.reset_key_file: {e}"))),
        }
    }

    pub fn node_config(&self) -> NodeConfig {
        let policy = SlowConsumerPolicy::wait(
            Duration::from_millis(self.queue.write_deadline_ms),
            match self.queue.slow_consumer {
                SlowConsumer::Drop => SlowAction::Drop,
                SlowConsumer::Disconnect => SlowAction::Disconnect,
            },
        );
        NodeConfig {
            node_id: self.node.id.clone(),
            listen: self.node.listen,
            limits: Limits {
                max_frame: self.limits.max_frame_bytes,
            },
            queue: QueueConfig {
                max_frames: self.queue.max_frames,
                max_bytes: self.queue.max_bytes,
                policy,
            },
            send_budget: self.queue.send_budget_bytes,
            overflow_bytes: self.queue.overflow_bytes,
            handshake_timeout: Duration::from_millis(self.node.handshake_timeout_ms),
            admission: self.limits.admission(),
            frame_read_timeout: Duration::from_millis(self.limits.frame_read_timeout_ms),
            partial_frame_budget: self.limits.partial_frame_budget_bytes,
            idle_timeout: Duration::from_millis(self.node.idle_timeout_ms),
            keep_alive: Duration::from_millis(self.node.keep_alive_ms),
            max_connections: self.node.max_connections,
            udp_buffer_bytes: self.node.udp_buffer_bytes,
            max_udp_payload: self.node.max_udp_payload,
            policy: Policy::allow_all(),
            token_auth: TokenAuth::default(),
            peer_expiry_grace: Duration::from_millis(self.authn.peer_expiry_grace_ms),
            federation: self.federation.federation_config(),
            // Read by `reset_key` (it may create a file; this stays pure).
            reset_key: ResetKey::FromTlsKey,
        }
    }
}

/// Checks the form `host:port` (an IPv4 address, `[IPv6]`, or a DNS name,
/// and a port > 0) without resolving anything: names are resolved when
/// dialled, so a name that does not resolve yet is not a config error.
pub fn check_host_port(s: &str) -> Result<(), String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return if a.port() == 0 {
            Err(format!("{s:?}: port 0 cannot be dialled"))
        } else {
            Ok(())
        };
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("{s:?}: expected host:port"));
    };
    if !port.parse::<u16>().is_ok_and(|p| p > 0) {
        return Err(format!(
            "{s:?}: expected host:port with a port from 1 to 65535"
        ));
    }
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !name_ok {
        return Err(format!(
            "{s:?}: {host:?} is neither an IP address nor a host name"
        ));
    }
    Ok(())
}

impl ControllerSection {
    /// The node-side controller link settings this section describes.
    pub fn link_config(&self) -> Result<crate::controller::ControllerLinkConfig, ConfigError> {
        if self.address.is_empty() {
            return Err(ConfigError::Invalid(
                "controller.address must not be empty".into(),
            ));
        }
        check_host_port(&self.address)
            .map_err(|e| ConfigError::Invalid(format!("controller.address: {e}")))?;
        if let Some(e) = &self.external_endpoint {
            check_host_port(e)
                .map_err(|m| ConfigError::Invalid(format!("controller.external_endpoint: {m}")))?;
            if e.parse::<SocketAddr>()
                .is_ok_and(|a| a.ip().is_unspecified())
            {
                return Err(ConfigError::Invalid(format!(
                    "controller.external_endpoint {e} cannot be dialled: give the address or \
                     name other nodes reach"
                )));
            }
        }
        if self.report_interval_ms == 0 || self.delta_interval_ms == 0 {
            return Err(ConfigError::Invalid(
                "controller.report_interval_ms and delta_interval_ms must be > 0".into(),
            ));
        }
        let mut l = crate::controller::ControllerLinkConfig::new(self.address.clone());
        l.server_name = self.server_name.clone();
        l.expect_spiffe_id = self
            .expect_spiffe_id
            .as_deref()
            .map(slim_auth::SpiffeId::parse)
            .transpose()
            .map_err(|e| ConfigError::Invalid(format!("controller.expect_spiffe_id: {e}")))?;
        l.cluster = self.cluster.clone();
        l.external_endpoint = self.external_endpoint.clone();
        l.advertise_server_name = self.advertise_server_name.clone();
        l.report_interval = Duration::from_millis(self.report_interval_ms);
        l.delta_interval = Duration::from_millis(self.delta_interval_ms);
        Ok(l)
    }
}

#[cfg(test)]
mod tests;
