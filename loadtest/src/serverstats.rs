//! Server-side counters, read before and after a run so that the report can
//! cross-check what the subscribers counted: slim-node's Prometheus
//! `/metrics`, or nats-server's monitoring `/varz` (`nats-server -m PORT`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// slim-node: Prometheus text at /metrics.
    Slim,
    /// nats-server: JSON at /varz.
    Nats,
}

/// HTTP/1.0 GET of `path`; returns the body (an error unless 200).
pub(crate) async fn get(addr: SocketAddr, path: &str) -> Result<String> {
    let fetch = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .with_context(|| format!("http://{addr}{path}: timed out"))?
        .with_context(|| format!("http://{addr}{path}"))?;
    let text = String::from_utf8_lossy(&buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("http://{addr}{path}: malformed response");
    };
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!(
            "http://{addr}{path}: {}",
            head.lines().next().unwrap_or_default()
        );
    }
    Ok(body.to_owned())
}

/// `name{labels}` → value, from Prometheus text exposition.
fn parse_prometheus(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.trim().rsplit_once(' ')?;
            Some((k.trim().to_owned(), v.parse().ok()?))
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
