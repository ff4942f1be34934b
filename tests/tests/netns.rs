//! Multi-cluster behind real NAT: network namespaces, nftables, the real
//! `slim-node`/`slimctl` binaries. Needs root (CI runs as root).

use std::path::Path;
use std::time::Duration;

use slim_tests::netns::{self, B_IP, NatTopology, ROUTER_A_WAN_IP};
use slim_tests::slim_auth::{DevCa, SpiffeId};

const TD: &str = "acme.example";
const CHAN: &str = "acme/monitoring/security-incident";

fn repo_file(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
        .to_string_lossy()
        .into_owned()
}

fn issue(ca: &DevCa, dir: &Path, path: &str) -> String {
    let id = SpiffeId::parse(&format!("spiffe://{TD}/{path}")).expect("id");
    let out = dir.join(path.replace('/', "_"));
    ca.issue_to_dir(&id, Duration::from_secs(3600), &out)
        .expect("issue");
    out.to_string_lossy().into_owned()
}

/// The harness itself: cluster A reaches out through its NAT router and gets
/// answers; nothing from outside gets in (counted by nftables).
#[test]
fn nat_lets_cluster_a_out_and_nothing_in() {
    let topo = NatTopology::build();
    let work = tempfile::tempdir().expect("tempdir");
    let ca = DevCa::generate(TD).expect("ca");
    let node_b_id = issue(&ca, work.path(), "cluster-b/node/b");
    let eu = issue(&ca, work.path(), "cluster-a/agent/security-monitor");
    let us = issue(&ca, work.path(), "cluster-b/agent/security-monitor");

    let listen = format!("{B_IP}:4500");
    let node_b = topo.b.spawn(
        &netns::bin("slim-node"),
        &["--config", &repo_file("deploy/config/node.toml")],
        &[
            ("SLIM_NODE_ID", "node-b"),
            ("SLIM_LISTEN", &listen),
            ("SLIM_IDENTITY_DIR", &node_b_id),
            ("SLIM_METRICS_LISTEN", "127.0.0.1:9464"),
        ],
        &work.path().join("node-b.log"),
    );
    node_b.wait_log("listening on", Duration::from_secs(20));

    // An agent in A dials out to B's node through the NAT.
    let sub = topo.a.spawn(
        &netns::bin("slimctl"),
        &[
            "channel",
            "subscribe",
            CHAN,
            "--node",
            &listen,
            "--identity",
            &eu,
            "--as",
            "acme/eu-west/security-monitor",
            "--count",
            "1",
            "--timeout",
            "20s",
        ],
        &[],
        &work.path().join("sub.log"),
    );
    sub.wait_log("subscribed", Duration::from_secs(20));
    topo.b.exec(&[
        netns::bin("slimctl").to_str().expect("utf8"),
        "channel",
        "publish",
        CHAN,
        "{\"event\":\"cve\"}",
        "--node",
        &listen,
        "--identity",
        &us,
        "--as",
        "acme/us-east/security-monitor",
    ]);
    let mut sub = sub;
    let status = sub.wait_exit(Duration::from_secs(20));
    let log = sub.log_text();
    assert!(
        status.is_some_and(|s| s.success()),
        "subscriber in A did not get the message: {log}"
    );
    assert!(
        log.contains("spiffe://acme.example/cluster-b/agent/security-monitor"),
        "{log}"
    );
    assert!(
        topo.router_a.counter("outbound") > 0,
        "A's traffic did not go through its NAT"
    );

    // From outside, A's router admits nothing new: a UDP probe from B to the
    // router's public address is dropped and counted.
    let before = topo.router_a.counter("inbound_new");
    let probe = topo.b.try_exec(&[
        netns::bin("slimctl").to_str().expect("utf8"),
        "channel",
        "publish",
        CHAN,
        "x",
        "--node",
        &format!("{ROUTER_A_WAN_IP}:4500"),
        "--identity",
        &us,
        "--as",
        "acme/us-east/security-monitor",
    ]);
    assert!(
        !probe.status.success(),
        "a connection into cluster A succeeded"
    );
    assert!(
        topo.router_a.counter("inbound_new") > before,
        "the inbound attempt was not counted by the NAT router"
    );
    drop(node_b);
}
