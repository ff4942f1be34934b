//! `slim-loadtest`: load scenarios against a SLIM node over real QUIC + mTLS,
//! and against nats-server (optionally with TLS) through async-nats, measured
//! the same way so that one run of `compare.sh` yields ratios.
//!
//! ```text
//! slim-loadtest throughput   --target slim://127.0.0.1:4500 --ca-dir DIR --subs 1 --size 16 --node-pid PID
//! slim-loadtest fanout       --target tls://127.0.0.1:4222  --ca-dir DIR --subs 100
//! slim-loadtest throughput   --target slim://... --ca-dir DIR --sweep-sizes 16,256,1024,4096 --plot sweep.svg
//! slim-loadtest latency      --target slim://... --ca-dir DIR --rate 1000 --duration 10s --plot lat.svg
//! slim-loadtest connections  --target slim://... --ca-dir DIR --conns 1000 --subs 10 --node-pid PID
//! slim-loadtest slow-consumer --target slim://... --ca-dir DIR --subs 10 --stats-addr 127.0.0.1:9464
//! slim-loadtest cross-node   --spawn-node --size 16            (two linked in-process nodes)
//! slim-loadtest cross-node   --target slim://A --sub-target slim://B --ca-dir DIR
//! slim-loadtest fleet --mode connect-leave --nodes 5,10,20,40 --json cl.json   (real processes)
//! slim-loadtest fleet --mode churn --nodes 20 --churn-rate 10 --duration 60s --stream-rate 200
//! slim-loadtest session     --spawn-node --messages 30000             (reliable p2p, bitset-checked)
//! slim-loadtest session     --target slim://A --rx-target slim://B --ca-dir DIR --rate 5000
//! slim-loadtest channel     --spawn-node --members 3 --messages 10000 (MLS group channel)
//! slim-loadtest attack --kind initial-flood --spawn-node --duration 30s --after 30s
//! slim-loadtest summarize results.jsonl
//! slim-loadtest plot results.jsonl --scenario 'rr 1000/s 16B' --out lat.svg
//! ```
#![forbid(unsafe_code)]

mod attack;
mod backend;
mod chart;
mod connections;
mod fleet;
mod harness;
mod latency;
mod nats;
mod payload;
mod plot;
mod procstat;
mod serverstats;
mod sessions;
mod slim;
mod summary;

