//! `slim-loadtest`: throughput of a SLIM node over real QUIC + mTLS, and of
//! nats-server (optionally with TLS) through async-nats, measured the same way
//! so that one run of `compare.sh` yields a ratio.
//!
//! ```text
//! slim-loadtest throughput --target slim://127.0.0.1:4500 --ca-dir DIR --pubs 1 --subs 100 --size 16 --node-pid PID
//! slim-loadtest throughput --target tls://127.0.0.1:4222 --ca-dir DIR --pubs 1 --subs 100 --size 16 --node-pid PID
//! slim-loadtest summarize results.jsonl
//! ```
#![forbid(unsafe_code)]

mod harness;
mod nats;
mod payload;
mod procfs;
mod serverstats;
mod slim;
mod summary;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use harness::{Control, CpuSetup, Mode, Plan, ServerStats};
use procfs::CpuProbe;

#[derive(Debug, Parser)]
#[command(
    name = "slim-loadtest",
    version,
    about = "SLIM load generator (and nats-server for comparison)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Publish as fast as possible for a while and count deliveries.
    Throughput(Box<ThroughputArgs>),
    /// SLIM ÷ NATS ratios from a file of `throughput --json` lines.
    Summarize {
        /// File with one JSON report per line.
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
struct ThroughputArgs {
    /// slim://HOST:PORT, nats://HOST:PORT or tls://HOST:PORT (NATS with TLS).
    #[arg(long)]
    target: Option<String>,
    /// Publisher connections.
    #[arg(long, default_value_t = 1)]
    pubs: usize,
    /// Publishing tasks per publisher connection (each its own sequence stream).
    #[arg(long, default_value_t = 1)]
    pub_tasks: usize,
    /// Subscriber connections.
    #[arg(long, default_value_t = 1)]
    subs: usize,
    /// Payload bytes per message (at least 12: stream id + sequence number).
    #[arg(long, default_value_t = 16)]
    size: usize,
    /// Measured window, e.g. 5s, 500ms, 1m.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Publishing before the measured window starts.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    #[arg(long, value_enum, default_value_t = Mode::Multicast)]
    mode: Mode,
    /// Process whose CPU time and peak RSS are reported (the node or nats-server).
    #[arg(long)]
    node_pid: Option<u32>,
    /// SLIM: this client's SVID in the spiffe-helper layout (shared by all connections).
    #[arg(long)]
    identity_dir: Option<PathBuf>,
    /// Dev CA directory (ca.crt, ca.key): SLIM clients get one SVID each from
    /// it, and NATS TLS uses ca.crt as root and an SVID from it as client cert.
    #[arg(long)]
    ca_dir: Option<PathBuf>,
    /// NATS TLS: CA certificate (PEM) that signed nats-server's certificate.
    #[arg(long)]
    nats_ca: Option<PathBuf>,
    /// NATS TLS: client certificate chain (PEM).
    #[arg(long)]
    nats_cert: Option<PathBuf>,
    /// NATS TLS: client private key (PEM).
    #[arg(long)]
    nats_key: Option<PathBuf>,
    /// SLIM name subscribed to; the NATS subject is the same with '.' for '/'.
    #[arg(long, default_value = "loadtest/bench/topic")]
    topic: String,
    /// After publishing stops, wait until nothing new arrived for this long...
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    drain_idle: Duration,
    /// ...or at most this long.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    drain_max: Duration,
    /// Server statistics endpoint HOST:PORT, read before and after the run:
    /// slim-node's metrics listener (/metrics), or nats-server's monitoring
    /// port (/varz, `nats-server -m PORT`).
    #[arg(long)]
    stats_addr: Option<SocketAddr>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Start a node in this process (on its own runtime, threads named
    /// slim-node) instead of connecting to --target.
    #[arg(long, hide = true)]
    spawn_node: bool,
    /// Worker threads of the in-process node's runtime (default: CPU count).
    #[arg(long, hide = true)]
    node_threads: Option<usize>,
    /// Worker threads of the load generator's runtime (default: CPU count).
    #[arg(long)]
    client_threads: Option<usize>,
}

/// `5s`, `250ms`, `1m`, `1.5s`, or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("bad duration {s:?}: {e}"))
}

#[derive(Debug, Clone)]
enum Target {
    Slim(SocketAddr),
    Nats { url: String, tls: bool },
}

fn parse_target(s: &str) -> Result<Target> {
    let (scheme, rest) = s
        .split_once("://")
        .with_context(|| format!("target {s:?} needs a scheme: slim://, nats:// or tls://"))?;
    match scheme {
        "slim" => {
            let addr = rest
                .to_socket_addrs()
                .with_context(|| format!("resolving {rest}"))?
                .next()
                .with_context(|| format!("{rest} resolves to no address"))?;
            Ok(Target::Slim(addr))
        }
        "nats" => Ok(Target::Nats {
            url: s.to_owned(),
            tls: false,
        }),
        "tls" => Ok(Target::Nats {
            url: s.to_owned(),
            tls: true,
        }),
        other => bail!("unknown target scheme {other:?}: use slim://, nats:// or tls://"),
    }
}

/// A short id so that concurrent runs against one node do not take over each
/// other's client names.
fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:x}", nanos ^ std::process::id().rotate_left(16))
}

