//! Metrics by the book, checked by Prometheus's own linter: the node's
//! /metrics after real traffic (and a refused handshake) passes
//! `promtool check metrics`; the shipped alert rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`).
//! Needs the Debian package `prometheus` (`scripts/install-deps.sh`), which
//! ships promtool. The controller's output is checked in
//! `promtool_controller.rs` (one metrics recorder per test process).

mod lint;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use lint::{check_metrics, http_get, promtool, sample};
use slim_tests::*;
use slim_wire::Mode;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_metrics_pass_promtool() {
    init_tracing();
    let handle = slim_node::install_metrics().expect("install recorder");
    let ready = Arc::new(AtomicBool::new(true));
    let addr = slim_node::http::serve("127.0.0.1:0".parse().unwrap(), handle, ready)
        .await
        .expect("metrics endpoint");

    let pki = Pki::new("example.org");
    let node = start_node(&pki, |_| {}).await;
    // Traffic, so the histograms and the labelled counters have samples.
    let sub = client(&pki, node.local_addr(), "acme/lint/sub").await;
    let publ = client(&pki, node.local_addr(), "acme/lint/pub").await;
    let chan = name("acme/lint/chan");
    sub.subscribe(&chan).await.unwrap();
    for _ in 0..200 {
        publ.publish(&chan, Mode::Multicast, b"x").await.unwrap();
    }
    for _ in 0..200 {
        next_message(&sub, Duration::from_secs(10)).await;
    }

    // A client that presents no certificate is refused with that reason.
    let bundles = Arc::new(std::sync::RwLock::new(
        pki.identity("anyone").bundles.clone(),
    ));
    let tls = slim_auth::tls::client_config_server_auth_only(
        bundles,
        &[slim_auth::ALPN_SLIM],
        slim_auth::ServerMatch::Any,
    )
    .unwrap();
    let ep = quic_endpoint(tls);
    let refused = async {
        ep.connect(node.local_addr(), "node")
            .unwrap()
            .await?
            .accept_uni()
            .await
            .map(|_| ())
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(10), refused)
            .await
            .expect("the refusal arrives")
            .is_err(),
        "a client without a certificate got a connection"
    );
    let series = "slim_handshake_refusals_total{reason=\"no_certificate\"}";
    assert_eventually(
        Duration::from_secs(10),
        "no_certificate counted",
        || async { sample(&http_get(addr, "/metrics").await, series) == Some(1.0) },
    )
    .await;

    // Both clients are on this host: their datagrams started at 6,550
    // bytes (sampled once a second).
    for stat in ["min", "max"] {
        let series = format!("slim_path_datagram_bytes{{kind=\"client\",stat=\"{stat}\"}}");
        assert_eventually(Duration::from_secs(10), &series, || async {
            sample(&http_get(addr, "/metrics").await, &series)
                == Some(f64::from(slim_framed::datagrams::LOOPBACK_UDP_PAYLOAD))
        })
        .await;
    }

    let text = http_get(addr, "/metrics").await;
    check_metrics("node", &text);
    for needed in [
        "# HELP slim_connections_open ",
        "# TYPE slim_connections_open gauge",
        "# HELP process_resident_memory_bytes ",
        "# HELP process_cpu_seconds_total ",
        "# HELP process_open_fds ",
        "# HELP process_start_time_seconds ",
        "slim_build_info{",
        // Known label values exist before their first event.
        "slim_authz_denied_total{action=\"subscribe\"} 0",
        "slim_messages_dropped_total{reason=\"slow_consumer\"} 0",
        "slim_handshake_refusals_total{reason=\"expired\"} 0",
    ] {
        assert!(text.contains(needed), "/metrics lacks {needed:?}:\n{text}");
    }
    assert_eq!(
        sample(&text, "slim_connections_open{kind=\"client\"}"),
        Some(2.0)
    );
    assert!(
        !text.contains("slim_connections{"),
        "the old gauge name is still exported"
    );
    assert_eq!(
        http_get(addr, "/healthz").await.trim(),
        "ok",
        "/healthz answers"
    );
    // HTTP/1.0 without keep-alive (slimctl health, the loadtest's and the
    // churn test's scrapers): the answer ends with the connection.
    let old_style = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET /readyz HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).map(|_| out)
    })
    .await
    .unwrap()
    .expect("the endpoint closes after an HTTP/1.0 answer");
    assert!(
        old_style.starts_with("HTTP/1.0 200") || old_style.starts_with("HTTP/1.1 200"),
        "{old_style}"
    );
    assert!(old_style.ends_with("ready\n"), "{old_style}");
    node.shutdown(Duration::from_secs(1)).await;
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let dir = root().join("deploy/prometheus");
    for args in [
        vec!["check", "rules", "slim-alerts.yml"],
        vec!["test", "rules", "slim-alerts.test.yml"],
        vec!["check", "config", "prometheus.yml"],
    ] {
        let out = Command::new(promtool())
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("run promtool");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("promtool {}:\n{said}", args.join(" "));
        assert!(
            out.status.success(),
            "promtool {} failed ({:?}):\n{said}",
            args.join(" "),
            out.status.code()
        );
        assert!(
            said.contains("SUCCESS"),
            "promtool {}: {said}",
            args.join(" ")
        );
    }
}
