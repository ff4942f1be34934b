//! Scenarios: a quiet fleet with background clients, then one kind of event,
//! measured and checked. Everything is drawn from the seed.
//!
//! Setup (not measured): `background` clients connect at random nodes (each
//! a random one of `services` services), then every link comes up at once
//! (link sets flood, digests are exchanged) and the fleet settles. The
//! invariants are checked, then counters are reset and the scenario runs:
//! - `connect-leave`: one client connects at a random node (phase
//!   `connect`); once settled, it leaves (phase `leave`). One event. Its
//!   service (`acme/fleet/probe`) is its own, so both of its names are new
//!   at every fleet size. Its full name is watched: *reach* is when the
//!   last node gained (connect) or lost (leave) its route to it.
//! - `churn`: `rate × secs` clients connect at uniformly random instants in
//!   `[0, secs)` at random nodes and each leaves after a random lifetime in
//!   `lifetime_ms`; measured until everything settles. One event per
//!   connect + leave. Table sizes are sampled every virtual second.
//! - `flap`: a random link goes down (phase `down`), then, settled, comes
//!   back up (phase `up`). One event.
//! - `restart`: a random node dies (phase `down`), then, settled, comes back
//!   with a fresh table and a larger epoch, and its links come up one
//!   handshake (one link latency) later each (phase `up`). One event.
//!
//! Routes are checked after every phase. Then virtual time passes beyond
//! the tombstone and unreachable TTLs (the GC timers ticking) and both the
//! routes and the memory are checked: every table holds exactly the live
//! state (phase `gc`).
//!
//! Client names look like the demo's: `acme/fleet/svc-07/agent-1f2e3d4c`,
//! service name `acme/fleet/svc-07`; node ids are `cluster-0042`.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::check::Violations;
use crate::fleet::{Action, EntryStats, Fault, Fleet, FleetConfig, Halt, Micros, Traffic};
use crate::topology::{FAR, Topology};

/// One kind of event to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    ConnectLeave,
    Churn {
        /// Connects (each followed by its leave) per virtual second.
        rate: u32,
        secs: u32,
        lifetime_ms: (u64, u64),
    },
    LinkFlap,
    NodeRestart,
    /// Churn plus `outages` link or node outages at random instants in
    /// `[0, secs)`: a random link goes down, or (one outage in four) a
    /// random node dies, for a random time in `outage_ms`.
    Chaos {
        rate: u32,
        secs: u32,
        lifetime_ms: (u64, u64),
        outages: u32,
        outage_ms: (u64, u64),
    },
}

impl Scenario {
    pub fn label(&self) -> String {
        match self {
            Scenario::ConnectLeave => "connect+leave".into(),
            Scenario::Churn { rate, secs, .. } => format!("churn {rate}/s × {secs} s"),
            Scenario::LinkFlap => "link flap".into(),
            Scenario::NodeRestart => "node restart".into(),
            Scenario::Chaos {
                rate,
                secs,
                outages,
                ..
            } => format!("chaos {rate}/s × {secs} s, {outages} outages"),
        }
    }
}

/// The fleet plus its quiet background.
#[derive(Debug, Clone)]
pub struct ScenarioConfig {
    pub fleet: FleetConfig,
    /// Clients connected before the scenario starts.
    pub background: usize,
    /// Services clients are drawn from.
    pub services: usize,
    /// A fault armed when measured phase number `fault_phase` (0: the
    /// first) starts (tests of the checker).
    pub fault: Option<Fault>,
    pub fault_phase: usize,
    /// Let the TTLs pass at the end and check the memory (phase `gc`).
    pub gc_check: bool,
}

impl ScenarioConfig {
    pub fn new(nodes: usize, topology: Topology, seed: u64) -> Self {
        ScenarioConfig {
            fleet: FleetConfig::new(nodes, topology, seed),
            background: 50,
            services: 10,
            fault: None,
            fault_phase: 0,
            gc_check: true,
        }
    }
}

