//! Issue 7 acceptance: the fleet demo (the README's main command) runs the
//! whole incident unattended, the key messages arrive decrypted at the right
//! agents, cluster A's node accepts no inbound connection, and Prometheus
//! sees routed messages on every node.

use std::process::Command;

#[test]
fn fleet_demo_resolves_the_incident_unattended() {
    let bin = slim_tests::netns::bin("slim-demo");
    let out = Command::new(&bin)
        .args([
            "--auto-approve",
            "--prometheus",
            "--work-ms",
            "300",
            "--timeout-secs",
            "240",
        ])
        .output()
        .expect("run slim-demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}\n{stderr}");
    assert!(out.status.success(), "slim-demo failed");
    assert!(stdout.contains("incident resolved"), "no resolution");
    assert!(!stdout.contains("FAIL"), "a check failed");
    for needle in [
        "ok   us-monitor          decrypted cve-detected",
        "ok   eu-remediation      decrypted decision",
        "ok   us-monitor          decrypted incident-resolved",
        "ok   eu-west-node accepted no inbound link",
        "eu-west-node",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?}");
    }
    // Every node routed messages while the demo ran, as Prometheus saw it.
    let routed = stdout
        .lines()
        .filter(|l| l.contains("routed messages/s") && l.trim_start().starts_with("ok"))
        .count();
    assert_eq!(routed, 3, "Prometheus rates for all three nodes");
}
