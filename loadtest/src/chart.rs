//! Line charts as self-contained SVG files, drawn with `plotters` (SVG
//! backend only: text goes out as `<text>` elements, so no font files are
//! needed): percentile curves with a log-scale 1/(1-q) axis, deliveries/s
//! vs payload size, and rate over time.

use std::ops::Range;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::coord::combinators::BindKeyPoints;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Linear,
    Log10,
}

#[derive(Debug, Clone)]
pub struct Axis {
    pub label: String,
    pub scale: Scale,
    /// Explicit ticks (value, label); otherwise chosen by plotters (linear)
    /// or at powers of ten (log).
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

    /// Whether `v` can be placed on this axis.
    fn accepts(&self, v: f64) -> bool {
        v.is_finite() && (self.scale == Scale::Linear || v > 0.0)
    }

    /// The label of a tick at `v`: its explicit label if it has one.
    fn tick_label(&self, v: f64) -> String {
        self.ticks
            .iter()
            .flatten()
            .find(|(t, _)| (t - v).abs() <= t.abs() * 1e-9)
            .map_or_else(|| short(v), |(_, l)| l.clone())
    }
}

#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// Draw a dot at every point (sparse data such as a size sweep).
    pub markers: bool,
    /// By default the next one of a fixed palette.
    pub color: Option<RGBColor>,
    /// Text written next to each point (same order as `points`), e.g. the
    /// loss at that point; empty for none.
    pub point_labels: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub subtitle: String,
    pub x: Axis,
    pub y: Axis,
    pub series: Vec<Series>,
}

const W: u32 = 860;
const H: u32 = 500;
/// Width of the legend column on the right.
const LEGEND: u32 = 220;
const TOP: u32 = 64;
const PALETTE: &[RGBColor] = &[
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
];

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

/// The value range an axis must show: the data and any explicit ticks,
/// zero included for `from_zero` linear axes, a little headroom on top.
fn span(axis: &Axis, vals: impl Iterator<Item = f64>) -> Range<f64> {
    let ticks = axis.ticks.iter().flatten().map(|(v, _)| *v);
    let (mut lo, mut hi) = vals
        .chain(ticks)
        .filter(|v| axis.accepts(*v))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    match axis.scale {
        Scale::Linear => {
            if !lo.is_finite() {
                (lo, hi) = (0.0, 1.0);
            }
            if axis.from_zero {
                lo = lo.min(0.0);
            }
            if hi - lo < 1e-12 {
                hi = lo + 1.0;
            }
            hi += (hi - lo) * 0.05;
        }
        Scale::Log10 => {
            if !lo.is_finite() {
                (lo, hi) = (1.0, 10.0);
            }
            if axis.ticks.is_none() {
                // Whole decades, so the power-of-ten ticks bracket the data.
                lo = 10f64.powf(lo.log10().floor());
                hi = 10f64.powf(hi.log10().ceil());
            }
            if hi / lo < 1.0 + 1e-9 {
                hi = lo * 10.0;
            }
        }
    }
    lo..hi
}

/// Tick positions of a log axis: the explicit ones, else powers of ten.
fn log_ticks(axis: &Axis, r: &Range<f64>) -> Vec<f64> {
    match &axis.ticks {
        Some(t) => t.iter().map(|(v, _)| *v).collect(),
        None => (r.start.log10().floor() as i32..=r.end.log10().ceil() as i32)
            .map(|e| 10f64.powi(e))
            .collect(),
    }
}

fn draw_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing the chart: {e}")
}

/// Renders `c` as an SVG document.
pub fn render(c: &Chart) -> Result<String> {
    let xs = c.series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let ys = c.series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let xr = span(&c.x, xs);
    let yr = span(&c.y, ys);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let (plot, legend) = root.split_horizontally(W - LEGEND);
        header(&root, c)?;
        // One generic body for the four combinations of axis scales (each
        // is a different plotters coordinate type).
        let xk = || log_ticks(&c.x, &xr);
        let yk = || log_ticks(&c.y, &yr);
        match (c.x.scale, c.y.scale) {
            (Scale::Linear, Scale::Linear) => body(&plot, c, xr.clone(), yr.clone())?,
            (Scale::Log10, Scale::Linear) => body(
                &plot,
                c,
                xr.clone().log_scale().with_key_points(xk()),
                yr.clone(),
            )?,
            (Scale::Linear, Scale::Log10) => body(
                &plot,
                c,
                xr.clone(),
                yr.clone().log_scale().with_key_points(yk()),
            )?,
            (Scale::Log10, Scale::Log10) => body(
                &plot,
                c,
                xr.clone().log_scale().with_key_points(xk()),
                yr.clone().log_scale().with_key_points(yk()),
            )?,
        }
        legend_column(&legend, c)?;
        root.present().map_err(draw_err)?;
    }
    Ok(out)
}

fn color_of(c: &Chart, i: usize) -> RGBColor {
    c.series[i].color.unwrap_or(PALETTE[i % PALETTE.len()])
}

fn header(root: &DrawingArea<SVGBackend<'_>, Shift>, c: &Chart) -> Result<()> {
    let title = ("sans-serif", 16).into_font().style(FontStyle::Bold);
    root.draw_text(&c.title, &title.color(&BLACK), (90, 10))
        .map_err(draw_err)?;
    if !c.subtitle.is_empty() {
        let sub = ("sans-serif", 12)
            .into_font()
            .color(&RGBColor(0x55, 0x55, 0x55));
        root.draw_text(&c.subtitle, &sub, (90, 34))
            .map_err(draw_err)?;
    }
    Ok(())
}

