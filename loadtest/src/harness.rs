//! System-independent orchestration of one throughput run: start signal,
//! warm-up, measured window, stop, drain, and the report.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use futures::future::BoxFuture;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::payload::SeqTracker;
use crate::procstat::{self, CpuProbe};
use crate::serverstats;
pub use crate::throughput_report::{CpuReport, LOSS_LIMIT_PCT, Report, fmt_num, is_lossy};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every subscriber gets every message.
    Multicast,
    /// Each message goes to one subscriber (NATS: a queue group).
    Anycast,
}

/// What a scenario's name ends with when its subscribers are on a second
/// node (`summarize` pairs it with the same name without it).
pub const ACROSS_NODES: &str = ", across 2 nodes";

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub pubs: usize,
    pub pub_tasks: usize,
    pub subs: usize,
    /// The first `stalled` subscribers never read (slow-consumer scenario);
    /// they are left out of the expected deliveries and the rates.
    pub stalled: usize,
    pub size: usize,
    pub mode: Mode,
    pub warmup: Duration,
    pub duration: Duration,
    /// Drain ends when nothing new arrived for this long...
    pub drain_idle: Duration,
    /// ...or after this long in any case.
    pub drain_max: Duration,
    /// Subscribers on a second node, reached over a peer link.
    pub across_nodes: bool,
    /// Publishers on a runtime of their own ([`spawn_publisher`]).
    pub publisher_thread: bool,
}

impl Plan {
    pub fn streams(&self) -> usize {
        self.pubs * self.pub_tasks
    }

    pub fn scenario(&self) -> String {
        let mut s = format!(
            "{}->{} {}B {}",
            self.pubs,
            self.subs,
            self.size,
            match self.mode {
                Mode::Multicast => "multicast",
                Mode::Anycast => "anycast",
            }
        );
        if self.stalled > 0 {
            s.push_str(&format!(", {} stalled", self.stalled));
        }
        if self.across_nodes {
            s.push_str(ACROSS_NODES);
        }
        s
    }

    /// Subscribers that read.
    pub fn readers(&self) -> usize {
        self.subs - self.stalled
    }

    /// Deliveries owed to the subscribers that read, for `sent` messages.
    pub fn expected(&self, sent: u64) -> u64 {
        match self.mode {
            Mode::Multicast => sent * self.readers() as u64,
            Mode::Anycast => sent,
        }
    }
}

/// Spawns a publisher's connection or task: on the caller's runtime, or with
/// `plan.publisher_thread` on a one-worker runtime of its own, as if the
/// publisher were another process. Why: on the shared runtime the publisher
/// gets a worker only between the subscribers' tasks, so a 1 -> 1000 run's
/// publisher is throttled by its own subscribers' scheduling, not only by
/// the server (docs/BENCHMARKS.md, *A publisher of its own*). Connections
/// must be opened through this too: the client libraries spawn their
/// connection tasks on the runtime they are opened in.
pub fn spawn_publisher<F>(plan: &Plan, f: F) -> JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    // Lives as long as the process: a runtime cannot be dropped from
    // inside another one, and the load generator is a short-lived command.
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    if !plan.publisher_thread {
        return tokio::spawn(f);
    }
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("loadtest-publisher")
            .enable_all()
            .build()
            .expect("the publishers' runtime (one thread) could not be started")
    })
    .spawn(f)
}

/// A counter on its own cache line: every stream and subscriber writes its own.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct Padded(pub AtomicU64);

fn counters(n: usize) -> Arc<[Padded]> {
    (0..n).map(|_| Padded::default()).collect()
}

fn sum(c: &[Padded]) -> u64 {
    c.iter().map(|p| p.0.load(Ordering::Relaxed)).sum()
}

