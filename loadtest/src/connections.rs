//! `connections`: many idle clients.
//!
//! Opens N connections as fast as it can with at most C handshakes in flight
//! (SLIM: each client its own X.509-SVID, QUIC endpoint and mTLS handshake;
//! NATS: each its own TCP + TLS connection with the client certificate), and
//! reports the connect rate and latency. With `--node-pid` it also reads the
//! server's resident set size (VmRSS) before and after, each time after a
//! settle pause, and reports the growth per idle connection; then subscribes
//! every connection to K distinct names and reports the growth per
//! subscription.
//!
//! RSS deltas are only meaningful on a freshly started server: memory freed
//! by earlier runs stays in the allocator and is reused without growing the
//! RSS. `compare.sh` restarts both servers before this scenario.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::backend::{Backend, Conn, Topic};
use crate::procstat::CpuProbe;
use crate::serverstats;

#[derive(Debug, Clone)]
pub struct ConnPlan {
    pub conns: usize,
    pub subs_per_conn: usize,
    pub concurrency: usize,
    pub settle: Duration,
    /// `org/namespace` of the subscribed names.
    pub prefix: String,
    pub run_id: String,
}

impl ConnPlan {
    pub fn scenario(&self) -> String {
        format!("connections {} x {} subs", self.conns, self.subs_per_conn)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectionsReport {
    /// Always "connections".
    pub kind: &'static str,
    pub system: String,
    pub target: String,
    pub scenario: String,
    pub conns: usize,
    pub subs_per_conn: usize,
    pub concurrency: usize,
    pub settle_s: f64,
    /// Preparing the clients (SLIM: issuing one SVID each); not timed in
    /// the connect rate.
    pub prepare_s: f64,
    pub connected: usize,
    pub connect_failures: usize,
    pub connect_s: f64,
    pub connect_per_s: f64,
    pub connect_p50_ms: f64,
    pub connect_p99_ms: f64,
    pub connect_max_ms: f64,
    pub subscriptions: usize,
    pub subscribe_failures: usize,
    pub subscribe_s: f64,
    pub subscribe_per_s: f64,
    /// Server VmRSS before connecting, after connecting, after subscribing.
    pub rss_before_kib: Option<u64>,
    pub rss_conns_kib: Option<u64>,
    pub rss_subs_kib: Option<u64>,
    pub rss_per_conn_kib: Option<f64>,
    pub rss_per_sub_bytes: Option<f64>,
    /// Client connections the server reported once all were connected
    /// (needs --stats-addr).
    pub server_connections: Option<u64>,
    /// ... and 0.5 s after closing them all.
    pub server_connections_after_close: Option<u64>,
    pub close_s: f64,
    /// Connect latency distribution: [quantile, milliseconds].
    pub percentiles: Vec<[f64; 2]>,
    pub counters: BTreeMap<String, u64>,
    pub notes: Vec<String>,
}

async fn rss(probe: &Option<CpuProbe>, settle: Duration) -> Option<u64> {
    let p = probe.as_ref()?;
    tokio::time::sleep(settle).await;
    p.rss_kib().ok()
}

pub async fn run(
    backend: &Backend,
    target: &str,
    plan: &ConnPlan,
    probe: Option<CpuProbe>,
    stats: Option<(serverstats::Kind, SocketAddr)>,
) -> Result<ConnectionsReport> {
    if plan.conns == 0 || plan.concurrency == 0 {
        bail!("--conns and --concurrency must be at least 1");
    }
    let mut notes = Vec::new();
    let t = Instant::now();
    let prepared = (0..plan.conns)
        .map(|i| backend.prepare("c", i))
        .collect::<Result<Vec<_>>>()?;
    let prepare_s = t.elapsed().as_secs_f64();

    let rss0 = rss(&probe, plan.settle).await;
    let udp_before = crate::procstat::udp_rcvbuf_errors().ok();
    if probe.is_none() {
        notes.push("no --node-pid: server memory not measured".into());
    }

    // Connect: each handshake in its own task (so that client-side TLS work
    // spreads over the runtime's threads), at most `concurrency` at once.
    let t = Instant::now();
    let results: Vec<(Duration, Result<Conn>)> =
        futures::stream::iter(prepared.into_iter().map(|p| {
            tokio::spawn(async move {
                let t = Instant::now();
                let r = p.connect().await;
                (t.elapsed(), r)
            })
        }))
        .buffer_unordered(plan.concurrency)
        .map(|r| r.unwrap_or_else(|e| (Duration::ZERO, Err(anyhow::anyhow!("task panicked: {e}")))))
        .collect()
        .await;
    let connect_s = t.elapsed().as_secs_f64();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3).context("histogram")?;
    let mut conns = Vec::with_capacity(results.len());
    let mut failures = 0;
    for (d, r) in results {
        match r {
            Ok(c) => {
                hist.saturating_record(d.as_nanos() as u64 + 1);
                conns.push(c);
            }
            Err(e) => {
                if failures == 0 {
                    notes.push(format!("first connect failure: {e:#}"));
                }
                failures += 1;
            }
        }
    }
    let connected = conns.len();
    let server_connections = match stats {
        Some((kind, addr)) => match serverstats::read(kind, addr).await {
            Ok(m) => m.get("client_connections").map(|v| *v as u64),
            Err(e) => {
                notes.push(format!("server statistics: {e:#}"));
                None
            }
        },
        None => None,
    };
    let rss1 = rss(&probe, plan.settle).await;

    // Subscribe every connection to K distinct names.
    let t = Instant::now();
    let k = plan.subs_per_conn;
    let prefix = plan.prefix.clone();
    let run_id = plan.run_id.clone();
    let results: Vec<(Conn, usize, Option<String>)> =
        futures::stream::iter(conns.into_iter().enumerate().map(|(i, mut c)| {
            let prefix = prefix.clone();
            let run_id = run_id.clone();
            tokio::spawn(async move {
                let mut fails = 0;
                let mut first = None;
                for j in 0..k {
                    let r = match Topic::new(&format!("{prefix}/c{i}k{j}-{run_id}")) {
                        Ok(topic) => c.subscribe(&topic).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = r {
                        fails += 1;
                        first.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
                if k > 0
                    && let Err(e) = c.sync().await
                {
                    fails += 1;
                    first.get_or_insert_with(|| format!("{e:#}"));
                }
                (c, fails, first)
            })
        }))
        .buffer_unordered(plan.concurrency)
        .filter_map(|r| async move { r.ok() })
        .collect()
        .await;
    let subscribe_s = t.elapsed().as_secs_f64();
    let mut sub_failures = 0;
    let mut conns = Vec::with_capacity(results.len());
    for (c, f, first) in results {
        if let Some(e) = first
            && sub_failures == 0
        {
            notes.push(format!("first subscribe failure: {e}"));
        }
        sub_failures += f;
        conns.push(c);
    }
    let subscriptions = (connected * k).saturating_sub(sub_failures);
    let rss2 = if k > 0 {
        rss(&probe, plan.settle).await
    } else {
        rss1
    };

    // Close with the same bound as connecting: a QUIC CONNECTION_CLOSE is
    // sent once and never retransmitted, so a burst of a thousand of them
    // can overflow the node's UDP receive buffer, and the connections it
    // missed linger until their idle timeout.
    let t = Instant::now();
    let closing = futures::stream::iter(conns.into_iter().map(|c| tokio::spawn(c.close())))
        .buffer_unordered(plan.concurrency)
        .collect::<Vec<_>>();
    if tokio::time::timeout(Duration::from_secs(60), closing)
        .await
        .is_err()
    {
        notes.push("closing the connections took more than 60 s".into());
    }
    let close_s = t.elapsed().as_secs_f64();
    let mut counters: BTreeMap<String, u64> = backend.counters().into_iter().collect();
    if backend.system() == "slim"
        && let (Some(a), Ok(b)) = (udp_before, crate::procstat::udp_rcvbuf_errors())
    {
        counters.insert("host_udp_rcvbuf_errors".into(), b.saturating_sub(a));
    }
    // Did the server notice every close?
    let mut server_connections_after_close = None;
    if let Some((kind, addr)) = stats {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Ok(m) = serverstats::read(kind, addr).await {
            let n = m.get("client_connections").map(|v| *v as u64).unwrap_or(0);
            server_connections_after_close = Some(n);
            if n > 0 {
                notes.push(format!(
                    "the server still counted {n} client connection(s) 0.5 s after all were closed \
                     (missed closes linger until the idle timeout)"
                ));
            }
        }
    }

    let delta = |a: Option<u64>, b: Option<u64>| a.zip(b).map(|(a, b)| b as f64 - a as f64);
    let ms = |ns: u64| ns as f64 / 1e6;
    let percentiles = crate::latency::curve(&hist)
        .into_iter()
        .map(|[q, us]| [q, us / 1e3])
        .collect();
    Ok(ConnectionsReport {
        kind: "connections",
        system: backend.system().into(),
        target: target.into(),
        scenario: plan.scenario(),
        conns: plan.conns,
        subs_per_conn: k,
        concurrency: plan.concurrency,
        settle_s: plan.settle.as_secs_f64(),
        prepare_s,
        connected,
        connect_failures: failures,
        connect_s,
        connect_per_s: connected as f64 / connect_s.max(1e-9),
        connect_p50_ms: ms(hist.value_at_quantile(0.5)),
        connect_p99_ms: ms(hist.value_at_quantile(0.99)),
        connect_max_ms: ms(hist.max()),
        subscriptions,
        subscribe_failures: sub_failures,
        subscribe_s,
        subscribe_per_s: subscriptions as f64 / subscribe_s.max(1e-9),
        rss_before_kib: rss0,
        rss_conns_kib: rss1,
        rss_subs_kib: rss2,
        rss_per_conn_kib: delta(rss0, rss1)
            .filter(|_| connected > 0)
            .map(|d| d / connected as f64),
        rss_per_sub_bytes: delta(rss1, rss2)
            .filter(|_| subscriptions > 0)
            .map(|d| d * 1024.0 / subscriptions as f64),
        server_connections,
        server_connections_after_close,
        close_s,
        percentiles,
        counters,
        notes,
    })
}

impl ConnectionsReport {
    pub fn one_line(&self) -> String {
        let opt = |x: Option<f64>, unit: &str| {
            x.map(|v| format!("{v:.1} {unit}"))
                .unwrap_or_else(|| "-".into())
        };
        format!(
            "{} {}: {:.0} conn/s (p99 {:.1} ms), {} per idle connection, {} per subscription",
            self.system,
            self.scenario,
            self.connect_per_s,
            self.connect_p99_ms,
            opt(self.rss_per_conn_kib, "KiB"),
            opt(self.rss_per_sub_bytes, "B"),
        )
    }

    pub fn table(&self) -> String {
        let kib = |x: Option<u64>| {
            x.map(|v| format!("{:.1} MiB", v as f64 / 1024.0))
                .unwrap_or_else(|| "-".into())
        };
        let mut rows: Vec<(String, String)> = vec![
            (
                "system".into(),
                format!("{} ({})", self.system, self.target),
            ),
            ("scenario".into(), self.scenario.clone()),
            (
                "connected".into(),
                format!(
                    "{} of {} ({} failed), {} handshakes in flight at most",
                    self.connected, self.conns, self.connect_failures, self.concurrency
                ),
            ),
            (
                "connect rate".into(),
                format!("{:.0} conn/s ({:.2} s)", self.connect_per_s, self.connect_s),
            ),
            (
                "connect latency".into(),
                format!(
                    "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                    self.connect_p50_ms, self.connect_p99_ms, self.connect_max_ms
                ),
            ),
            (
                "subscriptions".into(),
                format!(
                    "{} ({} failed) at {:.0}/s",
                    self.subscriptions, self.subscribe_failures, self.subscribe_per_s
                ),
            ),
            (
                "server RSS".into(),
                format!(
                    "{} before, {} idle-connected, {} subscribed (settle {:.1} s)",
                    kib(self.rss_before_kib),
                    kib(self.rss_conns_kib),
                    kib(self.rss_subs_kib),
                    self.settle_s
                ),
            ),
            (
                "RSS per idle conn".into(),
                self.rss_per_conn_kib
                    .map(|v| format!("{v:.1} KiB"))
                    .unwrap_or_else(|| "-".into()),
            ),
            (
                "RSS per subscription".into(),
                self.rss_per_sub_bytes
                    .map(|v| format!("{v:.0} B"))
                    .unwrap_or_else(|| "-".into()),
            ),
            (
                "prepare / close".into(),
                format!("{:.2} s / {:.2} s", self.prepare_s, self.close_s),
            ),
        ];
        if let Some(n) = self.server_connections {
            rows.push((
                "server connections".into(),
                format!(
                    "{n} when connected, {} after closing",
                    self.server_connections_after_close
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "-".into())
                ),
            ));
        }
        for (k, v) in &self.counters {
            rows.push((k.clone(), v.to_string()));
        }
        for n in &self.notes {
            rows.push(("note".into(), n.clone()));
        }
        crate::summary::rows_table(&rows)
    }
}
