//! The node's configuration file (TOML) and its environment overrides.
//! `deploy/config/node.toml` is the commented reference.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use slim_actors::{NodeConfig, QueueConfig, SlowConsumerPolicy, TokenAuth};
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
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct IdentitySection {
    /// Where the node's SVID comes from: files (default), spire, dev.
    #[serde(default)]
    pub source: IdentitySourceKind,
    /// spire: Workload API socket (default: $SPIFFE_ENDPOINT_SOCKET).
    pub socket: Option<String>,
    /// spire: how long to wait for the first SVID.
    pub initial_timeout_ms: Option<u64>,
    /// dev: the development CA directory (created if missing) …
    pub ca_dir: Option<PathBuf>,
    /// … and the SPIFFE ID to issue from it.
    pub id: Option<String>,
    pub ttl_secs: Option<u64>,
    /// files: directory in the spiffe-helper layout (tls.crt, tls.key,
    /// svid_bundle.pem), watched and reloaded on change.
    pub dir: Option<PathBuf>,
    /// Or the three files individually.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub bundle: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum IdentitySourceKind {
    #[default]
    Files,
    Spire,
    Dev,
}

/// In-band client authentication (for clients without certificates) and
/// certificate lifetime handling.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthnSection {
    /// Close a connection this long after its peer's certificate expired.
    pub peer_expiry_grace_ms: u64,
    /// Accept JWT-SVIDs with this audience in the hello (over
    /// server-authenticated TLS). Usually the node's SPIFFE ID.
    pub jwt_audience: Option<String>,
    /// JWKS file with the JWT bundle; without it, the Workload API's JWT
    /// bundles are used (identity.source = "spire" only).
    pub jwt_bundle_file: Option<PathBuf>,
    /// INSECURE, development only: accept this shared secret instead of a
    /// workload identity. Clients so authenticated are
    /// spiffe://insecure-shared-secret/client.
    pub shared_secret: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    pub max_frame_bytes: u32,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_frame_bytes: Limits::default().max_frame,
        }
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SlowConsumer {
    Drop,
    Disconnect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueSection {
    pub max_frames: usize,
    pub max_bytes: usize,
    pub slow_consumer: SlowConsumer,
    pub slow_consumer_grace_ms: u64,
}

impl Default for QueueSection {
    fn default() -> Self {
        let d = QueueConfig::default();
        QueueSection {
            max_frames: d.max_frames,
            max_bytes: d.max_bytes,
            slow_consumer: SlowConsumer::Drop,
            slow_consumer_grace_ms: 1_000,
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
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node.id.is_empty() {
            return Err(ConfigError::Invalid("node.id must not be empty".into()));
        }
        if self.limits.max_frame_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "limits.max_frame_bytes must be at least 1024".into(),
            ));
        }
        if self.queue.max_bytes < self.limits.max_frame_bytes as usize {
            return Err(ConfigError::Invalid(
                "queue.max_bytes must be at least limits.max_frame_bytes".into(),
            ));
        }
        let id = &self.identity;
        let files = [&id.cert, &id.key, &id.bundle];
        let some = files.iter().filter(|f| f.is_some()).count();
        match id.source {
            IdentitySourceKind::Files => match (&id.dir, some) {
                (Some(_), 0) | (None, 3) => {}
                (Some(_), _) => {
                    return Err(ConfigError::Invalid(
                        "identity: give either dir or cert/key/bundle, not both".into(),
                    ));
                }
                (None, _) => {
                    return Err(ConfigError::Invalid(
                        "identity: give dir (spiffe-helper layout) or all of cert, key and bundle"
                            .into(),
                    ));
                }
            },
            IdentitySourceKind::Spire => {
                if id.dir.is_some() || some > 0 || id.ca_dir.is_some() {
                    return Err(ConfigError::Invalid(
                        "identity.source = \"spire\" takes only socket and initial_timeout_ms"
                            .into(),
                    ));
                }
            }
            IdentitySourceKind::Dev => {
                if id.ca_dir.is_none() || id.id.is_none() {
                    return Err(ConfigError::Invalid(
                        "identity.source = \"dev\" needs ca_dir and id".into(),
                    ));
                }
            }
        }
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
        Ok(())
    }

    /// The identity source this config describes; `None` for the static
    /// cert/key/bundle triple.
    pub fn identity_source(&self) -> Result<Option<slim_auth::IdentitySourceConfig>, ConfigError> {
        use slim_auth::IdentitySourceConfig as S;
        let id = &self.identity;
        Ok(match id.source {
            IdentitySourceKind::Files => id.dir.clone().map(|dir| S::Files { dir }),
            IdentitySourceKind::Spire => Some(S::Spire {
                socket: id.socket.clone(),
                initial_timeout: Duration::from_millis(id.initial_timeout_ms.unwrap_or(10_000)),
            }),
            IdentitySourceKind::Dev => Some(S::Dev {
                ca_dir: id.ca_dir.clone().expect("validated"),
                id: slim_auth::SpiffeId::parse(id.id.as_deref().expect("validated"))
                    .map_err(|e| ConfigError::Invalid(format!("identity.id: {e}")))?,
                ttl: Duration::from_secs(id.ttl_secs.unwrap_or(3600)),
            }),
        })
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

    pub fn node_config(&self) -> NodeConfig {
        let policy = match self.queue.slow_consumer {
            SlowConsumer::Drop => SlowConsumerPolicy::DropNewest,
            SlowConsumer::Disconnect => SlowConsumerPolicy::Disconnect {
                grace: Duration::from_millis(self.queue.slow_consumer_grace_ms),
            },
        };
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
            handshake_timeout: Duration::from_millis(self.node.handshake_timeout_ms),
            idle_timeout: Duration::from_millis(self.node.idle_timeout_ms),
            keep_alive: Duration::from_millis(self.node.keep_alive_ms),
            max_connections: self.node.max_connections,
            udp_buffer_bytes: self.node.udp_buffer_bytes,
            policy: Policy::allow_all(),
            token_auth: TokenAuth::default(),
            peer_expiry_grace: Duration::from_millis(self.authn.peer_expiry_grace_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_config_parses() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/node.toml");
        let cfg = FileConfig::load(&p).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.node.listen.port(), 4500);
        let policy = cfg.load_policy().unwrap();
        assert!(!policy.is_allow_all());
    }

    #[test]
    fn unknown_key_is_an_error() {
        let e = FileConfig::parse(
            "[node]\nlisten_addr = \"x\"\n[identity]\ndir=\"d\"\n[authz]\nmode=\"allow_all\"",
            Path::new("x.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("listen_addr"), "{e}");
    }

    #[test]
    fn env_overrides() {
        let mut cfg = FileConfig::parse(
            "[identity]\ndir = \"/id\"\n[authz]\nmode = \"allow_all\"",
            Path::new("/etc/x.toml"),
        )
        .unwrap();
        cfg.apply_env(|k| (k == "SLIM_LISTEN").then(|| "127.0.0.1:7000".into()))
            .unwrap();
        assert_eq!(cfg.node.listen.port(), 7000);
        let e = cfg
            .apply_env(|k| (k == "SLIM_LISTEN").then(|| "nope".into()))
            .unwrap_err();
        assert!(matches!(
            e,
            ConfigError::Env {
                var: "SLIM_LISTEN",
                ..
            }
        ));
    }

    #[test]
    fn authz_must_be_explicit() {
        let e = FileConfig::parse("[identity]\ndir = \"/id\"", Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("authz"), "{e}");
        let cfg = FileConfig::parse(
            "[identity]\ndir = \"/id\"\n[authz]\nmode = \"policy\"",
            Path::new("x.toml"),
        )
        .unwrap();
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("policy_file")
        );
    }

    #[test]
    fn identity_must_be_complete() {
        let cfg = FileConfig::parse(
            "[identity]\ncert = \"a\"\n[authz]\nmode = \"allow_all\"",
            Path::new("x.toml"),
        )
        .unwrap();
        assert!(cfg.validate().is_err());
    }
}
