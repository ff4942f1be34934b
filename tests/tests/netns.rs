//! Multi-cluster behind real NAT: network namespaces, nftables, the real
//! `slim-node`/`slimctl` binaries. Needs root (CI runs as root). The fixtures
//! (certificates, the fleet) are in `netns/fleet.rs`.

#[path = "netns/fleet.rs"]
mod fleet;

use std::time::{Duration, Instant};

use fleet::*;
use slim_tests::netns::{self, ADMIN_IP, B_IP, NatTopology, Proc, ROUTER_A_WAN_IP};
use slim_tests::slim_auth::DevCa;

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

/// Issue 5 acceptance: an agent in A subscribes; an agent in B publishing
/// reaches it with nothing configured for the channel anywhere, and vice
/// versa; A's node accepts no inbound connection; no agent listens on TCP.
#[test]
fn cross_cluster_by_name_through_nat() {
    let _one = ONE_FLEET.lock();
    let fleet = Fleet::start();
    let mesh = fleet.wait_mesh(Duration::from_secs(30));
    eprintln!("links up {mesh:?} after the nodes started");
    let inbound_before = fleet.topo.router_a.counter("inbound_new");

    for (sub_ns, sub_id, sub_name, pub_ns, pub_id, pub_name) in [
        (
            "a",
            "cluster-a/agent/security-monitor",
            "acme/eu-west/security-monitor",
            "b",
            "cluster-b/agent/security-monitor",
            "acme/us-east/security-monitor",
        ),
        (
            "b",
            "cluster-b/agent/security-monitor",
            "acme/us-east/security-monitor",
            "a",
            "cluster-a/agent/security-monitor",
            "acme/eu-west/security-monitor",
        ),
    ] {
        let mut sub = fleet.agent(
            sub_ns,
            sub_id,
            sub_name,
            &["recv", CHAN, "--count", "50", "--timeout-secs", "30"],
            &format!("recv-{sub_ns}.log"),
        );
        sub.wait_log("subscribed", Duration::from_secs(20));
        // The publisher sends a numbered message every 10 ms from before the
        // subscription can have propagated; the subscriber counts from the
        // first that reaches it, so it reports how long propagation took.
        let mut publ = fleet.agent(
            pub_ns,
            pub_id,
            pub_name,
            &["send", CHAN, "--count", "3000", "--rate", "100"],
            &format!("send-{pub_ns}.log"),
        );
        let got = summary(&mut sub, Duration::from_secs(40));
        eprintln!("{sub_name} in {sub_ns} <- {pub_name} in {pub_ns}: {got}");
        assert_eq!(got["duplicates"], 0, "{got}");
        assert_eq!(
            got["from_identity"],
            format!("spiffe://{TD}/{pub_id}"),
            "deliveries carry the publisher's authenticated SPIFFE ID"
        );
        publ.kill9();
    }

    // A dialled every one of its links; nothing new came in through its NAT.
    let a_links = fleet.links_up("eu-west-node");
    assert!(a_links.len() >= 2, "{a_links:?}");
    assert!(
        a_links
            .iter()
            .all(|(_, dir)| dir.eq_ignore_ascii_case("dialled")),
        "cluster A's node accepted a link: {a_links:?}"
    );
    let inbound = fleet.topo.router_a.counter("inbound_new");
    eprintln!("nftables inbound_new at A's router: {inbound_before} -> {inbound}");
    assert_eq!(
        inbound, inbound_before,
        "something tried to open a connection into cluster A"
    );
    let udp_a = fleet.topo.a.exec(&["ss", "-uanpH"]);
    eprintln!("UDP sockets in cluster A:\n{udp_a}");
    for ns in [&fleet.topo.a, &fleet.topo.b] {
        let tcp = NatTopology::tcp_listeners(ns);
        eprintln!("TCP listeners in {}: {tcp:?}", ns.name);
        assert!(
            tcp.iter()
                .all(|l| !l.contains("slim-test-agent") && !l.contains("slimctl")),
            "an agent listens on TCP: {tcp:?}"
        );
    }
}