fn body<X, Y>(area: &DrawingArea<SVGBackend<'_>, Shift>, c: &Chart, x: X, y: Y) -> Result<()>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .margin_top(TOP)
        .margin_right(16)
        .margin_left(8)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d(x, y)
        .map_err(draw_err)?;
    let xfmt = |v: &f64| c.x.tick_label(*v);
    let yfmt = |v: &f64| c.y.tick_label(*v);
    chart
        .configure_mesh()
        .x_desc(c.x.label.as_str())
        .y_desc(c.y.label.as_str())
        .x_label_formatter(&xfmt)
        .y_label_formatter(&yfmt)
        .label_style(("sans-serif", 12))
        .light_line_style(RGBColor(0xf2, 0xf2, 0xf2))
        .bold_line_style(RGBColor(0xe0, 0xe0, 0xe0))
        .axis_style(RGBColor(0x33, 0x33, 0x33))
        .draw()
        .map_err(draw_err)?;
    for (i, s) in c.series.iter().enumerate() {
        let color = color_of(c, i);
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|(px, py)| c.x.accepts(*px) && c.y.accepts(*py))
            .collect();
        if pts.len() > 1 {
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(draw_err)?;
        }
        if s.markers || pts.len() == 1 {
            chart
                .draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))
                .map_err(draw_err)?;
        }
        let font = ("sans-serif", 11).into_font().color(&color);
        let labelled = s
            .points
            .iter()
            .zip(&s.point_labels)
            .filter(|((px, py), _)| c.x.accepts(*px) && c.y.accepts(*py));
        chart
            .draw_series(
                labelled.map(|(p, l)| {
                    EmptyElement::at(*p) + Text::new(l.clone(), (6, -14), font.clone())
                }),
            )
            .map_err(draw_err)?;
    }
    Ok(())
}

fn legend_column(area: &DrawingArea<SVGBackend<'_>, Shift>, c: &Chart) -> Result<()> {
    let font = ("sans-serif", 12).into_font().color(&BLACK);
    for (i, s) in c.series.iter().enumerate() {
        let color = color_of(c, i);
        let y = TOP as i32 + 10 + i as i32 * 20;
        area.draw(&PathElement::new(
            vec![(4, y), (26, y)],
            color.stroke_width(3),
        ))
        .map_err(draw_err)?;
        area.draw_text(&s.label, &font, (32, y - 7))
            .map_err(draw_err)?;
    }
    Ok(())
}

/// A colour per system and run: shades of blue for slim, of red for nats,
/// so that rounds of one system read as one family.
pub fn system_color(system: &str, run: usize) -> RGBColor {
    const SLIM: &[RGBColor] = &[
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0x5f, 0xa2, 0xdd),
        RGBColor(0x0b, 0x4f, 0x8a),
        RGBColor(0x8f, 0xc1, 0xea),
        RGBColor(0x2a, 0x6f, 0xb0),
    ];
    const NATS: &[RGBColor] = &[
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0xf0, 0x78, 0x7a),
        RGBColor(0x8c, 0x15, 0x16),
        RGBColor(0xf4, 0xa3, 0xa4),
        RGBColor(0xc2, 0x41, 0x0c),
    ];
    const OTHER: &[RGBColor] = &[
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0xff, 0x7f, 0x0e),
        RGBColor(0x94, 0x67, 0xbd),
        RGBColor(0x8c, 0x56, 0x4b),
    ];
    let p = match system {
        "slim" => SLIM,
        "nats" => NATS,
        _ => OTHER,
    };
    p[run % p.len()]
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

/// Whether `svg` has a `<text>` element whose content is exactly `text`
/// (as plotters writes it: on a line of its own).
#[cfg(test)]
pub fn has_text(svg: &str, text: &str) -> bool {
    svg.contains(&format!(">\n{text}\n</text>"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_labels() {
        assert_eq!(short(0.0), "0");
        assert_eq!(short(2.5), "2.5");
        assert_eq!(short(250_000.0), "250k");
        assert_eq!(short(1_500_000.0), "1.5M");
    }

    #[test]
    fn spans() {
        let r = span(&Axis::linear("y"), [3.0, 7.0].into_iter());
        assert_eq!(r.start, 0.0);
        assert!(r.end > 7.0);
        let r = span(&Axis::log10("x"), [16.0, 4096.0].into_iter());
        assert_eq!((r.start, r.end), (10.0, 10_000.0));
        let r = span(&percentile_axis(1e4), [2.0, 500.0].into_iter());
        assert_eq!((r.start, r.end), (1.0, 1e4));
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
                point_labels: vec![],
            }],
        };
        let svg = render(&c).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("t &lt;&amp;&gt;"));
        assert!(svg.contains("<polyline"));
        for text in ["99.9%", "50%", "slim", "ms", "s"] {
            assert!(has_text(&svg, text), "no <text> {text:?} in {svg}");
        }
        assert!(!has_text(&svg, "99.999%"), "tick beyond the data");
        assert!(svg.trim_end().ends_with("</svg>"));
    }
}
