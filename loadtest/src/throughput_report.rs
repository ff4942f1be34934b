//! The report of a throughput run (`throughput`, `fanout`, `slow-consumer`,
//! `cross-node`): its fields, as JSON, and its text forms.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::harness::Mode;

/// Loss above this (percent of the expected deliveries) makes a throughput
/// run "lossy": its deliveries/s is then no rate "at ≤0.1 % loss", and
/// `summarize` leaves its round out of the headline ratio.
pub const LOSS_LIMIT_PCT: f64 = 0.1;

/// Whether a run with this loss is over [`LOSS_LIMIT_PCT`] (NaN counts as lossy:
/// a loss that could not be measured is no proof of none).
pub fn is_lossy(loss_pct: f64) -> bool {
    loss_pct.is_nan() || loss_pct > LOSS_LIMIT_PCT
}

#[derive(Debug, Clone, Serialize)]
pub struct CpuReport {
    pub scope: String,
    pub pid: Option<u32>,
    /// CPU seconds (user + system) spent in the measured window.
    pub seconds: f64,
    /// `seconds` per million deliveries in the window.
    pub seconds_per_million_deliveries: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Report type, for `summarize` and `plot`: always "throughput".
    pub kind: &'static str,
    pub system: String,
    pub target: String,
    pub scenario: String,
    pub mode: Mode,
    pub pubs: usize,
    pub pub_tasks: usize,
    pub subs: usize,
    /// Subscribers that never read (not counted in deliveries or loss).
    pub stalled_subs: usize,
    /// The subscribers were on a second node, reached over a peer link.
    pub across_nodes: bool,
    /// The publishers ran on a runtime of their own (`--publisher-thread`).
    pub publisher_thread: bool,
    pub size_bytes: usize,
    pub warmup_s: f64,
    /// Length of the measured window (measured, not requested).
    pub window_s: f64,
    pub window_sent: u64,
    pub window_deliveries: u64,
    pub sent_per_s: f64,
    /// Deliveries per second to the subscribers that read, summed.
    pub deliveries_per_s: f64,
    /// Slowest and fastest reading subscriber, deliveries per second.
    pub sub_rate_min: f64,
    pub sub_rate_max: f64,
    /// Payload bytes delivered per second, in 10^6 bytes.
    pub payload_mb_per_s: f64,
    /// Whole run, warm-up and drain included.
    pub total_sent: u64,
    pub total_delivered: u64,
    pub expected_deliveries: u64,
    pub lost: u64,
    pub loss_pct: f64,
    /// `loss_pct` is above `loss_limit_pct`: `deliveries_per_s` is not a
    /// rate at that loss.
    pub lossy: bool,
    pub loss_limit_pct: f64,
    /// Deliveries beyond the expected count (duplicates), if any.
    pub excess: u64,
    /// Mid-stream sequence gaps summed over subscribers (multicast only).
    pub seq_gaps: Option<u64>,
    pub out_of_order_or_dup: u64,
    pub malformed: u64,
    pub node_errors: u64,
    pub drain_s: f64,
    pub cpu: Option<CpuReport>,
    /// In-process node only: CPU of the node runtime's threads alone.
    pub node_threads_cpu: Option<CpuReport>,
    /// VmHWM of the measured process, KiB (its lifetime peak, not this run's).
    pub peak_rss_kib: Option<u64>,
    /// Highest VmRSS of the measured process sampled during this run
    /// (every 100 ms from the start signal to the end of the drain).
    pub server_rss_peak_kib: Option<u64>,
    /// Seconds from the start signal until a stalled subscriber was first
    /// seen cut (`None`: never, or no stalled subscriber), and by whom.
    pub stalled_cut_after_s: Option<f64>,
    pub stalled_cut_seen_by: Option<String>,
    pub counters: BTreeMap<String, u64>,
    /// Deliveries per second over the window in 100 ms steps: [seconds
    /// since the window started, rate].
    pub timeline: Vec<[f64; 2]>,
    pub notes: Vec<String>,
}

pub fn fmt_num(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.3} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} k", x / 1e3)
    } else {
        format!("{x:.1}")
    }
}

/// "loss 0.000 %", or "LOSSY: 24.100 % lost" above [`LOSS_LIMIT_PCT`]: the
/// text that goes next to every deliveries/s figure.
pub fn loss_tag(loss_pct: f64) -> String {
    if is_lossy(loss_pct) {
        format!("LOSSY: {loss_pct:.3} % lost")
    } else {
        format!("loss {loss_pct:.3} %")
    }
}

