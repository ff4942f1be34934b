//! The controller's /metrics passes `promtool check metrics` (its own test
//! process: one metrics recorder per process). Needs promtool (Debian
//! package `prometheus`, `scripts/install-deps.sh`).

mod lint;

use slim_controller::ControllerConfig;
use slim_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_metrics_pass_promtool() {
    init_tracing();
    let prom = slim_controller::metrics::install().expect("install recorder");
    let addr = slim_controller::http::serve("127.0.0.1:0".parse().unwrap(), prom)
        .await
        .expect("metrics endpoint");
    let pki = Pki::new("example.org");
    let dir = tempfile::tempdir().unwrap();
    let cfg = ControllerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().to_owned());
    let ctl = slim_controller::start(cfg, &pki.identity("controller"))
        .await
        .expect("start controller");

    let text = lint::http_get(addr, "/metrics").await;
    lint::check_metrics("controller", &text);
    for needed in [
        "# HELP slim_controller_audit_records_stored ",
        "# HELP process_resident_memory_bytes ",
        "slim_build_info{",
        "slim_controller_nodes{state=\"connected\"} 0",
        "slim_controller_reports_total{kind=\"delta\"} 0",
    ] {
        assert!(text.contains(needed), "/metrics lacks {needed:?}:\n{text}");
    }
    assert!(
        !text.contains("slim_controller_audit_records "),
        "the old gauge name is still exported"
    );
    assert_eq!(lint::http_get(addr, "/readyz").await.trim(), "ok");
    ctl.shutdown().await;
}
