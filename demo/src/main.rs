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
//! JSON lines ([`Line`](slim_demo::Line)), which is all this program reads from them. With
//! `--record-dir DIR` the agents and this program also keep machine-readable
//! records there (see [`slim_demo`]), for checks made from outside the demo.
#![forbid(unsafe_code)]

use std::path::Path;

use anyhow::{Context, Result, bail};
use clap::Parser;

mod agents;
mod args;
mod checks;
mod demo;
mod phases;
mod procs;
mod prometheus;
mod run;
mod scenario;

use crate::agents::Agents;
use crate::args::Args;
use crate::run::run;

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
