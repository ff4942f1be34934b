//! The controller's configuration file (TOML). `deploy/config/controller.toml`
//! is the commented reference.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::authz::Authz;
use crate::fleet::FleetConfig;
use crate::plan::PlanConfig;
use crate::proto::Limits;
use crate::server::ControllerConfig;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub controller: ControllerSection,
    pub identity: IdentitySection,
    pub authz: AuthzSection,
    #[serde(default)]
    pub plan: PlanSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub log: LogSection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerSection {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub plan_grace_secs: u64,
    pub startup_hold_ms: u64,
    pub max_frame_bytes: u32,
    pub max_connections: usize,
    /// The secret behind QUIC stateless resets (32 bytes; created, mode
    /// 0600, if missing), so nodes notice a restarted controller at once.
    /// Default: `quic-reset.key` in `data_dir`.
    pub reset_key_file: Option<PathBuf>,
}

impl Default for ControllerSection {
    fn default() -> Self {
        let f = FleetConfig::default();
        ControllerSection {
            listen: "0.0.0.0:4600".parse().expect("static"),
            data_dir: "controller-data".into(),
            plan_grace_secs: f.plan_grace.as_secs(),
            startup_hold_ms: f.startup_hold.as_millis() as u64,
            max_frame_bytes: Limits::default().max_frame,
            max_connections: 10_000,
            reset_key_file: None,
        }
    }
}

/// Link planning; see `plan.rs` and the reference config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlanSection {
    pub full_mesh_max: usize,
    pub max_degree: usize,
    pub nat_uplinks: usize,
}

impl Default for PlanSection {
    fn default() -> Self {
        let p = PlanConfig::default();
        PlanSection {
            full_mesh_max: p.full_mesh_max,
            max_degree: p.max_degree,
            nat_uplinks: p.nat_uplinks,
        }
    }
}

