//! `slim-loadtest summarize`: SLIM ÷ NATS ratios from a file of `--json`
//! reports (one per line), as written by `compare.sh`.
//!
//! For each scenario the i-th SLIM report is paired with the i-th NATS report
//! (one pair per round), and the ratios of each pair are summarized by
//! median, min and max.
//!
//! Throughput figures never stand without their loss: the raw rows put
//! `loss %` right after deliveries/s (and mark a run above
//! [`LOSS_LIMIT_PCT`] `LOSSY`), the ratio table carries both systems'
//! median loss, and the headline is deliveries/s **at ≤0.1 % loss**: a
//! round counts towards the headline ratio only if both of its runs lost
//! ≤0.1 %; a lossy run has no rate at that loss, so its round is left out
//! and the row names who was lossy and by how much (no clean round: no
//! ratio, never the raw one). Runs with stalled subscribers are compared
//! with the same shape without them (the `slow consumer` section).

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::throughput_report::{LOSS_LIMIT_PCT, is_lossy};
use runs::{Runs, Scenarios, clean_ratios, f, loss_of, side};
pub use runs::{SideSummary, stats};

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
        _ => &[("peak RSS MiB", &["peak_rss_kib"], 0)],
    }
}

/// Columns of a run with stalled subscribers, after the others.
const STALLED_INFO: &[(&str, &[&str], usize)] = &[
    ("run RSS MiB", &["server_rss_peak_kib"], 0),
    ("cut after s", &["stalled_cut_after_s"], 2),
];

fn is_mib(label: &str) -> bool {
    label.ends_with("MiB")
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
    /// Throughput: median loss % of (slim, nats) over the rounds.
    pub loss: Option<(f64, f64)>,
}

/// The width of a table's scenario column: its longest name, at least 8.
fn scenario_width<'a>(names: impl Iterator<Item = &'a str>) -> usize {
    names.map(|n| n.chars().count()).max().unwrap_or(0).max(8)
}

fn fmt_ratios(rs: &[Ratio]) -> String {
    let sw = scenario_width(rs.iter().map(|r| r.scenario.as_str()));
    let mut out = format!(
        "{:<sw$}  {:<14} {:>8} {:>8} {:>8} {:>3}  {:<14}  {}\n",
        "scenario", "metric", "median", "min", "max", "n", "slim better if", "loss % slim / nats"
    );
    for r in rs {
        let (m, lo, hi) = stats(&r.ratios).unwrap_or((f64::NAN, f64::NAN, f64::NAN));
        let loss = r
            .loss
            .map(|(a, b)| {
                let mark = if is_lossy(a) || is_lossy(b) {
                    "  LOSSY"
                } else {
                    ""
                };
                format!("{a:.3} / {b:.3}{mark}")
            })
            .unwrap_or_default();
        out.push_str(
            format!(
                "{:<sw$}  {:<14} {:>8.3} {:>8.3} {:>8.3} {:>3}  {:<14}  {}",
                r.scenario,
                r.metric,
                m,
                lo,
                hi,
                r.ratios.len(),
                if r.higher_better { "> 1" } else { "< 1" },
                loss
            )
            .trim_end(),
        );
        out.push('\n');
    }
    out
}

/// Reads a file of reports, by scenario, in file order.
fn load(path: &Path) -> Result<Scenarios> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut by: Scenarios = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a JSON report", path.display(), i + 1))?;
        let scenario = v["scenario"].as_str().unwrap_or("?").to_owned();
        let kind = kind_of(&v);
        let at = match by.iter().position(|(sc, _)| *sc == scenario) {
            Some(at) => at,
            None => {
                by.push((scenario, (kind, Runs::default())));
                by.len() - 1
            }
        };
        let entry = &mut by[at].1;
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
            let loss = (kind == "throughput").then(|| {
                let med = |runs: &[Value]| {
                    let ls: Vec<f64> = runs.iter().map(loss_of).collect();
                    stats(&ls).map_or(f64::NAN, |s| s.0)
                };
                (med(&runs.slim), med(&runs.nats))
            });
            out.push(Ratio {
                scenario: scenario.clone(),
                metric: m.label,
                higher_better: m.higher_better,
                ratios,
                loss,
            });
        }
    }
    Ok(out)
}

