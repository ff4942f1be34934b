//! The metrics documentation, the metric names in the code and the Grafana
//! dashboard agree with each other.

use std::collections::BTreeSet;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Every `slim_…` identifier in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("slim_") {
        let start = i + pos;
        let mut end = start + 5;
        while end < b.len()
            && (b[end].is_ascii_lowercase() || b[end] == b'_' || b[end].is_ascii_digit())
        {
            end += 1;
        }
        let name = &text[start..end];
        let name = name.strip_suffix("_bucket").unwrap_or(name);
        if start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_') {
            out.insert(name.to_string());
        }
        i = end;
    }
    out
}

#[test]
fn every_exported_metric_is_documented_and_the_dashboard_uses_only_real_ones() {
    // The node's metrics, its controller link's, and the controller's.
    let code: String = [
        "actors/src/metrics.rs",
        "node/src/controller.rs",
        "controller/src/metrics.rs",
    ]
    .iter()
    .map(|f| std::fs::read_to_string(root().join(f)).unwrap())
    .collect();
    let exported: BTreeSet<String> = code
        .lines()
        .filter(|l| l.trim_start().starts_with("pub const") && l.contains("\"slim_"))
        .filter_map(|l| l.split('"').nth(1).map(str::to_owned))
        .collect();
    assert!(exported.len() >= 15, "found {exported:?}");
    let doc = std::fs::read_to_string(root().join("docs/METRICS.md")).unwrap();
    let documented = metric_names(&doc);
    let missing: Vec<_> = exported.difference(&documented).collect();
    assert!(missing.is_empty(), "undocumented metrics: {missing:?}");

    let dash = std::fs::read_to_string(root().join("deploy/grafana/slim-node.json")).unwrap();
    let _: serde_json::Value = serde_json::from_str(&dash).expect("dashboard is valid JSON");
    let used = metric_names(&dash);
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "dashboard queries unknown metrics: {unknown:?}"
    );
    assert!(used.len() >= 8);
}