/// What the system-specific tasks observe and update.
#[derive(Clone)]
pub struct Ctl {
    pub start: watch::Receiver<bool>,
    pub stop_pubs: Arc<AtomicBool>,
    pub stop_subs: watch::Receiver<bool>,
    /// Messages published, per stream (`pub index * pub_tasks + task`).
    pub sent: Arc<[Padded]>,
    /// Messages received, per subscriber.
    pub delivered: Arc<[Padded]>,
    /// When a stalled subscriber's connection was first seen cut by the
    /// server (by the subscriber's own client, where it can tell).
    pub stalled_cut: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl Ctl {
    /// Waits for the start signal.
    pub async fn started(&mut self) {
        let _ = self.start.wait_for(|v| *v).await;
    }

    pub fn stopping(&self) -> bool {
        self.stop_pubs.load(Ordering::Relaxed)
    }

    /// Records that a stalled subscriber was cut (the first time counts).
    pub fn note_stalled_cut(&self) {
        let mut g = self
            .stalled_cut
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.get_or_insert_with(Instant::now);
    }
}

/// The orchestrator's side of [`Ctl`].
pub struct Control {
    start: watch::Sender<bool>,
    stop_pubs: Arc<AtomicBool>,
    stop_subs: watch::Sender<bool>,
    ctl: Ctl,
}

impl Control {
    pub fn new(plan: &Plan) -> Self {
        let (start, start_rx) = watch::channel(false);
        let (stop_subs, stop_rx) = watch::channel(false);
        let stop_pubs = Arc::new(AtomicBool::new(false));
        let ctl = Ctl {
            start: start_rx,
            stop_pubs: Arc::clone(&stop_pubs),
            stop_subs: stop_rx,
            sent: counters(plan.streams()),
            delivered: counters(plan.subs),
            stalled_cut: Arc::default(),
        };
        Control {
            start,
            stop_pubs,
            stop_subs,
            ctl,
        }
    }

    pub fn ctl(&self) -> Ctl {
        self.ctl.clone()
    }
}

/// Closes a connection once the run is over. Publishers' connections stay
/// open until then so that closing them does not discard what is in flight;
/// every connection is closed gracefully so that the server forgets it (and
/// its subscription) at once rather than at its idle timeout, when it would
/// still be routed to during the next run.
pub type Closer = BoxFuture<'static, ()>;

/// Backend-specific counters read at the end of the run.
pub type ExtraCounters = Box<dyn Fn() -> BTreeMap<String, u64> + Send + Sync>;

/// The tasks a backend set up; publishers wait for the start signal.
pub struct Running {
    /// One per publisher connection; returns once its tasks stopped and it flushed.
    pub publishers: Vec<JoinHandle<Result<Closer>>>,
    /// One per subscriber; returns its accounting (and its connection, closed
    /// only after the backend counters are read) once told to stop.
    pub subscribers: Vec<JoinHandle<Result<(SeqTracker, Closer)>>>,
    pub extra: Option<ExtraCounters>,
}

/// A server statistics endpoint and what it said before the run.
#[derive(Debug, Clone)]
pub struct ServerStats {
    pub kind: serverstats::Kind,
    pub addr: std::net::SocketAddr,
    pub before: BTreeMap<&'static str, f64>,
}

impl ServerStats {
    /// Reads the "before" values; call before any client connects.
    pub async fn read(kind: serverstats::Kind, addr: std::net::SocketAddr) -> Result<Self> {
        Ok(ServerStats {
            kind,
            addr,
            before: serverstats::read(kind, addr).await?,
        })
    }
}

/// Where the CPU figure comes from.
#[derive(Debug, Clone)]
pub struct CpuSetup {
    pub probe: Option<CpuProbe>,
    /// In-process node: also sum the CPU of threads with this name prefix.
    pub node_threads: Option<String>,
}

#[derive(Debug, Clone)]
struct Snap {
    at: Instant,
    sent: u64,
    delivered: u64,
    per_sub: Vec<u64>,
    cpu: Option<f64>,
    node_threads_cpu: Option<f64>,
}

fn snap(ctl: &Ctl, cpu: &CpuSetup) -> Snap {
    Snap {
        at: Instant::now(),
        sent: sum(&ctl.sent),
        delivered: sum(&ctl.delivered),
        per_sub: ctl
            .delivered
            .iter()
            .map(|p| p.0.load(Ordering::Relaxed))
            .collect(),
        cpu: cpu.probe.as_ref().and_then(|p| p.cpu_seconds().ok()),
        node_threads_cpu: cpu
            .node_threads
            .as_deref()
            .and_then(|p| procstat::self_threads_cpu_seconds(p).ok()),
    }
}

/// A progress bar on stderr while the window runs (only on a terminal, so
/// logs and `--json` output stay clean).
fn progress(system: &str, done_s: f64, total_s: f64, rate: Option<f64>) {
    use std::io::{IsTerminal, Write};
    let err = std::io::stderr();
    if !err.is_terminal() {
        return;
    }
    const WIDTH: usize = 30;
    let frac = (done_s / total_s.max(1e-9)).clamp(0.0, 1.0);
    let filled = (frac * WIDTH as f64).round() as usize;
    let rate = rate
        .map(|r| format!("{:.3} M deliveries/s", r / 1e6))
        .unwrap_or_default();
    let _ = write!(
        err.lock(),
        "\r{system:>5} [{}{}] {done_s:4.1}/{total_s:.1} s  {rate}   ",
        "=".repeat(filled),
        " ".repeat(WIDTH - filled)
    );
}

fn progress_done() {
    use std::io::{IsTerminal, Write};
    let err = std::io::stderr();
    if err.is_terminal() {
        let _ = writeln!(err.lock());
    }
}

/// Sampling step of [`Report::timeline`].
const TIMELINE_STEP: Duration = Duration::from_millis(100);

fn per_million(cpu: f64, deliveries: u64) -> Option<f64> {
    (deliveries > 0).then(|| cpu / (deliveries as f64 / 1e6))
}

/// The measured process's resident set, sampled while a run lasts: its
/// VmHWM covers the process's whole life (earlier runs of the round
/// included), this covers this run only.
struct RssPeak {
    probe: Option<CpuProbe>,
    peak: Option<u64>,
}

impl RssPeak {
    fn new(probe: Option<CpuProbe>) -> Self {
        RssPeak { probe, peak: None }
    }

