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
/// every `_seconds` histogram.
pub fn install_metrics() -> Result<PrometheusHandle, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            slim_actors::metrics::SECONDS_BUCKETS,
        )?
        .install_recorder()
}
