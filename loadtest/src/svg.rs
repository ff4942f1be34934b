//! Hand-written SVG line charts (no plotting crate): percentile curves with
//! a log-scale 1/(1-q) axis, deliveries/s vs payload size, and rate over
//! time. Every chart is a self-contained file readable by any browser.

use std::fmt::Write as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Linear,
    Log10,
}

#[derive(Debug, Clone)]
pub struct Axis {
    pub label: String,
    pub scale: Scale,
    /// Explicit ticks (value, label); otherwise chosen automatically.
    pub ticks: Option<Vec<(f64, String)>>,
    /// Linear axes: start at zero even if the data does not.
    pub from_zero: bool,
}

impl Axis {
    pub fn linear(label: impl Into<String>) -> Self {
        Axis {
            label: label.into(),
            scale: Scale::Linear,
            ticks: None,
            from_zero: true,
        }
    }

    pub fn log10(label: impl Into<String>) -> Self {
        Axis {
            label: label.into(),
            scale: Scale::Log10,
            ticks: None,
            from_zero: false,
        }
    }

    pub fn with_ticks(mut self, ticks: Vec<(f64, String)>) -> Self {
        self.ticks = Some(ticks);
        self
    }

    fn tf(&self, v: f64) -> f64 {
        match self.scale {
            Scale::Linear => v,
            Scale::Log10 => v.max(f64::MIN_POSITIVE).log10(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// Draw a dot at every point (sparse data such as a size sweep).
    pub markers: bool,
    /// CSS colour; by default the next one of a fixed palette.
    pub color: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub subtitle: String,
    pub x: Axis,
    pub y: Axis,
    pub series: Vec<Series>,
}

const W: f64 = 860.0;
const H: f64 = 500.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 64.0;
const BOTTOM: f64 = 64.0;
const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" step (1, 2 or 5 × 10^k) giving about `n` intervals over `range`.
fn nice_step(range: f64, n: f64) -> f64 {
    if range <= 0.0 || !range.is_finite() {
        return 1.0;
    }
    let raw = range / n;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// Short label for a tick value.
pub fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{}G", trim(v / 1e9))
    } else if a >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if a >= 1e4 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

/// Data range of an axis in transformed space, padded, and its ticks.
fn layout(axis: &Axis, vals: &[f64]) -> (f64, f64, Vec<(f64, String)>) {
    let t: Vec<f64> = vals
        .iter()
        .filter(|v| v.is_finite() && (axis.scale == Scale::Linear || **v > 0.0))
        .map(|v| axis.tf(*v))
        .collect();
    let (mut lo, mut hi) = t
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(*v), b.max(*v))
        });
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    if let Some(ticks) = &axis.ticks {
        for (v, _) in ticks {
            let tv = axis.tf(*v);
            lo = lo.min(tv);
            hi = hi.max(tv);
        }
    }
    if axis.scale == Scale::Linear && axis.from_zero {
        lo = lo.min(0.0);
    }
    if hi - lo < 1e-12 {
        hi = lo + 1.0;
    }
    match (&axis.ticks, axis.scale) {
        (Some(ticks), _) => {
            let ticks = ticks
                .iter()
                .map(|(v, l)| (axis.tf(*v), l.clone()))
                .collect();
            (lo, hi, ticks)
        }
        (None, Scale::Linear) => {
            let step = nice_step(hi - lo, 5.0);
            // A hair of slack so that 3.0004 does not open a whole new step.
            let lo = (lo / step + 0.02).floor() * step;
            let hi = (hi / step - 0.02).ceil() * step;
            let mut ticks = Vec::new();
            let mut v = lo;
            while v <= hi + step * 1e-6 {
                ticks.push((v, short(v)));
                v += step;
            }
            (lo, hi, ticks)
        }
        (None, Scale::Log10) => {
            let lo = lo.floor();
            let hi = hi.ceil().max(lo + 1.0);
            let ticks = (lo as i32..=hi as i32)
                .map(|e| (e as f64, short(10f64.powi(e))))
                .collect();
            (lo, hi, ticks)
        }
    }
}

