//! Charts of reports (as their JSON), for `--plot` and `slim-loadtest plot`:
//!
//! - latency and connections reports: the latency distribution, one curve
//!   per report, percentile on a log scale of 1/(1-q);
//! - throughput reports of several payload sizes (`--sweep-sizes`):
//!   deliveries/s vs size, one line per system (median over rounds);
//! - a throughput report of one size: deliveries/s over the measured window.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use plotters::style::RGBColor;

use crate::chart::{self, Axis, Chart, Series};

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("?")
}

fn f(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(Value::as_f64)
}

fn pairs(v: &Value, k: &str) -> Vec<(f64, f64)> {
    v.get(k)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// Series labels: "system" alone if each system appears once, else
/// "system #n" in order of appearance.
fn labels(reports: &[Value]) -> Vec<String> {
    let mut total: BTreeMap<&str, usize> = BTreeMap::new();
    for r in reports {
        *total.entry(s(r, "system")).or_default() += 1;
    }
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    reports
        .iter()
        .map(|r| {
            let sys = s(r, "system");
            let n = seen.entry(sys).or_default();
            *n += 1;
            if total[sys] > 1 {
                format!("{sys} #{n}")
            } else {
                sys.to_owned()
            }
        })
        .collect()
}

/// Colours matching [`labels`]: one family per system.
fn colors(reports: &[Value]) -> Vec<Option<RGBColor>> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    reports
        .iter()
        .map(|r| {
            let sys = s(r, "system");
            let n = seen.entry(sys).or_default();
            *n += 1;
            Some(chart::system_color(sys, *n - 1))
        })
        .collect()
}

/// A loss percentage for a legend; NaN (no figure in the report) as "n/a".
fn pct(p: f64) -> String {
    if p.is_nan() {
        "n/a".into()
    } else {
        format!("{p:.2}%")
    }
}

/// What goes next to a throughput series or point: "loss 0.02%", or
/// "LOSSY 2.50%" above the 0.1 % limit (NaN: "loss n/a", not a clean run).
fn loss_tag(p: f64) -> String {
    if p.is_nan() {
        "loss n/a".into()
    } else if crate::throughput_report::is_lossy(p) {
        format!("LOSSY {}", pct(p))
    } else {
        format!("loss {}", pct(p))
    }
}

