//! The node binary's policy reload: the policy file is watched (`notify`),
//! a change applies without a restart, a broken file keeps the policy in force.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use slim_client::{Client, ClientConfig};
use slim_tests::*;

const NARROW: &str = r#"
[[rule]]
spiffe_id = "spiffe://example.org/agent/a"
register = ["org/ns/a/*"]
"#;

const WIDE: &str = r#"
[[rule]]
spiffe_id = "spiffe://example.org/agent/a"
register = ["org/ns/a/*", "org/ns/x/*"]
"#;

/// Replaces `path` the way deployment tools do: write aside, then rename.
fn replace(path: &Path, data: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_policy_file_applies_and_a_broken_one_keeps_the_policy() {
    init_tracing();
    let pki = Pki::new("example.org");
    let dir = tempfile::tempdir().unwrap();
    let policy_file = dir.path().join("policy.toml");
    std::fs::write(&policy_file, NARROW).unwrap();
    let cfg = slim_node::config::FileConfig::parse(
        "[identity]\ndir = \"id\"\n[authz]\nmode = \"policy\"\npolicy_file = \"policy.toml\"\n",
        &dir.path().join("node.toml"),
    )
    .unwrap();
    let node = Arc::new(start_node(&pki, |c| c.policy = cfg.load_policy().unwrap()).await);
    let addr = node.local_addr();
    let reload = tokio::spawn(slim_node::reload::reload_policy(
        Arc::downgrade(&node),
        cfg,
        policy_file.clone(),
    ));
    let register_x = || {
        let pki = &pki;
        async move {
            let mut c = ClientConfig::new(addr, name("org/ns/x/1"), pki.identity("agent/a"));
            c.backoff.initial = Duration::from_millis(50);
            Client::connect(c).await.is_ok()
        }
    };
    assert!(!register_x().await, "the narrow policy refuses org/ns/x/1");

    // A broken file: the narrow policy stays in force (the node logs why).
    replace(&policy_file, "[[rule]\nnot toml");
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < until {
        assert!(
            !register_x().await,
            "a broken policy file changed the policy"
        );
    }

    replace(&policy_file, WIDE);
    assert_eventually(
        Duration::from_secs(10),
        "the widened policy applies after the file changed",
        register_x,
    )
    .await;

    reload.abort();
    let _ = reload.await;
    if let Ok(node) = Arc::try_unwrap(node) {
        node.shutdown(Duration::from_secs(1)).await;
    }
}
