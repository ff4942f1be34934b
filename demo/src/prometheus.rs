//! Optional Prometheus: started scraping every node, queried for the per-node routed-message rates.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::process::Command;

use crate::demo::Demo;
use crate::procs::{Procs, free_tcp};

pub(crate) async fn start_prometheus(demo: &Demo, procs: &mut Procs) -> Result<SocketAddr> {
    let port = free_tcp()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let targets = ["admin-node", "eu-west-node", "us-east-node"]
        .iter()
        .map(|n| {
            format!(
                "      - targets: ['{}']\n        labels: {{node: '{n}'}}\n",
                demo.metrics[n]
            )
        })
        .collect::<String>();
    let cfg = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: slim-node\n    static_configs:\n{targets}"
    );
    let path = demo.work.join("prometheus.yml");
    std::fs::write(&path, cfg)?;
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            demo.work.join("prom-data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(demo.log("prometheus")?)
        .stderr(demo.log("prometheus-err")?)
        .kill_on_drop(true)
        .spawn()
        .context("start prometheus (apt-get install prometheus)")?;
    procs.children.push(("prometheus".into(), child));
    println!("== Prometheus on http://{addr} scraping every node each second");
    Ok(addr)
}

/// Queries the per-node routed-message rate; returns how many nodes show none.
pub(crate) async fn report_prometheus(demo: &Demo, addr: SocketAddr) -> Result<usize> {
    let query = "sum by (node) (rate(slim_messages_routed_total[1m]))";
    println!("   prometheus: {query}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body = http_get(addr, &format!("/api/v1/query?query={}", urlencode(query))).await?;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let mut rates = BTreeMap::new();
        for r in v["data"]["result"].as_array().cloned().unwrap_or_default() {
            let node = r["metric"]["node"].as_str().unwrap_or("?").to_owned();
            let rate: f64 = r["value"][1]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0.0);
            rates.insert(node, rate);
        }
        let missing = ["admin-node", "eu-west-node", "us-east-node"]
            .iter()
            .filter(|n| rates.get(**n).copied().unwrap_or(0.0) <= 0.0)
            .count();
        if missing == 0 || Instant::now() > deadline {
            demo.rec
                .write(&serde_json::json!({ "t": "prometheus", "query": query, "rates": rates }));
            for (n, r) in &rates {
                println!(
                    "   {}   {n:<13} {r:.3} routed messages/s",
                    if *r > 0.0 { "ok  " } else { "FAIL" }
                );
            }
            return Ok(missing);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    Ok(buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}