impl Report {
    /// A one-line summary (printed to stderr next to `--json`).
    pub fn one_line(&self) -> String {
        let cpu = |c: &Option<CpuReport>| {
            c.as_ref()
                .and_then(|c| c.seconds_per_million_deliveries)
                .map(|v| format!("{v:.3}"))
                .unwrap_or_else(|| "-".into())
        };
        let mut s = format!(
            "{} {}: {} deliveries/s ({}), cpu {} s/1M deliveries",
            self.system,
            self.scenario,
            fmt_num(self.deliveries_per_s),
            loss_tag(self.loss_pct),
            cpu(&self.cpu)
        );
        if self.node_threads_cpu.is_some() {
            s.push_str(&format!(" (node threads {})", cpu(&self.node_threads_cpu)));
        }
        s
    }

    /// A human-readable table.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = vec![
            (
                "system".into(),
                format!("{} ({})", self.system, self.target),
            ),
            ("scenario".into(), self.scenario.clone()),
            (
                "publishers".into(),
                format!("{} x {} task(s)", self.pubs, self.pub_tasks),
            ),
            (
                "window".into(),
                format!(
                    "{:.2} s after {:.2} s warm-up",
                    self.window_s, self.warmup_s
                ),
            ),
            ("sent/s".into(), fmt_num(self.sent_per_s)),
            (
                "deliveries/s".into(),
                format!(
                    "{} ({})",
                    fmt_num(self.deliveries_per_s),
                    loss_tag(self.loss_pct)
                ),
            ),
            (
                "per subscriber /s".into(),
                format!(
                    "min {}, max {}",
                    fmt_num(self.sub_rate_min),
                    fmt_num(self.sub_rate_max)
                ),
            ),
            (
                "payload MB/s".into(),
                format!("{:.2}", self.payload_mb_per_s),
            ),
            ("sent (total)".into(), format!("{}", self.total_sent)),
            (
                "delivered (total)".into(),
                format!(
                    "{} of {} expected",
                    self.total_delivered, self.expected_deliveries
                ),
            ),
            (
                "lost".into(),
                format!("{} ({:.3}%)", self.lost, self.loss_pct),
            ),
        ];
        if let Some(g) = self.seq_gaps {
            rows.push(("seq gaps".into(), g.to_string()));
        }
        if self.stalled_subs > 0 {
            rows.push((
                "stalled subscribers".into(),
                format!(
                    "{} (never read; excluded from deliveries and loss)",
                    self.stalled_subs
                ),
            ));
        }
        rows.push((
            "out-of-order/dup".into(),
            self.out_of_order_or_dup.to_string(),
        ));
        if self.excess > 0 {
            rows.push(("excess deliveries".into(), self.excess.to_string()));
        }
        rows.push(("drain".into(), format!("{:.2} s", self.drain_s)));
        for (label, c) in [
            ("cpu", &self.cpu),
            ("node threads cpu", &self.node_threads_cpu),
        ] {
            if let Some(c) = c {
                rows.push((
                    label.into(),
                    format!(
                        "{:.2} s; {} s per 1M deliveries [{}]",
                        c.seconds,
                        c.seconds_per_million_deliveries
                            .map(|v| format!("{v:.3}"))
                            .unwrap_or_else(|| "-".into()),
                        c.scope
                    ),
                ));
            }
        }
        if let Some(r) = self.peak_rss_kib {
            rows.push((
                "peak RSS (VmHWM)".into(),
                format!("{:.1} MiB", r as f64 / 1024.0),
            ));
        }
        if let Some(r) = self.server_rss_peak_kib {
            rows.push((
                "RSS peak this run".into(),
                format!("{:.1} MiB (VmRSS sampled every 100 ms)", r as f64 / 1024.0),
            ));
        }
        if self.stalled_subs > 0 {
            rows.push((
                "stalled cut".into(),
                match (self.stalled_cut_after_s, &self.stalled_cut_seen_by) {
                    (Some(t), Some(by)) => format!("after {t:.2} s (seen by the {by})"),
                    (Some(t), None) => format!("after {t:.2} s"),
                    (None, _) => "not seen during the run".into(),
                },
            ));
        }
        for (k, v) in &self.counters {
            rows.push((k.clone(), v.to_string()));
        }
        for n in &self.notes {
            rows.push(("note".into(), n.clone()));
        }
        let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        rows.iter()
            .map(|(k, v)| format!("{k:<w$}  {v}\n"))
            .collect()
    }
}
