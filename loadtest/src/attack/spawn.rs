//! `--spawn-node`: a `slim-node` child process on loopback with a fresh
//! development CA, so that its RSS, metrics and log belong to it alone.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use slim_auth::{DevCa, SpiffeId};

pub const TRUST_DOMAIN: &str = "example.org";

pub struct SpawnedNode {
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    pub pid: u32,
    pub log: PathBuf,
    pub ca_dir: PathBuf,
    child: Child,
    dir: Option<tempfile::TempDir>,
}

impl SpawnedNode {
    pub fn start(bin_dir: &Path, keep_dir: bool) -> Result<SpawnedNode> {
        let bin = bin_dir.join("slim-node");
        if !bin.exists() {
            bail!(
                "{} is missing: build it (cargo build --release -p slim-node) or pass --bin-dir",
                bin.display()
            );
        }
        let tmp = tempfile::Builder::new()
            .prefix("slim-attack-")
            .tempdir()
            .context("creating a work directory")?;
        let work = tmp.path().to_path_buf();
        let ca_dir = work.join("ca");
        let ca = DevCa::init(&ca_dir, TRUST_DOMAIN).context("development CA")?;
        let id_dir = work.join("node");
        ca.issue_to_dir(
            &SpiffeId::parse(&format!("spiffe://{TRUST_DOMAIN}/node/attack"))?,
            Duration::from_secs(24 * 3600),
            &id_dir,
        )
        .context("issuing the node's SVID")?;
        // Free ports: bound then released (a race with another process
        // taking them is possible but unlikely on a test machine).
        let port = UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
        let metrics = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let cfg = format!(
            "[node]\nid = \"attack-node\"\nlisten = \"{port}\"\n\n\
             [identity]\nsource = \"files\"\ndir = \"{}\"\n\n\
             [metrics]\nlisten = \"{metrics}\"\n\n\
             [authz]\nmode = \"allow_all\"\n",
            id_dir.display()
        );
        let cfg_path = work.join("node.toml");
        std::fs::write(&cfg_path, cfg)?;
        let log = work.join("node.log");
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let child = Command::new(&bin)
            .arg("--config")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut node = SpawnedNode {
            addr: port,
            metrics,
            pid: child.id(),
            log,
            ca_dir,
            child,
            dir: Some(tmp),
        };
        if keep_dir && let Some(t) = node.dir.take() {
            eprintln!("keeping {}", t.keep().display());
        }
        node.wait_ready()?;
        Ok(node)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text
                .lines()
                .any(|l| l.starts_with("slim-node ") && l.contains(" listening on "))
            {
                return Ok(());
            }
            if let Some(st) = self.child.try_wait()? {
                bail!("slim-node exited ({st}) before listening:\n{text}");
            }
            if Instant::now() > deadline {
                bail!("slim-node did not listen within 30 s:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SpawnedNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