mod util;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use backend::{Backend, Topic};
use harness::{Control, CpuSetup, Mode, Plan, ServerStats};
use procstat::CpuProbe;
use util::{parse_duration, run_id, runtime};

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
    /// 1 -> N multicast throughput: `throughput --pubs 1 --mode multicast`,
    /// --subs defaulting to 100.
    Fanout(Box<ThroughputArgs>),
    /// 1 -> S multicast where --stalled subscribers (default 1) never read:
    /// the others' delivery rate and loss, and the server's drop counters
    /// (with --stats-addr). --subs defaults to 10.
    SlowConsumer(Box<ThroughputArgs>),
    /// Federation: the same 1 -> 1 throughput run twice in one invocation,
    /// subscribers on the publishers' node, then on another node reached over
    /// a peer link; prints both and their ratio. With --spawn-node both nodes
    /// run in this process (the first dials the second); otherwise give
    /// --target (publishers) and --sub-target (subscribers), two linked nodes.
    CrossNode(Box<ThroughputArgs>),
    /// Open-loop request/reply at a fixed rate; latency percentiles measured
    /// from each request's scheduled send time.
    Latency(Box<LatencyArgs>),
    /// Open many idle connections: connect rate, and server memory per
    /// connection and per subscription (with --node-pid).
    Connections(Box<ConnectionsArgs>),
    /// A controller and N slim-node processes on 127.0.0.1 (the fleet files
    /// of deploy/fleet/): what one client connect + leave costs the fleet
    /// (--mode connect-leave), or clients churning beside a cross-node
    /// stream (--mode churn). Binaries from --bin-dir (default: next to
    /// this executable).
    Fleet(Box<FleetArgs>),
    /// A reliable point-to-point session carrying --messages
    /// sequence-numbered messages, at --rate or as fast as the window
    /// allows: delivered, in order, duplicates (bitset), lost,
    /// retransmissions, elapsed time, msgs/s. SLIM only.
    Session(Box<SessionArgs>),
    /// The same through a group channel (MLS unless --no-mls): the
    /// moderator publishes, each of --members members must get every
    /// message. SLIM only.
    Channel(Box<SessionArgs>),
    /// An attack on the node's UDP port (--kind) beside a legit
    /// request/reply stream, in three phases (baseline, attack, after):
    /// legit rate and p50/p99 per phase, a new client's join time, node RSS
    /// (--node-pid), keyword-matched metric deltas (--metrics-url), and
    /// pass/fail against the exposed-node goals.
    Attack(Box<attack::AttackArgs>),
    /// SLIM ÷ NATS ratios from a file of `--json` lines.
    Summarize {
        /// File with one JSON report per line.
        file: PathBuf,
    },
    /// An SVG chart of the reports in a file of `--json` lines.
    Plot {
        /// File with one JSON report per line.
        file: PathBuf,
        /// Only the reports of this scenario: its exact name, or else any
        /// scenario containing this text (e.g. "1->1 " for a size sweep).
        #[arg(long)]
        scenario: Option<String>,
        /// The SVG file to write.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Where to connect and what to report; shared by every scenario.
#[derive(Debug, Clone, Args)]
struct TargetArgs {
    /// slim://HOST:PORT, nats://HOST:PORT or tls://HOST:PORT (NATS with TLS).
    #[arg(long)]
    target: Option<String>,
    /// Server process (the node or nats-server) whose CPU time and memory
    /// are reported.
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
    /// Server statistics endpoint HOST:PORT: slim-node's metrics listener
    /// (/metrics), or nats-server's monitoring port (/varz, `nats-server -m PORT`).
    #[arg(long)]
    stats_addr: Option<SocketAddr>,
    /// Print one JSON object per run (a line each) instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write an SVG chart of the run to this file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Worker threads of the load generator's runtime (default: CPU count).
    #[arg(long)]
    client_threads: Option<usize>,
}

#[derive(Debug, Args)]
struct ThroughputArgs {
    #[command(flatten)]
    t: TargetArgs,
    /// Publisher connections.
    #[arg(long, default_value_t = 1)]
    pubs: usize,
    /// Publishing tasks per publisher connection (each its own sequence stream).
    #[arg(long, default_value_t = 1)]
    pub_tasks: usize,
    /// Subscriber connections [default: 1; fanout: 100; slow-consumer: 10].
    #[arg(long)]
    subs: Option<usize>,
    /// Subscribers (of --subs) that subscribe but never read [default: 0;
    /// slow-consumer: 1]. Multicast only.
    #[arg(long)]
    stalled: Option<usize>,
    /// Payload bytes per message (at least 12: stream id + sequence number).
    #[arg(long, default_value_t = 16)]
    size: usize,
    /// Run once per payload size, e.g. 16,256,1024,4096 (replaces --size);
    /// --plot then charts deliveries/s vs size.
    #[arg(long, value_delimiter = ',')]
    sweep_sizes: Option<Vec<usize>>,
    /// Measured window, e.g. 5s, 500ms, 1m.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Publishing before the measured window starts.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    #[arg(long, value_enum, default_value_t = Mode::Multicast)]
    mode: Mode,
    /// SLIM name subscribed to; the NATS subject is the same with '.' for '/'.
    #[arg(long, default_value = "loadtest/bench/topic")]
    topic: String,
    /// After publishing stops, wait until nothing new arrived for this long...
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    drain_idle: Duration,
    /// ...or at most this long.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    drain_max: Duration,
    /// Start a node in this process (on its own runtime, threads named
    /// slim-node) instead of connecting to --target.
    #[arg(long, hide = true)]
    spawn_node: bool,
    /// Worker threads of the in-process node's runtime (default: CPU count).
    #[arg(long, hide = true)]
    node_threads: Option<usize>,
    /// SLIM: subscribers connect to this node (slim://HOST:PORT) instead of
    /// --target; the publishers' node reaches it over a peer link.
    #[arg(long)]
    sub_target: Option<String>,
    /// This run puts subscribers on the other node (set by `cross-node`).
    #[arg(skip)]
    cross: bool,
}

#[derive(Debug, Args)]
struct LatencyArgs {
    #[command(flatten)]
    t: TargetArgs,
    /// Requests per second, sent on a fixed schedule whatever the replies do.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Measured window.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Requests at the same rate before the measured window (not recorded).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// A request not answered this long after its scheduled send time is a timeout.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    timeout: Duration,
    /// Request (and reply) payload bytes, at least 12.
    #[arg(long, default_value_t = 16)]
    size: usize,
    /// SLIM name the responder subscribes to (NATS: '.' for '/').
    #[arg(long, default_value = "loadtest/bench/rpc")]
    topic: String,
    /// The sender busy-waits for the last this-many µs before each send
    /// instead of sleeping (nanosleep overshoots by 50-100 µs, which every
    /// request would be charged), at the cost of that much CPU per request
    /// (0: sleep only).
    #[arg(long, default_value_t = 150)]
    spin_us: u64,
}

#[derive(Debug, Args)]
struct SessionArgs {
    #[command(flatten)]
    t: TargetArgs,
    /// Messages to send, numbered 0..N.
    #[arg(long, default_value_t = 10_000)]
    messages: u64,
    /// Messages per second; 0: as fast as the window allows.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Payload bytes per message (at least 8: the sequence number).
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// session: the reliable window (messages in flight) [default: the
    /// SDK's, 256]. channel: most messages published and not yet delivered
    /// to every member [default: 512] (channels have no flow control; the
    /// sender keeps 1024 for retransmission).
    #[arg(long)]
    window: Option<usize>,
    /// session: end-to-end MLS on the session.
    #[arg(long)]
    mls: bool,
    /// channel: plaintext channel (no MLS group).
    #[arg(long)]
    no_mls: bool,
    /// channel: members besides the moderator (the publisher).
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// session: the receiver connects to this node (slim://HOST:PORT)
    /// instead of --target, which reaches it over a peer link.
    #[arg(long)]
    rx_target: Option<String>,
    /// Start a node in this process (on its own runtime) instead of
    /// connecting to --target.
    #[arg(long)]
    spawn_node: bool,
    /// Give up on the run after this long.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(Debug, Args)]
struct ConnectionsArgs {
    #[command(flatten)]
    t: TargetArgs,
    /// Idle connections to open.
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// Distinct names each connection then subscribes to (0: none).
    #[arg(long, default_value_t = 10)]
    subs: usize,
    /// Connection handshakes (and subscribing connections) in flight at most.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Pause before each memory reading, for the server to settle.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    settle: Duration,
    /// org/namespace of the subscribed names.
    #[arg(long, default_value = "loadtest/bench")]
    prefix: String,
}

#[derive(Debug, Args)]
struct FleetArgs {
    #[arg(long, value_enum, default_value_t = fleet::FleetMode::Churn)]
    mode: fleet::FleetMode,
    /// Fleet sizes, one fleet each in turn, e.g. 5,10,20,40.
    #[arg(long, value_delimiter = ',', default_value = "5")]
    nodes: Vec<usize>,
    /// connect-leave: runs per fleet (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// churn: client connects (each followed by its leave) per second.
    #[arg(long, default_value_t = 10.0)]
    churn_rate: f64,
    /// churn: how long clients keep connecting.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// churn: each client stays a random 0..this before leaving.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    stay_max: Duration,
    /// churn: shared names the clients subscribe to (1 or 2 each).
    #[arg(long, default_value_t = 8)]
    topics: usize,
    /// churn: most churn clients connecting or connected at once.
    #[arg(long, default_value_t = 64)]
    max_in_flight: usize,
    /// churn: a client not connected within this counts as a failure.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// churn: cross-node stream messages per second (node 0 -> last node).
    #[arg(long, default_value_t = 200.0)]
    stream_rate: f64,
    /// churn: stream payload bytes (at least 20).
    #[arg(long, default_value_t = 64)]
    stream_size: usize,
    /// churn: node index of the stream's publisher.
    #[arg(long, default_value_t = 0)]
    stream_pub_node: usize,
    /// churn: node index of the stream's subscriber [default: the last].
    #[arg(long)]
    stream_sub_node: Option<usize>,
    /// churn: registry names (routes) must be back to the pre-churn
    /// baseline this long after the last churn client left...
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    stale_after: Duration,
    /// ...and if not, watch this much longer (to report when they were).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    stale_grace: Duration,
    /// churn: interest entries (withdrawn names' tombstones included, kept
    /// 30 s by the nodes) must be back to the baseline this long after the
    /// last leave.
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    memory_after: Duration,
    /// Idle background measurement window.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    idle: Duration,
    /// Metrics poll interval.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    poll: Duration,
    /// Settled: link bytes at the idle rate and no interest entry changing for this long.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    quiet: Duration,
    /// Give up waiting for the fleet to settle after this long.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    settle_max: Duration,
    /// Longest wait for the processes to start and the links to come up.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    start_timeout: Duration,
    /// Everything is stopped and the run fails after this long.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    max_wall: Duration,
    /// Where slim-node and slim-controller (and slimctl, for listing stale
    /// routes) are [default: this executable's directory].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Keep the fleet's work directory (configs, logs) instead of removing it.
    #[arg(long)]
    keep_dir: bool,
    /// Log level of every process (default: the fleet files', info).
    #[arg(long)]
    log_level: Option<String>,
    /// Also write the reports (a JSON array) to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Seed of the churn's random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Worker threads of the load generator's runtime (default: CPU count).
    #[arg(long)]
    client_threads: Option<usize>,
}

/// `5s`, `250ms`, `1m`, `1.5s`, or a bare number of seconds.

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
            // host:port, an IP or a name; a load run resolves it once, at start
            // (IPv4 first: nodes listen on 0.0.0.0 by default).
            let addrs: Vec<_> = rest
                .to_socket_addrs()
                .with_context(|| format!("cannot resolve {rest}"))?
                .collect();
            let addr = *addrs
                .iter()
                .find(|a| a.is_ipv4())
                .or(addrs.first())
                .with_context(|| format!("cannot resolve {rest}: no address"))?;
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

fn identities(t: &TargetArgs, generate: bool) -> Result<slim::Identities> {
    Ok(match (&t.ca_dir, &t.identity_dir) {
        (Some(dir), _) => slim::Identities::Ca(Arc::new(
            slim_auth::DevCa::load(dir)
                .with_context(|| format!("loading dev CA from {}", dir.display()))?,
        )),
        (None, Some(dir)) => slim::Identities::Shared(
            slim_auth::Identity::from_files(dir)
                .with_context(|| format!("loading identity from {}", dir.display()))?,
        ),
        (None, None) if generate => slim::Identities::Ca(Arc::new(
            slim_auth::DevCa::generate("example.org").context("generating a dev CA")?,
        )),
        (None, None) => bail!("a slim target needs --ca-dir DIR or --identity-dir DIR"),
    })
}

fn nats_tls(t: &TargetArgs, tls: bool) -> Result<Option<rustls::ClientConfig>> {
    if !tls {
        return Ok(None);
    }
    Ok(Some(nats::tls_config(&nats::TlsFiles {
        ca: t.nats_ca.clone(),
        cert: t.nats_cert.clone(),
        key: t.nats_key.clone(),
        ca_dir: t.ca_dir.clone(),
    })?))
}

/// Prints a report as a table or a JSON line (and a summary on stderr).
fn emit<R: Serialize>(json: bool, r: &R, table: String, one_line: String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
        eprintln!("{one_line}");
    } else {
        print!("{table}");
    }
    Ok(())
}

fn write_plot<R: Serialize>(path: &Option<PathBuf>, reports: &[R]) -> Result<()> {
    if let Some(p) = path {
        let vals = reports
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()?;
        plot::write(p, &vals)?;
        eprintln!("chart written to {}", p.display());
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Throughput,
    Fanout,
    SlowConsumer,
}

fn cross_node(mut a: ThroughputArgs) -> Result<()> {
    if a.sweep_sizes.is_some() {
        bail!("cross-node runs one --size");
    }
    if !a.spawn_node && a.sub_target.is_none() {
        bail!("cross-node needs --spawn-node, or --target and --sub-target (two linked nodes)");
    }
    let subs = a.subs.unwrap_or(1);
    let mut reports = Vec::with_capacity(2);
    for cross in [false, true] {
        if cross {
            std::thread::sleep(Duration::from_secs(1));
        }
        a.cross = cross;
        let r = throughput_once(&a, subs, 0, a.size)?;
        emit(a.t.json, &r, r.table(), r.one_line())?;
        reports.push(r);
    }
    let ratio = reports[1].deliveries_per_s / reports[0].deliveries_per_s.max(1e-9);
    println!(
        "cross-node / single-node deliveries/s = {ratio:.3} ({} / {})",
        harness::fmt_num(reports[1].deliveries_per_s),
        harness::fmt_num(reports[0].deliveries_per_s)
    );
    write_plot(&a.t.plot, &reports)
}

fn throughput(mut a: ThroughputArgs, flavor: Flavor) -> Result<()> {
    a.cross = a.sub_target.is_some();
    let subs = a.subs.unwrap_or(match flavor {
        Flavor::Throughput => 1,
        Flavor::Fanout => 100,
        Flavor::SlowConsumer => 10,
    });
    let stalled = a.stalled.unwrap_or(match flavor {
        Flavor::SlowConsumer => 1,
        _ => 0,
    });
    if flavor != Flavor::Throughput && (a.pubs != 1 || a.mode != Mode::Multicast) {
        bail!("fanout and slow-consumer are 1 publisher, multicast: use `throughput` otherwise");
    }
    if stalled > 0 && a.mode != Mode::Multicast {
        bail!("--stalled needs --mode multicast");
    }
    if stalled >= subs {
        bail!("--stalled ({stalled}) must be below --subs ({subs}): someone has to read");
    }
    let sizes = a.sweep_sizes.clone().unwrap_or_else(|| vec![a.size]);
    if sizes.is_empty() {
        bail!("--sweep-sizes is empty");
    }
    let mut reports = Vec::with_capacity(sizes.len());
    for (i, size) in sizes.iter().enumerate() {
        if i > 0 {
            // Let the server forget the previous run's connections.
            std::thread::sleep(Duration::from_secs(1));
        }
        let r = throughput_once(&a, subs, stalled, *size)?;
        emit(a.t.json, &r, r.table(), r.one_line())?;
        if !a.t.json && sizes.len() > 1 {
            println!();
        }
        reports.push(r);
    }
    if sizes.len() > 1 && !a.t.json {
        println!("size (B)   deliveries/s   payload MB/s   loss %");
        for r in &reports {
            println!(
                "{:>8} {:>14} {:>14.2} {:>8.3}",
                r.size_bytes,
                harness::fmt_num(r.deliveries_per_s),
                r.payload_mb_per_s,
                r.loss_pct
            );
        }
    }
    write_plot(&a.t.plot, &reports)
}

fn throughput_once(
    a: &ThroughputArgs,
    subs: usize,
    stalled: usize,
    size: usize,
) -> Result<harness::Report> {
    if a.pubs == 0 || subs == 0 || a.pub_tasks == 0 {
        bail!("--pubs, --subs and --pub-tasks must be at least 1");
    }
    if a.duration.is_zero() {
        bail!("--duration must be positive");
    }
    payload::PayloadWriter::new(0, size)?;
    let plan = Plan {
        pubs: a.pubs,
        pub_tasks: a.pub_tasks,
        subs,
        stalled,
        size,
        mode: a.mode,
        warmup: a.warmup,
        duration: a.duration,
        drain_idle: a.drain_idle,
        drain_max: a.drain_max,
    };
    let target = match (&a.t.target, a.spawn_node) {
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
    let mut far_node = None;
    let report = match target {
        Target::Slim(mut addr) => {
            let mut sub_addr = match (&a.sub_target, a.cross && !a.spawn_node) {
                (Some(t), true) => match parse_target(t)? {
                    Target::Slim(sa) => sa,
                    Target::Nats { .. } => bail!("--sub-target must be a slim:// node"),
                },
                _ => addr,
            };
            let ids = identities(&a.t, a.spawn_node)?;
            let topic = slim_wire::Name::parse(&a.topic).context("--topic")?;
            let mut cpu = CpuSetup {
                probe: a.t.node_pid.map(CpuProbe::Pid),
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
                let h = if a.cross {
                    // Two nodes: subscribers on the far one, which the
                    // publishers' node dials; wait for the link.
                    let far = rt
                        .block_on(slim_actors::start(
                            slim_actors::NodeConfig {
                                node_id: "loadtest-far".into(),
                                listen: addr,
                                ..Default::default()
                            },
                            &node_id,
                        ))
                        .context("starting the far in-process node")?;
                    sub_addr = far.local_addr();
                    let mut cfg = cfg;
                    cfg.federation.peers = vec![slim_actors::PeerSpec {
                        node_id: "loadtest-far".into(),
                        addr: sub_addr.to_string(),
                        server_name: "slim-node".into(),
                        expect_spiffe_id: None,
                    }];
                    let h = rt
                        .block_on(slim_actors::start(cfg, &node_id))
                        .context("starting the in-process node")?;
                    let t0 = std::time::Instant::now();
                    while !h
                        .links()
                        .iter()
                        .any(|l| l.state == slim_actors::LinkState::Up)
                    {
                        if t0.elapsed() > Duration::from_secs(10) {
                            bail!("the in-process nodes did not link within 10 s");
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    far_node = Some(Arc::new(far));
                    h
                } else {
                    rt.block_on(slim_actors::start(cfg, &node_id))
                        .context("starting the in-process node")?
                };
                addr = h.local_addr();
                if !a.cross {
                    sub_addr = addr;
                }
                node = Some(Arc::new(h));
                node_rt = Some(rt);
                if a.t.node_pid.is_some() {
                    eprintln!("note: --node-pid ignored with --spawn-node");
                }
                cpu = CpuSetup {
                    probe: Some(CpuProbe::SelfProcess),
                    node_threads: Some("slim-node".into()),
                };
            }
            let target_s = match (a.spawn_node, a.cross) {
                (true, false) => format!("slim://{addr} (in-process node)"),
                (true, true) => {
                    format!("slim://{addr} -> slim://{sub_addr} (in-process nodes, cross-node)")
                }
                (false, false) => format!("slim://{addr}"),
                (false, true) => format!("slim://{addr} -> slim://{sub_addr} (cross-node)"),
            };
            let rt = runtime("loadgen", a.t.client_threads)?;
            let node2 = node.clone();
            let r = rt.block_on(async {
                let server = match a.t.stats_addr {
                    Some(sa) => Some(ServerStats::read(serverstats::Kind::Slim, sa).await?),
                    None => None,
                };
                let control = Control::new(&plan);
                let mut running = slim::setup(
                    addr,
                    sub_addr,
                    &topic,
                    &ids,
                    &plan,
                    &control.ctl(),
                    &run_id(),
                )
                .await?;
                if let (true, Some(n)) = (a.cross, &node2) {
                    // Publish only once the subscription has crossed the link,
                    // so that no message goes to a node without the route.
                    let t0 = std::time::Instant::now();
                    while !n
                        .routes()
                        .iter()
                        .any(|r| r.name == topic.as_str() && !r.remote_peers.is_empty())
                    {
                        if t0.elapsed() > Duration::from_secs(10) {
                            bail!(
                                "the subscription did not reach the publishers' node within 10 s"
                            );
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                if let Some(n) = node2 {
                    let far = far_node.clone();
                    running.extra = Some(Box::new(move || {
                        let mut dropped: u64 = n.connections().iter().map(|c| c.dropped).sum();
                        let mut out: Vec<(String, u64)> = Vec::new();
                        if let Some(f) = &far {
                            dropped += f.connections().iter().map(|c| c.dropped).sum::<u64>();
                            let link: u64 = n.links().iter().map(|l| l.drops).sum();
                            out.push(("link_queue_drops".to_owned(), link));
                        }
                        out.push(("node_slow_consumer_drops".to_owned(), dropped));
                        out.into_iter().collect()
                    }));
                }
                harness::run("slim", &target_s, &plan, control, running, &cpu, server).await
            });
            drop(rt);
            r?
        }
        Target::Nats { url, tls } => {
            let tls_cfg = nats_tls(&a.t, tls)?;
            let subject = a.topic.replace('/', ".");
            let cpu = CpuSetup {
                probe: a.t.node_pid.map(CpuProbe::Pid),
                node_threads: None,
            };
            let rt = runtime("loadgen", a.t.client_threads)?;
            let r = rt.block_on(async {
                let server = match a.t.stats_addr {
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
    drop(far_node);
    if let Some(rt) = node_rt {
        rt.shutdown_timeout(Duration::from_secs(1));
    }
    Ok(report)
}

/// The backend for `latency` and `connections` (no in-process node).
fn backend(t: &TargetArgs) -> Result<(Backend, String, Option<serverstats::Kind>)> {
    let Some(target) = &t.target else {
        bail!("--target is required (slim://, nats:// or tls://)");
    };
    Ok(match parse_target(target)? {
        Target::Slim(addr) => (
            Backend::Slim {
                addr,
                ids: Arc::new(identities(t, false)?),
                run_id: run_id(),
            },
            format!("slim://{addr}"),
            Some(serverstats::Kind::Slim),
        ),
        Target::Nats { url, tls } => (
            Backend::Nats {
                tls: nats_tls(t, tls)?.map(Arc::new),
                url: url.clone(),
                events: Arc::new(nats::Events::default()),
            },
            url,
            Some(serverstats::Kind::Nats),
        ),
    })
}

fn latency(a: LatencyArgs) -> Result<()> {
    let (backend, target, _) = backend(&a.t)?;
    let plan = latency::LatencyPlan {
        rate: a.rate,
        duration: a.duration,
        warmup: a.warmup,
        timeout: a.timeout,
        size: a.size,
        topic: Topic::new(&a.topic).context("--topic")?,
        spin: Duration::from_micros(a.spin_us),
    };
    let rt = runtime("loadgen", a.t.client_threads)?;
    let cpu = a.t.node_pid.map(CpuProbe::Pid);
    let r = rt.block_on(latency::run(&backend, &target, &plan, cpu))?;
    drop(rt);
    emit(a.t.json, &r, r.table(), r.one_line())?;
    write_plot(&a.t.plot, &[r])
}

fn connections(a: ConnectionsArgs) -> Result<()> {
    let (backend, target, kind) = backend(&a.t)?;
    let plan = connections::ConnPlan {
        conns: a.conns,
        subs_per_conn: a.subs,
        concurrency: a.concurrency,
        settle: a.settle,
        prefix: a.prefix.clone(),
        run_id: run_id(),
    };
    let stats = a.t.stats_addr.zip(kind).map(|(addr, k)| (k, addr));
    let rt = runtime("loadgen", a.t.client_threads)?;
    let probe = a.t.node_pid.map(CpuProbe::Pid);
    let r = rt.block_on(connections::run(&backend, &target, &plan, probe, stats))?;
    drop(rt);
    emit(a.t.json, &r, r.table(), r.one_line())?;
    write_plot(&a.t.plot, &[r])
}

fn session_or_channel(a: SessionArgs, channel: bool) -> Result<()> {
    if a.size < sessions::HEADER {
        bail!(
            "--size must be at least {} (the sequence number)",
            sessions::HEADER
        );
    }
    if a.messages == 0 {
        bail!("--messages must be at least 1");
    }
    if !(a.rate >= 0.0 && a.rate.is_finite()) {
        bail!("--rate must be 0 (as fast as allowed) or positive");
    }
    if channel && (a.rx_target.is_some() || a.window.is_some() || a.mls) {
        bail!(
            "--rx-target, --window and --mls are for `session` (a channel is MLS unless --no-mls)"
        );
    }
    if !channel && (a.no_mls || a.members != 3) {
        bail!("--no-mls and --members are for `channel`");
    }
    let plan = sessions::SessionPlan {
        messages: a.messages,
        rate: a.rate,
        size: a.size,
        window: a.window,
        mls: if channel { !a.no_mls } else { a.mls },
        members: a.members,
        timeout: a.timeout,
        run_id: run_id(),
    };
    let ids = identities(&a.t, a.spawn_node)?;
    let mut node_rt = None;
    let mut node = None;
    let (addr, rx_addr, target) = if a.spawn_node {
        if a.t.target.is_some() || a.rx_target.is_some() {
            bail!("--spawn-node runs its own node: no --target or --rx-target");
        }
        let rt = runtime("slim-node", None)?;
        let cfg = slim_actors::NodeConfig {
            node_id: "loadtest-node".into(),
            listen: "127.0.0.1:0".parse()?,
            ..Default::default()
        };
        let h = rt
            .block_on(slim_actors::start(cfg, &ids.get("node")?))
            .context("starting the in-process node")?;
        let addr = h.local_addr();
        node = Some(h);
        node_rt = Some(rt);
        (addr, addr, format!("slim://{addr} (in-process node)"))
    } else {
        let Some(t) = &a.t.target else {
            bail!("--target slim://HOST:PORT (or --spawn-node) is required");
        };
        let Target::Slim(addr) = parse_target(t)? else {
            bail!("session and channel runs are SLIM only: --target slim://HOST:PORT");
        };
        match &a.rx_target {
            Some(r) => {
                let Target::Slim(rx) = parse_target(r)? else {
                    bail!("--rx-target must be a slim:// node");
                };
                (addr, rx, format!("slim://{addr} -> slim://{rx}"))
            }
            None => (addr, addr, format!("slim://{addr}")),
        }
    };
    let rt = runtime("loadgen", a.t.client_threads)?;
    let r = rt.block_on(async {
        let run = async {
            if channel {
                sessions::run_channel(addr, target, &ids, &plan).await
            } else {
                sessions::run_session(addr, rx_addr, target, &ids, &plan).await
            }
        };
        match tokio::time::timeout(plan.timeout, run).await {
            Ok(r) => r,
            Err(_) => bail!(
                "the run did not finish within {:?} (--timeout)",
                plan.timeout
            ),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    drop(node);
    if let Some(rt) = node_rt {
        rt.shutdown_timeout(Duration::from_secs(1));
    }
    let r = r?;
    // Both: the table (or with --json the JSON line), then the summary line.
    emit(a.t.json, &r, r.table(), r.one_line())?;
    if !a.t.json {
        println!("{}", serde_json::to_string(&r)?);
    }
    if !r.complete {
        bail!("incomplete: {}", r.one_line());
    }
    Ok(())
}

fn fleet(a: FleetArgs) -> Result<()> {
    if a.nodes.is_empty() || a.nodes.contains(&0) {
        bail!("--nodes needs sizes of at least 1");
    }
    if a.mode == fleet::FleetMode::Churn {
        if a.churn_rate <= 0.0 || a.stream_rate <= 0.0 {
            bail!("--churn-rate and --stream-rate must be positive");
        }
        if a.nodes.contains(&1) {
            bail!("churn needs at least 2 nodes (the stream crosses a link)");
        }
    }
    let run_id = run_id();
    let plan = fleet::FleetPlan {
        mode: a.mode,
        sizes: a.nodes,
        bin_dir: match a.bin_dir {
            Some(d) => d,
            None => fleet::cluster::default_bin_dir()?,
        },
        keep_dir: a.keep_dir,
        log_level: a.log_level,
        start_timeout: a.start_timeout,
        idle_window: a.idle,
        poll: a.poll,
        quiet_for: a.quiet,
        settle_max: a.settle_max,
        repeats: a.repeats,
        churn: fleet::churn::ChurnPlan {
            rate: a.churn_rate,
            duration: a.duration,
            stay_max: a.stay_max,
            topics: a.topics,
            max_in_flight: a.max_in_flight,
            connect_timeout: a.connect_timeout,
            stream_rate: a.stream_rate,
            stream_size: a.stream_size,
            pub_node: a.stream_pub_node,
            sub_node: a.stream_sub_node.unwrap_or(usize::MAX),
            idle_window: a.idle,
            poll: a.poll,
            stale_after: a.stale_after,
            stale_grace: a.stale_grace,
            memory_after: a.memory_after,
            seed: a.seed,
            run_id: run_id.clone(),
        },
        max_wall: a.max_wall,
        json: a.json,
        run_id,
    };
    let rt = runtime("loadgen", a.client_threads)?;
    let r = rt.block_on(fleet::run(plan));
    rt.shutdown_timeout(Duration::from_secs(2));
    r.map(|_| ())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Throughput(a) => throughput(*a, Flavor::Throughput),
        Cmd::Fanout(a) => throughput(*a, Flavor::Fanout),
        Cmd::SlowConsumer(a) => throughput(*a, Flavor::SlowConsumer),
        Cmd::CrossNode(a) => cross_node(*a),
        Cmd::Latency(a) => latency(*a),
        Cmd::Connections(a) => connections(*a),
        Cmd::Fleet(a) => fleet(*a),
        Cmd::Session(a) => session_or_channel(*a, false),
        Cmd::Channel(a) => session_or_channel(*a, true),
        Cmd::Attack(a) => attack::run(*a),
        Cmd::Summarize { file } => {
            print!("{}", summary::summarize(&file)?);
            Ok(())
        }
        Cmd::Plot {
            file,
            scenario,
            out,
        } => plot::from_file(&file, &out, scenario.as_deref()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!((a.pubs, a.subs, a.mode), (2, Some(100), Mode::Anycast));
        assert_eq!(a.duration, Duration::from_secs(2));
        assert!(a.t.json);

        let c = Cli::try_parse_from([
            "slim-loadtest",
            "throughput",
            "--target",
            "tls://127.0.0.1:4222",
            "--sweep-sizes",
            "16,256,1024,4096",
            "--plot",
            "x.svg",
        ])
        .unwrap();
        let Cmd::Throughput(a) = c.cmd else {
            panic!("wrong subcommand")
        };
        assert_eq!(a.sweep_sizes, Some(vec![16, 256, 1024, 4096]));

        let c = Cli::try_parse_from([
            "slim-loadtest",
            "latency",
            "--target",
            "slim://127.0.0.1:4500",
            "--rate",
            "2000",
        ])
        .unwrap();
        let Cmd::Latency(a) = c.cmd else {
            panic!("wrong subcommand")
        };
        assert_eq!((a.rate, a.duration), (2000.0, Duration::from_secs(10)));

        let c = Cli::try_parse_from(["slim-loadtest", "connections", "--conns", "10"]).unwrap();
        let Cmd::Connections(a) = c.cmd else {
            panic!("wrong subcommand")
        };
        assert_eq!((a.conns, a.subs, a.concurrency), (10, 10, 32));
        assert!(Cli::try_parse_from(["slim-loadtest", "slow-consumer", "--stalled", "2"]).is_ok());
        assert!(Cli::try_parse_from(["slim-loadtest", "fanout", "--subs", "50"]).is_ok());

        let c = Cli::try_parse_from([
            "slim-loadtest",
            "fleet",
            "--mode",
            "connect-leave",
            "--nodes",
            "5,10,20",
        ])
        .unwrap();
        let Cmd::Fleet(a) = c.cmd else {
            panic!("wrong subcommand")
        };
        assert_eq!(a.mode, fleet::FleetMode::ConnectLeave);
        assert_eq!((a.nodes, a.repeats), (vec![5, 10, 20], 3));
        let c = Cli::try_parse_from([
            "slim-loadtest",
            "fleet",
            "--nodes",
            "20",
            "--churn-rate",
            "10",
            "--duration",
            "60s",
            "--stream-rate",
            "200",
            "--json",
            "out.json",
        ])
        .unwrap();
        let Cmd::Fleet(a) = c.cmd else {
            panic!("wrong subcommand")
        };
        assert_eq!(a.mode, fleet::FleetMode::Churn);
        assert_eq!(a.duration, Duration::from_secs(60));
        assert_eq!(a.json, Some(PathBuf::from("out.json")));

        let c = Cli::try_parse_from([
            "slim-loadtest",
            "session",
            "--spawn-node",
            "--messages",
            "30000",
            "--rate",
            "5000",
            "--window",
            "128",
        ])
        .unwrap();
        let Cmd::Session(a) = c.cmd else {
            panic!("wrong subcommand")
        };
        assert_eq!((a.messages, a.rate, a.window), (30_000, 5000.0, Some(128)));
        let c = Cli::try_parse_from(["slim-loadtest", "channel", "--members", "5", "--no-mls"])
            .unwrap();
        let Cmd::Channel(a) = c.cmd else {
            panic!("wrong subcommand")
        };
        assert_eq!(
            (a.members, a.no_mls, a.messages, a.size),
            (5, true, 10_000, 32)
        );
    }
}
