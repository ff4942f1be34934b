//! `slim-loadtest attack`: an attack on the node's one exposed port beside a
//! legitimate request/reply stream, in three phases (baseline, attack,
//! after), with the node's RSS sampled throughout, its keyword-matched
//! Prometheus series diffed, its log lines counted, and the verdict against
//! the goals of "the exposed node" (issue 19): legit rate ≥ 90 % of the
//! baseline during the attack, p99 ≤ 10× the baseline's, a new client joins
//! within 1 s, RSS back within 20 % of the baseline 30 s after.
//!
//! The attacker binds its own loopback addresses (127.0.0.2 by default), so
//! that per-source limits on the node do not hit the legit clients on
//! 127.0.0.1.

mod conns;
mod kind;
mod legit;
mod prom;
mod report;
mod spawn;
mod stats;
mod udp;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use tokio::time::Instant;

use crate::backend::{Backend, Topic};
use crate::procstat::CpuProbe;
use crate::slim::Identities;
pub use kind::Kind;
use report::{AttackReport, goals, table};
use stats::{RssSummary, When};

#[derive(Debug, Args)]
pub struct AttackArgs {
    #[arg(long, value_enum)]
    pub kind: Kind,
    /// The node: slim://HOST:PORT (or HOST:PORT). Not with --spawn-node.
    #[arg(long)]
    pub target: Option<String>,
    /// The node's process: its VmRSS is sampled every 500 ms.
    #[arg(long)]
    pub node_pid: Option<u32>,
    /// The node's Prometheus endpoint, http://HOST:PORT/metrics: series
    /// about handshakes, refusals, junk and timeouts are diffed.
    #[arg(long)]
    pub metrics_url: Option<String>,
    /// The node's log file: lines added during the attack and after it.
    #[arg(long)]
    pub node_log: Option<PathBuf>,
    /// Start a slim-node child process (from --bin-dir) with a fresh dev CA,
    /// and measure it (pid, metrics, log).
    #[arg(long)]
    pub spawn_node: bool,
    /// Where slim-node is [default: this executable's directory].
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// --spawn-node: keep its work directory (config, log, CA).
    #[arg(long)]
    pub keep_dir: bool,
    /// Legit clients' (and valid attackers') SVIDs: one per client from this dev CA.
    #[arg(long)]
    pub ca_dir: Option<PathBuf>,
    /// ...or one SVID shared by all, in the spiffe-helper layout.
    #[arg(long)]
    pub identity_dir: Option<PathBuf>,
    /// TLS server name (SNI) the clients send.
    #[arg(long, default_value = "slim-node")]
    pub server_name: String,
    /// Phase before the attack.
    #[arg(long, default_value = "10s", value_parser = crate::util::parse_duration)]
    pub baseline: Duration,
    /// The attack phase.
    #[arg(long, default_value = "30s", value_parser = crate::util::parse_duration)]
    pub duration: Duration,
    /// Phase after the attack (RSS "after" is its last sample).
    #[arg(long, default_value = "30s", value_parser = crate::util::parse_duration)]
    pub after: Duration,
    /// Attack rate: datagrams/s (initial-flood 1000, junk 50000) or
    /// connection attempts/s (refused-handshakes 500, silent-clients and
    /// stalled-frames 100).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Attacking clients (refused-handshakes 5000, silent-clients 300,
    /// stalled-frames 200).
    #[arg(long)]
    pub count: Option<usize>,
    /// Attacker source addresses (comma-separated; any 127.x works on Linux loopback).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.2")]
    pub attack_bind: Vec<IpAddr>,
    /// UDP source sockets of the datagram attacks.
    #[arg(long, default_value_t = 64)]
    pub sources: usize,
    /// Connection attacks: attempts still handshaking at most.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// initial-flood: most distinct Initials prepared (beyond, they are
    /// sent again, which the node sees as duplicates, not new attempts).
    #[arg(long, default_value_t = 60_000)]
    pub pool_max: usize,
    /// Legit requests per second (open loop).
    #[arg(long, default_value_t = 500.0)]
    pub legit_rate: f64,
    /// Worker threads of the legit clients' runtime (kept apart from the
    /// attacker's, so that the attack's own CPU use does not delay them).
    #[arg(long, default_value_t = 2)]
    pub legit_threads: usize,
    /// Worker threads of the attacker's runtime (default: CPU count).
    #[arg(long)]
    pub client_threads: Option<usize>,
    /// One JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Exit with an error when a goal is missed.
    #[arg(long)]
    pub check: bool,
}

