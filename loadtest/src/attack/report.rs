//! The attack report: the pass/fail goals and the text table.

use std::fmt::Write as _;
use std::net::IpAddr;

use serde::Serialize;

use super::kind::Kind;
use super::stats::RssSummary;
use super::{legit, prom};

#[derive(Debug, Serialize)]
pub struct Goal {
    pub goal: &'static str,
    /// None: not measured (e.g. RSS without --node-pid).
    pub pass: Option<bool>,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct AttackReport {
    pub kind: Kind,
    pub target: String,
    pub attack_bind: Vec<IpAddr>,
    pub rate: Option<f64>,
    pub count: Option<usize>,
    pub baseline_s: f64,
    pub duration_s: f64,
    pub after_s: f64,
    pub legit: legit::LegitReport,
    pub rss: Option<RssSummary>,
    pub rss_error: Option<String>,
    /// Node log lines added during the attack phase and during the after phase.
    pub node_log_lines: Option<(u64, u64)>,
    pub counters: Vec<prom::SeriesDelta>,
    pub metrics_error: Option<String>,
    pub attack: serde_json::Value,
    pub goals: Vec<Goal>,
    pub pass: bool,
}

/// The goals, from the legit stream's phases and the RSS summary.
pub(super) fn goals(l: &legit::LegitReport, rss: Option<&RssSummary>) -> Vec<Goal> {
    let base = &l.phases[0];
    let during = &l.phases[1];
    let mut g = Vec::new();
    g.push(Goal {
        goal: "legit rate during the attack >= 90% of baseline",
        pass: Some(during.rate >= 0.9 * base.rate && base.rate > 0.0),
        detail: format!(
            "{:.1}/s vs {:.1}/s ({:.1} %)",
            during.rate,
            base.rate,
            100.0 * during.rate / base.rate.max(1e-9)
        ),
    });
    g.push(match (base.p99_ms, during.p99_ms) {
        (Some(b), Some(d)) => Goal {
            goal: "legit p99 during the attack <= 10x baseline",
            pass: Some(d <= 10.0 * b),
            detail: format!("{d:.2} ms vs {b:.2} ms ({:.1}x)", d / b.max(1e-9)),
        },
        _ => Goal {
            goal: "legit p99 during the attack <= 10x baseline",
            pass: Some(false),
            detail: "no replies in a phase".into(),
        },
    });
    g.push(Goal {
        goal: "a new client joins within 1 s",
        pass: Some(l.join_ms.is_some_and(|m| m <= 1000.0)),
        detail: match (&l.join_ms, &l.join_error) {
            (Some(m), _) => format!("{m:.1} ms"),
            (None, Some(e)) => e.clone(),
            (None, None) => "not measured".into(),
        },
    });
    g.push(match rss {
        Some(r) => Goal {
            goal: "RSS at the end within 20% of before",
            pass: Some(r.after_kib as f64 <= 1.2 * r.before_kib as f64),
            detail: format!(
                "{:.1} MiB vs {:.1} MiB ({:+.1} %)",
                mib(r.after_kib),
                mib(r.before_kib),
                100.0 * (r.after_kib as f64 / r.before_kib.max(1) as f64 - 1.0)
            ),
        },
        None => Goal {
            goal: "RSS at the end within 20% of before",
            pass: None,
            detail: "not measured (--node-pid or --spawn-node)".into(),
        },
    });
    g
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}"))
}

