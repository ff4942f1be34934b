//! The reports `summarize` reads, grouped by scenario and system, and the
//! figures it takes out of them (shared by its sections).

use serde::Serialize;
use serde_json::Value;

use crate::throughput_report::is_lossy;

/// One scenario's reports, per system, in file order (round order).
#[derive(Debug, Default)]
pub(super) struct Runs {
    pub(super) slim: Vec<Value>,
    pub(super) nats: Vec<Value>,
}

/// Reports by scenario (name, (kind, runs)), scenarios in the order they
/// first appear in the file: the order `compare.sh` ran them in.
pub(super) type Scenarios = Vec<(String, (String, Runs))>;

/// The number at `path` in a report.
pub(super) fn f(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_f64()
}

/// A throughput report's loss (NaN when it has none: counted as lossy).
pub(super) fn loss_of(v: &Value) -> f64 {
    f(v, &["loss_pct"]).unwrap_or(f64::NAN)
}

/// (median, min, max); `None` for an empty set.
pub fn stats(xs: &[f64]) -> Option<(f64, f64, f64)> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((med, v[0], v[n - 1]))
}

/// One system's runs of a scenario (the headline's sides, the two-node
/// comparison's).
#[derive(Debug, Clone, Serialize)]
pub struct SideSummary {
    pub runs: usize,
    /// Median deliveries/s over all runs, whatever their loss.
    pub deliveries_per_s: f64,
    pub loss_pct_median: f64,
    pub loss_pct_max: f64,
    /// Runs that lost more than the limit.
    pub lossy_runs: usize,
}

pub(super) fn side(runs: &[Value]) -> SideSummary {
    let d: Vec<f64> = runs
        .iter()
        .filter_map(|v| f(v, &["deliveries_per_s"]))
        .collect();
    let l: Vec<f64> = runs.iter().map(loss_of).collect();
    SideSummary {
        runs: runs.len(),
        deliveries_per_s: stats(&d).map_or(f64::NAN, |s| s.0),
        loss_pct_median: stats(&l).map_or(f64::NAN, |s| s.0),
        loss_pct_max: stats(&l).map_or(f64::NAN, |s| s.2),
        lossy_runs: l.iter().filter(|x| is_lossy(**x)).count(),
    }
}

/// Deliveries/s of the first run ÷ the second, for the pairs (rounds) where
/// both lost ≤ the limit: a lossy run has no rate at that loss.
pub(super) fn clean_ratios(pairs: &[(&Value, &Value)]) -> Vec<f64> {
    pairs
        .iter()
        .filter(|(a, b)| !is_lossy(loss_of(a)) && !is_lossy(loss_of(b)))
        .filter_map(|(a, b)| {
            let (x, y) = (f(a, &["deliveries_per_s"])?, f(b, &["deliveries_per_s"])?);
            (y > 0.0 && x.is_finite()).then(|| x / y)
        })
        .collect()
}
