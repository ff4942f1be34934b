//! `latency`: open-loop request/reply at a fixed rate.
//!
//! A responder connection subscribes to the request name and answers every
//! request with its payload; a requester connection sends request `i` at
//! `t0 + i / rate` from a dedicated thread, whatever happened to earlier
//! requests, and the latency of reply `i` is measured from that *scheduled*
//! time, not from when the send actually happened: if the system (or the
//! load generator) stalls, the requests that should have gone out meanwhile
//! are charged the stall, which avoids coordinated omission. How late the
//! sender itself was is reported separately (`send_lag_*`), so that its own
//! jitter can be told apart from the system's.
//!
//! The payload is the benchmark payload (`stream | seq | padding`), echoed
//! back, so a reply names the request it answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::watch;

use crate::backend::{Backend, Conn, Topic};
use crate::payload::{HEADER, PayloadWriter};
use crate::procstat::CpuProbe;
use crate::reqrep::{ReplySink, SeenSet, spawn_echo_responder, spawn_reply_reader};

#[derive(Debug, Clone)]
pub struct LatencyPlan {
    pub rate: f64,
    pub duration: Duration,
    pub warmup: Duration,
    pub timeout: Duration,
    pub size: usize,
    pub topic: Topic,
    /// The sender sleeps until this long before each send time, then
    /// busy-waits: `nanosleep` alone overshoots by 50-100 µs (timer slack),
    /// which would be charged to every request. (Yielding instead of
    /// spinning is worse: on a busy machine the yielded CPU goes to another
    /// process for a whole time slice.)
    pub spin: Duration,
}

impl LatencyPlan {
    pub fn scenario(&self) -> String {
        format!("rr {}/s {}B", fmt_rate(self.rate), self.size)
    }

    fn interval_ns(&self) -> f64 {
        1e9 / self.rate
    }

    fn count(&self, d: Duration) -> u64 {
        (d.as_secs_f64() * self.rate).round() as u64
    }
}

