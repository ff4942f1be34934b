//! Server-side counters, read before and after a run so that the report can
//! cross-check what the subscribers counted: slim-node's Prometheus
//! `/metrics`, or nats-server's monitoring `/varz` (`nats-server -m PORT`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// slim-node: Prometheus text at /metrics.
    Slim,
    /// nats-server: JSON at /varz.
    Nats,
}

/// How long one scrape may take, connect to last body byte.
const TIMEOUT: Duration = Duration::from_secs(5);

/// One pooled plain-HTTP client for the whole process: the fleet probes
/// scrape every node several times a second, so connections are reused.
fn client() -> &'static Client<HttpConnector, Empty<Bytes>> {
    static CLIENT: OnceLock<Client<HttpConnector, Empty<Bytes>>> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(TIMEOUT));
        Client::builder(TokioExecutor::new()).build(http)
    })
}

/// HTTP GET of `path`; returns the body (an error unless 200).
pub(crate) async fn get(addr: SocketAddr, path: &str) -> Result<String> {
    let url = format!("http://{addr}{path}");
    let uri: hyper::Uri = url.parse().with_context(|| format!("{url}: not a URI"))?;
    let fetch = async {
        let resp = client().get(uri).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    };
    let (status, body) = tokio::time::timeout(TIMEOUT, fetch)
        .await
        .with_context(|| format!("{url}: timed out after {TIMEOUT:?}"))?
        .with_context(|| url.clone())?;
    if status != hyper::StatusCode::OK {
        bail!("{url}: HTTP {status}");
    }
    String::from_utf8(body.to_vec()).with_context(|| format!("{url}: body is not UTF-8"))
}

/// `name{labels}` → value, from Prometheus text exposition. Labels are
/// written sorted by name (`a="1",b="2"`), whatever order the exporter used.
/// Histograms and summaries are left out except their `_sum` and `_count`
/// series, which the parser passes through as plain samples.
pub(crate) fn parse_prometheus(body: &str) -> BTreeMap<String, f64> {
    // Reading from a &str cannot fail, so neither can the parse.
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("in-memory lines cannot fail to read");
    scrape
        .samples
        .into_iter()
        .filter_map(|s| {
            let v = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(_) | prometheus_parse::Value::Summary(_) => {
                    return None;
                }
            };
            let key = if s.labels.is_empty() {
                s.metric
            } else {
                format!("{}{{{}}}", s.metric, s.labels)
            };
            Some((key, v))
        })
        .collect()
}

/// Every series of a Prometheus `/metrics` endpoint, `name{labels}` → value.
pub(crate) async fn scrape(addr: SocketAddr) -> Result<BTreeMap<String, f64>> {
    Ok(parse_prometheus(&get(addr, "/metrics").await?))
}

/// The counters of interest, by report name.
pub async fn read(kind: Kind, addr: SocketAddr) -> Result<BTreeMap<&'static str, f64>> {
    let mut out = BTreeMap::new();
    match kind {
        Kind::Slim => {
            let m = parse_prometheus(&get(addr, "/metrics").await?);
            let g = |k: &str| m.get(k).copied().unwrap_or(0.0);
            out.insert("deliveries", g("slim_deliveries_total"));
            out.insert(
                "dropped_slow_consumer",
                g("slim_messages_dropped_total{reason=\"slow_consumer\"}"),
            );
            out.insert(
                "dropped_no_route",
                g("slim_messages_dropped_total{reason=\"no_route\"}"),
            );
            out.insert(
                "slow_consumer_disconnects",
                g("slim_slow_consumer_events_total{action=\"disconnect\"}"),
            );
            out.insert(
                "client_connections",
                g("slim_connections_open{kind=\"client\"}"),
            );
        }
        Kind::Nats => {
            let v: serde_json::Value =
                serde_json::from_str(&get(addr, "/varz").await?).context("parsing /varz")?;
            let g = |k: &str| v.get(k).and_then(|x| x.as_f64()).unwrap_or(0.0);
            out.insert("out_msgs", g("out_msgs"));
            out.insert("in_msgs", g("in_msgs"));
            out.insert("slow_consumers", g("slow_consumers"));
            out.insert("client_connections", g("connections"));
        }
    }
    Ok(out)
}

/// Report entries: counter deltas over the run, and gauges as read at the start.
pub fn diff(
    before: &BTreeMap<&'static str, f64>,
    after: &BTreeMap<&'static str, f64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, a)| {
            let b = before.get(k).copied().unwrap_or(0.0);
            if *k == "client_connections" {
                (format!("server_{k}_at_start"), b as u64)
            } else {
                (format!("server_{k}"), (a - b).max(0.0) as u64)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_text_with_sorted_labels_and_histograms() {
        let body = "# HELP h a histogram\n# TYPE h histogram\n\
                    h_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.3\nh_count 2\n\
                    # TYPE g gauge\ng{b=\"2\",a=\"x y\"} 3.5\n";
        let m = parse_prometheus(body);
        assert_eq!(m["g{a=\"x y\",b=\"2\"}"], 3.5);
        assert_eq!(m["h_count"], 2.0);
        assert_eq!(m["h_sum"], 0.3);
        assert!(!m.keys().any(|k| k.contains("bucket")), "{m:?}");
    }

    /// A one-shot HTTP/1.1 server on loopback answering every request with
    /// `status` and `body`.
    async fn serve_once(status: &'static str, body: &'static str) -> SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                got.extend_from_slice(&buf[..n]);
            }
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(resp.as_bytes()).await.unwrap();
        });
        addr
    }

    #[tokio::test]
    async fn reads_slim_counters_over_http() {
        let addr = serve_once(
            "200 OK",
            "# TYPE slim_deliveries_total counter\nslim_deliveries_total 42\n\
             slim_messages_dropped_total{reason=\"slow_consumer\"} 7\n\
             slim_connections_open{kind=\"client\"} 3\n",
        )
        .await;
        let m = read(Kind::Slim, addr).await.unwrap();
        assert_eq!(m["deliveries"], 42.0);
        assert_eq!(m["dropped_slow_consumer"], 7.0);
        assert_eq!(m["dropped_no_route"], 0.0);
        assert_eq!(m["client_connections"], 3.0);
    }

    #[tokio::test]
    async fn non_200_is_an_error() {
        let addr = serve_once("404 Not Found", "nope").await;
        let e = get(addr, "/metrics").await.unwrap_err();
        assert!(format!("{e:#}").contains("404"), "{e:#}");
    }

    #[test]
    fn parses_prometheus_text() {
        let body = "# HELP x\n# TYPE slim_deliveries_total counter\nslim_deliveries_total 42\n\
                    slim_messages_dropped_total{reason=\"slow_consumer\"} 7\n";
        let m = parse_prometheus(body);
        assert_eq!(m["slim_deliveries_total"], 42.0);
        assert_eq!(
            m["slim_messages_dropped_total{reason=\"slow_consumer\"}"],
            7.0
        );
    }

    #[test]
    fn diffs_counters_and_keeps_gauges() {
        let b = BTreeMap::from([("deliveries", 10.0), ("client_connections", 3.0)]);
        let a = BTreeMap::from([("deliveries", 25.0), ("client_connections", 0.0)]);
        let d = diff(&b, &a);
        assert_eq!(d["server_deliveries"], 15);
        assert_eq!(d["server_client_connections_at_start"], 3);
    }
}
