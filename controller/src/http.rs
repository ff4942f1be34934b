//! The HTTP endpoint for /metrics, /healthz and /readyz, on hyper (HTTP/1.1
//! only, plain TCP: the endpoint is for scrapers and probes on a trusted
//! network). The node serves its own routes through [`serve_routes`]; the
//! controller's are [`serve`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
pub use hyper::StatusCode;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

/// Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A slow or silent client may hold a connection this long for its request
/// head; after that hyper closes it.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// One answer of an endpoint: status, content type, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    pub fn text(status: StatusCode, body: impl Into<String>) -> Self {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    /// The Prometheus rendering of `prom`, after refreshing the process
    /// metrics (they are sampled at scrape time).
    pub fn metrics(prom: &PrometheusHandle, process: &metrics_process::Collector) -> Self {
        process.collect();
        Reply {
            status: StatusCode::OK,
            content_type: METRICS_CONTENT_TYPE,
            body: prom.render(),
        }
    }

    pub fn not_found() -> Self {
        Reply::text(StatusCode::NOT_FOUND, "not found\n")
    }
}

/// Routes a GET (or HEAD) path to its answer.
pub type Routes = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// Binds `addr` and serves `routes` until the process ends; returns the
/// bound address (useful with port 0).
pub async fn serve_routes(addr: SocketAddr, routes: Routes) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "metrics listening on http://{local}/metrics");
    tokio::spawn(accept_loop(listener, routes));
    Ok(local)
}

/// Connections served at once; more are closed at once (scrapers and probes
/// need a handful; this bounds what a flood of idle sockets can hold).
const MAX_CONNECTIONS: usize = 128;
const WARN_EVERY: Duration = Duration::from_secs(10);

async fn accept_loop(listener: TcpListener, routes: Routes) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let (mut refused, mut last_warn) = (0u64, None);
    loop {
        let sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            Err(e) => {
                // Out of file descriptors and the like: wait a moment
                // instead of spinning on the error.
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            refused += 1;
            // At most one line per 10 s, with the count since the last one.
            if last_warn.is_none_or(|t: tokio::time::Instant| t.elapsed() >= WARN_EVERY) {
                tracing::warn!(
                    max = MAX_CONNECTIONS,
                    refused,
                    "metrics endpoint: too many connections; closed {refused} new one(s)"
                );
                last_warn = Some(tokio::time::Instant::now());
                refused = 0;
            }
            continue;
        };
        let routes = Arc::clone(&routes);
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req| answer(Arc::clone(&routes), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(sock), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics endpoint: connection ended with an error");
            }
        });
    }
}

fn answer(
    routes: Routes,
    req: Request<Incoming>,
) -> impl Future<Output = Result<Response<Full<Bytes>>, std::convert::Infallible>> {
    let reply = if req.method() == Method::GET || req.method() == Method::HEAD {
        routes(req.uri().path())
    } else {
        Reply::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
    };
    let mut resp = Response::new(Full::new(Bytes::from(reply.body)));
    *resp.status_mut() = reply.status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    std::future::ready(Ok(resp))
}

/// The controller's endpoint: /metrics, and /healthz and /readyz (the
/// controller is ready once it serves).
pub async fn serve(addr: SocketAddr, prom: PrometheusHandle) -> std::io::Result<SocketAddr> {
    let process = metrics_process::Collector::default();
    serve_routes(
        addr,
        Arc::new(move |path: &str| match path {
            "/metrics" => Reply::metrics(&prom, &process),
            "/healthz" | "/readyz" => Reply::text(StatusCode::OK, "ok\n"),
            _ => Reply::not_found(),
        }),
    )
    .await
}