/// Issue 5 acceptance: cut cluster A off for 10 s under load; its links come
/// back after the cut ends and delivery resumes; a reliable session across
/// the cut loses nothing.
#[test]
fn link_flap_recovers_and_reliable_session_loses_nothing() {
    let _one = ONE_FLEET.lock();
    let fleet = Fleet::start();
    fleet.wait_mesh(Duration::from_secs(30));

    // Raw multicast B -> A at 200/s across the cut (losses expected while cut).
    let mut raw_sub = fleet.agent(
        "a",
        "cluster-a/agent/security-monitor",
        "acme/eu-west/security-monitor",
        &["recv", CHAN, "--count", "100000", "--timeout-secs", "40"],
        "flap-recv.log",
    );
    raw_sub.wait_log("subscribed", Duration::from_secs(20));
    let _raw_pub = fleet.agent(
        "b",
        "cluster-b/agent/security-monitor",
        "acme/us-east/security-monitor",
        &["send", CHAN, "--count", "8000", "--rate", "200"],
        "flap-send.log",
    );
    // A reliable session from B's monitor to A's escalation-free service.
    let mut serve = fleet.agent(
        "a",
        "cluster-a/agent/security-monitor",
        "acme/eu-west/security-monitor",
        // 180 s: the receiver must outlive the sender's close (its own
        // bound is 150 s after up to 90 s of sending), or the close meets
        // "no route" instead of a close-ack.
        &["p2p-serve", "--count", "3000", "--timeout-secs", "180"],
        "p2p-serve.log",
    );
    serve.wait_log("listening for sessions", Duration::from_secs(20));
    let mut send = fleet.agent(
        "b",
        "cluster-b/agent/security-monitor",
        "acme/us-east/security-monitor",
        &[
            "p2p-send",
            "acme/eu-west/security-monitor",
            "--count",
            "3000",
            "--rate",
            "100",
            "--timeout-secs",
            "90",
        ],
        "p2p-send.log",
    );
    send.wait_log("session open", Duration::from_secs(30));
    let received = |p: &Proc| {
        p.log_text()
            .lines()
            .filter_map(|l| l.strip_prefix("received "))
            .filter_map(|n| n.trim().parse::<u64>().ok())
            .max()
            .unwrap_or(0)
    };
    fleet.wait_until(
        "raw delivery before the cut",
        Duration::from_secs(20),
        || received(&raw_sub) >= 1000,
    );

    eprintln!("cutting cluster A off for 10 s");
    fleet.topo.block_a_to(B_IP, true);
    fleet.topo.router_a.exec(&[
        "nft",
        "add",
        "rule",
        "inet",
        "slim",
        "flap",
        "ip",
        "daddr",
        &ADMIN_IP.to_string(),
        "drop",
    ]);
    fleet.topo.router_a.exec(&[
        "nft",
        "add",
        "rule",
        "inet",
        "slim",
        "flap",
        "ip",
        "saddr",
        &ADMIN_IP.to_string(),
        "drop",
    ]);
    let cut = Instant::now();
    let a_links_up = || -> u64 {
        let m = fleet
            .topo
            .a
            .try_exec(&["curl", "-s", "http://127.0.0.1:9464/metrics"]);
        String::from_utf8_lossy(&m.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("slim_links{state=\"up\"} "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    };
    // A's node notices the dead path by itself (liveness pings).
    fleet.wait_until(
        "A's node sees its links down",
        Duration::from_secs(10),
        || a_links_up() == 0,
    );
    eprintln!(
        "A's node saw its links down {:?} into the cut",
        cut.elapsed()
    );
    std::thread::sleep(Duration::from_secs(10).saturating_sub(cut.elapsed()));
    let before_restore = received(&raw_sub);
    fleet.topo.block_a_to(B_IP, false);
    let restored = Instant::now();
    eprintln!("restored");
    let back = fleet.wait_until("A's links up again", Duration::from_secs(30), || {
        a_links_up() >= 2
    });
    eprintln!("A's node has both links up again {back:?} after the restore");
    // Delivery across the restored path resumes (the subscriber logs every 100).
    fleet.wait_until("raw delivery resumes", Duration::from_secs(30), || {
        received(&raw_sub) >= before_restore + 200
    });
    eprintln!(
        "raw delivery resumed (200 more messages) {:?} after the restore",
        restored.elapsed()
    );
    // A's node's own view of its links (its metrics endpoint in namespace a).
    let metrics = fleet
        .topo
        .a
        .exec(&["curl", "-s", "http://127.0.0.1:9464/metrics"]);
    let pick = |name: &str| -> Vec<String> {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .map(str::to_owned)
            .collect()
    };
    eprintln!(
        "eu-west-node after the cut: {:?} {:?} {:?}",
        pick("slim_links{"),
        pick("slim_link_down_total"),
        pick("slim_link_reconnects_total")
    );
    // Bounds, not expectations (a pass takes seconds here): the sender's
    // sending deadline plus its close watchdog, on a loaded 2-core box.
    let sent = summary(&mut send, Duration::from_secs(240));
    let got = summary(&mut serve, Duration::from_secs(30));
    // The sender's counters through the cut (every 2 s), for the CI log.
    for l in send
        .log_text()
        .lines()
        .filter(|l| l.contains("stats at") || l.contains("closed in") || l.contains("delivery of"))
    {
        eprintln!("p2p-send: {l}");
    }
    eprintln!("reliable session across the cut: sender {sent}, receiver {got}");
    assert_eq!(got["received_in_order"], 3000);
    assert_eq!(got["duplicates"], 0);
    assert_eq!(got["lost"], 0);
    raw_sub.kill9();
}

/// Issue 5 acceptance: kill -9 the controller; traffic goes on, a new
/// subscription still propagates over the existing links; after a restart
/// the node list and the audit trail are complete.
#[test]
fn controller_restart_keeps_traffic_and_audit() {
    let _one = ONE_FLEET.lock();
    let mut fleet = Fleet::start();
    fleet.wait_mesh(Duration::from_secs(30));
    let first = "acme/monitoring/security-incident";
    let second = "acme/escalation/human-review";

    // A subscriber that stays for the whole test (for the route and channel views).
    let stay = "acme/monitoring/cluster-health";
    let mut staying = fleet.agent(
        "a",
        "cluster-a/agent/security-monitor",
        "acme/eu-west/security-monitor",
        &["recv", stay, "--count", "1000000", "--timeout-secs", "120"],
        "ctl-stay.log",
    );
    staying.wait_log("subscribed", Duration::from_secs(20));
    let mut sub1 = fleet.agent(
        "a",
        "cluster-a/agent/security-monitor",
        "acme/eu-west/security-monitor",
        &["recv", first, "--count", "20", "--timeout-secs", "40"],
        "ctl-recv1.log",
    );
    sub1.wait_log("subscribed", Duration::from_secs(20));
    // The audit has the subscription before the controller dies.
    fleet.wait_until(
        "audit records the first subscription",
        Duration::from_secs(20),
        || {
            fleet
                .admin(&["audit", "--channel", first])
                .as_array()
                .is_some_and(|a| !a.is_empty())
        },
    );

    fleet.controller.as_mut().expect("controller").kill9();
    eprintln!("controller killed");
    let _pub1 = fleet.agent(
        "b",
        "cluster-b/agent/security-monitor",
        "acme/us-east/security-monitor",
        &["send", first, "--count", "2000", "--rate", "100"],
        "ctl-send1.log",
    );
    let got1 = summary(&mut sub1, Duration::from_secs(45));
    eprintln!("with the controller down, {first}: {got1}");

    // A subscription made while the controller is down still propagates.
    let mut sub2 = fleet.agent(
        "admin",
        "admin/agent/escalation-handler",
        "acme/admin/escalation-handler",
        &["recv", second, "--count", "20", "--timeout-secs", "40"],
        "ctl-recv2.log",
    );
    sub2.wait_log("subscribed", Duration::from_secs(20));
    let _pub2 = fleet.agent(
        "a",
        "cluster-a/agent/security-monitor",
        "acme/eu-west/security-monitor",
        &["send", second, "--count", "2000", "--rate", "100"],
        "ctl-send2.log",
    );
    let got2 = summary(&mut sub2, Duration::from_secs(45));
    eprintln!("with the controller down, new subscription {second}: {got2}");

    fleet.start_controller();
    eprintln!("controller restarted");
    fleet.wait_until("all nodes re-registered", Duration::from_secs(30), || {
        let nodes = fleet.admin(&["node", "list"]);
        nodes
            .as_array()
            .is_some_and(|a| a.iter().filter(|n| n["connected"] == true).count() == 3)
    });
    let nodes = fleet.admin(&["node", "list"]);
    eprintln!("slimctl node list: {nodes}");
    fleet.wait_until(
        "audit has both subscriptions",
        Duration::from_secs(30),
        || {
            let a1 = fleet.admin(&["audit", "--channel", first]);
            let a2 = fleet.admin(&["audit", "--channel", second]);
            a1.as_array().is_some_and(|a| !a.is_empty())
                && a2.as_array().is_some_and(|a| !a.is_empty())
        },
    );
    // The fleet view after the restart: B's node routes A's subscription,
    // and the channel list has it.
    fleet.wait_until("B's routes reported", Duration::from_secs(20), || {
        fleet
            .admin(&["route", "list", "--node-id", "us-east-node"])
            .to_string()
            .contains(stay)
    });
    let routes = fleet.admin(&["route", "list", "--node-id", "us-east-node"]);
    let row = routes
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == stay).cloned());
    eprintln!("slimctl route list --node-id us-east-node ({stay}): {row:?}");
    assert!(
        row.as_ref()
            .is_some_and(|r| r.to_string().contains("eu-west-node")),
        "B routes {stay} towards eu-west-node: {row:?}"
    );
    let channels = fleet.admin(&["channel", "list"]);
    let chan = channels
        .as_array()
        .and_then(|a| a.iter().find(|c| c.to_string().contains(stay)).cloned());
    eprintln!("slimctl channel list ({stay}): {chan:?}");
    assert!(chan.is_some(), "channel list has {stay}: {channels}");
    staying.kill9();
    let audit = fleet.admin(&["audit", "--channel", second]);
    eprintln!("slimctl audit --channel {second}: {audit}");
    assert!(
        audit
            .to_string()
            .contains("spiffe://acme.example/admin/agent/escalation-handler"),
        "the audit names who joined: {audit}"
    );
}

