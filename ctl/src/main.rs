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
mod context;
mod health;
mod identity;
mod output;
mod rpc;
mod signal;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use slim_auth::{DevCa, SpiffeId};
use slim_client::{Client, Delivery, Event};
use slim_wire::{ErrorCode, Mode, Name};

use args::{ConnectArgs, parse_duration};
use output::{Failure, Output, print_json};
use signal::then_close;

/// The version and, when built from a git checkout, the commit (build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("SLIMCTL_GIT_SHA"),
    ")"
);

#[derive(Parser, Debug)]
#[command(
    name = "slimctl",
    version = VERSION,
    about = "Operate a SLIM fabric",
    after_help = "Examples:
  slimctl context add dev --node 127.0.0.1:4500 --identity target/dev-identity/ops --select
  slimctl channel publish acme/news/alerts 'hello'
  slimctl channel subscribe acme/news/alerts --count 1
  slimctl request acme/tools/echo 'ping' --timeout 2s
  slimctl node list -o json
  source <(slimctl completion bash)"
)]
struct Cli {
    /// Output format for commands that print data (errors too: JSON on stdout).
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Use this context's settings (see `slimctl context`) instead of the
    /// selected one.
    #[arg(long, global = true, env = "SLIM_CONTEXT", value_name = "NAME")]
    context: Option<String>,
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
    #[command(after_help = "Examples:
  slimctl request acme/tools/echo 'ping'
  echo '{\"q\": 1}' | slimctl request acme/tools/lookup - --timeout 2s -o json")]
    Request(rpc::RequestArgs),
    /// Answer requests sent to a service name, echoing each request, replying
    /// --reply TEXT or the output of --command, until stopped or --count.
    #[command(
        visible_alias = "respond",
        after_help = "Examples:
  slimctl reply acme/tools/echo
  slimctl reply acme/tools/date --command date --count 1
  slimctl reply acme/tools/upper --command 'tr a-z A-Z'"
    )]
    Reply(rpc::ReplyArgs),
    /// Named sets of connection settings (node, controller, identity).
    #[command(subcommand)]
    Context(context::ContextCmd),
    /// Print a shell completion script.
    #[command(after_help = "Examples:
  source <(slimctl completion bash)
  slimctl completion zsh > \"${fpath[1]}/_slimctl\"
  slimctl completion fish > ~/.config/fish/completions/slimctl.fish")]
    Completion {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// slimctl's version and the commit it was built from.
    #[command(after_help = "Examples:\n  slimctl version\n  slimctl version -o json")]
    Version,
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
    #[command(after_help = "Examples:
  slimctl audit --since 1h
  slimctl audit --channel acme/chat/incident --since 2026-01-02T03:04:05Z -o json")]
    Audit(admin::AuditArgs),
    /// GET a node's (or the controller's) /healthz; exit 0 only on 200 (the
    /// images' HEALTHCHECK: they have no HTTP client).
    #[command(after_help = "Examples:
  slimctl health
  slimctl health http://127.0.0.1:9465/healthz --timeout 1s")]
    Health(health::HealthArgs),
}

