//! `slim-node --check FILE`: everything the node would read at start —
//! the config, its environment overrides, the SVID, key and bundle, the
//! policy, the JWT bundle, the addresses — loaded and cross-checked without
//! binding a socket or starting a task, so an operator learns what is wrong
//! before a rollout rather than from a crash loop.

use std::net::SocketAddr;
use std::path::Path;
use std::time::SystemTime;

use slim_auth::policy::PolicyFile;

use crate::config::{AuthzMode, ConfigError, FileConfig};

/// What a config that passed the check describes: the lines of the summary.
#[derive(Debug)]
pub struct CheckSummary {
    pub lines: Vec<String>,
}

/// Loads `path` (with the environment overrides from `env`) and checks it
/// fully. Every error is a [`ConfigError`] naming the key or file at fault.
pub fn check_file(
    path: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<CheckSummary, ConfigError> {
    let mut cfg = FileConfig::load(path)?;
    cfg.apply_env(env)?;
    cfg.validate()?;
    check_config(&cfg)
}

/// The checks beyond [`FileConfig::validate`] (which only looks at the
/// file's own values): the files it names, and values the node would accept
/// but that cannot work.
pub fn check_config(cfg: &FileConfig) -> Result<CheckSummary, ConfigError> {
    let bad = |m: String| ConfigError::Invalid(m);
    ranges(cfg)?;
    let mut lines = Vec::new();
    let n = &cfg.node;
    lines.push(format!(
        "node {:?}: QUIC on {}, metrics on {}",
        n.id,
        n.listen,
        if cfg.metrics.listen.is_empty() {
            "(disabled)"
        } else {
            &cfg.metrics.listen
        }
    ));

    let id = cfg.identity.preflight(true).map_err(bad)?;
    lines.push(identity_line(&id));

    match (cfg.authz.mode, &cfg.authz.policy_file) {
        (AuthzMode::AllowAll, _) => {
            lines.push("authz: allow_all (DEVELOPMENT ONLY: every identity may do anything)".into())
        }
        (AuthzMode::Policy, Some(path)) => {
            // Compiles the patterns (the node's own loader) …
            cfg.load_policy()?;
            // … and re-reads the rules to see whom they name.
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let file: PolicyFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.clone(),
                message: e.to_string(),
            })?;
            if file.rules.is_empty() {
                return Err(bad(format!(
                    "policy {} has no [[rule]]: every client would be refused",
                    path.display()
                )));
            }
            if let Some(trusted) = &id.trust_domains {
                let foreign = slim_auth::foreign_patterns(
                    file.rules.iter().map(|r| r.spiffe_id.as_str()),
                    trusted,
                );
                if let Some((i, p)) = foreign.first() {
                    return Err(bad(format!(
                        "trust domain mismatch: policy {} rule {} ({p}) is for trust domain {}, \
                         but this node trusts only {} (its bundle): the rule can never match{}",
                        path.display(),
                        i + 1,
                        slim_auth::pattern_trust_domain(p).unwrap_or_default(),
                        trusted.join(", "),
                        if foreign.len() > 1 {
                            format!(" ({} such rules)", foreign.len())
                        } else {
                            String::new()
                        }
                    )));
                }
            }
            let peers = file.rules.iter().filter(|r| r.peer).count();
            lines.push(format!(
                "policy {}: {} rules ({} granting peer links)",
                path.display(),
                file.rules.len(),
                peers
            ));
        }
        (AuthzMode::Policy, None) => unreachable!("validate() requires policy_file"),
    }

    if let Some(path) = &cfg.authn.jwt_bundle_file {
        let td = id
            .spiffe_id
            .as_ref()
            .map(|i| i.trust_domain().to_owned())
            .unwrap_or_default();
        slim_auth::JwtBundles::from_json_file(path, &td).map_err(|e| {
            bad(format!(
                "authn.jwt_bundle_file {}: {e}",
                path.to_string_lossy()
            ))
        })?;
    }
    if let Some(path) = &cfg.node.reset_key_file {
        reset_key_file(path)?;
    }
    // validate() checked their form; names are resolved when dialled.
    for p in &cfg.federation.peers {
        lines.push(format!("federation peer {} at {}", p.node_id, p.address));
    }
    if let Some(c) = &cfg.controller {
        host_port("controller.address", &c.address)?;
        lines.push(format!(
            "controller {} (cluster {:?}, {})",
            c.address,
            c.cluster,
            match &c.external_endpoint {
                Some(e) => format!("reachable at {e}"),
                None => "behind NAT: dials out only".into(),
            }
        ));
    }
    Ok(CheckSummary { lines })
}

