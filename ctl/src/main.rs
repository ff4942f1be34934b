//! `slimctl`: the operator and admin CLI. Talks to nodes through the SDK
//! (`slim-client`), like any agent; never links the node.
//!
//! Every way out of a command that holds a connection (done, error,
//! timeout, SIGINT/SIGTERM) closes it and waits briefly for the close to
//! reach the peer: a process that just exits leaves its connection, and the
//! names it holds, in the node until the node's idle timeout (30 s).
#![forbid(unsafe_code)]

mod admin;
mod args;
mod channel;
mod health;
mod identity;
mod output;
mod rpc;
mod signal;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;
use slim_auth::{DevCa, SpiffeId};
use slim_client::{Client, Delivery, Event};
use slim_wire::{Mode, Name};

use args::{ConnectArgs, parse_duration};
use output::{Output, print_json};
use signal::then_close;

#[derive(Parser, Debug)]
#[command(name = "slimctl", version, about = "Operate a SLIM fabric")]
struct Cli {
    /// Output format for commands that print data.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Development certificate authority (NOT for production: use SPIRE).
    #[command(subcommand, name = "dev-ca")]
    DevCa(DevCaCmd),
    /// Publish to and read from channels.
    #[command(subcommand)]
    Channel(ChannelCmd),
    /// Send one request to a service (any instance answers) and print the
    /// reply: request/reply over a reliable session (the SDK's RPC).
    Request(rpc::RequestArgs),
    /// Answer requests sent to this client's service name (--as), echoing
    /// each request or replying --reply, until stopped or --count.
    Respond(rpc::RespondArgs),
    /// This machine's workload identity.
    #[command(subcommand)]
    Identity(identity::IdentityCmd),
    /// A development SPIFFE Workload API server (stands in for a SPIRE agent).
    #[command(subcommand, name = "dev-spire")]
    DevSpire(DevSpireCmd),
    /// Nodes registered with the controller.
    #[command(subcommand)]
    Node(admin::NodeCmd),
    /// Peer links between nodes (from the controller).
    #[command(subcommand)]
    Link(admin::LinkCmd),
    /// A node's routes (from the controller).
    #[command(subcommand)]
    Route(admin::RouteCmd),
    /// The controller's audit trail of joins and leaves.
    Audit(admin::AuditArgs),
    /// GET a node's (or the controller's) /healthz; exit 0 only on 200 (the
    /// images' HEALTHCHECK: they have no HTTP client).
    Health(health::HealthArgs),
}

#[derive(Subcommand, Debug)]
enum DevSpireCmd {
    /// Serve SVIDs issued by a development CA on a Unix socket until stopped.
    Serve {
        /// Unix socket path to listen on.
        #[arg(long)]
        socket: PathBuf,
        /// SPIFFE ID(s) to serve; the first is the default SVID.
        #[arg(long = "spiffe-id", required = true)]
        spiffe_ids: Vec<String>,
        /// The development CA (created with `slimctl dev-ca init`).
        #[arg(long, default_value = "dev-ca")]
        ca: PathBuf,
        /// X.509-SVID lifetime.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
        /// Re-issue (rotate) every SVID this often.
        #[arg(long, value_parser = parse_duration)]
        rotate_every: Option<Duration>,
    },
}

#[derive(Subcommand, Debug)]
enum DevCaCmd {
    /// Create a CA for a trust domain (writes ca.crt and ca.key).
    Init {
        #[arg(long)]
        trust_domain: String,
        /// Where to write the CA.
        #[arg(long, default_value = "dev-ca")]
        dir: PathBuf,
    },
    /// Issue an X.509-SVID into the spiffe-helper layout (tls.crt, tls.key, svid_bundle.pem).
    Issue {
        /// e.g. spiffe://example.org/agent/monitor
        spiffe_id: String,
        #[arg(long, default_value = "dev-ca")]
        ca: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Lifetime, e.g. 30m, 1h, 24h.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
    },
    /// The development identities the configs in deploy/config use: a CA
    /// (created once, then reused) and SVIDs for the node, the controller,
    /// an operator and two agents, under DIR. Run from the repository root;
    /// run it again to renew them.
    Setup {
        #[arg(long, default_value = "target/dev-identity")]
        dir: PathBuf,
        #[arg(long, default_value = "acme.example")]
        trust_domain: String,
        /// SVID lifetime (nothing rotates these: re-run to renew).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
    },
}

