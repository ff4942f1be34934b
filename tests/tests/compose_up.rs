//! `docker compose up` for real: deploy/compose/docker-compose.yml with the
//! images scripts/images.sh builds from this repository (no registry), the
//! seed's incident run to "resolved" by the Python agents (with the
//! escalation handler's MCP tool call to cluster B and the remediation's A2A
//! task to the patcher, over the fabric), Prometheus scraping every node, a
//! dial into cluster A refused, and `down -v` always.
//!
//! Needs root (dockerd; `scripts/docker-env.sh` installs Debian's docker.io
//! and docker-compose and starts dockerd if none runs, and this test stops
//! the dockerd it started), the binaries of `cargo build --workspace --bins`
//! and the Python extension (`scripts/python-env.sh`): `scripts/test.sh`
//! does both first. The images are built from those debug binaries,
//! stripped of debug info (scripts/images.sh --bin-dir). Every wait is
//! bounded; the whole run takes a few minutes on 2 cores.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const PROJECT: &str = "slim-compose-test";
const NODES: [&str; 3] = ["admin-node", "eu-west-node", "us-east-node"];
const AGENTS: [&str; 6] = [
    "eu-monitor",
    "eu-remediation",
    "us-monitor",
    "escalation-handler",
    "cve-tools",
    "patcher",
];
/// The MCP tool server (cluster B) and the A2A agent (cluster A) by name, and
/// the advisory only the tool server knows (demo/agents/cve_tools.py).
const CVE_DB: &str = "acme/us-east/cve-db";
const PATCHER: &str = "acme/eu-west/patcher";
const ADVISORY: &str = "CVE-2021-23017";
const APPROVAL: &str = r#"{"decision":"APPROVE_DRAIN","node":"eu-west-7-node-3"}"#;
/// Cluster A's node on wan (dials out only) and cluster B's (reachable).
const A_WAN: &str = "172.28.0.12:4500";
const B_WAN: &str = "172.28.0.11:4500";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repo")
}

/// The target dir's profile directory this test was built in (target/debug).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/compose_up-HASH
    exe.parent()
        .and_then(Path::parent)
        .expect("target/debug")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The compose project; `down -v` (containers, networks, volumes) when dropped,
/// then the dockerd this test started, if it started one.
struct Fleet {
    file: PathBuf,
    env: Vec<(String, String)>,
    started_dockerd: bool,
    t0: Instant,
}

