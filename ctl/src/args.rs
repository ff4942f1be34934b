//! Arguments shared by several subcommands: who we are, which node to reach, and durations.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use slim_auth::{IdentitySource, IdentitySourceConfig};
use slim_client::{Client, ClientConfig, Credentials};
use slim_wire::Name;

/// Where this client's identity comes from.
#[derive(clap::Args, Debug)]
pub(crate) struct IdentityArgs {
    /// SVID directory in the spiffe-helper layout (tls.crt, tls.key, svid_bundle.pem).
    #[arg(long, env = "SLIMCTL_IDENTITY")]
    identity: Option<PathBuf>,
    /// SPIFFE Workload API socket of a SPIRE agent (used when --identity is absent).
    #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET")]
    spiffe_socket: Option<String>,
    /// Authenticate with a JWT-SVID for this audience instead of a client
    /// certificate (needs --spiffe-socket).
    #[arg(long)]
    pub(crate) jwt_audience: Option<String>,
}

impl IdentityArgs {
    pub(crate) async fn source(&self) -> Result<IdentitySource> {
        let cfg = match (&self.identity, &self.spiffe_socket) {
            (Some(dir), _) => IdentitySourceConfig::Files { dir: dir.clone() },
            (None, Some(sock)) => IdentitySourceConfig::spire(Some(sock.clone())),
            (None, None) => bail!(
                "no identity: pass --identity DIR (spiffe-helper layout) or --spiffe-socket / SPIFFE_ENDPOINT_SOCKET"
            ),
        };
        Ok(IdentitySource::start(cfg).await?)
    }

    pub(crate) async fn credentials(&self) -> Result<Credentials> {
        let src = self.source().await?;
        Ok(match &self.jwt_audience {
            Some(aud) => Credentials::Jwt {
                source: src,
                audience: aud.clone(),
            },
            None => Credentials::Source(src),
        })
    }
}

#[derive(clap::Args, Debug)]
pub(crate) struct ConnectArgs {
    /// The node to connect to: `host:port` or `slim://host:port` (host
    /// names are resolved at every (re)connect).
    #[arg(long, env = "SLIMCTL_NODE", default_value = "127.0.0.1:4500")]
    pub(crate) node: String,
    #[command(flatten)]
    pub(crate) id: IdentityArgs,
    /// The name this client registers as (an instance id is added).
    #[arg(long = "as", env = "SLIMCTL_NAME", default_value = "ops/slimctl/cli")]
    pub(crate) as_name: String,
}

impl ConnectArgs {
    /// A connected client registered as `--as`.
    pub(crate) async fn client(&self) -> Result<Client> {
        let creds = self.id.credentials().await?;
        let name = Name::parse(&self.as_name).context("invalid --as name")?;
        Client::connect(ClientConfig::for_url(&self.node, name, creds).await?)
            .await
            .with_context(|| format!("cannot connect to {}", self.node))
    }
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => {
            return Err(format!(
                "invalid duration unit in {s:?} (use ms, s, m, h, d)"
            ));
        }
    };
    Ok(Duration::from_secs(secs))
}
