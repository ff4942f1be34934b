//! `slim-demo`: the seed's incident scenario (§5–§8) on this machine, as
//! separate processes: a controller, three nodes (admin; cluster A "EU-West",
//! behind the VPN, which only dials out; cluster B "US-East"), the four agents
//! on three MLS channels, an event injector, and the operator (`slimctl`).
//! Identities come from the development Workload API server (one socket per
//! workload, as a SPIRE agent attests each workload). Nodes and the controller
//! load the fleet config files `deploy/fleet/*.toml` (embedded here; the
//! compose file and the namespace tests use the same files). The agents are
//! the Python ones (`demo/agents/*.py`, on the `slim_agents` SDK) by default,
//! the Rust one (`slim-demo-agent`) with `--rust-agents`: both print the same
//! JSON lines ([`Line`]), which is all this program reads from them. With
//! `--record-dir DIR` the agents and this program also keep machine-readable
//! records there (see [`slim_demo`]), for checks made from outside the demo.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use slim_auth::{DevCa, SpiffeId};
use slim_demo::{
    CVE_PATCH, HUMAN_REVIEW, Line, Recorder, SECURITY_INCIDENT, TRUST_DOMAIN, approval_payload,
};
use slim_devspire::{DevSpire, DevSpireConfig};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const FLEET: [(&str, &str); 5] = [
    (
        "controller.toml",
        include_str!("../../deploy/fleet/controller.toml"),
    ),
    (
        "node-admin.toml",
        include_str!("../../deploy/fleet/node-admin.toml"),
    ),
    (
        "node-eu-west.toml",
        include_str!("../../deploy/fleet/node-eu-west.toml"),
    ),
    (
        "node-us-east.toml",
        include_str!("../../deploy/fleet/node-us-east.toml"),
    ),
    (
        "policy.toml",
        include_str!("../../deploy/fleet/policy.toml"),
    ),
];

/// Every workload of the demo and its SPIFFE ID path.
const WORKLOADS: [(&str, &str); 10] = [
    ("controller", "admin/controller/main"),
    ("admin-node", "admin/node/admin-node"),
    ("eu-west-node", "cluster-a/node/eu-west-node"),
    ("us-east-node", "cluster-b/node/us-east-node"),
    ("eu-monitor", "cluster-a/agent/security-monitor"),
    ("eu-remediation", "cluster-a/agent/remediation"),
    ("us-monitor", "cluster-b/agent/security-monitor"),
    ("escalation-handler", "admin/agent/escalation-handler"),
    ("event-source", "cluster-a/k8s/event-source"),
    ("operator", "ops/slimctl/operator"),
];