    fn sample(&mut self) {
        if let Some(k) = self.probe.as_ref().and_then(|p| p.rss_kib().ok()) {
            self.peak = Some(self.peak.map_or(k, |p| p.max(k)));
        }
    }
}

/// How often the server's slow-consumer counter is read during a run with
/// stalled subscribers (it dates the cut to within this step).
const CUT_POLL: Duration = Duration::from_millis(200);

/// The server counter that grows when it cuts a slow consumer.
fn cut_counter(kind: serverstats::Kind) -> &'static str {
    match kind {
        serverstats::Kind::Slim => "slow_consumer_disconnects",
        serverstats::Kind::Nats => "slow_consumers",
    }
}

/// Polls the server's slow-consumer counter until `stop`; returns when it
/// first grew past its value before the run (`None`: it never did), or
/// the last read error if no read succeeded.
fn watch_cut(
    st: &ServerStats,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<Result<Option<Instant>, String>> {
    let (kind, addr) = (st.kind, st.addr);
    let key = cut_counter(kind);
    let before = st.before.get(key).copied().unwrap_or(0.0);
    tokio::spawn(async move {
        let mut ok = false;
        let mut last_err = None;
        loop {
            tokio::select! {
                _ = stop.wait_for(|v| *v) => break,
                _ = tokio::time::sleep(CUT_POLL) => {}
            }
            match serverstats::read(kind, addr).await {
                Ok(m) => {
                    ok = true;
                    if m.get(key).copied().unwrap_or(0.0) > before {
                        return Ok(Some(Instant::now()));
                    }
                }
                Err(e) => last_err = Some(format!("{e:#}")),
            }
        }
        match (ok, last_err) {
            (false, Some(e)) => Err(e),
            _ => Ok(None),
        }
    })
}

/// Runs the measurement over tasks a backend has set up.
pub async fn run(
    system: &str,
    target: &str,
    plan: &Plan,
    control: Control,
    running: Running,
    cpu: &CpuSetup,
    server: Option<ServerStats>,
) -> Result<Report> {
    let Control {
        start,
        stop_pubs,
        stop_subs,
        ctl,
    } = control;
    let Running {
        publishers,
        subscribers,
        extra,
    } = running;

    let udp_before = procstat::udp_rcvbuf_errors().ok();
    let mut rss = RssPeak::new(cpu.probe.clone());
    let cut_watch = match &server {
        Some(st) if plan.stalled > 0 => Some(watch_cut(st, ctl.stop_subs.clone())),
        _ => None,
    };
    let t_start = Instant::now();
    let _ = start.send(true);
    let warm_end = t_start + plan.warmup;
    while Instant::now() < warm_end {
        rss.sample();
        tokio::time::sleep_until((Instant::now() + TIMELINE_STEP).min(warm_end).into()).await;
    }
    let a = snap(&ctl, cpu);
    let end = a.at + plan.duration;
    let mut timeline = Vec::new();
    let (mut t_prev, mut d_prev) = (a.at, a.delivered);
    loop {
        let next = (t_prev + TIMELINE_STEP).min(end);
        tokio::time::sleep_until(next.into()).await;
        rss.sample();
        let now = Instant::now();
        let d = sum(&ctl.delivered);
        let dt = (now - t_prev).as_secs_f64();
        if dt > 0.0 {
            timeline.push([(now - a.at).as_secs_f64(), (d - d_prev) as f64 / dt]);
        }
        (t_prev, d_prev) = (now, d);
        progress(
            system,
            (now - a.at).as_secs_f64(),
            plan.duration.as_secs_f64(),
            timeline.last().map(|p| p[1]),
        );
        if now >= end {
            break;
        }
    }
    progress_done();
    let b = snap(&ctl, cpu);
    stop_pubs.store(true, Ordering::Relaxed);

    // Publishers stop, flush, and hand back their connections; a flush
    // returns once the server has processed everything published (NATS:
    // PING/PONG; SLIM: the SDK queue handed to QUIC, then a ping). "Sent"
    // counts publishes the client library accepted into its bounded queue.
    // A publisher whose server has not processed its backlog after
    // --drain-max is aborted: what it published counts as sent, and as lost
    // unless it arrives during the drain (the note says so).
    let mut keep = Vec::with_capacity(publishers.len());
    let mut notes = Vec::new();
    let flush_deadline = tokio::time::Instant::now() + plan.drain_max;
    for (i, mut p) in publishers.into_iter().enumerate() {
        match tokio::time::timeout_at(flush_deadline, &mut p).await {
            Ok(k) => keep.push(
                k.with_context(|| format!("publisher {i} panicked"))?
                    .with_context(|| format!("publisher {i}"))?,
            ),
            Err(_) => {
                p.abort();
                notes.push(format!(
                    "publisher {i}: the server had not processed everything it published \
                     {:?} after the window (its client's queue, or the server's backlog, \
                     was not worked through); aborted, which closes its connection and discards \
                     what the server had not read: what it had published counts as sent",
                    plan.drain_max
                ));
            }
        }
    }
    let total_sent = sum(&ctl.sent);
    let expected = plan.expected(total_sent);

    // Drain: wait for what is in flight, until everything arrived, nothing
    // new arrived for `drain_idle`, or `drain_max` passed.
    let drain_start = Instant::now();
    let mut last = sum(&ctl.delivered);
    let mut last_change = Instant::now();
    let mut drain_cut = false;
    while last < expected {
        tokio::time::sleep(Duration::from_millis(20)).await;
        rss.sample();
        let now = Instant::now();
        let d = sum(&ctl.delivered);
        if d != last {
            last = d;
            last_change = now;
        } else if now - last_change >= plan.drain_idle {
            break;
        }
        if now - drain_start >= plan.drain_max {
            drain_cut = true;
            break;
        }
    }
    let drain_s = drain_start.elapsed().as_secs_f64();
    let _ = stop_subs.send(true);

    let mut seq = SeqTracker::default();
    for (i, s) in subscribers.into_iter().enumerate() {
        let t = tokio::time::timeout(Duration::from_secs(30), s)
            .await
            .map_err(|_| anyhow!("subscriber {i} did not stop within 30 s"))?
            .with_context(|| format!("subscriber {i} panicked"))?
            .with_context(|| format!("subscriber {i}"))?;
        seq.merge(&t.0);
        keep.push(t.1);
    }
    rss.sample();
    let server_cut = match cut_watch {
        Some(h) => match h.await {
            Ok(Ok(at)) => at,
            Ok(Err(e)) => {
                notes.push(format!("polling the server's slow-consumer counter: {e}"));
                None
            }
            Err(e) => {
                notes.push(format!("the slow-consumer counter poller failed: {e}"));
                None
            }
        },
        None => None,
    };
    let client_cut = *ctl
        .stalled_cut
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (stalled_cut_after_s, stalled_cut_seen_by) = match (client_cut, server_cut) {
        (Some(c), Some(s)) if s < c => (Some(s), Some("server counter")),
        (Some(c), _) => (Some(c), Some("stalled client")),
        (None, Some(s)) => (Some(s), Some("server counter")),
        (None, None) => (None, None),
    };
    let stalled_cut_after_s =
        stalled_cut_after_s.map(|t| t.saturating_duration_since(t_start).as_secs_f64());
    let mut counters = extra.map(|f| f()).unwrap_or_default();
    if system == "slim"
        && let (Some(a), Ok(b)) = (udp_before, procstat::udp_rcvbuf_errors())
    {
        counters.insert("host_udp_rcvbuf_errors".into(), b.saturating_sub(a));
    }
    if drain_cut {
        notes.push(format!(
            "drain stopped at --drain-max ({:?}) while deliveries were still arriving: \
             'lost' includes messages still in flight",
            plan.drain_max
        ));
    }
    if let Some(st) = server {
        match serverstats::read(st.kind, st.addr).await {
            Ok(after) => {
                counters.extend(serverstats::diff(&st.before, &after));
                let open = counters
                    .get("server_client_connections_at_start")
                    .copied()
                    .unwrap_or(0);
                if open > 0 {
                    notes.push(format!(
                        "{open} client connection(s) were already open on the server before this run"
                    ));
                }
            }
            Err(e) => notes.push(format!("server statistics: {e:#}")),
        }
    }
    let peak_rss_kib = cpu.probe.as_ref().and_then(|p| p.peak_rss_kib().ok());
    if tokio::time::timeout(Duration::from_secs(10), futures::future::join_all(keep))
        .await
        .is_err()
    {
        notes.push("closing the connections took more than 10 s".into());
    }

    let window_s = (b.at - a.at).as_secs_f64();
    let window_deliveries = b.delivered - a.delivered;
    let window_sent = b.sent - a.sent;
    let deliveries_per_s = window_deliveries as f64 / window_s;
    let sub_rates: Vec<f64> = (plan.stalled..plan.subs)
        .map(|i| (b.per_sub[i] - a.per_sub[i]) as f64 / window_s)
        .collect();
    let sub_rate_min = sub_rates.iter().copied().fold(f64::INFINITY, f64::min);
    let sub_rate_max = sub_rates.iter().copied().fold(0.0, f64::max);
    let cpu_report = match (&cpu.probe, a.cpu, b.cpu) {
        (Some(p), Some(x), Some(y)) => Some(CpuReport {
            scope: p.scope(),
            pid: p.pid(),
            seconds: y - x,
            seconds_per_million_deliveries: per_million(y - x, window_deliveries),
        }),
        (Some(p), _, _) => {
            notes.push(format!("could not read CPU time of {}", p.scope()));
            None
        }
        (None, _, _) => {
            notes.push("no --node-pid: node CPU not measured".into());
            None
        }
    };
    let node_threads_cpu = match (&cpu.node_threads, a.node_threads_cpu, b.node_threads_cpu) {
        (Some(prefix), Some(x), Some(y)) => Some(CpuReport {
            scope: format!("threads named {prefix}* in this process (the in-process node runtime)"),
            pid: Some(std::process::id()),
            seconds: y - x,
            seconds_per_million_deliveries: per_million(y - x, window_deliveries),
        }),
        _ => None,
    };
    if seq.received != last {
        notes.push(format!(
            "subscribers counted {} messages at the end but {} when the drain ended",
            seq.received, last
        ));
    }
    let total_delivered = seq.received;
    let lost = expected.saturating_sub(total_delivered);
    let loss_pct = if expected > 0 {
        100.0 * lost as f64 / expected as f64
    } else {
        0.0
    };
    Ok(Report {
        kind: "throughput",
        system: system.into(),
        target: target.into(),
        scenario: plan.scenario(),
        mode: plan.mode,
        pubs: plan.pubs,
        pub_tasks: plan.pub_tasks,
        subs: plan.subs,
        stalled_subs: plan.stalled,
        across_nodes: plan.across_nodes,
        publisher_thread: plan.publisher_thread,
        size_bytes: plan.size,
        warmup_s: plan.warmup.as_secs_f64(),
        window_s,
        window_sent,
        window_deliveries,
        sent_per_s: window_sent as f64 / window_s,
        deliveries_per_s,
        sub_rate_min: if sub_rate_min.is_finite() {
            sub_rate_min
        } else {
            0.0
        },
        sub_rate_max,
        payload_mb_per_s: deliveries_per_s * plan.size as f64 / 1e6,
        total_sent,
        total_delivered,
        expected_deliveries: expected,
        lost,
        loss_pct,
        lossy: is_lossy(loss_pct),
        loss_limit_pct: LOSS_LIMIT_PCT,
        excess: total_delivered.saturating_sub(expected),
        seq_gaps: (plan.mode == Mode::Multicast).then_some(seq.gaps),
        out_of_order_or_dup: if plan.mode == Mode::Multicast {
            seq.out_of_order
        } else {
            0
        },
        malformed: seq.malformed,
        node_errors: seq.errors,
        drain_s,
        cpu: cpu_report,
        node_threads_cpu,
        peak_rss_kib,
        server_rss_peak_kib: rss.peak,
        stalled_cut_after_s,
        stalled_cut_seen_by: stalled_cut_seen_by.map(str::to_owned),
        counters,
        timeline,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(publisher_thread: bool) -> Plan {
        Plan {
            pubs: 1,
            pub_tasks: 1,
            subs: 1,
            stalled: 0,
            size: 16,
            mode: Mode::Multicast,
            warmup: Duration::ZERO,
            duration: Duration::ZERO,
            drain_idle: Duration::ZERO,
            drain_max: Duration::ZERO,
            across_nodes: false,
            publisher_thread,
        }
    }

    fn thread() -> Option<String> {
        std::thread::current().name().map(str::to_owned)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_publisher_thread_runs_publishers_and_what_they_spawn_off_the_callers_runtime() {
        const OWN: Option<&str> = Some("loadtest-publisher");
        let shared = spawn_publisher(&plan(false), async { thread() })
            .await
            .unwrap();
        assert_ne!(
            shared.as_deref(),
            OWN,
            "without the flag: the caller's runtime"
        );
        let own = spawn_publisher(&plan(true), async { thread() })
            .await
            .unwrap();
        assert_eq!(own.as_deref(), OWN);
        // A client library opened in a publisher task spawns its connection
        // task there too: that is why connections go through it as well.
        let nested = spawn_publisher(&plan(true), async {
            tokio::spawn(async { thread() }).await.unwrap()
        })
        .await
        .unwrap();
        assert_eq!(nested.as_deref(), OWN);
    }
}
