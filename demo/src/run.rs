//! Setting up a run: the fleet files, the identities, the addresses and the record; then the scenario, then stopping everything.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use slim_auth::{DevCa, SpiffeId};
use slim_demo::{Recorder, TRUST_DOMAIN};
use slim_devspire::{DevSpire, DevSpireConfig};

use crate::agents::Agents;
use crate::args::Args;
use crate::demo::Demo;
use crate::phases::drive;
use crate::procs::{Procs, free_tcp, free_udp};
use crate::scenario::{FLEET, WORKLOADS};

pub(crate) async fn run(args: &Args, bin: PathBuf, agents: Agents, work: PathBuf) -> Result<()> {
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
