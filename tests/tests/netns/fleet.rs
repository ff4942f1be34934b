//! The namespace tests' fixtures: certificates, the repo's config files, and
//! the fleet (controller, admin node, cluster B's node, cluster A's node
//! behind NAT) started from deploy/fleet/.

use parking_lot::Mutex;
use std::path::Path;
use std::time::Duration;

use slim_tests::netns::{self, B_IP, NatTopology};
use slim_tests::slim_auth::{DevCa, SpiffeId};

pub(crate) const TD: &str = "acme.example";
pub(crate) const CHAN: &str = "acme/monitoring/security-incident";

pub(crate) fn repo_file(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
        .to_string_lossy()
        .into_owned()
}

pub(crate) fn issue(ca: &DevCa, dir: &Path, path: &str) -> String {
    let id = SpiffeId::parse(&format!("spiffe://{TD}/{path}")).expect("id");
    let out = dir.join(path.replace('/', "_"));
    ca.issue_to_dir(&id, Duration::from_secs(3600), &out)
        .expect("issue");
    out.to_string_lossy().into_owned()
}

// ---------------------------------------------------------------------------
// The fleet: controller + admin node in the admin cluster, cluster B's node
// (reachable), cluster A's node behind NAT; all started from the fleet config
// files in deploy/fleet/ (the same ones the fleet demo and compose use).

use std::time::Instant;

use slim_tests::netns::{A_IP, ADMIN_IP, Netns, Proc};

/// Namespace tests share the machine's two cores; one fleet at a time keeps
/// timing-sensitive phases (reconnects) meaningful.
pub(crate) static ONE_FLEET: Mutex<()> = Mutex::new(());

pub(crate) struct Fleet {
    pub(crate) topo: NatTopology,
    pub(crate) work: tempfile::TempDir,
    pub(crate) controller: Option<Proc>,
    /// admin, b, a (the order of `NODES`).
    pub(crate) nodes: Vec<Proc>,
    /// Clusters address each other by host names (`/etc/netns/NS/hosts`).
    pub(crate) names: bool,
    // Workload API servers (one socket per workload, as a SPIRE agent would
    // attest each workload separately); dropped after the processes.
    pub(crate) _spire: Vec<slim_tests::slim_devspire::DevSpire>,
    pub(crate) _rt: tokio::runtime::Runtime,
}

const CONTROLLER: &str = "192.168.100.10:4600";
/// The host names of the named fleet (`Fleet::start_named`).
const CONTROLLER_HOST: &str = "controller.acme.internal";
const ADMIN_NODE_HOST: &str = "admin-node.acme.internal";
pub(crate) const B_NODE_HOST: &str = "us-east-node.acme.internal";

/// The fleet's nodes: namespace, workload, config file, external address.
const NODES: [(&str, &str, &str, Option<Ipv4>); 3] = [
    (
        "admin",
        "admin/node/admin-node",
        "node-admin.toml",
        Some(ADMIN_IP),
    ),
    (
        "b",
        "cluster-b/node/us-east-node",
        "node-us-east.toml",
        Some(B_IP),
    ),
    (
        "a",
        "cluster-a/node/eu-west-node",
        "node-eu-west.toml",
        None,
    ),
];

const WORKLOADS: [&str; 8] = [
    "admin/controller/main",
    "admin/node/admin-node",
    "cluster-a/node/eu-west-node",
    "cluster-b/node/us-east-node",
    "cluster-a/agent/security-monitor",
    "cluster-b/agent/security-monitor",
    "admin/agent/escalation-handler",
    "ops/slimctl/operator",
];

impl Fleet {
    pub(crate) fn start() -> Fleet {
        Self::start_with(false)
    }

    /// The fleet with every controller, node and external endpoint given
    /// as a host name, resolved through each namespace's own hosts file.
    pub(crate) fn start_named() -> Fleet {
        Self::start_with(true)
    }

    /// Points the fleet's host names at `b_ip` for B's node, in every
    /// namespace (before anything starts there, or rewritten in place).
    pub(crate) fn set_hosts(&self, b_ip: Option<Ipv4>) {
        let mut entries = vec![(CONTROLLER_HOST, ADMIN_IP), (ADMIN_NODE_HOST, ADMIN_IP)];
        if let Some(ip) = b_ip {
            entries.push((B_NODE_HOST, ip));
        }
        for ns in [&self.topo.admin, &self.topo.a, &self.topo.b] {
            ns.set_hosts(&entries);
        }
    }

