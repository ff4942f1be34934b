//! A real Prometheus server scrapes a node under load; its query API must
//! return a sensible routed-message rate and a routing-latency quantile.
//! Needs the Debian package `prometheus` (`scripts/install-deps.sh` installs it).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use slim_tests::*;
use slim_wire::Mode;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

fn urlencode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs an instant query; returns the first sample's value, if any.
fn query(prom: SocketAddr, q: &str) -> Option<f64> {
    let body = http_get(prom, &format!("/api/v1/query?query={}", urlencode(q))).ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    // Chunked transfer encoding is not used by Prometheus for small answers.
    let s = v["data"]["result"][0]["value"][1].as_str()?;
    s.parse().ok().filter(|x: &f64| x.is_finite())
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_rate_and_latency_quantile() {
    init_tracing();
    let prom_bin = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("the prometheus binary is missing: run scripts/install-deps.sh (Debian package `prometheus`)");

    let handle = slim_node::install_metrics().expect("install recorder");
    let ready = Arc::new(AtomicBool::new(true));
    let metrics_addr = slim_node::http::serve("127.0.0.1:0".parse().unwrap(), handle, ready)
        .await
        .expect("metrics endpoint");

    let pki = Pki::new("example.org");
    let node = start_node(&pki, |_| {}).await;
    let sub = client(&pki, node.local_addr(), "acme/prom/sub").await;
    let publ = Arc::new(client(&pki, node.local_addr(), "acme/prom/pub").await);
    let chan = name("acme/prom/chan");
    sub.subscribe(&chan).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let web = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: slim-node\n    static_configs:\n      - targets: ['{metrics_addr}']\n"
        ),
    )
    .unwrap();
    let _prom = KillOnDrop(
        Command::new(prom_bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );

    // Load: a steady ~2000 msg/s for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let load = {
        let (publ, chan, stop, sent) = (
            Arc::clone(&publ),
            chan.clone(),
            Arc::clone(&stop),
            Arc::clone(&sent),
        );
        tokio::spawn(async move {
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..20 {
                    publ.publish(&chan, Mode::Multicast, &[0u8; 64])
                        .await
                        .unwrap();
                }
                sent.fetch_add(20, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            sent.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
        })
    };
    let drain = tokio::spawn(async move { while sub.next_message().await.is_some() {} });

    // Wait until Prometheus has a rate over real scrapes.
    let rate_q = "sum(rate(slim_messages_routed_total{mode=\"multicast\"}[5s]))";
    let quantile_q =
        "histogram_quantile(0.99, sum(rate(slim_routing_seconds_bucket[10s])) by (le))";
    let started = Instant::now();
    let deadline = started + Duration::from_secs(40);
    let (mut rate, mut p99) = (None, None);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rate = tokio::task::spawn_blocking(move || query(web, rate_q))
            .await
            .unwrap();
        p99 = tokio::task::spawn_blocking(move || query(web, quantile_q))
            .await
            .unwrap();
        // Give the 5 s rate window a few full scrapes before judging it.
        if rate.is_some_and(|r| r > 0.0)
            && p99.is_some_and(|q| q > 0.0)
            && started.elapsed() > Duration::from_secs(8)
        {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let offered = load.await.unwrap();
    drain.abort();
    let rate = rate.expect("Prometheus returned no routed-message rate");
    let p99 = p99.expect("Prometheus returned no routing-latency quantile");
    eprintln!(
        "prometheus: {rate_q} = {rate:.0} msg/s (offered {offered:.0}/s); {quantile_q} = {p99:.6} s"
    );
    assert!(
        rate > offered * 0.3 && rate < offered * 3.0,
        "routed rate {rate} not in line with the offered {offered} msg/s"
    );
    assert!(
        p99 > 0.0 && p99 < 1.0,
        "p99 routing latency {p99}s is not sensible"
    );
    node.shutdown(Duration::from_secs(1)).await;
}
