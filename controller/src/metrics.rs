//! Controller metric names (Prometheus, via the `metrics` crate).

/// Gauge, `state` = `connected` (live controller connection) or `known`
/// (connected or within the plan grace).
pub const NODES: &str = "slim_controller_nodes";
/// Gauge: links in the current plan.
pub const LINKS_PLANNED: &str = "slim_controller_links_planned";
/// Gauge: links reported `Up` by nodes (each side counts).
pub const LINKS_UP: &str = "slim_controller_links_up";
/// Gauge: records in the audit trail.
pub const AUDIT_RECORDS: &str = "slim_controller_audit_records";
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
