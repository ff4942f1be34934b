//! `slim-fleet-sim`: runs scenarios on simulated fleets and prints a markdown
//! table (plus, with `--detail`, a per-phase breakdown of every run).

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use slim_sim::report;
use slim_sim::{Outcome, Scenario, ScenarioConfig, Topology, run};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TopologyArg {
    Mesh,
    Sparse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ScenarioArg {
    ConnectLeave,
    Churn,
    Flap,
    Restart,
    Chaos,
}

/// Simulates the interest protocol on N nodes in virtual time.
#[derive(Debug, Parser)]
#[command(name = "slim-fleet-sim", version)]
struct Args {
    /// Fleet sizes.
    #[arg(long, value_delimiter = ',', default_value = "5,10,20,40")]
    nodes: Vec<usize>,
    /// Overlays: mesh (every pair linked) or sparse (a connected random
    /// graph of bounded degree: a ring plus random chords).
    #[arg(long, value_delimiter = ',', default_value = "mesh")]
    topology: Vec<TopologyArg>,
    /// Links per node in the sparse overlay.
    #[arg(long, default_value_t = 4)]
    degree: usize,
    /// Scenarios to run.
    #[arg(long, value_delimiter = ',', default_value = "connect-leave,churn")]
    scenario: Vec<ScenarioArg>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Least time between two interest frames to one peer, in ms (the
    /// node's default: 20).
    #[arg(long, default_value_t = 20)]
    pace_ms: u64,
    /// Skip the last phase (let the tombstone and unreachable TTLs pass,
    /// then check that every table holds exactly the live state).
    #[arg(long)]
    no_gc_check: bool,
    /// Link latency range in ms, fractions allowed (one value per link,
    /// drawn from the seed; at least 1 µs).
    #[arg(long, default_value = "1-50", value_parser = parse_ms_range)]
    latency_ms: (u64, u64),
    /// Virtual processing time per received entry, in µs (a node handles
    /// one frame at a time; 0 = instant).
    #[arg(long, default_value_t = 0)]
    proc_us: u64,
    /// Clients connected before each scenario.
    #[arg(long, default_value_t = 50)]
    background: usize,
    /// Services the clients belong to.
    #[arg(long, default_value_t = 10)]
    services: usize,
    /// Churn: connects per virtual second.
    #[arg(long, default_value_t = 10)]
    churn_rate: u32,
    /// Churn: virtual seconds of connects.
    #[arg(long, default_value_t = 5)]
    churn_secs: u32,
    /// Churn: client lifetime range in ms.
    #[arg(long, default_value = "500-3000", value_parser = parse_range)]
    lifetime_ms: (u64, u64),
    /// Chaos: link or node outages during the churn.
    #[arg(long, default_value_t = 10)]
    outages: u32,
    /// Chaos: outage length range in ms.
    #[arg(long, default_value = "100-5000", value_parser = parse_range)]
    outage_ms: (u64, u64),
    /// Stop a phase after this many messages ("did not converge within budget").
    #[arg(long, default_value_t = 50_000_000)]
    budget: u64,
    /// Also stop a phase after this many wall-clock seconds.
    #[arg(long)]
    wall_limit_secs: Option<u64>,
    /// Print every action, frame and route change to stderr (debugging;
    /// small fleets only).
    #[arg(long)]
    trace: bool,
    /// Print a per-phase breakdown of every run after the table.
    #[arg(long)]
    detail: bool,
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: u64 = a.trim().parse().map_err(|e| format!("{s}: {e}"))?;
    let b: u64 = b.trim().parse().map_err(|e| format!("{s}: {e}"))?;
    if a > b {
        return Err(format!("{s}: empty range"));
    }
    Ok((a, b))
}

/// "a-b" in ms (fractions allowed) to µs.
fn parse_ms_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let us = |x: &str| -> Result<u64, String> {
        let v: f64 = x.trim().parse().map_err(|e| format!("{s}: {e}"))?;
        if !(0.0..1e7).contains(&v) {
            return Err(format!("{s}: out of range"));
        }
        Ok((v * 1000.0).round() as u64)
    };
    let (a, b) = (us(a)?, us(b)?);
    if a > b {
        return Err(format!("{s}: empty range"));
    }
    Ok((a, b))
}

fn main() -> ExitCode {
    let args = Args::parse();
    println!(
        "seed {}, pace {} ms, link latency {}–{} ms, processing {} µs/entry, {} background clients over {} services; \
         churn {}/s for {} s, lifetimes {}–{} ms; budget {} messages per phase\n",
        args.seed,
        args.pace_ms,
        args.latency_ms.0 as f64 / 1000.0,
        args.latency_ms.1 as f64 / 1000.0,
        args.proc_us,
        args.background,
        args.services,
        args.churn_rate,
        args.churn_secs,
        args.lifetime_ms.0,
        args.lifetime_ms.1,
        args.budget,
    );
    println!("{}", report::header());
    let mut details = Vec::new();
    let mut broken = false;
    for &topo in &args.topology {
        let topology = match topo {
            TopologyArg::Mesh => Topology::Mesh,
            TopologyArg::Sparse => Topology::Sparse {
                degree: args.degree,
            },
        };
        for &n in &args.nodes {
            for &sc in &args.scenario {
                let scenario = match sc {
                    ScenarioArg::ConnectLeave => Scenario::ConnectLeave,
                    ScenarioArg::Churn => Scenario::Churn {
                        rate: args.churn_rate,
                        secs: args.churn_secs,
                        lifetime_ms: args.lifetime_ms,
                    },
                    ScenarioArg::Flap => Scenario::LinkFlap,
                    ScenarioArg::Restart => Scenario::NodeRestart,
                    ScenarioArg::Chaos => Scenario::Chaos {
                        rate: args.churn_rate,
                        secs: args.churn_secs,
                        lifetime_ms: args.lifetime_ms,
                        outages: args.outages,
                        outage_ms: args.outage_ms,
                    },
                };
                let mut cfg = ScenarioConfig::new(n, topology, args.seed);
                cfg.fleet.interest.pace = Duration::from_millis(args.pace_ms);
                cfg.gc_check = !args.no_gc_check;
                cfg.fleet.trace = args.trace;
                cfg.fleet.latency_us = args.latency_ms;
                cfg.fleet.proc_us = args.proc_us;
                cfg.fleet.budget = args.budget;
                cfg.fleet.wall_limit = args.wall_limit_secs.map(Duration::from_secs);
                cfg.background = args.background;
                cfg.services = args.services;
                let r = run(&cfg, scenario);
                println!("{}", report::row(&r));
                let _ = std::io::stdout().flush();
                if let Outcome::Broken { phase, violations } = &r.outcome {
                    eprintln!(
                        "INVARIANT BROKEN: N={n} {} {} ({phase}): {violations}",
                        topology.label(),
                        scenario.label()
                    );
                    broken = true;
                }
                if let Outcome::Setup(e) = &r.outcome {
                    eprintln!("CANNOT SET UP: N={n} {}: {e}", topology.label());
                    broken = true;
                }
                if args.detail {
                    details.push(report::detail(&r));
                }
            }
        }
    }
    for d in details {
        print!("{d}");
    }
    if broken {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
