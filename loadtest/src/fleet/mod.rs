//! `slim-loadtest fleet`: a controller and N node processes on 127.0.0.1
//! configured as the fleet files in `deploy/fleet/` configure them, and what
//! the interest protocol costs there.
//!
//! * `connect-leave`: one client connects to node 0 and subscribes to one
//!   name, the fleet settles, it leaves, the fleet settles; fleet-wide link
//!   bytes and node CPU seconds net of the idle background (measured first,
//!   over the same poll schedule), and the settle times; median of
//!   `--repeats`.
//! * `churn`: clients connect to random nodes, subscribe to one or two
//!   names, stay 0–`--stay-max` and leave, at `--churn-rate` per second for
//!   `--duration`, alongside a fixed-rate cross-node stream (publisher on
//!   node 0, subscriber on the last node); the stream's loss, duplicates and
//!   latency, link resets, whether every node's registry names (routes) are
//!   back to the pre-churn baseline `--stale-after` after the last client
//!   left and its interest entries (tombstones included) `--memory-after`;
//!   node memory before and after.
//!
//! Link bytes are `slim_link_bytes_total{direction="in"}` summed over the
//! nodes: every byte a node read from its links' control (interest,
//! ping/pong) and data streams, i.e. every byte sent over a link once, QUIC
//! framing and UDP/IP headers excluded (the node does not count the
//! control-stream bytes it writes, so `out` is data only).

pub mod churn;
pub mod cluster;
pub mod connect_leave;
pub mod probe;
pub mod stream;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use slim_auth::{Identity, SpiffeId};

use churn::{ChurnPlan, ChurnReport};
use cluster::{Cluster, ClusterOpts};
use connect_leave::{ConnectLeavePlan, ConnectLeaveReport};
use probe::Idle;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FleetMode {
    /// One client connect + leave at a time: fleet-wide cost and settle time.
    ConnectLeave,
    /// Clients connecting and leaving at a rate, with a cross-node stream.
    Churn,
}

/// Everything a `fleet` run needs.
#[derive(Debug, Clone)]
pub struct FleetPlan {
    pub mode: FleetMode,
    /// One fleet per size, in turn.
    pub sizes: Vec<usize>,
    pub bin_dir: PathBuf,
    pub keep_dir: bool,
    pub log_level: Option<String>,
    pub start_timeout: Duration,
    pub idle_window: Duration,
    pub poll: Duration,
    pub quiet_for: Duration,
    pub settle_max: Duration,
    pub repeats: usize,
    pub churn: ChurnPlan,
    /// The whole run (every size) is abandoned after this long.
    pub max_wall: Duration,
    pub json: Option<PathBuf>,
    pub run_id: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    /// Always "fleet".
    pub kind: &'static str,
    pub mode: FleetMode,
    pub nodes: usize,
    pub links_planned: u64,
    /// Process start → every planned link up.
    pub start_s: f64,
    /// Fleet-wide background before anything happens (no clients).
    pub idle: Idle,
    pub connect_leave: Option<ConnectLeaveReport>,
    pub churn: Option<ChurnReport>,
    /// CPU seconds of the controller process over the whole run.
    pub controller_cpu_s: f64,
    /// The controller's VmRSS at the end of the run.
    pub controller_rss_kib: u64,
    pub node_settings: &'static str,
}

fn issue(cluster: &Cluster, path: &str) -> Result<Identity> {
    let id = SpiffeId::parse(&format!(
        "spiffe://{}/loadtest/{path}",
        cluster::TRUST_DOMAIN
    ))?;
    cluster
        .ca
        .issue(&id, Duration::from_secs(24 * 3600))
        .with_context(|| format!("issuing {id}"))
}

