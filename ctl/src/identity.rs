//! `slimctl identity show|check`: this machine's workload identity, and
//! whether a node accepts it (with the reason, in words, when it does not).

use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use slim_auth::explain::{relative, rfc3339};
use slim_client::{Client, ClientConfig, ClientError};
use slim_wire::Name;

use crate::args::{ConnectArgs, IdentityArgs};
use crate::output::{Failure, Output, print_json};

#[derive(Subcommand, Debug)]
pub(crate) enum IdentityCmd {
    /// What identity this machine would present: SPIFFE ID, trust domain,
    /// expiry (RFC 3339). Exits 1 when the SVID has expired.
    #[command(after_help = "Examples:\n  \
        slimctl identity show --identity ./svid\n  \
        SPIFFE_ENDPOINT_SOCKET=unix:///run/spire/agent.sock slimctl identity show -o json")]
    Show {
        #[command(flatten)]
        id: IdentityArgs,
    },
    /// Connects to a node with this identity and explains the outcome: who
    /// the node is, who it took us for, or which side refused and why.
    /// Exits 0 only when the node accepted us.
    #[command(after_help = "Examples:\n  \
        slimctl identity check --node 127.0.0.1:4500 --identity ./svid\n  \
        slimctl identity check --node slim://node.acme:4500 -o json")]
    Check {
        #[command(flatten)]
        conn: ConnectArgs,
    },
}

pub(crate) async fn run(cmd: IdentityCmd, out: Output) -> Result<()> {
    match cmd {
        IdentityCmd::Show { id } => show(id, out).await,
        IdentityCmd::Check { conn } => check(conn, out).await,
    }
}

fn expired(t: SystemTime) -> bool {
    t <= SystemTime::now()
}

async fn show(id: IdentityArgs, out: Output) -> Result<()> {
    let src = id.source().await?;
    let cur = src.current();
    let bundles: Vec<String> = cur.bundles.trust_domains().map(str::to_owned).collect();
    if out == Output::Json {
        print_json(&serde_json::json!({
            "spiffe_id": cur.spiffe_id.to_string(),
            "trust_domain": cur.spiffe_id.trust_domain(),
            "not_after": rfc3339(cur.not_after),
            "expires": relative(cur.not_after),
            "expired": expired(cur.not_after),
            "source": src.kind(),
            "bundles": bundles,
        }))?;
    } else {
        println!("spiffe_id     {}", cur.spiffe_id);
        println!("trust_domain  {}", cur.spiffe_id.trust_domain());
        println!(
            "expires       {} ({})",
            rfc3339(cur.not_after),
            relative(cur.not_after)
        );
        println!("source        {}", src.kind());
        println!("bundles       {}", bundles.join(", "));
    }
    let not_after = cur.not_after;
    let spiffe_id = cur.spiffe_id.to_string();
    src.shutdown().await;
    if expired(not_after) {
        return Err(Failure::Reported(format!(
            "the SVID of {spiffe_id} expired at {} ({}): renew it (check the SPIFFE agent that rotates it, or issue a new one)",
            rfc3339(not_after),
            relative(not_after)
        ))
        .into());
    }
    Ok(())
}

async fn check(conn: ConnectArgs, out: Output) -> Result<()> {
    let src = conn.id.source().await?;
    let cur = src.current();
    let ours = cur.spiffe_id.to_string();
    let our_expiry = cur.not_after;
    let bundles: Vec<String> = cur.bundles.trust_domains().map(str::to_owned).collect();
    drop(cur);

    if expired(our_expiry) {
        src.shutdown().await;
        // The node would refuse it; say why without asking it.
        bail!(
            "our SVID ({ours}) expired at {} ({}): renew it before connecting",
            rfc3339(our_expiry),
            relative(our_expiry)
        );
    }
    // The same source connects: one Workload API session, not two.
    let creds = conn.id.credentials_from(src);
    let name = Name::parse(&conn.as_name()).context("invalid --as name")?;
    let node = conn.node();
    // `connect` makes one attempt: a diagnosis, not a retry loop.
    let cfg = ClientConfig::for_url(&node, name, creds)
        .await
        .with_context(|| format!("cannot resolve {node}"))?;
    let result = Client::connect(cfg).await;
    let (ok, verdict, node_id, authenticated_as) = match &result {
        Ok(c) => {
            let node = c.node_identity();
            let as_ = c.authenticated_as();
            let node_text = match &node {
                Some(n) => format!(
                    "the node {} (certificate expires {}, {})",
                    n.spiffe_id,
                    n.not_after.map(rfc3339).unwrap_or_else(|| "?".into()),
                    n.not_after.map(relative).unwrap_or_default()
                ),
                None => "the node".into(),
            };
            (
                true,
                format!(
                    "ok: {node_text} accepted us as {}",
                    as_.as_deref().unwrap_or("an unauthenticated client")
                ),
                node.map(|n| n.spiffe_id),
                as_,
            )
        }
        Err(ClientError::Rejected { code, reason }) => (
            false,
            format!(
                "refused after the handshake (TLS was fine): the node's policy said {}: {reason}",
                code.as_str()
            ),
            None,
            None,
        ),
        Err(e) => (false, format!("refused: {e}"), None, None),
    };
    if out == Output::Json {
        print_json(&serde_json::json!({
            "spiffe_id": ours,
            "not_after": rfc3339(our_expiry),
            "expired": expired(our_expiry),
            "bundles": bundles,
            "node": node,
            "ok": ok,
            "node_spiffe_id": node_id,
            "authenticated_as": authenticated_as,
            "verdict": verdict,
        }))?;
    } else {
        println!("identity  {ours}");
        println!(
            "expires   {} ({})",
            rfc3339(our_expiry),
            relative(our_expiry)
        );
        println!("bundles   {}", bundles.join(", "));
        println!("node      {node}");
        println!("verdict   {verdict}");
    }
    if let Ok(c) = result {
        c.close().await;
        return Ok(());
    }
    Err(Failure::Reported(format!("{node} did not accept {ours}")).into())
}
