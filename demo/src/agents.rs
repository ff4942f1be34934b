//! Which agents run (Rust or Python) and the check that they can.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail};

use crate::args::Args;
use crate::scenario::{AGENTS, PY_AGENTS};

/// What the Python agents need: `slim_agents`, and 3.11 for `asyncio.TaskGroup`.
const PYTHON_CHECK: &str = "import sys, slim_agents\n\
    if sys.version_info < (3, 11): sys.exit('Python ' + sys.version.split()[0] + ' is older than 3.11')";

/// Which agents run: the same roles, the same JSON lines on stdout.
pub(crate) enum Agents {
    /// `slim-demo-agent --role ROLE` (demo/src/bin/slim-demo-agent.rs).
    Rust,
    /// `PYTHON DIR/ROLE.py` (demo/agents/eu_monitor.py, …).
    Python { python: PathBuf, dir: PathBuf },
}

impl Agents {
    /// Picks the agents and checks they can run: for Python, that the
    /// interpreter imports `slim_agents` and every agent file is there.
    pub(crate) fn resolve(args: &Args) -> Result<Agents> {
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
        for (_, role, _) in AGENTS.iter().chain(&PY_AGENTS) {
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

    pub(crate) fn python_file(role: &str) -> String {
        format!("{}.py", role.replace('-', "_"))
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Agents::Rust => "Rust, slim-demo-agent".into(),
            Agents::Python { dir, .. } => format!("Python, {}/*.py", dir.display()),
        }
    }
}
