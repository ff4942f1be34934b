//! The simulator's own guarantees: the current protocol passes the
//! invariants under churn, flaps and restarts; the checker fails when an
//! announcement is lost; runs are reproducible; the message budget holds.

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
                // Every churn client left: withdrawals were sent.
                assert!(r.total.removes > 0);
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
        for topology in [Topology::Mesh, SPARSE] {
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

#[test]
fn a_lost_withdrawal_is_caught() {
    let mut c = cfg(5, Topology::Mesh, 1);
    c.fault = Some(Fault::DropFirstRemove);
    let r = run(&c, Scenario::ConnectLeave);
    let Outcome::Broken { phase, violations } = &r.outcome else {
        panic!("the lost withdrawal went unnoticed: {:?}", r.outcome);
    };
    assert_eq!(*phase, "leave");
    // The ghost route spreads: nodes keep routing the departed client.
    assert!(
        violations
            .first
            .iter()
            .all(|v| matches!(v, Violation::Departed { .. })),
        "{violations}"
    );
    let msg = violations.to_string();
    assert!(
        msg.contains("routes departed name acme/fleet/probe"),
        "{msg}"
    );
    assert!(msg.contains("node cluster-"), "{msg}");
}

#[test]
fn a_lost_announcement_is_caught() {
    // The first frame delivered in the connect phase is the origin's direct
    // announcement to its nearest peer: without it, that peer still reaches
    // the client, but over a detour.
    let mut c = cfg(5, Topology::Mesh, 1);
    c.fault = Some(Fault::DropNth(1));
    let r = run(&c, Scenario::ConnectLeave);
    let Outcome::Broken { phase, violations } = &r.outcome else {
        panic!("the lost announcement went unnoticed: {:?}", r.outcome);
    };
    assert_eq!(*phase, "connect");
    assert!(
        violations.first.iter().any(|v| matches!(
            v,
            Violation::NotShortest { .. } | Violation::Unreachable { .. }
        )),
        "{violations}"
    );
    // On a ring with no chord the same loss leaves nodes with no route.
    let mut c = cfg(6, Topology::Sparse { degree: 2 }, 1);
    c.fault = Some(Fault::DropNth(1));
    let r = run(&c, Scenario::ConnectLeave);
    let Outcome::Broken { violations, .. } = &r.outcome else {
        panic!("the lost announcement went unnoticed: {:?}", r.outcome);
    };
    assert!(
        violations.first.iter().any(|v| matches!(
            v,
            Violation::Unreachable { .. } | Violation::NotShortest { .. }
        )),
        "{violations}"
    );
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

#[test]
fn an_overlay_wider_than_max_hops_is_refused() {
    let mut c = cfg(40, Topology::Sparse { degree: 2 }, 1);
    c.fleet.max_hops = 8;
    let r = run(&c, Scenario::ConnectLeave);
    assert!(matches!(r.outcome, Outcome::Setup(_)), "{:?}", r.outcome);
}