async fn one(plan: &FleetPlan, n: usize) -> Result<FleetReport> {
    let t0 = Instant::now();
    eprintln!("== fleet of {n} nodes: starting");
    let mut cluster = Cluster::start(&ClusterOpts {
        nodes: n,
        bin_dir: plan.bin_dir.clone(),
        keep_dir: plan.keep_dir,
        log_level: plan.log_level.clone(),
        start_timeout: plan.start_timeout,
    })
    .await?;
    let start_s = t0.elapsed().as_secs_f64();
    let links_planned = cluster.links_planned().await?;
    eprintln!(
        "   {n} nodes, {links_planned} links up after {start_s:.1} s (work dir {})",
        cluster.work.display()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = probe::idle(&cluster, plan.idle_window, plan.poll).await?;
    eprintln!(
        "   idle: {:.1} kB/s link bytes, {:.3} CPU-s/s (fleet-wide)",
        idle.bytes_per_s / 1e3,
        idle.cpu_per_s
    );
    let ctl_cpu0 = crate::procstat::CpuProbe::Pid(cluster.controller_pid)
        .cpu_seconds()
        .unwrap_or(0.0);
    let mut report = FleetReport {
        kind: "fleet",
        mode: plan.mode,
        nodes: n,
        links_planned,
        start_s,
        idle: idle.clone(),
        connect_leave: None,
        churn: None,
        controller_cpu_s: 0.0,
        controller_rss_kib: 0,
        node_settings: "deploy/fleet/node-us-east.toml (as built into this binary) for every \
                        node, each with an external endpoint; deploy/fleet/controller.toml",
    };
    match plan.mode {
        FleetMode::ConnectLeave => {
            let id = issue(&cluster, "connect-leave")?;
            let r = connect_leave::run(
                &mut cluster,
                &idle,
                &ConnectLeavePlan {
                    repeats: plan.repeats.max(1),
                    poll: plan.poll,
                    quiet_for: plan.quiet_for,
                    settle_max: plan.settle_max,
                    run_id: plan.run_id.clone(),
                },
                id,
            )
            .await?;
            report.connect_leave = Some(r);
        }
        FleetMode::Churn => {
            let ids = (
                issue(&cluster, "stream/pub")?,
                issue(&cluster, "stream/sub")?,
            );
            let churners = (0..4)
                .map(|k| issue(&cluster, &format!("churn/{k}")))
                .collect::<Result<Vec<_>>>()?;
            let mut cp = plan.churn.clone();
            if cp.sub_node == usize::MAX {
                cp.sub_node = n - 1;
            }
            report.churn = Some(churn::run(&mut cluster, &cp, ids, churners).await?);
        }
    }
    report.controller_cpu_s = crate::procstat::CpuProbe::Pid(cluster.controller_pid)
        .cpu_seconds()
        .unwrap_or(0.0)
        - ctl_cpu0;
    report.controller_rss_kib = crate::procstat::CpuProbe::Pid(cluster.controller_pid)
        .rss_kib()
        .unwrap_or(0);
    cluster.check_alive()?;
    drop(cluster);
    Ok(report)
}

async fn all(plan: &FleetPlan) -> Result<Vec<FleetReport>> {
    let mut out = Vec::new();
    for &n in &plan.sizes {
        let r = one(plan, n)
            .await
            .with_context(|| format!("fleet of {n} nodes"))?;
        match plan.mode {
            FleetMode::ConnectLeave => eprint!("{}", connect_leave_table(std::slice::from_ref(&r))),
            FleetMode::Churn => eprint!("{}", churn_table(&r)),
        }
        out.push(r);
        if let Some(p) = &plan.json {
            write_json(p, &out)?;
        }
    }
    Ok(out)
}

fn write_json(path: &PathBuf, reports: &[FleetReport]) -> Result<()> {
    let text = serde_json::to_string_pretty(reports)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Runs the plan: every size in turn, each fleet stopped and removed before
/// the next; the processes are killed on error, Ctrl-C, SIGTERM, or at
/// `max_wall`.
pub async fn run(plan: FleetPlan) -> Result<Vec<FleetReport>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let reports = tokio::select! {
        r = tokio::time::timeout(plan.max_wall, all(&plan)) => match r {
            Ok(r) => r?,
            Err(_) => bail!("the run exceeded --max-wall {:?}; stopped", plan.max_wall),
        },
        _ = tokio::signal::ctrl_c() => bail!("interrupted; fleet stopped"),
        _ = term.recv() => bail!("terminated; fleet stopped"),
        _ = hup.recv() => bail!("hung up; fleet stopped"),
    };
    match plan.mode {
        FleetMode::ConnectLeave => print!("{}", connect_leave_table(&reports)),
        FleetMode::Churn => {
            for r in &reports {
                print!("{}", churn_table(r));
            }
        }
    }
    if let Some(p) = &plan.json {
        write_json(p, &reports)?;
        eprintln!("report written to {}", p.display());
    }
    Ok(reports)
}

fn kb(b: f64) -> String {
    if b.abs() >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else {
        format!("{:.1} kB", b / 1e3)
    }
}

pub fn connect_leave_table(reports: &[FleetReport]) -> String {
    let mut s = String::from(
        "\n| N | links | link bytes / connect+leave | connect | leave | CPU-s | connect | leave \
         | settle connect / leave (s) | routes back to baseline | idle bytes/s | idle CPU-s/s \
         | controller CPU-s (run) / RSS |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in reports {
        let Some(cl) = &r.connect_leave else { continue };
        let m = &cl.median;
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} / {:.2} | {} | {} | {:.3} \
             | {:.2} / {:.1} MiB |\n",
            r.nodes,
            r.links_planned,
            kb(m.bytes),
            kb(m.bytes_connect),
            kb(m.bytes_leave),
            m.cpu_s,
            m.cpu_connect_s,
            m.cpu_leave_s,
            m.settle_connect_s,
            m.settle_leave_s,
            if m.clean_after { "yes" } else { "NO" },
            kb(r.idle.bytes_per_s) + "/s",
            r.idle.cpu_per_s,
            r.controller_cpu_s,
            r.controller_rss_kib as f64 / 1024.0,
        ));
    }
    s.push_str(&format!(
        "(median of {} runs each; bytes and CPU net of the idle background; \
         link bytes = Σ slim_link_bytes_total{{direction=\"in\"}})\n",
        reports
            .first()
            .and_then(|r| r.connect_leave.as_ref())
            .map_or(0, |c| c.events.len())
    ));
    s
}

