//! A fleet of real processes on 127.0.0.1: one `slim-controller` and N
//! `slim-node`s, each started from the shared fleet files (`deploy/fleet/`,
//! the same files the fleet demo, compose and the namespace tests use) with
//! its addresses through the usual environment overrides, and its X.509-SVID
//! from a development Workload API server (`slim-devspire`, the SPIRE agent
//! stand-in) run in this process, one socket per workload. Every node has an
//! external endpoint, so the controller plans the links among all of them.
//!
//! Dropping a [`Cluster`] kills every process, waits for it, and removes the
//! work directory (unless it was asked to be kept).

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use slim_auth::{DevCa, SpiffeId};
use slim_devspire::{DevSpire, DevSpireConfig};

use crate::serverstats;

/// The fleet files' trust domain (their authz and policy patterns use it).
pub const TRUST_DOMAIN: &str = "acme.example";

/// A reachable node of the fleet: its file is used for every node (ids,
/// addresses and the controller's address come from the environment).
const NODE_TOML: &str = include_str!("../../../deploy/fleet/node-us-east.toml");
const CONTROLLER_TOML: &str = include_str!("../../../deploy/fleet/controller.toml");

/// The nodes' policy: the fleet's peer rule, and the load generator's
/// clients (`spiffe://acme.example/loadtest/...`) on `loadtest/...` names.
const POLICY: &str = r#"# slim-loadtest fleet: nodes may link; the load generator's clients use loadtest/**.
[[rule]]
spiffe_id = "spiffe://acme.example/*/node/*"
peer = true

[[rule]]
spiffe_id = "spiffe://acme.example/loadtest/**"
register = ["loadtest/**"]
publish = ["loadtest/**"]
subscribe = ["loadtest/**"]
"#;

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterOpts {
    pub nodes: usize,
    /// Where `slim-node`, `slim-controller` (and optionally `slimctl`) are.
    pub bin_dir: PathBuf,
    /// Keep the work directory (configs, logs) instead of removing it.
    pub keep_dir: bool,
    /// `SLIM_LOG_LEVEL` for every process (default: the files' own, info).
    pub log_level: Option<String>,
    /// Longest wait for the processes to start and the links to come up.
    pub start_timeout: Duration,
}

/// One running node.
#[derive(Debug, Clone)]
pub struct NodeProc {
    pub id: String,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    pub pid: u32,
}

pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    pub controller: SocketAddr,
    pub controller_metrics: SocketAddr,
    pub controller_pid: u32,
    /// Issues the load generator's client SVIDs.
    pub ca: Arc<DevCa>,
    /// An admin SVID (spiffe-helper layout) for `slimctl`.
    pub admin_identity: PathBuf,
    pub bin_dir: PathBuf,
    pub work: PathBuf,
    children: Vec<(String, Child)>,
    spire: Vec<DevSpire>,
    tmp: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("nodes", &self.nodes.len())
            .field("work", &self.work)
            .finish_non_exhaustive()
    }
}