#[derive(Parser, Debug)]
#[command(about = "The SLIM fleet demo: a security incident across three clusters")]
struct Args {
    /// Approve the drain as the operator automatically (unattended run).
    #[arg(long)]
    auto_approve: bool,
    /// Where the binaries are (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Keep logs and state here (default: a temporary directory, removed).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Simulated work (rolling update, drain) in milliseconds.
    #[arg(long, default_value_t = 1500)]
    work_ms: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Start Prometheus (Debian's `prometheus`) scraping every node and show
    /// the per-node routed-message rates at the end.
    #[arg(long)]
    prometheus: bool,
    /// Run the Rust agents (`slim-demo-agent`) instead of the Python ones.
    #[arg(long)]
    rust_agents: bool,
    /// The Python that runs the agents, with `slim_agents` installed
    /// (default: `$SLIM_VENV/bin/python`, SLIM_VENV defaulting to
    /// `~/.cache/slim-venv`; `scripts/python-env.sh` sets it up).
    #[arg(long, env = "SLIM_DEMO_PYTHON")]
    python: Option<PathBuf>,
    /// Where the Python agents are (default: `demo/agents` of this source tree).
    #[arg(long, env = "SLIM_DEMO_AGENTS")]
    agents_dir: Option<PathBuf>,
    /// Keep machine-readable records here: each agent's own record
    /// (`<workload>.jsonl`: what it sent, received and decided) and this
    /// program's (`demo.jsonl`: the injected event, the approval, the links,
    /// the Prometheus rates). See the `slim_demo` crate docs for the format.
    #[arg(long)]
    record_dir: Option<PathBuf>,
}

/// The four roles: workload (its Workload API socket), role, node.
const AGENTS: [(&str, &str, &str); 4] = [
    ("escalation-handler", "escalation-handler", "admin-node"),
    ("eu-monitor", "eu-monitor", "eu-west-node"),
    ("eu-remediation", "eu-remediation", "eu-west-node"),
    ("us-monitor", "us-monitor", "us-east-node"),
];

/// Every message the scenario has an agent send, once each: (workload,
/// channel, kind). The run waits for all of them after the resolution.
const SCENARIO_SENDS: [(&str, &str, &str); 12] = [
    ("eu-monitor", SECURITY_INCIDENT, "cve-detected"),
    ("us-monitor", SECURITY_INCIDENT, "correlation"),
    ("eu-remediation", CVE_PATCH, "patch-attempt"),
    ("eu-remediation", SECURITY_INCIDENT, "patch-attempt"),
    ("eu-remediation", SECURITY_INCIDENT, "patch-failed"),
    ("eu-remediation", HUMAN_REVIEW, "escalation"),
    ("escalation-handler", HUMAN_REVIEW, "runbook"),
    ("escalation-handler", HUMAN_REVIEW, "approval-required"),
    ("escalation-handler", HUMAN_REVIEW, "decision-recorded"),
    ("eu-remediation", SECURITY_INCIDENT, "drain-started"),
    ("eu-remediation", SECURITY_INCIDENT, "drain-complete"),
    ("eu-monitor", SECURITY_INCIDENT, "incident-resolved"),
];

/// The key messages and who must receive (and decrypt) each: (kind,
/// channel, receivers).
const CHECKS: [(&str, &str, &[&str]); 8] = [
    (
        "cve-detected",
        SECURITY_INCIDENT,
        &["us-monitor", "eu-remediation"],
    ),
    (
        "correlation",
        SECURITY_INCIDENT,
        &["eu-monitor", "eu-remediation"],
    ),
    ("patch-attempt", CVE_PATCH, &["eu-monitor"]),
    (
        "escalation",
        HUMAN_REVIEW,
        &["escalation-handler", "eu-monitor"],
    ),
    (
        "approval-required",
        HUMAN_REVIEW,
        &["eu-remediation", "eu-monitor"],
    ),
    (
        "decision",
        HUMAN_REVIEW,
        &["eu-remediation", "escalation-handler"],
    ),
    (
        "drain-complete",
        SECURITY_INCIDENT,
        &["eu-monitor", "us-monitor"],
    ),
    (
        "incident-resolved",
        SECURITY_INCIDENT,
        &["us-monitor", "eu-remediation"],
    ),
];

/// What the Python agents need: `slim_agents`, and 3.11 for `asyncio.TaskGroup`.
const PYTHON_CHECK: &str = "import sys, slim_agents\n\
    if sys.version_info < (3, 11): sys.exit('Python ' + sys.version.split()[0] + ' is older than 3.11')";

/// Which agents run: the same roles, the same JSON lines on stdout.
enum Agents {
    /// `slim-demo-agent --role ROLE` (demo/src/bin/slim-demo-agent.rs).
    Rust,
    /// `PYTHON DIR/ROLE.py` (demo/agents/eu_monitor.py, …).
    Python { python: PathBuf, dir: PathBuf },
}

impl Agents {
    /// Picks the agents and checks they can run: for Python, that the
    /// interpreter imports `slim_agents` and every agent file is there.
    fn resolve(args: &Args) -> Result<Agents> {
        if args.rust_agents {
            return Ok(Agents::Rust);
        }
        let python = match &args.python {
            Some(p) => p.clone(),
            None => {
                let venv = match std::env::var_os("SLIM_VENV") {
                    Some(v) => PathBuf::from(v),
                    None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
                        .join(".cache/slim-venv"),
                };
                venv.join("bin/python")
            }
        };
        let dir = args
            .agents_dir
            .clone()
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("agents"));
        let how = "\n  build and install it:  ./scripts/python-env.sh  (the venv ~/.cache/slim-venv, or $SLIM_VENV)\
                   \n  or use another python: --python PATH  (or SLIM_DEMO_PYTHON)\
                   \n  or the Rust agents:    --rust-agents";
        let check = std::process::Command::new(&python)
            .args(["-c", PYTHON_CHECK])
            .stdin(Stdio::null())
            .output();
        match check {
            Err(e) => bail!(
                "the Python agents need {} ({e}) with the slim_agents package.{how}",
                python.display()
            ),
            Ok(out) if !out.status.success() => {
                let err = String::from_utf8_lossy(&out.stderr);
                bail!(
                    "the Python agents need Python 3.11+ with the slim_agents package; {} says: {}.{how}",
                    python.display(),
                    err.trim().lines().last().unwrap_or("no error output")
                )
            }
            Ok(_) => {}
        }
        for (_, role, _) in AGENTS {
            let f = dir.join(Agents::python_file(role));
            if !f.exists() {
                bail!(
                    "{} is missing (the Python agents; --agents-dir names their directory)",
                    f.display()
                );
            }
        }
        Ok(Agents::Python { python, dir })
    }

