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

/// A throughput report as `compare.sh` collects it.
fn thr(sys: &str, subs: u64, stalled: u64, dlv: f64, loss: f64) -> Value {
    let scenario = if stalled > 0 {
        format!("1->{subs} 16B multicast, {stalled} stalled")
    } else {
        format!("1->{subs} 16B multicast")
    };
    serde_json::json!({
        "kind": "throughput", "system": sys, "scenario": scenario,
        "pubs": 1, "subs": subs, "stalled_subs": stalled, "size_bytes": 16,
        "mode": "multicast", "deliveries_per_s": dlv, "loss_pct": loss,
        "lossy": is_lossy(loss),
        "cpu": {"seconds": 1.0, "seconds_per_million_deliveries": 1.0},
        "counters": {}
    })
}

fn file_of(lines: &[Value]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.jsonl");
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(&p, text.join("\n")).unwrap();
    (dir, p)
}

#[test]
fn the_loss_limit_is_inclusive_and_nan_is_lossy() {
    assert!(!is_lossy(0.0));
    assert!(!is_lossy(LOSS_LIMIT_PCT));
    assert!(is_lossy(0.1001));
    assert!(is_lossy(f64::NAN));
}

/// Round 2's slim run lost 5 %: it has no rate at ≤0.1 % loss, so the
/// headline ratio comes from rounds 1 and 3 only, while the raw ratio
/// table keeps all three and shows the loss next to them.
#[test]
fn headline_counts_only_rounds_where_both_runs_are_clean() {
    let (_d, p) = file_of(&[
        thr("slim", 1, 0, 300.0, 0.0),
        thr("nats", 1, 0, 100.0, 0.0),
        thr("nats", 1, 0, 100.0, 0.0),
        thr("slim", 1, 0, 400.0, 5.0),
        thr("slim", 1, 0, 200.0, 0.05),
        thr("nats", 1, 0, 100.0, 0.1),
    ]);
    let by = load(&p).unwrap();
    let h = headline(&by);
    assert_eq!(h.len(), 1);
    assert_eq!((h[0].clean_rounds, h[0].rounds), (2, 3));
    assert_eq!(h[0].ratio, Some((2.5, 2.0, 3.0)));
    assert_eq!(h[0].slim.lossy_runs, 1);
    assert_eq!(h[0].nats.lossy_runs, 0);
    assert!(h[0].verdict.contains("slim LOSSY in 1/3 runs"), "{h:?}");

    let raw = ratios(&p).unwrap();
    assert_eq!(stats(&raw[0].ratios), Some((3.0, 2.0, 4.0)));
    assert_eq!(raw[0].loss, Some((0.05, 0.0)));

    let s = summarize(&p).unwrap();
    assert!(s.contains("HEADLINE"), "{s}");
    assert!(s.contains("2.500× (2.00–3.00)"), "{s}");
    // Raw rows: loss right after deliveries/s, the lossy run marked.
    let lossy_row = s
        .lines()
        .find(|l| l.contains("       400 "))
        .unwrap_or_else(|| panic!("no raw row for the lossy run in {s}"));
    assert!(lossy_row.contains("     5.000"), "{lossy_row}");
    assert!(lossy_row.ends_with("LOSSY"), "{lossy_row}");
    let clean_row = s.lines().find(|l| l.contains("       300 ")).unwrap();
    assert!(!clean_row.contains("LOSSY"), "{clean_row}");
    // The ratio table carries both median losses.
    assert!(s.contains("0.050 / 0.000"), "{s}");
}

#[test]
fn a_scenario_where_slim_always_loses_has_no_headline_ratio() {
    let (_d, p) = file_of(&[
        thr("slim", 100, 0, 900.0, 30.0),
        thr("nats", 100, 0, 300.0, 0.0),
    ]);
    let h = headline(&load(&p).unwrap());
    assert_eq!(h[0].ratio, None);
    assert!(h[0].verdict.contains("slim LOSSY"), "{h:?}");
    assert!(h[0].verdict.contains("no ratio"), "{h:?}");
    let s = summarize(&p).unwrap();
    let row = s
        .lines()
        .skip_while(|l| !l.contains("HEADLINE"))
        .find(|l| l.starts_with("1->100"))
        .unwrap();
    assert!(row.contains(" - "), "{row}");
    assert!(
        !row.contains("3.000×"),
        "the raw ratio must not be the headline: {row}"
    );
    // The raw ratio (3×) stays in the detail table, flagged.
    assert!(s.contains("30.000 / 0.000  LOSSY"), "{s}");
}

#[test]
fn only_nats_lossy_says_so_and_keeps_no_ratio_from_that_round() {
    let (_d, p) = file_of(&[thr("slim", 1, 0, 100.0, 0.0), thr("nats", 1, 0, 100.0, 4.0)]);
    let h = headline(&load(&p).unwrap());
    assert!(h[0].verdict.starts_with("nats LOSSY in 1/1 runs"), "{h:?}");
    assert!(!h[0].verdict.contains("slim's rate"), "{h:?}");
    assert_eq!(h[0].clean_rounds, 0);
}

