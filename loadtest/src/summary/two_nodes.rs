//! The two-node comparison of `summarize`: a throughput scenario run with
//! the subscribers on a second node (`…, across 2 nodes`, `compare.sh`'s
//! `federation` scenario) against the same scenario on one node, SLIM's
//! runs paired by round. NATS has no counterpart here (its clusters are not
//! part of the comparison), so these scenarios have no slim ÷ nats ratio and
//! no headline row.

use serde::Serialize;
use serde_json::Value;

use super::runs::{Scenarios, f, loss_of, stats};
use crate::harness::ACROSS_NODES;
use crate::throughput_report::{fmt_num, is_lossy};

/// Whether a scenario's runs had their subscribers on a second node.
pub(super) fn is_across(runs: &[Value]) -> bool {
    runs.iter()
        .any(|v| v.get("across_nodes").and_then(Value::as_bool) == Some(true))
}

/// One scenario across two nodes against the same on one node.
#[derive(Debug, Clone, Serialize)]
pub struct TwoNodeRow {
    pub scenario: String,
    /// The one-node scenario it is paired with ("" when none ran).
    pub baseline: String,
    /// Deliveries/s across ÷ on one node, paired by round: (median, min, max).
    pub ratio: Option<(f64, f64, f64)>,
    /// Rounds where both runs lost ≤ the limit; only these give a ratio.
    pub clean_rounds: usize,
    pub rounds: usize,
    pub across_deliveries_per_s: f64,
    pub one_node_deliveries_per_s: f64,
    pub across_loss_pct_median: f64,
    pub across_loss_pct_max: f64,
    pub one_node_loss_pct_median: f64,
}

/// Every across-two-nodes scenario with its one-node baseline (SLIM runs).
pub(super) fn rows(by: &Scenarios) -> Vec<TwoNodeRow> {
    let mut out = Vec::new();
    for (scenario, (kind, runs)) in by {
        if kind != "throughput" || !is_across(&runs.slim) {
            continue;
        }
        let base_name = scenario.strip_suffix(ACROSS_NODES).unwrap_or(scenario);
        let base = by
            .iter()
            .find(|(name, (k, r))| name == base_name && k == "throughput" && !is_across(&r.slim));
        let one: &[Value] = base.map_or(&[], |(_, (_, r))| &r.slim);
        let pairs: Vec<(&Value, &Value)> = runs.slim.iter().zip(one).collect();
        let clean: Vec<f64> = pairs
            .iter()
            .filter(|(a, o)| !is_lossy(loss_of(a)) && !is_lossy(loss_of(o)))
            .filter_map(|(a, o)| {
                let (x, y) = (f(a, &["deliveries_per_s"])?, f(o, &["deliveries_per_s"])?);
                (y > 0.0).then(|| x / y)
            })
            .collect();
        let median = |rs: &[Value], path: &[&str]| {
            let xs: Vec<f64> = rs.iter().filter_map(|v| f(v, path)).collect();
            stats(&xs).map_or(f64::NAN, |s| s.0)
        };
        let losses: Vec<f64> = runs.slim.iter().map(loss_of).collect();
        let one_losses: Vec<f64> = one.iter().map(loss_of).collect();
        out.push(TwoNodeRow {
            scenario: scenario.clone(),
            baseline: base.map(|(n, _)| n.clone()).unwrap_or_default(),
            ratio: stats(&clean),
            clean_rounds: clean.len(),
            rounds: pairs.len(),
            across_deliveries_per_s: median(&runs.slim, &["deliveries_per_s"]),
            one_node_deliveries_per_s: median(one, &["deliveries_per_s"]),
            across_loss_pct_median: stats(&losses).map_or(f64::NAN, |s| s.0),
            across_loss_pct_max: stats(&losses).map_or(f64::NAN, |s| s.2),
            one_node_loss_pct_median: stats(&one_losses).map_or(f64::NAN, |s| s.0),
        });
    }
    out
}

pub(super) fn format(rows: &[TwoNodeRow]) -> String {
    let mut out = String::from(
        "\n== two nodes: slim deliveries/s with the subscribers on a second node (over a peer \
         link) ÷ on the publishers' node (paired by round; rounds where both lost ≤0.1 %)\n",
    );
    for r in rows {
        if r.baseline.is_empty() {
            out.push_str(&format!(
                "  {}  NO ONE-NODE RUN of the same scenario: no ratio\n",
                r.scenario
            ));
            continue;
        }
        let ratio = r.ratio.map_or("-".to_owned(), |(m, lo, hi)| {
            format!("{m:.3}× ({lo:.2}–{hi:.2})")
        });
        out.push_str(&format!(
            "  {}  vs {}\n    slim  {ratio}, {}/{} rounds clean: {} vs {} dlv/s; loss {:.3} % \
             (max {:.3} %{}; one node {:.3} %)\n",
            r.scenario,
            r.baseline,
            r.clean_rounds,
            r.rounds,
            fmt_num(r.across_deliveries_per_s),
            fmt_num(r.one_node_deliveries_per_s),
            r.across_loss_pct_median,
            r.across_loss_pct_max,
            if is_lossy(r.across_loss_pct_max) {
                ", LOSSY"
            } else {
                ""
            },
            r.one_node_loss_pct_median,
        ));
    }
    out
}