/// Distinct free ports: `udp` UDP and `tcp` TCP ones on 127.0.0.1 (all held
/// until every one is picked, so none repeats).
fn free_ports(udp: usize, tcp: usize) -> Result<(Vec<u16>, Vec<u16>)> {
    let us = (0..udp)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("picking free UDP ports")?;
    let ts = (0..tcp)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("picking free TCP ports")?;
    let u = us
        .iter()
        .map(|s| s.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<Vec<_>>>()?;
    let t = ts
        .iter()
        .map(|s| s.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok((u, t))
}

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Node ids sort in index order (the controller's plan orders by id).
pub fn node_id(i: usize) -> String {
    format!("node-{i:03}")
}

fn binary(dir: &Path, name: &str) -> Result<PathBuf> {
    let p = dir.join(name);
    if !p.exists() {
        bail!(
            "{} is missing: build it (cargo build --release -p slim-node -p slim-controller) \
             or pass --bin-dir",
            p.display()
        );
    }
    Ok(p)
}

/// The directory of this executable: `target/<profile>/`, where cargo puts
/// the other workspace binaries too.
pub fn default_bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this executable")?;
    Ok(exe
        .parent()
        .context("executable has no directory")?
        .to_path_buf())
}

impl Cluster {
    /// Starts the controller and the nodes and waits until every node is
    /// ready and every planned link is up.
    pub async fn start(opts: &ClusterOpts) -> Result<Cluster> {
        if opts.nodes == 0 {
            bail!("a fleet needs at least one node");
        }
        let node_bin = binary(&opts.bin_dir, "slim-node")?;
        let ctl_bin = binary(&opts.bin_dir, "slim-controller")?;
        let tmp = tempfile::Builder::new()
            .prefix("slim-fleet-")
            .tempdir()
            .context("creating a work directory")?;
        let work = tmp.path().to_path_buf();
        let ca_dir = work.join("ca");
        let ca = Arc::new(DevCa::init(&ca_dir, TRUST_DOMAIN).context("development CA")?);
        let fleet = work.join("fleet");
        std::fs::create_dir_all(&fleet)?;
        std::fs::write(fleet.join("node.toml"), NODE_TOML)?;
        std::fs::write(fleet.join("controller.toml"), CONTROLLER_TOML)?;
        std::fs::write(fleet.join("policy.toml"), POLICY)?;
        let logs = work.join("logs");
        std::fs::create_dir_all(&logs)?;
        let admin_identity = work.join("admin");
        ca.issue_to_dir(
            &SpiffeId::parse(&format!("spiffe://{TRUST_DOMAIN}/ops/loadtest/admin"))?,
            Duration::from_secs(24 * 3600),
            &admin_identity,
        )
        .context("issuing the admin SVID")?;

        let n = opts.nodes;
        let (udp, tcp) = free_ports(n + 1, n + 1)?;
        let controller = localhost(udp[n]);
        let controller_metrics = localhost(tcp[n]);

        let mut cluster = Cluster {
            nodes: Vec::with_capacity(n),
            controller,
            controller_metrics,
            controller_pid: 0,
            ca: Arc::clone(&ca),
            admin_identity,
            bin_dir: opts.bin_dir.clone(),
            work: work.clone(),
            children: Vec::new(),
            spire: Vec::new(),
            tmp: Some(tmp),
        };
        if opts.keep_dir
            && let Some(t) = cluster.tmp.take()
        {
            let _ = t.keep();
        }

        // One Workload API socket per workload, as a SPIRE agent would serve.
        let mut sockets = BTreeMap::new();
        let mut workloads = vec![(
            "controller".to_string(),
            format!("spiffe://{TRUST_DOMAIN}/admin/controller/main"),
        )];
        for i in 0..n {
            let id = node_id(i);
            workloads.push((
                id.clone(),
                format!("spiffe://{TRUST_DOMAIN}/fleet/node/{id}"),
            ));
        }
        for (w, id) in &workloads {
            let path = work.join("spire").join(format!("{w}.sock"));
            let cfg = DevSpireConfig::new(path.clone(), SpiffeId::parse(id)?);
            let s = DevSpire::start(cfg, DevCa::load(&ca_dir)?)
                .await
                .with_context(|| format!("devspire for {w}"))?;
            cluster.spire.push(s);
            sockets.insert(w.clone(), format!("unix://{}", path.display()));
        }

        // stdout and stderr share one file (and one offset).
        let log = |name: &str| -> Result<(std::fs::File, std::fs::File)> {
            let f = std::fs::File::create(logs.join(format!("{name}.log")))?;
            let g = f.try_clone()?;
            Ok((f, g))
        };
        let (out, err) = log("controller")?;
        let mut c = Command::new(&ctl_bin);
        c.arg("--config")
            .arg(fleet.join("controller.toml"))
            .env("SPIFFE_ENDPOINT_SOCKET", &sockets["controller"])
            .env("SLIM_CONTROLLER_LISTEN", controller.to_string())
            .env("SLIM_DATA_DIR", work.join("controller-data"))
            .env("SLIM_METRICS_LISTEN", controller_metrics.to_string())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if let Some(l) = &opts.log_level {
            c.env("SLIM_LOG_LEVEL", l);
        }
        let child = c.spawn().context("starting slim-controller")?;
        cluster.controller_pid = child.id();
        cluster.children.push(("controller".into(), child));

        for i in 0..n {
            let id = node_id(i);
            let addr = localhost(udp[i]);
            let metrics = localhost(tcp[i]);
            let (out, err) = log(&id)?;
            let mut c = Command::new(&node_bin);
            c.arg("--config")
                .arg(fleet.join("node.toml"))
                .env("SPIFFE_ENDPOINT_SOCKET", &sockets[&id])
                .env("SLIM_NODE_ID", &id)
                .env("SLIM_LISTEN", addr.to_string())
                .env("SLIM_METRICS_LISTEN", metrics.to_string())
                .env("SLIM_CONTROLLER", controller.to_string())
                .env("SLIM_EXTERNAL_ENDPOINT", addr.to_string())
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err);
            if let Some(l) = &opts.log_level {
                c.env("SLIM_LOG_LEVEL", l);
            }
            let child = c.spawn().with_context(|| format!("starting {id}"))?;
            cluster.nodes.push(NodeProc {
                id: id.clone(),
                addr,
                metrics,
                pid: child.id(),
            });
            cluster.children.push((id, child));
        }

        let deadline = Instant::now() + opts.start_timeout;
        cluster.wait_ready(deadline).await?;
        cluster.wait_links(deadline).await?;
        Ok(cluster)
    }

    /// A process that exited is an error (with the tail of its log).
    pub fn check_alive(&mut self) -> Result<()> {
        for (name, c) in &mut self.children {
            if let Ok(Some(st)) = c.try_wait() {
                let log = self.work.join("logs").join(format!("{name}.log"));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "{name} exited ({st}); last lines of its log:\n{}",
                    tail.join("\n")
                );
            }
        }
        Ok(())
    }

    async fn wait_ready(&mut self, deadline: Instant) -> Result<()> {
        let mut pending: Vec<(String, SocketAddr, &'static str)> = self
            .nodes
            .iter()
            .map(|n| (n.id.clone(), n.metrics, "/readyz"))
            .collect();
        pending.push(("controller".into(), self.controller_metrics, "/healthz"));
        while !pending.is_empty() {
            self.check_alive()?;
            let mut still = Vec::new();
            for (name, addr, path) in pending {
                if serverstats::get(addr, path).await.is_err() {
                    still.push((name, addr, path));
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                let names: Vec<_> = pending.iter().map(|p| p.0.as_str()).collect();
                bail!("not ready in time: {}", names.join(", "));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Waits until the controller has every node connected and a plan, and
    /// the nodes have every planned link up (each end counted), unchanged
    /// for a second.
    async fn wait_links(&mut self, deadline: Instant) -> Result<()> {
        let n = self.nodes.len();
        let mut stable_since: Option<(Instant, u64)> = None;
        loop {
            self.check_alive()?;
            let ctl = serverstats::scrape(self.controller_metrics).await?;
            let connected = ctl
                .get("slim_controller_nodes{state=\"connected\"}")
                .copied()
                .unwrap_or(0.0) as usize;
            let planned = ctl
                .get("slim_controller_links_planned")
                .copied()
                .unwrap_or(0.0) as u64;
            let mut ends = 0u64;
            for node in &self.nodes {
                let m = serverstats::scrape(node.metrics).await?;
                ends += m
                    .get("slim_connections_open{kind=\"peer\"}")
                    .copied()
                    .unwrap_or(0.0) as u64;
            }
            let ok = connected == n && (n == 1 || planned > 0) && ends == 2 * planned;
            match (ok, stable_since) {
                (true, Some((t, p))) if p == planned => {
                    if t.elapsed() >= Duration::from_secs(1) {
                        return Ok(());
                    }
                }
                (true, _) => stable_since = Some((Instant::now(), planned)),
                (false, _) => stable_since = None,
            }
            if Instant::now() > deadline {
                bail!(
                    "links did not converge in time: controller sees {connected}/{n} nodes, \
                     {planned} links planned, nodes report {ends} link ends up (want {})",
                    2 * planned
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The controller's planned link count now.
    pub async fn links_planned(&self) -> Result<u64> {
        let ctl = serverstats::scrape(self.controller_metrics).await?;
        Ok(ctl
            .get("slim_controller_links_planned")
            .copied()
            .unwrap_or(0.0) as u64)
    }

    /// `slimctl route list` for one node as the controller last heard it
    /// (names; `None` if slimctl is not next to the other binaries).
    pub async fn routes_via_controller(&self, node: &str) -> Result<Option<Vec<RouteRow>>> {
        let ctl = self.bin_dir.join("slimctl");
        if !ctl.exists() {
            return Ok(None);
        }
        let out = tokio::process::Command::new(ctl)
            .args(["--output", "json", "route", "list", "--node-id", node])
            .arg("--controller")
            .arg(self.controller.to_string())
            .arg("--identity")
            .arg(&self.admin_identity)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(15), out)
            .await
            .context("slimctl route list timed out")?
            .context("running slimctl")?;
        if !out.status.success() {
            bail!(
                "slimctl route list --node-id {node}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let rows: Vec<RouteRow> =
            serde_json::from_slice(&out.stdout).context("parsing slimctl's route list")?;
        Ok(Some(rows))
    }

    /// Stops every process now (also done on drop).
    pub fn stop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
        }
        for (_, c) in &mut self.children {
            let _ = c.wait();
        }
        self.children.clear();
    }
}

/// One row of `slimctl --output json route list`.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct RouteRow {
    pub name: String,
    #[serde(default)]
    pub local_subscribers: usize,
    #[serde(default)]
    pub remote_peers: Vec<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        self.spire.clear();
        if self.tmp.is_none() {
            eprintln!("fleet work directory kept: {}", self.work.display());
        }
    }
}