pub use slim_auth::{IdentitySection, IdentitySourceKind};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuthzSection {
    /// SPIFFE ID patterns allowed to register as nodes.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// SPIFFE ID patterns allowed to use the admin API.
    #[serde(default)]
    pub admins: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// HTTP address for /metrics and /healthz; "" disables it.
    pub listen: String,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            listen: "127.0.0.1:9465".into(),
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
        // Relative paths are relative to the config file.
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            Some(&mut cfg.controller.data_dir),
            cfg.controller.reset_key_file.as_mut(),
            cfg.identity.ca_dir.as_mut(),
            cfg.identity.dir.as_mut(),
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

    /// Environment overrides, for containers and for running one config
    /// file in several places: `SLIM_CONTROLLER_LISTEN`, `SLIM_DATA_DIR`,
    /// `SLIM_METRICS_LISTEN`, `SLIM_IDENTITY_DIR`, `SLIM_LOG_LEVEL`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get("SLIM_CONTROLLER_LISTEN") {
            self.controller.listen = v
                .parse()
                .map_err(|e| ConfigError::Invalid(format!("SLIM_CONTROLLER_LISTEN {v:?}: {e}")))?;
        }
        if let Some(v) = get("SLIM_DATA_DIR") {
            self.controller.data_dir = v.into();
        }
        if let Some(v) = get("SLIM_METRICS_LISTEN") {
            self.metrics.listen = v;
        }
        if let Some(v) = get("SLIM_IDENTITY_DIR") {
            self.identity.dir = Some(v.into());
        }
        if let Some(v) = get("SLIM_LOG_LEVEL") {
            self.log.level = v;
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        Authz::new(&self.authz.nodes, &self.authz.admins)
            .map_err(|e| ConfigError::Invalid(format!("authz: {e}")))?;
        if self.authz.nodes.is_empty() {
            return Err(ConfigError::Invalid(
                "authz.nodes is empty: no node could register".into(),
            ));
        }
        if self.controller.max_frame_bytes < 4096 {
            return Err(ConfigError::Invalid(
                "controller.max_frame_bytes must be at least 4096".into(),
            ));
        }
        // The ring over the reachable nodes takes two links of each; with
        // fewer than three nothing is left for chords or NATed uplinks.
        if self.plan.max_degree < 3 {
            return Err(ConfigError::Invalid(
                "plan.max_degree must be at least 3".into(),
            ));
        }
        if self.plan.nat_uplinks == 0 {
            return Err(ConfigError::Invalid(
                "plan.nat_uplinks must be at least 1: a NATed node without uplinks is cut off"
                    .into(),
            ));
        }
        // The controller has no static cert/key/bundle mode: it needs a
        // source that rotates (files dir, SPIRE, dev).
        self.identity.check(false).map_err(ConfigError::Invalid)?;
        if !self.metrics.listen.is_empty() {
            self.metrics
                .listen
                .parse::<SocketAddr>()
                .map_err(|e| ConfigError::Invalid(format!("metrics.listen: {e}")))?;
        }
        Ok(())
    }

    pub fn identity_source(&self) -> Result<slim_auth::IdentitySourceConfig, ConfigError> {
        self.identity
            .source_config()
            .map_err(ConfigError::Invalid)?
            .ok_or_else(|| {
                ConfigError::Invalid("identity: files needs dir (spiffe-helper layout)".into())
            })
    }

    pub fn controller_config(&self) -> ControllerConfig {
        let c = &self.controller;
        let mut cfg = ControllerConfig::new(c.listen, c.data_dir.clone());
        cfg.nodes = self.authz.nodes.clone();
        cfg.admins = self.authz.admins.clone();
        cfg.fleet = FleetConfig {
            plan_grace: Duration::from_secs(c.plan_grace_secs),
            startup_hold: Duration::from_millis(c.startup_hold_ms),
            plan: PlanConfig {
                full_mesh_max: self.plan.full_mesh_max,
                max_degree: self.plan.max_degree,
                nat_uplinks: self.plan.nat_uplinks,
            },
        };
        cfg.limits = Limits {
            max_frame: c.max_frame_bytes,
        };
        cfg.max_connections = c.max_connections;
        cfg.reset_key_file = c.reset_key_file.clone();
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_config_parses() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/controller.toml");
        let cfg = FileConfig::load(&p).unwrap();
        cfg.validate().unwrap();
        let c = cfg.controller_config();
        assert_eq!(c.listen.port(), 4600);
        assert!(!c.nodes.is_empty() && !c.admins.is_empty());
        assert!(c.data_dir.is_absolute());
        // The reference file shows the defaults.
        assert_eq!(c.fleet.plan, PlanConfig::default());
    }

    #[test]
    fn plan_section_is_read_and_checked() {
        let base = "[identity]\ndir = \"d\"\n[authz]\nnodes = [\"spiffe://a/x\"]\n";
        let cfg = FileConfig::parse(
            &format!("{base}[plan]\nfull_mesh_max = 0\nmax_degree = 8\nnat_uplinks = 3\n"),
            Path::new("/x.toml"),
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(
            cfg.controller_config().fleet.plan,
            PlanConfig {
                full_mesh_max: 0,
                max_degree: 8,
                nat_uplinks: 3
            }
        );
        let defaults = FileConfig::parse(base, Path::new("/x.toml")).unwrap();
        assert_eq!(
            defaults.controller_config().fleet.plan,
            PlanConfig::default()
        );
        for (bad, key) in [
            ("max_degree = 2", "max_degree"),
            ("nat_uplinks = 0", "nat_uplinks"),
        ] {
            let cfg =
                FileConfig::parse(&format!("{base}[plan]\n{bad}\n"), Path::new("/x.toml")).unwrap();
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
        assert!(
            FileConfig::parse(&format!("{base}[plan]\ndegree = 4\n"), Path::new("/x.toml"))
                .is_err()
        );
    }

    #[test]
    fn bad_pattern_and_unknown_keys_are_errors() {
        let cfg = FileConfig::parse(
            "[identity]\ndir = \"d\"\n[authz]\nnodes = [\"spiffe://a/x*\"]",
            Path::new("/x.toml"),
        )
        .unwrap();
        assert!(cfg.validate().unwrap_err().to_string().contains("x*"));
        let e = FileConfig::parse(
            "[identity]\ndir = \"d\"\n[authz]\nnode = []",
            Path::new("/x.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("node"), "{e}");
    }
}