fn line_count(p: &Path) -> Result<u64> {
    let b = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    Ok(b.iter().filter(|&&c| c == b'\n').count() as u64)
}

fn target_addr(s: &str) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    let hp = s.strip_prefix("slim://").unwrap_or(s);
    hp.to_socket_addrs()
        .with_context(|| format!("resolving {hp}"))?
        .next()
        .with_context(|| format!("{hp} resolves to no address"))
}

/// The attack, prepared before the legit stream starts (pools and
/// identities take a while to make).
enum Prepared {
    Datagrams(Vec<Vec<u8>>),
    Conns(conns::ConnPlan),
}

async fn prepare(
    a: &AttackArgs,
    target: SocketAddr,
    ids: &Identities,
    run_id: &str,
    start: Instant,
) -> Result<Prepared> {
    let rate = a.rate.unwrap_or(a.kind.default_rate());
    let count = a.count.unwrap_or(a.kind.default_count());
    let deadline = start + a.baseline + a.duration;
    Ok(match a.kind {
        Kind::InitialFlood => {
            let n = ((rate * a.duration.as_secs_f64()).ceil() as usize).clamp(1, a.pool_max.max(1));
            let id = ids.get("loadtest/attacker")?;
            let (_, quic) = conns::quic_config(&id)?;
            eprintln!("preparing {n} distinct QUIC Initials...");
            Prepared::Datagrams(udp::capture_initials(n, quic, &a.server_name).await?)
        }
        Kind::Junk => Prepared::Datagrams(udp::junk_pool(8192, 1)),
        Kind::RefusedHandshakes | Kind::SilentClients | Kind::StalledFrames => {
            let legit = ids.get("loadtest/attacker")?;
            let identity = if a.kind == Kind::RefusedHandshakes {
                // Same trust domain and SPIFFE ID shape as a legit client,
                // but issued by a CA the node has never seen; the client
                // itself trusts the node's real bundle, so that TLS gets as
                // far as the node's check of the client certificate.
                let rogue = slim_auth::DevCa::generate(legit.spiffe_id.trust_domain())
                    .context("generating the untrusted CA")?;
                let mut id = rogue
                    .issue(&legit.spiffe_id, Duration::from_secs(3600))
                    .context("issuing the untrusted SVID")?;
                id.bundles = legit.bundles.clone();
                id
            } else {
                legit
            };
            let (config, _) = conns::quic_config(&identity)?;
            Prepared::Conns(conns::ConnPlan {
                target,
                server_name: a.server_name.clone(),
                ips: a.attack_bind.clone(),
                rate,
                count,
                concurrency: a.concurrency,
                config,
                deadline,
                run_id: run_id.to_owned(),
            })
        }
    })
}