    pub(crate) fn controller_addr(&self) -> String {
        if self.names {
            format!("{CONTROLLER_HOST}:4600")
        } else {
            CONTROLLER.into()
        }
    }

    /// Starts node `i` of `NODES` in its namespace.
    pub(crate) fn spawn_node(&self, i: usize) -> Proc {
        let (ns, id, file, external) = NODES[i];
        let ns = self.ns(ns);
        let sock = self.socket(id);
        let ext = external.map(|ip| match (self.names, ip) {
            (true, ADMIN_IP) => format!("{ADMIN_NODE_HOST}:4500"),
            (true, _) => format!("{B_NODE_HOST}:4500"),
            (false, ip) => format!("{ip}:4500"),
        });
        let controller = self.controller_addr();
        let mut envs = vec![
            ("SPIFFE_ENDPOINT_SOCKET", sock.as_str()),
            ("SLIM_LISTEN", "0.0.0.0:4500"),
            ("SLIM_METRICS_LISTEN", "127.0.0.1:9464"),
            ("SLIM_CONTROLLER", controller.as_str()),
        ];
        if let Some(e) = &ext {
            envs.push(("SLIM_EXTERNAL_ENDPOINT", e.as_str()));
        }
        let p = ns.spawn(
            &netns::bin("slim-node"),
            &["--config", &repo_file(&format!("deploy/fleet/{file}"))],
            &envs,
            &self.work.path().join(format!("{file}.log")),
        );
        p.wait_log("listening on", Duration::from_secs(20));
        p
    }

    pub(crate) fn start_with(names: bool) -> Fleet {
        use slim_tests::slim_devspire::{DevSpire, DevSpireConfig};
        let topo = NatTopology::build();
        let work = tempfile::tempdir().expect("tempdir");
        let ca_dir = work.path().join("ca");
        DevCa::init(&ca_dir, TD).expect("ca");
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let mut spire = Vec::new();
        for path in WORKLOADS {
            let id = SpiffeId::parse(&format!("spiffe://{TD}/{path}")).expect("id");
            let cfg = DevSpireConfig {
                socket_path: work.path().join(format!("{}.sock", path.replace('/', "_"))),
                ids: vec![id],
                svid_ttl: Duration::from_secs(3600),
                jwt_ttl: Duration::from_secs(300),
                rotate_every: None,
                jwt_key_dir: None,
            };
            let ca = DevCa::load(&ca_dir).expect("load ca");
            spire.push(rt.block_on(DevSpire::start(cfg, ca)).expect("devspire"));
        }
        let mut fleet = Fleet {
            topo,
            work,
            controller: None,
            nodes: Vec::new(),
            names,
            _spire: spire,
            _rt: rt,
        };
        if names {
            fleet.set_hosts(Some(B_IP));
        }
        fleet.start_controller();
        for i in 0..NODES.len() {
            let p = fleet.spawn_node(i);
            fleet.nodes.push(p);
        }
        fleet
    }

    /// The Workload API endpoint serving `path`'s SVID.
    pub(crate) fn socket(&self, path: &str) -> String {
        format!(
            "unix://{}",
            self.work
                .path()
                .join(format!("{}.sock", path.replace('/', "_")))
                .display()
        )
    }

    pub(crate) fn start_controller(&mut self) {
        let sock = self.socket("admin/controller/main");
        let data = self.work.path().join("controller-data");
        let data = data.to_string_lossy().into_owned();
        let p = self.topo.admin.spawn(
            &netns::bin("slim-controller"),
            &["--config", &repo_file("deploy/fleet/controller.toml")],
            &[
                ("SPIFFE_ENDPOINT_SOCKET", sock.as_str()),
                ("SLIM_CONTROLLER_LISTEN", "0.0.0.0:4600"),
                ("SLIM_DATA_DIR", data.as_str()),
                ("SLIM_METRICS_LISTEN", "127.0.0.1:9465"),
            ],
            &self.work.path().join("controller.log"),
        );
        p.wait_log("listening", Duration::from_secs(20));
        self.controller = Some(p);
    }

    pub(crate) fn ns(&self, which: &str) -> &Netns {
        match which {
            "admin" => &self.topo.admin,
            "a" => &self.topo.a,
            "b" => &self.topo.b,
            other => panic!("no namespace {other}"),
        }
    }

