//! The simulator's own guarantees: the current protocol passes the
//! invariants (routes, and memory once the TTLs passed) under churn, flaps,
//! restarts and partitions longer than the TTLs; the checker fails when a
//! node loses frames and when tombstones are never collected; a single lost
//! frame is repaired by flooding; one connect+leave costs O(N) on a sparse
//! fleet; runs are reproducible; the message budget holds.

use slim_sim::{
    Fault, Outcome, Scenario, ScenarioConfig, ScenarioReport, Topology, Violation, run,
};

const CHURN: Scenario = Scenario::Churn {
    rate: 4,
    secs: 2,
    lifetime_ms: (100, 1500),
};

fn cfg(n: usize, topology: Topology, seed: u64) -> ScenarioConfig {
    let mut c = ScenarioConfig::new(n, topology, seed);
    c.background = 12;
    c.services = 4;
    c
}

/// Sparse with degree 3: at N = 5 a degree-4 overlay would be a full mesh.
const SPARSE: Topology = Topology::Sparse { degree: 3 };

fn assert_ok(r: &ScenarioReport) {
    assert!(
        r.outcome.is_ok(),
        "N={} {} {} seed {}: {:?}",
        r.nodes,
        r.topology.label(),
        r.scenario.label(),
        r.seed,
        r.outcome
    );
    assert!(r.gc_entries.is_some(), "the memory was not checked");
}

#[test]
fn invariants_hold_after_churn_mesh_and_sparse() {
    for n in [5, 10] {
        for topology in [Topology::Mesh, SPARSE] {
            for seed in 1..=3 {
                let r = run(&cfg(n, topology, seed), CHURN);
                assert_ok(&r);
                assert_eq!(r.events, 8);
                assert!(r.total.msgs > 0);
                // Every churn client left: tombstones were sent.
                assert!(r.total.absent > 0);
                assert_eq!(r.total.refused, 0);
            }
        }
    }
}

#[test]
fn invariants_hold_with_busy_nodes() {
    // Loopback-like links and nodes that take time per entry (mailboxes).
    for topology in [Topology::Mesh, SPARSE] {
        for seed in 1..=3 {
            let mut c = cfg(8, topology, seed);
            c.fleet.latency_us = (50, 200);
            c.fleet.proc_us = 20;
            for sc in [CHURN, Scenario::NodeRestart] {
                let r = run(&c, sc);
                assert_ok(&r);
                let again = run(&c, sc);
                assert_eq!(r.counts(), again.counts());
            }
        }
    }
}

#[test]
fn invariants_hold_after_connect_leave_flap_and_restart() {
    for n in [5, 10] {
        for topology in [Topology::Mesh, SPARSE, Topology::Sparse { degree: 2 }] {
            for seed in 1..=3 {
                for sc in [
                    Scenario::ConnectLeave,
                    Scenario::LinkFlap,
                    Scenario::NodeRestart,
                ] {
                    let r = run(&cfg(n, topology, seed), sc);
                    assert_ok(&r);
                    assert_eq!(r.phases.len(), 2);
                }
            }
        }
    }
}

/// Partitions longer than the TTLs, with churn on both sides: nodes
/// forget unreachable origins and tombstones while cut off, on their own
/// timers. These seeds broke the invariants (no route to live names,
/// routes to departed clients) before the protocol flooded an origin once
/// more when it became reachable again.
#[test]
fn invariants_hold_after_partitions_longer_than_the_ttls() {
    let chaos = |rate, outages| Scenario::Chaos {
        rate,
        secs: 90,
        lifetime_ms: (100, 40_000),
        outages,
        outage_ms: (100, 70_000),
    };
    for (n, seed, rate, outages) in [(8, 4, 1, 8), (8, 31, 1, 8), (8, 6, 2, 20), (12, 3, 2, 20)] {
        let mut c = cfg(n, Topology::Sparse { degree: 2 }, seed);
        c.background = 5;
        c.services = 2;
        let r = run(&c, chaos(rate, outages));
        assert_ok(&r);
    }
}

#[test]
fn a_connect_reaches_every_node_and_a_leave_leaves_none() {
    let r = run(
        &cfg(60, Topology::Sparse { degree: 4 }, 1),
        Scenario::ConnectLeave,
    );
    assert_ok(&r);
    let (t_connect, routed) = r.phases[0].reach.expect("watched");
    assert_eq!(routed, 59, "every other node routes to the new client");
    let (t_leave, routed) = r.phases[1].reach.expect("watched");
    assert_eq!(routed, 0, "no node routes to the departed client");
    // A flood over a few 1–50 ms links, nothing paced: well under a second.
    assert!(t_connect > 0 && t_connect < 500_000, "{t_connect} µs");
    assert!(t_leave > 0 && t_leave < 500_000, "{t_leave} µs");
    // One entry per name per link direction (but towards the sender).
    let names = r.phases[0].traffic.present;
    assert!(
        names <= 2 * 2 * r.links as u64,
        "{names} over {} links",
        r.links
    );
    // Tables come back to the background state once the TTLs passed.
    assert_eq!(r.gc_entries.expect("gc").avg, r.setup_entries.avg);
}

