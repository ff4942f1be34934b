//! The demo's child processes: starting, watching and stopping them, free ports, and reading the agents' lines.

use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use slim_demo::Line;
use tokio::process::Child;
use tokio::sync::mpsc;

pub(crate) struct Procs {
    pub(crate) children: Vec<(String, Child)>,
}

impl Procs {
    pub(crate) async fn stop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.start_kill();
        }
        for (_, c) in &mut self.children {
            let _ = c.wait().await;
        }
    }

    /// A process that exited early is a failure of the demo.
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        for (name, c) in &mut self.children {
            if let Ok(Some(st)) = c.try_wait() {
                bail!("{name} exited early ({st}); see its log");
            }
        }
        Ok(())
    }
}

pub(crate) fn free_udp() -> Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) fn free_tcp() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) async fn wait_log(path: &Path, needle: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::fs::read_to_string(path).is_ok_and(|s| s.contains(needle)) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "{} did not log {needle:?} within {timeout:?}",
        path.display()
    )
}

pub(crate) async fn next_line(
    lines: &mut mpsc::Receiver<(String, Instant, Line)>,
    procs: &mut Procs,
    deadline: Instant,
) -> Result<(String, Instant, Line)> {
    loop {
        procs.check_alive()?;
        match tokio::time::timeout(Duration::from_millis(500), lines.recv()).await {
            Ok(Some(l)) => return Ok(l),
            Ok(None) => bail!("every agent's output ended"),
            Err(_) if Instant::now() > deadline => bail!("timed out waiting for the scenario"),
            Err(_) => {}
        }
    }
}
