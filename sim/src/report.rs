//! Markdown tables of [`ScenarioReport`]s.

use std::fmt::Write as _;

use crate::fleet::{Cause, EntryStats, Micros};
use crate::scenario::{Outcome, ScenarioReport};

/// `5.7 kB`, `1.39 MB` (decimal units, three significant digits).
pub fn bytes(b: f64) -> String {
    let (v, unit) = if b < 1e3 {
        return format!("{b:.0} B");
    } else if b < 1e6 {
        (b / 1e3, "kB")
    } else if b < 1e9 {
        (b / 1e6, "MB")
    } else {
        (b / 1e9, "GB")
    };
    format!("{} {unit}", sig3(v))
}

/// A count with three significant digits and k/M/G suffixes.
pub fn count(x: f64) -> String {
    if x < 1e3 {
        return if x.fract() == 0.0 {
            format!("{x:.0}")
        } else {
            sig3(x)
        };
    }
    let (v, unit) = if x < 1e6 {
        (x / 1e3, "k")
    } else if x < 1e9 {
        (x / 1e6, "M")
    } else {
        (x / 1e9, "G")
    };
    format!("{}{unit}", sig3(v))
}

fn sig3(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub fn millis(us: Micros) -> String {
    format!("{:.0}", us as f64 / 1000.0)
}

fn entries(e: EntryStats) -> String {
    format!("{} / {:.0} / {}", e.min, e.avg, e.max)
}

/// The header of the summary table.
pub fn header() -> String {
    "| N | topology | links | scenario | frames/event | bytes/event | bytes/event ÷ links | bytes/event ÷ N | busiest link bytes/event | convergence (ms) | reach (ms) | entries/node min/avg/max | after GC | wall-clock | result |\n\
     |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        .into()
}

fn outcome(o: &Outcome) -> String {
    match o {
        Outcome::Ok => "ok".into(),
        Outcome::Setup(e) => format!("setup: {e}"),
        Outcome::Halted { phase, halt } => format!("{phase}: {halt}"),
        Outcome::Broken { phase, violations } => {
            format!("**INVARIANT BROKEN** ({phase}): {violations}")
        }
    }
}

/// One summary row. Convergence and reach list each phase (`connect /
/// leave`, `down / up`).
pub fn row(r: &ScenarioReport) -> String {
    let mut conv: Vec<String> = r.phases.iter().map(|p| millis(p.convergence)).collect();
    if !matches!(r.outcome, Outcome::Ok | Outcome::Broken { .. }) {
        conv.push("–".into()); // the phase that did not settle
    }
    let conv = conv.join(" / ");
    let reach: Vec<String> = r
        .phases
        .iter()
        .filter_map(|p| p.reach.map(|(t, _)| millis(t)))
        .collect();
    let reach = if reach.is_empty() {
        "–".into()
    } else {
        reach.join(" / ")
    };
    let no_run = matches!(
        r.outcome,
        Outcome::Setup(_)
            | Outcome::Halted { phase: "setup", .. }
            | Outcome::Broken { phase: "setup", .. }
    );
    let (msgs, b, per_link, per_node, link, ent) = if no_run {
        (
            "–".into(),
            "–".into(),
            "–".into(),
            "–".into(),
            "–".into(),
            "–".into(),
        )
    } else {
        // A run stopped by the budget sent at least this much.
        let more = if let Outcome::Halted { .. } = r.outcome {
            "≥ "
        } else {
            ""
        };
        let b = r.per_event(r.total.bytes);
        (
            format!("{more}{}", count(r.per_event(r.total.msgs))),
            format!("{more}{}", bytes(b)),
            format!("{more}{}", bytes(b / r.links.max(1) as f64)),
            format!("{more}{}", bytes(b / r.nodes.max(1) as f64)),
            format!("{more}{}", bytes(r.per_event(r.max_link_bytes))),
            entries(r.entries),
        )
    };
    let gc = r.gc_entries.map_or("–".into(), entries);
    format!(
        "| {} | {} | {} | {} | {msgs} | {b} | {per_link} | {per_node} | {link} | {conv} | {reach} | {ent} | {gc} | {:.2} s | {} |",
        r.nodes,
        r.topology.label(),
        r.links,
        r.scenario.label(),
        r.wall.as_secs_f64(),
        outcome(&r.outcome),
    )
}

/// Per-phase breakdown: what the frames carried and why they were sent.
pub fn detail(r: &ScenarioReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n**N={} {} {}** (seed {}; {} links, diameter {}; setup: {} frames, {}, {:.2} s; \
         busiest link {} frames; peak {} frames in flight on one link; \
         control bytes/s per link {}, busiest directed link {}/s)\n",
        r.nodes,
        r.topology.label(),
        r.scenario.label(),
        r.seed,
        r.links,
        r.diameter,
        count(r.setup.msgs as f64),
        bytes(r.setup.bytes as f64),
        r.setup_wall.as_secs_f64(),
        count(r.max_link_msgs as f64),
        r.peak_in_flight,
        bytes(r.bytes_per_sec_per_link()),
        bytes(r.busiest_link_bytes_per_sec()),
    );
    let _ = writeln!(
        s,
        "| phase | frames | bytes | names present / tombstones | link sets | digests | by cause: frames (paced) | instance / service entries | dropped | refused | route changes | span (ms) |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for p in &r.phases {
        let t = &p.traffic;
        let causes = Cause::ALL
            .iter()
            .filter(|c| t.by_cause[**c as usize].msgs > 0)
            .map(|c| {
                let x = &t.by_cause[*c as usize];
                format!(
                    "{} {} ({})",
                    c.label(),
                    count(x.msgs as f64),
                    count(x.paced as f64),
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} / {} | {} | {} | {} | {} / {} | {} | {} | {} | {} |",
            p.name,
            count(t.msgs as f64),
            bytes(t.bytes as f64),
            count(t.present as f64),
            count(t.absent as f64),
            count(t.links as f64),
            count(t.digests as f64),
            causes,
            count(t.instance_entries as f64),
            count(t.service_entries as f64),
            t.dropped,
            t.refused,
            count(t.route_changes as f64),
            millis(p.span),
        );
    }
    s
}
