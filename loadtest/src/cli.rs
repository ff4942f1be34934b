//! The command line: subcommands and their arguments.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::attack;
use crate::fleet;
use crate::harness::Mode;
use crate::util::parse_duration;

#[derive(Debug, Parser)]
#[command(
    name = "slim-loadtest",
    version,
    about = "SLIM load generator (and nats-server for comparison)"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Cmd {
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
        /// Print the headline, slow-consumer rows and ratios as one JSON object.
        #[arg(long)]
        json: bool,
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
pub(crate) struct TargetArgs {
    /// slim://HOST:PORT, nats://HOST:PORT or tls://HOST:PORT (NATS with TLS).
    #[arg(long)]
    pub(crate) target: Option<String>,
    /// Server process (the node or nats-server) whose CPU time and memory
    /// are reported.
    #[arg(long)]
    pub(crate) node_pid: Option<u32>,
    /// SLIM: this client's SVID in the spiffe-helper layout (shared by all connections).
    #[arg(long)]
    pub(crate) identity_dir: Option<PathBuf>,
    /// Dev CA directory (ca.crt, ca.key): SLIM clients get one SVID each from
    /// it, and NATS TLS uses ca.crt as root and an SVID from it as client cert.
    #[arg(long)]
    pub(crate) ca_dir: Option<PathBuf>,
    /// NATS TLS: CA certificate (PEM) that signed nats-server's certificate.
    #[arg(long)]
    pub(crate) nats_ca: Option<PathBuf>,
    /// NATS TLS: client certificate chain (PEM).
    #[arg(long)]
    pub(crate) nats_cert: Option<PathBuf>,
    /// NATS TLS: client private key (PEM).
    #[arg(long)]
    pub(crate) nats_key: Option<PathBuf>,
    /// Server statistics endpoint HOST:PORT: slim-node's metrics listener
    /// (/metrics), or nats-server's monitoring port (/varz, `nats-server -m PORT`).
    #[arg(long)]
    pub(crate) stats_addr: Option<SocketAddr>,
    /// Print one JSON object per run (a line each) instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Also write an SVG chart of the run to this file.
    #[arg(long)]
    pub(crate) plot: Option<PathBuf>,
    /// Worker threads of the load generator's runtime (default: CPU count).
    #[arg(long)]
    pub(crate) client_threads: Option<usize>,
}

#[derive(Debug, Args)]
pub(crate) struct ThroughputArgs {
    #[command(flatten)]
    pub(crate) t: TargetArgs,
    /// Publisher connections.
    #[arg(long, default_value_t = 1)]
    pub(crate) pubs: usize,
    /// Publishing tasks per publisher connection (each its own sequence stream).
    #[arg(long, default_value_t = 1)]
    pub(crate) pub_tasks: usize,
    /// Subscriber connections [default: 1; fanout: 100; slow-consumer: 10].
    #[arg(long)]
    pub(crate) subs: Option<usize>,
    /// Subscribers (of --subs) that subscribe but never read [default: 0;
    /// slow-consumer: 1]. Multicast only.
    #[arg(long)]
    pub(crate) stalled: Option<usize>,
    /// Payload bytes per message (at least 12: stream id + sequence number).
    #[arg(long, default_value_t = 16)]
    pub(crate) size: usize,
    /// Run once per payload size, e.g. 16,256,1024,4096 (replaces --size);
    /// --plot then charts deliveries/s vs size.
    #[arg(long, value_delimiter = ',')]
    pub(crate) sweep_sizes: Option<Vec<usize>>,
    /// Measured window, e.g. 5s, 500ms, 1m.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// Publishing before the measured window starts.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub(crate) warmup: Duration,
    #[arg(long, value_enum, default_value_t = Mode::Multicast)]
    pub(crate) mode: Mode,
    /// SLIM name subscribed to; the NATS subject is the same with '.' for '/'.
    #[arg(long, default_value = "loadtest/bench/topic")]
    pub(crate) topic: String,
    /// After publishing stops, wait until nothing new arrived for this long...
    /// (3 s: when a starved receiver's socket buffer overflowed, QUIC can go
    /// quiet for over a second before it retransmits; with 1 s, one 1 -> 1000
    /// run counted 15 % of its deliveries lost while the node had dropped
    /// none, with `host_udp_rcvbuf_errors` at 85,807.)
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub(crate) drain_idle: Duration,
    /// ...or at most this long (also the bound on the publishers' flush,
    /// which waits until the server processed everything published). Long
    /// enough for a fan-out's backlog: a 1 -> 1000 run's subscriber queues
    /// hold tens of seconds of deliveries, and a cut-off counts what is
    /// still in flight as lost.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub(crate) drain_max: Duration,
    /// Start a node in this process (on its own runtime, threads named
    /// slim-node) instead of connecting to --target.
    #[arg(long, hide = true)]
    pub(crate) spawn_node: bool,
    /// Worker threads of the in-process node's runtime (default: CPU count).
    #[arg(long, hide = true)]
    pub(crate) node_threads: Option<usize>,
    /// SLIM: subscribers connect to this node (slim://HOST:PORT) instead of
    /// --target; the publishers' node reaches it over a peer link.
    #[arg(long)]
    pub(crate) sub_target: Option<String>,
    /// Publishers on a runtime of their own (one thread), as if in another
    /// process, instead of sharing the load generator's workers with the
    /// subscribers (whose scheduling then throttles them).
    #[arg(long)]
    pub(crate) publisher_thread: bool,
    /// This run puts subscribers on the other node (set by `cross-node`).
    #[arg(skip)]
    pub(crate) cross: bool,
}

#[derive(Debug, Args)]
pub(crate) struct LatencyArgs {
    #[command(flatten)]
    pub(crate) t: TargetArgs,
    /// Requests per second, sent on a fixed schedule whatever the replies do.
    #[arg(long, default_value_t = 1000.0)]
    pub(crate) rate: f64,
    /// Measured window.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// Requests at the same rate before the measured window (not recorded).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub(crate) warmup: Duration,
    /// A request not answered this long after its scheduled send time is a timeout.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
    /// Request (and reply) payload bytes, at least 12.
    #[arg(long, default_value_t = 16)]
    pub(crate) size: usize,
    /// SLIM name the responder subscribes to (NATS: '.' for '/').
    #[arg(long, default_value = "loadtest/bench/rpc")]
    pub(crate) topic: String,
    /// The sender busy-waits for the last this-many µs before each send
    /// instead of sleeping (nanosleep overshoots by 50-100 µs, which every
    /// request would be charged), at the cost of that much CPU per request
    /// (0: sleep only).
    #[arg(long, default_value_t = 150)]
    pub(crate) spin_us: u64,
    /// SLIM: the responder connects to this node (slim://HOST:PORT) instead
    /// of --target, which reaches it over a peer link (request/reply across
    /// two nodes).
    #[arg(long)]
    pub(crate) responder_target: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct SessionArgs {
    #[command(flatten)]
    pub(crate) t: TargetArgs,
    /// Messages to send, numbered 0..N.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) messages: u64,
    /// Messages per second; 0: as fast as the window allows.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) rate: f64,
    /// Payload bytes per message (at least 8: the sequence number).
    #[arg(long, default_value_t = 32)]
    pub(crate) size: usize,
    /// session: the reliable window (messages in flight) [default: the
    /// SDK's, 256]. channel: most messages published and not yet delivered
    /// to every member [default: 512] (channels have no flow control; the
    /// sender keeps 1024 for retransmission).
    #[arg(long)]
    pub(crate) window: Option<usize>,
    /// session: end-to-end MLS on the session.
    #[arg(long)]
    pub(crate) mls: bool,
    /// channel: plaintext channel (no MLS group).
    #[arg(long)]
    pub(crate) no_mls: bool,
    /// channel: members besides the moderator (the publisher).
    #[arg(long, default_value_t = 3)]
    pub(crate) members: usize,
    /// session: the receiver connects to this node (slim://HOST:PORT)
    /// instead of --target, which reaches it over a peer link.
    #[arg(long)]
    pub(crate) rx_target: Option<String>,
    /// Start a node in this process (on its own runtime) instead of
    /// connecting to --target.
    #[arg(long)]
    pub(crate) spawn_node: bool,
    /// Give up on the run after this long.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct ConnectionsArgs {
    #[command(flatten)]
    pub(crate) t: TargetArgs,
    /// Idle connections to open.
    #[arg(long, default_value_t = 1000)]
    pub(crate) conns: usize,
    /// Distinct names each connection then subscribes to (0: none).
    #[arg(long, default_value_t = 10)]
    pub(crate) subs: usize,
    /// Connection handshakes (and subscribing connections) in flight at most.
    #[arg(long, default_value_t = 32)]
    pub(crate) concurrency: usize,
    /// Pause before each memory reading, for the server to settle.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub(crate) settle: Duration,
    /// org/namespace of the subscribed names.
    #[arg(long, default_value = "loadtest/bench")]
    pub(crate) prefix: String,
}

#[derive(Debug, Args)]
pub(crate) struct FleetArgs {
    #[arg(long, value_enum, default_value_t = fleet::FleetMode::Churn)]
    pub(crate) mode: fleet::FleetMode,
    /// Fleet sizes, one fleet each in turn, e.g. 5,10,20,40.
    #[arg(long, value_delimiter = ',', default_value = "5")]
    pub(crate) nodes: Vec<usize>,
    /// connect-leave: runs per fleet (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub(crate) repeats: usize,
    /// churn: client connects (each followed by its leave) per second.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) churn_rate: f64,
    /// churn: how long clients keep connecting.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// churn: each client stays a random 0..this before leaving.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub(crate) stay_max: Duration,
    /// churn: shared names the clients subscribe to (1 or 2 each).
    #[arg(long, default_value_t = 8)]
    pub(crate) topics: usize,
    /// churn: most churn clients connecting or connected at once.
    #[arg(long, default_value_t = 64)]
    pub(crate) max_in_flight: usize,
    /// churn: a client not connected within this counts as a failure.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) connect_timeout: Duration,
    /// churn: cross-node stream messages per second (node 0 -> last node).
    #[arg(long, default_value_t = 200.0)]
    pub(crate) stream_rate: f64,
    /// churn: stream payload bytes (at least 20).
    #[arg(long, default_value_t = 64)]
    pub(crate) stream_size: usize,
    /// churn: node index of the stream's publisher.
    #[arg(long, default_value_t = 0)]
    pub(crate) stream_pub_node: usize,
    /// churn: node index of the stream's subscriber [default: the last].
    #[arg(long)]
    pub(crate) stream_sub_node: Option<usize>,
    /// churn: registry names (routes) must be back to the pre-churn
    /// baseline this long after the last churn client left...
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub(crate) stale_after: Duration,
    /// ...and if not, watch this much longer (to report when they were).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub(crate) stale_grace: Duration,
    /// churn: interest entries (withdrawn names' tombstones included, kept
    /// 30 s by the nodes) must be back to the baseline this long after the
    /// last leave.
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    pub(crate) memory_after: Duration,
    /// Idle background measurement window.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub(crate) idle: Duration,
    /// Metrics poll interval.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub(crate) poll: Duration,
    /// Settled: link bytes at the idle rate and no interest entry changing for this long.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub(crate) quiet: Duration,
    /// Give up waiting for the fleet to settle after this long.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub(crate) settle_max: Duration,
    /// Longest wait for the processes to start and the links to come up.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub(crate) start_timeout: Duration,
    /// Everything is stopped and the run fails after this long.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub(crate) max_wall: Duration,
    /// Where slim-node and slim-controller (and slimctl, for listing stale
    /// routes) are [default: this executable's directory].
    #[arg(long)]
    pub(crate) bin_dir: Option<PathBuf>,
    /// Keep the fleet's work directory (configs, logs) instead of removing it.
    #[arg(long)]
    pub(crate) keep_dir: bool,
    /// Log level of every process (default: the fleet files', info).
    #[arg(long)]
    pub(crate) log_level: Option<String>,
    /// Also write the reports (a JSON array) to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Seed of the churn's random choices.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Worker threads of the load generator's runtime (default: CPU count).
    #[arg(long)]
    pub(crate) client_threads: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

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
