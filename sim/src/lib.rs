//! A deterministic fleet simulator for the interest protocol.
//!
//! Runs N [`slim_actors::interest::InterestTable`]s — the node's sans-IO
//! interest protocol, unchanged — in one process, linked by a [`topology`]
//! and driven by one event queue in virtual time ([`fleet`]), the way the
//! federation actor drives it (flush after every stimulus, per-peer pacing
//! with wake-ups, a GC timer per node): frames (`Frame::Interest`, counted
//! and sized with the wire codec) are delivered after each link's latency,
//! in order per link. [`scenario`]s (one connect + leave, churn, a link
//! flap, a node restart) measure what an event costs fleet-wide; [`check`]
//! verifies the routing invariants once the fleet settles, and that tables
//! hold exactly the live state once the TTLs passed. Everything is drawn
//! from one seed: same seed, same counts.
//!
//! ```
//! use slim_sim::{Scenario, ScenarioConfig, Topology, run};
//! let cfg = ScenarioConfig::new(5, Topology::Mesh, 1);
//! let r = run(&cfg, Scenario::ConnectLeave);
//! assert!(r.outcome.is_ok(), "{:?}", r.outcome);
//! assert!(r.total.msgs > 0);
//! ```

pub mod check;
pub mod fleet;
pub mod report;
pub mod scenario;
pub mod topology;

pub use check::{Violation, Violations};
pub use fleet::{Action, Cause, EntryStats, Fault, Fleet, FleetConfig, Halt, Traffic};
pub use scenario::{Outcome, PhaseReport, Scenario, ScenarioConfig, ScenarioReport, run};
pub use topology::{Graph, Topology};
