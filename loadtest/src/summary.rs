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

fn opt(x: Option<f64>, prec: usize) -> String {
    x.map(|v| format!("{v:.prec$}"))
        .unwrap_or_else(|| "-".into())
}

/// One measured figure of a report kind, compared as slim ÷ nats.
struct Metric {
    label: &'static str,
    path: &'static [&'static str],
    /// Whether a ratio above 1 is good for slim.
    higher_better: bool,
    prec: usize,
}

const THROUGHPUT: &[Metric] = &[
    Metric {
        label: "deliveries/s",
        path: &["deliveries_per_s"],
        higher_better: true,
        prec: 0,
    },
    Metric {
        label: "CPU s/1M dlv",
        path: &["cpu", "seconds_per_million_deliveries"],
        higher_better: false,
        prec: 3,
    },
];
const LATENCY: &[Metric] = &[
    Metric {
        label: "p50 µs",
        path: &["p50_us"],
        higher_better: false,
        prec: 1,
    },
    Metric {
        label: "p99 µs",
        path: &["p99_us"],
        higher_better: false,
        prec: 1,
    },
    Metric {
        label: "p99.9 µs",
        path: &["p999_us"],
        higher_better: false,
        prec: 1,
    },
    Metric {
        label: "server CPU %",
        path: &["server_cpu_pct"],
        higher_better: false,
        prec: 1,
    },
];
const CONNECTIONS: &[Metric] = &[
    Metric {
        label: "conn/s",
        path: &["connect_per_s"],
        higher_better: true,
        prec: 0,
    },
    Metric {
        label: "RSS KiB/conn",
        path: &["rss_per_conn_kib"],
        higher_better: false,
        prec: 1,
    },
    Metric {
        label: "RSS B/sub",
        path: &["rss_per_sub_bytes"],
        higher_better: false,
        prec: 0,
    },
];

/// Figures shown next to the metrics but not compared.
fn info(kind: &str) -> &'static [(&'static str, &'static [&'static str], usize)] {
    match kind {
        "latency" => &[("timeouts", &["timeouts"], 0), ("max µs", &["max_us"], 1)],
        "connections" => &[
            ("failed", &["connect_failures"], 0),
            ("p99 ms", &["connect_p99_ms"], 1),
        ],
        _ => &[
            ("loss %", &["loss_pct"], 3),
            ("peak RSS MiB", &["peak_rss_kib"], 0),
        ],
    }
}

fn metrics(kind: &str) -> &'static [Metric] {
    match kind {
        "latency" => LATENCY,
        "connections" => CONNECTIONS,
        _ => THROUGHPUT,
    }
}

/// A two-column "label  value" table.
pub fn rows_table(rows: &[(String, String)]) -> String {
    let w = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<w$}  {v}\n"))
        .collect()
}

fn kind_of(v: &Value) -> String {
    v.get("kind")
        .and_then(Value::as_str)
        .unwrap_or("throughput")
        .to_owned()
}

/// One line of the final ratio table.
#[derive(Debug)]
pub struct Ratio {
    pub scenario: String,
    pub metric: &'static str,
    pub higher_better: bool,
    pub ratios: Vec<f64>,
}

fn fmt_ratios(rs: &[Ratio]) -> String {
    let sw = rs
        .iter()
        .map(|r| r.scenario.chars().count())
        .max()
        .unwrap_or(8)
        .max(8);
    let mut out = format!(
        "{:<sw$}  {:<14} {:>8} {:>8} {:>8} {:>3}  {}\n",
        "scenario", "metric", "median", "min", "max", "n", "slim better if"
    );
    for r in rs {
        let (m, lo, hi) = stats(&r.ratios).unwrap_or((f64::NAN, f64::NAN, f64::NAN));
        out.push_str(&format!(
            "{:<sw$}  {:<14} {:>8.3} {:>8.3} {:>8.3} {:>3}  {}\n",
            r.scenario,
            r.metric,
            m,
            lo,
            hi,
            r.ratios.len(),
            if r.higher_better { "> 1" } else { "< 1" }
        ));
    }
    out
}

/// Reads a file of reports, by scenario, in file order.
fn load(path: &Path) -> Result<BTreeMap<String, (String, Runs)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut by: BTreeMap<String, (String, Runs)> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a JSON report", path.display(), i + 1))?;
        let scenario = v["scenario"].as_str().unwrap_or("?").to_owned();
        let kind = kind_of(&v);
        let entry = by
            .entry(scenario)
            .or_insert_with(|| (kind, Runs::default()));
        match v["system"].as_str() {
            Some("slim") => entry.1.slim.push(v),
            Some("nats") => entry.1.nats.push(v),
            _ => {}
        }
    }
    Ok(by)
}

/// The ratios (slim ÷ nats, round by round) of every metric of every scenario.
pub fn ratios(path: &Path) -> Result<Vec<Ratio>> {
    let mut out = Vec::new();
    for (scenario, (kind, runs)) in load(path)? {
        for m in metrics(&kind) {
            let ratios = runs
                .slim
                .iter()
                .zip(&runs.nats)
                .filter_map(|(s, n)| {
                    let (a, b) = (f(s, m.path)?, f(n, m.path)?);
                    (b > 0.0 && a.is_finite()).then(|| a / b)
                })
                .collect();
            out.push(Ratio {
                scenario: scenario.clone(),
                metric: m.label,
                higher_better: m.higher_better,
                ratios,
            });
        }
    }
    Ok(out)
}

pub fn summarize(path: &Path) -> Result<String> {
    let mut out = String::new();
    for (scenario, (kind, runs)) in load(path)? {
        out.push_str(&format!("== {scenario}  [{kind}]\n"));
        let ms = metrics(&kind);
        let inf = info(&kind);
        let mut head = format!("  {:<5} {:<5}", "round", "sys");
        for m in ms {
            head.push_str(&format!(" {:>14}", m.label));
        }
        for (l, _, _) in inf {
            head.push_str(&format!(" {l:>12}"));
        }
        out.push_str(&head);
        out.push('\n');
        let rounds = runs.slim.len().max(runs.nats.len());
        for r in 0..rounds {
            for (sys, v) in [("slim", runs.slim.get(r)), ("nats", runs.nats.get(r))] {
                let Some(v) = v else { continue };
                let mut line = format!("  {:<5} {:<5}", r + 1, sys);
                for m in ms {
                    line.push_str(&format!(" {:>14}", opt(f(v, m.path), m.prec)));
                }
                for (l, p, prec) in inf {
                    let x = f(v, p).map(|x| if *l == "peak RSS MiB" { x / 1024.0 } else { x });
                    line.push_str(&format!(" {:>12}", opt(x, *prec)));
                }
                out.push_str(&line);
                out.push('\n');
            }
        }
    }
    let rs = ratios(path)?;
    if rs.iter().any(|r| !r.ratios.is_empty()) {
        out.push_str("\n== slim ÷ nats, per round (median, min, max over rounds)\n");
        let with: Vec<Ratio> = rs.into_iter().filter(|r| !r.ratios.is_empty()).collect();
        out.push_str(&fmt_ratios(&with));
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
        let rs = ratios(&p).unwrap();
        assert_eq!(stats(&rs[0].ratios).unwrap().0, 2.5, "{s}");
        assert_eq!(stats(&rs[1].ratios).unwrap().0, 0.75, "{s}");
        assert!(s.contains("deliveries/s"), "{s}");
        assert!(s.contains("   2.500    2.000    3.000"), "{s}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
