//! `host:port` to addresses with the system resolver, bounded in time: the
//! one lookup every dialler uses (SDK clients, peer links, the controller
//! link, slimctl), each of which wraps [`ResolveError`] in its own error.
//! Names play no part in trust: peers are authenticated by SPIFFE ID.

use std::net::SocketAddr;
use std::time::Duration;

/// A name that gave no address, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot resolve {host}: {reason}")]
pub struct ResolveError {
    pub host: String,
    pub reason: String,
}

/// Resolves `host` (`host:port`, a name or an IP) within `timeout`: a
/// resolver that never answers must not stall a (re)connect.
pub async fn resolve(host: &str, timeout: Duration) -> Result<Vec<SocketAddr>, ResolveError> {
    let err = |reason: String| ResolveError {
        host: host.to_owned(),
        reason,
    };
    match tokio::time::timeout(timeout, tokio::net::lookup_host(host)).await {
        Err(_) => Err(err(format!(
            "no answer from the resolver within {timeout:?}"
        ))),
        Ok(Err(e)) => Err(err(e.to_string())),
        Ok(Ok(addrs)) => {
            let v: Vec<SocketAddr> = addrs.collect();
            if v.is_empty() {
                Err(err("no address".into()))
            } else {
                Ok(v)
            }
        }
    }
}