impl Fleet {
    fn compose(&self) -> Command {
        let mut c = Command::new("docker-compose");
        c.current_dir(repo())
            .args(["--ansi", "never", "-p", PROJECT, "-f"])
            .arg(&self.file)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    fn say(&self, what: &str) {
        println!("[{:6.1} s] {what}", self.t0.elapsed().as_secs_f64());
    }

    fn container(&self, service: &str) -> String {
        let o = run(self.compose().args(["ps", "-q", service]));
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    }

    fn inspect(&self, service: &str, format: &str) -> String {
        let id = self.container(service);
        if id.is_empty() {
            return String::new();
        }
        let o = run(Command::new("docker").args(["inspect", "-f", format, &id]));
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    }

    fn logs(&self, service: &str) -> String {
        let o = run(self.compose().args(["logs", "--no-color", service]));
        text(&o)
    }

    /// Polls `ok` every 500 ms until it holds or `limit` passes.
    fn wait_for(&self, what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
        let end = Instant::now() + limit;
        while !ok() {
            assert!(
                Instant::now() < end,
                "{what}: not within {limit:?}\n{}",
                self.snapshot()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        self.say(what);
    }

    /// What to look at when a wait fails: the services' states and log tails.
    fn snapshot(&self) -> String {
        let ps = text(&run(self.compose().arg("ps")));
        let logs = text(&run(self.compose().args([
            "logs",
            "--no-color",
            "--tail",
            "15",
        ])));
        format!("{ps}\n{logs}")
    }

    /// The JSON lines a Python agent printed (`docker-compose logs` prefixes each).
    fn agent_lines(&self, service: &str) -> Vec<Value> {
        self.logs(service)
            .lines()
            .filter_map(|l| l.split_once("| ").map(|(_, j)| j))
            .filter_map(|j| serde_json::from_str::<Value>(j).ok())
            .collect()
    }

    /// The agent-protocol call line (`"t":"call"`) `service` printed for
    /// `proto` to `target` with `op`, if any.
    fn call(&self, service: &str, proto: &str, target: &str, op: &str) -> Option<Value> {
        self.agent_lines(service).into_iter().find(|l| {
            l["t"] == "call" && l["proto"] == proto && l["target"] == target && l["op"] == op
        })
    }

    fn sent(&self, service: &str, kind: &str) -> bool {
        self.agent_lines(service)
            .iter()
            .any(|l| l["t"] == "sent" && l["kind"] == kind)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("compose project at failure:\n{}", self.snapshot());
        }
        let o = run(self.compose().args([
            "--profile",
            "tools",
            "down",
            "-v",
            "--remove-orphans",
            "--timeout",
            "5",
        ]));
        self.say(&format!(
            "down -v: {}",
            if o.status.success() {
                "ok".to_owned()
            } else {
                text(&o)
            }
        ));
        let left = run(Command::new("docker").args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.compose.project={PROJECT}"),
        ]));
        let left = String::from_utf8_lossy(&left.stdout).trim().to_owned();
        if !left.is_empty() {
            eprintln!("containers left after down: {left}");
        }
        if self.started_dockerd {
            let o = run(Command::new(repo().join("scripts/docker-env.sh")).arg("stop"));
            self.say(&format!("dockerd stopped: {}", o.status));
        }
    }
}

fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free udp port")
        .port()
}

