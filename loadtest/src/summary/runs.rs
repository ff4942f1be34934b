//! The reports `summarize` reads, grouped by scenario and system, and the
//! figures it takes out of them (shared by its sections).

use serde_json::Value;

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