/// The checker is not vacuous: a node whose links silently lose every
/// frame (while staying up) misses the new client, or keeps routing it
/// after it left.
#[test]
fn a_deaf_node_is_caught() {
    for phase in [0, 1] {
        let mut caught = 0;
        for deaf in [0, 1] {
            let mut c = cfg(6, Topology::Mesh, 1);
            c.fault = Some(Fault::Deaf(deaf));
            c.fault_phase = phase;
            let r = run(&c, Scenario::ConnectLeave);
            let Outcome::Broken {
                phase: at,
                violations,
            } = &r.outcome
            else {
                // Only if the deaf node is the client's own (it hears
                // nothing it needs).
                assert!(r.outcome.is_ok(), "{:?}", r.outcome);
                continue;
            };
            caught += 1;
            let who = format!("node cluster-{deaf:04}");
            let msg = violations.to_string();
            assert!(msg.contains(&who), "{msg}");
            assert!(msg.contains("acme/fleet/probe"), "{msg}");
            if phase == 0 {
                assert_eq!(*at, "connect");
                assert!(
                    violations
                        .first
                        .iter()
                        .all(|v| matches!(v, Violation::Unreachable { .. })),
                    "{violations}"
                );
            } else {
                assert_eq!(*at, "leave");
                assert!(
                    violations
                        .first
                        .iter()
                        .all(|v| matches!(v, Violation::Departed { .. })),
                    "{violations}"
                );
                assert!(msg.contains("routes departed name"), "{msg}");
            }
        }
        assert!(caught >= 1, "the deaf node went unnoticed");
    }
}

/// The memory check is not vacuous either: with the GC timer never firing,
/// the departed client's tombstones stay in every table.
#[test]
fn tombstones_never_collected_are_caught() {
    let mut c = cfg(6, Topology::Mesh, 1);
    c.fleet.gc_every_us = 10_000_000_000;
    let r = run(&c, Scenario::ConnectLeave);
    let Outcome::Broken { phase, violations } = &r.outcome else {
        panic!("the leftover tombstones went unnoticed: {:?}", r.outcome);
    };
    assert_eq!(*phase, "gc");
    assert_eq!(violations.total, 6);
    assert!(
        violations.first.iter().all(|v| matches!(
            v,
            Violation::Memory {
                entries, expected, ..
            } if *entries == *expected + 2
        )),
        "{violations}"
    );
}

/// Flooding repairs a single lost frame: every node hears each entry from
/// every peer that has it.
#[test]
fn a_single_lost_frame_is_repaired_by_flooding() {
    for topology in [Topology::Mesh, SPARSE, Topology::Sparse { degree: 2 }] {
        for fault in [
            Fault::DropFirstTombstone,
            Fault::DropNth(1),
            Fault::DropNth(3),
        ] {
            let mut c = cfg(6, topology, 1);
            c.fault = Some(fault);
            c.fault_phase = usize::from(fault == Fault::DropFirstTombstone);
            let r = run(&c, Scenario::ConnectLeave);
            assert_ok(&r);
            assert_eq!(r.total.dropped, 1, "{} {fault:?}", topology.label());
        }
    }
}

/// One connect+leave on a sparse fleet floods each name once per link
/// direction: the cost grows with the links, i.e. linearly in N.
#[test]
fn connect_leave_cost_grows_linearly_on_sparse_fleets() {
    let sparse = Topology::Sparse { degree: 4 };
    let cost = |n: usize| {
        // No background clients: setting up the fleet (every link set
        // flooded everywhere) is what takes the time in a debug build.
        let mut c = cfg(n, sparse, 1);
        c.background = 0;
        c.gc_check = false;
        let r = run(&c, Scenario::ConnectLeave);
        assert!(r.outcome.is_ok(), "N={n}: {:?}", r.outcome);
        (r.total.bytes, r.total.msgs, r.links)
    };
    let (b100, m100, l100) = cost(100);
    let (b200, m200, l200) = cost(200);
    assert!(
        b200 as f64 <= 2.5 * b100 as f64,
        "N=100: {b100} B, N=200: {b200} B"
    );
    // At most one frame per link direction per change (two changes).
    assert!(m100 <= 2 * 2 * l100 as u64, "{m100} frames, {l100} links");
    assert!(m200 <= 2 * 2 * l200 as u64, "{m200} frames, {l200} links");
}

#[test]
fn the_same_seed_gives_the_same_counts() {
    for topology in [Topology::Mesh, Topology::Sparse { degree: 4 }] {
        for sc in [CHURN, Scenario::ConnectLeave, Scenario::NodeRestart] {
            let a = run(&cfg(10, topology, 7), sc);
            let b = run(&cfg(10, topology, 7), sc);
            assert_ok(&a);
            assert_eq!(
                a.counts(),
                b.counts(),
                "{} {}",
                topology.label(),
                sc.label()
            );
        }
    }
    // And the seed matters.
    let a = run(&cfg(10, Topology::Mesh, 1), CHURN);
    let b = run(&cfg(10, Topology::Mesh, 2), CHURN);
    assert_ne!(a.counts(), b.counts());
}

#[test]
fn a_storm_stops_at_the_budget() {
    let mut c = cfg(10, Topology::Mesh, 1);
    c.fleet.budget = 100;
    let r = run(&c, Scenario::ConnectLeave);
    // Setup alone exceeds 100 messages.
    let Outcome::Halted { halt, .. } = &r.outcome else {
        panic!("no budget stop: {:?}", r.outcome);
    };
    assert!(halt.to_string().contains("did not converge within budget"));
    // Checked after every event; one event (a link up: a flush at each end)
    // sends at most a frame per peer at each end.
    assert!(
        r.setup.msgs > 100 && r.setup.msgs <= 100 + 2 * 9,
        "{}",
        r.setup.msgs
    );
}
