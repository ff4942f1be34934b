//! Issue 18, slimctl as an operator who knows the `nats` CLI expects it:
//! contexts, completions, `version`, request/reply, JSON errors under
//! `-o json`, publishing with nobody subscribed (a note, exit 0, unless
//! `--require-route`) and names with wildcards refused. The real binary
//! against a real node on loopback; contexts live in a temporary
//! `XDG_CONFIG_HOME`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use slim_tests::*;

const TEST_DEADLINE: Duration = Duration::from_secs(120);
const T: Duration = Duration::from_secs(20);

async fn deadline<F: std::future::Future>(test: &str, body: F) -> F::Output {
    match tokio::time::timeout(TEST_DEADLINE, body).await {
        Ok(v) => v,
        Err(_) => panic!("{test}: not finished within {TEST_DEADLINE:?} (a hang?)"),
    }
}

/// Kills a child process on drop (a failing test must not leak slimctl).
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// slimctl with a private config directory and none of the environment
/// variables that would choose a node or an identity behind the test's back.
fn slimctl(config: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(slim_tests::netns::bin("slimctl"));
    c.args(args)
        .env("XDG_CONFIG_HOME", config)
        .env_remove("SLIMCTL_NODE")
        .env_remove("SLIMCTL_NAME")
        .env_remove("SLIMCTL_IDENTITY")
        .env_remove("SLIMCTL_CONTROLLER")
        .env_remove("SLIM_CONTEXT")
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .stdin(Stdio::null());
    c
}

