//! What a run connects to: `--target` URLs, SLIM identities, NATS TLS.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use crate::backend::Backend;
use crate::cli::TargetArgs;
use crate::util::run_id;
use crate::{nats, serverstats, slim};

#[derive(Debug, Clone)]
pub(crate) enum Target {
    Slim(SocketAddr),
    Nats { url: String, tls: bool },
}

pub(crate) fn parse_target(s: &str) -> Result<Target> {
    let (scheme, rest) = s
        .split_once("://")
        .with_context(|| format!("target {s:?} needs a scheme: slim://, nats:// or tls://"))?;
    match scheme {
        "slim" => {
            // host:port, an IP or a name; a load run resolves it once, at start
            // (IPv4 first: nodes listen on 0.0.0.0 by default).
            let addrs: Vec<_> = rest
                .to_socket_addrs()
                .with_context(|| format!("cannot resolve {rest}"))?
                .collect();
            let addr = *addrs
                .iter()
                .find(|a| a.is_ipv4())
                .or(addrs.first())
                .with_context(|| format!("cannot resolve {rest}: no address"))?;
            Ok(Target::Slim(addr))
        }
        "nats" => Ok(Target::Nats {
            url: s.to_owned(),
            tls: false,
        }),
        "tls" => Ok(Target::Nats {
            url: s.to_owned(),
            tls: true,
        }),
        other => bail!("unknown target scheme {other:?}: use slim://, nats:// or tls://"),
    }
}

pub(crate) fn identities(t: &TargetArgs, generate: bool) -> Result<slim::Identities> {
    Ok(match (&t.ca_dir, &t.identity_dir) {
        (Some(dir), _) => slim::Identities::Ca(Arc::new(
            slim_auth::DevCa::load(dir)
                .with_context(|| format!("loading dev CA from {}", dir.display()))?,
        )),
        (None, Some(dir)) => slim::Identities::Shared(
            slim_auth::Identity::from_files(dir)
                .with_context(|| format!("loading identity from {}", dir.display()))?,
        ),
        (None, None) if generate => slim::Identities::Ca(Arc::new(
            slim_auth::DevCa::generate("example.org").context("generating a dev CA")?,
        )),
        (None, None) => bail!("a slim target needs --ca-dir DIR or --identity-dir DIR"),
    })
}

pub(crate) fn nats_tls(t: &TargetArgs, tls: bool) -> Result<Option<rustls::ClientConfig>> {
    if !tls {
        return Ok(None);
    }
    Ok(Some(nats::tls_config(&nats::TlsFiles {
        ca: t.nats_ca.clone(),
        cert: t.nats_cert.clone(),
        key: t.nats_key.clone(),
        ca_dir: t.ca_dir.clone(),
    })?))
}

/// The backend for `latency` and `connections` (no in-process node).
pub(crate) fn backend(t: &TargetArgs) -> Result<(Backend, String, Option<serverstats::Kind>)> {
    let Some(target) = &t.target else {
        bail!("--target is required (slim://, nats:// or tls://)");
    };
    Ok(match parse_target(target)? {
        Target::Slim(addr) => (
            Backend::Slim {
                addr,
                ids: Arc::new(identities(t, false)?),
                run_id: run_id(),
            },
            format!("slim://{addr}"),
            Some(serverstats::Kind::Slim),
        ),
        Target::Nats { url, tls } => (
            Backend::Nats {
                tls: nats_tls(t, tls)?.map(Arc::new),
                url: url.clone(),
                events: Arc::new(nats::Events::default()),
            },
            url,
            Some(serverstats::Kind::Nats),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert!(matches!(
            parse_target("slim://127.0.0.1:4500").unwrap(),
            Target::Slim(a) if a.port() == 4500
        ));
        assert!(matches!(
            parse_target("tls://127.0.0.1:4222").unwrap(),
            Target::Nats { tls: true, .. }
        ));
        assert!(matches!(
            parse_target("nats://127.0.0.1:4222").unwrap(),
            Target::Nats { tls: false, .. }
        ));
        assert!(parse_target("http://x").is_err());
        assert!(parse_target("127.0.0.1:4500").is_err());
    }
}
