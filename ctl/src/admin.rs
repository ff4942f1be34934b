//! Admin commands: they talk to the controller (QUIC + mutual TLS, an admin
//! SPIFFE ID), never to a node. A large answer arrives in pages, put back
//! together before printing. `--output json` prints the controller's answer
//! as one JSON array (times in Unix milliseconds).

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use slim_auth::{ServerMatch, SpiffeId};
use slim_controller::ControllerConn;
use slim_controller::proto::{AdminRequest, AdminResponse, Limits, unix_ms};

use crate::args::{IdentityArgs, parse_duration};
use crate::context::active;
use crate::output::{Output, Table, print_json};

/// Where the controller is and who we are.
#[derive(clap::Args, Debug)]
pub(crate) struct ControllerArgs {
    /// The controller's QUIC address: `host:port` (a name or an IP; every
    /// address the name resolves to is tried) [default: 127.0.0.1:4600].
    #[arg(long, env = "SLIMCTL_CONTROLLER", value_name = "ADDR")]
    controller: Option<String>,
    /// TLS server name (SNI) of the controller [default: slim-controller].
    #[arg(long, value_name = "NAME")]
    controller_name: Option<String>,
    /// Pin the controller's SPIFFE ID (default: any SVID of our trust domain).
    #[arg(long, value_name = "SPIFFE-ID")]
    controller_id: Option<String>,
    #[command(flatten)]
    pub(crate) id: IdentityArgs,
}

impl ControllerArgs {
    fn controller(&self) -> String {
        self.controller
            .clone()
            .or_else(|| active().and_then(|c| c.controller.clone()))
            .unwrap_or_else(|| "127.0.0.1:4600".into())
    }

    fn controller_name(&self) -> String {
        self.controller_name
            .clone()
            .or_else(|| active().and_then(|c| c.controller_name.clone()))
            .unwrap_or_else(|| "slim-controller".into())
    }

    fn controller_id(&self) -> Option<String> {
        self.controller_id
            .clone()
            .or_else(|| active().and_then(|c| c.controller_id.clone()))
    }
}

#[derive(Subcommand, Debug)]
pub(crate) enum NodeCmd {
    /// Registered nodes: cluster, identity, endpoint, connected, links.
    #[command(
        after_help = "Examples:\n  slimctl node list\n  slimctl node list -o json --controller ctl.prod:4600"
    )]
    List {
        #[command(flatten)]
        ctl: ControllerArgs,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum LinkCmd {
    /// Peer links as the nodes report them (each side reports its end).
    #[command(after_help = "Example:\n  slimctl link list")]
    List {
        #[command(flatten)]
        ctl: ControllerArgs,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum RouteCmd {
    /// One node's routing table: names, local subscribers, remote peers.
    #[command(after_help = "Example:\n  slimctl route list --node-id eu-west-node")]
    List {
        /// The node's id, as `node list` shows it (`--node` is always an
        /// address to connect to).
        #[arg(long, value_name = "ID")]
        node_id: String,
        #[command(flatten)]
        ctl: ControllerArgs,
    },
}

#[derive(clap::Args, Debug)]
pub(crate) struct AuditArgs {
    /// Only this channel (exact name).
    #[arg(long)]
    channel: Option<String>,
    /// Only events at or after T: RFC 3339 (2026-01-02T03:04:05Z), or an age
    /// such as 10m, 2h, 1d.
    #[arg(long)]
    since: Option<String>,
    /// At most this many records (the newest).
    #[arg(long, default_value_t = 1000)]
    limit: u32,
    #[command(flatten)]
    ctl: ControllerArgs,
}

pub(crate) async fn node(cmd: NodeCmd, out: Output) -> Result<()> {
    let NodeCmd::List { ctl } = cmd;
    let AdminResponse::Nodes(nodes) = request(&ctl, AdminRequest::ListNodes).await? else {
        bail!("unexpected answer from the controller");
    };
    if out == Output::Json {
        return print_json(&nodes);
    }
    let rows = nodes
        .iter()
        .map(|n| {
            vec![
                n.node_id.clone(),
                n.cluster.clone(),
                n.spiffe_id.clone(),
                match (&n.external_host, n.external_endpoint) {
                    (Some(h), _) => h.clone(),
                    (None, Some(a)) => a.to_string(),
                    (None, None) => "- (dials out)".into(),
                },
                if n.connected {
                    "yes".into()
                } else {
                    "no".into()
                },
                ago(n.last_seen_ms),
                n.links_up.to_string(),
                n.dials.join(","),
            ]
        })
        .collect();
    table(
        &[
            "NODE",
            "CLUSTER",
            "SPIFFE ID",
            "ENDPOINT",
            "CONNECTED",
            "LAST SEEN",
            "LINKS UP",
            "DIALS",
        ],
        rows,
    );
    Ok(())
}

pub(crate) async fn link(cmd: LinkCmd, out: Output) -> Result<()> {
    let LinkCmd::List { ctl } = cmd;
    let AdminResponse::Links(links) = request(&ctl, AdminRequest::ListLinks).await? else {
        bail!("unexpected answer from the controller");
    };
    if out == Output::Json {
        return print_json(&links);
    }
    let rows = links
        .iter()
        .map(|l| {
            vec![
                l.node_id.clone(),
                l.link.peer_node_id.clone(),
                format!("{:?}", l.link.direction).to_lowercase(),
                format!("{:?}", l.link.state).to_lowercase(),
                l.link.remote_addr.to_string(),
                l.link.up_since_ms.map_or("-".into(), ago),
                l.link.frames_in.to_string(),
                l.link.frames_out.to_string(),
                l.link.drops.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "NODE",
            "PEER",
            "DIRECTION",
            "STATE",
            "REMOTE",
            "UP FOR",
            "IN",
            "OUT",
            "DROPS",
        ],
        rows,
    );
    Ok(())
}

pub(crate) async fn route(cmd: RouteCmd, out: Output) -> Result<()> {
    let RouteCmd::List { node_id, ctl } = cmd;
    let AdminResponse::Routes { routes, .. } =
        request(&ctl, AdminRequest::ListRoutes { node: node_id }).await?
    else {
        bail!("unexpected answer from the controller");
    };
    if out == Output::Json {
        return print_json(&routes);
    }
    let rows = routes
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.local_subscribers.to_string(),
                r.remote_peers.join(","),
            ]
        })
        .collect();
    table(&["NAME", "LOCAL SUBSCRIBERS", "REMOTE PEERS"], rows);
    Ok(())
}

/// What a name in the controller's channel list is. Every client's own
/// name (`org/ns/service/instance`, its inbox for unicast) and its service
/// name (for anycast) are subscribed too; they are not channels.
fn name_kind(name: &str, all: &std::collections::HashSet<&str>) -> &'static str {
    match slim_wire::Name::parse(name) {
        Ok(n) if n.has_instance() => "client",
        // A service name some connected client registered under.
        Ok(_)
            if all.iter().any(|o| {
                o.len() > name.len() + 1 && o.starts_with(name) && o.as_bytes()[name.len()] == b'/'
            }) =>
        {
            "service"
        }
        _ => "channel",
    }
}

