//! The `slim-node` binary's library half: configuration, the metrics and
//! health endpoint, and recorder setup — usable from tests in-process.
#![forbid(unsafe_code)]

pub mod check;
pub mod config;
pub mod controller;
pub mod http;
pub mod reload;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Installs the process-wide Prometheus recorder with explicit buckets for
/// every `_seconds` histogram, and registers every metric's HELP text (the
/// node's, its controller link's, the process metrics') and the known label
/// values at 0.
pub fn install_metrics() -> Result<PrometheusHandle, BuildError> {
    let h = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            slim_actors::metrics::SECONDS_BUCKETS,
        )?
        .install_recorder()?;
    slim_actors::metrics::describe();
    slim_actors::metrics::init_zero();
    controller::describe();
    metrics_process::Collector::default().describe();
    Ok(h)
}