#[test]
fn compose_up_runs_the_incident_to_resolved() {
    let root = repo();
    let t0 = Instant::now();
    // 1. The engine, then the images (from the binaries cargo built).
    let o = run(Command::new(root.join("scripts/docker-env.sh")).arg("start"));
    assert!(o.status.success(), "docker-env.sh start:\n{}", text(&o));
    let started_dockerd = String::from_utf8_lossy(&o.stdout).trim() == "started";
    let prom_port = free_port();
    let fleet = Fleet {
        file: root.join("deploy/compose/docker-compose.yml"),
        env: vec![
            ("SLIM_PUBLISH_IP".into(), "127.0.0.1".into()),
            ("SLIM_PROMETHEUS_PORT".into(), prom_port.to_string()),
            ("SLIM_NODE_PORT".into(), free_udp_port().to_string()),
            ("SLIM_CONTROLLER_PORT".into(), free_udp_port().to_string()),
        ],
        started_dockerd,
        t0,
    };
    fleet.say(&format!(
        "dockerd {}",
        if started_dockerd {
            "started"
        } else {
            "already running"
        }
    ));
    // A project left by an interrupted run would hold the fixed subnets.
    let _ = run(fleet
        .compose()
        .args(["--profile", "tools", "down", "-v", "--remove-orphans"]));
    let o = run(Command::new(root.join("scripts/images.sh"))
        .arg("--bin-dir")
        .arg(bin_dir()));
    assert!(o.status.success(), "scripts/images.sh:\n{}", text(&o));
    fleet.say(&format!(
        "images built:\n{}",
        String::from_utf8_lossy(&o.stdout).trim_end()
    ));

    // 2. up, and every node and the controller healthy.
    let o = run(fleet.compose().args(["up", "-d"]));
    assert!(o.status.success(), "up -d ({:?}):\n{}", fleet.env, text(&o));
    fleet.say("up -d");
    for svc in ["controller"].into_iter().chain(NODES) {
        fleet.wait_for(&format!("{svc} healthy"), Duration::from_secs(90), || {
            fleet.inspect(svc, "{{.State.Health.Status}}") == "healthy"
        });
    }
    fleet.wait_for(
        "cluster-a-firewall applied (exit 0)",
        Duration::from_secs(60),
        || {
            fleet.inspect(
                "cluster-a-firewall",
                "{{.State.Status}} {{.State.ExitCode}}",
            ) == "exited 0"
        },
    );

    // 3. The incident, with the Python agents.
    for a in AGENTS {
        fleet.wait_for(
            &format!("{a} (Python) ready"),
            Duration::from_secs(150),
            || fleet.agent_lines(a).iter().any(|l| l["t"] == "ready"),
        );
    }
    let o = run(fleet.compose().args(["run", "--rm", "-T", "inject-event"]));
    assert!(o.status.success(), "inject-event:\n{}", text(&o));
    fleet.say(&format!(
        "inject-event: {}",
        String::from_utf8_lossy(&o.stdout).trim()
    ));
    fleet.wait_for(
        "escalation-handler asked for approval",
        Duration::from_secs(120),
        || fleet.sent("escalation-handler", "approval-required"),
    );
    check_agent_protocols(&fleet);
    let o = run(fleet.compose().args([
        "run",
        "--rm",
        "-T",
        "operator",
        "slimctl",
        "channel",
        "publish",
        "acme/escalation/human-review",
        APPROVAL,
        "--session",
    ]));
    assert!(o.status.success(), "operator's approval:\n{}", text(&o));
    fleet.say("operator approved (slimctl channel publish --session)");
    fleet.wait_for(
        "incident resolved (eu-monitor sent incident-resolved)",
        Duration::from_secs(120),
        || fleet.sent("eu-monitor", "incident-resolved"),
    );
    for (who, kind) in [
        ("us-monitor", "correlation"),
        ("eu-remediation", "drain-complete"),
        ("escalation-handler", "decision-recorded"),
    ] {
        assert!(fleet.sent(who, kind), "{who} never sent {kind}");
    }
    fleet.wait_for(
        "us-monitor and eu-remediation received incident-resolved",
        Duration::from_secs(30),
        || {
            ["us-monitor", "eu-remediation"].iter().all(|a| {
                fleet
                    .agent_lines(a)
                    .iter()
                    .any(|l| l["t"] == "recv" && l["kind"] == "incident-resolved")
            })
        },
    );

    // 4. Prometheus: every node and the controller scraped, all up.
    let prom = SocketAddr::from(([127, 0, 0, 1], prom_port));
    let mut last = String::new();
    fleet.wait_for(
        "Prometheus: every node and the controller up",
        Duration::from_secs(60),
        || {
            let Ok(body) = http_get(prom, "/api/v1/targets?state=active") else {
                return false;
            };
            let Ok(v) = serde_json::from_str::<Value>(&body) else {
                return false;
            };
            let targets = v["data"]["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let up: BTreeSet<String> = targets
                .iter()
                .filter(|t| t["health"] == "up")
                .filter_map(|t| t["labels"]["instance"].as_str().map(str::to_owned))
                .collect();
            last = targets
                .iter()
                .map(|t| {
                    format!(
                        "{} {} {}",
                        t["labels"]["instance"], t["health"], t["lastError"]
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            up.len() == targets.len()
                && NODES.iter().all(|n| up.contains(&format!("{n}:9464")))
                && up.contains("controller:9465")
        },
    );
    fleet.say(&format!("targets: {last}"));

    // 5. Nobody dials cluster A: from wan, A's node never answers; B's does.
    let probe = |node: &str| {
        run(fleet.compose().args([
            "run",
            "--rm",
            "-T",
            "probe",
            "slimctl",
            "channel",
            "publish",
            "acme/monitoring/probe",
            "probe",
            "--node",
            node,
        ]))
    };
    // The control: B's node answers (and says nobody subscribed to the name).
    let b = probe(B_WAN);
    assert!(
        !text(&b).contains("cannot connect")
            && (b.status.success() || text(&b).contains("no_route")),
        "the probe could not reach cluster B's node {B_WAN} (the control):\n{}",
        text(&b)
    );
    let line = |o: &Output, pat: &str| {
        text(o)
            .lines()
            .find(|l| l.contains(pat))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    fleet.say(&format!(
        "probe → cluster B {B_WAN}: the node answered: {}",
        line(&b, "no_route")
    ));
    let a = probe(A_WAN);
    assert!(
        !a.status.success() && text(&a).contains("cannot connect"),
        "a dial from wan into cluster A's node {A_WAN} was not refused:\n{}",
        text(&a)
    );
    fleet.say(&format!(
        "probe → cluster A {A_WAN}: refused: {}",
        line(&a, "no answer")
    ));
    // It was the firewall: its drop rule counted the probe's packets.
    let node = fleet.container("eu-west-node");
    let o = run(Command::new("docker").args([
        "run",
        "--rm",
        "--user",
        "0:0",
        "--cap-add",
        "NET_ADMIN",
        "--network",
        &format!("container:{node}"),
        "slim-dev:dev",
        "nft",
        "list",
        "chain",
        "inet",
        "vpn",
        "inbound",
    ]));
    let rule = line(&o, "drop");
    let dropped: u64 = rule
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        dropped > 0,
        "cluster A's firewall dropped nothing:\n{}",
        text(&o)
    );
    fleet.say(&format!("cluster A's firewall: {rule}"));
    drop(fleet);
    println!("compose test: {:.1} s in all", t0.elapsed().as_secs_f64());
}

/// Before it asked for approval, the escalation handler called cve-db's MCP
/// tools in cluster B, and before it escalated, the remediation handed its
/// rolling update to the patcher over A2A and followed the streamed states.
fn check_agent_protocols(fleet: &Fleet) {
    let logs = |svc: &str| {
        fleet
            .agent_lines(svc)
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };
    // MCP: the handler's line carries the advisory the tool returned, and the
    // tool server saw the handler's SPIFFE ID (proven by MLS) on the call.
    let mcp = fleet
        .call("escalation-handler", "mcp", CVE_DB, "cve-db/lookup")
        .unwrap_or_else(|| {
            panic!(
                "escalation-handler made no MCP call to {CVE_DB}:\n{}",
                logs("escalation-handler")
            )
        });
    let text = mcp["text"].as_str().unwrap_or_default();
    assert!(
        text.contains(ADVISORY) && text.contains("runbook: 4 steps"),
        "the MCP call did not return cve-db's advisory and runbook: {mcp}"
    );
    let caller = "spiffe://acme.example/admin/agent/escalation-handler";
    assert!(
        fleet
            .agent_lines("cve-tools")
            .iter()
            .any(|l| l["t"] == "note"
                && l["text"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("lookup(nginx:1.21)") && t.ends_with(caller))),
        "cve-tools never served lookup to {caller}:\n{}",
        logs("cve-tools")
    );
    fleet.say(&format!("MCP: {text}"));
    // A2A: the task's states as streamed: at least 3 `working` in a row,
    // then `completed` last.
    let a2a = fleet
        .call("eu-remediation", "a2a", PATCHER, "SendStreamingMessage")
        .unwrap_or_else(|| {
            panic!(
                "eu-remediation handed no A2A task to {PATCHER}:\n{}",
                logs("eu-remediation")
            )
        });
    let steps: Vec<&str> = a2a["steps"]
        .as_array()
        .map(|s| s.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let working = steps.iter().filter(|s| **s == "working").count();
    let first = steps.iter().position(|s| *s == "working").unwrap_or(0);
    assert!(
        working >= 3
            && steps[first..first + working]
                .iter()
                .all(|s| *s == "working")
            && steps[first + working..] == ["completed"],
        "the A2A task's states {steps:?}: want at least 3 working in a row, then completed ({a2a})"
    );
    fleet.say(&format!(
        "A2A: {}",
        a2a["text"].as_str().unwrap_or_default()
    ));
}