pub(crate) async fn channel_list(ctl: ControllerArgs, all: bool, out: Output) -> Result<()> {
    let AdminResponse::Channels(chans) = request(&ctl, AdminRequest::ListChannels).await? else {
        bail!("unexpected answer from the controller");
    };
    let names: std::collections::HashSet<&str> = chans.iter().map(|c| c.name.as_str()).collect();
    let kinds: Vec<&str> = chans.iter().map(|c| name_kind(&c.name, &names)).collect();
    let shown = chans
        .iter()
        .zip(&kinds)
        .filter(|(_, k)| all || **k == "channel");
    if out == Output::Json {
        let list: Vec<_> = shown
            .map(|(c, k)| {
                let mut v = serde_json::to_value(c).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("kind".into(), (*k).into());
                }
                v
            })
            .collect();
        return print_json(&list);
    }
    let rows = shown
        .map(|(c, k)| {
            let mut r = vec![
                c.name.clone(),
                c.subscribers.to_string(),
                c.nodes
                    .iter()
                    .map(|n| format!("{}({})", n.node_id, n.local_subscribers))
                    .collect::<Vec<_>>()
                    .join(","),
            ];
            if all {
                r.insert(1, (*k).to_string());
            }
            r
        })
        .collect();
    if all {
        table(&["NAME", "KIND", "SUBSCRIBERS", "NODES"], rows);
    } else {
        table(&["CHANNEL", "SUBSCRIBERS", "NODES"], rows);
        let hidden = kinds.iter().filter(|k| **k != "channel").count();
        if hidden > 0 {
            eprintln!("({hidden} client and service names left out; --all shows them)");
        }
    }
    Ok(())
}

/// `channel members` without joining: the channel name's subscribers as
/// the nodes report them to the controller (per node). Not the MLS roster.
pub(crate) async fn channel_subscribers(
    ctl: &ControllerArgs,
    name: &str,
    out: Output,
) -> Result<()> {
    let AdminResponse::Channels(chans) = request(ctl, AdminRequest::ListChannels).await? else {
        bail!("unexpected answer from the controller");
    };
    let found = chans.into_iter().find(|c| c.name == name);
    let (subscribers, nodes) = match &found {
        Some(c) => (c.subscribers, c.nodes.clone()),
        None => (0, Vec::new()),
    };
    if out == Output::Json {
        return print_json(&serde_json::json!({
            "channel": name,
            "source": "controller",
            "subscribers": subscribers,
            "nodes": nodes,
        }));
    }
    println!(
        "{name}: {subscribers} subscriber(s) as the nodes report them (not the MLS roster; --join reads that)"
    );
    table(
        &["NODE", "SUBSCRIBERS"],
        nodes
            .iter()
            .map(|n| vec![n.node_id.clone(), n.local_subscribers.to_string()])
            .collect(),
    );
    Ok(())
}