    /// Starts `slim-test-agent` in cluster `ns` against that cluster's node.
    pub(crate) fn agent(
        &self,
        ns: &str,
        identity: &str,
        name: &str,
        args: &[&str],
        log: &str,
    ) -> Proc {
        let node = match (self.names, ns) {
            // In A, its own node by the name every host has.
            (true, "a") => "localhost:4500".to_string(),
            (true, "b") => format!("{B_NODE_HOST}:4500"),
            (true, _) => format!("{ADMIN_NODE_HOST}:4500"),
            (false, "a") => format!("{A_IP}:4500"),
            (false, "b") => format!("{B_IP}:4500"),
            (false, _) => format!("{ADMIN_IP}:4500"),
        };
        let sock = self.socket(identity);
        let mut all = vec!["--node", node.as_str(), "--as", name];
        all.extend_from_slice(args);
        self.ns(ns).spawn(
            &netns::bin("slim-test-agent"),
            &all,
            &[("SPIFFE_ENDPOINT_SOCKET", sock.as_str())],
            &self.work.path().join(log),
        )
    }

    /// `slimctl --output json <args> --controller …` as the operator, from the admin cluster.
    pub(crate) fn admin(&self, args: &[&str]) -> serde_json::Value {
        let sock = self.socket("ops/slimctl/operator");
        let bin = netns::bin("slimctl");
        let mut all = vec![bin.to_str().expect("utf8"), "--output", "json"];
        all.extend_from_slice(args);
        let controller = self.controller_addr();
        all.extend_from_slice(&[
            "--controller",
            controller.as_str(),
            "--spiffe-socket",
            sock.as_str(),
        ]);
        let out = self.topo.admin.try_exec(&all);
        assert!(
            out.status.success(),
            "slimctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("slimctl json")
    }

    /// The links `node` reports Up, as `slimctl link list` entries.
    fn up_links(&self, node: &str) -> Vec<serde_json::Value> {
        let links = self.admin(&["link", "list"]);
        let Some(all) = links.as_array() else {
            return Vec::new();
        };
        all.iter()
            .filter(|l| {
                l["node_id"] == node
                    && l["link"]["state"]
                        .as_str()
                        .is_some_and(|s| s.eq_ignore_ascii_case("up"))
            })
            .map(|l| l["link"].clone())
            .collect()
    }

    /// The remote address of each link `node` reports Up to `peer`.
    pub(crate) fn link_addrs(&self, node: &str, peer: &str) -> Vec<String> {
        self.up_links(node)
            .iter()
            .filter(|l| l["peer_node_id"] == peer)
            .map(|l| l["remote_addr"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    /// Links reported Up by `node`, as (peer, direction).
    pub(crate) fn links_up(&self, node: &str) -> Vec<(String, String)> {
        self.up_links(node)
            .iter()
            .map(|l| {
                (
                    l["peer_node_id"].as_str().unwrap_or("").to_owned(),
                    l["direction"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    pub(crate) fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut() -> bool,
    ) -> Duration {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if cond() {
                return start.elapsed();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{what}: not within {timeout:?}\n--- controller\n{}\n--- nodes\n{}",
            self.controller
                .as_ref()
                .map(|c| c.log_text())
                .unwrap_or_default(),
            self.nodes
                .iter()
                .map(|n| n.log_text())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
    }

    /// Every node has a link up to every other (A's both dialled by A).
    pub(crate) fn wait_mesh(&self, timeout: Duration) -> Duration {
        self.wait_until("full mesh of links", timeout, || {
            let a = self.links_up("eu-west-node");
            let b = self.links_up("us-east-node");
            let adm = self.links_up("admin-node");
            a.len() >= 2 && b.len() >= 2 && adm.len() >= 2
        })
    }
}

pub(crate) type Ipv4 = std::net::Ipv4Addr;

pub(crate) fn summary(p: &mut Proc, timeout: Duration) -> serde_json::Value {
    let st = p.wait_exit(timeout);
    let log = p.log_text();
    let line = log
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no summary (exit {st:?}):\n{log}"));
    let v: serde_json::Value = serde_json::from_str(line).expect("summary json");
    assert!(
        st.is_some_and(|s| s.success()),
        "agent failed (exit {st:?}):\n{log}"
    );
    v
}
