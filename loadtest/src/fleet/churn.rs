//! Churn: clients connect to random nodes, subscribe to one or two names,
//! stay up to `stay_max`, and leave, at a fixed rate, while a fixed-rate
//! cross-node stream runs; then whether every node forgets them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use slim_auth::Identity;
use slim_client::{Client, ClientConfig};
use slim_wire::Name;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::cluster::{Cluster, RouteRow};
use super::probe::{self, Idle, Sample};
use super::stream::{Stream, StreamPlan, StreamReport};

#[derive(Debug, Clone)]
pub struct ChurnPlan {
    /// Client connects (each followed by its leave) per second.
    pub rate: f64,
    pub duration: Duration,
    /// Each client stays a random 0..=stay_max.
    pub stay_max: Duration,
    /// Size of the pool of shared names churn clients subscribe to.
    pub topics: usize,
    /// Churn clients alive or connecting at most (a tick finding none free
    /// is skipped and counted).
    pub max_in_flight: usize,
    pub connect_timeout: Duration,
    pub stream_rate: f64,
    pub stream_size: usize,
    /// Stream publisher's and subscriber's node (indexes).
    pub pub_node: usize,
    pub sub_node: usize,
    /// Background measured with the stream running, before the churn.
    pub idle_window: Duration,
    pub poll: Duration,
    /// Registry names (what the routing path uses: local and remote routes)
    /// must be back to the pre-churn baseline this long after the last churn
    /// client left...
    pub stale_after: Duration,
    /// ...and if they are not, how much longer to watch (reported).
    pub stale_grace: Duration,
    /// Interest entries (the table's memory, withdrawn names' tombstones
    /// included) must be back to the baseline within this long of the last
    /// leave: the nodes keep a tombstone 30 s, then forget it.
    pub memory_after: Duration,
    pub seed: u64,
    pub run_id: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChurnClients {
    pub started: u64,
    /// Connected, subscribed, left.
    pub completed: u64,
    pub connect_failures: u64,
    pub subscribe_failures: u64,
    /// Ticks skipped because `max_in_flight` clients were busy.
    pub skipped: u64,
    /// Connects per second actually started.
    pub achieved_rate: f64,
    pub connect_p50_ms: f64,
    pub connect_p99_ms: f64,
    pub connect_max_ms: f64,
    /// Churn duration until the last client left.
    pub window_s: f64,
}

/// Counter deltas over the whole run (stream start → end), fleet-wide.
#[derive(Debug, Clone, Serialize)]
pub struct LinkHealth {
    /// `slim_link_down_total` (links that ended on an error).
    pub link_down: f64,
    /// `slim_link_drops_total{reason="control_overflow"}` (link reset and resync).
    pub control_overflow: f64,
    /// `slim_link_drops_total{reason="queue_full"}`.
    pub link_queue_full: f64,
    /// `slim_link_reconnects_total`.
    pub link_reconnects: f64,
    pub interest_refused: f64,
    pub dropped_no_route: f64,
    /// Live link ends before and after (each link counted at both nodes).
    pub peer_link_ends_before: f64,
    pub peer_link_ends_after: f64,
}

/// Whether nodes still know departed churn clients.
#[derive(Debug, Clone, Serialize)]
pub struct Stale {
    pub check_after_s: f64,
    /// Every node's registry names (routes) back to the pre-churn baseline
    /// within `check_after_s` of the last leave.
    pub clean: bool,
    /// When they were (seconds after the last leave), if within
    /// `check_after_s` + grace.
    pub clean_after_s: Option<f64>,
    /// At `check_after_s`: sums over nodes of (value − baseline).
    pub interest_entries_above_baseline: f64,
    pub registry_names_above_baseline: f64,
    /// Interest entries (tombstones included) back to the baseline within
    /// `memory_check_after_s`: when (seconds after the last leave), and how
    /// many were left above it at the end of that check.
    pub memory_check_after_s: f64,
    pub memory_clean_after_s: Option<f64>,
    pub interest_entries_above_baseline_at_memory_check: f64,
    /// Nodes not back to baseline at `check_after_s`: (node, entries Δ, names Δ).
    pub nodes_not_clean: Vec<(String, f64, f64)>,
    /// Churn names the controller's route list still shows (a few nodes;
    /// empty without slimctl).
    pub stale_routes: Vec<(String, Vec<String>)>,
    /// From the last leave to the end of the check: fleet-wide link bytes/s
    /// and node CPU-s/s (with the stream; compare with `idle`): still
    /// working through a backlog, or idle with the stale state.
    pub after_link_bytes_per_s: f64,
    pub after_cpu_per_s: f64,
    pub after_window_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    /// VmRSS per node with the stream running, before the churn.
    pub rss_idle_max_kib: u64,
    pub rss_idle_sum_kib: u64,
    /// After the stale check.
    pub rss_after_max_kib: u64,
    pub rss_after_sum_kib: u64,
    /// Largest single-node VmRSS seen during and after the churn (1 s samples).
    pub rss_peak_max_kib: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimelinePoint {
    /// Seconds since the churn started.
    pub t: f64,
    /// "churn", or "after" (the last churn client has left).
    pub phase: &'static str,
    pub link_bytes_per_s: f64,
    pub cpu_per_s: f64,
    pub interest_entries: f64,
    pub registry_names: f64,
    pub clients: f64,
    /// Live link ends (each link counted at both nodes).
    pub link_ends_up: f64,
    /// Since the churn started, fleet-wide.
    pub link_down: f64,
    pub control_overflow: f64,
    pub rss_max_kib: u64,
}

/// Fleet readings about once a second through the churn and after it.
struct Timeline {
    t0: Instant,
    first: Sample,
    prev: Sample,
    points: Vec<TimelinePoint>,
    rss_peak: u64,
}

impl Timeline {
    fn new(t0: Instant, first: Sample) -> Self {
        Timeline {
            t0,
            rss_peak: first.rss_max_kib(),
            prev: first.clone(),
            first,
            points: Vec::new(),
        }
    }

