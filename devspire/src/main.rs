//! `slim-devspire`: run the development SPIFFE Workload API server.
//!
//! ```text
//! slim-devspire --socket /tmp/slim/agent.sock --ca-dir ./dev-ca \
//!     --id spiffe://example.org/node/a --id spiffe://example.org/client/b \
//!     --ttl-secs 3600 --rotate-every-secs 1800
//! ```
//!
//! The CA in `--ca-dir` is created if absent (trust domain from the first ID),
//! and the JWT signing key is kept there too, so SVIDs stay verifiable across
//! restarts. Point workloads at it with `SPIFFE_ENDPOINT_SOCKET=unix://<socket>`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use slim_auth::{DevCa, SpiffeId};
use slim_devspire::{DevSpire, DevSpireConfig};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Development SPIFFE Workload API server (SPIRE agent stand-in)"
)]
struct Args {
    /// Unix socket to serve the Workload API on.
    #[arg(long, env = "SLIM_DEVSPIRE_SOCKET")]
    socket: PathBuf,
    /// Development CA directory (created if absent).
    #[arg(long)]
    ca_dir: PathBuf,
    /// SPIFFE ID to serve (repeatable; the first is the default SVID).
    #[arg(long = "id", required = true)]
    ids: Vec<String>,
    /// X.509-SVID lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl_secs: u64,
    /// JWT-SVID lifetime in seconds.
    #[arg(long, default_value_t = 300)]
    jwt_ttl_secs: u64,
    /// Re-issue SVIDs this often, in seconds (default: half the TTL; 0 = never).
    #[arg(long)]
    rotate_every_secs: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        // Colour only at a terminal, never in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let args = Args::parse();
    let ids = args
        .ids
        .iter()
        .map(|s| SpiffeId::parse(s).with_context(|| format!("--id {s}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ca = if args.ca_dir.join(slim_auth::devca::CA_CERT_FILE).exists() {
        DevCa::load(&args.ca_dir)?
    } else {
        DevCa::init(&args.ca_dir, ids[0].trust_domain())?
    };
    let rotate_every = match args.rotate_every_secs {
        Some(0) => None,
        Some(s) => Some(Duration::from_secs(s)),
        None => Some(Duration::from_secs((args.ttl_secs / 2).max(1))),
    };
    let cfg = DevSpireConfig {
        socket_path: args.socket,
        ids,
        svid_ttl: Duration::from_secs(args.ttl_secs),
        jwt_ttl: Duration::from_secs(args.jwt_ttl_secs),
        rotate_every,
        jwt_key_dir: Some(args.ca_dir.clone()),
    };
    let spire = DevSpire::start(cfg, ca).await?;
    println!("SPIFFE_ENDPOINT_SOCKET={}", spire.endpoint());
    tokio::signal::ctrl_c().await?;
    spire.shutdown().await;
    Ok(())
}