pub(super) fn table(r: &AttackReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "attack {} -> {} from {:?}: {} for {:.0} s (baseline {:.0} s, after {:.0} s)",
        r.kind.name(),
        r.target,
        r.attack_bind,
        match (r.count, r.rate) {
            (Some(c), Some(rt)) => format!("{c} clients at {rt}/s"),
            (None, Some(rt)) => format!("{rt}/s"),
            _ => String::new(),
        },
        r.duration_s,
        r.baseline_s,
        r.after_s
    );
    let _ = writeln!(
        s,
        "legit stream ({}/s request/reply):\n  {:<9} {:>6} {:>7} {:>7} {:>6} {:>9} {:>9} {:>9} {:>9}",
        r.legit.target_rate,
        "phase",
        "secs",
        "sent",
        "replied",
        "errs",
        "rate/s",
        "p50 ms",
        "p99 ms",
        "max ms"
    );
    for p in &r.legit.phases {
        let _ = writeln!(
            s,
            "  {:<9} {:>6.1} {:>7} {:>7} {:>6} {:>9.1} {:>9} {:>9} {:>9}",
            p.phase,
            p.secs,
            p.sent,
            p.replied,
            p.send_errors,
            p.rate,
            opt_ms(p.p50_ms),
            opt_ms(p.p99_ms),
            opt_ms(p.max_ms)
        );
    }
    if r.legit.node_errors > 0 {
        let _ = writeln!(
            s,
            "  node errors to the requester: {} (first: {})",
            r.legit.node_errors,
            r.legit.first_node_error.as_deref().unwrap_or("-")
        );
    }
    let _ = writeln!(
        s,
        "join (new client midway through the attack): {}",
        match (&r.legit.join_ms, &r.legit.join_error) {
            (Some(m), _) => format!("{m:.1} ms"),
            (None, Some(e)) => format!("failed: {e}"),
            _ => "-".into(),
        }
    );
    match (&r.rss, &r.rss_error) {
        (Some(m), _) => {
            let _ = writeln!(
                s,
                "node RSS: before {:.1} MiB, peak {:.1} MiB, after {:.1} MiB ({} samples)",
                mib(m.before_kib),
                mib(m.peak_kib),
                mib(m.after_kib),
                m.samples
            );
        }
        (None, Some(e)) => {
            let _ = writeln!(s, "node RSS: sampling failed: {e}");
        }
        (None, None) => {
            let _ = writeln!(s, "node RSS: not measured (--node-pid)");
        }
    }
    if let Some((d, a)) = r.node_log_lines {
        let _ = writeln!(s, "node log: {d} lines added during the attack, {a} after");
    }
    let _ = writeln!(s, "attack:");
    if let serde_json::Value::Object(m) = &r.attack {
        for (k, v) in m {
            let _ = writeln!(s, "  {k}: {v}");
        }
    }
    if let Some(e) = &r.metrics_error {
        let _ = writeln!(s, "node metrics: scrape failed: {e}");
    } else if !r.counters.is_empty() {
        let _ = writeln!(
            s,
            "node metrics (slim_* with {}):\n  {:<60} {:>12} {:>12} {:>12}",
            prom::KEYWORDS.join("|"),
            "series",
            "before",
            "after",
            "delta"
        );
        for c in &r.counters {
            let _ = writeln!(
                s,
                "  {:<60} {:>12} {:>12} {:>+12}",
                c.series, c.before, c.after, c.delta
            );
        }
    }
    let _ = writeln!(s, "goals:");
    for g in &r.goals {
        let v = match g.pass {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "n/a ",
        };
        let _ = writeln!(s, "  {v} {}: {}", g.goal, g.detail);
    }
    let _ = writeln!(s, "verdict: {}", if r.pass { "PASS" } else { "FAIL" });
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goals_follow_the_figures() {
        let phase = |rate: f64, p99: f64| legit::PhaseStats {
            phase: "x",
            secs: 10.0,
            sent: 5000,
            replied: (rate * 10.0) as u64,
            send_errors: 0,
            rate,
            p50_ms: Some(p99 / 2.0),
            p99_ms: Some(p99),
            max_ms: Some(p99),
        };
        let mut l = legit::LegitReport {
            target_rate: 500.0,
            phases: vec![phase(500.0, 2.0), phase(460.0, 19.0), phase(500.0, 2.0)],
            join_ms: Some(900.0),
            join_error: None,
            node_errors: 0,
            first_node_error: None,
        };
        let rss = RssSummary {
            before_kib: 10_000,
            peak_kib: 50_000,
            after_kib: 11_900,
            samples: 9,
        };
        let g = goals(&l, Some(&rss));
        assert!(g.iter().all(|g| g.pass == Some(true)), "{g:?}");
        l.phases[1] = phase(440.0, 21.0);
        l.join_ms = None;
        l.join_error = Some("timed out".into());
        let rss = RssSummary {
            after_kib: 12_100,
            ..rss
        };
        let g = goals(&l, Some(&rss));
        assert!(g.iter().all(|g| g.pass == Some(false)), "{g:?}");
        assert_eq!(goals(&l, None)[3].pass, None);
    }
}
