//! Fleet-wide readings: every node's Prometheus counters and gauges that say
//! what the interest protocol and the links are doing, and every node
//! process's CPU time and memory from `/proc`; the idle background, and
//! waiting until the fleet is quiet again.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::future::try_join_all;
use serde::Serialize;

use super::cluster::Cluster;
use crate::procstat::CpuProbe;
use crate::serverstats;

/// One node's reading.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeReading {
    /// `slim_link_bytes_total{direction="in"}`: every byte read from peer
    /// links, control (interest, ping/pong) and data streams alike.
    pub link_bytes_in: f64,
    /// `slim_link_bytes_total{direction="out"}`: the data streams only (the
    /// node does not count what it writes on control streams).
    pub link_bytes_out: f64,
    /// `slim_link_down_total`, all reasons.
    pub link_down: f64,
    /// `slim_link_drops_total{reason="control_overflow"}`.
    pub control_overflow: f64,
    /// `slim_link_drops_total{reason="queue_full"}`.
    pub link_queue_full: f64,
    /// `slim_link_reconnects_total`.
    pub link_reconnects: f64,
    /// `slim_connections_open{kind="peer"}`: live links.
    pub peer_links: f64,
    /// `slim_connections_open{kind="client"}`.
    pub clients: f64,
    /// `slim_interest_entries`: learned (name, origin, peer) routes.
    pub interest_entries: f64,
    /// `slim_registry_names`: names with a subscriber (local or remote).
    pub registry_names: f64,
    /// `slim_subscriptions`.
    pub subscriptions: f64,
    /// `slim_interest_refused_total`, all reasons.
    pub interest_refused: f64,
    /// `slim_messages_dropped_total{reason="no_route"}`.
    pub dropped_no_route: f64,
    /// utime + stime of the process, seconds.
    pub cpu_s: f64,
    /// VmRSS, KiB.
    pub rss_kib: u64,
}

/// Every node at one moment (read concurrently; takes a few ms).
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub nodes: Vec<NodeReading>,
}

/// Sum of every series of metric `name` (any labels).
fn sum_metric(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| {
            k.as_str() == name
                || (k.starts_with(name) && k.as_bytes().get(name.len()) == Some(&b'{'))
        })
        .map(|(_, v)| *v)
        .sum()
}