    fn python_file(role: &str) -> String {
        format!("{}.py", role.replace('-', "_"))
    }

    fn describe(&self) -> String {
        match self {
            Agents::Rust => "Rust, slim-demo-agent".into(),
            Agents::Python { dir, .. } => format!("Python, {}/*.py", dir.display()),
        }
    }
}

struct Procs {
    children: Vec<(String, Child)>,
}

impl Procs {
    async fn stop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.start_kill();
        }
        for (_, c) in &mut self.children {
            let _ = c.wait().await;
        }
    }

    /// A process that exited early is a failure of the demo.
    fn check_alive(&mut self) -> Result<()> {
        for (name, c) in &mut self.children {
            if let Ok(Some(st)) = c.try_wait() {
                bail!("{name} exited early ({st}); see its log");
            }
        }
        Ok(())
    }
}

fn free_udp() -> Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn free_tcp() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Demo {
    bin: PathBuf,
    agents: Agents,
    work: PathBuf,
    start: Instant,
    sockets: BTreeMap<&'static str, String>,
    nodes: BTreeMap<&'static str, SocketAddr>,
    metrics: BTreeMap<&'static str, SocketAddr>,
    controller: SocketAddr,
    /// `--record-dir`, and this program's record in it (`demo.jsonl`).
    record_dir: Option<PathBuf>,
    rec: Recorder,
}

impl Demo {
    fn socket(&self, workload: &str) -> &str {
        &self.sockets[workload]
    }

    fn stamp(&self) -> String {
        self.stamp_at(Instant::now())
    }

    fn stamp_at(&self, at: Instant) -> String {
        let t = at.duration_since(self.start);
        format!("[{:02}:{:04.1}]", t.as_secs() / 60, t.as_secs_f64() % 60.0)
    }

    fn cmd(&self, bin: &str, workload: &str) -> Command {
        self.cmd_path(&self.bin.join(bin), workload)
    }

    /// `program` with `workload`'s Workload API socket.
    fn cmd_path(&self, program: &Path, workload: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SPIFFE_ENDPOINT_SOCKET", self.socket(workload))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    fn log(&self, name: &str) -> Result<std::fs::File> {
        Ok(std::fs::File::create(
            self.work.join(format!("{name}.log")),
        )?)
    }

    fn slimctl_conn(&self, node: &str) -> Vec<String> {
        vec![
            "--node".into(),
            self.nodes[node].to_string(),
            "--spiffe-socket".into(),
            self.socket("operator").to_owned(),
            "--as".into(),
            "ops/slimctl/operator".into(),
        ]
    }

