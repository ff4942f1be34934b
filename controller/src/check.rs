//! `slim-controller --check FILE`: the config, its environment overrides,
//! the SVID and bundle and the authz patterns, loaded and cross-checked
//! without binding a socket or opening the audit store.

use std::path::Path;

use crate::config::{ConfigError, FileConfig};

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

/// The checks beyond [`FileConfig::validate`]: the identity it names, the
/// authz patterns against the trust domains that identity accepts, the data
/// directory, and values accepted there that cannot work.
pub fn check_config(cfg: &FileConfig) -> Result<CheckSummary, ConfigError> {
    let bad = ConfigError::Invalid;
    let c = &cfg.controller;
    if c.listen.port() == 0 {
        return Err(bad(
            "controller.listen: port 0 would pick a random port no node knows".into(),
        ));
    }
    if c.max_connections == 0 {
        return Err(bad("controller.max_connections must be > 0".into()));
    }
    if cfg.authz.admins.is_empty() {
        return Err(bad(
            "authz.admins is empty: nobody could use slimctl against this controller".into(),
        ));
    }
    tracing_subscriber::EnvFilter::try_new(&cfg.log.level)
        .map_err(|e| bad(format!("log.level {:?}: {e}", cfg.log.level)))?;
    let mut lines = vec![format!(
        "controller: QUIC on {}, metrics on {}, data in {}",
        c.listen,
        if cfg.metrics.listen.is_empty() {
            "(disabled)"
        } else {
            &cfg.metrics.listen
        },
        c.data_dir.display()
    )];

    let id = cfg.identity.preflight(false).map_err(bad)?;
    let mut idl = match &id.spiffe_id {
        Some(i) => format!("identity {i} ({})", id.source),
        None => format!("identity from the {}", id.source),
    };
    if let Some(tds) = &id.trust_domains {
        idl.push_str(&format!(", trusts {}", tds.join(", ")));
        for (key, list) in [
            ("authz.nodes", &cfg.authz.nodes),
            ("authz.admins", &cfg.authz.admins),
        ] {
            let foreign = slim_auth::foreign_patterns(list.iter().map(String::as_str), tds);
            if let Some((i, p)) = foreign.first() {
                return Err(bad(format!(
                    "trust domain mismatch: {key}[{i}] ({p}) is for trust domain {}, but this \
                     controller trusts only {} (its bundle): the pattern can never match",
                    slim_auth::pattern_trust_domain(p).unwrap_or_default(),
                    tds.join(", ")
                )));
            }
        }
    }
    if id.trust_domains.is_none() {
        idl.push_str("; trust domains of authz not checked (the bundle comes at start)");
    }
    lines.push(idl);
    lines.push(format!(
        "authz: nodes {}; admins {}",
        cfg.authz.nodes.join(", "),
        cfg.authz.admins.join(", ")
    ));

    // The audit store is created at start: its directory, or the nearest
    // existing parent, must be a directory.
    let mut d = c.data_dir.as_path();
    while !d.exists() {
        match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => d = p,
            _ => break,
        }
    }
    if d.exists() && !d.is_dir() {
        return Err(bad(format!(
            "controller.data_dir {}: {} is not a directory",
            c.data_dir.display(),
            d.display()
        )));
    }
    if let Some(k) = &c.reset_key_file
        && let Ok(m) = std::fs::metadata(k)
        && m.len() != 32
    {
        return Err(bad(format!(
            "controller.reset_key_file {}: {} bytes, expected 32",
            k.display(),
            m.len()
        )));
    }
    Ok(CheckSummary { lines })
}