/// One measured phase.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseReport {
    pub name: &'static str,
    pub traffic: Traffic,
    /// Virtual time from the phase's last action until nothing was in flight.
    pub convergence: Micros,
    /// Virtual time from the phase's first action until nothing was in
    /// flight (what rates are divided by).
    pub span: Micros,
    /// `connect-leave`: virtual time from the action until the last node
    /// gained (connect) or lost (leave) its route to the client, and how
    /// many nodes route to it at the end.
    pub reach: Option<(Micros, usize)>,
    /// Table sizes when the phase settled (for churn: the largest average
    /// sampled during the phase).
    pub entries: EntryStats,
}

/// How a scenario ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Ok,
    /// The fleet could not be set up as asked.
    Setup(String),
    /// A phase hit the message (or wall-clock) budget.
    Halted {
        phase: &'static str,
        halt: Halt,
    },
    /// A phase settled with broken invariants.
    Broken {
        phase: &'static str,
        violations: Violations,
    },
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }
}

/// Everything measured in one scenario run.
#[derive(Debug, Clone)]
pub struct ScenarioReport {
    pub nodes: usize,
    pub topology: Topology,
    pub scenario: Scenario,
    pub seed: u64,
    /// Events the per-event figures are divided by.
    pub events: u64,
    pub links: usize,
    pub diameter: u32,
    pub setup: Traffic,
    pub setup_entries: EntryStats,
    pub setup_wall: Duration,
    pub phases: Vec<PhaseReport>,
    /// All phases together (the `gc` phase included: it sends nothing).
    pub total: Traffic,
    /// The busiest directed link over the whole scenario.
    pub max_link_bytes: u64,
    pub max_link_msgs: u64,
    pub peak_in_flight: u32,
    /// The largest table sizes seen (by average) at the end of a phase.
    pub entries: EntryStats,
    /// Table sizes once the TTLs passed (`gc_check`).
    pub gc_entries: Option<EntryStats>,
    /// Wall-clock time of the scenario's phases (setup excluded).
    pub wall: Duration,
    pub outcome: Outcome,
}

impl ScenarioReport {
    /// Everything but wall-clock times: equal for equal seeds.
    pub fn counts(&self) -> impl PartialEq + std::fmt::Debug + '_ {
        (
            (&self.setup, self.setup_entries, self.events, self.links),
            (
                &self.phases,
                &self.total,
                self.max_link_bytes,
                self.max_link_msgs,
            ),
            (
                self.peak_in_flight,
                self.entries,
                self.gc_entries,
                &self.outcome,
            ),
        )
    }

    pub fn per_event(&self, x: u64) -> f64 {
        x as f64 / self.events.max(1) as f64
    }

    /// Control bytes per second per link (both directions) over the
    /// measured phases' spans.
    pub fn bytes_per_sec_per_link(&self) -> f64 {
        let span: Micros = self.phases.iter().map(|p| p.span).sum();
        if span == 0 || self.links == 0 {
            return 0.0;
        }
        self.total.bytes as f64 / (span as f64 / 1e6) / self.links as f64
    }

    /// Bytes per second on the busiest directed link over the spans.
    pub fn busiest_link_bytes_per_sec(&self) -> f64 {
        let span: Micros = self.phases.iter().map(|p| p.span).sum();
        if span == 0 {
            return 0.0;
        }
        self.max_link_bytes as f64 / (span as f64 / 1e6)
    }
}

const SCENARIO_STREAM: u64 = 0x5ce0_a210;
const SEC: Micros = 1_000_000;

fn service(rng: &mut StdRng, services: usize) -> String {
    format!("acme/fleet/svc-{:02}", rng.random_range(0..services.max(1)))
}