    async fn slimctl(&self, args: &[String]) -> Result<std::process::Output> {
        let out = self
            .cmd("slimctl", "operator")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .context("run slimctl")?;
        Ok(out)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let bin = match &args.bin_dir {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .to_path_buf(),
    };
    let agents = match Agents::resolve(&args) {
        Ok(a) => a,
        Err(e) => {
            // A setup problem, not a failure of the demo: say what to do.
            eprintln!("slim-demo: {e:#}");
            std::process::exit(2);
        }
    };
    let needed: &[&str] = match agents {
        Agents::Rust => &[
            "slim-node",
            "slim-controller",
            "slimctl",
            "inject-event",
            "slim-demo-agent",
        ],
        Agents::Python { .. } => &["slim-node", "slim-controller", "slimctl", "inject-event"],
    };
    for b in needed {
        if !bin.join(b).exists() {
            bail!(
                "{} is missing: build the workspace binaries first (cargo build --release --workspace --bins)",
                bin.join(b).display()
            );
        }
    }
    let tmp;
    let work = match &args.work_dir {
        Some(w) => {
            std::fs::create_dir_all(w)?;
            w.clone()
        }
        None => {
            tmp = tempfile::Builder::new().prefix("slim-fleet-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let result = run(&args, bin, agents, work.clone()).await;
    if let Err(e) = &result {
        eprintln!("demo FAILED: {e:#}\nlogs: {}", work.display());
        if args.work_dir.is_none() {
            // Keep the logs of a failed run.
            let keep =
                std::env::temp_dir().join(format!("slim-fleet-failed-{}", std::process::id()));
            let _ = copy_logs(&work, &keep);
            eprintln!("logs kept in {}", keep.display());
        }
    }
    result
}

fn copy_logs(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.path().extension().is_some_and(|x| x == "log") {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

async fn run(args: &Args, bin: PathBuf, agents: Agents, work: PathBuf) -> Result<()> {
    let start = Instant::now();
    println!(
        "== SLIM fleet demo: a security incident across three clusters (trust domain {TRUST_DOMAIN})"
    );
    let fleet_dir = work.join("fleet");
    std::fs::create_dir_all(&fleet_dir)?;
    for (name, text) in FLEET {
        std::fs::write(fleet_dir.join(name), text)?;
    }

    // Identities: a development CA and one Workload API socket per workload.
    let ca_dir = work.join("ca");
    if !ca_dir.join(slim_auth::devca::CA_CERT_FILE).exists() {
        DevCa::init(&ca_dir, TRUST_DOMAIN).context("development CA")?;
    }
    let mut spire = Vec::new();
    let mut sockets = BTreeMap::new();
    for (workload, path) in WORKLOADS {
        let id = SpiffeId::parse(&format!("spiffe://{TRUST_DOMAIN}/{path}"))?;
        let socket_path = work.join("spire").join(format!("{workload}.sock"));
        let cfg = DevSpireConfig {
            socket_path: socket_path.clone(),
            ids: vec![id],
            svid_ttl: Duration::from_secs(3600),
            jwt_ttl: Duration::from_secs(300),
            rotate_every: None,
            jwt_key_dir: None,
        };
        spire.push(DevSpire::start(cfg, DevCa::load(&ca_dir)?).await?);
        sockets.insert(workload, format!("unix://{}", socket_path.display()));
    }
    println!(
        "   development Workload API (SPIRE agent stand-in): one socket per workload under {}/spire",
        work.display()
    );

    let mut nodes = BTreeMap::new();
    let mut metrics = BTreeMap::new();
    for n in ["admin-node", "eu-west-node", "us-east-node"] {
        nodes.insert(n, SocketAddr::from(([127, 0, 0, 1], free_udp()?)));
        metrics.insert(n, SocketAddr::from(([127, 0, 0, 1], free_tcp()?)));
    }
    let controller = SocketAddr::from(([127, 0, 0, 1], free_udp()?));
    metrics.insert(
        "controller",
        SocketAddr::from(([127, 0, 0, 1], free_tcp()?)),
    );
    let rec = match &args.record_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
            Recorder::open(Some(&d.join("demo.jsonl")))?
        }
        None => Recorder::default(),
    };
    let kind = match agents {
        Agents::Rust => "rust",
        Agents::Python { .. } => "python",
    };
    rec.write(&serde_json::json!({ "t": "agents", "kind": kind }));
    let demo = Demo {
        bin,
        agents,
        work: work.clone(),
        start,
        sockets,
        nodes,
        metrics,
        controller,
        record_dir: args.record_dir.clone(),
        rec,
    };
    let mut procs = Procs {
        children: Vec::new(),
    };
    let outcome = drive(args, &demo, &mut procs, &fleet_dir).await;
    procs.stop().await;
    drop(spire);
    outcome
}

async fn wait_log(path: &Path, needle: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::fs::read_to_string(path).is_ok_and(|s| s.contains(needle)) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "{} did not log {needle:?} within {timeout:?}",
        path.display()
    )
}

async fn drive(args: &Args, demo: &Demo, procs: &mut Procs, fleet: &Path) -> Result<()> {
    // Control plane.
    let data = demo.work.join("controller-data");
    let c = demo
        .cmd("slim-controller", "controller")
        .arg("--config")
        .arg(fleet.join("controller.toml"))
        .env("SLIM_CONTROLLER_LISTEN", demo.controller.to_string())
        .env("SLIM_DATA_DIR", &data)
        .env(
            "SLIM_METRICS_LISTEN",
            demo.metrics["controller"].to_string(),
        )
        .stdout(demo.log("controller")?)
        .stderr(demo.log("controller-err")?)
        .spawn()
        .context("start slim-controller")?;
    procs.children.push(("controller".into(), c));
    println!("== controller (admin cluster) on {}", demo.controller);

    // Data plane: cluster A's node has no external endpoint: it only dials out.
    for (node, file, reachable, what) in [
        ("admin-node", "node-admin.toml", true, "admin cluster"),
        (
            "us-east-node",
            "node-us-east.toml",
            true,
            "cluster B, US-East",
        ),
        (
            "eu-west-node",
            "node-eu-west.toml",
            false,
            "cluster A, EU-West, behind the VPN: dials out only",
        ),
    ] {
        let mut cmd = demo.cmd("slim-node", node);
        cmd.arg("--config")
            .arg(fleet.join(file))
            .env("SLIM_LISTEN", demo.nodes[node].to_string())
            .env("SLIM_METRICS_LISTEN", demo.metrics[node].to_string())
            .env("SLIM_CONTROLLER", demo.controller.to_string())
            .stdout(demo.log(node)?)
            .stderr(demo.log(&format!("{node}-err"))?);
        if reachable {
            cmd.env("SLIM_EXTERNAL_ENDPOINT", demo.nodes[node].to_string());
        }
        let child = cmd.spawn().with_context(|| format!("start {node}"))?;
        procs.children.push((node.into(), child));
        println!(
            "== {node} ({what}) on {}; metrics http://{}/metrics",
            demo.nodes[node], demo.metrics[node]
        );
    }
    for node in ["admin-node", "us-east-node", "eu-west-node"] {
        let log = demo.work.join(format!("{node}.log"));
        let err = demo.work.join(format!("{node}-err.log"));
        if wait_log(&log, "listening on", Duration::from_secs(30))
            .await
            .is_err()
        {
            wait_log(&err, "listening on", Duration::from_secs(1))
                .await
                .with_context(|| format!("{node} did not start"))?;
        }
    }

    let mut prom = None;
    if args.prometheus {
        prom = Some(start_prometheus(demo, procs).await?);
    }

    // Agents.
    let (lines_tx, mut lines) = mpsc::channel::<(String, Instant, Line)>(1024);
    for (workload, role, node) in AGENTS {
        let mut cmd = match &demo.agents {
            Agents::Rust => {
                let mut c = demo.cmd("slim-demo-agent", workload);
                c.args(["--role", role]);
                c
            }
            Agents::Python { python, dir } => {
                let mut c = demo.cmd_path(python, workload);
                c.arg(dir.join(Agents::python_file(role)))
                    .env("PYTHONUNBUFFERED", "1");
                c
            }
        };
        if let Some(dir) = &demo.record_dir {
            cmd.arg("--record")
                .arg(dir.join(format!("{workload}.jsonl")));
        }
        let mut child = cmd
            .args(["--work-ms", &args.work_ms.to_string()])
            .env("SLIM_NODE", demo.nodes[node].to_string())
            .stdout(Stdio::piped())
            .stderr(demo.log(workload)?)
            .spawn()
            .with_context(|| format!("start agent {workload}"))?;
        let out = child.stdout.take().context("agent stdout")?;
        let tx = lines_tx.clone();
        let name = workload.to_string();
        tokio::spawn(async move {
            let mut r = BufReader::new(out).lines();
            while let Ok(Some(l)) = r.next_line().await {
                if let Ok(line) = serde_json::from_str::<Line>(&l) {
                    let _ = tx.send((name.clone(), Instant::now(), line)).await;
                }
            }
        });
        procs.children.push((workload.into(), child));
    }
    println!(
        "== agents ({}): eu-west/security-monitor, eu-west/remediation (cluster A), us-east/security-monitor (cluster B), admin/escalation-handler",
        demo.agents.describe()
    );

    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut ready = std::collections::BTreeSet::new();
    let mut recvs: Vec<(String, Line)> = Vec::new();
    while ready.len() < 4 {
        let (who, at, line) = next_line(&mut lines, procs, deadline).await?;
        match &line {
            Line::Ready { agent } => {
                ready.insert(who.clone());
                println!("{} {agent} ready", demo.stamp_at(at));
            }
            Line::Note { agent, text } => println!("{}   ({agent}: {text})", demo.stamp_at(at)),
            _ => recvs.push((who, line)),
        }
    }

    println!(
        "\n== incident: inject-event --type cve --severity critical --image nginx:1.21 (cluster A's event source)"
    );
    let out = demo
        .cmd("inject-event", "event-source")
        .args([
            "--type",
            "cve",
            "--severity",
            "critical",
            "--image",
            "nginx:1.21",
        ])
        .env("SLIM_NODE", demo.nodes["eu-west-node"].to_string())
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "inject-event failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    demo.rec.write(&serde_json::json!({ "t": "injected",
        "to": "acme/eu-west/security-monitor",
        "event": { "type": "cve", "severity": "critical", "image": "nginx:1.21" } }));
    println!(
        "\n== timeline (who said what on which channel; every payload MLS-encrypted end to end)"
    );