/// Issue 13: the clusters address each other only by host names (each
/// namespace's `/etc/hosts`): the controller, and the external endpoints
/// the controller hands to dialers as names. Then B's node moves to another
/// address under the same name, and the nodes that dial it resolve the name
/// again and link to the new address; while the name resolves to nothing,
/// their dials say "cannot resolve", not "cannot connect".
#[test]
fn clusters_dial_by_name_and_follow_a_name_to_its_new_address() {
    let _one = ONE_FLEET.lock();
    let mut fleet = Fleet::start_named();
    let t = fleet.wait_mesh(Duration::from_secs(30));
    eprintln!("links up {t:?} after the nodes started, every address a name");
    let nodes = fleet.admin(&["node", "list"]);
    let b = nodes
        .as_array()
        .and_then(|a| a.iter().find(|n| n["node_id"] == "us-east-node").cloned())
        .expect("us-east-node registered");
    eprintln!("slimctl node list (us-east-node): {b}");
    let b_host = format!("{B_NODE_HOST}:4500");
    assert_eq!(b["external_host"], b_host.as_str(), "{b}");
    let old = format!("{B_IP}:4500");
    for dialer in ["eu-west-node", "admin-node"] {
        let addrs = fleet.link_addrs(dialer, "us-east-node");
        eprintln!("{dialer} -> us-east-node ({b_host}) via {addrs:?}");
        assert_eq!(addrs, vec![old.clone()], "{dialer}");
    }

    // B goes away and its name with it: the dials fail to resolve.
    fleet.nodes[1].kill9();
    fleet.set_hosts(None);
    let a_log = fleet.nodes[2].log_text();
    let before = a_log.matches("cannot resolve").count();
    fleet.wait_until(
        "A reports that B's name does not resolve",
        Duration::from_secs(40),
        || {
            fleet.nodes[2]
                .log_text()
                .matches(&format!("cannot resolve {b_host}"))
                .count()
                > before
        },
    );
    let line = fleet.nodes[2]
        .log_text()
        .lines()
        .rev()
        .find(|l| l.contains(&format!("cannot resolve {b_host}")))
        .map(str::to_owned)
        .unwrap_or_default();
    eprintln!("eu-west-node while the name is gone: {line}");

    // B comes back on a new address under the same name.
    let new_ip = Ipv4::new(192, 168, 100, 21);
    let b_ns = &fleet.topo.b;
    b_ns.ip(&["addr", "del", &format!("{B_IP}/24"), "dev", "eth0"]);
    b_ns.ip(&["addr", "add", &format!("{new_ip}/24"), "dev", "eth0"]);
    fleet.set_hosts(Some(new_ip));
    let moved = Instant::now();
    fleet.nodes[1] = fleet.spawn_node(1);
    let new = format!("{new_ip}:4500");
    fleet.wait_until(
        "both dialers link to B's new address",
        Duration::from_secs(40),
        || {
            ["eu-west-node", "admin-node"]
                .iter()
                .all(|d| fleet.link_addrs(d, "us-east-node") == vec![new.clone()])
        },
    );
    eprintln!(
        "{b_host} now {new}: links up again {:?} after B restarted there",
        moved.elapsed()
    );
    for dialer in ["eu-west-node", "admin-node"] {
        eprintln!(
            "{dialer} -> us-east-node ({b_host}) via {:?}",
            fleet.link_addrs(dialer, "us-east-node")
        );
    }
    // Traffic crosses the re-resolved link.
    let mut sub = fleet.agent(
        "b",
        "cluster-b/agent/security-monitor",
        "acme/us-east/security-monitor",
        &["recv", CHAN, "--count", "20", "--timeout-secs", "30"],
        "names-recv.log",
    );
    sub.wait_log("subscribed", Duration::from_secs(20));
    let mut publ = fleet.agent(
        "a",
        "cluster-a/agent/security-monitor",
        "acme/eu-west/security-monitor",
        &["send", CHAN, "--count", "3000", "--rate", "100"],
        "names-send.log",
    );
    let got = summary(&mut sub, Duration::from_secs(40));
    eprintln!("A -> B after the move: {got}");
    assert_eq!(got["duplicates"], 0, "{got}");
    publ.kill9();
}