/// `slimctl dev-ca setup`: sub-directory and SPIFFE ID path of each SVID.
/// The IDs are the ones deploy/config/policy.toml and controller.toml grant.
const DEV_IDENTITIES: &[(&str, &str)] = &[
    ("node", "admin/node"),
    ("controller", "controller"),
    ("ops", "ops/dev"),
    ("eu-monitor", "cluster-a/agent/security-monitor"),
    ("us-monitor", "cluster-b/agent/security-monitor"),
];

#[derive(Subcommand, Debug)]
enum ChannelCmd {
    /// Print each message published to NAME as it arrives.
    Subscribe {
        name: String,
        #[command(flatten)]
        conn: ConnectArgs,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Exit after this long without output.
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
    },
    /// Publish PAYLOAD (or stdin with "-") to NAME.
    Publish {
        name: String,
        payload: String,
        #[command(flatten)]
        conn: ConnectArgs,
        #[arg(long, value_enum, default_value_t = CliMode::Multicast)]
        mode: CliMode,
        /// Publish into the group channel NAME as a member: join (by
        /// request), publish (MLS-encrypted unless --no-mls), leave.
        #[arg(long)]
        session: bool,
        /// With --session: the moderator's full name.
        #[arg(long, requires = "session")]
        moderator: Option<String>,
        /// With --session: the channel is plaintext.
        #[arg(long, requires = "session")]
        no_mls: bool,
    },
    /// Create a group channel and run as its moderator until stopped,
    /// printing membership changes.
    Create(channel::CreateArgs),
    /// Join a group channel by request and print its messages with sender
    /// name and SPIFFE ID.
    Join(channel::JoinArgs),
    /// A group channel's members (joins by request, prints, leaves).
    Members(channel::MembersArgs),
    /// Channels with subscribers anywhere in the fleet (from the controller).
    List {
        #[command(flatten)]
        ctl: admin::ControllerArgs,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CliMode {
    Anycast,
    Multicast,
    Unicast,
}

impl From<CliMode> for Mode {
    fn from(m: CliMode) -> Mode {
        match m {
            CliMode::Anycast => Mode::Anycast,
            CliMode::Multicast => Mode::Multicast,
            CliMode::Unicast => Mode::Unicast,
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colour only at a terminal (not in captured output or files).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.cmd {
        Cmd::DevCa(c) => dev_ca(c, cli.output),
        Cmd::Health(a) => health::health(a),
        cmd => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async move {
                match cmd {
                    Cmd::Channel(c) => channel(c, cli.output).await,
                    Cmd::Request(a) => rpc::request(a, cli.output).await,
                    Cmd::Respond(a) => rpc::respond(a, cli.output).await,
                    Cmd::Identity(c) => identity::run(c, cli.output).await,
                    Cmd::DevSpire(c) => dev_spire(c).await,
                    Cmd::Node(c) => admin::node(c, cli.output).await,
                    Cmd::Link(c) => admin::link(c, cli.output).await,
                    Cmd::Route(c) => admin::route(c, cli.output).await,
                    Cmd::Audit(a) => admin::audit(a, cli.output).await,
                    Cmd::DevCa(_) | Cmd::Health(_) => unreachable!("handled above"),
                }
            })
        }
    }
}

fn dev_ca(cmd: DevCaCmd, out: Output) -> Result<()> {
    match cmd {
        DevCaCmd::Init { trust_domain, dir } => {
            let ca = DevCa::init(&dir, &trust_domain)
                .with_context(|| format!("cannot create a CA in {}", dir.display()))?;
            if out == Output::Json {
                print_json(&serde_json::json!({
                    "trust_domain": ca.trust_domain(),
                    "dir": dir,
                }))?;
            } else {
                println!(
                    "development CA for spiffe://{} written to {} (not for production)",
                    ca.trust_domain(),
                    dir.display()
                );
            }
        }
        DevCaCmd::Issue {
            spiffe_id,
            ca,
            out: out_dir,
            ttl,
        } => {
            let id = SpiffeId::parse(&spiffe_id)
                .with_context(|| format!("invalid SPIFFE ID {spiffe_id:?}"))?;
            let ca = DevCa::load(&ca)
                .with_context(|| format!("cannot load the CA in {}", ca.display()))?;
            let identity = ca.issue_to_dir(&id, ttl, &out_dir)?;
            let expires = time::OffsetDateTime::from(identity.not_after)
                .format(&time::format_description::well_known::Rfc3339)?;
            if out == Output::Json {
                print_json(&serde_json::json!({
                    "spiffe_id": identity.spiffe_id.to_string(),
                    "dir": out_dir,
                    "not_after": expires,
                }))?;
            } else {
                println!(
                    "issued {} to {} (expires {expires})",
                    identity.spiffe_id,
                    out_dir.display()
                );
            }
        }
        DevCaCmd::Setup {
            dir,
            trust_domain,
            ttl,
        } => {
            let ca_dir = dir.join("ca");
            // Reused when present: a new CA would invalidate every SVID
            // already handed to a running node or agent.
            let ca = if ca_dir.join(slim_auth::devca::CA_CERT_FILE).exists() {
                DevCa::load(&ca_dir)
                    .with_context(|| format!("cannot load the CA in {}", ca_dir.display()))?
            } else {
                DevCa::init(&ca_dir, &trust_domain)
                    .with_context(|| format!("cannot create a CA in {}", ca_dir.display()))?
            };
            if ca.trust_domain() != trust_domain {
                bail!(
                    "{} holds a CA for trust domain {}, not {trust_domain}; remove it or pass --trust-domain {}",
                    ca_dir.display(),
                    ca.trust_domain(),
                    ca.trust_domain()
                );
            }
            let mut issued = Vec::new();
            for (sub, path) in DEV_IDENTITIES {
                let id = SpiffeId::from_parts(&trust_domain, &format!("/{path}"))?;
                let out_dir = dir.join(sub);
                let identity = ca.issue_to_dir(&id, ttl, &out_dir)?;
                let expires = time::OffsetDateTime::from(identity.not_after)
                    .format(&time::format_description::well_known::Rfc3339)?;
                issued.push((identity.spiffe_id.to_string(), out_dir, expires));
            }
            if out == Output::Json {
                let list: Vec<_> = issued
                    .iter()
                    .map(
                        |(id, d, e)| serde_json::json!({"spiffe_id": id, "dir": d, "not_after": e}),
                    )
                    .collect();
                print_json(&serde_json::json!({
                    "trust_domain": trust_domain,
                    "ca": ca_dir,
                    "identities": list,
                }))?;
            } else {
                println!(
                    "development CA for spiffe://{trust_domain} in {} (not for production)",
                    ca_dir.display()
                );
                for (id, d, e) in &issued {
                    println!("issued {id} to {} (expires {e})", d.display());
                }
            }
        }
    }
    Ok(())
}

async fn connect(c: &ConnectArgs) -> Result<Client> {
    c.client().await
}

async fn dev_spire(cmd: DevSpireCmd) -> Result<()> {
    match cmd {
        DevSpireCmd::Serve {
            socket,
            spiffe_ids,
            ca,
            ttl,
            rotate_every,
        } => {
            let ids = spiffe_ids
                .iter()
                .map(|s| SpiffeId::parse(s).with_context(|| format!("invalid SPIFFE ID {s:?}")))
                .collect::<Result<Vec<_>>>()?;
            let ca = DevCa::load(&ca)
                .with_context(|| format!("cannot load the CA in {}", ca.display()))?;
            let mut cfg = slim_devspire::DevSpireConfig::new(&socket, ids[0].clone());
            cfg.ids = ids;
            cfg.svid_ttl = ttl;
            cfg.rotate_every = rotate_every;
            let server = slim_devspire::DevSpire::start(cfg, ca).await?;
            eprintln!("development Workload API (not SPIRE; for development and tests only)");
            println!("SPIFFE_ENDPOINT_SOCKET={}", server.endpoint());
            std::io::stdout().flush()?;
            tokio::signal::ctrl_c().await?;
            server.shutdown().await;
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct MessageOut<'a> {
    time: String,
    channel: &'a str,
    from: &'a str,
    from_identity: Option<&'a str>,
    mode: &'a str,
    payload: String,
    payload_encoding: &'a str,
}

/// `channel subscribe`: prints until `count` messages, `timeout` without
/// one (an error), or the connection ends.
async fn subscribe(
    client: &Client,
    name: &Name,
    count: Option<u64>,
    timeout: Option<Duration>,
    out: Output,
) -> Result<()> {
    client.subscribe(name).await?;
    eprintln!("subscribed to {name} as {}", client.name());
    let mut seen = 0u64;
    while count.is_none_or(|c| seen < c) {
        let ev = match timeout {
            Some(t) => match tokio::time::timeout(t, client.recv()).await {
                Ok(ev) => ev,
                Err(_) => bail!("no message within {t:?} ({seen} received)"),
            },
            None => client.recv().await,
        };
        match ev {
            Some(Event::Message(d)) => {
                print_delivery(&d, out)?;
                seen += 1;
            }
            Some(Event::Error(e)) => {
                eprintln!("node error ({}): {}", e.code.as_str(), e.reason)
            }
            None => bail!("connection closed"),
        }
    }
    Ok(())
}

fn print_delivery(d: &Delivery, out: Output) -> Result<()> {
    let now = time::OffsetDateTime::from(SystemTime::now())
        .format(&time::format_description::well_known::Rfc3339)?;
    let (payload, encoding) = match std::str::from_utf8(&d.payload) {
        Ok(s) if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => {
            (s.to_owned(), "text")
        }
        _ => (
            d.payload
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
            "hex",
        ),
    };
    if out == Output::Json {
        print_json(&MessageOut {
            time: now,
            channel: d.name.as_str(),
            from: d.from.as_str(),
            from_identity: d.from_identity.as_deref(),
            mode: d.mode.as_str(),
            payload,
            payload_encoding: encoding,
        })?;
    } else {
        println!(
            "{now} {} from {} [{}]: {}{payload}",
            d.name,
            d.from,
            d.from_identity.as_deref().unwrap_or("unauthenticated"),
            if encoding == "hex" { "0x" } else { "" }
        );
    }
    std::io::stdout().flush()?;
    Ok(())
}

async fn channel(cmd: ChannelCmd, out: Output) -> Result<()> {
    match cmd {
        ChannelCmd::List { ctl } => return admin::channel_list(ctl, out).await,
        ChannelCmd::Subscribe {
            name,
            conn,
            count,
            timeout,
        } => {
            let name = Name::parse(&name).context("invalid channel name")?;
            let client = connect(&conn).await?;
            then_close(&client, subscribe(&client, &name, count, timeout, out)).await?;
        }
        ChannelCmd::Create(a) => return channel::create(a, out).await,
        ChannelCmd::Join(a) => return channel::join(a, out).await,
        ChannelCmd::Members(a) => return channel::members(a, out).await,
        ChannelCmd::Publish {
            name,
            payload,
            conn,
            mode,
            session,
            moderator,
            no_mls,
        } => {
            let name = Name::parse(&name).context("invalid channel name")?;
            let payload = if payload == "-" {
                let mut b = Vec::new();
                std::io::stdin().read_to_end(&mut b)?;
                b
            } else {
                payload.into_bytes()
            };
            if session {
                return channel::publish(
                    &name,
                    &payload,
                    &conn,
                    moderator.as_deref(),
                    !no_mls,
                    out,
                )
                .await;
            }
            let client = connect(&conn).await?;
            let sent = then_close(&client, async {
                let msg_id = client.publish(&name, mode.into(), &payload).await?;
                client.flush().await;
                // A "no route" answer comes back quickly; wait briefly so the
                // operator learns that nobody received the message.
                let answer = tokio::time::timeout(Duration::from_millis(300), client.recv()).await;
                Ok(match answer {
                    Ok(Some(Event::Error(e))) if e.msg_id == Some(msg_id) => Err(e),
                    _ => Ok(msg_id),
                })
            })
            .await?;
            let msg_id = match sent {
                None => bail!("interrupted"),
                Some(Err(e)) => bail!("not delivered ({}): {}", e.code.as_str(), e.reason),
                Some(Ok(id)) => id,
            };
            if out == Output::Json {
                print_json(
                    &serde_json::json!({"published": name.as_str(), "bytes": payload.len(), "msg_id": msg_id}),
                )?;
            } else {
                println!("published {} bytes to {name}", payload.len());
            }
        }
    }
    Ok(())
}