    let conn = demo.slimctl_conn("admin-node");
    let join_cmd = format!(
        "SPIFFE_ENDPOINT_SOCKET={} slimctl channel join {HUMAN_REVIEW} --node {} --as ops/slimctl/operator",
        demo.socket("operator"),
        demo.nodes["admin-node"]
    );
    let approve_cmd = format!(
        "SPIFFE_ENDPOINT_SOCKET={} slimctl channel publish {HUMAN_REVIEW} '{}' --session --node {} --as ops/slimctl/operator",
        demo.socket("operator"),
        approval_payload(),
        demo.nodes["admin-node"]
    );
    let mut approved = false;
    let mut resolved = false;
    // (workload, channel, kind) of every message an agent said it sent.
    let mut sent: Vec<(String, String, String)> = Vec::new();
    while !resolved {
        let (who, at, line) = next_line(&mut lines, procs, deadline).await?;
        match &line {
            Line::Sent {
                agent,
                channel,
                kind,
                text,
            } => {
                sent.push((who.clone(), channel.clone(), kind.clone()));
                println!(
                    "{} {agent:<26} → {:<20} {text}",
                    demo.stamp_at(at),
                    short(channel)
                );
                if kind == "approval-required" && !approved {
                    approved = true;
                    println!(
                        "\n   operator, in another terminal:\n     {join_cmd}\n     {approve_cmd}\n"
                    );
                    if args.auto_approve {
                        println!(
                            "{} operator (slimctl, --auto-approve) → {:<20} {}",
                            demo.stamp(),
                            short(HUMAN_REVIEW),
                            approval_payload()
                        );
                        let mut a: Vec<String> = vec![
                            "channel".into(),
                            "publish".into(),
                            HUMAN_REVIEW.into(),
                            approval_payload(),
                            "--session".into(),
                        ];
                        a.extend(conn.iter().cloned());
                        let out = demo.slimctl(&a).await?;
                        if !out.status.success() {
                            bail!(
                                "slimctl channel publish --session failed: {}{}",
                                String::from_utf8_lossy(&out.stdout),
                                String::from_utf8_lossy(&out.stderr)
                            );
                        }
                        let payload: serde_json::Value = serde_json::from_str(&approval_payload())?;
                        demo.rec.write(&serde_json::json!({ "t": "approved",
                            "channel": HUMAN_REVIEW,
                            "spiffe_id": format!("spiffe://{TRUST_DOMAIN}/ops/slimctl/operator"),
                            "payload": payload }));
                    } else {
                        println!("   waiting for the operator's decision …");
                    }
                }
                if kind == "incident-resolved" {
                    resolved = true;
                }
            }
            Line::Note { agent, text } => println!("{}   ({agent}: {text})", demo.stamp_at(at)),
            Line::Recv { .. } => recvs.push((who, line)),
            Line::Ready { .. } => {}
        }
    }
    // Let the last messages reach everyone: wait (bounded) until every
    // message of the scenario was sent and every key message received.
    let received = |recvs: &[(String, Line)], r: &str, channel: &str, kind: &str| {
        recvs.iter().any(|(who, l)| {
            matches!(l, Line::Recv { channel: c, kind: k, .. } if who == r && c == channel && k == kind)
        })
    };
    let settle = Instant::now() + Duration::from_secs(30);
    loop {
        let all_sent = SCENARIO_SENDS.iter().all(|(w, c, k)| {
            sent.iter()
                .any(|(w2, c2, k2)| w2 == w && c2 == c && k2 == k)
        });
        let all_received = CHECKS.iter().all(|(kind, channel, receivers)| {
            receivers.iter().all(|r| received(&recvs, r, channel, kind))
        });
        if all_sent && all_received {
            break;
        }
        match tokio::time::timeout_at(settle.into(), lines.recv()).await {
            Ok(Some((who, _, line))) => match &line {
                Line::Recv { .. } => recvs.push((who, line)),
                Line::Sent { channel, kind, .. } => {
                    sent.push((who.clone(), channel.clone(), kind.clone()))
                }
                _ => {}
            },
            _ => break,
        }
    }

