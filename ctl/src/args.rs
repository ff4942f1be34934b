//! Arguments shared by several subcommands: who we are, which node to reach, and durations.
//!
//! A setting left off the command line (and out of its environment
//! variable) comes from the context in use ([`crate::context`]), else the
//! built-in default.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use slim_auth::{IdentitySource, IdentitySourceConfig};
use slim_client::{Client, ClientConfig, ClientError, Credentials};
use slim_wire::Name;

use crate::context::active;

pub(crate) const DEFAULT_NODE: &str = "127.0.0.1:4500";
pub(crate) const DEFAULT_AS: &str = "ops/slimctl/cli";

/// Where this client's identity comes from.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct IdentityArgs {
    /// SVID directory in the spiffe-helper layout (tls.crt, tls.key, svid_bundle.pem).
    #[arg(long, env = "SLIMCTL_IDENTITY", value_name = "DIR")]
    identity: Option<PathBuf>,
    /// SPIFFE Workload API socket of a SPIRE agent (used when --identity is absent).
    #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET", value_name = "SOCKET")]
    spiffe_socket: Option<String>,
    /// Authenticate with a JWT-SVID for this audience instead of a client
    /// certificate (needs --spiffe-socket).
    #[arg(long, value_name = "AUDIENCE")]
    jwt_audience: Option<String>,
}

impl IdentityArgs {
    /// The identity source: from the command line if it names one (either
    /// kind), else from the context.
    fn where_from(&self) -> (Option<PathBuf>, Option<String>) {
        if self.identity.is_some() || self.spiffe_socket.is_some() {
            return (self.identity.clone(), self.spiffe_socket.clone());
        }
        match active() {
            Some(c) => (c.identity.clone(), c.spiffe_socket.clone()),
            None => (None, None),
        }
    }

    /// Whether `--jwt-audience` was given on the command line (the
    /// controller refuses JWT: a context's audience is for nodes only).
    pub(crate) fn jwt_audience_given(&self) -> bool {
        self.jwt_audience.is_some()
    }

    pub(crate) fn jwt_audience(&self) -> Option<String> {
        self.jwt_audience
            .clone()
            .or_else(|| active().and_then(|c| c.jwt_audience.clone()))
    }

    pub(crate) async fn source(&self) -> Result<IdentitySource> {
        let cfg = match self.where_from() {
            (Some(dir), _) => IdentitySourceConfig::Files { dir },
            (None, Some(sock)) => IdentitySourceConfig::spire(Some(sock)),
            (None, None) => bail!(
                "no identity: pass --identity DIR (spiffe-helper layout) or --spiffe-socket / SPIFFE_ENDPOINT_SOCKET, or use a context (slimctl context add)"
            ),
        };
        Ok(IdentitySource::start(cfg).await?)
    }

    pub(crate) async fn credentials(&self) -> Result<Credentials> {
        Ok(self.credentials_from(self.source().await?))
    }

    /// The credentials to present from an already started `src`: its
    /// X.509-SVID, or JWT-SVIDs for `--jwt-audience`.
    pub(crate) fn credentials_from(&self, src: IdentitySource) -> Credentials {
        match self.jwt_audience() {
            Some(audience) => Credentials::Jwt {
                source: src,
                audience,
            },
            None => Credentials::Source(src),
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ConnectArgs {
    /// The node to connect to: `host:port` or `slim://host:port` (host
    /// names are resolved at every (re)connect) [default: 127.0.0.1:4500].
    #[arg(long, env = "SLIMCTL_NODE", value_name = "ADDR")]
    pub(crate) node: Option<String>,
    #[command(flatten)]
    pub(crate) id: IdentityArgs,
    /// The name this client registers as (an instance id is added)
    /// [default: ops/slimctl/cli].
    #[arg(long = "as", env = "SLIMCTL_NAME", value_name = "NAME")]
    pub(crate) as_name: Option<String>,
}

impl ConnectArgs {
    pub(crate) fn node(&self) -> String {
        self.node
            .clone()
            .or_else(|| active().and_then(|c| c.node.clone()))
            .unwrap_or_else(|| DEFAULT_NODE.into())
    }

    pub(crate) fn as_name(&self) -> String {
        self.as_name
            .clone()
            .or_else(|| active().and_then(|c| c.as_name.clone()))
            .unwrap_or_else(|| DEFAULT_AS.into())
    }

    /// A connected client registered as `--as`.
    pub(crate) async fn client(&self) -> Result<Client> {
        let creds = self.id.credentials().await?;
        let name = Name::parse(&self.as_name()).context("invalid --as name")?;
        let node = self.node();
        Client::connect(ClientConfig::for_url(&node, name, creds).await?)
            .await
            .map_err(|e| connect_error(e, &node))
    }
}

/// A failed connect, saying which node once: the SDK's connect and resolve
/// errors name the address already.
pub(crate) fn connect_error(e: ClientError, node: &str) -> anyhow::Error {
    match e {
        ClientError::Connect { .. } | ClientError::Resolve { .. } => e.into(),
        e => anyhow::Error::new(e).context(format!("cannot connect to {node}")),
    }
}

/// A duration such as `300ms`, `2s`, `1m30s`, `1h`, `1d` (humantime's
/// syntax); a bare number is seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map(Duration::from_secs)
            .map_err(|e| format!("invalid duration {s:?}: {e}"));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?}: {e} (e.g. 500ms, 2s, 1m30s, 1h, 1d)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }
}
