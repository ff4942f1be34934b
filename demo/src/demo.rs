//! [`Demo`]: the running demo's environment (binaries, sockets, addresses, record) and the commands it runs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, Result};
use slim_demo::Recorder;
use tokio::process::Command;

use crate::agents::Agents;

pub(crate) struct Demo {
    pub(crate) bin: PathBuf,
    pub(crate) agents: Agents,
    pub(crate) work: PathBuf,
    pub(crate) start: Instant,
    pub(crate) sockets: BTreeMap<&'static str, String>,
    pub(crate) nodes: BTreeMap<&'static str, SocketAddr>,
    pub(crate) metrics: BTreeMap<&'static str, SocketAddr>,
    pub(crate) controller: SocketAddr,
    /// `--record-dir`, and this program's record in it (`demo.jsonl`).
    pub(crate) record_dir: Option<PathBuf>,
    pub(crate) rec: Recorder,
}

impl Demo {
    pub(crate) fn socket(&self, workload: &str) -> &str {
        &self.sockets[workload]
    }

    pub(crate) fn stamp(&self) -> String {
        self.stamp_at(Instant::now())
    }

    pub(crate) fn stamp_at(&self, at: Instant) -> String {
        let t = at.duration_since(self.start);
        format!("[{:02}:{:04.1}]", t.as_secs() / 60, t.as_secs_f64() % 60.0)
    }

    pub(crate) fn cmd(&self, bin: &str, workload: &str) -> Command {
        self.cmd_path(&self.bin.join(bin), workload)
    }

    /// `program` with `workload`'s Workload API socket.
    pub(crate) fn cmd_path(&self, program: &Path, workload: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SPIFFE_ENDPOINT_SOCKET", self.socket(workload))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    pub(crate) fn log(&self, name: &str) -> Result<std::fs::File> {
        Ok(std::fs::File::create(
            self.work.join(format!("{name}.log")),
        )?)
    }

    pub(crate) fn slimctl_conn(&self, node: &str) -> Vec<String> {
        vec![
            "--node".into(),
            self.nodes[node].to_string(),
            "--spiffe-socket".into(),
            self.socket("operator").to_owned(),
            "--as".into(),
            "ops/slimctl/operator".into(),
        ]
    }

    pub(crate) async fn slimctl(&self, args: &[String]) -> Result<std::process::Output> {
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