pub(crate) async fn audit(args: AuditArgs, out: Output) -> Result<()> {
    let since_ms = args.since.as_deref().map(parse_since).transpose()?;
    let req = AdminRequest::Audit {
        channel: args.channel,
        since_ms,
        limit: args.limit,
    };
    let AdminResponse::Audit { records, truncated } = request(&args.ctl, req).await? else {
        bail!("unexpected answer from the controller");
    };
    if out == Output::Json {
        return print_json(&records);
    }
    let rows = records
        .iter()
        .map(|r| {
            vec![
                rfc3339(r.at_ms),
                r.node_id.clone(),
                r.kind.as_str().into(),
                r.channel.clone().unwrap_or_else(|| "-".into()),
                r.client.clone(),
                r.spiffe_id.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        &["TIME", "NODE", "EVENT", "CHANNEL", "CLIENT", "SPIFFE ID"],
        rows,
    );
    if truncated {
        eprintln!("(older records left out; raise --limit or narrow with --since)");
    }
    Ok(())
}

/// RFC 3339, or an age relative to now.
fn parse_since(s: &str) -> Result<u64> {
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok((t.unix_timestamp_nanos() / 1_000_000).max(0) as u64);
    }
    let age = parse_duration(s)
        .map_err(|e| anyhow::anyhow!("--since: not RFC 3339 and not an age ({e})"))?;
    Ok(unix_ms(SystemTime::now()).saturating_sub(age.as_millis() as u64))
}

async fn request(ctl: &ControllerArgs, req: AdminRequest) -> Result<AdminResponse> {
    if ctl.id.jwt_audience_given() {
        bail!("the controller authenticates admins by X.509-SVID only (drop --jwt-audience)");
    }
    let src = ctl.id.source().await?;
    let server = match &ctl.controller_id() {
        Some(id) => ServerMatch::Exact(
            SpiffeId::parse(id).with_context(|| format!("invalid --controller-id {id:?}"))?,
        ),
        None => ServerMatch::TrustDomain(src.spiffe_id().trust_domain().to_owned()),
    };
    let tls = slim_auth::tls::client_config_from_source(
        &src,
        &[slim_controller::ALPN_CONTROLLER],
        server,
    )?;
    let timeout = Duration::from_secs(10);
    // The error says "cannot resolve ..." or "cannot connect to ... at ADDR".
    let conn = crate::signal::interruptible(async {
        Ok(ControllerConn::connect_host(
            &ctl.controller(),
            &ctl.controller_name(),
            tls,
            Limits::default(),
            timeout,
        )
        .await?)
    })
    .await;
    let mut conn = match conn {
        Ok(c) => c,
        Err(e) => {
            src.shutdown().await;
            return Err(e);
        }
    };
    // Closed on every way out, a signal included (the answer may be many
    // pages): the controller then drops the session at once.
    let answer = crate::signal::interruptible(async { Ok(conn.admin(req, timeout).await?) }).await;
    conn.close().await;
    src.shutdown().await;
    answer
}

fn rfc3339(ms: u64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| ms.to_string())
}

fn ago(ms: u64) -> String {
    let now = unix_ms(SystemTime::now());
    match now.checked_sub(ms) {
        Some(d) if d < 1000 => "now".into(),
        Some(d) if d < 120_000 => format!("{}s", d / 1000),
        Some(d) if d < 7_200_000 => format!("{}m", d / 60_000),
        Some(d) => format!("{}h", d / 3_600_000),
        None => "now".into(),
    }
}

fn table(head: &[&str], rows: Vec<Vec<String>>) {
    let mut t = Table::new(head);
    for r in rows {
        t.row(r);
    }
    t.print();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_own_and_service_names_are_told_from_channels() {
        let all: std::collections::HashSet<&str> = [
            "acme/chat/incident",
            "ops/slimctl/cli",
            "ops/slimctl/cli/7f3a",
            "acme/chat/incidents",
        ]
        .into_iter()
        .collect();
        assert_eq!(name_kind("acme/chat/incident", &all), "channel");
        assert_eq!(name_kind("acme/chat/incidents", &all), "channel");
        assert_eq!(name_kind("ops/slimctl/cli", &all), "service");
        assert_eq!(name_kind("ops/slimctl/cli/7f3a", &all), "client");
    }
}
