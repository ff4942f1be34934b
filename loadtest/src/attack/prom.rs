//! The node's Prometheus text before and after a run: the series whose names
//! say they are about handshakes, refusals, junk or timeouts, with their
//! deltas. Matching by keyword (not by exact name) lets counters added to the
//! node later show up without this harness knowing them.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// Words of which a `slim_` series name must contain one to be reported.
pub const KEYWORDS: &[&str] = &[
    "handshake",
    "incoming",
    "retry",
    "junk",
    "datagram",
    "partial",
    "refused",
    "timeout",
];

/// Where to scrape: `http://HOST:PORT/PATH` (plain HTTP, as the node serves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsUrl {
    pub addr: SocketAddr,
    pub path: String,
}

pub fn parse_url(url: &str) -> Result<MetricsUrl> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("--metrics-url {url:?}: only http:// URLs are supported");
    };
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    };
    let addr = hostport
        .to_socket_addrs()
        .with_context(|| format!("--metrics-url: resolving {hostport:?} (HOST:PORT)"))?
        .next()
        .with_context(|| format!("--metrics-url: {hostport} resolves to no address"))?;
    Ok(MetricsUrl {
        addr,
        path: path.to_owned(),
    })
}

/// `name{labels} value` lines into a map (see [`crate::serverstats`]).
pub fn parse(body: &str) -> BTreeMap<String, f64> {
    crate::serverstats::parse_prometheus(body)
}

/// Whether a series (`name{labels}`) is one the attack report shows:
/// a `slim_` name with one of [`KEYWORDS`], histogram buckets left out
/// (their `_count` and `_sum` stay).
pub fn of_interest(series: &str) -> bool {
    let name = series.split('{').next().unwrap_or(series);
    name.starts_with("slim_")
        && !name.ends_with("_bucket")
        && KEYWORDS.iter().any(|k| name.contains(k))
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesDelta {
    pub series: String,
    pub before: f64,
    pub after: f64,
    pub delta: f64,
}

/// Every series of interest present in either scrape; a series missing from
/// one side counts as 0 there (a labelled counter appears at its first
/// increment).
pub fn diff(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> Vec<SeriesDelta> {
    let mut keys: Vec<&String> = before
        .keys()
        .chain(after.keys())
        .filter(|k| of_interest(k))
        .collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|k| {
            let b = before.get(k).copied().unwrap_or(0.0);
            let a = after.get(k).copied().unwrap_or(0.0);
            SeriesDelta {
                series: k.clone(),
                before: b,
                after: a,
                delta: a - b,
            }
        })
        .collect()
}

pub async fn scrape(url: &MetricsUrl) -> Result<BTreeMap<String, f64>> {
    Ok(parse(&crate::serverstats::get(url.addr, &url.path).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = parse_url("http://127.0.0.1:9464/metrics").unwrap();
        assert_eq!(u.addr, "127.0.0.1:9464".parse().unwrap());
        assert_eq!(u.path, "/metrics");
        assert_eq!(parse_url("http://127.0.0.1:1").unwrap().path, "/metrics");
        assert!(parse_url("https://127.0.0.1:1/metrics").is_err());
        assert!(parse_url("http://127.0.0.1/metrics").is_err());
    }

    #[test]
    fn picks_series_by_keyword() {
        assert!(of_interest("slim_handshakes_in_progress"));
        assert!(of_interest(
            r#"slim_handshakes_refused_total{reason="untrusted"}"#
        ));
        assert!(of_interest("slim_quic_retry_sent_total"));
        assert!(of_interest("slim_partial_frame_timeouts_total"));
        assert!(!of_interest("slim_messages_routed_total"));
        assert!(!of_interest("process_handshake_total"));
        assert!(!of_interest(r#"slim_handshake_seconds_bucket{le="0.1"}"#));
        assert!(of_interest("slim_handshake_seconds_count"));
        // The keyword must be in the name, not only in a label.
        assert!(!of_interest(
            r#"slim_connections_closed_total{reason="timeout"}"#
        ));
    }

    #[test]
    fn diffs_both_sides() {
        let before = parse(
            "# HELP x\n# TYPE slim_junk_datagrams_total counter\n\
             slim_junk_datagrams_total 10\nslim_handshakes_in_progress 3\n\
             slim_messages_routed_total 5\n",
        );
        let after = parse(
            "slim_junk_datagrams_total 1510\nslim_handshakes_in_progress 1\n\
             slim_retry_sent_total{x=\"a b\"} 7\nslim_messages_routed_total 9\n",
        );
        let d = diff(&before, &after);
        let got: Vec<(&str, f64)> = d.iter().map(|s| (s.series.as_str(), s.delta)).collect();
        assert_eq!(
            got,
            vec![
                ("slim_handshakes_in_progress", -2.0),
                ("slim_junk_datagrams_total", 1500.0),
                ("slim_retry_sent_total{x=\"a b\"}", 7.0),
            ]
        );
        assert_eq!(d[2].before, 0.0);
    }
}
