//! The command line of `slim-demo`.

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "The SLIM fleet demo: a security incident across three clusters")]
pub(crate) struct Args {
    /// Approve the drain as the operator automatically (unattended run).
    #[arg(long)]
    pub(crate) auto_approve: bool,
    /// Where the binaries are (default: next to this one).
    #[arg(long)]
    pub(crate) bin_dir: Option<PathBuf>,
    /// Keep logs and state here (default: a temporary directory, removed).
    #[arg(long)]
    pub(crate) work_dir: Option<PathBuf>,
    /// Simulated work (rolling update, drain) in milliseconds.
    #[arg(long, default_value_t = 1500)]
    pub(crate) work_ms: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub(crate) timeout_secs: u64,
    /// Start Prometheus (Debian's `prometheus`) scraping every node and show
    /// the per-node routed-message rates at the end.
    #[arg(long)]
    pub(crate) prometheus: bool,
    /// Run the Rust agents (`slim-demo-agent`) instead of the Python ones.
    #[arg(long)]
    pub(crate) rust_agents: bool,
    /// The Python that runs the agents, with `slim_agents` installed
    /// (default: `$SLIM_VENV/bin/python`, SLIM_VENV defaulting to
    /// `~/.cache/slim-venv`; `scripts/python-env.sh` sets it up).
    #[arg(long, env = "SLIM_DEMO_PYTHON")]
    pub(crate) python: Option<PathBuf>,
    /// Where the Python agents are (default: `demo/agents` of this source tree).
    #[arg(long, env = "SLIM_DEMO_AGENTS")]
    pub(crate) agents_dir: Option<PathBuf>,
    /// Keep machine-readable records here: each agent's own record
    /// (`<workload>.jsonl`: what it sent, received and decided) and this
    /// program's (`demo.jsonl`: the injected event, the approval, the links,
    /// the Prometheus rates). See the `slim_demo` crate docs for the format.
    #[arg(long)]
    pub(crate) record_dir: Option<PathBuf>,
}
