//! Hands a simulated Kubernetes security finding to cluster A's security
//! monitor, as the cluster's event source would:
//! `inject-event --type cve --severity critical --image nginx:1.21`.
//! The monitor acts only on events from the event source's SPIFFE ID.
#![forbid(unsafe_code)]

use anyhow::{Context, Result};
use clap::Parser;
use slim_auth::{IdentitySource, IdentitySourceConfig};
use slim_client::{Client, ClientConfig, Credentials};
use slim_wire::{Mode, Name};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long = "type", default_value = "cve")]
    kind: String,
    #[arg(long, default_value = "critical")]
    severity: String,
    #[arg(long, default_value = "nginx:1.21")]
    image: String,
    /// Cluster A's SLIM node: `host:port` or `slim://host:port` (a name is
    /// resolved with the system resolver).
    #[arg(long, env = "SLIM_NODE")]
    node: String,
    /// Who receives the finding.
    #[arg(long, default_value = "acme/eu-west/security-monitor")]
    to: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let source = IdentitySource::start(IdentitySourceConfig::spire(None))
        .await
        .context("SPIFFE Workload API (is SPIFFE_ENDPOINT_SOCKET set?)")?;
    let cfg = ClientConfig::for_url(
        &args.node,
        Name::parse("acme/eu-west/event-source")?,
        Credentials::Source(source),
    )
    .await?;
    let client = Client::connect(cfg).await.context("connect to the node")?;
    let event = serde_json::json!({
        "type": args.kind,
        "severity": args.severity,
        "image": args.image,
    });
    client
        .publish(
            &Name::parse(&args.to)?,
            Mode::Anycast,
            event.to_string().as_bytes(),
        )
        .await
        .context("publish")?;
    client.flush().await;
    // A no-route error arrives asynchronously: give it a moment to show up.
    if let Ok(Some(slim_client::Event::Error(e))) =
        tokio::time::timeout(std::time::Duration::from_millis(500), client.recv()).await
    {
        anyhow::bail!("the node refused the event: {}", e.reason);
    }
    println!("injected {event} -> {}", args.to);
    client.close().await;
    Ok(())
}