    println!("\n== checks");
    let mut failed = 0;
    for (workload, channel, kind) in SCENARIO_SENDS {
        if !sent
            .iter()
            .any(|(w, c, k)| w == workload && c == channel && k == kind)
        {
            failed += 1;
            println!("   FAIL {workload:<19} never sent {kind} on {channel}");
        }
    }
    for (kind, channel, receivers) in CHECKS {
        for r in receivers {
            let got = recvs.iter().find_map(|(who, l)| match l {
                Line::Recv {
                    channel: c,
                    kind: k,
                    spiffe_id,
                    from,
                    ..
                } if who == r && c == channel && k == kind => {
                    Some((from.clone(), spiffe_id.clone()))
                }
                _ => None,
            });
            match got {
                Some((from, id)) => println!(
                    "   ok   {r:<19} decrypted {kind:<18} on {} from {from} [{id}]",
                    short(channel)
                ),
                None => {
                    failed += 1;
                    println!("   FAIL {r:<19} never received {kind} on {channel}");
                }
            }
        }
    }
    // Cluster A's node only dialled out.
    let mut links_args: Vec<String> = vec![
        "--output".into(),
        "json".into(),
        "link".into(),
        "list".into(),
    ];
    links_args.extend(["--controller".into(), demo.controller.to_string()]);
    links_args.extend(["--spiffe-socket".into(), demo.socket("operator").to_owned()]);
    // Nodes report their links to the controller every few seconds: wait
    // (bounded) until it knows cluster A's node's links to both other nodes,
    // which the messages above crossed.
    let reported = Instant::now() + Duration::from_secs(30);
    let links = loop {
        let out = demo.slimctl(&links_args).await?;
        let links: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let peers: std::collections::BTreeSet<&str> = links
            .as_array()
            .into_iter()
            .flatten()
            .filter(|l| l["node_id"] == "eu-west-node")
            .filter_map(|l| l["link"]["peer_node_id"].as_str())
            .collect();
        if (peers.contains("admin-node") && peers.contains("us-east-node"))
            || Instant::now() > reported
        {
            break links;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    demo.rec
        .write(&serde_json::json!({ "t": "links", "links": links }));
    let a_links: Vec<&serde_json::Value> = links
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|l| l["node_id"] == "eu-west-node")
                .collect()
        })
        .unwrap_or_default();
    let accepted = a_links
        .iter()
        .filter(|l| {
            !l["link"]["direction"]
                .as_str()
                .is_some_and(|d| d.eq_ignore_ascii_case("dialled"))
        })
        .count();
    if a_links.is_empty() || accepted > 0 {
        failed += 1;
        println!("   FAIL eu-west-node links: {a_links:?}");
    } else {
        println!(
            "   ok   eu-west-node accepted no inbound link: it dialled all {} of its links ({})",
            a_links.len(),
            a_links
                .iter()
                .map(|l| l["link"]["peer_node_id"].as_str().unwrap_or("?"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(p) = prom {
        failed += report_prometheus(demo, p).await?;
    }
    if failed > 0 {
        bail!("{failed} checks failed");
    }
    println!(
        "\nincident resolved in {:.1} s",
        demo.start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn short(channel: &str) -> &str {
    channel.rsplit('/').next().unwrap_or(channel)
}

async fn next_line(
    lines: &mut mpsc::Receiver<(String, Instant, Line)>,
    procs: &mut Procs,
    deadline: Instant,
) -> Result<(String, Instant, Line)> {
    loop {
        procs.check_alive()?;
        match tokio::time::timeout(Duration::from_millis(500), lines.recv()).await {
            Ok(Some(l)) => return Ok(l),
            Ok(None) => bail!("every agent's output ended"),
            Err(_) if Instant::now() > deadline => bail!("timed out waiting for the scenario"),
            Err(_) => {}
        }
    }
}

async fn start_prometheus(demo: &Demo, procs: &mut Procs) -> Result<SocketAddr> {
    let port = free_tcp()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let targets = ["admin-node", "eu-west-node", "us-east-node"]
        .iter()
        .map(|n| {
            format!(
                "      - targets: ['{}']\n        labels: {{node: '{n}'}}\n",
                demo.metrics[n]
            )
        })
        .collect::<String>();
    let cfg = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: slim-node\n    static_configs:\n{targets}"
    );
    let path = demo.work.join("prometheus.yml");
    std::fs::write(&path, cfg)?;
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            demo.work.join("prom-data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(demo.log("prometheus")?)
        .stderr(demo.log("prometheus-err")?)
        .kill_on_drop(true)
        .spawn()
        .context("start prometheus (apt-get install prometheus)")?;
    procs.children.push(("prometheus".into(), child));
    println!("== Prometheus on http://{addr} scraping every node each second");
    Ok(addr)
}

/// Queries the per-node routed-message rate; returns how many nodes show none.
async fn report_prometheus(demo: &Demo, addr: SocketAddr) -> Result<usize> {
    let query = "sum by (node) (rate(slim_messages_routed_total[1m]))";
    println!("   prometheus: {query}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body = http_get(addr, &format!("/api/v1/query?query={}", urlencode(query))).await?;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let mut rates = BTreeMap::new();
        for r in v["data"]["result"].as_array().cloned().unwrap_or_default() {
            let node = r["metric"]["node"].as_str().unwrap_or("?").to_owned();
            let rate: f64 = r["value"][1]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0.0);
            rates.insert(node, rate);
        }
        let missing = ["admin-node", "eu-west-node", "us-east-node"]
            .iter()
            .filter(|n| rates.get(**n).copied().unwrap_or(0.0) <= 0.0)
            .count();
        if missing == 0 || Instant::now() > deadline {
            demo.rec
                .write(&serde_json::json!({ "t": "prometheus", "query": query, "rates": rates }));
            for (n, r) in &rates {
                println!(
                    "   {}   {n:<13} {r:.3} routed messages/s",
                    if *r > 0.0 { "ok  " } else { "FAIL" }
                );
            }
            return Ok(missing);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    Ok(buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}