pub fn churn_table(r: &FleetReport) -> String {
    let Some(c) = &r.churn else {
        return String::new();
    };
    let st = &c.stream;
    let mut s = format!(
        "\nfleet churn: {} nodes, {} links\n\
         | metric | value |\n|---|---|\n",
        r.nodes, r.links_planned
    );
    let mut row = |k: &str, v: String| s.push_str(&format!("| {k} | {v} |\n"));
    row(
        "churn clients started / completed",
        format!(
            "{} / {} in {:.1} s ({:.1}/s; skipped {}, connect failures {}, subscribe failures {})",
            c.clients.started,
            c.clients.completed,
            c.clients.window_s,
            c.clients.achieved_rate,
            c.clients.skipped,
            c.clients.connect_failures,
            c.clients.subscribe_failures
        ),
    );
    row(
        "churn client connect p50 / p99 / max",
        format!(
            "{:.1} / {:.1} / {:.1} ms",
            c.clients.connect_p50_ms, c.clients.connect_p99_ms, c.clients.connect_max_ms
        ),
    );
    row(
        "stream sent / lost / duplicates",
        format!(
            "{} at {}/s / {} / {}",
            st.sent, st.rate_per_s, st.lost, st.duplicates
        ),
    );
    row(
        "stream latency p50 / p99 / p99.9 / max",
        format!(
            "{:.2} / {:.2} / {:.2} / {:.2} ms",
            st.latency_p50_ms, st.latency_p99_ms, st.latency_p999_ms, st.latency_max_ms
        ),
    );
    row(
        "stream reconnects (pub / sub), publish errors",
        format!(
            "{} / {}, {}",
            st.publisher_reconnects, st.subscriber_reconnects, st.publisher_errors
        ),
    );
    row(
        "link down / control_overflow / queue_full / reconnects",
        format!(
            "{} / {} / {} / {}",
            c.links.link_down,
            c.links.control_overflow,
            c.links.link_queue_full,
            c.links.link_reconnects
        ),
    );
    row(
        "link ends up before / after",
        format!(
            "{} / {}",
            c.links.peer_link_ends_before, c.links.peer_link_ends_after
        ),
    );
    row(
        "link bytes during churn (net of idle)",
        format!(
            "{}/s, {} per connect+leave",
            kb(c.churn_bytes_per_s),
            kb(c.bytes_per_event)
        ),
    );
    row(
        "node CPU during churn (net of idle)",
        format!(
            "{:.2} CPU-s/s, {:.3} CPU-s per connect+leave",
            c.churn_cpu_per_s, c.cpu_per_event
        ),
    );
    row(
        "idle with stream",
        format!(
            "{}/s, {:.3} CPU-s/s",
            kb(c.idle.bytes_per_s),
            c.idle.cpu_per_s
        ),
    );
    row(
        &format!("stale routes {:.0} s after churn", c.stale.check_after_s),
        if c.stale.clean {
            format!(
                "none (clean after {:.1} s)",
                c.stale.clean_after_s.unwrap_or(0.0)
            )
        } else {
            format!(
                "{} entries, {} names above baseline on {} nodes; {}",
                c.stale.interest_entries_above_baseline,
                c.stale.registry_names_above_baseline,
                c.stale.nodes_not_clean.len(),
                match c.stale.clean_after_s {
                    Some(t) => format!("clean after {t:.1} s"),
                    None => "still stale at the end".into(),
                }
            )
        },
    );
    row(
        "interest entries back to baseline (tombstones expired)",
        match c.stale.memory_clean_after_s {
            Some(t) => format!("after {t:.1} s"),
            None => format!(
                "not within {:.0} s ({} entries above)",
                c.stale.memory_check_after_s,
                c.stale.interest_entries_above_baseline_at_memory_check
            ),
        },
    );
    row(
        "after the churn (last leave → end of check)",
        format!(
            "{}/s link bytes, {:.2} CPU-s/s over {:.1} s",
            kb(c.stale.after_link_bytes_per_s),
            c.stale.after_cpu_per_s,
            c.stale.after_window_s
        ),
    );
    row(
        "node RSS idle → after (max / sum)",
        format!(
            "{:.1} → {:.1} MiB / {:.1} → {:.1} MiB (peak {:.1} MiB)",
            c.memory.rss_idle_max_kib as f64 / 1024.0,
            c.memory.rss_after_max_kib as f64 / 1024.0,
            c.memory.rss_idle_sum_kib as f64 / 1024.0,
            c.memory.rss_after_sum_kib as f64 / 1024.0,
            c.memory.rss_peak_max_kib as f64 / 1024.0
        ),
    );
    row(
        "controller CPU (whole run), RSS at the end",
        format!(
            "{:.2} s, {:.1} MiB",
            r.controller_cpu_s,
            r.controller_rss_kib as f64 / 1024.0
        ),
    );
    s
}
