//! Node addresses: `slim://host:port` URLs, and resolving `host:port`.

use std::net::SocketAddr;
use std::time::Duration;

use crate::error::ClientError;

/// Splits `slim://host:port` or `host:port` into `host:port`; the error is
/// the reason, which [`crate::app::parse_url`] reports as `SlimError::Invalid`.
pub(crate) fn split_url(url: &str) -> Result<String, String> {
    let rest = match url.split_once("://") {
        Some(("slim", rest)) => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "node URL {url:?}: unknown scheme {scheme:?} (use slim://host:port)"
            ));
        }
        None => url,
    };
    let rest = rest.trim_end_matches('/');
    let ok = match rest.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    };
    if !ok || rest.contains('/') {
        return Err(format!("node URL {url:?}: expected slim://host:port"));
    }
    Ok(rest.to_owned())
}

/// Resolves `host:port` with the system resolver ([`slim_auth::resolve`]).
pub(crate) async fn resolve(host: &str, timeout: Duration) -> Result<Vec<SocketAddr>, ClientError> {
    slim_auth::resolve::resolve(host, timeout)
        .await
        .map_err(|e| ClientError::Resolve {
            host: e.host,
            reason: e.reason,
        })
}