fn runtime(name: &str, threads: Option<usize>) -> Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_all().thread_name(name);
    if let Some(n) = threads {
        b.worker_threads(n.max(1));
    }
    b.build().context("building a tokio runtime")
}

fn throughput(a: ThroughputArgs) -> Result<()> {
    if a.pubs == 0 || a.subs == 0 || a.pub_tasks == 0 {
        bail!("--pubs, --subs and --pub-tasks must be at least 1");
    }
    if a.duration.is_zero() {
        bail!("--duration must be positive");
    }
    payload::PayloadWriter::new(0, a.size)?;
    let plan = Plan {
        pubs: a.pubs,
        pub_tasks: a.pub_tasks,
        subs: a.subs,
        size: a.size,
        mode: a.mode,
        warmup: a.warmup,
        duration: a.duration,
        drain_idle: a.drain_idle,
        drain_max: a.drain_max,
    };
    let target = match (&a.target, a.spawn_node) {
        (Some(t), false) => parse_target(t)?,
        (Some(t), true) => match parse_target(t)? {
            Target::Slim(_) => {
                eprintln!("note: --spawn-node given; ignoring the address in --target {t}");
                Target::Slim("127.0.0.1:0".parse()?)
            }
            Target::Nats { .. } => bail!("--spawn-node only works with a slim target"),
        },
        (None, true) => Target::Slim("127.0.0.1:0".parse()?),
        (None, false) => bail!("--target is required (slim://, nats:// or tls://)"),
    };

    // The in-process node lives on its own runtime, built and dropped outside
    // the load generator's, so its threads can be told apart by name.
    let mut node_rt = None;
    let mut node = None;
    let report = match target {
        Target::Slim(mut addr) => {
            let ids = match (&a.ca_dir, &a.identity_dir) {
                (Some(dir), _) => slim::Identities::Ca(Arc::new(
                    slim_auth::DevCa::load(dir)
                        .with_context(|| format!("loading dev CA from {}", dir.display()))?,
                )),
                (None, Some(dir)) => slim::Identities::Shared(
                    slim_auth::Identity::from_files(dir)
                        .with_context(|| format!("loading identity from {}", dir.display()))?,
                ),
                (None, None) if a.spawn_node => slim::Identities::Ca(Arc::new(
                    slim_auth::DevCa::generate("example.org").context("generating a dev CA")?,
                )),
                (None, None) => bail!("a slim target needs --ca-dir DIR or --identity-dir DIR"),
            };
            let topic = slim_wire::Name::parse(&a.topic).context("--topic")?;
            let mut cpu = CpuSetup {
                probe: a.node_pid.map(CpuProbe::Pid),
                node_threads: None,
            };
            if a.spawn_node {
                let rt = runtime("slim-node", a.node_threads)?;
                let node_id = ids.get("node")?;
                let cfg = slim_actors::NodeConfig {
                    node_id: "loadtest-node".into(),
                    listen: addr,
                    ..Default::default()
                };
                let h = rt
                    .block_on(slim_actors::start(cfg, &node_id))
                    .context("starting the in-process node")?;
                addr = h.local_addr();
                node = Some(Arc::new(h));
                node_rt = Some(rt);
                if a.node_pid.is_some() {
                    eprintln!("note: --node-pid ignored with --spawn-node");
                }
                cpu = CpuSetup {
                    probe: Some(CpuProbe::SelfProcess),
                    node_threads: Some("slim-node".into()),
                };
            }
            let target_s = if a.spawn_node {
                format!("slim://{addr} (in-process node)")
            } else {
                format!("slim://{addr}")
            };
            let rt = runtime("loadgen", a.client_threads)?;
            let node2 = node.clone();
            let r = rt.block_on(async {
                let server = match a.stats_addr {
                    Some(sa) => Some(ServerStats::read(serverstats::Kind::Slim, sa).await?),
                    None => None,
                };
                let control = Control::new(&plan);
                let mut running =
                    slim::setup(addr, &topic, &ids, &plan, &control.ctl(), &run_id()).await?;
                if let Some(n) = node2 {
                    running.extra = Some(Box::new(move || {
                        let dropped = n.connections().iter().map(|c| c.dropped).sum();
                        [("node_slow_consumer_drops".to_owned(), dropped)].into()
                    }));
                }
                harness::run("slim", &target_s, &plan, control, running, &cpu, server).await
            });
            drop(rt);
            r?
        }
        Target::Nats { url, tls } => {
            let tls_cfg = if tls {
                Some(nats::tls_config(&nats::TlsFiles {
                    ca: a.nats_ca.clone(),
                    cert: a.nats_cert.clone(),
                    key: a.nats_key.clone(),
                    ca_dir: a.ca_dir.clone(),
                })?)
            } else {
                None
            };
            let subject = a.topic.replace('/', ".");
            let cpu = CpuSetup {
                probe: a.node_pid.map(CpuProbe::Pid),
                node_threads: None,
            };
            let rt = runtime("loadgen", a.client_threads)?;
            let r = rt.block_on(async {
                let server = match a.stats_addr {
                    Some(sa) => Some(ServerStats::read(serverstats::Kind::Nats, sa).await?),
                    None => None,
                };
                let control = Control::new(&plan);
                let running = nats::setup(&url, tls_cfg, &subject, &plan, &control.ctl()).await?;
                harness::run("nats", &url, &plan, control, running, &cpu, server).await
            });
            drop(rt);
            r?
        }
    };
    drop(node);
    if let Some(rt) = node_rt {
        rt.shutdown_timeout(Duration::from_secs(1));
    }
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
        eprintln!("{}", report.one_line());
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Throughput(a) => throughput(*a),
        Cmd::Summarize { file } => {
            print!("{}", summary::summarize(&file)?);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn targets() {
        assert!(matches!(
            parse_target("slim://127.0.0.1:4500").unwrap(),
            Target::Slim(a) if a.port() == 4500
        ));
        assert!(matches!(
            parse_target("tls://127.0.0.1:4222").unwrap(),
            Target::Nats { tls: true, .. }
        ));
        assert!(matches!(
            parse_target("nats://127.0.0.1:4222").unwrap(),
            Target::Nats { tls: false, .. }
        ));
        assert!(parse_target("http://x").is_err());
        assert!(parse_target("127.0.0.1:4500").is_err());
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let c = Cli::try_parse_from([
            "slim-loadtest",
            "throughput",
            "--target",
            "slim://127.0.0.1:4500",
            "--pubs",
            "2",
            "--subs",
            "100",
            "--duration",
            "2s",
            "--mode",
            "anycast",
            "--json",
        ])
        .unwrap();
        let Cmd::Throughput(a) = c.cmd else {
            panic!("wrong subcommand")
        };
        assert_eq!((a.pubs, a.subs, a.mode), (2, 100, Mode::Anycast));
        assert_eq!(a.duration, Duration::from_secs(2));
    }
}
