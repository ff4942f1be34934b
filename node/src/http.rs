//! The node's /metrics, /healthz and /readyz, served by the shared hyper
//! endpoint of [`slim_controller::http`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use metrics_exporter_prometheus::PrometheusHandle;
use slim_controller::http::StatusCode;
use slim_controller::http::{Reply, serve_routes};

/// `/readyz` answers 200 while `ready` is set (the QUIC listener is up and
/// the node is not draining), 503 otherwise.
pub async fn serve(
    addr: SocketAddr,
    prom: PrometheusHandle,
    ready: Arc<AtomicBool>,
) -> std::io::Result<SocketAddr> {
    let process = metrics_process::Collector::default();
    serve_routes(
        addr,
        Arc::new(move |path: &str| match path {
            "/metrics" => Reply::metrics(&prom, &process),
            "/healthz" => Reply::text(StatusCode::OK, "ok\n"),
            "/readyz" if ready.load(Ordering::Relaxed) => Reply::text(StatusCode::OK, "ready\n"),
            "/readyz" => Reply::text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            _ => Reply::not_found(),
        }),
    )
    .await
}