pub fn render(c: &Chart) -> String {
    let xs: Vec<f64> = c
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    let ys: Vec<f64> = c
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .collect();
    let (x0, x1, xt) = layout(&c.x, &xs);
    let (y0, y1, yt) = layout(&c.y, &ys);
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let px = |v: f64| LEFT + (v - x0) / (x1 - x0) * pw;
    let py = |v: f64| TOP + ph - (v - y0) / (y1 - y0) * ph;

    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{}" y="24" font-size="16" font-weight="bold">{}</text>"#,
        LEFT,
        esc(&c.title)
    );
    if !c.subtitle.is_empty() {
        let _ = writeln!(
            o,
            r##"<text x="{}" y="44" fill="#555">{}</text>"##,
            LEFT,
            esc(&c.subtitle)
        );
    }
    // Grid and ticks.
    for (v, l) in &xt {
        if *v < x0 - 1e-9 || *v > x1 + 1e-9 {
            continue;
        }
        let x = px(*v);
        let _ = writeln!(
            o,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#e0e0e0"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + ph,
            TOP + ph + 18.0,
            esc(l)
        );
    }
    for (v, l) in &yt {
        if *v < y0 - 1e-9 || *v > y1 + 1e-9 {
            continue;
        }
        let y = py(*v);
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + pw,
            LEFT - 8.0,
            y + 4.0,
            esc(l)
        );
    }
    let _ = writeln!(
        o,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        H - 18.0,
        esc(&c.x.label)
    );
    let _ = writeln!(
        o,
        r#"<text transform="translate(22 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        TOP + ph / 2.0,
        esc(&c.y.label)
    );
    // Series.
    for (i, s) in c.series.iter().enumerate() {
        let color = s.color.as_deref().unwrap_or(COLORS[i % COLORS.len()]);
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|(x, y)| {
                x.is_finite()
                    && y.is_finite()
                    && (c.x.scale == Scale::Linear || *x > 0.0)
                    && (c.y.scale == Scale::Linear || *y > 0.0)
            })
            .map(|(x, y)| (px(c.x.tf(*x)), py(c.y.tf(*y))))
            .collect();
        if pts.len() > 1 {
            let path: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = writeln!(
                o,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                path.join(" ")
            );
        }
        if s.markers || pts.len() == 1 {
            for (x, y) in &pts {
                let _ = writeln!(
                    o,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="3.5" fill="{color}"/>"#
                );
            }
        }
        let ly = TOP + 10.0 + i as f64 * 20.0;
        let lx = LEFT + pw + 16.0;
        let _ = writeln!(
            o,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 22.0,
            lx + 28.0,
            ly + 4.0,
            esc(&s.label)
        );
    }
    o.push_str("</svg>\n");
    o
}

/// A colour per system and run: shades of blue for slim, of red for nats,
/// so that rounds of one system read as one family.
pub fn system_color(system: &str, run: usize) -> String {
    const SLIM: &[&str] = &["#1f77b4", "#5fa2dd", "#0b4f8a", "#8fc1ea", "#2a6fb0"];
    const NATS: &[&str] = &["#d62728", "#f0787a", "#8c1516", "#f4a3a4", "#c2410c"];
    const OTHER: &[&str] = &["#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];
    let p = match system {
        "slim" => SLIM,
        "nats" => NATS,
        _ => OTHER,
    };
    p[run % p.len()].to_owned()
}

/// X axis of a percentile plot: 1/(1-q) on a log scale, labelled in percent.
pub fn percentile_axis(max_x: f64) -> Axis {
    let mut ticks = vec![(1.0, "0%".to_owned())];
    for (x, l) in [
        (2.0, "50%"),
        (10.0, "90%"),
        (100.0, "99%"),
        (1e3, "99.9%"),
        (1e4, "99.99%"),
        (1e5, "99.999%"),
        (1e6, "99.9999%"),
    ] {
        if x <= max_x * 1.0001 || x <= 100.0 {
            ticks.push((x, l.to_owned()));
        }
    }
    Axis::log10("percentile (log scale on 1/(1-q))").with_ticks(ticks)
}

/// A percentile curve `[(q, value)]` as chart points `(1/(1-q), value)`.
pub fn percentile_points(curve: &[[f64; 2]]) -> Vec<(f64, f64)> {
    curve
        .iter()
        .filter(|p| p[0] < 1.0)
        .map(|p| (1.0 / (1.0 - p[0]), p[1]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(10.0, 5.0), 2.0);
        assert_eq!(nice_step(1000.0, 5.0), 200.0);
        assert_eq!(nice_step(0.3, 5.0), 0.1);
    }

    #[test]
    fn short_labels() {
        assert_eq!(short(0.0), "0");
        assert_eq!(short(2.5), "2.5");
        assert_eq!(short(250_000.0), "250k");
        assert_eq!(short(1_500_000.0), "1.5M");
    }

    #[test]
    fn renders_a_chart() {
        let c = Chart {
            title: "t <&>".into(),
            subtitle: "s".into(),
            x: percentile_axis(1e4),
            y: Axis::linear("ms"),
            series: vec![Series {
                label: "slim".into(),
                points: percentile_points(&[[0.0, 0.1], [0.5, 0.2], [0.99, 1.0], [1.0, 5.0]]),
                markers: false,
                color: None,
            }],
        };
        let svg = render(&c);
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("t &lt;&amp;&gt;"));
        assert!(svg.contains("<polyline"));
        assert!(svg.contains("99.9%"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }
}