pub fn run(a: AttackArgs) -> Result<()> {
    if a.attack_bind.is_empty() {
        bail!("--attack-bind needs at least one address");
    }
    if a.duration.is_zero() || a.baseline.is_zero() || a.after.is_zero() {
        bail!("--baseline, --duration and --after must be positive");
    }
    if let Some(r) = a.rate
        && !(r > 0.0 && r.is_finite())
    {
        bail!("--rate must be positive");
    }
    let spawned = if a.spawn_node {
        if a.target.is_some() || a.node_pid.is_some() || a.metrics_url.is_some() {
            bail!("--spawn-node measures its own node: no --target, --node-pid or --metrics-url");
        }
        let dir = match &a.bin_dir {
            Some(d) => d.clone(),
            None => crate::fleet::cluster::default_bin_dir()?,
        };
        let n = spawn::SpawnedNode::start(&dir, a.keep_dir)?;
        eprintln!(
            "slim-node pid {} on {} (metrics {})",
            n.pid, n.addr, n.metrics
        );
        Some(n)
    } else {
        None
    };
    let (target, node_pid, metrics_url, node_log, ids) = match &spawned {
        Some(n) => (
            n.addr,
            Some(n.pid),
            Some(prom::MetricsUrl {
                addr: n.metrics,
                path: "/metrics".into(),
            }),
            Some(n.log.clone()),
            Identities::Ca(Arc::new(
                slim_auth::DevCa::load(&n.ca_dir).context("loading the spawned node's CA")?,
            )),
        ),
        None => {
            let Some(t) = &a.target else {
                bail!("--target slim://HOST:PORT (or --spawn-node) is required");
            };
            let ids = match (&a.ca_dir, &a.identity_dir) {
                (Some(dir), _) => Identities::Ca(Arc::new(
                    slim_auth::DevCa::load(dir)
                        .with_context(|| format!("loading dev CA from {}", dir.display()))?,
                )),
                (None, Some(dir)) => Identities::Shared(
                    slim_auth::Identity::from_files(dir)
                        .with_context(|| format!("loading identity from {}", dir.display()))?,
                ),
                (None, None) => bail!("--ca-dir DIR or --identity-dir DIR is required"),
            };
            (
                target_addr(t)?,
                a.node_pid,
                a.metrics_url.as_deref().map(prom::parse_url).transpose()?,
                a.node_log.clone(),
                ids,
            )
        }
    };
    let legit_rt = crate::util::runtime("legit", Some(a.legit_threads))?;
    let rt = crate::util::runtime("attack", a.client_threads)?;
    let r = rt.block_on(orchestrate(
        &a,
        target,
        node_pid,
        metrics_url,
        node_log,
        Arc::new(ids),
        legit_rt.handle().clone(),
    ));
    rt.shutdown_timeout(Duration::from_secs(2));
    legit_rt.shutdown_timeout(Duration::from_secs(2));
    drop(spawned);
    let r = r?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print!("{}", table(&r));
    }
    if a.check && !r.pass {
        bail!("goals missed");
    }
    Ok(())
}