/// Values [`FileConfig::validate`] lets through that cannot work.
fn ranges(cfg: &FileConfig) -> Result<(), ConfigError> {
    let n = &cfg.node;
    let fail = |m: &str| Err(ConfigError::Invalid(m.into()));
    if !slim_actors::interest::valid_node_id(&n.id) {
        return Err(ConfigError::Invalid(format!(
            "node.id {:?} is not a valid node id",
            n.id
        )));
    }
    if n.listen.port() == 0 {
        return fail("node.listen: port 0 would pick a random port nobody knows");
    }
    if n.handshake_timeout_ms == 0 || n.idle_timeout_ms == 0 || n.keep_alive_ms == 0 {
        return fail("node.handshake_timeout_ms, idle_timeout_ms and keep_alive_ms must be > 0");
    }
    if n.keep_alive_ms >= n.idle_timeout_ms {
        return fail(
            "node.keep_alive_ms must be below node.idle_timeout_ms, or idle connections time out",
        );
    }
    if n.max_connections == 0 {
        return fail("node.max_connections must be > 0");
    }
    if cfg.queue.max_frames == 0 {
        return fail("queue.max_frames must be > 0");
    }
    if cfg.federation.backoff_initial_ms == 0
        || cfg.federation.backoff_max_ms < cfg.federation.backoff_initial_ms
    {
        return fail("federation: backoff_initial_ms must be > 0 and <= backoff_max_ms");
    }
    if !cfg.metrics.listen.is_empty() {
        let m: SocketAddr = cfg.metrics.listen.parse().map_err(|e| {
            ConfigError::Invalid(format!("metrics.listen {:?}: {e}", cfg.metrics.listen))
        })?;
        if m.port() == 0 {
            return fail("metrics.listen: port 0 would pick a random port nobody scrapes");
        }
    }
    tracing_subscriber::EnvFilter::try_new(&cfg.log.level)
        .map_err(|e| ConfigError::Invalid(format!("log.level {:?}: {e}", cfg.log.level)))?;
    Ok(())
}

/// `host:port` with a non-zero port (the host is resolved at each dial, so
/// the check does not resolve it: DNS at check time proves little).
pub(crate) fn host_port(key: &str, v: &str) -> Result<(), ConfigError> {
    let v = v.strip_prefix("slim://").unwrap_or(v);
    crate::config::check_host_port(v).map_err(|why| ConfigError::Invalid(format!("{key} {why}")))
}

fn reset_key_file(path: &Path) -> Result<(), ConfigError> {
    match std::fs::metadata(path) {
        Ok(m) if m.len() == 32 => Ok(()),
        Ok(m) => Err(ConfigError::Invalid(format!(
            "node.reset_key_file {}: {} bytes, expected 32",
            path.display(),
            m.len()
        ))),
        // Created at start; its directory must exist then.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = path.parent().unwrap_or(Path::new("."));
            if dir.as_os_str().is_empty() || dir.is_dir() {
                Ok(())
            } else {
                Err(ConfigError::Invalid(format!(
                    "node.reset_key_file {}: directory {} does not exist",
                    path.display(),
                    dir.display()
                )))
            }
        }
        Err(e) => Err(ConfigError::Invalid(format!(
            "node.reset_key_file {}: {e}",
            path.display()
        ))),
    }
}

/// The summary line of an identity.
pub fn identity_line(id: &slim_auth::IdentityPreflight) -> String {
    let mut s = match &id.spiffe_id {
        Some(i) => format!("identity {i} ({})", id.source),
        None => format!("identity from the {}", id.source),
    };
    if let Some(t) = id.not_after {
        let left = t
            .duration_since(SystemTime::now())
            .map(|d| d.as_secs())
            .unwrap_or(0);
        s.push_str(&format!(
            ", valid for {}h{:02}m more",
            left / 3600,
            left % 3600 / 60
        ));
    }
    if let Some(tds) = &id.trust_domains {
        s.push_str(&format!(", trusts {}", tds.join(", ")));
    } else {
        s.push_str("; trust domains of the policy not checked (the bundle comes at start)");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        for ok in [
            "localhost:4600",
            "slim://ctl.example:4600",
            "10.0.0.1:1",
            "[::1]:4600",
        ] {
            host_port("k", ok).unwrap();
        }
        for bad in ["localhost", ":4600", "host:0", "host:99999", "host:x"] {
            let e = host_port("controller.address", bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("controller.address"), "{e}");
        }
    }
}