#[derive(Subcommand, Debug)]
enum DevSpireCmd {
    /// Serve SVIDs issued by a development CA on a Unix socket until stopped.
    #[command(after_help = "Example:
  slimctl dev-spire serve --socket /tmp/spire.sock --spiffe-id spiffe://acme.example/ops/dev")]
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
    #[command(
        after_help = "Example:\n  slimctl dev-ca init --trust-domain acme.example --dir dev-ca"
    )]
    Init {
        /// The trust domain the CA issues for (e.g. acme.example).
        #[arg(long)]
        trust_domain: String,
        /// Where to write the CA.
        #[arg(long, default_value = "dev-ca")]
        dir: PathBuf,
    },
    /// Issue an X.509-SVID into the spiffe-helper layout (tls.crt, tls.key, svid_bundle.pem).
    #[command(after_help = "Example:
  slimctl dev-ca issue spiffe://acme.example/agent/monitor --ca dev-ca --out ids/monitor --ttl 24h")]
    Issue {
        /// The SVID's SPIFFE ID, e.g. spiffe://example.org/agent/monitor.
        spiffe_id: String,
        /// The development CA's directory.
        #[arg(long, default_value = "dev-ca")]
        ca: PathBuf,
        /// Directory to write the SVID to.
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
    #[command(after_help = "Example:\n  slimctl dev-ca setup --dir target/dev-identity")]
    Setup {
        /// Where to put the CA and the SVIDs.
        #[arg(long, default_value = "target/dev-identity")]
        dir: PathBuf,
        /// The trust domain of a CA created here.
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
    #[command(after_help = "Examples:
  slimctl channel subscribe acme/news/alerts
  slimctl channel subscribe acme/news/alerts --count 1 --timeout 30s -o json")]
    Subscribe {
        /// The name to subscribe to (`org/namespace/service[/instance]`;
        /// matched exactly: no wildcards).
        name: String,
        #[command(flatten)]
        conn: ConnectArgs,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Exit (with an error) after this long without a message.
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
    },
    /// Publish PAYLOAD (or stdin with "-") to NAME. Nobody subscribed is a
    /// success with a note on stderr, unless --require-route.
    #[command(after_help = "Examples:
  slimctl channel publish acme/news/alerts 'disk full on db-1'
  date | slimctl channel publish acme/news/alerts - --require-route
  slimctl channel publish acme/tools/worker job-1 --mode anycast
  slimctl channel publish acme/chat/incident 'ack' --session --moderator acme/chat/mod/0")]
    Publish {
        /// The name to publish to (`org/namespace/service[/instance]`; no wildcards).
        name: String,
        /// The message: text, or "-" to read it from stdin.
        payload: String,
        #[command(flatten)]
        conn: ConnectArgs,
        /// Who receives it: multicast (every subscriber), anycast (one
        /// subscriber of the service), unicast (the one full name given).
        #[arg(long, value_enum, default_value_t = CliMode::Multicast)]
        mode: CliMode,
        /// Exit non-zero when nobody subscribes to NAME (the node's
        /// `no_route` answer).
        #[arg(long, conflicts_with = "session")]
        require_route: bool,
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
    #[command(after_help = "Examples:
  slimctl channel create acme/chat/incident --allow 'spiffe://acme.example/agent/*'
  slimctl channel create acme/chat/ops --invite acme/ops/alice --no-mls")]
    Create(channel::CreateArgs),
    /// Join a group channel by request and print its messages with sender
    /// name and SPIFFE ID.
    #[command(after_help = "Example:
  slimctl channel join acme/chat/incident --moderator acme/chat/mod/0 --count 10")]
    Join(channel::JoinArgs),
    /// A channel's subscribers as the nodes report them to the controller
    /// (does not join); --join reads the MLS roster by joining.
    #[command(after_help = "Examples:
  slimctl channel members acme/chat/incident
  slimctl channel members acme/chat/incident --join --moderator acme/chat/mod/0 -o json")]
    Members(channel::MembersArgs),
    /// Channels with subscribers anywhere in the fleet (from the
    /// controller); clients' own and service names only with --all.
    #[command(
        after_help = "Examples:\n  slimctl channel list\n  slimctl channel list --all -o json"
    )]
    List {
        /// Also list clients' own names (their inboxes) and service names.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        ctl: admin::ControllerArgs,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CliMode {
    /// One subscriber of the name's service (load balancing).
    Anycast,
    /// Every subscriber of the name.
    Multicast,
    /// The one client whose full name (with instance) is given.
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

/// Whether the raw arguments ask for JSON output (for errors found before
/// the arguments could be parsed).
fn json_requested() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .any(|w| (w[0] == "-o" || w[0] == "--output") && w[1] == "json")
        || args.iter().any(|a| a == "--output=json" || a == "-ojson")
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind as K;
            let usage = !matches!(
                e.kind(),
                K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand
            );
            if usage && json_requested() {
                // The error without the usage and "--help" hints, on one line.
                let msg = e.render().to_string();
                let msg = msg.split("\n\nUsage:").next().unwrap_or_default();
                let msg = msg.strip_prefix("error: ").unwrap_or(msg);
                let msg = msg.split_whitespace().collect::<Vec<_>>().join(" ");
                println!(
                    "{}",
                    serde_json::json!({"error": {"kind": "usage", "message": msg}})
                );
                return ExitCode::from(2);
            }
            e.exit();
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colour only at a terminal (not in captured output or files).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let out = cli.output;
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            output::report_error(&e, out);
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let out = cli.output;
    match cli.cmd {
        Cmd::Context(c) => return context::run(c, cli.context.as_deref(), out),
        Cmd::Completion { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "slimctl", &mut script);
            // A reader that stops early (`| head`) is not an error.
            return match std::io::stdout().write_all(&script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(()),
            };
        }
        Cmd::Version => return version(out),
        _ => {}
    }
    match cli.cmd {
        // These take no connection settings: no context file is read (the
        // images' HEALTHCHECK runs `health` without a home directory).
        Cmd::DevCa(c) => dev_ca(c, out),
        Cmd::Health(a) => health::health(a),
        Cmd::DevSpire(c) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(dev_spire(c)),
        cmd => {
            context::activate(cli.context.as_deref())?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async move {
                match cmd {
                    Cmd::Channel(c) => channel(c, out).await,
                    Cmd::Request(a) => rpc::request(a, out).await,
                    Cmd::Reply(a) => rpc::reply(a, out).await,
                    Cmd::Identity(c) => identity::run(c, out).await,
                    Cmd::Node(c) => admin::node(c, out).await,
                    Cmd::Link(c) => admin::link(c, out).await,
                    Cmd::Route(c) => admin::route(c, out).await,
                    Cmd::Audit(a) => admin::audit(a, out).await,
                    Cmd::DevCa(_)
                    | Cmd::Health(_)
                    | Cmd::DevSpire(_)
                    | Cmd::Context(_)
                    | Cmd::Completion { .. }
                    | Cmd::Version => unreachable!("handled above"),
                }
            })
        }
    }
}