    /// Records `s` if a second has passed since the last point.
    fn offer(&mut self, s: &Sample, phase: &'static str, started: u64) {
        self.rss_peak = self.rss_peak.max(s.rss_max_kib());
        let dt = (s.at - self.prev.at).as_secs_f64();
        if dt < 0.95 {
            return;
        }
        let p = TimelinePoint {
            t: (s.at - self.t0).as_secs_f64(),
            phase,
            link_bytes_per_s: (s.bytes() - self.prev.bytes()) / dt,
            cpu_per_s: (s.cpu() - self.prev.cpu()) / dt,
            interest_entries: s.entries(),
            registry_names: s.sum(|n| n.registry_names),
            clients: s.sum(|n| n.clients),
            link_ends_up: s.sum(|n| n.peer_links),
            link_down: s.sum(|n| n.link_down) - self.first.sum(|n| n.link_down),
            control_overflow: s.sum(|n| n.control_overflow)
                - self.first.sum(|n| n.control_overflow),
            rss_max_kib: s.rss_max_kib(),
        };
        eprintln!(
            "  t={:5.1}s {phase:5} clients started {started:5}  link {:9.1} kB/s  CPU {:5.2}/s  \
             entries {:7.0}  names {:6.0}  link ends {:4.0}  down {:4.0}  overflow {:7.0}",
            p.t,
            p.link_bytes_per_s / 1e3,
            p.cpu_per_s,
            p.interest_entries,
            p.registry_names,
            p.link_ends_up,
            p.link_down,
            p.control_overflow,
        );
        self.points.push(p);
        self.prev = s.clone();
    }
}

/// Polls until every node's interest entries and names are back to
/// `baseline` or `deadline`, feeding the timeline.
async fn wait_clean(
    cluster: &Cluster,
    baseline: &Sample,
    deadline: Instant,
    poll: Duration,
    tl: &mut Timeline,
    started: u64,
    entries_too: bool,
) -> Result<(Option<Instant>, Sample)> {
    loop {
        let s = probe::sample(cluster).await?;
        tl.offer(&s, "after", started);
        let clean = s.nodes.iter().zip(&baseline.nodes).all(|(a, b)| {
            a.registry_names == b.registry_names
                && (!entries_too || a.interest_entries == b.interest_entries)
        });
        if clean {
            return Ok((Some(s.at), s));
        }
        if Instant::now() >= deadline {
            return Ok((None, s));
        }
        tokio::time::sleep(poll).await;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ChurnReport {
    pub clients: ChurnClients,
    pub stream: StreamReport,
    /// The background with the stream running.
    pub idle: Idle,
    /// Fleet-wide link bytes/s and node CPU-s/s during the churn, net of idle.
    pub churn_bytes_per_s: f64,
    pub churn_cpu_per_s: f64,
    /// The same per connect+leave.
    pub bytes_per_event: f64,
    pub cpu_per_event: f64,
    pub links: LinkHealth,
    pub stale: Stale,
    pub memory: Memory,
    pub timeline: Vec<TimelinePoint>,
}

#[derive(Default)]
struct Stats {
    started: AtomicU64,
    completed: AtomicU64,
    connect_failures: AtomicU64,
    subscribe_failures: AtomicU64,
    skipped: AtomicU64,
    connect_us: Mutex<Option<Histogram<u64>>>,
}

struct ClientJob {
    node: SocketAddr,
    name: Name,
    identity: Identity,
    topics: Vec<Name>,
    stay: Duration,
    connect_timeout: Duration,
}

async fn one_client(job: ClientJob, stats: Arc<Stats>) {
    let t0 = Instant::now();
    let cfg = ClientConfig::new(job.node, job.name, job.identity);
    let c = match tokio::time::timeout(job.connect_timeout, Client::connect(cfg)).await {
        Ok(Ok(c)) => c,
        _ => {
            stats.connect_failures.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let us = t0.elapsed().as_micros() as u64;
    if let Some(h) = stats.connect_us.lock().expect("lock").as_mut() {
        let _ = h.record(us.max(1));
    }
    let mut ok = true;
    for t in &job.topics {
        if c.subscribe(t).await.is_err() {
            ok = false;
        }
    }
    if !ok {
        stats.subscribe_failures.fetch_add(1, Ordering::Relaxed);
    }
    tokio::time::sleep(job.stay).await;
    c.close().await;
    if ok {
        stats.completed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Starts clients at the plan's rate for its duration, then waits for
/// every one of them to leave.
async fn dispatch(plan: ChurnPlan, nodes: Vec<SocketAddr>, ids: Vec<Identity>, stats: Arc<Stats>) {
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let sem = Arc::new(Semaphore::new(plan.max_in_flight.max(1)));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / plan.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + plan.duration;
    let mut tasks = JoinSet::new();
    let mut i = 0u64;
    loop {
        tick.tick().await;
        if Instant::now() >= end {
            break;
        }
        let Ok(permit) = Arc::clone(&sem).try_acquire_owned() else {
            stats.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        i += 1;
        stats.started.fetch_add(1, Ordering::Relaxed);
        let k = rng.random_range(1..=2usize).min(plan.topics.max(1));
        let mut topics = Vec::with_capacity(k);
        while topics.len() < k {
            let j = rng.random_range(0..plan.topics.max(1));
            let t = Name::new("loadtest", "churn", &format!("topic-{j}"), None).expect("valid");
            if !topics.contains(&t) {
                topics.push(t);
            }
        }
        let job = ClientJob {
            node: nodes[rng.random_range(0..nodes.len())],
            name: Name::new(
                "loadtest",
                "churn",
                "agent",
                Some(&format!("{}-{i}", plan.run_id)),
            )
            .expect("valid"),
            identity: ids[i as usize % ids.len()].clone(),
            topics,
            stay: Duration::from_millis(rng.random_range(0..=plan.stay_max.as_millis() as u64)),
            connect_timeout: plan.connect_timeout,
        };
        let stats = Arc::clone(&stats);
        tasks.spawn(async move {
            let _permit = permit;
            one_client(job, stats).await;
        });
        // Reap finished tasks as we go.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// Per node (node, interest entries Δ, names Δ) over the baseline.
type NotClean = Vec<(String, f64, f64)>;

/// Sums over nodes of entries and names above `b`, the nodes that are, and their indexes.
fn above(a: &Sample, b: &Sample) -> (f64, f64, NotClean, Vec<usize>) {
    let mut e = 0.0;
    let mut n = 0.0;
    let mut not_clean = Vec::new();
    let mut idx = Vec::new();
    for (i, (x, y)) in a.nodes.iter().zip(&b.nodes).enumerate() {
        let de = x.interest_entries - y.interest_entries;
        let dn = x.registry_names - y.registry_names;
        e += de;
        n += dn;
        if de != 0.0 || dn != 0.0 {
            not_clean.push((super::cluster::node_id(i), de, dn));
            idx.push(i);
        }
    }
    (e, n, not_clean, idx)
}

pub async fn run(
    cluster: &mut Cluster,
    plan: &ChurnPlan,
    stream_ids: (Identity, Identity),
    churn_ids: Vec<Identity>,
) -> Result<ChurnReport> {
    let n = cluster.nodes.len();
    let start = probe::sample(cluster).await?;

    // The cross-node stream, then the background with it running.
    let topic = Name::new("loadtest", "stream", "topic", None)?;
    let mut stream = Stream::connect(
        StreamPlan {
            pub_node: cluster.nodes[plan.pub_node % n].addr,
            sub_node: cluster.nodes[plan.sub_node % n].addr,
            rate: plan.stream_rate,
            size: plan.stream_size,
            topic,
            run_id: plan.run_id.clone(),
        },
        stream_ids.0,
        stream_ids.1,
        Duration::from_secs(30),
    )
    .await?;
    stream.start();
    // Let the stream's route settle before measuring the background.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = probe::idle(cluster, plan.idle_window, plan.poll).await?;
    eprintln!(
        "  background with the stream: {:.1} kB/s link bytes, {:.3} CPU-s/s",
        idle.bytes_per_s / 1e3,
        idle.cpu_per_s
    );
    let baseline = probe::sample(cluster).await?;

    // Churn.
    let stats = Arc::new(Stats {
        connect_us: Mutex::new(Some(Histogram::new_with_bounds(1, 600_000_000, 3)?)),
        ..Default::default()
    });
    let nodes: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.addr).collect();
    let t_churn = Instant::now();
    let mut dispatcher = tokio::spawn(dispatch(plan.clone(), nodes, churn_ids, Arc::clone(&stats)));
    let mut tl = Timeline::new(t_churn, baseline.clone());
    let mut sample_tick = tokio::time::interval(Duration::from_secs(1));
    sample_tick.tick().await;
    // The dispatcher stops starting clients after `duration`; leaves can
    // hang on an overloaded node, so bound the wait.
    let hard_end = t_churn + plan.duration + plan.stay_max + plan.connect_timeout * 2;
    loop {
        tokio::select! {
            r = &mut dispatcher => {
                r.context("churn dispatcher panicked")?;
                break;
            }
            _ = sample_tick.tick() => {
                cluster.check_alive()?;
                let s = probe::sample(cluster).await?;
                tl.offer(&s, "churn", stats.started.load(Ordering::Relaxed));
                if Instant::now() > hard_end {
                    dispatcher.abort();
                    eprintln!("  churn clients did not all leave in time; stopped waiting");
                    break;
                }
            }
        }
    }
    let t_stop = Instant::now();
    let at_stop = probe::sample(cluster).await?;

    // Stale check.
    let deadline = t_stop + plan.stale_after;
    let started = stats.started.load(Ordering::Relaxed);
    let (clean_at, at_check) = wait_clean(
        cluster, &baseline, deadline, plan.poll, &mut tl, started, false,
    )
    .await?;
    let (entries_above, names_above, not_clean, idx) = above(&at_check, &baseline);
    let mut clean_after_s = clean_at.map(|t| (t - t_stop).as_secs_f64());
    let mut stale_routes = Vec::new();
    if clean_at.is_none() {
        for &i in idx.iter().take(3) {
            let id = cluster.nodes[i].id.clone();
            match cluster.routes_via_controller(&id).await {
                Ok(Some(rows)) => {
                    let names: Vec<String> = rows
                        .into_iter()
                        .filter(|r: &RouteRow| r.name.starts_with("loadtest/churn/"))
                        .map(|r| format!("{} (remote: {})", r.name, r.remote_peers.join(",")))
                        .take(20)
                        .collect();
                    stale_routes.push((id, names));
                }
                Ok(None) => break,
                Err(e) => stale_routes.push((id, vec![format!("slimctl: {e:#}")])),
            }
        }
        let (later, _) = wait_clean(
            cluster,
            &baseline,
            Instant::now() + plan.stale_grace,
            plan.poll,
            &mut tl,
            started,
            false,
        )
        .await?;
        clean_after_s = later.map(|t| (t - t_stop).as_secs_f64());
    }
    // Memory: the interest tables forget tombstones on their own timer.
    let (memory_at, at_memory) = wait_clean(
        cluster,
        &baseline,
        t_stop + plan.memory_after,
        plan.poll,
        &mut tl,
        started,
        true,
    )
    .await?;
    let (entries_left, _, _, _) = above(&at_memory, &baseline);
    let end = probe::sample(cluster).await?;
    let after_dt = (end.at - at_stop.at).as_secs_f64();
    let stream_report = stream.finish(Duration::from_secs(5)).await?;
    let end_links = probe::sample(cluster).await?;

    let churn_dt = at_stop.at - baseline.at;
    let (bytes, cpu) = idle.net(
        at_stop.bytes() - baseline.bytes(),
        at_stop.cpu() - baseline.cpu(),
        churn_dt,
    );
    let completed = stats.completed.load(Ordering::Relaxed);
    let events = completed.max(1) as f64;
    let h = stats
        .connect_us
        .lock()
        .expect("lock")
        .take()
        .expect("histogram");
    let ms = |q: f64| {
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(q) as f64 / 1000.0
        }
    };
    let d = |f: fn(&probe::NodeReading) -> f64| end_links.sum(f) - start.sum(f);
    Ok(ChurnReport {
        clients: ChurnClients {
            started,
            completed,
            connect_failures: stats.connect_failures.load(Ordering::Relaxed),
            subscribe_failures: stats.subscribe_failures.load(Ordering::Relaxed),
            skipped: stats.skipped.load(Ordering::Relaxed),
            achieved_rate: started as f64 / plan.duration.as_secs_f64(),
            connect_p50_ms: ms(0.5),
            connect_p99_ms: ms(0.99),
            connect_max_ms: if h.is_empty() {
                0.0
            } else {
                h.max() as f64 / 1000.0
            },
            window_s: (t_stop - t_churn).as_secs_f64(),
        },
        stream: stream_report,
        churn_bytes_per_s: bytes / churn_dt.as_secs_f64(),
        churn_cpu_per_s: cpu / churn_dt.as_secs_f64(),
        bytes_per_event: bytes / events,
        cpu_per_event: cpu / events,
        idle,
        links: LinkHealth {
            link_down: d(|n| n.link_down),
            control_overflow: d(|n| n.control_overflow),
            link_queue_full: d(|n| n.link_queue_full),
            link_reconnects: d(|n| n.link_reconnects),
            interest_refused: d(|n| n.interest_refused),
            dropped_no_route: d(|n| n.dropped_no_route),
            peer_link_ends_before: start.sum(|n| n.peer_links),
            peer_link_ends_after: end_links.sum(|n| n.peer_links),
        },
        stale: Stale {
            check_after_s: plan.stale_after.as_secs_f64(),
            clean: clean_at.is_some(),
            clean_after_s,
            memory_check_after_s: plan.memory_after.as_secs_f64(),
            memory_clean_after_s: memory_at.map(|t| (t - t_stop).as_secs_f64()),
            interest_entries_above_baseline_at_memory_check: entries_left,
            interest_entries_above_baseline: entries_above,
            registry_names_above_baseline: names_above,
            nodes_not_clean: not_clean,
            stale_routes,
            after_link_bytes_per_s: (end.bytes() - at_stop.bytes()) / after_dt,
            after_cpu_per_s: (end.cpu() - at_stop.cpu()) / after_dt,
            after_window_s: after_dt,
        },
        memory: Memory {
            rss_idle_max_kib: baseline.rss_max_kib(),
            rss_idle_sum_kib: baseline.rss_sum_kib(),
            rss_after_max_kib: end.rss_max_kib(),
            rss_after_sum_kib: end.rss_sum_kib(),
            rss_peak_max_kib: tl.rss_peak,
        },
        timeline: tl.points,
    })
}