async fn orchestrate(
    a: &AttackArgs,
    target: SocketAddr,
    node_pid: Option<u32>,
    metrics_url: Option<prom::MetricsUrl>,
    node_log: Option<PathBuf>,
    ids: Arc<Identities>,
    legit_rt: tokio::runtime::Handle,
) -> Result<AttackReport> {
    let run_id = crate::util::run_id();
    let backend = Backend::Slim {
        addr: target,
        ids: Arc::clone(&ids),
        run_id: run_id.clone(),
    };
    let plan = legit::LegitPlan {
        rate: a.legit_rate,
        size: 16,
        phases: [a.baseline, a.duration, a.after],
        topic: Topic::new(&format!("loadtest/attack/rpc{run_id}"))?,
        join_topic: Topic::new(&format!("loadtest/attack/join{run_id}"))?,
        drain: Duration::from_secs(2),
    };

    // Prepared against a provisional start; the connection plans' deadline
    // is moved to the real one below.
    let mut prepared = prepare(a, target, &ids, &run_id, Instant::now()).await?;
    let before = match &metrics_url {
        Some(u) => Some(
            prom::scrape(u)
                .await
                .context("scraping the node's metrics")?,
        ),
        None => None,
    };

    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let legit = legit_rt.spawn(legit::run(backend, plan, ready_tx));
    let t0 = match ready_rx.await {
        Ok(t) => Instant::from_std(t),
        Err(_) => {
            // The legit task ended before starting: its error says why.
            legit.await.context("the legit stream panicked")??;
            bail!("the legit stream ended before it started");
        }
    };
    let attack_start = t0 + a.baseline;
    let deadline = attack_start + a.duration;
    let end = deadline + a.after;
    if let Prepared::Conns(p) = &mut prepared {
        p.deadline = deadline;
    }

    let sampler = tokio::spawn(async move {
        let Some(pid) = node_pid else {
            return (Vec::new(), None);
        };
        let probe = CpuProbe::Pid(pid);
        let mut samples = Vec::new();
        let mut error = None;
        let mut tick = tokio::time::interval_at(t0, Duration::from_millis(500));
        loop {
            let now = tick.tick().await;
            if now > end {
                break;
            }
            let when = if now < attack_start {
                When::Baseline
            } else if now < deadline {
                When::Attack
            } else {
                When::After
            };
            match probe.rss_kib() {
                Ok(k) => samples.push((when, k)),
                Err(e) => {
                    error = Some(format!("{e:#}"));
                    break;
                }
            }
        }
        (samples, error)
    });

    tokio::time::sleep_until(attack_start).await;
    let log0 = node_log.as_deref().map(line_count).transpose()?;
    eprintln!("attack {} started", a.kind.name());
    let kind = a.kind;
    let ips = a.attack_bind.clone();
    let sources = a.sources;
    let rate = a.rate.unwrap_or(kind.default_rate());
    let attack = tokio::spawn(async move {
        let v = match (kind, prepared) {
            (Kind::InitialFlood | Kind::Junk, Prepared::Datagrams(pool)) => serde_json::to_value(
                udp::flood(target, &ips, sources, rate, pool, deadline, end).await?,
            )?,
            (Kind::RefusedHandshakes, Prepared::Conns(p)) => {
                serde_json::to_value(conns::refused(&p).await?)?
            }
            (Kind::SilentClients, Prepared::Conns(p)) => {
                serde_json::to_value(conns::silent(&p).await?)?
            }
            (Kind::StalledFrames, Prepared::Conns(p)) => {
                serde_json::to_value(conns::stalled(&p).await?)?
            }
            _ => unreachable!("prepare() matches the kind"),
        };
        anyhow::Ok(v)
    });
    tokio::time::sleep_until(deadline).await;
    eprintln!("attack phase over");
    let log1 = node_log.as_deref().map(line_count).transpose()?;
    tokio::time::sleep_until(end).await;
    let log2 = node_log.as_deref().map(line_count).transpose()?;

    let legit = legit.await.context("the legit stream panicked")??;
    let attack = attack.await.context("the attack panicked")??;
    let (samples, rss_error) = sampler.await.context("the RSS sampler panicked")?;
    let (counters, metrics_error) = match (&metrics_url, before) {
        (Some(u), Some(b)) => match prom::scrape(u).await {
            Ok(after) => (prom::diff(&b, &after), None),
            Err(e) => (Vec::new(), Some(format!("{e:#}"))),
        },
        _ => (Vec::new(), None),
    };
    let rss = RssSummary::of(&samples);
    let goals = goals(&legit, rss.as_ref());
    let pass = goals.iter().all(|g| g.pass != Some(false));
    let node_log_lines = match (log0, log1, log2) {
        (Some(a), Some(b), Some(c)) => Some((b.saturating_sub(a), c.saturating_sub(b))),
        _ => None,
    };
    Ok(AttackReport {
        kind,
        target: format!("slim://{target}"),
        attack_bind: a.attack_bind.clone(),
        rate: Some(rate),
        count: (!matches!(kind, Kind::InitialFlood | Kind::Junk))
            .then(|| a.count.unwrap_or(kind.default_count())),
        baseline_s: a.baseline.as_secs_f64(),
        duration_s: a.duration.as_secs_f64(),
        after_s: a.after.as_secs_f64(),
        legit,
        rss,
        rss_error,
        node_log_lines,
        counters,
        metrics_error,
        attack,
        goals,
        pass,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn cli_parses_attack() {
        let c = crate::Cli::try_parse_from([
            "slim-loadtest",
            "attack",
            "--kind",
            "stalled-frames",
            "--target",
            "slim://127.0.0.1:4500",
            "--duration",
            "10s",
            "--attack-bind",
            "127.0.0.2,127.0.0.3",
        ])
        .unwrap();
        let crate::Cmd::Attack(a) = c.cmd else {
            panic!("wrong subcommand")
        };
        assert_eq!(a.kind, Kind::StalledFrames);
        assert_eq!(
            (a.duration, a.after),
            (Duration::from_secs(10), Duration::from_secs(30))
        );
        assert_eq!(a.attack_bind.len(), 2);
        assert_eq!(a.count.unwrap_or(a.kind.default_count()), 200);
        assert!(crate::Cli::try_parse_from(["slim-loadtest", "attack", "--kind", "nope"]).is_err());
    }
}