fn fmt_rate(r: f64) -> String {
    if r.fract() == 0.0 {
        format!("{r:.0}")
    } else {
        format!("{r}")
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    /// Always "latency".
    pub kind: &'static str,
    pub system: String,
    pub target: String,
    pub scenario: String,
    pub rate_per_s: f64,
    pub size_bytes: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub timeout_ms: f64,
    /// Requests sent, warm-up included.
    pub sent: u64,
    /// Requests in the measured window.
    pub measured: u64,
    /// Measured requests answered (at any time before collection ended).
    pub replies: u64,
    /// Measured requests not answered within `timeout_ms` of their
    /// scheduled send time (late replies included).
    pub timeouts: u64,
    /// Replies that arrived, but after `timeout_ms` (counted in `timeouts`,
    /// and in the percentiles).
    pub late_replies: u64,
    pub duplicate_replies: u64,
    pub malformed_replies: u64,
    pub node_errors: u64,
    /// Achieved send rate over the measured window.
    pub sent_per_s: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// How late the sender thread was against its schedule.
    pub send_lag_p50_us: f64,
    pub send_lag_p99_us: f64,
    pub send_lag_max_us: f64,
    /// Server CPU seconds (user + system) in the measured window, and the
    /// share of one core that is.
    pub server_cpu_s: Option<f64>,
    pub server_cpu_pct: Option<f64>,
    /// The load generator's own CPU (requester, responder and the sender
    /// thread's spinning), share of one core, in the measured window.
    pub loadgen_cpu_pct: Option<f64>,
    /// The latency distribution: [quantile, microseconds].
    pub percentiles: Vec<[f64; 2]>,
    pub counters: std::collections::BTreeMap<String, u64>,
    pub notes: Vec<String>,
}

/// What the reply reader accumulates.
struct Recorder {
    t0: Instant,
    interval_ns: f64,
    warm: u64,
    timeout_ns: u64,
    hist: Histogram<u64>,
    seen: SeenSet,
    replies: Arc<AtomicU64>,
    late: u64,
    dup: u64,
    malformed: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Recorder {
    fn scheduled(&self, seq: u64) -> Instant {
        self.t0 + Duration::from_nanos((seq as f64 * self.interval_ns) as u64)
    }
}

impl ReplySink for Recorder {
    fn node_error(&mut self, error: String) {
        self.errors += 1;
        self.first_error.get_or_insert(error);
    }

    fn reply(&mut self, payload: &[u8], now: Instant) {
        if payload.len() < HEADER {
            self.malformed += 1;
            return;
        }
        let seq = u64::from_le_bytes(payload[4..12].try_into().expect("8 bytes"));
        match self.seen.insert(seq) {
            None => {
                self.malformed += 1;
                return;
            }
            Some(false) => {
                self.dup += 1;
                return;
            }
            Some(true) => {}
        }
        if seq < self.warm {
            return;
        }
        let ns = now
            .saturating_duration_since(self.scheduled(seq))
            .as_nanos() as u64;
        if ns > self.timeout_ns {
            self.late += 1;
        }
        self.hist.saturating_record(ns.max(1));
        self.replies.fetch_add(1, Ordering::Relaxed);
    }
}

fn histogram() -> Result<Histogram<u64>> {
    // 1 ns .. 1 h, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).context("histogram")
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

/// The distribution as [q, µs] points, evenly spaced on log(1/(1-q)).
pub fn curve(h: &Histogram<u64>) -> Vec<[f64; 2]> {
    if h.is_empty() {
        return Vec::new();
    }
    let n = h.len() as f64;
    let top = n.log10();
    let mut out = Vec::new();
    let mut k = 0u32;
    loop {
        let e = f64::from(k) / 20.0;
        if e > top {
            break;
        }
        let q = 1.0 - 10f64.powf(-e);
        out.push([q, us(h.value_at_quantile(q))]);
        k += 1;
    }
    out.push([1.0, us(h.max())]);
    out
}

/// `rsp_backend`: where the responder connects (the requester's node, or
/// another one linked to it).
pub async fn run(
    backend: &Backend,
    rsp_backend: &Backend,
    target: &str,
    plan: &LatencyPlan,
    cpu: Option<CpuProbe>,
) -> Result<LatencyReport> {
    if !(plan.rate > 0.0 && plan.rate.is_finite()) {
        bail!("--rate must be positive");
    }
    let mut w = PayloadWriter::new(0, plan.size)?;
    let warm = plan.count(plan.warmup);
    let total = warm + plan.count(plan.duration);
    if total == warm {
        bail!("--duration × --rate is less than one request");
    }

    // Responder: echoes every request to whoever sent it.
    let mut rsp = rsp_backend.connect("rsp", 0).await.context("responder")?;
    rsp.subscribe(&plan.topic).await.context("responder")?;
    rsp.sync().await.context("responder")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let responder = spawn_echo_responder(rsp, stop_rx.clone());

    // Requester.
    let mut req = backend.connect("req", 0).await.context("requester")?;
    req.make_requester().await.context("requester")?;
    let tx = req.tx.clone();
    let rx = req.rx;
    let req_tx = req.tx;

    let replies = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now() + Duration::from_millis(50);
    let rec = Recorder {
        t0,
        interval_ns: plan.interval_ns(),
        warm,
        timeout_ns: plan.timeout.as_nanos() as u64,
        hist: histogram()?,
        seen: SeenSet::new(total),
        replies: Arc::clone(&replies),
        late: 0,
        dup: 0,
        malformed: 0,
        errors: 0,
        first_error: None,
    };
    let reader = spawn_reply_reader(rx, rec, stop_rx.clone());

    // The sender: its own OS thread, sleeping with nanosleep (and spinning
    // for the last `spin`) rather than on the runtime's millisecond timer
    // wheel, so that it can keep a sub-millisecond schedule.
    let topic = plan.topic.clone();
    let interval_ns = plan.interval_ns();
    let spin = plan.spin;
    let handle = tokio::runtime::Handle::current();
    let sender = tokio::task::spawn_blocking(move || -> Result<(Histogram<u64>, u64)> {
        let mut lag = histogram()?;
        let mut sent = 0;
        for seq in 0..total {
            let at = t0 + Duration::from_nanos((seq as f64 * interval_ns) as u64);
            let now = Instant::now();
            if at > now + spin {
                std::thread::sleep(at - now - spin);
            }
            let mut now = Instant::now();
            while now < at {
                std::hint::spin_loop();
                now = Instant::now();
            }
            if seq >= warm {
                lag.saturating_record(now.saturating_duration_since(at).as_nanos() as u64 + 1);
            }
            handle
                .block_on(tx.request(&topic, w.with_seq(seq)))
                .with_context(|| format!("request {seq}"))?;
            sent += 1;
        }
        Ok((lag, sent))
    });

    let udp_before = crate::procstat::udp_rcvbuf_errors().ok();
    let win_start = t0 + Duration::from_nanos((warm as f64 * interval_ns) as u64);
    tokio::time::sleep_until(win_start.into()).await;
    let cpu_a = cpu.as_ref().and_then(|p| p.cpu_seconds().ok());
    let self_a = CpuProbe::SelfProcess.cpu_seconds().ok();
    let (lag, sent) = sender.await.context("sender thread panicked")??;
    let win_end = Instant::now();
    let cpu_b = cpu.as_ref().and_then(|p| p.cpu_seconds().ok());
    let self_b = CpuProbe::SelfProcess.cpu_seconds().ok();

    // Collect until every measured request is answered or the last one has
    // timed out.
    let measured = total - warm;
    let deadline =
        t0 + Duration::from_nanos(((total - 1) as f64 * interval_ns) as u64) + plan.timeout;
    while replies.load(Ordering::Relaxed) < measured && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = stop_tx.send(true);
    let (rec, req_rx) = reader.await.context("reply reader panicked")?;
    let (rsp, answered, rsp_failed) = responder.await.context("responder panicked")?;
    let mut counters: std::collections::BTreeMap<String, u64> =
        backend.counters().into_iter().collect();
    counters.insert("responder_replies".into(), answered);
    if backend.system() == "slim"
        && let (Some(a), Ok(b)) = (udp_before, crate::procstat::udp_rcvbuf_errors())
    {
        counters.insert("host_udp_rcvbuf_errors".into(), b.saturating_sub(a));
    }
    counters.insert("responder_failures".into(), rsp_failed);
    let mut notes = Vec::new();
    if let Some(e) = &rec.first_error {
        notes.push(format!("first node error on the requester: {e}"));
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        rsp.close().await;
        Conn {
            tx: req_tx,
            rx: req_rx,
        }
        .close()
        .await;
    })
    .await;

    let h = &rec.hist;
    let got = h.len();
    let on_time = got - rec.late;
    let timeouts = measured.saturating_sub(on_time);
    if got < measured {
        notes.push(format!(
            "{} measured request(s) never answered: the percentiles are over the {got} that were",
            measured - got
        ));
    }
    let window = (win_end - win_start).as_secs_f64();
    let q = |q: f64| us(h.value_at_quantile(q));
    Ok(LatencyReport {
        kind: "latency",
        system: backend.system().into(),
        target: target.into(),
        scenario: plan.scenario(),
        rate_per_s: plan.rate,
        size_bytes: plan.size,
        warmup_s: plan.warmup.as_secs_f64(),
        duration_s: plan.duration.as_secs_f64(),
        timeout_ms: plan.timeout.as_secs_f64() * 1e3,
        sent,
        measured,
        replies: got,
        timeouts,
        late_replies: rec.late,
        duplicate_replies: rec.dup,
        malformed_replies: rec.malformed,
        node_errors: rec.errors,
        sent_per_s: if window > 0.0 {
            (sent - warm.min(sent)) as f64 / window
        } else {
            0.0
        },
        mean_us: h.mean() / 1e3,
        p50_us: q(0.5),
        p90_us: q(0.9),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: us(h.max()),
        send_lag_p50_us: us(lag.value_at_quantile(0.5)),
        send_lag_p99_us: us(lag.value_at_quantile(0.99)),
        send_lag_max_us: us(lag.max()),
        server_cpu_s: cpu_a.zip(cpu_b).map(|(a, b)| b - a),
        server_cpu_pct: cpu_a
            .zip(cpu_b)
            .map(|(a, b)| 100.0 * (b - a) / window.max(1e-9)),
        loadgen_cpu_pct: self_a
            .zip(self_b)
            .map(|(a, b)| 100.0 * (b - a) / window.max(1e-9)),
        percentiles: curve(h),
        counters,
        notes,
    })
}

impl LatencyReport {
    pub fn one_line(&self) -> String {
        format!(
            "{} {}: p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, max {:.1} µs, timeouts {}",
            self.system,
            self.scenario,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.timeouts
        )
    }

    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = vec![
            (
                "system".into(),
                format!("{} ({})", self.system, self.target),
            ),
            ("scenario".into(), self.scenario.clone()),
            (
                "schedule".into(),
                format!(
                    "{} req/s open loop, {:.1} s after {:.1} s warm-up, timeout {:.0} ms",
                    fmt_rate(self.rate_per_s),
                    self.duration_s,
                    self.warmup_s,
                    self.timeout_ms
                ),
            ),
            (
                "sent/s (achieved)".into(),
                format!("{:.1}", self.sent_per_s),
            ),
            (
                "replies".into(),
                format!("{} of {} measured", self.replies, self.measured),
            ),
            (
                "timeouts".into(),
                format!("{} ({} late replies)", self.timeouts, self.late_replies),
            ),
        ];
        for (k, v) in [
            ("mean", self.mean_us),
            ("p50", self.p50_us),
            ("p90", self.p90_us),
            ("p99", self.p99_us),
            ("p99.9", self.p999_us),
            ("max", self.max_us),
        ] {
            rows.push((format!("latency {k}"), format!("{v:.1} µs")));
        }
        rows.push((
            "sender lag".into(),
            format!(
                "p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs (load generator's own jitter)",
                self.send_lag_p50_us, self.send_lag_p99_us, self.send_lag_max_us
            ),
        ));
        if let (Some(s), Some(p)) = (self.server_cpu_s, self.server_cpu_pct) {
            rows.push(("server cpu".into(), format!("{s:.2} s ({p:.1}% of a core)")));
        }
        if let Some(p) = self.loadgen_cpu_pct {
            rows.push((
                "load generator cpu".into(),
                format!("{p:.1}% of a core (sender spin included)"),
            ));
        }
        if self.duplicate_replies + self.malformed_replies + self.node_errors > 0 {
            rows.push((
                "anomalies".into(),
                format!(
                    "{} duplicate, {} malformed replies, {} node errors",
                    self.duplicate_replies, self.malformed_replies, self.node_errors
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(warm: u64, total: u64) -> Recorder {
        Recorder {
            t0: Instant::now(),
            interval_ns: 1e6,
            warm,
            timeout_ns: 5_000_000,
            hist: histogram().unwrap(),
            seen: SeenSet::new(total),
            replies: Arc::new(AtomicU64::new(0)),
            late: 0,
            dup: 0,
            malformed: 0,
            errors: 0,
            first_error: None,
        }
    }

    #[test]
    fn measures_from_the_schedule() {
        let mut r = rec(2, 10);
        let mut w = PayloadWriter::new(0, 16).unwrap();
        // Request 5 was due at t0 + 5 ms; its reply comes at t0 + 7 ms.
        r.reply(w.with_seq(5), r.t0 + Duration::from_millis(7));
        // Warm-up replies are not recorded.
        r.reply(w.with_seq(1), r.t0 + Duration::from_millis(7));
        // Duplicates and unknown sequence numbers are counted apart.
        r.reply(w.with_seq(5), r.t0 + Duration::from_millis(8));
        r.reply(w.with_seq(99), r.t0);
        // Request 6, due at 6 ms, answered at 20 ms: late.
        r.reply(w.with_seq(6), r.t0 + Duration::from_millis(20));
        assert_eq!(r.hist.len(), 2);
        let p0 = r.hist.value_at_quantile(0.0) as f64;
        assert!((p0 - 2e6).abs() / 2e6 < 0.01, "{p0}");
        assert_eq!((r.dup, r.malformed, r.late), (1, 1, 1));
        assert_eq!(r.replies.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn curve_is_monotonic() {
        let mut h = histogram().unwrap();
        for v in 1..=10_000u64 {
            h.record(v * 1000).unwrap();
        }
        let c = curve(&h);
        assert!(c.len() > 60);
        assert!(
            c.windows(2)
                .all(|w| w[0][0] <= w[1][0] && w[0][1] <= w[1][1])
        );
        assert_eq!(c.last().unwrap()[0], 1.0);
    }
}
