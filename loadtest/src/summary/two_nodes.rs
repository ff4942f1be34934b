//! The two-node comparison of `summarize`: a throughput scenario run with
//! the subscribers on a second node (`…, across 2 nodes`, `compare.sh`'s
//! `federation` scenario) against the same scenario on one node, SLIM's
//! runs paired by round. NATS has no counterpart here (its clusters are not
//! part of the comparison), so these scenarios have no slim ÷ nats ratio and
//! no headline row.

use serde::Serialize;
use serde_json::Value;

use super::runs::{Scenarios, SideSummary, clean_ratios, side, stats};
use crate::harness::ACROSS_NODES;
use crate::throughput_report::fmt_num;

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
    pub across: SideSummary,
    pub one_node: SideSummary,
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
        let clean = clean_ratios(&pairs);
        out.push(TwoNodeRow {
            scenario: scenario.clone(),
            baseline: base.map(|(n, _)| n.clone()).unwrap_or_default(),
            ratio: stats(&clean),
            clean_rounds: clean.len(),
            rounds: pairs.len(),
            across: side(&runs.slim),
            one_node: side(one),
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
            fmt_num(r.across.deliveries_per_s),
            fmt_num(r.one_node.deliveries_per_s),
            r.across.loss_pct_median,
            r.across.loss_pct_max,
            if r.across.lossy_runs > 0 {
                ", LOSSY"
            } else {
                ""
            },
            r.one_node.loss_pct_median,
        ));
    }
    out
}