/// A latency series label with the requests that got no reply in time.
fn with_timeouts(r: &Value, label: String) -> String {
    match r.get("timeouts").and_then(Value::as_u64) {
        Some(t) => format!("{label} ({t} timeouts)"),
        None => label,
    }
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn percentile_chart(reports: &[Value], title: String, unit: &str, scale: f64) -> Chart {
    let mut max_x: f64 = 100.0;
    let series: Vec<Series> = reports
        .iter()
        .zip(labels(reports).into_iter().zip(colors(reports)))
        .map(|(r, (label, color))| {
            let pts: Vec<(f64, f64)> = chart::percentile_points(
                &pairs(r, "percentiles")
                    .into_iter()
                    .map(|(q, v)| [q, v * scale])
                    .collect::<Vec<_>>(),
            );
            if let Some(p) = pts.last() {
                max_x = max_x.max(p.0);
            }
            Series {
                label: with_timeouts(r, label),
                points: pts,
                markers: false,
                color,
                point_labels: Vec::new(),
            }
        })
        .collect();
    Chart {
        title,
        subtitle: String::new(),
        x: chart::percentile_axis(max_x),
        y: Axis::linear(format!("latency ({unit})")),
        series,
    }
}

/// The chart for a set of reports of one kind.
pub fn chart(reports: &[Value]) -> Result<Chart> {
    let Some(first) = reports.first() else {
        bail!("no report to plot");
    };
    let kind = first
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("throughput");
    if reports.iter().any(|r| {
        r.get("kind")
            .and_then(Value::as_str)
            .unwrap_or("throughput")
            != kind
    }) {
        bail!("cannot plot reports of different kinds together; pick a scenario");
    }
    let scenarios: Vec<&str> = {
        let mut v: Vec<&str> = reports.iter().map(|r| s(r, "scenario")).collect();
        v.dedup();
        v
    };
    Ok(match kind {
        "latency" => {
            let mut c = percentile_chart(
                reports,
                format!("Request/reply latency: {}", scenarios.join(", ")),
                "ms",
                1e-3,
            );
            c.subtitle = "open loop, measured from the scheduled send time; \
                          x: 50% … 99.99% on log(1/(1-q))"
                .into();
            c
        }
        "connections" => {
            let mut c = percentile_chart(
                reports,
                format!("Connect latency: {}", scenarios.join(", ")),
                "ms",
                1.0,
            );
            c.subtitle = "per handshake, with bounded concurrency".into();
            c
        }
        "throughput" => {
            let mut sizes: Vec<u64> = reports
                .iter()
                .filter_map(|r| r.get("size_bytes").and_then(Value::as_u64))
                .collect();
            sizes.sort_unstable();
            sizes.dedup();
            if sizes.len() > 1 {
                // deliveries/s vs size, one series per system; each point
                // carries its loss (median over runs, like the rate).
                type Runs = (Vec<f64>, Vec<f64>);
                let mut by: BTreeMap<String, BTreeMap<u64, Runs>> = BTreeMap::new();
                for r in reports {
                    if let (Some(size), Some(d)) = (
                        r.get("size_bytes").and_then(Value::as_u64),
                        f(r, "deliveries_per_s"),
                    ) {
                        let runs = by
                            .entry(s(r, "system").to_owned())
                            .or_default()
                            .entry(size)
                            .or_default();
                        runs.0.push(d);
                        runs.1.push(f(r, "loss_pct").unwrap_or(f64::NAN));
                    }
                }
                let series = by
                    .into_iter()
                    .map(|(sys, m)| {
                        let mut points = Vec::new();
                        let mut losses = Vec::new();
                        for (size, (mut d, mut l)) in m {
                            points.push((size as f64, median(&mut d)));
                            losses.push(median(&mut l));
                        }
                        let worst = losses.iter().copied().fold(f64::NAN, f64::max);
                        Series {
                            color: Some(chart::system_color(&sys, 0)),
                            label: if crate::throughput_report::is_lossy(worst) && !worst.is_nan() {
                                format!("{sys} (LOSSY: up to {} lost)", pct(worst))
                            } else {
                                format!("{sys} (loss ≤ {})", pct(worst))
                            },
                            points,
                            markers: true,
                            point_labels: losses.iter().map(|l| loss_tag(*l)).collect(),
                        }
                    })
                    .collect();
                let shape: Vec<String> = {
                    let mut v: Vec<String> = reports
                        .iter()
                        .map(|r| {
                            format!(
                                "{}->{} {}",
                                r.get("pubs").and_then(Value::as_u64).unwrap_or(0),
                                r.get("subs").and_then(Value::as_u64).unwrap_or(0),
                                s(r, "mode")
                            )
                        })
                        .collect();
                    v.dedup();
                    v
                };
                Chart {
                    title: format!("Throughput vs payload size: {}", shape.join(", ")),
                    subtitle: "deliveries per second summed over subscribers (median over runs)"
                        .into(),
                    x: Axis::log10("payload size (bytes, log scale)").with_ticks(
                        sizes
                            .iter()
                            .map(|s| (*s as f64, chart::short(*s as f64)))
                            .collect(),
                    ),
                    y: Axis::linear("deliveries/s"),
                    series,
                }
            } else {
                Chart {
                    title: format!("Deliveries/s over the window: {}", scenarios.join(", ")),
                    subtitle: "100 ms steps".into(),
                    x: Axis::linear("seconds since the measured window started"),
                    y: Axis::linear("deliveries/s"),
                    series: reports
                        .iter()
                        .zip(labels(reports).into_iter().zip(colors(reports)))
                        .map(|(r, (label, color))| Series {
                            label: format!(
                                "{label} ({})",
                                loss_tag(f(r, "loss_pct").unwrap_or(f64::NAN))
                            ),
                            points: pairs(r, "timeline"),
                            markers: false,
                            color,
                            point_labels: Vec::new(),
                        })
                        .collect(),
                }
            }
        }
        other => bail!("don't know how to plot a {other:?} report"),
    })
}

/// Writes the chart of `reports` to `path`.
pub fn write(path: &Path, reports: &[Value]) -> Result<()> {
    let c = chart(reports)?;
    std::fs::write(path, chart::render(&c)?).with_context(|| format!("writing {}", path.display()))
}

/// `slim-loadtest plot FILE --out SVG [--scenario S]`.
pub fn from_file(file: &Path, out: &Path, scenario: Option<&str>) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut all = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a JSON report", file.display(), i + 1))?;
        all.push(v);
    }
    // An exact scenario name if there is one, else every scenario containing
    // the text (e.g. "1->1 " for a size sweep of 1 -> 1).
    let exact = scenario.is_some_and(|sc| all.iter().any(|v| s(v, "scenario") == sc));
    let reports: Vec<Value> = all
        .into_iter()
        .filter(|v| match scenario {
            None => true,
            Some(sc) if exact => s(v, "scenario") == sc,
            Some(sc) => s(v, "scenario").contains(sc),
        })
        .collect();
    if reports.is_empty() {
        let mut all: Vec<String> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| s(&v, "scenario").to_owned())
            .collect();
        all.sort();
        all.dedup();
        bail!("no matching report; scenarios in the file: {all:?}");
    }
    write(out, &reports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn latency_and_sweep_charts() {
        let lat = |sys: &str| {
            json!({"kind":"latency","system":sys,"scenario":"rr 1000/s 16B",
                   "percentiles":[[0.0,50.0],[0.5,80.0],[0.99,200.0],[1.0,900.0]]})
        };
        let c = chart(&[lat("slim"), lat("nats")]).unwrap();
        assert_eq!(c.series.len(), 2);
        assert_eq!(c.series[0].label, "slim");
        // (1/(1-0.5), 0.08 ms); q = 1 is left out of the curve.
        assert_eq!(c.series[0].points[1], (2.0, 0.08));
        assert_eq!(c.series[0].points.len(), 3);

        let thr = |sys: &str, size: u64, d: f64, loss: f64| {
            json!({"kind":"throughput","system":sys,"scenario":format!("1->1 {size}B multicast"),
                   "size_bytes":size,"deliveries_per_s":d,"loss_pct":loss,
                   "pubs":1,"subs":1,"mode":"multicast"})
        };
        let c = chart(&[
            thr("slim", 16, 10.0, 0.0),
            thr("slim", 1024, 5.0, 1.5),
            thr("nats", 16, 20.0, 0.25),
            thr("nats", 1024, 8.0, 0.0),
        ])
        .unwrap();
        assert_eq!(c.series.len(), 2);
        assert_eq!(c.series[1].label, "slim (LOSSY: up to 1.50% lost)");
        assert_eq!(c.series[1].points, vec![(16.0, 10.0), (1024.0, 5.0)]);
        assert_eq!(c.series[1].point_labels, vec!["loss 0.00%", "LOSSY 1.50%"]);
        assert_eq!(c.series[0].label, "nats (LOSSY: up to 0.25% lost)");
        let c = chart(&[thr("nats", 16, 20.0, 0.1), thr("nats", 1024, 8.0, 0.0)]).unwrap();
        assert_eq!(c.series[0].label, "nats (loss ≤ 0.10%)");
        assert_eq!(c.series[0].point_labels, vec!["loss 0.10%", "loss 0.00%"]);
        assert!(chart(&[lat("slim"), thr("slim", 16, 1.0, 0.0)]).is_err());
    }

    /// A throughput report of one size: the rate over the window, each run's
    /// loss in its legend entry, written out as SVG.
    #[test]
    fn timeline_chart_renders_series_and_loss() {
        let run = |sys: &str, loss: f64, rate: f64| {
            json!({"kind":"throughput","system":sys,"scenario":"1->1 16B multicast",
                   "size_bytes":16,"deliveries_per_s":rate,"loss_pct":loss,
                   "timeline":[[0.0,rate],[0.1,rate * 0.9],[0.2,rate * 1.1]]})
        };
        let reports = [
            run("slim", 0.0, 1.0e6),
            run("slim", 2.5, 0.9e6),
            run("nats", 0.3, 2.0e6),
        ];
        let c = chart(&reports).unwrap();
        let labels: Vec<&str> = c.series.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "slim #1 (loss 0.00%)",
                "slim #2 (LOSSY 2.50%)",
                "nats (LOSSY 0.30%)"
            ]
        );
        assert_eq!(c.series[1].points[1], (0.1, 0.9e6 * 0.9));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.svg");
        write(&path, &reports).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        // One 2-px data line per run (axes and ticks are 1 px, legend keys 3 px).
        let data_lines = svg
            .lines()
            .filter(|l| l.starts_with("<polyline") && l.contains(r#"stroke-width="2""#))
            .count();
        assert_eq!(data_lines, 3, "{svg}");
        for l in labels {
            assert!(chart::has_text(&svg, l), "{l} missing in {svg}");
        }
        assert!(svg.contains("Deliveries/s over the window: 1-&gt;1 16B multicast"));
        assert!(chart::has_text(&svg, "deliveries/s"));
        // The slim colour family (first shade) is used for the first run.
        assert!(svg.to_ascii_lowercase().contains("#1f77b4"), "{svg}");
    }
}
