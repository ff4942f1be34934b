//! Issue 13, "names, not just addresses", in-process: a peer given as
//! `localhost:PORT` links up; `slimctl --node localhost:PORT` publishes and
//! subscribes; a name that does not resolve fails as "cannot resolve",
//! distinct from an address where nothing answers ("cannot connect").

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use slim_tests::*;

const TEST_DEADLINE: Duration = Duration::from_secs(120);
const T: Duration = Duration::from_secs(20);
/// `.invalid` never resolves (RFC 2606).
const NO_SUCH_HOST: &str = "no-such-host.invalid";

/// Kills a child process on drop (a failing test must not leak slimctl).
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_given_as_localhost_links_up_next_to_one_that_does_not_resolve() {
    deadline(TEST_DEADLINE, "peer_by_name", async {
        init_tracing();
        let pki = Pki::new("example.org");
        let b = start_peer_node(&pki, "b", vec![], |_| {}).await;
        let by_name = slim_actors::PeerSpec {
            addr: format!("localhost:{}", b.local_addr().port()),
            ..peer_spec(&b)
        };
        // A second peer whose name never resolves: its dials fail, B's link
        // is not held up by it.
        let nowhere = slim_actors::PeerSpec {
            node_id: "nowhere".into(),
            addr: format!("{NO_SUCH_HOST}:4500"),
            server_name: "slim-node".into(),
            expect_spiffe_id: None,
        };
        let a = start_peer_node(&pki, "a", vec![nowhere, by_name], |_| {}).await;
        assert_eventually(T, "a's link to b (dialled as localhost) is up", || async {
            a.links().iter().any(|l| {
                l.peer_node_id == "b"
                    && l.state == slim_actors::LinkState::Up
                    && l.remote_addr == b.local_addr()
            })
        })
        .await;
        // Traffic crosses it.
        let sub = client(&pki, b.local_addr(), "acme/b/sub/0").await;
        sub.subscribe(&name("acme/news/alerts")).await.unwrap();
        assert_eventually(T, "b's subscription reached a", || async {
            routes_to(&a, "acme/news/alerts", "b")
        })
        .await;
        let publ = client(&pki, a.local_addr(), "acme/a/pub/0").await;
        publ.publish(
            &name("acme/news/alerts"),
            slim_wire::Mode::Multicast,
            b"over a named link",
        )
        .await
        .unwrap();
        let got = next_message(&sub, T).await;
        assert_eq!(got.payload.as_ref(), b"over a named link");
        let unresolved = a
            .links()
            .into_iter()
            .find(|l| l.peer_node_id == "nowhere")
            .expect("a link entry for the unresolvable peer");
        assert_ne!(unresolved.state, slim_actors::LinkState::Up);
    })
    .await;
}

fn slimctl(dir: &std::path::Path, who: &str, node: &str, args: &[&str]) -> Command {
    let mut c = Command::new(slim_tests::netns::bin("slimctl"));
    c.args(args)
        .arg("--identity")
        .arg(dir.join(who))
        .args(["--as", &format!("acme/cli/{who}/0"), "--node", node])
        .env_remove("SLIMCTL_NODE")
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .stdin(Stdio::null());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slimctl_reaches_a_node_by_name_and_tells_resolve_from_connect_errors() {
    deadline(TEST_DEADLINE, "slimctl_by_name", async {
        init_tracing();
        let pki = Pki::new("example.org");
        let node = start_node(&pki, |_| {}).await;
        let port = node.local_addr().port();
        let dir = tempfile::tempdir().unwrap();
        for who in ["sub", "pub"] {
            let id =
                slim_auth::SpiffeId::parse(&format!("spiffe://example.org/agent/{who}")).unwrap();
            pki.ca
                .issue_to_dir(&id, Duration::from_secs(3600), &dir.path().join(who))
                .unwrap();
        }
        let host = format!("localhost:{port}");
        let mut sub = Proc(
            slimctl(
                dir.path(),
                "sub",
                &host,
                &[
                    "channel",
                    "subscribe",
                    "acme/cli/news",
                    "--count",
                    "1",
                    "--timeout",
                    "20s",
                ],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        );
        assert_eventually(T, "slimctl subscribed through localhost", || async {
            node.routes()
                .iter()
                .any(|r| r.name == "acme/cli/news" && r.local_subscribers == 1)
        })
        .await;
        let url = format!("slim://localhost:{port}");
        let publ = slimctl(
            dir.path(),
            "pub",
            &url,
            &["channel", "publish", "acme/cli/news", "hello by name"],
        )
        .output()
        .unwrap();
        println!(
            "$ slimctl channel publish acme/cli/news 'hello by name' --node {url}\n{}{}",
            String::from_utf8_lossy(&publ.stdout),
            String::from_utf8_lossy(&publ.stderr)
        );
        assert!(publ.status.success(), "{publ:?}");
        let out = sub.0.stdout.take().unwrap();
        let line = tokio::time::timeout(
            T,
            tokio::task::spawn_blocking(move || {
                let mut l = String::new();
                BufReader::new(out).read_line(&mut l).unwrap();
                l
            }),
        )
        .await
        .unwrap()
        .unwrap();
        println!("$ slimctl channel subscribe acme/cli/news --count 1 --node {host}\n{line}");
        assert!(line.contains("hello by name"), "{line}");

        // A name that does not resolve: "cannot resolve NAME: why".
        let bad = format!("{NO_SUCH_HOST}:{port}");
        let out = slimctl(
            dir.path(),
            "pub",
            &bad,
            &["channel", "publish", "acme/cli/news", "x"],
        )
        .output()
        .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        println!("$ slimctl channel publish acme/cli/news x --node {bad}\n{err}");
        assert!(!out.status.success());
        assert!(err.contains(&format!("cannot resolve {bad}")), "{err}");
        assert!(!err.contains("cannot connect to"), "{err}");

        // An address where nothing answers: "cannot connect to ADDR: why".
        let silent = format!("127.0.0.1:{}", free_udp_port());
        let out = slimctl(
            dir.path(),
            "pub",
            &silent,
            &["channel", "publish", "acme/cli/news", "x"],
        )
        .output()
        .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        println!("$ slimctl channel publish acme/cli/news x --node {silent}\n{err}");
        assert!(!out.status.success());
        assert!(
            err.contains(&format!("cannot connect to {silent}")),
            "{err}"
        );
        assert!(!err.contains("cannot resolve"), "{err}");
    })
    .await;
}
