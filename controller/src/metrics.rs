//! Controller metric names (Prometheus, via the `metrics` crate), their HELP
//! text, and recorder setup.

use metrics::{Unit, counter, describe_counter, describe_gauge, gauge};

/// Gauge, `state` = `connected` (live controller connection) or `known`
/// (connected or within the plan grace).
pub const NODES: &str = "slim_controller_nodes";
/// Gauge: links in the current plan.
pub const LINKS_PLANNED: &str = "slim_controller_links_planned";
/// Gauge: links reported `Up` by nodes (each side counts).
pub const LINKS_UP: &str = "slim_controller_links_up";
/// Gauge: records in the audit trail (`_stored` keeps it apart from the
/// `…_audit_records_total` counter family).
pub const AUDIT_RECORDS: &str = "slim_controller_audit_records_stored";
/// Counter: audit records stored since start.
pub const AUDIT_RECORDS_TOTAL: &str = "slim_controller_audit_records_total";
/// Counter, `reason`: connections or registrations refused.
pub const REFUSED_TOTAL: &str = "slim_controller_refused_total";
/// Counter, `reason`: malformed frames (the connection is closed).
pub const MALFORMED_TOTAL: &str = "slim_controller_malformed_total";
pub const REGISTRATIONS_TOTAL: &str = "slim_controller_registrations_total";
pub const SET_PEERS_TOTAL: &str = "slim_controller_set_peers_total";
pub const ADMIN_REQUESTS_TOTAL: &str = "slim_controller_admin_requests_total";
/// Counter, `kind` = full (a complete full report), delta: node reports
/// received.
pub const REPORTS_TOTAL: &str = "slim_controller_reports_total";
/// Counter: full reports asked of nodes whose view was out of step.
pub const RESYNCS_TOTAL: &str = "slim_controller_report_resyncs_total";
/// Gauge = 1, labels `version`, `git_sha`: the controller's build.
pub const BUILD_INFO: &str = "slim_build_info";

/// Registers every controller metric's HELP text and unit, the process
/// metrics' too, and creates the known label values at 0 (so alerts and
/// dashboards see a series before its first event).
pub fn describe() {
    use Unit::Count;
    describe_gauge!(
        NODES,
        Count,
        "Registered nodes by state (connected = live connection; known = still planned, incl. grace)."
    );
    describe_gauge!(LINKS_PLANNED, Count, "Links in the current plan.");
    describe_gauge!(
        LINKS_UP,
        Count,
        "Links reported up by nodes (each end counts)."
    );
    describe_gauge!(AUDIT_RECORDS, Count, "Records in the audit trail.");
    describe_counter!(
        AUDIT_RECORDS_TOTAL,
        Count,
        "Audit records stored since start."
    );
    describe_counter!(REFUSED_TOTAL, Count, "Callers refused, by reason.");
    describe_counter!(
        MALFORMED_TOTAL,
        Count,
        "Connections closed for bad input, by reason."
    );
    describe_counter!(REGISTRATIONS_TOTAL, Count, "Node registrations.");
    describe_counter!(SET_PEERS_TOTAL, Count, "Dial sets pushed to nodes.");
    describe_counter!(ADMIN_REQUESTS_TOTAL, Count, "Admin requests answered.");
    describe_counter!(
        REPORTS_TOTAL,
        Count,
        "Node reports received, by kind (full, delta)."
    );
    describe_counter!(
        RESYNCS_TOTAL,
        Count,
        "Full reports asked of nodes whose delta did not follow on."
    );
    describe_gauge!(
        BUILD_INFO,
        Count,
        "Always 1; the labels name the build (version, git_sha)."
    );
    for state in ["connected", "known"] {
        gauge!(NODES, "state" => state).increment(0.0);
    }
    gauge!(LINKS_PLANNED).increment(0.0);
    gauge!(LINKS_UP).increment(0.0);
    for kind in ["full", "delta"] {
        counter!(REPORTS_TOTAL, "kind" => kind).increment(0);
    }
    for reason in ["unauthorized", "no_identity", "register", "max_connections"] {
        counter!(REFUSED_TOTAL, "reason" => reason).increment(0);
    }
    counter!(REGISTRATIONS_TOTAL).increment(0);
    counter!(SET_PEERS_TOTAL).increment(0);
    counter!(ADMIN_REQUESTS_TOTAL).increment(0);
    counter!(AUDIT_RECORDS_TOTAL).increment(0);
    counter!(RESYNCS_TOTAL).increment(0);
    gauge!(
        BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "git_sha" => option_env!("SLIM_GIT_SHA").unwrap_or("unknown")
    )
    .set(1.0);
    metrics_process::Collector::default().describe();
}

/// Installs the controller process's Prometheus recorder and describes its
/// metrics.
pub fn install()
-> Result<metrics_exporter_prometheus::PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let h = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    describe();
    Ok(h)
}
