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
    assert!(
        text.contains("Our certificate chains to a CA the node does not trust"),
        "{text}"
    );
    assert!(!text.contains("OtherError"), "{text}");

    // We do not trust the node's CA: this side refuses, and says so.
    let mut naive = pki.identity("agent/naive");
    naive.bundles = evil.ca.bundles();
    let cfg = ClientConfig::new(addr, name("acme/x/naive"), naive);
    let text = connect_error(cfg).await;
    eprintln!("refused by us: {text}");
    assert!(text.contains("we refused the node's certificate"), "{text}");
    // What the node presented.
    assert!(
        text.contains("the certificate of spiffe://example.org/node is"),
        "{text}"
    );
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
    let _ = Command::new("kill").arg(child.id().to_string()).status();
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
        // A clean start and SIGTERM log no error.
        assert_ne!(v["level"], "ERROR", "{l}");
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
    assert!(
        text.contains("slim-node logs listening on 127.0.0.1:"),
        "{text}"
    );
    assert!(
        text.lines().count() >= 2,
        "expected the shutdown lines too:\n{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "ANSI escapes in a log file:\n{text:?}"
    );
    assert!(
        !text.contains(" ERROR "),
        "an error at a clean shutdown:\n{text}"
    );
}

/// Runs `slimctl ARGS`; returns (exit code, stdout, stderr).
fn slimctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("slimctl"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .env_remove("SLIMCTL_NODE")
        .env_remove("SLIMCTL_IDENTITY")
        .stdin(Stdio::null())
        .output()
        .expect("run slimctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_check_explains_the_outcome_and_expired_svids_fail() {
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |_| {}).await;
    let addr = node.local_addr().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let issue = |ca: &slim_tests::slim_auth::DevCa, path: &str, ttl: Duration| {
        let out = dir.path().join(path.replace('/', "_"));
        let id = SpiffeId::parse(&format!("spiffe://example.org/{path}")).expect("id");
        let identity = ca.issue_to_dir(&id, ttl, &out).expect("issue");
        (out, identity.not_after)
    };

    // Accepted: who the node is, who it took us for; exit 0.
    let (alice, _) = issue(&pki.ca, "ops/alice", Duration::from_secs(3600));
    let alice = alice.to_str().unwrap().to_owned();
    let (code, out, err) = tokio::task::spawn_blocking({
        let (addr, alice) = (addr.clone(), alice.clone());
        move || slimctl(&["identity", "check", "--node", &addr, "--identity", &alice])
    })
    .await
    .unwrap();
    eprintln!("$ slimctl identity check (accepted)\n{out}{err}exit {code}");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("ok: the node spiffe://example.org/node (certificate expires 20"),
        "{out}"
    );
    assert!(
        out.contains("accepted us as spiffe://example.org/ops/alice"),
        "{out}"
    );

    // Refused by the node: a certificate from another CA (whose own bundle
    // also trusts the node, so that only the node objects); exit 1.
    let evil = Pki::new("example.org");
    let (mallory, _) = issue(&evil.ca, "ops/mallory", Duration::from_secs(3600));
    let bundle = mallory.join("svid_bundle.pem");
    let mut pem = std::fs::read_to_string(&bundle).unwrap();
    pem.push_str(&pki.ca.ca_cert_pem());
    std::fs::write(&bundle, pem).unwrap();
    let mallory = mallory.to_str().unwrap().to_owned();
    let (code, out, err) = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || {
            slimctl(&[
                "identity",
                "check",
                "--node",
                &addr,
                "--identity",
                &mallory,
                "-o",
                "json",
            ])
        }
    })
    .await
    .unwrap();
    eprintln!("$ slimctl identity check -o json (refused)\n{out}{err}exit {code}");
    assert_eq!(code, 1, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON verdict");
    assert_eq!(v["ok"], false, "{out}");
    let verdict = v["verdict"].as_str().unwrap_or_default();
    assert!(
        verdict.contains("the node refused our handshake"),
        "{verdict}"
    );
    assert!(
        verdict.contains(
            "the certificate of spiffe://example.org/ops/mallory is not issued by any CA"
        ),
        "{verdict}"
    );
    assert!(!err.contains("backtrace"), "{err}");

    // An expired SVID: `identity show` says so and exits 1.
    let (old, not_after) = issue(&pki.ca, "ops/old", Duration::from_secs(1));
    while std::time::SystemTime::now() <= not_after {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let old = old.to_str().unwrap().to_owned();
    let (code, out, err) = tokio::task::spawn_blocking({
        let old = old.clone();
        move || slimctl(&["identity", "show", "--identity", &old])
    })
    .await
    .unwrap();
    eprintln!("$ slimctl identity show (expired)\n{out}{err}exit {code}");
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("ago)"), "{out}");
    assert!(err.contains("expired at 20"), "{err}");
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        slimctl(&["identity", "check", "--node", &addr, "--identity", &old])
    })
    .await
    .unwrap();
    assert_eq!(code, 1);
    assert!(
        err.contains("our SVID (spiffe://example.org/ops/old) expired"),
        "{err}"
    );
}
