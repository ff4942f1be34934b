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

use serde_json::Value;
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

// The Helm chart (deploy/helm.rs) and the Go-template subset it is checked
// with (deploy/gotmpl.rs).
#[path = "deploy/gotmpl.rs"]
mod gotmpl;
#[path = "deploy/helm.rs"]
mod helm;