/// Runs one scenario on a fresh fleet.
pub fn run(cfg: &ScenarioConfig, scenario: Scenario) -> ScenarioReport {
    let t_setup = Instant::now();
    let mut fleet = Fleet::new(cfg.fleet.clone());
    let n = fleet.node_count() as u32;
    let diameter = fleet.graph().diameter();
    let mut rep = ScenarioReport {
        nodes: cfg.fleet.nodes,
        topology: cfg.fleet.topology,
        scenario,
        seed: cfg.fleet.seed,
        events: 1,
        links: fleet.graph().edges.len(),
        diameter,
        setup: Traffic::default(),
        setup_entries: EntryStats::default(),
        setup_wall: Duration::ZERO,
        phases: Vec::new(),
        total: Traffic::default(),
        max_link_bytes: 0,
        max_link_msgs: 0,
        peak_in_flight: 0,
        entries: EntryStats::default(),
        gc_entries: None,
        wall: Duration::ZERO,
        outcome: Outcome::Ok,
    };
    if diameter == FAR {
        rep.outcome = Outcome::Setup("the overlay is not connected".into());
        return rep;
    }
    let mut rng = StdRng::seed_from_u64(cfg.fleet.seed ^ SCENARIO_STREAM);
    for j in 0..cfg.background {
        let node = rng.random_range(0..n);
        let svc = service(&mut rng, cfg.services);
        let inst = format!("bg-{j:05}-{:08x}", rng.random::<u32>());
        let c = fleet.add_client(node, &svc, &inst);
        fleet.schedule(0, Action::Connect(c));
    }
    fleet.schedule_all_links_up();
    let settled = fleet.run();
    rep.setup = fleet.take_traffic();
    rep.setup_entries = fleet.entry_stats();
    rep.setup_wall = t_setup.elapsed();
    if let Err(halt) = settled {
        rep.outcome = Outcome::Halted {
            phase: "setup",
            halt,
        };
        return rep;
    }
    if let Err(violations) = fleet.check() {
        rep.outcome = Outcome::Broken {
            phase: "setup",
            violations,
        };
        return rep;
    }
    fleet.reset_link_counters();

    let t_run = Instant::now();
    let mut phases: Vec<(&'static str, Vec<(Micros, Action)>)> = Vec::new();
    let start = fleet.now() + SEC;
    match scenario {
        Scenario::ConnectLeave => {
            // A service of its own, so that both of its names are new
            // interest at every N (with a pooled service, small fleets
            // often already have it locally and only one name moves).
            let node = rng.random_range(0..n);
            let c = fleet.add_client(
                node,
                "acme/fleet/probe",
                &format!("agent-{:08x}", rng.random::<u32>()),
            );
            let name = fleet.client_names(c)[0].to_owned();
            fleet.watch(&name, node);
            phases.push(("connect", vec![(start, Action::Connect(c))]));
            phases.push(("leave", vec![(0, Action::Leave(c))]));
        }
        Scenario::Churn {
            rate,
            secs,
            lifetime_ms: (lo, hi),
        } => {
            let events = u64::from(rate) * u64::from(secs);
            rep.events = events;
            let span = u64::from(secs) * SEC;
            let mut acts = Vec::new();
            for _ in 0..events {
                let at = start + rng.random_range(0..span.max(1));
                let life = rng.random_range(lo.min(hi) * 1000..=hi * 1000);
                let node = rng.random_range(0..n);
                let svc = service(&mut rng, cfg.services);
                let c = fleet.add_client(node, &svc, &format!("agent-{:08x}", rng.random::<u32>()));
                acts.push((at, Action::Connect(c)));
                acts.push((at + life, Action::Leave(c)));
            }
            let mut t = start;
            while t <= start + span + hi * 1000 {
                acts.push((t, Action::Sample));
                t += SEC;
            }
            phases.push(("churn", acts));
        }
        Scenario::LinkFlap => {
            let e = rng.random_range(0..fleet.graph().edges.len() as u32);
            phases.push(("down", vec![(start, Action::LinkDown(e))]));
            phases.push(("up", vec![(0, Action::LinkUp(e))]));
        }
        Scenario::NodeRestart => {
            let x = rng.random_range(0..n);
            phases.push(("down", vec![(start, Action::NodeDown(x))]));
            phases.push(("up", vec![(0, Action::NodeUp(x))]));
        }
        Scenario::Chaos {
            rate,
            secs,
            lifetime_ms: (lo, hi),
            outages,
            outage_ms: (olo, ohi),
        } => {
            let events = u64::from(rate) * u64::from(secs);
            rep.events = events.max(1);
            let span = u64::from(secs) * SEC;
            let mut acts = Vec::new();
            for _ in 0..events {
                let at = start + rng.random_range(0..span.max(1));
                let life = rng.random_range(lo.min(hi) * 1000..=hi * 1000);
                let node = rng.random_range(0..n);
                let svc = service(&mut rng, cfg.services);
                let c = fleet.add_client(node, &svc, &format!("agent-{:08x}", rng.random::<u32>()));
                acts.push((at, Action::Connect(c)));
                acts.push((at + life, Action::Leave(c)));
            }
            let edges = fleet.graph().edges.len() as u32;
            for _ in 0..outages {
                let at = start + rng.random_range(0..span.max(1));
                let len = rng.random_range(olo.min(ohi) * 1000..=ohi * 1000);
                if rng.random_range(0..4) == 0 {
                    let x = rng.random_range(0..n);
                    acts.push((at, Action::NodeDown(x)));
                    acts.push((at + len, Action::NodeUp(x)));
                } else {
                    let e = rng.random_range(0..edges);
                    acts.push((at, Action::LinkDown(e)));
                    acts.push((at + len, Action::LinkUp(e)));
                }
            }
            let mut t = start;
            while t <= start + span + hi.max(ohi) * 1000 {
                acts.push((t, Action::Sample));
                t += SEC;
            }
            phases.push(("chaos", acts));
        }
    }
    for (k, (name, acts)) in phases.into_iter().enumerate() {
        if k == cfg.fault_phase {
            fleet.set_fault(cfg.fault);
        }
        // Phases after the first start one virtual second after the
        // previous one settled.
        let base = fleet.now() + SEC;
        for (at, a) in acts {
            fleet.schedule(if at == 0 { base } else { at }, a);
        }
        let settled = fleet.run();
        let traffic = fleet.take_traffic();
        rep.total.absorb(&traffic);
        let quiet = match settled {
            Ok(q) => q,
            Err(halt) => {
                rep.outcome = Outcome::Halted { phase: name, halt };
                break;
            }
        };
        let entries = fleet
            .samples()
            .iter()
            .copied()
            .chain([fleet.entry_stats()])
            .max_by(|a, b| a.avg.total_cmp(&b.avg))
            .unwrap_or_default();
        if entries.avg > rep.entries.avg {
            rep.entries = entries;
        }
        let reach = fleet.watch_settled().map(|(count, last)| {
            (
                last.map_or(0, |t| t.saturating_sub(quiet.last_action)),
                count,
            )
        });
        rep.phases.push(PhaseReport {
            name,
            traffic,
            convergence: quiet.convergence(),
            span: quiet.span(),
            reach,
            entries,
        });
        if let Err(violations) = fleet.check() {
            rep.outcome = Outcome::Broken {
                phase: name,
                violations,
            };
            break;
        }
        // The next phase's reach counts from its own action.
        if let Some((name, origin)) = fleet_watch_key(&fleet) {
            fleet.watch(&name, origin);
        }
    }
    if cfg.gc_check && rep.outcome.is_ok() {
        let ttl = cfg
            .fleet
            .interest
            .tombstone_ttl
            .max(cfg.fleet.interest.unreachable_ttl);
        // Two GC periods (of the node's 1 s) beyond the TTLs.
        fleet.idle(ttl.as_micros() as Micros + 2 * SEC);
        let settled = fleet.run();
        let traffic = fleet.take_traffic();
        rep.total.absorb(&traffic);
        match settled {
            Err(halt) => rep.outcome = Outcome::Halted { phase: "gc", halt },
            Ok(_) => {
                rep.gc_entries = Some(fleet.entry_stats());
                if let Err(violations) = fleet.check().and_then(|()| fleet.check_memory()) {
                    rep.outcome = Outcome::Broken {
                        phase: "gc",
                        violations,
                    };
                }
            }
        }
    }
    let (b, m) = fleet.max_link();
    rep.max_link_bytes = b;
    rep.max_link_msgs = m;
    rep.peak_in_flight = fleet.peak_in_flight();
    rep.wall = t_run.elapsed();
    rep
}

fn fleet_watch_key(fleet: &Fleet) -> Option<(String, u32)> {
    fleet.watched().map(|(n, o)| (n.to_owned(), o))
}