fn version(out: Output) -> Result<()> {
    if out == Output::Json {
        print_json(&serde_json::json!({
            "name": "slimctl",
            "version": env!("CARGO_PKG_VERSION"),
            "git_sha": env!("SLIMCTL_GIT_SHA"),
        }))
    } else {
        println!("slimctl {VERSION}");
        Ok(())
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
                Err(_) => {
                    return Err(Failure::Timeout(format!(
                        "no message within {} ({seen} received)",
                        humantime::format_duration(t)
                    ))
                    .into());
                }
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
        ChannelCmd::List { all, ctl } => return admin::channel_list(ctl, all, out).await,
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
            require_route,
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
                // The node handles a connection's frames in order and answers
                // a ping only after every frame before it: once the pong is
                // in, so is any refusal of the publish (no route, policy).
                client.ping().await?;
                let refusal = client.take_errors(|id| id == msg_id).into_iter().next();
                Ok((msg_id, refusal))
            })
            .await?;
            let Some((msg_id, refusal)) = sent else {
                return Err(Failure::Interrupted.into());
            };
            let no_route = match refusal {
                None => false,
                Some(e) if e.code == ErrorCode::NO_ROUTE && !require_route => {
                    eprintln!(
                        "note: nobody subscribes to {name} (the node answered no_route), so nobody received the message; --require-route makes this an error"
                    );
                    true
                }
                Some(e) if e.code == ErrorCode::NO_ROUTE => {
                    return Err(Failure::NoRoute {
                        name: name.to_string(),
                        reason: e.reason,
                    }
                    .into());
                }
                Some(e) => {
                    return Err(Failure::Refused {
                        code: e.code.as_str().to_owned(),
                        reason: e.reason,
                    }
                    .into());
                }
            };
            if out == Output::Json {
                print_json(&serde_json::json!({
                    "published": name.as_str(),
                    "bytes": payload.len(),
                    "msg_id": msg_id,
                    "no_route": no_route,
                }))?;
            } else {
                println!("published {} bytes to {name}", payload.len());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command says what it does, every leaf command shows examples,
    /// and every argument has help: fails when one is added without.
    #[test]
    fn every_command_and_argument_has_help_and_every_command_examples() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() {
                missing.push(format!("{path}: no description"));
            }
            let leaf = !cmd.has_subcommands();
            if leaf && cmd.get_after_help().is_none() {
                missing.push(format!("{path}: no examples (after_help)"));
            }
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path}: argument {id} has no help"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_name() != "help" {
                    walk(sub, &path, missing);
                }
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        // The root has no `about` requirement beyond its own.
        walk(&cmd, "", &mut missing);
        assert!(missing.is_empty(), "missing help:\n{}", missing.join("\n"));
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn node_always_means_an_address_and_route_list_filters_by_node_id() {
        let cli = Cli::try_parse_from(["slimctl", "route", "list", "--node-id", "eu-1"]).unwrap();
        assert!(matches!(cli.cmd, Cmd::Route(admin::RouteCmd::List { .. })));
        assert!(Cli::try_parse_from(["slimctl", "route", "list", "--node", "eu-1"]).is_err());
    }
}
