//! Issue 16 acceptance at CI size: a controller and 12 `slim-node` processes
//! (above the controller's full-mesh size, so the links are its sparse plan
//! and interest crosses intermediate nodes)
//! with the fleet's settings (`deploy/fleet/`), clients connecting to random
//! nodes and leaving at 10 per second for 15 s beside a 100 msg/s cross-node
//! stream. The stream loses and duplicates nothing, no link goes down or
//! overflows its control queue, 5 s after the last client left no node
//! routes to any of them (registry names back to the pre-churn baseline),
//! once the withdrawals' tombstones expire (30 s) the interest tables are
//! back to their size before the churn, and node memory stays sane.
//!
//! The run is `slim-loadtest fleet --mode churn` (the same driver the
//! benchmark figures come from); its JSON report is what is checked. The
//! binaries are the workspace's, next to this test (`scripts/test.sh`
//! builds them first: `cargo build --workspace --bins`). Latency is printed,
//! not asserted. `SLIM_FLEET_CHURN_NODES` runs another fleet size and
//! `SLIM_FLEET_CHURN_SECS` another churn length (the full size:
//! `SLIM_FLEET_CHURN_NODES=20 SLIM_FLEET_CHURN_SECS=60`). (At 12
//! nodes the path-vector protocol this replaced still had 4,206 entries and
//! 299 names of departed clients 5 s after the churn, debug binaries on two
//! cores.)

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use slim_tests::netns::bin;

/// Fleet size unless `SLIM_FLEET_CHURN_NODES` says otherwise.
const NODES: u64 = 12;
const CHURN_RATE: f64 = 10.0;
const CHURN_SECS: f64 = 15.0;
const STREAM_RATE: f64 = 100.0;

fn num(v: &Value, path: &str) -> f64 {
    let mut cur = v;
    for k in path.split('.') {
        cur = &cur[k];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("report has no number at {path}: {cur}"))
}

#[test]
fn churn_beside_a_cross_node_stream_loses_nothing_and_leaves_nothing_behind() {
    // Fail early and clearly if a binary is missing.
    for b in ["slim-node", "slim-controller"] {
        bin(b);
    }
    let nodes: u64 = std::env::var("SLIM_FLEET_CHURN_NODES")
        .ok()
        .map(|v| v.parse().expect("SLIM_FLEET_CHURN_NODES: a number"))
        .unwrap_or(NODES);
    let churn_secs: f64 = std::env::var("SLIM_FLEET_CHURN_SECS")
        .ok()
        .map(|v| v.parse().expect("SLIM_FLEET_CHURN_SECS: seconds"))
        .unwrap_or(CHURN_SECS);
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("churn.json");
    let t0 = Instant::now();
    let out = Command::new(bin("slim-loadtest"))
        .args([
            "fleet",
            "--mode",
            "churn",
            "--nodes",
            &nodes.to_string(),
            "--churn-rate",
            &CHURN_RATE.to_string(),
            "--duration",
            &format!("{churn_secs}s"),
            "--stream-rate",
            &STREAM_RATE.to_string(),
            "--idle",
            "3s",
            "--stale-after",
            "5s",
            "--stale-grace",
            "10s",
            "--memory-after",
            "40s",
            // The driver stops every process itself by then.
            "--max-wall",
            &format!("{}s", churn_secs + 165.0),
            "--json",
        ])
        .arg(&json)
        .output()
        .expect("run slim-loadtest");
    let wall = t0.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "slim-loadtest fleet ({:.1} s):\n{stderr}\n{stdout}",
        wall.as_secs_f64()
    );
    assert!(
        out.status.success(),
        "slim-loadtest fleet failed: {}",
        out.status
    );
    assert!(wall < Duration::from_secs(170), "the run took {wall:?}");

    let reports: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("report")).expect("JSON");
    let r = &reports[0];
    let c = &r["churn"];
    assert_eq!(num(r, "nodes"), nodes as f64);

    let mut failed = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            failed.push(what);
        }
    };
    // The churn really happened.
    let planned = CHURN_RATE * churn_secs;
    let completed = num(c, "clients.completed");
    check(
        completed >= 0.8 * planned,
        format!(
            "churn clients completed {completed} of ~{planned} (connect failures {}, \
             subscribe failures {}, skipped {})",
            num(c, "clients.connect_failures"),
            num(c, "clients.subscribe_failures"),
            num(c, "clients.skipped")
        ),
    );
    // The stream: nothing lost, nothing twice.
    let sent = num(c, "stream.sent");
    check(
        sent >= 0.8 * STREAM_RATE * churn_secs,
        format!("stream sent only {sent}"),
    );
    check(
        num(c, "stream.lost") == 0.0,
        format!(
            "stream lost {} of {sent} (first missing {})",
            num(c, "stream.lost"),
            c["stream"]["first_missing"]
        ),
    );
    check(
        num(c, "stream.duplicates") == 0.0,
        format!("stream duplicates: {}", num(c, "stream.duplicates")),
    );
    check(
        num(c, "stream.publisher_reconnects") == 0.0
            && num(c, "stream.subscriber_reconnects") == 0.0,
        format!(
            "stream clients reconnected: publisher {}, subscriber {}",
            num(c, "stream.publisher_reconnects"),
            num(c, "stream.subscriber_reconnects")
        ),
    );
    // Links: no resets.
    check(
        num(c, "links.link_down") == 0.0,
        format!("links went down: {}", num(c, "links.link_down")),
    );
    check(
        num(c, "links.control_overflow") == 0.0,
        format!(
            "control_overflow link resets: {}",
            num(c, "links.control_overflow")
        ),
    );
    check(
        num(c, "links.peer_link_ends_after") == num(c, "links.peer_link_ends_before"),
        format!(
            "link ends up before {} vs after {}",
            num(c, "links.peer_link_ends_before"),
            num(c, "links.peer_link_ends_after")
        ),
    );
    // No route to a departed client 5 s after the churn stopped.
    check(
        c["stale"]["clean"].as_bool() == Some(true),
        format!(
            "stale routes 5 s after the churn: {} interest entries and {} names above the \
             baseline on {} (clean after: {}); routes: {}",
            num(c, "stale.interest_entries_above_baseline"),
            num(c, "stale.registry_names_above_baseline"),
            c["stale"]["nodes_not_clean"],
            c["stale"]["clean_after_s"],
            c["stale"]["stale_routes"]
        ),
    );
    // No memory kept per departed client: interest entries (tombstones
    // included) back to the baseline once tombstones expire (30 s).
    check(
        c["stale"]["memory_clean_after_s"].is_number(),
        format!(
            "interest entries still {} above the baseline {} s after the churn",
            num(c, "stale.interest_entries_above_baseline_at_memory_check"),
            num(c, "stale.memory_check_after_s")
        ),
    );
    // Memory: sane, not tight.
    let idle = num(c, "memory.rss_idle_max_kib");
    let after = num(c, "memory.rss_after_max_kib");
    let peak = num(c, "memory.rss_peak_max_kib");
    check(
        after <= 2.0 * idle + 64.0 * 1024.0 && peak <= 1024.0 * 1024.0,
        format!("node RSS: idle {idle} KiB, after {after} KiB, peak {peak} KiB"),
    );
    eprintln!(
        "stream latency p50 {} ms, p99 {} ms, max {} ms",
        num(c, "stream.latency_p50_ms"),
        num(c, "stream.latency_p99_ms"),
        num(c, "stream.latency_max_ms")
    );
    assert!(failed.is_empty(), "failed:\n  {}", failed.join("\n  "));
}
