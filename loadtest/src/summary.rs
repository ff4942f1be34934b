//! `slim-loadtest summarize`: SLIM ÷ NATS ratios from a file of `--json`
//! reports (one per line), as written by `compare.sh`.
//!
//! For each scenario the i-th SLIM report is paired with the i-th NATS report
//! (one pair per round), and the ratios of each pair are summarized by
//! median, min and max.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

#[derive(Debug, Default)]
struct Runs {
    slim: Vec<Value>,
    nats: Vec<Value>,
}

fn f(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_f64()
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

fn fmt_stats(xs: &[f64]) -> String {
    match stats(xs) {
        Some((m, lo, hi)) => format!("median {m:.3}  (min {lo:.3}, max {hi:.3}, n={})", xs.len()),
        None => "n/a".into(),
    }
}

fn opt(x: Option<f64>, prec: usize) -> String {
    x.map(|v| format!("{v:.prec$}"))
        .unwrap_or_else(|| "-".into())
}

pub fn summarize(path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut by: BTreeMap<String, Runs> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a JSON report", path.display(), i + 1))?;
        let scenario = v["scenario"].as_str().unwrap_or("?").to_owned();
        let runs = by.entry(scenario).or_default();
        match v["system"].as_str() {
            Some("slim") => runs.slim.push(v),
            Some("nats") => runs.nats.push(v),
            _ => {}
        }
    }
    let mut out = String::new();
    for (scenario, runs) in &by {
        out.push_str(&format!("== {scenario}\n"));
        out.push_str(&format!(
            "  {:<5} {:<5} {:>14} {:>10} {:>14} {:>12} {:>11}\n",
            "round", "sys", "deliveries/s", "loss %", "cpu s/1M dlv", "cpu s", "peak RSS MiB"
        ));
        let rounds = runs.slim.len().max(runs.nats.len());
        let mut thr = Vec::new();
        let mut cpu = Vec::new();
        for r in 0..rounds {
            for (sys, v) in [("slim", runs.slim.get(r)), ("nats", runs.nats.get(r))] {
                let Some(v) = v else { continue };
                out.push_str(&format!(
                    "  {:<5} {:<5} {:>14} {:>10} {:>14} {:>12} {:>11}\n",
                    r + 1,
                    sys,
                    opt(f(v, &["deliveries_per_s"]), 0),
                    opt(f(v, &["loss_pct"]), 3),
                    opt(f(v, &["cpu", "seconds_per_million_deliveries"]), 3),
                    opt(f(v, &["cpu", "seconds"]), 2),
                    opt(f(v, &["peak_rss_kib"]).map(|k| k / 1024.0), 1),
                ));
            }
            if let (Some(s), Some(n)) = (runs.slim.get(r), runs.nats.get(r)) {
                if let (Some(a), Some(b)) =
                    (f(s, &["deliveries_per_s"]), f(n, &["deliveries_per_s"]))
                    && b > 0.0
                {
                    thr.push(a / b);
                }
                let key = ["cpu", "seconds_per_million_deliveries"];
                if let (Some(a), Some(b)) = (f(s, &key), f(n, &key))
                    && b > 0.0
                {
                    cpu.push(a / b);
                }
            }
        }
        out.push_str(&format!(
            "  deliveries/s        slim/nats: {}   (>1: slim faster)\n",
            fmt_stats(&thr)
        ));
        out.push_str(&format!(
            "  CPU s per 1M dlv    slim/nats: {}   (<1: slim cheaper)\n",
            fmt_stats(&cpu)
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max() {
        assert_eq!(stats(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(stats(&[4.0, 1.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(stats(&[]), None);
    }

    #[test]
    fn pairs_rounds() {
        let dir = std::env::temp_dir().join(format!("slim-loadtest-sum-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("r.jsonl");
        let line = |sys: &str, d: f64, c: f64| {
            format!(
                r#"{{"system":"{sys}","scenario":"1->1 16B multicast","deliveries_per_s":{d},"loss_pct":0.0,"cpu":{{"seconds":1.0,"seconds_per_million_deliveries":{c}}}}}"#
            )
        };
        let text = [
            line("slim", 200.0, 1.0),
            line("nats", 100.0, 2.0),
            line("nats", 100.0, 1.0),
            line("slim", 300.0, 1.0),
        ]
        .join("\n");
        std::fs::write(&p, text).unwrap();
        let s = summarize(&p).unwrap();
        assert!(s.contains("median 2.500"), "{s}");
        assert!(s.contains("median 0.750"), "{s}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