pub fn summarize(path: &Path) -> Result<String> {
    let mut out = String::new();
    for (scenario, (kind, runs)) in load(path)? {
        out.push_str(&format!("== {scenario}  [{kind}]\n"));
        out.push_str(&raw_rows(&kind, &runs));
    }
    let rs = ratios(path)?;
    if rs.iter().any(|r| !r.ratios.is_empty()) {
        out.push_str(
            "\n== slim ÷ nats, per round (median, min, max over rounds; any loss: read the loss column)\n",
        );
        let with: Vec<Ratio> = rs.into_iter().filter(|r| !r.ratios.is_empty()).collect();
        out.push_str(&fmt_ratios(&with));
    }
    let by = load(path)?;
    let slow = slow_consumer(&by);
    if !slow.is_empty() {
        out.push_str(&fmt_slow(&slow));
    }
    let two = two_nodes::rows(&by);
    if !two.is_empty() {
        out.push_str(&two_nodes::format(&two));
    }
    let head = headline(&by);
    if !head.is_empty() {
        out.push_str(&fmt_headline(&head));
    }
    Ok(out)
}

/// The raw figures of every run of one scenario, loss right after
/// deliveries/s and `LOSSY` at the end of a run above the limit.
fn raw_rows(kind: &str, runs: &Runs) -> String {
    let ms = metrics(kind);
    let stalled = runs
        .slim
        .iter()
        .chain(&runs.nats)
        .any(|v| f(v, &["stalled_subs"]).unwrap_or(0.0) > 0.0);
    let mut inf: Vec<(&str, &[&str], usize)> = info(kind).to_vec();
    if kind == "throughput" && stalled {
        inf.extend_from_slice(STALLED_INFO);
    }
    let throughput = kind == "throughput";
    let mut head = format!("  {:<5} {:<5}", "round", "sys");
    for (i, m) in ms.iter().enumerate() {
        head.push_str(&format!(" {:>14}", m.label));
        if throughput && i == 0 {
            head.push_str(&format!(" {:>9}", "loss %"));
        }
    }
    for (l, _, _) in &inf {
        head.push_str(&format!(" {l:>12}"));
    }
    let mut out = head;
    out.push('\n');
    let rounds = runs.slim.len().max(runs.nats.len());
    for r in 0..rounds {
        for (sys, v) in [("slim", runs.slim.get(r)), ("nats", runs.nats.get(r))] {
            let Some(v) = v else { continue };
            let mut line = format!("  {:<5} {:<5}", r + 1, sys);
            for (i, m) in ms.iter().enumerate() {
                line.push_str(&format!(" {:>14}", opt(f(v, m.path), m.prec)));
                if throughput && i == 0 {
                    line.push_str(&format!(" {:>9}", opt(f(v, &["loss_pct"]), 3)));
                }
            }
            for (l, p, prec) in &inf {
                let x = f(v, p).map(|x| if is_mib(l) { x / 1024.0 } else { x });
                line.push_str(&format!(" {:>12}", opt(x, *prec)));
            }
            if throughput && is_lossy(loss_of(v)) {
                line.push_str("  LOSSY");
            }
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// One scenario of the headline: deliveries/s at ≤0.1 % loss.
#[derive(Debug, Clone, Serialize)]
pub struct HeadlineRow {
    pub scenario: String,
    pub slim: SideSummary,
    pub nats: SideSummary,
    /// Rounds where both runs lost ≤ the limit; only these give a ratio.
    pub clean_rounds: usize,
    pub rounds: usize,
    /// slim ÷ nats deliveries/s over the clean rounds: (median, min, max).
    pub ratio: Option<(f64, f64, f64)>,
    pub verdict: String,
}

/// The headline of every throughput scenario without stalled subscribers
/// (and not across two nodes: those have no NATS runs, see `two_nodes`).
fn headline(by: &Scenarios) -> Vec<HeadlineRow> {
    by.iter()
        .filter(|(_, (kind, runs))| {
            kind == "throughput"
                && !two_nodes::is_across(&runs.slim)
                && !runs
                    .slim
                    .iter()
                    .chain(&runs.nats)
                    .any(|v| f(v, &["stalled_subs"]).unwrap_or(0.0) > 0.0)
        })
        .map(|(scenario, (_, runs))| headline_row(scenario, runs))
        .collect()
}

fn headline_row(scenario: &str, runs: &Runs) -> HeadlineRow {
    let pairs: Vec<(&Value, &Value)> = runs.slim.iter().zip(&runs.nats).collect();
    let clean = clean_ratios(&pairs);
    let (slim, nats) = (side(&runs.slim), side(&runs.nats));
    let lossy = |name: &str, s: &SideSummary| {
        (s.lossy_runs > 0).then(|| {
            format!(
                "{name} LOSSY in {}/{} runs ({:.3} % lost, median; max {:.3} %)",
                s.lossy_runs, s.runs, s.loss_pct_median, s.loss_pct_max
            )
        })
    };
    let mut verdict: Vec<String> = [lossy("slim", &slim), lossy("nats", &nats)]
        .into_iter()
        .flatten()
        .collect();
    if verdict.is_empty() {
        verdict.push(format!("both ≤{LOSS_LIMIT_PCT} % loss"));
    } else if slim.lossy_runs > 0 {
        verdict.push("slim's rate is not a rate at ≤0.1 % loss".into());
    }
    if clean.is_empty() && !pairs.is_empty() {
        verdict.push("no round without loss: no ratio".into());
    }
    HeadlineRow {
        scenario: scenario.to_owned(),
        clean_rounds: clean.len(),
        rounds: pairs.len(),
        ratio: stats(&clean),
        slim,
        nats,
        verdict: verdict.join("; "),
    }
}

fn fmt_headline(rows: &[HeadlineRow]) -> String {
    let sw = scenario_width(rows.iter().map(|r| r.scenario.as_str()));
    let mut out = format!(
        "\n== HEADLINE: deliveries/s at ≤{LOSS_LIMIT_PCT} % loss (median over rounds; a round \
         counts towards slim ÷ nats only if both of its runs lost ≤{LOSS_LIMIT_PCT} %)\n"
    );
    out.push_str(&format!(
        "{:<sw$}  {:>12} {:>9}  {:>12} {:>9}  {:>22} {:>6}  {}\n",
        "scenario",
        "slim dlv/s",
        "loss %",
        "nats dlv/s",
        "loss %",
        "slim÷nats (min–max)",
        "clean",
        "verdict"
    ));
    for r in rows {
        let ratio = r.ratio.map_or("-".to_owned(), |(m, lo, hi)| {
            format!("{m:.3}× ({lo:.2}–{hi:.2})")
        });
        out.push_str(&format!(
            "{:<sw$}  {:>12} {:>9.3}  {:>12} {:>9.3}  {:>22} {:>6}  {}\n",
            r.scenario,
            crate::throughput_report::fmt_num(r.slim.deliveries_per_s),
            r.slim.loss_pct_median,
            crate::throughput_report::fmt_num(r.nats.deliveries_per_s),
            r.nats.loss_pct_median,
            ratio,
            format!("{}/{}", r.clean_rounds, r.rounds),
            r.verdict
        ));
    }
    out
}

/// One system's slow-consumer comparison: the readers' deliveries/s with
/// the stalled subscriber(s) ÷ the same shape without.
#[derive(Debug, Clone, Serialize)]
pub struct SlowRow {
    pub system: String,
    pub scenario: String,
    pub baseline: String,
    /// Readers' deliveries/s with ÷ without, paired by round: (median, min, max).
    pub ratio: Option<(f64, f64, f64)>,
    pub with_deliveries_per_s: f64,
    pub without_deliveries_per_s: f64,
    /// Loss among the readers (the stalled are excluded), median and max.
    pub with_loss_pct_median: f64,
    pub with_loss_pct_max: f64,
    pub without_loss_pct_median: f64,
    /// Runs in which a stalled subscriber was seen cut, and the median time.
    pub cut_runs: usize,
    pub runs: usize,
    pub cut_after_s_median: Option<f64>,
    /// Server-side counters over the run, medians: messages dropped for
    /// slow consumers (slim) and slow-consumer events (nats: slow_consumers;
    /// slim: slow-consumer disconnects).
    pub dropped_slow_consumer: Option<f64>,
    pub slow_consumer_cuts: Option<f64>,
    /// Highest server RSS sampled during the runs with / without, MiB.
    pub with_rss_peak_mib: Option<f64>,
    pub without_rss_peak_mib: Option<f64>,
}

fn shape(v: &Value) -> Option<(u64, u64, u64, String)> {
    Some((
        f(v, &["pubs"])? as u64,
        f(v, &["size_bytes"])? as u64,
        (f(v, &["subs"])? - f(v, &["stalled_subs"]).unwrap_or(0.0)) as u64,
        v.get("mode")?.as_str()?.to_owned(),
    ))
}

fn median_of(runs: &[Value], path: &[&str]) -> Option<f64> {
    let xs: Vec<f64> = runs.iter().filter_map(|v| f(v, path)).collect();
    stats(&xs).map(|s| s.0)
}

fn max_of(runs: &[Value], path: &[&str]) -> Option<f64> {
    let xs: Vec<f64> = runs.iter().filter_map(|v| f(v, path)).collect();
    stats(&xs).map(|s| s.2)
}

/// Every scenario with stalled subscribers against its baseline (same
/// publishers, size, mode and readers, nobody stalled), per system.
fn slow_consumer(by: &Scenarios) -> Vec<SlowRow> {
    let stalled_of = |runs: &Runs| {
        runs.slim
            .iter()
            .chain(&runs.nats)
            .map(|v| f(v, &["stalled_subs"]).unwrap_or(0.0))
            .fold(0.0, f64::max)
    };
    let first = |runs: &Runs| runs.slim.first().or(runs.nats.first()).cloned();
    let mut out = Vec::new();
    for (scenario, (kind, runs)) in by.iter() {
        if kind != "throughput" || stalled_of(runs) == 0.0 {
            continue;
        }
        let Some(sh) = first(runs).as_ref().and_then(shape) else {
            continue;
        };
        let base = by.iter().find(|(_, (k, r))| {
            k == "throughput"
                && stalled_of(r) == 0.0
                && first(r).as_ref().and_then(shape).as_ref() == Some(&sh)
        });
        for sys in ["slim", "nats"] {
            let pick = |r: &Runs| -> Vec<Value> {
                if sys == "slim" {
                    r.slim.clone()
                } else {
                    r.nats.clone()
                }
            };
            let with = pick(runs);
            if with.is_empty() {
                continue;
            }
            let without = base.map(|(_, (_, r))| pick(r)).unwrap_or_default();
            let ratios: Vec<f64> = with
                .iter()
                .zip(&without)
                .filter_map(|(w, o)| {
                    let (a, b) = (f(w, &["deliveries_per_s"])?, f(o, &["deliveries_per_s"])?);
                    (b > 0.0).then(|| a / b)
                })
                .collect();
            let cuts: Vec<f64> = with
                .iter()
                .filter_map(|v| f(v, &["stalled_cut_after_s"]))
                .collect();
            let wl: Vec<f64> = with.iter().map(loss_of).collect();
            let ol: Vec<f64> = without.iter().map(loss_of).collect();
            let cut_key = if sys == "slim" {
                "server_slow_consumer_disconnects"
            } else {
                "server_slow_consumers"
            };
            out.push(SlowRow {
                system: sys.into(),
                scenario: scenario.clone(),
                baseline: base.map(|(n, _)| n.clone()).unwrap_or_default(),
                ratio: stats(&ratios),
                with_deliveries_per_s: median_of(&with, &["deliveries_per_s"]).unwrap_or(f64::NAN),
                without_deliveries_per_s: median_of(&without, &["deliveries_per_s"])
                    .unwrap_or(f64::NAN),
                with_loss_pct_median: stats(&wl).map_or(f64::NAN, |s| s.0),
                with_loss_pct_max: stats(&wl).map_or(f64::NAN, |s| s.2),
                without_loss_pct_median: stats(&ol).map_or(f64::NAN, |s| s.0),
                cut_runs: cuts.len(),
                runs: with.len(),
                cut_after_s_median: stats(&cuts).map(|s| s.0),
                dropped_slow_consumer: median_of(
                    &with,
                    &["counters", "server_dropped_slow_consumer"],
                ),
                slow_consumer_cuts: median_of(&with, &["counters", cut_key]),
                with_rss_peak_mib: max_of(&with, &["server_rss_peak_kib"]).map(|k| k / 1024.0),
                without_rss_peak_mib: max_of(&without, &["server_rss_peak_kib"])
                    .map(|k| k / 1024.0),
            });
        }
    }
    out
}

fn fmt_slow(rows: &[SlowRow]) -> String {
    let mut out = String::from(
        "\n== slow consumer: readers' deliveries/s with the stalled subscriber ÷ without \
         (paired by round; loss among the readers only)\n",
    );
    let mut last = "";
    for r in rows {
        if r.scenario != last {
            let base = if r.baseline.is_empty() {
                "NO BASELINE RUN (same shape without the stalled subscriber): no ratio".to_owned()
            } else {
                format!("vs {}", r.baseline)
            };
            out.push_str(&format!("  {}  {base}\n", r.scenario));
            last = &r.scenario;
        }
        let ratio = r.ratio.map_or("-".to_owned(), |(m, lo, hi)| {
            format!("{m:.3}× ({lo:.2}–{hi:.2})")
        });
        let cut = match r.cut_after_s_median {
            Some(t) => format!(
                "cut in {}/{} runs, after {t:.2} s (median)",
                r.cut_runs, r.runs
            ),
            None => format!("not cut (0/{} runs)", r.runs),
        };
        let mib = |x: Option<f64>| x.map_or("-".to_owned(), |m| format!("{m:.0}"));
        let mut line = format!(
            "    {:<5} with÷without {ratio}: {} vs {} dlv/s; readers' loss {:.3} % (max {:.3} %; \
             without {:.3} %){}; {cut}",
            r.system,
            crate::throughput_report::fmt_num(r.with_deliveries_per_s),
            crate::throughput_report::fmt_num(r.without_deliveries_per_s),
            r.with_loss_pct_median,
            r.with_loss_pct_max,
            r.without_loss_pct_median,
            if is_lossy(r.with_loss_pct_max) {
                " LOSSY"
            } else {
                ""
            },
        );
        if let Some(c) = r.slow_consumer_cuts {
            line.push_str(&format!("; server slow-consumer cuts {c:.0}"));
        }
        if let Some(d) = r.dropped_slow_consumer {
            line.push_str(&format!("; dropped for slow consumers {d:.0}"));
        }
        line.push_str(&format!(
            "; server RSS peak {} MiB (without: {})\n",
            mib(r.with_rss_peak_mib),
            mib(r.without_rss_peak_mib)
        ));
        out.push_str(&line);
    }
    out
}

/// Everything `summarize` prints, as one JSON object (`summarize --json`).
pub fn summarize_json(path: &Path) -> Result<Value> {
    let by = load(path)?;
    let ratios: Vec<Value> = ratios(path)?
        .into_iter()
        .filter(|r| !r.ratios.is_empty())
        .map(|r| {
            let st = stats(&r.ratios);
            serde_json::json!({
                "scenario": r.scenario,
                "metric": r.metric,
                "higher_better": r.higher_better,
                "median": st.map(|s| s.0),
                "min": st.map(|s| s.1),
                "max": st.map(|s| s.2),
                "n": r.ratios.len(),
                "slim_loss_pct_median": r.loss.map(|l| l.0),
                "nats_loss_pct_median": r.loss.map(|l| l.1),
            })
        })
        .collect();
    Ok(serde_json::json!({
        "loss_limit_pct": LOSS_LIMIT_PCT,
        "headline": headline(&by),
        "slow_consumer": slow_consumer(&by),
        "two_nodes": two_nodes::rows(&by),
        "ratios": ratios,
    }))
}

mod runs;
#[cfg(test)]
mod tests;
mod two_nodes;