fn one(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

pub(crate) fn reading(m: &BTreeMap<String, f64>, cpu_s: f64, rss_kib: u64) -> NodeReading {
    NodeReading {
        link_bytes_in: one(m, "slim_link_bytes_total{direction=\"in\"}"),
        link_bytes_out: one(m, "slim_link_bytes_total{direction=\"out\"}"),
        link_down: sum_metric(m, "slim_link_down_total"),
        control_overflow: one(m, "slim_link_drops_total{reason=\"control_overflow\"}"),
        link_queue_full: one(m, "slim_link_drops_total{reason=\"queue_full\"}"),
        link_reconnects: sum_metric(m, "slim_link_reconnects_total"),
        peer_links: one(m, "slim_connections_open{kind=\"peer\"}"),
        clients: one(m, "slim_connections_open{kind=\"client\"}"),
        interest_entries: one(m, "slim_interest_entries"),
        registry_names: one(m, "slim_registry_names"),
        subscriptions: one(m, "slim_subscriptions"),
        interest_refused: sum_metric(m, "slim_interest_refused_total"),
        dropped_no_route: one(m, "slim_messages_dropped_total{reason=\"no_route\"}"),
        cpu_s,
        rss_kib,
    }
}

/// Reads every node.
pub async fn sample(cluster: &Cluster) -> Result<Sample> {
    let reads = cluster.nodes.iter().map(|n| async move {
        let m = serverstats::scrape(n.metrics)
            .await
            .with_context(|| format!("{} metrics", n.id))?;
        let p = CpuProbe::Pid(n.pid);
        let cpu = p.cpu_seconds().with_context(|| format!("{} CPU", n.id))?;
        let rss = p.rss_kib().unwrap_or(0);
        anyhow::Ok(reading(&m, cpu, rss))
    });
    let nodes = try_join_all(reads).await?;
    Ok(Sample {
        at: Instant::now(),
        nodes,
    })
}

impl Sample {
    pub fn sum(&self, f: impl Fn(&NodeReading) -> f64) -> f64 {
        self.nodes.iter().map(f).sum()
    }

    /// Fleet-wide link bytes (read side: control + data streams).
    pub fn bytes(&self) -> f64 {
        self.sum(|n| n.link_bytes_in)
    }

    pub fn cpu(&self) -> f64 {
        self.sum(|n| n.cpu_s)
    }

    pub fn entries(&self) -> f64 {
        self.sum(|n| n.interest_entries)
    }

    pub fn rss_max_kib(&self) -> u64 {
        self.nodes.iter().map(|n| n.rss_kib).max().unwrap_or(0)
    }

    pub fn rss_sum_kib(&self) -> u64 {
        self.nodes.iter().map(|n| n.rss_kib).sum()
    }
}

/// The fleet's background: what it costs with nothing happening (link
/// keep-alives, controller reports, these very scrapes).
#[derive(Debug, Clone, Serialize)]
pub struct Idle {
    pub window_s: f64,
    /// Fleet-wide link bytes per second.
    pub bytes_per_s: f64,
    /// Fleet-wide node CPU seconds per second.
    pub cpu_per_s: f64,
    /// The largest growth of fleet-wide link bytes between two polls.
    pub max_bytes_per_poll: f64,
    pub poll_ms: u64,
}

impl Idle {
    /// Link bytes a quiet fleet may add in `dt` (keep-alives are bursty:
    /// the largest idle step, with margin, or twice the mean rate).
    pub fn allowance(&self, dt: Duration) -> f64 {
        let by_rate = 2.0 * self.bytes_per_s * dt.as_secs_f64();
        let by_step = 1.5
            * self.max_bytes_per_poll
            * (dt.as_secs_f64() / (self.poll_ms as f64 / 1000.0)).max(1.0);
        by_rate.max(by_step) + 512.0
    }

    /// `bytes` and `cpu` measured over `dt`, minus the background.
    pub fn net(&self, bytes: f64, cpu: f64, dt: Duration) -> (f64, f64) {
        let s = dt.as_secs_f64();
        (bytes - self.bytes_per_s * s, cpu - self.cpu_per_s * s)
    }
}

/// Measures the background over `window`, polling every `poll`.
pub async fn idle(cluster: &Cluster, window: Duration, poll: Duration) -> Result<Idle> {
    let first = sample(cluster).await?;
    let mut prev = first.clone();
    let mut max_step: f64 = 0.0;
    let end = first.at + window;
    let last = loop {
        tokio::time::sleep(poll).await;
        let s = sample(cluster).await?;
        max_step = max_step.max(s.bytes() - prev.bytes());
        let done = s.at >= end;
        prev = s;
        if done {
            break prev;
        }
    };
    let dt = (last.at - first.at).as_secs_f64();
    Ok(Idle {
        window_s: dt,
        bytes_per_s: (last.bytes() - first.bytes()) / dt,
        cpu_per_s: (last.cpu() - first.cpu()) / dt,
        max_bytes_per_poll: max_step,
        poll_ms: poll.as_millis() as u64,
    })
}

/// The fleet went quiet.
#[derive(Debug, Clone)]
pub struct Quiet {
    /// The first reading of the quiet stretch (activity ended between the
    /// reading before it and this one).
    pub settled_at: Instant,
    /// The reading that confirmed it (`quiet_for` later).
    pub last: Sample,
}

/// Polls until, for `quiet_for`, link bytes grew no faster than the idle
/// background and no node's interest entries changed; bails after `max`.
pub async fn wait_quiet(
    cluster: &Cluster,
    idle: &Idle,
    since: Instant,
    quiet_for: Duration,
    poll: Duration,
    max: Duration,
) -> Result<Quiet> {
    let mut prev = sample(cluster).await?;
    let mut settled_at = prev.at;
    // (time, bytes) of the quiet stretch so far, for the rate check.
    let mut window: VecDeque<(Instant, f64)> = VecDeque::from([(prev.at, prev.bytes())]);
    loop {
        tokio::time::sleep(poll).await;
        let s = sample(cluster).await?;
        let step_ok = s.bytes() - prev.bytes() <= idle.allowance(s.at - prev.at);
        let entries_same = s
            .nodes
            .iter()
            .zip(&prev.nodes)
            .all(|(a, b)| a.interest_entries == b.interest_entries);
        if step_ok && entries_same {
            window.push_back((s.at, s.bytes()));
            let (t0, b0) = window[0];
            let rate_ok = s.bytes() - b0 <= idle.allowance(s.at - t0);
            if !rate_ok {
                // Slow but steady growth: still busy.
                window.clear();
                window.push_back((s.at, s.bytes()));
                settled_at = s.at;
            }
        } else {
            window.clear();
            window.push_back((s.at, s.bytes()));
            settled_at = s.at;
        }
        prev = s;
        if prev.at - settled_at >= quiet_for {
            return Ok(Quiet {
                settled_at,
                last: prev,
            });
        }
        if since.elapsed() > max {
            bail!(
                "the fleet did not settle within {max:?} (link bytes still growing or \
                 interest entries changing)"
            );
        }
    }
}

/// Polls until every node's interest entries and registry names are back
/// to `baseline` (per node) or `deadline`; returns when they were (None:
/// never) and the last reading.
pub async fn wait_baseline(
    cluster: &Cluster,
    baseline: &Sample,
    deadline: Instant,
    poll: Duration,
) -> Result<(Option<Instant>, Sample)> {
    loop {
        let s = sample(cluster).await?;
        // Routes: registry names. Interest entries are not compared: a
        // withdrawn name's tombstone stays 30 s by design (the churn mode
        // checks that they go).
        let clean = s
            .nodes
            .iter()
            .zip(&baseline.nodes)
            .all(|(a, b)| a.registry_names == b.registry_names);
        if clean {
            return Ok((Some(s.at), s));
        }
        if Instant::now() >= deadline {
            return Ok((None, s));
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_labelled_series() {
        let m: BTreeMap<String, f64> = [
            ("slim_link_down_total{reason=\"liveness\"}", 2.0),
            ("slim_link_down_total{reason=\"lost\"}", 3.0),
            ("slim_link_down_totally", 100.0),
            ("slim_link_bytes_total{direction=\"in\"}", 10.0),
            ("slim_link_drops_total{reason=\"control_overflow\"}", 1.0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let r = reading(&m, 1.5, 42);
        assert_eq!(r.link_down, 5.0);
        assert_eq!(r.link_bytes_in, 10.0);
        assert_eq!(r.control_overflow, 1.0);
        assert_eq!(r.interest_entries, 0.0);
        assert_eq!((r.cpu_s, r.rss_kib), (1.5, 42));
    }

    #[test]
    fn allowance_covers_a_keepalive_burst() {
        let i = Idle {
            window_s: 5.0,
            bytes_per_s: 1000.0,
            cpu_per_s: 0.01,
            max_bytes_per_poll: 400.0,
            poll_ms: 200,
        };
        // One poll: the largest idle step with margin.
        assert!(i.allowance(Duration::from_millis(200)) >= 600.0);
        // A second: twice the rate or five steps, whichever is more.
        assert!(i.allowance(Duration::from_secs(1)) >= 3000.0);
        let (b, c) = i.net(5000.0, 0.5, Duration::from_secs(2));
        assert_eq!(b, 3000.0);
        assert!((c - 0.48).abs() < 1e-9);
    }
}