/// Runs to completion off the async runtime; prints the session.
async fn run(mut c: Command) -> Output {
    let shown = format!("{c:?}");
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    println!(
        "$ {shown}\n{}{}(exit {})",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status.code().unwrap_or(-1)
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A CA-issued SVID directory per `who` under `dir`.
fn identities(pki: &Pki, dir: &Path, who: &[&str]) {
    for w in who {
        let id = slim_auth::SpiffeId::parse(&format!("spiffe://example.org/agent/{w}")).unwrap();
        pki.ca
            .issue_to_dir(&id, Duration::from_secs(3600), &dir.join(w))
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contexts_choose_the_node_and_identity_and_errors_are_json() {
    deadline("contexts", async {
        init_tracing();
        let pki = Pki::new("example.org");
        let node = start_node(&pki, |_| {}).await;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        identities(&pki, dir.path(), &["pub"]);
        let addr = node.local_addr().to_string();
        let unreachable = format!("127.0.0.1:{}", free_udp_port());
        let id_dir = dir.path().join("pub");
        let id_dir = id_dir.to_str().unwrap();

        let add = run(slimctl(
            &config,
            &[
                "context",
                "add",
                "local",
                "--node",
                &addr,
                "--identity",
                id_dir,
                "--as",
                "acme/ux/pub/0",
                "--description",
                "the test node",
                "--select",
            ],
        ))
        .await;
        assert!(add.status.success(), "{}", stderr(&add));
        let add = run(slimctl(
            &config,
            &[
                "context",
                "add",
                "nowhere",
                "--node",
                &unreachable,
                "--identity",
                id_dir,
            ],
        ))
        .await;
        assert!(add.status.success(), "{}", stderr(&add));
        assert!(config.join("slim/contexts.toml").exists());

        // `ls` marks the selected context.
        let ls = run(slimctl(&config, &["context", "ls"])).await;
        let marked: Vec<_> = stdout(&ls)
            .lines()
            .filter(|l| l.starts_with('*'))
            .map(str::to_owned)
            .collect();
        assert_eq!(marked.len(), 1, "{}", stdout(&ls));
        assert!(
            marked[0].contains("local") && marked[0].contains(&addr),
            "{marked:?}"
        );
        let ls = run(slimctl(&config, &["-o", "json", "context", "ls"])).await;
        let v: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
        let selected: Vec<&str> = v
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["selected"] == true)
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(selected, ["local"], "{v}");

        // A publish with no --node or --identity reaches the node through the
        // selected context.
        let sub = client(&pki, node.local_addr(), "acme/ux/sub/0").await;
        sub.subscribe(&name("acme/ux/news")).await.unwrap();
        let publ = run(slimctl(
            &config,
            &[
                "-o",
                "json",
                "channel",
                "publish",
                "acme/ux/news",
                "via a context",
            ],
        ))
        .await;
        assert!(publ.status.success(), "{}", stderr(&publ));
        let v: serde_json::Value = serde_json::from_slice(&publ.stdout).unwrap();
        assert_eq!(v["no_route"], false, "{v}");
        let got = next_message(&sub, T).await;
        assert_eq!(got.payload.as_ref(), b"via a context");
        assert!(
            got.from.as_str().starts_with("acme/ux/pub/"),
            "{}",
            got.from
        );

        // --context picks another one; the node there does not answer: the
        // error is JSON on stdout, and the exit status non-zero.
        let err = run(slimctl(
            &config,
            &[
                "-o",
                "json",
                "--context",
                "nowhere",
                "channel",
                "publish",
                "acme/ux/news",
                "x",
            ],
        ))
        .await;
        assert!(!err.status.success());
        let v: serde_json::Value = serde_json::from_slice(&err.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(&err)));
        assert_eq!(v["error"]["kind"], "connect", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&unreachable),
            "{v}"
        );
        // The same through SLIM_CONTEXT; an explicit --node beats it.
        let mut c = slimctl(
            &config,
            &["channel", "publish", "acme/ux/news", "flag wins"],
        );
        c.env("SLIM_CONTEXT", "nowhere").args(["--node", &addr]);
        let flag = run(c).await;
        assert!(flag.status.success(), "{}", stderr(&flag));
        assert_eq!(next_message(&sub, T).await.payload.as_ref(), b"flag wins");
        // A context that does not exist is an error, not the default node.
        let missing = run(slimctl(
            &config,
            &[
                "-o",
                "json",
                "--context",
                "typo",
                "channel",
                "publish",
                "acme/ux/news",
                "x",
            ],
        ))
        .await;
        assert!(!missing.status.success());
        let v: serde_json::Value = serde_json::from_slice(&missing.stdout).unwrap();
        assert_eq!(v["error"]["kind"], "context", "{v}");

        // Removing the selected context unselects it.
        let rm = run(slimctl(&config, &["context", "rm", "local"])).await;
        assert!(rm.status.success(), "{}", stderr(&rm));
        let ls = run(slimctl(&config, &["context", "ls"])).await;
        assert!(!stdout(&ls).contains("local"), "{}", stdout(&ls));
        assert!(!stdout(&ls).lines().any(|l| l.starts_with('*')));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_version_and_usage_errors() {
    deadline("completion", async {
        let dir = tempfile::tempdir().unwrap();
        let bash = run(slimctl(dir.path(), &["completion", "bash"])).await;
        assert!(bash.status.success());
        let script = stdout(&bash);
        assert!(script.contains("_slimctl()"), "{script}");
        assert!(
            script.contains("complete -F _slimctl"),
            "not registered as a completion"
        );
        assert!(script.contains("publish"), "subcommands are completed");
        for shell in ["zsh", "fish"] {
            let out = run(slimctl(dir.path(), &["completion", shell])).await;
            assert!(out.status.success() && stdout(&out).contains("slimctl"));
        }
        let v = run(slimctl(dir.path(), &["-o", "json", "version"])).await;
        assert!(v.status.success());
        let v: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"), "{v}");
        assert!(v["git_sha"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
        let text = run(slimctl(dir.path(), &["version"])).await;
        assert!(stdout(&text).starts_with(&format!("slimctl {}", env!("CARGO_PKG_VERSION"))));
        // A usage error under -o json is JSON too (exit 2, as clap's).
        let usage = run(slimctl(
            dir.path(),
            &["-o", "json", "channel", "publish", "a/b/c"],
        ))
        .await;
        assert_eq!(usage.status.code(), Some(2));
        let v: serde_json::Value = serde_json::from_slice(&usage.stdout).unwrap();
        assert_eq!(v["error"]["kind"], "usage", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("PAYLOAD"),
            "{v}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_with_nobody_subscribed_succeeds_unless_a_route_is_required() {
    deadline("no_route", async {
        init_tracing();
        let pki = Pki::new("example.org");
        let node = start_node(&pki, |_| {}).await;
        let dir = tempfile::tempdir().unwrap();
        identities(&pki, dir.path(), &["pub"]);
        let addr = node.local_addr().to_string();
        let id_dir = dir.path().join("pub");
        let base = |extra: &[&str]| {
            let mut c = slimctl(dir.path(), extra);
            c.arg("--node")
                .arg(&addr)
                .arg("--identity")
                .arg(&id_dir)
                .args(["--as", "acme/ux/pub/0"]);
            c
        };
        let ok = run(base(&["channel", "publish", "acme/ux/nobody", "x"])).await;
        assert!(ok.status.success(), "{}", stderr(&ok));
        assert!(
            stderr(&ok).contains("no_route"),
            "a note says so: {}",
            stderr(&ok)
        );
        assert!(
            stdout(&ok).starts_with("published 1 bytes"),
            "{}",
            stdout(&ok)
        );
        let json = run(base(&[
            "-o",
            "json",
            "channel",
            "publish",
            "acme/ux/nobody",
            "x",
        ]))
        .await;
        let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
        assert_eq!(v["no_route"], true, "{v}");

        let strict = run(base(&[
            "-o",
            "json",
            "channel",
            "publish",
            "acme/ux/nobody",
            "x",
            "--require-route",
        ]))
        .await;
        assert!(!strict.status.success());
        let v: serde_json::Value = serde_json::from_slice(&strict.stdout).unwrap();
        assert_eq!(v["error"]["kind"], "no_route", "{v}");

        // With a subscriber, --require-route is satisfied.
        let sub = client(&pki, node.local_addr(), "acme/ux/sub/0").await;
        sub.subscribe(&name("acme/ux/somebody")).await.unwrap();
        let routed = run(base(&[
            "channel",
            "publish",
            "acme/ux/somebody",
            "y",
            "--require-route",
        ]))
        .await;
        assert!(routed.status.success(), "{}", stderr(&routed));
        assert!(!stderr(&routed).contains("no_route"), "{}", stderr(&routed));
        assert_eq!(next_message(&sub, T).await.payload.as_ref(), b"y");

        // Wildcards are refused before anything is sent.
        for bad in ["acme/ux/*", "acme/>/x"] {
            let out = run(base(&["-o", "json", "channel", "publish", bad, "x"])).await;
            assert!(!out.status.success());
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(v["error"]["kind"], "invalid_name", "{v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("wildcards are not supported yet"),
                "{v}"
            );
        }
        let sub_wild = run(base(&["channel", "subscribe", "acme/ux/*", "--count", "1"])).await;
        assert!(!sub_wild.status.success());
        assert!(stderr(&sub_wild).contains("wildcards are not supported yet"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reply_round_trip_from_the_cli() {
    deadline("request_reply", async {
        init_tracing();
        let pki = Pki::new("example.org");
        let node = start_node(&pki, |_| {}).await;
        let dir = tempfile::tempdir().unwrap();
        identities(&pki, dir.path(), &["svc", "cli"]);
        let addr = node.local_addr().to_string();
        let with = |who: &str, args: &[&str]| {
            let mut c = slimctl(dir.path(), args);
            c.arg("--node")
                .arg(&addr)
                .arg("--identity")
                .arg(dir.path().join(who));
            c
        };
        // Answers with the output of a command fed the request.
        let mut replier = with(
            "svc",
            &[
                "reply",
                "acme/ux/upper",
                "--command",
                "tr a-z A-Z",
                "--count",
                "2",
            ],
        );
        replier.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut replier = Proc(replier.spawn().unwrap());
        let mut err = BufReader::new(replier.0.stderr.take().unwrap());
        let ready = tokio::task::spawn_blocking(move || {
            let mut l = String::new();
            err.read_line(&mut l).unwrap();
            l
        });
        let line = tokio::time::timeout(T, ready).await.unwrap().unwrap();
        assert!(
            line.starts_with("answering requests to acme/ux/upper"),
            "{line}"
        );

        let mut req = with(
            "cli",
            &["request", "acme/ux/upper", "hello", "--timeout", "10s"],
        );
        req.args(["--as", "acme/ux/cli/0"]);
        let out = run(req).await;
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out).trim(), "HELLO");
        let mut req = with(
            "cli",
            &[
                "-o",
                "json",
                "request",
                "acme/ux/upper",
                "again",
                "--timeout",
                "10s",
            ],
        );
        req.args(["--as", "acme/ux/cli/0"]);
        let out = run(req).await;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["payload"], "AGAIN", "{v}");
        let status = tokio::task::spawn_blocking(move || replier.0.wait().unwrap())
            .await
            .unwrap();
        assert!(status.success(), "reply exits after --count 2: {status}");

        // Nobody answers that name: a JSON error, not a hang.
        let mut req = with(
            "cli",
            &[
                "-o",
                "json",
                "request",
                "acme/ux/nobody",
                "x",
                "--timeout",
                "2s",
            ],
        );
        req.args(["--as", "acme/ux/cli/0"]);
        let out = run(req).await;
        assert!(!out.status.success());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let kind = v["error"]["kind"].as_str().unwrap();
        assert!(matches!(kind, "no_responder" | "timeout"), "{v}");
    })
    .await;
}

/// `channel list` shows channels, not clients' own (inbox) and service
/// names (`--all` shows those too, with their kind); `channel members`
/// reads the controller's view of a channel's subscribers without joining.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_list_and_members_from_the_controller() {
    deadline("channel_list", async {
        init_tracing();
        let pki = Pki::new("example.org");
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = slim_controller::ControllerConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            dir.path().join("controller"),
        );
        cfg.nodes = vec!["spiffe://example.org/node/*".into()];
        cfg.admins = vec!["spiffe://example.org/ops/**".into()];
        let ctl = slim_controller::start(cfg, &pki.identity("controller"))
            .await
            .expect("start controller");
        let node_cfg = slim_actors::NodeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            node_id: "a".into(),
            ..Default::default()
        };
        let node = std::sync::Arc::new(
            slim_actors::start(node_cfg, &pki.identity("node/a"))
                .await
                .expect("start node"),
        );
        let mut link =
            slim_node::controller::ControllerLinkConfig::new(ctl.local_addr().to_string());
        link.report_interval = Duration::from_millis(200);
        let _link = slim_node::controller::spawn(&node, (&pki.identity("node/a")).into(), link);
        let ops = slim_auth::SpiffeId::parse("spiffe://example.org/ops/alice").unwrap();
        pki.ca
            .issue_to_dir(&ops, Duration::from_secs(3600), &dir.path().join("ops"))
            .unwrap();
        let admin = |args: &[&str]| {
            let mut c = slimctl(dir.path(), args);
            c.arg("--controller")
                .arg(ctl.local_addr().to_string())
                .arg("--identity")
                .arg(dir.path().join("ops"));
            c
        };

        let sub = client(&pki, node.local_addr(), "acme/mon/watcher/0").await;
        sub.subscribe(&name("acme/monitoring/fleet")).await.unwrap();
        let list_all = || async {
            let out = run(admin(&["-o", "json", "channel", "list", "--all"])).await;
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
        };
        assert_eventually(T, "the channel reaches the controller", || async {
            let s = list_all().await.to_string();
            s.contains("acme/monitoring/fleet") && s.contains("acme/mon/watcher/0")
        })
        .await;
        let listed = list_all().await;
        let kind = |n: &str| {
            listed
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == n)
                .map(|c| c["kind"].as_str().unwrap().to_owned())
        };
        assert_eq!(
            kind("acme/monitoring/fleet").as_deref(),
            Some("channel"),
            "{listed}"
        );
        assert_eq!(
            kind("acme/mon/watcher/0").as_deref(),
            Some("client"),
            "{listed}"
        );
        assert_eq!(
            kind("acme/mon/watcher").as_deref(),
            Some("service"),
            "{listed}"
        );

        let only = run(admin(&["-o", "json", "channel", "list"])).await;
        assert!(only.status.success(), "{}", stderr(&only));
        let v: serde_json::Value = serde_json::from_slice(&only.stdout).unwrap();
        let names: Vec<&str> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["acme/monitoring/fleet"], "{v}");
        let text = run(admin(&["channel", "list"])).await;
        assert!(stdout(&text).starts_with("CHANNEL"), "{}", stdout(&text));
        assert!(
            !stdout(&text).contains("acme/mon/watcher"),
            "{}",
            stdout(&text)
        );

        let members = run(admin(&[
            "-o",
            "json",
            "channel",
            "members",
            "acme/monitoring/fleet",
            "--subscribers",
        ]))
        .await;
        assert!(members.status.success(), "{}", stderr(&members));
        let v: serde_json::Value = serde_json::from_slice(&members.stdout).unwrap();
        assert_eq!(v["subscribers"], 1, "{v}");
        assert_eq!(v["nodes"][0]["node_id"], "a", "{v}");
        assert_eq!(v["source"], "controller", "{v}");
    })
    .await;
}
