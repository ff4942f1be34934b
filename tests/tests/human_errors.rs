//! What a person reads when something is refused: TLS refusals say which side
//! refused, what was wrong and what to check (not rustls's debug form), and
//! the node's own output is JSON on every line in JSON mode, uncoloured when
//! written to a file.
//!
//! The log tests start the real binary: `cargo build --bins -p slim-node`
//! (or `--workspace --bins`) with the same profile as the test.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use slim_client::{Client, ClientConfig};
use slim_tests::netns::bin;
use slim_tests::slim_auth::SpiffeId;
use slim_tests::*;

async fn connect_error(cfg: ClientConfig) -> String {
    match tokio::time::timeout(Duration::from_secs(20), Client::connect(cfg)).await {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(_)) => panic!("the connection should have been refused"),
        Err(_) => panic!("no verdict within 20 s"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refusals_name_the_side_the_reason_and_what_to_check() {
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |_| {}).await;
    let addr = node.local_addr();

    // Our certificate comes from a CA the node does not know (same trust
    // domain name, another key); we trust the node, so only it refuses.
    let evil = Pki::new("example.org");
    let mut mallory = evil.identity("agent/mallory");
    mallory.bundles = pki.ca.bundles();
    let cfg = ClientConfig::new(addr, name("acme/x/mallory"), mallory);
    let text = connect_error(cfg).await;
    eprintln!("refused by the node: {text}");
    assert!(text.contains("the node refused our handshake"), "{text}");
    assert!(
        text.contains(
            "the certificate of spiffe://example.org/agent/mallory is not issued by any CA in the trust bundle for \"example.org\""
        ),
        "{text}"
    );
    assert!(text.contains("Our certificate chains to a CA the node does not trust"), "{text}");
    assert!(!text.contains("OtherError"), "{text}");

    // We do not trust the node's CA: this side refuses, and says so.
    let mut naive = pki.identity("agent/naive");
    naive.bundles = evil.ca.bundles();
    let cfg = ClientConfig::new(addr, name("acme/x/naive"), naive);
    let text = connect_error(cfg).await;
    eprintln!("refused by us: {text}");
    assert!(text.contains("we refused the node's certificate"), "{text}");
    // What the node presented.
    assert!(text.contains("the certificate of spiffe://example.org/node is"), "{text}");
    assert!(text.contains("not in our trust bundle"), "{text}");
    assert!(!text.contains("OtherError"), "{text}");
}

/// Starts the node binary with `args`, its stdout and stderr in `log`, until
/// it printed its "listening on" line; returns the child.
fn spawn_node(dir: &Path, log: &Path, args: &[&str]) -> std::process::Child {
    let pki = Pki::new("example.org");
    let id_dir = dir.join("id");
    let id = SpiffeId::parse("spiffe://example.org/node/logs").expect("id");
    pki.ca
        .issue_to_dir(&id, Duration::from_secs(3600), &id_dir)
        .expect("issue");
    let port = free_udp_port();
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nid = \"logs\"\nlisten = \"127.0.0.1:{port}\"\n\n\
             [identity]\nsource = \"files\"\ndir = {:?}\n\n\
             [authz]\nmode = \"allow_all\"\n\n[metrics]\nlisten = \"\"\n\n\
             [log]\nlevel = \"info\"\n",
            id_dir.display().to_string()
        ),
    )
    .expect("write config");
    let out = std::fs::File::create(log).expect("create log");
    let err = out.try_clone().expect("clone log");
    let mut child = Command::new(bin("slim-node"))
        .arg("--config")
        .arg(&config)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn slim-node");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("listening on") {
            return child;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("slim-node exited ({st}):\n{text}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("slim-node not listening within 20 s:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stop(mut child: std::process::Child) {
    // SIGTERM: the node logs its shutdown, which the checks then cover too.
    let _ = Command::new("kill")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn json_mode_writes_only_json_and_files_get_no_colour() {
    let dir = tempfile::tempdir().expect("tempdir");

    // JSON mode: every line, the readiness line included, is JSON.
    let log = dir.path().join("json.log");
    let child = spawn_node(dir.path(), &log, &["--log-format", "json"]);
    stop(child);
    let text = std::fs::read_to_string(&log).expect("read log");
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no output");
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}\nwhole log:\n{text}"));
        assert!(v.get("level").is_some(), "{l}");
    }
    let ready = lines
        .iter()
        .find(|l| l.contains("listening on"))
        .expect("readiness line");
    let v: serde_json::Value = serde_json::from_str(ready).unwrap();
    assert_eq!(v["fields"]["node_id"], "logs", "{ready}");
    assert!(
        v["fields"]["addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{ready}"
    );

    // Text mode into a file: plain text, no ANSI escapes.
    let log = dir.path().join("text.log");
    let child = spawn_node(dir.path(), &log, &["--log-format", "text"]);
    stop(child);
    let text = std::fs::read_to_string(&log).expect("read log");
    assert!(text.contains("slim-node logs listening on 127.0.0.1:"), "{text}");
    assert!(text.lines().count() >= 2, "expected the shutdown lines too:\n{text}");
    assert!(!text.contains('\u{1b}'), "ANSI escapes in a log file:\n{text:?}");
}