/// The stalled scenario is compared with its baseline (same readers,
/// nobody stalled) per system and kept out of the headline.
#[test]
fn slow_consumer_rows_pair_with_the_baseline() {
    let mut slim_with = thr("slim", 11, 1, 900.0, 0.0);
    slim_with["stalled_cut_after_s"] = 2.5.into();
    slim_with["server_rss_peak_kib"] = (40.0 * 1024.0).into();
    slim_with["counters"] = serde_json::json!({
        "server_slow_consumer_disconnects": 1, "server_dropped_slow_consumer": 700
    });
    let mut nats_with = thr("nats", 11, 1, 500.0, 0.5);
    nats_with["counters"] = serde_json::json!({"server_slow_consumers": 0});
    let (_d, p) = file_of(&[
        thr("slim", 10, 0, 1000.0, 0.0),
        thr("nats", 10, 0, 1000.0, 0.0),
        slim_with,
        nats_with,
    ]);
    let by = load(&p).unwrap();
    let rows = slow_consumer(&by);
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (s, n) = (&rows[0], &rows[1]);
    assert_eq!((s.system.as_str(), n.system.as_str()), ("slim", "nats"));
    assert_eq!(s.baseline, "1->10 16B multicast");
    assert_eq!(s.ratio, Some((0.9, 0.9, 0.9)));
    assert_eq!(n.ratio, Some((0.5, 0.5, 0.5)));
    assert_eq!((s.cut_runs, s.cut_after_s_median), (1, Some(2.5)));
    assert_eq!((n.cut_runs, n.cut_after_s_median), (0, None));
    assert_eq!(s.slow_consumer_cuts, Some(1.0));
    assert_eq!(s.dropped_slow_consumer, Some(700.0));
    assert_eq!(s.with_rss_peak_mib, Some(40.0));
    assert_eq!(n.slow_consumer_cuts, Some(0.0));
    let h = headline(&by);
    assert_eq!(
        h.len(),
        1,
        "the stalled scenario is not a headline row: {h:?}"
    );

    let text = summarize(&p).unwrap();
    assert!(text.contains("slim  with÷without 0.900×"), "{text}");
    assert!(text.contains("cut in 1/1 runs, after 2.50 s"), "{text}");
    assert!(text.contains("nats  with÷without 0.500×"), "{text}");
    assert!(text.contains("readers' loss 0.500 % (max 0.500 %; without 0.000 %) LOSSY"));
    assert!(text.contains("not cut (0/1 runs)"), "{text}");

    let j = summarize_json(&p).unwrap();
    assert_eq!(j["slow_consumer"][0]["ratio"][0], 0.9);
    assert_eq!(j["headline"][0]["scenario"], "1->10 16B multicast");
    assert_eq!(j["loss_limit_pct"], LOSS_LIMIT_PCT);
}

#[test]
fn a_stalled_run_without_baseline_says_so() {
    let (_d, p) = file_of(&[thr("slim", 11, 1, 900.0, 0.0)]);
    let rows = slow_consumer(&load(&p).unwrap());
    assert_eq!(rows[0].ratio, None);
    assert!(summarize(&p).unwrap().contains("NO BASELINE RUN"));
}

/// A 1 -> 1 run on one node or across two (SLIM only, as `compare.sh`'s
/// `federation` scenario makes them).
fn node_run(across: bool, dlv: f64, loss: f64) -> Value {
    let mut v = thr("slim", 1, 0, dlv, loss);
    if across {
        v["scenario"] = format!("1->1 16B multicast{}", crate::harness::ACROSS_NODES).into();
    }
    v["across_nodes"] = across.into();
    v
}

/// Across two nodes ÷ one node is paired round by round among SLIM's runs;
/// a round where either lost over the limit gives no ratio; the across
/// scenario gets no headline row (NATS has none to compare).
#[test]
fn two_nodes_pair_with_the_same_scenario_on_one_node() {
    let (_d, p) = file_of(&[
        node_run(false, 400.0, 0.0),
        thr("nats", 1, 0, 100.0, 0.0),
        node_run(false, 500.0, 0.0),
        thr("nats", 1, 0, 100.0, 0.0),
        node_run(false, 600.0, 0.0),
        thr("nats", 1, 0, 100.0, 0.0),
        node_run(true, 300.0, 0.0),
        node_run(true, 400.0, 0.0),
        node_run(true, 900.0, 2.0),
    ]);
    let by = load(&p).unwrap();
    let rows = two_nodes::rows(&by);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = &rows[0];
    assert_eq!(r.baseline, "1->1 16B multicast");
    assert_eq!((r.clean_rounds, r.rounds), (2, 3));
    // 300/400 and 400/500: median of two is their mean.
    let (m, lo, hi) = r.ratio.unwrap();
    assert!((m - 0.775).abs() < 1e-9 && lo == 0.75 && hi == 0.8, "{r:?}");
    let s = summarize(&p).unwrap();
    assert!(s.contains("== two nodes"), "{s}");
    assert!(s.contains("0.775× (0.75–0.80), 2/3 rounds clean"), "{s}");
    assert!(s.contains("LOSSY"), "the 2 % round is flagged: {s}");
    let head = headline(&by);
    assert_eq!(head.len(), 1, "only the one-node scenario: {head:?}");
    assert_eq!(head[0].scenario, "1->1 16B multicast");
}

/// An across scenario without its one-node run says so instead of a ratio.
#[test]
fn two_nodes_without_a_baseline_say_so() {
    let (_d, p) = file_of(&[node_run(true, 300.0, 0.0)]);
    let s = summarize(&p).unwrap();
    assert!(s.contains("NO ONE-NODE RUN"), "{s}");
}
